//! The lean stream writer: serves a connection whose first request is `GET /realtime/{code}`
//! straight on the socket. The request head is parsed with `httparse` (what hyper parses with,
//! so both transports take the same heads: bare-LF line ends, the same header count and size
//! limits, the same body framing checks); the answer is written by hand (status line, a few
//! fixed headers, `Connection: close`), then each frame is one `write`. The connection is not
//! reused afterwards, so the body needs no chunk framing.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use salvo::http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{
    ApiError, AppState, client_addr,
    front::{Conn, send_all},
    limit::{self, MAX_HEADERS_BYTES},
    stream::{self, StreamRequest},
};

/// Most request headers taken (hyper's limit on the salvo path).
pub(super) const MAX_HEADERS: usize = 100;
/// Largest request head taken: all headers at their limit plus a long request line. A head
/// that salvo would serve always fits.
pub(super) const MAX_HEAD: usize = MAX_HEADERS_BYTES + 32 * 1024;
/// How long a last write (an error, the farewell) may take.
pub(super) const LAST_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The stream's status line and headers, without the blank line that ends them.
const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n";

/// Serves one stream; `buf` holds what was read so far.
pub async fn serve(
    mut conn: Conn,
    peer: SocketAddr,
    buf: BytesMut,
    deadline: tokio::time::Instant,
    state: Arc<AppState>,
) {
    let Some(head) = receive_head(&mut conn, buf, deadline).await else {
        return;
    };
    let secure =
        matches!(conn, Conn::Tls(_)) || (state.config.trust_forwarded_for && head.forwarded_https);
    let domain = super::domain_of_host(&state, head.host.as_deref());
    let hsts = match super::secure::rule(domain.as_deref(), secure, &head.target) {
        super::secure::Rule::Serve => false,
        super::secure::Rule::ServeWithHsts => true,
        super::secure::Rule::ToHttps(location) => {
            return to_https(&mut conn, &location).await;
        }
    };
    let opened = stream::open(
        &state,
        StreamRequest {
            raw_code: stream::code_in_target(&head.target),
            last_event_id: head.last_event_id.as_deref(),
            client: client_addr(
                state.config.trust_forwarded_for,
                Some(peer.ip()),
                head.forwarded_for.as_deref(),
            ),
            host: head.host.as_deref(),
        },
    )
    .await;
    drop(head);
    let stream::Opened {
        head,
        public,
        frames,
        guard,
    } = match opened {
        Ok(opened) => opened,
        Err(e) => return refuse(&mut conn, &e).await,
    };
    let stuck = state.config.sse_stuck_timeout;
    // A small send buffer bounds the kernel memory a reader that stops reading can pin, and
    // lets the stuck limit below notice it soon.
    if let Err(e) =
        socket2::SockRef::from(conn.tcp()).set_send_buffer_size(state.config.sse_send_buffer)
    {
        tracing::debug!(cause = %e, "cannot set the send buffer of a stream");
    }
    if !send_stream_head(&mut conn, &head, public, hsts, stuck).await {
        return;
    }
    send_frames(&mut conn, frames, &state.shutdown, stuck).await;
    drop(guard);
}

/// Reads until the request head in `buf` is complete, within `deadline`: the head, or `None`
/// when the client left, was too slow, or was refused (answered here).
async fn receive_head(
    conn: &mut Conn,
    mut buf: BytesMut,
    deadline: tokio::time::Instant,
) -> Option<Head> {
    // httparse decides where a head ends (CRLF or bare LF), as it does for hyper. The parsing
    // is done in plain functions, so its header array never becomes part of this
    // (long-lived) future.
    // Bytes already looked through for a line end: the head is parsed again only when a new
    // line has ended (it may be complete now, or show itself malformed), so a client sending
    // a byte at a time costs a parse per line (at most the header limit), not per byte.
    let mut lines = LineWatch::default();
    loop {
        if lines.new_line(&buf) {
            match read_head(&buf) {
                Ok(Some(head)) => return Some(head),
                Ok(None) => {}
                Err(e) => {
                    refuse(conn, &e).await;
                    return None;
                }
            }
        }
        if buf.len() > MAX_HEAD {
            let e = ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            );
            refuse(conn, &e).await;
            return None;
        }
        // One deadline for the whole head: a client sending a byte now and then is cut off.
        match tokio::time::timeout_at(deadline, conn.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Writes the stream's status line and headers, then its first chunk `head`, within `stuck`:
/// whether it went out.
async fn send_stream_head(
    conn: &mut Conn,
    head: &[u8],
    public: bool,
    hsts: bool,
    stuck: Duration,
) -> bool {
    let mut first = BytesMut::with_capacity(STREAM_HEAD.len() + 128 + head.len());
    first.extend_from_slice(STREAM_HEAD);
    if public {
        first.extend_from_slice(super::cors::PUBLIC_ORIGIN_LINE.as_bytes());
    }
    if hsts {
        first.extend_from_slice(b"strict-transport-security: ");
        first.extend_from_slice(super::secure::HSTS.as_bytes());
        first.extend_from_slice(b"\r\n");
    }
    first.extend_from_slice(b"\r\n");
    first.extend_from_slice(head);
    matches!(
        tokio::time::timeout(stuck, send_all(conn, &first)).await,
        Ok(Ok(()))
    )
}

/// Writes each frame as it comes, until the client leaves or is stuck for `stuck` on one
/// frame, the actor lets the subscriber go, or `shutdown` (then with a farewell).
async fn send_frames(
    conn: &mut Conn,
    mut frames: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    shutdown: &CancellationToken,
    stuck: Duration,
) {
    // A client sends nothing more on a stream; reading lets us see it leave at once (instead of
    // at the next write) and give its places back.
    let mut probe = [0u8; 64];
    // Made once: registering with the shared token on every frame would have every stream
    // take the token's lock once per frame.
    let shutdown = shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut shutdown => {
                let _ = tokio::time::timeout(LAST_WRITE_TIMEOUT, send_all(conn, &stream::farewell())).await;
                break;
            }
            read = conn.read(&mut probe) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            frame = frames.recv() => match frame {
                Some(frame) => frame,
                // The actor let this subscriber go (stuck, or stopping): close, the client
                // comes back with Last-Event-ID.
                None => break,
            },
        };
        // A reader that takes longer than this for one frame is stuck: disconnect it.
        match tokio::time::timeout(stuck, send_all(conn, &frame)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
}

/// What the stream needs of a request head.
struct Head {
    target: String,
    last_event_id: Option<Vec<u8>>,
    forwarded_for: Option<Vec<u8>>,
    /// `X-Forwarded-Proto`: the scheme a trusted proxy took the request on.
    forwarded_https: bool,
    host: Option<String>,
}

/// The head in `buf` if it is complete (`None`: read on), or the answer refusing it.
/// Where a growing request head was last looked at for a line end.
#[derive(Default)]
struct LineWatch {
    searched: usize,
}

impl LineWatch {
    /// Whether a line has ended in the bytes added since the last call (each byte is looked
    /// at once).
    fn new_line(&mut self, buf: &[u8]) -> bool {
        let from = self.searched.min(buf.len());
        self.searched = buf.len();
        buf[from..].contains(&b'\n')
    }
}

fn read_head(buf: &[u8]) -> Result<Option<Head>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(head_error(e)),
    }
    check_head(&request)?;
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.to_vec())
    };
    Ok(Some(Head {
        target: request.path.unwrap_or("").to_owned(),
        last_event_id: header("last-event-id"),
        forwarded_for: header("x-forwarded-for"),
        forwarded_https: header("x-forwarded-proto")
            .is_some_and(|p| p.eq_ignore_ascii_case(b"https")),
        host: header("host").and_then(|h| String::from_utf8(h).ok()),
    }))
}

