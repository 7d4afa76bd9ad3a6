//! Webhooks as receivers see them: a real HTTP receiver on loopback (`tests/webhooks/
//! receiver.py`) checks every signature with the Standard Webhooks library from PyPI and
//! writes down what it took; the tests compare that with what the store holds.

mod api;
mod delivery;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::KEY;

const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhooks/receiver.py");

pub fn free_port() -> u16 {
    crate::cluster::free_port()
}

/// The receiver process, its port and what it wrote.
pub struct Receiver {
    pub port: u16,
    out: PathBuf,
    secrets: Vec<String>,
    child: Option<Child>,
    _dir: TempDir,
}

impl Receiver {
    /// Starts a receiver on `port` that checks signatures with `secrets`.
    pub fn start(port: u16, secrets: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut receiver = Self {
            port,
            out: dir.path().join("received.jsonl"),
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            _dir: dir,
        };
        receiver.up();
        receiver
    }

    /// The URL a webhook posts to.
    pub fn url(port: u16) -> String {
        format!("http://127.0.0.1:{port}/hook")
    }

    /// Starts the process (again), on the same port and file.
    pub fn up(&mut self) {
        let mut command = Command::new("python3");
        command
            .arg(RECEIVER)
            .args(["--port", &self.port.to_string(), "--out"])
            .arg(&self.out);
        for s in &self.secrets {
            command.args(["--secret", s]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the receiver (pip install standardwebhooks)");
        let mut first = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("the receiver starts");
        assert_eq!(
            first.trim(),
            "listening",
            "the receiver did not start (pip install standardwebhooks)"
        );
        self.child = Some(child);
    }

    /// Kills the process: the receiver is down.
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How it answers from now on: `ok`, `fail` (500) or `slow` (after `delay` seconds).
    pub async fn mode(&self, mode: Value) {
        let res = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/_mode", self.port))
            .json(&mode)
            .send()
            .await
            .expect("the receiver answers");
        assert_eq!(res.status(), 204);
    }

    /// Every message it took (and every one whose signature failed), in order.
    pub fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The clicks it took, by link (`domain/code`): each click number with how many times it
    /// came.
    pub fn clicks(&self) -> BTreeMap<String, BTreeMap<u64, u32>> {
        let mut by_link: BTreeMap<String, BTreeMap<u64, u32>> = BTreeMap::new();
        for m in self.messages() {
            assert!(
                m.get("invalid").is_none(),
                "a signature did not verify: {m}"
            );
            for c in m["clicks"].as_array().into_iter().flatten() {
                let key = format!(
                    "{}/{}",
                    c[0].as_str().unwrap_or(""),
                    c[1].as_str().unwrap_or("")
                );
                *by_link
                    .entry(key)
                    .or_default()
                    .entry(c[2].as_u64().unwrap_or(0))
                    .or_default() += 1;
            }
        }
        by_link
    }

    /// How many distinct clicks it took.
    pub fn distinct(&self) -> usize {
        self.clicks().values().map(BTreeMap::len).sum()
    }

    /// The messages of `kind` it took.
    pub fn of_type(&self, kind: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m["type"] == kind)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// Makes a webhook with the test key at `base`: (its id, its secret).
pub async fn make_webhook(client: &reqwest::Client, base: &str, body: Value) -> (String, String) {
    let res = client
        .post(format!("{base}/api/webhooks"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("POST /api/webhooks");
    assert_eq!(res.status(), 201, "made");
    let made: Value = res.json().await.expect("json");
    (
        made["id"].as_str().expect("an id").to_owned(),
        made["secret"].as_str().expect("a secret").to_owned(),
    )
}

/// Checks that every link's clicks `1..=count` came at least once, and that nothing else
/// came: returns the number of duplicates.
pub fn every_click_came(
    received: &BTreeMap<String, BTreeMap<u64, u32>>,
    stored: &BTreeMap<String, u64>,
) -> u64 {
    let mut duplicates = 0;
    for (link, count) in stored {
        let got = received.get(link).cloned().unwrap_or_default();
        let seqs: BTreeSet<u64> = got.keys().copied().collect();
        let expected: BTreeSet<u64> = (1..=*count).collect();
        assert_eq!(
            seqs, expected,
            "link {link}: the receiver's click numbers are those stored (1..={count})"
        );
        duplicates += got.values().map(|n| u64::from(n - 1)).sum::<u64>();
    }
    for link in received.keys() {
        assert!(
            stored.contains_key(link),
            "clicks of an unknown link {link}"
        );
    }
    duplicates
}

/// Waits up to `limit` for `check`, polling.
pub async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    crate::support::eventually(limit, what, || std::future::ready(check())).await;
}

/// The stored count of every link at `base` (the listing's `clickCount`), by `host/code`.
pub async fn stored_counts(
    client: &reqwest::Client,
    base: &str,
    host: &str,
) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let page: Value = client
            .get(format!("{base}/api/links?limit=1000&cursor={cursor}"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("listing")
            .json()
            .await
            .expect("json");
        for l in page["links"].as_array().expect("links") {
            let n = l["clickCount"].as_u64().unwrap_or(0);
            if n > 0 {
                counts.insert(format!("{host}/{}", l["code"].as_str().unwrap_or("")), n);
            }
        }
        match page["next"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return counts,
        }
    }
}
