//! The event bus of `master serve`: what happens in the fleet (host state,
//! certificates, jobs, audit entries, credited log lines, alert
//! deliveries) published once, followed by the fleet API's `GET
//! /v1/events` (server-sent events: the CLI's `decnet events`, the console)
//! and by the alert deliverer.
//!
//! A broadcast channel with a bounded replay backlog: a follower that
//! reconnects with `Last-Event-ID` gets what it missed while the backlog
//! still holds it, and a `gap` event when it does not (then it reloads what
//! it shows). Event ids grow across restarts (they start from the boot
//! time in microseconds), so an id from before a restart is older than
//! every event of the new daemon and is answered with a gap too. Log lines
//! are published only while someone follows them, and at most
//! [`LOG_EVENTS_PER_SECOND`]: the log listener's throughput never waits on
//! followers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use decnet_api::{Event, EventTopic};
use decnet_telemetry::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How many events the replay backlog holds.
pub const BACKLOG: usize = 16_384;

/// At most this many log-line events a second (the rest are counted as
/// dropped, never queued).
pub const LOG_EVENTS_PER_SECOND: u64 = 2_000;

/// `topic`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The event topic.
    pub topic: String,
}

/// The event bus's series.
#[derive(Debug)]
pub struct EventMetrics {
    /// `decnet_events_published_total{topic}`.
    pub published: Family<TopicLabel, Counter>,
    /// `decnet_events_dropped_total{topic}`: over the log-line rate, or a
    /// follower too slow to keep up (counted per event missed).
    pub dropped: Family<TopicLabel, Counter>,
    /// `decnet_event_followers`: open event streams.
    pub followers: Gauge,
}

/// The event series, registered on first use.
pub fn event_metrics() -> &'static EventMetrics {
    static M: OnceLock<EventMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = EventMetrics {
            published: Family::default(),
            dropped: Family::default(),
            followers: Gauge::default(),
        };
        register(
            "decnet_events_published",
            "Events published on the master's event bus, by topic",
            m.published.clone(),
        );
        register(
            "decnet_events_dropped",
            "Events not delivered: log lines over the event rate, or missed by a follower too slow to keep up",
            m.dropped.clone(),
        );
        register(
            "decnet_event_followers",
            "Open event streams (GET /v1/events)",
            m.followers.clone(),
        );
        m
    })
}

struct Backlog {
    events: VecDeque<Arc<Event>>,
    next_id: u64,
    /// The log-line rate window: its second and the events in it.
    log_window: (i64, u64),
}

/// The bus (cheap to share: hold it in an `Arc`).
pub struct EventBus {
    backlog: Mutex<Backlog>,
    tx: broadcast::Sender<Arc<Event>>,
    log_followers: AtomicUsize,
    capacity: usize,
    /// Cancelled when the daemon stops: every open stream ends.
    pub closing: CancellationToken,
    published: AtomicU64,
}

