//! Operators: the people (or scripts) who drive the fleet API, each with an
//! `operator@<name>` certificate whose key was generated on their own
//! machine, a role and an optional host scope.
//!
//! The role and the scope live here, not in the certificate, so a change or
//! a revocation takes effect on the very next request (the fleet API asks
//! [`FleetDb::operator_standing`] on every one, kept-alive connections
//! included). Their certificates are in the ledger like every other (host
//! column = the CN), so a revocation also lands in the CRL.
//!
//! Enrolment: `decnet operator add` stores a one-time token (only a SHA-256
//! of its secret); `decnet login` spends it at the control API's `/join`
//! ([`join_operator`]) with a CSR, and gets a certificate valid for
//! [`OPERATOR_CERT_DAYS`].

use std::time::Duration;

use decnet_pki::signing::{constant_time_eq, sha256_hex};
use decnet_pki::{CertificateAuthority, HostName, LeafSpec, Role};
use sqlx::Row;

use crate::db::{DbError, FleetDb, insert_certificate, revoke, revoke_all_but, unix_now};
use crate::join::{JoinAnswer, JoinRefusal, JoinRequest, MAX_WRONG_SECRETS_PER_MINUTE, TokenText};
use crate::model::{AuditEntry, AuditOutcome, CertRecord, CertRole};

/// How long an operator certificate is valid: short, renewed by logging in
/// again.
pub const OPERATOR_CERT_DAYS: i64 = 30;

/// An operator as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorRecord {
    /// The name (CN `operator@<name>`).
    pub name: String,
    /// `viewer`, `deployer` or `admin` (checked by the caller's role type).
    pub role: String,
    /// Host-name globs; empty: every host.
    pub hosts: Vec<String>,
    /// When it was added.
    pub created_at: i64,
    /// Who added it (an audit actor).
    pub created_by: String,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
}

impl OperatorRecord {
    /// The CN of its certificates.
    pub fn cn(&self) -> String {
        operator_cn(&self.name)
    }
}

/// The CN of operator `name`'s certificates.
pub fn operator_cn(name: &str) -> String {
    format!("operator@{name}")
}

