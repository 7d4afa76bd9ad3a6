//! How the directory starts a code's actor and watches it: the entry goes in with the actor
//! (spawned without waiting for its start), and a watcher task waits for the actor to end,
//! removes the entry once everything it sent the writer is committed, and hands the clicks
//! left in its inbox to its successor. A failed start makes the code back off.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use dashmap::mapref::entry::VacantEntry;
use ractor::{ActorId, ActorRuntime, SpawnErr, concurrency::JoinHandle};
use tokio::{sync::watch, time::Instant};
use tracing::{error, warn};

use super::{Directory, Entry, Route, deliver_click};
use crate::{
    domain::{Link, ShortCode},
    links::{
        Shared,
        actor::{LinkActor, LinkArgs},
        inbox::Inbox,
    },
    metrics::DropReason,
};

/// The first pause after a failed start; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Failed starts of a code in a row, and when the next may be tried.
pub(super) struct Backoff {
    failures: u32,
    until: Instant,
}

/// An actor's start, then its run: what [`ActorRuntime::spawn_instant`] hands back.
type Started = JoinHandle<Result<JoinHandle<()>, SpawnErr>>;

impl Directory {
    /// Starts the code's actor into `slot` (its shard locked, the code not gone), with a
    /// watcher for its end.
    pub(super) fn start(
        &self,
        slot: VacantEntry<'_, ShortCode, Entry>,
        shared: &Arc<Shared>,
        link: &Arc<Link>,
    ) -> Route {
        // The caller's copy may predate a change applied since: the cache has the
        // newest one.
        let link = match shared.cache.peek(&link.code) {
            Some(Some(cached)) if cached.rev > link.rev => cached,
            _ => link.clone(),
        };
        let link = &link;
        let (done_tx, done) = watch::channel(false);
        let inbox = Arc::new(Inbox::new(shared.metrics.clone()));
        let args = LinkArgs {
            code: link.code.clone(),
            link: link.clone(),
            shared: shared.clone(),
            inbox: inbox.clone(),
        };
        // Spawning is synchronous here: the actor's start (reading its count) runs in
        // its own task while messages already queue in its mailbox.
        let (actor, started) = match ActorRuntime::spawn_instant(None, LinkActor, args) {
            Ok(spawned) => spawned,
            Err(e) => {
                error!(code = %link.code, cause = %e, "could not spawn a link actor");
                return Route::Closed;
            }
        };
        slot.insert(Entry {
            actor: actor.clone(),
            link: link.clone(),
            gone: false,
            inbox: inbox.clone(),
            draining: false,
            done: done.clone(),
            used: AtomicBool::new(true),
        });
        // The shard lock is released: the CLOCK may look at other entries.
        self.enter_clock(link.code.clone(), actor.get_id());
        self.evict();
        let id = actor.get_id();
        let watched = link.clone();
        let watcher = watch_actor(shared.clone(), watched, inbox, started, done_tx, id);
        shared.tracker.spawn(watcher);
        Route::Live(actor, done)
    }

    /// Whether a failed start of `code` is still backing off.
    pub(super) fn backing_off(&self, code: &str) -> bool {
        self.backoff
            .get(code)
            .is_some_and(|b| b.until > Instant::now())
    }

    /// Records how a start of `code` went: a failure makes the code back off (the pause
    /// doubling with each failure in a row), a success ends that.
    fn record_start(&self, code: &ShortCode, ok: bool) {
        if ok {
            self.backoff.remove(code.as_str());
            return;
        }
        if self.backoff.len() >= 1024 {
            // Codes that failed once and were not clicked since are forgotten.
            let now = Instant::now();
            self.backoff.retain(|_, b| b.until + MAX_BACKOFF > now);
        }
        let mut entry = self.backoff.entry(code.clone()).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let pause = FIRST_BACKOFF
            .saturating_mul(1 << (entry.failures - 1).min(16))
            .min(MAX_BACKOFF);
        entry.until = Instant::now() + pause;
    }
}

/// Waits for the actor `id` to end, then removes its entry once everything it handed the
/// writer is committed, and hands the clicks left in its inbox to its successor (or, after a
/// failed start, drops them).
async fn watch_actor(
    watcher: Arc<Shared>,
    watched: Arc<Link>,
    inbox: Arc<Inbox>,
    started: Started,
    done_tx: watch::Sender<bool>,
    id: ActorId,
) {
    let code = &watched.code;
    let started_ok = run(&watcher, code, started).await;
    if !started_ok {
        watcher.metrics.actor_start_failed();
        watcher.directory.record_start(code, false);
    }
    // Clicks pushed after the actor's last collection go to its successor.
    let (leftovers, mut permit) = inbox.close();
    // Whatever the actor handed to the writer is queued there; a successor may
    // only read the count once it is committed.
    if let Err(e) = watcher.writer.barrier().await {
        warn!(code = %code, cause = %e, "writer barrier failed");
    }
    watcher
        .directory
        .map
        .remove_if(code, |_, e| e.actor.get_id() == id);
    let _ = done_tx.send(true);
    if !started_ok {
        // The code backs off: its waiting clicks are dropped, and counted.
        watcher
            .metrics
            .clicks_dropped(DropReason::ActorUnavailable, leftovers.len());
        return;
    }
    let deadline = Instant::now() + crate::links::CALL_TIMEOUT;
    for click in leftovers {
        let permit = permit.split_one();
        if let Err(reason) = deliver_click(&watcher, &watched, click, permit, deadline).await {
            watcher.metrics.clicks_dropped(reason, 1);
        }
    }
}

/// Waits for the actor's start and, if it started, for its end. False if it did not start.
async fn run(watcher: &Shared, code: &ShortCode, started: Started) -> bool {
    match started.await {
        Ok(Ok(running)) => {
            watcher.directory.record_start(code, true);
            if running.await.is_err() {
                warn!(code = %code, "link actor task failed");
            }
            true
        }
        Ok(Err(e)) => {
            error!(code = %code, cause = %e, "link actor failed to start");
            false
        }
        Err(e) => {
            error!(code = %code, cause = %e, "link actor task failed");
            false
        }
    }
}
