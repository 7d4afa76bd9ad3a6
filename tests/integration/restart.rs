//! Restarts (issue 7, item 3), with the real `linkpulse` binary as a child process on
//! 127.0.0.1:0 and its own temporary data directory: after a SIGKILL the start-up check reads
//! the totals record and the files written since the last check, not the whole store (the log
//! line `start-up check of the store: ... check="quick"` says which check ran), and still
//! refuses a store that lost clicks or holds a damaged new table; `linkpulse keys create` and
//! `linkpulse check` leave a cleanly stopped store marked clean; `linkpulse check` reads a sound
//! store and refuses a damaged one.

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use linkpulse::store::Store;
use serde_json::json;
use tempfile::TempDir;

use crate::{
    faults::process::{self, Res, Started},
    support::{KEY, TestResult, client},
};

/// Longest wait for a process to end.
const EXIT_LIMIT: Duration = Duration::from_secs(20);

/// A running `linkpulse` (the fault tests' child process), with what these tests ask of it.
struct Server(process::Server);

/// Starts the server on `dir` and waits until it serves or ends. The data directory is given
/// relative to the server's working directory, as an operator would often give it.
async fn start(dir: &Path) -> Res<Started> {
    let mut command = process::command(&["--listen", "127.0.0.1:0", "--data-dir"]);
    command
        .arg(dir.file_name().ok_or("a data directory with a name")?)
        .current_dir(dir.parent().ok_or("a data directory with a parent")?);
    process::launch(command).await
}

async fn serving(dir: &Path) -> Res<Server> {
    match start(dir).await? {
        Started::Serving(server) => Ok(Server(server)),
        Started::Exited { status, log } => Err(format!("did not start ({status}):\n{log}").into()),
    }
}

/// Starts the server and insists that it refuses to, returning its log.
async fn refused(dir: &Path) -> Res<String> {
    match start(dir).await? {
        Started::Serving(server) => Err(format!("served:\n{}", server.log()).into()),
        Started::Exited { status, log } => {
            assert!(!status.success(), "exit status {status}:\n{log}");
            assert!(!log.contains("panicked"), "a panic:\n{log}");
            Ok(log)
        }
    }
}

impl Server {
    fn base(&self) -> &str {
        &self.0.base
    }

    fn log(&self) -> String {
        self.0.log()
    }

    async fn kill(mut self) -> Res<String> {
        self.0.signal("KILL")?;
        let status = self.0.wait_exit(EXIT_LIMIT).await?;
        assert_eq!(status.signal(), Some(9), "ended by SIGKILL: {status}");
        Ok(self.0.log())
    }

    async fn terminate(mut self) -> Res<String> {
        self.0.signal("TERM")?;
        let status = self.0.wait_exit(EXIT_LIMIT).await?;
        let log = self.0.log();
        assert_eq!(status.code(), Some(0), "a clean stop exits with 0:\n{log}");
        Ok(log)
    }

    async fn create(&self, code: &str) -> Res<()> {
        let res = client()
            .post(format!("{}/api/links", self.base()))
            .bearer_auth(KEY)
            .json(&json!({"url": "https://example.com/", "code": code}))
            .send()
            .await?;
        assert_eq!(res.status(), 201, "creating {code}");
        Ok(())
    }

    async fn click(&self, code: &str, times: u64) -> Res<()> {
        let http = client();
        for _ in 0..times {
            let res = http.get(format!("{}/{code}", self.base())).send().await?;
            assert_eq!(res.status(), 302);
        }
        Ok(())
    }

    async fn count(&self, code: &str) -> Res<u64> {
        let res = client()
            .get(format!("{}/api/links/{code}", self.base()))
            .bearer_auth(KEY)
            .send()
            .await?;
        assert_eq!(res.status(), 200, "reading {code}");
        let body: serde_json::Value = res.json().await?;
        Ok(body["clickCount"].as_u64().ok_or("no clickCount")?)
    }

    /// Waits until every click counted so far is committed (a read of the stored clicks
    /// waits for them), so a SIGKILL cannot take them.
    async fn committed(&self, code: &str) -> Res<()> {
        let res = client()
            .get(format!("{}/api/links/{code}/clicks?limit=1", self.base()))
            .bearer_auth(KEY)
            .send()
            .await?;
        assert_eq!(res.status(), 200);
        Ok(())
    }
}

