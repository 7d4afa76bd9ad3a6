//! The redirect lane: serves `GET` and `HEAD /{code}` of a plain link straight on the socket,
//! for as long as a kept-alive connection asks for nothing else. The first request it does not
//! take (another path or method, a link with more than a target, an unknown code, a body,
//! `Expect`, `Upgrade`, HTTP/1.0, a head past the limits or malformed) is handed to salvo with
//! the connection, its bytes still unread, so salvo answers it and everything after it as it
//! always has: every rule of a redirect stays in one place, and this lane only skips salvo's
//! per-request machinery (hyper's head parsing and answer writing, the router, the `Request`
//! and `Response`), which was most of a plain redirect's cost.
//!
//! Requests are parsed with `httparse` (what hyper parses with), pipelined requests are served
//! in order with their answers written together, and the answer has the headers salvo gives
//! it. The header timeout applies to each request head (a kept-alive connection idle that
//! long is closed, as on the salvo path); a shutdown closes connections between requests.

use std::{cell::RefCell, net::SocketAddr, sync::Arc, time::Instant};

use bytes::{Buf, BytesMut};
use salvo::http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    AppState, client_addr,
    front::{Conn, send_all},
    limit::check_header_sizes,
    redirect::{Redirect, new_click, status_of},
    sse::{MAX_HEAD, MAX_HEADERS},
};
use crate::{links::Click, store::records::DomainRecord};

/// How a connection left the lane.
pub enum Left {
    /// Closed (by the client, a timeout, `Connection: close`, a failed write or shutdown).
    Closed,
    /// Asked for something the lane does not serve: salvo takes the connection, with `unread`
    /// (the bytes not yet answered) put back in front of it.
    ToSalvo(Conn, BytesMut),
}

/// Whether `start` (a connection's first bytes) may be a request this lane takes: `None` while
/// too few bytes have come to tell.
pub fn may_take(start: &[u8]) -> Option<bool> {
    const GET: &[u8] = b"GET /";
    const HEAD: &[u8] = b"HEAD /";
    let opens = |method: &[u8]| {
        let seen = start.len().min(method.len());
        (start[..seen] == method[..seen]).then_some(seen == method.len())
    };
    match (opens(GET), opens(HEAD)) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (None, None) => Some(false),
        _ => None,
    }
}

/// Serves redirects on `conn` until it closes or asks for something else. `buf` holds what was
/// read so far; `deadline` ends the wait for the first request's head.
pub async fn serve(
    mut conn: Conn,
    peer: SocketAddr,
    mut buf: BytesMut,
    mut deadline: tokio::time::Instant,
    state: Arc<AppState>,
) -> Left {
    let get = Redirect {
        state: state.clone(),
        count: true,
    };
    let stuck = state.config.sse_stuck_timeout;
    let mut answers = BytesMut::with_capacity(512);
    let mut in_flight = None;
    loop {
        // Every whole request read so far, in order.
        loop {
            let ask = match next_request(&buf, &state, peer) {
                Next::Partial => break,
                Next::Other => {
                    if !answers.is_empty() && !write(&mut conn, &answers, stuck).await {
                        return Left::Closed;
                    }
                    return Left::ToSalvo(conn, buf);
                }
                Next::Redirect(ask) => ask,
            };
            // Counted until answered: a clean stop waits for it before the actors stop. Once
            // the stop has begun, a new request is not answered (so nothing answered is lost);
            // the client sends it again elsewhere.
            // Held until the answers are written (below), so a stop waits for the answer too.
            in_flight.replace(state.lane_requests.token());
            if state.lane_requests.is_closed() {
                let _ = write(&mut conn, &answers, stuck).await;
                return Left::Closed;
            }
            let started = Instant::now();
            let Some(link) = plain_link(&state, &ask.code, ask.domain.as_deref()).await else {
                if !answers.is_empty() && !write(&mut conn, &answers, stuck).await {
                    return Left::Closed;
                }
                return Left::ToSalvo(conn, buf);
            };
            buf.advance(ask.len);
            let stored = match ask.click {
                Some(click) => get.cast(&link, click).await,
                None => true,
            };
            if !stored {
                // Strict durability, and the click could not be stored: the salvo path's 503.
                let _ = write(&mut conn, &answers, stuck).await;
                let error = super::ApiError::unavailable("the click could not be stored", 1);
                super::sse::refuse(&mut conn, &error).await;
                return Left::Closed;
            }
            answer(
                &mut answers,
                status_of(&link),
                link.target.as_str(),
                ask.close,
            );
            state.metrics.redirect_took(started.elapsed());
            if ask.close {
                let _ = write(&mut conn, &answers, stuck).await;
                let _ = conn.shutdown().await;
                return Left::Closed;
            }
            // The next request's head must come within the header timeout.
            deadline = tokio::time::Instant::now() + state.config.header_timeout;
        }
        if buf.len() > MAX_HEAD {
            // Salvo answers a head past the limits as it always has.
            if !answers.is_empty() && !write(&mut conn, &answers, stuck).await {
                return Left::Closed;
            }
            return Left::ToSalvo(conn, buf);
        }
        if !answers.is_empty() {
            if !write(&mut conn, &answers, stuck).await {
                return Left::Closed;
            }
            answers.clear();
        }
        in_flight.take();
        let read = tokio::select! {
            () = state.shutdown.cancelled() => return Left::Closed,
            read = tokio::time::timeout_at(deadline, conn.read_buf(&mut buf)) => read,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed, or silent past the header timeout.
            _ => return Left::Closed,
        }
    }
}

