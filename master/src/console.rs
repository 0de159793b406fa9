//! The web console: `master serve`'s third listener (`--console-port`,
//! 8772), TLS with the master's certificate and no client certificate
//! asked — a browser proves who it is with a session opened by a one-time
//! URL (`decnet console`), bound to one operator and carrying exactly its
//! role and scope.
//!
//! The console speaks the same `/v1` routes as the CLI (the handlers of
//! [`crate::fleet_api`], behind [`authorize_session`] instead of the
//! certificate check): no console-only API. Its pages are server-rendered
//! from typed templates (askama, checked at compile time) and work without
//! JavaScript; a little plain JavaScript (embedded, like the CSS) makes them
//! live from the event stream and sends the actions. Every answer carries a
//! strict Content-Security-Policy (no inline script, no other origin);
//! every change needs the session's CSRF token in `X-CSRF-Token`.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use decnet_api::{OperatorRole, Permission};
use decnet_fleet::FleetDb;
use serde::Deserialize;

use crate::authz::{Credential, Grant};
use crate::fleet_api::FleetApiState;

/// The session cookie (`__Host-`: Secure, path `/`, this origin only).
pub const SESSION_COOKIE: &str = "__Host-decnet";
/// The header every change carries.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The Content-Security-Policy of every console answer: its own scripts,
/// styles and images only, no inline script, no frames, forms to itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../console/console.css");
const JS: &str = include_str!("../console/console.js");
const ICON: &str = include_str!("../console/icon.svg");

/// The permission a console request needs: `/v1` routes as on the fleet
/// API; pages are reads; a logout is anyone's. Pure.
pub fn permission_of_console(method: &Method, path: &str) -> Permission {
    if path.starts_with("/v1/") {
        return crate::authz::permission_of(method, path);
    }
    match *method {
        Method::GET | Method::HEAD => Permission::Read,
        Method::POST if path == "/logout" => Permission::Read,
        _ => Permission::Admin,
    }
}

/// Paths served without a session: the login landing and the assets.
fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/")
}

/// The session secret a request carries, if any. Pure.
pub fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Equal in constant time (for the CSRF token).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn refuse_json(status: StatusCode, kind: &str, detail: &str) -> Response {
    decnet_server::error_body::json_error(status, kind, detail)
}

/// The console's authorization: a live session of an active operator,
/// the CSRF token on every change, then the same role and scope checks as
/// the fleet API ([`crate::authz::admit`]).
pub async fn authorize_session(
    State(db): State<Arc<FleetDb>>,
    req: Request,
    next: Next,
) -> Response {
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<decnet_server::TlsPeer>>()
        .map(|c| c.0.remote.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    decnet_fleet::with_audit_source(source, authorize_session_request(db, req, next)).await
}

async fn authorize_session_request(db: Arc<FleetDb>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_public(&path) {
        return next.run(req).await;
    }
    let api = path.starts_with("/v1/");
    let signed_out = |why: &str| {
        if api {
            refuse_json(StatusCode::UNAUTHORIZED, "unauthorized", why)
        } else {
            page(
                StatusCode::UNAUTHORIZED,
                &SignedOut {
                    why: why.to_string(),
                },
            )
        }
    };
    let Some(secret) = session_of(req.headers()) else {
        return signed_out("no console session: run `decnet console` for a login URL");
    };
    let session = match db.console_session(&secret).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return signed_out(
                "this session ended (logged out, expired, or its operator was revoked): run `decnet console` again",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "fleet database unavailable");
            return refuse_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "fleet database unavailable",
            );
        }
    };
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    // The logout form carries its token in its body (it works without
    // JavaScript); its handler checks it.
    if changes && path != "/logout" {
        let token = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(token, &session.csrf) {
            tracing::warn!(operator = %session.operator, path = %path, "console change without its CSRF token refused");
            return refuse_json(
                StatusCode::FORBIDDEN,
                "csrf",
                "a change needs the session's CSRF token (X-CSRF-Token)",
            );
        }
    }
    let op = match db.operator(&session.operator).await {
        Ok(Some(op)) if op.revoked_at.is_none() => op,
        Ok(_) => return signed_out("this session's operator was revoked"),
        Err(e) => {
            tracing::error!(error = %e, "fleet database unavailable");
            return refuse_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "fleet database unavailable",
            );
        }
    };
    let mut req = req;
    req.extensions_mut().insert(Csrf(session.csrf));
    crate::authz::admit(db, op, Credential::Session(secret), req, next).await
}

