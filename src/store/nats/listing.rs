//! The links in listing order, kept beside each node's copy of the links bucket, so a page of
//! `GET /api/links` is a range read.

use std::sync::Arc;

use super::{Inner, NatsStore};
use crate::{
    domain::Link,
    store::{Cursor, Page, StoreError, records},
};

/// The links in the order `GET /api/links` lists them (newest first, by the key the fjall
/// index sorts by), in all and per owner: a page is a range read, not a sort of every link.
#[derive(Default)]
pub(super) struct Listing {
    all: std::collections::BTreeMap<Vec<u8>, Arc<Link>>,
    /// Keyed by owner, then the same key.
    owners: std::collections::BTreeMap<(String, Vec<u8>), Arc<Link>>,
}

/// A link's place in the listing (its creation time and code, as fjall's index sorts them).
fn listing_key(link: &Link) -> Vec<u8> {
    records::time_index_key(link)[1..].to_vec()
}

impl Inner {
    /// Takes in a link made or changed (on any node).
    pub(super) fn remember(&self, link: Arc<Link>) {
        let old = self.links.insert(link.code.to_string(), link.clone());
        let mut listing = self
            .listing
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = old {
            listing.all.remove(&listing_key(&old));
            listing
                .owners
                .remove(&(old.owner.to_string(), listing_key(&old)));
        }
        let key = listing_key(&link);
        listing
            .owners
            .insert((link.owner.to_string(), key.clone()), link.clone());
        listing.all.insert(key, link);
    }

    /// Lets go of a deleted link.
    pub(super) fn forget(&self, code: &str) {
        if let Some((_, old)) = self.links.remove(code) {
            let mut listing = self
                .listing
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            listing.all.remove(&listing_key(&old));
            listing
                .owners
                .remove(&(old.owner.to_string(), listing_key(&old)));
        }
    }
}

impl NatsStore {
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
        // Newest first, from just below the cursor: a range of the listing, read under its
        // lock for at most `scan` entries.
        let listing = self
            .inner
            .listing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let below = cursor.map(|c| c.key().to_vec());
        let entries: Box<dyn Iterator<Item = (&Vec<u8>, &Arc<Link>)>> = match owner {
            Some(owner) => {
                let from = (owner.to_owned(), Vec::new());
                let to = match &below {
                    Some(key) => std::ops::Bound::Excluded((owner.to_owned(), key.clone())),
                    None => std::ops::Bound::Excluded((format!("{owner}\0"), Vec::new())),
                };
                Box::new(
                    listing
                        .owners
                        .range((std::ops::Bound::Included(from), to))
                        .rev()
                        .filter(move |((o, _), _)| o == owner)
                        .map(|((_, key), link)| (key, link)),
                )
            }
            None => match &below {
                Some(key) => Box::new(listing.all.range(..key.clone()).rev()),
                None => Box::new(listing.all.iter().rev()),
            },
        };
        let mut links = Vec::new();
        let mut last = None;
        let mut scanned = 0;
        let mut entries = entries.peekable();
        for (key, link) in entries.by_ref() {
            scanned += 1;
            last = Some(key.clone());
            if keep(link) {
                links.push(Link::clone(link));
            }
            if links.len() >= limit || scanned >= scan {
                break;
            }
        }
        let more = entries.peek().is_some();
        Ok(Page {
            links,
            next: last.filter(|_| more).map(Cursor::from_key),
        })
    }
}
