//! The `decnet` command line: argument definitions and the commands.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage or setup error
//! (bad arguments, missing CA, refused without confirmation).

use std::path::PathBuf;

use anyhow::Context;
use decnet_fleet::enrollment::{self, EnrollRequest};
use decnet_fleet::{AuditOutcome, CertRecord, CertRole, FleetDb, HostStatus, RenewPolicy};
use decnet_pki::{Bundle, BundleKind, HostName, LeafSpec, Role};

use crate::home::MasterHome;
use crate::listener_cmd::LogStorage as _;
use crate::usage::{UsageError, audit, cli_actor, load_ca, open_db, partial, with_db};

pub use decnet_cli::args::*;
pub use decnet_cli::confirm::{burn_question, confirm_host};
pub use decnet_cli::doctor_cmd::{doctor_policy, doctor_verdict};
pub use decnet_cli::release::{PackedForUpdate, dir_label, pack_release, signing_of};
pub use decnet_cli::render::{
    print_audit, print_burned, print_ca, print_decommissioned, print_evidence_fetched, print_host,
    print_host_list, print_join_token, print_releases, print_renewal,
};

/// Where the master's home is, from the global flags: each command
/// resolves it with its own `--ca-dir`.
struct Homes {
    home: Option<PathBuf>,
    database_url: Option<String>,
}

impl Homes {
    /// The master's home, its CA at `ca_dir` when given.
    fn resolve(&self, ca_dir: Option<PathBuf>) -> MasterHome {
        MasterHome::resolve(self.home.clone(), ca_dir, self.database_url.clone())
    }
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        home,
        database_url,
        command,
        context,
        ..
    } = cli;
    let homes = Homes { home, database_url };
    let resolve = |ca: Option<PathBuf>| homes.resolve(ca);
    let command = match command {
        Command::Login { renew: true, .. } => {
            return crate::operator_cmd::renew(context.as_deref()).await;
        }
        Command::Login {
            master,
            token,
            token_file,
            as_name,
            force,
            ..
        } => {
            let master = master.ok_or_else(|| UsageError("--master is required".into()))?;
            // `decnet login --context NAME` names the context it saves (as
            // --as does); a DECNET_CONTEXT in the environment does not.
            let from_env = std::env::var("DECNET_CONTEXT").ok();
            let named = context.filter(|c| from_env.as_deref() != Some(c.as_str()));
            if let (Some(a), Some(c)) = (&as_name, &named)
                && a != c
            {
                return Err(UsageError(format!(
                    "--as {a} and --context {c} name two contexts: give one"
                ))
                .into());
            }
            return crate::operator_cmd::login(
                &master,
                token.as_deref(),
                token_file.as_deref(),
                as_name.or(named),
                force,
            )
            .await;
        }
        Command::Context(c) => return crate::operator_cmd::context_command(c),
        // Commands of the master host itself, or of no master at all.
        c @ (Command::Demo { .. }
        | Command::Release(_)
        | Command::Master(_)
        | Command::Listener { .. }
        | Command::Ca(CaCommand::Init { .. })) => c,
        c => match decnet_api_client::context::selected(context.as_deref())? {
            Some(ctx) => return crate::remote::run(&ctx, c).await,
            None => c,
        },
    };
    match command {
        Command::Login { .. } | Command::Context(_) => unreachable!("handled above"),
        Command::Job(_) => Err(UsageError(
            "jobs run in the master daemon: use a context (decnet login, decnet context use NAME)"
                .into(),
        )
        .into()),
        Command::Events(_) | Command::Alert(_) => Err(UsageError(
            "events and alerts live in the master daemon: use a context (decnet login, decnet context use NAME)"
                .into(),
        )
        .into()),
        Command::Console(a) => crate::console_cmd::console_local(&resolve(None), a).await,
        Command::Operator(c) => crate::operator_cmd::local(&resolve(None), c).await,
        Command::Ca(c) => ca_command(&homes, c).await,
        Command::Swarm(c) => swarm_command(&homes, c).await,
        Command::Release(c) => release_command(c),
        Command::Master(c) => master_command(&homes, c).await,
        Command::Demo { workers, keep, dir } => {
            if workers == 0 || workers > 20 {
                return Err(UsageError("--workers must be between 1 and 20".into()).into());
            }
            let opts = crate::demo::DemoOptions { workers, keep, dir };
            tokio::select! {
                r = crate::demo::run(&opts) => r,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("\ninterrupted; cleaning up");
                    Err(anyhow::anyhow!("demo interrupted"))
                }
            }
        }
        Command::Listener {
            ca,
            host,
            port,
            log_path,
            json_path,
            plaintext,
            max_frame,
            idle_timeout,
            storage,
            metrics,
        } => {
            let home = resolve(ca.ca_dir);
            let db = open_db(&home).await?;
            let settings = crate::listener_cmd::ListenerSettings {
                listen: std::net::SocketAddr::new(host, port),
                log_path: log_path.unwrap_or_else(|| home.home.join("logs/fleet.log")),
                json_path: json_path.unwrap_or_else(|| home.home.join("logs/fleet.json")),
                plaintext,
                max_frame,
                idle_timeout: std::time::Duration::from_secs(idle_timeout),
                grace: RenewPolicy::default().grace,
                budget: storage.budget(),
                disk: storage.disk(),
            };
            let material = if plaintext {
                // Never used for plain TCP; any material will do.
                None
            } else {
                let bundle = crate::fleet_ops::master_bundle(&home.ca_layout())?;
                Some(
                    decnet_pki::MaterialSource::from_parts(bundle, None)
                        .context("building the TLS configuration")?,
                )
            };
            let r = async {
                let l = crate::listener_cmd::bind(
                    material.as_ref(),
                    db.clone(),
                    &settings,
                    crate::listener_cmd::ListenerHost::OnItsOwn,
                )
                .await?;
                decnet_log_relay::metrics::listener_metrics();
                decnet_server::metrics::start_metrics(&metrics, "decnet listener", material.as_ref())
                    .await
                    .map_err(|e| UsageError(format!("--metrics-addr: {e}")))?;
                println!("decnet listener listening on {}", l.local_addr());
                l.run(decnet_server::shutdown_signal()).await
            }
            .await;
            db.close().await;
            r
        }
        Command::Audit { limit, actor, json } => {
            show_audit(&resolve(None), limit, actor.as_deref(), json).await
        }
    }
}

