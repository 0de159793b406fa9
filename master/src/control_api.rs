//! The master's control API (port 8770, mTLS): heartbeats, token joins,
//! certificate renewal and the revocation list.
//!
//! | route | who |
//! |---|---|
//! | `POST /heartbeat` | Agent |
//! | `POST /renew` | Agent, Updater |
//! | `GET /crl` | Agent, Updater |
//! | `GET /join/ca`, `POST /join` | anyone, certificate or not (rate-limited per source) |
//! | `GET /health` | any certificate |
//!
//! Every worker request is also checked against the fleet database — the
//! certificate must be the host's current one (or a pending renewal, which
//! becomes current by being presented, or a retiring one within its grace),
//! not revoked, the host not decommissioned — before any handler runs.
//! Worker routes are rate-limited per certificate and per connection before
//! the database is touched; refusals of one identity or source are audited
//! once per window ([`RefusalAudit`]); a new revocation list is announced
//! to the fleet at most once per [`CRL_ANNOUNCE_INTERVAL`].

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use decnet_fleet::join::{JoinRefusal, JoinRequest, valid_token_id};
use decnet_fleet::{AuditEntry, AuditOutcome, CrlPublisher, FleetDb, PeerRefusal, RenewPolicy};
use decnet_pki::{Fingerprint, PeerIdentity, Role};
use decnet_server::source::SourceKey;
use decnet_server::{AccessPolicy, Refusal, TlsPeer, VerifiedPeer, json_error};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use crate::clone_watch::SourceFlips;
use crate::refusal_audit::RefusalAudit;

/// Who may call what (role checks; the database checks run in [`standing`]).
#[derive(Clone, Copy, Debug)]
pub struct ControlPolicy;

impl AccessPolicy for ControlPolicy {
    fn check(&self, peer: &PeerIdentity, method: &Method, path: &str) -> Result<(), Refusal> {
        match (&peer.role, method, path) {
            (Role::Agent(_), &Method::POST, "/heartbeat") => Ok(()),
            (Role::Agent(_) | Role::Updater(_), &Method::POST, "/renew") => Ok(()),
            (Role::Agent(_) | Role::Updater(_), &Method::GET, "/crl" | "/trust") => Ok(()),
            (_, &Method::GET, "/join/ca") | (_, &Method::POST, "/join") => Ok(()),
            (_, &Method::GET, "/health") => Ok(()),
            (_, _, "/heartbeat") => Err(Refusal {
                required: "agent".into(),
            }),
            (_, _, "/renew" | "/crl" | "/trust") => Err(Refusal {
                required: "agent or updater".into(),
            }),
            // No other route exists here: operators use the fleet API's
            // listener, never this one.
            _ => Err(Refusal {
                required: "nothing: no such route on the control API".into(),
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

/// Join attempts per source (IPv4 address or IPv6 /64) per minute.
pub const JOINS_PER_MINUTE: u32 = 60;
/// Sources tracked at once by the join limiter; beyond this, sources are
/// forgotten when idle, and while still over, new sources are refused.
pub const MAX_TRACKED_SOURCES: usize = 50_000;

/// A keyed rate limiter with bounded memory (governor's GCRA per key).
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("tracked", &self.limiter.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `quota` per key, at most `max_keys` keys tracked.
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        KeyedLimiter {
            limiter: RateLimiter::keyed(quota),
            max_keys,
        }
    }

    /// Count an attempt of `key`; `false` when it is over its rate.
    pub fn allow_key(&self, key: &K) -> bool {
        if self.limiter.len() >= self.max_keys {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            if self.limiter.len() >= self.max_keys {
                // Full of keys that are all still active: refuse newcomers
                // rather than grow without bound.
                return false;
            }
        }
        self.limiter.check_key(key).is_ok()
    }

    /// How many keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }
}

/// The join limiter: per source (IPv4 address or IPv6 /64).
pub type SourceLimiter = KeyedLimiter<SourceKey>;

impl SourceLimiter {
    /// `per_minute` attempts per source, at most `max_keys` sources tracked.
    pub fn per_minute(per_minute: u32, max_keys: usize) -> Self {
        let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        KeyedLimiter::new(Quota::per_minute(n), max_keys)
    }

    /// Count an attempt from `ip`; `false` when it is over its rate.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_key(&SourceKey::of(ip))
    }
}

/// Worker requests per second, sustained, per certificate and per
/// connection (a heartbeat every 30 s, a CRL fetch or a renewal now and
/// then: anything near this is an attack on the database).
pub const WORKER_REQUESTS_PER_SECOND: u32 = 2;
/// Worker requests in a burst above that.
pub const WORKER_REQUEST_BURST: u32 = 20;

/// The rate limits of worker requests: per certificate (however many
/// connections it opens) and per connection.
#[derive(Debug)]
pub struct WorkerLimits {
    per_certificate: KeyedLimiter<Fingerprint>,
    per_connection: KeyedLimiter<SocketAddr>,
}

impl WorkerLimits {
    /// `per_second` sustained and `burst` requests, per certificate and per
    /// connection.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        WorkerLimits {
            per_certificate: KeyedLimiter::new(quota, MAX_TRACKED_SOURCES),
            per_connection: KeyedLimiter::new(quota, MAX_TRACKED_SOURCES),
        }
    }

    /// Whether a request of `peer` on the connection from `remote` may go on.
    pub fn allow(&self, peer: &PeerIdentity, remote: SocketAddr) -> bool {
        self.per_certificate.allow_key(&peer.fingerprint) && self.per_connection.allow_key(&remote)
    }
}

/// How often, at most, a new revocation list is announced to the fleet in
/// heartbeat answers (each announcement makes every agent fetch it): a
/// host that keeps changing the deny list cannot make the fleet re-fetch
/// more often than this. The master's own servers enforce a new list at
/// once.
pub const CRL_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10);

