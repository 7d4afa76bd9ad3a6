//! Webhooks: each is a cursor over the click log and the audit log, advanced only after the
//! receiver answers `2xx`, so delivery is at least once without a queue of its own.
//!
//! - [`Webhooks::run`] (the supervisor) reads the webhooks from the store every [`REFRESH`]
//!   (and when this node changes one) and runs a delivering task for each enabled one whose
//!   lease this node holds: one node delivers a webhook, another takes over within
//!   [`LEASE`] of its death. An embedded store's single process always holds it.
//! - The task (`deliver`) learns which links moved from the workspace's board of counts
//!   (the writer's commits on this node; in a cluster, every node's, passed on), reads their
//!   clicks after its cursor from the store, and posts them in batches of up to
//!   `--webhook-batch`; link changes come from the audit log. Nothing waits in memory but the
//!   set of links with clicks to deliver: a slow receiver gets fewer, larger batches, and
//!   redirects never wait for a receiver.
//! - Messages have the Standard Webhooks form and signature (`sign`); targets are checked
//!   when set and at every connection (`target`).

mod deliver;
pub mod record;
pub mod sign;
pub mod target;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::format_ms,
    events::{Counts, Events},
    store::{SharedStore, StoreError},
};
pub use record::{Delivery, LinkCursor, WebhookRecord, WebhookState};

/// How often the supervisor reads the webhooks again (and renews its leases).
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long a node's lease on a webhook lasts without renewal (renewed every [`REFRESH`]).
pub const LEASE: Duration = Duration::from_secs(15);
/// After failing this long without a success, a webhook is disabled.
pub const FAILING_FOR_MS: i64 = 3 * 24 * 3600 * 1000;
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// The flags webhooks follow.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Clicks per message at most (`--webhook-batch`).
    pub batch: usize,
    /// Failed attempts in a row that disable a webhook (`--webhook-max-failures`).
    pub max_failures: u32,
    /// Whether loopback and private targets are allowed (`--webhook-allow-private`).
    pub allow_private: bool,
    /// How long one attempt may take.
    pub timeout: Duration,
}

/// The webhooks of this node.
pub struct Webhooks {
    store: SharedStore,
    counts: Arc<Counts>,
    events: Arc<Events>,
    metrics: Arc<crate::metrics::Metrics>,
    settings: WebhookSettings,
    client: reqwest::Client,
    /// The host of links on the default domain, as clicks name their domain.
    default_host: String,
    /// This node, as the leases name it.
    holder: String,
    running: Mutex<HashMap<String, Running>>,
    /// Wakes the supervisor (a webhook changed on this node).
    poke: Notify,
}

struct Running {
    record: watch::Sender<Arc<WebhookRecord>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What one attempt came to.
#[derive(Debug, Clone, Serialize, salvo_oapi::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// The receiver's status, if it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    /// How long the receiver asked to be left alone (`Retry-After`), if it did.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

impl Webhooks {
    pub fn new(
        store: SharedStore,
        counts: Arc<Counts>,
        events: Arc<Events>,
        metrics: Arc<crate::metrics::Metrics>,
        settings: WebhookSettings,
        default_host: String,
    ) -> Result<Arc<Self>, reqwest::Error> {
        Ok(Arc::new(Self {
            metrics,
            client: target::client(settings.allow_private, settings.timeout)?,
            store,
            counts,
            events,
            settings,
            default_host,
            holder: format!("{:016x}", rand::random::<u64>()),
            running: Mutex::default(),
            poke: Notify::new(),
        }))
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// A webhook was made, changed or deleted on this node: the supervisor looks now.
    pub fn changed(&self) {
        self.poke.notify_one();
    }

    /// Posts one signed message to `record`'s URL.
    pub async fn post(&self, record: &WebhookRecord, id: &str, body: bytes::Bytes) -> Attempt {
        let started = Instant::now();
        let failed = |error: String| Attempt {
            status: None,
            latency_ms: started.elapsed().as_millis() as u64,
            error: Some(error),
            retry_after: None,
        };
        // An address in the URL is checked here; a name, by the client's resolver.
        let url = match target::parse(&record.url, self.settings.allow_private) {
            Ok(url) => url,
            Err(e) => return failed(e),
        };
        let timestamp = crate::domain::now_ms() / 1000;
        let now = crate::domain::now_ms();
        let secrets = std::iter::once(record.secret.as_str()).chain(
            record
                .previous_secret
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(s, _)| s.as_str()),
        );
        let signature = sign::header(secrets, id, timestamp, &body);
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let mut answer = match sent {
            Ok(answer) => answer,
            Err(e) => return failed(error_chain(&e)),
        };
        let status = answer.status();
        let retry_after = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // The body is read (up to 64 KiB) so the connection can be used again.
        let mut read = 0;
        while let Ok(Some(chunk)) = answer.chunk().await {
            read += chunk.len();
            if read > 64 * 1024 {
                break;
            }
        }
        Attempt {
            status: Some(status.as_u16()),
            latency_ms: started.elapsed().as_millis() as u64,
            error: (!status.is_success()).then(|| match status.as_u16() {
                300..400 => format!("answered {status} (redirects are not followed)"),
                _ => format!("answered {status}"),
            }),
            retry_after,
        }
    }

