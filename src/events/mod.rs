//! What a workspace's people see change: the audit log (every change, numbered across the
//! installation, kept `--audit-retention`) and the live feed `GET /api/events` is made of.
//!
//! - [`Events::record`] stores an audit entry and hands it to this node's watchers of its
//!   workspace. In a cluster every node follows the stored entries instead (the store's
//!   `follow_audit`), so a watcher on any node sees every node's changes in one order.
//! - [`Counts`] are the workspace boards: the latest click count of each link clicked while
//!   someone watches the workspace. The writer's commit report sets a link's count (one map
//!   lookup per commit when nobody watches); a watcher takes what changed since it last
//!   looked, at most a few times a second, so 10,000 clicks a second cost a dashboard a
//!   bounded number of frames, never a backlog. In a cluster each node sends its boards'
//!   changes to the others (see [`Counts::publish_due`]).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::{
    domain::now_ms,
    keys::Caller,
    store::{SharedStore, StoreError, records::AuditRecord},
};

/// One audit entry for [`Events::record_many`]: workspace, action, target, before, after.
pub type AuditEntry = (
    String,
    &'static str,
    String,
    Option<serde_json::Value>,
    Option<serde_json::Value>,
);

/// Audit entries a slow watcher may fall behind by before it reads them from the store.
const FEED_CAPACITY: usize = 1024;

/// The audit log and the live feeds of this node.
pub struct Events {
    /// Held from an entry's append until its publication: watchers get entries in order.
    order: Mutex<()>,
    store: SharedStore,
    feeds: DashMap<String, broadcast::Sender<Arc<AuditRecord>>>,
    counts: Arc<Counts>,
}

impl Events {
    pub fn new(store: SharedStore, counts: Arc<Counts>) -> Arc<Self> {
        let events = Arc::new(Self {
            order: Mutex::new(()),
            store: store.clone(),
            feeds: DashMap::new(),
            counts,
        });
        // A cluster store delivers every node's entries, this node's too.
        let follower = events.clone();
        let _ = store.follow_audit(Box::new(move |record| follower.publish(record)));
        events
    }

    pub fn counts(&self) -> &Arc<Counts> {
        &self.counts
    }

    /// Stores a change in the audit log and tells the workspace's watchers. A failure is
    /// logged: the change itself is made.
    pub async fn record(
        self: &Arc<Self>,
        caller: &Caller,
        workspace: &str,
        action: &str,
        target: &str,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) {
        let record = AuditRecord {
            v: crate::store::records::RECORD_VERSION,
            seq: 0,
            at: now_ms(),
            workspace: workspace.to_owned(),
            who: caller.who.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            before: before.map(|v| v.to_string()),
            after: after.map(|v| v.to_string()),
        };
        let events = self.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let _order = events.order.lock().unwrap_or_else(PoisonError::into_inner);
            let seq = events.store.append_audit(&record)?;
            // A cluster store delivers every entry through `follow_audit`, in its order.
            if !events.store.shared_by_nodes() {
                events.publish(AuditRecord { seq, ..record });
            }
            Ok::<_, StoreError>(seq)
        })
        .await;
        match stored {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(action, target, cause = %e, "an audit entry was not stored")
            }
            Err(_) => tracing::error!(
                action,
                target,
                "an audit entry was not stored (shutting down)"
            ),
        }
    }

    /// Stores many audit entries of one caller together (one durable write where the store
    /// can), in order, and hands each to this node's watchers as [`Events::record`] does.
    /// Each entry is (workspace, action, target, before, after).
    pub async fn record_many(self: &Arc<Self>, caller: &Caller, entries: Vec<AuditEntry>) {
        if entries.is_empty() {
            return;
        }
        let at = now_ms();
        let records: Vec<AuditRecord> = entries
            .into_iter()
            .map(|(workspace, action, target, before, after)| AuditRecord {
                v: crate::store::records::RECORD_VERSION,
                seq: 0,
                at,
                workspace,
                who: caller.who.clone(),
                action: action.to_owned(),
                target,
                before: before.map(|v| v.to_string()),
                after: after.map(|v| v.to_string()),
            })
            .collect();
        let events = self.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let _order = events.order.lock().unwrap_or_else(PoisonError::into_inner);
            let numbers = events.store.append_audits(&records)?;
            if !events.store.shared_by_nodes() {
                for (record, seq) in records.into_iter().zip(numbers) {
                    events.publish(AuditRecord { seq, ..record });
                }
            }
            Ok::<_, StoreError>(())
        })
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(cause = %e, "audit entries were not stored"),
            Err(_) => tracing::error!("audit entries were not stored (shutting down)"),
        }
    }

    fn publish(&self, record: AuditRecord) {
        // A deleted link's count goes from the boards (every node hears of the deletion): a
        // link made again under its code counts from 1, which a board would not take.
        if record.action == "link.deleted" {
            self.counts.forget(&record.workspace, &record.target);
        }
        if let Some(feed) = self.feeds.get(&record.workspace) {
            let _ = feed.send(Arc::new(record));
        }
    }

    /// Watches `workspace`'s changes from now on.
    pub fn subscribe(&self, workspace: &str) -> broadcast::Receiver<Arc<AuditRecord>> {
        self.feeds
            .entry(workspace.to_owned())
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    /// Up to `limit` entries of `workspace` numbered below `before`, newest first.
    pub async fn page(
        &self,
        workspace: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (store, workspace) = (self.store.clone(), workspace.to_owned());
        tokio::task::spawn_blocking(move || store.audit_before(&workspace, before, limit))
            .await
            .map_err(|_| StoreError::Inconsistent("shutting down".into()))?
    }

    /// Up to `limit` entries of `workspace` numbered above `after`, oldest first.
    pub async fn since(
        &self,
        workspace: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let (store, workspace) = (self.store.clone(), workspace.to_owned());
        tokio::task::spawn_blocking(move || store.audit_after(&workspace, after, limit))
            .await
            .map_err(|_| StoreError::Inconsistent("shutting down".into()))?
    }

    /// Lets the entries older than `retention` go; returns how many were deleted.
    pub async fn trim(&self, retention: std::time::Duration) -> Result<usize, StoreError> {
        let cutoff =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.trim_audit(cutoff))
            .await
            .map_err(|_| StoreError::Inconsistent("shutting down".into()))?
    }
}

