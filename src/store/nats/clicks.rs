//! Clicks in the stream: a message is a numbered batch of one code's clicks; reading a code's
//! last batch, the batch after a given one, the message holding a given click (a binary
//! search), walking a code's clicks in order, and following the clicks other nodes store.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use async_nats::jetstream::{self, stream};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tracing::{debug, warn};

use super::{Inner, NatsStore, clicks_subject, nats_error};
use crate::{
    domain::ClickEvent,
    store::{StoreError, records, records::DecodeError},
};

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
/// The id the writer gave a message of clicks: `Lp-Id` (sent in a batch), else its
/// `Nats-Msg-Id` (sent alone, and by earlier releases); empty if it has neither.
fn stored_id(headers: &async_nats::HeaderMap) -> String {
    headers
        .get("Lp-Id")
        .or_else(|| headers.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

pub(super) fn encode_snapshot_entry(covers: u64, stream_seq: u64, bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + bytes.len());
    out.put_u64(covers);
    out.put_u64(stream_seq);
    out.put_slice(bytes);
    out.freeze()
}

pub(super) fn decode_snapshot_entry(bytes: &[u8]) -> Option<(u64, u64, &[u8])> {
    let (head, rest) = bytes.split_at_checked(16)?;
    let covers = u64::from_be_bytes(head[..8].try_into().ok()?);
    let stream_seq = u64::from_be_bytes(head[8..].try_into().ok()?);
    Some((covers, stream_seq, rest))
}

impl NatsStore {
    /// The stream sequence and last click number of a code's last message ((0, 0): none),
    /// and that message's id (see [`stored_id`]).
    pub(super) async fn last_batch(
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
                let id = stored_id(&message.headers);
                Ok((message.sequence, events.into_iter().last(), id))
            }
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                Ok((0, None, String::new()))
            }
            Err(e) => Err(nats_error("cannot read a code's last clicks", e)),
        }
    }

    /// The first message of `subject` (a code's clicks) at or after stream sequence `from`
    /// (`None`: there is none): one request.
    pub(super) async fn message_from(
        &self,
        subject: &str,
        from: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, StoreError> {
        super::message_from(
            &self.inner.clicks,
            subject,
            from,
            "cannot read a code's clicks",
        )
        .await
    }

    /// The stream sequence and id (see [`stored_id`]) of the code's first message stored after stream
    /// sequence `after` (`None`: there is none).
    pub(super) async fn batch_after(
        &self,
        code: &str,
        after: u64,
    ) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .message_from(&clicks_subject(code), after + 1)
            .await?
            .map(|message| (message.sequence, stored_id(&message.headers))))
    }

    /// The stream sequence of the code's message that holds click `seq` (or, if none does,
    /// one at or before where it would be): a binary search over stream sequences up to
    /// `last_at`, one read per step, each read taking the first message of the code at or
    /// after a sequence. Messages of a code hold its clicks in order.
    pub(super) async fn message_holding(
        &self,
        code: &str,
        seq: u64,
        last_at: u64,
    ) -> Result<u64, StoreError> {
        let subject = clicks_subject(code);
        let (mut lo, mut hi, mut best) = (1u64, last_at, 1u64);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let Some(message) = self.message_from(&subject, mid).await? else {
                hi = mid - 1;
                continue;
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
    /// until `each` breaks. A short walk (a page, or the clicks after a recent snapshot) is a
    /// few reads of one message each; past [`SHORT_WALK`] messages the rest comes through an
    /// ordered consumer, many messages a request.
    pub(super) fn walk_from(
        &self,
        code: &str,
        mut from: u64,
        each: &mut dyn FnMut(ClickEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let subject = clicks_subject(code);
        self.run(async {
            let mut read = 0;
            loop {
                if read == SHORT_WALK {
                    // The rest streamed; if no consumer can be had now (a server just went
                    // away, its stream's leader moves), one message a read, as before.
                    match self.walk_streamed(code, &subject, &mut from, each).await {
                        Ok(()) => return Ok(()),
                        Err(e) => debug!(code, cause = %e, "a streamed walk failed; reading on"),
                    }
                }
                read += 1;
                let Some(message) = self.message_from(&subject, from).await? else {
                    return Ok(());
                };
                if each_of(&message.payload, each)?.is_break() {
                    return Ok(());
                }
                from = message.sequence + 1;
            }
        })
    }

    /// The rest of a long walk: the code's messages from stream sequence `from` up to its last
    /// one as it is now, through an ordered consumer of the subject. `from` follows the
    /// messages given to `each`, so a walk that fails can go on from there.
    async fn walk_streamed(
        &self,
        code: &str,
        subject: &str,
        from: &mut u64,
        each: &mut dyn FnMut(ClickEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let (last_at, _, _) = self.last_batch(code).await?;
        if last_at < *from {
            return Ok(());
        }
        let failed = |e: &dyn std::fmt::Display| {
            StoreError::Nats(format!("cannot read a code's clicks: {e}"))
        };
        let consumer = self
            .inner
            .clicks
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: *from,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let mut messages = consumer.messages().await.map_err(|e| failed(&e))?;
        loop {
            let message = tokio::time::timeout(WALK_WAIT, messages.next())
                .await
                .map_err(|_| failed(&"no message came within 10 s"))?
                .ok_or_else(|| failed(&"the consumer ended"))?
                .map_err(|e| failed(&e))?;
            let at = message.info().map_err(|e| failed(&e))?.stream_sequence;
            if at < *from {
                // Given already: an ordered consumer made again before it delivered anything
                // starts from the stream's first message (async-nats 0.51 asks for every
                // message then, not for `from` on).
                continue;
            }
            let done = each_of(&message.payload, each)?.is_break();
            *from = at + 1;
            if done || at >= last_at {
                return Ok(());
            }
        }
    }
}

/// Messages a walk reads one at a time before it streams the rest.
const SHORT_WALK: usize = 4;
/// The longest wait for the next message of a streamed walk.
const WALK_WAIT: Duration = Duration::from_secs(10);

/// Gives `each` the clicks of one message, until it breaks.
fn each_of(
    payload: &[u8],
    each: &mut dyn FnMut(ClickEvent) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, StoreError> {
    for event in decode_batch(payload)? {
        if each(event).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// Follows the clicks other nodes store for `code` (see `Backend::follow`), calling
/// `deliver` with each of their batches, in order, until the task is aborted.
pub(super) async fn follow(
    inner: Arc<Inner>,
    code: String,
    mut deliver: Box<dyn FnMut(Vec<ClickEvent>) + Send>,
) {
    let subject = clicks_subject(&code);
    // An ordered consumer: every stored message of the subject, in order, from its
    // last one on; it is made again (from where it was) if a server goes away.
    let mut from = jetstream::consumer::DeliverPolicy::LastPerSubject;
    loop {
        let Some(mut messages) = super::ordered_messages(
            &inner.client,
            &inner.clicks,
            subject.clone(),
            from,
            "a code's clicks",
        )
        .await
        else {
            continue;
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
}
