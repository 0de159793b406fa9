//! `decnet-agent serve`: load the bundle, recover the deckies, and serve the
//! API over mTLS until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use decnet_pki::{BundleKind, ClientAuth, MaterialSource, Role};
use decnet_server::{HttpLimits, HttpService, Server, ServerLimits, Transport};
use tokio::sync::mpsc;

use crate::api::{AgentPolicy, router};
use crate::config::DriverKind;
use crate::driver::Driver;
use crate::driver::compose::ComposeDriver;
use crate::driver::process::{Isolation, ProcessDriver, ProcessOptions};
use crate::executor::Executor;
use crate::state::StateStore;

/// Settings of `decnet-agent serve`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Listen address.
    pub listen: SocketAddr,
    /// The agent bundle directory.
    pub bundle_dir: PathBuf,
    /// Where the state file, logs and compose project live.
    pub state_dir: PathBuf,
    /// Which driver runs the deckies.
    pub driver: DriverKind,
    /// Compose project name.
    pub compose_project: String,
    /// SIGTERM → SIGKILL grace for process deckies.
    pub stop_grace: Duration,
    /// How process deckies are separated from the agent and each other.
    pub isolation: Isolation,
    /// Parent of the process deckies' working directories (default
    /// `<state-dir>/deckies`).
    pub decky_root: Option<PathBuf>,
    /// Rotation size of a process decky's log.
    pub decky_log_max: u64,
    /// Where a LAN config for another interface or subnet is relocalised
    /// (default: the default-route interface).
    pub decky_interface: Option<String>,
    /// Where process deckies' networks live.
    pub decky_network: decnet_confine::DeckyNetwork,
    /// Bounds of the process deckies' evidence archive.
    pub evidence: crate::evidence::EvidenceLimits,
}

/// Why the agent cannot start: every variant is an operator-fixable setup
/// problem (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The bundle is missing or unusable.
    #[error("{0}")]
    Bundle(String),
    /// The bundle is not an agent's.
    #[error(
        "the bundle in {0} is not an agent bundle (its CN must be the host name); run `decnet swarm enroll` on the master"
    )]
    NotAgent(String),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] decnet_pki::TlsError),
    /// The state file is unusable.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The listen address cannot be bound.
    #[error(transparent)]
    Bind(#[from] decnet_server::ServerError),
    /// The agent lacks what its driver needs.
    #[error("{0}")]
    Driver(String),
    /// A teardown of every decky failed (some may still run).
    #[error("the teardown failed: {0}")]
    Teardown(String),
}

/// A started agent: its bound address and the future that serves it.
pub struct RunningAgent {
    /// The bound address (after port 0 resolution).
    pub local_addr: SocketAddr,
    /// The executor (for embedding).
    pub executor: Arc<Executor>,
    /// The agent's live TLS material (renewal and CRLs update it).
    pub material: MaterialSource,
    server: Server,
    policy: AgentPolicy,
}

impl RunningAgent {
    /// Serve until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // The agent's body limit is the server's default one, which wraps
        // the router once (a body-limit layer on the router itself is
        // boxed and cloned with every route on every request).
        let limits = HttpLimits {
            max_body_bytes: crate::api::MAX_BODY,
            ..HttpLimits::default()
        };
        let app = HttpService::new(router(self.executor), self.policy, limits);
        self.server.serve(app, shutdown).await;
        Ok(())
    }
}

/// The process driver for `opts`, after checking the agent holds what
/// per-decky ids need.
fn process_driver(
    opts: &ServeOptions,
    events: mpsc::UnboundedSender<crate::driver::DriverEvent>,
) -> Result<ProcessDriver, SetupError> {
    match opts.isolation {
        Isolation::PerDeckyUid(range) => {
            let missing = decnet_confine::caps::missing(decnet_confine::caps::FOR_PER_DECKY_IDS);
            if !missing.is_empty() {
                return Err(SetupError::Driver(format!(
                    "process deckies run under uids of their own ({range}), which needs {}; run the agent as root (the shipped unit does) or, for development only, pass --decky-isolation none",
                    missing.join(", ")
                )));
            }
        }
        Isolation::None => tracing::warn!(
            "--decky-isolation none: deckies run as the agent's own user and can read its key (development only)"
        ),
    }
    let mut p = ProcessOptions::new(opts.state_dir.clone(), opts.isolation);
    if let Some(root) = &opts.decky_root {
        p.decky_root = root.clone();
    }
    p.grace = opts.stop_grace;
    p.log_max = opts.decky_log_max;
    p.network = opts.decky_network;
    p.evidence = opts.evidence;
    (p.network_probe, p.processes_probe) = match opts.decky_network {
        decnet_confine::DeckyNetwork::Own => match probe_decky_network(&p.helper) {
            Ok(processes) => (Ok(()), processes),
            Err(why) => (Err(why.clone()), Err(why)),
        },
        decnet_confine::DeckyNetwork::Host => (
            Ok(()),
            Err("deckies share the host's network (--decky-network host)".into()),
        ),
    };
    match &p.processes_probe {
        Ok(()) => {
            tracing::info!("process deckies get processes of their own (PID namespace, own /proc)")
        }
        Err(why) => tracing::warn!(reason = %why, "process deckies see the host's processes"),
    }
    match (&p.network, &p.network_probe) {
        (decnet_confine::DeckyNetwork::Own, Ok(())) => {
            tracing::info!("process deckies get a network of their own (loopback only)")
        }
        (decnet_confine::DeckyNetwork::Own, Err(why)) => tracing::error!(
            reason = %why,
            "this host cannot give deckies a network of their own: process deckies are refused (start with --decky-network host to run them uncontained)"
        ),
        (decnet_confine::DeckyNetwork::Host, _) => tracing::warn!(
            "--decky-network host: process deckies share the host's network (uncontained)"
        ),
    }
    p.cgroup = decnet_confine::cgroup::CgroupTree::detect();
    match &p.cgroup {
        Ok(tree) => tracing::info!(root = %tree.root().display(), "decky limits through cgroup v2"),
        Err(why) => tracing::info!(
            reason = %why,
            "no cgroup v2 for deckies: memory bounded by RLIMIT_AS, processes by RLIMIT_NPROC, CPU not limited"
        ),
    }
    ProcessDriver::new(p, events).map_err(SetupError::Driver)
}

