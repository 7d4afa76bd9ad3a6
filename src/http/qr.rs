//! `GET /api/links/{code}/qr?format=svg|png&size=`: a QR code of the link's short URL, for the
//! caller's own link (an admin's: any). SVG by default; `size` is the image's side in pixels.

use std::{fmt::Write, sync::Arc};

use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};
use qrcode::{Color, QrCode};
use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use tracing::error;

use super::openapi::{E400, E401, E404, E429, E503};
use super::{ApiError, AppState, api::owned_link};
use salvo_oapi::endpoint;

const DEFAULT_SIZE: u32 = 256;
const SIZES: std::ops::RangeInclusive<u32> = 64..=2048;
/// The blank border the QR standard asks for, in modules on each side.
const QUIET_ZONE: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Svg,
    Png,
}

pub struct Qr(pub Arc<AppState>);

/// A QR code of the link's short URL
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(
        ("code" = String, Path, description = "The short code"),
        ("format" = Option<String>, Query, description = "`svg` (the default) or `png`"),
        ("size" = Option<u32>, Query, description = "The image's side in pixels, 64 to 2048 (default 256)"),
    ),
    responses(
        (status_code = 200, description = "The image", content(
            ("image/svg+xml" = String),
            ("image/png" = [u8]),
        )),
        E400, E401, E429, E404, E503,
    )
)]
impl Qr {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let result = async {
            let (_, link) = owned_link(state, req).await?;
            let (format, size) = params(req)?;
            let url = format!("{}/{}", state.base_of(&link), link.code.code());
            let code = QrCode::new(url.as_bytes()).map_err(|e| {
                error!(cause = %e, "a short URL does not fit in a QR code");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            })?;
            Ok::<_, ApiError>(match format {
                Format::Svg => ("image/svg+xml", svg(&code, size).into_bytes()),
                Format::Png => ("image/png", png(&code, size)?),
            })
        }
        .await;
        match result {
            Ok((content_type, body)) => {
                let headers = res.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                // The image of a link never changes, but it is the owner's: no shared caches.
                headers.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, max-age=300"),
                );
                res.write_body(body).ok();
            }
            Err(e) => e.write(res),
        }
    }
}

/// `format` and `size`, or a 400 naming the one that is wrong.
fn params(req: &Request) -> Result<(Format, u32), ApiError> {
    let format = match req.query::<String>("format").as_deref() {
        None | Some("svg") => Format::Svg,
        Some("png") => Format::Png,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format must be svg or png, not {other:?}"
            )));
        }
    };
    let size = match req.query::<String>("size") {
        None => DEFAULT_SIZE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|size| SIZES.contains(size))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "size must be a number of pixels from {} to {}, not {raw:?}",
                    SIZES.start(),
                    SIZES.end()
                ))
            })?,
    };
    Ok((format, size))
}

/// The code's modules with the quiet zone around them: `(modules per side, dark(x, y))`.
fn modules(code: &QrCode) -> (usize, impl Fn(usize, usize) -> bool + '_) {
    let width = code.width();
    let dark = move |x: usize, y: usize| {
        let (x, y) = (x.wrapping_sub(QUIET_ZONE), y.wrapping_sub(QUIET_ZONE));
        x < width && y < width && code[(x, y)] == Color::Dark
    };
    (width + 2 * QUIET_ZONE, dark)
}

/// The QR code of `text` as an inline `<svg>` element (no XML prolog), for a page.
pub(super) fn inline_svg(text: &str, size: u32) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let svg = svg(&code, size);
    Some(svg[svg.find("<svg")?..].to_owned())
}

/// A `size`-pixel square SVG, one path of dark runs on white, drawn in module units.
fn svg(code: &QrCode, size: u32) -> String {
    let (n, dark) = modules(code);
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
         version=\"1.1\" width=\"{size}\" height=\"{size}\" viewBox=\"0 0 {n} {n}\" \
         shape-rendering=\"crispEdges\"><rect width=\"{n}\" height=\"{n}\" fill=\"#fff\"/>\
         <path fill=\"#000\" d=\""
    );
    for y in 0..n {
        let mut x = 0;
        while x < n {
            if !dark(x, y) {
                x += 1;
                continue;
            }
            let start = x;
            while x < n && dark(x, y) {
                x += 1;
            }
            let run = x - start;
            let _ = write!(out, "M{start} {y}h{run}v1h-{run}z");
        }
    }
    out.push_str("\"/></svg>\n");
    out
}

/// A `size`-pixel square grey PNG: whole pixels per module, the code centred. (A code with
/// more modules than `size` pixels, which a short URL never makes, comes out larger.)
fn png(code: &QrCode, size: u32) -> Result<Vec<u8>, ApiError> {
    let (n, dark) = modules(code);
    let size = size as usize;
    let scale = (size / n).max(1);
    let side = size.max(n * scale);
    let offset = (side - n * scale) / 2;
    let mut pixels = vec![255u8; side * side];
    for y in 0..n {
        for x in 0..n {
            if dark(x, y) {
                for row in 0..scale {
                    let start = (offset + y * scale + row) * side + offset + x * scale;
                    pixels[start..start + scale].fill(0);
                }
            }
        }
    }
    let mut out = Vec::new();
    let side = side as u32;
    PngEncoder::new(&mut out)
        .write_image(&pixels, side, side, ExtendedColorType::L8)
        .map_err(|e| {
            error!(cause = %e, "a QR code could not be encoded as PNG");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_png_is_the_size_asked_and_the_svg_says_it() {
        let code = QrCode::new(b"http://127.0.0.1:8080/abc123").expect("fits");
        for size in [64, 100, 2048] {
            let bytes = png(&code, size).expect("encodes");
            let image = image::load_from_memory(&bytes).expect("a PNG");
            assert_eq!((image.width(), image.height()), (size, size));
        }
        let text = svg(&code, 300);
        assert!(text.starts_with("<?xml"));
        assert!(text.contains("width=\"300\" height=\"300\""));
    }
}
