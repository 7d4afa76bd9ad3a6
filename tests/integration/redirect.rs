//! Following short links: the redirect, HEAD, and unknown codes (exact counting under
//! concurrency is in `engines::counting`, on both engines).

use crate::support::{TestResult, spawn_app};

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
