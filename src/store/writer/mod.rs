//! The writer's queue, shared by both engines: what goes into it (clicks, link changes,
//! snapshots, barriers), the handle every actor and handler sends through, the writer's
//! health, and the rules both engines keep: a group is everything that arrives within
//! `commit_interval` of its first item (or `max_batch` clicks); a link change or a barrier
//! closes the group at once; each click's acknowledgement is kept with it and sent only once
//! the click is stored (fsynced, in strict durability); after a group is stored each code's
//! [`CommitListener`] hears the highest click number the store holds.
//!
//! Each engine drains the queue on a thread of its own: `fjall/writer/` commits a group as
//! one atomic batch; `nats/writer/` publishes it as numbered messages per code.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;
use tracing::error;

pub(super) mod group;

use super::Permit;
use crate::domain::{ClickEvent, Link, ShortCode};

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
    /// Visit-limit admissions the store decides (a cluster store, where another node may
    /// take the last place): each names a click by its place in `events`, told whether it
    /// was stored within `limit` once it was, and dropped if it never is.
    pub admits: Vec<(usize, oneshot::Sender<bool>)>,
    /// The link's visit limit, for `admits`.
    pub limit: Option<u64>,
}

/// A change to a stored link, taken in the order the writer receives it.
pub type LinkChange = Box<dyn Fn(&Link) -> Result<Link, String> + Send>;

/// What became of a link operation.
pub(super) enum LinkOp {
    /// Answered `false` when the code is taken (or held after a deletion).
    Create(Box<Link>, oneshot::Sender<Result<bool, WriteError>>),
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
    /// The code the operation is on.
    pub(super) fn code(&self) -> &ShortCode {
        match self {
            Self::Create(link, _) => &link.code,
            Self::Update(code, _, _) | Self::Delete(code, _) => code,
        }
    }

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
    /// Many link operations taken into one group together (a bulk creation): the group
    /// commits them all at once, however long the queue's `max_batch` is.
    Links(Vec<LinkOp>),
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

/// Faults a test can make the writer suffer, as a failing disk would (the `test-hooks`
/// feature, on in test builds only).
#[cfg(feature = "test-hooks")]
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
    pub(super) failure: Mutex<Option<String>>,
    pub(super) failed: AtomicBool,
    /// Clicks handed to the writer that it did not commit (after the failure).
    pub(super) lost: AtomicU64,
    pub(super) stalled: AtomicBool,
    pub(super) fail_commit: AtomicBool,
    pub(super) fail_sync: AtomicBool,
    /// Why the cluster store cannot take writes now (it retries until it can).
    pub(super) unavailable: Mutex<Option<String>>,
    /// Publishes of the cluster store tried again.
    pub(super) retries: AtomicU64,
    /// Told of every code's stored clicks, whoever numbered them (see
    /// [`WriterHandle::on_commits`]).
    pub(super) commits: std::sync::OnceLock<CommitHook>,
}

/// Told of each code's last stored click after each group commit.
pub type CommitHook = Arc<dyn Fn(&ShortCode, u64) + Send + Sync>;

impl Health {
    pub(super) fn fail(&self, reason: String) {
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
    /// Calls `hook` with each code's last stored click after every group commit (clicks of
    /// actors and fresh clicks alike). Set once; later calls are ignored.
    pub fn on_commits(&self, hook: CommitHook) {
        let _ = self.health.commits.set(hook);
    }

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
            .send(Op::Link(LinkOp::Create(Box::new(link), reply)))
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Stores many new links in one group commit (one atomic batch on the embedded store,
    /// one job of the cluster store's writer). Each answer is as [`Self::create_link`]'s, in
    /// the order of `links`; a link whose code another in `links` took first is `Ok(false)`.
    pub async fn create_links(&self, links: Vec<Link>) -> Vec<Result<bool, WriteError>> {
        let (ops, answers) = links
            .into_iter()
            .map(|link| {
                let (reply, rx) = oneshot::channel();
                (LinkOp::Create(Box::new(link), reply), rx)
            })
            .unzip();
        self.link_ops(ops, answers).await
    }

    /// Applies many changes in one group commit, each as [`Self::update_link`] applies one
    /// (in the order given, each seeing the ones before it). The answers are in that order.
    pub async fn update_links(
        &self,
        changes: Vec<(ShortCode, LinkChange)>,
    ) -> Vec<Result<Option<Result<Link, String>>, WriteError>> {
        let (ops, answers) = changes
            .into_iter()
            .map(|(code, change)| {
                let (reply, rx) = oneshot::channel();
                (LinkOp::Update(code, change, reply), rx)
            })
            .unzip();
        self.link_ops(ops, answers).await
    }

    /// Sends `ops` as one item of the queue (one group) and waits for each answer.
    async fn link_ops<T>(
        &self,
        ops: Vec<LinkOp>,
        answers: Vec<oneshot::Receiver<Result<T, WriteError>>>,
    ) -> Vec<Result<T, WriteError>> {
        if ops.is_empty() {
            return Vec::new();
        }
        if self.tx.send(Op::Links(ops)).is_err() {
            return answers.iter().map(|_| Err(WriteError::Stopped)).collect();
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            out.push(rx.await.unwrap_or(Err(WriteError::Stopped)));
        }
        out
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
    #[cfg(feature = "test-hooks")]
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
