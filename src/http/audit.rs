//! `GET /api/audit?cursor=&limit=`: the workspace's audit log, newest first, for owners and
//! admins; `GET /admin/audit`, the page that shows it.

use std::sync::Arc;

use salvo::{
    http::{HeaderValue, header},
    prelude::*,
};
use serde::Serialize;

use super::{ApiError, AppState, authenticate, require_admin};
use crate::{domain::format_ms, store::records::AuditRecord};
use salvo_oapi::endpoint;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// An entry as the API shows it.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "AuditEntry"))]
#[serde(rename_all = "camelCase")]
struct Entry {
    /// Its number, across the installation (what `/api/events` calls an event's id).
    id: u64,
    at: String,
    /// A person's email, or `key {id} ({name})`.
    who: String,
    /// `link.created`, `link.updated`, `link.deleted`, `key.created`, `key.revoked`,
    /// `domain.created|updated|deleted`, `member.invited|joined|created|updated|removed`,
    /// `workspace.created|updated`, `webhook.created|updated|rotated|deleted|disabled`.
    action: String,
    target: String,
    /// The thing before the change (`null`: it did not exist) and after (`null`: it is gone).
    #[salvo(schema(value_type = Option<Object>))]
    before: Option<serde_json::Value>,
    #[salvo(schema(value_type = Option<Object>))]
    after: Option<serde_json::Value>,
}

/// `GET /api/audit`'s answer.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "AuditPage"))]
struct AuditPage {
    entries: Vec<Entry>,
    /// The cursor of the next (older) page; `null`: this is the last.
    next: Option<String>,
}

fn entry(r: AuditRecord) -> Entry {
    let json = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Entry {
        id: r.seq,
        at: format_ms(r.at),
        who: r.who,
        action: r.action,
        target: r.target,
        before: json(r.before),
        after: json(r.after),
    }
}

/// `GET /api/audit`.
pub struct ListAudit(pub Arc<AppState>);

impl ListAudit {
    async fn list(&self, req: &Request) -> Result<AuditPage, ApiError> {
        let state = &self.0;
        let caller = authenticate(state, req).await?;
        require_admin(&caller)?;
        let limit = super::request::page_limit(req, DEFAULT_PAGE, MAX_PAGE)?;
        let before = match req.query::<String>("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
                ApiError::bad_request("cursor is not one this API gave (use the page's next)")
            })?),
        };
        let found = state
            .events
            .page(&caller.workspace, before, limit + 1)
            .await
            .map_err(|e| ApiError::from(crate::links::LinkError::from(e)))?;
        let more = found.len() > limit;
        let entries: Vec<Entry> = found.into_iter().take(limit).map(entry).collect();
        let next = more
            .then(|| entries.last().map(|e| e.id.to_string()))
            .flatten();
        Ok(AuditPage { entries, next })
    }
}

/// The workspace's audit log, newest first (owner or admin)
#[endpoint(
    tags("sessions"),
    security(("bearer" = [])),
    parameters(
        ("limit" = Option<u32>, Query, description = "Entries per page, 1 to 500 (default 50)"),
        ("cursor" = Option<String>, Query, description = "The `next` of the previous page"),
    ),
    responses(
        (status_code = 200, description = "A page of entries", body = AuditPage),
        (status_code = 400, description = "A bad limit or cursor", body = super::openapi::schemas::Error),
        (status_code = 401, description = "No key or session", body = super::openapi::schemas::Error),
        (status_code = 403, description = "Not an owner or admin", body = super::openapi::schemas::Error),
    )
)]
impl ListAudit {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.list(req).await {
            Ok(page) => res.render(Json(page)),
            Err(e) => e.write(res),
        }
    }
}

/// The audit page (`src/pages/audit.html`).
const PAGE: &str = include_str!("../pages/audit.html");

/// `GET /admin/audit`.
pub struct AuditPageRoute;

/// The audit log's page (signed in as an owner or admin)
#[endpoint(
    tags("public"),
    responses((status_code = 200, description = "The page", content_type = "text/html", body = String))
)]
impl AuditPageRoute {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let headers = res.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Ok(csp) = HeaderValue::from_str(&super::pages::page_csp(PAGE)) {
            headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        res.render(Text::Html(PAGE));
    }
}
