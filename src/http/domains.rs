//! `/api/domains`: the domains links may live on besides the default one (the host of
//! `--base-url`), with an admin key. Names are checked and kept in their ASCII form
//! ([`DomainName`]); the registry here holds every domain in memory, read from the store at
//! start and, on a cluster node, again every [`REFRESH`] so domains added on other nodes are
//! known within it.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use salvo::{http::StatusCode, prelude::*};
use serde::{Deserialize, Serialize};

use super::fields::{Field, present};
use super::openapi::{E400, E401, E403, E404, E409, E413, E415, E429, E503};
use super::{ApiError, AppState, authenticate, read_json_object, require_admin};
use crate::{
    domain::{DomainName, TargetUrl, format_ms, now_ms},
    store::{
        SharedStore, StoreError,
        records::{CertificateStatus, DomainRecord},
    },
};
use salvo_oapi::endpoint;

/// The largest body taken.
const MAX_BODY: usize = 8 * 1024;
/// How often a cluster node reads the domains again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Every domain, by name.
#[derive(Default)]
pub struct Domains {
    by_name: RwLock<HashMap<String, Arc<DomainRecord>>>,
    /// Whether `by_name` holds any: read on every redirect, so without the lock.
    any: AtomicBool,
}

impl Domains {
    /// The domains in `store`.
    pub fn load(store: &dyn crate::store::Backend) -> Result<Self, StoreError> {
        let domains = Self::default();
        domains.replace(store.domains()?);
        Ok(domains)
    }

    fn replace(&self, records: Vec<DomainRecord>) {
        let map = records
            .into_iter()
            .map(|r| (r.name.clone(), Arc::new(r)))
            .collect();
        if let Ok(mut by_name) = self.by_name.write() {
            *by_name = map;
            self.any.store(!by_name.is_empty(), Ordering::Relaxed);
        }
    }

    /// Whether no domain but the default one exists (the common case: no lookup at all).
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Relaxed)
    }

    pub fn get(&self, name: &str) -> Option<Arc<DomainRecord>> {
        self.by_name.read().ok()?.get(name).cloned()
    }

    /// `name`'s domain. A cluster node that does not know it reads the domains again first:
    /// another node may have added it since the last refresh.
    pub async fn find(&self, name: &str, store: &SharedStore) -> Option<Arc<DomainRecord>> {
        if let Some(found) = self.get(name) {
            return Some(found);
        }
        if !store.shared_by_nodes() {
            return None;
        }
        let store = store.clone();
        if let Ok(Ok(records)) = tokio::task::spawn_blocking(move || store.domains()).await {
            self.replace(records);
        }
        self.get(name)
    }

    /// Every domain, oldest first.
    pub fn list(&self) -> Vec<Arc<DomainRecord>> {
        let mut all: Vec<_> = self
            .by_name
            .read()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        all
    }

    fn set(&self, record: DomainRecord) {
        if let Ok(mut by_name) = self.by_name.write() {
            by_name.insert(record.name.clone(), Arc::new(record));
            self.any.store(true, Ordering::Relaxed);
        }
    }

    fn remove(&self, name: &str) {
        if let Ok(mut by_name) = self.by_name.write() {
            by_name.remove(name);
            self.any.store(!by_name.is_empty(), Ordering::Relaxed);
        }
    }

    /// Reads the domains again every [`REFRESH`] until `stop` (a cluster node: other nodes
    /// change them too).
    pub async fn follow(
        self: Arc<Self>,
        store: SharedStore,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.domains()).await {
                Ok(Ok(records)) => self.replace(records),
                Ok(Err(e)) => tracing::warn!(cause = %e, "cannot read the domains again"),
                Err(_) => return,
            }
        }
    }
}

/// `POST /api/domains` as sent.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "CreateDomainRequest"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateDomain {
    name: String,
    #[serde(default)]
    root_url: Option<String>,
    #[serde(default)]
    not_found_url: Option<String>,
    #[serde(default)]
    https: bool,
    #[serde(default)]
    hsts: bool,
    #[serde(default)]
    https_only: bool,
}

