//! The commands and settings a one-machine installation has, against a cluster given with
//! `--nats`: `keys`, `check`, `export` (and back into fjall with `import`),
//! `--click-retention-days`, and one first API key however the nodes start. Real
//! `nats-server` and `linkpulse` processes, as in `cluster/`.

mod first_key;
mod retention;
mod round_trip;

use std::{
    process::{Command, Output},
    time::Duration,
};

use async_nats::jetstream::{self, stream};
use serde_json::Value;

use crate::{
    cluster::{Nats, Node, ONE_AT_A_TIME, click, count, create},
    support::{KEY, TestResult, eventually},
};

const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");
const WAIT: Duration = Duration::from_secs(30);

/// Runs `linkpulse ARGS` with no `LINKPULSE_*` setting from the environment running the
/// tests, quiet logs.
pub fn linkpulse(args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LINKPULSE_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("LINKPULSE_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .expect("linkpulse runs")
}

/// Standard output of a command that must succeed.
pub fn succeeds(args: &[&str]) -> String {
    let out = linkpulse(args);
    assert!(
        out.status.success(),
        "linkpulse {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status of `GET /api/links` with `key` on `node`.
async fn listing_status(node: &Node, key: &str) -> u16 {
    node.client
        .get(node.url("/api/links"))
        .bearer_auth(key)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_and_revoked_with_nats_reach_a_running_node() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let node = Node::start(&nats, "a", &[]);
    let urls = nats.urls();

    let made = succeeds(&["keys", "create", "--nats", &urls, "--name", "dash"]);
    let key = made.trim().to_owned();
    assert!(
        key.starts_with("lp_"),
        "create prints the key alone: {made}"
    );
    eventually(WAIT, "the running node takes the new key", || async {
        listing_status(&node, &key).await == 200
    })
    .await;

    let listed: Vec<Value> = succeeds(&["keys", "list", "--nats", &urls])
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    let names: Vec<&str> = listed.iter().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(names, ["initial", "dash"], "oldest first: {listed:?}");
    let id = listed[1]["id"].as_str().expect("an id").to_owned();
    assert_eq!(listed[1]["scope"], "links");

    let revoked = succeeds(&["keys", "revoke", &id, "--nats", &urls]);
    assert_eq!(revoked, format!("revoked {id}\n"));
    eventually(WAIT, "the running node refuses the revoked key", || async {
        listing_status(&node, &key).await == 401
    })
    .await;
    assert_eq!(listing_status(&node, KEY).await, 200, "the other key stays");

    let unknown = linkpulse(&["keys", "revoke", "0000000000000000", "--nats", &urls]);
    assert!(!unknown.status.success());
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(said.contains("no key with id '0000000000000000'"), "{said}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_nats_passes_on_a_sound_cluster_and_names_a_gap() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let urls = nats.urls();
    // Nothing there yet: refused, saying so, and nothing made.
    let empty = linkpulse(&["check", "--nats", &urls]);
    assert!(!empty.status.success());
    let said = String::from_utf8_lossy(&empty.stderr);
    assert!(said.contains("there is no linkpulse store"), "{said}");

    // The clicks stream made here as a node makes it, but letting this test delete a single
    // message (the nodes' own stream refuses that).
    let js = jetstream::new(async_nats::connect(nats.url(0)).await?);
    let clicks = js
        .create_stream(stream::Config {
            name: "LP_CLICKS".into(),
            subjects: vec!["lp.clicks.>".into()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let node = Node::start(&nats, "a", &[]);
    create(&node.client, &node.base, "gap").await;
    create(&node.client, &node.base, "whole").await;
    // One message per click: each is stored before the next is made.
    for n in 1..=3 {
        for code in ["gap", "whole"] {
            assert_eq!(click(&node.client, &node.base, code).await, 302);
            eventually(WAIT, "the click is stored", || async {
                count(&node.client, &node.base, code).await == n
            })
            .await;
        }
    }

    let report = succeeds(&["check", "--nats", &urls]);
    for line in [
        "api keys: 1\n",
        "links: 2\n",
        "clicks: 6 (in 2 codes",
        "result: sound\n",
    ] {
        assert!(report.contains(line), "{line:?} in {report}");
    }

    // The message holding the second click of `gap` goes.
    let subject = "lp.clicks.gap";
    let first = clicks
        .raw_message_builder()
        .sequence(1)
        .next_by_subject(subject)
        .send()
        .await?;
    let second = clicks
        .raw_message_builder()
        .sequence(first.sequence + 1)
        .next_by_subject(subject)
        .send()
        .await?;
    assert!(clicks.delete_message(second.sequence).await?);

    let broken = linkpulse(&["check", "--nats", &urls]);
    assert!(!broken.status.success(), "a gap fails the check");
    let said = String::from_utf8_lossy(&broken.stderr);
    assert!(
        said.contains("code gap: click number 3 where number 2 was due"),
        "the check says what is wrong and where: {said}"
    );
    assert!(broken.stdout.is_empty(), "no report of a sound store");
    Ok(())
}
