//! One first API key per cluster: three nodes started at once on an empty cluster, none given
//! `--initial-api-key`, make one key between them, printed by one node.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use super::{BIN, WAIT, succeeds};
use crate::{
    cluster::{Nats, ONE_AT_A_TIME},
    support::{TestResult, client, eventually},
};

/// A node started with no key of its own, its standard output kept.
struct Bare {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
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
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
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
        let addr = node
            .listening
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("node {i} did not start"));
        bases.push(format!("http://{addr}"));
    }
    // What a node prints, it prints before it listens.
    std::thread::sleep(Duration::from_millis(200));
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
