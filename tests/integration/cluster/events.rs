//! The events feed in a cluster: a change made on one node reaches a watcher on another, its
//! clicks' counts too, and a watcher that comes back to any node with `Last-Event-ID` is sent
//! what it missed, numbered alike everywhere (the audit log is in JetStream).

use std::time::Duration;

use serde_json::json;

use super::{Nats, Node, ONE_AT_A_TIME, click, create};
use crate::support::{KEY, SseClient, TestResult};

const WAIT: Duration = Duration::from_secs(30);

async fn feed(node: &Node, last: Option<&str>) -> SseClient {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {KEY}").parse().expect("a header"),
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    let stream = SseClient::open(&client, &node.url("/api/events"), last).await;
    assert_eq!(stream.status, 200);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_and_its_counts_reach_a_watcher_on_another_node_and_resume_anywhere() -> TestResult
{
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let a = Node::start(&nats, "a", &[]);
    let b = Node::start(&nats, "b", &[]);
    let mut on_b = feed(&b, None).await;
    on_b.next_named("hello", WAIT).await.ok_or("hello")?;

    create(&a.client, &a.base, "spread").await;
    let created = on_b
        .next_named("link.created", WAIT)
        .await
        .ok_or("the creation on a reaches b")?;
    let created_id = created.id.ok_or("an id")?;
    assert_eq!(
        created.data.as_ref().map(|d| d["code"].clone()),
        Some(json!("spread"))
    );

    // Clicks counted on node a: b's watcher sees the count reach them.
    for _ in 0..40 {
        assert_eq!(click(&a.client, &a.base, "spread").await, 302);
    }
    let mut last = 0;
    while last < 40 {
        let counts = on_b.next_named("counts", WAIT).await.ok_or("counts on b")?;
        last = counts
            .data
            .as_ref()
            .and_then(|d| {
                d["links"]
                    .as_array()?
                    .iter()
                    .find(|l| l["code"] == "spread")?["clickCount"]
                    .as_u64()
            })
            .unwrap_or(last);
    }
    assert_eq!(last, 40);

    // A change on b while nobody watches; coming back on a and on b with the creation's id
    // replays it, under the same id on both.
    drop(on_b);
    let res = b
        .client
        .patch(b.url("/api/links/spread"))
        .bearer_auth(KEY)
        .json(&json!({"title": "spread far"}))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let mut ids = Vec::new();
    for node in [&a, &b] {
        let mut resumed = feed(node, Some(&created_id.to_string())).await;
        let updated = resumed
            .next_named("link.updated", WAIT)
            .await
            .ok_or("the missed change is replayed")?;
        assert_eq!(
            updated.data.as_ref().map(|d| d["link"]["title"].clone()),
            Some(json!("spread far"))
        );
        ids.push(updated.id.ok_or("an id")?);
    }
    assert!(
        ids[0] > created_id && ids[0] == ids[1],
        "{created_id} {ids:?}"
    );
    // The audit log reads the same from either node.
    for node in [&a, &b] {
        let page: serde_json::Value = node
            .client
            .get(node.url("/api/audit"))
            .bearer_auth(KEY)
            .send()
            .await?
            .json()
            .await?;
        let actions: Vec<&str> = page["entries"]
            .as_array()
            .ok_or("entries")?
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        assert_eq!(actions, ["link.updated", "link.created"]);
    }
    Ok(())
}
