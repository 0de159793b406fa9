//! The log relay's series: what the listener received, wrote and refused
//! per peer CN, and how far each forwarder lags.
//!
//! Listener (master):
//!
//! | series | what |
//! |---|---|
//! | `decnet_log_lines_received_total{cn}` / `decnet_log_bytes_received_total{cn}` | frames decoded from a peer |
//! | `decnet_log_lines_written_total{cn}` / `decnet_log_bytes_written_total{cn}` | lines flushed to the raw log (bytes as written there) |
//! | `decnet_log_lines_refused_total{cn,reason}` / `decnet_log_bytes_refused_total{cn,reason}` | frames skipped: `oversized` (bytes as declared), `budget` (over the peer's budget) and `disk` (free space below the watermark; bytes as they would have been written) |
//! | `decnet_log_writing_paused` | 1 while free space is below the watermark and nothing is written |
//! | `decnet_log_connections_refused_total{cn}` | connections the gate refused after the handshake (role, not enrolled, revoked) |
//! | `decnet_log_frame_errors_total{cn,kind}` | `oversized` frames, `malformed` streams, `truncated` streams (ended inside a frame), `read` failures (the connection is closed in the last three); a peer that just goes away is no error |
//!
//! Forwarder (worker):
//!
//! | series | what |
//! |---|---|
//! | `decnet_forwarder_lag_bytes{file}` | bytes of the log not yet confirmed delivered (computed at scrape) |
//! | `decnet_forwarder_lag_seconds{file}` | how long the forwarder has been behind the file (0 when caught up) |
//! | `decnet_forwarder_connected{file}` | 1 while connected to the listener |
//! | `decnet_forwarder_delivered_lines_total{file}` / `..._bytes_total` | confirmed deliveries |
//! | `decnet_forwarder_retries_total{file,reason}` | `connect` failures, `lost` connections, `send` failures |

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use decnet_telemetry::metrics::{register, register_collector};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{Gauge, Gauge as FloatGauge};

use crate::forwarder::Position;

/// `cn`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer certificate's CN (`loopback` on plain TCP).
    pub cn: String,
}

/// `cn`, `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerReasonLabels {
    /// The peer certificate's CN.
    pub cn: String,
    /// Why.
    pub reason: String,
}

/// `cn`, `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerKindLabels {
    /// The peer certificate's CN.
    pub cn: String,
    /// Which error.
    pub kind: String,
}

/// `file`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    /// The forwarded log file.
    pub file: String,
}

/// `file`, `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileReasonLabels {
    /// The forwarded log file.
    pub file: String,
    /// Why.
    pub reason: String,
}

/// The listener's series.
#[derive(Debug)]
pub struct ListenerMetrics {
    /// Frames decoded.
    pub lines_received: Family<PeerLabel, Counter>,
    /// Bytes of decoded frames.
    pub bytes_received: Family<PeerLabel, Counter>,
    /// Lines flushed to the raw log.
    pub lines_written: Family<PeerLabel, Counter>,
    /// Bytes flushed to the raw log.
    pub bytes_written: Family<PeerLabel, Counter>,
    /// Frames skipped.
    pub lines_refused: Family<PeerReasonLabels, Counter>,
    /// Bytes of skipped frames (declared).
    pub bytes_refused: Family<PeerReasonLabels, Counter>,
    /// Connections refused by the gate.
    pub connections_refused: Family<PeerLabel, Counter>,
    /// Frame errors.
    pub frame_errors: Family<PeerKindLabels, Counter>,
    /// 1 while writing is paused for lack of free space.
    pub writing_paused: Gauge,
}

