//! `PATCH /api/links/bulk` and `DELETE /api/links/bulk`: the links named by `codes` (on the
//! `?domain=` domain, as the single-link routes) or carrying `tag` (on that domain too), each
//! changed or deleted as its single route does, and answered per link.

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde::{Deserialize, Serialize};

use super::super::openapi::{E400, E401, E403, E413, E415, E429, E503, schemas};
use super::{MAX_BULK, MAX_BULK_BODY, read_json_value};
use crate::{
    domain::{Link, ShortCode},
    http::{
        ApiError, AppState,
        api::{LinkBody, domain_named, link_body, link_json, password_hash},
        authenticate,
        fields::LinkFields,
        require_write,
    },
    keys::{Caller, Scope},
    links::Snapshot,
    store::LinkChange,
};
use salvo_oapi::endpoint;

/// Index entries one tag selection reads at most per page (see `Store::list_links`).
const MAX_SCAN: usize = 10_000;

/// Which links a bulk change is for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Selection {
    #[serde(default)]
    codes: Option<Vec<String>>,
    #[serde(default)]
    tag: Option<String>,
    /// `PATCH` only: the fields to set, as `PATCH /api/links/{code}` takes them.
    #[serde(default)]
    set: Option<LinkFields>,
}

/// A link selected, or a code that names none the caller may see.
enum Selected {
    Found(Arc<Link>),
    Missing(String),
}

/// The links a selection names, in its order (a tag's: newest first).
async fn select(
    state: &AppState,
    req: &Request,
    caller: &Caller,
    selection: &Selection,
) -> Result<Vec<Selected>, ApiError> {
    let domain = domain_named(state, req.query::<String>("domain").as_deref(), caller).await?;
    match (&selection.codes, &selection.tag) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give either `codes` or `tag`, not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "give the links to change: `codes` (a list of codes) or `tag`",
        )),
        (Some(codes), None) => {
            if codes.len() > MAX_BULK {
                return Err(too_many(codes.len()));
            }
            let mut out = Vec::with_capacity(codes.len());
            for raw in codes {
                let found = match ShortCode::parse(raw) {
                    Ok(code) => state
                        .links
                        .find(&ShortCode::on(domain.as_ref(), &code))
                        .await?
                        .filter(|l| caller.may_manage(&l.workspace, &l.owner)),
                    Err(_) => None,
                };
                out.push(found.map_or_else(|| Selected::Missing(raw.clone()), Selected::Found));
            }
            Ok(out)
        }
        (None, Some(tag)) => {
            let tag = tag.trim().to_owned();
            if tag.is_empty() {
                return Err(ApiError::bad_request("`tag` must not be empty"));
            }
            let links = tagged(state, caller, domain.map(|d| d.to_string()), tag).await?;
            Ok(links
                .into_iter()
                .map(|l| Selected::Found(Arc::new(l)))
                .collect())
        }
    }
}

/// The caller's links on `domain` (`None`: the default one) carrying `tag`, newest first; `413`
/// for more than [`MAX_BULK`].
async fn tagged(
    state: &AppState,
    caller: &Caller,
    domain: Option<String>,
    tag: String,
) -> Result<Vec<Link>, ApiError> {
    let owner = (caller.scope == Scope::Links).then(|| caller.key_id.clone());
    let workspace = caller.workspace.clone();
    let store = state.links.store().clone();
    let found = tokio::task::spawn_blocking(move || {
        let keep = |link: &Link| {
            link.workspace == workspace
                && link.code.domain() == domain.as_deref()
                && link.tags.iter().any(|t| t.eq_ignore_ascii_case(&tag))
        };
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.list_links(
                owner.as_deref(),
                cursor.as_ref(),
                MAX_BULK + 1 - out.len(),
                MAX_SCAN,
                &keep,
            )?;
            out.extend(page.links);
            match page.next {
                Some(next) if out.len() <= MAX_BULK => cursor = Some(next),
                _ => return Ok(out),
            }
        }
    })
    .await
    .map_err(|_| ApiError::unavailable("shutting down", 1))?
    .map_err(|e: crate::store::StoreError| ApiError::from(crate::links::LinkError::from(e)))?;
    if found.len() > MAX_BULK {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the tag is on more than {MAX_BULK} links; change them by `codes`, \
                 {MAX_BULK} at a time"
            ),
        ));
    }
    Ok(found)
}

