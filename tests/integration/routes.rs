//! One rule per question on every route: a method a route does not have is `405` with `Allow`
//! and a JSON error (nothing counted, nothing created); every `GET` route but the stream also
//! answers `HEAD`; a trailing slash (or a doubled one) names the same route as without it, on
//! both stream transports too.

use reqwest::Method;
use serde_json::json;

use crate::{
    support::{KEY, TestResult, json_error, spawn_app},
    wire::{exchange, get, kept_alive_from},
};

#[tokio::test]
async fn a_method_a_route_does_not_have_is_405_with_allow_and_a_json_error() -> TestResult {
    let app = spawn_app().await;
    app.create_link("meth").await;
    let cases = [
        ("TRACE", "/meth", "GET, HEAD"),
        ("POST", "/meth", "GET, HEAD"),
        ("DELETE", "/meth", "GET, HEAD"),
        ("OPTIONS", "/meth", "GET, HEAD"),
        ("TRACE", "/unknown", "GET, HEAD"),
        ("POST", "/realtime/meth", "GET"),
        ("HEAD", "/realtime/meth", "GET"),
        ("DELETE", "/realtime/meth", "GET"),
        ("DELETE", "/links/meth", "GET, HEAD"),
        ("POST", "/links/meth", "GET, HEAD"),
        ("PUT", "/api/links/meth", "GET, HEAD, PATCH, DELETE"),
        ("POST", "/api/links/meth", "GET, HEAD, PATCH, DELETE"),
        ("POST", "/api/links/meth/clicks", "GET, HEAD"),
        ("PUT", "/api/links", "GET, HEAD, POST"),
        ("DELETE", "/api/links", "GET, HEAD, POST"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let res = app
            .client
            .request(Method::from_bytes(method.as_bytes())?, app.url(path))
            .bearer_auth(KEY)
            .json(&json!({"url": "https://example.com/", "code": "made"}))
            .send()
            .await?;
        let what = format!("{method} {path}");
        assert_eq!(res.status(), 405, "{what}");
        assert_eq!(
            res.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{what}"
        );
        if method != "HEAD" {
            let (_, message) = json_error(res).await;
            assert!(message.contains(method), "{what}: {message}");
        }
    }
    // Nothing was counted or created, and paths no route has are still 404.
    assert_eq!(app.count("meth").await, 0);
    let res = app
        .client
        .get(app.url("/api/links/made"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(res.status(), 404);
    for (method, path) in [("DELETE", "/a/b/c"), ("POST", "/api/nothing")] {
        let res = app
            .client
            .request(Method::from_bytes(method.as_bytes())?, app.url(path))
            .send()
            .await?;
        assert_eq!(res.status(), 404, "{method} {path}");
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn get_routes_answer_head_without_a_body() -> TestResult {
    let app = spawn_app().await;
    app.create_link("hd").await;
    for (path, content_type) in [
        ("/healthz", "application/json"),
        ("/metrics", "text/plain"),
        ("/links/hd", "text/html"),
        ("/api/links/hd", "application/json"),
        ("/api/links/hd/clicks", "application/json"),
    ] {
        let res = app
            .client
            .head(app.url(path))
            .bearer_auth(KEY)
            .send()
            .await?;
        assert_eq!(res.status(), 200, "HEAD {path}");
        let got = crate::support::content_type(&res);
        assert!(got.starts_with(content_type), "HEAD {path}: {got}");
        assert!(res.bytes().await?.is_empty(), "HEAD {path} has no body");
    }
    assert_eq!(app.count("hd").await, 0);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_trailing_slash_names_the_same_route_everywhere() -> TestResult {
    let app = spawn_app().await;
    app.create_link("sl").await;

    for path in ["/sl/", "//sl", "/sl//"] {
        let res = app.client.get(app.url(path)).send().await?;
        assert_eq!(res.status(), 302, "GET {path}");
        assert_eq!(res.headers()["location"], "https://example.com/target");
    }
    assert_eq!(app.count("sl").await, 3, "each of them was a click");

    for path in ["/links/sl/", "/healthz/", "/metrics/"] {
        let res = app.client.get(app.url(path)).send().await?;
        assert_eq!(res.status(), 200, "GET {path}");
    }
    for path in ["/api/links/sl/", "/api/links/sl/clicks/"] {
        let res = app
            .client
            .get(app.url(path))
            .bearer_auth(KEY)
            .send()
            .await?;
        assert_eq!(res.status(), 200, "GET {path}");
    }
    let res = app
        .client
        .post(app.url("/api/links/"))
        .bearer_auth(KEY)
        .json(&json!({"url": "https://example.com/", "code": "made"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201, "POST /api/links/");

    // The stream on both transports: a fresh connection (the lean writer) and a kept-alive one
    // (salvo).
    for path in ["/realtime/sl/", "/realtime//sl", "/realtime/sl?x=/"] {
        let mut fresh = tokio::net::TcpStream::connect(app.addr).await?;
        let answer = exchange(&mut fresh, &get(path)).await.ok_or("no answer")?;
        assert!(answer.is_stream(), "lean, GET {path}: {}", answer.head);
        let mut kept = kept_alive_from([127, 0, 0, 1], app.addr).await;
        let answer = exchange(&mut kept, &get(path)).await.ok_or("no answer")?;
        assert!(answer.is_stream(), "salvo, GET {path}: {}", answer.head);
    }
    // Another segment is another route, on both.
    for path in ["/realtime/sl/x", "/realtime/"] {
        let mut fresh = tokio::net::TcpStream::connect(app.addr).await?;
        let lean = exchange(&mut fresh, &get(path)).await.ok_or("no answer")?;
        let mut kept = kept_alive_from([127, 0, 0, 1], app.addr).await;
        let salvo = exchange(&mut kept, &get(path)).await.ok_or("no answer")?;
        assert_eq!((lean.status, salvo.status), (404, 404), "GET {path}");
        lean.json_error();
        salvo.json_error();
    }
    assert_eq!(app.count("sl").await, 3);
    app.stop().await;
    Ok(())
}
