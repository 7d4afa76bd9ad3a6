//! The promises one node keeps, kept by the cluster too: a viewer on any node keeps its stream
//! whichever node takes the clicks; a JetStream stall ends with every held click stored, in
//! messages the servers take; a deletion that could not be made leaves the link working; and
//! clicks held by a node cut off never count for a link deleted (and made again) meanwhile.

use std::time::{Duration, Instant};

use super::{Nats, Node, ONE_AT_A_TIME, click, consistent, count, create};
use crate::support::{KEY, SseClient, TestResult, eventually};

/// Sends `n` clicks to `base` from `clients` concurrent clients; every one must be a 302.
async fn clicks(client: &reqwest::Client, base: &str, code: &str, n: usize, clients: usize) {
    let each = n / clients;
    let runs = (0..clients).map(|i| {
        let (client, base, code) = (client.clone(), base.to_owned(), code.to_owned());
        let mine = if i == 0 {
            n - each * (clients - 1)
        } else {
            each
        };
        tokio::spawn(async move {
            for _ in 0..mine {
                assert_eq!(click(&client, &base, &code).await, 302);
            }
        })
    });
    for run in futures_util::future::join_all(runs).await {
        run.expect("a client ran");
    }
}

/// A link's count read through `node`, or `None` while it cannot answer (a JetStream
/// leader being elected).
async fn try_count(node: &Node, code: &str) -> Option<u64> {
    let res = node
        .client
        .get(node.url(&format!("/api/links/{code}")))
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    if res.status() != 200 {
        return None;
    }
    res.json::<serde_json::Value>().await.ok()?["clickCount"].as_u64()
}

