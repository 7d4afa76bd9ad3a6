//! Many codes' clicks in one atomic batch: the long tail (many codes, a click or two each)
//! without a publish and an acknowledgement per code.
//!
//! nats-server 2.12 stores a batch (`Nats-Batch-Id`, `Nats-Batch-Sequence`, the last message
//! with `Nats-Batch-Commit`) all or nothing, after checking each message's
//! `Nats-Expected-Last-Subject-Sequence`, and answers the commit once, with the stream
//! sequence of the last message and the count: the batch's messages are stored one after the
//! other, so each code's message has its sequence from that. Measured here on three servers
//! (replicas 3), 100,000 messages to distinct subjects: about twice the messages per second
//! of one publish each with 256 in flight.
//!
//! A code goes in a batch when its clicks fit one message, where they stand is known (or it
//! has none yet), its link is in this node's cache and none asks for a place under a visit
//! limit. Anything else, and every code of a batch that is refused (another node stored
//! clicks of one of its codes first, a server went away), is published one code at a time
//! (`publish.rs`), which answers each case; a batch whose commit was stored but not
//! acknowledged is found there by its `Lp-Id`.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tracing::debug;

use super::{
    super::{NatsStore, clicks::encode_batch, clicks_subject},
    Tip,
    publish::{Limit, message_id, runs},
};
use crate::{
    domain::ShortCode,
    store::writer::group::{Outcome, Pending},
};

/// Messages in one batch (the server takes at most 1,000). On the long tail of 200,000 codes
/// through one node, 1,000 a batch and 4 at once stored 21,128 clicks/s, 256 and 8 18,104/s,
/// 64 and 16 16,088/s (one run after the other, the same hour).
const BATCH_MESSAGES: usize = 1000;
/// Batches of one group in flight at once (the server takes 50 a stream, from every node).
const BATCHES_IN_FLIGHT: usize = 4;

/// Batches this process has sent: with the node, a batch's id.
static BATCHES: AtomicU64 = AtomicU64::new(0);

/// One code's clicks, numbered and encoded for a batch.
struct Prepared {
    /// Its place in the group.
    at: usize,
    /// Where the code's clicks stood (the message this one must follow).
    after: Tip,
    /// The number of its last click once stored.
    last: u64,
    /// An actor's numbers changed (see `Pending::numbered`).
    renumbered: bool,
    subject: String,
    payload: Bytes,
    id: String,
}

/// The server's answer to a batch's commit.
#[derive(Deserialize)]
struct CommitAck {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: u64,
    error: Option<serde_json::Value>,
}

/// Publishes in atomic batches the clicks of every code of `codes` that can go in one (see
/// the module's notes). The codes stored are `Stored`, with their new tips returned; the
/// others are left `Waiting`.
pub(super) async fn publish_batched(
    store: &NatsStore,
    codes: &mut [Pending],
    tips: &HashMap<ShortCode, Tip>,
    limit: Limit,
) -> Vec<(ShortCode, Tip)> {
    if !store.inner.atomic {
        return Vec::new();
    }
    let prepared: Vec<Prepared> = codes
        .iter()
        .enumerate()
        .filter_map(|(at, pending)| prepare(store, at, pending, tips.get(&pending.code), limit))
        .collect();
    if prepared.len() < 2 {
        // One code gains nothing from a batch.
        return Vec::new();
    }
    let stored: Vec<(usize, Tip, bool)> = futures_util::stream::iter(prepared.chunks(BATCH_MESSAGES))
        .map(|batch| async move {
            match commit(store, batch).await {
                Ok(last_seq) => {
                    let first_seq = last_seq + 1 - batch.len() as u64;
                    batch
                        .iter()
                        .zip(first_seq..)
                        .map(|(p, stream_seq)| {
                            let tip = Tip {
                                stream_seq,
                                last: p.last,
                            };
                            (p.at, tip, p.renumbered)
                        })
                        .collect()
                }
                Err(why) => {
                    debug!(codes = batch.len(), cause = %why, "a batch of clicks was not stored; publishing its codes one by one");
                    Vec::new()
                }
            }
        })
        .buffer_unordered(BATCHES_IN_FLIGHT)
        .concat()
        .await;
    stored
        .into_iter()
        .map(|(at, tip, renumbered)| {
            let pending = &mut codes[at];
            pending.outcome = Outcome::Stored {
                last: tip.last,
                superseded: renumbered,
            };
            (pending.code.clone(), tip)
        })
        .collect()
}

