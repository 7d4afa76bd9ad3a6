//! The embedded engine's writer: one OS thread that takes every item from the shared queue
//! (`store/writer.rs`) and commits each group as one atomic fjall batch across keyspaces,
//! handed to the OS at once (so a killed process loses nothing committed). In `strict`
//! durability a group is fsynced before any of its clicks is acknowledged; in the default mode
//! the journal is fsynced at least every `fsync_interval`.
//!
//! A click on a code with no live actor comes unnumbered ([`WriterHandle::fresh_click`]): the
//! writer numbers it after the code's last stored click, one group at a time, so the long tail
//! of codes clicked once each costs no actor. The directory sends it under the lock that also
//! guards an actor's start, so an actor that starts later reads a count that includes it.
//!
//! The first commit or fsync that fails stops all further commits (after a failed fsync the
//! kernel may have dropped the dirty pages, so nothing written later could be trusted: the
//! "fsyncgate" lesson). It is logged once; [`WriterHandle::failure`] says why from then on.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use fjall::PersistMode;
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use super::{Store, TotalsChange};
use crate::{
    domain::{ClickEvent, Link, ShortCode, now_ms},
    store::{
        CommitListener, FreshClick, Permit, StoreError, WriteError, Writer, WriterConfig, records,
        writer::{Durability, Health, LinkOp, LinkOutcome, Op, channel},
    },
};

/// Clicks of a deleted link removed per commit: a purge of millions goes in steps between the
/// groups of clicks, never holding them up for long.
const PURGE_CHUNK: usize = 10_000;

impl Writer {
    pub fn start(store: Store, config: WriterConfig) -> std::io::Result<Self> {
        let (handle, rx, health) = channel();
        let thread = thread::Builder::new()
            .name("linkpulse-writer".into())
            .spawn(move || {
                // Purges a stop interrupted go on.
                let purges = store.unpurged().unwrap_or_else(|e| {
                    error!(cause = %e, "cannot list the deleted links left to purge");
                    Vec::new()
                });
                let purges = purges.into_iter().map(|code| (code, u64::MAX)).collect();
                run(&store, &rx, &config, &health, purges);
            })?;
        Ok(Self::from_parts(handle, thread))
    }
}

/// One group commit in the making.
#[derive(Default)]
struct Group {
    clicks: Vec<(ShortCode, Arc<ClickEvent>)>,
    /// Clicks to number (see [`number_fresh`]), then moved to `clicks`, each with its
    /// acknowledgement (moved to `acks` only if the click is kept).
    fresh: Vec<(ShortCode, ClickEvent, Option<oneshot::Sender<()>>)>,
    acks: Vec<oneshot::Sender<()>>,
    /// Each listener with the highest click number of its code in this group.
    listeners: Vec<(Arc<dyn CommitListener>, u64)>,
    permits: Permit,
    links: Vec<LinkOp>,
    aggregates: Vec<(ShortCode, u64, Vec<u8>)>,
    expired: Vec<Vec<u8>>,
    expire_replies: Vec<oneshot::Sender<Result<(), WriteError>>>,
    barriers: Vec<oneshot::Sender<Result<(), WriteError>>>,
    stop: bool,
}

impl Group {
    fn len(&self) -> usize {
        self.clicks.len()
            + self.fresh.len()
            + self.links.len()
            + self.aggregates.len()
            + self.expired.len()
            + self.barriers.len()
    }

    /// Adds an item; true when it asks for an immediate commit.
    fn add(&mut self, op: Op) -> bool {
        match op {
            Op::Clicks(batch) => {
                if let (Some(listener), Some(last)) = (batch.listener, batch.events.last()) {
                    self.listeners.push((listener, last.seq));
                }
                let code = batch.code;
                self.clicks
                    .extend(batch.events.into_iter().map(|e| (code.clone(), e)));
                self.acks.extend(batch.acks);
                self.permits.merge(batch.permit);
                false
            }
            Op::Fresh(click) => {
                let FreshClick {
                    code,
                    event,
                    ack,
                    permit,
                } = *click;
                self.fresh.push((code, event, ack));
                self.permits.merge(permit);
                false
            }
            Op::Link(op) => {
                self.links.push(op);
                true
            }
            Op::Aggregates {
                code,
                covers,
                bytes,
            } => {
                self.aggregates.push((code, covers, bytes));
                false
            }
            Op::Expire { keys, reply } => {
                self.expired.extend(keys);
                self.expire_replies.push(reply);
                false
            }
            Op::Barrier(tx) => {
                self.barriers.push(tx);
                true
            }
            Op::Stop => {
                self.stop = true;
                true
            }
        }
    }