/// `PATCH /api/domains/{name}` as sent: a field left out stays, `null` clears a URL.
#[derive(Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "PatchDomainRequest"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PatchDomain {
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<String>))]
    root_url: Field<String>,
    #[serde(default, deserialize_with = "present")]
    #[salvo(schema(value_type = Option<String>))]
    not_found_url: Field<String>,
    #[serde(default)]
    https: Option<bool>,
    #[serde(default)]
    hsts: Option<bool>,
    #[serde(default)]
    https_only: Option<bool>,
}

/// A domain's certificate, as the API shows it.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "DomainCertificate"))]
#[serde(rename_all = "camelCase")]
struct CertificateBody {
    /// `none`, `pending`, `valid` or `failed`.
    status: &'static str,
    not_after: Option<String>,
    error: Option<String>,
}

/// A domain, as the API shows it.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Domain"))]
#[serde(rename_all = "camelCase")]
pub(super) struct DomainBody {
    name: String,
    created_at: String,
    root_url: Option<String>,
    not_found_url: Option<String>,
    https: bool,
    hsts: bool,
    https_only: bool,
    certificate: CertificateBody,
}

/// `GET /api/domains`.
#[derive(Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "DomainList"))]
struct DomainList {
    domains: Vec<DomainBody>,
}

fn body(state: &AppState, record: &DomainRecord) -> DomainBody {
    DomainBody {
        name: record.name.clone(),
        created_at: format_ms(record.created_at),
        root_url: record.root_url.clone(),
        not_found_url: record.not_found_url.clone(),
        https: record.https,
        hsts: record.hsts,
        https_only: record.https_only,
        certificate: certificate(state, record),
    }
}

/// Where `record`'s certificate stands: one ordered (or being ordered) from the ACME server,
/// else the `--tls-cert` one when it covers the name.
fn certificate(state: &AppState, record: &DomainRecord) -> CertificateBody {
    let ordered = state
        .certificates
        .record(&record.name)
        .filter(|_| record.https);
    if let Some(c) = ordered {
        let status = match c.status {
            CertificateStatus::Pending => "pending",
            CertificateStatus::Valid if c.not_after > now_ms() => "valid",
            CertificateStatus::Valid | CertificateStatus::Failed => "failed",
        };
        let error = match (status, &c.error) {
            ("failed", None) => Some("the certificate expired".to_owned()),
            (_, e) => e.clone(),
        };
        return CertificateBody {
            status,
            not_after: (c.not_after > 0).then(|| format_ms(c.not_after)),
            error,
        };
    }
    match state.certificates.file_covering(&record.name) {
        Some(ends) => CertificateBody {
            status: "valid",
            not_after: Some(format_ms(ends)),
            error: None,
        },
        // Ordered soon when this server serves HTTPS; else TLS ends before it (a proxy).
        None => CertificateBody {
            status: if record.https && state.config.https_listen.is_some() {
                "pending"
            } else {
                "none"
            },
            not_after: None,
            error: None,
        },
    }
}

/// `hsts` and `httpsOnly` speak of HTTPS answers: a domain whose links are `http://` has none.
fn https_rules(https: bool, hsts: bool, https_only: bool) -> Result<(), ApiError> {
    for (on, field) in [(hsts, "hsts"), (https_only, "httpsOnly")] {
        if on && !https {
            return Err(ApiError::bad_request(format!(
                "{field}: needs \"https\": true (the domain's links are served over HTTPS)"
            )));
        }
    }
    Ok(())
}

fn url(field: &str, raw: Option<String>) -> Result<Option<String>, ApiError> {
    raw.map(|raw| {
        TargetUrl::parse(&raw)
            .map(|u| u.as_str().to_owned())
            .map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
    })
    .transpose()
}

/// Runs a store call on the blocking pool (`503` while shutting down).
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::unavailable("the service is shutting down", 1))?
        .map_err(|e| ApiError::from(crate::links::LinkError::Store(e)))
}

/// Stores `record` (new or changed) and takes it into the registry: the domain as shown.
async fn save(state: &AppState, record: DomainRecord) -> Result<DomainBody, ApiError> {
    let store = state.links.store().clone();
    let stored = record.clone();
    blocking(move || store.put_domain(&stored)).await?;
    let shown = body(state, &record);
    state.domains.set(record);
    Ok(shown)
}

