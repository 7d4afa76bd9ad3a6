//! Every bad input is answered, and none lets anything in: each test sends one group of bad
//! requests, checks the status and the `{"error": ...}` message (where the API answers JSON),
//! and then that nothing stored changed (no link created, no click counted, no subscriber
//! left). Requests that reqwest will not send (raw bytes in paths, huge heads) go over a raw
//! TCP connection.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use linkpulse::{keys, store::Store};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{KEY, TestApp, TestResult, json_error, spawn_app, spawn_with, stored};

/// Posts `body` to the create endpoint with the test key and the given Content-Type.
async fn post(
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
async fn assert_not_created(app: &TestApp, code: &str) {
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
struct RawAnswer {
    status: Option<u16>,
    head: String,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json_error(&self) -> String {
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

    fn is_html_not_found(&self) -> bool {
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
async fn send_raw(addr: SocketAddr, request: &[u8]) -> RawAnswer {
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
async fn raw_get(addr: SocketAddr, path: &[u8], extra_headers: &str) -> RawAnswer {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(path);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\n");
    request.extend_from_slice(extra_headers.as_bytes());
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    send_raw(addr, &request).await
}

#[tokio::test]
async fn malformed_non_object_and_mistyped_json_is_400_and_creates_nothing() -> TestResult {
    let app = spawn_app().await;
    let deep = format!("{{\"url\": {}}}", "[".repeat(20_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // Malformed JSON.
        (
            "m1",
            br#"{"url": "https://example.com/", "code": "m1""#.to_vec(),
            "EOF while parsing",
        ),
        (
            "m2",
            br#"{"url": "https://example.com/", "code": "m2",}"#.to_vec(),
            "trailing comma",
        ),
        (
            "m3",
            br#"{'url': 'https://example.com/', 'code': 'm3'}"#.to_vec(),
            "key must be a string",
        ),
        (
            "m4",
            br#"{"url": "https://example.com/", "code": "m4"} {}"#.to_vec(),
            "trailing characters",
        ),
        (
            "m5",
            b"{\"url\": \"https://example.com/\xff\", \"code\": \"m5\"}".to_vec(),
            "invalid unicode",
        ),
        (
            "m6",
            br#"{"url": "https://example.com/\ud800", "code": "m6"}"#.to_vec(),
            "hex escape",
        ),
        (
            "m7",
            br#"{"url": "https://example.com/", "code": "m7", "url": "https://example.org/"}"#
                .to_vec(),
            "duplicate field `url`",
        ),
        (
            "m8",
            br#"{url: "https://example.com/", code: "m8"}"#.to_vec(),
            "key must be a string",
        ),
        ("", b"".to_vec(), "JSON body must be an object"),
        ("", deep.into_bytes(), "invalid type: sequence"),
        // JSON that is not an object (serde alone would take an array as the fields in order).
        (
            "n1",
            br#"["https://example.com/", "n1"]"#.to_vec(),
            "JSON body must be an object",
        ),
        (
            "",
            br#""https://example.com/""#.to_vec(),
            "JSON body must be an object",
        ),
        ("", b"42".to_vec(), "JSON body must be an object"),
        ("", b"null".to_vec(), "JSON body must be an object"),
        ("", b"true".to_vec(), "JSON body must be an object"),
        // Wrong field types, missing and unknown fields.
        (
            "t1",
            br#"{"url": 42, "code": "t1"}"#.to_vec(),
            "invalid type: integer `42`, expected a string",
        ),
        (
            "t2",
            br#"{"url": ["https://example.com/"], "code": "t2"}"#.to_vec(),
            "invalid type: sequence",
        ),
        (
            "t3",
            br#"{"url": {"href": "https://example.com/"}, "code": "t3"}"#.to_vec(),
            "invalid type: map",
        ),
        (
            "t4",
            br#"{"url": null, "code": "t4"}"#.to_vec(),
            "invalid type: null",
        ),
        (
            "t5",
            br#"{"url": true, "code": "t5"}"#.to_vec(),
            "invalid type: boolean",
        ),
        (
            "7",
            br#"{"url": "https://example.com/", "code": 7}"#.to_vec(),
            "invalid type: integer `7`",
        ),
        (
            "t6",
            br#"{"url": "https://example.com/", "code": ["t6"]}"#.to_vec(),
            "invalid type: sequence",
        ),
        ("t7", br#"{"code": "t7"}"#.to_vec(), "missing field `url`"),
        (
            "t8",
            br#"{"url": "https://example.com/", "cod": "t8"}"#.to_vec(),
            "unknown field `cod`",
        ),
    ];
    for (code, body, needle) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let (status, msg) = json_error(post(&app, Some("application/json"), body).await).await;
        assert_eq!(status, 400, "{shown}: {msg}");
        assert!(msg.contains(needle), "{shown}: {msg:?} lacks {needle:?}");
        if !code.is_empty() {
            assert_not_created(&app, code).await;
        }
    }
    // Still serving, and a good body is still taken.
    app.create_link("m1").await;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn bodies_over_64_kib_are_413_and_create_nothing() -> TestResult {
    let app = spawn_app().await;
    let limit = 64 * 1024;
    let exactly = |code: &str, len: usize| {
        let mut body = format!(r#"{{"url": "https://example.com/", "code": "{code}"}}"#);
        body.push_str(&" ".repeat(len - body.len()));
        body
    };

    // One byte over, with a Content-Length.
    let res = post(&app, Some("application/json"), exactly("over", limit + 1)).await;
    assert_eq!(
        json_error(res).await,
        (413, "request body is larger than 65536 bytes".to_owned())
    );
    assert_not_created(&app, "over").await;

    // Much larger, chunked (no Content-Length to refuse up front).
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(r#"{"url": "https://example.com/", "code": "chunked", "#.to_owned()),
        Ok(" ".repeat(40 * 1024)),
        Ok(" ".repeat(40 * 1024)),
        Ok("}".to_owned()),
    ];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (status, _) = json_error(post(&app, Some("application/json"), body).await).await;
    assert_eq!(status, 413);
    assert_not_created(&app, "chunked").await;

    // A Content-Length of 1 GB with no body sent: refused at once, without waiting for it.
    let request = format!(
        "POST /api/links HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n"
    );
    let started = Instant::now();
    let answer = send_raw(app.addr, request.as_bytes()).await;
    assert_eq!(answer.status, Some(413), "{}", answer.head);
    assert!(answer.json_error().contains("larger than"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered without the body"
    );

    // Exactly 64 KiB is taken.
    let res = post(&app, Some("application/json"), exactly("edge", limit)).await;
    assert_eq!(res.status(), 201);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_or_missing_content_type_is_415_and_creates_nothing() -> TestResult {
    let app = spawn_app().await;
    for (i, content_type) in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        Some("application/json-patch+json"),
        Some("application/jsonx"),
        Some("text/json"),
        Some("json"),
        Some(""),
    ]
    .into_iter()
    .enumerate()
    {
        let code = format!("ct{i}");
        let body = json!({"url": "https://example.com/", "code": code}).to_string();
        let mut req = app.client.post(app.url("/api/links")).bearer_auth(KEY);
        if let Some(ct) = content_type {
            req = req.header(
                "content-type",
                reqwest::header::HeaderValue::from_bytes(ct.as_bytes())?,
            );
        }
        let res = req.body(body).send().await?;
        assert_eq!(
            json_error(res).await,
            (415, "Content-Type must be application/json".to_owned()),
            "{content_type:?}"
        );
        assert_not_created(&app, &code).await;
    }
    // Parameters and letter case do not matter.
    for (code, content_type) in [
        ("cs1", "application/json; charset=utf-8"),
        ("cs2", "Application/JSON"),
    ] {
        let body = json!({"url": "https://example.com/", "code": code}).to_string();
        assert_eq!(
            post(&app, Some(content_type), body).await.status(),
            201,
            "{content_type}"
        );
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn urls_that_are_not_safe_http_targets_are_400_and_create_nothing() -> TestResult {
    let app = spawn_app().await;
    let long = format!("https://example.com/{}", "a".repeat(8 * 1024));
    // Short enough as sent, over 8 KiB once percent-encoded (each é becomes %C3%A9).
    let long_encoded = format!("https://example.com/{}", "é".repeat(2000));
    let cases: Vec<(String, &str)> = [
        (
            "javascript:alert(1)",
            "scheme must be http or https, not 'javascript'",
        ),
        ("JavaScript:alert(document.cookie)", "not 'javascript'"),
        ("data:text/html,<script>alert(1)</script>", "not 'data'"),
        ("data:text/html;base64,PHNjcmlwdD4=", "not 'data'"),
        ("file:///etc/passwd", "not 'file'"),
        ("vbscript:msgbox(1)", "not 'vbscript'"),
        ("ftp://example.com/", "not 'ftp'"),
        ("mailto:a@example.com", "not 'mailto'"),
        ("/relative/path", "not an absolute URL"),
        ("//example.com/no-scheme", "not an absolute URL"),
        ("example.com", "not an absolute URL"),
        ("?q=1", "not an absolute URL"),
        ("http://", "not an absolute URL"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https://user@example.com/", "user name or password"),
        ("", "must not be empty"),
        ("https://example.com/a b", "control characters or spaces"),
        ("https://example.com/\u{0}", "control characters"),
        ("https://example.com/\t", "control characters"),
        ("https://example.com/\u{1b}[31m", "control characters"),
        ("https://example.com/\u{7f}", "control characters"),
        ("https://example.com/\u{85}", "control characters"),
        ("https://example.com/\u{a0}", "control characters or spaces"),
        ("\u{feff}https://example.com/", "not an absolute URL"),
    ]
    .into_iter()
    .map(|(u, n)| (u.to_owned(), n))
    .chain([
        (long, "at most 8192 bytes"),
        (long_encoded, "at most 8192 bytes"),
    ])
    .collect();
    for (i, (url, needle)) in cases.iter().enumerate() {
        let code = format!("u{i}");
        let (status, msg) = json_error(app.create(json!({"url": url, "code": code})).await).await;
        let shown = &url[..url.len().min(60)];
        assert_eq!(status, 400, "{shown:?}: {msg}");
        assert!(msg.contains(needle), "{shown:?}: {msg:?} lacks {needle:?}");
        assert!(msg.starts_with("url"), "{msg}");
        assert_not_created(&app, &code).await;
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn no_line_break_reaches_the_location_header() -> TestResult {
    let app = spawn_app().await;
    // Raw line breaks and unicode line separators are refused.
    for (i, url) in [
        "https://example.com/\r\nSet-Cookie: a=b",
        "https://example.com/\rSet-Cookie:a=b",
        "https://example.com/\nSet-Cookie:a=b",
        "https://example.com/?q=\r\n",
        "https://example.com/#\n",
        "https://exa\r\nmple.com/",
        "https://example.com/\u{2028}Set-Cookie:a=b",
        "https://example.com/\u{2029}",
        "https://example.com/\u{85}",
        "https://example.com/\u{b}\u{c}",
    ]
    .into_iter()
    .enumerate()
    {
        let code = format!("lb{i}");
        let (status, msg) = json_error(app.create(json!({"url": url, "code": code})).await).await;
        assert_eq!(status, 400, "{url:?}");
        assert_eq!(
            msg, "url must not contain control characters or spaces",
            "{url:?}"
        );
        assert_not_created(&app, &code).await;
    }
    // Encoded line breaks in the host cannot be kept encoded: refused.
    let res = app
        .create(json!({"url": "https://example.com%0d%0a.evil/", "code": "lbhost"}))
        .await;
    let (status, msg) = json_error(res).await;
    assert_eq!(
        (status, msg.starts_with("url is not an absolute URL")),
        (400, true),
        "{msg}"
    );
    assert_not_created(&app, "lbhost").await;

    // Encoded ones in the path, query and fragment are taken and stay encoded.
    for (code, url) in [
        ("enc1", "https://example.com/a%0d%0aSet-Cookie:%20x=y"),
        (
            "enc2",
            "https://example.com/?next=%0D%0ALocation:%20https://evil.example/",
        ),
        ("enc3", "https://example.com/p#%0a%0d"),
        ("enc4", "https://example.com/%E2%80%A8%E2%80%A9%C2%85"),
    ] {
        let res = app.create(json!({"url": url, "code": code})).await;
        assert_eq!(res.status(), 201, "{url}");
        let answer = raw_get(app.addr, format!("/{code}").as_bytes(), "").await;
        assert_eq!(answer.status, Some(302), "{}", answer.head);
        assert_eq!(answer.header("location"), Some(url), "{}", answer.head);
        let names: Vec<String> = answer
            .head
            .lines()
            .skip(1)
            .filter_map(|line| Some(line.split_once(':')?.0.to_ascii_lowercase()))
            .collect();
        assert_eq!(
            names.iter().filter(|n| *n == "location").count(),
            1,
            "{}",
            answer.head
        );
        assert!(
            !names.iter().any(|n| n == "set-cookie" || n.contains(' ')),
            "no header line but the ones we set: {}",
            answer.head
        );
    }
    // Unicode in the path is percent-encoded, so the header stays ASCII.
    let res = app
        .create(json!({"url": "https://example.com/パス?q=é", "code": "uni"}))
        .await;
    assert_eq!(res.status(), 201);
    let answer = raw_get(app.addr, b"/uni", "").await;
    assert_eq!(
        answer.header("location"),
        Some("https://example.com/%E3%83%91%E3%82%B9?q=%C3%A9")
    );
    app.stop().await;
    Ok(())
}

/// Codes that break a rule, as a `code` field and as a path.
fn bad_codes() -> Vec<String> {
    [
        "a.b",
        "a/b",
        "..",
        ".",
        "a..b",
        "%41",
        "a%2Fb",
        "a%00",
        "a%0d%0a",
        "a b",
        "é",
        "コード",
        "a\u{2028}",
        "\u{0}",
        "a\r\nb",
        "api",
        "API",
        "realtime",
        "Links",
        "static",
        "healthz",
        "metrics",
        "admin",
        "well-known",
        "favicon",
        "robots",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(["c".repeat(65), "c".repeat(1000)])
    .collect()
}

#[tokio::test]
async fn bad_codes_in_the_create_body_are_400_and_create_nothing() -> TestResult {
    let app = spawn_app().await;
    for code in bad_codes() {
        let res = app
            .create(json!({"url": "https://example.com/", "code": code}))
            .await;
        let (status, msg) = json_error(res).await;
        assert_eq!(status, 400, "{code:?}: {msg}");
        let rule = if code.len() > 64 {
            "code must be at most 64 characters"
        } else if code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            "is reserved"
        } else {
            "code may only contain letters, digits, '_' and '-'"
        };
        assert!(msg.contains(rule), "{code:?}: {msg:?}");
    }
    let (status, msg) = json_error(
        app.create(json!({"url": "https://example.com/", "code": ""}))
            .await,
    )
    .await;
    assert_eq!((status, msg.as_str()), (400, "code must not be empty"));
    // What a bad code would have been read as: none of these exist.
    for code in ["a", "b", "ab", "A", "a-b", "c"] {
        assert_not_created(&app, code).await;
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_codes_in_paths_are_404_and_count_nothing() -> TestResult {
    let app = spawn_app().await;
    // Links a lenient reading of the bad paths below could reach.
    for code in ["Abc", "a", "b", "c", "ab"] {
        app.create_link(code).await;
    }
    let mut paths: Vec<Vec<u8>> = [
        "a.b",
        "a/b",
        "..",
        ".",
        "a/..",
        "Abc/..",
        "%41bc",
        "%2e%2e",
        "a%2Fb",
        "%2F",
        "a%00",
        "a%0d%0a",
        "a%20b",
        "%C3%A9",
        "%E2%80%A8",
        "admin",
        "API",
        "Realtime",
        "well-known",
        "STATS",
        "Abc%3F",
        "Abc%23",
    ]
    .into_iter()
    .map(|p| p.as_bytes().to_vec())
    .collect();
    paths.push("é".as_bytes().to_vec()); // raw UTF-8 in the request line
    paths.push("コード".as_bytes().to_vec());
    paths.push("c".repeat(65).into_bytes());
    paths.push("c".repeat(4000).into_bytes());
    for path in &paths {
        let shown = String::from_utf8_lossy(path).into_owned();
        let shown = &shown[..shown.len().min(70)];

        let mut redirect = b"/".to_vec();
        redirect.extend_from_slice(path);
        let answer = raw_get(app.addr, &redirect, "").await;
        assert!(answer.is_html_not_found(), "GET /{shown}: {}", answer.head);

        let mut realtime = b"/realtime/".to_vec();
        realtime.extend_from_slice(path);
        let answer = raw_get(app.addr, &realtime, "").await;
        assert_eq!(
            answer.status,
            Some(404),
            "GET /realtime/{shown}: {}",
            answer.head
        );
        assert_eq!(answer.json_error(), "no such link", "GET /realtime/{shown}");
    }
    for code in ["Abc", "a", "b", "c", "ab"] {
        assert_eq!(app.count(code).await, 0, "{code} was not clicked");
    }
    assert_eq!(app.metric("linkpulse_subscribers").await, 0);
    let dir = app.stop().await;
    assert_eq!(stored(dir.path(), "Abc"), (0, 0));
    Ok(())
}

#[tokio::test]
async fn a_bad_last_event_id_is_400_and_subscribes_nothing() -> TestResult {
    let app = spawn_app().await;
    app.create_link("ev").await;
    app.click("ev").await;
    app.click("ev").await;
    crate::support::eventually(Duration::from_secs(5), "two clicks counted", || async {
        app.count("ev").await == 2
    })
    .await;
    let url = app.url("/realtime/ev");
    for value in [
        &b"abc"[..],
        b"-1",
        b"1.5",
        b"1e3",
        b"0x1",
        b"",
        b"  ",
        b"2 2",
        b"18446744073709551616",
        b"\xff",
    ] {
        let shown = String::from_utf8_lossy(value).into_owned();
        let res = app
            .client
            .get(&url)
            .header(
                "last-event-id",
                reqwest::header::HeaderValue::from_bytes(value)?,
            )
            .send()
            .await?;
        let (status, msg) = json_error(res).await;
        assert_eq!(status, 400, "{shown:?}: {msg}");
        assert_eq!(msg, "Last-Event-ID must be a click count", "{shown:?}");
    }
    for value in ["3", "18446744073709551615"] {
        let res = app
            .client
            .get(&url)
            .header("last-event-id", value)
            .send()
            .await?;
        let (status, msg) = json_error(res).await;
        assert_eq!(status, 400, "{value}: {msg}");
        assert_eq!(
            msg,
            format!("Last-Event-ID {value} is larger than the click count 2")
        );
    }
    assert_eq!(
        app.metric("linkpulse_subscribers").await,
        0,
        "no stream left open"
    );
    assert_eq!(app.count("ev").await, 2);
    // The count itself is a good Last-Event-ID.
    let stream = crate::support::SseClient::open(&app.client, &url, Some("2")).await;
    assert_eq!(stream.status, 200);
    drop(stream);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn huge_heads_are_refused_and_count_nothing() -> TestResult {
    let app = spawn_app().await;
    app.create_link("hdr").await;

    // Our own limit (hyper alone takes up to about 400 KiB of headers): 431 with a message.
    let big = "a".repeat(100 * 1024);
    let forty: String = (0..40)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(1000)))
        .collect();
    for (what, headers) in [
        ("one 100 KiB header", format!("X-Big: {big}\r\n")),
        ("a 100 KiB User-Agent", format!("User-Agent: {big}\r\n")),
        (
            "a 100 KiB Referer",
            format!("Referer: https://example.com/{big}\r\n"),
        ),
        (
            "a 9 KiB header",
            format!("Cookie: {}\r\n", "c".repeat(9 * 1024)),
        ),
        ("40 KiB in 40 headers", forty),
    ] {
        let answer = raw_get(app.addr, b"/hdr", &headers).await;
        assert_eq!(answer.status, Some(431), "{what}: {}", answer.head);
        assert!(answer.json_error().contains("too large"), "{what}");
    }

    // hyper's own limits: more than 100 headers, or a head over its ~400 KiB buffer, get an
    // empty 431 and the connection is closed (on the larger one, possibly reset before the
    // answer is read: then there is no status at all).
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw_get(app.addr, b"/hdr", &many).await;
    assert_eq!(answer.status, Some(431), "200 headers: {}", answer.head);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(answer.body.is_empty());
    let answer = raw_get(
        app.addr,
        b"/hdr",
        &format!("X-Big: {}\r\n", "a".repeat(1 << 20)),
    )
    .await;
    assert!(
        matches!(answer.status, None | Some(431)),
        "1 MiB header: {}",
        answer.head
    );

    // The same on the API: nothing created.
    let body = r#"{"url":"https://example.com/","code":"hh"}"#;
    let request = format!(
        "POST /api/links HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nX-Big: {big}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = send_raw(app.addr, request.as_bytes()).await;
    assert_eq!(answer.status, Some(431), "{}", answer.head);
    assert_not_created(&app, "hh").await;

    // A head within the limits is served and counted: the only click.
    let cookie = format!("Cookie: {}\r\n", "c".repeat(4 * 1024));
    assert_eq!(raw_get(app.addr, b"/hdr", &cookie).await.status, Some(302));
    crate::support::eventually(Duration::from_secs(5), "the good click counted", || async {
        app.count("hdr").await == 1
    })
    .await;
    let dir = app.stop().await;
    assert_eq!(
        stored(dir.path(), "hdr"),
        (1, 1),
        "only the good click is stored"
    );
    Ok(())
}

/// Sends `n` creates at once with `key` (and `X-Forwarded-For` if given), the `i`th with the
/// code `{prefix}{i}`, and returns their statuses, `Retry-After` values and error messages,
/// and how long the whole burst took.
async fn burst(
    app: &TestApp,
    n: usize,
    prefix: &str,
    key: &str,
    forwarded_for: Option<&str>,
) -> (Vec<(u16, Option<String>, Option<String>)>, Duration) {
    let started = Instant::now();
    let sends = (0..n).map(|i| {
        let mut req = app
            .client
            .post(app.url("/api/links"))
            .bearer_auth(key)
            .json(&json!({"url": "https://example.com/", "code": format!("{prefix}{i}")}));
        if let Some(ip) = forwarded_for {
            req = req.header("x-forwarded-for", ip);
        }
        async move {
            let res = req.send().await.expect("create sent");
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let error = if status == 201 {
                None
            } else {
                Some(json_error(res).await.1)
            };
            (status, retry_after, error)
        }
    });
    let answers = join_all(sends).await;
    (answers, started.elapsed())
}

/// Checks a burst of 6 against a limit of 5 per second: when it took under 200 ms (one
/// allowance comes back every 200 ms) exactly one is refused with 429, `Retry-After` and a
/// message naming `whose`, and its link does not exist.
async fn check_burst(
    app: &TestApp,
    answers: &[(u16, Option<String>, Option<String>)],
    took: Duration,
    prefix: &str,
    whose: &str,
) {
    let refused: Vec<usize> = (0..answers.len())
        .filter(|&i| answers[i].0 == 429)
        .collect();
    let created = answers.iter().filter(|a| a.0 == 201).count();
    assert_eq!(created + refused.len(), answers.len(), "{answers:?}");
    if took < Duration::from_millis(200) {
        assert_eq!((created, refused.len()), (5, 1), "{answers:?}");
    } else {
        // A slow machine: allowances came back during the burst.
        let back = usize::try_from(took.as_millis() / 200).unwrap_or(usize::MAX);
        assert!(created <= 5 + back, "{answers:?} in {took:?}");
    }
    for &i in &refused {
        let (_, retry_after, error) = &answers[i];
        assert_eq!(retry_after.as_deref(), Some("1"), "{answers:?}");
        let message = error.as_deref().unwrap_or_default();
        assert!(
            message.starts_with("too many links created by"),
            "{message}"
        );
        assert!(message.contains(whose), "{message}");
        assert_not_created(app, &format!("{prefix}{i}")).await;
    }
}

#[tokio::test]
async fn creating_over_the_per_key_rate_is_429_and_creates_nothing() -> TestResult {
    const OTHER: &str = "lp_test_other_key_0123456789";
    let dir = tempfile::tempdir()?;
    {
        let store = Store::open(dir.path())?;
        keys::store_key(&store, OTHER, "other", false)?;
    }
    let app = spawn_with(Some(dir), |c| {
        c.create_rate_per_key = 5;
        c.create_rate_per_ip = 1000;
    })
    .await;
    let (answers, took) = burst(&app, 6, "k", KEY, None).await;
    check_burst(&app, &answers, took, "k", "this API key").await;
    // Another key is not held back by the first one's burst.
    let (answers, _) = burst(&app, 1, "o", OTHER, None).await;
    assert_eq!(answers[0].0, 201, "{answers:?}");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn creating_over_the_per_address_rate_is_429_and_creates_nothing() -> TestResult {
    let app = spawn_with(None, |c| {
        c.create_rate_per_ip = 5;
        c.create_rate_per_key = 1000;
        c.trust_forwarded_for = true;
    })
    .await;
    let started = Instant::now();
    let (answers, took) = burst(&app, 6, "i", KEY, Some("192.0.2.1")).await;
    check_burst(&app, &answers, took, "i", "this address").await;
    // Checked before the key: a request without a valid key is refused with 429 too (if no
    // allowance came back meanwhile, which takes 200 ms).
    let (answers, _) = burst(&app, 1, "x", "lp_wrong", Some("192.0.2.1")).await;
    if started.elapsed() < Duration::from_millis(200) {
        assert_eq!(answers[0].0, 429, "{answers:?}");
    }
    // Another address is not held back.
    let (answers, _) = burst(&app, 1, "j", KEY, Some("192.0.2.2")).await;
    assert_eq!(answers[0].0, 201, "{answers:?}");
    app.stop().await;
    Ok(())
}