/// Which start-up check a log says ran (the last one it turned to): `clean`, `quick` or
/// `full`.
fn check_in(log: &str) -> &str {
    log.lines()
        .rfind(|l| l.contains("start-up check of the store"))
        .and_then(|l| l.split("check=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("none logged")
}

/// (stored count, stored click events) of a code, read from the store of a stopped server.
fn stored(dir: &Path, code: &str) -> Res<(u64, u64)> {
    let store = Store::open(dir)?;
    Ok((store.counter(code)?.count, store.count_click_events(code)?))
}

/// Runs `linkpulse <args> --data-dir <dir>`.
fn tool(args: &[&str], dir: &Path) -> Res<Output> {
    Ok(process::command(args).arg("--data-dir").arg(dir).output()?)
}

/// A copy of `from` whose files keep their modification times, so they count as checked
/// where the original's do.
fn copy_dir(from: &Path) -> Res<TempDir> {
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
                std::fs::copy(entry.path(), &target)?;
                let modified = entry.metadata()?.modified()?;
                std::fs::File::options()
                    .write(true)
                    .open(&target)?
                    .set_modified(modified)?;
            }
        }
        Ok(())
    }
    let dir = tempfile::tempdir()?;
    copy(from, dir.path())?;
    Ok(dir)
}

