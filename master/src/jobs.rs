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
}

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

/// Run the deploy of `job` to `targets` in the background, to its end.
pub fn spawn_deploy(
    db: FleetDb,
    pool: WorkerPool,
    job: JobRecord,
    run: DeployRun,
    targets: Vec<HostRecord>,
) {
    tokio::spawn(async move {
        let id = job.id.clone();
        let pending = Arc::new(Mutex::new(Pending {
            next_seq: 1,
            lines: Vec::new(),
        }));
        let cancel = CancellationToken::new();
        let done = CancellationToken::new();
        // Progress writer and heartbeat, until the deploy ends.
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
        let emit = {
            let pending = pending.clone();
            Arc::new(move |line: String| {
                pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .lines
                    .push(line);
            }) as crate::fleet_ops::Emit
        };
        let wait = run.wait;
        let results = crate::fleet_ops::deploy_run(
            &db,
            &pool,
            &job.actor,
            &run,
            targets,
            emit,
            cancel.clone(),
        )
        .await;
        done.cancel();
        let _ = keeper.await;
        flush(&db, &id, &pending).await;
        let (state, result) = match results {
            Ok(results) => {
                let ok = results.iter().all(|r| {
                    if wait {
                        r.succeeded()
                    } else {
                        r.error.is_none()
                    }
                });
                let hosts = host_states(&results, wait);
                if let Err(e) = db.record_job_progress(&id, 0, &[], &hosts).await {
                    tracing::warn!(job = %id, error = %e, "cannot record the job's hosts");
                }
                let state = if cancel.is_cancelled() {
                    "cancelled"
                } else if ok {
                    "done"
                } else {
                    "failed"
                };
                (
                    state,
                    serde_json::to_string(&results).unwrap_or_else(|_| "[]".into()),
                )
            }
            Err(e) => (
                "failed",
                serde_json::json!({ "error": format!("{e:#}") }).to_string(),
            ),
        };
        if let Err(e) = db.finish_job(&id, state, &result).await {
            tracing::error!(job = %id, error = %e, "cannot record the job's end");
        }
        tracing::info!(job = %id, state, "job finished");
    });
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
