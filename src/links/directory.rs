//! The directory from short code to live actor. An entry is created under the `DashMap` shard
//! lock together with the actor (spawned without waiting for its start), so two requests racing
//! for a new code find one actor. An entry leaves only after its actor has ended and everything
//! it sent to the writer is committed, so a successor always starts from the stored count.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use dashmap::{DashMap, mapref::entry::Entry as MapEntry};
use ractor::{ActorId, ActorRef, ActorRuntime};
use tokio::sync::watch;
use tracing::{error, warn};

use super::{
    Shared,
    actor::{LinkActor, LinkArgs, LinkMsg},
};
use crate::domain::{Link, ShortCode};

pub(crate) struct Entry {
    pub actor: ActorRef<LinkMsg>,
    pub link: Arc<Link>,
    /// Set when the actor has decided to stop: new messages should wait for `done`.
    pub draining: bool,
    /// Becomes true when the entry is gone and a successor may be started.
    pub done: watch::Receiver<bool>,
}

/// Where a message for a code can go now.
pub(crate) enum Route {
    Live(ActorRef<LinkMsg>, watch::Receiver<bool>),
    /// The actor is stopping; wait for this and try again.
    Wait(watch::Receiver<bool>),
    /// The service is shutting down.
    Closed,
}

#[derive(Default)]
pub(crate) struct Directory {
    map: DashMap<ShortCode, Entry>,
    closed: AtomicBool,
}

impl Directory {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The link of a live entry, if there is one (the hot path of a redirect).
    pub fn link(&self, code: &str) -> Option<Arc<Link>> {
        self.map.get(code).map(|e| e.link.clone())
    }

    /// The actor of a live, not draining entry.
    pub fn live(&self, code: &str) -> Option<ActorRef<LinkMsg>> {
        self.map
            .get(code)
            .and_then(|e| (!e.draining).then(|| e.actor.clone()))
    }

    /// Finds the code's actor, starting one if there is none.
    pub fn route(&self, shared: &Arc<Shared>, link: &Arc<Link>) -> Route {
        if let Some(e) = self.map.get(link.code.as_str()) {
            return if e.draining {
                Route::Wait(e.done.clone())
            } else {
                Route::Live(e.actor.clone(), e.done.clone())
            };
        }
        if self.closed.load(Ordering::Acquire) {
            return Route::Closed;
        }
        match self.map.entry(link.code.clone()) {
            MapEntry::Occupied(e) => {
                let e = e.get();
                if e.draining {
                    Route::Wait(e.done.clone())
                } else {
                    Route::Live(e.actor.clone(), e.done.clone())
                }
            }
            MapEntry::Vacant(slot) => {
                let (done_tx, done) = watch::channel(false);
                let args = LinkArgs {
                    code: link.code.clone(),
                    shared: shared.clone(),
                };
                // Spawning is synchronous here: the actor's start (reading its count) runs in
                // its own task while messages already queue in its mailbox.
                let (actor, started) = match ActorRuntime::spawn_instant(None, LinkActor, args) {
                    Ok(spawned) => spawned,
                    Err(e) => {
                        error!(code = %link.code, cause = %e, "could not spawn a link actor");
                        return Route::Closed;
                    }
                };
                slot.insert(Entry {
                    actor: actor.clone(),
                    link: link.clone(),
                    draining: false,
                    done: done.clone(),
                });
                let watcher = shared.clone();
                let code = link.code.clone();
                let id = actor.get_id();
                shared.tracker.spawn(async move {
                    match started.await {
                        Ok(Ok(running)) => {
                            if running.await.is_err() {
                                warn!(code = %code, "link actor task failed");
                            }
                        }
                        Ok(Err(e)) => {
                            error!(code = %code, cause = %e, "link actor failed to start")
                        }
                        Err(e) => error!(code = %code, cause = %e, "link actor task failed"),
                    }
                    // Whatever the actor handed to the writer is queued there; a successor may
                    // only read the count once it is committed.
                    if let Err(e) = watcher.writer.barrier().await {
                        error!(code = %code, cause = %e, "writer barrier failed");
                    }
                    watcher
                        .directory
                        .map
                        .remove_if(&code, |_, e| e.actor.get_id() == id);
                    let _ = done_tx.send(true);
                });
                Route::Live(actor, done)
            }
        }
    }

    /// Marks the entry of `id` as draining. False if the entry is not that actor's.
    pub fn begin_drain(&self, code: &ShortCode, id: ActorId) -> bool {
        match self.map.get_mut(code.as_str()) {
            Some(mut e) if e.actor.get_id() == id => {
                e.draining = true;
                true
            }
            _ => false,
        }
    }

    /// Refuses new actors from now on.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The actors alive now.
    pub fn actors(&self) -> Vec<ActorRef<LinkMsg>> {
        self.map.iter().map(|e| e.actor.clone()).collect()
    }
}
