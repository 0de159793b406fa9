//! What every local command shares: who is acting (for the audit log),
//! opening the database and the CA, and writing audit records. The
//! usage-error type and exit codes are `decnet-cli`'s, re-exported here.

use anyhow::Context;
use decnet_fleet::{AuditEntry, AuditOutcome, FleetDb};
use decnet_pki::{CaLayout, CertificateAuthority};

use crate::home::MasterHome;

pub use decnet_cli::exit::{ExitWith, UsageError, exit_code, partial};

/// Who runs this CLI, for the audit log.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(os_user);
    format!("local:{user}")
}

/// The name of the real user id (from /proc and /etc/passwd), or `uid:N`.
fn os_user() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().next().map(str::to_string))
        });
    let Some(uid) = uid else {
        return "unknown".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// Open the fleet database named by `home`.
pub async fn open_db(home: &MasterHome) -> anyhow::Result<FleetDb> {
    FleetDb::connect(&home.database_url)
        .await
        .context("opening the fleet database (set --database-url or DECNET_DATABASE_URL)")
}

/// Open the fleet database named by `home`, run `f` on it, and close it
/// whatever `f` returned: what every local command does around its work,
/// in one place (a command that returned early used to leave it open).
pub async fn with_db<T>(
    home: &MasterHome,
    f: impl AsyncFnOnce(&FleetDb) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let db = open_db(home).await?;
    let r = f(&db).await;
    db.close().await;
    r
}

/// Load the CA, or a usage error naming `decnet ca init`.
pub fn load_ca(layout: &CaLayout) -> anyhow::Result<CertificateAuthority> {
    if !layout.ca_cert().exists() || !layout.ca_key().exists() {
        return Err(UsageError(format!(
            "no CA in {}; create one with `decnet ca init`",
            layout.root().display()
        ))
        .into());
    }
    CertificateAuthority::load(layout)
        .with_context(|| format!("loading the CA from {}", layout.root().display()))
}

/// Write an audit record for the CLI user.
pub async fn audit(
    db: &FleetDb,
    action: &str,
    target: &str,
    outcome: AuditOutcome,
    detail: impl Into<String>,
) -> anyhow::Result<()> {
    db.audit(&AuditEntry::now(
        cli_actor(),
        action,
        target,
        outcome,
        detail,
    ))
    .await
    .context("writing the audit log")
}
