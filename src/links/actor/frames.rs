//! What an actor sends its subscribers: one frame of the committed state per change, spaced
//! so a round of deliveries ends before the next begins, and a `stats` event of the
//! aggregates at most once per [`STATS_INTERVAL`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::ActorRef;

use super::{LinkMsg, LinkState, STATS_INTERVAL};
use crate::{analytics::query, domain::now_ms, links::frame};

impl LinkState {
    /// After any message: if the committed state moved (on whatever path it was noticed),
    /// answer the questions it satisfies and schedule a frame.
    pub(super) fn follow_progress(&mut self, myself: &ActorRef<LinkMsg>) {
        if std::mem::take(&mut self.progressed) {
            self.answer_waiters();
            self.schedule_flush(myself);
        }
    }

    fn schedule_flush(&mut self, myself: &ActorRef<LinkMsg>) {
        if self.flush_pending || self.subscribers.is_empty() {
            return;
        }
        self.flush_pending = true;
        // Frames per second a link may cost: with many subscribers, frames come further apart
        // so that one round of deliveries ends before the next begins (and latency stays
        // bounded instead of queues growing).
        let settings = &self.shared.settings;
        let round = Duration::from_secs_f64(
            self.subscribers.len() as f64 / settings.deliveries_per_sec.max(1) as f64,
        );
        let gap = settings.min_frame_interval.max(round);
        let since = self.last_broadcast.elapsed();
        if since >= gap {
            // Goes behind the messages already queued, so one frame covers a burst.
            if myself.cast(LinkMsg::Flush).is_err() {
                self.flush_pending = false;
            }
        } else {
            myself.send_after(gap - since, || LinkMsg::Flush);
        }
    }

    /// A `Flush`: sends the committed state to the subscribers.
    pub(super) fn on_flush(&mut self) {
        self.flush_pending = false;
        self.sync_committed();
        self.broadcast();
        // This frame carries the newest state: nothing more to schedule for it.
        self.answer_waiters();
        self.progressed = false;
    }

    fn broadcast(&mut self) {
        if self.frame.is_none() && !self.subscribers.is_empty() {
            self.shared.metrics.click_framed(self.last.as_deref());
        }
        let mut frame = self.current_frame();
        if self.stats_due() {
            // One write per subscriber carries both events.
            let stats = self.stats_round();
            frame = [stats, frame].concat().into();
        }
        let now = Instant::now();
        self.subscribers.deliver(&frame, self.committed, now, None);
        self.last_broadcast = now;
    }

    pub(super) fn current_frame(&mut self) -> Bytes {
        // Beyond the count, a private link's frames say nothing.
        let last = self.last.as_deref().filter(|_| self.link.public_stats);
        let (code, count) = (&self.code, self.committed);
        self.frame
            .get_or_insert_with(|| frame::state_frame(code.code(), count, last))
            .clone()
    }

    pub(super) fn stats_due(&self) -> bool {
        self.stats_changed && self.stats_sent.elapsed() >= STATS_INTERVAL
    }

    /// The `stats` event of the aggregates as they are, built once per change (nothing for a
    /// link whose stats are not public).
    pub(super) fn stats_event(&mut self) -> Bytes {
        if !self.link.public_stats {
            return Bytes::new();
        }
        let now = now_ms();
        let minute = now.div_euclid(60_000);
        // Its last hour moves on with the clock, even without clicks.
        if self.stats_minute != minute {
            self.stats_bytes = None;
            self.stats_minute = minute;
        }
        let (aggregates, settings) = (&self.aggregates, &self.shared.settings.aggregates);
        self.stats_bytes
            .get_or_insert_with(|| frame::stats_frame(&query::live(aggregates, settings, now)))
            .clone()
    }

    /// The `stats` event for a round of deliveries: what it sends is no longer pending.
    pub(super) fn stats_round(&mut self) -> Bytes {
        self.stats_changed = false;
        self.stats_sent = Instant::now();
        self.stats_event()
    }
}
