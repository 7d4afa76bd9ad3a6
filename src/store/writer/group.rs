//! One group: what the writer takes from the queue at once, and the rules both engines keep
//! with it. Clicks are kept per code with the acknowledgements of the redirects waiting for
//! them and the listeners of the actors that numbered them; an engine decides each code's
//! [`Outcome`] (stored up to a number, dropped because its link is gone, or lost with a
//! failed store), and [`Group::finish`] tells everyone accordingly: an acknowledgement is sent
//! only for a click that was stored, a listener hears only what its code's store holds.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    thread,
    time::Instant,
};

use crossbeam_channel::Receiver;
use tokio::sync::oneshot;
use tracing::debug;

use super::{CommitListener, Durability, Health, LinkOp, Op, WriteError, WriterConfig};
use crate::{
    domain::{ClickEvent, ShortCode},
    metrics::{DropReason, Metrics},
    store::Permit,
};

/// A click in a group: numbered by its code's actor, or to be numbered by the writer.
pub(in crate::store) enum Item {
    Numbered(Arc<ClickEvent>),
    Fresh(ClickEvent),
}

impl Item {
    pub(in crate::store) fn event(&self) -> &ClickEvent {
        match self {
            Self::Numbered(event) => event,
            Self::Fresh(event) => event,
        }
    }
}

/// What became of one code's clicks of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) enum Outcome {
    /// Not decided yet (a group that ends so is lost).
    Waiting,
    /// Stored, the last of them numbered `last`; `superseded` when another node's clicks came
    /// first and an actor's numbers had to change.
    Stored { last: u64, superseded: bool },
    /// Not stored: the link is gone (deleted before or in this group).
    Dropped,
}

/// One code's clicks in a group, in the order they came.
pub(in crate::store) struct Pending {
    pub code: ShortCode,
    pub items: Vec<Item>,
    pub listeners: Vec<Arc<dyn CommitListener>>,
    /// The acknowledgements of the redirects waiting for these clicks (strict durability).
    pub acks: Vec<oneshot::Sender<()>>,
    /// Clicks whose admission under the link's visit limit the engine decides: a place in
    /// `items`, and who is told (see [`super::ClickBatch::admits`]).
    pub admits: Vec<(usize, oneshot::Sender<bool>)>,
    /// The link's visit limit as its actor last knew it.
    pub limit: Option<u64>,
    /// Clicks the engine refused under the visit limit (not stored, not lost).
    pub refused: usize,
    pub outcome: Outcome,
}

impl Pending {
    /// A code with no clicks yet in the group.
    pub(in crate::store) fn new(code: ShortCode) -> Self {
        Self {
            code,
            items: Vec::new(),
            listeners: Vec::new(),
            acks: Vec::new(),
            admits: Vec::new(),
            limit: None,
            refused: 0,
            outcome: Outcome::Waiting,
        }
    }

    /// Whether all of its clicks are to be numbered by the writer.
    pub(in crate::store) fn all_fresh(&self) -> bool {
        self.items.iter().all(|i| matches!(i, Item::Fresh(_)))
    }

    /// Numbers the clicks after `last` (the code's last stored click), keeping an actor's
    /// numbers when they already follow on. Returns the numbered clicks, and whether an
    /// actor's numbers changed (`renumbered`) or were ahead of `last` (`behind`: the store
    /// holds fewer clicks than the actor counted, so they were purged).
    pub(in crate::store) fn numbered<'a>(
        items: impl IntoIterator<Item = &'a Item>,
        last: u64,
    ) -> Numbered {
        let (mut renumbered, mut behind) = (false, false);
        let events = items
            .into_iter()
            .zip(last + 1..)
            .map(|(item, seq)| {
                let mut event = item.event().clone();
                if let Item::Numbered(numbered) = item {
                    renumbered |= numbered.seq != seq;
                    behind |= numbered.seq > seq;
                }
                event.seq = seq;
                event
            })
            .collect();
        Numbered {
            events,
            renumbered,
            behind,
        }
    }
}

/// Clicks numbered for storing (see [`Pending::numbered`]).
pub(in crate::store) struct Numbered {
    pub events: Vec<ClickEvent>,
    pub renumbered: bool,
    pub behind: bool,
}

/// Everything taken from the queue for one commit.
#[derive(Default)]
pub(in crate::store) struct Group {
    pub codes: Vec<Pending>,
    at: HashMap<ShortCode, usize>,
    clicks: usize,
    pub permits: Permit,
    pub links: Vec<LinkOp>,
    /// Aggregates snapshots, each covering clicks 1..=`covers` of its code.
    pub aggregates: Vec<(ShortCode, u64, Vec<u8>)>,
    /// Clicks `--click-retention-days` lets go, and who waits for them.
    pub expired: Vec<Vec<u8>>,
    pub expire_replies: Vec<oneshot::Sender<Result<(), WriteError>>>,
    pub barriers: Vec<oneshot::Sender<Result<(), WriteError>>>,
    pub stop: bool,
}

