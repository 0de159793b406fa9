//! `decnet job …` and the CLI's side of a job: start one with an
//! idempotency key (a retry after a dropped connection gets the same job),
//! follow its progress lines from where it is, then print its result as the
//! command that started it would have. Interrupting the CLI never stops
//! the job: `decnet job follow ID` picks it up again.

use std::time::Duration;

use decnet_api as api;

use crate::table::{format_time, inert};
use decnet_api_client::{FleetClient, segment};

/// `decnet job …` (through a context).
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// The newest jobs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One job, with its hosts.
    Show {
        /// The job.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a job's progress until it ends, then its result (as the command
    /// that started it would have).
    Follow {
        /// The job.
        id: String,
        /// Print the result as JSON (no progress lines).
        #[arg(long)]
        json: bool,
    },
    /// Ask a running job to stop: hosts not yet asked are skipped.
    Cancel {
        /// The job.
        id: String,
    },
}

/// Start a job by `POST path` with `body`, retrying a dropped request with
/// the same idempotency key (so at most one job starts).
pub async fn start<B: serde::Serialize>(
    client: &FleetClient,
    path: &str,
    body: &B,
) -> anyhow::Result<api::Job> {
    post_once(client, path, body).await
}

/// `POST path` with `body` and an idempotency key made for this call,
/// retried with the same key when the request went unanswered: the master
/// acts once, and a retry gets the first answer.
pub async fn post_once<B: serde::Serialize, T: serde::de::DeserializeOwned>(
    client: &FleetClient,
    path: &str,
    body: &B,
) -> anyhow::Result<T> {
    let key = decnet_pki::random_hex(16);
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        }
        let req = client
            .request(reqwest::Method::POST, path)
            .header(api::IDEMPOTENCY_KEY_HEADER, &key)
            .timeout(decnet_api_client::LONG_OPERATION)
            .json(body);
        match client.call(req).await {
            Ok(answer) => return Ok(answer),
            Err(e) if e.is_unanswered() => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(
        || anyhow::anyhow!("the fleet API did not answer"),
        anyhow::Error::from,
    ))
}

/// Print job `id`'s progress lines until it ends, then its result; the exit
/// follows the result (a cancelled or interrupted job is a failure).
pub async fn follow(client: &FleetClient, id: &str, json: bool) -> anyhow::Result<()> {
    let mut after = 0;
    let state = loop {
        let ev: api::JobEvents = client
            .get(&format!(
                "/v1/jobs/{}/events?after={after}&wait_ms=10000",
                segment(id)
            ))
            .await?;
        for e in &ev.events {
            after = e.seq;
            if json {
                continue;
            }
            if e.line.starts_with("warning:") {
                eprintln!("{}", e.line);
            } else {
                println!("{}", e.line);
            }
        }
        if ev.state != "running" && ev.events.is_empty() {
            break ev.state;
        }
    };
    let job: api::Job = client.get(&format!("/v1/jobs/{}", segment(id))).await?;
    match (job.kind.as_str(), job.result.as_deref()) {
        ("deploy", Some(result)) => {
            /// What a deploy job's request says about how it was asked.
            #[derive(serde::Deserialize)]
            struct DeployAsked {
                wait: bool,
            }
            let run: DeployAsked = serde_json::from_str(&job.request)?;
            match serde_json::from_str::<Vec<decnet_api::HostDeploy>>(result) {
                Ok(results) => {
                    let ok = crate::render::print_deploy_results(&results, run.wait, json)?;
                    if state == "cancelled" {
                        anyhow::bail!("job {id} was cancelled");
                    }
                    crate::exit::partial(ok, "the deploy did not succeed on every host")
                }
                Err(_) => anyhow::bail!("job {id} failed: {}", inert(result)),
            }
        }
        ("update", Some(result)) => {
            match serde_json::from_str::<Vec<decnet_api::UpdateResult>>(result) {
                Ok(results) => {
                    let r = crate::render::print_rollout(&results, json);
                    if state == "cancelled" {
                        anyhow::bail!("job {id} was cancelled");
                    }
                    r
                }
                Err(_) => anyhow::bail!("job {id} failed: {}", inert(result)),
            }
        }
        ("rollback", Some(result)) => match serde_json::from_str(result) {
            Ok(r) => crate::render::print_rollback(&r),
            Err(_) => anyhow::bail!("job {id} failed: {}", inert(result)),
        },
        ("teardown", Some(result)) => match serde_json::from_str::<api::TornDown>(result) {
            Ok(t) => {
                crate::render::print_torn_down(&t.host, &t.deckies);
                Ok(())
            }
            Err(_) => anyhow::bail!("job {id} failed: {}", inert(result)),
        },
        _ => anyhow::bail!(
            "job {id} ended {state} without a result (its master stopped while it ran?)"
        ),
    }
}

fn print_jobs(jobs: &[api::Job]) {
    print!(
        "{}",
        crate::table::render(
            &["JOB", "KIND", "STATE", "STARTED", "BY"],
            jobs.iter().map(|j| {
                vec![
                    inert(&j.id).into_owned(),
                    inert(&j.kind).into_owned(),
                    inert(&j.state).into_owned(),
                    format_time(j.created_at),
                    inert(&j.actor).into_owned(),
                ]
            })
        )
    );
}

/// `decnet job …` through a context.
pub async fn run(client: &FleetClient, cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::List { json } => {
            let jobs: Vec<api::Job> = client.get("/v1/jobs").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                println!("no jobs");
            } else {
                print_jobs(&jobs);
            }
            Ok(())
        }
        JobCommand::Show { id, json } => {
            let j: api::Job = client.get(&format!("/v1/jobs/{}", segment(&id))).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
                return Ok(());
            }
            print_jobs(std::slice::from_ref(&j));
            print!(
                "{}",
                crate::table::render(
                    &["HOST", "STATE", "DETAIL"],
                    j.hosts.iter().map(|h| {
                        vec![
                            inert(&h.host).into_owned(),
                            inert(&h.state).into_owned(),
                            inert(&h.detail).into_owned(),
                        ]
                    })
                )
            );
            Ok(())
        }
        JobCommand::Follow { id, json } => follow(client, &id, json).await,
        JobCommand::Cancel { id } => {
            let j: api::Job = client
                .send::<(), _>(
                    reqwest::Method::POST,
                    &format!("/v1/jobs/{}/cancel", segment(&id)),
                    None,
                )
                .await?;
            println!(
                "job {} cancel requested (state {})",
                inert(&j.id),
                inert(&j.state)
            );
            Ok(())
        }
    }
}
