//! The bound on clicks taken but not yet committed. A redirect takes a [`Permit`] for its click
//! before anything is queued; the permit travels with the click through the actor's inbox, its
//! mailbox and the writer's queue, and gives its place back when the click is committed or
//! dropped (whatever drops it). So everything a stalled disk can make grow (inboxes, mailboxes,
//! the writer's queue, the tasks that carry clicks to a successor actor) holds at most `limit`
//! clicks together, and past that a click is refused at the door instead of queued.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

#[derive(Debug)]
pub struct Backlog {
    pending: AtomicUsize,
    limit: usize,
}

impl Backlog {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            pending: AtomicUsize::new(0),
            limit: limit.max(1),
        })
    }

    /// A place for one more click, unless `limit` clicks are already waiting.
    pub fn admit(self: &Arc<Self>) -> Option<Permit> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                backlog: Some(self.clone()),
                n: 1,
            })
    }

    /// Clicks taken and not yet committed or dropped.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn is_full(&self) -> bool {
        self.pending() >= self.limit
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
            backlog.pending.fetch_sub(self.n, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back_whatever_path_a_click_takes() {
        let backlog = Backlog::new(3);
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
}
