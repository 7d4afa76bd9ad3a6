//! The actor of one short code. It is the only writer of the code's count and click log and
//! owns the list of live subscribers, so clicks never race and a frame is encoded once per
//! change. It never awaits a socket or the disk while handling a message: clicks go to the
//! writer's queue, frames into each subscriber's bounded queue with `try_send`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{Shared, frame, inbox::Inbox};
use crate::domain::{ClickEvent, ShortCode};

/// A click as the redirect handler saw it, before it has a number.
#[derive(Debug)]
pub struct Click {
    /// Epoch milliseconds.
    pub at: i64,
    pub ip: Option<String>,
    pub user_agent: String,
    pub referer: Option<String>,
    pub country: Option<String>,
    /// Fired once the click is committed (and fsynced in strict mode).
    pub ack: Option<oneshot::Sender<()>>,
}

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
    #[error("Last-Event-ID {given} is larger than the click count {count}")]
    AheadOfCount { given: u64, count: u64 },
    /// The actor is stopping; the caller retries on its successor.
    #[error("the link's actor is stopping")]
    Stopping,
}

/// A code's current state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub count: u64,
    pub last: Option<Arc<ClickEvent>>,
    pub subscribers: usize,
}

pub enum LinkMsg {
    /// Take the clicks waiting in the inbox.
    Collect,
    Subscribe {
        last_event_id: Option<u64>,
        reply: RpcReplyPort<Result<Subscription, SubscribeError>>,
    },
    Unsubscribe(u64),
    Snapshot(RpcReplyPort<Snapshot>),
    /// Send the current state to the subscribers (scheduled after a change).
    Flush,
    /// Fault injection (tests): the handler fails as a bug would, and the actor dies.
    Fail,
    /// Timer: heartbeats, catching up or dropping slow subscribers, idleness. Carries the
    /// generation of the timer that sent it; only the latest timer counts.
    Tick(u64),
}

pub struct LinkActor;

pub struct LinkArgs {
    pub code: ShortCode,
    pub shared: Arc<Shared>,
    pub inbox: Arc<Inbox>,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// The count of the last state frame this subscriber was given.
    sent: u64,
    /// Since when its queue has been full, if it is.
    behind_since: Option<Instant>,
}

pub struct LinkState {
    code: ShortCode,
    shared: Arc<Shared>,
    inbox: Arc<Inbox>,
    count: u64,
    last: Option<Arc<ClickEvent>>,
    /// The encoded frame of the current count, built when first needed.
    frame: Option<Bytes>,
    subscribers: Vec<Subscriber>,
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
    fn count_click(&mut self, click: Click) {
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
        self.shared
            .writer
            .click(self.code.clone(), event.clone(), click.ack);
        self.last = Some(event);
        self.frame = None;
    }

    /// Arms the timer to fire after `delay`; an earlier timer is forgotten.
    fn arm(&mut self, myself: &ActorRef<LinkMsg>, delay: Duration) {
        self.timer += 1;
        let generation = self.timer;
        self.timer_due = Instant::now() + delay;
        myself.send_after(delay, move || LinkMsg::Tick(generation));
    }