    /// Runs the webhooks this node delivers until `stop`; then stops them, each saving where
    /// it stands.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.look().await;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(REFRESH) => {}
                () = self.poke.notified() => {}
            }
        }
        let all: Vec<Running> = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            running.drain().map(|(_, r)| r).collect()
        };
        for r in &all {
            r.stop.cancel();
        }
        for r in all {
            let _ = r.task.await;
        }
    }

    /// Starts, changes and stops delivering tasks to match the stored webhooks.
    async fn look(self: &Arc<Self>) {
        let store = self.store.clone();
        let records = match blocking(move || store.settings(record::PREFIX)).await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot read the webhooks");
                return;
            }
        };
        let mut stored = HashSet::new();
        let mut wanted = HashMap::new();
        for (_, bytes) in records {
            match record::decode_webhook(&bytes) {
                Ok(r) => {
                    stored.insert(r.id.clone());
                    if r.enabled {
                        wanted.insert(r.id.clone(), r);
                    }
                }
                Err(e) => tracing::warn!(cause = %e, "an unreadable webhook is skipped"),
            }
        }
        let enabled: HashSet<String> = wanted.keys().cloned().collect();
        for (id, record) in wanted {
            if !self.holds(&id).await {
                self.stop_one(&id, false).await;
                continue;
            }
            let record = Arc::new(record);
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            match running.get(&id) {
                Some(r) if !r.task.is_finished() => {
                    if **r.record.borrow() != *record {
                        r.record.send_replace(record);
                    }
                }
                _ => {
                    let (tx, rx) = watch::channel(record);
                    let stop = CancellationToken::new();
                    let task = tokio::spawn(deliver::run(self.clone(), rx, stop.clone()));
                    running.insert(
                        id,
                        Running {
                            record: tx,
                            stop,
                            task,
                        },
                    );
                }
            }
        }
        let unwanted: Vec<String> = {
            let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            running
                .keys()
                .filter(|id| !enabled.contains(*id))
                .cloned()
                .collect()
        };
        for id in unwanted {
            self.stop_one(&id, !stored.contains(&id)).await;
        }
    }

    /// Whether this node holds (or has just taken) the lease on webhook `id`.
    async fn holds(&self, id: &str) -> bool {
        if !self.store.shared_by_nodes() {
            return true;
        }
        let (store, name, holder) = (
            self.store.clone(),
            format!("webhook.{id}"),
            self.holder.clone(),
        );
        match blocking(move || store.take_lease(&name, &holder, LEASE)).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(webhook = id, cause = %e, "cannot renew a webhook's lease");
                false
            }
        }
    }

    /// Stops delivering `id` (its task saves where it stands); a deleted webhook's state is
    /// deleted after.
    async fn stop_one(&self, id: &str, deleted: bool) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if let Some(r) = running {
            r.stop.cancel();
            let _ = r.task.await;
        }
        if deleted {
            let (store, owned) = (self.store.clone(), id.to_owned());
            if let Err(e) = blocking(move || record::delete_state(store.as_ref(), &owned)).await {
                tracing::warn!(webhook = id, cause = %e, "cannot delete a webhook's state");
            }
        }
    }
}

/// Where a new webhook starts: after every click stored so far of the links it covers, and
/// after the workspace's last audit entry.
pub fn starting_state(
    store: &dyn crate::store::Backend,
    record: &WebhookRecord,
) -> Result<WebhookState, StoreError> {
    let mut state = WebhookState {
        v: crate::store::records::RECORD_VERSION,
        audit: store
            .audit_before(&record.workspace, None, 1)?
            .first()
            .map_or(0, |e| e.seq),
        ..WebhookState::default()
    };
    for_each_link(store, record, &mut |key, count, born| {
        if count > 0 {
            state
                .clicks
                .insert(key.to_owned(), LinkCursor { seq: count, born });
        }
    })?;
    Ok(state)
}

/// Calls `each(key, stored count, creation time)` for every link of `record`'s workspace it
/// covers (a named link now gone, or made again in another workspace, is not one).
fn for_each_link(
    store: &dyn crate::store::Backend,
    record: &WebhookRecord,
    each: &mut dyn FnMut(&str, u64, i64),
) -> Result<(), StoreError> {
    if let Some(links) = &record.links {
        for key in links {
            if let Some(link) = store.link(key)?
                && link.workspace == record.workspace
            {
                each(key, store.counter(key)?.count, link.created_at);
            }
        }
        return Ok(());
    }
    let mut cursor = None;
    loop {
        let workspace = record.workspace.as_str();
        let page = store.list_links(None, cursor.as_ref(), 1000, 100_000, &|l| {
            l.workspace == workspace
        })?;
        for link in &page.links {
            let key = link.code.as_str();
            each(key, store.counter(key)?.count, link.created_at);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// A webhook as the API shows it (never its secret).
#[derive(Debug, Serialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "Webhook"))]
#[serde(rename_all = "camelCase")]
pub struct WebhookBody {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// Only these links (`code`, or `domain/code` on another domain); `null`: every link.
    pub links: Option<Vec<String>>,
    pub enabled: bool,
    /// Why linkpulse disabled it, if it did.
    pub disabled_reason: Option<String>,
    pub created_at: String,
    /// Until when the secret before the last rotation still signs, if it does.
    pub previous_secret_until: Option<String>,
}

impl WebhookBody {
    pub fn of(record: &WebhookRecord) -> Self {
        Self {
            id: record.id.clone(),
            url: record.url.clone(),
            events: record.events.clone(),
            links: record.links.clone(),
            enabled: record.enabled,
            disabled_reason: record.disabled_reason.clone(),
            created_at: format_ms(record.created_at),
            previous_secret_until: record
                .previous_secret
                .as_ref()
                .filter(|(_, until)| *until > crate::domain::now_ms())
                .map(|(_, until)| format_ms(*until)),
        }
    }

    pub fn json(record: &WebhookRecord) -> Option<serde_json::Value> {
        serde_json::to_value(Self::of(record)).ok()
    }
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| StoreError::Inconsistent("shutting down".into()))?
}

/// An error with its causes (a client's errors say little at the top).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(raw: &str) -> Option<Duration> {
    if let Ok(secs) = raw.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(raw.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let read = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!((110..=120).contains(&read.as_secs()), "{read:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
