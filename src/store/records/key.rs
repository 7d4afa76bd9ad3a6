//! API key records: only the key's hash is the key of the record.

use serde::{Deserialize, Serialize};

use super::{DecodeError, check_version, decode, encode};
use crate::domain::{KeyId, Scope};

/// An API key as stored: only its hash is the key of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub v: u8,
    pub id: KeyId,
    pub name: String,
    /// Kept equal to `scope == admin`: what a record written before scopes says.
    pub admin: bool,
    pub created_at: i64,
    /// `None` in a record written before scopes: see [`KeyRecord::scope`].
    #[serde(default)]
    pub scope: Option<Scope>,
    /// Milliseconds since the epoch, saved at most once a minute (see `keys::ApiKeys`).
    #[serde(default)]
    pub last_used_at: Option<i64>,
    /// The workspace it acts in; `None`: the first (every key from before workspaces).
    #[serde(default)]
    pub workspace: Option<String>,
}

impl KeyRecord {
    /// The key's scope; a record from before scopes is `admin` or `links` as its flag says.
    pub fn scope(&self) -> Scope {
        self.scope.unwrap_or(if self.admin {
            Scope::Admin
        } else {
            Scope::Links
        })
    }
}

pub fn encode_key(record: &KeyRecord) -> Vec<u8> {
    encode(record)
}

pub fn decode_key(bytes: &[u8]) -> Result<KeyRecord, DecodeError> {
    let r: KeyRecord = decode("key", bytes)?;
    check_version("key", r.v)?;
    Ok(r)
}
