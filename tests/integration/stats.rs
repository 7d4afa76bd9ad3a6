//! The stats API and the `stats` event: totals, series and top lists of a known set of clicks,
//! bots apart, countries from a proxy header or a `.mmdb` file, unique visitors, errors, and
//! aggregates that survive a restart exactly.

use std::{path::PathBuf, time::Duration};

use linkpulse::{keys, store::Store};
use serde::Serialize;
use serde_json::Value;

use crate::support::{KEY, TestApp, TestResult, json_error, spawn_with, stored};

const WAIT: Duration = Duration::from_secs(10);

const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/120.0.0.0 Safari/537.36";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
                      (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
const SLACK: &str = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";

/// A country database as MaxMind's GeoLite2-Country has it, for two test networks.
pub(crate) fn country_db(dir: &std::path::Path) -> PathBuf {
    #[derive(Serialize)]
    struct Country {
        iso_code: &'static str,
    }
    #[derive(Serialize)]
    struct Record {
        country: Country,
    }
    let mut writer = mmdb_writer::Writer::new("GeoLite2-Country");
    for (net, iso_code) in [("192.0.2.0/24", "SE"), ("198.51.100.0/24", "US")] {
        let net: ipnet::IpNet = net.parse().expect("network");
        writer
            .insert(
                net,
                &Record {
                    country: Country { iso_code },
                },
            )
            .expect("record inserted");
    }
    let path = dir.join("countries.mmdb");
    std::fs::write(&path, writer.to_bytes().expect("database built")).expect("written");
    path
}

/// One redirect with the given user agent, referrer, forwarded address and country header.
async fn visit(
    app: &TestApp,
    code: &str,
    agent: Option<&str>,
    referer: Option<&str>,
    address: &str,
    country: Option<&str>,
) {
    let mut req = app
        .client
        .get(app.url(&format!("/{code}")))
        .header("X-Forwarded-For", address);
    // reqwest sends no user agent unless told.
    if let Some(agent) = agent {
        req = req.header("User-Agent", agent);
    }
    if let Some(referer) = referer {
        req = req.header("Referer", referer);
    }
    if let Some(country) = country {
        req = req.header("X-Country", country);
    }
    let res = req.send().await.expect("redirect sent");
    assert_eq!(res.status(), 302);
}

pub(crate) async fn stats(app: &TestApp, code: &str, query: &str) -> (u16, Value) {
    let res = app
        .client
        .get(app.url(&format!("/api/links/{code}/stats{query}")))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("stats sent");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A top list as (value, clicks, human clicks).
pub(crate) fn list(stats: &Value, name: &str) -> Vec<(String, u64, u64)> {
    stats["top"][name]
        .as_array()
        .unwrap_or_else(|| panic!("top.{name} is a list: {stats}"))
        .iter()
        .map(|e| {
            (
                e["value"].as_str().unwrap_or_default().to_owned(),
                e["clicks"].as_u64().unwrap_or(u64::MAX),
                e["humanClicks"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn series_sum(stats: &Value, field: &str) -> u64 {
    stats["series"]
        .as_array()
        .unwrap_or_else(|| panic!("series is a list: {stats}"))
        .iter()
        .map(|p| p[field].as_u64().unwrap_or(u64::MAX))
        .sum()
}

/// Checks what every answer keeps: each top list and the series sum to the totals.
pub(crate) fn assert_consistent(stats: &Value, clicks: u64) {
    let totals = &stats["totals"];
    assert_eq!(totals["clicks"].as_u64(), Some(clicks), "{stats}");
    assert_eq!(
        totals["humanClicks"].as_u64().unwrap_or(0) + totals["botClicks"].as_u64().unwrap_or(0),
        clicks,
        "{stats}"
    );
    assert_eq!(
        series_sum(stats, "clicks"),
        clicks,
        "the series sums to the totals"
    );
    for name in ["referrers", "countries", "browsers", "os", "devices"] {
        let sum: u64 = list(stats, name).iter().map(|(_, c, _)| c).sum();
        assert_eq!(sum, clicks, "top.{name} sums to the count: {stats}");
    }
}

pub(crate) async fn known_clicks(app: &TestApp, code: &str) {
    let news = Some("https://www.news.example/story");
    let blog = Some("https://blog.example/post");
    // Three from one person on Chrome, from a Swedish network (the .mmdb says so).
    for _ in 0..3 {
        visit(app, code, Some(CHROME), news, "192.0.2.10", None).await;
    }
    // Two from an iPhone on an American network.
    for _ in 0..2 {
        visit(app, code, Some(IPHONE), blog, "198.51.100.7", None).await;
    }
    // Slack's preview fetcher, with a proxy's country header (it wins over the database).
    visit(app, code, Some(SLACK), None, "192.0.2.99", Some("de")).await;
    // A script without a user agent, from an address the database does not know.
    visit(app, code, None, None, "203.0.113.5", None).await;
}

#[tokio::test]
async fn bad_windows_and_other_owners_get_4xx_with_json() -> TestResult {
    let dir = tempfile::tempdir()?;
    let other = "lp_other_owner_key_0123456789";
    {
        let store = Store::open(dir.path())?;
        keys::store_key(&store, other, "other", false)?;
    }
    let app = spawn_with(Some(dir), |_| {}).await;
    app.create_link("mine").await;
    let url = |q: &str| app.url(&format!("/api/links/mine/stats{q}"));
    for (query, message) in [
        ("?interval=week", "interval must be minute, hour or day"),
        ("?from=2026-02-01&to=2026-01-01", "from must be before to"),
        ("?from=yesterday", "from must be an RFC 3339 time"),
        ("?to=2026-13-01", "to must be an RFC 3339 time"),
        ("?tz=Mars/Olympus", "tz must be an IANA time zone name"),
        ("?from=1990-01-01&interval=minute&tz=%2B01:00", ""),
    ] {
        let res = app.client.get(url(query)).bearer_auth(KEY).send().await?;
        if message.is_empty() {
            // Minute buckets reach back 48 h: the window starts there, and says so.
            assert_eq!(res.status(), 200, "{query}");
            let body: Value = res.json().await?;
            assert_ne!(body["from"], "1990-01-01T00:00:00+01:00", "{body}");
            continue;
        }
        let (status, error) = json_error(res).await;
        assert_eq!(status, 400, "{query}: {error}");
        assert!(error.starts_with(message), "{query}: {error}");
    }
    let res = app.client.get(url("")).bearer_auth(other).send().await?;
    let (status, _) = json_error(res).await;
    assert_eq!(status, 404, "another owner's link is not found");
    let res = app.client.get(url("")).send().await?;
    let (status, _) = json_error(res).await;
    assert_eq!(status, 401, "no key");
    let res = app
        .client
        .get(app.url("/api/links/nosuch/stats"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(json_error(res).await.0, 404);
    Ok(())
}

#[tokio::test]
async fn aggregates_are_the_same_after_a_restart_and_after_an_idle_stop() -> TestResult {
    let app = spawn_with(None, |c| {
        c.trust_forwarded_for = true;
        c.idle_timeout = Duration::from_millis(200);
    })
    .await;
    app.create_link("kept").await;
    known_clicks(&app, "kept").await;
    let (_, before) = stats(&app, "kept", "").await;
    assert_consistent(&before, 7);
    // Idle: the actor stops (storing its snapshot); the next one loads it.
    crate::support::eventually(WAIT, "the actor stops", || async {
        app.metric("linkpulse_active_actors").await == 0
    })
    .await;
    known_clicks(&app, "kept").await;
    let (_, twice) = stats(&app, "kept", "").await;
    assert_consistent(&twice, 14);
    assert_eq!(
        twice["totals"]["uniqueVisitors"], 4,
        "the same visitors, the same day"
    );
    let dir = app.stop().await;
    assert_eq!(stored(dir.path(), "kept"), (14, 14));

    let app = spawn_with(Some(dir), |_| {}).await;
    let (_, after) = stats(&app, "kept", "").await;
    assert_eq!(after["totals"], twice["totals"]);
    assert_eq!(after["top"], twice["top"]);
    assert_eq!(after["series"], twice["series"]);
    Ok(())
}

#[tokio::test]
async fn the_stream_carries_a_stats_event_beside_the_count_frames() -> TestResult {
    let app = spawn_with(None, |c| c.trust_forwarded_for = true).await;
    app.create_link("live").await;
    let mut sse = app.subscribe("live").await;
    let first = sse
        .next_named("stats", WAIT)
        .await
        .ok_or("no stats event")?;
    assert_eq!(
        first.id, None,
        "a stats event has no id: Last-Event-ID stays the count"
    );
    let data = first.data.ok_or("stats data")?;
    assert_eq!(data["totals"]["clicks"], 0);
    let state = sse.next_data(WAIT).await.ok_or("no state frame")?;
    assert_eq!(state.count(), Some(0));

    known_clicks(&app, "live").await;
    let mut latest = Value::Null;
    while latest["totals"]["clicks"] != 7 {
        latest = sse
            .next_named("stats", WAIT)
            .await
            .and_then(|e| e.data)
            .ok_or("no stats event after the clicks")?;
    }
    assert_eq!(latest["totals"]["humanClicks"], 5);
    let minutes = latest["minutes"]["clicks"].as_array().ok_or("minutes")?;
    assert_eq!(minutes.len(), 60, "the last hour by minute: {latest}");
    let sum: u64 = minutes.iter().map(|n| n.as_u64().unwrap_or(0)).sum();
    assert_eq!(sum, 7, "the last hour by minute: {latest}");
    assert_eq!(latest["minutes"]["stepMs"], 60_000);
    assert_eq!(latest["top"]["devices"][0]["value"], "desktop");
    assert!(
        latest["top"].get("referrers").is_none(),
        "referrers are the owner's: {latest}"
    );
    Ok(())
}

#[tokio::test]
async fn clicks_export_as_csv_in_order_with_every_field() -> TestResult {
    let app = spawn_with(None, |c| c.trust_forwarded_for = true).await;
    app.create_link("csv").await;
    // Long agents with a comma and quotes, so the export spans several chunks and needs quoting.
    let agent = format!("Agent \"quoted\", with comma {}", "x".repeat(300));
    const N: u64 = 300;
    for _ in 0..N {
        visit(
            &app,
            "csv",
            Some(&agent),
            Some("https://news.example/"),
            "192.0.2.1",
            None,
        )
        .await;
    }
    let res = csv_export(&app, "csv").await;
    assert_eq!(res.status(), 200);
    assert!(
        crate::support::content_type(&res).starts_with("text/csv"),
        "{}",
        crate::support::content_type(&res)
    );
    let body = res.text().await?;
    assert!(
        body.len() > 64 * 1024,
        "more than one chunk: {} bytes",
        body.len()
    );
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    assert_eq!(
        header,
        [
            "seq",
            "createdAt",
            "ipAddress",
            "userAgent",
            "referer",
            "country",
            "browser",
            "os",
            "device",
            "bot"
        ]
    );
    let mut seq = 0;
    for row in reader.records() {
        let row = row?;
        seq += 1;
        assert_eq!(
            row.get(0),
            Some(seq.to_string().as_str()),
            "in order, none missing"
        );
        assert_eq!(
            row.get(2),
            Some("192.0.2.0"),
            "the address as stored: anonymised"
        );
        assert_eq!(row.get(3), Some(agent.as_str()), "quoted and back");
        assert_eq!(row.get(4), Some("https://news.example/"));
    }
    assert_eq!(seq, N);
    // A user agent a spreadsheet would run as a formula is defused.
    visit(
        &app,
        "csv",
        Some("=HYPERLINK(\"x\")"),
        None,
        "192.0.2.1",
        None,
    )
    .await;
    let body = csv_export(&app, "csv").await.text().await?;
    let last = csv::Reader::from_reader(body.as_bytes())
        .records()
        .last()
        .ok_or("rows")??;
    assert_eq!(last.get(3), Some("'=HYPERLINK(\"x\")"));
    // CSV refused (q=0): the JSON page.
    let res = app
        .client
        .get(app.url("/api/links/csv/clicks?limit=1"))
        .header("Accept", "text/csv;q=0, application/json")
        .bearer_auth(KEY)
        .send()
        .await?;
    assert!(crate::support::content_type(&res).starts_with("application/json"));
    // Without the Accept header: the JSON page, as before.
    let res = app
        .client
        .get(app.url("/api/links/csv/clicks?limit=2"))
        .bearer_auth(KEY)
        .send()
        .await?;
    let page: Value = res.json().await?;
    assert_eq!(page["clicks"][0]["seq"], N + 1, "newest first");
    Ok(())
}

/// `GET /api/links/{code}/clicks` with `Accept: text/csv`.
async fn csv_export(app: &TestApp, code: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/api/links/{code}/clicks")))
        .header("Accept", "text/csv")
        .bearer_auth(KEY)
        .send()
        .await
        .expect("export sent")
}

/// The rows of a link's CSV export (its stored clicks), by number.
async fn exported(app: &TestApp, code: &str) -> Vec<u64> {
    let body = csv_export(app, code)
        .await
        .text()
        .await
        .expect("export read");
    csv::Reader::from_reader(body.as_bytes())
        .records()
        .filter_map(|row| row.ok()?.get(0)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn raw_clicks_past_the_retention_go_and_counts_and_aggregates_stay() -> TestResult {
    let retain = |c: &mut linkpulse::ServeConfig| {
        c.trust_forwarded_for = true;
        // Every click is past a retention of 0 days; looked for every 100 ms.
        c.click_retention_days = Some(0);
        c.click_retention_check = Duration::from_millis(100);
        c.idle_timeout = Duration::from_millis(300);
    };
    let app = spawn_with(None, retain).await;
    app.create_link("old").await;
    for _ in 0..3 {
        known_clicks(&app, "old").await;
    }
    let (_, before) = stats(&app, "old", "").await;
    assert_consistent(&before, 21);
    // Once the idle actor has stored aggregates covering them, every click but the last goes.
    crate::support::eventually(WAIT, "the clicks expire", || async {
        exported(&app, "old").await == [21]
    })
    .await;
    assert_eq!(app.count("old").await, 21, "the count stays");
    let (_, after) = stats(&app, "old", "").await;
    assert_consistent(&after, 21);
    assert_eq!(after["top"], before["top"], "the aggregates stay");
    assert_eq!(after["totals"], before["totals"]);

    let dir = app.stop().await;
    assert_eq!(
        stored(dir.path(), "old"),
        (21, 1),
        "count 21, one click stored"
    );
    // A full check of the store accepts a log that starts past expired clicks.
    let seen = Store::open_and_read_all(dir.path())?.verify()?;
    assert_eq!(seen.clicks, 1);

    let app = spawn_with(Some(dir), retain).await;
    let (_, restarted) = stats(&app, "old", "").await;
    assert_eq!(restarted["totals"], before["totals"]);
    known_clicks(&app, "old").await;
    let (_, more) = stats(&app, "old", "").await;
    assert_consistent(&more, 28);
    assert_eq!(app.count("old").await, 28);
    Ok(())
}
