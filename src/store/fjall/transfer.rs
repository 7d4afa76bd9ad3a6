//! What `linkpulse export` reads and `linkpulse import` writes (see `crate::transfer` for the
//! format): streaming reads of every link, click and snapshot, and an import path that commits
//! each part of an import as one atomic batch with the totals record, as the writer commits a
//! group. An import runs on a stopped server's store (fjall admits one process), so no writer
//! runs beside it.

use fjall::PersistMode;

use super::{AGGREGATES_BUILT, Store, StoreError, TotalsChange, VISITOR_KEY, records};
use crate::{
    analytics::aggregates,
    domain::{ClickEvent, Link},
};

/// Links, clicks and snapshots to commit together. Every code's clicks in it follow the ones
/// already stored (or begin at 1, or right after what a snapshot in the same batch covers),
/// so the store is whole after each batch: an import that stops half-way leaves whole links.
#[derive(Default)]
pub struct ImportBatch {
    links: Vec<Link>,
    clicks: Vec<(String, ClickEvent)>,
    aggregates: Vec<(String, u64, Vec<u8>)>,
}

impl ImportBatch {
    pub fn link(&mut self, link: Link) {
        self.links.push(link);
    }

    pub fn click(&mut self, code: &str, event: ClickEvent) {
        self.clicks.push((code.to_owned(), event));
    }

    /// A snapshot of the aggregates of clicks 1..=`covers` (MessagePack, as stored).
    pub fn aggregates(&mut self, code: &str, covers: u64, bytes: Vec<u8>) {
        self.aggregates.push((code.to_owned(), covers, bytes));
    }

    pub fn len(&self) -> usize {
        self.links.len() + self.clicks.len() + self.aggregates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (links, clicks) in the batch.
    pub fn counts(&self) -> (u64, u64) {
        (self.links.len() as u64, self.clicks.len() as u64)
    }
}

impl Store {
    /// Calls `each` with every stored link, in code order.
    pub fn each_link<E: From<StoreError>>(
        &self,
        mut each: impl FnMut(Link) -> Result<(), E>,
    ) -> Result<(), E> {
        for guard in self.links.iter() {
            let (_, value) = guard.into_inner().map_err(StoreError::from)?;
            each(records::decode_link(&value).map_err(StoreError::from)?)?;
        }
        Ok(())
    }

    /// Calls `each` with every stored click and its code, by code and then by number.
    pub fn each_click<E: From<StoreError>>(
        &self,
        mut each: impl FnMut(&str, ClickEvent) -> Result<(), E>,
    ) -> Result<(), E> {
        for guard in self.clicks.iter() {
            let (key, value) = guard.into_inner().map_err(StoreError::from)?;
            // `code 0x00 seq(big-endian, 8 bytes)`.
            let code = records::split_click_key(&key)
                .and_then(|(code, _)| std::str::from_utf8(code).ok())
                .ok_or_else(|| {
                    StoreError::Inconsistent(format!("malformed click key {}", hex::encode(&key)))
                })?;
            each(
                code,
                records::decode_click(&value).map_err(StoreError::from)?,
            )?;
        }
        Ok(())
    }

    /// A code's stored aggregates snapshot as stored, with the last click it covers; `None`
    /// when there is none or it cannot be read (the click log rebuilds it).
    pub fn snapshot_bytes(&self, code: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let covers = self.covers(code)?;
        let Some(bytes) = self.stats.get(code)? else {
            return Ok(None);
        };
        let readable = aggregates::decode_snapshot(&bytes).is_ok_and(|a| a.covers() == covers);
        Ok((covers > 0 && readable).then(|| (covers, bytes.to_vec())))
    }

    /// The secret behind visitor hashes (exported so that imported snapshots and the clicks
    /// that follow them count a returning visitor once).
    pub fn visitor_key_bytes(&self) -> [u8; 32] {
        self.visitor_key
    }

    /// Makes `key` this store's visitor-hash secret, if the store has never held a link or a
    /// click (else the unique counts of what it holds would change). Returns whether it did.
    pub fn adopt_visitor_key(&mut self, key: [u8; 32]) -> Result<bool, StoreError> {
        let totals = self.totals();
        if key == self.visitor_key {
            return Ok(true);
        }
        if totals.links_ever() > 0 || totals.clicks_ever() > 0 {
            return Ok(false);
        }
        self.meta.insert(VISITOR_KEY, key)?;
        self.db.persist(PersistMode::SyncAll)?;
        self.visitor_key = key;
        Ok(true)
    }

    /// Whether a new link may take `code`: no link has it and no deletion holds it at `now`.
    pub fn code_free(&self, code: &str, now: i64) -> Result<bool, StoreError> {
        Ok(!self.links.contains_key(code)? && self.gone_until(code)?.is_none_or(|t| t <= now))
    }

    /// Commits `part` in one atomic batch with the totals record, as a group commit does, and
    /// hands it to the OS. A batch with clicks also clears the marker that says every code
    /// has its aggregates, so the next start builds those of imported links that came without
    /// a snapshot (`Store::build_missing_aggregates`). Call [`Store::sync`] at the end.
    pub fn import(&self, part: ImportBatch) -> Result<(), StoreError> {
        if part.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for link in &part.links {
            self.stage_new_link(&mut batch, link);
        }
        for (code, event) in &part.clicks {
            batch.insert(
                &self.clicks,
                records::click_key(code, event.seq),
                records::encode_click(event),
            );
        }
        for (code, covers, bytes) in &part.aggregates {
            batch.insert(&self.stats, code.as_str(), bytes.as_slice());
            batch.insert(&self.stats, records::covers_key(code), covers.to_be_bytes());
        }
        if !part.clicks.is_empty() {
            batch.remove(&self.meta, AGGREGATES_BUILT);
        }
        let (links, clicks) = part.counts();
        let totals = self.stage_totals(
            &mut batch,
            TotalsChange {
                links,
                clicks,
                ..TotalsChange::default()
            },
        );
        batch.commit()?;
        self.db.persist(PersistMode::Buffer)?;
        self.committed(totals);
        Ok(())
    }
}
