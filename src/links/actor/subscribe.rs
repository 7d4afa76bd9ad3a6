//! An actor's subscribers: taking one on (with its first frame), letting one go, and asking
//! the writer for news of commits only while anyone watches or waits.

use std::{sync::atomic::Ordering::SeqCst, time::Instant};

use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use super::{LinkMsg, LinkState, SubscribeError, Subscription};

impl LinkState {
    /// A `Subscribe` whose caller still waits: subscribes it and answers.
    pub(super) fn on_subscribe(
        &mut self,
        myself: &ActorRef<LinkMsg>,
        last_event_id: Option<u64>,
        reply: RpcReplyPort<Result<Subscription, SubscribeError>>,
    ) {
        let answer = self.subscribe(last_event_id);
        let id = answer.as_ref().ok().map(|s| s.id);
        if id.is_some() {
            self.fast_timer(myself);
        }
        if reply.send(answer).is_err()
            && let Some(id) = id
        {
            // Gave up just now: take the subscriber out at once rather than at the next
            // send, so it does not count against the limits or keep the actor alive.
            self.subscribers.remove(id);
            self.update_wanted();
        }
    }

    fn subscribe(&mut self, last_event_id: Option<u64>) -> Result<Subscription, SubscribeError> {
        if self.draining {
            return Err(SubscribeError::Stopping);
        }
        if self.subscribers.len() >= self.shared.settings.max_subscribers_per_link {
            return Err(SubscribeError::LinkFull);
        }
        let (tx, frames) = mpsc::channel(self.shared.settings.queue_frames);
        let id = self.shared.next_subscriber.fetch_add(1, SeqCst);
        // From now on commits are wanted, so none is missed; then read the latest.
        self.watch.wanted.store(true, SeqCst);
        self.inbox.set_busy(true);
        self.sync_committed();
        // A client that has the committed state gets nothing at first. One with a larger id
        // (it saw a count a crash took back, or another node's) gets the state as it is: an
        // `EventSource` answered with anything but 200 stops reconnecting for good.
        // The aggregates come first, as a `stats` event (the original's clients ignore it).
        let stats = self.stats_event();
        let initial = if last_event_id == Some(self.committed) {
            stats
        } else {
            [stats, self.current_frame()].concat().into()
        };
        let initial = Some(initial);
        // It has the committed state now: the next frame is for a later one, never this id.
        self.subscribers.add(id, tx, self.committed);
        self.follow_others();
        self.last_activity = Instant::now();
        Ok(Subscription {
            id,
            initial,
            frames,
        })
    }

    /// An `Unsubscribe`: a subscriber's stream was dropped.
    pub(super) fn on_unsubscribe(&mut self, id: u64) {
        if self.subscribers.remove(id) {
            self.update_wanted();
        }
        self.last_activity = Instant::now();
    }

    /// Asks the writer to wake this actor on commits while anyone waits for them.
    pub(super) fn update_wanted(&mut self) {
        self.follow_others();
        let wanted = !self.subscribers.is_empty() || !self.waiters.is_empty();
        self.watch.wanted.store(wanted, SeqCst);
        self.inbox.set_busy(wanted);
        if wanted {
            // A commit reported before `wanted` was set sent no message.
            self.sync_committed();
        }
    }
}
