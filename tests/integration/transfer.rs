//! `linkpulse export` and `linkpulse import`, run as the real binary on the data directories
//! of real apps: a round trip keeps links, counts, clicks and stats; a CSV from another
//! shortener; codes the store has are skipped; a running server's store is refused.

use std::{path::Path, process::Command, time::Duration};

use serde_json::{Value, json};

use crate::support::{KEY, TestApp, TestResult, eventually, spawn_app, spawn_with};

const BIN: &str = env!("CARGO_BIN_EXE_linkpulse");
const WAIT: Duration = Duration::from_secs(10);

const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/120.0.0.0 Safari/537.36";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
                      (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
const SLACK: &str = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";

/// Runs the binary; returns (success, stdout, stderr).
pub(crate) fn run(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("LINKPULSE_LOG", "warn")
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `GET path` with the admin key: its JSON, the status checked to be `200`.
pub(crate) async fn get(app: &TestApp, path: &str) -> Value {
    let res = app
        .client
        .get(app.url(path))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().await.expect("json")
}

async fn visit(app: &TestApp, code: &str, agent: &str, referer: Option<&str>) {
    let mut req = app
        .client
        .get(app.url(&format!("/{code}")))
        .header("User-Agent", agent);
    if let Some(referer) = referer {
        req = req.header("Referer", referer);
    }
    let status = req.send().await.expect("redirect sent").status();
    assert!(status.is_redirection(), "/{code}: {status}");
}

/// Everything the API says of a link: the link, its clicks and its whole-life stats, with the
/// app's own address made neutral. Leaves out the stats window's `to` and `topTo`: they are
/// the time of asking.
async fn seen(app: &TestApp, code: &str) -> Value {
    let mut stats = get(app, &format!("/api/links/{code}/stats")).await;
    let window = stats.as_object_mut().expect("stats object");
    window.remove("to");
    window.remove("topTo");
    let all = json!({
        "link": get(app, &format!("/api/links/{code}")).await,
        "clicks": get(app, &format!("/api/links/{code}/clicks?limit=100")).await,
        "stats": stats,
    });
    serde_json::from_str(&all.to_string().replace(&app.base, "BASE")).expect("json")
}

#[tokio::test]
async fn an_export_imported_into_an_empty_store_gives_the_same_links_clicks_and_stats() -> TestResult
{
    let app = spawn_app().await;
    let created = [
        json!({"url": "https://example.com/a", "code": "rt-full", "title": "Full, with rules",
               "tags": ["launch", "q3"], "maxVisits": 100, "redirectStatus": 307,
               "expiresAt": "2099-01-01T00:00:00Z", "expiredUrl": "https://example.com/gone",
               "forwardQuery": true,
               "rules": [{"device": "ios", "url": "https://apps.example.com/ios"},
                         {"country": "SE", "url": "https://example.se/"}]}),
        json!({"url": "https://example.com/b", "code": "rt-plain"}),
        json!({"url": "https://example.com/c", "code": "rt-private", "publicStats": false}),
        json!({"url": "https://example.com/d", "code": "rt-locked", "password": "open sesame"}),
    ];
    for body in created {
        assert_eq!(app.create(body).await.status(), 201);
    }
    // Changed once: rev and updatedAt must survive too.
    let res = app
        .client
        .patch(app.url("/api/links/rt-plain"))
        .bearer_auth(KEY)
        .json(&json!({"title": "Plain"}))
        .send()
        .await?;
    assert_eq!(res.status(), 200);
    let clicks = [
        ("rt-full", CHROME, Some("https://news.example.org/x")),
        ("rt-full", IPHONE, None),
        ("rt-full", SLACK, None),
        ("rt-plain", CHROME, Some("https://t.co/abc")),
        ("rt-plain", CHROME, None),
        ("rt-plain", IPHONE, Some("https://t.co/abc")),
        ("rt-plain", SLACK, None),
        ("rt-private", IPHONE, None),
    ];
    for (code, agent, referer) in clicks {
        visit(&app, code, agent, referer).await;
    }
    let codes = ["rt-full", "rt-plain", "rt-private", "rt-locked"];
    for (code, n) in [("rt-full", 3), ("rt-plain", 4), ("rt-private", 1)] {
        eventually(WAIT, "clicks counted", || async {
            app.count(code).await == n
        })
        .await;
    }
    let mut before = Vec::new();
    for code in codes {
        before.push(seen(&app, code).await);
    }
    assert_eq!(before[1]["stats"]["totals"]["clicks"], 4, "{}", before[1]);
    let old = app.stop().await;

    let files = tempfile::tempdir()?;
    let export = files.path().join("export.jsonl");
    let (ok, _, stderr) = run(
        &["export", "--output", export.to_str().unwrap_or_default()],
        old.path(),
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("exported 4 links, 8 clicks"),
        "the summary: {stderr}"
    );
    let text = std::fs::read_to_string(&export)?;
    assert!(text.starts_with(r#"{"type":"linkpulse-export","version":1,"#));
    assert!(text.contains(r#""passwordHash":"$argon2"#));
    assert!(!text.contains(KEY), "no key secret in the export");

    let new = tempfile::tempdir()?;
    let (ok, stdout, stderr) = run(
        &["import", "--input", export.to_str().unwrap_or_default()],
        new.path(),
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "imported 4 links, 8 clicks, skipped 0\n");
    let (ok, stdout, stderr) = run(&["check"], new.path());
    assert!(ok && stdout.contains("result: sound"), "{stdout}{stderr}");

    // The same initial key: the same owner id, so the links are its own again.
    let app = spawn_with(Some(new), |_| {}).await;
    for (code, expected) in codes.iter().zip(&before) {
        assert_eq!(&seen(&app, code).await, expected, "{code}");
    }
    // The password came along as its hash: the right one still opens the link.
    let res = app
        .client
        .post(app.url("/rt-locked"))
        .form(&[("password", "open sesame")])
        .send()
        .await?;
    assert!(res.status().is_redirection(), "{}", res.status());
    // New clicks follow the imported ones.
    visit(&app, "rt-plain", CHROME, None).await;
    eventually(WAIT, "the fifth click", || async {
        app.count("rt-plain").await == 5
    })
    .await;
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_csv_import_takes_quoted_titles_tags_and_empty_codes_and_stops_at_a_bad_row() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let (ok, key, stderr) = run(&["keys", "create", "--admin", "--name", "ops"], dir.path());
    assert!(ok, "{stderr}");
    let files = tempfile::tempdir()?;
    let csv = files.path().join("links.csv");
    std::fs::write(
        &csv,
        "url,code,title,tags\n\
         https://example.com/one,csv-one,\"Hello, world\",news|tech\n\
         https://example.com/two,,Second,\"x,y\"\n\
         https://example.com/three,csv-three\n\
         not a url,csv-bad,Bad,\n\
         https://example.com/four,csv-four\n",
    )?;
    let (ok, stdout, stderr) = run(
        &["import", "--input", csv.to_str().unwrap_or("")],
        dir.path(),
    );
    assert!(!ok, "a bad row fails the import: {stdout}");
    assert!(
        stderr.contains("line 5") && stderr.contains("not a url"),
        "names the row: {stderr}"
    );
    assert!(
        stderr.contains("imported 3 links, 0 clicks, skipped 0"),
        "says what came before it: {stderr}"
    );

    let app = spawn_with(Some(dir), |_| {}).await;
    let one = app.read("csv-one").await;
    assert_eq!(one["url"], "https://example.com/one");
    assert_eq!(one["title"], "Hello, world");
    assert_eq!(one["tags"], json!(["news", "tech"]));
    assert_eq!(app.read("csv-three").await["title"], Value::Null);
    let res = app
        .client
        .get(app.url("/api/links/csv-four"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(res.status(), 404, "nothing after the bad row");
    // The generated one, owned (as every CSV link) by the oldest admin key: the one made above.
    let listing = app
        .client
        .get(app.url("/api/links"))
        .bearer_auth(key.trim())
        .send()
        .await?
        .json::<Value>()
        .await?;
    let links = listing["links"].as_array().cloned().unwrap_or_default();
    assert_eq!(links.len(), 3, "{listing}");
    let two = links
        .iter()
        .find(|l| l["url"] == "https://example.com/two")
        .expect("the link with an empty code");
    assert_eq!(two["tags"], json!(["x", "y"]));
    assert_eq!(two["code"].as_str().map(str::len), Some(7), "{two}");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn an_import_skips_the_codes_the_store_has_and_says_so() -> TestResult {
    let source = spawn_app().await;
    for code in ["dup", "fresh"] {
        source.create_link(code).await;
    }
    for code in ["dup", "dup", "fresh", "fresh", "fresh"] {
        visit(&source, code, CHROME, None).await;
    }
    eventually(WAIT, "clicks counted", || async {
        source.count("fresh").await == 3 && source.count("dup").await == 2
    })
    .await;
    let old = source.stop().await;
    let files = tempfile::tempdir()?;
    let export = files.path().join("export.jsonl");
    let (ok, _, stderr) = run(
        &["export", "--output", export.to_str().unwrap_or("")],
        old.path(),
    );
    assert!(ok, "{stderr}");

    let target = spawn_app().await;
    let res = target
        .create(json!({"url": "https://example.org/mine", "code": "dup"}))
        .await;
    assert_eq!(res.status(), 201);
    visit(&target, "dup", IPHONE, None).await;
    eventually(WAIT, "the click", || async {
        target.count("dup").await == 1
    })
    .await;
    let dir = target.stop().await;

    let (ok, stdout, stderr) = run(
        &["import", "--input", export.to_str().unwrap_or("")],
        dir.path(),
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "imported 1 links, 3 clicks, skipped 1\n");

    let app = spawn_with(Some(dir), |_| {}).await;
    let dup = app.read("dup").await;
    assert_eq!(
        (dup["url"].as_str(), dup["clickCount"].as_u64()),
        (Some("https://example.org/mine"), Some(1)),
        "the store's own link stays as it was"
    );
    assert_eq!(app.count("fresh").await, 3);
    // This store has its own visitor secret: the aggregates of `fresh` are built again from
    // its clicks at start.
    let stats = get(&app, "/api/links/fresh/stats").await;
    assert_eq!(stats["totals"]["clicks"], 3, "{stats}");
    assert_eq!(stats["totals"]["uniqueVisitors"], 1, "{stats}");
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn export_and_import_refuse_the_store_of_a_running_server() -> TestResult {
    let app = spawn_app().await;
    app.create_link("busy").await;
    for args in [&["export"][..], &["import", "--input", "/dev/null"][..]] {
        let (ok, stdout, stderr) = run(args, app.dir.path());
        assert!(!ok, "{args:?}: {stdout}");
        assert!(
            stderr.contains("in use by another process (is linkpulse already running?)"),
            "{args:?}: {stderr}"
        );
        assert!(stdout.is_empty(), "{args:?}: nothing written: {stdout}");
    }
    assert_eq!(app.read("busy").await["code"], "busy");
    app.stop().await;
    Ok(())
}

/// Links on a domain and the domain itself round-trip: the same code on the default domain
/// and on a branded one stays two links with their own clicks; an export whose link names a
/// domain no line before it adds stops the import at that line.
#[tokio::test]
async fn domains_and_their_links_round_trip_and_an_unknown_domain_stops_the_import() -> TestResult {
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/api/domains"))
        .bearer_auth(KEY)
        .json(
            &json!({"name": "go.example.test", "rootUrl": "https://example.com/home",
                      "https": true, "hsts": true}),
        )
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    for body in [
        json!({"url": "https://example.com/default", "code": "same"}),
        json!({"url": "https://example.com/branded", "code": "same", "domain": "go.example.test"}),
    ] {
        assert_eq!(app.create(body).await.status(), 201);
    }
    for host in ["go.example.test", "go.example.test", "other.example"] {
        let res = app
            .client
            .get(app.url("/same"))
            .header("host", host)
            .send()
            .await?;
        assert_eq!(res.status(), 302);
    }
    eventually(WAIT, "clicks counted", || async {
        get(&app, "/api/links/same?domain=go.example.test").await["clickCount"] == 2
    })
    .await;
    let old = app.stop().await;

    let files = tempfile::tempdir()?;
    let export = files.path().join("export.jsonl");
    let (ok, _, stderr) = run(
        &["export", "--output", export.to_str().unwrap_or_default()],
        old.path(),
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("1 domains"), "{stderr}");
    let text = std::fs::read_to_string(&export)?;
    assert!(
        text.contains(r#"{"type":"domain","name":"go.example.test""#),
        "{text}"
    );
    assert!(
        text.contains(r#""code":"go.example.test/same","domain":"go.example.test""#),
        "{text}"
    );

    let new = tempfile::tempdir()?;
    let (ok, stdout, stderr) = run(
        &["import", "--input", export.to_str().unwrap_or_default()],
        new.path(),
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        "imported 2 links, 3 clicks, skipped 0, added 1 domains\n"
    );
    let app = spawn_with(Some(new), |_| {}).await;
    let domains = get(&app, "/api/domains").await;
    let domain = &domains["domains"][0];
    assert_eq!(
        (
            &domain["name"],
            &domain["rootUrl"],
            &domain["https"],
            &domain["hsts"]
        ),
        (
            &json!("go.example.test"),
            &json!("https://example.com/home"),
            &json!(true),
            &json!(true)
        )
    );
    assert_eq!(
        get(&app, "/api/links/same?domain=go.example.test").await["clickCount"],
        2
    );
    assert_eq!(get(&app, "/api/links/same").await["clickCount"], 1);
    let res = app
        .client
        .get(app.url("/same"))
        .header("host", "go.example.test")
        .send()
        .await?;
    assert_eq!(res.headers()["location"], "https://example.com/branded");
    app.stop().await;

    // Without its domain line, the branded link stops the import, named.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(r#""type":"domain""#))
        .collect();
    let at = lines
        .iter()
        .position(|l| l.contains(r#""domain":"go.example.test""#))
        .ok_or("the branded link's line")?
        + 1;
    let edited = files.path().join("edited.jsonl");
    std::fs::write(&edited, lines.join("\n"))?;
    let fresh = tempfile::tempdir()?;
    let (ok, _, stderr) = run(
        &["import", "--input", edited.to_str().unwrap_or_default()],
        fresh.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "line {at}: link go.example.test/same is on the domain go.example.test"
        )),
        "{stderr}"
    );
    Ok(())
}
