//! The master-side syslog listener: RFC 5425 over mTLS (plain TCP on
//! loopback only), every message credited to the peer certificate's CN.
//!
//! It is only the protocol half: the `decnet-server` runner owns binding,
//! handshakes, per-source and per-certificate connection caps and shutdown;
//! [`LogListener`] is its [`ConnectionHandler`]. Each connection is admitted
//! by a [`PeerGate`], then read through [`FrameDecoder`] (a buffer that grows
//! on demand up to one maximum frame): an oversized frame is skipped, counted
//! and logged, and the connection goes on; a malformed prefix closes only
//! that connection. Decoded messages go, a batch per read, to one
//! [`LogSink`] that appends the raw line and a JSON record and flushes. On
//! shutdown the listener stops accepting, drains what each peer already sent,
//! writes it, and syncs the files. A connection ends when it is idle too
//! long, when its lifetime or certificate runs out, or when its peer is no
//! longer admitted (revoked).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use std::ops::Range;

use bytes::Buf;
use decnet_pki::{PeerIdentity, RoleKind};
use decnet_server::{Connection, ConnectionHandler, Server};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::budget::{LogBudget, PeerBudgets, PeerCharge};
use crate::disk::{DiskPolicy, FreeSpaceGuard, RotatingFile, SpaceChange};
use crate::frame::{DEFAULT_MAX_FRAME, Found, FrameDecoder, FrameError};
use crate::json_record::{RecordHead, write_record};
use crate::neutralize::{neutralize, neutralize_bytes_into, plain_ascii};
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

/// Limits and timeouts of the listener's protocol half (connection caps
/// and lifetimes are the runner's: see [`listener_limits`]).
#[derive(Clone, Debug)]
pub struct ListenerOptions {
    /// Largest accepted frame; larger ones are skipped.
    pub max_frame: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long to keep draining a peer that keeps sending.
    pub drain_timeout: Duration,
    /// What one host (its certificates' CN) may make the listener write.
    pub budget: LogBudget,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(5),
            budget: LogBudget::default(),
        }
    }
}

/// The runner limits of a log listener: many peers, each allowed only a few
/// connections under its certificate (a forwarder needs one), a bounded
/// lifetime after which a forwarder simply reconnects.
pub fn listener_limits() -> decnet_server::ServerLimits {
    decnet_server::ServerLimits {
        max_connections: 10_000,
        max_connections_per_identity: 4,
        max_connection_lifetime: Some(Duration::from_secs(6 * 3600)),
        ..decnet_server::ServerLimits::default()
    }
}

/// Where received messages go: the raw log and the JSON log.
///
/// Connection tasks format their batches themselves (in parallel) and hand
/// the bytes to one writer thread, which takes everything queued at once,
/// appends it through a buffer and flushes (group commit): a batch is on
/// its way to disk before the next read of an idle peer, and a busy
/// listener does not pay a system call per batch. (Writing the batches
/// straight from their own memory with one vectored write per group was
/// measured slower.) The queue is bounded, so a slow disk slows the
/// readers down instead of growing memory.
pub struct LogSink {
    tx: tokio::sync::mpsc::Sender<Formatted>,
    buffers: Arc<BatchBuffers>,
    writer: std::thread::JoinHandle<std::io::Result<()>>,
    paths: (PathBuf, PathBuf),
}