/// Removes `name`'s ordered certificate, from the store and from this node.
async fn forget_certificate(state: &AppState, name: &str) -> Result<(), ApiError> {
    if state.certificates.record(name).is_none() {
        return Ok(());
    }
    let store = state.links.store().clone();
    let setting = format!("{}{name}", crate::certs::CERT);
    blocking(move || store.delete_setting(&setting)).await?;
    state.certificates.remove(name);
    Ok(())
}

fn name_param(req: &Request) -> Result<String, ApiError> {
    let raw = req.params().get("name").cloned().unwrap_or_default();
    DomainName::parse(&raw)
        .map(|n| n.to_string())
        .map_err(|_| ApiError::not_found("no such domain"))
}

/// Writes a domain's change to the audit log.
async fn audit(
    state: &AppState,
    caller: &crate::keys::Caller,
    action: &str,
    name: &str,
    before: Option<&DomainBody>,
    after: Option<&DomainBody>,
) {
    let json = |b: Option<&DomainBody>| b.and_then(|b| serde_json::to_value(b).ok());
    state
        .audit(
            caller,
            &caller.workspace,
            action,
            name,
            json(before),
            json(after),
        )
        .await;
}

/// Whether `domain` belongs to the caller's workspace.
pub fn in_workspace(domain: &DomainRecord, caller: &crate::keys::Caller) -> bool {
    crate::accounts::workspace_of(domain.workspace.as_deref()) == caller.workspace
}

/// `POST /api/domains`.
pub struct AddDomain(pub Arc<AppState>);

impl AddDomain {
    async fn add(&self, req: &mut Request) -> Result<DomainBody, ApiError> {
        let state = &self.0;
        let caller = authenticate(state, req).await?;
        require_admin(&caller)?;
        let sent: CreateDomain = read_json_object(req, MAX_BODY).await?;
        https_rules(sent.https, sent.hsts, sent.https_only)?;
        let name = DomainName::parse(&sent.name)
            .map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
        if state.default_domain.as_ref() == Some(&name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{name} is the default domain (the host of --base-url)"),
            ));
        }
        if state.domains.get(name.as_str()).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("domain {name} already exists"),
            ));
        }
        let record = DomainRecord {
            v: 1,
            name: name.to_string(),
            owner: caller.key_id.clone(),
            created_at: now_ms(),
            root_url: url("rootUrl", sent.root_url)?,
            not_found_url: url("notFoundUrl", sent.not_found_url)?,
            https: sent.https,
            hsts: sent.hsts,
            https_only: sent.https_only,
            workspace: crate::accounts::stored_id(&caller.workspace),
        };
        let made = save(state, record).await?;
        audit(
            state,
            &caller,
            "domain.created",
            &name.to_string(),
            None,
            Some(&made),
        )
        .await;
        Ok(made)
    }
}

/// Add a domain links may live on (admin)
#[endpoint(
    tags("domains"),
    security(("bearer" = [])),
    request_body = CreateDomain,
    responses(
        (status_code = 201, description = "The domain added", body = DomainBody),
        E400, E401, E403, E409, E413, E415, E429, E503,
    )
)]
impl AddDomain {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.add(req).await {
            Ok(made) => {
                tracing::info!(name = %made.name, "domain added");
                res.status_code(StatusCode::CREATED);
                res.render(Json(made));
            }
            Err(e) => e.write(res),
        }
    }
}

/// `GET /api/domains`.
pub struct ListDomains(pub Arc<AppState>);

/// Every domain besides the default one, oldest first (admin)
#[endpoint(
    tags("domains"),
    security(("bearer" = [])),
    responses((status_code = 200, description = "The domains", body = DomainList), E401, E403, E429)
)]
impl ListDomains {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let caller = match authenticate(state, req).await {
            Ok(caller) => caller,
            Err(e) => return e.write(res),
        };
        if let Err(e) = require_admin(&caller) {
            return e.write(res);
        }
        let domains = state
            .domains
            .list()
            .iter()
            .filter(|r| in_workspace(r, &caller))
            .map(|r| body(state, r))
            .collect();
        res.render(Json(DomainList { domains }));
    }
}

