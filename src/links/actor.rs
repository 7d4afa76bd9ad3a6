//! The actor of one short code. It is the only writer of the code's count and click log and
//! owns the list of live subscribers, so clicks never race and a frame is encoded once per
//! change. It never awaits a socket or the disk while handling a message: clicks go to the
//! writer's queue, frames into each subscriber's bounded queue with `try_send`.
//!
//! Two counts: `count`, the clicks it has numbered, and `committed`, the highest of them the
//! store holds (fsynced, in strict durability), which the writer reports through the code's
//! [`CommitWatch`]. Frames and answers carry only the committed state, so no viewer ever sees a
//! count that a crash takes back, and an id is never shown for two different clicks.

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
use crate::{
    domain::{ClickEvent, ShortCode},
    store::{ClickBatch, CommitListener},
};

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
    /// Send the current state to the subscribers (scheduled after a change).
    Flush,
    /// Fault injection (tests): the handler fails as a bug would, and the actor dies.
    Fail,
    /// Timer: heartbeats, catching up or dropping slow subscribers, idleness. Carries the
    /// generation of the timer that sent it; only the latest timer counts.
    Tick(u64),
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
}

pub struct LinkActor;

pub struct LinkArgs {
    pub code: ShortCode,
    pub shared: Arc<Shared>,
    pub inbox: Arc<Inbox>,
}

pub struct LinkState {
    code: ShortCode,
    shared: Arc<Shared>,
    inbox: Arc<Inbox>,
    watch: Arc<CommitWatch>,
    /// Clicks numbered so far.
    count: u64,
    /// The highest click number the store holds.
    committed: u64,
    /// The click numbered `committed`.
    last: Option<Arc<ClickEvent>>,
    /// The last click of each batch handed to the writer and not yet reported committed, in
    /// order (the writer reports a batch's last number, so the others are never needed).
    uncommitted: VecDeque<Arc<ClickEvent>>,
    /// The committed state moved since frames and waiting questions were last seen to.
    progressed: bool,
    /// The encoded frame of the committed state, built when first needed.
    frame: Option<Bytes>,
    subscribers: Subscribers,
    /// Snapshot questions waiting for the commit of the clicks counted before them.
    waiters: Vec<(u64, RpcReplyPort<Snapshot>)>,
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
        for click in clicks {
            self.count += 1;
            let agent = self.shared.agents.classify(&click.user_agent);
            let event = Arc::new(ClickEvent {
                seq: self.count,
                at: click.at,
                ip: click.ip,
                user_agent: click.user_agent,
                referer: click.referer,
                country: click.country,
                browser: agent.browser,
                os: agent.os,
                device: agent.device,
                bot: agent.bot,
            });
            events.push(event);
            acks.extend(click.ack);
        }
        if let Some(last) = events.last() {
            self.uncommitted.push_back(last.clone());
        }
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
        if committed <= self.committed {
            return false;
        }
        while self
            .uncommitted
            .front()
            .is_some_and(|event| event.seq <= committed)
        {
            self.last = self.uncommitted.pop_front();
        }
        self.committed = committed;
        self.frame = None;
        self.progressed = true;
        true
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
        let wanted = !self.subscribers.is_empty() || !self.waiters.is_empty();
        self.watch.wanted.store(wanted, SeqCst);
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
        for (_, reply) in ready {
            // A caller that gave up waiting is ignored on purpose.
            let _ = reply.send(snapshot.clone());
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
        let (code, count, last) = (&self.code, self.committed, self.last.as_deref());
        self.frame
            .get_or_insert_with(|| frame::state_frame(code.as_str(), count, last))
            .clone()
    }

    fn broadcast(&mut self) {
        let frame = self.current_frame();
        let now = Instant::now();
        self.subscribers.deliver(&frame, self.committed, now, None);
        self.last_broadcast = now;
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
        if self.subscribers.any_behind(self.committed) {
            let frame = self.current_frame();
            self.subscribers
                .deliver(&frame, self.committed, now, Some(stuck));
        }
        // Questions whose callers gave up (a stalled disk) are let go.
        self.waiters.retain(|(_, reply)| !reply.is_closed());
        self.answer_waiters();
        self.update_wanted();
        if self.subscribers.is_empty()
            && self.waiters.is_empty()
            && !self.draining
            && now.duration_since(self.last_activity) >= idle
            && self
                .shared
                .directory
                .begin_drain(&self.code, myself.get_id())
        {
            debug!(code = %self.code, count = self.count, "idle; stopping");
            self.draining = true;
            // Messages already queued are still handled; later ones are refused and their
            // senders wait for the successor.
            let _ = myself.drain();
            return;
        }
        let next = self.next_tick();
        self.arm(myself, next);
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
        self.sync_committed();
        // A client that has the committed state gets nothing at first. One with a larger id
        // (it saw a count a crash took back, or another node's) gets the state as it is: an
        // `EventSource` answered with anything but 200 stops reconnecting for good.
        let initial = (last_event_id != Some(self.committed)).then(|| self.current_frame());
        // It has the committed state now: the next frame is for a later one, never this id.
        self.subscribers.add(id, tx, self.committed);
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
            shared,
            inbox,
        } = args;
        shared.check_start_fault(&code)?;
        // A predecessor of this code may have clicks still queued for the writer; wait until
        // they are committed so the count read below includes them.
        shared.writer.barrier().await?;
        let store = shared.store.clone();
        let key = code.clone();
        let counter = tokio::task::spawn_blocking(move || store.counter(key.as_str())).await??;
        let now = Instant::now();
        shared.metrics.actor_started();
        let watch = Arc::new(CommitWatch {
            committed: AtomicU64::new(counter.count),
            wanted: AtomicBool::new(false),
            actor: myself.clone(),
        });
        let mut state = LinkState {
            code,
            inbox,
            watch,
            count: counter.count,
            committed: counter.count,
            last: counter.last.map(Arc::new),
            uncommitted: VecDeque::new(),
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
                    state.waiters.push((state.count, reply));
                    state.update_wanted();
                    state.fast_timer(&myself);
                }
            }
            LinkMsg::Fail => return Err("fault injected".into()),
            LinkMsg::Tick(generation) => {
                if generation == state.timer && !state.draining {
                    state.tick(&myself);
                }
            }
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
        state.shared.metrics.actor_stopped();
        debug!(code = %state.code, count = state.count, "link actor stopped");
        Ok(())
    }
}

impl LinkState {
    /// Heartbeats, slow readers and waiting questions need the faster timer from now on.
    fn fast_timer(&mut self, myself: &ActorRef<LinkMsg>) {
        let tick = self.shared.settings.tick;
        if self.timer_due > Instant::now() + tick {
            self.arm(myself, tick);
        }
    }
}
