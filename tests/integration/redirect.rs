//! Following short links: the redirect, HEAD, unknown codes, and exact counting under
//! concurrency.

use std::sync::Arc;

use crate::support::{TestResult, soak, spawn_app, stored};

#[tokio::test]
async fn head_redirects_without_counting() -> TestResult {
    let app = spawn_app().await;
    app.create_link("peek").await;
    let res = app.client.head(app.url("/peek")).send().await?;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/target");
    assert_eq!(app.count("peek").await, 0);
    assert_eq!(app.click("peek").await.status(), 302);
    assert_eq!(app.count("peek").await, 1);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn unknown_codes_get_an_html_404() -> TestResult {
    let app = spawn_app().await;
    // (`/%2e%2e` is sent by reqwest as `/`, the home page; `browser.rs` sends it raw.)
    for path in ["/nothing", "/bad.code", "/api"] {
        let res = app.client.get(app.url(path)).send().await?;
        assert_eq!(res.status(), 404, "{path}");
        let content_type = res.headers()["content-type"].to_str()?.to_owned();
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        assert!(res.text().await?.contains("Link not found"), "{path}");
    }
    app.stop().await;
    Ok(())
}

/// 64 clients race on one code, 500 redirects each with `LINKPULSE_SOAK=1` (50 in a plain
/// `cargo test`): every answer is a 302 and not one click is lost, neither in the live count
/// nor on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_concurrent_redirects_to_one_code_are_counted_exactly() -> TestResult {
    const CLIENTS: usize = 64;
    let each = soak(500, 50);
    let app = spawn_app().await;
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
    let dir = app.stop().await;
    assert_eq!(
        stored(dir.path(), "hot"),
        (total, total),
        "stored count and click events"
    );
    Ok(())
}

/// A code looked up before it exists (and remembered as missing) works as soon as it is
/// created: the cache of unknown codes never hides a new link.
#[tokio::test]
async fn a_code_missed_before_it_was_created_redirects_after() -> TestResult {
    let app = spawn_app().await;
    for path in ["/later", "/realtime/later", "/links/later"] {
        assert_eq!(
            app.client.get(app.url(path)).send().await?.status(),
            404,
            "{path}"
        );
    }
    app.create_link("later").await;
    let res = app.click("later").await;
    assert_eq!(res.status(), 302);
    assert_eq!(app.count("later").await, 1);
    assert_eq!(app.subscribe("later").await.status, 200);
    app.stop().await;
    Ok(())
}
