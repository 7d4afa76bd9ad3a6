//! The directory from short code to live actor. An entry is created under the `DashMap` shard
//! lock together with the actor (spawned without waiting for its start), so two requests racing
//! for a new code find one actor. An entry leaves only after its actor has ended and everything
//! it sent to the writer is committed, so a successor always starts from the stored count.
//!
//! An actor that fails to start (its store read fails, or the writer has failed) is not started
//! again for every click: the code backs off (100 ms, doubling up to 30 s), and its clicks are
//! refused meanwhile (the redirect still answers in default durability; strict answers 503).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dashmap::{DashMap, mapref::entry::Entry as MapEntry};
use ractor::{ActorId, ActorRef, ActorRuntime};
use tokio::{sync::watch, time::Instant};
use tracing::{error, warn};

use super::{
    LinkError, Shared,
    actor::{LinkActor, LinkArgs, LinkMsg},
    click::Click,
    inbox::{Inbox, Push},
};
use crate::{
    domain::{Link, ShortCode},
    metrics::DropReason,
    store::Permit,
};

/// The first pause after a failed start; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(crate) struct Entry {
    pub actor: ActorRef<LinkMsg>,
    /// The newest copy of the link (replaced by every change).
    pub link: Arc<Link>,
    /// The link is being deleted: its entry no longer answers for it.
    pub gone: bool,
    pub inbox: Arc<Inbox>,
    /// Set when the actor has decided to stop: new messages should wait for `done`.
    pub draining: bool,
    /// Becomes true when the entry is gone and a successor may be started.
    pub done: watch::Receiver<bool>,
}

/// Failed starts of a code in a row, and when the next may be tried.
struct Backoff {
    failures: u32,
    until: Instant,
}

/// Where a message for a code can go now.
pub(crate) enum Route {
    Live(ActorRef<LinkMsg>, watch::Receiver<bool>),
    /// The actor is stopping; wait for this and try again.
    Wait(watch::Receiver<bool>),
    /// The code's actor failed to start and is backing off.
    Unavailable,
    /// The service is shutting down.
    Closed,
    /// The link was deleted: no actor starts for it.
    Gone,
}

/// What became of a click handed to [`Directory::push_click`].
pub(crate) enum Pushed {
    Queued,
    /// The actor is stopping: deliver it to the successor once it may start.
    Later(Click, Permit),
    /// Not queued, for this reason (the click is dropped).
    Refused(DropReason),
}

#[derive(Default)]
pub(crate) struct Directory {
    map: DashMap<ShortCode, Entry>,
    backoff: DashMap<ShortCode, Backoff>,
    /// Codes deleted while this process runs: no new actor starts for them (a click that
    /// found the link just before its deletion is dropped, not stored for a deleted code).
    gone: dashmap::DashSet<ShortCode>,
    closed: AtomicBool,
}

impl Directory {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The link of a live entry, if there is one (the hot path of a redirect).
    pub fn link(&self, code: &str) -> Option<Arc<Link>> {
        self.map
            .get(code)
            .and_then(|e| (!e.gone).then(|| e.link.clone()))
    }

    /// Puts a changed link in the code's entry if it is newer; returns the entry's actor, which
    /// must be told too.
    pub fn replace_link(&self, link: &Arc<Link>) -> Option<ActorRef<LinkMsg>> {
        match self.map.get_mut(link.code.as_str()) {
            Some(mut e) if e.link.rev < link.rev => {
                e.link = link.clone();
                Some(e.actor.clone())
            }
            _ => None,
        }
    }

    /// Marks a code as being deleted: its entry stops answering for it, and no new actor
    /// starts for it.
    pub fn mark_gone(&self, code: &ShortCode) {
        self.gone.insert(code.clone());
        if let Some(mut e) = self.map.get_mut(code.as_str()) {
            e.gone = true;
        }
    }

    /// A code made again after its hold.
    pub fn unmark_gone(&self, code: &ShortCode) {
        self.gone.remove(code);
    }