/// The compose driver for `opts`, after checking whether the host's
/// firewall can hold deckies' networks.
async fn compose_driver(opts: &ServeOptions) -> ComposeDriver {
    use decnet_confine::DeckyNetwork;
    let firewall = match opts.decky_network {
        DeckyNetwork::Own => crate::driver::compose_firewall::probe()
            .await
            .map_err(|e| e.0),
        DeckyNetwork::Host => Ok(()),
    };
    match (opts.decky_network, &firewall) {
        (DeckyNetwork::Own, Ok(())) => tracing::info!(
            "compose deckies get a bridge of their own; the host's firewall holds what they send"
        ),
        (DeckyNetwork::Own, Err(why)) => tracing::error!(
            reason = %why,
            "this host cannot firewall deckies' networks: compose deckies off the LAN are refused (start with --decky-network host to run them uncontained)"
        ),
        (DeckyNetwork::Host, _) => tracing::warn!(
            "--decky-network host: what compose deckies send is not held back (uncontained)"
        ),
    }
    ComposeDriver::new(
        opts.compose_project.clone(),
        opts.state_dir.join("compose"),
        opts.decky_network,
        firewall,
    )
}

/// Whether a decky can get a network of its own here (`Err`: why not) and,
/// if so, processes of its own (the inner result): the helper tries it in a
/// fresh single-threaded process, as an unprivileged user.
fn probe_decky_network(helper: &std::path::Path) -> Result<Result<(), String>, String> {
    let out = std::process::Command::new(helper)
        .arg("probe-decky-network")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the probe: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let said = String::from_utf8_lossy(&out.stdout);
    Ok(
        match said.lines().find_map(|l| l.strip_prefix("processes=")) {
            Some("own") => Ok(()),
            Some(other) => Err(other.strip_prefix("shared: ").unwrap_or(other).to_string()),
            None => Err("the probe did not say".into()),
        },
    )
}

/// Load everything, recover deckies and bind the listener.
pub async fn start(opts: &ServeOptions) -> Result<RunningAgent, SetupError> {
    let (material, host, executor) = recover(opts).await?;
    let server = Server::bind(
        "agent",
        opts.listen,
        Transport::Tls {
            material: material.clone(),
            auth: ClientAuth::Required,
        },
        ServerLimits::default(),
    )
    .await?;
    Ok(RunningAgent {
        local_addr: server.local_addr(),
        executor,
        material,
        server,
        policy: AgentPolicy { own_host: host },
    })
}

/// Tear down every decky and return their names, without serving: for the
/// package's removal (deckies outlive the agent's unit, `KillMode=process`,
/// so stopping the agent alone would leave them running). Their working
/// directories become evidence as in any teardown.
pub async fn teardown_all(opts: &ServeOptions) -> Result<Vec<String>, SetupError> {
    let (_, _, executor) = recover(opts).await?;
    executor
        .teardown(None)
        .await
        .map_err(|e| SetupError::Teardown(e.to_string()))
}

/// Load the bundle and the state, start the driver and take the running
/// deckies over.
async fn recover(
    opts: &ServeOptions,
) -> Result<(MaterialSource, decnet_pki::HostName, Arc<Executor>), SetupError> {
    let material =
        decnet_swarm_client::master_link::load_material(&opts.bundle_dir, BundleKind::Agent)
            .map_err(SetupError::Bundle)?;
    let Role::Agent(host) = material.current().bundle().identity.role.clone() else {
        return Err(SetupError::NotAgent(opts.bundle_dir.display().to_string()));
    };
    let store = StateStore::open(&opts.state_dir)?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let driver: Arc<dyn Driver> = match opts.driver {
        DriverKind::Process => Arc::new(process_driver(opts, events_tx)?),
        DriverKind::Compose => Arc::new(compose_driver(opts).await),
    };
    let executor = Executor::start(
        host.to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
        driver,
        store,
        events_rx,
        opts.decky_interface.clone(),
    )?;
    executor.recover().await;
    Ok((material, host, executor))
}
