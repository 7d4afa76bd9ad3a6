//! The audit log in the `meta` keyspace: `audit 0x00 workspace 0x00 seq(be)` per entry, and
//! `audit-seq`, the last number given, written in the same synced batch as its entry.

use fjall::PersistMode;

use super::{Store, StoreError};
use crate::store::records::{AuditRecord, decode_audit, encode_audit};

const PREFIX: &[u8] = b"audit\0";
const LAST: &[u8] = b"audit-seq";

fn workspace_prefix(workspace: &str) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(workspace.as_bytes());
    key.push(0);
    key
}

fn entry_key(workspace: &str, seq: u64) -> Vec<u8> {
    let mut key = workspace_prefix(workspace);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

impl Store {
    /// Stores `record` as the next entry (synced) and returns its number.
    pub fn append_audit(&self, record: &AuditRecord) -> Result<u64, StoreError> {
        let mut numbers = self.append_audits(std::slice::from_ref(record))?;
        Ok(numbers.pop().unwrap_or_default())
    }

    /// Stores `records` as the next entries, in order, in one synced batch; their numbers.
    pub fn append_audits(&self, records: &[AuditRecord]) -> Result<Vec<u64>, StoreError> {
        let mut last = self
            .audit_seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = match *last {
            Some(n) => n,
            None => match self.meta.get(LAST)? {
                Some(bytes) => <[u8; 8]>::try_from(&bytes[..])
                    .map(u64::from_be_bytes)
                    .unwrap_or(0),
                None => 0,
            },
        };
        let mut batch = self.db.batch();
        let mut numbers = Vec::with_capacity(records.len());
        for (seq, record) in (current + 1..).zip(records) {
            let mut record = record.clone();
            record.seq = seq;
            batch.insert(
                &self.meta,
                entry_key(&record.workspace, seq),
                encode_audit(&record),
            );
            numbers.push(seq);
        }
        let Some(&seq) = numbers.last() else {
            return Ok(numbers);
        };
        batch.insert(&self.meta, LAST, seq.to_be_bytes());
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        *last = Some(seq);
        Ok(numbers)
    }

    /// Up to `limit` entries of `workspace` numbered below `before` (all, without), newest
    /// first.
    pub fn audit_before(
        &self,
        workspace: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let start = entry_key(workspace, 0);
        let end = entry_key(workspace, before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        for guard in self.meta.range(start..end).rev().take(limit) {
            let (_, value) = guard.into_inner()?;
            out.push(decode_audit(&value)?);
        }
        Ok(out)
    }

    /// Up to `limit` entries of `workspace` numbered above `after`, oldest first.
    pub fn audit_after(
        &self,
        workspace: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let start = entry_key(workspace, after.saturating_add(1));
        let end = entry_key(workspace, u64::MAX);
        let mut out = Vec::new();
        for guard in self.meta.range(start..=end).take(limit) {
            let (_, value) = guard.into_inner()?;
            out.push(decode_audit(&value)?);
        }
        Ok(out)
    }

    /// Deletes the entries made before `cutoff` (epoch milliseconds); returns how many.
    pub fn trim_audit(&self, cutoff: i64) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for guard in self.meta.prefix(PREFIX) {
            let (key, value) = guard.into_inner()?;
            if decode_audit(&value).is_ok_and(|r| r.at < cutoff) {
                old.push(key);
            }
        }
        for chunk in old.chunks(1000) {
            let mut batch = self.db.batch();
            for key in chunk {
                batch.remove(&self.meta, key.clone());
            }
            batch.commit()?;
        }
        if !old.is_empty() {
            self.db.persist(PersistMode::SyncAll)?;
        }
        Ok(old.len())
    }
}
