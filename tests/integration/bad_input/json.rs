//! Create bodies: malformed and mistyped JSON, bodies over the size limit, wrong content types.

use std::time::{Duration, Instant};

use serde_json::json;

use super::raw::{assert_not_created, post, send_raw};
use crate::support::{KEY, TestResult, json_error, spawn_app};

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