/// A code's clicks numbered and encoded for a batch, unless it is not for one.
fn prepare(
    store: &NatsStore,
    at: usize,
    pending: &Pending,
    tip: Option<&Tip>,
    limit: Limit,
) -> Option<Prepared> {
    if !pending.admits.is_empty() || runs(&pending.items, limit).len() != 1 {
        return None;
    }
    let after = tip
        .copied()
        .or_else(|| pending.all_fresh().then_some(Tip::default()))?;
    if !store.has_link(pending.code.as_str()) {
        return None;
    }
    let numbered = Pending::numbered(&pending.items, after.last);
    if numbered.behind || numbered.events.is_empty() {
        return None;
    }
    let first_at = numbered.events[0].at;
    Some(Prepared {
        at,
        after,
        last: after.last + numbered.events.len() as u64,
        renumbered: numbered.renumbered,
        subject: clicks_subject(pending.code.as_str()),
        payload: encode_batch(&numbered.events),
        id: message_id(&store.inner.node, &pending.code, after.stream_seq, first_at),
    })
}

/// Sends one batch and commits it; the stream sequence of its last message once stored.
async fn commit(store: &NatsStore, batch: &[Prepared]) -> Result<u64, String> {
    let client = &store.inner.client;
    let id = format!(
        "{}-{}",
        store.inner.node,
        BATCHES.fetch_add(1, Ordering::Relaxed)
    );
    let n = batch.len();
    for (k, p) in batch.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (k + 1).to_string().as_str());
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            p.after.stream_seq.to_string().as_str(),
        );
        headers.insert("Lp-Id", p.id.as_str());
        headers.insert("Lp-Node", store.inner.node.as_str());
        if k + 1 < n {
            client
                .publish_with_headers(p.subject.clone(), headers, p.payload.clone())
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        headers.insert("Nats-Batch-Commit", "1");
        let reply = client
            .request_with_headers(p.subject.clone(), headers, p.payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        let ack: CommitAck = serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
        if let Some(error) = ack.error {
            return Err(error.to_string());
        }
        if ack.count != n as u64 || ack.seq < ack.count {
            return Err(format!(
                "the batch's commit says {} messages up to {}, of {n}",
                ack.count, ack.seq
            ));
        }
        return Ok(ack.seq);
    }
    Err("an empty batch".into())
}

#[cfg(test)]
pub(in crate::store::nats) mod testing {
    //! What the engine's tests drive: a group's codes through a batch, then alone.
    use super::*;
    use crate::store::writer::Health;

    /// [`publish_batched`] with the writer's limits.
    pub(in crate::store::nats) async fn batched(
        store: &NatsStore,
        codes: &mut [Pending],
        tips: &HashMap<ShortCode, Tip>,
    ) -> Vec<(ShortCode, Tip)> {
        publish_batched(store, codes, tips, limit(store)).await
    }

    /// [`publish_code`] with the writer's limits.
    pub(in crate::store::nats) async fn alone(
        store: &NatsStore,
        pending: &mut Pending,
        tip: Option<Tip>,
    ) -> Option<Tip> {
        super::super::publish::publish_code(store, pending, tip, limit(store), &Health::default())
            .await
            .1
    }

    fn limit(store: &NatsStore) -> Limit {
        Limit {
            clicks: super::super::publish::MESSAGE_CLICKS,
            bytes: store.message_bytes(),
        }
    }
}
