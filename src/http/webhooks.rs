//! `/api/webhooks`: a workspace's webhooks (owners and admins, or an admin key). Made with a
//! secret shown once; changed, deleted, tried (`/test`), their last attempts read
//! (`/deliveries`) and their secret rotated (`/rotate`: the old one still signs for a day).
//! Delivery itself is [`crate::webhooks`].

use std::sync::Arc;

use salvo::{http::StatusCode, prelude::*};
use serde::{Deserialize, Serialize};

use super::fields::{Field, present};
use super::openapi::{E400, E401, E403, E404, E413, E415, E429, E503};
use super::{ApiError, AppState, authenticate, domains::blocking, read_json_object, require_admin};
use crate::{
    domain::{DomainName, ShortCode, format_ms, now_ms},
    keys::Caller,
    store::StoreError,
    webhooks::{
        Attempt, WebhookBody, WebhookRecord,
        record::{self, EVENTS},
        sign, target,
    },
};
use salvo_oapi::endpoint;

/// The largest body taken.
const MAX_BODY: usize = 64 * 1024;
/// Webhooks a workspace may have.
const MAX_WEBHOOKS: usize = 50;
/// Links one webhook may name.
const MAX_LINKS: usize = 1000;
/// How long a rotated secret still signs.
const ROTATED_SIGNS_MS: i64 = 24 * 3600 * 1000;

/// `POST /api/webhooks` as sent.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "CreateWebhookRequest"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateWebhookBody {
    url: String,
    /// Some of `link.clicked`, `link.created`, `link.updated`, `link.deleted` (default: all).
    #[serde(default)]
    events: Option<Vec<String>>,
    /// Only these links: codes, or `domain/code` on another domain (default: every link).
    #[serde(default)]
    links: Option<Vec<String>>,
}

/// `PATCH /api/webhooks/{id}` as sent: a field left out stays; `"links": null` means every
/// link again.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "PatchWebhookRequest"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PatchWebhookBody {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    events: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<Vec<String>>))]
    links: Field<Vec<String>>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// A webhook just made, or a secret just rotated: the secret, shown this once.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "WebhookWithSecret"))]
#[serde(rename_all = "camelCase")]
struct WithSecret {
    #[serde(flatten)]
    webhook: WebhookBody,
    /// `whsec_` and base64: give it to a Standard Webhooks library to check signatures.
    secret: String,
}

#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "WebhookList"))]
struct WebhookList {
    webhooks: Vec<WebhookBody>,
}

/// One attempt, as `/deliveries` shows it.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "WebhookDelivery"))]
#[serde(rename_all = "camelCase")]
struct DeliveryBody {
    at: String,
    /// The message's `webhook-id` (a retried message keeps it).
    message_id: String,
    event: String,
    clicks: u32,
    /// The receiver's status, if it answered.
    status: Option<u16>,
    latency_ms: u64,
    error: Option<String>,
}

/// `GET /api/webhooks/{id}/deliveries`.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "WebhookDeliveries"))]
#[serde(rename_all = "camelCase")]
struct Deliveries {
    /// The last attempts, newest first.
    deliveries: Vec<DeliveryBody>,
    /// Clicks delivered in all.
    delivered_clicks: u64,
    /// Failed attempts in a row now.
    failures: u32,
    failing_since: Option<String>,
}

/// `POST /api/webhooks/{id}/rotate`.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "RotatedSecret"))]
#[serde(rename_all = "camelCase")]
struct Rotated {
    secret: String,
    /// Until when the secret before still signs (both signatures are sent).
    previous_secret_until: String,
}

async fn caller(state: &AppState, req: &Request) -> Result<Caller, ApiError> {
    let caller = authenticate(state, req).await?;
    require_admin(&caller)?;
    Ok(caller)
}

/// Every webhook of `workspace`.
async fn of_workspace(state: &AppState, workspace: &str) -> Result<Vec<WebhookRecord>, ApiError> {
    let store = state.links.store().clone();
    let all = blocking(move || store.settings(record::PREFIX)).await?;
    let mut found: Vec<WebhookRecord> = all
        .iter()
        .filter_map(|(_, bytes)| record::decode_webhook(bytes).ok())
        .filter(|r| r.workspace == workspace)
        .collect();
    found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(found)
}

/// The webhook of the path, if it is the caller's workspace's.
async fn named(
    state: &AppState,
    req: &Request,
    caller: &Caller,
) -> Result<WebhookRecord, ApiError> {
    let id = req.params().get("id").cloned().unwrap_or_default();
    let missing = || ApiError::not_found("no such webhook");
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(missing());
    }
    let store = state.links.store().clone();
    let name = format!("{}{id}", record::PREFIX);
    let bytes = blocking(move || store.setting(&name))
        .await?
        .ok_or_else(missing)?;
    let found = record::decode_webhook(&bytes).map_err(|e| {
        ApiError::from(crate::links::LinkError::Store(StoreError::Inconsistent(
            e.to_string(),
        )))
    })?;
    if found.workspace != caller.workspace {
        return Err(missing());
    }
    Ok(found)
}