/// Buffers of formatted batches, handed back by the writer once written:
/// a busy listener formats into the same few buffers over and over instead
/// of allocating a few hundred KiB per batch (which the allocator mapped,
/// the kernel faulted in page by page and the allocator gave back again).
#[derive(Default)]
struct BatchBuffers {
    spare: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept for reuse, at most: the raw and the JSON buffer of a few
/// batches in flight. What a burst made larger than [`KEEP_BUFFER`] is
/// freed, so the listener holds at most a few MiB once it is quiet again.
const KEEP_BUFFERS: usize = 8;

/// The largest buffer kept for reuse.
const KEEP_BUFFER: usize = 1024 * 1024;

impl BatchBuffers {
    /// An empty buffer with room for at least `capacity` bytes.
    fn take(&self, capacity: usize) -> Vec<u8> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match spare {
            Some(mut buf) => {
                buf.reserve(capacity);
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Give `buf` back once its bytes are written.
    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > KEEP_BUFFER {
            return;
        }
        buf.clear();
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < KEEP_BUFFERS {
            spare.push(buf);
        }
    }
}

/// One formatted batch: raw lines and JSON lines.
struct Formatted {
    raw: Vec<u8>,
    json: Vec<u8>,
    /// Whose lines, and how many (counted as written once flushed).
    cn: String,
    lines: u64,
}

/// Who sent a message, as credited.
#[derive(Clone, Debug)]
pub struct Credit {
    /// Peer CN (`loopback` for plain TCP on loopback).
    pub cn: String,
    /// Peer certificate fingerprint.
    pub fingerprint: Option<String>,
}

/// The writer has stopped (a write failed); the listener cannot continue.
#[derive(Debug, thiserror::Error)]
#[error("the log writer stopped")]
pub struct SinkClosed;

impl LogSink {
    /// Open (append, create 0640, never through a symlink) both files and
    /// start the writer thread, which rotates them and keeps the
    /// free-space watermark of `policy`.
    pub async fn open(raw: &Path, json: &Path, policy: DiskPolicy) -> std::io::Result<LogSink> {
        Self::open_tapped(raw, json, policy, None).await
    }

