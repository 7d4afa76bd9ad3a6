//! The single writer: one OS thread that takes every click, link and barrier from a channel
//! and commits them in group commits. A group is everything that arrives within
//! `commit_interval` of its first item (or `max_batch` items, whichever comes first; a new link
//! or a barrier closes the group at once); it is one atomic fjall batch across keyspaces,
//! handed to the OS at once (so a killed process loses nothing committed). In `strict`
//! durability a group is fsynced before any of its clicks is acknowledged; in the default mode
//! the journal is fsynced at least every `fsync_interval`.
//!
//! After a group is committed (fsynced, in strict durability) the writer tells each code's
//! [`CommitListener`] the highest click number it now holds: live frames show only those.
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
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use fjall::PersistMode;
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use super::{Permit, Store, StoreError, TotalsChange, records};
use crate::domain::{ClickEvent, Link, ShortCode, now_ms};

/// Clicks of a deleted link removed per commit: a purge of millions goes in steps between the
/// groups of clicks, never holding them up for long.
const PURGE_CHUNK: usize = 10_000;

/// How soon a click must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Answer at once; commit within `commit_interval`, fsync at least every `fsync_interval`.
    Default,
    /// Answer a redirect only after the group holding its click is fsynced.
    Strict,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub durability: Durability,
    pub commit_interval: Duration,
    pub max_batch: usize,
    pub fsync_interval: Duration,
    /// How long a deleted code stays unusable for a new link.
    pub deleted_code_hold: Duration,
    /// Where group commits are measured (`linkpulse_commit_*`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Why a write was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the writer has stopped")]
    Stopped,
    #[error("the commit failed: {0}")]
    Failed(String),
    /// The store cannot be reached now (a cluster store's servers): the write was not made,
    /// and may be tried again.
    #[error("the store cannot be reached now: {0}")]
    Unavailable(String),
}

/// Told, after a commit, the highest click number of its code that the store now holds
/// (fsynced, in strict durability). Called on the writer thread: it must not block.
pub trait CommitListener: Send + Sync {
    fn committed(&self, seq: u64);
    /// Another node stored clicks of this code meanwhile (the cluster store only): the
    /// listener's numbers are stale, and the clicks it sent were stored under the numbers
    /// after the other node's.
    fn superseded(&self) {}
}

/// Clicks of one code, numbered in order by its actor.
pub struct ClickBatch {
    pub code: ShortCode,
    pub events: Vec<Arc<ClickEvent>>,
    /// Fired once the batch is committed (and fsynced in strict mode).
    pub acks: Vec<oneshot::Sender<()>>,
    pub listener: Option<Arc<dyn CommitListener>>,
    /// The clicks' places in the backlog, given back once they are committed (or lost).
    pub permit: Permit,
}

/// A change to a stored link, taken in the order the writer receives it.
pub type LinkChange = Box<dyn Fn(&Link) -> Result<Link, String> + Send>;

/// What became of a link operation.
pub(super) enum LinkOp {
    /// Answered `false` when the code is taken (or held after a deletion).
    Create(Link, oneshot::Sender<Result<bool, WriteError>>),
    /// Answered with the new link, the change's refusal, or `None` when there is no such link.
    Update(
        ShortCode,
        LinkChange,
        oneshot::Sender<Result<Option<Result<Link, String>>, WriteError>>,
    ),
    /// Answered `false` when there is no such link.
    Delete(ShortCode, oneshot::Sender<Result<bool, WriteError>>),
}

// A few per group, answered at once: boxing the link would cost more than the size does.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(super) enum LinkOutcome {
    Created(bool),
    Updated(Option<Result<Link, String>>),
    Deleted(bool),
}

