//! Faults (issue 4, "no click lost under faults"): the real `linkpulse` binary, started as a
//! child process on 127.0.0.1:0 with its own temporary data directory, is killed with SIGKILL
//! under load (default and strict durability, once and five times over one directory), stopped
//! with SIGTERM under load with thousands of open streams, and started on a damaged journal, on
//! damaged tables and on a directory another linkpulse holds.
//!
//! After every fault the store opens and each code's stored count equals its number of stored
//! click events; nothing panics; and a start on a damaged directory either recovers what is
//! intact (and then serves and counts on) or exits non-zero saying what is wrong. The figures
//! (clicks lost per kill, time to stop) are printed with `eprintln!`; run with `--nocapture` to
//! see them.

use std::{
    io::{BufRead, BufReader, Write},
    ops::RangeInclusive,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use linkpulse::store::Store;
use serde_json::json;
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{Semaphore, oneshot},
    task::JoinHandle,
};

use crate::support::{KEY, TestResult, client};

const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// Longest wait for a start to serve or fail (a deadline, not a timing assertion).
const START_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for a process to end after SIGKILL, or after it said it cannot start.
const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for a clean stop after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Concurrent redirect clients; each has at most one request in flight.
const TASKS: usize = 16;

// ---------------------------------------------------------------------------------------------
// The child process.

/// A running `linkpulse` process. Dropping it kills the process if it still runs, so a failing
/// test leaves nothing behind.
struct Server {
    child: Child,
    base: String,
    addr: String,
    log: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// How a start ended.
enum Started {
    Serving(Server),
    /// The process ended without serving: its exit status and its log (standard error).
    Exited {
        status: ExitStatus,
        log: String,
    },
}

/// Starts `linkpulse` on `dir` with extra `args` and waits until it serves or ends.
async fn start(dir: &Path, args: &[&str]) -> Res<Started> {
    let mut command = Command::new(BIN);
    // Only what the test says: no LINKPULSE_* setting of the environment running the tests.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LINKPULSE_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .env("LINKPULSE_INITIAL_API_KEY", KEY)
        .env("LINKPULSE_LOG", "info")
        // Keep an error report to its message; a panic still prints "panicked at".
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = oneshot::channel::<String>();
    let reader = {
        let log = log.clone();
        // Reads the whole log, so the child never blocks on a full pipe.
        thread::spawn(move || {
            let mut tx = Some(tx);
            let mut stderr = BufReader::new(stderr);
            let mut raw = Vec::new();
            while matches!(stderr.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&raw).into_owned();
                raw.clear();
                log.lock().expect("log lock").push_str(&line);
                if line.contains("linkpulse listening")
                    && let Some(addr) = line
                        .split("address=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.to_owned());
                }
            }
        })
    };
    let mut server = Server {
        child,
        base: String::new(),
        addr: String::new(),
        log,
        reader: Some(reader),
    };
    match tokio::time::timeout(START_LIMIT, rx).await {
        Ok(Ok(addr)) => {
            server.base = format!("http://{addr}");
            server.addr = addr;
            Ok(Started::Serving(server))
        }
        // The log ended without the listening line: the process is ending.
        Ok(Err(_)) => {
            let status = server.wait_exit(EXIT_LIMIT).await?;
            let log = server.log();
            Ok(Started::Exited { status, log })
        }
        Err(_) => Err(format!(
            "linkpulse neither served nor exited within {START_LIMIT:?}:\n{}",
            server.log()
        )
        .into()),
    }
}

/// Starts `linkpulse` and insists that it serves.
async fn serving(dir: &Path, args: &[&str]) -> Res<Server> {
    match start(dir, args).await? {
        Started::Serving(server) => Ok(server),
        Started::Exited { status, log } => {
            Err(format!("linkpulse did not start ({status}):\n{log}").into())
        }
    }
}

