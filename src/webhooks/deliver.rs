//! One webhook's delivering task: what moved is learnt from the workspace's board (and a full
//! look at the store at the start and every so often), read from the store after the cursor,
//! posted, and the cursor advanced when the receiver answers `2xx`. Failures wait, doubling
//! from under a second to [`MAX_BACKOFF`], and disable the webhook when they last.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Attempt, FAILING_FOR_MS, MAX_BACKOFF, WebhookBody, Webhooks, blocking, for_each_link,
    record::{self, Delivery, LinkCursor, WebhookRecord, WebhookState},
};
use crate::{
    domain::{ClickEvent, format_ms, now_ms},
    events::LinkCount,
    keys::{Caller, Scope},
    links::frame::Analytics,
};

/// How often the cursor is written while messages keep being delivered (a crash re-sends
/// at most what was delivered since: at least once).
const SAVE_EVERY: Duration = Duration::from_millis(250);
/// How often the whole workspace is looked at again, in case a count never reached the
/// board (a cluster's counts are passed on without being stored).
const SCAN_EVERY: Duration = Duration::from_secs(300);
const SCAN_EVERY_CLUSTER: Duration = Duration::from_secs(30);
/// Audit entries read at a time.
const AUDIT_PAGE: usize = 100;
const LINK_EVENTS: [&str; 3] = ["link.created", "link.updated", "link.deleted"];

/// A message on its way, kept as it is until it is delivered (a retry sends the same id and
/// body, with its own timestamp and signature).
struct Message {
    id: String,
    event: String,
    body: Bytes,
    /// Where each link's cursor goes when it is delivered.
    clicks: Vec<(String, LinkCursor)>,
    count: u32,
    /// Where the audit cursor goes when it is delivered.
    audit: Option<u64>,
}

struct Worker {
    hooks: Arc<Webhooks>,
    record: watch::Receiver<Arc<WebhookRecord>>,
    id: String,
    state: WebhookState,
    /// Links with clicks past their cursor: the latest stored count known of each.
    pending: HashMap<String, u64>,
    /// The pending links in the order they are served: each batch starts where the last one
    /// stopped, so one busy link never holds up the others.
    turns: VecDeque<String>,
    /// Whether the audit log may hold entries not yet looked at.
    audit_due: bool,
    dirty: bool,
    /// The shards of the cursors changed since the last save.
    dirty_shards: BTreeSet<u8>,
    saved_at: Instant,
}

