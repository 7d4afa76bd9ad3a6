//! The cluster engine against a real `nats-server` (Debian's; `.ci/run` installs it).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{NatsConfig, NatsStore};
use crate::{
    domain::{Scope, now_ms},
    store::{Backend, KeyRecord, records::RECORD_VERSION},
};

/// A single JetStream server on a free port, killed when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (.ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    async fn node(&self) -> NatsStore {
        NatsStore::connect(&NatsConfig {
            urls: self.url.clone(),
            replicas: 1,
        })
        .await
        .expect("a node connects")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_another_node_is_not_brought_back_by_a_last_used_save() {
    let server = Server::start();
    let (a, b) = (server.node().await, server.node().await);
    let hash = [7u8; 32];
    let record = KeyRecord {
        v: RECORD_VERSION,
        id: "k7".into(),
        name: "shared".into(),
        admin: false,
        created_at: now_ms(),
        scope: Some(Scope::Links),
        last_used_at: None,
    };
    a.put_api_key(hash, &record).expect("stored");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.api_keys().expect("read").is_empty() {
        assert!(Instant::now() < deadline, "b sees the key");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b.revoke_api_key(hash).expect("revoked"));
    // Node a has not heard of the revocation yet (its watch is a moment behind) and saves
    // the key's last-used time.
    a.inner.keys.insert(hash, record.clone());
    let used = KeyRecord {
        last_used_at: Some(now_ms()),
        ..record
    };
    a.put_api_keys(&[(hash, used)]).expect("saved");
    let fresh = server.node().await;
    assert!(
        fresh.api_keys().expect("read").is_empty(),
        "the revoked key stays revoked"
    );
}
