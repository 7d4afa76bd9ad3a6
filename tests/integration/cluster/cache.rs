//! A node keeps a bounded cache of links, not a copy of every link: with `--link-cache 16`
//! and 200 links made through another node, every link redirects to its own target, a
//! second pass over them is read from the bucket again (the misses show in `/metrics`), the
//! listing still has every link in order, and a change or a deletion made on the other node
//! is what this node answers, cached or not.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Nats, Node, ONE_AT_A_TIME, create, eventually, free_port};
use crate::support::{KEY, TestResult, client};

const LINKS: usize = 200;

/// How many messages clients have sent the server so far (each bucket read is one), from its
/// monitoring endpoint at `monitor`.
async fn messages_in(client: &reqwest::Client, monitor: u16) -> u64 {
    let varz: Value = client
        .get(format!("http://127.0.0.1:{monitor}/varz"))
        .send()
        .await
        .expect("/varz")
        .json()
        .await
        .expect("/varz is JSON");
    varz["in_msgs"].as_u64().expect("in_msgs")
}

/// Where `code` redirects on `node` (its `Location`), or the status when it does not.
async fn target(client: &reqwest::Client, node: &Node, code: &str) -> Result<String, u16> {
    let res = client
        .head(node.url(&format!("/{code}")))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("HEAD sent");
    match res.headers().get("location") {
        Some(location) => Ok(location.to_str().unwrap_or_default().to_owned()),
        None => Err(res.status().as_u16()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_caches_few_links_and_answers_every_one_from_the_bucket() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let monitor = free_port();
    let nats = Nats::start_with(1, &format!("http: \"127.0.0.1:{monitor}\""));
    let a = Node::start(&nats, "a", &["--link-cache", "16"]);
    let b = Node::start(&nats, "b", &[]);
    let client = client();
    let codes: Vec<String> = (0..LINKS).map(|i| format!("k{i:04}")).collect();
    for code in &codes {
        create(&client, &b.base, code).await;
    }

    for pass in 0..2 {
        let misses = a.metric("linkpulse_link_cache_misses_total").await;
        let requests = messages_in(&client, monitor).await;
        for code in &codes {
            assert_eq!(
                target(&client, &a, code).await,
                Ok(format!("https://example.com/{code}")),
                "{code}, pass {pass}"
            );
        }
        let read = a.metric("linkpulse_link_cache_misses_total").await - misses;
        // 16 places for 200 links: nearly every lookup of a pass goes to the bucket.
        assert!(
            read >= (LINKS - 32) as u64,
            "pass {pass}: only {read} of {LINKS} lookups missed a cache of 16"
        );
        // And each miss is a read of the links bucket: the node holds no copy of every link.
        let asked = messages_in(&client, monitor).await - requests;
        assert!(
            asked >= (LINKS - 32) as u64,
            "pass {pass}: {asked} requests to the server for {read} misses"
        );
    }
    // The same link looked up again at once is a hit.
    let hits = a.metric("linkpulse_link_cache_hits_total").await;
    target(&client, &a, "k0001").await.ok();
    assert_eq!(
        a.metric("linkpulse_link_cache_hits_total").await,
        hits + 1,
        "a link just read is answered by the cache"
    );

    // The listing on node a: every link, newest first, a page at a time.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = a.url("/api/links?limit=50");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(KEY)
            .send()
            .await?
            .json()
            .await?;
        for link in page["links"].as_array().ok_or("a links array")? {
            listed.push(link["code"].as_str().unwrap_or_default().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut newest_first = codes.clone();
    newest_first.reverse();
    assert_eq!(
        listed, newest_first,
        "every link listed on node a, newest first"
    );

    // A change and a deletion made on node b: node a answers them.
    let res = client
        .patch(b.url("/api/links/k0007"))
        .bearer_auth(KEY)
        .json(&json!({"url": "https://example.com/changed"}))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let res = client
        .delete(b.url("/api/links/k0008"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    let (a, client) = (&a, &client);
    eventually(
        Duration::from_secs(10),
        "node a answers b's change and deletion",
        || async move {
            target(client, a, "k0007").await == Ok("https://example.com/changed".into())
                && target(client, a, "k0008").await == Err(404)
        },
    )
    .await;
    Ok(())
}
