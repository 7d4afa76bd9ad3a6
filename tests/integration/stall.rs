//! A failing or stalled disk, and a link whose actor cannot start: nothing spins, nothing grows
//! without a bound, the redirect is still answered (default durability) or refused with 503
//! (strict), every dropped click is counted, and /healthz says what is wrong.

use std::time::{Duration, Instant};

use linkpulse::store::{Durability, Fault};

use crate::support::{TestResult, eventually, spawn_with_links, stored};

const DROPPED: &str = "linkpulse_clicks_dropped_total";
const WAIT: Duration = Duration::from_secs(10);
/// The one deadline over everything a request waits for from an actor (`CALL_TIMEOUT` in
/// src/links/mod.rs).
const ACTOR_DEADLINE: Duration = Duration::from_secs(5);

fn dropped(reason: &str) -> String {
    format!("{DROPPED}{{reason=\"{reason}\"}}")
}

#[tokio::test]
async fn a_stalled_disk_holds_at_most_the_backlog_and_the_rest_is_dropped_and_counted() -> TestResult
{
    let (app, links) = spawn_with_links(None, |c| c.click_backlog = 100).await;
    app.create_link("slow").await;
    let (status, health) = app.health().await;
    assert_eq!(status, 200);
    assert_eq!(health["backlog"]["limit"], 100);

    links.writer().inject(Fault::Stall);
    for _ in 0..300 {
        assert_eq!(
            app.click("slow").await.status(),
            302,
            "the visitor is redirected"
        );
    }
    // 100 clicks wait for the disk; the other 200 were dropped at the door, and counted.
    assert_eq!(app.metric("linkpulse_backlog_clicks").await, 100);
    assert_eq!(app.metric(&dropped("backlog")).await, 200);
    let (status, health) = app.health().await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["backlog"]["clicks"], 100);
    assert!(
        health["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the disk is behind")),
        "{health}"
    );

    links.writer().inject(Fault::Resume);
    assert_eq!(app.count("slow").await, 100, "every admitted click counts");
    eventually(WAIT, "the backlog drains", || async {
        app.metric("linkpulse_backlog_clicks").await == 0
    })
    .await;
    assert_eq!(app.health().await.0, 200);
    let dir = app.stop().await;
    drop(links);
    assert_eq!(stored(dir.path(), "slow"), (100, 100));
    Ok(())
}

#[tokio::test]
async fn strict_durability_answers_503_when_the_backlog_is_full() -> TestResult {
    let (app, links) = spawn_with_links(None, |c| {
        c.click_backlog = 10;
        c.durability = Durability::Strict;
    })
    .await;
    app.create_link("strict").await;
    links.writer().inject(Fault::Stall);
    // Ten redirects wait for their fsync...
    let waiting: Vec<_> = (0..10)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/strict");
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    eventually(WAIT, "ten clicks in the backlog", || async {
        app.metric("linkpulse_backlog_clicks").await == 10
    })
    .await;
    // ...and the eleventh is refused at once: it could not be stored.
    let res = app.click("strict").await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(app.metric(&dropped("backlog")).await, 1);

    links.writer().inject(Fault::Resume);
    for task in waiting {
        assert_eq!(task.await??, 302, "acknowledged once fsynced");
    }
    let dir = app.stop().await;
    drop(links);
    assert_eq!(stored(dir.path(), "strict"), (10, 10));
    Ok(())
}

#[tokio::test]
async fn a_failed_commit_stops_all_commits_and_the_stop_says_what_was_lost() -> TestResult {
    let (app, links) = spawn_with_links(None, |_| {}).await;
    app.create_link("ok").await;
    app.click("ok").await;
    assert_eq!(app.count("ok").await, 1);

    links.writer().inject(Fault::FailCommit);
    assert_eq!(app.click("ok").await.status(), 302);
    eventually(WAIT, "healthz reports the failure", || async {
        app.health().await.0 == 503
    })
    .await;
    let (_, health) = app.health().await;
    let reason = health["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the store failed") && reason.contains("injected I/O error"),
        "{health}"
    );
    assert_eq!(app.metric("linkpulse_store_failed").await, 1);
    // Nothing is committed any more: the next clicks are redirected, dropped and counted.
    for _ in 0..5 {
        assert_eq!(app.click("ok").await.status(), 302);
    }
    assert_eq!(app.metric(&dropped("store_failed")).await, 5);
    // Creating a link needs a commit too.
    let res = app
        .create(serde_json::json!({"url": "https://example.com/", "code": "late"}))
        .await;
    assert_eq!(res.status(), 500);

    let (dir, stopped) = app.stop_result().await;
    drop(links);
    let err = stopped
        .err()
        .ok_or("a stop after a failed commit must report it")?;
    let text = format!("{err:#}");
    assert!(
        text.contains("the store failed") && text.contains("could not be saved"),
        "{text}"
    );
    // What was committed before the failure is there.
    assert_eq!(stored(dir.path(), "ok"), (1, 1));
    Ok(())
}

