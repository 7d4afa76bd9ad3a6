//! The ceiling of serving redirects without salvo: keep-alive connections read and answered
//! by hand, the way linkpulse's lean stream writer serves `/realtime/` (request heads parsed
//! with `httparse`, what hyper parses with; the answer written as bytes). `GET` and `HEAD`
//! `/{code}` answer `302` to a fixed target with the headers salvo-ref sends (and hyper's
//! `date`), pipelined requests in order; anything else is `404`. No lookup, no click: what
//! such a front door could reach at best, beside salvo-ref (salvo's own ceiling) and nginx,
//! in `load-tests/lean-ceiling.sh`.
//!
//!     lean-ref 127.0.0.1:8082

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FOUND: &[u8] = b"HTTP/1.1 302 Found\r\nlocation: https://example.com/target\r\n\
content-length: 0\r\ncache-control: private, max-age=0, no-store\r\ndate: ";
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\ndate: ";

/// The `date` header's value, renewed every second by one task (as hyper caches it).
type Date = Arc<Mutex<Vec<u8>>>;

fn http_date() -> Vec<u8> {
    httpdate::fmt_http_date(SystemTime::now()).into_bytes()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".to_owned());
    let listener = TcpListener::bind(addr).await?;
    let date: Date = Arc::new(Mutex::new(http_date()));
    let renew = date.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(mut d) = renew.lock() {
                *d = http_date();
            }
        }
    });
    loop {
        let (conn, _) = listener.accept().await?;
        let _ = conn.set_nodelay(true);
        tokio::spawn(serve(conn, date.clone()));
    }
}

async fn serve(mut conn: TcpStream, date: Date) {
    let mut buf = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 4096];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // Every complete request in the buffer, in order.
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let used = match req.parse(&buf) {
                Ok(httparse::Status::Complete(used)) => used,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            };
            let is_code = matches!(req.method, Some("GET" | "HEAD"))
                && req.path.is_some_and(|p| {
                    let p = p.split('?').next().unwrap_or("");
                    p.len() > 1 && !p[1..].contains('/')
                });
            out.extend_from_slice(if is_code { FOUND } else { NOT_FOUND });
            if let Ok(d) = date.lock() {
                out.extend_from_slice(&d);
            }
            out.extend_from_slice(b"\r\n\r\n");
            buf.drain(..used);
        }
        if !out.is_empty() {
            if conn.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}
