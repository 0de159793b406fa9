//! The CA rotation under way, as the fleet database records it, and who
//! still depends on which CA.
//!
//! At most one rotation exists (one row of `ca_rotation`). It names the CA
//! the fleet is leaving (`old_ca`) and its successor (`new_ca`), by
//! fingerprint, and a direction: `forward` (new certificates are signed by
//! the successor; `finish` drops the old CA) or `back` (an abort: new
//! certificates are signed by the old CA again; completing it drops the
//! successor). Every master on the database reads it every second, so they
//! agree on it, and a restarted master resumes it.

use sqlx::Row;

use crate::db::{DbError, FleetDb, unix_now};

/// Which way a rotation is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationDirection {
    /// Toward the successor CA (`decnet ca rotation start`).
    Forward,
    /// Back to the old CA (`decnet ca rotation abort`).
    Back,
}

impl RotationDirection {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationDirection::Forward => "forward",
            RotationDirection::Back => "back",
        }
    }
}

/// The rotation under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationRecord {
    /// Fingerprint of the CA being retired.
    pub old_ca: String,
    /// Fingerprint of its successor.
    pub new_ca: String,
    /// Forward, or back (aborting).
    pub direction: RotationDirection,
    /// When it started (unix seconds).
    pub started_at: i64,
    /// Who started it.
    pub actor: String,
}

impl RotationRecord {
    /// The CA that signs new certificates now.
    pub fn signing_ca(&self) -> &str {
        match self.direction {
            RotationDirection::Forward => &self.new_ca,
            RotationDirection::Back => &self.old_ca,
        }
    }

    /// The CA that completing the rotation drops.
    pub fn leaving_ca(&self) -> &str {
        match self.direction {
            RotationDirection::Forward => &self.old_ca,
            RotationDirection::Back => &self.new_ca,
        }
    }
}

/// Which CA each current certificate of a host chains to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCa {
    /// The host.
    pub host: String,
    /// Its status.
    pub status: String,
    /// Last contact (unix seconds).
    pub last_seen: Option<i64>,
    /// The CA of its current agent certificate.
    pub agent_ca: Option<String>,
    /// The CA of its current updater certificate (`None` with
    /// `has_updater`: not known).
    pub updater_ca: Option<String>,
    /// Whether it has an updater certificate.
    pub has_updater: bool,
    /// The digest of the trust set its agent last reported.
    pub trust: Option<String>,
}

impl HostCa {
    /// Whether a certificate of this host is signed by `ca`.
    pub fn depends_on(&self, ca: &str) -> bool {
        self.agent_ca.as_deref() == Some(ca)
            || (self.has_updater && self.updater_ca.as_deref() == Some(ca))
    }
}

/// An operator's or monitor's live certificate and the CA that signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCa {
    /// Its CN (`operator@alice`, `monitor@prom`).
    pub cn: String,
    /// The CA.
    pub ca: String,
}

/// Why a rotation could not begin.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    /// One is already under way.
    #[error("a CA rotation is already under way (see `decnet ca rotation status`)")]
    UnderWay,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl FleetDb {
    /// The rotation under way, if any.
    pub async fn rotation(&self) -> Result<Option<RotationRecord>, DbError> {
        let row = sqlx::query(
            "SELECT old_ca, new_ca, direction, started_at, actor FROM ca_rotation WHERE id = 1",
        )
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let direction = match r.try_get::<String, _>(2)?.as_str() {
            "forward" => RotationDirection::Forward,
            "back" => RotationDirection::Back,
            _ => return Err(DbError::Corrupt("ca_rotation.direction")),
        };
        Ok(Some(RotationRecord {
            old_ca: r.try_get(0)?,
            new_ca: r.try_get(1)?,
            direction,
            started_at: r.try_get(3)?,
            actor: r.try_get(4)?,
        }))
    }

    /// Record the start of a rotation from `old_ca` to `new_ca`. Every
    /// certificate whose CA is not recorded (issued before CAs were) is
    /// recorded as `old_ca`'s.
    pub async fn begin_rotation(
        &self,
        old_ca: &str,
        new_ca: &str,
        actor: &str,
    ) -> Result<RotationRecord, BeginError> {
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM ca_rotation WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(DbError::from)?
            .is_some();
        if exists {
            return Err(BeginError::UnderWay);
        }
        sqlx::query("UPDATE certificates SET ca = $1 WHERE ca IS NULL")
            .bind(old_ca)
            .execute(&mut *tx)
            .await
            .map_err(DbError::from)?;
        let now = unix_now();
        sqlx::query(
            "INSERT INTO ca_rotation (id, old_ca, new_ca, direction, started_at, actor) \
             VALUES (1, $1, $2, 'forward', $3, $4)",
        )
        .bind(old_ca)
        .bind(new_ca)
        .bind(now)
        .bind(actor)
        .execute(&mut *tx)
        .await
        .map_err(DbError::from)?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(RotationRecord {
            old_ca: old_ca.into(),
            new_ca: new_ca.into(),
            direction: RotationDirection::Forward,
            started_at: now,
            actor: actor.into(),
        })
    }

    /// Turn the rotation around (an abort): new certificates are signed by
    /// the old CA again.
    pub async fn reverse_rotation(&self) -> Result<bool, DbError> {
        let n = sqlx::query("UPDATE ca_rotation SET direction = 'back' WHERE id = 1")
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Forget the rotation (completed or aborted).
    pub async fn end_rotation(&self) -> Result<(), DbError> {
        sqlx::query("DELETE FROM ca_rotation WHERE id = 1")
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Every host that is not decommissioned, with the CA of each of its
    /// current certificates.
    pub async fn host_cas(&self) -> Result<Vec<HostCa>, DbError> {
        let rows = sqlx::query(
            "SELECT h.name, h.status, h.last_seen, a.ca, u.ca, h.updater_fingerprint, h.trust \
             FROM hosts h \
             LEFT JOIN certificates a ON a.fingerprint = h.agent_fingerprint \
             LEFT JOIN certificates u ON u.fingerprint = h.updater_fingerprint \
             WHERE h.status <> 'decommissioned' ORDER BY h.name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HostCa {
                    host: r.try_get(0)?,
                    status: r.try_get(1)?,
                    last_seen: r.try_get(2)?,
                    agent_ca: r.try_get(3)?,
                    updater_ca: r.try_get(4)?,
                    has_updater: r.try_get::<Option<String>, _>(5)?.is_some(),
                    trust: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// The live (unexpired, unrevoked) operator and monitor certificates
    /// signed by `ca`.
    pub async fn clients_of_ca(&self, ca: &str) -> Result<Vec<ClientCa>, DbError> {
        let rows = sqlx::query(
            "SELECT DISTINCT c.host FROM certificates c \
             WHERE c.role IN ('operator', 'monitor') AND c.ca = $1 AND c.not_after > $2 \
             AND c.fingerprint NOT IN (SELECT fingerprint FROM revoked_certificates) \
             ORDER BY c.host",
        )
        .bind(ca)
        .bind(unix_now())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ClientCa {
                    cn: r.try_get(0)?,
                    ca: ca.to_string(),
                })
            })
            .collect()
    }
}
