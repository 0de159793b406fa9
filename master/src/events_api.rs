//! The fleet API's live half: `GET /v1/events` (server-sent events from the
//! event bus, filtered by topic and host, scoped by the caller's grant,
//! resumable with `Last-Event-ID`), the alerts (`/v1/alerts…`) and the
//! console's one-time login URLs (`POST /v1/console/login`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use decnet_api as api;
use decnet_api::{Event, EventTopic};
use decnet_fleet::console::AlertRecord;
use decnet_server::error_body::json_error;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::authz::{Grant, glob_match, valid_glob};
use crate::events::Published;
use crate::fleet_api::{FleetApiState, audit_change};

/// The most event streams one master serves at once.
pub const MAX_FOLLOWERS: usize = 512;
/// How often an open stream checks that its operator may still follow it.
pub const RECHECK: Duration = Duration::from_secs(5);

static FOLLOWERS: AtomicUsize = AtomicUsize::new(0);

fn bad_request(what: impl Into<String>) -> Response {
    json_error(StatusCode::BAD_REQUEST, "bad_request", what)
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "fleet database unavailable");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "fleet database unavailable",
    )
}

/// What a follower asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct EventFilter {
    /// Topics (never empty).
    pub topics: Vec<EventTopic>,
    /// Host glob, when given.
    pub host: Option<String>,
}

