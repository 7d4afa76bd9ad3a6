//! The embedded engine's writer: one OS thread that takes every item from the shared queue
//! (`store/writer/`) and commits each group as one atomic fjall batch across keyspaces,
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
//!
//! The group's batch is made in `batch.rs`; a deleted link's clicks are purged in steps in
//! `purge.rs`.

mod batch;
mod purge;

use std::{
    collections::VecDeque,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use fjall::PersistMode;
use tracing::{error, info};

use super::Store;
use crate::{
    domain::ShortCode,
    store::{
        WriteError, Writer, WriterConfig,
        writer::{Durability, Health, LinkOp, LinkOutcome, Op, channel, group::Group},
    },
};
use purge::{purge_before_create, purge_one_step};

impl Writer {
    pub fn start(store: Store, config: WriterConfig) -> std::io::Result<Self> {
        let (handle, rx, health) = channel();
        let thread = thread::Builder::new()
            .name("linkpulse-writer".into())
            .spawn(move || {
                crate::store::priority::background_thread();
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

/// Takes groups from the queue and commits them until told to stop, with a step of a
/// deleted link's purge whenever nothing else waits, and an fsync at least every
/// `fsync_interval` in default durability.
fn run(
    store: &Store,
    rx: &Receiver<Op>,
    config: &WriterConfig,
    health: &Health,
    // Deleted codes still to purge, each with the number its next step starts below.
    mut purges: VecDeque<(ShortCode, u64)>,
) {
    let mut sync = Syncs {
        last: Instant::now(),
        unsynced: false,
    };
    loop {
        // One step of a purge between groups, while nothing else waits.
        if !purges.is_empty() && rx.is_empty() && !health.failed.load(Ordering::Acquire) {
            purge_one_step(store, &mut purges, health);
            sync.unsynced = true;
            // A long purge still keeps the clicks before it within the fsync interval.
            sync.if_due(store, health, config.fsync_interval);
            continue;
        }
        let wait = if sync.unsynced {
            config.fsync_interval.saturating_sub(sync.last.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        let first = match rx.recv_timeout(wait) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                // A failure is reported (once) by `sync`; nothing is committed after it.
                let _ = sync.now(store, health);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => Op::Stop,
        };
        let mut group = Group::gather(first, rx, config);
        purge_before_create(store, &group, &mut purges, health);
        // A disk that does not answer (fault injection): the group waits, and so does
        // everything queued behind it.
        while health.stalled.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(5));
        }
        let stop = group.stop;
        commit_group(store, &mut group, config, health, &mut sync, &mut purges);
        if stop {
            info!("writer stopped");
            return;
        }
    }
}

/// When the journal was last fsynced, and whether anything was committed since.
struct Syncs {
    last: Instant,
    unsynced: bool,
}

impl Syncs {
    /// Fsyncs now; the result (a failure is reported once by `sync`).
    fn now(&mut self, store: &Store, health: &Health) -> Result<(), WriteError> {
        let synced = sync(store, health);
        self.last = Instant::now();
        self.unsynced = false;
        synced
    }

    fn if_due(&mut self, store: &Store, health: &Health, every: Duration) {
        if self.last.elapsed() >= every {
            let _ = self.now(store, health);
        }
    }
}

/// Commits one group (and fsyncs it when it must be), then tells everyone how it went.
fn commit_group(
    store: &Store,
    group: &mut Group,
    config: &WriterConfig,
    health: &Health,
    sync: &mut Syncs,
    purges: &mut VecDeque<(ShortCode, u64)>,
) {
    let started = Instant::now();
    let must_sync = group.stop
        || !group.links.is_empty()
        || (config.durability == Durability::Strict && group.clicks() > 0);
    let mut result = match health.failure.lock().ok().and_then(|f| f.clone()) {
        // After a failed commit or fsync nothing more is committed: later clicks would
        // leave a gap in their code's numbering, or sit on pages the kernel dropped.
        Some(reason) => Err(WriteError::Failed(reason)),
        None => commit_to_os(store, group, health, config.deleted_code_hold),
    };
    if result.is_ok() {
        sync.unsynced = true;
        if (must_sync || sync.last.elapsed() >= config.fsync_interval)
            && let Err(e) = sync.now(store, health)
        {
            result = Err(e);
        }
    }
    let result = match result {
        Ok(outcomes) => {
            for (op, outcome) in group.links.drain(..).zip(outcomes) {
                if let (LinkOp::Delete(code, _), Ok(LinkOutcome::Deleted(true))) = (&op, &outcome) {
                    purges.push_back((code.clone(), u64::MAX));
                }
                op.answer(outcome);
            }
            Ok(())
        }
        Err(e) => Err(e),
    };
    group.finish(result, health, &config.metrics, started);
}

/// Commits the group and hands the journal to the OS, so a killed process keeps it.
fn commit_to_os(
    store: &Store,
    group: &mut Group,
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
    let outcomes = batch::commit(store, group, hold).map_err(|e| failed(e.to_string()))?;
    store
        .db
        .persist(PersistMode::Buffer)
        .map_err(|e| failed(e.to_string()))?;
    Ok(outcomes)
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
