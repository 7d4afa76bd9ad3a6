//! Sign-in with an OpenID Connect provider (`--oidc-issuer`, `--oidc-client-id`,
//! `--oidc-client-secret`): `GET /auth/oidc` sends the browser to the provider (authorization
//! code with PKCE, a fresh state and nonce), `GET /auth/oidc/callback` takes it back, checks the
//! state against the one this browser started with, exchanges the code and verifies the ID
//! token against the provider's keys and the nonce. The person is the user with the email the
//! provider verified, or is made from an open invitation for that email; anyone else is
//! refused. What the callback needs is kept in the store (`oidc.{hash of the state}`), so any
//! node of a cluster may take it, once.
//!
//! `GET /api/auth/methods` says which ways of signing in the home page offers.

use std::sync::Arc;

use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use sha2::{Digest, Sha256};

use super::{
    AppState, client_ip,
    session::{blocking, cookie},
};
use crate::{
    accounts::{
        Accounts,
        oidc::{Oidc, OidcError, OidcSettings, PendingSignIn},
    },
    store::records,
};
use salvo_oapi::endpoint;

/// The cookie that ties a callback to the browser that started the sign-in.
const STARTED: &str = "lp_oidc";
const PENDING: &str = "oidc.";
/// How long a started sign-in may take (the cookie's life too).
const STARTED_SECS: i64 = 600;

/// The provider, discovered at the first sign-in (and again after a failed discovery).
pub struct OidcProvider {
    settings: OidcSettings,
    discovered: tokio::sync::OnceCell<Arc<Oidc>>,
}

impl OidcProvider {
    pub fn new(issuer: String, client_id: String, client_secret: String, base_url: &str) -> Self {
        Self {
            settings: OidcSettings {
                issuer,
                client_id,
                client_secret,
                redirect_uri: format!("{base_url}/auth/oidc/callback"),
            },
            discovered: tokio::sync::OnceCell::new(),
        }
    }

    async fn get(&self) -> Result<Arc<Oidc>, OidcError> {
        self.discovered
            .get_or_try_init(|| async { Oidc::discover(self.settings.clone()).await.map(Arc::new) })
            .await
            .cloned()
    }
}

/// Deletes the sign-ins started and never finished (older than their lifetime); returns how
/// many. Blocking.
pub fn sweep(store: &dyn crate::store::Backend) -> Result<usize, crate::store::StoreError> {
    let cutoff = crate::domain::now_ms() - crate::accounts::oidc::PENDING_LIFETIME_MS;
    let mut gone = 0;
    for (name, bytes) in store.settings(PENDING)? {
        let stale = records::decode_any::<PendingSignIn>("oidc", &bytes)
            .map_or(true, |p| p.created_at_ms < cutoff);
        if stale {
            store.delete_setting(&name)?;
            gone += 1;
        }
    }
    Ok(gone)
}

fn pending_name(state: &str) -> String {
    format!("{PENDING}{}", hex::encode(Sha256::digest(state.as_bytes())))
}

/// The provider, discovered; why not (`404`: none is set up, `503`: it cannot be used now).
async fn discovered(state: &AppState) -> Result<Arc<Oidc>, (StatusCode, String)> {
    let Some(provider) = &state.oidc else {
        return Err((
            StatusCode::NOT_FOUND,
            "no OpenID provider is set up here".into(),
        ));
    };
    provider.get().await.map_err(|e| {
        tracing::warn!(cause = %e, "the OpenID provider cannot be used");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the OpenID provider cannot be used now: {e}"),
        )
    })
}

/// A page saying why the sign-in did not happen (and a way back).
fn refuse(res: &mut Response, status: StatusCode, why: &str) {
    res.status_code(status);
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    let escaped = why
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    res.render(Text::Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Sign-in refused · linkpulse</title></head><body>\
         <h1>Sign-in refused</h1><p id=\"why\">{escaped}</p><p><a href=\"/\">Back to linkpulse</a></p>\
         </body></html>"
    )));
}

/// `GET /auth/oidc`.
pub struct StartOidc(pub Arc<AppState>);

/// Sign in with the OpenID provider: to the provider, and back to the callback
#[endpoint(
    tags("sessions"),
    responses(
        (status_code = 302, description = "To the provider's sign-in"),
        (status_code = 404, description = "No provider is set up", content_type = "text/html", body = String),
        (status_code = 503, description = "The provider cannot be reached", content_type = "text/html", body = String),
    )
)]
impl StartOidc {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let oidc = match discovered(state).await {
            Ok(oidc) => oidc,
            Err((status, why)) => return refuse(res, status, &why),
        };
        let (url, pending) = oidc.begin();
        let name = pending_name(&pending.state);
        let browser_state = pending.state.clone();
        let stored = blocking(state, move |accounts| {
            accounts
                .0
                .put_setting(&name, &records::encode_any(&pending))
                .map_err(Into::into)
        })
        .await;
        if let Err(e) = stored {
            return e.write(res);
        }
        let Ok(location) = HeaderValue::from_str(&url) else {
            return refuse(
                res,
                StatusCode::BAD_GATEWAY,
                "the provider's address is not usable",
            );
        };
        let secure = if super::secure::is_https(state, req) {
            "; Secure"
        } else {
            ""
        };
        let started = format!(
            "{STARTED}={browser_state}; Path=/auth/oidc; Max-Age={STARTED_SECS}; HttpOnly; SameSite=Lax{secure}"
        );
        if let Ok(value) = HeaderValue::from_str(&started) {
            res.headers_mut().append(header::SET_COOKIE, value);
        }
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res.status_code(StatusCode::FOUND);
        res.headers_mut().insert(header::LOCATION, location);
    }
}

