//! The master's syslog listener on the server runner: `decnet listener`
//! (standalone) and the listener beside the control API in `decnet master serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use decnet_fleet::FleetDb;
use decnet_log_relay::listener::{self, ListenerOptions, LogSink, listener_limits};
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

/// Bind the listener and open its files: mTLS with the master's
/// `material`, or plain TCP (loopback only) when `material` is `None`.
pub async fn bind(
    material: Option<&MaterialSource>,
    db: FleetDb,
    s: &ListenerSettings,
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
        .map_err(|e| UsageError(e.to_string()))?;
    let sink = LogSink::open(&s.log_path, &s.json_path)
        .await
        .map_err(|e| UsageError(format!("cannot open the log files: {e}")))?;
    Ok(BoundListener {
        server,
        sink,
        gate: FleetGate::new(db, s.grace),
        options: ListenerOptions {
            max_frame: s.max_frame,
            idle_timeout: s.idle_timeout,
            ..ListenerOptions::default()
        },
    })
}