/// The CRL number heartbeats announce: the current one, but a change at
/// most once per interval (the first change after a quiet interval goes
/// out at once).
#[derive(Debug)]
pub struct CrlAnnouncer {
    interval: Duration,
    last: Mutex<Option<(u64, Instant)>>,
}

impl CrlAnnouncer {
    /// Announce at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        CrlAnnouncer {
            interval,
            last: Mutex::new(None),
        }
    }

    /// The number to announce now, given the `current` one.
    pub fn announce(&self, current: Option<u64>, now: Instant) -> Option<u64> {
        let current = current?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some((n, _)) if n == current => Some(n),
            Some((n, at)) if now.saturating_duration_since(at) < self.interval => Some(n),
            _ => {
                *last = Some((current, now));
                Some(current)
            }
        }
    }
}

/// State of the control API.
pub struct ControlState {
    /// The fleet database.
    pub db: FleetDb,
    /// The CAs in force (the signing one signs join and renewal CSRs; each
    /// trusted one signs a CRL).
    pub ca: Arc<crate::authorities::LiveAuthorities>,
    /// The CRL workers fetch.
    pub crl: Arc<CrlPublisher>,
    /// Join rate limiter.
    pub joins: SourceLimiter,
    /// Worker request rate limits.
    pub workers: WorkerLimits,
    /// Refusals aggregated into the audit log.
    pub refusals: RefusalAudit,
    /// The CRL number heartbeats announce.
    pub announcer: CrlAnnouncer,
    /// Where each certificate heartbeats from (two holders alternate).
    pub sources: SourceFlips,
    /// Renewal rules.
    pub renew: RenewPolicy,
    /// The fleet API's port, told to operators when they log in.
    pub fleet_api_port: Option<u16>,
    /// Where heartbeats publish what they change (a host back from
    /// silence, its deckies, forbidden connection attempts).
    pub events: crate::events::Events,
    /// Where heartbeats are recorded (in batches).
    pub beats: Arc<crate::beats::BeatWriter>,
    /// Certificates found current, not looked up again while that holds.
    pub standings: crate::standing::StandingCache,
}

/// How long a certificate's return to a source it left counts as two
/// holders heartbeating in turn.
pub const SOURCE_FLIP_WINDOW: Duration = Duration::from_secs(600);

impl ControlState {
    /// The control API's state with the production limits and windows.
    pub fn new(
        db: FleetDb,
        ca: Arc<crate::authorities::LiveAuthorities>,
        crl: Arc<CrlPublisher>,
        renew: RenewPolicy,
        events: crate::events::Events,
    ) -> Self {
        let db_for_beats = db.clone();
        ControlState {
            db,
            ca,
            crl,
            joins: SourceLimiter::per_minute(JOINS_PER_MINUTE, MAX_TRACKED_SOURCES),
            workers: WorkerLimits::new(WORKER_REQUESTS_PER_SECOND, WORKER_REQUEST_BURST),
            refusals: RefusalAudit::new(REFUSAL_AUDIT_WINDOW, MAX_TRACKED_SOURCES),
            announcer: CrlAnnouncer::new(CRL_ANNOUNCE_INTERVAL),
            sources: SourceFlips::new(SOURCE_FLIP_WINDOW, MAX_TRACKED_SOURCES),
            renew,
            fleet_api_port: None,
            beats: crate::beats::BeatWriter::start(db_for_beats, events.clone()),
            events,
            standings: crate::standing::StandingCache::new(crate::standing::STANDING_TTL),
        }
    }

