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
//! every event of the new daemon and is answered with a gap too.
//!
//! What a worker (or a decky on it) can make the bus hold is bounded: each
//! event is serialized once, at most [`MAX_EVENT_BYTES`] (larger details
//! are replaced by their size), the backlog holds at most [`BACKLOG`]
//! events and [`BACKLOG_BYTES`], and the events a worker's heartbeats and
//! log lines cause are rate-limited per host ([`WORKER_EVENTS_PER_SECOND`],
//! [`LOG_LINES_PER_HOST_PER_SECOND`]) under a global log-line rate
//! ([`LOG_EVENTS_PER_SECOND`]). Log lines are published only while someone
//! follows them: the log listener's throughput never waits on followers.

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
/// How many bytes (serialized) the replay backlog holds.
pub const BACKLOG_BYTES: usize = 64 << 20;
/// The largest event (serialized); a larger one keeps its kind and host
/// and says how large its details were.
pub const MAX_EVENT_BYTES: usize = 16 << 10;
/// At most this many log-line events a second in all (the rest are
/// counted as dropped, never queued).
pub const LOG_EVENTS_PER_SECOND: u64 = 2_000;
/// At most this many log-line events a second from one host: one noisy
/// decky does not take the whole rate from the others.
pub const LOG_LINES_PER_HOST_PER_SECOND: u64 = 200;
/// At most this many events a second that one host's heartbeats cause
/// (decky changes, forbidden attempts).
pub const WORKER_EVENTS_PER_SECOND: u64 = 4;
/// A log line's message is cut to this many bytes in its event.
pub const MAX_LOG_MESSAGE: usize = 4096;
/// At most this many deckies of one heartbeat are looked at.
pub const MAX_WATCHED_DECKIES: usize = 256;

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
    /// `decnet_events_dropped_total{topic}`: over a rate, or a follower
    /// too slow to keep up (`lagged`, counted per event missed).
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
            "Events not delivered: over a rate (log lines, a host's heartbeat changes), or missed by a follower too slow to keep up",
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

fn dropped(topic: &str) {
    event_metrics()
        .dropped
        .get_or_create(&TopicLabel {
            topic: topic.into(),
        })
        .inc();
}

/// An event as the bus holds it: the event and its JSON, made once (every
/// follower sends the same bytes).
#[derive(Debug)]
pub struct Published {
    /// The event.
    pub event: Event,
    /// Its JSON.
    pub json: String,
}

impl std::ops::Deref for Published {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// A per-second counter per key, with bounded memory.
#[derive(Default)]
struct PerSecond {
    second: i64,
    counts: HashMap<String, u64>,
}

impl PerSecond {
    /// Count one for `key` in `second`; `false` when over `limit`.
    fn admit(&mut self, key: &str, second: i64, limit: u64) -> bool {
        if self.second != second {
            self.second = second;
            self.counts.clear();
        }
        if let Some(n) = self.counts.get_mut(key) {
            *n += 1;
            return *n <= limit;
        }
        // Within one second, at most so many distinct keys (hosts).
        if self.counts.len() >= 100_000 {
            return false;
        }
        self.counts.insert(key.to_string(), 1);
        limit >= 1
    }
}

struct Backlog {
    events: VecDeque<Arc<Published>>,
    bytes: usize,
    next_id: u64,
    /// The global log-line rate window: its second and the events in it.
    log_window: (i64, u64),
    /// Per-host rates of worker-caused events.
    per_host: PerSecond,
    per_host_logs: PerSecond,
}

/// The bus (cheap to share: hold it in an `Arc`).
pub struct EventBus {
    backlog: Mutex<Backlog>,
    tx: broadcast::Sender<Arc<Published>>,
    log_followers: AtomicUsize,
    capacity: usize,
    capacity_bytes: usize,
    /// Cancelled when the daemon stops: every open stream ends.
    pub closing: CancellationToken,
    published: AtomicU64,
}

/// What a new follower gets: the events after its last one still in the
/// backlog, whether some it asked for are gone, and the live feed.
pub struct Subscription {
    /// Missed events to send first, oldest first.
    pub replay: Vec<Arc<Published>>,
    /// Events after the follower's last one are gone from the backlog.
    pub gap: bool,
    /// Everything published from now on.
    pub live: broadcast::Receiver<Arc<Published>>,
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Serialize `event`, replacing details larger than [`MAX_EVENT_BYTES`]
/// by their size. Pure.
pub fn serialized(mut event: Event) -> Published {
    let mut json = serde_json::to_string(&event).unwrap_or_default();
    if json.len() > MAX_EVENT_BYTES {
        event.data = serde_json::json!({ "truncated": true, "bytes": json.len() });
        json = serde_json::to_string(&event).unwrap_or_default();
    }
    Published { event, json }
}

impl EventBus {
    /// A bus whose backlog holds `capacity` events and [`BACKLOG_BYTES`].
    pub fn new(capacity: usize) -> Arc<EventBus> {
        Self::with_bytes(capacity, BACKLOG_BYTES)
    }

