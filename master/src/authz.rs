//! Who may do what on the fleet API: the one place.
//!
//! Every `/v1` request passes [`authorize`] before any handler: the peer's
//! certificate must be an operator's (`operator@<name>`, checked by the
//! runner's role policy first), the operator must still be active and the
//! certificate its own and unrevoked (asked of the fleet database on every
//! request, so a revocation or a role change holds from the next request
//! on, kept-alive connections included), and its role must hold the route's
//! [`Permission`] ([`permission_of`], fail closed: a route missing from the
//! table needs admin). What passes gets a [`Grant`] in the request's
//! extensions; handlers take it, and the hosts an operation may see or
//! touch come only from [`Grant::sees`] (the operator's host scope).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use decnet_api::{ErrorBody, OperatorRole, Permission};
use decnet_fleet::FleetDb;
use decnet_pki::Role;

/// The permission a `/v1` route needs. Pure: unit-tested against the
/// router's routes. Reads need [`Permission::Read`]; operators and
/// anything unknown need [`Permission::Admin`].
pub fn permission_of(method: &Method, path: &str) -> Permission {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        (&Method::GET, ["v1", "whoami"])
        | (&Method::GET, ["v1", "openapi.json"])
        | (&Method::GET, ["v1", "hosts"])
        | (&Method::GET, ["v1", "hosts", _])
        | (&Method::GET, ["v1", "audit"])
        | (&Method::GET, ["v1", "status"])
        | (&Method::GET, ["v1", "check"]) => Permission::Read,
        (&Method::GET, ["v1", "hosts", _, "releases"]) | (&Method::GET, ["v1", "doctor"]) => {
            Permission::Read
        }
        (&Method::GET, ["v1", "jobs"])
        | (&Method::GET, ["v1", "jobs", _])
        | (&Method::GET, ["v1", "jobs", _, "events"]) => Permission::Read,
        // An operator renews its own certificate (whatever its role).
        (&Method::POST, ["v1", "whoami", "renew"]) => Permission::Read,
        (&Method::GET, ["v1", "events"])
        | (&Method::GET, ["v1", "alerts", "deliveries"])
        | (&Method::POST, ["v1", "console", "login"]) => Permission::Read,
        (&Method::GET, ["v1", "ca"])
        | (&Method::GET, ["v1", "hosts", _, "evidence"])
        | (&Method::GET, ["v1", "hosts", _, "evidence", _, _]) => Permission::Read,
        (&Method::POST, ["v1", "hosts", _, "renew"])
        | (&Method::POST, ["v1", "hosts", _, "teardown"])
        | (&Method::POST, ["v1", "hosts", _, "rollback"])
        | (&Method::POST, ["v1", "deploy", "plan"])
        | (&Method::PUT, ["v1", "releases", _])
        | (&Method::POST, ["v1", "update"])
        | (&Method::POST, ["v1", "deploy"])
        | (&Method::POST, ["v1", "jobs", _, "cancel"]) => Permission::Deploy,
        _ => Permission::Admin,
    }
}

/// Host-name globs (`*` any run of characters, `?` one); none: every host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostScope(pub Vec<String>);

impl HostScope {
    /// Whether `host` is inside the scope.
    pub fn allows(&self, host: &str) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|g| glob_match(g.as_bytes(), host.as_bytes()))
    }
}

/// `*`/`?` glob matching over bytes (host names are ASCII). Pure.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p].eq_ignore_ascii_case(&text[t])) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether `glob` is a usable host glob: host-name characters, `*` and `?`.
pub fn valid_glob(glob: &str) -> bool {
    !glob.is_empty()
        && glob.len() <= 253
        && glob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*' | b'?'))
}

/// What an admitted request may do: its operator, role and host scope.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The operator's name.
    pub operator: String,
    /// Its role.
    pub role: OperatorRole,
    /// Its host scope.
    pub scope: HostScope,
    /// What it was admitted with (a long request, an event stream, checks
    /// it again while it lasts).
    pub credential: Credential,
}

/// How an operator proved who it is.
#[derive(Clone)]
pub enum Credential {
    /// Its certificate (the fleet API): the fingerprint, hex.
    Certificate(String),
    /// A console session: its secret (kept in memory only).
    Session(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Certificate(fp) => write!(f, "Certificate({fp})"),
            Credential::Session(_) => f.write_str("Session(..)"),
        }
    }
}