/// Why an operator change was refused.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The name is taken by an active operator.
    #[error(
        "operator {0} exists already (revoke it first, or `operator token {0}` for a new token)"
    )]
    Exists(String),
    /// No such operator (or revoked, where an active one is needed).
    #[error("no active operator named {0}")]
    Unknown(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

fn record_of(r: &sqlx::any::AnyRow) -> Result<OperatorRecord, DbError> {
    let hosts: String = r.try_get(2)?;
    Ok(OperatorRecord {
        name: r.try_get(0)?,
        role: r.try_get(1)?,
        hosts: serde_json::from_str(&hosts).map_err(|_| DbError::Corrupt("operators.hosts"))?,
        created_at: r.try_get(3)?,
        created_by: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
    })
}

impl FleetDb {
    /// Add operator `name` (or re-activate a revoked one, with the new role
    /// and scope) and store a fresh one-time token for it, in one
    /// transaction. Returns the token text (shown once).
    pub async fn add_operator(
        &self,
        ca: &CertificateAuthority,
        name: &HostName,
        role: &str,
        hosts: &[String],
        token_ttl: Duration,
        actor: &str,
    ) -> Result<(TokenText, i64), OperatorError> {
        let mut tx = self.write_tx().await?;
        let existing = sqlx::query("SELECT revoked_at FROM operators WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(DbError::from)?;
        let hosts_json =
            serde_json::to_string(hosts).map_err(|_| DbError::Corrupt("operators.hosts"))?;
        match existing {
            Some(r)
                if r.try_get::<Option<i64>, _>(0)
                    .map_err(DbError::from)?
                    .is_none() =>
            {
                return Err(OperatorError::Exists(name.to_string()));
            }
            Some(_) => {
                sqlx::query(
                    "UPDATE operators SET role = $1, hosts = $2, created_at = $3, created_by = $4, \
                     revoked_at = NULL WHERE name = $5",
                )
                .bind(role)
                .bind(&hosts_json)
                .bind(unix_now())
                .bind(actor)
                .bind(name.as_str())
                .execute(&mut *tx)
                .await
                .map_err(DbError::from)?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO operators (name, role, hosts, created_at, created_by, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5, NULL)",
                )
                .bind(name.as_str())
                .bind(role)
                .bind(&hosts_json)
                .bind(unix_now())
                .bind(actor)
                .execute(&mut *tx)
                .await
                .map_err(DbError::from)?;
            }
        }
        let (token, expires_at) =
            insert_operator_token(&mut tx, ca, name, token_ttl, actor).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok((token, expires_at))
    }

    /// A new one-time token for the active operator `name` (its earlier
    /// unused tokens are dropped): for a login on a new machine, or after
    /// its certificate expired.
    pub async fn operator_token(
        &self,
        ca: &CertificateAuthority,
        name: &HostName,
        token_ttl: Duration,
        actor: &str,
    ) -> Result<(TokenText, i64), OperatorError> {
        let mut tx = self.write_tx().await?;
        let active =
            sqlx::query("SELECT name FROM operators WHERE name = $1 AND revoked_at IS NULL")
                .bind(name.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(DbError::from)?;
        if active.is_none() {
            return Err(OperatorError::Unknown(name.to_string()));
        }
        sqlx::query("DELETE FROM operator_tokens WHERE operator = $1 AND used_at IS NULL")
            .bind(name.as_str())
            .execute(&mut *tx)
            .await
            .map_err(DbError::from)?;
        let out = insert_operator_token(&mut tx, ca, name, token_ttl, actor).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(out)
    }

    /// Every operator, by name.
    pub async fn operators(&self) -> Result<Vec<OperatorRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT name, role, hosts, created_at, created_by, revoked_at FROM operators ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(record_of).collect()
    }

    /// One operator.
    pub async fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, DbError> {
        let row = sqlx::query(
            "SELECT name, role, hosts, created_at, created_by, revoked_at FROM operators WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(record_of).transpose()
    }

    /// The operator a presented certificate speaks for, if it still may:
    /// the operator `name` is active and `fingerprint` is one of its
    /// certificates that is not revoked. Asked on every fleet API request.
    ///
    /// The first request made with a renewed certificate retires what it
    /// replaced: every older certificate of the operator is revoked then
    /// (see [`renew_operator`]). One read in the common case.
    pub async fn operator_standing(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<Option<OperatorRecord>, DbError> {
        let cert = sqlx::query(
            "SELECT c.host, CAST(CASE WHEN EXISTS (SELECT 1 FROM certificates o \
             WHERE o.host = c.host AND o.role = 'operator' AND o.issued_at < c.issued_at \
             AND o.fingerprint NOT IN (SELECT fingerprint FROM revoked_certificates)) \
             THEN 1 ELSE 0 END AS BIGINT) \
             FROM certificates c WHERE c.fingerprint = $1 AND c.role = 'operator' \
             AND c.fingerprint NOT IN (SELECT fingerprint FROM revoked_certificates)",
        )
        .bind(fingerprint)
        .fetch_optional(self.pool())
        .await?;
        let Some(cert) = cert else { return Ok(None) };
        if cert.try_get::<String, _>(0)? != operator_cn(name) {
            return Ok(None);
        }
        let Some(op) = self
            .operator(name)
            .await?
            .filter(|o| o.revoked_at.is_none())
        else {
            return Ok(None);
        };
        if cert.try_get::<i64, _>(1)? != 0
            && !self
                .take_renewed_operator_certificate(name, fingerprint)
                .await?
        {
            return Ok(None);
        }
        Ok(Some(op))
    }

    /// A write transaction holding operator `name`'s row on PostgreSQL
    /// (SQLite's write transactions are serialized already): renewals,
    /// logins and the first use of a renewed certificate of one operator
    /// happen one at a time, so two renewals at once cannot both survive.
    async fn lock_operator(&self, name: &str) -> Result<crate::db::Tx, DbError> {
        let mut tx = self.write_tx().await?;
        if self.backend() == crate::db::Backend::Postgres {
            sqlx::query("SELECT name FROM operators WHERE name = $1 FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// `fingerprint`, a renewed certificate of operator `name` not used
    /// before, was just presented. Within [`RENEWAL_TAKE_WITHIN`] of its
    /// issue (and still unrevoked, its operator still active, checked
    /// again under the operator's lock) the renewal takes: every older
    /// certificate of the operator is revoked, a stolen one among them
    /// (console sessions it opened end only with a new login or a
    /// revocation). Later, it is revoked itself and refused (`false`): a
    /// renewal nobody used at once is a lost answer, or a thief's, who
    /// must not hold a spare certificate quietly. Audited as the operator.
    async fn take_renewed_operator_certificate(
        &self,
        name: &str,
        fingerprint: &str,
    ) -> Result<bool, DbError> {
        let cn = operator_cn(name);
        let mut tx = self.lock_operator(name).await?;
        let row = sqlx::query(
            "SELECT c.issued_at FROM certificates c JOIN operators o ON o.name = $2 \
             WHERE c.fingerprint = $1 AND c.host = $3 AND c.role = 'operator' \
             AND o.revoked_at IS NULL \
             AND c.fingerprint NOT IN (SELECT fingerprint FROM revoked_certificates)",
        )
        .bind(fingerprint)
        .bind(name)
        .bind(&cn)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(false) };
        let issued_at: i64 = row.try_get(0)?;
        if unix_now() > issued_at + RENEWAL_TAKE_WITHIN {
            revoke(
                &mut tx,
                fingerprint,
                &cn,
                CertRole::Operator,
                "a renewal first presented too late",
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(
                operator = name,
                fingerprint,
                "a renewed operator certificate was first presented too late: revoked (a lost answer, or a second holder of this operator's certificate)"
            );
            let _ = self
                .audit(&AuditEntry::now(
                    format!("operator:{name}"),
                    "operator.renew.promote",
                    name,
                    AuditOutcome::Refused,
                    format!("fingerprint={fingerprint} first presented more than {RENEWAL_TAKE_WITHIN}s after its issue: revoked"),
                ))
                .await;
            return Ok(false);
        }
        let older = sqlx::query(
            "SELECT fingerprint FROM certificates WHERE host = $1 AND role = 'operator' \
             AND issued_at < $2 \
             AND fingerprint NOT IN (SELECT fingerprint FROM revoked_certificates)",
        )
        .bind(&cn)
        .bind(issued_at)
        .fetch_all(&mut *tx)
        .await?;
        let mut revoked = Vec::new();
        for row in older {
            let fp: String = row.try_get(0)?;
            if revoke(
                &mut tx,
                &fp,
                &cn,
                CertRole::Operator,
                "superseded by a renewal (the new certificate was presented)",
            )
            .await?
            {
                revoked.push(fp);
            }
        }
        tx.commit().await?;
        if !revoked.is_empty() {
            tracing::info!(
                operator = name,
                fingerprint,
                revoked = revoked.len(),
                "renewed operator certificate presented; the ones it replaced are revoked"
            );
            let _ = self
                .audit(&AuditEntry::now(
                    format!("operator:{name}"),
                    "operator.renew.promote",
                    name,
                    AuditOutcome::Ok,
                    format!("current={fingerprint} revoked={}", revoked.join(",")),
                ))
                .await;
        }
        Ok(true)
    }

    /// The certificate operator `name` uses: its oldest unrevoked one (a
    /// renewal not presented yet, perhaps a thief's, is newer and is not
    /// it; presenting it revokes every older one).
    pub async fn operator_certificate(&self, name: &str) -> Result<Option<CertRecord>, DbError> {
        Ok(self
            .certificates_of(&operator_cn(name))
            .await?
            .into_iter()
            .filter(|(_, revoked)| !revoked)
            .map(|(c, _)| c)
            .min_by_key(|c| c.not_after))
    }

    /// Change an active operator's role and (when given) its host scope.
    pub async fn set_operator_role(
        &self,
        name: &str,
        role: &str,
        hosts: Option<&[String]>,
    ) -> Result<(), OperatorError> {
        let n = match hosts {
            Some(h) => sqlx::query(
                "UPDATE operators SET role = $1, hosts = $2 WHERE name = $3 AND revoked_at IS NULL",
            )
            .bind(role)
            .bind(serde_json::to_string(h).map_err(|_| DbError::Corrupt("operators.hosts"))?)
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(DbError::from)?,
            None => {
                sqlx::query("UPDATE operators SET role = $1 WHERE name = $2 AND revoked_at IS NULL")
                    .bind(role)
                    .bind(name)
                    .execute(self.pool())
                    .await
                    .map_err(DbError::from)?
            }
        }
        .rows_affected();
        if n == 0 {
            return Err(OperatorError::Unknown(name.to_string()));
        }
        Ok(())
    }

    /// Revoke operator `name`: it is refused from its next request on,
    /// every certificate of it goes on the deny list (and into the CRL), its
    /// unused tokens are dropped. Returns the revoked fingerprints.
    pub async fn revoke_operator(&self, name: &str) -> Result<Vec<String>, OperatorError> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE operators SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
        )
        .bind(unix_now())
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(DbError::from)?
        .rows_affected();
        if n == 0 {
            return Err(OperatorError::Unknown(name.to_string()));
        }
        sqlx::query("DELETE FROM operator_tokens WHERE operator = $1 AND used_at IS NULL")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(DbError::from)?;
        // Its console sessions and unused login URLs end with it.
        for q in [
            "DELETE FROM console_sessions WHERE operator = $1",
            "DELETE FROM console_tickets WHERE operator = $1",
        ] {
            sqlx::query(q)
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(DbError::from)?;
        }
        let revoked = revoke_all_but(
            &mut tx,
            &operator_cn(name),
            Some(CertRole::Operator),
            &[],
            "operator revoked",
        )
        .await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(revoked)
    }
}

async fn insert_operator_token(
    tx: &mut crate::db::Tx,
    ca: &CertificateAuthority,
    name: &HostName,
    ttl: Duration,
    actor: &str,
) -> Result<(TokenText, i64), DbError> {
    let token = TokenText {
        id: decnet_pki::random_hex(6),
        secret: decnet_pki::random_hex(16),
        ca_sha256: ca.fingerprint().to_hex(),
    };
    let expires_at = unix_now().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO operator_tokens (id, secret_hash, operator, created_at, expires_at, used_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, NULL, $6)",
    )
    .bind(&token.id)
    .bind(sha256_hex(token.secret.as_bytes()))
    .bind(name.as_str())
    .bind(unix_now())
    .bind(expires_at)
    .bind(actor)
    .execute(&mut **tx)
    .await?;
    Ok((token, expires_at))
}

/// The operator half of the control API's `POST /join` (`role:
/// "operator"`): check the one-time token, sign the CSR as
/// `operator@<name>` for [`OPERATOR_CERT_DAYS`], spend the token and record
/// the certificate (one transaction; the operator's earlier certificates
/// are revoked: one live certificate per operator), audit. `fleet_api_port`
/// tells the operator where the fleet API listens.
pub async fn join_operator(
    db: &FleetDb,
    ca: &CertificateAuthority,
    req: &JoinRequest,
    from: std::net::IpAddr,
    source: &str,
    fleet_api_port: Option<u16>,
) -> Result<JoinAnswer, JoinRefusal> {
    let forbidden = |m: &str| JoinRefusal::Forbidden(m.to_string());
    if !crate::join::valid_token_id(&req.token_id) {
        return Err(forbidden("invalid token"));
    }
    let row = sqlx::query(
        "SELECT secret_hash, operator, expires_at, used_at FROM operator_tokens WHERE id = $1",
    )
    .bind(&req.token_id)
    .fetch_optional(db.pool())
    .await
    .map_err(DbError::from)?;
    let Some(row) = row else {
        return Err(forbidden("invalid token"));
    };
    let get = |i| row.try_get::<String, _>(i).map_err(DbError::from);
    let (hash, name) = (get(0)?, get(1)?);
    let expires_at: i64 = row.try_get(2).map_err(DbError::from)?;
    let wrong_key = format!("wrong-secret:{source}");
    if db.join_attempts_now(&wrong_key).await? >= MAX_WRONG_SECRETS_PER_MINUTE {
        return Err(forbidden(
            "too many wrong token secrets from this address; wait a minute",
        ));
    }
    if !constant_time_eq(
        sha256_hex(req.secret.as_bytes()).as_bytes(),
        hash.as_bytes(),
    ) {
        db.count_join_attempt(&wrong_key).await?;
        return Err(forbidden("invalid token"));
    }
    if expires_at <= unix_now() {
        return Err(forbidden(
            "token expired; an admin makes a new one with `decnet operator token NAME`",
        ));
    }
    let name = HostName::new(&name).map_err(|_| forbidden("token bound to an invalid name"))?;
    let now = time::OffsetDateTime::now_utc();
    let spec = LeafSpec::for_role(&Role::Operator(name.clone()), &[]).with_validity(
        now - time::Duration::minutes(5),
        now + time::Duration::days(OPERATOR_CERT_DAYS),
    );
    let leaf = ca.sign_csr(&spec, &req.csr).map_err(|_| {
        JoinRefusal::BadRequest("the CSR is not a valid, self-signed PKCS#10 request".into())
    })?;
    let fp = leaf.fingerprint.to_hex();
    let cn = operator_cn(name.as_str());
    let mut tx = db.lock_operator(name.as_str()).await?;
    let claimed = sqlx::query(
        "UPDATE operator_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL \
         AND operator IN (SELECT name FROM operators WHERE revoked_at IS NULL)",
    )
    .bind(unix_now())
    .bind(&req.token_id)
    .execute(&mut *tx)
    .await
    .map_err(DbError::from)?
    .rows_affected();
    if claimed != 1 {
        return Err(forbidden("token already used, or its operator was revoked"));
    }
    revoke_all_but(
        &mut tx,
        &cn,
        Some(CertRole::Operator),
        &[],
        "superseded by a new login",
    )
    .await?;
    // A new login is how a stolen certificate is recovered from: the
    // console sessions opened with the old one end with it.
    let operator_name = cn.trim_start_matches("operator@");
    for q in [
        "DELETE FROM console_sessions WHERE operator = $1",
        "DELETE FROM console_tickets WHERE operator = $1",
    ] {
        sqlx::query(q)
            .bind(operator_name)
            .execute(&mut *tx)
            .await
            .map_err(DbError::from)?;
    }
    insert_certificate(
        &mut tx,
        &CertRecord::of_leaf(&leaf, &cn, CertRole::Operator),
    )
    .await?;
    tx.commit().await.map_err(DbError::from)?;
    let _ = db
        .audit(&AuditEntry::now(
            format!("join:{from}"),
            "operator.login",
            name.as_str(),
            AuditOutcome::Ok,
            format!("token={} fingerprint={fp}", req.token_id),
        ))
        .await;
    Ok(JoinAnswer {
        host: name.to_string(),
        cert_pem: leaf.cert_pem,
        ca_pem: ca.trust_pem().to_string(),
        fingerprint: fp,
        api_port: fleet_api_port,
    })
}

/// How often an operator may renew its certificate within an hour.
pub const MAX_RENEWALS_PER_HOUR: i64 = 3;

/// A renewed operator certificate must first be presented within this
/// many seconds of its issue (`decnet login --renew` presents it at once),
/// or it is revoked when it is: the certificate it replaced stays valid
/// until then, and a thief who renewed with a stolen one must not keep an
/// unused spare that outlives it.
pub const RENEWAL_TAKE_WITHIN: i64 = 600;

/// A renewed operator certificate.
#[derive(Clone, Debug)]
pub struct RenewedOperator {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its fingerprint, hex.
    pub fingerprint: String,
    /// When it expires (unix seconds).
    pub not_after: i64,
}

/// Renew operator `name`'s certificate (`decnet login --renew`): the
/// presented certificate (`presented`, its fingerprint) must still be the
/// operator's and unrevoked, and the operator active; the CSR's key was
/// made on the operator's machine. The new certificate is valid
/// [`OPERATOR_CERT_DAYS`]. Every other certificate of the operator is
/// revoked now (an older one, or an earlier renewal whose answer was
/// lost); the presented one stays valid until the new one is first
/// presented, when [`FleetDb::operator_standing`] revokes it. So an answer
/// lost on the way leaves the operator the certificate it renewed with, to
/// renew again, where revoking it at once locked the operator out until an
/// admin made a new token. The new certificate is recorded as issued after
/// every other of the operator (even within the same second), which is
/// what "older" means there. Audited as the operator.
pub async fn renew_operator(
    db: &FleetDb,
    ca: &CertificateAuthority,
    name: &str,
    presented: &str,
    csr_pem: &str,
) -> Result<RenewedOperator, RenewRefusal> {
    let host = HostName::new(name).map_err(|_| RenewRefusal::NotStanding)?;
    if db.operator_standing(name, presented).await?.is_none() {
        return Err(RenewRefusal::NotStanding);
    }
    // Each renewal revokes a certificate, and revocations travel to every
    // worker: an operator renewing in a loop would grow that list.
    let recent: i64 = sqlx::query(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'operator.renew' AND target = $1 AND at > $2",
    )
    .bind(name)
    .bind(unix_now() - 3600)
    .fetch_one(db.pool())
    .await
    .map_err(DbError::from)?
    .try_get(0)
    .map_err(DbError::from)?;
    if recent >= MAX_RENEWALS_PER_HOUR {
        return Err(RenewRefusal::TooOften);
    }
    let now = time::OffsetDateTime::now_utc();
    let spec = LeafSpec::for_role(&Role::Operator(host), &[]).with_validity(
        now - time::Duration::minutes(5),
        now + time::Duration::days(OPERATOR_CERT_DAYS),
    );
    let leaf = ca
        .sign_csr(&spec, csr_pem)
        .map_err(|_| RenewRefusal::BadCsr)?;
    let fp = leaf.fingerprint.to_hex();
    let cn = operator_cn(name);
    let mut tx = db.lock_operator(name).await?;
    // Still standing inside the transaction: a revocation meanwhile wins.
    let standing = sqlx::query(
        "SELECT 1 FROM certificates c JOIN operators o ON o.name = $2 \
         WHERE c.fingerprint = $1 AND c.host = $3 AND o.revoked_at IS NULL \
         AND c.fingerprint NOT IN (SELECT fingerprint FROM revoked_certificates)",
    )
    .bind(presented)
    .bind(name)
    .bind(&cn)
    .fetch_optional(&mut *tx)
    .await
    .map_err(DbError::from)?;
    if standing.is_none() {
        return Err(RenewRefusal::NotStanding);
    }
    // Older ones, and an earlier renewal never presented (a lost answer,
    // or a thief's): said in the audit entry.
    let revoked = revoke_all_but(
        &mut tx,
        &cn,
        Some(CertRole::Operator),
        &[presented],
        "superseded by a renewal",
    )
    .await?;
    insert_certificate(
        &mut tx,
        &CertRecord::of_leaf(&leaf, &cn, CertRole::Operator),
    )
    .await?;
    // Strictly after every other certificate of the operator, so that
    // presenting it retires the one it replaces even within one second.
    sqlx::query(
        "UPDATE certificates SET issued_at = (SELECT MAX(issued_at) + 1 FROM certificates \
         WHERE host = $1 AND role = 'operator' AND fingerprint <> $2) \
         WHERE fingerprint = $2 AND issued_at <= (SELECT MAX(issued_at) FROM certificates \
         WHERE host = $1 AND role = 'operator' AND fingerprint <> $2)",
    )
    .bind(&cn)
    .bind(&fp)
    .execute(&mut *tx)
    .await
    .map_err(DbError::from)?;
    tx.commit().await.map_err(DbError::from)?;
    let not_after = leaf.not_after.unix_timestamp();
    let _ = db
        .audit(&AuditEntry::now(
            format!("operator:{name}"),
            "operator.renew",
            name,
            AuditOutcome::Ok,
            format!(
                "fingerprint={fp} replaces={presented} (revoked on first use) revoked_now={}",
                if revoked.is_empty() {
                    "-".to_string()
                } else {
                    revoked.join(",")
                }
            ),
        ))
        .await;
    Ok(RenewedOperator {
        cert_pem: leaf.cert_pem,
        fingerprint: fp,
        not_after,
    })
}

/// Why an operator certificate was not renewed.
#[derive(Debug, thiserror::Error)]
pub enum RenewRefusal {
    /// The presented certificate is no longer the operator's, or the
    /// operator was revoked.
    #[error(
        "this certificate is revoked or replaced, or its operator was revoked: log in again with a new token"
    )]
    NotStanding,
    /// The CSR does not parse or is not self-signed.
    #[error("the CSR is not a valid, self-signed PKCS#10 request")]
    BadCsr,
    /// Renewed [`MAX_RENEWALS_PER_HOUR`] times within the hour already.
    #[error("this operator renewed {MAX_RENEWALS_PER_HOUR} times within the hour; try later")]
    TooOften,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}
