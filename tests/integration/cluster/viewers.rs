//! Live frames across nodes: a viewer on one node sees the clicks made through another, in
//! order, with the same ids on every node, also after reconnecting to a third with
//! `Last-Event-ID`.

use std::time::Duration;

use super::{Nats, Node, ONE_AT_A_TIME, click, consistent, create};
use crate::support::{SseClient, TestResult};

/// Reads data frames until one carries `count`; checks each id equals its count and that
/// counts never go back. Returns the ids seen.
async fn follow_to(stream: &mut SseClient, count: u64, floor: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut last = floor;
    while last < count {
        let event = stream
            .next_data(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("a frame up to {count} (last seen {last}, ids {seen:?})"));
        let got = event.count().expect("a frame carries clickCount");
        assert_eq!(event.id, Some(got), "the id is the count");
        assert!(got >= last, "counts never go back: {got} after {last}");
        last = got;
        seen.push(got);
    }
    assert_eq!(last, count, "the last frame carries every click");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_one_node_sees_clicks_made_through_another_also_after_a_reconnect() -> TestResult
{
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(3);
    let a = Node::start(&nats, "a", &[]);
    let b = Node::start(&nats, "b", &[]);
    let c = Node::start(&nats, "c", &[]);
    create(&a.client, &a.base, "watched").await;

    // A viewer on C; clicks through A.
    let mut on_c = SseClient::open(&c.client, &c.url("/realtime/watched"), None).await;
    assert_eq!(on_c.status, 200);
    let first = on_c
        .next_data(Duration::from_secs(10))
        .await
        .expect("the state on connect");
    assert_eq!(first.count(), Some(0));
    for _ in 0..20 {
        assert_eq!(click(&a.client, &a.base, "watched").await, 302);
    }
    let ids = follow_to(&mut on_c, 20, 0).await;
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in order, no state sent twice: {ids:?}"
    );
    drop(on_c);

    // The browser comes back to B with the last id it saw; more clicks through A meanwhile
    // and after.
    for _ in 0..5 {
        assert_eq!(click(&a.client, &a.base, "watched").await, 302);
    }
    let mut on_b = SseClient::open(&b.client, &b.url("/realtime/watched"), Some("20")).await;
    assert_eq!(on_b.status, 200);
    for _ in 0..10 {
        assert_eq!(click(&a.client, &a.base, "watched").await, 302);
    }
    let ids = follow_to(&mut on_b, 35, 20).await;
    assert!(
        ids.first().is_some_and(|&id| id > 20) && ids.windows(2).all(|w| w[0] < w[1]),
        "after id 20 only later counts, each once: {ids:?}"
    );

    // Every node reads the same count, events and aggregates from the stream.
    for node in [&a, &b, &c] {
        assert_eq!(consistent(&node.client, &node.base, "watched").await, 35);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_through_two_nodes_at_once_are_numbered_once_each() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let a = Node::start(&nats, "a", &[]);
    let b = Node::start(&nats, "b", &[]);
    create(&a.client, &a.base, "raced").await;
    // No balancer: both nodes number the same code at once; JetStream's expected sequence
    // lets only one of them store each batch, the other numbers its clicks after it.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (client, base) = (node.client.clone(), node.base.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for _ in 0..50 {
                if click(&client, &base, "raced").await == 302 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await?;
    }
    assert_eq!(answered, 400);
    // A node that did not number the last clicks learns of them when its actor is
    // superseded or restarts: read through a node that starts now.
    let reader = Node::start(&nats, "reader", &[]);
    super::eventually(Duration::from_secs(10), "every click stored", || async {
        super::count(&reader.client, &reader.base, "raced").await == 400
    })
    .await;
    assert_eq!(consistent(&reader.client, &reader.base, "raced").await, 400);
    Ok(())
}

fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_deletions_on_one_node_reach_the_others() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let hold = ["--deleted-code-hold", "0s"];
    let a = Node::start(&nats, "a", &hold);
    let b = Node::start(&nats, "b", &hold);
    create(&a.client, &a.base, "moving").await;
    // B has a live actor and a cached copy of the link.
    for _ in 0..3 {
        assert_eq!(click(&b.client, &b.base, "moving").await, 302);
    }
    let mut on_b = SseClient::open(&b.client, &b.url("/realtime/moving"), None).await;
    follow_to(&mut on_b, 3, 0).await;

    // A new target set through A is where B sends the next click.
    let res = a
        .client
        .patch(a.url("/api/links/moving"))
        .bearer_auth(crate::support::KEY)
        .json(&serde_json::json!({"url": "https://example.org/new"}))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    super::eventually(
        Duration::from_secs(10),
        "B redirects to the new target",
        || async {
            let res = b.client.get(b.url("/moving")).send().await;
            res.is_ok_and(|r| location(&r) == "https://example.org/new")
        },
    )
    .await;

    // Deleted through A: B's viewer gets the `deleted` event, B answers 404.
    let res = a
        .client
        .delete(a.url("/api/links/moving"))
        .bearer_auth(crate::support::KEY)
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    let deleted = on_b.next_named("deleted", Duration::from_secs(10)).await;
    assert!(deleted.is_some(), "B's viewer is told the link is gone");
    super::eventually(Duration::from_secs(10), "B answers 404", || async {
        click(&b.client, &b.base, "moving").await == 404
    })
    .await;

    // Made again (the hold is 0 here) through B: it starts from nothing on both nodes.
    create(&b.client, &b.base, "moving").await;
    assert_eq!(click(&a.client, &a.base, "moving").await, 302);
    // A read on the node that counted the click waits for it; another node sees it once A
    // has stored it (default durability answers first).
    assert_eq!(consistent(&a.client, &a.base, "moving").await, 1);
    super::eventually(Duration::from_secs(10), "B reads the new count", || async {
        super::count(&b.client, &b.base, "moving").await == 1
    })
    .await;
    Ok(())
}
