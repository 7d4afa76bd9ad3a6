//! Data directories for the damage tests: prepared with clicks and cleanly stopped, copied,
//! damaged in place (append, overwrite, truncate), flushed to tables; and a start on a damaged
//! one, which must refuse clearly or serve every click.

use std::{
    io::Write,
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use tempfile::TempDir;

use super::process::{
    Res, Started, api_counts, assert_no_panic, create_code, serving, start, stored_counts,
};
use crate::support::client;

// ---------------------------------------------------------------------------------------------
// Damaged and held data directories.

/// What a start on a damaged directory did.
#[derive(Debug)]
pub(super) enum Outcome {
    /// It served; the counts it recovered.
    Recovered(Vec<u64>),
    /// It refused to start, with this message.
    Refused(String),
}

/// A data directory with `codes`, each clicked `CLICKS` times, cleanly stopped and checked.
pub(super) const CLICKS: u64 = 40;

pub(super) async fn prepared_dir(codes: &[&str]) -> Res<TempDir> {
    let dir = tempfile::tempdir()?;
    let http = client();
    let mut server = serving(dir.path(), &[]).await?;
    for code in codes {
        create_code(&http, &server.base, code).await?;
        for _ in 0..CLICKS {
            let res = http.get(format!("{}/{code}", server.base)).send().await?;
            assert_eq!(res.status(), 302);
        }
    }
    server.terminate().await?;
    // Opening the store here also trims the journal's preallocated tail, so the journal ends
    // right after its last batch.
    let stored = stored_counts(dir.path(), codes)?;
    assert!(stored.iter().all(|s| *s == (CLICKS, CLICKS)), "{stored:?}");
    Ok(dir)
}

/// A copy of `from` in a new temporary directory.
pub(super) fn copy_dir(from: &Path) -> Res<TempDir> {
    fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            let kind = entry.file_type()?;
            if kind.is_dir() {
                copy(&entry.path(), &target)?;
            } else if kind.is_file() {
                // A killed server's control socket is not data: a backup leaves it too.
                std::fs::copy(entry.path(), target)?;
            }
        }
        Ok(())
    }
    let dir = tempfile::tempdir()?;
    copy(from, dir.path())?;
    Ok(dir)
}

/// Starts linkpulse on a damaged directory. It must not panic, and either refuse to start
/// with a message naming the problem, or serve each code's count within its `bounds` and go
/// on counting, with count == events in the store after a clean stop.
pub(super) async fn start_damaged(
    label: &str,
    dir: &Path,
    codes: &[&str],
    bounds: &[RangeInclusive<u64>],
) -> Res<Outcome> {
    let outcome = match start(dir, &[]).await? {
        Started::Exited { status, log } => {
            assert_no_panic(&log, label);
            assert!(!status.success(), "{label}: exit status {status}:\n{log}");
            let message = log
                .split_once("Error: ")
                .map(|(_, message)| message.trim().to_owned())
                .ok_or_else(|| format!("{label}: no error message:\n{log}"))?;
            assert!(
                message.contains("cannot open the store")
                    && (message.contains("damaged") || message.contains("inconsistent")),
                "{label}: the message does not name the problem:\n{log}"
            );
            Outcome::Refused(message.replace('\n', " "))
        }
        Started::Serving(mut server) => {
            let http = client();
            let recovered = api_counts(&http, &server.base, codes).await?;
            for ((code, count), bounds) in codes.iter().zip(&recovered).zip(bounds) {
                let url = format!("{}/{code}", server.base);
                match count {
                    Some(count) => {
                        assert!(
                            bounds.contains(count),
                            "{label} {code}: recovered count {count} is not in {bounds:?}"
                        );
                        for _ in 0..3 {
                            let res = http.get(&url).send().await?;
                            assert_eq!(res.status(), 302, "{label} {code}: serves after recovery");
                        }
                    }
                    // Only a lost journal tail may take a link (and its later clicks) with it.
                    None => {
                        assert_eq!(*bounds.start(), 0, "{label} {code}: the link was lost");
                        assert_eq!(http.get(&url).send().await?.status(), 404);
                    }
                }
            }
            let served = api_counts(&http, &server.base, codes).await?;
            server.terminate().await?;
            let stored = stored_counts(dir, codes)?;
            let mut counts = Vec::new();
            for (i, code) in codes.iter().enumerate() {
                let expected = recovered[i].map_or(0, |count| count + 3);
                assert_eq!(
                    served[i],
                    recovered[i].map(|_| expected),
                    "{label} {code}: counts on"
                );
                assert_eq!(
                    stored[i],
                    (expected, expected),
                    "{label} {code}: stored (count, events) after recovery"
                );
                counts.push(recovered[i].unwrap_or(0));
            }
            Outcome::Recovered(counts)
        }
    };
    match &outcome {
        Outcome::Recovered(counts) => eprintln!("{label}: recovered, serving counts {counts:?}"),
        Outcome::Refused(message) => eprintln!("{label}: refused to start: {message}"),
    }
    Ok(outcome)
}

/// The journal files (`*.jnl`) in the top of a data directory, oldest first.
pub(super) fn journals(dir: &Path) -> Res<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(format!("no journal in {}", dir.display()).into());
    }
    Ok(out)
}

/// Deterministic bytes that look like nothing in particular.
pub(super) fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

pub(super) fn append(path: &Path, bytes: &[u8]) -> Res<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(bytes)?;
    Ok(())
}

pub(super) fn overwrite(path: &Path, at: u64, bytes: &[u8]) -> Res<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(at))?;
    file.write_all(bytes)?;
    Ok(())
}

pub(super) fn truncate(path: &Path, len: u64) -> Res<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(len)?;
    Ok(())
}

pub(super) fn len_of(path: &Path) -> Res<u64> {
    Ok(std::fs::metadata(path)?.len())
}

/// Writes the memtables of every keyspace into tables, so the data directory has table files
/// for `links`, `clicks` and `keys` (a store of a few clicks otherwise keeps them in the
/// journal). Returns the table files of the `clicks` keyspace and of the meta keyspace.
pub(super) fn flush_to_tables(dir: &Path) -> Res<(Vec<PathBuf>, Vec<PathBuf>)> {
    let db = fjall::Database::builder(dir).open()?;
    let mut clicks_tables = Vec::new();
    for name in ["links", "clicks", "keys"] {
        let keyspace = db.keyspace(name, fjall::KeyspaceCreateOptions::default)?;
        // Hidden but public: forces the flush a full memtable would cause.
        keyspace.rotate_memtable_and_wait()?;
        if name == "clicks" {
            clicks_tables = files_in(&keyspace.path().join("tables"))?;
        }
    }
    drop(db);
    let meta_tables = files_in(&dir.join("keyspaces").join("0").join("tables"))?;
    if clicks_tables.is_empty() || meta_tables.is_empty() {
        return Err("no table files after the flush".into());
    }
    Ok((clicks_tables, meta_tables))
}

pub(super) fn files_in(dir: &Path) -> Res<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}
