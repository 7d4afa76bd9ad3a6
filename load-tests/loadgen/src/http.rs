//! HTTP and SSE helpers: the pooled API client, dedicated keep-alive connections, a parallel
//! runner and an SSE frame parser.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, client::conn::http1, header};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpStream, task::JoinHandle, task::JoinSet, time::timeout};

/// Longest wait for any one request (or connect) before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The code of link `i` (0-based) of a run: prefix plus a 7-digit number from 1.
pub fn code(prefix: &str, i: usize) -> String {
    format!("{prefix}{:07}", i + 1)
}

/// The JSON API and single requests, over a pool of keep-alive connections.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    authority: String,
    key: Option<String>,
}

/// Whether `create_link` made the link or found it already there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existing,
}

impl Api {
    pub fn new(base_url: &str, key: Option<String>) -> Result<Self> {
        let uri: hyper::Uri = base_url
            .parse()
            .with_context(|| format!("bad --base-url {base_url}"))?;
        if uri.scheme_str() != Some("http") || uri.path().len() > 1 {
            bail!("--base-url must look like http://host:port, got {base_url}");
        }
        let auth = uri.authority().context("--base-url has no host")?;
        let authority = match auth.port_u16() {
            Some(_) => auth.as_str().to_string(),
            None => format!("{}:80", auth.host()),
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            base: format!("http://{authority}"),
            authority,
            key,
        })
    }

    /// `host:port`, for dedicated connections.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        json: Option<String>,
        auth: bool,
    ) -> Result<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if auth {
            let key = self
                .key
                .as_deref()
                .context("no API key: pass --key or set LINKPULSE_API_KEY")?;
            req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        let body = match json {
            Some(json) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).context("building a request")?;
        let exchange = async {
            let res = self.client.request(req).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer in {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{method} {path}"))
    }

    /// `POST /api/links` with the given code and a fixed target.
    pub async fn create_link(&self, code: &str) -> Result<Created> {
        let body =
            serde_json::json!({"url": format!("https://example.com/load/{code}"), "code": code});
        let (status, body) = self
            .send(Method::POST, "/api/links", Some(body.to_string()), true)
            .await?;
        match status {
            StatusCode::CREATED => Ok(Created::New),
            StatusCode::CONFLICT => Ok(Created::Existing),
            s => bail!("creating {code}: {s} {}", String::from_utf8_lossy(&body)),
        }
    }

    /// The link's exact `clickCount` (`GET /api/links/{code}` asks the live actor).
    pub async fn click_count(&self, code: &str) -> Result<u64> {
        let path = format!("/api/links/{code}");
        let (status, body) = self.send(Method::GET, &path, None, true).await?;
        if status != StatusCode::OK {
            bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"))?;
        v["clickCount"]
            .as_u64()
            .with_context(|| format!("GET {path}: no clickCount in {v}"))
    }

    /// The counts of many codes, read 16 at a time.
    pub async fn click_counts(&self, codes: &[String]) -> Result<Vec<u64>> {
        let mut counts = vec![0; codes.len()];
        for (chunk_no, chunk) in codes.chunks(16).enumerate() {
            let mut set = JoinSet::new();
            for (k, code) in chunk.iter().enumerate() {
                let (api, code) = (self.clone(), code.clone());
                set.spawn(async move { (k, api.click_count(&code).await) });
            }
            while let Some(joined) = set.join_next().await {
                let (k, count) = joined.context("count task panicked")?;
                counts[chunk_no * 16 + k] = count?;
            }
        }
        Ok(counts)
    }

    /// One click, `GET /{code}`; the answer's status.
    pub async fn click(&self, code: &str) -> Result<StatusCode> {
        Ok(self
            .send(Method::GET, &format!("/{code}"), None, false)
            .await?
            .0)
    }

    /// A value from `GET /metrics` (`None` when the metric is missing).
    pub async fn metric(&self, name: &str) -> Result<Option<u64>> {
        let (status, body) = self.send(Method::GET, "/metrics", None, false).await?;
        if status != StatusCode::OK {
            bail!("GET /metrics: {status}");
        }
        let text = String::from_utf8_lossy(&body);
        Ok(text.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            value.trim().parse::<f64>().ok().map(|v| v as u64)
        }))
    }
}

/// One dedicated keep-alive connection (exactly one socket, unlike the pool).
pub struct Conn {
    send: http1::SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
    authority: String,
}

