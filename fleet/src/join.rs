//! Token join: the worker generates its key, sends a CSR with a one-time
//! token, and gets back a certificate the master decides (CN and SANs from
//! the token, never from the CSR). The token carries the CA certificate's
//! SHA-256, so the worker can verify the master before it trusts anything.
//!
//! Token text: `<id>.<secret>.<ca-sha256>`; only SHA-256(secret) is stored.
//! Single use per role, expiring, bound to its host; wrong secrets are
//! counted (5 lock the token). Claiming the token, recording the
//! certificate and revoking the role's earlier certificates are one
//! transaction under the host's lock.

use std::net::IpAddr;
use std::time::Duration;

use decnet_pki::signing::{constant_time_eq, sha256_hex};
use decnet_pki::{CertificateAuthority, HostName, LeafSpec, Role};
use serde::{Deserialize, Serialize};

use crate::db::{DbError, FleetDb, insert_certificate, revoke_all_but, unix_now};
use crate::model::{
    AuditEntry, AuditOutcome, CertRecord, CertRole, HostRecord, HostStatus, JoinToken,
};

pub use decnet_swarm_client::join::{TokenText, parse_token};

/// Whether `id` has the shape of a token id (12 hex digits): checked before
/// anything about a join request is logged or audited.
pub fn valid_token_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a new token allows.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// The host that will join.
    pub host: HostName,
    /// Address the master dials.
    pub address: String,
    /// Extra SANs.
    pub sans: Vec<String>,
    /// Whether the updater may join too.
    pub allow_updater: bool,
    /// Lifetime.
    pub ttl: Duration,
}

/// Create and store a token for a grant.
pub async fn create_token(
    db: &FleetDb,
    ca: &CertificateAuthority,
    grant: &TokenGrant,
    actor: &str,
) -> Result<TokenText, crate::db::DbError> {
    let token = TokenText {
        id: decnet_pki::random_hex(6),
        secret: decnet_pki::random_hex(16),
        ca_sha256: ca.fingerprint().to_hex(),
    };
    db.create_token(
        &JoinToken {
            id: token.id.clone(),
            secret_hash: sha256_hex(token.secret.as_bytes()),
            host: grant.host.to_string(),
            address: grant.address.clone(),
            sans: grant.sans.clone(),
            allow_updater: grant.allow_updater,
            expires_at: unix_now()
                .saturating_add(i64::try_from(grant.ttl.as_secs()).unwrap_or(i64::MAX)),
            used_agent: None,
            used_updater: None,
            failures: 0,
        },
        actor,
    )
    .await?;
    Ok(token)
}

/// `POST /join` body. Its `Debug` never shows the secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Token id.
    pub token_id: String,
    /// Token secret.
    pub secret: String,
    /// `agent`, `updater` or `operator`.
    pub role: String,
    /// PEM CSR (its subject and SANs are ignored).
    pub csr: String,
    /// The host the worker believes it is (`--host`); must match the token's.
    #[serde(default)]
    pub host: Option<String>,
    /// The port the joining daemon will serve on (recorded for the master to dial).
    #[serde(default)]
    pub port: Option<u16>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token_id", &self.token_id)
            .field("role", &self.role)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// `POST /join` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// The host name (CN for agents).
    pub host: String,
    /// The issued certificate.
    pub cert_pem: String,
    /// The CA certificate.
    pub ca_pem: String,
    /// The certificate's fingerprint.
    pub fingerprint: String,
    /// Where the fleet API listens (its port on the master's host): told to
    /// operators only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_port: Option<u16>,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    /// The request itself is wrong (bad role, bad CSR).
    #[error("{0}")]
    BadRequest(String),
    /// The token does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// The fleet database failed.
    #[error("fleet database unavailable")]
    Unavailable,
}

impl From<crate::db::DbError> for JoinRefusal {
    fn from(e: crate::db::DbError) -> Self {
        tracing::error!(error = %e, "fleet database unavailable");
        JoinRefusal::Unavailable
    }
}

/// Wrong token secrets one source may send per minute; past them it is
/// refused for every token until the minute is over. A wrong secret never
/// locks the token itself: a stranger who learnt a token's id cannot deny
/// its host the join.
pub const MAX_WRONG_SECRETS_PER_MINUTE: u64 = 5;

