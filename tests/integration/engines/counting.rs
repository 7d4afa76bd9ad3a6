//! Counting: exact counts under racing clients, visit limits and expiry that hold under them,
//! password links that count only the right password, and stats that sum to the count.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Engine, Running, spawn_on};
use crate::{
    stats::{assert_consistent, country_db, known_clicks, list, stats},
    support::{TestResult, json_error, soak},
};

/// 64 clients race on one code, 500 redirects each with `LINKPULSE_SOAK=1` (50 in a plain
/// `cargo test`): every answer is a 302 and not one click is lost, neither in the live count
/// nor in the store.
pub(super) async fn soak_concurrent_redirects_to_one_code_are_counted_exactly(
    engine: Engine,
) -> TestResult {
    const CLIENTS: usize = 64;
    let each = soak(500, 50);
    let app = spawn_on(engine, |_| {}).await;
    app.create_link("hot").await;
    let url = Arc::new(app.url("/hot"));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = app.client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut found = 0usize;
            for _ in 0..each {
                let res = client.get(url.as_str()).send().await.expect("sent");
                if res.status() == 302 {
                    found += 1;
                }
            }
            found
        }));
    }
    let mut redirects = 0;
    for task in tasks {
        redirects += task.await?;
    }
    let total = (CLIENTS * each) as u64;
    assert_eq!(redirects as u64, total, "every answer is a 302");
    assert_eq!(app.count("hot").await, total);
    assert_eq!(
        app.stored("hot").await,
        (total, total),
        "stored count and click events"
    );
    Ok(())
}

/// 64 clients race past the limit: exactly `maxVisits` are redirected and counted.
async fn race(app: &Arc<Running>, code: &str, per_client: usize) -> Vec<(u16, String)> {
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let app = app.clone();
        let code = code.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..per_client {
                let res = app.click(&code).await;
                let location = res
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                seen.push((res.status().as_u16(), location));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    all
}

pub(super) async fn max_visits_is_exact_under_64_racing_clients(engine: Engine) -> TestResult {
    let app = Arc::new(spawn_on(engine, |_| {}).await);
    let body = json!({"url": "https://example.com/limited", "code": "limited", "maxVisits": 100});
    assert_eq!(app.create(body).await.status(), 201);
    let answers = race(&app, "limited", 4).await;
    let redirected = answers.iter().filter(|(s, _)| *s == 302).count();
    let gone = answers.iter().filter(|(s, _)| *s == 410).count();
    assert_eq!(
        (redirected, gone),
        (100, 156),
        "exactly the limit, then 410"
    );
    assert_eq!(app.count("limited").await, 100);

    // With an expiredUrl, the later ones go there instead, uncounted.
    let res = app
        .patch(
            "limited",
            json!({"maxVisits": 150, "expiredUrl": "https://example.com/sold-out"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let answers = race(&app, "limited", 2).await;
    let counted = answers
        .iter()
        .filter(|(s, l)| *s == 302 && l == "https://example.com/limited")
        .count();
    let sold_out = answers
        .iter()
        .filter(|(s, l)| *s == 302 && l == "https://example.com/sold-out")
        .count();
    assert_eq!((counted, sold_out), (50, 78));
    assert_eq!(app.count("limited").await, 150);
    let head = app.client.head(app.url("/limited")).send().await?;
    assert_eq!(head.headers()["location"], "https://example.com/sold-out");
    // Every client task has ended, and its handle on the app with it.
    let app = Arc::try_unwrap(app).map_err(|_| "a client task still holds the app")?;
    let app = app.restart().await;
    assert_eq!(
        app.count("limited").await,
        150,
        "the limit holds across a restart"
    );
    assert_eq!(
        app.click("limited").await.headers()["location"],
        "https://example.com/sold-out"
    );
    assert_eq!(app.count("limited").await, 150);
    app.stop().await;
    Ok(())
}

pub(super) async fn expiry_is_exact_under_64_racing_clients(engine: Engine) -> TestResult {
    let app = Arc::new(spawn_on(engine, |_| {}).await);
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(700);
    let body = json!({"url": "https://example.com/soon", "code": "soon",
                      "expiresAt": expires.to_string()});
    assert_eq!(app.create(body).await.status(), 201);
    // Clients click until each has seen the link expire.
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let (mut redirected, mut after) = (0u64, Vec::new());
            for _ in 0..2_000 {
                let res = app.click("soon").await;
                match res.status().as_u16() {
                    302 => redirected += 1,
                    410 => {
                        after.push(410);
                        break;
                    }
                    other => after.push(other),
                }
            }
            (redirected, after)
        }));
    }
    let mut redirected = 0;
    for task in tasks {
        let (n, after) = task.await?;
        redirected += n;
        assert_eq!(after, [410], "each client ends on 410, nothing else");
    }
    assert!(redirected > 0);
    assert_eq!(
        app.count("soon").await,
        redirected,
        "every redirect answered is counted"
    );
    assert_eq!(app.click("soon").await.status(), 410);
    assert_eq!(app.count("soon").await, redirected, "and nothing after");
    Ok(())
}

