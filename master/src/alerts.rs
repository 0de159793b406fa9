//! Alerts that reach people: events matching an alert's topics (and kinds)
//! are POSTed as JSON to its webhook, signed (`X-Decnet-Signature:
//! sha256=<hex HMAC-SHA256 of the body under the alert's secret>`), from a
//! bounded queue, retried with backoff, each outcome kept in the alert
//! history and counted in metrics.
//!
//! The deliverer follows the event bus live; the rules are read from the
//! fleet database (a change through the API is seen at once on this
//! master, within [`RULES_RELOAD`] on another). A receiver that is down
//! costs at most [`MAX_IN_FLIGHT`] deliveries retrying at a time; events
//! beyond the queue are dropped and counted, never held without bound.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use decnet_api::{Event, EventTopic};
use decnet_fleet::FleetDb;
use decnet_fleet::console::{AlertRecord, DeliveryRecord};
use decnet_telemetry::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{Notify, Semaphore, broadcast};

use crate::events::{EventBus, Published};

/// How often the rules are reread (another master's changes).
pub const RULES_RELOAD: Duration = Duration::from_secs(5);
/// Deliveries waiting or under way; beyond it new ones are dropped (counted).
pub const QUEUE: usize = 1024;
/// Deliveries sent (and retried) at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Deliveries of one alert sent at once (its receiver slow or down holds
/// these, never every slot).
pub const PER_RULE_IN_FLIGHT: usize = 2;
/// One alert is told of one host's event kind at most once a window (a
/// host silent, back, silent again within it: the first).
pub const COALESCE: Duration = Duration::from_secs(60);

/// Which (alert, host, kind) was delivered when: the first of a window
/// goes, the rest are counted as coalesced. Bounded memory.
#[derive(Default)]
struct Coalescer {
    seen: HashMap<(String, Option<String>, String), std::time::Instant>,
}

impl Coalescer {
    const MAX: usize = 100_000;

    /// Whether this is the first of its window (and note it).
    fn first(
        &mut self,
        rule: &str,
        host: Option<&str>,
        kind: &str,
        now: std::time::Instant,
    ) -> bool {
        if self.seen.len() >= Self::MAX {
            self.seen.retain(|_, at| now.duration_since(*at) < COALESCE);
            if self.seen.len() >= Self::MAX {
                return false;
            }
        }
        let key = (rule.to_string(), host.map(str::to_string), kind.to_string());
        match self.seen.get(&key) {
            Some(at) if now.duration_since(*at) < COALESCE => false,
            _ => {
                self.seen.insert(key, now);
                true
            }
        }
    }
}
/// Attempts per delivery (waits between them: 1, 2, 4, 8 s).
pub const ATTEMPTS: u32 = 5;
/// How long one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// `alert`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// The alert's name.
    pub alert: String,
    /// `delivered`, `failed` or `dropped` (over the queue).
    pub outcome: String,
}

/// `decnet_alert_deliveries_total{alert,outcome}`.
pub fn delivery_metrics() -> &'static Family<DeliveryLabels, Counter> {
    static M: OnceLock<Family<DeliveryLabels, Counter>> = OnceLock::new();
    M.get_or_init(|| {
        let f = Family::default();
        register(
            "decnet_alert_deliveries",
            "Alert webhook deliveries, by alert and outcome (delivered, failed after every retry, dropped over the queue)",
            f.clone(),
        );
        f
    })
}

fn count(alert: &str, outcome: &str) {
    delivery_metrics()
        .get_or_create(&DeliveryLabels {
            alert: alert.into(),
            outcome: outcome.into(),
        })
        .inc();
}

/// Whether `rule` wants `event`. Pure.
pub fn matches(rule: &AlertRecord, event: &Event) -> bool {
    // Its own deliveries' events never trigger an alert (no loops).
    event.topic != EventTopic::Alert
        && rule.topics.iter().any(|t| t == event.topic.as_str())
        && (rule.kinds.is_empty() || rule.kinds.iter().any(|k| k == &event.kind))
}

/// The signature header's value for `body` under `secret` (hex).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What the API asks of the deliverer.
#[derive(Clone)]
pub struct Alerts {
    db: FleetDb,
    http: reqwest::Client,
    reload: Arc<Notify>,
}

/// The body POSTed: the event and the alert that matched it.
#[derive(serde::Serialize)]
struct Delivery<'a> {
    alert: &'a str,
    event: &'a Event,
}

/// One attempt's outcome: the receiver's status, or why it was not reached.
type Attempt = Result<u16, String>;

