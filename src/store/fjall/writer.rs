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
    collections::{HashMap, VecDeque},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use fjall::PersistMode;
use tracing::{debug, error, info};

use super::{Store, TotalsChange};
use crate::{
    domain::{ClickEvent, Link, ShortCode, now_ms},
    store::{
        StoreError, WriteError, Writer, WriterConfig, records,
        writer::{
            Durability, Health, LinkOp, LinkOutcome, Op, channel,
            group::{Group, Item, Outcome, Pending},
        },
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
    let stored = group.finish(result.clone(), health, &config.metrics);
    if result.is_ok() {
        config.metrics.group_committed(stored, started.elapsed());
    }
}

/// One step of the first purge waiting.
fn purge_one_step(store: &Store, purges: &mut VecDeque<(ShortCode, u64)>, health: &Health) {
    let Some((code, below)) = purges.front_mut() else {
        return;
    };
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
}

/// A code made again after its hold: what is left of its old clicks goes first, or the purge
/// would take the new link's.
fn purge_before_create(
    store: &Store,
    group: &Group,
    purges: &mut VecDeque<(ShortCode, u64)>,
    health: &Health,
) {
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
    let outcomes = commit(store, group, hold).map_err(|e| failed(e.to_string()))?;
    store
        .db
        .persist(PersistMode::Buffer)
        .map_err(|e| failed(e.to_string()))?;
    Ok(outcomes)
}

/// Writes the group as one atomic batch: link operations first (each seeing the ones before
/// it), then snapshots, expired clicks and each code's clicks, with the totals record. Decides
/// each code's outcome: a code whose link is gone (before or in this group) stores none of
/// its clicks. Returns what became of each link operation, in order.
fn commit(
    store: &Store,
    group: &mut Group,
    hold: Duration,
) -> Result<Vec<Result<LinkOutcome, WriteError>>, StoreError> {
    if group.clicks() == 0
        && group.links.is_empty()
        && group.aggregates.is_empty()
        && group.expired.is_empty()
    {
        return Ok(Vec::new());
    }
    let mut batch = store.db.batch();
    let mut change = TotalsChange::default();
    let outcomes = stage_links(store, &mut batch, &group.links, hold, &mut change);
    let deleted_here: Vec<&ShortCode> = group
        .links
        .iter()
        .filter_map(|op| match op {
            LinkOp::Delete(code, _) => Some(code),
            _ => None,
        })
        .collect();
    stage_aggregates(store, &mut batch, &group.aggregates)?;
    change.expired = stage_expired(store, &mut batch, &group.expired)?;
    for pending in &mut group.codes {
        if deleted_here.contains(&&pending.code)
            || !store.links.contains_key(pending.code.as_str())?
        {
            pending.outcome = Outcome::Dropped;
            continue;
        }
        let (events, renumbered) = number(store, pending)?;
        for event in &events {
            batch.insert(
                &store.clicks,
                records::click_key(pending.code.as_str(), event.seq),
                records::encode_click(event),
            );
        }
        change.clicks += events.len() as u64;
        pending.outcome = Outcome::Stored {
            last: events.last().map_or(0, |e| e.seq),
            superseded: renumbered,
        };
    }
    // One totals record per group, in the same atomic batch (see `records::Totals`).
    let totals = store.stage_totals(&mut batch, change);
    debug!(
        clicks = change.clicks,
        links = group.links.len(),
        "group commit"
    );
    batch.commit()?;
    store.committed(totals);
    Ok(outcomes)
}

/// A code's clicks as they are stored: an actor's as it numbered them (on one node it is
/// the only one numbering its code); clicks of a code with no live actor after the code's
/// last stored click, in the order they came. The directory never lets both kinds of one
/// code meet in a group; if they did, all would be numbered after the stored ones.
fn number(store: &Store, pending: &Pending) -> Result<(Vec<ClickEvent>, bool), StoreError> {
    if !pending.all_fresh() && pending.items.iter().all(|i| matches!(i, Item::Numbered(_))) {
        let events = pending.items.iter().map(|i| i.event().clone()).collect();
        return Ok((events, false));
    }
    let last = store.last_seq(pending.code.as_str())?;
    let numbered = Pending::numbered(&pending.items, last);
    Ok((numbered.events, numbered.renumbered))
}

/// Snapshots are encoded off the actors and may arrive out of order: the one covering the
/// most clicks stays (retention relies on the stored one never going back). One write per
/// code and group; the last snapshot of a deleted link's actor is not kept.
fn stage_aggregates(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    aggregates: &[(ShortCode, u64, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut newest: HashMap<&str, (u64, &[u8])> = HashMap::new();
    for (code, covers, bytes) in aggregates {
        let entry = newest.entry(code.as_str()).or_insert((0, &[]));
        if *covers > entry.0 {
            *entry = (*covers, bytes.as_slice());
        }
    }
    for (code, (covers, bytes)) in newest {
        if covers > store.covers(code)? && store.links.contains_key(code)? {
            batch.insert(&store.stats, code, bytes);
            batch.insert(
                &store.stats,
                records::covers_key(code),
                covers.to_be_bytes(),
            );
        }
    }
    Ok(())
}

/// Retention read these keys a while ago: only those still stored, of a code that still has
/// its link, and covered by its stored aggregates, go (a deleted link's purge, or a new link
/// made on its code after the hold, may have come in between). Returns how many.
fn stage_expired(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    keys: &[Vec<u8>],
) -> Result<u64, StoreError> {
    let mut expired = 0;
    for key in keys {
        if still_expirable(store, key)? {
            batch.remove(&store.clicks, key.as_slice());
            expired += 1;
        }
    }
    Ok(expired)
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
