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

mod backlog;
mod clean;
pub mod records;
mod writer;

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

pub use backlog::{Backlog, Permit};
pub use records::{DecodeError, KeyRecord};
pub use writer::{
    ClickBatch, CommitListener, Durability, Fault, WriteError, Writer, WriterConfig, WriterHandle,
};

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
    #[error("the store in {dir} is damaged: {cause}")]
    Damaged { dir: String, cause: String },
}

impl StoreError {
    /// Sorts a fjall error met while opening or checking the store in `dir`: the lock held by
    /// another process, damaged files (a check failed or a file ends early), or anything else
    /// (an I/O error, say).
    fn opening(dir: &Path, e: fjall::Error) -> Self {
        use std::io::ErrorKind::{InvalidData, InvalidInput, NotFound, UnexpectedEof};

        use fjall::{Error as E, LsmError as L};
        let damage = match &e {
            E::Locked => return Self::Locked(dir.display().to_string()),
            E::JournalRecovery(_) => "a batch in the journal (*.jnl) fails its check",
            E::Io(io) | E::Storage(L::Io(io))
                if matches!(
                    io.kind(),
                    UnexpectedEof | InvalidData | InvalidInput | NotFound
                ) =>
            {
                "a file is missing, ends early or holds invalid data"
            }
            E::Io(_) | E::Storage(L::Io(_)) | E::Poisoned | E::KeyspaceDeleted => {
                return Self::Fjall(e);
            }
            E::InvalidVersion(_) | E::Storage(L::InvalidVersion(_)) => {
                "its format version is unknown or unreadable"
            }
            _ => "a table or manifest file fails its check",
        };
        Self::Damaged {
            dir: dir.display().to_string(),
            cause: format!("{damage} ({e}); restore the data directory from a backup"),
        }
    }
}

/// What [`Store::verify`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verified {
    pub links: u64,
    pub codes_clicked: u64,
    pub clicks: u64,
}

/// What a code's actor starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    pub count: u64,
    pub last: Option<ClickEvent>,
}

/// The file in the data directory that remembers how much the store held when it was last
/// opened. Links and clicks are only ever added, and what an open finds is on disk (fjall
/// syncs the journal it recovered), so a later open that finds less has lost data: fjall reads
/// a journal damaged before its end only up to the damage, and says nothing.
const FLOOR_FILE: &str = "linkpulse-verified";

