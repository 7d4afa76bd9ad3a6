//! What an open checks before the store serves, in time proportional to what changed since the
//! store was last known good, not to its size:
//!
//! - **The floor** (`linkpulse-verified`): how many links, clicks and API keys the store held
//!   when it was last opened. All three are only ever added, and what an open finds is on disk
//!   (fjall syncs the journal it recovered), so a later open that finds less has lost data:
//!   fjall reads a journal damaged before its end only up to the damage, and says nothing. Links
//!   and clicks come from the totals record (one point read), which the writer keeps equal to
//!   what is stored; keys are few and counted (with the revoked ones, which a counter in `meta`
//!   keeps in the same batch as each revocation, so the number only grows). (fjall's sequence number is no floor: its
//!   counter also moves for work a reopen does not replay, so a sound store can reopen with a
//!   lower one, e.g. 9 before a clean close and 8 after it.)
//! - **Files written since the last check**: tables and manifests that the checked listing
//!   (`clean.rs`) does not hold, which after a crash are those the store wrote in its last
//!   moments, are read whole and compared with the checksum fjall recorded for them.
//! - **Everything**, by [`super::Store::verify`], when the totals record is missing (a store
//!   made by an older version), when a file cannot be checked by its checksum, and for
//!   `linkpulse check`.

use std::{fmt, io::Read, path::Path, time::Duration};

use fjall::{AbstractTree, Keyspace};

use super::{StoreError, records::Totals};

const FLOOR_FILE: &str = "linkpulse-verified";

/// Which check an open ran, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupCheck {
    /// Nothing touched the store since a clean close: only the totals against the floor.
    Clean,
    /// After a crash (or another unclean stop): the journal replayed by fjall, the totals
    /// against the floor, and the files written since the last check by their checksums.
    Quick { files_checked: usize },
    /// Every record read and every code's numbering checked.
    Full { why: String },
}

impl StartupCheck {
    /// A short name for logs: `clean`, `quick` or `full`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Quick { .. } => "quick",
            Self::Full { .. } => "full",
        }
    }
}

impl fmt::Display for StartupCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Clean => write!(f, "clean close: totals against the floor"),
            Self::Quick { files_checked } => write!(
                f,
                "after an unclean stop: journal replayed, totals against the floor, \
                 {files_checked} files written since the last check read against their checksums"
            ),
            Self::Full { why } => write!(f, "full check of every record ({why})"),
        }
    }
}

/// What an open found and how long its check took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupReport {
    pub check: StartupCheck,
    /// Whether the store carried a valid clean-close mark (whichever check then ran).
    pub clean_close: bool,
    pub totals: Totals,
    /// API keys stored.
    pub keys: u64,
    /// What a full check read.
    pub verified: Option<super::Verified>,
    pub took: Duration,
}

/// Refuses a store that holds fewer links, clicks or keys than at its last open; then records
/// what it holds now.
pub fn check_floor(dir: &Path, totals: Totals, keys: u64) -> Result<(), StoreError> {
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
    let (links, clicks, floor_keys) = (value("links "), value("clicks "), value("keys "));
    // Clicks expired by retention were stored once: they count towards the floor.
    let ever = totals.clicks_ever();
    let links_ever = totals.links_ever();
    let lost = if links_ever < links || ever < clicks {
        Some(format!(
            "it holds {links_ever} links and {ever} clicks (stored, expired or deleted) but \
             held {links} links and {clicks} clicks when it was last opened"
        ))
    } else if keys < floor_keys {
        Some(format!(
            "it holds {keys} API keys but held {floor_keys} when it was last opened"
        ))
    } else {
        None
    };
    if let Some(lost) = lost {
        return Err(StoreError::Damaged {
            dir: dir.display().to_string(),
            cause: format!(
                "{lost}, so part of it is lost (a journal damaged before its end is read only \
                 up to the damage); restore the data directory from a backup, or delete {} to \
                 accept the loss",
                path.display()
            ),
        });
    }
    if (links_ever, ever, keys) != (links, clicks, floor_keys) {
        let tmp = dir.join(format!("{FLOOR_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(
                &mut file,
                format!("links {links_ever}\nclicks {ever}\nkeys {keys}\n").as_bytes(),
            )?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| StoreError::Fjall(e.into()))?;
    }
    Ok(())
}

/// The xxh3 (128-bit) checksum of a whole file, as fjall records it for tables and manifests.
fn file_checksum(path: &Path) -> std::io::Result<u128> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.digest128());
        }
        hasher.update(&buf[..n]);
    }
}

/// Checks the files `paths` (relative to `dir`, written since the last check) against the
/// checksums fjall recorded for them: a table against its entry in the current manifest of its
/// keyspace, the current manifest (`v<N>`, named in `current`) against the checksum in
/// `current`. A table or manifest that is no longer current, or a temporary file left by a
/// crash, is skipped: nothing reads it any more (a compaction that replaced a table since the open read every block of it, each
/// against its own checksum). Returns how many files it checked, or `None` when one is of
/// another kind (the caller then reads everything); a mismatch is damage.
///
/// Uses fjall's hidden `current_version` (fjall is pinned in Cargo.lock); the test
/// `tables_written_since_the_last_check_are_read_against_their_checksums` (fjall/tests.rs) and
/// `a_table_damaged_after_a_crash_is_refused_without_reading_the_store`
/// (tests/integration/restart.rs) fail if it changes meaning.
pub fn check_new_files(
    dir: &Path,
    paths: &[&str],
    keyspaces: &[&Keyspace],
) -> Result<Option<usize>, StoreError> {
    let files = NewFiles { dir, keyspaces };
    let mut checked = 0;
    for path in paths {
        match files.check(path)? {
            FileCheck::Passed => checked += 1,
            FileCheck::Skipped => {}
            FileCheck::OtherKind => return Ok(None),
        }
    }
    Ok(Some(checked))
}

