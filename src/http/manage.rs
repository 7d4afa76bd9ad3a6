//! Managing links: `GET /api/links` (a listing, newest first), `PATCH /api/links/{code}` and
//! `DELETE /api/links/{code}`. Changes go through the store's writer and reach every copy of the
//! link in memory before the answer (see `Links::update` and `Links::delete`).

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde::Serialize;

use super::openapi::{E400, E401, E403, E404, E413, E415, E429, E503, schemas};
use super::{
    ApiError, AppState,
    api::{LinkBody, link_body, owned_link, password_hash, read_json},
    authenticate,
    fields::LinkFields,
    require_write,
};
use crate::{
    domain::Link,
    keys::Scope,
    links::Snapshot,
    store::{Cursor, LinkChange},
};
use salvo_oapi::endpoint;

/// Links per page: the default and the most.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// Index entries one listing request reads at most (see `Store::list_links`).
const MAX_SCAN: usize = 10_000;

#[derive(Serialize)]
struct Listing<'a> {
    links: Vec<LinkBody<'a>>,
    next: Option<String>,
}

/// Whether a link matches the listing's `q` (code, URL or title, any case) and `tag`.
fn matches(link: &Link, q: Option<&str>, tag: Option<&str>) -> bool {
    let has = |text: &str, needle: &str| text.to_lowercase().contains(needle);
    q.is_none_or(|q| {
        has(link.code.code(), q)
            || has(link.target.as_str(), q)
            || link.title.as_deref().is_some_and(|t| has(t, q))
    }) && tag.is_none_or(|tag| link.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
}

/// `GET /api/links?cursor=&limit=&q=&tag=`: the caller's links (an admin's: everyone's),
/// newest first, with their counts.
pub struct ListLinks(pub Arc<AppState>);

impl ListLinks {
    async fn list(
        &self,
        req: &Request,
    ) -> Result<(Vec<(Arc<Link>, Snapshot)>, Option<Cursor>), ApiError> {
        let state = &self.0;
        let caller = authenticate(state, req).await?;
        let param = |name: &str| req.query::<String>(name);
        let limit = super::request::page_limit(req, DEFAULT_PAGE, MAX_PAGE)?;
        let cursor = match param("cursor").filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => Some(Cursor::parse(&raw).ok_or_else(|| {
                ApiError::bad_request("cursor is not one this API gave (use the listing's next)")
            })?),
        };
        let q = param("q")
            .map(|q| q.trim().to_lowercase())
            .filter(|q| !q.is_empty());
        let tag = param("tag")
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        // A `links` key lists its own links; admin and read keys see every link.
        let owner = (caller.scope == Scope::Links).then(|| caller.key_id.clone());
        let workspace = caller.workspace.clone();
        let store = state.links.store().clone();
        let page = tokio::task::spawn_blocking(move || {
            store.list_links(
                owner.as_deref(),
                cursor.as_ref(),
                limit,
                MAX_SCAN,
                &|link| link.workspace == workspace && matches(link, q.as_deref(), tag.as_deref()),
            )
        })
        .await
        .map_err(|_| ApiError::unavailable("shutting down", 1))?
        .map_err(|e| ApiError::from(crate::links::LinkError::from(e)))?;
        // Each count as `GET /api/links/{code}` gives it (live actors answer for theirs).
        let links: Vec<Arc<Link>> = page.links.into_iter().map(Arc::new).collect();
        // At most 16 at once: a counter read of a link without a live actor is a blocking task.
        let mut counts = Vec::with_capacity(links.len());
        for chunk in links.chunks(16) {
            counts.extend(
                futures_util::future::join_all(chunk.iter().map(|l| state.links.snapshot(l))).await,
            );
        }
        let mut out = Vec::with_capacity(links.len());
        for (link, count) in links.into_iter().zip(counts) {
            out.push((link, count?));
        }
        Ok((out, page.next))
    }
}