/// The runner's policy for the console listener: no client certificates
/// there, so every request reaches [`authorize_session`], which decides.
#[derive(Clone, Copy, Debug)]
pub struct SessionPolicy;

impl decnet_server::AccessPolicy for SessionPolicy {
    fn check(
        &self,
        _peer: &decnet_pki::PeerIdentity,
        _method: &Method,
        _path: &str,
    ) -> Result<(), decnet_server::Refusal> {
        // No certificate is asked for; one cannot arrive (fail closed).
        Err(decnet_server::Refusal {
            required: "a console session".into(),
        })
    }

    fn allows_anonymous(&self, _method: &Method, _path: &str) -> bool {
        true
    }
}

/// The session's CSRF token, for the pages to embed.
#[derive(Clone, Debug)]
pub struct Csrf(pub String);

/// Security headers on every console answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The console's router: its pages and assets, and every `/v1` route,
/// behind [`authorize_session`].
pub fn router(state: Arc<FleetApiState>) -> Router {
    Router::new()
        .route("/", get(fleet_page))
        .route("/hosts/{name}", get(host_page))
        .route("/jobs", get(jobs_page))
        .route("/jobs/{id}", get(job_page))
        .route("/audit", get(audit_page))
        .route("/alerts", get(alerts_page))
        .route("/operators", get(operators_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/{file}", get(asset))
        .merge(crate::fleet_api::routes())
        .fallback(|| async {
            refuse_json(StatusCode::NOT_FOUND, "not_found", "no such page or route")
        })
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(state.db.clone()),
            authorize_session,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        "icon.svg" => (ICON, "image/svg+xml"),
        _ => return refuse_json(StatusCode::NOT_FOUND, "not_found", "no such asset"),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

fn page<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render a console page");
            refuse_json(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot render the page",
            )
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "fleet database unavailable");
    refuse_json(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "fleet database unavailable",
    )
}

/// What every page's frame shows: who is signed in, what it may do.
pub struct Frame {
    /// The operator.
    pub operator: String,
    /// Its role.
    pub role: String,
    /// Its scope, shown (`every host` when unscoped).
    pub scope: String,
    /// The CSRF token (a meta tag; the script sends it).
    pub csrf: String,
    /// Whether it may deploy (action buttons shown).
    pub deploys: bool,
    /// Whether it is an admin (operators page in the menu).
    pub admin: bool,
    /// Which page (the menu marks it; the script picks its part).
    pub page: &'static str,
    /// The newest event when the page was read: its stream starts after
    /// it, so nothing that changes while the page loads is missed.
    pub events_after: u64,
}

/// The frame of a page: taken before the page's database reads (the
/// event mark must not be newer than what the page shows).
fn frame(st: &FleetApiState, g: &Grant, csrf: &Csrf, page: &'static str) -> Frame {
    Frame {
        events_after: st.events.bus.newest_id(),
        operator: g.operator.clone(),
        role: g.role.to_string(),
        scope: if g.scope.0.is_empty() {
            "every host".into()
        } else {
            g.scope.0.join(", ")
        },
        csrf: csrf.0.clone(),
        deploys: g.role.permits(Permission::Deploy),
        admin: g.role == OperatorRole::Admin,
        page,
    }
}

pub use decnet_cli::table::{UnixTime, when};

/// One host on the fleet page.
pub struct FleetRow {
    /// Name.
    pub name: String,
    /// Status.
    pub status: String,
    /// Last heard (unix seconds, 0: never).
    pub last_seen: i64,
    /// Agent version.
    pub version: String,
    /// Agent certificate expiry (unix seconds, 0: unknown).
    pub cert_expiry: i64,
    /// Running / total deckies.
    pub running: usize,
    /// Deckies.
    pub deckies: usize,
    /// Address.
    pub address: String,
}

/// The deckies a host's stored state reports: (name, state, restarts, error).
pub fn deckies_of(state_json: Option<&str>) -> Vec<DeckyRow> {
    let Some(v) = state_json.and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()) else {
        return Vec::new();
    };
    let list = v
        .as_array()
        .cloned()
        .or_else(|| v.get("deckies").and_then(|d| d.as_array()).cloned())
        .unwrap_or_default();
    list.iter()
        .filter_map(|d| {
            Some(DeckyRow {
                name: d.get("name")?.as_str()?.to_string(),
                state: d
                    .get("state")
                    .and_then(|s| s.as_str())
                    .unwrap_or("unknown")
                    .to_string(),
                restarts: d.get("restarts").and_then(|r| r.as_u64()).unwrap_or(0),
                error: d
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("")
                    .to_string(),
                address: d
                    .get("address")
                    .and_then(|e| e.as_str())
                    .unwrap_or("")
                    .to_string(),
            })
        })
        .collect()
}