impl LinkOp {
    /// Tells the caller what became of the operation (a caller that is gone is ignored).
    pub(super) fn answer(self, outcome: Result<LinkOutcome, WriteError>) {
        let mismatch = || WriteError::Failed("mismatched link outcome".into());
        match self {
            Self::Create(_, reply) => {
                let _ = reply.send(outcome.and_then(|o| match o {
                    LinkOutcome::Created(free) => Ok(free),
                    _ => Err(mismatch()),
                }));
            }
            Self::Update(_, _, reply) => {
                let _ = reply.send(outcome.and_then(|o| match o {
                    LinkOutcome::Updated(updated) => Ok(updated),
                    _ => Err(mismatch()),
                }));
            }
            Self::Delete(_, reply) => {
                let _ = reply.send(outcome.and_then(|o| match o {
                    LinkOutcome::Deleted(found) => Ok(found),
                    _ => Err(mismatch()),
                }));
            }
        }
    }
}

/// A click of a code with no live actor, numbered by the writer (`seq` is 0 until then).
pub struct FreshClick {
    pub code: ShortCode,
    pub event: ClickEvent,
    /// Fired once the click is committed (and fsynced in strict mode).
    pub ack: Option<oneshot::Sender<()>>,
    pub permit: Permit,
}

pub(super) enum Op {
    Clicks(ClickBatch),
    Fresh(Box<FreshClick>),
    Link(LinkOp),
    /// A link's aggregates, covering clicks 1..=`covers`, all already committed.
    Aggregates {
        code: ShortCode,
        covers: u64,
        bytes: Vec<u8>,
    },
    /// Clicks `--click-retention-days` lets go (see `Store::expirable`).
    Expire {
        keys: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    Barrier(oneshot::Sender<Result<(), WriteError>>),
    Stop,
}

/// Faults a test can make the writer suffer, as a failing disk would.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every commit waits until [`Fault::Resume`] (a disk that stops answering).
    Stall,
    Resume,
    /// The next commit fails (a disk that returns an I/O error).
    FailCommit,
    /// The next fsync fails.
    FailSync,
}

/// What the writer thread and its handles share.
#[derive(Default)]
pub(super) struct Health {
    /// Set once, by the first failed commit or fsync.
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    /// Clicks handed to the writer that it did not commit (after the failure).
    lost: AtomicU64,
    stalled: AtomicBool,
    fail_commit: AtomicBool,
    fail_sync: AtomicBool,
    /// Why the cluster store cannot take writes now (it retries until it can).
    pub(super) unavailable: Mutex<Option<String>>,
    /// Publishes of the cluster store tried again.
    pub(super) retries: AtomicU64,
}

impl Health {
    fn fail(&self, reason: String) {
        if let Ok(mut failure) = self.failure.lock()
            && failure.is_none()
        {
            error!(
                cause = %reason,
                "the store failed: no more clicks or links are committed; /healthz answers 503 \
                 until linkpulse is restarted on a working disk"
            );
            *failure = Some(reason);
        }
        self.failed.store(true, Ordering::Release);
    }
}

/// The sending side, cloned into every actor and handler.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Sender<Op>,
    health: Arc<Health>,
}

impl WriterHandle {
    /// Queues a code's clicks. They are dropped (and their acks with them) if the writer has
    /// stopped.
    pub fn clicks(&self, batch: ClickBatch) {
        if self.tx.send(Op::Clicks(batch)).is_err() {
            error!("clicks written after the writer stopped; they are lost");
        }
    }

    /// Queues a click of a code with no live actor, to be numbered after its last stored one.
    /// The caller must hold what keeps an actor of the code from starting meanwhile (the
    /// directory's shard lock).
    pub fn fresh_click(&self, click: FreshClick) {
        if self.tx.send(Op::Fresh(Box::new(click))).is_err() {
            error!("a click written after the writer stopped; it is lost");
        }
    }

