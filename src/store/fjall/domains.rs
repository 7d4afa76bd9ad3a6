//! Domains in the `meta` keyspace, each under `domain 0x00 name`.

use fjall::PersistMode;

use super::{Store, StoreError, records};

const PREFIX: &[u8] = b"domain\0";

fn key(name: &str) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

impl Store {
    /// Every stored domain, by name.
    pub fn domains(&self) -> Result<Vec<records::DomainRecord>, StoreError> {
        let mut out = Vec::new();
        for guard in self.meta.prefix(PREFIX) {
            let (_, value) = guard.into_inner()?;
            out.push(records::decode_domain(&value)?);
        }
        Ok(out)
    }

    /// Stores a domain (new or changed), synced before returning.
    pub fn put_domain(&self, record: &records::DomainRecord) -> Result<(), StoreError> {
        self.meta
            .insert(key(&record.name), records::encode_domain(record))?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Removes a domain, synced before returning: whether it was stored.
    pub fn delete_domain(&self, name: &str) -> Result<bool, StoreError> {
        if self.meta.get(key(name))?.is_none() {
            return Ok(false);
        }
        self.meta.remove(key(name))?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(true)
    }

    /// Whether any link lives on `name` (its links are keyed `name/code`).
    pub fn has_links_on(&self, name: &str) -> Result<bool, StoreError> {
        match self.links.prefix(format!("{name}/")).next() {
            Some(guard) => Ok(guard.key().is_ok()),
            None => Ok(false),
        }
    }
}