/// One decky on a host's page.
pub struct DeckyRow {
    /// Name.
    pub name: String,
    /// State.
    pub state: String,
    /// Restarts.
    pub restarts: u64,
    /// Why it failed.
    pub error: String,
    /// Its LAN address.
    pub address: String,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    f: Frame,
    rows: Vec<FleetRow>,
    counts: Vec<(String, usize)>,
    now: i64,
    /// A CA rotation under way, in words (`None`: none).
    rotation: Option<String>,
}

/// The CA rotation under way, as the fleet page says it: the phase and how
/// many hosts still hold certificates of the CA being dropped.
async fn rotation_banner(db: &decnet_fleet::FleetDb) -> Result<Option<String>, Response> {
    let Some(rot) = db.rotation().await.map_err(unavailable)? else {
        return Ok(None);
    };
    let hosts = db.host_cas().await.map_err(unavailable)?;
    let behind = hosts
        .iter()
        .filter(|h| h.status != "burned" && h.depends_on(rot.leaving_ca()))
        .count();
    Ok(Some(format!(
        "A CA rotation is under way ({}): {behind} host(s) still hold certificates of the CA being dropped (decnet ca rotation status).",
        match rot.direction {
            decnet_fleet::ca_rotation::RotationDirection::Forward => "moving to the new CA",
            decnet_fleet::ca_rotation::RotationDirection::Back => "aborting, back to the old CA",
        }
    )))
}

async fn fleet_page(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Extension(csrf): Extension<Csrf>,
) -> Result<Response, Response> {
    let f = frame(&st, &g, &csrf, "fleet");
    let hosts = st.db.hosts().await.map_err(unavailable)?;
    let expiry = st
        .db
        .current_certificate_expiry()
        .await
        .map_err(unavailable)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let rows: Vec<FleetRow> = hosts
        .iter()
        .filter(|h| g.sees(&h.name))
        .map(|h| {
            let deckies = deckies_of(h.state_json.as_deref());
            *counts.entry(h.status.as_str().to_string()).or_default() += 1;
            FleetRow {
                name: h.name.clone(),
                status: h.status.as_str().to_string(),
                last_seen: h.last_seen.unwrap_or(0),
                version: h.agent_version.clone().unwrap_or_default(),
                cert_expiry: h
                    .agent_fingerprint
                    .as_ref()
                    .and_then(|fp| expiry.get(fp))
                    .copied()
                    .unwrap_or(0),
                running: deckies.iter().filter(|d| d.state == "running").count(),
                deckies: deckies.len(),
                address: h.address.clone(),
            }
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        &FleetPage {
            f,
            rows,
            counts: counts.into_iter().collect(),
            now: decnet_fleet::unix_now(),
            rotation: rotation_banner(&st.db).await?,
        },
    ))
}

#[derive(Template)]
#[template(path = "host.html")]
struct HostPage {
    f: Frame,
    h: decnet_api::Host,
    deckies: Vec<DeckyRow>,
    certs: Vec<(String, String, String)>,
    revoked: usize,
}

