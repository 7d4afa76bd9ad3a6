//! `GET /api/links/{code}/qr`: a PNG that a QR reader decodes back to the short URL, an SVG of
//! the size asked, and the API's errors (bad parameters, no key, another owner's link).

use crate::support::{KEY, TestResult, json_error, spawn_app, spawn_with};

/// The text a QR reader finds in a PNG.
pub(crate) fn decode_png(bytes: &[u8]) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let image = image::load_from_memory(bytes)?.to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the image");
    let (_, text) = grids[0].decode()?;
    Ok(text)
}

#[tokio::test]
async fn the_png_decodes_to_the_short_url_at_every_size() -> TestResult {
    let app = spawn_app().await;
    let short_url = app.create_link("qrme").await["shortUrl"]
        .as_str()
        .ok_or("shortUrl")?
        .to_owned();
    assert_eq!(short_url, app.url("/qrme"));
    for (query, side) in [
        ("format=png", 256),
        ("format=png&size=64", 64),
        ("format=png&size=1000", 1000),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/api/links/qrme/qr?{query}")))
            .bearer_auth(KEY)
            .send()
            .await?;
        assert_eq!(res.status(), 200, "{query}");
        assert_eq!(res.headers()["content-type"], "image/png");
        assert_eq!(res.headers()["cache-control"], "private, max-age=300");
        let bytes = res.bytes().await?;
        let image = image::load_from_memory(&bytes)?;
        assert_eq!((image.width(), image.height()), (side, side), "{query}");
        assert_eq!(decode_png(&bytes)?, short_url, "{query}");
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_svg_is_the_default_and_has_the_size() -> TestResult {
    let app = spawn_app().await;
    app.create_link("qrsvg").await;
    for (query, size) in [("", 256), ("?format=svg&size=512", 512)] {
        let res = app
            .client
            .get(app.url(&format!("/api/links/qrsvg/qr{query}")))
            .bearer_auth(KEY)
            .send()
            .await?;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "image/svg+xml");
        assert_eq!(res.headers()["cache-control"], "private, max-age=300");
        let text = res.text().await?;
        assert!(text.starts_with("<?xml"), "{text}");
        let svg = &text[text.find("<svg").ok_or("an <svg> element")?..];
        let head = &svg[..svg.find('>').ok_or("a closed tag")?];
        assert!(
            head.contains(&format!("width=\"{size}\""))
                && head.contains(&format!("height=\"{size}\"")),
            "{head}"
        );
        assert!(svg.contains("<path") && svg.trim_end().ends_with("</svg>"));
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() -> TestResult {
    let app = spawn_app().await;
    app.create_link("qrbad").await;
    for (query, name) in [
        ("format=gif", "format"),
        ("format=", "format"),
        ("size=63", "size"),
        ("size=2049", "size"),
        ("size=big", "size"),
        ("format=png&size=-1", "size"),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/api/links/qrbad/qr?{query}")))
            .bearer_auth(KEY)
            .send()
            .await?;
        let (status, message) = json_error(res).await;
        assert_eq!(status, 400, "{query}");
        assert!(message.starts_with(name), "{query}: {message}");
    }
    app.stop().await;
    Ok(())
}

#[tokio::test]
async fn it_needs_a_key_and_hides_another_owners_link() -> TestResult {
    let dir = tempfile::tempdir()?;
    let other = "lp_other_owner_key_0123456789";
    {
        let store = linkpulse::store::Store::open(dir.path())?;
        linkpulse::keys::store_key(&store, other, "other", false)?;
    }
    let app = spawn_with(Some(dir), |_| {}).await;
    app.create_link("adminown").await;
    let url = app.url("/api/links/adminown/qr");
    let res = app.client.get(&url).send().await?;
    assert_eq!(json_error(res).await.0, 401);
    let res = app.client.get(&url).bearer_auth(other).send().await?;
    assert_eq!(json_error(res).await, (404, "no such link".to_owned()));
    let res = app
        .client
        .get(app.url("/api/links/nothere/qr"))
        .bearer_auth(KEY)
        .send()
        .await?;
    assert_eq!(json_error(res).await.0, 404);
    let res = app.client.post(&url).bearer_auth(KEY).send().await?;
    assert_eq!(json_error(res).await.0, 405);
    app.stop().await;
    Ok(())
}