/// `decnet ca …` on the master host.
async fn ca_command(homes: &Homes, cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { ca, force, sans } => {
            ca_init(&homes.resolve(ca.ca_dir), force, &sans).await
        }
        CaCommand::Show { ca, json } => ca_show(&homes.resolve(ca.ca_dir), json),
        CaCommand::Rotation(cmd) => match cmd {
            RotationCommand::Start { ca, json } => {
                crate::ca_rotation_cmd::start(&homes.resolve(ca.ca_dir), json).await
            }
            RotationCommand::Status { ca, json } => {
                crate::ca_rotation_cmd::status(&homes.resolve(ca.ca_dir), json).await
            }
            RotationCommand::Finish {
                ca,
                force,
                archive_key,
                wait,
            } => {
                let old_key = match archive_key {
                    Some(d) => crate::ca_rotation_cmd::OldKey::ArchiveTo(d),
                    None => crate::ca_rotation_cmd::OldKey::Destroy,
                };
                crate::ca_rotation_cmd::finish(
                    &homes.resolve(ca.ca_dir),
                    force,
                    old_key,
                    std::time::Duration::from_secs(wait),
                )
                .await
            }
            RotationCommand::Abort { ca, force, wait } => {
                crate::ca_rotation_cmd::abort(
                    &homes.resolve(ca.ca_dir),
                    force,
                    std::time::Duration::from_secs(wait),
                )
                .await
            }
        },
        CaCommand::IssueMonitor { ca, name, out } => {
            crate::monitor_cmd::issue(&homes.resolve(ca.ca_dir), &name, out.as_deref()).await
        }
        CaCommand::RevokeMonitor { ca, name } => {
            crate::monitor_cmd::revoke(&homes.resolve(ca.ca_dir), &name).await
        }
        CaCommand::RotateMaster { ca, sans } => {
            ca_rotate_master(&homes.resolve(ca.ca_dir), &sans).await
        }
    }
}

