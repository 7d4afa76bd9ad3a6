//! `GET /healthz` and `GET /metrics`.

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde_json::json;

use super::AppState;

pub struct Health(pub Arc<AppState>);

#[async_trait]
impl Handler for Health {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        if state.links.writer().is_healthy() && !state.shutdown.is_cancelled() {
            res.render(Json(json!({"status": "ok"})));
        } else {
            res.status_code(StatusCode::SERVICE_UNAVAILABLE);
            res.render(Json(json!({"status": "unavailable"})));
        }
    }
}

pub struct MetricsText(pub Arc<AppState>);

#[async_trait]
impl Handler for MetricsText {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let gauges = [
            (
                "linkpulse_active_actors",
                "Link actors alive now.",
                state.links.active_actors() as u64,
            ),
            (
                "linkpulse_writer_queue",
                "Items waiting for the group-commit writer.",
                state.links.writer().queue_len() as u64,
            ),
            (
                "linkpulse_connections",
                "Open client connections.",
                state
                    .config
                    .max_connections
                    .max(1)
                    .saturating_sub(state.connections.available_permits()) as u64,
            ),
        ];
        res.render(Text::Plain(state.metrics.render(&gauges)));
    }
}
