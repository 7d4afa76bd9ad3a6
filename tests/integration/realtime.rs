//! The live stream: limits, heartbeats, slow readers, fresh and reused connections (the first
//! frame, rising counts with ids and Last-Event-ID are in `engines::streams`, on both engines).

use std::time::Duration;

use tokio::{io::AsyncWriteExt, net::TcpSocket};

use crate::support::{Event, SseClient, TestResult, spawn_app, spawn_with};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn subscriber_limits_answer_503_with_retry_after() -> TestResult {
    let app = spawn_with(None, |c| {
        c.sse_max_per_link = 2;
        c.sse_max_total = 3;
    })
    .await;
    app.create_link("one").await;
    app.create_link("two").await;
    let url = |code: &str| app.url(&format!("/realtime/{code}"));
    let a = SseClient::open(&app.client, &url("one"), None).await;
    assert_eq!(a.status, 200, "the first stream of one");
    let b = SseClient::open(&app.client, &url("one"), None).await;
    assert_eq!(b.status, 200, "the second stream of one");
    let res = app.client.get(url("one")).send().await?;
    assert_eq!(res.status(), 503, "per-link limit");
    assert!(res.headers().contains_key("retry-after"));
    let c = SseClient::open(&app.client, &url("two"), None).await;
    assert_eq!(c.status, 200, "the third stream in all");
    let res = app.client.get(url("two")).send().await?;
    assert_eq!(res.status(), 503, "total limit");
    assert!(res.headers().contains_key("retry-after"));
    drop(a);
    // The place of a closed stream comes free once the server notices it has gone.
    let deadline = std::time::Instant::now() + WAIT;
    let _d = loop {
        let sse = SseClient::open(&app.client, &url("two"), None).await;
        if sse.status == 200 {
            break sse;
        }
        assert!(std::time::Instant::now() < deadline, "no place came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive() -> TestResult {
    let app = spawn_with(None, |c| c.sse_heartbeat = Duration::from_millis(100)).await;
    app.create_link("quiet").await;
    let mut sse = app.subscribe("quiet").await;
    let mut comments = 0;
    while comments < 2 {
        let event: Event = sse.next(WAIT).await?;
        if event.comment {
            comments += 1;
        }
    }
    app.stop().await;
    Ok(())
}

/// A subscriber that never reads (with a tiny receive window) must not hold back one that
/// does; when it finally reads, it gets the newest state rather than every step (conflation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reader_does_not_delay_a_fast_one() -> TestResult {
    let app = spawn_with(None, |c| {
        c.sse_queue = 2;
        c.sse_min_interval = Duration::ZERO;
        c.sse_stuck_timeout = Duration::from_secs(600);
    })
    .await;
    app.create_link("busy").await;

    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(2048)?;
    let mut stuck = socket.connect(app.addr).await?;
    stuck
        .write_all(b"GET /realtime/busy HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let mut fast = app.subscribe("busy").await;
    assert!(fast.next_data(WAIT).await.is_some());

    // Big frames fill the stuck reader's socket quickly.
    const CLICKS: u64 = 600;
    let ua = format!("Mozilla/5.0 {}", "x".repeat(500));
    let referer = format!("https://ref.example/{}", "r".repeat(1000));
    let clicker = {
        let client = app.client.clone();
        let url = app.url("/busy");
        tokio::spawn(async move {
            for _ in 0..CLICKS {
                let res = client
                    .get(&url)
                    .header("user-agent", ua.as_str())
                    .header("referer", referer.as_str())
                    .send()
                    .await
                    .expect("sent");
                assert_eq!(res.status(), 302);
            }
        })
    };
    let mut last = 0;
    while last < CLICKS {
        let event = fast
            .next_data(WAIT)
            .await
            .ok_or("the fast reader stalled")?;
        last = event.count().ok_or("no count")?;
    }
    clicker.await?;

    // Now the stuck one reads everything it was sent: it ends at the final count, having
    // skipped states along the way.
    let mut reader = tokio::io::BufReader::new(stuck);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    while seen.last() != Some(&CLICKS) {
        line.clear();
        let read = tokio::time::timeout_at(deadline, reader.read_line(&mut line)).await;
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(format!("stuck reader ended at {:?}", seen.last()).into()),
        }
        if let Some(id) = line.trim().strip_prefix("id: ") {
            seen.push(id.parse::<u64>()?);
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "never backwards: {seen:?}"
    );
    assert!(
        (seen.len() as u64) < CLICKS,
        "the stuck reader was given the newest state, not every step ({} frames)",
        seen.len()
    );
    app.stop().await;
    Ok(())
}

/// Reads from a raw connection until `needle` has been seen (or the deadline passes).
async fn read_until(conn: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A stream is served the same whether it is the first request of its connection (the lean
/// writer) or follows other requests on a kept-alive connection (salvo).
#[tokio::test]
async fn streams_on_fresh_and_reused_connections_carry_the_same_frames() -> TestResult {
    let app = spawn_app().await;
    app.create_link("both").await;
    app.click("both").await;

    let mut fresh = tokio::net::TcpStream::connect(app.addr).await?;
    fresh
        .write_all(b"GET /realtime/both HTTP/1.1\r\nHost: t\r\nLast-Event-ID: 0\r\n\r\n")
        .await?;
    let text = read_until(&mut fresh, "\"clickCount\":1").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    // The retry hint, the aggregates (a named event), then the count frames.
    assert!(
        text.contains("\r\n\r\nretry: 2000\n\nevent: stats\ndata: {\"totals\":{"),
        "{text}"
    );
    assert!(
        text.contains("\n\nid: 1\ndata: {\"clickCount\":1,"),
        "{text}"
    );

    let mut reused = tokio::net::TcpStream::connect(app.addr).await?;
    reused
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await?;
    let health = read_until(&mut reused, "\"ok\"").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    reused
        .write_all(b"GET /realtime/both HTTP/1.1\r\nHost: t\r\nLast-Event-ID: 0\r\n\r\n")
        .await?;
    let text = read_until(&mut reused, "\"clickCount\":1").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("id: 1\ndata: {\"clickCount\":1,"), "{text}");

    // Both see the next click.
    app.click("both").await;
    assert!(
        read_until(&mut fresh, "id: 2\n")
            .await
            .contains("\"clickCount\":2")
    );
    assert!(
        read_until(&mut reused, "id: 2\n")
            .await
            .contains("\"clickCount\":2")
    );

    // Errors on the lean path are JSON too.
    let mut bad = tokio::net::TcpStream::connect(app.addr).await?;
    bad.write_all(b"GET /realtime/nope HTTP/1.1\r\nHost: t\r\n\r\n")
        .await?;
    let text = read_until(&mut bad, "}").await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains("{\"error\":\"no such link\"}"), "{text}");
    app.stop().await;
    Ok(())
}

/// A subscriber that disconnects gives its place back at once, not at the next heartbeat.
#[tokio::test]
async fn a_closed_stream_gives_its_place_back() -> TestResult {
    let app = spawn_with(None, |c| {
        c.sse_max_total = 1;
        c.sse_heartbeat = Duration::from_secs(3600);
    })
    .await;
    app.create_link("one").await;
    let mut first = tokio::net::TcpStream::connect(app.addr).await?;
    first
        .write_all(b"GET /realtime/one HTTP/1.1\r\nHost: t\r\n\r\n")
        .await?;
    assert!(read_until(&mut first, "id: 0").await.contains("200 OK"));
    drop(first);
    crate::support::eventually(WAIT, "the place comes free without a heartbeat", || async {
        app.metric("linkpulse_subscribers").await == 0
    })
    .await;
    let second = app.subscribe("one").await;
    assert_eq!(second.status, 200);
    app.stop().await;
    Ok(())
}
