//! One group as one atomic fjall batch: its link operations (each seeing the ones before it),
//! snapshots, expired clicks, each code's clicks and the totals record.

use std::{collections::HashMap, time::Duration};

use tracing::debug;

use super::super::{Store, TotalsChange};
use crate::{
    domain::{ClickEvent, Link, ShortCode, now_ms},
    store::{
        StoreError, WriteError, records,
        writer::{
            LinkOp, LinkOutcome,
            group::{Group, Item, Outcome, Pending},
        },
    },
};

/// Writes the group as one atomic batch: link operations first (each seeing the ones before
/// it), then snapshots, expired clicks and each code's clicks, with the totals record. Decides
/// each code's outcome: a code whose link is gone (before or in this group) stores none of
/// its clicks. Returns what became of each link operation, in order.
pub(super) fn commit(
    store: &Store,
    group: &mut Group,
    hold: Duration,
) -> Result<Vec<Result<LinkOutcome, WriteError>>, StoreError> {
    if group.clicks() == 0
        && group.links.is_empty()
        && group.aggregates.is_empty()
        && group.expired.is_empty()
    {
        return Ok(Vec::new());
    }
    let mut batch = store.db.batch();
    let mut change = TotalsChange::default();
    let outcomes = stage_links(store, &mut batch, &group.links, hold, &mut change);
    // Only deletions carried out (one whose read failed leaves the link, and its clicks).
    let deleted_here: Vec<&ShortCode> = group
        .links
        .iter()
        .zip(&outcomes)
        .filter_map(|(op, outcome)| match (op, outcome) {
            (LinkOp::Delete(code, _), Ok(LinkOutcome::Deleted(true))) => Some(code),
            _ => None,
        })
        .collect();
    stage_aggregates(store, &mut batch, &group.aggregates)?;
    change.expired = stage_expired(store, &mut batch, &group.expired)?;
    for pending in &mut group.codes {
        if deleted_here.contains(&&pending.code)
            || !store.links.contains_key(pending.code.as_str())?
        {
            pending.outcome = Outcome::Dropped;
            continue;
        }
        let (events, renumbered) = number(store, pending)?;
        for event in &events {
            batch.insert(
                &store.clicks,
                records::click_key(pending.code.as_str(), event.seq),
                records::encode_click(event),
            );
        }
        change.clicks += events.len() as u64;
        pending.outcome = Outcome::Stored {
            last: events.last().map_or(0, |e| e.seq),
            superseded: renumbered,
        };
    }
    // One totals record per group, in the same atomic batch (see `records::Totals`).
    let totals = store.stage_totals(&mut batch, change);
    debug!(
        clicks = change.clicks,
        links = group.links.len(),
        "group commit"
    );
    batch.commit()?;
    store.committed(totals);
    Ok(outcomes)
}

/// A code's clicks as they are stored: an actor's as it numbered them (on one node it is
/// the only one numbering its code); clicks of a code with no live actor after the code's
/// last stored click, in the order they came. The directory never lets both kinds of one
/// code meet in a group; if they did, all would be numbered after the stored ones.
fn number(store: &Store, pending: &Pending) -> Result<(Vec<ClickEvent>, bool), StoreError> {
    if !pending.all_fresh() && pending.items.iter().all(|i| matches!(i, Item::Numbered(_))) {
        let events = pending.items.iter().map(|i| i.event().clone()).collect();
        return Ok((events, false));
    }
    let last = store.last_seq(pending.code.as_str())?;
    let numbered = Pending::numbered(&pending.items, last);
    Ok((numbered.events, numbered.renumbered))
}

/// Snapshots are encoded off the actors and may arrive out of order: the one covering the
/// most clicks stays (retention relies on the stored one never going back). One write per
/// code and group; the last snapshot of a deleted link's actor is not kept.
fn stage_aggregates(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    aggregates: &[(ShortCode, u64, Vec<u8>)],
) -> Result<(), StoreError> {
    let mut newest: HashMap<&str, (u64, &[u8])> = HashMap::new();
    for (code, covers, bytes) in aggregates {
        let entry = newest.entry(code.as_str()).or_insert((0, &[]));
        if *covers > entry.0 {
            *entry = (*covers, bytes.as_slice());
        }
    }
    for (code, (covers, bytes)) in newest {
        if covers > store.covers(code)? && store.links.contains_key(code)? {
            batch.insert(&store.stats, code, bytes);
            batch.insert(
                &store.stats,
                records::covers_key(code),
                covers.to_be_bytes(),
            );
        }
    }
    Ok(())
}

