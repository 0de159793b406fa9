//! The graceful-shutdown trigger of every decnet daemon.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether "shutdown requested" was logged: a daemon waits for the signal
/// in several tasks (its server, its metrics endpoint, ...), and the
/// operator is told once.
static SAID: AtomicBool = AtomicBool::new(false);

/// Resolves on SIGTERM or SIGINT (in every task that awaits it); the
/// first to see it logs it.
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
    if !SAID.swap(true, Ordering::SeqCst) {
        tracing::info!("shutdown requested");
    }
}
