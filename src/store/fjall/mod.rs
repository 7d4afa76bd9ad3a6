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
//! | `index` | `t`, created_at, code / `o`, owner, 0x00, created_at, code | links newest first |
//!
//! A code's stored count is the number of its last stored click: clicks are numbered from 1
//! without gaps by the code's actor and committed in order, each group in one atomic batch, so
//! the count and the click events cannot disagree, even after a crash (the journal replays a
//! prefix of the batches). Keeping the count in the click keys rather than in a record of its
//! own halves the writes per click; reading it is one reverse seek.

mod check;
mod clean;
mod links;
mod retention;
mod transfer;
mod writer;

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tracing::{info, warn};

pub use check::{StartupCheck, StartupReport};
pub use retention::Retention;
pub use transfer::ImportBatch;

use super::{Counter, Cursor, KeyRecord, Page, StoreError, Totals, records};
use crate::{
    analytics::{Aggregates, VisitorKey, aggregates},
    domain::{ClickEvent, Link},
};

/// The key of the visitor-hash secret in the `meta` keyspace.
const VISITOR_KEY: &[u8] = b"visitor-key";
/// Set in the `meta` keyspace once every code has an aggregates snapshot.
const AGGREGATES_BUILT: &[u8] = b"aggregates-built";
/// How many API keys were revoked, in the `meta` keyspace: the floor counts keys ever stored
/// (stored + revoked), which only grows, as links and clicks do.
const KEYS_REVOKED: &[u8] = b"keys-revoked";

impl StoreError {
    /// A fjall error met while checking the store at open, sorted as [`StoreError::opening`]
    /// does; other errors as they are.
    fn opened(self, dir: &Path) -> Self {
        match self {
            Self::Fjall(e) => Self::opening(dir, e),
            other => other,
        }
    }

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

/// What one commit adds to and takes from the [`Totals`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TotalsChange {
    pub links: u64,
    pub clicks: u64,
    pub expired: u64,
    pub deleted_links: u64,
    pub deleted_clicks: u64,
}

/// What [`Store::verify`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verified {
    pub keys: u64,
    pub links: u64,
    pub codes_clicked: u64,
    pub clicks: u64,
    /// Whether there was a totals record (it then said what was read).
    pub totals_record: bool,
}

