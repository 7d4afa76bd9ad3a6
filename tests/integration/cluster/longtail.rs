//! The long tail on a cluster: many distinct codes made and clicked once each through one
//! node (5,000 in `cargo test`, 50,000 with `LINKPULSE_SOAK=1`), 64 clients at once against a
//! backlog of 16 places. Every click is answered 302, none is dropped, and every code reads
//! exactly 1 on another node.

use std::time::Duration;

use futures_util::{StreamExt, stream};

use super::{Nats, Node, ONE_AT_A_TIME, click, count, create};
use crate::support::{TestResult, client, soak};

const CLIENTS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_distinct_codes_clicked_once_each_through_one_node_are_all_counted() -> TestResult {
    let n = soak(50_000, 5_000);
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(3);
    // A backlog far smaller than the clients at once: clicks wait for a place while the
    // writer stores the ones before them, instead of being dropped.
    let a = Node::start(
        &nats,
        "a",
        &["--create-rate-per-key", "0", "--click-backlog", "16"],
    );
    let b = Node::start(&nats, "b", &[]);
    let client = client();
    let codes: Vec<String> = (0..n).map(|i| format!("t{i:06}")).collect();
    stream::iter(&codes)
        .for_each_concurrent(CLIENTS, |code| {
            let (client, base) = (&client, &a.base);
            async move { create(client, base, code).await }
        })
        .await;

    let not_redirected: Vec<(String, u16)> = stream::iter(&codes)
        .map(|code| {
            let (client, base) = (&client, &a.base);
            async move { (code.clone(), click(client, base, code).await) }
        })
        .buffer_unordered(CLIENTS)
        .filter(|(_, status)| std::future::ready(*status != 302))
        .collect()
        .await;
    assert!(
        not_redirected.is_empty(),
        "answered other than 302: {not_redirected:?}"
    );
    let dropped = a.metric("linkpulse_clicks_dropped_total").await;
    assert_eq!(dropped, 0, "clicks dropped on node a");
    // Node a has stored every click it took (its backlog is empty) before b reads them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while a.metric("linkpulse_backlog_clicks").await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "node a's backlog did not empty"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let wrong: Vec<(String, u64)> = stream::iter(&codes)
        .map(|code| {
            let (client, base) = (&client, &b.base);
            async move { (code.clone(), count(client, base, code).await) }
        })
        .buffer_unordered(CLIENTS)
        .filter(|(_, n)| std::future::ready(*n != 1))
        .collect()
        .await;
    assert!(
        wrong.is_empty(),
        "{} codes not at 1 on node b, e.g. {:?}",
        wrong.len(),
        wrong.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}
