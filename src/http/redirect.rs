//! `GET /{code}`: answer `302` (or the link's status) at once and cast the click; `HEAD /{code}`
//! answers the same without counting. In strict durability the answer waits for the click's
//! fsync. A plain link takes the short path; one with an expiry, a visit limit, rules, a
//! forwarded query or a password takes [`Redirect::managed`]: a visit limit makes the answer
//! wait for the actor to number the click (or refuse it), so it is exact.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use salvo::{
    http::{HeaderValue, Method, StatusCode, header},
    prelude::*,
};
use tokio::sync::oneshot;
use tracing::error;

use super::openapi::{E503, schemas};
use super::{AppState, client_ip, code_param, fields::verify_password, pages};
use crate::{
    analytics::{anonymise_ip, clip},
    domain::{Link, now_ms, rule_device},
    links::Click,
    store::Durability,
};
use salvo_oapi::endpoint;

const MAX_USER_AGENT: usize = 512;
const MAX_REFERER: usize = 1024;
/// How long a strict-mode redirect waits for its fsync before giving up with a 503.
const STRICT_WAIT: Duration = Duration::from_secs(5);

pub struct Redirect {
    pub state: Arc<AppState>,
    /// False for HEAD: answer the same, count nothing.
    pub count: bool,
}

impl Redirect {
    fn click(&self, req: &Request) -> Click {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        new_click(&self.state, client_ip(&self.state, req), header)
    }

    /// Casts a click of the plain `link`: whether the redirect may be answered (in strict
    /// durability, whether the click was stored).
    pub(super) async fn cast(&self, link: &Arc<Link>, mut click: Click) -> bool {
        let fsynced = self.strict_ack(&mut click);
        let taken = self.state.links.click(link, click).await;
        self.stored(taken, fsynced).await
    }
}

/// A click from `client` with what the request's headers say (`header` finds a header's value
/// by its lower-case name, `None` when absent or not visible ASCII). Both redirect lanes build
/// their clicks here.
pub(super) fn new_click<'a>(
    state: &AppState,
    client: Option<IpAddr>,
    header: impl Fn(&str) -> Option<&'a str>,
) -> Click {
    let referer = header("referer").unwrap_or("");
    // The proxy's header first, else the country database, with the full address.
    let country = state
        .config
        .country_header
        .as_deref()
        .and_then(|name| {
            let value = header(name)?.trim();
            (value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic()))
                .then(|| value.to_ascii_uppercase())
        })
        .or_else(|| state.country_db.as_ref()?.country(client?));
    let ip = client.map(|ip| {
        if state.config.store_full_ip {
            ip_text(ip)
        } else {
            ip_text(anonymise_ip(ip))
        }
    });
    Click {
        at: now_ms(),
        ip,
        user_agent: clip(header("user-agent").unwrap_or(""), MAX_USER_AGENT),
        referer: (!referer.is_empty()).then(|| clip(referer, MAX_REFERER)),
        country,
        ack: None,
        admit: None,
    }
}

/// `ip` as `Display` writes it; an IPv4 address without the formatting machinery, which took
/// more than half of building a click.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

#[async_trait]
impl Handler for Redirect {
    async fn handle(
        &self,
        req: &mut Request,
        _depot: &mut Depot,
        res: &mut Response,
        _ctrl: &mut FlowCtrl,
    ) {
        self.serve(code_param(req), req, res).await;
    }
}

impl Redirect {
    /// The redirect of `code` (the path's one segment).
    pub(super) async fn serve(&self, code: &str, req: &Request, res: &mut Response) {
        if let Err(e) = super::check_host(&self.state, super::request_host(req)) {
            return e.write(res);
        }
        let domain = super::domain_of_host(&self.state, super::request_host(req));
        // An unknown code on a domain with a `notFoundUrl` goes there.
        let missing = |res: &mut Response| match domain
            .as_ref()
            .and_then(|d| d.not_found_url.as_deref())
            .and_then(|u| HeaderValue::from_str(u).ok())
        {
            Some(location) => redirect(res, StatusCode::FOUND, location),
            None => pages::not_found(res),
        };
        let live = match &domain {
            None => self.state.links.find_live(code),
            Some(_) => None,
        };
        let link = match live {
            Some(link) => link,
            None => {
                let Some(key) = super::key_on(domain.as_deref(), code) else {
                    return missing(res);
                };
                match self.state.links.find(&key).await {
                    Ok(Some(link)) => link,
                    Ok(None) => return missing(res),
                    Err(e) => return super::ApiError::from(e).write(res),
                }
            }
        };
        if !link.is_plain() {
            if link.password.is_some() {
                // The form first; its answer (a POST) is what redirects and counts.
                return pages::password_form(res, link.code.code(), false);
            }
            return self.managed(req, res, &link, None).await;
        }
        let Ok(location) = HeaderValue::from_str(link.target.as_str()) else {
            // Cannot happen: targets are ASCII without control characters by construction.
            error!(code = %link.code, "stored target is not a valid header value");
            res.status_code(StatusCode::INTERNAL_SERVER_ERROR);
            return;
        };
        if self.count && !self.cast(&link, self.click(req)).await {
            return super::ApiError::unavailable("the click could not be stored", 1).write(res);
        }
        redirect(res, status_of(&link), location);
    }
}

