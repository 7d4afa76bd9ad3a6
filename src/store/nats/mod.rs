//! The cluster store: every durable thing in NATS JetStream, nothing on the node's disk
//! (`linkpulse serve --nats nats://a:4222,nats://b:4222,...`).
//!
//! - Links, API keys, deleted-code holds, aggregates snapshots and the installation's visitor
//!   key: key-value buckets (`lp_links`, `lp_keys`, `lp_gone`, `lp_aggregates`, `lp_meta`).
//!   Their streams are made here by hand (`KV_<bucket>`, one message per subject, roll-ups and
//!   direct gets allowed, discard new), as `nats kv add` makes them: async-nats 0.51's
//!   `create_key_value` cannot read nats-server 2.9's answer. Each node keeps the links and keys
//!   in memory and follows both buckets with a watch, so a change on one node reaches every
//!   node's copy at once (and its live actor, through [`ChangeListener`]).
//! - Clicks: one stream, `LP_CLICKS`, a subject per code (`lp.clicks.<code>`). Each message is
//!   a numbered batch of that code's clicks (see [`encode_batch`]), published with
//!   `Nats-Expected-Last-Subject-Sequence`: two nodes that both number a code's clicks can
//!   never both store them; the loser reloads the code's last number and retries (`writer.rs`).
//!   The count of a code is the number of the last click of its last message, as on fjall it
//!   is the number of the last stored click.
//!
//! Reads that go to NATS block the calling thread (`block_in_place`): call them off the async
//! threads, as the [`Backend`] contract says.

mod migrate;
#[cfg(test)]
mod tests;
mod writer;

use std::{
    ops::ControlFlow,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    kv::{self, Operation},
    stream::{self, DiscardPolicy, StorageType},
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use futures_util::StreamExt;
use tracing::{info, warn};

pub use migrate::migrate_command;
pub use writer::start as start_writer;

use super::{
    ChangeListener, Counter, Cursor, KeyRecord, Page, StoreError, backend::Backend, records,
    records::DecodeError,
};
use crate::{
    analytics::{Aggregates, VisitorKey, aggregates},
    domain::{ClickEvent, Link, ShortCode},
};

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
}

/// The subject of a code's clicks.
pub fn clicks_subject(code: &str) -> String {
    format!("{CLICKS_PREFIX}{code}")
}

/// A batch of one code's clicks, numbered in order: each click's record (as fjall stores it)
/// behind its length.
pub fn encode_batch<'a>(events: impl IntoIterator<Item = &'a ClickEvent>) -> Bytes {
    let mut out = BytesMut::new();
    for event in events {
        let record = records::encode_click(event);
        out.put_u32(record.len() as u32);
        out.put_slice(&record);
    }
    out.freeze()
}

/// The number of the first click of a batch (0 for an empty one).
fn first_seq(bytes: &[u8]) -> Result<u64, DecodeError> {
    let invalid = || DecodeError::Invalid {
        what: "click batch",
        cause: "a record runs past the end".into(),
    };
    let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
        return Ok(0);
    };
    let record = rest
        .get(..u32::from_be_bytes(*len) as usize)
        .ok_or_else(invalid)?;
    Ok(records::decode_click(record)?.seq)
}

pub fn decode_batch(mut bytes: &[u8]) -> Result<Vec<ClickEvent>, DecodeError> {
    let mut out = Vec::new();
    while bytes.has_remaining() {
        let invalid = || DecodeError::Invalid {
            what: "click batch",
            cause: "a record runs past the end".into(),
        };
        if bytes.remaining() < 4 {
            return Err(invalid());
        }
        let len = bytes.get_u32() as usize;
        if bytes.remaining() < len {
            return Err(invalid());
        }
        out.push(records::decode_click(&bytes[..len])?);
        bytes.advance(len);
    }
    Ok(out)
}

/// An aggregates snapshot in its bucket: the last click it covers, the stream sequence of the
/// message holding that click (0: unknown), then the snapshot.
fn encode_snapshot_entry(covers: u64, stream_seq: u64, bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + bytes.len());
    out.put_u64(covers);
    out.put_u64(stream_seq);
    out.put_slice(bytes);
    out.freeze()
}

