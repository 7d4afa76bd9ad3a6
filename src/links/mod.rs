//! Links and their actors. [`Links`] is the handle the HTTP layer uses: it finds links (an
//! in-memory cache in front of fjall), sends clicks, subscribes viewers and stops everything at
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
mod click;
mod directory;
mod doorkeeper;
pub mod frame;
mod inbox;
mod subscribers;

use std::{sync::Arc, time::Duration};

use quick_cache::sync::Cache;
use ractor::concurrency::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::warn;

use actor::{LinkMsg, StatsAsk};
pub use actor::{Snapshot, SubscribeError, Subscription};
pub use click::Click;
use directory::{Directory, Pushed};

use crate::{
    analytics::AgentParser,
    analytics::{AggregateSettings, QueryError, StatsAnswer, StatsQuery, VisitorKey},
    domain::{Link, ShortCode},
    metrics::{DropReason, Metrics},
    store::{Backlog, LinkChange, SharedStore, StoreError, WriteError, WriterHandle},
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

/// Hands the link changes made on other nodes to [`Links::remote_changes`]'s task.
struct RemoteChanges(tokio::sync::mpsc::UnboundedSender<(ShortCode, Option<Arc<Link>>)>);

impl crate::store::ChangeListener for RemoteChanges {
    fn link_changed(&self, code: &ShortCode, link: Option<Arc<Link>>) {
        let _ = self.0.send((code.clone(), link));
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
        Self {
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
            }),
            inflight: TaskTracker::new(),
            changes: Arc::default(),
        }
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
            Ok(cached) => return Ok(cached),
            Err(guard) => guard,
        };
        // Read in place: a point read is served from fjall's block cache or the OS page cache
        // in microseconds, less than a hand-off to the blocking pool costs (measured on the
        // long tail of codes clicked once each: the hand-off was a tenth of the server's CPU).
        let found = self.shared.store.link(code.as_str())?.map(Arc::new);
        let _ = guard.insert(found.clone());
        Ok(found)
    }

    /// Stores a new link. `Ok(false)`: the code is taken.
    pub async fn create(&self, link: Link) -> Result<bool, LinkError> {
        let code = link.code.clone();
        let stored = Arc::new(link.clone());
        let deadline = Instant::now() + CALL_TIMEOUT;
        let created = tokio::time::timeout_at(deadline, self.shared.writer.create_link(link))
            .await
            .map_err(|_| LinkError::Timeout)??;
        if created {
            self.shared.directory.unmark_gone(&code);
            self.shared.cache.insert(code, Some(stored));
        }
        Ok(created)
    }

    /// Changes a link: the store applies `change` to its stored record (so changes never
    /// race), then every copy in memory (the cache, the live entry, the actor) takes the new
    /// one before this returns. `None`: no such link; `Some(Err)`: the change was refused.
    pub async fn update(
        &self,
        code: &ShortCode,
        change: LinkChange,
    ) -> Result<Option<Result<Arc<Link>, String>>, LinkError> {
        let order = self.changes.clone().lock_owned().await;
        let deadline = Instant::now() + CALL_TIMEOUT;
        let (links, code) = (self.clone(), code.clone());
        // The store's answer is applied even if the caller stops waiting (a slow disk), so the
        // copies in memory never lag behind the store.
        let applied = tokio::spawn(async move {
            let _order = order;
            let updated = links.shared.writer.update_link(code, change).await?;
            Ok::<_, LinkError>(match updated {
                Some(Ok(link)) => {
                    let link = Arc::new(link);
                    links.apply(&link).await;
                    Some(Ok(link))
                }
                Some(Err(refused)) => Some(Err(refused)),
                None => None,
            })
        });
        match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(LinkError::ShuttingDown),
            Err(_) => Err(LinkError::Timeout),
        }
    }

    /// Follows the changes other nodes make to links (the store tells of them), applying them
    /// one at a time, in the order they were stored.
    pub fn remote_changes(&self) -> std::sync::Arc<dyn crate::store::ChangeListener> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(ShortCode, Option<Arc<Link>>)>();
        let links = self.clone();
        tokio::spawn(async move {
            while let Some((code, link)) = rx.recv().await {
                match link {
                    Some(link) => {
                        links.shared.directory.unmark_gone(&code);
                        let _order = links.changes.lock().await;
                        links.apply(&link).await;
                    }
                    None => links.deleted_elsewhere(&code).await,
                }
            }
        });
        std::sync::Arc::new(RemoteChanges(tx))
    }

    /// A link deleted on another node (or here, and already applied): what this node holds
    /// of it goes as in a deletion here, but nothing is sent to the store, which may hold a
    /// new link made on the code since (its change follows this one and shows it again).
    async fn deleted_elsewhere(&self, code: &ShortCode) {
        let _order = self.changes.lock().await;
        self.shared.directory.mark_gone(code);
        self.shared.cache.insert(code.clone(), None);
        let deadline = Instant::now() + CALL_TIMEOUT;
        if let Some(actor) = self.shared.directory.live(code.as_str()) {
            // An actor that is stopping anyway takes no news; it stores nothing more of a
            // deleted link (the writer checks every batch).
            let _ = actor.cast(LinkMsg::DeletedElsewhere);
        }
        if let Some(mut done) = self.shared.directory.current(code.as_str()) {
            let _ = tokio::time::timeout_at(deadline, done.wait_for(|gone| *gone)).await;
        }
        self.shared.cache.insert(code.clone(), None);
    }

    /// Puts a changed link in every copy: the cache, the live entry, and its actor, waiting
    /// (bounded) until the actor has it, so every click it numbers from then on meets the new
    /// limit.
    async fn apply(&self, link: &Arc<Link>) {
        self.shared
            .cache
            .insert(link.code.clone(), Some(link.clone()));
        if let Some(actor) = self.shared.directory.replace_link(link) {
            let (tx, rx) = oneshot();
            // A stopping actor refuses it; its successor reads the store, which has the change.
            if actor
                .cast(LinkMsg::Replace(link.clone(), tx.into()))
                .is_ok()
            {
                let _ = tokio::time::timeout(CALL_TIMEOUT, rx).await;
            }
        }
    }

    /// Deletes a link. From the first step on every path answers as for an unknown code; the
    /// actor sends its subscribers a last `deleted` event, ends their streams and stops; the
    /// store removes the record (and holds the code), then purges the clicks and aggregates.
    /// Returns once the record is removed and the actor has stopped. `false`: no such link.
    pub async fn delete(&self, link: &Arc<Link>) -> Result<bool, LinkError> {
        let _order = self.changes.lock().await;
        let result = self.delete_in_order(link).await;
        match &result {
            // The store refused the deletion (a cluster store that cannot be reached, a failed
            // disk): nothing is queued, so the link is shown again as the store holds it,
            // here as on every other node, and the owner may try again.
            Err(LinkError::Write(_)) => {
                self.shared.directory.unmark_gone(&link.code);
                self.shared.cache.remove(&link.code);
            }
            // Deleted; or still queued behind a slow disk (a timeout), where the owner asked
            // for it and it will be carried out: hidden either way. A read that raced the
            // deletion may have cached the record meanwhile.
            _ => self.shared.cache.insert(link.code.clone(), None),
        }
        result
    }

    async fn delete_in_order(&self, link: &Arc<Link>) -> Result<bool, LinkError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let code = &link.code;
        self.shared.directory.mark_gone(code);
        self.shared.cache.insert(code.clone(), None);
        let mut found = false;
        if self.shared.directory.live(code.as_str()).is_some() {
            // The actor hands the deletion to the writer behind the clicks it numbered.
            match self.ask(link, LinkMsg::Delete, deadline).await {
                Ok(answer) => found = answer?,
                // It was stopping (idle) and let the question go, or ended: the store is asked
                // below.
                Err(LinkError::Timeout | LinkError::Gone) if Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        }
        self.await_stopping(link, deadline).await?;
        if !found {
            found = tokio::time::timeout_at(deadline, self.shared.writer.delete_link(code.clone()))
                .await
                .map_err(|_| LinkError::Timeout)??;
        }
        // The entry goes once the actor has ended and its writes are committed.
        if let Some(mut done) = self.shared.directory.current(code.as_str())
            && tokio::time::timeout_at(deadline, done.wait_for(|gone| *gone))
                .await
                .is_err()
        {
            return Err(LinkError::Timeout);
        }
        Ok(found)
    }

    /// Counts a click. Never waits: when the actor is stopping, a task carries the click to
    /// its successor. Refused (and counted in the metrics) when the store has failed, when the
    /// backlog of uncommitted clicks is full, or while the code's actor cannot start.
    pub fn click(&self, link: &Arc<Link>, click: Click) -> Result<(), DropReason> {
        let shared = &self.shared;
        let refuse = |reason| {
            shared.metrics.clicks_dropped(reason, 1);
            Err(reason)
        };
        if !shared.writer.is_healthy() {
            return refuse(DropReason::StoreFailed);
        }
        let Some(permit) = shared.backlog.admit() else {
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

    /// The current count and latest click: from the actor if it is live, else from the store
    /// (where everything of a stopped actor is committed).
    pub async fn snapshot(&self, link: &Arc<Link>) -> Result<Snapshot, LinkError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        self.refresh_if_stale(link, deadline).await?;
        self.await_stopping(link, deadline).await?;
        if self.shared.directory.live(link.code.as_str()).is_some() {
            match self.ask(link, LinkMsg::Snapshot, deadline).await {
                // The actor stopped (idle) before its clicks were committed and let the
                // question go: once it is gone, the store has them.
                Err(LinkError::Timeout) if Instant::now() < deadline => {
                    self.await_stopping(link, deadline).await?;
                }
                answer => return answer,
            }
        }
        // Clicks of a code with no actor are numbered by the writer: the ones queued before
        // this question are committed once a barrier behind them is.
        // A failed writer commits nothing more: the store has all there will be.
        if self.shared.writer.is_healthy() {
            let barrier = tokio::time::timeout_at(deadline, self.shared.writer.barrier());
            barrier.await.map_err(|_| LinkError::Timeout)?.ok();
        }
        let store = self.shared.store.clone();
        let code = link.code.clone();
        let counter = tokio::task::spawn_blocking(move || store.counter(code.as_str()))
            .await
            .map_err(|_| LinkError::ShuttingDown)??;
        Ok(Snapshot {
            count: counter.count,
            last: counter.last.map(Arc::new),
            subscribers: 0,
        })
    }

    /// The count for a public read (a badge, a stats page): a live actor's committed count,
    /// else the store's, without a writer barrier. Public reads never cut a group commit
    /// short or queue behind a stalled disk; their count may miss the clicks of the last few
    /// milliseconds, which the page's stream brings at once.
    pub async fn public_count(&self, link: &Arc<Link>) -> Result<u64, LinkError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        self.refresh_if_stale(link, deadline).await?;
        if let Some(actor) = self.shared.directory.live(link.code.as_str()) {
            let (tx, rx) = oneshot();
            if actor.cast(LinkMsg::Peek(tx.into())).is_ok()
                && let Ok(Ok(count)) = tokio::time::timeout_at(deadline, rx).await
            {
                return Ok(count);
            }
        }
        let store = self.shared.store.clone();
        let code = link.code.clone();
        let counter = tokio::task::spawn_blocking(move || store.counter(code.as_str()))
            .await
            .map_err(|_| LinkError::ShuttingDown)??;
        Ok(counter.count)
    }

    /// The stats of a window, from the link's actor (started if it is not live), once every
    /// click counted before the question is committed.
    pub async fn stats(
        &self,
        link: &Arc<Link>,
        query: StatsQuery,
    ) -> Result<Result<StatsAnswer, QueryError>, LinkError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        self.refresh_if_stale(link, deadline).await?;
        loop {
            self.await_stopping(link, deadline).await?;
            let ask = |reply| {
                LinkMsg::Stats(Box::new(StatsAsk {
                    query: query.clone(),
                    created_at: link.created_at,
                    reply,
                }))
            };
            match self.ask(link, ask, deadline).await {
                // The actor stopped (idle) and let the question go: ask its successor.
                Err(LinkError::Timeout) if Instant::now() < deadline => {
                    tokio::task::yield_now().await;
                }
                answer => return answer,
            }
        }
    }

    /// On a cluster store: a live actor here that nobody watches does not follow the clicks
    /// other nodes store for its code (and one that is watched follows them a little behind).
    /// Before it answers a read, the code's last stored batch is looked at: numbered elsewhere
    /// and beyond the actor's count, the actor catches up from the store first.
    async fn refresh_if_stale(&self, link: &Arc<Link>, deadline: Instant) -> Result<(), LinkError> {
        let store = &self.shared.store;
        if !store.shared_by_nodes() {
            return Ok(());
        }
        let Some(actor) = self.shared.directory.live(link.code.as_str()) else {
            return Ok(());
        };
        let here = self.ask(link, LinkMsg::Snapshot, deadline).await?;
        let (store, code) = (store.clone(), link.code.clone());
        let elsewhere = tokio::task::spawn_blocking(move || store.counted_elsewhere(code.as_str()))
            .await
            .map_err(|_| LinkError::ShuttingDown)??;
        if elsewhere.is_some_and(|count| count > here.count) {
            // It reads what it lacks from the store and takes it in, keeping its viewers; an
            // actor with clicks of its own in flight is superseded instead (no answer), and
            // the read waits for it to end.
            if self.ask(link, LinkMsg::CatchUp, deadline).await.is_ok() {
                return Ok(());
            }
            let id = actor.get_id();
            // Until it has taken the news (its entry then drains), then until it has ended.
            while self
                .shared
                .directory
                .live(link.code.as_str())
                .is_some_and(|live| live.get_id() == id)
            {
                if Instant::now() >= deadline {
                    return Err(LinkError::Timeout);
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            self.await_stopping(link, deadline).await?;
        }
        Ok(())
    }

    /// Waits until every click this link's actor has taken so far is committed, so a read of
    /// the store sees all clicks counted before the call.
    pub async fn settle(&self, link: &Arc<Link>) -> Result<(), LinkError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        self.await_stopping(link, deadline).await?;
        if self.shared.directory.live(link.code.as_str()).is_some() {
            // The actor answers once everything counted before the question is committed.
            self.ask(link, LinkMsg::Snapshot, deadline).await?;
        }
        match tokio::time::timeout_at(deadline, self.shared.writer.barrier()).await {
            Ok(done) => Ok(done?),
            Err(_) => Err(LinkError::Timeout),
        }
    }

    /// Makes the link's actor fail as a bug in it would (fault-injection tests): it dies, and the
    /// next message for the code starts a successor from the stored state.
    #[doc(hidden)]
    pub async fn inject_failure(&self, link: &Arc<Link>) -> Result<(), LinkError> {
        self.deliver(link, LinkMsg::Fail, Instant::now() + CALL_TIMEOUT)
            .await
    }

    /// Makes every start of `code`'s actor fail (`fail`), as a failing store read would, or
    /// lets them succeed again (fault-injection tests).
    #[doc(hidden)]
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
