//! `linkpulse check --nats`: reads the whole cluster store once, as the full check of an
//! embedded store does: every API key and link record, every aggregates entry, and every
//! message of the clicks stream in stream order, checking that each code's clicks are
//! numbered 1, 2, ... without a gap or a repeat (or start right after clicks its snapshot
//! covers, as `--click-retention-days` leaves them).

use std::collections::HashMap;

use async_nats::jetstream::{self, consumer, kv};
use futures_util::StreamExt;

use super::{
    AGGREGATES, CLICKS_PREFIX, NatsStore, WATCH_TIMEOUT, clicks::decode_batch,
    clicks::decode_snapshot_entry, clicks_subject,
};
use crate::store::{StoreError, records};

/// What [`NatsStore::verify`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterVerified {
    pub keys: u64,
    pub links: u64,
    pub snapshots: u64,
    pub messages: u64,
    pub clicks: u64,
    pub codes_clicked: u64,
    /// Codes with clicks but no link (a deletion whose purge has not happened yet: the
    /// clicks are purged when the code is made again).
    pub codes_without_link: u64,
}

fn inconsistent(what: String) -> StoreError {
    StoreError::Inconsistent(what)
}

impl NatsStore {
    /// Reads every record and click message (see the module's notes); an error says what is
    /// wrong and where. Safe while nodes serve: clicks stored meanwhile are read too.
    pub async fn verify(&self) -> Result<ClusterVerified, StoreError> {
        let mut seen = ClusterVerified::default();
        let keys = read_bucket(&self.inner.keys_watch).await?;
        for (key, value) in &keys {
            let decoded = hex::decode(key)
                .ok()
                .filter(|h| h.len() == 32)
                .ok_or_else(|| inconsistent(format!("api key entry {key:?} is not a key hash")))
                .and_then(|_| records::decode_key(value).map_err(StoreError::from));
            decoded.map_err(|e| inconsistent(format!("api key entry {key}: {e}")))?;
            seen.keys += 1;
        }
        let links = read_bucket(&self.inner.links_watch).await?;
        for (code, value) in &links {
            let link = records::decode_link(value)
                .map_err(|e| inconsistent(format!("link {code}: {e}")))?;
            if link.code.as_str() != code {
                return Err(inconsistent(format!(
                    "link {code}: its record says code {}",
                    link.code
                )));
            }
            seen.links += 1;
        }
        let mut covers: HashMap<String, u64> = HashMap::new();
        // Through a context whose requests may take as long as making a watch of a large
        // bucket does (as the links' and keys' watches are made).
        let aggregates = jetstream::ContextBuilder::new()
            .timeout(WATCH_TIMEOUT)
            .build(self.inner.client.clone())
            .get_key_value(AGGREGATES)
            .await
            .map_err(|e| super::nats_error("cannot open the aggregates bucket", e))?;
        for (code, value) in read_bucket(&aggregates).await? {
            let (covered, _, _) = decode_snapshot_entry(&value)
                .ok_or_else(|| inconsistent(format!("aggregates of {code}: unreadable entry")))?;
            covers.insert(code, covered);
            seen.snapshots += 1;
        }
        let last = self.verify_clicks(&covers, &mut seen).await?;
        seen.codes_clicked = last.len() as u64;
        seen.codes_without_link = last
            .keys()
            .filter(|code| !links.iter().any(|(c, _)| c == *code))
            .count() as u64;
        Ok(seen)
    }

    /// Every click message in stream order; returns each code's last click number.
    async fn verify_clicks(
        &self,
        covers: &HashMap<String, u64>,
        seen: &mut ClusterVerified,
    ) -> Result<HashMap<String, u64>, StoreError> {
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut stream = self.inner.clicks.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| super::nats_error("cannot read the clicks stream", e))?;
        if info.state.messages == 0 {
            return Ok(last);
        }
        let consumer = self
            .inner
            .clicks
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.inner.client.new_inbox(),
                filter_subject: format!("{CLICKS_PREFIX}>"),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| super::nats_error("cannot read the clicks stream", e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| super::nats_error("cannot read the clicks stream", e))?;
        while let Some(message) = messages.next().await {
            let message =
                message.map_err(|e| super::nats_error("reading the clicks stream failed", e))?;
            let (at, pending) = message
                .info()
                .map(|i| (i.stream_sequence, i.pending))
                .map_err(|e| super::nats_error("a click message without its place", e))?;
            let code = message
                .subject
                .as_str()
                .strip_prefix(CLICKS_PREFIX)
                .unwrap_or_default()
                .to_owned();
            let events = decode_batch(&message.payload)
                .map_err(|e| inconsistent(format!("code {code}: stream message {at}: {e}")))?;
            if events.is_empty() {
                return Err(inconsistent(format!(
                    "code {code}: stream message {at} holds no click"
                )));
            }
            for event in events {
                let due = match last.get(&code) {
                    Some(previous) => previous + 1,
                    // The first stored click: 1, or right after clicks the snapshot covers.
                    None => {
                        let covered = covers.get(&code).copied().unwrap_or(0);
                        if event.seq > 1 && event.seq <= covered + 1 {
                            event.seq
                        } else {
                            1
                        }
                    }
                };
                // A code changed while it was read (retention purged some of its messages,
                // or it was deleted and made again) is read again as it is stored now.
                if event.seq != due && !self.whole_now(&code).await? {
                    return Err(inconsistent(format!(
                        "code {code}: click number {} where number {due} was due (stream \
                         message {at})",
                        event.seq
                    )));
                }
                last.insert(code.clone(), event.seq);
                seen.clicks += 1;
            }
            seen.messages += 1;
            if pending == 0 {
                break;
            }
        }
        Ok(last)
    }

    /// Whether a code's clicks as stored now are numbered without a gap or a repeat: from 1,
    /// or from right after what its snapshot covers.
    async fn whole_now(&self, code: &str) -> Result<bool, StoreError> {
        let covered = self.snapshot_entry(code).await?.map_or(0, |(c, _, _)| c);
        let subject = clicks_subject(code);
        let (mut from, mut last) = (1, None);
        loop {
            let Some(message) = self.message_from(&subject, from).await? else {
                return Ok(true);
            };
            for event in decode_batch(&message.payload)? {
                let due = match last {
                    Some(previous) => previous + 1,
                    None if event.seq > 1 && event.seq <= covered + 1 => event.seq,
                    None => 1,
                };
                if event.seq != due {
                    return Ok(false);
                }
                last = Some(event.seq);
            }
            from = message.sequence + 1;
        }
    }
}

/// Every key of a bucket with its value as stored now (deleted keys left out), read with
/// one watch.
async fn read_bucket(bucket: &kv::Store) -> Result<Vec<(String, bytes::Bytes)>, StoreError> {
    let mut stream = bucket.stream.clone();
    let stored = stream
        .info()
        .await
        .map_err(|e| super::nats_error("cannot read a bucket's size", e))?
        .state
        .messages;
    let mut out = Vec::new();
    if stored == 0 {
        return Ok(out);
    }
    let mut watch = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| super::nats_error("cannot read a bucket", e))?;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| super::nats_error("reading a bucket failed", e))?;
        let current = entry.delta == 0;
        if entry.operation == kv::Operation::Put {
            out.push((entry.key, entry.value));
        }
        if current {
            break;
        }
    }
    Ok(out)
}
