//! Publishing one code's clicks of a group: split into runs that each fit in one message, each
//! run published after the code's last stored message until JetStream stores it, and the
//! answer to a publish refused because another message came first (`wrong last sequence`).

use std::{ops::ControlFlow, ops::Range};

use async_nats::jetstream::{
    self, ErrorCode,
    context::{PublishError, PublishErrorKind},
    publish::PublishAck,
};
use tracing::{debug, warn};

use super::{
    super::{NatsStore, clicks::encode_batch, clicks_subject},
    RETRY, Tip,
    links::link_stored,
    unreachable,
};
use crate::{
    domain::{ClickEvent, ShortCode},
    store::writer::{
        Health,
        group::{Item, Numbered, Outcome, Pending},
    },
};

/// The most clicks one message holds (also bounded in bytes, see [`Limit`]).
pub(super) const MESSAGE_CLICKS: usize = 4096;

/// How large one message of a code's clicks may be: a code with more clicks in a group (a
/// busy link after a stall) goes in several messages, one after the other.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limit {
    pub clicks: usize,
    pub bytes: usize,
}

/// At least the bytes a click takes in a message, without encoding it (it is encoded once,
/// when its run is published): the length before it, its numbers and flags (each at most 9
/// bytes in MessagePack, a string's header at most 5) and its strings.
fn size_bound(e: &ClickEvent) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    128 + e.user_agent.len()
        + e.browser.len()
        + e.os.len()
        + text(&e.ip)
        + text(&e.referer)
        + text(&e.country)
}

/// Splits a code's clicks into runs that each fit in one message.
pub(super) fn runs(items: &[Item], limit: Limit) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let size = size_bound(item.event());
        match out.last_mut() {
            Some(run) if run.len() < limit.clicks && bytes + size <= limit.bytes => {
                bytes += size;
                run.end = i + 1;
            }
            _ => {
                bytes = size;
                out.push(i..i + 1);
            }
        }
    }
    out
}

/// Whether a publish was refused because the code's last message is not the one it
/// expected. A replicated stream also says so in a second form (`10164`, without the
/// sequence) when the publish meets another one to the same subject still being agreed on.
fn wrong_last_sequence(e: &PublishError) -> bool {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => true,
        PublishErrorKind::Other => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|j| j.error_code() == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT),
        _ => false,
    }
}

/// The id of a message of a code's clicks: this node, the code, the message it follows and
/// its first click. A retry of the message carries the same id, one sent in a batch too
/// (`Lp-Id`; alone it is also the `Nats-Msg-Id`, so JetStream keeps one copy of a retry).
pub(super) fn message_id(node: &str, code: &ShortCode, after: u64, first_at: i64) -> String {
    format!("{node}:{code}:{after}:{first_at}")
}

/// Publishes one code's clicks of a group until JetStream has stored them, in messages under
/// the size limit, or until it is seen that the link is gone; sets the code's outcome.
/// Returns the code and where its clicks stand now (`None`: not known).
pub(super) async fn publish_code(
    store: &NatsStore,
    pending: &mut Pending,
    tip: Option<Tip>,
    limit: Limit,
    health: &Health,
) -> (ShortCode, Option<Tip>) {
    // A code with no known tip whose clicks are all to be numbered here (the long tail:
    // codes clicked once in a while) is first tried as a code with no clicks yet: right, it
    // saves reading its last message; wrong, JetStream refuses it and the last message is
    // read then.
    let mut tip = tip.or_else(|| pending.all_fresh().then_some(Tip::default()));
    let mut superseded = false;
    let mut asks = vec![false; pending.items.len()];
    for (at, _) in &pending.admits {
        asks[*at] = true;
    }
    let mut kept = Vec::with_capacity(pending.items.len());
    for run in runs(&pending.items, limit) {
        let admission = Admission {
            asks: &asks[run.clone()],
            limit: pending.limit,
        };
        match publish_run(
            store,
            &pending.code,
            &pending.items[run],
            admission,
            tip,
            health,
        )
        .await
        {
            Some((done, renumbered, run_kept)) => {
                tip = Some(done);
                superseded |= renumbered;
                kept.extend(run_kept);
            }
            None => {
                // The link is gone: nothing more of its clicks is stored (what was is purged
                // with it), and no one who waits for them hears that they were.
                debug!(code = %pending.code, "clicks of a deleted link not stored");
                pending.outcome = Outcome::Dropped;
                return (pending.code.clone(), None);
            }
        }
    }
    // Each click that asked is told whether it took a place within the limit.
    for (at, admit) in pending.admits.drain(..) {
        let _ = admit.send(kept[at]);
    }
    pending.refused = kept.iter().filter(|k| !**k).count();
    if let Some(done) = tip {
        pending.outcome = Outcome::Stored {
            last: done.last,
            // Refused clicks were counted by the actor: its count is ahead of the store's.
            superseded: superseded || pending.refused > 0,
        };
    }
    (pending.code.clone(), tip)
}