    /// [`LogSink::open`], and every batch written (flushed) is also shown
    /// to `tap` while it [wants](LineTap::wants) lines.
    pub async fn open_tapped(
        raw: &Path,
        json: &Path,
        policy: DiskPolicy,
        tap: Option<Arc<dyn LineTap>>,
    ) -> std::io::Result<LogSink> {
        let mut raw_file = RotatingFile::open(raw, &policy)?;
        let mut json_file = RotatingFile::open(json, &policy)?;
        let mut dirs: Vec<PathBuf> = [raw, json]
            .iter()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.dedup();
        let mut guard = FreeSpaceGuard::new(dirs, policy);
        // At most SINK_QUEUE formatted batches wait (a few MiB): a writer that
        // falls behind slows the readers rather than holding memory.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Formatted>(SINK_QUEUE);
        let buffers = Arc::new(BatchBuffers::default());
        let spent = buffers.clone();
        let writer = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let (raw, json) = (&mut raw_file, &mut json_file);
                let metrics = crate::metrics::listener_metrics();
                let mut group: Vec<Formatted> = Vec::new();
                let mut kept: Vec<Formatted> = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    group.push(first);
                    while let Ok(more) = rx.try_recv() {
                        group.push(more);
                    }
                    for b in group.drain(..) {
                        let bytes = (b.raw.len() + b.json.len()) as u64;
                        let (ok, change) = guard.allow(bytes, std::time::Instant::now());
                        match change {
                            Some(SpaceChange::Paused { free, watermark }) => {
                                metrics.writing_paused.set(1);
                                raw.release_reserved();
                                json.release_reserved();
                                tracing::error!(
                                    free_bytes = free,
                                    watermark_bytes = watermark,
                                    "free space below the watermark: log writing paused (lines are dropped and counted until space is back)"
                                );
                            }
                            Some(SpaceChange::Resumed { free }) => {
                                metrics.writing_paused.set(0);
                                tracing::warn!(free_bytes = free, "free space is back: log writing resumed");
                            }
                            None => {}
                        }
                        if ok {
                            kept.push(b);
                        } else {
                            metrics.dropped(&b.cn, "disk", b.lines, bytes);
                            spent.give(b.raw);
                            spent.give(b.json);
                        }
                    }
                    for b in &kept {
                        raw.write_all(&b.raw)?;
                        json.write_all(&b.json)?;
                    }
                    raw.flush()?;
                    json.flush()?;
                    let tapping = tap.as_ref().filter(|t| t.wants());
                    for b in kept.drain(..) {
                        metrics.written(&b.cn, b.lines, b.raw.len() as u64);
                        if let Some(t) = tapping {
                            t.lines(&b.cn, &b.json);
                        }
                        spent.give(b.raw);
                        spent.give(b.json);
                    }
                }
                raw.sync()?;
                json.sync()
            })?;
        Ok(LogSink {
            tx,
            buffers,
            writer,
            paths: (raw.to_path_buf(), json.to_path_buf()),
        })
    }

    /// A handle connection tasks use to submit batches.
    pub fn handle(&self) -> SinkHandle {
        SinkHandle {
            tx: self.tx.clone(),
            buffers: self.buffers.clone(),
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

/// Sees the lines the sink has written (the master's event bus shows
/// them to those following a host's log).
pub trait LineTap: Send + Sync + 'static {
    /// Whether lines are wanted now (when not, none are kept for it).
    fn wants(&self) -> bool;
    /// Lines of peer `cn` just written: JSON records, one per line.
    fn lines(&self, cn: &str, json: &[u8]);
}

/// A connection's way into the [`LogSink`].
#[derive(Clone)]
pub struct SinkHandle {
    tx: tokio::sync::mpsc::Sender<Formatted>,
    buffers: Arc<BatchBuffers>,
}

impl SinkHandle {
    /// Resolves when the writer has stopped (it only stops on an IO error
    /// while the listener runs).
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Format a batch of frames from one peer (ranges of `read`, the
    /// connection's buffer) and queue it for writing; every line is first
    /// charged to the peer's budget (what does not fit is dropped). Returns the
    /// lines and bytes dropped.
    pub async fn write_batch(
        &self,
        credit: &Credit,
        read: &[u8],
        frames: &[Range<usize>],
        budget: &PeerCharge,
    ) -> Result<(u64, u64), SinkClosed> {
        let now = std::time::Instant::now();
        let mut dropped = (0, 0);
        // Batches of at most about SINK_BATCH received bytes, so the
        // writer's free-space check is never asked about a huge write.
        let mut rest = frames;
        while !rest.is_empty() {
            let mut n = 0;
            let mut size = 0;
            while n < rest.len() && (n == 0 || size + rest[n].len() <= SINK_BATCH) {
                size += rest[n].len();
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let (batch, d) = format_batch(credit, read, chunk, &self.buffers, &mut |cost| {
                budget.admit(cost, now)
            });
            dropped.0 += d.0;
            dropped.1 += d.1;
            if batch.lines > 0 {
                self.tx.send(batch).await.map_err(|_| SinkClosed)?;
            } else {
                self.buffers.give(batch.raw);
                self.buffers.give(batch.json);
            }
        }
        Ok(dropped)
    }
}

/// Every raw line starts with who sent it: `<cn> <fingerprint prefix> `.
fn raw_prefix(credit: &Credit) -> Vec<u8> {
    let fp = credit
        .fingerprint
        .as_deref()
        .map(|f| &f[..f.len().min(16)])
        .unwrap_or("-");
    format!("{} {fp} ", credit.cn).into_bytes()
}

/// Received bytes formatted into one batch for the writer, at most (one
/// frame larger than this is a batch of its own).
const SINK_BATCH: usize = 256 * 1024;

/// Formatted batches waiting for the writer, at most. With 256 the queue
/// held over 100 MiB when formatting outran the disk (measured after
/// formatting got faster), memory the allocator then kept.
const SINK_QUEUE: usize = 32;

/// The longest escaped form of one message (raw line or JSON `msg`):
/// escaping can multiply control bytes several times; past this the line
/// is cut and marked.
pub const MAX_ESCAPED: usize = 128 * 1024;

/// The mark of a cut line.
const CUT_MARK: &str = "…[cut]";

/// Cut `buf[start..]` to [`MAX_ESCAPED`] bytes at a character boundary.
fn cap_escaped(buf: &mut Vec<u8>, start: usize) {
    if buf.len() - start <= MAX_ESCAPED {
        return;
    }
    let mut end = start + MAX_ESCAPED;
    while end > start && (buf[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    buf.truncate(end);
    buf.extend_from_slice(CUT_MARK.as_bytes());
}

fn cap_str(s: std::borrow::Cow<'_, str>) -> std::borrow::Cow<'_, str> {
    if s.len() <= MAX_ESCAPED {
        return s;
    }
    let mut end = MAX_ESCAPED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{CUT_MARK}", &s[..end]))
}

/// Format `frames` (ranges of `read`); each line's cost (raw and JSON
/// bytes) is offered to `admit` and the line dropped when refused.
/// Returns the batch and the (lines, bytes) dropped.
fn format_batch(
    credit: &Credit,
    read: &[u8],
    frames: &[Range<usize>],
    buffers: &BatchBuffers,
    admit: &mut dyn FnMut(u64) -> bool,
) -> (Formatted, (u64, u64)) {
    let received_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let prefix = raw_prefix(credit);
    let head = RecordHead::new(&received_at, &credit.cn, credit.fingerprint.as_deref());
    let total: usize = frames.iter().map(|f| f.len()).sum();
    let mut raw = buffers.take(total + frames.len() * (prefix.len() + 1));
    let mut json = buffers.take(total * 2 + 256 * frames.len());
    let (mut lines, mut dropped, mut dropped_bytes) = (0u64, 0u64, 0u64);
    // One structured-data list for the batch, reused line after line.
    let mut spare = syslog::StructuredData::default();
    for f in frames {
        let (raw_at, json_at) = (raw.len(), json.len());
        let f = &read[f.clone()];
        // Senders that frame newline-terminated lines (rsyslog's templates)
        // leave the newline inside the frame.
        let f = f.strip_suffix(b"\n").unwrap_or(f);
        let f = f.strip_suffix(b"\r").unwrap_or(f);
        // Printable ASCII (most lines) has nothing to escape, in the raw
        // line or in any part of it.
        let plain = plain_ascii(f);
        raw.extend_from_slice(&prefix);
        let line_at = raw.len();
        if plain {
            raw.extend_from_slice(f);
        } else {
            neutralize_bytes_into(f, &mut raw);
        }
        cap_escaped(&mut raw, line_at);
        raw.push(b'\n');
        match syslog::parse_reusing(f, std::mem::take(&mut spare)) {
            Some(mut m) => {
                let msg = if plain {
                    std::borrow::Cow::Borrowed(&*m.msg)
                } else {
                    neutralize_sd_values(&mut m.structured_data);
                    neutralize(&m.msg)
                };
                write_record(&mut json, &head, Some(&m), &cap_str(msg));
                spare = m.structured_data.recycle();
            }
            None => {
                let lossy = String::from_utf8_lossy(f);
                write_record(&mut json, &head, None, &cap_str(neutralize(&lossy)));
            }
        }
        json.push(b'\n');
        let cost = (raw.len() - raw_at + json.len() - json_at) as u64;
        if admit(cost) {
            lines += 1;
        } else {
            raw.truncate(raw_at);
            json.truncate(json_at);
            dropped += 1;
            dropped_bytes += cost;
        }
    }
    (
        Formatted {
            raw,
            json,
            cn: credit.cn.clone(),
            lines,
        },
        (dropped, dropped_bytes),
    )
}

/// Structured-data parameter values are text the sender chose, like the
/// message: a decoy's attacker could hide terminal escapes or bidi
/// overrides in them for whoever reads the record decoded (the console, a
/// `jq` in a terminal). They are made safe as the message is. IDs, names
/// and header fields are printable ASCII by the parser's rules already.
fn neutralize_sd_values(sd: &mut syslog::StructuredData<'_>) {
    for value in sd.values_mut() {
        let safe = match neutralize(value) {
            std::borrow::Cow::Owned(safe) => Some(safe),
            std::borrow::Cow::Borrowed(_) => None,
        };
        if let Some(safe) = safe {
            *value = std::borrow::Cow::Owned(safe);
        }
    }
}

/// A peer's connection as the listener sees it once admitted.
struct Peer {
    credit: Credit,
    /// For the periodic re-check (revocation); `None` on plain TCP.
    identity: Option<PeerIdentity>,
}

/// The listener's protocol half: a [`ConnectionHandler`] for the runner.
pub struct LogListener {
    gate: Arc<dyn PeerGate>,
    sink: SinkHandle,
    budgets: PeerBudgets,
    options: ListenerOptions,
}

impl LogListener {
    /// A handler admitting peers through `gate` and writing to `sink`.
    pub fn new(gate: Arc<dyn PeerGate>, sink: SinkHandle, options: ListenerOptions) -> Arc<Self> {
        Arc::new(LogListener {
            gate,
            sink,
            budgets: PeerBudgets::new(options.budget),
            options,
        })
    }

    async fn admit(&self, conn: &Connection) -> Option<Peer> {
        let remote = conn.peer.remote;
        match conn.peer.identity.as_deref() {
            Some(identity) => {
                if let Err(reason) = self.gate.admit(identity).await {
                    tracing::warn!(%remote, peer_cn = %identity.cn, peer_fingerprint = %identity.fingerprint, %reason, "log peer refused");
                    crate::metrics::listener_metrics()
                        .connections_refused
                        .get_or_create(&crate::metrics::PeerLabel {
                            cn: identity.cn.clone(),
                        })
                        .inc();
                    return None;
                }
                Some(Peer {
                    credit: Credit {
                        cn: identity.cn.clone(),
                        fingerprint: Some(identity.fingerprint.to_hex()),
                    },
                    identity: Some(identity.clone()),
                })
            }
            // Plain TCP exists on loopback only (the runner refuses it elsewhere).
            None => Some(Peer {
                credit: Credit {
                    cn: "loopback".into(),
                    fingerprint: None,
                },
                identity: None,
            }),
        }
    }
}

/// A peer over its budget is named in the log at most this often.
const BUDGET_LOG_EVERY: Duration = Duration::from_secs(10);

/// How many oversized frames of one connection are logged one by one.
const OVERSIZE_LINES: u64 = 5;

impl ConnectionHandler for LogListener {
    async fn handle(self: Arc<Self>, conn: Connection, stop: CancellationToken) {
        let Some(peer) = self.admit(&conn).await else {
            return;
        };
        let credit = &peer.credit;
        tracing::info!(remote = %conn.peer.remote, peer_cn = %credit.cn, "log peer connected");
        // Keyed by the host: its renewed certificates share one budget.
        let budget = self.budgets.peer(&credit.cn, std::time::Instant::now());
        let opts = &self.options;
        let mut io = conn.io;
        let mut decoder = FrameDecoder::new(opts.max_frame);
        // No buffer until bytes arrive (see `fit_read_buffer`). Frames are
        // formatted where they lie in it (`frames`: ranges of it).
        let mut buf = bytes::BytesMut::new();
        let mut frames: Vec<Range<usize>> = Vec::new();
        let deadline = async {
            match conn.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut draining: Option<tokio::time::Instant> = None;
        let mut received = 0u64;
        let mut oversized = 0u64;
        let mut next_check = tokio::time::Instant::now() + RECHECK_INTERVAL;
        let metrics = crate::metrics::listener_metrics();
        let mut over_budget = 0u64;
        // Bytes decoded since this connection last let others run.
        let mut since_yield = 0usize;
        let mut last_budget_line: Option<tokio::time::Instant> = None;
        let mut went_away = false;
        // The last read filled the buffer.
        let mut filled = false;
        loop {
            // While draining, a short silence means the peer has nothing more in flight.
            let wait = match draining {
                Some(_) => Duration::from_millis(300),
                None => opts.idle_timeout,
            };
            if buf.len() == buf.capacity() {
                buf.reserve(1);
            }
            let room = buf.capacity() - buf.len();
            let next = tokio::select! {
                r = tokio::time::timeout(wait, io.read_buf(&mut buf)) => r,
                _ = stop.cancelled(), if draining.is_none() => {
                    draining = Some(tokio::time::Instant::now() + opts.drain_timeout);
                    continue;
                }
                // Nothing can be written any more: close, so the peer resends later.
                _ = self.sink.closed() => break,
                _ = &mut deadline => {
                    tracing::info!(peer_cn = %credit.cn, "log connection reached its lifetime or certificate expiry; closing");
                    break;
                }
            };
            let (ended, mut bad) = match next {
                Err(_) if draining.is_some() => break,
                Err(_) => {
                    tracing::info!(peer_cn = %credit.cn, "log peer idle; closing");
                    break;
                }
                Ok(Ok(n)) => {
                    // A read that filled the buffer left more behind: the
                    // peer is busy, whatever this read's frames weigh.
                    filled = n == room;
                    (n == 0, None)
                }
                Ok(Err(e)) => (false, Some(FrameError::from(e))),
            };
            if let Some(identity) = &peer.identity
                && tokio::time::Instant::now() >= next_check
            {
                next_check = tokio::time::Instant::now() + RECHECK_INTERVAL;
                if let Err(reason) = self.gate.admit(identity).await {
                    tracing::warn!(peer_cn = %credit.cn, %reason, "log peer no longer admitted; closing");
                    break;
                }
            }
            let mut batch_bytes = 0;
            frames.clear();
            let scanned = decoder.scan(&buf, |found| {
                match found {
                    Found::Frame(f) => {
                        batch_bytes += f.len();
                        frames.push(f);
                    }
                    Found::Oversized { declared } => {
                        oversized += 1;
                        metrics.oversized(&credit.cn, declared);
                        if oversized <= OVERSIZE_LINES {
                            tracing::warn!(
                                peer_cn = %credit.cn,
                                declared,
                                max = opts.max_frame,
                                "oversized syslog frame skipped"
                            );
                        }
                    }
                }
                true
            });
            let done = match scanned {
                Ok(done) => done,
                Err(e) => {
                    bad = bad.or(Some(e));
                    0
                }
            };
            if ended && bad.is_none() {
                bad = decoder.at_end(buf.len() - done).err();
            }
            if !frames.is_empty() {
                received += frames.len() as u64;
                metrics.received(&credit.cn, frames.len() as u64, batch_bytes as u64);
                match self.sink.write_batch(credit, &buf, &frames, &budget).await {
                    Ok((0, _)) => {}
                    Ok((lines, bytes)) => {
                        metrics.dropped(&credit.cn, "budget", lines, bytes);
                        over_budget += lines;
                        let now = tokio::time::Instant::now();
                        if last_budget_line.is_none_or(|t| now - t >= BUDGET_LOG_EVERY) {
                            last_budget_line = Some(now);
                            tracing::warn!(
                                peer_cn = %credit.cn,
                                dropped_lines = over_budget,
                                bytes_per_s = self.budgets.budget().bytes_per_s,
                                "log peer over its budget: lines dropped"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot write received logs");
                        break;
                    }
                }
            }
            since_yield += batch_bytes;
            if since_yield >= YIELD_EVERY {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
            buf.advance(done);
            buf.reserve(decoder.wanted(buf.len()));
            let busy_by = if filled {
                batch_bytes.max(BUSY_BATCH)
            } else {
                batch_bytes
            };
            fit_read_buffer(&mut buf, busy_by, busy_read(opts.max_frame));
            match bad {
                None if ended => break,
                None => {}
                Some(FrameError::Disconnected) => {
                    went_away = true;
                    break;
                }
                Some(e @ FrameError::Truncated(_)) => {
                    metrics.frame_error(&credit.cn, "truncated");
                    tracing::warn!(peer_cn = %credit.cn, error = %e, "log connection ended inside a frame");
                    break;
                }
                Some(e) if e.is_malformed() => {
                    metrics.frame_error(&credit.cn, "malformed");
                    tracing::warn!(peer_cn = %credit.cn, error = %e, "malformed syslog stream; closing this connection");
                    break;
                }
                Some(e) => {
                    metrics.frame_error(&credit.cn, "read");
                    tracing::warn!(peer_cn = %credit.cn, error = %e, "reading a log connection failed; closing it");
                    break;
                }
            }
            if draining.is_some_and(|d| tokio::time::Instant::now() > d) {
                break;
            }
        }
        if went_away {
            tracing::info!(peer_cn = %credit.cn, messages = received, oversized, over_budget, "log peer went away without closing the connection (no TLS close_notify, or a reset)");
        } else {
            tracing::info!(peer_cn = %credit.cn, messages = received, oversized, over_budget, "log peer disconnected");
        }
    }
}

/// Room a busy peer's reads get: its bytes are read (and decrypted) this
/// much at a time rather than a frame at a time.
const BUSY_READ: usize = 64 * 1024;

/// A connection whose peer always has more to send lets the others on
/// its worker run after decoding this much. Left to tokio's cooperative
/// budget, which counts operations rather than work, a flood of lines
/// that are costly to format (control bytes, each escaped) held its
/// worker for 128 batches at a time: `hostile_edge_e2e`'s calm host waited
/// over 2 s behind two such floods once batches grew to 64 KiB.
const YIELD_EVERY: usize = 256 * 1024;

/// A peer whose last batch carried at least this much is busy.
const BUSY_BATCH: usize = 4 * 1024;

/// Room for a frame's length prefix (its octet count and a space).
const FRAME_PREFIX: usize = 32;

/// The read room of a busy peer when frames are at most `max_frame`:
/// [`BUSY_READ`], or one frame and its prefix when frames are capped
/// lower, so an operator lowering `--max-frame` lowers what every
/// connection may hold, busy ones included.
fn busy_read(max_frame: usize) -> usize {
    BUSY_READ.min(max_frame.saturating_add(FRAME_PREFIX))
}

/// Fit a connection's read buffer to its traffic. A busy peer gets a
/// buffer that reads `busy` bytes at a time ([`busy_read`]; and allocates
/// the next one that size when the frames of this one are still being written);
/// grown a frame at a time, as it starts, its reads were small and the
/// buffer reallocated often (about a fifth of the listener's CPU per line,
/// measured). A peer quiet again, with nothing left to decode, gives the
/// buffer back: an idle connection holds none. What a hostile peer can
/// make a connection hold is unchanged: one frame of up to the largest
/// allowed (`--max-frame`, [`DEFAULT_MAX_FRAME`] by default) already grew
/// the buffer that far.
fn fit_read_buffer(buf: &mut bytes::BytesMut, batch_bytes: usize, busy: usize) {
    if batch_bytes >= BUSY_BATCH {
        if buf.capacity() < busy / 2 {
            let mut busy = bytes::BytesMut::with_capacity(busy.max(buf.len()));
            busy.extend_from_slice(buf);
            *buf = busy;
        }
    } else if buf.is_empty() && buf.capacity() > 0 {
        *buf = bytes::BytesMut::new();
    }
}

/// How often an open connection's peer is checked against the gate again
/// (so a revocation also ends connections that are already open).
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(15);

/// Run the listener on `server` until `shutdown` resolves (or the writer
/// fails); then drain every connection, write and sync the files.
pub async fn serve(
    server: Server,
    gate: Arc<dyn PeerGate>,
    sink: LogSink,
    options: ListenerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let handle = sink.handle();
    let listener = LogListener::new(gate, handle.clone(), options);
    server
        .serve(listener, async {
            tokio::select! {
                _ = shutdown => {}
                // The writer stopped on an IO error: stop too, and report it.
                _ = handle.closed() => {}
            }
        })
        .await;
    drop(handle);
    sink.close().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// A decoy's attacker hides terminal escapes and a bidi override in a
    /// structured-data value: decoded from the JSON record, the value shows
    /// them as visible escapes, as the message does.
    #[test]
    fn hostile_structured_data_values_are_neutralized_like_the_message() {
        let frame = "<11>1 2026-11-23T10:00:00Z h app - - [meta ua=\"x\u{1b}[2J\u{7}\u{202e}y\" ok=\"plain\"] m\u{1b}[8m".as_bytes();
        let credit = Credit {
            cn: "w1".into(),
            fingerprint: None,
        };
        let (batch, dropped) = format_batch(
            &credit,
            frame,
            &[Range {
                start: 0,
                end: frame.len(),
            }],
            &BatchBuffers::default(),
            &mut |_| true,
        );
        assert_eq!((batch.lines, dropped), (1, (0, 0)));
        let record: serde_json::Value = serde_json::from_slice(&batch.json).unwrap();
        assert_eq!(
            record["structured_data"]["meta"]["ua"],
            "x\\x1b[2J\\x07\\u{202e}y"
        );
        assert_eq!(record["structured_data"]["meta"]["ok"], "plain");
        assert_eq!(record["msg"], "m\\x1b[8m");
        let decoded = record.to_string();
        for bad in ["\\u001b", "\\u0007", "\u{202e}"] {
            assert!(!decoded.contains(bad), "{bad} in {decoded}");
        }
    }

    #[test]
    fn a_busy_peer_reads_into_a_large_buffer_and_keeps_its_partial_frame() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"12 <134>1 par");
        fit_read_buffer(&mut buf, BUSY_BATCH, busy_read(DEFAULT_MAX_FRAME));
        assert!(buf.capacity() >= BUSY_READ, "capacity {}", buf.capacity());
        assert_eq!(&buf[..], b"12 <134>1 par");
        // Already large: left as it is.
        let before = buf.as_ptr();
        fit_read_buffer(&mut buf, BUSY_BATCH * 4, busy_read(DEFAULT_MAX_FRAME));
        assert_eq!(buf.as_ptr(), before);
    }

    /// An operator who lowers `--max-frame` lowers what a busy connection
    /// holds too: its reads are a frame and its prefix, not 64 KiB.
    #[test]
    fn a_busy_peer_under_a_lower_max_frame_holds_no_more_than_a_frame() {
        let max_frame = 8 * 1024;
        let busy = busy_read(max_frame);
        assert!(
            busy >= max_frame && busy <= max_frame + FRAME_PREFIX,
            "{busy}"
        );
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"12 <134>1 par");
        fit_read_buffer(&mut buf, BUSY_BATCH * 4, busy);
        assert!(
            buf.capacity() >= max_frame && buf.capacity() < BUSY_READ / 2,
            "capacity {}",
            buf.capacity()
        );
        assert_eq!(&buf[..], b"12 <134>1 par");
        // Already as large as it may be: not reallocated again.
        let before = buf.as_ptr();
        fit_read_buffer(&mut buf, BUSY_BATCH * 4, busy);
        assert_eq!(buf.as_ptr(), before);
        assert_eq!(busy_read(DEFAULT_MAX_FRAME), BUSY_READ);
    }

    #[test]
    fn a_quiet_peer_gives_its_buffer_back_once_everything_is_decoded() {
        let mut buf = BytesMut::with_capacity(BUSY_READ);
        buf.extend_from_slice(b"partial");
        // Something left to decode: kept.
        fit_read_buffer(&mut buf, 10, BUSY_READ);
        assert_eq!(&buf[..], b"partial");
        assert!(buf.capacity() >= BUSY_READ);
        buf.clear();
        fit_read_buffer(&mut buf, 10, BUSY_READ);
        assert_eq!(buf.capacity(), 0);
        // A large buffer is never given back while the peer is busy.
        let mut busy = BytesMut::with_capacity(BUSY_READ);
        fit_read_buffer(&mut busy, BUSY_BATCH, BUSY_READ);
        assert!(busy.capacity() >= BUSY_READ);
    }
}
