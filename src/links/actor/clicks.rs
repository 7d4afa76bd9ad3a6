//! How an actor counts clicks: it numbers the ones in its inbox (refusing those past the
//! visit limit) and hands them to the writer, takes in what the writer reports committed
//! (folding it into the aggregates), and stores a snapshot of the aggregates now and then.

use std::{
    sync::{Arc, atomic::Ordering::SeqCst},
    time::Instant,
};

use super::LinkState;
use crate::{analytics::aggregates::encode_snapshot, store::ClickBatch};

impl LinkState {
    pub(super) fn count_clicks(&mut self) {
        let (clicks, permit) = self.inbox.take();
        if clicks.is_empty() {
            return;
        }
        // Lets go of what is committed meanwhile, also on a busy link nobody watches.
        self.sync_committed();
        self.last_activity = Instant::now();
        let mut events = Vec::with_capacity(clicks.len());
        let mut acks = Vec::new();
        let mut admits = Vec::new();
        // On a store other nodes write to, another node may take a limited link's last place
        // meanwhile: the store decides, when it stores the click after the code's last one.
        let store_admits = self.shared.store.shared_by_nodes();
        for mut click in clicks {
            // The visit limit is checked here, where clicks are numbered one at a time: never
            // one more than the limit, however many race for the last place. Only a click that
            // asked is refused: one without (its redirect found the link before a limit was
            // set, and was answered) is counted.
            let mut refused = self.deleted;
            let mut asks = None;
            if let Some(admit) = click.admit.take() {
                // Counts only grow: past the limit here is past it in the store.
                refused |= self.link.max_visits.is_some_and(|max| self.count >= max);
                if store_admits && !refused {
                    asks = Some(admit);
                } else if admit.send(!refused).is_err() {
                    // A redirect that stopped waiting answered no one: its click takes no
                    // place.
                    refused = true;
                }
            }
            if refused {
                continue;
            }
            self.count += 1;
            let (event, ack) = click.into_event(self.count, &self.shared.agents);
            if let Some(admit) = asks {
                admits.push((events.len(), admit));
            }
            events.push(Arc::new(event));
            acks.extend(ack);
        }
        if events.is_empty() {
            return;
        }
        self.uncommitted.extend(events.iter().cloned());
        self.shared.writer.clicks(ClickBatch {
            code: self.code.clone(),
            events,
            acks,
            listener: Some(self.watch.clone()),
            permit,
            admits,
            limit: self.link.max_visits,
        });
    }

    /// Takes in what the writer has committed since last looked. True if the state moved.
    pub(super) fn sync_committed(&mut self) -> bool {
        let committed = self.watch.committed.load(SeqCst);
        if committed <= self.committed || self.stale {
            return false;
        }
        while self
            .uncommitted
            .front()
            .is_some_and(|event| event.seq <= committed)
        {
            let Some(event) = self.uncommitted.pop_front() else {
                break;
            };
            let shared = &self.shared;
            if let Err(e) =
                self.aggregates
                    .fold(&event, &shared.visitor_key, &shared.settings.aggregates)
            {
                // Cannot happen: clicks are numbered here and committed in order.
                tracing::error!(code = %self.code, cause = %e, "aggregates out of step");
            }
            self.last = Some(event);
        }
        self.committed = committed;
        self.frame = None;
        self.progressed = true;
        self.stats_changed = true;
        self.stats_bytes = None;
        self.store_aggregates(false);
        true
    }

    /// Stores a snapshot of the aggregates when enough has changed (`force`: when anything
    /// has). They cover only committed clicks, so the snapshot is never ahead of the log. The
    /// actor only copies them; the encoding (tens of ms for a link with millions of clicks)
    /// runs on the blocking pool, and the writer keeps the snapshot covering the most.
    pub(super) fn store_aggregates(&mut self, force: bool) {
        let covers = self.aggregates.covers();
        let settings = &self.shared.settings.aggregates;
        let due = covers > self.stored_covers
            && (force
                || (covers - self.stored_covers >= settings.snapshot_clicks
                    && self.stored_at.elapsed() >= settings.snapshot_gap));
        if !due {
            return;
        }
        let (copy, writer, code) = (
            self.aggregates.clone(),
            self.shared.writer.clone(),
            self.code.clone(),
        );
        let encode = move || match encode_snapshot(&copy) {
            Some(bytes) => writer.aggregates(code, covers, bytes),
            None => tracing::error!(code = %code, "aggregates could not be encoded"),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Tracked, so a clean stop waits for the last snapshots.
            self.shared.tracker.spawn_blocking_on(encode, &runtime);
        } else {
            encode();
        }
        self.stored_covers = covers;
        self.stored_at = Instant::now();
    }
}
