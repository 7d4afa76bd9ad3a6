//! Opening the embedded store, in named steps (the marks on disk, fjall, the keyspaces, the
//! check, the totals, the floor, the keeper of the checked listing); keeping what a crash
//! leaves to replay small while it is open; and closing it cleanly.

use std::{
    path::Path,
    sync::{Arc, PoisonError},
    time::Instant,
};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tracing::info;

use super::{
    StartupCheck, StartupReport, Store, StoreError, Totals, VISITOR_KEY, Verified, check, clean,
    records,
};

/// The size at which the clicks memtable is flushed (see `Store::journal_upkeep`). An 8 MiB
/// memtable for clicks made no difference to sustained redirect throughput (README).
const CLICKS_MEMTABLE: u64 = 8 * 1024 * 1024;

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

/// An I/O error of linkpulse's own files beside fjall's.
fn io(e: std::io::Error) -> StoreError {
    StoreError::Fjall(e.into())
}

/// What linkpulse's own files said before fjall opened the store.
struct Marks {
    /// The store carried a valid clean-close mark.
    clean_close: bool,
    /// After an unclean stop: the files the checked listing did not hold.
    unchecked: Vec<String>,
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
        let marks = Marks::read(dir)?;
        let clean_close = marks.clean_close;
        let changed: Vec<&str> = marks.unchecked.iter().map(|l| clean::path_of(l)).collect();
        check::check_new_manifests(dir, &changed).map_err(|e| e.opened(dir))?;
        let mut store = Self::with_keyspaces(open_database(dir)?, dir, clean_close)?;
        let record = store.totals_record().map_err(|e| e.opened(dir))?;
        store.visitor_key = store.load_visitor_key().map_err(|e| e.opened(dir))?;
        let check = store.choose_check(dir, read_all, record.is_some(), marks)?;
        if !matches!(check, StartupCheck::Quick { .. }) {
            info!(check = check.kind(), "start-up check of the store: {check}");
        }
        let (totals, verified) = store.settle_totals(dir, &check, record)?;
        *store.totals.lock().unwrap_or_else(PoisonError::into_inner) = totals;
        let keys = store.check_floor(dir, totals)?;
        store.mark_empty_index_built(totals.links)?;
        store.keep_checked_listing(dir)?;
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

