//! Domains links may live on: added, listed, changed and removed by an admin, names checked
//! and kept in their ASCII form, and all of it kept across a restart.

use serde_json::{Value, json};

use super::{Engine, spawn_on};
use crate::support::{KEY, TestApp, TestResult, json_error};

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("request sent")
}

async fn names(app: &TestApp) -> Vec<String> {
    let res = send(app, reqwest::Method::GET, "/api/domains", KEY, None).await;
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.expect("json");
    list["domains"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| d["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

pub(super) async fn an_admin_adds_lists_changes_and_removes_domains(engine: Engine) -> TestResult {
    use reqwest::Method;
    let app = spawn_on(engine, |_| {}).await;
    let res = send(
        &app,
        Method::POST,
        "/api/domains",
        KEY,
        Some(
            json!({"name": "Go.Example.TEST", "rootUrl": "https://example.com/home",
                    "https": true}),
        ),
    )
    .await;
    assert_eq!(res.status(), 201);
    let made: Value = res.json().await?;
    assert_eq!(made["name"], "go.example.test");
    assert_eq!(made["rootUrl"], "https://example.com/home");
    assert_eq!(made["notFoundUrl"], Value::Null);
    assert_eq!(
        (
            made["https"].clone(),
            made["hsts"].clone(),
            made["httpsOnly"].clone()
        ),
        (json!(true), json!(false), json!(false))
    );
    assert_eq!(made["certificate"]["status"], "none");
    assert!(
        made["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{made}"
    );

    // A Unicode name is kept in its punycode form.
    let res = send(
        &app,
        Method::POST,
        "/api/domains",
        KEY,
        Some(json!({"name": "bücher.example"})),
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await?["name"], "xn--bcher-kva.example");

    // Bad input: each a 4xx with a JSON message, nothing stored.
    for (body, status) in [
        (json!({"name": "go.example.test"}), 409),
        (json!({"name": "xn--bcher-kva.example"}), 409),
        (json!({"name": "127.0.0.1"}), 400),
        (json!({"name": "go.example.test:8443"}), 400),
        (json!({"name": "-bad.example"}), 400),
        (json!({"name": ""}), 400),
        (
            json!({"name": "ok.example", "rootUrl": "ftp://example.com/"}),
            400,
        ),
        (json!({"name": "ok.example", "color": "red"}), 400),
    ] {
        let res = send(&app, Method::POST, "/api/domains", KEY, Some(body.clone())).await;
        let (got, message) = json_error(res).await;
        assert_eq!(got, status, "{body}: {message}");
    }
    // The host of the base URL is the default domain: it is not added again.
    let default_host = app
        .base
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or("");
    assert_eq!(default_host, "127.0.0.1", "tests serve on an address");

    // Only an admin key manages domains.
    let res = send(
        &app,
        Method::POST,
        "/api/keys",
        KEY,
        Some(json!({"name": "team", "scope": "links"})),
    )
    .await;
    let links_key = res.json::<Value>().await?["key"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let res = send(&app, Method::GET, "/api/domains", &links_key, None).await;
    assert_eq!(json_error(res).await.0, 403);
    let res = send(
        &app,
        Method::POST,
        "/api/domains",
        &links_key,
        Some(json!({"name": "mine.example"})),
    )
    .await;
    assert_eq!(json_error(res).await.0, 403);

    assert_eq!(
        names(&app).await,
        ["go.example.test", "xn--bcher-kva.example"]
    );

    let res = send(
        &app,
        Method::PATCH,
        "/api/domains/go.example.test",
        KEY,
        Some(
            json!({"rootUrl": null, "notFoundUrl": "https://example.com/missing", "https": false}),
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await?;
    assert_eq!(changed["rootUrl"], Value::Null);
    assert_eq!(changed["notFoundUrl"], "https://example.com/missing");
    assert_eq!(changed["https"], false);
    // HSTS and the redirect to HTTPS speak of HTTPS answers: a domain without is refused.
    for field in ["hsts", "httpsOnly"] {
        let res = send(
            &app,
            Method::PATCH,
            "/api/domains/go.example.test",
            KEY,
            Some(json!({field: true})),
        )
        .await;
        let (status, message) = json_error(res).await;
        assert_eq!(status, 400, "{field}");
        assert!(
            message.contains(field) && message.contains("https"),
            "{message}"
        );
    }
    let res = send(
        &app,
        Method::POST,
        "/api/domains",
        KEY,
        Some(json!({"name": "safe.example", "hsts": true})),
    )
    .await;
    assert_eq!(json_error(res).await.0, 400);
    let res = send(
        &app,
        Method::PATCH,
        "/api/domains/xn--bcher-kva.example",
        KEY,
        Some(json!({"https": true, "hsts": true, "httpsOnly": true})),
    )
    .await;
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await?;
    assert_eq!(
        (changed["hsts"].clone(), changed["httpsOnly"].clone()),
        (json!(true), json!(true))
    );
    // No HTTPS listener here (TLS ends in a proxy): no certificate is ordered.
    assert_eq!(changed["certificate"]["status"], "none");
    let res = send(
        &app,
        Method::PATCH,
        "/api/domains/nowhere.example",
        KEY,
        Some(json!({"https": true})),
    )
    .await;
    assert_eq!(json_error(res).await.0, 404);

    // Everything survives a restart.
    let app = app.restart().await;
    assert_eq!(
        names(&app).await,
        ["go.example.test", "xn--bcher-kva.example"]
    );
    let res = send(&app, Method::GET, "/api/domains", KEY, None).await;
    let list: Value = res.json().await?;
    assert_eq!(
        list["domains"][0]["notFoundUrl"],
        "https://example.com/missing"
    );

    let res = send(
        &app,
        Method::DELETE,
        "/api/domains/xn--bcher-kva.example",
        KEY,
        None,
    )
    .await;
    assert_eq!(res.status(), 204);
    let res = send(
        &app,
        Method::DELETE,
        "/api/domains/xn--bcher-kva.example",
        KEY,
        None,
    )
    .await;
    assert_eq!(json_error(res).await.0, 404);
    let app = app.restart().await;
    assert_eq!(names(&app).await, ["go.example.test"]);
    app.stop().await;
    Ok(())
}

/// The host of `--base-url` is the default domain: adding it as a domain is a `409`.
#[tokio::test]
async fn the_default_domain_cannot_be_added_again() -> TestResult {
    let app = crate::support::spawn_with(None, |c| {
        c.base_url = Some("https://Short.Example/".into());
    })
    .await;
    for name in ["short.example", "SHORT.example."] {
        let res = send(
            &app,
            reqwest::Method::POST,
            "/api/domains",
            KEY,
            Some(json!({"name": name})),
        )
        .await;
        let (status, message) = json_error(res).await;
        assert_eq!(status, 409, "{name}: {message}");
        assert!(message.contains("default domain"), "{message}");
    }
    app.stop().await;
    Ok(())
}

/// A request with its own `Host` on a fresh connection (the redirect lane or the stream
/// writer takes it) and on one that carried a request before (salvo takes it).
async fn ask_as(app: &TestApp, host: &str, path: &str, kept_alive: bool) -> crate::wire::Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut conn = if kept_alive {
        crate::wire::kept_alive_from([127, 0, 0, 1], app.addr).await
    } else {
        tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connects")
    };
    crate::wire::exchange(&mut conn, request.as_bytes())
        .await
        .expect("answered")
}

pub(super) async fn links_live_on_their_domain_and_the_host_picks_it(engine: Engine) -> TestResult {
    use reqwest::Method;
    let app = spawn_on(engine, |_| {}).await;
    for body in [
        json!({"name": "go.example.test", "https": true}),
        json!({"name": "other.example", "rootUrl": "https://example.com/root",
               "notFoundUrl": "https://example.com/missing"}),
    ] {
        assert_eq!(
            send(&app, Method::POST, "/api/domains", KEY, Some(body))
                .await
                .status(),
            201
        );
    }
    // The same code on the default domain and on a branded one: two links.
    let plain = app
        .create(json!({"url": "https://example.com/plain", "code": "hello"}))
        .await;
    assert_eq!(plain.status(), 201);
    let plain: Value = plain.json().await?;
    assert_eq!(plain["domain"], "127.0.0.1");
    let res = app
        .create(
            json!({"url": "https://example.com/branded", "code": "hello",
                       "domain": "GO.example.test"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.headers()["location"],
        "/api/links/hello?domain=go.example.test"
    );
    let branded: Value = res.json().await?;
    assert_eq!(branded["code"], "hello");
    assert_eq!(branded["domain"], "go.example.test");
    assert_eq!(branded["shortUrl"], "https://go.example.test/hello");
    assert_eq!(branded["statsUrl"], "https://go.example.test/links/hello");
    assert_eq!(
        branded["realtimeUrl"],
        "https://go.example.test/realtime/hello"
    );
    assert!(
        branded["qrUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with("/api/links/hello/qr?domain=go.example.test")),
        "{branded}"
    );
    let res = app
        .create(
            json!({"url": "https://example.com/x", "code": "hello", "domain": "go.example.test"}),
        )
        .await;
    assert_eq!(json_error(res).await.0, 409, "codes are unique per domain");
    let res = app
        .create(json!({"url": "https://example.com/x", "domain": "nowhere.example"}))
        .await;
    assert_eq!(json_error(res).await.0, 404);
    let other = app
        .create(json!({"url": "https://example.com/o", "domain": "other.example"}))
        .await;
    assert_eq!(other.status(), 201);
    assert_eq!(
        other.json::<Value>().await?["shortUrl"]
            .as_str()
            .map(|u| u.starts_with("http://other.example/")),
        Some(true)
    );

    // The Host picks the link, on both lanes, port and case aside.
    for kept_alive in [false, true] {
        for (host, location) in [
            ("go.example.test", "https://example.com/branded"),
            ("GO.Example.Test:8080", "https://example.com/branded"),
            ("127.0.0.1", "https://example.com/plain"),
            ("unknown.example", "https://example.com/plain"),
        ] {
            let answer = ask_as(&app, host, "/hello", kept_alive).await;
            assert_eq!(answer.status, 302, "{host}");
            assert_eq!(
                answer.header("location"),
                Some(location),
                "{host}, kept alive {kept_alive}"
            );
        }
    }
    // Four of the eight were on the branded domain.
    let read = |domain: Option<&'static str>| {
        let path = match domain {
            Some(d) => format!("/api/links/hello?domain={d}"),
            None => "/api/links/hello".to_owned(),
        };
        let app = &app;
        async move {
            let res = send(app, Method::GET, &path, KEY, None).await;
            assert_eq!(res.status(), 200, "{path}");
            res.json::<Value>().await.expect("json")["clickCount"].as_u64()
        }
    };
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "both counts",
        || async { read(Some("go.example.test")).await == Some(4) && read(None).await == Some(4) },
    )
    .await;
    assert_eq!(
        read(Some("127.0.0.1")).await,
        Some(4),
        "the default domain by its name"
    );
    let res = send(
        &app,
        Method::GET,
        "/api/links/hello?domain=nowhere.example",
        KEY,
        None,
    )
    .await;
    assert_eq!(json_error(res).await.0, 404);

    // Its QR code holds its own short URL; its clicks name it by its code alone.
    let res = send(
        &app,
        Method::GET,
        "/api/links/hello/qr?domain=go.example.test&format=png",
        KEY,
        None,
    )
    .await;
    assert_eq!(res.status(), 200);
    let qr = crate::qr::decode_png(&res.bytes().await?)?;
    assert_eq!(qr, "https://go.example.test/hello");
    let res = send(
        &app,
        Method::GET,
        "/api/links/hello/clicks?domain=go.example.test",
        KEY,
        None,
    )
    .await;
    let clicks: Value = res.json().await?;
    assert_eq!(clicks["clicks"][0]["shortCode"], "hello", "{clicks}");

    // A live stream and the stats page of the branded link, by Host.
    let stream = ask_as(&app, "go.example.test", "/realtime/hello", false).await;
    assert!(stream.is_stream(), "{}", stream.head);
    assert!(stream.body.contains("\"clickCount\":4"), "{}", stream.body);
    assert!(
        stream.body.contains("\"shortCode\":\"hello\""),
        "{}",
        stream.body
    );
    let page = ask_as(&app, "go.example.test", "/links/hello", true).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("https://go.example.test/hello"),
        "the page shows its short URL"
    );

    // `rootUrl` and `notFoundUrl`; a domain without a `rootUrl` has no page at `/`.
    let root = ask_as(&app, "other.example", "/", true).await;
    assert_eq!(
        (root.status, root.header("location")),
        (302, Some("https://example.com/root"))
    );
    let missing = ask_as(&app, "other.example", "/nothing-here", false).await;
    assert_eq!(
        (missing.status, missing.header("location")),
        (302, Some("https://example.com/missing"))
    );
    assert_eq!(ask_as(&app, "go.example.test", "/", true).await.status, 404);
    assert_eq!(
        ask_as(&app, "go.example.test", "/nothing-here", false)
            .await
            .status,
        404
    );

    // A link's domain does not change; a domain with links is not removed.
    let res = send(
        &app,
        Method::PATCH,
        "/api/links/hello?domain=go.example.test",
        KEY,
        Some(json!({"domain": "other.example"})),
    )
    .await;
    assert_eq!(json_error(res).await.0, 400);
    let res = send(
        &app,
        Method::DELETE,
        "/api/domains/go.example.test",
        KEY,
        None,
    )
    .await;
    assert_eq!(json_error(res).await.0, 409);

    // All of it after a restart; then the branded link goes, and its domain may.
    let app = app.restart().await;
    let answer = ask_as(&app, "go.example.test", "/hello", false).await;
    assert_eq!(
        answer.header("location"),
        Some("https://example.com/branded")
    );
    let res = send(
        &app,
        Method::DELETE,
        "/api/links/hello?domain=go.example.test",
        KEY,
        None,
    )
    .await;
    assert_eq!(res.status(), 204);
    let res = send(
        &app,
        Method::DELETE,
        "/api/domains/go.example.test",
        KEY,
        None,
    )
    .await;
    assert_eq!(res.status(), 204);
    let answer = ask_as(&app, "go.example.test", "/hello", false).await;
    assert_eq!(
        answer.header("location"),
        Some("https://example.com/plain"),
        "the default one is left"
    );
    app.stop().await;
    Ok(())
}

/// `--strict-host`: a host naming no domain of this service gets a `404` with JSON on the
/// public link routes (both lanes, both stream transports), while the default domain, an added
/// one, the API and `/healthz` answer as always.
#[tokio::test]
async fn strict_host_refuses_hosts_that_name_no_domain_on_the_public_routes() -> TestResult {
    let app = crate::support::spawn_with(None, |c| c.strict_host = true).await;
    let res = send(
        &app,
        reqwest::Method::POST,
        "/api/domains",
        KEY,
        Some(json!({"name": "go.example.test"})),
    )
    .await;
    assert_eq!(res.status(), 201);
    app.create_link("strict").await;
    let res = app
        .create(json!({"url": "https://example.com/branded", "code": "strict", "domain": "go.example.test"}))
        .await;
    assert_eq!(res.status(), 201);
    for kept_alive in [false, true] {
        for path in [
            "/strict",
            "/realtime/strict",
            "/links/strict",
            "/badge/strict.svg",
        ] {
            let refused = ask_as(&app, "unknown.example", path, kept_alive).await;
            assert_eq!(
                refused.status, 404,
                "{path}, kept alive {kept_alive}: {}",
                refused.head
            );
            assert!(refused.json_error().contains("strict-host"), "{path}");
        }
        let plain = ask_as(&app, "127.0.0.1:80", "/strict", kept_alive).await;
        assert_eq!(plain.header("location"), Some("https://example.com/target"));
        let branded = ask_as(&app, "GO.example.test", "/strict", kept_alive).await;
        assert_eq!(
            branded.header("location"),
            Some("https://example.com/branded")
        );
    }
    let api = ask_as(&app, "unknown.example", "/healthz", true).await;
    assert_eq!(api.status, 200, "{}", api.head);
    assert_eq!(
        app.count("strict").await,
        2,
        "the refused ones counted nothing"
    );
    app.stop().await;
    Ok(())
}

/// A domain's `httpsOnly` answers plain HTTP with a `308` to the same path over HTTPS on every
/// transport (the ACME check excepted); behind a trusted proxy that ended TLS
/// (`X-Forwarded-Proto: https`) the request is served, with `hsts`'s header.
#[tokio::test]
async fn https_rules_apply_on_every_transport_and_behind_a_proxy_that_ends_tls() -> TestResult {
    let app = crate::support::spawn_with(None, |c| c.trust_forwarded_for = true).await;
    let res = send(
        &app,
        reqwest::Method::POST,
        "/api/domains",
        KEY,
        Some(json!({"name": "go.example.test", "https": true, "hsts": true, "httpsOnly": true})),
    )
    .await;
    assert_eq!(res.status(), 201);
    let res = app
        .create(json!({"url": "https://example.com/ruled", "code": "rule", "domain": "go.example.test"}))
        .await;
    assert_eq!(res.status(), 201);
    for kept_alive in [false, true] {
        for path in [
            "/rule?from=paper",
            "/realtime/rule",
            "/links/rule",
            "/badge/rule.svg",
        ] {
            let answer = ask_as(&app, "go.example.test", path, kept_alive).await;
            assert_eq!(answer.status, 308, "{path}: {}", answer.head);
            assert_eq!(
                answer.header("location"),
                Some(format!("https://go.example.test{path}").as_str())
            );
        }
        let challenge = ask_as(
            &app,
            "go.example.test",
            "/.well-known/acme-challenge/t0k3n",
            kept_alive,
        )
        .await;
        assert_eq!(challenge.status, 404, "{}", challenge.head);
        // The proxy took it over HTTPS: served, with Strict-Transport-Security.
        let request =
            "GET /rule HTTP/1.1\r\nHost: go.example.test\r\nX-Forwarded-Proto: https\r\n\r\n";
        let mut conn = if kept_alive {
            crate::wire::kept_alive_from([127, 0, 0, 1], app.addr).await
        } else {
            tokio::net::TcpStream::connect(app.addr).await?
        };
        let answer = crate::wire::exchange(&mut conn, request.as_bytes())
            .await
            .ok_or("answered")?;
        assert_eq!(answer.status, 302, "{}", answer.head);
        assert_eq!(
            answer.header("strict-transport-security"),
            Some("max-age=31536000")
        );
    }
    // The 308s were no clicks; the two forwarded requests were.
    assert_eq!(
        send(
            &app,
            reqwest::Method::GET,
            "/api/links/rule?domain=go.example.test",
            KEY,
            None
        )
        .await
        .json::<Value>()
        .await?["clickCount"],
        2
    );
    app.stop().await;
    Ok(())
}
