//! Which codes were clicked recently: the "doorkeeper" of TinyLFU (Einziger, Friedman and
//! Manes), a Bloom filter that is cleared every [`PERIOD`] clicks. A code's first click in a
//! period finds its bits unset and is numbered by the writer without an actor; a second click
//! finds them set and starts the code's actor. So the long tail of codes clicked once each
//! costs no actor at all (no task, no count read, no memory held until the idle timeout),
//! while a code clicked again gets its actor from its second click on.
//!
//! A false positive starts an actor one click early; a code whose bits a clear erased gets one
//! more writer-numbered click. Neither changes a count: both paths number after the stored
//! count (see `store::writer`).
//!
//! 2^23 bits (1 MiB), 4 probes, cleared every 2^19 clicks: at the end of a period about 22 %
//! of the bits are set, so at most about 0.24 % of first clicks look like second ones (with
//! 2^22 bits it was 2.4 %, and a million distinct codes started about 3,000 actors).

use std::{
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

const BITS_LOG2: u32 = 23;
const WORDS: usize = 1 << (BITS_LOG2 - 6);
const PROBES: u64 = 4;
/// Clicks between clears.
pub const PERIOD: u64 = 1 << 19;

pub(crate) struct Doorkeeper {
    words: Box<[AtomicU64]>,
    seen: AtomicU64,
    hasher: foldhash::fast::RandomState,
}

impl Default for Doorkeeper {
    fn default() -> Self {
        Self {
            words: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
            seen: AtomicU64::new(0),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl Doorkeeper {
    /// Records a click of `code`; true if the code was (very likely) clicked before in this
    /// period or the one before it was cleared.
    pub fn admit(&self, code: &str) -> bool {
        let hash = self.hasher.hash_one(code);
        // Double hashing: probe i is h1 + i * h2 (h2 odd, so the probes differ).
        let (h1, h2) = (hash, (hash >> 32) | 1);
        let mut seen = true;
        for i in 0..PROBES {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) & ((1 << BITS_LOG2) - 1);
            let (word, mask) = ((bit >> 6) as usize, 1u64 << (bit & 63));
            // A load first: on codes seen before (the hot path) no cache line is written.
            if self.words[word].load(Relaxed) & mask == 0 {
                seen = false;
                self.words[word].fetch_or(mask, Relaxed);
            }
        }
        if self.seen.fetch_add(1, Relaxed) % PERIOD == PERIOD - 1 {
            for word in self.words.iter() {
                word.store(0, Relaxed);
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_click_is_seen_and_a_first_one_mostly_not() {
        let door = Doorkeeper::default();
        assert!(!door.admit("abc"));
        assert!(door.admit("abc"));
        // 100,000 distinct codes, once each: few are taken for codes seen before.
        let false_seen = (0..100_000)
            .filter(|i| door.admit(&format!("code{i}")))
            .count();
        assert!(
            false_seen < 1_000,
            "{false_seen} of 100000 first clicks seen"
        );
    }

    #[test]
    fn a_period_later_the_bits_are_cleared() {
        let door = Doorkeeper::default();
        door.admit("abc");
        for i in 0..PERIOD {
            door.admit(&format!("filler{i}"));
        }
        assert!(!door.admit("abc"));
    }
}
