//! Load that must not hurt others: stuck stream readers, slow and idle HTTP clients, the
//! connection limit, and a hot link with many watchers.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::support::{TestResult, eventually, spawn_with};

const WAIT: Duration = Duration::from_secs(30);

/// 1,000 subscribers that never read, and one that does: the reader gets every click's count
/// in time, the stuck ones are cut off after the stuck limit and their places come free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_subscribers_are_cut_off_and_the_reader_keeps_up() -> TestResult {
    let app = spawn_with(None, |c| {
        c.sse_stuck_timeout = Duration::from_secs(2);
        c.sse_heartbeat = Duration::from_millis(500);
        // 1,001 streams from one address (127.0.0.1).
        c.sse_max_per_client = 0;
        c.max_connections_per_client = 0;
    })
    .await;
    app.create_link("crowd").await;
    let mut stuck = Vec::new();
    for _ in 0..1000 {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(2048)?;
        let mut conn = socket.connect(app.addr).await?;
        conn.write_all(b"GET /realtime/crowd HTTP/1.1\r\nHost: t\r\n\r\n")
            .await?;
        stuck.push(conn);
    }
    let mut reader = app.subscribe("crowd").await;
    eventually(WAIT, "all 1001 subscribed", || async {
        app.metric("linkpulse_subscribers").await == 1001
    })
    .await;

    // Big frames, clicked until the stuck readers' socket buffers are full and the stuck
    // limit has cut them off (bounded: at most 20,000 clicks).
    let ua = format!("Mozilla/5.0 {}", "u".repeat(500));
    let referer = format!("https://ref.example/{}", "r".repeat(1000));
    let mut clicks = 0u64;
    while app.metric("linkpulse_subscribers").await > 1 {
        assert!(clicks < 20_000, "stuck subscribers were never cut off");
        for _ in 0..100 {
            let res = app
                .client
                .get(app.url("/crowd"))
                .header("user-agent", ua.as_str())
                .header("referer", referer.as_str())
                .send()
                .await?;
            assert_eq!(res.status(), 302);
        }
        clicks += 100;
        // The reader keeps up all along.
        let mut last = 0;
        while last < clicks {
            let event = reader.next_data(WAIT).await.ok_or("the reader stalled")?;
            last = event.count().ok_or("no count")?;
        }
    }
    eprintln!("stuck subscribers cut off after {clicks} clicks");
    let clicks_so_far = clicks;
    // The reader is still served.
    app.click("crowd").await;
    let next = reader
        .next_data(WAIT)
        .await
        .ok_or("the reader was cut off too")?;
    assert_eq!(next.count(), Some(clicks_so_far + 1));
    drop(stuck);
    app.stop().await;
    Ok(())
}