fn too_many(n: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{n} codes in one request; at most {MAX_BULK}"),
    )
}

/// One link's result.
#[derive(Serialize)]
#[serde(untagged)]
enum ItemOut<'a> {
    Changed {
        code: &'a str,
        status: u16,
        link: Box<LinkBody<'a>>,
    },
    Deleted {
        code: &'a str,
        status: u16,
    },
    Failed {
        code: &'a str,
        status: u16,
        error: String,
    },
}

#[derive(Serialize)]
struct Answer<'a> {
    results: Vec<ItemOut<'a>>,
}

/// The caller, with write rights, and its selection.
async fn caller_and_selection(
    state: &AppState,
    req: &mut Request,
) -> Result<(Caller, Selection), ApiError> {
    let caller = authenticate(state, req).await?;
    require_write(&caller)?;
    let body = read_json_value(req, MAX_BULK_BODY).await?;
    if !body.is_object() {
        return Err(ApiError::bad_request("JSON body must be an object"));
    }
    let selection: Selection = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok((caller, selection))
}

/// `PATCH /api/links/bulk`.
pub struct BulkPatch(pub Arc<AppState>);

/// What became of each link: the changed one with its count, or an error.
type Changed = (String, Result<(Arc<Link>, Option<Snapshot>), ApiError>);

impl BulkPatch {
    async fn patch(&self, req: &mut Request) -> Result<Vec<Changed>, ApiError> {
        let state = &self.0;
        let (caller, selection) = caller_and_selection(state, req).await?;
        let Some(set) = &selection.set else {
            return Err(ApiError::bad_request(
                "give the fields to change in `set` (as PATCH /api/links/{code} takes them)",
            ));
        };
        if set.domain.is_some() || set.code.is_some() {
            return Err(ApiError::bad_request(
                "the code and domain of a link cannot be changed (links already shared use \
                 them)",
            ));
        }
        let mut patch = set.check().map_err(ApiError::bad_request)?;
        if let Some(password) = &set.password {
            patch.password = Some(password_hash(password.as_deref()).await?);
        }
        let selected = select(state, req, &caller, &selection).await?;
        // Every found link's change goes to the writer in one group commit.
        let found: Vec<Arc<Link>> = selected
            .iter()
            .filter_map(|item| match item {
                Selected::Found(link) => Some(link.clone()),
                Selected::Missing(_) => None,
            })
            .collect();
        let changes = found
            .iter()
            .map(|link| {
                let patch = patch.clone();
                let change: LinkChange = Box::new(move |link| Ok(patch.apply(link)));
                (link.code.clone(), change)
            })
            .collect();
        let mut answers = match state.links.update_many(changes).await {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(e) => {
                let e = ApiError::from(e);
                found
                    .iter()
                    .map(|_| {
                        Err(ApiError {
                            status: e.status,
                            message: format!("{} (it may have been changed)", e.message),
                            retry_after: e.retry_after,
                        })
                    })
                    .collect::<Vec<_>>()
            }
        }
        .into_iter();
        let mut out = Vec::with_capacity(selected.len());
        let mut audit = Vec::new();
        for item in selected {
            let link = match item {
                Selected::Missing(code) => {
                    out.push((code, Err(ApiError::not_found("no such link"))));
                    continue;
                }
                Selected::Found(link) => link,
            };
            let answer = answers
                .next()
                .unwrap_or_else(|| Err(ApiError::unavailable("not changed", 1)));
            let result = match answer {
                Ok(Ok(Some(Ok(updated)))) => {
                    audit.push((
                        updated.workspace.clone(),
                        "link.updated",
                        updated.code.as_str().to_owned(),
                        Some(link_json(state, &link)),
                        Some(link_json(state, &updated)),
                    ));
                    Ok(updated)
                }
                Ok(Ok(Some(Err(refused)))) => Err(ApiError::bad_request(refused)),
                Ok(Ok(None)) => Err(ApiError::not_found("no such link")),
                Ok(Err(e)) => Err(ApiError::from(e)),
                Err(e) => Err(e),
            };
            out.push((link.code.code().to_owned(), result));
        }
        state.audit_many(&caller, audit).await;
        // Each with its count, as a single PATCH answers it; at most 16 reads at once (a link
        // without a live actor is read by a blocking task). A count that cannot be read now
        // leaves the answer without it (the change is made).
        let mut counted = Vec::with_capacity(out.len());
        for chunk in out.chunks(16) {
            let reads = chunk.iter().map(|(_, result)| async move {
                match result {
                    Ok(link) => state.links.snapshot(link).await.ok(),
                    Err(_) => None,
                }
            });
            counted.extend(futures_util::future::join_all(reads).await);
        }
        Ok(out
            .into_iter()
            .zip(counted)
            .map(|((code, result), snapshot)| (code, result.map(|link| (link, snapshot))))
            .collect())
    }
}

