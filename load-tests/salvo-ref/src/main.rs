//! salvo's ceiling: `GET /{code}` (and `HEAD`) answers `302` to a fixed target, with the headers linkpulse
//! sends, and does nothing else (no lookup, no click). `load-tests/compare.sh` measures it
//! beside nginx and linkpulse, so each run shows what salvo itself reaches on the machine.
//!
//!     salvo-ref 127.0.0.1:8081

use salvo::{
    http::{HeaderValue, StatusCode, header},
    prelude::*,
};

/// The allocator linkpulse uses, so the two differ only in what they do per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[handler]
async fn redirect(res: &mut Response) {
    res.status_code(StatusCode::FOUND);
    let headers = res.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_static("https://example.com/target"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=0, no-store"),
    );
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".to_owned());
    let router = Router::new().push(Router::with_path("{code}").get(redirect).head(redirect));
    let acceptor = TcpListener::new(addr).bind().await;
    Server::new(acceptor).serve(router).await;
}