async fn host_page(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Extension(csrf): Extension<Csrf>,
    Path(name): Path<String>,
) -> Result<Response, Response> {
    let f = frame(&st, &g, &csrf, "host");
    let h = crate::fleet_api::visible_host(&st, &g, &name).await?;
    let mut certs = Vec::new();
    for (role, fp, until) in [
        ("agent", &h.agent_fingerprint, h.agent_cert_not_after),
        ("updater", &h.updater_fingerprint, h.updater_cert_not_after),
    ] {
        if let Some(fp) = fp {
            certs.push((
                role.to_string(),
                fp.clone(),
                until.map(when).unwrap_or_else(|| "—".into()),
            ));
        }
    }
    let revoked = h.revoked_fingerprints.as_ref().map_or(0, Vec::len);
    Ok(page(
        StatusCode::OK,
        &HostPage {
            f,
            deckies: deckies_of(h.state_json.as_deref()),
            h,
            certs,
            revoked,
        },
    ))
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    f: Frame,
    jobs: Vec<decnet_fleet::jobs::JobRecord>,
}

async fn jobs_page(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Extension(csrf): Extension<Csrf>,
) -> Result<Response, Response> {
    let jobs = crate::fleet_api::visible_jobs(&st, &g, 200).await?;
    Ok(page(
        StatusCode::OK,
        &JobsPage {
            f: frame(&st, &g, &csrf, "jobs"),
            jobs,
        },
    ))
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    f: Frame,
    job: decnet_api::Job,
    lines: Vec<decnet_api::JobEvent>,
}

async fn job_page(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Extension(csrf): Extension<Csrf>,
    Path(id): Path<String>,
) -> Result<Response, Response> {
    let (job, lines) = crate::fleet_api::job_with_lines(&st, &g, &id).await?;
    Ok(page(
        StatusCode::OK,
        &JobPage {
            f: frame(&st, &g, &csrf, "job"),
            job,
            lines,
        },
    ))
}