/// The `lp_oidc` cookie of the request.
fn started_state(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == STARTED).then(|| value.trim().to_owned())
        })
}

/// `GET /auth/oidc/callback`.
pub struct OidcCallback(pub Arc<AppState>);

/// Where the provider sends the browser back: signs the person in and goes home
#[endpoint(
    tags("sessions"),
    parameters(
        ("code" = Option<String>, Query, description = "The provider's authorization code"),
        ("state" = Option<String>, Query, description = "The state this sign-in started with"),
    ),
    responses(
        (status_code = 303, description = "Signed in: the cookie is set, to the home page"),
        (status_code = 400, description = "A state, code or ID token that does not check out", content_type = "text/html", body = String),
        (status_code = 403, description = "Nobody here has the provider's email, and no invitation names it", content_type = "text/html", body = String),
    )
)]
impl OidcCallback {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let oidc = match discovered(state).await {
            Ok(oidc) => oidc,
            Err((status, why)) => return refuse(res, status, &why),
        };
        if let Some(error) = req.query::<String>("error") {
            return refuse(
                res,
                StatusCode::BAD_REQUEST,
                &format!("the provider refused the sign-in: {error}"),
            );
        }
        let (Some(code), Some(returned)) =
            (req.query::<String>("code"), req.query::<String>("state"))
        else {
            return refuse(
                res,
                StatusCode::BAD_REQUEST,
                "the callback needs code and state",
            );
        };
        // The state must be the one this browser started with (no one else's sign-in lands
        // here), and a started sign-in is used once.
        let mine = started_state(req).is_some_and(|s| {
            subtle::ConstantTimeEq::ct_eq(s.as_bytes(), returned.as_bytes()).into()
        });
        if !mine {
            return refuse(
                res,
                StatusCode::BAD_REQUEST,
                "this sign-in was not started in this browser, or its state was changed: start again",
            );
        }
        let name = pending_name(&returned);
        let taken = blocking(state, move |accounts| {
            let found = accounts.0.setting(&name)?;
            accounts.0.delete_setting(&name)?;
            Ok(found.and_then(|b| records::decode_any::<PendingSignIn>("oidc", &b).ok()))
        })
        .await;
        let pending = match taken {
            Ok(Some(pending)) => pending,
            Ok(None) => {
                return refuse(
                    res,
                    StatusCode::BAD_REQUEST,
                    "this sign-in was used already or has expired: start again",
                );
            }
            Err(e) => return e.write(res),
        };
        let identity = match oidc.finish(&pending, &returned, &code).await {
            Ok(identity) => identity,
            Err(e) => {
                tracing::warn!(cause = %e, "an OpenID sign-in was refused");
                return refuse(res, StatusCode::BAD_REQUEST, &e.to_string());
            }
        };
        let email = identity.email.clone();
        let (address, agent) = (
            client_ip(state, req).map(|ip| ip.to_string()),
            req.headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        );
        let signed = blocking(state, move |accounts: Accounts<'_>| {
            let Some((user, joined)) = accounts.by_verified_email(&identity.email)? else {
                return Ok(None);
            };
            if user.disabled {
                return Ok(Some(Err(user.email)));
            }
            let (token, session) =
                accounts.start_session(&user, agent, address, joined.as_deref())?;
            Ok(Some(Ok((user, token, session))))
        })
        .await;
        match signed {
            Ok(Some(Ok((user, token, session)))) => {
                let max_age = (session.expires_at - session.created_at) / 1000;
                tracing::info!(user = %user.email, "signed in with the OpenID provider");
                let headers = res.headers_mut();
                headers.append(header::SET_COOKIE, cookie(state, req, &token, max_age));
                headers.append(
                    header::SET_COOKIE,
                    HeaderValue::from_static("lp_oidc=; Path=/auth/oidc; Max-Age=0"),
                );
                headers.insert(header::LOCATION, HeaderValue::from_static("/"));
                res.status_code(StatusCode::SEE_OTHER);
            }
            Ok(Some(Err(email))) => refuse(
                res,
                StatusCode::FORBIDDEN,
                &format!("the account {email} is disabled"),
            ),
            Ok(None) => refuse(
                res,
                StatusCode::FORBIDDEN,
                &format!(
                    "nobody here signs in as {email}: ask an owner or admin for an invitation to \
                     that address"
                ),
            ),
            Err(e) => e.write(res),
        }
    }
}

/// `GET /api/auth/methods`.
pub struct AuthMethods(pub Arc<AppState>);

/// The ways of signing in.
#[derive(serde::Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "AuthMethods"))]
struct Methods {
    /// An email and a password (`POST /api/session`).
    password: bool,
    /// Where sign-in with the OpenID provider starts; `null`: none is set up.
    oidc: Option<&'static str>,
}

/// How people may sign in here: with a password, and with the OpenID provider if one is set up
#[endpoint(
    tags("sessions"),
    responses((status_code = 200, description = "The ways of signing in", body = Methods))
)]
impl AuthMethods {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        res.render(Json(Methods {
            password: true,
            oidc: self.0.oidc.as_ref().map(|_| "/auth/oidc"),
        }));
    }
}
