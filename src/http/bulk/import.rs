//! `POST /api/import?format=bitly|shlink|yourls|kutt&dryRun=true`: another shortener's export
//! (the body, CSV or JSON) read by `transfer::peers` (the parser `linkpulse import` uses too)
//! and created through the bulk path, [`MAX_BULK`] links per group commit, owned by the caller
//! in the caller's workspace. A dry run reports the same and changes nothing.

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde::Serialize;

use super::super::openapi::{E400, E401, E403, E413, E429, E503, schemas};
use super::{MAX_BULK, Made, NewLink, audit_created, create_all};
use crate::{
    domain::{Link, ShortCode, format_ms, now_ms},
    http::{
        ApiError, AppState,
        api::{check_create_rate, domain_named},
        authenticate, read_body, require_write,
    },
    keys::Caller,
    transfer::peers::{self, PeerFormat, PeerReport, Skipped},
};
use salvo_oapi::endpoint;

/// The largest export taken in one request.
pub const MAX_IMPORT_BODY: usize = 16 * 1024 * 1024;

/// A file that cannot be read: the line is named apart too.
#[derive(Serialize)]
struct MalformedBody {
    error: String,
    line: u64,
}

/// `POST /api/import`.
pub struct ImportLinks(pub Arc<AppState>);

enum Failure {
    Api(ApiError),
    Malformed(peers::Malformed),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl ImportLinks {
    async fn import(&self, req: &mut Request) -> Result<PeerReport, Failure> {
        let state = &self.0;
        let caller = authenticate(state, req).await?;
        require_write(&caller)?;
        let format = match req.query::<String>("format") {
            None => {
                return Err(ApiError::bad_request(
                    "name the export's format: ?format=bitly, shlink, yourls or kutt",
                )
                .into());
            }
            Some(raw) => PeerFormat::named(&raw).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "format {raw:?} is not one this import reads: bitly, shlink, yourls or kutt"
                ))
            })?,
        };
        let dry_run = match req.query::<String>("dryRun").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1" | "") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "dryRun must be true or false, not {other:?}"
                ))
                .into());
            }
        };
        let domain = domain_named(state, req.query::<String>("domain").as_deref(), &caller).await?;
        let body = read_body(req, MAX_IMPORT_BODY).await?;
        let parsed = tokio::task::spawn_blocking(move || peers::parse(format, &body))
            .await
            .map_err(|_| ApiError::unavailable("shutting down", 1))?
            .map_err(Failure::Malformed)?;
        if !dry_run {
            check_create_rate(state, req, &caller)?;
        }
        let mut report = PeerReport::new(format, dry_run, &parsed);
        let rows = report.skip_repeated(parsed.links);
        let mut chunk = Vec::with_capacity(MAX_BULK);
        for row in rows {
            let chosen = row.code.is_some();
            let code = row.code.clone().unwrap_or_else(ShortCode::generate);
            let link = row.to_link(
                ShortCode::on(domain.as_ref(), &code),
                &caller.key_id,
                &caller.workspace,
            );
            chunk.push((row.line, NewLink { link, chosen }));
            if chunk.len() == MAX_BULK {
                self.take(&caller, std::mem::take(&mut chunk), &mut report)
                    .await?;
            }
        }
        self.take(&caller, chunk, &mut report).await?;
        Ok(report)
    }

    /// Creates (or, in a dry run, checks) one chunk of links, adding to the report.
    async fn take(
        &self,
        caller: &Caller,
        chunk: Vec<(u64, NewLink)>,
        report: &mut PeerReport,
    ) -> Result<(), ApiError> {
        let state = &self.0;
        if chunk.is_empty() {
            return Ok(());
        }
        if report.dry_run {
            for (line, new) in chunk {
                match taken(state, &new.link.code).await? {
                    Some(reason) if new.chosen => report.skipped.push(Skipped {
                        line,
                        code: new.link.code.code().to_owned(),
                        reason,
                    }),
                    // A generated code that is taken is drawn again.
                    _ => report.created += 1,
                }
            }
            return Ok(());
        }
        let (lines, links): (Vec<u64>, Vec<NewLink>) = chunk.into_iter().unzip();
        let made = create_all(state, links).await;
        let mut created: Vec<Link> = Vec::new();
        for (line, made) in lines.into_iter().zip(made) {
            match made {
                Made::Created(link) => created.push(link),
                Made::Taken(link) => report.skipped.push(Skipped {
                    line,
                    code: link.code.code().to_owned(),
                    reason: taken(state, &link.code)
                        .await?
                        .unwrap_or_else(|| "the code is taken".into()),
                }),
                Made::Failed(e) => report.errors.push(peers::Refused {
                    line,
                    error: e.message,
                }),
            }
        }
        report.created += created.len() as u64;
        let created: Vec<&Link> = created.iter().collect();
        audit_created(state, caller, &created).await;
        Ok(())
    }
}

/// Why `code` cannot be used for a new link, if it cannot.
async fn taken(state: &AppState, code: &ShortCode) -> Result<Option<String>, ApiError> {
    if state.links.find(code).await?.is_some() {
        return Ok(Some("the code is taken".into()));
    }
    let store = state.links.store().clone();
    let key = code.clone();
    let held = tokio::task::spawn_blocking(move || store.gone_until(key.as_str()))
        .await
        .map_err(|_| ApiError::unavailable("shutting down", 1))?
        .map_err(|e| ApiError::from(crate::links::LinkError::from(e)))?
        .filter(|until| *until > now_ms());
    Ok(held.map(|until| {
        format!(
            "held until {} (it belonged to a deleted link)",
            format_ms(until)
        )
    }))
}

/// Import another shortener's export (Bitly, Shlink, YOURLS, Kutt)
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(
        ("format" = String, Query, description = "bitly, shlink, yourls or kutt"),
        ("dryRun" = Option<bool>, Query, description = "Report what would be created, skipped and refused; change nothing"),
        ("domain" = Option<String>, Query, description = "The domain the links are made on (default: the default domain)"),
    ),
    request_body(content = String, description = "The export file as the other shortener writes it (CSV; Kutt: JSON or CSV), at most 16 MiB", content_type = "text/csv"),
    responses(
        (status_code = 200, description = "What was (or would be) created, skipped and refused", body = schemas::ImportReport),
        E400, E401, E403, E413, E429, E503,
    )
)]
impl ImportLinks {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.import(req).await {
            Ok(report) => res.render(Json(report)),
            Err(Failure::Api(e)) => e.write(res),
            Err(Failure::Malformed(m)) => {
                res.status_code(StatusCode::BAD_REQUEST);
                res.render(Json(MalformedBody {
                    error: format!("{m} (nothing was imported)"),
                    line: m.line,
                }));
            }
        }
    }
}
