//! The HTTP layer (salvo): one file per area, one mapping from errors to statuses (`error`).
//! Handlers are small structs holding the shared [`AppState`], so the hot redirect path does
//! no per-request lookups of state. [`front`] is the accept loop in front of salvo that gives
//! connections opening with a stream to the lean writer in `sse`; both stream transports open
//! their streams through `stream`.
//!
//! Routing rules, the same on every route: a method a route does not have is `405` with
//! `Allow` and a JSON error; every route that answers `GET` also answers `HEAD` (without a
//! body), except the stream; empty path segments do not count, so a trailing slash (or a
//! doubled one) names the same route as without it, on both stream transports too.

mod api;
mod audit;
mod badge;
mod bulk;
pub mod cors;
pub mod domains;
mod error;
mod events;
mod fields;
pub mod front;
mod health;
mod invitations;
mod keys;
mod lane;
pub mod limit;
mod manage;
mod members;
pub mod oidc;
mod openapi;
mod pages;
mod qr;
mod realtime;
mod redirect;
mod request;
pub mod secure;
pub mod session;
mod sse;
mod stream;
pub mod tls;
mod webhooks;
mod workspaces;

use std::{sync::Arc, time::Instant};

use salvo::{
    http::{HeaderValue, Method, StatusCode, header},
    prelude::*,
};
use salvo_oapi::endpoint;
use tokio_util::sync::CancellationToken;
use tracing::error;

pub use error::ApiError;
pub use fields::{hash_password, verify_password};
pub use invitations::signup_url;
pub(crate) use request::client_addr;
pub use request::{
    authenticate, check_host, client_ip, code_param, domain_of_host, key_on, read_body,
    read_json_object, request_host, require_admin, require_json, require_write,
};

use crate::{
    analytics::CountryDb, config::ServeConfig, keys::ApiKeys, links::Links, metrics::Metrics,
};

/// Everything a handler may need.
pub struct AppState {
    pub links: Links,
    pub keys: Arc<ApiKeys>,
    pub config: ServeConfig,
    /// The public base URL, without a trailing slash.
    pub base_url: String,
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: ends every live stream.
    pub shutdown: CancellationToken,
    /// The domains links may live on besides the default one.
    pub domains: Arc<domains::Domains>,
    /// The default domain: the host of the base URL, when it is a name (not an address).
    pub default_domain: Option<crate::domain::DomainName>,
    /// The host of the base URL as links on the default domain show it (no port).
    pub default_host: String,
    /// The certificates HTTPS serves, and the ACME challenge answers.
    pub certificates: Arc<crate::certs::Certificates>,
    /// Redirects the lane is answering (salvo keeps its own): a clean stop waits for them
    /// before the link actors stop, so no answered click is left uncounted.
    pub lane_requests: tokio_util::task::TaskTracker,
    /// One place per open connection (`--max-connections`).
    pub connections: Arc<tokio::sync::Semaphore>,
    /// What one client may take: link creations per API key and per address, open streams
    /// and connections per address. Read it through [`AppState::client_limits`].
    pub create_limits: limit::ClientLimits,
    /// `--geoip-db`, open.
    pub country_db: Option<Arc<CountryDb>>,
    /// Failed sign-ins per account and per address.
    pub sign_in: session::SignInLimits,
    /// The audit log and the workspaces' live feeds.
    pub events: Arc<crate::events::Events>,
    /// The OpenID Connect provider people may sign in with (`--oidc-issuer`).
    pub oidc: Option<Arc<oidc::OidcProvider>>,
    /// The webhooks this node delivers, and the client that posts them.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl AppState {
    /// Writes a change to the audit log (and the workspace's live feed); `before` and
    /// `after` are the thing as the API shows it (`None`: it did not exist).
    pub async fn audit(
        &self,
        caller: &crate::keys::Caller,
        workspace: &str,
        action: &str,
        target: &str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) {
        self.events
            .record(caller, workspace, action, target, before, after)
            .await;
    }

    /// Writes many changes of one caller to the audit log together (see
    /// [`crate::events::Events::record_many`]).
    pub async fn audit_many(
        &self,
        caller: &crate::keys::Caller,
        entries: Vec<crate::events::AuditEntry>,
    ) {
        self.events.record_many(caller, entries).await;
    }

    /// What one client may take (the `create_limits` field, named for what it first held).
    pub fn client_limits(&self) -> &limit::ClientLimits {
        &self.create_limits
    }

    /// The base of `link`'s public URLs: `--base-url` on the default domain, else the
    /// link's domain with `https://` when the domain is served over HTTPS (no port).
    pub fn base_of(&self, link: &crate::domain::Link) -> String {
        match link.code.domain() {
            None => self.base_url.clone(),
            Some(name) => {
                let https = self.domains.get(name).is_some_and(|d| d.https);
                format!("{}://{name}", if https { "https" } else { "http" })
            }
        }
    }

