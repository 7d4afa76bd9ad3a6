//! The rate limits as a client meets them: link creations per `links`-scope key (and, when an
//! operator asks for it, per address), none for admin keys, and failed authentications per
//! address.

use std::time::Duration;

use futures_util::future::join_all;
use linkpulse::{keys, store::Store};
use serde_json::json;
use tempfile::TempDir;

use super::raw::assert_not_created;
use crate::support::{KEY, TestApp, TestResult, eventually, json_error, spawn_with};

/// A `links`-scope key stored before the app starts.
const LINKS_KEY: &str = "lp_test_links_key_0123456789";

/// One answer: status, `Retry-After`, and the error message (`None` for a `201`/`200`).
type Answer = (u16, Option<String>, Option<String>);

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let error = if status < 300 {
        None
    } else {
        Some(json_error(res).await.1)
    };
    (status, retry_after, error)
}

/// Sends `n` creates at once with `key` (and `X-Forwarded-For` if given), the `i`th with the
/// code `{prefix}{i}`, and returns their answers in that order.
async fn burst(
    app: &TestApp,
    n: usize,
    prefix: &str,
    key: &str,
    forwarded_for: Option<&str>,
) -> Vec<Answer> {
    let sends = (0..n).map(|i| {
        let mut req = app
            .client
            .post(app.url("/api/links"))
            .bearer_auth(key)
            .json(&json!({"url": "https://example.com/", "code": format!("{prefix}{i}")}));
        if let Some(ip) = forwarded_for {
            req = req.header("x-forwarded-for", ip);
        }
        async move { answer(req.send().await.expect("create sent")).await }
    });
    join_all(sends).await
}

/// A data directory holding [`LINKS_KEY`].
fn with_links_key() -> Result<TempDir, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    keys::store_key(&store, LINKS_KEY, "tenant", false)?;
    Ok(dir)
}

/// Checks that a burst was cut by a rate: some `201`, some `429`, nothing else; every `429`
/// says `message` with a whole-second `Retry-After` it repeats, and made no link.
async fn assert_cut(app: &TestApp, answers: &[Answer], prefix: &str, message: &str) {
    let created = answers.iter().filter(|a| a.0 == 201).count();
    let refused: Vec<usize> = (0..answers.len())
        .filter(|&i| answers[i].0 == 429)
        .collect();
    assert_eq!(created + refused.len(), answers.len(), "{answers:?}");
    assert!(
        created >= 1,
        "the burst's first creation passes: {answers:?}"
    );
    assert!(
        !refused.is_empty(),
        "a burst of 20 at 1/s is cut: {answers:?}"
    );
    for &i in &refused {
        let (_, retry_after, error) = &answers[i];
        let secs: u32 = retry_after
            .as_deref()
            .and_then(|s| s.parse().ok())
            .expect("Retry-After in whole seconds");
        assert!(secs >= 1, "{answers:?}");
        assert_eq!(
            error.as_deref(),
            Some(format!("{message}, try again in {secs} s").as_str())
        );
        assert_not_created(app, &format!("{prefix}{i}")).await;
    }
}

#[tokio::test]
async fn an_admin_key_creates_300_links_in_one_burst_at_the_defaults() -> TestResult {
    // What a load test's setup() does with the operator's key.
    let app = spawn_with(None, |_| {}).await;
    let answers = burst(&app, 300, "a", KEY, None).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert!(statuses.iter().all(|&s| s == 201), "{answers:?}");
    assert_eq!(app.read("a299").await["code"], "a299");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_links_key_past_its_rate_is_429_and_creates_nothing() -> TestResult {
    let app = spawn_with(Some(with_links_key()?), |c| c.create_rate_per_key = 1).await;
    let answers = burst(&app, 20, "k", LINKS_KEY, None).await;
    assert_cut(
        &app,
        &answers,
        "k",
        "too many links created by this API key",
    )
    .await;
    // The admin key is not held back by the links key's burst, nor limited itself.
    let answers = burst(&app, 20, "o", KEY, None).await;
    assert!(answers.iter().all(|a| a.0 == 201), "{answers:?}");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_per_address_rate_when_asked_for_cuts_links_keys_but_not_admins() -> TestResult {
    let app = spawn_with(Some(with_links_key()?), |c| {
        c.create_rate_per_ip = 1;
        c.create_rate_per_key = 0;
        c.trust_forwarded_for = true;
    })
    .await;
    let answers = burst(&app, 20, "i", LINKS_KEY, Some("192.0.2.1")).await;
    assert_cut(
        &app,
        &answers,
        "i",
        "too many links created by this address",
    )
    .await;
    // Another address is not held back; nor is an admin key from the same address.
    let answers = burst(&app, 1, "j", LINKS_KEY, Some("192.0.2.2")).await;
    assert_eq!(answers[0].0, 201, "{answers:?}");
    let answers = burst(&app, 5, "m", KEY, Some("192.0.2.1")).await;
    assert!(answers.iter().all(|a| a.0 == 201), "{answers:?}");
    app.stop().await;
    Ok(())
}

/// `GET /api/links` with `key` (none: no `Authorization`) from `address`.
async fn list(app: &TestApp, key: Option<&str>, address: &str) -> Answer {
    let mut req = app
        .client
        .get(app.url("/api/links"))
        .header("x-forwarded-for", address);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    answer(req.send().await.expect("list sent")).await
}

#[tokio::test]
async fn repeated_failed_authentication_from_one_address_is_429_until_it_waits() -> TestResult {
    // The default allowance (10 failures per second and address); the forwarded address
    // stands for the client's.
    let app = spawn_with(None, |c| c.trust_forwarded_for = true).await;
    let mut answers = Vec::new();
    for _ in 0..40 {
        answers.push(list(&app, Some("lp_wrong_key_0123456789"), "192.0.2.9").await);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses[..10],
        [401; 10],
        "the allowance is told 401: {answers:?}"
    );
    assert!(
        statuses.contains(&429),
        "past the allowance, 429: {answers:?}"
    );
    for (status, retry_after, error) in &answers {
        if *status == 401 {
            assert_eq!(error.as_deref(), Some("invalid API key"));
            continue;
        }
        assert_eq!(*status, 429, "{answers:?}");
        let secs: u32 = retry_after
            .as_deref()
            .and_then(|s| s.parse().ok())
            .expect("Retry-After in whole seconds");
        let expected =
            format!("too many failed authentications from this address, try again in {secs} s");
        assert_eq!(error.as_deref(), Some(expected.as_str()));
    }

    // Other addresses are not held back, and a missing key is not a failure.
    assert_eq!(list(&app, Some(KEY), "192.0.2.10").await.0, 200);
    for _ in 0..20 {
        let (status, _, error) = list(&app, None, "192.0.2.11").await;
        assert_eq!(status, 401, "{error:?}");
    }

    // The refused address is let in again once it waits (its right key answers 429 or 200
    // meanwhile, never anything else).
    eventually(
        Duration::from_secs(5),
        "the address is let in again",
        || async {
            let (status, _, error) = list(&app, Some(KEY), "192.0.2.9").await;
            assert!(status == 200 || status == 429, "{status} {error:?}");
            status == 200
        },
    )
    .await;
    app.stop().await;
    Ok(())
}
