//! The worker-side forwarder: tails a log file and ships complete lines to
//! the master's listener as RFC 5425 frames over mTLS.
//!
//! Delivery is at-least-once. The byte offset that was delivered is persisted
//! together with the file's identity (device + inode) and advances only after
//! a batch was written and flushed *and* the connection was then seen still
//! open (under TLS 1.3 a refused client certificate, or a listener going
//! away, shows up only as an alert or EOF on a later read). A rotation
//! (identity change) first drains the old file — found by its inode among the
//! files beside the log, even after a forwarder restart — then starts the new
//! file at 0; a truncation (size below the offset) restarts at 0.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use decnet_pki::{ExpectedServer, Fingerprint, MaterialSource, TlsMaterial};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::frame;
use crate::syslog;

/// Settings of a forwarder.
#[derive(Clone, Debug)]
pub struct ForwarderOptions {
    /// `host:port` of the listener.
    pub master: String,
    /// The file to tail.
    pub log_file: PathBuf,
    /// Where the delivered offset is persisted.
    pub offset_file: PathBuf,
    /// HOSTNAME written into wrapped lines.
    pub hostname: String,
    /// APP-NAME written into wrapped lines.
    pub app_name: String,
    /// How often the file is checked for new lines when caught up.
    pub poll_interval: Duration,
    /// At most this many lines per batch.
    pub batch_lines: usize,
    /// At most this many bytes read per batch.
    pub batch_bytes: usize,
    /// Upper bound of the reconnect backoff.
    pub max_backoff: Duration,
    /// Lines longer than this (in bytes of the file) are split.
    pub max_line: usize,
    /// The listener's frame limit: a message that still comes out larger
    /// (invalid UTF-8 grows when replaced) is cut on a character boundary.
    pub max_frame: usize,
    /// How long to wait after connecting for the listener to refuse us.
    pub settle: Duration,
}

impl ForwarderOptions {
    /// Defaults for `master` and `log_file`, offset kept in `state_dir`.
    pub fn new(master: String, log_file: PathBuf, state_dir: &Path, hostname: String) -> Self {
        ForwarderOptions {
            master,
            log_file,
            offset_file: state_dir.join("forwarder-offset.json"),
            hostname,
            app_name: "decnet".into(),
            poll_interval: Duration::from_millis(250),
            batch_lines: 500,
            batch_bytes: 256 * 1024,
            max_backoff: Duration::from_secs(30),
            max_line: frame::DEFAULT_MAX_FRAME - 512,
            max_frame: frame::DEFAULT_MAX_FRAME,
            settle: Duration::from_millis(300),
        }
    }
}

/// A position in a specific file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Bytes delivered.
    pub offset: u64,
}

/// The persisted delivered position.
#[derive(Clone, Debug)]
pub struct OffsetStore {
    path: PathBuf,
}

impl OffsetStore {
    /// The store at `path`.
    pub fn new(path: PathBuf) -> Self {
        OffsetStore { path }
    }

    /// The last delivered position, if any.
    pub fn load(&self) -> Option<Position> {
        let bytes = std::fs::read(&self.path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "offset file unreadable; starting from the beginning");
                None
            }
        }
    }

    /// Persist atomically.
    pub fn save(&self, pos: Position) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let bytes = serde_json::to_vec(&pos).map_err(std::io::Error::other)?;
        decnet_pki::secure_fs::write_atomic(&self.path, &bytes, 0o600)
    }
}

