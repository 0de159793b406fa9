//! Operator commands through a context: the same commands, output, exit
//! codes and `--json` as on the master host, answered by the master's fleet
//! API as the context's operator. The few that need the CA's key (`ca
//! rotate-master`, monitor certificates, `swarm enroll`, which makes a
//! worker's key) say so (exit 2) instead of acting on this machine's files.

use crate::args::{Command, SwarmCommand};
use crate::exit::UsageError;
use decnet_api_client::Context;
use decnet_api_client::FleetClient;

/// Run `cmd` against the master of `ctx`.
pub async fn run(ctx: &Context, cmd: Command) -> anyhow::Result<()> {
    let client = FleetClient::of(ctx)?;
    match cmd {
        Command::Swarm(SwarmCommand::List { json }) => {
            let hosts: Vec<decnet_api::Host> = client.get("/v1/hosts").await?;
            crate::render::print_host_list(&hosts, json)
        }
        Command::Swarm(SwarmCommand::Show { host, json }) => {
            let h: decnet_api::Host = client
                .get(&format!("/v1/hosts/{}", percent(&host)))
                .await?;
            crate::render::print_host(&h, json)
        }
        Command::Audit { limit, actor, json } => {
            let mut path = format!("/v1/audit?limit={}", limit.max(1));
            if let Some(a) = actor {
                path.push_str("&actor=");
                path.push_str(&percent(&a));
            }
            let entries: Vec<decnet_api::AuditRecord> = client.get(&path).await?;
            crate::render::print_audit(&entries, json)
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
            let reports: Vec<decnet_api::HostReport> = client.get(&path).await?;
            crate::exit::partial(
                crate::render::print_status(&reports, json)?,
                "some hosts did not answer",
            )
        }
        Command::Swarm(SwarmCommand::Check {
            json, max_parallel, ..
        }) => {
            let reports: Vec<decnet_api::HostReport> = client
                .get(&format!("/v1/check?parallel={max_parallel}"))
                .await?;
            crate::exit::partial(
                crate::render::print_check(&reports, json)?,
                "some hosts did not answer",
            )
        }
        Command::Swarm(SwarmCommand::Token(crate::args::TokenCommand::Create {
            target,
            ttl,
            ..
        })) => {
            let req = crate::args::token_request(
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
            crate::render::print_join_token(&t.token, &t.host, t.updater, t.ttl_secs);
            Ok(())
        }
        Command::Swarm(SwarmCommand::Decommission { host, yes, .. }) => {
            crate::confirm::confirm_host(
                &host,
                yes,
                "decommission",
                &format!("Decommission {host}? Its certificates are revoked and its bundles deleted."),
            )?;
            let d: decnet_api::Decommissioned = client
                .send::<(), _>(
                    reqwest::Method::POST,
                    &format!("/v1/hosts/{}/decommission", percent(&host)),
                    None,
                )
                .await?;
            crate::render::print_decommissioned(&d.host, d.revoked, d.removed_bundles);
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
            crate::render::print_renewal(&r.host, r.has_updater, r.updater_error.as_deref());
            Ok(())
        }
        Command::Swarm(SwarmCommand::Releases { host, json, .. }) => {
            let v: serde_json::Value = client
                .get(&format!("/v1/hosts/{}/releases", percent(&host)))
                .await?;
            crate::render::print_releases(&v, json)
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
            let p = crate::doctor_cmd::doctor_policy(&expiry_warning, &silent_after, &max_skew)?;
            let mut path = format!(
                "/v1/doctor?expiry_warning_secs={}&silent_after_secs={}&max_skew_ms={}",
                p.expiry_warning, p.silent_after, p.max_skew_ms
            );
            if !no_probe {
                path.push_str(&format!("&probe_parallel={max_parallel}"));
            }
            let r: serde_json::Value = client.get(&path).await?;
            crate::doctor_cmd::doctor_verdict(crate::render::print_report(&r, json)?)
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
            let config_json = read_config(&config)?;
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
        Command::Swarm(SwarmCommand::Deploy {
            config,
            hosts,
            dry_run: true,
            ..
        }) => {
            let req = decnet_api::DeployPlanRequest {
                config_json: read_config(&config)?,
                hosts,
            };
            let plans: Vec<decnet_api::HostPlan> = client
                .send(reqwest::Method::POST, "/v1/deploy/plan", Some(&req))
                .await?;
            crate::exit::partial(
                crate::render::print_deploy_plan(&plans)?,
                "some agents refused the config",
            )
        }
        Command::Swarm(SwarmCommand::Teardown { host, decky, .. }) => {
            let t: decnet_api::TornDown = crate::job_cmd::post_once(
                &client,
                &format!("/v1/hosts/{}/teardown", percent(&host)),
                &decnet_api::TeardownRequest { decky },
            )
            .await?;
            crate::render::print_torn_down(&t.host, &t.deckies);
            Ok(())
        }
        Command::Swarm(SwarmCommand::Rollback { host, .. }) => {
            let r: decnet_api::UpdateResult = crate::job_cmd::post_once(
                &client,
                &format!("/v1/hosts/{}/rollback", percent(&host)),
                &serde_json::json!({}),
            )
            .await?;
            crate::render::print_rollback(&r)
        }
        Command::Swarm(SwarmCommand::Burn { host, yes }) => {
            crate::confirm::confirm_host(&host, yes, "burn", &crate::confirm::burn_question(&host))?;
            let b: decnet_api::Burned = client
                .call(
                    client
                        .request(
                            reqwest::Method::POST,
                            &format!("/v1/hosts/{}/burn", percent(&host)),
                        )
                        .timeout(decnet_api_client::LONG_OPERATION),
                )
                .await?;
            crate::render::print_burned(&b);
            Ok(())
        }
        Command::Swarm(SwarmCommand::SetEndpoint {
            host,
            address,
            agent_port,
            updater_port,
        }) => {
            let _: decnet_api::Host = client
                .send(
                    reqwest::Method::PUT,
                    &format!("/v1/hosts/{}/endpoint", percent(&host)),
                    Some(&decnet_api::SetEndpoint {
                        address,
                        agent_port,
                        updater_port,
                    }),
                )
                .await?;
            println!("{host}: endpoint updated");
            Ok(())
        }
        Command::Swarm(SwarmCommand::Evidence {
            host,
            decky,
            id,
            out,
            json,
            ..
        }) => {
            use crate::evidence::{NewFile, evidence_file, evidence_id};
            let list: decnet_api::EvidenceList = client
                .get(&format!("/v1/hosts/{}/evidence", percent(&host)))
                .await?;
            let Some(decky) = decky else {
                return crate::render::print_evidence_list(&host, &list, json);
            };
            let id = evidence_id(&list, &host, &decky, id.as_deref())?;
            let out = out.unwrap_or_else(|| evidence_file(&host, &decky, &id));
            let (new_file, mut file) = NewFile::create(&out).await?;
            let path = format!(
                "/v1/hosts/{}/evidence/{}/{}",
                percent(&host),
                percent(&decky),
                percent(&id)
            );
            match client
                .download(&path, &mut file, decnet_swarm_client::agent::MAX_EVIDENCE)
                .await
            {
                Ok(bytes) => {
                    new_file.commit(file).await?;
                    crate::render::print_evidence_fetched(&host, &decky, &id, bytes, &out);
                    Ok(())
                }
                Err(e) => {
                    drop(file);
                    new_file.abandon();
                    Err(e.into())
                }
            }
        }
        Command::Swarm(SwarmCommand::Update {
            release,
            hosts,
            all,
            max_parallel,
            canary,
            include_self,
            continue_on_error,
            label,
            release_version,
            allow_downgrade,
            sign,
            permit_downgrade,
            json,
            ..
        }) => {
            let packed = crate::release::pack_release(
                &release,
                label.as_deref(),
                release_version.as_deref(),
                sign.as_deref(),
                permit_downgrade,
            )?;
            let rel = &packed.release;
            // Streamed from the file (a release may be up to 1 GiB), with
            // its length declared: the master counts what an upload may
            // write by its Content-Length (else by the largest release).
            let tarball = tokio::fs::File::open(&rel.tarball).await?;
            let len = tarball.metadata().await?.len();
            let chunks = tokio_util::io::ReaderStream::with_capacity(tarball, 64 * 1024);
            let _: decnet_api::ReleaseUploaded = client
                .call(
                    client
                        .request(
                            reqwest::Method::PUT,
                            &format!("/v1/releases/{}", percent(&rel.sha256)),
                        )
                        .timeout(decnet_api_client::LONG_OPERATION)
                        .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                        .header(reqwest::header::CONTENT_LENGTH, len)
                        .body(reqwest::Body::wrap_stream(chunks)),
                )
                .await?;
            let req = decnet_api::UpdateRequest {
                sha256: rel.sha256.clone(),
                label: rel.label.clone(),
                version: rel.version.clone(),
                manifests_json: serde_json::to_string(&rel.manifests)?,
                hosts,
                all,
                max_parallel,
                canary,
                include_self,
                continue_on_error,
                allow_downgrade,
            };
            let job = crate::job_cmd::start(&client, "/v1/update", &req).await?;
            eprintln!(
                "job {} started in the master; it goes on if this command is interrupted (decnet job follow {})",
                job.id, job.id
            );
            crate::job_cmd::follow(&client, &job.id, json).await
        }
        Command::Ca(crate::args::CaCommand::Show { json, .. }) => {
            let info: decnet_api::CaInfo = client.get("/v1/ca").await?;
            crate::render::print_ca(&info, json)
        }
        Command::Swarm(SwarmCommand::Enroll { .. }) => Err(UsageError(format!(
            "`decnet swarm enroll` makes the worker's keys on the master and is not offered through a context ({}): make a join token instead, and the worker makes its own key: decnet swarm token create --host HOST --address ADDR --updater",
            ctx.name
        ))
        .into()),
        Command::Job(c) => crate::job_cmd::run(&client, c).await,
        Command::Events(a) => crate::events_cmd::events(&client, a).await,
        Command::Alert(c) => crate::events_cmd::alert(&client, c).await,
        Command::Console(a) => crate::events_cmd::console(&client, a).await,
        Command::Operator(c) => crate::operator_cmd::remote(&client, c).await,
        other => Err(UsageError(format!(
            "`decnet {}` uses the CA's key, which never leaves the master host: run it there as the master's service user (with --context local, or no context in use); context {} is in use here",
            command_name(&other),
            ctx.name
        ))
        .into()),
    }
}

/// A deployment config file's text (a usage error when unreadable).
fn read_config(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "reading the deployment config {}: {e}",
            path.display()
        ))
        .into()
    })
}

use decnet_api_client::segment as percent;

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
