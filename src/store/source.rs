//! What `linkpulse export` reads from a store, whichever engine keeps it: the visitor-hash
//! secret, the API keys' records, every link in code order, every click by code and number,
//! and each code's aggregates snapshot as stored.

use super::{KeyRecord, StoreError};
use crate::domain::{ClickEvent, Link};

/// A store read whole, for an export. Blocking: call it off the async threads.
pub trait ExportSource {
    /// The secret behind visitor hashes.
    fn visitor_key_bytes(&self) -> [u8; 32];
    /// Every API key's record (never the key).
    fn key_records(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Every domain links may live on besides the default one.
    fn domain_records(&self) -> Result<Vec<super::records::DomainRecord>, StoreError>;
    /// Calls `each` with every link, in code order.
    fn each_link(&self, each: &mut dyn FnMut(Link) -> anyhow::Result<()>) -> anyhow::Result<()>;
    /// Calls `each` with every click of a link and its code, by code (in code order) and
    /// then by number.
    fn each_click(
        &self,
        each: &mut dyn FnMut(&str, ClickEvent) -> anyhow::Result<()>,
    ) -> anyhow::Result<()>;
    /// A code's readable aggregates snapshot as stored, with the last click it covers.
    fn snapshot_bytes(&self, code: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
}

impl ExportSource for super::Store {
    fn visitor_key_bytes(&self) -> [u8; 32] {
        Self::visitor_key_bytes(self)
    }

    fn key_records(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.api_keys()?.into_iter().map(|(_, r)| r).collect())
    }

    fn domain_records(&self) -> Result<Vec<super::records::DomainRecord>, StoreError> {
        self.domains()
    }

    fn each_link(&self, each: &mut dyn FnMut(Link) -> anyhow::Result<()>) -> anyhow::Result<()> {
        Self::each_link(self, each)
    }

    fn each_click(
        &self,
        each: &mut dyn FnMut(&str, ClickEvent) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        Self::each_click(self, each)
    }

    fn snapshot_bytes(&self, code: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Self::snapshot_bytes(self, code)
    }
}
