//! The fleet database: hosts, the certificate ledger, the deny list of
//! revoked fingerprints, join tokens, update history and the audit log.
//!
//! One set of runtime queries runs on SQLite (the default, an embedded file)
//! and PostgreSQL through sqlx's `Any` driver; the schemas live in
//! `migrations/sqlite` and `migrations/postgres` and are applied at connect.
//!
//! Every transaction that changes which certificate of a host is current
//! (enroll, reissue, join, renew, promotion, decommission) starts with
//! [`FleetDb::lock_host`]: SQLite serialises writers (`BEGIN IMMEDIATE`),
//! PostgreSQL locks the host's row (`SELECT … FOR UPDATE`), so these
//! transactions never interleave on one host.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use time::OffsetDateTime;

use crate::model::{
    AuditEntry, AuditOutcome, CertRecord, CertRole, HostRecord, HostStatus, JoinToken, UpdateRecord,
};

/// A write transaction.
pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

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
    /// Every connection audit searches may hold stayed busy for
    /// [`AUDIT_SEARCH_WAIT`]: the search is refused, not queued further.
    #[error("too many audit searches at once; try again")]
    Busy,
}

/// How long an audit search waits for one of the connections searches may
/// hold before it is refused with [`DbError::Busy`].
pub const AUDIT_SEARCH_WAIT: Duration = Duration::from_secs(10);

/// Which SQL dialect the pool speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Now, in unix seconds.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// The default database URL for a decnet home: an SQLite file beside the CA.
pub fn default_url(home: &Path) -> String {
    format!("sqlite://{}?mode=rwc", home.join("master.db").display())
}

/// Add an issued certificate to the ledger inside `tx`.
pub(crate) async fn insert_certificate(tx: &mut Tx, c: &CertRecord) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO certificates (fingerprint, host, role, serial, not_after, issued_at, ca) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&c.fingerprint)
    .bind(&c.host)
    .bind(c.role.as_str())
    .bind(&c.serial)
    .bind(c.not_after)
    .bind(unix_now())
    .bind(c.ca.as_deref())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Put a fingerprint on the deny list inside `tx`; returns whether it was
/// not there yet.
pub(crate) async fn revoke(
    tx: &mut Tx,
    fingerprint: &str,
    host: &str,
    role: CertRole,
    reason: &str,
) -> Result<bool, DbError> {
    Ok(sqlx::query(
        "INSERT INTO revoked_certificates (fingerprint, host, role, revoked_at, reason) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(fingerprint)
    .bind(host)
    .bind(role.as_str())
    .bind(unix_now())
    .bind(reason)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0)
}

/// Forget a certificate that was never presented (a pending renewal
/// superseded by a newer one): nobody but its requester ever held it, so it
/// goes from the ledger instead of growing every worker's CRL. Presented
/// later, it is "not issued to" its host — the sign of a second holder.
pub(crate) async fn forget_unpresented(tx: &mut Tx, fingerprint: &str) -> Result<(), DbError> {
    sqlx::query("DELETE FROM certificates WHERE fingerprint = $1")
        .bind(fingerprint)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Revoke every certificate of `host` (of `role`, or of every role) that is
/// not revoked yet, except `keep`. Returns the newly revoked fingerprints.
pub(crate) async fn revoke_all_but(
    tx: &mut Tx,
    host: &str,
    role: Option<CertRole>,
    keep: &[&str],
    reason: &str,
) -> Result<Vec<String>, DbError> {
    let rows = sqlx::query(
        "SELECT fingerprint, role FROM certificates WHERE host = $1 \
         AND fingerprint NOT IN (SELECT fingerprint FROM revoked_certificates)",
    )
    .bind(host)
    .fetch_all(&mut **tx)
    .await?;
    let mut revoked = Vec::new();
    for r in rows {
        let fp: String = r.try_get(0)?;
        let r_role: CertRole = r.try_get::<String, _>(1)?.parse()?;
        if keep.contains(&fp.as_str()) || role.is_some_and(|want| want != r_role) {
            continue;
        }
        if revoke(tx, &fp, host, r_role, reason).await? {
            revoked.push(fp);
        }
    }
    Ok(revoked)
}

/// The columns [`host_from_row`] reads, in its order (a macro so queries stay
/// static strings).
macro_rules! host_columns {
    () => {
        "name, address, agent_port, updater_port, sans, agent_fingerprint, updater_fingerprint, \
         agent_pending, updater_pending, status, enrolled_at, updated_at, last_seen, last_error, \
         agent_version, state_json, clock_skew_ms, last_heartbeat"
    };
}

/// The outcome of one contact with a host, for [`FleetDb::record_contacts`].
#[derive(Clone, Debug)]
pub struct Contact {
    /// The host.
    pub host: String,
    /// `Ok((agent version, deployment state JSON))` or the error.
    pub outcome: Result<(Option<String>, Option<String>), String>,
}

/// One heartbeat to record: the host, its agent's version, its decky
/// states (JSON), and its clock minus ours when it arrived (`None`: an
/// agent that does not say when it sent it; the last known skew is kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beat {
    /// The host.
    pub host: String,
    /// Its agent's version.
    pub version: String,
    /// Its deckies' states (JSON), when reported.
    pub state: Option<String>,
    /// Its clock minus ours (milliseconds).
    pub clock_skew_ms: Option<i64>,
    /// The digest of the trust set it holds (`decnet_pki::trust::digest`),
    /// when reported.
    pub trust: Option<String>,
}

/// The fleet database: a connection pool plus the queries the master needs.
#[derive(Clone)]
pub struct FleetDb {
    pool: AnyPool,
    backend: Backend,
    audit_tap: Arc<OnceLock<AuditTap>>,
    promotions: Arc<std::sync::atomic::AtomicU64>,
    searches: Arc<tokio::sync::Semaphore>,
}

/// Connections of the pool (4 on SQLite, 8 on PostgreSQL) that operators'
/// audit searches may hold at once: the rest stay free for the fleet
/// (heartbeats, renewals, joins) and for everyone else's requests, however
/// many searches one operator sends.
pub fn audit_search_connections(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 2,
        Backend::Postgres => 4,
    }
}