    /// Two holders of `host`'s identity were seen: mark it suspect (its
    /// renewals freeze; the operator is told by `swarm list`, `show`,
    /// `doctor` and the audit log).
    async fn suspect(&self, host: &str, why: &str) {
        match self.db.mark_suspect(host, why).await {
            Ok(true) => tracing::error!(
                host,
                why,
                "host marked SUSPECT: two holders of its identity; burn it (decnet swarm burn {host})"
            ),
            Ok(false) => {}
            Err(e) => tracing::error!(host, error = %e, "cannot mark a host suspect"),
        }
    }

    /// Audit a refusal, aggregated per (actor, action, reason) and window.
    async fn audit_refusal(
        &self,
        actor: &str,
        action: &'static str,
        target: &str,
        reason: &str,
        detail: String,
    ) {
        let entries = self
            .refusals
            .refused(actor, action, target, reason, detail, Instant::now());
        if let Err(e) = self.db.audit_all(&entries).await {
            tracing::warn!(error = %e, "cannot audit a refusal");
        }
    }
}

/// How long repeated refusals of one identity or source are counted before
/// they are written as one entry.
pub const REFUSAL_AUDIT_WINDOW: Duration = Duration::from_secs(60);

/// Write the summaries of ended refusal windows, every few seconds.
pub async fn flush_refusal_audits(state: Arc<ControlState>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let due = state.refusals.due(Instant::now());
        if let Err(e) = state.db.audit_all(&due).await {
            tracing::warn!(error = %e, "cannot write aggregated refusals");
        }
    }
}

pub use decnet_api::worker::{Heartbeat, MAX_REPORTED_DECKIES, ReportedDecky};

/// The largest heartbeat body: about 1,000 deckies with their errors.
/// Parsed, a body may take several times its size in memory; this, the
/// typed deckies and the per-certificate rate keep what one hostile worker
/// can make the master hold to a few MiB.
pub const MAX_HEARTBEAT_BYTES: usize = 256 * 1024;

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn refusal_response(r: &PeerRefusal) -> Response {
    let status = match r {
        PeerRefusal::UnknownHost(_) => StatusCode::NOT_FOUND,
        PeerRefusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        PeerRefusal::TooSoon(_) => StatusCode::TOO_MANY_REQUESTS,
        PeerRefusal::BadCsr => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    };
    json_error(status, r.kind(), r.to_string())
}

/// The router.
pub fn router(state: Arc<ControlState>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok", "role": "master", "version": env!("CARGO_PKG_VERSION")})) }),
        )
        .merge(
            Router::new()
                .route(
                    "/heartbeat",
                    post(heartbeat).layer(axum::extract::DefaultBodyLimit::max(MAX_HEARTBEAT_BYTES)),
                )
                .route("/renew", post(renew))
                .route("/crl", get(crl))
                .route("/trust", get(trust))
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    worker_rate_limit,
                )),
        )
        .route("/join/ca", get(join_ca))
        .route("/join", post(join))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}

/// Worker requests over their rate (per certificate or per connection)
/// get `429` before the database is touched.
async fn worker_rate_limit(
    State(st): State<Arc<ControlState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let conn = TlsPeer::of(req.extensions());
    let peer = conn.and_then(|c| c.identity.as_ref());
    let remote = conn.map(|c| c.remote);
    if let (Some(peer), Some(remote)) = (peer, remote)
        && !st.workers.allow(peer, remote)
    {
        crate::metrics::master_metrics().worker_rate_limited(&peer.role.kind().to_string());
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests under this certificate; slow down",
        );
    }
    next.run(req).await
}

