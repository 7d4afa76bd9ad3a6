//! An actor's one timer: it beats the heartbeats, catches up or drops slow subscribers, lets
//! go of questions nobody waits for any more, and stops the actor once it is idle.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::ActorRef;
use tracing::debug;

use super::{LinkMsg, LinkState};

impl LinkState {
    /// Arms the timer to fire after `delay`; an earlier timer is forgotten.
    pub(super) fn arm(&mut self, myself: &ActorRef<LinkMsg>, delay: Duration) {
        self.timer += 1;
        let generation = self.timer;
        self.timer_due = Instant::now() + delay;
        myself.send_after(delay, move || LinkMsg::Tick(generation));
    }

    /// When the timer should fire next: often while someone watches or waits, else when the
    /// actor would become idle.
    pub(super) fn next_tick(&self) -> Duration {
        let settings = &self.shared.settings;
        if self.subscribers.is_empty() && self.waiters.is_empty() {
            (self.last_activity + settings.idle_timeout)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(5))
        } else {
            settings.tick
        }
    }

    /// Heartbeats, slow readers and waiting questions need the faster timer from now on.
    pub(super) fn fast_timer(&mut self, myself: &ActorRef<LinkMsg>) {
        let tick = self.shared.settings.tick;
        if self.timer_due > Instant::now() + tick {
            self.arm(myself, tick);
        }
    }

    pub(super) fn tick(&mut self, myself: &ActorRef<LinkMsg>) {
        let now = Instant::now();
        let (heartbeat, stuck, idle) = {
            let s = &self.shared.settings;
            (s.heartbeat, s.stuck_timeout, s.idle_timeout)
        };
        if now.duration_since(self.last_heartbeat) >= heartbeat {
            self.last_heartbeat = now;
            self.subscribers.heartbeat();
        }
        self.sync_committed();
        if self.stats_due() && !self.subscribers.is_empty() {
            // Changes that came too soon after the last `stats` event for the frames.
            let stats = self.stats_round();
            if !stats.is_empty() {
                self.subscribers.send_all(&stats);
            }
        }
        if self.subscribers.any_behind(self.committed) {
            // A reader catching up gets the aggregates it may have missed with the count.
            let frame: Bytes = [self.stats_event(), self.current_frame()].concat().into();
            self.subscribers
                .deliver(&frame, self.committed, now, Some(stuck));
        }
        // Questions whose callers gave up (a stalled disk) are let go.
        self.waiters.retain(|(_, waiter)| !waiter.is_closed());
        self.answer_waiters();
        self.update_wanted();
        if now.duration_since(self.last_activity) >= idle && self.stop_if_idle(myself, "idle") {
            return;
        }
        let next = self.next_tick();
        self.arm(myself, next);
    }

    /// Stops the actor if nobody watches it or waits for it. True if it is stopping.
    pub(super) fn stop_if_idle(&mut self, myself: &ActorRef<LinkMsg>, why: &str) -> bool {
        if !self.subscribers.is_empty()
            || !self.waiters.is_empty()
            || self.draining
            || !self
                .shared
                .directory
                .begin_drain(&self.code, myself.get_id())
        {
            return false;
        }
        debug!(code = %self.code, count = self.count, why, "stopping");
        self.draining = true;
        // Messages already queued are still handled; later ones are refused and their
        // senders wait for the successor.
        let _ = myself.drain();
        true
    }
}
