//! Unit tests of the embedded engine: the totals record, the checks at open, API keys,
//! aggregates built once, and what retention may let go.

use std::path::Path;

use fjall::{Database, KeyspaceCreateOptions};

use super::*;
use crate::{
    analytics::{Aggregates, aggregates},
    domain::{ClickEvent, Link, ShortCode, TargetUrl},
};

fn event(seq: u64) -> ClickEvent {
    ClickEvent::plain(seq)
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

/// Links an import put in a store, each listed by the import itself.
fn import_links(store: &Store, codes: &[&str]) {
    let mut part = ImportBatch::default();
    for (at, code) in (1..).zip(codes) {
        part.link(Link::new(
            ShortCode::parse(code).expect("code"),
            TargetUrl::parse("https://example.com/").expect("url"),
            "o".into(),
            at,
        ));
    }
    store.import(part).expect("imported");
}

fn listed(store: &Store) -> Vec<String> {
    let page = store
        .list_links(None, None, 100, 100, |_| true)
        .expect("listed");
    page.links.iter().map(|l| l.code.to_string()).collect()
}

#[test]
fn a_new_store_never_indexes_its_links_again_and_an_older_one_does_once() {
    // Made, then filled by an import, then started: nothing to build at the start.
    let dir = tempfile::tempdir().expect("temp dir");
    drop(Store::open(dir.path()).expect("opens"));
    let store = Store::open(dir.path()).expect("opens again");
    import_links(&store, &["a", "b"]);
    assert_eq!(store.build_link_index().expect("built"), 0);
    assert_eq!(listed(&store), ["b", "a"]);

    // A store whose links came before the index (no mark): opening it leaves it unmarked,
    // and its next start indexes it once.
    store
        .meta
        .remove(links::LINK_INDEX_BUILT)
        .expect("mark removed");
    store.index.clear().expect("index cleared");
    store.close_clean(dir.path()).expect("closed");
    drop(store);
    let store = Store::open(dir.path()).expect("opens once more");
    assert!(listed(&store).is_empty());
    assert_eq!(store.build_link_index().expect("built"), 2);
    assert_eq!(listed(&store), ["b", "a"]);
    assert_eq!(store.build_link_index().expect("again"), 0);
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
        workspace: None,
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
        workspace: None,
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