pub(super) async fn run(
    hooks: Arc<Webhooks>,
    record: watch::Receiver<Arc<WebhookRecord>>,
    stop: CancellationToken,
) {
    let current = record.borrow().clone();
    let id = current.id.clone();
    let workspace = current.workspace.clone();
    let (store, named) = (hooks.store.clone(), id.clone());
    let mut fresh = false;
    let state = match blocking(move || record::load_state(store.as_ref(), &named)).await {
        Ok(Some(state)) => state,
        // Made on a node that has not written it yet: from now on.
        Ok(None) => {
            fresh = true;
            let store = hooks.store.clone();
            let current = current.clone();
            match blocking(move || super::starting_state(store.as_ref(), &current)).await {
                Ok(state) => state,
                Err(e) => {
                    tracing::warn!(webhook = %id, cause = %e, "cannot read where a webhook starts");
                    return;
                }
            }
        }
        Err(e) => {
            tracing::warn!(webhook = %id, cause = %e, "cannot read a webhook's state");
            return;
        }
    };
    let mut worker = Worker {
        hooks: hooks.clone(),
        record,
        id,
        state,
        pending: HashMap::new(),
        turns: VecDeque::new(),
        audit_due: true,
        dirty: fresh,
        dirty_shards: BTreeSet::new(),
        saved_at: Instant::now(),
    };
    if fresh {
        worker.dirty_shards = worker
            .state
            .clicks
            .keys()
            .map(|k| record::shard_of(k))
            .collect();
    }
    let watching = hooks.counts.watch(&workspace);
    let board = watching.board.clone();
    let mut feed = hooks.events.subscribe(&workspace);
    let scan_every = if hooks.store.shared_by_nodes() {
        SCAN_EVERY_CLUSTER
    } else {
        SCAN_EVERY
    };
    let mut version = 0;
    let mut scanned: Option<Instant> = None;
    let mut retry: Option<Message> = None;
    while !stop.is_cancelled() {
        worker.forget_old_failures();
        let changed = board.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (moved, now_at) = board.since(version, None);
        version = now_at;
        worker.merge(&moved);
        while let Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) = feed.try_recv() {
            worker.audit_due = true;
        }
        if scanned.is_none_or(|at| at.elapsed() >= scan_every) {
            scanned = Some(Instant::now());
            worker.scan().await;
        }
        let message = match retry.take() {
            Some(message) => Some(message),
            None => worker.next_message().await,
        };
        let Some(message) = message else {
            worker.save(true).await;
            let next_scan =
                scan_every.saturating_sub(scanned.map_or(Duration::ZERO, |at| at.elapsed()));
            tokio::select! {
                () = &mut changed => {}
                _ = feed.recv() => worker.audit_due = true,
                _ = worker.record.changed() => {}
                () = tokio::time::sleep(next_scan) => {}
                () = stop.cancelled() => break,
            }
            continue;
        };
        let current = worker.record.borrow().clone();
        // A stop does not wait for the receiver: the message is sent again by whoever delivers
        // next.
        let attempt = tokio::select! {
            attempt = hooks.post(&current, &message.id, message.body.clone()) => attempt,
            () = stop.cancelled() => break,
        };
        worker.state.attempted(Delivery {
            at: now_ms(),
            message: message.id.clone(),
            event: message.event.clone(),
            clicks: message.count,
            status: attempt.status,
            latency_ms: attempt.latency_ms,
            error: attempt.error.clone(),
        });
        worker.dirty = true;
        if attempt.succeeded() {
            hooks.metrics.webhook_delivered(u64::from(message.count));
            worker.delivered(&message);
            worker.save(false).await;
            continue;
        }
        hooks.metrics.webhook_failed();
        worker.state.failures += 1;
        let since = *worker.state.failing_since.get_or_insert_with(now_ms);
        worker.save(true).await;
        let failures = worker.state.failures;
        if failures >= hooks.settings.max_failures.max(1) || now_ms() - since >= FAILING_FOR_MS {
            worker.disable(&attempt).await;
            break;
        }
        tracing::debug!(webhook = %worker.id, failures, error = ?attempt.error, "a webhook's delivery failed; trying again");
        retry = Some(message);
        tokio::select! {
            () = tokio::time::sleep(backoff(failures, attempt.retry_after)) => {}
            _ = worker.record.changed() => {}
            () = stop.cancelled() => break,
        }
    }
    worker.save(true).await;
    drop(watching);
}

/// The wait before the next attempt after `failures` in a row: from half a second to a
/// second the first time, doubling, at most [`MAX_BACKOFF`]; at least what the receiver
/// asked for (within the same cap).
fn backoff(failures: u32, retry_after: Option<Duration>) -> Duration {
    let doubled = Duration::from_secs(1)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let jittered = doubled.mul_f64(rand::random_range(0.5..=1.0));
    retry_after
        .map_or(jittered, |asked| jittered.max(asked))
        .min(MAX_BACKOFF)
}

/// A click as a receiver gets it.
#[derive(Serialize)]
struct ClickOut<'a> {
    domain: &'a str,
    code: &'a str,
    seq: u64,
    #[serde(flatten)]
    analytics: Analytics<'a>,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: T,
}

#[derive(Serialize)]
struct Clicks<'a> {
    clicks: Vec<ClickOut<'a>>,
}

impl Worker {
    fn current(&self) -> Arc<WebhookRecord> {
        self.record.borrow().clone()
    }

    fn cursor(&self, key: &str) -> LinkCursor {
        self.state.clicks.get(key).copied().unwrap_or_default()
    }

    /// Forgets the failures from before the webhook was last enabled (or given another URL).
    fn forget_old_failures(&mut self) {
        let enabled_at = self.current().enabled_at;
        if self
            .state
            .failing_since
            .is_some_and(|since| since < enabled_at)
        {
            self.state.failures = 0;
            self.state.failing_since = None;
            self.dirty = true;
        }
    }

