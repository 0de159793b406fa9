//! decnet-server: the one server runner of the workspace, used by the agent,
//! the updater, the master's control API and the log listener.
//!
//! * [`runner`] — [`Server`]: bind, accept (never waiting on handshakes),
//!   TLS handshake with a short timeout, admission, graceful shutdown; a
//!   protocol implements [`ConnectionHandler`];
//! * [`admission`] — the per-source, per-identity and global counters,
//!   evicting the oldest silent handshake rather than refusing a newcomer;
//! * [`descriptors`] — the open-file limit raised at start, the caps fitted to it;
//! * [`limits`] — [`ServerLimits`] and [`HttpLimits`];
//! * [`http`] — [`HttpService`]: an axum router over hyper with timers and limits;
//! * [`authz`] — [`AccessPolicy`], the role checks every request passes;
//! * [`metrics`] — the runner's series and the `/metrics` endpoint
//!   ([`metrics::MetricsEndpoint`]), monitors only;
//! * `head_timer` — hyper's header-read timer, one tokio timer per
//!   connection however many requests it carries;
//! * [`linger`] — a lingering close, so an answer sent before its
//!   request was read whole (a `413`) reaches a client still sending;
//! * [`read_ahead`] — large socket reads under TLS while a peer sends in
//!   bulk, no buffer held for a quiet one;
//! * [`error_body`] — the JSON error body of every server;
//! * [`source`], [`refusal_log`], [`shutdown`] — source keys, rate-limited
//!   refusal logging, the SIGTERM trigger;
//! * `testing` (feature) — table-driven access tests of every route × role.

pub mod activation;
pub mod admission;
pub mod authz;
pub mod descriptors;
pub mod error_body;
mod head_timer;
pub mod http;
pub mod limits;
pub mod linger;
pub mod metrics;
pub mod read_ahead;
pub mod refusal_log;
pub mod runner;
pub mod shutdown;
pub mod source;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use authz::{AccessPolicy, Refusal, RoleSet};
pub use error_body::{json_error, plain_decode_message};
pub use http::{App, HttpService, VerifiedPeer};
pub use limits::{HttpLimits, ServerLimits};
pub use runner::{
    Connection, ConnectionHandler, Server, ServerError, ServerIo, TlsPeer, Transport,
};
pub use shutdown::shutdown_signal;