impl Alerts {
    /// The deliverer's handle (start it with [`Alerts::run`]).
    pub fn new(db: FleetDb) -> anyhow::Result<Alerts> {
        let base = || {
            reqwest::Client::builder()
                .timeout(ATTEMPT_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                // A receiver answers; it does not send the master elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("decnet-master/", env!("CARGO_PKG_VERSION")))
        };
        let http = match base().build() {
            Ok(c) => c,
            // A master host without the system's CA certificates (a
            // minimal install) still starts: its http:// webhooks work,
            // https:// ones fail to verify (each delivery says why).
            Err(e) => {
                tracing::warn!(
                    error = %decnet_swarm_client::transport::error_chain(&e),
                    "no system CA certificates (install ca-certificates): https webhooks cannot be verified and will fail; http webhooks work"
                );
                let tls = rustls::ClientConfig::builder_with_provider(
                    decnet_pki::provider::crypto_provider(),
                )
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
                base().tls_backend_preconfigured(tls).build()?
            }
        };
        Ok(Alerts {
            db,
            http,
            reload: Arc::new(Notify::new()),
        })
    }

    /// The rules changed on this master: reread them now.
    pub fn rules_changed(&self) {
        self.reload.notify_one();
    }

    async fn attempt(&self, rule: &AlertRecord, body: &[u8], kind: &str) -> Attempt {
        let sent = self
            .http
            .post(&rule.webhook)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Decnet-Signature", signature(&rule.secret, body))
            .header("X-Decnet-Event", kind)
            .header("X-Decnet-Alert", &rule.name)
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
            Ok(r) => Err(format!("the receiver answered {}", r.status())),
            // The URL may carry a secret: the error without it.
            Err(e) => Err(describe(&e)),
        }
    }

    /// Send a test event to `rule` now, once (no retries, not recorded).
    pub async fn test(&self, rule: &AlertRecord, actor: &str) -> decnet_api::AlertTestResult {
        let event = Event {
            id: 0,
            at_ms: decnet_fleet::unix_now() * 1000,
            topic: EventTopic::Alert,
            kind: "alert.test".into(),
            host: None,
            data: serde_json::json!({ "by": actor }),
        };
        let body = serde_json::to_vec(&Delivery {
            alert: &rule.name,
            event: &event,
        })
        .unwrap_or_default();
        match self.attempt(rule, &body, "alert.test").await {
            Ok(status) => decnet_api::AlertTestResult {
                delivered: true,
                status: Some(status),
                detail: None,
            },
            Err(detail) => decnet_api::AlertTestResult {
                delivered: false,
                status: None,
                detail: Some(detail),
            },
        }
    }