/// The join rate limit: this process's own limiter first (it keeps a flood
/// off the database), then the per-minute count every master on the
/// database shares, so the limit holds however many masters there are.
async fn join_allowed(st: &ControlState, ip: IpAddr) -> Result<(), Response> {
    let limited = || {
        crate::metrics::master_metrics().join("rate_limited");
        json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many join attempts from this address; wait a minute",
        )
    };
    if !st.joins.allow(ip) {
        return Err(limited());
    }
    match st
        .db
        .count_join_attempt(&SourceKey::of(ip).to_string())
        .await
    {
        Ok(n) if n > u64::from(JOINS_PER_MINUTE) => Err(limited()),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::error!(error = %e, "cannot count a join attempt");
            Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "fleet database unavailable",
            ))
        }
    }
}

async fn join_ca(
    State(st): State<Arc<ControlState>>,
    ConnectInfo(peer): ConnectInfo<TlsPeer>,
) -> Response {
    if let Err(r) = join_allowed(&st, peer.remote.ip()).await {
        return r;
    }
    let ca = st.ca.signing();
    Json(serde_json::json!({
        "ca_pem": ca.trust_pem(),
        "endorsements_pem": ca.endorsements_pem(),
    }))
    .into_response()
}

async fn join(
    State(st): State<Arc<ControlState>>,
    ConnectInfo(peer): ConnectInfo<TlsPeer>,
    body: axum::body::Bytes,
) -> Response {
    let ip = peer.remote.ip();
    if let Err(r) = join_allowed(&st, ip).await {
        return r;
    }
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::master_metrics().join("bad_request");
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid join request: {e}"),
            );
        }
    };
    // Nothing the peer chose is logged or audited before it is validated.
    if !valid_token_id(&req.token_id) {
        tracing::debug!(%ip, "join with a malformed token id refused");
        crate::metrics::master_metrics().join("bad_request");
        return json_error(StatusCode::BAD_REQUEST, "bad_request", "malformed token id");
    }
    let source = SourceKey::of(ip).to_string();
    let ca = st.ca.signing();
    let joined = if req.role == decnet_api::JOIN_ROLE_OPERATOR {
        decnet_fleet::operators::join_operator(&st.db, &ca, &req, ip, &source, st.fleet_api_port)
            .await
    } else {
        decnet_fleet::join::join(&st.db, &ca, &req, ip, &source).await
    };
    match joined {
        Ok(answer) => {
            crate::metrics::master_metrics().join("ok");
            Json(answer).into_response()
        }
        Err(refusal) => {
            crate::metrics::master_metrics().join("refused");
            let msg = refusal.to_string();
            tracing::warn!(%ip, token = %req.token_id, reason = %msg, "join refused");
            st.audit_refusal(
                &format!("join:{}", SourceKey::of(ip)),
                "swarm.join",
                &req.token_id,
                &msg,
                msg.clone(),
            )
            .await;
            let status = match refusal {
                JoinRefusal::BadRequest(_) => StatusCode::BAD_REQUEST,
                JoinRefusal::Forbidden(_) => StatusCode::FORBIDDEN,
                JoinRefusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            };
            json_error(status, "join_refused", msg)
        }
    }
}

/// Whether `peer` speaks for its host now (the database check of every
/// worker route); a refusal is logged and becomes the response. What shows
/// a second holder of the identity marks the host suspect: a replaced
/// certificate still in use after its successor was presented, or a
/// certificate of this host that it never presented (a renewal superseded
/// by another holder's).
async fn standing(st: &ControlState, peer: &PeerIdentity, what: &str) -> Result<(), Response> {
    // A certificate found current is not looked up again while nothing
    // could have changed that (see `crate::standing`).
    let snap = st.standings.snapshot(st.crl.number(), st.db.promotions());
    // Only while the revocation list is known to be up to date: a stalled
    // or failing refresh must not leave a revoked certificate remembered.
    let list_fresh = st
        .crl
        .checked_ago()
        .is_some_and(|ago| ago < crate::standing::CRL_FRESHNESS);
    if list_fresh
        && st
            .standings
            .is_current(&peer.fingerprint, snap, Instant::now())
    {
        return Ok(());
    }
    let host = peer.role.host().map(|h| h.to_string()).unwrap_or_default();
    match st.db.authenticate(peer, st.renew.grace).await {
        Ok(s) => {
            match s {
                decnet_fleet::Standing::Current => {
                    st.standings
                        .remember(peer.fingerprint, snap, Instant::now())
                }
                // The certificate it replaced is retiring from now on (the
                // promotion count moved too; this also covers the race).
                decnet_fleet::Standing::Promoted => st.standings.forget_all(),
                decnet_fleet::Standing::Retiring { .. } => {}
            }
            if s.outlives_its_successor(st.renew.grace, decnet_fleet::unix_now()) {
                st.suspect(
                    &host,
                    &format!(
                        "certificate {} was replaced by a renewal, yet is still in use ({what})",
                        peer.fingerprint.short()
                    ),
                )
                .await;
            }
            Ok(())
        }
        Err(r) => {
            tracing::warn!(peer_cn = %peer.cn, peer_fingerprint = %peer.fingerprint.short(), reason = %r, "{what} refused");
            if matches!(r, PeerRefusal::NotIssuedToPeer(_)) && !host.is_empty() {
                st.suspect(
                    &host,
                    &format!(
                        "certificate {} of this host was never presented by it, yet is in use ({what})",
                        peer.fingerprint.short()
                    ),
                )
                .await;
            }
            Err(refusal_response(&r))
        }
    }
}