pub(super) async fn a_password_link_shows_a_form_and_counts_only_the_right_password(
    engine: Engine,
) -> TestResult {
    let app = spawn_on(engine, |_| {}).await;
    let body = json!({"url": "https://example.com/secret", "code": "locked",
                      "password": "open sesame"});
    let created: Value = app.create(body).await.json().await?;
    assert_eq!(created["passwordProtected"], true);
    assert!(created.get("password").is_none(), "the hash is never shown");

    let res = app.click("locked").await;
    assert_eq!(res.status(), 200);
    let form = res.text().await?;
    assert!(form.contains("<form method=\"post\""), "{form}");

    let post = |password: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/locked"))
                .form(&[("password", password)])
                .send()
                .await
                .expect("sent")
        }
    };
    let res = post("wrong").await;
    assert_eq!(res.status(), 401);
    assert!(res.text().await?.contains("Wrong password"));
    let trace = app
        .client
        .request(reqwest::Method::TRACE, app.url("/locked"))
        .send()
        .await?;
    assert_eq!(trace.status(), 405);
    assert_eq!(
        trace.headers()["allow"],
        "GET, HEAD, POST",
        "the form's answer is a POST"
    );
    assert_eq!(
        app.count("locked").await,
        0,
        "a wrong password is not a click"
    );
    let res = post("open sesame").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "https://example.com/secret");
    assert_eq!(app.count("locked").await, 1);

    // Removing the password makes it a plain link again.
    assert_eq!(
        app.patch("locked", json!({"password": null}))
            .await
            .status(),
        200
    );
    assert_eq!(app.click("locked").await.status(), 302);
    let (status, error) = json_error(app.patch("locked", json!({"password": ""})).await).await;
    assert_eq!(status, 400);
    assert!(
        error.contains("password must be 1 to 128 characters"),
        "{error}"
    );
    app.stop().await;
    Ok(())
}

pub(super) async fn a_known_set_of_clicks_gives_known_series_and_top_lists(
    engine: Engine,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = country_db(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let app = spawn_on(engine, |c| {
        c.data_dir = data;
        c.trust_forwarded_for = true;
        c.country_header = Some("X-Country".into());
        c.geoip_db = Some(db);
    })
    .await;
    app.create_link("known").await;
    known_clicks(&app, "known").await;

    let (status, whole) = stats(&app, "known", "").await;
    assert_eq!(status, 200, "{whole}");
    assert_consistent(&whole, 7);
    let totals = &whole["totals"];
    assert_eq!(totals["humanClicks"], 5, "{whole}");
    assert_eq!(
        totals["botClicks"], 2,
        "the preview fetcher and the script are bots"
    );
    // Visitors: (address /24, agent, day): Chrome, iPhone, Slack, the script.
    assert_eq!(totals["uniqueVisitors"], 4, "{whole}");
    assert_eq!(whole["interval"], "day");
    let series = whole["series"].as_array().ok_or("series")?;
    assert_eq!(series.len(), 1, "one day: {whole}");
    assert_eq!(series[0]["clicks"], 7);
    assert_eq!(series[0]["humanClicks"], 5);
    assert_eq!(series[0]["uniqueVisitors"], 4);
    assert!(
        series[0]["t"]
            .as_str()
            .unwrap_or("")
            .ends_with("T00:00:00Z"),
        "a UTC day starts at midnight: {}",
        series[0]["t"]
    );

    let s = |v: &str, c: u64, h: u64| (v.to_owned(), c, h);
    assert_eq!(
        list(&whole, "referrers"),
        vec![
            s("news.example", 3, 3),
            s("(direct)", 2, 0),
            s("blog.example", 2, 2)
        ]
    );
    assert_eq!(
        list(&whole, "countries"),
        vec![
            s("SE", 3, 3),
            s("US", 2, 2),
            s("(unknown)", 1, 0),
            s("DE", 1, 0)
        ]
    );
    assert_eq!(
        list(&whole, "devices"),
        vec![s("desktop", 3, 3), s("bot", 2, 0), s("mobile", 2, 2)]
    );
    let browsers = list(&whole, "browsers");
    assert_eq!(browsers[0], s("Chrome", 3, 3), "{browsers:?}");
    assert_eq!(browsers[1], s("Safari", 2, 2), "{browsers:?}");

    // The same clicks by hour, by minute, and by day in a zone 5:30 ahead.
    for query in [
        "?interval=hour",
        "?interval=minute",
        "?interval=day&tz=%2B05:30",
    ] {
        let (status, answer) = stats(&app, "known", query).await;
        assert_eq!(status, 200, "{query}: {answer}");
        assert_consistent(&answer, 7);
    }
    let (_, local) = stats(&app, "known", "?interval=day&tz=Asia/Kolkata").await;
    assert!(
        local["series"][0]["t"]
            .as_str()
            .unwrap_or("")
            .ends_with("T00:00:00+05:30"),
        "local days start at local midnight: {local}"
    );
    // A window before the link's clicks: nothing in it.
    let (status, past) = stats(&app, "known", "?from=2020-01-01&to=2020-01-02").await;
    assert_eq!(status, 200, "{past}");
    assert_consistent(&past, 0);
    Ok(())
}