    /// The store's keyspaces opened in `db`, with nothing read yet.
    fn with_keyspaces(db: Database, dir: &Path, clean_close: bool) -> Result<Self, StoreError> {
        let open = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| StoreError::opening(dir, e))
        };
        Ok(Self {
            links: open("links")?,
            clicks: open("clicks")?,
            keys: open("keys")?,
            meta: open("meta")?,
            stats: open("stats")?,
            index: open("index")?,
            visitor_key: [0; 32],
            db,
            totals: Arc::default(),
            audit_seq: Arc::default(),
            report: Arc::new(StartupReport {
                check: StartupCheck::Clean,
                clean_close,
                totals: Totals::default(),
                keys: 0,
                verified: None,
                took: std::time::Duration::ZERO,
            }),
            _keeper: None,
        })
    }

    /// Every keyspace of the store, in one order.
    pub(super) fn keyspaces(&self) -> [&Keyspace; 6] {
        [
            &self.links,
            &self.clicks,
            &self.keys,
            &self.meta,
            &self.stats,
            &self.index,
        ]
    }

    /// Which check this open runs: everything when asked, or when there is no totals record;
    /// nothing more after a clean close; else the files written since the last check.
    fn choose_check(
        &self,
        dir: &Path,
        read_all: bool,
        has_record: bool,
        marks: Marks,
    ) -> Result<StartupCheck, StoreError> {
        Ok(if read_all {
            StartupCheck::Full {
                why: "asked for".into(),
            }
        } else if !has_record {
            StartupCheck::Full {
                why: "the store has no totals record yet: it is new or was made by an older \
                      version"
                    .into(),
            }
        } else if marks.clean_close {
            StartupCheck::Clean
        } else {
            self.quick_check(dir, marks.unchecked)?
        })
    }

    /// After an unclean stop: the files written since the last check, against their
    /// checksums (or everything, when one of them has none).
    fn quick_check(&self, dir: &Path, unchecked: Vec<String>) -> Result<StartupCheck, StoreError> {
        let unchecked = clean::still_there(dir, unchecked).map_err(io)?;
        let paths: Vec<&str> = unchecked.iter().map(|line| clean::path_of(line)).collect();
        let keyspaces = self.keyspaces();
        info!(
            check = "quick",
            files = paths.len(),
            "start-up check of the store: after an unclean stop: journal replayed, totals \
             against the floor, files written since the last check against their checksums"
        );
        Ok(
            match check::check_new_files(dir, &paths, &keyspaces).map_err(|e| e.opened(dir))? {
                Some(files_checked) => StartupCheck::Quick { files_checked },
                None => StartupCheck::Full {
                    why: format!(
                        "files written since the last check that have no checksum to compare: \
                         {}",
                        paths.join(", ")
                    ),
                },
            },
        )
    }

    /// The totals the store starts from: the record, or after a full check what was read
    /// (then stored as the record if there was none), with what the full check read.
    fn settle_totals(
        &self,
        dir: &Path,
        check: &StartupCheck,
        record: Option<Totals>,
    ) -> Result<(Totals, Option<Verified>), StoreError> {
        match (check, record) {
            (StartupCheck::Full { .. }, record) => {
                let seen = self.verify().map_err(|e| e.opened(dir))?;
                let counted = Totals {
                    v: records::RECORD_VERSION,
                    links: seen.links,
                    clicks: seen.clicks,
                    expired: record.map_or(0, |r| r.expired),
                    deleted_links: record.map_or(0, |r| r.deleted_links),
                    deleted_clicks: record.map_or(0, |r| r.deleted_clicks),
                };
                if record.is_none() {
                    self.put_totals(counted).map_err(|e| e.opened(dir))?;
                }
                Ok((counted, Some(seen)))
            }
            (_, Some(record)) => Ok((record, None)),
            (_, None) => unreachable!("a store without a totals record is read in full"),
        }
    }

    /// Refuses a store holding less than at its last open (see `check.rs`). Returns how many
    /// API keys it holds.
    fn check_floor(&self, dir: &Path, totals: Totals) -> Result<u64, StoreError> {
        let keys = self.count_keys().map_err(|e| e.opened(dir))?;
        let revoked = self.revoked_keys().map_err(|e| e.opened(dir))?;
        check::check_floor(dir, totals, keys + revoked)?;
        Ok(keys)
    }

    /// Records every file as checked now, and keeps that listing current while the store is
    /// open.
    fn keep_checked_listing(&mut self, dir: &Path) -> Result<(), StoreError> {
        let listed = clean::record_checked(dir).map_err(io)?;
        self._keeper = Some(Arc::new(
            clean::Keeper::start(dir.to_owned(), listed, self.journal_upkeep()).map_err(io)?,
        ));
        Ok(())
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

    /// Closes cleanly: flushes the memtables to tables (so the next open replays no journal),
    /// waits (bounded) for background work to settle, fsyncs, and writes the clean-close mark,
    /// which lets the next open skip its checks but the floor. Call last, when nothing writes
    /// any more.
    pub fn close_clean(&self, dir: &Path) -> Result<(), StoreError> {
        for keyspace in self.keyspaces() {
            // Public but hidden in fjall 3 (pinned in Cargo.lock).
            keyspace.rotate_memtable_and_wait()?;
        }
        self.db.persist(PersistMode::SyncAll)?;
        // A file that changes after this (a late compaction) only costs the next open its
        // full check.
        // `outstanding_flushes` and `active_compactions` are public but hidden in fjall 3.
        let busy = || self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0;
        clean::mark(dir, std::time::Duration::from_secs(10), busy).map_err(io)
    }
}

impl Marks {
    /// Read before fjall opens, which itself touches files. A running instance never has a
    /// mark (its open took it), so a second instance finds none here and is refused by
    /// fjall's lock.
    fn read(dir: &Path) -> Result<Self, StoreError> {
        let exists = dir.exists();
        let clean_close = exists && clean::take(dir).map_err(io)?;
        let unchecked = if exists && !clean_close {
            clean::unchecked(dir).map_err(io)?
        } else {
            Vec::new()
        };
        Ok(Self {
            clean_close,
            unchecked,
        })
    }
}

/// Opens fjall's database in `dir`, refusing a journal that replays an impossible sequence
/// number.
fn open_database(dir: &Path) -> Result<Database, StoreError> {
    // fjall's flush and compaction workers, started here, run in the background.
    let db = crate::store::priority::spawning_in_background(|| Database::builder(dir).open())
        .map_err(io)?
        .map_err(|e| StoreError::opening(dir, e))?;
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
    Ok(db)
}
