//! Opening the store the configuration asks for, and what a running service does with it
//! that depends on the engine (retention, the clean close, following other nodes), so the
//! layers above never name one.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;

use super::{
    ChangeListener, SharedStore, StoreError, Writer, WriterConfig,
    fjall::{self, Store},
    nats::{ClusterRetention, FirstKey, NatsConfig, NatsStore},
};
use crate::analytics::AggregateSettings;

/// Where the store is.
#[derive(Debug, Clone)]
pub enum Location {
    /// The embedded store in this directory.
    Dir(PathBuf),
    /// A cluster store: NATS JetStream servers (comma-separated URLs), each stream and bucket
    /// kept in `replicas` copies; `link_cache` link records kept in memory.
    Cluster {
        urls: String,
        replicas: usize,
        link_cache: usize,
    },
}

enum Engine {
    Embedded(Store),
    Cluster(NatsStore),
}

/// The open store, its writer, and the engine behind them.
pub struct Opened {
    pub store: SharedStore,
    pub writer: Writer,
    engine: Engine,
}

impl Opened {
    /// Opens the store at `location` (building what an older embedded store lacks) and
    /// starts its writer.
    pub async fn open(
        location: &Location,
        aggregates: &AggregateSettings,
        writer: WriterConfig,
    ) -> anyhow::Result<Self> {
        match location {
            Location::Dir(dir) => {
                let store = open_dir(dir, aggregates).await?;
                let writer = Writer::start(store.clone(), writer)
                    .context("cannot start the writer thread")?;
                Ok(Self {
                    store: Arc::new(store.clone()),
                    writer,
                    engine: Engine::Embedded(store),
                })
            }
            Location::Cluster {
                urls,
                replicas,
                link_cache,
            } => {
                let store = NatsStore::connect(&NatsConfig {
                    urls: urls.clone(),
                    replicas: *replicas,
                    link_cache: *link_cache,
                })
                .await
                .context("cannot open the NATS JetStream store")?;
                let writer = super::nats::start_writer(store.clone(), writer)
                    .context("cannot start the writer thread")?;
                Ok(Self {
                    store: Arc::new(store.clone()),
                    writer,
                    engine: Engine::Cluster(store),
                })
            }
        }
    }

    /// Whether other nodes share the store (and this node keeps nothing on its disk).
    pub fn shared_by_nodes(&self) -> bool {
        matches!(self.engine, Engine::Cluster(_))
    }

    /// Who hears of link changes made on other nodes (nobody else writes an embedded store).
    pub fn set_listener(&self, listener: Arc<dyn ChangeListener>) {
        if let Engine::Cluster(store) = &self.engine {
            store.set_listener(listener);
        }
    }

    /// Starts deleting clicks older than `days` (`--click-retention-days`): the embedded
    /// store through its writer; a cluster store by purging whole click messages, on one
    /// node at a time. Either way, only clicks a readable aggregates snapshot covers, and
    /// never what carries a code's count.
    pub fn start_retention(&self, days: u32, every: Duration) -> anyhow::Result<Retention> {
        let keep = Duration::from_secs(u64::from(days) * 86_400);
        Ok(match &self.engine {
            Engine::Embedded(store) => Retention::Embedded(fjall::Retention::start(
                store.clone(),
                self.writer.handle(),
                keep,
                every,
            )),
            Engine::Cluster(store) => Retention::Cluster(store.start_retention(keep, every)),
        })
    }

    /// Whether this process makes the installation's first API key (for the key hashing to
    /// `hash`; call it only when no key is stored): always on an embedded store, which one
    /// process holds; on a cluster store, only on the node that claims it first.
    pub fn claim_first_key(&self, hash: &[u8; 32]) -> Result<FirstKey, StoreError> {
        match &self.engine {
            Engine::Embedded(_) => Ok(FirstKey::Make),
            Engine::Cluster(store) => store.claim_first_key(hash),
        }
    }

    /// Notes that the key hashing to `hash` was given and stored (`--initial-api-key`): a
    /// cluster's nodes started without a key then make none.
    pub fn given_first_key(&self, hash: &[u8; 32]) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Embedded(_) => Ok(()),
            Engine::Cluster(store) => store.mark_first_key(hash),
        }
    }

    /// The writer (to stop it) and what closes the store after it.
    pub fn into_closing(self) -> (Writer, Closing) {
        (self.writer, Closing(self.engine))
    }
}

/// The running expiry of raw clicks past `--click-retention-days`; stops when dropped.
pub enum Retention {
    Embedded(fjall::Retention),
    Cluster(ClusterRetention),
}

/// What is left to do with a store once its writer has stopped.
pub struct Closing(Engine);

impl Closing {
    /// The embedded store flushes and marks itself closed cleanly (the next start skips its
    /// checks); a cluster store has nothing on this node to close.
    pub fn close(&self, dir: &Path) -> Result<(), super::StoreError> {
        match &self.0 {
            Engine::Embedded(store) => store.close_clean(dir),
            Engine::Cluster(_) => Ok(()),
        }
    }
}

/// Opens the embedded store in `dir` and builds what an older store lacks.
async fn open_dir(dir: &Path, aggregates: &AggregateSettings) -> anyhow::Result<Store> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let at = dir.to_owned();
    let store = tokio::task::spawn_blocking(move || Store::open(&at))
        .await?
        .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    let built = store.clone();
    let aggregates = aggregates.clone();
    tokio::task::spawn_blocking(move || built.build_missing_aggregates(&aggregates))
        .await?
        .context("cannot build the aggregates of the stored links")?;
    let built = store.clone();
    tokio::task::spawn_blocking(move || built.build_link_index())
        .await?
        .context("cannot build the listing index of the stored links")?;
    Ok(store)
}

/// `linkpulse migrate`: copies a stopped embedded store into an empty cluster store.
pub async fn migrate_command(
    data_dir: &Path,
    urls: String,
    replicas: usize,
) -> anyhow::Result<String> {
    let config = NatsConfig {
        urls,
        replicas,
        link_cache: 1_000,
    };
    super::nats::migrate_command(data_dir, &config).await
}

/// Opens the store in `data_dir` for a command run while the server is stopped, runs `work`,
/// and leaves the store's clean-close mark as it found it: a store that was closed cleanly is
/// closed cleanly again, so the next start skips its checks but the floor.
pub fn with_stopped_store<T>(
    data_dir: &std::path::Path,
    open: fn(&std::path::Path) -> Result<Store, super::StoreError>,
    work: impl FnOnce(&Store) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let store = open(data_dir)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let out = work(&store)?;
    if store.startup_report().clean_close {
        store
            .close_clean(data_dir)
            .context("cannot close the store cleanly")?;
    }
    Ok(out)
}