/// A batch of lines read from the file and the position after them.
#[derive(Debug, PartialEq, Eq)]
pub struct Batch {
    /// Complete lines, without their newline.
    pub lines: Vec<String>,
    /// Position after the last line.
    pub end: Position,
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Whether `meta` (of a file or a directory) is one that nobody but this
/// process's user or root can write: what the forwarder ships must not be
/// replaceable by a decky (a link to the agent's key would ship the key).
/// Pure: unit-tested.
pub fn writable_only_by(meta_uid: u32, meta_mode: u32, me: u32) -> bool {
    (meta_uid == 0 || meta_uid == me) && meta_mode & 0o022 == 0
}

/// Open `path` for shipping: never through a symbolic link (`O_NOFOLLOW`),
/// only a regular file, and only when neither it nor its directory can be
/// written by anyone but this user or root.
fn open_trusted(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing to ship {}: {why}", path.display()),
        )
    };
    let me = rustix::process::geteuid().as_raw();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let d = std::fs::metadata(dir)?;
    if !writable_only_by(d.uid(), d.mode(), me) {
        return Err(refuse(format!(
            "its directory {} can be written by others, who could replace it",
            dir.display()
        )));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                refuse("it is a symbolic link".into())
            } else {
                e
            }
        })?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(refuse("it is not a regular file".into()));
    }
    if !writable_only_by(m.uid(), m.mode(), me) {
        return Err(refuse("it can be written by others".into()));
    }
    Ok(f)
}

/// Find the file in `dir` with identity `(dev, ino)` (a rotated log).
fn find_by_identity(dir: &Path, dev: u64, ino: u64) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if let Ok(m) = entry.metadata()
            && m.is_file()
            && identity(&m) == (dev, ino)
        {
            return Some(entry.path());
        }
    }
    None
}

/// Read the next batch of complete lines after `from` (pure file logic; no network).
pub fn next_batch(
    opts: &ForwarderOptions,
    from: Option<Position>,
) -> std::io::Result<Option<Batch>> {
    let current = std::fs::metadata(&opts.log_file).ok();
    let dir = opts.log_file.parent().unwrap_or(Path::new("."));
    let (path, start, rotated) = match (from, &current) {
        (None, Some(m)) => {
            let (dev, ino) = identity(m);
            (
                opts.log_file.clone(),
                Position {
                    dev,
                    ino,
                    offset: 0,
                },
                false,
            )
        }
        (None, None) => return Ok(None),
        (Some(p), Some(m)) if identity(m) == (p.dev, p.ino) => {
            if m.len() < p.offset {
                tracing::warn!(file = %opts.log_file.display(), "log file truncated; restarting at 0");
                (opts.log_file.clone(), Position { offset: 0, ..p }, false)
            } else {
                (opts.log_file.clone(), p, false)
            }
        }
        (Some(p), cur) => {
            // Rotated: drain the old file first, wherever it went.
            match find_by_identity(dir, p.dev, p.ino) {
                Some(old)
                    if std::fs::metadata(&old)
                        .map(|m| m.len() > p.offset)
                        .unwrap_or(false) =>
                {
                    (old, p, true)
                }
                _ => match cur {
                    Some(m) => {
                        let (dev, ino) = identity(m);
                        tracing::info!(file = %opts.log_file.display(), "log file rotated; following the new file");
                        (
                            opts.log_file.clone(),
                            Position {
                                dev,
                                ino,
                                offset: 0,
                            },
                            false,
                        )
                    }
                    None => return Ok(None),
                },
            }
        }
    };
    let mut f = open_trusted(&path)?;
    // The file may have been replaced between stat and open.
    if identity(&f.metadata()?) != (start.dev, start.ino) {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(start.offset))?;
    let mut buf = Vec::with_capacity(opts.batch_bytes.min(1 << 20));
    (&mut f)
        .take(opts.batch_bytes as u64)
        .read_to_end(&mut buf)?;
    let mut lines = Vec::new();
    let mut consumed = 0usize;
    while lines.len() < opts.batch_lines {
        let rest = &buf[consumed..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) if i <= opts.max_line => {
                let line = &rest[..i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if !line.is_empty() {
                    lines.push(String::from_utf8_lossy(line).into_owned());
                }
                consumed += i + 1;
            }
            // An over-long line is sent in pieces rather than stalling forever.
            _ if rest.len() > opts.max_line => {
                lines.push(String::from_utf8_lossy(&rest[..opts.max_line]).into_owned());
                consumed += opts.max_line;
            }
            // The unfinished last line of a rotated file will never be completed.
            None if rotated && !rest.is_empty() => {
                lines.push(String::from_utf8_lossy(rest).into_owned());
                consumed += rest.len();
            }
            _ => break,
        }
    }
    let end = Position {
        offset: start.offset + consumed as u64,
        ..start
    };
    if consumed == 0 {
        // Nothing new here; a drained rotated file hands over to the new one.
        if rotated {
            return Ok(None);
        }
        return Ok(if end != from.unwrap_or(end) {
            Some(Batch { lines, end })
        } else {
            None
        });
    }
    Ok(Some(Batch { lines, end }))
}