/// How long after one half of a `--updater` token was used the other half
/// may still be: the install of one worker joins both at once; a token
/// found later on its disk opens nothing.
pub const TOKEN_HALF_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Handle a join: check the token, sign the CSR, record (one transaction),
/// audit. `source` is the caller's rate-limit key (its address, or IPv6 /64).
pub async fn join(
    db: &FleetDb,
    ca: &CertificateAuthority,
    req: &JoinRequest,
    from: IpAddr,
    source: &str,
) -> Result<JoinAnswer, JoinRefusal> {
    let forbidden = |msg: &str| JoinRefusal::Forbidden(msg.to_string());
    let role = match req.role.as_str() {
        "agent" => CertRole::Agent,
        "updater" => CertRole::Updater,
        _ => {
            return Err(JoinRefusal::BadRequest(
                "role must be \"agent\" or \"updater\"".into(),
            ));
        }
    };
    if !valid_token_id(&req.token_id) {
        return Err(forbidden("invalid token"));
    }
    let Some(token) = db.token(&req.token_id).await? else {
        return Err(forbidden("invalid token"));
    };
    let wrong_key = format!("wrong-secret:{source}");
    if db.join_attempts_now(&wrong_key).await? >= MAX_WRONG_SECRETS_PER_MINUTE {
        return Err(forbidden(
            "too many wrong token secrets from this address; wait a minute",
        ));
    }
    if !constant_time_eq(
        sha256_hex(req.secret.as_bytes()).as_bytes(),
        token.secret_hash.as_bytes(),
    ) {
        // Counted against the token (for the record) and the source (the
        // limit): never a lockout of the token.
        db.token_failure(&token.id).await?;
        db.count_join_attempt(&wrong_key).await?;
        return Err(forbidden("invalid token"));
    }
    if token.expires_at <= unix_now() {
        return Err(forbidden(
            "token expired; create a new one with `decnet swarm token create`",
        ));
    }
    if let Some(claimed) = &req.host
        && claimed != &token.host
    {
        return Err(JoinRefusal::Forbidden(format!(
            "this token is bound to another host, not {}",
            HostName::new(claimed)
                .map(|h| h.to_string())
                .unwrap_or_else(|_| "the one claimed".into())
        )));
    }
    let other_half = match role {
        CertRole::Updater => token.used_agent,
        _ => token.used_updater,
    };
    if let Some(at) = other_half
        && unix_now() - at > TOKEN_HALF_GRACE.as_secs() as i64
    {
        return Err(forbidden(
            "the other half of this token was used over 10 minutes ago, which ended this half; create a new token",
        ));
    }
    if role == CertRole::Updater && !token.allow_updater {
        return Err(forbidden(
            "this token does not allow an updater to join (create it with --updater)",
        ));
    }
    let host =
        HostName::new(&token.host).map_err(|_| forbidden("token bound to an invalid host name"))?;
    let pki_role = match role {
        CertRole::Updater => Role::Updater(host.clone()),
        _ => Role::Agent(host.clone()),
    };
    let mut sans = vec![token.address.clone()];
    sans.extend(token.sans.iter().cloned());
    let spec = LeafSpec::for_role(&pki_role, &sans);
    // Parse and verify the CSR before the token is spent.
    let leaf = ca.sign_csr(&spec, &req.csr).map_err(|_| {
        JoinRefusal::BadRequest("the CSR is not a valid, self-signed PKCS#10 request".into())
    })?;
    let fp = leaf.fingerprint.to_hex();

    let (mut tx, existing) = db.lock_host(host.as_str()).await?;
    if existing
        .as_ref()
        .is_some_and(|h| h.status == HostStatus::Decommissioned)
    {
        return Err(forbidden("the host was decommissioned; re-enroll it first"));
    }
    if !FleetDb::claim_token(&mut tx, &token.id, role).await? {
        return Err(forbidden("token already used"));
    }
    revoke_all_but(
        &mut tx,
        host.as_str(),
        Some(role),
        &[],
        "superseded by a join",
    )
    .await?;
    insert_certificate(&mut tx, &CertRecord::of_leaf(&leaf, host.as_str(), role)).await?;
    match existing {
        None => {
            let mut h = HostRecord::new(
                host.as_str(),
                &token.address,
                crate::enrollment::AGENT_PORT,
                crate::enrollment::UPDATER_PORT,
            );
            h.sans = spec.sans.clone();
            match role {
                CertRole::Updater => {
                    h.updater_fingerprint = Some(fp.clone());
                    h.updater_port = req.port.unwrap_or(h.updater_port);
                }
                _ => {
                    h.agent_fingerprint = Some(fp.clone());
                    h.agent_port = req.port.unwrap_or(h.agent_port);
                }
            }
            FleetDb::put_host(&mut tx, &h).await?;
        }
        Some(_) => {
            // Only this role's columns change: the other daemon of the host
            // (and its pending renewal) is not touched.
            let sql = match role {
                CertRole::Updater => {
                    "UPDATE hosts SET updater_fingerprint = $1, updater_pending = NULL, \
                     updater_port = COALESCE($2, updater_port), updated_at = $3 WHERE name = $4"
                }
                _ => {
                    "UPDATE hosts SET agent_fingerprint = $1, agent_pending = NULL, \
                     agent_port = COALESCE($2, agent_port), updated_at = $3, status = 'enrolled', \
                     last_error = NULL WHERE name = $4"
                }
            };
            sqlx::query(sql)
                .bind(&fp)
                .bind(req.port.map(i64::from))
                .bind(unix_now())
                .bind(host.as_str())
                .execute(&mut *tx)
                .await
                .map_err(crate::db::DbError::from)?;
        }
    }
    tx.commit().await.map_err(crate::db::DbError::from)?;
    let _ = db
        .audit(&AuditEntry::now(
            format!("join:{from}"),
            "swarm.join",
            host.as_str(),
            AuditOutcome::Ok,
            format!("role={role} token={} fingerprint={fp}", token.id),
        ))
        .await;
    Ok(JoinAnswer {
        host: host.to_string(),
        cert_pem: leaf.cert_pem,
        ca_pem: ca.trust_pem().to_string(),
        fingerprint: fp,
        api_port: None,
    })
}

