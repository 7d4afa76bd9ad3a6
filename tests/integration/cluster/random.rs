//! Clicks of a few codes sent to any of three nodes at random (nginx `random;`, not by code),
//! in strict durability: nodes race to number the same codes' clicks on replicated streams,
//! and every click is still answered `302` and counted once, on every node. A publish refused
//! because another node stored the code's clicks first is not an outage: no node's
//! `/healthz` says NATS is unavailable meanwhile. Many codes with many short messages each
//! make actors start by streaming long logs, where a consumer made again must not give a
//! click twice (an actor that read one twice failed to start, and its clicks were `503`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::Duration,
};

use futures_util::{StreamExt, stream};

use super::{Nats, Nginx, Node, ONE_AT_A_TIME, click, consistent, create};
use crate::support::{TestResult, client};

const CODES: usize = 100;
const CLICKS: usize = 12_000;
const CLIENTS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clicks_of_one_code_taken_by_every_node_at_once_are_each_answered_and_counted_once()
-> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(3);
    let strict = ["--durability", "strict"];
    let nodes = [
        Node::start(&nats, "a", &strict),
        Node::start(&nats, "b", &strict),
        Node::start(&nats, "c", &strict),
    ];
    let nginx = Nginx::start_random(&[&nodes[0], &nodes[1], &nodes[2]]);
    let client = client();
    let codes: Vec<String> = (0..CODES).map(|i| format!("race{i}")).collect();
    for code in &codes {
        create(&client, &nginx.base, code).await;
    }

    // Each node's health, asked every 20 ms while the clicks go on.
    let done = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (client, url, done) = (client.clone(), node.url("/healthz"), done.clone());
            tokio::spawn(async move {
                let mut said = Vec::new();
                while !done.load(SeqCst) {
                    if let Ok(res) = client
                        .get(&url)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await
                        && res.status() != 200
                    {
                        said.push(res.text().await.unwrap_or_default());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                said
            })
        })
        .collect();
    let statuses: Vec<u16> = stream::iter(0..CLICKS)
        .map(|i| {
            let (client, base, code) = (&client, &nginx.base, &codes[i % CODES]);
            async move { click(client, base, code).await }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    done.store(true, SeqCst);
    for (node, watcher) in nodes.iter().zip(watchers) {
        let said = watcher.await.expect("a health watcher");
        assert!(
            said.is_empty(),
            "node {} said it was not healthy {} times, first: {}",
            node.addr,
            said.len(),
            said[0]
        );
    }
    let others: Vec<&u16> = statuses.iter().filter(|s| **s != 302).collect();
    assert!(
        others.is_empty(),
        "{} of {CLICKS} clicks answered other than 302: {:?}",
        others.len(),
        others.iter().take(10).collect::<Vec<_>>()
    );
    for node in &nodes {
        let mut total = 0;
        for code in &codes {
            total += consistent(&client, &node.base, code).await;
        }
        assert_eq!(total as usize, CLICKS, "the counts on {}", node.addr);
    }
    Ok(())
}
