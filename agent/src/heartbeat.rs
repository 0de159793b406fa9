//! Heartbeats to the master's control API: every interval (±20 % jitter, so
//! a fleet restarted at once does not beat in lockstep) the agent reports its
//! version, driver and per-decky states over the kept-alive [`MasterLink`].
//! The answer can ask for a certificate renewal and names the master's
//! current CRL, which is fetched when it is newer than the one in force.

use std::sync::Arc;
use std::time::Duration;

use decnet_swarm_client::master_link::{
    Heartbeat, MasterLink, ReportedDecky, trust_moved, unit_random,
};

use crate::executor::Executor;

/// `interval` scaled by a random factor in [0.8, 1.2).
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * unit_random())
}

fn count(outcome: &str) {
    crate::metrics::agent_metrics()
        .heartbeats
        .get_or_create(&crate::metrics::OutcomeLabel {
            outcome: outcome.into(),
        })
        .inc();
}

/// This host's clock, in milliseconds since the epoch.
fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A decky's forbidden connection attempts, as its driver observes them.
fn forbidden_attempts(d: &crate::executor::DeckyStatus) -> Option<u64> {
    d.observed
        .as_ref()?
        .detail
        .as_ref()?
        .get("network")?
        .get("forbidden")?
        .as_u64()
}

/// What a heartbeat answer asks the agent to do.
#[derive(Clone, Debug)]
pub struct Wakeups {
    /// Renew the certificate now.
    pub renew_now: Arc<tokio::sync::Notify>,
    /// Fetch the CRL now.
    pub crl_now: Arc<tokio::sync::Notify>,
}

/// Send heartbeats until the task is dropped.
pub async fn run(exec: Arc<Executor>, link: Arc<MasterLink>, interval: Duration, wake: Wakeups) {
    let mut failures = 0u32;
    loop {
        let snap = exec.snapshot().await;
        let body = Heartbeat {
            // The master compares it with its own clock (`swarm doctor`).
            sent_at_ms: Some(unix_millis()),
            // Which CAs we trust (`decnet ca rotation status`).
            trust: Some(decnet_pki::trust::digest(
                &link.material().current().bundle().ca_pem,
            )),
            version: snap.version.clone(),
            driver: Some(snap.driver.to_string()),
            deckies: snap
                .deckies
                .iter()
                .map(|d| ReportedDecky {
                    name: d.name.clone(),
                    state: Some(d.state.as_str().to_string()),
                    error: d.error.clone(),
                    restarts: Some(d.restarts.into()),
                    // Connection attempts outside its egress allow-list
                    // (the master alerts on a rise).
                    forbidden: forbidden_attempts(d),
                })
                .collect(),
        };
        match link.heartbeat(&body).await {
            Ok(answer) => {
                count("ok");
                if failures > 0 {
                    tracing::info!(master = %link.master(), "heartbeats accepted again");
                }
                failures = 0;
                if answer.renew {
                    wake.renew_now.notify_one();
                }
                let material = link.material().current();
                let held = material.crl().map(|c| c.number());
                // A newer CRL, or a CA rotation moved: fetch (the trust set
                // first, then the lists of every CA in it).
                if answer.crl_number.is_some_and(|n| Some(n) > held)
                    || trust_moved(&answer, &material.bundle().ca_pem)
                {
                    wake.crl_now.notify_one();
                }
            }
            Err(e) => {
                count("failed");
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(master = %link.master(), error = %e, failures, "heartbeat failed");
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
