//! API keys. A key is shown once, when it is made; the store keeps only its SHA-256 hash. Keys
//! are random (190 bits), so a plain hash is enough: there is nothing to brute-force.

use std::sync::{
    Mutex, PoisonError, RwLock,
    atomic::{AtomicI64, Ordering},
};

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::domain::Scope;
use crate::{
    accounts::{Role, stored_id, workspace_of},
    domain::{KeyId, format_ms, now_ms},
    store::{Backend, KeyRecord, SharedStore, StoreError, records::RECORD_VERSION},
};

const KEY_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const KEY_RANDOM_LEN: usize = 32;
/// The longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A key's name: 1 to [`MAX_NAME_CHARS`] characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(String);

impl KeyName {
    pub fn parse(raw: &str) -> Result<Self, KeyError> {
        let chars = raw.chars().count();
        if !(1..=MAX_NAME_CHARS).contains(&chars) {
            return Err(KeyError::BadName(format!(
                "name must be 1 to {MAX_NAME_CHARS} characters, not {chars}"
            )));
        }
        if raw.chars().any(char::is_control) {
            return Err(KeyError::BadName(
                "name must not hold control characters".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    BadName(String),
    #[error("no key with id '{0}'")]
    NotFound(String),
    #[error(
        "this is the last admin key and the one making the request; make another admin key \
         before revoking it"
    )]
    LastAdmin,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who a request is on behalf of: a key, or a signed-in person, acting in one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's id, or the person's user id.
    pub key_id: KeyId,
    pub scope: Scope,
    pub workspace: String,
    /// Who, as the audit log names them: a person's email, or `key {id} ({name})`.
    pub who: String,
    /// A signed-in person's role in the workspace; `None` for a key.
    pub role: Option<Role>,
}

impl Caller {
    /// A key's caller.
    pub fn of_key(record: &KeyRecord) -> Self {
        Self {
            key_id: record.id.clone(),
            scope: record.scope(),
            workspace: workspace_of(record.workspace.as_deref()).to_owned(),
            who: format!("key {} ({})", record.id, record.name),
            role: None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.scope == Scope::Admin
    }

    /// Whether this caller may see a thing of `workspace` owned by `owner`, and change it if
    /// [`Caller::may_write`]: in the caller's workspace, an admin every link, a `links` caller
    /// its own, a `read` caller (a viewer, or a key for dashboards) every link, read-only.
    pub fn may_manage(&self, workspace: &str, owner: &str) -> bool {
        self.workspace == workspace && (self.scope != Scope::Links || self.key_id == owner)
    }

    /// Whether this caller may change anything (a `read` key may not).
    pub fn may_write(&self) -> bool {
        self.scope != Scope::Read
    }
}

/// A key as listed: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "KeyInfo"))]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub id: KeyId,
    pub name: String,
    pub scope: Scope,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// A key just made: the only time the key itself is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, salvo_oapi::ToSchema)]
#[salvo(schema(name = "NewKey"))]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    pub id: KeyId,
    pub name: String,
    pub scope: Scope,
    pub key: String,
    pub created_at: String,
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

fn new_record(hash: &[u8; 32], name: &str, scope: Scope, workspace: &str) -> KeyRecord {
    KeyRecord {
        v: RECORD_VERSION,
        id: key_id(hash),
        name: name.to_owned(),
        admin: scope == Scope::Admin,
        created_at: now_ms(),
        scope: Some(scope),
        last_used_at: None,
        workspace: stored_id(workspace),
    }
}

/// Stores `key` (if it is not stored yet) as an `admin` or `links` key and returns its record
/// (the first key, `--initial-api-key`, tests).
pub fn store_key(
    store: &dyn Backend,
    key: &str,
    name: &str,
    admin: bool,
) -> Result<KeyRecord, StoreError> {
    let scope = if admin { Scope::Admin } else { Scope::Links };
    let hash = hash_key(key);
    if let Some((_, record)) = store.api_keys()?.into_iter().find(|(h, _)| *h == hash) {
        return Ok(record);
    }
    let record = new_record(&hash, name, scope, crate::accounts::FIRST_WORKSPACE);
    store.put_api_key(hash, &record)?;
    Ok(record)
}

/// One valid key in memory.
struct Entry {
    hash: [u8; 32],
    record: KeyRecord,
    /// When it was last used (ms since the epoch, 0: never): set by every request, cheaply.
    last_used: AtomicI64,
    /// The `last_used` value the store holds.
    saved: AtomicI64,
}

impl Entry {
    fn new(hash: [u8; 32], record: KeyRecord) -> Self {
        let at = record.last_used_at.unwrap_or(0);
        Self {
            hash,
            record,
            last_used: AtomicI64::new(at),
            saved: AtomicI64::new(at),
        }
    }

    fn info(&self) -> KeyInfo {
        let last = self.last_used.load(Ordering::Relaxed);
        KeyInfo {
            id: self.record.id.clone(),
            name: self.record.name.clone(),
            scope: self.record.scope(),
            created_at: format_ms(self.record.created_at),
            last_used_at: (last > 0).then(|| format_ms(last)),
        }
    }
}

/// The valid keys, held in memory (they are few) and checked without early exit. Changes go
/// to the store first (synced), then to memory, one at a time: a revoked key is refused from
/// the moment its revocation is answered. Last-used times live in memory and reach the store
/// through [`ApiKeys::save_last_used`] (once a minute, and at a clean stop), never per request.
pub struct ApiKeys {
    store: SharedStore,
    keys: RwLock<Vec<Entry>>,
    /// Held by every write of key records, so a save of last-used times never brings back a
    /// key revoked meanwhile.
    writes: Mutex<()>,
}

impl ApiKeys {
    /// The store the keys live in (the control socket manages users there too).
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub fn load(store: &SharedStore) -> Result<Self, StoreError> {
        let keys = store
            .api_keys()?
            .into_iter()
            .map(|(hash, record)| Entry::new(hash, record))
            .collect();
        Ok(Self {
            store: store.clone(),
            keys: RwLock::new(keys),
            writes: Mutex::new(()),
        })
    }

    /// Takes in the keys made or revoked elsewhere (another node of a cluster): the store's
    /// copy is current, this one follows it. Last-used times of kept keys stay.
    pub fn follow_store(&self) -> Result<(), StoreError> {
        let stored: std::collections::HashMap<[u8; 32], KeyRecord> =
            self.store.api_keys()?.into_iter().collect();
        // Most seconds nothing changed: seen under the read lock authentications share, the
        // write lock (which holds them up) is not taken at all.
        {
            let keys = self.read();
            if keys.len() == stored.len() && keys.iter().all(|e| stored.contains_key(&e.hash)) {
                return Ok(());
            }
        }
        let _writing = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.retain(|e| stored.contains_key(&e.hash));
        let held: std::collections::HashSet<[u8; 32]> = keys.iter().map(|e| e.hash).collect();
        for (hash, record) in stored {
            if !held.contains(&hash) {
                keys.push(Entry::new(hash, record));
            }
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many keys are valid now.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The caller a presented key stands for, if it is valid; notes the use.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        let hash = hash_key(presented);
        let keys = self.read();
        let mut found = None;
        // Compare against every key, each in constant time, so timing says nothing about
        // which bytes matched.
        for entry in keys.iter() {
            if bool::from(entry.hash.ct_eq(&hash)) {
                found = Some(entry);
            }
        }
        let entry = found?;
        entry.last_used.fetch_max(now_ms(), Ordering::Relaxed);
        Some(Caller::of_key(&entry.record))
    }

    /// Makes, stores (synced) and admits a new key of `workspace`. Blocking: call it off the
    /// async threads.
    pub fn create(
        &self,
        name: &KeyName,
        scope: Scope,
        workspace: &str,
    ) -> Result<NewKey, KeyError> {
        let _writing = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        let key = generate_key();
        let hash = hash_key(&key);
        let record = new_record(&hash, name.as_str(), scope, workspace);
        self.store.put_api_key(hash, &record)?;
        let made = NewKey {
            id: record.id.clone(),
            name: record.name.clone(),
            scope,
            key,
            created_at: format_ms(record.created_at),
        };
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Entry::new(hash, record));
        Ok(made)
    }

    /// Every key of `workspace` (of all, with `None`), oldest first.
    pub fn list(&self, workspace: Option<&str>) -> Vec<KeyInfo> {
        let keys = self.read();
        let mut entries: Vec<&Entry> = keys
            .iter()
            .filter(|e| workspace.is_none_or(|w| workspace_of(e.record.workspace.as_deref()) == w))
            .collect();
        entries.sort_by(|a, b| {
            (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id))
        });
        entries.into_iter().map(Entry::info).collect()
    }

    /// Removes the key `id` from the store (synced), then from memory: its next request is
    /// refused. With `by` (a request over HTTP), only a key of `by`'s workspace, and the last
    /// admin key may not revoke itself. Blocking: call it off the async threads.
    pub fn revoke(&self, id: &str, by: Option<&Caller>) -> Result<(), KeyError> {
        let _writing = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        let (hash, scope) = {
            let keys = self.read();
            let entry = keys
                .iter()
                .find(|e| {
                    e.record.id == id
                        && by.is_none_or(|c| {
                            workspace_of(e.record.workspace.as_deref()) == c.workspace
                        })
                })
                .ok_or_else(|| KeyError::NotFound(id.to_owned()))?;
            let admins = keys
                .iter()
                .filter(|e| e.record.scope() == Scope::Admin)
                .count();
            let scope = entry.record.scope();
            if by.is_some_and(|c| c.key_id == id) && scope == Scope::Admin && admins == 1 {
                return Err(KeyError::LastAdmin);
            }
            (entry.hash, scope)
        };
        self.store.revoke_api_key(hash)?;
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|e| e.hash != hash);
        tracing::info!(id, scope = %scope, "API key revoked");
        Ok(())
    }

    /// Writes the last-used times that changed since the last save, in one synced batch.
    /// Returns how many. Blocking: call it off the async threads.
    pub fn save_last_used(&self) -> Result<usize, StoreError> {
        let _writing = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        let changed: Vec<([u8; 32], KeyRecord, i64)> = self
            .read()
            .iter()
            .filter_map(|e| {
                let at = e.last_used.load(Ordering::Relaxed);
                (at > e.saved.load(Ordering::Relaxed)).then(|| {
                    let mut record = e.record.clone();
                    record.last_used_at = Some(at);
                    (e.hash, record, at)
                })
            })
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        let records: Vec<([u8; 32], KeyRecord)> = changed
            .iter()
            .map(|(hash, record, _)| (*hash, record.clone()))
            .collect();
        self.store.put_api_keys(&records)?;
        let keys = self.read();
        for (hash, _, at) in &changed {
            if let Some(e) = keys.iter().find(|e| e.hash == *hash) {
                e.saved.fetch_max(*at, Ordering::Relaxed);
            }
        }
        Ok(changed.len())
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

    /// Following the store each second takes the lock authentications wait on only when a
    /// key was made or revoked elsewhere: with nothing changed it passes a reader by.
    #[test]
    fn following_an_unchanged_store_never_holds_up_authentication()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: SharedStore = std::sync::Arc::new(crate::store::Store::open(dir.path())?);
        let key = generate_key();
        store_key(&*store, &key, "test", false)?;
        let keys = std::sync::Arc::new(ApiKeys::load(&store)?);
        let (done, finished) = std::sync::mpsc::channel();
        let following = keys.clone();
        let reader = keys.read();
        // An authentication in progress holds the read lock meanwhile.
        std::thread::spawn(move || {
            let _ = done.send(following.follow_store().is_ok());
        });
        let followed = finished.recv_timeout(std::time::Duration::from_secs(30));
        drop(reader);
        assert_eq!(
            followed,
            Ok(true),
            "following waited for the authentication"
        );
        // A key made elsewhere is still taken in.
        store_key(&*store, &generate_key(), "elsewhere", false)?;
        keys.follow_store()?;
        assert_eq!(keys.len(), 2);
        Ok(())
    }

    #[test]
    fn authenticates_only_stored_keys() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: SharedStore = std::sync::Arc::new(crate::store::Store::open(dir.path())?);
        let key = generate_key();
        let record = store_key(&*store, &key, "test", false)?;
        let keys = ApiKeys::load(&store)?;
        let caller = keys.authenticate(&key);
        assert_eq!(
            caller,
            Some(Caller {
                key_id: record.id.clone(),
                scope: Scope::Links,
                workspace: crate::accounts::FIRST_WORKSPACE.into(),
                who: format!("key {} (test)", record.id),
                role: None,
            })
        );
        assert_eq!(keys.authenticate("lp_wrong"), None);
        assert_eq!(keys.authenticate(""), None);
        // Storing the same key again keeps one record.
        assert_eq!(store_key(&*store, &key, "again", true)?, record);
        assert_eq!(store.api_keys()?.len(), 1);
        Ok(())
    }

