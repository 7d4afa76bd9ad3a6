//! The cluster engine's writer: the shared queue and groups (`store/writer`), drained by a
//! thread of its own, each group published to JetStream.
//!
//! A group's clicks become messages per code (one, or several under the size limit), all
//! codes published at once and acknowledged together. Each carries `Nats-Expected-Last-Subject-Sequence`, the stream sequence of the
//! code's last message as this writer last saw it, and a `Nats-Msg-Id` (so a publish retried
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

use std::{
    collections::HashMap,
    ops::Range,
    sync::{Arc, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use bytes::Bytes;
use crossbeam_channel::Receiver;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::{
    NatsStore,
    clicks::{decode_snapshot_entry, encode_batch, encode_snapshot_entry},
    clicks_subject, nats_error,
};
use crate::{
    domain::{ShortCode, now_ms},
    store::{
        StoreError, records,
        writer::{
            Health, LinkOp, LinkOutcome, Op, WriteError, Writer, WriterConfig,
            group::{Group, Item, Numbered, Outcome, Pending},
        },
    },
};

/// How long a group waits before it is published again while NATS cannot be reached.
const RETRY: Duration = Duration::from_millis(250);
/// Codes whose last message this writer remembers; past it, it forgets them all (each is
/// read again at its next click).
const TIPS: usize = 200_000;
/// Publishes of one group in flight at once.
const IN_FLIGHT: usize = 256;

/// Where a code's clicks stand in the stream, as this writer last saw them.
#[derive(Debug, Clone, Copy, Default)]
struct Tip {
    /// The stream sequence of the code's last message (0: none).
    stream_seq: u64,
    /// The number of its last click.
    last: u64,
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
        let stored = group.finish(Ok(()), health, &config.metrics);
        config.metrics.group_committed(stored, started.elapsed());
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
    for op in group.links.drain(..) {
        let outcome = link_op(store, &op, config.deleted_code_hold).await;
        if let (LinkOp::Delete(code, _), Ok(LinkOutcome::Deleted(true))) = (&op, &outcome) {
            tips.remove(code);
        }
        op.answer(outcome.map_err(|e| match e {
            StoreError::Nats(why) => WriteError::Unavailable(why),
            other => WriteError::Failed(other.to_string()),
        }));
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
    let known: &HashMap<ShortCode, Tip> = tips;
    let published: Vec<(ShortCode, Option<Tip>)> = futures_util::stream::iter(&mut group.codes)
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
        if let Err(e) = store_snapshot(store, &code, covers, hint, &bytes).await {
            // Rebuilt from the clicks at the next start of the code's actor.
            debug!(code = %code, cause = %e, "an aggregates snapshot was not stored");
        }
    }
}

/// The most clicks one message holds (also bounded in bytes, see [`Limit`]).
const MESSAGE_CLICKS: usize = 4096;

/// How large one message of a code's clicks may be: a code with more clicks in a group (a
/// busy link after a stall) goes in several messages, one after the other.
#[derive(Debug, Clone, Copy)]
struct Limit {
    clicks: usize,
    bytes: usize,
}

/// Splits a code's clicks into runs that each fit in one message.
fn runs(items: &[Item], limit: Limit) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        // A record's size with any number (a `u64` takes at most 9 bytes in MessagePack)
        // and the length before it.
        let size = records::encode_click(item.event()).len() + 16;
        match out.last_mut() {
            Some(run) if run.len() < limit.clicks && bytes + size <= limit.bytes => {
                bytes += size;
                run.end = i + 1;
            }
            _ => {
                bytes = size;
                out.push(i..i + 1);
            }
        }
    }
    out
}

/// Publishes one code's clicks of a group until JetStream has stored them, in messages under
/// the size limit, or until it is seen that the link is gone; sets the code's outcome.
/// Returns the code and where its clicks stand now (`None`: not known).
async fn publish_code(
    store: &NatsStore,
    pending: &mut Pending,
    tip: Option<Tip>,
    limit: Limit,
    health: &Health,
) -> (ShortCode, Option<Tip>) {
    // A code with no known tip whose clicks are all to be numbered here (the long tail:
    // codes clicked once in a while) is first tried as a code with no clicks yet: right, it
    // saves reading its last message; wrong, JetStream refuses it and the last message is
    // read then.
    let mut tip = tip.or_else(|| pending.all_fresh().then_some(Tip::default()));
    let mut superseded = false;
    for run in runs(&pending.items, limit) {
        match publish_run(store, &pending.code, &pending.items[run], tip, health).await {
            Some((done, renumbered)) => {
                tip = Some(done);
                superseded |= renumbered;
            }
            None => {
                // The link is gone: nothing more of its clicks is stored (what was is purged
                // with it), and no one who waits for them hears that they were.
                debug!(code = %pending.code, "clicks of a deleted link not stored");
                pending.outcome = Outcome::Dropped;
                return (pending.code.clone(), None);
            }
        }
    }
    if let Some(done) = tip {
        pending.outcome = Outcome::Stored {
            last: done.last,
            superseded,
        };
    }
    (pending.code.clone(), tip)
}

