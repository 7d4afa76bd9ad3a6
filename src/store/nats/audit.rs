//! The audit log in the cluster: one stream, `LP_AUDIT`, a subject per workspace
//! (`lp.audit.<workspace>`). An entry's number is its stream sequence, so every node numbers
//! alike and `Last-Event-ID` resumes on any of them. Entries older than the retention go with
//! the stream's `max_age`, set from the retention the service asks for.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use tracing::warn;

use super::{Inner, NatsStore, nats_error};
use crate::store::{
    StoreError,
    records::{AuditRecord, decode_audit, encode_audit},
};

pub(super) const AUDIT_STREAM: &str = "LP_AUDIT";
const AUDIT_PREFIX: &str = "lp.audit.";
/// Where nodes pass on their latest counts (core NATS: nothing is stored).
pub(super) const COUNTS_PREFIX: &str = "lp.counts.";
/// Sequences read forward at first when paging backwards; four times more each round.
const WINDOW: u64 = 256;
/// The widest window read at once.
const MAX_WINDOW: u64 = 1 << 16;

fn subject(workspace: &str) -> String {
    format!("{AUDIT_PREFIX}{workspace}")
}

/// The audit stream's settings (`max_age` 0: kept until the service trims it).
pub(super) fn config(replicas: usize) -> stream::Config {
    stream::Config {
        name: AUDIT_STREAM.into(),
        subjects: vec![format!("{AUDIT_PREFIX}>")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

fn entry(message: &jetstream::message::StreamMessage) -> Result<AuditRecord, StoreError> {
    let mut record = decode_audit(&message.payload)?;
    record.seq = message.sequence;
    Ok(record)
}

impl NatsStore {
    pub(super) fn append_audit_entry(&self, record: &AuditRecord) -> Result<u64, StoreError> {
        let payload = bytes::Bytes::from(encode_audit(record));
        self.run(async {
            let ack = self
                .inner
                .js
                .publish(subject(&record.workspace), payload)
                .await
                .map_err(|e| nats_error("cannot store an audit entry", e))?
                .await
                .map_err(|e| nats_error("cannot store an audit entry", e))?;
            Ok(ack.sequence)
        })
    }

    /// The first entry of `workspace` at or after `from`.
    async fn audit_from(
        &self,
        workspace: &str,
        from: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, StoreError> {
        super::message_from(
            &self.inner.audit,
            &subject(workspace),
            from,
            "cannot read the audit log",
        )
        .await
    }

    /// The entries of `workspace` in `[from, until)`, oldest first.
    async fn audit_range(
        &self,
        workspace: &str,
        from: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        let mut at = from;
        while at < until && out.len() < limit {
            let Some(message) = self.audit_from(workspace, at).await? else {
                break;
            };
            if message.sequence >= until {
                break;
            }
            at = message.sequence + 1;
            out.push(entry(&message)?);
        }
        Ok(out)
    }

    pub(super) fn audit_page(
        &self,
        workspace: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.run(async {
            let mut audit = self.inner.audit.clone();
            let state = audit
                .info()
                .await
                .map_err(|e| nats_error("cannot read the audit log", e))?
                .state
                .clone();
            let first = state.first_sequence.max(1);
            let upper = before.unwrap_or(u64::MAX).min(state.last_sequence + 1);
            // Read forward from ever further back until the page is full or the log's start
            // is reached: the stream reads forward only.
            // Each window keeps only the newest entries the page still needs; the window
            // grows while windows come back short, up to MAX_WINDOW.
            let mut found: Vec<AuditRecord> = Vec::new();
            let (mut until, mut window) = (upper, WINDOW);
            while found.len() < limit && until > first {
                let from = until.saturating_sub(window).max(first);
                let mut older = self.audit_range(workspace, from, until, usize::MAX).await?;
                let wanted = limit - found.len();
                if older.len() > wanted {
                    older.drain(..older.len() - wanted);
                }
                older.append(&mut found);
                found = older;
                until = from;
                window = window.saturating_mul(4).min(MAX_WINDOW);
            }
            found.reverse();
            Ok(found)
        })
    }

    pub(super) fn audit_since(
        &self,
        workspace: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.run(self.audit_range(workspace, after.saturating_add(1), u64::MAX, limit))
    }

    /// Lets the stream drop entries older than `cutoff` from now on (its `max_age`).
    pub(super) fn audit_retention(&self, cutoff: i64) -> Result<usize, StoreError> {
        let age_ms = crate::domain::now_ms().saturating_sub(cutoff).max(60_000);
        let max_age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(u64::MAX));
        self.run(async {
            let mut audit = self.inner.audit.clone();
            let info = audit
                .info()
                .await
                .map_err(|e| nats_error("cannot read the audit log", e))?;
            // Set once (and again if the retention changes by more than an hour).
            let current = info.config.max_age;
            if current.abs_diff(max_age) > Duration::from_secs(3600) {
                let mut config = info.config.clone();
                config.max_age = max_age;
                self.inner
                    .js
                    .update_stream(config)
                    .await
                    .map_err(|e| nats_error("cannot set the audit log's retention", e))?;
            }
            Ok(0)
        })
    }
}

/// Delivers every audit entry stored from now on, by any node, in order.
pub(super) async fn follow(
    inner: std::sync::Arc<Inner>,
    mut deliver: Box<dyn FnMut(AuditRecord) + Send>,
) {
    let mut from = jetstream::consumer::DeliverPolicy::New;
    loop {
        let subject = format!("{AUDIT_PREFIX}>");
        let Some(mut messages) =
            super::ordered_messages(&inner.client, &inner.audit, subject, from, "the audit log")
                .await
        else {
            continue;
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    warn!(cause = %e, "following the audit log failed; again");
                    break;
                }
            };
            let Ok(info) = message.info() else {
                continue;
            };
            let seq = info.stream_sequence;
            from = jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            };
            match decode_audit(&message.payload) {
                Ok(mut record) => {
                    record.seq = seq;
                    deliver(record);
                }
                Err(e) => warn!(cause = %e, "an unreadable audit entry"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Delivers the counts other nodes pass on, as (workspace, payload).
pub(super) async fn follow_counts(
    inner: std::sync::Arc<Inner>,
    mut deliver: Box<dyn FnMut(String, Vec<u8>) + Send>,
) {
    loop {
        let mut messages = match inner.client.subscribe(format!("{COUNTS_PREFIX}>")).await {
            Ok(messages) => messages,
            Err(e) => {
                warn!(cause = %e, "cannot hear other nodes' counts yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let own = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Lp-Node"))
                .is_some_and(|n| n.as_str() == inner.node);
            if own {
                continue;
            }
            if let Some(workspace) = message.subject.as_str().strip_prefix(COUNTS_PREFIX) {
                deliver(workspace.to_owned(), message.payload.to_vec());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