/// Which clicks of a run asked to be admitted under the link's visit limit, and the limit.
#[derive(Debug, Clone, Copy)]
pub(in crate::store::nats) struct Admission<'a> {
    pub asks: &'a [bool],
    pub limit: Option<u64>,
}

impl Admission<'_> {
    /// No click asks (every click is stored).
    #[cfg(test)]
    pub(in crate::store::nats) const NONE: Admission<'static> = Admission {
        asks: &[],
        limit: None,
    };

    /// Which of `n` clicks are stored after a code's click `last`: every click that did not
    /// ask, and those that did while the count stays within the limit.
    fn kept(&self, n: usize, last: u64) -> Vec<bool> {
        let mut count = last;
        (0..n)
            .map(|i| {
                let asks = self.asks.get(i).copied().unwrap_or(false);
                let keep = !asks || self.limit.is_none_or(|max| count < max);
                count += u64::from(keep);
                keep
            })
            .collect()
    }
}

/// Publishes one run of a code's clicks after the code's last stored message, retrying until
/// it is stored. Returns the new tip and whether an actor's numbers had to change (another
/// node's clicks came first), or `None` when the link is gone.
///
/// Clicks that ask for admission (see [`Admission`]) are stored only within the visit limit,
/// judged against the stored count as each attempt finds it: another node's click that took
/// the last place first refuses them. The third value says which clicks were stored.
pub(in crate::store::nats) async fn publish_run(
    store: &NatsStore,
    code: &ShortCode,
    run: &[Item],
    admission: Admission<'_>,
    tip: Option<Tip>,
    health: &Health,
) -> Option<(Tip, bool, Vec<bool>)> {
    let mut run = Run {
        store,
        code,
        items: run,
        admission,
        kept: Vec::new(),
        health,
        subject: clicks_subject(code.as_str()),
        attempt: 0,
        tip,
        read_here: false,
    };
    loop {
        if let ControlFlow::Break(done) = run.once().await {
            return done.map(|(tip, renumbered)| (tip, renumbered, run.kept));
        }
    }
}

/// What an attempt comes to: `Break` with the run's result, or `Continue` to try again.
type Step = ControlFlow<Option<(Tip, bool)>>;

/// One run of a code's clicks being published, and what its attempts have learnt.
struct Run<'a> {
    store: &'a NatsStore,
    code: &'a ShortCode,
    items: &'a [Item],
    admission: Admission<'a>,
    /// Which of `items` the last attempt stored (or would have).
    kept: Vec<bool>,
    health: &'a Health,
    subject: String,
    attempt: u32,
    /// Where the code's clicks stand (`None`: to be read from the servers).
    tip: Option<Tip>,
    /// Whether `tip` was read from the servers by this call (not remembered from before).
    read_here: bool,
}

