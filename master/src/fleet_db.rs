//! The fleet database: hosts, the certificate ledger, the deny list of
//! revoked fingerprints and the audit log.
//!
//! One set of runtime queries runs on SQLite (the default, an embedded file)
//! and PostgreSQL through sqlx's `Any` driver; the schemas live in
//! `migrations/sqlite` and `migrations/postgres` and are applied at connect.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use time::OffsetDateTime;

/// Add an issued certificate to the ledger inside `tx`.
async fn insert_certificate(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    c: &CertRecord,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO certificates (fingerprint, host, role, serial, not_after, issued_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&c.fingerprint)
    .bind(&c.host)
    .bind(&c.role)
    .bind(&c.serial)
    .bind(c.not_after)
    .bind(unix_now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Put a fingerprint on the deny list inside `tx`; returns 1 when it was
/// not there yet.
async fn revoke(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    fingerprint: &str,
    host: &str,
    role: &str,
    reason: &str,
) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "INSERT INTO revoked_certificates (fingerprint, host, role, revoked_at, reason) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(fingerprint)
    .bind(host)
    .bind(role)
    .bind(unix_now())
    .bind(reason)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// The columns [`host_from_row`] reads, in its order (a macro so queries stay
/// static strings).
macro_rules! host_columns {
    () => {
        "name, address, agent_port, updater_port, sans, agent_fingerprint, updater_fingerprint, \
         status, enrolled_at, updated_at, last_seen, last_error, agent_version, state_json"
    };
}

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL names a database kind we do not support.
    #[error("unsupported database URL (expected sqlite://… or postgres://…)")]
    UnsupportedUrl,
    /// Connecting failed.
    #[error("cannot open the fleet database: {0}")]
    Connect(#[source] sqlx::Error),
    /// Applying the schema failed.
    #[error("cannot apply the fleet database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("fleet database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored value does not parse.
    #[error("fleet database holds a malformed value in {0}")]
    Corrupt(&'static str),
}

/// Which SQL dialect the pool speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Lifecycle of a host in the inventory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Certificates issued, never heard from.
    Enrolled,
    /// Answered its last probe or heartbeat.
    Active,
    /// Did not answer its last probe, or went silent.
    Unreachable,
    /// Removed from the fleet; its certificates are revoked.
    Decommissioned,
}

impl HostStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Enrolled => "enrolled",
            HostStatus::Active => "active",
            HostStatus::Unreachable => "unreachable",
            HostStatus::Decommissioned => "decommissioned",
        }
    }
}

impl FromStr for HostStatus {
    type Err = DbError;
    fn from_str(s: &str) -> Result<Self, DbError> {
        Ok(match s {
            "enrolled" => HostStatus::Enrolled,
            "active" => HostStatus::Active,
            "unreachable" => HostStatus::Unreachable,
            "decommissioned" => HostStatus::Decommissioned,
            _ => return Err(DbError::Corrupt("hosts.status")),
        })
    }
}

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
}

/// A certificate in the issuance ledger.
#[derive(Clone, Debug)]
pub struct CertRecord {
    /// SHA-256 fingerprint, lowercase hex.
    pub fingerprint: String,
    /// Host it was issued for (`decnet-master` for the master's own).
    pub host: String,
    /// `agent`, `updater` or `master`.
    pub role: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// End of validity (unix seconds).
    pub not_after: i64,
}

/// One audit log entry.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEntry {
    /// When (unix seconds).
    pub at: i64,
    /// Who (`cli:<user>`, `api:<cn>`, …).
    pub actor: String,
    /// What (`swarm.enroll`, …).
    pub action: String,
    /// On what (usually a host name).
    pub target: String,
    /// `ok`, `refused` or `failed`.
    pub outcome: String,
    /// Free text; never a secret.
    pub detail: String,
}

/// One row of a host's update history.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateRecord {
    /// Host.
    pub host: String,
    /// When (unix seconds).
    pub at: i64,
    /// `update`, `rollback` or `update_self`.
    pub kind: String,
    /// Release label.
    pub release: String,
    /// Tarball SHA-256.
    pub sha256: String,
    /// `updated`, `rolled_back`, `failed` or `skipped`.
    pub outcome: String,
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