/// A head httparse refused, answered as hyper answers it on the salvo path.
fn head_error(e: httparse::Error) -> ApiError {
    match e {
        httparse::Error::TooManyHeaders => ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("more than {MAX_HEADERS} request headers"),
        ),
        _ => ApiError::bad_request("malformed request"),
    }
}

/// What hyper and the salvo path check of a parsed head besides its syntax: header sizes
/// ([`limit::check_header_sizes`]) and body framing (a `Content-Length` of digits only and the
/// same in every copy; `Transfer-Encoding` only in HTTP/1.1 and ending in `chunked`).
fn check_head(request: &httparse::Request<'_, '_>) -> Result<(), ApiError> {
    limit::check_header_sizes(request.headers.iter().map(|h| h.name.len() + h.value.len()))?;
    let malformed = || ApiError::bad_request("malformed request");
    let (mut length, mut chunked, mut encoded) = (None, false, false);
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if request.version != Some(1) {
                return Err(malformed());
            }
            encoded = true;
            chunked = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") && !encoded {
            let digits = !h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit);
            let value = std::str::from_utf8(h.value)
                .ok()
                .filter(|_| digits)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(malformed)?;
            if length.is_some_and(|seen| seen != value) {
                return Err(malformed());
            }
            length = Some(value);
        }
    }
    if encoded && !chunked {
        return Err(malformed());
    }
    Ok(())
}

/// Answers `308` to `location` (an `httpsOnly` domain over plain HTTP) and closes.
async fn to_https(conn: &mut Conn, location: &str) {
    let answer = format!(
        "HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n\
         connection: close\r\n\r\n"
    );
    let _ = send_all(conn, answer.as_bytes()).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(conn).await;
}

/// Answers with a JSON error and closes. Also used by the accept loop to refuse a connection
/// before reading from it.
pub(super) async fn refuse<S: AsyncWrite + Unpin>(conn: &mut S, error: &ApiError) {
    let body = serde_json::json!({ "error": error.message }).to_string();
    let reason = error.status.canonical_reason().unwrap_or("");
    let retry = error
        .retry_after
        .map(|s| format!("retry-after: {s}\r\n"))
        .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         {retry}connection: close\r\n\r\n{body}",
        error.status.as_u16(),
        body.len()
    );
    let _ = tokio::time::timeout(LAST_WRITE_TIMEOUT, send_all(conn, answer.as_bytes())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head sent a byte at a time is parsed once per line, not once per byte.
    #[test]
    fn a_head_sent_byte_by_byte_is_parsed_once_per_line() {
        let head = b"GET /realtime/abc HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n";
        let (mut lines, mut buf, mut parses) = (LineWatch::default(), Vec::new(), 0);
        let mut parsed = None;
        for byte in head {
            buf.push(*byte);
            if lines.new_line(&buf) {
                parses += 1;
                if let Ok(Some(h)) = read_head(&buf) {
                    parsed = Some(h);
                    break;
                }
            }
        }
        assert_eq!(parses, 4, "one parse per line end");
        let parsed = parsed.expect("the head is complete");
        assert_eq!(parsed.target, "/realtime/abc");
        assert_eq!(parsed.last_event_id.as_deref(), Some(&b"7"[..]));

        // 30,000 bytes of one endless header line cost no parse at all.
        let (mut lines, mut buf) = (
            LineWatch::default(),
            b"GET /realtime/abc HTTP/1.1\r\nX: ".to_vec(),
        );
        assert!(lines.new_line(&buf));
        let parses = (0..30_000)
            .filter(|_| {
                buf.push(b'a');
                lines.new_line(&buf)
            })
            .count();
        assert_eq!(parses, 0);
    }
}
