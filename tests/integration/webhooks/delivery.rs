//! At least once, tried as it would fail: the real binary, 1,000 links, 100,000 clicks, a
//! receiver answering `500` for a while, down for a while and slow for a while, and the
//! linkpulse process killed with SIGKILL while it delivers. At the end every stored click has
//! reached the receiver (checked with the Standard Webhooks library), each link's click
//! numbers without a gap, and the receiver's distinct count equals the store's.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use serde_json::json;

use super::{Receiver, every_click_came, free_port, make_webhook, stored_counts, until};
use crate::{
    faults::process::{Started, command, launch},
    support::{KEY, TestResult, client, soak},
};

const LINKS: usize = 1000;
/// Long enough for a debug build to deliver what is left after the last fault.
const DRAIN: Duration = Duration::from_secs(300);

/// `n` clicks spread over the links, 32 at a time; how many were answered `302`.
async fn clicks(base: &str, n: usize, from: usize) -> usize {
    let client = Arc::new(client());
    stream::iter(from..from + n)
        .map(|i| {
            let (client, url) = (client.clone(), format!("{base}/l{}", i % LINKS));
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 302)
            }
        })
        .buffer_unordered(32)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

async fn serve(dir: &std::path::Path, listen: &str) -> crate::faults::process::Server {
    let mut cmd = command(&["--listen", listen, "--data-dir"]);
    cmd.arg(dir)
        .args(["--webhook-allow-private", "--webhook-batch", "100"]);
    match launch(cmd).await.expect("linkpulse starts") {
        Started::Serving(server) => server,
        Started::Exited { status, log } => panic!("linkpulse did not start ({status}):\n{log}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_click_arrives_through_failures_an_outage_slowness_and_a_kill_9() -> TestResult
{
    let total = soak(100_000, 100_000);
    let quarter = total / 5;
    let dir = tempfile::tempdir()?;
    let mut server = serve(dir.path(), "127.0.0.1:0").await;
    let (base, addr) = (server.base.clone(), server.addr.clone());
    let http = client();
    for i in 0..LINKS {
        let res = http
            .post(format!("{base}/api/links"))
            .bearer_auth(KEY)
            .json(&json!({"url": format!("https://example.com/{i}"), "code": format!("l{i}")}))
            .send()
            .await?;
        assert_eq!(res.status(), 201);
    }
    let port = free_port();
    let (_, secret) = make_webhook(
        &http,
        &base,
        json!({"url": Receiver::url(port), "events": ["link.clicked"]}),
    )
    .await;
    let mut receiver = Receiver::start(port, &[&secret]);
    let mut sent = 0;

    // Answering: clicks arrive as they come.
    sent += clicks(&base, quarter, sent).await;
    until(DRAIN, "the first clicks", || receiver.distinct() > 0).await;
    // Slow for a while: fewer, larger messages.
    receiver.mode(json!({"mode": "slow", "delay": 0.3})).await;
    sent += clicks(&base, quarter, sent).await;
    // Answering 500 for a while.
    receiver.mode(json!({"mode": "fail"})).await;
    sent += clicks(&base, quarter, sent).await;
    // Down for a while.
    receiver.down();
    sent += clicks(&base, quarter, sent).await;
    receiver.up();
    sent += clicks(&base, total - 4 * quarter, sent).await;
    // Killed, started again on the same port: delivery resumes at once (not after the
    // backoff the failures had reached); killed again while it delivers the backlog.
    server.signal("KILL")?;
    server.wait_exit(Duration::from_secs(10)).await?;
    let before = receiver.distinct();
    let mut server = serve(dir.path(), &addr).await;
    // At once, not after the backoff its failures had reached (tens of seconds by now).
    until(
        Duration::from_secs(60),
        "delivery resumed after the restart",
        || receiver.distinct() > before,
    )
    .await;
    server.signal("KILL")?;
    server.wait_exit(Duration::from_secs(10)).await?;
    let server = serve(dir.path(), &addr).await;
    assert_eq!(server.base, base);
    let stored = stored_counts(&http, &base, "127.0.0.1").await;
    let in_store: u64 = stored.values().sum();
    assert!(
        in_store as usize <= sent && in_store as usize + 5_000 >= sent,
        "the store holds the clicks answered but the last moment's ({in_store} of {sent})"
    );
    until(DRAIN, "every stored click at the receiver", || {
        receiver.distinct() as u64 >= in_store
    })
    .await;
    let received = receiver.clicks();
    let duplicates = every_click_came(&received, &stored);
    let messages = receiver.of_type("link.clicked").len();
    eprintln!(
        "{in_store} clicks stored of {sent} answered; {} distinct at the receiver in {messages} messages, {duplicates} sent twice",
        receiver.distinct()
    );
    assert_eq!(receiver.distinct() as u64, in_store);
    drop(server);
    Ok(())
}