/// `PATCH /api/domains/{name}`.
pub struct PatchDomainRoute(pub Arc<AppState>);

impl PatchDomainRoute {
    async fn patch(&self, req: &mut Request) -> Result<DomainBody, ApiError> {
        let state = &self.0;
        let caller = authenticate(state, req).await?;
        require_admin(&caller)?;
        let name = name_param(req)?;
        let Some(current) = state
            .domains
            .get(&name)
            .filter(|d| in_workspace(d, &caller))
        else {
            return Err(ApiError::not_found("no such domain"));
        };
        let sent: PatchDomain = read_json_object(req, MAX_BODY).await?;
        let mut record = (*current).clone();
        if let Some(root) = sent.root_url {
            record.root_url = url("rootUrl", root)?;
        }
        if let Some(not_found) = sent.not_found_url {
            record.not_found_url = url("notFoundUrl", not_found)?;
        }
        record.https = sent.https.unwrap_or(record.https);
        record.hsts = sent.hsts.unwrap_or(record.hsts);
        record.https_only = sent.https_only.unwrap_or(record.https_only);
        https_rules(record.https, record.hsts, record.https_only)?;
        // HTTPS turned off: its certificate goes. Asked for again after a failed order: the
        // order is tried at once (the operator has mended what failed it).
        let failed = state
            .certificates
            .record(&name)
            .is_some_and(|c| c.status == CertificateStatus::Failed);
        if !record.https || (sent.https == Some(true) && failed) {
            forget_certificate(state, &name).await?;
        }
        let before = body(state, &current);
        let after = save(state, record).await?;
        audit(
            state,
            &caller,
            "domain.updated",
            &name,
            Some(&before),
            Some(&after),
        )
        .await;
        Ok(after)
    }
}

/// Change a domain (admin): a field left out stays, `null` clears a URL
#[endpoint(
    tags("domains"),
    security(("bearer" = [])),
    parameters(("name" = String, Path, description = "The domain's name")),
    request_body = PatchDomain,
    responses(
        (status_code = 200, description = "The domain as changed", body = DomainBody),
        E400, E401, E403, E404, E413, E415, E429, E503,
    )
)]
impl PatchDomainRoute {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.patch(req).await {
            Ok(changed) => res.render(Json(changed)),
            Err(e) => e.write(res),
        }
    }
}

/// `DELETE /api/domains/{name}`.
pub struct DeleteDomain(pub Arc<AppState>);

impl DeleteDomain {
    async fn delete(&self, req: &Request) -> Result<(), ApiError> {
        let state = &self.0;
        let caller = authenticate(state, req).await?;
        require_admin(&caller)?;
        let name = name_param(req)?;
        let Some(current) = state
            .domains
            .get(&name)
            .filter(|d| in_workspace(d, &caller))
        else {
            return Err(ApiError::not_found("no such domain"));
        };
        let before = body(state, &current);
        let store = state.links.store().clone();
        let key = name.clone();
        let has_links = blocking(move || store.has_links_on(&key)).await?;
        if has_links {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("domain {name} still has links: delete them first"),
            ));
        }
        let store = state.links.store().clone();
        let key = name.clone();
        blocking(move || store.delete_domain(&key)).await?;
        state.domains.remove(&name);
        // Its certificate goes with it (a domain added again orders a new one).
        forget_certificate(state, &name).await?;
        audit(state, &caller, "domain.deleted", &name, Some(&before), None).await;
        Ok(())
    }
}

/// Remove a domain (admin)
#[endpoint(
    tags("domains"),
    security(("bearer" = [])),
    parameters(("name" = String, Path, description = "The domain's name")),
    responses(
        (status_code = 204, description = "Removed"),
        (status_code = 409, description = "The domain still has links", body = super::openapi::schemas::Error),
        E401, E403, E404, E429, E503,
    )
)]
impl DeleteDomain {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        match self.delete(req).await {
            Ok(()) => {
                res.status_code(StatusCode::NO_CONTENT);
            }
            Err(e) => e.write(res),
        }
    }
}
