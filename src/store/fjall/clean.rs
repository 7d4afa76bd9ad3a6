//! Two listings of the store's files, each line `relative path, size, modification time (ns)`,
//! that let an open skip reading the whole store.
//!
//! - The clean-close mark (`linkpulse-clean`): written by a clean close (memtables flushed,
//!   everything fsynced), listing every store file. The next open takes it away; if every file
//!   is still as listed, nothing has touched the store since its clean close.
//! - The checked listing (`linkpulse-checked`): every store file except the journals (`*.jnl`)
//!   that is known good, because a full check read it or because linkpulse itself wrote it
//!   while the store was open (a flush or a compaction, from data that passed its checksums).
//!   Written after an open's check passes and kept current while the store is open by a
//!   [`Keeper`] thread, so after a crash the open finds every table and manifest listed except
//!   those written in the last moments, and only those need checking (see `check.rs`); the
//!   journal is checked by fjall's replay (each batch has a checksum) and by the floor.
//!
//! Either way, a file written since (damaged by a write, or replaced) has another size or time
//! and is not trusted. What neither catches is a change that keeps both, such as bits rotting
//! on the disk: `linkpulse check` reads everything.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use tracing::warn;

const MARK_FILE: &str = "linkpulse-clean";
const CHECKED_FILE: &str = "linkpulse-checked";
/// How often an open store's checked listing is brought up to date.
const KEEP_EVERY: Duration = Duration::from_millis(200);

/// Files of our own that are not part of the store's state (the control socket too, and the
/// private directory it is made in).
fn is_ours(name: &str) -> bool {
    name.starts_with("linkpulse-")
        || name == "lock"
        || name.ends_with(".lock")
        || name == crate::store::SOCKET_NAME
        || name.starts_with(".control-")
}

fn is_journal(name: &str) -> bool {
    name.ends_with(".jnl")
}

