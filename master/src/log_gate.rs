//! The listener's admission check against the fleet database: a log peer
//! must be an agent whose certificate speaks for its host — current (or a
//! pending renewal, promoted by being presented, or a retiring one within
//! its grace), not revoked, the host not decommissioned. Evaluated per
//! connection (and again periodically), so a decommission, reissue or
//! renewal takes effect at once, without restarting the listener.

use std::time::Duration;

use decnet_fleet::FleetDb;
use decnet_log_relay::listener::{GateFuture, PeerGate, agent_role};
use decnet_pki::PeerIdentity;

/// Admits agents that speak for their host.
#[derive(Clone, Debug)]
pub struct FleetGate {
    db: FleetDb,
    grace: Duration,
}

impl FleetGate {
    /// A gate over `db`; replaced certificates stay admitted for `grace`.
    pub fn new(db: FleetDb, grace: Duration) -> Self {
        FleetGate { db, grace }
    }

    async fn check(&self, peer: &PeerIdentity) -> Result<(), String> {
        agent_role(peer)?;
        self.db
            .authenticate(peer, self.grace)
            .await
            .map(|_| ())
            .map_err(|r| r.to_string())
    }
}

impl PeerGate for FleetGate {
    fn admit<'a>(&'a self, peer: &'a PeerIdentity) -> GateFuture<'a> {
        Box::pin(self.check(peer))
    }
}
