//! The runner's own series, and the `/metrics` endpoint every daemon can
//! serve (`--metrics-addr`).
//!
//! Series (all labelled by `server`: `agent`, `updater`, `control`,
//! `listener`, `metrics`):
//!
//! | series | what |
//! |---|---|
//! | `decnet_connections_open` | connections being served now |
//! | `decnet_connections_refused_total{reason}` | refused by admission (before or after the handshake) |
//! | `decnet_handshake_failures_total{reason}` | TLS handshakes that failed (`timeout`, `no_certificate`, `unknown_ca`, `revoked`, ...) |
//! | `decnet_tls_handshakes_total{kind}` | TLS handshakes completed: `full` (certificates and signatures on both sides) or `resumed` (a session resumed, no signature) |
//! | `decnet_http_requests_total{route,status}` | HTTP requests by route template and status |
//! | `decnet_role_refusals_total{route}` | requests the role check refused |
//! | `decnet_certificate_expiry_timestamp_seconds{cn,role}` | when this daemon's own certificate expires |
//!
//! The endpoint: plain HTTP on a loopback address (like the listener's
//! plain-text mode), mTLS anywhere else, admitting only certificates of the
//! monitor role (`monitor@<name>`, issued by `decnet ca issue-monitor`).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::{Method, header};
use axum::response::IntoResponse;
use axum::routing::get;
use decnet_pki::{ClientAuth, MaterialSource, PeerIdentity, RoleKind};
use decnet_telemetry::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::authz::{AccessPolicy, Refusal};
use crate::http::HttpService;
use crate::limits::{HttpLimits, ServerLimits};
use crate::runner::{Server, ServerError, Transport};

/// `server`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// Which server.
    pub server: String,
}

/// `server`, `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Which server.
    pub server: String,
    /// Why.
    pub reason: String,
}

/// `server`, `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// Which server.
    pub server: String,
    /// `full` or `resumed`.
    pub kind: String,
}

/// `server`, `route`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Which server.
    pub server: &'static str,
    /// The route template (`/operations/{id}`), or `unmatched`.
    pub route: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// `server`, `route`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Which server.
    pub server: &'static str,
    /// The route template, or `unmatched`.
    pub route: &'static str,
}

/// `cn`, `role`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// The certificate's CN.
    pub cn: String,
    /// Its role.
    pub role: String,
}

/// The runner's series.
#[derive(Debug)]
pub struct ServerMetrics {
    /// Connections being served.
    pub connections_open: Family<ServerLabel, Gauge>,
    /// Connections refused by admission.
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Failed TLS handshakes.
    pub handshake_failures: Family<ReasonLabels, Counter>,
    /// Completed TLS handshakes, full or resumed.
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// HTTP requests.
    pub requests: Family<RequestLabels, Counter>,
    /// Requests refused by the role check.
    pub role_refusals: Family<RouteLabels, Counter>,
    /// Expiry of this process's own certificates.
    pub cert_expiry: Family<CertLabels, Gauge>,
}

impl ServerMetrics {
    /// TLS handshakes the runner named `server` completed in this process:
    /// (full, resumed). Why: benchmarks and tests tell full handshakes from
    /// resumed ones by counting, not by assuming.
    pub fn handshake_counts(&self, server: &str) -> (u64, u64) {
        let count = |kind: &str| {
            self.handshakes
                .get_or_create(&HandshakeLabels {
                    server: server.into(),
                    kind: kind.into(),
                })
                .get()
        };
        (count("full"), count("resumed"))
    }
}

/// Count one answered HTTP request in `decnet_http_requests_total`.
///
/// Each thread keeps the counters it has used: the family's lookup takes a
/// read lock every thread shares, two atomic operations per request on a
/// cache line both cores fought over (issue #31). A label set is a server
/// name, an interned route template and a status, so a thread sees a
/// handful; past [`MAX_KNOWN_REQUEST_LABELS`] a thread looks the rest up
/// in the family each time.
pub fn count_request(labels: RequestLabels) {
    thread_local! {
        static KNOWN: std::cell::RefCell<Vec<(RequestLabels, Counter)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let same = |a: &RequestLabels, b: &RequestLabels| {
        a.status == b.status
            && (std::ptr::eq(a.route, b.route) || a.route == b.route)
            && (std::ptr::eq(a.server, b.server) || a.server == b.server)
    };
    let counted = KNOWN.try_with(|known| {
        let mut known = known.borrow_mut();
        if let Some((_, counter)) = known.iter().find(|(l, _)| same(l, &labels)) {
            counter.inc();
            return;
        }
        let counter = server_metrics().requests.get_or_create(&labels).clone();
        counter.inc();
        if known.len() < MAX_KNOWN_REQUEST_LABELS {
            known.push((labels.clone(), counter));
        }
    });
    // A thread whose locals are being torn down counts in the family.
    if counted.is_err() {
        server_metrics().requests.get_or_create(&labels).inc();
    }
}

/// The label sets of `decnet_http_requests_total` one thread remembers.
pub const MAX_KNOWN_REQUEST_LABELS: usize = 256;

/// The runner's series, registered on first use.
pub fn server_metrics() -> &'static ServerMetrics {
    static M: OnceLock<ServerMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = ServerMetrics {
            connections_open: Family::default(),
            connections_refused: Family::default(),
            handshake_failures: Family::default(),
            handshakes: Family::default(),
            requests: Family::default(),
            role_refusals: Family::default(),
            cert_expiry: Family::default(),
        };
        register(
            "decnet_connections_open",
            "Connections being served",
            m.connections_open.clone(),
        );
        register(
            "decnet_connections_refused",
            "Connections refused by admission limits, by reason",
            m.connections_refused.clone(),
        );
        register(
            "decnet_handshake_failures",
            "TLS handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        register(
            "decnet_tls_handshakes",
            "TLS handshakes completed, by kind (full or resumed)",
            m.handshakes.clone(),
        );
        register(
            "decnet_http_requests",
            "HTTP requests served, by route template and status",
            m.requests.clone(),
        );
        register(
            "decnet_role_refusals",
            "Requests refused by the role check, by route",
            m.role_refusals.clone(),
        );
        register(
            "decnet_certificate_expiry_timestamp_seconds",
            "When this process's own certificate expires (unix seconds)",
            m.cert_expiry.clone(),
        );
        m
    })
}

