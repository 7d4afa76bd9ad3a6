//! Creating and reading links, and every way a create can be refused.

use serde_json::{Value, json};

use crate::support::{KEY, TestResult, json_error, spawn_app};

#[tokio::test]
async fn generated_codes_are_seven_base62_characters() -> TestResult {
    let app = spawn_app().await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let res = app.create(json!({"url": "https://example.com/"})).await;
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await?;
        let code = body["code"].as_str().unwrap_or_default().to_owned();
        assert_eq!(code.len(), 7, "{code}");
        assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()), "{code}");
        assert_eq!(app.click(&code).await.status(), 302);
        assert!(seen.insert(code), "codes are not reused");
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_create_error_has_its_status_and_a_json_message() -> TestResult {
    let app = spawn_app().await;
    let url = app.url("/api/links");
    let body = json!({"url": "https://example.com/"});

    let res = app.client.post(&url).json(&body).send().await?;
    let (status, msg) = json_error(res).await;
    assert_eq!((status, msg.contains("Authorization")), (401, true));

    let res = app
        .client
        .post(&url)
        .bearer_auth("lp_wrong")
        .json(&body)
        .send()
        .await?;
    assert_eq!(json_error(res).await, (401, "invalid API key".to_owned()));

    let res = app
        .client
        .post(&url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    let (status, msg) = json_error(res).await;
    assert_eq!((status, msg.starts_with("invalid JSON body")), (400, true));

    let res = app
        .client
        .post(&url)
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(r#"{"code": "x"}"#)
        .send()
        .await?;
    let (status, msg) = json_error(res).await;
    assert_eq!((status, msg.contains("url")), (400, true), "{msg}");

    for (bad_url, needle) in [
        ("javascript:alert(1)", "scheme"),
        ("ftp://example.com/", "scheme"),
        ("/relative", "absolute"),
        ("https://example.com/\r\nX-Evil: 1", "control"),
    ] {
        let (status, msg) = json_error(app.create(json!({"url": bad_url})).await).await;
        assert_eq!(status, 400, "{bad_url}");
        assert!(msg.contains(needle), "{bad_url}: {msg}");
    }
    let long = format!("https://example.com/{}", "a".repeat(8 * 1024));
    let (status, msg) = json_error(app.create(json!({"url": long})).await).await;
    assert_eq!((status, msg.contains("8192")), (400, true), "{msg}");

    for bad_code in [
        "a.b",
        "a/b",
        "..",
        "%41",
        "é",
        "api",
        "realtime",
        &"c".repeat(65),
    ] {
        let res = app
            .create(json!({"url": "https://example.com/", "code": bad_code}))
            .await;
        let (status, msg) = json_error(res).await;
        assert_eq!(status, 400, "{bad_code}: {msg}");
        assert!(msg.starts_with("code"), "{bad_code}: {msg}");
    }

    app.create_link("taken").await;
    let res = app
        .create(json!({"url": "https://example.org/", "code": "taken"}))
        .await;
    assert_eq!(
        json_error(res).await,
        (409, "code 'taken' is already taken".to_owned())
    );
    assert_eq!(
        app.read("taken").await["url"],
        "https://example.com/target",
        "unchanged"
    );

    let huge = json!({"url": "https://example.com/", "pad": "x".repeat(70 * 1024)});
    let (status, _) = json_error(app.create(huge).await).await;
    assert_eq!(status, 413);

    let res = app
        .client
        .post(&url)
        .bearer_auth(KEY)
        .header("content-type", "text/plain")
        .body(r#"{"url": "https://example.com/"}"#)
        .send()
        .await?;
    assert_eq!(json_error(res).await.0, 415);
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn reading_needs_a_key_and_unknown_links_are_404() -> TestResult {
    let app = spawn_app().await;
    app.create_link("mine").await;
    let res = app.client.get(app.url("/api/links/mine")).send().await?;
    assert_eq!(json_error(res).await.0, 401);
    for code in ["nothere", "bad.code"] {
        let res = app
            .client
            .get(app.url(&format!("/api/links/{code}")))
            .bearer_auth(KEY)
            .send()
            .await?;
        assert_eq!(json_error(res).await, (404, "no such link".to_owned()));
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn health_answers_while_serving() -> TestResult {
    let app = spawn_app().await;
    let res = app.client.get(app.url("/healthz")).send().await?;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await?;
    assert_eq!(body["status"], "ok");
    app.stop().await;
    Ok(())
}
