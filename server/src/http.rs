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
use axum::http::StatusCode;
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tower_http::timeout::TimeoutLayer;

use crate::authz::{self, AccessPolicy};
use crate::limits::HttpLimits;
use crate::runner::{Connection, ConnectionHandler};

/// The served application: a router whose every route (the 404 fallback
/// included) is behind the access policy and counted, inside the request
/// timeout and the default body limit.
///
/// The timeout and the body limit wrap the router once, not each route: a
/// layer on a router is boxed around every route and cloned with it on
/// every request, which cost the agent's `/health` a sixth of its CPU
/// (issue #31). The policy check and the count need the matched route, so
/// they stay on the routes, as one layer.
pub type App = BoxCloneSyncService<Request, Response, Infallible>;

/// An axum application ready to be served by the runner.
#[derive(Clone)]
pub struct HttpService {
    app: App,
    limits: HttpLimits,
}

impl HttpService {
    /// `router` behind `policy`, with the limits' request timeout and default body limit.
    pub fn new<P: AccessPolicy>(router: Router, policy: P, limits: HttpLimits) -> Arc<Self> {
        let routed = authz::enforce(router, policy);
        let app = tower::ServiceBuilder::new()
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                limits.request_timeout,
            ))
            .layer(DefaultBodyLimit::max(limits.max_body_bytes))
            .service(routed);
        Arc::new(HttpService {
            app: BoxCloneSyncService::new(app),
            limits,
        })
    }

    /// The complete application (policy and limits included), for
    /// in-process tests with `oneshot` (insert an `Arc<PeerIdentity>` and a
    /// `ConnectInfo<TlsPeer>` into the request's extensions).
    pub fn app(&self) -> App {
        self.app.clone()
    }
}

/// Which server a request arrived on (an extension set per connection).
#[derive(Clone, Copy, Debug)]
pub struct ServerName(pub &'static str);

/// The route template of a request (`unmatched` for the 404 fallback), as
/// metrics label it: interned, so a request allocates no label.
pub fn route_label(req: &Request) -> &'static str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| intern(p.as_str()))
}

/// `s` as a string that lives as long as the process. Only route templates
/// come here (a router has a fixed set of them), so what is leaked is
/// bounded by the code, not by requests.
fn intern(s: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{OnceLock, RwLock};
    static SEEN: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
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
        let Connection {
            io,
            peer,
            deadline,
            server,
        } = conn;
        let app = self.app.clone();
        let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ServerName(server));
            if let Some(id) = &peer.identity {
                req.extensions_mut().insert(Arc::clone(id));
            }
            req.extensions_mut().insert(ConnectInfo(peer.clone()));
            app.clone().oneshot(req)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(self.limits.max_header_bytes.max(8192))
            .keep_alive(true);
        let served = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
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
        // Finish the request in flight (if any), then close.
        served.as_mut().graceful_shutdown();
        let _ = served.await;
    }
}
