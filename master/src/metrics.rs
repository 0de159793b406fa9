//! The master's series: its fleet as the control API sees it.
//!
//! | series | what |
//! |---|---|
//! | `decnet_heartbeats_received_total{host}` | heartbeats accepted |
//! | `decnet_hosts{status}` | hosts by status (`enrolled`, `active`, `unreachable`, `decommissioned`, `suspect`, `burned`) |
//! | `decnet_host_last_heartbeat_timestamp_seconds{host}` | when each host was last heard from |
//! | `decnet_host_heartbeat_age_seconds{host}` | seconds since then, at the scrape |
//! | `decnet_host_clock_skew_seconds{host}` | the host's clock minus the master's, from its last heartbeat |
//! | `decnet_renewals_served_total{role,outcome}` | renewal requests (`renewed`, or the refusal kind) |
//! | `decnet_joins_total{outcome}` | join requests (`ok`, `refused`, `rate_limited`, `bad_request`) |
//! | `decnet_worker_requests_limited_total{role}` | worker requests refused with 429 by the per-certificate or per-connection rate limit |
//!
//! The per-host view is kept in memory: every accepted heartbeat updates
//! it, and it is reloaded from the fleet database every
//! [`RELOAD`] (enrolments, decommissions and the silent-host marks of
//! other processes show up within that).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use decnet_fleet::{FleetDb, HostRecord, HostStatus};
use decnet_telemetry::metrics::{register, register_collector};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// How often the per-host view is reloaded from the database.
pub const RELOAD: Duration = Duration::from_secs(30);

/// `host`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    /// The host's name.
    pub host: String,
}

/// `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The host status.
    pub status: String,
}

/// `role`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenewalLabels {
    /// The renewing certificate's role.
    pub role: String,
    /// `renewed`, or why it was refused.
    pub outcome: String,
}

/// `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// How it went.
    pub outcome: String,
}

/// What the master knows of one host.
#[derive(Clone, Debug)]
struct HostView {
    status: HostStatus,
    last_seen: Option<i64>,
    clock_skew_ms: Option<i64>,
}

/// The master's series.
#[derive(Debug)]
pub struct MasterMetrics {
    /// Heartbeats by host.
    pub heartbeats: Family<HostLabel, Counter>,
    /// Renewals served.
    pub renewals: Family<RenewalLabels, Counter>,
    /// Joins.
    pub joins: Family<OutcomeLabel, Counter>,
    /// Worker requests over their rate.
    pub worker_limited: Family<RoleLabel, Counter>,
    hosts: Mutex<BTreeMap<String, HostView>>,
}

/// `role`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    /// The certificate's role.
    pub role: String,
}

/// The master's series, registered on first use.
pub fn master_metrics() -> &'static MasterMetrics {
    static M: OnceLock<MasterMetrics> = OnceLock::new();
    static COLLECTOR: OnceLock<()> = OnceLock::new();
    let m = M.get_or_init(|| {
        let m = MasterMetrics {
            heartbeats: Family::default(),
            renewals: Family::default(),
            joins: Family::default(),
            worker_limited: Family::default(),
            hosts: Mutex::new(BTreeMap::new()),
        };
        register(
            "decnet_worker_requests_limited",
            "Worker requests refused by the per-certificate or per-connection rate limit, by role",
            m.worker_limited.clone(),
        );
        register(
            "decnet_heartbeats_received",
            "Heartbeats accepted, by host",
            m.heartbeats.clone(),
        );
        register(
            "decnet_renewals_served",
            "Certificate renewal requests, by role and outcome",
            m.renewals.clone(),
        );
        register(
            "decnet_joins",
            "Token join requests, by outcome",
            m.joins.clone(),
        );
        // Known series from the start, at 0.
        for outcome in ["ok", "refused", "rate_limited", "bad_request"] {
            m.join_counter(outcome);
        }
        for role in ["agent", "updater"] {
            let _ = m.renewals.get_or_create(&RenewalLabels {
                role: role.into(),
                outcome: "renewed".into(),
            });
        }
        m
    });
    COLLECTOR.get_or_init(|| register_collector(Box::new(FleetCollector)));
    m
}