#[tokio::test]
async fn a_failed_fsync_stops_all_commits() -> TestResult {
    let (app, links) = spawn_with_links(None, |c| {
        c.durability = Durability::Strict;
    })
    .await;
    app.create_link("sync").await;
    assert_eq!(app.click("sync").await.status(), 302);
    links.writer().inject(Fault::FailSync);
    assert_eq!(
        app.click("sync").await.status(),
        503,
        "its fsync failed: not stored"
    );
    // Later commits would sit on pages the kernel may have dropped: none is tried.
    assert_eq!(app.click("sync").await.status(), 503);
    let (status, health) = app.health().await;
    assert_eq!(status, 503);
    assert!(
        health["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fsync")),
        "{health}"
    );
    let (_, stopped) = app.stop_result().await;
    assert!(stopped.is_err());
    Ok(())
}

#[tokio::test]
async fn an_actor_that_cannot_start_backs_off_instead_of_spinning() -> TestResult {
    let (app, links) = spawn_with_links(None, |_| {}).await;
    app.create_link("sick").await;
    app.create_link("well").await;
    links.inject_start_failures("sick", true);
    for _ in 0..200 {
        assert_eq!(app.click("sick").await.status(), 302);
    }
    // Without a backoff every click would start (and fail) an actor.
    let attempts = app.metric("linkpulse_actor_start_failures_total").await;
    assert!(
        (1..=20).contains(&attempts),
        "{attempts} start attempts for 200 clicks"
    );
    // The first click needs no actor (the writer numbers it); every later one does.
    assert_eq!(
        app.metric(&dropped("actor_unavailable")).await,
        199,
        "every click of the sick link that needs its actor is dropped and counted"
    );
    // The rest of the service is fine.
    app.click("well").await;
    assert_eq!(app.count("well").await, 1);
    assert_eq!(app.health().await.0, 200);
    // Sick, the link counts nothing past the click the writer numbered.
    assert_eq!(
        app.count("sick").await,
        1,
        "only the first click is counted"
    );

    // Healed: after the backoff the link counts again.
    links.inject_start_failures("sick", false);
    let count_of = |res: reqwest::Result<reqwest::Response>| async move {
        // 503 while the code still backs off.
        let res = res.ok().filter(|r| r.status() == 200)?;
        res.json::<serde_json::Value>().await.ok()?["clickCount"].as_u64()
    };
    eventually(Duration::from_secs(40), "the link counts again", || async {
        app.click("sick").await;
        let res = app
            .client
            .get(app.url("/api/links/sick"))
            .bearer_auth(crate::support::KEY)
            .send()
            .await;
        count_of(res).await.is_some_and(|count| count > 1)
    })
    .await;
    // And keeps counting: each click from now on is one more.
    let count = app.count("sick").await;
    assert_eq!(app.click("sick").await.status(), 302);
    assert_eq!(
        app.count("sick").await,
        count + 1,
        "a click after healing counts"
    );
    let count = count + 1;
    let dir = app.stop().await;
    drop(links);
    assert_eq!(stored(dir.path(), "sick"), (count, count));
    Ok(())
}

#[tokio::test]
async fn a_request_to_a_stopping_actor_on_a_stalled_disk_waits_one_deadline() -> TestResult {
    let (app, links) = spawn_with_links(None, |c| {
        c.idle_timeout = Duration::from_millis(200);
    })
    .await;
    app.create_link("stop").await;
    // The second click starts the code's actor (the first is numbered by the writer).
    app.click("stop").await;
    app.click("stop").await;
    assert_eq!(app.count("stop").await, 2);
    assert_eq!(app.metric("linkpulse_active_actors").await, 1);
    // The disk stalls; the idle actor stops, and its end waits for the disk.
    links.writer().inject(Fault::Stall);
    eventually(WAIT, "the idle actor stops", || async {
        app.metric("linkpulse_actors_stopped_total").await >= 1
    })
    .await;
    // A stream request waits for the successor, bounded by one deadline (5 s), not 20 of
    // them: it is answered 503 once that deadline has passed (no sooner: it did wait), and
    // well within its own deadline of three (a wait without a bound, or one deadline per
    // retry, runs into it and fails the request).
    let client_deadline = 3 * ACTOR_DEADLINE;
    let sent = Instant::now();
    let res = app
        .client
        .get(app.url("/realtime/stop"))
        .timeout(client_deadline)
        .send()
        .await
        .map_err(|e| {
            format!("no answer within the client's deadline ({client_deadline:?}): {e}")
        })?;
    let waited = sent.elapsed();
    assert_eq!(res.status(), 503, "the successor could not start in time");
    assert!(res.headers().contains_key("retry-after"));
    // A lower bound: a loaded machine only makes the wait longer.
    assert!(
        waited >= ACTOR_DEADLINE,
        "answered after {waited:?}: the request gave up before its deadline"
    );
    links.writer().inject(Fault::Resume);
    let dir = app.stop().await;
    drop(links);
    assert_eq!(stored(dir.path(), "stop"), (2, 2));
    Ok(())
}
