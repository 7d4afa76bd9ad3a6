//! Signing in and out: `POST /api/session` (JSON `{"email","password"}` or the sign-in form)
//! sets the session cookie, `DELETE /api/session` ends it, `GET /api/sessions` lists the
//! signed-in user's sessions and `DELETE /api/sessions/{id}` ends one. The cookie is
//! `HttpOnly`, `SameSite=Lax`, and over HTTPS `Secure` with the `__Host-` prefix.
//!
//! Sign-in failures are limited per account and per client address (10 in 15 minutes, then
//! `429` with `Retry-After`); a wrong email costs the same password check as a wrong password.
//! A request that changes something with the cookie must come from this site (`Origin`).

use std::{net::IpAddr, sync::Arc, time::Duration};

use salvo::{
    http::{HeaderValue, Method, StatusCode, header},
    prelude::*,
};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, client_ip, limit::Failures, read_json_object, secure::is_https};
use crate::{
    accounts::{AccountError, Accounts, Role, SessionRecord, UserRecord, Workspaces},
    domain::format_ms,
    keys::Caller,
};
use salvo_oapi::endpoint;

/// The cookie over plain HTTP, and over HTTPS (the prefix makes browsers insist on `Secure`,
/// `Path=/` and no `Domain`).
const COOKIE: &str = "lp_session";
const SECURE_COOKIE: &str = "__Host-lp_session";
/// Failed sign-ins allowed per account and per address in [`WINDOW`].
const FAILURES: std::num::NonZeroU32 = match std::num::NonZeroU32::new(10) {
    Some(n) => n,
    None => std::num::NonZeroU32::MIN,
};
const WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_BODY: usize = 4 * 1024;

/// Failed sign-ins, per account and per client address.
pub struct SignInLimits {
    by_account: Failures<String>,
    by_address: Failures<IpAddr>,
}

impl Default for SignInLimits {
    fn default() -> Self {
        Self {
            by_account: Failures::every(FAILURES, WINDOW),
            by_address: Failures::every(FAILURES, WINDOW),
        }
    }
}

impl SignInLimits {
    /// How long `email` from `ip` must still wait, if either is past its allowance.
    pub(super) fn wait(&self, email: &str, ip: Option<IpAddr>) -> Option<Duration> {
        let now = std::time::Instant::now();
        let account = self.by_account.wait(&email.to_owned(), now);
        let address = ip.and_then(|ip| self.by_address.wait(&ip, now));
        account.max(address)
    }

    pub(super) fn failed(&self, email: &str, ip: Option<IpAddr>) {
        let now = std::time::Instant::now();
        self.by_account.failed(email.to_owned(), now);
        if let Some(ip) = ip {
            self.by_address.failed(ip, now);
        }
        if self.by_account.tracked() > 100_000 {
            self.by_account.sweep(now);
        }
        if self.by_address.tracked() > 100_000 {
            self.by_address.sweep(now);
        }
    }
}

/// `POST /api/session` as sent.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "SignInRequest"))]
#[serde(deny_unknown_fields)]
struct SignIn {
    email: String,
    password: String,
}

/// Who signed in: their role is the one in the workspace the session acts in.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "SignedInUser"))]
pub(super) struct UserBody {
    id: String,
    email: String,
    role: Role,
    /// The workspace the session acts in.
    workspace: String,
    /// Every workspace the user is a member of, with the role there.
    workspaces: Vec<super::workspaces::WorkspaceBody>,
}

/// A session as the API shows it.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Session"))]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionBody {
    id: String,
    created_at: String,
    expires_at: String,
    user_agent: Option<String>,
    address: Option<String>,
    /// The session of this request.
    current: bool,
}

/// `POST /api/session`'s answer.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "SignedIn"))]
pub(super) struct SignedIn {
    pub(super) user: UserBody,
    pub(super) session: SessionBody,
}

/// `GET /api/sessions`.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "SessionList"))]
struct SessionList {
    sessions: Vec<SessionBody>,
}

