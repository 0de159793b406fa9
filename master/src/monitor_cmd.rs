//! `decnet ca issue-monitor` / `revoke-monitor`: certificates for the
//! Prometheus server that scrapes the daemons' `/metrics` over mTLS.

use std::path::{Path, PathBuf};

use anyhow::Context;
use decnet_fleet::{AuditOutcome, CertRecord, CertRole};
use decnet_pki::{Bundle, BundleKind, HostName, LeafSpec, Role};

use crate::home::MasterHome;
use crate::usage::{UsageError, audit, open_db};

/// Where a monitor's bundle goes by default: `<home>/monitors/<name>`.
pub fn default_dir(home: &MasterHome, name: &HostName) -> PathBuf {
    home.home.join("monitors").join(name.as_str())
}

/// Issue `monitor@<name>` (key generated here, 0600), write its bundle to
/// `out`, record it (revoking the monitor's earlier certificates), audit.
pub async fn issue(home: &MasterHome, name: &str, out: Option<&Path>) -> anyhow::Result<()> {
    let name = HostName::new(name).map_err(|e| UsageError(format!("monitor name: {e}")))?;
    let layout = home.ca_layout();
    let db = open_db(home).await?;
    let ca = crate::authorities::signing_ca(&layout, &db).await?;
    let role = Role::Monitor(name.clone());
    let cn = role.cn();
    let leaf = ca
        .issue(&LeafSpec::for_role(&role, &[]))
        .context("issuing the monitor certificate")?;
    let dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_dir(home, &name));
    let bundle = Bundle::from_issued(BundleKind::Monitor, &leaf, ca.trust_pem())?;
    bundle
        .write(&dir)
        .with_context(|| format!("writing the monitor bundle to {}", dir.display()))?;
    let revoked = db
        .record_monitor(&CertRecord::of_leaf(&leaf, &cn, CertRole::Monitor))
        .await
        .context("recording the monitor certificate")?;
    audit(
        &db,
        "ca.issue_monitor",
        &cn,
        AuditOutcome::Ok,
        format!(
            "fingerprint={}{}",
            leaf.fingerprint,
            if revoked.is_empty() {
                String::new()
            } else {
                format!(" revoked={}", revoked.join(","))
            }
        ),
    )
    .await?;
    db.close().await;
    println!("monitor certificate {cn} issued");
    println!("  bundle:      {}", dir.display());
    println!("  fingerprint: {}", leaf.fingerprint);
    println!(
        "  expires:     {}",
        crate::table::format_time(leaf.not_after.unix_timestamp())
    );
    if !revoked.is_empty() {
        println!(
            "  revoked:     {} earlier certificate(s) of this monitor",
            revoked.len()
        );
    }
    println!(
        "Prometheus: scheme https, tls_config ca_file={0}/ca.crt cert_file={0}/monitor.crt key_file={0}/monitor.key (see packaging/prometheus/)",
        dir.display()
    );
    Ok(())
}

/// Revoke every certificate of `monitor@<name>`; the daemons refuse it from
/// their next revocation list.
pub async fn revoke(home: &MasterHome, name: &str) -> anyhow::Result<()> {
    let name = HostName::new(name).map_err(|e| UsageError(format!("monitor name: {e}")))?;
    let cn = Role::Monitor(name).cn();
    let db = open_db(home).await?;
    let revoked = db
        .revoke_monitor(&cn)
        .await
        .context("revoking the monitor")?;
    if revoked.is_empty() {
        audit(
            &db,
            "ca.revoke_monitor",
            &cn,
            AuditOutcome::Refused,
            "no live certificate",
        )
        .await?;
        db.close().await;
        return Err(UsageError(format!("{cn} has no live certificate")).into());
    }
    audit(
        &db,
        "ca.revoke_monitor",
        &cn,
        AuditOutcome::Ok,
        format!("revoked={}", revoked.join(",")),
    )
    .await?;
    db.close().await;
    println!(
        "{cn}: {} certificate(s) revoked; the master publishes the new revocation list within seconds, workers enforce it from their next heartbeat",
        revoked.len()
    );
    Ok(())
}
