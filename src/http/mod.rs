//! The HTTP layer (salvo): one file per area, one mapping from errors to statuses here.
//! Handlers are small structs holding the shared [`AppState`], so the hot redirect path does
//! no per-request lookups of state. [`front`] is the accept loop in front of salvo that gives
//! connections opening with a stream to the lean writer in `sse`; both stream transports open
//! their streams through `stream`.
//!
//! Routing rules, the same on every route: a method a route does not have is `405` with
//! `Allow` and a JSON error; every route that answers `GET` also answers `HEAD` (without a
//! body), except the stream; empty path segments do not count, so a trailing slash (or a
//! doubled one) names the same route as without it, on both stream transports too.

mod api;
mod badge;
pub mod cors;
mod fields;
pub mod front;
mod health;
mod keys;
pub mod limit;
mod manage;
mod openapi;
mod pages;
mod qr;
mod realtime;
mod redirect;
mod sse;
mod stream;

use std::{net::IpAddr, sync::Arc, time::Instant};

use salvo::{
    http::{HeaderValue, Method, StatusCode, header, mime},
    prelude::*,
};
use salvo_oapi::endpoint;
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{
    analytics::CountryDb,
    config::ServeConfig,
    keys::{ApiKeys, Caller, KeyError},
    links::{LinkError, Links},
    metrics::Metrics,
    store::{StoreError, WriteError},
};

/// Everything a handler may need.
pub struct AppState {
    pub links: Links,
    pub keys: Arc<ApiKeys>,
    pub config: ServeConfig,
    /// The public base URL, without a trailing slash.
    pub base_url: String,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: ends every live stream.
    pub shutdown: CancellationToken,
    /// One place per open connection (`--max-connections`).
    pub connections: Arc<tokio::sync::Semaphore>,
    /// What one client may take: link creations per API key and per address, open streams
    /// and connections per address. Read it through [`AppState::client_limits`].
    pub create_limits: limit::ClientLimits,
    /// `--geoip-db`, open.
    pub country_db: Option<Arc<CountryDb>>,
}

impl AppState {
    /// What one client may take (the `create_limits` field, named for what it first held).
    pub fn client_limits(&self) -> &limit::ClientLimits {
        &self.create_limits
    }
}

/// What a route answers to; anything else is `405`.
const GET_HEAD: &str = "GET, HEAD";

/// The routes of the service. Each route's own goal answers the methods it does not have.
pub fn router(state: Arc<AppState>) -> Router {
    let s = || state.clone();
    let document = openapi::Document::default();
    // Password checks running at once (`--password-checks`), shared by both `/{code}` lanes.
    let checks = Arc::new(tokio::sync::Semaphore::new(
        state.config.password_checks.max(1),
    ));
    let router = Router::new()
        // The header limits; the fast lane below checks them itself.
        .hoop(limit::HeaderLimit)
        // `/` itself: the owner's page. Only a path of slashes alone names it (salvo would also
        // end `/%2e%2e` here, which must stay a `404`).
        .push(
            Router::new()
                .filter_fn(|req, _| req.uri().path().split('/').all(str::is_empty))
                .get(pages::Home)
                .head(pages::Home)
                .goal(NotAllowed(GET_HEAD)),
        )
        .push(
            Router::with_path("healthz")
                .get(health::Health(s()))
                .head(health::Health(s()))
                .goal(NotAllowed(GET_HEAD)),
        )
        .push(
            Router::with_path("metrics")
                .get(health::MetricsText(s()))
                .head(health::MetricsText(s()))
                .goal(NotAllowed(GET_HEAD)),
        )
        .push(
            Router::with_path("readyz")
                .get(health::Ready(s()))
                .head(health::Ready(s()))
                .goal(NotAllowed(GET_HEAD)),
        )
        .push(api_router(&state, &document))
        .push(
            Router::with_path("realtime/{code}")
                .get(realtime::Realtime(s()))
                .goal(NotAllowed("GET")),
        )
        // `/realtime` without a code is an API path that names nothing, not a short code.
        .push(Router::with_path("realtime").goal(pages::Fallback))
        .push(
            Router::with_path("assets/{name}")
                .get(pages::Asset)
                .head(pages::Asset)
                .goal(NotAllowed(GET_HEAD)),
        )
        .push(
            Router::with_path("badge/{file}")
                .get(badge::Badge(s()))
                .head(badge::Badge(s()))
                .goal(NotAllowed(GET_HEAD)),
        )
        .push(
            Router::with_path("links/{code}")
                .get(pages::StatsPage(s()))
                .head(pages::StatsPage(s()))
                .goal(NotAllowed(GET_HEAD)),
        )
        .push(code_routes(&state, &checks))
        .push(Router::with_path("{**rest}").goal(pages::Fallback));
    // The document describes the router it is served from, its own routes included.
    match openapi::document(&router) {
        Ok(doc) => {
            let _ = document.set(doc);
        }
        Err(e) => error!(cause = %e, "the OpenAPI document could not be made"),
    }
    // The redirect's fast lane, tried first: GET and HEAD of every path only `/{code}` can
    // take, so a redirect is not matched against every route above (salvo tries them in order:
    // that was a quarter of a HEAD's instructions), nor through the path and method filters
    // and the hoop (another tenth). Left out of the document, which lists `/{code}` once.
    let fast = Router::new()
        .filter_fn(|req, path| {
            let take = matches!(*req.method(), Method::GET | Method::HEAD)
                && is_code_path(req.uri().path());
            if take {
                // The one segment is consumed, so the lane's goal is taken.
                let len = path.pick().map_or(0, str::len);
                path.forward(len);
            }
            take && path.is_ended()
        })
        .goal(redirect::FastLane {
            get: redirect::Redirect {
                state: s(),
                count: true,
            },
            head: redirect::Redirect {
                state: s(),
                count: false,
            },
        });
    Router::new().push(fast).push(router)
}

