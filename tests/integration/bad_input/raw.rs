//! Helpers the bad-input tests share: posting create bodies, checking nothing was created, and
//! raw requests over TCP for what reqwest will not send.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{KEY, TestApp};

/// Posts `body` to the create endpoint with the test key and the given Content-Type.
pub(super) async fn post(
    app: &TestApp,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = app.client.post(app.url("/api/links")).bearer_auth(KEY);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.body(body).send().await.expect("create sent")
}

/// No link under `code`: the API does not know it.
pub(super) async fn assert_not_created(app: &TestApp, code: &str) {
    let res = app
        .client
        .get(app.url(&format!("/api/links/{code}")))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("read sent");
    assert_eq!(res.status(), 404, "a link {code:?} was created");
}

/// What came back on a raw connection: the status (none if the server closed without an
/// answer), the head as text and the body.
#[derive(Debug)]
pub(super) struct RawAnswer {
    pub(super) status: Option<u16>,
    pub(super) head: String,
    pub(super) body: Vec<u8>,
}

impl RawAnswer {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub(super) fn json_error(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{}",
            self.head
        );
        let body: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        let message = body["error"].as_str().unwrap_or_default().to_owned();
        assert!(!message.is_empty(), "the body names the problem: {body}");
        message
    }

    pub(super) fn is_html_not_found(&self) -> bool {
        self.status == Some(404)
            && self
                .header("content-type")
                .is_some_and(|ct| ct.starts_with("text/html"))
            && String::from_utf8_lossy(&self.body).contains("Link not found")
    }
}

/// Sends `request` as it is and reads until the server closes (requests say
/// `Connection: close`). A reset or a failed write is not an error: the server may close
/// while a huge request is still being sent.
pub(super) async fn send_raw(addr: SocketAddr, request: &[u8]) -> RawAnswer {
    let mut conn = TcpStream::connect(addr).await.expect("connects");
    let _ = conn.write_all(request).await;
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let split = got.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (
            String::from_utf8_lossy(&got[..i]).into_owned(),
            got[i + 4..].to_vec(),
        ),
        None => (String::from_utf8_lossy(&got).into_owned(), Vec::new()),
    };
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    RawAnswer { status, head, body }
}

/// A raw `GET path` with extra header lines (each ending in CRLF).
pub(super) async fn raw_get(addr: SocketAddr, path: &[u8], extra_headers: &str) -> RawAnswer {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(path);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\n");
    request.extend_from_slice(extra_headers.as_bytes());
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    send_raw(addr, &request).await
}