    /// Tells each code's listener its highest committed click, once per code.
    fn notify(&mut self) {
        let mut seen: HashMap<*const (), usize> = HashMap::with_capacity(self.listeners.len());
        let mut last: Vec<(Arc<dyn CommitListener>, u64)> = Vec::new();
        for (listener, seq) in self.listeners.drain(..) {
            let key = Arc::as_ptr(&listener).cast::<()>();
            match seen.get(&key) {
                // Batches of one code arrive in order: the later one has the higher number.
                Some(&i) => last[i].1 = last[i].1.max(seq),
                None => {
                    seen.insert(key, last.len());
                    last.push((listener, seq));
                }
            }
        }
        for (listener, seq) in last {
            listener.committed(seq);
        }
    }
}

fn run(
    store: &Store,
    rx: &Receiver<Op>,
    config: &WriterConfig,
    health: &Health,
    // Deleted codes still to purge, each with the number its next step starts below.
    mut purges: std::collections::VecDeque<(ShortCode, u64)>,
) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    loop {
        // One step of a purge between groups, while nothing else waits.
        if let Some((code, below)) = purges.front_mut()
            && rx.is_empty()
            && !health.failed.load(Ordering::Acquire)
        {
            match purge_step(store, code, below) {
                Ok(true) => {
                    purges.pop_front();
                }
                Ok(false) => {}
                Err(e) => {
                    health.fail(format!("a purge failed: {e}"));
                    purges.clear();
                }
            }
            unsynced = true;
            // A long purge still keeps the clicks before it within the fsync interval.
            if last_sync.elapsed() >= config.fsync_interval {
                let _ = sync(store, health);
                last_sync = Instant::now();
                unsynced = false;
            }
            continue;
        }
        let wait = if unsynced {
            config.fsync_interval.saturating_sub(last_sync.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        let first = match rx.recv_timeout(wait) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                // A failure is reported (once) by `sync`; nothing is committed after it.
                let _ = sync(store, health);
                last_sync = Instant::now();
                unsynced = false;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => Op::Stop,
        };
        let mut group = Group::default();
        let urgent = group.add(first);
        // In default durability, let the group fill: sleeping (instead of waiting on the
        // channel) means senders do not wake this thread for every click, one wake-up per
        // group. In strict durability every click waits for its fsync, so waiting longer only
        // adds latency: the clicks that arrive during one fsync form the next group anyway.
        if !urgent && config.durability == Durability::Default && !config.commit_interval.is_zero()
        {
            thread::sleep(config.commit_interval);
        }
        while group.len() < config.max_batch {
            let Ok(op) = rx.try_recv() else { break };
            group.add(op);
        }
        // A code made again after its hold: what is left of its old clicks goes first, or the
        // purge would take the new link's.
        for op in &group.links {
            if let LinkOp::Create(link, _) = op
                && let Some(at) = purges.iter().position(|(c, _)| *c == link.code)
            {
                let mut below = purges[at].1;
                let purged = loop {
                    match purge_step(store, &link.code, &mut below) {
                        Ok(true) => break true,
                        Ok(false) => {}
                        Err(e) => {
                            health.fail(format!("a purge failed: {e}"));
                            break false;
                        }
                    }
                };
                if purged {
                    purges.retain(|(c, _)| *c != link.code);
                }
            }
        }
        // A disk that does not answer (fault injection): the group waits, and so does
        // everything queued behind it.
        while health.stalled.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(5));
        }

        let started = Instant::now();
        if !group.fresh.is_empty()
            && !health.failed.load(Ordering::Acquire)
            && let Err(e) = number_fresh(store, &mut group, &config.metrics)
        {
            health.fail(format!("numbering clicks failed: {e}"));
        }
        let stop = group.stop;
        let must_sync = stop
            || !group.links.is_empty()
            || (config.durability == Durability::Strict && !group.clicks.is_empty());
        let mut result = match health.failure.lock().ok().and_then(|f| f.clone()) {
            // After a failed commit or fsync nothing more is committed: later clicks would
            // leave a gap in their code's numbering, or sit on pages the kernel dropped.
            Some(reason) => Err(WriteError::Failed(reason)),
            None => commit_to_os(store, &group, health, config.deleted_code_hold),
        };
        if result.is_ok() {
            unsynced = true;
            if must_sync || last_sync.elapsed() >= config.fsync_interval {
                if let Err(e) = sync(store, health) {
                    result = Err(e);
                }
                last_sync = Instant::now();
                unsynced = false;
            }
        }
        if let Ok(outcomes) = &result {
            for (op, outcome) in group.links.iter().zip(outcomes) {
                if let (LinkOp::Delete(code, _), Ok(LinkOutcome::Deleted(true))) = (op, outcome) {
                    purges.push_back((code.clone(), u64::MAX));
                }
            }
        }
        if result.is_ok() {
            config
                .metrics
                .group_committed(group.clicks.len(), started.elapsed());
        }
        answer(&mut group, &result, health);
        if stop {
            info!("writer stopped");
            return;
        }
    }
}