/// `decnet swarm …` on the master host (no context in use).
async fn swarm_command(homes: &Homes, cmd: SwarmCommand) -> anyhow::Result<()> {
    match cmd {
        SwarmCommand::Enroll {
            ca,
            target:
                HostArgs {
                    host,
                    address,
                    sans,
                    updater,
                },
            reissue,
            out_dir,
            master,
            agent_port,
            updater_port,
            valid_for,
        } => {
            let validity = parse_duration(
                "--valid-for",
                &valid_for,
                std::time::Duration::from_secs(10),
            )?;
            let req = EnrollRequest {
                validity: Some(validity),
                host,
                address,
                sans,
                updater,
                reissue,
                out_dir,
                master: master.map(|m| decnet_swarm_client::transport::with_default_port(&m, 8770)),
                agent_port,
                updater_port,
            };
            swarm_enroll(&homes.resolve(ca.ca_dir), &req).await
        }
        SwarmCommand::Deploy {
            ca,
            config,
            hosts,
            no_wait,
            dry_run,
            max_parallel,
            json,
        } => {
            let home = homes.resolve(ca.ca_dir);
            if dry_run {
                let r = with_db(&home, async |db| {
                    crate::fleet_ops::deploy_plan(db, &home.ca_layout(), &config, &hosts).await
                })
                .await;
                return partial(r?, "some agents refused the config");
            }
            let options = crate::fleet_ops::DeployOptions {
                wait: !no_wait,
                json,
                parallel: max_parallel,
            };
            let r = with_db(&home, async |db| {
                let layout = home.ca_layout();
                crate::fleet_ops::deploy(db, &layout, &cli_actor(), &config, &hosts, options).await
            })
            .await;
            partial(r?, "the deploy did not succeed on every host")
        }
        SwarmCommand::SetEndpoint {
            host,
            address,
            agent_port,
            updater_port,
        } => {
            let req = decnet_api::SetEndpoint {
                address,
                agent_port,
                updater_port,
            };
            with_db(&homes.resolve(None), async |db| {
                crate::ops::set_endpoint(db, &host, &req, &cli_actor())
                    .await
                    .map_err(crate::ops::OpError::into_cli)
            })
            .await?;
            println!("{host}: endpoint updated");
            Ok(())
        }
        SwarmCommand::Evidence {
            ca,
            host,
            decky,
            id,
            out,
            json,
        } => {
            let home = homes.resolve(ca.ca_dir);
            with_db(&home, async |db| {
                use crate::fleet_ops::{NewFile, evidence_fetch, evidence_file, evidence_id};
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                let list = crate::fleet_ops::evidence_list(db, &pool, &host).await?;
                let Some(decky) = decky else {
                    return crate::fleet_ops::print_evidence_list(&host, &list, json);
                };
                let id = evidence_id(&list, &host, &decky, id.as_deref())?;
                let out = out.unwrap_or_else(|| evidence_file(&host, &decky, &id));
                let (new_file, mut file) = NewFile::create(&out).await?;
                let max = decnet_swarm_client::agent::MAX_EVIDENCE;
                match evidence_fetch(db, &pool, &cli_actor(), &host, &decky, &id, &mut file, max)
                    .await
                {
                    Ok(bytes) => {
                        new_file.commit(file).await?;
                        print_evidence_fetched(&host, &decky, &id, bytes, &out);
                        Ok(())
                    }
                    Err(e) => {
                        drop(file);
                        new_file.abandon();
                        Err(e)
                    }
                }
            })
            .await
        }
        SwarmCommand::Teardown { ca, host, decky } => {
            let home = homes.resolve(ca.ca_dir);
            let r = with_db(&home, async |db| {
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                crate::fleet_ops::teardown(db, &pool, &cli_actor(), &host, decky.as_deref()).await
            })
            .await;
            crate::fleet_ops::print_torn_down(&host, &r?);
            Ok(())
        }
        SwarmCommand::Status {
            ca,
            host,
            json,
            max_parallel,
        } => {
            let home = homes.resolve(ca.ca_dir);
            let r = with_db(&home, async |db| {
                crate::fleet_ops::status(db, &home.ca_layout(), host.as_deref(), json, max_parallel)
                    .await
            })
            .await;
            partial(r?, "some hosts did not answer")
        }
        SwarmCommand::Doctor {
            ca,
            expiry_warning,
            silent_after,
            max_skew,
            no_probe,
            max_parallel,
            json,
        } => {
            let policy = doctor_policy(&expiry_warning, &silent_after, &max_skew)?;
            let code = crate::doctor::run(
                &homes.resolve(ca.ca_dir),
                &policy,
                (!no_probe).then_some(max_parallel),
                json,
            )
            .await?;
            doctor_verdict(code)
        }
        SwarmCommand::Check {
            ca,
            json,
            max_parallel,
        } => {
            let home = homes.resolve(ca.ca_dir);
            let r = with_db(&home, async |db| {
                crate::fleet_ops::check(db, &home.ca_layout(), json, max_parallel).await
            })
            .await;
            partial(r?, "some hosts did not answer")
        }
        SwarmCommand::Update {
            ca,
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
        } => {
            let _ = all;
            let home = homes.resolve(ca.ca_dir);
            let results = with_db(&home, async |db| {
                // Unknown or decommissioned hosts are refused before anything is packed.
                crate::fleet_ops::select_hosts(db, &hosts).await?;
                let packed = pack_release(
                    &release,
                    label.as_deref(),
                    release_version.as_deref(),
                    sign.as_deref(),
                    permit_downgrade,
                )?;
                let rel = &packed.release;
                let plan = crate::rollout::RolloutPlan {
                    hosts,
                    allow_downgrade,
                    max_parallel,
                    canary,
                    include_self,
                    continue_on_error,
                };
                if !json {
                    println!("release {} (sha256 {})", rel.label, rel.sha256);
                }
                let layout = home.ca_layout();
                crate::rollout::rollout(db, &layout, &cli_actor(), rel, &plan, !json).await
            })
            .await;
            crate::rollout::print_rollout(&results?, json)
        }
        SwarmCommand::Token(TokenCommand::Create {
            ca,
            target:
                HostArgs {
                    host,
                    address,
                    sans,
                    updater,
                },
            ttl,
        }) => {
            let home = homes.resolve(ca.ca_dir);
            let req = token_request(host, address, sans, updater, &ttl)?;
            let token = with_db(&home, async |db| {
                let ca = crate::authorities::signing_ca(&home.ca_layout(), db).await?;
                crate::ops::create_join_token(db, &ca, &req, &cli_actor())
                    .await
                    .map_err(crate::ops::OpError::into_cli)
            })
            .await?;
            print_join_token(
                &token.to_string(),
                &req.host,
                req.updater,
                req.ttl.as_secs(),
            );
            Ok(())
        }
        SwarmCommand::Renew { host } => {
            let home = homes.resolve(None);
            let r = with_db(&home, async |db| {
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                crate::ops::request_renewal(db, &pool, &host, &cli_actor())
                    .await
                    .map_err(crate::ops::OpError::into_cli)
            })
            .await;
            let r = r?;
            print_renewal(
                &host,
                r.updater.is_some(),
                r.updater.and_then(|u| u.err()).as_deref(),
            );
            Ok(())
        }
        SwarmCommand::Rollback { ca, host } => {
            let home = homes.resolve(ca.ca_dir);
            let r = with_db(&home, async |db| {
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                crate::rollout::rollback(db, &pool, &cli_actor(), &host).await
            })
            .await;
            crate::rollout::print_rollback(&r?)
        }
        SwarmCommand::Releases { ca, host, json } => {
            let home = homes.resolve(ca.ca_dir);
            let r = with_db(&home, async |db| {
                let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
                releases_report(db, &pool, &host).await
            })
            .await;
            print_releases(&r?, json)
        }
        SwarmCommand::List { json } => swarm_list(&homes.resolve(None), json).await,
        SwarmCommand::Show { host, json } => swarm_show(&homes.resolve(None), &host, json).await,
        SwarmCommand::Decommission { ca, host, yes } => {
            swarm_decommission(&homes.resolve(ca.ca_dir), &host, yes).await
        }
        SwarmCommand::Burn { host, yes } => swarm_burn(&homes.resolve(None), &host, yes).await,
    }
}