/// Checks the current manifests among the files `paths` (relative to `dir`, written since the
/// last check) against the checksums in their keyspaces' `current`, before fjall opens the
/// store: fjall trusts a manifest's counts, and a damaged one can make it try to allocate
/// memory for billions of entries instead of refusing the store. Tables are checked after the
/// open ([`check_new_files`]): their checksums are in the manifests.
pub fn check_new_manifests(dir: &Path, paths: &[&str]) -> Result<(), StoreError> {
    let files = NewFiles {
        dir,
        keyspaces: &[],
    };
    for path in paths {
        if let ["keyspaces", id, name] = path.split('/').collect::<Vec<_>>().as_slice()
            && (*name == "current" || (name.starts_with('v') && !name.starts_with(".tmp")))
        {
            files.manifest(id, name)?;
        }
    }
    Ok(())
}

/// What became of one file [`check_new_files`] was given.
enum FileCheck {
    /// Read whole; its checksum is the one fjall recorded.
    Passed,
    /// Nothing reads it any more (or it is gone).
    Skipped,
    /// Not a table or manifest of a keyspace here: it cannot be checked by a checksum.
    OtherKind,
}

/// The store whose new files are checked.
struct NewFiles<'a> {
    dir: &'a Path,
    keyspaces: &'a [&'a Keyspace],
}

impl NewFiles<'_> {
    fn damaged(&self, what: String) -> StoreError {
        StoreError::Damaged {
            dir: self.dir.display().to_string(),
            cause: format!("{what}; restore the data directory from a backup"),
        }
    }

    /// The checksum of the file at `path`; `None` when the file is gone: fjall replaced it
    /// since the open.
    fn checksum(&self, path: &str) -> Result<Option<u128>, StoreError> {
        match file_checksum(&self.dir.join(path)) {
            Ok(sum) => Ok(Some(sum)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Fjall(e.into())),
        }
    }

    fn check(&self, path: &str) -> Result<FileCheck, StoreError> {
        let parts: Vec<&str> = path.split('/').collect();
        let (id, rest) = match parts.as_slice() {
            ["keyspaces", id, rest @ ..] => (*id, rest),
            _ => return Ok(FileCheck::OtherKind),
        };
        match rest {
            ["tables", table] => self.table(path, id, table),
            // What a crash leaves of fjall rewriting `current` (a temporary file it renames):
            // never read.
            [name] if name.starts_with(".tmp") => Ok(FileCheck::Skipped),
            [name] if *name == "current" || name.starts_with('v') => self.manifest(id, name),
            _ => Ok(FileCheck::OtherKind),
        }
    }

    /// The table `table` of the keyspace in folder `id`, against its entry in the keyspace's
    /// current manifest.
    fn table(&self, path: &str, id: &str, table: &str) -> Result<FileCheck, StoreError> {
        let Ok(table) = table.parse::<u64>() else {
            return Ok(FileCheck::OtherKind);
        };
        // By the folder's name: fjall keeps the path made absolute. fjall's own
        // keyspace (`keyspaces/0`) has no handle here.
        let Some(keyspace) = self
            .keyspaces
            .iter()
            .find(|k| k.path().file_name() == Some(std::ffi::OsStr::new(id)))
        else {
            return Ok(FileCheck::OtherKind);
        };
        let expected = keyspace
            .tree
            .current_version()
            .iter_tables()
            .find(|t| t.id() == table)
            .map(|t| t.checksum().into_u128());
        let Some(expected) = expected else {
            return Ok(FileCheck::Skipped);
        };
        match self.checksum(path)? {
            Some(sum) if sum != expected => {
                Err(self.damaged(format!("the table file {path} fails its checksum")))
            }
            Some(_) => Ok(FileCheck::Passed),
            None => Ok(FileCheck::Skipped),
        }
    }

    /// The current manifest of the keyspace in folder `id` (when `name` is `current` or that
    /// manifest), against the checksum in `current`.
    fn manifest(&self, id: &str, name: &str) -> Result<FileCheck, StoreError> {
        let folder = self.dir.join("keyspaces").join(id);
        let mut current = [0u8; 25];
        std::fs::File::open(folder.join("current"))
            .and_then(|mut f| f.read_exact(&mut current))
            .map_err(|e| self.damaged(format!("keyspaces/{id}/current is unreadable ({e})")))?;
        let (version, rest) = current.split_at(8);
        let version = u64::from_le_bytes(version.try_into().unwrap_or_default());
        let expected = u128::from_le_bytes(rest[..16].try_into().unwrap_or_default());
        if name != "current" && name != format!("v{version}") {
            return Ok(FileCheck::Skipped);
        }
        let manifest = format!("keyspaces/{id}/v{version}");
        match self.checksum(&manifest)? {
            Some(sum) if sum != expected || rest[16] != 0 => {
                Err(self.damaged(format!("the manifest {manifest} fails its checksum")))
            }
            Some(_) => Ok(FileCheck::Passed),
            None => Ok(FileCheck::Skipped),
        }
    }
}
