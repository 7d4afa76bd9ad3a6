//! API keys in the `keys` keyspace (by the SHA-256 of the key), and the count of revoked ones
//! in `meta` that lets the floor count every key ever stored.

use fjall::PersistMode;

use super::{KEYS_REVOKED, KeyRecord, Store, StoreError, records};

impl Store {
    /// Every stored API key, as (hash, record).
    pub fn api_keys(&self) -> Result<Vec<([u8; 32], KeyRecord)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.keys.iter() {
            let (key, value) = guard.into_inner()?;
            let hash: [u8; 32] = key.as_ref().try_into().map_err(|_| {
                StoreError::Inconsistent(format!("api key hash of {} bytes", key.len()))
            })?;
            out.push((hash, records::decode_key(&value)?));
        }
        Ok(out)
    }

    /// Stores an API key and syncs it to disk before returning.
    pub fn put_api_key(&self, hash: [u8; 32], record: &KeyRecord) -> Result<(), StoreError> {
        self.keys
            .insert(hash.to_vec(), records::encode_key(record))?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Stores several API key records in one batch (last-used times), synced.
    pub fn put_api_keys(&self, records: &[([u8; 32], KeyRecord)]) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for (hash, record) in records {
            batch.insert(&self.keys, hash.to_vec(), records::encode_key(record));
        }
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Removes an API key and counts it as revoked, in one atomic batch, synced before
    /// returning. Returns whether it was stored.
    pub fn revoke_api_key(&self, hash: [u8; 32]) -> Result<bool, StoreError> {
        if self.keys.get(hash)?.is_none() {
            return Ok(false);
        }
        let mut batch = self.db.batch();
        batch.remove(&self.keys, hash.to_vec());
        batch.insert(
            &self.meta,
            KEYS_REVOKED,
            (self.revoked_keys()? + 1).to_be_bytes(),
        );
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(true)
    }

    /// How many API keys were ever revoked.
    pub fn revoked_keys(&self) -> Result<u64, StoreError> {
        let stored = self.meta.get(KEYS_REVOKED)?;
        Ok(stored
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// How many API keys are stored.
    pub(super) fn count_keys(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for guard in self.keys.iter() {
            guard.key()?;
            n += 1;
        }
        Ok(n)
    }
}