/// `decnet release …` (no master needed).
fn release_command(cmd: ReleaseCommand) -> anyhow::Result<()> {
    match cmd {
        ReleaseCommand::Keygen { out, force } => {
            if out.exists() && !force {
                return Err(UsageError(format!(
                    "{} exists; pass --force to replace it",
                    out.display()
                ))
                .into());
            }
            let public = decnet_pki::signing::ReleaseSigner::generate_to(&out)?;
            println!(
                "private key: {} (0600; keep it off the workers)",
                out.display()
            );
            println!(
                "public key:  {} = {public}",
                decnet_pki::signing::public_key_path(&out).display()
            );
            println!("Workers: decnet-updater serve --release-pubkey <that .pub file>");
            Ok(())
        }
        ReleaseCommand::Pack {
            dir,
            out,
            label,
            release_version,
            sign,
            permit_downgrade,
        } => {
            let signing = signing_of(sign.as_deref(), permit_downgrade)?;
            let label = label.unwrap_or_else(|| dir_label(&dir));
            let p = crate::release::pack(&dir, &out, &label, release_version.as_deref(), &signing)
                .map_err(|e| UsageError(format!("{e:#}")))?;
            println!("{}  {}", p.sha256, p.tarball.display());
            println!(
                "label {} version {} — {} file(s){}",
                p.label,
                p.version,
                p.files.len(),
                match (signing.signer.is_some(), permit_downgrade) {
                    (true, true) => ", manifests signed with a downgrade permit",
                    (true, false) => ", manifests signed",
                    _ => "",
                }
            );
            Ok(())
        }
    }
}

