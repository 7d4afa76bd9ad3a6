//! Cluster mode on loopback: real `nats-server` processes (Debian's 2.9, JetStream, one
//! cluster), real `linkpulse` processes started with `--nats`, and nginx with the shipped
//! `deploy/nginx-cluster.conf`. Nodes and servers are killed with SIGKILL as a crash would.
//!
//! The tests run one at a time (each starts several servers on two cores).

mod cache;
mod certificates;
mod events;
mod failover;
mod limits;
mod longtail;
mod migrate;
mod nginx;
mod outage;
mod random;
mod sessions;
mod truth;
mod viewers;
mod webhooks;

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tempfile::TempDir;

pub use crate::support::eventually;
use crate::support::{KEY, client};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");

/// One cluster test at a time.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One `nats-server` of the cluster.
struct Server {
    port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

/// A JetStream cluster of `nats-server` processes.
pub struct Nats {
    pub dir: TempDir,
    servers: Vec<Server>,
}

impl Nats {
    /// Starts `n` servers in one cluster (one alone for `n == 1`), each storing under the
    /// temp dir, and waits until each accepts connections.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, "")
    }

    /// Like [`Nats::start`], with `extra` lines in every server's configuration.
    pub fn start_with(n: usize, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("\"nats-route://127.0.0.1:{c}\""))
            .collect();
        let servers = ports
            .iter()
            .enumerate()
            .map(|(i, (port, cluster))| {
                let store = dir.path().join(format!("js-{i}"));
                let cluster = if n > 1 {
                    format!(
                        "cluster {{ name: lp, listen: \"127.0.0.1:{cluster}\", routes: [{}] }}",
                        routes.join(", ")
                    )
                } else {
                    String::new()
                };
                let conf = dir.path().join(format!("nats-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\n\
                         jetstream {{ store_dir: \"{}\" }}\n{cluster}\n{extra}\n",
                        store.display()
                    ),
                )
                .expect("nats config written");
                Server {
                    port: *port,
                    conf,
                    child: None,
                }
            })
            .collect();
        let mut nats = Self { dir, servers };
        for i in 0..n {
            nats.start_server(i);
        }
        nats
    }

    /// Starts server `i` (again), on its port and store.
    pub fn start_server(&mut self, i: usize) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("nats-{i}.log"))).expect("nats log");
        let server = &mut self.servers[i];
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&server.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server runs (apt-get install nats-server; .ci/run installs it)");
        server.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server {i} did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills server `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (`STOP`) or thaws (`CONT`) server `i`, as a stalled machine would.
    pub fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = &self.servers[i].child {
            let sent = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status()
                .is_ok_and(|s| s.success());
            assert!(sent, "kill -{signal} nats-server {i}");
        }
    }

    /// Server `i`'s URL alone.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].port)
    }

    /// Every server's URL, as `--nats` takes them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// A `linkpulse serve --nats` process.
pub struct Node {
    pub base: String,
    pub addr: String,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
}

impl Node {
    /// Starts a node on the cluster (3 replicas when there are 3 servers) with `extra`
    /// arguments, and waits until it listens. JetStream may still be electing its leaders
    /// when the servers have just started: the start is tried again for a while.
    pub fn start(nats: &Nats, name: &str, extra: &[&str]) -> Node {
        Self::start_on(nats, &nats.urls(), name, extra)
    }

    /// Like [`Node::start`], connected to the servers `urls` only.
    pub fn start_on(nats: &Nats, urls: &str, name: &str, extra: &[&str]) -> Node {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match Self::try_start(nats, urls, name, extra) {
                Ok(node) => return node,
                Err(why) => {
                    assert!(
                        Instant::now() < deadline,
                        "node {name} did not start: {why}"
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    fn try_start(nats: &Nats, urls: &str, name: &str, extra: &[&str]) -> Result<Node, String> {
        let replicas = if nats.len() >= 3 { "3" } else { "1" };
        let data = nats.dir.path().join(format!("node-{name}"));
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--nats"])
            .arg(urls)
            .args(["--nats-replicas", replicas, "--initial-api-key", KEY])
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env(
                "LINKPULSE_LOG",
                std::env::var("LP_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("linkpulse listening address=") {
                    let addr = line[at + "linkpulse listening address=".len()..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
                if let Ok(mut log) = kept.lock() {
                    log.push(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Ok(Node {
                base: format!("http://{addr}"),
                addr,
                child: Some(child),
                log,
                client: client(),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                Err(log)
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A value from the node's `/metrics` (see [`crate::support::metric_at`]).
    pub async fn metric(&self, name: &str) -> u64 {
        crate::support::metric_at(&self.client, &self.base, name).await
    }

    /// Kills the node with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // What the node said, for the failed test's output.
            let log = self.log.lock().map(|l| l.join("\n")).unwrap_or_default();
            eprintln!("--- node {} log ---\n{log}", self.addr);
        }
    }
}

/// nginx in front of nodes, with the shipped `deploy/nginx-cluster.conf`.
pub struct Nginx {
    pub base: String,
    /// Holds nginx's files while it runs.
    _prefix: TempDir,
    child: Option<Child>,
}

impl Nginx {
    pub fn start(nodes: &[&Node]) -> Self {
        Self::start_routing(nodes, false)
    }

    /// Like [`Nginx::start`], but sending each request about a code to a node picked at
    /// random (not by the code), so every node takes clicks of every code.
    pub fn start_random(nodes: &[&Node]) -> Self {
        Self::start_routing(nodes, true)
    }

    fn start_routing(nodes: &[&Node], random: bool) -> Self {
        let prefix = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx-cluster.conf"),
        )
        .expect("deploy/nginx-cluster.conf is shipped");
        let servers: String = nodes
            .iter()
            .map(|n| format!("server {} max_fails=1 fail_timeout=2s;\n", n.addr))
            .collect();
        let template = if random {
            let by_code = "hash $lp_code consistent;";
            assert!(
                template.contains(by_code),
                "the shipped upstream hashes the code"
            );
            template.replace(by_code, "random;")
        } else {
            template
        };
        let conf = template
            .replace("@PREFIX@", &prefix.path().display().to_string())
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@SERVERS@", &servers);
        let path = prefix.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx config written");
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| Command::new(p).arg("-v").output().is_ok())
            .expect("nginx is installed (.ci/run installs it)");
        let child = Command::new(nginx)
            .args(["-g", "daemon off;", "-p"])
            .arg(prefix.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            base: format!("http://127.0.0.1:{port}"),
            _prefix: prefix,
            child: Some(child),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the master stops its workers too (after a SIGKILL they would stay).
            let stopped = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Makes a link (as the admin) through `base`.
pub async fn create(client: &reqwest::Client, base: &str, code: &str) {
    let res = client
        .post(format!("{base}/api/links"))
        .bearer_auth(KEY)
        .json(&json!({"url": format!("https://example.com/{code}"), "code": code}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("create sent");
    assert_eq!(res.status(), 201, "creating {code} through {base}");
}

/// A link's record as `GET /api/links/{code}` answers it.
pub async fn read(client: &reqwest::Client, base: &str, code: &str) -> Value {
    let res = client
        .get(format!("{base}/api/links/{code}"))
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("read sent");
    assert_eq!(res.status(), 200, "reading {code} through {base}");
    res.json().await.expect("a JSON link")
}

pub async fn count(client: &reqwest::Client, base: &str, code: &str) -> u64 {
    read(client, base, code).await["clickCount"]
        .as_u64()
        .expect("clickCount is a number")
}

/// Checks that a code's count, its stored click events (numbered 1..n, each once) and its
/// aggregates all say the same, read through `base`. Returns the count.
pub async fn consistent(client: &reqwest::Client, base: &str, code: &str) -> u64 {
    let count = count(client, base, code).await;
    let mut seqs = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut url = format!("{base}/api/links/{code}/clicks?limit=1000");
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let body: Value = client
            .get(url)
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("clicks sent")
            .json()
            .await
            .expect("a JSON click list");
        let page: Vec<u64> = body["clicks"]
            .as_array()
            .expect("a clicks array")
            .iter()
            .map(|c| c["seq"].as_u64().expect("a click number"))
            .collect();
        let Some(&lowest) = page.last() else { break };
        seqs.extend(page);
        before = Some(lowest);
        if lowest <= 1 {
            break;
        }
    }
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=count).collect();
    assert!(
        seqs == expected,
        "{code}: count {count}, stored clicks numbered {} .. {} ({} of them)",
        seqs.first().copied().unwrap_or(0),
        seqs.last().copied().unwrap_or(0),
        seqs.len()
    );
    // A node busy with a failover may answer 503 for a moment: asked again until it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats: Value = loop {
        let res = client
            .get(format!("{base}/api/links/{code}/stats"))
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("stats sent");
        let status = res.status();
        let body: Value = res.json().await.expect("JSON stats");
        if status == 200 || Instant::now() >= deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        stats["totals"]["clicks"].as_u64(),
        Some(count),
        "{code}: the aggregates sum to the count: {stats}"
    );
    count
}

/// One redirect; its status (0 when no answer came).
pub async fn click(client: &reqwest::Client, base: &str, code: &str) -> u16 {
    match client
        .get(format!("{base}/{code}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(res) => res.status().as_u16(),
        Err(_) => 0,
    }
}