/// What a new follower gets: the events after its last one still in the
/// backlog, whether some it asked for are gone, and the live feed.
pub struct Subscription {
    /// Missed events to send first, oldest first.
    pub replay: Vec<Arc<Event>>,
    /// Events after the follower's last one are gone from the backlog.
    pub gap: bool,
    /// Everything published from now on.
    pub live: broadcast::Receiver<Arc<Event>>,
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl EventBus {
    /// A bus whose backlog holds `capacity` events.
    pub fn new(capacity: usize) -> Arc<EventBus> {
        let capacity = capacity.max(16);
        let (tx, _) = broadcast::channel(capacity);
        let first = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Arc::new(EventBus {
            backlog: Mutex::new(Backlog {
                events: VecDeque::with_capacity(capacity.min(1024)),
                next_id: first,
                log_window: (0, 0),
            }),
            tx,
            log_followers: AtomicUsize::new(0),
            capacity,
            closing: CancellationToken::new(),
            published: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish an event; returns its id (`None`: a log line over the rate).
    pub fn publish(
        &self,
        topic: EventTopic,
        kind: &str,
        host: Option<&str>,
        data: serde_json::Value,
    ) -> Option<u64> {
        let at_ms = unix_millis();
        let mut b = self.lock();
        if topic == EventTopic::Log {
            let second = at_ms / 1000;
            if b.log_window.0 != second {
                b.log_window = (second, 0);
            }
            if b.log_window.1 >= LOG_EVENTS_PER_SECOND {
                drop(b);
                event_metrics()
                    .dropped
                    .get_or_create(&TopicLabel {
                        topic: topic.as_str().into(),
                    })
                    .inc();
                return None;
            }
            b.log_window.1 += 1;
        }
        let id = b.next_id;
        b.next_id += 1;
        let event = Arc::new(Event {
            id,
            at_ms,
            topic,
            kind: kind.to_string(),
            host: host.map(str::to_string),
            data,
        });
        if b.events.len() == self.capacity {
            b.events.pop_front();
        }
        b.events.push_back(event.clone());
        // Sent under the lock: a subscriber takes the backlog and its
        // receiver under it too, so it sees every event exactly once.
        let _ = self.tx.send(event);
        drop(b);
        self.published.fetch_add(1, Ordering::Relaxed);
        event_metrics()
            .published
            .get_or_create(&TopicLabel {
                topic: topic.as_str().into(),
            })
            .inc();
        Some(id)
    }

    /// Follow the bus from after event `after` (`None`: from now on).
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let b = self.lock();
        let live = self.tx.subscribe();
        let (replay, gap) = match after {
            None => (Vec::new(), false),
            Some(after) => {
                let replay: Vec<Arc<Event>> =
                    b.events.iter().filter(|e| e.id > after).cloned().collect();
                // The event right after `after` is gone when the oldest
                // held is newer than it (and something was published since).
                let oldest = b.events.front().map(|e| e.id).unwrap_or(b.next_id);
                let gap = after < b.next_id.saturating_sub(1) && oldest > after + 1;
                (replay, gap)
            }
        };
        Subscription { replay, gap, live }
    }

    /// The newest events of the backlog (at most `n`), oldest first.
    pub fn recent(&self, n: usize) -> Vec<Arc<Event>> {
        let b = self.lock();
        let skip = b.events.len().saturating_sub(n);
        b.events.iter().skip(skip).cloned().collect()
    }

    /// Whether anyone follows log lines now (the listener skips building
    /// their events otherwise).
    pub fn wants_logs(&self) -> bool {
        self.log_followers.load(Ordering::Relaxed) > 0
    }

    /// A follower of log lines started (the guard ends it).
    pub fn follow_logs(self: &Arc<Self>) -> LogFollower {
        self.log_followers.fetch_add(1, Ordering::Relaxed);
        LogFollower(self.clone())
    }

    /// Events published since start.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// Held while a stream follows log lines.
pub struct LogFollower(Arc<EventBus>);

impl Drop for LogFollower {
    fn drop(&mut self) {
        self.0.log_followers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the bus remembers of each host between heartbeats, to publish
/// changes rather than beats: whether it was silent, its deckies' states
/// and their forbidden-connection counts.
#[derive(Default)]
pub struct HostWatch {
    hosts: Mutex<HashMap<String, WatchedHost>>,
}

#[derive(Default)]
struct WatchedHost {
    silent: bool,
    /// Decky name → (state, restarts, forbidden attempts).
    deckies: Option<HashMap<String, (String, u64, u64)>>,
}

/// A change a heartbeat shows, for the bus.
#[derive(Debug, PartialEq)]
pub enum HostChange {
    /// The host was marked silent and beats again.
    Back,
    /// Its deckies changed state (or appeared, or went): the new list.
    Deckies(serde_json::Value),
    /// A decky made forbidden connection attempts since the last beat.
    Forbidden {
        /// The decky.
        decky: String,
        /// Attempts since the last heartbeat.
        new: u64,
        /// Attempts in all (as the agent counts them).
        total: u64,
    },
}

/// One decky as a heartbeat reports it: (name, state, restarts, forbidden).
fn decky_rows(deckies: &serde_json::Value) -> HashMap<String, (String, u64, u64)> {
    deckies
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    let name = d.get("name")?.as_str()?.to_string();
                    let state = d
                        .get("state")
                        .and_then(|s| s.as_str())
                        .unwrap_or("")
                        .to_string();
                    let restarts = d.get("restarts").and_then(|r| r.as_u64()).unwrap_or(0);
                    let forbidden = d.get("forbidden").and_then(|r| r.as_u64()).unwrap_or(0);
                    Some((name, (state, restarts, forbidden)))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl HostWatch {
    /// At most this many hosts are remembered (a bound on memory; beyond
    /// it new hosts' first beats publish no decky change).
    pub const MAX_HOSTS: usize = 200_000;

    /// A heartbeat of `host` reporting `deckies`: the changes to publish.
    /// Pure bookkeeping (unit-tested).
    pub fn heartbeat(&self, host: &str, deckies: &serde_json::Value) -> Vec<HostChange> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if !hosts.contains_key(host) && hosts.len() >= Self::MAX_HOSTS {
            return Vec::new();
        }
        let w = hosts.entry(host.to_string()).or_default();
        let mut changes = Vec::new();
        if std::mem::take(&mut w.silent) {
            changes.push(HostChange::Back);
        }
        let now = decky_rows(deckies);
        match &w.deckies {
            // The first beat this daemon sees: what it reports is news
            // only to a follower that was not looking, not a change.
            None => {}
            Some(before) => {
                let states_changed = before.len() != now.len()
                    || now.iter().any(|(name, (state, restarts, _))| {
                        before
                            .get(name)
                            .is_none_or(|(s, r, _)| s != state || r != restarts)
                    });
                if states_changed {
                    changes.push(HostChange::Deckies(deckies.clone()));
                }
                let mut forbidden: Vec<(&String, u64, u64)> = now
                    .iter()
                    .filter_map(|(name, (_, _, f))| {
                        let was = before.get(name).map(|b| b.2).unwrap_or(0);
                        (*f > was).then_some((name, f - was, *f))
                    })
                    .collect();
                forbidden.sort();
                changes.extend(forbidden.into_iter().map(|(decky, new, total)| {
                    HostChange::Forbidden {
                        decky: decky.clone(),
                        new,
                        total,
                    }
                }));
            }
        }
        w.deckies = Some(now);
        changes
    }

    /// `host` was marked silent (its next beat is a [`HostChange::Back`]).
    pub fn silent(&self, host: &str) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.contains_key(host) || hosts.len() < Self::MAX_HOSTS {
            hosts.entry(host.to_string()).or_default().silent = true;
        }
    }
}

/// The bus and the host watch, as the daemon's parts share them.
#[derive(Clone)]
pub struct Events {
    /// The bus.
    pub bus: Arc<EventBus>,
    /// Heartbeat bookkeeping.
    pub watch: Arc<HostWatch>,
}

impl Events {
    /// A fresh bus and watch.
    pub fn new() -> Events {
        Events {
            bus: EventBus::new(BACKLOG),
            watch: Arc::new(HostWatch::default()),
        }
    }

    /// Publish what a heartbeat of `host` changed.
    pub fn heartbeat(&self, host: &str, deckies: &serde_json::Value) {
        for change in self.watch.heartbeat(host, deckies) {
            match change {
                HostChange::Back => self.bus.publish(
                    EventTopic::Host,
                    "host.back",
                    Some(host),
                    serde_json::json!({"status": "active"}),
                ),
                HostChange::Deckies(d) => self.bus.publish(
                    EventTopic::Host,
                    "host.deckies",
                    Some(host),
                    serde_json::json!({ "deckies": d }),
                ),
                HostChange::Forbidden { decky, new, total } => self.bus.publish(
                    EventTopic::Host,
                    "decky.forbidden",
                    Some(host),
                    serde_json::json!({"decky": decky, "new": new, "total": total}),
                ),
            };
        }
    }

    /// `hosts` went silent (marked unreachable).
    pub fn silent(&self, hosts: &[String], silence_secs: i64) {
        for h in hosts {
            self.watch.silent(h);
            self.bus.publish(
                EventTopic::Host,
                "host.silent",
                Some(h),
                serde_json::json!({"status": "unreachable", "silent_for_secs": silence_secs}),
            );
        }
    }

    /// An audit entry was written: published as an `audit` event, and —
    /// for the changes an operator watches a host for — as a `host` or
    /// `cert` event too.
    pub fn audit(&self, e: &decnet_fleet::AuditEntry) {
        let host = e.action.starts_with("swarm.").then_some(e.target.as_str());
        self.bus.publish(
            EventTopic::Audit,
            "audit.entry",
            host,
            serde_json::to_value(crate::fleet_api::audit_view(e)).unwrap_or_default(),
        );
        if e.outcome != decnet_fleet::AuditOutcome::Ok {
            return;
        }
        let derived = match e.action.as_str() {
            "swarm.enroll" | "swarm.join" => Some((EventTopic::Host, "host.enrolled")),
            "swarm.suspect" => Some((EventTopic::Host, "host.suspect")),
            "swarm.burn" => Some((EventTopic::Host, "host.burned")),
            "swarm.decommission" => Some((EventTopic::Host, "host.decommissioned")),
            "swarm.renew" => Some((EventTopic::Cert, "cert.renewed")),
            "swarm.revoke" | "swarm.retire" => Some((EventTopic::Cert, "cert.revoked")),
            _ => None,
        };
        if let Some((topic, kind)) = derived {
            self.bus.publish(
                topic,
                kind,
                host,
                serde_json::json!({"actor": e.actor, "detail": e.detail}),
            );
        }
    }
}

/// The log listener's view of the bus: each line written becomes a
/// `log.line` event of its peer's host (the JSON record as written: the
/// peer CN, the decky's claimed hostname, app, message).
pub struct LogTap(pub Arc<EventBus>);

impl decnet_log_relay::listener::LineTap for LogTap {
    fn wants(&self) -> bool {
        self.0.wants_logs()
    }

    fn lines(&self, cn: &str, json: &[u8]) {
        for line in json.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if self
                .0
                .publish(EventTopic::Log, "log.line", Some(cn), record)
                .is_none()
            {
                // Over the rate: the rest of this batch is dropped too.
                break;
            }
        }
    }
}

static INSTALLED: OnceLock<Events> = OnceLock::new();

/// Make `events` the process's bus (`master serve` does, once): jobs and
/// the log listener publish on it without being handed it.
pub fn install(events: &Events) {
    let _ = INSTALLED.set(events.clone());
}

/// The process's bus, when `master serve` runs in it.
pub fn installed() -> Option<&'static Events> {
    INSTALLED.get()
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_follower_resumes_after_its_last_event_and_learns_of_a_gap() {
        let bus = EventBus::new(16);
        let first = bus
            .publish(EventTopic::Host, "host.silent", Some("w1"), json!({}))
            .unwrap();
        for _ in 0..3 {
            bus.publish(EventTopic::Job, "job.line", None, json!({}));
        }
        let s = bus.subscribe(Some(first));
        assert_eq!(s.replay.len(), 3);
        assert!(!s.gap);
        assert!(s.replay.windows(2).all(|w| w[0].id < w[1].id));
        // 40 more: the backlog (16) no longer holds what follows `first`.
        for _ in 0..40 {
            bus.publish(EventTopic::Job, "job.line", None, json!({}));
        }
        let s = bus.subscribe(Some(first));
        assert!(s.gap, "events after {first} were dropped from the backlog");
        assert_eq!(s.replay.len(), 16);
        // An id from before this daemon started: a gap.
        let s = bus.subscribe(Some(1));
        assert!(s.gap);
        // Up to date: nothing to replay, no gap.
        let last = bus.recent(1)[0].id;
        let s = bus.subscribe(Some(last));
        assert!(s.replay.is_empty() && !s.gap);
    }

    #[tokio::test]
    async fn live_events_reach_a_subscriber_once() {
        let bus = EventBus::new(64);
        let mut s = bus.subscribe(None);
        let id = bus
            .publish(
                EventTopic::Cert,
                "cert.renewed",
                Some("w2"),
                json!({"a": 1}),
            )
            .unwrap();
        let e = s.live.recv().await.unwrap();
        assert_eq!(e.id, id);
        assert_eq!(e.kind, "cert.renewed");
        assert_eq!(e.host.as_deref(), Some("w2"));
    }

    #[test]
    fn log_lines_are_bounded_per_second() {
        let bus = EventBus::new(64);
        let sent = (0..LOG_EVENTS_PER_SECOND + 500)
            .filter(|_| {
                bus.publish(EventTopic::Log, "log.line", Some("w1"), json!({}))
                    .is_some()
            })
            .count() as u64;
        // Within one or two seconds of wall time.
        assert!(
            (LOG_EVENTS_PER_SECOND..=2 * LOG_EVENTS_PER_SECOND).contains(&sent),
            "{sent}"
        );
        assert!(
            bus.publish(EventTopic::Host, "host.back", None, json!({}))
                .is_some()
        );
    }

    #[test]
    fn heartbeats_publish_changes_not_beats() {
        let w = HostWatch::default();
        let d1 = json!([{"name": "web", "state": "pending", "restarts": 0}]);
        assert!(w.heartbeat("w1", &d1).is_empty(), "first beat: no change");
        assert!(w.heartbeat("w1", &d1).is_empty(), "same state: nothing");
        let d2 = json!([{"name": "web", "state": "running", "restarts": 0, "forbidden": 3}]);
        let c = w.heartbeat("w1", &d2);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(matches!(c[0], HostChange::Deckies(_)));
        assert_eq!(
            c[1],
            HostChange::Forbidden {
                decky: "web".into(),
                new: 3,
                total: 3
            }
        );
        assert!(w.heartbeat("w1", &d2).is_empty());
        w.silent("w1");
        assert_eq!(w.heartbeat("w1", &d2), vec![HostChange::Back]);
        assert!(
            w.heartbeat("w1", &json!([]))
                .iter()
                .any(|c| matches!(c, HostChange::Deckies(_)))
        );
    }
}