impl Conn {
    pub async fn open(authority: &str) -> Result<Self> {
        let stream = timeout(REQUEST_TIMEOUT, TcpStream::connect(authority))
            .await
            .with_context(|| format!("connecting to {authority}: timed out"))?
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1 handshake")?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            send,
            driver,
            authority: authority.to_string(),
        })
    }

    /// Sends `GET path` with extra headers and returns the answer with its body unread.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response<Incoming>> {
        self.send.ready().await.context("connection closed")?;
        let mut req = Request::get(path).header(header::HOST, &self.authority);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Empty::new()).context("building a request")?;
        self.send
            .send_request(req)
            .await
            .with_context(|| format!("GET {path}"))
    }

    /// Sends `GET path`, reads the whole answer and returns its status.
    pub async fn get_status(&mut self, path: &str) -> Result<StatusCode> {
        let res = self.get(path, &[]).await?;
        let status = res.status();
        res.into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer to GET {path}"))?;
        Ok(status)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Runs `task(i)` for every i in 0..n on at most `concurrency` tasks; stops at the first error.
pub async fn parallel<F, Fut>(n: usize, concurrency: usize, task: F) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let task = Arc::new(task);
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (task, next) = (task.clone(), next.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                task(i).await?;
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.context("task panicked")??;
    }
    Ok(())
}

/// Creates the links `code(prefix, 0..n)` (16 at a time) and returns their codes.
pub async fn ensure_links(api: &Api, prefix: &str, n: usize) -> Result<Vec<String>> {
    let codes: Vec<String> = (0..n).map(|i| code(prefix, i)).collect();
    let shared = Arc::new(codes.clone());
    let api = api.clone();
    parallel(n, 16, move |i| {
        let (api, codes) = (api.clone(), shared.clone());
        async move { api.create_link(&codes[i]).await.map(|_| ()) }
    })
    .await?;
    Ok(codes)
}

/// One SSE event: its `event:` name, its `id:` and its `data:` lines joined.
pub struct SseEvent {
    /// `None` for the unnamed state frames; `stats` for linkpulse's aggregate events.
    pub name: Option<String>,
    pub id: Option<u64>,
    pub data: Option<String>,
}

impl SseEvent {
    /// `clickCount` of a linkpulse state frame. The server writes it first, so that prefix is
    /// read directly; any other JSON shape goes through a full parse.
    pub fn click_count(&self) -> Option<u64> {
        let data = self.data.as_deref()?;
        if let Some(rest) = data.strip_prefix("{\"clickCount\":") {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits > 0 && rest[digits..].starts_with([',', '}']) {
                return rest[..digits].parse().ok();
            }
        }
        let v: serde_json::Value = serde_json::from_str(data).ok()?;
        v.get("clickCount")?.as_u64()
    }
}

/// Splits a byte stream into SSE events (blank-line separated); comments and `retry:` are skipped.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// How far `buf` is known to hold no blank line.
    scanned: usize,
}

impl SseParser {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut i = self.scanned.max(1);
        while i < self.buf.len() {
            if self.buf[i] == b'\n' && self.buf[i - 1] == b'\n' {
                if let Some(event) = parse_event(&self.buf[start..i]) {
                    out.push(event);
                }
                start = i + 1;
                i = start + 1;
            } else {
                i += 1;
            }
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len().saturating_sub(1);
    }
}

fn parse_event(block: &[u8]) -> Option<SseEvent> {
    let mut event = SseEvent {
        name: None,
        id: None,
        data: None,
    };
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(name) = line.strip_prefix(b"event:") {
            event.name = Some(String::from_utf8_lossy(name).trim().to_owned());
        } else if let Some(id) = line.strip_prefix(b"id:") {
            event.id = std::str::from_utf8(id)
                .ok()
                .and_then(|s| s.trim().parse().ok());
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let data = String::from_utf8_lossy(data.strip_prefix(b" ").unwrap_or(data));
            match &mut event.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&data);
                }
                None => event.data = Some(data.into_owned()),
            }
        }
    }
    (event.id.is_some() || event.data.is_some()).then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_split_anywhere() {
        let stream = b"retry: 2000\n\nid: 3\ndata: {\"clickCount\":3,\"clickAnalytics\":null}\n\n: keep-alive\n\nid: 4\ndata: {\"clickAnalytics\":null,\"clickCount\":4}\n\n";
        for cut in 0..stream.len() {
            let (mut parser, mut events) = (SseParser::default(), Vec::new());
            parser.push(&stream[..cut], &mut events);
            parser.push(&stream[cut..], &mut events);
            let got: Vec<_> = events.iter().map(|e| (e.id, e.click_count())).collect();
            assert_eq!(
                got,
                [(Some(3), Some(3)), (Some(4), Some(4))],
                "cut at {cut}"
            );
        }
    }
}
