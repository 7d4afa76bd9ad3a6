//! The actor of one short code. It is the only writer of the code's count and click log and
//! owns the list of live subscribers, so clicks never race and a frame is encoded once per
//! change. It never awaits a socket or the disk while handling a message: clicks go to the
//! writer's queue, frames into each subscriber's bounded queue with `try_send`.
//!
//! Two counts: `count`, the clicks it has numbered, and `committed`, the highest of them the
//! store holds (fsynced, in strict durability), which the writer reports through the code's
//! [`CommitWatch`]. Frames and answers carry only the committed state, so no viewer ever sees a
//! count that a crash takes back, and an id is never shown for two different clicks.
//!
//! The actor also keeps the link's [`Aggregates`], folding each click in once it is committed,
//! so they describe exactly the clicks the store holds. It stores a snapshot of them now and
//! then (and when it stops); its successor loads that and folds in the clicks after it.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tracing::debug;

use super::{Shared, frame, inbox::Inbox, subscribers::Subscribers};

mod follow;
use crate::{
    analytics::{
        Aggregates, QueryError, StatsAnswer, StatsQuery, aggregates::encode_snapshot, query,
    },
    domain::{ClickEvent, Link, ShortCode, now_ms},
    store::{ClickBatch, CommitListener, StoreError, WriteError},
};

/// At most one `stats` event per link in this interval.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// A new subscriber's end: its first frame (if any) and its queue.
#[derive(Debug)]
pub struct Subscription {
    pub id: u64,
    pub initial: Option<Bytes>,
    pub frames: mpsc::Receiver<Bytes>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("this link has the maximum number of live subscribers")]
    LinkFull,
    /// The actor is stopping; the caller retries on its successor.
    #[error("the link's actor is stopping")]
    Stopping,
}

/// A code's committed state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub count: u64,
    pub last: Option<Arc<ClickEvent>>,
    pub subscribers: usize,
}

pub enum LinkMsg {
    /// Take the clicks waiting in the inbox.
    Collect,
    /// The writer has committed more of this code's clicks.
    Committed,
    Subscribe {
        last_event_id: Option<u64>,
        reply: RpcReplyPort<Result<Subscription, SubscribeError>>,
    },
    Unsubscribe(u64),
    /// The committed state, answered once every click counted before the question is
    /// committed (a read right after a redirect sees its click).
    Snapshot(RpcReplyPort<Snapshot>),
    /// The committed count as it is now, answered at once (public reads).
    Peek(RpcReplyPort<u64>),
    /// The stats of a window, answered once every click counted before the question is
    /// committed.
    Stats(Box<StatsAsk>),
    /// Send the current state to the subscribers (scheduled after a change).
    Flush,
    /// The link changed (a newer copy; an older one is ignored). Answered once taken.
    Replace(Arc<Link>, RpcReplyPort<()>),
    /// Delete the link: refuse clicks from now on, queue the deletion behind the clicks
    /// already numbered, send subscribers a last `deleted` event, end their streams and stop.
    /// Answered with the store's answer (`false`: no such link).
    Delete(RpcReplyPort<Result<bool, WriteError>>),
    /// Another node deleted the link: as `Delete`, with nothing sent to the store.
    DeletedElsewhere,
    /// Fault injection (tests): the handler fails as a bug would, and the actor dies.
    Fail,
    /// Timer: heartbeats, catching up or dropping slow subscribers, idleness. Carries the
    /// generation of the timer that sent it; only the latest timer counts.
    Tick(u64),
    /// The live actors are past their memory budget and this one was the least recently used:
    /// stop now if idle (no subscribers, no waiting questions).
    Passivate,
    /// Another node stored clicks of this code while this actor numbered them (the cluster
    /// store only): its count is stale. It stops at once, storing nothing more of its own; its
    /// successor reads the count from the store, and its subscribers come back to it.
    Superseded,
    /// Clicks of this code another node stored (followed while anyone watches).
    Remote(Vec<ClickEvent>),
    /// Read the clicks other nodes stored after this actor's count from the store and take
    /// them in (a read found the count behind the store's); answered once taken. An actor
    /// with clicks of its own in flight cannot tell where they go: it is superseded instead
    /// (the port is dropped).
    CatchUp(RpcReplyPort<()>),
    /// The clicks a catch-up read from the store, in order.
    CaughtUp(Result<Vec<ClickEvent>, String>),
}