async fn save(state: &AppState, record: &WebhookRecord) -> Result<(), ApiError> {
    let (store, name, bytes) = (
        state.links.store().clone(),
        format!("{}{}", record::PREFIX, record.id),
        record::encode_webhook(record),
    );
    blocking(move || store.put_setting(&name, &bytes)).await?;
    state.webhooks.changed();
    Ok(())
}

/// A URL a webhook may post to: `400` naming why not.
async fn checked_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let allow = state.webhooks.settings().allow_private;
    let url = target::parse(raw.trim(), allow).map_err(ApiError::bad_request)?;
    target::check_resolved(&url, allow)
        .await
        .map_err(ApiError::bad_request)?;
    Ok(url.to_string())
}

fn checked_events(events: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let Some(events) = events else {
        return Ok(EVENTS.iter().map(|e| (*e).to_owned()).collect());
    };
    let mut out: Vec<String> = Vec::new();
    for event in events {
        if !EVENTS.contains(&event.as_str()) {
            return Err(ApiError::bad_request(format!(
                "events: unknown event {event:?} (known: {})",
                EVENTS.join(", ")
            )));
        }
        if !out.contains(&event) {
            out.push(event);
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("events: name at least one event"));
    }
    Ok(out)
}

/// The links named, each an existing link of the caller's workspace, as keys.
async fn checked_links(
    state: &AppState,
    caller: &Caller,
    links: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(links) = links else {
        return Ok(None);
    };
    if links.is_empty() || links.len() > MAX_LINKS {
        return Err(ApiError::bad_request(format!(
            "links: name 1 to {MAX_LINKS} links, or leave it out for every link"
        )));
    }
    let mut keys = Vec::with_capacity(links.len());
    for raw in links {
        let unknown = || ApiError::bad_request(format!("links: no such link {raw:?}"));
        let (domain, code) = match raw.rsplit_once('/') {
            Some((domain, code)) => (Some(domain), code),
            None => (None, raw.as_str()),
        };
        let code = ShortCode::parse(code).map_err(|_| unknown())?;
        let domain = match domain {
            None => None,
            Some(d) => {
                let name = DomainName::parse(d).map_err(|_| unknown())?;
                (state.default_domain.as_ref() != Some(&name)).then_some(name)
            }
        };
        let code = ShortCode::on(domain.as_ref(), &code);
        let link = state.links.find(&code).await?.ok_or_else(unknown)?;
        if link.workspace != caller.workspace {
            return Err(unknown());
        }
        if !keys.contains(&code.as_str().to_owned()) {
            keys.push(code.as_str().to_owned());
        }
    }
    Ok(Some(keys))
}

async fn audit(
    state: &AppState,
    caller: &Caller,
    action: &str,
    id: &str,
    before: Option<&WebhookRecord>,
    after: Option<&WebhookRecord>,
) {
    state
        .audit(
            caller,
            &caller.workspace,
            action,
            id,
            before.and_then(WebhookBody::json),
            after.and_then(WebhookBody::json),
        )
        .await;
}

/// `POST /api/webhooks`.
pub struct CreateWebhook(pub Arc<AppState>);

impl CreateWebhook {
    async fn create(&self, req: &mut Request) -> Result<WithSecret, ApiError> {
        let state = &self.0;
        let caller = caller(state, req).await?;
        let sent: CreateWebhookBody = read_json_object(req, MAX_BODY).await?;
        let events = checked_events(sent.events)?;
        let links = checked_links(state, &caller, sent.links).await?;
        let url = checked_url(state, &sent.url).await?;
        if of_workspace(state, &caller.workspace).await?.len() >= MAX_WEBHOOKS {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a workspace may have at most {MAX_WEBHOOKS} webhooks"),
            ));
        }
        let now = now_ms();
        let record = WebhookRecord {
            v: crate::store::records::RECORD_VERSION,
            id: format!("wh_{}", hex::encode(rand::random::<[u8; 8]>())),
            workspace: caller.workspace.clone(),
            url,
            events,
            links,
            enabled: true,
            disabled_reason: None,
            secret: sign::new_secret(),
            previous_secret: None,
            created_at: now,
            created_by: caller.who.clone(),
            enabled_at: now,
        };
        // Where it starts (after every click stored so far), written before the webhook.
        let store = state.links.store().clone();
        let made = record.clone();
        blocking(move || {
            let start = crate::webhooks::starting_state(store.as_ref(), &made)?;
            let shards = start.clicks.keys().map(|k| record::shard_of(k)).collect();
            record::write_records(
                store.as_ref(),
                &record::state_records(&made.id, &start, &shards),
                true,
            )
        })
        .await?;
        save(state, &record).await?;
        audit(
            state,
            &caller,
            "webhook.created",
            &record.id,
            None,
            Some(&record),
        )
        .await;
        Ok(WithSecret {
            webhook: WebhookBody::of(&record),
            secret: record.secret,
        })
    }
}

