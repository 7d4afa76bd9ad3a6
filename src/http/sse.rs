//! The lean stream writer: serves a connection whose first request is `GET /realtime/{code}`
//! straight on the socket. The request head is parsed with `httparse`; the answer is written
//! by hand (status line, a few fixed headers, `Connection: close`), then each frame is one
//! `write`. The connection is not reused afterwards, so the body needs no chunk framing.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use salvo::http::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{ApiError, AppState, realtime};

/// Largest request head taken.
const MAX_HEAD: usize = 16 * 1024;
/// Most request headers taken.
const MAX_HEADERS: usize = 64;
/// How long a last write (an error, the farewell) may take.
const LAST_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n\r\n";

/// Serves one stream; `buf` holds what was read so far.
pub async fn serve(
    mut conn: TcpStream,
    mut buf: BytesMut,
    deadline: tokio::time::Instant,
    state: Arc<AppState>,
) {
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            let e = ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            );
            return refuse(&mut conn, &e).await;
        }
        // One deadline for the whole head: a client sending a byte now and then is cut off.
        match tokio::time::timeout_at(deadline, conn.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(&buf[..head_end]);
    let (path, last_event_id) = match parsed {
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("");
            let last_event_id = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("last-event-id"))
                .map(|h| h.value.to_vec());
            (path.to_owned(), last_event_id)
        }
        Err(httparse::Error::TooManyHeaders) => {
            let e = ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {MAX_HEADERS} request headers"),
            );
            return refuse(&mut conn, &e).await;
        }
        _ => {
            let e = ApiError::bad_request("malformed request");
            return refuse(&mut conn, &e).await;
        }
    };
    drop(buf);
    // `/realtime/{code}`, without a query string.
    let raw_code = path
        .strip_prefix("/realtime/")
        .unwrap_or("")
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let opened = match realtime::open(&state, raw_code, last_event_id.as_deref()).await {
        Ok(opened) => opened,
        Err(e) => return refuse(&mut conn, &e).await,
    };
    let realtime::Opened {
        head,
        mut frames,
        guard,
    } = opened;
    let stuck = state.config.sse_stuck_timeout;
    // A small send buffer bounds the kernel memory a reader that stops reading can pin, and
    // lets the stuck limit below notice it soon.
    if let Err(e) = socket2::SockRef::from(&conn).set_send_buffer_size(state.config.sse_send_buffer)
    {
        tracing::debug!(cause = %e, "cannot set the send buffer of a stream");
    }
    let mut first = BytesMut::with_capacity(STREAM_HEAD.len() + head.len());
    first.extend_from_slice(STREAM_HEAD);
    first.extend_from_slice(&head);
    if !matches!(
        tokio::time::timeout(stuck, conn.write_all(&first)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    drop(first);
    // A client sends nothing more on a stream; reading lets us see it leave at once (instead of
    // at the next write) and give its places back.
    let mut probe = [0u8; 64];
    // Made once: registering with the shared token on every frame would have every stream
    // take the token's lock once per frame.
    let shutdown = state.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut shutdown => {
                let _ = tokio::time::timeout(LAST_WRITE_TIMEOUT, conn.write_all(&realtime::farewell())).await;
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
        match tokio::time::timeout(stuck, conn.write_all(&frame)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    drop(guard);
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Answers with a JSON error and closes.
async fn refuse(conn: &mut TcpStream, error: &ApiError) {
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
    let _ = tokio::time::timeout(LAST_WRITE_TIMEOUT, conn.write_all(answer.as_bytes())).await;
}