/// Numbers the group's fresh clicks after their codes' last stored clicks, in the order they
/// came, and moves them among the numbered ones. A code whose link is gone (or goes in this
/// group) takes none of them: they are dropped and counted, as an actor would refuse them.
fn number_fresh(
    store: &Store,
    group: &mut Group,
    metrics: &crate::metrics::Metrics,
) -> Result<(), StoreError> {
    // Each code's next number; `None` for a code whose clicks are dropped. All reads come
    // first: a failed one leaves the fresh clicks where they are (counted as lost).
    let mut next: HashMap<ShortCode, Option<u64>> = HashMap::new();
    for (code, _, _) in &group.fresh {
        if next.contains_key(code) {
            continue;
        }
        let deleted_here = group
            .links
            .iter()
            .any(|op| matches!(op, LinkOp::Delete(c, _) if c == code));
        let first = if deleted_here || !store.links.contains_key(code.as_str())? {
            None
        } else {
            Some(store.last_seq(code.as_str())? + 1)
        };
        next.insert(code.clone(), first);
    }
    let mut dropped = 0;
    for (code, mut event, ack) in std::mem::take(&mut group.fresh) {
        let Some(Some(seq)) = next.get_mut(&code) else {
            // Its acknowledgement goes with it: a strict redirect waiting for it hears that
            // its click was not stored.
            dropped += 1;
            continue;
        };
        event.seq = *seq;
        *seq += 1;
        group.clicks.push((code, Arc::new(event)));
        group.acks.extend(ack);
    }
    if dropped > 0 {
        metrics.clicks_dropped(crate::metrics::DropReason::LinkDeleted, dropped);
    }
    Ok(())
}

/// Commits the group and hands the journal to the OS, so a killed process keeps it.
fn commit_to_os(
    store: &Store,
    group: &Group,
    health: &Health,
    hold: Duration,
) -> Result<Vec<Result<LinkOutcome, WriteError>>, WriteError> {
    let failed = |e: String| {
        health.fail(format!("a commit failed: {e}"));
        WriteError::Failed(e)
    };
    if health.fail_commit.swap(false, Ordering::AcqRel) {
        return Err(failed("injected I/O error".into()));
    }
    let outcomes = commit(store, group, hold).map_err(|e| failed(e.to_string()))?;
    store
        .db
        .persist(PersistMode::Buffer)
        .map_err(|e| failed(e.to_string()))?;
    Ok(outcomes)
}

