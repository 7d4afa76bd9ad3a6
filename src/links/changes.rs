//! Changes to links through [`Links`]: creating, changing and deleting one, and taking in
//! the changes and deletions other nodes make. Each change is applied to every copy in memory
//! (the cache, the live entry, the actor) in the order the store made them.

use std::sync::Arc;

use ractor::concurrency::oneshot;
use tokio::time::Instant;

use super::{CALL_TIMEOUT, LinkError, Links, actor::LinkMsg};
use crate::{
    domain::{Link, ShortCode},
    store::LinkChange,
};

/// What became of one change of [`Links::update_many`]: as [`Links::update`] answers.
pub type UpdateAnswer = Result<Option<Result<Arc<Link>, String>>, LinkError>;

/// How long a bulk creation (up to a thousand links in one group commit) may take.
const BULK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Hands the link changes made on other nodes to [`Links::remote_changes`]'s task.
struct RemoteChanges(tokio::sync::mpsc::UnboundedSender<(ShortCode, Option<Arc<Link>>)>);

impl crate::store::ChangeListener for RemoteChanges {
    fn link_changed(&self, code: &ShortCode, link: Option<Arc<Link>>) {
        let _ = self.0.send((code.clone(), link));
    }
}

impl Links {
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

    /// Stores many new links in one group commit of the writer. Each answer is as
    /// [`Links::create`]'s, in the order of `links` (`Ok(false)`: the code is taken, also by
    /// an earlier link of `links`). The links created are put in the cache even if the caller
    /// stops waiting (a slow store), so the copies in memory never lag behind the store.
    pub async fn create_many(
        &self,
        links: Vec<Link>,
    ) -> Result<Vec<Result<bool, LinkError>>, LinkError> {
        let deadline = Instant::now() + BULK_TIMEOUT;
        let shared = self.shared.clone();
        let applied = tokio::spawn(async move {
            let codes: Vec<Arc<Link>> = links.iter().cloned().map(Arc::new).collect();
            let answers = shared.writer.create_links(links).await;
            codes
                .into_iter()
                .zip(answers)
                .map(|(link, answer)| {
                    if let Ok(true) = answer {
                        shared.directory.unmark_gone(&link.code);
                        shared.cache.insert(link.code.clone(), Some(link));
                    }
                    answer.map_err(LinkError::from)
                })
                .collect::<Vec<_>>()
        });
        match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(answers)) => Ok(answers),
            Ok(Err(_)) => Err(LinkError::ShuttingDown),
            Err(_) => Err(LinkError::Timeout),
        }
    }

    /// Changes many links in one group commit of the writer, each as [`Links::update`]
    /// changes one, in the order given; each answer as its. Every copy in memory takes the
    /// new links before this returns (or, if the caller stops waiting, still takes them).
    pub async fn update_many(
        &self,
        changes: Vec<(ShortCode, LinkChange)>,
    ) -> Result<Vec<UpdateAnswer>, LinkError> {
        let order = self.changes.clone().lock_owned().await;
        let deadline = Instant::now() + BULK_TIMEOUT;
        let links = self.clone();
        let applied = tokio::spawn(async move {
            let _order = order;
            let answers = links.shared.writer.update_links(changes).await;
            let mut out = Vec::with_capacity(answers.len());
            for answer in answers {
                out.push(match answer {
                    Ok(Some(Ok(link))) => {
                        let link = Arc::new(link);
                        links.apply(&link).await;
                        Ok(Some(Ok(link)))
                    }
                    Ok(Some(Err(refused))) => Ok(Some(Err(refused))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(LinkError::from(e)),
                });
            }
            out
        });
        match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(answers)) => Ok(answers),
            Ok(Err(_)) => Err(LinkError::ShuttingDown),
            Err(_) => Err(LinkError::Timeout),
        }
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
                        // A link made again on the code while this node missed the deletion
                        // (a watch started again shows only the latest value): what it holds
                        // of the old one goes first.
                        let held = links.shared.directory.link(code.as_str());
                        if held.is_some_and(|old| old.created_at != link.created_at) {
                            links.deleted_elsewhere(&code).await;
                        }
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
        // The store's answer, once one came (from the actor or the writer).
        let mut answered = None;
        if self.shared.directory.live(code.as_str()).is_some() {
            // The actor hands the deletion to the writer behind the clicks it numbered.
            match self.ask(link, LinkMsg::Delete, deadline).await {
                Ok(answer) => answered = Some(answer?),
                // It was stopping (idle) and let the question go, or ended: the store is asked
                // below.
                Err(LinkError::Timeout | LinkError::Gone) if Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        }
        self.await_stopping(link, deadline).await?;
        let found = match answered {
            Some(found) => found,
            None => self.delete_in_store(code, deadline).await?,
        };
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

    /// Asks the writer to delete a link no actor holds. The answer is taken even if the
    /// caller stops waiting (a slow store): a deletion refused later shows the link again.
    async fn delete_in_store(
        &self,
        code: &ShortCode,
        deadline: Instant,
    ) -> Result<bool, LinkError> {
        let queued = self.shared.writer.delete_link(code.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = self.shared.clone();
        let code = code.clone();
        tokio::spawn(async move {
            let answer = queued.await;
            if answer.is_err() {
                shared.directory.unmark_gone(&code);
                shared.cache.remove(&code);
            }
            let _ = tx.send(answer);
        });
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Ok(answer?),
            Ok(Err(_)) => Err(LinkError::ShuttingDown),
            Err(_) => Err(LinkError::Timeout),
        }
    }
}