/// A connection counted in `decnet_connections_open` until dropped.
pub(crate) struct OpenConnection(Gauge);

impl OpenConnection {
    pub(crate) fn new(server: &str) -> OpenConnection {
        let g = server_metrics()
            .connections_open
            .get_or_create(&ServerLabel {
                server: server.to_string(),
            })
            .clone();
        g.inc();
        OpenConnection(g)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Keep `decnet_certificate_expiry_timestamp_seconds` true for `material`:
/// now, and after every renewal (a task follows the material's changes).
pub fn observe_certificate(material: &MaterialSource) {
    fn set(material: &decnet_pki::TlsMaterial) {
        let id = &material.bundle().identity;
        server_metrics()
            .cert_expiry
            .get_or_create(&CertLabels {
                cn: id.cn.clone(),
                role: id.role.kind().to_string(),
            })
            .set(id.not_after.unix_timestamp());
    }
    set(&material.current());
    let mut rx = material.subscribe();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let m = rx.borrow_and_update().clone();
            set(&m);
        }
    });
}

/// Who may read `/metrics`: monitors over mTLS; anyone on a loopback
/// plain-text endpoint (the address itself is the boundary there).
#[derive(Clone, Copy, Debug)]
pub struct MonitorPolicy {
    /// The endpoint is plain text on loopback.
    pub plain: bool,
}

impl AccessPolicy for MonitorPolicy {
    fn check(&self, peer: &PeerIdentity, _method: &Method, _path: &str) -> Result<(), Refusal> {
        if peer.role.kind() == RoleKind::Monitor {
            Ok(())
        } else {
            Err(Refusal {
                required: "monitor".into(),
            })
        }
    }

    fn allows_anonymous(&self, _method: &Method, _path: &str) -> bool {
        self.plain
    }
}

async fn serve_metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            decnet_telemetry::metrics::CONTENT_TYPE,
        )],
        decnet_telemetry::metrics::encode(),
    )
}

pub use decnet_telemetry::metrics::MetricsArgs;

/// Bind and serve the endpoint in a task of its own when asked for, and
/// say where on stdout (`<daemon> metrics served at ADDR`). Returns the
/// bound address. `material` is the daemon's own certificate (needed
/// for mTLS; also followed for the expiry series).
pub async fn start_metrics(
    args: &MetricsArgs,
    daemon: &str,
    material: Option<&MaterialSource>,
) -> Result<Option<SocketAddr>, ServerError> {
    let Some(addr) = args.metrics_addr else {
        if let Some(m) = material {
            observe_certificate(m);
        }
        return Ok(None);
    };
    let endpoint = MetricsEndpoint::bind(addr, material, args.metrics_mtls).await?;
    let bound = endpoint.spawn();
    println!("{daemon} metrics served at {bound}");
    tracing::info!(addr = %bound, "metrics served");
    Ok(Some(bound))
}

/// A bound `/metrics` endpoint.
pub struct MetricsEndpoint {
    server: Server,
    app: Arc<HttpService>,
}

impl MetricsEndpoint {
    /// Bind `addr`: plain text when it is a loopback address and `mtls` is
    /// false, otherwise mTLS with `material` (the daemon's own certificate)
    /// admitting monitors only. Also starts following `material`'s expiry.
    pub async fn bind(
        addr: SocketAddr,
        material: Option<&MaterialSource>,
        mtls: bool,
    ) -> Result<MetricsEndpoint, ServerError> {
        if let Some(m) = material {
            observe_certificate(m);
        }
        let plain = addr.ip().is_loopback() && !mtls;
        let transport = match (plain, material) {
            (true, _) => Transport::Plain,
            (false, Some(m)) => Transport::Tls {
                material: m.clone(),
                auth: ClientAuth::Required,
            },
            (false, None) => return Err(ServerError::PlaintextRefused(addr)),
        };
        let server = Server::bind("metrics", addr, transport, ServerLimits::default()).await?;
        let router = Router::new().route("/metrics", get(serve_metrics));
        let app = HttpService::new(router, MonitorPolicy { plain }, HttpLimits::default());
        Ok(MetricsEndpoint { server, app })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serve until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        self.server.serve(self.app, shutdown).await;
    }

    /// Serve in a task of its own until SIGTERM/SIGINT.
    pub fn spawn(self) -> SocketAddr {
        let addr = self.local_addr();
        tokio::spawn(self.serve(crate::shutdown_signal()));
        addr
    }
}
