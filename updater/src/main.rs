//! `decnet-updater`: the worker's release manager daemon.
//!
//! Exit codes: 0 clean shutdown, 1 runtime failure, 2 setup error (missing
//! bundle, bad flags, cannot bind).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use decnet_pki::{BundleKind, ClientAuth, Role};
use decnet_server::{HttpLimits, HttpService, RoleSet, Server, ServerLimits, Transport};
use decnet_swarm_client::master_link::{self, MasterLink};
use decnet_updater::agent_control::{AgentControl, HeldAgentSocket, SpawnControl, under_systemd};
use decnet_updater::api::{ApiState, router};
use decnet_updater::pipeline::UpdaterCore;
use decnet_updater::probe::{ProbeOptions, Prober};
use decnet_updater::slots::ReleaseSlots;

/// decnet updater: installs agent releases, probes them, reverts bad ones.
#[derive(Debug, Parser)]
#[command(name = "decnet-updater", version, about)]
struct Cli {
    /// Log line format on stderr: text (colour only on a terminal, never
    /// with NO_COLOR) or json (one object per line).
    #[arg(long, global = true, env = "DECNET_LOG_FORMAT", default_value = "text")]
    log_format: decnet_telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ControlArg {
    Spawn,
    Systemd,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join the fleet with a one-time token (created with --updater): generate
    /// the key here, get the certificate from the master, write the updater bundle.
    Join {
        /// The master's control API, HOST[:8770] (port 8770 by default).
        #[arg(long, value_name = "HOST[:8770]")]
        master: String,
        /// The token printed by `decnet swarm token create --updater` (or use
        /// --token-file, or DECNET_JOIN_TOKEN: argv is visible in /proc).
        #[arg(
            long,
            env = "DECNET_JOIN_TOKEN",
            hide_env_values = true,
            required_unless_present = "token_file"
        )]
        token: Option<String>,
        /// Read the token from this file.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// The port this daemon will serve on (recorded by the master, which dials it).
        #[arg(long, default_value_t = 8766)]
        port: u16,
        /// Where to write the bundle; default ~/.decnet/updater.
        #[arg(long, value_name = "DIR")]
        bundle_dir: Option<PathBuf>,
        /// This worker's host name: the join is refused when the token is bound to another.
        #[arg(long)]
        host: Option<String>,
    },
    /// Serve the updater API over mTLS.
    Serve {
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0")]
        host: IpAddr,
        /// Listen port.
        #[arg(long, default_value_t = 8766)]
        port: u16,
        /// Updater bundle (updater.key, updater.crt, ca.crt); default ~/.decnet/updater.
        #[arg(long, value_name = "DIR")]
        bundle_dir: Option<PathBuf>,
        /// Install dir of the releases.
        #[arg(long, default_value = "/opt/decnet", value_name = "DIR")]
        install_dir: PathBuf,
        /// The agent's bundle (passed to the agent; its fingerprint is pinned by the probe); default ~/.decnet/agent.
        #[arg(long, value_name = "DIR")]
        agent_bundle_dir: Option<PathBuf>,
        /// How the agent is run: spawn it, or restart its systemd unit (default: systemd when running under systemd).
        #[arg(long, value_enum)]
        agent_control: Option<ControlArg>,
        /// The agent's systemd unit.
        #[arg(long, default_value = "decnet-agent.service")]
        agent_unit: String,
        /// The agent's port (probe target, and passed to a spawned agent).
        #[arg(long, default_value_t = 8765)]
        agent_port: u16,
        /// The address a spawned agent listens on (the updater holds the
        /// agent's socket there across the agent's restarts).
        #[arg(long, default_value = "0.0.0.0")]
        agent_host: IpAddr,
        /// Extra argument for a spawned agent (repeatable), e.g. --agent-arg=--state-dir=/var/lib/decnet.
        #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// Previous releases to keep.
        #[arg(long, default_value_t = 2)]
        keep: usize,
        /// Largest release, extracted, in MiB.
        #[arg(long, default_value_t = 256)]
        max_release_mb: u64,
        /// Require releases whose manifest is signed by one of these Ed25519
        /// public keys (files written by `decnet release keygen`; repeat the
        /// flag to trust several, e.g. during a key rotation).
        #[arg(long = "release-pubkey", value_name = "FILE")]
        release_pubkeys: Vec<PathBuf>,
        /// The probe's budget, in attempts: it probes at once, then backs
        /// off from 20 ms to --probe-interval-ms, giving up after
        /// (attempts - 1) × interval of waiting.
        #[arg(long, default_value_t = 10)]
        probe_attempts: u32,
        /// Probe timeout per attempt, seconds.
        #[arg(long, default_value_t = 3)]
        probe_timeout: u64,
        /// The longest pause between probe attempts, milliseconds.
        #[arg(long, default_value_t = 1000)]
        probe_interval_ms: u64,
        /// SIGTERM → SIGKILL grace when stopping the agent, seconds.
        #[arg(long, default_value_t = 10)]
        stop_grace: u64,
        /// Renew this updater's certificate with (and fetch revocations from)
        /// the master's control API, HOST[:8770]; default: the master
        /// recorded at join or enrolment (`<bundle-dir>/master`). Without
        /// either the updater refuses to start, unless --no-master.
        #[arg(long, value_name = "HOST[:8770]")]
        master: Option<String>,
        /// Start even though no master is known: no renewal and no
        /// revocation list ever fetched (development only).
        #[arg(long, conflicts_with = "master")]
        no_master: bool,
        /// Pin the master's certificate fingerprint (SHA-256 hex).
        #[arg(long, value_name = "SHA256")]
        master_fingerprint: Option<String>,
        /// Seconds between fetches of the master's revocation list (with --master).
        #[arg(long, default_value_t = 300)]
        crl_refresh: u64,
        /// The Prometheus endpoint.
        #[command(flatten)]
        metrics: decnet_server::metrics::MetricsArgs,
    },
    /// Start the updater the way its unit does: run the installed updater
    /// (`<install-dir>/updater/current`, else this binary) with ARGS; while
    /// a self-update is unconfirmed, count the new updater's starts and,
    /// after --max-failed-starts, run the previous updater instead (which
    /// reverts the self-update). Meant for the packaged binary, which no
    /// self-update replaces.
    Launch {
        /// Install dir of the releases (the updater's own are under `updater/`).
        #[arg(long, default_value = "/opt/decnet", value_name = "DIR")]
        install_dir: PathBuf,
        /// Starts a new updater gets before the previous one runs instead.
        #[arg(long, default_value_t = decnet_updater::launch::MAX_FAILED_STARTS)]
        max_failed_starts: u32,
        /// The updater's arguments (`serve …`), after `--`.
        #[arg(last = true, required = true, value_name = "ARGS")]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() {
    let cli = Cli::parse();
    decnet_telemetry::init_logging(cli.log_format, "info");
    if let Command::Launch {
        install_dir,
        max_failed_starts,
        args,
    } = &cli.command
    {
        std::process::exit(launch(install_dir, *max_failed_starts, args));
    }
    if matches!(cli.command, Command::Serve { .. }) {
        // Sockets handed in (systemd, or this updater before a re-exec),
        // taken before anything else opens a descriptor.
        if let Err(e) = decnet_server::activation::adopt_inherited() {
            std::process::exit(setup_error(e));
        }
    }
    decnet_pki::provider::install_default();
    // Descriptors must not run out before the connection caps do.
    decnet_server::descriptors::raise_nofile_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match cli.command {
        Command::Join {
            master,
            token,
            token_file,
            port,
            bundle_dir,
            host,
        } => rt.block_on(async move {
            let dir = bundle_dir
                .unwrap_or_else(|| decnet_pki::bundle::default_decnet_home().join("updater"));
            decnet_swarm_client::join::join_command(
                &decnet_swarm_client::transport::with_default_port(&master, 8770),
                token.as_deref(),
                token_file.as_deref(),
                BundleKind::Updater,
                &dir,
                &decnet_swarm_client::join::JoinOptions {
                    claimed_host: host.as_deref(),
                    port: Some(port),
                },
            )
            .await
        }),
        serve_cmd @ Command::Serve { .. } => rt.block_on(serve(serve_cmd)),
        Command::Launch { .. } => 2,
    };
    std::process::exit(code);
}