    /// When the timer should fire next: often while someone watches, else when the actor
    /// would become idle.
    fn next_tick(&self) -> Duration {
        let settings = &self.shared.settings;
        if self.subscribers.is_empty() {
            (self.last_activity + settings.idle_timeout)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(5))
        } else {
            settings.tick
        }
    }

    fn current_frame(&mut self) -> Bytes {
        let (code, count, last) = (&self.code, self.count, self.last.as_deref());
        self.frame
            .get_or_insert_with(|| frame::state_frame(code.as_str(), count, last))
            .clone()
    }

    fn broadcast(&mut self) {
        let frame = self.current_frame();
        let count = self.count;
        let now = Instant::now();
        self.subscribers
            .retain_mut(|s| match s.tx.try_send(frame.clone()) {
                Ok(()) => {
                    s.sent = count;
                    s.behind_since = None;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Conflation: it skips this frame and gets the newest one when it drains.
                    s.behind_since.get_or_insert(now);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
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
            // Goes behind the clicks already queued, so one frame covers a burst.
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
            self.subscribers.retain(|s| {
                !matches!(
                    s.tx.try_send(frame::HEARTBEAT),
                    Err(mpsc::error::TrySendError::Closed(_))
                )
            });
        }
        let count = self.count;
        let behind = self
            .subscribers
            .iter()
            .any(|s| s.sent < count || s.behind_since.is_some());
        if behind {
            let frame = self.current_frame();
            let code = &self.code;
            self.subscribers.retain_mut(|s| {
                if let Some(since) = s.behind_since
                    && now.duration_since(since) >= stuck
                {
                    debug!(code = %code, subscriber = s.id, "dropping a stuck subscriber");
                    return false;
                }
                if s.sent < count {
                    match s.tx.try_send(frame.clone()) {
                        Ok(()) => {
                            s.sent = count;
                            s.behind_since = None;
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => return false,
                    }
                }
                true
            });
        }
        if self.subscribers.is_empty()
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
        // A predecessor of this code may have clicks still queued for the writer; wait until
        // they are committed so the count read below includes them.
        shared.writer.barrier().await?;
        let store = shared.store.clone();
        let key = code.clone();
        let counter = tokio::task::spawn_blocking(move || store.counter(key.as_str())).await??;
        let now = Instant::now();
        shared.metrics.actor_started();
        let mut state = LinkState {
            code,
            inbox,
            count: counter.count,
            last: counter.last.map(Arc::new),
            frame: None,
            subscribers: Vec::new(),
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
            LinkMsg::Collect => {
                let clicks = state.inbox.take();
                if !clicks.is_empty() {
                    state.last_activity = Instant::now();
                    for click in clicks {
                        state.count_click(click);
                    }
                    state.schedule_flush(&myself);
                }
            }
            LinkMsg::Flush => {
                state.flush_pending = false;
                state.broadcast();
            }
            LinkMsg::Subscribe {
                last_event_id,
                reply,
            } => {
                if reply.is_closed() {
                    // The caller gave up waiting: no one would read this subscription.
                    return Ok(());
                }
                let answer = subscribe(state, last_event_id);
                let id = answer.as_ref().ok().map(|s| s.id);
                if id.is_some() && state.timer_due > Instant::now() + state.shared.settings.tick {
                    // Heartbeats and slow readers need the faster timer from now on.
                    let tick = state.shared.settings.tick;
                    state.arm(&myself, tick);
                }
                if reply.send(answer).is_err()
                    && let Some(id) = id
                {
                    // Gave up just now: take the subscriber out at once rather than at the next
                    // send, so it does not count against the limits or keep the actor alive.
                    state.subscribers.retain(|s| s.id != id);
                }
            }
            LinkMsg::Unsubscribe(id) => {
                state.subscribers.retain(|s| s.id != id);
                state.last_activity = Instant::now();
            }
            LinkMsg::Snapshot(reply) => {
                let _ = reply.send(Snapshot {
                    count: state.count,
                    last: state.last.clone(),
                    subscribers: state.subscribers.len(),
                });
            }
            LinkMsg::Fail => return Err("fault injected".into()),
            LinkMsg::Tick(generation) => {
                if generation == state.timer && !state.draining {
                    state.tick(&myself);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        state.shared.metrics.actor_stopped();
        debug!(code = %state.code, count = state.count, "link actor stopped");
        Ok(())
    }
}

fn subscribe(
    state: &mut LinkState,
    last_event_id: Option<u64>,
) -> Result<Subscription, SubscribeError> {
    if state.draining {
        return Err(SubscribeError::Stopping);
    }
    if state.subscribers.len() >= state.shared.settings.max_subscribers_per_link {
        return Err(SubscribeError::LinkFull);
    }
    if let Some(given) = last_event_id
        && given > state.count
    {
        return Err(SubscribeError::AheadOfCount {
            given,
            count: state.count,
        });
    }
    let (tx, frames) = mpsc::channel(state.shared.settings.queue_frames);
    let initial = (last_event_id != Some(state.count)).then(|| state.current_frame());
    let id = state
        .shared
        .next_subscriber
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    state.subscribers.push(Subscriber {
        id,
        tx,
        sent: state.count,
        behind_since: None,
    });
    state.last_activity = Instant::now();
    Ok(Subscription {
        id,
        initial,
        frames,
    })
}