/// `GET` and `HEAD` of a path only `/{code}` can take (see `super::is_code_path`), served
/// without salvo's path and method matching and without a hoop: the header limits are checked
/// here, and the time is observed as [`super::Timed`] would.
pub struct FastLane {
    pub get: Redirect,
    pub head: Redirect,
}

#[async_trait]
impl Handler for FastLane {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let sizes = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len());
        if let Err(e) = super::limit::check_header_sizes(sizes) {
            return e.write(res);
        }
        let started = Instant::now();
        let path = req.uri().path();
        let code = path.split('/').find(|s| !s.is_empty()).unwrap_or("");
        let redirect = if req.method() == Method::HEAD {
            &self.head
        } else {
            &self.get
        };
        redirect.serve(code, req, res).await;
        self.get.state.metrics.redirect_took(started.elapsed());
    }
}

/// The status a link redirects with.
pub(super) fn status_of(link: &Link) -> StatusCode {
    link.redirect_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::FOUND)
}

fn redirect(res: &mut Response, status: StatusCode, location: HeaderValue) {
    res.status_code(status);
    let headers = res.headers_mut();
    headers.insert(header::LOCATION, location);
    // Said explicitly so HEAD answers carry it too (load tools wait for a length).
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    // Every click must reach us: no caching of the redirect by browsers or proxies.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=0, no-store"),
    );
}

/// `target` with the short URL's query string appended (before any fragment).
fn with_query(target: &str, query: Option<&str>) -> String {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return target.to_owned();
    };
    let (base, fragment) = match target.find('#') {
        Some(at) => target.split_at(at),
        None => (target, ""),
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{query}{fragment}")
}

impl Redirect {
    /// In strict durability, a click carries a sender for its fsync.
    fn strict_ack(&self, click: &mut Click) -> Option<oneshot::Receiver<()>> {
        if self.state.config.durability != Durability::Strict {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        click.ack = Some(tx);
        Some(rx)
    }

    /// In default durability a click that cannot be taken (the store failed, the backlog is
    /// full) is dropped and counted in the metrics; the visitor still gets the redirect. In
    /// strict durability the redirect waits for the click's fsync, so a click that cannot be
    /// stored is a 503 (false here).
    async fn stored(
        &self,
        taken: Result<(), crate::metrics::DropReason>,
        fsynced: Option<oneshot::Receiver<()>>,
    ) -> bool {
        match fsynced {
            None => true,
            Some(fsynced) => {
                taken.is_ok()
                    && matches!(tokio::time::timeout(STRICT_WAIT, fsynced).await, Ok(Ok(())))
            }
        }
    }

    /// What a link that is no longer available answers: its `expiredUrl`, else `410`.
    fn gone(res: &mut Response, link: &Link) {
        match link
            .expired_url
            .as_ref()
            .and_then(|u| HeaderValue::from_str(u.as_str()).ok())
        {
            Some(location) => redirect(res, StatusCode::FOUND, location),
            None => pages::gone(res),
        }
    }

    /// The redirect of a link with more than a target: expiry, a visit limit, rules, the query
    /// string forwarded, a password (`status` is then the answer to its form).
    pub(super) async fn managed(
        &self,
        req: &Request,
        res: &mut Response,
        link: &Arc<Link>,
        status: Option<StatusCode>,
    ) {
        let state = &self.state;
        if link.expired_at(now_ms()) {
            return Self::gone(res, link);
        }
        let mut click = self.click(req);
        let target = if link.rules.is_empty() {
            &link.target
        } else {
            let agent = state.links.classify(&click.user_agent);
            let device = rule_device(&agent.os, agent.device);
            link.rules
                .iter()
                .find(|r| r.matches(device, click.country.as_deref()))
                .map_or(&link.target, |r| &r.url)
        };
        let target = if link.forward_query {
            with_query(target.as_str(), req.uri().query())
        } else {
            target.as_str().to_owned()
        };
        let Ok(location) = HeaderValue::from_str(&target) else {
            // A query string a client sent that is not a valid header value.
            return super::ApiError::bad_request("the query string cannot be forwarded").write(res);
        };
        let status = status.unwrap_or_else(|| status_of(link));
        if !self.count {
            // HEAD: the answer a GET would get now, without counting.
            if let Some(max) = link.max_visits {
                match state.links.snapshot(link).await {
                    Ok(s) if s.count >= max => return Self::gone(res, link),
                    Ok(_) => {}
                    Err(e) => return super::ApiError::from(e).write(res),
                }
            }
            return redirect(res, status, location);
        }
        let admitted = link.max_visits.map(|_| {
            let (tx, rx) = oneshot::channel();
            click.admit = Some(tx);
            rx
        });
        let fsynced = self.strict_ack(&mut click);
        let taken = state.links.click(link, click).await;
        if let Some(admitted) = admitted {
            let answer = tokio::time::timeout(STRICT_WAIT, admitted).await;
            if !matches!(answer, Ok(Ok(true))) {
                // Refused (past the limit), or never taken: deleted meanwhile, or not countable
                // now (the store failed, the backlog is full, the actor cannot start).
                return match (state.links.find(&link.code).await, answer) {
                    (Ok(None), _) => pages::not_found(res),
                    (Ok(Some(_)), Ok(Ok(false))) => Self::gone(res, link),
                    (Ok(Some(_)), _) => {
                        super::ApiError::unavailable("the click could not be counted", 1)
                            .write(res);
                    }
                    (Err(e), _) => super::ApiError::from(e).write(res),
                };
            }
        }
        if !self.stored(taken, fsynced).await {
            return super::ApiError::unavailable("the click could not be stored", 1).write(res);
        }
        redirect(res, status, location);
    }
}

/// A method `/{code}` does not have: `405`; `POST` is allowed on a protected link (its form).
pub struct CodeNotAllowed(pub Arc<AppState>);

#[async_trait]
impl Handler for CodeNotAllowed {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        if let Err(e) = super::check_host(&self.0, super::request_host(req)) {
            return e.write(res);
        }
        let domain = super::domain_of_host(&self.0, super::request_host(req));
        let protected = match super::key_on(domain.as_deref(), code_param(req)).ok_or(()) {
            Ok(code) => matches!(
                self.0.links.find(&code).await,
                Ok(Some(link)) if link.password.is_some()
            ),
            Err(_) => false,
        };
        let allow = if protected {
            "GET, HEAD, POST"
        } else {
            super::GET_HEAD
        };
        super::NotAllowed(allow).answer(req, res);
    }
}