/// The link `code` names on `domain` (`None`: the default one), if it is one this lane
/// serves (plain: a target and nothing more).
async fn plain_link(
    state: &AppState,
    code: &str,
    domain: Option<&DomainRecord>,
) -> Option<Arc<crate::domain::Link>> {
    let live = match domain {
        None => state.links.find_live(code),
        Some(_) => None,
    };
    let link = match live {
        Some(link) => link,
        None => {
            let key = super::key_on(domain, code)?;
            state.links.find(&key).await.ok()??
        }
    };
    // Targets are ASCII without control characters by construction; checked all the same, as
    // the salvo path checks it.
    let valid = link
        .target
        .as_str()
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
    (link.is_plain() && valid).then_some(link)
}

/// A request the lane takes.
struct Ask {
    /// The request head's length in the buffer.
    len: usize,
    code: String,
    /// The click to cast (`None` for `HEAD`).
    click: Option<Click>,
    /// `Connection: close`: answer, then close.
    close: bool,
    /// The domain its `Host` names, if one other than the default.
    domain: Option<Arc<DomainRecord>>,
}

enum Next {
    /// The next request's head has not all come.
    Partial,
    /// A request for salvo.
    Other,
    Redirect(Ask),
}

/// Reads the request at the start of `buf`. A plain function: httparse's header array never
/// becomes part of the connection's future.
fn next_request(buf: &[u8], state: &AppState, peer: SocketAddr) -> Next {
    if buf.is_empty() {
        return Next::Partial;
    }
    match may_take(buf) {
        Some(true) => {}
        Some(false) => return Next::Other,
        None => return Next::Partial,
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Next::Partial,
        // Salvo answers it (a 400 or 431).
        Err(_) => return Next::Other,
    };
    let count = match request.method {
        Some("GET") => true,
        Some("HEAD") => false,
        _ => return Next::Other,
    };
    let path = request.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    if request.version != Some(1) || !path.starts_with('/') || !super::is_code_path(path) {
        return Next::Other;
    }
    if check_header_sizes(request.headers.iter().map(|h| h.name.len() + h.value.len())).is_err() {
        return Next::Other;
    }
    let mut close = false;
    for h in request.headers.iter() {
        let name = h.name;
        let value = || std::str::from_utf8(h.value).unwrap_or("");
        let is = |other: &str| name.eq_ignore_ascii_case(other);
        if is("transfer-encoding") || is("expect") || is("upgrade") {
            return Next::Other;
        }
        if is("content-length") && value().trim() != "0" {
            return Next::Other;
        }
        if is("connection") {
            for token in value().split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    return Next::Other;
                }
            }
        }
    }
    let code = path.split('/').find(|s| !s.is_empty()).unwrap_or("");
    let domain = if state.domains.is_empty() && !state.config.strict_host {
        None
    } else {
        let host = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| visible_ascii(h.value));
        if super::check_host(state, host).is_err() {
            // Salvo answers it (the `404` of --strict-host).
            return Next::Other;
        }
        let domain = super::domain_of_host(state, host);
        if domain.as_deref().is_some_and(super::secure::has_rules) {
            // Salvo answers it (the `308` of httpsOnly, the header of hsts).
            return Next::Other;
        }
        domain
    };
    let click = count.then(|| {
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| visible_ascii(h.value))
        };
        let client = client_addr(
            state.config.trust_forwarded_for,
            Some(peer.ip()),
            header("x-forwarded-for").map(str::as_bytes),
        );
        new_click(state, client, header)
    });
    Next::Redirect(Ask {
        len,
        code: code.to_owned(),
        click,
        close,
        domain,
    })
}

/// `value` as text if it is what `HeaderValue::to_str` takes: visible ASCII, spaces and tabs.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Appends the redirect's answer: what the salvo path answers, header for header.
fn answer(out: &mut BytesMut, status: StatusCode, location: &str, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\nlocation: ");
    out.extend_from_slice(location.as_bytes());
    out.extend_from_slice(
        b"\r\ncontent-length: 0\r\ncache-control: private, max-age=0, no-store\r\n",
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    with_date(|date| out.extend_from_slice(date));
    out.extend_from_slice(b"\r\n\r\n");
}

/// Calls `f` with the current `Date` header value, formatted once a second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        f(text.as_bytes());
    });
}

/// Writes `bytes`, within `stuck`: whether they all went out.
async fn write(conn: &mut Conn, bytes: &[u8], stuck: std::time::Duration) -> bool {
    matches!(
        tokio::time::timeout(stuck, send_all(conn, bytes)).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_a_path_may_be_taken() {
        assert_eq!(may_take(b"G"), None);
        assert_eq!(may_take(b"HEAD"), None);
        assert_eq!(may_take(b"GET /abc"), Some(true));
        assert_eq!(may_take(b"HEAD /abc"), Some(true));
        assert_eq!(may_take(b"POST /abc"), Some(false));
        assert_eq!(may_take(b"GET http://x/abc"), Some(false));
        assert_eq!(may_take(b"GETX"), Some(false));
    }

    #[test]
    fn the_answer_has_the_salvo_paths_headers() {
        let mut out = BytesMut::new();
        answer(&mut out, StatusCode::FOUND, "https://example.com/x", false);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.starts_with(
                "HTTP/1.1 302 Found\r\nlocation: https://example.com/x\r\ncontent-length: 0\r\n\
                 cache-control: private, max-age=0, no-store\r\ndate: "
            ),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        let mut out = BytesMut::new();
        answer(&mut out, StatusCode::PERMANENT_REDIRECT, "/y", true);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    }
}