fn decode_snapshot_entry(bytes: &[u8]) -> Option<(u64, u64, &[u8])> {
    let (head, rest) = bytes.split_at_checked(16)?;
    let covers = u64::from_be_bytes(head[..8].try_into().ok()?);
    let stream_seq = u64::from_be_bytes(head[8..].try_into().ok()?);
    Some((covers, stream_seq, rest))
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Nats(format!("{what}: {e}"))
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

/// The links in the order `GET /api/links` lists them (newest first, by the key the fjall
/// index sorts by), in all and per owner: a page is a range read, not a sort of every link.
#[derive(Default)]
struct Listing {
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
    fn remember(&self, link: Arc<Link>) {
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
    fn forget(&self, code: &str) {
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

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    clicks: stream::Stream,
    links_kv: kv::Store,
    keys_kv: kv::Store,
    /// The same two buckets, for their watches: making a watch of a bucket with a million
    /// keys takes the server longer than an ordinary request may.
    links_watch: kv::Store,
    keys_watch: kv::Store,
    gone_kv: kv::Store,
    aggregates_kv: kv::Store,
    meta_kv: kv::Store,
    /// Every link, as the links bucket holds it (filled and kept current by its watch).
    links: DashMap<String, Arc<Link>>,
    /// The same links in listing order (see [`Listing`]).
    listing: RwLock<Listing>,
    /// Every API key, as the keys bucket holds it.
    keys: DashMap<[u8; 32], KeyRecord>,
    visitor_key: [u8; 32],
    runtime: tokio::runtime::Handle,
    listener: RwLock<Option<Arc<dyn ChangeListener>>>,
    /// This process, in the `Lp-Node` header of what it publishes.
    node: String,
}

/// The cluster store (cheap to clone).
#[derive(Clone)]
pub struct NatsStore {
    inner: Arc<Inner>,
}

impl NatsStore {
    /// Connects, makes the streams and buckets if they are missing, and loads the links and
    /// keys. Fails when no server answers.
    pub async fn connect(config: &NatsConfig) -> Result<Self, StoreError> {
        let urls: Vec<String> = config
            .urls
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(StoreError::Nats("--nats names no server".into()));
        }
        let node = format!("{:016x}", rand::random::<u64>());
        let client = async_nats::ConnectOptions::new()
            .name(format!("linkpulse-{node}"))
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(3))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => warn!("NATS: disconnected"),
                    async_nats::Event::Connected => info!("NATS: connected"),
                    other => info!(event = %other, "NATS"),
                }
            })
            .connect(urls.clone())
            .await
            .map_err(|e| nats_error(&format!("cannot connect to NATS at {}", urls.join(",")), e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        let replicas = config.replicas.max(1);
        tracing::debug!("making the clicks stream");
        let clicks = js
            .get_or_create_stream(stream::Config {
                name: CLICKS_STREAM.into(),
                subjects: vec![format!("{CLICKS_PREFIX}>")],
                storage: StorageType::File,
                num_replicas: replicas,
                // Deleting a link purges its subject; single messages are never deleted.
                deny_delete: true,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("cannot make the clicks stream", e))?;
        let bucket = |name: &'static str| {
            let js = js.clone();
            async move {
                js.get_or_create_stream(stream::Config {
                    name: format!("KV_{name}"),
                    subjects: vec![format!("$KV.{name}.>")],
                    storage: StorageType::File,
                    num_replicas: replicas,
                    max_messages_per_subject: 1,
                    discard: DiscardPolicy::New,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_error(&format!("cannot make the bucket {name}"), e))?;
                js.get_key_value(name)
                    .await
                    .map_err(|e| nats_error(&format!("cannot open the bucket {name}"), e))
            }
        };
        tracing::debug!("making the buckets");
        let links_kv = bucket(LINKS).await?;
        let keys_kv = bucket(KEYS).await?;
        let gone_kv = bucket(GONE).await?;
        let aggregates_kv = bucket(AGGREGATES).await?;
        let meta_kv = bucket(META).await?;
        let visitor_key = self::visitor_key(&meta_kv).await?;
        let slow = jetstream::ContextBuilder::new()
            .timeout(WATCH_TIMEOUT)
            .build(client.clone());
        let watch_bucket = |name: &'static str| {
            let slow = slow.clone();
            async move {
                slow.get_key_value(name)
                    .await
                    .map_err(|e| nats_error(&format!("cannot open the bucket {name}"), e))
            }
        };
        let links_watch = watch_bucket(LINKS).await?;
        let keys_watch = watch_bucket(KEYS).await?;
        let inner = Arc::new(Inner {
            client,
            js,
            clicks,
            links_kv,
            keys_kv,
            links_watch,
            keys_watch,
            gone_kv,
            aggregates_kv,
            meta_kv,
            links: DashMap::new(),
            listing: RwLock::default(),
            keys: DashMap::new(),
            visitor_key,
            runtime: tokio::runtime::Handle::current(),
            listener: RwLock::new(None),
            node,
        });
        let store = Self { inner };
        tracing::debug!("loading the links and keys");
        let links = store.follow_links().await?;
        let keys = store.follow_keys().await?;
        info!(links, keys, servers = %urls.join(","), replicas, "NATS JetStream store ready");
        Ok(store)
    }

    /// Who hears of link changes made on any node.
    pub fn set_listener(&self, listener: Arc<dyn ChangeListener>) {
        if let Ok(mut slot) = self.inner.listener.write() {
            *slot = Some(listener);
        }
    }

    pub fn links_len(&self) -> usize {
        self.inner.links.len()
    }

    /// Fills the link copies from the bucket and keeps them current; returns how many were
    /// there at the start.
    async fn follow_links(&self) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        let watch = inner
            .links_watch
            .watch_with_history(">")
            .await
            .map_err(|e| nats_error("cannot watch the links bucket", e))?;
        let pending = bucket_len(&inner.links_kv).await?;
        let apply = move |inner: &Inner, entry: kv::Entry| {
            let code = entry.key.clone();
            let link = match entry.operation {
                Operation::Put => match records::decode_link(&entry.value) {
                    Ok(link) => Some(Arc::new(link)),
                    Err(e) => {
                        warn!(code, cause = %e, "an unreadable link record in the bucket");
                        return;
                    }
                },
                Operation::Delete | Operation::Purge => None,
            };
            match &link {
                Some(link) => {
                    let newer = inner
                        .links
                        .get(&code)
                        .is_none_or(|old| old.rev <= link.rev || old.created_at != link.created_at);
                    if !newer {
                        return;
                    }
                    inner.remember(link.clone());
                }
                None => inner.forget(&code),
            }
            let listener = inner.listener.read().ok().and_then(|l| l.clone());
            if let (Some(listener), Ok(code)) = (listener, ShortCode::parse(&code)) {
                listener.link_changed(&code, link);
            }
        };
        follow(inner, watch, pending, apply, "links").await
    }

    async fn follow_keys(&self) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        let watch = inner
            .keys_watch
            .watch_with_history(">")
            .await
            .map_err(|e| nats_error("cannot watch the keys bucket", e))?;
        let pending = bucket_len(&inner.keys_kv).await?;
        let apply = |inner: &Inner, entry: kv::Entry| {
            let Some(hash) = hex::decode(&entry.key)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
            else {
                return;
            };
            match entry.operation {
                Operation::Put => match records::decode_key(&entry.value) {
                    Ok(record) => {
                        inner.keys.insert(hash, record);
                    }
                    Err(e) => warn!(cause = %e, "an unreadable key record in the bucket"),
                },
                Operation::Delete | Operation::Purge => {
                    inner.keys.remove(&hash);
                }
            }
        };
        follow(inner, watch, pending, apply, "keys").await
    }

    /// The stream sequence and last click number of a code's last message ((0, 0): none),
    /// and that message's `Nats-Msg-Id`.
    async fn last_batch(
        &self,
        code: &str,
    ) -> Result<(u64, Option<ClickEvent>, String), StoreError> {
        match self
            .inner
            .clicks
            .get_last_raw_message_by_subject(&clicks_subject(code))
            .await
        {
            Ok(message) => {
                let events = decode_batch(&message.payload)?;
                let id = message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                Ok((message.sequence, events.into_iter().last(), id))
            }
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                Ok((0, None, String::new()))
            }
            Err(e) => Err(nats_error("cannot read a code's last clicks", e)),
        }
    }

    /// The stream sequence and `Nats-Msg-Id` of the code's first message stored after stream
    /// sequence `after` (`None`: there is none).
    async fn batch_after(
        &self,
        code: &str,
        after: u64,
    ) -> Result<Option<(u64, String)>, StoreError> {
        match self
            .inner
            .clicks
            .raw_message_builder()
            .sequence(after + 1)
            .next_by_subject(clicks_subject(code))
            .send()
            .await
        {
            Ok(message) => {
                let id = message
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                Ok(Some((message.sequence, id)))
            }
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                Ok(None)
            }
            Err(e) => Err(nats_error("cannot read a code's clicks", e)),
        }
    }

    /// The stream sequence of the code's message that holds click `seq` (or, if none does,
    /// one at or before where it would be): a binary search over stream sequences up to
    /// `last_at`, one read per step, each read taking the first message of the code at or
    /// after a sequence. Messages of a code hold its clicks in order.
    async fn message_holding(&self, code: &str, seq: u64, last_at: u64) -> Result<u64, StoreError> {
        let subject = clicks_subject(code);
        let (mut lo, mut hi, mut best) = (1u64, last_at, 1u64);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let message = match self
                .inner
                .clicks
                .raw_message_builder()
                .sequence(mid)
                .next_by_subject(subject.clone())
                .send()
                .await
            {
                Ok(message) => message,
                Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                    hi = mid - 1;
                    continue;
                }
                Err(e) => return Err(nats_error("cannot read a code's clicks", e)),
            };
            let first = first_seq(&message.payload)?;
            if first <= seq {
                best = message.sequence;
                lo = message.sequence + 1;
            } else {
                hi = mid - 1;
            }
        }
        Ok(best)
    }

    /// Walks the code's clicks in order from the message at or after stream sequence `from`,
    /// until `each` breaks.
    fn walk_from(
        &self,
        code: &str,
        mut from: u64,
        each: &mut dyn FnMut(ClickEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let subject = clicks_subject(code);
        self.run(async {
            loop {
                let message = match self
                    .inner
                    .clicks
                    .raw_message_builder()
                    .sequence(from)
                    .next_by_subject(subject.clone())
                    .send()
                    .await
                {
                    Ok(message) => message,
                    Err(e)
                        if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) =>
                    {
                        return Ok(());
                    }
                    Err(e) => return Err(nats_error("cannot read a code's clicks", e)),
                };
                for event in decode_batch(&message.payload)? {
                    if each(event).is_break() {
                        return Ok(());
                    }
                }
                from = message.sequence + 1;
            }
        })
    }

    /// The most bytes one message of clicks may have: well below the server's `max_payload`
    /// (1 MiB by default), whatever it is set to.
    fn message_bytes(&self) -> usize {
        (self.inner.client.server_info().max_payload / 2).clamp(4 * 1024, 512 * 1024)
    }

    fn run<F: Future>(&self, work: F) -> F::Output {
        block_on(&self.inner.runtime, work)
    }

    /// Whether the links bucket has `code` (in this node's copy).
    pub(super) fn has_link(&self, code: &str) -> bool {
        self.inner.links.contains_key(code)
    }
}

