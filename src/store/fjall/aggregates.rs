//! Each link's aggregates snapshot in the `stats` keyspace: reading it, building the ones a
//! store made before analytics lacks, and finding the clicks `--click-retention-days` may let
//! go (only those a readable snapshot covers).

use std::time::Instant;

use fjall::PersistMode;
use tracing::{info, warn};

use super::{AGGREGATES_BUILT, Store, StoreError, records};
use crate::analytics::{Aggregates, aggregates};

impl Store {
    /// A link's stored aggregates snapshot. One that cannot be read (a damaged block, an
    /// undecodable record) is reported and left out: the caller rebuilds the aggregates from the
    /// click log, which holds everything they are made of.
    pub fn aggregates(&self, code: &str) -> Result<Option<Aggregates>, StoreError> {
        let bytes = match self.stats.get(code) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            // A damaged block of derived data: the click log has it all.
            Err(e) => {
                warn!(code, cause = %e, "unreadable aggregates; rebuilding them from the click log");
                return Ok(None);
            }
        };
        match aggregates::decode_snapshot(&bytes) {
            Ok(aggregates) => Ok(Some(aggregates)),
            Err(cause) => {
                warn!(code, %cause, "unreadable aggregates; rebuilding them from the click log");
                Ok(None)
            }
        }
    }

    /// The last click the stored aggregates snapshot of `code` covers (0: none).
    pub fn covers(&self, code: &str) -> Result<u64, StoreError> {
        let bytes = self.stats.get(records::covers_key(code))?;
        Ok(records::decode_covers(bytes.as_deref()))
    }

    /// The code of the first click at or after the key `from`, and `from` moved past every
    /// click of that code (the code followed by 0x01): one seek per code.
    fn next_clicked_code(&self, from: &mut Vec<u8>) -> Result<Option<String>, StoreError> {
        let Some(first) = self.clicks.range(from.clone()..).next() else {
            return Ok(None);
        };
        let key = first.key()?;
        let split = key
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| StoreError::Inconsistent("a click key without a code".into()))?;
        *from = key[..split].to_vec();
        from.push(1);
        Ok(Some(String::from_utf8_lossy(&key[..split]).into_owned()))
    }

    /// Once per store: gives every code with clicks but no aggregates snapshot (a store made
    /// before analytics) its snapshot, in one pass over their clicks, before the service starts
    /// (so no actor has to fold millions of clicks while its link is being clicked). Returns
    /// how many codes it built. Later starts read one marker record.
    pub fn build_missing_aggregates(
        &self,
        settings: &aggregates::AggregateSettings,
    ) -> Result<u64, StoreError> {
        if self.meta.get(AGGREGATES_BUILT)?.is_some() {
            return Ok(0);
        }
        let started = Instant::now();
        let key = self.visitor_key();
        let mut built = 0;
        let mut from: Vec<u8> = Vec::new();
        while let Some(code) = self.next_clicked_code(&mut from)? {
            if self.covers(&code)? > 0 {
                continue;
            }
            let mut aggregates = Aggregates::default();
            self.clicks_after(&code, 0, |event| {
                aggregates
                    .fold(&event, &key, settings)
                    .map_err(|e| StoreError::Inconsistent(format!("code {code}: {e}")))
            })?;
            let bytes = aggregates::encode_snapshot(&aggregates).ok_or_else(|| {
                StoreError::Inconsistent(format!("code {code}: aggregates not encodable"))
            })?;
            let mut batch = self.db.batch();
            batch.insert(&self.stats, code.as_str(), bytes);
            batch.insert(
                &self.stats,
                records::covers_key(&code),
                aggregates.covers().to_be_bytes(),
            );
            batch.commit()?;
            built += 1;
        }
        self.meta.insert(AGGREGATES_BUILT, [1])?;
        self.db.persist(PersistMode::SyncAll)?;
        if built > 0 {
            info!(
                codes = built,
                took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "built the aggregates of links stored before analytics"
            );
        }
        Ok(built)
    }

    /// Finds the clicks `--click-retention-days` lets go: of each code, those made before
    /// `cutoff` (epoch ms) that its stored aggregates cover, never its last click (it carries
    /// the count). Walks each code from its first click and skips to the next code at the first
    /// click that must stay. Hands the keys to `delete` in chunks of at most `chunk`; stops
    /// when `delete` says so. Returns how many were handed over.
    pub fn expirable(
        &self,
        cutoff: i64,
        chunk: usize,
        mut delete: impl FnMut(Vec<Vec<u8>>) -> bool,
    ) -> Result<u64, StoreError> {
        let mut found = 0;
        let mut keys = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        'codes: while let Some(code) = self.next_clicked_code(&mut from)? {
            let prefix = records::click_prefix(&code);
            // Only what a readable snapshot covers: a click expired under a snapshot that
            // cannot be read back could never be folded in again.
            let covers = self
                .aggregates(&code)?
                .map_or(0, |a| a.covers())
                .min(self.covers(&code)?);
            let last = self.counter(&code)?.count;
            for guard in self.clicks.prefix(&prefix) {
                let (key, value) = guard.into_inner()?;
                let click = records::decode_click(&value)?;
                if click.at >= cutoff || click.seq > covers || click.seq >= last {
                    break;
                }
                keys.push(key.to_vec());
                found += 1;
                if keys.len() >= chunk && !delete(std::mem::take(&mut keys)) {
                    break 'codes;
                }
            }
        }
        if !keys.is_empty() {
            delete(keys);
        }
        Ok(found)
    }
}
