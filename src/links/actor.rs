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

use super::{Shared, inbox::Inbox, subscribers::Subscribers};
use crate::{
    analytics::{Aggregates, QueryError, StatsAnswer, StatsQuery},
    domain::{ClickEvent, Link, ShortCode},
    store::{CommitListener, WriteError},
};

mod changes;
mod clicks;
mod follow;
mod frames;
mod questions;
mod start;
mod subscribe;
mod timers;

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
    /// The store answered a deletion this actor queued (`true`: it is done).
    DeleteAnswered(bool),
    /// Fault injection (tests): the handler fails as a bug would, and the actor dies.
    #[cfg(feature = "test-hooks")]
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
    CatchUp(u64, RpcReplyPort<()>),
    /// The clicks a catch-up read from the store, in order.
    CaughtUp(Result<Vec<ClickEvent>, String>),
    /// Read the store again for a reader still waiting (see `CatchUp`).
    Reread,
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

impl Actor for LinkActor {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: LinkArgs,
    ) -> Result<LinkState, ActorProcessingErr> {
        LinkState::start(&myself, args).await
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
            LinkMsg::Flush => state.on_flush(),
            LinkMsg::Subscribe {
                last_event_id,
                reply,
            } => {
                if reply.is_closed() {
                    // The caller gave up waiting: no one would read this subscription.
                    return Ok(());
                }
                state.on_subscribe(&myself, last_event_id, reply);
            }
            LinkMsg::Unsubscribe(id) => state.on_unsubscribe(id),
            LinkMsg::Snapshot(reply) => state.on_snapshot(&myself, reply),
            LinkMsg::Peek(reply) => {
                state.sync_committed();
                let _ = reply.send(state.committed);
            }
            LinkMsg::Stats(ask) => state.on_stats(&myself, ask),
            LinkMsg::Replace(link, reply) => state.on_replace(link, reply),
            LinkMsg::Delete(reply) => state.delete(&myself, Some(reply)),
            LinkMsg::DeletedElsewhere => state.delete(&myself, None),
            LinkMsg::DeleteAnswered(done) => state.on_delete_answered(&myself, done),
            #[cfg(feature = "test-hooks")]
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
            LinkMsg::CatchUp(to, reply) => state.catch_up(&myself, Some((to, reply))),
            LinkMsg::CaughtUp(events) => state.caught_up(&myself, events),
            LinkMsg::Reread => state.catch_up(&myself, None),
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
