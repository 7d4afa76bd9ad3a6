//! Damaged journals and tables: each start recovers what is intact or refuses with a message
//! naming the problem, never serves a wrong count; and the long (ignored) sweep of words
//! flipped anywhere in a store.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    process::{Res, serving, stored_counts},
    store_files::{
        CLICKS, Outcome, append, copy_dir, flush_to_tables, garbage, journals, len_of, overwrite,
        prepared_dir, start_damaged, truncate,
    },
};
use crate::support::{TestResult, client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_recovered_or_refused_never_served_wrong() -> TestResult {
    let codes = ["j1", "j2", "j3"];
    let base = prepared_dir(&codes).await?;
    let journal_name = journals(base.path())?
        .pop()
        .and_then(|p| p.file_name().map(ToOwned::to_owned))
        .ok_or("no journal")?;
    let journal_bytes = std::fs::read(base.path().join(&journal_name))?;
    let journal_len = u64::try_from(journal_bytes.len())?;
    // Inside a link record (its target URL), so the damage is to a value a checksum covers
    // wherever the group commits happened to fall.
    let in_a_value = journal_bytes
        .windows(11)
        .position(|w| w == b"example.com")
        .and_then(|at| u64::try_from(at).ok())
        .ok_or("no link record in the journal")?;
    // The journal starts with a batch: tag 1, item count (u32), sequence number (u64 LE).
    assert_eq!(
        journal_bytes.first(),
        Some(&1),
        "a journal starts with a batch"
    );
    eprintln!(
        "journal {} of {journal_len} bytes",
        journal_name.to_string_lossy()
    );

    // Damage to what the store held when it was last opened (and so synced): a start must
    // serve all of it or refuse. Garbage after the last batch damages nothing and must be
    // recovered.
    let everything = vec![CLICKS..=CLICKS; codes.len()];
    type Damage = Box<dyn Fn(&Path) -> Res<()>>;
    let cases: Vec<(&str, Damage, bool)> = vec![
        (
            "garbage appended to the journal",
            Box::new(|p| append(p, &garbage(4096, 1))),
            true,
        ),
        (
            "other garbage appended to the journal",
            Box::new(|p| append(p, &garbage(100, 7))),
            true,
        ),
        (
            "a batch start and a short item appended to the journal",
            Box::new(|p| {
                let mut torn = vec![1u8];
                torn.extend_from_slice(&3u32.to_le_bytes());
                torn.extend_from_slice(&u64::MAX.to_le_bytes());
                torn.extend_from_slice(&[2, 0, 0]);
                append(p, &torn)
            }),
            true,
        ),
        (
            "the journal's last byte cut off",
            Box::new(move |p| truncate(p, journal_len - 1)),
            false,
        ),
        (
            "the journal truncated to 60%",
            Box::new(move |p| truncate(p, journal_len * 6 / 10)),
            false,
        ),
        (
            "bytes flipped inside a committed batch of the journal",
            Box::new(move |p| overwrite(p, in_a_value, &[0xff, 0xee, 0xdd, 0xcc])),
            false,
        ),
        (
            // The sequence number is outside the batch checksum.
            "an impossible sequence number in the journal's first batch",
            Box::new(|p| overwrite(p, 12, &[0xff])),
            false,
        ),
        (
            "the journal overwritten with garbage",
            Box::new(move |p| {
                overwrite(p, 0, &garbage(usize::try_from(journal_len).unwrap_or(0), 3))
            }),
            false,
        ),
    ];
    for (what, damage, must_recover) in cases {
        let dir = copy_dir(base.path())?;
        damage(&dir.path().join(&journal_name))?;
        let outcome = start_damaged(what, dir.path(), &codes, &everything).await?;
        assert!(
            !must_recover || matches!(outcome, Outcome::Recovered(_)),
            "{what}: refused, though nothing stored was damaged"
        );
    }

    // What a crash in the middle of a write leaves: a torn last batch, written after the
    // last open. The start recovers everything before it.
    let dir = copy_dir(base.path())?;
    let http = client();
    let mut server = serving(dir.path(), &[]).await?;
    for _ in 0..10 {
        let res = http.get(format!("{}/j1", server.base)).send().await?;
        assert_eq!(res.status(), 302);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill().await?;
    let journal = journals(dir.path())?.pop().ok_or("no journal")?;
    let bytes = std::fs::read(&journal)?;
    let end = bytes.iter().rposition(|b| *b != 0).ok_or("empty journal")?;
    truncate(&journal, u64::try_from(end)?)?;
    let outcome = start_damaged(
        "a torn last batch (the journal cut inside its last batch)",
        dir.path(),
        &codes,
        &[CLICKS..=CLICKS + 9, CLICKS..=CLICKS, CLICKS..=CLICKS],
    )
    .await?;
    assert!(
        matches!(outcome, Outcome::Recovered(_)),
        "a torn last batch is what a crash leaves: it must be recovered"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_table_is_refused_with_a_clear_message_never_served_wrong() -> TestResult {
    let codes = ["b1", "b2", "b3"];
    let base = prepared_dir(&codes).await?;
    let (clicks_tables, meta_tables) = flush_to_tables(base.path())?;
    let stored = stored_counts(base.path(), &codes)?;
    assert!(stored.iter().all(|s| *s == (CLICKS, CLICKS)), "{stored:?}");
    let relative = |p: &Path| -> Res<PathBuf> { Ok(p.strip_prefix(base.path())?.to_owned()) };
    let clicks_table = relative(clicks_tables.last().ok_or("no clicks table")?)?;
    let meta_table = relative(meta_tables.last().ok_or("no meta table")?)?;
    let clicks_len = len_of(&base.path().join(&clicks_table))?;
    let meta_len = len_of(&base.path().join(&meta_table))?;
    eprintln!(
        "tables: clicks {} ({clicks_len} bytes), meta {} ({meta_len} bytes)",
        clicks_table.display(),
        meta_table.display()
    );

    type Damage = Box<dyn Fn(&Path) -> Res<()>>;
    let cases: Vec<(&str, &Path, Damage)> = vec![
        (
            "garbage appended to the clicks table",
            clicks_table.as_path(),
            Box::new(|p| append(p, &garbage(4096, 11))),
        ),
        (
            "the clicks table truncated to half",
            clicks_table.as_path(),
            Box::new(move |p| truncate(p, clicks_len / 2)),
        ),
        (
            "the clicks table truncated to nothing",
            clicks_table.as_path(),
            Box::new(|p| truncate(p, 0)),
        ),
        (
            "the clicks table overwritten with garbage",
            clicks_table.as_path(),
            Box::new(move |p| {
                overwrite(p, 0, &garbage(usize::try_from(clicks_len).unwrap_or(0), 5))
            }),
        ),
        (
            "bytes flipped in the clicks table's first data block",
            clicks_table.as_path(),
            Box::new(move |p| overwrite(p, clicks_len / 5, &[0xff, 0xee, 0xdd, 0xcc])),
        ),
        (
            "bytes flipped in the clicks table's last data block",
            clicks_table.as_path(),
            Box::new(move |p| overwrite(p, clicks_len * 3 / 4, &[0xff, 0xee, 0xdd, 0xcc])),
        ),
        (
            "bytes flipped in the meta keyspace's table",
            meta_table.as_path(),
            Box::new(move |p| overwrite(p, meta_len / 3, &[0xff, 0xee, 0xdd, 0xcc])),
        ),
    ];
    let everything = vec![CLICKS..=CLICKS; codes.len()];
    for (what, table, damage) in cases {
        let dir = copy_dir(base.path())?;
        damage(&dir.path().join(table))?;
        // A table holds committed data: a recovery must keep all of it.
        start_damaged(what, dir.path(), &codes, &everything).await?;
    }
    Ok(())
}

/// Every file of a store (tables, manifests, version; the journal too in a release build) has
/// 4-byte words flipped one at a time at 128 places spread over it; each start must refuse with
/// a message naming the problem, or serve every click and count on. About half a minute in a debug
/// build: `cargo test --test integration faults -- --ignored`. In a debug build the journal is
/// left out: fjall checks a journal item's lengths with a `debug_assert` there, which panics on
/// a damaged length (a release build reads on and refuses the store);
/// `cargo test --release --test integration faults -- --ignored` covers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: one start per damaged copy, a few hundred starts"]
async fn a_word_flipped_anywhere_in_the_store_is_refused_or_harmless() -> TestResult {
    const PLACES: u64 = 128;
    let codes = ["w1", "w2", "w3"];
    let journal_only = prepared_dir(&codes).await?;
    let flushed = copy_dir(journal_only.path())?;
    flush_to_tables(flushed.path())?;
    stored_counts(flushed.path(), &codes)?;

    let mut targets: Vec<(PathBuf, PathBuf)> = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> Res<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if path
                .file_name()
                .is_some_and(|n| n != "lock" && n != "linkpulse-verified")
                && path.extension().is_none_or(|x| x != "jnl")
            {
                out.push((root.to_owned(), path.strip_prefix(root)?.to_owned()));
            }
        }
        Ok(())
    }
    walk(flushed.path(), flushed.path(), &mut targets)?;
    if !cfg!(debug_assertions) {
        for journal in journals(journal_only.path())? {
            let relative = journal.strip_prefix(journal_only.path())?.to_owned();
            targets.push((journal_only.path().to_owned(), relative));
        }
    }
    targets.sort();

    let everything = vec![CLICKS..=CLICKS; codes.len()];
    let (mut refused, mut harmless) = (0, 0);
    for (base, file) in &targets {
        let len = len_of(&base.join(file))?;
        let step = (len / PLACES).max(1);
        for at in (0..len).step_by(usize::try_from(step)?) {
            let dir = copy_dir(base)?;
            let path = dir.path().join(file);
            let bytes = std::fs::read(&path)?;
            let end = usize::try_from((at + 4).min(len))?;
            let flipped: Vec<u8> = bytes[usize::try_from(at)?..end]
                .iter()
                .map(|b| b ^ 0xff)
                .collect();
            overwrite(&path, at, &flipped)?;
            let label = format!("{} flipped at {at}", file.display());
            match start_damaged(&label, dir.path(), &codes, &everything).await? {
                Outcome::Refused(_) => refused += 1,
                Outcome::Recovered(_) => harmless += 1,
            }
        }
    }
    eprintln!(
        "flipped words in {} files: {refused} starts refused, {harmless} served every click",
        targets.len()
    );
    Ok(())
}
