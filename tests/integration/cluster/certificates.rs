//! One certificate for a domain in a cluster: ordered once (one node holds the ACME lease)
//! from a real ACME server (pebble), although the server's check reaches a node that did not
//! order it, and then served by every node from the store.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Nats, Node, ONE_AT_A_TIME, free_port};
use crate::{acme::Pebble, support::{KEY, TestResult}};

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
        let res = client.get(format!("https://{NAME}:{port}/e")).send().await?;
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
    assert!(served.windows(2).all(|w| w[0] == w[1]), "one certificate on every node");
    assert_eq!(pebble.issued(), 1, "ordered once");
    Ok(())
}
