//! Link management in the store: the listing index, deleted codes and the purge of a deleted
//! link's clicks. Every write here is staged by the writer (see `writer/`), in the same
//! atomic batch as the link record it follows.

use fjall::PersistMode;
use tracing::info;

use super::{Store, StoreError, records};
use crate::{
    domain::{Link, ShortCode},
    store::{Cursor, Page},
};

/// Set in the `meta` keyspace once every link is in the listing index.
pub(super) const LINK_INDEX_BUILT: &[u8] = b"link-index-built";

impl Store {
    /// Once per store: puts every link stored before the listing index into it. Later starts
    /// read one marker record, and so does every start of a store made since (see
    /// [`Store::mark_empty_index_built`]).
    pub fn build_link_index(&self) -> Result<u64, StoreError> {
        if self.meta.get(LINK_INDEX_BUILT)?.is_some() {
            return Ok(0);
        }
        let mut built = 0;
        let mut batch = self.db.batch();
        for guard in self.links.iter() {
            let (_, value) = guard.into_inner()?;
            let link = records::decode_link(&value)?;
            batch.insert(
                &self.index,
                records::time_index_key(&link),
                link.owner.as_bytes(),
            );
            batch.insert(&self.index, records::owner_index_key(&link), []);
            built += 1;
            if built % 10_000 == 0 {
                std::mem::replace(&mut batch, self.db.batch()).commit()?;
            }
        }
        batch.insert(&self.meta, LINK_INDEX_BUILT, [1]);
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        if built > 0 {
            info!(
                links = built,
                "built the listing index of links stored before it"
            );
        }
        Ok(built)
    }

    /// Marks the listing index complete in a store that holds no links (a new one): whatever
    /// is added later indexes itself (the writer, an import), so no start needs to read every
    /// link again.
    pub(super) fn mark_empty_index_built(&self, links: u64) -> Result<(), StoreError> {
        if links == 0 && self.meta.get(LINK_INDEX_BUILT)?.is_none() {
            self.meta.insert(LINK_INDEX_BUILT, [1])?;
        }
        Ok(())
    }

    /// Links newest first: an owner's, or everyone's (`None`), from after `cursor`, those
    /// `keep` accepts, at most `limit` of them. Reads at most `scan` index entries, so a filter
    /// that matches little cannot make one request read the whole store: the page then holds
    /// fewer links, and `next` says where to go on.
    pub fn list_links(
        &self,
        owner: Option<&str>,
        cursor: Option<&Cursor>,
        limit: usize,
        scan: usize,
        keep: impl Fn(&Link) -> bool,
    ) -> Result<Page, StoreError> {
        let prefix = match owner {
            Some(owner) => records::owner_index_prefix(owner),
            None => b"t".to_vec(),
        };
        let end = match cursor {
            Some(cursor) => [prefix.as_slice(), &cursor.0].concat(),
            None => {
                let mut end = prefix.clone();
                end.push(0xff);
                end
            }
        };
        let mut links = Vec::new();
        let mut scanned = 0;
        let mut last: Option<Vec<u8>> = None;
        let mut entries = self.index.range(prefix.clone()..end).rev();
        for guard in entries.by_ref() {
            let key = guard.key()?;
            let Some((time, code)) = records::index_position(&key, prefix.len()) else {
                return Err(StoreError::Inconsistent(format!(
                    "malformed index key {}",
                    hex::encode(&key)
                )));
            };
            last = Some([time, code.as_bytes()].concat());
            scanned += 1;
            // A link deleted between the index read and this one is left out.
            if let Some(link) = self.link(code)?
                && keep(&link)
            {
                links.push(link);
            }
            if links.len() >= limit || scanned >= scan {
                break;
            }
        }
        let more = entries.next().is_some();
        Ok(Page {
            links,
            next: last.filter(|_| more).map(Cursor),
        })
    }

    /// Stages a new link in `batch`: its record, its places in the listing index, and the end
    /// of a hold on its code. The caller has checked that the code is free and counts the link
    /// in the totals (the writer for the API, `transfer.rs` for an import).
    pub(super) fn stage_new_link(&self, batch: &mut fjall::OwnedWriteBatch, link: &Link) {
        let code = link.code.as_str();
        batch.remove(&self.meta, records::gone_key(code));
        batch.insert(&self.links, code, records::encode_link(link));
        batch.insert(
            &self.index,
            records::time_index_key(link),
            link.owner.as_bytes(),
        );
        batch.insert(&self.index, records::owner_index_key(link), []);
    }

