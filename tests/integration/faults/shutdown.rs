//! SIGTERM under load with thousands of open streams (2,000 in the soak, `LINKPULSE_SOAK=1`;
//! 200 in a plain `cargo test`): every stream ends with a last `retry:` hint, the process exits
//! 0, and every acknowledged click is stored.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
    task::JoinHandle,
};

use super::process::{Res, create_code, serving, start_load, stored_counts};
use crate::support::{TestResult, client, soak};

// ---------------------------------------------------------------------------------------------
// SIGTERM under load with thousands of open streams.

/// What one raw SSE connection saw.
#[derive(Debug, Default)]
struct StreamSeen {
    /// `retry:` hints: one at the start, one more at a clean stop.
    retries: usize,
    /// The server closed it.
    ended: bool,
}

/// Opens `GET /realtime/{code}` on a raw connection, reports once the first data frame is in,
/// then reads (and drops) everything until the server closes the connection.
async fn raw_stream(
    addr: String,
    code: String,
    opening: Arc<Semaphore>,
    ready: Arc<AtomicUsize>,
) -> Res<StreamSeen> {
    let permit = opening.acquire_owned().await?;
    let mut socket = TcpStream::connect(&addr).await?;
    socket
        .write_all(
            format!(
                "GET /realtime/{code} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut seen = StreamSeen::default();
    let mut buf = vec![0u8; 8192];
    // The end of the previous read, so a marker split over two reads is still found.
    let mut carry: Vec<u8> = Vec::new();
    let mut head = Vec::new();
    let mut permit = Some(permit);
    loop {
        let n = match socket.read(&mut buf).await {
            Ok(0) | Err(_) => {
                seen.ended = true;
                break;
            }
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&buf[..n]);
        if permit.is_some() {
            head.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&head);
            if !text.starts_with("HTTP/1.1 200") && text.len() >= 12 {
                return Err(
                    format!("stream refused: {}", text.lines().next().unwrap_or("")).into(),
                );
            }
            if text.contains("\ndata: ") {
                permit = None;
                head = Vec::new();
                ready.fetch_add(1, Ordering::Relaxed);
            }
        }
        seen.retries += count_matches(&window, b"\nretry: ");
        let keep = window.len().min(8);
        carry = window[window.len() - keep..].to_vec();
    }
    if permit.is_some() {
        return Err("the stream ended before its first frame".into());
    }
    Ok(seen)
}

fn count_matches(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Res<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .ok_or_else(|| format!("metric {name} missing").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_sigterm_under_load_with_open_streams_stops_cleanly_and_loses_nothing() -> TestResult {
    let streams = soak(2000, 200);
    let dir = tempfile::tempdir()?;
    let codes = ["t1", "t2", "t3", "t4"];
    let http = client();
    // A frame per link at most every 100 ms keeps 2,000 readers affordable in a debug build.
    // All come from one address (127.0.0.1): the per-client caps are lifted.
    let args = [
        "--sse-min-interval",
        "100ms",
        "--sse-max-per-client",
        "0",
        "--max-connections-per-client",
        "0",
    ];
    let mut server = serving(dir.path(), &args).await?;
    for code in codes {
        create_code(&http, &server.base, code).await?;
    }

    let opening = Arc::new(Semaphore::new(100));
    let ready = Arc::new(AtomicUsize::new(0));
    let opened_at = Instant::now();
    let readers: Vec<JoinHandle<Res<StreamSeen>>> = (0..streams)
        .map(|i| {
            tokio::spawn(raw_stream(
                server.addr.clone(),
                codes[i % codes.len()].to_owned(),
                opening.clone(),
                ready.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < streams {
        if Instant::now() >= deadline || readers.iter().any(JoinHandle::is_finished) {
            return Err(format!(
                "only {} of {streams} streams opened",
                ready.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let subscribers = metric(&http, &server.base, "linkpulse_subscribers").await?;
    assert_eq!(
        subscribers, streams as u64,
        "every stream is a live subscriber"
    );
    eprintln!(
        "SIGTERM test: {streams} streams open after {:?}",
        opened_at.elapsed()
    );

    let load = start_load(&server.base, &codes);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let took = server.terminate().await?;
    let tallies = load.finish().await?;
    eprintln!("SIGTERM with {streams} open streams under load: exited 0 after {took:?}");

    let mut ended = 0;
    let mut told_to_retry = 0;
    for reader in readers {
        let seen = tokio::time::timeout(Duration::from_secs(10), reader).await???;
        ended += usize::from(seen.ended);
        told_to_retry += usize::from(seen.retries >= 2);
    }
    eprintln!(
        "SIGTERM test: {ended} of {streams} streams ended, {told_to_retry} with a last retry hint"
    );
    assert_eq!(ended, streams, "every stream ends with the process");
    assert_eq!(
        told_to_retry, streams,
        "every stream ends with a last retry hint"
    );

    let stored = stored_counts(dir.path(), &codes)?;
    let mut received = 0;
    for (i, code) in codes.iter().enumerate() {
        let t = tallies[i];
        assert_eq!(t.other, 0, "{code}: answers other than 302");
        assert_eq!(
            stored[i],
            (t.found, t.found),
            "{code}: after a clean stop, count and events equal the 302s received"
        );
        received += t.found;
    }
    eprintln!("SIGTERM test: {received} 302s received, all of them stored");
    assert!(received >= 50, "too little load to mean anything");
    Ok(())
}