/// `relative path, size, modification time (ns)` of every store file (with or without the
/// journals at the top of `dir`), sorted.
fn listing(dir: &Path, journals: bool) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        // A folder or file fjall deletes while this runs is simply left out.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let entries = match fs::read_dir(dir.join(&rel)) {
            Ok(entries) => entries,
            Err(e) if gone(&e) && !rel.as_os_str().is_empty() => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = rel.join(&name);
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let top = rel.as_os_str().is_empty();
            if meta.is_dir() {
                pending.push(path);
            } else if !(top && (is_ours(&name) || (!journals && is_journal(&name)))) {
                let modified = meta
                    .modified()?
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                out.push(format!("{} {} {modified}", path.display(), meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One of our listings, `None` if there is none. Damaged bytes only make lines that match no
/// file (so those files count as changed, and are checked), never an error.
fn read_ours(path: &Path) -> std::io::Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The relative path of a listing line.
pub fn path_of(line: &str) -> &str {
    line.rsplitn(3, ' ').nth(2).unwrap_or(line)
}

/// Writes `text` to `dir/name` so that a crash leaves either the old or the new file.
fn write_atomic(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

/// Writes the mark for the store in `dir` once its files have stopped changing (a flush can
/// start a compaction a moment later; waiting for quiet, at most `patience`, spares the next
/// open its check), and the checked listing with it.
pub fn mark(dir: &Path, patience: Duration, busy: impl Fn() -> bool) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + patience;
    let mut text = listing(dir, true)?.join("\n");
    let mut quiet = 0;
    while quiet < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = listing(dir, true)?.join("\n");
        quiet = if now == text && !busy() { quiet + 1 } else { 0 };
        text = now;
    }
    record_checked(dir)?;
    write_atomic(dir, MARK_FILE, &text)
}

/// Takes the mark away (durably) and says whether the store is as it was marked.
pub fn take(dir: &Path) -> std::io::Result<bool> {
    let path = dir.join(MARK_FILE);
    let marked = match read_ours(&path)? {
        Some(text) => text,
        None => return Ok(false),
    };
    fs::remove_file(&path)?;
    fs::File::open(dir)?.sync_all()?;
    // Every file now must be one listed, unchanged. A listed file that is gone is no damage:
    // fjall deletes tables a compaction replaced when it lets go of them, which can be after
    // the mark was written; and a store missing a live table fails to open anyway.
    let listed: std::collections::HashSet<&str> = marked.lines().collect();
    Ok(listing(dir, true)?
        .iter()
        .all(|line| listed.contains(line.as_str())))
}

/// The store files (journals aside) that the checked listing does not hold as they are now:
/// new, or changed since. Without a listing, every file.
pub fn unchecked(dir: &Path) -> std::io::Result<Vec<String>> {
    let checked = read_ours(&dir.join(CHECKED_FILE))?.unwrap_or_default();
    let checked: std::collections::HashSet<&str> = checked.lines().collect();
    Ok(listing(dir, false)?
        .into_iter()
        .filter(|line| !checked.contains(line.as_str()))
        .collect())
}

/// Of `lines` (from [`unchecked`], before fjall opened the store), those whose file is still
/// there unchanged: fjall deletes at open what a crash left half made (a table a flush or
/// compaction was writing, an older manifest), and none of that is read.
pub fn still_there(dir: &Path, lines: Vec<String>) -> std::io::Result<Vec<String>> {
    if lines.is_empty() {
        return Ok(lines);
    }
    let now: std::collections::HashSet<String> = listing(dir, false)?.into_iter().collect();
    Ok(lines
        .into_iter()
        .filter(|line| now.contains(line))
        .collect())
}

/// Serialises writing the checked listing (a clean close and a [`Keeper`] may both write it,
/// through the same temporary file), and makes the last one written the newest.
static CHECKED_WRITE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Records every store file now there (journals aside) as checked, unless that is `last`.
/// Returns what the listing now holds.
fn update_checked(dir: &Path, last: Option<&str>) -> std::io::Result<String> {
    let _guard = CHECKED_WRITE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let text = listing(dir, false)?.join("\n");
    if last != Some(text.as_str()) {
        write_atomic(dir, CHECKED_FILE, &text)?;
    }
    Ok(text)
}

/// Records every store file now there (journals aside) as checked. Returns what it wrote.
pub fn record_checked(dir: &Path) -> std::io::Result<String> {
    update_checked(dir, None)
}

/// Keeps the checked listing of an open store current: every [`KEEP_EVERY`] it runs `tick`
/// (upkeep of the store's own) and then adds the files this process wrote (and drops those it
/// deleted). Stops when dropped.
pub struct Keeper {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Keeper {
    /// Starts keeping the listing of `dir`, last written as `last`.
    pub fn start(
        dir: PathBuf,
        mut last: String,
        mut tick: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("linkpulse-checked".into())
            .spawn(move || {
                crate::store::priority::background_thread();
                let mut warned = false;
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(KEEP_EVERY)
                {
                    tick();
                    let result = update_checked(&dir, Some(&last)).map(|now| last = now);
                    // Only costs the next open after a crash a full check.
                    if let Err(e) = result
                        && !std::mem::replace(&mut warned, true)
                    {
                        warn!(cause = %e, "cannot update the list of checked store files");
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        // Disconnecting wakes the thread at once.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_after_the_listing_is_unchecked_until_recorded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tables = dir.path().join("keyspaces").join("2").join("tables");
        fs::create_dir_all(&tables).expect("mkdir");
        fs::write(tables.join("1"), b"one").expect("write");
        fs::write(dir.path().join("0.jnl"), b"journal").expect("write");
        assert_eq!(unchecked(dir.path()).expect("unchecked").len(), 1);
        record_checked(dir.path()).expect("record");
        assert!(unchecked(dir.path()).expect("unchecked").is_empty());
        // The journal changes all the time and is not listed.
        fs::write(dir.path().join("0.jnl"), b"journal grows").expect("write");
        assert!(unchecked(dir.path()).expect("unchecked").is_empty());
        // A damaged listing (here no longer UTF-8) has the files checked, and is no error.
        let listed = fs::read(dir.path().join(CHECKED_FILE)).expect("read");
        let mut damaged = listed.clone();
        damaged[3] = 0xff;
        fs::write(dir.path().join(CHECKED_FILE), damaged).expect("write");
        assert_eq!(unchecked(dir.path()).expect("unchecked").len(), 1);
        fs::write(dir.path().join(CHECKED_FILE), listed).expect("write");
        fs::write(tables.join("2"), b"two").expect("write");
        std::thread::sleep(Duration::from_millis(5));
        fs::write(tables.join("1"), b"ONE").expect("write");
        let lines = unchecked(dir.path()).expect("unchecked");
        let paths: Vec<&str> = lines.iter().map(|l| path_of(l)).collect();
        assert_eq!(paths, ["keyspaces/2/tables/1", "keyspaces/2/tables/2"]);
        fs::remove_file(tables.join("2")).expect("remove");
        let left = still_there(dir.path(), lines).expect("still there");
        assert_eq!(left.len(), 1);
        assert_eq!(path_of(&left[0]), "keyspaces/2/tables/1");
    }

    #[test]
    fn the_keeper_records_new_files_while_the_store_is_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let last = record_checked(dir.path()).expect("record");
        let keeper = Keeper::start(dir.path().to_owned(), last, || {}).expect("keeper");
        fs::write(dir.path().join("v7"), b"manifest").expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !unchecked(dir.path()).expect("unchecked").is_empty() {
            assert!(std::time::Instant::now() < deadline, "never recorded");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(keeper);
    }
}