/// How long a password check waits for its turn before the visitor is told to come back.
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `POST /{code}`: the password form's answer. A wrong password is `401` with the form again
/// and counts nothing; the right one counts the click and redirects (`303`, so the password
/// is not sent on to the target).
pub struct Unlock {
    pub redirect: Redirect,
    /// Password checks running at once (`--password-checks`).
    pub checks: Arc<tokio::sync::Semaphore>,
}

/// The answer to a protected link's password form
#[endpoint(
    tags("public"),
    parameters(("code" = String, Path, description = "The short code")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`password=...`"),
    responses(
        (status_code = 303, description = "The right password: counted, redirected to the target", headers(("Location" = String))),
        (status_code = 401, description = "A wrong password: the form again", content_type = "text/html", body = String),
        (status_code = 404, description = "No such link", content_type = "text/html", body = String),
        (status_code = 405, description = "The link has no password", body = schemas::Error),
        (status_code = 410, description = "Expired or past its visit limit", content_type = "text/html", body = String),
        (status_code = 429, description = "Too many password tries from this address (`Retry-After`)", body = schemas::Error),
        E503,
    )
)]
impl Unlock {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.redirect.state;
        if let Err(e) = super::check_host(state, super::request_host(req)) {
            return e.write(res);
        }
        let domain = super::domain_of_host(state, super::request_host(req));
        let Some(code) = super::key_on(domain.as_deref(), code_param(req)) else {
            return pages::not_found(res);
        };
        let link = match state.links.find(&code).await {
            Ok(Some(link)) => link,
            Ok(None) => return pages::not_found(res),
            Err(e) => return super::ApiError::from(e).write(res),
        };
        let Some(hash) = link.password.clone() else {
            return super::NotAllowed(super::GET_HEAD).answer(req, res);
        };
        // Each try takes from its address's allowance (`--password-tries-per-minute`); one
        // past it is refused before it costs a check, so one client's guesses cannot hold up
        // every other visitor's.
        if let Some(ip) = client_ip(state, req)
            && let Err(limited) = state.client_limits().try_password(ip)
        {
            return limited.into_error().write(res);
        }
        let password = req.form::<String>("password").await.unwrap_or_default();
        // A turn among the checks running at once, waited for a bounded time: under a flood
        // from many addresses a visitor is told to come back rather than kept waiting.
        let turn = tokio::time::timeout(CHECK_WAIT, self.checks.acquire()).await;
        let Ok(Ok(_turn)) = turn else {
            return super::ApiError::unavailable("too many password checks at once", 1).write(res);
        };
        let right = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false);
        if !right {
            return pages::password_form(res, link.code.code(), true);
        }
        self.redirect
            .managed(req, res, &link, Some(StatusCode::SEE_OTHER))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "192.168.10.0",
            "255.255.255.255",
            "::1",
            "2001:db8::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for n in (0..=u32::MAX).step_by(65_521) {
            let ip = IpAddr::from(n.to_be_bytes());
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
