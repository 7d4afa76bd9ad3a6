//! HTTPS with a certificate from files (`--https-listen`, `--tls-cert`, `--tls-key`): redirects,
//! streams and the API over HTTP/1.1 and HTTP/2, the certificate chosen by the name asked for,
//! and files that are wrong stopping the start with a message naming them.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use reqwest::Version;
use serde_json::json;

use crate::support::{KEY, SseClient, TestApp, TestResult, spawn_with};

/// A self-signed certificate for `names` and its key, written as PEM files in `dir`; returns
/// the certificate's PEM (what a client trusts).
fn certificate(dir: &Path, names: &[&str]) -> String {
    let key = rcgen::KeyPair::generate().expect("a key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("names");
    let cert = params.self_signed(&key).expect("a certificate");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert written");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key written");
    cert.pem()
}

/// An app serving HTTPS with a certificate for `short.test` and `*.wild.test`.
async fn https_app() -> (TestApp, String, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("temp dir");
    let pem = certificate(certs.path(), &["short.test", "*.wild.test"]);
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let app = spawn_with(None, |c| {
        c.https_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    (app, pem, certs)
}

/// A client that trusts `pem` and reaches `name` at the app's HTTPS address; HTTP/1.1 only
/// when `http1`, else HTTP/2 when the server offers it.
fn client_for(app: &TestApp, pem: &str, name: &str, http1: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"))
        .resolve(name, app.https.expect("HTTPS is served"))
        .redirect(reqwest::redirect::Policy::none());
    if http1 {
        builder = builder.http1_only();
    }
    builder.build().expect("client")
}

fn url(app: &TestApp, name: &str, path: &str) -> String {
    let port = app.https.expect("HTTPS is served").port();
    format!("https://{name}:{port}{path}")
}

/// Redirects over HTTPS, on HTTP/1.1 (the redirect lane) and on HTTP/2 (salvo), each counted
/// once; the API answers over both; the plain listener keeps serving.
#[tokio::test]
async fn redirects_and_the_api_are_served_over_https_on_http1_and_http2() -> TestResult {
    let (app, pem, _certs) = https_app().await;
    app.create_link("secure").await;
    for (http1, version) in [(true, Version::HTTP_11), (false, Version::HTTP_2)] {
        let client = client_for(&app, &pem, "short.test", http1);
        for _ in 0..3 {
            let res = client
                .get(url(&app, "short.test", "/secure"))
                .send()
                .await?;
            assert_eq!(res.version(), version);
            assert_eq!(res.status(), 302);
            assert_eq!(res.headers()["location"], "https://example.com/target");
        }
        let head = client
            .head(url(&app, "short.test", "/secure"))
            .send()
            .await?;
        assert_eq!(head.status(), 302);
        let made = client
            .post(url(&app, "short.test", "/api/links"))
            .bearer_auth(KEY)
            .json(&json!({"url": "https://example.com/made", "code": format!("made-{}", u8::from(http1))}))
            .send()
            .await?;
        assert_eq!(made.version(), version);
        assert_eq!(made.status(), 201);
    }
    assert_eq!(app.count("secure").await, 6, "three GETs on each protocol");
    assert_eq!(app.click("secure").await.status(), 302, "plain HTTP still");
    app.stop().await;
    Ok(())
}

/// A live stream over HTTPS shows a click: on a connection of its own over HTTP/1.1 (the lean
/// writer) and over HTTP/2 (salvo).
#[tokio::test]
async fn a_live_stream_over_https_shows_each_click() -> TestResult {
    let (app, pem, _certs) = https_app().await;
    app.create_link("watched").await;
    for (round, http1) in [(1, true), (2, false)] {
        let client = client_for(&app, &pem, "short.test", http1);
        let mut stream =
            SseClient::open(&client, &url(&app, "short.test", "/realtime/watched"), None).await;
        assert_eq!(stream.status, 200);
        let first = stream
            .next_data(Duration::from_secs(10))
            .await
            .expect("a first frame");
        assert_eq!(first.count(), Some(round - 1));
        assert_eq!(app.click("watched").await.status(), 302);
        let counted = stream
            .next_where(Duration::from_secs(10), |e| e.count() == Some(round))
            .await;
        assert!(
            counted.is_ok(),
            "round {round}: the click reached the stream: {counted:?}"
        );
    }
    app.stop().await;
    Ok(())
}

/// The certificate is chosen by the name asked for: a name it covers (a wildcard included) is
/// served; another name gets a failed handshake, not this certificate.
#[tokio::test]
async fn a_name_the_certificate_does_not_cover_gets_a_failed_handshake() -> TestResult {
    let (app, pem, _certs) = https_app().await;
    app.create_link("named").await;
    let wild = client_for(&app, &pem, "a.wild.test", true);
    let res = wild.get(url(&app, "a.wild.test", "/named")).send().await?;
    assert_eq!(res.status(), 302);
    let other = client_for(&app, &pem, "other.test", true);
    let failed = other.get(url(&app, "other.test", "/named")).send().await;
    assert!(failed.is_err(), "{failed:?}");
    // The listener serves on after a failed handshake.
    let ok = client_for(&app, &pem, "short.test", false);
    assert_eq!(
        ok.get(url(&app, "short.test", "/named"))
            .send()
            .await?
            .status(),
        302
    );
    assert_eq!(app.count("named").await, 2);
    app.stop().await;
    Ok(())
}

/// A certificate file that does not parse, or a key that does not fit the certificate, stops
/// the start (exit status not 0) with a message naming the file.
#[tokio::test]
async fn a_certificate_or_key_that_is_wrong_stops_the_start_naming_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    certificate(dir.path(), &["short.test"]);
    let other = tempfile::tempdir()?;
    certificate(other.path(), &["short.test"]);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n")?;
    let cert = dir.path().join("cert.pem");
    let foreign_key = other.path().join("key.pem");
    for (cert, key, named) in [
        (&garbage, &dir.path().join("key.pem"), &garbage),
        (&cert, &garbage, &garbage),
        (&cert, &foreign_key, &foreign_key),
    ] {
        let data = tempfile::tempdir()?;
        let out = Command::new(env!("CARGO_BIN_EXE_linkpulse"))
            .args(["--listen", "127.0.0.1:0", "--https-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env("LINKPULSE_INITIAL_API_KEY", KEY)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&named.display().to_string()),
            "names {}: {stderr}",
            named.display()
        );
    }
    Ok(())
}
