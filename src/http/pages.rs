//! HTML pages: the owner's home page, the stats page of a link, and the page for an unknown
//! code. The stats page is an askama template (`src/pages/stats.html`, checked at compile
//! time): every value is escaped and none is ever read as template. The home page is one static
//! file with its script and style inline; it fills itself from the JSON API.

use std::sync::{Arc, LazyLock};

use askama::Template;
use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use sha2::{Digest, Sha256};

use super::openapi::E503;
use super::{ApiError, AppState, code_param};
use salvo_oapi::endpoint;

const NOT_FOUND: &str = include_str!("../pages/not_found.html");

/// The owner's page (`src/pages/home.html`): one file, no build step.
const HOME: &str = include_str!("../pages/home.html");

/// The home page's policy: its one inline script and one inline style, allowed by their
/// SHA-256 hashes (no `'unsafe-inline'`), the API on this origin, and QR images as blob URLs.
static HOME_CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
         connect-src 'self'; img-src 'self' blob: data:; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
        inline_hash(HOME, "script"),
        inline_hash(HOME, "style")
    )
});

/// The policy of a page like the home page: its inline script and style by their hashes, the
/// API on this origin.
pub fn page_csp(html: &str) -> String {
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
         connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'",
        inline_hash(html, "script"),
        inline_hash(html, "style")
    )
}

/// The base64 SHA-256 of the text inside the page's first `<tag>` element, as CSP hashes it.
fn inline_hash(html: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let inner = html
        .split_once(&open)
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map_or("", |(inner, _)| inner);
    base64(&Sha256::digest(inner.as_bytes()))
}

/// Standard base64 with padding (CSP hash sources use it).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET /` and `HEAD /`: the owner's page. It holds no data, so it is the same for everyone.
pub struct Home(pub Arc<AppState>);

#[endpoint(
    tags("public"),
    summary = "The home page",
    description = "Paste a key, create, list (counts polled every 2 s), edit and delete links.",
    responses(
        (status_code = 200, description = "The page", content_type = "text/html", body = String),
    )
)]
impl Home {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        // On another domain `/` is that domain's `rootUrl` (the page stays on the default).
        if let Some(domain) = super::domain_of_host(&self.0, super::request_host(req)) {
            return match domain
                .root_url
                .as_deref()
                .and_then(|u| HeaderValue::from_str(u).ok())
            {
                Some(location) => {
                    res.status_code(StatusCode::FOUND);
                    res.headers_mut().insert(header::LOCATION, location);
                }
                None => not_found(res),
            };
        }
        let headers = res.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Ok(csp) = HeaderValue::from_str(&HOME_CSP) {
            headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        res.render(Text::Html(HOME));
    }
}

/// uPlot (MIT, `src/pages/vendor/uplot/LICENSE`), served from the binary: no CDN. Its version is
/// in the path, so browsers may keep it for good.
const UPLOT_JS: &[u8] = include_bytes!("../pages/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &[u8] = include_bytes!("../pages/vendor/uplot/uPlot.min.css");
pub const UPLOT_JS_PATH: &str = "/assets/uplot-1.6.32.min.js";
pub const UPLOT_CSS_PATH: &str = "/assets/uplot-1.6.32.min.css";

/// `GET /assets/{name}`: the files the pages load.
pub struct Asset;

/// A file the pages load (uPlot), cached for good
#[endpoint(
    tags("public"),
    parameters(("name" = String, Path, description = "The file's name, with its version")),
    responses(
        (status_code = 200, description = "The file", content(("text/javascript" = String), ("text/css" = String))),
        (status_code = 404, description = "No such file", content_type = "text/html", body = String),
    )
)]
impl Asset {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let path = req.uri().path();
        let (body, content_type) = if path == UPLOT_JS_PATH {
            (UPLOT_JS, "text/javascript; charset=utf-8")
        } else if path == UPLOT_CSS_PATH {
            (UPLOT_CSS, "text/css; charset=utf-8")
        } else {
            return not_found(res);
        };
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
        let _ = res.write_body(body);
    }
}

