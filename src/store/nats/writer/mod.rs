//! The cluster engine's writer: the shared queue and groups (`store/writer`), drained by a
//! thread of its own, each group published to JetStream.
//!
//! A group's clicks become messages per code (one, or several under the size limit), all
//! codes published at once and acknowledged together. Each carries
//! `Nats-Expected-Last-Subject-Sequence`, the stream sequence of the code's last message as this writer last saw it, and a `Nats-Msg-Id` (so a publish retried
//! after a lost acknowledgement is stored once). When another node stored a message for the
//! code meanwhile (`wrong last sequence`), the writer reads the code's last message again: if
//! it was this very publish, it is done; if the clicks still follow on, it publishes them
//! again; if not, it numbers them after the stored ones, and tells the code's actor that it is
//! superseded (it stops, and its successor reads the count from the stream). So a code's
//! clicks are numbered 1..n without a gap or a duplicate under any routing.
//!
//! While NATS cannot be reached, a group waits and is published again every
//! [`RETRY`]; clicks queue behind it up to the backlog's bound (then they are dropped and
//! counted, or answered 503 in strict durability), and `/healthz` says why.
//!
//! Many codes' clicks go in atomic batches on nats-server 2.12 and later (`batch.rs`); what
//! cannot, or was refused, is published code by code.
//!
//! Here: the thread and the order of a group's work. `batch.rs` publishes many codes at
//! once, `publish.rs` publishes each code's clicks (and answers a refused publish),
//! `links.rs` carries out link operations against the buckets, `snapshot.rs` stores
//! aggregates snapshots.

pub(super) mod batch;
mod links;
pub(super) mod publish;
mod snapshot;

use std::{
    collections::HashMap,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::Receiver;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::NatsStore;
use crate::{
    domain::ShortCode,
    store::{
        StoreError,
        writer::{
            Health, LinkOp, LinkOutcome, Op, WriteError, Writer, WriterConfig,
            group::{Group, Outcome},
        },
    },
};
use publish::{Limit, MESSAGE_CLICKS, publish_code};

/// How long a group waits before it is published again while NATS cannot be reached.
const RETRY: Duration = Duration::from_millis(250);
/// Codes whose last message this writer remembers; past it, it forgets them all (each is
/// read again at its next click).
const TIPS: usize = 200_000;
/// Publishes of one group in flight at once.
const IN_FLIGHT: usize = 256;

/// Where a code's clicks stand in the stream, as this writer last saw them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tip {
    /// The stream sequence of the code's last message (0: none).
    pub(super) stream_seq: u64,
    /// The number of its last click.
    pub(super) last: u64,
}

/// Starts the writer thread of the cluster store.
pub fn start(store: NatsStore, config: WriterConfig) -> std::io::Result<Writer> {
    let (handle, rx, health) = crate::store::writer::channel();
    let thread = thread::Builder::new()
        .name("linkpulse-nats-writer".into())
        .spawn(move || run(&store, &rx, &config, &health))?;
    Ok(Writer::from_parts(handle, thread))
}

fn run(store: &NatsStore, rx: &Receiver<Op>, config: &WriterConfig, health: &Health) {
    let mut tips: HashMap<ShortCode, Tip> = HashMap::new();
    loop {
        let first = rx.recv().unwrap_or(Op::Stop);
        let mut group = Group::gather(first, rx, config);
        let started = Instant::now();
        if tips.len() > TIPS {
            tips.clear();
        }
        store.run(commit(store, &mut group, &mut tips, config, health));
        group.finish(Ok(()), health, &config.metrics, started);
        if group.stop {
            info!("NATS writer stopped");
            return;
        }
    }
}

/// Publishes the group: link operations first (each answered), then each code's clicks
/// (retried until stored, or dropped when the link is gone), then the aggregates snapshots.
async fn commit(
    store: &NatsStore,
    group: &mut Group,
    tips: &mut HashMap<ShortCode, Tip>,
    config: &WriterConfig,
    health: &Health,
) {
    for code in &link_ops(store, group, config.deleted_code_hold).await {
        tips.remove(code);
    }
    group.expired.clear();
    for reply in group.expire_replies.drain(..) {
        let _ = reply.send(Err(WriteError::Failed(
            "click retention is not available on the NATS store".into(),
        )));
    }
    let limit = Limit {
        clicks: config.max_batch.clamp(1, MESSAGE_CLICKS),
        bytes: store.message_bytes(),
    };
    for (code, tip) in batch::publish_batched(store, &mut group.codes, tips, limit).await {
        tips.insert(code, tip);
    }
    let known: &HashMap<ShortCode, Tip> = tips;
    let published: Vec<(ShortCode, Option<Tip>)> = futures_util::stream::iter(&mut group.codes)
        .filter(|pending| std::future::ready(pending.outcome == Outcome::Waiting))
        .map(|pending| {
            let tip = known.get(&pending.code).copied();
            publish_code(store, pending, tip, limit, health)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for (code, tip) in published {
        match tip {
            Some(tip) => tips.insert(code, tip),
            None => tips.remove(&code),
        };
    }
    if let Ok(mut unavailable) = health.unavailable.lock()
        && unavailable.take().is_some()
    {
        info!("NATS reachable again; clicks are stored");
    }
    for (code, covers, bytes) in std::mem::take(&mut group.aggregates) {
        let hint = tips
            .get(&code)
            .filter(|t| t.last == covers)
            .map_or(0, |t| t.stream_seq);
        if let Err(e) = snapshot::store_snapshot(store, &code, covers, hint, &bytes).await {
            // Rebuilt from the clicks at the next start of the code's actor.
            debug!(code = %code, cause = %e, "an aggregates snapshot was not stored");
        }
    }
}

/// Carries out the group's link operations and answers each: each code's in the order they
/// came, the codes at once (a creation waits on the servers, two requests, one of them
/// replicated, not on other codes' ones). Returns the codes deleted.
async fn link_ops(store: &NatsStore, group: &mut Group, hold: Duration) -> Vec<ShortCode> {
    let mut queues: Vec<Vec<LinkOp>> = Vec::new();
    let mut queue_of: HashMap<ShortCode, usize> = HashMap::new();
    for op in group.links.drain(..) {
        let at = *queue_of.entry(op.code().clone()).or_insert_with(|| {
            queues.push(Vec::new());
            queues.len() - 1
        });
        queues[at].push(op);
    }
    futures_util::stream::iter(queues)
        .map(|ops| async move {
            let mut deleted = Vec::new();
            for op in ops {
                let outcome = links::link_op(store, &op, hold).await;
                if let (LinkOp::Delete(code, _), Ok(LinkOutcome::Deleted(true))) = (&op, &outcome) {
                    deleted.push(code.clone());
                }
                op.answer(outcome.map_err(|e| match e {
                    StoreError::Nats(why) => WriteError::Unavailable(why),
                    other => WriteError::Failed(other.to_string()),
                }));
            }
            deleted
        })
        .buffer_unordered(IN_FLIGHT)
        .concat()
        .await
}

fn unreachable(health: &Health, why: &str) {
    if let Ok(mut unavailable) = health.unavailable.lock() {
        if unavailable.is_none() {
            warn!(cause = why, "NATS cannot store clicks now; holding them");
        }
        *unavailable = Some(format!("NATS JetStream cannot store clicks: {why}"));
    }
    health.retries.fetch_add(1, Ordering::Relaxed);
}