/// Refuses a store that holds fewer links or clicks than at its last open, then records what
/// it holds now.
fn check_floor(dir: &Path, seen: Verified) -> Result<(), StoreError> {
    let path = dir.join(FLOOR_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(StoreError::Fjall(e.into())),
    };
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (links, clicks) = (value("links "), value("clicks "));
    if seen.links < links || seen.clicks < clicks {
        return Err(StoreError::Damaged {
            dir: dir.display().to_string(),
            cause: format!(
                "it holds {} links and {} clicks but held {links} links and {clicks} clicks \
                 when it was last opened, so part of it is lost (a journal damaged before its \
                 end is read only up to the damage); restore the data directory from a backup, \
                 or delete {} to accept the loss",
                seen.links,
                seen.clicks,
                path.display()
            ),
        });
    }
    if (seen.links, seen.clicks) != (links, clicks) {
        let tmp = dir.join(format!("{FLOOR_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(
                &mut file,
                format!("links {}\nclicks {}\n", seen.links, seen.clicks).as_bytes(),
            )?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| StoreError::Fjall(e.into()))?;
    }
    Ok(())
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
    /// Opens (or creates) the store in `dir` and checks it with [`Store::verify`], so a
    /// damaged store is refused here instead of failing code by code while it serves.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let opening = |e| StoreError::opening(dir, e);
        // Compared before fjall opens, which itself touches files. A running instance never
        // has a mark (its open took it), so a second instance finds none here and is refused
        // by fjall's lock below.
        let untouched =
            dir.exists() && clean::take(dir).map_err(|e| StoreError::Fjall(e.into()))?;
        let db = Database::builder(dir).open().map_err(opening)?;
        // A journal batch's sequence number is not covered by its checksum: a damaged one is
        // replayed and makes every later write panic ("Ran out of sequence numbers", at 2^63).
        // No real store comes near 2^62 (146,000 years at a million commits a second).
        // `Database::seqno` is public but hidden in fjall 3.
        let next_seqno = db.seqno();
        if next_seqno >= 1 << 62 {
            return Err(StoreError::Damaged {
                dir: dir.display().to_string(),
                cause: format!(
                    "the journal (*.jnl) holds the impossible sequence number {next_seqno}; \
                     restore the data directory from a backup"
                ),
            });
        }
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(opening)
        };
        let store = Self {
            links: open("links")?,
            clicks: open("clicks")?,
            keys: open("keys")?,
            db,
        };
        if !untouched {
            let seen = store.verify().map_err(|e| match e {
                StoreError::Fjall(e) => StoreError::opening(dir, e),
                other => other,
            })?;
            check_floor(dir, seen)?;
        }
        Ok(store)
    }

    /// Closes cleanly: flushes the memtables to tables (so the next open replays no journal),
    /// waits (bounded) for background work to settle, fsyncs, and writes the clean-close mark,
    /// which lets the next open skip the full check. Call last, when nothing writes any more.
    pub fn close_clean(&self, dir: &Path) -> Result<(), StoreError> {
        for keyspace in [&self.links, &self.clicks, &self.keys] {
            // Public but hidden in fjall 3 (pinned in Cargo.lock).
            keyspace.rotate_memtable_and_wait()?;
        }
        self.db.persist(PersistMode::SyncAll)?;
        // A file that changes after this (a late compaction) only costs the next open its
        // full check.
        // `outstanding_flushes` and `active_compactions` are public but hidden in fjall 3.
        let busy = || self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0;
        clean::mark(dir, std::time::Duration::from_secs(10), busy)
            .map_err(|e| StoreError::Fjall(e.into()))
    }

    /// Reads every API key, every link (by scan and by key) and every click once, so every
    /// block the service reads passes its checksum, and checks that each code's clicks are numbered 1, 2, ... without a gap
    /// and that its last click record says the number its key says: then each stored count
    /// is its number of click events. Takes time in proportion to the store's size.
    pub fn verify(&self) -> Result<Verified, StoreError> {
        let mut seen = Verified::default();
        for guard in self.keys.iter() {
            let (_, value) = guard.into_inner()?;
            records::decode_key(&value)?;
        }
        for guard in self.links.iter() {
            let (code, value) = guard.into_inner()?;
            records::decode_link(&value)?;
            // A point read too, as a redirect does: it reads the table's filter, which a scan
            // does not.
            self.links.get(&code)?;
            seen.links += 1;
        }
        // The code being read, its last number, and its last record.
        let mut current: Option<(Vec<u8>, u64, fjall::UserValue)> = None;
        let check_last = |code: &[u8], seq: u64, value: &[u8]| -> Result<(), StoreError> {
            let last = records::decode_click(value)?;
            if last.seq == seq {
                return Ok(());
            }
            Err(StoreError::Inconsistent(format!(
                "code {}: click stored under number {seq} says it is number {}",
                String::from_utf8_lossy(code),
                last.seq
            )))
        };
        for guard in self.clicks.iter() {
            let (key, value) = guard.into_inner()?;
            // `code 0x00 seq(big-endian, 8 bytes)`.
            let split = key
                .len()
                .checked_sub(9)
                .filter(|&at| key[at] == 0)
                .ok_or_else(|| {
                    StoreError::Inconsistent(format!("malformed click key {}", hex::encode(&key)))
                })?;
            let code = &key[..split];
            let seq = records::click_seq(&key, split + 1)?;
            let expected = match &mut current {
                Some((same, last, last_value)) if same.as_slice() == code => {
                    let expected = *last + 1;
                    *last = seq;
                    *last_value = value;
                    expected
                }
                other => {
                    if let Some((previous, last, last_value)) = other {
                        check_last(previous, *last, last_value)?;
                    }
                    *other = Some((code.to_vec(), seq, value));
                    seen.codes_clicked += 1;
                    1
                }
            };
            if seq != expected {
                return Err(StoreError::Inconsistent(format!(
                    "code {}: click number {seq} where number {expected} was due",
                    String::from_utf8_lossy(code)
                )));
            }
            seen.clicks += 1;
        }
        if let Some((code, last, value)) = &current {
            check_last(code, *last, value)?;
        }
        Ok(seen)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DeviceClass;

    fn click(store: &Store, code: &str, seq: u64) {
        let event = ClickEvent {
            seq,
            at: 1_700_000_000_000,
            ip: None,
            user_agent: "curl/8".into(),
            referer: None,
            country: None,
            browser: "unknown".into(),
            os: "unknown".into(),
            device: DeviceClass::Other,
            bot: false,
        };
        store
            .clicks
            .insert(records::click_key(code, seq), records::encode_click(&event))
            .expect("insert");
    }

    #[test]
    fn verify_counts_numbered_clicks_and_refuses_a_gap() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        for seq in 1..=3 {
            click(&store, "a", seq);
        }
        click(&store, "b", 1);
        let seen = store.verify().expect("verifies");
        assert_eq!((seen.codes_clicked, seen.clicks), (2, 4));
        click(&store, "a", 5);
        assert!(matches!(store.verify(), Err(StoreError::Inconsistent(_))));
    }

    #[test]
    fn an_open_finding_fewer_clicks_than_the_last_open_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        click(&store, "a", 1);
        click(&store, "a", 2);
        store.sync().expect("sync");
        drop(store);
        // The second open records 2 clicks; then one is lost without leaving a gap.
        let store = Store::open(dir.path()).expect("opens again");
        store
            .clicks
            .remove(records::click_key("a", 2))
            .expect("remove");
        store.sync().expect("sync");
        drop(store);
        let refused = Store::open(dir.path()).err().expect("refused");
        assert!(
            matches!(&refused, StoreError::Damaged { cause, .. } if cause.contains("held 0 links and 2 clicks")),
            "{refused}"
        );
        // Deleting the record accepts the loss.
        std::fs::remove_file(dir.path().join(FLOOR_FILE)).expect("remove");
        assert_eq!(
            Store::open(dir.path())
                .expect("opens")
                .counter("a")
                .expect("counter")
                .count,
            1
        );
    }
}
