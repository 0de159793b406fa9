//! The master's syslog listener on the server runner: `decnet listener`
//! (standalone) and the listener beside the control API in `decnet master serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use decnet_fleet::FleetDb;
use decnet_log_relay::budget::LogBudget;
use decnet_log_relay::disk::DiskPolicy;
use decnet_log_relay::listener::{self, LineTap, ListenerOptions, LogSink, listener_limits};
use decnet_pki::{ClientAuth, MaterialSource};
use decnet_server::{Server, Transport};

use crate::log_gate::FleetGate;
use crate::usage::UsageError;

/// Settings of a listener.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Raw log file.
    pub log_path: PathBuf,
    /// JSON log file.
    pub json_path: PathBuf,
    /// Plain TCP (loopback only).
    pub plaintext: bool,
    /// Largest frame.
    pub max_frame: usize,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// How long a renewed agent's old certificate stays admitted.
    pub grace: Duration,
    /// What one host (its certificates' CN) may make the listener write.
    pub budget: LogBudget,
    /// Rotation, retention and the free-space watermark.
    pub disk: DiskPolicy,
}

/// The smallest burst: the most one line can cost (its raw and JSON forms
/// at their escaped cap), with room to spare.
pub const MIN_BURST: u64 = 4 * decnet_log_relay::listener::MAX_ESCAPED as u64;

pub use decnet_cli::args::{LogStorageArgs, parse_bytes};

/// What the listener's storage flags set.
pub trait LogStorage {
    /// The budget these flags set.
    fn budget(&self) -> LogBudget;
    /// The rotation, retention and free-space policy these flags set.
    fn disk(&self) -> DiskPolicy;
}

impl LogStorage for LogStorageArgs {
    /// The budget these flags set.
    fn budget(&self) -> LogBudget {
        if self.log_budget == 0 {
            return LogBudget::unlimited();
        }
        LogBudget {
            bytes_per_s: self.log_budget,
            // A burst smaller than the costliest line would never let it through.
            burst_bytes: self.log_burst.max(self.log_budget).max(MIN_BURST),
            lines_per_s: self.log_line_budget,
            burst_lines: self.log_line_budget.saturating_mul(40),
        }
    }

    /// The disk policy these flags set.
    fn disk(&self) -> DiskPolicy {
        DiskPolicy {
            rotate_bytes: self.log_rotate_size,
            keep: self.log_keep.max(1),
            min_free_bytes: self.log_min_free,
        }
    }
}

/// A bound listener, ready to run.
pub struct BoundListener {
    server: Server,
    sink: LogSink,
    gate: FleetGate,
    options: ListenerOptions,
}

impl BoundListener {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serve until `shutdown`; then drain, write and sync.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        listener::serve(
            self.server,
            Arc::new(self.gate),
            self.sink,
            self.options,
            shutdown,
        )
        .await
        .context("the log listener failed")
    }
}

/// Who runs a listener: its own command, or `master serve` beside the
/// control API. A port already taken is most often the other one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerHost {
    /// `decnet listener`.
    OnItsOwn,
    /// `decnet master serve` (unless `--no-listener`).
    BesideTheMaster,
}

/// What to say when the listener's port is taken, by who runs it.
pub fn port_taken_hint(host: ListenerHost) -> &'static str {
    match host {
        ListenerHost::OnItsOwn => {
            "is `decnet master serve` running? It runs the log listener itself unless started with --no-listener: run one of them, or give them different ports"
        }
        ListenerHost::BesideTheMaster => {
            "is a separate listener (`decnet listener`, decnet-listener.service) running? `master serve` runs the log listener itself: stop the other one, or start this one with --no-listener"
        }
    }
}

/// Bind the listener and open its files: mTLS with the master's
/// `material`, or plain TCP (loopback only) when `material` is `None`.
pub async fn bind(
    material: Option<&MaterialSource>,
    db: FleetDb,
    s: &ListenerSettings,
    host: ListenerHost,
) -> anyhow::Result<BoundListener> {
    let transport = match material {
        None => Transport::Plain,
        Some(m) => Transport::Tls {
            material: m.clone(),
            auth: ClientAuth::Required,
        },
    };
    let server = Server::bind("listener", s.listen, transport, listener_limits())
        .await
        .map_err(|e| match &e {
            decnet_server::ServerError::Bind { source, .. }
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                UsageError(format!("{e}; {}", port_taken_hint(host)))
            }
            _ => UsageError(e.to_string()),
        })?;
    // Beside the master, the lines written are shown to those following
    // them on the event bus.
    let tap = match host {
        ListenerHost::BesideTheMaster => crate::events::installed()
            .map(|e| Arc::new(crate::events::LogTap(e.bus.clone())) as Arc<dyn LineTap>),
        ListenerHost::OnItsOwn => None,
    };
    let sink = LogSink::open_tapped(&s.log_path, &s.json_path, s.disk, tap)
        .await
        .map_err(|e| UsageError(format!("cannot open the log files: {e}")))?;
    Ok(BoundListener {
        server,
        sink,
        gate: FleetGate::new(db, s.grace),
        options: ListenerOptions {
            max_frame: s.max_frame,
            idle_timeout: s.idle_timeout,
            budget: s.budget,
            ..ListenerOptions::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512k"), Ok(512 * 1024));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }
}
