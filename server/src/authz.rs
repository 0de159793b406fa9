//! Role checks in middleware, before any handler runs.
//!
//! A server states its rules as an [`AccessPolicy`]; [`enforce`] wraps a
//! router so that every request (the 404 fallback included) is checked
//! against the [`PeerIdentity`] the serving layer put into its extensions
//! (in its [`crate::runner::TlsPeer`]).
//! A refusal is `403` with a JSON body naming the required role, and a log
//! line with the peer CN and fingerprint. A request without an identity is
//! refused too (fail closed).

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use decnet_pki::PeerIdentity;
use decnet_pki::RoleKind;

/// Why a peer was refused: the role(s) the route requires, for the 403 body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Human-readable required role, e.g. `master` or `master or updater@w1`.
    pub required: String,
}

/// The authorization rules of one server.
pub trait AccessPolicy: Send + Sync + 'static {
    /// Admit `peer` to `method path`, or say which role is required.
    fn check(&self, peer: &PeerIdentity, method: &Method, path: &str) -> Result<(), Refusal>;

    /// Whether a peer without a client certificate may call `method path`
    /// (only on listeners that accept anonymous peers at all). Default: never.
    fn allows_anonymous(&self, _method: &Method, _path: &str) -> bool {
        false
    }
}

/// Admits peers whose role is one of the given kinds, on every route.
#[derive(Debug, Clone)]
pub struct RoleSet(pub Vec<RoleKind>);

impl RoleSet {
    /// Only the master.
    pub fn master_only() -> Self {
        RoleSet(vec![RoleKind::Master])
    }

    /// The required-role text for these kinds.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

impl AccessPolicy for RoleSet {
    fn check(&self, peer: &PeerIdentity, _method: &Method, _path: &str) -> Result<(), Refusal> {
        if self.0.contains(&peer.role.kind()) {
            Ok(())
        } else {
            Err(Refusal {
                required: self.describe(),
            })
        }
    }
}

/// What the layer [`enforce`] puts on a router holds.
struct Gate {
    policy: Arc<dyn AccessPolicy>,
    request_timeout: std::time::Duration,
}

/// Wrap `router` so that `policy` runs before every handler, a handler
/// that has not answered within `request_timeout` is answered `408`, and
/// every request is counted by server, route template and status, the
/// `408`s included (one layer for the three: each layer on a router is
/// cloned with the route on every request, and a timeout outside the count
/// would drop the request before it was counted).
pub fn enforce<P: AccessPolicy>(
    router: Router,
    policy: P,
    request_timeout: std::time::Duration,
) -> Router {
    router.layer(GateLayer(Arc::new(Gate {
        policy: Arc::new(policy),
        request_timeout,
    })))
}

/// The layer of [`enforce`], on every route. A tower layer rather than
/// `axum::middleware::from_fn`: that one clones the route and boxes it
/// into a `Next` on every request; here the policy is checked before the
/// route is called, and the route's own future is awaited (issue #31).
#[derive(Clone)]
struct GateLayer(Arc<Gate>);

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            gate: Arc::clone(&self.0),
            inner,
        }
    }
}

/// A route behind [`GateLayer`].
#[derive(Clone)]
struct Gated<S> {
    gate: Arc<Gate>,
    inner: S,
}

/// The server a request reached (set with its peer by the serving layer;
/// absent in in-process tests that set no peer).
fn server_of(req: &Request) -> Option<&'static str> {
    crate::runner::TlsPeer::of(req.extensions()).map(|p| p.server)
}

pin_project_lite::pin_project! {
    /// The answer of a [`Gated`] route: the refusal, or the route's own
    /// future within the request timeout; counted once ready. A named
    /// future, so a request boxes nothing here (issue #31).
    struct GatedFuture<F> {
        #[pin]
        answer: Answer<F>,
        server: Option<&'static str>,
        route: &'static str,
        request_timeout: std::time::Duration,
    }
}