/// Make a webhook (owners and admins): its secret is shown once
#[endpoint(
    tags("webhooks"),
    security(("bearer" = [])),
    request_body = CreateWebhookBody,
    responses(
        (status_code = 201, description = "The webhook made, with its secret", body = WithSecret),
        (status_code = 409, description = "The workspace has as many webhooks as it may", body = super::openapi::schemas::Error),
        E400, E401, E403, E413, E415, E429, E503,
    )
)]
impl CreateWebhook {
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

/// `GET /api/webhooks`.
pub struct ListWebhooks(pub Arc<AppState>);

/// The workspace's webhooks, oldest first (owners and admins)
#[endpoint(
    tags("webhooks"),
    security(("bearer" = [])),
    responses((status_code = 200, description = "The webhooks", body = WebhookList), E401, E403, E429, E503)
)]
impl ListWebhooks {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let listed = async {
            let caller = caller(state, req).await?;
            of_workspace(state, &caller.workspace).await
        }
        .await;
        match listed {
            Ok(all) => res.render(Json(WebhookList {
                webhooks: all.iter().map(WebhookBody::of).collect(),
            })),
            Err(e) => e.write(res),
        }
    }
}

/// `GET /api/webhooks/{id}`.
pub struct GetWebhook(pub Arc<AppState>);

/// A webhook (owners and admins)
#[endpoint(
    tags("webhooks"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The webhook's id")),
    responses((status_code = 200, description = "The webhook", body = WebhookBody), E401, E403, E404, E429, E503)
)]
impl GetWebhook {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let found = async {
            let caller = caller(state, req).await?;
            named(state, req, &caller).await
        }
        .await;
        match found {
            Ok(record) => res.render(Json(WebhookBody::of(&record))),
            Err(e) => e.write(res),
        }
    }
}

/// `PATCH /api/webhooks/{id}`.
pub struct UpdateWebhook(pub Arc<AppState>);

impl UpdateWebhook {
    async fn patch(&self, req: &mut Request) -> Result<WebhookBody, ApiError> {
        let state = &self.0;
        let caller = caller(state, req).await?;
        let before = named(state, req, &caller).await?;
        let sent: PatchWebhookBody = read_json_object(req, MAX_BODY).await?;
        let mut after = before.clone();
        if let Some(url) = sent.url {
            after.url = checked_url(state, &url).await?;
            if after.url != before.url {
                // Another receiver: the failures of the one before are forgotten.
                after.enabled_at = now_ms();
            }
        }
        if let Some(events) = sent.events {
            after.events = checked_events(Some(events))?;
        }
        if let Some(links) = sent.links {
            after.links = checked_links(state, &caller, links).await?;
        }
        if let Some(enabled) = sent.enabled {
            if enabled && !before.enabled {
                // Enabled again: delivery resumes from the cursor, failures forgotten.
                after.enabled_at = now_ms();
                after.disabled_reason = None;
            }
            after.enabled = enabled;
        }
        if after != before {
            save(state, &after).await?;
            audit(
                state,
                &caller,
                "webhook.updated",
                &after.id,
                Some(&before),
                Some(&after),
            )
            .await;
        }
        Ok(WebhookBody::of(&after))
    }
}

/// Change a webhook (owners and admins): `enabled: true` resumes where it stopped
#[endpoint(
    tags("webhooks"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The webhook's id")),
    request_body = PatchWebhookBody,
    responses(
        (status_code = 200, description = "The webhook as changed", body = WebhookBody),
        E400, E401, E403, E404, E413, E415, E429, E503,
    )
)]
impl UpdateWebhook {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.patch(req).await {
            Ok(changed) => res.render(Json(changed)),
            Err(e) => e.write(res),
        }
    }
}

/// `DELETE /api/webhooks/{id}`.
pub struct DeleteWebhook(pub Arc<AppState>);