/// Why connecting to the listener failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// TLS setup from the bundle failed.
    #[error(transparent)]
    Tls(#[from] decnet_pki::TlsError),
    /// Network or TLS failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The listener closed the connection right after the handshake.
    #[error("the listener refused this forwarder (certificate not admitted?)")]
    Refused,
}

struct Connection {
    writer: WriteHalf<TlsStream<TcpStream>>,
    dead: Arc<AtomicBool>,
}

async fn connect(
    connector: &TlsConnector,
    opts: &ForwarderOptions,
) -> Result<Connection, ForwardError> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&opts.master))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("decnet-master").map_err(std::io::Error::other)?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    let (mut reader, writer) = tokio::io::split(tls);
    let dead = Arc::new(AtomicBool::new(false));
    let flag = dead.clone();
    tokio::spawn(async move {
        // The listener never sends data: any read result is an alert, EOF or error.
        let mut b = [0u8; 512];
        loop {
            match reader.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        flag.store(true, Ordering::SeqCst);
    });
    tokio::time::sleep(opts.settle).await;
    if dead.load(Ordering::SeqCst) {
        return Err(ForwardError::Refused);
    }
    Ok(Connection { writer, dead })
}

/// Cut `msg` to at most `max` bytes, on a character boundary.
pub fn fit_message(msg: &str, max: usize) -> &str {
    if msg.len() <= max {
        return msg;
    }
    let mut end = max;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

/// A TLS connector for `material`, expecting the master (and `pin`).
fn connector_for(
    material: &TlsMaterial,
    pin: Option<Fingerprint>,
) -> Result<TlsConnector, ForwardError> {
    let config = material.client_config(&ExpectedServer::master().pinned(pin))?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Run the forwarder until `shutdown` flips to `true`, presenting the
/// material in force at each connection (a renewed certificate is used from
/// the next connection on) to a listener that must prove it is the master.
pub async fn run(
    opts: ForwarderOptions,
    material: MaterialSource,
    pin: Option<Fingerprint>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ForwardError> {
    let mut in_use = material.current();
    let mut connector = connector_for(&in_use, pin)?;
    let store = OffsetStore::new(opts.offset_file.clone());
    let mut committed = store.load();
    let file_label = opts.log_file.display().to_string();
    let metrics = crate::metrics::forwarder_metrics();
    let lag = crate::metrics::LagTracker::register(opts.log_file.clone(), committed);
    let connected = metrics
        .connected
        .get_or_create(&crate::metrics::FileLabel {
            file: file_label.clone(),
        })
        .clone();
    let delivered_lines = metrics
        .delivered_lines
        .get_or_create(&crate::metrics::FileLabel {
            file: file_label.clone(),
        })
        .clone();
    let delivered_bytes = metrics
        .delivered_bytes
        .get_or_create(&crate::metrics::FileLabel {
            file: file_label.clone(),
        })
        .clone();
    // Lines and bytes of the batch awaiting confirmation.
    let mut pending_count = (0u64, 0u64);
    let mut pending: Option<Position> = None;
    let mut conn: Option<Connection> = None;
    let mut backoff = Duration::from_millis(500);
    let mut last_read_error: Option<(String, std::time::Instant)> = None;
    let mut missing_said: Option<std::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let Some(c) = conn.as_mut() else {
            let current = material.current();
            if !Arc::ptr_eq(&current, &in_use) {
                match connector_for(&current, pin) {
                    Ok(next) => {
                        tracing::info!(fingerprint = %current.bundle().identity.fingerprint, "forwarder uses the renewed certificate or revocation list");
                        connector = next;
                        in_use = current;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot use the new TLS material; keeping the old one")
                    }
                }
            }
            match connect(&connector, &opts).await {
                Ok(c) => {
                    tracing::info!(master = %opts.master, "forwarder connected");
                    connected.set(1);
                    conn = Some(c);
                    backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    let jitter = Duration::from_millis(
                        u64::from_str_radix(&decnet_pki::random_hex(2), 16).unwrap_or(0) % 250,
                    );
                    let error = decnet_pki::tls::identity_failure(&e)
                        .map(|m| format!("refusing the listener: {m}"))
                        .unwrap_or_else(|| e.to_string());
                    tracing::warn!(master = %opts.master, %error, retry_in = ?(backoff + jitter), "forwarder cannot deliver");
                    metrics.retry(&file_label, "connect");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff + jitter) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(opts.max_backoff);
                }
            }
            continue;
        };
        if c.dead.load(Ordering::SeqCst) {
            tracing::warn!(
                "connection to the listener lost; resending from the last confirmed offset"
            );
            metrics.retry(&file_label, "lost");
            connected.set(0);
            pending = None;
            conn = None;
            continue;
        }
        if let Some(p) = pending.take() {
            if let Err(e) = store.save(p) {
                tracing::error!(error = %e, "cannot persist the forwarder offset");
            }
            committed = Some(p);
            delivered_lines.inc_by(pending_count.0);
            delivered_bytes.inc_by(pending_count.1);
            lag.committed(p);
        }
        // A renewed certificate, a new trust set or CRL: move to it between
        // batches (nothing in flight), closing this connection cleanly, so
        // the master never has to cut it (a cut resends the last batch).
        if !Arc::ptr_eq(&material.current(), &in_use) {
            tracing::info!("moving to the new TLS material: reconnecting");
            let _ = tokio::time::timeout(Duration::from_secs(5), c.writer.shutdown()).await;
            connected.set(0);
            conn = None;
            continue;
        }
        // A file that is not there (yet) is said, once, then every ten
        // minutes while it stays away: a typo must not look like silence.
        match (opts.log_file.exists(), &missing_said) {
            (false, None) => {
                tracing::warn!(file = %opts.log_file.display(), "the log file does not exist (yet); waiting for it to appear");
                missing_said = Some(std::time::Instant::now());
            }
            (false, Some(at)) if at.elapsed() > Duration::from_secs(600) => {
                tracing::warn!(file = %opts.log_file.display(), "the log file still does not exist; waiting for it to appear");
                missing_said = Some(std::time::Instant::now());
            }
            (true, Some(_)) => {
                tracing::info!(file = %opts.log_file.display(), "the log file appeared; forwarding it");
                missing_said = None;
            }
            _ => {}
        }
        let batch = match next_batch(&opts, committed) {
            Ok(b) => b,
            Err(e) => {
                // Said once a minute, not at every poll.
                let text = e.to_string();
                if last_read_error
                    .as_ref()
                    .is_none_or(|(t, at): &(String, std::time::Instant)| {
                        *t != text || at.elapsed() > Duration::from_secs(60)
                    })
                {
                    tracing::warn!(file = %opts.log_file.display(), error = %text, "cannot read the log file");
                    last_read_error = Some((text, std::time::Instant::now()));
                }
                None
            }
        };
        let Some(batch) = batch else {
            tokio::select! {
                _ = tokio::time::sleep(opts.poll_interval) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            continue;
        };
        let now = time::OffsetDateTime::now_utc();
        let mut out = Vec::new();
        for line in &batch.lines {
            let msg = syslog::wrap_line(line, &opts.hostname, &opts.app_name, now);
            let fitted = fit_message(&msg, opts.max_frame);
            if fitted.len() < msg.len() {
                tracing::warn!(
                    bytes = msg.len(),
                    kept = fitted.len(),
                    "log line longer than the listener's frame limit after encoding; sending it cut"
                );
            }
            frame::encode_into(fitted.as_bytes(), &mut out);
        }
        let written = async {
            c.writer.write_all(&out).await?;
            c.writer.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(30), written).await {
            Ok(Ok(())) => {
                pending = Some(batch.end);
                pending_count = (
                    batch.lines.len() as u64,
                    batch.end.offset.saturating_sub(
                        committed
                            .filter(|c| (c.dev, c.ino) == (batch.end.dev, batch.end.ino))
                            .map_or(0, |c| c.offset),
                    ),
                );
                // Give a refusal or a closing listener the time to show up
                // before this batch counts as delivered.
                if batch.lines.len() < opts.batch_lines {
                    tokio::select! {
                        _ = tokio::time::sleep(opts.poll_interval) => {}
                        _ = shutdown.wait_for(|s| *s) => {}
                    }
                } else {
                    tokio::task::yield_now().await;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "sending to the listener failed");
                metrics.retry(&file_label, "send");
                connected.set(0);
                conn = None;
            }
            Err(_) => {
                tracing::warn!("sending to the listener timed out");
                metrics.retry(&file_label, "send");
                connected.set(0);
                conn = None;
            }
        }
    }
    // Confirm the last batch if the connection is still healthy, then close.
    if let Some(mut c) = conn {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(p) = pending
            && !c.dead.load(Ordering::SeqCst)
        {
            let _ = store.save(p);
            delivered_lines.inc_by(pending_count.0);
            delivered_bytes.inc_by(pending_count.1);
        }
        let _ = c.writer.shutdown().await;
    }
    connected.set(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_and_dirs_nobody_else_can_write_are_trusted() {
        assert!(writable_only_by(0, 0o100644, 1000));
        assert!(writable_only_by(1000, 0o100600, 1000));
        assert!(
            !writable_only_by(2000, 0o100644, 1000),
            "another user's file"
        );
        assert!(!writable_only_by(0, 0o100666, 1000), "world-writable");
        assert!(!writable_only_by(0, 0o040775, 1000), "group-writable dir");
    }

    #[test]
    fn a_symlink_or_a_file_others_may_write_is_never_shipped() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("worker.key");
        std::fs::write(&secret, "PRIVATE KEY\n").unwrap();
        let link = dir.path().join("decky.log");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let o = ForwarderOptions {
            log_file: link,
            ..opts(dir.path())
        };
        let e = next_batch(&o, None).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let open = dir.path().join("open.log");
        std::fs::write(&open, "line\n").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
        let o = ForwarderOptions {
            log_file: open,
            ..opts(dir.path())
        };
        let e = next_batch(&o, None).unwrap_err();
        assert!(e.to_string().contains("written by others"), "{e}");
        // A directory others may write: its files could be replaced.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(shared.join("d.log"), "line\n").unwrap();
        let o = ForwarderOptions {
            log_file: shared.join("d.log"),
            ..opts(dir.path())
        };
        let e = next_batch(&o, None).unwrap_err();
        assert!(e.to_string().contains("its directory"), "{e}");
    }

    fn opts(dir: &Path) -> ForwarderOptions {
        ForwarderOptions::new("127.0.0.1:1".into(), dir.join("app.log"), dir, "w".into())
    }

    #[test]
    fn complete_lines_only_then_rotation_then_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        assert_eq!(next_batch(&o, None).unwrap(), None, "no file yet");
        std::fs::write(&o.log_file, "one\ntwo\npart").unwrap();
        let b = next_batch(&o, None).unwrap().unwrap();
        assert_eq!(b.lines, vec!["one", "two"]);
        assert_eq!(b.end.offset, 8);
        assert_eq!(
            next_batch(&o, Some(b.end)).unwrap(),
            None,
            "partial line waits"
        );

        // Rotate by rename; the new file grows past the old offset.
        std::fs::rename(&o.log_file, dir.path().join("app.log.1")).unwrap();
        std::fs::write(
            &o.log_file,
            "new-1 is a long line\nnew-2 also long enough\n",
        )
        .unwrap();
        let b2 = next_batch(&o, Some(b.end)).unwrap().unwrap();
        assert_eq!(
            b2.lines,
            vec!["part"],
            "old file drained first, even its unfinished line"
        );
        let b3 = next_batch(&o, Some(b2.end)).unwrap().unwrap();
        assert_eq!(
            b3.lines,
            vec!["new-1 is a long line", "new-2 also long enough"]
        );
        assert_eq!(b3.end.offset, 44);

        // Truncation restarts at 0.
        std::fs::write(&o.log_file, "t\n").unwrap();
        let b4 = next_batch(&o, Some(b3.end)).unwrap().unwrap();
        assert_eq!(b4.lines, vec!["t"]);
    }

    #[test]
    fn batches_are_bounded_and_long_lines_split() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.batch_lines = 2;
        o.max_line = 10;
        std::fs::write(&o.log_file, "a\nb\nc\n0123456789abcdef\n").unwrap();
        let b = next_batch(&o, None).unwrap().unwrap();
        assert_eq!(b.lines, vec!["a", "b"]);
        let b = next_batch(&o, Some(b.end)).unwrap().unwrap();
        assert_eq!(b.lines, vec!["c", "0123456789"]);
        let b = next_batch(&o, Some(b.end)).unwrap().unwrap();
        assert_eq!(b.lines, vec!["abcdef"]);
    }

    #[test]
    fn lines_that_grow_when_encoded_still_fit_the_frame_limit() {
        // 30,000 bytes of 0xFF pass the byte-length split (max_line), but each
        // becomes U+FFFD (3 bytes) when made valid UTF-8.
        let dir = tempfile::tempdir().unwrap();
        let o = opts(dir.path());
        let mut data = vec![0xFFu8; 30_000];
        data.push(b'\n');
        data.extend_from_slice(b"next\n");
        std::fs::write(&o.log_file, &data).unwrap();
        let b = next_batch(&o, None).unwrap().unwrap();
        assert_eq!(b.lines.len(), 2);
        let now = time::OffsetDateTime::now_utc();
        let big = syslog::wrap_line(&b.lines[0], "w", "a", now);
        assert!(big.len() > o.max_frame, "the case under test");
        let fitted = fit_message(&big, o.max_frame);
        assert!(fitted.len() <= o.max_frame);
        assert!(fitted.len() > o.max_frame - 4, "cut on the last boundary");
        assert!(fitted.starts_with("<13>1 "));
        // Every frame the forwarder builds is accepted whole by the listener's decoder.
        let mut out = Vec::new();
        for l in &b.lines {
            let m = syslog::wrap_line(l, "w", "a", now);
            frame::encode_into(fit_message(&m, o.max_frame).as_bytes(), &mut out);
        }
        use tokio_util::codec::Decoder;
        let mut d = frame::FrameDecoder::new(o.max_frame);
        let mut buf = bytes::BytesMut::from(&out[..]);
        let mut n = 0;
        while let Some(item) = d.decode(&mut buf).unwrap() {
            assert!(matches!(item, frame::FrameItem::Frame(_)), "{item:?}");
            n += 1;
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn offsets_persist_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let s = OffsetStore::new(dir.path().join("o.json"));
        assert_eq!(s.load(), None);
        let p = Position {
            dev: 1,
            ino: 2,
            offset: 3,
        };
        s.save(p).unwrap();
        assert_eq!(s.load(), Some(p));
    }
}