/// Now, in unix seconds.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The default database URL for a decnet home: an SQLite file beside the CA.
pub fn default_url(home: &Path) -> String {
    format!("sqlite://{}?mode=rwc", home.join("master.db").display())
}

/// The fleet database: a connection pool plus the queries the master needs.
#[derive(Clone, Debug)]
pub struct FleetDb {
    pool: AnyPool,
    backend: Backend,
}

impl FleetDb {
    /// Open (creating an SQLite file if needed) and migrate.
    pub async fn connect(url: &str) -> Result<FleetDb, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl);
        };
        if let Some(parent) = sqlite_path(url).and_then(|p| Path::new(p).parent())
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            decnet_pki::secure_fs::ensure_private_dir(parent)
                .map_err(|e| DbError::Connect(sqlx::Error::Io(e)))?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets the CLI and the daemon read while one writes;
                        // busy_timeout makes concurrent writers wait, not fail.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(DbError::Connect)?;
        if let Some(path) = sqlite_path(url) {
            // The inventory is not secret like a key, but it is nobody else's
            // business either; SQLite's -wal/-shm files inherit this mode.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
        };
        // Several processes opening a brand-new database at once race to
        // apply the schema (SQLite has no migration lock): the loser sees the
        // winner's tables, and a second pass finds everything applied.
        let mut attempt = 0;
        loop {
            match migrator.run(&pool).await {
                Ok(()) => break,
                Err(_) if attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(FleetDb { pool, backend })
    }

    /// A write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and
    /// writes later fails with "database is locked" instead of waiting when
    /// another process committed in between.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, DbError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Which dialect this database speaks.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying pool (for daemons that add their own queries).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Close the pool, flushing SQLite's WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// One host by name.
    pub async fn host(&self, name: &str) -> Result<Option<HostRecord>, DbError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| host_from_row(&r)).transpose()
    }

    /// Every host, by name.
    pub async fn hosts(&self) -> Result<Vec<HostRecord>, DbError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            host_columns!(),
            " FROM hosts ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(host_from_row).collect()
    }

    /// Record a fresh enrollment (or re-enrollment): the host row, its new
    /// certificates in the ledger, and — atomically with them — the previous
    /// certificates of the host on the deny list.
    pub async fn record_enrollment(
        &self,
        host: &HostRecord,
        certs: &[CertRecord],
    ) -> Result<Vec<String>, DbError> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        let previous: Vec<(String, String)> =
            sqlx::query("SELECT fingerprint, role FROM certificates WHERE host = $1")
                .bind(&host.name)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
                .collect::<Result<_, sqlx::Error>>()?;
        let mut revoked = Vec::new();
        for (fp, role) in previous {
            if certs.iter().any(|c| c.fingerprint == fp) {
                continue;
            }
            let n = revoke(
                &mut tx,
                &fp,
                &host.name,
                &role,
                "superseded by re-enrollment",
            )
            .await?;
            if n > 0 {
                revoked.push(fp);
            }
        }
        for c in certs {
            insert_certificate(&mut tx, c).await?;
        }
        let sans = serde_json::to_string(&host.sans).map_err(|_| DbError::Corrupt("hosts.sans"))?;
        sqlx::query(
            "INSERT INTO hosts (name, address, agent_port, updater_port, sans, agent_fingerprint, \
             updater_fingerprint, status, enrolled_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (name) DO UPDATE SET address = excluded.address, agent_port = excluded.agent_port, \
             updater_port = excluded.updater_port, sans = excluded.sans, \
             agent_fingerprint = excluded.agent_fingerprint, updater_fingerprint = excluded.updater_fingerprint, \
             status = excluded.status, enrolled_at = excluded.enrolled_at, updated_at = excluded.updated_at, \
             last_seen = NULL, last_error = NULL, state_json = NULL",
        )
        .bind(&host.name)
        .bind(&host.address)
        .bind(i64::from(host.agent_port))
        .bind(i64::from(host.updater_port))
        .bind(sans)
        .bind(&host.agent_fingerprint)
        .bind(&host.updater_fingerprint)
        .bind(host.status.as_str())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Change where the master dials a host (it moved, or its ports changed).
    pub async fn update_endpoint(
        &self,
        name: &str,
        address: Option<&str>,
        agent_port: Option<u16>,
        updater_port: Option<u16>,
    ) -> Result<bool, DbError> {
        let n = sqlx::query(
            "UPDATE hosts SET address = COALESCE($1, address), agent_port = COALESCE($2, agent_port), \
             updater_port = COALESCE($3, updater_port), updated_at = $4 WHERE name = $5",
        )
        .bind(address)
        .bind(agent_port.map(i64::from))
        .bind(updater_port.map(i64::from))
        .bind(unix_now())
        .bind(name)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Mark a host decommissioned and put every certificate ever issued to it
    /// on the deny list. Returns the newly revoked fingerprints.
    pub async fn decommission(&self, name: &str) -> Result<Vec<String>, DbError> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        let certs: Vec<(String, String)> = sqlx::query(
            "SELECT fingerprint, role FROM certificates WHERE host = $1 \
             AND fingerprint NOT IN (SELECT fingerprint FROM revoked_certificates)",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
        for (fp, role) in &certs {
            revoke(&mut tx, fp, name, role, "host decommissioned").await?;
        }
        sqlx::query("UPDATE hosts SET status = $1, updated_at = $2 WHERE name = $3")
            .bind(HostStatus::Decommissioned.as_str())
            .bind(now)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(certs.into_iter().map(|(fp, _)| fp).collect())
    }

    /// Whether a fingerprint is on the deny list.
    pub async fn is_revoked(&self, fingerprint: &str) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT 1 FROM revoked_certificates WHERE fingerprint = $1")
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The fingerprints on the deny list of one host.
    pub async fn revoked_of(&self, host: &str) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "SELECT fingerprint FROM revoked_certificates WHERE host = $1 ORDER BY revoked_at",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(DbError::from))
            .collect()
    }

    /// The ledger entry of a fingerprint, if we issued it.
    pub async fn certificate(&self, fingerprint: &str) -> Result<Option<CertRecord>, DbError> {
        let row = sqlx::query(
            "SELECT fingerprint, host, role, serial, not_after FROM certificates WHERE fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(CertRecord {
                fingerprint: r.try_get(0)?,
                host: r.try_get(1)?,
                role: r.try_get(2)?,
                serial: r.try_get(3)?,
                not_after: r.try_get(4)?,
            })
        })
        .transpose()
    }

    /// Record the outcome of a contact with a host (probe or heartbeat).
    pub async fn record_contact(
        &self,
        name: &str,
        reachable: Result<(Option<&str>, Option<&str>), &str>,
    ) -> Result<(), DbError> {
        let now = unix_now();
        match reachable {
            Ok((version, state)) => {
                sqlx::query(
                    "UPDATE hosts SET status = $1, last_seen = $2, last_error = NULL, \
                     agent_version = COALESCE($3, agent_version), state_json = COALESCE($4, state_json), \
                     updated_at = $5 WHERE name = $6 AND status <> 'decommissioned'",
                )
                .bind(HostStatus::Active.as_str())
                .bind(now)
                .bind(version)
                .bind(state)
                .bind(now)
                .bind(name)
                .execute(&self.pool)
                .await?;
            }
            Err(error) => {
                sqlx::query(
                    "UPDATE hosts SET status = $1, last_error = $2, updated_at = $3 \
                     WHERE name = $4 AND status <> 'decommissioned'",
                )
                .bind(HostStatus::Unreachable.as_str())
                .bind(error)
                .bind(now)
                .bind(name)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Mark active hosts whose last contact is older than `cutoff` (unix
    /// seconds) unreachable. Returns how many changed.
    pub async fn mark_silent(&self, cutoff: i64, silence_secs: i64) -> Result<u64, DbError> {
        let n = sqlx::query(
            "UPDATE hosts SET status = 'unreachable', last_error = $1, updated_at = $2 \
             WHERE status = 'active' AND last_seen IS NOT NULL AND last_seen < $3",
        )
        .bind(format!("no heartbeat for over {silence_secs}s"))
        .bind(unix_now())
        .bind(cutoff)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }

    /// Store a new join token.
    pub async fn create_token(&self, t: &JoinToken, created_by: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_hash, host, address, sans, allow_updater, created_at, \
             expires_at, used_agent, used_updater, failures, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL, 0, $9)",
        )
        .bind(&t.id)
        .bind(&t.secret_hash)
        .bind(&t.host)
        .bind(&t.address)
        .bind(serde_json::to_string(&t.sans).map_err(|_| DbError::Corrupt("join_tokens.sans"))?)
        .bind(i64::from(t.allow_updater))
        .bind(unix_now())
        .bind(t.expires_at)
        .bind(created_by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A join token by id.
    pub async fn token(&self, id: &str) -> Result<Option<JoinToken>, DbError> {
        let row = sqlx::query(
            "SELECT id, secret_hash, host, address, sans, allow_updater, expires_at, used_agent, used_updater, failures \
             FROM join_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let sans: String = r.try_get(4)?;
            let allow: i64 = r.try_get(5)?;
            Ok(JoinToken {
                id: r.try_get(0)?,
                secret_hash: r.try_get(1)?,
                host: r.try_get(2)?,
                address: r.try_get(3)?,
                sans: serde_json::from_str(&sans)
                    .map_err(|_| DbError::Corrupt("join_tokens.sans"))?,
                allow_updater: allow != 0,
                expires_at: r.try_get(6)?,
                used_agent: r.try_get(7)?,
                used_updater: r.try_get(8)?,
                failures: r.try_get(9)?,
            })
        })
        .transpose()
    }

    /// Count a wrong-secret attempt against a token.
    pub async fn token_failure(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE join_tokens SET failures = failures + 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Claim a token for `updater` or agent use; `false` when it was used
    /// already (the check and the claim are one statement: no double use).
    pub async fn claim_token(&self, id: &str, updater: bool) -> Result<bool, DbError> {
        let sql = if updater {
            "UPDATE join_tokens SET used_updater = $1 WHERE id = $2 AND used_updater IS NULL"
        } else {
            "UPDATE join_tokens SET used_agent = $1 WHERE id = $2 AND used_agent IS NULL"
        };
        let n = sqlx::query(sql)
            .bind(unix_now())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Record a certificate issued by a join: the host (created when new),
    /// its current fingerprint for `role`, the ledger, and the previous
    /// certificates of that role on the deny list.
    pub async fn record_join(
        &self,
        host: &str,
        address: &str,
        sans: &[String],
        role: &str,
        cert: &CertRecord,
    ) -> Result<(), DbError> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        let previous: Vec<String> =
            sqlx::query("SELECT fingerprint FROM certificates WHERE host = $1 AND role = $2")
                .bind(host)
                .bind(role)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, sqlx::Error>>()?;
        for fp in previous {
            revoke(&mut tx, &fp, host, role, "superseded by a join").await?;
        }
        insert_certificate(
            &mut tx,
            &CertRecord {
                host: host.to_string(),
                role: role.to_string(),
                ..cert.clone()
            },
        )
        .await?;
        let sans_json = serde_json::to_string(sans).map_err(|_| DbError::Corrupt("hosts.sans"))?;
        sqlx::query(
            "INSERT INTO hosts (name, address, agent_port, updater_port, sans, agent_fingerprint, updater_fingerprint, \
             status, enrolled_at, updated_at) VALUES ($1, $2, 8765, 8766, $3, NULL, NULL, 'enrolled', $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(host)
        .bind(address)
        .bind(&sans_json)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let sql = if role == "updater" {
            "UPDATE hosts SET updater_fingerprint = $1, updated_at = $2 WHERE name = $3"
        } else {
            "UPDATE hosts SET agent_fingerprint = $1, updated_at = $2, status = 'enrolled', last_error = NULL WHERE name = $3"
        };
        sqlx::query(sql)
            .bind(&cert.fingerprint)
            .bind(now)
            .bind(host)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ask `host` to renew its certificate at its next heartbeat.
    pub async fn request_renewal(&self, host: &str) -> Result<bool, DbError> {
        let n = sqlx::query(
            "UPDATE hosts SET renew_requested = $1 WHERE name = $2 AND status <> 'decommissioned'",
        )
        .bind(unix_now())
        .bind(host)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Whether a renewal was requested for `host`.
    pub async fn renewal_requested(&self, host: &str) -> Result<bool, DbError> {
        let row = sqlx::query("SELECT renew_requested FROM hosts WHERE name = $1")
            .bind(host)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>(0)?.is_some(),
            None => false,
        })
    }

    /// Record a renewed certificate: ledger entry, the host's current
    /// fingerprint for `role`, the renewal request cleared. The previous
    /// certificate stays valid (not revoked) until it expires.
    pub async fn record_renewal(
        &self,
        host: &str,
        role: &str,
        cert: &CertRecord,
    ) -> Result<(), DbError> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        insert_certificate(
            &mut tx,
            &CertRecord {
                host: host.to_string(),
                role: role.to_string(),
                ..cert.clone()
            },
        )
        .await?;
        let sql = if role == "updater" {
            "UPDATE hosts SET updater_fingerprint = $1, updated_at = $2 WHERE name = $3"
        } else {
            "UPDATE hosts SET agent_fingerprint = $1, updated_at = $2, renew_requested = NULL WHERE name = $3"
        };
        sqlx::query(sql)
            .bind(&cert.fingerprint)
            .bind(now)
            .bind(host)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Append to the audit log.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, target, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(decnet_pki::random_hex(16))
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.outcome)
        .bind(&entry.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Record an update attempt.
    pub async fn record_update(&self, r: &UpdateRecord) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO update_history (id, host, at, kind, release, sha256, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(decnet_pki::random_hex(16))
        .bind(&r.host)
        .bind(r.at)
        .bind(&r.kind)
        .bind(&r.release)
        .bind(&r.sha256)
        .bind(&r.outcome)
        .bind(&r.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A host's update history, newest first.
    pub async fn update_history(
        &self,
        host: &str,
        limit: i64,
    ) -> Result<Vec<UpdateRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT host, at, kind, release, sha256, outcome, detail FROM update_history \
             WHERE host = $1 ORDER BY at DESC, id LIMIT $2",
        )
        .bind(host)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UpdateRecord {
                    host: r.try_get(0)?,
                    at: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    release: r.try_get(3)?,
                    sha256: r.try_get(4)?,
                    outcome: r.try_get(5)?,
                    detail: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, DbError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, target, outcome, detail FROM audit_log ORDER BY at DESC, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get(0)?,
                    actor: r.try_get(1)?,
                    action: r.try_get(2)?,
                    target: r.try_get(3)?,
                    outcome: r.try_get(4)?,
                    detail: r.try_get(5)?,
                })
            })
            .collect()
    }
}

fn host_from_row(r: &AnyRow) -> Result<HostRecord, DbError> {
    let port = |i: usize, what| -> Result<u16, DbError> {
        let v: i64 = r.try_get(i)?;
        u16::try_from(v).map_err(|_| DbError::Corrupt(what))
    };
    let sans: String = r.try_get(4)?;
    let status: String = r.try_get(7)?;
    Ok(HostRecord {
        name: r.try_get(0)?,
        address: r.try_get(1)?,
        agent_port: port(2, "hosts.agent_port")?,
        updater_port: port(3, "hosts.updater_port")?,
        sans: serde_json::from_str(&sans).map_err(|_| DbError::Corrupt("hosts.sans"))?,
        agent_fingerprint: r.try_get(5)?,
        updater_fingerprint: r.try_get(6)?,
        status: status.parse()?,
        enrolled_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
        last_seen: r.try_get(10)?,
        last_error: r.try_get(11)?,
        agent_version: r.try_get(12)?,
        state_json: r.try_get(13)?,
    })
}

/// The file path inside an `sqlite://PATH?…` URL.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then_some(path)
}