impl DeleteWebhook {
    async fn delete(&self, req: &Request) -> Result<(), ApiError> {
        let state = &self.0;
        let caller = caller(state, req).await?;
        let before = named(state, req, &caller).await?;
        let (store, id) = (state.links.store().clone(), before.id.clone());
        blocking(move || {
            store.delete_setting(&format!("{}{id}", record::PREFIX))?;
            record::delete_state(store.as_ref(), &id)
        })
        .await?;
        state.webhooks.changed();
        audit(
            state,
            &caller,
            "webhook.deleted",
            &before.id,
            Some(&before),
            None,
        )
        .await;
        Ok(())
    }
}

/// Delete a webhook (owners and admins)
#[endpoint(
    tags("webhooks"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The webhook's id")),
    responses((status_code = 204, description = "Deleted"), E401, E403, E404, E429, E503)
)]
impl DeleteWebhook {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.delete(req).await {
            Ok(()) => {
                res.status_code(StatusCode::NO_CONTENT);
            }
            Err(e) => e.write(res),
        }
    }
}

/// `POST /api/webhooks/{id}/test`.
pub struct TestWebhook(pub Arc<AppState>);

/// Send a signed `webhook.test` message now and say how the receiver answered
#[endpoint(
    tags("webhooks"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The webhook's id")),
    responses(
        (status_code = 200, description = "The attempt: the receiver's status (or the error) and how long it took", body = Attempt),
        E401, E403, E404, E429, E503,
    )
)]
impl TestWebhook {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let tried = async {
            let caller = caller(state, req).await?;
            let record = named(state, req, &caller).await?;
            let body = serde_json::json!({
                "type": "webhook.test",
                "timestamp": format_ms(now_ms()),
                "data": {"webhook": record.id, "who": caller.who},
            });
            let id = format!("msg_{}", hex::encode(rand::random::<[u8; 12]>()));
            Ok::<_, ApiError>(
                state
                    .webhooks
                    .post(&record, &id, bytes::Bytes::from(body.to_string()))
                    .await,
            )
        }
        .await;
        match tried {
            Ok(attempt) => res.render(Json(attempt)),
            Err(e) => e.write(res),
        }
    }
}

/// `GET /api/webhooks/{id}/deliveries`.
pub struct ListWebhookDeliveries(pub Arc<AppState>);

/// The webhook's last delivery attempts, newest first, and where it stands
#[endpoint(
    tags("webhooks"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The webhook's id")),
    responses((status_code = 200, description = "The attempts", body = Deliveries), E401, E403, E404, E429, E503)
)]
impl ListWebhookDeliveries {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let read = async {
            let caller = caller(state, req).await?;
            let record = named(state, req, &caller).await?;
            let (store, name) = (
                state.links.store().clone(),
                format!("{}{}", record::STATE_PREFIX, record.id),
            );
            let bytes = blocking(move || store.setting(&name)).await?;
            Ok::<_, ApiError>(
                bytes
                    .and_then(|b| record::decode_state(&b).ok())
                    .unwrap_or_default(),
            )
        }
        .await;
        match read {
            Ok(st) => res.render(Json(Deliveries {
                deliveries: st
                    .deliveries
                    .iter()
                    .rev()
                    .map(|d| DeliveryBody {
                        at: format_ms(d.at),
                        message_id: d.message.clone(),
                        event: d.event.clone(),
                        clicks: d.clicks,
                        status: d.status,
                        latency_ms: d.latency_ms,
                        error: d.error.clone(),
                    })
                    .collect(),
                delivered_clicks: st.delivered,
                failures: st.failures,
                failing_since: st.failing_since.map(format_ms),
            })),
            Err(e) => e.write(res),
        }
    }
}

/// `POST /api/webhooks/{id}/rotate`.
pub struct RotateWebhookSecret(pub Arc<AppState>);

/// A new secret (shown once); the one before still signs for 24 hours
#[endpoint(
    tags("webhooks"),
    security(("bearer" = [])),
    parameters(("id" = String, Path, description = "The webhook's id")),
    responses((status_code = 200, description = "The new secret", body = Rotated), E401, E403, E404, E429, E503)
)]
impl RotateWebhookSecret {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let rotated = async {
            let caller = caller(state, req).await?;
            let before = named(state, req, &caller).await?;
            let until = now_ms() + ROTATED_SIGNS_MS;
            let after = WebhookRecord {
                secret: sign::new_secret(),
                previous_secret: Some((before.secret.clone(), until)),
                ..before.clone()
            };
            save(state, &after).await?;
            audit(
                state,
                &caller,
                "webhook.rotated",
                &after.id,
                Some(&before),
                Some(&after),
            )
            .await;
            Ok::<_, ApiError>(Rotated {
                secret: after.secret,
                previous_secret_until: format_ms(until),
            })
        }
        .await;
        match rotated {
            Ok(r) => res.render(Json(r)),
            Err(e) => e.write(res),
        }
    }
}