/// What the writer reports a code's commits to. It always records the number; it wakes the
/// actor only while someone waits for it (subscribers or a snapshot), so codes nobody watches
/// cost no message per commit.
pub(super) struct CommitWatch {
    committed: AtomicU64,
    wanted: AtomicBool,
    actor: ActorRef<LinkMsg>,
}

impl CommitListener for CommitWatch {
    fn committed(&self, seq: u64) {
        // SeqCst on both sides: either the actor, setting `wanted` and then reading
        // `committed`, sees this number, or this load sees `wanted` set.
        self.committed.fetch_max(seq, SeqCst);
        if self.wanted.load(SeqCst) {
            // An actor that has stopped needs no news.
            let _ = self.actor.cast(LinkMsg::Committed);
        }
    }

    fn superseded(&self) {
        let _ = self.actor.cast(LinkMsg::Superseded);
    }
}

/// A stats question: the window, the link's creation time (where its life begins) and where
/// to answer.
pub struct StatsAsk {
    pub query: StatsQuery,
    pub created_at: i64,
    pub reply: RpcReplyPort<Result<StatsAnswer, QueryError>>,
}

/// A question waiting for the commit of the clicks counted before it.
enum Waiter {
    Snapshot(RpcReplyPort<Snapshot>),
    Stats(Box<StatsAsk>),
}

impl Waiter {
    fn is_closed(&self) -> bool {
        match self {
            Self::Snapshot(reply) => reply.is_closed(),
            Self::Stats(ask) => ask.reply.is_closed(),
        }
    }
}

pub struct LinkActor;

pub struct LinkArgs {
    pub code: ShortCode,
    /// The link as its first message saw it; a newer stored copy wins.
    pub link: Arc<Link>,
    pub shared: Arc<Shared>,
    pub inbox: Arc<Inbox>,
}

pub struct LinkState {
    code: ShortCode,
    /// The newest copy of the link: its visit limit and whether its stats are public.
    link: Arc<Link>,
    /// Set by a deletion: clicks are refused, nothing more is stored.
    deleted: bool,
    /// Set when another node numbered clicks of this code meanwhile: nothing more of this
    /// actor's state is stored or shown.
    stale: bool,
    /// Following the clicks other nodes store for this code (a cluster store, while anyone
    /// watches), and catching up with them (see the `follow` module).
    following: Option<tokio::task::AbortHandle>,
    remote: follow::Remote,
    shared: Arc<Shared>,
    inbox: Arc<Inbox>,
    watch: Arc<CommitWatch>,
    /// Clicks numbered so far.
    count: u64,
    /// The highest click number the store holds.
    committed: u64,
    /// The click numbered `committed`.
    last: Option<Arc<ClickEvent>>,
    /// The clicks handed to the writer and not yet reported committed, in order: each is
    /// folded into the aggregates once it is.
    uncommitted: VecDeque<Arc<ClickEvent>>,
    /// The aggregates of clicks 1..=`committed`.
    aggregates: Aggregates,
    /// The last click the stored aggregates snapshot covers, and when it was stored.
    stored_covers: u64,
    stored_at: Instant,
    /// The aggregates moved since the last `stats` event; when that was sent; the encoded
    /// event of the aggregates as they are.
    stats_changed: bool,
    stats_bytes: Option<Bytes>,
    stats_minute: i64,
    stats_sent: Instant,
    /// The committed state moved since frames and waiting questions were last seen to.
    progressed: bool,
    /// The encoded frame of the committed state, built when first needed.
    frame: Option<Bytes>,
    subscribers: Subscribers,
    /// Questions waiting for the commit of the clicks counted before them.
    waiters: Vec<(u64, Waiter)>,
    last_activity: Instant,
    last_heartbeat: Instant,
    last_broadcast: Instant,
    flush_pending: bool,
    draining: bool,
    /// Generation and due time of the one live timer.
    timer: u64,
    timer_due: Instant,
}

