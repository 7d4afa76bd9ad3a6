//! Links and their actors. [`Links`] is the handle the HTTP layer uses: it finds links (an
//! in-memory cache in front of the store), sends clicks, subscribes viewers and stops everything at
//! shutdown. It never exposes actor references or reply ports.
//!
//! A click: `Links::click` takes a place for it in the backlog (or refuses it), queues it for
//! the code's actor (started on demand by the [`directory`]); the actor numbers it and hands it
//! to the store's writer; once the writer reports it committed, one frame goes to all
//! subscribers.
//!
//! Every wait on an actor (delivering a message, a subscription, waiting out a stopping
//! predecessor) runs under one deadline per request, [`CALL_TIMEOUT`].

mod actor;
mod changes;
mod click;
mod directory;
mod doorkeeper;
pub mod frame;
mod inbox;
mod reads;
mod subscribers;

use std::{sync::Arc, time::Duration};

use quick_cache::sync::Cache;
use ractor::concurrency::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::warn;

use actor::LinkMsg;
pub use actor::{Snapshot, SubscribeError, Subscription};
pub use click::Click;
use directory::{Directory, Pushed};

use crate::{
    analytics::AgentParser,
    analytics::{AggregateSettings, VisitorKey},
    domain::{Link, ShortCode},
    metrics::{DropReason, Metrics},
    store::{Backlog, SharedStore, StoreError, WriteError, WriterHandle},
};

/// How link actors behave; taken from the configuration.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// An actor with no clicks and no subscribers for this long is stopped.
    pub idle_timeout: Duration,
    /// How often an actor checks heartbeats, slow subscribers and idleness.
    pub tick: Duration,
    pub heartbeat: Duration,
    /// Frames a subscriber's queue holds before it counts as behind.
    pub queue_frames: usize,
    /// A subscriber behind for this long is disconnected.
    pub stuck_timeout: Duration,
    pub max_subscribers_per_link: usize,
    /// At most one frame per this interval and link; clicks in between are conflated.
    pub min_frame_interval: Duration,
    /// Frame deliveries per second one link may cause; spaces frames on links with many
    /// subscribers.
    pub deliveries_per_sec: u64,
    /// Link records kept in memory for links without a live actor.
    pub cache_capacity: usize,
    /// Live actors past which idle ones are stopped, least recently used first
    /// (`--actor-memory` / [`ACTOR_BYTES`]).
    pub max_actors: usize,
    /// Bucket retention and top-list caps of the aggregates.
    pub aggregates: AggregateSettings,
}

/// What every actor shares.
pub(crate) struct Shared {
    pub store: SharedStore,
    pub writer: WriterHandle,
    pub settings: LinkSettings,
    pub agents: AgentParser,
    /// The store's visitor-hash secret (unique visitors).
    pub visitor_key: VisitorKey,
    pub directory: Directory,
    /// Link records, also for codes that do not exist (`None`), so unknown codes do not reach
    /// the disk each time.
    pub cache: Cache<ShortCode, Option<Arc<Link>>>,
    pub metrics: Arc<Metrics>,
    /// The tasks that wait for actors to end.
    pub tracker: TaskTracker,
    /// Clicks taken and not yet committed, bounded.
    pub backlog: Arc<Backlog>,
    /// Codes whose actors fail to start (fault injection in tests).
    start_faults: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Subscriber ids, unique across actors: a stream outliving its actor must not unsubscribe
    /// a viewer of the successor.
    pub next_subscriber: std::sync::atomic::AtomicU64,
    /// The workspaces' boards of live counts (`/api/events`).
    pub counts: Arc<crate::events::Counts>,
}

/// Why a link operation failed (server side).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("the link's actor did not answer in time")]
    Timeout,
    #[error("the link's actor cannot start now; it is tried again later")]
    Unavailable,
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("the link was deleted")]
    Gone,
}

/// What a live actor that has counted a few clicks holds, about: its task, mailbox, inbox,
/// directory entry, link and aggregates. Measured: 4,000 such actors (10 clicks each) added
/// 110 MiB of resident memory.
pub const ACTOR_BYTES: u64 = 28 * 1024;

