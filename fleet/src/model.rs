//! What the fleet database stores, as types: roles, statuses and outcomes
//! are enums (their stored spelling lives here, once), never loose strings.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::db::DbError;

/// Declares a string-backed enum: its stored spelling, `FromStr` (a
/// malformed stored value is [`DbError::Corrupt`]), `Display` and serde.
macro_rules! stored_enum {
    ($(#[$m:meta])* $name:ident, $column:literal { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// The stored spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = DbError;
            fn from_str(s: &str) -> Result<Self, DbError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(DbError::Corrupt($column)),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_enum!(
    /// Which daemon a certificate identifies.
    CertRole, "certificates.role" {
        /// A worker's agent (CN = host).
        Agent => "agent",
        /// A worker's updater (CN = `updater@host`).
        Updater => "updater",
        /// The master itself.
        Master => "master",
        /// A metrics scraper (`monitor@name`).
        Monitor => "monitor",
        /// An operator of the fleet API (`operator@name`).
        Operator => "operator",
    }
);

impl CertRole {
    /// The role of a verified peer's certificate.
    pub fn of(role: &decnet_pki::Role) -> CertRole {
        match role {
            decnet_pki::Role::Agent(_) => CertRole::Agent,
            decnet_pki::Role::Updater(_) => CertRole::Updater,
            decnet_pki::Role::Master => CertRole::Master,
            decnet_pki::Role::Monitor(_) => CertRole::Monitor,
            decnet_pki::Role::Operator(_) => CertRole::Operator,
        }
    }
}

stored_enum!(
    /// Lifecycle of a host in the inventory.
    HostStatus, "hosts.status" {
        /// Certificates issued, never heard from.
        Enrolled => "enrolled",
        /// Answered its last probe or heartbeat.
        Active => "active",
        /// Did not answer its last probe, or went silent.
        Unreachable => "unreachable",
        /// Removed from the fleet; its certificates are revoked.
        Decommissioned => "decommissioned",
        /// Two live holders of its identity were seen (a cloned key): its
        /// renewals are frozen until an operator burns it.
        Suspect => "suspect",
        /// Every certificate revoked after a compromise; re-admitted by a
        /// fresh join or a reissue.
        Burned => "burned",
    }
);

impl HostStatus {
    /// Statuses only an operator's action ends: contacts and heartbeats
    /// never overwrite them.
    pub fn is_sticky(self) -> bool {
        matches!(
            self,
            HostStatus::Decommissioned | HostStatus::Suspect | HostStatus::Burned
        )
    }
}

stored_enum!(
    /// How an audited action ended.
    AuditOutcome, "audit_log.outcome" {
        /// Done.
        Ok => "ok",
        /// Refused (bad input, not allowed, not confirmed).
        Refused => "refused",
        /// Tried and failed.
        Failed => "failed",
        /// Done on some targets, failed on others.
        Partial => "partial",
    }
);

stored_enum!(
    /// What an update-history row records.
    UpdateKind, "update_history.kind" {
        /// A release pushed to the agent's slots.
        Update => "update",
        /// A manual rollback to the previous slot.
        Rollback => "rollback",
        /// A release of the updater itself.
        UpdateSelf => "update_self",
        /// A release of the agent, then of the updater.
        UpdateAndSelf => "update+self",
    }
);

stored_enum!(
    /// How an update, rollback or self-update ended on one host.
    UpdateOutcome, "update_history.outcome" {
        /// The new release is live and healthy.
        Updated => "updated",
        /// The new release was unhealthy; the previous one runs again.
        RolledBack => "rolled_back",
        /// It failed (nothing to roll back to, the revert failed, or the host
        /// could not be reached).
        Failed => "failed",
        /// Not attempted (a halted rollout).
        Skipped => "skipped",
    }
);

/// One worker host as the master knows it.
#[derive(Clone, Debug, Serialize)]
pub struct HostRecord {
    /// Host name (the agent CN).
    pub name: String,
    /// Address the master dials.
    pub address: String,
    /// Agent port.
    pub agent_port: u16,
    /// Updater port.
    pub updater_port: u16,
    /// SANs in the agent certificate.
    pub sans: Vec<String>,
    /// Fingerprint of the current agent certificate.
    pub agent_fingerprint: Option<String>,
    /// Fingerprint of the current updater certificate, if one was issued.
    pub updater_fingerprint: Option<String>,
    /// A renewed agent certificate the agent has not presented yet.
    pub agent_pending: Option<String>,
    /// A renewed updater certificate the updater has not presented yet.
    pub updater_pending: Option<String>,
    /// Lifecycle state.
    pub status: HostStatus,
    /// When it was enrolled (unix seconds).
    pub enrolled_at: i64,
    /// Last change of this record (unix seconds).
    pub updated_at: i64,
    /// Last successful contact (unix seconds).
    pub last_seen: Option<i64>,
    /// Last contact error, if the last contact failed.
    pub last_error: Option<String>,
    /// Agent version reported at the last contact.
    pub agent_version: Option<String>,
    /// Last reported deployment state (JSON).
    pub state_json: Option<String>,
    /// The host's clock minus the master's at its last heartbeat (ms).
    pub clock_skew_ms: Option<i64>,
    /// When its last heartbeat arrived (unix seconds); `None`: it sends
    /// none (its agent runs without `--master`), so its silence cannot be
    /// noticed and it is never marked unreachable for it.
    pub last_heartbeat: Option<i64>,
}

impl HostRecord {
    /// A fresh record of `name`, never contacted.
    pub fn new(name: &str, address: &str, agent_port: u16, updater_port: u16) -> Self {
        HostRecord {
            name: name.to_string(),
            address: address.to_string(),
            agent_port,
            updater_port,
            sans: Vec::new(),
            agent_fingerprint: None,
            updater_fingerprint: None,
            agent_pending: None,
            updater_pending: None,
            status: HostStatus::Enrolled,
            enrolled_at: 0,
            updated_at: 0,
            last_seen: None,
            last_error: None,
            agent_version: None,
            state_json: None,
            clock_skew_ms: None,
            last_heartbeat: None,
        }
    }

    /// The fingerprints the master accepts when it dials `role` of this
    /// host: the current certificate and a renewed one not yet presented.
    pub fn pins(&self, role: CertRole) -> Vec<decnet_pki::Fingerprint> {
        let (cur, pending) = match role {
            CertRole::Updater => (&self.updater_fingerprint, &self.updater_pending),
            _ => (&self.agent_fingerprint, &self.agent_pending),
        };
        [cur, pending]
            .into_iter()
            .flatten()
            .filter_map(|f| f.parse().ok())
            .collect()
    }
}

/// A certificate in the issuance ledger.
#[derive(Clone, Debug)]
pub struct CertRecord {
    /// SHA-256 fingerprint, lowercase hex.
    pub fingerprint: String,
    /// Host it was issued for (`decnet-master` for the master's own).
    pub host: String,
    /// Which daemon it identifies.
    pub role: CertRole,
    /// Serial, lowercase hex.
    pub serial: String,
    /// End of validity (unix seconds).
    pub not_after: i64,
    /// Fingerprint of the CA that signed it (`None`: the fleet's first CA,
    /// or not known).
    pub ca: Option<String>,
}

impl CertRecord {
    /// The ledger entry of a freshly issued leaf.
    pub fn of_leaf(leaf: &decnet_pki::IssuedLeaf, host: &str, role: CertRole) -> Self {
        CertRecord {
            fingerprint: leaf.fingerprint.to_hex(),
            host: host.to_string(),
            role,
            serial: leaf.serial.clone(),
            ca: Some(leaf.issuer.to_hex()),
            not_after: leaf.not_after.unix_timestamp(),
        }
    }
}

/// One audit log entry.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    /// When (unix seconds).
    pub at: i64,
    /// Who (`cli:<user>`, `api:<cn>`, `join:<address>`, …).
    pub actor: String,
    /// What (`swarm.enroll`, …).
    pub action: String,
    /// On what (usually a host name).
    pub target: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Free text; never a secret.
    pub detail: String,
    /// Where the request came from (the fleet API client's address), when
    /// the action was an operator's request; see [`with_audit_source`].
    pub source: Option<String>,
}

tokio::task_local! {
    static AUDIT_SOURCE: String;
}

/// Run `fut` with `source` (a client's address) as the source of every
/// audit entry made in it ([`AuditEntry::now`]): the fleet API sets it
/// once, around each operator request, so no operation has to carry it.
pub async fn with_audit_source<F: std::future::Future>(source: String, fut: F) -> F::Output {
    AUDIT_SOURCE.scope(source, fut).await
}

/// The audit source of the running task, if one was set: for a background
/// task started by a request to carry it on ([`with_audit_source`]).
pub fn current_audit_source() -> Option<String> {
    AUDIT_SOURCE.try_with(|s| s.clone()).ok()
}

impl AuditEntry {
    /// An entry stamped now.
    pub fn now(
        actor: impl Into<String>,
        action: &str,
        target: &str,
        outcome: AuditOutcome,
        detail: impl Into<String>,
    ) -> Self {
        AuditEntry {
            at: crate::db::unix_now(),
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome,
            detail: detail.into(),
            source: current_audit_source(),
        }
    }
}

/// One row of a host's update history.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateRecord {
    /// Host.
    pub host: String,
    /// When (unix seconds).
    pub at: i64,
    /// What was done.
    pub kind: UpdateKind,
    /// Release label.
    pub release: String,
    /// Tarball SHA-256.
    pub sha256: String,
    /// How it ended.
    pub outcome: UpdateOutcome,
    /// What happened.
    pub detail: String,
}

/// A stored join token (the secret itself is never stored).
#[derive(Clone, Debug)]
pub struct JoinToken {
    /// Public id (first part of the token).
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_hash: String,
    /// Host the token is bound to.
    pub host: String,
    /// Address the master will dial.
    pub address: String,
    /// Extra SANs.
    pub sans: Vec<String>,
    /// Whether an updater may join with it too.
    pub allow_updater: bool,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// When the agent joined with it.
    pub used_agent: Option<i64>,
    /// When the updater joined with it.
    pub used_updater: Option<i64>,
    /// Failed attempts with a wrong secret.
    pub failures: i64,
}

/// The longest agent version a worker may report.
pub const MAX_REPORTED_VERSION: usize = 64;

/// Whether `v` is an acceptable agent version as a worker reports it
/// (heartbeat, `/health`, `/status`): 1 to [`MAX_REPORTED_VERSION`] ASCII
/// letters, digits and `.`, `-`, `+`, `_`, `~` — what semver and release
/// labels use, and nothing a terminal would interpret.
pub fn is_reported_version(v: &str) -> bool {
    (1..=MAX_REPORTED_VERSION).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b))
}

#[cfg(test)]
mod reported_version_tests {
    use super::*;

    #[test]
    fn versions_are_plain_short_labels() {
        for ok in ["0.1.0", "1.2.3-rc1+g1a2b3c", "20261205_abc~1"] {
            assert!(is_reported_version(ok), "{ok}");
        }
        let long = "1".repeat(MAX_REPORTED_VERSION + 1);
        for bad in [
            "",
            "1.0\u{1b}[8m",
            "1.0 beta",
            "1.0\n",
            "v\u{202e}1",
            long.as_str(),
        ] {
            assert!(!is_reported_version(bad), "{bad:?}");
        }
    }
}
