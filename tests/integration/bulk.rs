//! Many links in one request: `POST`, `PATCH` and `DELETE /api/links/bulk` on the real server,
//! each answering per link in order, with nothing made of a request refused as a whole, and
//! every change in the audit log. (Imports of other shorteners' exports are in `imports`.)

use serde_json::{Value, json};

use crate::support::{KEY, TestApp, TestResult, json_error, spawn_app};

impl TestApp {
    async fn bulk(&self, method: reqwest::Method, body: Value) -> reqwest::Response {
        self.client
            .request(method, self.url("/api/links/bulk"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// Every link code the admin key lists (at most 1000).
    async fn listed(&self) -> Vec<String> {
        let listing = crate::transfer::get(self, "/api/links?limit=1000").await;
        crate::manage::codes(&listing)
    }

    async fn audit(&self, limit: usize) -> Vec<Value> {
        let page = crate::transfer::get(self, &format!("/api/audit?limit={limit}")).await;
        page["entries"].as_array().cloned().unwrap_or_default()
    }
}

fn results(body: &Value) -> Vec<Value> {
    body["results"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_thousand_links_with_bad_ones_among_them_answer_in_order_and_the_good_ones_redirect()
-> TestResult {
    let app = spawn_app().await;
    app.create_link("taken-one").await;
    let mut links: Vec<Value> = (0..1000)
        .map(|i| json!({"url": format!("https://example.com/{i}"), "code": format!("b-{i}")}))
        .collect();
    links[10] = json!({"url": "ftp://example.com/nope", "code": "b-10"});
    links[20] = json!({"url": "https://example.com/20", "code": "taken-one"});
    links[30] = json!({"url": "https://example.com/30", "code": "twice"});
    links[31] = json!({"url": "https://example.com/31", "code": "twice"});
    links[40] = json!({"url": "https://example.com/40", "title": "Generated, with a title"});
    links[500] = json!({"url": "https://example.com/500", "code": "api"});
    links[600] = json!({"url": "https://example.com/600", "maxVisits": 0});
    links[999] = json!({"url": "https://example.com/999", "nope": true});
    let res = app
        .bulk(reqwest::Method::POST, json!({ "links": links }))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await?;
    let results = results(&body);
    assert_eq!(results.len(), 1000);
    let failed: Vec<(usize, u64)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r["status"] != 201)
        .map(|(i, r)| (i, r["status"].as_u64().unwrap_or_default()))
        .collect();
    assert_eq!(
        failed,
        [
            (10, 400),
            (20, 409),
            (31, 409),
            (500, 400),
            (600, 400),
            (999, 400)
        ]
    );
    for (i, word) in [
        (10, "url"),
        (20, "taken-one"),
        (31, "twice"),
        (500, "api"),
        (600, "maxVisits"),
        (999, "nope"),
    ] {
        let error = results[i]["error"].as_str().unwrap_or_default();
        assert!(error.contains(word), "item {i}: {error}");
        assert!(results[i].get("link").is_none(), "item {i}");
    }
    // In order: each created item is the link sent at its place.
    assert_eq!(results[0]["link"]["code"], "b-0");
    assert_eq!(results[30]["link"]["code"], "twice");
    assert_eq!(results[30]["link"]["url"], "https://example.com/30");
    assert_eq!(results[998]["link"]["url"], "https://example.com/998");
    let generated = &results[40]["link"];
    assert_eq!(generated["title"], "Generated, with a title");
    let generated = generated["code"].as_str().unwrap_or_default().to_owned();
    assert_eq!(generated.len(), 7, "{generated}");
    for code in ["b-0", "b-1", "twice", "b-998", generated.as_str()] {
        assert_eq!(app.click(code).await.status(), 302, "{code}");
    }
    assert_eq!(app.click("b-10").await.status(), 404);
    assert_eq!(
        app.click("taken-one")
            .await
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("https://example.com/target"),
        "the taken code keeps its link"
    );
    assert_eq!(app.listed().await.len(), 1 + 994);
    // Every link made is in the audit log, as one creation at a time puts it.
    let audit = app.audit(500).await;
    let created = audit
        .iter()
        .filter(|e| e["action"] == "link.created")
        .count();
    assert_eq!(created, 500, "the newest page is all bulk creations");
    let last = &audit[0];
    assert_eq!(last["target"], "b-998");
    assert_eq!(last["after"]["url"], "https://example.com/998");
    assert_eq!(last["before"], Value::Null);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn too_many_links_or_a_malformed_body_create_nothing() -> TestResult {
    let app = spawn_app().await;
    let links: Vec<Value> = (0..1001)
        .map(|i| json!({"url": format!("https://example.com/{i}"), "code": format!("m-{i}")}))
        .collect();
    let (status, error) = json_error(app.bulk(reqwest::Method::POST, json!(links)).await).await;
    assert_eq!(status, 413, "{error}");
    assert!(error.contains("1001") && error.contains("1000"), "{error}");
    assert!(app.listed().await.is_empty());

    let raw = r#"{"links":[{"url":"https://example.com/a","code":"m-a"},{"url": }]}"#;
    let res = app
        .client
        .post(app.url("/api/links/bulk"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await?;
    let (status, error) = json_error(res).await;
    assert_eq!(status, 400);
    assert!(
        error.contains("invalid JSON body") && error.contains("column"),
        "says where: {error}"
    );
    for (body, word) in [
        (
            json!({"links": [{"url": "https://example.com/b"}], "extra": 1}),
            "extra",
        ),
        (json!({"link": []}), "`link`"),
        (json!({"links": {"url": "https://example.com/c"}}), "array"),
        (json!("links"), "array"),
    ] {
        let (status, error) = json_error(app.bulk(reqwest::Method::POST, body.clone()).await).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(error.contains(word), "{body}: {error}");
    }
    assert!(app.listed().await.is_empty(), "nothing half-made");
    // A bare array is taken too.
    let res = app
        .bulk(
            reqwest::Method::POST,
            json!([{"url": "https://example.com/bare", "code": "bare"}]),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(results(&res.json().await?)[0]["status"], 201);
    app.stop().await;
    Ok(())
}

/// Three links tagged `promo`, one not.
async fn tagged_links(app: &TestApp) -> TestResult {
    let res = app
        .bulk(
            reqwest::Method::POST,
            json!({"links": [
                {"url": "https://example.com/p1", "code": "p1", "tags": ["promo"], "title": "One"},
                {"url": "https://example.com/p2", "code": "p2", "tags": ["Promo", "x"]},
                {"url": "https://example.com/p3", "code": "p3", "tags": ["promo"]},
                {"url": "https://example.com/n1", "code": "n1", "tags": ["other"]},
            ]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    Ok(())
}

#[tokio::test]
async fn bulk_changes_by_code_and_by_tag_follow_the_single_link_rules() -> TestResult {
    let app = spawn_app().await;
    tagged_links(&app).await?;
    assert_eq!(app.click("p2").await.status(), 302);
    let res = app
        .bulk(
            reqwest::Method::PATCH,
            json!({"tag": "promo", "set": {"title": "Sale", "maxVisits": 10}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let changed = results(&res.json().await?);
    let mut codes: Vec<&str> = changed.iter().filter_map(|r| r["code"].as_str()).collect();
    codes.sort_unstable();
    assert_eq!(codes, ["p1", "p2", "p3"]);
    for r in &changed {
        // Each with its count, as a single PATCH answers it.
        let clicks = if r["code"] == "p2" { 1 } else { 0 };
        assert_eq!(r["link"]["clickCount"], clicks, "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["link"]["title"], "Sale");
        assert_eq!(r["link"]["maxVisits"], 10);
    }
    assert_eq!(app.read("n1").await["title"], Value::Null, "not tagged");
    assert_eq!(app.read("p2").await["title"], "Sale");

    let res = app
        .bulk(
            reqwest::Method::PATCH,
            json!({"codes": ["p1", "missing", "n1", "bad code!"], "set": {"title": null}}),
        )
        .await;
    let changed = results(&res.json().await?);
    let statuses: Vec<(&str, u64)> = changed
        .iter()
        .map(|r| {
            (
                r["code"].as_str().unwrap_or_default(),
                r["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("p1", 200),
            ("missing", 404),
            ("n1", 200),
            ("bad code!", 404)
        ]
    );
    assert_eq!(changed[1]["error"], "no such link");
    assert_eq!(app.read("p1").await["title"], Value::Null);

    // Refused as a whole, as the single PATCH refuses it: nothing changes.
    for (body, word) in [
        (
            json!({"codes": ["p3"], "set": {"maxVisits": 0}}),
            "maxVisits",
        ),
        (json!({"codes": ["p3"], "set": {"code": "p4"}}), "code"),
        (
            json!({"codes": ["p3"], "tag": "promo", "set": {}}),
            "either",
        ),
        (json!({"set": {"title": "x"}}), "codes"),
        (json!({"codes": ["p3"]}), "set"),
        (json!({"codes": ["p3"], "set": {"bogus": 1}}), "bogus"),
    ] {
        let (status, error) =
            json_error(app.bulk(reqwest::Method::PATCH, body.clone()).await).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(error.contains(word), "{body}: {error}");
    }
    assert_eq!(app.read("p3").await["maxVisits"], 10);

    // The audit log has each change with what it was before and after.
    let audit = app.audit(10).await;
    let updated: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "link.updated")
        .collect();
    assert_eq!(updated.len(), 5, "3 by tag, 2 by code");
    let p1 = updated
        .iter()
        .find(|e| e["target"] == "p1")
        .expect("p1's change");
    assert_eq!(p1["before"]["title"], "Sale");
    assert_eq!(p1["after"]["title"], Value::Null);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn bulk_deletions_by_code_and_by_tag_answer_per_link_and_are_audited() -> TestResult {
    let app = spawn_app().await;
    tagged_links(&app).await?;
    let res = app
        .bulk(reqwest::Method::DELETE, json!({"codes": ["p1", "nope"]}))
        .await;
    assert_eq!(res.status(), 200);
    let deleted = results(&res.json().await?);
    assert_eq!(deleted[0], json!({"code": "p1", "status": 204}));
    assert_eq!(deleted[1]["status"], 404);
    assert_eq!(app.click("p1").await.status(), 404);

    let res = app
        .bulk(reqwest::Method::DELETE, json!({"tag": "PROMO"}))
        .await;
    let deleted = results(&res.json().await?);
    let mut codes: Vec<&str> = deleted.iter().filter_map(|r| r["code"].as_str()).collect();
    codes.sort_unstable();
    assert_eq!(codes, ["p2", "p3"]);
    assert!(deleted.iter().all(|r| r["status"] == 204));
    assert_eq!(app.listed().await, ["n1"]);
    assert_eq!(app.click("p3").await.status(), 404);
    assert_eq!(app.click("n1").await.status(), 302);

    let audit = app.audit(3).await;
    assert!(
        audit.iter().all(|e| e["action"] == "link.deleted"),
        "{audit:?}"
    );

    // A link whose code is `bulk` is read at its own path, and deleted by its code here.
    app.create_link("bulk").await;
    assert_eq!(app.read("bulk").await["code"], "bulk");
    let res = app
        .bulk(reqwest::Method::DELETE, json!({"codes": ["bulk"]}))
        .await;
    assert_eq!(results(&res.json().await?)[0]["status"], 204);
    assert_eq!(app.click("bulk").await.status(), 404);
    let targets: Vec<&str> = audit.iter().filter_map(|e| e["target"].as_str()).collect();
    assert!(
        targets.contains(&"p1") && targets.contains(&"p2"),
        "{targets:?}"
    );
    assert_eq!(audit[0]["after"], Value::Null);
    assert!(audit[0]["before"]["url"].is_string());
    app.stop().await;
    Ok(())
}

/// A `links` key, stored before the app starts.
const TENANT: &str = "lp_bulk_tenant_key_0123456789";

#[tokio::test]
async fn the_creation_rate_is_taken_once_a_request_and_a_links_key_reaches_only_its_own_links()
-> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let store = linkpulse::store::Store::open(dir.path())?;
        linkpulse::keys::store_key(&store, TENANT, "tenant", false)?;
    }
    let app = crate::support::spawn_with(Some(dir), |c| c.create_rate_per_key = 1).await;
    app.create_link("admins").await;
    let send = |method: reqwest::Method, body: Value| {
        app.client
            .request(method, app.url("/api/links/bulk"))
            .bearer_auth(TENANT)
            .json(&body)
            .send()
    };
    let links: Vec<Value> = (0..50)
        .map(|i| json!({"url": format!("https://example.com/{i}"), "code": format!("t-{i}")}))
        .collect();
    let res = send(reqwest::Method::POST, json!(links)).await?;
    assert_eq!(
        res.status(),
        200,
        "50 links take one creation of the key's rate"
    );
    let made = results(&res.json().await?);
    assert!(made.iter().all(|r| r["status"] == 201));
    let more = json!([{"url": "https://example.com/more", "code": "t-more"}]);
    let (status, error) = json_error(send(reqwest::Method::POST, more).await?).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(app.read_status_of("t-more").await, 404);

    // Another owner's link answers 404, as a single PATCH or DELETE answers it.
    let res = send(
        reqwest::Method::PATCH,
        json!({"codes": ["t-1", "admins"], "set": {"title": "mine"}}),
    )
    .await?;
    let changed = results(&res.json().await?);
    assert_eq!(
        (changed[0]["status"].as_u64(), changed[1]["status"].as_u64()),
        (Some(200), Some(404))
    );
    let res = send(reqwest::Method::DELETE, json!({"codes": ["admins"]})).await?;
    assert_eq!(results(&res.json().await?)[0]["status"], 404);
    assert_eq!(app.click("admins").await.status(), 302);
    assert_eq!(app.read("t-1").await["title"], "mine");
    app.stop().await;
    Ok(())
}

impl TestApp {
    async fn read_status_of(&self, code: &str) -> u16 {
        self.client
            .get(self.url(&format!("/api/links/{code}")))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("sent")
            .status()
            .as_u16()
    }
}
