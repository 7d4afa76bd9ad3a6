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

/// A connection for salvo: its socket (the bytes already read put back), its client and the
/// listener it came in on.
struct Handoff {
    conn: Rewind,
    peer: SocketAddr,
    local: SocketAddr,
    tls: bool,
}

/// Starts the accept loop on `listener`, and one on `https` (with its TLS settings) if given,
/// and returns the acceptor salvo serves from.
pub fn start(
    listener: TcpListener,
    https: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    state: Arc<AppState>,
) -> io::Result<FrontAcceptor> {
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    let mut holdings = vec![Holding {
        local_addr: listener.local_addr()?.into(),
        http_versions: vec![Version::HTTP_11],
        http_scheme: Scheme::HTTP,
    }];
    tokio::spawn(accept_loop(listener, None, state.clone(), tx.clone()));
    if let Some((listener, config)) = https {
        holdings.push(Holding {
            local_addr: listener.local_addr()?.into(),
            http_versions: vec![Version::HTTP_11, Version::HTTP_2],
            http_scheme: Scheme::HTTPS,
        });
        let tls = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(accept_loop(listener, Some(tls), state, tx));
    }
    Ok(FrontAcceptor { holdings, rx })
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
    to_salvo: mpsc::Sender<Handoff>,
) {
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(e) => {
            warn!(cause = %e, "a listener has no address");
            return;
        }
    };
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
                        let to_salvo = to_salvo.clone();
                        let state = state.clone();
                        let tls = tls.clone();
                        tokio::spawn(async move {
                            let to = Door {
                                peer,
                                local,
                                state,
                                to_salvo,
                            };
                            match tls {
                                None => to.sort(Conn::Plain(conn), places).await,
                                Some(tls) => to.secure(conn, tls, places).await,
                            }
                        });
                    }
                    // Over HTTPS the answer would need a handshake first: the connection is
                    // closed instead.
                    Err(_) if tls.is_some() => drop(place),
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

/// Where a connection came from and where it may go.
struct Door {
    peer: SocketAddr,
    local: SocketAddr,
    state: Arc<AppState>,
    to_salvo: mpsc::Sender<Handoff>,
}

impl Door {
    /// The TLS handshake, within the header timeout; then HTTP/2 goes to salvo, HTTP/1.1 is
    /// sorted as on the plain listener.
    async fn secure(self, conn: TcpStream, tls: tokio_rustls::TlsAcceptor, places: Places) {
        let timeout = self.state.config.header_timeout;
        let conn = match tokio::time::timeout(timeout, tls.accept(conn)).await {
            Ok(Ok(conn)) => conn,
            // No certificate for the name asked, no common protocol, or silence.
            _ => return,
        };
        let alpn = conn.get_ref().1.alpn_protocol();
        if alpn == Some(crate::certs::ACME_TLS_ALPN) {
            // An ACME server's TLS-ALPN-01 check: the handshake was the answer.
            let mut conn = conn;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut conn).await;
            return;
        }
        let h2 = super::tls::is_h2(alpn);
        let conn = Conn::Tls(Box::new(conn));
        if h2 {
            self.hand_to_salvo(conn, BytesMut::new(), places).await;
        } else {
            self.sort(conn, places).await;
        }
    }

    /// Reads until the first bytes tell a stream, a redirect and anything else apart.
    async fn sort(self, mut conn: Conn, places: Places) {
        let state = &self.state;
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
                    sse::serve(conn, self.peer, buf, deadline, state.clone()).await;
                    drop(places);
                    return;
                }
                continue;
            }
            match lane::may_take(&buf) {
                None => continue,
                Some(true) => {
                    match lane::serve(conn, self.peer, buf, deadline, state.clone()).await {
                        lane::Left::Closed => return,
                        lane::Left::ToSalvo(rest, unread) => (conn, buf) = (rest, unread),
                    }
                }
                Some(false) => {}
            }
            return self.hand_to_salvo(conn, buf, places).await;
        }
    }

    async fn hand_to_salvo(self, conn: Conn, read: BytesMut, places: Places) {
        let tls = matches!(conn, Conn::Tls(_));
        let conn = Rewind {
            prefix: read.freeze(),
            inner: conn,
            _place: places,
        };
        let handoff = Handoff {
            conn,
            peer: self.peer,
            local: self.local,
            tls,
        };
        // If salvo has stopped taking connections, the connection is dropped.
        let _ = self.to_salvo.send(handoff).await;
    }
}

/// Hands the connections that are not streams to salvo.
pub struct FrontAcceptor {
    holdings: Vec<Holding>,
    rx: mpsc::Receiver<Handoff>,
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
            let Some(Handoff {
                conn,
                peer,
                local,
                tls,
            }) = self.rx.recv().await
            else {
                // The accept loop has ended (shutdown): salvo stops calling us.
                return std::future::pending().await;
            };
            let local_addr = salvo::conn::SocketAddr::from(local);
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
                http_scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
            });
        }
    }
}

/// Writes all of `bytes` and flushes them: over TLS, to the socket, not only into the
/// session's buffer.
pub async fn send_all<S: AsyncWrite + Unpin>(conn: &mut S, bytes: &[u8]) -> io::Result<()> {
    conn.write_all(bytes).await?;
    conn.flush().await
}

/// An accepted connection, plain or over TLS: what the stream writer, the redirect lane and
/// salvo read and write.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(conn) => conn,
            Self::Tls(conn) => conn.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_read(cx, buf),
            Self::Tls(conn) => Pin::new(conn).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_write(cx, buf),
            Self::Tls(conn) => Pin::new(conn).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_write_vectored(cx, bufs),
            Self::Tls(conn) => Pin::new(conn).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(conn) => conn.is_write_vectored(),
            Self::Tls(conn) => conn.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_flush(cx),
            Self::Tls(conn) => Pin::new(conn).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_shutdown(cx),
            Self::Tls(conn) => Pin::new(conn).poll_shutdown(cx),
        }
    }
}

/// A socket with bytes already read from it put back in front. It holds the connection's
/// place until salvo drops it.
pub struct Rewind {
    prefix: Bytes,
    inner: Conn,
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
