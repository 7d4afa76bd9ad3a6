//! The people of the installation (`/api/members`), for owners and admins: list them, change a
//! role or disable one (`PATCH`), remove one (`DELETE`). An admin changes no owner and makes
//! none (`403`); the last owner stays one. Disabling or removing ends the person's sessions.

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, authenticate, read_json_object, require_admin, session::blocking};
use crate::{
    accounts::{Role, UserRecord},
    domain::format_ms,
    keys::Caller,
};
use salvo_oapi::endpoint;

/// A member as the API shows them.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Member"))]
#[serde(rename_all = "camelCase")]
struct Member {
    id: String,
    email: String,
    role: Role,
    created_at: String,
    disabled: bool,
}

/// `GET /api/members`.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "MemberList"))]
struct MemberList {
    members: Vec<Member>,
}

/// `PATCH /api/members/{id}` as sent.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "PatchMemberRequest"))]
#[serde(deny_unknown_fields)]
struct PatchMember {
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    disabled: Option<bool>,
}

fn member(u: UserRecord, workspace: &str) -> Member {
    Member {
        role: u.role_in(workspace).unwrap_or(u.role),
        id: u.id,
        email: u.email,
        created_at: format_ms(u.created_at),
        disabled: u.disabled,
    }
}

/// The caller, after checking it may manage members at all; its role is `None` for an admin
/// key, which acts as an owner here.
async fn manager(state: &AppState, req: &Request) -> Result<Caller, ApiError> {
    let caller = authenticate(state, req).await?;
    require_admin(&caller)?;
    Ok(caller)
}

/// `GET /api/members`.
pub struct ListMembers(pub Arc<AppState>);

/// The people who sign in here, oldest first (owner or admin)
#[endpoint(
    tags("sessions"),
    security(("bearer" = [])),
    responses(
        (status_code = 200, description = "The members", body = MemberList),
        (status_code = 401, description = "No key or session", body = super::openapi::schemas::Error),
        (status_code = 403, description = "Not an owner or admin", body = super::openapi::schemas::Error),
    )
)]
impl ListMembers {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let listed = async {
            let workspace = manager(state, req).await?.workspace;
            let ws = workspace.clone();
            let users = blocking(state, move |accounts| accounts.members(&ws)).await?;
            Ok::<_, ApiError>((users, workspace))
        };
        match listed.await {
            Ok((users, workspace)) => res.render(Json(MemberList {
                members: users.into_iter().map(|u| member(u, &workspace)).collect(),
            })),
            Err(e) => e.write(res),
        }
    }
}

/// `PATCH /api/members/{id}`.
pub struct PatchMemberRoute(pub Arc<AppState>);

/// Change a member's role, or disable or enable them (owner or admin)
#[endpoint(
    tags("sessions"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The member's id")),
    request_body = PatchMember,
    responses(
        (status_code = 200, description = "The member as changed", body = Member),
        (status_code = 400, description = "Not a role", body = super::openapi::schemas::Error),
        (status_code = 403, description = "A change the caller's role may not make, or the last owner", body = super::openapi::schemas::Error),
        (status_code = 404, description = "No such member", body = super::openapi::schemas::Error),
    )
)]
impl PatchMemberRoute {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let changed = async {
            let caller = manager(state, req).await?;
            let id = req.params().get("id").cloned().unwrap_or_default();
            let sent: PatchMember = read_json_object(req, 1024).await?;
            let (ws, by, user_id) = (caller.workspace.clone(), caller.role, id.clone());
            let (before, user) = blocking(state, move |accounts| {
                let before = accounts.user(&user_id)?;
                let after = accounts.change_user(&user_id, &ws, sent.role, sent.disabled, by)?;
                Ok((before, after))
            })
            .await?;
            let (before, after) = (
                before.map(|b| member(b, &caller.workspace)),
                member(user, &caller.workspace),
            );
            let json = |m: &Member| serde_json::to_value(m).ok();
            state
                .audit(
                    &caller,
                    &caller.workspace,
                    "member.updated",
                    &id,
                    before.as_ref().and_then(json),
                    json(&after),
                )
                .await;
            Ok::<_, ApiError>(after)
        };
        match changed.await {
            Ok(user) => res.render(Json(user)),
            Err(e) => e.write(res),
        }
    }
}

/// `DELETE /api/members/{id}`.
pub struct RemoveMember(pub Arc<AppState>);

/// Remove a member: their sessions end and they cannot sign in (owner or admin)
#[endpoint(
    tags("sessions"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The member's id")),
    responses(
        (status_code = 204, description = "Removed"),
        (status_code = 403, description = "A change the caller's role may not make, or the last owner", body = super::openapi::schemas::Error),
        (status_code = 404, description = "No such member", body = super::openapi::schemas::Error),
    )
)]
impl RemoveMember {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let removed = async {
            let caller = manager(state, req).await?;
            let id = req.params().get("id").cloned().unwrap_or_default();
            let (ws, by, user_id) = (caller.workspace.clone(), caller.role, id.clone());
            let removed = blocking(state, move |accounts| {
                accounts.remove_user(&user_id, &ws, by)
            })
            .await?;
            let before = serde_json::to_value(member(removed, &caller.workspace)).ok();
            state
                .audit(
                    &caller,
                    &caller.workspace,
                    "member.removed",
                    &id,
                    before,
                    None,
                )
                .await;
            Ok::<_, ApiError>(())
        };
        match removed.await {
            Ok(_) => {
                res.status_code(StatusCode::NO_CONTENT);
            }
            Err(e) => e.write(res),
        }
    }
}
