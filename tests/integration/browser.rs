//! The stats page in a real browser (headless Chromium driven through chromedriver): the count
//! follows the clicks live, and the page reconnects by itself after a server restart.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

use crate::support::{TestResult, eventually, spawn_app, spawn_with};

const WAIT: Duration = Duration::from_secs(20);

const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                      Chrome/120.0.0.0 Safari/537.36";

#[tokio::test]
async fn the_stats_page_names_its_stream() -> TestResult {
    let app = spawn_app().await;
    app.create_link("page").await;
    let res = app.client.get(app.url("/links/page")).send().await?;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()?
            .starts_with("text/html")
    );
    let html = res.text().await?;
    assert!(html.contains(r#"id="clickCount""#));
    assert!(html.contains(r#"data-stream="/realtime/page""#));
    assert!(html.contains("new EventSource(stream)"));
    assert!(html.contains(r#"addEventListener("stats""#));
    // The chart library comes from the binary itself, not a CDN.
    let script = html
        .split(r#"<script src=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or("the page loads a script")?;
    assert!(script.starts_with("/assets/"), "{script}");
    let res = app.client.get(app.url(script)).send().await?;
    assert_eq!(res.status(), 200);
    assert!(res.text().await?.contains("uPlot"));
    assert!(html.contains("https://example.com/target"));
    let res = app.client.get(app.url("/links/unknown")).send().await?;
    assert_eq!(res.status(), 404);
    app.stop().await;
    Ok(())
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn find(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_page_counts_live_and_survives_a_restart() -> TestResult {
    if std::env::var_os("LINKPULSE_SKIP_BROWSER").is_some() {
        eprintln!("LINKPULSE_SKIP_BROWSER is set: browser test not run");
        return Ok(());
    }
    let (Some(chromedriver), Some(chromium)) = (
        find("chromedriver"),
        find("chromium").or_else(|| find("chromium-browser")),
    ) else {
        return Err(
            "chromium and chromedriver are needed (apt-get install chromium \
                    chromium-driver, as .ci/run does), or set LINKPULSE_SKIP_BROWSER=1"
                .into(),
        );
    };
    let port = free_port()?;
    let _driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let profile = tempfile::tempdir()?;
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }
    });
    let caps = caps.as_object().cloned().unwrap_or_default();
    let deadline = std::time::Instant::now() + WAIT;
    let browser = loop {
        let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match attempt {
            Ok(client) => break client,
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(format!("no browser session: {e}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };

    // Tall enough for the whole page in the screenshot.
    browser.set_window_size(1100, 1500).await?;
    let app = spawn_app().await;
    let addr = app.addr;
    app.create_link("watch").await;
    browser.goto(&app.url("/links/watch")).await?;
    let text_of = |id: &'static str| {
        let browser = browser.clone();
        async move {
            match browser.find(Locator::Id(id)).await {
                Ok(el) => el.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
    };
    eventually(WAIT, "the page is live", || async {
        text_of("status").await == "live"
    })
    .await;
    let attr_of = |id: &'static str, name: &'static str| {
        let browser = browser.clone();
        async move {
            match browser.find(Locator::Id(id)).await {
                Ok(el) => el.attr(name).await.ok().flatten().unwrap_or_default(),
                Err(_) => String::new(),
            }
        }
    };
    // Three people on a desktop browser and two clicks without a user agent (bots).
    for _ in 0..3 {
        let res = app
            .client
            .get(app.url("/watch"))
            .header("User-Agent", CHROME)
            .send()
            .await?;
        assert_eq!(res.status(), 302);
    }
    for _ in 0..2 {
        app.click("watch").await;
    }
    eventually(WAIT, "the page shows 5 clicks", || async {
        text_of("clickCount").await == "5"
    })
    .await;
    // The public stream's details of the latest click: the address, anonymised.
    assert_eq!(text_of("lastIp").await, "127.0.0.0");
    // The `stats` event moves the totals, the chart and the top lists.
    eventually(WAIT, "the page shows 3 clicks by people", || async {
        text_of("humanClicks").await == "3" && text_of("botClicks").await == "2"
    })
    .await;
    eventually(WAIT, "the chart holds the 5 clicks", || async {
        attr_of("chart", "data-clicks").await == "5"
    })
    .await;
    assert_eq!(
        attr_of("chart", "data-points").await,
        "60",
        "an hour by minute"
    );
    let chart = browser
        .find(Locator::Css("#chart canvas"))
        .await
        .map_err(|e| format!("uPlot drew no canvas: {e}"))?;
    assert!(chart.is_displayed().await?, "the chart is visible");
    let devices = browser.find_all(Locator::Css("#top-devices li")).await?;
    let mut shown = Vec::new();
    for item in devices {
        let value = item.find(Locator::Css(".value")).await?.text().await?;
        let n = item.find(Locator::Css(".n")).await?.text().await?;
        shown.push(format!("{value}={n}"));
    }
    assert_eq!(shown, ["desktop=3", "bot=2"], "the devices top list");
    // Frames conflate clicks that come close together: at least the last one is listed.
    let rows = browser.find_all(Locator::Css("#latest tr")).await?;
    assert!(
        (1..=5).contains(&rows.len()),
        "{} latest clicks",
        rows.len()
    );
    let shot = browser.screenshot().await?;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("stats-page.png");
    std::fs::write(&path, shot)?;
    eprintln!("stats page screenshot: {}", path.display());

    // Restart the server on the same port and data: the page reconnects by itself.
    let dir = app.stop().await;
    let app = spawn_with(Some(dir), |c| c.listen = addr).await;
    for _ in 0..2 {
        app.click("watch").await;
    }
    eventually(
        WAIT,
        "the page shows 7 clicks after the restart",
        || async { text_of("clickCount").await == "7" },
    )
    .await;
    eventually(WAIT, "the totals follow after the restart", || async {
        text_of("botClicks").await == "4"
    })
    .await;
    browser.close().await?;
    app.stop().await;
    Ok(())
}
