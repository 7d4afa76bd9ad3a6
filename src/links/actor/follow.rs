//! What an actor does on a cluster store, where other nodes may store clicks of its code: it
//! follows them while anyone watches it here, takes them in when they continue its count, and
//! catches up from the store when they do not (it started, or was last followed, before
//! them). Only an actor with clicks of its own in flight that another node's clicks overtook
//! cannot tell where its own go: it is superseded, stops, and its viewers come back to its
//! successor with `Last-Event-ID`. On an embedded store none of this runs: no other node
//! writes.

use std::{
    sync::{Arc, atomic::Ordering::SeqCst},
    time::Instant,
};

use ractor::{ActorRef, RpcReplyPort};
use tracing::debug;

use super::{LinkMsg, LinkState};
use crate::domain::ClickEvent;

/// Remote clicks held while a catch-up reads the store: beyond this many the oldest are let
/// go (the next gap they leave starts another catch-up).
const HELD: usize = 100_000;

/// An actor's catching up with other nodes' clicks.
#[derive(Default)]
pub(super) struct Remote {
    /// A read of the store is under way.
    reading: bool,
    /// Clicks other nodes stored that came while it was.
    held: Vec<ClickEvent>,
    /// Reads waiting until the actor's count reaches theirs (the count the store showed them).
    waiting: Vec<(u64, RpcReplyPort<()>)>,
}

impl LinkState {
    /// Follows the clicks other nodes store for this code while anyone watches it here (a
    /// cluster store; nothing on an embedded one), and stops following when nobody does.
    pub(super) fn follow_others(&mut self) {
        if !self.shared.store.shared_by_nodes() {
            return;
        }
        let watched = !self.subscribers.is_empty() && !self.stale && !self.draining;
        match (&self.following, watched) {
            (None, true) => {
                let actor = self.watch.actor.clone();
                self.following = self.shared.store.follow(
                    self.code.as_str(),
                    Box::new(move |events| {
                        let _ = actor.cast(LinkMsg::Remote(events));
                    }),
                );
            }
            (Some(task), false) => {
                task.abort();
                self.following = None;
                // Unfollowed, its count would fall behind the other nodes' clicks: it stops
                // once idle, and a later read starts from the store.
                let myself = self.watch.actor.clone();
                self.stop_if_idle(&myself, "no longer watched here");
            }
            _ => {}
        }
    }

    /// Takes in clicks another node stored: those after this actor's count, if they follow
    /// on from it; if they do not, it catches up from the store first.
    pub(super) fn take_remote(&mut self, myself: &ActorRef<LinkMsg>, mut events: Vec<ClickEvent>) {
        self.sync_committed();
        if self.stale || self.deleted {
            return;
        }
        events.retain(|e| e.seq > self.committed);
        let Some(first) = events.first().map(|e| e.seq) else {
            return;
        };
        if self.remote.reading {
            self.hold(events);
            return;
        }
        if first == self.committed + 1 && self.count == self.committed {
            self.apply_remote(events);
            return;
        }
        self.hold(events);
        self.catch_up(myself, None);
    }

    fn hold(&mut self, events: Vec<ClickEvent>) {
        self.remote.held.extend(events);
        if self.remote.held.len() > HELD {
            let over = self.remote.held.len() - HELD;
            self.remote.held.drain(..over);
        }
    }

