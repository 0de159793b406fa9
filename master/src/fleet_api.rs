//! The fleet API (`/v1`): what operators (the `decnet` CLI through a
//! context, scripts, later the console) call on `master serve`'s operator
//! listener (`--api-port`, 8771). mTLS with an operator certificate only —
//! never anonymous, never the control API's policies; every request is
//! authorized in [`crate::authz`] before a handler runs. JSON in and out,
//! the wire types of `decnet-api`; database rows are converted here, at the
//! edge. Every change is audited with the operator as the actor.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use decnet_api as api;
use decnet_fleet::operators::{OperatorError, OperatorRecord};
use decnet_fleet::{AuditEntry, AuditOutcome, FleetDb, HostRecord};
use decnet_pki::HostName;
use decnet_server::error_body::json_error;
use decnet_swarm_client::pace::{MIN_TRANSFER_RATE, TransferPace};
use serde::Deserialize;

use crate::authz::{Grant, valid_glob};

/// What the handlers share.
pub struct FleetApiState {
    /// The fleet database.
    pub db: FleetDb,
    /// The CA (tokens carry its fingerprint).
    pub ca: Arc<crate::authorities::LiveAuthorities>,
    /// Where the CA keeps the bundles it issued (a decommission deletes them).
    pub layout: decnet_pki::CaLayout,
    /// The master's home (the doctor looks at its disk).
    pub home: crate::home::MasterHome,
    /// The master's warm pool of worker connections: TLS sessions kept
    /// across requests, so a repeated `swarm check` resumes instead of
    /// handshaking afresh with every host (rebuilt by the daemon when its
    /// certificate or the revocation list changes).
    pub pool: crate::fleet_ops::SharedPool,
    /// The event bus (`GET /v1/events`).
    pub events: crate::events::Events,
    /// The alert deliverer (rule changes, test deliveries).
    pub alerts: crate::alerts::Alerts,
    /// The console's port (login URLs point there; `None`: no console).
    pub console_port: Option<u16>,
}

/// The `/v1` router, authorization (by operator certificate) included.
pub fn router(state: Arc<FleetApiState>) -> Router {
    routes()
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(state.db.clone()),
            crate::authz::authorize,
        ))
        .with_state(state)
}

/// The `/v1` routes without their authorization layer: the fleet API and
/// the console put theirs in front (an operator certificate, a session).
pub fn routes() -> Router<Arc<FleetApiState>> {
    use crate::events_api as ev;
    Router::new()
        .route("/v1/events", get(ev::events))
        .route("/v1/alerts", get(ev::alerts).post(ev::alert_add))
        .route("/v1/alerts/deliveries", get(ev::deliveries))
        .route("/v1/alerts/{name}", axum::routing::delete(ev::alert_remove))
        .route("/v1/alerts/{name}/test", post(ev::alert_test))
        .route("/v1/console/login", post(ev::console_login))
        .route("/v1/whoami", get(whoami))
        .route("/v1/whoami/renew", post(renew_self))
        .route(
            "/v1/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    crate::openapi::json(),
                )
            }),
        )
        .route("/v1/hosts", get(hosts))
        .route("/v1/hosts/{name}", get(host))
        .route("/v1/audit", get(audit))
        .route("/v1/tokens", post(token_create))
        .route("/v1/hosts/{name}/releases", get(releases))
        .route("/v1/doctor", get(doctor))
        .route("/v1/deploy", post(deploy))
        .route("/v1/jobs", get(jobs))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/jobs/{id}/cancel", post(job_cancel))
        .route("/v1/hosts/{name}/decommission", post(decommission))
        .route("/v1/hosts/{name}/renew", post(renew))
        .route("/v1/status", get(status))
        .route("/v1/check", get(check))
        .route("/v1/ca", get(ca))
        .route("/v1/deploy/plan", post(deploy_plan))
        .route("/v1/hosts/{name}/teardown", post(teardown))
        .route("/v1/hosts/{name}/rollback", post(rollback))
        .route("/v1/hosts/{name}/burn", post(burn))
        .route("/v1/hosts/{name}/endpoint", put(set_endpoint))
        .route("/v1/hosts/{name}/evidence", get(evidence_list))
        .route(
            "/v1/hosts/{name}/evidence/{decky}/{id}",
            get(evidence_fetch),
        )
        .route("/v1/releases/{sha256}", put(release_upload))
        .route("/v1/update", post(update))
        .route("/v1/operators", get(operators).post(operator_add))
        .route("/v1/operators/{name}", get(operator_show))
        .route("/v1/operators/{name}/token", post(operator_token))
        .route("/v1/operators/{name}/role", put(operator_set_role))
        .route("/v1/operators/{name}/revoke", post(operator_revoke))
}

/// When a host's current certificates expire (unix seconds), from
/// `FleetDb::current_certificate_expiry`: (agent, updater).
fn cert_expiry(h: &HostRecord, expiry: &BTreeMap<String, i64>) -> (Option<i64>, Option<i64>) {
    // A decommissioned or burned host holds no certificate that counts:
    // every one was revoked, so none "expires".
    if matches!(
        h.status,
        decnet_fleet::HostStatus::Decommissioned | decnet_fleet::HostStatus::Burned
    ) {
        return (None, None);
    }
    let of = |fp: &Option<String>| fp.as_ref().and_then(|f| expiry.get(f).copied());
    (of(&h.agent_fingerprint), of(&h.updater_fingerprint))
}

/// A host as the API shows it: its record with its certificates' expiry.
pub fn host_view(h: &HostRecord, expiry: &BTreeMap<String, i64>) -> api::Host {
    let (agent, updater) = cert_expiry(h, expiry);
    api::Host {
        name: h.name.clone(),
        address: h.address.clone(),
        agent_port: h.agent_port,
        updater_port: h.updater_port,
        sans: h.sans.clone(),
        agent_fingerprint: h.agent_fingerprint.clone(),
        updater_fingerprint: h.updater_fingerprint.clone(),
        agent_pending: h.agent_pending.clone(),
        updater_pending: h.updater_pending.clone(),
        status: h.status.as_str().to_string(),
        enrolled_at: h.enrolled_at,
        updated_at: h.updated_at,
        last_seen: h.last_seen,
        last_error: h.last_error.clone(),
        agent_version: h.agent_version.clone(),
        state_json: h.state_json.clone(),
        clock_skew_ms: h.clock_skew_ms,
        last_heartbeat: h.last_heartbeat,
        agent_cert_not_after: agent,
        updater_cert_not_after: updater,
        revoked_fingerprints: None,
    }
}

/// An audit entry as the API shows it.
pub fn audit_view(e: &AuditEntry) -> api::AuditRecord {
    api::AuditRecord {
        at: e.at,
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        outcome: e.outcome.as_str().to_string(),
        detail: e.detail.clone(),
        source: e.source.clone(),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "fleet database unavailable");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "fleet database unavailable",
    )
}

/// A database error as the answer: too many audit searches at once is a
/// 429 (try again), anything else the database being unavailable.
pub fn db_refusal(e: decnet_fleet::DbError) -> Response {
    match e {
        decnet_fleet::DbError::Busy => {
            json_error(StatusCode::TOO_MANY_REQUESTS, "busy", e.to_string())
        }
        e => unavailable(e),
    }
}

/// A usage error of a shared operation (a host not enrolled) as a 404;
/// anything else as the database being unavailable.
fn absent_or_unavailable(e: anyhow::Error) -> Response {
    match e.downcast::<crate::usage::UsageError>() {
        Ok(u) => not_found(u.0),
        Err(e) => unavailable(e),
    }
}

fn not_found(what: String) -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", what)
}

fn bad_request(what: impl Into<String>) -> Response {
    json_error(StatusCode::BAD_REQUEST, "bad_request", what)
}

/// A request body, or what is wrong with it (for a 400).
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "invalid request body: {}",
            decnet_server::error_body::plain_decode_message(&e.to_string())
        )
    })
}

async fn whoami(Extension(g): Extension<Grant>) -> Json<api::Whoami> {
    Json(api::Whoami {
        name: g.operator.clone(),
        role: g.role,
        hosts: g.scope.0.clone(),
    })
}

async fn hosts(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
) -> Result<Json<Vec<api::Host>>, Response> {
    let all = st.db.hosts().await.map_err(unavailable)?;
    let expiry = st
        .db
        .current_certificate_expiry()
        .await
        .map_err(unavailable)?;
    Ok(Json(
        all.iter()
            .filter(|h| g.sees(&h.name))
            .map(|h| host_view(h, &expiry))
            .collect(),
    ))
}

