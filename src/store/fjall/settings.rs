//! Settings in the `meta` keyspace, each under `setting 0x00 name`: what the service keeps
//! beside links (certificates, the ACME account, challenge answers).

use fjall::PersistMode;

use super::{Store, StoreError};

const PREFIX: &[u8] = b"setting\0";

fn key(name: &str) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

impl Store {
    /// Every setting whose name starts with `prefix`, as (name, value).
    pub fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for guard in self.meta.prefix(key(prefix)) {
            let (k, value) = guard.into_inner()?;
            let name = String::from_utf8_lossy(&k[PREFIX.len()..]).into_owned();
            out.push((name, value.to_vec()));
        }
        Ok(out)
    }

    /// The setting `name`, if stored.
    pub fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key(name))?.map(|v| v.to_vec()))
    }

    /// Stores a setting, synced before returning.
    pub fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key(name), value)?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Stores a setting without syncing: the writer's next fsync (at least every
    /// `--fsync-interval`) or the OS makes it durable.
    pub fn put_setting_unsynced(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key(name), value)?;
        Ok(())
    }

    /// Removes a setting, synced before returning.
    pub fn delete_setting(&self, name: &str) -> Result<(), StoreError> {
        self.meta.remove(key(name))?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}
