//! `GET /realtime/{code}`: the live stream. The first chunk is a `retry:` hint and the current
//! state (unless `Last-Event-ID` says the client has it); then one frame per change (conflated
//! for slow readers), a heartbeat comment every so often, and at shutdown a last `retry:` with
//! a random delay so browsers come back spread out.
//!
//! This is the salvo transport, for a stream requested on a connection that already carried
//! other requests; a connection whose first request is a stream (what `EventSource` does) is
//! served by the lean writer in [`super::sse`], which costs far less memory and CPU per
//! subscriber. Both open their streams through [`super::stream`].

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::{Future, Stream};
use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::openapi::{E400, E404, E503};
use super::{
    AppState, client_ip, code_param,
    stream::{self, StreamRequest, Unsubscribe},
};
use salvo_oapi::endpoint;

pub struct Realtime(pub Arc<AppState>);

/// The live stream of a link's count and latest click (Server-Sent Events)
#[endpoint(
    tags("public"),
    parameters(
        ("code" = String, Path, description = "The short code"),
        ("Last-Event-ID" = Option<u64>, Header, description = "The count the client has (sent by a reconnecting `EventSource`)"),
    ),
    responses(
        (status_code = 200, description = "`data: {\"clickCount\":N,\"clickAnalytics\":{..}}` frames with `id: N`, heartbeats and `retry:` hints", content_type = "text/event-stream", body = String),
        E400, E404, E503,
    )
)]
impl Realtime {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let request = StreamRequest {
            raw_code: code_param(req),
            last_event_id: req
                .headers()
                .get("last-event-id")
                .map(HeaderValue::as_bytes),
            client: client_ip(state, req),
            host: super::request_host(req),
        };
        match stream::open(state, request).await {
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
                if opened.public {
                    super::cors::public_origin(res);
                }
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
            return Poll::Ready(Some(Ok(stream::farewell())));
        }
        this.frames.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}