async fn host(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Json<api::Host>, Response> {
    visible_host(&st, &g, &name).await.map(Json)
}

/// Host `name` as the API shows it (its revoked certificates included),
/// if the grant sees it: a host outside the scope is as absent as one
/// never enrolled (the fleet API's host and the console's host page).
pub async fn visible_host(
    st: &FleetApiState,
    g: &Grant,
    name: &str,
) -> Result<api::Host, Response> {
    let name = name.to_ascii_lowercase();
    let missing = || {
        not_found(format!(
            "host {name} is not enrolled (see `decnet swarm list`)"
        ))
    };
    if !g.sees(&name) {
        return Err(missing());
    }
    let Some(h) = st.db.host(&name).await.map_err(unavailable)? else {
        return Err(missing());
    };
    let expiry = st
        .db
        .current_certificate_expiry()
        .await
        .map_err(unavailable)?;
    let mut v = host_view(&h, &expiry);
    v.revoked_fingerprints = Some(st.db.revoked_of(&name).await.map_err(unavailable)?);
    Ok(v)
}

#[derive(Deserialize)]
struct ProbeQuery {
    #[serde(default)]
    host: Option<String>,
    #[serde(default = "default_parallel")]
    parallel: usize,
}

fn default_parallel() -> usize {
    crate::fleet_ops::DEFAULT_PARALLEL
}

/// The hosts a probe of `q` covers, as the grant allows.
async fn probed_hosts(
    st: &FleetApiState,
    g: &Grant,
    host: Option<&str>,
) -> Result<Vec<HostRecord>, Response> {
    let names: Vec<String> = host
        .map(|h| vec![h.to_ascii_lowercase()])
        .unwrap_or_default();
    if let Some(h) = names.first()
        && !g.sees(h)
    {
        return Err(not_found(format!(
            "host {h} is not enrolled (see `decnet swarm list`)"
        )));
    }
    let hosts = crate::fleet_ops::select_hosts(&st.db, &names)
        .await
        .map_err(absent_or_unavailable)?;
    Ok(hosts.into_iter().filter(|h| g.sees(&h.name)).collect())
}

async fn status(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Query(q): Query<ProbeQuery>,
) -> Result<Json<Vec<crate::fleet_ops::HostReport>>, Response> {
    let hosts = probed_hosts(&st, &g, q.host.as_deref()).await?;
    Ok(Json(
        crate::fleet_ops::probe_all(
            &st.db,
            &st.pool.current(),
            hosts,
            true,
            q.parallel.clamp(1, 1024),
        )
        .await,
    ))
}

async fn check(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Query(q): Query<ProbeQuery>,
) -> Result<Json<Vec<crate::fleet_ops::HostReport>>, Response> {
    let hosts = probed_hosts(&st, &g, None).await?;
    Ok(Json(
        crate::fleet_ops::probe_all(
            &st.db,
            &st.pool.current(),
            hosts,
            false,
            q.parallel.clamp(1, 1024),
        )
        .await,
    ))
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default = "default_limit")]
    limit: i64,
    #[serde(default)]
    actor: Option<String>,
    /// Actions starting with this (`swarm.`, `operator.add`).
    #[serde(default)]
    action: Option<String>,
    /// The host (or operator) acted on.
    #[serde(default)]
    target: Option<String>,
    /// Not before (unix seconds).
    #[serde(default)]
    since: Option<i64>,
    /// Not after (unix seconds).
    #[serde(default)]
    until: Option<i64>,
}

fn default_limit() -> i64 {
    50
}

async fn audit(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<api::AuditRecord>>, Response> {
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let entries = st
        .db
        .audit_search(&decnet_fleet::AuditSearch {
            limit: q.limit.clamp(1, 10_000),
            actor: nonempty(q.actor),
            action: nonempty(q.action),
            target: nonempty(q.target).map(|t| t.to_ascii_lowercase()),
            since: q.since,
            until: q.until,
        })
        .await
        .map_err(db_refusal)?;
    Ok(Json(
        entries
            .iter()
            // A scoped operator reads what happened to its hosts only (not
            // the operators' changes, whose targets are operator names).
            .filter(|e| g.sees_audit(&e.action, &e.target))
            .map(audit_view)
            .collect(),
    ))
}

/// Operator `name` as the API shows it (`None`: no such operator).
pub async fn operator_view(
    db: &FleetDb,
    name: &str,
) -> Result<Option<api::Operator>, decnet_fleet::DbError> {
    let Some(o) = db.operator(name).await? else {
        return Ok(None);
    };
    let cert = db.operator_certificate(name).await?;
    Ok(Some(view_of(&o, cert)))
}

fn view_of(o: &OperatorRecord, cert: Option<decnet_fleet::CertRecord>) -> api::Operator {
    api::Operator {
        name: o.name.clone(),
        role: api::OperatorRole::parse(&o.role).unwrap_or(api::OperatorRole::Viewer),
        hosts: o.hosts.clone(),
        created_at: o.created_at,
        created_by: o.created_by.clone(),
        revoked_at: o.revoked_at,
        fingerprint: cert.as_ref().map(|c| c.fingerprint.clone()),
        cert_not_after: cert.map(|c| c.not_after),
    }
}

/// Every operator as the API shows it.
pub async fn operator_views(db: &FleetDb) -> Result<Vec<api::Operator>, decnet_fleet::DbError> {
    let mut out = Vec::new();
    for o in db.operators().await? {
        let cert = db.operator_certificate(&o.name).await?;
        out.push(view_of(&o, cert));
    }
    Ok(out)
}

async fn operators(
    State(st): State<Arc<FleetApiState>>,
) -> Result<Json<Vec<api::Operator>>, Response> {
    Ok(Json(operator_views(&st.db).await.map_err(unavailable)?))
}

async fn operator_show(
    State(st): State<Arc<FleetApiState>>,
    Path(name): Path<String>,
) -> Result<Json<api::Operator>, Response> {
    match operator_view(&st.db, &name).await.map_err(unavailable)? {
        Some(o) => Ok(Json(o)),
        None => Err(not_found(format!("no operator named {name}"))),
    }
}

pub use decnet_api::MAX_TOKEN_TTL_SECS;

fn operator_error(e: OperatorError) -> Response {
    match e {
        OperatorError::Exists(_) => json_error(StatusCode::CONFLICT, "conflict", e.to_string()),
        OperatorError::Unknown(_) => json_error(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        OperatorError::Db(e) => unavailable(e),
    }
}

/// Validate an operator name and its host globs.
pub fn check_operator(name: &str, hosts: &[String]) -> Result<HostName, String> {
    let name = HostName::new(name).map_err(|e| format!("operator name: {e}"))?;
    if let Some(bad) = hosts.iter().find(|g| !valid_glob(g)) {
        return Err(format!(
            "host glob {bad:?}: use host-name characters, `*` and `?`"
        ));
    }
    Ok(name)
}

/// Record a change the operator of `g` made (an audit failure is logged,
/// never answered: the change is done).
pub async fn audit_change(
    st: &FleetApiState,
    g: &Grant,
    action: &str,
    target: &str,
    detail: String,
) {
    if let Err(e) = st
        .db
        .audit(&AuditEntry::now(
            g.actor(),
            action,
            target,
            AuditOutcome::Ok,
            detail,
        ))
        .await
    {
        tracing::error!(error = %e, action, "cannot write the audit entry");
    }
}

async fn operator_add(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let req: api::NewOperator = decode(&body).map_err(bad_request)?;
    let name = check_operator(&req.name, &req.hosts).map_err(bad_request)?;
    let ttl = req.token_ttl_secs.clamp(60, MAX_TOKEN_TTL_SECS);
    let (token, expires_at) = st
        .db
        .add_operator(
            &st.ca.signing(),
            &name,
            req.role.as_str(),
            &req.hosts,
            std::time::Duration::from_secs(ttl),
            &g.actor(),
        )
        .await
        .map_err(operator_error)?;
    audit_change(
        &st,
        &g,
        "operator.add",
        name.as_str(),
        format!("role={} hosts={:?} token={}", req.role, req.hosts, token.id),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(api::OperatorToken {
            operator: name.to_string(),
            token: token.to_string(),
            expires_at,
        }),
    )
        .into_response())
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default = "default_ttl")]
    ttl_secs: u64,
}

fn default_ttl() -> u64 {
    3600
}

