//! Connecting a node: the client, the clicks stream and the buckets (made if they are
//! missing), the installation's visitor key, and the watches that fill this node's copies of
//! the links and keys and keep them current.

use std::{
    sync::{Arc, RwLock, atomic::AtomicU64},
    time::Duration,
};

use async_nats::jetstream::{
    self,
    kv::{self, Operation},
    stream::{self, DiscardPolicy, StorageType},
};
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::{
    AGGREGATES, CLICKS_PREFIX, CLICKS_STREAM, GONE, Inner, KEYS, LINKS, META, NatsConfig,
    NatsStore, REQUEST_TIMEOUT, VISITOR_KEY, WATCH_TIMEOUT, nats_error,
};
use crate::{
    domain::ShortCode,
    store::{StoreError, records},
};

impl NatsStore {
    /// Connects, makes the streams and buckets if they are missing, and loads the links and
    /// keys. Fails when no server answers.
    pub async fn connect(config: &NatsConfig) -> Result<Self, StoreError> {
        let urls = server_urls(config)?;
        let node = format!("{:016x}", rand::random::<u64>());
        let client = connect_client(&urls, &node).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        let replicas = config.replicas.max(1);
        tracing::debug!("making the clicks stream");
        let mut clicks = clicks_stream(&js, replicas).await?;
        let atomic = allow_atomic_batches(&js, &client, &mut clicks).await;
        let audit = made_stream(&js, super::audit::config(replicas))
            .await
            .map_err(|e| nats_error("cannot make the audit stream", e))?;
        tracing::debug!("making the buckets");
        let links_kv = bucket(&js, LINKS, replicas).await?;
        let keys_kv = bucket(&js, KEYS, replicas).await?;
        let gone_kv = bucket(&js, GONE, replicas).await?;
        let aggregates_kv = bucket(&js, AGGREGATES, replicas).await?;
        let meta_kv = bucket(&js, META, replicas).await?;
        let visitor_key = self::visitor_key(&meta_kv).await?;
        let slow = jetstream::ContextBuilder::new()
            .timeout(WATCH_TIMEOUT)
            .build(client.clone());
        let links_watch = watch_bucket(&slow, LINKS).await?;
        let keys_watch = watch_bucket(&slow, KEYS).await?;
        let inner = Arc::new(Inner {
            client,
            js,
            clicks,
            audit,
            links_kv,
            keys_kv,
            links_watch,
            keys_watch,
            gone_kv,
            aggregates_kv,
            meta_kv,
            links: quick_cache::sync::Cache::new(config.link_cache.max(16)),
            listing: RwLock::default(),
            listed: tokio::sync::watch::Sender::new(false),
            link_changes: AtomicU64::new(0),
            keys: DashMap::new(),
            visitor_key,
            runtime: tokio::runtime::Handle::current(),
            listener: RwLock::new(None),
            node,
            atomic,
        });
        let store = Self { inner };
        tracing::debug!("loading the keys");
        let keys = store.follow_keys().await?;
        let links = bucket_len(&store.inner.links_kv).await?;
        store.follow_links_in_background();
        info!(links, keys, servers = %urls.join(","), replicas, "NATS JetStream store ready");
        Ok(store)
    }

    /// Reads every link's place in the listing from the bucket, then keeps the places and the
    /// cache current, while the node already serves; the listing is ready once the watch has
    /// caught up (tried again until it has).
    fn follow_links_in_background(&self) {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                match store.follow_links().await {
                    Ok(links) => {
                        info!(links, "every link's place in the listing is read");
                        store.inner.listed.send_replace(true);
                        return;
                    }
                    Err(e) => {
                        warn!(cause = %e, "cannot read the links yet; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    /// Follows the links bucket from its first entry: places in the listing, the cache kept
    /// current, live actors told. Returns once it has caught up, with how many it read.
    async fn follow_links(&self) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        // What the bucket held before the watch: no change to tell live actors of (a node
        // reads each link it uses from the bucket, as it is now).
        let mut links_stream = inner.links_kv.stream.clone();
        let held = links_stream
            .info()
            .await
            .map_err(|e| nats_error("cannot read the links bucket", e))?
            .state
            .clone();
        let watch = inner
            .links_watch
            .watch_with_history(">")
            .await
            .map_err(|e| nats_error("cannot watch the links bucket", e))?;
        let (pending, since) = (held.messages, held.last_sequence);
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
                    inner.heard(link.clone());
                }
                None => inner.forget(&code),
            }
            if entry.revision <= since {
                return;
            }
            let listener = inner.listener.read().ok().and_then(|l| l.clone());
            if let (Some(listener), Ok(code)) = (listener, ShortCode::from_key(&code)) {
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
}

/// The server URLs `--nats` names (comma-separated).
fn server_urls(config: &NatsConfig) -> Result<Vec<String>, StoreError> {
    let urls: Vec<String> = config
        .urls
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(StoreError::Nats("--nats names no server".into()));
    }
    Ok(urls)
}

/// See [`connect_client`].
const SUBSCRIPTION_CAPACITY: usize = 8_192;

/// A client of the servers at `urls`, named after this node, reconnecting for ever.
async fn connect_client(urls: &[String], node: &str) -> Result<async_nats::Client, StoreError> {
    async_nats::ConnectOptions::new()
        .name(format!("linkpulse-{node}"))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        // Messages a subscription may hold unread (async-nats keeps 65,536): the links
        // bucket's watch delivers a million links at a node's start faster than they are
        // read, and what waits is memory. Past it the watch starts again where it was.
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => warn!("NATS: disconnected"),
                async_nats::Event::Connected => info!("NATS: connected"),
                async_nats::Event::SlowConsumer(_) => {
                    debug!("NATS: a subscription's messages came faster than they were read");
                }
                other => info!(event = %other, "NATS"),
            }
        })
        .connect(urls.to_vec())
        .await
        .map_err(|e| nats_error(&format!("cannot connect to NATS at {}", urls.join(",")), e))
        .inspect(warn_if_old)
}

