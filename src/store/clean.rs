//! The clean-close mark. A store closed cleanly (memtables flushed, everything fsynced) gets a
//! small file listing every store file with its size and modification time. The next open
//! takes the mark away; if every file is still as listed, nothing has touched the store since
//! its clean close and the full check of [`super::Store::verify`] (which reads the whole store,
//! seconds for millions of clicks) is skipped, so a clean restart serves at once. After a crash
//! (no mark: the open took it), or with any changed or added file, the full check runs.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

const MARK_FILE: &str = "linkpulse-clean";

/// Files of our own that are not part of the store's state.
fn is_ours(name: &str) -> bool {
    name.starts_with("linkpulse-") || name == "lock" || name.ends_with(".lock")
}

/// `relative path, size, modification time (ns)` of every store file, sorted.
fn listing(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = rel.join(&name);
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(path);
            } else if !(rel.as_os_str().is_empty() && is_ours(&name)) {
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

/// Writes the mark for the store in `dir` once its files have stopped changing (a flush can
/// start a compaction a moment later; waiting for quiet, at most `patience`, spares the next
/// open its full check).
pub fn mark(
    dir: &Path,
    patience: std::time::Duration,
    busy: impl Fn() -> bool,
) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + patience;
    let mut text = listing(dir)?.join("\n");
    let mut quiet = 0;
    while quiet < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = listing(dir)?.join("\n");
        quiet = if now == text && !busy() { quiet + 1 } else { 0 };
        text = now;
    }
    let tmp = dir.join(format!("{MARK_FILE}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(MARK_FILE))?;
    fs::File::open(dir)?.sync_all()
}

/// Takes the mark away (durably) and says whether the store is as it was marked.
pub fn take(dir: &Path) -> std::io::Result<bool> {
    let path = dir.join(MARK_FILE);
    let marked = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    fs::remove_file(&path)?;
    fs::File::open(dir)?.sync_all()?;
    // Every file now must be one listed, unchanged. A listed file that is gone is no damage:
    // fjall deletes tables a compaction replaced when it lets go of them, which can be after
    // the mark was written; and a store missing a live table fails to open anyway.
    let listed: std::collections::HashSet<&str> = marked.lines().collect();
    Ok(listing(dir)?
        .iter()
        .all(|line| listed.contains(line.as_str())))
}
