//! What an actor does when its link changes or goes: it takes a newer copy, and on a deletion
//! (here or on another node) it refuses clicks, tells its subscribers and stops.

use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};

use super::{LinkMsg, LinkState};
use crate::{domain::Link, links::frame, store::WriteError};

impl LinkState {
    /// A `Replace`: takes the link's copy if it is newer, and answers.
    pub(super) fn on_replace(&mut self, link: Arc<Link>, reply: RpcReplyPort<()>) {
        if link.rev > self.link.rev {
            self.link = link;
            // Whether stats are public may have changed.
            self.frame = None;
            self.stats_bytes = None;
        }
        let _ = reply.send(());
    }

    /// Deletes the link: in the store (answering `reply` with its answer), or, when another
    /// node deleted it (`reply` is `None`), here only: the store no longer has it, and may
    /// already have a new link made on the code.
    pub(super) fn delete(
        &mut self,
        myself: &ActorRef<LinkMsg>,
        reply: Option<RpcReplyPort<Result<bool, WriteError>>>,
    ) {
        self.deleted = true;
        // Clicks already in the inbox are refused (their visitors get the deleted link's 404).
        self.count_clicks();
        let Some(reply) = reply else {
            self.deleted_for_good(myself);
            return;
        };
        // Queued now, behind every click batch this actor sent: the purge finds them all. The
        // viewers hear of it once the store has said so (a refused deletion leaves the link
        // and its viewers as they were).
        let deleted = self.shared.writer.delete_link(self.code.clone());
        let actor = myself.clone();
        tokio::spawn(async move {
            let answer = deleted.await;
            // An actor that has stopped meanwhile needs no news.
            let _ = actor.cast(LinkMsg::DeleteAnswered(answer.is_ok()));
            let _ = reply.send(answer);
        });
    }

    /// The store's answer to a deletion this actor queued: done (or the link was gone
    /// already), the viewers get the last `deleted` event and the actor stops; refused, the
    /// link counts clicks again.
    pub(super) fn on_delete_answered(&mut self, myself: &ActorRef<LinkMsg>, done: bool) {
        if done {
            self.deleted_for_good(myself);
        } else {
            // Shown again here (also when the owner stopped waiting for the answer).
            self.deleted = false;
            self.shared.directory.unmark_gone(&self.code);
            self.shared.cache.remove(&self.code);
        }
    }

    fn deleted_for_good(&mut self, myself: &ActorRef<LinkMsg>) {
        self.subscribers
            .send_all(&frame::deleted_frame(self.code.code(), self.count));
        self.end(myself);
    }

    /// Ends every subscription and question, and stops whether or not anyone watched.
    pub(super) fn end(&mut self, myself: &ActorRef<LinkMsg>) {
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
}
