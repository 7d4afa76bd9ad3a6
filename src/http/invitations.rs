//! Invitations: an owner or admin makes a one-time sign-up link (`POST /api/invitations`,
//! valid 7 days) and copies it to the person (no mail server is needed); the person opens it
//! (`GET /auth/signup?invite=...`), chooses a password and is signed in (`POST /api/signup`). A used
//! or expired link is `410`. The first start prints such a link for the first owner, good
//! until a user exists.

use std::sync::Arc;

use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use serde::{Deserialize, Serialize};

use super::{
    ApiError, AppState, authenticate, client_ip, read_json_object, require_admin,
    session::{SignedIn, blocking, cookie, session_body, user_body},
};
use crate::{accounts::Role, domain::format_ms};
use salvo_oapi::endpoint;

const MAX_BODY: usize = 4 * 1024;

/// `POST /api/invitations` as sent.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "InvitationRequest"))]
#[serde(deny_unknown_fields)]
struct Invite {
    /// The new user's email; left out, the person gives it when signing up.
    #[serde(default)]
    email: Option<String>,
    role: Role,
}

/// An invitation made: its link, shown this once.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Invitation"))]
#[serde(rename_all = "camelCase")]
struct Invitation {
    url: String,
    expires_at: String,
    email: Option<String>,
    role: Role,
}

/// What the sign-up page shows of an invitation.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "InvitationInfo"))]
#[serde(rename_all = "camelCase")]
struct InvitationInfo {
    email: Option<String>,
    role: Role,
    expires_at: String,
}

/// `POST /api/signup` as sent.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "SignUpRequest"))]
#[serde(deny_unknown_fields)]
struct SignUp {
    invite: String,
    #[serde(default)]
    email: Option<String>,
    password: String,
}

/// The link of an invitation `token`.
pub fn signup_url(base_url: &str, token: &str) -> String {
    format!("{base_url}/auth/signup?invite={token}")
}

/// `POST /api/invitations`.
pub struct CreateInvitation(pub Arc<AppState>);

impl CreateInvitation {
    async fn create(&self, req: &mut Request) -> Result<Invitation, ApiError> {
        let state = &self.0;
        let caller = authenticate(state, req).await?;
        require_admin(&caller)?;
        let sent: Invite = read_json_object(req, MAX_BODY).await?;
        // An owner is invited by an owner (or an admin key): an admin cannot make one.
        if sent.role == Role::Owner && caller.role.is_some_and(|r| r != Role::Owner) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only an owner invites an owner",
            ));
        }
        let (by, workspace) = (caller.key_id.clone(), caller.workspace.clone());
        let (role, email) = (sent.role, sent.email);
        let (token, made) = blocking(state, move |accounts| {
            accounts.invite(email.as_deref(), role, &by, false, &workspace)
        })
        .await?;
        state
            .audit(
                &caller,
                &caller.workspace,
                "member.invited",
                &made.id,
                None,
                Some(serde_json::json!({ "email": made.email, "role": made.role })),
            )
            .await;
        Ok(Invitation {
            url: signup_url(&state.base_url, &token),
            expires_at: format_ms(made.expires_at),
            email: made.email,
            role: made.role,
        })
    }
}

/// Invite a person: a one-time sign-up link, valid 7 days (owner or admin)
#[endpoint(
    tags("sessions"),
    security(("bearer" = [])),
    request_body = Invite,
    responses(
        (status_code = 201, description = "The link to give the person", body = Invitation),
        (status_code = 400, description = "A bad email or role", body = super::openapi::schemas::Error),
        (status_code = 401, description = "No key or session", body = super::openapi::schemas::Error),
        (status_code = 403, description = "Not an owner or admin, or an admin inviting an owner", body = super::openapi::schemas::Error),
        (status_code = 409, description = "A user has this email", body = super::openapi::schemas::Error),
    )
)]
impl CreateInvitation {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.create(req).await {
            Ok(made) => {
                res.status_code(StatusCode::CREATED);
                res.render(Json(made));
            }
            Err(e) => e.write(res),
        }
    }
}

/// `GET /api/invitations/{token}`.
pub struct ShowInvitation(pub Arc<AppState>);

