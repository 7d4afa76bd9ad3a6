//! `GET /realtime/{code}`: the live stream. The first chunk is a `retry:` hint and the current
//! state (unless `Last-Event-ID` says the client has it); then one frame per change (conflated
//! for slow readers), a heartbeat comment every so often, and at shutdown a last `retry:` with
//! a random delay so browsers come back spread out.
//!
//! Opening a stream ([`open`]) is shared by two transports: the salvo handler here, for a
//! stream requested on a connection that already carried other requests, and the lean writer
//! in [`super::sse`], for a connection whose first request is a stream (what `EventSource`
//! does), which costs far less memory and CPU per subscriber.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures_util::{Future, Stream};
use rand::Rng;
use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{ApiError, AppState, code_param};
use crate::{
    domain::ShortCode,
    links::{Links, SubscribeError, frame},
    metrics::SubscriberPlace,
};

/// A stream that may start: its first chunk and its queue of frames.
pub(crate) struct Opened {
    pub head: Bytes,
    pub frames: mpsc::Receiver<Bytes>,
    /// Tells the actor when the stream goes away; gives back the subscriber place.
    pub guard: Unsubscribe,
}

/// Opens a stream on `raw_code` for a client that has seen the state `last_event_id` (the raw
/// header value, if sent).
pub(crate) async fn open(
    state: &AppState,
    raw_code: &str,
    last_event_id: Option<&[u8]>,
) -> Result<Opened, ApiError> {
    let missing = || ApiError::not_found("no such link");
    let code = ShortCode::parse(raw_code).map_err(|_| missing())?;
    let link = state
        .links
        .find(&code)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(missing)?;
    let last_event_id = match last_event_id {
        None => None,
        Some(raw) => Some(
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a click count"))?,
        ),
    };
    let Some(place) = state
        .metrics
        .take_subscriber_place(state.config.sse_max_total)
    else {
        return Err(ApiError::unavailable("too many live subscribers", 5));
    };
    let subscription = match state.links.subscribe(&link, last_event_id).await {
        Ok(Ok(s)) => s,
        Ok(Err(SubscribeError::LinkFull)) => {
            return Err(ApiError::unavailable(
                "too many live subscribers on this link",
                5,
            ));
        }
        Ok(Err(SubscribeError::Stopping)) => {
            return Err(ApiError::unavailable("try again", 1));
        }
        Err(e) => return Err(ApiError::from(e)),
    };
    let retry_ms = u64::try_from(state.config.sse_retry.as_millis()).unwrap_or(u64::MAX);
    let mut head = BytesMut::from(&frame::retry_frame(retry_ms)[..]);
    if let Some(initial) = &subscription.initial {
        head.extend_from_slice(initial);
    }
    Ok(Opened {
        head: head.freeze(),
        frames: subscription.frames,
        guard: Unsubscribe {
            links: state.links.clone(),
            code,
            id: subscription.id,
            _place: place,
        },
    })
}

/// The last chunk of a stream at shutdown: reconnect after a random 1 to 10 s.
pub(crate) fn farewell() -> Bytes {
    frame::retry_frame(rand::rng().random_range(1_000..=10_000))
}

pub struct Realtime(pub Arc<AppState>);

#[async_trait]
impl Handler for Realtime {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let last_event_id = req
            .headers()
            .get("last-event-id")
            .map(HeaderValue::as_bytes);
        match open(state, code_param(req), last_event_id).await {
            Ok(opened) => {
                res.status_code(StatusCode::OK);
                let headers = res.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                // Tells nginx not to buffer the stream.
                headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
                res.stream(SseStream {
                    head: Some(opened.head),
                    frames: opened.frames,
                    shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
                    ended: false,
                    _guard: opened.guard,
                });
            }
            Err(e) => e.write(res),
        }
    }
}

/// Tells the actor when the stream goes away, and gives back the subscriber place.
pub(crate) struct Unsubscribe {
    links: Links,
    code: ShortCode,
    id: u64,
    _place: SubscriberPlace,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.links.unsubscribe(&self.code, self.id);
    }
}

struct SseStream {
    head: Option<Bytes>,
    frames: mpsc::Receiver<Bytes>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
    _guard: Unsubscribe,
}

impl Stream for SseStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(head)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(Some(Ok(farewell())));
        }
        this.frames.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}
