//! `GET /api/events`: a workspace's live feed (Server-Sent Events), for a key or a signed-in
//! person of the workspace, as the home page shows it.
//!
//! - `event: link.created|link.updated|link.deleted` with `id:` the audit entry's number and
//!   `data: {"domain","code","link","who","at"}` (`link` is `null` after a deletion). A client
//!   that reconnects with `Last-Event-ID` is sent every such event it missed, read from the
//!   audit log (so on any node of a cluster), as far back as `--events-retention`; further
//!   back, or more than [`MAX_REPLAY`] events, it is sent `event: reset` and should reload.
//! - `event: counts` with `data: {"links":[{"domain","code","clickCount"}]}`: the links whose
//!   count moved, each with its latest count, at most every [`COUNTS_EVERY`] (conflated: a
//!   workspace taking 10,000 clicks a second costs a watcher two frames a second). Right
//!   after a reconnection the first such frame holds every count this node's board knows.
//! - `event: hello` first, with `data: {"workspace","lastEventId"}`; a comment as heartbeat;
//!   a `retry:` hint.
//!
//! A `links`-scope caller (a `member`, or a `links` key) sees the events of its own links;
//! counts are of every link of the workspace the caller may read.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use super::{ApiError, AppState, authenticate};
use crate::{
    domain::{format_ms, now_ms},
    keys::{Caller, Scope},
    store::records::AuditRecord,
};
use salvo_oapi::endpoint;

/// The most events a reconnection is sent before it is told to reload instead.
pub const MAX_REPLAY: usize = 10_000;
/// The shortest time between two `counts` frames.
pub const COUNTS_EVERY: Duration = Duration::from_millis(500);
/// Frames waiting for a slow reader before the stream ends (the browser comes back with
/// `Last-Event-ID`).
const QUEUE: usize = 64;

/// A link event as the feed sends it.
#[derive(Serialize)]
struct LinkEvent<'a> {
    domain: &'a str,
    code: &'a str,
    /// The link as the API shows it; `null` after a deletion.
    link: Option<serde_json::Value>,
    who: &'a str,
    at: String,
}

fn is_link_event(record: &AuditRecord) -> bool {
    record.action.starts_with("link.")
}

/// The frame of a link event, if the caller may see it.
fn link_frame(record: &AuditRecord, caller: &Caller, default_host: &str) -> Option<Bytes> {
    if !is_link_event(record) {
        return None;
    }
    let after = record
        .after
        .as_deref()
        .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok());
    let shown = after.clone().or_else(|| {
        record
            .before
            .as_deref()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
    });
    if caller.scope == Scope::Links {
        let owner = shown
            .as_ref()
            .and_then(|l| l.get("owner"))
            .and_then(|o| o.as_str());
        if owner != Some(caller.key_id.as_str()) {
            return None;
        }
    }
    let (domain, code) = match record.target.split_once('/') {
        Some((domain, code)) => (domain, code),
        None => (default_host, record.target.as_str()),
    };
    let event = LinkEvent {
        domain,
        code,
        link: after,
        who: &record.who,
        at: format_ms(record.at),
    };
    let data = serde_json::to_string(&event).ok()?;
    Some(Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        record.seq, record.action
    )))
}

fn counts_frame(mut links: Vec<crate::events::LinkCount>, default_host: &str) -> Bytes {
    for link in &mut links {
        link.domain.get_or_insert_with(|| default_host.to_owned());
        link.owner.clear();
    }
    let data = serde_json::json!({ "links": links }).to_string();
    Bytes::from(format!("event: counts\ndata: {data}\n\n"))
}

/// `GET /api/events`.
pub struct EventsRoute(pub Arc<AppState>);

/// The workspace's live feed: link changes (resumable with `Last-Event-ID`) and live counts
#[endpoint(
    tags("links"),
    security(("bearer" = [])),
    parameters(
        ("Last-Event-ID" = Option<u64>, Header, description = "The last event the client has"),
    ),
    responses(
        (status_code = 200, description = "`link.created|updated|deleted` events with `id:`, `counts` frames, heartbeats", content_type = "text/event-stream", body = String),
        (status_code = 400, description = "A Last-Event-ID that is not a number", body = super::openapi::schemas::Error),
        (status_code = 401, description = "No key or session", body = super::openapi::schemas::Error),
    )
)]
impl EventsRoute {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let state = &self.0;
        let opened = async {
            let caller = authenticate(state, req).await?;
            let last = match req.headers().get("last-event-id") {
                None => None,
                Some(raw) => Some(
                    raw.to_str()
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a number"))?,
                ),
            };
            Ok::<_, ApiError>((caller, last))
        };
        let (caller, last) = match opened.await {
            Ok(opened) => opened,
            Err(e) => return e.write(res),
        };
        let (frames, rx) = mpsc::channel::<Bytes>(QUEUE);
        tokio::spawn(feed(state.clone(), caller, last, frames));
        res.status_code(StatusCode::OK);
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        res.stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
        }));
    }
}

