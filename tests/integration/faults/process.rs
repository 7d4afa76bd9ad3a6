//! The `linkpulse` binary as a child process, talking to it over HTTP, and redirect load on it:
//! what every fault test shares.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use linkpulse::store::Store;
use serde_json::json;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::support::{KEY, client};

pub(super) const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Res<T> = Result<T, BoxError>;

/// Longest wait for a start to serve or fail (a deadline, not a timing assertion).
pub(super) const START_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for a process to end after SIGKILL, or after it said it cannot start.
pub(crate) const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for a clean stop after SIGTERM.
pub(super) const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Concurrent redirect clients; each has at most one request in flight.
pub(super) const TASKS: usize = 16;

// ---------------------------------------------------------------------------------------------
// The child process.

/// A running `linkpulse` process. Dropping it kills the process if it still runs, so a failing
/// test leaves nothing behind.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) addr: String,
    pub(super) log: Arc<Mutex<String>>,
    pub(super) reader: Option<thread::JoinHandle<()>>,
}

/// How a start ended.
pub(crate) enum Started {
    Serving(Server),
    /// The process ended without serving: its exit status and its log (standard error).
    Exited {
        status: ExitStatus,
        log: String,
    },
}

/// A `linkpulse` command with only the settings a test gives: no `LINKPULSE_*` setting of the
/// environment running the tests.
pub(crate) fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LINKPULSE_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("LINKPULSE_LOG", "info")
        // Keep an error report to its message; a panic still prints "panicked at".
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null());
    command
}

/// Starts `linkpulse` on `dir` with extra `args` and waits until it serves or ends.
pub(super) async fn start(dir: &Path, args: &[&str]) -> Res<Started> {
    let mut command = command(&["--listen", "127.0.0.1:0", "--data-dir"]);
    command.arg(dir).args(args);
    launch(command).await
}