/// `decnet master …`: the daemon.
async fn master_command(homes: &Homes, cmd: MasterCommand) -> anyhow::Result<()> {
    match cmd {
        MasterCommand::Serve {
            ca,
            host,
            port,
            api_port,
            no_api,
            console_port,
            no_console,
            listener_port,
            no_listener,
            log_path,
            json_path,
            storage,
            unreachable_after,
            leaf_validity,
            renew_min_interval,
            renew_grace,
            audit_retention,
            max_outbound,
            metrics,
        } => {
            crate::fleet_ops::set_max_outbound(max_outbound);
            let home = homes.resolve(ca.ca_dir);
            let renew = RenewPolicy {
                validity: parse_duration(
                    "--leaf-validity",
                    &leaf_validity,
                    std::time::Duration::from_secs(10),
                )?,
                min_interval: parse_duration(
                    "--renew-min-interval",
                    &renew_min_interval,
                    std::time::Duration::ZERO,
                )?,
                grace: parse_duration("--renew-grace", &renew_grace, std::time::Duration::ZERO)?,
            };
            let settings = crate::daemon::MasterSettings {
                api: std::net::SocketAddr::new(host, port),
                fleet_api: (!no_api).then(|| std::net::SocketAddr::new(host, api_port)),
                // The console speaks the fleet API's routes: none without it.
                console: (!no_api && !no_console)
                    .then(|| std::net::SocketAddr::new(host, console_port)),
                listener: (!no_listener).then(|| crate::listener_cmd::ListenerSettings {
                    listen: std::net::SocketAddr::new(host, listener_port),
                    log_path: log_path.unwrap_or_else(|| home.home.join("logs/fleet.log")),
                    json_path: json_path.unwrap_or_else(|| home.home.join("logs/fleet.json")),
                    plaintext: false,
                    max_frame: decnet_log_relay::frame::DEFAULT_MAX_FRAME,
                    idle_timeout: std::time::Duration::from_secs(600),
                    grace: renew.grace,
                    budget: storage.budget(),
                    disk: storage.disk(),
                }),
                unreachable_after: std::time::Duration::from_secs(unreachable_after.max(1)),
                renew,
                metrics,
                audit_retention: match parse_duration(
                    "--audit-retention",
                    &audit_retention,
                    std::time::Duration::ZERO,
                )? {
                    d if d.is_zero() => None,
                    d => Some(d),
                },
            };
            with_db(&home, async |db| {
                crate::daemon::serve(&home, db.clone(), &settings).await
            })
            .await
        }
    }
}

async fn ca_init(home: &MasterHome, force: bool, sans: &[String]) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let db = open_db(home).await?;
    if (layout.ca_key().exists() || layout.ca_cert().exists()) && !force {
        audit(
            &db,
            "ca.init",
            "ca",
            AuditOutcome::Refused,
            "a CA already exists",
        )
        .await?;
        return Err(UsageError(format!(
            "a CA already exists in {}; refusing to overwrite it (pass --force to replace it — every issued certificate stops being trusted)",
            layout.root().display()
        ))
        .into());
    }
    for s in sans {
        decnet_pki::ca::validate_san(s).map_err(|e| UsageError(e.to_string()))?;
    }
    let ca = decnet_pki::CertificateAuthority::generate().context("generating the CA")?;
    ca.save(&layout).context("writing the CA")?;
    let leaf = ca
        .issue(&LeafSpec::for_role(&Role::Master, sans))
        .context("issuing the master certificate")?;
    let bundle = Bundle::from_issued(BundleKind::Master, &leaf, ca.cert_pem())?;
    bundle
        .write(&layout.master_dir())
        .context("writing the master bundle")?;
    db.record_master_certificate(&CertRecord::of_leaf(
        &leaf,
        decnet_pki::MASTER_CN,
        CertRole::Master,
    ))
    .await
    .context("recording the master certificate")?;
    audit(
        &db,
        "ca.init",
        "ca",
        AuditOutcome::Ok,
        format!(
            "ca_fingerprint={} master_fingerprint={}{}",
            ca.fingerprint(),
            leaf.fingerprint,
            if force {
                " (replaced an existing CA)"
            } else {
                ""
            }
        ),
    )
    .await?;
    db.close().await;
    println!("CA created in {}", layout.root().display());
    println!("  CA fingerprint (sha256):     {}", ca.fingerprint());
    println!(
        "  master bundle:               {}",
        layout.master_dir().display()
    );
    println!("  master fingerprint (sha256): {}", leaf.fingerprint);
    println!("Next: decnet swarm enroll --host NAME --address ADDR [--updater]");
    Ok(())
}