/// The largest clock skew recorded (a year): beyond it a worker's clock is
/// simply wrong, and no stored value can overflow what reads it.
const MAX_SKEW_MS: i64 = 365 * 24 * 3600 * 1000;

async fn heartbeat(
    State(st): State<Arc<ControlState>>,
    VerifiedPeer(peer): VerifiedPeer,
    ConnectInfo(conn): ConnectInfo<TlsPeer>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = standing(&st, &peer, "heartbeat").await {
        return r;
    }
    if let Some(flip) = st
        .sources
        .heartbeat(&peer.fingerprint, conn.remote.ip(), Instant::now())
    {
        st.suspect(
            &peer.cn,
            &format!(
                "certificate {} heartbeats from {} and {} in turn",
                peer.fingerprint.short(),
                flip.other,
                flip.returned_to
            ),
        )
        .await;
    }
    let hb: Heartbeat = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("invalid heartbeat: {e}"),
            );
        }
    };
    if !decnet_fleet::is_reported_version(&hb.version) {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_version",
            format!(
                "invalid heartbeat: version must be 1 to {} letters, digits or . - + _ ~",
                decnet_fleet::model::MAX_REPORTED_VERSION
            ),
        );
    }
    let state = serde_json::to_string(&hb.deckies).ok();
    let deckies = serde_json::to_value(&hb.deckies).unwrap_or_default();
    // The transit time is counted as skew: small next to what matters
    // (seconds), and always in the worker's favour. Any i64 may arrive:
    // the difference saturates instead of overflowing.
    let skew = hb.sent_at_ms.map(|sent| {
        sent.saturating_sub(unix_millis())
            .clamp(-MAX_SKEW_MS, MAX_SKEW_MS)
    });
    // Only a digest is stored: anything else a worker sends is dropped.
    let trust = hb
        .trust
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()));
    let cas = st.ca.current();
    let renew = match st.beats.beat(
        decnet_fleet::db::Beat {
            host: peer.cn.clone(),
            version: hb.version.clone(),
            state,
            clock_skew_ms: skew,
            trust,
        },
        deckies,
    ) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            );
        }
    };
    crate::metrics::master_metrics().heartbeat(&peer.cn, decnet_fleet::unix_now(), skew);
    tracing::debug!(host = %peer.cn, version = %hb.version, driver = ?hb.driver, skew_ms = ?skew, "heartbeat");
    let crl_number = st.announcer.announce(st.crl.number(), Instant::now());
    // During a CA rotation, a certificate of the CA on its way out renews.
    let renew = renew || cas.should_renew(&peer.issuer);
    Json(decnet_api::worker::HeartbeatAnswer {
        ok: true,
        renew,
        crl_number,
        trust: Some(cas.digest.clone()),
    })
    .into_response()
}

/// `POST /renew` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewRequest {
    csr: String,
}