impl MasterMetrics {
    /// An accepted heartbeat of `host`, with its clock skew if it said.
    pub fn heartbeat(&self, host: &str, now: i64, clock_skew_ms: Option<i64>) {
        self.heartbeats
            .get_or_create(&HostLabel {
                host: host.to_string(),
            })
            .inc();
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let v = hosts.entry(host.to_string()).or_insert(HostView {
            status: HostStatus::Active,
            last_seen: None,
            clock_skew_ms: None,
        });
        if v.status != HostStatus::Suspect {
            v.status = HostStatus::Active;
        }
        v.last_seen = Some(now);
        if clock_skew_ms.is_some() {
            v.clock_skew_ms = clock_skew_ms;
        }
    }

    /// Count a renewal request.
    pub fn renewal(&self, role: &str, outcome: &str) {
        self.renewals
            .get_or_create(&RenewalLabels {
                role: role.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Count a worker request refused by its rate limit.
    pub fn worker_rate_limited(&self, role: &str) {
        self.worker_limited
            .get_or_create(&RoleLabel { role: role.into() })
            .inc();
    }

    /// Count a join request.
    pub fn join(&self, outcome: &str) {
        self.join_counter(outcome).inc();
    }

    fn join_counter(&self, outcome: &str) -> Counter {
        self.joins
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .clone()
    }

    /// Replace the per-host view with the database's.
    pub fn load_hosts(&self, records: &[HostRecord]) {
        let fresh: BTreeMap<String, HostView> = records
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    HostView {
                        status: h.status,
                        last_seen: h.last_seen,
                        clock_skew_ms: h.clock_skew_ms,
                    },
                )
            })
            .collect();
        *self.hosts.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
    }
}

/// Reload the per-host view from `db` now and every [`RELOAD`].
pub async fn keep_host_view(db: FleetDb) {
    loop {
        match db.hosts().await {
            Ok(hosts) => master_metrics().load_hosts(&hosts),
            Err(e) => tracing::warn!(error = %e, "cannot load the hosts for the metrics"),
        }
        tokio::time::sleep(RELOAD).await;
    }
}

/// Encodes the per-host series at each scrape.
#[derive(Debug)]
struct FleetCollector;

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let hosts = master_metrics()
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = decnet_telemetry::metrics::unix_now();
        let by_status: Family<StatusLabel, Gauge> = Family::default();
        for s in [
            HostStatus::Enrolled,
            HostStatus::Active,
            HostStatus::Unreachable,
            HostStatus::Decommissioned,
            HostStatus::Suspect,
            HostStatus::Burned,
        ] {
            let _ = by_status.get_or_create(&StatusLabel {
                status: s.as_str().into(),
            });
        }
        let last: Family<HostLabel, Gauge> = Family::default();
        let age: Family<HostLabel, Gauge> = Family::default();
        let skew: Family<HostLabel, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        for (name, v) in &hosts {
            by_status
                .get_or_create(&StatusLabel {
                    status: v.status.as_str().into(),
                })
                .inc();
            if v.status == HostStatus::Decommissioned {
                continue;
            }
            let l = HostLabel { host: name.clone() };
            if let Some(seen) = v.last_seen {
                last.get_or_create(&l).set(seen);
                age.get_or_create(&l).set((now - seen).max(0));
            }
            if let Some(ms) = v.clock_skew_ms {
                skew.get_or_create(&l).set(ms as f64 / 1000.0);
            }
        }
        by_status.encode(encoder.encode_descriptor(
            "decnet_hosts",
            "Hosts of the fleet, by status",
            None,
            by_status.metric_type(),
        )?)?;
        last.encode(encoder.encode_descriptor(
            "decnet_host_last_heartbeat_timestamp_seconds",
            "When each host was last heard from (unix seconds)",
            None,
            last.metric_type(),
        )?)?;
        age.encode(encoder.encode_descriptor(
            "decnet_host_heartbeat_age_seconds",
            "Seconds since each host was last heard from",
            None,
            age.metric_type(),
        )?)?;
        skew.encode(encoder.encode_descriptor(
            "decnet_host_clock_skew_seconds",
            "Each host's clock minus the master's, from its last heartbeat",
            None,
            skew.metric_type(),
        )?)?;
        Ok(())
    }
}
