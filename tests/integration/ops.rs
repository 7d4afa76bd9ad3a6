//! Operations: the Prometheus exposition keeps every metric name and its histograms move,
//! `/readyz`, JSON logs from the real binary, and CORS for `/api/*`.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use linkpulse::store::Fault;
use reqwest::Method;
use serde_json::Value;

use crate::support::{
    KEY, TestApp, TestResult, eventually, spawn_app, spawn_with, spawn_with_links,
};

const WAIT: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");

/// Every metric the service showed before it used prometheus-client: dashboards read them.
const OLD_NAMES: [&str; 14] = [
    "linkpulse_clicks_total",
    "linkpulse_actors_started_total",
    "linkpulse_actors_stopped_total",
    "linkpulse_subscribers_refused_total",
    "linkpulse_actor_start_failures_total",
    "linkpulse_clicks_dropped_total",
    "linkpulse_subscribers",
    "linkpulse_inbox_clicks",
    "linkpulse_active_actors",
    "linkpulse_writer_queue",
    "linkpulse_backlog_clicks",
    "linkpulse_backlog_limit",
    "linkpulse_store_failed",
    "linkpulse_clicks_not_committed",
];

/// `/metrics` as sample name (with labels) -> value, and the `# TYPE` of each family.
async fn scrape(app: &TestApp) -> (HashMap<String, f64>, HashMap<String, String>) {
    let res = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = res.text().await.expect("metrics text");
    let (mut samples, mut types) = (HashMap::new(), HashMap::new());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
            };
            samples.insert(name.to_owned(), value);
        }
    }
    (samples, types)
}