/// The one deadline over everything a request waits for from an actor.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Shared {
    /// Fails an actor's start as a failing disk would, for the codes a test chose.
    fn check_start_fault(&self, code: &ShortCode) -> Result<(), String> {
        match self.start_faults.lock() {
            Ok(faults) if faults.contains(code.as_str()) => {
                Err(format!("injected start failure for {code}"))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Clone)]
pub struct Links {
    shared: Arc<Shared>,
    /// Clicks whose actor was stopping when they came, on their way to its successor.
    inflight: TaskTracker,
    /// Held by each change or deletion of a link, from the store's answer until every copy in
    /// memory has it: two changes never apply out of order.
    changes: Arc<tokio::sync::Mutex<()>>,
}

impl Links {
    pub fn new(
        store: SharedStore,
        writer: WriterHandle,
        settings: LinkSettings,
        metrics: Arc<Metrics>,
        backlog: Arc<Backlog>,
    ) -> Self {
        let cache = Cache::new(settings.cache_capacity.max(16));
        let max_actors = settings.max_actors;
        let links = Self {
            shared: Arc::new(Shared {
                visitor_key: store.visitor_key(),
                store,
                writer,
                settings,
                agents: AgentParser::new(),
                directory: Directory::new(max_actors),
                cache,
                metrics,
                tracker: TaskTracker::new(),
                backlog,
                start_faults: std::sync::Mutex::default(),
                next_subscriber: std::sync::atomic::AtomicU64::new(1),
                counts: Arc::default(),
            }),
            inflight: TaskTracker::new(),
            changes: Arc::default(),
        };
        // Every commit moves the count on the boards of the workspaces being watched. The
        // link is at hand: its actor's, or the cache's (a redirect just read it).
        let shared = Arc::downgrade(&links.shared);
        links
            .shared
            .writer
            .on_commits(Arc::new(move |code: &ShortCode, last: u64| {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if !shared.counts.active() {
                    return;
                }
                let link = shared
                    .directory
                    .link(code.as_str())
                    .or_else(|| shared.cache.get(code).flatten());
                if let Some(link) = link {
                    shared
                        .counts
                        .committed(&link.workspace, code.as_str(), last, &link.owner);
                }
            }));
        links
    }

    /// The workspaces' boards of live counts, which every commit of a link updates.
    pub fn counts(&self) -> &Arc<crate::events::Counts> {
        &self.shared.counts
    }

    /// The link of a live actor, by the code as the request wrote it: the redirect's first
    /// look, before the code is parsed (an entry exists only for a valid code, so a hit needs
    /// no parse).
    pub fn find_live(&self, code: &str) -> Option<Arc<Link>> {
        self.shared.directory.link(code)
    }

    /// Finds a link: a live actor's copy, the cache, or the store.
    pub async fn find(&self, code: &ShortCode) -> Result<Option<Arc<Link>>, LinkError> {
        if let Some(link) = self.shared.directory.link(code.as_str()) {
            return Ok(Some(link));
        }
        // A placeholder guards the read: if a create stores the link meanwhile, its insert
        // replaces the placeholder and this (older) answer is dropped instead of caching
        // "no such link" over the new link.
        let guard = match self.shared.cache.get_value_or_guard_async(code).await {
            Ok(cached) => {
                self.shared.metrics.link_cache(true);
                return Ok(cached);
            }
            Err(guard) => guard,
        };
        self.shared.metrics.link_cache(false);
        // fjall answers in place, from memory (a block cache or the OS page cache), in
        // microseconds: less than a hand-off to the blocking pool costs (measured on the long
        // tail of codes clicked once each, the hand-off was a tenth of the server's CPU). A
        // cluster store reads the bucket without holding this thread.
        let found = self.shared.store.find_link(code.as_str()).await?;
        let _ = guard.insert(found.clone());
        Ok(found)
    }

    /// Counts a click. Waits only for a place in a full backlog that is draining (see
    /// [`Backlog::admit_waiting`]); when the actor is stopping, a task carries the click to
    /// its successor. Refused (and counted in the metrics) when the store has failed, when the
    /// backlog of uncommitted clicks stays full, or while the code's actor cannot start.
    pub async fn click(&self, link: &Arc<Link>, click: Click) -> Result<(), DropReason> {
        let shared = &self.shared;
        let refuse = |reason| {
            shared.metrics.clicks_dropped(reason, 1);
            Err(reason)
        };
        if !shared.writer.is_healthy() {
            return refuse(DropReason::StoreFailed);
        }
        let Some(permit) = shared.backlog.admit_waiting().await else {
            return refuse(DropReason::Backlog);
        };
        let (click, permit) = match shared.directory.push_click(shared, link, click, permit) {
            Pushed::Queued => {
                shared.metrics.click();
                return Ok(());
            }
            Pushed::Refused(reason) => return refuse(reason),
            Pushed::Later(click, permit) => (click, permit),
        };
        shared.metrics.click();
        let shared = shared.clone();
        let link = link.clone();
        let deadline = Instant::now() + CALL_TIMEOUT;
        self.inflight.spawn(async move {
            if let Err(reason) =
                directory::deliver_click(&shared, &link, click, permit, deadline).await
            {
                warn!(code = %link.code, reason = reason.as_str(), "click dropped");
                shared.metrics.clicks_dropped(reason, 1);
            }
        });
        Ok(())
    }

    async fn deliver(
        &self,
        link: &Arc<Link>,
        msg: LinkMsg,
        deadline: Instant,
    ) -> Result<(), LinkError> {
        directory::deliver(&self.shared, link, msg, deadline).await
    }

    /// Asks the code's actor something and waits for the answer until `deadline`.
    async fn ask<T: Send + 'static>(
        &self,
        link: &Arc<Link>,
        make: impl FnOnce(ractor::RpcReplyPort<T>) -> LinkMsg,
        deadline: Instant,
    ) -> Result<T, LinkError> {
        let (tx, rx) = oneshot();
        self.deliver(link, make(tx.into()), deadline).await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            // The actor stopped (dropping the port) or took too long; either way no answer.
            Ok(Err(_)) | Err(_) => Err(LinkError::Timeout),
        }
    }

    /// Subscribes to the live state of a link.
    pub async fn subscribe(
        &self,
        link: &Arc<Link>,
        last_event_id: Option<u64>,
    ) -> Result<Result<Subscription, SubscribeError>, LinkError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let answer = self
                .ask(
                    link,
                    |reply| LinkMsg::Subscribe {
                        last_event_id,
                        reply,
                    },
                    deadline,
                )
                .await?;
            match answer {
                Err(SubscribeError::Stopping) => {
                    if Instant::now() >= deadline {
                        return Err(LinkError::Timeout);
                    }
                    tokio::task::yield_now().await;
                }
                other => return Ok(other),
            }
        }
    }

    /// Tells the actor a subscriber has gone (its stream was dropped).
    pub fn unsubscribe(&self, code: &ShortCode, id: u64) {
        if let Some(actor) = self.shared.directory.live(code.as_str()) {
            // If the actor has stopped meanwhile, the subscriber went with it.
            let _ = actor.cast(LinkMsg::Unsubscribe(id));
        }
    }

    /// Makes the link's actor fail as a bug in it would (fault-injection tests): it dies, and the
    /// next message for the code starts a successor from the stored state.
    #[cfg(feature = "test-hooks")]
    pub async fn inject_failure(&self, link: &Arc<Link>) -> Result<(), LinkError> {
        self.deliver(link, LinkMsg::Fail, Instant::now() + CALL_TIMEOUT)
            .await
    }

    /// Makes every start of `code`'s actor fail (`fail`), as a failing store read would, or
    /// lets them succeed again (fault-injection tests).
    #[cfg(feature = "test-hooks")]
    pub fn inject_start_failures(&self, code: &str, fail: bool) {
        if let Ok(mut faults) = self.shared.start_faults.lock() {
            if fail {
                faults.insert(code.to_owned());
            } else {
                faults.remove(code);
            }
        }
    }

    /// Waits for the code's actor to finish stopping, if it is stopping: until then the store
    /// may lack clicks it still holds.
    async fn await_stopping(&self, link: &Arc<Link>, deadline: Instant) -> Result<(), LinkError> {
        if let Some(mut done) = self.shared.directory.stopping(link.code.as_str())
            && tokio::time::timeout_at(deadline, done.wait_for(|gone| *gone))
                .await
                .is_err()
        {
            return Err(LinkError::Timeout);
        }
        Ok(())
    }

    /// Clicks taken and not yet committed, and their bound.
    pub fn backlog(&self) -> &Backlog {
        &self.shared.backlog
    }

    /// Live actors now.
    pub fn active_actors(&self) -> usize {
        self.shared.directory.len()
    }

    /// The browser, system and device class of a user agent (cached per agent).
    pub fn classify(&self, user_agent: &str) -> crate::analytics::Agent {
        self.shared.agents.classify(user_agent)
    }

    pub fn store(&self) -> &SharedStore {
        &self.shared.store
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.shared.writer
    }

    /// Stops every actor after it has handled what is in its mailbox, and waits until all
    /// they wrote is committed. Call after the HTTP server has stopped taking requests.
    pub async fn shutdown(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        // Stopping an actor can hand clicks to a successor (clicks that came while it
        // stopped), so repeat until no actor, watcher or click in flight is left.
        // Read in causal order: a click in flight can start an actor (an entry and its watcher),
        // and a watcher's end follows its entry's removal.
        while !(self.inflight.is_empty() && self.shared.directory.is_idle(&self.shared)) {
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    actors = self.shared.directory.len(),
                    "link actors still running at the end of the shutdown timeout"
                );
                break;
            }
            let actors = self.shared.directory.actors();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let drains = actors.iter().map(|actor| actor.drain_and_wait(Some(left)));
            for result in futures_util::future::join_all(drains).await {
                if let Err(e) = result {
                    warn!(cause = %e, "a link actor did not drain in time");
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.shared.directory.close();
        self.inflight.close();
        self.shared.tracker.close();
    }
}
