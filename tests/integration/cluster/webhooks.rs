//! Webhooks in a cluster: one node delivers a webhook (it holds the webhook's lease in the
//! store), learning of the clicks every node stores; killed with SIGKILL while it delivers,
//! another node takes over from the stored cursor, and every stored click reaches the receiver.

use std::time::Duration;

use serde_json::json;

use super::{Nats, Node, ONE_AT_A_TIME, click, create};
use crate::support::TestResult;
use crate::webhooks::{Receiver, every_click_came, free_port, make_webhook, stored_counts, until};

const LINKS: usize = 50;
const WAIT: Duration = Duration::from_secs(120);

async fn clicks_on(nodes: &[&Node], n: usize) {
    for i in 0..n {
        let node = nodes[i % LINKS % nodes.len()];
        assert_eq!(
            click(&node.client, &node.base, &format!("w{}", i % LINKS)).await,
            302
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_takes_over_a_webhook_whose_node_is_killed_and_nothing_is_missed() -> TestResult
{
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let flags = ["--webhook-allow-private"];
    let mut a = Node::start(&nats, "a", &flags);
    let mut b = Node::start(&nats, "b", &flags);
    for i in 0..LINKS {
        create(&a.client, &a.base, &format!("w{i}")).await;
    }
    let port = free_port();
    let (_, secret) = make_webhook(
        &a.client,
        &a.base,
        json!({"url": Receiver::url(port), "events": ["link.clicked"]}),
    )
    .await;
    let receiver = Receiver::start(port, &[&secret]);
    // Each link clicked on one node (as nginx routes by code), half on each.
    clicks_on(&[&a, &b], 3000).await;
    until(WAIT, "clicks from both nodes delivered", || {
        receiver.distinct() >= 500
    })
    .await;
    let (on_a, on_b) = (
        a.metric("linkpulse_webhook_messages_total").await,
        b.metric("linkpulse_webhook_messages_total").await,
    );
    assert!(
        (on_a > 0) != (on_b > 0),
        "one node delivers the webhook (messages: a {on_a}, b {on_b})"
    );
    let (dead, survivor) = if on_a > 0 { (&mut a, &b) } else { (&mut b, &a) };
    dead.kill();
    clicks_on(&[survivor], 1000).await;
    let stored = stored_counts(&survivor.client, &survivor.base, "127.0.0.1").await;
    let in_store: u64 = stored.values().sum();
    until(WAIT, "every stored click at the receiver", || {
        receiver.distinct() as u64 >= in_store
    })
    .await;
    let duplicates = every_click_came(&receiver.clicks(), &stored);
    assert!(
        survivor.metric("linkpulse_webhook_messages_total").await > 0,
        "the surviving node took the webhook over"
    );
    eprintln!("{in_store} clicks stored, all at the receiver; {duplicates} sent twice");
    Ok(())
}
