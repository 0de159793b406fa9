//! Automatic certificate renewal of the agent: at about 2/3 of the
//! certificate's lifetime (or at once when the master asks through a
//! heartbeat answer) the agent renews with a fresh key and swaps the served
//! certificate in place — no restart, no dropped request.

use std::path::PathBuf;
use std::sync::Arc;

use decnet_pki::tls::ReloadableCert;
use decnet_pki::{BundleKind, Fingerprint};
use tokio::sync::Notify;

/// Renew the bundle in `bundle_dir` with the master at `master`, forever.
pub async fn run(
    bundle_dir: PathBuf,
    master: String,
    pin: Option<Fingerprint>,
    cert: Arc<ReloadableCert>,
    renew_now: Arc<Notify>,
) {
    decnet_swarm_client::renew::keep_renewed(
        BundleKind::Agent,
        bundle_dir,
        master,
        pin,
        renew_now,
        move |b| {
            if let Err(e) = cert.reload(b) {
                tracing::error!(error = %e, "renewed certificate cannot be served");
            }
        },
    )
    .await;
}
