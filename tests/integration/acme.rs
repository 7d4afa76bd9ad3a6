//! Certificates ordered from a real ACME server: Debian's `pebble`, with `pebble-challtestsrv`
//! answering every name with 127.0.0.1, so pebble's checks reach this machine's linkpulse.
//! Orders for two domains by HTTP-01 and by TLS-ALPN-01, redirects over HTTPS on both with a
//! client that trusts pebble's root and checks the name, a renewal, the rules of `hsts` and
//! `httpsOnly`, and an ACME server that is down.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    cluster::free_port,
    support::{KEY, TestApp, TestResult, spawn_with},
};

/// How long an order may take here (pebble checks at once: `PEBBLE_VA_NOSLEEP`).
const ORDER_WAIT: Duration = Duration::from_secs(60);

/// A pebble ACME server and its DNS server, stopped when dropped.
pub struct Pebble {
    dir: tempfile::TempDir,
    pebble: Child,
    dns: Child,
    pub directory: String,
    management: u16,
}

impl Pebble {
    /// Starts pebble checking HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, issuing certificates valid for `validity`.
    pub fn start(http_port: u16, tls_port: u16, validity: Duration) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Pebble's own HTTPS certificate, signed by a root the linkpulse under test is told
        // to trust (`--acme-ca-root`).
        let root_key = rcgen::KeyPair::generate().expect("a key");
        let mut root = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = root.self_signed(&root_key).expect("a root");
        let key = rcgen::KeyPair::generate().expect("a key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params")
            .signed_by(&key, &root, &root_key)
            .expect("a leaf");
        std::fs::write(dir.path().join("root.pem"), root.pem()).expect("written");
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).expect("written");
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).expect("written");
        let (listen, management, dns) = (free_port(), free_port(), free_port());
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity.as_secs(),
            // Refused by policy, as a public CA refuses some names.
            "domainBlocklist": ["blocked.example.test"],
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).expect("written");
        let log = |name: &str| {
            Stdio::from(std::fs::File::create(dir.path().join(name)).expect("a log file"))
        };
        let dns_child = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args([
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv6",
                "",
            ])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(log("dns.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs (apt install pebble)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble runs (apt install pebble)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pebble did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            dir,
            pebble,
            dns: dns_child,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management,
        }
    }

    /// The root pebble's own HTTPS certificate is signed by (`--acme-ca-root`).
    pub fn ca_root(&self) -> PathBuf {
        self.dir.path().join("root.pem")
    }

    /// The root of the certificates pebble issues (made anew at each pebble start).
    pub async fn issuing_root(&self) -> String {
        let pem = std::fs::read(self.ca_root()).expect("root");
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
            .build()
            .expect("client");
        client
            .get(format!("https://127.0.0.1:{}/roots/0", self.management))
            .send()
            .await
            .expect("pebble's management answers")
            .text()
            .await
            .expect("a root")
    }

    /// How many certificates pebble has issued.
    pub fn issued(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("pebble.log"))
            .unwrap_or_default()
            .matches("Issued certificate serial")
            .count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client that trusts only `root` and reaches each of `names` at `at`.
pub fn client_trusting(root: &str, names: &[&str], at: SocketAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).expect("pem"))
        .redirect(reqwest::redirect::Policy::none());
    for name in names {
        builder = builder.resolve(name, at);
    }
    builder.build().expect("client")
}

async fn send(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = app
        .client
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(KEY);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("the API answers")
}