/// Fills one watcher's stream until it goes away or the service stops.
async fn feed(state: Arc<AppState>, caller: Caller, last: Option<u64>, out: mpsc::Sender<Bytes>) {
    let workspace = caller.workspace.clone();
    let reset = || Bytes::from_static(b"event: reset\ndata: {}\n\n");
    // Watching first, then reading what was missed: nothing falls between the two (an event
    // in both is sent once, by its number).
    let mut live = state.events.subscribe(&workspace);
    let watching = state.events.counts().watch(&workspace);
    let owner = (caller.scope == Scope::Links).then(|| caller.key_id.clone());
    let newest = match state.events.page(&workspace, None, 1).await {
        Ok(newest) => newest.first().map_or(0, |r| r.seq),
        Err(e) => {
            tracing::warn!(cause = %e, "cannot read the audit log for a feed");
            return;
        }
    };
    let retry = state.config.sse_retry.as_millis();
    let hello = serde_json::json!({ "workspace": workspace, "lastEventId": last });
    let hello = Bytes::from(format!("retry: {retry}\nevent: hello\ndata: {hello}\n\n"));
    if out.send(hello).await.is_err() {
        return;
    }
    // A fresh watcher starts after the newest entry (what it shows, it reads after `hello`);
    // one coming back is sent what it missed. An id this workspace never gave (from another
    // store, say) cannot be resumed from: the watcher reloads.
    let mut sent = newest;
    if let Some(after) = last {
        if after > newest {
            let _ = out.send(reset()).await;
            return;
        }
        match replay(&state, &caller, after, &out).await {
            Ok(Some(to)) => sent = to,
            Ok(None) => return,
            Err(()) => {
                let _ = out.send(reset()).await;
                return;
            }
        }
    }
    // A reconnection gets every count the board knows; a first connection what moves.
    let mut version = if last.is_some() {
        0
    } else {
        watching.board.since(u64::MAX, None).1
    };
    let mut heartbeat =
        tokio::time::interval(state.config.sse_heartbeat.max(Duration::from_secs(1)));
    heartbeat.tick().await;
    let mut next_counts = tokio::time::Instant::now();
    loop {
        // Enabled before the board is read: a change after the read wakes this loop.
        let changed_signal = watching.board.changed();
        tokio::pin!(changed_signal);
        changed_signal.as_mut().enable();
        let (changed, now) = watching.board.since(version, owner.as_deref());
        if changed.is_empty() {
            // Nothing of the watcher's moved up to now (a `links` watcher skips the others').
            version = now;
        }
        if !changed.is_empty() && next_counts <= tokio::time::Instant::now() {
            version = now;
            if out
                .send(counts_frame(changed, &state.default_host))
                .await
                .is_err()
            {
                return;
            }
            next_counts = tokio::time::Instant::now() + COUNTS_EVERY;
            continue;
        }
        let pending = !changed.is_empty();
        let counts_due = async {
            if pending {
                tokio::time::sleep_until(next_counts).await;
            } else {
                changed_signal.await;
            }
        };
        tokio::select! {
            received = live.recv() => match received {
                Ok(record) => {
                    if record.seq <= sent {
                        continue;
                    }
                    sent = record.seq;
                    if let Some(frame) = link_frame(&record, &caller, &state.default_host)
                        && out.send(frame).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the live feed: what was missed is read from the log.
                    match replay(&state, &caller, sent, &out).await {
                        Ok(Some(to)) => sent = to,
                        Ok(None) => return,
                        Err(()) => {
                            let _ = out.send(reset()).await;
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = counts_due => {}
            _ = heartbeat.tick() => {
                if out.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                    return;
                }
            }
            () = state.shutdown.cancelled() => {
                let _ = out.send(super::stream::farewell()).await;
                return;
            }
            () = out.closed() => return,
        }
    }
}

/// Sends the link events after `after` from the audit log: the number of the last entry read
/// (`None`: the watcher went away), or `Err` when the watcher must reload instead (too many,
/// or from before `--events-retention`).
async fn replay(
    state: &AppState,
    caller: &Caller,
    after: u64,
    out: &mpsc::Sender<Bytes>,
) -> Result<Option<u64>, ()> {
    let retention = i64::try_from(state.config.events_retention.as_millis()).unwrap_or(i64::MAX);
    let oldest = now_ms().saturating_sub(retention);
    let mut from = after;
    let mut sent = 0;
    loop {
        let batch = state
            .events
            .since(&caller.workspace, from, 500)
            .await
            .map_err(|e| tracing::warn!(cause = %e, "cannot replay the events"))?;
        let Some(last) = batch.last() else {
            return Ok(Some(from));
        };
        let end = last.seq;
        for record in &batch {
            if record.at < oldest {
                return Err(());
            }
            if let Some(frame) = link_frame(record, caller, &state.default_host) {
                sent += 1;
                if sent > MAX_REPLAY {
                    return Err(());
                }
                if out.send(frame).await.is_err() {
                    return Ok(None);
                }
            }
        }
        from = end;
    }
}