pub(super) fn session_body(s: &SessionRecord, current: Option<&str>) -> SessionBody {
    SessionBody {
        id: s.id.clone(),
        created_at: format_ms(s.created_at),
        expires_at: format_ms(s.expires_at),
        user_agent: s.user_agent.clone(),
        address: s.address.clone(),
        current: current == Some(s.id.as_str()),
    }
}

pub(super) fn user_body(
    u: &UserRecord,
    workspace: &str,
    names: &[crate::accounts::WorkspaceRecord],
) -> UserBody {
    let roles = u.roles();
    UserBody {
        id: u.id.clone(),
        email: u.email.clone(),
        role: roles.get(workspace).copied().unwrap_or(u.role),
        workspace: workspace.to_owned(),
        workspaces: names
            .iter()
            .filter_map(|w| {
                Some(super::workspaces::WorkspaceBody::new(
                    w,
                    Some(*roles.get(&w.id)?),
                ))
            })
            .collect(),
    }
}

/// The workspace a session of `user` acts in: the one it chose, while the user is a member,
/// else the user's first.
pub(super) fn session_workspace(
    session: &SessionRecord,
    user: &UserRecord,
) -> Option<(String, Role)> {
    let roles = user.roles();
    session
        .workspace
        .as_ref()
        .and_then(|w| Some((w.clone(), *roles.get(w)?)))
        .or_else(|| {
            let first = roles
                .get(crate::accounts::FIRST_WORKSPACE)
                .map(|r| (crate::accounts::FIRST_WORKSPACE.to_owned(), *r));
            first.or_else(|| roles.into_iter().next())
        })
}

/// Runs an account operation on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(Accounts<'_>) -> Result<T, AccountError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.links.store().clone();
    tokio::task::spawn_blocking(move || work(Accounts(store.as_ref())))
        .await
        .map_err(|_| ApiError::unavailable("the service is shutting down", 1))?
        .map_err(|e| match e {
            AccountError::Store(e) => ApiError::from(crate::links::LinkError::Store(e)),
            AccountError::Gone(why) => ApiError::new(StatusCode::GONE, why),
            AccountError::Forbidden(why) => ApiError::new(StatusCode::FORBIDDEN, why),
            e @ AccountError::Exists(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            e @ AccountError::NoSuchUser(_) => ApiError::not_found(e.to_string()),
            other => ApiError::bad_request(other.to_string()),
        })
}

/// The session token the request's cookie carries.
pub fn session_token(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SECURE_COOKIE || name == COOKIE).then(|| value.trim().to_owned())
        })
}

/// A change made with the cookie must come from a page of this site: its `Origin` is the
/// request's own (scheme and host) or the base URL's. Cross-site forms and scripts carry
/// theirs (browsers send `Origin` on every such request).
fn check_origin(state: &AppState, req: &Request) -> Result<(), ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .unwrap_or("");
    let scheme = if is_https(state, req) {
        "https"
    } else {
        "http"
    };
    let own = super::request_host(req).map(|host| format!("{scheme}://{host}"));
    let base = state
        .base_url
        .split('/')
        .take(3)
        .collect::<Vec<_>>()
        .join("/");
    if !origin.is_empty() && (own.as_deref() == Some(origin) || origin == base) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a change signed in by cookie must come from this site (Origin {}); use an API \
                 key from elsewhere",
                if origin.is_empty() { "missing" } else { origin }
            ),
        ))
    }
}

/// The caller a session cookie signs in, with the session, checked against the store now.
pub async fn signed_in(
    state: &AppState,
    req: &Request,
) -> Result<Option<(Caller, SessionRecord)>, ApiError> {
    let Some(token) = session_token(req) else {
        return Ok(None);
    };
    let found = blocking(state, move |accounts| accounts.session(&token)).await?;
    let Some((session, user)) = found else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "your session has ended: sign in again",
        ));
    };
    check_origin(state, req)?;
    let Some((workspace, role)) = session_workspace(&session, &user) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "you are a member of no workspace: ask for an invitation",
        ));
    };
    Ok(Some((
        Caller {
            key_id: user.id,
            scope: role.scope(),
            workspace,
            who: user.email,
            role: Some(role),
        },
        session,
    )))
}

