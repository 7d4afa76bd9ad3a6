//! The directory from short code to live actor. An entry is created under the `DashMap` shard
//! lock together with the actor (spawned without waiting for its start), so two requests racing
//! for a new code find one actor. An entry leaves only after its actor has ended and everything
//! it sent to the writer is committed, so a successor always starts from the stored count.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dashmap::{DashMap, mapref::entry::Entry as MapEntry};
use ractor::{ActorId, ActorRef, ActorRuntime};
use tokio::sync::watch;
use tracing::{error, warn};

/// How long a message waits for a stopping actor's successor, per attempt.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// How many times a message is re-sent when its actor was stopping.
const MAX_ATTEMPTS: usize = 20;

use super::{
    LinkError, Shared,
    actor::{Click, LinkActor, LinkArgs, LinkMsg},
    inbox::{Inbox, Push},
};
use crate::domain::{Link, ShortCode};

pub(crate) struct Entry {
    pub actor: ActorRef<LinkMsg>,
    pub link: Arc<Link>,
    pub inbox: Arc<Inbox>,
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

    /// Queues a click for the link's actor, starting the actor if there is none: the redirect's
    /// path. The click comes back only when the actor is stopping (or the service is), for the
    /// caller to deliver once the successor may start.
    pub fn push_click(
        &self,
        shared: &Arc<Shared>,
        link: &Arc<Link>,
        click: Click,
    ) -> Result<(), Click> {
        let code = link.code.as_str();
        let entry = match self.map.get(code) {
            Some(entry) => entry,
            None => {
                // Start it now, so the click is queued before the redirect is answered and a
                // read right after the redirect sees it.
                if let Route::Closed = self.route(shared, link) {
                    return Err(click);
                }
                match self.map.get(code) {
                    Some(entry) => entry,
                    None => return Err(click),
                }
            }
        };
        if entry.draining {
            return Err(click);
        }
        match entry.inbox.push(click) {
            Push::Queued => Ok(()),
            Push::Wake => {
                // If the actor is stopping it refuses the message; the click stays in the
                // inbox and its watcher hands it to the successor.
                let _ = entry.actor.cast(LinkMsg::Collect);
                Ok(())
            }
            Push::Closed(click) => Err(click),
        }
    }

    /// What to wait for before a read of the store can see every click of `code`: the end of
    /// its stopping actor, if it is stopping.
    pub fn stopping(&self, code: &str) -> Option<watch::Receiver<bool>> {
        self.map
            .get(code)
            .and_then(|e| e.draining.then(|| e.done.clone()))
    }

    /// What a click that came back from [`Directory::push_click`] waits for: the end of the
    /// code's current actor (or nothing, when there is none).
    fn current(&self, code: &str) -> Option<watch::Receiver<bool>> {
        self.map.get(code).map(|e| e.done.clone())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// True while any actor or watcher is alive.
    pub fn is_idle(&self, shared: &Shared) -> bool {
        self.map.is_empty() && shared.tracker.is_empty()
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
                let inbox = Arc::new(Inbox::new(shared.metrics.clone()));
                let args = LinkArgs {
                    code: link.code.clone(),
                    shared: shared.clone(),
                    inbox: inbox.clone(),
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
                    inbox: inbox.clone(),
                    draining: false,
                    done: done.clone(),
                });
                let watcher = shared.clone();
                let code = link.code.clone();
                let watched = link.clone();
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
                    // Clicks pushed after the actor's last collection go to its successor.
                    let leftovers = inbox.close();
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
                    for click in leftovers {
                        if let Err(e) = deliver_click(&watcher, &watched, click).await {
                            error!(code = %code, cause = %e, "click lost");
                        }
                    }
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

/// Sends a message to the code's actor, starting it if needed and waiting out a stopping
/// predecessor.
pub(crate) async fn deliver(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    mut msg: LinkMsg,
) -> Result<(), LinkError> {
    for _ in 0..MAX_ATTEMPTS {
        let mut done = match shared.directory.route(shared, link) {
            Route::Live(actor, done) => match actor.cast(msg) {
                Ok(()) => return Ok(()),
                Err(ractor::MessagingErr::SendErr(back)) => {
                    msg = back;
                    done
                }
                Err(_) => return Err(LinkError::ShuttingDown),
            },
            Route::Wait(done) => done,
            Route::Closed => return Err(LinkError::ShuttingDown),
        };
        await_end(&mut done, link).await;
    }
    Err(LinkError::Timeout)
}

/// Waits (bounded) until a stopping actor's entry is gone and a successor may start.
async fn await_end(done: &mut watch::Receiver<bool>, link: &Link) {
    if tokio::time::timeout(STOP_WAIT, done.wait_for(|gone| *gone))
        .await
        .is_err()
    {
        warn!(code = %link.code, "a stopping link actor is slow to finish");
    }
}

/// Queues a click for the code's actor like the redirect does, through its inbox, waiting out a
/// stopping predecessor. Going through the inbox (not the mailbox) means a click is never lost
/// with a successor that dies before handling it: its watcher hands the inbox on again.
pub(crate) async fn deliver_click(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    mut click: Click,
) -> Result<(), LinkError> {
    for _ in 0..MAX_ATTEMPTS {
        click = match shared.directory.push_click(shared, link, click) {
            Ok(()) => return Ok(()),
            Err(back) => back,
        };
        if shared.directory.is_closed() {
            return Err(LinkError::ShuttingDown);
        }
        match shared.directory.current(link.code.as_str()) {
            Some(mut done) => await_end(&mut done, link).await,
            // Gone between the push and this look: try again at once.
            None => tokio::task::yield_now().await,
        }
    }
    Err(LinkError::Timeout)
}
