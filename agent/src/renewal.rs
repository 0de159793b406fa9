//! Automatic certificate renewal: at about 2/3 of the certificate's lifetime
//! (or at once when the master asks through a heartbeat answer) the agent
//! renews with a fresh key and swaps the served certificate in place — no
//! restart, no dropped request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use decnet_pki::tls::ReloadableCert;
use decnet_pki::{Bundle, BundleKind, Fingerprint};
use tokio::sync::Notify;

/// Renew the bundle in `bundle_dir` with the master at `master`, forever.
pub async fn run(
    bundle_dir: PathBuf,
    master: String,
    pin: Option<Fingerprint>,
    cert: Arc<ReloadableCert>,
    renew_now: Arc<Notify>,
) {
    loop {
        let bundle = match Bundle::load(&bundle_dir, BundleKind::Agent) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "renewal: cannot read the bundle");
                tokio::time::sleep(Duration::from_secs(30)).await;
                continue;
            }
        };
        let due = decnet_swarm_client::renew::renewal_due(&bundle);
        let wait = (due - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
        let wait = Duration::from_secs_f64(wait.as_seconds_f64());
        tracing::debug!(in_secs = wait.as_secs(), "next certificate renewal");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = renew_now.notified() => tracing::info!("the master asked for a certificate renewal"),
        }
        match decnet_swarm_client::renew::renew(&master, &bundle, pin, &bundle_dir).await {
            Ok(new) => match cert.reload(&new) {
                Ok(()) => tracing::info!(
                    fingerprint = %new.identity.fingerprint,
                    not_after = %new.identity.not_after,
                    "certificate renewed and now served"
                ),
                Err(e) => tracing::error!(error = %e, "renewed certificate cannot be served"),
            },
            Err(e) => {
                let left = (bundle.identity.not_after - time::OffsetDateTime::now_utc())
                    .whole_seconds()
                    .max(1) as u64;
                let retry = Duration::from_secs((left / 10).clamp(1, 60));
                tracing::warn!(error = %e, retry_in = ?retry, "certificate renewal failed");
                tokio::time::sleep(retry).await;
            }
        }
    }
}
