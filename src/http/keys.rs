//! `/api/keys`: make, list and revoke API keys, with an admin key. A new key is shown once, in
//! the answer that makes it; the store keeps only its hash (see `crate::keys`).

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde::Deserialize;

use super::openapi::{E400, E401, E403, E404, E413, E415, E429, E503, schemas};
use super::{ApiError, AppState, authenticate, read_json_object, require_admin};
use crate::keys::{Caller, KeyError, KeyName, Scope};
use salvo_oapi::endpoint;

/// The largest body of `POST /api/keys` (a name and a scope).
const MAX_BODY: usize = 4 * 1024;

#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "CreateKeyRequest"))]
#[serde(deny_unknown_fields)]
struct CreateKeyRequest {
    name: String,
    scope: Scope,
}

/// The caller, if it holds an admin key: else `401` or `403`.
async fn admin(state: &AppState, req: &Request) -> Result<Caller, ApiError> {
    let caller = authenticate(state, req).await?;
    require_admin(&caller)?;
    Ok(caller)
}

/// Runs a store operation on the blocking pool (store calls are synchronous).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down",
            )
        })?
        .map_err(ApiError::from)
}

/// `POST /api/keys` `{"name", "scope"}`: `201 {"id","name","scope","key","createdAt"}`.
pub struct CreateKey(pub Arc<AppState>);

impl CreateKey {
    async fn create(&self, req: &mut Request) -> Result<crate::keys::NewKey, ApiError> {
        let caller = admin(&self.0, req).await?;
        let request: CreateKeyRequest = read_json_object(req, MAX_BODY).await?;
        // An admin key acts as an owner over members: an admin (not an owner) makes none.
        if request.scope == crate::keys::Scope::Admin
            && caller
                .role
                .is_some_and(|r| r != crate::accounts::Role::Owner)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only an owner makes an admin key (it acts as an owner)",
            ));
        }
        let name = KeyName::parse(&request.name)?;
        let state = self.0.clone();
        let workspace = caller.workspace.clone();
        let made = blocking(move || state.keys.create(&name, request.scope, &workspace)).await?;
        self.0
            .audit(
                &caller,
                &caller.workspace,
                "key.created",
                &made.id,
                None,
                Some(serde_json::json!({ "id": made.id, "name": made.name, "scope": made.scope })),
            )
            .await;
        Ok(made)
    }
}

/// Make an API key (admin); the key is shown only in this answer
#[endpoint(
    tags("keys"),
    security(("bearer" = [])),
    request_body = CreateKeyRequest,
    responses(
        (status_code = 201, description = "The key made", body = crate::keys::NewKey),
        E400, E401, E429, E403, E413, E415, E503,
    )
)]
impl CreateKey {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.create(req).await {
            Ok(made) => {
                tracing::info!(id = %made.id, scope = %made.scope, "API key made");
                res.status_code(StatusCode::CREATED);
                res.render(Json(made));
            }
            Err(e) => e.write(res),
        }
    }
}

/// `GET /api/keys`: `{"keys": [{"id","name","scope","createdAt","lastUsedAt"}]}`, oldest
/// first; `lastUsedAt` is `null` for a key never used.
pub struct ListKeys(pub Arc<AppState>);

/// Every API key, oldest first (admin); never the keys themselves
#[endpoint(
    tags("keys"),
    security(("bearer" = [])),
    responses((status_code = 200, description = "The keys", body = schemas::KeyList), E401, E429, E403)
)]
impl ListKeys {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match admin(&self.0, req).await {
            Ok(caller) => res.render(Json(
                serde_json::json!({ "keys": self.0.keys.list(Some(&caller.workspace)) }),
            )),
            Err(e) => e.write(res),
        }
    }
}

/// `DELETE /api/keys/{id}`: `204`; the key's next request is `401`.
pub struct RevokeKey(pub Arc<AppState>);

impl RevokeKey {
    async fn revoke(&self, req: &Request) -> Result<(), ApiError> {
        let caller = admin(&self.0, req).await?;
        let id = req.params().get("id").cloned().unwrap_or_default();
        let before = self
            .0
            .keys
            .list(Some(&caller.workspace))
            .into_iter()
            .find(|k| k.id == id);
        let state = self.0.clone();
        let (by, revoked) = (caller.clone(), id.clone());
        blocking(move || state.keys.revoke(&revoked, Some(&by))).await?;
        self.0
            .audit(
                &caller,
                &caller.workspace,
                "key.revoked",
                &id,
                before.and_then(|k| serde_json::to_value(k).ok()),
                None,
            )
            .await;
        Ok(())
    }
}

/// Revoke an API key (admin): its next request is 401
#[endpoint(
    tags("keys"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The key's id")),
    responses(
        (status_code = 204, description = "Revoked"),
        (status_code = 400, description = "The last admin key cannot revoke itself", body = schemas::Error),
        E401, E429, E403, E404, E503,
    )
)]
impl RevokeKey {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.revoke(req).await {
            Ok(()) => {
                res.status_code(StatusCode::NO_CONTENT);
            }
            Err(e) => e.write(res),
        }
    }
}
