//! What a server lets one peer, one source and everyone together hold.

use std::time::Duration;

/// Limits of the connection layer, common to every server.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// A TLS handshake not finished within this is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once, over all sources; more are refused
    /// (closed at once — accept never waits).
    pub max_pending_handshakes: usize,
    /// Handshakes in progress at once from one source (IPv4 address or IPv6
    /// /64); more from that source are refused.
    pub max_pending_handshakes_per_source: usize,
    /// Open connections at once, over all sources; more are refused.
    pub max_connections: usize,
    /// Open connections without a client certificate from one source (only
    /// servers that admit anonymous peers at all: the control API's joins).
    pub max_anonymous_per_source: usize,
    /// Open connections at once under one certificate (fingerprint).
    pub max_connections_per_identity: usize,
    /// A connection is closed after this long, however busy (and always when
    /// its certificate expires).
    pub max_connection_lifetime: Option<Duration>,
    /// On shutdown, open connections get this long to finish; then they are cut.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 512,
            max_pending_handshakes_per_source: 32,
            max_connections: 8192,
            max_anonymous_per_source: 16,
            max_connections_per_identity: 64,
            max_connection_lifetime: None,
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
    /// A request whose handler has not answered within this gets `408`.
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