/// Retention read these keys a while ago: only those still stored, of a code that still has
/// its link, and covered by its stored aggregates, go (a deleted link's purge, or a new link
/// made on its code after the hold, may have come in between). Returns how many.
fn stage_expired(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    keys: &[Vec<u8>],
) -> Result<u64, StoreError> {
    let mut expired = 0;
    for key in keys {
        if still_expirable(store, key)? {
            batch.remove(&store.clicks, key.as_slice());
            expired += 1;
        }
    }
    Ok(expired)
}

/// Stages the group's link operations in `batch`, in order. A failed read fails that
/// operation only (before it staged anything): the clicks of the group must still be
/// committed, or their numbers would leave a gap.
fn stage_links(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    ops: &[LinkOp],
    hold: Duration,
    change: &mut TotalsChange,
) -> Vec<Result<LinkOutcome, WriteError>> {
    // The links as this group leaves them (`None`: deleted here).
    let mut here: HashMap<ShortCode, Option<Link>> = HashMap::new();
    let now = now_ms();
    ops.iter()
        .map(|op| {
            stage_link(store, batch, op, hold, now, &mut here, change)
                .map_err(|e| WriteError::Failed(e.to_string()))
        })
        .collect()
}

fn stage_link(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    op: &LinkOp,
    hold: Duration,
    now: i64,
    here: &mut HashMap<ShortCode, Option<Link>>,
    change: &mut TotalsChange,
) -> Result<LinkOutcome, StoreError> {
    let code = match op {
        LinkOp::Create(link, _) => &link.code,
        LinkOp::Update(code, ..) | LinkOp::Delete(code, _) => code,
    };
    let current = match here.get(code) {
        Some(link) => link.clone(),
        None => store.link(code.as_str())?,
    };
    Ok(match op {
        LinkOp::Create(link, _) => {
            let held = match store.gone_until(code.as_str())? {
                Some(until) if !here.contains_key(code) => until > now,
                // Deleted in this very group.
                Some(_) | None => here.contains_key(code),
            };
            let free = current.is_none() && !held;
            if free {
                store.stage_new_link(batch, link);
                change.links += 1;
                here.insert(code.clone(), Some((**link).clone()));
            }
            LinkOutcome::Created(free)
        }
        LinkOp::Update(_, change, _) => match current {
            None => LinkOutcome::Updated(None),
            Some(link) => match change(&link) {
                Err(refused) => LinkOutcome::Updated(Some(Err(refused))),
                Ok(mut new) => {
                    // What identifies a link never changes.
                    new.code = link.code.clone();
                    new.owner = link.owner.clone();
                    new.created_at = link.created_at;
                    new.rev = link.rev + 1;
                    new.updated_at = now.max(link.updated_at);
                    batch.insert(&store.links, code.as_str(), records::encode_link(&new));
                    here.insert(code.clone(), Some(new.clone()));
                    LinkOutcome::Updated(Some(Ok(new)))
                }
            },
        },
        LinkOp::Delete(..) => match current {
            None => LinkOutcome::Deleted(false),
            Some(link) => {
                batch.remove(&store.links, code.as_str());
                batch.remove(&store.index, records::time_index_key(&link));
                batch.remove(&store.index, records::owner_index_key(&link));
                let until = now.saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX));
                batch.insert(
                    &store.meta,
                    records::gone_key(code.as_str()),
                    until.to_be_bytes(),
                );
                change.deleted_links += 1;
                here.insert(code.clone(), None);
                LinkOutcome::Deleted(true)
            }
        },
    })
}

/// Whether a click key retention found is still one to delete (see `commit`).
fn still_expirable(store: &Store, key: &[u8]) -> Result<bool, StoreError> {
    let Some((code, seq)) = records::split_click_key(key) else {
        return Ok(false);
    };
    let Ok(code) = std::str::from_utf8(code) else {
        return Ok(false);
    };
    Ok(store.clicks.contains_key(key)?
        && store.links.contains_key(code)?
        && seq <= store.covers(code)?)
}
