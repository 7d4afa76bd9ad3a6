//! On-disk encoding. Values are MessagePack with a version field `v` first. Links and keys are
//! maps with named fields; click records, written once per click, are compact arrays (fields by
//! position, about 40% smaller). Either way fields can only be added at the end, with
//! `#[serde(default)]`, so old records still decode. Keys that sort by number use big-endian
//! integers.
//!
//! Here: the version, the errors and the helpers every kind uses, and the [`Totals`] record.
//! Each kind has a file of its own (`link.rs`, `click.rs`, `key.rs`), and `layout.rs` says how
//! the keys of the keyspaces are laid out so that they sort as the store reads them.

mod audit;
mod certificate;
mod click;
mod domain;
mod key;
mod layout;
mod link;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use audit::{AuditRecord, decode_audit, encode_audit};
pub use certificate::{
    CertificateRecord, CertificateStatus, decode_certificate, encode_certificate,
};
pub use click::{decode_click, encode_click};
pub use domain::{DomainRecord, decode_domain, encode_domain};
pub use key::{KeyRecord, decode_key, encode_key};
pub use layout::{
    GONE_PREFIX, click_key, click_prefix, click_seq, covers_key, decode_covers, decode_gone,
    gone_key, index_position, owner_index_key, owner_index_prefix, split_click_key, time_index_key,
};
pub use link::{decode_link, encode_link};

/// The current version of every record kind.
pub const RECORD_VERSION: u8 = 1;

/// Why stored bytes could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("undecodable {what} record: {cause}")]
    Malformed { what: &'static str, cause: String },
    #[error("{what} record has unknown version {version}")]
    Version { what: &'static str, version: u8 },
    #[error("{what} record holds an invalid value: {cause}")]
    Invalid { what: &'static str, cause: String },
}

/// How many links and clicks the store holds, kept in the `meta` keyspace under [`TOTALS_KEY`]
/// and written by the group-commit writer in the same atomic batch as each group's clicks and
/// links. The journal replays a prefix of the batches, so after a crash the record still equals
/// what is stored, and the start-up check reads one record instead of counting the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub v: u8,
    pub links: u64,
    /// Clicks stored now.
    pub clicks: u64,
    /// Clicks deleted by `--click-retention-days` (their counts and aggregates stay).
    #[serde(default)]
    pub expired: u64,
    /// Links deleted through the API, and their clicks deleted so far.
    #[serde(default)]
    pub deleted_links: u64,
    #[serde(default)]
    pub deleted_clicks: u64,
}

impl Totals {
    /// Every click ever stored: what the floor compares, since expiry and deletion take
    /// clicks away.
    pub fn clicks_ever(&self) -> u64 {
        self.clicks + self.expired + self.deleted_clicks
    }

    /// Every link ever stored.
    pub fn links_ever(&self) -> u64 {
        self.links + self.deleted_links
    }
}

/// The key of the [`Totals`] record in the `meta` keyspace.
pub const TOTALS_KEY: &[u8] = b"totals";

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers into a Vec cannot fail.
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

fn encode_compact<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed {
        what,
        cause: e.to_string(),
    })
}

fn check_version(what: &'static str, v: u8) -> Result<(), DecodeError> {
    if v == RECORD_VERSION {
        Ok(())
    } else {
        Err(DecodeError::Version { what, version: v })
    }
}

/// Any record as stored (records other modules define: users, sessions).
pub fn encode_any<T: Serialize>(value: &T) -> Vec<u8> {
    encode(value)
}

/// Any record as read; `what` names it in an error.
pub fn decode_any<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    decode(what, bytes)
}

pub fn encode_totals(totals: &Totals) -> Vec<u8> {
    encode(&Totals {
        v: RECORD_VERSION,
        ..*totals
    })
}

pub fn decode_totals(bytes: &[u8]) -> Result<Totals, DecodeError> {
    let r: Totals = decode("totals", bytes)?;
    check_version("totals", r.v)?;
    Ok(r)
}
