//! Jobs in the master daemon: a fleet-wide deploy asked through the fleet
//! API runs here, not in the operator's CLI, so an interrupted CLI leaves it
//! running and `decnet job follow` picks its progress up again, from any
//! master on the database.
//!
//! The truth is in the fleet database (`decnet_fleet::jobs`): the job, its
//! hosts' leases (a second operator touching the same hosts gets a 409), its
//! progress lines (written in batches every [`FLUSH_EVERY`]) and its result.
//! While it runs, its daemon heartbeats it every [`HEARTBEAT_EVERY`]; a job
//! whose daemon stopped is marked `interrupted` by the next sweep, never
//! resumed silently. A cancel (from any master) is seen at the next
//! heartbeat: hosts not yet asked are skipped, waits end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use decnet_api::EventTopic;
use decnet_fleet::jobs::{JobHost, JobRecord};
use decnet_fleet::{FleetDb, HostRecord};
use decnet_swarm_client::transport::WorkerPool;
use tokio_util::sync::CancellationToken;

use crate::fleet_ops::{DeployRun, HostDeploy};

/// How often a running job's progress lines are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often a running job's daemon says it is alive (and looks for a
/// cancel, which any master may have recorded).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Progress lines waiting to be written, numbered in order.
struct Pending {
    next_seq: i64,
    lines: Vec<String>,
    /// Lines taken so far (at most [`MAX_JOB_LINES`]).
    taken: usize,
}

/// The most progress lines a job records: what a hostile agent says about
/// its deckies cannot grow a job's log without bound.
pub const MAX_JOB_LINES: usize = 20_000;

/// Write what is pending.
async fn flush(db: &FleetDb, id: &str, pending: &Mutex<Pending>) {
    let (first, lines) = {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        let first = p.next_seq;
        let lines = std::mem::take(&mut p.lines);
        p.next_seq += lines.len() as i64;
        (first, lines)
    };
    if lines.is_empty() {
        return;
    }
    if let Err(e) = db.record_job_progress(id, first, &lines, &[]).await {
        tracing::warn!(job = id, error = %e, "cannot record the job's progress");
    }
}

/// The per-host outcome of a deploy, for `job show`.
fn host_states(results: &[HostDeploy], wait: bool) -> Vec<JobHost> {
    results
        .iter()
        .map(|r| {
            let ok = if wait {
                r.succeeded()
            } else {
                r.error.is_none()
            };
            JobHost {
                host: r.host.clone(),
                state: if ok { "ok" } else { "failed" }.into(),
                detail: r.error.clone().unwrap_or_else(|| {
                    let running = r.deckies.iter().filter(|d| d.state == "running").count();
                    format!("{running}/{} deckies running", r.deckies.len())
                }),
            }
        })
        .collect()
}

/// How a job ended: its state (`done`, `failed`, `cancelled`), its result
/// (JSON text) and each host's outcome.
pub struct JobOutcome {
    /// `done`, `failed` or `cancelled`.
    pub state: &'static str,
    /// The result, JSON text.
    pub result: String,
    /// Each host's outcome.
    pub hosts: Vec<JobHost>,
}

impl JobOutcome {
    /// A job that failed before any host's outcome: `{"error": …}`.
    pub fn failed(e: &anyhow::Error) -> JobOutcome {
        JobOutcome {
            state: "failed",
            result: serde_json::json!({ "error": format!("{e:#}") }).to_string(),
            hosts: Vec::new(),
        }
    }
}

