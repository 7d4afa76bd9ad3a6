//! Unique visitors: a keyed hash per visitor and day, counted in an estimating set.

use cardinality_estimator::CardinalityEstimator;

use super::DAY_MS;
use crate::{analytics::anonymise_ip, domain::ClickEvent};

/// A set of visitors, estimated: exact (as a small sorted array of 32-bit hash encodings) up to
/// 128 visitors, then a HyperLogLog++ of 2^12 six-bit registers (about 1.6% standard error).
pub type Visitors = CardinalityEstimator<u64>;

/// The secret that makes visitor hashes unlinkable to addresses: 32 random bytes made once per
/// store and kept in it, so a restart rebuilds the same unique counts.
#[derive(Clone)]
pub struct VisitorKey {
    k0: u64,
    k1: u64,
}

impl VisitorKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        let word = |at: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        // SipHash takes a 128-bit key; the two other words fold into it.
        Self {
            k0: word(0) ^ word(16),
            k1: word(8) ^ word(24),
        }
    }

    /// A keyed hash (SipHash-1-3, a keyed PRF) of (anonymised address, user agent, UTC day):
    /// one visitor per day. Never stored; only the sketch registers it sets are.
    pub fn visitor(&self, event: &ClickEvent) -> u64 {
        use std::hash::Hasher;
        let mut hash = siphasher::sip::SipHasher13::new_with_keys(self.k0, self.k1);
        match event
            .ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .map(anonymise_ip)
        {
            Some(std::net::IpAddr::V4(v4)) => hash.write(&v4.octets()),
            Some(std::net::IpAddr::V6(v6)) => hash.write(&v6.octets()),
            None => hash.write(&[]),
        }
        hash.write_u8(0xff);
        hash.write(event.user_agent.as_bytes());
        hash.write_u8(0xff);
        hash.write_i64(event.at.div_euclid(DAY_MS));
        hash.finish()
    }
}
