//! `GET /badge/{code}.svg`: a small SVG with the link's click count, in the style of the
//! badges READMEs show (a grey label, a coloured value), for links whose stats are public.
//! Cacheable for a few seconds, readable from any site.

use std::sync::Arc;

use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};

use super::{
    ApiError, AppState, cors,
    openapi::{E404, E503},
};
use salvo_oapi::endpoint;

/// How long browsers and caches may keep a badge.
const MAX_AGE: &str = "public, max-age=5";

pub struct Badge(pub Arc<AppState>);

/// The width in pixels of `text` in 11px Verdana, the badges' font: a per-character estimate
/// (digits and most letters 7px, narrow ones less), close enough to centre the text.
fn text_width(text: &str) -> u32 {
    text.chars()
        .map(|c| match c {
            'i' | 'l' | '.' | ',' | ' ' | '\'' => 4,
            'f' | 'j' | 'r' | 't' => 5,
            'm' | 'w' | 'M' | 'W' => 10,
            _ => 7,
        })
        .sum()
}

/// Digits grouped by thin spaces would not survive every font; commas are what badges use.
fn grouped(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The badge: `clicks | N`, its width following the number.
pub fn svg(count: u64) -> String {
    let (label, value) = ("clicks", grouped(count));
    let left = text_width(label) + 12;
    let right = text_width(&value) + 12;
    let width = left + right;
    let (lx, rx) = (left * 5, left * 10 + right * 5);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"20\" role=\"img\" \
         aria-label=\"{label}: {value}\"><title>{label}: {value}</title>\
         <linearGradient id=\"s\" x2=\"0\" y2=\"100%\"><stop offset=\"0\" stop-color=\"#bbb\" \
         stop-opacity=\".1\"/><stop offset=\"1\" stop-opacity=\".1\"/></linearGradient>\
         <clipPath id=\"r\"><rect width=\"{width}\" height=\"20\" rx=\"3\" fill=\"#fff\"/>\
         </clipPath><g clip-path=\"url(#r)\"><rect width=\"{left}\" height=\"20\" fill=\"#555\"/>\
         <rect x=\"{left}\" width=\"{right}\" height=\"20\" fill=\"#007ec6\"/>\
         <rect width=\"{width}\" height=\"20\" fill=\"url(#s)\"/></g>\
         <g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,Geneva,DejaVu Sans,\
         sans-serif\" font-size=\"110\" transform=\"scale(.1)\">\
         <text x=\"{lx}\" y=\"150\" fill=\"#010101\" fill-opacity=\".3\">{label}</text>\
         <text x=\"{lx}\" y=\"140\">{label}</text>\
         <text x=\"{rx}\" y=\"150\" fill=\"#010101\" fill-opacity=\".3\">{value}</text>\
         <text x=\"{rx}\" y=\"140\">{value}</text></g></svg>"
    )
}

#[endpoint(
    tags("public"),
    summary = "A badge with the link's click count",
    parameters(("file" = String, Path, description = "The short code followed by `.svg`")),
    responses(
        (status_code = 200, description = "The badge (`Cache-Control: public, max-age=5`)", content_type = "image/svg+xml", body = String),
        E404,
        E503,
    )
)]
impl Badge {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let missing = || ApiError::not_found("no such link, or its stats are not public");
        let result = async {
            let file = req.params().get("file").map_or("", String::as_str);
            let raw = file.strip_suffix(".svg").ok_or_else(missing)?;
            if req.uri().path().contains('%') {
                return Err(missing());
            }
            super::check_host(state, super::request_host(req))?;
            let domain = super::domain_of_host(state, super::request_host(req));
            let code = super::key_on(domain.as_deref(), raw).ok_or_else(missing)?;
            let link = state.links.find(&code).await?.ok_or_else(missing)?;
            // A private link's badge does not exist, as its stats do not.
            if !link.public_stats {
                return Err(missing());
            }
            Ok::<_, ApiError>(state.links.public_count(&link).await?)
        }
        .await;
        match result {
            Ok(count) => {
                let headers = res.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("image/svg+xml; charset=utf-8"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(MAX_AGE));
                cors::public_origin(res);
                res.status_code(StatusCode::OK);
                let _ = res.write_body(svg(count));
            }
            Err(e) => e.write(res),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_and_the_badge_grows_with_them() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(12_345_678), "12,345,678");
        let small = svg(7);
        let large = svg(1_234_567);
        assert!(small.contains("aria-label=\"clicks: 7\""));
        assert!(large.contains(">1,234,567</text>"));
        let width = |s: &str| -> u32 {
            s.split("width=\"")
                .nth(1)
                .and_then(|w| w.split('"').next()?.parse().ok())
                .unwrap_or(0)
        };
        assert!(width(&large) > width(&small));
    }
}
