//! The way back from `migrate`: a fjall store migrated into a cluster, clicked there, exported
//! with `export --nats` and imported into a fresh fjall directory reads the same as the
//! cluster: links, counts, every click, totals and top lists.

use serde_json::Value;

use super::{WAIT, succeeds};
use crate::{
    cluster::{Nats, Node, ONE_AT_A_TIME, click, count, create},
    support::{KEY, TestResult, client, eventually, spawn_app, spawn_with},
};

const AGENTS: [&str; 2] = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "curl/8.0",
];

/// What a user reads of a code through `base`: the link (without the URLs naming the
/// server), its clicks, its stats' totals and top lists.
async fn readout(client: &reqwest::Client, base: &str, code: &str) -> Value {
    let get = |path: String| async move {
        let res = client
            .get(format!("{base}{path}"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("request sent");
        assert_eq!(res.status(), 200, "{path} through {base}");
        res.json::<Value>().await.expect("a JSON answer")
    };
    let mut link = get(format!("/api/links/{code}")).await;
    for field in ["shortUrl", "statsUrl", "realtimeUrl", "qrUrl"] {
        link.as_object_mut().expect("a link object").remove(field);
    }
    let clicks = get(format!("/api/links/{code}/clicks?limit=1000")).await["clicks"].clone();
    let stats = get(format!("/api/links/{code}/stats")).await;
    serde_json::json!({
        "link": link,
        "clicks": clicks,
        "totals": stats["totals"],
        "top": stats["top"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_exported_and_imported_into_fjall_reads_the_same() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let app = spawn_app().await;
    for (code, n) in [("moved", 12), ("few", 3), ("none", 0)] {
        app.create_link(code).await;
        for i in 0..n {
            let res = app
                .client
                .get(app.url(&format!("/{code}")))
                .header("user-agent", AGENTS[i % 2])
                .send()
                .await?;
            assert_eq!(res.status(), 302);
        }
    }
    eventually(WAIT, "the fjall clicks are stored", || async {
        app.count("moved").await == 12
    })
    .await;
    let dir = app.stop().await;

    let nats = Nats::start(1);
    let urls = nats.urls();
    succeeds(&[
        "migrate",
        "--data-dir",
        &dir.path().display().to_string(),
        "--nats",
        &urls,
    ]);
    let node = Node::start(&nats, "a", &[]);
    // Clicks and a link made on the cluster.
    create(&node.client, &node.base, "fresh").await;
    for (code, n, total) in [("moved", 5, 17), ("fresh", 4, 4)] {
        for i in 0..n {
            let res = node
                .client
                .get(node.url(&format!("/{code}")))
                .header("user-agent", AGENTS[i % 2])
                .send()
                .await?;
            assert_eq!(res.status(), 302);
        }
        eventually(WAIT, "the cluster's clicks are stored", || async {
            count(&node.client, &node.base, code).await == total
        })
        .await;
    }
    assert_eq!(click(&node.client, &node.base, "few").await, 302);
    eventually(WAIT, "the click on few is stored", || async {
        count(&node.client, &node.base, "few").await == 4
    })
    .await;
    let codes = ["moved", "few", "none", "fresh"];
    let mut cluster = Vec::new();
    for code in codes {
        cluster.push(readout(&node.client, &node.base, code).await);
    }

    let file = nats.dir.path().join("cluster.jsonl");
    let file = file.display().to_string();
    let out = super::linkpulse(&["export", "--nats", &urls, "--output", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("exported 4 links, 25 clicks"),
        "the summary says what was written: {summary}"
    );
    let fresh = tempfile::tempdir()?;
    let imported = succeeds(&[
        "import",
        "--data-dir",
        &fresh.path().display().to_string(),
        "--input",
        &file,
    ]);
    assert!(
        imported.contains("imported 4 links, 25 clicks"),
        "{imported}"
    );
    succeeds(&["check", "--data-dir", &fresh.path().display().to_string()]);

    let back = spawn_with(Some(fresh), |_| {}).await;
    let client = client();
    for (code, on_cluster) in codes.iter().zip(&cluster) {
        assert_eq!(
            &readout(&client, &back.base, code).await,
            on_cluster,
            "{code} reads the same from the imported fjall store"
        );
    }
    // Numbering goes on in fjall after the cluster's clicks.
    assert_eq!(back.click("moved").await.status(), 302);
    eventually(WAIT, "numbering goes on", || async {
        back.count("moved").await == 18
    })
    .await;
    back.stop().await;
    Ok(())
}