/// How many keys a bucket holds now (what a watch delivers before it is current).
async fn bucket_len(bucket: &kv::Store) -> Result<u64, StoreError> {
    let mut stream = bucket.stream.clone();
    let info = stream
        .info()
        .await
        .map_err(|e| nats_error("cannot read a bucket's size", e))?;
    Ok(info.state.messages)
}

/// Applies a bucket's entries as its watch delivers them: waits for the ones stored now (the
/// watch starts with the last value of every key), then follows the rest on a task.
async fn follow(
    inner: Arc<Inner>,
    mut watch: kv::Watch,
    pending: u64,
    apply: impl Fn(&Inner, kv::Entry) + Send + Sync + 'static,
    what: &'static str,
) -> Result<usize, StoreError> {
    let mut loaded = 0;
    if pending > 0 {
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(|e| nats_error(&format!("the {what} watch failed"), e))?;
            let current = entry.delta == 0 || entry.seen_current;
            apply(&inner, entry);
            loaded += 1;
            if current {
                break;
            }
        }
    }
    tokio::spawn(async move {
        loop {
            while let Some(entry) = watch.next().await {
                match entry {
                    Ok(entry) => apply(&inner, entry),
                    Err(e) => warn!(cause = %e, what, "a bucket watch failed; watching again"),
                }
            }
            // The watch ended (a server gone for long): start again from what is stored now.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let bucket = if what == "links" {
                &inner.links_watch
            } else {
                &inner.keys_watch
            };
            match bucket.watch_with_history(">").await {
                Ok(again) => watch = again,
                Err(e) => warn!(cause = %e, what, "cannot watch a bucket again yet"),
            }
        }
    });
    Ok(loaded)
}

