//! Test support: start the app on a free port with a temp store, talk to it, read SSE frames.

use std::{
    net::SocketAddr,
    path::Path,
    pin::Pin,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use linkpulse::{App, ServeConfig, store::Store};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub const KEY: &str = "lp_test_admin_key_0123456789";

pub struct TestApp {
    pub addr: SocketAddr,
    /// The HTTPS listener's address, when `https_listen` was set.
    pub https: Option<SocketAddr>,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the app on a fresh temp store.
pub async fn spawn_app() -> TestApp {
    spawn_with(None, |_| {}).await
}

/// Starts the app, on `dir` if given (a restart), with the configuration changed by `tweak`.
pub async fn spawn_with(dir: Option<TempDir>, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
    spawn_with_links(dir, tweak).await.0
}

/// Like [`spawn_with`], also returning the app's link handle (for fault injection).
pub async fn spawn_with_links(
    dir: Option<TempDir>,
    tweak: impl FnOnce(&mut ServeConfig),
) -> (TestApp, linkpulse::links::Links) {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
    let mut config = ServeConfig::for_dir(dir.path());
    config.initial_api_key = Some(KEY.to_owned());
    tweak(&mut config);
    let app = App::build(config).await.expect("app builds");
    let links = app.links().clone();
    let addr = app.local_addr();
    let https = app.https_addr();
    let stop = CancellationToken::new();
    let signal = stop.clone();
    let task = tokio::spawn(app.run(async move { signal.cancelled().await }));
    let app = TestApp {
        addr,
        https,
        base: format!("http://{addr}"),
        client: client(),
        dir,
        stop,
        task,
    };
    (app, links)
}

/// A client that does not follow redirects, as a test of a redirect service must not.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(128)
        .build()
        .expect("client")
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the app the way a signal does; returns its data directory and how the stop went.
    pub async fn stop_result(self) -> (TempDir, anyhow::Result<()>) {
        self.stop.cancel();
        let result = self.task.await.expect("app task joins");
        (self.dir, result)
    }

    /// `GET /healthz`: the status code and the JSON body.
    pub async fn health(&self) -> (u16, Value) {
        let res = self
            .client
            .get(self.url("/healthz"))
            .send()
            .await
            .expect("healthz sent");
        let status = res.status().as_u16();
        (status, res.json().await.expect("healthz is JSON"))
    }

    /// Stops the app the way a signal does and returns its data directory.
    pub async fn stop(self) -> TempDir {
        self.stop.cancel();
        self.task
            .await
            .expect("app task joins")
            .expect("app stops cleanly");
        self.dir
    }

    pub async fn create(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/links"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a link with the given code and returns the response body.
    pub async fn create_link(&self, code: &str) -> Value {
        let res = self
            .create(json!({"url": "https://example.com/target", "code": code}))
            .await;
        assert_eq!(res.status(), 201, "creating {code}");
        res.json().await.expect("json body")
    }

    pub async fn click(&self, code: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/{code}")))
            .send()
            .await
            .expect("redirect sent")
    }

    /// The link as the API shows it.
    pub async fn read(&self, code: &str) -> Value {
        let res = self
            .client
            .get(self.url(&format!("/api/links/{code}")))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("read sent");
        assert_eq!(res.status(), 200, "reading {code}");
        res.json().await.expect("json body")
    }

    pub async fn count(&self, code: &str) -> u64 {
        self.read(code).await["clickCount"]
            .as_u64()
            .expect("clickCount is a number")
    }

    /// The link's stored clicks, newest first (up to 1000).
    pub async fn clicks(&self, code: &str) -> Vec<Value> {
        let res = self
            .client
            .get(self.url(&format!("/api/links/{code}/clicks?limit=1000")))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("clicks sent");
        assert_eq!(res.status(), 200, "listing the clicks of {code}");
        let body: Value = res.json().await.expect("json body");
        body["clicks"].as_array().cloned().expect("a clicks array")
    }

    /// A gauge or counter from `/metrics` (see [`metric_at`]).
    pub async fn metric(&self, name: &str) -> u64 {
        metric_at(&self.client, &self.url(""), name).await
    }

    pub async fn subscribe(&self, code: &str) -> SseClient {
        SseClient::open(&self.client, &self.url(&format!("/realtime/{code}")), None).await
    }
}

/// A value from `/metrics` of the server at `base`: one series named with its labels
/// (`linkpulse_clicks_dropped_total{reason="backlog"}`), or the sum of every series of a
/// metric named without them.
pub async fn metric_at(client: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| *series == name || series.split('{').next() == Some(name))
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .collect();
    assert!(!values.is_empty(), "{name} in /metrics:\n{text}");
    values.iter().sum::<f64>() as u64
}

/// The stored count and the number of stored click events of a code, read straight from the
/// fjall store of a stopped app.
pub fn stored(dir: &Path, code: &str) -> (u64, u64) {
    let store = Store::open(dir).expect("store opens");
    let count = store.counter(code).expect("counter").count;
    let events = store.count_click_events(code).expect("events");
    (count, events)
}

/// A soak test's size: `full` with `LINKPULSE_SOAK=1` (the long tier of `.ci/run`), else
/// `quick`, so a plain `cargo test` stays fast and still runs every soak test once.
pub fn soak(full: usize, quick: usize) -> usize {
    if std::env::var_os("LINKPULSE_SOAK").is_some_and(|v| v == "1") {
        full
    } else {
        quick
    }
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One SSE event.
#[derive(Debug, Default, Clone)]
pub struct Event {
    /// The event's name (`event:`); `None` for the unnamed frames an `onmessage` gets.
    pub name: Option<String>,
    pub id: Option<u64>,
    pub data: Option<Value>,
    pub retry: Option<u64>,
    pub comment: bool,
}

impl Event {
    pub fn count(&self) -> Option<u64> {
        self.data.as_ref()?.get("clickCount")?.as_u64()
    }

    /// An unnamed event with data: what an `onmessage` handler gets.
    pub fn is_data(&self) -> bool {
        self.name.is_none() && self.data.is_some()
    }
}

/// A minimal SSE reader over a reqwest body.
pub struct SseClient {
    pub status: u16,
    pub content_type: String,
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: String,
}

impl SseClient {
    pub async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Self {
        let mut req = client.get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let res = req.send().await.expect("stream request sent");
        let status = res.status().as_u16();
        let content_type = content_type(&res);
        Self {
            status,
            content_type,
            stream: Box::pin(res.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event; else [`Silence::Ended`] when the server ended the stream,
    /// [`Silence::Broken`] when the connection broke, [`Silence::TimedOut`] when nothing came
    /// within `limit`.
    pub async fn next(&mut self, limit: Duration) -> Result<Event, Silence> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                return Ok(parse_event(&raw));
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => return Err(Silence::Ended),
                Ok(Some(Err(_))) => return Err(Silence::Broken),
                Err(_) => return Err(Silence::TimedOut),
            }
        }
    }

    /// The next unnamed event that carries data, as the original's `onmessage` gets them
    /// (skipping retry hints, heartbeats and named events such as `stats`); `None` when none
    /// came, whether the stream ended or went quiet (use [`Self::next_where`] to tell which).
    pub async fn next_data(&mut self, limit: Duration) -> Option<Event> {
        self.next_where(limit, Event::is_data).await.ok()
    }

    /// The next event named `name`; `None` when none came (see [`Self::next_data`]).
    pub async fn next_named(&mut self, name: &str, limit: Duration) -> Option<Event> {
        self.next_where(limit, |e| e.name.as_deref() == Some(name))
            .await
            .ok()
    }

    /// The next event `wanted` takes, skipping others; why none came otherwise.
    pub async fn next_where(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&Event) -> bool,
    ) -> Result<Event, Silence> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.next(left).await?;
            if wanted(&event) {
                return Ok(event);
            }
        }
    }
}

