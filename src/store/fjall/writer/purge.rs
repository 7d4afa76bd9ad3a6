//! Purging a deleted link's clicks: in steps between groups, from the end, with its
//! aggregates at the last step; a code made again after its hold is purged first.

use std::collections::VecDeque;

use fjall::PersistMode;
use tracing::debug;

use super::super::{Store, TotalsChange};
use crate::{
    domain::ShortCode,
    store::{
        StoreError, records,
        writer::{Health, LinkOp, group::Group},
    },
};

/// Clicks of a deleted link removed per commit: a purge of millions goes in steps between the
/// groups of clicks, never holding them up for long.
const PURGE_CHUNK: usize = 10_000;

/// One step of the first purge waiting.
pub(super) fn purge_one_step(
    store: &Store,
    purges: &mut VecDeque<(ShortCode, u64)>,
    health: &Health,
) {
    let Some((code, below)) = purges.front_mut() else {
        return;
    };
    match purge_step(store, code, below) {
        Ok(true) => {
            purges.pop_front();
        }
        Ok(false) => {}
        Err(e) => {
            health.fail(format!("a purge failed: {e}"));
            purges.clear();
        }
    }
}

/// A code made again after its hold: what is left of its old clicks goes first, or the purge
/// would take the new link's.
pub(super) fn purge_before_create(
    store: &Store,
    group: &Group,
    purges: &mut VecDeque<(ShortCode, u64)>,
    health: &Health,
) {
    for op in &group.links {
        if let LinkOp::Create(link, _) = op
            && let Some(at) = purges.iter().position(|(c, _)| *c == link.code)
        {
            let mut below = purges[at].1;
            let purged = loop {
                match purge_step(store, &link.code, &mut below) {
                    Ok(true) => break true,
                    Ok(false) => {}
                    Err(e) => {
                        health.fail(format!("a purge failed: {e}"));
                        break false;
                    }
                }
            };
            if purged {
                purges.retain(|(c, _)| *c != link.code);
            }
        }
    }
}

/// One step of purging a deleted link: removes up to [`PURGE_CHUNK`] of its clicks from the
/// end, and its aggregates with the last of them, in one batch with the totals. True when
/// nothing is left.
fn purge_step(store: &Store, code: &ShortCode, below: &mut u64) -> Result<bool, StoreError> {
    let keys = store.last_click_keys(code.as_str(), *below, PURGE_CHUNK)?;
    let done = keys.len() < PURGE_CHUNK;
    if let Some(lowest) = keys.last() {
        *below = records::click_seq(lowest, lowest.len() - 8)?;
    }
    let mut batch = store.db.batch();
    for key in &keys {
        batch.remove(&store.clicks, key.as_slice());
    }
    if done {
        batch.remove(&store.stats, code.as_str());
        batch.remove(&store.stats, records::covers_key(code.as_str()));
    }
    let totals = store.stage_totals(
        &mut batch,
        TotalsChange {
            deleted_clicks: keys.len() as u64,
            ..TotalsChange::default()
        },
    );
    batch.commit()?;
    store.db.persist(PersistMode::Buffer)?;
    store.committed(totals);
    if done {
        debug!(code = %code, "deleted link purged");
    }
    Ok(done)
}