impl FleetDb {
    /// Count one join attempt from `source` in the current minute and
    /// return how many that minute has seen, across every master process
    /// on this database.
    pub async fn count_join_attempt(&self, source: &str) -> Result<u64, DbError> {
        use sqlx::Row;
        let window = unix_now() / 60 * 60;
        let n: i64 = sqlx::query(
            "INSERT INTO join_attempts (source, window_start, attempts) VALUES ($1, $2, 1) \
             ON CONFLICT (source, window_start) DO UPDATE SET attempts = join_attempts.attempts + 1 \
             RETURNING attempts",
        )
        .bind(source)
        .bind(window)
        .fetch_one(self.pool())
        .await?
        .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// How many attempts `source` made in the current minute (not counting
    /// this look).
    pub async fn join_attempts_now(&self, source: &str) -> Result<u64, DbError> {
        use sqlx::Row;
        let window = unix_now() / 60 * 60;
        let row = sqlx::query(
            "SELECT attempts FROM join_attempts WHERE source = $1 AND window_start = $2",
        )
        .bind(source)
        .bind(window)
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(r) => u64::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0),
            None => 0,
        })
    }

    /// Forget join-attempt windows older than the previous minute.
    pub async fn prune_join_attempts(&self) -> Result<u64, DbError> {
        let cutoff = unix_now() / 60 * 60 - 60;
        Ok(
            sqlx::query("DELETE FROM join_attempts WHERE window_start < $1")
                .bind(cutoff)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_round_trip_and_garbage() {
        let t = TokenText {
            id: "a".repeat(12),
            secret: "b".repeat(32),
            ca_sha256: "c".repeat(64),
        };
        let p = parse_token(&t.to_string()).unwrap();
        assert_eq!(p.secret, t.secret);
        for bad in [
            "",
            "a.b.c",
            &format!("{t}.x"),
            &t.to_string().replace('a', "z"),
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn token_ids_are_checked_before_use() {
        assert!(valid_token_id("0123456789ab"));
        assert!(!valid_token_id("0123456789a"));
        assert!(!valid_token_id("0123456789ag"));
        assert!(!valid_token_id("x\u{1b}[2J\ny"));
    }
}