/// Single-segment paths with routes of their own, matched before `/{code}`. A route added
/// above `/{code}` with a one-segment path must be named here too.
const ONE_SEGMENT_ROUTES: [&str; 4] = ["healthz", "metrics", "readyz", "realtime"];

/// A path only the `/{code}` route can take: one segment (empty ones do not count), none of
/// [`ONE_SEGMENT_ROUTES`], no percent-escape (those keep salvo's own order).
fn is_code_path(path: &str) -> bool {
    if path.contains('%') {
        return false;
    }
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    match (segments.next(), segments.next()) {
        (Some(first), None) => !ONE_SEGMENT_ROUTES.contains(&first),
        _ => false,
    }
}

/// `/{code}`: the redirect (GET counts, HEAD does not), a protected link's form answer
/// (POST), `405` for the rest.
fn code_routes(state: &Arc<AppState>, checks: &Arc<tokio::sync::Semaphore>) -> Router {
    let s = || state.clone();
    Router::with_path("{code}")
        .get(Timed(redirect::Redirect {
            state: s(),
            count: true,
        }))
        .head(Timed(redirect::Redirect {
            state: s(),
            count: false,
        }))
        // The answer to a protected link's password form.
        .post(redirect::Unlock {
            redirect: redirect::Redirect {
                state: s(),
                count: true,
            },
            checks: checks.clone(),
        })
        .goal(redirect::CodeNotAllowed(s()))
}