impl EventFilter {
    /// Parse `?topic=a,b&host=glob`. Pure.
    pub fn parse(topic: Option<&str>, host: Option<&str>) -> Result<EventFilter, String> {
        let topics = match topic.map(str::trim).filter(|t| !t.is_empty()) {
            None => EventTopic::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(|t| {
                    EventTopic::parse(t.trim()).ok_or_else(|| {
                        format!(
                            "unknown topic {:?} (topics: {})",
                            t.trim(),
                            EventTopic::ALL.map(|t| t.as_str()).join(", ")
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let host = match host.map(str::trim).filter(|h| !h.is_empty()) {
            None => None,
            Some(h) if valid_glob(h) => Some(h.to_ascii_lowercase()),
            Some(h) => return Err(format!("{h:?} is not a host name or glob")),
        };
        Ok(EventFilter { topics, host })
    }

    /// Whether `grant` may see `e` and this filter wants it. Pure: an
    /// event about a host needs the host in the grant's scope; one about
    /// no host (an operator change, a job's start and end) is for
    /// operators without a scope only.
    pub fn passes(&self, grant: &Grant, e: &Event) -> bool {
        if !self.topics.contains(&e.topic) {
            return false;
        }
        match &e.host {
            Some(h) => {
                grant.sees(h)
                    && self
                        .host
                        .as_ref()
                        .is_none_or(|g| glob_match(g.as_bytes(), h.as_bytes()))
            }
            None => grant.scope.0.is_empty() && self.host.is_none(),
        }
    }
}

/// `GET /v1/events` query.
#[derive(Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    host: Option<String>,
    /// `false`: what the backlog holds, then the stream ends.
    #[serde(default)]
    follow: Option<bool>,
    /// Resume after this event (as `Last-Event-ID` does).
    #[serde(default)]
    after: Option<u64>,
    /// Without `follow`: at most this many of the newest (default 100).
    #[serde(default)]
    limit: Option<usize>,
}

fn sse_of(e: &Published) -> SseEvent {
    SseEvent::default().id(e.id.to_string()).data(&e.json)
}

fn gap_event(missed: Option<u64>) -> SseEvent {
    SseEvent::default()
        .event("gap")
        .data(serde_json::json!({ "missed": missed }).to_string())
}

/// The most streams one operator holds open (its console tabs, its
/// scripts): one operator cannot take every stream from the others.
pub const MAX_FOLLOWERS_PER_OPERATOR: usize = 32;
/// A stream whose follower reads nothing for this long is ended (its
/// buffer full: a stalled or hostile reader holds no slot for ever).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

fn per_operator() -> std::sync::MutexGuard<'static, std::collections::HashMap<String, usize>> {
    static M: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
        std::sync::OnceLock::new();
    M.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Counts an open stream (overall and its operator's) while it lives.
struct Following(String);

impl Following {
    /// A slot for `operator`'s stream, or why there is none.
    fn take(operator: &str) -> Result<Following, String> {
        let mut mine = per_operator();
        let held = mine.get(operator).copied().unwrap_or(0);
        if held >= MAX_FOLLOWERS_PER_OPERATOR {
            return Err(format!(
                "operator {operator} already holds {MAX_FOLLOWERS_PER_OPERATOR} event streams"
            ));
        }
        if FOLLOWERS.fetch_add(1, Ordering::Relaxed) >= MAX_FOLLOWERS {
            FOLLOWERS.fetch_sub(1, Ordering::Relaxed);
            return Err(format!(
                "this master already serves {MAX_FOLLOWERS} event streams"
            ));
        }
        mine.insert(operator.to_string(), held + 1);
        crate::events::event_metrics().followers.inc();
        Ok(Following(operator.to_string()))
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        FOLLOWERS.fetch_sub(1, Ordering::Relaxed);
        crate::events::event_metrics().followers.dec();
        let mut mine = per_operator();
        if let Some(n) = mine.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                mine.remove(&self.0);
            }
        }
    }
}

/// Send `e` to the stream: `false` when the follower left or stalled.
async fn send(tx: &tokio::sync::mpsc::Sender<SseEvent>, e: SseEvent) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, tx.send(e)).await,
        Ok(Ok(()))
    )
}

/// `GET /v1/events`.
pub async fn events(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, Response> {
    let filter = EventFilter::parse(q.topic.as_deref(), q.host.as_deref()).map_err(bad_request)?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.after);
    let follow = q.follow.unwrap_or(true);
    let following = Following::take(&g.operator)
        .map_err(|why| json_error(StatusCode::SERVICE_UNAVAILABLE, "busy", why))?;
    let bus = st.events.bus.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(256);
    let sub = match (last, follow) {
        (Some(after), _) => bus.subscribe(Some(after)),
        (None, true) => bus.subscribe(None),
        (None, false) => {
            let mut s = bus.subscribe(None);
            s.replay = bus.recent(crate::events::BACKLOG);
            s
        }
    };
    let logs = filter
        .topics
        .contains(&EventTopic::Log)
        .then(|| bus.follow_logs());
    let db = st.db.clone();
    tokio::spawn(async move {
        let _following = following;
        let _logs = logs;
        let crate::events::Subscription {
            replay,
            gap,
            mut live,
        } = sub;
        if gap && !send(&tx, gap_event(None)).await {
            return;
        }
        let mut replay: Vec<_> = replay
            .into_iter()
            .filter(|e| filter.passes(&g, e))
            .collect();
        if !follow {
            let keep = q.limit.unwrap_or(100).clamp(1, crate::events::BACKLOG);
            replay.drain(..replay.len().saturating_sub(keep));
        }
        for e in replay {
            if !send(&tx, sse_of(&e)).await {
                return;
            }
        }
        if !follow {
            return;
        }
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        loop {
            tokio::select! {
                _ = bus.closing.cancelled() => return,
                _ = tx.closed() => return,
                _ = recheck.tick() => {
                    if !crate::authz::still_holds(&db, &g).await {
                        tracing::info!(operator = %g.operator, "event stream ended: its operator's standing changed");
                        return;
                    }
                }
                got = live.recv() => match got {
                    Ok(e) => {
                        if filter.passes(&g, &e) && !send(&tx, sse_of(&e)).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        crate::events::event_metrics()
                            .dropped
                            .get_or_create(&crate::events::TopicLabel { topic: "lagged".into() })
                            .inc_by(n);
                        if !send(&tx, gap_event(Some(n))).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// A name for an alert: letters, digits, `-`, `_`, `.`; at most 64. Pure.
pub fn valid_alert_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A webhook URL: `http` or `https`, a host, no credentials in it. Pure.
pub fn check_webhook(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("webhook {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("a webhook URL is http:// or https://".into());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("a webhook URL names a host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a webhook URL carries no user or password (the deliveries are signed)".into());
    }
    Ok(())
}

fn alert_view(a: &AlertRecord) -> api::AlertRule {
    api::AlertRule {
        name: a.name.clone(),
        webhook: a.webhook.clone(),
        topics: a
            .topics
            .iter()
            .filter_map(|t| EventTopic::parse(t))
            .collect(),
        kinds: a.kinds.clone(),
        created_by: a.created_by.clone(),
        created_at: a.created_at,
        delivered: a.delivered.max(0) as u64,
        failed: a.failed.max(0) as u64,
    }
}

/// `GET /v1/alerts` (admin).
pub async fn alerts(
    State(st): State<Arc<FleetApiState>>,
) -> Result<Json<Vec<api::AlertRule>>, Response> {
    let all = st.db.alerts().await.map_err(unavailable)?;
    Ok(Json(all.iter().map(alert_view).collect()))
}

/// `POST /v1/alerts` (admin).
pub async fn alert_add(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let req: api::NewAlertRule = serde_json::from_slice(&body).map_err(|e| {
        bad_request(format!(
            "invalid request body: {}",
            decnet_server::error_body::plain_decode_message(&e.to_string())
        ))
    })?;
    if !valid_alert_name(&req.name) {
        return Err(bad_request(
            "an alert name is 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    check_webhook(&req.webhook).map_err(bad_request)?;
    if req.topics.is_empty() {
        return Err(bad_request("an alert needs at least one topic"));
    }
    if req.kinds.len() > 64
        || req.kinds.iter().any(|k| {
            k.is_empty()
                || k.len() > 64
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
    {
        return Err(bad_request(
            "event kinds look like host.silent, job.failed (at most 64)",
        ));
    }
    let mut topics: Vec<String> = req.topics.iter().map(|t| t.as_str().to_string()).collect();
    topics.sort();
    topics.dedup();
    let record = AlertRecord {
        name: req.name.clone(),
        webhook: req.webhook.clone(),
        topics,
        kinds: req.kinds.clone(),
        secret: decnet_pki::random_hex(32),
        created_by: g.actor(),
        created_at: decnet_fleet::unix_now(),
        delivered: 0,
        failed: 0,
    };
    if !st.db.add_alert(&record).await.map_err(unavailable)? {
        return Err(json_error(
            StatusCode::CONFLICT,
            "conflict",
            format!("alert {} exists (remove it first)", req.name),
        ));
    }
    st.alerts.rules_changed();
    // The URL is on the record, never the secret.
    audit_change(
        &st,
        &g,
        "alert.add",
        &req.name,
        format!(
            "webhook={} topics={} kinds={}",
            redact_url(&req.webhook),
            record.topics.join(","),
            record.kinds.join(",")
        ),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(api::AlertCreated {
            rule: alert_view(&record),
            secret: record.secret,
        }),
    )
        .into_response())
}

pub use decnet_cli::table::redact_url;

/// `DELETE /v1/alerts/{name}` (admin).
pub async fn alert_remove(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Response> {
    if !st.db.remove_alert(&name).await.map_err(unavailable)? {
        return Err(json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no alert {name}"),
        ));
    }
    st.alerts.rules_changed();
    audit_change(&st, &g, "alert.remove", &name, String::new()).await;
    Ok(Json(serde_json::json!({ "removed": name })))
}

/// `POST /v1/alerts/{name}/test` (admin): one test delivery, now.
pub async fn alert_test(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Json<api::AlertTestResult>, Response> {
    let all = st.db.alerts().await.map_err(unavailable)?;
    let Some(rule) = all.into_iter().find(|a| a.name == name) else {
        return Err(json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no alert {name}"),
        ));
    };
    let result = st.alerts.test(&rule, &g.actor()).await;
    audit_change(
        &st,
        &g,
        "alert.test",
        &name,
        format!("delivered={}", result.delivered),
    )
    .await;
    Ok(Json(result))
}

/// `GET /v1/alerts/deliveries` query.
#[derive(Deserialize)]
pub struct DeliveriesQuery {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

/// `GET /v1/alerts/deliveries`: the alert history (read; scoped
/// operators see the deliveries about their hosts).
pub async fn deliveries(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Vec<api::AlertDelivery>>, Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = st
        .db
        .deliveries(q.alert.as_deref(), limit)
        .await
        .map_err(unavailable)?;
    Ok(Json(
        rows.into_iter()
            .filter(|d| match &d.host {
                Some(h) => g.sees(h),
                None => g.scope.0.is_empty(),
            })
            .map(|d| api::AlertDelivery {
                alert: d.alert,
                event_id: d.event_id.max(0) as u64,
                kind: d.kind,
                host: d.host,
                at: d.at,
                outcome: d.outcome,
                attempts: d.attempts.clamp(0, u32::MAX as i64) as u32,
                detail: d.detail,
            })
            .collect(),
    ))
}

/// `POST /v1/console/login`: a one-time URL opening a console session as
/// the caller (any role: the session carries exactly its grant). The URL
/// names the host the caller reached this API by, on the console's port.
pub async fn console_login(
    State(st): State<Arc<FleetApiState>>,
    Extension(g): Extension<Grant>,
    headers: HeaderMap,
) -> Result<Json<api::ConsoleLogin>, Response> {
    let Some(port) = st.console_port else {
        return Err(json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this master serves no console (started with --no-console)",
        ));
    };
    if matches!(g.credential, crate::authz::Credential::Session(_)) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a console session cannot make login URLs",
        ));
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_without_port)
        .unwrap_or_else(|| "localhost".into());
    let ticket = decnet_pki::random_hex(32);
    let expires_at = st
        .db
        .create_console_ticket(&ticket, &g.operator)
        .await
        .map_err(unavailable)?;
    audit_change(&st, &g, "console.login_url", &g.operator, String::new()).await;
    Ok(Json(api::ConsoleLogin {
        url: format!("https://{host}:{port}/login?ticket={ticket}"),
        expires_at,
    }))
}

/// `host[:port]` or `[v6]:port` → the host part (brackets kept). Pure.
pub fn host_without_port(h: &str) -> String {
    if let Some(end) = h.find(']') {
        return h[..=end].to_string();
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_string(),
        _ => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Credential, HostScope};
    use decnet_api::OperatorRole;

    fn grant(scope: &[&str]) -> Grant {
        Grant {
            operator: "a".into(),
            role: OperatorRole::Viewer,
            scope: HostScope(scope.iter().map(|s| s.to_string()).collect()),
            credential: Credential::Certificate("00".into()),
        }
    }

    fn ev(topic: EventTopic, host: Option<&str>) -> Event {
        Event {
            id: 1,
            at_ms: 0,
            topic,
            kind: "k".into(),
            host: host.map(str::to_string),
            data: serde_json::Value::Null,
        }
    }

    #[test]
    fn filters_parse_and_refuse_what_they_do_not_know() {
        let f = EventFilter::parse(None, None).unwrap();
        assert_eq!(f.topics.len(), EventTopic::ALL.len());
        let f = EventFilter::parse(Some("host, log"), Some("W*")).unwrap();
        assert_eq!(f.topics, vec![EventTopic::Host, EventTopic::Log]);
        assert_eq!(f.host.as_deref(), Some("w*"));
        assert!(EventFilter::parse(Some("hosts"), None).is_err());
        assert!(EventFilter::parse(None, Some("w/1")).is_err());
    }

    #[test]
    fn a_scoped_operator_sees_its_hosts_events_only() {
        let all = EventFilter::parse(None, None).unwrap();
        let scoped = grant(&["lab*"]);
        assert!(all.passes(&scoped, &ev(EventTopic::Host, Some("lab1"))));
        assert!(!all.passes(&scoped, &ev(EventTopic::Log, Some("prod1"))));
        // Events about no host: unscoped operators only.
        assert!(!all.passes(&scoped, &ev(EventTopic::Audit, None)));
        assert!(all.passes(&grant(&[]), &ev(EventTopic::Audit, None)));
        // The follower's own host filter narrows further.
        let one = EventFilter::parse(Some("host"), Some("lab2")).unwrap();
        assert!(!one.passes(&scoped, &ev(EventTopic::Host, Some("lab1"))));
        assert!(one.passes(&scoped, &ev(EventTopic::Host, Some("lab2"))));
        assert!(!one.passes(&grant(&[]), &ev(EventTopic::Host, None)));
        assert!(!one.passes(&scoped, &ev(EventTopic::Job, Some("lab2"))));
    }

    #[test]
    fn webhooks_and_names_are_checked() {
        assert!(check_webhook("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_webhook("https://hooks.example/x?token=1").is_ok());
        assert!(check_webhook("ftp://x/").is_err());
        assert!(check_webhook("https://u:p@x/").is_err());
        assert!(check_webhook("not a url").is_err());
        assert!(valid_alert_name("went-dark_1.a") && !valid_alert_name("a b"));
        assert_eq!(
            redact_url("https://hooks.example/x?token=secret"),
            "https://hooks.example/…"
        );
        assert_eq!(
            redact_url("https://hooks.slack.example:8443/services/T0/B0/secret"),
            "https://hooks.slack.example:8443/…"
        );
        assert_eq!(host_without_port("127.0.0.1:8771"), "127.0.0.1");
        assert_eq!(host_without_port("[::1]:8771"), "[::1]");
        assert_eq!(host_without_port("master.lab"), "master.lab");
    }
}
