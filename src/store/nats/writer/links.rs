//! Link operations against the buckets, one function per operation: a creation refused while
//! the code is held, an update by compare-and-set on the entry's revision, a deletion that
//! holds the code and purges its clicks and aggregates.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use bytes::Bytes;
use tracing::warn;

use super::super::{NatsStore, clicks_subject, nats_error};
use crate::{
    domain::{Link, ShortCode, now_ms},
    store::{
        StoreError, records,
        writer::{LinkChange, LinkOp, LinkOutcome},
    },
};

/// Whether the links bucket holds `code` now (asked of the servers).
pub(super) async fn link_stored(store: &NatsStore, code: &ShortCode) -> Result<bool, StoreError> {
    Ok(stored_link(store, code).await?.is_some())
}

/// A link's entry in the bucket, unless there is none (or it was deleted).
async fn stored_link(store: &NatsStore, code: &ShortCode) -> Result<Option<kv::Entry>, StoreError> {
    Ok(store
        .inner
        .links_kv
        .entry(code.as_str())
        .await
        .map_err(|e| nats_error("cannot read a link", e))?
        .filter(|e| e.operation == kv::Operation::Put))
}

/// Carries out one link operation against the buckets.
pub(super) async fn link_op(
    store: &NatsStore,
    op: &LinkOp,
    hold: Duration,
) -> Result<LinkOutcome, StoreError> {
    let now = now_ms();
    match op {
        LinkOp::Create(link, _) => create(store, link, now).await,
        LinkOp::Update(code, change, _) => update(store, code, change, now).await,
        LinkOp::Delete(code, _) => delete(store, code, hold, now).await,
    }
}

async fn create(store: &NatsStore, link: &Link, now: i64) -> Result<LinkOutcome, StoreError> {
    let inner = &store.inner;
    let code = link.code.as_str();
    let gone = inner
        .gone_kv
        .get(code)
        .await
        .map_err(|e| nats_error("cannot read a deleted code's hold", e))?;
    if gone.as_ref().is_some_and(|b| records::decode_gone(b) > now) {
        return Ok(LinkOutcome::Created(false));
    }
    if gone.is_some() && stored_link(store, &link.code).await?.is_none() {
        // A code made again after its hold: whatever of the deleted link's clicks is left
        // (a purge that failed, a click stored after it) is not the new link's.
        inner
            .clicks
            .purge()
            .filter(clicks_subject(code))
            .await
            .map_err(|e| nats_error("cannot purge a deleted link's clicks", e))?;
        let _ = inner.aggregates_kv.purge(code).await;
    }
    match inner
        .links_kv
        .create(code, records::encode_link(link).into())
        .await
    {
        Ok(_) => {
            inner.remember(Arc::new(link.clone()));
            Ok(LinkOutcome::Created(true))
        }
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(LinkOutcome::Created(false)),
        Err(e) => Err(nats_error("cannot store a link", e)),
    }
}

async fn update(
    store: &NatsStore,
    code: &ShortCode,
    change: &LinkChange,
    now: i64,
) -> Result<LinkOutcome, StoreError> {
    let inner = &store.inner;
    // Compare-and-set on the entry's revision: a change made meanwhile on another
    // node is read and the change applied to it.
    for _ in 0..16 {
        let Some(entry) = stored_link(store, code).await? else {
            return Ok(LinkOutcome::Updated(None));
        };
        let link = records::decode_link(&entry.value)?;
        let mut new = match change(&link) {
            Err(refused) => return Ok(LinkOutcome::Updated(Some(Err(refused)))),
            Ok(new) => new,
        };
        new.code = link.code.clone();
        new.owner = link.owner.clone();
        new.created_at = link.created_at;
        new.rev = link.rev + 1;
        new.updated_at = now.max(link.updated_at);
        match inner
            .links_kv
            .update(
                code.as_str(),
                records::encode_link(&new).into(),
                entry.revision,
            )
            .await
        {
            Ok(_) => {
                inner.remember(Arc::new(new.clone()));
                return Ok(LinkOutcome::Updated(Some(Ok(new))));
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(nats_error("cannot store a link", e)),
        }
    }
    Err(StoreError::Nats(
        "a link kept changing on other nodes; not updated".into(),
    ))
}

async fn delete(
    store: &NatsStore,
    code: &ShortCode,
    hold: Duration,
    now: i64,
) -> Result<LinkOutcome, StoreError> {
    let inner = &store.inner;
    let Some(entry) = stored_link(store, code).await? else {
        return Ok(LinkOutcome::Deleted(false));
    };
    let until = now.saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
    inner
        .gone_kv
        .put(code.as_str(), Bytes::copy_from_slice(&until.to_be_bytes()))
        .await
        .map_err(|e| nats_error("cannot hold a deleted code", e))?;
    match inner
        .links_kv
        .delete_expect_revision(code.as_str(), Some(entry.revision))
        .await
    {
        Ok(()) => {}
        Err(e) => return Err(nats_error("cannot delete a link", e)),
    }
    inner.forget(code.as_str());
    // The clicks and the aggregates go with it.
    if let Err(e) = inner
        .clicks
        .purge()
        .filter(clicks_subject(code.as_str()))
        .await
    {
        warn!(code = %code, cause = %e, "a deleted link's clicks were not purged");
    }
    let _ = inner.aggregates_kv.purge(code.as_str()).await;
    Ok(LinkOutcome::Deleted(true))
}
