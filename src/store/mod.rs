//! The fjall store: keyspaces, reads, and the single group-commit writer that does every write
//! on the click path.
//!
//! | keyspace | key | value |
//! | --- | --- | --- |
//! | `links` | code | link record |
//! | `clicks` | code, 0x00, seq u64 big-endian | click record |
//! | `keys` | SHA-256 of an API key | key record |
//!
//! A code's stored count is the number of its last stored click: clicks are numbered from 1
//! without gaps by the code's actor and committed in order, each group in one atomic batch, so
//! the count and the click events cannot disagree, even after a crash (the journal replays a
//! prefix of the batches). Keeping the count in the click keys rather than in a record of its
//! own halves the writes per click; reading it is one reverse seek.

pub mod records;
mod writer;

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

pub use records::{DecodeError, KeyRecord};
pub use writer::{Durability, WriteError, Writer, WriterConfig, WriterHandle};

use crate::domain::{ClickEvent, Link};

/// A storage failure. Carries the cause for the log; HTTP answers say nothing of it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {0} is in use by another process (is linkpulse already running?)")]
    Locked(String),
    #[error("storage error: {0}")]
    Fjall(#[from] fjall::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("stored data is inconsistent: {0}")]
    Inconsistent(String),
}

/// What a code's actor starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    pub count: u64,
    pub last: Option<ClickEvent>,
}

/// Handle to the open database. Cloning is cheap; every call is synchronous (use it from the
/// writer thread or `spawn_blocking`).
#[derive(Clone)]
pub struct Store {
    db: Database,
    links: Keyspace,
    clicks: Keyspace,
    keys: Keyspace,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Database::builder(dir).open().map_err(|e| match e {
            fjall::Error::Locked => StoreError::Locked(dir.display().to_string()),
            other => StoreError::Fjall(other),
        })?;
        let open = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Self {
            links: open("links")?,
            clicks: open("clicks")?,
            keys: open("keys")?,
            db,
        })
    }

    pub fn link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        match self.links.get(code)? {
            Some(bytes) => Ok(Some(records::decode_link(&bytes)?)),
            None => Ok(None),
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

    /// Every stored API key, as (hash, record).
    pub fn api_keys(&self) -> Result<Vec<([u8; 32], KeyRecord)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.keys.iter() {
            let (key, value) = guard.into_inner()?;
            let hash: [u8; 32] = key.as_ref().try_into().map_err(|_| {
                StoreError::Inconsistent(format!("api key hash of {} bytes", key.len()))
            })?;
            out.push((hash, records::decode_key(&value)?));
        }
        Ok(out)
    }

    /// Stores an API key and syncs it to disk before returning.
    pub fn put_api_key(&self, hash: [u8; 32], record: &KeyRecord) -> Result<(), StoreError> {
        self.keys
            .insert(hash.to_vec(), records::encode_key(record))?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Syncs everything written so far to disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}
