//! `decnet-agent`: the worker daemon binary.
//!
//! Exit codes: 0 clean shutdown, 1 runtime failure, 2 setup error (missing or
//! unusable bundle, bad state file, cannot bind).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use decnet_agent::config::DriverKind;
use decnet_agent::daemon::{self, ServeOptions};
use decnet_agent::driver::process::Isolation;
use decnet_log_relay::forwarder::ForwarderOptions;
use decnet_swarm_client::master_link::{self, MasterLink};
use std::sync::Arc;

/// decnet worker agent: deploys, tears down and reports workloads for the master.
#[derive(Debug, Parser)]
#[command(name = "decnet-agent", version, about)]
struct Cli {
    /// Log line format on stderr: text (colour only on a terminal, never
    /// with NO_COLOR) or json (one object per line).
    #[arg(long, global = true, env = "DECNET_LOG_FORMAT", default_value = "text")]
    log_format: decnet_telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the agent API over mTLS.
    Serve {
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0")]
        host: IpAddr,
        /// Listen port.
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Agent bundle directory (worker.key, worker.crt, ca.crt); default ~/.decnet/agent.
        #[arg(long, value_name = "DIR")]
        bundle_dir: Option<PathBuf>,
        /// State directory (decnet-state.json, logs/, compose/); default ~/.decnet/agent-state.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Workload driver.
        #[arg(long, value_enum, default_value_t = DriverArg::Process)]
        driver: DriverArg,
        /// Docker Compose project name (compose driver).
        #[arg(long, default_value = "decnet")]
        compose_project: String,
        /// Seconds between SIGTERM and SIGKILL when stopping a process decky.
        #[arg(long, default_value_t = 10)]
        stop_grace: u64,
        /// Also forward a log file to the master's listener (HOST[:6514]).
        #[arg(long, value_name = "HOST[:6514]", requires = "forward_log")]
        forward_to: Option<String>,
        /// The log file to forward (with --forward-to).
        #[arg(long, value_name = "PATH")]
        forward_log: Option<PathBuf>,
        /// Pin the master's certificate fingerprint (SHA-256 hex) for the
        /// forwarder and heartbeats.
        #[arg(long, value_name = "SHA256")]
        master_fingerprint: Option<String>,
        /// Send heartbeats to (and renew with, and fetch revocations from) the
        /// master's control API, HOST[:8770]; default: the master recorded at
        /// join or enrolment (`<bundle-dir>/master`). Without either the
        /// agent refuses to start, unless --no-master.
        #[arg(long, value_name = "HOST[:8770]")]
        master: Option<String>,
        /// Start even though no master is known: no heartbeats, no renewal,
        /// and no revocation list ever fetched (development only).
        #[arg(long, conflicts_with = "master")]
        no_master: bool,
        /// Seconds between heartbeats (±20 % jitter).
        #[arg(long, default_value_t = 30)]
        heartbeat_interval: u64,
        /// How process deckies are separated: `uid` (each under a uid of its
        /// own; needs root) or `none` (as the agent's user; development only,
        /// a decky can then read the agent's key).
        #[arg(long, value_enum, default_value_t = IsolationArg::Uid)]
        decky_isolation: IsolationArg,
        /// Uids (and gids) reserved for process deckies, FIRST-LAST; no
        /// account may use them.
        #[arg(long, value_name = "FIRST-LAST", default_value_t = decnet_confine::ids::DEFAULT_RANGE)]
        decky_ids: decnet_confine::IdRange,
        /// Parent of the process deckies' working directories; default
        /// <state-dir>/deckies.
        #[arg(long, value_name = "DIR")]
        decky_root: Option<PathBuf>,
        /// Rotate a process decky's log at this many bytes (one old file kept).
        #[arg(long, value_name = "BYTES", default_value_t = decnet_agent::driver::process::DEFAULT_LOG_MAX)]
        decky_log_max: u64,
        /// Put LAN deckies (config version 2, compose driver) on this
        /// interface when the config names a parent this worker lacks or a
        /// subnet it is not on; default: the default-route interface.
        #[arg(long, value_name = "IFACE")]
        decky_interface: Option<String>,
        /// Where deckies' networks live: `own` (process deckies: a user and
        /// network namespace per decky, loopback only, their ports bound by
        /// the agent and handed in; compose deckies: a bridge of their own
        /// whose outbound traffic the host's firewall refuses but for the
        /// egress allow-list) or `host` (uncontained: process deckies share
        /// the host's network, what compose deckies send is not held back;
        /// for hosts that forbid user namespaces or firewall changes).
        #[arg(long, value_enum, default_value_t = NetworkArg::Own)]
        decky_network: NetworkArg,
        /// Keep this many evidence archives per process decky (what its
        /// working directory held at a teardown, fetched with `decnet swarm
        /// evidence`); 0 keeps none.
        #[arg(long, value_name = "N", default_value_t = 5)]
        evidence_keep: usize,
        /// Bound of the evidence archive in MiB, all deckies together (the
        /// oldest archives go first; the newest always stays).
        #[arg(long, value_name = "MIB", default_value_t = 2048)]
        evidence_max_mb: u64,
        /// Tear every decky down and exit without serving (the package's
        /// removal runs it: deckies outlive the agent's unit).
        #[arg(long, hide = true)]
        teardown_and_exit: bool,
        /// The Prometheus endpoint.
        #[command(flatten)]
        metrics: decnet_server::metrics::MetricsArgs,
    },
    /// Rebuild the firewall chains of the compose deckies' bridges saved in
    /// STATE_DIR/compose/firewall.json, at boot before the Docker engine
    /// restarts their containers (decnet-decky-firewall.service): until
    /// the agent runs, a restarted decky would otherwise reach out freely.
    HoldNetworks {
        /// The agent's state directory; default ~/.decnet/agent-state.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Internal: the per-decky shepherd, started by `serve`.
    #[command(hide = true)]
    Shepherd,
    /// Internal: whether a decky can get a network of its own here (run
    /// by `serve` at start, as an unprivileged user like a decky).
    #[command(hide = true)]
    ProbeDeckyNetwork,
    /// Internal: confine this process and exec a decky, started by a shepherd.
    #[command(hide = true)]
    ExecDecky,
    /// Join the fleet with a one-time token: generate the key here, get the
    /// certificate from the master, write the agent bundle.
    Join {
        /// The master's control API, HOST[:8770] (port 8770 by default).
        #[arg(long, value_name = "HOST[:8770]")]
        master: String,
        /// The token printed by `decnet swarm token create` (or use
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
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Where to write the bundle; default ~/.decnet/agent.
        #[arg(long, value_name = "DIR")]
        bundle_dir: Option<PathBuf>,
        /// This worker's host name: the join is refused when the token is bound to another.
        #[arg(long)]
        host: Option<String>,
    },
    /// Forward a log file to the master's listener (RFC 5425 over mTLS).
    Forward {
        /// The listener, HOST[:6514] (port 6514 by default).
        #[arg(long, value_name = "HOST[:6514]")]
        master: String,
        /// The log file to tail.
        #[arg(long, value_name = "PATH")]
        log_file: PathBuf,
        /// Agent bundle directory; default ~/.decnet/agent.
        #[arg(long, value_name = "DIR")]
        bundle_dir: Option<PathBuf>,
        /// Where the delivered offset is kept; default ~/.decnet/agent-state.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Pin the listener's certificate fingerprint (SHA-256 hex).
        #[arg(long, value_name = "SHA256")]
        master_fingerprint: Option<String>,
        /// APP-NAME of wrapped lines.
        #[arg(long, default_value = "decnet")]
        app_name: String,
        /// The Prometheus endpoint.
        #[command(flatten)]
        metrics: decnet_server::metrics::MetricsArgs,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum IsolationArg {
    Uid,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NetworkArg {
    Own,
    Host,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DriverArg {
    Process,
    Compose,
}

fn main() {
    let cli = Cli::parse();
    // The decky helpers run before anything starts a thread: the id switch
    // in exec-decky changes only the calling thread.
    match cli.command {
        Command::Shepherd => std::process::exit(decnet_agent::driver::shepherd::shepherd_main()),
        Command::ProbeDeckyNetwork => {
            std::process::exit(decnet_agent::driver::shepherd::probe_network_main())
        }
        Command::ExecDecky => std::process::exit(decnet_agent::driver::shepherd::exec_decky_main()),
        _ => {}
    }
    decnet_telemetry::init_logging(cli.log_format, "info");
    if matches!(cli.command, Command::Serve { .. }) {
        // The agent's socket, when systemd or the updater holds it across
        // restarts: taken before anything else opens a descriptor.
        if let Err(e) = decnet_server::activation::adopt_inherited() {
            eprintln!("error: {e}");
            std::process::exit(1);
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
    let code = rt.block_on(async move {
        match cli.command {
            Command::Serve {
                host,
                port,
                bundle_dir,
                state_dir,
                driver,
                compose_project,
                stop_grace,
                forward_to,
                forward_log,
                master_fingerprint,
                master,
                no_master,
                heartbeat_interval,
                decky_isolation,
                decky_ids,
                decky_root,
                decky_log_max,
                decky_interface,
                decky_network,
                evidence_keep,
                evidence_max_mb,
                teardown_and_exit,
                metrics,
            } => {
                let home = decnet_pki::bundle::default_decnet_home();
                let bundle_dir = bundle_dir.unwrap_or_else(|| home.join("agent"));
                let heartbeat = HeartbeatSpec {
                    master,
                    no_master,
                    interval: Duration::from_secs(heartbeat_interval.max(1)),
                    pin: master_fingerprint.clone(),
                };
                let forward = match (forward_to, forward_log) {
                    (Some(master), Some(log)) => Some(ForwardSpec {
                        master,
                        log_file: log,
                        pin: master_fingerprint,
                        app_name: "decnet".into(),
                    }),
                    _ => None,
                };
                let opts = ServeOptions {
                    listen: SocketAddr::new(host, port),
                    bundle_dir,
                    state_dir: state_dir.unwrap_or_else(|| home.join("agent-state")),
                    driver: match driver {
                        DriverArg::Process => DriverKind::Process,
                        DriverArg::Compose => DriverKind::Compose,
                    },
                    compose_project,
                    stop_grace: Duration::from_secs(stop_grace),
                    isolation: match decky_isolation {
                        IsolationArg::Uid => Isolation::PerDeckyUid(decky_ids),
                        IsolationArg::None => Isolation::None,
                    },
                    decky_root,
                    decky_log_max,
                    decky_interface,
                    decky_network: match decky_network {
                        NetworkArg::Own => decnet_confine::DeckyNetwork::Own,
                        NetworkArg::Host => decnet_confine::DeckyNetwork::Host,
                    },
                    evidence: decnet_agent::evidence::EvidenceLimits {
                        keep: evidence_keep,
                        max_bytes: evidence_max_mb.saturating_mul(1 << 20),
                    },
                };
                if teardown_and_exit {
                    return match daemon::teardown_all(&opts).await {
                        Ok(names) => {
                            println!("torn down: {}", names.join(" "));
                            0
                        }
                        Err(e) => {
                            eprintln!("error: {e}");
                            1
                        }
                    };
                }
                serve(opts, forward, heartbeat, metrics).await
            }
            Command::Join {
                master,
                token,
                token_file,
                port,
                bundle_dir,
                host,
            } => {
                let dir = bundle_dir
                    .unwrap_or_else(|| decnet_pki::bundle::default_decnet_home().join("agent"));
                decnet_swarm_client::join::join_command(
                    &decnet_swarm_client::transport::with_default_port(&master, 8770),
                    token.as_deref(),
                    token_file.as_deref(),
                    decnet_pki::BundleKind::Agent,
                    &dir,
                    &decnet_swarm_client::join::JoinOptions {
                        claimed_host: host.as_deref(),
                        port: Some(port),
                    },
                )
                .await
            }
            // Dispatched before the runtime started.
            Command::Shepherd | Command::ExecDecky | Command::ProbeDeckyNetwork => 2,
            Command::HoldNetworks { state_dir } => {
                let dir = state_dir
                    .unwrap_or_else(|| {
                        decnet_pki::bundle::default_decnet_home().join("agent-state")
                    })
                    .join("compose");
                match decnet_agent::driver::compose_firewall::restore_saved(&dir).await {
                    Ok(n) => {
                        println!("{n} decky network(s) held");
                        0
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        1
                    }
                }
            }
            Command::Forward {
                master,
                log_file,
                bundle_dir,
                state_dir,
                master_fingerprint,
                app_name,
                metrics,
            } => {
                let home = decnet_pki::bundle::default_decnet_home();
                let spec = ForwardSpec {
                    master,
                    log_file,
                    pin: master_fingerprint,
                    app_name,
                };
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    decnet_server::shutdown_signal().await;
                    let _ = tx.send(true);
                });
                forward(
                    &spec,
                    &bundle_dir.unwrap_or_else(|| home.join("agent")),
                    &state_dir.unwrap_or_else(|| home.join("agent-state")),
                    rx,
                    &metrics,
                )
                .await
            }
        }
    });
    std::process::exit(code);
}

/// Where to send heartbeats.
struct HeartbeatSpec {
    /// `--master` (else the one recorded beside the bundle).
    master: Option<String>,
    /// `--no-master`: start even without one.
    no_master: bool,
    interval: Duration,
    pin: Option<String>,
}

/// What to forward where.
struct ForwardSpec {
    master: String,
    log_file: PathBuf,
    pin: Option<String>,
    app_name: String,
}

/// Build the forwarder's options; `Err` is a setup error (exit 2).
fn forwarder_setup(
    spec: &ForwardSpec,
    material: &decnet_pki::MaterialSource,
    state_dir: &std::path::Path,
) -> Result<(ForwarderOptions, Option<decnet_pki::Fingerprint>), String> {
    let pin = parse_pin(spec.pin.as_deref())?;
    let master = decnet_swarm_client::transport::with_default_port(&spec.master, 6514);
    let mut opts = ForwarderOptions::new(
        master,
        spec.log_file.clone(),
        state_dir,
        material.current().bundle().identity.cn.clone(),
    );
    opts.app_name = spec.app_name.clone();
    Ok((opts, pin))
}

fn parse_pin(pin: Option<&str>) -> Result<Option<decnet_pki::Fingerprint>, String> {
    pin.map(|p| {
        p.parse::<decnet_pki::Fingerprint>()
            .map_err(|e| format!("--master-fingerprint: {e}"))
    })
    .transpose()
}

async fn forward(
    spec: &ForwardSpec,
    bundle_dir: &std::path::Path,
    state_dir: &std::path::Path,
    shutdown: tokio::sync::watch::Receiver<bool>,
    metrics: &decnet_server::metrics::MetricsArgs,
) -> i32 {
    let material = match decnet_swarm_client::master_link::load_material(
        bundle_dir,
        decnet_pki::BundleKind::Agent,
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let (opts, pin) = match forwarder_setup(spec, &material, state_dir) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    decnet_log_relay::metrics::forwarder_metrics();
    if let Err(e) =
        decnet_server::metrics::start_metrics(metrics, "decnet-agent forward", Some(&material))
            .await
    {
        eprintln!("error: --metrics-addr: {e}");
        return 2;
    }
    println!(
        "decnet-agent forwarding {} to {}",
        opts.log_file.display(),
        opts.master
    );
    // The agent beside it renews the bundle (and takes a CA rotation's
    // trust set and new CRLs) in the same directory: follow it, or this
    // forwarder would hold a certificate the master retires.
    let watch = tokio::spawn(follow_bundle_dir(
        bundle_dir.to_path_buf(),
        material.clone(),
    ));
    let result = decnet_log_relay::forwarder::run(opts, material, pin, shutdown).await;
    watch.abort();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// How often a standalone forwarder looks at its bundle directory.
const BUNDLE_FOLLOW: std::time::Duration = std::time::Duration::from_secs(2);

/// Keep `material` equal to the bundle and CRL in `dir` (written by the
/// agent that shares it): a renewed certificate, a new trust set or a newer
/// CRL is put in force; an unreadable or half-written state is skipped.
async fn follow_bundle_dir(dir: std::path::PathBuf, material: decnet_pki::MaterialSource) {
    loop {
        tokio::time::sleep(BUNDLE_FOLLOW).await;
        let Ok(b) = decnet_pki::Bundle::load(&dir, decnet_pki::BundleKind::Agent) else {
            continue;
        };
        let cur = material.current();
        let same = b.identity.fingerprint == cur.bundle().identity.fingerprint
            && b.ca_pem == cur.bundle().ca_pem;
        if !same {
            match material.set_bundle(b) {
                Ok(()) => tracing::info!("the agent's renewed bundle is in use"),
                Err(e) => tracing::warn!(error = %e, "cannot use the bundle the agent wrote"),
            }
        }
        let cur = material.current();
        if let Some(crl) = cur.bundle().load_crl(&dir)
            && cur.crl().is_none_or(|held| {
                held.number() < crl.number() || *held != crl && held.number() == crl.number()
            })
        {
            let _ = material.set_crl(crl);
        }
    }
}

async fn serve(
    opts: ServeOptions,
    forward_spec: Option<ForwardSpec>,
    heartbeat: HeartbeatSpec,
    metrics: decnet_server::metrics::MetricsArgs,
) -> i32 {
    let heartbeat_pin = match parse_pin(heartbeat.pin.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let agent = match daemon::start(&opts).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    // No --master: the master this bundle was joined through or enrolled
    // for; none at all refuses to start (checked once the bundle loaded,
    // so a missing bundle is reported first).
    let master = match decnet_swarm_client::join::master_for(
        heartbeat.master.clone(),
        &opts.bundle_dir,
        heartbeat.no_master,
    ) {
        Ok(m) => m.map(|m| decnet_swarm_client::transport::with_default_port(&m, 8770)),
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let forwarder = match &forward_spec {
        Some(spec) => match forwarder_setup(spec, &agent.material, &opts.state_dir) {
            Ok(x) => Some(x),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
        None => None,
    };
    decnet_agent::metrics::agent_metrics();
    if let Err(e) =
        decnet_server::metrics::start_metrics(&metrics, "decnet-agent", Some(&agent.material)).await
    {
        eprintln!("error: --metrics-addr: {e}");
        return 2;
    }
    let mut tasks = Vec::new();
    if let Some(master) = master {
        let hb = &heartbeat;
        tracing::info!(%master, interval = ?hb.interval, "sending heartbeats; renewing the certificate with the master");
        let link = MasterLink::new(master, agent.material.clone(), heartbeat_pin);
        let wake = decnet_agent::heartbeat::Wakeups {
            renew_now: Arc::new(tokio::sync::Notify::new()),
            crl_now: Arc::new(tokio::sync::Notify::new()),
        };
        tasks.push(tokio::spawn(decnet_agent::heartbeat::run(
            agent.executor.clone(),
            link.clone(),
            hb.interval,
            wake.clone(),
        )));
        tasks.push(tokio::spawn(master_link::keep_renewed(
            link.clone(),
            opts.bundle_dir.clone(),
            wake.renew_now.clone(),
        )));
        tasks.push(tokio::spawn(master_link::keep_crl_fresh(
            link,
            opts.bundle_dir.clone(),
            CRL_REFRESH,
            wake.crl_now,
            Some(wake.renew_now),
        )));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let forward_task = forwarder.map(|(fopts, pin)| {
        tracing::info!(file = %fopts.log_file.display(), master = %fopts.master, "forwarding logs");
        let material = agent.material.clone();
        tokio::spawn(async move {
            decnet_log_relay::forwarder::run(fopts, material, pin, stop_rx).await
        })
    });
    // Tests and supervisors read this line to learn the bound port.
    println!("decnet-agent listening on {}", agent.local_addr);
    tracing::info!(addr = %agent.local_addr, driver = %opts.driver, "agent serving");
    let result = agent.serve(decnet_server::shutdown_signal()).await;
    for t in tasks {
        t.abort();
    }
    let _ = stop_tx.send(true);
    if let Some(t) = forward_task {
        let _ = t.await;
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: serving failed: {e}");
            1
        }
    }
}

/// How often the agent re-fetches the CRL when no heartbeat announced a
/// newer one (a backstop: heartbeats announce every change).
const CRL_REFRESH: Duration = Duration::from_secs(3600);