impl LinkState {
    fn count_clicks(&mut self) {
        let (clicks, permit) = self.inbox.take();
        if clicks.is_empty() {
            return;
        }
        // Lets go of what is committed meanwhile, also on a busy link nobody watches.
        self.sync_committed();
        self.last_activity = Instant::now();
        let mut events = Vec::with_capacity(clicks.len());
        let mut acks = Vec::new();
        for mut click in clicks {
            // The visit limit is checked here, where clicks are numbered one at a time: never
            // one more than the limit, however many race for the last place. Only a click that
            // asked is refused: one without (its redirect found the link before a limit was
            // set, and was answered) is counted.
            let mut refused = self.deleted;
            if let Some(admit) = click.admit.take() {
                refused |= self.link.max_visits.is_some_and(|max| self.count >= max);
                // A redirect that stopped waiting answered no one: its click takes no place.
                if admit.send(!refused).is_err() {
                    refused = true;
                }
            }
            if refused {
                continue;
            }
            self.count += 1;
            let (event, ack) = click.into_event(self.count, &self.shared.agents);
            events.push(Arc::new(event));
            acks.extend(ack);
        }
        if events.is_empty() {
            return;
        }
        self.uncommitted.extend(events.iter().cloned());
        self.shared.writer.clicks(ClickBatch {
            code: self.code.clone(),
            events,
            acks,
            listener: Some(self.watch.clone()),
            permit,
        });
    }

    /// Takes in what the writer has committed since last looked. True if the state moved.
    fn sync_committed(&mut self) -> bool {
        let committed = self.watch.committed.load(SeqCst);
        if committed <= self.committed || self.stale {
            return false;
        }
        while self
            .uncommitted
            .front()
            .is_some_and(|event| event.seq <= committed)
        {
            let Some(event) = self.uncommitted.pop_front() else {
                break;
            };
            let shared = &self.shared;
            if let Err(e) =
                self.aggregates
                    .fold(&event, &shared.visitor_key, &shared.settings.aggregates)
            {
                // Cannot happen: clicks are numbered here and committed in order.
                tracing::error!(code = %self.code, cause = %e, "aggregates out of step");
            }
            self.last = Some(event);
        }
        self.committed = committed;
        self.frame = None;
        self.progressed = true;
        self.stats_changed = true;
        self.stats_bytes = None;
        self.store_aggregates(false);
        true
    }

    /// Stores a snapshot of the aggregates when enough has changed (`force`: when anything
    /// has). They cover only committed clicks, so the snapshot is never ahead of the log. The
    /// actor only copies them; the encoding (tens of ms for a link with millions of clicks)
    /// runs on the blocking pool, and the writer keeps the snapshot covering the most.
    fn store_aggregates(&mut self, force: bool) {
        let covers = self.aggregates.covers();
        let settings = &self.shared.settings.aggregates;
        let due = covers > self.stored_covers
            && (force
                || (covers - self.stored_covers >= settings.snapshot_clicks
                    && self.stored_at.elapsed() >= settings.snapshot_gap));
        if !due {
            return;
        }
        let (copy, writer, code) = (
            self.aggregates.clone(),
            self.shared.writer.clone(),
            self.code.clone(),
        );
        let encode = move || match encode_snapshot(&copy) {
            Some(bytes) => writer.aggregates(code, covers, bytes),
            None => tracing::error!(code = %code, "aggregates could not be encoded"),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Tracked, so a clean stop waits for the last snapshots.
            self.shared.tracker.spawn_blocking_on(encode, &runtime);
        } else {
            encode();
        }
        self.stored_covers = covers;
        self.stored_at = Instant::now();
    }

    /// Answers a stats question from the aggregates (of committed clicks).
    fn stats(&self, ask: &StatsAsk) -> Result<StatsAnswer, QueryError> {
        query::answer(
            self.code.as_str(),
            &self.aggregates,
            &ask.query,
            &self.shared.settings.aggregates,
            ask.created_at,
            now_ms(),
        )
    }