/// Spawns `command` (with the test key) and waits until it serves or ends.
pub(crate) async fn launch(mut command: Command) -> Res<Started> {
    let mut child = command
        .env("LINKPULSE_INITIAL_API_KEY", KEY)
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
pub(super) async fn serving(dir: &Path, args: &[&str]) -> Res<Server> {
    match start(dir, args).await? {
        Started::Serving(server) => Ok(server),
        Started::Exited { status, log } => {
            Err(format!("linkpulse did not start ({status}):\n{log}").into())
        }
    }
}

impl Server {
    pub(crate) fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    pub(crate) fn signal(&self, name: &str) -> Res<()> {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(format!("kill -{name} failed: {status}").into());
        }
        Ok(())
    }

    /// Waits for the process to end (polling, with a deadline) and for its whole log.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> Res<ExitStatus> {
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
    pub(super) async fn kill(&mut self) -> Res<()> {
        self.signal("KILL")?;
        let status = self.wait_exit(EXIT_LIMIT).await?;
        assert_eq!(status.signal(), Some(9), "ended by SIGKILL: {status}");
        assert_no_panic(&self.log(), "before the SIGKILL");
        Ok(())
    }

    /// SIGTERM, and the process stops cleanly (exit code 0). Returns how long it took.
    pub(super) async fn terminate(&mut self) -> Res<Duration> {
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

pub(super) fn assert_no_panic(log: &str, when: &str) {
    assert!(!log.contains("panicked"), "a panic ({when}):\n{log}");
}

// ---------------------------------------------------------------------------------------------
// Talking to it.

pub(super) async fn create_code(http: &reqwest::Client, base: &str, code: &str) -> Res<()> {
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
pub(super) async fn api_counts(
    http: &reqwest::Client,
    base: &str,
    codes: &[&str],
) -> Res<Vec<Option<u64>>> {
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

/// Each code's whole-life stats (`GET /api/links/{code}/stats`).
pub(super) async fn whole_life_stats(
    http: &reqwest::Client,
    base: &str,
    codes: &[&str],
) -> Res<Vec<serde_json::Value>> {
    let mut out = Vec::with_capacity(codes.len());
    for code in codes {
        let res = http
            .get(format!("{base}/api/links/{code}/stats"))
            .bearer_auth(KEY)
            .send()
            .await?;
        if res.status() != 200 {
            return Err(format!("stats of {code}: {}", res.status()).into());
        }
        out.push(res.json().await?);
    }
    Ok(out)
}

/// Every stored click of `code`, newest first, read a page at a time
/// (`GET /api/links/{code}/clicks?limit=1000&before=SEQ`).
pub(crate) async fn click_log(
    http: &reqwest::Client,
    base: &str,
    code: &str,
) -> Res<Vec<serde_json::Value>> {
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut url = format!("{base}/api/links/{code}/clicks?limit=1000");
        if let Some(seq) = before {
            url.push_str(&format!("&before={seq}"));
        }
        let res = http.get(url).bearer_auth(KEY).send().await?;
        if res.status() != 200 {
            return Err(format!("clicks of {code}: {}", res.status()).into());
        }
        let body: serde_json::Value = res.json().await?;
        let page = body["clicks"].as_array().ok_or("no clicks array")?.clone();
        let Some(lowest) = page.last().and_then(|c| c["seq"].as_u64()) else {
            break;
        };
        all.extend(page);
        if lowest <= 1 {
            break;
        }
        before = Some(lowest);
    }
    Ok(all)
}

/// Clicks, human clicks and bot clicks.
type Split = (u64, u64, u64);

fn add(split: &mut Split, bot: bool) {
    split.0 += 1;
    if bot {
        split.2 += 1;
    } else {
        split.1 += 1;
    }
}

/// The split of an entry of a stats answer (a total, a series point, a top-list entry).
fn split_of(v: &serde_json::Value) -> Split {
    let number = |name: &str| v[name].as_u64().unwrap_or(u64::MAX);
    (number("clicks"), number("humanClicks"), number("botClicks"))
}

/// The host a referrer names, without `www.` (`(direct)`: none), as the top list files it.
fn referrer_host(referer: Option<&str>) -> String {
    let Some(referer) = referer.filter(|r| !r.is_empty()) else {
        return "(direct)".to_owned();
    };
    let host = referer
        .split_once("://")
        .map_or(referer, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    host.strip_prefix("www.").unwrap_or(&host).to_owned()
}

/// Checks a whole-life stats answer against the stored clicks it must be made of: the totals,
/// the day series and every top list (referrers, countries, browsers, systems, devices), each
/// value with its clicks, human clicks and bot clicks, as rebuilt from the click log.
pub(super) fn assert_aggregates_match_log(
    label: &str,
    stats: &serde_json::Value,
    clicks: &[serde_json::Value],
) {
    use std::collections::BTreeMap;
    let mut totals = Split::default();
    let mut days: BTreeMap<u64, Split> = BTreeMap::new();
    let mut lists: BTreeMap<&str, BTreeMap<String, Split>> = BTreeMap::new();
    for click in clicks {
        let bot = click["bot"]
            .as_bool()
            .expect("a click says whether it is a bot's");
        add(&mut totals, bot);
        let at: jiff::Timestamp = click["createdAt"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{label}: a click without its time: {click}"));
        let ms = u64::try_from(at.as_millisecond()).expect("a time after 1970");
        add(days.entry(ms - ms % 86_400_000).or_default(), bot);
        let text = |name: &str| click[name].as_str().map(str::to_owned);
        let values = [
            ("referrers", referrer_host(click["referer"].as_str())),
            (
                "countries",
                text("country").unwrap_or_else(|| "(unknown)".into()),
            ),
            ("browsers", text("browser").unwrap_or_default()),
            ("os", text("os").unwrap_or_default()),
            ("devices", text("device").unwrap_or_default()),
        ];
        for (list, value) in values {
            add(
                lists.entry(list).or_default().entry(value).or_default(),
                bot,
            );
        }
    }
    assert_eq!(
        split_of(&stats["totals"]),
        totals,
        "{label}: totals: {stats}"
    );
    let series: BTreeMap<u64, Split> = stats["series"]
        .as_array()
        .unwrap_or_else(|| panic!("{label}: no series: {stats}"))
        .iter()
        .filter(|p| p["clicks"].as_u64() != Some(0))
        .map(|p| (p["ms"].as_u64().unwrap_or(u64::MAX), split_of(p)))
        .collect();
    assert_eq!(series, days, "{label}: the day series: {stats}");
    for list in ["referrers", "countries", "browsers", "os", "devices"] {
        let rebuilt = lists.remove(list).unwrap_or_default();
        let served: BTreeMap<String, Split> = stats["top"][list]
            .as_array()
            .unwrap_or_else(|| panic!("{label}: no top.{list}: {stats}"))
            .iter()
            .map(|e| (e["value"].as_str().unwrap_or("?").to_owned(), split_of(e)))
            .collect();
        assert_eq!(served, rebuilt, "{label}: top.{list}: {stats}");
    }
}

/// Counts every code must have: a code the server does not know is an error.
pub(super) async fn known_counts(
    http: &reqwest::Client,
    base: &str,
    codes: &[&str],
) -> Res<Vec<u64>> {
    api_counts(http, base, codes)
        .await?
        .into_iter()
        .zip(codes)
        .map(|(count, code)| count.ok_or_else(|| format!("{code} is unknown").into()))
        .collect()
}

/// (stored count, stored click events) of each code, read straight from the store. The
/// process using the directory must have ended.
pub(super) fn stored_counts(dir: &Path, codes: &[&str]) -> Res<Vec<(u64, u64)>> {
    let store = Store::open(dir)?;
    codes
        .iter()
        .map(|code| Ok((store.counter(code)?.count, store.count_click_events(code)?)))
        .collect()
}

/// What the redirect clients of one code saw.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Tally {
    /// `302` answers received.
    pub(super) found: u64,
    /// Other answers (a strict-mode `503`, say).
    pub(super) other: u64,
    /// Requests that got no answer (the server went away): each may or may not be counted.
    /// A client stops at its first, so this is at most its requests in flight.
    pub(super) unanswered: u64,
}

/// The user agents of the load's clients (a browser, a phone, a preview fetcher, a script
/// that sends none).
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 \
     Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like \
     Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "",
];
const REFERERS: [&str; 3] = ["https://news.example/a", "https://www.blog.example/b", ""];
/// The countries a proxy says the clients are in (`CF-IPCountry`; read with
/// `--country-header CF-IPCountry`), the last one sending none.
const COUNTRIES: [&str; 3] = ["NL", "BR", ""];
/// The country header the load sends.
pub(super) const COUNTRY_HEADER: &str = "CF-IPCountry";

/// Redirect clients hammering the codes until stopped.
pub(super) struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<(usize, JoinHandle<Tally>)>,
    codes: usize,
}

/// Starts `TASKS` clients, client `i` following code `i % codes.len()` in a loop. Each request
/// takes the next user agent (a cycle of 4) and referrer (a cycle of 3), and the country
/// changes every third request, so every code gets a mix of all of them.
pub(super) fn start_load(base: &str, codes: &[&str]) -> Load {
    let http = client();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..TASKS)
        .map(|i| {
            let index = i % codes.len();
            let url = format!("{base}/{}", codes[index]);
            let (http, stop) = (http.clone(), stop.clone());
            let task = tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    // Requests differ as visitors do, so the aggregates have something to split.
                    let agent = AGENTS[n % AGENTS.len()];
                    let referer = REFERERS[n % REFERERS.len()];
                    let country = COUNTRIES[(n / REFERERS.len()) % COUNTRIES.len()];
                    n += 1;
                    let mut req = http.get(&url).timeout(Duration::from_secs(10));
                    if !agent.is_empty() {
                        req = req.header("User-Agent", agent);
                    }
                    if !referer.is_empty() {
                        req = req.header("Referer", referer);
                    }
                    if !country.is_empty() {
                        req = req.header(COUNTRY_HEADER, country);
                    }
                    match req.send().await {
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
    pub(super) async fn finish(self) -> Res<Vec<Tally>> {
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