/// How often a cluster node passes its counts on, and boards nobody watches are dropped.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// How often the audit log is trimmed to its retention.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often sign-ins started and never finished are deleted (each lives 10 minutes).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Keeps the boards and the audit log until `stop`: in a cluster, passes this node's counts
/// on to the others and takes theirs in; drops boards nobody watches; trims the log to
/// `retention` (at the start, then hourly).
pub async fn upkeep(
    events: Arc<Events>,
    retention: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let counts = events.counts.clone();
    let shared = events.store.shared_by_nodes();
    let hearing = if shared {
        counts.keep_all();
        let taker = counts.clone();
        events.store.follow_counts(Box::new(
            move |workspace, payload| match rmp_serde::from_slice::<Vec<LinkCount>>(&payload) {
                Ok(links) => taker.learnt(&workspace, &links),
                Err(e) => tracing::warn!(cause = %e, "unreadable counts from another node"),
            },
        ))
    } else {
        None
    };
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    let (mut trimmed, mut swept): (Option<tokio::time::Instant>, Option<tokio::time::Instant>) =
        (None, None);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        if shared {
            for (workspace, links) in counts.publish_due() {
                if let Ok(payload) = rmp_serde::to_vec(&links) {
                    events.store.publish_counts(&workspace, payload);
                }
            }
        }
        counts.sweep();
        events.feeds.retain(|_, feed| feed.receiver_count() > 0);
        if trimmed.is_none_or(|at| at.elapsed() >= TRIM_EVERY) {
            trimmed = Some(tokio::time::Instant::now());
            match events.trim(retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(entries = n, "audit entries past their retention deleted"),
                Err(e) => tracing::warn!(cause = %e, "cannot trim the audit log"),
            }
        }
        if swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            swept = Some(tokio::time::Instant::now());
            // Sign-ins with the OpenID provider started and never finished.
            let store = events.store.clone();
            match tokio::task::spawn_blocking(move || crate::http::oidc::sweep(store.as_ref()))
                .await
            {
                Ok(Ok(0)) | Err(_) => {}
                Ok(Ok(n)) => tracing::info!(sign_ins = n, "unfinished OpenID sign-ins deleted"),
                Ok(Err(e)) => {
                    tracing::warn!(cause = %e, "cannot delete unfinished OpenID sign-ins")
                }
            }
        }
    }
    if let Some(hearing) = hearing {
        hearing.abort();
    }
}

/// A link's count as a board shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkCount {
    /// `null`: the default domain.
    pub domain: Option<String>,
    pub code: String,
    pub click_count: u64,
    /// Passed between nodes; never shown to a watcher.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

/// One workspace's board.
#[derive(Default)]
pub struct Board {
    state: Mutex<BoardState>,
    /// Watchers on this node.
    watchers: AtomicUsize,
    /// When the last watcher left (epoch milliseconds): a board is kept a while after, so a
    /// watcher that comes back gets the latest counts.
    left_at: std::sync::atomic::AtomicI64,
    /// Woken when a count changes.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct BoardState {
    /// Bumped with each change.
    version: u64,
    /// By the link's key (`code` or `domain/code`).
    links: HashMap<Arc<str>, Entry>,
    /// Versions not yet sent to the other nodes start after this.
    published: u64,
}

/// A link on a board.
struct Entry {
    count: u64,
    /// The board's version that set it.
    version: u64,
    /// Counted on this node (what it passes on to the others).
    local: bool,
    /// Who owns the link: a `links` watcher sees its own links' counts only.
    owner: Arc<str>,
}

