//! Workspaces over HTTP: `GET /api/workspaces` (the caller's), `POST /api/workspaces` (a
//! signed-in person makes one and owns it), `PATCH /api/workspaces/{id}` (rename, owner or
//! admin), and `PATCH /api/session` `{"workspace"}`, which moves a session to another of its
//! user's workspaces.

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde::{Deserialize, Serialize};

use super::{
    ApiError, AppState, authenticate, read_json_object, require_admin,
    session::{SignedIn, blocking, session_body, session_token, signed_in, user_body},
};
use crate::accounts::{Role, WorkspaceRecord, Workspaces};
use salvo_oapi::endpoint;

const MAX_BODY: usize = 1024;

/// A workspace as the API shows it, with the caller's role there.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Workspace"))]
pub struct WorkspaceBody {
    id: String,
    name: String,
    /// The caller's role there (`null` for a key).
    role: Option<Role>,
}

impl WorkspaceBody {
    pub fn new(w: &WorkspaceRecord, role: Option<Role>) -> Self {
        Self {
            id: w.id.clone(),
            name: w.name.clone(),
            role,
        }
    }
}

/// `GET /api/workspaces`.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "WorkspaceList"))]
struct WorkspaceList {
    /// The one the request acts in.
    current: String,
    workspaces: Vec<WorkspaceBody>,
}

/// `POST /api/workspaces` and `PATCH /api/workspaces/{id}` as sent.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "WorkspaceRequest"))]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
}

/// `PATCH /api/session` as sent.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "SwitchWorkspaceRequest"))]
#[serde(deny_unknown_fields)]
struct Switch {
    workspace: String,
}

/// `GET /api/workspaces`.
pub struct ListWorkspaces(pub Arc<AppState>);

/// The workspaces the caller acts in: a person's, each with their role; a key's one
#[endpoint(
    tags("sessions"),
    security(("bearer" = [])),
    responses(
        (status_code = 200, description = "The workspaces", body = WorkspaceList),
        (status_code = 401, description = "No key or session", body = super::openapi::schemas::Error),
    )
)]
impl ListWorkspaces {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let listed = async {
            let caller = authenticate(state, req).await?;
            let (id, current) = (caller.key_id.clone(), caller.workspace.clone());
            let is_user = caller.role.is_some();
            let (all, user) = blocking(state, move |accounts| {
                let user = if is_user { accounts.user(&id)? } else { None };
                Ok((Workspaces(accounts.0).list()?, user))
            })
            .await?;
            let workspaces = match user {
                Some(user) => {
                    let roles = user.roles();
                    all.iter()
                        .filter_map(|w| Some(WorkspaceBody::new(w, Some(*roles.get(&w.id)?))))
                        .collect()
                }
                None => all
                    .iter()
                    .filter(|w| w.id == current)
                    .map(|w| WorkspaceBody::new(w, None))
                    .collect(),
            };
            Ok::<_, ApiError>(WorkspaceList {
                current,
                workspaces,
            })
        };
        match listed.await {
            Ok(list) => res.render(Json(list)),
            Err(e) => e.write(res),
        }
    }
}

/// `POST /api/workspaces`.
pub struct CreateWorkspace(pub Arc<AppState>);

/// Make a workspace: the signed-in person who makes it is its owner
#[endpoint(
    tags("sessions"),
    request_body = Named,
    responses(
        (status_code = 201, description = "The workspace made", body = WorkspaceBody),
        (status_code = 400, description = "A bad name", body = super::openapi::schemas::Error),
        (status_code = 401, description = "Not signed in", body = super::openapi::schemas::Error),
        (status_code = 403, description = "An API key (keys act in one workspace), or from another site", body = super::openapi::schemas::Error),
    )
)]
impl CreateWorkspace {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let made = async {
            let caller = authenticate(state, req).await?;
            if caller.role.is_none() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "a workspace is made by a signed-in person, not an API key",
                ));
            }
            // Made by owners: a workspace's owner may add domains and admin keys, which a
            // viewer elsewhere must not get by making one.
            if caller.role != Some(Role::Owner) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "only an owner (of the workspace you act in) makes a workspace",
                ));
            }
            let sent: Named = read_json_object(req, MAX_BODY).await?;
            let user = caller.key_id.clone();
            let made = blocking(state, move |accounts| {
                let made = Workspaces(accounts.0).create(&sent.name)?;
                accounts.join(&user, &made.id, Role::Owner)?;
                Ok(made)
            })
            .await?;
            state
                .audit(
                    &caller,
                    &made.id,
                    "workspace.created",
                    &made.id,
                    None,
                    Some(serde_json::json!({ "id": made.id, "name": made.name })),
                )
                .await;
            Ok(WorkspaceBody::new(&made, Some(Role::Owner)))
        };
        match made.await {
            Ok(body) => {
                res.status_code(StatusCode::CREATED);
                res.render(Json(body));
            }
            Err(e) => e.write(res),
        }
    }
}

