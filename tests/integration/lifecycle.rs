//! Stopping and starting: a clean stop loses nothing, idle actors stop and come back with
//! their count, a stream ends with a retry hint at shutdown.

use std::time::Duration;

use crate::support::{Silence, TestResult, eventually, spawn_app, spawn_with, stored};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_keeps_every_click_across_a_restart() -> TestResult {
    let app = spawn_app().await;
    app.create_link("keep").await;
    app.create_link("also").await;
    const N: u64 = 300;
    let mut tasks = Vec::new();
    for code in ["keep", "also"] {
        let client = app.client.clone();
        let url = app.url(&format!("/{code}"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..N {
                assert_eq!(client.get(&url).send().await.expect("sent").status(), 302);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    // Stop at once, without waiting for any commit interval.
    let dir = app.stop().await;
    assert_eq!(stored(dir.path(), "keep"), (N, N));
    assert_eq!(stored(dir.path(), "also"), (N, N));

    let app = spawn_with(Some(dir), |_| {}).await;
    assert_eq!(app.count("keep").await, N);
    assert_eq!(app.click("keep").await.status(), 302);
    assert_eq!(app.count("keep").await, N + 1);
    let mut sse = app.subscribe("also").await;
    let first = sse.next_data(WAIT).await.ok_or("no first frame")?;
    assert_eq!(
        first.count(),
        Some(N),
        "the stream starts from the stored count"
    );
    drop(sse);
    let dir = app.stop().await;
    assert_eq!(stored(dir.path(), "keep"), (N + 1, N + 1));
    Ok(())
}

#[tokio::test]
async fn an_idle_actor_stops_and_comes_back_with_its_count() -> TestResult {
    let app = spawn_with(None, |c| c.idle_timeout = Duration::from_millis(200)).await;
    app.create_link("nap").await;
    for _ in 0..5 {
        assert_eq!(app.click("nap").await.status(), 302);
    }
    assert_eq!(app.metric("linkpulse_active_actors").await, 1);
    eventually(WAIT, "the idle actor stops", || async {
        app.metric("linkpulse_active_actors").await == 0
    })
    .await;
    assert!(app.metric("linkpulse_actors_stopped_total").await >= 1);
    // Read from the store while no actor runs, then wake it with a click.
    assert_eq!(app.count("nap").await, 5);
    assert_eq!(app.click("nap").await.status(), 302);
    assert_eq!(app.count("nap").await, 6);
    assert_eq!(app.metric("linkpulse_actors_started_total").await, 2);
    let dir = app.stop().await;
    assert_eq!(stored(dir.path(), "nap"), (6, 6));
    Ok(())
}

/// Clicks keep coming while actors stop for idleness again and again: none is lost or
/// numbered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_racing_actor_stops_are_all_counted() -> TestResult {
    let app = spawn_with(None, |c| c.idle_timeout = Duration::from_millis(20)).await;
    app.create_link("flicker").await;
    let mut total = 0u64;
    for round in 0..30u64 {
        let burst = 1 + round % 4;
        for _ in 0..burst {
            assert_eq!(app.click("flicker").await.status(), 302);
        }
        total += burst;
        tokio::time::sleep(Duration::from_millis(5 + (round * 7) % 40)).await;
    }
    assert!(
        app.metric("linkpulse_actors_started_total").await > 1,
        "actors did stop"
    );
    assert_eq!(app.count("flicker").await, total);
    let dir = app.stop().await;
    assert_eq!(stored(dir.path(), "flicker"), (total, total));
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_retry_hint() -> TestResult {
    let app = spawn_app().await;
    app.create_link("bye").await;
    let mut sse = app.subscribe("bye").await;
    assert!(sse.next_data(WAIT).await.is_some());
    let stopping = tokio::spawn(app.stop());
    let mut last_retry = None;
    let end = loop {
        match sse.next(WAIT).await {
            Ok(event) => {
                if event.retry.is_some() {
                    last_retry = event.retry;
                }
            }
            Err(why) => break why,
        }
    };
    assert_eq!(end, Silence::Ended, "the stop ends the stream cleanly");
    let hint = last_retry.ok_or("no retry hint at shutdown")?;
    assert!(
        (1_000..=10_000).contains(&hint),
        "spread-out reconnect hint: {hint}"
    );
    stopping.await?;
    Ok(())
}

/// An actor that fails (as a bug would make it) takes nothing else down: other links keep
/// counting, and the next click starts a successor from the stored count; clicks that were
/// waiting in the failed actor's inbox are handed to the successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_actor_is_restarted_from_the_store() -> TestResult {
    let (app, links) = crate::support::spawn_with_links(None, |_| {}).await;
    app.create_link("fragile").await;
    app.create_link("steady").await;
    for _ in 0..10 {
        assert_eq!(app.click("fragile").await.status(), 302);
        assert_eq!(app.click("steady").await.status(), 302);
    }
    let code = linkpulse::domain::ShortCode::parse("fragile")?;
    let link = links.find(&code).await?.ok_or("no link")?;
    links.inject_failure(&link).await?;
    // Clicks right behind the failure, some possibly queued for the dying actor.
    for _ in 0..5 {
        assert_eq!(app.click("fragile").await.status(), 302);
    }
    assert_eq!(app.count("steady").await, 10);
    eventually(WAIT, "the successor has all 15 clicks", || async {
        app.count("fragile").await == 15
    })
    .await;
    assert!(app.metric("linkpulse_actors_started_total").await >= 3);
    // The handle holds the store open; let it go before reading the store directly.
    drop((link, links));
    let dir = app.stop().await;
    assert_eq!(stored(dir.path(), "fragile"), (15, 15));
    assert_eq!(stored(dir.path(), "steady"), (10, 10));
    Ok(())
}