/// The caller's links (an admin's or read key's: every link), newest first
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(
        ("limit" = Option<u32>, Query, description = "Links per page, 1 to 1000 (default 50)"),
        ("cursor" = Option<String>, Query, description = "The `next` of the previous page"),
        ("q" = Option<String>, Query, description = "Only links whose code, URL or title holds this (any case)"),
        ("tag" = Option<String>, Query, description = "Only links with this tag"),
    ),
    responses(
        (status_code = 200, description = "A page of links", body = schemas::LinkPage),
        E400, E401, E429, E503,
    )
)]
impl ListLinks {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.list(req).await {
            Ok((links, next)) => res.render(Json(Listing {
                links: links
                    .iter()
                    .map(|(link, snapshot)| link_body(&self.0, link, Some(snapshot)))
                    .collect(),
                next: next.map(|c| c.to_string()),
            })),
            Err(e) => e.write(res),
        }
    }
}

/// `PATCH /api/links/{code}`: changes any of the fields `POST /api/links` takes but the code.
pub struct PatchLink(pub Arc<AppState>);

impl PatchLink {
    async fn patch(&self, req: &mut Request) -> Result<(Arc<Link>, Snapshot), ApiError> {
        let state = &self.0;
        let (caller, link) = owned_link(state, req).await?;
        require_write(&caller)?;
        let request: LinkFields = read_json(req).await?;
        if request.domain.is_some() {
            return Err(ApiError::bad_request(
                "the domain of a link cannot be changed (links already shared use it); create a \
                 new link on the domain you want instead",
            ));
        }
        if request.code.is_some() {
            return Err(ApiError::bad_request(
                "the code of a link cannot be changed (links already shared use it); create a \
                 new link with the code you want instead",
            ));
        }
        let mut patch = request.check().map_err(ApiError::bad_request)?;
        if let Some(password) = &request.password {
            patch.password = Some(password_hash(password.as_deref()).await?);
        }
        let change: LinkChange = Box::new(move |link| Ok(patch.apply(link)));
        let missing = || ApiError::not_found("no such link");
        let updated = state
            .links
            .update(&link.code, change)
            .await?
            .ok_or_else(missing)?
            .map_err(ApiError::bad_request)?;
        state
            .audit(
                &caller,
                &updated.workspace,
                "link.updated",
                updated.code.as_str(),
                Some(super::api::link_json(state, &link)),
                Some(super::api::link_json(state, &updated)),
            )
            .await;
        let snapshot = state.links.snapshot(&updated).await?;
        Ok((updated, snapshot))
    }
}

/// Change a link: a field left out stays, `null` clears it
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(("code" = String, Path, description = "The short code")),
    request_body(content = LinkFields, description = "Any field but `code`"),
    responses(
        (status_code = 200, description = "The changed link", body = schemas::Link),
        E400, E401, E429, E403, E404, E413, E415, E503,
    )
)]
impl PatchLink {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.patch(req).await {
            Ok((link, snapshot)) => res.render(Json(link_body(&self.0, &link, Some(&snapshot)))),
            Err(e) => e.write(res),
        }
    }
}

/// `DELETE /api/links/{code}`: `204`; the code answers `404` everywhere from then on.
pub struct DeleteLink(pub Arc<AppState>);

/// Delete a link: its code answers 404 everywhere from then on
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(("code" = String, Path, description = "The short code")),
    responses((status_code = 204, description = "Deleted"), E401, E429, E403, E404, E503)
)]
impl DeleteLink {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let result = async {
            let (caller, link) = owned_link(state, req).await?;
            require_write(&caller)?;
            if state.links.delete(&link).await? {
                state
                    .audit(
                        &caller,
                        &link.workspace,
                        "link.deleted",
                        link.code.as_str(),
                        Some(super::api::link_json(state, &link)),
                        None,
                    )
                    .await;
                Ok(())
            } else {
                Err(ApiError::not_found("no such link"))
            }
        }
        .await;
        match result {
            Ok(()) => {
                res.status_code(StatusCode::NO_CONTENT);
            }
            Err(e) => e.write(res),
        }
    }
}
