//! Who may speak for a host, and certificate renewal that retires what it
//! replaces.
//!
//! Each host has, per role, one **current** certificate, at most one
//! **pending** one (renewed, not yet presented by the worker) and possibly
//! **retiring** ones (replaced, accepted until their `retire_at`, then
//! revoked by [`FleetDb::retire_due`]):
//!
//! * [`FleetDb::authenticate`] decides whether a presented certificate
//!   speaks for its host: current → yes; pending → it becomes current now
//!   (the worker has it, so the renewal took) and the old current starts
//!   retiring; retiring and within its grace → yes; anything else → no.
//! * [`FleetDb::renew`] signs a CSR only for the *current* certificate of a
//!   host (compare-and-set on it, inside the host's lock), at most once per
//!   minimum interval per host and role, and makes the new certificate
//!   pending — forgetting any earlier pending one (never presented, so
//!   nobody else holds it: it is deleted, not published in the CRL). A
//!   stolen key therefore stops renewing as soon as the real host has
//!   renewed, and is revoked when its grace ends. The cheap refusals (a
//!   malformed CSR, too soon) are decided before the host's write lock.

use std::time::Duration;

use decnet_pki::{CertificateAuthority, LeafSpec, PeerIdentity, Role};
use sqlx::Row;

use crate::db::{DbError, FleetDb, forget_unpresented, insert_certificate, revoke, unix_now};
use crate::model::{AuditEntry, AuditOutcome, CertRecord, CertRole, HostStatus};

/// How a presented certificate stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The host's current certificate.
    Current,
    /// It was pending and is current from now on.
    Promoted,
    /// Replaced by a renewal, still accepted until `until` (unix seconds).
    Retiring {
        /// End of its grace.
        until: i64,
    },
}

/// Why a presented certificate does not speak for its host.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    /// The CN names no host we know.
    #[error("host {0} is not enrolled")]
    UnknownHost(String),
    /// The host was decommissioned.
    #[error("host {0} is decommissioned")]
    Decommissioned(String),
    /// The host was burned: every certificate it had is revoked.
    #[error("host {0} was burned after a compromise; it must join again")]
    Burned(String),
    /// Two holders of the host's identity were seen: renewals are frozen.
    #[error(
        "host {0} is suspect (two holders of its identity were seen): renewals are frozen until an operator burns it"
    )]
    Suspect(String),
    /// The certificate is on the deny list.
    #[error("this certificate is revoked")]
    Revoked,
    /// We did not issue it to this host and role.
    #[error("this certificate was not issued to {0}")]
    NotIssuedToPeer(String),
    /// A newer certificate replaced it and its grace is over (or it is the
    /// wrong thing to renew with).
    #[error("this certificate was replaced by a newer one; use the current certificate")]
    Superseded,
    /// The master does not renew or authenticate itself here.
    #[error("the master's own certificate is not accepted here")]
    Master,
    /// A monitor's or an operator's certificate speaks for no host.
    #[error("a monitor or operator certificate is not accepted here")]
    Monitor,
    /// Renewed too recently.
    #[error("renewed less than {0}s ago; try again later")]
    TooSoon(u64),
    /// The CSR is unusable.
    #[error("the CSR is not a valid, self-signed PKCS#10 request")]
    BadCsr,
    /// The fleet database failed.
    #[error("fleet database unavailable")]
    Unavailable,
}

impl PeerRefusal {
    /// A stable short name (API error kind, audit detail).
    pub fn kind(&self) -> &'static str {
        match self {
            PeerRefusal::UnknownHost(_) => "unknown_host",
            PeerRefusal::Unavailable => "unavailable",
            PeerRefusal::TooSoon(_) => "rate_limited",
            PeerRefusal::BadCsr => "bad_request",
            _ => "forbidden",
        }
    }
}

impl From<DbError> for PeerRefusal {
    fn from(e: DbError) -> Self {
        tracing::error!(error = %e, "fleet database unavailable");
        PeerRefusal::Unavailable
    }
}

/// How long after a renewed certificate was first presented the one it
/// replaced may still be seen at the control API: a request already in
/// flight. Later, someone else holds the old key — a clone.
pub const CLONE_TOLERANCE: Duration = Duration::from_secs(5);