    /// Deliver one event to one rule, with retries; record the outcome.
    async fn deliver(&self, bus: &EventBus, rule: AlertRecord, event: Arc<Published>) {
        let body = serde_json::to_vec(&Delivery {
            alert: &rule.name,
            event: &event.event,
        })
        .unwrap_or_default();
        let mut last = String::new();
        let mut attempts = 0;
        let mut outcome = "failed";
        for n in 0..ATTEMPTS {
            if n > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (n - 1))).await;
            }
            attempts += 1;
            match self.attempt(&rule, &body, &event.kind).await {
                Ok(status) => {
                    last = format!("the receiver answered {status}");
                    outcome = "delivered";
                    break;
                }
                Err(e) => last = e,
            }
        }
        count(&rule.name, outcome);
        if outcome == "delivered" {
            tracing::info!(alert = %rule.name, kind = %event.kind, host = ?event.host, attempts, "alert delivered");
        } else {
            tracing::warn!(alert = %rule.name, kind = %event.kind, host = ?event.host, attempts, error = %last, "alert delivery failed");
        }
        let record = DeliveryRecord {
            alert: rule.name.clone(),
            event_id: event.id as i64,
            kind: event.kind.clone(),
            host: event.host.clone(),
            at: decnet_fleet::unix_now(),
            outcome: outcome.into(),
            attempts: attempts as i64,
            detail: Some(last.clone()),
        };
        if let Err(e) = self.db.record_delivery(&record).await {
            tracing::warn!(error = %e, "cannot record an alert delivery");
        }
        bus.publish(
            EventTopic::Alert,
            &format!("alert.{outcome}"),
            event.host.as_deref(),
            serde_json::json!({
                "alert": rule.name, "event_id": event.id, "event_kind": event.kind,
                "attempts": attempts, "detail": last,
            }),
        );
    }

    /// Follow `bus` and deliver what the rules match, until the bus closes.
    pub async fn run(self, bus: Arc<EventBus>) {
        let mut live = bus.subscribe(None).live;
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut per_rule: HashMap<String, Arc<Semaphore>> = HashMap::new();
        let mut recent = Coalescer::default();
        let mut rules = self.db.alerts().await.unwrap_or_default();
        let mut reread = tokio::time::interval(RULES_RELOAD);
        loop {
            tokio::select! {
                _ = bus.closing.cancelled() => break,
                _ = self.reload.notified() => rules = self.reload_rules(rules).await,
                _ = reread.tick() => rules = self.reload_rules(rules).await,
                got = live.recv() => match got {
                    Ok(event) => {
                        for rule in rules.iter().filter(|r| matches(r, &event)) {
                            // A host repeating one kind is told once a
                            // window: a worker cannot flood a receiver (or
                            // the queue, and so other hosts' alerts).
                            if !recent.first(&rule.name, event.host.as_deref(), &event.kind, std::time::Instant::now()) {
                                count(&rule.name, "coalesced");
                                continue;
                            }
                            if pending.load(Ordering::Relaxed) >= QUEUE {
                                count(&rule.name, "dropped");
                                tracing::warn!(alert = %rule.name, kind = %event.kind, "alert queue full: delivery dropped");
                                continue;
                            }
                            pending.fetch_add(1, Ordering::Relaxed);
                            let own = per_rule
                                .entry(rule.name.clone())
                                .or_insert_with(|| Arc::new(Semaphore::new(PER_RULE_IN_FLIGHT)))
                                .clone();
                            let (me, bus, slots, pending) =
                                (self.clone(), bus.clone(), slots.clone(), pending.clone());
                            let (rule, event) = (rule.clone(), event.clone());
                            tokio::spawn(async move {
                                // Its rule's turn first (a slow receiver
                                // holds its own slots only), then a slot.
                                if let (Ok(_own), Ok(_slot)) = (own.acquire().await, slots.acquire().await) {
                                    me.deliver(&bus, rule, event).await;
                                }
                                pending.fetch_sub(1, Ordering::Relaxed);
                            });
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the alert deliverer fell behind the event bus; events missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    }

    async fn reload_rules(&self, old: Vec<AlertRecord>) -> Vec<AlertRecord> {
        match self.db.alerts().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the alerts; keeping the last known");
                old
            }
        }
    }
}

/// A request error, without its URL (which may carry a token).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "redirected (not followed)"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut chain = String::new();
    while let Some(s) = source {
        chain = s.to_string();
        source = s.source();
    }
    if chain.is_empty() {
        what.into()
    } else {
        format!("{what}: {chain}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(topics: &[&str], kinds: &[&str]) -> AlertRecord {
        AlertRecord {
            name: "r".into(),
            webhook: "http://127.0.0.1:9/".into(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            secret: "s".into(),
            created_by: "t".into(),
            created_at: 0,
            delivered: 0,
            failed: 0,
        }
    }

    fn event(topic: EventTopic, kind: &str) -> Event {
        Event {
            id: 1,
            at_ms: 0,
            topic,
            kind: kind.into(),
            host: Some("w1".into()),
            data: serde_json::Value::Null,
        }
    }

    #[test]
    fn rules_match_topics_and_kinds() {
        let silent = event(EventTopic::Host, "host.silent");
        assert!(matches(&rule(&["host"], &[]), &silent));
        assert!(matches(&rule(&["host", "job"], &["host.silent"]), &silent));
        assert!(!matches(&rule(&["host"], &["host.back"]), &silent));
        assert!(!matches(&rule(&["job"], &[]), &silent));
        // An alert's own delivery events never match (no loops).
        assert!(!matches(
            &rule(&["alert"], &[]),
            &event(EventTopic::Alert, "alert.failed")
        ));
    }

    #[test]
    fn one_host_repeating_a_kind_is_told_once_a_window() {
        let mut c = Coalescer::default();
        let t = std::time::Instant::now();
        assert!(c.first("r", Some("w1"), "decky.forbidden", t));
        assert!(!c.first(
            "r",
            Some("w1"),
            "decky.forbidden",
            t + Duration::from_secs(5)
        ));
        assert!(
            c.first("r", Some("w2"), "decky.forbidden", t),
            "another host"
        );
        assert!(c.first("r", Some("w1"), "host.silent", t), "another kind");
        assert!(
            c.first("other", Some("w1"), "decky.forbidden", t),
            "another alert"
        );
        assert!(c.first("r", Some("w1"), "decky.forbidden", t + COALESCE));
    }

    #[test]
    fn signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