async fn ca_rotate_master(home: &MasterHome, sans: &[String]) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let ca = load_ca(&layout)?;
    for s in sans {
        decnet_pki::ca::validate_san(s).map_err(|e| UsageError(e.to_string()))?;
    }
    let db = open_db(home).await?;
    if db.rotation().await?.is_some() {
        db.close().await;
        return Err(UsageError(
            "a CA rotation is under way: its finish reissues the master certificate (`decnet ca rotation finish`)".into(),
        )
        .into());
    }
    let r = decnet_fleet::revocation::rotate_master(
        &ca,
        &layout,
        &db,
        (!sans.is_empty()).then_some(sans),
    )
    .await;
    match &r {
        Ok(rot) => {
            audit(
                &db,
                "ca.rotate_master",
                decnet_pki::MASTER_CN,
                AuditOutcome::Ok,
                format!(
                    "new={} revoked={}",
                    rot.new_fingerprint, rot.old_fingerprint
                ),
            )
            .await?
        }
        Err(e) => {
            audit(
                &db,
                "ca.rotate_master",
                decnet_pki::MASTER_CN,
                AuditOutcome::Failed,
                e.to_string(),
            )
            .await?
        }
    }
    db.close().await;
    let rot = r.context("rotating the master certificate")?;
    println!("master certificate rotated");
    println!("  new fingerprint (sha256):     {}", rot.new_fingerprint);
    println!("  revoked fingerprint (sha256): {}", rot.old_fingerprint);
    println!(
        "Workers accept the new certificate at once and refuse the old one from their next revocation list; `decnet master serve` switches within seconds. Workers started with --master-fingerprint need the new fingerprint."
    );
    Ok(())
}

fn ca_show(home: &MasterHome, json: bool) -> anyhow::Result<()> {
    print_ca(&ca_info(&home.ca_layout())?, json)
}

/// The CA's and the master certificate's public facts.
pub fn ca_info(layout: &decnet_pki::CaLayout) -> anyhow::Result<decnet_api::CaInfo> {
    let ca = load_ca(layout)?;
    let ca_id = x509_summary(ca.cert_pem())?;
    let master = Bundle::load(&layout.master_dir(), BundleKind::Master).ok();
    Ok(decnet_api::CaInfo {
        ca_dir: layout.root().display().to_string(),
        ca_fingerprint: ca.fingerprint().to_hex(),
        ca_subject: ca_id.0,
        ca_not_after: ca_id.1,
        master_fingerprint: master.as_ref().map(|b| b.identity.fingerprint.to_hex()),
        master_not_after: master
            .as_ref()
            .map(|b| b.identity.not_after.unix_timestamp()),
    })
}

/// When the certificate in `pem` expires (unix seconds).
pub fn cert_not_after(pem: &str) -> anyhow::Result<i64> {
    x509_summary(pem).map(|(_, t)| t)
}

fn x509_summary(pem: &str) -> anyhow::Result<(String, i64)> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .context("CA certificate PEM")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).context("CA certificate")?;
    Ok((
        cert.subject().to_string(),
        cert.validity().not_after.to_datetime().unix_timestamp(),
    ))
}

