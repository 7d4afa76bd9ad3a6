//! The directory from short code to live actor. An entry is created under the `DashMap` shard
//! lock together with the actor (spawned without waiting for its start), so two requests racing
//! for a new code find one actor. An entry leaves only after its actor has ended and everything
//! it sent to the writer is committed, so a successor always starts from the stored count.
//!
//! A click of a code with no live actor starts none unless the [`Doorkeeper`] saw the code
//! clicked recently: the writer numbers it (under the shard lock, so an actor that starts
//! afterwards reads a count that includes it). Live actors are bounded by `--actor-memory`:
//! past it, idle actors are stopped least recently used first (the CLOCK algorithm: a used
//! actor gets a second chance), as Orleans collects idle activations.
//!
//! An actor that fails to start (its store read fails, or the writer has failed) is not started
//! again for every click: the code backs off (100 ms, doubling up to 30 s), and its clicks are
//! refused meanwhile (the redirect still answers in default durability; strict answers 503).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use dashmap::{DashMap, mapref::entry::Entry as MapEntry};
use ractor::{ActorId, ActorRef};
use tokio::{sync::watch, time::Instant};
use tracing::warn;

use super::{
    LinkError, Shared,
    actor::LinkMsg,
    click::Click,
    doorkeeper::Doorkeeper,
    inbox::{Inbox, Push},
};
use crate::{
    domain::{Link, ShortCode},
    metrics::DropReason,
    store::{FreshClick, Permit},
};

mod start;
use start::Backoff;

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
    /// Used since the CLOCK hand last passed (see [`Directory::evict`]).
    pub used: AtomicBool,
}

impl Entry {
    fn touch(&self) {
        // A load first: a hot code's clicks do not all write the same cache line.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }
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

/// What [`Directory::push_fresh`] did with a click.
enum Fresh {
    Done(Pushed),
    /// An actor of the code is live after all: here is the click back.
    Back(Click, Permit),
}

pub(crate) struct Directory {
    map: DashMap<ShortCode, Entry>,
    /// Live actors past which idle ones are stopped.
    max_actors: usize,
    /// The CLOCK: every started actor, oldest first; stale ones are dropped as the hand
    /// passes.
    clock: Mutex<VecDeque<(ShortCode, ActorId)>>,
    doorkeeper: Doorkeeper,
    backoff: DashMap<ShortCode, Backoff>,
    /// Codes deleted while this process runs: no new actor starts for them (a click that
    /// found the link just before its deletion is dropped, not stored for a deleted code).
    gone: dashmap::DashSet<ShortCode>,
    closed: AtomicBool,
}

impl Directory {
    pub fn new(max_actors: usize) -> Self {
        Self {
            map: DashMap::default(),
            max_actors: max_actors.max(1),
            clock: Mutex::default(),
            doorkeeper: Doorkeeper::default(),
            backoff: DashMap::default(),
            gone: dashmap::DashSet::default(),
            closed: AtomicBool::default(),
        }
    }

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
        let (entry, click, permit) = match self.map.get(code) {
            Some(entry) => (entry, click, permit),
            None => {
                // A code not clicked recently gets no actor: the writer numbers its click. A
                // click that asks whether it is within a visit limit needs the actor.
                let (click, permit) = if click.admit.is_none() && !self.doorkeeper.admit(code) {
                    match self.push_fresh(shared, link, click, permit) {
                        Fresh::Done(pushed) => return pushed,
                        Fresh::Back(click, permit) => (click, permit),
                    }
                } else {
                    (click, permit)
                };
                // Start it now, so the click is queued before the redirect is answered and a
                // read right after the redirect sees it.
                match self.route(shared, link) {
                    Route::Closed => return Pushed::Refused(DropReason::ShuttingDown),
                    Route::Unavailable => return Pushed::Refused(DropReason::ActorUnavailable),
                    Route::Gone => return Pushed::Refused(DropReason::LinkDeleted),
                    Route::Live(..) | Route::Wait(_) => {}
                }
                match self.map.get(code) {
                    Some(entry) => (entry, click, permit),
                    None => return Pushed::Later(click, permit),
                }
            }
        };
        if entry.draining {
            return Pushed::Later(click, permit);
        }
        entry.touch();
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

    /// Hands a click of a code with no live actor to the writer to number, holding the code's
    /// shard lock so no actor of the code starts in between.
    fn push_fresh(
        &self,
        shared: &Arc<Shared>,
        link: &Arc<Link>,
        click: Click,
        permit: Permit,
    ) -> Fresh {
        let MapEntry::Vacant(slot) = self.map.entry(link.code.clone()) else {
            return Fresh::Back(click, permit);
        };
        if self.closed.load(Ordering::Acquire) {
            return Fresh::Done(Pushed::Refused(DropReason::ShuttingDown));
        }
        if self.gone.contains(&link.code) {
            return Fresh::Done(Pushed::Refused(DropReason::LinkDeleted));
        }
        // Classified under the lock (a cache hit, nanoseconds): the click stays whole for the
        // rare case above, an actor started in between.
        let (event, ack) = click.into_event(0, &shared.agents);
        shared.writer.fresh_click(FreshClick {
            code: link.code.clone(),
            event,
            ack,
            permit,
        });
        drop(slot);
        Fresh::Done(Pushed::Queued)
    }

    /// Past the actor budget, asks a few idle actors to stop, least recently used first: the
    /// hand of the CLOCK passes each started actor in turn, gives one used since its last pass
    /// a second chance, passes by one with viewers or waiting questions (it would decline),
    /// and asks the others to passivate.
    fn evict(&self) {
        let over = self.map.len().saturating_sub(self.max_actors);
        if over == 0 {
            return;
        }
        let Ok(mut clock) = self.clock.lock() else {
            return;
        };
        let mut asked = 0;
        for _ in 0..64 {
            if asked >= over.min(4) {
                break;
            }
            let Some((code, id)) = clock.pop_front() else {
                break;
            };
            let Some(entry) = self.map.get(&code) else {
                continue;
            };
            if entry.actor.get_id() != id || entry.draining {
                continue;
            }
            if !entry.inbox.is_busy() && !entry.used.swap(false, Ordering::Relaxed) {
                let _ = entry.actor.cast(LinkMsg::Passivate);
                asked += 1;
            }
            drop(entry);
            clock.push_back((code, id));
        }
    }

    /// Puts a started actor on the CLOCK; drops stale places when they outnumber live ones.
    fn enter_clock(&self, code: ShortCode, id: ActorId) {
        let Ok(mut clock) = self.clock.lock() else {
            return;
        };
        clock.push_back((code, id));
        if clock.len() > 2 * self.map.len() + 1024 {
            clock.retain(|(code, id)| self.map.get(code).is_some_and(|e| e.actor.get_id() == *id));
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

    /// Finds the code's actor, starting one if there is none.
    pub fn route(&self, shared: &Arc<Shared>, link: &Arc<Link>) -> Route {
        if let Some(e) = self.map.get(link.code.as_str()) {
            return if e.draining {
                Route::Wait(e.done.clone())
            } else {
                e.touch();
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
                self.start(slot, shared, link)
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
