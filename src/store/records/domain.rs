//! Domain records: a domain links may live on, under its ASCII name.

use serde::{Deserialize, Serialize};

use super::{DecodeError, check_version, decode, encode};

/// A domain as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub v: u8,
    /// The name in its ASCII (punycode) form, lower case.
    pub name: String,
    /// The id of the key that added it.
    pub owner: String,
    pub created_at: i64,
    /// Where `GET /` on this domain goes.
    pub root_url: Option<String>,
    /// Where an unknown code on this domain goes.
    pub not_found_url: Option<String>,
    /// Its links are shown with `https://`.
    pub https: bool,
    /// HTTPS answers carry `Strict-Transport-Security`.
    pub hsts: bool,
    /// Plain-HTTP requests are answered `308` to HTTPS.
    pub https_only: bool,
    /// The workspace it belongs to; `None`: the first (every domain from before workspaces).
    #[serde(default)]
    pub workspace: Option<String>,
}

pub fn encode_domain(record: &DomainRecord) -> Vec<u8> {
    encode(record)
}

pub fn decode_domain(bytes: &[u8]) -> Result<DomainRecord, DecodeError> {
    let r: DomainRecord = decode("domain", bytes)?;
    check_version("domain", r.v)?;
    Ok(r)
}