/// Run job `id`'s `work` in the background, to its end, whatever becomes
/// of the request that started it: its progress lines (`work`'s [`Emit`])
/// written every [`FLUSH_EVERY`], its heartbeat every [`HEARTBEAT_EVERY`]
/// (a cancel recorded by any master cancels `work`'s token), then its end
/// recorded — and sent on the returned channel, for a request that waits.
///
/// [`Emit`]: crate::fleet_ops::Emit
pub fn spawn_job<F, Fut>(
    db: FleetDb,
    id: String,
    work: F,
) -> tokio::sync::oneshot::Receiver<JobOutcome>
where
    F: FnOnce(crate::fleet_ops::Emit, CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = JobOutcome> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The job's audit entries come from where its request came from.
    let source = decnet_fleet::current_audit_source();
    let run = async move {
        let pending = Arc::new(Mutex::new(Pending {
            next_seq: 1,
            lines: Vec::new(),
            taken: 0,
        }));
        let cancel = CancellationToken::new();
        let done = CancellationToken::new();
        // Progress writer and heartbeat, until the work ends.
        let keeper = {
            let (db, id, pending, cancel, done) = (
                db.clone(),
                id.clone(),
                pending.clone(),
                cancel.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
                let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
                loop {
                    tokio::select! {
                        _ = done.cancelled() => break,
                        _ = flush_tick.tick() => flush(&db, &id, &pending).await,
                        _ = beat.tick() => match db.job_heartbeat(&id).await {
                            Ok(true) if !cancel.is_cancelled() => {
                                tracing::info!(job = %id, "job cancel requested");
                                cancel.cancel();
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(job = %id, error = %e, "cannot heartbeat the job"),
                        },
                    }
                }
            })
        };
        let bus = crate::events::installed().map(|e| e.bus.clone());
        if let Some(bus) = &bus {
            bus.publish(
                EventTopic::Job,
                "job.started",
                None,
                serde_json::json!({ "job": id }),
            );
        }
        let emit = {
            let pending = pending.clone();
            let (bus, id) = (bus.clone(), id.clone());
            Arc::new(move |line: String| {
                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                p.taken += 1;
                if p.taken < MAX_JOB_LINES
                    && let Some(bus) = &bus
                {
                    bus.publish(
                        EventTopic::Job,
                        "job.line",
                        None,
                        serde_json::json!({ "job": id, "line": line }),
                    );
                }
                if p.taken < MAX_JOB_LINES {
                    p.lines.push(line);
                } else if p.taken == MAX_JOB_LINES {
                    p.lines.push(format!(
                        "warning: more than {MAX_JOB_LINES} progress lines; the rest are not recorded (see job show for each host's outcome)"
                    ));
                }
            }) as crate::fleet_ops::Emit
        };
        let outcome = work(emit, cancel.clone()).await;
        done.cancel();
        let _ = keeper.await;
        flush(&db, &id, &pending).await;
        if !outcome.hosts.is_empty()
            && let Err(e) = db.record_job_progress(&id, 0, &[], &outcome.hosts).await
        {
            tracing::warn!(job = %id, error = %e, "cannot record the job's hosts");
        }
        if let Err(e) = db.finish_job(&id, outcome.state, &outcome.result).await {
            tracing::error!(job = %id, error = %e, "cannot record the job's end");
        }
        tracing::info!(job = %id, state = outcome.state, "job finished");
        if let Some(bus) = &bus {
            // Each host's outcome, for those who may see that host...
            for h in &outcome.hosts {
                bus.publish(
                    EventTopic::Job,
                    "job.host",
                    Some(&h.host),
                    serde_json::json!({ "job": id, "state": h.state, "detail": h.detail }),
                );
            }
            // ...then the end (`job.done`, `job.failed`, `job.cancelled`).
            bus.publish(
                EventTopic::Job,
                &format!("job.{}", outcome.state),
                None,
                serde_json::json!({
                    "job": id,
                    "state": outcome.state,
                    "failed_hosts": outcome.hosts.iter().filter(|h| h.state != "ok").map(|h| h.host.as_str()).collect::<Vec<_>>(),
                }),
            );
        }
        let _ = tx.send(outcome);
    };
    tokio::spawn(async move {
        match source {
            Some(s) => decnet_fleet::with_audit_source(s, run).await,
            None => run.await,
        }
    });
    rx
}

/// Run the deploy of `job` to `targets` in the background, to its end.
pub fn spawn_deploy(
    db: FleetDb,
    pool: WorkerPool,
    job: JobRecord,
    run: DeployRun,
    targets: Vec<HostRecord>,
) {
    let id = job.id.clone();
    let db2 = db.clone();
    drop(spawn_job(db, id, move |emit, cancel| async move {
        let wait = run.wait;
        match crate::fleet_ops::deploy_run(
            &db2,
            &pool,
            &job.actor,
            &run,
            targets,
            emit,
            cancel.clone(),
        )
        .await
        {
            Ok(results) => {
                let ok = results.iter().all(|r| {
                    if wait {
                        r.succeeded()
                    } else {
                        r.error.is_none()
                    }
                });
                JobOutcome {
                    state: end_state(&cancel, ok),
                    hosts: host_states(&results, wait),
                    result: serde_json::to_string(&results).unwrap_or_else(|_| "[]".into()),
                }
            }
            Err(e) => JobOutcome::failed(&e),
        }
    }));
}

/// A job's end state: `cancelled` when it was, else by whether it succeeded.
pub fn end_state(cancel: &CancellationToken, ok: bool) -> &'static str {
    if cancel.is_cancelled() {
        "cancelled"
    } else if ok {
        "done"
    } else {
        "failed"
    }
}

/// Run the rollout of `rel` to `targets` (job `job`) in the background, to
/// its end.
pub fn spawn_rollout(
    db: FleetDb,
    pool: WorkerPool,
    job: JobRecord,
    rel: crate::release::PackedRelease,
    plan: crate::rollout::RolloutPlan,
    targets: Vec<HostRecord>,
) {
    let id = job.id.clone();
    let db2 = db.clone();
    drop(spawn_job(db, id, move |emit, cancel| async move {
        emit(format!("release {} (sha256 {})", rel.label, rel.sha256));
        match crate::rollout::rollout_run(
            &db2,
            &pool,
            &job.actor,
            &rel,
            &plan,
            targets,
            emit,
            cancel.clone(),
        )
        .await
        {
            Ok(results) => {
                use decnet_api::UpdateOutcome;
                let ok = results.iter().all(|r| r.outcome == UpdateOutcome::Updated);
                JobOutcome {
                    state: end_state(&cancel, ok),
                    hosts: results
                        .iter()
                        .map(|r| JobHost {
                            host: r.host.clone(),
                            state: if r.outcome == UpdateOutcome::Updated {
                                "ok".into()
                            } else {
                                r.outcome.as_str().into()
                            },
                            detail: r.detail.clone(),
                        })
                        .collect(),
                    result: serde_json::to_string(&results).unwrap_or_else(|_| "[]".into()),
                }
            }
            Err(e) => JobOutcome::failed(&e),
        }
    }));
}

/// Mark the jobs of daemons that stopped `interrupted`, now and every
/// [`HEARTBEAT_EVERY`] (any master on the database does it for all).
pub async fn sweep_stale_jobs(db: FleetDb) {
    loop {
        match db.interrupt_stale_jobs().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "jobs whose daemon stopped marked interrupted"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep stale jobs"),
        }
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}