/// What an invitation link offers (for the sign-up page)
#[endpoint(
    tags("sessions"),
    parameters(("token" = String, Path, description = "The token of the link")),
    responses(
        (status_code = 200, description = "The invitation", body = InvitationInfo),
        (status_code = 410, description = "Used, expired or never made", body = super::openapi::schemas::Error),
    )
)]
impl ShowInvitation {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let token = req.params().get("token").cloned().unwrap_or_default();
        match blocking(&self.0, move |accounts| accounts.invitation(&token)).await {
            Ok(found) => res.render(Json(InvitationInfo {
                email: found.email,
                role: found.role,
                expires_at: format_ms(found.expires_at),
            })),
            Err(e) => e.write(res),
        }
    }
}

/// `POST /api/signup`.
pub struct SignUpRoute(pub Arc<AppState>);

impl SignUpRoute {
    async fn sign_up(&self, req: &mut Request, res: &mut Response) -> Result<SignedIn, ApiError> {
        let state = &self.0;
        let sent: SignUp = read_json_object(req, MAX_BODY).await?;
        // Joining with an account that exists checks its password: limited as sign-ins are.
        let ip = client_ip(state, req);
        let email = sent.email.as_deref().unwrap_or("").trim().to_lowercase();
        if let Some(wait) = state.sign_in.wait(&email, ip) {
            let secs = u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed attempts, try again in {secs} s"),
            )
            .with_retry_after(secs));
        }
        let address = ip.map(|ip| ip.to_string());
        let agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (user, workspace, token, session, names) = blocking(state, move |accounts| {
            let (user, workspace) =
                accounts.redeem(&sent.invite, sent.email.as_deref(), &sent.password)?;
            let (token, session) =
                accounts.start_session(&user, agent, address, Some(&workspace))?;
            let names = crate::accounts::Workspaces(accounts.0).list()?;
            Ok((user, workspace, token, session, names))
        })
        .await
        .inspect_err(|e| {
            if e.status == StatusCode::FORBIDDEN {
                state.sign_in.failed(&email, ip);
            }
        })?;
        let max_age = (session.expires_at - session.created_at) / 1000;
        res.headers_mut()
            .append(header::SET_COOKIE, cookie(state, req, &token, max_age));
        tracing::info!(user = %user.email, workspace, "signed up");
        let role = user.role_in(&workspace);
        let joined = crate::keys::Caller {
            key_id: user.id.clone(),
            scope: role.map_or(crate::keys::Scope::Read, Role::scope),
            workspace: workspace.clone(),
            who: user.email.clone(),
            role,
        };
        state
            .audit(
                &joined,
                &workspace,
                "member.joined",
                &user.id,
                None,
                Some(serde_json::json!({ "id": user.id, "email": user.email, "role": role })),
            )
            .await;
        Ok(SignedIn {
            user: user_body(&user, &workspace, &names),
            session: session_body(&session, Some(&session.id)),
        })
    }
}

/// Sign up with an invitation: makes the user and signs them in
#[endpoint(
    tags("sessions"),
    request_body = SignUp,
    responses(
        (status_code = 201, description = "Signed up and in; the cookie is set", body = SignedIn),
        (status_code = 400, description = "A bad email or password", body = super::openapi::schemas::Error),
        (status_code = 409, description = "A user has this email", body = super::openapi::schemas::Error),
        (status_code = 410, description = "The invitation was used, has expired or was never made", body = super::openapi::schemas::Error),
    )
)]
impl SignUpRoute {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.sign_up(req, res).await {
            Ok(done) => {
                res.status_code(StatusCode::CREATED);
                res.render(Json(done));
            }
            Err(e) => e.write(res),
        }
    }
}

/// The sign-up page (`src/pages/signup.html`).
const SIGNUP: &str = include_str!("../pages/signup.html");

/// `GET /auth/signup`: the page an invitation link opens.
pub struct SignUpPage;

/// The sign-up page an invitation link opens
#[endpoint(
    tags("public"),
    responses((status_code = 200, description = "The page", content_type = "text/html", body = String))
)]
impl SignUpPage {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let headers = res.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // The token is in the address: it must not leave in a Referer.
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        if let Ok(csp) = HeaderValue::from_str(&super::pages::page_csp(SIGNUP)) {
            headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        res.render(Text::Html(SIGNUP));
    }
}
