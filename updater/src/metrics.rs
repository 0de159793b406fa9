//! The updater's series: how updates went, how long probes take, reverts.
//!
//! | series | what |
//! |---|---|
//! | `decnet_updates_total{op,outcome}` | operations (`update`, `rollback`, `self_update`) by outcome (`ok`, `reverted`, `refused`, `not_found`, `failed`) |
//! | `decnet_reverts_total{reason}` | automatic reverts (`unhealthy` after an update or rollback, `recovery` of an interrupted one at start, `self_update` when a new updater did not come up) |
//! | `decnet_probe_duration_seconds` | health probes of the agent, from the first attempt to the verdict |
//! | `decnet_probes_total{healthy}` | probes by verdict |
//! | `decnet_uploads_total{received}` | release tarballs received: `extracted` while they streamed in, or `spooled` to be extracted once verified (another upload being extracted early, a disk without room for a whole release, or a keyring and no valid signed manifest ahead of the tarball) |

use std::sync::OnceLock;

use decnet_telemetry::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::pipeline::UpdateError;

/// `op`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    /// `update`, `rollback` or `self_update`.
    pub op: String,
    /// How it ended.
    pub outcome: String,
}

/// `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// `healthy`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// `true` or `false`.
    pub healthy: String,
}

/// `received`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceivedLabel {
    /// `extracted` or `spooled`.
    pub received: String,
}

/// The updater's series.
#[derive(Debug)]
pub struct UpdaterMetrics {
    /// Operations by outcome.
    pub updates: Family<UpdateLabels, Counter>,
    /// Automatic reverts.
    pub reverts: Family<ReasonLabel, Counter>,
    /// Probe durations.
    pub probe_duration: Histogram,
    /// Probes by verdict.
    pub probes: Family<VerdictLabel, Counter>,
    /// Uploads by how they were received.
    pub uploads: Family<ReceivedLabel, Counter>,
}

/// The updater's series, registered on first use.
pub fn updater_metrics() -> &'static UpdaterMetrics {
    static M: OnceLock<UpdaterMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = UpdaterMetrics {
            updates: Family::default(),
            reverts: Family::default(),
            // 0.1 s .. ~100 s: a healthy agent answers in well under a
            // second; an unhealthy one uses every attempt.
            probe_duration: Histogram::new([
                0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            probes: Family::default(),
            uploads: Family::default(),
        };
        register(
            "decnet_updates",
            "Update, rollback and self-update operations, by outcome",
            m.updates.clone(),
        );
        register(
            "decnet_reverts",
            "Automatic reverts to the previous release, by reason",
            m.reverts.clone(),
        );
        register(
            "decnet_probe_duration_seconds",
            "Health probes of the agent, from the first attempt to the verdict",
            m.probe_duration.clone(),
        );
        register(
            "decnet_probes",
            "Health probes of the agent, by verdict",
            m.probes.clone(),
        );
        register(
            "decnet_uploads",
            "Release tarballs received, by whether they were extracted while they streamed in",
            m.uploads.clone(),
        );
        // Every known series from the start (at 0), so rates and alerts
        // work before the first event.
        for op in ["update", "rollback", "self_update"] {
            for outcome in ["ok", "reverted", "refused", "not_found", "failed"] {
                let _ = m.updates.get_or_create(&UpdateLabels {
                    op: op.into(),
                    outcome: outcome.into(),
                });
            }
        }
        for reason in ["unhealthy", "recovery", "self_update"] {
            let _ = m.reverts.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        for healthy in ["true", "false"] {
            let _ = m.probes.get_or_create(&VerdictLabel {
                healthy: healthy.into(),
            });
        }
        for received in ["extracted", "spooled"] {
            let _ = m.uploads.get_or_create(&ReceivedLabel {
                received: received.into(),
            });
        }
        m
    })
}

/// Count one finished operation.
pub fn record_operation<T>(op: &str, result: &Result<T, UpdateError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(UpdateError::RolledBack(_)) => "reverted",
        Err(UpdateError::Refused(_)) => "refused",
        Err(UpdateError::NotFound(_)) => "not_found",
        Err(UpdateError::Failed(f)) if f.rolled_back => "reverted",
        Err(UpdateError::Failed(_)) => "failed",
    };
    updater_metrics()
        .updates
        .get_or_create(&UpdateLabels {
            op: op.into(),
            outcome: outcome.into(),
        })
        .inc();
}

/// Count one automatic revert.
pub fn record_revert(reason: &str) {
    updater_metrics()
        .reverts
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .inc();
}

/// Record one received upload: a log line and the count together.
pub fn record_upload(target: decnet_pki::signing::ReleaseTarget, bytes: u64, extracted: bool) {
    tracing::info!(
        %target,
        bytes,
        extracted_while_receiving = extracted,
        "release upload received"
    );
    updater_metrics()
        .uploads
        .get_or_create(&ReceivedLabel {
            received: if extracted { "extracted" } else { "spooled" }.into(),
        })
        .inc();
}

/// Record one probe.
pub fn record_probe(seconds: f64, healthy: bool) {
    let m = updater_metrics();
    m.probe_duration.observe(seconds);
    m.probes
        .get_or_create(&VerdictLabel {
            healthy: healthy.to_string(),
        })
        .inc();
}
