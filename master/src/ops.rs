//! Fleet operations as the master performs them, whoever asked: the local
//! CLI on the master host or an operator through the fleet API. No HTTP,
//! no printing: typed results, audited with the caller's actor; the CLI and
//! the API render them (DESIGN §2's `ops/`, one operation at a time).

use decnet_fleet::{AuditEntry, AuditOutcome, FleetDb, HostStatus};
use decnet_pki::{CaLayout, CertificateAuthority, HostName};

use decnet_swarm_client::transport::WorkerPool;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request is wrong (exit 2 locally, 400 on the API).
    #[error("{0}")]
    Invalid(String),
    /// What it names does not exist (exit 2 locally, 404 on the API).
    #[error("{0}")]
    NotFound(String),
    /// The fleet database or the disk failed.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<decnet_fleet::DbError> for OpError {
    fn from(e: decnet_fleet::DbError) -> Self {
        OpError::Internal(e.into())
    }
}

impl OpError {
    /// As the CLI reports it (a usage error exits 2).
    pub fn into_cli(self) -> anyhow::Error {
        match self {
            OpError::Invalid(m) | OpError::NotFound(m) => crate::usage::UsageError(m).into(),
            OpError::Internal(e) => e,
        }
    }
}

async fn audit(
    db: &FleetDb,
    actor: &str,
    action: &str,
    target: &str,
    outcome: AuditOutcome,
    detail: String,
) {
    if let Err(e) = db
        .audit(&AuditEntry::now(actor, action, target, outcome, detail))
        .await
    {
        tracing::error!(error = %e, action, "cannot write the audit entry");
    }
}

pub use decnet_cli::args::TokenRequest;

/// Create a single-use join token; audited.
pub async fn create_join_token(
    db: &FleetDb,
    ca: &CertificateAuthority,
    req: &TokenRequest,
    actor: &str,
) -> Result<decnet_swarm_client::join::TokenText, OpError> {
    let name = HostName::new(&req.host).map_err(|e| OpError::Invalid(e.to_string()))?;
    for s in std::iter::once(&req.address).chain(req.sans.iter()) {
        decnet_pki::ca::validate_san(s).map_err(|e| OpError::Invalid(e.to_string()))?;
    }
    let grant = decnet_fleet::join::TokenGrant {
        host: name.clone(),
        address: req.address.clone(),
        sans: req.sans.clone(),
        allow_updater: req.updater,
        ttl: req.ttl,
    };
    let token = decnet_fleet::join::create_token(db, ca, &grant, actor).await?;
    audit(
        db,
        actor,
        "swarm.token.create",
        name.as_str(),
        AuditOutcome::Ok,
        format!(
            "token={} updater={} ttl={}s",
            token.id,
            req.updater,
            req.ttl.as_secs()
        ),
    )
    .await;
    Ok(token)
}

/// What a decommission did.
#[derive(Clone, Debug)]
pub struct Decommissioned {
    /// Certificates revoked.
    pub revoked: usize,
    /// Issued bundle directories removed from the master.
    pub removed_bundles: usize,
}

/// Decommission `host`: its certificates revoked, the bundles the master
/// kept for it deleted; audited. (Confirmation is the caller's.)
pub async fn decommission(
    db: &FleetDb,
    layout: &CaLayout,
    host: &str,
    actor: &str,
) -> Result<Decommissioned, OpError> {
    let name = HostName::new(host).map_err(|e| OpError::Invalid(e.to_string()))?;
    if db.host(name.as_str()).await?.is_none() {
        return Err(OpError::NotFound(format!(
            "host {name} is not enrolled (see `decnet swarm list`)"
        )));
    }
    let revoked = db.decommission(name.as_str()).await?;
    let removed = decnet_fleet::enrollment::remove_issued_bundles(layout, &name);
    audit(
        db,
        actor,
        "swarm.decommission",
        name.as_str(),
        AuditOutcome::Ok,
        format!(
            "revoked={} removed_bundles={}",
            revoked.len(),
            removed.len()
        ),
    )
    .await;
    Ok(Decommissioned {
        revoked: revoked.len(),
        removed_bundles: removed.len(),
    })
}

/// What a renewal request did: the agent renews at its next heartbeat; the
/// updater (which has none) was asked directly, when the host has one.
#[derive(Clone, Debug)]
pub struct RenewRequested {
    /// The updater's answer (`None`: the host has no updater).
    pub updater: Option<Result<(), String>>,
}

