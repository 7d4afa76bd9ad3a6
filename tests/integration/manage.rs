//! Managing links: listing, changing and deleting them, visit limits and expiry under racing
//! clients, password-protected links, redirect rules, and every refusal with its JSON message.

use std::{sync::Arc, time::Duration};

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
    async fn create_as(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/links"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    async fn patch(&self, code: &str, body: Value) -> reqwest::Response {
        self.patch_as(KEY, code, body).await
    }

    async fn patch_as(&self, key: &str, code: &str, body: Value) -> reqwest::Response {
        self.client
            .patch(self.url(&format!("/api/links/{code}")))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    async fn delete_as(&self, key: &str, code: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/api/links/{code}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent")
    }

    async fn list_as(&self, key: &str, query: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/links{query}")))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }
}

fn codes(listing: &Value) -> Vec<String> {
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
async fn listing_is_newest_first_paged_filtered_and_per_owner() -> TestResult {
    let app = spawn_with_other(|_| {}).await;
    for (code, title, tags) in [
        ("first", "Spring sale", json!(["promo"])),
        ("second", "Docs", json!(["docs"])),
        ("third", "Autumn sale", json!(["promo", "Q4"])),
    ] {
        let body = json!({"url": format!("https://example.com/{code}"), "code": code,
                          "title": title, "tags": tags});
        assert_eq!(app.create_as(OTHER, body).await.status(), 201);
        // Creation times are in milliseconds: keep them apart so the order is the creation order.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    app.create_link("admins").await;
    for _ in 0..2 {
        assert_eq!(app.click("second").await.status(), 302);
    }

    let all: Value = app.list_as(OTHER, "").await.json().await?;
    assert_eq!(codes(&all), ["third", "second", "first"]);
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["links"][1]["clickCount"], 2, "with their counts");
    assert_eq!(all["links"][0]["title"], "Autumn sale");
    assert_eq!(all["links"][0]["tags"], json!(["promo", "Q4"]));

    // Paging with the opaque cursor.
    let page: Value = app.list_as(OTHER, "?limit=2").await.json().await?;
    assert_eq!(codes(&page), ["third", "second"]);
    let next = page["next"].as_str().unwrap_or_default().to_owned();
    assert!(!next.is_empty());
    let page: Value = app
        .list_as(OTHER, &format!("?limit=2&cursor={next}"))
        .await
        .json()
        .await?;
    assert_eq!(codes(&page), ["first"]);
    assert_eq!(page["next"], Value::Null);

    // `q` matches code, URL and title, in any case; `tag` a tag.
    let found: Value = app.list_as(OTHER, "?q=SALE").await.json().await?;
    assert_eq!(codes(&found), ["third", "first"]);
    let found: Value = app
        .list_as(OTHER, "?q=example.com/sec")
        .await
        .json()
        .await?;
    assert_eq!(codes(&found), ["second"]);
    let found: Value = app.list_as(OTHER, "?tag=q4").await.json().await?;
    assert_eq!(codes(&found), ["third"]);

    // An admin key sees everyone's.
    let admin: Value = app.list_as(KEY, "").await.json().await?;
    assert_eq!(codes(&admin), ["admins", "third", "second", "first"]);

    for (query, message) in [
        ("?limit=0", "limit must be 1 to 1000"),
        ("?limit=x", "limit must be 1 to 1000"),
        ("?cursor=zz", "cursor is not one this API gave"),
    ] {
        let (status, error) = json_error(app.list_as(OTHER, query).await).await;
        assert_eq!(status, 400, "{query}");
        assert!(error.contains(message), "{query}: {error}");
    }
    let (status, _) = json_error(app.get("/api/links").await).await;
    assert_eq!(status, 401);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_change_reaches_the_redirect_at_once_and_survives_a_restart() -> TestResult {
    let app = spawn_with_other(|_| {}).await;
    app.create_link("moving").await;
    // A click makes the link's actor live: its copy of the link must change too.
    assert_eq!(app.click("moving").await.status(), 302);
    let res = app
        .patch(
            "moving",
            json!({"url": "https://example.org/new", "title": "Moved", "tags": ["a"],
                   "redirectStatus": 301}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await?;
    assert_eq!(body["url"], "https://example.org/new");
    assert_eq!(body["redirectStatus"], 301);
    assert_eq!(body["clickCount"], 1);
    let res = app.click("moving").await;
    assert_eq!(res.status(), 301, "the new status at once");
    assert_eq!(res.headers()["location"], "https://example.org/new");

    // Nothing but the code may change; bad values are named.
    for (body, message) in [
        (json!({"code": "other"}), "code of a link cannot be changed"),
        (json!({"url": "javascript:alert(1)"}), "url"),
        (
            json!({"redirectStatus": 200}),
            "redirectStatus must be 301, 302, 307 or 308",
        ),
        (json!({"maxVisits": -1}), "invalid JSON body"),
        (json!({"color": "red"}), "unknown field"),
    ] {
        let (status, error) = json_error(app.patch("moving", body.clone()).await).await;
        assert_eq!(status, 400, "{body}");
        assert!(error.contains(message), "{body}: {error}");
    }
    let (status, _) = json_error(app.patch_as(OTHER, "moving", json!({"title": "x"})).await).await;
    assert_eq!(status, 404, "another owner's link is not found");
    let (status, _) = json_error(app.patch("nosuch", json!({"title": "x"})).await).await;
    assert_eq!(status, 404);
    let res = app
        .client
        .patch(app.url("/api/links/moving"))
        .bearer_auth(KEY)
        .body("{}")
        .send()
        .await?;
    assert_eq!(json_error(res).await.0, 415);

    let dir = app.stop().await;
    let app = spawn_with(Some(dir), |_| {}).await;
    let res = app.click("moving").await;
    assert_eq!(res.status(), 301);
    assert_eq!(res.headers()["location"], "https://example.org/new");
    let read = app.read("moving").await;
    assert_eq!(read["title"], "Moved");
    assert_eq!(read["clickCount"], 3);
    app.stop().await;
    Ok(())
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

/// 64 clients race past the limit: exactly `maxVisits` are redirected and counted.
async fn race(app: &Arc<TestApp>, code: &str, per_client: usize) -> Vec<(u16, String)> {
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let app = app.clone();
        let code = code.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..per_client {
                let res = app.click(&code).await;
                let location = res
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.push((res.status().as_u16(), location));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_visits_is_exact_under_64_racing_clients() -> TestResult {
    let app = Arc::new(spawn_with_other(|_| {}).await);
    let body = json!({"url": "https://example.com/limited", "code": "limited", "maxVisits": 100});
    assert_eq!(app.create(body).await.status(), 201);
    let answers = race(&app, "limited", 4).await;
    let redirected = answers.iter().filter(|(s, _)| *s == 302).count();
    let gone = answers.iter().filter(|(s, _)| *s == 410).count();
    assert_eq!(
        (redirected, gone),
        (100, 156),
        "exactly the limit, then 410"
    );
    assert_eq!(app.count("limited").await, 100);

    // With an expiredUrl, the later ones go there instead, uncounted.
    let res = app
        .patch(
            "limited",
            json!({"maxVisits": 150, "expiredUrl": "https://example.com/sold-out"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let answers = race(&app, "limited", 2).await;
    let counted = answers
        .iter()
        .filter(|(s, l)| *s == 302 && l == "https://example.com/limited")
        .count();
    let sold_out = answers
        .iter()
        .filter(|(s, l)| *s == 302 && l == "https://example.com/sold-out")
        .count();
    assert_eq!((counted, sold_out), (50, 78));
    assert_eq!(app.count("limited").await, 150);
    let head = app.client.head(app.url("/limited")).send().await?;
    assert_eq!(head.headers()["location"], "https://example.com/sold-out");
    // Every client task has ended, and its handle on the app with it.
    let app = Arc::try_unwrap(app).map_err(|_| "a client task still holds the app")?;
    let dir = app.stop().await;
    let app = spawn_with(Some(dir), |_| {}).await;
    assert_eq!(
        app.count("limited").await,
        150,
        "the limit holds across a restart"
    );
    assert_eq!(
        app.click("limited").await.headers()["location"],
        "https://example.com/sold-out"
    );
    assert_eq!(app.count("limited").await, 150);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_is_exact_under_64_racing_clients() -> TestResult {
    let app = Arc::new(spawn_with_other(|_| {}).await);
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(700);
    let body = json!({"url": "https://example.com/soon", "code": "soon",
                      "expiresAt": expires.to_string()});
    assert_eq!(app.create(body).await.status(), 201);
    // Clients click until each has seen the link expire.
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let (mut redirected, mut after) = (0u64, Vec::new());
            for _ in 0..2_000 {
                let res = app.click("soon").await;
                match res.status().as_u16() {
                    302 => redirected += 1,
                    410 => {
                        after.push(410);
                        break;
                    }
                    other => after.push(other),
                }
            }
            (redirected, after)
        }));
    }
    let mut redirected = 0;
    for task in tasks {
        let (n, after) = task.await?;
        redirected += n;
        assert_eq!(after, [410], "each client ends on 410, nothing else");
    }
    assert!(redirected > 0);
    assert_eq!(
        app.count("soon").await,
        redirected,
        "every redirect answered is counted"
    );
    assert_eq!(app.click("soon").await.status(), 410);
    assert_eq!(app.count("soon").await, redirected, "and nothing after");
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
async fn a_deleted_code_can_be_used_again_after_its_hold() -> TestResult {
    let app = spawn_with_other(|c| c.deleted_code_hold = Duration::ZERO).await;
    app.create_link("reuse").await;
    assert_eq!(app.click("reuse").await.status(), 302);
    assert_eq!(app.delete_as(KEY, "reuse").await.status(), 204);
    let res = app
        .create(json!({"url": "https://example.com/again", "code": "reuse"}))
        .await;
    assert_eq!(res.status(), 201);
    let res = app.click("reuse").await;
    assert_eq!(res.headers()["location"], "https://example.com/again");
    assert_eq!(
        app.count("reuse").await,
        1,
        "a new link starts from nothing"
    );
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_password_link_shows_a_form_and_counts_only_the_right_password() -> TestResult {
    let app = spawn_with_other(|_| {}).await;
    let body = json!({"url": "https://example.com/secret", "code": "locked",
                      "password": "open sesame"});
    let created: Value = app.create(body).await.json().await?;
    assert_eq!(created["passwordProtected"], true);
    assert!(created.get("password").is_none(), "the hash is never shown");

    let res = app.click("locked").await;
    assert_eq!(res.status(), 200);
    let form = res.text().await?;
    assert!(form.contains("<form method=\"post\""), "{form}");

    let post = |password: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/locked"))
                .form(&[("password", password)])
                .send()
                .await
                .expect("sent")
        }
    };
    let res = post("wrong").await;
    assert_eq!(res.status(), 401);
    assert!(res.text().await?.contains("Wrong password"));
    let trace = app
        .client
        .request(reqwest::Method::TRACE, app.url("/locked"))
        .send()
        .await?;
    assert_eq!(trace.status(), 405);
    assert_eq!(
        trace.headers()["allow"],
        "GET, HEAD, POST",
        "the form's answer is a POST"
    );
    assert_eq!(
        app.count("locked").await,
        0,
        "a wrong password is not a click"
    );
    let res = post("open sesame").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "https://example.com/secret");
    assert_eq!(app.count("locked").await, 1);

    // Removing the password makes it a plain link again.
    assert_eq!(
        app.patch("locked", json!({"password": null}))
            .await
            .status(),
        200
    );
    assert_eq!(app.click("locked").await.status(), 302);
    let (status, error) = json_error(app.patch("locked", json!({"password": ""})).await).await;
    assert_eq!(status, 400);
    assert!(
        error.contains("password must be 1 to 128 characters"),
        "{error}"
    );
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
