//! Short codes that break a rule, in create bodies and in paths.

use serde_json::json;

use super::raw::{assert_not_created, raw_get};
use crate::support::{TestResult, json_error, spawn_app, stored};

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