    #[test]
    fn revoked_keys_are_refused_and_last_use_is_saved_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: SharedStore = std::sync::Arc::new(crate::store::Store::open(dir.path())?);
        let keys = ApiKeys::load(&store)?;
        let admin = keys.create(&KeyName::parse("ops")?, Scope::Admin, "default")?;
        let reader = keys.create(&KeyName::parse("dash")?, Scope::Read, "default")?;
        let caller = keys.authenticate(&admin.key).ok_or("admin key valid")?;
        assert!(caller.is_admin() && caller.may_write());
        let read = keys.authenticate(&reader.key).ok_or("read key valid")?;
        assert!(!read.may_write() && read.may_manage("default", "any owner"));
        // Both were used: one batch saves both, a second save has nothing new.
        assert_eq!(keys.save_last_used()?, 2);
        assert_eq!(keys.save_last_used()?, 0);
        let stored = store.api_keys()?;
        assert!(
            stored.iter().all(|(_, r)| r.last_used_at.is_some()),
            "{stored:?}"
        );

        assert!(matches!(
            keys.revoke(&admin.id, Some(&caller)),
            Err(KeyError::LastAdmin)
        ));
        assert!(matches!(
            keys.revoke("nope", None),
            Err(KeyError::NotFound(_))
        ));
        keys.revoke(&reader.id, Some(&caller))?;
        assert_eq!(keys.authenticate(&reader.key), None);
        assert_eq!(ApiKeys::load(&store)?.authenticate(&reader.key), None);
        assert_eq!(keys.list(None).len(), 1);
        Ok(())
    }

    #[test]
    fn names_are_one_to_a_hundred_printable_characters() {
        assert!(KeyName::parse("").is_err());
        assert!(KeyName::parse(&"é".repeat(100)).is_ok());
        assert!(KeyName::parse(&"a".repeat(101)).is_err());
        assert!(KeyName::parse("tab\there").is_err());
    }
}