async fn swarm_enroll(home: &MasterHome, req: &EnrollRequest) -> anyhow::Result<()> {
    let layout = home.ca_layout();
    let db = open_db(home).await?;
    let ca = crate::authorities::signing_ca(&layout, &db).await?;
    let result = enrollment::enroll(&ca, &layout, &db, req).await;
    let action = if req.reissue {
        "swarm.reissue"
    } else {
        "swarm.enroll"
    };
    match result {
        Ok(out) => {
            audit(
                &db,
                action,
                &req.host,
                AuditOutcome::Ok,
                format!(
                    "address={} agent_fingerprint={} updater_fingerprint={} revoked={}",
                    out.host.address,
                    out.host.agent_fingerprint.as_deref().unwrap_or("-"),
                    out.host.updater_fingerprint.as_deref().unwrap_or("-"),
                    out.revoked.len()
                ),
            )
            .await?;
            db.close().await;
            println!("enrolled {} ({})", out.host.name, out.host.address);
            println!(
                "  agent bundle:   {}  fingerprint {}",
                out.agent_bundle_dir.display(),
                out.host.agent_fingerprint.as_deref().unwrap_or("-")
            );
            if let Some(dir) = &out.updater_bundle_dir {
                println!(
                    "  updater bundle: {}  fingerprint {}",
                    dir.display(),
                    out.host.updater_fingerprint.as_deref().unwrap_or("-")
                );
            }
            if !out.revoked.is_empty() {
                println!("  revoked {} previous certificate(s)", out.revoked.len());
            }
            let with_updater = out.updater_bundle_dir.is_some();
            match (&req.out_dir, with_updater) {
                (Some(dir), true) => println!(
                    "Copy {}/agent and {}/updater to the worker's ~/.decnet/ (keep worker.key and updater.key mode 0600).",
                    dir.display(),
                    dir.display()
                ),
                (Some(dir), false) => println!(
                    "Copy {}/agent to the worker's ~/.decnet/agent/ (keep worker.key mode 0600).",
                    dir.display()
                ),
                (None, true) => println!(
                    "Copy {} to the worker's ~/.decnet/agent/ and its updater/ to ~/.decnet/updater/, keeping keys mode 0600.",
                    out.agent_bundle_dir.display()
                ),
                (None, false) => println!(
                    "Copy {} to the worker's ~/.decnet/agent/, keeping worker.key mode 0600.",
                    out.agent_bundle_dir.display()
                ),
            }
            match &req.master {
                Some(m) => println!("The bundles record the master at {m}."),
                None => println!(
                    "The bundles record no master: start the worker's daemons with --master HOST[:8770] (they refuse to start without one), or enroll with --master."
                ),
            }
            println!(
                "Better: `decnet swarm token create --host {} ...` and `decnet-agent join` on the worker: its key never leaves it.",
                out.host.name
            );
            Ok(())
        }
        Err(e) => {
            let refused = e.is_refusal();
            audit(
                &db,
                action,
                &req.host,
                if refused {
                    AuditOutcome::Refused
                } else {
                    AuditOutcome::Failed
                },
                e.to_string(),
            )
            .await?;
            db.close().await;
            if refused {
                Err(UsageError(e.to_string()).into())
            } else {
                Err(e.into())
            }
        }
    }
}

/// Every host as the fleet API shows it, from the local database.
pub async fn host_views(db: &FleetDb) -> anyhow::Result<Vec<decnet_api::Host>> {
    let hosts = db.hosts().await?;
    let expiry = db.current_certificate_expiry().await?;
    Ok(hosts
        .iter()
        .map(|h| crate::fleet_api::host_view(h, &expiry))
        .collect())
}

async fn swarm_list(home: &MasterHome, json: bool) -> anyhow::Result<()> {
    let hosts = with_db(home, async |db| host_views(db).await).await?;
    print_host_list(&hosts, json)
}

async fn swarm_show(home: &MasterHome, host: &str, json: bool) -> anyhow::Result<()> {
    let (h, revoked, expiry) = with_db(home, async |db| {
        let Some(h) = db.host(host).await? else {
            return Err(UsageError(format!(
                "host {host} is not enrolled (see `decnet swarm list`)"
            ))
            .into());
        };
        Ok((
            h,
            db.revoked_of(host).await?,
            db.current_certificate_expiry().await?,
        ))
    })
    .await?;
    let mut v = crate::fleet_api::host_view(&h, &expiry);
    v.revoked_fingerprints = Some(revoked);
    print_host(&v, json)
}

/// An operator's confirmation of a destructive `action` on `host`: `--yes`,
/// or the host's name typed at a terminal. A refusal is audited.
async fn confirm_destructive(
    db: &FleetDb,
    action: &str,
    host: &str,
    yes: bool,
    question: &str,
) -> anyhow::Result<()> {
    let verb = action.trim_start_matches("swarm.");
    let refused = match confirm_host(host, yes, verb, question) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    audit(db, action, host, AuditOutcome::Refused, "not confirmed").await?;
    Err(refused)
}

