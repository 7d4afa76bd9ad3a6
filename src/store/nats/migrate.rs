//! `linkpulse migrate`: moves a one-machine installation (a stopped fjall store) into an empty
//! cluster store, with its API keys, domains (and their certificates), links, every click (numbered as they were) and the
//! aggregates snapshots, so its counts, click lists and stats read the same from any node.

use std::{fmt, path::Path, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::sync::mpsc;

use super::{
    NatsConfig, NatsStore,
    clicks::{encode_batch, encode_snapshot_entry},
    clicks_subject,
};
use crate::{
    domain::ClickEvent,
    store::{Store, StoreError, backend::Backend, records},
};

/// Clicks in one message of the stream at most (a code's clicks go in batches of this many).
const BATCH: usize = 1000;
/// Publishes awaiting their acknowledgement at once.
const IN_FLIGHT: usize = 4096;

/// What a migration moved.
#[derive(Debug, Default)]
pub struct Migrated {
    pub keys: u64,
    pub domains: u64,
    pub links: u64,
    pub clicks: u64,
    pub snapshots: u64,
}

impl fmt::Display for Migrated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "migrated: {} api keys, {} domains, {} links, {} clicks, {} aggregates snapshots",
            self.keys, self.domains, self.links, self.clicks, self.snapshots
        )
    }
}

/// One message for the stream: a code's batch of clicks.
struct Message {
    subject: String,
    payload: Bytes,
    clicks: u64,
}

/// Reads the store in `data_dir` (the server stopped) and writes it into the cluster at
/// `config`, which must hold no link and no click yet.
pub async fn migrate(data_dir: &Path, config: &NatsConfig) -> anyhow::Result<Migrated> {
    let dir = data_dir.to_owned();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await?
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let nats = connect_empty(config).await?;
    // Unique-visitor counts of the snapshots were made with this store's secret.
    nats.inner
        .meta_kv
        .put(
            super::VISITOR_KEY,
            Bytes::copy_from_slice(&store.visitor_key_bytes()),
        )
        .await
        .map_err(|e| super::nats_error("cannot store the visitor key", e))?;
    let migrated = Migrated {
        keys: move_keys(&store, &nats).await?,
        domains: move_domains(&store, &nats).await?,
        links: move_links(&store, &nats).await?,
        clicks: move_clicks(&store, &nats).await?,
        snapshots: move_snapshots(&store, &nats).await?,
    };
    // Left as found: a store that was closed cleanly is closed cleanly again.
    if store.startup_report().clean_close {
        let dir = data_dir.to_owned();
        tokio::task::spawn_blocking(move || store.close_clean(&dir))
            .await?
            .context("cannot close the store cleanly")?;
    }
    Ok(migrated)
}

/// The cluster store at `config`, refused unless it holds no link and no click.
async fn connect_empty(config: &NatsConfig) -> anyhow::Result<NatsStore> {
    let nats = NatsStore::connect(config)
        .await
        .context("cannot open the NATS JetStream store")?;
    let stream_messages = nats
        .inner
        .clicks
        .clone()
        .info()
        .await
        .map_err(|e| super::nats_error("cannot read the clicks stream", e))?
        .state
        .messages;
    let links = super::connect::bucket_len(&nats.inner.links_kv)
        .await
        .context("cannot read the links bucket")?;
    anyhow::ensure!(
        links == 0 && stream_messages == 0,
        "the cluster already holds {} links and {stream_messages} click batches: migrate into \
         an empty one (a fresh JetStream, or delete the LP_CLICKS stream and the KV_lp_* \
         buckets first)",
        links
    );
    Ok(nats)
}

/// Moves the API keys; returns how many.
async fn move_keys(store: &Store, nats: &NatsStore) -> anyhow::Result<u64> {
    let mut moved = 0;
    for (hash, record) in store.api_keys()? {
        let put = nats.clone();
        tokio::task::spawn_blocking(move || put.put_api_key(hash, &record)).await??;
        moved += 1;
    }
    Ok(moved)
}

/// Moves the domains and the settings kept beside them (the ACME account, certificates, so
/// the cluster serves them without ordering again); returns how many domains.
async fn move_domains(store: &Store, nats: &NatsStore) -> anyhow::Result<u64> {
    let mut moved = 0;
    for record in store.domains()? {
        let put = nats.clone();
        tokio::task::spawn_blocking(move || put.put_domain(&record)).await??;
        moved += 1;
    }
    for (name, value) in store.settings("")? {
        let put = nats.clone();
        tokio::task::spawn_blocking(move || put.put_setting(&name, &value)).await??;
    }
    Ok(moved)
}

