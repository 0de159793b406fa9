//! Token join: the worker generates its key, sends a CSR with a one-time
//! token, and gets back a certificate the master decides (CN and SANs from
//! the token, never from the CSR). The token carries the CA certificate's
//! SHA-256, so the worker can verify the master before it trusts anything.
//!
//! Token text: `<id>.<secret>.<ca-sha256>`; only SHA-256(secret) is stored.
//! Single use per role, expiring, bound to its host; wrong secrets are
//! counted (5 lock the token) and failures are rate-limited per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use decnet_pki::signing::{constant_time_eq, sha256_hex};
use decnet_pki::{CertificateAuthority, HostName, LeafSpec, Role};
use serde::{Deserialize, Serialize};

use crate::fleet_db::{AuditEntry, CertRecord, FleetDb, HostStatus, JoinToken, unix_now};

/// Wrong-secret attempts after which a token is locked.
pub const MAX_TOKEN_FAILURES: i64 = 5;
/// Failed joins per address and minute before `429`.
pub const MAX_FAILURES_PER_MINUTE: u32 = 10;

pub use decnet_swarm_client::join::{TokenText, parse_token};

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
) -> Result<TokenText, crate::fleet_db::DbError> {
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
            expires_at: unix_now() + grant.ttl.as_secs() as i64,
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
    /// `agent` or `updater`.
    pub role: String,
    /// PEM CSR (its subject and SANs are ignored).
    pub csr: String,
    /// The host the worker believes it is (`--host`); must match the token's.
    #[serde(default)]
    pub host: Option<String>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token_id", &self.token_id)
            .field("role", &self.role)
            .field("host", &self.host)
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
}

/// Why a join was refused: (HTTP status, message).
#[derive(Debug)]
pub struct JoinRefusal(pub u16, pub String);

/// Per-address failure counter.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    seen: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureLimiter {
    /// Whether `ip` is currently blocked.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).is_some_and(|(n, since)| {
            *n >= MAX_FAILURES_PER_MINUTE && since.elapsed() < Duration::from_secs(60)
        })
    }

    /// Count a failure from `ip`.
    pub fn fail(&self, ip: IpAddr) {
        let mut map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(ip).or_insert((0, Instant::now()));
        if e.1.elapsed() >= Duration::from_secs(60) {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}

/// Handle a join: check the token, sign the CSR, record, audit.
pub async fn join(
    db: &FleetDb,
    ca: &CertificateAuthority,
    req: &JoinRequest,
    from: IpAddr,
) -> Result<JoinAnswer, JoinRefusal> {
    let refuse = |status: u16, msg: &str| JoinRefusal(status, msg.to_string());
    let unavailable = |_| refuse(503, "fleet database unavailable");
    let updater = match req.role.as_str() {
        "agent" => false,
        "updater" => true,
        _ => return Err(refuse(400, "role must be \"agent\" or \"updater\"")),
    };
    let Some(token) = db.token(&req.token_id).await.map_err(unavailable)? else {
        return Err(refuse(403, "invalid token"));
    };
    if token.failures >= MAX_TOKEN_FAILURES {
        return Err(refuse(
            403,
            "token locked after repeated wrong secrets; create a new one",
        ));
    }
    if !constant_time_eq(
        sha256_hex(req.secret.as_bytes()).as_bytes(),
        token.secret_hash.as_bytes(),
    ) {
        db.token_failure(&token.id).await.map_err(unavailable)?;
        return Err(refuse(403, "invalid token"));
    }
    if token.expires_at <= unix_now() {
        return Err(refuse(
            403,
            "token expired; create a new one with `decnet swarm token create`",
        ));
    }
    if let Some(claimed) = &req.host
        && claimed != &token.host
    {
        return Err(refuse(
            403,
            &format!("this token is bound to another host, not {claimed}"),
        ));
    }
    if updater && !token.allow_updater {
        return Err(refuse(
            403,
            "this token does not allow an updater to join (create it with --updater)",
        ));
    }
    if updater && token.used_updater.is_some() || !updater && token.used_agent.is_some() {
        return Err(refuse(403, "token already used"));
    }
    if let Some(h) = db.host(&token.host).await.map_err(unavailable)?
        && h.status == HostStatus::Decommissioned
    {
        return Err(refuse(
            403,
            "the host was decommissioned; re-enroll it first",
        ));
    }
    let host = HostName::new(&token.host)
        .map_err(|_| refuse(500, "token bound to an invalid host name"))?;
    let role = if updater {
        Role::Updater(host.clone())
    } else {
        Role::Agent(host.clone())
    };
    let mut sans = vec![token.address.clone()];
    sans.extend(token.sans.iter().cloned());
    let spec = LeafSpec::for_role(&role, &sans);
    // Parse and verify the CSR before the token is spent.
    let leaf = ca
        .sign_csr(&spec, &req.csr)
        .map_err(|_| refuse(400, "the CSR is not a valid, self-signed PKCS#10 request"))?;
    if !db
        .claim_token(&token.id, updater)
        .await
        .map_err(unavailable)?
    {
        return Err(refuse(403, "token already used"));
    }
    let role_name = if updater { "updater" } else { "agent" };
    db.record_join(
        host.as_str(),
        &token.address,
        &spec.sans,
        role_name,
        &CertRecord {
            fingerprint: leaf.fingerprint.to_hex(),
            host: host.to_string(),
            role: role_name.into(),
            serial: leaf.serial.clone(),
            not_after: leaf.not_after.unix_timestamp(),
        },
    )
    .await
    .map_err(unavailable)?;
    let _ = db
        .audit(&AuditEntry {
            at: unix_now(),
            actor: format!("join:{from}"),
            action: "swarm.join".into(),
            target: host.to_string(),
            outcome: "ok".into(),
            detail: format!(
                "role={role_name} token={} fingerprint={}",
                token.id, leaf.fingerprint
            ),
        })
        .await;
    Ok(JoinAnswer {
        host: host.to_string(),
        cert_pem: leaf.cert_pem,
        ca_pem: ca.cert_pem().to_string(),
        fingerprint: leaf.fingerprint.to_hex(),
    })
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
    fn limiter_blocks_after_too_many_failures() {
        let l = FailureLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES_PER_MINUTE {
            assert!(!l.blocked(ip));
            l.fail(ip);
        }
        assert!(l.blocked(ip));
        assert!(!l.blocked("10.0.0.2".parse().unwrap()));
    }
}
