//! The totals record (how many links and clicks are stored, see [`records::Totals`]): read at
//! open, staged by the writer in the same atomic batch as each group, and the copy in memory
//! that the last committed record says.

use std::sync::PoisonError;

use fjall::PersistMode;

use super::{Store, StoreError, Totals, records};

/// What one commit adds to and takes from the [`Totals`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TotalsChange {
    pub links: u64,
    pub clicks: u64,
    pub expired: u64,
    pub deleted_links: u64,
    pub deleted_clicks: u64,
}

impl Store {
    /// How many links and clicks are stored (as of the last commit).
    pub fn totals(&self) -> Totals {
        *self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn totals_record(&self) -> Result<Option<Totals>, StoreError> {
        match self.meta.get(records::TOTALS_KEY)? {
            Some(bytes) => Ok(Some(records::decode_totals(&bytes)?)),
            None => Ok(None),
        }
    }

    pub(super) fn put_totals(&self, totals: Totals) -> Result<(), StoreError> {
        self.meta
            .insert(records::TOTALS_KEY, records::encode_totals(&totals))?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    /// Puts the totals after a group commit of `change` into the group's `batch` (one record
    /// per group, so the batch's atomicity keeps it equal to what is stored). Pass the result
    /// to [`Store::committed`] once the batch is committed.
    pub(super) fn stage_totals(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        change: TotalsChange,
    ) -> Totals {
        let before = self.totals();
        let after = Totals {
            v: records::RECORD_VERSION,
            links: (before.links + change.links).saturating_sub(change.deleted_links),
            clicks: (before.clicks + change.clicks)
                .saturating_sub(change.expired + change.deleted_clicks),
            expired: before.expired + change.expired,
            deleted_links: before.deleted_links + change.deleted_links,
            deleted_clicks: before.deleted_clicks + change.deleted_clicks,
        };
        batch.insert(
            &self.meta,
            records::TOTALS_KEY,
            records::encode_totals(&after),
        );
        after
    }

    /// Records that a batch staged by [`Store::stage_totals`] is committed.
    pub(super) fn committed(&self, totals: Totals) {
        *self.totals.lock().unwrap_or_else(PoisonError::into_inner) = totals;
    }
}