/// `decnet-updater launch`: pick the updater binary and execute it.
fn launch(
    install_dir: &std::path::Path,
    max_failed_starts: u32,
    args: &[std::ffi::OsString],
) -> i32 {
    use decnet_updater::launch::{LaunchChoice, choose};
    use std::os::unix::process::CommandExt;
    let launcher = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return setup_error(format!("cannot find this binary: {e}")),
    };
    let slots = match ReleaseSlots::open(&install_dir.join("updater"), 2) {
        Ok(s) => s,
        Err(e) => return setup_error(e),
    };
    let choice = match choose(&slots, &launcher, max_failed_starts) {
        Ok(c) => c,
        Err(e) => return setup_error(format!("cannot read the updater's slots: {e}")),
    };
    match &choice {
        LaunchChoice::Run { bin, attempt: 0 } => {
            tracing::info!(binary = %bin.display(), "starting the updater");
        }
        LaunchChoice::Run { bin, attempt } => tracing::warn!(
            binary = %bin.display(),
            attempt,
            max = max_failed_starts,
            "starting a new updater whose self-update is not confirmed yet"
        ),
        LaunchChoice::Fallback { bin, starts } => tracing::error!(
            binary = %bin.display(),
            failed_starts = starts - 1,
            "the new updater did not come up; starting the previous one, which reverts the self-update"
        ),
    }
    let err = std::process::Command::new(choice.bin()).args(args).exec();
    eprintln!("error: cannot execute {}: {err}", choice.bin().display());
    1
}