impl Standing {
    /// Whether this is a replaced certificate still in use longer after its
    /// successor was presented than [`CLONE_TOLERANCE`] allows: the worker
    /// switches to a renewed certificate at once, so whoever still uses
    /// the old one holds a copy of the key. `grace` is the policy's (the
    /// successor was presented at `until - grace`), `now` in unix seconds.
    pub fn outlives_its_successor(&self, grace: Duration, now: i64) -> bool {
        match self {
            Standing::Retiring { until } => {
                let presented_at = until - grace.as_secs() as i64;
                now - presented_at > CLONE_TOLERANCE.as_secs() as i64
            }
            _ => false,
        }
    }
}

/// The rules of renewal.
#[derive(Clone, Debug)]
pub struct RenewPolicy {
    /// Validity of renewed certificates.
    pub validity: Duration,
    /// At most one renewal per host and role within this.
    pub min_interval: Duration,
    /// How long a replaced certificate stays accepted after its successor
    /// was first presented.
    pub grace: Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        RenewPolicy {
            validity: Duration::from_secs(825 * 86_400),
            min_interval: Duration::from_secs(60),
            grace: Duration::from_secs(300),
        }
    }
}

/// A renewed certificate, pending until the worker presents it.
#[derive(Clone, Debug)]
pub struct Renewed {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The pending certificate it replaced (never presented: forgotten), if any.
    pub superseded_pending: Option<String>,
}

/// The host and role a worker's certificate claims.
fn host_and_role(peer: &PeerIdentity) -> Result<(String, CertRole), PeerRefusal> {
    match &peer.role {
        Role::Agent(h) => Ok((h.to_string(), CertRole::Agent)),
        Role::Updater(h) => Ok((h.to_string(), CertRole::Updater)),
        Role::Master => Err(PeerRefusal::Master),
        Role::Monitor(_) | Role::Operator(_) => Err(PeerRefusal::Monitor),
    }
}

/// The statements that differ only in the role's columns (static strings:
/// sqlx takes no SQL built at run time).
struct RoleSql {
    promote: &'static str,
    set_pending: &'static str,
}

fn role_sql(role: CertRole) -> RoleSql {
    match role {
        CertRole::Updater => RoleSql {
            promote: "UPDATE hosts SET updater_fingerprint = $1, updater_pending = NULL, updated_at = $2 WHERE name = $3",
            set_pending: "UPDATE hosts SET updater_pending = $1, updater_renewed_at = $2, updated_at = $2 \
                          WHERE name = $3 AND updater_fingerprint = $4",
        },
        _ => RoleSql {
            promote: "UPDATE hosts SET agent_fingerprint = $1, agent_pending = NULL, updated_at = $2 WHERE name = $3",
            set_pending: "UPDATE hosts SET agent_pending = $1, agent_renewed_at = $2, updated_at = $2, \
                          renew_requested = NULL WHERE name = $3 AND agent_fingerprint = $4",
        },
    }
}

impl FleetDb {
    /// Whether `peer` (a verified worker certificate) speaks for its host;
    /// a pending certificate is promoted to current here. One read in the
    /// common case (the current certificate).
    pub async fn authenticate(
        &self,
        peer: &PeerIdentity,
        grace: Duration,
    ) -> Result<Standing, PeerRefusal> {
        let (host, role) = host_and_role(peer)?;
        let fp = peer.fingerprint.to_hex();
        let row = sqlx::query(
            "SELECT h.status, h.agent_fingerprint, h.updater_fingerprint, h.agent_pending, h.updater_pending, \
             c.host, c.role, c.retire_at, CAST(CASE WHEN r.fingerprint IS NULL THEN 0 ELSE 1 END AS BIGINT) \
             FROM hosts h LEFT JOIN certificates c ON c.fingerprint = $2 \
             LEFT JOIN revoked_certificates r ON r.fingerprint = $2 WHERE h.name = $1",
        )
        .bind(&host)
        .bind(&fp)
        .fetch_optional(self.pool())
        .await
        .map_err(DbError::from)?;
        let Some(row) = row else {
            return Err(PeerRefusal::UnknownHost(host));
        };
        let get = |i| row.try_get::<Option<String>, _>(i).map_err(DbError::from);
        let status: HostStatus = row
            .try_get::<String, _>(0)
            .map_err(DbError::from)?
            .parse()?;
        match status {
            HostStatus::Decommissioned => return Err(PeerRefusal::Decommissioned(host)),
            HostStatus::Burned => return Err(PeerRefusal::Burned(host)),
            _ => {}
        }
        if row.try_get::<i64, _>(8).map_err(DbError::from)? != 0 {
            return Err(PeerRefusal::Revoked);
        }
        let issued_to = (get(5)?, get(6)?);
        if issued_to.0.as_deref() != Some(host.as_str())
            || issued_to.1.as_deref() != Some(role.as_str())
        {
            return Err(PeerRefusal::NotIssuedToPeer(peer.cn.clone()));
        }
        let (current, pending) = match role {
            CertRole::Updater => (get(2)?, get(4)?),
            _ => (get(1)?, get(3)?),
        };
        if current.as_deref() == Some(fp.as_str()) {
            return Ok(Standing::Current);
        }
        if pending.as_deref() == Some(fp.as_str()) {
            return self.promote(&host, role, &fp, grace).await;
        }
        match row.try_get::<Option<i64>, _>(7).map_err(DbError::from)? {
            Some(until) if until > unix_now() => Ok(Standing::Retiring { until }),
            _ => Err(PeerRefusal::Superseded),
        }
    }

