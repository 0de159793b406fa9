//! Fleet rollouts through the updaters: canaries first, bounded parallelism,
//! halt at the first failure (unless told to continue), per-host progress,
//! a summary table, update history and audit records.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use decnet_api::UpdateOutcome;
use decnet_fleet::{
    AuditEntry, AuditOutcome, CertRole, FleetDb, HostRecord, UpdateKind, UpdateRecord, unix_now,
};
use decnet_pki::CaLayout;
use decnet_swarm_client::updater::{ReleaseUpload, UpdateOutcome as PushOutcome};
use decnet_swarm_client::{ClientError, UpdaterClient, WorkerPool};

use crate::fleet_ops::{Emit, select_hosts, worker_pool};
use crate::release::PackedRelease;
use tokio_util::sync::CancellationToken;

/// How to roll out.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RolloutPlan {
    /// Hosts by name (empty = all live hosts).
    pub hosts: Vec<String>,
    /// Install even when the version is below the active one.
    pub allow_downgrade: bool,
    /// Hosts updated at once.
    pub max_parallel: usize,
    /// How many hosts go first, alone, as canaries.
    pub canary: usize,
    /// Also replace each updater's own binary.
    pub include_self: bool,
    /// Keep going after a failure.
    pub continue_on_error: bool,
}

/// One host's result (the wire type).
pub use decnet_api::{ProbeFailure, UpdateResult as HostResult};
pub use decnet_cli::render::{print_rollback, print_rollout, render_failure};

/// Most lines of a failed agent's output kept in a result.
const AGENT_OUTPUT_LINES: usize = 40;

