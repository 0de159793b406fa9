//! The server runner: bind, accept, TLS handshake, admission, hand-over to a
//! protocol handler, graceful shutdown.
//!
//! Accept never waits: each accepted socket is admitted (or refused and
//! closed at once) by the [`Admission`] counters, then its handshake runs in
//! its own task under a short timeout. After the handshake the peer's
//! verified [`PeerIdentity`] is read once and the connection is counted
//! against its certificate (or, anonymous, against its source). The protocol
//! part — HTTP ([`crate::http`]) or syslog framing — only implements
//! [`ConnectionHandler`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use decnet_pki::{ClientAuth, MaterialSource, PeerIdentity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::limits::ServerLimits;
use crate::read_ahead::ReadAhead;
use crate::refusal_log::RefusalLog;
use crate::source::SourceKey;

/// How connections are secured.
#[derive(Clone, Debug)]
pub enum Transport {
    /// mTLS with the daemon's live material (certificate and CRL reload
    /// without a restart: each handshake uses the material in force).
    Tls {
        /// The daemon's TLS material.
        material: MaterialSource,
        /// Whether clients must present a certificate.
        auth: ClientAuth,
    },
    /// Plain TCP: loopback addresses only (refused elsewhere at bind).
    Plain,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Plain text was asked for on a non-loopback address.
    #[error("refusing plain text on {0}: plain text is allowed on loopback only (use TLS)")]
    PlaintextRefused(SocketAddr),
    /// An inherited socket cannot be used (see [`crate::activation`]).
    #[error(transparent)]
    Inherited(crate::activation::ActivationError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The remote end of a connection: its address and verified identity, and
/// the server it reached (one value, so a request carries the three in one
/// extension).
#[derive(Clone, Debug)]
pub struct TlsPeer {
    /// Remote socket address.
    pub remote: SocketAddr,
    /// The verified identity; `None` for anonymous peers (only on servers
    /// that admit them) and for plain TCP.
    pub identity: Option<Arc<PeerIdentity>>,
    /// The server's name (`agent`, `listener`, ...), for logs and metrics.
    pub server: &'static str,
}

impl TlsPeer {
    /// The peer of a request, as the serving layer put it into the
    /// request's extensions (`ConnectInfo<TlsPeer>`: one extension carries
    /// the address, the identity and the server, because every extension
    /// a request carries is an allocation on the hottest path, issue #31).
    pub fn of(extensions: &axum::http::Extensions) -> Option<&TlsPeer> {
        extensions
            .get::<axum::extract::ConnectInfo<TlsPeer>>()
            .map(|c| &c.0)
    }

    /// The verified identity of a request's peer; `None` for an anonymous
    /// peer (or a request no serving layer handled).
    pub fn identity_of(extensions: &axum::http::Extensions) -> Option<&Arc<PeerIdentity>> {
        Self::of(extensions).and_then(|p| p.identity.as_ref())
    }
}

/// The byte stream of an accepted connection.
pub enum ServerIo {
    /// After a TLS handshake.
    Tls(Box<TlsStream<ReadAhead<TcpStream>>>),
    /// Plain TCP (loopback only).
    Plain(TcpStream),
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ServerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ServerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ServerIo::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ServerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            ServerIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Tls(s) => s.is_write_vectored(),
            ServerIo::Plain(s) => s.is_write_vectored(),
        }
    }
}

/// An admitted, handshaken connection handed to a [`ConnectionHandler`].
pub struct Connection {
    /// The byte stream.
    pub io: ServerIo,
    /// Who is on the other end.
    pub peer: TlsPeer,
    /// When the connection must end: its lifetime limit or its certificate's
    /// expiry, whichever comes first.
    pub deadline: Option<tokio::time::Instant>,
}