/// The installation's visitor key: made by the first node, read by the others.
async fn visitor_key(meta: &kv::Store) -> Result<[u8; 32], StoreError> {
    let made: [u8; 32] = rand::random();
    match meta
        .create(VISITOR_KEY, Bytes::copy_from_slice(&made))
        .await
    {
        Ok(_) => return Ok(made),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(nats_error("cannot store the visitor key", e)),
    }
    let stored = meta
        .get(VISITOR_KEY)
        .await
        .map_err(|e| nats_error("cannot read the visitor key", e))?
        .ok_or_else(|| StoreError::Inconsistent("the visitor key vanished".into()))?;
    <[u8; 32]>::try_from(stored.as_ref())
        .map_err(|_| StoreError::Inconsistent("a visitor key of the wrong length".into()))
}

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
        Ok(self.inner.links.get(code).map(|l| Link::clone(&l)))
    }

    fn follow(
        &self,
        code: &str,
        mut deliver: Box<dyn FnMut(Vec<ClickEvent>) + Send>,
    ) -> Option<tokio::task::AbortHandle> {
        let (inner, subject) = (self.inner.clone(), clicks_subject(code));
        let code = code.to_owned();
        let task = self.inner.runtime.spawn(async move {
            // An ordered consumer: every stored message of the subject, in order, from its
            // last one on; it is made again (from where it was) if a server goes away.
            let mut from = jetstream::consumer::DeliverPolicy::LastPerSubject;
            loop {
                let consumer = inner
                    .clicks
                    .create_consumer(jetstream::consumer::push::OrderedConfig {
                        deliver_subject: inner.client.new_inbox(),
                        filter_subject: subject.clone(),
                        deliver_policy: from,
                        ..Default::default()
                    })
                    .await;
                let mut messages = match consumer {
                    Ok(consumer) => match consumer.messages().await {
                        Ok(messages) => messages,
                        Err(e) => {
                            warn!(code, cause = %e, "cannot follow a code's clicks yet");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    },
                    Err(e) => {
                        warn!(code, cause = %e, "cannot follow a code's clicks yet");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(message) = messages.next().await {
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            warn!(code, cause = %e, "following a code's clicks failed; again");
                            break;
                        }
                    };
                    if let Ok(info) = message.info() {
                        from = jetstream::consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: info.stream_sequence + 1,
                        };
                    }
                    let own = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Lp-Node"))
                        .is_some_and(|n| n.as_str() == inner.node);
                    // This node's own clicks reach its actor through the writer.
                    if own {
                        continue;
                    }
                    match decode_batch(&message.payload) {
                        Ok(events) if !events.is_empty() => deliver(events),
                        Ok(_) => {}
                        Err(e) => warn!(code, cause = %e, "an unreadable click batch"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
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
