//! Heartbeats to the master's control API: every interval (±20 % jitter, so
//! a fleet restarted at once does not beat in lockstep) the agent reports its
//! version, driver and per-decky states over mTLS with its own certificate.

use std::sync::Arc;
use std::time::Duration;

use decnet_pki::{Bundle, Fingerprint};

use crate::executor::Executor;

/// `interval` scaled by a random factor in [0.8, 1.2).
pub fn jittered(interval: Duration) -> Duration {
    let r = u64::from_str_radix(&decnet_pki::random_hex(2), 16).unwrap_or(0) as f64 / 65536.0;
    interval.mul_f64(0.8 + 0.4 * r)
}

/// Send heartbeats to `https://<master>/heartbeat` until the task is
/// dropped, with the bundle read from `bundle_dir` each time (so a renewed
/// certificate is used at once). An answer with `"renew": true` wakes
/// `renew_now`.
pub async fn run(
    exec: Arc<Executor>,
    bundle_dir: std::path::PathBuf,
    pin: Option<Fingerprint>,
    master: String,
    interval: Duration,
    renew_now: Arc<tokio::sync::Notify>,
) {
    let url = format!("https://{master}/heartbeat");
    let mut failures = 0u32;
    loop {
        let client = match Bundle::load(&bundle_dir, decnet_pki::BundleKind::Agent)
            .map_err(|e| e.to_string())
            .and_then(|b| decnet_pki::client_config(&b, pin).map_err(|e| e.to_string()))
            .and_then(|cfg| {
                reqwest::Client::builder()
                    .tls_backend_preconfigured(cfg)
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| e.to_string())
            }) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "heartbeat skipped: cannot build the client");
                tokio::time::sleep(jittered(interval)).await;
                continue;
            }
        };
        let snap = exec.snapshot().await;
        let body = serde_json::json!({
            "version": snap.version,
            "driver": snap.driver,
            "deckies": snap.deckies.iter().map(|d| serde_json::json!({
                "name": d.name, "state": d.state, "error": d.error, "restarts": d.restarts,
            })).collect::<Vec<_>>(),
        });
        match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                if failures > 0 {
                    tracing::info!(master = %master, "heartbeats accepted again");
                }
                failures = 0;
                if let Ok(v) = r.json::<serde_json::Value>().await
                    && v["renew"] == true
                {
                    renew_now.notify_one();
                }
            }
            Ok(r) => {
                failures += 1;
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                tracing::warn!(master = %master, %status, answer = %text, "heartbeat refused");
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(master = %master, error = %e, failures, "heartbeat failed");
                }
            }
        }
        tokio::time::sleep(jittered(interval)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(30));
            assert!(
                d >= Duration::from_secs(24) && d < Duration::from_secs(36),
                "{d:?}"
            );
        }
    }
}
