//! The contract: what the actors, the HTTP layer and the analytics read from the store,
//! whichever engine keeps it (fjall in one process, NATS JetStream across nodes), and the
//! callbacks through which an engine tells the layers above of changes made elsewhere. Writes
//! go through the one [`super::WriterHandle`] both engines' writers take their work from.
//!
//! Every method is blocking: call it from `spawn_blocking` or a thread of its own, except
//! [`Backend::find_link`], which async code awaits: fjall answers it in place from memory (its
//! block cache), the cluster store from its bounded cache or with a read of the links bucket
//! that holds no thread while it waits.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use super::{
    Counter, Cursor, KeyRecord, Page, Store, StoreError,
    records::{AuditRecord, DomainRecord},
};
use crate::domain::ShortCode;
use crate::{
    analytics::{Aggregates, VisitorKey},
    domain::{ClickEvent, Link},
};

/// What [`Backend::find_link`] answers: the link shared, so a store that caches links and
/// the caller's own cache hold one copy.
pub type LinkLookup<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<Arc<Link>>, StoreError>> + Send + 'a>,
>;

/// Told of a link changed or deleted on another node (a cluster store follows the links
/// everywhere; nobody else writes an embedded store). Registered by the layer above.
pub trait ChangeListener: Send + Sync {
    fn link_changed(&self, code: &ShortCode, link: Option<Arc<Link>>);
}

