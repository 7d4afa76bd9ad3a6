//! The screen never shows a click the store does not have: frames carry only committed clicks,
//! an id is never sent twice to one viewer, and a viewer that saw a count before a crash
//! finds at least that count stored after it.

use std::time::Duration;

use linkpulse::store::Fault;

use crate::support::{Event, Silence, SseClient, TestResult, spawn_with, spawn_with_links, stored};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_frame_never_shows_a_click_the_store_does_not_hold() -> TestResult {
    let (app, links) = spawn_with_links(None, |_| {}).await;
    app.create_link("held").await;
    let mut sse = app.subscribe("held").await;
    let first = sse.next_data(WAIT).await.ok_or("no first frame")?;
    assert_eq!(first.count(), Some(0));

    // A disk that stops answering: the clicks are redirected and counted by the actor, but
    // none reaches the store, so no frame may show them.
    links.writer().inject(Fault::Stall);
    for _ in 0..5 {
        assert_eq!(app.click("held").await.status(), 302);
    }
    let early = sse
        .next_where(Duration::from_millis(700), Event::is_data)
        .await;
    assert!(
        matches!(early, Err(Silence::TimedOut)),
        "no frame shows clicks the store does not hold, and the stream stays open: {early:?}"
    );

    links.writer().inject(Fault::Resume);
    let mut seen = 0;
    while seen < 5 {
        let event = sse
            .next_data(WAIT)
            .await
            .ok_or("no frame after the commit")?;
        let count = event.count().ok_or("frame without a count")?;
        assert!(count > seen && count <= 5, "{seen} then {count}");
        seen = count;
    }
    drop(sse);
    let dir = app.stop().await;
    drop(links);
    assert_eq!(stored(dir.path(), "held"), (5, 5));
    Ok(())
}

#[tokio::test]
async fn a_viewer_joining_while_a_frame_is_pending_never_gets_an_id_twice() -> TestResult {
    // Frames at most every 1.5 s: after one frame the next one waits, and a viewer joins then.
    let app = spawn_with(None, |c| c.sse_min_interval = Duration::from_millis(1500)).await;
    app.create_link("pend").await;
    let mut early = app.subscribe("pend").await;
    assert_eq!(early.next_data(WAIT).await.and_then(|e| e.count()), Some(0));
    app.click("pend").await;
    assert_eq!(early.next_data(WAIT).await.and_then(|e| e.count()), Some(1));

    // A frame for click 2 is now pending; once the click is committed (the API answers with
    // committed counts), a new viewer joins and gets state 2 at once.
    app.click("pend").await;
    assert_eq!(app.count("pend").await, 2);
    let mut late = app.subscribe("pend").await;
    let initial = late.next_data(WAIT).await.ok_or("no first frame")?;
    assert_eq!((initial.id, initial.count()), (Some(2), Some(2)));

    // The pending frame goes out to the early viewer...
    assert_eq!(early.next_data(WAIT).await.and_then(|e| e.count()), Some(2));
    // ...and not again to the late one, whose next frame is a later click.
    app.click("pend").await;
    let next = late.next_data(WAIT).await.ok_or("no frame after click 3")?;
    assert_eq!(
        (next.id, next.count()),
        (Some(3), Some(3)),
        "id 2 was sent twice"
    );
    drop((early, late));
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_last_event_id_from_before_a_crash_gets_the_state_as_it_is() -> TestResult {
    let app = spawn_with(None, |_| {}).await;
    app.create_link("ahead").await;
    app.click("ahead").await;
    assert_eq!(app.count("ahead").await, 1, "committed");
    let url = app.url("/realtime/ahead");
    // A browser that saw count 40 (a crash took it back, or another node had it) reconnects.
    let mut sse = SseClient::open(&app.client, &url, Some("40")).await;
    assert_eq!(
        sse.status, 200,
        "anything but 200 ends an EventSource for good"
    );
    let state = sse.next_data(WAIT).await.ok_or("no state")?;
    assert_eq!((state.id, state.count()), (Some(1), Some(1)));
    app.click("ahead").await;
    let next = sse.next_data(WAIT).await.ok_or("no frame after a click")?;
    assert_eq!(next.count(), Some(2));
    drop(sse);
    app.stop().await;
    Ok(())
}
