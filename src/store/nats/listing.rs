//! The links in listing order: each link's place (its creation time and code, as fjall's index
//! sorts them) in all and per owner, so a page of `GET /api/links` is a range read. Only the
//! places are kept, not the links: a page reads its links through the bounded cache, or from
//! the bucket on a miss. The places are filled by the links bucket's watch after the node has
//! started (a node answers redirects at once, and a listing waits until they are in).

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use super::{Inner, NatsStore, nats_error};
use crate::{
    domain::Link,
    store::{Cursor, Page, StoreError, records},
};

/// How long a listing waits for the places of the links to be read after a start.
pub(super) const LISTED_WAIT: Duration = Duration::from_secs(30);

/// Every link's place in the listing, about 110 bytes a link: each place is one allocation
/// shared by the three sets.
#[derive(Default)]
pub(super) struct Listing {
    /// Places in listing order (the last one is the newest link), with their owner (an index
    /// into `owner_ids`).
    all: BTreeMap<Arc<[u8]>, u32>,
    /// The same places per owner.
    owners: BTreeSet<(u32, Arc<[u8]>)>,
    /// The same places, found by code (to move or drop one).
    placed: HashSet<ByCode>,
    owner_ids: Vec<Box<str>>,
    owner_index: HashMap<Box<str>, u32>,
}

/// A place, hashed and compared by its code (the bytes after the creation time).
#[derive(Clone)]
struct ByCode(Arc<[u8]>);

impl ByCode {
    fn code(&self) -> &[u8] {
        &self.0[8..]
    }
}

impl PartialEq for ByCode {
    fn eq(&self, other: &Self) -> bool {
        self.code() == other.code()
    }
}

impl Eq for ByCode {}

impl Hash for ByCode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.code().hash(state);
    }
}

impl Borrow<[u8]> for ByCode {
    fn borrow(&self) -> &[u8] {
        self.code()
    }
}

/// A link's place in the listing: its creation time (sortable) and code.
fn listing_key(link: &Link) -> Arc<[u8]> {
    records::time_index_key(link)[1..].into()
}

/// The code at the end of a place.
fn code_of(key: &[u8]) -> &str {
    std::str::from_utf8(&key[8..]).unwrap_or_default()
}

impl Listing {
    fn owner(&mut self, owner: &str) -> u32 {
        if let Some(&at) = self.owner_index.get(owner) {
            return at;
        }
        let at = u32::try_from(self.owner_ids.len()).unwrap_or(u32::MAX);
        self.owner_ids.push(owner.into());
        self.owner_index.insert(owner.into(), at);
        at
    }

    fn place(&mut self, link: &Link) {
        let key = listing_key(link);
        if self
            .placed
            .get(link.code.as_str().as_bytes())
            .is_some_and(|old| old.0 == key)
        {
            // Changed, not moved: a link keeps its creation time and owner.
            return;
        }
        self.drop_code(link.code.as_str());
        let owner = self.owner(link.owner.as_str());
        self.owners.insert((owner, key.clone()));
        self.all.insert(key.clone(), owner);
        self.placed.insert(ByCode(key));
    }

    fn drop_code(&mut self, code: &str) {
        if let Some(ByCode(key)) = self.placed.take(code.as_bytes())
            && let Some(owner) = self.all.remove(&key)
        {
            self.owners.remove(&(owner, key));
        }
    }

    /// The codes listed, in listing order.
    pub(super) fn codes(&self) -> Vec<String> {
        self.all.keys().map(|k| code_of(k).to_owned()).collect()
    }
}

impl Inner {
    /// Takes in a link made or changed (on any node): its place, and the cached copy.
    pub(super) fn remember(&self, link: Arc<Link>) {
        self.place(&link);
        self.links.insert(link.code.to_string(), link);
    }

    /// Takes in a link made or changed as the bucket's watch tells it: its place, and the
    /// cached copy if one is cached (a link nobody asked for here is not).
    pub(super) fn heard(&self, link: Arc<Link>) {
        self.place(&link);
        if self.links.get(link.code.as_str()).is_some() {
            self.links.insert(link.code.to_string(), link);
        }
    }

    /// A change taken in (see `NatsStore::link_record`), and the link's place in the listing.
    fn place(&self, link: &Link) {
        self.link_changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.listing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .place(link);
    }

    /// Lets go of a deleted link.
    pub(super) fn forget(&self, code: &str) {
        self.link_changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.links.remove(code);
        self.listing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drop_code(code);
    }
}

impl NatsStore {
    /// Waits (up to `wait`) until every link's place has been read after the start.
    pub(super) async fn listed(&self, wait: Duration) -> Result<(), StoreError> {
        let mut ready = self.inner.listed.subscribe();
        tokio::time::timeout(wait, ready.wait_for(|listed| *listed))
            .await
            .map_err(|_| StoreError::Nats("the links are still being read after the start".into()))?
            .map_err(|e| nats_error("the links' watch ended", e))?;
        Ok(())
    }

    /// One page of links, newest first (an owner's, or all), that `keep` accepts (see
    /// [`Backend::list_links`](crate::store::Backend::list_links)).
    pub(super) fn links_page(
        &self,
        owner: Option<&str>,
        cursor: Option<&Cursor>,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&Link) -> bool,
    ) -> Result<Page, StoreError> {
        self.run(self.listed(LISTED_WAIT))?;
        // Newest first, from just below the cursor: at most `scan` places, read under the
        // lock; the links are read after it.
        let (places, more) = {
            let listing = self
                .inner
                .listing
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let below: Option<Arc<[u8]>> = cursor.map(|c| c.key().into());
            let mut entries: Box<dyn Iterator<Item = &Arc<[u8]>>> = match owner {
                Some(owner) => match listing.owner_index.get(owner) {
                    None => Box::new(std::iter::empty()),
                    Some(&at) => {
                        let to = match &below {
                            Some(key) => std::ops::Bound::Excluded((at, key.clone())),
                            None => match at.checked_add(1) {
                                Some(next) => std::ops::Bound::Excluded((next, Arc::from(&[][..]))),
                                None => std::ops::Bound::Unbounded,
                            },
                        };
                        let from = std::ops::Bound::Included((at, Arc::from(&[][..])));
                        Box::new(listing.owners.range((from, to)).rev().map(|(_, key)| key))
                    }
                },
                None => match &below {
                    Some(key) => Box::new(listing.all.range(..key.clone()).rev().map(|(k, _)| k)),
                    None => Box::new(listing.all.keys().rev()),
                },
            };
            let places: Vec<Arc<[u8]>> = entries.by_ref().take(scan).cloned().collect();
            (places, entries.next().is_some())
        };
        let mut links = Vec::new();
        let mut last = None;
        let mut read_all = true;
        for (i, key) in places.iter().enumerate() {
            last = Some(key.to_vec());
            // Gone since the places were read (deleted meanwhile): not listed.
            if let Some(link) = self.link_record(code_of(key))?
                && keep(&link)
            {
                links.push(Link::clone(&link));
            }
            if links.len() >= limit {
                read_all = i + 1 == places.len();
                break;
            }
        }
        let more = more || !read_all;
        Ok(Page {
            links,
            next: last.filter(|_| more).map(Cursor::from_key),
        })
    }
}