    /// The `stats` event of the aggregates as they are, built once per change (nothing for a
    /// link whose stats are not public).
    fn stats_event(&mut self) -> Bytes {
        if !self.link.public_stats {
            return Bytes::new();
        }
        let now = now_ms();
        let minute = now.div_euclid(60_000);
        // Its last hour moves on with the clock, even without clicks.
        if self.stats_minute != minute {
            self.stats_bytes = None;
            self.stats_minute = minute;
        }
        let (aggregates, settings) = (&self.aggregates, &self.shared.settings.aggregates);
        self.stats_bytes
            .get_or_insert_with(|| frame::stats_frame(&query::live(aggregates, settings, now)))
            .clone()
    }

    /// The `stats` event for a round of deliveries: what it sends is no longer pending.
    fn stats_round(&mut self) -> Bytes {
        self.stats_changed = false;
        self.stats_sent = Instant::now();
        self.stats_event()
    }

    /// After any message: if the committed state moved (on whatever path it was noticed),
    /// answer the questions it satisfies and schedule a frame.
    fn follow_progress(&mut self, myself: &ActorRef<LinkMsg>) {
        if std::mem::take(&mut self.progressed) {
            self.answer_waiters();
            self.schedule_flush(myself);
        }
    }

    /// Asks the writer to wake this actor on commits while anyone waits for them.
    fn update_wanted(&mut self) {
        self.follow_others();
        let wanted = !self.subscribers.is_empty() || !self.waiters.is_empty();
        self.watch.wanted.store(wanted, SeqCst);
        self.inbox.set_busy(wanted);
        if wanted {
            // A commit reported before `wanted` was set sent no message.
            self.sync_committed();
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            count: self.committed,
            last: self.last.clone(),
            subscribers: self.subscribers.len(),
        }
    }