/// Ask `host` to renew its certificates; audited. A suspect host is
/// refused (a renewal would go to whichever holder asks first).
pub async fn request_renewal(
    db: &FleetDb,
    pool: &WorkerPool,
    host: &str,
    actor: &str,
) -> Result<RenewRequested, OpError> {
    if db
        .host(host)
        .await?
        .is_some_and(|h| h.status == HostStatus::Suspect)
    {
        audit(
            db,
            actor,
            "swarm.renew",
            host,
            AuditOutcome::Refused,
            "host is suspect".into(),
        )
        .await;
        return Err(OpError::Invalid(format!(
            "{host} is suspect: two holders of its identity were seen, and a renewal would go to whichever asks first; burn it instead: decnet swarm burn {host}"
        )));
    }
    let found = db.request_renewal(host).await?;
    audit(
        db,
        actor,
        "swarm.renew",
        host,
        if found {
            AuditOutcome::Ok
        } else {
            AuditOutcome::Refused
        },
        "renewal requested".into(),
    )
    .await;
    if !found {
        return Err(OpError::NotFound(format!(
            "host {host} is not enrolled or is decommissioned"
        )));
    }
    let h = crate::fleet_ops::select_hosts(db, &[host.to_string()])
        .await
        .map_err(OpError::Internal)?
        .remove(0);
    let _turn = crate::fleet_ops::FanOut::one_change().await;
    let updater = if h.updater_fingerprint.is_none() {
        None
    } else {
        Some(match crate::rollout::updater_client(pool, &h) {
            Ok(c) => c.renew().await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        })
    };
    if let Some(r) = &updater {
        audit(
            db,
            actor,
            "swarm.renew.updater",
            host,
            if r.is_ok() {
                AuditOutcome::Ok
            } else {
                AuditOutcome::Failed
            },
            match r {
                Ok(()) => "updater renewal requested".into(),
                Err(_) => "the updater did not take the renewal request".into(),
            },
        )
        .await;
    }
    Ok(RenewRequested { updater })
}

/// Burn `host` (a compromised host): its deckies torn down first when its
/// agent still answers (best effort: a burned host is presumed hostile),
/// then every certificate it has revoked, whoever holds it, and the bundles
/// the master kept for it deleted; audited. (Confirmation is the caller's.)
pub async fn burn(
    db: &FleetDb,
    layout: &CaLayout,
    pool: &WorkerPool,
    host: &str,
    actor: &str,
) -> Result<decnet_api::Burned, OpError> {
    let name = HostName::new(host).map_err(|e| OpError::Invalid(e.to_string()))?;
    let Some(h) = db.host(name.as_str()).await? else {
        return Err(OpError::NotFound(format!(
            "host {name} is not enrolled (see `decnet swarm list`)"
        )));
    };
    if h.status == HostStatus::Decommissioned {
        return Err(OpError::Invalid(format!(
            "host {name} is decommissioned already"
        )));
    }
    // Its deckies first, while its agent can still be reached.
    let torn = if h.status == HostStatus::Burned {
        Err("burned already".to_string())
    } else {
        crate::fleet_ops::teardown_before_burn(pool, &h).await
    };
    let revoked = db.burn(name.as_str()).await?;
    let removed = decnet_fleet::enrollment::remove_issued_bundles(layout, &name);
    audit(
        db,
        actor,
        "swarm.burn",
        name.as_str(),
        AuditOutcome::Ok,
        format!(
            "was={} revoked={} removed_bundles={} teardown={}",
            h.status,
            revoked.len(),
            removed.len(),
            match &torn {
                Ok(names) => format!("[{}]", names.join(",")),
                Err(e) => format!("failed: {e}"),
            }
        ),
    )
    .await;
    let (torn_down, teardown_error) = match torn {
        Ok(n) => (Some(n), None),
        Err(e) => (None, Some(e)),
    };
    Ok(decnet_api::Burned {
        host: name.to_string(),
        revoked: revoked.len(),
        removed_bundles: removed.len(),
        torn_down,
        teardown_error,
    })
}

/// Change where the master dials `host`; audited (a host not enrolled is
/// refused, and audited as such).
pub async fn set_endpoint(
    db: &FleetDb,
    host: &str,
    req: &decnet_api::SetEndpoint,
    actor: &str,
) -> Result<(), OpError> {
    if let Some(a) = &req.address {
        decnet_pki::ca::validate_san(a).map_err(|e| OpError::Invalid(e.to_string()))?;
    }
    let found = db
        .update_endpoint(
            host,
            req.address.as_deref(),
            req.agent_port,
            req.updater_port,
        )
        .await?;
    // What changed, in plain words (never Rust's debug syntax).
    let detail = [
        req.address.as_ref().map(|a| format!("address={a}")),
        req.agent_port.map(|p| format!("agent_port={p}")),
        req.updater_port.map(|p| format!("updater_port={p}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    audit(
        db,
        actor,
        "swarm.set_endpoint",
        host,
        if found {
            AuditOutcome::Ok
        } else {
            AuditOutcome::Refused
        },
        detail,
    )
    .await;
    if !found {
        return Err(OpError::NotFound(format!(
            "host {host} is not enrolled (see `decnet swarm list`)"
        )));
    }
    Ok(())
}
