//! Many links in one request: `POST /api/links/bulk` (create, one group commit of the writer
//! per request), `PATCH /api/links/bulk` and `DELETE /api/links/bulk` (links chosen by code or
//! by tag), each answering per link in order. The rules are those of the single-link routes;
//! the creation rate is taken once per request. Imports from other shorteners
//! (`POST /api/import`, in `import`) create through [`create_all`] too.

mod import;
mod select;

pub use import::ImportLinks;
pub use select::{BulkDelete, BulkPatch};

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde::Serialize;

use super::openapi::{E400, E401, E403, E413, E415, E429, E503, schemas};
use super::{
    ApiError, AppState,
    api::{
        LinkBody, check_create_rate, code_taken, domain_named, link_body, link_json, password_hash,
    },
    authenticate,
    fields::LinkFields,
    read_body, require_json, require_write,
};
use crate::{
    domain::{DomainName, Link, ShortCode, now_ms},
    keys::Caller,
};
use salvo_oapi::endpoint;

/// Links one bulk request may create, change or delete.
pub const MAX_BULK: usize = 1000;
/// The largest bulk request body: a thousand links with every field filled.
const MAX_BULK_BODY: usize = 8 * 1024 * 1024;
/// How many times a generated code is drawn again when it is taken.
const GENERATE_ATTEMPTS: usize = 8;

/// A link to make: with the code its sender chose, or a generated one (drawn again while
/// taken).
pub(super) struct NewLink {
    pub link: Link,
    pub chosen: bool,
}

/// What became of a [`NewLink`].
pub(super) enum Made {
    Created(Link),
    /// The chosen code is taken (or held after a deletion).
    Taken(Link),
    Failed(ApiError),
}

/// Creates `links` through the writer, all of them in one group commit (and those whose
/// generated code was taken in one more per attempt). In the order of `links`. When the store
/// does not answer (a timeout, a store out of reach), each link still waiting is `Failed` with
/// that error: the answer never claims a link was not made when it may have been.
pub(super) async fn create_all(state: &AppState, links: Vec<NewLink>) -> Vec<Made> {
    let mut made: Vec<Option<Made>> = (0..links.len()).map(|_| None).collect();
    let mut todo: Vec<(usize, NewLink)> = links.into_iter().enumerate().collect();
    for attempt in 0..=GENERATE_ATTEMPTS {
        if todo.is_empty() {
            break;
        }
        let batch: Vec<Link> = todo.iter().map(|(_, n)| n.link.clone()).collect();
        let answers = match state.links.create_many(batch).await {
            Ok(answers) => answers,
            Err(e) => {
                let e = ApiError::from(e);
                for (at, _) in todo {
                    made[at] = Some(Made::Failed(ApiError {
                        status: e.status,
                        message: format!("{} (it may have been created)", e.message),
                        retry_after: e.retry_after,
                    }));
                }
                break;
            }
        };
        let mut again = Vec::new();
        for ((at, new), answer) in todo.into_iter().zip(answers) {
            made[at] = Some(match answer {
                Ok(true) => Made::Created(new.link),
                Ok(false) if new.chosen => Made::Taken(new.link),
                Ok(false) if attempt < GENERATE_ATTEMPTS => {
                    let mut link = new.link;
                    link.code = regenerated(&link.code);
                    again.push((
                        at,
                        NewLink {
                            link,
                            chosen: false,
                        },
                    ));
                    continue;
                }
                Ok(false) => Made::Failed(ApiError::unavailable(
                    "could not find a free code, try again",
                    1,
                )),
                Err(e) => Made::Failed(ApiError::from(e)),
            });
        }
        todo = again;
    }
    made.into_iter()
        .map(|m| m.unwrap_or_else(|| Made::Failed(ApiError::unavailable("not created", 1))))
        .collect()
}

/// A new generated code on the domain of `code`.
fn regenerated(code: &ShortCode) -> ShortCode {
    let fresh = ShortCode::generate();
    match code.domain() {
        Some(domain) => ShortCode::on_checked(domain, &fresh),
        None => fresh,
    }
}

/// Writes `link.created` for each of `links` to the audit log, together.
pub(super) async fn audit_created(state: &AppState, caller: &Caller, links: &[&Link]) {
    let entries = links
        .iter()
        .map(|link| {
            (
                link.workspace.clone(),
                "link.created",
                link.code.as_str().to_owned(),
                None,
                Some(link_json(state, link)),
            )
        })
        .collect();
    state.audit_many(caller, entries).await;
}

/// A JSON body of at most `max` bytes, parsed: `415` for another content type, `413` for a
/// larger body, `400` naming what is wrong for anything that is not JSON.
pub(super) async fn read_json_value(
    req: &mut Request,
    max: usize,
) -> Result<serde_json::Value, ApiError> {
    require_json(req)?;
    let body = read_body(req, max).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// One item of a bulk answer.
#[derive(Serialize)]
#[serde(untagged)]
enum CreatedItem<'a> {
    Created {
        status: u16,
        link: Box<LinkBody<'a>>,
    },
    Failed {
        status: u16,
        error: String,
    },
}

#[derive(Serialize)]
struct CreatedAnswer<'a> {
    results: Vec<CreatedItem<'a>>,
}

/// A domain named in a bulk request, as looked up (once a request).
type DomainLookup = (
    Option<String>,
    Result<Option<DomainName>, (StatusCode, String)>,
);

