//! One certificate for a domain in a cluster: ordered once (one node holds the ACME lease)
//! from a real ACME server (pebble), although the server's check reaches a node that did not
//! order it, and then served by every node from the store.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Nats, Node, ONE_AT_A_TIME, free_port};
use crate::{
    acme::Pebble,
    support::{KEY, TestResult},
};

const NAME: &str = "edge.example.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_ordered_once_and_served_by_every_node() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = Nats::start(1);
    let https: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // Pebble checks TLS-ALPN-01 on the first node's port only: whichever node orders, the
    // answer must reach that one through the store.
    let pebble = Pebble::start(free_port(), https[0], Duration::from_secs(3600));
    let root = pebble.ca_root().display().to_string();
    let nodes: Vec<Node> = https
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let listen = format!("127.0.0.1:{port}");
            Node::start(
                &nats,
                &format!("tls-{i}"),
                &[
                    "--https-listen",
                    &listen,
                    "--acme-directory",
                    &pebble.directory,
                    "--acme-ca-root",
                    &root,
                    "--acme-challenge",
                    "tls-alpn-01",
                ],
            )
        })
        .collect();
    let res = nodes[2]
        .client
        .post(nodes[2].url("/api/domains"))
        .bearer_auth(KEY)
        .json(&json!({"name": NAME, "https": true}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let res = nodes[1]
        .client
        .post(nodes[1].url("/api/links"))
        .bearer_auth(KEY)
        .json(&json!({"url": "https://example.com/edge", "domain": NAME, "code": "e"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);

    // Every node shows the certificate valid, with one end.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut ends = Vec::new();
    for node in &nodes {
        loop {
            let list: Value = node
                .client
                .get(node.url("/api/domains"))
                .bearer_auth(KEY)
                .send()
                .await?
                .json()
                .await?;
            let c = &list["domains"][0]["certificate"];
            if c["status"] == "valid" {
                ends.push(c["notAfter"].clone());
                break;
            }
            assert!(Instant::now() < deadline, "{} shows {list}", node.base);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert!(ends.windows(2).all(|w| w[0] == w[1]), "{ends:?}");

    // Each node serves it: the same certificate, checked against pebble's root and the name.
    let issuing = pebble.issuing_root().await;
    let mut served = Vec::new();
    for port in &https {
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(issuing.as_bytes())?)
            .resolve(NAME, at)
            .tls_info(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let res = client
            .get(format!("https://{NAME}:{port}/e"))
            .send()
            .await?;
        assert_eq!(res.status(), 302, "node on {port}");
        assert_eq!(res.headers()["location"], "https://example.com/edge");
        let leaf = res
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate())
            .map(<[u8]>::to_vec)
            .ok_or("the peer's certificate")?;
        served.push(leaf);
    }
    assert!(
        served.windows(2).all(|w| w[0] == w[1]),
        "one certificate on every node"
    );
    assert_eq!(pebble.issued(), 1, "ordered once");

    // nginx passes TLS through (the shipped template), each connection to a node at random
    // here: every click over HTTPS is counted once, whichever node took it.
    let nginx = TlsPassthrough::start(&https);
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(issuing.as_bytes())?)
        .resolve(NAME, nginx.addr)
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    const CLICKS: u64 = 30;
    for _ in 0..CLICKS {
        let res = client
            .get(format!("https://{NAME}:{}/e", nginx.addr.port()))
            .send()
            .await?;
        assert_eq!(res.status(), 302);
    }
    let log = std::fs::read_to_string(nginx.prefix.path().join("access-tls.log"))?;
    let nodes_used: std::collections::HashSet<&str> = log
        .lines()
        .filter_map(|l| l.split("upstream=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        nodes_used.len() > 1,
        "connections reached several nodes: {log}"
    );
    assert!(log.contains(&format!("sni=\"{NAME}\"")), "{log}");
    // Three clicks came straight to the nodes above. Clicks another node took show once it
    // has committed them (within moments).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let link: Value = nodes[0]
            .client
            .get(nodes[0].url(&format!("/api/links/e?domain={NAME}")))
            .bearer_auth(KEY)
            .send()
            .await?
            .json()
            .await?;
        if link["clickCount"] == CLICKS + 3 {
            break;
        }
        assert!(
            Instant::now() < deadline && link["clickCount"].as_u64() < Some(CLICKS + 3),
            "{link}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// nginx with the shipped `deploy/nginx-cluster-tls.conf` in front of the nodes' HTTPS ports.
struct TlsPassthrough {
    addr: std::net::SocketAddr,
    prefix: tempfile::TempDir,
    child: std::process::Child,
}

impl TlsPassthrough {
    fn start(ports: &[u16]) -> Self {
        let prefix = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let template = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx-cluster-tls.conf"),
        )
        .expect("deploy/nginx-cluster-tls.conf is shipped");
        let sticky = "hash $remote_addr consistent;";
        assert!(
            template.contains(sticky),
            "the shipped upstream keeps a client on a node"
        );
        let servers: String = ports
            .iter()
            .map(|p| format!("server 127.0.0.1:{p};\n"))
            .collect();
        let conf = template
            .replace(sticky, "random;")
            .replace("@PREFIX@", &prefix.path().display().to_string())
            .replace("@TLS_LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@TLS_SERVERS@", &servers);
        let path = prefix.path().join("nginx-tls.conf");
        std::fs::write(&path, conf).expect("written");
        let child = std::process::Command::new("/usr/sbin/nginx")
            .args(["-g", "daemon off;", "-p"])
            .arg(prefix.path())
            .arg("-c")
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx starts (with libnginx-mod-stream)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            prefix,
            child,
        }
    }
}

impl Drop for TlsPassthrough {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