/// Writes the group as one atomic batch. Returns what became of each link operation, in order.
fn commit(
    store: &Store,
    group: &Group,
    hold: Duration,
) -> Result<Vec<Result<LinkOutcome, WriteError>>, StoreError> {
    if group.clicks.is_empty()
        && group.links.is_empty()
        && group.aggregates.is_empty()
        && group.expired.is_empty()
    {
        return Ok(Vec::new());
    }
    let mut batch = store.db.batch();
    let mut change = TotalsChange::default();
    // Link operations first, each seeing the ones before it in the group.
    let outcomes = stage_links(store, &mut batch, &group.links, hold, &mut change);
    // Snapshots are encoded off the actors and may arrive out of order: the one covering the
    // most clicks stays (retention relies on the stored one never going back). One write per
    // code and group.
    let mut newest: HashMap<&str, (u64, &[u8])> = HashMap::new();
    for (code, covers, bytes) in &group.aggregates {
        let entry = newest.entry(code.as_str()).or_insert((0, &[]));
        if *covers > entry.0 {
            *entry = (*covers, bytes.as_slice());
        }
    }
    for (code, (covers, bytes)) in newest {
        // The last snapshot of a deleted link's actor is not kept.
        if covers > store.covers(code)? && store.links.contains_key(code)? {
            batch.insert(&store.stats, code, bytes);
            batch.insert(
                &store.stats,
                records::covers_key(code),
                covers.to_be_bytes(),
            );
        }
    }
    // Retention read these keys a while ago: only those still stored, of a code that still has
    // its link, and covered by its stored aggregates, go (a deleted link's purge, or a new link
    // made on its code after the hold, may have come in between). Only those are counted.
    let mut expired = 0;
    for key in &group.expired {
        if still_expirable(store, key)? {
            batch.remove(&store.clicks, key.as_slice());
            expired += 1;
        }
    }
    for (code, event) in &group.clicks {
        batch.insert(
            &store.clicks,
            records::click_key(code.as_str(), event.seq),
            records::encode_click(event),
        );
    }
    // One totals record per group, in the same atomic batch (see `records::Totals`).
    change.clicks = group.clicks.len() as u64;
    change.expired = expired;
    let totals = store.stage_totals(&mut batch, change);
    debug!(
        clicks = group.clicks.len(),
        links = group.links.len(),
        "group commit"
    );
    batch.commit()?;
    store.committed(totals);
    Ok(outcomes)
}

/// Stages the group's link operations in `batch`, in order. A failed read fails that
/// operation only (before it staged anything): the clicks of the group must still be
/// committed, or their numbers would leave a gap.
fn stage_links(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    ops: &[LinkOp],
    hold: Duration,
    change: &mut TotalsChange,
) -> Vec<Result<LinkOutcome, WriteError>> {
    // The links as this group leaves them (`None`: deleted here).
    let mut here: HashMap<ShortCode, Option<Link>> = HashMap::new();
    let now = now_ms();
    ops.iter()
        .map(|op| {
            stage_link(store, batch, op, hold, now, &mut here, change)
                .map_err(|e| WriteError::Failed(e.to_string()))
        })
        .collect()
}

fn stage_link(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    op: &LinkOp,
    hold: Duration,
    now: i64,
    here: &mut HashMap<ShortCode, Option<Link>>,
    change: &mut TotalsChange,
) -> Result<LinkOutcome, StoreError> {
    let code = match op {
        LinkOp::Create(link, _) => &link.code,
        LinkOp::Update(code, ..) | LinkOp::Delete(code, _) => code,
    };
    let current = match here.get(code) {
        Some(link) => link.clone(),
        None => store.link(code.as_str())?,
    };
    Ok(match op {
        LinkOp::Create(link, _) => {
            let held = match store.gone_until(code.as_str())? {
                Some(until) if !here.contains_key(code) => until > now,
                // Deleted in this very group.
                Some(_) | None => here.contains_key(code),
            };
            let free = current.is_none() && !held;
            if free {
                store.stage_new_link(batch, link);
                change.links += 1;
                here.insert(code.clone(), Some(link.clone()));
            }
            LinkOutcome::Created(free)
        }
        LinkOp::Update(_, change, _) => match current {
            None => LinkOutcome::Updated(None),
            Some(link) => match change(&link) {
                Err(refused) => LinkOutcome::Updated(Some(Err(refused))),
                Ok(mut new) => {
                    // What identifies a link never changes.
                    new.code = link.code.clone();
                    new.owner = link.owner.clone();
                    new.created_at = link.created_at;
                    new.rev = link.rev + 1;
                    new.updated_at = now.max(link.updated_at);
                    batch.insert(&store.links, code.as_str(), records::encode_link(&new));
                    here.insert(code.clone(), Some(new.clone()));
                    LinkOutcome::Updated(Some(Ok(new)))
                }
            },
        },
        LinkOp::Delete(..) => match current {
            None => LinkOutcome::Deleted(false),
            Some(link) => {
                batch.remove(&store.links, code.as_str());
                batch.remove(&store.index, records::time_index_key(&link));
                batch.remove(&store.index, records::owner_index_key(&link));
                let until = now.saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
                batch.insert(
                    &store.meta,
                    records::gone_key(code.as_str()),
                    until.to_be_bytes(),
                );
                change.deleted_links += 1;
                here.insert(code.clone(), None);
                LinkOutcome::Deleted(true)
            }
        },
    })
}