/// Reads until the peer closes (Ok) or the deadline passes (Err).
async fn closed_by_server(mut conn: TcpStream) -> Result<(), &'static str> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
            Err(_) => return Err("the server kept a slow connection open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_off_while_others_are_served() -> TestResult {
    let app = spawn_with(None, |c| c.header_timeout = Duration::from_millis(500)).await;
    app.create_link("busy").await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(app.addr).await?);
    }
    // Slowloris: a request head one byte at a time, never finished in time.
    let mut slow = Vec::new();
    for path in ["/busy", "/realtime/busy"] {
        let mut conn = TcpStream::connect(app.addr).await?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Slow: ");
        conn.write_all(head.as_bytes()).await?;
        let path = path.to_owned();
        slow.push(tokio::spawn(async move {
            for _ in 0..200 {
                if conn.write_all(b"a").await.is_err() {
                    return Ok::<(), String>(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(format!("a slow header on {path} was never cut off"))
        }));
    }
    // Everyone else keeps being served meanwhile.
    for _ in 0..100 {
        assert_eq!(app.click("busy").await.status(), 302);
    }
    for conn in idle {
        closed_by_server(conn).await?;
    }
    for task in slow {
        task.await??;
    }
    assert_eq!(app.count("busy").await, 100, "no slow request was counted");
    app.stop().await;
    Ok(())
}

/// At the connection limit new connections wait in the backlog: the server holds no more than
/// the limit, and the waiting ones are served when places come free.
#[tokio::test]
async fn the_connection_limit_holds() -> TestResult {
    const LIMIT: usize = 20;
    let app = spawn_with(None, |c| c.max_connections = LIMIT).await;
    let health = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut admitted = Vec::new();
    for _ in 0..LIMIT {
        let mut conn = TcpStream::connect(app.addr).await?;
        conn.write_all(health).await?;
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(WAIT, conn.read(&mut buf)).await??;
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        admitted.push(conn);
    }
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let mut conn = TcpStream::connect(app.addr).await?;
        conn.write_all(health).await?;
        waiting.push(conn);
    }
    // Ask an admitted connection how many the server holds: the limit, not 25.
    let first = &mut admitted[0];
    first
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&text).contains("linkpulse_connections ") {
        let n = tokio::time::timeout(WAIT, first.read(&mut buf)).await??;
        assert!(n > 0, "metrics connection closed");
        text.extend_from_slice(&buf[..n]);
    }
    while !String::from_utf8_lossy(&text).contains("linkpulse_writer_queue") {
        let n = tokio::time::timeout(WAIT, first.read(&mut buf)).await??;
        text.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&text);
    let held: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("linkpulse_connections ")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or("no connections gauge")?;
    assert_eq!(held, LIMIT as u64);
    // Free five places: the five waiting connections are served.
    admitted.truncate(LIMIT - 5);
    for mut conn in waiting {
        let n = tokio::time::timeout(WAIT, conn.read(&mut buf)).await??;
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    drop(admitted);
    app.stop().await;
    Ok(())
}

/// Thousands of clicks on one code with hundreds of watchers: clicks wait in the actor's inbox
/// only briefly (the gauge returns to zero), watchers get conflated frames, and the count is
/// exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_link_with_many_watchers_stays_bounded_and_exact() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    app.create_link("viral").await;
    const WATCHERS: usize = 300;
    const CLIENTS: usize = 16;
    const EACH: u64 = 250;
    let total = CLIENTS as u64 * EACH;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        watchers.push(app.subscribe("viral").await);
    }
    let readers: Vec<_> = watchers
        .into_iter()
        .map(|mut sse| {
            tokio::spawn(async move {
                let (mut last, mut frames) = (0, 0u64);
                while last < total {
                    let Some(event) = sse.next_data(WAIT).await else {
                        break;
                    };
                    let count = event.count().unwrap_or(0);
                    assert!(count >= last, "a watcher saw the count go back");
                    last = count;
                    frames += 1;
                }
                (last, frames)
            })
        })
        .collect();
    let mut clickers = Vec::new();
    for _ in 0..CLIENTS {
        let client = app.client.clone();
        let url = app.url("/viral");
        clickers.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let res = client.get(&url).send().await.expect("sent");
                assert_eq!(res.status(), 302);
            }
        }));
    }
    let mut peak = 0;
    while !clickers.iter().all(|c| c.is_finished()) {
        peak = peak.max(app.metric("linkpulse_inbox_clicks").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for clicker in clickers {
        clicker.await?;
    }
    eprintln!("peak clicks waiting in the inbox: {peak} of {total}");
    // Each client has one request in flight, so a click waits only for the actor's next
    // collection: the inbox holds about one click per client (ten rounds' worth allowed), not
    // a pile that grows with the load.
    let bound = CLIENTS as u64 * 10;
    assert!(
        peak <= bound,
        "{peak} clicks waited in the inbox at once; at most {bound} expected"
    );
    let mut frames = Vec::new();
    for reader in readers {
        let (last, seen) = reader.await?;
        assert_eq!(last, total, "every watcher reached the final count");
        frames.push(seen);
    }
    let most = frames.iter().copied().max().unwrap_or(0);
    eprintln!("frames per watcher: at most {most} for {total} clicks");
    assert!(
        most < total,
        "frames were conflated: a watcher got {most} frames for {total} clicks"
    );
    assert_eq!(app.count("viral").await, total);
    eventually(WAIT, "the inbox is empty", || async {
        app.metric("linkpulse_inbox_clicks").await == 0
    })
    .await;
    app.stop().await;
    Ok(())
}

/// A kept-alive connection that goes quiet after a request is closed after the header timeout.
#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() -> TestResult {
    let app = spawn_with(None, |c| c.header_timeout = Duration::from_millis(300)).await;
    let mut conn = TcpStream::connect(app.addr).await?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(WAIT, conn.read(&mut buf)).await??;
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    closed_by_server(conn).await?;
    app.stop().await;
    Ok(())
}
