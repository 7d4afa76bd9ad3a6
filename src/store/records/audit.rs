//! Audit entries: one per change (links, keys, domains, members, workspaces, settings),
//! numbered across the installation. The `/api/events` stream replays them by number.

use serde::{Deserialize, Serialize};

use super::{DecodeError, check_version, decode, encode};

/// A change as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub v: u8,
    /// Its number, from 1, in the order the store took the entries (0 until stored).
    pub seq: u64,
    /// When, in epoch milliseconds.
    pub at: i64,
    pub workspace: String,
    /// A person's email, or `key {id} ({name})`.
    pub who: String,
    /// What happened: `link.created`, `key.revoked`, `member.updated`, ...
    pub action: String,
    /// What it happened to: a link's `domain/code` or code, a key's id, a member's id, ...
    pub target: String,
    /// The thing before and after, as JSON (`None`: it did not exist).
    pub before: Option<String>,
    pub after: Option<String>,
}

pub fn encode_audit(record: &AuditRecord) -> Vec<u8> {
    encode(record)
}

pub fn decode_audit(bytes: &[u8]) -> Result<AuditRecord, DecodeError> {
    let r: AuditRecord = decode("audit", bytes)?;
    check_version("audit", r.v)?;
    Ok(r)
}
