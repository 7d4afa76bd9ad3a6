//! The cluster store: every durable thing in NATS JetStream, nothing on the node's disk
//! (`linkpulse serve --nats nats://a:4222,nats://b:4222,...`).
//!
//! - Links, API keys, deleted-code holds, aggregates snapshots and the installation's visitor
//!   key: key-value buckets (`lp_links`, `lp_keys`, `lp_gone`, `lp_aggregates`, `lp_meta`).
//!   Their streams are made here by hand (`KV_<bucket>`, one message per subject, roll-ups and
//!   direct gets allowed, discard new), as `nats kv add` makes them: async-nats 0.51's
//!   `create_key_value` cannot read nats-server 2.9's answer. Each node keeps the keys in
//!   memory, and of the links a bounded cache (`--link-cache` records, read from the bucket on
//!   a miss) and each link's place in the listing; it follows both buckets with a watch, so a
//!   change on one node reaches every node at once (and its live actor, through
//!   [`ChangeListener`]).
//! - Clicks: one stream, `LP_CLICKS`, a subject per code (`lp.clicks.<code>`). Each message is
//!   a numbered batch of that code's clicks (see [`encode_batch`](clicks::encode_batch)),
//!   published with `Nats-Expected-Last-Subject-Sequence`: two nodes that both number a code's
//!   clicks can never both store them; the loser reloads the code's last number and retries
//!   (`writer/`).
//!   The count of a code is the number of the last click of its last message, as on fjall it
//!   is the number of the last stored click.
//!
//! Reads that go to NATS block the calling thread (`block_in_place`): call them off the async
//! threads, as the [`Backend`](super::Backend) contract says.
//!
//! The files: `connect.rs` (the streams and buckets, and the watches that keep this node's
//! copies of the links and keys current), `clicks.rs` (click batches and reading them back),
//! `listing.rs` (the links in listing order), `backend.rs` (the contract), `writer/` (the
//! writer thread), `migrate.rs` (`linkpulse migrate`), `commands.rs` (the store opened by
//! `linkpulse keys|check|export --nats`, and what an export reads), `check.rs` (`linkpulse
//! check --nats`), `first_key.rs` (one first API key per cluster), `retention.rs`
//! (`--click-retention-days`).

mod audit;
mod backend;
mod check;
mod clicks;
mod commands;
mod connect;
mod first_key;
mod listing;
mod migrate;
mod retention;
#[cfg(test)]
mod tests;
mod writer;

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, kv, stream};
use dashmap::DashMap;

pub use check::ClusterVerified;
pub use first_key::FirstKey;
pub use migrate::migrate_command;
pub use retention::ClusterRetention;
pub use writer::start as start_writer;

use super::{ChangeListener, KeyRecord, StoreError};
use crate::domain::Link;
use listing::Listing;

/// The stream holding every click.
pub const CLICKS_STREAM: &str = "LP_CLICKS";
const CLICKS_PREFIX: &str = "lp.clicks.";
const LINKS: &str = "lp_links";
const KEYS: &str = "lp_keys";
const GONE: &str = "lp_gone";
const AGGREGATES: &str = "lp_aggregates";
const META: &str = "lp_meta";
const VISITOR_KEY: &str = "visitor-key";
/// Every request to NATS gives up after this (the client's own default is 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Making a bucket's watch may take this long (a million keys: several seconds).
const WATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the cluster store is and how it keeps its data.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Comma-separated server URLs (`nats://a:4222,nats://b:4222`).
    pub urls: String,
    /// Copies JetStream keeps of every stream and bucket (1 for a single server).
    pub replicas: usize,
    /// Link records this node keeps in memory (`--link-cache`).
    pub link_cache: usize,
}

/// The subject of a code's clicks.
pub fn clicks_subject(code: &str) -> String {
    format!("{CLICKS_PREFIX}{code}")
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Nats(format!("{what}: {e}"))
}

/// The messages of `subject` in `stream` from `from`, through an ordered consumer; `None`
/// (after a pause, said in the log with `what`) while it cannot be made.
async fn ordered_messages(
    client: &async_nats::Client,
    stream: &stream::Stream,
    subject: String,
    from: jetstream::consumer::DeliverPolicy,
    what: &str,
) -> Option<jetstream::consumer::push::Ordered> {
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: subject,
            deliver_policy: from,
            ..Default::default()
        })
        .await;
    let made = match consumer {
        Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match made {
        Ok(messages) => Some(messages),
        Err(cause) => {
            tracing::warn!(cause, "cannot follow {what} yet");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            None
        }
    }
}