/// The audit page's search form.
#[derive(Deserialize, Default)]
struct AuditForm {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    host: String,
    /// `YYYY-MM-DD` (UTC).
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

/// `YYYY-MM-DD` → unix seconds at its start (UTC). Pure.
pub fn day_start(d: &str) -> Option<i64> {
    let date = time::Date::parse(
        d.trim(),
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    f: Frame,
    q: AuditForm,
    entries: Vec<decnet_api::AuditRecord>,
    filtered: bool,
}

async fn audit_page(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Extension(csrf): Extension<Csrf>,
    Query(q): Query<AuditForm>,
) -> Result<Response, Response> {
    let f = frame(&st, &g, &csrf, "audit");
    let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let search = decnet_fleet::AuditSearch {
        limit: 500,
        actor: text(&q.actor),
        action: text(&q.action),
        target: text(&q.host).map(|h| h.to_ascii_lowercase()),
        since: day_start(&q.since),
        until: day_start(&q.until).map(|t| t + 86_399),
    };
    let filtered = search.actor.is_some()
        || search.action.is_some()
        || search.target.is_some()
        || search.since.is_some()
        || search.until.is_some();
    let entries = st
        .db
        .audit_search(&search)
        .await
        .map_err(crate::fleet_api::db_refusal)?;
    let entries = entries
        .iter()
        .filter(|e| g.sees_audit(&e.action, &e.target))
        .map(crate::fleet_api::audit_view)
        .collect();
    Ok(page(
        StatusCode::OK,
        &AuditPage {
            f,
            q,
            entries,
            filtered,
        },
    ))
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    f: Frame,
    rules: Vec<decnet_fleet::console::AlertRecord>,
    deliveries: Vec<decnet_fleet::console::DeliveryRecord>,
}

async fn alerts_page(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Extension(csrf): Extension<Csrf>,
) -> Result<Response, Response> {
    let f = frame(&st, &g, &csrf, "alerts");
    // The rules (their webhooks) are the admins'; the history is everyone's
    // (within their scope).
    let rules = if g.role == OperatorRole::Admin {
        st.db.alerts().await.map_err(unavailable)?
    } else {
        Vec::new()
    };
    let deliveries = st
        .db
        .deliveries(None, 200)
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter(|d| match &d.host {
            Some(h) => g.sees(h),
            None => g.scope.0.is_empty(),
        })
        .collect();
    Ok(page(
        StatusCode::OK,
        &AlertsPage {
            f,
            rules,
            deliveries,
        },
    ))
}

#[derive(Template)]
#[template(path = "operators.html")]
struct OperatorsPage {
    f: Frame,
    operators: Vec<decnet_fleet::operators::OperatorRecord>,
}

async fn operators_page(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Extension(csrf): Extension<Csrf>,
) -> Result<Response, Response> {
    if g.role != OperatorRole::Admin || !g.scope.0.is_empty() {
        return Err(refuse_json(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the operators are for admins without a host scope",
        ));
    }
    let operators = st.db.operators().await.map_err(unavailable)?;
    Ok(page(
        StatusCode::OK,
        &OperatorsPage {
            f: frame(&st, &g, &csrf, "operators"),
            operators,
        },
    ))
}

#[derive(Template)]
#[template(path = "signed_out.html")]
struct SignedOut {
    why: String,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    operator: String,
    ticket: String,
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    ticket: String,
}

/// A ticket's shape: 64 hex digits. Pure.
fn ticket_shaped(t: &str) -> bool {
    t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

fn login_refused(status: StatusCode, why: &str) -> Response {
    page(status, &SignedOut { why: why.into() })
}

/// Sign-ins a source may try a minute (each is a database write).
pub const LOGINS_PER_MINUTE: u32 = 30;

/// `GET /login?ticket=…`: what a one-time URL opens — a page naming the
/// operator it signs in, with a button. Nothing is used up by a GET (a
/// link preview, a prefetch): the sign-in is the button's POST.
async fn login_page(State(st): State<Arc<FleetApiState>>, Query(q): Query<LoginForm>) -> Response {
    let ticket = q.ticket.trim();
    if !ticket_shaped(ticket) {
        return login_refused(
            StatusCode::BAD_REQUEST,
            "this is not a login URL: run `decnet console` for one",
        );
    }
    match st.db.console_ticket_operator(ticket).await {
        Ok(Some(operator)) => page(
            StatusCode::OK,
            &LoginPage {
                operator,
                ticket: ticket.to_string(),
            },
        ),
        Ok(None) => login_refused(
            StatusCode::FORBIDDEN,
            "this login URL was already used or has expired: run `decnet console` for a new one",
        ),
        Err(e) => unavailable(e),
    }
}

/// Whether a POST comes from this console's own page: the browser's
/// `Sec-Fetch-Site`, or its `Origin` against the `Host` it asked for. A
/// page elsewhere cannot sign a browser in as someone else. Pure.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin";
    }
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => origin == format!("https://{host}"),
        _ => false,
    }
}