/// Whether a click key retention found is still one to delete (see `commit`).
fn still_expirable(store: &Store, key: &[u8]) -> Result<bool, StoreError> {
    let Some((code, seq)) = records::split_click_key(key) else {
        return Ok(false);
    };
    let Ok(code) = std::str::from_utf8(code) else {
        return Ok(false);
    };
    Ok(store.clicks.contains_key(key)?
        && store.links.contains_key(code)?
        && seq <= store.covers(code)?)
}

/// One step of purging a deleted link: removes up to [`PURGE_CHUNK`] of its clicks from the
/// end, and its aggregates with the last of them, in one batch with the totals. True when
/// nothing is left.
fn purge_step(store: &Store, code: &ShortCode, below: &mut u64) -> Result<bool, StoreError> {
    let keys = store.last_click_keys(code.as_str(), *below, PURGE_CHUNK)?;
    let done = keys.len() < PURGE_CHUNK;
    if let Some(lowest) = keys.last() {
        *below = records::click_seq(lowest, lowest.len() - 8)?;
    }
    let mut batch = store.db.batch();
    for key in &keys {
        batch.remove(&store.clicks, key.as_slice());
    }
    if done {
        batch.remove(&store.stats, code.as_str());
        batch.remove(&store.stats, records::covers_key(code.as_str()));
    }
    let totals = store.stage_totals(
        &mut batch,
        TotalsChange {
            deleted_clicks: keys.len() as u64,
            ..TotalsChange::default()
        },
    );
    batch.commit()?;
    store.db.persist(PersistMode::Buffer)?;
    store.committed(totals);
    if done {
        debug!(code = %code, "deleted link purged");
    }
    Ok(done)
}

fn sync(store: &Store, health: &Health) -> Result<(), WriteError> {
    if health.failed.load(Ordering::Acquire) {
        return Err(WriteError::Failed("the store has failed".into()));
    }
    // fdatasync: the journal's data and what is needed to read it back (its length), without
    // the timestamps a full fsync also writes.
    let result = if health.fail_sync.swap(false, Ordering::AcqRel) {
        Err("injected I/O error".to_owned())
    } else {
        store
            .db
            .persist(PersistMode::SyncData)
            .map_err(|e| e.to_string())
    };
    result.map_err(|e| {
        health.fail(format!("an fsync of the journal failed: {e}"));
        WriteError::Failed(e)
    })
}

/// Tells everyone waiting on the group how it went. A waiter that is gone is ignored: the
/// redirect it belonged to may have timed out.
fn answer(
    group: &mut Group,
    result: &Result<Vec<Result<LinkOutcome, WriteError>>, WriteError>,
    health: &Health,
) {
    match result {
        Ok(outcomes) => {
            group.notify();
            for ack in group.acks.drain(..) {
                let _ = ack.send(());
            }
            for (op, outcome) in group.links.drain(..).zip(outcomes) {
                op.answer(outcome.clone());
            }
            for barrier in group.barriers.drain(..) {
                let _ = barrier.send(Ok(()));
            }
            for reply in group.expire_replies.drain(..) {
                let _ = reply.send(Ok(()));
            }
        }
        Err(e) => {
            // Logged once, when the store failed (`Health::fail`); groups after that only
            // count what they could not save.
            let clicks = group.clicks.len() + group.fresh.len();
            debug!(cause = %e, clicks, "group not committed");
            health.lost.fetch_add(clicks as u64, Ordering::Relaxed);
            // Dropping the click acks tells strict-mode redirects that their click is not safe.
            group.acks.clear();
            for op in group.links.drain(..) {
                op.answer(Err(e.clone()));
            }
            for barrier in group.barriers.drain(..) {
                let _ = barrier.send(Err(e.clone()));
            }
            for reply in group.expire_replies.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