/// The host `host` as recorded, or a usage error naming `swarm list`.
async fn enrolled_host(db: &FleetDb, host: &str) -> anyhow::Result<decnet_fleet::HostRecord> {
    match db.host(host).await? {
        Some(h) => Ok(h),
        None => Err(UsageError(format!(
            "host {host} is not enrolled (see `decnet swarm list`)"
        ))
        .into()),
    }
}

async fn swarm_decommission(home: &MasterHome, host: &str, yes: bool) -> anyhow::Result<()> {
    HostName::new(host).map_err(|e| UsageError(e.to_string()))?;
    let db = open_db(home).await?;
    let r = async {
        enrolled_host(&db, host).await?;
        confirm_destructive(
            &db,
            "swarm.decommission",
            host,
            yes,
            &format!("Decommission {host}? Its certificates are revoked and its bundles deleted."),
        )
        .await?;
        let d = crate::ops::decommission(&db, &home.ca_layout(), host, &cli_actor())
            .await
            .map_err(crate::ops::OpError::into_cli)?;
        print_decommissioned(host, d.revoked, d.removed_bundles);
        Ok(())
    }
    .await;
    db.close().await;
    r
}

/// `swarm releases HOST --json`'s document (also the fleet API's
/// `/v1/hosts/{name}/releases`): the updater's slots (or why they are
/// unavailable) and the host's update history.
pub async fn releases_report(
    db: &FleetDb,
    pool: &decnet_swarm_client::transport::WorkerPool,
    host: &str,
) -> anyhow::Result<serde_json::Value> {
    let h = crate::fleet_ops::select_hosts(db, &[host.to_string()])
        .await?
        .remove(0);
    let history = db.update_history(host, 20).await?;
    let _turn = crate::fleet_ops::FanOut::one_look().await;
    let releases = match crate::rollout::updater_client(pool, &h) {
        Ok(c) => c.releases().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    Ok(serde_json::json!({
        "host": host,
        "releases": releases.as_ref().ok(),
        "error": releases.as_ref().err(),
        "history": history,
    }))
}

/// `swarm burn`: every certificate of a compromised host revoked, whoever
/// holds it; the host stays in the inventory, burned, until it joins again.
async fn swarm_burn(home: &MasterHome, host: &str, yes: bool) -> anyhow::Result<()> {
    HostName::new(host).map_err(|e| UsageError(e.to_string()))?;
    let db = open_db(home).await?;
    let r = async {
        let h = enrolled_host(&db, host).await?;
        if h.status == HostStatus::Decommissioned {
            return Err(UsageError(format!("host {host} is decommissioned already")).into());
        }
        confirm_destructive(&db, "swarm.burn", host, yes, &burn_question(host)).await?;
        let pool = crate::fleet_ops::worker_pool(&home.ca_layout())?;
        crate::ops::burn(&db, &home.ca_layout(), &pool, host, &cli_actor())
            .await
            .map_err(crate::ops::OpError::into_cli)
    }
    .await;
    db.close().await;
    print_burned(&r?);
    Ok(())
}

async fn show_audit(
    home: &MasterHome,
    limit: i64,
    actor: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let entries = with_db(home, async |db| {
        Ok(db.audit_log_of(limit.max(1), actor).await?)
    })
    .await?;
    let entries: Vec<decnet_api::AuditRecord> =
        entries.iter().map(crate::fleet_api::audit_view).collect();
    print_audit(&entries, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_are_parsed_with_bounds_and_never_overflow() {
        let s = std::time::Duration::from_secs;
        assert_eq!(parse_duration("--x", "15m", s(1)).unwrap(), s(900));
        assert_eq!(
            parse_duration("--x", "825d", s(1)).unwrap(),
            s(825 * 86_400)
        );
        assert_eq!(parse_duration("--x", "90", s(1)).unwrap(), s(90));
        for bad in ["100000000d", "18446744073709551615s", "3651d"] {
            let e = parse_duration("--leaf-validity", bad, s(1)).unwrap_err().0;
            assert!(
                e.contains("--leaf-validity") && e.contains("too long"),
                "{bad}: {e}"
            );
        }
        for bad in ["", "abc", "-5s", "5 parsecs"] {
            assert!(parse_duration("--ttl", bad, s(1)).is_err(), "{bad}");
        }
        assert!(
            parse_duration("--ttl", "0s", s(1))
                .unwrap_err()
                .0
                .contains("too short")
        );
    }
}
