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
        let writer = state.links.writer();
        let backlog = state.links.backlog();
        let reason = if let Some(failure) = writer.failure() {
            Some(format!("the store failed: {failure}"))
        } else if state.shutdown.is_cancelled() {
            Some("shutting down".to_owned())
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
        match reason {
            None => res.render(Json(json!({"status": "ok", "backlog": queued}))),
            Some(reason) => {
                res.status_code(StatusCode::SERVICE_UNAVAILABLE);
                res.render(Json(
                    json!({"status": "unavailable", "reason": reason, "backlog": queued}),
                ));
            }
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
                "linkpulse_backlog_clicks",
                "Clicks taken and not yet committed (inboxes, mailboxes, the writer's queue).",
                state.links.backlog().pending() as u64,
            ),
            (
                "linkpulse_backlog_limit",
                "The most clicks that may wait to be committed (--click-backlog).",
                state.links.backlog().limit() as u64,
            ),
            (
                "linkpulse_store_failed",
                "1 once a commit or fsync has failed (nothing is committed after that).",
                u64::from(!state.links.writer().is_healthy()),
            ),
            (
                "linkpulse_clicks_not_committed",
                "Clicks counted that the writer could not commit because the store had failed.",
                state.links.writer().lost_clicks(),
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