/// The first message of `subject` in `stream` at or after sequence `from` (`None`: there is
/// none): one direct get. `what` names the reading in an error.
async fn message_from(
    stream: &stream::Stream,
    subject: &str,
    from: u64,
    what: &str,
) -> Result<Option<jetstream::message::StreamMessage>, StoreError> {
    match stream
        .raw_message_builder()
        .sequence(from.max(1))
        .next_by_subject(subject.to_owned())
        .send()
        .await
    {
        Ok(message) => Ok(Some(message)),
        Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(e) => Err(nats_error(what, e)),
    }
}

/// Runs `work` to its end from a blocking context (a `spawn_blocking` thread, or an async
/// thread of the multi-threaded runtime, which is handed over meanwhile).
fn block_on<F: Future>(runtime: &tokio::runtime::Handle, work: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(current) if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| runtime.block_on(work))
        }
        _ => runtime.block_on(work),
    }
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    clicks: stream::Stream,
    /// The audit log (see `audit.rs`).
    audit: stream::Stream,
    links_kv: kv::Store,
    keys_kv: kv::Store,
    /// The same two buckets, for their watches: making a watch of a bucket with a million
    /// keys takes the server longer than an ordinary request may.
    links_watch: kv::Store,
    keys_watch: kv::Store,
    gone_kv: kv::Store,
    aggregates_kv: kv::Store,
    meta_kv: kv::Store,
    /// Links read lately, as the links bucket holds them (kept current by its watch).
    links: quick_cache::sync::Cache<String, Arc<Link>>,
    /// Every link's place in listing order (see [`Listing`]).
    listing: RwLock<Listing>,
    /// Whether the listing holds every link stored when the node started (its watch has
    /// caught up).
    listed: tokio::sync::watch::Sender<bool>,
    /// Link changes and deletions taken in (see [`NatsStore::link_record`]).
    link_changes: AtomicU64,
    /// Every API key, as the keys bucket holds it.
    keys: DashMap<[u8; 32], KeyRecord>,
    visitor_key: [u8; 32],
    runtime: tokio::runtime::Handle,
    listener: RwLock<Option<Arc<dyn ChangeListener>>>,
    /// This process, in the `Lp-Node` header of what it publishes.
    node: String,
    /// Whether the clicks stream takes atomic batches (nats-server 2.12 and later).
    atomic: bool,
}

/// The cluster store (cheap to clone).
#[derive(Clone)]
pub struct NatsStore {
    inner: Arc<Inner>,
}

impl NatsStore {
    /// Who hears of link changes made on any node.
    pub fn set_listener(&self, listener: Arc<dyn ChangeListener>) {
        if let Ok(mut slot) = self.inner.listener.write() {
            *slot = Some(listener);
        }
    }

    /// The most bytes one message of clicks may have: well below the server's `max_payload`
    /// (1 MiB by default), whatever it is set to.
    fn message_bytes(&self) -> usize {
        (self.inner.client.server_info().max_payload / 2).clamp(4 * 1024, 512 * 1024)
    }

    fn run<F: Future>(&self, work: F) -> F::Output {
        block_on(&self.inner.runtime, work)
    }

    /// Whether this node's cache holds `code` (a link read or made lately, not deleted
    /// since): `false` says nothing.
    pub(super) fn has_link(&self, code: &str) -> bool {
        self.inner.links.get(code).is_some()
    }

    /// A link as the links bucket holds it: from the cache, or read from the bucket (and
    /// cached). Blocking.
    pub(super) fn link_record(&self, code: &str) -> Result<Option<Arc<Link>>, StoreError> {
        if let Some(link) = self.inner.links.get(code) {
            return Ok(Some(link));
        }
        self.run(self.read_link(code))
    }

    /// [`NatsStore::link_record`], awaited.
    pub(super) async fn find_link_record(
        &self,
        code: &str,
    ) -> Result<Option<Arc<Link>>, StoreError> {
        if let Some(link) = self.inner.links.get(code) {
            return Ok(Some(link));
        }
        self.read_link(code).await
    }

    /// A link read from the bucket, and cached.
    async fn read_link(&self, code: &str) -> Result<Option<Arc<Link>>, StoreError> {
        // Cached only if no change came through the watch meanwhile: a deletion applied while
        // this read was on its way must not be undone by it.
        let changes = self.inner.link_changes.load(Ordering::SeqCst);
        let Some(bytes) = self
            .inner
            .links_kv
            .get(code)
            .await
            .map_err(|e| nats_error("cannot read a link", e))?
        else {
            return Ok(None);
        };
        let link = Arc::new(crate::store::records::decode_link(&bytes)?);
        if self.inner.link_changes.load(Ordering::SeqCst) == changes {
            self.inner.links.insert(code.to_owned(), link.clone());
        }
        Ok(Some(link))
    }
}
