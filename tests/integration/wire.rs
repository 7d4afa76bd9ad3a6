//! Raw HTTP/1.1 on a TCP connection, for what reqwest hides: which transport serves a stream
//! (a fresh connection is served by the lean writer, a kept-alive one that already carried a
//! request by salvo), the client's own address (any 127.x.y.z on Linux loopback), and heads
//! reqwest will not send.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Longest wait for an answer (a deadline, not a timing assertion).
pub const WAIT: Duration = Duration::from_secs(30);

/// One answer: its status, head (as text) and the body read so far. A stream's body is read
/// until its first `retry:` line, anything else by its `Content-Length` or until closed.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The `error` of a JSON error body (asserting it is one).
    pub fn json_error(&self) -> String {
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "not JSON: {}",
            self.head
        );
        let body: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        let message = body["error"].as_str().unwrap_or_default().to_owned();
        assert!(!message.is_empty(), "the body names the problem: {body}");
        message
    }

    pub fn is_stream(&self) -> bool {
        self.status == 200
            && self
                .header("content-type")
                .is_some_and(|ct| ct.starts_with("text/event-stream"))
    }
}

/// A connection to `server` from the local address `from` (e.g. `[127, 0, 0, 2]`).
pub async fn connect_from(from: [u8; 4], server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddrV4::new(Ipv4Addr::from(from), 0).into())?;
    socket.connect(server).await
}

/// Sends `request` as it is and reads one answer.
pub async fn exchange(conn: &mut TcpStream, request: &[u8]) -> Option<Answer> {
    // A refused connection may be closed before all is written: the answer is still there.
    let _ = conn.write_all(request).await;
    read_answer(conn).await
}

/// `GET path` with `Host` and CRLF line ends, keeping the connection open.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

/// A connection from `from` that has already carried one request (`GET /healthz`), so the next
/// request on it is served by salvo, not by the lean stream writer.
pub async fn kept_alive_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    let mut conn = connect_from(from, server).await.expect("connects");
    let health = exchange(&mut conn, &get("/healthz"))
        .await
        .expect("health answered");
    assert_eq!(health.status, 200, "{}", health.head);
    conn
}

/// Reads one answer (`None`: closed or silent before a whole head came).
pub async fn read_answer(conn: &mut TcpStream) -> Option<Answer> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !fill(conn, &mut got, deadline).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let status = head.get(9..12)?.parse().ok()?;
    let mut answer = Answer {
        status,
        head,
        body: String::new(),
    };
    let mut body = got[head_end + 4..].to_vec();
    if answer.is_stream() {
        while !String::from_utf8_lossy(&body).contains("retry: ") {
            if !fill(conn, &mut body, deadline).await {
                break;
            }
        }
    } else if let Some(len) = answer
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        while body.len() < len {
            if !fill(conn, &mut body, deadline).await {
                break;
            }
        }
    } else {
        while fill(conn, &mut body, deadline).await {}
    }
    answer.body = String::from_utf8_lossy(&body).into_owned();
    Some(answer)
}

/// Reads once more into `buf`; false when closed, failed or past `deadline`.
async fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>, deadline: tokio::time::Instant) -> bool {
    let mut chunk = [0u8; 8192];
    match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// Reads from `conn` until `needle` has been seen; returns what was read.
pub async fn read_until(conn: &mut TcpStream, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// True once the server has closed `conn` (reads until end of stream, within [`WAIT`]).
pub async fn closed_by_server(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}
