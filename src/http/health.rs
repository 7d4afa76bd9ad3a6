//! `GET /healthz`, `GET /readyz` and `GET /metrics`.

use std::sync::Arc;

use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use serde_json::json;

use super::AppState;
use super::openapi::schemas;
use crate::metrics::{self, Scraped};
use salvo_oapi::endpoint;

pub struct Health(pub Arc<AppState>);

/// Liveness, with what waits for the disk
#[endpoint(
    tags("operations"),
    responses(
        (status_code = 200, description = "Healthy", body = schemas::Health),
        (status_code = 503, description = "The store failed, the disk is behind, or shutting down", body = schemas::Health),
    )
)]
impl Health {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let writer = state.links.writer();
        let backlog = state.links.backlog();
        let reason = if let Some(failure) = writer.failure() {
            Some(format!("the store failed: {failure}"))
        } else if state.shutdown.is_cancelled() {
            Some("shutting down".to_owned())
        } else if let Some(why) = state.links.store().unreachable() {
            Some(format!(
                "the store cannot be reached ({why}); redirects are answered from memory and \
                 clicks are held up to the backlog limit"
            ))
        } else if let Some(why) = writer.unavailable() {
            Some(why)
        } else if backlog.is_full() {
            Some(format!(
                "the disk is behind: {} clicks wait to be committed (the limit), new clicks are \
                 dropped",
                backlog.pending()
            ))
        } else {
            None
        };
        // What waits for the disk, so an operator sees a stall coming before clicks drop.
        let queued = json!({
            "clicks": backlog.pending(),
            "limit": backlog.limit(),
            "writerQueue": writer.queue_len(),
        });
        // Named, not failed: an expiring certificate does not stop redirects.
        let expiring = state
            .certificates
            .expiring(|name| state.domains.get(name).is_some_and(|d| d.https));
        let mut body = match reason {
            None => json!({"status": "ok", "backlog": queued}),
            Some(reason) => {
                res.status_code(StatusCode::SERVICE_UNAVAILABLE);
                json!({"status": "unavailable", "reason": reason, "backlog": queued})
            }
        };
        if !expiring.is_empty() {
            body["certificatesExpiringSoon"] = json!(expiring);
        }
        res.render(Json(body));
    }
}

/// `GET /readyz`: `200 {"ready":true}` while the service takes traffic; `503` with the reason
/// once the store has failed (nothing is committed any more) or while it shuts down. Unlike
/// `/healthz`, a full backlog is not a reason: redirects are still answered.
pub struct Ready(pub Arc<AppState>);

/// Whether the service takes traffic
#[endpoint(
    tags("operations"),
    responses(
        (status_code = 200, description = "Ready", body = schemas::Ready),
        (status_code = 503, description = "The store failed, or shutting down", body = schemas::Ready),
    )
)]
impl Ready {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let reason = if let Some(failure) = state.links.writer().failure() {
            Some(format!("the store failed: {failure}"))
        } else if state.shutdown.is_cancelled() {
            Some("shutting down".to_owned())
        } else {
            None
        };
        match reason {
            None => res.render(Json(json!({"ready": true}))),
            Some(reason) => {
                res.status_code(StatusCode::SERVICE_UNAVAILABLE);
                res.render(Json(json!({"ready": false, "reason": reason})));
            }
        }
    }
}

pub struct MetricsText(pub Arc<AppState>);

/// Prometheus metrics (OpenMetrics text)
#[endpoint(
    tags("operations"),
    responses((status_code = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String))
)]
impl MetricsText {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let writer = state.links.writer();
        let backlog = state.links.backlog();
        let scraped = Scraped {
            active_actors: state.links.active_actors() as u64,
            writer_queue: writer.queue_len() as u64,
            backlog_clicks: backlog.pending() as u64,
            backlog_limit: backlog.limit() as u64,
            store_failed: !writer.is_healthy(),
            clicks_not_committed: writer.lost_clicks(),
            connections: state
                .config
                .max_connections
                .max(1)
                .saturating_sub(state.connections.available_permits())
                as u64,
            certificates_expiring: state
                .certificates
                .expiring(|name| state.domains.get(name).is_some_and(|d| d.https))
                .len() as u64,
        };
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        res.write_body(state.metrics.render(&scraped)).ok();
    }
}
