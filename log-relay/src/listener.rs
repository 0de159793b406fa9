//! The master-side syslog listener: RFC 5425 over mTLS (plain TCP on
//! loopback only), every message credited to the peer certificate's CN.
//!
//! Each connection runs in its own task with an idle timeout and a bounded
//! buffer (one maximum frame); a malformed or oversized frame closes only
//! that connection. Decoded messages go, a batch per read, to one
//! [`LogSink`] that appends the raw line and a JSON record and flushes. On
//! shutdown the listener stops accepting, drains what each peer already sent,
//! writes it, and syncs the files.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use decnet_pki::{MtlsListener, PeerIdentity, RoleKind};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinSet;

use crate::frame::{DEFAULT_MAX_FRAME, FrameDecoder};
use crate::syslog;

/// The boxed future of [`PeerGate::admit`].
pub type GateFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Decides, after the handshake, whether a verified peer may send logs.
pub trait PeerGate: Send + Sync + 'static {
    /// `Err(reason)` refuses the connection (logged; nothing is written).
    fn admit<'a>(&'a self, peer: &'a PeerIdentity) -> GateFuture<'a>;
}

/// Admits role Agent only (no fleet database).
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentsOnly;

impl PeerGate for AgentsOnly {
    fn admit<'a>(&'a self, peer: &'a PeerIdentity) -> GateFuture<'a> {
        Box::pin(async move { agent_role(peer) })
    }
}

/// The role half of every gate: only agents ship logs.
pub fn agent_role(peer: &PeerIdentity) -> Result<(), String> {
    if peer.role.kind() == RoleKind::Agent {
        Ok(())
    } else {
        Err(format!(
            "role {} may not send logs (agents only)",
            peer.role.kind()
        ))
    }
}

/// Limits and timeouts of the listener.
#[derive(Clone, Debug)]
pub struct ListenerOptions {
    /// Largest accepted frame.
    pub max_frame: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// At most this many connections at once; more are closed at once.
    pub max_connections: usize,
    /// On shutdown, how long to keep draining a peer that keeps sending.
    pub drain_timeout: Duration,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Duration::from_secs(600),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Where received messages go: the raw log and the JSON log.
pub struct LogSink {
    raw: tokio::fs::File,
    json: tokio::fs::File,
    paths: (PathBuf, PathBuf),
}

/// Who sent a message, as credited.
#[derive(Clone, Debug)]
pub struct Credit {
    /// Peer CN (`loopback` for plain TCP on loopback).
    pub cn: String,
    /// Peer certificate fingerprint.
    pub fingerprint: Option<String>,
}

impl LogSink {
    /// Open (append, create 0640) both files.
    pub async fn open(raw: &Path, json: &Path) -> std::io::Result<LogSink> {
        async fn open(p: &Path) -> std::io::Result<tokio::fs::File> {
            if let Some(parent) = p.parent()
                && !parent.as_os_str().is_empty()
            {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(p)
                .await
        }
        Ok(LogSink {
            raw: open(raw).await?,
            json: open(json).await?,
            paths: (raw.to_path_buf(), json.to_path_buf()),
        })
    }

    /// Append a batch of frames from one peer and flush.
    pub async fn write_batch(
        &mut self,
        credit: &Credit,
        frames: &[Vec<u8>],
    ) -> std::io::Result<()> {
        let received_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(frames.iter().map(|f| f.len() + 1).sum());
        let mut json = Vec::new();
        for f in frames {
            for &b in f {
                match b {
                    b'\n' => raw.extend_from_slice(b"\\n"),
                    b'\r' => raw.extend_from_slice(b"\\r"),
                    b => raw.push(b),
                }
            }
            raw.push(b'\n');
            let record = match syslog::parse(f) {
                Some(m) => {
                    let sd: serde_json::Map<String, serde_json::Value> = m
                        .structured_data
                        .iter()
                        .map(|e| {
                            let params: serde_json::Map<String, serde_json::Value> = e
                                .params
                                .iter()
                                .map(|(k, v)| (k.clone(), json!(v)))
                                .collect();
                            (e.id.clone(), serde_json::Value::Object(params))
                        })
                        .collect();
                    json!({
                        "received_at": received_at,
                        "peer_cn": credit.cn,
                        "peer_fingerprint": credit.fingerprint,
                        "claimed_hostname": m.hostname,
                        "app_name": m.app_name,
                        "procid": m.procid,
                        "msgid": m.msgid,
                        "severity": m.severity,
                        "facility": m.facility,
                        "timestamp": m.timestamp,
                        "structured_data": sd,
                        "msg": m.msg,
                    })
                }
                None => json!({
                    "received_at": received_at,
                    "peer_cn": credit.cn,
                    "peer_fingerprint": credit.fingerprint,
                    "claimed_hostname": null,
                    "app_name": null,
                    "procid": null,
                    "msgid": null,
                    "severity": null,
                    "facility": null,
                    "timestamp": null,
                    "structured_data": {},
                    "msg": String::from_utf8_lossy(f),
                    "format": "not-rfc5424",
                }),
            };
            serde_json::to_writer(&mut json, &record).map_err(std::io::Error::other)?;
            json.push(b'\n');
        }
        self.raw.write_all(&raw).await?;
        self.json.write_all(&json).await?;
        self.raw.flush().await?;
        self.json.flush().await
    }

    /// Flush and fsync both files (shutdown).
    pub async fn sync(&mut self) -> std::io::Result<()> {
        self.raw.flush().await?;
        self.json.flush().await?;
        self.raw.sync_all().await?;
        self.json.sync_all().await
    }

    /// The file paths (raw, json).
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.paths.0, &self.paths.1)
    }
}

