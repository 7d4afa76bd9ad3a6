//! The subscription path both stream transports share: the salvo handler in [`super::realtime`]
//! (a stream asked for on a connection that already carried other requests) and the lean
//! writer in [`super::sse`] (a connection whose first request is a stream, what `EventSource`
//! does). Each transport reads its request into a [`StreamRequest`] and writes what [`open`]
//! gives it; everything between (the code, `Last-Event-ID`, the per-client, per-link and total
//! places, the first chunk, the guard that gives places back) is here, so a fix lands once.

use std::net::IpAddr;

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tokio::sync::mpsc;

use super::{ApiError, AppState, limit::Place};
use crate::{
    domain::ShortCode,
    links::{Links, SubscribeError, frame},
    metrics::SubscriberPlace,
};

/// What a stream request says, read by either transport.
pub(crate) struct StreamRequest<'a> {
    /// The `{code}` of `/realtime/{code}`, as sent.
    pub raw_code: &'a str,
    /// The raw `Last-Event-ID` header value, if sent.
    pub last_event_id: Option<&'a [u8]>,
    /// The client address (the peer, or the forwarded address behind a trusted proxy).
    pub client: Option<IpAddr>,
    /// The host the request names (it picks the link's domain).
    pub host: Option<&'a str>,
}

/// A stream that may start: its first chunk and its queue of frames.
pub(crate) struct Opened {
    pub head: Bytes,
    /// The link's stats are public: any site may read the stream (CORS `*`).
    pub public: bool,
    pub frames: mpsc::Receiver<Bytes>,
    /// Tells the actor when the stream goes away; gives back the subscriber places.
    pub guard: Unsubscribe,
}

/// Opens a stream for `request`, or says why not.
pub(crate) async fn open(state: &AppState, request: StreamRequest<'_>) -> Result<Opened, ApiError> {
    let missing = || ApiError::not_found("no such link");
    super::check_host(state, request.host)?;
    let domain = super::domain_of_host(state, request.host);
    let code = super::key_on(domain.as_deref(), request.raw_code).ok_or_else(missing)?;
    let link = state
        .links
        .find(&code)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(missing)?;
    let last_event_id = match request.last_event_id {
        None => None,
        Some(raw) => Some(
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a click count"))?,
        ),
    };
    // One client first (429: it holds too much), then everyone (503: the server is full).
    let client_place = state
        .client_limits()
        .streams
        .take(request.client, state.config.sse_max_per_client)
        .map_err(|full| full.into_error())?;
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
        public: link.public_stats,
        frames: subscription.frames,
        guard: Unsubscribe {
            links: state.links.clone(),
            code,
            id: subscription.id,
            _place: place,
            _client_place: client_place,
        },
    })
}

/// The last chunk of a stream at shutdown: reconnect after a random 1 to 10 s.
pub(crate) fn farewell() -> Bytes {
    frame::retry_frame(rand::rng().random_range(1_000..=10_000))
}

/// Tells the actor when the stream goes away, and gives back the subscriber places.
pub(crate) struct Unsubscribe {
    links: Links,
    code: ShortCode,
    id: u64,
    _place: SubscriberPlace,
    _client_place: Place,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.links.unsubscribe(&self.code, self.id);
    }
}

/// The `{code}` of a stream request's target as the lean writer reads it, routed as salvo
/// routes: the query is left out, and empty segments (a trailing slash, doubled slashes) do
/// not count. Anything but `/realtime/{code}` gives `""`, which names no link.
pub(crate) fn code_in_target(target: &str) -> &str {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    match (segments.next(), segments.next(), segments.next()) {
        (Some("realtime"), Some(code), None) => code,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::code_in_target;

    #[test]
    fn the_code_is_read_as_salvo_routes_it() {
        assert_eq!(code_in_target("/realtime/abc"), "abc");
        assert_eq!(code_in_target("/realtime/abc/"), "abc");
        assert_eq!(code_in_target("/realtime//abc?x=1"), "abc");
        assert_eq!(code_in_target("/realtime/abc#frag"), "abc");
        assert_eq!(code_in_target("/realtime/"), "");
        assert_eq!(code_in_target("/realtime/a/b"), "");
        assert_eq!(code_in_target("/realtime/a/.."), "");
        assert_eq!(code_in_target("/other/abc"), "");
    }
}