    /// Takes in links' stored counts from the board.
    fn merge(&mut self, moved: &[LinkCount]) {
        for c in moved {
            let key = match &c.domain {
                Some(domain) => format!("{domain}/{}", c.code),
                None => c.code.clone(),
            };
            self.moved(key, c.click_count, None);
        }
    }

    /// A link of the workspace has `count` clicks stored; `born`, its creation time, when
    /// known (a scan's; the board's counts do not say).
    fn moved(&mut self, key: String, count: u64, born: Option<i64>) {
        let record = self.current();
        let mut cursor = self.cursor(&key);
        let made_again = born.is_some_and(|b| cursor.born != 0 && cursor.born != b);
        if made_again || count < cursor.seq {
            // Another link under this code (deleted and made again): from its first click.
            self.drop_cursor(&key);
            cursor = LinkCursor::default();
        }
        if !record.covers(&key) || !record.wants("link.clicked") {
            // Not asked for: passed over, so asking later starts from then.
            if count > cursor.seq {
                let born = born.unwrap_or(cursor.born);
                self.set_cursor(key, LinkCursor { seq: count, born });
            }
            return;
        }
        if count > cursor.seq {
            match self.pending.get_mut(&key) {
                Some(tip) => *tip = (*tip).max(count),
                None => {
                    self.pending.insert(key.clone(), count);
                    self.turns.push_back(key);
                }
            }
        }
    }

    /// A link was deleted: its clicks are gone, and a link made later under its code starts
    /// from its first click.
    fn forget(&mut self, key: &str) {
        self.pending.remove(key);
        self.drop_cursor(key);
    }

    fn set_cursor(&mut self, key: String, cursor: LinkCursor) {
        self.dirty_shards.insert(record::shard_of(&key));
        self.state.clicks.insert(key, cursor);
        self.dirty = true;
    }

    fn drop_cursor(&mut self, key: &str) {
        if self.state.clicks.remove(key).is_some() {
            self.dirty_shards.insert(record::shard_of(key));
            self.dirty = true;
        }
    }

    /// Looks at every link the webhook covers, in the store.
    async fn scan(&mut self) {
        let (store, record) = (self.hooks.store.clone(), self.current());
        let found = blocking(move || {
            let mut found = Vec::new();
            for_each_link(store.as_ref(), &record, &mut |key, count, born| {
                found.push((key.to_owned(), count, born));
            })?;
            Ok(found)
        })
        .await;
        match found {
            Ok(found) => {
                for (key, count, born) in found {
                    self.moved(key, count, Some(born));
                }
            }
            Err(e) => {
                tracing::warn!(webhook = %self.id, cause = %e, "cannot look at a webhook's links")
            }
        }
    }

    /// The next message to deliver: a link change first, else a batch of clicks.
    async fn next_message(&mut self) -> Option<Message> {
        let record = self.current();
        if self.audit_due
            && let Some(message) = self.link_event(&record).await
        {
            return Some(message);
        }
        self.clicks(&record).await
    }

