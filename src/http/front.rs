//! The front door: our own accept loop in front of salvo. It reads the first bytes of each new
//! connection: one that opens with `GET /realtime/` (what a browser's `EventSource` sends on its
//! own connection) is served by the lean stream writer in [`super::sse`]; every other goes to
//! salvo unchanged, the bytes already read put back in front of the socket ([`Rewind`]).
//!
//! Why: a connection served by salvo/hyper keeps about 16 KiB of read and write buffers for its
//! whole life, and every frame passes through its body machinery. For thousands of idle-most-
//! of-the-time subscribers the lean writer keeps a few hundred bytes and makes one `write` per
//! frame.

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
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, mpsc},
};
use tracing::warn;

use super::{AppState, sse};

const SSE_PREFIX: &[u8] = b"GET /realtime/";
/// Connections accepted but not yet taken by salvo.
const HANDOFF_QUEUE: usize = 1024;

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
                tokio::spawn(sort(conn, peer, place, state.clone(), to_salvo.clone()));
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                warn!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads until the first bytes tell a stream from anything else.
async fn sort(
    mut conn: TcpStream,
    peer: SocketAddr,
    place: OwnedSemaphorePermit,
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
        if buf[..seen] != SSE_PREFIX[..seen] {
            let conn = Rewind {
                prefix: buf.freeze(),
                inner: conn,
                _place: place,
            };
            // If salvo has stopped taking connections, the connection is dropped.
            let _ = to_salvo.send((conn, peer)).await;
            return;
        }
        if seen == SSE_PREFIX.len() {
            sse::serve(conn, buf, deadline, state).await;
            drop(place);
            return;
        }
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
    _place: OwnedSemaphorePermit,
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
