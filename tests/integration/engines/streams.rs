//! The live stream: its first frame at once, then rising counts whose ids are the counts, and
//! `Last-Event-ID` resuming where the client is.

use std::time::Duration;

use super::{Engine, spawn_on};
use crate::support::{Event, Silence, SseClient, TestResult};

const WAIT: Duration = Duration::from_secs(10);

pub(super) async fn first_frame_at_once_then_rising_counts_with_ids(engine: Engine) -> TestResult {
    let app = spawn_on(engine, |_| {}).await;
    app.create_link("live").await;
    let mut sse = app.subscribe("live").await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.content_type, "text/event-stream");

    let hint = sse.next(WAIT).await?;
    assert!(
        hint.retry.is_some(),
        "the stream starts with a retry hint: {hint:?}"
    );
    let first = sse.next_data(WAIT).await.ok_or("no first frame")?;
    assert_eq!((first.id, first.count()), (Some(0), Some(0)));
    assert_eq!(
        first.data.as_ref().map(|d| d["clickAnalytics"].is_null()),
        Some(true)
    );

    const CLICKS: u64 = 200;
    let clicker = {
        let client = app.client.clone();
        let url = app.url("/live");
        tokio::spawn(async move {
            for _ in 0..CLICKS {
                let res = client
                    .get(&url)
                    .header(
                        "user-agent",
                        "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
                    )
                    .header("referer", "https://news.example/")
                    .send()
                    .await
                    .expect("sent");
                assert_eq!(res.status(), 302);
            }
        })
    };
    let mut last = 0;
    let mut frames = 0;
    while last < CLICKS {
        let event = sse.next_data(WAIT).await.ok_or("stream stalled")?;
        let count = event.count().ok_or("frame without clickCount")?;
        assert_eq!(event.id, Some(count), "the id is the count");
        assert!(
            count > last,
            "counts never go backwards or repeat: {last} then {count}"
        );
        let analytics = &event.data.as_ref().ok_or("no data")?["clickAnalytics"];
        assert_eq!(analytics["shortCode"], "live");
        assert_eq!(analytics["ipAddress"], "127.0.0.0");
        assert_eq!(
            analytics["userAgent"],
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"
        );
        // The public stream carries the original's fields only; the rest is the owner's.
        let mut fields: Vec<&str> = analytics
            .as_object()
            .ok_or("analytics is an object")?
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "country",
                "createdAt",
                "ipAddress",
                "shortCode",
                "userAgent"
            ]
        );
        last = count;
        frames += 1;
    }
    clicker.await?;
    assert_eq!(last, CLICKS);
    assert!(frames <= CLICKS);
    // The owner sees the referrer and the browser through the API.
    let owner = &app.read("live").await["lastClick"];
    assert_eq!(owner["referer"], "https://news.example/");
    assert_eq!(owner["browser"], "Firefox");
    app.stop().await;
    Ok(())
}

pub(super) async fn last_event_id_skips_a_state_the_client_has(engine: Engine) -> TestResult {
    let app = spawn_on(engine, |_| {}).await;
    app.create_link("resume").await;
    for _ in 0..3 {
        app.click("resume").await;
    }
    // Streams show committed clicks; the API answers once they are.
    assert_eq!(app.count("resume").await, 3);
    let url = app.url("/realtime/resume");
    let mut current = SseClient::open(&app.client, &url, Some("3")).await;
    assert_eq!(current.status, 200);
    assert!(current.next(WAIT).await.is_ok_and(|e| e.retry.is_some()));
    let repeated = current
        .next_where(Duration::from_millis(300), Event::is_data)
        .await;
    assert!(
        matches!(repeated, Err(Silence::TimedOut)),
        "no frame repeated for a client that has count 3, and the stream stays open: \
         {repeated:?}"
    );
    app.click("resume").await;
    let next = current
        .next_data(WAIT)
        .await
        .ok_or("no frame after a click")?;
    assert_eq!((next.id, next.count()), (Some(4), Some(4)));

    let mut behind = SseClient::open(&app.client, &url, Some("1")).await;
    let caught_up = behind.next_data(WAIT).await.ok_or("no catch-up frame")?;
    assert_eq!(caught_up.count(), Some(4));

    for bad in ["abc", "-1"] {
        let refused = SseClient::open(&app.client, &url, Some(bad)).await;
        assert_eq!(refused.status, 400, "Last-Event-ID {bad}");
    }
    // An id past the count (a client that saw a count a crash took back) is not an error: an
    // EventSource answered with anything but 200 would stop reconnecting for good. It gets
    // the state as it is.
    let ahead = SseClient::open(&app.client, &url, Some("99")).await;
    assert_eq!(ahead.status, 200);
    let mut ahead = ahead;
    let state = ahead
        .next_data(WAIT)
        .await
        .ok_or("no state for a client ahead")?;
    assert_eq!((state.id, state.count()), (Some(4), Some(4)));
    let missing = SseClient::open(&app.client, &app.url("/realtime/none"), None).await;
    assert_eq!(missing.status, 404);
    app.stop().await;
    Ok(())
}