/// How long a new updater serves before its self-update is confirmed even
/// without a `/health` request.
const SELF_CONFIRM_AFTER: Duration = Duration::from_secs(60);

fn setup_error(msg: impl std::fmt::Display) -> i32 {
    eprintln!("error: {msg}");
    2
}

async fn serve(cmd: Command) -> i32 {
    let Command::Serve {
        host,
        port,
        bundle_dir,
        install_dir,
        agent_bundle_dir,
        agent_control,
        agent_unit,
        agent_port,
        agent_host,
        agent_args,
        keep,
        max_release_mb,
        release_pubkeys,
        probe_attempts,
        probe_timeout,
        probe_interval_ms,
        stop_grace,
        master,
        no_master,
        master_fingerprint,
        crl_refresh,
        metrics,
    } = cmd
    else {
        return 2;
    };
    let home = decnet_pki::bundle::default_decnet_home();
    let bundle_dir = bundle_dir.unwrap_or_else(|| home.join("updater"));
    let agent_bundle_dir = agent_bundle_dir.unwrap_or_else(|| home.join("agent"));
    let material = match master_link::load_material(&bundle_dir, BundleKind::Updater) {
        Ok(m) => m,
        Err(e) => return setup_error(e),
    };
    // No --master: the master this bundle was joined through or enrolled
    // for; none at all refuses to start.
    let master = match decnet_swarm_client::join::master_for(master, &bundle_dir, no_master) {
        Ok(m) => m,
        Err(e) => return setup_error(e),
    };
    let Role::Updater(host_name) = material.current().bundle().identity.role.clone() else {
        return setup_error(format!(
            "the bundle in {} is not an updater bundle (CN updater@<host>); enroll with `decnet swarm enroll --updater`",
            bundle_dir.display()
        ));
    };
    let keyring = match decnet_pki::signing::ReleaseKeyring::load(&release_pubkeys) {
        Ok(k) => k,
        Err(e) => return setup_error(e),
    };
    let slots = match ReleaseSlots::open(&install_dir, keep) {
        Ok(s) => s,
        Err(e) => return setup_error(e),
    };
    let self_slots = match ReleaseSlots::open(&install_dir.join("updater"), keep) {
        Ok(s) => s,
        Err(e) => return setup_error(e),
    };
    let systemd = match agent_control {
        Some(ControlArg::Systemd) => true,
        Some(ControlArg::Spawn) => false,
        None => under_systemd(),
    };
    let held_agent = HeldAgentSocket::new(SocketAddr::new(agent_host, agent_port));
    if !systemd {
        held_agent.hold_now();
    }
    let control = if systemd {
        AgentControl::Systemd { unit: agent_unit }
    } else {
        let mut args = vec![
            "serve".to_string(),
            "--host".into(),
            agent_host.to_string(),
            "--port".into(),
            agent_port.to_string(),
            "--bundle-dir".into(),
            agent_bundle_dir.display().to_string(),
        ];
        args.extend(agent_args);
        AgentControl::Spawn(SpawnControl {
            install_dir: install_dir.clone(),
            agent_args: args,
            grace: Duration::from_secs(stop_grace),
            held: held_agent.clone(),
        })
    };
    let prober = Prober::new(
        material.clone(),
        &host_name,
        ProbeOptions {
            port: agent_port,
            attempts: probe_attempts.max(1),
            timeout: Duration::from_secs(probe_timeout.max(1)),
            interval: Duration::from_millis(probe_interval_ms),
        },
    );
    let core = UpdaterCore::new(
        slots,
        self_slots,
        control,
        prober,
        max_release_mb << 20,
        keyring,
    );
    if let Err(e) = core.recover().await {
        return setup_error(format!("cannot recover the release tree: {e}"));
    }
    let master_pin = match master_fingerprint
        .as_deref()
        .map(str::parse::<decnet_pki::Fingerprint>)
    {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => return setup_error(format!("--master-fingerprint: {e}")),
        None => None,
    };
    let server = match Server::bind(
        "updater",
        SocketAddr::new(host, port),
        Transport::Tls {
            material: material.clone(),
            auth: ClientAuth::Required,
        },
        ServerLimits::default(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => return setup_error(e),
    };
    let self_bin = core.self_binary();
    // Kept for the re-exec of a self-update: the new updater takes over the
    // same sockets, so neither port is ever free.
    let own_socket = match server.inheritable_listener().and_then(|fd| {
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        Ok(fd)
    }) {
        Ok(fd) => Arc::new(fd),
        Err(e) => return setup_error(format!("cannot keep the listening socket: {e}")),
    };
    let renew_now = master
        .as_ref()
        .map(|_| Arc::new(tokio::sync::Notify::new()));
    let upload_dir = install_dir.join(".uploads");
    match decnet_updater::api::clear_stale_uploads(&upload_dir) {
        0 => {}
        n => tracing::info!(
            files = n,
            dir = %upload_dir.display(),
            "removed uploads an interrupted run left behind"
        ),
    }
    let state = Arc::new(ApiState {
        core,
        host: host_name.to_string(),
        upload_dir,
        instance: decnet_pki::random_hex(8),
        restart_self: Box::new(move || {
            let bin = self_bin.clone();
            let own_socket = own_socket.clone();
            let held_agent = held_agent.clone();
            std::thread::spawn(move || {
                // Let the response reach the client first.
                std::thread::sleep(Duration::from_millis(500));
                tracing::info!(binary = %bin.display(), "re-executing the new updater");
                use std::os::fd::AsRawFd;
                use std::os::unix::process::CommandExt;
                // No agent spawn from here to the exec: nothing else may
                // inherit the sockets made inheritable for it.
                let _no_spawns = decnet_updater::agent_control::lock_spawns();
                let mut held = vec![("updater", own_socket.as_raw_fd())];
                held.extend(held_agent.inheritable_for_exec().map(|fd| ("agent", fd)));
                if let Err(e) = rustix::io::fcntl_setfd(&own_socket, rustix::io::FdFlags::empty()) {
                    tracing::warn!(error = %e, "the new updater binds its port afresh");
                    held.remove(0);
                }
                let mut cmd = std::process::Command::new(&bin);
                for k in [
                    "LISTEN_PID",
                    "LISTEN_FDS",
                    "LISTEN_FDNAMES",
                    decnet_server::activation::HELD_SOCKETS_ENV,
                    decnet_server::activation::HELD_FOR_ENV,
                ] {
                    cmd.env_remove(k);
                }
                let err = cmd
                    .args(std::env::args_os().skip(1))
                    .envs(decnet_server::activation::held_env(
                        &held,
                        std::process::id(),
                    ))
                    .exec();
                tracing::error!(error = %err, "re-exec failed; exiting so the supervisor restarts us");
                std::process::exit(1);
            });
        }),
        renew_now: renew_now.clone(),
    });
    if let Some(master) = master {
        let master = decnet_swarm_client::transport::with_default_port(&master, 8770);
        let link = MasterLink::new(master, material.clone(), master_pin);
        let renew_now = renew_now.unwrap_or_default();
        tokio::spawn(master_link::keep_renewed(
            link.clone(),
            bundle_dir.clone(),
            renew_now.clone(),
        ));
        tokio::spawn(master_link::keep_crl_fresh(
            link,
            bundle_dir.clone(),
            Duration::from_secs(crl_refresh.max(1)),
            Arc::new(tokio::sync::Notify::new()),
            Some(renew_now),
        ));
    }
    decnet_updater::metrics::updater_metrics();
    if let Err(e) =
        decnet_server::metrics::start_metrics(&metrics, "decnet-updater", Some(&material)).await
    {
        return setup_error(e);
    }
    println!("decnet-updater listening on {}", server.local_addr());
    tracing::info!(addr = %server.local_addr(), install = %install_dir.display(), "updater serving");
    // Uploads are large: the body limit is the release limit, and a push
    // (upload, install, probe, revert) may take minutes.
    let limits = HttpLimits {
        request_timeout: Duration::from_secs(900),
        max_body_bytes: usize::try_from(max_release_mb << 20).unwrap_or(usize::MAX),
        ..HttpLimits::default()
    };
    if state.core.self_update_unconfirmed() {
        // Serving this long is proof enough that a new updater does not
        // crash-loop, should nobody ask /health meanwhile.
        let st = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SELF_CONFIRM_AFTER).await;
            st.core.confirm_self_update();
        });
    }
    let app = HttpService::new(router(state), RoleSet::master_only(), limits);
    server.serve(app, decnet_server::shutdown_signal()).await;
    0
}
