//! Certificate records: what the service knows of one domain's certificate ordered from an
//! ACME server, kept as the setting `cert.{name}` so every node serves it.

use serde::{Deserialize, Serialize};

use super::{DecodeError, check_version, decode, encode};

/// Where a domain's certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateStatus {
    /// An order is under way and no certificate was issued yet.
    Pending,
    /// A certificate is stored (a renewal may be under way or have failed: see `error`).
    Valid,
    /// No certificate could be had; `error` says why, `retry_at` when the next try is.
    Failed,
}

/// A domain's certificate as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    pub v: u8,
    /// The domain's ASCII name.
    pub name: String,
    pub status: CertificateStatus,
    /// The chain as PEM, leaf first.
    pub chain_pem: Option<String>,
    /// The private key as PEM (PKCS#8).
    pub key_pem: Option<String>,
    /// The issued certificate's validity, ms since the epoch (0 when there is none).
    pub not_before: i64,
    pub not_after: i64,
    /// Why the last order failed.
    pub error: Option<String>,
    /// Orders failed one after another since the last certificate (the backoff).
    pub failures: u32,
    /// No order before this time (ms since the epoch).
    pub retry_at: i64,
}

impl CertificateRecord {
    /// When a renewal starts: two thirds into the certificate's lifetime.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

pub fn encode_certificate(record: &CertificateRecord) -> Vec<u8> {
    encode(record)
}

pub fn decode_certificate(bytes: &[u8]) -> Result<CertificateRecord, DecodeError> {
    let r: CertificateRecord = decode("certificate", bytes)?;
    check_version("certificate", r.v)?;
    Ok(r)
}