/// The evidence in an updater's failure answer (`None`: it has none).
pub fn failure_from_answer(body: &serde_json::Value) -> Option<ProbeFailure> {
    let lines = |v: &serde_json::Value| -> Vec<String> {
        v["transcript"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l.as_str())
                    .take(64)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    // Worker text, made inert line by line here, so --json carries no
    // escape codes either.
    let inert = |l: &str| decnet_log_relay::neutralize::neutralize(l).into_owned();
    let kept: Vec<String> = body["stderr"]
        .as_str()
        .unwrap_or("")
        .lines()
        .map(inert)
        .collect();
    let f = ProbeFailure {
        probe: lines(&body["probe"]).iter().map(|l| inert(l)).collect(),
        restore_probe: lines(&body["restore_probe"])
            .iter()
            .map(|l| inert(l))
            .collect(),
        agent_output: kept[kept.len().saturating_sub(AGENT_OUTPUT_LINES)..].join("\n"),
    };
    (!f.probe.is_empty() || !f.restore_probe.is_empty() || !f.agent_output.is_empty()).then_some(f)
}

/// The evidence in an updater's error answer (a 500 carries it too).
pub fn failure_from_error(e: &ClientError) -> Option<ProbeFailure> {
    match e {
        ClientError::Status {
            body: Some(body), ..
        } => failure_from_answer(body),
        _ => None,
    }
}

/// The stored form of an outcome (the update history's column).
fn stored(o: UpdateOutcome) -> decnet_fleet::UpdateOutcome {
    match o {
        UpdateOutcome::Updated => decnet_fleet::UpdateOutcome::Updated,
        UpdateOutcome::RolledBack => decnet_fleet::UpdateOutcome::RolledBack,
        UpdateOutcome::Failed => decnet_fleet::UpdateOutcome::Failed,
        UpdateOutcome::Skipped => decnet_fleet::UpdateOutcome::Skipped,
    }
}

/// A client of `host`'s updater (fails closed without a recorded fingerprint).
pub fn updater_client(pool: &WorkerPool, host: &HostRecord) -> Result<UpdaterClient, ClientError> {
    UpdaterClient::in_pool(
        pool,
        &host.name,
        &host.address,
        host.updater_port,
        host.pins(CertRole::Updater),
    )
}

async fn update_one(
    pool: &WorkerPool,
    host: &HostRecord,
    rel: &PackedRelease,
    include_self: bool,
    allow_downgrade: bool,
) -> HostResult {
    let result = |outcome, release: Option<String>, detail: String| HostResult {
        host: host.name.clone(),
        outcome,
        release,
        detail,
        failure: None,
    };
    let client = match updater_client(pool, host) {
        Ok(c) => c,
        Err(e) => return result(UpdateOutcome::Failed, None, e.to_string()),
    };
    let up = ReleaseUpload {
        tarball: &rel.tarball,
        sha: &rel.label,
        sha256: &rel.sha256,
        manifests: &rel.manifests,
        allow_downgrade,
    };
    let mut res = match client.update(&up).await {
        Ok(PushOutcome::Updated(done)) => result(
            UpdateOutcome::Updated,
            done.release.map(|r| r.sha),
            "new release is live and healthy".into(),
        ),
        // A 409 on a first install has nothing to revert to: that is a
        // failure, not a rollback.
        Ok(PushOutcome::RolledBack(body)) if body["rolled_back"] == true => HostResult {
            failure: failure_from_answer(&body),
            ..result(
                UpdateOutcome::RolledBack,
                None,
                body["detail"]
                    .as_str()
                    .unwrap_or("release failed its health probe and was reverted")
                    .to_string(),
            )
        },
        Ok(PushOutcome::RolledBack(body)) => HostResult {
            failure: failure_from_answer(&body),
            ..result(
                UpdateOutcome::Failed,
                None,
                body["detail"]
                    .as_str()
                    .unwrap_or(
                        "release failed its health probe; there was no previous release to restore",
                    )
                    .to_string(),
            )
        },
        Err(e) => HostResult {
            failure: failure_from_error(&e),
            ..result(UpdateOutcome::Failed, None, e.to_string())
        },
    };
    if include_self && res.outcome == UpdateOutcome::Updated {
        match client.update_self(&up, Duration::from_secs(60)).await {
            // A new process answered; it must run the release pushed: the
            // previous updater answers instead when the new one crash-looped
            // and its launcher fell back (it reverted the self-update).
            Ok(h)
                if h.updater_release.as_ref().map(|r| r.sha256.as_str())
                    == Some(rel.sha256.as_str()) =>
            {
                res.detail = format!("{}; updater replaced (version {})", res.detail, h.version)
            }
            Ok(h) => {
                res.outcome = UpdateOutcome::Failed;
                res.detail = format!(
                    "agent updated, but the new updater did not come up: the previous one ({}) reverted the self-update",
                    h.updater_release
                        .map(|r| format!("release {}", r.sha))
                        .unwrap_or_else(|| "the packaged updater".into())
                );
            }
            Err(e) => {
                res.outcome = UpdateOutcome::Failed;
                res.detail = format!("agent updated, but the updater self-update failed: {e}");
            }
        }
    }
    res
}

/// Run a rollout from the CLI on the master host (progress on stdout when
/// `progress`); returns every host's result (in host order).
pub async fn rollout(
    db: &FleetDb,
    layout: &CaLayout,
    actor: &str,
    rel: &PackedRelease,
    plan: &RolloutPlan,
    progress: bool,
) -> anyhow::Result<Vec<HostResult>> {
    let pool = worker_pool(layout)?;
    let selected = select_hosts(db, &plan.hosts).await?;
    let emit: Emit = Arc::new(move |line: String| {
        if progress {
            println!("{line}");
        }
    });
    rollout_run(
        db,
        &pool,
        actor,
        rel,
        plan,
        selected,
        emit,
        CancellationToken::new(),
    )
    .await
}

/// Roll `rel` out to `selected` as `plan` says, telling `emit` each step
/// as a line, recording each host's result as `actor`, until every host
/// is done, or halted (a failure without `continue_on_error`, or
/// `cancel`: hosts not yet started are skipped). Results in host order.
#[allow(clippy::too_many_arguments)]
pub async fn rollout_run(
    db: &FleetDb,
    pool: &WorkerPool,
    actor: &str,
    rel: &PackedRelease,
    plan: &RolloutPlan,
    selected: Vec<HostRecord>,
    emit: Emit,
    cancel: CancellationToken,
) -> anyhow::Result<Vec<HostResult>> {
    let halted = Arc::new(AtomicBool::new(false));
    let mut results: Vec<HostResult> = Vec::new();
    // A host without an updater certificate cannot be updated: skipped up
    // front and said, not a failure that halts the others mid-rollout.
    let (hosts, unreachable): (Vec<HostRecord>, Vec<HostRecord>) = selected
        .into_iter()
        .partition(|h| h.updater_fingerprint.is_some());
    if !unreachable.is_empty() {
        emit(format!(
            "skipping {} host(s) without an updater certificate: {}",
            unreachable.len(),
            unreachable
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for h in &unreachable {
        let r = HostResult {
            host: h.name.clone(),
            outcome: UpdateOutcome::Skipped,
            release: None,
            detail: format!(
                "no updater certificate: issue one with `decnet swarm enroll --host {} --address ADDR --updater --reissue`",
                h.name
            ),
            failure: None,
        };
        record(db, actor, rel, plan, &r).await?;
        results.push(r);
    }
    let canaries = plan.canary.min(hosts.len());
    let batches: Vec<Vec<HostRecord>> = if canaries > 0 {
        vec![hosts[..canaries].to_vec(), hosts[canaries..].to_vec()]
    } else {
        vec![hosts.clone()]
    };
    let total = hosts.len();
    let mut done = 0usize;
    for (i, batch) in batches.into_iter().enumerate() {
        if batch.is_empty() {
            continue;
        }
        if canaries > 0 {
            emit(
                if i == 0 {
                    "== canaries =="
                } else {
                    "== rest of the fleet =="
                }
                .to_string(),
            );
        }
        let sem = crate::fleet_ops::FanOut::new(if i == 0 && canaries > 0 {
            1
        } else {
            plan.max_parallel
        });
        let mut set = tokio::task::JoinSet::new();
        for h in batch {
            let (sem, pool, halted, rel) = (sem.clone(), pool.clone(), halted.clone(), rel.clone());
            let (emit, cancel) = (emit.clone(), cancel.clone());
            let include_self = plan.include_self;
            let allow_downgrade = plan.allow_downgrade;
            let cont = plan.continue_on_error;
            set.spawn(async move {
                let _turn = sem.turn().await;
                if cancel.is_cancelled() || halted.load(Ordering::SeqCst) {
                    return HostResult {
                        host: h.name.clone(),
                        outcome: UpdateOutcome::Skipped,
                        release: None,
                        detail: if cancel.is_cancelled() {
                            "rollout cancelled".into()
                        } else {
                            "rollout halted after a failure".into()
                        },
                        failure: None,
                    };
                }
                emit(format!("{:<16} uploading {} …", h.name, rel.label));
                let r = update_one(&pool, &h, &rel, include_self, allow_downgrade).await;
                if r.outcome != UpdateOutcome::Updated && !cont {
                    halted.store(true, Ordering::SeqCst);
                }
                r
            });
        }
        while let Some(j) = set.join_next().await {
            let r = j?;
            done += 1;
            emit(format!(
                "[{done}/{total}] {:<16} {:<12} {}",
                r.host,
                r.outcome.as_str().to_uppercase(),
                crate::table::inert(&r.detail)
            ));
            record(db, actor, rel, plan, &r).await?;
            results.push(r);
        }
    }
    results.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(results)
}

/// Record `r` in the update history and the audit log.
async fn record(
    db: &FleetDb,
    actor: &str,
    rel: &PackedRelease,
    plan: &RolloutPlan,
    r: &HostResult,
) -> anyhow::Result<()> {
    db.record_update(&UpdateRecord {
        host: r.host.clone(),
        at: unix_now(),
        kind: if plan.include_self {
            UpdateKind::UpdateAndSelf
        } else {
            UpdateKind::Update
        },
        release: rel.label.clone(),
        sha256: rel.sha256.clone(),
        outcome: stored(r.outcome),
        detail: r.detail.clone(),
    })
    .await?;
    db.audit(&AuditEntry::now(
        actor,
        "swarm.update",
        &r.host,
        match r.outcome {
            UpdateOutcome::Updated => AuditOutcome::Ok,
            UpdateOutcome::Skipped => AuditOutcome::Refused,
            _ => AuditOutcome::Failed,
        },
        format!(
            "outcome={} release={} sha256={} {}",
            r.outcome, rel.label, rel.sha256, r.detail
        ),
    ))
    .await?;
    Ok(())
}

/// `decnet swarm rollback HOST`.
pub async fn rollback(
    db: &FleetDb,
    pool: &WorkerPool,
    actor: &str,
    host: &str,
) -> anyhow::Result<HostResult> {
    let h = select_hosts(db, &[host.to_string()]).await?.remove(0);
    let _turn = crate::fleet_ops::FanOut::one_change().await;
    let client = updater_client(pool, &h)?;
    let r = match client.rollback().await {
        Ok(done) => HostResult {
            host: host.into(),
            outcome: UpdateOutcome::RolledBack,
            release: done.release.map(|r| r.sha),
            detail: "previous release restored and healthy".into(),
            failure: None,
        },
        Err(e) => HostResult {
            host: host.into(),
            outcome: UpdateOutcome::Failed,
            release: None,
            failure: failure_from_error(&e),
            detail: e.to_string(),
        },
    };
    db.record_update(&UpdateRecord {
        host: host.into(),
        at: unix_now(),
        kind: UpdateKind::Rollback,
        release: r.release.clone().unwrap_or_default(),
        sha256: String::new(),
        outcome: stored(r.outcome),
        detail: r.detail.clone(),
    })
    .await?;
    db.audit(&AuditEntry::now(
        actor,
        "swarm.rollback",
        host,
        if r.outcome == UpdateOutcome::RolledBack {
            AuditOutcome::Ok
        } else {
            AuditOutcome::Failed
        },
        r.detail.clone(),
    ))
    .await?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_answer_is_kept_bounded_and_shown_inert() {
        let output: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let body = serde_json::json!({
            "rolled_back": true,
            "probe": {"transcript": ["attempt 1: connection refused", "the agent exited after attempt 1: not waiting for it"]},
            "restore_probe": {"transcript": ["attempt 1: healthy (version 1)"]},
            "stderr": format!("{}\n\u{1b}]0;owned\u{7}evil", output.join("\n")),
        });
        let f = failure_from_answer(&body).unwrap();
        assert_eq!(f.probe.len(), 2);
        assert_eq!(f.agent_output.lines().count(), AGENT_OUTPUT_LINES);
        assert!(f.agent_output.ends_with("evil"));
        let shown = render_failure(&f, "w1");
        assert!(
            shown.contains("w1: the probe of the new release\n  attempt 1: connection refused\n")
        );
        assert!(shown.contains("w1: the probe of the restored release\n"));
        assert!(shown.contains("w1: the failed agent's last output\n"));
        assert!(!shown.contains('\u{1b}'), "worker text is inert: {shown:?}");
        assert!(
            !f.agent_output.contains('\u{1b}'),
            "inert in --json too: {:?}",
            f.agent_output
        );
        assert!(failure_from_answer(&serde_json::json!({"detail": "x"})).is_none());
    }
}
