//! Table-driven access tests (feature `testing`, for dev-dependencies):
//! call every route of a served application in-process (`oneshot`, the
//! policy and limits included) as every kind of caller, and check that
//! exactly the expected calls pass the role check.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use decnet_pki::{Fingerprint, PeerIdentity, Role};
use tower::ServiceExt;

use crate::runner::TlsPeer;

/// A verified identity for `role`, as the runner would put into a request
/// (no certificate behind it: the middleware only reads these fields).
pub fn identity(role: &Role) -> PeerIdentity {
    let now = time::OffsetDateTime::now_utc();
    PeerIdentity {
        cn: role.cn(),
        role: role.clone(),
        fingerprint: Fingerprint::of_der(role.cn().as_bytes()),
        serial: "01".into(),
        not_after: now + time::Duration::days(1),
        not_before: now - time::Duration::days(1),
        issuer: "CN=DECNET SWARM Root CA, O=DECNET".into(),
    }
}

/// Call `method path` on `app` as `caller` (`None`: no certificate).
pub async fn call(
    app: &crate::http::App,
    method: &Method,
    path: &str,
    caller: Option<&Role>,
) -> StatusCode {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .expect("request");
    let identity = caller.map(|r| Arc::new(identity(r)));
    req.extensions_mut().insert(ConnectInfo(TlsPeer {
        remote: SocketAddr::from(([192, 0, 2, 1], 40000)),
        identity,
        server: "in-process",
    }));
    app.clone()
        .oneshot(req)
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Check every `route` × `caller`: refused with `403` exactly when
/// `allowed(method, path, caller)` is false. Returns the table it saw, one
/// line per call, for the failure message.
pub async fn assert_access(
    app: &crate::http::App,
    routes: &[(Method, &str)],
    callers: &[Option<Role>],
    allowed: impl Fn(&Method, &str, Option<&Role>) -> bool,
) {
    let mut wrong = Vec::new();
    for (method, path) in routes {
        for caller in callers {
            let status = call(app, method, path, caller.as_ref()).await;
            let want = allowed(method, path, caller.as_ref());
            let refused = status == StatusCode::FORBIDDEN;
            if want == refused {
                wrong.push(format!(
                    "{method} {path} as {}: {status} (expected {})",
                    caller
                        .as_ref()
                        .map(|r| r.cn())
                        .unwrap_or_else(|| "anonymous".into()),
                    if want { "admitted" } else { "403" }
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "access table violated:\n{}",
        wrong.join("\n")
    );
}

/// The callers every table should try: the master, the agent and updater
/// of `own` and of another host, a metrics scraper, an operator, and no
/// certificate at all.
pub fn callers(own: &str) -> Vec<Option<Role>> {
    let own = decnet_pki::HostName::new(own).expect("host");
    let other = decnet_pki::HostName::new("someone-else").expect("host");
    vec![
        Some(Role::Master),
        Some(Role::Agent(own.clone())),
        Some(Role::Updater(own)),
        Some(Role::Agent(other.clone())),
        Some(Role::Updater(other)),
        Some(Role::Monitor(
            decnet_pki::HostName::new("prometheus").expect("name"),
        )),
        Some(Role::Operator(
            decnet_pki::HostName::new("alice").expect("name"),
        )),
        None,
    ]
}
