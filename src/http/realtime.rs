//! `GET /realtime/{code}`: the live stream. The first chunk is a `retry:` hint and the current
//! state (unless `Last-Event-ID` says the client has it); then one frame per change (conflated
//! for slow readers), a heartbeat comment every so often, and at shutdown a last `retry:` with
//! a random delay so browsers come back spread out.

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

use super::{ApiError, AppState, code_param, write_unavailable};
use crate::{
    domain::ShortCode,
    links::{Links, SubscribeError, frame},
    metrics::SubscriberPlace,
};

pub struct Realtime(pub Arc<AppState>);

#[async_trait]
impl Handler for Realtime {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        if let Err(e) = self.open(req, res).await {
            e.write(res);
        }
    }
}

impl Realtime {
    async fn open(&self, req: &Request, res: &mut Response) -> Result<(), ApiError> {
        let state = &self.0;
        let missing = || ApiError::not_found("no such link");
        let code = ShortCode::parse(code_param(req)).map_err(|_| missing())?;
        let link = state.links.find(&code).await?.ok_or_else(missing)?;
        let last_event_id = match req.headers().get("last-event-id") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a click count"))?,
            ),
        };
        let Some(place) = state
            .metrics
            .take_subscriber_place(state.config.sse_max_total)
        else {
            write_unavailable(res, ApiError::unavailable("too many live subscribers", 5));
            return Ok(());
        };
        let subscription = match state.links.subscribe(&link, last_event_id).await? {
            Ok(s) => s,
            Err(SubscribeError::LinkFull) => {
                let err = ApiError::unavailable("too many live subscribers on this link", 5);
                write_unavailable(res, err);
                return Ok(());
            }
            Err(e @ SubscribeError::AheadOfCount { .. }) => {
                return Err(ApiError::bad_request(e.to_string()));
            }
            Err(SubscribeError::Stopping) => {
                write_unavailable(res, ApiError::unavailable("try again", 1));
                return Ok(());
            }
        };
        let retry_ms = u64::try_from(state.config.sse_retry.as_millis()).unwrap_or(u64::MAX);
        let mut head = BytesMut::from(&frame::retry_frame(retry_ms)[..]);
        if let Some(initial) = &subscription.initial {
            head.extend_from_slice(initial);
        }
        let stream = SseStream {
            head: Some(head.freeze()),
            frames: subscription.frames,
            shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
            ended: false,
            _unsubscribe: Unsubscribe {
                links: state.links.clone(),
                code,
                id: subscription.id,
                _place: place,
            },
        };
        res.status_code(StatusCode::OK);
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Tells nginx not to buffer the stream.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        res.stream(stream);
        Ok(())
    }
}

/// Tells the actor when the stream goes away, and gives back the subscriber place.
struct Unsubscribe {
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
    _unsubscribe: Unsubscribe,
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
            let spread = rand::rng().random_range(1_000..=10_000);
            return Poll::Ready(Some(Ok(frame::retry_frame(spread))));
        }
        this.frames.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}
