//! The live subscribers of one link, owned by its actor. Keyed by id, so a viewer leaving costs
//! O(1) and 15,000 leaving at once cost O(n) in all. Frames go into each subscriber's small
//! bounded queue with `try_send`: a full queue marks the subscriber behind (it gets the newest
//! state when it drains: conflation); one behind for too long is dropped and comes back with
//! `Last-Event-ID`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::debug;

use super::frame;

struct Subscriber {
    tx: mpsc::Sender<Bytes>,
    /// The count of the last state frame this subscriber was given.
    sent: u64,
    /// Since when its queue has been full, if it is.
    behind_since: Option<Instant>,
}

#[derive(Default)]
pub(super) struct Subscribers {
    map: HashMap<u64, Subscriber>,
}

impl Subscribers {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Ends every subscription: their queues close once drained.
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Adds a subscriber that has seen the state `sent`.
    pub fn add(&mut self, id: u64, tx: mpsc::Sender<Bytes>, sent: u64) {
        self.map.insert(
            id,
            Subscriber {
                tx,
                sent,
                behind_since: None,
            },
        );
    }

    pub fn remove(&mut self, id: u64) -> bool {
        self.map.remove(&id).is_some()
    }

    /// Whether anyone has not been sent the state `count` yet.
    pub fn any_behind(&self, count: u64) -> bool {
        self.map
            .values()
            .any(|s| s.sent < count || s.behind_since.is_some())
    }

    /// Sends the frame of state `count` to every subscriber that has not had it (never the same
    /// id twice). With `stuck`, first drops those whose queue has been full for that long.
    pub fn deliver(&mut self, frame: &Bytes, count: u64, now: Instant, stuck: Option<Duration>) {
        self.map.retain(|id, s| {
            if let (Some(stuck), Some(since)) = (stuck, s.behind_since)
                && now.duration_since(since) >= stuck
            {
                debug!(subscriber = id, "dropping a stuck subscriber");
                return false;
            }
            if s.sent >= count {
                return true;
            }
            match s.tx.try_send(frame.clone()) {
                Ok(()) => {
                    s.sent = count;
                    s.behind_since = None;
                    true
                }
                Err(TrySendError::Full(_)) => {
                    s.behind_since.get_or_insert(now);
                    true
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }

    /// A heartbeat comment to everyone with room for it; drops those whose stream has gone.
    pub fn heartbeat(&mut self) {
        self.send_all(&frame::HEARTBEAT);
    }

    /// A frame outside the numbered states (a heartbeat, a `stats` event) to everyone with
    /// room for it; drops those whose stream has gone.
    pub fn send_all(&mut self, frame: &Bytes) {
        self.map
            .retain(|_, s| !matches!(s.tx.try_send(frame.clone()), Err(TrySendError::Closed(_))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_never_gets_a_state_twice_and_a_full_queue_conflates() {
        let mut subs = Subscribers::default();
        let (fast_tx, mut fast) = mpsc::channel(8);
        let (slow_tx, mut slow) = mpsc::channel(1);
        subs.add(1, fast_tx, 0);
        subs.add(2, slow_tx, 0);
        let now = Instant::now();
        subs.deliver(&Bytes::from_static(b"1"), 1, now, None);
        subs.deliver(&Bytes::from_static(b"1"), 1, now, None);
        subs.deliver(&Bytes::from_static(b"2"), 2, now, None);
        assert_eq!(fast.try_recv().ok(), Some(Bytes::from_static(b"1")));
        assert_eq!(fast.try_recv().ok(), Some(Bytes::from_static(b"2")));
        assert!(fast.try_recv().is_err(), "state 1 was sent once");
        // The slow one took 1, missed 2 (full), and is behind.
        assert!(subs.any_behind(2));
        assert_eq!(slow.try_recv().ok(), Some(Bytes::from_static(b"1")));
        subs.deliver(&Bytes::from_static(b"3"), 3, now, None);
        assert_eq!(slow.try_recv().ok(), Some(Bytes::from_static(b"3")));
        // Gone readers are dropped at the next delivery.
        drop(slow);
        subs.deliver(&Bytes::from_static(b"4"), 4, now, None);
        assert_eq!(subs.len(), 1);
        assert!(subs.remove(1));
        assert!(subs.is_empty());
    }

    #[test]
    fn one_stuck_past_the_limit_is_dropped() {
        let mut subs = Subscribers::default();
        let (tx, _rx) = mpsc::channel(1);
        subs.add(7, tx, 0);
        let t0 = Instant::now();
        let stuck = Some(Duration::from_secs(30));
        subs.deliver(&Bytes::from_static(b"1"), 1, t0, stuck);
        subs.deliver(&Bytes::from_static(b"2"), 2, t0, stuck);
        assert_eq!(subs.len(), 1, "behind, not yet stuck");
        subs.deliver(
            &Bytes::from_static(b"3"),
            3,
            t0 + Duration::from_secs(31),
            stuck,
        );
        assert!(subs.is_empty());
    }
}