pub(super) fn cookie(state: &AppState, req: &Request, token: &str, max_age: i64) -> HeaderValue {
    let value = if is_https(state, req) {
        format!(
            "{SECURE_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax; Secure"
        )
    } else {
        format!("{COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax")
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `POST /api/session`.
pub struct SignInRoute(pub Arc<AppState>);

impl SignInRoute {
    async fn sign_in(&self, req: &mut Request, res: &mut Response) -> Result<SignedIn, ApiError> {
        let state = &self.0;
        let form = req
            .content_type()
            .is_some_and(|m| m.subtype() == "x-www-form-urlencoded");
        if form {
            // A form posted from another site is refused: the browser names that site.
            if req.headers().contains_key(header::ORIGIN) {
                check_origin(state, req)?;
            }
        }
        let sent: SignIn = if form {
            req.parse_form()
                .await
                .map_err(|_| ApiError::bad_request("the form needs email and password"))?
        } else {
            read_json_object(req, MAX_BODY).await?
        };
        let email = sent.email.trim().to_lowercase();
        let ip = client_ip(state, req);
        if let Some(wait) = state.sign_in.wait(&email, ip) {
            let secs = u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed sign-ins, try again in {secs} s"),
            )
            .with_retry_after(secs));
        }
        let (address, agent) = (
            ip.map(|ip| ip.to_string()),
            req.headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        let checked = blocking(state, move |accounts| {
            let Some(user) = accounts.check_sign_in(&sent.email, &sent.password)? else {
                return Ok(Err(false));
            };
            if user.disabled {
                return Ok(Err(true));
            }
            let (token, session) = accounts.start_session(&user, agent, address, None)?;
            let names = Workspaces(accounts.0).list()?;
            Ok(Ok((user, token, session, names)))
        })
        .await?;
        match checked {
            Err(disabled) => {
                state.sign_in.failed(&email, ip);
                if disabled {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "this account is disabled",
                    ))
                } else {
                    Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "wrong email or password",
                    ))
                }
            }
            Ok((user, token, session, names)) => {
                let max_age = (session.expires_at - session.created_at) / 1000;
                res.headers_mut()
                    .append(header::SET_COOKIE, cookie(state, req, &token, max_age));
                tracing::info!(user = %user.email, "signed in");
                let workspace = session_workspace(&session, &user)
                    .map(|(w, _)| w)
                    .unwrap_or_default();
                Ok(SignedIn {
                    user: user_body(&user, &workspace, &names),
                    session: session_body(&session, Some(&session.id)),
                })
            }
        }
    }
}

/// Sign in with an email and a password: sets the session cookie
#[endpoint(
    tags("sessions"),
    request_body = SignIn,
    responses(
        (status_code = 200, description = "Signed in; the cookie is set", body = SignedIn),
        (status_code = 303, description = "Signed in from the form: to the home page"),
        (status_code = 400, description = "Not an email and a password", body = super::openapi::schemas::Error),
        (status_code = 401, description = "Wrong email or password", body = super::openapi::schemas::Error),
        (status_code = 403, description = "The account is disabled, or the form came from another site", body = super::openapi::schemas::Error),
        (status_code = 429, description = "Too many failed sign-ins", body = super::openapi::schemas::Error),
    )
)]
impl SignInRoute {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let form = req
            .content_type()
            .is_some_and(|m| m.subtype() == "x-www-form-urlencoded");
        match self.sign_in(req, res).await {
            Ok(_) if form => {
                res.status_code(StatusCode::SEE_OTHER);
                res.headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/"));
            }
            Ok(done) => res.render(Json(done)),
            Err(e) => e.write(res),
        }
    }
}

/// `GET /api/session`.
pub struct WhoAmI(pub Arc<AppState>);