/// Publishes one run of a code's clicks after the code's last stored message, retrying until
/// it is stored. Returns the new tip and whether an actor's numbers had to change (another
/// node's clicks came first), or `None` when the link is gone.
async fn publish_run(
    store: &NatsStore,
    code: &ShortCode,
    run: &[Item],
    mut tip: Option<Tip>,
    health: &Health,
) -> Option<(Tip, bool)> {
    let subject = clicks_subject(code.as_str());
    let mut attempt = 0u32;
    // Whether `tip` was read from the servers by this call (not remembered from before).
    let mut read_here = false;
    loop {
        // Every attempt after the first asks the links bucket itself (not this node's copy,
        // which a node cut off may not have brought up to date): a link deleted meanwhile
        // takes none of these clicks.
        if attempt > 0 {
            match link_stored(store, code).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    unreachable(health, &e.to_string());
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        } else if !store.has_link(code.as_str()) {
            return None;
        }
        attempt += 1;
        let current = match tip {
            Some(tip) => tip,
            None => match store.last_batch(code.as_str()).await {
                Ok((stream_seq, last, _)) => {
                    let fresh = Tip {
                        stream_seq,
                        last: last.map_or(0, |e| e.seq),
                    };
                    tip = Some(fresh);
                    read_here = true;
                    fresh
                }
                Err(e) => {
                    unreachable(health, &e.to_string());
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        // Numbered after the stored clicks: as the actor numbered them when it was right.
        // Whether the actor was right is judged by this attempt alone.
        let Numbered {
            events,
            renumbered,
            behind,
        } = Pending::numbered(run, current.last);
        if behind {
            // Fewer clicks stored than the actor counted before these. Other nodes only add
            // clicks; fewer means they were purged: the link was deleted (and perhaps made
            // again), and these clicks belonged to the deleted one. Unless the tip was only
            // remembered: then it is read first.
            if read_here {
                return None;
            }
            tip = None;
            continue;
        }
        let last = current.last + events.len() as u64;
        // Unique to this message: this node, the code, the message it follows and its first
        // click (a retry of it carries the same id, and JetStream keeps one copy).
        let first_at = events.first().map_or(0, |e| e.at);
        let id = format!(
            "{}:{}:{}:{}",
            store.inner.node, code, current.stream_seq, first_at
        );
        let message = jetstream::message::PublishMessage::build()
            .payload(encode_batch(&events))
            .expected_last_subject_sequence(current.stream_seq)
            .message_id(&id)
            .header("Lp-Node", store.inner.node.as_str());
        let acked = match store.inner.js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(ack) => {
                return Some((
                    Tip {
                        stream_seq: ack.sequence,
                        last,
                    },
                    renumbered,
                ));
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Another node stored clicks of this code meanwhile, or this very message was
                // stored and its acknowledgement lost (perhaps longer ago than JetStream's
                // duplicate window). If it was stored, it is the message right after the one
                // it expected: look there, not at the last one.
                match store.batch_after(code.as_str(), current.stream_seq).await {
                    Ok(Some((stream_seq, stored_id))) if stored_id == id => {
                        debug!(code = %code, "clicks found stored after a lost acknowledgement");
                        let mine = Tip { stream_seq, last };
                        // Others may have stored clicks after it: the next run follows theirs,
                        // and the actor's count is stale.
                        return match store.last_batch(code.as_str()).await {
                            Ok((s, l, _)) if s > stream_seq => Some((
                                Tip {
                                    stream_seq: s,
                                    last: l.map_or(0, |e| e.seq),
                                },
                                true,
                            )),
                            Ok(_) => Some((mine, renumbered)),
                            // Not known: if others followed, the next publish is refused and
                            // reads them.
                            Err(_) => Some((mine, renumbered)),
                        };
                    }
                    Ok(Some(_)) => match store.last_batch(code.as_str()).await {
                        // Fewer clicks than it followed: they were purged (the link deleted)
                        // and the code made again; these clicks belonged to the deleted link.
                        Ok((_, l, _)) if l.as_ref().map_or(0, |e| e.seq) < current.last => {
                            return None;
                        }
                        Ok((stream_seq, l, _)) => {
                            debug!(code = %code, "another node stored clicks of this code; numbering after them");
                            tip = Some(Tip {
                                stream_seq,
                                last: l.map_or(0, |e| e.seq),
                            });
                            read_here = true;
                        }
                        Err(e) => {
                            unreachable(health, &e.to_string());
                            tip = None;
                            tokio::time::sleep(RETRY).await;
                        }
                    },
                    Ok(None) if current.stream_seq > 0 => {
                        // Nothing after what it followed, and that is not the last: the code's
                        // clicks were purged (its link deleted, perhaps made again since).
                        // These clicks belonged to the deleted link.
                        return None;
                    }
                    Ok(None) => tip = None,
                    Err(e) => {
                        unreachable(health, &e.to_string());
                        tip = None;
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
            Err(e) => {
                if attempt == 1 || attempt.is_multiple_of(20) {
                    warn!(code = %code, cause = %e, attempt, "clicks not stored yet; publishing again");
                }
                unreachable(health, &format!("publishing clicks: {e}"));
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Whether the links bucket holds `code` now (asked of the servers).
async fn link_stored(store: &NatsStore, code: &ShortCode) -> Result<bool, StoreError> {
    Ok(stored_link(store, code).await?.is_some())
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

/// Stores an aggregates snapshot unless one covering as much is there, or the link is gone.
async fn store_snapshot(
    store: &NatsStore,
    code: &ShortCode,
    covers: u64,
    hint: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    if !store.has_link(code.as_str()) {
        return Ok(());
    }
    let bucket = &store.inner.aggregates_kv;
    let entry = bucket
        .entry(code.as_str())
        .await
        .map_err(|e| nats_error("cannot read aggregates", e))?;
    let value = encode_snapshot_entry(covers, hint, bytes);
    match entry.filter(|e| e.operation == kv::Operation::Put) {
        Some(stored) => {
            let stored_covers = decode_snapshot_entry(&stored.value).map_or(0, |s| s.0);
            if stored_covers >= covers {
                return Ok(());
            }
            bucket
                .update(code.as_str(), value, stored.revision)
                .await
                .map_err(|e| nats_error("cannot store aggregates", e))?;
        }
        None => {
            bucket
                .put(code.as_str(), value)
                .await
                .map_err(|e| nats_error("cannot store aggregates", e))?;
        }
    }
    Ok(())
}

/// A link's entry in the bucket, unless there is none (or it was deleted).
async fn stored_link(store: &NatsStore, code: &ShortCode) -> Result<Option<kv::Entry>, StoreError> {
    Ok(store
        .inner
        .links_kv
        .entry(code.as_str())
        .await
        .map_err(|e| nats_error("cannot read a link", e))?
        .filter(|e| e.operation == kv::Operation::Put))
}

/// Carries out one link operation against the buckets.
async fn link_op(
    store: &NatsStore,
    op: &LinkOp,
    hold: Duration,
) -> Result<LinkOutcome, StoreError> {
    let inner = &store.inner;
    let now = now_ms();
    match op {
        LinkOp::Create(link, _) => {
            let code = link.code.as_str();
            let held = inner
                .gone_kv
                .get(code)
                .await
                .map_err(|e| nats_error("cannot read a deleted code's hold", e))?
                .is_some_and(|b| records::decode_gone(&b) > now);
            if held {
                return Ok(LinkOutcome::Created(false));
            }
            match inner
                .links_kv
                .create(code, records::encode_link(link).into())
                .await
            {
                Ok(_) => {
                    inner.remember(Arc::new(link.clone()));
                    Ok(LinkOutcome::Created(true))
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Ok(LinkOutcome::Created(false))
                }
                Err(e) => Err(nats_error("cannot store a link", e)),
            }
        }
        LinkOp::Update(code, change, _) => {
            // Compare-and-set on the entry's revision: a change made meanwhile on another
            // node is read and the change applied to it.
            for _ in 0..16 {
                let Some(entry) = stored_link(store, code).await? else {
                    return Ok(LinkOutcome::Updated(None));
                };
                let link = records::decode_link(&entry.value)?;
                let mut new = match change(&link) {
                    Err(refused) => return Ok(LinkOutcome::Updated(Some(Err(refused)))),
                    Ok(new) => new,
                };
                new.code = link.code.clone();
                new.owner = link.owner.clone();
                new.created_at = link.created_at;
                new.rev = link.rev + 1;
                new.updated_at = now.max(link.updated_at);
                match inner
                    .links_kv
                    .update(
                        code.as_str(),
                        records::encode_link(&new).into(),
                        entry.revision,
                    )
                    .await
                {
                    Ok(_) => {
                        inner.remember(Arc::new(new.clone()));
                        return Ok(LinkOutcome::Updated(Some(Ok(new))));
                    }
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(nats_error("cannot store a link", e)),
                }
            }
            Err(StoreError::Nats(
                "a link kept changing on other nodes; not updated".into(),
            ))
        }
        LinkOp::Delete(code, _) => {
            let Some(entry) = stored_link(store, code).await? else {
                return Ok(LinkOutcome::Deleted(false));
            };
            let until = now.saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
            inner
                .gone_kv
                .put(code.as_str(), Bytes::copy_from_slice(&until.to_be_bytes()))
                .await
                .map_err(|e| nats_error("cannot hold a deleted code", e))?;
            match inner
                .links_kv
                .delete_expect_revision(code.as_str(), Some(entry.revision))
                .await
            {
                Ok(()) => {}
                Err(e) => return Err(nats_error("cannot delete a link", e)),
            }
            inner.forget(code.as_str());
            // The clicks and the aggregates go with it.
            if let Err(e) = inner
                .clicks
                .purge()
                .filter(clicks_subject(code.as_str()))
                .await
            {
                warn!(code = %code, cause = %e, "a deleted link's clicks were not purged");
            }
            let _ = inner.aggregates_kv.purge(code.as_str()).await;
            Ok(LinkOutcome::Deleted(true))
        }
    }
}
