//! Storing an aggregates snapshot in its bucket, by compare-and-set: one that covers fewer
//! clicks than the stored one never replaces it.

use async_nats::jetstream::kv;

use super::super::{
    NatsStore,
    clicks::{decode_snapshot_entry, encode_snapshot_entry},
    nats_error,
};
use crate::{domain::ShortCode, store::StoreError};

/// Stores an aggregates snapshot unless one covering as much is there, or the link is gone.
pub(super) async fn store_snapshot(
    store: &NatsStore,
    code: &ShortCode,
    covers: u64,
    hint: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    if !store.has_link(code.as_str()) && !super::links::link_stored(store, code).await? {
        return Ok(());
    }
    let bucket = &store.inner.aggregates_kv;
    let entry = bucket
        .entry(code.as_str())
        .await
        .map_err(|e| nats_error("cannot read aggregates", e))?;
    let value = encode_snapshot_entry(covers, hint, bytes);
    match entry.filter(|e| e.operation == kv::Operation::Put) {
        Some(stored) => {
            let stored_covers = decode_snapshot_entry(&stored.value).map_or(0, |s| s.0);
            if stored_covers >= covers {
                return Ok(());
            }
            bucket
                .update(code.as_str(), value, stored.revision)
                .await
                .map_err(|e| nats_error("cannot store aggregates", e))?;
        }
        None => {
            bucket
                .put(code.as_str(), value)
                .await
                .map_err(|e| nats_error("cannot store aggregates", e))?;
        }
    }
    Ok(())
}
