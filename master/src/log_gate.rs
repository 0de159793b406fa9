//! The listener's admission check against the fleet database: a log peer
//! must be an agent whose certificate this master issued to that very host,
//! not revoked, and the host not decommissioned. Evaluated per connection
//! (and again periodically), so a decommission or reissue takes effect at
//! once, without restarting the listener.

use decnet_log_relay::listener::{GateFuture, PeerGate, agent_role};
use decnet_pki::PeerIdentity;

use crate::fleet_db::{FleetDb, HostStatus};

/// Admits enrolled, non-revoked agents.
#[derive(Clone, Debug)]
pub struct FleetGate {
    db: FleetDb,
}

impl FleetGate {
    /// A gate over `db`.
    pub fn new(db: FleetDb) -> Self {
        FleetGate { db }
    }

    async fn check(&self, peer: &PeerIdentity) -> Result<(), String> {
        agent_role(peer)?;
        let fp = peer.fingerprint.to_hex();
        let unavailable = |e: crate::fleet_db::DbError| {
            tracing::error!(error = %e, "fleet database unavailable; refusing log peer");
            "fleet database unavailable".to_string()
        };
        if self.db.is_revoked(&fp).await.map_err(unavailable)? {
            return Err("certificate revoked".into());
        }
        let Some(cert) = self.db.certificate(&fp).await.map_err(unavailable)? else {
            return Err("certificate unknown to the fleet database (not enrolled here)".into());
        };
        if cert.host != peer.cn || cert.role != "agent" {
            return Err(format!(
                "certificate was issued to {} ({}), not to {}",
                cert.host, cert.role, peer.cn
            ));
        }
        match self.db.host(&peer.cn).await.map_err(unavailable)? {
            Some(h) if h.status != HostStatus::Decommissioned => Ok(()),
            Some(_) => Err("host decommissioned".into()),
            None => Err("host not enrolled".into()),
        }
    }
}

impl PeerGate for FleetGate {
    fn admit<'a>(&'a self, peer: &'a PeerIdentity) -> GateFuture<'a> {
        Box::pin(self.check(peer))
    }
}
