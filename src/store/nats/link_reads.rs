//! Reads of the links bucket past the cache, many in one request.
//!
//! On a long tail of codes most redirects miss the bounded link cache, and each miss was one
//! request to the bucket's stream. Misses waiting at once go in one batch direct get instead
//! (`multi_last`, nats-server 2.11 and later): the server answers the last entry of each
//! code's key, then an end-of-batch status. A batch is sent as soon as the one before it
//! answers, so under load misses gather and batches grow, and alone a miss waits for nothing.
//! On an older server each miss is one request, as before.

use std::collections::HashMap;

use async_nats::{HeaderMap, StatusCode, jetstream::kv};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::debug;

use super::{LINKS, nats_error};
use crate::store::StoreError;

/// Codes read in one batch (the server takes up to 1,024 subjects).
const BATCH: usize = 256;
/// Batches in flight at once.
const IN_FLIGHT: usize = 4;

/// What a read of one code comes to: its entry's value, `None` when it has none (or it was
/// deleted).
type Answer = Result<Option<Bytes>, StoreError>;

/// The reads of one node's links bucket (cheap to clone).
#[derive(Clone)]
pub(super) struct LinkReads {
    tx: mpsc::UnboundedSender<(String, oneshot::Sender<Answer>)>,
}

impl LinkReads {
    /// Starts the task that sends the reads; `batched` when the servers take batch gets.
    pub(super) fn start(client: async_nats::Client, bucket: kv::Store, batched: bool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, bucket, batched, rx));
        Self { tx }
    }

    /// The value of `code`'s entry in the links bucket.
    pub(super) async fn get(&self, code: &str) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((code.to_owned(), tx))
            .map_err(|_| StoreError::Nats("the link reader has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Nats("the link reader has stopped".into()))?
    }
}

async fn run(
    client: async_nats::Client,
    bucket: kv::Store,
    batched: bool,
    mut rx: mpsc::UnboundedReceiver<(String, oneshot::Sender<Answer>)>,
) {
    let slots = std::sync::Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Everything that came while the batches before were out.
        let mut reads = vec![first];
        while reads.len() < BATCH {
            match rx.try_recv() {
                Ok(read) => reads.push(read),
                Err(_) => break,
            }
        }
        let (client, bucket) = (client.clone(), bucket.clone());
        tokio::spawn(async move {
            if batched && reads.len() > 1 {
                answer_batch(&client, reads).await;
            } else {
                futures_util::stream::iter(reads)
                    .for_each_concurrent(None, |(code, tx)| {
                        let bucket = &bucket;
                        async move {
                            let got = bucket
                                .get(&code)
                                .await
                                .map_err(|e| nats_error("cannot read a link", e));
                            let _ = tx.send(got);
                        }
                    })
                    .await;
            }
            drop(slot);
        });
    }
}

/// A batch direct get: the last message of each subject.
#[derive(Serialize)]
struct MultiLast {
    multi_last: Vec<String>,
    batch: usize,
}

/// Reads the codes of `reads` in one batch get and answers each.
async fn answer_batch(client: &async_nats::Client, reads: Vec<(String, oneshot::Sender<Answer>)>) {
    let prefix = format!("$KV.{LINKS}.");
    match batch_get(client, &prefix, reads.iter().map(|(code, _)| code.as_str())).await {
        Ok(mut found) => {
            for (code, tx) in reads {
                let _ = tx.send(Ok(found.remove(&code).flatten()));
            }
        }
        Err(e) => {
            debug!(cause = %e, "a batch read of links failed");
            for (_, tx) in reads {
                let _ = tx.send(Err(StoreError::Nats(format!("cannot read a link: {e}"))));
            }
        }
    }
}

/// The last entry of each code's key: its value, or `None` for a deletion. Codes without
/// an entry are missing from the map.
async fn batch_get<'a>(
    client: &async_nats::Client,
    prefix: &str,
    codes: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, Option<Bytes>>, String> {
    let subjects: Vec<String> = codes.map(|c| format!("{prefix}{c}")).collect();
    let request = MultiLast {
        batch: subjects.len(),
        multi_last: subjects,
    };
    let payload = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| e.to_string())?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.KV_{LINKS}"),
            inbox,
            Bytes::from(payload),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut found = HashMap::new();
    let deadline = tokio::time::Instant::now() + super::REQUEST_TIMEOUT;
    loop {
        let message = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return Err("the reply subscription ended".into()),
            Err(_) => return Err("no answer in time".into()),
        };
        match message.status {
            // The end of the batch, or nothing found at all.
            Some(StatusCode::NO_RESPONDERS) => return Err("no server answers".into()),
            Some(status) if status == StatusCode::NOT_FOUND || status.as_u16() == 204 => {
                return Ok(found);
            }
            Some(status) => {
                return Err(format!(
                    "{status} {}",
                    message.description.unwrap_or_default()
                ));
            }
            None => {}
        }
        let headers = message.headers.unwrap_or_else(HeaderMap::new);
        let Some(subject) = headers.get("Nats-Subject") else {
            return Err("a batch reply without its subject".into());
        };
        let Some(code) = subject.as_str().strip_prefix(prefix) else {
            continue;
        };
        let deleted = headers
            .get("KV-Operation")
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        found.insert(code.to_owned(), (!deleted).then_some(message.payload));
    }
}