/// Moves the links, read on a blocking thread and written here with many in flight; returns
/// how many.
async fn move_links(store: &Store, nats: &NatsStore) -> anyhow::Result<u64> {
    let mut moved = 0;
    let (tx, mut rx) = mpsc::channel::<(String, Bytes)>(IN_FLIGHT);
    let reader = store.clone();
    let links = tokio::task::spawn_blocking(move || {
        reader.each_link(|link| {
            let value = Bytes::from(records::encode_link(&link));
            tx.blocking_send((link.code.to_string(), value))
                .map_err(|_| StoreError::Nats("the migration stopped".into()))
        })
    });
    let mut pending = FuturesUnordered::new();
    while let Some((code, value)) = rx.recv().await {
        let bucket = nats.inner.links_kv.clone();
        pending.push(async move { bucket.create(&code, value).await.map(|_| ()) });
        if pending.len() >= 256
            && let Some(done) = pending.next().await
        {
            done.context("cannot store a link")?;
            moved += 1;
        }
    }
    while let Some(done) = pending.next().await {
        done.context("cannot store a link")?;
        moved += 1;
    }
    links.await??;
    Ok(moved)
}

/// Moves every click, numbered as it was, in batches of a code's clicks; returns how many.
async fn move_clicks(store: &Store, nats: &NatsStore) -> anyhow::Result<u64> {
    let mut moved = 0;
    let (tx, mut rx) = mpsc::channel::<Message>(IN_FLIGHT);
    let clicks = read_clicks(store.clone(), tx);
    // One connection publishes in order, so a code's batches are stored in order.
    let js = Arc::new(nats.inner.js.clone());
    let mut acks = FuturesUnordered::new();
    while let Some(message) = rx.recv().await {
        let ack = js
            .publish(message.subject, message.payload)
            .await
            .context("cannot publish clicks")?;
        let n = message.clicks;
        acks.push(async move { ack.await.map(|_| n) });
        if acks.len() >= IN_FLIGHT
            && let Some(done) = acks.next().await
        {
            moved += done.context("clicks not stored")?;
        }
    }
    while let Some(done) = acks.next().await {
        moved += done.context("clicks not stored")?;
    }
    clicks.await??;
    Ok(moved)
}

/// Reads every click on a blocking thread and sends them to `tx` as messages of one code's
/// clicks, at most [`BATCH`] each.
fn read_clicks(
    reader: Store,
    tx: mpsc::Sender<Message>,
) -> tokio::task::JoinHandle<Result<(), StoreError>> {
    tokio::task::spawn_blocking(move || {
        let mut code = String::new();
        let mut batch: Vec<ClickEvent> = Vec::new();
        let send = |code: &str, batch: &mut Vec<ClickEvent>| {
            if batch.is_empty() {
                return Ok(());
            }
            let message = Message {
                subject: clicks_subject(code),
                payload: encode_batch(batch.iter()),
                clicks: batch.len() as u64,
            };
            batch.clear();
            tx.blocking_send(message)
                .map_err(|_| StoreError::Nats("the migration stopped".into()))
        };
        reader.each_click(|c, event| {
            if c != code || batch.len() >= BATCH {
                send(&code, &mut batch)?;
                c.clone_into(&mut code);
            }
            batch.push(event);
            Ok::<_, StoreError>(())
        })?;
        send(&code, &mut batch)
    })
}

/// Moves the snapshots, so the nodes need not rebuild every link's aggregates from its
/// clicks; returns how many.
async fn move_snapshots(store: &Store, nats: &NatsStore) -> anyhow::Result<u64> {
    let mut moved = 0;
    let reader = store.clone();
    let snapshots = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        reader.each_link(|link| {
            if let Some((covers, bytes)) = reader.snapshot_bytes(link.code.as_str())? {
                out.push((link.code.to_string(), covers, bytes));
            }
            Ok::<_, StoreError>(())
        })?;
        Ok::<_, StoreError>(out)
    })
    .await??;
    for (code, covers, bytes) in snapshots {
        nats.inner
            .aggregates_kv
            .put(&code, encode_snapshot_entry(covers, 0, &bytes))
            .await
            .map_err(|e| super::nats_error("cannot store aggregates", e))?;
        moved += 1;
    }
    Ok(moved)
}

/// `linkpulse migrate`: the summary to print.
pub async fn migrate_command(data_dir: &Path, config: &NatsConfig) -> anyhow::Result<String> {
    let migrated = migrate(data_dir, config).await?;
    Ok(migrated.to_string())
}