    /// The next link change the webhook asked for, from the audit log.
    async fn link_event(&mut self, record: &WebhookRecord) -> Option<Message> {
        loop {
            let (store, workspace, after) = (
                self.hooks.store.clone(),
                record.workspace.clone(),
                self.state.audit,
            );
            let entries =
                match blocking(move || store.audit_after(&workspace, after, AUDIT_PAGE)).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        tracing::warn!(webhook = %self.id, cause = %e, "cannot read the audit log");
                        return None;
                    }
                };
            let full = entries.len() == AUDIT_PAGE;
            for entry in entries {
                if entry.action == "link.deleted" {
                    self.forget(&entry.target);
                }
                let wanted = LINK_EVENTS.contains(&entry.action.as_str())
                    && record.wants(&entry.action)
                    && record.covers(&entry.target);
                let link = if entry.action == "link.deleted" {
                    &entry.before
                } else {
                    &entry.after
                };
                match (wanted, link) {
                    (true, Some(link)) => {
                        let data: serde_json::Value =
                            serde_json::from_str(link).unwrap_or(serde_json::Value::Null);
                        let body = serde_json::to_vec(&Envelope {
                            kind: &entry.action,
                            timestamp: format_ms(entry.at),
                            data,
                        })
                        .unwrap_or_default();
                        return Some(Message {
                            id: format!("msg_{}_a{}", record.id, entry.seq),
                            event: entry.action.clone(),
                            body: Bytes::from(body),
                            clicks: Vec::new(),
                            count: 0,
                            audit: Some(entry.seq),
                        });
                    }
                    _ => {
                        self.state.audit = entry.seq;
                        self.dirty = true;
                    }
                }
            }
            if !full {
                self.audit_due = false;
                return None;
            }
        }
    }

    /// Up to `--webhook-batch` clicks past the cursors, read from the store, the links taken
    /// in turn.
    async fn clicks(&mut self, record: &WebhookRecord) -> Option<Message> {
        if self.pending.is_empty() || !record.wants("link.clicked") {
            return None;
        }
        let batch = self.hooks.settings.batch.max(1);
        let mut wanted = Vec::new();
        let mut room = 0;
        while room < batch as u64 {
            let Some(key) = self.turns.pop_front() else {
                break;
            };
            let Some(&tip) = self.pending.get(&key) else {
                continue;
            };
            let cursor = self.cursor(&key);
            if tip <= cursor.seq || !record.covers(&key) {
                self.pending.remove(&key);
                continue;
            }
            room += tip - cursor.seq;
            wanted.push((key, cursor));
        }
        let (store, workspace) = (self.hooks.store.clone(), record.workspace.clone());
        let asked: Vec<String> = wanted.iter().map(|(key, _)| key.clone()).collect();
        let read = blocking(move || {
            let mut read: Vec<(String, i64, Vec<ClickEvent>)> = Vec::new();
            let mut gone = Vec::new();
            let mut left = batch;
            for (key, cursor) in wanted {
                if left == 0 {
                    break;
                }
                // The link the code names now: a deleted one's clicks are gone, another
                // workspace's are not this webhook's, and one made again starts over.
                let link = match store.link(&key)? {
                    Some(link) if link.workspace == workspace => link,
                    _ => {
                        gone.push(key);
                        continue;
                    }
                };
                let after = if cursor.born == 0 || cursor.born == link.created_at {
                    cursor.seq
                } else {
                    0
                };
                let mut clicks = Vec::new();
                store.walk_clicks(&key, after, &mut |event| {
                    clicks.push(event);
                    left -= 1;
                    if left == 0 {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                })?;
                read.push((key, link.created_at, clicks));
            }
            Ok((read, gone))
        })
        .await;
        let (read, gone) = match read {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(webhook = %self.id, cause = %e, "cannot read clicks to deliver");
                for key in asked.into_iter().rev() {
                    self.turns.push_front(key);
                }
                return None;
            }
        };
        // A link the batch had no room for keeps its turn; one read takes its turn again
        // when its message is delivered (see `delivered`).
        for key in asked.iter().rev() {
            if !read.iter().any(|(k, _, _)| k == key) && !gone.contains(key) {
                self.turns.push_front(key.clone());
            }
        }
        for key in gone {
            self.pending.remove(&key);
        }
        let mut out = Vec::new();
        let mut advance = Vec::new();
        for (key, born, clicks) in &read {
            match clicks.last() {
                Some(last) => advance.push((
                    key.clone(),
                    LinkCursor {
                        seq: last.seq,
                        born: *born,
                    },
                )),
                // Nothing stored past the cursor (clicks past their retention): looked at
                // again at the next scan.
                None => {
                    self.pending.remove(key);
                }
            }
            let (domain, code) = match key.split_once('/') {
                Some((domain, code)) => (domain, code),
                None => (self.hooks.default_host.as_str(), key.as_str()),
            };
            out.extend(clicks.iter().map(|event| ClickOut {
                domain,
                code,
                seq: event.seq,
                analytics: Analytics::of(code, event),
            }));
        }
        if out.is_empty() {
            return None;
        }
        let count = out.len() as u32;
        let body = serde_json::to_vec(&Envelope {
            kind: "link.clicked",
            timestamp: format_ms(now_ms()),
            data: Clicks { clicks: out },
        })
        .unwrap_or_default();
        Some(Message {
            id: format!("msg_{}", hex::encode(rand::random::<[u8; 12]>())),
            event: "link.clicked".into(),
            body: Bytes::from(body),
            clicks: advance,
            count,
            audit: None,
        })
    }

    /// The receiver took `message`: the cursors move past it.
    fn delivered(&mut self, message: &Message) {
        for (key, delivered) in &message.clicks {
            let cursor = self.cursor(key);
            if cursor.born != delivered.born || cursor.seq < delivered.seq {
                self.set_cursor(key.clone(), *delivered);
            }
            match self.pending.get(key) {
                Some(tip) if *tip <= delivered.seq => {
                    self.pending.remove(key);
                }
                // More clicks: its next turn, at the back.
                Some(_) => self.turns.push_back(key.clone()),
                None => {}
            }
        }
        if let Some(seq) = message.audit {
            self.state.audit = self.state.audit.max(seq);
        }
        self.state.delivered += u64::from(message.count);
        self.state.failures = 0;
        self.state.failing_since = None;
        self.dirty = true;
    }

    /// Writes the state when it changed (and, unless `now`, the last write is a while ago).
    async fn save(&mut self, now: bool) {
        if !self.dirty || (!now && self.saved_at.elapsed() < SAVE_EVERY) {
            return;
        }
        let shards = std::mem::take(&mut self.dirty_shards);
        let (store, records) = (
            self.hooks.store.clone(),
            record::state_records(&self.id, &self.state, &shards),
        );
        // A cursor found older after a crash only sends some messages again.
        match blocking(move || record::write_records(store.as_ref(), &records, false)).await {
            Ok(()) => {
                self.dirty = false;
                self.saved_at = Instant::now();
            }
            Err(e) => {
                // Written again with the next save.
                self.dirty_shards.extend(shards);
                tracing::warn!(webhook = %self.id, cause = %e, "cannot save a webhook's cursor")
            }
        }
    }

    /// Disables the webhook after its failures, and says so in the audit log.
    async fn disable(&mut self, last: &Attempt) {
        let since = self.state.failing_since.unwrap_or_else(now_ms);
        let reason = format!(
            "disabled after {} failed attempts in a row since {}; the last: {}",
            self.state.failures,
            format_ms(since),
            last.error.as_deref().unwrap_or("no answer"),
        );
        let (store, name) = (
            self.hooks.store.clone(),
            format!("{}{}", record::PREFIX, self.id),
        );
        let reason_set = reason.clone();
        let changed = blocking(move || {
            let Some(bytes) = store.setting(&name)? else {
                return Ok(None);
            };
            let before = record::decode_webhook(&bytes)
                .map_err(|e| crate::store::StoreError::Inconsistent(e.to_string()))?;
            let after = WebhookRecord {
                enabled: false,
                disabled_reason: Some(reason_set),
                ..before.clone()
            };
            store.put_setting(&name, &record::encode_webhook(&after))?;
            Ok(Some((before, after)))
        })
        .await;
        match changed {
            Ok(Some((before, after))) => {
                tracing::warn!(webhook = %self.id, url = %after.url, reason, "webhook disabled");
                let linkpulse = Caller {
                    key_id: "linkpulse".into(),
                    scope: Scope::Admin,
                    workspace: after.workspace.clone(),
                    who: "linkpulse (delivery failures)".into(),
                    role: None,
                };
                self.hooks
                    .events
                    .record(
                        &linkpulse,
                        &after.workspace,
                        "webhook.disabled",
                        &after.id,
                        WebhookBody::json(&before),
                        WebhookBody::json(&after),
                    )
                    .await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(webhook = %self.id, cause = %e, "cannot disable a failing webhook")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_under_a_second_doubles_and_stops_at_ten_minutes() {
        for _ in 0..100 {
            let first = backoff(1, None);
            assert!(first <= Duration::from_secs(1) && first >= Duration::from_millis(500));
            let fourth = backoff(4, None);
            assert!(fourth <= Duration::from_secs(8) && fourth >= Duration::from_secs(4));
            assert!(backoff(40, None) <= MAX_BACKOFF);
            assert!(backoff(40, None) >= MAX_BACKOFF / 2);
        }
        assert_eq!(
            backoff(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(backoff(1, Some(Duration::from_secs(86_400))), MAX_BACKOFF);
    }
}