/// Change many links, by code or by tag
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(("domain" = Option<String>, Query, description = "The domain of the links (default: the default domain)")),
    request_body(content = schemas::BulkPatchRequest, description = "`codes` or `tag`, and `set`"),
    responses(
        (status_code = 200, description = "What became of each link", body = schemas::BulkChangeAnswer),
        E400, E401, E403, E413, E415, E429, E503,
    )
)]
impl BulkPatch {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.patch(req).await {
            Ok(changed) => {
                let results = changed
                    .iter()
                    .map(|(code, result)| match result {
                        Ok((link, snapshot)) => ItemOut::Changed {
                            code,
                            status: 200,
                            link: Box::new(link_body(&self.0, link, snapshot.as_ref())),
                        },
                        Err(e) => ItemOut::Failed {
                            code,
                            status: e.status.as_u16(),
                            error: e.message.clone(),
                        },
                    })
                    .collect();
                res.render(Json(Answer { results }));
            }
            Err(e) => e.write(res),
        }
    }
}

/// `DELETE /api/links/bulk`.
pub struct BulkDelete(pub Arc<AppState>);

impl BulkDelete {
    async fn delete(
        &self,
        req: &mut Request,
    ) -> Result<Vec<(String, Result<(), ApiError>)>, ApiError> {
        let state = &self.0;
        let (caller, selection) = caller_and_selection(state, req).await?;
        if selection.set.is_some() {
            return Err(ApiError::bad_request("`set` is for PATCH, not DELETE"));
        }
        let selected = select(state, req, &caller, &selection).await?;
        let mut out = Vec::with_capacity(selected.len());
        let mut audit = Vec::new();
        for item in selected {
            let link = match item {
                Selected::Missing(code) => {
                    out.push((code, Err(ApiError::not_found("no such link"))));
                    continue;
                }
                Selected::Found(link) => link,
            };
            let result = match state.links.delete(&link).await {
                Ok(true) => {
                    audit.push((
                        link.workspace.clone(),
                        "link.deleted",
                        link.code.as_str().to_owned(),
                        Some(link_json(state, &link)),
                        None,
                    ));
                    Ok(())
                }
                Ok(false) => Err(ApiError::not_found("no such link")),
                Err(e) => Err(ApiError::from(e)),
            };
            out.push((link.code.code().to_owned(), result));
        }
        state.audit_many(&caller, audit).await;
        Ok(out)
    }
}

/// Delete many links, by code or by tag
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(("domain" = Option<String>, Query, description = "The domain of the links (default: the default domain)")),
    request_body(content = schemas::BulkDeleteRequest, description = "`codes` or `tag`"),
    responses(
        (status_code = 200, description = "What became of each link (`204`: deleted)", body = schemas::BulkChangeAnswer),
        E400, E401, E403, E413, E415, E429, E503,
    )
)]
impl BulkDelete {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.delete(req).await {
            Ok(deleted) => {
                let results = deleted
                    .iter()
                    .map(|(code, result)| match result {
                        Ok(()) => ItemOut::Deleted { code, status: 204 },
                        Err(e) => ItemOut::Failed {
                            code,
                            status: e.status.as_u16(),
                            error: e.message.clone(),
                        },
                    })
                    .collect();
                res.render(Json(Answer { results }));
            }
            Err(e) => e.write(res),
        }
    }
}