    /// Make the pending certificate `fp` of `host` current; the replaced
    /// one retires after `grace`.
    async fn promote(
        &self,
        host: &str,
        role: CertRole,
        fp: &str,
        grace: Duration,
    ) -> Result<Standing, PeerRefusal> {
        let (mut tx, record) = self.lock_host(host).await?;
        let Some(record) = record else {
            return Err(PeerRefusal::UnknownHost(host.to_string()));
        };
        let (current, pending) = match role {
            CertRole::Updater => (record.updater_fingerprint, record.updater_pending),
            _ => (record.agent_fingerprint, record.agent_pending),
        };
        if current.as_deref() == Some(fp) {
            // Another request promoted it first.
            return Ok(Standing::Current);
        }
        if pending.as_deref() != Some(fp) {
            // A reissue or a newer renewal came first.
            return Err(PeerRefusal::Superseded);
        }
        sqlx::query(role_sql(role).promote)
            .bind(fp)
            .bind(unix_now())
            .bind(host)
            .execute(&mut *tx)
            .await
            .map_err(DbError::from)?;
        if let Some(old) = &current {
            sqlx::query(
                "UPDATE certificates SET retire_at = $1 WHERE fingerprint = $2 AND retire_at IS NULL",
            )
            .bind(unix_now() + grace.as_secs() as i64)
            .bind(old)
            .execute(&mut *tx)
            .await
            .map_err(DbError::from)?;
        }
        tx.commit().await.map_err(DbError::from)?;
        self.count_promotion();
        tracing::info!(host, role = %role, fingerprint = fp, "renewed certificate presented; it is now current");
        let _ = self
            .audit(&AuditEntry::now(
                format!("api:{host}"),
                "swarm.renew.promote",
                host,
                AuditOutcome::Ok,
                format!(
                    "role={role} current={fp} retiring={}",
                    current.as_deref().unwrap_or("-")
                ),
            ))
            .await;
        Ok(Standing::Promoted)
    }

