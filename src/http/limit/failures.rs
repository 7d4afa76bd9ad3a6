//! Failed tries per client address (authentications, password tries), counted by hand so an
//! address past its allowance is refused before anything of it is checked.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    time::{Duration, Instant},
};

use dashmap::DashMap;

/// Failed authentications per client address: a GCRA of `rate` per second with a burst of
/// `rate`, kept by hand because an address past it is refused *before* its key is checked
/// (governor's limiters answer only by taking from the allowance, and a refused request must
/// take nothing: it was not a failure, and a right key must not extend the wait).
pub struct Failures<K: std::hash::Hash + Eq = IpAddr> {
    /// What one failure takes from the allowance: 1 s / rate.
    interval: Duration,
    /// The allowance less one failure: an address owing more than this is refused.
    tolerance: Duration,
    /// Per address key, when its allowance is whole again.
    whole_at: DashMap<K, Instant>,
}

impl<K: std::hash::Hash + Eq> Failures<K> {
    /// `rate` failures per `per`, also the burst; `None` when `rate` is 0 (no limit).
    pub fn new(rate: u32, per: Duration) -> Option<Self> {
        Some(Self::every(NonZeroU32::new(rate)?, per))
    }

    /// `rate` failures per `per`, also the burst.
    pub fn every(rate: NonZeroU32, per: Duration) -> Self {
        let interval = per / rate.get();
        Self {
            interval,
            tolerance: interval * (rate.get() - 1),
            whole_at: DashMap::new(),
        }
    }

    /// How long the address must still wait, if it is past its allowance.
    pub fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let owed = self.whole_at.get(key)?.saturating_duration_since(now);
        (owed > self.tolerance).then(|| owed - self.tolerance)
    }

    /// Takes one from the allowance if the address is within it, atomically (tries that
    /// race each see the others'); otherwise how long it must wait.
    pub fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut whole_at = self.whole_at.entry(key).or_insert(now);
        let owed = whole_at.saturating_duration_since(now);
        if owed > self.tolerance {
            return Err(owed - self.tolerance);
        }
        *whole_at = (*whole_at).max(now) + self.interval;
        Ok(())
    }

    pub fn failed(&self, key: K, now: Instant) {
        let mut whole_at = self.whole_at.entry(key).or_insert(now);
        *whole_at = (*whole_at).max(now) + self.interval;
    }

    /// Addresses tracked now (for [`ClientLimits::tracked`](super::ClientLimits::tracked)).
    pub fn tracked(&self) -> usize {
        self.whole_at.len()
    }

    /// Forgets the addresses whose allowance is whole again.
    pub fn sweep(&self, now: Instant) {
        self.whole_at.retain(|_, whole_at| *whole_at > now);
        self.whole_at.shrink_to_fit();
    }
}
