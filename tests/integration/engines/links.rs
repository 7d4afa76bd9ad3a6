//! Links and keys through the API: creating, reading, changing, deleting and listing links,
//! and an admin making and revoking API keys.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Engine, spawn_on};
use crate::{
    keys::listed,
    manage::codes,
    support::{KEY, TestApp, TestResult, json_error},
};

/// A key of another owner (scope `links`), made through the API as any owner's key is.
async fn other_key(app: &TestApp) -> String {
    app.make_key("other", "links").await["key"]
        .as_str()
        .expect("the new key")
        .to_owned()
}

pub(super) async fn create_redirect_and_read_back(engine: Engine) -> TestResult {
    let app = spawn_on(engine, |_| {}).await;
    let res = app
        .create(json!({"url": "https://example.com/guide?x=1", "code": "guide"}))
        .await;
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str()?.to_owned();
    assert_eq!(location, "/api/links/guide");
    let body: Value = res.json().await?;
    assert_eq!(body["code"], "guide");
    assert_eq!(body["url"], "https://example.com/guide?x=1");
    assert_eq!(body["shortUrl"], app.url("/guide"));
    assert_eq!(body["statsUrl"], app.url("/links/guide"));
    assert_eq!(body["clickCount"], 0);
    assert!(body["createdAt"].as_str().is_some_and(|s| s.ends_with('Z')));

    let res = app.click("guide").await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/guide?x=1");

    let read = app.read("guide").await;
    assert_eq!(read["clickCount"], 1);
    assert_eq!(read["url"], "https://example.com/guide?x=1");
    assert_eq!(read["lastClick"]["shortCode"], "guide");
    assert_eq!(
        read["lastClick"]["ipAddress"], "127.0.0.0",
        "addresses are anonymised"
    );

    let clicks: Value = app
        .client
        .get(app.url("/api/links/guide/clicks"))
        .bearer_auth(KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(clicks["clicks"].as_array().map(Vec::len), Some(1));
    assert_eq!(clicks["clicks"][0]["seq"], 1);
    app.stop().await;
    Ok(())
}

pub(super) async fn a_change_reaches_the_redirect_at_once_and_survives_a_restart(
    engine: Engine,
) -> TestResult {
    let app = spawn_on(engine, |_| {}).await;
    let other = other_key(&app).await;
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
    let (status, _) = json_error(app.patch_as(&other, "moving", json!({"title": "x"})).await).await;
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

    let app = app.restart().await;
    let res = app.click("moving").await;
    assert_eq!(res.status(), 301);
    assert_eq!(res.headers()["location"], "https://example.org/new");
    let read = app.read("moving").await;
    assert_eq!(read["title"], "Moved");
    assert_eq!(read["clickCount"], 3);
    app.stop().await;
    Ok(())
}

pub(super) async fn a_deleted_code_can_be_used_again_after_its_hold(engine: Engine) -> TestResult {
    let app = spawn_on(engine, |c| c.deleted_code_hold = Duration::ZERO).await;
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

pub(super) async fn listing_is_newest_first_paged_filtered_and_per_owner(
    engine: Engine,
) -> TestResult {
    let app = spawn_on(engine, |_| {}).await;
    let other = other_key(&app).await;
    for (code, title, tags) in [
        ("first", "Spring sale", json!(["promo"])),
        ("second", "Docs", json!(["docs"])),
        ("third", "Autumn sale", json!(["promo", "Q4"])),
    ] {
        let body = json!({"url": format!("https://example.com/{code}"), "code": code,
                          "title": title, "tags": tags});
        assert_eq!(app.create_as(&other, body).await.status(), 201);
        // Creation times are in milliseconds: keep them apart so the order is the creation order.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    app.create_link("admins").await;
    for _ in 0..2 {
        assert_eq!(app.click("second").await.status(), 302);
    }

    let all: Value = app.list_as(&other, "").await.json().await?;
    assert_eq!(codes(&all), ["third", "second", "first"]);
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["links"][1]["clickCount"], 2, "with their counts");
    assert_eq!(all["links"][0]["title"], "Autumn sale");
    assert_eq!(all["links"][0]["tags"], json!(["promo", "Q4"]));

    // Paging with the opaque cursor.
    let page: Value = app.list_as(&other, "?limit=2").await.json().await?;
    assert_eq!(codes(&page), ["third", "second"]);
    let next = page["next"].as_str().unwrap_or_default().to_owned();
    assert!(!next.is_empty());
    let page: Value = app
        .list_as(&other, &format!("?limit=2&cursor={next}"))
        .await
        .json()
        .await?;
    assert_eq!(codes(&page), ["first"]);
    assert_eq!(page["next"], Value::Null);

    // `q` matches code, URL and title, in any case; `tag` a tag.
    let found: Value = app.list_as(&other, "?q=SALE").await.json().await?;
    assert_eq!(codes(&found), ["third", "first"]);
    let found: Value = app
        .list_as(&other, "?q=example.com/sec")
        .await
        .json()
        .await?;
    assert_eq!(codes(&found), ["second"]);
    let found: Value = app.list_as(&other, "?tag=q4").await.json().await?;
    assert_eq!(codes(&found), ["third"]);

    // An admin key sees everyone's.
    let admin: Value = app.list_as(KEY, "").await.json().await?;
    assert_eq!(codes(&admin), ["admins", "third", "second", "first"]);

    for (query, message) in [
        ("?limit=0", "limit must be 1 to 1000"),
        ("?limit=x", "limit must be 1 to 1000"),
        ("?cursor=zz", "cursor is not one this API gave"),
    ] {
        let (status, error) = json_error(app.list_as(&other, query).await).await;
        assert_eq!(status, 400, "{query}");
        assert!(error.contains(message), "{query}: {error}");
    }
    let (status, _) = json_error(app.get("/api/links").await).await;
    assert_eq!(status, 401);
    app.stop().await;
    Ok(())
}

pub(super) async fn an_admin_makes_lists_and_revokes_keys(engine: Engine) -> TestResult {
    let app = spawn_on(engine, |_| {}).await;
    let made = app.make_key("dashboard", "read").await;
    let key = made["key"].as_str().ok_or("a key")?;
    let id = made["id"].as_str().ok_or("an id")?;
    assert!(key.starts_with("lp_") && key.len() == 35, "{made}");
    assert_eq!(
        (made["name"].as_str(), made["scope"].as_str()),
        (Some("dashboard"), Some("read"))
    );
    assert!(
        made["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{made}"
    );
    let second = app.make_key("ci", "links").await;

    let keys = app.list_keys().await;
    let names: Vec<&str> = keys.iter().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(
        names,
        ["initial", "dashboard", "ci"],
        "oldest first: {keys:?}"
    );
    let shown = listed(&keys, id).ok_or("the new key is listed")?;
    assert_eq!(
        shown,
        &json!({"id": id, "name": "dashboard", "scope": "read",
                "createdAt": made["createdAt"], "lastUsedAt": null})
    );
    assert!(
        !serde_json::to_string(&keys)?.contains(key),
        "a key is shown only when it is made"
    );

    let res = app.revoke_key(KEY, id).await;
    assert_eq!(res.status(), 204);
    assert_eq!(res.bytes().await?.len(), 0);
    let keys = app.list_keys().await;
    assert!(
        listed(&keys, id).is_none() && listed(&keys, second["id"].as_str().ok_or("id")?).is_some()
    );
    let (status, _) = json_error(app.revoke_key(KEY, id).await).await;
    assert_eq!(status, 404, "revoked once");
    app.stop().await;
    Ok(())
}