/// `/api/*`, behind the CORS hoop when `--cors-origin` is given.
fn api_router(state: &Arc<AppState>, document: &openapi::Document) -> Router {
    let s = || state.clone();
    let mut api = Router::with_path("api");
    if let Some(cors) = cors::Cors::new(&state.config.cors_origin) {
        api = api.hoop(cors);
    }
    api.push(
        Router::with_path("links")
            .post(api::CreateLink(s()))
            .get(manage::ListLinks(s()))
            .head(manage::ListLinks(s()))
            .goal(NotAllowed("GET, HEAD, POST")),
    )
    .push(
        Router::with_path("keys")
            .post(keys::CreateKey(s()))
            .get(keys::ListKeys(s()))
            .head(keys::ListKeys(s()))
            .goal(NotAllowed("GET, HEAD, POST")),
    )
    .push(
        Router::with_path("keys/{id}")
            .delete(keys::RevokeKey(s()))
            .goal(NotAllowed("DELETE")),
    )
    .push(
        Router::with_path("links/{code}")
            .get(api::ReadLink(s()))
            .head(api::ReadLink(s()))
            .patch(manage::PatchLink(s()))
            .delete(manage::DeleteLink(s()))
            .push(
                Router::with_path("stats")
                    .get(api::LinkStats(s()))
                    .head(api::LinkStats(s()))
                    .goal(NotAllowed(GET_HEAD)),
            )
            .push(
                Router::with_path("clicks")
                    .get(api::ListClicks(s()))
                    .head(api::ListClicks(s()))
                    .goal(NotAllowed(GET_HEAD)),
            )
            .push(
                Router::with_path("qr")
                    .get(qr::Qr(s()))
                    .head(qr::Qr(s()))
                    .goal(NotAllowed(GET_HEAD)),
            )
            .goal(NotAllowed("GET, HEAD, PATCH, DELETE")),
    )
    .push(
        Router::with_path("openapi.json")
            .get(openapi::OpenApiJson(document.clone()))
            .head(openapi::OpenApiJson(document.clone()))
            .goal(NotAllowed(GET_HEAD)),
    )
    .push(
        Router::with_path("docs")
            .get(openapi::ApiDocs)
            .head(openapi::ApiDocs)
            .goal(NotAllowed(GET_HEAD)),
    )
}

/// The redirect handler, timed into `linkpulse_redirect_duration_seconds`.
struct Timed(redirect::Redirect);

/// Follow a short link (HEAD: the same answer, nothing counted)
#[endpoint(
    tags("public"),
    parameters(("code" = String, Path, description = "The short code")),
    responses(
        (status_code = 301, description = "Moved permanently (the link's `redirectStatus`)", headers(("Location" = String))),
        (status_code = 302, description = "Found: the default", headers(("Location" = String))),
        (status_code = 307, description = "Temporary redirect (the link's `redirectStatus`)", headers(("Location" = String))),
        (status_code = 308, description = "Permanent redirect (the link's `redirectStatus`)", headers(("Location" = String))),
        (status_code = 200, description = "The password form of a protected link", content_type = "text/html", body = String),
        (status_code = 404, description = "No such link", content_type = "text/html", body = String),
        (status_code = 410, description = "Expired or past its visit limit", content_type = "text/html", body = String),
        openapi::E503,
    )
)]
impl Timed {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let started = Instant::now();
        self.0.handle(req, depot, res, ctrl).await;
        self.0.state.metrics.redirect_took(started.elapsed());
    }
}

/// A method the route does not have: `405` with `Allow` and a JSON error.
struct NotAllowed(&'static str);

#[async_trait]
impl Handler for NotAllowed {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        self.answer(req, res);
    }
}

impl NotAllowed {
    fn answer(&self, req: &Request, res: &mut Response) {
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(self.0));
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} is not allowed here; allowed: {}",
                req.method(),
                self.0
            ),
        )
        .write(res);
    }
}

/// A client or server error answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Sent as `Retry-After` (seconds) when set.
    pub retry_after: Option<u32>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A `503` telling the client when to try again.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message).with_retry_after(retry_after_secs)
    }

    pub fn write(&self, res: &mut Response) {
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res.status_code(self.status);
        res.render(Json(ErrorBody {
            error: &self.message,
        }));
    }
}

impl From<LinkError> for ApiError {
    /// Server-side failures are logged with their cause and answered without it.
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::ShuttingDown => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down",
            ),
            // Deleted while the request was on its way.
            LinkError::Gone => Self::not_found("no such link"),
            LinkError::Unavailable => {
                Self::unavailable("this link cannot be served right now, try again", 1)
            }
            LinkError::Timeout => {
                warn!(cause = %e, "link operation timed out");
                Self::unavailable("the service is busy, try again", 1)
            }
            // A cluster store's servers out of reach: nothing was changed; it passes.
            LinkError::Write(WriteError::Unavailable(_))
            | LinkError::Store(StoreError::Nats(_)) => {
                warn!(cause = %e, "link operation not possible now");
                Self::unavailable("the store cannot be reached now, try again", 1)
            }
            other => {
                error!(cause = %other, "link operation failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::BadName(_) | KeyError::LastAdmin => Self::bad_request(e.to_string()),
            KeyError::NotFound(_) => Self::not_found(e.to_string()),
            KeyError::Store(cause) => {
                error!(cause = %cause, "an API key operation failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

/// `403` for a `read` key asking to change something.
pub fn require_write(caller: &Caller) -> Result<(), ApiError> {
    if caller.may_write() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this key is read-only (scope read)",
        ))
    }
}

/// `403` for a key that is not an admin key.
pub fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this needs an admin key (scope admin)",
        ))
    }
}

