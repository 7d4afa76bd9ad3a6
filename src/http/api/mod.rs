//! The JSON API for link owners: create a link, read it with its count and stats, list its
//! clicks. Listing, changing and deleting links are in `manage`.

mod clicks;
mod export;

use std::sync::Arc;

use salvo::{
    http::{StatusCode, header},
    prelude::*,
};
use serde::Serialize;

use super::openapi::{E400, E401, E403, E404, E409, E413, E415, E429, E503, schemas};
use super::{
    ApiError, AppState, authenticate, client_ip, code_param,
    fields::{LinkFields, hash_password},
    limit::Limited,
    read_json_object, require_write,
};
use crate::analytics::StatsAnswer;
use crate::{
    analytics::StatsQuery,
    domain::{Link, RedirectRule, ShortCode, format_ms, now_ms},
    keys::Caller,
    links::{Snapshot, frame::Analytics},
};
use export::export_csv;
use salvo_oapi::endpoint;

/// The largest request body taken.
pub const MAX_BODY: usize = 64 * 1024;
/// How many times a generated code is drawn again when it is taken.
const GENERATE_ATTEMPTS: usize = 8;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RuleOut<'a> {
    device: Option<crate::domain::RuleDevice>,
    country: Option<&'a str>,
    url: &'a str,
}

impl<'a> RuleOut<'a> {
    fn of(rule: &'a RedirectRule) -> Self {
        Self {
            device: rule.device,
            country: rule.country.as_deref(),
            url: rule.url.as_str(),
        }
    }
}

/// A link as the API shows it (`GET /api/links/{code}`, and each entry of a listing).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LinkBody<'a> {
    code: &'a str,
    domain: String,
    url: &'a str,
    short_url: String,
    stats_url: String,
    realtime_url: String,
    qr_url: String,
    created_at: String,
    updated_at: String,
    title: Option<&'a str>,
    tags: &'a [String],
    expires_at: Option<String>,
    expired_url: Option<&'a str>,
    max_visits: Option<u64>,
    redirect_status: u16,
    forward_query: bool,
    public_stats: bool,
    password_protected: bool,
    rules: Vec<RuleOut<'a>>,
    click_count: u64,
    /// The visits another shortener counted before the link was imported (never part of
    /// `click_count`); `null` for a link made here.
    imported_click_count: Option<u64>,
    last_click: Option<Analytics<'a>>,
}

/// The redirect status of a link without its own.
pub const DEFAULT_REDIRECT_STATUS: u16 = 302;

pub(super) fn link_body<'a>(
    state: &AppState,
    link: &'a Link,
    snapshot: Option<&'a Snapshot>,
) -> LinkBody<'a> {
    let base = state.base_of(link);
    let code = link.code.code();
    // The API stays on the default domain's base; a link elsewhere is named by `?domain=`.
    let on = link
        .code
        .domain()
        .map(|d| format!("?domain={d}"))
        .unwrap_or_default();
    LinkBody {
        code,
        domain: state.domain_name_of(link).to_owned(),
        url: link.target.as_str(),
        short_url: format!("{base}/{code}"),
        stats_url: format!("{base}/links/{code}"),
        realtime_url: format!("{base}/realtime/{code}"),
        qr_url: format!("{}/api/links/{code}/qr{on}", state.base_url),
        created_at: format_ms(link.created_at),
        updated_at: format_ms(link.updated_at),
        title: link.title.as_deref(),
        tags: &link.tags,
        expires_at: link.expires_at.map(format_ms),
        expired_url: link.expired_url.as_ref().map(|u| u.as_str()),
        max_visits: link.max_visits,
        redirect_status: link.redirect_status.unwrap_or(DEFAULT_REDIRECT_STATUS),
        forward_query: link.forward_query,
        public_stats: link.public_stats,
        password_protected: link.password.is_some(),
        rules: link.rules.iter().map(RuleOut::of).collect(),
        click_count: snapshot.map_or(0, |s| s.count),
        imported_click_count: link.imported_click_count,
        last_click: snapshot.and_then(|s| s.last.as_deref().map(|e| Analytics::of(code, e))),
    }
}

/// A link as the audit log and the events feed keep it: as the API shows it, without its
/// count, with its owner.
pub(crate) fn link_json(state: &AppState, link: &Link) -> serde_json::Value {
    let mut value = serde_json::to_value(link_body(state, link, None)).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.remove("clickCount");
        fields.remove("lastClick");
        fields.insert("owner".into(), serde_json::Value::from(link.owner.as_str()));
    }
    value
}

/// Reads a JSON object body of at most [`MAX_BODY`] bytes into `T` (see
/// [`read_json_object`]).
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    req: &mut Request,
) -> Result<T, ApiError> {
    read_json_object(req, MAX_BODY).await
}

