//! The questions an actor answers from its committed state (a snapshot, the stats of a
//! window): at once when every click counted before them is committed, else parked until it
//! is.

use ractor::{ActorRef, RpcReplyPort};

use super::{LinkMsg, LinkState, Snapshot, StatsAsk, Waiter};
use crate::{
    analytics::{QueryError, StatsAnswer, query},
    domain::now_ms,
};

impl LinkState {
    /// A `Snapshot` question: answered now if every click counted is committed (or the store
    /// has failed), else once they are.
    pub(super) fn on_snapshot(
        &mut self,
        myself: &ActorRef<LinkMsg>,
        reply: RpcReplyPort<Snapshot>,
    ) {
        self.sync_committed();
        if self.committed >= self.count || !self.shared.writer.is_healthy() {
            let _ = reply.send(self.snapshot());
        } else {
            self.wait(myself, Waiter::Snapshot(reply));
        }
    }

    /// A `Stats` question: answered as a `Snapshot` question is.
    pub(super) fn on_stats(&mut self, myself: &ActorRef<LinkMsg>, ask: Box<StatsAsk>) {
        self.sync_committed();
        if self.committed >= self.count || !self.shared.writer.is_healthy() {
            let answer = self.stats(&ask);
            let _ = ask.reply.send(answer);
        } else {
            self.wait(myself, Waiter::Stats(ask));
        }
    }

    /// Parks a question until the clicks counted before it are committed.
    fn wait(&mut self, myself: &ActorRef<LinkMsg>, waiter: Waiter) {
        self.waiters.push((self.count, waiter));
        self.update_wanted();
        self.fast_timer(myself);
    }

    /// Answers the snapshot questions whose clicks are committed now (all of them if the store
    /// has failed: their clicks never will be).
    pub(super) fn answer_waiters(&mut self) {
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

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            count: self.committed,
            last: self.last.clone(),
            subscribers: self.subscribers.len(),
        }
    }

    /// Answers a stats question from the aggregates (of committed clicks).
    fn stats(&self, ask: &StatsAsk) -> Result<StatsAnswer, QueryError> {
        query::answer(
            self.code.code(),
            &self.aggregates,
            &ask.query,
            &self.shared.settings.aggregates,
            ask.created_at,
            now_ms(),
        )
    }
}