/// The listener's series, registered on first use.
pub fn listener_metrics() -> &'static ListenerMetrics {
    static M: OnceLock<ListenerMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = ListenerMetrics {
            lines_received: Family::default(),
            bytes_received: Family::default(),
            lines_written: Family::default(),
            bytes_written: Family::default(),
            lines_refused: Family::default(),
            bytes_refused: Family::default(),
            connections_refused: Family::default(),
            frame_errors: Family::default(),
            writing_paused: Gauge::default(),
        };
        register(
            "decnet_log_lines_received",
            "Syslog frames decoded, by peer CN",
            m.lines_received.clone(),
        );
        register(
            "decnet_log_bytes_received",
            "Bytes of syslog frames decoded, by peer CN",
            m.bytes_received.clone(),
        );
        register(
            "decnet_log_lines_written",
            "Log lines flushed to the raw log, by peer CN",
            m.lines_written.clone(),
        );
        register(
            "decnet_log_bytes_written",
            "Bytes flushed to the raw log, by peer CN",
            m.bytes_written.clone(),
        );
        register(
            "decnet_log_lines_refused",
            "Syslog frames skipped, by peer CN and reason",
            m.lines_refused.clone(),
        );
        register(
            "decnet_log_bytes_refused",
            "Declared bytes of skipped syslog frames, by peer CN and reason",
            m.bytes_refused.clone(),
        );
        register(
            "decnet_log_connections_refused",
            "Log connections refused after the handshake (role, enrolment, revocation), by peer CN",
            m.connections_refused.clone(),
        );
        register(
            "decnet_log_frame_errors",
            "Syslog framing errors, by peer CN and kind",
            m.frame_errors.clone(),
        );
        register(
            "decnet_log_writing_paused",
            "1 while log writing is paused because free space is below the watermark",
            m.writing_paused.clone(),
        );
        m
    })
}

impl ListenerMetrics {
    /// Count frames decoded from `cn`.
    pub fn received(&self, cn: &str, lines: u64, bytes: u64) {
        let l = PeerLabel { cn: cn.into() };
        self.lines_received.get_or_create(&l).inc_by(lines);
        self.bytes_received.get_or_create(&l).inc_by(bytes);
    }

    /// Count lines of `cn` flushed to the raw log.
    pub fn written(&self, cn: &str, lines: u64, bytes: u64) {
        let l = PeerLabel { cn: cn.into() };
        self.lines_written.get_or_create(&l).inc_by(lines);
        self.bytes_written.get_or_create(&l).inc_by(bytes);
    }

    /// Count a skipped oversized frame of `cn`.
    pub fn oversized(&self, cn: &str, declared: u64) {
        let l = PeerReasonLabels {
            cn: cn.into(),
            reason: "oversized".into(),
        };
        self.lines_refused.get_or_create(&l).inc();
        self.bytes_refused.get_or_create(&l).inc_by(declared);
        self.frame_error(cn, "oversized");
    }

    /// Count lines of `cn` dropped for `reason` (`budget`, `disk`).
    pub fn dropped(&self, cn: &str, reason: &str, lines: u64, bytes: u64) {
        let l = PeerReasonLabels {
            cn: cn.into(),
            reason: reason.into(),
        };
        self.lines_refused.get_or_create(&l).inc_by(lines);
        self.bytes_refused.get_or_create(&l).inc_by(bytes);
    }

    /// Count a framing error of `cn`.
    pub fn frame_error(&self, cn: &str, kind: &str) {
        self.frame_errors
            .get_or_create(&PeerKindLabels {
                cn: cn.into(),
                kind: kind.into(),
            })
            .inc();
    }
}

/// The forwarder's counters (the lag is computed at scrape time).
#[derive(Debug)]
pub struct ForwarderMetrics {
    /// 1 while connected.
    pub connected: Family<FileLabel, Gauge>,
    /// Confirmed lines.
    pub delivered_lines: Family<FileLabel, Counter>,
    /// Confirmed bytes of the file.
    pub delivered_bytes: Family<FileLabel, Counter>,
    /// Reconnects and failed sends.
    pub retries: Family<FileReasonLabels, Counter>,
}

