//! API keys. A key is shown once, when it is made; the store keeps only its SHA-256 hash. Keys
//! are random (190 bits), so a plain hash is enough: there is nothing to brute-force.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    domain::{KeyId, now_ms},
    store::{KeyRecord, Store, StoreError, records::RECORD_VERSION},
};

const KEY_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const KEY_RANDOM_LEN: usize = 32;

/// Who a request is on behalf of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: KeyId,
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see and manage a link owned by `owner`.
    pub fn may_manage(&self, owner: &str) -> bool {
        self.admin || self.key_id == owner
    }
}

/// The valid keys, held in memory (they are few) and checked without early exit.
pub struct ApiKeys {
    keys: std::sync::RwLock<Vec<([u8; 32], KeyRecord)>>,
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn key_id(hash: &[u8; 32]) -> KeyId {
    hex::encode(&hash[..8])
}

/// A fresh random key: `lp_` and 32 base62 characters.
pub fn generate_key() -> String {
    let mut rng = rand::rng();
    let random: String = (0..KEY_RANDOM_LEN)
        .map(|_| char::from(KEY_ALPHABET[rng.random_range(0..KEY_ALPHABET.len())]))
        .collect();
    format!("lp_{random}")
}

/// Stores `key` (if it is not stored yet) and returns its record.
pub fn store_key(
    store: &Store,
    key: &str,
    name: &str,
    admin: bool,
) -> Result<KeyRecord, StoreError> {
    let hash = hash_key(key);
    if let Some((_, record)) = store.api_keys()?.into_iter().find(|(h, _)| *h == hash) {
        return Ok(record);
    }
    let record = KeyRecord {
        v: RECORD_VERSION,
        id: key_id(&hash),
        name: name.to_owned(),
        admin,
        created_at: now_ms(),
    };
    store.put_api_key(hash, &record)?;
    Ok(record)
}

impl ApiKeys {
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            keys: std::sync::RwLock::new(store.api_keys()?),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.read().map(|k| k.is_empty()).unwrap_or(true)
    }

    /// Adds a key made after loading.
    pub fn add(&self, key: &str, record: KeyRecord) {
        if let Ok(mut keys) = self.keys.write() {
            keys.push((hash_key(key), record));
        }
    }

    /// The caller a presented key stands for, if it is valid.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let hash = hash_key(presented);
        let keys = self.keys.read().ok()?;
        let mut found = None;
        // Compare against every key, each in constant time, so timing says nothing about
        // which bytes matched.
        for (stored, record) in keys.iter() {
            if bool::from(stored.ct_eq(&hash)) {
                found = Some(Caller {
                    key_id: record.id.clone(),
                    admin: record.admin,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_prefixed() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with("lp_"));
        assert_eq!(a.len(), 3 + KEY_RANDOM_LEN);
    }

    #[test]
    fn authenticates_only_stored_keys() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let key = generate_key();
        let record = store_key(&store, &key, "test", false)?;
        let keys = ApiKeys::load(&store)?;
        let caller = keys.authenticate(&key);
        assert_eq!(
            caller,
            Some(Caller {
                key_id: record.id.clone(),
                admin: false
            })
        );
        assert_eq!(keys.authenticate("lp_wrong"), None);
        assert_eq!(keys.authenticate(""), None);
        // Storing the same key again keeps one record.
        assert_eq!(store_key(&store, &key, "again", true)?, record);
        assert_eq!(store.api_keys()?.len(), 1);
        Ok(())
    }
}
