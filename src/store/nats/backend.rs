//! The contract ([`Backend`]) as the cluster store keeps it: links and keys from this node's
//! copies, clicks and snapshots from JetStream.

use std::{ops::ControlFlow, time::Duration};

use async_nats::jetstream::kv::{self, Operation};
use tracing::warn;

/// Domains live in the meta bucket under this prefix and their name.
const DOMAIN_PREFIX: &str = "domain.";
const SETTING_PREFIX: &str = "setting.";
const LEASE_PREFIX: &str = "lease.";

use super::{
    NatsStore,
    clicks::{self, decode_snapshot_entry},
    nats_error,
};
use crate::{
    analytics::{Aggregates, VisitorKey, aggregates},
    domain::{ClickEvent, Link, now_ms},
    store::{Backend, Counter, Cursor, KeyRecord, Page, StoreError, records, records::AuditRecord},
};

impl Backend for NatsStore {
    fn engine(&self) -> &'static str {
        "nats"
    }

    fn counted_elsewhere(&self, code: &str) -> Result<Option<u64>, StoreError> {
        let (_, last, id) = self.run(self.last_batch(code))?;
        let mine = id.split(':').next() == Some(self.inner.node.as_str());
        Ok(last.filter(|_| !mine).map(|e| e.seq))
    }

    fn shared_by_nodes(&self) -> bool {
        true
    }

    fn unreachable(&self) -> Option<String> {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => None,
            state => Some(format!("NATS is {state}")),
        }
    }

    fn link(&self, code: &str) -> Result<Option<Link>, StoreError> {
        Ok(self.link_record(code)?.map(|l| Link::clone(&l)))
    }

    fn find_link<'a>(&'a self, code: &'a str) -> crate::store::LinkLookup<'a> {
        Box::pin(self.find_link_record(code))
    }

    fn follow(
        &self,
        code: &str,
        deliver: Box<dyn FnMut(Vec<ClickEvent>) + Send>,
    ) -> Option<tokio::task::AbortHandle> {
        let task =
            self.inner
                .runtime
                .spawn(clicks::follow(self.inner.clone(), code.to_owned(), deliver));
        Some(task.abort_handle())
    }

    fn counter(&self, code: &str) -> Result<Counter, StoreError> {
        let (_, last, _) = self.run(self.last_batch(code))?;
        Ok(Counter {
            count: last.as_ref().map_or(0, |e| e.seq),
            last,
        })
    }

    fn aggregates(&self, code: &str) -> Result<Option<Aggregates>, StoreError> {
        let stored = self
            .run(self.inner.aggregates_kv.get(code))
            .map_err(|e| nats_error("cannot read aggregates", e))?;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        let Some((_, _, snapshot)) = decode_snapshot_entry(&bytes) else {
            warn!(
                code,
                "an unreadable aggregates entry; rebuilding from the clicks"
            );
            return Ok(None);
        };
        match aggregates::decode_snapshot(snapshot) {
            Ok(aggregates) => Ok(Some(aggregates)),
            Err(cause) => {
                warn!(code, %cause, "unreadable aggregates; rebuilding them from the clicks");
                Ok(None)
            }
        }
    }

    fn walk_clicks(
        &self,
        code: &str,
        after: u64,
        each: &mut dyn FnMut(ClickEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let from = if after == 0 {
            1
        } else {
            // A snapshot covering up to `after` says where its last click is; else the
            // message holding click `after + 1` is looked for.
            let hint = self.run(async {
                match self.inner.aggregates_kv.get(code).await {
                    Ok(Some(bytes)) => decode_snapshot_entry(&bytes)
                        .filter(|(covers, stream_seq, _)| *covers == after && *stream_seq > 0)
                        .map(|(_, stream_seq, _)| stream_seq),
                    _ => None,
                }
            });
            match hint {
                Some(at) => at,
                None => {
                    let (last_at, _, _) = self.run(self.last_batch(code))?;
                    self.run(self.message_holding(code, after + 1, last_at))?
                }
            }
        };
        self.walk_from(code, from, &mut |event| {
            if event.seq > after {
                each(event)
            } else {
                ControlFlow::Continue(())
            }
        })
    }

    fn clicks(
        &self,
        code: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ClickEvent>, StoreError> {
        let (last_at, last, _) = self.run(self.last_batch(code))?;
        let count = last.map_or(0, |e| e.seq);
        let upper = before.map_or(count, |b| b.saturating_sub(1).min(count));
        if upper == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let lowest = upper.saturating_sub(limit as u64 - 1).max(1);
        // The page starts in the message holding click `lowest`, found in a few reads (not
        // by walking the code's messages from its first).
        let from = self.run(self.message_holding(code, lowest, last_at))?;
        let mut page = Vec::with_capacity(limit.min(1024));
        self.walk_from(code, from, &mut |event| {
            if event.seq > upper {
                return ControlFlow::Break(());
            }
            if event.seq >= lowest {
                page.push(event);
            }
            ControlFlow::Continue(())
        })?;
        page.reverse();
        Ok(page)
    }

    fn list_links(
        &self,
        owner: Option<&str>,
        cursor: Option<&Cursor>,
        limit: usize,
        scan: usize,
        keep: &dyn Fn(&Link) -> bool,
    ) -> Result<Page, StoreError> {
        self.links_page(owner, cursor, limit, scan, keep)
    }

    fn gone_until(&self, code: &str) -> Result<Option<i64>, StoreError> {
        let held = self
            .run(self.inner.gone_kv.get(code))
            .map_err(|e| nats_error("cannot read a deleted code's hold", e))?;
        Ok(held.map(|b| records::decode_gone(&b)))
    }

    fn visitor_key(&self) -> VisitorKey {
        VisitorKey::new(self.inner.visitor_key)
    }

    fn api_keys(&self) -> Result<Vec<([u8; 32], KeyRecord)>, StoreError> {
        Ok(self
            .inner
            .keys
            .iter()
            .map(|k| (*k.key(), k.value().clone()))
            .collect())
    }

    fn put_api_key(&self, hash: [u8; 32], record: &KeyRecord) -> Result<(), StoreError> {
        self.run(
            self.inner
                .keys_kv
                .put(hex::encode(hash), records::encode_key(record).into()),
        )
        .map_err(|e| nats_error("cannot store an API key", e))?;
        self.inner.keys.insert(hash, record.clone());
        Ok(())
    }

    fn put_api_keys(&self, records: &[([u8; 32], KeyRecord)]) -> Result<(), StoreError> {
        // Last-used times only, each saved by compare-and-set on the stored entry: a key
        // revoked on another node (its entry deleted) is never written back, whatever this
        // node's copy says, and a later time saved by another node is kept.
        self.run(async {
            for (hash, record) in records {
                let key = hex::encode(hash);
                for _ in 0..4 {
                    let entry = self
                        .inner
                        .keys_kv
                        .entry(&key)
                        .await
                        .map_err(|e| nats_error("cannot read an API key", e))?;
                    let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                        break;
                    };
                    let mut stored = records::decode_key(&entry.value)?;
                    if stored.last_used_at >= record.last_used_at {
                        break;
                    }
                    stored.last_used_at = record.last_used_at;
                    match self
                        .inner
                        .keys_kv
                        .update(&key, records::encode_key(&stored).into(), entry.revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                        Err(e) => return Err(nats_error("cannot store an API key", e)),
                    }
                }
            }
            Ok(())
        })
    }

    fn domains(&self) -> Result<Vec<records::DomainRecord>, StoreError> {
        use futures_util::StreamExt;
        self.run(async {
            let meta = &self.inner.meta_kv;
            let mut keys = meta
                .keys()
                .await
                .map_err(|e| nats_error("cannot list the domains", e))?;
            let mut out = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| nats_error("cannot list the domains", e))?;
                if !key.starts_with(DOMAIN_PREFIX) {
                    continue;
                }
                let value = meta
                    .get(&key)
                    .await
                    .map_err(|e| nats_error("cannot read a domain", e))?;
                if let Some(value) = value {
                    out.push(records::decode_domain(&value)?);
                }
            }
            Ok(out)
        })
    }

    fn put_domain(&self, record: &records::DomainRecord) -> Result<(), StoreError> {
        let key = format!("{DOMAIN_PREFIX}{}", record.name);
        self.run(
            self.inner
                .meta_kv
                .put(key, records::encode_domain(record).into()),
        )
        .map_err(|e| nats_error("cannot store a domain", e))?;
        Ok(())
    }

    fn delete_domain(&self, name: &str) -> Result<bool, StoreError> {
        let key = format!("{DOMAIN_PREFIX}{name}");
        let stored = self
            .run(self.inner.meta_kv.get(&key))
            .map_err(|e| nats_error("cannot read a domain", e))?
            .is_some();
        if stored {
            self.run(self.inner.meta_kv.delete(&key))
                .map_err(|e| nats_error("cannot delete a domain", e))?;
        }
        Ok(stored)
    }

    fn has_links_on(&self, name: &str) -> Result<bool, StoreError> {
        let prefix = format!("{name}/");
        let listing = self
            .inner
            .listing
            .read()
            .map_err(|_| StoreError::Inconsistent("the listing's lock is poisoned".into()))?;
        Ok(listing.codes().iter().any(|code| code.starts_with(&prefix)))
    }

    fn settings(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        use futures_util::StreamExt;
        let prefix = format!("{SETTING_PREFIX}{prefix}");
        self.run(async {
            let meta = &self.inner.meta_kv;
            let mut keys = meta
                .keys()
                .await
                .map_err(|e| nats_error("cannot list the settings", e))?;
            let mut out = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| nats_error("cannot list the settings", e))?;
                let Some(name) = key.strip_prefix(SETTING_PREFIX) else {
                    continue;
                };
                if !key.starts_with(&prefix) {
                    continue;
                }
                let value = meta
                    .get(&key)
                    .await
                    .map_err(|e| nats_error("cannot read a setting", e))?;
                if let Some(value) = value {
                    out.push((name.to_owned(), value.to_vec()));
                }
            }
            Ok(out)
        })
    }

    fn append_audit(&self, record: &AuditRecord) -> Result<u64, StoreError> {
        self.append_audit_entry(record)
    }

    fn audit_before(
        &self,
        workspace: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit_page(workspace, before, limit)
    }

    fn audit_after(
        &self,
        workspace: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit_since(workspace, after, limit)
    }

    fn trim_audit(&self, cutoff: i64) -> Result<usize, StoreError> {
        self.audit_retention(cutoff)
    }

    fn follow_audit(
        &self,
        deliver: Box<dyn FnMut(AuditRecord) + Send>,
    ) -> Option<tokio::task::AbortHandle> {
        let task = self
            .inner
            .runtime
            .spawn(super::audit::follow(self.inner.clone(), deliver));
        Some(task.abort_handle())
    }

    fn publish_counts(&self, workspace: &str, payload: Vec<u8>) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Lp-Node", self.inner.node.as_str());
        let (client, subject) = (
            self.inner.client.clone(),
            format!("{}{workspace}", super::audit::COUNTS_PREFIX),
        );
        self.inner.runtime.spawn(async move {
            if let Err(e) = client
                .publish_with_headers(subject, headers, payload.into())
                .await
            {
                warn!(cause = %e, "cannot pass counts on to the other nodes");
            }
        });
    }

    fn follow_counts(
        &self,
        deliver: Box<dyn FnMut(String, Vec<u8>) + Send>,
    ) -> Option<tokio::task::AbortHandle> {
        let task = self
            .inner
            .runtime
            .spawn(super::audit::follow_counts(self.inner.clone(), deliver));
        Some(task.abort_handle())
    }

    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = format!("{SETTING_PREFIX}{name}");
        let value = self
            .run(self.inner.meta_kv.get(key))
            .map_err(|e| nats_error("cannot read a setting", e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn put_setting(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = format!("{SETTING_PREFIX}{name}");
        self.run(
            self.inner
                .meta_kv
                .put(key, bytes::Bytes::copy_from_slice(value)),
        )
        .map_err(|e| nats_error("cannot store a setting", e))?;
        Ok(())
    }

    fn delete_setting(&self, name: &str) -> Result<(), StoreError> {
        let key = format!("{SETTING_PREFIX}{name}");
        self.run(self.inner.meta_kv.purge(key))
            .map_err(|e| nats_error("cannot delete a setting", e))
    }

    fn take_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
        let key = format!("{LEASE_PREFIX}{name}");
        let until = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let value = bytes::Bytes::from(format!("{holder} {until}"));
        self.run(async {
            let meta = &self.inner.meta_kv;
            let entry = meta
                .entry(&key)
                .await
                .map_err(|e| nats_error("cannot read a lease", e))?;
            let Some(entry) = entry.filter(|e| !e.value.is_empty()) else {
                return match meta.create(&key, value).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(nats_error("cannot take a lease", e)),
                };
            };
            let held = String::from_utf8_lossy(&entry.value).into_owned();
            let (who, ends) = held.split_once(' ').unwrap_or((&held, "0"));
            let ends: i64 = ends.parse().unwrap_or(0);
            if who != holder && ends > now_ms() {
                return Ok(false);
            }
            match meta.update(&key, value, entry.revision).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(nats_error("cannot take a lease", e)),
            }
        })
    }

    fn revoke_api_key(&self, hash: [u8; 32]) -> Result<bool, StoreError> {
        if !self.inner.keys.contains_key(&hash) {
            return Ok(false);
        }
        self.run(self.inner.keys_kv.delete(hex::encode(hash)))
            .map_err(|e| nats_error("cannot revoke an API key", e))?;
        self.inner.keys.remove(&hash);
        Ok(true)
    }
}