/// Whether what `grant` was admitted with still holds: the certificate
/// unrevoked and its operator active, or the session open and its
/// operator active. A database error counts as not holding (fail closed).
pub async fn still_holds(db: &FleetDb, grant: &Grant) -> bool {
    match &grant.credential {
        Credential::Certificate(fp) => matches!(
            db.operator_standing(&grant.operator, fp).await,
            Ok(Some(op)) if op.role == grant.role.to_string() && op.hosts == grant.scope.0
        ),
        Credential::Session(secret) => {
            matches!(db.console_session(secret).await, Ok(Some(s)) if s.operator == grant.operator)
                && matches!(
                    db.operator(&grant.operator).await,
                    Ok(Some(op)) if op.revoked_at.is_none()
                        && op.role == grant.role.to_string()
                        && op.hosts == grant.scope.0
                )
        }
    }
}

impl Grant {
    /// Whether the operator may see (and, with the role for it, touch) `host`.
    pub fn sees(&self, host: &str) -> bool {
        self.scope.allows(host)
    }

    /// Whether the operator may read an audit entry of `action` on
    /// `target`: an unscoped one every entry; a scoped one what happened
    /// to its hosts only (not the operators' changes, whose targets are
    /// operator names).
    pub fn sees_audit(&self, action: &str, target: &str) -> bool {
        self.scope.0.is_empty() || (action.starts_with("swarm.") && self.sees(target))
    }

    /// The audit actor of its actions.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.operator)
    }
}

fn refuse(status: StatusCode, kind: &str, detail: String, required: Option<String>) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error: kind.into(),
            detail,
            required_role: required,
        }),
    )
        .into_response()
}

/// The middleware of the fleet API (see the module docs). Every audit
/// entry made while the request is served (its refusal, or what its
/// handler and the jobs it starts do) records the client's address.
pub async fn authorize(State(db): State<Arc<FleetDb>>, req: Request, next: Next) -> Response {
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<decnet_server::TlsPeer>>()
        .map(|c| c.0.remote.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    decnet_fleet::with_audit_source(source, authorize_request(db, req, next)).await
}

async fn authorize_request(db: Arc<FleetDb>, req: Request, next: Next) -> Response {
    let Some(peer) = decnet_server::TlsPeer::identity_of(req.extensions()).cloned() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "no verified client certificate".into(),
            Some("operator".into()),
        );
    };
    let Role::Operator(name) = &peer.role else {
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} is not an operator", peer.role),
            Some("operator".into()),
        );
    };
    let fingerprint = peer.fingerprint.to_hex();
    let standing = match db.operator_standing(name.as_str(), &fingerprint).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "fleet database unavailable");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "fleet database unavailable".into(),
                None,
            );
        }
    };
    let Some(op) = standing else {
        tracing::warn!(operator = %name, fingerprint = %peer.fingerprint, "request of a revoked or replaced operator certificate refused");
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "operator {name} is revoked, or this certificate was replaced by a newer login"
            ),
            Some("an active operator".into()),
        );
    };
    admit(db, op, Credential::Certificate(fingerprint), req, next).await
}

/// What a costly request makes the master pay (see [`cost_of`]): the
/// requests whose cost an operator chooses and the master bears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// It asks workers: every host (`status`, `check`, the doctor), or a
    /// host's agent or updater (its releases, its evidence, a deploy plan).
    AsksWorkers,
    /// It searches the audit log (the API's `/v1/audit`, the console's
    /// audit page).
    SearchesAudit,
}

/// Requests asking workers one operator may have in flight at once, over
/// all its connections and console sessions: enough for a console and a
/// CLI side by side, too few for one operator (a stolen viewer
/// certificate) to take the master's outbound budget from everyone else.
pub const MAX_WORKER_ASKS_PER_OPERATOR: usize = 4;

/// Audit searches one operator may have in flight at once: one, so that
/// holding every connection the searches may use
/// (`decnet_fleet::db::audit_search_connections`) takes more than one
/// identity.
pub const MAX_AUDIT_SEARCHES_PER_OPERATOR: usize = 1;

