//! Following short links: the redirect, HEAD, and unknown codes (exact counting under
//! concurrency is in `engines::counting`, on both engines).

use serde_json::json;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{
    support::{KEY, TestResult, spawn_app},
    wire,
};

#[tokio::test]
async fn head_redirects_without_counting() -> TestResult {
    let app = spawn_app().await;
    app.create_link("peek").await;
    let res = app.client.head(app.url("/peek")).send().await?;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/target");
    assert_eq!(app.count("peek").await, 0);
    assert_eq!(app.click("peek").await.status(), 302);
    assert_eq!(app.count("peek").await, 1);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn unknown_codes_get_an_html_404() -> TestResult {
    let app = spawn_app().await;
    // (`/%2e%2e` is sent by reqwest as `/`, the home page; `browser.rs` sends it raw.)
    for path in ["/nothing", "/bad.code", "/api"] {
        let res = app.client.get(app.url(path)).send().await?;
        assert_eq!(res.status(), 404, "{path}");
        let content_type = res.headers()["content-type"].to_str()?.to_owned();
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        assert!(res.text().await?.contains("Link not found"), "{path}");
    }
    app.stop().await;
    Ok(())
}

/// A code looked up before it exists (and remembered as missing) works as soon as it is
/// created: the cache of unknown codes never hides a new link.
#[tokio::test]
async fn a_code_missed_before_it_was_created_redirects_after() -> TestResult {
    let app = spawn_app().await;
    for path in ["/later", "/realtime/later", "/links/later"] {
        assert_eq!(
            app.client.get(app.url(path)).send().await?.status(),
            404,
            "{path}"
        );
    }
    app.create_link("later").await;
    let res = app.click("later").await;
    assert_eq!(res.status(), 302);
    assert_eq!(app.count("later").await, 1);
    assert_eq!(app.subscribe("later").await.status, 200);
    app.stop().await;
    Ok(())
}

/// Reads from `conn` until `n` answers without a body have come; returns their heads.
async fn bodiless_answers(conn: &mut tokio::net::TcpStream, n: usize) -> Vec<String> {
    let mut seen = String::new();
    while seen.matches("\r\n\r\n").count() < n {
        let more = wire::read_until(conn, "\r\n\r\n").await;
        assert!(!more.is_empty(), "closed after {seen:?}");
        seen.push_str(&more);
    }
    seen.split_terminator("\r\n\r\n")
        .map(str::to_owned)
        .collect()
}

/// Redirects sent together on one connection (pipelined) are answered in order, each with
/// the headers a redirect has, and each `GET` is counted once (the `HEAD` not at all).
#[tokio::test]
async fn pipelined_redirects_are_answered_in_order_and_each_get_counted() -> TestResult {
    let app = spawn_app().await;
    app.create_link("pipe").await;
    app.create(json!({"url": "https://example.com/moved", "code": "moved",
                      "redirectStatus": 308}))
        .await;
    let mut conn = TcpStream::connect(app.addr).await?;
    conn.write_all(
        b"GET /pipe HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /pipe HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /moved?utm=x HTTP/1.1\r\nHost: t\r\nUser-Agent: pipelined/1\r\n\r\n\
          GET /pipe/ HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await?;
    let heads = bodiless_answers(&mut conn, 4).await;
    assert_eq!(heads.len(), 4, "{heads:?}");
    for (head, status, location) in [
        (&heads[0], "302 Found", "https://example.com/target"),
        (&heads[1], "302 Found", "https://example.com/target"),
        (
            &heads[2],
            "308 Permanent Redirect",
            "https://example.com/moved",
        ),
        (&heads[3], "302 Found", "https://example.com/target"),
    ] {
        let lower = head.to_ascii_lowercase();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{head}"
        );
        assert!(
            lower.contains(&format!("\r\nlocation: {location}\r\n")),
            "{head}"
        );
        assert!(lower.contains("\r\ncontent-length: 0\r\n"), "{head}");
        assert!(
            lower.contains("\r\ncache-control: private, max-age=0, no-store"),
            "{head}"
        );
        assert!(lower.contains("\r\ndate: "), "{head}");
    }
    assert_eq!(app.count("pipe").await, 2);
    assert_eq!(app.count("moved").await, 1);
    let clicks = app.clicks("moved").await;
    assert_eq!(clicks[0]["userAgent"], "pipelined/1", "{clicks:?}");
    app.stop().await;
    Ok(())
}

/// A connection that opened with redirects and then asks for something else (an API call
/// with a body, a page) is served on, in order, and its later redirects still count.
#[tokio::test]
async fn a_connection_that_turns_from_redirects_to_other_requests_is_served_throughout()
-> TestResult {
    let app = spawn_app().await;
    app.create_link("turn").await;
    let mut conn = TcpStream::connect(app.addr).await?;
    let first = wire::exchange(&mut conn, &wire::get("/turn")).await;
    assert_eq!(first.map(|a| a.status), Some(302));
    let body = r#"{"url":"https://example.com/new","code":"made-here"}"#;
    let create = format!(
        "POST /api/links HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let created = wire::exchange(&mut conn, create.as_bytes())
        .await
        .expect("answered");
    assert_eq!(created.status, 201, "{}", created.body);
    for code in ["turn", "made-here"] {
        let again = wire::exchange(&mut conn, &wire::get(&format!("/{code}"))).await;
        assert_eq!(again.map(|a| a.status), Some(302), "{code}");
    }
    let health = wire::exchange(&mut conn, &wire::get("/healthz")).await;
    assert_eq!(health.map(|a| a.status), Some(200));
    assert_eq!(app.count("turn").await, 2);
    assert_eq!(app.count("made-here").await, 1);
    app.stop().await;
    Ok(())
}

/// On a connection that opens with it, a link with more than a target keeps every rule:
/// a password shows its form, a visit limit ends in `410`, a forwarded query is forwarded,
/// an unknown code is the `404` page, and HTTP/1.0 and `Connection: close` are answered as
/// they should be.
#[tokio::test]
async fn redirects_keep_every_rule_on_a_connection_that_opens_with_them() -> TestResult {
    let app = spawn_app().await;
    app.create_link("plain").await;
    for body in [
        json!({"url": "https://example.com/secret", "code": "locked", "password": "sesame"}),
        json!({"url": "https://example.com/once", "code": "once", "maxVisits": 1}),
        json!({"url": "https://example.com/q", "code": "forward", "forwardQuery": true}),
    ] {
        assert_eq!(app.create(body).await.status(), 201);
    }

    let mut conn = TcpStream::connect(app.addr).await?;
    let form = wire::exchange(&mut conn, &wire::get("/locked"))
        .await
        .expect("answered");
    assert_eq!(form.status, 200, "{}", form.head);
    assert!(form.body.contains("password"), "{}", form.body);

    let mut conn = TcpStream::connect(app.addr).await?;
    let first = wire::exchange(&mut conn, &wire::get("/once"))
        .await
        .expect("answered");
    assert_eq!(first.status, 302);
    let second = wire::exchange(&mut conn, &wire::get("/once"))
        .await
        .expect("answered");
    assert_eq!(second.status, 410);

    let mut conn = TcpStream::connect(app.addr).await?;
    let forwarded = wire::exchange(&mut conn, &wire::get("/forward?a=1"))
        .await
        .expect("answered");
    assert_eq!(
        forwarded.header("location"),
        Some("https://example.com/q?a=1")
    );

    let mut conn = TcpStream::connect(app.addr).await?;
    let missing = wire::exchange(&mut conn, &wire::get("/nowhere"))
        .await
        .expect("answered");
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("Link not found"), "{}", missing.body);

    let mut conn = TcpStream::connect(app.addr).await?;
    let old = wire::exchange(&mut conn, b"GET /plain HTTP/1.0\r\n\r\n")
        .await
        .expect("answered");
    assert_eq!(old.status, 302);
    assert!(old.head.starts_with("HTTP/1.0 302"), "{}", old.head);

    let mut conn = TcpStream::connect(app.addr).await?;
    let closing = wire::exchange(
        &mut conn,
        b"GET /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("answered");
    assert_eq!(closing.status, 302);
    assert_eq!(closing.header("connection"), Some("close"));

    assert_eq!(app.count("plain").await, 2, "HTTP/1.0 and the closing one");
    assert_eq!(app.count("once").await, 1);
    assert_eq!(app.count("locked").await, 0);
    app.stop().await;
    Ok(())
}