/// The size at which the clicks memtable is flushed (see `Store::journal_upkeep`). An 8 MiB
/// memtable for clicks made no difference to sustained redirect throughput (README).
const CLICKS_MEMTABLE: u64 = 8 * 1024 * 1024;

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
    report: Arc<StartupReport>,
    /// Keeps the checked listing current while any clone of the store is alive.
    _keeper: Option<Arc<clean::Keeper>>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and checks it (see `check.rs`): after a clean
    /// close or a crash in time proportional to what changed since it was last checked, and
    /// with [`Store::verify`] when that cannot be told, so a damaged store is refused here
    /// instead of failing code by code while it serves.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, false)
    }

    /// Opens the store in `dir` and reads all of it with [`Store::verify`], whatever state it
    /// is in (`linkpulse check`).
    pub fn open_and_read_all(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, true)
    }

    fn open_with(dir: &Path, read_all: bool) -> Result<Self, StoreError> {
        let started = Instant::now();
        let opening = |e| StoreError::opening(dir, e);
        let io = |e: std::io::Error| StoreError::Fjall(e.into());
        // Compared before fjall opens, which itself touches files. A running instance never
        // has a mark (its open took it), so a second instance finds none here and is refused
        // by fjall's lock below.
        let exists = dir.exists();
        let clean_close = exists && clean::take(dir).map_err(io)?;
        let unchecked = if exists && !clean_close {
            clean::unchecked(dir).map_err(io)?
        } else {
            Vec::new()
        };
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
        let mut store = Self {
            links: open("links")?,
            clicks: open("clicks")?,
            keys: open("keys")?,
            meta: open("meta")?,
            stats: open("stats")?,
            index: open("index")?,
            visitor_key: [0; 32],
            db,
            totals: Arc::default(),
            report: Arc::new(StartupReport {
                check: StartupCheck::Clean,
                clean_close,
                totals: Totals::default(),
                keys: 0,
                verified: None,
                took: std::time::Duration::ZERO,
            }),
            _keeper: None,
        };
        let record = store.totals_record().map_err(|e| e.opened(dir))?;
        store.visitor_key = store.load_visitor_key().map_err(|e| e.opened(dir))?;

        let check = if read_all {
            StartupCheck::Full {
                why: "asked for".into(),
            }
        } else if record.is_none() {
            StartupCheck::Full {
                why: "the store has no totals record yet: it is new or was made by an older \
                      version"
                    .into(),
            }
        } else if clean_close {
            StartupCheck::Clean
        } else {
            let unchecked = clean::still_there(dir, unchecked).map_err(io)?;
            let paths: Vec<&str> = unchecked.iter().map(|line| clean::path_of(line)).collect();
            let keyspaces = [
                &store.links,
                &store.clicks,
                &store.keys,
                &store.meta,
                &store.stats,
                &store.index,
            ];
            info!(
                check = "quick",
                files = paths.len(),
                "start-up check of the store: after an unclean stop: journal replayed, totals \
                 against the floor, files written since the last check against their checksums"
            );
            match check::check_new_files(dir, &paths, &keyspaces).map_err(|e| e.opened(dir))? {
                Some(files_checked) => StartupCheck::Quick { files_checked },
                None => StartupCheck::Full {
                    why: format!(
                        "files written since the last check that have no checksum to compare: \
                         {}",
                        paths.join(", ")
                    ),
                },
            }
        };
        if !matches!(check, StartupCheck::Quick { .. }) {
            info!(check = check.kind(), "start-up check of the store: {check}");
        }
        let mut verified = None;
        let totals = match (&check, record) {
            (StartupCheck::Full { .. }, record) => {
                let seen = store.verify().map_err(|e| e.opened(dir))?;
                verified = Some(seen);
                let counted = Totals {
                    v: records::RECORD_VERSION,
                    links: seen.links,
                    clicks: seen.clicks,
                    expired: record.map_or(0, |r| r.expired),
                    deleted_links: record.map_or(0, |r| r.deleted_links),
                    deleted_clicks: record.map_or(0, |r| r.deleted_clicks),
                };
                if record.is_none() {
                    store.put_totals(counted).map_err(|e| e.opened(dir))?;
                }
                counted
            }
            (_, Some(record)) => record,
            (_, None) => unreachable!("a store without a totals record is read in full"),
        };
        *store.totals.lock().unwrap_or_else(PoisonError::into_inner) = totals;
        let keys = store.count_keys().map_err(|e| e.opened(dir))?;
        let revoked = store.revoked_keys().map_err(|e| e.opened(dir))?;
        check::check_floor(dir, totals, keys + revoked)?;
        let listed = clean::record_checked(dir).map_err(io)?;
        store._keeper = Some(Arc::new(
            clean::Keeper::start(dir.to_owned(), listed, store.journal_upkeep()).map_err(io)?,
        ));
        let report = StartupReport {
            check,
            clean_close,
            totals,
            keys,
            verified,
            took: started.elapsed(),
        };
        info!(
            check = report.check.kind(),
            links = totals.links,
            clicks = totals.clicks,
            keys,
            took_ms = u64::try_from(report.took.as_millis()).unwrap_or(u64::MAX),
            "store opened and checked"
        );
        store.report = Arc::new(report);
        Ok(store)
    }

    /// Keeps what a crash leaves to replay small (run by the keeper every 200 ms). A start
    /// after a crash replays the journal: fjall reads every batch of every journal file still
    /// on disk (about 70 MB/s here when the data is already in tables, 30 MB/s when it must go
    /// back into memory). fjall starts a new journal file after 64 MB, and deletes a sealed
    /// one only once every keyspace with data in it has flushed, so:
    ///
    /// - when a journal is sealed, the small keyspaces (links, keys, meta: their memtables
    ///   rarely fill) are flushed too, instead of holding every sealed journal until fjall's
    ///   512 MiB limit;
    /// - the clicks memtable is flushed at [`CLICKS_MEMTABLE`] instead of fjall's 64 MiB, so
    ///   a crash leaves at most that much to put back into memory, and a sealed journal is
    ///   freed soon after it is sealed.
    ///
    /// Errors are left to the writer, which meets them on its next commit.
    fn journal_upkeep(&self) -> impl FnMut() + Send + 'static {
        use fjall::AbstractTree;
        let (db, clicks) = (self.db.clone(), self.clicks.clone());
        let small = [
            self.links.clone(),
            self.keys.clone(),
            self.meta.clone(),
            self.stats.clone(),
            self.index.clone(),
        ];
        let mut journals = db.journal_count();
        move || {
            let now = db.journal_count();
            if now > journals {
                for keyspace in &small {
                    // Public but hidden in fjall 3; does nothing on an empty memtable.
                    let _ = keyspace.rotate_memtable();
                }
            }
            journals = now;
            if clicks.tree.active_memtable().size() >= CLICKS_MEMTABLE {
                let _ = clicks.rotate_memtable();
            }
        }
    }

    /// Which check the open ran, what it found and how long it took.
    pub fn startup_report(&self) -> &StartupReport {
        &self.report
    }

    /// How many links and clicks are stored (as of the last commit).
    pub fn totals(&self) -> Totals {
        *self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store's visitor-hash secret, made (and fsynced) at its first open.
    fn load_visitor_key(&self) -> Result<[u8; 32], StoreError> {
        if let Some(bytes) = self.meta.get(VISITOR_KEY)? {
            return <[u8; 32]>::try_from(bytes.as_ref()).map_err(|_| {
                StoreError::Inconsistent(format!("the visitor key has {} bytes", bytes.len()))
            });
        }
        let key: [u8; 32] = rand::random();
        self.meta.insert(VISITOR_KEY, key)?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(key)
    }

    pub fn visitor_key(&self) -> VisitorKey {
        VisitorKey::new(self.visitor_key)
    }

    /// A link's stored aggregates snapshot. One that cannot be read (a damaged block, an
    /// undecodable record) is reported and left out: the caller rebuilds the aggregates from the
    /// click log, which holds everything they are made of.
    pub fn aggregates(&self, code: &str) -> Result<Option<Aggregates>, StoreError> {
        let bytes = match self.stats.get(code) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            // A damaged block of derived data: the click log has it all.
            Err(e) => {
                warn!(code, cause = %e, "unreadable aggregates; rebuilding them from the click log");
                return Ok(None);
            }
        };
        match aggregates::decode_snapshot(&bytes) {
            Ok(aggregates) => Ok(Some(aggregates)),
            Err(cause) => {
                warn!(code, %cause, "unreadable aggregates; rebuilding them from the click log");
                Ok(None)
            }
        }
    }

    /// The last click the stored aggregates snapshot of `code` covers (0: none).
    pub fn covers(&self, code: &str) -> Result<u64, StoreError> {
        let bytes = self.stats.get(records::covers_key(code))?;
        Ok(records::decode_covers(bytes.as_deref()))
    }

    /// The code of the first click at or after the key `from`, and `from` moved past every
    /// click of that code (the code followed by 0x01): one seek per code.
    fn next_clicked_code(&self, from: &mut Vec<u8>) -> Result<Option<String>, StoreError> {
        let Some(first) = self.clicks.range(from.clone()..).next() else {
            return Ok(None);
        };
        let key = first.key()?;
        let split = key
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| StoreError::Inconsistent("a click key without a code".into()))?;
        *from = key[..split].to_vec();
        from.push(1);
        Ok(Some(String::from_utf8_lossy(&key[..split]).into_owned()))
    }

    /// Once per store: gives every code with clicks but no aggregates snapshot (a store made
    /// before analytics) its snapshot, in one pass over their clicks, before the service starts
    /// (so no actor has to fold millions of clicks while its link is being clicked). Returns
    /// how many codes it built. Later starts read one marker record.
    pub fn build_missing_aggregates(
        &self,
        settings: &aggregates::AggregateSettings,
    ) -> Result<u64, StoreError> {
        if self.meta.get(AGGREGATES_BUILT)?.is_some() {
            return Ok(0);
        }
        let started = Instant::now();
        let key = self.visitor_key();
        let mut built = 0;
        let mut from: Vec<u8> = Vec::new();
        while let Some(code) = self.next_clicked_code(&mut from)? {
            if self.covers(&code)? > 0 {
                continue;
            }
            let mut aggregates = Aggregates::default();
            self.clicks_after(&code, 0, |event| {
                aggregates
                    .fold(&event, &key, settings)
                    .map_err(|e| StoreError::Inconsistent(format!("code {code}: {e}")))
            })?;
            let bytes = aggregates::encode_snapshot(&aggregates).ok_or_else(|| {
                StoreError::Inconsistent(format!("code {code}: aggregates not encodable"))
            })?;
            let mut batch = self.db.batch();
            batch.insert(&self.stats, code.as_str(), bytes);
            batch.insert(
                &self.stats,
                records::covers_key(&code),
                aggregates.covers().to_be_bytes(),
            );
            batch.commit()?;
            built += 1;
        }
        self.meta.insert(AGGREGATES_BUILT, [1])?;
        self.db.persist(PersistMode::SyncAll)?;
        if built > 0 {
            info!(
                codes = built,
                took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "built the aggregates of links stored before analytics"
            );
        }
        Ok(built)
    }

    /// Finds the clicks `--click-retention-days` lets go: of each code, those made before
    /// `cutoff` (epoch ms) that its stored aggregates cover, never its last click (it carries
    /// the count). Walks each code from its first click and skips to the next code at the first
    /// click that must stay. Hands the keys to `delete` in chunks of at most `chunk`; stops
    /// when `delete` says so. Returns how many were handed over.
    pub fn expirable(
        &self,
        cutoff: i64,
        chunk: usize,
        mut delete: impl FnMut(Vec<Vec<u8>>) -> bool,
    ) -> Result<u64, StoreError> {
        let mut found = 0;
        let mut keys = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        'codes: while let Some(code) = self.next_clicked_code(&mut from)? {
            let prefix = records::click_prefix(&code);
            // Only what a readable snapshot covers: a click expired under a snapshot that
            // cannot be read back could never be folded in again.
            let covers = self
                .aggregates(&code)?
                .map_or(0, |a| a.covers())
                .min(self.covers(&code)?);
            let last = self.counter(&code)?.count;
            for guard in self.clicks.prefix(&prefix) {
                let (key, value) = guard.into_inner()?;
                let click = records::decode_click(&value)?;
                if click.at >= cutoff || click.seq > covers || click.seq >= last {
                    break;
                }
                keys.push(key.to_vec());
                found += 1;
                if keys.len() >= chunk && !delete(std::mem::take(&mut keys)) {
                    break 'codes;
                }
            }
        }
        if !keys.is_empty() {
            delete(keys);
        }
        Ok(found)
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

    fn count_keys(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for guard in self.keys.iter() {
            guard.key()?;
            n += 1;
        }
        Ok(n)
    }

    fn totals_record(&self) -> Result<Option<Totals>, StoreError> {
        match self.meta.get(records::TOTALS_KEY)? {
            Some(bytes) => Ok(Some(records::decode_totals(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_totals(&self, totals: Totals) -> Result<(), StoreError> {
        self.meta
            .insert(records::TOTALS_KEY, records::encode_totals(&totals))?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Puts the totals after a group commit of `change` into the group's `batch` (one record
    /// per group, so the batch's atomicity keeps it equal to what is stored). Pass the result
    /// to [`Store::committed`] once the batch is committed.
    fn stage_totals(&self, batch: &mut fjall::OwnedWriteBatch, change: TotalsChange) -> Totals {
        let before = self.totals();
        let after = Totals {
            v: records::RECORD_VERSION,
            links: (before.links + change.links).saturating_sub(change.deleted_links),
            clicks: (before.clicks + change.clicks)
                .saturating_sub(change.expired + change.deleted_clicks),
            expired: before.expired + change.expired,
            deleted_links: before.deleted_links + change.deleted_links,
            deleted_clicks: before.deleted_clicks + change.deleted_clicks,
        };
        batch.insert(
            &self.meta,
            records::TOTALS_KEY,
            records::encode_totals(&after),
        );
        after
    }

    /// Records that a batch staged by [`Store::stage_totals`] is committed.
    fn committed(&self, totals: Totals) {
        *self.totals.lock().unwrap_or_else(PoisonError::into_inner) = totals;
    }

    /// Closes cleanly: flushes the memtables to tables (so the next open replays no journal),
    /// waits (bounded) for background work to settle, fsyncs, and writes the clean-close mark,
    /// which lets the next open skip its checks but the floor. Call last, when nothing writes
    /// any more.
    pub fn close_clean(&self, dir: &Path) -> Result<(), StoreError> {
        for keyspace in [
            &self.links,
            &self.clicks,
            &self.keys,
            &self.meta,
            &self.stats,
            &self.index,
        ] {
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

    /// Reads every API key, every link (by scan and by key) and every click once, in one
    /// snapshot, so every block the service reads passes its checksum; checks that each code's
    /// clicks are numbered 1, 2, ... without a gap and that its last click record says the
    /// number its key says (then each stored count is its number of click events); and that
    /// the totals record, if there is one, says how many links and clicks it read. Takes time
    /// in proportion to the store's size. Safe while the writer writes.
    pub fn verify(&self) -> Result<Verified, StoreError> {
        use fjall::Readable;
        let snapshot = self.db.snapshot();
        let mut seen = Verified::default();
        for guard in snapshot.iter(&self.keys) {
            let (_, value) = guard.into_inner()?;
            records::decode_key(&value)?;
            seen.keys += 1;
        }
        for guard in snapshot.iter(&self.links) {
            let (code, value) = guard.into_inner()?;
            records::decode_link(&value)?;
            // A point read too, as a redirect does: it reads the table's filter, which a scan
            // does not.
            snapshot.get(&self.links, &code)?;
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
        for guard in snapshot.iter(&self.clicks) {
            let (key, value) = guard.into_inner()?;
            // `code 0x00 seq(big-endian, 8 bytes)`.
            let (code, seq) = records::split_click_key(&key).ok_or_else(|| {
                StoreError::Inconsistent(format!("malformed click key {}", hex::encode(&key)))
            })?;
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
                    // Clicks before the first may have expired (`--click-retention-days`),
                    // but only ones the stored aggregates cover.
                    let code_text = String::from_utf8_lossy(code);
                    let covers = records::decode_covers(
                        snapshot
                            .get(&self.stats, records::covers_key(&code_text))?
                            .as_deref(),
                    );
                    if seq > 1 && seq <= covers + 1 { seq } else { 1 }
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
        if let Some(totals) = snapshot.get(&self.meta, records::TOTALS_KEY)? {
            let totals = records::decode_totals(&totals)?;
            if (totals.links, totals.clicks) != (seen.links, seen.clicks) {
                return Err(StoreError::Inconsistent(format!(
                    "the totals record says {} links and {} clicks, but {} links and {} \
                     clicks are stored",
                    totals.links, totals.clicks, seen.links, seen.clicks
                )));
            }
            seen.totals_record = true;
        }
        Ok(seen)
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

    /// Stores several API key records in one batch (last-used times), synced.
    pub fn put_api_keys(&self, records: &[([u8; 32], KeyRecord)]) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for (hash, record) in records {
            batch.insert(&self.keys, hash.to_vec(), records::encode_key(record));
        }
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Removes an API key and counts it as revoked, in one atomic batch, synced before
    /// returning. Returns whether it was stored.
    pub fn revoke_api_key(&self, hash: [u8; 32]) -> Result<bool, StoreError> {
        if self.keys.get(hash)?.is_none() {
            return Ok(false);
        }
        let mut batch = self.db.batch();
        batch.remove(&self.keys, hash.to_vec());
        batch.insert(
            &self.meta,
            KEYS_REVOKED,
            (self.revoked_keys()? + 1).to_be_bytes(),
        );
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(true)
    }

    /// How many API keys were ever revoked.
    pub fn revoked_keys(&self) -> Result<u64, StoreError> {
        let stored = self.meta.get(KEYS_REVOKED)?;
        Ok(stored
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
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

    fn event(seq: u64) -> ClickEvent {
        ClickEvent {
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
        }
    }

    /// Stores clicks as the writer does: in one batch with the totals record.
    fn clicks(store: &Store, code: &str, seqs: impl IntoIterator<Item = u64>) {
        let mut batch = store.db.batch();
        let mut n = 0;
        for seq in seqs {
            let key = records::click_key(code, seq);
            batch.insert(&store.clicks, key, records::encode_click(&event(seq)));
            n += 1;
        }
        let totals = store.stage_totals(
            &mut batch,
            TotalsChange {
                clicks: n,
                ..TotalsChange::default()
            },
        );
        batch.commit().expect("commit");
        store.committed(totals);
    }

    #[test]
    fn a_store_made_before_analytics_gets_its_aggregates_built_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        clicks(&store, "a", 1..=5);
        clicks(&store, "b", 1..=2);
        let settings = aggregates::AggregateSettings::default();
        assert_eq!(store.build_missing_aggregates(&settings).expect("built"), 2);
        let a = store
            .aggregates("a")
            .expect("read")
            .expect("a has aggregates");
        assert_eq!((a.covers(), a.totals().clicks), (5, 5));
        assert_eq!(store.covers("b").expect("covers"), 2);
        assert_eq!(store.build_missing_aggregates(&settings).expect("again"), 0);
    }

    #[test]
    fn only_old_clicks_a_readable_snapshot_covers_expire_and_never_the_last() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        clicks(&store, "a", 1..=10);
        clicks(&store, "b", 1..=3);
        // Aggregates of clicks 1..=6 of `a`, stored as the writer stores them.
        let key = store.visitor_key();
        let settings = aggregates::AggregateSettings::default();
        let mut agg = Aggregates::default();
        for seq in 1..=6 {
            agg.fold(&event(seq), &key, &settings).expect("folds");
        }
        let put = |code: &str, bytes: Vec<u8>, covers: u64| {
            store.stats.insert(code, bytes).expect("snapshot");
            store
                .stats
                .insert(records::covers_key(code), covers.to_be_bytes())
                .expect("covers");
        };
        put("a", aggregates::encode_snapshot(&agg).expect("encodes"), 6);
        // `b` claims to cover everything but its snapshot cannot be read.
        put("b", b"garbage".to_vec(), 3);
        let expirable = |cutoff: i64| {
            let mut keys = Vec::new();
            store
                .expirable(cutoff, 4, |chunk| {
                    keys.extend(chunk);
                    true
                })
                .expect("scan");
            keys
        };
        let all = expirable(i64::MAX);
        let expected: Vec<Vec<u8>> = (1..=6).map(|seq| records::click_key("a", seq)).collect();
        assert_eq!(
            all, expected,
            "a: 1..=6 (covered); b: nothing (unreadable snapshot)"
        );
        assert!(expirable(0).is_empty(), "nothing is older than the epoch");
        // Once the snapshot covers all of `a`, its last click still stays.
        let mut agg = Aggregates::default();
        for seq in 1..=10 {
            agg.fold(&event(seq), &key, &settings).expect("folds");
        }
        put("a", aggregates::encode_snapshot(&agg).expect("encodes"), 10);
        assert_eq!(expirable(i64::MAX).len(), 9);
    }

    /// Stores a click without the totals record, as a version without it did.
    fn click_untallied(store: &Store, code: &str, seq: u64) {
        store
            .clicks
            .insert(
                records::click_key(code, seq),
                records::encode_click(&event(seq)),
            )
            .expect("insert");
    }

    fn check_of(dir: &Path) -> StartupCheck {
        Store::open(dir)
            .expect("opens")
            .startup_report()
            .check
            .clone()
    }

    #[test]
    fn verify_counts_numbered_clicks_and_refuses_a_gap() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        clicks(&store, "a", 1..=3);
        clicks(&store, "b", [1]);
        let seen = store.verify().expect("verifies");
        assert_eq!((seen.codes_clicked, seen.clicks), (2, 4));
        assert!(seen.totals_record);
        clicks(&store, "a", [5]);
        assert!(matches!(store.verify(), Err(StoreError::Inconsistent(_))));
    }

    #[test]
    fn verify_refuses_a_totals_record_that_disagrees_with_what_is_stored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        clicks(&store, "a", 1..=3);
        click_untallied(&store, "a", 4);
        let refused = store.verify().expect_err("refused");
        assert!(
            refused.to_string().contains("says 0 links and 3 clicks"),
            "{refused}"
        );
    }

    #[test]
    fn an_open_after_a_crash_reads_the_totals_record_instead_of_the_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        assert!(
            matches!(&store.startup_report().check, StartupCheck::Full { why } if why.contains("no totals record")),
            "a new store is read in full once: {:?}",
            store.startup_report()
        );
        clicks(&store, "a", 1..=100);
        store.sync().expect("sync");
        // Dropped without a clean close: as after a crash.
        drop(store);
        let store = Store::open(dir.path()).expect("opens again");
        let report = store.startup_report();
        assert_eq!(report.check, StartupCheck::Quick { files_checked: 0 });
        assert_eq!((report.totals.links, report.totals.clicks), (0, 100));
        assert_eq!(store.totals(), report.totals);
        store.close_clean(dir.path()).expect("clean close");
        drop(store);
        assert_eq!(check_of(dir.path()), StartupCheck::Clean);
    }

    #[test]
    fn a_store_without_a_totals_record_is_read_once_in_full_and_gets_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        for seq in 1..=5 {
            click_untallied(&store, "a", seq);
        }
        store.meta.remove(records::TOTALS_KEY).expect("remove");
        store.sync().expect("sync");
        drop(store);
        let store = Store::open(dir.path()).expect("opens an older store");
        assert!(matches!(
            store.startup_report().check,
            StartupCheck::Full { .. }
        ));
        assert_eq!(store.totals().clicks, 5);
        drop(store);
        let store = Store::open(dir.path()).expect("opens again");
        assert_eq!(
            store.startup_report().check,
            StartupCheck::Quick { files_checked: 0 }
        );
        assert_eq!(store.totals().clicks, 5);
    }

    #[test]
    fn an_open_finding_fewer_clicks_than_the_last_open_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        clicks(&store, "a", [1]);
        clicks(&store, "a", [2]);
        store.sync().expect("sync");
        drop(store);
        // The second open records 2 clicks; then the last batch is lost, as when the journal
        // is read only up to damage before its end: the click and its totals record go.
        let store = Store::open(dir.path()).expect("opens again");
        let mut batch = store.db.batch();
        batch.remove(&store.clicks, records::click_key("a", 2));
        batch.insert(
            &store.meta,
            records::TOTALS_KEY,
            records::encode_totals(&Totals {
                v: records::RECORD_VERSION,
                links: 0,
                clicks: 1,
                ..Totals::default()
            }),
        );
        batch.commit().expect("commit");
        store.sync().expect("sync");
        drop(store);
        let refused = Store::open(dir.path()).err().expect("refused");
        assert!(
            matches!(&refused, StoreError::Damaged { cause, .. } if cause.contains("held 0 links and 2 clicks")),
            "{refused}"
        );
        // Deleting the record accepts the loss.
        std::fs::remove_file(dir.path().join("linkpulse-verified")).expect("remove");
        let store = Store::open(dir.path()).expect("opens");
        assert_eq!(
            store.startup_report().check,
            StartupCheck::Quick { files_checked: 0 },
            "the loss is found without reading the store"
        );
        assert_eq!(store.counter("a").expect("counter").count, 1);
    }

    #[test]
    fn an_open_finding_fewer_keys_than_the_last_open_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let record = |id: &str| KeyRecord {
            v: records::RECORD_VERSION,
            id: id.into(),
            name: String::new(),
            admin: false,
            created_at: 0,
            scope: None,
            last_used_at: None,
        };
        store.put_api_key([1; 32], &record("one")).expect("key");
        store.put_api_key([2; 32], &record("two")).expect("key");
        drop(store);
        let store = Store::open(dir.path()).expect("opens again");
        assert_eq!(store.startup_report().keys, 2);
        store.keys.remove([2u8; 32]).expect("remove");
        store.sync().expect("sync");
        drop(store);
        let refused = Store::open(dir.path()).err().expect("refused");
        assert!(
            refused.to_string().contains("holds 1 API keys but held 2"),
            "{refused}"
        );
    }

    #[test]
    fn a_revoked_key_is_gone_and_the_next_open_accepts_the_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let record = KeyRecord {
            v: records::RECORD_VERSION,
            id: "one".into(),
            name: String::new(),
            admin: false,
            created_at: 0,
            scope: None,
            last_used_at: None,
        };
        store.put_api_key([1; 32], &record).expect("key");
        store.put_api_key([2; 32], &record).expect("key");
        drop(store);
        let store = Store::open(dir.path()).expect("opens again");
        assert!(store.revoke_api_key([2; 32]).expect("revoked"));
        assert!(!store.revoke_api_key([2; 32]).expect("no second time"));
        drop(store);
        let store = Store::open(dir.path()).expect("a revocation is no loss");
        assert_eq!(store.api_keys().expect("keys").len(), 1);
        assert_eq!(store.revoked_keys().expect("revoked"), 1);
    }

    #[test]
    fn tables_written_since_the_last_check_are_read_against_their_checksums() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        clicks(&store, "a", 1..=1000);
        store.sync().expect("sync");
        drop(store);
        // Another process flushes the memtables to new tables: files no check has seen.
        {
            let db = Database::builder(dir.path()).open().expect("fjall opens");
            for name in ["clicks", "meta"] {
                db.keyspace(name, KeyspaceCreateOptions::default)
                    .and_then(|k| k.rotate_memtable_and_wait())
                    .expect("flush");
            }
        }
        let copy = tempfile::tempdir().expect("temp dir");
        copy_dir(dir.path(), copy.path());
        let check = check_of(dir.path());
        let StartupCheck::Quick { files_checked } = check else {
            panic!("not a quick check: {check:?}")
        };
        assert!(files_checked >= 4, "tables and manifests: {files_checked}");
        // The same, with a byte changed in the new clicks table.
        let table = std::fs::read_dir(copy.path().join("keyspaces"))
            .expect("keyspaces")
            .filter_map(|e| Some(e.ok()?.path().join("tables")))
            .filter(|p| p.exists())
            .flat_map(|p| std::fs::read_dir(p).expect("tables"))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .expect("a table");
        let mut bytes = std::fs::read(&table).expect("read");
        // In the first data block, which fjall does not read at open.
        let at = bytes.len() / 10;
        bytes[at] ^= 0xff;
        std::fs::write(&table, bytes).expect("write");
        let refused = Store::open(copy.path()).err().expect("refused");
        assert!(
            refused.to_string().contains("fails its checksum"),
            "{refused}"
        );
    }

    /// Copies a directory, keeping modification times (so the copy's files count as checked
    /// where the original's do).
    fn copy_dir(from: &Path, to: &Path) {
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                std::fs::create_dir_all(&target).expect("mkdir");
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
                let modified = entry.metadata().and_then(|m| m.modified()).expect("mtime");
                std::fs::File::options()
                    .write(true)
                    .open(&target)
                    .and_then(|f| f.set_modified(modified))
                    .expect("set mtime");
            }
        }
    }
}