pin_project_lite::pin_project! {
    #[project = AnswerProj]
    enum Answer<F> {
        Refused { response: Option<Response> },
        // The request timeout's timer is made only when the route first
        // has to wait: most answers (`/health`) are ready at once, and a
        // timer per request cost a clone of the runtime's handle (a
        // reference count both cores share) and its drop (issue #31).
        // The timer is polled outside tokio's budget (as `Timeout` polls
        // its own): a route that spends the whole budget on every poll
        // would otherwise never see its deadline pass.
        Handled { #[pin] route: F, #[pin] expiry: Option<tokio::task::Unconstrained<tokio::time::Sleep>> },
    }
}

impl<F> std::future::Future for GatedFuture<F>
where
    F: std::future::Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = Result<Response, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let resp = match this.answer.project() {
            AnswerProj::Refused { response } => response
                .take()
                .expect("a gated future polled after its answer"),
            AnswerProj::Handled { route, mut expiry } => match route.poll(cx) {
                std::task::Poll::Ready(Ok(resp)) => resp,
                std::task::Poll::Ready(Err(never)) => match never {},
                std::task::Poll::Pending => {
                    if expiry.is_none() {
                        // The first poll follows the call at once, so the
                        // timeout still counts from the request's arrival.
                        expiry.set(Some(tokio::task::unconstrained(tokio::time::sleep(
                            *this.request_timeout,
                        ))));
                    }
                    let Some(timer) = expiry.as_pin_mut() else {
                        return std::task::Poll::Pending;
                    };
                    std::task::ready!(timer.poll(cx));
                    crate::error_body::json_error(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!("no answer within {} s", this.request_timeout.as_secs_f64()),
                    )
                }
            },
        };
        if let Some(server) = *this.server {
            crate::metrics::count_request(crate::metrics::RequestLabels {
                server,
                route: this.route,
                status: resp.status().as_u16(),
            });
        }
        std::task::Poll::Ready(Ok(resp))
    }
}

impl<S> tower::Service<Request> for Gated<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = GatedFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    /// The policy check, the request timeout, and the request count of
    /// `decnet_requests_total`. The route is called only once the peer is
    /// admitted (it was made ready by `poll_ready`).
    fn call(&mut self, req: Request) -> Self::Future {
        let server = server_of(&req);
        let route = crate::http::route_label(&req);
        let request_timeout = self.gate.request_timeout;
        let answer = match refusal_of(&*self.gate.policy, &req) {
            None => Answer::Handled {
                route: self.inner.call(req),
                expiry: None,
            },
            Some(refused) => Answer::Refused {
                response: Some(refused),
            },
        };
        GatedFuture {
            answer,
            server,
            route,
            request_timeout,
        }
    }
}

/// The body of every 403 and 401 this layer sends.
fn refusal_body(status: StatusCode, detail: String, required: &str) -> Response {
    let body = serde_json::json!({
        "error": "forbidden",
        "detail": detail,
        "required_role": required,
    });
    (status, axum::Json(body)).into_response()
}

/// `decnet_role_refusals_total` for the server and route of `req`.
fn count_refusal(req: &Request) {
    if let Some(server) = server_of(req) {
        crate::metrics::server_metrics()
            .role_refusals
            .get_or_create(&crate::metrics::RouteLabels {
                server,
                route: crate::http::route_label(req),
            })
            .inc();
    }
}

/// `None` when `policy` admits the peer of `req`; else the refusal to
/// answer (counted and, for a certified peer, logged).
fn refusal_of(policy: &dyn AccessPolicy, req: &Request) -> Option<Response> {
    let Some(peer) = crate::runner::TlsPeer::identity_of(req.extensions()) else {
        if policy.allows_anonymous(req.method(), req.uri().path()) {
            return None;
        }
        // Anonymous peers reach a server only where it admits them at all
        // (the control API's joins); their other requests are noise, not errors.
        count_refusal(req);
        tracing::debug!(path = %req.uri().path(), "request without a client certificate refused");
        return Some(refusal_body(
            StatusCode::FORBIDDEN,
            "no verified client certificate".into(),
            "a CA-signed client certificate",
        ));
    };
    let refusal = policy.check(peer, req.method(), req.uri().path()).err()?;
    count_refusal(req);
    tracing::warn!(
        peer_cn = %peer.cn,
        peer_fingerprint = %peer.fingerprint,
        method = %req.method(),
        path = %req.uri().path(),
        required = %refusal.required,
        "role check refused the request"
    );
    Some(refusal_body(
        StatusCode::FORBIDDEN,
        format!("this endpoint requires role {}", refusal.required),
        &refusal.required,
    ))
}