/// What a request costs the master beyond its own answer, if anything
/// (see [`Cost`]). Pure.
pub fn cost_of(method: &Method, path: &str) -> Option<Cost> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        (&Method::POST, ["v1", "deploy", "plan"]) => Some(Cost::AsksWorkers),
        (&Method::GET | &Method::HEAD, s) => match s {
            ["v1", "status"]
            | ["v1", "check"]
            | ["v1", "doctor"]
            | ["v1", "hosts", _, "releases"]
            | ["v1", "hosts", _, "evidence", ..] => Some(Cost::AsksWorkers),
            ["v1", "audit"] | ["audit"] => Some(Cost::SearchesAudit),
            _ => None,
        },
        _ => None,
    }
}

/// How many of something each operator holds at once (its costly requests
/// in flight, its evidence spools, its release uploads): one operator's
/// share, whatever its connections and sessions.
pub struct OperatorAllowance {
    counts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    limit: usize,
}

/// A place an operator holds in an [`OperatorAllowance`]: given back when
/// this is dropped (the request answered, the download sent, or its client
/// gone).
pub struct AllowanceTurn {
    owner: Arc<OperatorAllowance>,
    operator: String,
}

impl OperatorAllowance {
    /// At most `limit` places per operator.
    pub fn new(limit: usize) -> Arc<OperatorAllowance> {
        Arc::new(OperatorAllowance {
            counts: Default::default(),
            limit,
        })
    }

    /// One more place for `operator`, if it holds fewer than the limit.
    pub fn try_take(self: &Arc<Self>, operator: &str) -> Option<AllowanceTurn> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(operator.to_string()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(AllowanceTurn {
            owner: self.clone(),
            operator: operator.to_string(),
        })
    }

    /// [`try_take`](Self::try_take), or the refusal to answer with: `429
    /// busy`, `Retry-After: 1`, saying the operator already holds `held`.
    #[allow(clippy::result_large_err)]
    pub fn take_or_busy(
        self: &Arc<Self>,
        operator: &str,
        held: &str,
    ) -> Result<AllowanceTurn, Response> {
        self.try_take(operator).ok_or_else(|| {
            tracing::info!(
                operator,
                held,
                "request beyond the operator's allowance refused"
            );
            let mut refused = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                format!("operator {operator} already has {held} in flight: wait for it to end"),
                None,
            );
            refused
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, 1.into());
            refused
        })
    }
}

impl Drop for AllowanceTurn {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.operator) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.operator);
            }
        }
    }
}

/// What each operator holds at once in this process: one home for every
/// per-operator allowance (the fleet API's and the console's together: one
/// operator, one allowance).
pub struct Allowances {
    /// Requests asking workers ([`MAX_WORKER_ASKS_PER_OPERATOR`]).
    pub worker_asks: Arc<OperatorAllowance>,
    /// Audit searches ([`MAX_AUDIT_SEARCHES_PER_OPERATOR`]).
    pub audit_searches: Arc<OperatorAllowance>,
    /// Evidence archives spooled through the master (one).
    pub evidence_spools: Arc<OperatorAllowance>,
    /// Release uploads, written or waiting to be (one).
    pub release_uploads: Arc<OperatorAllowance>,
}

/// This process's [`Allowances`].
pub fn allowances() -> &'static Allowances {
    static ALLOWANCES: std::sync::OnceLock<Allowances> = std::sync::OnceLock::new();
    ALLOWANCES.get_or_init(|| Allowances {
        worker_asks: OperatorAllowance::new(MAX_WORKER_ASKS_PER_OPERATOR),
        audit_searches: OperatorAllowance::new(MAX_AUDIT_SEARCHES_PER_OPERATOR),
        evidence_spools: OperatorAllowance::new(1),
        release_uploads: OperatorAllowance::new(1),
    })
}