    /// Reads the clicks stored after this actor's count and takes them in, answering `reply`
    /// once its count reaches the count given with it (read again meanwhile if the store's
    /// answer fell short). With clicks of its own in flight it cannot: it is superseded.
    pub(super) fn catch_up(
        &mut self,
        myself: &ActorRef<LinkMsg>,
        reply: Option<(u64, RpcReplyPort<()>)>,
    ) {
        self.sync_committed();
        if self.stale || self.deleted || self.draining {
            return;
        }
        if self.count != self.committed {
            self.supersede(myself);
            return;
        }
        self.remote.waiting.extend(reply);
        if self.remote.reading {
            return;
        }
        self.remote.reading = true;
        let (store, code, after, actor) = (
            self.shared.store.clone(),
            self.code.clone(),
            self.committed,
            myself.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut events = Vec::new();
            let read = store
                .walk_clicks(code.as_str(), after, &mut |event| {
                    events.push(event);
                    std::ops::ControlFlow::Continue(())
                })
                .map(|()| events)
                .map_err(|e| e.to_string());
            // An actor that has stopped meanwhile needs none of it.
            let _ = actor.cast(LinkMsg::CaughtUp(read));
        });
    }

    /// Takes in what a catch-up read, then the clicks held meanwhile.
    pub(super) fn caught_up(
        &mut self,
        myself: &ActorRef<LinkMsg>,
        read: Result<Vec<ClickEvent>, String>,
    ) {
        self.remote.reading = false;
        let mut events = match read {
            Ok(events) => events,
            Err(cause) => {
                // The store cannot be read now: the viewers keep what they have; it is read
                // again shortly while anyone waits for it (readers until their deadlines,
                // viewers for the clicks held meanwhile).
                debug!(code = %self.code, %cause, "cannot catch up with other nodes' clicks yet");
                self.remote.waiting.retain(|(_, reply)| !reply.is_closed());
                if !self.remote.waiting.is_empty() || !self.remote.held.is_empty() {
                    myself.send_after(std::time::Duration::from_millis(200), || LinkMsg::Reread);
                }
                return;
            }
        };
        self.sync_committed();
        if self.stale || self.deleted {
            return;
        }
        if self.count != self.committed {
            // Clicks of its own were numbered meanwhile, on a count that was behind.
            self.supersede(myself);
            return;
        }
        events.append(&mut self.remote.held);
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        events.retain(|e| e.seq > self.committed);
        // Only a run that follows on from the count is taken; a gap left by clicks stored
        // after the read is closed by the next catch-up.
        let run = events
            .iter()
            .zip(self.committed + 1..)
            .take_while(|(e, seq)| e.seq == *seq)
            .count();
        let rest = events.split_off(run);
        self.apply_remote(events);
        let committed = self.committed;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.remote.waiting)
            .into_iter()
            .partition(|(to, _)| *to <= committed);
        for (_, reply) in done {
            let _ = reply.send(());
        }
        self.remote.waiting = waiting;
        if !rest.is_empty() {
            self.remote.held = rest;
            self.catch_up(myself, None);
        } else {
            // The store showed a reader more clicks than this read found: read again shortly,
            // until the reader gives up at its own deadline.
            self.remote.waiting.retain(|(_, reply)| !reply.is_closed());
            if !self.remote.waiting.is_empty() {
                debug!(code = %self.code, committed, "caught up short of what a read saw; again");
                myself.send_after(std::time::Duration::from_millis(50), || LinkMsg::Reread);
            }
        }
    }

    /// Folds in clicks another node stored, numbered right after this actor's count.
    fn apply_remote(&mut self, events: Vec<ClickEvent>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        for event in events {
            let shared = &self.shared;
            if let Err(e) =
                self.aggregates
                    .fold(&event, &shared.visitor_key, &shared.settings.aggregates)
            {
                tracing::error!(code = %self.code, cause = %e, "aggregates out of step");
            }
            self.last = Some(Arc::new(event));
        }
        self.count = last;
        self.committed = last;
        self.watch.committed.fetch_max(last, SeqCst);
        self.last_activity = Instant::now();
        self.frame = None;
        self.progressed = true;
        self.stats_changed = true;
        self.stats_bytes = None;
        self.store_aggregates(false);
    }

    /// Another node numbered clicks of this code while this actor had its own in flight:
    /// stop without storing or showing anything more. Clicks still in the inbox go to the
    /// successor; subscribers' streams end and their browsers come back (with
    /// `Last-Event-ID`) to it.
    pub(super) fn supersede(&mut self, myself: &ActorRef<LinkMsg>) {
        if self.stale {
            return;
        }
        debug!(code = %self.code, count = self.count, "superseded by another node's clicks");
        self.stale = true;
        self.remote.waiting.clear();
        self.end(myself);
    }
}
