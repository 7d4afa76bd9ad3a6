//! Request heads: bad `Last-Event-ID` values, heads over the size limits, and the heads both
//! stream transports (the lean writer and salvo) must take and refuse alike.

use std::time::Duration;

use super::raw::{assert_not_created, raw_get, send_raw};
use crate::{
    support::{KEY, TestResult, json_error, spawn_app, spawn_with, stored},
    wire::{Answer, exchange, kept_alive_from, read_until},
};

#[tokio::test]
async fn a_malformed_last_event_id_is_400_and_subscribes_nothing() -> TestResult {
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
    // A number past the count is no error (a browser that saw a count a crash took back
    // must not be cut off for good): it gets the state as it is.
    for value in ["3", "18446744073709551615"] {
        let mut stream = crate::support::SseClient::open(&app.client, &url, Some(value)).await;
        assert_eq!(stream.status, 200, "{value}");
        let state = stream
            .next_data(Duration::from_secs(10))
            .await
            .ok_or("no state")?;
        assert_eq!((state.id, state.count()), (Some(2), Some(2)), "{value}");
    }
    crate::support::eventually(Duration::from_secs(5), "no stream left open", || async {
        app.metric("linkpulse_subscribers").await == 0
    })
    .await;
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

/// A stream asked for with `head` on a fresh connection (the lean writer) and on a kept-alive
/// connection that already carried a request (salvo): the answers of both.
async fn on_both_transports(app: &crate::support::TestApp, head: &[u8]) -> [Option<Answer>; 2] {
    let mut fresh = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    let lean = exchange(&mut fresh, head).await;
    let mut kept = kept_alive_from([127, 0, 0, 1], app.addr).await;
    let salvo = exchange(&mut kept, head).await;
    [lean, salvo]
}

#[tokio::test]
async fn a_head_with_bare_lf_line_ends_is_served_on_both_transports() -> TestResult {
    // A head that never ended would wait for this long; the answers come well before.
    let app = spawn_with(None, |c| c.header_timeout = Duration::from_secs(3600)).await;
    app.create_link("lf").await;
    let mut streams = Vec::new();
    for head in [
        &b"GET /realtime/lf HTTP/1.1\nHost: t\nLast-Event-ID: 0\n\n"[..],
        b"GET /realtime/lf HTTP/1.1\r\nHost: t\nLast-Event-ID: 0\r\n\n",
        b"GET /realtime/lf HTTP/1.1\nHost: t\r\n\r\n",
    ] {
        let shown = String::from_utf8_lossy(head).into_owned();
        let mut fresh = tokio::net::TcpStream::connect(app.addr).await?;
        let answer = exchange(&mut fresh, head).await.ok_or("no answer")?;
        assert!(answer.is_stream(), "lean, {shown:?}: {}", answer.head);
        let mut kept = kept_alive_from([127, 0, 0, 1], app.addr).await;
        let answer = exchange(&mut kept, head).await.ok_or("no answer")?;
        assert!(answer.is_stream(), "salvo, {shown:?}: {}", answer.head);
        streams.push(fresh);
        streams.push(kept);
    }
    // Each of them is live: the next click reaches all.
    app.click("lf").await;
    for conn in &mut streams {
        assert!(read_until(conn, "\"clickCount\":1").await.contains("id: 1"));
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn both_stream_transports_accept_and_refuse_the_same_heads() -> TestResult {
    let app = spawn_with(None, |c| c.header_timeout = Duration::from_secs(3600)).await;
    app.create_link("hd").await;
    let head = |lines: &str| format!("GET /realtime/hd HTTP/1.1\r\nHost: t\r\n{lines}\r\n");
    let many = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    let padded = |n: usize, each: usize| {
        (0..n)
            .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(each)))
            .collect::<String>()
    };
    let cases: Vec<(&str, String, u16)> = vec![
        ("CRLF", head(""), 200),
        (
            "bare LF",
            "GET /realtime/hd HTTP/1.1\nHost: t\n\n".to_owned(),
            200,
        ),
        (
            "HTTP/1.0",
            "GET /realtime/hd HTTP/1.0\r\n\r\n".to_owned(),
            200,
        ),
        (
            "no Host",
            "GET /realtime/hd HTTP/1.1\r\n\r\n".to_owned(),
            200,
        ),
        ("a query", head("").replacen("/hd", "/hd?x=1", 1), 200),
        ("Content-Length: 0", head("Content-Length: 0\r\n"), 200),
        ("100 headers", head(&many(99)), 200),
        ("20 KiB in 4 headers", head(&padded(4, 5 * 1024)), 200),
        ("Last-Event-ID: abc", head("Last-Event-ID: abc\r\n"), 400),
        ("101 headers", head(&many(100)), 431),
        ("a 9 KiB header", head(&padded(1, 9 * 1024)), 431),
        ("40 KiB in 40 headers", head(&padded(40, 1000)), 431),
        ("a folded header", head("X-A: a\r\n b\r\n"), 400),
        ("a space before the colon", head("X-A : a\r\n"), 400),
        ("a bad header name", head("X(A): a\r\n"), 400),
        ("a NUL in a value", head("X-A: a\0b\r\n"), 400),
        (
            "HTTP/2.0",
            "GET /realtime/hd HTTP/2.0\r\n\r\n".to_owned(),
            400,
        ),
        ("no version", "GET /realtime/hd\r\n\r\n".to_owned(), 400),
        ("Content-Length: abc", head("Content-Length: abc\r\n"), 400),
        ("Content-Length: -1", head("Content-Length: -1\r\n"), 400),
        (
            "two Content-Lengths",
            head("Content-Length: 1\r\nContent-Length: 2\r\n"),
            400,
        ),
        (
            "Transfer-Encoding: gzip",
            head("Transfer-Encoding: gzip\r\n"),
            400,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            "GET /realtime/hd HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
            400,
        ),
    ];
    for (what, head, status) in cases {
        let [lean, salvo] = on_both_transports(&app, head.as_bytes()).await;
        let lean = lean.map(|a| a.status);
        let salvo = salvo.map(|a| a.status);
        assert_eq!(lean, salvo, "{what}: lean writer vs salvo");
        assert_eq!(lean, Some(status), "{what}");
    }
    // A stream whose client has gone is let go once the server notices: soon, not at once.
    crate::support::eventually(
        Duration::from_secs(5),
        "no refused or closed stream is left open",
        || async { app.metric("linkpulse_subscribers").await == 0 },
    )
    .await;
    app.stop().await;
    Ok(())
}