/// The store as the running service sees it.
pub trait Backend: Send + Sync + 'static {
    /// Which engine this is, for `/healthz` and the log (`fjall`, `nats`).
    fn engine(&self) -> &'static str;
    /// Follows the clicks other nodes store for `code` (a cluster store): calls `deliver`
    /// with each batch they store from now on, starting with the code's last one, in order.
    /// Stops when the handle is aborted. An embedded store has no other nodes: `None`.
    fn follow(
        &self,
        code: &str,
        deliver: Box<dyn FnMut(Vec<ClickEvent>) + Send>,
    ) -> Option<tokio::task::AbortHandle> {
        let _ = (code, deliver);
        None
    }
    /// The count of `code` when its last stored clicks were numbered by another node (a
    /// cluster store); `None` when this node numbered them, or on an embedded store, where no
    /// other node exists.
    fn counted_elsewhere(&self, code: &str) -> Result<Option<u64>, StoreError> {
        let _ = code;
        Ok(None)
    }
    /// Whether other nodes write to this store (a cluster store).
    fn shared_by_nodes(&self) -> bool {
        false
    }
    /// Why the store cannot be reached now, if it cannot (a cluster store's servers are
    /// gone); an embedded store is always there.
    fn unreachable(&self) -> Option<String> {
        None
    }
    fn link(&self, code: &str) -> Result<Option<Link>, StoreError>;
    /// [`Backend::link`] for async code (the redirect path).
    fn find_link<'a>(&'a self, code: &'a str) -> LinkLookup<'a> {
        Box::pin(std::future::ready(self.link(code).map(|l| l.map(Arc::new))))
    }
    /// The stored count of a code and its latest click.
    fn counter(&self, code: &str) -> Result<Counter, StoreError>;
    /// A link's stored aggregates snapshot (`None`: none, or unreadable; the click log then
    /// rebuilds them).
    fn aggregates(&self, code: &str) -> Result<Option<Aggregates>, StoreError>;
    /// Walks a code's clicks numbered above `after`, in order, until `each` breaks.
    fn walk_clicks(
        &self,
        code: &str,
        after: u64,
        each: &mut dyn FnMut(ClickEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;
    /// Up to `limit` clicks of a code, newest first, with `seq` below `before` if given.
    fn clicks(
        &self,
        code: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ClickEvent>, StoreError>;
    /// One page of links, newest first (an owner's, or all), that `keep` accepts.
    fn list_links(
        &self,
        owner: Option<&str>,
        cursor: Option<&Cursor>,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&Link) -> bool,
    ) -> Result<Page, StoreError>;
    /// Until when a deleted code stays unusable for a new link.
    fn gone_until(&self, code: &str) -> Result<Option<i64>, StoreError>;
    /// The secret behind visitor hashes, one per installation.
    fn visitor_key(&self) -> VisitorKey;
    /// Every stored API key, as (hash, record).
    fn api_keys(&self) -> Result<Vec<([u8; 32], KeyRecord)>, StoreError>;
    /// Stores an API key, durably, before returning.
    fn put_api_key(&self, hash: [u8; 32], record: &KeyRecord) -> Result<(), StoreError>;
    /// Stores several API key records (last-used times), durably.
    fn put_api_keys(&self, records: &[([u8; 32], KeyRecord)]) -> Result<(), StoreError>;
    /// Removes an API key durably. Whether it was stored.
    fn revoke_api_key(&self, hash: [u8; 32]) -> Result<bool, StoreError>;
    /// Every domain links may live on besides the default one.
    fn domains(&self) -> Result<Vec<DomainRecord>, StoreError>;
    /// Stores a domain, new or changed, durably before returning.
    fn put_domain(&self, record: &DomainRecord) -> Result<(), StoreError>;
    /// Removes a domain: whether it was stored.
    fn delete_domain(&self, name: &str) -> Result<bool, StoreError>;
    /// Whether any link lives on the domain `name`.
    fn has_links_on(&self, name: &str) -> Result<bool, StoreError>;
    /// Every setting (what the service keeps beside links: certificates, the ACME account)
    /// whose name starts with `prefix`, as (name, value). Names use `[a-z0-9._-]`.
    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The setting `name`, if stored.
    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores an audit entry as the next one of the installation (durably before returning)
    /// and returns its number.
    fn append_audit(&self, record: &AuditRecord) -> Result<u64, StoreError>;
    /// Stores audit entries as the next ones, in order (durably before returning); their
    /// numbers. An engine that can stores them together.
    fn append_audits(&self, records: &[AuditRecord]) -> Result<Vec<u64>, StoreError> {
        records.iter().map(|r| self.append_audit(r)).collect()
    }
    /// Up to `limit` audit entries of `workspace` numbered below `before`, newest first.
    fn audit_before(
        &self,
        workspace: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// Up to `limit` audit entries of `workspace` numbered above `after`, oldest first.
    fn audit_after(
        &self,
        workspace: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError>;
    /// Deletes the audit entries made before `cutoff` (epoch milliseconds), where the store
    /// does not let them go by itself; returns how many.
    fn trim_audit(&self, cutoff: i64) -> Result<usize, StoreError>;
    /// Follows the audit entries every node stores from now on (a cluster store): calls
    /// `deliver` with each, in order. An embedded store has no other nodes: `None`, and the
    /// layer above hears of each entry as it appends it.
    fn follow_audit(
        &self,
        deliver: Box<dyn FnMut(AuditRecord) + Send>,
    ) -> Option<tokio::task::AbortHandle> {
        let _ = deliver;
        None
    }
    /// Passes this node's latest counts of a workspace's links to the other nodes (a cluster
    /// store; nothing is stored). An embedded store has no other nodes.
    fn publish_counts(&self, workspace: &str, payload: Vec<u8>) {
        let _ = (workspace, payload);
    }
    /// Hears the counts other nodes pass on: `deliver(workspace, payload)`.
    fn follow_counts(
        &self,
        deliver: Box<dyn FnMut(String, Vec<u8>) + Send>,
    ) -> Option<tokio::task::AbortHandle> {
        let _ = deliver;
        None
    }
    /// Stores a setting, durably before returning.
    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Stores a setting that may be lost to a crash (it is synced with the store's next sync,
    /// within about a second): what is rewritten often and is safe to find older, such as a
    /// webhook's cursor.
    fn put_setting_unsynced(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.put_setting(name, value)
    }
    /// Removes a setting.
    fn delete_setting(&self, name: &str) -> Result<(), StoreError>;
    /// Takes the lease `name` for `holder` for `ttl`, or renews it when `holder` has it:
    /// whether `holder` has it now. One process owns an embedded store, which always has it.
    fn take_lease(&self, _name: &str, _holder: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
}

impl dyn Backend {
    /// Calls `each` with every click of `code` numbered above `after`, in order, stopping at
    /// its first error.
    pub fn clicks_after<E: From<StoreError>>(
        &self,
        code: &str,
        after: u64,
        mut each: impl FnMut(ClickEvent) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut failed = None;
        self.walk_clicks(code, after, &mut |event| match each(event) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        })?;
        failed.map_or(Ok(()), Err)
    }
}

/// The store handle the service shares.
pub type SharedStore = Arc<dyn Backend>;

impl Backend for Store {
    fn engine(&self) -> &'static str {
        "fjall"
    }

    fn link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        Store::link(self, code)
    }

    fn counter(&self, code: &str) -> Result<Counter, StoreError> {
        Store::counter(self, code)
    }

    fn aggregates(&self, code: &str) -> Result<Option<Aggregates>, StoreError> {
        Store::aggregates(self, code)
    }

    fn walk_clicks(
        &self,
        code: &str,
        after: u64,
        each: &mut dyn FnMut(ClickEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        // A break is carried out as an error of its own and taken back here.
        struct Stop;
        enum Walk {
            Stop(Stop),
            Store(StoreError),
        }
        impl From<StoreError> for Walk {
            fn from(e: StoreError) -> Self {
                Self::Store(e)
            }
        }
        match Store::clicks_after(self, code, after, |event| match each(event) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(Walk::Stop(Stop)),
        }) {
            Ok(()) | Err(Walk::Stop(Stop)) => Ok(()),
            Err(Walk::Store(e)) => Err(e),
        }
    }

    fn clicks(
        &self,
        code: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ClickEvent>, StoreError> {
        Store::clicks(self, code, before, limit)
    }

    fn list_links(
        &self,
        owner: Option<&str>,
        cursor: Option<&Cursor>,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&Link) -> bool,
    ) -> Result<Page, StoreError> {
        Store::list_links(self, owner, cursor, limit, scan, keep)
    }

    fn gone_until(&self, code: &str) -> Result<Option<i64>, StoreError> {
        Store::gone_until(self, code)
    }

    fn visitor_key(&self) -> VisitorKey {
        Store::visitor_key(self)
    }

    fn api_keys(&self) -> Result<Vec<([u8; 32], KeyRecord)>, StoreError> {
        Store::api_keys(self)
    }

    fn put_api_key(&self, hash: [u8; 32], record: &KeyRecord) -> Result<(), StoreError> {
        Store::put_api_key(self, hash, record)
    }

    fn put_api_keys(&self, records: &[([u8; 32], KeyRecord)]) -> Result<(), StoreError> {
        Store::put_api_keys(self, records)
    }

    fn revoke_api_key(&self, hash: [u8; 32]) -> Result<bool, StoreError> {
        Store::revoke_api_key(self, hash)
    }

    fn domains(&self) -> Result<Vec<DomainRecord>, StoreError> {
        Store::domains(self)
    }

    fn put_domain(&self, record: &DomainRecord) -> Result<(), StoreError> {
        Store::put_domain(self, record)
    }

    fn delete_domain(&self, name: &str) -> Result<bool, StoreError> {
        Store::delete_domain(self, name)
    }

    fn has_links_on(&self, name: &str) -> Result<bool, StoreError> {
        Store::has_links_on(self, name)
    }

    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Store::settings(self, prefix)
    }

    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Store::setting(self, name)
    }

    fn append_audit(&self, record: &AuditRecord) -> Result<u64, StoreError> {
        Store::append_audit(self, record)
    }

    fn append_audits(&self, records: &[AuditRecord]) -> Result<Vec<u64>, StoreError> {
        Store::append_audits(self, records)
    }

    fn audit_before(
        &self,
        workspace: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        Store::audit_before(self, workspace, before, limit)
    }

    fn audit_after(
        &self,
        workspace: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        Store::audit_after(self, workspace, after, limit)
    }

    fn trim_audit(&self, cutoff: i64) -> Result<usize, StoreError> {
        Store::trim_audit(self, cutoff)
    }

    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        Store::put_setting(self, name, value)
    }

    fn put_setting_unsynced(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        Store::put_setting_unsynced(self, name, value)
    }

    fn delete_setting(&self, name: &str) -> Result<(), StoreError> {
        Store::delete_setting(self, name)
    }
}
