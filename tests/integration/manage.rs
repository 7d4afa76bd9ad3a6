//! Managing links: deletion seen everywhere and held codes, redirect rules, private stats and
//! badges, and the helpers other files share (listing, changes, visit limits, expiry and
//! password links are in `engines`, on both engines).

use std::time::Duration;

use linkpulse::{keys, store::Store};
use serde_json::{Value, json};

use crate::support::{KEY, Silence, SseClient, TestApp, TestResult, json_error, spawn_with};

/// A non-admin key, stored before the app starts.
const OTHER: &str = "lp_other_owner_key_0123456789";

async fn spawn_with_other(tweak: impl FnOnce(&mut linkpulse::ServeConfig)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = Store::open(dir.path()).expect("store");
        keys::store_key(&store, OTHER, "other", false).expect("other key");
    }
    spawn_with(Some(dir), tweak).await
}

impl TestApp {
    pub(crate) async fn create_as(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/links"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    pub(crate) async fn patch(&self, code: &str, body: Value) -> reqwest::Response {
        self.patch_as(KEY, code, body).await
    }

    pub(crate) async fn patch_as(&self, key: &str, code: &str, body: Value) -> reqwest::Response {
        self.client
            .patch(self.url(&format!("/api/links/{code}")))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    pub(crate) async fn delete_as(&self, key: &str, code: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/api/links/{code}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent")
    }

    pub(crate) async fn list_as(&self, key: &str, query: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/links{query}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent")
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }
}

pub(crate) fn codes(listing: &Value) -> Vec<String> {
    listing["links"]
        .as_array()
        .map(|links| {
            links
                .iter()
                .map(|l| l["code"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn forwarded_queries_and_rules_pick_the_target() -> TestResult {
    let app = spawn_with_other(|c| c.country_header = Some("x-country".into())).await;
    let body = json!({
        "url": "https://example.com/landing?src=short#top", "code": "rules",
        "forwardQuery": true,
        "rules": [
            {"device": "ios", "url": "https://apps.apple.com/app"},
            {"device": "android", "url": "https://play.google.com/app"},
            {"country": "nl", "url": "https://example.nl/"}
        ]
    });
    assert_eq!(app.create(body).await.status(), 201);
    let go = |ua: &'static str, country: &'static str| {
        let app = &app;
        async move {
            let res = app
                .client
                .get(app.url("/rules?utm=a%20b"))
                .header("user-agent", ua)
                .header("x-country", country)
                .send()
                .await
                .expect("sent");
            assert_eq!(res.status(), 302);
            res.headers()["location"]
                .to_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
                  (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
    let android = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like \
                   Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
    let desktop = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
    assert_eq!(
        go(iphone, "NL").await,
        "https://apps.apple.com/app?utm=a%20b"
    );
    assert_eq!(
        go(android, "DE").await,
        "https://play.google.com/app?utm=a%20b"
    );
    assert_eq!(go(desktop, "NL").await, "https://example.nl/?utm=a%20b");
    assert_eq!(
        go(desktop, "DE").await,
        "https://example.com/landing?src=short&utm=a%20b#top"
    );
    assert_eq!(app.count("rules").await, 4, "every rule's redirect counts");
    let (status, error) = json_error(
        app.patch("rules", json!({"rules": [{"url": "https://x.example/"}]}))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(error.contains("rules[0] must name a device"), "{error}");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn deletion_is_seen_at_once_everywhere_and_the_code_is_held() -> TestResult {
    let app = spawn_with_other(|_| {}).await;
    app.create_link("doomed").await;
    app.create_link("kept").await;
    for _ in 0..3 {
        assert_eq!(app.click("doomed").await.status(), 302);
    }
    // Committed (a read waits for that), so the stream opens on them.
    assert_eq!(app.count("doomed").await, 3);
    let mut stream = app.subscribe("doomed").await;
    assert_eq!(stream.status, 200);
    let first = stream.next_data(Duration::from_secs(5)).await;
    assert_eq!(first.and_then(|e| e.count()), Some(3));

    let (status, _) = json_error(app.delete_as(OTHER, "doomed").await).await;
    assert_eq!(status, 404, "another owner's link is not found");
    let res = app.delete_as(KEY, "doomed").await;
    assert_eq!(res.status(), 204);

    // The open stream gets a last event saying so, then ends.
    let last = stream.next_named("deleted", Duration::from_secs(5)).await;
    assert_eq!(
        last.and_then(|e| e.data),
        Some(json!({"code": "doomed", "deleted": true, "clickCount": 3}))
    );
    let after = stream.next(Duration::from_secs(5)).await;
    assert!(
        matches!(after, Err(Silence::Ended)),
        "the stream ended after the deleted event: {after:?}"
    );

    assert_eq!(app.click("doomed").await.status(), 404);
    assert_eq!(app.get("/links/doomed").await.status(), 404);
    let reopened = SseClient::open(&app.client, &app.url("/realtime/doomed"), None).await;
    assert_eq!(reopened.status, 404);
    let res = app
        .client
        .get(app.url("/api/links/doomed"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(json_error(res).await.0, 404);
    assert_eq!(json_error(app.delete_as(KEY, "doomed").await).await.0, 404);
    let listed: Value = app.list_as(KEY, "").await.json().await?;
    assert_eq!(codes(&listed), ["kept"]);
    // The code is held: not reused for another target.
    let (status, error) = json_error(
        app.create(json!({"url": "https://evil.example/", "code": "doomed"}))
            .await,
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        error.contains("belonged to a deleted link and is held until"),
        "{error}"
    );

    let dir = app.stop().await;
    {
        let store = Store::open(dir.path())?;
        assert_eq!(
            store.count_click_events("doomed")?,
            0,
            "its clicks are gone"
        );
        assert_eq!(store.link("doomed")?, None);
        let totals = store.totals();
        assert_eq!(
            (totals.links, totals.deleted_links, totals.deleted_clicks),
            (1, 1, 3)
        );
    }
    let app = spawn_with(Some(dir), |_| {}).await;
    assert_eq!(
        app.click("doomed").await.status(),
        404,
        "after a restart too"
    );
    assert_eq!(app.click("kept").await.status(), 302);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn private_stats_show_only_the_count() -> TestResult {
    let app = spawn_with_other(|_| {}).await;
    let body = json!({"url": "https://example.com/private", "code": "quiet",
                      "publicStats": false});
    assert_eq!(app.create(body).await.status(), 201);
    assert_eq!(app.click("quiet").await.status(), 302);
    assert_eq!(app.count("quiet").await, 1);
    let mut stream = app.subscribe("quiet").await;
    let mut named = Vec::new();
    let frame = loop {
        let event = stream.next(Duration::from_secs(5)).await?;
        if let Some(name) = &event.name {
            named.push(name.clone());
        } else if event.data.is_some() {
            break event;
        }
    };
    assert_eq!(frame.count(), Some(1));
    assert_eq!(
        frame.data.as_ref().map(|d| d["clickAnalytics"].clone()),
        Some(Value::Null)
    );
    assert!(named.is_empty(), "no stats event: {named:?}");
    let page = app.get("/links/quiet").await.text().await?;
    assert!(
        !page.contains("https://example.com/private"),
        "the target is not shown"
    );
    assert!(page.contains("keeps this link's details private"));

    // Made public: the next frame carries the click's details.
    assert_eq!(
        app.patch("quiet", json!({"publicStats": true}))
            .await
            .status(),
        200
    );
    assert_eq!(app.click("quiet").await.status(), 302);
    let frame = stream
        .next_data(Duration::from_secs(5))
        .await
        .ok_or("no frame")?;
    assert_eq!(frame.count(), Some(2));
    assert!(
        frame
            .data
            .is_some_and(|d| d["clickAnalytics"]["shortCode"] == "quiet")
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn public_links_have_a_badge_and_embeddable_streams_private_ones_do_not() -> TestResult {
    let app = spawn_with_other(|_| {}).await;
    app.create_link("shown").await;
    let body = json!({"url": "https://example.com/", "code": "hidden", "publicStats": false});
    assert_eq!(app.create(body).await.status(), 201);
    for _ in 0..1234 {
        assert_eq!(app.click("shown").await.status(), 302);
    }
    // A public read does not wait for the writer: the badge may miss the clicks of the last
    // few milliseconds, then shows them.
    crate::support::eventually(Duration::from_secs(5), "the badge shows 1,234", || async {
        let res = app.get("/badge/shown.svg").await;
        res.text()
            .await
            .is_ok_and(|svg| svg.contains(">1,234</text>"))
    })
    .await;
    let res = app.get("/badge/shown.svg").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "image/svg+xml; charset=utf-8"
    );
    assert_eq!(res.headers()["cache-control"], "public, max-age=5");
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let svg = res.text().await?;
    assert!(
        svg.starts_with("<svg") && svg.contains(">1,234</text>"),
        "{svg}"
    );
    for path in ["/badge/hidden.svg", "/badge/nosuch.svg", "/badge/shown.png"] {
        let (status, _) = json_error(app.get(path).await).await;
        assert_eq!(status, 404, "{path}");
    }

    // A fresh connection (the lean stream writer) and one that carried a request first (salvo).
    for client in [crate::support::client(), app.client.clone()] {
        let _ = client.get(app.url("/healthz")).send().await?;
        for (code, public) in [("shown", true), ("hidden", false)] {
            let res = client
                .get(app.url(&format!("/realtime/{code}")))
                .send()
                .await?;
            assert_eq!(res.status(), 200);
            let origin = res.headers().get("access-control-allow-origin");
            assert_eq!(origin.is_some(), public, "{code}: {origin:?}");
        }
    }
    // The stats page shows the short link's QR code.
    let page = app.get("/links/shown").await.text().await?;
    let figure = page.split("id=\"qr\"").nth(1).unwrap_or_default();
    assert!(
        figure.contains("<svg") && figure.contains("<path"),
        "{page}"
    );
    app.stop().await;
    Ok(())
}