/// `POST /login` (the sign-in page's button): use the ticket once and open
/// a session; the cookie rides along the redirect to the fleet (a
/// same-origin step).
async fn login(
    State(st): State<Arc<FleetApiState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    static LOGINS: std::sync::OnceLock<crate::control_api::SourceLimiter> =
        std::sync::OnceLock::new();
    let source = decnet_fleet::current_audit_source();
    if !same_origin(&headers) {
        tracing::warn!(source = ?source, "console sign-in from another site refused");
        return login_refused(
            StatusCode::FORBIDDEN,
            "a sign-in comes from the console's own page: open the one-time URL itself",
        );
    }
    let ip = source.as_deref().and_then(|s| s.parse().ok());
    let limiter = LOGINS
        .get_or_init(|| crate::control_api::SourceLimiter::per_minute(LOGINS_PER_MINUTE, 10_000));
    if ip.is_some_and(|ip| !limiter.allow(ip)) {
        return login_refused(
            StatusCode::TOO_MANY_REQUESTS,
            "too many sign-ins from this address: wait a minute",
        );
    }
    let ticket = form.ticket.trim();
    if !ticket_shaped(ticket) {
        return login_refused(StatusCode::BAD_REQUEST, "this is not a login URL");
    }
    // A read first: a guessed ticket never takes the database's write lock.
    match st.db.console_ticket_operator(ticket).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::warn!(source = ?source, "console login with a used, expired or unknown URL refused");
            return login_refused(
                StatusCode::FORBIDDEN,
                "this login URL was already used or has expired: run `decnet console` for a new one",
            );
        }
        Err(e) => return unavailable(e),
    }
    let session = decnet_pki::random_hex(32);
    let csrf = decnet_pki::random_hex(32);
    let operator = match st
        .db
        .redeem_console_ticket(ticket, &session, &csrf, source.as_deref())
        .await
    {
        Ok(Some(op)) => op,
        Ok(None) => {
            return login_refused(
                StatusCode::FORBIDDEN,
                "this login URL was already used or has expired: run `decnet console` for a new one",
            );
        }
        Err(e) => return unavailable(e),
    };
    if let Err(e) = st
        .db
        .audit(&decnet_fleet::AuditEntry::now(
            format!("operator:{operator}"),
            "console.login",
            &operator,
            decnet_fleet::AuditOutcome::Ok,
            "session opened with a one-time URL",
        ))
        .await
    {
        tracing::error!(error = %e, "cannot write the audit entry");
    }
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        decnet_fleet::console::SESSION_TTL_SECS
    );
    let mut resp = axum::response::Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /logout` (a form: its CSRF token in the body).
async fn logout(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Extension(csrf): Extension<Csrf>,
    axum::Form(form): axum::Form<LogoutForm>,
) -> Response {
    if !same(&form.csrf, &csrf.0) {
        return refuse_json(
            StatusCode::FORBIDDEN,
            "csrf",
            "a change needs the session's CSRF token",
        );
    }
    if let Credential::Session(secret) = &g.credential
        && let Err(e) = st.db.end_console_session(secret).await
    {
        return unavailable(e);
    }
    let _ = st
        .db
        .audit(&decnet_fleet::AuditEntry::now(
            g.actor(),
            "console.logout",
            &g.operator,
            decnet_fleet::AuditOutcome::Ok,
            "",
        ))
        .await;
    let mut resp = page(
        StatusCode::OK,
        &SignedOut {
            why: "signed out".into(),
        },
    );
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-decnet=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_reads_and_v1_keeps_its_table() {
        assert_eq!(permission_of_console(&Method::GET, "/"), Permission::Read);
        assert_eq!(
            permission_of_console(&Method::POST, "/logout"),
            Permission::Read
        );
        assert_eq!(
            permission_of_console(&Method::POST, "/v1/deploy"),
            Permission::Deploy
        );
        assert_eq!(
            permission_of_console(&Method::POST, "/v1/hosts/w1/burn"),
            Permission::Admin
        );
        assert_eq!(permission_of_console(&Method::POST, "/"), Permission::Admin);
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut h = HeaderMap::new();
        let s = "ab".repeat(32);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {SESSION_COOKIE}={s}; y=2")).unwrap(),
        );
        assert_eq!(session_of(&h), Some(s));
        let mut bad = HeaderMap::new();
        bad.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-decnet=not-hex"),
        );
        assert_eq!(session_of(&bad), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn a_sign_in_comes_from_the_console_itself() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8772"));
        h.insert("origin", HeaderValue::from_static("https://127.0.0.1:8772"));
        assert!(same_origin(&h));
        h.insert("origin", HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h));
        assert!(!same_origin(&HeaderMap::new()), "no Origin: refused");
    }

    #[test]
    fn deckies_and_days_parse() {
        let d = deckies_of(Some(
            r#"[{"name":"web","state":"running","restarts":2},{"name":"db","state":"failed","error":"x"}]"#,
        ));
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].name.as_str(), d[0].restarts), ("web", 2));
        assert_eq!(d[1].error, "x");
        assert!(deckies_of(Some("nonsense")).is_empty());
        assert_eq!(day_start("2026-12-05"), Some(1_796_428_800));
        assert_eq!(day_start("yesterday"), None);
        assert_eq!(when(1_796_428_800), "2026-12-05 00:00:00Z");
    }
}
