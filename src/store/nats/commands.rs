//! The cluster store opened by a command rather than a node (`linkpulse keys|check|export
//! --nats`), and what `export` reads from it: links and keys from this process's copies of
//! the buckets, every clicked code's messages in order, the aggregates snapshots as stored.

use std::{ops::ControlFlow, time::Duration};

use async_nats::jetstream::{self, ErrorCode, context::GetStreamErrorKind};
use futures_util::TryStreamExt;

use super::{
    CLICKS_PREFIX, CLICKS_STREAM, NatsConfig, NatsStore, clicks::decode_snapshot_entry, nats_error,
};
use crate::{
    analytics::aggregates,
    domain::{ClickEvent, Link},
    store::{ExportSource, KeyRecord, StoreError},
};

/// How long a command waits for every link's place to be read (a million links: about 30 s).
const LISTED_FOR_COMMANDS: Duration = Duration::from_secs(600);

impl NatsStore {
    /// The cluster store at `urls` for a command that reads it or changes what it holds:
    /// refused, saying so, when the cluster holds no linkpulse store (no clicks stream), so
    /// that a mistyped URL makes nothing.
    pub async fn open_existing(urls: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            has_store(urls).await?,
            "there is no linkpulse store in the NATS cluster at {urls} (no {CLICKS_STREAM} \
             stream)"
        );
        Self::open_for_command(urls, 1).await
    }

    /// The cluster store at `urls`, its streams and buckets made (with `replicas` copies) if
    /// they are missing.
    pub async fn open_for_command(urls: &str, replicas: usize) -> anyhow::Result<Self> {
        let config = NatsConfig {
            urls: urls.to_owned(),
            replicas,
            // A command reads each link once: it keeps few.
            link_cache: 1_000,
        };
        Self::connect(&config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the NATS JetStream store: {e}"))
    }

    /// Every code that has messages in the clicks stream, with how many, in code order.
    pub(super) async fn clicked_codes(&self) -> Result<Vec<(String, usize)>, StoreError> {
        let mut subjects = self
            .inner
            .clicks
            .info_with_subjects(format!("{CLICKS_PREFIX}>"))
            .await
            .map_err(|e| nats_error("cannot list the clicked codes", e))?;
        let mut codes = Vec::new();
        while let Some((subject, messages)) = subjects
            .try_next()
            .await
            .map_err(|e| nats_error("cannot list the clicked codes", e))?
        {
            if let Some(code) = subject.strip_prefix(CLICKS_PREFIX) {
                codes.push((code.to_owned(), messages));
            }
        }
        codes.sort_unstable();
        Ok(codes)
    }

    /// A code's snapshot entry: the last click it covers, where that click is in the stream,
    /// and the snapshot's bytes (`None`: none, or not one this version can read).
    pub(super) async fn snapshot_entry(
        &self,
        code: &str,
    ) -> Result<Option<(u64, u64, Vec<u8>)>, StoreError> {
        let stored = self
            .inner
            .aggregates_kv
            .get(code)
            .await
            .map_err(|e| nats_error("cannot read aggregates", e))?;
        Ok(stored.and_then(|bytes| {
            decode_snapshot_entry(&bytes)
                .map(|(covers, at, snapshot)| (covers, at, snapshot.to_vec()))
        }))
    }
}

/// Whether the servers at `urls` hold a linkpulse store (its clicks stream).
async fn has_store(urls: &str) -> anyhow::Result<bool> {
    let servers: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    anyhow::ensure!(!servers.is_empty(), "--nats names no server");
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(3))
        .connect(servers)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {urls}: {e}"))?;
    let js = jetstream::new(client);
    match js.get_stream(CLICKS_STREAM).await {
        Ok(_) => Ok(true),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(error)
                if error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(false)
            }
            _ => Err(anyhow::anyhow!(
                "cannot read the NATS cluster at {urls}: {e}"
            )),
        },
    }
}

impl ExportSource for NatsStore {
    fn visitor_key_bytes(&self) -> [u8; 32] {
        self.inner.visitor_key
    }

    fn domain_records(&self) -> Result<Vec<crate::store::records::DomainRecord>, StoreError> {
        crate::store::Backend::domains(self)
    }

    fn key_records(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.inner.keys.iter().map(|k| k.value().clone()).collect())
    }

    fn each_link(&self, each: &mut dyn FnMut(Link) -> anyhow::Result<()>) -> anyhow::Result<()> {
        self.run(self.listed(LISTED_FOR_COMMANDS))?;
        let mut codes = self
            .inner
            .listing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .codes();
        codes.sort_unstable();
        for code in codes {
            if let Some(link) = self.link_record(&code)? {
                each(Link::clone(&link))?;
            }
        }
        Ok(())
    }

    /// The clicks of codes that have a link (a deleted link's clicks not purged yet are left
    /// out: an import could not take them), each code's messages read in order.
    fn each_click(
        &self,
        each: &mut dyn FnMut(&str, ClickEvent) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for (code, _) in self.run(self.clicked_codes())? {
            if !self.has_link(&code) {
                continue;
            }
            let mut failed = None;
            self.walk_from(&code, 1, &mut |event| match each(&code, event) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
    }

    fn snapshot_bytes(&self, code: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let Some((covers, _, bytes)) = self.run(self.snapshot_entry(code))? else {
            return Ok(None);
        };
        let readable = aggregates::decode_snapshot(&bytes).is_ok_and(|a| a.covers() == covers);
        Ok((covers > 0 && readable).then_some((covers, bytes)))
    }
}