    /// Answers the snapshot questions whose clicks are committed now (all of them if the store
    /// has failed: their clicks never will be).
    fn answer_waiters(&mut self) {
        let all = !self.shared.writer.is_healthy();
        let committed = self.committed;
        if !self
            .waiters
            .iter()
            .any(|(target, _)| all || *target <= committed)
        {
            return;
        }
        let snapshot = self.snapshot();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(target, _)| all || *target <= committed);
        self.waiters = waiting;
        // A caller that gave up waiting is ignored on purpose.
        for (_, waiter) in ready {
            match waiter {
                Waiter::Snapshot(reply) => {
                    let _ = reply.send(snapshot.clone());
                }
                Waiter::Stats(ask) => {
                    let answer = self.stats(&ask);
                    let _ = ask.reply.send(answer);
                }
            }
        }
        self.update_wanted();
    }

    /// Arms the timer to fire after `delay`; an earlier timer is forgotten.
    fn arm(&mut self, myself: &ActorRef<LinkMsg>, delay: Duration) {
        self.timer += 1;
        let generation = self.timer;
        self.timer_due = Instant::now() + delay;
        myself.send_after(delay, move || LinkMsg::Tick(generation));
    }

    /// When the timer should fire next: often while someone watches or waits, else when the
    /// actor would become idle.
    fn next_tick(&self) -> Duration {
        let settings = &self.shared.settings;
        if self.subscribers.is_empty() && self.waiters.is_empty() {
            (self.last_activity + settings.idle_timeout)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(5))
        } else {
            settings.tick
        }
    }

    fn current_frame(&mut self) -> Bytes {
        // Beyond the count, a private link's frames say nothing.
        let last = self.last.as_deref().filter(|_| self.link.public_stats);
        let (code, count) = (&self.code, self.committed);
        self.frame
            .get_or_insert_with(|| frame::state_frame(code.as_str(), count, last))
            .clone()
    }

    fn broadcast(&mut self) {
        if self.frame.is_none() && !self.subscribers.is_empty() {
            self.shared.metrics.click_framed(self.last.as_deref());
        }
        let mut frame = self.current_frame();
        if self.stats_due() {
            // One write per subscriber carries both events.
            let stats = self.stats_round();
            frame = [stats, frame].concat().into();
        }
        let now = Instant::now();
        self.subscribers.deliver(&frame, self.committed, now, None);
        self.last_broadcast = now;
    }

    fn stats_due(&self) -> bool {
        self.stats_changed && self.stats_sent.elapsed() >= STATS_INTERVAL
    }

    fn schedule_flush(&mut self, myself: &ActorRef<LinkMsg>) {
        if self.flush_pending || self.subscribers.is_empty() {
            return;
        }
        self.flush_pending = true;
        // Frames per second a link may cost: with many subscribers, frames come further apart
        // so that one round of deliveries ends before the next begins (and latency stays
        // bounded instead of queues growing).
        let settings = &self.shared.settings;
        let round = Duration::from_secs_f64(
            self.subscribers.len() as f64 / settings.deliveries_per_sec.max(1) as f64,
        );
        let gap = settings.min_frame_interval.max(round);
        let since = self.last_broadcast.elapsed();
        if since >= gap {
            // Goes behind the messages already queued, so one frame covers a burst.
            if myself.cast(LinkMsg::Flush).is_err() {
                self.flush_pending = false;
            }
        } else {
            myself.send_after(gap - since, || LinkMsg::Flush);
        }
    }

    fn tick(&mut self, myself: &ActorRef<LinkMsg>) {
        let now = Instant::now();
        let (heartbeat, stuck, idle) = {
            let s = &self.shared.settings;
            (s.heartbeat, s.stuck_timeout, s.idle_timeout)
        };
        if now.duration_since(self.last_heartbeat) >= heartbeat {
            self.last_heartbeat = now;
            self.subscribers.heartbeat();
        }
        self.sync_committed();
        if self.stats_due() && !self.subscribers.is_empty() {
            // Changes that came too soon after the last `stats` event for the frames.
            let stats = self.stats_round();
            if !stats.is_empty() {
                self.subscribers.send_all(&stats);
            }
        }
        if self.subscribers.any_behind(self.committed) {
            // A reader catching up gets the aggregates it may have missed with the count.
            let frame: Bytes = [self.stats_event(), self.current_frame()].concat().into();
            self.subscribers
                .deliver(&frame, self.committed, now, Some(stuck));
        }
        // Questions whose callers gave up (a stalled disk) are let go.
        self.waiters.retain(|(_, waiter)| !waiter.is_closed());
        self.answer_waiters();
        self.update_wanted();
        if now.duration_since(self.last_activity) >= idle && self.stop_if_idle(myself, "idle") {
            return;
        }
        let next = self.next_tick();
        self.arm(myself, next);
    }

    /// Stops the actor if nobody watches it or waits for it. True if it is stopping.
    fn stop_if_idle(&mut self, myself: &ActorRef<LinkMsg>, why: &str) -> bool {
        if !self.subscribers.is_empty()
            || !self.waiters.is_empty()
            || self.draining
            || !self
                .shared
                .directory
                .begin_drain(&self.code, myself.get_id())
        {
            return false;
        }
        debug!(code = %self.code, count = self.count, why, "stopping");
        self.draining = true;
        // Messages already queued are still handled; later ones are refused and their
        // senders wait for the successor.
        let _ = myself.drain();
        true
    }

    fn subscribe(&mut self, last_event_id: Option<u64>) -> Result<Subscription, SubscribeError> {
        if self.draining {
            return Err(SubscribeError::Stopping);
        }
        if self.subscribers.len() >= self.shared.settings.max_subscribers_per_link {
            return Err(SubscribeError::LinkFull);
        }
        let (tx, frames) = mpsc::channel(self.shared.settings.queue_frames);
        let id = self.shared.next_subscriber.fetch_add(1, SeqCst);
        // From now on commits are wanted, so none is missed; then read the latest.
        self.watch.wanted.store(true, SeqCst);
        self.inbox.set_busy(true);
        self.sync_committed();
        // A client that has the committed state gets nothing at first. One with a larger id
        // (it saw a count a crash took back, or another node's) gets the state as it is: an
        // `EventSource` answered with anything but 200 stops reconnecting for good.
        // The aggregates come first, as a `stats` event (the original's clients ignore it).
        let stats = self.stats_event();
        let initial = if last_event_id == Some(self.committed) {
            stats
        } else {
            [stats, self.current_frame()].concat().into()
        };
        let initial = Some(initial);
        // It has the committed state now: the next frame is for a later one, never this id.
        self.subscribers.add(id, tx, self.committed);
        self.follow_others();
        self.last_activity = Instant::now();
        Ok(Subscription {
            id,
            initial,
            frames,
        })
    }
}