/// The stats page: what it shows when it opens, before the stream brings it up to date.
#[derive(Template)]
#[template(path = "stats.html")]
struct Stats<'a> {
    code: &'a str,
    /// The path of the page's stream.
    stream: String,
    short_url: String,
    /// Where the link leads, shown on a public page of a link without a password (a password
    /// protects the target: its page shows no part of it, host included).
    target: Option<&'a str>,
    /// The count when the page was made, or `…` when it could not be read.
    count: String,
    /// Whether the page shows more than the count (`publicStats`).
    public: bool,
    /// The short URL's QR code, an inline `<svg>` made here (empty if it cannot be made).
    qr: String,
    uplot_js: &'static str,
    uplot_css: &'static str,
}

/// A small HTML 404 for people who followed a bad link.
pub fn not_found(res: &mut Response) {
    res.status_code(StatusCode::NOT_FOUND);
    res.render(Text::Html(NOT_FOUND));
}

/// A small HTML 410 for a link past its expiry or visit limit (without an `expiredUrl`).
pub fn gone(res: &mut Response) {
    res.status_code(StatusCode::GONE);
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=0, no-store"),
    );
    res.render(Text::Html(GONE));
}

const GONE: &str = include_str!("../pages/gone.html");

/// The password form of a protected link (`wrong`: after a wrong password, with `401`).
#[derive(Template)]
#[template(path = "password.html")]
struct PasswordForm<'a> {
    code: &'a str,
    wrong: bool,
}

pub fn password_form(res: &mut Response, code: &str, wrong: bool) {
    res.status_code(if wrong {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    });
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=0, no-store"),
    );
    match (PasswordForm { code, wrong }).render() {
        Ok(html) => res.render(Text::Html(html)),
        Err(e) => {
            tracing::error!(cause = %e, "the password form could not be rendered");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").write(res);
        }
    }
}

/// Anything no route matched: JSON under `/api/` and `/realtime/`, the HTML page elsewhere.
pub struct Fallback;

#[async_trait]
impl Handler for Fallback {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let first = req.uri().path().split('/').find(|s| !s.is_empty());
        if matches!(first, Some("api" | "realtime")) {
            ApiError::not_found("no such API endpoint").write(res);
        } else {
            not_found(res);
        }
    }
}

/// `GET /links/{code}`: the page an `EventSource` keeps current. Public, like the original.
pub struct StatsPage(pub Arc<AppState>);

/// The stats page of a link, kept current by its stream
#[endpoint(
    tags("public"),
    parameters(("code" = String, Path, description = "The short code")),
    responses(
        (status_code = 200, description = "The page", content_type = "text/html", body = String),
        (status_code = 404, description = "No such link", content_type = "text/html", body = String),
        E503,
    )
)]
impl StatsPage {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        if let Err(e) = super::check_host(state, super::request_host(req)) {
            return e.write(res);
        }
        let domain = super::domain_of_host(state, super::request_host(req));
        let Some(code) = super::key_on(domain.as_deref(), code_param(req)) else {
            return not_found(res);
        };
        let link = match state.links.find(&code).await {
            Ok(Some(link)) => link,
            Ok(None) => return not_found(res),
            Err(e) => return ApiError::from(e).write(res),
        };
        // The page opens with the count it has and the stream brings it up to date.
        let count = match state.links.public_count(&link).await {
            Ok(count) => count.to_string(),
            Err(_) => "…".to_owned(),
        };
        let short_url = format!("{}/{}", state.base_of(&link), link.code.code());
        let page = Stats {
            code: link.code.code(),
            stream: format!("/realtime/{}", link.code.code()),
            short_url: short_url.clone(),
            target: (link.public_stats && link.password.is_none()).then(|| link.target.as_str()),
            count,
            public: link.public_stats,
            qr: super::qr::inline_svg(&short_url, 160).unwrap_or_default(),
            uplot_js: UPLOT_JS_PATH,
            uplot_css: UPLOT_CSS_PATH,
        };
        match page.render() {
            Ok(html) => res.render(Text::Html(html)),
            Err(e) => {
                // Cannot happen with these fields (rendering them does not fail); logged if it does.
                tracing::error!(cause = %e, "the stats page could not be rendered");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").write(res);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_base64_sha256_of_the_inline_text() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        // The SHA-256 of nothing, as browsers print it in a CSP report.
        assert_eq!(
            inline_hash("<p><script></script>", "script"),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn the_home_page_has_one_inline_script_and_one_inline_style() {
        // The policy allows the first of each by hash: a second one would be blocked.
        assert_eq!(HOME.matches("<script").count(), 1);
        assert_eq!(HOME.matches("<style").count(), 1);
        assert!(HOME.contains("<script>") && HOME.contains("<style>"));
    }
}