/// The first nats-server release whose clustered streams refuse the second of two publishes
/// that expect the same last message of a subject (before it the check ran ahead of the
/// servers' agreement, and was skipped for a publish expecting no message at all): a
/// code's clicks are numbered by that check when several nodes take them.
const EXACT_SINCE: (u64, u64, u64) = (2, 10, 19);

/// The first nats-server release that stores atomic batches.
const ATOMIC_SINCE: (u64, u64, u64) = (2, 12, 0);

/// The version of the server the client is connected to.
fn server_version(client: &async_nats::Client) -> (u64, u64, u64) {
    let version = client.server_info().version;
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Lets the clicks stream take atomic batches (see `writer/batch.rs`) where the servers
/// can; whether it does. A stream made before, or by an older server, is updated.
async fn allow_atomic_batches(
    js: &jetstream::Context,
    client: &async_nats::Client,
    clicks: &mut stream::Stream,
) -> bool {
    if server_version(client) < ATOMIC_SINCE {
        return false;
    }
    let mut config = clicks.cached_info().config.clone();
    if config.allow_atomic_publish {
        return true;
    }
    config.allow_atomic_publish = true;
    match js.update_stream(config).await {
        Ok(info) => {
            if let Ok(fresh) = js.get_stream(CLICKS_STREAM).await {
                *clicks = fresh;
            }
            info.config.allow_atomic_publish
        }
        Err(e) => {
            // Another server of the cluster may be older: clicks go one code at a time.
            info!(cause = %e, "the clicks stream does not take atomic batches");
            false
        }
    }
}

/// Warns when the server is older than [`EXACT_SINCE`].
fn warn_if_old(client: &async_nats::Client) {
    let version = client.server_info().version;
    if server_version(client) < EXACT_SINCE {
        warn!(
            version = %version,
            "this nats-server is older than 2.10.19: in a cluster it may store two nodes' clicks \
             of one code under the same numbers; counts are exact only while one node takes \
             each code's clicks (use nats-server 2.10.19 or later)"
        );
    }
}

/// The clicks stream, made if it is missing.
async fn clicks_stream(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<stream::Stream, StoreError> {
    made_stream(
        js,
        stream::Config {
            name: CLICKS_STREAM.into(),
            subjects: vec![format!("{CLICKS_PREFIX}>")],
            storage: StorageType::File,
            num_replicas: replicas,
            // Deleting a link purges its subject; single messages are never deleted.
            deny_delete: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| nats_error("cannot make the clicks stream", e))
}

/// The stream `config` names, made if it is missing. Nodes that start together may both find
/// it missing: the one that makes it second is refused (the first may have changed the
/// stream's settings meanwhile, see [`allow_atomic_batches`]) and takes the stream made.
async fn made_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, jetstream::context::CreateStreamError> {
    let name = config.name.clone();
    match js.get_or_create_stream(config).await {
        Ok(made) => Ok(made),
        Err(refused) => js.get_stream(&name).await.map_err(|_| refused),
    }
}

/// The bucket `name`, its stream made by hand if it is missing (see the module's notes).
async fn bucket(
    js: &jetstream::Context,
    name: &'static str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    made_stream(
        js,
        stream::Config {
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
        },
    )
    .await
    .map_err(|e| nats_error(&format!("cannot make the bucket {name}"), e))?;
    js.get_key_value(name)
        .await
        .map_err(|e| nats_error(&format!("cannot open the bucket {name}"), e))
}

/// The bucket `name` opened through `slow`, the context whose requests may take as long as
/// making a watch of a large bucket does.
async fn watch_bucket(
    slow: &jetstream::Context,
    name: &'static str,
) -> Result<kv::Store, StoreError> {
    slow.get_key_value(name)
        .await
        .map_err(|e| nats_error(&format!("cannot open the bucket {name}"), e))
}

/// How many keys a bucket holds now (what a watch delivers before it is current).
pub(super) async fn bucket_len(bucket: &kv::Store) -> Result<u64, StoreError> {
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
