//! Request heads: bad `Last-Event-ID` values and heads over the size limits.

use std::time::Duration;

use super::raw::{assert_not_created, raw_get, send_raw};
use crate::support::{KEY, TestResult, json_error, spawn_app, stored};

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
