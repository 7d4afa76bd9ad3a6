//! `--click-retention-days` on a cluster: raw clicks past the retention go (whole messages,
//! never a code's last, only what a snapshot covers), counts and aggregates stay, and the
//! check accepts what is left.

use serde_json::Value;

use super::{WAIT, succeeds};
use crate::{
    cluster::{Nats, Node, ONE_AT_A_TIME, click, count, create},
    support::{KEY, SseClient, TestResult, eventually},
};

async fn get(node: &Node, path: &str) -> Value {
    node.client
        .get(node.url(path))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("a JSON answer")
}

/// The numbers of the clicks the node lists for `code`, newest first.
async fn listed(node: &Node, code: &str) -> Vec<u64> {
    get(node, &format!("/api/links/{code}/clicks?limit=1000")).await["clicks"]
        .as_array()
        .expect("a clicks array")
        .iter()
        .filter_map(|c| c["seq"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_clicks_past_the_retention_go_from_a_cluster_and_counts_and_aggregates_stay()
-> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    // Every click is past a retention of 0 days, looked for every 200 ms; an idle actor stops
    // (storing aggregates that cover its clicks) after 300 ms.
    let node = Node::start(
        &nats,
        "a",
        &[
            "--click-retention-days",
            "0",
            "--click-retention-check",
            "200ms",
            "--idle-timeout",
            "300ms",
        ],
    );
    create(&node.client, &node.base, "old").await;
    // A watched link's actor never stops idle, so no snapshot covers its clicks: they stay.
    create(&node.client, &node.base, "watched").await;
    let viewer = SseClient::open(&node.client, &node.url("/realtime/watched"), None).await;
    assert_eq!(viewer.status, 200);
    for n in 1..=5 {
        for code in ["old", "watched"] {
            assert_eq!(click(&node.client, &node.base, code).await, 302);
            eventually(WAIT, "the click is stored", || async {
                count(&node.client, &node.base, code).await == n
            })
            .await;
        }
    }
    let before = get(&node, "/api/links/old/stats").await;
    assert_eq!(before["totals"]["clicks"], 5, "{before}");

    eventually(WAIT, "the old clicks expire, the last stays", || async {
        listed(&node, "old").await == [5]
    })
    .await;
    assert_eq!(
        count(&node.client, &node.base, "old").await,
        5,
        "the count stays"
    );
    assert_eq!(
        listed(&node, "watched").await,
        [5, 4, 3, 2, 1],
        "clicks no snapshot covers stay"
    );
    let after = get(&node, "/api/links/old/stats").await;
    assert_eq!(after["totals"], before["totals"], "the aggregates stay");
    assert_eq!(after["top"], before["top"]);
    let report = succeeds(&["check", "--nats", &nats.urls()]);
    assert!(
        report.contains("clicks: 6 (in 2 codes") && report.contains("result: sound"),
        "a log that starts after clicks its snapshot covers is sound: {report}"
    );

    // Counting goes on from the count.
    assert_eq!(click(&node.client, &node.base, "old").await, 302);
    eventually(WAIT, "the next click is number 6", || async {
        count(&node.client, &node.base, "old").await == 6
    })
    .await;
    let more = get(&node, "/api/links/old/stats").await;
    assert_eq!(more["totals"]["clicks"], 6, "{more}");
    Ok(())
}
