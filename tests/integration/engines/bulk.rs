//! Many links in one request on both engines: a bulk creation (one job of the writer) answers
//! each item, a taken code included; bulk changes and deletions; an import's links keep their
//! `importedClickCount` across a restart.

use serde_json::{Value, json};

use super::{Engine, spawn_on};
use crate::support::{KEY, TestResult};

pub(super) async fn bulk_creations_changes_and_imports_answer_per_link_and_last(
    engine: Engine,
) -> TestResult {
    let app = spawn_on(engine, |_| {}).await;
    app.create_link("held").await;
    let mut links: Vec<Value> = (0..50)
        .map(|i| json!({"url": format!("https://example.com/{i}"), "code": format!("e-{i}"), "tags": ["batch"]}))
        .collect();
    links[5] = json!({"url": "https://example.com/5", "code": "held"});
    links[6] = json!({"url": "https://example.com/6", "code": "e-7"});
    links[9] = json!({"url": "https://example.com/9"});
    let send = |method: reqwest::Method, path: &str, body: Value| {
        app.client
            .request(method, app.url(path))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };
    let body: Value = send(
        reqwest::Method::POST,
        "/api/links/bulk",
        json!({ "links": links }),
    )
    .await?
    .json()
    .await?;
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .map(|r| r.iter().filter_map(|i| i["status"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(statuses.len(), 50);
    assert_eq!(
        (statuses[5], statuses[6], statuses[7]),
        (409, 201, 409),
        "{body}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 48);
    let generated = body["results"][9]["link"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for code in ["e-0", "e-7", "e-49", generated.as_str()] {
        assert_eq!(app.click(code).await.status(), 302, "{code}");
    }
    let body: Value = send(
        reqwest::Method::PATCH,
        "/api/links/bulk",
        json!({"tag": "batch", "set": {"title": "Batch"}}),
    )
    .await?
    .json()
    .await?;
    // 48 made, less the two sent without tags.
    assert_eq!(body["results"].as_array().map(Vec::len), Some(46));
    let body: Value = send(
        reqwest::Method::DELETE,
        "/api/links/bulk",
        json!({"codes": ["e-0", "e-1", "gone"]}),
    )
    .await?
    .json()
    .await?;
    assert_eq!(
        body["results"],
        json!([
            {"code": "e-0", "status": 204},
            {"code": "e-1", "status": 204},
            {"code": "gone", "status": 404, "error": "no such link"},
        ])
    );
    let shlink = std::fs::read(format!(
        "{}/tests/fixtures/imports/shlink.csv",
        env!("CARGO_MANIFEST_DIR")
    ))?;
    let report: Value = app
        .client
        .post(app.url("/api/import?format=shlink"))
        .bearer_auth(KEY)
        .body(shlink)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(report["created"], 3, "{report}");

    let app = app.restart().await;
    assert_eq!(app.read("e-49").await["title"], "Batch");
    assert_eq!(app.read("e-7").await["url"], "https://example.com/6");
    assert_eq!(app.click("e-0").await.status(), 404);
    let xmas = app.read("xmas").await;
    assert_eq!(xmas["importedClickCount"], 9001);
    assert_eq!(xmas["clickCount"], 0);
    assert_eq!(xmas["tags"], json!(["seasonal", "de"]));
    app.stop().await;
    Ok(())
}
