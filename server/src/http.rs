//! HTTP over the runner: an axum router served connection by connection with
//! hyper's HTTP/1 server, with its timer (header-read / keep-alive idle
//! timeout), a header buffer cap, a request timeout and a default body
//! limit, the peer's identity in every request and the access policy in
//! front of every handler (the 404 fallback included).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;

use crate::authz::{self, AccessPolicy};
use crate::limits::HttpLimits;
use crate::linger::LingeringClose;
use crate::runner::{Connection, ConnectionHandler};

/// The served application: a router whose every route (the 404 fallback
/// included) is behind the access policy and counted, inside the request
/// timeout and the default body limit.
///
/// The body limit wraps the router once, not each route: a layer on a
/// router is boxed around every route and cloned with it on every request,
/// which cost the agent's `/health` a sixth of its CPU (issue #31). The
/// policy check, the request timeout and the count need the matched route
/// (a timeout outside the count drops the request uncounted), so they stay
/// on the routes, as one layer.
pub type App = BoxCloneSyncService<Request, Response, Infallible>;

/// The application as a connection serves it: the router behind the
/// default body limit, as its concrete type, so that handing it a request
/// clones the router's `Arc` and nothing is boxed (issue #31).
type Served = <DefaultBodyLimit as tower::Layer<Router>>::Service;

/// An axum application ready to be served by the runner.
#[derive(Clone)]
pub struct HttpService {
    app: Served,
    limits: HttpLimits,
}

impl HttpService {
    /// `router` behind `policy`, with the limits' request timeout and default body limit.
    pub fn new<P: AccessPolicy>(router: Router, policy: P, limits: HttpLimits) -> Arc<Self> {
        let routed = authz::enforce(router, policy, limits.request_timeout);
        let app = tower::Layer::layer(&DefaultBodyLimit::max(limits.max_body_bytes), routed);
        Arc::new(HttpService { app, limits })
    }

    /// The complete application (policy and limits included), for
    /// in-process tests with `oneshot` (insert a `ConnectInfo<TlsPeer>`
    /// into the request's extensions).
    pub fn app(&self) -> App {
        BoxCloneSyncService::new(self.app.clone())
    }
}

/// One connection's requests into the application, each with the
/// connection's peer (address, identity, server name) in its extensions,
/// as one `ConnectInfo<TlsPeer>`. hyper's own
/// service trait: hyper-util's tower adapter cloned the service, and the
/// boxed application in it, for every request.
struct ConnectionService {
    /// The connection's own handle on the application, called in place:
    /// cloning it per request took and dropped a reference on the router
    /// every connection shares (a cache line both cores fought over).
    app: std::cell::RefCell<Served>,
    peer: crate::runner::TlsPeer,
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = <Served as tower::Service<Request>>::Future;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.peer.clone()));
        // An axum router is always ready (its `poll_ready` returns `Ready`
        // and the body limit's passes it on), so it is called at once;
        // hyper calls one request at a time, so the borrow never clashes.
        tower::Service::call(&mut *self.app.borrow_mut(), req)
    }
}

/// The verified identity of the peer that sent a request, as a handler's
/// argument: the serving layer's `TlsPeer` carries it (a request holds one
/// extension for its peer, not two). A request without one is answered
/// `403` (the access policy refuses those first on every route that does
/// not admit anonymous peers).
#[derive(Debug, Clone)]
pub struct VerifiedPeer(pub Arc<decnet_pki::PeerIdentity>);

impl<S: Sync> axum::extract::FromRequestParts<S> for VerifiedPeer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Response> {
        match crate::runner::TlsPeer::identity_of(&parts.extensions) {
            Some(id) => Ok(VerifiedPeer(Arc::clone(id))),
            None => Err(crate::error_body::json_error(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "no verified client certificate",
            )),
        }
    }
}

/// The route template of a request (`unmatched` for the 404 fallback), as
/// metrics label it: interned, so a request allocates no label.
pub fn route_label(req: &Request) -> &'static str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| intern(p.as_str()))
}

/// `s` as a string that lives as long as the process. Only route templates
/// come here (a router has a fixed set of them), so what is leaked is
/// bounded by the code, not by requests. Each thread remembers what it
/// has seen: the shared set's lock is a cache line both cores fought over
/// on every request.
fn intern(s: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{OnceLock, RwLock};
    thread_local! {
        static KNOWN: std::cell::RefCell<HashSet<&'static str>> = Default::default();
    }
    if let Some(v) = KNOWN.with_borrow(|known| known.get(s).copied()) {
        return v;
    }
    static SEEN: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let v = intern_shared(seen, s);
    KNOWN.with_borrow_mut(|known| known.insert(v));
    v
}

/// [`intern`] in the set every thread shares.
fn intern_shared(
    seen: &std::sync::RwLock<std::collections::HashSet<&'static str>>,
    s: &str,
) -> &'static str {
    if let Some(v) = seen.read().unwrap_or_else(|p| p.into_inner()).get(s) {
        return v;
    }
    let mut w = seen.write().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = w.get(s) {
        return v;
    }
    let v: &'static str = Box::leak(s.to_owned().into_boxed_str());
    w.insert(v);
    v
}

