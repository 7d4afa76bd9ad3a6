//! `--click-retention-days` in a cluster: now and then, one node (the one that takes the
//! turn in the meta bucket) purges the click messages older than the retention, under the
//! same rules as the embedded store: only clicks a code's readable aggregates snapshot
//! covers go, and never the code's last message, whose last click's number is the count.
//! A message (a batch of one code's clicks) goes whole, once every click in it may go.
//!
//! Not JetStream's own `max_age` on the stream: it would take a code's last message too (its
//! count would fall to 0) and clicks no snapshot covers (aggregates rebuilt from the stream
//! would lose them).

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tracing::{info, warn};

use super::{NatsStore, clicks::decode_batch, clicks_subject, nats_error};
use crate::{analytics::aggregates, domain::now_ms, store::StoreError};

/// The meta bucket's key holding when a node last took its turn (ms, big-endian).
const TURN: &str = "retention-turn";

/// The running expiry task; stopped when dropped.
pub struct ClusterRetention {
    task: tokio::task::AbortHandle,
}

impl Drop for ClusterRetention {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NatsStore {
    /// Purges clicks older than `keep` every `every` (first after `every`), on whichever node
    /// takes the turn.
    pub fn start_retention(&self, keep: Duration, every: Duration) -> ClusterRetention {
        let store = self.clone();
        let task = self.inner.runtime.spawn(async move {
            let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticks.tick().await;
                match store.take_turn(every).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        warn!(cause = %e, "cannot take the click retention's turn");
                        continue;
                    }
                }
                let cutoff = now_ms().saturating_sub(keep_ms);
                match store.expire(cutoff).await {
                    Ok(0) => {}
                    Ok(expired) => info!(
                        expired,
                        "expired raw clicks past the retention (counts and aggregates stay)"
                    ),
                    Err(e) => warn!(cause = %e, "looking for expired clicks failed"),
                }
            }
        });
        ClusterRetention {
            task: task.abort_handle(),
        }
    }

    /// Whether this node runs this round: the turn taken (compare-and-set in the meta bucket)
    /// unless another node took it within most of `every`.
    async fn take_turn(&self, every: Duration) -> Result<bool, StoreError> {
        let meta = &self.inner.meta_kv;
        let now = now_ms();
        let value = Bytes::copy_from_slice(&now.to_be_bytes());
        let recent = i64::try_from((every * 3 / 4).as_millis()).unwrap_or(i64::MAX);
        let entry = meta
            .entry(TURN)
            .await
            .map_err(|e| nats_error("cannot read the retention's turn", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return match meta.create(TURN, value).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(nats_error("cannot take the retention's turn", e)),
            };
        };
        let taken = <[u8; 8]>::try_from(entry.value.as_ref()).map_or(0, i64::from_be_bytes);
        if now.saturating_sub(taken) < recent {
            return Ok(false);
        }
        match meta.update(TURN, value, entry.revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(nats_error("cannot take the retention's turn", e)),
        }
    }

    /// Purges, code by code, the messages every click of which is older than `cutoff` and
    /// covered by the code's readable snapshot, never a code's last message. Returns how
    /// many clicks went.
    pub(super) async fn expire(&self, cutoff: i64) -> Result<u64, StoreError> {
        let mut expired = 0;
        for (code, messages) in self.clicked_codes().await? {
            if messages < 2 {
                continue;
            }
            let Some((covers, _, bytes)) = self.snapshot_entry(&code).await? else {
                continue;
            };
            // Only under a snapshot that can be read back: clicks expired under one that
            // cannot could never be folded in again.
            if !aggregates::decode_snapshot(&bytes).is_ok_and(|a| a.covers() == covers) {
                continue;
            }
            expired += self.expire_code(&code, cutoff, covers).await?;
        }
        Ok(expired)
    }

    /// One code's share of [`NatsStore::expire`].
    async fn expire_code(&self, code: &str, cutoff: i64, covers: u64) -> Result<u64, StoreError> {
        let (last_at, _, _) = self.last_batch(code).await?;
        let subject = clicks_subject(code);
        let (mut from, mut clicks) = (1, 0);
        // `keep_from`: the first message that stays.
        let keep_from = loop {
            let Some(message) = self.message_from(&subject, from).await? else {
                return Ok(0);
            };
            if message.sequence >= last_at {
                break message.sequence;
            }
            let events = decode_batch(&message.payload)?;
            if !events.iter().all(|e| e.at < cutoff && e.seq <= covers) {
                break message.sequence;
            }
            clicks += events.len() as u64;
            from = message.sequence + 1;
        };
        if clicks > 0 {
            // Every message of the code before `keep_from`, and none stored after it.
            self.inner
                .clicks
                .purge()
                .filter(subject)
                .sequence(keep_from)
                .await
                .map_err(|e| nats_error("cannot purge expired clicks", e))?;
        }
        Ok(clicks)
    }
}
