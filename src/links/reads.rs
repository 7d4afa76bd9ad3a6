//! Reads of a link's count and stats through [`Links`]: from its live actor once the clicks
//! counted before the question are committed, else from the store; on a cluster store, after
//! the actor has caught up with the clicks other nodes stored.

use std::sync::Arc;

use ractor::concurrency::oneshot;
use tokio::time::Instant;

use super::{
    CALL_TIMEOUT, LinkError, Links, Snapshot,
    actor::{LinkMsg, StatsAsk},
};
use crate::{
    analytics::{QueryError, StatsAnswer, StatsQuery},
    domain::Link,
};

impl Links {
    /// The current count and latest click: from the actor if it is live, else from the store
    /// (where everything of a stopped actor is committed).
    pub async fn snapshot(&self, link: &Arc<Link>) -> Result<Snapshot, LinkError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        self.refresh_if_stale(link, deadline, false).await?;
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
        self.refresh_if_stale(link, deadline, true).await?;
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
        self.refresh_if_stale(link, deadline, false).await?;
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
    /// A public read (`public`) compares the actor's committed count as it is, and when the
    /// store cannot be asked it answers with what the actor has rather than fail.
    async fn refresh_if_stale(
        &self,
        link: &Arc<Link>,
        deadline: Instant,
        public: bool,
    ) -> Result<(), LinkError> {
        let store = &self.shared.store;
        if !store.shared_by_nodes() {
            return Ok(());
        }
        let (actor, here) = loop {
            let Some(actor) = self.shared.directory.live(link.code.as_str()) else {
                return Ok(());
            };
            let asked = if public {
                self.ask(link, LinkMsg::Peek, deadline).await
            } else {
                self.ask(link, LinkMsg::Snapshot, deadline)
                    .await
                    .map(|s| s.count)
            };
            match asked {
                Ok(here) => break (actor, here),
                // The actor ended and let the question go (superseded by clicks another node
                // numbered, or idle): its successor, if one starts, is asked.
                Err(LinkError::Timeout) if Instant::now() < deadline => {
                    self.await_stopping(link, deadline).await?;
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e),
            }
        };
        let (store, code) = (store.clone(), link.code.clone());
        let elsewhere = tokio::task::spawn_blocking(move || store.counted_elsewhere(code.as_str()))
            .await
            .map_err(|_| LinkError::ShuttingDown)?;
        let elsewhere = match elsewhere {
            Ok(elsewhere) => elsewhere,
            Err(_) if public => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if elsewhere.is_some_and(|count| count > here) {
            // It reads what it lacks from the store and takes it in, keeping its viewers; an
            // actor with clicks of its own in flight is superseded instead (no answer), and
            // the read waits for it to end.
            let to = elsewhere.unwrap_or_default();
            if self
                .ask(link, |reply| LinkMsg::CatchUp(to, reply), deadline)
                .await
                .is_ok()
            {
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
}