/// Why a read of a stream brought no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// The server ended the stream (a whole HTTP body).
    Ended,
    /// The connection broke before the body was whole (a killed server, say).
    Broken,
    /// The stream is open but nothing came in time.
    TimedOut,
}

impl std::fmt::Display for Silence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ended => "the stream ended",
            Self::Broken => "the stream's connection broke",
            Self::TimedOut => "nothing came on the stream in time",
        })
    }
}

impl std::error::Error for Silence {}

fn parse_event(raw: &str) -> Event {
    let mut event = Event::default();
    for line in raw.lines() {
        if line.starts_with(':') {
            event.comment = true;
        } else if let Some(v) = line.strip_prefix("event: ") {
            event.name = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("id: ") {
            event.id = v.parse().ok();
        } else if let Some(v) = line.strip_prefix("data: ") {
            event.data = serde_json::from_str(v).ok();
        } else if let Some(v) = line.strip_prefix("retry: ") {
            event.retry = v.parse().ok();
        }
    }
    event
}

/// The status and the `error` message of a JSON error answer (asserting it is one).
pub async fn json_error(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let content_type = content_type(&res);
    assert!(
        content_type.starts_with("application/json"),
        "{status}: content-type {content_type:?}"
    );
    let body: Value = res.json().await.unwrap_or(Value::Null);
    let message = body["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        !message.is_empty(),
        "{status}: the body names the problem: {body}"
    );
    (status, message)
}

/// The `Content-Type` of an answer (empty when missing).
pub fn content_type(res: &reqwest::Response) -> String {
    res.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The `name=value` of the cookie an answer sets (a sign-in's session), if it sets one.
pub fn session_cookie(res: &reqwest::Response) -> Option<String> {
    let set = res.headers().get("set-cookie")?.to_str().ok()?;
    Some(set.split(';').next()?.to_owned())
}
