//! The HTTP layer (salvo): one file per area, one mapping from errors to statuses here.
//! Handlers are small structs holding the shared [`AppState`], so the hot redirect path does
//! no per-request lookups of state. [`front`] is the accept loop in front of salvo that gives
//! connections opening with a stream to the lean writer in `sse`.

mod api;
pub mod front;
mod health;
pub mod limit;
mod pages;
mod realtime;
mod redirect;
mod sse;

use std::{net::IpAddr, sync::Arc};

use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{
    config::ServeConfig,
    keys::{ApiKeys, Caller},
    links::{LinkError, Links},
    metrics::Metrics,
};

/// Everything a handler may need.
pub struct AppState {
    pub links: Links,
    pub keys: ApiKeys,
    pub config: ServeConfig,
    /// The public base URL, without a trailing slash.
    pub base_url: String,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: ends every live stream.
    pub shutdown: CancellationToken,
    /// One place per open connection (`--max-connections`).
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Link creations allowed per API key and per client address.
    pub create_limits: limit::CreateLimits,
}

/// The routes of the service.
pub fn router(state: Arc<AppState>) -> Router {
    let s = || state.clone();
    Router::new()
        .hoop(limit::HeaderLimit)
        .push(Router::with_path("healthz").get(health::Health(s())))
        .push(Router::with_path("metrics").get(health::MetricsText(s())))
        .push(Router::with_path("api/links").post(api::CreateLink(s())))
        .push(
            Router::with_path("api/links/{code}")
                .get(api::ReadLink(s()))
                .push(Router::with_path("clicks").get(api::ListClicks(s()))),
        )
        .push(Router::with_path("realtime/{code}").get(realtime::Realtime(s())))
        .push(Router::with_path("links/{code}").get(pages::StatsPage(s())))
        .push(
            Router::with_path("{code}")
                .get(redirect::Redirect {
                    state: s(),
                    count: true,
                })
                .head(redirect::Redirect {
                    state: s(),
                    count: false,
                }),
        )
        .push(Router::with_path("{**rest}").goal(pages::Fallback))
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
            LinkError::Unavailable => Self::unavailable(
                "this link cannot be served right now, try again",
                1,
            ),
            LinkError::Timeout => {
                warn!(cause = %e, "link operation timed out");
                Self::unavailable("the service is busy, try again", 1)
            }
            other => {
                error!(cause = %other, "link operation failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

/// The caller behind `Authorization: Bearer <key>`, or a 401.
pub fn authenticate(state: &AppState, req: &Request) -> Result<Caller, ApiError> {
    let unauthorized = |msg: &str| ApiError::new(StatusCode::UNAUTHORIZED, msg);
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <api key>"))?;
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
    if state.config.trust_forwarded_for
        && let Some(forwarded) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        && let Some(last) = forwarded.rsplit(',').next()
        && let Ok(ip) = last.trim().parse::<IpAddr>()
    {
        return Some(ip);
    }
    req.remote_addr().ip()
}

/// The `{code}` path parameter. Codes never hold `%`, so a path with a percent-escape names no
/// code (salvo would decode `/%41bc` into `Abc`).
pub fn code_param(req: &Request) -> &str {
    if req.uri().path().contains('%') {
        return "";
    }
    req.params().get("code").map_or("", String::as_str)
}