    /// Queues a click for the link's actor, starting the actor if there is none: the redirect's
    /// path.
    pub fn push_click(
        &self,
        shared: &Arc<Shared>,
        link: &Arc<Link>,
        click: Click,
        permit: Permit,
    ) -> Pushed {
        let code = link.code.as_str();
        let entry = match self.map.get(code) {
            Some(entry) => entry,
            None => {
                // Start it now, so the click is queued before the redirect is answered and a
                // read right after the redirect sees it.
                match self.route(shared, link) {
                    Route::Closed => return Pushed::Refused(DropReason::ShuttingDown),
                    Route::Unavailable => return Pushed::Refused(DropReason::ActorUnavailable),
                    Route::Gone => return Pushed::Refused(DropReason::LinkDeleted),
                    Route::Live(..) | Route::Wait(_) => {}
                }
                match self.map.get(code) {
                    Some(entry) => entry,
                    None => return Pushed::Later(click, permit),
                }
            }
        };
        if entry.draining {
            return Pushed::Later(click, permit);
        }
        match entry.inbox.push(click, permit) {
            Push::Queued => Pushed::Queued,
            Push::Wake => {
                // If the actor is stopping it refuses the message; the click stays in the
                // inbox and its watcher hands it to the successor.
                let _ = entry.actor.cast(LinkMsg::Collect);
                Pushed::Queued
            }
            Push::Closed(click, permit) => Pushed::Later(click, permit),
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
    pub fn current(&self, code: &str) -> Option<watch::Receiver<bool>> {
        self.map.get(code).map(|e| e.done.clone())
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// True while any actor or watcher is alive.
    pub fn is_idle(&self, shared: &Shared) -> bool {
        shared.tracker.is_empty() && self.map.is_empty()
    }

    /// The actor of a live, not draining entry.
    pub fn live(&self, code: &str) -> Option<ActorRef<LinkMsg>> {
        self.map
            .get(code)
            .and_then(|e| (!e.draining).then(|| e.actor.clone()))
    }

    /// Whether a failed start of `code` is still backing off.
    fn backing_off(&self, code: &str) -> bool {
        self.backoff
            .get(code)
            .is_some_and(|b| b.until > Instant::now())
    }

    fn record_start(&self, code: &ShortCode, ok: bool) {
        if ok {
            self.backoff.remove(code.as_str());
            return;
        }
        if self.backoff.len() >= 1024 {
            // Codes that failed once and were not clicked since are forgotten.
            let now = Instant::now();
            self.backoff.retain(|_, b| b.until + MAX_BACKOFF > now);
        }
        let mut entry = self.backoff.entry(code.clone()).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let pause = FIRST_BACKOFF
            .saturating_mul(1 << (entry.failures - 1).min(16))
            .min(MAX_BACKOFF);
        entry.until = Instant::now() + pause;
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
        if self.backing_off(link.code.as_str()) {
            return Route::Unavailable;
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
                if self.gone.contains(&link.code) {
                    return Route::Gone;
                }
                // The caller's copy may predate a change applied since: the cache has the
                // newest one.
                let link = match shared.cache.peek(&link.code) {
                    Some(Some(cached)) if cached.rev > link.rev => cached,
                    _ => link.clone(),
                };
                let link = &link;
                let (done_tx, done) = watch::channel(false);
                let inbox = Arc::new(Inbox::new(shared.metrics.clone()));
                let args = LinkArgs {
                    code: link.code.clone(),
                    link: link.clone(),
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
                    gone: false,
                    inbox: inbox.clone(),
                    draining: false,
                    done: done.clone(),
                });
                let watcher = shared.clone();
                let watched = link.clone();
                let id = actor.get_id();
                shared.tracker.spawn(async move {
                    let code = &watched.code;
                    let started_ok = match started.await {
                        Ok(Ok(running)) => {
                            watcher.directory.record_start(code, true);
                            if running.await.is_err() {
                                warn!(code = %code, "link actor task failed");
                            }
                            true
                        }
                        Ok(Err(e)) => {
                            error!(code = %code, cause = %e, "link actor failed to start");
                            false
                        }
                        Err(e) => {
                            error!(code = %code, cause = %e, "link actor task failed");
                            false
                        }
                    };
                    if !started_ok {
                        watcher.metrics.actor_start_failed();
                        watcher.directory.record_start(code, false);
                    }
                    // Clicks pushed after the actor's last collection go to its successor.
                    let (leftovers, mut permit) = inbox.close();
                    // Whatever the actor handed to the writer is queued there; a successor may
                    // only read the count once it is committed.
                    if let Err(e) = watcher.writer.barrier().await {
                        warn!(code = %code, cause = %e, "writer barrier failed");
                    }
                    watcher
                        .directory
                        .map
                        .remove_if(code, |_, e| e.actor.get_id() == id);
                    let _ = done_tx.send(true);
                    if !started_ok {
                        // The code backs off: its waiting clicks are dropped, and counted.
                        watcher
                            .metrics
                            .clicks_dropped(DropReason::ActorUnavailable, leftovers.len());
                        return;
                    }
                    let deadline = Instant::now() + super::CALL_TIMEOUT;
                    for click in leftovers {
                        let permit = permit.split_one();
                        if let Err(reason) =
                            deliver_click(&watcher, &watched, click, permit, deadline).await
                        {
                            watcher.metrics.clicks_dropped(reason, 1);
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
/// predecessor, all before `deadline`.
pub(crate) async fn deliver(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    mut msg: LinkMsg,
    deadline: Instant,
) -> Result<(), LinkError> {
    loop {
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
            Route::Unavailable => return Err(LinkError::Unavailable),
            Route::Closed => return Err(LinkError::ShuttingDown),
            Route::Gone => return Err(LinkError::Gone),
        };
        if !await_end(&mut done, link, deadline).await {
            return Err(LinkError::Timeout);
        }
    }
}

/// Waits until a stopping actor's entry is gone and a successor may start; false if
/// `deadline` came first.
async fn await_end(done: &mut watch::Receiver<bool>, link: &Link, deadline: Instant) -> bool {
    if tokio::time::timeout_at(deadline, done.wait_for(|gone| *gone))
        .await
        .is_err()
    {
        warn!(code = %link.code, "a stopping link actor did not finish in time");
        return false;
    }
    true
}

/// Queues a click for the code's actor like the redirect does, through its inbox, waiting out a
/// stopping predecessor until `deadline`. Going through the inbox (not the mailbox) means a
/// click is never lost with a successor that dies before handling it: its watcher hands the
/// inbox on again.
pub(crate) async fn deliver_click(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    mut click: Click,
    mut permit: Permit,
    deadline: Instant,
) -> Result<(), DropReason> {
    loop {
        if Instant::now() >= deadline {
            return Err(DropReason::Timeout);
        }
        (click, permit) = match shared.directory.push_click(shared, link, click, permit) {
            Pushed::Queued => return Ok(()),
            Pushed::Refused(reason) => return Err(reason),
            Pushed::Later(click, permit) => (click, permit),
        };
        if shared.directory.is_closed() {
            return Err(DropReason::ShuttingDown);
        }
        match shared.directory.current(link.code.as_str()) {
            Some(mut done) => {
                if !await_end(&mut done, link, deadline).await {
                    return Err(DropReason::Timeout);
                }
            }
            // Gone between the push and this look: try again at once.
            None => tokio::task::yield_now().await,
        }
    }
}
