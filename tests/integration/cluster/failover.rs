//! A node killed under load: nginx moves its codes to the other nodes, which go on counting
//! from the stream. Strict durability loses no acknowledged click; the default loses at most
//! the clicks it had not stored (bounded by `--click-backlog`). Every node then reads the same
//! count, stored events and aggregates.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::{Nats, Nginx, Node, ONE_AT_A_TIME, click, consistent, count, create};
use crate::support::TestResult;

const CODES: usize = 24;
const CLIENTS: usize = 16;
const CLICKS_EACH: usize = 250;
const BACKLOG: u64 = 500;

/// Per code: clicks sent and clicks answered 302.
type Tally = HashMap<String, (u64, u64)>;

async fn load_and_kill(durability: &str, kill_servers: bool) -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nats = Nats::start(3);
    // A node killed: the backlog bound is what default durability may lose, kept small here.
    // A server killed: the nodes hold their clicks through JetStream's failover (a few
    // seconds), within the default bound, and lose none.
    let backlog = if kill_servers { "50000" } else { "500" };
    let args = ["--durability", durability, "--click-backlog", backlog];
    let mut a = Node::start(&nats, "a", &args);
    let b = Node::start(&nats, "b", &args);
    let c = Node::start(&nats, "c", &args);
    let nginx = Nginx::start(&[&a, &b, &c]);
    let codes: Vec<String> = (0..CODES).map(|i| format!("load{i}")).collect();
    for code in &codes {
        create(&a.client, &nginx.base, code).await;
    }
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let (codes, base, answered) = (codes.clone(), nginx.base.clone(), answered.clone());
        let client = crate::support::client();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            for i in 0..CLICKS_EACH {
                let code = &codes[(t * 7 + i * 13) % codes.len()];
                let status = click(&client, &base, code).await;
                let entry = tally.entry(code.clone()).or_default();
                entry.0 += 1;
                if status == 302 {
                    entry.1 += 1;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            tally
        }));
    }
    // A third of the way in, the crash.
    let third = (CLIENTS * CLICKS_EACH / 3) as u64;
    while answered.load(Ordering::Relaxed) < third {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if kill_servers {
        nats.kill(0);
    } else {
        a.kill();
    }
    let mut tally = Tally::new();
    for task in tasks {
        for (code, (sent, ok)) in task.await? {
            let entry = tally.entry(code).or_default();
            entry.0 += sent;
            entry.1 += ok;
        }
    }
    let (sent, acked): (u64, u64) = tally
        .values()
        .fold((0, 0), |(s, a), (ts, ta)| (s + ts, a + ta));
    // Most clicks were answered: the balancer moved the dead node's codes.
    assert!(
        acked * 10 >= sent * 9,
        "{acked} of {sent} clicks answered 302 after the crash"
    );
    // Let the survivors store what they hold, then read every code through each of them.
    let survivors: Vec<&Node> = if kill_servers {
        vec![&a, &b, &c]
    } else {
        vec![&b, &c]
    };
    let reader = survivors[0];
    let mut stored = 0;
    for code in &codes {
        let n = consistent(&reader.client, &nginx.base, code).await;
        for node in &survivors {
            super::eventually(
                Duration::from_secs(10),
                "every node reads the count",
                || async { count(&node.client, &node.base, code).await == n },
            )
            .await;
        }
        let (sent, ok) = tally[code];
        // A request nginx sent on after the node died may have been stored twice at most
        // once per client.
        assert!(
            n <= sent + CLIENTS as u64,
            "{code}: {n} stored of {sent} sent"
        );
        if durability == "strict" || kill_servers {
            assert!(n >= ok, "{code}: {n} stored, {ok} acknowledged");
        }
        stored += n;
    }
    if durability == "strict" || kill_servers {
        assert!(stored >= acked, "{stored} stored, {acked} acknowledged");
    } else {
        assert!(
            stored + BACKLOG >= acked,
            "default durability lost more than the backlog: {stored} stored, {acked} acknowledged"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_strict_load_loses_no_acknowledged_click() -> TestResult {
    load_and_kill("strict", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_default_load_loses_at_most_its_backlog() -> TestResult {
    load_and_kill("default", false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_three_nats_servers_killed_under_load_loses_nothing() -> TestResult {
    load_and_kill("default", true).await
}
