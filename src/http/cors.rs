//! Cross-origin access: the hoop in front of `/api/*` for the origins `--cors-origin` allows
//! (a dashboard served from another origin), and [`public_origin`] for the public streams of
//! links whose stats are public (a live counter embedded in any site).
//!
//! A small hoop rather than salvo's `cors` feature: what it must do is little and exact
//! (preflights answered `204` before the routes' `405`, the header on error answers too,
//! nothing at all for an origin that is not allowed), and it costs no dependency.

use salvo::{
    http::{HeaderValue, Method, StatusCode, header},
    prelude::*,
};

/// What a dashboard may send to `/api/*`.
const ALLOW_METHODS: &str = "GET, POST, PATCH, DELETE";
const ALLOW_HEADERS: &str = "Authorization, Content-Type";
/// Headers of API answers a script may read besides the simple ones.
const EXPOSE_HEADERS: &str = "Location, Retry-After";
/// How long a browser may keep a preflight's answer (seconds).
const MAX_AGE: &str = "600";

/// The allowed origins of `--cors-origin`.
#[derive(Debug, Clone)]
pub struct Cors {
    any: bool,
    /// Serialized origins (`scheme://host[:port]`), as browsers send them in `Origin`.
    origins: Vec<HeaderValue>,
}

impl Cors {
    /// `None` when no origin is allowed: no hoop, no CORS headers.
    pub fn new(origins: &[String]) -> Option<Self> {
        if origins.is_empty() {
            return None;
        }
        Some(Self {
            any: origins.iter().any(|o| o == "*"),
            origins: origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        })
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any {
            Some(HeaderValue::from_static("*"))
        } else {
            self.origins.iter().find(|o| *o == origin).cloned()
        }
    }
}

#[async_trait]
impl Handler for Cors {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let allowed = self.allow(req.headers().get(header::ORIGIN));
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            // Answered here, before the routes' `405`. For an origin that is not allowed the
            // answer carries no CORS headers, so the browser refuses the request.
            res.status_code(StatusCode::NO_CONTENT);
            let headers = res.headers_mut();
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
            if let Some(allowed) = allowed {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(ALLOW_METHODS),
                );
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    HeaderValue::from_static(ALLOW_HEADERS),
                );
                headers.insert(
                    header::ACCESS_CONTROL_MAX_AGE,
                    HeaderValue::from_static(MAX_AGE),
                );
            }
            ctrl.skip_rest();
            return;
        }
        ctrl.call_next(req, depot, res).await;
        // Set after the handler, so error answers carry it too. `Vary` always: the answer
        // differs by origin, and a cache must not hand one origin's answer to another.
        let headers = res.headers_mut();
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(allowed) = allowed {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
}

/// Lets any site read this answer: for the public stream and badge of a link whose stats are
/// public (they carry no owner-only data and need no credentials).
pub fn public_origin(res: &mut Response) {
    res.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// [`public_origin`] as a raw header line, for a writer that bypasses salvo.
pub const PUBLIC_ORIGIN_LINE: &str = "Access-Control-Allow-Origin: *\r\n";