impl Board {
    fn set(&self, key: &str, count: u64, local: bool, owner: &str) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let version = state.version + 1;
        let entry = Entry {
            count,
            version,
            local,
            owner: Arc::from(owner),
        };
        match state.links.get_mut(key) {
            Some(held) if held.count >= count => return false,
            Some(held) => *held = entry,
            None => {
                state.links.insert(Arc::from(key), entry);
            }
        }
        state.version = version;
        drop(state);
        self.changed.notify_waiters();
        true
    }

    /// The counts set after `version` (of `owner`'s links only, when given), and the version
    /// now.
    pub fn since(&self, version: u64, owner: Option<&str>) -> (Vec<LinkCount>, u64) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = state
            .links
            .iter()
            .filter(|(_, e)| e.version > version && owner.is_none_or(|o| *e.owner == *o))
            .map(|(key, e)| link_count(key, e))
            .collect();
        (changed, state.version)
    }

    /// What wakes a watcher when a count changes: made (and enabled) before the watcher
    /// reads the board, so a change in between still wakes it.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

fn link_count(key: &str, entry: &Entry) -> LinkCount {
    let (domain, code) = match key.split_once('/') {
        Some((domain, code)) => (Some(domain.to_owned()), code.to_owned()),
        None => (None, key.to_owned()),
    };
    LinkCount {
        domain,
        code,
        click_count: entry.count,
        owner: entry.owner.to_string(),
    }
}

/// The boards of the workspaces watched on this node (every workspace with clicks, in a
/// cluster, whose nodes pass their changes on).
#[derive(Default)]
pub struct Counts {
    boards: DashMap<String, Arc<Board>>,
    /// Set in a cluster: boards are kept for every workspace, to pass on.
    keep_all: std::sync::atomic::AtomicBool,
}

/// A watcher of a board: it stops counting as one when dropped.
pub struct Watching {
    pub board: Arc<Board>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.board.left_at.store(now_ms(), Ordering::Relaxed);
        self.board.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a board is kept after its last watcher left.
const KEPT_UNWATCHED_MS: i64 = 10 * 60 * 1000;

impl Counts {
    /// Keeps boards for every workspace (a cluster node passes its counts on).
    pub fn keep_all(&self) {
        self.keep_all.store(true, Ordering::Relaxed);
    }

    /// Whether any board is kept (else a commit has nothing to tell).
    pub fn active(&self) -> bool {
        self.keep_all.load(Ordering::Relaxed) || !self.boards.is_empty()
    }

    /// A link's count was committed on this node.
    pub fn committed(&self, workspace: &str, key: &str, count: u64, owner: &str) {
        if let Some(board) = self.boards.get(workspace) {
            board.set(key, count, true, owner);
            return;
        }
        if self.keep_all.load(Ordering::Relaxed) {
            self.board(workspace).set(key, count, true, owner);
        }
    }

    /// Forgets a deleted link's count.
    pub fn forget(&self, workspace: &str, key: &str) {
        if let Some(board) = self.boards.get(workspace) {
            board
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .links
                .remove(key);
        }
    }

    /// Counts another node passed on (see [`Counts::publish_due`]).
    pub fn learnt(&self, workspace: &str, counts: &[LinkCount]) {
        if let Some(board) = self.boards.get(workspace) {
            for c in counts {
                let key = match &c.domain {
                    Some(domain) => format!("{domain}/{}", c.code),
                    None => c.code.clone(),
                };
                board.set(&key, c.click_count, false, &c.owner);
            }
        }
    }

    fn board(&self, workspace: &str) -> Arc<Board> {
        self.boards.entry(workspace.to_owned()).or_default().clone()
    }

    /// Watches `workspace`'s board (counted as watched under the map's lock, so a sweep
    /// cannot drop it in between).
    pub fn watch(&self, workspace: &str) -> Watching {
        let entry = self.boards.entry(workspace.to_owned()).or_default();
        entry.watchers.fetch_add(1, Ordering::Relaxed);
        Watching {
            board: entry.clone(),
        }
    }

    /// Drops the boards nobody has watched for a while (and, in a cluster, with nothing left
    /// to pass on).
    pub fn sweep(&self) {
        let keep_all = self.keep_all.load(Ordering::Relaxed);
        let now = now_ms();
        self.boards.retain(|_, board| {
            if board.watchers.load(Ordering::Relaxed) > 0
                || now - board.left_at.load(Ordering::Relaxed) < KEPT_UNWATCHED_MS
            {
                return true;
            }
            let state = board.state.lock().unwrap_or_else(PoisonError::into_inner);
            keep_all && state.published < state.version
        });
    }

    /// Each board's changes not yet passed on to the other nodes.
    pub fn publish_due(&self) -> Vec<(String, Vec<LinkCount>)> {
        let mut out = Vec::new();
        for entry in &self.boards {
            let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.published == state.version {
                continue;
            }
            let since = state.published;
            let changed: Vec<LinkCount> = state
                .links
                .iter()
                .filter(|(_, e)| e.local && e.version > since)
                .map(|(key, e)| link_count(key, e))
                .collect();
            state.published = state.version;
            if !changed.is_empty() {
                out.push((entry.key().clone(), changed));
            }
        }
        out
    }
}
