//! Promises a user relies on that a review found broken on one node: a password protects the
//! target everywhere, guesses cannot crowd out the right password, public reads never wait on
//! the disk, and a strict redirect is answered `302` only for a click that was stored.

use std::time::Duration;

use linkpulse::store::Fault;
use serde_json::json;

use crate::support::{KEY, TestResult, client, spawn_with, spawn_with_links};

#[tokio::test]
async fn a_password_links_public_stats_page_shows_no_part_of_its_target() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    let res = app
        .create(
            json!({"url": "https://secret-host.example/private/plans", "code": "locked",
                       "password": "open sesame", "publicStats": true}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let page = app.client.get(app.url("/links/locked")).send().await?;
    assert_eq!(page.status(), 200);
    let html = page.text().await?;
    assert!(html.contains("clickCount"), "the page is the stats page");
    assert!(
        !html.contains("secret-host") && !html.contains("private/plans"),
        "the target shows through: {html}"
    );

    // A public link without a password still says where it leads.
    app.create(
        json!({"url": "https://open-host.example/page", "code": "open",
                      "publicStats": true}),
    )
    .await;
    let html = app
        .client
        .get(app.url("/links/open"))
        .send()
        .await?
        .text()
        .await?;
    assert!(html.contains("https://open-host.example/page"));
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_address_guessing_a_password_is_limited_and_others_still_get_in() -> TestResult {
    let app = spawn_with(None, |c| c.trust_forwarded_for = true).await;
    app.create(json!({"url": "https://example.com/vault", "code": "vault",
                      "password": "right one"}))
        .await;
    let guess = |from: &'static str, password: &'static str| {
        let (client, url) = (app.client.clone(), app.url("/vault"));
        async move {
            client
                .post(url)
                .header("X-Forwarded-For", from)
                .form(&[("password", password)])
                .send()
                .await
                .expect("sent")
        }
    };
    // 40 wrong guesses from one address, 8 at a time.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let round = (0..8).map(|_| guess("203.0.113.9", "wrong"));
        for res in futures_util::future::join_all(round).await {
            let status = res.status().as_u16();
            if status == 429 {
                assert!(res.headers().contains_key("retry-after"), "429 says when");
                let body: serde_json::Value = res.json().await?;
                assert!(
                    body["error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("password tries"),
                    "{body}"
                );
            }
            statuses.push(status);
        }
    }
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    // A try admitted is checked (401), or on a loaded machine told to come back because
    // every check was busy for 2 s (503); either way it took from the allowance.
    let checked = statuses.iter().filter(|&&s| s == 401 || s == 503).count();
    assert_eq!(
        limited + checked,
        40,
        "every guess is 401, 503 or 429: {statuses:?}"
    );
    // 10 a minute: one more comes back every 6 s, on a slow machine perhaps during the run.
    assert!(
        (10..=11).contains(&checked),
        "the allowance of tries (10 a minute) is checked, no more: {statuses:?}"
    );
    // Past its allowance the address is refused even with the right password.
    assert_eq!(guess("203.0.113.9", "right one").await.status(), 429);
    // Another visitor is not held up by those guesses.
    let res = guess("198.51.100.7", "right one").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "https://example.com/vault");
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn badges_and_stats_pages_answer_while_the_disk_stalls() -> TestResult {
    let (app, links) = spawn_with_links(None, |_| {}).await;
    let res = app
        .create(json!({"url": "https://example.com/b", "code": "badged", "publicStats": true}))
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(app.click("badged").await.status(), 302);
    crate::support::eventually(Duration::from_secs(10), "the click is counted", || async {
        app.count("badged").await == 1
    })
    .await;
    links.writer().inject(Fault::Stall);
    // A click queued behind the stalled disk; public reads do not wait for it.
    assert_eq!(app.click("badged").await.status(), 302);
    let quick = client();
    for _ in 0..20 {
        let badge = quick
            .get(app.url("/badge/badged.svg"))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        assert_eq!(badge.status(), 200, "a badge during a disk stall");
        let svg = badge.text().await?;
        assert!(svg.contains(">1<") || svg.contains(">2<"), "{svg}");
    }
    let page = quick
        .get(app.url("/links/badged"))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    assert_eq!(page.status(), 200, "the stats page during a disk stall");
    links.writer().inject(Fault::Resume);
    crate::support::eventually(Duration::from_secs(10), "both clicks counted", || async {
        app.count("badged").await == 2
    })
    .await;
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_strict_redirect_whose_click_was_not_stored_is_not_a_302() -> TestResult {
    let (app, links) = spawn_with_links(None, |c| {
        c.durability = linkpulse::store::Durability::Strict;
    })
    .await;
    for code in ["first", "doomed"] {
        let res = app
            .create(json!({"url": format!("https://example.com/{code}"), "code": code}))
            .await;
        assert_eq!(res.status(), 201);
    }
    // The disk stalls on a group; a click on `doomed` and its deletion queue behind it and
    // are taken in one group: the click is not stored.
    links.writer().inject(Fault::Stall);
    let first = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/first"));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let doomed = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/doomed"));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delete = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/api/links/doomed"));
        async move {
            client
                .delete(url)
                .bearer_auth(KEY)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    links.writer().inject(Fault::Resume);
    assert_eq!(first.await??, 302, "a stored click is a redirect");
    assert_eq!(delete.await??, 204);
    let doomed = doomed.await??;
    assert_ne!(
        doomed, 302,
        "a strict redirect is answered only for a stored click; the deleted link's was not"
    );
    assert_eq!(app.count("first").await, 1);
    app.stop().await;
    Ok(())
}