impl Actor for LinkActor {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: LinkArgs,
    ) -> Result<LinkState, ActorProcessingErr> {
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
        let (stored, counter, aggregates, stored_covers) = tokio::task::spawn_blocking(move || {
            let code = key.as_str();
            // A click that found the link just before its deletion must not start an actor
            // that would store it for a deleted code.
            let Some(stored) = store.link(code)? else {
                return Ok(None);
            };
            let counter = store.counter(code)?;
            let mut aggregates = match store.aggregates(code)? {
                Some(stored) if stored.covers() <= counter.count => stored,
                Some(stored) => {
                    tracing::warn!(
                        code,
                        covers = stored.covers(),
                        count = counter.count,
                        "aggregates ahead of the click log; rebuilding them"
                    );
                    Aggregates::default()
                }
                None => Aggregates::default(),
            };
            let stored_covers = aggregates.covers();
            // Up to the count read above: on a cluster store, other nodes may store more
            // meanwhile (this actor learns of them as it goes).
            let mut folded = Ok(());
            store.walk_clicks(code, stored_covers, &mut |event| {
                if event.seq > counter.count {
                    return std::ops::ControlFlow::Break(());
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
                    .fold(&event, &visitors, &settings)
                    .map_err(|e| StoreError::Inconsistent(format!("code {code}: {e}")));
                if folded.is_err() {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })?;
            folded?;
            if aggregates.covers() != counter.count {
                return Err(StoreError::Inconsistent(format!(
                    "code {code}: the aggregates cover {} of {} clicks",
                    aggregates.covers(),
                    counter.count
                )));
            }
            Ok::<_, StoreError>(Some((stored, counter, aggregates, stored_covers)))
        })
        .await??
        .ok_or("the link was deleted")?;
        let link = if stored.rev > link.rev {
            // The entry was made with an older copy (the cache had let the newer one go).
            let stored = Arc::new(stored);
            shared.directory.replace_link(&stored);
            stored
        } else {
            link
        };
        let now = Instant::now();
        shared.metrics.actor_started();
        let watch = Arc::new(CommitWatch {
            committed: AtomicU64::new(counter.count),
            wanted: AtomicBool::new(false),
            actor: myself.clone(),
        });
        let mut state = LinkState {
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
        };
        let first = state.next_tick();
        state.arm(&myself, first);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: LinkMsg,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LinkMsg::Collect => state.count_clicks(),
            LinkMsg::Committed => {
                state.sync_committed();
            }
            LinkMsg::Flush => {
                state.flush_pending = false;
                state.sync_committed();
                state.broadcast();
                // This frame carries the newest state: nothing more to schedule for it.
                state.answer_waiters();
                state.progressed = false;
            }
            LinkMsg::Subscribe {
                last_event_id,
                reply,
            } => {
                if reply.is_closed() {
                    // The caller gave up waiting: no one would read this subscription.
                    return Ok(());
                }
                let answer = state.subscribe(last_event_id);
                let id = answer.as_ref().ok().map(|s| s.id);
                if id.is_some() {
                    state.fast_timer(&myself);
                }
                if reply.send(answer).is_err()
                    && let Some(id) = id
                {
                    // Gave up just now: take the subscriber out at once rather than at the next
                    // send, so it does not count against the limits or keep the actor alive.
                    state.subscribers.remove(id);
                    state.update_wanted();
                }
            }
            LinkMsg::Unsubscribe(id) => {
                if state.subscribers.remove(id) {
                    state.update_wanted();
                }
                state.last_activity = Instant::now();
            }
            LinkMsg::Snapshot(reply) => {
                state.sync_committed();
                if state.committed >= state.count || !state.shared.writer.is_healthy() {
                    let _ = reply.send(state.snapshot());
                } else {
                    state.wait(&myself, Waiter::Snapshot(reply));
                }
            }
            LinkMsg::Peek(reply) => {
                state.sync_committed();
                let _ = reply.send(state.committed);
            }
            LinkMsg::Stats(ask) => {
                state.sync_committed();
                if state.committed >= state.count || !state.shared.writer.is_healthy() {
                    let answer = state.stats(&ask);
                    let _ = ask.reply.send(answer);
                } else {
                    state.wait(&myself, Waiter::Stats(ask));
                }
            }
            LinkMsg::Replace(link, reply) => {
                if link.rev > state.link.rev {
                    state.link = link;
                    // Whether stats are public may have changed.
                    state.frame = None;
                    state.stats_bytes = None;
                }
                let _ = reply.send(());
            }
            LinkMsg::Delete(reply) => state.delete(&myself, Some(reply)),
            LinkMsg::DeletedElsewhere => state.delete(&myself, None),
            LinkMsg::Fail => return Err("fault injected".into()),
            LinkMsg::Tick(generation) => {
                if generation == state.timer && !state.draining {
                    state.tick(&myself);
                }
            }
            LinkMsg::Passivate => {
                state.stop_if_idle(&myself, "passivated");
            }
            LinkMsg::Superseded => state.supersede(&myself),
            LinkMsg::Remote(events) => state.take_remote(&myself, events),
            LinkMsg::CatchUp(reply) => state.catch_up(&myself, Some(reply)),
            LinkMsg::CaughtUp(events) => state.caught_up(&myself, events),
        }
        state.follow_progress(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        state.watch.wanted.store(false, SeqCst);
        if let Some(task) = state.following.take() {
            task.abort();
        }
        state.sync_committed();
        if !state.deleted && !state.stale {
            state.store_aggregates(true);
        }
        state.shared.metrics.actor_stopped();
        debug!(code = %state.code, count = state.count, "link actor stopped");
        Ok(())
    }
}

impl LinkState {
    /// Deletes the link: in the store (answering `reply` with its answer), or, when another
    /// node deleted it (`reply` is `None`), here only: the store no longer has it, and may
    /// already have a new link made on the code.
    fn delete(
        &mut self,
        myself: &ActorRef<LinkMsg>,
        reply: Option<RpcReplyPort<Result<bool, WriteError>>>,
    ) {
        self.deleted = true;
        // Clicks already in the inbox are refused (their visitors get the deleted link's 404).
        self.count_clicks();
        if let Some(reply) = reply {
            // Queued now, behind every click batch this actor sent: the purge finds them all.
            let deleted = self.shared.writer.delete_link(self.code.clone());
            tokio::spawn(async move {
                let _ = reply.send(deleted.await);
            });
        }
        self.subscribers
            .send_all(&frame::deleted_frame(self.code.as_str(), self.count));
        self.end(myself);
    }

    /// Ends every subscription and question, and stops whether or not anyone watched.
    fn end(&mut self, myself: &ActorRef<LinkMsg>) {
        self.subscribers.clear();
        self.waiters.clear();
        self.update_wanted();
        if !self.draining
            && self
                .shared
                .directory
                .begin_drain(&self.code, myself.get_id())
        {
            self.draining = true;
            let _ = myself.drain();
        }
    }

    /// Parks a question until the clicks counted before it are committed.
    fn wait(&mut self, myself: &ActorRef<LinkMsg>, waiter: Waiter) {
        self.waiters.push((self.count, waiter));
        self.update_wanted();
        self.fast_timer(myself);
    }

    /// Heartbeats, slow readers and waiting questions need the faster timer from now on.
    fn fast_timer(&mut self, myself: &ActorRef<LinkMsg>) {
        let tick = self.shared.settings.tick;
        if self.timer_due > Instant::now() + tick {
            self.arm(myself, tick);
        }
    }
}
