//! The one mTLS server runner of the workspace.
//!
//! [`MtlsListener`] owns the TCP listener and does every TLS handshake in its
//! own task with a timeout (never inside `accept()`, where one slow client
//! would block everyone), bounded in number, then reads the peer's verified
//! [`PeerIdentity`] once and hands the finished connection over a channel.
//! It implements [`axum::serve::Listener`], and [`serve_router`] serves an
//! axum router over it with the [`authz`](crate::authz) policy applied and the
//! identity in every request's extensions. Non-HTTP servers (the syslog
//! listener) take connections straight from [`MtlsListener::next`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::authz::{self, AccessPolicy};
use crate::identity::PeerIdentity;

/// Limits of the accept path.
#[derive(Clone, Debug)]
pub struct AcceptOptions {
    /// A handshake not finished within this is dropped.
    pub handshake_timeout: Duration,
    /// At most this many handshakes run at once; further connections wait
    /// in the kernel backlog.
    pub max_pending_handshakes: usize,
    /// Hand over connections without a client certificate too (their
    /// [`TlsPeer::identity`] is `None`); the server config must then allow
    /// unauthenticated clients. Only the master's control API does this, for
    /// token joins; every policy refuses anonymous peers unless it says otherwise.
    pub allow_anonymous: bool,
}

impl Default for AcceptOptions {
    fn default() -> Self {
        AcceptOptions {
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
            allow_anonymous: false,
        }
    }
}

/// The remote end of an accepted connection: address and verified identity.
#[derive(Clone, Debug)]
pub struct TlsPeer {
    /// Remote socket address.
    pub remote: SocketAddr,
    /// The verified identity (`None` only for anonymous peers on a listener
    /// that allows them).
    pub identity: Option<Arc<PeerIdentity>>,
}

/// An accepted, handshaken mTLS connection that knows its peer.
pub struct MtlsStream {
    inner: TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl MtlsStream {
    /// The verified peer.
    pub fn peer(&self) -> &TlsPeer {
        &self.peer
    }
}

impl AsyncRead for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

/// A TCP listener that yields only connections whose client certificate
/// chained to the CA and names a role.
pub struct MtlsListener {
    local_addr: SocketAddr,
    rx: mpsc::Receiver<MtlsStream>,
    task: JoinHandle<()>,
}

impl Drop for MtlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MtlsListener {
    /// Start accepting on `tcp` with `config` (which must require client certs).
    pub fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        options: AcceptOptions,
    ) -> io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), options, tx));
        Ok(MtlsListener {
            local_addr,
            rx,
            task,
        })
    }

    /// Bind `addr` and start accepting.
    pub async fn bind(
        addr: SocketAddr,
        config: Arc<ServerConfig>,
        options: AcceptOptions,
    ) -> io::Result<Self> {
        Self::new(TcpListener::bind(addr).await?, config, options)
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next verified connection; `None` once the accept loop has ended.
    pub async fn next(&mut self) -> Option<MtlsStream> {
        self.rx.recv().await
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    options: AcceptOptions,
    tx: mpsc::Sender<MtlsStream>,
) {
    let handshakes = Arc::new(Semaphore::new(options.max_pending_handshakes.max(1)));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        if tx.is_closed() {
            return;
        }
        let (sock, remote) = match tcp.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let timeout = options.handshake_timeout;
        let allow_anonymous = options.allow_anonymous;
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(timeout, acceptor.accept(sock)).await;
            drop(permit);
            let stream = match handshake {
                Err(_) => {
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Ok(Ok(stream)) => stream,
            };
            let identity = match stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            {
                Some(der) => match PeerIdentity::from_der(der) {
                    Ok(id) => Some(Arc::new(id)),
                    Err(e) => {
                        tracing::warn!(%remote, error = %e, "peer certificate names no role; closing");
                        return;
                    }
                },
                None if allow_anonymous => None,
                None => {
                    tracing::warn!(%remote, "peer presented no certificate; closing");
                    return;
                }
            };
            let peer = TlsPeer { remote, identity };
            let _ = tx
                .send(MtlsStream {
                    inner: stream,
                    peer,
                })
                .await;
        });
    }
}

impl Listener for MtlsListener {
    type Io = MtlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.next().await {
            Some(stream) => {
                let remote = stream.peer.remote;
                (stream, remote)
            }
            // The accept loop only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, MtlsListener>> for TlsPeer {
    fn connect_info(stream: IncomingStream<'_, MtlsListener>) -> Self {
        stream.io().peer.clone()
    }
}

async fn insert_identity(
    ConnectInfo(peer): ConnectInfo<TlsPeer>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(identity) = &peer.identity {
        req.extensions_mut().insert(PeerIdentity::clone(identity));
    }
    next.run(req).await
}

/// Serve `router` over `listener`: every request carries the peer's
/// [`PeerIdentity`] in its extensions and passes `policy` before any handler
/// (including the 404 fallback). Returns after `shutdown` resolves and the
/// open connections have finished their requests.
pub async fn serve_router<P: AccessPolicy>(
    listener: MtlsListener,
    router: Router,
    policy: P,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = authz::enforce(router, policy).layer(axum::middleware::from_fn(insert_identity));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<TlsPeer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Resolves on SIGTERM or SIGINT: the graceful-shutdown trigger of every
/// decnet daemon.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}
