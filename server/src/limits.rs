//! What a server lets one peer, one source and everyone together hold.

use std::time::Duration;

/// Limits of the connection layer, common to every server.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// A connection that has not sent its TLS ClientHello within this is
    /// closed (a peer that speaks TLS sends it at once).
    pub client_hello_timeout: Duration,
    /// A TLS handshake not finished within this is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once, over all sources; a newcomer over it
    /// evicts the oldest silent handshake of the most crowded source (accept
    /// never waits).
    pub max_pending_handshakes: usize,
    /// Handshakes in progress at once from one source (IPv4 address or IPv6
    /// /64); a newcomer over it evicts that source's oldest silent one.
    pub max_pending_handshakes_per_source: usize,
    /// Open connections at once, over all sources; more are refused.
    pub max_connections: usize,
    /// Open connections without a client certificate from one source (only
    /// servers that admit anonymous peers at all: the control API's joins).
    pub max_anonymous_per_source: usize,
    /// Open connections without a certificate from one network (IPv4 /24,
    /// IPv6 /48, [`crate::source::NetworkKey`]): many sources of one party
    /// cannot fill the server-wide anonymous budget alone.
    pub max_anonymous_per_network: usize,
    /// Open connections without a client certificate over all sources: kept
    /// well below the descriptor limit, so anonymous peers can never hold
    /// the descriptors certified peers need.
    pub max_anonymous: usize,
    /// When [`Self::max_anonymous`] is reached, a newcomer without a
    /// certificate evicts the oldest such connection of the most crowded
    /// network, if that network holds at least as many as the newcomer's
    /// would (an evicted connection finishes its request in flight, at
    /// most [`Self::max_anonymous`] of them at once; beyond, it is cut). Only where every anonymous peer
    /// is a stranger asking to join (the control API); off by default: on
    /// the console an anonymous connection is a signed-in browser, and on
    /// a plain-text loopback server every client is anonymous.
    pub evict_anonymous: bool,
    /// Open connections at once under one certificate (fingerprint).
    pub max_connections_per_identity: usize,
    /// A connection is closed after this long, however busy (and always when
    /// its certificate expires): clients reconnect, and a long-lived
    /// connection never outlives its peer's standing by more than this.
    pub max_connection_lifetime: Option<Duration>,
    /// On shutdown, open connections get this long to finish; then they are cut.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            client_hello_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(5),
            // Silent connections are cheap (a descriptor each) and a peer
            // that speaks TLS is evicted only after a source's whole
            // budget of them has turned over: the larger the budget, the
            // longer a legitimate peer sharing the address has to say hello.
            max_pending_handshakes: 4096,
            max_pending_handshakes_per_source: 512,
            max_connections: 8192,
            max_anonymous_per_source: 16,
            max_anonymous_per_network: 64,
            max_anonymous: 256,
            evict_anonymous: false,
            max_connections_per_identity: 64,
            max_connection_lifetime: Some(Duration::from_secs(3600)),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Limits of the HTTP layer.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// A connection must deliver a complete request head within this,
    /// counted from when it is ready for one (the start, or the end of the
    /// previous response): this is both the slow-header limit and the
    /// keep-alive idle limit.
    pub header_timeout: Duration,
    /// The largest request head (and read buffer) accepted.
    pub max_header_bytes: usize,
    /// A request whose handler has not answered within this gets `408`;
    /// and once a connection reaches its end (its lifetime, its
    /// certificate's expiry, a shutdown) the answer in flight gets this
    /// long to be sent before the connection is closed under it.
    pub request_timeout: Duration,
    /// The default largest request body (a route may set its own).
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl ServerLimits {
    /// These limits, lowered where needed so that every connection they
    /// allow fits in `budget` descriptors, with the handshake and anonymous
    /// budgets each at most an eighth of it (so anonymous or silent peers
    /// can never hold what certified peers need) and one source's handshakes
    /// at most half of all. Returns what was lowered.
    pub fn fit_descriptors(mut self, budget: usize) -> (ServerLimits, Vec<String>) {
        let mut lowered = Vec::new();
        let eighth = (budget / 8).max(1);
        let mut clamp = |name: &str, v: &mut usize, cap: usize| {
            if *v > cap {
                lowered.push(format!("{name} {v} -> {cap}"));
                *v = cap;
            }
        };
        clamp("max_connections", &mut self.max_connections, budget.max(1));
        clamp(
            "max_pending_handshakes",
            &mut self.max_pending_handshakes,
            eighth,
        );
        clamp("max_anonymous", &mut self.max_anonymous, eighth);
        // No network, and no source, may hold more than a quarter of what
        // is left for anonymous peers.
        let per_network = (self.max_anonymous / 4).max(1);
        clamp(
            "max_anonymous_per_network",
            &mut self.max_anonymous_per_network,
            per_network,
        );
        let per_source = self.max_anonymous_per_network;
        clamp(
            "max_anonymous_per_source",
            &mut self.max_anonymous_per_source,
            per_source,
        );
        let per_source = (self.max_pending_handshakes / 2).max(1);
        clamp(
            "max_pending_handshakes_per_source",
            &mut self.max_pending_handshakes_per_source,
            per_source,
        );
        (self, lowered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_fitted_to_the_descriptor_budget() {
        let (fit, lowered) = ServerLimits {
            max_connections: 20_000,
            ..ServerLimits::default()
        }
        .fit_descriptors(896);
        assert_eq!(fit.max_connections, 896);
        assert_eq!(fit.max_pending_handshakes, 112);
        assert_eq!(fit.max_anonymous, 112);
        assert_eq!(fit.max_pending_handshakes_per_source, 56);
        assert_eq!(fit.max_anonymous_per_network, 28);
        assert_eq!(fit.max_anonymous_per_source, 16);
        assert_eq!(lowered.len(), 5, "{lowered:?}");
        // A console's caps on a small descriptor budget: no one network
        // (or address) can take every anonymous place.
        let (console, _) = ServerLimits {
            max_anonymous: 4096,
            max_anonymous_per_source: 256,
            max_anonymous_per_network: 1024,
            ..ServerLimits::default()
        }
        .fit_descriptors(4096);
        assert_eq!(console.max_anonymous, 512);
        assert_eq!(console.max_anonymous_per_network, 128);
        assert_eq!(console.max_anonymous_per_source, 128);
        let (same, none) = ServerLimits::default().fit_descriptors(100_000);
        assert!(none.is_empty());
        assert_eq!(
            same.max_connections,
            ServerLimits::default().max_connections
        );
    }
}
