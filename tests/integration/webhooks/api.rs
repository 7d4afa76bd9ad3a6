//! `/api/webhooks` from outside: targets refused with the reason, a secret shown once, every
//! message signed as the Standard Webhooks library checks it, clicks and link changes
//! delivered, rotation, the test message, the last attempts, and a failing receiver retried
//! with one message id, disabled (the audit log says so) and resumed from its cursor.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Receiver, free_port, make_webhook, until};
use crate::support::{KEY, TestResult, json_error, spawn_with};
use crate::transfer::get;

const WAIT: Duration = Duration::from_secs(30);

async fn post(app: &crate::support::TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("a POST")
}

async fn patch(app: &crate::support::TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("a PATCH")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_inside_the_network_and_bad_fields_are_refused_with_the_reason() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    app.create_link("known").await;
    for (url, says) in [
        ("ftp://example.com/hook", "http or https"),
        ("example.com/hook", "not a URL"),
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://[fd00:ec2::254]/", "unique local"),
        // A name, refused for where it resolves.
        ("http://localhost:9/hook", "resolves to a loopback"),
    ] {
        let (status, message) =
            json_error(post(&app, "/api/webhooks", json!({"url": url})).await).await;
        assert_eq!(status, 400, "{url}");
        assert!(message.contains(says), "{url}: {message}");
    }
    for (body, says) in [
        (
            json!({"url": "https://93.184.215.14/h", "events": ["link.exploded"]}),
            "unknown event",
        ),
        (
            json!({"url": "https://93.184.215.14/h", "events": []}),
            "at least one",
        ),
        (
            json!({"url": "https://93.184.215.14/h", "links": ["nothing-here"]}),
            "no such link",
        ),
        (
            json!({"url": "https://93.184.215.14/h", "secret": "mine"}),
            "unknown field",
        ),
    ] {
        let (status, message) = json_error(post(&app, "/api/webhooks", body.clone()).await).await;
        assert_eq!(status, 400, "{body}");
        assert!(message.contains(says), "{body}: {message}");
    }
    // Only owners, admins and admin keys manage webhooks.
    let links_key = app
        .client
        .post(app.url("/api/keys"))
        .bearer_auth(KEY)
        .json(&json!({"name": "a script", "scope": "links"}))
        .send()
        .await?
        .json::<Value>()
        .await?["key"]
        .as_str()
        .ok_or("a key")?
        .to_owned();
    let refused = app
        .client
        .get(app.url("/api/webhooks"))
        .bearer_auth(&links_key)
        .send()
        .await?;
    assert_eq!(json_error(refused).await.0, 403);
    assert_eq!(get(&app, "/api/webhooks").await["webhooks"], json!([]));
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_and_link_changes_arrive_signed_and_a_rotated_secret_keeps_signing() -> TestResult {
    let app = spawn_with(None, |c| c.webhook_allow_private = true).await;
    let host = "127.0.0.1";
    app.create_link("before").await;
    for _ in 0..2 {
        assert_eq!(app.click("before").await.status(), 302);
    }
    app.create_link("a").await;
    // Both stored (a webhook starts after the clicks stored when it is made).
    crate::support::eventually(WAIT, "2 clicks stored", || async {
        app.count("before").await == 2
    })
    .await;
    let port = free_port();
    let res = post(&app, "/api/webhooks", json!({"url": Receiver::url(port)})).await;
    assert_eq!(res.status(), 201);
    let made: Value = res.json().await?;
    let (id, secret) = (
        made["id"].as_str().ok_or("id")?.to_owned(),
        made["secret"].as_str().ok_or("secret")?.to_owned(),
    );
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(
        made["events"],
        json!([
            "link.clicked",
            "link.created",
            "link.updated",
            "link.deleted"
        ])
    );
    // The secret is shown once.
    let listed = get(&app, "/api/webhooks").await;
    assert_eq!(listed["webhooks"][0]["id"], json!(id));
    assert!(listed["webhooks"][0].get("secret").is_none(), "{listed}");
    assert!(
        get(&app, &format!("/api/webhooks/{id}"))
            .await
            .get("secret")
            .is_none()
    );

    let mut receiver = Receiver::start(port, &[&secret]);
    for _ in 0..3 {
        assert_eq!(app.click("a").await.status(), 302);
    }
    assert_eq!(app.click("before").await.status(), 302);
    until(WAIT, "the clicks after the webhook was made", || {
        receiver.distinct() == 4
    })
    .await;
    let clicks = receiver.clicks();
    assert_eq!(
        clicks[&format!("{host}/a")]
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        clicks[&format!("{host}/before")]
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [3],
        "clicks stored before the webhook was made are not sent"
    );

    // Link changes, each as its own message with the link as the API shows it.
    app.create_link("b").await;
    assert_eq!(
        patch(&app, "/api/links/b", json!({"title": "Bee"}))
            .await
            .status(),
        200
    );
    let deleted = app
        .client
        .delete(app.url("/api/links/b"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(deleted.status(), 204);
    until(WAIT, "created, updated, deleted", || {
        receiver.of_type("link.deleted").len() == 1
    })
    .await;
    let created = receiver.of_type("link.created");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["data"]["code"], "b");
    assert_eq!(receiver.of_type("link.updated")[0]["data"]["title"], "Bee");
    let kinds: Vec<String> = receiver
        .messages()
        .iter()
        .filter(|m| m["type"] != "link.clicked")
        .map(|m| m["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["link.created", "link.updated", "link.deleted"],
        "in order"
    );

    // A test message, answered by the receiver.
    let tried: Value = post(&app, &format!("/api/webhooks/{id}/test"), json!({}))
        .await
        .json()
        .await?;
    assert_eq!(tried["status"], 204, "{tried}");
    assert_eq!(receiver.of_type("webhook.test").len(), 1);

    // A receiver's redirect is not followed: the attempt failed, and says why.
    receiver.mode(json!({"mode": "redirect"})).await;
    let tried: Value = post(&app, &format!("/api/webhooks/{id}/test"), json!({}))
        .await
        .json()
        .await?;
    assert_eq!(tried["status"], 307, "{tried}");
    assert!(
        tried["error"]
            .as_str()
            .unwrap_or("")
            .contains("not followed"),
        "{tried}"
    );
    receiver.mode(json!({"mode": "ok"})).await;

    // The last attempts, newest first.
    let deliveries = get(&app, &format!("/api/webhooks/{id}/deliveries")).await;
    let attempts = deliveries["deliveries"].as_array().ok_or("deliveries")?;
    assert!(!attempts.is_empty());
    assert!(
        attempts
            .iter()
            .all(|d| d["status"] == 204 && d["error"].is_null()),
        "{deliveries}"
    );
    assert_eq!(attempts[0]["event"], "link.deleted");
    assert_eq!(
        deliveries["deliveredClicks"], 4,
        "each click once: {deliveries}"
    );
    assert_eq!(deliveries["failures"], 0);

    // Rotation: the receiver that knows only the old secret still verifies (both are
    // signed for a day), and so does one that knows only the new one.
    let rotated: Value = post(&app, &format!("/api/webhooks/{id}/rotate"), json!({}))
        .await
        .json()
        .await?;
    let new_secret = rotated["secret"].as_str().ok_or("a new secret")?.to_owned();
    assert_ne!(new_secret, secret);
    assert!(rotated["previousSecretUntil"].is_string());
    assert_eq!(app.click("a").await.status(), 302);
    until(WAIT, "a click signed with both secrets", || {
        receiver.distinct() == 5
    })
    .await;
    receiver.down();
    let mut fresh = Receiver::start(port, &[&new_secret]);
    assert_eq!(app.click("a").await.status(), 302);
    until(WAIT, "a click the new secret verifies", || {
        fresh.distinct() == 1
    })
    .await;

    // Only some links.
    assert_eq!(
        patch(
            &app,
            &format!("/api/webhooks/{id}"),
            json!({"links": ["a"]})
        )
        .await
        .status(),
        200
    );
    // `before` first: had it been sent, it would have come before or with `a`'s click.
    assert_eq!(app.click("before").await.status(), 302);
    crate::support::eventually(WAIT, "stored", || async { app.count("before").await == 4 }).await;
    assert_eq!(app.click("a").await.status(), 302);
    until(WAIT, "the click of a", || fresh.distinct() == 2).await;
    assert!(
        !fresh.clicks().contains_key(&format!("{host}/before")),
        "before is not covered"
    );

    let gone = app
        .client
        .delete(app.url(&format!("/api/webhooks/{id}")))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(gone.status(), 204);
    let missing = app
        .client
        .get(app.url(&format!("/api/webhooks/{id}")))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(json_error(missing).await.0, 404);
    fresh.down();
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_is_retried_with_one_message_id_then_disabled_and_resumes_when_enabled()
-> TestResult {
    let app = spawn_with(None, |c| {
        c.webhook_allow_private = true;
        c.webhook_max_failures = 4;
    })
    .await;
    app.create_link("a").await;
    let port = free_port();
    let (id, secret) = make_webhook(
        &app.client,
        &app.base,
        json!({"url": Receiver::url(port), "events": ["link.clicked"]}),
    )
    .await;
    let receiver = Receiver::start(port, &[&secret]);
    receiver.mode(json!({"mode": "fail"})).await;
    for _ in 0..5 {
        assert_eq!(app.click("a").await.status(), 302);
    }
    let path = format!("/api/webhooks/{id}");
    let mut disabled = Value::Null;
    for _ in 0..600 {
        disabled = get(&app, &path).await;
        if disabled["enabled"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        disabled["enabled"], false,
        "disabled after 4 failures: {disabled}"
    );
    let reason = disabled["disabledReason"].as_str().ok_or("a reason")?;
    assert!(
        reason.contains("4 failed attempts") && reason.contains("500"),
        "{reason}"
    );
    let deliveries = get(&app, &format!("{path}/deliveries")).await;
    let attempts = deliveries["deliveries"].as_array().ok_or("attempts")?;
    assert_eq!(attempts.len(), 4, "{deliveries}");
    assert!(attempts.iter().all(|d| d["status"] == 500));
    let first = &attempts[0]["messageId"];
    assert!(
        attempts.iter().all(|d| d["messageId"] == *first),
        "a retried message keeps its webhook-id: {deliveries}"
    );
    assert_eq!(deliveries["failures"], 4);
    // The audit log says linkpulse disabled it, and why.
    let audit = get(&app, "/api/audit").await;
    let entry = audit["entries"]
        .as_array()
        .ok_or("entries")?
        .iter()
        .find(|e| e["action"] == "webhook.disabled")
        .cloned()
        .ok_or("a webhook.disabled entry")?;
    assert_eq!(entry["target"], json!(id));
    assert!(
        entry["who"].as_str().unwrap_or("").contains("linkpulse"),
        "{entry}"
    );
    assert_eq!(entry["after"]["enabled"], false);

    // Mended and enabled again: every click, from where it stopped.
    receiver.mode(json!({"mode": "ok"})).await;
    for _ in 0..2 {
        assert_eq!(app.click("a").await.status(), 302);
    }
    let enabled = patch(&app, &path, json!({"enabled": true})).await;
    assert_eq!(enabled.status(), 200);
    until(WAIT, "all 7 clicks after enabling", || {
        receiver.distinct() == 7
    })
    .await;
    let got = get(&app, &path).await;
    assert_eq!(
        (got["enabled"].clone(), got["disabledReason"].clone()),
        (json!(true), Value::Null)
    );
    let mut deliveries = Value::Null;
    for _ in 0..600 {
        deliveries = get(&app, &format!("{path}/deliveries")).await;
        if deliveries["failures"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        deliveries["failures"], 0,
        "failures forgotten: {deliveries}"
    );
    assert_eq!(deliveries["deliveries"][0]["status"], 204);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_deleted_and_made_again_is_delivered_from_its_first_click() -> TestResult {
    let app = spawn_with(None, |c| {
        c.webhook_allow_private = true;
        c.deleted_code_hold = Duration::ZERO;
    })
    .await;
    let host = "127.0.0.1";
    app.create_link("again").await;
    let port = free_port();
    let (_, secret) = make_webhook(
        &app.client,
        &app.base,
        json!({"url": Receiver::url(port), "events": ["link.clicked"]}),
    )
    .await;
    let receiver = Receiver::start(port, &[&secret]);
    for _ in 0..3 {
        assert_eq!(app.click("again").await.status(), 302);
    }
    until(WAIT, "the first link's 3 clicks", || {
        receiver.distinct() == 3
    })
    .await;
    let deleted = app
        .client
        .delete(app.url("/api/links/again"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(deleted.status(), 204);
    app.create_link("again").await;
    for _ in 0..2 {
        assert_eq!(app.click("again").await.status(), 302);
    }
    let key = format!("{host}/again");
    until(WAIT, "the new link's clicks 1 and 2", || {
        receiver.clicks().get(&key).is_some_and(|seqs| {
            seqs.get(&1).is_some_and(|n| *n >= 2) && seqs.get(&2).is_some_and(|n| *n >= 2)
        })
    })
    .await;
    app.stop().await;
    Ok(())
}