impl Group {
    /// Takes `first` and what follows it in the queue: in default durability everything
    /// that comes within `commit_interval` (sleeping instead of waiting on the channel, so
    /// senders do not wake this thread for every click: one wake-up per group); in strict
    /// durability what is there, and then, while clicks that hold a place in the backlog are
    /// still on their way (in an actor's inbox, say), those that come within
    /// `commit_interval`: every one of them waits for a commit, and one fsync for all of them
    /// costs less than one for each few. A link change or a barrier is taken at once. At most
    /// `max_batch` clicks (and other items) a group.
    pub(in crate::store) fn gather(first: Op, rx: &Receiver<Op>, config: &WriterConfig) -> Self {
        let mut group = Self::default();
        let mut urgent = group.add(first);
        if !urgent && config.durability == Durability::Default && !config.commit_interval.is_zero()
        {
            thread::sleep(config.commit_interval);
        }
        while group.len() < config.max_batch {
            let Ok(op) = rx.try_recv() else { break };
            urgent |= group.add(op);
        }
        if !urgent && config.durability == Durability::Strict {
            let until = Instant::now() + config.commit_interval;
            // The clicks admitted by now; those admitted later are the next group's.
            let awaited = group.permits.len() + group.permits.others_pending();
            while group.len() < config.max_batch && group.permits.len() < awaited {
                let left = until.saturating_duration_since(Instant::now());
                let Ok(op) = rx.recv_timeout(left) else { break };
                if group.add(op) {
                    break;
                }
            }
        }
        group
    }

    /// Clicks and other items in the group.
    pub(in crate::store) fn len(&self) -> usize {
        self.clicks
            + self.links.len()
            + self.aggregates.len()
            + self.expired.len()
            + self.barriers.len()
    }

    /// Clicks in the group.
    pub(in crate::store) fn clicks(&self) -> usize {
        self.clicks
    }

    fn pending(&mut self, code: ShortCode) -> &mut Pending {
        let at = *self.at.entry(code.clone()).or_insert_with(|| {
            self.codes.push(Pending::new(code));
            self.codes.len() - 1
        });
        &mut self.codes[at]
    }

    /// Adds an item; true when it asks for an immediate commit.
    fn add(&mut self, op: Op) -> bool {
        match op {
            Op::Clicks(batch) => {
                self.clicks += batch.events.len();
                let pending = self.pending(batch.code);
                let offset = pending.items.len();
                pending
                    .admits
                    .extend(batch.admits.into_iter().map(|(at, tx)| (offset + at, tx)));
                pending.limit = batch.limit;
                pending
                    .items
                    .extend(batch.events.into_iter().map(Item::Numbered));
                pending.listeners.extend(batch.listener);
                pending.acks.extend(batch.acks);
                self.permits.merge(batch.permit);
                false
            }
            Op::Fresh(click) => {
                let click = *click;
                self.clicks += 1;
                let pending = self.pending(click.code);
                pending.items.push(Item::Fresh(click.event));
                pending.acks.extend(click.ack);
                self.permits.merge(click.permit);
                false
            }
            Op::Link(op) => {
                self.links.push(op);
                true
            }
            Op::Links(ops) => {
                self.links.extend(ops);
                true
            }
            Op::Aggregates {
                code,
                covers,
                bytes,
            } => {
                self.aggregates.push((code, covers, bytes));
                false
            }
            Op::Expire { keys, reply } => {
                self.expired.extend(keys);
                self.expire_replies.push(reply);
                false
            }
            Op::Barrier(tx) => {
                self.barriers.push(tx);
                true
            }
            Op::Stop => {
                self.stop = true;
                true
            }
        }
    }