async fn renew(
    State(st): State<Arc<ControlState>>,
    VerifiedPeer(peer): VerifiedPeer,
    body: axum::body::Bytes,
) -> Response {
    let req: RenewRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("invalid renewal: {e}"),
            );
        }
    };
    let host = peer.role.host().map(|h| h.to_string()).unwrap_or_default();
    // A second holder shows here as it does on heartbeats.
    if let Err(r) = standing(&st, &peer, "renewal").await {
        return r;
    }
    let cas = st.ca.current();
    // Moving to the CA that signs now is never too soon: a host that
    // renewed a minute before a rotation began still moves at once.
    let policy = if cas.should_renew(&peer.issuer) {
        RenewPolicy {
            min_interval: Duration::ZERO,
            ..st.renew.clone()
        }
    } else {
        st.renew.clone()
    };
    match st.db.renew(&cas.signing, &peer, &req.csr, &policy).await {
        Ok(renewed) => {
            // Its flag is down: the next beats do not ask again.
            st.beats.renewed(&host);
            let _ = st
                .db
                .audit(&AuditEntry::now(
                    format!("api:{}", peer.cn),
                    "swarm.renew",
                    &host,
                    AuditOutcome::Ok,
                    format!(
                        "role={} presented={} pending={}{}",
                        peer.role.kind(),
                        peer.fingerprint,
                        renewed.fingerprint,
                        renewed
                            .superseded_pending
                            .map(|p| format!(" dropped_pending={p}"))
                            .unwrap_or_default()
                    ),
                ))
                .await;
            tracing::info!(host = %host, role = %peer.role.kind(), fingerprint = %renewed.fingerprint, "certificate renewed (pending until presented)");
            crate::metrics::master_metrics().renewal(&peer.role.kind().to_string(), "renewed");
            Json(serde_json::json!({
                "cert_pem": renewed.cert_pem,
                "ca_pem": cas.signing.trust_pem(),
                "endorsements_pem": cas.signing.endorsements_pem(),
                "fingerprint": renewed.fingerprint,
            }))
            .into_response()
        }
        Err(r) => {
            tracing::warn!(peer_cn = %peer.cn, peer_fingerprint = %peer.fingerprint.short(), reason = %r, "renewal refused");
            crate::metrics::master_metrics().renewal(&peer.role.kind().to_string(), r.kind());
            st.audit_refusal(
                &format!("api:{}", peer.cn),
                "swarm.renew",
                &host,
                &r.to_string(),
                format!("presented={} reason={r}", peer.fingerprint),
            )
            .await;
            refusal_response(&r)
        }
    }
}

async fn crl(State(st): State<Arc<ControlState>>, VerifiedPeer(peer): VerifiedPeer) -> Response {
    if let Err(r) = standing(&st, &peer, "revocation list request").await {
        return r;
    }
    let cas = st.ca.current();
    match st.crl.current() {
        Some(c) => Json(serde_json::json!({
            "number": c.number(),
            "crl_pem": c.to_pem(),
            "trust": cas.digest,
            "renew": cas.should_renew(&peer.issuer),
        }))
        .into_response(),
        None => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the revocation list is not ready yet",
        ),
    }
}

/// `GET /trust`: the trust set in force and the endorsements that let a
/// worker take it (see `decnet_pki::trust::accept`).
async fn trust(State(st): State<Arc<ControlState>>, VerifiedPeer(peer): VerifiedPeer) -> Response {
    if let Err(r) = standing(&st, &peer, "trust set request").await {
        return r;
    }
    let cas = st.ca.current();
    Json(serde_json::json!({
        "trust_pem": cas.signing.trust_pem(),
        "endorsements_pem": cas.signing.endorsements_pem(),
        "digest": cas.digest,
    }))
    .into_response()
}

/// Mark hosts unreachable after `silence` without a heartbeat, every few seconds.
pub async fn mark_silent_hosts(db: FleetDb, silence: Duration, events: crate::events::Events) {
    let period = (silence / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
    loop {
        tokio::time::sleep(period).await;
        let cutoff = decnet_fleet::unix_now() - silence.as_secs() as i64;
        match db.mark_silent(cutoff, silence.as_secs() as i64).await {
            Ok(hosts) if hosts.is_empty() => {}
            Ok(hosts) => {
                tracing::info!(hosts = hosts.len(), names = ?hosts, "hosts went silent; marked unreachable");
                events.silent(&hosts, silence.as_secs() as i64);
            }
            Err(e) => tracing::warn!(error = %e, "cannot mark silent hosts"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_limiter_keys_by_source_and_bounds_memory() {
        let l = SourceLimiter::per_minute(3, 4);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.allow(a));
        }
        assert!(!l.allow(a), "over its rate");
        // The same /64 is one source.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2:3".parse().unwrap();
        for _ in 0..3 {
            assert!(l.allow(v6a));
        }
        assert!(!l.allow(v6b));
        // Past the bound, new sources are refused while the tracked ones are active.
        assert!(l.allow("10.0.0.2".parse().unwrap()));
        assert!(l.allow("10.0.0.3".parse().unwrap()));
        assert!(!l.allow("10.0.0.4".parse().unwrap()));
        assert!(l.tracked() <= 4);
    }
}