/// Hashes a password sent in a body off the async threads (`None`: none sent or removed).
pub(super) async fn password_hash(password: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(password) = password.map(str::to_owned) else {
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|_| ApiError::unavailable("shutting down", 1))?
        .map(Some)
        .map_err(|e| {
            tracing::error!(cause = %e, "a password could not be hashed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        })
}

pub struct CreateLink(pub Arc<AppState>);

impl CreateLink {
    async fn create(&self, req: &mut Request) -> Result<(Caller, Link), ApiError> {
        let state = &self.0;
        let caller = authenticate(state, req).await?;
        require_write(&caller)?;
        check_create_rate(state, req, &caller)?;
        let request: LinkFields = read_json(req).await?;
        let mut patch = request.check().map_err(ApiError::bad_request)?;
        let Some(target) = patch.target.take() else {
            return Err(ApiError::bad_request(
                "invalid JSON body: missing field `url`",
            ));
        };
        let domain = domain_named(state, request.domain.as_deref(), &caller).await?;
        let chosen = request
            .code
            .as_deref()
            .map(|c| ShortCode::parse(c).map_err(|e| ApiError::bad_request(e.to_string())))
            .transpose()?;
        patch.password = Some(password_hash(request.password.flatten().as_deref()).await?);
        let new_link = |code: ShortCode| {
            let mut link = Link::new(
                ShortCode::on(domain.as_ref(), &code),
                target.clone(),
                caller.key_id.clone(),
                now_ms(),
            );
            link.workspace = caller.workspace.clone();
            patch.apply(&link)
        };
        if let Some(code) = chosen {
            let link = new_link(code);
            if state.links.create(link.clone()).await? {
                return Ok((caller, link));
            }
            return Err(code_taken(state, &link.code).await);
        }
        for _ in 0..GENERATE_ATTEMPTS {
            let link = new_link(ShortCode::generate());
            if state.links.create(link.clone()).await? {
                return Ok((caller, link));
            }
        }
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "could not find a free code, try again",
        ))
    }
}

/// The domain `raw` names for a link (`None`: the default domain, also when `raw` is the
/// default domain's own name); `404` for a name not added, or added by another workspace.
pub(super) async fn domain_named(
    state: &AppState,
    raw: Option<&str>,
    caller: &Caller,
) -> Result<Option<crate::domain::DomainName>, ApiError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let missing = || ApiError::not_found(format!("no such domain: {raw}"));
    if raw.eq_ignore_ascii_case(&state.default_host) {
        return Ok(None);
    }
    let name = crate::domain::DomainName::parse(raw).map_err(|_| missing())?;
    if state.default_domain.as_ref() == Some(&name) {
        return Ok(None);
    }
    if state
        .domains
        .find(name.as_str(), state.links.store())
        .await
        .is_none_or(|d| !crate::http::domains::in_workspace(&d, caller))
    {
        return Err(missing());
    }
    Ok(Some(name))
}

/// Takes one creation from the caller's allowances: its address's, then its key's.
pub(super) fn check_create_rate(
    state: &AppState,
    req: &Request,
    caller: &Caller,
) -> Result<(), ApiError> {
    // The operator's admin keys are not limited: an admin filling a new instance, or a load
    // test's setup(), may create as fast as the store takes them. People are.
    if !caller.is_admin() || caller.role.is_some() {
        let limits = state.client_limits();
        if let Some(ip) = client_ip(state, req) {
            limits.check_ip(ip).map_err(Limited::into_error)?;
        }
        limits
            .check_key(&caller.key_id)
            .map_err(Limited::into_error)?;
    }
    Ok(())
}

/// The `409` for a chosen code that is taken, saying until when when a deleted link holds it.
pub(super) async fn code_taken(state: &AppState, code: &ShortCode) -> ApiError {
    let store = state.links.store().clone();
    let held_code = code.clone();
    let held = tokio::task::spawn_blocking(move || store.gone_until(held_code.as_str()))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .filter(|until| *until > now_ms());
    let message = match held {
        Some(until) => format!(
            "code '{}' belonged to a deleted link and is held until {} (so a link \
             already shared never points somewhere new)",
            code.code(),
            format_ms(until)
        ),
        None => format!("code '{}' is already taken", code.code()),
    };
    ApiError::new(StatusCode::CONFLICT, message)
}

/// Create a link
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    request_body(content = LinkFields, description = "`url` is required; `code` is drawn when left out"),
    responses(
        (status_code = 201, description = "The link made; `Location` names it", body = schemas::Link),
        E400, E401, E403, E409, E413, E415, E429, E503,
    )
)]
impl CreateLink {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.create(req).await {
            Ok((caller, link)) => {
                let state = &self.0;
                state
                    .audit(
                        &caller,
                        &link.workspace,
                        "link.created",
                        link.code.as_str(),
                        None,
                        Some(link_json(state, &link)),
                    )
                    .await;
                let location = match link.code.domain() {
                    None => format!("/api/links/{}", link.code),
                    Some(domain) => format!("/api/links/{}?domain={domain}", link.code.code()),
                };
                res.status_code(StatusCode::CREATED);
                let _ = res.add_header(header::LOCATION, location, true);
                res.render(Json(link_body(&self.0, &link, None)));
            }
            Err(e) => e.write(res),
        }
    }
}

