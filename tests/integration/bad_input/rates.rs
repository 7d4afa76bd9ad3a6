//! Link creations over the per-key and per-address rates.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use linkpulse::{keys, store::Store};
use serde_json::json;

use super::raw::assert_not_created;
use crate::support::{KEY, TestApp, TestResult, json_error, spawn_with};

/// Sends `n` creates at once with `key` (and `X-Forwarded-For` if given), the `i`th with the
/// code `{prefix}{i}`, and returns their statuses, `Retry-After` values and error messages,
/// and how long the whole burst took.
async fn burst(
    app: &TestApp,
    n: usize,
    prefix: &str,
    key: &str,
    forwarded_for: Option<&str>,
) -> (Vec<(u16, Option<String>, Option<String>)>, Duration) {
    let started = Instant::now();
    let sends = (0..n).map(|i| {
        let mut req = app
            .client
            .post(app.url("/api/links"))
            .bearer_auth(key)
            .json(&json!({"url": "https://example.com/", "code": format!("{prefix}{i}")}));
        if let Some(ip) = forwarded_for {
            req = req.header("x-forwarded-for", ip);
        }
        async move {
            let res = req.send().await.expect("create sent");
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let error = if status == 201 {
                None
            } else {
                Some(json_error(res).await.1)
            };
            (status, retry_after, error)
        }
    });
    let answers = join_all(sends).await;
    (answers, started.elapsed())
}

/// Checks a burst of 6 against a limit of 5 per second: when it took under 200 ms (one
/// allowance comes back every 200 ms) exactly one is refused with 429, `Retry-After` and a
/// message naming `whose`, and its link does not exist.
async fn check_burst(
    app: &TestApp,
    answers: &[(u16, Option<String>, Option<String>)],
    took: Duration,
    prefix: &str,
    whose: &str,
) {
    let refused: Vec<usize> = (0..answers.len())
        .filter(|&i| answers[i].0 == 429)
        .collect();
    let created = answers.iter().filter(|a| a.0 == 201).count();
    assert_eq!(created + refused.len(), answers.len(), "{answers:?}");
    if took < Duration::from_millis(200) {
        assert_eq!((created, refused.len()), (5, 1), "{answers:?}");
    } else {
        // A slow machine: allowances came back during the burst.
        let back = usize::try_from(took.as_millis() / 200).unwrap_or(usize::MAX);
        assert!(created <= 5 + back, "{answers:?} in {took:?}");
    }
    for &i in &refused {
        let (_, retry_after, error) = &answers[i];
        assert_eq!(retry_after.as_deref(), Some("1"), "{answers:?}");
        let message = error.as_deref().unwrap_or_default();
        assert!(
            message.starts_with("too many links created by"),
            "{message}"
        );
        assert!(message.contains(whose), "{message}");
        assert_not_created(app, &format!("{prefix}{i}")).await;
    }
}

#[tokio::test]
async fn creating_over_the_per_key_rate_is_429_and_creates_nothing() -> TestResult {
    const OTHER: &str = "lp_test_other_key_0123456789";
    let dir = tempfile::tempdir()?;
    {
        let store = Store::open(dir.path())?;
        keys::store_key(&store, OTHER, "other", false)?;
    }
    let app = spawn_with(Some(dir), |c| {
        c.create_rate_per_key = 5;
        c.create_rate_per_ip = 1000;
    })
    .await;
    let (answers, took) = burst(&app, 6, "k", KEY, None).await;
    check_burst(&app, &answers, took, "k", "this API key").await;
    // Another key is not held back by the first one's burst.
    let (answers, _) = burst(&app, 1, "o", OTHER, None).await;
    assert_eq!(answers[0].0, 201, "{answers:?}");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn creating_over_the_per_address_rate_is_429_and_creates_nothing() -> TestResult {
    let app = spawn_with(None, |c| {
        c.create_rate_per_ip = 5;
        c.create_rate_per_key = 1000;
        c.trust_forwarded_for = true;
    })
    .await;
    let started = Instant::now();
    let (answers, took) = burst(&app, 6, "i", KEY, Some("192.0.2.1")).await;
    check_burst(&app, &answers, took, "i", "this address").await;
    // Checked before the key: a request without a valid key is refused with 429 too (if no
    // allowance came back meanwhile, which takes 200 ms).
    let (answers, _) = burst(&app, 1, "x", "lp_wrong", Some("192.0.2.1")).await;
    if started.elapsed() < Duration::from_millis(200) {
        assert_eq!(answers[0].0, 429, "{answers:?}");
    }
    // Another address is not held back.
    let (answers, _) = burst(&app, 1, "j", KEY, Some("192.0.2.2")).await;
    assert_eq!(answers[0].0, 201, "{answers:?}");
    app.stop().await;
    Ok(())
}
