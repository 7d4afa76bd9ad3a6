//! A link's stored clicks (`GET /api/links/{code}/clicks`): a page of them as JSON, newest
//! first, or all of them as CSV (see `export`). The route's handler, [`super::ListClicks`], is in
//! the parent module, whose path names its operation in the OpenAPI document.

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde::Serialize;

use super::{ApiError, AppState, owned_link};
use crate::{
    domain::{ClickEvent, Link},
    links::frame::Analytics,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClickItem<'a> {
    seq: u64,
    #[serde(flatten)]
    analytics: Analytics<'a>,
}

const MAX_PAGE: usize = 1000;

/// Whether the `Accept` header asks for CSV (`text/csv`, not with `q=0`).
pub(super) fn accepts_csv(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        parts
            .next()
            .is_some_and(|m| m.eq_ignore_ascii_case("text/csv"))
            && !parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

/// The link of the path, once every click counted before the request is stored (so it is in
/// the export).
pub(super) async fn settled_link(state: &AppState, req: &Request) -> Result<Arc<Link>, ApiError> {
    let (_, link) = owned_link(state, req).await?;
    // Every click counted before the request is in the export.
    state.links.settle(&link).await?;
    Ok(link)
}

/// The page of clicks `limit` and `before` ask for, of the link of the path.
pub(super) async fn page(
    state: &AppState,
    req: &Request,
) -> Result<(Arc<Link>, Vec<ClickEvent>), ApiError> {
    let (_, link) = owned_link(state, req).await?;
    let (limit, before) = page_params(req)?;
    state.links.settle(&link).await?;
    let store = state.links.store().clone();
    let code = link.code.clone();
    let clicks = tokio::task::spawn_blocking(move || store.clicks(code.as_str(), before, limit))
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?
        .map_err(|e| ApiError::from(crate::links::LinkError::from(e)))?;
    Ok((link, clicks))
}

/// `limit` (1 to [`MAX_PAGE`], default 100) and `before` (a click number) of the query.
fn page_params(req: &Request) -> Result<(usize, Option<u64>), ApiError> {
    let limit = match req.query::<String>("limit") {
        None => 100,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}")))?,
    };
    let before = match req.query::<String>("before") {
        None => None,
        Some(raw) => Some(
            raw.parse::<u64>()
                .map_err(|_| ApiError::bad_request("before must be a click number"))?,
        ),
    };
    Ok((limit, before))
}

/// A page of clicks as JSON: `{"clicks": [...]}`, each with its number.
pub(super) fn render_page(link: &Link, clicks: &[ClickEvent], res: &mut Response) {
    let items: Vec<_> = clicks
        .iter()
        .map(|e| ClickItem {
            seq: e.seq,
            analytics: Analytics::of(link.code.code(), e),
        })
        .collect();
    res.render(Json(serde_json::json!({ "clicks": items })));
}
