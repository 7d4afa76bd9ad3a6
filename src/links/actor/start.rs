//! How an actor starts: once its predecessor's clicks are committed, it reads the link, the
//! count and the aggregates from the store (folding in the clicks the stored snapshot of the
//! aggregates lacks), and builds its state from them.

use std::{
    collections::VecDeque,
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64},
    },
    time::{Duration, Instant},
};

use ractor::{ActorProcessingErr, ActorRef};

use super::{CommitWatch, LinkArgs, LinkMsg, LinkState, STATS_INTERVAL, follow};
use crate::{
    analytics::{AggregateSettings, Aggregates, VisitorKey},
    domain::Link,
    links::{Shared, subscribers::Subscribers},
    store::{Counter, SharedStore, StoreError},
};

/// What the store holds of a code when its actor starts.
struct Stored {
    link: Link,
    counter: Counter,
    /// The aggregates of clicks 1..=`counter.count`.
    aggregates: Aggregates,
    /// The last click the stored aggregates snapshot covered.
    stored_covers: u64,
}

impl LinkState {
    /// The actor's `pre_start`: reads the stored state and arms the first timer.
    pub(super) async fn start(
        myself: &ActorRef<LinkMsg>,
        args: LinkArgs,
    ) -> Result<Self, ActorProcessingErr> {
        let LinkArgs {
            code,
            link,
            shared,
            inbox,
        } = args;
        shared.check_start_fault(&code)?;
        // A predecessor of this code may have clicks still queued for the writer; wait until
        // they are committed so the count read below includes them.
        shared.writer.barrier().await?;
        let (store, key, visitors, settings) = (
            shared.store.clone(),
            code.clone(),
            shared.visitor_key.clone(),
            shared.settings.aggregates.clone(),
        );
        let Stored {
            link: stored,
            counter,
            aggregates,
            stored_covers,
        } = tokio::task::spawn_blocking(move || {
            read_stored(&store, key.as_str(), &visitors, &settings)
        })
        .await??
        .ok_or("the link was deleted")?;
        let link = newest_link(&shared, link, stored);
        shared.metrics.actor_started();
        let args = LinkArgs {
            code,
            link,
            shared,
            inbox,
        };
        let mut state = Self::new(myself, args, counter, aggregates, stored_covers);
        let first = state.next_tick();
        state.arm(myself, first);
        Ok(state)
    }

    /// The state of an actor that has read its count and aggregates.
    fn new(
        myself: &ActorRef<LinkMsg>,
        args: LinkArgs,
        counter: Counter,
        aggregates: Aggregates,
        stored_covers: u64,
    ) -> Self {
        let LinkArgs {
            code,
            link,
            shared,
            inbox,
        } = args;
        let now = Instant::now();
        let watch = Arc::new(CommitWatch {
            committed: AtomicU64::new(counter.count),
            wanted: AtomicBool::new(false),
            actor: myself.clone(),
        });
        Self {
            code,
            link,
            deleted: false,
            stale: false,
            following: None,
            remote: follow::Remote::default(),
            inbox,
            watch,
            count: counter.count,
            committed: counter.count,
            last: counter.last.map(Arc::new),
            uncommitted: VecDeque::new(),
            aggregates,
            stored_covers,
            // What was folded in again is stored at the next chance.
            stored_at: now
                .checked_sub(shared.settings.aggregates.snapshot_gap)
                .unwrap_or(now),
            stats_changed: false,
            stats_bytes: None,
            stats_minute: 0,
            stats_sent: now.checked_sub(STATS_INTERVAL).unwrap_or(now),
            progressed: false,
            frame: None,
            subscribers: Subscribers::default(),
            waiters: Vec::new(),
            last_activity: now,
            last_heartbeat: now,
            last_broadcast: now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
            flush_pending: false,
            draining: false,
            timer: 0,
            timer_due: now,
            shared,
        }
    }
}

/// Reads what the store holds of `code` (blocking): its link, its count, and the aggregates
/// of every click counted. `None`: the link is gone.
fn read_stored(
    store: &SharedStore,
    code: &str,
    visitors: &VisitorKey,
    settings: &AggregateSettings,
) -> Result<Option<Stored>, StoreError> {
    // A click that found the link just before its deletion must not start an actor
    // that would store it for a deleted code.
    let Some(link) = store.link(code)? else {
        return Ok(None);
    };
    let counter = store.counter(code)?;
    let mut aggregates = load_aggregates(store, code, counter.count)?;
    let stored_covers = aggregates.covers();
    fold_missing(
        store,
        code,
        counter.count,
        &mut aggregates,
        visitors,
        settings,
    )?;
    if aggregates.covers() != counter.count {
        return Err(StoreError::Inconsistent(format!(
            "code {code}: the aggregates cover {} of {} clicks",
            aggregates.covers(),
            counter.count
        )));
    }
    Ok(Some(Stored {
        link,
        counter,
        aggregates,
        stored_covers,
    }))
}

/// The stored aggregates snapshot, unless it is ahead of the click log (`count`): then, as
/// when there is none, empty aggregates, rebuilt from the log.
fn load_aggregates(store: &SharedStore, code: &str, count: u64) -> Result<Aggregates, StoreError> {
    if count == 0 {
        // Nothing to read: the first click of a code (the long tail) costs one read less.
        return Ok(Aggregates::default());
    }
    Ok(match store.aggregates(code)? {
        Some(stored) if stored.covers() <= count => stored,
        Some(stored) => {
            tracing::warn!(
                code,
                covers = stored.covers(),
                count,
                "aggregates ahead of the click log; rebuilding them"
            );
            Aggregates::default()
        }
        None => Aggregates::default(),
    })
}

/// Folds the stored clicks after those the aggregates cover into them, up to `count`.
fn fold_missing(
    store: &SharedStore,
    code: &str,
    count: u64,
    aggregates: &mut Aggregates,
    visitors: &VisitorKey,
    settings: &AggregateSettings,
) -> Result<(), StoreError> {
    // Up to the count read above: on a cluster store, other nodes may store more
    // meanwhile (this actor learns of them as it goes).
    let mut folded = Ok(());
    store.walk_clicks(code, aggregates.covers(), &mut |event| {
        if event.seq > count {
            return ControlFlow::Break(());
        }
        if event.seq > aggregates.covers() + 1 {
            // The clicks before expired (`--click-retention-days`) and no snapshot
            // covering them could be read: counting goes on, they stay missing.
            tracing::error!(
                code,
                missing = event.seq - 1 - aggregates.covers(),
                "the aggregates lack expired clicks their lost snapshot covered"
            );
            aggregates.skip_to(event.seq);
        }
        folded = aggregates
            .fold(&event, visitors, settings)
            .map_err(|e| StoreError::Inconsistent(format!("code {code}: {e}")));
        if folded.is_err() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    folded
}

/// The link the actor goes by: the one it was started with, or the stored copy if that is
/// newer (which then goes into the directory's entry too).
fn newest_link(shared: &Shared, link: Arc<Link>, stored: Link) -> Arc<Link> {
    if stored.rev > link.rev {
        // The entry was made with an older copy (the cache had let the newer one go).
        let stored = Arc::new(stored);
        shared.directory.replace_link(&stored);
        stored
    } else {
        link
    }
}