/// The role and scope half of every admission (a certificate's or a
/// console session's): the route's permission, operator management for
/// unscoped admins only, then the [`Grant`] for the handler.
pub async fn admit(
    db: Arc<FleetDb>,
    op: decnet_fleet::operators::OperatorRecord,
    credential: Credential,
    mut req: Request,
    next: Next,
) -> Response {
    let name = op.name.clone();
    let Some(role) = OperatorRole::parse(&op.role) else {
        tracing::error!(operator = %name, role = %op.role, "operator with an unknown stored role");
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this operator's role is not recognised".into(),
            None,
        );
    };
    let need = match &credential {
        Credential::Certificate(_) => permission_of(req.method(), req.uri().path()),
        Credential::Session(_) => {
            crate::console::permission_of_console(req.method(), req.uri().path())
        }
    };
    if !role.permits(need) {
        let least = OperatorRole::least_for(need);
        tracing::info!(operator = %name, role = %role, path = %req.uri().path(), "request beyond the operator's role refused");
        let what = (req.method().clone(), req.uri().path().to_string());
        audit_refusal(&db, name.as_str(), what, &format!("needs the {least} role")).await;
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("operator {name} is a {role}; this needs the {least} role"),
            Some(least.to_string()),
        );
    }
    // Who may do what is fleet-wide: an admin limited to some hosts could
    // otherwise lift its own scope, add an unscoped admin, or take over
    // another operator with a fresh token.
    if needs_unscoped(req.uri().path()) && !op.hosts.is_empty() {
        let what = (req.method().clone(), req.uri().path().to_string());
        audit_refusal(
            &db,
            &op.name,
            what,
            "operator management needs an admin without a host scope",
        )
        .await;
        return refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "operator {name} is limited to some hosts; managing operators needs an admin without a host scope"
            ),
            Some("admin (every host)".into()),
        );
    }
    let _turn = if let Some(cost) = cost_of(req.method(), req.uri().path()) {
        let (allowance, held) = match cost {
            Cost::AsksWorkers => (
                &allowances().worker_asks,
                format!(
                    "{MAX_WORKER_ASKS_PER_OPERATOR} requests asking the workers (status, check, doctor, releases, evidence, deploy plans)"
                ),
            ),
            Cost::SearchesAudit => (&allowances().audit_searches, "an audit search".into()),
        };
        match allowance.take_or_busy(&name, &held) {
            Ok(turn) => Some(turn),
            Err(refused) => return refused,
        }
    } else {
        None
    };
    req.extensions_mut().insert(Grant {
        operator: op.name,
        role,
        scope: HostScope(op.hosts),
        credential,
    });
    next.run(req).await
}

/// Routes only an operator without a host scope may call: the operators
/// themselves, and the alerts. Pure.
pub fn needs_unscoped(path: &str) -> bool {
    let p = path.trim_start_matches('/');
    p == "v1/operators"
        || p.starts_with("v1/operators/")
        // An alert sees every host's events and anyone's rules: a scoped
        // admin could otherwise watch beyond its scope, or delete the
        // fleet-wide alerts before acting.
        || ((p == "v1/alerts" || p.starts_with("v1/alerts/")) && p != "v1/alerts/deliveries")
}