impl Run<'_> {
    /// One attempt: the link still there, the tip known, the clicks numbered after it and
    /// published.
    async fn once(&mut self) -> Step {
        match self.link_still_there().await {
            Some(true) => {}
            Some(false) => return ControlFlow::Break(None),
            None => return ControlFlow::Continue(()),
        }
        self.attempt += 1;
        let Some(current) = self.current_tip().await else {
            return ControlFlow::Continue(());
        };
        // Numbered after the stored clicks: as the actor numbered them when it was right.
        // Whether the actor was right is judged by this attempt alone, and so is the visit
        // limit (counts only grow: a click refused now would be refused later too).
        self.kept = self.admission.kept(self.items.len(), current.last);
        let refused = self.kept.contains(&false);
        let kept = self.items.iter().zip(&self.kept).filter(|(_, k)| **k);
        let Numbered {
            events,
            renumbered,
            behind,
        } = Pending::numbered(kept.map(|(item, _)| item), current.last);
        let renumbered = renumbered || refused;
        if events.is_empty() {
            // Every click was past the limit: nothing to store.
            return ControlFlow::Break(Some((current, true)));
        }
        if behind {
            // Fewer clicks stored than the actor counted before these. Other nodes only add
            // clicks; fewer means they were purged: the link was deleted (and perhaps made
            // again), and these clicks belonged to the deleted one. Unless the tip was only
            // remembered: then it is read first.
            if self.read_here {
                return ControlFlow::Break(None);
            }
            self.tip = None;
            return ControlFlow::Continue(());
        }
        let last = current.last + events.len() as u64;
        let first_at = events.first().map_or(0, |e| e.at);
        let id = message_id(
            &self.store.inner.node,
            self.code,
            current.stream_seq,
            first_at,
        );
        match self.publish(&events, current, &id).await {
            Ok(ack) => ControlFlow::Break(Some((
                Tip {
                    stream_seq: ack.sequence,
                    last,
                },
                renumbered,
            ))),
            Err(e) if wrong_last_sequence(&e) => {
                self.after_wrong_last_sequence(current, &id, last, renumbered)
                    .await
            }
            Err(e) => {
                if self.attempt == 1 || self.attempt.is_multiple_of(20) {
                    warn!(code = %self.code, cause = %e, attempt = self.attempt, "clicks not stored yet; publishing again");
                }
                unreachable(self.health, &format!("publishing clicks: {e}"));
                tokio::time::sleep(RETRY).await;
                ControlFlow::Continue(())
            }
        }
    }

    /// Whether the link is still there; `None` (after a pause) when that cannot be told now.
    ///
    /// Every attempt after the first asks the links bucket itself (not this node's copy,
    /// which a node cut off may not have brought up to date): a link deleted meanwhile
    /// takes none of these clicks.
    async fn link_still_there(&self) -> Option<bool> {
        // The first attempt trusts this node's cache when it holds the link (the watch
        // takes a deletion out of it); else it asks the bucket too.
        if self.attempt == 0 && self.store.has_link(self.code.as_str()) {
            return Some(true);
        }
        match link_stored(self.store, self.code).await {
            Ok(stored) => Some(stored),
            Err(e) => {
                unreachable(self.health, &e.to_string());
                tokio::time::sleep(RETRY).await;
                None
            }
        }
    }

    /// Where the code's clicks stand: as known, or read from the servers; `None` (after a
    /// pause) when they cannot be read now.
    async fn current_tip(&mut self) -> Option<Tip> {
        if let Some(tip) = self.tip {
            return Some(tip);
        }
        match self.store.last_batch(self.code.as_str()).await {
            Ok((stream_seq, last, _)) => {
                let fresh = Tip {
                    stream_seq,
                    last: last.map_or(0, |e| e.seq),
                };
                self.tip = Some(fresh);
                self.read_here = true;
                Some(fresh)
            }
            Err(e) => {
                unreachable(self.health, &e.to_string());
                tokio::time::sleep(RETRY).await;
                None
            }
        }
    }

    /// Publishes `events` as the message `id` after the message at `current`, and waits for
    /// its acknowledgement.
    async fn publish(
        &self,
        events: &[ClickEvent],
        current: Tip,
        id: &str,
    ) -> Result<PublishAck, PublishError> {
        let message = jetstream::message::PublishMessage::build()
            .payload(encode_batch(events))
            .expected_last_subject_sequence(current.stream_seq)
            .message_id(id)
            .header("Lp-Node", self.store.inner.node.as_str());
        match self
            .store
            .inner
            .js
            .send_publish(self.subject.clone(), message)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        }
    }

    /// The publish of message `id` (which followed `current`, and would make the code's last
    /// click `last`) was refused: another node stored clicks of this code meanwhile, or this
    /// very message was stored and its acknowledgement lost (perhaps longer ago than
    /// JetStream's duplicate window). If it was stored, it is the message right after the one
    /// it expected: look there, not at the last one.
    async fn after_wrong_last_sequence(
        &mut self,
        current: Tip,
        id: &str,
        last: u64,
        renumbered: bool,
    ) -> Step {
        match self
            .store
            .batch_after(self.code.as_str(), current.stream_seq)
            .await
        {
            Ok(Some((stream_seq, stored_id))) if stored_id == id => {
                debug!(code = %self.code, "clicks found stored after a lost acknowledgement");
                ControlFlow::Break(Some(
                    self.stored_after_all(Tip { stream_seq, last }, renumbered)
                        .await,
                ))
            }
            Ok(Some(_)) => self.after_others().await,
            // Nothing after what it followed: the tip was wrong (remembered from before a
            // purge, perhaps): read it, and judge these clicks against it.
            Ok(None) => {
                self.tip = None;
                ControlFlow::Continue(())
            }
            Err(e) => self.forget_tip_and_pause(&e.to_string()).await,
        }
    }

    /// The message was stored (at `mine`) though its acknowledgement was lost. Others may
    /// have stored clicks after it: the next run follows theirs, and the actor's count is
    /// stale.
    async fn stored_after_all(&self, mine: Tip, renumbered: bool) -> (Tip, bool) {
        match self.store.last_batch(self.code.as_str()).await {
            Ok((s, l, _)) if s > mine.stream_seq => (
                Tip {
                    stream_seq: s,
                    last: l.map_or(0, |e| e.seq),
                },
                true,
            ),
            Ok(_) => (mine, renumbered),
            // Not known: if others followed, the next publish is refused and
            // reads them.
            Err(_) => (mine, renumbered),
        }
    }

    /// The servers cannot be asked now: the tip is read again after a pause.
    async fn forget_tip_and_pause(&mut self, why: &str) -> Step {
        unreachable(self.health, why);
        self.tip = None;
        tokio::time::sleep(RETRY).await;
        ControlFlow::Continue(())
    }

    /// Another message follows the one the tip says was last: the next attempt numbers these
    /// clicks after the code's last message as read now (an actor's clicks numbered beyond
    /// it belonged to a deleted link: see `once`).
    async fn after_others(&mut self) -> Step {
        match self.store.last_batch(self.code.as_str()).await {
            Ok((stream_seq, l, _)) => {
                debug!(code = %self.code, "another node stored clicks of this code; numbering after them");
                self.tip = Some(Tip {
                    stream_seq,
                    last: l.map_or(0, |e| e.seq),
                });
                self.read_here = true;
                ControlFlow::Continue(())
            }
            Err(e) => self.forget_tip_and_pause(&e.to_string()).await,
        }
    }
}