    /// Until when a deleted code is held (epoch milliseconds), if it was deleted.
    pub fn gone_until(&self, code: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .meta
            .get(records::gone_key(code))?
            .map(|v| records::decode_gone(&v)))
    }

    /// Deleted codes whose clicks or aggregates are not all purged yet (a stop during a purge).
    pub fn unpurged(&self) -> Result<Vec<ShortCode>, StoreError> {
        let mut out = Vec::new();
        for guard in self.meta.prefix(records::GONE_PREFIX) {
            let key = guard.key()?;
            let Some(code) = std::str::from_utf8(&key[records::GONE_PREFIX.len()..])
                .ok()
                .and_then(|c| ShortCode::from_key(c).ok())
            else {
                continue;
            };
            let has_clicks = self
                .clicks
                .prefix(records::click_prefix(code.as_str()))
                .next()
                .is_some();
            if (has_clicks || self.stats.contains_key(code.as_str())?)
                && !self.links.contains_key(code.as_str())?
            {
                out.push(code);
            }
        }
        Ok(out)
    }

    /// The keys of up to `max` of a code's clicks numbered below `below`, newest first: a purge
    /// takes them from the end, so what is left is always numbered 1, 2, ... as the full check
    /// expects; each step starts below the last, never reading the previous steps' tombstones.
    pub fn last_click_keys(
        &self,
        code: &str,
        below: u64,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        let range = records::click_key(code, 0)..records::click_key(code, below);
        for guard in self.clicks.range(range).rev() {
            keys.push(guard.key()?.to_vec());
            if keys.len() >= max {
                break;
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{
        domain::{ClickEvent, TargetUrl},
        store::{ClickBatch, Durability, Permit, Writer, WriterConfig, WriterHandle},
    };

    fn click(seq: u64) -> Arc<ClickEvent> {
        Arc::new(ClickEvent {
            at: 1_700_000_000_000 + seq as i64,
            ..ClickEvent::plain(seq)
        })
    }

    fn clicks(writer: &WriterHandle, code: &ShortCode, seqs: std::ops::RangeInclusive<u64>) {
        writer.clicks(ClickBatch {
            code: code.clone(),
            events: seqs.map(click).collect(),
            acks: Vec::new(),
            listener: None,
            permit: Permit::empty(),
            admits: Vec::new(),
            limit: None,
        });
    }

    /// Retention reads the keys it expires a while before the writer deletes them: keys of a
    /// link deleted (and purged) meanwhile, or of a new link made on its code after the hold,
    /// are not deleted again nor counted, so the totals stay what is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_expiry_keys_of_a_deleted_code_change_nothing()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let writer = Writer::start(
            store.clone(),
            WriterConfig {
                durability: Durability::Default,
                commit_interval: Duration::ZERO,
                max_batch: 1024,
                fsync_interval: Duration::from_secs(1),
                deleted_code_hold: Duration::ZERO,
                metrics: Arc::default(),
            },
        )?;
        let handle = writer.handle();
        let code = ShortCode::parse("old")?;
        let link = |url: &str| -> Result<Link, Box<dyn std::error::Error>> {
            Ok(Link::new(
                code.clone(),
                TargetUrl::parse(url)?,
                "o".into(),
                0,
            ))
        };
        assert!(handle.create_link(link("https://example.com/a")?).await?);
        clicks(&handle, &code, 1..=5);
        handle.aggregates(code.clone(), 5, vec![1]);
        handle.barrier().await?;
        // What retention found before the deletion.
        let stale: Vec<Vec<u8>> = (1..=3)
            .map(|seq| records::click_key(code.as_str(), seq))
            .collect();

        assert!(handle.delete_link(code.clone()).await?);
        // The purge runs between groups; the next create of the code waits for it.
        assert!(handle.create_link(link("https://example.com/b")?).await?);
        clicks(&handle, &code, 1..=3);
        handle.barrier().await?;
        let expire = handle.clone();
        tokio::task::spawn_blocking(move || expire.expire_blocking(stale)).await??;
        handle.barrier().await?;

        let totals = store.totals();
        assert_eq!(totals.expired, 0, "nothing expired: {totals:?}");
        assert_eq!((totals.deleted_links, totals.deleted_clicks), (1, 5));
        assert_eq!((totals.links, totals.clicks), (1, 3));
        assert_eq!(
            store.count_click_events("old")?,
            3,
            "the new link's clicks stay"
        );
        assert_eq!(
            store.covers("old")?,
            0,
            "the old link's aggregates went with it"
        );
        drop(handle);
        writer.stop()?;
        let verified = store.verify()?;
        assert_eq!((verified.links, verified.clicks), (1, 3));
        Ok(())
    }
}