/// The protocol half of a server: serves one connection until it ends, the
/// deadline passes, or `stop` is cancelled (then it should finish what is in
/// flight and return; the runner cuts it after the shutdown grace).
pub trait ConnectionHandler: Send + Sync + 'static {
    /// Serve `conn`.
    fn handle(
        self: Arc<Self>,
        conn: Connection,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// A bound server, ready to [`serve`](Server::serve).
pub struct Server {
    tcp: TcpListener,
    local_addr: SocketAddr,
    transport: Transport,
    limits: ServerLimits,
    admission: Arc<Admission>,
    name: &'static str,
}

impl Server {
    /// Bind `addr`. `name` labels this server's log lines (`agent`, `listener`, …).
    pub async fn bind(
        name: &'static str,
        addr: SocketAddr,
        transport: Transport,
        limits: ServerLimits,
    ) -> Result<Server, ServerError> {
        if matches!(transport, Transport::Plain) && !addr.ip().is_loopback() {
            return Err(ServerError::PlaintextRefused(addr));
        }
        let (std_listener, origin) =
            crate::activation::listener(name, addr).map_err(|e| match e {
                crate::activation::ActivationError::Bind { addr, source } => {
                    ServerError::Bind { addr, source }
                }
                other => ServerError::Inherited(other),
            })?;
        let tcp = TcpListener::from_std(std_listener)
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = tcp
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        if origin == crate::activation::Origin::Inherited {
            tracing::info!(server = name, addr = %local_addr, "serving on a socket handed in (held across restarts)");
        }
        let (limits, lowered) = limits.fit_descriptors(crate::descriptors::connection_budget());
        if !lowered.is_empty() {
            tracing::warn!(
                server = name,
                budget = crate::descriptors::connection_budget(),
                lowered = %lowered.join(", "),
                "connection caps lowered to fit the open-file limit"
            );
        }
        Ok(Server {
            tcp,
            local_addr,
            transport,
            admission: Admission::new(limits.clone()),
            limits,
            name,
        })
    }

    /// A copy of the listening socket that survives an exec, for handing it
    /// to a successor ([`crate::activation::held_env`]): the port is never
    /// free while the daemon re-executes itself.
    pub fn inheritable_listener(&self) -> io::Result<std::os::fd::OwnedFd> {
        crate::activation::inheritable(&self.tcp)
    }

    /// The bound address (after port 0 resolution).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admission counters (open connections, pending handshakes).
    pub fn admission(&self) -> Arc<Admission> {
        self.admission.clone()
    }

    /// Serve connections with `handler` until `shutdown` resolves; then stop
    /// accepting, let open connections finish for the shutdown grace, and
    /// cut the rest.
    pub async fn serve<H: ConnectionHandler>(
        self,
        handler: Arc<H>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let Server {
            tcp,
            transport,
            limits,
            admission,
            name,
            ..
        } = self;
        let stop = CancellationToken::new();
        let refusals = Arc::new(RefusalLog::new(name));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = tcp.accept() => match accepted {
                    Ok((sock, remote)) => {
                        let slot = match admission.open(SourceKey::of(remote.ip()), spoke_probe(&sock)) {
                            // An evicted handshake reports itself
                            // (`decnet_handshake_failures_total{reason="evicted"}`).
                            Ok(admitted) => admitted.slot,
                            Err(why) => {
                                refusals.refused(why, remote);
                                continue;
                            }
                        };
                        conns.spawn(connection(
                            name,
                            sock,
                            remote,
                            slot,
                            transport.clone(),
                            limits.clone(),
                            handler.clone(),
                            refusals.clone(),
                            stop.clone(),
                        ));
                        // Let the new connection read its ClientHello before
                        // the next accept: under a flood of silent sockets a
                        // peer that speaks TLS must be seen speaking before
                        // it is the oldest silent handshake of its source.
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning,
                        // and say so at a bounded rate.
                        refusals.accept_failed(&e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(tcp);
        stop.cancel();
        let drained = tokio::time::timeout(limits.shutdown_grace, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                server = name,
                open = conns.len(),
                "connections still open after the shutdown grace; closing them"
            );
            conns.shutdown().await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection<H: ConnectionHandler>(
    name: &'static str,
    sock: TcpStream,
    remote: SocketAddr,
    mut slot: crate::admission::Slot,
    transport: Transport,
    limits: ServerLimits,
    handler: Arc<H>,
    refusals: Arc<RefusalLog>,
    stop: CancellationToken,
) {
    let _ = sock.set_nodelay(true);
    let evicted = slot.eviction();
    let (io, identity, material) = match transport {
        Transport::Plain => (ServerIo::Plain(sock), None, None),
        Transport::Tls { material, auth } => {
            let started = tokio::time::Instant::now();
            // A peer that speaks TLS sends its ClientHello at once; a silent
            // one is closed after `client_hello_timeout` (or evicted sooner
            // by a newcomer from a crowded source).
            let lazy = tokio_rustls::LazyConfigAcceptor::new(
                rustls::server::Acceptor::default(),
                ReadAhead::new(sock),
            );
            let hello = tokio::select! {
                r = tokio::time::timeout(limits.client_hello_timeout.min(limits.handshake_timeout), lazy) => r,
                _ = evicted.cancelled() => {
                    refusals.handshake_failed("evicted", remote, None);
                    return;
                }
                _ = stop.cancelled() => return,
            };
            let start = match hello {
                Err(_) => {
                    refusals.handshake_failed("no_client_hello", remote, None);
                    return;
                }
                Ok(Err(e)) => {
                    refusals.handshake_failed(crate::refusal_log::reason_of(&e), remote, Some(&e));
                    return;
                }
                Ok(Ok(start)) => start,
            };
            slot.hello_received();
            let left = limits.handshake_timeout.saturating_sub(started.elapsed());
            let config = material.current().server_config(auth);
            let handshake = tokio::select! {
                r = tokio::time::timeout(left, start.into_stream(config)) => r,
                _ = evicted.cancelled() => {
                    refusals.handshake_failed("evicted", remote, None);
                    return;
                }
                _ = stop.cancelled() => return,
            };
            slot.handshake_done();
            let stream = match handshake {
                Err(_) => {
                    refusals.handshake_failed("timeout", remote, None);
                    return;
                }
                Ok(Err(e)) => {
                    refusals.handshake_failed(crate::refusal_log::reason_of(&e), remote, Some(&e));
                    return;
                }
                Ok(Ok(s)) => s,
            };
            let kind = match stream.get_ref().1.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => "resumed",
                _ => "full",
            };
            crate::metrics::server_metrics()
                .handshakes
                .get_or_create(&crate::metrics::HandshakeLabels {
                    server: name.to_string(),
                    kind: kind.to_string(),
                })
                .inc();
            let identity = match stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            {
                Some(der) => match PeerIdentity::from_der(der) {
                    Ok(id) => Some(Arc::new(id)),
                    Err(e) => {
                        refusals.handshake_failed("no_role", remote, Some(&e));
                        return;
                    }
                },
                None if auth != ClientAuth::Required => None,
                None => {
                    refusals.handshake_failed("no_certificate", remote, None);
                    return;
                }
            };
            (ServerIo::Tls(Box::new(stream)), identity, Some(material))
        }
    };
    if let Err(why) = slot.bind(identity.as_ref().map(|i| &i.fingerprint)) {
        refusals.refused_peer(why, remote, identity.as_deref());
        return;
    }
    let _open = crate::metrics::OpenConnection::new(name);
    let now = tokio::time::Instant::now();
    let mut deadline = limits.max_connection_lifetime.map(|l| now + l);
    if let Some(id) = &identity {
        let left = (id.not_after - time_now()).whole_milliseconds().max(0);
        let expiry =
            now + Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX).min(u64::MAX / 4));
        deadline = Some(deadline.map_or(expiry, |d| d.min(expiry)));
    }
    let revoked = match (&identity, material) {
        (Some(id), Some(material)) => {
            // Checked before the first request is read: the handshake used
            // the material as it was when it began.
            let mut changes = material.subscribe();
            if !changes.borrow_and_update().still_admits(id) {
                refusals.revoked_while_open(remote, id);
                return;
            }
            Some(revocation_of(id.clone(), changes))
        }
        _ => None,
    };
    let conn = Connection {
        io,
        peer: TlsPeer {
            remote,
            identity: identity.clone(),
            server: name,
        },
        deadline,
    };
    match revoked {
        // A connection without a certificate may be evicted to make room
        // for a joiner whose network holds no more (see `admission`).
        // It is closed as on a shutdown: the request in flight (a join
        // whose token is already spent) is answered first, within the
        // handler's own bound; an idle connection is closed at once. While
        // as many evicted connections as the anonymous budget are still
        // finishing theirs, one more is cut at once.
        None => {
            let closing = stop.child_token();
            let handled = handler.handle(conn, closing.clone());
            tokio::pin!(handled);
            tokio::select! {
                _ = handled.as_mut() => {}
                _ = evicted.cancelled() => {
                    refusals.refused_peer(crate::admission::Refused::AnonymousEvicted, remote, None);
                    if slot.may_drain() {
                        closing.cancel();
                        handled.await;
                    }
                }
            }
        }
        Some(revoked) => {
            // What a connection waits on besides its peer is its own: a
            // task of its own watches the material for a revocation, and
            // the shutdown reaches it through a child token. The material's
            // watch and the server's token are shared by every connection,
            // and waiting on them with the connection took their locks on
            // every wake-up, every request (cache lines both cores fought
            // over, issue #31).
            let cut = CancellationToken::new();
            let _watch = tokio_util::task::AbortOnDropHandle::new(tokio::spawn({
                // However the watch ends (a revocation, or a panic), the
                // connection ends with it: never served unwatched.
                let cut = cut.clone().drop_guard();
                async move {
                    revoked.await;
                    drop(cut);
                }
            }));
            tokio::select! {
                biased;
                _ = cut.cancelled() => {
                    // Dropping the handler closes the connection at once.
                    if let Some(id) = &identity {
                        refusals.revoked_while_open(remote, id);
                    }
                }
                _ = handler.handle(conn, stop.child_token()) => {}
            }
        }
    }
    drop(slot);
}

/// Whether the peer has already sent its first bytes (without reading them).
fn first_bytes_waiting(sock: impl std::os::fd::AsFd) -> bool {
    use rustix::net::RecvFlags;
    let mut b = [0u8; 1];
    matches!(
        rustix::net::recv(sock, &mut b, RecvFlags::PEEK | RecvFlags::DONTWAIT),
        Ok((n, _)) if n > 0
    )
}

/// A probe admission can ask, until the handshake ends, whether the peer
/// has spoken: it peeks a duplicate of the socket's descriptor (the
/// connection's task may not have run yet).
fn spoke_probe(sock: &TcpStream) -> Option<crate::admission::SpokeProbe> {
    use std::os::fd::AsFd;
    let fd = sock.as_fd().try_clone_to_owned().ok()?;
    Some(Box::new(move || first_bytes_waiting(&fd)))
}

/// Resolves when the material in force no longer admits `peer` — a CRL
/// that revokes it, or a trust set without its CA (a CA rotation's finish
/// or abort), published while its connection is open ends that connection,
/// not only the next handshake. Pending forever once the material source
/// is gone.
async fn revocation_of(
    peer: Arc<PeerIdentity>,
    mut changes: tokio::sync::watch::Receiver<Arc<decnet_pki::TlsMaterial>>,
) {
    loop {
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        if !changes.borrow_and_update().still_admits(&peer) {
            return;
        }
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}