    /// Tells everyone waiting on the group how it went, once the engine has decided each
    /// code's outcome (link operations are answered by the engine as it carries them out).
    /// `Err`: the store failed, and nothing of the group was stored. A stored group is
    /// counted in the commit metrics (its time from `started`) before any acknowledgement,
    /// listener or barrier hears of it, so whoever learns of a click that way finds it
    /// counted there too. A waiter that is gone is
    /// ignored: the redirect it belonged to may have timed out.
    pub(in crate::store) fn finish(
        &mut self,
        result: Result<(), WriteError>,
        health: &Health,
        metrics: &Metrics,
        started: Instant,
    ) {
        if result.is_ok() {
            let stored = self
                .codes
                .iter()
                .filter(|p| matches!(p.outcome, Outcome::Stored { .. }))
                .map(|p| p.items.len() - p.refused)
                .sum();
            metrics.group_committed(stored, started.elapsed());
        }
        let (mut dropped, mut lost) = (0, 0);
        for pending in self.codes.drain(..) {
            let n = pending.items.len() - pending.refused;
            match (&result, pending.outcome) {
                (Ok(()), Outcome::Stored { last, superseded }) => {
                    if let Some(hook) = health.commits.get()
                        && !superseded
                        && n > 0
                    {
                        hook(&pending.code, last);
                    }
                    for listener in &pending.listeners {
                        if superseded {
                            listener.superseded();
                        } else {
                            listener.committed(last);
                        }
                    }
                    for ack in pending.acks {
                        let _ = ack.send(());
                    }
                }
                // Its acknowledgements go with it: a strict redirect waiting for one hears
                // that its click was not stored. An actor that numbered them starts again
                // from the store (its link may exist again, made anew on the code).
                (Ok(()), Outcome::Dropped) => {
                    dropped += n;
                    for listener in &pending.listeners {
                        listener.superseded();
                    }
                }
                (Err(_), _) | (Ok(()), Outcome::Waiting) => lost += n,
            }
        }
        if dropped > 0 {
            metrics.clicks_dropped(DropReason::LinkDeleted, dropped);
        }
        if lost > 0 {
            // Logged once, when the store failed (`Health::fail`); groups after that only
            // count what they could not save.
            debug!(clicks = lost, "clicks not stored");
            health.lost.fetch_add(lost as u64, Ordering::Relaxed);
        }
        let answer = result;
        for op in self.links.drain(..) {
            // Not carried out (the store failed before the engine got to it).
            op.answer(Err(answer
                .clone()
                .err()
                .unwrap_or_else(|| WriteError::Failed("not carried out".into()))));
        }
        for barrier in self.barriers.drain(..) {
            let _ = barrier.send(answer.clone());
        }
        for reply in self.expire_replies.drain(..) {
            let _ = reply.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{Backlog, writer::ClickBatch};

    type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

    fn config(durability: Durability) -> WriterConfig {
        WriterConfig {
            durability,
            // A wait the rules do not allow would hang the test (and the CI run's time limit
            // end it) rather than pass.
            commit_interval: Duration::from_secs(3600),
            max_batch: 1024,
            fsync_interval: Duration::from_secs(1),
            deleted_code_hold: Duration::ZERO,
            metrics: Arc::default(),
        }
    }

    fn click(code: &str, seq: u64, backlog: &Arc<Backlog>) -> TestResult<Op> {
        Ok(Op::Clicks(ClickBatch {
            code: ShortCode::parse(code)?,
            events: vec![Arc::new(ClickEvent::plain(seq))],
            acks: Vec::new(),
            listener: None,
            permit: backlog.admit().ok_or("the backlog is full")?,
            admits: Vec::new(),
            limit: None,
        }))
    }

    #[test]
    fn a_strict_group_waits_for_the_clicks_still_on_their_way_and_only_for_them() -> TestResult {
        let backlog = Backlog::new(100, Duration::ZERO);
        let (tx, rx) = crossbeam_channel::unbounded();
        let first = click("a", 1, &backlog)?;
        // Two more clicks were admitted and are still with their actors.
        let (second, third) = (click("a", 2, &backlog)?, click("b", 1, &backlog)?);
        let late = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            let _ = tx.send(second);
            thread::sleep(Duration::from_millis(50));
            let _ = tx.send(third);
            tx
        });
        let group = Group::gather(first, &rx, &config(Durability::Strict));
        assert_eq!(
            group.clicks(),
            3,
            "one fsync for all three waiting redirects"
        );
        assert_eq!(group.codes.len(), 2);
        let tx = late.join().map_err(|_| "the sender panicked")?;

        // Nothing else admitted: the group is taken as it is (a wait here would last the hour).
        drop(group);
        let group = Group::gather(click("c", 1, &backlog)?, &rx, &config(Durability::Strict));
        assert_eq!(group.clicks(), 1);
        drop(group);

        // A click still on its way, and a barrier: the barrier is taken at once, the click
        // left to the next group.
        let (first, _on_its_way) = (click("d", 1, &backlog)?, click("d", 2, &backlog)?);
        let (barrier, _answer) = oneshot::channel();
        tx.send(Op::Barrier(barrier))?;
        let group = Group::gather(first, &rx, &config(Durability::Strict));
        assert_eq!((group.clicks(), group.barriers.len()), (1, 1));
        Ok(())
    }

    #[test]
    fn links_sent_together_are_one_group_whatever_max_batch_says() -> TestResult {
        let mut config = config(Durability::Default);
        config.max_batch = 10;
        let (tx, rx) = crossbeam_channel::unbounded();
        let create = |i: usize| -> TestResult<LinkOp> {
            let link = crate::domain::Link::new(
                ShortCode::parse(&format!("l{i}"))?,
                crate::domain::TargetUrl::parse("https://example.com/")?,
                "owner".into(),
                0,
            );
            Ok(LinkOp::Create(Box::new(link), oneshot::channel().0))
        };
        let bulk = (0..100).map(create).collect::<TestResult<Vec<_>>>()?;
        tx.send(Op::Links(bulk))?;
        tx.send(Op::Link(create(100)?))?;
        let group = Group::gather(rx.recv()?, &rx, &config);
        assert_eq!(
            group.links.len(),
            100,
            "one group commit for the whole bulk"
        );
        let next = Group::gather(rx.recv()?, &rx, &config);
        assert_eq!(
            next.links.len(),
            1,
            "the one sent after it waits for the next"
        );
        Ok(())
    }
}
