//! The embedded engine: one fjall database in `--data-dir` (keyspaces, reads, checks at open,
//! and the group-commit writer that does every write on the click path).
//!
//! | keyspace | key | value |
//! | --- | --- | --- |
//! | `links` | code | link record |
//! | `clicks` | code, 0x00, seq u64 big-endian | click record |
//! | `keys` | SHA-256 of an API key | key record |
//! | `meta` | `totals` | how many links and clicks are stored (see [`records::Totals`]) |
//! | `meta` | `visitor-key` | the secret of visitor hashes (unique visitors) |
//! | `meta` | `keys-revoked` | how many API keys were revoked, u64 big-endian (for the floor) |
//! | `stats` | code | the link's aggregates, tagged with the last click they cover |
//! | `meta` | `gone`, 0x00, code | a deleted code, held until a time (see `links.rs`) |
//! | `meta` | `domain`, 0x00, name / `setting`, 0x00, name | a domain; a setting (certificates, the ACME account) |
//! | `meta` | `audit`, 0x00, workspace, 0x00, seq u64 big-endian / `audit-seq` | the audit log; its last number |
//! | `index` | `t`, created_at, code / `o`, owner, 0x00, created_at, code | links newest first |
//!
//! A code's stored count is the number of its last stored click: clicks are numbered from 1
//! without gaps by the code's actor and committed in order, each group in one atomic batch, so
//! the count and the click events cannot disagree, even after a crash (the journal replays a
//! prefix of the batches). Keeping the count in the click keys rather than in a record of its
//! own halves the writes per click; reading it is one reverse seek.
//!
//! The files: `open.rs` (the open in named steps, the journal's upkeep, the clean close),
//! `check.rs` and `clean.rs` (what an open checks, and the listings that spare it reading
//! everything), `verify.rs` (reading everything), `totals.rs`, `keys.rs` (API keys),
//! `links.rs` (the listing index, deleted codes), `aggregates.rs` (snapshots, and the clicks
//! retention may let go), `writer/` (the group commit), `retention.rs`, `transfer.rs`
//! (export and import).

mod aggregates;
mod audit;
mod check;
mod clean;
mod domains;
mod keys;
mod links;
mod open;
mod retention;
mod settings;
#[cfg(test)]
mod tests;
mod totals;
mod transfer;
mod verify;
mod writer;

use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, PersistMode};

pub use check::{StartupCheck, StartupReport};
pub use retention::Retention;
pub use transfer::ImportBatch;
pub use verify::Verified;

use super::{Counter, KeyRecord, StoreError, Totals, records};
use crate::{
    analytics::VisitorKey,
    domain::{ClickEvent, Link},
};
use totals::TotalsChange;

/// The key of the visitor-hash secret in the `meta` keyspace.
const VISITOR_KEY: &[u8] = b"visitor-key";
/// Set in the `meta` keyspace once every code has an aggregates snapshot.
const AGGREGATES_BUILT: &[u8] = b"aggregates-built";
/// How many API keys were revoked, in the `meta` keyspace: the floor counts keys ever stored
/// (stored + revoked), which only grows, as links and clicks do.
const KEYS_REVOKED: &[u8] = b"keys-revoked";

/// Handle to the open database. Cloning is cheap; every call is synchronous (use it from the
/// writer thread or `spawn_blocking`).
#[derive(Clone)]
pub struct Store {
    db: Database,
    links: Keyspace,
    clicks: Keyspace,
    keys: Keyspace,
    meta: Keyspace,
    /// Each link's aggregates snapshot (code -> MessagePack), tagged with the last click it
    /// covers.
    stats: Keyspace,
    /// The links by creation time, for listings (see `links.rs`).
    index: Keyspace,
    /// The secret behind visitor hashes, made once per store.
    visitor_key: [u8; 32],
    /// What is stored, as the last committed totals record says. Only the writer changes it.
    totals: Arc<Mutex<Totals>>,
    /// The number of the last audit entry, read from `meta` at the first append.
    audit_seq: Arc<Mutex<Option<u64>>>,
    report: Arc<StartupReport>,
    /// Keeps the checked listing current while any clone of the store is alive.
    _keeper: Option<Arc<clean::Keeper>>,
}

impl Store {
    /// Which check the open ran, what it found and how long it took.
    pub fn startup_report(&self) -> &StartupReport {
        &self.report
    }

    pub fn visitor_key(&self) -> VisitorKey {
        VisitorKey::new(self.visitor_key)
    }

    pub fn link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        match self.links.get(code)? {
            Some(bytes) => Ok(Some(records::decode_link(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The number of a code's last stored click (0: none), read from its key alone.
    pub fn last_seq(&self, code: &str) -> Result<u64, StoreError> {
        let prefix = records::click_prefix(code);
        match self.clicks.prefix(&prefix).next_back() {
            Some(guard) => Ok(records::click_seq(&guard.key()?, prefix.len())?),
            None => Ok(0),
        }
    }

    /// The stored count of a code and its latest click.
    pub fn counter(&self, code: &str) -> Result<Counter, StoreError> {
        let prefix = records::click_prefix(code);
        let Some(guard) = self.clicks.prefix(&prefix).next_back() else {
            return Ok(Counter::default());
        };
        let (key, value) = guard.into_inner()?;
        let last = records::decode_click(&value)?;
        let key_seq = records::click_seq(&key, prefix.len())?;
        if key_seq != last.seq {
            return Err(StoreError::Inconsistent(format!(
                "code {code}: click stored under number {key_seq} says it is number {}",
                last.seq
            )));
        }
        Ok(Counter {
            count: last.seq,
            last: Some(last),
        })
    }

    /// Up to `limit` clicks of a code, newest first, with `seq` below `before` if given.
    pub fn clicks(
        &self,
        code: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ClickEvent>, StoreError> {
        let start = records::click_key(code, 0);
        let end = records::click_key(code, before.unwrap_or(u64::MAX));
        let mut out = Vec::with_capacity(limit.min(1024));
        for guard in self.clicks.range(start..end).rev().take(limit) {
            let (_, value) = guard.into_inner()?;
            out.push(records::decode_click(&value)?);
        }
        Ok(out)
    }

    /// Calls `each` with every stored click of `code` numbered above `after`, in order.
    pub fn clicks_after<E: From<StoreError>>(
        &self,
        code: &str,
        after: u64,
        mut each: impl FnMut(ClickEvent) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = records::click_key(code, after.saturating_add(1));
        let end = records::click_key(code, u64::MAX);
        for guard in self.clicks.range(start..=end) {
            let (_, value) = guard.into_inner().map_err(StoreError::from)?;
            each(records::decode_click(&value).map_err(StoreError::from)?)?;
        }
        Ok(())
    }

    /// Counts the stored click events of a code by scanning them (for checks and tests; the
    /// service itself reads the stored count).
    pub fn count_click_events(&self, code: &str) -> Result<u64, StoreError> {
        let mut n = 0;
        for guard in self.clicks.prefix(records::click_prefix(code)) {
            guard.key()?;
            n += 1;
        }
        Ok(n)
    }

    /// Syncs everything written so far to disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}
