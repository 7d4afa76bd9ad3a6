//! The pages in a real browser (headless Chromium driven through chromedriver): the stats
//! page's count follows the clicks live and reconnects by itself after a server restart; the
//! owner's home page creates, lists (with moving counts), edits and deletes links.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

use crate::support::{KEY, TestResult, client, content_type, eventually, spawn_app, spawn_with};

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

/// A headless Chromium session, with the chromedriver and profile it lives on; `None` when
/// `LINKPULSE_SKIP_BROWSER` is set.
struct Browser {
    client: fantoccini::Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

async fn start_browser() -> Result<Option<Browser>, Box<dyn std::error::Error + Send + Sync>> {
    if std::env::var_os("LINKPULSE_SKIP_BROWSER").is_some() {
        eprintln!("LINKPULSE_SKIP_BROWSER is set: browser test not run");
        return Ok(None);
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
    let driver = Driver(
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
    let client = loop {
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
    Ok(Some(Browser {
        client,
        _driver: driver,
        _profile: profile,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_page_counts_live_and_survives_a_restart() -> TestResult {
    let Some(session) = start_browser().await? else {
        return Ok(());
    };
    let browser = session.client.clone();

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

#[tokio::test]
async fn the_home_page_is_served_with_its_policy() -> TestResult {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/")).send().await?;
    assert_eq!(res.status(), 200);
    assert_eq!(content_type(&res), "text/html; charset=utf-8");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let csp = res.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    for part in [
        "default-src 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
        "connect-src 'self'",
        "img-src 'self' blob: data:",
    ] {
        assert!(csp.contains(part), "{part} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = res.text().await?;
    assert!(html.contains(r#"<label for="key">"#), "the key field");
    assert!(html.contains(r#"id="createForm""#), "the create form");
    // Nothing from elsewhere: no CDN, no external font.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));

    let res = app.client.head(app.url("/")).send().await?;
    assert_eq!(res.status(), 200);
    assert!(content_type(&res).starts_with("text/html"));
    assert!(res.bytes().await?.is_empty(), "HEAD / has no body");
    let res = app.client.post(app.url("/")).send().await?;
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD");

    // Short codes still redirect next to it, and a path that only decodes to `/` is no page.
    app.create_link("beside").await;
    assert_eq!(app.click("beside").await.status(), 302);
    assert_eq!(app.client.get(app.url("//")).send().await?.status(), 200);
    // Sent as written (reqwest would resolve it to `/` itself before sending).
    let mut conn = tokio::net::TcpStream::connect(app.addr).await?;
    let answer = crate::wire::exchange(&mut conn, &crate::wire::get("/%2e%2e"))
        .await
        .ok_or("no answer")?;
    assert_eq!(answer.status, 404, "{}", answer.head);
    assert!(answer.body.contains("Link not found"));
    app.stop().await;
    Ok(())
}

/// The text of the first element `css` finds, or nothing.
async fn text_at(browser: &fantoccini::Client, css: &str) -> String {
    match browser.find(Locator::Css(css)).await {
        Ok(el) => el.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Whether `script` (a function body) returns `true` in the page.
async fn holds(browser: &fantoccini::Client, script: &str) -> bool {
    browser.execute(script, vec![]).await.ok() == Some(json!(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_page_creates_lists_edits_and_deletes_links() -> TestResult {
    let Some(session) = start_browser().await? else {
        return Ok(());
    };
    let browser = session.client.clone();
    browser.set_window_size(1000, 1100).await?;
    let app = spawn_app().await;
    browser.goto(&app.url("/")).await?;

    // The owner pastes the key; the page keeps it.
    browser
        .find(Locator::Id("key"))
        .await?
        .send_keys(KEY)
        .await?;
    browser.find(Locator::Id("useKey")).await?.click().await?;
    eventually(WAIT, "the create form shows", || async {
        match browser.find(Locator::Id("createForm")).await {
            Ok(form) => form.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
    assert_eq!(text_at(&browser, "#links").await, "No links yet.");

    // A link with a custom code and a visit limit, made through the form.
    let create = |code: &'static str| {
        let browser = browser.clone();
        async move {
            for (id, value) in [
                ("url", "https://example.com/from-home"),
                ("code", code),
                ("title", "Made at home"),
                ("maxVisits", "5"),
            ] {
                let input = browser.find(Locator::Id(id)).await?;
                input.clear().await?;
                input.send_keys(value).await?;
            }
            browser.find(Locator::Id("create")).await?.click().await?;
            Ok::<_, fantoccini::error::CmdError>(())
        }
    };
    create("homey").await?;
    let count = r#"li[data-code="homey"] .count"#;
    eventually(WAIT, "the new link is listed with 0 clicks", || async {
        text_at(&browser, count).await == "0"
    })
    .await;
    let item = text_at(&browser, r#"li[data-code="homey"]"#).await;
    for shown in [
        "/homey",
        "https://example.com/from-home",
        "Made at home",
        "limit 5 visits",
    ] {
        assert!(item.contains(shown), "{shown} in {item}");
    }
    let link = app.read("homey").await;
    assert_eq!(link["url"], "https://example.com/from-home");
    assert_eq!(link["maxVisits"], 5);
    let href = browser
        .find(Locator::Css(r#"li[data-code="homey"] a.short"#))
        .await?
        .attr("href")
        .await?;
    assert_eq!(href.as_deref(), Some(app.url("/homey").as_str()));

    // Clicks from elsewhere move the count in the list.
    for _ in 0..2 {
        assert_eq!(app.click("homey").await.status(), 302);
    }
    eventually(WAIT, "the list shows 2 clicks", || async {
        text_at(&browser, count).await == "2"
    })
    .await;
    let shot = browser.screenshot().await?;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("home-page.png");
    std::fs::write(&path, shot)?;
    eprintln!("home page screenshot: {}", path.display());

    // An API error reaches the status line: the code is taken now.
    create("homey").await?;
    eventually(WAIT, "the status line says the code is taken", || async {
        text_at(&browser, "#status").await.contains("already taken")
    })
    .await;
    assert!(
        holds(
            &browser,
            "return document.getElementById('status').dataset.kind === 'error';"
        )
        .await
    );
    assert_eq!(
        browser.find_all(Locator::Css(".link")).await?.len(),
        1,
        "no second row"
    );

    // The key stays in the browser: a reload lists the link without asking again.
    browser.refresh().await?;
    eventually(WAIT, "the reloaded page lists the link", || async {
        text_at(&browser, count).await == "2"
    })
    .await;

    // Edit the target inline.
    browser
        .find(Locator::Css(r#"li[data-code="homey"] button.edit"#))
        .await?
        .click()
        .await?;
    let url = browser
        .find(Locator::Css(r#"li[data-code="homey"] .edit-url"#))
        .await?;
    url.clear().await?;
    url.send_keys("https://example.org/edited").await?;
    browser
        .find(Locator::Css(r#"li[data-code="homey"] button.save"#))
        .await?
        .click()
        .await?;
    eventually(WAIT, "the list shows the new target", || async {
        text_at(&browser, r#"li[data-code="homey"] .target"#).await
            == "→ https://example.org/edited"
    })
    .await;
    let link = app.read("homey").await;
    assert_eq!(link["url"], "https://example.org/edited");
    assert_eq!(link["title"], "Made at home", "the title stayed");
    assert_eq!(link["maxVisits"], 5, "the limit stayed");
    assert_eq!(
        app.click("homey").await.headers()["location"],
        "https://example.org/edited"
    );

    // The QR dialog shows the SVG the API made.
    browser
        .find(Locator::Css(r#"li[data-code="homey"] button.qr"#))
        .await?
        .click()
        .await?;
    eventually(WAIT, "the QR dialog shows an image", || async {
        holds(
            &browser,
            "const img = document.getElementById('qrImage');
             return document.getElementById('qrDialog').open && img.src.startsWith('blob:')
                 && img.complete && img.naturalWidth === 256;",
        )
        .await
    })
    .await;
    let image = browser.find(Locator::Id("qrImage")).await?;
    assert_eq!(
        image.attr("data-type").await?.as_deref(),
        Some("image/svg+xml")
    );
    assert_eq!(
        image.attr("alt").await?,
        Some(format!("QR code of {}", app.url("/homey")))
    );
    browser.find(Locator::Id("qrClose")).await?.click().await?;

    // Delete, accepting the confirmation.
    browser
        .find(Locator::Css(r#"li[data-code="homey"] button.delete"#))
        .await?
        .click()
        .await?;
    eventually(WAIT, "the confirmation is accepted", || async {
        browser.accept_alert().await.is_ok()
    })
    .await;
    eventually(WAIT, "the link is gone from the list", || async {
        text_at(&browser, "#links").await == "No links yet."
    })
    .await;
    assert!(
        text_at(&browser, "#status")
            .await
            .contains("Deleted /homey")
    );
    assert_eq!(app.click("homey").await.status(), 404);

    // At a phone's width nothing sticks out sideways.
    create("narrow").await?;
    browser.set_window_size(375, 812).await?;
    eventually(WAIT, "the narrow page lists the link", || async {
        text_at(&browser, r#"li[data-code="narrow"] .count"#).await == "0"
    })
    .await;
    assert!(
        holds(
            &browser,
            "return document.documentElement.scrollWidth <= window.innerWidth;"
        )
        .await,
        "no horizontal scrolling at 375px"
    );
    browser
        .execute("document.getElementById('links').scrollIntoView();", vec![])
        .await?;
    let shot = browser.screenshot().await?;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("home-page-narrow.png");
    std::fs::write(&path, shot)?;
    browser.close().await?;
    app.stop().await;
    Ok(())
}

/// A person signs in on the home page with an email and a password (no key pasted), makes a
/// link whose count moves with clicks from elsewhere, stays signed in after a reload, and
/// signs out; the page fits a phone's width.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_on_the_home_page_and_signs_out() -> TestResult {
    let Some(session) = start_browser().await? else {
        return Ok(());
    };
    let browser = session.client.clone();
    browser.set_window_size(1280, 1000).await?;
    let app = spawn_app().await;
    let (ok, _, err) = crate::accounts::users(
        app.dir.path(),
        &[
            "create",
            "--email",
            "ada@example.test",
            "--role",
            "member",
            "--password-stdin",
        ],
        "correct horse battery\n",
    );
    assert!(ok, "{err}");
    browser.goto(&app.url("/")).await?;
    for (id, value) in [
        ("email", "ada@example.test"),
        ("password", "wrong password"),
    ] {
        browser
            .find(Locator::Id(id))
            .await?
            .send_keys(value)
            .await?;
    }
    browser.find(Locator::Id("signIn")).await?.click().await?;
    eventually(
        WAIT,
        "the status line says the password is wrong",
        || async {
            text_at(&browser, "#status")
                .await
                .contains("wrong email or password")
        },
    )
    .await;
    let password = browser.find(Locator::Id("password")).await?;
    password.clear().await?;
    password.send_keys("correct horse battery").await?;
    browser.find(Locator::Id("signIn")).await?.click().await?;
    eventually(WAIT, "signed in", || async {
        text_at(&browser, "#who").await == "Signed in as ada@example.test (member)."
    })
    .await;
    for (id, value) in [("url", "https://example.com/ada"), ("code", "ada")] {
        browser
            .find(Locator::Id(id))
            .await?
            .send_keys(value)
            .await?;
    }
    browser.find(Locator::Id("create")).await?.click().await?;
    let count = r#"li[data-code="ada"] .count"#;
    eventually(WAIT, "the new link is listed", || async {
        text_at(&browser, count).await == "0"
    })
    .await;
    assert_eq!(app.click("ada").await.status(), 302);
    eventually(WAIT, "the count moves", || async {
        text_at(&browser, count).await == "1"
    })
    .await;

    // A reload keeps the session (the cookie), at a phone's width too.
    browser.set_window_size(375, 812).await?;
    browser.refresh().await?;
    eventually(WAIT, "still signed in after a reload", || async {
        text_at(&browser, count).await == "1"
    })
    .await;
    assert!(
        holds(
            &browser,
            "return document.documentElement.scrollWidth <= window.innerWidth;"
        )
        .await,
        "no horizontal scrolling at 375px"
    );
    let shot = browser.screenshot().await?;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("home-signed-in-narrow.png");
    std::fs::write(&path, shot)?;
    eprintln!("signed-in home page screenshot: {}", path.display());

    browser.find(Locator::Id("signOut")).await?.click().await?;
    eventually(WAIT, "the sign-in form is back", || async {
        match browser.find(Locator::Id("signInForm")).await {
            Ok(form) => form.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
    assert!(text_at(&browser, "#links").await.is_empty());
    let res = app.client.get(app.url("/api/session")).send().await?;
    assert_eq!(res.status(), 401);
    browser.close().await?;
    app.stop().await;
    Ok(())
}

/// A person invited by a link signs up on its page and lands on the home page signed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_person_signs_up_from_the_link() -> TestResult {
    let Some(session) = start_browser().await? else {
        return Ok(());
    };
    let browser = session.client.clone();
    browser.set_window_size(375, 812).await?;
    let app = spawn_app().await;
    let res = app
        .client
        .post(app.url("/api/invitations"))
        .bearer_auth(KEY)
        .json(&json!({"email": "new@example.test", "role": "member"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    let made: serde_json::Value = res.json().await?;
    let url = made["url"].as_str().ok_or("a url")?.to_owned();
    browser.goto(&url).await?;
    eventually(WAIT, "the page shows the invitation", || async {
        text_at(&browser, "#offer")
            .await
            .starts_with("You are invited as member")
    })
    .await;
    let email = browser.find(Locator::Id("email")).await?;
    assert_eq!(
        email.prop("value").await?.as_deref(),
        Some("new@example.test")
    );
    assert!(
        holds(
            &browser,
            "return document.documentElement.scrollWidth <= window.innerWidth;"
        )
        .await,
        "no horizontal scrolling at 375px"
    );
    let shot = browser.screenshot().await?;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("signup-narrow.png");
    std::fs::write(&path, shot)?;
    browser
        .find(Locator::Id("password"))
        .await?
        .send_keys("a new member's password")
        .await?;
    browser.find(Locator::Id("signUp")).await?.click().await?;
    eventually(WAIT, "the home page, signed in", || async {
        text_at(&browser, "#who").await == "Signed in as new@example.test (member)."
    })
    .await;
    // The link is used: opened again, it says so.
    browser.goto(&url).await?;
    eventually(WAIT, "the used link says so", || async {
        text_at(&browser, "#offer").await.contains("used already")
    })
    .await;
    browser.close().await?;
    app.stop().await;
    Ok(())
}

/// Signs `email` in through the home page's form.
async fn sign_in_on_home(
    browser: &fantoccini::Client,
    app: &crate::support::TestApp,
    email: &str,
    password: &str,
) -> TestResult {
    browser.goto(&app.url("/")).await?;
    for (id, value) in [("email", email), ("password", password)] {
        browser
            .find(Locator::Id(id))
            .await?
            .send_keys(value)
            .await?;
    }
    browser.find(Locator::Id("signIn")).await?.click().await?;
    let who = format!("Signed in as {email}");
    eventually(WAIT, "signed in", || async {
        text_at(browser, "#who").await.starts_with(&who)
    })
    .await;
    Ok(())
}

async fn shot(browser: &fantoccini::Client, name: &str) -> TestResult {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, browser.screenshot().await?)?;
    eprintln!("screenshot: {}", path.display());
    Ok(())
}

const NO_OVERFLOW: &str = "return document.documentElement.scrollWidth <= window.innerWidth;";

/// The signed-in home page: counts, sparklines and the last hour's totals move as clicks
/// land, in two tabs at once, over one feed (no polling), and again after a restart of the
/// server without a reload; links made and deleted elsewhere come and go. A viewer sees no
/// way to change anything and the server refuses them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_page_counts_live_in_two_tabs_and_after_a_restart() -> TestResult {
    let Some(session) = start_browser().await? else {
        return Ok(());
    };
    let browser = session.client.clone();
    browser.set_window_size(1280, 1000).await?;
    let app = spawn_app().await;
    let addr = app.addr;
    crate::accounts::make_person(app.dir.path(), "own@example.test", "owner");
    crate::accounts::make_person(app.dir.path(), "view@example.test", "viewer");
    app.create_link("live").await;
    sign_in_on_home(&browser, &app, "own@example.test", "a long enough password").await?;
    let live = || async {
        text_at(&browser, "#liveState").await == "live"
            && holds(
                &browser,
                r#"return !!document.querySelector('li[data-code="live"] .spark polyline');"#,
            )
            .await
    };
    eventually(WAIT, "the first tab is live", live).await;
    let first = browser.window().await?;
    let second = browser.new_window(true).await?.handle;
    browser.switch_to_window(second.clone()).await?;
    browser.goto(&app.url("/")).await?;
    eventually(
        WAIT,
        "the second tab is live, signed in by the cookie",
        live,
    )
    .await;

    let count = r#"li[data-code="live"] .count"#;
    let listed = "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/links?')).length;";
    let before = browser.execute(listed, vec![]).await?;
    for _ in 0..5 {
        assert_eq!(app.click("live").await.status(), 302);
    }
    for tab in [&second, &first] {
        browser.switch_to_window(tab.clone()).await?;
        eventually(WAIT, "the count moves to 5", || async {
            text_at(&browser, count).await == "5"
        })
        .await;
    }
    eventually(WAIT, "the sparkline and the hour's totals hold the 5 clicks", || async {
        text_at(&browser, "#totalClicks").await == "5"
            && text_at(&browser, "#topLinks li").await == "/live · 5"
            && holds(&browser, r#"return document.querySelector('li[data-code="live"] .spark').getAttribute('aria-label') === '5 clicks in the last hour';"#).await
    })
    .await;
    // Counts came over the feed: no listing was asked for since (a poll asks every 2 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        browser.execute(listed, vec![]).await?,
        before,
        "the page polled the list"
    );

    // A link made and one deleted elsewhere show without a reload.
    app.create_link("fresh").await;
    eventually(WAIT, "the new link appears", || async {
        holds(
            &browser,
            r#"return !!document.querySelector('li[data-code="fresh"]');"#,
        )
        .await
    })
    .await;
    let res = app
        .client
        .delete(app.url("/api/links/fresh"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(res.status(), 204);
    eventually(WAIT, "the deleted link goes", || async {
        holds(
            &browser,
            r#"return !document.querySelector('li[data-code="fresh"]');"#,
        )
        .await
    })
    .await;
    shot(&browser, "home-live-wide.png").await?;

    // The server restarts on the same address: the page comes back by itself.
    let dir = app.stop().await;
    let app = spawn_with(Some(dir), |c| c.listen = addr).await;
    for _ in 0..3 {
        assert_eq!(app.click("live").await.status(), 302);
    }
    for tab in [&first, &second] {
        browser.switch_to_window(tab.clone()).await?;
        eventually(WAIT, "the count moves to 8 after the restart", || async {
            text_at(&browser, count).await == "8" && text_at(&browser, "#liveState").await == "live"
        })
        .await;
    }
    browser.set_window_size(375, 812).await?;
    assert!(
        holds(&browser, NO_OVERFLOW).await,
        "no horizontal scrolling at 375px"
    );
    shot(&browser, "home-live-narrow.png").await?;

    // The audit log's page, for the owner, at both widths.
    browser.goto(&app.url("/admin/audit")).await?;
    eventually(WAIT, "the audit page lists the changes", || async {
        text_at(&browser, "#entries li .what").await == "link.deleted fresh"
    })
    .await;
    assert!(
        holds(&browser, NO_OVERFLOW).await,
        "no horizontal scrolling at 375px"
    );
    shot(&browser, "audit-narrow.png").await?;
    browser.set_window_size(1280, 1000).await?;
    assert!(
        holds(&browser, NO_OVERFLOW).await,
        "no horizontal scrolling at 1280px"
    );
    shot(&browser, "audit-wide.png").await?;

    // A viewer: no creating, editing or deleting offered, and a delete sent anyway is refused.
    browser.goto(&app.url("/")).await?;
    browser.find(Locator::Id("signOut")).await?.click().await?;
    eventually(WAIT, "signed out", || async {
        text_at(&browser, "#who").await.is_empty() || text_at(&browser, "#links").await.is_empty()
    })
    .await;
    sign_in_on_home(
        &browser,
        &app,
        "view@example.test",
        "a long enough password",
    )
    .await?;
    eventually(WAIT, "the viewer sees the link", || async {
        text_at(&browser, count).await == "8"
    })
    .await;
    assert!(holds(&browser, r#"return !document.querySelector('li[data-code="live"] .delete') && !document.querySelector('li[data-code="live"] .edit') && document.getElementById('createSection').hidden;"#).await);
    let status = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/links/live?domain=' + encodeURIComponent(location.hostname), {method: 'DELETE'})
               .then(r => done(r.status), e => done(String(e)));",
            vec![],
        )
        .await?;
    assert_eq!(status, json!(403));
    assert_eq!(app.count("live").await, 8);
    browser.close().await?;
    app.stop().await;
    Ok(())
}

/// Signing in with the OpenID provider from the home page, as an invited person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_person_signs_in_with_the_openid_provider_in_the_browser() -> TestResult {
    let Some(session) = start_browser().await? else {
        return Ok(());
    };
    let browser = session.client.clone();
    browser.set_window_size(375, 812).await?;
    let (app, _provider) = crate::workspaces::app_with_provider().await;
    let res = app
        .client
        .post(app.url("/api/invitations"))
        .bearer_auth(KEY)
        .json(&json!({"email": "dee@example.test", "role": "admin"}))
        .send()
        .await?;
    assert_eq!(res.status(), 201);
    browser.goto(&app.url("/")).await?;
    eventually(WAIT, "the provider's button shows", || async {
        match browser.find(Locator::Id("oidcSignIn")).await {
            Ok(button) => button.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    })
    .await;
    assert!(
        holds(&browser, NO_OVERFLOW).await,
        "no horizontal scrolling at 375px"
    );
    shot(&browser, "home-signed-out-narrow.png").await?;
    browser
        .find(Locator::Id("oidcSignIn"))
        .await?
        .click()
        .await?;
    let login = browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css("input[name=login]"))
        .await?;
    login.send_keys("dee@example.test").await?;
    browser
        .find(Locator::Css("form [type=submit], form button"))
        .await?
        .click()
        .await?;
    eventually(WAIT, "back home, signed in", || async {
        text_at(&browser, "#who").await == "Signed in as dee@example.test (admin)."
    })
    .await;
    browser.close().await?;
    app.stop().await;
    Ok(())
}

/// The first owner signs up from the link the first start printed, makes a link, invites a
/// viewer from the home page; the viewer signs up from that link, sees the link and cannot
/// delete it. The real binary, as an operator starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_owner_signs_up_and_invites_a_viewer_who_cannot_delete() -> TestResult {
    use crate::first_key::{first_signup_link, lines, listening, spawn, terminate};
    let Some(session) = start_browser().await? else {
        return Ok(());
    };
    let browser = session.client.clone();
    browser.set_window_size(1280, 1000).await?;
    let dir = tempfile::tempdir()?;
    let mut server = spawn(dir.path(), "127.0.0.1:0")?;
    let stdout = lines(server.stdout.take().ok_or("no stdout")?);
    let stderr = lines(server.stderr.take().ok_or("no stderr")?);
    let link = first_signup_link(&stdout)?;
    let base = format!("http://{}", listening(&stderr)?);

    let sign_up = |email: Option<&'static str>, password: &'static str| {
        let browser = browser.clone();
        async move {
            eventually(WAIT, "the sign-up form", || async {
                match browser.find(Locator::Id("signUpForm")).await {
                    Ok(form) => form.is_displayed().await.unwrap_or(false),
                    Err(_) => false,
                }
            })
            .await;
            if let Some(email) = email {
                browser
                    .find(Locator::Id("email"))
                    .await?
                    .send_keys(email)
                    .await?;
            }
            browser
                .find(Locator::Id("password"))
                .await?
                .send_keys(password)
                .await?;
            browser.find(Locator::Id("signUp")).await?.click().await?;
            Ok::<_, fantoccini::error::CmdError>(())
        }
    };
    browser.goto(&link).await?;
    sign_up(Some("owner@example.test"), "the owner's password").await?;
    eventually(WAIT, "the owner is signed in", || async {
        text_at(&browser, "#who").await == "Signed in as owner@example.test (owner)."
    })
    .await;
    for (id, value) in [("url", "https://example.com/team"), ("code", "team")] {
        browser
            .find(Locator::Id(id))
            .await?
            .send_keys(value)
            .await?;
    }
    browser.find(Locator::Id("create")).await?.click().await?;
    eventually(WAIT, "the link is listed", || async {
        holds(
            &browser,
            r#"return !!document.querySelector('li[data-code="team"]');"#,
        )
        .await
    })
    .await;

    // The owner invites a viewer from the page and copies the link.
    browser
        .find(Locator::Id("inviteEmail"))
        .await?
        .send_keys("viewer@example.test")
        .await?;
    browser
        .find(Locator::Css("#inviteRole option[value=viewer]"))
        .await?
        .click()
        .await?;
    browser.find(Locator::Id("invite")).await?.click().await?;
    let invite_url = browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Id("inviteUrl"))
        .await?;
    eventually(WAIT, "the invitation's link shows", || async {
        invite_url
            .prop("value")
            .await
            .ok()
            .flatten()
            .is_some_and(|v| v.contains("invite="))
    })
    .await;
    let invitation = invite_url.prop("value").await?.ok_or("a link")?;
    assert!(
        invitation.starts_with(&format!("{base}/auth/signup?invite=")),
        "{invitation}"
    );
    browser.set_window_size(375, 812).await?;
    assert!(
        holds(&browser, NO_OVERFLOW).await,
        "no horizontal scrolling at 375px"
    );
    shot(&browser, "home-invite-narrow.png").await?;
    browser.find(Locator::Id("signOut")).await?.click().await?;
    eventually(WAIT, "signed out", || async {
        text_at(&browser, "#keyHeading").await == "Sign in"
    })
    .await;

    // The viewer signs up from it: sees the link, is offered no change, and is refused one.
    browser.goto(&invitation).await?;
    sign_up(None, "the viewer's password").await?;
    eventually(
        WAIT,
        "the viewer is signed in and sees the link",
        || async {
            text_at(&browser, "#who").await == "Signed in as viewer@example.test (viewer)."
                && holds(
                    &browser,
                    r#"return !!document.querySelector('li[data-code="team"]');"#,
                )
                .await
        },
    )
    .await;
    assert!(
        holds(
            &browser,
            r#"return !document.querySelector('li[data-code="team"] .delete') && document.getElementById('createSection').hidden && document.getElementById('peopleSection').hidden;"#
        )
        .await
    );
    let status = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/links/team', {method: 'DELETE'}).then(r => done(r.status), e => done(String(e)));",
            vec![],
        )
        .await?;
    assert_eq!(status, json!(403));
    let res = client().get(format!("{base}/team")).send().await?;
    assert_eq!(res.status(), 302, "the link is still there");
    browser.close().await?;
    terminate(&mut server)?;
    Ok(())
}
