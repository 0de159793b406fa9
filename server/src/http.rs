//! HTTP over the runner: an axum router served connection by connection with
//! hyper's HTTP/1 server, with its timer (header-read / keep-alive idle
//! timeout), a header buffer cap, a request timeout and a default body
//! limit, the peer's identity in every request and the access policy in
//! front of every handler (the 404 fallback included).

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request};
use axum::http::StatusCode;
use decnet_pki::PeerIdentity;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;

use crate::authz::{self, AccessPolicy};
use crate::limits::HttpLimits;
use crate::runner::{Connection, ConnectionHandler};

/// An axum application ready to be served by the runner.
#[derive(Clone)]
pub struct HttpService {
    app: Router,
    limits: HttpLimits,
}

impl HttpService {
    /// `router` behind `policy`, with the limits' request timeout and default body limit.
    pub fn new<P: AccessPolicy>(router: Router, policy: P, limits: HttpLimits) -> Arc<Self> {
        let app = authz::enforce(router, policy)
            .layer(DefaultBodyLimit::max(limits.max_body_bytes))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                limits.request_timeout,
            ))
            .layer(axum::middleware::from_fn(count_request));
        Arc::new(HttpService { app, limits })
    }

    /// The complete application (policy and limits included), for
    /// in-process tests with `oneshot` (insert a [`PeerIdentity`] and a
    /// `ConnectInfo<TlsPeer>` into the request's extensions).
    pub fn app(&self) -> Router {
        self.app.clone()
    }
}

/// Which server a request arrived on (an extension set per connection).
#[derive(Clone, Copy, Debug)]
pub struct ServerName(pub &'static str);

/// The route template of a request (`unmatched` for the 404 fallback), as
/// metrics label it.
pub fn route_label(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into())
}

/// Count every request by server, route template and status.
async fn count_request(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    let server = req.extensions().get::<ServerName>().map(|s| s.0);
    let route = route_label(&req);
    let resp = next.run(req).await;
    if let Some(server) = server {
        crate::metrics::server_metrics()
            .requests
            .get_or_create(&crate::metrics::RequestLabels {
                server: server.to_string(),
                route,
                status: resp.status().as_u16().to_string(),
            })
            .inc();
    }
    resp
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
        let svc = tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ServerName(server));
            if let Some(id) = &peer.identity {
                req.extensions_mut().insert(PeerIdentity::clone(id));
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