    /// The name of `link`'s domain (the default one: the host of `--base-url`).
    pub fn domain_name_of<'a>(&'a self, link: &'a crate::domain::Link) -> &'a str {
        link.code.domain().unwrap_or(&self.default_host)
    }
}

/// What a route answers to; anything else is `405`.
const GET_HEAD: &str = "GET, HEAD";

/// The routes of the service. Each route's own goal answers the methods it does not have.
pub fn router(state: Arc<AppState>) -> Router {
    let s = || state.clone();
    let document = openapi::Document::default();
    // Password checks running at once (`--password-checks`), shared by both `/{code}` lanes.
    let checks = Arc::new(tokio::sync::Semaphore::new(
        state.config.password_checks.max(1),
    ));
    let router = Router::new()
        // The header limits; the fast lane below checks them itself.
        .hoop(limit::HeaderLimit)
        .push(home_route(&state))
        .push(get_head("healthz", || health::Health(s())))
        .push(get_head("metrics", || health::MetricsText(s())))
        .push(get_head("readyz", || health::Ready(s())))
        .push(get_head(".well-known/acme-challenge/{token}", || {
            secure::AcmeAnswer(s())
        }))
        .push(api_router(&state, &document))
        .push(
            Router::with_path("realtime/{code}")
                .get(realtime::Realtime(s()))
                .goal(NotAllowed("GET")),
        )
        // `/realtime` without a code is an API path that names nothing, not a short code.
        .push(Router::with_path("realtime").goal(pages::Fallback))
        .push(get_head("assets/{name}", || pages::Asset))
        // Two segments: no short code can be taken by them.
        .push(get_head("auth/signup", || invitations::SignUpPage))
        .push(get_head("admin/audit", || audit::AuditPageRoute))
        .push(
            Router::with_path("auth/oidc")
                .get(oidc::StartOidc(s()))
                .goal(NotAllowed("GET")),
        )
        .push(
            Router::with_path("auth/oidc/callback")
                .get(oidc::OidcCallback(s()))
                .goal(NotAllowed("GET")),
        )
        .push(get_head("badge/{file}", || badge::Badge(s())))
        .push(get_head("links/{code}", || pages::StatsPage(s())))
        .push(code_routes(&state, &checks))
        .push(Router::with_path("{**rest}").goal(pages::Fallback));
    describe(&router, &document);
    Router::new()
        .hoop(secure::HttpsRules(state.clone()))
        .push(fast_lane(&state))
        .push(router)
}

/// `path` answering `GET` and `HEAD` with the handler `make` makes, `405` for the rest.
fn get_head<H: Handler>(path: &str, make: impl Fn() -> H) -> Router {
    Router::with_path(path)
        .get(make())
        .head(make())
        .goal(NotAllowed(GET_HEAD))
}

/// `/` itself: the owner's page. Only a path of slashes alone names it (salvo would also end
/// `/%2e%2e` here, which must stay a `404`).
fn home_route(state: &Arc<AppState>) -> Router {
    Router::new()
        .filter_fn(|req, _| req.uri().path().split('/').all(str::is_empty))
        .get(pages::Home(state.clone()))
        .head(pages::Home(state.clone()))
        .goal(NotAllowed(GET_HEAD))
}

/// Sets the OpenAPI `document` served at `/api/openapi.json` to the description of `router`:
/// the document describes the router it is served from, its own routes included.
fn describe(router: &Router, document: &openapi::Document) {
    match openapi::document(router) {
        Ok(doc) => {
            let _ = document.set(doc);
        }
        Err(e) => error!(cause = %e, "the OpenAPI document could not be made"),
    }
}

/// The redirect's fast lane, tried first: GET and HEAD of every path only `/{code}` can take,
/// so a redirect is not matched against every route of [`router`] (salvo tries them in order:
/// that was a quarter of a HEAD's instructions), nor through the path and method filters and
/// the hoop (another tenth). Left out of the document, which lists `/{code}` once.
fn fast_lane(state: &Arc<AppState>) -> Router {
    Router::new()
        .filter_fn(|req, path| {
            let take = matches!(*req.method(), Method::GET | Method::HEAD)
                && is_code_path(req.uri().path());
            if take {
                // The one segment is consumed, so the lane's goal is taken.
                let len = path.pick().map_or(0, str::len);
                path.forward(len);
            }
            take && path.is_ended()
        })
        .goal(redirect::FastLane {
            get: redirect::Redirect {
                state: state.clone(),
                count: true,
            },
            head: redirect::Redirect {
                state: state.clone(),
                count: false,
            },
        })
}

