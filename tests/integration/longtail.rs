//! The long tail: codes clicked once each start no actor (the writer numbers their clicks), a
//! code clicked again gets one, and live actors stay within `--actor-memory` by stopping the
//! least recently used idle ones. Counts stay exact through every hand-over.

use std::{sync::Arc, time::Duration};

use futures_util::future::join_all;
use linkpulse::links::ACTOR_BYTES;

use crate::support::{TestResult, client, eventually, spawn_with, stored};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_code_clicked_once_starts_no_actor_and_counts_exactly() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    for i in 0..50 {
        app.create_link(&format!("once{i}")).await;
    }
    let app = Arc::new(app);
    let clicks = (0..50).map(|i| {
        let app = app.clone();
        async move { app.click(&format!("once{i}")).await.status() }
    });
    assert!(join_all(clicks).await.iter().all(|s| *s == 302));
    assert_eq!(app.metric("linkpulse_active_actors").await, 0);
    assert_eq!(app.metric("linkpulse_actors_started_total").await, 0);
    // A read right after the redirect sees its click (it starts the actor, which reads the
    // count after the writer's queue).
    for i in 0..50 {
        let code = format!("once{i}");
        assert_eq!(app.count(&code).await, 1, "{code}");
        let clicks = app.clicks(&code).await;
        assert_eq!(clicks.len(), 1, "{code}: one click listed");
        assert_eq!(clicks[0]["seq"], 1, "{code}: numbered 1");
    }
    let app = Arc::into_inner(app).expect("one owner");
    let dir = app.stop().await;
    assert_eq!(stored(dir.path(), "once7"), (1, 1));
    Ok(())
}

#[tokio::test]
async fn the_second_click_starts_the_actor_and_numbering_goes_on() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    app.create_link("twice").await;
    assert_eq!(app.click("twice").await.status(), 302);
    assert_eq!(app.metric("linkpulse_active_actors").await, 0);
    assert_eq!(app.click("twice").await.status(), 302);
    assert_eq!(app.metric("linkpulse_active_actors").await, 1);
    assert_eq!(app.click("twice").await.status(), 302);
    assert_eq!(app.count("twice").await, 3);
    let seqs: Vec<u64> = app
        .clicks("twice")
        .await
        .iter()
        .filter_map(|c| c["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [3, 2, 1]);
    Ok(())
}

/// 64 clients race on fresh codes: the first clicks go to the writer, later ones to the actor
/// the second click starts, and both number after what is stored: no number twice, none
/// skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_clicks_hand_over_to_the_actor_without_a_gap() -> TestResult {
    const CODES: usize = 40;
    const PER_CLIENT: usize = 5;
    let app = spawn_with(None, |_| {}).await;
    for i in 0..CODES {
        app.create_link(&format!("race{i}")).await;
    }
    let base = app.url("");
    let http = client();
    // Each client a task of its own, so they run on several threads at once.
    let clients = (0..64).map(|c| {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            let mut ok = 0;
            for k in 0..PER_CLIENT {
                let code = format!("race{}", (c + k * 7) % CODES);
                let res = http.get(format!("{base}/{code}")).send().await;
                if res.is_ok_and(|r| r.status() == 302) {
                    ok += 1;
                }
            }
            ok
        })
    });
    let mut answered = 0;
    for client in join_all(clients).await {
        answered += client?;
    }
    assert_eq!(answered, 64 * PER_CLIENT);
    let mut total = 0;
    for i in 0..CODES {
        let code = format!("race{i}");
        let count = app.count(&code).await;
        let seqs: Vec<u64> = app
            .clicks(&code)
            .await
            .iter()
            .filter_map(|c| c["seq"].as_u64())
            .collect();
        let expected: Vec<u64> = (1..=count).rev().collect();
        assert_eq!(seqs, expected, "{code}: every number once, none skipped");
        total += count;
    }
    assert_eq!(
        total as usize,
        64 * PER_CLIENT,
        "every answered click counted"
    );
    Ok(())
}

#[tokio::test]
async fn live_actors_stay_within_the_memory_budget_and_watched_ones_stay() -> TestResult {
    const BUDGET: u64 = 8;
    let app = spawn_with(None, |c| c.actor_memory = BUDGET * ACTOR_BYTES).await;
    app.create_link("watched").await;
    let mut sse = app.subscribe("watched").await;
    assert_eq!(sse.next_data(WAIT).await.and_then(|e| e.count()), Some(0));
    for i in 0..60 {
        let code = format!("churn{i}");
        app.create_link(&code).await;
        // Two clicks: the second starts an actor.
        for _ in 0..2 {
            assert_eq!(app.click(&code).await.status(), 302);
        }
    }
    // Actors start in their own tasks: the last ones may still be starting.
    eventually(
        WAIT,
        "an actor started for each code clicked twice",
        || async { app.metric("linkpulse_actors_started_total").await >= 61 },
    )
    .await;
    eventually(WAIT, "live actors back within the budget", || async {
        app.metric("linkpulse_active_actors").await <= BUDGET
    })
    .await;
    // The watched link's actor was never stopped: its stream goes on.
    assert_eq!(app.click("watched").await.status(), 302);
    assert_eq!(sse.next_data(WAIT).await.and_then(|e| e.count()), Some(1));
    for i in 0..60 {
        assert_eq!(app.count(&format!("churn{i}")).await, 2, "churn{i}");
    }
    Ok(())
}
