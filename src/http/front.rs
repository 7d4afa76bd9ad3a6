//! The front door: our own accept loop in front of salvo. It reads the first bytes of each new
//! connection: one that opens with `GET /realtime/` (what a browser's `EventSource` sends on its
//! own connection) is served by the lean stream writer in [`super::sse`]; one that opens with
//! `GET /` or `HEAD /` by the redirect lane in [`super::lane`] for as long as it asks for
//! redirects of plain links; every other, and one the lane lets go, goes to salvo unchanged,
//! the bytes not yet answered put back in front of the socket ([`Rewind`]).
//!
//! Each connection takes a place in `--max-connections` (past it, new ones wait in the kernel's
//! backlog) and one of its client address's `--max-connections-per-client` places (past it,
//! the connection is answered `429` + `Retry-After` and closed, before anything is read).
//!
//! Why: a connection served by salvo/hyper keeps about 16 KiB of read and write buffers for its
//! whole life, and every frame passes through its body machinery. For thousands of idle-most-
//! of-the-time subscribers the lean writer keeps a few hundred bytes and makes one `write` per
//! frame. A plain redirect spent most of its time in salvo's and hyper's per-request work,
//! which the redirect lane skips (docs/performance.md, "Redirect throughput").

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use salvo::{
    conn::{Accepted, Acceptor, ConnCtrl, Holding, StraightStream, tcp::TcpCoupler},
    fuse::{ArcFusePolicy, FuseAction, FuseInfo, TransProto},
    http::{Version, uri::Scheme},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, mpsc},
};
use tracing::warn;

use super::{AppState, lane, limit::Place, sse};

const SSE_PREFIX: &[u8] = b"GET /realtime/";
/// Connections accepted but not yet taken by salvo.
const HANDOFF_QUEUE: usize = 1024;
/// How long a refused connection is read (and what it sent dropped) after its answer, so
/// closing it does not reset it before the client has read the answer.
const LINGER: Duration = Duration::from_secs(1);

/// The places an open connection holds: one of all, one of its client address's.
struct Places {
    _total: OwnedSemaphorePermit,
    _client: Place,
}

/// Starts the accept loop on `listener` and returns the acceptor salvo serves from.
pub fn start(listener: TcpListener, state: Arc<AppState>) -> io::Result<FrontAcceptor> {
    let local_addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    tokio::spawn(accept_loop(listener, state, tx));
    Ok(FrontAcceptor {
        holdings: vec![Holding {
            local_addr: local_addr.into(),
            http_versions: vec![Version::HTTP_11],
            http_scheme: Scheme::HTTP,
        }],
        rx,
    })
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    to_salvo: mpsc::Sender<(Rewind, SocketAddr)>,
) {
    loop {
        // One place per open connection: at the limit, new ones wait in the backlog.
        let place = tokio::select! {
            () = state.shutdown.cancelled() => return,
            place = state.connections.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = state.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((conn, peer)) => {
                let _ = conn.set_nodelay(true);
                // Behind a trusted proxy the peer is the proxy: only streams are limited per
                // client there (by the forwarded address).
                let client = (!state.config.trust_forwarded_for).then_some(peer.ip());
                let limit = state.config.max_connections_per_client;
                match state.client_limits().connections.take(client, limit) {
                    Ok(client_place) => {
                        let places = Places {
                            _total: place,
                            _client: client_place,
                        };
                        tokio::spawn(sort(conn, peer, places, state.clone(), to_salvo.clone()));
                    }
                    Err(full) => {
                        tokio::spawn(refuse(conn, full.into_error(), place));
                    }
                }
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers a connection over its client's cap with `error`, then reads and drops what it sent
/// until it closes or [`LINGER`] passes. Holds its place in `--max-connections` meanwhile.
async fn refuse(mut conn: TcpStream, error: super::ApiError, _place: OwnedSemaphorePermit) {
    sse::refuse(&mut conn, &error).await;
    let _ = conn.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Reads until the first bytes tell a stream, a redirect and anything else apart.
async fn sort(
    mut conn: TcpStream,
    peer: SocketAddr,
    place: Places,
    state: Arc<AppState>,
    to_salvo: mpsc::Sender<(Rewind, SocketAddr)>,
) {
    let mut buf = BytesMut::with_capacity(1024);
    // The whole request head must arrive within the header timeout.
    let deadline = tokio::time::Instant::now() + state.config.header_timeout;
    loop {
        match tokio::time::timeout_at(deadline, conn.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed or silent: nothing to serve.
            _ => return,
        }
        let seen = buf.len().min(SSE_PREFIX.len());
        if buf[..seen] == SSE_PREFIX[..seen] {
            if seen == SSE_PREFIX.len() {
                sse::serve(conn, peer, buf, deadline, state).await;
                drop(place);
                return;
            }
            continue;
        }
        match lane::may_take(&buf) {
            None => continue,
            Some(true) => match lane::serve(conn, peer, buf, deadline, state).await {
                lane::Left::Closed => return,
                lane::Left::ToSalvo(rest, unread) => (conn, buf) = (rest, unread),
            },
            Some(false) => {}
        }
        let conn = Rewind {
            prefix: buf.freeze(),
            inner: conn,
            _place: place,
        };
        // If salvo has stopped taking connections, the connection is dropped.
        let _ = to_salvo.send((conn, peer)).await;
        return;
    }
}

/// Hands the connections that are not streams to salvo.
pub struct FrontAcceptor {
    holdings: Vec<Holding>,
    rx: mpsc::Receiver<(Rewind, SocketAddr)>,
}

impl Acceptor for FrontAcceptor {
    type Coupler = TcpCoupler<Self::Stream>;
    type Stream = StraightStream<Rewind>;

    fn holdings(&self) -> &[Holding] {
        &self.holdings
    }

    async fn accept(
        &mut self,
        fuse_policy: Option<ArcFusePolicy>,
    ) -> io::Result<Accepted<Self::Coupler, Self::Stream>> {
        loop {
            let Some((conn, peer)) = self.rx.recv().await else {
                // The accept loop has ended (shutdown): salvo stops calling us.
                return std::future::pending().await;
            };
            let local_addr = self.holdings[0].local_addr.clone();
            let conn_ctrl = ConnCtrl::new();
            let (fuse_config, observer) = match &fuse_policy {
                Some(policy) => {
                    let info = FuseInfo {
                        trans_proto: TransProto::Tcp,
                        remote_addr: peer.into(),
                        local_addr: local_addr.clone(),
                    };
                    match policy.decide(&info).await {
                        FuseAction::Accept(config) => {
                            (Some(config), policy.observe(&info, &conn_ctrl))
                        }
                        FuseAction::Reject => continue,
                    }
                }
                None => (None, None),
            };
            return Ok(Accepted {
                coupler: TcpCoupler::new(),
                stream: StraightStream::new(conn, fuse_config, conn_ctrl.clone(), observer),
                fuse_config,
                conn_ctrl,
                remote_addr: peer.into(),
                local_addr,
                http_scheme: Scheme::HTTP,
            });
        }
    }
}

/// A socket with bytes already read from it put back in front. It holds the connection's
/// place until salvo drops it.
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
    _place: Places,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