    /// Stores a new link unless its code is taken. `Ok(false)` means taken. The link is fsynced
    /// before the answer.
    pub async fn create_link(&self, link: Link) -> Result<bool, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Link(LinkOp::Create(link, reply)))
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Applies `change` to the stored link (read and written by the writer, so changes never
    /// race) and stores the result with `rev` one higher, fsynced before the answer. `None`:
    /// no such link; `Some(Err)`: the change refused.
    pub async fn update_link(
        &self,
        code: ShortCode,
        change: LinkChange,
    ) -> Result<Option<Result<Link, String>>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Link(LinkOp::Update(code, change, reply)))
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Deletes a link: its record at once (fsynced before the answer), holding the code for
    /// `deleted_code_hold`; its clicks and aggregates in steps after. Queued when called, so
    /// it follows every click batch sent before it. `false`: no such link.
    pub fn delete_link(
        &self,
        code: ShortCode,
    ) -> impl Future<Output = Result<bool, WriteError>> + use<> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Op::Link(LinkOp::Delete(code, reply)));
        async move {
            sent.map_err(|_| WriteError::Stopped)?;
            rx.await.map_err(|_| WriteError::Stopped)?
        }
    }

    /// Stores a link's aggregates snapshot with the next group. It must cover only clicks that
    /// are committed already (or queued before it), so the journal never holds a snapshot
    /// ahead of the clicks it counts.
    pub fn aggregates(&self, code: ShortCode, covers: u64, bytes: Vec<u8>) {
        // A snapshot that cannot be written is rebuilt from the click log at the next start.
        let _ = self.tx.send(Op::Aggregates {
            code,
            covers,
            bytes,
        });
    }

    /// Deletes expired clicks (and counts them in the totals record) in the next group; waits
    /// for the commit. Blocking: call it from a thread of its own, not from async code.
    pub fn expire_blocking(&self, keys: Vec<Vec<u8>>) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Expire { keys, reply })
            .map_err(|_| WriteError::Stopped)?;
        rx.blocking_recv().map_err(|_| WriteError::Stopped)?
    }

    /// Resolves once everything queued before it is committed (visible to reads).
    pub async fn barrier(&self) -> Result<(), WriteError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Barrier(tx))
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Items waiting for the writer (a gauge for metrics).
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    /// False once a commit or an fsync has failed: nothing is committed after that.
    pub fn is_healthy(&self) -> bool {
        !self.health.failed.load(Ordering::Acquire)
    }

    /// Why the writer stopped committing, if it did.
    pub fn failure(&self) -> Option<String> {
        self.health.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Why the store cannot take writes for now (NATS unreachable), if it cannot: unlike a
    /// failure, this passes by itself.
    pub fn unavailable(&self) -> Option<String> {
        self.health.unavailable.lock().ok().and_then(|u| u.clone())
    }

    /// Clicks that reached the writer and were not committed because the store had failed.
    pub fn lost_clicks(&self) -> u64 {
        self.health.lost.load(Ordering::Relaxed)
    }

    /// Makes the writer suffer `fault` (tests).
    #[doc(hidden)]
    pub fn inject(&self, fault: Fault) {
        let h = &self.health;
        match fault {
            Fault::Stall => h.stalled.store(true, Ordering::Release),
            Fault::Resume => h.stalled.store(false, Ordering::Release),
            Fault::FailCommit => h.fail_commit.store(true, Ordering::Release),
            Fault::FailSync => h.fail_sync.store(true, Ordering::Release),
        }
    }
}

/// The writer thread and the means to stop it.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<thread::JoinHandle<()>>,
}

/// A writer's queue: the handle that sends, the end its thread drains, and what they share.
pub(super) fn channel() -> (WriterHandle, Receiver<Op>, Arc<Health>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let health = Arc::new(Health::default());
    let handle = WriterHandle {
        tx,
        health: health.clone(),
    };
    (handle, rx, health)
}

impl Writer {
    pub(super) fn from_parts(handle: WriterHandle, thread: thread::JoinHandle<()>) -> Self {
        Self {
            handle,
            thread: Some(thread),
        }
    }

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
        Ok(Self {
            handle,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Commits whatever is queued, fsyncs, and ends the thread. Blocking: on a disk that does
    /// not answer this does not return (run it where a deadline can give up on it).
    pub fn stop(mut self) -> Result<(), String> {
        let _ = self.handle.tx.send(Op::Stop);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err("the writer thread panicked".into());
        }
        match self.handle.failure() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.handle.tx.send(Op::Stop);
            let _ = thread.join();
        }
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