/// Who is signed in by this request's cookie
#[endpoint(
    tags("sessions"),
    responses(
        (status_code = 200, description = "The user and this session", body = SignedIn),
        (status_code = 401, description = "Not signed in", body = super::openapi::schemas::Error),
    )
)]
impl WhoAmI {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let found = async {
            let (caller, session) = session_caller(state, req).await?;
            let id = caller.key_id.clone();
            let (user, names) = blocking(state, move |accounts| {
                Ok((accounts.user(&id)?, Workspaces(accounts.0).list()?))
            })
            .await?;
            let user =
                user.ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not signed in"))?;
            Ok::<_, ApiError>(SignedIn {
                user: user_body(&user, &caller.workspace, &names),
                session: session_body(&session, Some(&session.id)),
            })
        };
        match found.await {
            Ok(me) => res.render(Json(me)),
            Err(e) => e.write(res),
        }
    }
}

/// `DELETE /api/session`.
pub struct SignOutRoute(pub Arc<AppState>);

/// Sign out: ends this session on every node and clears the cookie
#[endpoint(
    tags("sessions"),
    responses(
        (status_code = 204, description = "Signed out"),
        (status_code = 401, description = "No session", body = super::openapi::schemas::Error),
        (status_code = 403, description = "From another site", body = super::openapi::schemas::Error),
    )
)]
impl SignOutRoute {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let done = async {
            let Some(token) = session_token(req) else {
                return Err(ApiError::new(StatusCode::UNAUTHORIZED, "not signed in"));
            };
            check_origin(state, req)?;
            blocking(state, move |accounts| accounts.end_session(&token)).await
        };
        match done.await {
            Ok(()) => {
                res.status_code(StatusCode::NO_CONTENT);
                res.headers_mut()
                    .append(header::SET_COOKIE, cookie(state, req, "", 0));
            }
            Err(e) => e.write(res),
        }
    }
}

/// The signed-in caller and session, or why not (an API key has no sessions).
async fn session_caller(
    state: &AppState,
    req: &Request,
) -> Result<(Caller, SessionRecord), ApiError> {
    signed_in(state, req).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "sign in: sessions belong to people, not to API keys",
        )
    })
}

/// `GET /api/sessions`.
pub struct ListSessions(pub Arc<AppState>);

/// The signed-in user's sessions, newest first
#[endpoint(
    tags("sessions"),
    responses(
        (status_code = 200, description = "The sessions", body = SessionList),
        (status_code = 401, description = "Not signed in", body = super::openapi::schemas::Error),
    )
)]
impl ListSessions {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let listed = async {
            let (caller, current) = session_caller(state, req).await?;
            let user = caller.key_id.clone();
            let all = blocking(state, move |accounts| accounts.sessions_of(&user)).await?;
            Ok::<_, ApiError>(SessionList {
                sessions: all
                    .iter()
                    .map(|s| session_body(s, Some(&current.id)))
                    .collect(),
            })
        };
        match listed.await {
            Ok(list) => res.render(Json(list)),
            Err(e) => e.write(res),
        }
    }
}

/// `DELETE /api/sessions/{id}`.
pub struct EndSession(pub Arc<AppState>);

/// End one of the signed-in user's sessions (on every node)
#[endpoint(
    tags("sessions"),
    parameters(("id" = String, Path, description = "The session's id")),
    responses(
        (status_code = 204, description = "Ended"),
        (status_code = 401, description = "Not signed in", body = super::openapi::schemas::Error),
        (status_code = 403, description = "From another site", body = super::openapi::schemas::Error),
        (status_code = 404, description = "No such session of this user", body = super::openapi::schemas::Error),
    )
)]
impl EndSession {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let ended = async {
            let (caller, _) = session_caller(state, req).await?;
            let id = req.params().get("id").cloned().unwrap_or_default();
            let user = caller.key_id.clone();
            let found = blocking(state, move |accounts| {
                accounts.end_session_by_id(&user, &id)
            })
            .await?;
            if found {
                Ok(())
            } else {
                Err(ApiError::not_found("no such session"))
            }
        };
        match ended.await {
            Ok(()) => {
                res.status_code(StatusCode::NO_CONTENT);
            }
            Err(e) => e.write(res),
        }
    }
}