    /// A bus whose backlog holds `capacity` events and `bytes` bytes.
    pub fn with_bytes(capacity: usize, bytes: usize) -> Arc<EventBus> {
        let capacity = capacity.max(16);
        let (tx, _) = broadcast::channel(capacity);
        let first = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Arc::new(EventBus {
            backlog: Mutex::new(Backlog {
                events: VecDeque::with_capacity(capacity.min(1024)),
                bytes: 0,
                next_id: first,
                log_window: (0, 0),
                per_host: PerSecond::default(),
                per_host_logs: PerSecond::default(),
            }),
            tx,
            log_followers: AtomicUsize::new(0),
            capacity,
            capacity_bytes: bytes.max(MAX_EVENT_BYTES * 2),
            closing: CancellationToken::new(),
            published: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish an event; returns its id (`None`: a log line over a rate).
    pub fn publish(
        &self,
        topic: EventTopic,
        kind: &str,
        host: Option<&str>,
        data: serde_json::Value,
    ) -> Option<u64> {
        self.publish_inner(topic, kind, host, data, None)
    }

    /// Publish an event a worker caused (its heartbeat, its log line):
    /// at most `per_second` of them a second from `host` (`None`: over it,
    /// counted as dropped).
    pub fn publish_from_worker(
        &self,
        topic: EventTopic,
        kind: &str,
        host: &str,
        data: serde_json::Value,
        per_second: u64,
    ) -> Option<u64> {
        self.publish_inner(topic, kind, Some(host), data, Some(per_second))
    }

    fn publish_inner(
        &self,
        topic: EventTopic,
        kind: &str,
        host: Option<&str>,
        data: serde_json::Value,
        per_host: Option<u64>,
    ) -> Option<u64> {
        let at_ms = unix_millis();
        let second = at_ms / 1000;
        let mut b = self.lock();
        let admitted = match (topic, per_host, host) {
            (EventTopic::Log, _, _)
                if b.log_window.0 == second && b.log_window.1 >= LOG_EVENTS_PER_SECOND =>
            {
                false
            }
            (EventTopic::Log, limit, Some(h)) => {
                b.per_host_logs
                    .admit(h, second, limit.unwrap_or(LOG_LINES_PER_HOST_PER_SECOND))
            }
            (_, Some(limit), Some(h)) => b.per_host.admit(h, second, limit),
            _ => true,
        };
        if !admitted {
            drop(b);
            dropped(topic.as_str());
            return None;
        }
        if topic == EventTopic::Log {
            if b.log_window.0 != second {
                b.log_window = (second, 0);
            }
            b.log_window.1 += 1;
        }
        let id = b.next_id;
        b.next_id += 1;
        // Serialized once, here (events are small and few: the lock is
        // held for microseconds), so the id and the JSON always agree.
        let p = serialized(Event {
            id,
            at_ms,
            topic,
            kind: kind.to_string(),
            host: host.map(str::to_string),
            data,
        });
        let event = Arc::new(p);
        b.bytes += event.json.len();
        b.events.push_back(event.clone());
        while b.events.len() > self.capacity || b.bytes > self.capacity_bytes {
            match b.events.pop_front() {
                Some(old) => b.bytes -= old.json.len(),
                None => break,
            }
        }
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
                let replay: Vec<Arc<Published>> =
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
    pub fn recent(&self, n: usize) -> Vec<Arc<Published>> {
        let b = self.lock();
        let skip = b.events.len().saturating_sub(n);
        b.events.iter().skip(skip).cloned().collect()
    }

    /// The backlog's size: events and bytes.
    pub fn held(&self) -> (usize, usize) {
        let b = self.lock();
        (b.events.len(), b.bytes)
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

    /// The id of the newest event published (the one before the next):
    /// a page rendered from the database after reading it follows the bus
    /// `after` it, so what changes between the render and its stream's
    /// start is replayed, not missed.
    pub fn newest_id(&self) -> u64 {
        self.lock().next_id.saturating_sub(1)
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

/// One decky's forbidden attempts since the last heartbeat.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ForbiddenAttempts {
    /// The decky.
    pub decky: String,
    /// Attempts since the last heartbeat.
    pub new: u64,
    /// Attempts in all (as the agent counts them).
    pub total: u64,
}

/// A change a heartbeat shows, for the bus.
#[derive(Debug, PartialEq)]
pub enum HostChange {
    /// The host was marked silent and beats again.
    Back,
    /// Its deckies changed state (or appeared, or went): the new list,
    /// as the master summarizes it (name, state, restarts; capped).
    Deckies(serde_json::Value),
    /// Deckies made forbidden connection attempts since the last beat
    /// (at most 16 listed, the most active first).
    Forbidden {
        /// Attempts since the last beat, all deckies together.
        new: u64,
        /// The deckies.
        deckies: Vec<ForbiddenAttempts>,
    },
}

use decnet_api::worker::capped;

/// The deckies a heartbeat reports: name → (state, restarts, forbidden),
/// at most [`MAX_WATCHED_DECKIES`], names of at most 64 bytes.
fn decky_rows(deckies: &serde_json::Value) -> HashMap<String, (String, u64, u64)> {
    deckies
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    let name = d.get("name")?.as_str()?;
                    if name.is_empty() || name.len() > 64 {
                        return None;
                    }
                    let state = capped(d.get("state").and_then(|s| s.as_str()).unwrap_or(""), 32);
                    let restarts = d.get("restarts").and_then(|r| r.as_u64()).unwrap_or(0);
                    let forbidden = d.get("forbidden").and_then(|r| r.as_u64()).unwrap_or(0);
                    Some((name.to_string(), (state, restarts, forbidden)))
                })
                .take(MAX_WATCHED_DECKIES)
                .collect()
        })
        .unwrap_or_default()
}

/// The decky list a `host.deckies` event carries. Pure.
fn summary(rows: &HashMap<String, (String, u64, u64)>) -> serde_json::Value {
    let mut list: Vec<_> = rows.iter().collect();
    list.sort_by(|a, b| a.0.cmp(b.0));
    serde_json::Value::Array(
        list.into_iter()
            .map(|(name, (state, restarts, _))| {
                serde_json::json!({"name": name, "state": state, "restarts": restarts})
            })
            .collect(),
    )
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
                    changes.push(HostChange::Deckies(summary(&now)));
                }
                let mut forbidden: Vec<ForbiddenAttempts> = now
                    .iter()
                    .filter_map(|(name, (_, _, f))| {
                        let was = before.get(name).map(|b| b.2).unwrap_or(0);
                        (*f > was).then(|| ForbiddenAttempts {
                            decky: name.clone(),
                            new: f - was,
                            total: *f,
                        })
                    })
                    .collect();
                if !forbidden.is_empty() {
                    let new = forbidden
                        .iter()
                        .map(|f| f.new)
                        .fold(0u64, u64::saturating_add);
                    forbidden.sort_by(|a, b| b.new.cmp(&a.new).then(a.decky.cmp(&b.decky)));
                    forbidden.truncate(16);
                    changes.push(HostChange::Forbidden {
                        new,
                        deckies: forbidden,
                    });
                }
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

/// The log listener's view of the bus: each line written becomes a
/// `log.line` event of its peer's host (the JSON record as written: the
/// peer CN, the decky's claimed hostname, app, message cut to
/// [`MAX_LOG_MESSAGE`]).
pub struct LogTap(pub Arc<EventBus>);

impl decnet_log_relay::listener::LineTap for LogTap {
    fn wants(&self) -> bool {
        self.0.wants_logs()
    }

    fn lines(&self, cn: &str, json: &[u8]) {
        for line in json.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(mut record) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(msg) = record.get_mut("msg")
                && let Some(text) = msg.as_str()
                && text.len() > MAX_LOG_MESSAGE
            {
                *msg = serde_json::Value::String(format!("{}…", capped(text, MAX_LOG_MESSAGE)));
            }
            if self
                .0
                .publish_from_worker(
                    EventTopic::Log,
                    "log.line",
                    cn,
                    record,
                    LOG_LINES_PER_HOST_PER_SECOND,
                )
                .is_none()
            {
                // Over a rate: the rest of this batch is dropped too.
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
                // The master's own observation: never rate-limited away.
                HostChange::Back => self.bus.publish(
                    EventTopic::Host,
                    "host.back",
                    Some(host),
                    serde_json::json!({"status": "active"}),
                ),
                HostChange::Deckies(d) => self.bus.publish_from_worker(
                    EventTopic::Host,
                    "host.deckies",
                    host,
                    serde_json::json!({ "deckies": d }),
                    WORKER_EVENTS_PER_SECOND,
                ),
                HostChange::Forbidden { new, deckies } => self.bus.publish_from_worker(
                    EventTopic::Host,
                    "decky.forbidden",
                    host,
                    serde_json::json!({"new": new, "deckies": deckies}),
                    WORKER_EVENTS_PER_SECOND,
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
    async fn live_events_reach_a_subscriber_once_serialized_with_their_id() {
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
        let parsed: Event = serde_json::from_str(&e.json).unwrap();
        assert_eq!(parsed, e.event, "the JSON is the event, id included");
    }

    #[test]
    fn what_a_worker_makes_the_bus_hold_is_bounded() {
        // A huge detail is replaced by its size.
        let bus = EventBus::with_bytes(1000, 256 << 10);
        let big = "x".repeat(MAX_EVENT_BYTES * 4);
        bus.publish(
            EventTopic::Host,
            "host.deckies",
            Some("w1"),
            json!({ "d": big }),
        )
        .unwrap();
        let e = &bus.recent(1)[0];
        assert!(e.json.len() < 512, "{}", e.json.len());
        assert_eq!(e.data["truncated"], true);
        // The backlog keeps its byte bound.
        for i in 0..1000 {
            bus.publish(
                EventTopic::Audit,
                "audit.entry",
                None,
                json!({ "p": "y".repeat(8000), "i": i }),
            );
        }
        let (n, bytes) = bus.held();
        assert!(bytes <= 256 << 10, "{bytes}");
        assert!(n < 1000 && n > 10, "{n}");
        // One host's heartbeat events are rate-limited, another's are not.
        let bus = EventBus::new(1000);
        let sent = (0..50)
            .filter(|_| {
                bus.publish_from_worker(EventTopic::Host, "host.deckies", "w1", json!({}), 4)
                    .is_some()
            })
            .count();
        assert!((4..=8).contains(&sent), "{sent}");
        assert!(
            bus.publish_from_worker(EventTopic::Host, "host.deckies", "w2", json!({}), 4)
                .is_some()
        );
    }

    #[test]
    fn log_lines_are_bounded_per_second_and_per_host() {
        let bus = EventBus::new(64);
        let per_host = (0..1000)
            .filter(|_| {
                bus.publish_from_worker(EventTopic::Log, "log.line", "w1", json!({}), 200)
                    .is_some()
            })
            .count() as u64;
        assert!((200..=400).contains(&per_host), "{per_host}");
        let all = (0..LOG_EVENTS_PER_SECOND + 500)
            .filter(|i| {
                bus.publish_from_worker(
                    EventTopic::Log,
                    "log.line",
                    &format!("h{}", i % 100),
                    json!({}),
                    200,
                )
                .is_some()
            })
            .count() as u64;
        // Within one or two seconds of wall time.
        assert!(all <= 2 * LOG_EVENTS_PER_SECOND, "{all}");
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
                new: 3,
                deckies: vec![ForbiddenAttempts {
                    decky: "web".into(),
                    new: 3,
                    total: 3
                }]
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

    #[test]
    fn a_hostile_heartbeat_is_summarized_and_capped() {
        let w = HostWatch::default();
        w.heartbeat("w1", &json!([]));
        let many: Vec<_> = (0..30_000)
            .map(|i| json!({"name": format!("d{i}"), "state": "s".repeat(10_000), "forbidden": i}))
            .chain([json!({"name": "n".repeat(100_000), "state": "x"})])
            .collect();
        let c = w.heartbeat("w1", &serde_json::Value::Array(many));
        let HostChange::Deckies(d) = &c[0] else {
            panic!("{c:?}")
        };
        let list = d.as_array().unwrap();
        assert_eq!(list.len(), MAX_WATCHED_DECKIES);
        assert!(
            list.iter()
                .all(|x| x["state"].as_str().unwrap().len() <= 32)
        );
        let HostChange::Forbidden { deckies, .. } = &c[1] else {
            panic!("{c:?}")
        };
        assert_eq!(deckies.len(), 16, "one event listing the most active");
    }
}
