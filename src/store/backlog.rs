//! The bound on clicks taken but not yet committed. A redirect takes a [`Permit`] for its click
//! before anything is queued; the permit travels with the click through the actor's inbox, its
//! mailbox and the writer's queue, and gives its place back when the click is committed or
//! dropped (whatever drops it). So everything a stalled disk can make grow (inboxes, mailboxes,
//! the writer's queue, the tasks that carry clicks to a successor actor) holds at most `limit`
//! clicks together, and past that a click is refused at the door instead of queued.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

#[derive(Debug)]
pub struct Backlog {
    /// One permit per free place. Its waiters are served in order, and while any waits a
    /// freed place goes to the first of them, not to a click that just came.
    places: Semaphore,
    limit: usize,
    /// How long a click waits for a place while the backlog drains.
    wait: Duration,
    /// When a place was last given back, or the backlog became full (milliseconds since
    /// `epoch`).
    last_freed: AtomicU64,
    epoch: Instant,
}

impl Backlog {
    pub fn new(limit: usize, wait: Duration) -> Arc<Self> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            places: Semaphore::new(limit),
            limit,
            wait,
            last_freed: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// A place for one more click, unless `limit` clicks are already waiting.
    pub fn admit(self: &Arc<Self>) -> Option<Permit> {
        let taken = self.places.try_acquire().ok()?;
        taken.forget();
        if self.places.available_permits() == 0 {
            // Full from now: a click that finds it so may wait `wait` for a place from here.
            self.mark();
        }
        Some(self.permit(1))
    }

    /// A place for one more click, waiting up to the backlog's wait for one while the backlog is full
    /// but draining: clicks are being stored, only more slowly than they come (a long tail
    /// of codes on a cluster, say). When no place was given back for `wait` (the store is
    /// stalled or unreachable), the click is refused at once instead: a stall does not make
    /// every redirect wait.
    pub async fn admit_waiting(self: &Arc<Self>) -> Option<Permit> {
        let wait = self.wait;
        if let Some(permit) = self.admit() {
            return Some(permit);
        }
        if wait.is_zero() || self.since_freed() > wait {
            return None;
        }
        let taken = tokio::time::timeout(wait, self.places.acquire())
            .await
            .ok()?
            .ok()?;
        taken.forget();
        Some(self.permit(1))
    }

    fn permit(self: &Arc<Self>, n: usize) -> Permit {
        Permit {
            backlog: Some(self.clone()),
            n,
        }
    }

    fn since_freed(&self) -> Duration {
        let now = self.epoch.elapsed();
        now.saturating_sub(Duration::from_millis(
            self.last_freed.load(Ordering::Relaxed),
        ))
    }

    fn mark(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_freed.store(now, Ordering::Relaxed);
    }

    fn give_back(&self, n: usize) {
        self.mark();
        self.places.add_permits(n);
    }

    /// Clicks taken and not yet committed or dropped.
    pub fn pending(&self) -> usize {
        self.limit.saturating_sub(self.places.available_permits())
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn is_full(&self) -> bool {
        self.places.available_permits() == 0
    }
}

/// The places of `n` clicks in the backlog; given back on drop.
#[derive(Debug, Default)]
pub struct Permit {
    backlog: Option<Arc<Backlog>>,
    n: usize,
}

impl Permit {
    /// Holds no place (merge others into it).
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Takes over the places of `other`.
    pub fn merge(&mut self, mut other: Permit) {
        if other.n == 0 {
            return;
        }
        if self.backlog.is_none() {
            self.backlog = other.backlog.take();
        }
        self.n += std::mem::take(&mut other.n);
    }

    /// Places in its backlog held by other clicks, still on their way to be stored.
    pub fn others_pending(&self) -> usize {
        self.backlog
            .as_ref()
            .map_or(0, |backlog| backlog.pending().saturating_sub(self.n))
    }

    /// Splits off the place of one click (an empty permit if this one holds none).
    pub fn split_one(&mut self) -> Permit {
        if self.n == 0 {
            return Permit::empty();
        }
        self.n -= 1;
        Permit {
            backlog: self.backlog.clone(),
            n: 1,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(backlog) = &self.backlog
            && self.n > 0
        {
            backlog.give_back(self.n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back_whatever_path_a_click_takes() {
        let backlog = Backlog::new(3, Duration::ZERO);
        let a = backlog.admit().expect("first");
        let b = backlog.admit().expect("second");
        let mut c = backlog.admit().expect("third");
        assert!(backlog.admit().is_none(), "the fourth waits");
        assert!(backlog.is_full());
        // An inbox merges its clicks' places into one.
        let mut inbox = Permit::empty();
        inbox.merge(a);
        inbox.merge(b);
        assert_eq!((inbox.len(), backlog.pending()), (2, 3));
        // One click of them is handed to another actor, and dropped there.
        drop(inbox.split_one());
        assert_eq!(backlog.pending(), 2);
        drop(inbox);
        assert_eq!(backlog.pending(), 1);
        drop(c.split_one());
        drop(c.split_one());
        drop(c);
        assert_eq!(backlog.pending(), 0);
        assert!(backlog.admit().is_some());
    }

    #[tokio::test]
    async fn a_click_waits_for_a_place_while_the_backlog_drains_and_not_while_it_is_stalled() {
        let backlog = Backlog::new(1, Duration::from_secs(30));
        let held = backlog.admit().expect("the only place");
        // Draining: a place comes back while the click waits, and it takes it.
        let waiting = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.admit_waiting().await }
        });
        tokio::task::yield_now().await;
        drop(held);
        let taken = waiting.await.unwrap().expect("a place given back");
        assert_eq!(backlog.pending(), 1);
        // Stalled: nothing given back for longer than the wait, so no wait at all.
        let backlog = Backlog::new(1, Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _held = backlog.admit().expect("the only place");
        // Full for less than the wait: a click still waits (and times out here).
        assert!(backlog.admit_waiting().await.is_none());
        tokio::time::sleep(Duration::from_millis(30)).await;
        let refused = tokio::time::timeout(Duration::from_secs(30), backlog.admit_waiting())
            .await
            .expect("refused at once, not after a wait");
        assert!(refused.is_none());
        drop(taken);
    }
}
