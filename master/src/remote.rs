//! Operator commands through a context: the same commands, output, exit
//! codes and `--json` as on the master host, answered by the master's fleet
//! API as the context's operator. Commands the fleet API does not serve yet
//! say so (exit 2) instead of acting on this machine's files.

use crate::cli::{Command, SwarmCommand};
use crate::context::Context;
use crate::fleet_client::FleetClient;
use crate::usage::UsageError;

/// Run `cmd` against the master of `ctx`.
pub async fn run(ctx: &Context, cmd: Command) -> anyhow::Result<()> {
    let client = FleetClient::of(ctx)?;
    match cmd {
        Command::Swarm(SwarmCommand::List { json }) => {
            let hosts: Vec<decnet_api::Host> = client.get("/v1/hosts").await?;
            crate::cli::print_host_list(&hosts, json)
        }
        Command::Swarm(SwarmCommand::Show { host, json }) => {
            let h: decnet_api::Host = client
                .get(&format!("/v1/hosts/{}", percent(&host)))
                .await?;
            crate::cli::print_host(&h, json)
        }
        Command::Audit { limit, actor, json } => {
            let mut path = format!("/v1/audit?limit={}", limit.max(1));
            if let Some(a) = actor {
                path.push_str("&actor=");
                path.push_str(&percent(&a));
            }
            let entries: Vec<decnet_api::AuditRecord> = client.get(&path).await?;
            crate::cli::print_audit(&entries, json)
        }
        Command::Swarm(SwarmCommand::Status {
            host,
            json,
            max_parallel,
            ..
        }) => {
            let mut path = format!("/v1/status?parallel={max_parallel}");
            if let Some(h) = host {
                path.push_str("&host=");
                path.push_str(&percent(&h));
            }
            let reports: Vec<crate::fleet_ops::HostReport> = client.get(&path).await?;
            crate::usage::partial(
                crate::fleet_ops::print_status(&reports, json)?,
                "some hosts did not answer",
            )
        }
        Command::Swarm(SwarmCommand::Check {
            json, max_parallel, ..
        }) => {
            let reports: Vec<crate::fleet_ops::HostReport> = client
                .get(&format!("/v1/check?parallel={max_parallel}"))
                .await?;
            crate::usage::partial(
                crate::fleet_ops::print_check(&reports, json)?,
                "some hosts did not answer",
            )
        }
        Command::Swarm(SwarmCommand::Token(crate::cli::TokenCommand::Create {
            target,
            ttl,
            ..
        })) => {
            let req = crate::cli::token_request(
                target.host,
                target.address,
                target.sans,
                target.updater,
                &ttl,
            )?;
            let t: decnet_api::JoinToken = client
                .send(
                    reqwest::Method::POST,
                    "/v1/tokens",
                    Some(&decnet_api::NewJoinToken {
                        host: req.host,
                        address: req.address,
                        sans: req.sans,
                        updater: req.updater,
                        ttl_secs: req.ttl.as_secs(),
                    }),
                )
                .await?;
            crate::cli::print_join_token(&t.token, &t.host, t.updater, t.ttl_secs);
            Ok(())
        }
        Command::Swarm(SwarmCommand::Decommission { host, yes, .. }) => {
            confirm(&host, yes, "Decommission {host}? Its certificates are revoked and its bundles deleted.")?;
            let d: decnet_api::Decommissioned = client
                .send::<(), _>(
                    reqwest::Method::POST,
                    &format!("/v1/hosts/{}/decommission", percent(&host)),
                    None,
                )
                .await?;
            crate::cli::print_decommissioned(&d.host, d.revoked, d.removed_bundles);
            Ok(())
        }
        Command::Swarm(SwarmCommand::Renew { host }) => {
            let r: decnet_api::RenewRequested = client
                .send::<(), _>(
                    reqwest::Method::POST,
                    &format!("/v1/hosts/{}/renew", percent(&host)),
                    None,
                )
                .await?;
            crate::cli::print_renewal(&r.host, r.has_updater, r.updater_error.as_deref());
            Ok(())
        }
        Command::Swarm(SwarmCommand::Releases { host, json, .. }) => {
            let v: serde_json::Value = client
                .get(&format!("/v1/hosts/{}/releases", percent(&host)))
                .await?;
            crate::cli::print_releases(&v, json)
        }
        Command::Swarm(SwarmCommand::Doctor {
            expiry_warning,
            silent_after,
            max_skew,
            no_probe,
            max_parallel,
            json,
            ..
        }) => {
            let p = crate::cli::doctor_policy(&expiry_warning, &silent_after, &max_skew)?;
            let mut path = format!(
                "/v1/doctor?expiry_warning_secs={}&silent_after_secs={}&max_skew_ms={}",
                p.expiry_warning, p.silent_after, p.max_skew_ms
            );
            if !no_probe {
                path.push_str(&format!("&probe_parallel={max_parallel}"));
            }
            let r: serde_json::Value = client.get(&path).await?;
            crate::cli::doctor_verdict(crate::doctor::print_report(&r, json)?)
        }
        Command::Swarm(SwarmCommand::Deploy {
            config,
            hosts,
            no_wait,
            dry_run: false,
            max_parallel,
            json,
            ..
        }) => {
            let config_json = std::fs::read_to_string(&config).map_err(|e| {
                UsageError(format!(
                    "reading the deployment config {}: {e}",
                    config.display()
                ))
            })?;
            let req = decnet_api::DeployRequest {
                config_json,
                config_name: config.display().to_string(),
                hosts,
                wait: !no_wait,
                parallel: max_parallel,
            };
            let job = crate::job_cmd::start(&client, "/v1/deploy", &req).await?;
            eprintln!(
                "job {} started in the master; it goes on if this command is interrupted (decnet job follow {})",
                job.id, job.id
            );
            crate::job_cmd::follow(&client, &job.id, json).await
        }
        Command::Job(c) => crate::job_cmd::run(&client, c).await,
        Command::Operator(c) => crate::operator_cmd::remote(&client, c).await,
        other => Err(UsageError(format!(
            "`decnet {}` does not run through a context yet (context {}): run it on the master host, or with --context local there",
            command_name(&other),
            ctx.name
        ))
        .into()),
    }
}

/// A destructive command's confirmation: `--yes`, or the host's name typed
/// at a terminal.
fn confirm(host: &str, yes: bool, question: &str) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if std::io::stdin().is_terminal() {
        print!(
            "{} Type the host name to confirm: ",
            question.replace("{host}", host)
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() == host {
            return Ok(());
        }
    }
    Err(UsageError(format!(
        "refusing to decommission {host} without confirmation; pass --yes"
    ))
    .into())
}

use crate::fleet_client::segment as percent;

/// The command's words, for messages.
fn command_name(cmd: &Command) -> String {
    let dbg = format!("{cmd:?}");
    let word = |s: &str| {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .find(|w| !w.is_empty())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    match cmd {
        Command::Swarm(sub) => format!("swarm {}", word(&format!("{sub:?}"))),
        Command::Ca(sub) => format!("ca {}", word(&format!("{sub:?}"))),
        _ => word(&dbg),
    }
}
