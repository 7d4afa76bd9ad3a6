//! One first API key per cluster: three nodes started at once on an empty cluster, none given
//! `--initial-api-key`, make one key between them, printed by one node; a claim whose node
//! stored no key is taken over once it is old.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use async_nats::jetstream;

use super::{BIN, WAIT, succeeds};
use crate::{
    cluster::{Nats, ONE_AT_A_TIME},
    support::{TestResult, client, eventually},
};

/// A node started with no key of its own, its standard output kept.
struct Bare {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    listening: mpsc::Receiver<String>,
}

impl Bare {
    fn spawn(urls: &str, dir: &std::path::Path) -> Self {
        let mut command = Command::new(BIN);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LINKPULSE_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--nats",
                urls,
                "--data-dir",
            ])
            .arg(dir)
            .env("LINKPULSE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("linkpulse starts");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let kept = stdout.clone();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                kept.lock().expect("stdout lines").push(line);
            }
        });
        let (tx, listening) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let logged = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                logged.lock().expect("stderr lines").push(line.clone());
                if let Some(at) = line.find("linkpulse listening address=") {
                    let addr = line[at + "linkpulse listening address=".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        Self {
            child,
            stdout,
            stderr,
            listening,
        }
    }

    fn printed(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lines").clone()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_together_make_one_first_key() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let urls = nats.urls();
    let nodes: Vec<Bare> = (0..3)
        .map(|i| Bare::spawn(&urls, &nats.dir.path().join(format!("bare-{i}"))))
        .collect();
    let deadline = Instant::now() + WAIT;
    let mut bases = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let addr = node.listening.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "node {i} did not start: {:?}",
                node.stderr.lock().expect("stderr lines")
            )
        });
        bases.push(format!("http://{addr}"));
    }
    // What a node prints, it prints before it listens: read by now, or within moments.
    eventually(WAIT, "a node prints the first key", || async {
        nodes.iter().any(|n| printed_a_key(n).is_some())
    })
    .await;
    std::thread::sleep(Duration::from_millis(300));
    let printed: Vec<Vec<String>> = nodes.iter().map(Bare::printed).collect();
    let makers: Vec<&Vec<String>> = printed
        .iter()
        .filter(|lines| lines.iter().any(|l| l.contains("made its first API key")))
        .collect();
    assert_eq!(makers.len(), 1, "one node printed a key: {printed:?}");
    let key = makers[0][1].trim().to_owned();
    assert!(key.starts_with("lp_"), "{:?}", makers[0]);
    assert!(
        makers[0][2].contains(&format!("linkpulse keys create --admin --nats {urls}")),
        "says how to make another in this cluster: {:?}",
        makers[0]
    );

    let listed = succeeds(&["keys", "list", "--nats", &urls]);
    assert_eq!(
        listed.lines().count(),
        1,
        "one key in the cluster: {listed}"
    );
    assert!(listed.contains("\"name\":\"first\""), "{listed}");
    // The printed key is the one, on every node.
    let client = client();
    for base in &bases {
        eventually(WAIT, "every node takes the first key", || async {
            client
                .get(format!("{base}/api/links"))
                .bearer_auth(&key)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    Ok(())
}

/// Starts a bare node and waits until it listens; returns it and its base URL.
fn started(urls: &str, dir: &std::path::Path) -> (Bare, String) {
    let node = Bare::spawn(urls, dir);
    let addr = node
        .listening
        .recv_timeout(WAIT)
        .expect("the node starts and listens");
    std::thread::sleep(Duration::from_millis(200));
    (node, format!("http://{addr}"))
}

fn printed_a_key(node: &Bare) -> Option<String> {
    let lines = node.printed();
    let at = lines
        .iter()
        .position(|l| l.contains("made its first API key"))?;
    lines.get(at + 1).map(|k| k.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_key_claimed_by_a_node_that_stored_none_is_made_later_by_another() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let urls = nats.urls();
    // A node given its key claims the first key with it; with that key revoked, the cluster
    // holds a claim and no key, as when a node stops between its claim and storing its key.
    let given = crate::cluster::Node::start(&nats, "given", &[]);
    drop(given);
    let listed = succeeds(&["keys", "list", "--nats", &urls]);
    let id = listed
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the given key is listed")
        .to_owned();
    succeeds(&["keys", "revoke", &id, "--nats", &urls]);

    // While the claim is recent, a node started without a key makes none (its claimant may
    // be storing one).
    let (early, _) = started(&urls, &nats.dir.path().join("early"));
    assert_eq!(printed_a_key(&early), None, "{:?}", early.printed());
    drop(early);

    // The claim made a minute ago: abandoned, so the next node makes the first key.
    let js = jetstream::new(async_nats::connect(nats.url(0)).await?);
    let mut old = vec![0u8; 32];
    old.extend_from_slice(&(now_ms() - 60_000).to_be_bytes());
    js.publish("$KV.lp_meta.first-key", old.into())
        .await?
        .await?;
    let (late, base) = started(&urls, &nats.dir.path().join("late"));
    let key = printed_a_key(&late).expect("the node makes and prints the first key");
    let status = client()
        .get(format!("{base}/api/links"))
        .bearer_auth(&key)
        .send()
        .await?
        .status();
    assert_eq!(status, 200, "the printed key is valid");
    let listed = succeeds(&["keys", "list", "--nats", &urls]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
