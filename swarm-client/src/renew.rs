//! Certificate renewal, worker side: a fresh key generated here, a CSR sent
//! to the master's control API over mTLS with the current certificate, the
//! new certificate written as the bundle (key 0600).

use std::path::Path;
use std::time::Duration;

use decnet_pki::{Bundle, Fingerprint};

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenewError(pub String);

/// When the certificate of `bundle` should be renewed: at about 2/3 of its
/// lifetime (±5 % jitter so a fleet enrolled at once does not renew at once).
pub fn renewal_due(bundle: &Bundle) -> time::OffsetDateTime {
    // Our CA backdates notBefore by CLOCK_SKEW; count the lifetime from
    // the issue time, or short-lived certificates would renew at once.
    let mut nb = bundle.identity.not_before;
    if bundle.identity.not_after - nb > decnet_pki::ca::CLOCK_SKEW {
        nb += decnet_pki::ca::CLOCK_SKEW;
    }
    let life = bundle.identity.not_after - nb;
    let r = u64::from_str_radix(&decnet_pki::random_hex(2), 16).unwrap_or(0) as f64 / 65536.0;
    nb + life * ((2.0 / 3.0) + (r - 0.5) * 0.1)
}

/// Renew `bundle` with the master at `master` (`host:port`) and write the
/// new bundle into `dir`. Returns the new bundle.
pub async fn renew(
    master: &str,
    bundle: &Bundle,
    pin: Option<Fingerprint>,
    dir: &Path,
) -> Result<Bundle, RenewError> {
    let cfg = decnet_pki::client_config(bundle, pin).map_err(|e| RenewError(e.to_string()))?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| RenewError(e.to_string()))?;
    let (key_pem, csr) = decnet_pki::ca::generate_csr(&bundle.identity.cn)
        .map_err(|e| RenewError(format!("cannot generate a key: {e}")))?;
    let resp = client
        .post(format!("https://{master}/renew"))
        .json(&serde_json::json!({ "csr": csr }))
        .send()
        .await
        .map_err(|e| RenewError(format!("cannot reach the master: {e}")))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.map_err(|e| RenewError(e.to_string()))?;
    if !status.is_success() {
        return Err(RenewError(format!(
            "the master refused the renewal ({status}): {}",
            body["detail"].as_str().unwrap_or("-")
        )));
    }
    let cert_pem = body["cert_pem"]
        .as_str()
        .ok_or_else(|| RenewError("no certificate in the answer".into()))?;
    let identity =
        decnet_pki::PeerIdentity::from_pem(cert_pem).map_err(|e| RenewError(e.to_string()))?;
    if identity.role != bundle.identity.role {
        return Err(RenewError(
            "the renewed certificate names another role".into(),
        ));
    }
    let new = Bundle {
        kind: bundle.kind,
        cert_pem: cert_pem.to_string(),
        key_pem,
        ca_pem: bundle.ca_pem.clone(),
        identity,
    };
    new.write(dir)
        .map_err(|e| RenewError(format!("cannot write the renewed bundle: {e}")))?;
    Ok(new)
}

/// Keep the bundle in `dir` renewed with the master at `master`, forever: at
/// [`renewal_due`], or at once when `renew_now` is notified. `on_renewed` is
/// called with each new bundle (to swap the served certificate and rebuild
/// clients). Failures are retried sooner as expiry approaches.
pub async fn keep_renewed(
    kind: decnet_pki::BundleKind,
    dir: std::path::PathBuf,
    master: String,
    pin: Option<Fingerprint>,
    renew_now: std::sync::Arc<tokio::sync::Notify>,
    on_renewed: impl Fn(&Bundle) + Send,
) {
    loop {
        let bundle = match Bundle::load(&dir, kind) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "renewal: cannot read the bundle");
                tokio::time::sleep(Duration::from_secs(30)).await;
                continue;
            }
        };
        let wait =
            (renewal_due(&bundle) - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(wait.as_seconds_f64())) => {}
            _ = renew_now.notified() => tracing::info!("the master asked for a certificate renewal"),
        }
        match renew(&master, &bundle, pin, &dir).await {
            Ok(new) => {
                on_renewed(&new);
                tracing::info!(
                    fingerprint = %new.identity.fingerprint,
                    not_after = %new.identity.not_after,
                    "certificate renewed and now served"
                );
            }
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
