//! `linkpulse migrate`: a one-machine installation moved into a cluster reads the same from a
//! node: counts, clicks (numbered as they were), aggregates; numbering goes on from there.

use std::process::Command;

use serde_json::Value;

use super::{BIN, Nats, Node, ONE_AT_A_TIME, click, consistent};
use crate::support::{KEY, TestResult, spawn_app};

async fn stats(client: &reqwest::Client, base: &str, code: &str) -> Value {
    client
        .get(format!("{base}/api/links/{code}/stats"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("stats sent")
        .json()
        .await
        .expect("JSON stats")
}

async fn clicks(client: &reqwest::Client, base: &str, code: &str) -> Vec<Value> {
    let body: Value = client
        .get(format!("{base}/api/links/{code}/clicks?limit=1000"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("clicks sent")
        .json()
        .await
        .expect("JSON clicks");
    body["clicks"].as_array().cloned().expect("a clicks array")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_installation_reads_the_same_from_a_cluster_node() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    let agents = [
        "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
        "curl/8.0",
    ];
    let made = [("moved", 30), ("few", 5), ("none", 0)];
    for (code, n) in made {
        app.create_link(code).await;
        for i in 0..n {
            let res = app
                .client
                .get(app.url(&format!("/{code}")))
                .header("user-agent", agents[i % 2])
                .send()
                .await?;
            assert_eq!(res.status(), 302);
        }
    }
    // A domain with a link on it moves too.
    let res = app
        .client
        .post(app.url("/api/domains"))
        .bearer_auth(crate::support::KEY)
        .json(&serde_json::json!({"name": "go.example.test", "rootUrl": "https://example.com/"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let res = app
        .create(
            serde_json::json!({"url": "https://example.com/branded", "code": "moved",
                                   "domain": "go.example.test"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let mut before = Vec::new();
    for (code, _) in made {
        let count = consistent(&app.client, &app.base, code).await;
        let stats = stats(&app.client, &app.base, code).await;
        let listed = clicks(&app.client, &app.base, code).await;
        before.push((code, count, stats, listed));
    }
    let dir = app.stop().await;

    let nats = Nats::start(1);
    let out = Command::new(BIN)
        .arg("migrate")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--nats", &nats.urls()])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 api keys, 1 domains, 4 links, 35 clicks"),
        "the summary says what moved: {stdout}"
    );

    let node = Node::start(&nats, "a", &[]);
    for (code, count, stats_before, listed_before) in &before {
        assert_eq!(consistent(&node.client, &node.base, code).await, *count);
        let stats_after = stats(&node.client, &node.base, code).await;
        assert_eq!(stats_after["totals"], stats_before["totals"], "{code}");
        assert_eq!(stats_after["top"], stats_before["top"], "{code}");
        assert_eq!(
            &clicks(&node.client, &node.base, code).await,
            listed_before,
            "{code}"
        );
    }
    let res = node
        .client
        .get(node.url("/moved"))
        .header("host", "go.example.test")
        .send()
        .await?;
    assert_eq!(res.headers()["location"], "https://example.com/branded");
    let res = node
        .client
        .get(node.url("/"))
        .header("host", "go.example.test")
        .send()
        .await?;
    assert_eq!(res.headers()["location"], "https://example.com/");
    // Numbering goes on after the moved clicks.
    assert_eq!(click(&node.client, &node.base, "moved").await, 302);
    assert_eq!(consistent(&node.client, &node.base, "moved").await, 31);

    // A second migration into the same cluster is refused, naming why.
    let again = Command::new(BIN)
        .arg("migrate")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--nats", &nats.urls()])
        .output()?;
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds"), "{stderr}");
    Ok(())
}
