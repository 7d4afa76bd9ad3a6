//! The single writer: one OS thread that takes every click, link and barrier from a channel
//! and commits them in group commits. A group is everything that arrives within
//! `commit_interval` of its first item (or `max_batch` items, whichever comes first; a new link
//! or a barrier closes the group at once); it is one atomic fjall batch across keyspaces. In `strict` durability a group is fsynced before any of
//! its clicks is acknowledged; in the default mode the journal is fsynced at least every
//! `fsync_interval`.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use fjall::PersistMode;
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use super::{Store, StoreError, records};
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
}

/// Why a write was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("the writer has stopped")]
    Stopped,
    #[error("the commit failed: {0}")]
    Failed(String),
}

enum Op {
    Click {
        code: ShortCode,
        event: Arc<ClickEvent>,
        ack: Option<oneshot::Sender<()>>,
    },
    CreateLink {
        link: Link,
        reply: oneshot::Sender<Result<bool, WriteError>>,
    },
    Barrier(oneshot::Sender<Result<(), WriteError>>),
    Stop,
}

/// The sending side, cloned into every actor and handler.
#[derive(Clone)]
pub struct WriterHandle {
    tx: Sender<Op>,
    healthy: Arc<AtomicBool>,
}

impl WriterHandle {
    /// Queues a click; `ack` fires once it is committed (and fsynced in strict mode).
    pub fn click(&self, code: ShortCode, event: Arc<ClickEvent>, ack: Option<oneshot::Sender<()>>) {
        if self.tx.send(Op::Click { code, event, ack }).is_err() {
            error!("click written after the writer stopped; it is lost");
        }
    }

    /// Stores a new link unless its code is taken. `Ok(false)` means taken. The link is fsynced
    /// before the answer.
    pub async fn create_link(&self, link: Link) -> Result<bool, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::CreateLink { link, reply })
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
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

    /// False once a commit has failed: fjall refuses further writes after an I/O failure.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// The writer thread and the means to stop it.
pub struct Writer {
    handle: WriterHandle,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(store: Store, config: WriterConfig) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let healthy = Arc::new(AtomicBool::new(true));
        let handle = WriterHandle {
            tx,
            healthy: healthy.clone(),
        };
        let thread = thread::Builder::new()
            .name("linkpulse-writer".into())
            .spawn(move || run(&store, &rx, &config, &healthy))?;
        Ok(Self {
            handle,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Commits whatever is queued, fsyncs, and ends the thread. Blocking.
    pub fn stop(mut self) {
        let _ = self.handle.tx.send(Op::Stop);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            error!("the writer thread panicked");
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
    acks: Vec<oneshot::Sender<()>>,
    links: Vec<(Link, oneshot::Sender<Result<bool, WriteError>>)>,
    barriers: Vec<oneshot::Sender<Result<(), WriteError>>>,
    stop: bool,
}

impl Group {
    fn len(&self) -> usize {
        self.clicks.len() + self.links.len() + self.barriers.len()
    }

    /// Adds an item; true when it asks for an immediate commit.
    fn add(&mut self, op: Op) -> bool {
        match op {
            Op::Click { code, event, ack } => {
                self.clicks.push((code, event));
                self.acks.extend(ack);
                false
            }
            Op::CreateLink { link, reply } => {
                self.links.push((link, reply));
                true
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
}

fn run(store: &Store, rx: &Receiver<Op>, config: &WriterConfig, healthy: &AtomicBool) {
    let mut failed = false;
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    loop {
        let wait = if unsynced {
            config.fsync_interval.saturating_sub(last_sync.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        let first = match rx.recv_timeout(wait) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                sync(store, healthy);
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

        let stop = group.stop;
        let must_sync = stop
            || !group.links.is_empty()
            || (config.durability == Durability::Strict && !group.clicks.is_empty());
        let mut result = if failed {
            // After a failed commit nothing more is committed: later clicks would leave a gap
            // in their code's numbering. The service reports itself unhealthy.
            Err(WriteError::Failed("an earlier commit failed".into()))
        } else {
            commit(store, &group).map_err(|e| WriteError::Failed(e.to_string()))
        };
        failed |= result.is_err();
        if result.is_ok() {
            unsynced = true;
            if must_sync || last_sync.elapsed() >= config.fsync_interval {
                if !sync(store, healthy) {
                    result = Err(WriteError::Failed("fsync failed".into()));
                }
                last_sync = Instant::now();
                unsynced = false;
            }
        } else {
            healthy.store(false, Ordering::Relaxed);
        }
        answer(group, &result);
        if stop {
            info!("writer stopped");
            return;
        }
    }
}

/// Writes the group as one atomic batch. Returns, for each new link in order, whether it was
/// stored (false: the code was taken).
fn commit(store: &Store, group: &Group) -> Result<Vec<Result<bool, WriteError>>, StoreError> {
    if group.clicks.is_empty() && group.links.is_empty() {
        return Ok(Vec::new());
    }
    let mut batch = store.db.batch();
    for (code, event) in &group.clicks {
        batch.insert(
            &store.clicks,
            records::click_key(code.as_str(), event.seq),
            records::encode_click(event),
        );
    }
    // A new link is free when it is not stored and not taken earlier in this group.
    let mut taken_here = HashSet::new();
    let mut outcomes = Vec::with_capacity(group.links.len());
    for (link, _) in &group.links {
        let code = link.code.as_str();
        // A failed read fails this link only: the clicks of the group must still be
        // committed, or their numbers would leave a gap.
        let outcome = match store.links.contains_key(code) {
            Ok(stored) => Ok(!stored && taken_here.insert(code)),
            Err(e) => Err(WriteError::Failed(e.to_string())),
        };
        if outcome == Ok(true) {
            batch.insert(&store.links, code, records::encode_link(link));
        }
        outcomes.push(outcome);
    }
    // One totals record per group, in the same atomic batch (see `records::Totals`).
    let stored_links = outcomes.iter().filter(|o| **o == Ok(true)).count();
    let totals = store.stage_totals(&mut batch, stored_links as u64, group.clicks.len() as u64);
    debug!(
        clicks = group.clicks.len(),
        links = group.links.len(),
        "group commit"
    );
    batch.commit()?;
    store.committed(totals);
    Ok(outcomes)
}

fn sync(store: &Store, healthy: &AtomicBool) -> bool {
    // fdatasync: the journal's data and what is needed to read it back (its length), without
    // the timestamps a full fsync also writes.
    match store.db.persist(PersistMode::SyncData) {
        Ok(()) => true,
        Err(e) => {
            error!(cause = %e, "fsync of the journal failed");
            healthy.store(false, Ordering::Relaxed);
            false
        }
    }
}

/// Tells everyone waiting on the group how it went. A waiter that is gone is ignored: the
/// redirect it belonged to may have timed out.
fn answer(group: Group, result: &Result<Vec<Result<bool, WriteError>>, WriteError>) {
    match result {
        Ok(outcomes) => {
            for ack in group.acks {
                let _ = ack.send(());
            }
            for ((_, reply), outcome) in group.links.into_iter().zip(outcomes) {
                let _ = reply.send(outcome.clone());
            }
            for barrier in group.barriers {
                let _ = barrier.send(Ok(()));
            }
        }
        Err(e) => {
            error!(cause = %e, clicks = group.clicks.len(), "group commit failed");
            // Dropping the click acks tells strict-mode redirects that their click is not safe.
            for (_, reply) in group.links {
                let _ = reply.send(Err(e.clone()));
            }
            for barrier in group.barriers {
                let _ = barrier.send(Err(e.clone()));
            }
        }
    }
}