/// Reads frames until one carries `count`: the stream must neither end nor go quiet.
async fn frame_with(stream: &mut SseClient, count: u64, what: &str) {
    let mut last = 0;
    while last < count {
        let event = stream
            .next_data(Duration::from_secs(15))
            .await
            .unwrap_or_else(|| {
                panic!("{what}: the stream ended or went quiet at {last} before {count}")
            });
        let got = event.count().expect("a frame carries clickCount");
        assert_eq!(event.id, Some(got), "the id is the count");
        assert!(got >= last, "counts never go back: {got} after {last}");
        last = got;
    }
    assert_eq!(last, count, "{what}: the last frame carries every click");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_on_any_node_keeps_its_stream_while_another_node_takes_the_clicks() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(3);
    let a = Node::start(&nats, "a", &[]);
    let b = Node::start(&nats, "b", &[]);
    create(&a.client, &a.base, "busy").await;
    clicks(&a.client, &a.base, "busy", 400, 16).await;
    let mut total = 400;
    let mut waits = Vec::new();
    for trial in 0..20 {
        // The viewer's node and the clicking node swap each trial, so each viewer meets an
        // actor that is stale, new, or was the one numbering.
        let (viewer, clicker) = if trial % 2 == 0 { (&b, &a) } else { (&a, &b) };
        let burst = {
            let (client, base) = (clicker.client.clone(), clicker.base.clone());
            tokio::spawn(async move { clicks(&client, &base, "busy", 160, 4).await })
        };
        let mut stream = SseClient::open(&viewer.client, &viewer.url("/realtime/busy"), None).await;
        assert_eq!(stream.status, 200);
        burst.await?;
        let sent = Instant::now();
        total += 160;
        frame_with(
            &mut stream,
            total,
            &format!("trial {trial}, clicks elsewhere"),
        )
        .await;
        waits.push(sent.elapsed());
        // Then clicks on the viewer's own node, whose writer last saw the code long ago.
        for _ in 0..5 {
            assert_eq!(click(&viewer.client, &viewer.base, "busy").await, 302);
        }
        total += 5;
        frame_with(&mut stream, total, &format!("trial {trial}, clicks here")).await;
    }
    waits.sort();
    eprintln!(
        "the final frame after the last click elsewhere, 20 trials: median {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
    for node in [&a, &b] {
        assert_eq!(consistent(&node.client, &node.base, "busy").await, total);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stall_on_a_busy_link_ends_with_every_held_click_stored() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    // A small message limit: a stall on a busy link holds more clicks of one code than one
    // message may carry.
    let nats = Nats::start_with(1, "max_payload: 65536");
    let a = Node::start(&nats, "a", &[]);
    create(&a.client, &a.base, "hot").await;
    clicks(&a.client, &a.base, "hot", 100, 4).await;
    eventually(Duration::from_secs(20), "100 clicks stored", || async {
        count(&a.client, &a.base, "hot").await == 100
    })
    .await;
    nats.signal(0, "STOP");
    // Answered at once (default durability) and held while the server is frozen.
    clicks(&a.client, &a.base, "hot", 3000, 16).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.signal(0, "CONT");
    // Creates and changes work again, and every held click is stored exactly once.
    eventually(
        Duration::from_secs(30),
        "a link can be made again",
        || async {
            a.client
                .post(a.url("/api/links"))
                .bearer_auth(KEY)
                .json(&serde_json::json!({"url": "https://example.com/after", "code": "after"}))
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .is_ok_and(|r| r.status() == 201 || r.status() == 409)
        },
    )
    .await;
    eventually(Duration::from_secs(30), "3,100 clicks stored", || async {
        count(&a.client, &a.base, "hot").await == 3100
    })
    .await;
    assert_eq!(consistent(&a.client, &a.base, "hot").await, 3100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_the_store_refused_leaves_the_link_working() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let a = Node::start(&nats, "a", &[]);
    create(&a.client, &a.base, "kept").await;
    assert_eq!(click(&a.client, &a.base, "kept").await, 302);
    // Nothing queued for the store: the deletion is refused, not held behind a publish.
    eventually(Duration::from_secs(20), "the click stored", || async {
        count(&a.client, &a.base, "kept").await == 1
    })
    .await;
    nats.signal(0, "STOP");
    let deleted = a
        .client
        .delete(a.url("/api/links/kept"))
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = deleted.status().as_u16();
    nats.signal(0, "CONT");
    assert!(
        status >= 500,
        "the deletion could not be stored, and says so: {status}"
    );
    // The store still has the link: so does this node.
    eventually(
        Duration::from_secs(20),
        "the link redirects again",
        || async { click(&a.client, &a.base, "kept").await == 302 },
    )
    .await;
    eventually(Duration::from_secs(20), "both clicks counted", || async {
        count(&a.client, &a.base, "kept").await == 2
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clicks_held_by_a_node_cut_off_never_count_for_a_link_deleted_meanwhile() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(3);
    let hold = ["--deleted-code-hold", "0s"];
    // Node a reaches server 0 only; node b the other two.
    let a = Node::start_on(&nats, &nats.url(0), "a", &hold);
    let b = Node::start_on(
        &nats,
        &format!("{},{}", nats.url(1), nats.url(2)),
        "b",
        &hold,
    );
    create(&b.client, &b.base, "cut").await;
    eventually(Duration::from_secs(20), "node a has the link", || async {
        click(&a.client, &a.base, "cut").await == 302
    })
    .await;
    // Someone watches on a: its actor stays, numbers the clicks and hands them to a's
    // writer, which holds them while its server is frozen.
    let mut viewer = SseClient::open(&a.client, &a.url("/realtime/cut"), None).await;
    assert_eq!(viewer.status, 200);
    eventually(Duration::from_secs(20), "the click stored", || async {
        try_count(&b, "cut").await == Some(1)
    })
    .await;

    frame_with(&mut viewer, 1, "the viewer on a").await;
    nats.signal(0, "STOP");
    for _ in 0..20 {
        assert_eq!(click(&a.client, &a.base, "cut").await, 302, "held on a");
    }
    // The link is deleted through b (once JetStream has a leader without server 0), and made
    // again by someone else.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tried = false;
    loop {
        let res = b
            .client
            .delete(b.url("/api/links/cut"))
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        // A `404` after an attempt that got no answer: that attempt deleted it.
        if res.is_ok_and(|r| r.status() == 204 || (tried && r.status() == 404)) {
            break;
        }
        tried = true;
        assert!(Instant::now() < deadline, "the deletion went through b");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = b
            .client
            .post(b.url("/api/links"))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"url": "https://example.com/new-owner", "code": "cut"}))
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        if res.is_ok_and(|r| r.status() == 201) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the link was made again through b"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    nats.signal(0, "CONT");

    // Node a reconnects and lets its held clicks go, counted as clicks of a deleted link.
    eventually(
        Duration::from_secs(60),
        "a's held clicks are let go",
        || async {
            a.metric("linkpulse_clicks_dropped_total{reason=\"link_deleted\"}")
                .await
                >= 20
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let now = loop {
        if let Some(now) = try_count(&b, "cut").await {
            break now;
        }
        assert!(Instant::now() < deadline, "the new link's count is read");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(now, 0, "the new link starts with no clicks of the old one");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_node_leaves_the_data_directory_of_a_running_server_alone() -> TestResult {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };
    let _one = ONE_AT_A_TIME.lock().await;
    // A server on the embedded store, answering `linkpulse keys` on its control socket.
    let server = crate::support::spawn_with(None, |_| {}).await;
    let dir = server.dir.path().to_owned();
    let keys_list = || {
        Command::new(super::BIN)
            .args(["keys", "list", "--data-dir"])
            .arg(&dir)
            .output()
            .expect("keys list runs")
    };
    assert!(keys_list().status.success(), "the server answers keys list");
    // A cluster node started with the same --data-dir (as a unit file copied between hosts
    // might do) writes nothing there.
    let nats = Nats::start(1);
    let mut node = Command::new(super::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--nats", &nats.urls()])
        .args(["--initial-api-key", KEY, "--data-dir"])
        .arg(&dir)
        .env("LINKPULSE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = node.stderr.take().expect("stderr");
    let listening = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("linkpulse listening"))
    });
    let started = tokio::time::timeout(Duration::from_secs(60), listening).await;
    let listens = matches!(started, Ok(Ok(true)));
    let out = keys_list();
    let _ = node.kill();
    let _ = node.wait();
    assert!(listens, "the cluster node started");
    assert!(
        out.status.success(),
        "the server still answers keys list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
    Ok(())
}
