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
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
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
///
/// Connection tasks format their batches themselves (in parallel) and hand
/// the bytes to one writer thread, which appends them with plain blocking
/// writes and flushes whenever its queue runs empty (group commit): a batch
/// is on its way to disk before the next read of an idle peer, and a busy
/// listener does not pay a flush per batch. The queue is bounded, so a slow
/// disk slows the readers down instead of growing memory.
pub struct LogSink {
    tx: tokio::sync::mpsc::Sender<Formatted>,
    writer: std::thread::JoinHandle<std::io::Result<()>>,
    paths: (PathBuf, PathBuf),
}

/// One formatted batch: raw lines and JSON lines.
struct Formatted {
    raw: Vec<u8>,
    json: Vec<u8>,
}

/// Who sent a message, as credited.
#[derive(Clone, Debug)]
pub struct Credit {
    /// Peer CN (`loopback` for plain TCP on loopback).
    pub cn: String,
    /// Peer certificate fingerprint.
    pub fingerprint: Option<String>,
}

/// The JSON record of one message (borrowing from the frame).
#[derive(serde::Serialize)]
struct Record<'a> {
    received_at: &'a str,
    peer_cn: &'a str,
    peer_fingerprint: Option<&'a str>,
    claimed_hostname: Option<&'a str>,
    app_name: Option<&'a str>,
    procid: Option<&'a str>,
    msgid: Option<&'a str>,
    severity: Option<u8>,
    facility: Option<u8>,
    timestamp: Option<&'a str>,
    structured_data: &'a syslog::StructuredData<'a>,
    msg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
}

static EMPTY_SD: syslog::StructuredData<'static> = syslog::StructuredData(Vec::new());

/// The writer has stopped (a write failed); the listener cannot continue.
#[derive(Debug, thiserror::Error)]
#[error("the log writer stopped")]
pub struct SinkClosed;

impl LogSink {
    /// Open (append, create 0640) both files and start the writer thread.
    pub async fn open(raw: &Path, json: &Path) -> std::io::Result<LogSink> {
        fn open(p: &Path) -> std::io::Result<std::fs::File> {
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(parent) = p.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(p)
        }
        let raw_file = open(raw)?;
        let json_file = open(json)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Formatted>(256);
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                use std::io::Write;
                let mut raw = std::io::BufWriter::with_capacity(256 * 1024, raw_file);
                let mut json = std::io::BufWriter::with_capacity(256 * 1024, json_file);
                while let Some(first) = rx.blocking_recv() {
                    raw.write_all(&first.raw)?;
                    json.write_all(&first.json)?;
                    while let Ok(more) = rx.try_recv() {
                        raw.write_all(&more.raw)?;
                        json.write_all(&more.json)?;
                    }
                    raw.flush()?;
                    json.flush()?;
                }
                raw.flush()?;
                json.flush()?;
                raw.get_ref().sync_all()?;
                json.get_ref().sync_all()
            })?;
        Ok(LogSink {
            tx,
            writer,
            paths: (raw.to_path_buf(), json.to_path_buf()),
        })
    }

    /// A handle connection tasks use to submit batches.
    pub fn handle(&self) -> SinkHandle {
        SinkHandle {
            tx: self.tx.clone(),
        }
    }

    /// Write everything queued, flush and fsync, and stop the writer.
    pub async fn close(self) -> std::io::Result<()> {
        drop(self.tx);
        let writer = self.writer;
        tokio::task::spawn_blocking(move || writer.join())
            .await
            .map_err(std::io::Error::other)?
            .map_err(|_| std::io::Error::other("log writer panicked"))?
    }

    /// The file paths (raw, json).
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.paths.0, &self.paths.1)
    }
}

/// A connection's way into the [`LogSink`].
#[derive(Clone)]
pub struct SinkHandle {
    tx: tokio::sync::mpsc::Sender<Formatted>,
}

