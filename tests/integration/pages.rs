//! The stats page is made from a template checked at compile time: what a link holds is shown
//! as text, escaped, and never read as template.

use serde_json::json;

use crate::support::{KEY, TestResult, eventually, spawn_app};

#[tokio::test]
async fn a_target_that_looks_like_template_or_markup_is_shown_literally() -> TestResult {
    let app = spawn_app().await;
    // `{` survives URL normalisation in the query and fragment; `<`, `>` and `"` are
    // percent-encoded by it, and `&` must be escaped in HTML.
    let raw = "https://example.com/<script>alert(1)</script>?q={{count}}&c={{code}}\
               &t={{target}}&s={%if%}x{%endif%}#{{short_url}}";
    let res = app.create(json!({"url": raw, "code": "tpl"})).await;
    assert_eq!(res.status(), 201);
    let stored = res.json::<serde_json::Value>().await?["url"]
        .as_str()
        .ok_or("no url")?
        .to_owned();
    assert!(stored.contains("%3Cscript%3E"), "{stored}");
    for _ in 0..3 {
        assert_eq!(app.click("tpl").await.status(), 302);
    }
    eventually(crate::wire::WAIT, "three clicks counted", || async {
        app.count("tpl").await == 3
    })
    .await;

    let html = app
        .client
        .get(app.url("/links/tpl"))
        .send()
        .await?
        .text()
        .await?;
    // The count is where the page puts it, and nowhere in the target.
    assert!(
        html.contains(r#"<div class="count" id="clickCount">3</div>"#),
        "{html}"
    );
    // The target, escaped as HTML, in the link and as its text: its `{{...}}` and `{%...%}`
    // are shown as they are.
    let escaped = stored.replace('&', "&#38;");
    assert!(
        html.contains(&format!(
            r#"<a id="target" href="{escaped}" rel="noopener noreferrer">{escaped}</a>"#
        )),
        "{html}"
    );
    for literal in [
        "{{count}}",
        "{{code}}",
        "{{target}}",
        "{%if%}",
        "{{short_url}}",
    ] {
        assert_eq!(
            html.matches(literal).count(),
            2,
            "{literal} shown twice: {html}"
        );
    }
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("q={{count}}&c"), "an unescaped &: {html}");
    // Every element the page script and its users rely on is there.
    for id in [
        "stats",
        "shortUrl",
        "target",
        "clickCount",
        "status",
        "lastClick",
        "lastCreatedAt",
        "lastIp",
        "lastCountry",
        "lastUserAgent",
    ] {
        assert!(html.contains(&format!(r#"id="{id}""#)), "#{id} missing");
    }
    let res = app
        .client
        .get(app.url("/api/links/tpl"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(
        res.json::<serde_json::Value>().await?["url"],
        stored.as_str()
    );
    app.stop().await;
    Ok(())
}