/// Where connections come from.
pub enum Source {
    /// mTLS connections (the normal case).
    Tls(MtlsListener),
    /// Plain TCP; only ever bound on loopback.
    Plain(TcpListener),
}

/// Plain text on a non-loopback address.
#[derive(Debug, thiserror::Error)]
#[error("refusing plain-text syslog on {0}: plain text is allowed on loopback only (use TLS)")]
pub struct PlaintextRefused(pub SocketAddr);

impl Source {
    /// Bind plain TCP, refusing any non-loopback address.
    pub async fn bind_plain(
        addr: SocketAddr,
    ) -> Result<Source, Box<dyn std::error::Error + Send + Sync>> {
        if !addr.ip().is_loopback() {
            return Err(Box::new(PlaintextRefused(addr)));
        }
        Ok(Source::Plain(TcpListener::bind(addr).await?))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Source::Tls(l) => l.local_addr(),
            Source::Plain(l) => l
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    }
}

/// Run the listener until `shutdown` flips to `true`; then drain and sync.
pub async fn serve(
    source: Source,
    gate: Arc<dyn PeerGate>,
    sink: LogSink,
    options: ListenerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let sink = Arc::new(Mutex::new(sink));
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut conns = JoinSet::new();
    let mut source = source;
    loop {
        let (stream, credit, remote): (Box<dyn AsyncRead + Send + Unpin>, _, _) = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = accept(&mut source) => match accepted {
                Some(a) => a,
                None => break,
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "too many log connections; closing the new one");
            continue;
        };
        let gate = gate.clone();
        let sink = sink.clone();
        let opts = options.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let (credit, identity) = match credit {
                Some((credit, identity)) => {
                    if let Err(reason) = gate.admit(&identity).await {
                        tracing::warn!(%remote, peer_cn = %identity.cn, peer_fingerprint = %identity.fingerprint, %reason, "log peer refused");
                        return;
                    }
                    (credit, Some(identity))
                }
                None => (
                    Credit {
                        cn: "loopback".into(),
                        fingerprint: None,
                    },
                    None,
                ),
            };
            tracing::info!(%remote, peer_cn = %credit.cn, "log peer connected");
            let recheck = identity.map(|i| (gate, i));
            handle(stream, &credit, recheck, sink, &opts, shutdown).await;
            drop(permit);
        });
    }
    // Stop accepting; let every connection drain what it already received.
    drop(source);
    while conns.join_next().await.is_some() {}
    sink.lock().await.sync().await
}

