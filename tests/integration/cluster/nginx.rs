//! The shipped balancer in front of three nodes: 64 clients on 10,000 codes (30,000 clicks)
//! with `LINKPULSE_SOAK=1`, 1,000 codes (3,000 clicks) in a plain `cargo test`; every count
//! exact on every path nginx takes a code to.

use std::{collections::HashMap, time::Duration};

use futures_util::{StreamExt, stream};

use super::{Nats, Nginx, Node, ONE_AT_A_TIME, click, create};
use crate::support::{KEY, TestResult, soak};

const CLIENTS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_sixty_four_clients_on_many_codes_through_nginx_count_exactly() -> TestResult {
    let code_count = soak(10_000, 1_000);
    let clicks = soak(30_000, 3_000);
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(3);
    let a = Node::start(&nats, "a", &[]);
    let b = Node::start(&nats, "b", &[]);
    let c = Node::start(&nats, "c", &[]);
    let nginx = Nginx::start(&[&a, &b, &c]);
    let client = crate::support::client();
    let codes: Vec<String> = (0..code_count).map(|i| format!("c{i:05}")).collect();
    stream::iter(&codes)
        .for_each_concurrent(CLIENTS, |code| {
            let (client, base) = (&client, &nginx.base);
            async move { create(client, base, code).await }
        })
        .await;

    // Each client clicks its own share of a fixed pseudo-random sequence of codes.
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let (codes, base, client) = (codes.clone(), nginx.base.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine: HashMap<String, u64> = HashMap::new();
            let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ t as u64;
            for _ in 0..clicks / CLIENTS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let code = &codes[(x % codes.len() as u64) as usize];
                assert_eq!(click(&client, &base, code).await, 302, "{code}");
                *mine.entry(code.clone()).or_default() += 1;
            }
            mine
        }));
    }
    let mut expected: HashMap<String, u64> = HashMap::new();
    for task in tasks {
        for (code, n) in task.await? {
            *expected.entry(code).or_default() += n;
        }
    }
    // Every code read back through nginx (the node that counted it) and through a node
    // nginx does not send it to.
    let wrong: Vec<String> = stream::iter(&codes)
        .map(|code| {
            let (client, nginx, a) = (&client, &nginx, &a);
            let want = expected.get(code).copied().unwrap_or(0);
            async move {
                let read = |url: String| async move {
                    let body: serde_json::Value = client
                        .get(url)
                        .bearer_auth(KEY)
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    body["clickCount"].as_u64()
                };
                let through = read(nginx.url(&format!("/api/links/{code}"))).await;
                let direct = read(a.url(&format!("/api/links/{code}"))).await;
                (through != Some(want) || direct != Some(want)).then(|| {
                    format!("{code}: {through:?} through nginx, {direct:?} on a, of {want}")
                })
            }
        })
        .buffer_unordered(CLIENTS)
        .filter_map(|w| async move { w })
        .collect()
        .await;
    assert!(
        wrong.is_empty(),
        "{} of {code_count} codes with a wrong count, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let total: u64 = expected.values().sum();
    assert_eq!(total, (clicks / CLIENTS * CLIENTS) as u64);
    Ok(())
}