/// The domain `name` as the API shows it.
async fn domain(app: &TestApp, name: &str) -> Value {
    let list: Value = send(app, Method::GET, "/api/domains", None)
        .await
        .json()
        .await
        .expect("json");
    list["domains"]
        .as_array()
        .and_then(|all| all.iter().find(|d| d["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until `name`'s certificate is valid and ends after `after` (RFC 3339); returns its
/// end.
async fn valid_after(app: &TestApp, name: &str, after: &str) -> String {
    let mut last = Value::Null;
    let deadline = Instant::now() + ORDER_WAIT;
    while Instant::now() < deadline {
        last = domain(app, name).await;
        let c = &last["certificate"];
        if c["status"] == "valid" && c["notAfter"].as_str().is_some_and(|end| end > after) {
            return c["notAfter"].as_str().unwrap_or_default().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no valid certificate for {name} ending after {after}: {last}");
}

/// Adds `name` with `"https": true` and waits until its order has failed; returns the domain.
async fn added_until_failed(app: &TestApp, name: &str) -> Value {
    let res = send(
        app,
        Method::POST,
        "/api/domains",
        Some(json!({"name": name, "https": true})),
    )
    .await;
    assert_eq!(res.status(), 201);
    let deadline = Instant::now() + ORDER_WAIT;
    loop {
        let shown = domain(app, name).await;
        if shown["certificate"]["status"] == "failed" || Instant::now() > deadline {
            return shown;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ports a test app will listen on, known before pebble starts (it is told them).
fn ports() -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    )
}

async fn app_with_acme(
    plain: SocketAddr,
    https: SocketAddr,
    pebble: &Pebble,
    challenge: linkpulse::certs::acme::Challenge,
) -> TestApp {
    let (directory, root) = (pebble.directory.clone(), pebble.ca_root());
    spawn_with(None, move |c| {
        c.listen = plain;
        c.https_listen = Some(https);
        c.acme_directory = directory;
        c.acme_ca_root = Some(root);
        c.acme_email = Some("ops@example.test".into());
        c.acme_challenge = challenge;
    })
    .await
}

/// Two domains ordered by HTTP-01 on the plain port; redirects over HTTPS on both with the
/// name checked; a name with no certificate fails its handshake; `hsts` and `httpsOnly` act.
#[tokio::test]
async fn two_domains_get_certificates_by_http_01_and_serve_redirects_over_https() -> TestResult {
    let (plain, https) = ports();
    let pebble = Pebble::start(plain.port(), https.port(), Duration::from_secs(3600));
    let app = app_with_acme(
        plain,
        https,
        &pebble,
        linkpulse::certs::acme::Challenge::Http01,
    )
    .await;
    for (name, strict) in [("go.example.test", false), ("acme.example.test", true)] {
        let res = send(
            &app,
            Method::POST,
            "/api/domains",
            Some(json!({"name": name, "https": true, "hsts": strict, "httpsOnly": strict})),
        )
        .await;
        assert_eq!(res.status(), 201);
        let made: Value = res.json().await?;
        assert_eq!(made["certificate"]["status"], "pending", "{made}");
    }
    for name in ["go.example.test", "acme.example.test"] {
        valid_after(&app, name, "").await;
        let res = send(
            &app,
            Method::POST,
            "/api/links",
            Some(
                json!({"url": format!("https://example.com/{name}"), "domain": name, "code": "hi"}),
            ),
        )
        .await;
        assert_eq!(res.status(), 201);
        let link: Value = res.json().await?;
        assert_eq!(link["shortUrl"], format!("https://{name}/hi"));
    }
    let root = pebble.issuing_root().await;
    let client = client_trusting(
        &root,
        &["go.example.test", "acme.example.test", "other.example.test"],
        https,
    );
    for name in ["go.example.test", "acme.example.test"] {
        let res = client
            .get(format!("https://{name}:{}/hi", https.port()))
            .send()
            .await?;
        assert_eq!(res.status(), 302, "{name}");
        assert_eq!(
            res.headers()["location"],
            format!("https://example.com/{name}")
        );
        let hsts = res.headers().get("strict-transport-security");
        assert_eq!(
            hsts.is_some(),
            name == "acme.example.test",
            "{name}: {hsts:?}"
        );
    }
    // No certificate for this name: a failed handshake, not another domain's certificate.
    let refused = client
        .get(format!("https://other.example.test:{}/hi", https.port()))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // Over plain HTTP, the httpsOnly domain answers 308 to HTTPS; the other serves as before.
    let plain_client = crate::support::client();
    let ask = |host: &'static str, path: &'static str| {
        plain_client
            .get(format!("http://{plain}{path}"))
            .header("host", host)
            .send()
    };
    let res = ask("acme.example.test", "/hi?from=paper").await?;
    assert_eq!(res.status(), 308);
    assert_eq!(
        res.headers()["location"],
        "https://acme.example.test/hi?from=paper"
    );
    let res = ask("acme.example.test", "/realtime/hi").await?;
    assert_eq!(res.status(), 308);
    assert_eq!(
        res.headers()["location"],
        "https://acme.example.test/realtime/hi"
    );
    let res = ask("go.example.test", "/hi").await?;
    assert_eq!(res.status(), 302);
    // Clicks through HTTPS and plain HTTP, each counted once (the 308 is no click).
    let res = send(
        &app,
        Method::GET,
        "/api/links/hi?domain=go.example.test",
        None,
    )
    .await;
    let link: Value = res.json().await?;
    assert_eq!(link["clickCount"], 2);
    let res = send(
        &app,
        Method::GET,
        "/api/links/hi?domain=acme.example.test",
        None,
    )
    .await;
    let link: Value = res.json().await?;
    assert_eq!(link["clickCount"], 1);

    // A name the ACME server refuses: `failed`, with its reason; the others keep serving.
    let refused = added_until_failed(&app, "blocked.example.test").await;
    let error = refused["certificate"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused the order") && error.contains("blocked.example.test"),
        "{refused}"
    );
    let res = client
        .get(format!("https://go.example.test:{}/hi", https.port()))
        .send()
        .await?;
    assert_eq!(res.status(), 302);

    // The certificates are in the store: served at once after a restart, not ordered again.
    let issued = pebble.issued();
    assert_eq!(issued, 2, "one order per domain");
    let dir = app.stop().await;
    let (directory, ca_root) = (pebble.directory.clone(), pebble.ca_root());
    let app = spawn_with(Some(dir), move |c| {
        c.listen = plain;
        c.https_listen = Some(https);
        c.acme_directory = directory;
        c.acme_ca_root = Some(ca_root);
    })
    .await;
    let res = client
        .get(format!("https://go.example.test:{}/hi", https.port()))
        .send()
        .await?;
    assert_eq!(res.status(), 302);
    assert_eq!(pebble.issued(), 2);

    // HTTPS turned off: the certificate goes (no handshake for the name); on again: ordered anew.
    let res = send(
        &app,
        Method::PATCH,
        "/api/domains/go.example.test",
        Some(json!({"https": false})),
    )
    .await;
    let off: Value = res.json().await?;
    assert_eq!(off["certificate"]["status"], "none", "{off}");
    // A new connection (the client above keeps one open from before).
    let fresh = client_trusting(&root, &["go.example.test"], https);
    let refused = fresh
        .get(format!("https://go.example.test:{}/hi", https.port()))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let res = send(
        &app,
        Method::PATCH,
        "/api/domains/go.example.test",
        Some(json!({"https": true})),
    )
    .await;
    assert_eq!(res.status(), 200);
    valid_after(&app, "go.example.test", "").await;
    assert_eq!(pebble.issued(), 3);
    app.stop().await;
    Ok(())
}

/// TLS-ALPN-01 on the HTTPS port, and a renewal two thirds into a short life: the new
/// certificate is served, and a certificate that ends within 7 days is named by `/healthz`
/// (still `200`) and counted by a metric.
#[tokio::test]
async fn a_certificate_by_tls_alpn_01_is_renewed_before_it_ends() -> TestResult {
    let (plain, https) = ports();
    let pebble = Pebble::start(plain.port(), https.port(), Duration::from_secs(24));
    let app = app_with_acme(
        plain,
        https,
        &pebble,
        linkpulse::certs::acme::Challenge::TlsAlpn01,
    )
    .await;
    let res = send(
        &app,
        Method::POST,
        "/api/domains",
        Some(json!({"name": "short.example.test", "https": true})),
    )
    .await;
    assert_eq!(res.status(), 201);
    let first = valid_after(&app, "short.example.test", "").await;
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await?;
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await?;
    assert_eq!(
        health["certificatesExpiringSoon"],
        json!(["short.example.test"])
    );
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("linkpulse_certificates_expiring 1"),
        "{metrics}"
    );

    // Renewed at two thirds of 24 s, well before it ends.
    let second = valid_after(&app, "short.example.test", &first).await;
    assert!(second > first);
    let root = pebble.issuing_root().await;
    let client = client_trusting(&root, &["short.example.test"], https);
    let res = client
        .get(format!(
            "https://short.example.test:{}/nothing-here",
            https.port()
        ))
        .send()
        .await?;
    assert_eq!(res.status(), 404);
    assert_eq!(pebble.issued(), 2);
    app.stop().await;
    Ok(())
}

/// An ACME server that is down: the domain's certificate is `failed` with a message naming the
/// server, and the plain listener and the API keep serving.
#[tokio::test]
async fn an_acme_server_that_is_down_fails_the_order_clearly_and_nothing_else() -> TestResult {
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let app = spawn_with(None, move |c| {
        c.https_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.acme_directory = directory;
    })
    .await;
    let shown = added_until_failed(&app, "down.example.test").await;
    assert_eq!(shown["certificate"]["status"], "failed", "{shown}");
    let error = shown["certificate"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot make an ACME account at https://127.0.0.1:"),
        "{shown}"
    );
    app.create_link("still").await;
    let res = app.client.get(format!("{}/still", app.base)).send().await?;
    assert_eq!(res.status(), 302);
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await?;
    assert_eq!(health.status(), 200);
    app.stop().await;
    Ok(())
}

/// A root file for `--acme-ca-root` that cannot be read stops the start, naming it.
#[tokio::test]
async fn an_acme_root_that_cannot_be_read_stops_the_start() {
    let missing = Path::new("/nonexistent/pebble-root.pem").to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_linkpulse"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ])
        .arg("--acme-ca-root")
        .arg(&missing)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("linkpulse runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--acme-ca-root /nonexistent/pebble-root.pem"),
        "{err}"
    );
}