impl SinkHandle {
    /// Resolves when the writer has stopped (it only stops on an IO error
    /// while the listener runs).
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Format a batch of frames from one peer and queue it for writing.
    pub async fn write_batch(
        &self,
        credit: &Credit,
        arena: &[u8],
        frames: &[std::ops::Range<usize>],
    ) -> Result<(), SinkClosed> {
        let batch = format_batch(credit, arena, frames);
        self.tx.send(batch).await.map_err(|_| SinkClosed)
    }
}

fn format_batch(credit: &Credit, arena: &[u8], frames: &[std::ops::Range<usize>]) -> Formatted {
    let received_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut raw = Vec::with_capacity(arena.len() + frames.len());
    let mut json = Vec::with_capacity(raw.capacity() * 2 + 256 * frames.len());
    for range in frames {
        let f = &arena[range.clone()];
        // Senders that frame newline-terminated lines (rsyslog's templates)
        // leave the newline inside the frame.
        let f = f.strip_suffix(b"\n").unwrap_or(f);
        let f = f.strip_suffix(b"\r").unwrap_or(f);
        for &b in f {
            match b {
                b'\n' => raw.extend_from_slice(b"\\n"),
                b'\r' => raw.extend_from_slice(b"\\r"),
                b => raw.push(b),
            }
        }
        raw.push(b'\n');
        let parsed = syslog::parse(f);
        let lossy;
        let record = match &parsed {
            Some(m) => Record {
                received_at: &received_at,
                peer_cn: &credit.cn,
                peer_fingerprint: credit.fingerprint.as_deref(),
                claimed_hostname: m.hostname,
                app_name: m.app_name,
                procid: m.procid,
                msgid: m.msgid,
                severity: Some(m.severity),
                facility: Some(m.facility),
                timestamp: m.timestamp,
                structured_data: &m.structured_data,
                msg: &m.msg,
                format: None,
            },
            None => Record {
                received_at: &received_at,
                peer_cn: &credit.cn,
                peer_fingerprint: credit.fingerprint.as_deref(),
                claimed_hostname: None,
                app_name: None,
                procid: None,
                msgid: None,
                severity: None,
                facility: None,
                timestamp: None,
                structured_data: &EMPTY_SD,
                msg: {
                    lossy = String::from_utf8_lossy(f);
                    &lossy
                },
                format: Some("not-rfc5424"),
            },
        };
        // Serializing plain strings and numbers cannot fail.
        let _ = serde_json::to_writer(&mut json, &record);
        json.push(b'\n');
    }
    Formatted { raw, json }
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
    let sink_handle = sink.handle();
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut conns = JoinSet::new();
    let mut source = source;
    loop {
        let (stream, credit, remote): (Box<dyn AsyncRead + Send + Unpin>, _, _) = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            // The writer stopped on an IO error: stop too, and report it.
            _ = sink_handle.closed() => break,
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
        let sink = sink_handle.clone();
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
    drop(sink_handle);
    sink.close().await
}

type Accepted = (
    Box<dyn AsyncRead + Send + Unpin>,
    Option<(Credit, PeerIdentity)>,
    SocketAddr,
);

async fn accept(source: &mut Source) -> Option<Accepted> {
    match source {
        Source::Tls(l) => loop {
            let s = l.next().await?;
            let peer = s.peer().clone();
            // The listener's TLS config requires client certificates.
            let Some(identity) = peer.identity.as_deref().cloned() else {
                continue;
            };
            let credit = Credit {
                cn: identity.cn.clone(),
                fingerprint: Some(identity.fingerprint.to_hex()),
            };
            return Some((Box::new(s), Some((credit, identity)), peer.remote));
        },
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
    sink: SinkHandle,
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
            // Nothing can be written any more: close, so the peer resends later.
            _ = sink.closed() => break,
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
        let mut arena = Vec::with_capacity(n);
        let mut frames = Vec::new();
        let mut bad = None;
        loop {
            match decoder.next_frame_into(&mut arena) {
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
            if let Err(e) = sink.write_batch(credit, &arena, &frames).await {
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
