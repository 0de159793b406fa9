//! The master's control API (port 8770, mTLS): agent heartbeats today.
//!
//! A heartbeat is accepted from role Agent only, and only when the peer's
//! certificate is one this master issued to that very host, not revoked
//! (403 otherwise) — for a host it knows (404 otherwise). It records
//! `last_seen`, the agent version and the per-decky state; a background task
//! marks hosts unreachable after a configurable silence.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use decnet_pki::{AccessPolicy, PeerIdentity, Refusal, Role};
use serde::Deserialize;

use crate::fleet_db::{FleetDb, HostStatus};

/// Who may call what.
#[derive(Clone, Copy, Debug)]
pub struct ControlPolicy;

impl AccessPolicy for ControlPolicy {
    fn check(&self, peer: &PeerIdentity, method: &Method, path: &str) -> Result<(), Refusal> {
        match (&peer.role, method, path) {
            (Role::Agent(_), &Method::POST, "/heartbeat") => Ok(()),
            (Role::Agent(_) | Role::Updater(_), &Method::POST, "/renew") => Ok(()),
            (_, &Method::GET, "/join/ca") | (_, &Method::POST, "/join") => Ok(()),
            (_, &Method::GET, "/health") => Ok(()),
            (_, _, "/heartbeat") => Err(Refusal {
                required: "agent".into(),
            }),
            _ => Err(Refusal {
                required: "master".into(),
            }),
        }
    }

    fn allows_anonymous(&self, method: &Method, path: &str) -> bool {
        // A joining worker has no certificate yet.
        matches!(
            (method, path),
            (&Method::GET, "/join/ca") | (&Method::POST, "/join")
        )
    }
}

/// State of the control API.
pub struct ControlState {
    /// The fleet database.
    pub db: FleetDb,
    /// The CA (signs join CSRs).
    pub ca: decnet_pki::CertificateAuthority,
    /// Join failure rate limiter.
    pub limiter: crate::join::FailureLimiter,
    /// Validity of renewed certificates.
    pub leaf_validity: Duration,
}

/// A heartbeat's body.
#[derive(Debug, Deserialize)]
pub struct Heartbeat {
    /// Agent version.
    pub version: String,
    /// Driver in use.
    #[serde(default)]
    pub driver: Option<String>,
    /// Per-decky states as the agent reports them.
    #[serde(default)]
    pub deckies: serde_json::Value,
}

fn error(status: StatusCode, kind: &str, detail: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"error": kind, "detail": detail.into()})),
    )
        .into_response()
}

/// The router.
pub fn router(state: Arc<ControlState>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok", "role": "master", "version": env!("CARGO_PKG_VERSION")})) }),
        )
        .route("/heartbeat", post(heartbeat))
        .route("/join/ca", get(join_ca))
        .route("/join", post(join))
        .route("/renew", post(renew))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(1 << 20))
        .with_state(state)
}

async fn join_ca(State(st): State<Arc<ControlState>>) -> Response {
    Json(serde_json::json!({ "ca_pem": st.ca.cert_pem() })).into_response()
}

async fn join(
    State(st): State<Arc<ControlState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<decnet_pki::TlsPeer>,
    body: axum::body::Bytes,
) -> Response {
    let ip = peer.remote.ip();
    if st.limiter.blocked(ip) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed joins from this address; wait a minute",
        );
    }
    let req: crate::join::JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            st.limiter.fail(ip);
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid join request: {e}"),
            );
        }
    };
    match crate::join::join(&st.db, &st.ca, &req, ip).await {
        Ok(answer) => Json(answer).into_response(),
        Err(crate::join::JoinRefusal(status, msg)) => {
            st.limiter.fail(ip);
            tracing::warn!(%ip, token = %req.token_id, reason = %msg, "join refused");
            let _ = st
                .db
                .audit(&crate::fleet_db::AuditEntry {
                    at: crate::fleet_db::unix_now(),
                    actor: format!("join:{ip}"),
                    action: "swarm.join".into(),
                    target: req.token_id.clone(),
                    outcome: "refused".into(),
                    detail: msg.clone(),
                })
                .await;
            error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                "join_refused",
                msg,
            )
        }
    }
}

/// Whether `peer` presents a current, non-revoked agent certificate of `host`.
pub async fn check_agent_certificate(db: &FleetDb, peer: &PeerIdentity) -> Result<(), Response> {
    check_certificate(db, peer, "agent").await
}