impl Server {
    fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    fn signal(&self, name: &str) -> Res<()> {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -{name} failed: {status}").into());
        }
        Ok(())
    }

    /// Waits for the process to end (polling, with a deadline) and for its whole log.
    async fn wait_exit(&mut self, limit: Duration) -> Res<ExitStatus> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "linkpulse did not exit within {limit:?}; its log:\n{}",
                    self.log()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// SIGKILL, and the process is gone.
    async fn kill(&mut self) -> Res<()> {
        self.signal("KILL")?;
        let status = self.wait_exit(EXIT_LIMIT).await?;
        assert_eq!(status.signal(), Some(9), "ended by SIGKILL: {status}");
        assert_no_panic(&self.log(), "before the SIGKILL");
        Ok(())
    }

    /// SIGTERM, and the process stops cleanly (exit code 0). Returns how long it took.
    async fn terminate(&mut self) -> Res<Duration> {
        let sent = Instant::now();
        self.signal("TERM")?;
        let status = self.wait_exit(STOP_LIMIT).await?;
        let took = sent.elapsed();
        let log = self.log();
        assert_eq!(status.code(), Some(0), "a clean stop exits with 0:\n{log}");
        assert_no_panic(&log, "a clean stop");
        Ok(took)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn assert_no_panic(log: &str, when: &str) {
    assert!(!log.contains("panicked"), "a panic ({when}):\n{log}");
}

// ---------------------------------------------------------------------------------------------
// Talking to it.

async fn create_code(http: &reqwest::Client, base: &str, code: &str) -> Res<()> {
    let res = http
        .post(format!("{base}/api/links"))
        .bearer_auth(KEY)
        .json(&json!({"url": "https://example.com/target", "code": code}))
        .send()
        .await?;
    if res.status() != 201 {
        return Err(format!("creating {code}: {}", res.status()).into());
    }
    Ok(())
}

/// The count the server shows for each code (`None`: the server does not know the code).
async fn api_counts(http: &reqwest::Client, base: &str, codes: &[&str]) -> Res<Vec<Option<u64>>> {
    let mut out = Vec::with_capacity(codes.len());
    for code in codes {
        let res = http
            .get(format!("{base}/api/links/{code}"))
            .bearer_auth(KEY)
            .send()
            .await?;
        match res.status().as_u16() {
            200 => {
                let body: serde_json::Value = res.json().await?;
                let count = body["clickCount"].as_u64().ok_or("clickCount missing")?;
                out.push(Some(count));
            }
            404 => out.push(None),
            other => return Err(format!("reading {code}: {other}").into()),
        }
    }
    Ok(out)
}

/// Counts every code must have: a code the server does not know is an error.
async fn known_counts(http: &reqwest::Client, base: &str, codes: &[&str]) -> Res<Vec<u64>> {
    api_counts(http, base, codes)
        .await?
        .into_iter()
        .zip(codes)
        .map(|(count, code)| count.ok_or_else(|| format!("{code} is unknown").into()))
        .collect()
}

/// (stored count, stored click events) of each code, read straight from the store. The
/// process using the directory must have ended.
fn stored_counts(dir: &Path, codes: &[&str]) -> Res<Vec<(u64, u64)>> {
    let store = Store::open(dir)?;
    codes
        .iter()
        .map(|code| Ok((store.counter(code)?.count, store.count_click_events(code)?)))
        .collect()
}

/// What the redirect clients of one code saw.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// `302` answers received.
    found: u64,
    /// Other answers (a strict-mode `503`, say).
    other: u64,
    /// Requests that got no answer (the server went away): each may or may not be counted.
    /// A client stops at its first, so this is at most its requests in flight.
    unanswered: u64,
}

/// Redirect clients hammering the codes until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<(usize, JoinHandle<Tally>)>,
    codes: usize,
}

/// Starts `TASKS` clients, client `i` following code `i % codes.len()` in a loop.
fn start_load(base: &str, codes: &[&str]) -> Load {
    let http = client();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..TASKS)
        .map(|i| {
            let index = i % codes.len();
            let url = format!("{base}/{}", codes[index]);
            let (http, stop) = (http.clone(), stop.clone());
            let task = tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    match http.get(&url).timeout(Duration::from_secs(10)).send().await {
                        Ok(res) if res.status() == 302 => tally.found += 1,
                        Ok(_) => tally.other += 1,
                        Err(_) => {
                            tally.unanswered += 1;
                            break;
                        }
                    }
                }
                tally
            });
            (index, task)
        })
        .collect();
    Load {
        stop,
        tasks,
        codes: codes.len(),
    }
}