    /// Renew `peer`'s certificate with the public key of `csr_pem`: see the
    /// module docs. The new certificate carries the host's recorded SANs.
    pub async fn renew(
        &self,
        ca: &CertificateAuthority,
        peer: &PeerIdentity,
        csr_pem: &str,
        policy: &RenewPolicy,
    ) -> Result<Renewed, PeerRefusal> {
        match self.authenticate(peer, policy.grace).await? {
            Standing::Current | Standing::Promoted => {}
            Standing::Retiring { .. } => return Err(PeerRefusal::Superseded),
        }
        let (host, role) = host_and_role(peer)?;
        let presented = peer.fingerprint.to_hex();
        // Refusals that need no lock come first: a flood of bad or early
        // renewals costs reads, never the database's write lock.
        CertificateAuthority::check_csr(csr_pem).map_err(|_| PeerRefusal::BadCsr)?;
        if self
            .last_renewed(&host, role)
            .await?
            .is_some_and(|last| unix_now() - last < policy.min_interval.as_secs() as i64)
        {
            return Err(PeerRefusal::TooSoon(policy.min_interval.as_secs()));
        }
        let (mut tx, record) = self.lock_host(&host).await?;
        let Some(record) = record else {
            return Err(PeerRefusal::UnknownHost(host));
        };
        match record.status {
            HostStatus::Decommissioned => return Err(PeerRefusal::Decommissioned(host)),
            HostStatus::Burned => return Err(PeerRefusal::Burned(host)),
            // Whoever renewed now would keep the identity: nobody does.
            HostStatus::Suspect => return Err(PeerRefusal::Suspect(host)),
            _ => {}
        }
        let (current, pending) = match role {
            CertRole::Updater => (&record.updater_fingerprint, &record.updater_pending),
            _ => (&record.agent_fingerprint, &record.agent_pending),
        };
        // Compare-and-set: only the current certificate renews.
        if current.as_deref() != Some(presented.as_str()) {
            return Err(PeerRefusal::Superseded);
        }
        let row =
            sqlx::query("SELECT agent_renewed_at, updater_renewed_at FROM hosts WHERE name = $1")
                .bind(&host)
                .fetch_one(&mut *tx)
                .await
                .map_err(DbError::from)?;
        let last: Option<i64> = row
            .try_get(if role == CertRole::Updater { 1 } else { 0 })
            .map_err(DbError::from)?;
        let min = policy.min_interval.as_secs() as i64;
        if let Some(last) = last
            && unix_now() - last < min
        {
            return Err(PeerRefusal::TooSoon(policy.min_interval.as_secs()));
        }
        let now = time::OffsetDateTime::now_utc();
        let validity =
            time::Duration::try_from(policy.validity).map_err(|_| PeerRefusal::BadCsr)?;
        let spec = LeafSpec::for_role(&peer.role, &record.sans)
            .with_validity(now - decnet_pki::ca::CLOCK_SKEW, now + validity);
        let leaf = ca
            .sign_csr(&spec, csr_pem)
            .map_err(|_| PeerRefusal::BadCsr)?;
        let new_fp = leaf.fingerprint.to_hex();
        insert_certificate(&mut tx, &CertRecord::of_leaf(&leaf, &host, role)).await?;
        let mut superseded_pending = None;
        if let Some(old) = pending {
            forget_unpresented(&mut tx, old).await?;
            superseded_pending = Some(old.clone());
        }
        let n = sqlx::query(role_sql(role).set_pending)
            .bind(&new_fp)
            .bind(unix_now())
            .bind(&host)
            .bind(&presented)
            .execute(&mut *tx)
            .await
            .map_err(DbError::from)?
            .rows_affected();
        if n != 1 {
            return Err(PeerRefusal::Superseded);
        }
        tx.commit().await.map_err(DbError::from)?;
        Ok(Renewed {
            cert_pem: leaf.cert_pem,
            fingerprint: new_fp,
            superseded_pending,
        })
    }

    /// When `host` last renewed its `role` certificate (unix seconds).
    async fn last_renewed(&self, host: &str, role: CertRole) -> Result<Option<i64>, DbError> {
        let row =
            sqlx::query("SELECT agent_renewed_at, updater_renewed_at FROM hosts WHERE name = $1")
                .bind(host)
                .fetch_optional(self.pool())
                .await?;
        Ok(match row {
            Some(r) => r.try_get(if role == CertRole::Updater { 1 } else { 0 })?,
            None => None,
        })
    }

    /// Revoke every retiring certificate whose grace is over. Returns the
    /// newly revoked fingerprints.
    pub async fn retire_due(&self) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "SELECT fingerprint, host, role FROM certificates WHERE retire_at IS NOT NULL AND retire_at <= $1 \
             AND fingerprint NOT IN (SELECT fingerprint FROM revoked_certificates)",
        )
        .bind(unix_now())
        .fetch_all(self.pool())
        .await?;
        let mut revoked = Vec::new();
        for r in rows {
            let fp: String = r.try_get(0)?;
            let host: String = r.try_get(1)?;
            let role: CertRole = r.try_get::<String, _>(2)?.parse()?;
            let (mut tx, _) = self.lock_host(&host).await?;
            if revoke(
                &mut tx,
                &fp,
                &host,
                role,
                "replaced by a renewal; grace over",
            )
            .await?
            {
                revoked.push(fp);
            }
            tx.commit().await?;
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_certificate_used_after_its_tolerance_is_a_second_holder() {
        let grace = Duration::from_secs(300);
        let presented_at = 1_000_000;
        let s = Standing::Retiring {
            until: presented_at + 300,
        };
        assert!(!s.outlives_its_successor(grace, presented_at + 1));
        assert!(!s.outlives_its_successor(grace, presented_at + 5));
        assert!(s.outlives_its_successor(grace, presented_at + 6));
        assert!(!Standing::Current.outlives_its_successor(grace, presented_at + 100));
        assert!(!Standing::Promoted.outlives_its_successor(grace, presented_at + 100));
    }
}
