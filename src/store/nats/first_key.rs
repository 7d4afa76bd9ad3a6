//! One first API key per cluster, however its nodes start: the node that makes it first
//! creates a marker in the meta bucket (a create only one node can win), then stores its key;
//! the others see the marker, or the key, and make none.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::{BufMut, Bytes, BytesMut};

use super::{NatsStore, nats_error};
use crate::{domain::now_ms, store::StoreError};

/// The marker's key in the meta bucket: the hash of the first key and when it was claimed.
const FIRST_KEY: &str = "first-key";
/// A marker this old with still no key stored was left by a node that stopped between the
/// claim and storing its key: another node may claim it again.
const ABANDONED_AFTER: Duration = Duration::from_secs(30);

/// Whether this node makes the first key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstKey {
    /// This node won the claim: it stores and prints its key.
    Make,
    /// The cluster has a key, or another node is making the first one.
    Exists,
}

impl NatsStore {
    /// Claims the making of the cluster's first API key for the key hashing to `hash`, when
    /// the keys bucket holds no key (blocking).
    pub fn claim_first_key(&self, hash: &[u8; 32]) -> Result<FirstKey, StoreError> {
        if !self.inner.keys.is_empty() {
            return Ok(FirstKey::Exists);
        }
        let meta = &self.inner.meta_kv;
        let value = marker(hash);
        self.run(async {
            match meta.create(FIRST_KEY, value.clone()).await {
                Ok(_) => return Ok(FirstKey::Make),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(nats_error("cannot claim the first API key", e)),
            }
            let Some(entry) = meta
                .entry(FIRST_KEY)
                .await
                .map_err(|e| nats_error("cannot read the first API key's claim", e))?
            else {
                return Ok(FirstKey::Exists);
            };
            let claimed_at = entry
                .value
                .get(32..40)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, i64::from_be_bytes);
            let abandoned = now_ms().saturating_sub(claimed_at)
                > i64::try_from(ABANDONED_AFTER.as_millis()).unwrap_or(i64::MAX);
            // Keys made meanwhile are seen by the watch; none and an old claim: its node
            // stopped before storing its key, so nobody was shown one.
            if !abandoned || !self.inner.keys.is_empty() {
                return Ok(FirstKey::Exists);
            }
            match meta.update(FIRST_KEY, value, entry.revision).await {
                Ok(_) => Ok(FirstKey::Make),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Ok(FirstKey::Exists)
                }
                Err(e) => Err(nats_error("cannot claim the first API key", e)),
            }
        })
    }
}

impl NatsStore {
    /// Notes that a key was given (`--initial-api-key`) and stored, so that nodes started
    /// without one make none (blocking).
    pub fn mark_first_key(&self, hash: &[u8; 32]) -> Result<(), StoreError> {
        match self.run(self.inner.meta_kv.create(FIRST_KEY, marker(hash))) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(nats_error("cannot note the first API key", e)),
        }
    }
}

/// The marker's value: the key's hash, then the time of the claim (ms, big-endian).
fn marker(hash: &[u8; 32]) -> Bytes {
    let mut out = BytesMut::with_capacity(40);
    out.put_slice(hash);
    out.put_i64(now_ms());
    out.freeze()
}