type Accepted = (
    Box<dyn AsyncRead + Send + Unpin>,
    Option<(Credit, PeerIdentity)>,
    SocketAddr,
);

async fn accept(source: &mut Source) -> Option<Accepted> {
    match source {
        Source::Tls(l) => {
            let s = l.next().await?;
            let peer = s.peer().clone();
            let identity = PeerIdentity::clone(&peer.identity);
            let credit = Credit {
                cn: identity.cn.clone(),
                fingerprint: Some(identity.fingerprint.to_hex()),
            };
            Some((Box::new(s), Some((credit, identity)), peer.remote))
        }
        Source::Plain(l) => loop {
            match l.accept().await {
                Ok((s, remote)) => return Some((Box::new(s), None, remote)),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        },
    }
}

/// How often an open connection's peer is checked against the gate again
/// (so a revocation also ends connections that are already open).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(15);

async fn handle(
    mut stream: Box<dyn AsyncRead + Send + Unpin>,
    credit: &Credit,
    recheck: Option<(Arc<dyn PeerGate>, PeerIdentity)>,
    sink: Arc<Mutex<LogSink>>,
    opts: &ListenerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut decoder = FrameDecoder::new(opts.max_frame);
    let mut buf = vec![0u8; 16 * 1024];
    let mut draining: Option<tokio::time::Instant> = None;
    let mut received = 0u64;
    let mut next_check = tokio::time::Instant::now() + RECHECK_INTERVAL;
    loop {
        // While draining, a short silence means the peer has nothing more in flight.
        let wait = match draining {
            Some(_) => Duration::from_millis(300),
            None => opts.idle_timeout,
        };
        let read = tokio::select! {
            r = tokio::time::timeout(wait, stream.read(&mut buf)) => r,
            _ = shutdown.wait_for(|s| *s), if draining.is_none() => {
                draining = Some(tokio::time::Instant::now() + opts.drain_timeout);
                continue;
            }
        };
        let n = match read {
            Err(_) if draining.is_some() => break,
            Err(_) => {
                tracing::info!(peer_cn = %credit.cn, "log peer idle; closing");
                break;
            }
            Ok(Err(e)) => {
                tracing::info!(peer_cn = %credit.cn, error = %e, "log connection failed");
                break;
            }
            Ok(Ok(0)) => {
                if let Err(e) = decoder.finish() {
                    tracing::warn!(peer_cn = %credit.cn, error = %e, "log peer disconnected mid-frame");
                }
                break;
            }
            Ok(Ok(n)) => n,
        };
        if let Some((gate, identity)) = &recheck
            && tokio::time::Instant::now() >= next_check
        {
            next_check = tokio::time::Instant::now() + RECHECK_INTERVAL;
            if let Err(reason) = gate.admit(identity).await {
                tracing::warn!(peer_cn = %credit.cn, %reason, "log peer no longer admitted; closing");
                break;
            }
        }
        decoder.feed(&buf[..n]);
        let mut frames = Vec::new();
        let mut bad = None;
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        if !frames.is_empty() {
            received += frames.len() as u64;
            if let Err(e) = sink.lock().await.write_batch(credit, &frames).await {
                tracing::error!(error = %e, "cannot write received logs");
                break;
            }
        }
        if let Some(e) = bad {
            tracing::warn!(peer_cn = %credit.cn, error = %e, "malformed syslog stream; closing this connection");
            break;
        }
        if draining.is_some_and(|d| tokio::time::Instant::now() > d) {
            break;
        }
    }
    tracing::info!(peer_cn = %credit.cn, messages = received, "log peer disconnected");
}