/// The newest table file of the clicks keyspace (the store's keyspace with the most table
/// bytes in these tests).
fn newest_clicks_table(dir: &Path) -> Res<PathBuf> {
    let mut keyspaces = Vec::new();
    for keyspace in std::fs::read_dir(dir.join("keyspaces"))? {
        let tables = keyspace?.path().join("tables");
        // `keyspaces/0` is fjall's own.
        if tables.parent().is_some_and(|k| k.ends_with("0")) || !tables.exists() {
            continue;
        }
        let mut files = Vec::new();
        for table in std::fs::read_dir(&tables)? {
            let table = table?;
            let meta = table.metadata()?;
            files.push((meta.modified()?, meta.len(), table.path()));
        }
        let bytes: u64 = files.iter().map(|f| f.1).sum();
        keyspaces.push((bytes, files));
    }
    keyspaces.sort_by_key(|k| k.0);
    let (_, mut files) = keyspaces.pop().ok_or("no keyspace with tables")?;
    files.sort();
    Ok(files.pop().ok_or("no table")?.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_sigkill_runs_the_quick_check_and_serves_every_stored_click() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let codes = ["q1", "q2", "q3"];
    // A first life, stopped cleanly: its clicks are in tables.
    let server = serving(dir.path()).await?;
    assert_eq!(check_in(&server.log()), "full", "a new store is read once");
    for code in codes {
        server.create(code).await?;
        server.click(code, 30).await?;
    }
    server.terminate().await?;
    // A second life, killed: its clicks are in the journal.
    let server = serving(dir.path()).await?;
    assert_eq!(check_in(&server.log()), "clean");
    for code in codes {
        server.click(code, 20).await?;
        server.committed(code).await?;
    }
    server.kill().await?;

    let server = serving(dir.path()).await?;
    let log = server.log();
    assert_eq!(check_in(&log), "quick", "after a crash:\n{log}");
    assert!(log.contains("links=3 clicks=150"), "{log}");
    for code in codes {
        assert_eq!(server.count(code).await?, 50, "{code}");
        server.click(code, 1).await?;
    }
    server.terminate().await?;
    for code in codes {
        assert_eq!(
            stored(dir.path(), code)?,
            (51, 51),
            "{code}: stored count, events"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_lost_clicks_is_refused_without_reading_the_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = serving(dir.path()).await?;
    server.create("lost").await?;
    for _ in 0..4 {
        server.click("lost", 10).await?;
        // One group commit, one journal batch, per round.
        server.committed("lost").await?;
    }
    server.kill().await?;
    // This start sees all 40 clicks (the floor is now 40), and is killed too.
    let server = serving(dir.path()).await?;
    assert_eq!(check_in(&server.log()), "quick", "{}", server.log());
    assert_eq!(server.count("lost").await?, 40);
    server.kill().await?;

    // The journal loses its last batch, as a journal damaged there is read: fjall drops the
    // torn batch and says nothing.
    let journal = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max()
        .ok_or("no journal")?;
    let bytes = std::fs::read(&journal)?;
    let end = bytes.iter().rposition(|b| *b != 0).ok_or("empty journal")?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)?
        .set_len(u64::try_from(end)?)?;

    let log = refused(dir.path()).await?;
    assert_eq!(
        check_in(&log),
        "quick",
        "the loss is found without a scan:\n{log}"
    );
    assert!(
        log.contains("cannot open the store")
            && log.contains("but held 1 links and 40 clicks when it was last opened"),
        "{log}"
    );
    // Deleting the floor accepts the loss: the store serves what it has, consistently.
    std::fs::remove_file(dir.path().join("linkpulse-verified"))?;
    let server = serving(dir.path()).await?;
    let count = server.count("lost").await?;
    assert!((30..40).contains(&count), "count after the loss: {count}");
    server.terminate().await?;
    assert_eq!(stored(dir.path(), "lost")?, (count, count));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_damaged_after_a_crash_is_refused_without_reading_the_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = serving(dir.path()).await?;
    server.create("t1").await?;
    server.click("t1", 30).await?;
    server.terminate().await?;
    let server = serving(dir.path()).await?;
    server.click("t1", 30).await?;
    server.committed("t1").await?;
    server.kill().await?;
    // Tables written in the crashed process's last moments, after its last listing: here
    // written by fjall itself, opened on the directory without linkpulse.
    {
        let db = fjall::Database::builder(dir.path()).open()?;
        for name in ["links", "clicks", "keys", "meta"] {
            db.keyspace(name, fjall::KeyspaceCreateOptions::default)?
                .rotate_memtable_and_wait()?;
        }
    }
    let damaged = copy_dir(dir.path())?;

    let server = serving(dir.path()).await?;
    let log = server.log();
    assert_eq!(check_in(&log), "quick", "{log}");
    let files: u64 = log
        .split(" files=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or("no files= in the quick check's line")?;
    assert!(
        files >= 2,
        "the new tables and manifests are checked: {log}"
    );
    assert_eq!(server.count("t1").await?, 60);
    server.terminate().await?;

    // The same, with a word flipped early in the new clicks table (in its first data block,
    // which fjall itself does not read at open).
    let table = newest_clicks_table(damaged.path())?;
    flip_within(&table, std::fs::metadata(&table)?.len() / 10)?;
    let log = refused(damaged.path()).await?;
    assert_eq!(check_in(&log), "quick", "{log}");
    assert!(log.contains("fails its checksum"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_and_check_leave_a_cleanly_stopped_store_marked_clean() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = serving(dir.path()).await?;
    server.create("m1").await?;
    server.click("m1", 25).await?;
    server.terminate().await?;

    let keys = tool(&["keys", "create", "--name", "ops"], dir.path())?;
    assert!(keys.status.success(), "{keys:?}");
    let key = String::from_utf8(keys.stdout)?;
    let key = key.lines().last().unwrap_or_default().to_owned();
    assert!(key.starts_with("lp_"), "{key}");
    let server = serving(dir.path()).await?;
    assert_eq!(check_in(&server.log()), "clean", "after keys create");
    let res = client()
        .post(format!("{}/api/links", server.base()))
        .bearer_auth(&key)
        .json(&json!({"url": "https://example.com/"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201, "the new key works");
    server.terminate().await?;

    let check = tool(&["check"], dir.path())?;
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{check:?}");
    assert!(
        out.contains("api keys: 2")
            && out.contains("links: 2")
            && out.contains("clicks: 25")
            && out.contains("result: sound"),
        "{out}"
    );
    let server = serving(dir.path()).await?;
    assert_eq!(check_in(&server.log()), "clean", "after check");
    // Not marked clean before: keys create leaves no mark either.
    server.kill().await?;
    let keys = tool(&["keys", "create"], dir.path())?;
    assert!(keys.status.success(), "{keys:?}");
    let server = serving(dir.path()).await?;
    assert_eq!(
        check_in(&server.log()),
        "quick",
        "after a crash and keys create"
    );
    server.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkpulse_check_refuses_a_damaged_store_and_one_that_lost_clicks() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = serving(dir.path()).await?;
    server.create("c1").await?;
    server.click("c1", 40).await?;
    server.terminate().await?;
    let sound = tool(&["check"], dir.path())?;
    assert!(sound.status.success(), "{sound:?}");

    // A word flipped in a data block of the clicks table: fjall opens the store, the full
    // read finds the block.
    let damaged = copy_dir(dir.path())?;
    let table = newest_clicks_table(damaged.path())?;
    flip_within(&table, std::fs::metadata(&table)?.len() / 10)?;
    let check = tool(&["check"], damaged.path())?;
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "{check:?}");
    assert!(
        err.contains("cannot open the store") && err.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A store that holds less than the floor says it held.
    let floor = dir.path().join("linkpulse-verified");
    let text = std::fs::read_to_string(&floor)?;
    std::fs::write(&floor, text.replace("clicks 40", "clicks 41"))?;
    let check = tool(&["check"], dir.path())?;
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success(), "{check:?}");
    assert!(err.contains("held 1 links and 41 clicks"), "{err}");

    let missing = tool(&["check"], &dir.path().join("nothing-here"))?;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no linkpulse store"),
        "{missing:?}"
    );
    Ok(())
}

/// Every file of a store that crashed (among them tables and manifests written after the last
/// listing of checked files) gets 4-byte words flipped at 32 places, one copy per place; the
/// copies keep the other files' modification times, so each start runs the quick check (or
/// the full one, for fjall's own keyspace). Each start must refuse, naming the problem, or
/// serve every click. About a minute in a debug build:
/// `cargo test --test integration crashed_store -- --ignored`. (Journals are left to
/// `faults::a_word_flipped_anywhere_in_the_store_is_refused_or_harmless`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: one start per damaged copy, several hundred starts"]
async fn a_word_flipped_in_a_crashed_store_is_refused_or_harmless() -> TestResult {
    const PLACES: u64 = 32;
    let codes = ["w1", "w2", "w3"];
    let base = tempfile::tempdir()?;
    let server = serving(base.path()).await?;
    for code in codes {
        server.create(code).await?;
        server.click(code, 30).await?;
    }
    server.terminate().await?;
    let server = serving(base.path()).await?;
    for code in codes {
        server.click(code, 10).await?;
        server.committed(code).await?;
    }
    server.kill().await?;
    {
        let db = fjall::Database::builder(base.path()).open()?;
        for name in ["links", "clicks", "keys", "meta"] {
            db.keyspace(name, fjall::KeyspaceCreateOptions::default)?
                .rotate_memtable_and_wait()?;
        }
    }

    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Res<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if name != "lock" && !name.starts_with("linkpulse-") && !name.ends_with(".jnl") {
                out.push(path.strip_prefix(root)?.to_owned());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(base.path(), base.path(), &mut files)?;
    files.sort();

    let (mut refused_quick, mut refused_full, mut served) = (0, 0, 0);
    for file in &files {
        let len = std::fs::metadata(base.path().join(file))?.len();
        for at in (0..len).step_by(usize::try_from((len / PLACES).max(1))?) {
            let dir = copy_dir(base.path())?;
            flip_within(&dir.path().join(file), at)?;
            let label = format!("{} flipped at {at}", file.display());
            match start(dir.path()).await? {
                Started::Exited { status, log } => {
                    assert!(!status.success(), "{label}: {status}");
                    assert!(!log.contains("panicked"), "{label}: a panic:\n{log}");
                    assert!(
                        log.contains("cannot open the store")
                            && (log.contains("damaged") || log.contains("inconsistent")),
                        "{label}: the message does not name the problem:\n{log}"
                    );
                    match check_in(&log) {
                        "full" => refused_full += 1,
                        _ => refused_quick += 1,
                    }
                }
                Started::Serving(server) => {
                    let server = Server(server);
                    for code in codes {
                        assert_eq!(server.count(code).await?, 40, "{label}: {code}");
                    }
                    server.click("w1", 1).await?;
                    server.terminate().await?;
                    served += 1;
                }
            }
        }
    }
    eprintln!(
        "words flipped in {} files: refused {refused_quick} times by the quick check or \
         before it, {refused_full} by the full check; {served} starts served every click",
        files.len()
    );
    assert!(refused_quick > 0, "the quick check refused nothing");
    Ok(())
}

/// Flips up to 4 bytes of `path` from `at`, keeping its length.
fn flip_within(path: &Path, at: u64) -> Res<()> {
    let mut bytes = std::fs::read(path)?;
    let start = usize::try_from(at)?;
    let end = (start + 4).min(bytes.len());
    for b in &mut bytes[start..end] {
        *b ^= 0xff;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}