/// Single-segment paths with routes of their own, matched before `/{code}`. A route added
/// above `/{code}` with a one-segment path must be named here too.
const ONE_SEGMENT_ROUTES: [&str; 4] = ["healthz", "metrics", "readyz", "realtime"];

/// A path only the `/{code}` route can take: one segment (empty ones do not count), none of
/// [`ONE_SEGMENT_ROUTES`], no percent-escape (those keep salvo's own order).
fn is_code_path(path: &str) -> bool {
    if path.contains('%') {
        return false;
    }
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    match (segments.next(), segments.next()) {
        (Some(first), None) => !ONE_SEGMENT_ROUTES.contains(&first),
        _ => false,
    }
}

/// `/{code}`: the redirect (GET counts, HEAD does not), a protected link's form answer
/// (POST), `405` for the rest.
fn code_routes(state: &Arc<AppState>, checks: &Arc<tokio::sync::Semaphore>) -> Router {
    let s = || state.clone();
    Router::with_path("{code}")
        .get(Timed(redirect::Redirect {
            state: s(),
            count: true,
        }))
        .head(Timed(redirect::Redirect {
            state: s(),
            count: false,
        }))
        // The answer to a protected link's password form.
        .post(redirect::Unlock {
            redirect: redirect::Redirect {
                state: s(),
                count: true,
            },
            checks: checks.clone(),
        })
        .goal(redirect::CodeNotAllowed(s()))
}

/// `/api/*`, behind the CORS hoop when `--cors-origin` is given.
fn api_router(state: &Arc<AppState>, document: &openapi::Document) -> Router {
    let s = || state.clone();
    let mut api = Router::with_path("api");
    if let Some(cors) = cors::Cors::new(&state.config.cors_origin) {
        api = api.hoop(cors);
    }
    api.push(
        Router::with_path("links")
            .post(api::CreateLink(s()))
            .get(manage::ListLinks(s()))
            .head(manage::ListLinks(s()))
            .goal(NotAllowed("GET, HEAD, POST")),
    )
    // Before `links/{code}`: a link whose code is `bulk` is still read there (`GET`), but
    // changed and deleted by its code through this route.
    .push(
        Router::with_path("links/bulk")
            .post(bulk::BulkCreate(s()))
            .patch(bulk::BulkPatch(s()))
            .delete(bulk::BulkDelete(s())),
    )
    .push(
        Router::with_path("import")
            .post(bulk::ImportLinks(s()))
            .goal(NotAllowed("POST")),
    )
    .push(
        Router::with_path("keys")
            .post(keys::CreateKey(s()))
            .get(keys::ListKeys(s()))
            .head(keys::ListKeys(s()))
            .goal(NotAllowed("GET, HEAD, POST")),
    )
    .push(
        Router::with_path("domains")
            .post(domains::AddDomain(s()))
            .get(domains::ListDomains(s()))
            .head(domains::ListDomains(s()))
            .goal(NotAllowed("GET, HEAD, POST")),
    )
    .push(
        Router::with_path("domains/{name}")
            .patch(domains::PatchDomainRoute(s()))
            .delete(domains::DeleteDomain(s()))
            .goal(NotAllowed("PATCH, DELETE")),
    )
    .push(
        Router::with_path("webhooks")
            .post(webhooks::CreateWebhook(s()))
            .get(webhooks::ListWebhooks(s()))
            .head(webhooks::ListWebhooks(s()))
            .goal(NotAllowed("GET, HEAD, POST")),
    )
    .push(
        Router::with_path("webhooks/{id}")
            .get(webhooks::GetWebhook(s()))
            .head(webhooks::GetWebhook(s()))
            .patch(webhooks::UpdateWebhook(s()))
            .delete(webhooks::DeleteWebhook(s()))
            .goal(NotAllowed("GET, HEAD, PATCH, DELETE")),
    )
    .push(
        Router::with_path("webhooks/{id}/test")
            .post(webhooks::TestWebhook(s()))
            .goal(NotAllowed("POST")),
    )
    .push(
        Router::with_path("webhooks/{id}/deliveries")
            .get(webhooks::ListWebhookDeliveries(s()))
            .head(webhooks::ListWebhookDeliveries(s()))
            .goal(NotAllowed("GET, HEAD")),
    )
    .push(
        Router::with_path("webhooks/{id}/rotate")
            .post(webhooks::RotateWebhookSecret(s()))
            .goal(NotAllowed("POST")),
    )
    .push(
        Router::with_path("keys/{id}")
            .delete(keys::RevokeKey(s()))
            .goal(NotAllowed("DELETE")),
    )
    .push(
        Router::with_path("session")
            .post(session::SignInRoute(s()))
            .get(session::WhoAmI(s()))
            .head(session::WhoAmI(s()))
            .patch(workspaces::SwitchWorkspace(s()))
            .delete(session::SignOutRoute(s()))
            .goal(NotAllowed("GET, HEAD, POST, PATCH, DELETE")),
    )
    .push(
        Router::with_path("workspaces")
            .post(workspaces::CreateWorkspace(s()))
            .get(workspaces::ListWorkspaces(s()))
            .head(workspaces::ListWorkspaces(s()))
            .goal(NotAllowed("GET, HEAD, POST")),
    )
    .push(
        Router::with_path("workspaces/{id}")
            .patch(workspaces::RenameWorkspace(s()))
            .goal(NotAllowed("PATCH")),
    )
    .push(get_head("audit", || audit::ListAudit(s())))
    .push(get_head("auth/methods", || oidc::AuthMethods(s())))
    .push(
        Router::with_path("events")
            .get(events::EventsRoute(s()))
            .goal(NotAllowed("GET")),
    )
    .push(
        Router::with_path("members")
            .get(members::ListMembers(s()))
            .head(members::ListMembers(s()))
            .goal(NotAllowed("GET, HEAD")),
    )
    .push(
        Router::with_path("members/{id}")
            .patch(members::PatchMemberRoute(s()))
            .delete(members::RemoveMember(s()))
            .goal(NotAllowed("PATCH, DELETE")),
    )
    .push(
        Router::with_path("invitations")
            .post(invitations::CreateInvitation(s()))
            .goal(NotAllowed("POST")),
    )
    .push(get_head("invitations/{token}", || {
        invitations::ShowInvitation(s())
    }))
    .push(
        Router::with_path("signup")
            .post(invitations::SignUpRoute(s()))
            .goal(NotAllowed("POST")),
    )
    .push(
        Router::with_path("sessions")
            .get(session::ListSessions(s()))
            .head(session::ListSessions(s()))
            .goal(NotAllowed("GET, HEAD")),
    )
    .push(
        Router::with_path("sessions/{id}")
            .delete(session::EndSession(s()))
            .goal(NotAllowed("DELETE")),
    )
    .push(
        Router::with_path("links/{code}")
            .get(api::ReadLink(s()))
            .head(api::ReadLink(s()))
            .patch(manage::PatchLink(s()))
            .delete(manage::DeleteLink(s()))
            .push(get_head("stats", || api::LinkStats(s())))
            .push(get_head("clicks", || api::ListClicks(s())))
            .push(get_head("qr", || qr::Qr(s())))
            .goal(NotAllowed("GET, HEAD, PATCH, DELETE")),
    )
    .push(get_head("openapi.json", || {
        openapi::OpenApiJson(document.clone())
    }))
    .push(get_head("docs", || openapi::ApiDocs))
}