/// What each item became: the link made, or the error as a single creation answers it.
type ItemOutcome = Result<Link, ApiError>;

/// `POST /api/links/bulk`.
pub struct BulkCreate(pub Arc<AppState>);

impl BulkCreate {
    async fn create(&self, req: &mut Request) -> Result<(Caller, Vec<ItemOutcome>), ApiError> {
        let state = &self.0;
        let caller = authenticate(state, req).await?;
        require_write(&caller)?;
        let body = read_json_value(req, MAX_BULK_BODY).await?;
        let items = match body {
            serde_json::Value::Array(items) => items,
            serde_json::Value::Object(mut fields) => {
                let links = fields.remove("links");
                if let Some(other) = fields.keys().next() {
                    return Err(ApiError::bad_request(format!(
                        "invalid JSON body: unknown field `{other}`, expected `links`"
                    )));
                }
                match links {
                    Some(serde_json::Value::Array(items)) => items,
                    Some(_) => {
                        return Err(ApiError::bad_request(
                            "invalid JSON body: `links` must be an array of links",
                        ));
                    }
                    None => {
                        return Err(ApiError::bad_request(
                            "invalid JSON body: missing field `links`",
                        ));
                    }
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    "JSON body must be {\"links\":[...]} or an array of links",
                ));
            }
        };
        if items.len() > MAX_BULK {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} links in one request; at most {MAX_BULK} (send the rest in another)",
                    items.len()
                ),
            ));
        }
        check_create_rate(state, req, &caller)?;
        let mut outcomes: Vec<Option<ItemOutcome>> = Vec::with_capacity(items.len());
        let mut new = Vec::new();
        let mut domains: Vec<DomainLookup> = Vec::new();
        for item in items {
            match self.new_link(&caller, item, &mut domains).await {
                Ok(link) => {
                    new.push((outcomes.len(), link));
                    outcomes.push(None);
                }
                Err(e) => outcomes.push(Some(Err(e))),
            }
        }
        let (places, links): (Vec<usize>, Vec<NewLink>) = new.into_iter().unzip();
        let made = create_all(state, links).await;
        for (at, made) in places.into_iter().zip(made) {
            outcomes[at] = Some(match made {
                Made::Created(link) => Ok(link),
                Made::Taken(link) => Err(code_taken(state, &link.code).await),
                Made::Failed(e) => Err(e),
            });
        }
        let outcomes: Vec<ItemOutcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(ApiError::unavailable("not created", 1))))
            .collect();
        let created: Vec<&Link> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        audit_created(state, &caller, &created).await;
        Ok((caller, outcomes))
    }

    /// One item checked as `POST /api/links` checks its body.
    async fn new_link(
        &self,
        caller: &Caller,
        item: serde_json::Value,
        domains: &mut Vec<DomainLookup>,
    ) -> Result<NewLink, ApiError> {
        let state = &self.0;
        if !item.is_object() {
            return Err(ApiError::bad_request("a link must be a JSON object"));
        }
        let request: LinkFields = serde_json::from_value(item)
            .map_err(|e| ApiError::bad_request(format!("invalid link: {e}")))?;
        let mut patch = request.check().map_err(ApiError::bad_request)?;
        let Some(target) = patch.target.take() else {
            return Err(ApiError::bad_request("invalid link: missing field `url`"));
        };
        // Each domain named is looked up once a request.
        let domain = match domains.iter().find(|(name, _)| *name == request.domain) {
            Some((_, found)) => found.clone(),
            None => {
                let found = domain_named(state, request.domain.as_deref(), caller)
                    .await
                    .map_err(|e| (e.status, e.message));
                domains.push((request.domain.clone(), found.clone()));
                found
            }
        }
        .map_err(|(status, message)| ApiError::new(status, message))?;
        let chosen = request
            .code
            .as_deref()
            .map(|c| ShortCode::parse(c).map_err(|e| ApiError::bad_request(e.to_string())))
            .transpose()?;
        patch.password = Some(password_hash(request.password.flatten().as_deref()).await?);
        let code = chosen.clone().unwrap_or_else(ShortCode::generate);
        let mut link = Link::new(
            ShortCode::on(domain.as_ref(), &code),
            target,
            caller.key_id.clone(),
            now_ms(),
        );
        link.workspace = caller.workspace.clone();
        Ok(NewLink {
            link: patch.apply(&link),
            chosen: chosen.is_some(),
        })
    }
}

/// Create up to 1000 links in one request (one group commit)
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    request_body(content = schemas::BulkCreateRequest, description = "`{\"links\":[...]}` (or a bare array), each as `POST /api/links` takes it"),
    responses(
        (status_code = 200, description = "What became of each link, in order", body = schemas::BulkCreateAnswer),
        E400, E401, E403, E413, E415, E429, E503,
    )
)]
impl BulkCreate {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.create(req).await {
            Ok((_, outcomes)) => {
                let results = outcomes
                    .iter()
                    .map(|o| match o {
                        Ok(link) => CreatedItem::Created {
                            status: 201,
                            link: Box::new(link_body(&self.0, link, None)),
                        },
                        Err(e) => CreatedItem::Failed {
                            status: e.status.as_u16(),
                            error: e.message.clone(),
                        },
                    })
                    .collect();
                res.render(Json(CreatedAnswer { results }));
            }
            Err(e) => e.write(res),
        }
    }
}