impl Load {
    /// Stops the clients and sums up per code.
    async fn finish(self) -> Res<Vec<Tally>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = vec![Tally::default(); self.codes];
        for (index, task) in self.tasks {
            let t = task.await?;
            out[index].found += t.found;
            out[index].other += t.other;
            out[index].unanswered += t.unanswered;
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// SIGKILL under load.

/// One round: start, load, SIGKILL mid-load, restart (the binary recovers the store), read the
/// counts it serves, stop it cleanly, read the store.
struct KillRound {
    /// Counts served before the load.
    before: Vec<u64>,
    tallies: Vec<Tally>,
    /// Counts served by the restarted process.
    served_after: Vec<u64>,
    /// (count, click events) in the store after the clean stop of the restarted process.
    stored: Vec<(u64, u64)>,
}

async fn kill_round(
    dir: &Path,
    args: &[&str],
    codes: &[&str],
    create: bool,
    load_for: Duration,
) -> Res<KillRound> {
    let http = client();
    let mut server = serving(dir, args).await?;
    if create {
        for code in codes {
            create_code(&http, &server.base, code).await?;
        }
    }
    let before = known_counts(&http, &server.base, codes).await?;
    let load = start_load(&server.base, codes);
    tokio::time::sleep(load_for).await;
    server.kill().await?;
    let tallies = load.finish().await?;
    drop(server);

    let mut again = serving(dir, args).await?;
    let served_after = known_counts(&http, &again.base, codes).await?;
    again.terminate().await?;
    let stored = stored_counts(dir, codes)?;
    Ok(KillRound {
        before,
        tallies,
        served_after,
        stored,
    })
}

/// Checks a round and prints what was lost. `strict`: no acknowledged click may be lost.
/// Returns the total loss (302s received minus clicks stored; negative when clicks in flight
/// at the kill were stored without their answer arriving).
fn check_kill_round(label: &str, codes: &[&str], round: &KillRound, strict: bool) -> i64 {
    let mut total = (0, 0, 0, 0i64);
    for (i, code) in codes.iter().enumerate() {
        let (count, events) = round.stored[i];
        let t = round.tallies[i];
        assert_eq!(
            count, events,
            "{label} {code}: the stored count is the number of stored click events"
        );
        assert_eq!(
            round.served_after[i], count,
            "{label} {code}: the restarted server serves the stored count"
        );
        assert!(
            count >= round.before[i],
            "{label} {code}: the count went down from {} to {count}",
            round.before[i]
        );
        let added = count - round.before[i];
        assert!(
            added <= t.found + t.other + t.unanswered,
            "{label} {code}: {added} clicks stored but only {} answered and {} in flight",
            t.found + t.other,
            t.unanswered
        );
        if strict {
            assert!(
                added >= t.found,
                "{label} {code}: {} redirects acknowledged but only {added} clicks stored",
                t.found
            );
        } else {
            assert_eq!(t.other, 0, "{label} {code}: answers other than 302");
        }
        let loss = i64::try_from(t.found).unwrap_or(i64::MAX) - i64::try_from(added).unwrap_or(0);
        total.0 += t.found;
        total.1 += added;
        total.2 += t.unanswered;
        total.3 += loss;
    }
    eprintln!(
        "{label}: 302s received {}, clicks stored {}, requests in flight at the kill {}, \
         clicks lost (302s - stored) {}",
        total.0, total.1, total.2, total.3
    );
    assert!(total.0 >= 50, "{label}: too little load to mean anything");
    total.3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_in_default_durability_keeps_counts_and_events_equal() -> TestResult {
    let dir = tempfile::tempdir()?;
    let codes = ["k1", "k2", "k3", "k4"];
    let round = kill_round(dir.path(), &[], &codes, true, Duration::from_millis(1500)).await?;
    check_kill_round("SIGKILL, default durability", &codes, &round, false);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_in_strict_durability_loses_no_acknowledged_click() -> TestResult {
    let dir = tempfile::tempdir()?;
    let codes = ["s1", "s2", "s3", "s4"];
    let args = ["--durability", "strict"];
    let round = kill_round(dir.path(), &args, &codes, true, Duration::from_millis(1500)).await?;
    let loss = check_kill_round("SIGKILL, strict durability", &codes, &round, true);
    assert!(
        loss <= 0,
        "strict durability lost {loss} acknowledged clicks"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_sigkills_on_one_data_dir_keep_it_consistent_and_counts_never_go_down() -> TestResult {
    let dir = tempfile::tempdir()?;
    let codes = ["r1", "r2", "r3"];
    let mut previous: Option<Vec<u64>> = None;
    let mut losses = Vec::new();
    for round_no in 1..=5 {
        let label = format!("SIGKILL round {round_no}/5");
        let round = kill_round(
            dir.path(),
            &[],
            &codes,
            round_no == 1,
            Duration::from_millis(600),
        )
        .await?;
        if let Some(previous) = &previous {
            // The round started from the previous round's cleanly stopped store.
            assert_eq!(
                &round.before, previous,
                "{label}: the start serves the counts stored before"
            );
        }
        losses.push(check_kill_round(&label, &codes, &round, false));
        previous = Some(round.stored.iter().map(|(count, _)| *count).collect());
    }
    eprintln!("five SIGKILLs, clicks lost per kill: {losses:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SIGTERM under load with thousands of open streams.

/// What one raw SSE connection saw.
#[derive(Debug, Default)]
struct StreamSeen {
    /// `retry:` hints: one at the start, one more at a clean stop.
    retries: usize,
    /// The server closed it.
    ended: bool,
}

/// Opens `GET /realtime/{code}` on a raw connection, reports once the first data frame is in,
/// then reads (and drops) everything until the server closes the connection.
async fn raw_stream(
    addr: String,
    code: String,
    opening: Arc<Semaphore>,
    ready: Arc<AtomicUsize>,
) -> Res<StreamSeen> {
    let permit = opening.acquire_owned().await?;
    let mut socket = TcpStream::connect(&addr).await?;
    socket
        .write_all(
            format!(
                "GET /realtime/{code} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut seen = StreamSeen::default();
    let mut buf = vec![0u8; 8192];
    // The end of the previous read, so a marker split over two reads is still found.
    let mut carry: Vec<u8> = Vec::new();
    let mut head = Vec::new();
    let mut permit = Some(permit);
    loop {
        let n = match socket.read(&mut buf).await {
            Ok(0) | Err(_) => {
                seen.ended = true;
                break;
            }
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&buf[..n]);
        if permit.is_some() {
            head.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&head);
            if !text.starts_with("HTTP/1.1 200") && text.len() >= 12 {
                return Err(
                    format!("stream refused: {}", text.lines().next().unwrap_or("")).into(),
                );
            }
            if text.contains("\ndata: ") {
                permit = None;
                head = Vec::new();
                ready.fetch_add(1, Ordering::Relaxed);
            }
        }
        seen.retries += count_matches(&window, b"\nretry: ");
        let keep = window.len().min(8);
        carry = window[window.len() - keep..].to_vec();
    }
    if permit.is_some() {
        return Err("the stream ended before its first frame".into());
    }
    Ok(seen)
}

fn count_matches(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Res<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .ok_or_else(|| format!("metric {name} missing").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_with_2000_open_streams_stops_cleanly_and_loses_nothing() -> TestResult {
    const STREAMS: usize = 2000;
    let dir = tempfile::tempdir()?;
    let codes = ["t1", "t2", "t3", "t4"];
    let http = client();
    // A frame per link at most every 100 ms keeps 2,000 readers affordable in a debug build.
    let mut server = serving(dir.path(), &["--sse-min-interval", "100ms"]).await?;
    for code in codes {
        create_code(&http, &server.base, code).await?;
    }

    let opening = Arc::new(Semaphore::new(100));
    let ready = Arc::new(AtomicUsize::new(0));
    let opened_at = Instant::now();
    let streams: Vec<JoinHandle<Res<StreamSeen>>> = (0..STREAMS)
        .map(|i| {
            tokio::spawn(raw_stream(
                server.addr.clone(),
                codes[i % codes.len()].to_owned(),
                opening.clone(),
                ready.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < STREAMS {
        if Instant::now() >= deadline || streams.iter().any(JoinHandle::is_finished) {
            return Err(format!(
                "only {} of {STREAMS} streams opened",
                ready.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscribers = metric(&http, &server.base, "linkpulse_subscribers").await?;
    assert_eq!(
        subscribers, STREAMS as u64,
        "every stream is a live subscriber"
    );
    eprintln!(
        "SIGTERM test: {STREAMS} streams open after {:?}",
        opened_at.elapsed()
    );

    let load = start_load(&server.base, &codes);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let took = server.terminate().await?;
    let tallies = load.finish().await?;
    eprintln!("SIGTERM with {STREAMS} open streams under load: exited 0 after {took:?}");

    let mut ended = 0;
    let mut told_to_retry = 0;
    for stream in streams {
        let seen = tokio::time::timeout(Duration::from_secs(10), stream).await???;
        ended += usize::from(seen.ended);
        told_to_retry += usize::from(seen.retries >= 2);
    }
    eprintln!(
        "SIGTERM test: {ended} of {STREAMS} streams ended, {told_to_retry} with a last retry hint"
    );
    assert_eq!(ended, STREAMS, "every stream ends with the process");

    let stored = stored_counts(dir.path(), &codes)?;
    let mut received = 0;
    for (i, code) in codes.iter().enumerate() {
        let t = tallies[i];
        assert_eq!(t.other, 0, "{code}: answers other than 302");
        assert_eq!(
            stored[i],
            (t.found, t.found),
            "{code}: after a clean stop, count and events equal the 302s received"
        );
        received += t.found;
    }
    eprintln!("SIGTERM test: {received} 302s received, all of them stored");
    assert!(received >= 50, "too little load to mean anything");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Damaged and held data directories.

/// What a start on a damaged directory did.
#[derive(Debug)]
enum Outcome {
    /// It served; the counts it recovered.
    Recovered(Vec<u64>),
    /// It refused to start, with this message.
    Refused(String),
}

/// A data directory with `codes`, each clicked `CLICKS` times, cleanly stopped and checked.
const CLICKS: u64 = 40;

async fn prepared_dir(codes: &[&str]) -> Res<TempDir> {
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
fn copy_dir(from: &Path) -> Res<TempDir> {
    fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy(&entry.path(), &target)?;
            } else {
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
async fn start_damaged(
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
fn journals(dir: &Path) -> Res<Vec<PathBuf>> {
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
fn garbage(len: usize, seed: u64) -> Vec<u8> {
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

fn append(path: &Path, bytes: &[u8]) -> Res<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(bytes)?;
    Ok(())
}

fn overwrite(path: &Path, at: u64, bytes: &[u8]) -> Res<()> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(at))?;
    file.write_all(bytes)?;
    Ok(())
}

fn truncate(path: &Path, len: u64) -> Res<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(len)?;
    Ok(())
}

fn len_of(path: &Path) -> Res<u64> {
    Ok(std::fs::metadata(path)?.len())
}

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

/// Writes the memtables of every keyspace into tables, so the data directory has table files
/// for `links`, `clicks` and `keys` (a store of a few clicks otherwise keeps them in the
/// journal). Returns the table files of the `clicks` keyspace and of the meta keyspace.
fn flush_to_tables(dir: &Path) -> Res<(Vec<PathBuf>, Vec<PathBuf>)> {
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

fn files_in(dir: &Path) -> Res<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_held_by_another_linkpulse_is_refused_and_the_holder_serves_on() -> TestResult {
    let codes = ["h1"];
    let dir = prepared_dir(&codes).await?;
    let http = client();
    let mut holder = serving(dir.path(), &[]).await?;

    let second = start(dir.path(), &[]).await?;
    let Started::Exited { status, log } = second else {
        return Err("a second linkpulse served on a held data directory".into());
    };
    assert_no_panic(&log, "second start");
    assert!(!status.success(), "second start exited with {status}");
    assert!(
        log.contains("in use by another process"),
        "the message names the problem:\n{log}"
    );
    let message = log.split_once("Error: ").map_or("", |(_, m)| m.trim());
    eprintln!(
        "second linkpulse on a held dir: {status}: {}",
        message.replace('\n', " ")
    );

    let keys = Command::new(BIN)
        .args(["keys", "create", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LIB_BACKTRACE", "0")
        .output()?;
    let keys_log = String::from_utf8_lossy(&keys.stderr);
    assert!(!keys.status.success(), "keys create on a held dir");
    assert_no_panic(&keys_log, "keys create");
    assert!(
        keys_log.contains("in use by another process"),
        "keys create names the problem:\n{keys_log}"
    );

    // The holder was not disturbed.
    for _ in 0..5 {
        let res = http.get(format!("{}/h1", holder.base)).send().await?;
        assert_eq!(res.status(), 302);
    }
    assert_eq!(
        known_counts(&http, &holder.base, &codes).await?,
        [CLICKS + 5]
    );
    holder.terminate().await?;
    assert_eq!(
        stored_counts(dir.path(), &codes)?,
        [(CLICKS + 5, CLICKS + 5)]
    );
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