/// The redirect handler, timed into `linkpulse_redirect_duration_seconds`.
struct Timed(redirect::Redirect);

/// Follow a short link (HEAD: the same answer, nothing counted)
#[endpoint(
    tags("public"),
    parameters(("code" = String, Path, description = "The short code")),
    responses(
        (status_code = 301, description = "Moved permanently (the link's `redirectStatus`)", headers(("Location" = String))),
        (status_code = 302, description = "Found: the default", headers(("Location" = String))),
        (status_code = 307, description = "Temporary redirect (the link's `redirectStatus`)", headers(("Location" = String))),
        (status_code = 308, description = "Permanent redirect (the link's `redirectStatus`)", headers(("Location" = String))),
        (status_code = 200, description = "The password form of a protected link", content_type = "text/html", body = String),
        (status_code = 404, description = "No such link", content_type = "text/html", body = String),
        (status_code = 410, description = "Expired or past its visit limit", content_type = "text/html", body = String),
        openapi::E503,
    )
)]
impl Timed {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let started = Instant::now();
        self.0.handle(req, depot, res, ctrl).await;
        self.0.state.metrics.redirect_took(started.elapsed());
    }
}

/// A method the route does not have: `405` with `Allow` and a JSON error.
struct NotAllowed(&'static str);

#[async_trait]
impl Handler for NotAllowed {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        self.answer(req, res);
    }
}

impl NotAllowed {
    fn answer(&self, req: &Request, res: &mut Response) {
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(self.0));
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "method {} is not allowed here; allowed: {}",
                req.method(),
                self.0
            ),
        )
        .write(res);
    }
}

#[cfg(test)]
mod tests {
    use super::is_code_path;

    #[test]
    fn only_paths_no_other_route_takes_go_the_fast_lane() {
        for path in ["/abc", "/abc/", "//abc", "/Healthz", "/api", "/docs"] {
            assert!(is_code_path(path), "{path}");
        }
        for path in [
            "/",
            "",
            "/healthz",
            "/metrics/",
            "//readyz",
            "/realtime",
            "/links/abc",
            "/realtime/abc",
            "/%41bc",
            "/a/b",
        ] {
            assert!(!is_code_path(path), "{path}");
        }
    }
}