/// The forwarder's series, registered on first use (with the lag collector).
pub fn forwarder_metrics() -> &'static ForwarderMetrics {
    static M: OnceLock<ForwarderMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = ForwarderMetrics {
            connected: Family::default(),
            delivered_lines: Family::default(),
            delivered_bytes: Family::default(),
            retries: Family::default(),
        };
        register(
            "decnet_forwarder_connected",
            "1 while the forwarder is connected to the listener",
            m.connected.clone(),
        );
        register(
            "decnet_forwarder_delivered_lines",
            "Log lines confirmed delivered to the listener",
            m.delivered_lines.clone(),
        );
        register(
            "decnet_forwarder_delivered_bytes",
            "Bytes of the log file confirmed delivered to the listener",
            m.delivered_bytes.clone(),
        );
        register(
            "decnet_forwarder_retries",
            "Forwarder reconnects and failed sends, by reason",
            m.retries.clone(),
        );
        register_collector(Box::new(LagCollector));
        m
    })
}

impl ForwarderMetrics {
    /// Count a retry of the forwarder of `file`.
    pub fn retry(&self, file: &str, reason: &str) {
        self.retries
            .get_or_create(&FileReasonLabels {
                file: file.into(),
                reason: reason.into(),
            })
            .inc();
    }
}

/// What the lag collector needs to know about one forwarder.
#[derive(Debug)]
pub struct LagTracker {
    file: PathBuf,
    state: Mutex<LagState>,
}

#[derive(Debug)]
struct LagState {
    committed: Option<Position>,
    /// Since when the forwarder has been behind (None: caught up).
    behind_since: Option<SystemTime>,
}

fn trackers() -> &'static Mutex<Vec<Weak<LagTracker>>> {
    static T: OnceLock<Mutex<Vec<Weak<LagTracker>>>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(Vec::new()))
}

impl LagTracker {
    /// Track the forwarder of `file` (reported while the returned handle lives).
    pub fn register(file: PathBuf, committed: Option<Position>) -> Arc<LagTracker> {
        forwarder_metrics();
        let t = Arc::new(LagTracker {
            file,
            state: Mutex::new(LagState {
                committed,
                behind_since: None,
            }),
        });
        let mut all = trackers().lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&t));
        t
    }

    /// The delivered position moved.
    pub fn committed(&self, pos: Position) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .committed = Some(pos);
        self.lag();
    }

    /// Bytes not yet confirmed, and for how long the forwarder has been
    /// behind; also updates the "behind since" mark.
    pub fn lag(&self) -> (u64, f64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = match std::fs::metadata(&self.file) {
            Err(_) => 0,
            Ok(m) => match st.committed {
                Some(p) if (p.dev, p.ino) == (m.dev(), m.ino()) => m.len().saturating_sub(p.offset),
                // A rotated-away file's rest is not counted: it is drained first.
                _ => m.len(),
            },
        };
        let now = SystemTime::now();
        let seconds = if bytes == 0 {
            st.behind_since = None;
            0.0
        } else {
            let since = *st.behind_since.get_or_insert(now);
            now.duration_since(since)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        (bytes, seconds)
    }
}

/// Computes `decnet_forwarder_lag_{bytes,seconds}` at each scrape.
#[derive(Debug)]
struct LagCollector;

impl Collector for LagCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live: Vec<Arc<LagTracker>> = trackers()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let bytes: Family<FileLabel, Gauge> = Family::default();
        let seconds: Family<FileLabel, FloatGauge<f64, std::sync::atomic::AtomicU64>> =
            Family::default();
        for t in &live {
            let (b, s) = t.lag();
            let l = FileLabel {
                file: t.file.display().to_string(),
            };
            bytes.get_or_create(&l).set(b as i64);
            seconds.get_or_create(&l).set(s);
        }
        bytes.encode(encoder.encode_descriptor(
            "decnet_forwarder_lag_bytes",
            "Bytes of the log file not yet confirmed delivered",
            None,
            bytes.metric_type(),
        )?)?;
        seconds.encode(encoder.encode_descriptor(
            "decnet_forwarder_lag_seconds",
            "Seconds the forwarder has been behind its log file (0 when caught up)",
            None,
            seconds.metric_type(),
        )?)?;
        Ok(())
    }
}