/// `PATCH /api/workspaces/{id}`.
pub struct RenameWorkspace(pub Arc<AppState>);

/// Rename the workspace the caller acts in (owner or admin)
#[endpoint(
    tags("sessions"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The workspace's id")),
    request_body = Named,
    responses(
        (status_code = 200, description = "The workspace as renamed", body = WorkspaceBody),
        (status_code = 400, description = "A bad name", body = super::openapi::schemas::Error),
        (status_code = 403, description = "Not an owner or admin", body = super::openapi::schemas::Error),
        (status_code = 404, description = "Not the workspace the caller acts in", body = super::openapi::schemas::Error),
    )
)]
impl RenameWorkspace {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let renamed = async {
            let caller = authenticate(state, req).await?;
            require_admin(&caller)?;
            let id = req.params().get("id").cloned().unwrap_or_default();
            if id != caller.workspace {
                return Err(ApiError::not_found("no such workspace here"));
            }
            let sent: Named = read_json_object(req, MAX_BODY).await?;
            let (before, after) = blocking(state, move |accounts| {
                let workspaces = Workspaces(accounts.0);
                let before = workspaces.get(&id)?;
                Ok((before, workspaces.rename(&id, &sent.name)?))
            })
            .await?;
            state
                .audit(
                    &caller,
                    &after.id,
                    "workspace.updated",
                    &after.id,
                    before.map(|b| serde_json::json!({ "name": b.name })),
                    Some(serde_json::json!({ "name": after.name })),
                )
                .await;
            Ok(WorkspaceBody::new(&after, caller.role))
        };
        match renamed.await {
            Ok(body) => res.render(Json(body)),
            Err(e) => e.write(res),
        }
    }
}

/// `PATCH /api/session`.
pub struct SwitchWorkspace(pub Arc<AppState>);

/// Act in another of the signed-in person's workspaces from now on (this session)
#[endpoint(
    tags("sessions"),
    request_body = Switch,
    responses(
        (status_code = 200, description = "The user, acting in the workspace named", body = SignedIn),
        (status_code = 401, description = "Not signed in", body = super::openapi::schemas::Error),
        (status_code = 403, description = "Not a member there, or from another site", body = super::openapi::schemas::Error),
    )
)]
impl SwitchWorkspace {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let switched = async {
            let Some((caller, mut session)) = signed_in(state, req).await? else {
                return Err(ApiError::new(StatusCode::UNAUTHORIZED, "not signed in"));
            };
            let sent: Switch = read_json_object(req, MAX_BODY).await?;
            let token = session_token(req).unwrap_or_default();
            let id = caller.key_id.clone();
            let workspace = sent.workspace.clone();
            let (user, names) = blocking(state, move |accounts| {
                let user = accounts
                    .user(&id)?
                    .filter(|u| u.role_in(&workspace).is_some())
                    .ok_or_else(|| {
                        crate::accounts::AccountError::Forbidden(format!(
                            "you are not a member of workspace {workspace}"
                        ))
                    })?;
                accounts.switch_workspace(&token, &workspace)?;
                Ok((user, Workspaces(accounts.0).list()?))
            })
            .await?;
            session.workspace = Some(sent.workspace.clone());
            Ok(SignedIn {
                user: user_body(&user, &sent.workspace, &names),
                session: session_body(&session, Some(&session.id)),
            })
        };
        match switched.await {
            Ok(body) => res.render(Json(body)),
            Err(e) => e.write(res),
        }
    }
}
