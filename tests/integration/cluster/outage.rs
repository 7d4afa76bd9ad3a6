//! Every NATS server gone: redirects of known links are still answered in default durability,
//! clicks are held up to the backlog and counted as dropped past it; strict durability
//! answers 503; `/healthz` says why. When the servers come back the nodes recover by
//! themselves and store what they held.

use std::time::Duration;

use serde_json::Value;

use super::{Nats, Node, ONE_AT_A_TIME, click, consistent, create, eventually};
use crate::support::TestResult;

async fn health(node: &Node) -> (u16, Value) {
    match node
        .client
        .get(node.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(res) => (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

async fn dropped(node: &Node) -> u64 {
    let text = node
        .client
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("metrics sent")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("linkpulse_clicks_dropped_total{reason=\"backlog\"}"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_nats_server_down_redirects_go_on_and_nodes_recover() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nats = Nats::start(3);
    let held = 5u64;
    let lenient = Node::start(&nats, "default", &["--click-backlog", "5"]);
    let strict = Node::start(&nats, "strict", &["--durability", "strict"]);
    create(&lenient.client, &lenient.base, "outage").await;
    // Both nodes know the link (it reached the strict node through the bucket's watch).
    eventually(
        Duration::from_secs(10),
        "the link on both nodes",
        || async { click(&strict.client, &strict.base, "outage").await == 302 },
    )
    .await;
    assert_eq!(click(&lenient.client, &lenient.base, "outage").await, 302);
    let before = consistent(&lenient.client, &lenient.base, "outage").await;

    for i in 0..nats.len() {
        nats.kill(i);
    }
    eventually(
        Duration::from_secs(20),
        "/healthz says NATS is gone",
        || async {
            let (status, body) = health(&lenient).await;
            status == 503 && body["reason"].as_str().is_some_and(|r| r.contains("NATS"))
        },
    )
    .await;
    // Default durability: answered from memory; the clicks past the backlog are dropped and
    // counted as such.
    for _ in 0..12 {
        assert_eq!(click(&lenient.client, &lenient.base, "outage").await, 302);
    }
    eventually(
        Duration::from_secs(10),
        "clicks past the backlog counted",
        || async { dropped(&lenient).await == 12 - held },
    )
    .await;
    // Strict durability: the click cannot be stored, so the redirect says so.
    assert_eq!(click(&strict.client, &strict.base, "outage").await, 503);

    for i in 0..nats.len() {
        nats.start_server(i);
    }
    eventually(
        Duration::from_secs(60),
        "the nodes recover by themselves",
        || async { health(&lenient).await.0 == 200 && health(&strict).await.0 == 200 },
    )
    .await;
    // The held clicks are stored: what was answered before the outage plus the backlog.
    eventually(
        Duration::from_secs(30),
        "the held clicks stored",
        || async { super::count(&lenient.client, &lenient.base, "outage").await >= before + held },
    )
    .await;
    let after = consistent(&lenient.client, &lenient.base, "outage").await;
    // The strict node's refused click may or may not have reached the stream before its
    // answer gave up; nothing else was counted.
    assert!(
        after == before + held || after == before + held + 1,
        "{after} stored: {before} before the outage, {held} held"
    );
    // An actor start that failed during the outage backs off (up to 30 s) before the strict
    // node counts the code again; then it does, by itself.
    eventually(
        Duration::from_secs(60),
        "the strict node counts again",
        || async { click(&strict.client, &strict.base, "outage").await == 302 },
    )
    .await;
    Ok(())
}