/// Finds the link named in the path if the caller may see it. Another owner's link answers
/// 404 like a missing one, so codes cannot be probed.
pub(super) async fn owned_link(
    state: &AppState,
    req: &Request,
) -> Result<(Caller, Arc<Link>), ApiError> {
    let caller = authenticate(state, req).await?;
    let missing = || ApiError::not_found("no such link");
    let domain = domain_named(state, req.query::<String>("domain").as_deref(), &caller).await?;
    let code = ShortCode::parse(code_param(req)).map_err(|_| missing())?;
    let code = ShortCode::on(domain.as_ref(), &code);
    let link = state.links.find(&code).await?.ok_or_else(missing)?;
    if !caller.may_manage(&link.workspace, &link.owner) {
        return Err(missing());
    }
    Ok((caller, link))
}

pub struct ReadLink(pub Arc<AppState>);

/// A link with its click count and latest click
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(("code" = String, Path, description = "The short code")),
    responses((status_code = 200, description = "The link", body = schemas::Link), E401, E429, E404, E503)
)]
impl ReadLink {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let result = async {
            let (_, link) = owned_link(state, req).await?;
            let snapshot = state.links.snapshot(&link).await?;
            Ok::<_, ApiError>((link, snapshot))
        }
        .await;
        match result {
            Ok((link, snapshot)) => res.render(Json(link_body(state, &link, Some(&snapshot)))),
            Err(e) => e.write(res),
        }
    }
}

/// `GET /api/links/{code}/stats?from=&to=&interval=minute|hour|day&tz=`: totals, series and
/// top lists of a window, from the link's aggregates (see `analytics::query`).
pub struct LinkStats(pub Arc<AppState>);

/// Totals, a series and top lists of a time window
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(
        ("code" = String, Path, description = "The short code"),
        ("from" = Option<String>, Query, description = "Window start: an RFC 3339 time or a date (default: 7 days before `to`)"),
        ("to" = Option<String>, Query, description = "Window end: an RFC 3339 time or a date (default: now)"),
        ("interval" = Option<String>, Query, description = "Series bucket: `minute`, `hour` or `day`"),
        ("tz" = Option<String>, Query, description = "IANA time zone of the buckets and dates (default UTC)"),
    ),
    responses(
        (status_code = 200, description = "The window's figures", body = StatsAnswer),
        E400, E401, E429, E404, E503,
    )
)]
impl LinkStats {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let result = async {
            let (_, link) = owned_link(state, req).await?;
            let param = |name: &str| req.query::<String>(name);
            let (from, to, interval, tz) =
                (param("from"), param("to"), param("interval"), param("tz"));
            let query = StatsQuery::parse(
                from.as_deref(),
                to.as_deref(),
                interval.as_deref(),
                tz.as_deref(),
            )
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
            state
                .links
                .stats(&link, query)
                .await?
                .map_err(|e| ApiError::bad_request(e.to_string()))
        }
        .await;
        match result {
            Ok(answer) => res.render(Json(answer)),
            Err(e) => e.write(res),
        }
    }
}

/// `GET /api/links/{code}/clicks?limit=N&before=SEQ`: stored clicks, newest first; with
/// `Accept: text/csv`, every stored click, oldest first, streamed (see [`export_csv`]).
pub struct ListClicks(pub Arc<AppState>);

/// Stored clicks, newest first; or all of them as CSV
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(
        ("code" = String, Path, description = "The short code"),
        ("limit" = Option<u32>, Query, description = "Clicks per page, 1 to 1000 (default 100)"),
        ("before" = Option<u64>, Query, description = "Only clicks numbered below this (the next page)"),
        ("Accept" = Option<String>, Header, description = "`text/csv`: every stored click, oldest first, streamed"),
    ),
    responses(
        (status_code = 200, description = "A page of clicks (JSON), or the CSV export", content(
            ("application/json" = schemas::ClickPage),
            ("text/csv" = String),
        )),
        E400, E401, E429, E404, E503,
    )
)]
impl ListClicks {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let csv = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(clicks::accepts_csv);
        if csv {
            match clicks::settled_link(state, req).await {
                Ok(link) => export_csv(state, &link, res),
                Err(e) => e.write(res),
            }
            return;
        }
        match clicks::page(state, req).await {
            Ok((link, page)) => clicks::render_page(&link, &page, res),
            Err(e) => e.write(res),
        }
    }
}