async fn operator_token(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Result<Json<api::OperatorToken>, Response> {
    let name = check_operator(&name, &[]).map_err(bad_request)?;
    let (token, expires_at) = st
        .db
        .operator_token(
            &st.ca.signing(),
            &name,
            std::time::Duration::from_secs(q.ttl_secs.clamp(60, MAX_TOKEN_TTL_SECS)),
            &g.actor(),
        )
        .await
        .map_err(operator_error)?;
    audit_change(
        &st,
        &g,
        "operator.token",
        name.as_str(),
        format!("token={}", token.id),
    )
    .await;
    Ok(Json(api::OperatorToken {
        operator: name.to_string(),
        token: token.to_string(),
        expires_at,
    }))
}

async fn operator_set_role(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::Operator>, Response> {
    let req: api::SetRole = decode(&body).map_err(bad_request)?;
    check_operator(&name, req.hosts.as_deref().unwrap_or(&[])).map_err(bad_request)?;
    st.db
        .set_operator_role(&name, req.role.as_str(), req.hosts.as_deref())
        .await
        .map_err(operator_error)?;
    audit_change(
        &st,
        &g,
        "operator.set_role",
        &name,
        format!("role={} hosts={:?}", req.role, req.hosts),
    )
    .await;
    operator_show(State(st), Path(name)).await
}

async fn operator_revoke(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Json<api::Operator>, Response> {
    let revoked = st.db.revoke_operator(&name).await.map_err(operator_error)?;
    audit_change(
        &st,
        &g,
        "operator.revoke",
        &name,
        format!("revoked certificates: {}", revoked.len()),
    )
    .await;
    operator_show(State(st), Path(name)).await
}

fn op_error(e: crate::ops::OpError) -> Response {
    match e {
        crate::ops::OpError::Invalid(m) => bad_request(m),
        crate::ops::OpError::NotFound(m) => not_found(m),
        crate::ops::OpError::Internal(e) => unavailable(e),
    }
}

/// The host, if the grant's scope holds it; otherwise what to answer (a
/// host outside the scope is as absent as one never enrolled).
fn in_scope(g: &Grant, host: &str) -> Result<String, String> {
    let host = host.to_ascii_lowercase();
    if g.sees(&host) {
        Ok(host)
    } else {
        Err(format!(
            "host {host} is not enrolled (see `decnet swarm list`)"
        ))
    }
}

async fn token_create(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    body: axum::body::Bytes,
) -> Result<Json<api::JoinToken>, Response> {
    let req: api::NewJoinToken = decode(&body).map_err(bad_request)?;
    let host = in_scope(&g, &req.host).map_err(not_found)?;
    let op = crate::ops::TokenRequest {
        host,
        address: req.address,
        sans: req.sans,
        updater: req.updater,
        ttl: std::time::Duration::from_secs(req.ttl_secs.clamp(1, MAX_TOKEN_TTL_SECS)),
    };
    let token = crate::ops::create_join_token(&st.db, &st.ca.signing(), &op, &g.actor())
        .await
        .map_err(op_error)?;
    Ok(Json(api::JoinToken {
        host: op.host,
        token: token.to_string(),
        updater: op.updater,
        ttl_secs: op.ttl.as_secs(),
    }))
}

async fn decommission(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Json<api::Decommissioned>, Response> {
    let host = in_scope(&g, &name).map_err(not_found)?;
    let d = crate::ops::decommission(&st.db, &st.layout, &host, &g.actor())
        .await
        .map_err(op_error)?;
    Ok(Json(api::Decommissioned {
        host,
        revoked: d.revoked,
        removed_bundles: d.removed_bundles,
    }))
}

async fn renew(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Json<api::RenewRequested>, Response> {
    let host = in_scope(&g, &name).map_err(not_found)?;
    let r = crate::ops::request_renewal(&st.db, &st.pool.current(), &host, &g.actor())
        .await
        .map_err(op_error)?;
    Ok(Json(api::RenewRequested {
        host,
        has_updater: r.updater.is_some(),
        updater_error: r.updater.and_then(|u| u.err()),
    }))
}

async fn releases(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Response> {
    let host = in_scope(&g, &name).map_err(not_found)?;
    crate::cli::releases_report(&st.db, &st.pool.current(), &host)
        .await
        .map(Json)
        .map_err(absent_or_unavailable)
}

#[derive(Deserialize)]
struct DoctorQuery {
    expiry_warning_secs: i64,
    silent_after_secs: i64,
    max_skew_ms: i64,
    /// Probe this many hosts at a time; absent: no probing.
    #[serde(default)]
    probe_parallel: Option<usize>,
}

async fn doctor(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Query(q): Query<DoctorQuery>,
) -> Result<Json<serde_json::Value>, Response> {
    let policy = crate::doctor::DoctorPolicy {
        expiry_warning: q.expiry_warning_secs.max(0),
        silent_after: q.silent_after_secs.max(1),
        max_skew_ms: q.max_skew_ms.max(0),
    };
    let sees = |h: &str| g.sees(h);
    let scope: Option<&(dyn Fn(&str) -> bool + Sync)> =
        (!g.scope.0.is_empty()).then_some(&sees as _);
    crate::doctor::report(
        &st.home,
        &st.db,
        &st.pool.current(),
        &policy,
        q.probe_parallel.map(|p| p.clamp(1, 1024)),
        scope,
    )
    .await
    .map(Json)
    .map_err(unavailable)
}

fn job_view(
    j: &decnet_fleet::jobs::JobRecord,
    hosts: Vec<decnet_fleet::jobs::JobHost>,
) -> api::Job {
    api::Job {
        id: j.id.clone(),
        kind: j.kind.clone(),
        actor: j.actor.clone(),
        state: j.state.clone(),
        created_at: j.created_at,
        finished_at: j.finished_at,
        request: j.request.clone(),
        result: j.result.clone(),
        hosts: hosts
            .into_iter()
            .map(|h| api::JobHost {
                host: h.host,
                state: h.state,
                detail: h.detail,
            })
            .collect(),
    }
}

async fn deploy(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let req: api::DeployRequest = decode(&body).map_err(bad_request)?;
    let config: serde_json::Value = serde_json::from_str(&req.config_json)
        .map_err(|e| bad_request(format!("{} is not valid JSON: {e}", req.config_name)))?;
    let key = idempotency_key(&headers);
    for h in &req.hosts {
        in_scope(&g, h).map_err(not_found)?;
    }
    let names: Vec<String> = req.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    let targets: Vec<HostRecord> = crate::fleet_ops::select_hosts(&st.db, &names)
        .await
        .map_err(absent_or_unavailable)?
        .into_iter()
        .filter(|h| g.sees(&h.name))
        .collect();
    if targets.is_empty() {
        return Err(bad_request(
            "no hosts to deploy to (enroll one with `decnet swarm enroll`)",
        ));
    }
    let run = crate::fleet_ops::DeployRun {
        config,
        config_name: req.config_name.clone(),
        wait: req.wait,
        parallel: req.parallel.clamp(1, 4096),
    };
    let request = serde_json::to_string(&run).map_err(unavailable)?;
    let hosts: Vec<String> = targets.iter().map(|h| h.name.clone()).collect();
    use decnet_fleet::jobs::JobStart;
    match st
        .db
        .start_job("deploy", &g.actor(), key.as_deref(), &request, &hosts)
        .await
        .map_err(unavailable)?
    {
        JobStart::Existing(j) => {
            same_request(&st, &g, &j, "deploy", &request).await?;
            Ok((StatusCode::OK, Json(job_view(&j, Vec::new()))).into_response())
        }
        JobStart::Busy(b) => Err(busy(&b)),
        JobStart::Created(j) => {
            tracing::info!(job = %j.id, actor = %g.actor(), hosts = hosts.len(), "deploy job started");
            let view = job_view(&j, Vec::new());
            crate::jobs::spawn_deploy(st.db.clone(), st.pool.current(), j, run, targets);
            Ok((StatusCode::ACCEPTED, Json(view)).into_response())
        }
    }
}

/// A job, if it exists and the grant sees every host it touches.
async fn visible_job(
    st: &FleetApiState,
    g: &Grant,
    id: &str,
) -> Result<
    (
        decnet_fleet::jobs::JobRecord,
        Vec<decnet_fleet::jobs::JobHost>,
    ),
    Response,
> {
    let missing = || not_found(format!("no job {id}"));
    let j = st
        .db
        .job(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(missing)?;
    let hosts = st.db.job_hosts(id).await.map_err(unavailable)?;
    if !hosts.iter().all(|h| g.sees(&h.host)) {
        return Err(missing());
    }
    Ok((j, hosts))
}

/// The newest `limit` jobs whose every host the grant sees.
pub async fn visible_jobs(
    st: &FleetApiState,
    g: &Grant,
    limit: i64,
) -> Result<Vec<decnet_fleet::jobs::JobRecord>, Response> {
    let mut out = Vec::new();
    for j in st.db.jobs(limit).await.map_err(unavailable)? {
        let hosts = st.db.job_hosts(&j.id).await.map_err(unavailable)?;
        if hosts.iter().all(|h| g.sees(&h.host)) {
            out.push(j);
        }
    }
    Ok(out)
}

/// A job the grant sees, with its first progress lines (the console's
/// job page).
pub async fn job_with_lines(
    st: &FleetApiState,
    g: &Grant,
    id: &str,
) -> Result<(api::Job, Vec<api::JobEvent>), Response> {
    let (j, hosts) = visible_job(st, g, id).await?;
    let lines = st
        .db
        .job_events(id, 0, 5000)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|e| api::JobEvent {
            seq: e.seq,
            at: e.at,
            line: e.line,
        })
        .collect();
    Ok((job_view(&j, hosts), lines))
}

async fn jobs(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
) -> Result<Json<Vec<api::Job>>, Response> {
    Ok(Json(
        visible_jobs(&st, &g, 100)
            .await?
            .iter()
            .map(|j| {
                // The list is a summary: a job's request and result (which a
                // hostile worker can make large) come with `GET /v1/jobs/{id}`.
                let mut v = job_view(j, Vec::new());
                v.request = String::new();
                v.result = None;
                v
            })
            .collect(),
    ))
}

async fn job(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(id): Path<String>,
) -> Result<Json<api::Job>, Response> {
    let (j, hosts) = visible_job(&st, &g, &id).await?;
    Ok(Json(job_view(&j, hosts)))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    wait_ms: u64,
}

async fn job_events(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<api::JobEvents>, Response> {
    visible_job(&st, &g, &id).await?;
    let until =
        tokio::time::Instant::now() + std::time::Duration::from_millis(q.wait_ms.min(20_000));
    loop {
        // The state first: lines written before it ended are all there.
        let state = st
            .db
            .job(&id)
            .await
            .map_err(unavailable)?
            .map(|j| j.state)
            .unwrap_or_default();
        let events = st
            .db
            .job_events(&id, q.after, 1000)
            .await
            .map_err(unavailable)?;
        if !events.is_empty() || state != "running" || tokio::time::Instant::now() >= until {
            return Ok(Json(api::JobEvents {
                state,
                events: events
                    .into_iter()
                    .map(|e| api::JobEvent {
                        seq: e.seq,
                        at: e.at,
                        line: e.line,
                    })
                    .collect(),
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn job_cancel(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(id): Path<String>,
) -> Result<Json<api::Job>, Response> {
    visible_job(&st, &g, &id).await?;
    if !st.db.request_job_cancel(&id).await.map_err(unavailable)? {
        return Err(json_error(
            StatusCode::CONFLICT,
            "conflict",
            format!("job {id} is not running"),
        ));
    }
    audit_change(&st, &g, "job.cancel", &id, String::new()).await;
    let (j, hosts) = visible_job(&st, &g, &id).await?;
    Ok(Json(job_view(&j, hosts)))
}

/// A fleet operation's error as the API answers it: a host not enrolled is
/// a 404, a bad request a 400, a worker that failed or did not answer a
/// 502 naming it, anything else the database being unavailable.
fn operation_error(e: anyhow::Error) -> Response {
    let e = match e.downcast::<crate::usage::UsageError>() {
        Ok(u) if u.0.contains("not enrolled") => return not_found(u.0),
        Ok(u) => return bad_request(u.0),
        Err(e) => e,
    };
    match e.downcast::<decnet_swarm_client::ClientError>() {
        Ok(c) => json_error(StatusCode::BAD_GATEWAY, "worker_failed", c.to_string()),
        Err(e) => unavailable(e),
    }
}

async fn ca(State(st): State<Arc<FleetApiState>>) -> Result<Json<api::CaInfo>, Response> {
    crate::cli::ca_info(&st.layout)
        .map(Json)
        .map_err(unavailable)
}

/// The idempotency key of a request, when it carries a usable one.
fn idempotency_key(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(api::IDEMPOTENCY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 128)
        .map(str::to_string)
}

/// The 409 of hosts another job holds.
fn busy(hosts: &[(String, String)]) -> Response {
    json_error(
        StatusCode::CONFLICT,
        "conflict",
        format!(
            "another job is changing {}: wait for it (decnet job follow ID) or cancel it",
            hosts
                .iter()
                .take(5)
                .map(|(h, j)| format!("{h} (job {j})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// What a change answered at once ([`leased_now`]) stores as its job's
/// result when it was refused: the status and message to answer again.
const REFUSED_KEY: &str = "refused";

/// Run a change of one host that answers at once (a teardown, a rollback)
/// as a job of the daemon: it holds the host's lease (409 while another
/// job changes it), it runs to its end even if the request goes away, and
/// a repeated request (same idempotency key) answers with the first one's
/// answer. `work` gives the answer and whether it succeeded, or an error.
async fn leased_now<F, Fut>(
    st: &FleetApiState,
    g: &Grant,
    headers: &axum::http::HeaderMap,
    kind: &str,
    request: String,
    host: String,
    work: F,
) -> Result<Response, Response>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(bool, serde_json::Value), Response>> + Send + 'static,
{
    use decnet_fleet::jobs::JobStart;
    let key = idempotency_key(headers);
    let job = match st
        .db
        .start_job(
            kind,
            &g.actor(),
            key.as_deref(),
            &request,
            std::slice::from_ref(&host),
        )
        .await
        .map_err(unavailable)?
    {
        JobStart::Busy(b) => return Err(busy(&b)),
        // A retry of a request whose answer was lost: the first one's
        // answer, once it has one (the same request, on hosts still seen).
        JobStart::Existing(mut j) => {
            same_request(st, g, &j, kind, &request).await?;
            while j.state == "running" {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                j = st
                    .db
                    .job(&j.id)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| unavailable("the job disappeared"))?;
            }
            return match j.result.as_deref() {
                Some(r) => Ok(replay(r)),
                None => Err(unavailable(format!(
                    "job {} ended {} without an answer",
                    j.id, j.state
                ))),
            };
        }
        JobStart::Created(j) => j,
    };
    let (host2, kind2) = (host.clone(), kind.to_string());
    let done = crate::jobs::spawn_job(
        st.db.clone(),
        job.id.clone(),
        move |_emit, _cancel| async move {
            let (state, result, detail) = match work().await {
                Ok((ok, body)) => (
                    if ok { "done" } else { "failed" },
                    body.to_string(),
                    String::new(),
                ),
                Err(refused) => {
                    let status = refused.status().as_u16();
                    let body = axum::body::to_bytes(refused.into_body(), 64 << 10)
                        .await
                        .unwrap_or_default();
                    let err: api::ErrorBody =
                        serde_json::from_slice(&body).unwrap_or(api::ErrorBody {
                            error: "failed".into(),
                            detail: format!("{kind2} failed"),
                            required_role: None,
                        });
                    let detail = err.detail.clone();
                    (
                        "failed",
                        serde_json::json!({ REFUSED_KEY: { "status": status, "error": err } })
                            .to_string(),
                        detail,
                    )
                }
            };
            crate::jobs::JobOutcome {
                state,
                hosts: vec![decnet_fleet::jobs::JobHost {
                    host: host2,
                    state: if state == "done" { "ok" } else { "failed" }.into(),
                    detail,
                }],
                result,
            }
        },
    );
    match done.await {
        Ok(outcome) => Ok(replay(&outcome.result)),
        Err(_) => Err(unavailable("the job ended without an outcome")),
    }
}

/// A repeated idempotency key must repeat its request: the same kind and
/// body, on hosts the operator still sees (a narrowed scope does not get a
/// stored answer about a host it lost).
async fn same_request(
    st: &FleetApiState,
    g: &Grant,
    j: &decnet_fleet::jobs::JobRecord,
    kind: &str,
    request: &str,
) -> Result<(), Response> {
    let conflict = || {
        json_error(
            StatusCode::CONFLICT,
            "conflict",
            "this idempotency key was used for another request",
        )
    };
    if j.kind != kind || j.request != request {
        return Err(conflict());
    }
    let hosts = st.db.job_hosts(&j.id).await.map_err(unavailable)?;
    if !hosts.iter().all(|h| g.sees(&h.host)) {
        return Err(conflict());
    }
    Ok(())
}

/// The answer a change that answers at once gave (stored as its job's
/// result), given again.
fn replay(result: &str) -> Response {
    let v: serde_json::Value = serde_json::from_str(result).unwrap_or(serde_json::Value::Null);
    if let Some(r) = v.get(REFUSED_KEY) {
        let status = r["status"]
            .as_u64()
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        return (status, Json(r["error"].clone())).into_response();
    }
    Json(v).into_response()
}

async fn teardown(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let host = in_scope(&g, &name).map_err(not_found)?;
    let req: api::TeardownRequest = if body.is_empty() {
        api::TeardownRequest::default()
    } else {
        decode(&body).map_err(bad_request)?
    };
    let request = serde_json::to_string(&req).map_err(unavailable)?;
    let (db, pool, actor, h) = (st.db.clone(), st.pool.current(), g.actor(), host.clone());
    leased_now(
        &st,
        &g,
        &headers,
        "teardown",
        request,
        host,
        move || async move {
            let names = crate::fleet_ops::teardown(&db, &pool, &actor, &h, req.decky.as_deref())
                .await
                .map_err(operation_error)?;
            Ok((
                true,
                serde_json::to_value(api::TornDown {
                    host: h,
                    deckies: names,
                })
                .unwrap_or_default(),
            ))
        },
    )
    .await
}

async fn rollback(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Response> {
    let host = in_scope(&g, &name).map_err(not_found)?;
    let (db, pool, actor, h) = (st.db.clone(), st.pool.current(), g.actor(), host.clone());
    leased_now(
        &st,
        &g,
        &headers,
        "rollback",
        "{}".into(),
        host,
        move || async move {
            let r = crate::rollout::rollback(&db, &pool, &actor, &h)
                .await
                .map_err(operation_error)?;
            Ok((
                r.outcome == decnet_api::UpdateOutcome::RolledBack,
                serde_json::to_value(&r).unwrap_or_default(),
            ))
        },
    )
    .await
}

async fn burn(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Json<api::Burned>, Response> {
    // Never held up by a job's lease: a compromised host is burned now.
    let host = in_scope(&g, &name).map_err(not_found)?;
    crate::ops::burn(&st.db, &st.layout, &st.pool.current(), &host, &g.actor())
        .await
        .map(Json)
        .map_err(op_error)
}

async fn set_endpoint(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::Host>, Response> {
    let host = in_scope(&g, &name).map_err(not_found)?;
    let req: api::SetEndpoint = decode(&body).map_err(bad_request)?;
    crate::ops::set_endpoint(&st.db, &host, &req, &g.actor())
        .await
        .map_err(op_error)?;
    self::host(State(st), Extension(g), Path(host)).await
}

async fn deploy_plan(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    body: axum::body::Bytes,
) -> Result<Json<Vec<api::HostPlan>>, Response> {
    let req: api::DeployPlanRequest = decode(&body).map_err(bad_request)?;
    let config: serde_json::Value = serde_json::from_str(&req.config_json)
        .map_err(|e| bad_request(format!("the deployment config is not valid JSON: {e}")))?;
    let targets = scoped_targets(&st, &g, &req.hosts).await?;
    Ok(Json(
        crate::fleet_ops::deploy_plan_of(&st.pool.current(), &config, targets).await,
    ))
}

/// The hosts an operation on `names` (every live host when empty) covers,
/// as the grant allows: a named host outside the scope is not enrolled.
async fn scoped_targets(
    st: &FleetApiState,
    g: &Grant,
    names: &[String],
) -> Result<Vec<HostRecord>, Response> {
    for h in names {
        in_scope(g, h).map_err(not_found)?;
    }
    let names: Vec<String> = names.iter().map(|h| h.to_ascii_lowercase()).collect();
    Ok(crate::fleet_ops::select_hosts(&st.db, &names)
        .await
        .map_err(absent_or_unavailable)?
        .into_iter()
        .filter(|h| g.sees(&h.name))
        .collect())
}

async fn evidence_list(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Json<decnet_swarm_client::agent::EvidenceList>, Response> {
    let host = in_scope(&g, &name).map_err(not_found)?;
    crate::fleet_ops::evidence_list(&st.db, &st.pool.current(), &host)
        .await
        .map(Json)
        .map_err(operation_error)
}

async fn evidence_fetch(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path((name, decky, id)): Path<(String, String, String)>,
) -> Result<Response, Response> {
    let host = in_scope(&g, &name).map_err(not_found)?;
    // Fetched whole first, then sent with its length: a download cut short
    // is never mistaken for an archive. What a (possibly compromised) agent
    // can make the master hold is bounded: at most MAX_SPOOLED_EVIDENCE per
    // archive, SPOOLS_AT_ONCE archives at a time (one per operator), never
    // past the free-space watermark of the disk it shares with the fleet
    // database, deleted once sent.
    let mine = crate::authz::allowances().evidence_spools.take_or_busy(
        &g.operator,
        "an evidence archive being fetched through the master",
    )?;
    static SPOOLS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    let spools = SPOOLS.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(SPOOLS_AT_ONCE)));
    // Held until the answer's body is sent (or dropped): the spool file
    // lives that long.
    let spooling = spools.clone().try_acquire_owned().map_err(|_| {
        json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            format!(
                "{SPOOLS_AT_ONCE} evidence archives are being fetched through the master; try again when one is done"
            ),
        )
    })?;
    let (free, total) = decnet_log_relay::disk::free_space(&st.home.home).map_err(unavailable)?;
    let room = spool_room(free, total).min(MAX_SPOOLED_EVIDENCE);
    if room == 0 {
        return Err(json_error(
            StatusCode::INSUFFICIENT_STORAGE,
            "no_space",
            "the master's disk is too full to spool an evidence archive (it keeps room for its database and logs); fetch it on the worker, or free space",
        ));
    }
    let spool = tempfile::tempfile_in(&st.home.home).map_err(unavailable)?;
    // The room was measured once; other writers (uploads, the logs, the
    // database) go on meanwhile, so the writes look again as they go.
    let mut guarded = crate::free_space::KeepFreeSpace::new(
        tokio::fs::File::from_std(spool),
        crate::free_space::disk_of(&st.home.home),
    );
    let bytes = crate::fleet_ops::evidence_fetch(
        &st.db,
        &st.pool.current(),
        &g.actor(),
        &host,
        &decky,
        &id,
        &mut guarded,
        room,
    )
    .await
    .map_err(|e| {
        // The disk, not the worker, stopped it: say so.
        match decnet_log_relay::disk::free_space(&st.home.home) {
            Ok((free, total)) if crate::free_space::under_watermark(free, total) => json_error(
                StatusCode::INSUFFICIENT_STORAGE,
                "no_space",
                "the master's disk reached the free space it keeps for its database and logs while spooling the archive; fetch it on the worker, or free space",
            ),
            _ => operation_error(e),
        }
    })?;
    let mut file = guarded.into_inner();
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    file.flush().await.map_err(unavailable)?;
    file.seek(std::io::SeekFrom::Start(0))
        .await
        .map_err(unavailable)?;
    let body = spooled_body(file, (spooling, mine), SPOOL_SEND_STALL);
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/gzip".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, bytes.to_string()),
        ],
        body,
    )
        .into_response())
}

/// The answer's body of a spooled archive: `file` read by a task of its
/// own that holds `held` (the spool slot) and hands the chunks on. A
/// reader that takes none for `stall` (it stopped reading: the socket's
/// buffers are full) ends the answer short, and the slot is free again at
/// once: [`SPOOLS_AT_ONCE`] operators who stop reading cannot hold every
/// other operator's evidence for as long as they keep their connections.
fn spooled_body(
    file: tokio::fs::File,
    held: impl Send + 'static,
    stall: std::time::Duration,
) -> axum::body::Body {
    use futures_util::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(4);
    tokio::spawn(async move {
        let _held = held;
        let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
        while let Some(chunk) = chunks.next().await {
            match tokio::time::timeout(stall, tx.send(chunk)).await {
                Ok(Ok(())) => {}
                // The reader went away.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(
                        stall_s = stall.as_secs(),
                        "an evidence download stopped reading; its answer is cut and its spool slot freed"
                    );
                    return;
                }
            }
        }
    });
    axum::body::Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }))
}

/// How long an evidence download may take no bytes before its answer is
/// cut (see [`spooled_body`]).
pub const SPOOL_SEND_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// The largest evidence archive the master fetches for an operator (an
/// agent keeps 2 GiB of archives by default, all deckies together).
pub const MAX_SPOOLED_EVIDENCE: u64 = 4 << 30;

/// How many evidence archives the master spools at once.
pub const SPOOLS_AT_ONCE: usize = 2;

/// The most one evidence spool may write on a filesystem with `free` of
/// `total` bytes free: its share of what is above the log listener's
/// free-space watermark (5 %, at most 1 GiB), so the spools together never
/// take the room the fleet database and the logs keep (an agent, perhaps
/// compromised, chooses how large an archive is). 0: none. Pure.
pub fn spool_room(free: u64, total: u64) -> u64 {
    let mark = decnet_log_relay::disk::watermark(&Default::default(), total);
    free.saturating_sub(mark) / SPOOLS_AT_ONCE as u64
}

/// The largest release tarball the master accepts.
pub const MAX_RELEASE_UPLOAD: u64 = 1 << 30;

/// How many uploaded releases the master holds at once, and their total
/// size: a deployer cannot fill the master's disk with uploads (the oldest
/// no running job pushes make room for a new one).
pub const MAX_UPLOADS: usize = 8;
/// See [`MAX_UPLOADS`].
pub const MAX_UPLOADS_BYTES: u64 = 4 << 30;

/// How long an uploaded release is kept for update jobs.
pub const UPLOAD_KEEP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Where uploaded releases wait for their update jobs.
fn uploads_dir(home: &crate::home::MasterHome) -> std::path::PathBuf {
    home.home.join("uploads")
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

async fn release_upload(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(sha256): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Response> {
    if !is_sha256_hex(&sha256) {
        return Err(bad_request(
            "the release is named by its SHA-256 (64 lowercase hex digits)",
        ));
    }
    let dir = uploads_dir(&st.home);
    let path = dir.join(format!("{sha256}.tar.gz"));
    // One upload of an operator's at a time, written, waiting or drained:
    // a deployer cannot queue uploads behind its own to hold the slot in
    // turns, nor keep many connections draining bodies at once.
    let _mine = crate::authz::allowances()
        .release_uploads
        .take_or_busy(&g.operator, "a release upload")?;
    if let Ok(m) = std::fs::metadata(&path) {
        // Wanted again: kept as if uploaded now.
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        // Already here: the body the client sends anyway is read and
        // dropped. Answering before it is read makes the server close the
        // connection under the client, which then fails with a broken pipe
        // while still sending. It is read as an upload is (at most
        // MAX_RELEASE_UPLOAD, at MIN_TRANSFER_RATE or cut), so a body
        // trickled in cannot hold the connection and the allowance for
        // hours.
        receive_upload(body.into_data_stream(), &mut tokio::io::sink()).await?;
        return Ok(Json(api::ReleaseUploaded {
            sha256,
            bytes: m.len(),
        })
        .into_response());
    }
    // UPLOADS_AT_ONCE uploads written at once, one per operator: a
    // deployer holding a slow upload (it keeps MIN_TRANSFER_RATE or is cut,
    // for at most the request timeout) leaves the other slot to everyone
    // else. The wait for a slot is bounded; a wait longer still is a 429.
    static UPLOADING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(UPLOADS_AT_ONCE);
    let _uploading = tokio::time::timeout(UPLOAD_WAIT, UPLOADING.acquire())
        .await
        .map_err(|_| {
            json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                "other releases are being uploaded to the master: try again when one is done",
            )
        })?
        .map_err(unavailable)?;
    // What this upload may write: its declared length (hyper ends the body
    // there), else the most a release may be. The bounds on what the
    // master holds count it, and the other upload's, before a byte is
    // written; room is made for both one at a time.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(MAX_RELEASE_UPLOAD, |n| n.min(MAX_RELEASE_UPLOAD));
    let _reserved = reserve_room(&st.db, &dir, declared).await?;
    std::fs::create_dir_all(&dir).map_err(unavailable)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    let part = tempfile::NamedTempFile::new_in(&dir).map_err(unavailable)?;
    let mut guarded = crate::free_space::KeepFreeSpace::new(
        tokio::fs::File::from_std(part.reopen().map_err(unavailable)?),
        crate::free_space::disk_of(&dir),
    );
    let bytes = receive_upload(body.into_data_stream(), &mut guarded).await?;
    let mut file = guarded.into_inner();
    use tokio::io::AsyncWriteExt;
    file.flush().await.map_err(unavailable)?;
    file.sync_all().await.map_err(unavailable)?;
    drop(file);
    // Up to 1 GiB read again: off the runtime's workers.
    let written = part.path().to_path_buf();
    let digest = tokio::task::spawn_blocking(move || decnet_pki::signing::sha256_file(&written))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    let got = decnet_pki::signing::digest_hex(&digest);
    if got != sha256 {
        return Err(bad_request(format!(
            "the upload's SHA-256 is {got}, not {sha256}: nothing kept"
        )));
    }
    part.persist(&path).map_err(|e| unavailable(e.error))?;
    tracing::info!(actor = %g.actor(), sha256, bytes, "release uploaded");
    Ok((
        StatusCode::CREATED,
        Json(api::ReleaseUploaded { sha256, bytes }),
    )
        .into_response())
}

/// Held while room is made for an upload (releases removed) and while an
/// update job claims its release (its file checked and its job's row
/// written): an upload making room cannot remove a release between an
/// update's check and its job, and once the job runs `make_room` keeps
/// its release.
static UPLOADS_ROOM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Room for an upload that may write `declared` bytes, made (one upload
/// at a time, see [`make_room`]) and reserved until the guard is dropped.
async fn reserve_room(
    db: &FleetDb,
    dir: &std::path::Path,
    declared: u64,
) -> Result<UploadReservation, Response> {
    let _room = UPLOADS_ROOM.lock().await;
    make_room(db, dir, UploadReservation::others(), declared).await?;
    Ok(UploadReservation::take(declared))
}

/// The answer when the release `sha256` has not been uploaded.
fn no_such_release(sha256: &str) -> Response {
    not_found(format!(
        "no uploaded release {sha256} (PUT /v1/releases/{sha256} first)"
    ))
}

/// Start the update job of the release at `tarball` with `start` (which
/// writes the job's row), unless the release is gone (404): both under
/// [`UPLOADS_ROOM`].
async fn claim_release(
    tarball: &std::path::Path,
    sha256: &str,
    start: impl std::future::Future<
        Output = Result<decnet_fleet::jobs::JobStart, decnet_fleet::DbError>,
    >,
) -> Result<decnet_fleet::jobs::JobStart, Response> {
    let _room = UPLOADS_ROOM.lock().await;
    if !tarball.is_file() {
        return Err(no_such_release(sha256));
    }
    start.await.map_err(unavailable)
}

/// How long an upload waits for the one being written before it is
/// refused with 429.
pub const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Write an upload's `body` to `out`, at most [`MAX_RELEASE_UPLOAD`]
/// bytes, cutting it (408) once it comes in too slowly (checked every
/// second, whether or not a chunk came). Returns its length.
async fn receive_upload(
    body: impl futures_util::Stream<Item = Result<axum::body::Bytes, axum::Error>>,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<u64, Response> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut body = std::pin::pin!(body);
    let mut pace = TransferPace::new(tokio::time::Instant::now());
    let mut bytes = 0u64;
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(1), body.next()).await;
        let chunk = match next {
            Err(_) => None,
            Ok(None) => return Ok(bytes),
            Ok(Some(chunk)) => {
                Some(chunk.map_err(|e| bad_request(format!("the upload broke off: {e}")))?)
            }
        };
        if let Some(c) = &chunk {
            pace.add(c.len() as u64);
        }
        if pace.too_slow(tokio::time::Instant::now()) {
            tracing::warn!(bytes, "a release upload came in too slowly; cut");
            return Err(json_error(
                StatusCode::REQUEST_TIMEOUT,
                "too_slow",
                format!(
                    "the upload came in slower than {} KiB/s: nothing kept",
                    MIN_TRANSFER_RATE >> 10
                ),
            ));
        }
        let Some(chunk) = chunk else {
            continue;
        };
        bytes += chunk.len() as u64;
        if bytes > MAX_RELEASE_UPLOAD {
            return Err(json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a release is at most {} MiB", MAX_RELEASE_UPLOAD >> 20),
            ));
        }
        let writing = tokio::time::Instant::now();
        out.write_all(&chunk).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::StorageFull {
                json_error(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "no_space",
                    format!("{e}: nothing kept"),
                )
            } else {
                tracing::error!(error = %e, "cannot write a release upload");
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the master cannot write the upload",
                )
            }
        })?;
        // The master's own disk time is not the client's.
        pace.exclude(writing.elapsed());
    }
}

/// How many release uploads the master writes at once (one per operator).
pub const UPLOADS_AT_ONCE: usize = 2;

/// An upload being written, counted against [`MAX_UPLOADS`] and
/// [`MAX_UPLOADS_BYTES`] (by what it may write) until it ends, kept or not.
struct UploadReservation(u64);

/// The uploads being written: how many, and what they may write.
static RESERVED: std::sync::Mutex<(usize, u64)> = std::sync::Mutex::new((0, 0));

impl UploadReservation {
    /// The uploads being written now (count, bytes they may write).
    fn others() -> (usize, u64) {
        *RESERVED.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count an upload that may write `bytes`.
    fn take(bytes: u64) -> UploadReservation {
        let mut r = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
        r.0 += 1;
        r.1 += bytes;
        UploadReservation(bytes)
    }
}

impl Drop for UploadReservation {
    fn drop(&mut self) {
        let mut r = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
        r.0 -= 1;
        r.1 -= self.0;
    }
}

/// Room for one more upload of at most `own` bytes under [`MAX_UPLOADS`]
/// and [`MAX_UPLOADS_BYTES`], beside the `others` being written (count,
/// bytes they may write). Only releases (`<sha256>.tar.gz`) are held and
/// counted: releases past [`UPLOAD_KEEP`] go first, then the oldest; a
/// release a running update job pushes is never removed (when every one
/// held is, a 507); the other slot's upload in progress is never touched.
async fn make_room(
    db: &FleetDb,
    dir: &std::path::Path,
    others: (usize, u64),
    own: u64,
) -> Result<(), Response> {
    // Every running update's release, however many other jobs ran since
    // (its rollout reads the tarball again for each host).
    let in_use: std::collections::HashSet<String> = db
        .running_jobs("update")
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter_map(|j| {
            serde_json::from_str::<serde_json::Value>(&j.request)
                .ok()
                .and_then(|r| r["sha256"].as_str().map(str::to_string))
        })
        .collect();
    let mut held = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(m) = e.metadata().ok().filter(|m| m.is_file()) else {
            continue;
        };
        let Ok(modified) = m.modified() else {
            continue;
        };
        let old = modified.elapsed().is_ok_and(|age| age > UPLOAD_KEEP);
        let name = e.file_name();
        let sha = name
            .to_str()
            .and_then(|n| n.strip_suffix(".tar.gz"))
            .filter(|s| is_sha256_hex(s));
        match sha {
            // A release past its keep, that no running update pushes.
            Some(sha) if old && !in_use.contains(sha) => {
                let _ = std::fs::remove_file(e.path());
            }
            Some(sha) => held.push((modified, m.len(), sha.to_string(), e.path())),
            // An upload being written (the other slot's, counted by its
            // reservation, never removed here), or one a crash left
            // behind a day ago.
            None if old => {
                let _ = std::fs::remove_file(e.path());
            }
            None => {}
        }
    }
    held.sort();
    let mut count = held.len();
    let mut bytes: u64 = held.iter().map(|h| h.1).sum();
    let mut oldest = held.into_iter();
    while count + others.0 >= MAX_UPLOADS || bytes + others.1 + own > MAX_UPLOADS_BYTES {
        let Some((_, len, _, path)) = oldest.by_ref().find(|(_, _, sha, _)| !in_use.contains(sha))
        else {
            return Err(json_error(
                StatusCode::INSUFFICIENT_STORAGE,
                "uploads_full",
                format!(
                    "no room for this upload: the master holds {count} uploaded releases ({} MiB), each pushed by a running update job, beside {} being written: try again when one ends",
                    bytes >> 20,
                    others.0
                ),
            ));
        };
        if std::fs::remove_file(&path).is_ok() {
            tracing::info!(path = %path.display(), "oldest uploaded release removed to make room");
        }
        count -= 1;
        bytes -= len;
    }
    Ok(())
}

async fn update(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let req: api::UpdateRequest = decode(&body).map_err(bad_request)?;
    if !is_sha256_hex(&req.sha256) {
        return Err(bad_request("sha256: 64 lowercase hex digits"));
    }
    let tarball = uploads_dir(&st.home).join(format!("{}.tar.gz", req.sha256));
    // Checked again as the job is started (`claim_release`); here, so a
    // missing release is named before anything else.
    if !tarball.is_file() {
        return Err(no_such_release(&req.sha256));
    }
    let manifests: Vec<decnet_pki::signing::SignedManifest> =
        serde_json::from_str(&req.manifests_json)
            .map_err(|e| bad_request(format!("manifests_json: {e}")))?;
    if manifests.is_empty()
        || !manifests
            .iter()
            .all(|m| m.parse().is_ok_and(|p| p.sha256 == req.sha256))
    {
        return Err(bad_request(
            "every manifest must name the uploaded release's SHA-256",
        ));
    }
    if req.all != req.hosts.is_empty() {
        return Err(bad_request("name hosts, or ask for all of them (not both)"));
    }
    let targets = scoped_targets(&st, &g, &req.hosts).await?;
    if targets.is_empty() {
        return Err(bad_request("no hosts to update"));
    }
    let plan = crate::rollout::RolloutPlan {
        hosts: targets.iter().map(|h| h.name.clone()).collect(),
        allow_downgrade: req.allow_downgrade,
        max_parallel: req.max_parallel.clamp(1, 1024),
        canary: req.canary,
        include_self: req.include_self,
        continue_on_error: req.continue_on_error,
    };
    let rel = crate::release::PackedRelease {
        tarball: tarball.clone(),
        sha256: req.sha256.clone(),
        manifests,
        label: req.label.clone(),
        version: req.version.clone(),
        files: Vec::new(),
    };
    // The signed manifests are kept with the job: the console pushes a
    // recent rollout's release again from them (the signing key stays on
    // the operator's machine).
    let request = serde_json::to_string(&serde_json::json!({
        "sha256": req.sha256, "label": req.label, "version": req.version, "plan": plan,
        "manifests_json": req.manifests_json,
    }))
    .map_err(unavailable)?;
    use decnet_fleet::jobs::JobStart;
    let key = idempotency_key(&headers);
    let actor = g.actor();
    let start = st
        .db
        .start_job("update", &actor, key.as_deref(), &request, &plan.hosts);
    match claim_release(&tarball, &req.sha256, start).await? {
        JobStart::Existing(j) => {
            same_request(&st, &g, &j, "update", &request).await?;
            Ok((StatusCode::OK, Json(job_view(&j, Vec::new()))).into_response())
        }
        JobStart::Busy(b) => Err(busy(&b)),
        JobStart::Created(j) => {
            tracing::info!(job = %j.id, actor = %g.actor(), hosts = plan.hosts.len(), "update job started");
            let view = job_view(&j, Vec::new());
            crate::jobs::spawn_rollout(st.db.clone(), st.pool.current(), j, rel, plan, targets);
            Ok((StatusCode::ACCEPTED, Json(view)).into_response())
        }
    }
}

async fn renew_self(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    decnet_server::VerifiedPeer(peer): decnet_server::VerifiedPeer,
    body: axum::body::Bytes,
) -> Result<Json<api::RenewedOperator>, Response> {
    use decnet_fleet::operators::RenewRefusal;
    let req: api::RenewOperator = decode(&body).map_err(bad_request)?;
    let ca = st.ca.signing();
    let r = decnet_fleet::operators::renew_operator(
        &st.db,
        &ca,
        &g.operator,
        &peer.fingerprint.to_hex(),
        &req.csr_pem,
    )
    .await
    .map_err(|e| match e {
        RenewRefusal::BadCsr => bad_request(e.to_string()),
        RenewRefusal::TooOften => {
            json_error(StatusCode::TOO_MANY_REQUESTS, "too_often", e.to_string())
        }
        RenewRefusal::NotStanding => json_error(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
        RenewRefusal::Db(e) => unavailable(e),
    })?;
    Ok(Json(api::RenewedOperator {
        cert_pem: r.cert_pem,
        fingerprint: r.fingerprint,
        not_after: r.not_after,
        ca_pem: ca.trust_pem().to_string(),
        endorsements_pem: ca.endorsements_pem().to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host's view carries its current certificates' expiry, shown in
    /// the fleet table as time left; a revoked host's do not count.
    #[test]
    fn a_hosts_view_carries_its_certificates_expiry() {
        let mut h = HostRecord::new("w1", "10.0.0.1", 8765, 8766);
        h.agent_fingerprint = Some("aa".into());
        h.updater_fingerprint = Some("bb".into());
        let e: BTreeMap<String, i64> =
            [("aa".into(), 1000 + 86400 * 3), ("bb".into(), 1000 + 3600)]
                .into_iter()
                .collect();
        assert_eq!(
            cert_expiry(&h, &e),
            (Some(1000 + 86400 * 3), Some(1000 + 3600))
        );
        let t = crate::table::fleet_table(&[host_view(&h, &e)], 1000);
        assert!(t.contains("CERTS EXPIRE") && t.contains("in 1h"), "{t}");
        h.status = decnet_fleet::HostStatus::Burned;
        assert_eq!(cert_expiry(&h, &e), (None, None));
    }
    use decnet_swarm_client::pace::PACE_WINDOW;

    async fn archive(len: usize) -> (tokio::fs::File, Vec<u8>) {
        use std::io::{Seek, Write};
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        (tokio::fs::File::from_std(f), data)
    }

    /// A deployer's certificate trickling an upload (a byte a second), or
    /// sending a burst and then nothing, holds the one upload slot for a
    /// window or two, not for as long as it likes; a steady upload at twice
    /// the minimum rate is kept whole. On tokio's paused clock: the seconds
    /// are virtual.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_upload_is_cut_and_a_steady_one_kept() {
        use axum::body::Bytes;
        let trickle = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            Some((Ok::<_, axum::Error>(Bytes::from_static(b"x")), ()))
        });
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        let cut = receive_upload(trickle, &mut out).await.unwrap_err();
        assert_eq!(cut.status(), StatusCode::REQUEST_TIMEOUT);
        let held = started.elapsed();
        let second = std::time::Duration::from_secs(1);
        assert!(
            held >= PACE_WINDOW && held <= PACE_WINDOW + 2 * second,
            "{held:?}"
        );
        // A client that stops sending altogether is cut alike.
        let silent = futures_util::stream::pending::<Result<Bytes, axum::Error>>();
        let started = tokio::time::Instant::now();
        let cut = receive_upload(silent, &mut Vec::new()).await.unwrap_err();
        assert_eq!(cut.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() <= PACE_WINDOW + 2 * second);
        // A burst worth four minutes at the minimum rate, then silence: cut
        // at the end of the first silent window, not four minutes later.
        use futures_util::StreamExt;
        let burst = futures_util::stream::once(async {
            Ok::<_, axum::Error>(Bytes::from(vec![1u8; 240 * MIN_TRANSFER_RATE as usize]))
        })
        .chain(futures_util::stream::pending());
        let started = tokio::time::Instant::now();
        let cut = receive_upload(burst, &mut Vec::new()).await.unwrap_err();
        assert_eq!(cut.status(), StatusCode::REQUEST_TIMEOUT);
        let held = started.elapsed();
        assert!(
            held >= 2 * PACE_WINDOW && held <= 2 * PACE_WINDOW + 2 * second,
            "{held:?}"
        );
        let steady = futures_util::stream::unfold(0u32, |n| async move {
            if n == 90 {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let chunk = Bytes::from(vec![7u8; 2 * MIN_TRANSFER_RATE as usize]);
            Some((Ok::<_, axum::Error>(chunk), n + 1))
        });
        let mut out = Vec::new();
        let bytes = receive_upload(steady, &mut out).await.unwrap();
        assert_eq!(bytes, 90 * 2 * MIN_TRANSFER_RATE);
        assert_eq!(out.len() as u64, bytes);
        // On a disk down to its watermark, an upload is refused (507) and
        // nothing is written.
        let full: crate::free_space::FreeSpaceProbe = Box::new(|| Ok((0, 100 << 30)));
        let mut out = crate::free_space::KeepFreeSpace::new(Vec::new(), full);
        let one = futures_util::stream::once(async {
            Ok::<_, axum::Error>(Bytes::from_static(b"release"))
        });
        let refused = receive_upload(one, &mut out).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert!(out.into_inner().is_empty());
    }

    /// Room for an upload counts the one being written beside it: its
    /// slot in the number held and what it may write in the bytes held, so
    /// two uploads at once cannot take the master past either bound.
    #[tokio::test]
    async fn room_for_an_upload_counts_the_one_written_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        let db = FleetDb::connect(&url).await.unwrap();
        let uploads = dir.path().join("uploads");
        std::fs::create_dir(&uploads).unwrap();
        let held = |n: usize| {
            for i in 0..n {
                let p = uploads.join(format!("{i:064x}.tar.gz"));
                std::fs::write(&p, vec![0u8; 1024]).unwrap();
            }
        };
        let count = || std::fs::read_dir(&uploads).unwrap().count();
        // Seven held and one being written: one goes for the new one.
        held(7);
        make_room(&db, &uploads, (1, 1024), 1024).await.unwrap();
        assert_eq!(count(), MAX_UPLOADS - 2);
        // Alone, six held leave room.
        make_room(&db, &uploads, (0, 0), 1024).await.unwrap();
        assert_eq!(count(), MAX_UPLOADS - 2);
        // The bytes the other may still write count: beside 3 GiB less
        // 2 KiB in flight, a 1 GiB upload leaves 2 KiB of what is held.
        let other = MAX_UPLOADS_BYTES - MAX_RELEASE_UPLOAD - 2048;
        make_room(&db, &uploads, (1, other), MAX_RELEASE_UPLOAD)
            .await
            .unwrap();
        assert_eq!(count(), 2);
        // What cannot fit even with nothing held is refused, not written.
        let refused = make_room(&db, &uploads, (1, MAX_UPLOADS_BYTES), 1)
            .await
            .unwrap_err();
        assert_eq!(refused.status(), StatusCode::INSUFFICIENT_STORAGE);

        // The other slot's upload in progress (a temp file of 900 MiB,
        // sparse here) is neither counted twice nor removed to make room:
        // another deployer's upload cannot break it off.
        for e in std::fs::read_dir(&uploads).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let part = uploads.join(".tmpAbC123");
        std::fs::File::create(&part)
            .unwrap()
            .set_len(900 << 20)
            .unwrap();
        held(2);
        make_room(&db, &uploads, (1, MAX_RELEASE_UPLOAD), MAX_RELEASE_UPLOAD)
            .await
            .unwrap();
        assert!(part.exists(), "the upload in progress is left alone");
        assert_eq!(count(), 3, "two releases and the upload in progress");

        // Past its keep, a release goes, unless a running update pushes it
        // (however many jobs ran since); a temp file a crash left a day ago
        // goes too.
        let day_old =
            std::time::SystemTime::now() - UPLOAD_KEEP - std::time::Duration::from_secs(60);
        let age = |p: &std::path::Path| {
            std::fs::File::options()
                .append(true)
                .open(p)
                .unwrap()
                .set_modified(day_old)
                .unwrap();
        };
        let pushed = format!("{:064x}", 0);
        let idle = format!("{:064x}", 1);
        age(&uploads.join(format!("{pushed}.tar.gz")));
        age(&uploads.join(format!("{idle}.tar.gz")));
        age(&part);
        let request = serde_json::json!({ "sha256": pushed }).to_string();
        db.start_job("update", "test", None, &request, &["w1".to_string()])
            .await
            .unwrap();
        make_room(&db, &uploads, (0, 0), 1024).await.unwrap();
        assert!(uploads.join(format!("{pushed}.tar.gz")).exists());
        assert!(!uploads.join(format!("{idle}.tar.gz")).exists());
        assert!(!part.exists());
        // A reservation counts while it lives.
        let before = UploadReservation::others();
        {
            let _r = UploadReservation::take(5);
            let now = UploadReservation::others();
            assert!(now.0 > before.0 && now.1 >= before.1 + 5);
        }
    }

    /// An update claims its release and writes its job's row in one step:
    /// an upload making room meanwhile, which would remove that release
    /// (the oldest held, and no job pushing it yet), waits, then sees the
    /// job running and keeps it. Without the claim's lock the room is made
    /// in the window, and the job pushes a release that is gone.
    #[tokio::test]
    async fn an_update_claims_its_release_before_room_is_made() {
        use decnet_fleet::jobs::JobStart;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        let db = FleetDb::connect(&url).await.unwrap();
        let uploads = dir.path().join("uploads");
        std::fs::create_dir(&uploads).unwrap();
        for i in 0..MAX_UPLOADS {
            std::fs::write(uploads.join(format!("{i:064x}.tar.gz")), vec![0u8; 1024]).unwrap();
        }
        let sha = format!("{:064x}", 0);
        let claimed = uploads.join(format!("{sha}.tar.gz"));
        std::fs::File::options()
            .append(true)
            .open(&claimed)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
            .unwrap();
        let request = serde_json::json!({ "sha256": sha }).to_string();
        let hosts = ["w1".to_string()];
        // The job's row is written a while after the release was found:
        // the window an upload making room would fall into.
        let slow_start = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            db.start_job("update", "test", None, &request, &hosts).await
        };
        let making_room = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            reserve_room(&db, &uploads, 1024).await
        };
        let (started, room) = tokio::join!(claim_release(&claimed, &sha, slow_start), making_room);
        assert!(matches!(started, Ok(JobStart::Created(_))));
        drop(room.expect("room made"));
        assert!(claimed.exists(), "the release its job pushes is kept");
        assert!(std::fs::read_dir(&uploads).unwrap().count() < MAX_UPLOADS);
        // A release already gone is a 404, and no job is started.
        std::fs::remove_file(&claimed).unwrap();
        let other_hosts = ["w2".to_string()];
        let again = db.start_job("update", "test", None, &request, &other_hosts);
        let gone = claim_release(&claimed, &sha, again).await.unwrap_err();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
        assert_eq!(db.running_jobs("update").await.unwrap().len(), 1);
    }

    /// A compromised agent answering with archives as large as it likes
    /// cannot fill the master's disk: the spools together stop at the
    /// watermark the log listener keeps free.
    #[test]
    fn evidence_spools_leave_the_disks_watermark_free() {
        const G: u64 = 1 << 30;
        // A 100 GiB disk keeps 1 GiB: 9 GiB free leaves 4 GiB per spool.
        assert_eq!(spool_room(9 * G, 100 * G), 4 * G);
        assert_eq!(spool_room(G, 100 * G), 0);
        assert_eq!(spool_room(G / 2, 100 * G), 0);
        // A 10 GiB disk keeps 5 % (512 MiB).
        assert_eq!(spool_room(G, 10 * G), G / 4);
        for (free, total) in [(3 * G, 10 * G), (G + 1, 100 * G), (7, 100), (0, 0)] {
            let mark = decnet_log_relay::disk::watermark(&Default::default(), total);
            assert!(
                spool_room(free, total) * SPOOLS_AT_ONCE as u64 + mark <= free.max(mark),
                "{free} of {total}"
            );
        }
    }

    /// The attacker fetches an archive and stops reading; the spool slot
    /// is free again after the stall, and what the stalled answer still
    /// yields is cut short (its length header then fails the download).
    #[tokio::test]
    async fn an_evidence_reader_that_stops_reading_frees_its_spool_slot() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let (file, data) = archive(4 << 20).await;
        let held = slots.clone().try_acquire_owned().unwrap();
        let body = spooled_body(file, held, std::time::Duration::from_millis(200));
        assert_eq!(slots.available_permits(), 0);
        let t = std::time::Instant::now();
        while slots.available_permits() == 0 {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "a reader that stopped reading kept its spool slot"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let got = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert!(got.len() < data.len(), "{} bytes", got.len());
        assert_eq!(&got[..], &data[..got.len()]);
    }

    /// A reader that keeps reading gets the whole archive, and the slot
    /// back once it is sent.
    #[tokio::test]
    async fn an_evidence_reader_gets_the_whole_archive() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let (file, data) = archive(3 << 20).await;
        let held = slots.clone().try_acquire_owned().unwrap();
        let body = spooled_body(file, held, std::time::Duration::from_secs(60));
        let got = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(&got[..], &data[..]);
        let t = std::time::Instant::now();
        while slots.available_permits() == 0 {
            assert!(t.elapsed() < std::time::Duration::from_secs(5));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
