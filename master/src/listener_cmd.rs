//! `decnet listener`: the master's syslog listener as a foreground daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use decnet_log_relay::listener::{self, ListenerOptions, LogSink, Source};
use decnet_pki::{AcceptOptions, MtlsListener};

use crate::cli::UsageError;
use crate::fleet_db::FleetDb;
use crate::home::MasterHome;
use crate::log_gate::FleetGate;

/// Settings of `decnet listener`.
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
}

/// Run the listener until SIGTERM/SIGINT.
pub async fn run(home: &MasterHome, db: FleetDb, s: &ListenerSettings) -> anyhow::Result<()> {
    let source = if s.plaintext {
        Source::bind_plain(s.listen)
            .await
            .map_err(|e| UsageError(e.to_string()))?
    } else {
        let bundle = crate::fleet_ops::master_bundle(&home.ca_layout())?;
        let config =
            decnet_pki::server_config(&bundle).context("building the TLS configuration")?;
        Source::Tls(
            MtlsListener::bind(s.listen, config, AcceptOptions::default())
                .await
                .map_err(|e| UsageError(format!("cannot listen on {}: {e}", s.listen)))?,
        )
    };
    let sink = LogSink::open(&s.log_path, &s.json_path)
        .await
        .map_err(|e| UsageError(format!("cannot open the log files: {e}")))?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        decnet_pki::serve::shutdown_signal().await;
        let _ = tx.send(true);
    });
    println!("decnet listener listening on {}", source.local_addr());
    tracing::info!(addr = %source.local_addr(), tls = !s.plaintext, "listener serving");
    let options = ListenerOptions {
        max_frame: s.max_frame,
        idle_timeout: s.idle_timeout,
        ..ListenerOptions::default()
    };
    listener::serve(source, Arc::new(FleetGate::new(db)), sink, options, rx)
        .await
        .context("listener failed")
}