/// Whether `peer` presents a non-revoked certificate this master issued to
/// its host for `role` (`agent` or `updater`), the host not decommissioned.
pub async fn check_certificate(
    db: &FleetDb,
    peer: &PeerIdentity,
    role: &str,
) -> Result<(), Response> {
    let host_name = match &peer.role {
        Role::Agent(h) | Role::Updater(h) => h.to_string(),
        Role::Master => peer.cn.clone(),
    };
    let fp = peer.fingerprint.to_hex();
    let unavailable = |e: crate::fleet_db::DbError| {
        tracing::error!(error = %e, "fleet database unavailable");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "fleet database unavailable",
        )
    };
    let Some(host) = db.host(&host_name).await.map_err(unavailable)? else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "unknown_host",
            format!("host {host_name} is not enrolled"),
        ));
    };
    if host.status == HostStatus::Decommissioned {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("host {host_name} is decommissioned"),
        ));
    }
    if db.is_revoked(&fp).await.map_err(unavailable)? {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this certificate is revoked",
        ));
    }
    let recorded = if role == "updater" {
        &host.updater_fingerprint
    } else {
        &host.agent_fingerprint
    };
    let current = recorded.as_deref() == Some(fp.as_str());
    let issued_to_host = db
        .certificate(&fp)
        .await
        .map_err(unavailable)?
        .is_some_and(|c| c.host == host_name && c.role == role);
    if !current && !issued_to_host {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the certificate does not match {}'s recorded certificate",
                peer.cn
            ),
        ));
    }
    Ok(())
}

async fn heartbeat(
    State(st): State<Arc<ControlState>>,
    Extension(peer): Extension<PeerIdentity>,
    body: axum::body::Bytes,
) -> Response {
    let db = &st.db;
    if let Err(r) = check_agent_certificate(db, &peer).await {
        tracing::warn!(peer_cn = %peer.cn, peer_fingerprint = %peer.fingerprint, "heartbeat refused");
        return r;
    }
    let hb: Heartbeat = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("invalid heartbeat: {e}"),
            );
        }
    };
    let state = serde_json::to_string(&hb.deckies).ok();
    if let Err(e) = db
        .record_contact(&peer.cn, Ok((Some(&hb.version), state.as_deref())))
        .await
    {
        tracing::error!(error = %e, "cannot record a heartbeat");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "fleet database unavailable",
        );
    }
    tracing::debug!(host = %peer.cn, version = %hb.version, driver = ?hb.driver, "heartbeat");
    let renew = db.renewal_requested(&peer.cn).await.unwrap_or(false);
    Json(serde_json::json!({"ok": true, "renew": renew})).into_response()
}

/// `POST /renew` body.
#[derive(Debug, Deserialize)]
struct RenewRequest {
    csr: String,
}

async fn renew(
    State(st): State<Arc<ControlState>>,
    Extension(peer): Extension<PeerIdentity>,
    body: axum::body::Bytes,
) -> Response {
    let (role, host) = match &peer.role {
        Role::Agent(h) => ("agent", h.clone()),
        Role::Updater(h) => ("updater", h.clone()),
        Role::Master => {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the master does not renew here",
            );
        }
    };
    if let Err(r) = check_certificate(&st.db, &peer, role).await {
        tracing::warn!(peer_cn = %peer.cn, "renewal refused");
        return r;
    }
    let req: RenewRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("invalid renewal: {e}"),
            );
        }
    };
    let sans = match st.db.host(host.as_str()).await {
        Ok(Some(h)) => h.sans,
        _ => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "fleet database unavailable",
            );
        }
    };
    let role_value = peer.role.clone();
    let now = time::OffsetDateTime::now_utc();
    let validity = time::Duration::seconds(st.leaf_validity.as_secs() as i64);
    let spec = decnet_pki::LeafSpec::for_role(&role_value, &sans)
        .with_validity(now - decnet_pki::ca::CLOCK_SKEW, now + validity);
    let leaf = match st.ca.sign_csr(&spec, &req.csr) {
        Ok(l) => l,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the CSR is not a valid, self-signed PKCS#10 request",
            );
        }
    };
    let record = crate::fleet_db::CertRecord {
        fingerprint: leaf.fingerprint.to_hex(),
        host: host.to_string(),
        role: role.into(),
        serial: leaf.serial.clone(),
        not_after: leaf.not_after.unix_timestamp(),
    };
    if let Err(e) = st.db.record_renewal(host.as_str(), role, &record).await {
        tracing::error!(error = %e, "cannot record a renewal");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "fleet database unavailable",
        );
    }
    let _ = st
        .db
        .audit(&crate::fleet_db::AuditEntry {
            at: crate::fleet_db::unix_now(),
            actor: format!("api:{}", peer.cn),
            action: "swarm.renew".into(),
            target: host.to_string(),
            outcome: "ok".into(),
            detail: format!(
                "role={role} old={} new={}",
                peer.fingerprint, leaf.fingerprint
            ),
        })
        .await;
    tracing::info!(host = %host, role, fingerprint = %leaf.fingerprint, "certificate renewed");
    Json(serde_json::json!({
        "cert_pem": leaf.cert_pem,
        "ca_pem": st.ca.cert_pem(),
        "fingerprint": leaf.fingerprint.to_hex(),
    }))
    .into_response()
}

/// Mark hosts unreachable after `silence` without a heartbeat, every few seconds.
pub async fn mark_silent_hosts(db: FleetDb, silence: Duration) {
    let period = (silence / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
    loop {
        tokio::time::sleep(period).await;
        let cutoff = crate::fleet_db::unix_now() - silence.as_secs() as i64;
        match db.mark_silent(cutoff, silence.as_secs() as i64).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(hosts = n, "hosts went silent; marked unreachable"),
            Err(e) => tracing::warn!(error = %e, "cannot mark silent hosts"),
        }
    }
}