#[tokio::test]
async fn every_old_metric_name_is_kept_and_the_histograms_move() -> TestResult {
    let app = spawn_app().await;
    app.create_link("hist").await;
    let mut sub = app.subscribe("hist").await;
    assert_eq!(sub.next_data(WAIT).await.and_then(|e| e.count()), Some(0));

    let (before, types) = scrape(&app).await;
    for name in OLD_NAMES {
        assert!(types.contains_key(name), "# TYPE of {name} missing");
    }
    assert_eq!(types["linkpulse_clicks_total"], "counter");
    assert_eq!(types["linkpulse_subscribers"], "gauge");
    assert_eq!(before["linkpulse_subscribers"], 1.0);
    assert_eq!(
        before["linkpulse_clicks_dropped_total{reason=\"backlog\"}"],
        0.0
    );
    for name in [
        "linkpulse_redirect_duration_seconds",
        "linkpulse_commit_clicks",
        "linkpulse_commit_duration_seconds",
        "linkpulse_click_to_frame_seconds",
    ] {
        assert_eq!(types[name], "histogram", "{name}");
        assert!(
            before.contains_key(&format!("{name}_bucket{{le=\"+Inf\"}}")),
            "{name}"
        );
    }

    for _ in 0..3 {
        assert_eq!(app.click("hist").await.status(), 302);
    }
    // The frame carrying the third click: its delay is measured before it is handed over.
    let mut seen = 0;
    let deadline = Instant::now() + WAIT;
    while seen < 3 && Instant::now() < deadline {
        seen = sub
            .next_data(WAIT)
            .await
            .and_then(|e| e.count())
            .unwrap_or(seen);
    }
    assert_eq!(seen, 3, "the stream shows the three clicks");

    let (after, _) = scrape(&app).await;
    let moved = |name: &str| after[name] - before[name];
    assert_eq!(moved("linkpulse_clicks_total"), 3.0);
    assert_eq!(moved("linkpulse_redirect_duration_seconds_count"), 3.0);
    assert_eq!(
        moved("linkpulse_redirect_duration_seconds_bucket{le=\"+Inf\"}"),
        3.0
    );
    assert!(moved("linkpulse_redirect_duration_seconds_sum") > 0.0);
    // The three clicks went into one or more group commits, and nothing else holds clicks.
    assert_eq!(moved("linkpulse_commit_clicks_sum"), 3.0);
    let commits = moved("linkpulse_commit_clicks_count");
    assert!((1.0..=3.0).contains(&commits), "{commits} commits");
    assert_eq!(moved("linkpulse_commit_duration_seconds_count"), commits);
    assert!(moved("linkpulse_click_to_frame_seconds_count") >= 1.0);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn readyz_is_200_while_serving_and_503_once_the_store_failed() -> TestResult {
    let (app, links) = spawn_with_links(None, |_| {}).await;
    let res = app.client.get(app.url("/readyz")).send().await?;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await?,
        serde_json::json!({"ready": true})
    );
    let res = app.client.head(app.url("/readyz")).send().await?;
    assert_eq!(res.status(), 200);
    let res = app.client.post(app.url("/readyz")).send().await?;
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD");

    app.create_link("ready").await;
    links.writer().inject(Fault::FailCommit);
    assert_eq!(app.click("ready").await.status(), 302);
    eventually(WAIT, "readyz reports the failed store", || async {
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    let body: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(body["ready"], false);
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("the store failed"), "{body}");
    let _ = app.stop_result().await;
    drop(links);
    Ok(())
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("LINKPULSE_INITIAL_API_KEY", KEY)
        .env("LINKPULSE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut listening = None;
    for line in lines.by_ref().take(100) {
        let line = line?;
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        if event["message"] == "linkpulse listening" {
            listening = Some(event);
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let listening = listening.ok_or("no 'linkpulse listening' line")?;
    assert_eq!(listening["level"], "INFO");
    let addr = listening["address"]
        .as_str()
        .ok_or("the address is a field")?;
    let res = crate::support::client()
        .get(format!("http://{addr}/readyz"))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(child.wait()?.success());
    Ok(())
}

const DASH: &str = "https://dash.example.com";

async fn preflight(app: &TestApp, path: &str, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight sent")
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn cors_answers_preflights_and_marks_answers_for_allowed_origins_only() -> TestResult {
    let app = spawn_with(None, |c| {
        c.cors_origin = vec![DASH.to_owned(), "http://other.example:8080".to_owned()];
    })
    .await;
    app.create_link("corsy").await;
    for path in ["/api/links", "/api/links/corsy", "/api/links/corsy/stats"] {
        let res = preflight(&app, path, DASH).await;
        assert_eq!(res.status(), 204, "{path}");
        assert_eq!(header(&res, "access-control-allow-origin"), Some(DASH));
        let methods = header(&res, "access-control-allow-methods").unwrap_or("");
        for method in ["GET", "POST", "PATCH", "DELETE"] {
            assert!(methods.contains(method), "{methods}");
        }
        let headers = header(&res, "access-control-allow-headers").unwrap_or("");
        assert!(headers.contains("Authorization") && headers.contains("Content-Type"));
        assert!(header(&res, "access-control-max-age").is_some());

        let res = preflight(&app, path, "https://evil.example").await;
        assert_eq!(header(&res, "access-control-allow-origin"), None, "{path}");
        assert_eq!(header(&res, "access-control-allow-methods"), None);
    }

    let read = |origin: &'static str, key: bool| {
        let mut req = app
            .client
            .get(app.url("/api/links/corsy"))
            .header("origin", origin);
        if key {
            req = req.bearer_auth(KEY);
        }
        req.send()
    };
    let res = read(DASH, true).await?;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "access-control-allow-origin"), Some(DASH));
    assert!(header(&res, "vary").unwrap_or("").contains("Origin"));
    // Error answers carry it too, so the dashboard can read why.
    let res = read("http://other.example:8080", false).await?;
    assert_eq!(res.status(), 401);
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        Some("http://other.example:8080")
    );
    let res = read("https://evil.example", true).await?;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    // Not an API path: no CORS headers.
    let res = app
        .client
        .get(app.url("/corsy"))
        .header("origin", DASH)
        .send()
        .await?;
    assert_eq!(res.status(), 302);
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn cors_any_origin_answers_star() -> TestResult {
    let app = spawn_with(None, |c| c.cors_origin = vec!["*".to_owned()]).await;
    let res = preflight(&app, "/api/links", "https://anywhere.example").await;
    assert_eq!(res.status(), 204);
    assert_eq!(header(&res, "access-control-allow-origin"), Some("*"));
    let res = app
        .client
        .get(app.url("/api/links/nothere"))
        .header("origin", "https://anywhere.example")
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(res.status(), 404);
    assert_eq!(header(&res, "access-control-allow-origin"), Some("*"));
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn without_cors_origins_there_are_no_cors_headers() -> TestResult {
    let app = spawn_app().await;
    app.create_link("nocors").await;
    let res = preflight(&app, "/api/links/nocors", DASH).await;
    assert_eq!(res.status(), 405, "the route's own answer");
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    let res = app
        .client
        .get(app.url("/api/links/nocors"))
        .header("origin", DASH)
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    assert_eq!(header(&res, "vary"), None);
    app.stop().await;
    Ok(())
}