/// A JSON object body of at most `max` bytes, as `T`: `415` for another content type, `413`
/// for a larger body (refused before it is read, when its length is declared), `400` for
/// anything that is not a JSON object of `T`'s fields.
pub async fn read_json_object<T: DeserializeOwned>(
    req: &mut Request,
    max: usize,
) -> Result<T, ApiError> {
    let is_json = req
        .content_type()
        .is_some_and(|m| m.type_() == mime::APPLICATION && m.subtype() == mime::JSON);
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {max} bytes"),
        )
    };
    // Refused before reading: salvo would wait for a body it is told is too large.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body = req.payload_with_max_size(max).await.map_err(|e| match e {
        salvo::http::ParseError::PayloadTooLarge => too_large(),
        _ => ApiError::bad_request("could not read the request body"),
    })?;
    // serde would also take a JSON array as the fields in order.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("JSON body must be an object"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The caller behind `Authorization: Bearer <key>`, or a 401.
pub fn authenticate(state: &AppState, req: &Request) -> Result<Caller, ApiError> {
    let ip = client_ip(state, req);
    if let Some(ip) = ip {
        state
            .client_limits()
            .check_auth(ip)
            .map_err(limit::Limited::into_error)?;
    }
    let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <api key>",
        )
    })?;
    // A key was presented: a wrong, revoked or malformed one counts against the address
    // (`--auth-failures-per-ip`); a missing one guesses nothing and does not.
    presented_key(state, value).inspect_err(|_| {
        if let Some(ip) = ip {
            state.client_limits().auth_failed(ip);
        }
    })
}

/// The caller whose key the `Authorization` header holds.
fn presented_key(state: &AppState, value: &HeaderValue) -> Result<Caller, ApiError> {
    let unauthorized = |msg: &str| ApiError::new(StatusCode::UNAUTHORIZED, msg);
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| unauthorized("Authorization must be 'Bearer <api key>'"))?;
    state
        .keys
        .authenticate(key.trim())
        .ok_or_else(|| unauthorized("invalid API key"))
}

/// The client address: the socket peer, or the last `X-Forwarded-For` entry when the operator
/// trusts a proxy in front.
pub fn client_ip(state: &AppState, req: &Request) -> Option<IpAddr> {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .map(HeaderValue::as_bytes);
    client_addr(
        state.config.trust_forwarded_for,
        req.remote_addr().ip(),
        forwarded,
    )
}

/// [`client_ip`] from its parts, for the lean stream writer, which has no salvo request.
pub(crate) fn client_addr(
    trust_forwarded_for: bool,
    peer: Option<IpAddr>,
    forwarded_for: Option<&[u8]>,
) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(forwarded) = forwarded_for.and_then(|v| std::str::from_utf8(v).ok())
        && let Some(last) = forwarded.rsplit(',').next()
        && let Ok(ip) = last.trim().parse::<IpAddr>()
    {
        return Some(ip);
    }
    peer
}

/// The `{code}` path parameter. Codes never hold `%`, so a path with a percent-escape names no
/// code (salvo would decode `/%41bc` into `Abc`).
pub fn code_param(req: &Request) -> &str {
    if req.uri().path().contains('%') {
        return "";
    }
    req.params().get("code").map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::is_code_path;

    #[test]
    fn only_paths_no_other_route_takes_go_the_fast_lane() {
        for path in ["/abc", "/abc/", "//abc", "/Healthz", "/api", "/docs"] {
            assert!(is_code_path(path), "{path}");
        }
        for path in [
            "/",
            "",
            "/healthz",
            "/metrics/",
            "//readyz",
            "/realtime",
            "/links/abc",
            "/realtime/abc",
            "/%41bc",
            "/a/b",
        ] {
            assert!(!is_code_path(path), "{path}");
        }
    }
}