/// A refused change is on the record (reads refused are only logged).
async fn audit_refusal(db: &FleetDb, operator: &str, (method, path): (Method, String), why: &str) {
    if method == Method::GET {
        return;
    }
    let entry = decnet_fleet::AuditEntry::now(
        format!("operator:{operator}"),
        "fleet_api.refused",
        &format!("{method} {path}"),
        decnet_fleet::AuditOutcome::Refused,
        why,
    );
    if let Err(e) = db.audit(&entry).await {
        tracing::error!(error = %e, "cannot write the audit entry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_read_and_everything_else_admin() {
        assert_eq!(permission_of(&Method::GET, "/v1/hosts"), Permission::Read);
        assert_eq!(
            permission_of(&Method::GET, "/v1/hosts/w1"),
            Permission::Read
        );
        assert_eq!(permission_of(&Method::GET, "/v1/audit"), Permission::Read);
        assert_eq!(permission_of(&Method::GET, "/v1/whoami"), Permission::Read);
        assert_eq!(permission_of(&Method::GET, "/v1/status"), Permission::Read);
        assert_eq!(permission_of(&Method::GET, "/v1/check"), Permission::Read);
        assert_eq!(permission_of(&Method::POST, "/v1/check"), Permission::Admin);
        assert_eq!(
            permission_of(&Method::POST, "/v1/hosts/w1/renew"),
            Permission::Deploy
        );
        assert_eq!(
            permission_of(&Method::POST, "/v1/hosts/w1/decommission"),
            Permission::Admin
        );
        assert_eq!(
            permission_of(&Method::POST, "/v1/tokens"),
            Permission::Admin
        );
        assert_eq!(
            permission_of(&Method::GET, "/v1/operators"),
            Permission::Admin
        );
        assert_eq!(
            permission_of(&Method::POST, "/v1/operators"),
            Permission::Admin
        );
        assert_eq!(permission_of(&Method::POST, "/v1/hosts"), Permission::Admin);
        assert_eq!(
            permission_of(&Method::GET, "/v1/hosts/w1/x"),
            Permission::Admin
        );
        assert_eq!(permission_of(&Method::GET, "/v2/hosts"), Permission::Admin);
        for (m, p, want) in [
            (Method::GET, "/v1/ca", Permission::Read),
            (Method::POST, "/v1/whoami/renew", Permission::Read),
            (Method::GET, "/v1/hosts/w1/evidence", Permission::Read),
            (
                Method::GET,
                "/v1/hosts/w1/evidence/d1/20261205",
                Permission::Read,
            ),
            (Method::POST, "/v1/hosts/w1/teardown", Permission::Deploy),
            (Method::POST, "/v1/hosts/w1/rollback", Permission::Deploy),
            (Method::POST, "/v1/deploy/plan", Permission::Deploy),
            (Method::PUT, "/v1/releases/ab", Permission::Deploy),
            (Method::POST, "/v1/update", Permission::Deploy),
            // A burn and an endpoint change are the admin's.
            (Method::POST, "/v1/hosts/w1/burn", Permission::Admin),
            (Method::PUT, "/v1/hosts/w1/endpoint", Permission::Admin),
            (Method::DELETE, "/v1/hosts/w1/evidence", Permission::Admin),
        ] {
            assert_eq!(permission_of(&m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn requests_asking_workers_or_searching_the_audit_log_are_costly() {
        for m in [Method::GET, Method::HEAD] {
            for p in [
                "/v1/status",
                "/v1/check",
                "/v1/doctor",
                "/v1/hosts/w1/releases",
                "/v1/hosts/w1/evidence",
                "/v1/hosts/w1/evidence/d1/20261205",
            ] {
                assert_eq!(cost_of(&m, p), Some(Cost::AsksWorkers), "{m} {p}");
            }
            for p in ["/v1/audit", "/audit"] {
                assert_eq!(cost_of(&m, p), Some(Cost::SearchesAudit), "{m} {p}");
            }
        }
        assert_eq!(
            cost_of(&Method::POST, "/v1/deploy/plan"),
            Some(Cost::AsksWorkers)
        );
        for (m, p) in [
            (Method::GET, "/v1/hosts"),
            (Method::GET, "/v1/hosts/w1"),
            (Method::GET, "/v1/whoami"),
            (Method::GET, "/v1/events"),
            (Method::GET, "/"),
            (Method::DELETE, "/v1/hosts/w1/evidence"),
            (Method::POST, "/v1/deploy"),
        ] {
            assert_eq!(cost_of(&m, p), None, "{m} {p}");
        }
    }

    #[test]
    fn one_operator_holds_at_most_its_allowance_of_costly_requests() {
        let in_flight = OperatorAllowance::new(2);
        let a1 = in_flight.try_take("alice").expect("first");
        let a2 = in_flight.try_take("alice").expect("second");
        assert!(in_flight.try_take("alice").is_none(), "a third is refused");
        // Another operator is not held back by alice.
        let b1 = in_flight.try_take("bob").expect("bob's first");
        drop(a1);
        let a3 = in_flight
            .try_take("alice")
            .expect("a place given back is taken again");
        assert!(in_flight.try_take("alice").is_none());
        drop((a2, a3, b1));
        assert!(
            in_flight.counts.lock().unwrap().is_empty(),
            "nothing is kept for operators with nothing in flight"
        );
    }

    #[test]
    fn operator_management_is_for_unscoped_admins_only() {
        assert!(needs_unscoped("/v1/operators"));
        assert!(needs_unscoped("/v1/operators/alice/token"));
        assert!(!needs_unscoped("/v1/operatorsx") && !needs_unscoped("/v1/hosts"));
        assert!(needs_unscoped("/v1/alerts") && needs_unscoped("/v1/alerts/went-dark/test"));
        assert!(!needs_unscoped("/v1/alerts/deliveries"));
    }

    #[test]
    fn host_globs() {
        let s = HostScope(vec!["w*".into(), "lab?.x".into()]);
        assert!(s.allows("w1") && s.allows("w") && s.allows("web-3"));
        assert!(s.allows("lab1.x") && !s.allows("lab12.x") && !s.allows("lab1"));
        assert!(!s.allows("db1"));
        assert!(HostScope::default().allows("anything"));
        assert!(glob_match(b"*a*b*", b"xxaxxbxx") && !glob_match(b"*a*b", b"xxaxxbxx"));
        assert!(valid_glob("w*") && !valid_glob("w/*") && !valid_glob(""));
    }
}