impl ConnectionHandler for HttpService {
    async fn handle(self: Arc<Self>, conn: Connection, stop: CancellationToken) {
        let Connection { io, peer, deadline } = conn;
        let svc = ConnectionService {
            app: std::cell::RefCell::new(self.app.clone()),
            peer,
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(crate::head_timer::ConnectionTimer::default())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192))
            .keep_alive(true);
        // An early answer (a body over its limit) reaches a client still
        // sending: the close lingers (see `linger`).
        let served = builder.serve_connection(TokioIo::new(LingeringClose::new(io)), svc);
        tokio::pin!(served);
        let end = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled() => {}
            _ = end => {}
        }
        // Finish the request in flight (if any), then close. The answer in
        // flight gets the request timeout to be sent: a client that stopped
        // reading (or an answer that never ends, an event stream) would
        // otherwise keep the connection, and whatever its answer holds,
        // past the connection's lifetime and its certificate's expiry.
        served.as_mut().graceful_shutdown();
        if tokio::time::timeout(self.limits.request_timeout, served)
            .await
            .is_err()
        {
            tracing::debug!(
                "answer in flight not sent within the request timeout after the connection's end; closed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use decnet_pki::Role;
    use tower::ServiceExt;

    /// A refused peer never reaches the handler: the policy runs before
    /// the route is called (a POST whose handler acts on arrival must not
    /// act for a refused caller), for a wrong role and for no certificate
    /// alike; an admitted peer reaches it once.
    #[tokio::test]
    async fn a_refused_request_never_reaches_its_handler() {
        use axum::http::Method;
        use std::sync::atomic::{AtomicUsize, Ordering};
        static REACHED: AtomicUsize = AtomicUsize::new(0);
        let router = Router::new().route(
            "/act",
            axum::routing::post(|| async {
                REACHED.fetch_add(1, Ordering::SeqCst);
                "acted"
            }),
        );
        let app = HttpService::new(
            router,
            crate::authz::RoleSet::master_only(),
            HttpLimits::default(),
        )
        .app();
        let host: decnet_pki::HostName = "w1".parse().unwrap();
        for caller in [
            Some(Role::Agent(host.clone())),
            Some(Role::Updater(host.clone())),
            Some(Role::Operator(host)),
            None,
        ] {
            let status = crate::testing::call(&app, &Method::POST, "/act", caller.as_ref()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{caller:?}");
        }
        assert_eq!(
            REACHED.load(Ordering::SeqCst),
            0,
            "a refused peer ran the handler"
        );
        let status = crate::testing::call(&app, &Method::POST, "/act", Some(&Role::Master)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(REACHED.load(Ordering::SeqCst), 1);
    }

    /// A handler that outlives the request timeout is answered `408`, with
    /// a body saying so, and the `408` is counted under its route (the
    /// timeout used to drop the request before the counter saw it).
    #[tokio::test]
    async fn a_request_past_its_timeout_is_answered_408_and_counted() {
        let router = Router::new().route(
            "/slow-test-route",
            axum::routing::get(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                "late"
            }),
        );
        let limits = HttpLimits {
            request_timeout: std::time::Duration::from_millis(200),
            ..HttpLimits::default()
        };
        let app = HttpService::new(router, crate::authz::RoleSet::master_only(), limits).app();
        let counted = || {
            crate::metrics::server_metrics()
                .requests
                .get_or_create(&crate::metrics::RequestLabels {
                    server: "timeout-test",
                    route: "/slow-test-route",
                    status: 408,
                })
                .get()
        };
        let before = counted();
        let master = Arc::new(crate::testing::identity(&Role::Master));
        let mut req = Request::builder()
            .uri("/slow-test-route")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(crate::runner::TlsPeer {
                remote: std::net::SocketAddr::from(([127, 0, 0, 1], 40000)),
                identity: Some(master),
                server: "timeout-test",
            }));
        let started = std::time::Instant::now();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "request_timeout", "{v}");
        assert_eq!(counted(), before + 1);
    }

    /// A handler that spends tokio's whole budget on every poll (a loop
    /// over something always ready) still gets its `408`: the timer is
    /// polled outside the budget, as `tokio::time::Timeout` polls its own.
    #[tokio::test]
    async fn a_handler_that_spends_its_whole_budget_still_times_out() {
        let router = Router::new().route(
            "/spin",
            axum::routing::get(|| async {
                loop {
                    tokio::task::coop::consume_budget().await;
                }
                #[allow(unreachable_code)]
                "never"
            }),
        );
        let limits = HttpLimits {
            request_timeout: std::time::Duration::from_millis(200),
            ..HttpLimits::default()
        };
        let app = HttpService::new(router, crate::authz::RoleSet::master_only(), limits).app();
        let started = std::time::Instant::now();
        let status = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            crate::testing::call(&app, &axum::http::Method::GET, "/spin", Some(&Role::Master)),
        )
        .await
        .expect("the request timeout never fired");
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
