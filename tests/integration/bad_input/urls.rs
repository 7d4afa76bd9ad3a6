//! Redirect targets: URLs that are not safe http(s) targets, and line breaks that must never
//! reach the `Location` header.

use serde_json::json;

use super::raw::{assert_not_created, raw_get};
use crate::support::{TestResult, json_error, spawn_app};

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