impl std::fmt::Debug for FleetDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetDb")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Called with every audit entry once it is written (the master daemon's
/// event bus): set once per process with [`FleetDb::set_audit_tap`].
pub type AuditTap = Box<dyn Fn(&AuditEntry) + Send + Sync>;

impl FleetDb {
    /// Open (creating an SQLite file, mode 0600, if needed) and migrate.
    pub async fn connect(url: &str) -> Result<FleetDb, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl);
        };
        if let Some(path) = sqlite_path(url) {
            let path = Path::new(path);
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
                && !parent.exists()
            {
                decnet_pki::secure_fs::ensure_private_dir(parent)
                    .map_err(|e| DbError::Connect(sqlx::Error::Io(e)))?;
            }
            // Create the file 0600 before SQLite does: its -wal and -shm files
            // take the database file's mode, so all three are private from
            // the start.
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
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
        Ok(FleetDb {
            promotions: Arc::default(),
            searches: Arc::new(tokio::sync::Semaphore::new(audit_search_connections(
                backend,
            ))),
            pool,
            backend,
            audit_tap: Arc::new(OnceLock::new()),
        })
    }

    /// A write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and
    /// writes later fails with "database is locked" instead of waiting when
    /// another process committed in between.
    pub(crate) async fn write_tx(&self) -> Result<Tx, DbError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// A write transaction holding `host`'s row (see the module docs), with
    /// the row as it is now (`None`: no such host yet).
    pub(crate) async fn lock_host(&self, host: &str) -> Result<(Tx, Option<HostRecord>), DbError> {
        let mut tx = self.write_tx().await?;
        let sql = match self.backend {
            Backend::Sqlite => concat!("SELECT ", host_columns!(), " FROM hosts WHERE name = $1"),
            Backend::Postgres => concat!(
                "SELECT ",
                host_columns!(),
                " FROM hosts WHERE name = $1 FOR UPDATE"
            ),
        };
        let row = sqlx::query(sql).bind(host).fetch_optional(&mut *tx).await?;
        let record = row.map(|r| host_from_row(&r)).transpose()?;
        Ok((tx, record))
    }

    /// Renewed certificates presented (promoted) through this handle or a
    /// clone of it, in this process: whoever promotes (the control API, the
    /// log listener's gate), a cache of standing learns the replaced
    /// certificate is retiring.
    pub fn promotions(&self) -> u64 {
        self.promotions.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn count_promotion(&self) {
        self.promotions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
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

    /// Write a host row inside `tx` (insert, or replace its enrollment data:
    /// endpoint, SANs, current certificates; pending ones are cleared, the
    /// contact history reset).
    pub(crate) async fn put_host(tx: &mut Tx, host: &HostRecord) -> Result<(), DbError> {
        let now = unix_now();
        let sans = serde_json::to_string(&host.sans).map_err(|_| DbError::Corrupt("hosts.sans"))?;
        sqlx::query(
            "INSERT INTO hosts (name, address, agent_port, updater_port, sans, agent_fingerprint, \
             updater_fingerprint, status, enrolled_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (name) DO UPDATE SET address = excluded.address, agent_port = excluded.agent_port, \
             updater_port = excluded.updater_port, sans = excluded.sans, \
             agent_fingerprint = excluded.agent_fingerprint, updater_fingerprint = excluded.updater_fingerprint, \
             agent_pending = NULL, updater_pending = NULL, renew_requested = NULL, \
             status = excluded.status, enrolled_at = excluded.enrolled_at, updated_at = excluded.updated_at, \
             last_seen = NULL, last_error = NULL, state_json = NULL, clock_skew_ms = NULL, \
             last_heartbeat = NULL",
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
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Record a fresh enrollment (or re-enrollment): the host row, its new
    /// certificates in the ledger, and — in the same transaction — every
    /// other certificate of the host (current, pending, retiring) on the
    /// deny list. Returns the newly revoked fingerprints.
    pub async fn record_enrollment(
        &self,
        host: &HostRecord,
        certs: &[CertRecord],
    ) -> Result<Vec<String>, DbError> {
        let (mut tx, _) = self.lock_host(&host.name).await?;
        let keep: Vec<&str> = certs.iter().map(|c| c.fingerprint.as_str()).collect();
        let revoked = revoke_all_but(
            &mut tx,
            &host.name,
            None,
            &keep,
            "superseded by re-enrollment",
        )
        .await?;
        for c in certs {
            insert_certificate(&mut tx, c).await?;
        }
        Self::put_host(&mut tx, host).await?;
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
        let (mut tx, _) = self.lock_host(name).await?;
        let revoked = revoke_all_but(&mut tx, name, None, &[], "host decommissioned").await?;
        sqlx::query(
            "UPDATE hosts SET status = $1, updated_at = $2, agent_pending = NULL, updater_pending = NULL \
             WHERE name = $3",
        )
        .bind(HostStatus::Decommissioned.as_str())
        .bind(unix_now())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Mark `name` suspect — two live holders of its identity were seen —
    /// unless an operator already acted on it (decommissioned, burned) or
    /// it is suspect already. Returns whether it changed (then audited).
    pub async fn mark_suspect(&self, name: &str, why: &str) -> Result<bool, DbError> {
        let n = sqlx::query(
            "UPDATE hosts SET status = 'suspect', last_error = $1, updated_at = $2 \
             WHERE name = $3 AND status NOT IN ('decommissioned', 'burned', 'suspect')",
        )
        .bind(format!("suspect: {why}"))
        .bind(unix_now())
        .bind(name)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n > 0 {
            self.audit(&AuditEntry::now(
                "master",
                "swarm.suspect",
                name,
                AuditOutcome::Ok,
                why,
            ))
            .await?;
        }
        Ok(n > 0)
    }

    /// Burn `name` after a compromise: every certificate ever issued to it
    /// is revoked (whoever holds them) and it is marked burned until a
    /// fresh join or a reissue re-admits it. Returns the newly revoked
    /// fingerprints.
    pub async fn burn(&self, name: &str) -> Result<Vec<String>, DbError> {
        let (mut tx, _) = self.lock_host(name).await?;
        let revoked = revoke_all_but(
            &mut tx,
            name,
            None,
            &[],
            "host burned: its identity was compromised",
        )
        .await?;
        sqlx::query(
            "UPDATE hosts SET status = $1, updated_at = $2, agent_pending = NULL, updater_pending = NULL, \
             renew_requested = NULL WHERE name = $3",
        )
        .bind(HostStatus::Burned.as_str())
        .bind(unix_now())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revoked)
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
            "SELECT fingerprint FROM revoked_certificates WHERE host = $1 ORDER BY revoked_at, fingerprint",
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
        row.map(|r| cert_from_row(&r)).transpose()
    }

    /// Every certificate of a host in the ledger, with whether it is revoked.
    pub async fn certificates_of(&self, host: &str) -> Result<Vec<(CertRecord, bool)>, DbError> {
        let rows = sqlx::query(
            "SELECT c.fingerprint, c.host, c.role, c.serial, c.not_after, \
             CAST(CASE WHEN r.fingerprint IS NULL THEN 0 ELSE 1 END AS BIGINT) \
             FROM certificates c LEFT JOIN revoked_certificates r ON r.fingerprint = c.fingerprint \
             WHERE c.host = $1 ORDER BY c.issued_at, c.fingerprint",
        )
        .bind(host)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((cert_from_row(r)?, r.try_get::<i64, _>(5)? != 0)))
            .collect()
    }

    /// When each host's current certificates expire: fingerprint → not_after
    /// (unix seconds), for every current agent and updater certificate.
    pub async fn current_certificate_expiry(
        &self,
    ) -> Result<std::collections::BTreeMap<String, i64>, DbError> {
        let rows = sqlx::query(
            "SELECT c.fingerprint, c.not_after FROM certificates c JOIN hosts h \
             ON c.fingerprint = h.agent_fingerprint OR c.fingerprint = h.updater_fingerprint",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
            .collect()
    }

    /// Record the outcomes of many contacts (a fleet-wide probe) in one
    /// transaction: per host `Ok((version, state))` or `Err(error)`.
    pub async fn record_contacts(&self, contacts: &[Contact]) -> Result<(), DbError> {
        let now = unix_now();
        let mut tx = self.write_tx().await?;
        for c in contacts {
            match &c.outcome {
                Ok((version, state)) => {
                    sqlx::query(
                        "UPDATE hosts SET status = CASE WHEN status IN ('suspect', 'burned') THEN status ELSE $1 END, \
                         last_seen = $2, last_error = NULL, \
                         agent_version = COALESCE($3, agent_version), state_json = COALESCE($4, state_json), \
                         updated_at = $5 WHERE name = $6 AND status <> 'decommissioned'",
                    )
                    .bind(HostStatus::Active.as_str())
                    .bind(now)
                    .bind(version.as_deref())
                    .bind(state.as_deref())
                    .bind(now)
                    .bind(&c.host)
                    .execute(&mut *tx)
                    .await?;
                }
                Err(error) => {
                    sqlx::query(
                        "UPDATE hosts SET status = CASE WHEN status IN ('suspect', 'burned') THEN status ELSE $1 END, \
                         last_error = $2, updated_at = $3 \
                         WHERE name = $4 AND status <> 'decommissioned'",
                    )
                    .bind(HostStatus::Unreachable.as_str())
                    .bind(error)
                    .bind(now)
                    .bind(&c.host)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
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
                    "UPDATE hosts SET status = CASE WHEN status IN ('suspect', 'burned') THEN status ELSE $1 END, \
                     last_seen = $2, last_error = NULL, \
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
                    "UPDATE hosts SET status = CASE WHEN status IN ('suspect', 'burned') THEN status ELSE $1 END, \
                     last_error = $2, updated_at = $3 \
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

    /// Record heartbeats in one transaction (the master's beat writer
    /// gathers a short window's); for each host recorded, whether a
    /// renewal was requested for it. A decommissioned or burned host's
    /// beat changes nothing and is left out of the answer.
    pub async fn record_heartbeats(&self, beats: &[Beat]) -> Result<Vec<(String, bool)>, DbError> {
        let now = unix_now();
        let mut out = Vec::with_capacity(beats.len());
        // One statement per chunk, not one per beat: each statement is a
        // round trip to the database's thread (or server) and back, and at
        // low rates those wake-ups were what a beat cost (issue #31).
        for chunk in beats.chunks(BEATS_PER_STATEMENT) {
            // Not kept prepared: its text varies with the batch's size, and
            // a cache of every size seen held megabytes per connection.
            let sql = heartbeat_statement(chunk.len(), self.backend);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .persistent(false)
                .bind(HostStatus::Active.as_str())
                .bind(now);
            for b in chunk {
                q = q
                    .bind(&b.host)
                    .bind(&b.version)
                    .bind(b.state.as_deref())
                    .bind(b.clock_skew_ms)
                    .bind(b.trust.as_deref());
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push((
                    row.try_get::<String, _>(0)?,
                    row.try_get::<Option<i64>, _>(1)?.is_some(),
                ));
            }
        }
        Ok(out)
    }

    /// Mark active hosts whose last heartbeat is older than `cutoff` (unix
    /// seconds) unreachable; a host that sends no heartbeats is never
    /// marked for their absence. Returns the hosts that changed (with two
    /// masters on one database, each change is seen by one of them).
    pub async fn mark_silent(
        &self,
        cutoff: i64,
        silence_secs: i64,
    ) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "UPDATE hosts SET status = 'unreachable', last_error = $1, updated_at = $2 \
             WHERE status = 'active' AND last_heartbeat IS NOT NULL AND last_heartbeat < $3 \
             RETURNING name",
        )
        .bind(format!("no heartbeat for over {silence_secs}s"))
        .bind(unix_now())
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(DbError::from))
            .collect()
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

    /// Claim a token for `role` inside `tx`; `false` when it was used
    /// already (the check and the claim are one statement: no double use).
    pub(crate) async fn claim_token(
        tx: &mut Tx,
        id: &str,
        role: CertRole,
    ) -> Result<bool, DbError> {
        let sql = if role == CertRole::Updater {
            "UPDATE join_tokens SET used_updater = $1 WHERE id = $2 AND used_updater IS NULL"
        } else {
            "UPDATE join_tokens SET used_agent = $1 WHERE id = $2 AND used_agent IS NULL"
        };
        let n = sqlx::query(sql)
            .bind(unix_now())
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        Ok(n == 1)
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

    /// Append to the audit log.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), DbError> {
        audit_query(entry).execute(&self.pool).await?;
        if let Some(tap) = self.audit_tap.get() {
            tap(entry);
        }
        Ok(())
    }

    /// Call `tap` with every audit entry this process writes from now on,
    /// once it is written (the first tap set stays: one per process).
    pub fn set_audit_tap(&self, tap: AuditTap) {
        let _ = self.audit_tap.set(tap);
    }

    /// Delete audit entries older than `before` (unix seconds): the
    /// retention `master serve --audit-retention` keeps. Returns how many.
    pub async fn prune_audit(&self, before: i64) -> Result<u64, DbError> {
        Ok(sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Append many entries to the audit log in one transaction (all or
    /// none). Why: a fleet-wide command audits every host, and one commit
    /// per host costs more than the command's own work at 10 000 hosts.
    pub async fn audit_all(&self, entries: &[AuditEntry]) -> Result<(), DbError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for entry in entries {
            audit_query(entry).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        if let Some(tap) = self.audit_tap.get() {
            entries.iter().for_each(tap);
        }
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
        .bind(r.kind.as_str())
        .bind(&r.release)
        .bind(&r.sha256)
        .bind(r.outcome.as_str())
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
                    kind: r.try_get::<String, _>(2)?.parse()?,
                    release: r.try_get(3)?,
                    sha256: r.try_get(4)?,
                    outcome: r.try_get::<String, _>(5)?.parse()?,
                    detail: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// The newest `limit` audit entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>, DbError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, target, outcome, detail, source FROM audit_log ORDER BY at DESC, id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_of_row).collect()
    }
}

impl FleetDb {
    /// The audit entries `q` asks for (see [`AuditSearch`]).
    pub async fn audit_search(&self, q: &AuditSearch) -> Result<Vec<AuditEntry>, DbError> {
        let (a, b, c) = match &q.actor {
            None => (String::new(), String::new(), String::new()),
            Some(actor) if actor.contains(':') => (actor.clone(), actor.clone(), actor.clone()),
            Some(actor) => (
                format!("operator:{actor}"),
                format!("local:{actor}"),
                format!("cli:{actor}"),
            ),
        };
        // LIKE's own characters in the prefix match only themselves.
        let action = q
            .action
            .as_deref()
            .unwrap_or("")
            .replace(['%', '_', '\\'], "");
        // Only the filters given are conditions, so the planner can read
        // the (actor, at) and (target, at) indexes (an `$1 = '' OR …` hides
        // them from it). The values are bound, never spliced.
        let mut sql = String::from(
            "SELECT at, actor, action, target, outcome, detail, source FROM audit_log \
             WHERE at >= $1 AND at <= $2",
        );
        let mut texts: Vec<String> = Vec::new();
        if q.actor.is_some() {
            sql.push_str(" AND actor IN ($3, $4, $5)");
            texts.extend([a, b, c]);
        }
        if !action.is_empty() {
            sql.push_str(&format!(" AND action LIKE ${}", texts.len() + 3));
            texts.push(format!("{action}%"));
        }
        if let Some(target) = &q.target {
            sql.push_str(&format!(" AND target = ${}", texts.len() + 3));
            texts.push(target.clone());
        }
        sql.push_str(&format!(" ORDER BY at DESC, id LIMIT ${}", texts.len() + 3));
        // Audited: `sql` is fixed text and numbered placeholders only.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(q.since.unwrap_or(0))
            .bind(q.until.unwrap_or(i64::MAX));
        for t in texts {
            query = query.bind(t);
        }
        let _turn = tokio::time::timeout(AUDIT_SEARCH_WAIT, self.searches.acquire())
            .await
            .map_err(|_| DbError::Busy)?
            .expect("never closed");
        let rows = query.bind(q.limit).fetch_all(&self.pool).await?;
        rows.iter().map(audit_of_row).collect()
    }

    /// The newest `limit` audit entries of `actor` (`None`: everyone's).
    /// `actor` is an exact actor (`operator:alice`, `local:root`) or a bare
    /// name, which matches that operator and that local user.
    pub async fn audit_log_of(
        &self,
        limit: i64,
        actor: Option<&str>,
    ) -> Result<Vec<AuditEntry>, DbError> {
        let Some(actor) = actor else {
            return self.audit_log(limit).await;
        };
        let (a, b, c) = if actor.contains(':') {
            (actor.to_string(), actor.to_string(), actor.to_string())
        } else {
            (
                format!("operator:{actor}"),
                format!("local:{actor}"),
                format!("cli:{actor}"),
            )
        };
        let rows = sqlx::query(
            "SELECT at, actor, action, target, outcome, detail, source FROM audit_log \
             WHERE actor IN ($1, $2, $3) ORDER BY at DESC, id LIMIT $4",
        )
        .bind(a)
        .bind(b)
        .bind(c)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_of_row).collect()
    }
}

/// An audit entry from a `SELECT at, actor, action, target, outcome, detail, source`.
fn audit_of_row(r: &sqlx::any::AnyRow) -> Result<AuditEntry, DbError> {
    Ok(AuditEntry {
        at: r.try_get(0)?,
        actor: r.try_get(1)?,
        action: r.try_get(2)?,
        target: r.try_get(3)?,
        outcome: r.try_get::<String, _>(4)?.parse()?,
        detail: r.try_get(5)?,
        source: r.try_get(6)?,
    })
}

/// A search of the audit log: every field narrows it (an actor as in
/// [`FleetDb::audit_log_of`], an action prefix such as `swarm.`, an exact
/// target, a time window in unix seconds), newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditSearch {
    /// At most this many.
    pub limit: i64,
    /// Whose.
    pub actor: Option<String>,
    /// Actions starting with this.
    pub action: Option<String>,
    /// This target (a host, an operator).
    pub target: Option<String>,
    /// Not before.
    pub since: Option<i64>,
    /// Not after.
    pub until: Option<i64>,
}

/// The INSERT of one audit entry (one home for [`FleetDb::audit`] and
/// [`FleetDb::audit_all`]).
fn audit_query(entry: &AuditEntry) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, target, outcome, detail, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(decnet_pki::random_hex(16))
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(entry.outcome.as_str())
    .bind(&entry.detail)
    .bind(&entry.source)
}

pub(crate) fn cert_from_row(r: &AnyRow) -> Result<CertRecord, DbError> {
    Ok(CertRecord {
        fingerprint: r.try_get(0)?,
        host: r.try_get(1)?,
        role: r.try_get::<String, _>(2)?.parse()?,
        serial: r.try_get(3)?,
        not_after: r.try_get(4)?,
        ca: None,
    })
}

pub(crate) fn host_from_row(r: &AnyRow) -> Result<HostRecord, DbError> {
    let port = |i: usize, what| -> Result<u16, DbError> {
        let v: i64 = r.try_get(i)?;
        u16::try_from(v).map_err(|_| DbError::Corrupt(what))
    };
    let sans: String = r.try_get(4)?;
    let status: String = r.try_get(9)?;
    Ok(HostRecord {
        name: r.try_get(0)?,
        address: r.try_get(1)?,
        agent_port: port(2, "hosts.agent_port")?,
        updater_port: port(3, "hosts.updater_port")?,
        sans: serde_json::from_str(&sans).map_err(|_| DbError::Corrupt("hosts.sans"))?,
        agent_fingerprint: r.try_get(5)?,
        updater_fingerprint: r.try_get(6)?,
        agent_pending: r.try_get(7)?,
        updater_pending: r.try_get(8)?,
        status: status.parse()?,
        enrolled_at: r.try_get(10)?,
        updated_at: r.try_get(11)?,
        last_seen: r.try_get(12)?,
        last_error: r.try_get(13)?,
        agent_version: r.try_get(14)?,
        state_json: r.try_get(15)?,
        clock_skew_ms: r.try_get(16)?,
        last_heartbeat: r.try_get(17)?,
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

/// The most beats one statement records (five parameters each, well under
/// SQLite's 32,766 and PostgreSQL's 65,535).
pub const BEATS_PER_STATEMENT: usize = 500;

/// The statement recording `n` beats: `$1` the active status, `$2` the
/// time, then five parameters per beat (host, version, state, skew,
/// trust). Built from placeholders only — nothing a worker sent is in the
/// text — and the same for both dialects (`UPDATE … FROM` a `VALUES` list)
/// but for the parameters' mark. Each host appears once (the writer keeps
/// each host's newest beat).
///
/// Parameters are numbered: `$N` for PostgreSQL, `?N` for SQLite, which
/// reads `$N` as a *named* parameter and looks each name up in a list of
/// those seen so far (a string comparison per pair: at 500 beats, 2,500
/// parameters, that lookup was most of the statement's preparation).
fn heartbeat_statement(n: usize, backend: Backend) -> String {
    use std::fmt::Write as _;
    let mark = match backend {
        Backend::Sqlite => '?',
        Backend::Postgres => '$',
    };
    let mut values = String::with_capacity(n * 40);
    for i in 0..n {
        let p = 3 + i * 5;
        if i > 0 {
            values.push_str(", ");
        }
        let _ = write!(
            values,
            "({mark}{}, {mark}{}, {mark}{}, CAST({mark}{} AS BIGINT), {mark}{})",
            p,
            p + 1,
            p + 2,
            p + 3,
            p + 4
        );
    }
    format!(
        "WITH beats (name, version, state, skew, trust) AS (VALUES {values}) \
         UPDATE hosts SET status = CASE WHEN hosts.status = 'suspect' THEN hosts.status ELSE {mark}1 END, \
         last_seen = {mark}2, last_heartbeat = {mark}2, agent_version = beats.version, \
         last_error = CASE WHEN hosts.status = 'suspect' THEN hosts.last_error ELSE NULL END, \
         state_json = COALESCE(beats.state, hosts.state_json), updated_at = {mark}2, \
         clock_skew_ms = COALESCE(beats.skew, hosts.clock_skew_ms), \
         trust = COALESCE(beats.trust, hosts.trust) \
         FROM beats WHERE hosts.name = beats.name AND hosts.status NOT IN ('decommissioned', 'burned') \
         RETURNING hosts.name, hosts.renew_requested"
    )
}
