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
                    "https": true, "hsts": true}),
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
        (json!(true), json!(true), json!(false))
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
        Some(json!({"rootUrl": null, "notFoundUrl": "https://example.com/missing", "httpsOnly": true})),
    )
    .await;
    assert_eq!(res.status(), 200);
    let changed: Value = res.json().await?;
    assert_eq!(changed["rootUrl"], Value::Null);
    assert_eq!(changed["notFoundUrl"], "https://example.com/missing");
    assert_eq!(changed["httpsOnly"], true);
    assert_eq!(changed["hsts"], true, "left out, kept");
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
