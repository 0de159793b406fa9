//! The `process` driver: each decky is a local program, confined and
//! supervised.
//!
//! Containment (a decky is attacked by design, so assume its program runs
//! the attacker's code): by default every decky runs under a uid and gid of
//! its own from a reserved range ([`decnet_confine::IdRange`], recorded in
//! [`DeckyIds`]), with no supplementary groups, `no_new_privs`, a session of
//! its own, a `0700` working directory under `<state-dir>/deckies`, only the
//! environment its config names plus `DECNET_*`, and limits on open files,
//! processes, memory and CPU (cgroup v2 where the host delegates one,
//! rlimits otherwise). It never sees the agent's bundle, state or release
//! tree: they belong to another user and are closed to others.
//!
//! Each decky runs under a [`shepherd`](super::shepherd) that holds its
//! output pipe (log capped by rotation), sweeps what the program leaves
//! behind and records its exit. A supervisor task here restarts it on exit
//! per its restart policy, with exponential backoff, giving up after a
//! crash loop.
//!
//! Deckies outlive the agent process on purpose: an agent restart (upgrade,
//! crash) does not take the workloads down. The next agent re-adopts each
//! recorded shepherd when its pid still names the same process (same kernel
//! start time) and otherwise starts the decky again. Signals go only to
//! processes verified through a pidfd ([`decnet_proc::ProcessHandle`]), or
//! to every process of a uid that belongs to one decky alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use decnet_confine::cgroup::CgroupTree;
use decnet_confine::{AccountDb, ConfinedExec, DeckyNetwork, ExecIdentity, IdRange};
use decnet_proc::{ProcessHandle, Signal};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};

use super::decky_ids::DeckyIds;
use super::egress_proxy::NetworkFigures;
use super::shepherd::{self, ShepherdSpec};
use super::{
    Driver, DriverError, DriverEvent, DriverFuture, Observation, ProcId, ProcessFacts, Refusal,
    Started,
};
use crate::config::{
    DeckyConfig, DeploymentConfig, DriverKind, PortMapping, Protocol, RestartPolicy,
};
use crate::evidence::{EvidenceArchive, EvidenceLimits};

/// After this many consecutive quick crashes a decky is given up on.
pub const MAX_CRASH_LOOP: u32 = 5;
/// A run longer than this resets the crash counter and the backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Default cap of a decky's log before it rotates to `<log>.1`.
pub const DEFAULT_LOG_MAX: u64 = 8 << 20;

/// How process deckies are separated from the agent and from each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Every decky under a uid of its own from the range (needs the
    /// capabilities in [`decnet_confine::caps::FOR_PER_DECKY_IDS`]).
    PerDeckyUid(IdRange),
    /// Deckies run as the agent's own user: development only, for an agent
    /// that cannot switch ids. A decky can then read the agent's key.
    None,
}

/// Settings of the process driver.
#[derive(Debug)]
pub struct ProcessOptions {
    /// The agent's state dir: `logs/`, `run/`, `decky-ids.json` live here.
    pub state_dir: PathBuf,
    /// Parent of the deckies' working directories.
    pub decky_root: PathBuf,
    /// How deckies are separated.
    pub isolation: Isolation,
    /// SIGTERM → SIGKILL grace when stopping.
    pub grace: Duration,
    /// Log rotation size.
    pub log_max: u64,
    /// The agent binary, re-executed as shepherd and confinement helper.
    pub helper: PathBuf,
    /// The cgroup v2 tree for limits, or why there is none.
    pub cgroup: Result<CgroupTree, String>,
    /// Where deckies' networks live: their own namespace (loopback only),
    /// or the host's (uncontained, the operator's explicit choice).
    pub network: DeckyNetwork,
    /// Whether this host can give a decky a network of its own (`Err`: why
    /// not; with [`DeckyNetwork::Own`] process deckies are then refused).
    pub network_probe: Result<(), String>,
    /// Bounds of the evidence archive (`<state-dir>/evidence`).
    pub evidence: EvidenceLimits,
    /// Whether deckies with a network of their own get processes of their
    /// own too (a PID namespace with its own `/proc`; `Err`: why not).
    pub processes_probe: Result<(), String>,
}

impl ProcessOptions {
    /// Defaults for a driver keeping its files in `state_dir`.
    pub fn new(state_dir: PathBuf, isolation: Isolation) -> ProcessOptions {
        ProcessOptions {
            decky_root: state_dir.join("deckies"),
            state_dir,
            isolation,
            grace: Duration::from_secs(10),
            log_max: DEFAULT_LOG_MAX,
            helper: PathBuf::from("/proc/self/exe"),
            cgroup: Err("not probed".into()),
            network: DeckyNetwork::Host,
            network_probe: Err("not probed".into()),
            evidence: EvidenceLimits::default(),
            processes_probe: Err("not probed".into()),
        }
    }
}

struct Inner {
    opts: ProcessOptions,
    evidence: EvidenceArchive,
    ids: Mutex<Option<DeckyIds>>,
    events: mpsc::UnboundedSender<DriverEvent>,
    agent_uid: u32,
    /// The listening sockets the agent bound for each decky (held while it
    /// is deployed, so nothing else can take its ports between runs).
    ports: Mutex<HashMap<String, Vec<BoundPort>>>,
}

/// One port bound for a decky.
struct BoundPort {
    port: PortMapping,
    socket: OwnedFd,
}

/// `tcp-22`: a socket's name in `LISTEN_FDNAMES`.
fn port_name(p: &PortMapping) -> String {
    let proto = match p.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    format!("{proto}-{}", p.host)
}

/// Bind `p` on every IPv4 address of the host.
fn bind_port(p: &PortMapping) -> std::io::Result<OwnedFd> {
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], p.host));
    Ok(match p.protocol {
        Protocol::Tcp => std::net::TcpListener::bind(addr)?.into(),
        Protocol::Udp => std::net::UdpSocket::bind(addr)?.into(),
    })
}

struct Supervised {
    stop: oneshot::Sender<oneshot::Sender<()>>,
}

/// Confined, supervised local processes.
pub struct ProcessDriver {
    inner: Arc<Inner>,
    supervised: Mutex<HashMap<String, Supervised>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProcessDriver {
    /// A driver with `opts`, reporting lifecycle changes on `events`.
    /// Creates its directories (`0700`) and loads the uid book.
    pub fn new(
        opts: ProcessOptions,
        events: mpsc::UnboundedSender<DriverEvent>,
    ) -> Result<ProcessDriver, String> {
        for d in [
            opts.state_dir.join("logs"),
            opts.state_dir.join("run"),
            opts.decky_root.clone(),
        ] {
            decnet_pki::secure_fs::ensure_private_dir(&d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let evidence = EvidenceArchive::open(opts.state_dir.join("evidence"), opts.evidence)?;
        let ids = match opts.isolation {
            Isolation::PerDeckyUid(range) => Some(DeckyIds::open(
                opts.state_dir.join("decky-ids.json"),
                range,
            )?),
            Isolation::None => None,
        };
        Ok(ProcessDriver {
            inner: Arc::new(Inner {
                opts,
                evidence,
                ids: Mutex::new(ids),
                events,
                agent_uid: decnet_proc::current_uid(),
                ports: Mutex::new(HashMap::new()),
            }),
            supervised: Mutex::new(HashMap::new()),
        })
    }

    fn supervise(&self, decky: DeckyConfig, running: Running, facts: ProcessFacts) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let sup = Supervisor {
            decky: decky.clone(),
            running,
            facts,
            inner: Arc::clone(&self.inner),
        };
        tokio::spawn(sup.run(stop_rx));
        let previous = lock(&self.supervised).insert(decky.name, Supervised { stop: stop_tx });
        drop(previous);
    }

    /// After a teardown: end every process of the decky's own uid, archive
    /// and remove its working directory (read as the decky), then free the
    /// uid — only once nothing of it is left.
    async fn archive_and_free(&self, decky: &DeckyConfig) -> Result<(), DriverError> {
        let (reader, exclusive) = match self.inner.opts.isolation {
            Isolation::None => (None, None),
            Isolation::PerDeckyUid(_) => match &decky.user {
                Some(user) => (
                    AccountDb::load()
                        .resolve(user)
                        .ok()
                        .map(|ids| ExecIdentity {
                            uid: ids.uid,
                            gid: ids.gid,
                        }),
                    None,
                ),
                None => {
                    let uid = lock(&self.inner.ids)
                        .as_ref()
                        .and_then(|b| b.get(&decky.name));
                    (uid.map(|uid| ExecIdentity { uid, gid: uid }), uid)
                }
            },
        };
        let inner = Arc::clone(&self.inner);
        let name = decky.name.clone();
        let (all_gone, archived) = tokio::task::spawn_blocking(move || {
            let all_gone = match exclusive {
                Some(uid) => decnet_proc::kill_user(uid, Duration::from_secs(5)),
                None => true,
            };
            let archived = inner.evidence.archive(
                &inner.opts.decky_root,
                &name,
                reader,
                time::OffsetDateTime::now_utc(),
            );
            (all_gone, archived)
        })
        .await
        .map_err(|e| DriverError(e.to_string()))?;
        let mut archived = archived.map_err(|e| DriverError(e.to_string()))?;
        if !all_gone {
            // Something of its uid outlived every kill: the uid is not
            // handed to anyone else.
            archived
                .residue
                .get_or_insert_with(|| "processes of its uid survived the teardown".into());
        }
        if let Some(e) = &archived.entry {
            tracing::info!(decky = %decky.name, id = %e.id, bytes = e.bytes, "working directory archived as evidence");
            crate::metrics::agent_metrics().evidence_archived(&decky.name);
        }
        let _ = std::fs::remove_file(self.inner.usage_path(&decky.name));
        let _ = std::fs::remove_file(self.inner.network_path(&decky.name));
        match (archived.residue, exclusive) {
            (Some(residue), _) => {
                tracing::warn!(decky = %decky.name, %residue, "the working directory was not removed entirely: its uid stays reserved");
            }
            // Freed only when nothing of it can outlive the decky: its
            // scratch and IPC objects died with its own namespaces. On the
            // host's network it may have left files in the shared /tmp,
            // IPC objects or keyrings under its uid: that uid stays its own.
            (None, Some(_)) if self.own_namespaces() => {
                if let Some(book) = lock(&self.inner.ids).as_mut() {
                    book.release(&decky.name).map_err(DriverError)?;
                }
            }
            (None, Some(_)) => {}
            (None, None) => {}
        }
        Ok(())
    }

    /// Whether deckies run in namespaces of their own (network, scratch,
    /// IPC), so nothing of theirs outlives them outside their directory.
    fn own_namespaces(&self) -> bool {
        self.inner.opts.network == DeckyNetwork::Own && self.inner.opts.network_probe.is_ok()
    }

    async fn stop_supervised(&self, name: &str) -> bool {
        let sup = lock(&self.supervised).remove(name);
        match sup {
            Some(sup) => {
                let (ack_tx, ack_rx) = oneshot::channel();
                if sup.stop.send(ack_tx).is_ok() {
                    let _ = ack_rx.await;
                }
                true
            }
            None => false,
        }
    }
}

/// Why process deckies are refused on a host that cannot give them a
/// network of their own.
fn no_own_network(why: &str) -> String {
    format!(
        "this host cannot give a decky a network of its own ({why}); start the agent with --decky-network host to run process deckies on the host's network, uncontained (reported in /status)"
    )
}

/// Which uid belongs to `decky` alone (so every process of it is the
/// decky's): its allocated one, never a named account's.
fn exclusive_uid(inner: &Inner, decky: &DeckyConfig, uid: Option<u32>) -> Option<u32> {
    match inner.opts.isolation {
        Isolation::PerDeckyUid(_) if decky.user.is_none() => uid,
        _ => None,
    }
}

impl Inner {
    /// Bind what `decky` listens on unless it holds it already; a port
    /// another decky or another program holds is a conflict.
    fn reserve_ports(&self, decky: &DeckyConfig) -> Result<(), Refusal> {
        let mut held = lock(&self.ports);
        if let Some(mine) = held.get(&decky.name)
            && mine.iter().map(|b| b.port).eq(decky.ports.iter().copied())
        {
            return Ok(());
        }
        for p in &decky.ports {
            if let Some((other, _)) = held.iter().find(|(n, bound)| {
                **n != decky.name
                    && bound
                        .iter()
                        .any(|b| b.port.host == p.host && b.port.protocol == p.protocol)
            }) {
                return Err(Refusal::Conflict(format!(
                    "port {} is already held by decky {other}",
                    port_name(p)
                )));
            }
        }
        // A redeploy with other ports gives up the old ones first.
        held.remove(&decky.name);
        let mut bound = Vec::with_capacity(decky.ports.len());
        for p in &decky.ports {
            match bind_port(p) {
                Ok(socket) => bound.push(BoundPort { port: *p, socket }),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(Refusal::Conflict(format!(
                        "port {} is already taken on this host",
                        port_name(p)
                    )));
                }
                Err(e) => {
                    return Err(Refusal::Unsupported(format!(
                        "cannot bind port {}: {e}",
                        port_name(p)
                    )));
                }
            }
        }
        if !bound.is_empty() {
            held.insert(decky.name.clone(), bound);
        }
        Ok(())
    }

    /// Copies of the sockets bound for `decky` (bound now when the agent
    /// restarted since its deploy), with their names.
    fn sockets_for(&self, decky: &DeckyConfig) -> Result<(Vec<OwnedFd>, Vec<String>), DriverError> {
        if decky.ports.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        self.reserve_ports(decky)
            .map_err(|r| DriverError(r.to_string()))?;
        let held = lock(&self.ports);
        let mine = held.get(&decky.name).map(Vec::as_slice).unwrap_or(&[]);
        let mut sockets = Vec::with_capacity(mine.len());
        for b in mine {
            sockets.push(
                b.socket
                    .try_clone()
                    .map_err(|e| DriverError(format!("cannot hand over a socket: {e}")))?,
            );
        }
        Ok((sockets, mine.iter().map(|b| port_name(&b.port)).collect()))
    }

    /// The network a new decky gets, or why it cannot start.
    fn network_for(&self) -> Result<DeckyNetwork, DriverError> {
        match (self.opts.network, &self.opts.network_probe) {
            (DeckyNetwork::Own, Err(why)) => Err(DriverError(no_own_network(why))),
            (n, _) => Ok(n),
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.opts.state_dir.join("logs").join(format!("{name}.log"))
    }

    /// Where its shepherd keeps the size of its working directory.
    fn usage_path(&self, name: &str) -> PathBuf {
        self.opts.state_dir.join("run").join(format!("{name}.disk"))
    }

    /// Where its shepherd keeps its network figures.
    fn network_path(&self, name: &str) -> PathBuf {
        self.opts.state_dir.join("run").join(format!("{name}.net"))
    }

    fn exit_path(&self, name: &str) -> PathBuf {
        self.opts.state_dir.join("run").join(format!("{name}.exit"))
    }

    /// The ids `decky` runs under, and whether a process of that uid was
    /// running when they were picked (`true` when unknown).
    fn identity(
        &self,
        decky: &DeckyConfig,
        in_use: &BTreeSet<u32>,
    ) -> Result<(Option<ExecIdentity>, bool), DriverError> {
        let Isolation::PerDeckyUid(_) = self.opts.isolation else {
            if decky.user.is_some() {
                return Err(DriverError(
                    "user needs per-decky isolation, and this agent runs with --decky-isolation none".into(),
                ));
            }
            return Ok((None, true));
        };
        let accounts = AccountDb::load();
        if let Some(user) = &decky.user {
            let ids = accounts
                .resolve(user)
                .map_err(|e| DriverError(e.to_string()))?;
            if ids.uid == 0 && !decky.allow_root {
                return Err(DriverError(format!(
                    "user {user:?} is root; a decky runs as root only with \"allow_root\": true"
                )));
            }
            if ids.uid == self.agent_uid && ids.uid != 0 {
                return Err(DriverError(format!(
                    "user {user:?} is the agent's own user; a decky never runs as the agent"
                )));
            }
            return Ok((
                Some(ExecIdentity {
                    uid: ids.uid,
                    gid: ids.gid,
                }),
                true,
            ));
        }
        let mut book = lock(&self.ids);
        let book = book
            .as_mut()
            .ok_or_else(|| DriverError("no uid book".into()))?;
        let uid = book
            .get_or_allocate(
                &decky.name,
                |id| accounts.is_listed(id),
                |id| in_use.contains(&id) || id == self.agent_uid,
            )
            .map_err(DriverError)?;
        Ok((Some(ExecIdentity { uid, gid: uid }), in_use.contains(&uid)))
    }

    /// Confine and start `decky` under a new shepherd.
    async fn launch(&self, decky: &DeckyConfig) -> Result<(Child, ProcessFacts), DriverError> {
        // The uids running now, for picking a free one: a walk over every
        // process on the host, off the async workers.
        let allocates =
            matches!(self.opts.isolation, Isolation::PerDeckyUid(_)) && decky.user.is_none();
        let in_use = if allocates {
            tokio::task::spawn_blocking(decnet_confine::ids::ids_in_use)
                .await
                .map_err(|e| DriverError(e.to_string()))?
        } else {
            BTreeSet::new()
        };
        let (identity, uid_was_running) = self.identity(decky, &in_use)?;
        let exclusive = exclusive_uid(self, decky, identity.map(|i| i.uid));
        if let Some(uid) = exclusive.filter(|_| uid_was_running) {
            // Leftovers of an earlier run of this very decky (its uid is
            // its own) go before a new run starts. None ran a moment ago
            // (the scan that picked the uid), and only a process of the
            // uid could have started one since: then there is nothing to
            // sweep, and no second walk over every process on the host.
            tokio::task::spawn_blocking(move || {
                decnet_proc::kill_user(uid, Duration::from_secs(5))
            })
            .await
            .map_err(|e| DriverError(e.to_string()))?;
        }
        let limits = decky.limits.resource_limits();
        let cgroup = match &self.opts.cgroup {
            Ok(tree) => Some(
                tree.create(&decky.name, &limits)
                    .map_err(|e| DriverError(format!("cannot create the decky's cgroup: {e}")))?,
            ),
            Err(_) => None,
        };
        let exit_path = self.exit_path(&decky.name);
        let _ = std::fs::remove_file(&exit_path);
        let network = self.network_for()?;
        let (sockets, listen_names) = self.sockets_for(decky)?;
        let spec = ShepherdSpec {
            decky: decky.name.clone(),
            log_path: self.log_path(&decky.name),
            log_max: self.opts.log_max,
            exit_path,
            exclusive_uid: exclusive,
            cgroup: cgroup.clone(),
            disk_budget: Some(limits.file_bytes),
            usage_path: Some(self.usage_path(&decky.name)),
            network_path: (network == DeckyNetwork::Own).then(|| self.network_path(&decky.name)),
            exec: ConfinedExec {
                argv: decky.command.clone(),
                env: decky.effective_env(),
                identity,
                workdir_parent: self.opts.decky_root.clone(),
                workdir_name: decky.name.clone(),
                limits,
                memory_by_rlimit: cgroup.is_none(),
                cgroup,
                network,
                listen_names,
                scratch_bytes: (network == DeckyNetwork::Own).then_some(decky.limits.tmp_mb << 20),
                egress: decky
                    .egress
                    .iter()
                    .map(|e| e.rule().map_err(DriverError))
                    .collect::<Result<_, _>>()?,
                own_processes: network == DeckyNetwork::Own && self.opts.processes_probe.is_ok(),
            },
        };
        if identity.is_some_and(|i| i.uid == 0) {
            tracing::warn!(decky = %decky.name, "starting a decky as root (allow_root)");
        }
        let (child, shepherd, program) =
            shepherd::launch(&self.opts.helper, &spec, sockets).await?;
        Ok((
            child,
            ProcessFacts {
                pid: program.pid,
                start_time: program.start_time,
                uid: identity.map(|i| i.uid),
                shepherd: Some(shepherd),
            },
        ))
    }
}

enum Running {
    /// A shepherd this agent started (its child).
    Child(Child),
    /// A shepherd a previous agent started, pinned by a pidfd.
    Adopted(ProcessHandle),
}

/// Wait until a pidfd says its process has ended (polled: registering a
/// raw fd with the event loop needs `unsafe`, which this workspace forbids;
/// a poll syscall per adopted decky every 200 ms costs nothing).
async fn pidfd_exited(h: &ProcessHandle) {
    while !h.has_exited() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Running {
    async fn shepherd_ended(&mut self) {
        match self {
            Running::Child(c) => {
                let _ = c.wait().await;
            }
            Running::Adopted(h) => pidfd_exited(h).await,
        }
    }

    fn kill_shepherd(&mut self) {
        match self {
            Running::Child(c) => {
                let _ = c.start_kill();
            }
            Running::Adopted(h) => {
                let _ = h.signal(Signal::KILL);
            }
        }
    }
}

struct Supervisor {
    decky: DeckyConfig,
    running: Running,
    facts: ProcessFacts,
    inner: Arc<Inner>,
}

/// SIGKILL everything of a decky's program: every process of its own uid,
/// or its verified process group; and its cgroup.
async fn kill_program(inner: &Inner, decky: &DeckyConfig, facts: ProcessFacts) {
    if let Some(uid) = exclusive_uid(inner, decky, facts.uid) {
        let _ = tokio::task::spawn_blocking(move || {
            decnet_proc::kill_user(uid, Duration::from_secs(5))
        })
        .await;
    } else if let Some(h) = ProcessHandle::open(facts.pid, facts.start_time) {
        let _ = h.signal_group(Signal::KILL);
    }
    if let Ok(tree) = &inner.opts.cgroup {
        let _ = tree.kill(&decky.name);
    }
}

impl Supervisor {
    fn exclusive(&self) -> Option<u32> {
        exclusive_uid(&self.inner, &self.decky, self.facts.uid)
    }

    /// Wait for the decky to end; `Some(description)` when it failed, and
    /// whether it was stopped for good (its disk budget: no restart).
    async fn wait(&mut self) -> (Option<String>, bool) {
        self.running.shepherd_ended().await;
        match shepherd::take_exit_record(&self.inner.exit_path(&self.decky.name)) {
            Some(rec) => (rec.failure(), rec.stopped_for.is_some()),
            None => {
                // The shepherd died without recording the end (killed by
                // hand?): whatever of the decky still runs goes too, so a
                // restart never runs two copies.
                self.kill_program().await;
                (
                    Some("its shepherd ended without recording an exit".into()),
                    false,
                )
            }
        }
    }

    async fn kill_program(&self) {
        kill_program(&self.inner, &self.decky, self.facts).await;
    }

    /// SIGTERM the decky, wait up to `grace`, then SIGKILL all of it.
    async fn terminate(&mut self) {
        let grace = self.inner.opts.grace;
        if let Some(uid) = self.exclusive() {
            let _ =
                tokio::task::spawn_blocking(move || decnet_proc::signal_user(uid, Signal::TERM))
                    .await;
        } else if let Some(h) = ProcessHandle::open(self.facts.pid, self.facts.start_time) {
            let _ = h.signal_group(Signal::TERM);
        }
        if tokio::time::timeout(grace, self.running.shepherd_ended())
            .await
            .is_err()
        {
            tracing::warn!(decky = %self.decky.name, "decky ignored SIGTERM; killing it");
            self.kill_program().await;
            if tokio::time::timeout(Duration::from_secs(5), self.running.shepherd_ended())
                .await
                .is_err()
            {
                self.running.kill_shepherd();
                self.kill_program().await;
            }
        }
        let _ = shepherd::take_exit_record(&self.inner.exit_path(&self.decky.name));
        if let Ok(tree) = &self.inner.opts.cgroup {
            let _ = tree.remove(&self.decky.name);
        }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
        let mut backoff = FIRST_BACKOFF;
        let mut crashes = 0u32;
        let mut started = Instant::now();
        loop {
            let (failure, stopped_for_good) = tokio::select! {
                f = self.wait() => f,
                ack = &mut stop => {
                    self.terminate().await;
                    if let Ok(ack) = ack { let _ = ack.send(()); }
                    return;
                }
            };
            if stopped_for_good {
                tracing::warn!(decky = %self.decky.name, reason = failure.as_deref().unwrap_or(""), "decky stopped by its shepherd; not restarted");
                crate::metrics::agent_metrics().disk_budget_exceeded(&self.decky.name);
                let _ = self.inner.events.send(DriverEvent::Exited {
                    name: self.decky.name.clone(),
                    error: failure,
                });
                return;
            }
            if started.elapsed() >= STABLE_RUN {
                crashes = 0;
                backoff = FIRST_BACKOFF;
            }
            let restart = match self.decky.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => failure.is_some(),
                RestartPolicy::Never => false,
            };
            let events = &self.inner.events;
            if !restart {
                let _ = events.send(DriverEvent::Exited {
                    name: self.decky.name.clone(),
                    error: failure,
                });
                return;
            }
            crashes += 1;
            if crashes > MAX_CRASH_LOOP {
                let _ = events.send(DriverEvent::Exited {
                    name: self.decky.name.clone(),
                    error: Some(format!(
                        "gave up after {MAX_CRASH_LOOP} quick restarts; last run {}",
                        failure.as_deref().unwrap_or("exited")
                    )),
                });
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                ack = &mut stop => {
                    if let Ok(ack) = ack { let _ = ack.send(()); }
                    return;
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match self.inner.launch(&self.decky).await {
                Ok((child, facts)) => {
                    self.running = Running::Child(child);
                    self.facts = facts;
                    started = Instant::now();
                    let _ = self.inner.events.send(DriverEvent::Started {
                        name: self.decky.name.clone(),
                        process: Some(facts),
                        restart: true,
                    });
                }
                Err(e) => {
                    let _ = self.inner.events.send(DriverEvent::Exited {
                        name: self.decky.name.clone(),
                        error: Some(e.0),
                    });
                    return;
                }
            }
        }
    }
}

impl Driver for ProcessDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Process
    }

    fn start<'a>(
        &'a self,
        decky: &'a DeckyConfig,
    ) -> DriverFuture<'a, Result<Started, DriverError>> {
        Box::pin(async move {
            self.stop_supervised(&decky.name).await;
            let (mut child, facts) = self.inner.launch(decky).await?;
            // A program that dies at once (bad arguments, missing library)
            // is a failed start, not a running decky.
            if let Ok(status) = tokio::time::timeout(Duration::from_millis(300), child.wait()).await
            {
                let exit_path = self.inner.exit_path(&decky.name);
                let failure = match (shepherd::read_exit_record(&exit_path), status) {
                    (Some(r), _) => r.failure(),
                    (None, Ok(s)) if s.success() => None,
                    (None, _) => Some("its shepherd ended without recording an exit".into()),
                };
                if let Some(f) = failure {
                    let _ = std::fs::remove_file(&exit_path);
                    return Err(DriverError(format!(
                        "{} {f} right after start (see logs/{}.log)",
                        decky.command[0], decky.name
                    )));
                }
                if decky.restart != RestartPolicy::Always {
                    let _ = std::fs::remove_file(&exit_path);
                    return Ok(Started {
                        process: Some(facts),
                        exited: true,
                    });
                }
                // `always`: the supervisor reads the record and starts it again.
            }
            self.supervise(decky.clone(), Running::Child(child), facts);
            Ok(Started {
                process: Some(facts),
                exited: false,
            })
        })
    }

    fn adopt<'a>(
        &'a self,
        decky: &'a DeckyConfig,
        facts: Option<ProcessFacts>,
    ) -> DriverFuture<'a, bool> {
        Box::pin(async move {
            let Some(facts) = facts else { return false };
            let unconfined = matches!(self.inner.opts.isolation, Isolation::PerDeckyUid(_))
                && facts.uid.is_none();
            let Some(shep) = facts.shepherd.filter(|_| !unconfined) else {
                // Started by an older agent without a shepherd, or under
                // `--decky-isolation none`: replace it with a contained run.
                if let Some(h) = ProcessHandle::open(facts.pid, facts.start_time) {
                    tracing::warn!(decky = %decky.name, pid = facts.pid,
                        "replacing an unconfined decky with a contained one");
                    let _ = h.signal_group(Signal::KILL);
                    h.wait_exit(Duration::from_secs(5));
                }
                if let Some(h) = facts
                    .shepherd
                    .and_then(|s| ProcessHandle::open(s.pid, s.start_time))
                {
                    h.wait_exit(Duration::from_secs(5));
                }
                return false;
            };
            let Some(handle) = ProcessHandle::open(shep.pid, shep.start_time) else {
                // Its shepherd is gone: nothing of the decky may linger.
                kill_program(&self.inner, decky, facts).await;
                return false;
            };
            self.supervise(decky.clone(), Running::Adopted(handle), facts);
            true
        })
    }

    fn admit(&self, decky: &DeckyConfig) -> Result<(), Refusal> {
        if let (DeckyNetwork::Own, Err(why)) =
            (self.inner.opts.network, &self.inner.opts.network_probe)
        {
            return Err(Refusal::Unsupported(no_own_network(why)));
        }
        if !decky.egress.is_empty() && self.inner.opts.network == DeckyNetwork::Host {
            return Err(Refusal::Unsupported(format!(
                "decky {}: an egress allow-list needs a network of its own, and this agent runs deckies on the host's network (--decky-network host), where nothing is held back",
                decky.name
            )));
        }
        self.inner.reserve_ports(decky)
    }

    fn stop<'a>(&'a self, decky: &'a DeckyConfig) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let name = decky.name.as_str();
            self.stop_supervised(name).await;
            // Its ports are free again once it is gone.
            lock(&self.inner.ports).remove(name);
            self.archive_and_free(decky).await
        })
    }

    fn evidence(&self) -> Option<&EvidenceArchive> {
        Some(&self.inner.evidence)
    }

    fn observe<'a>(
        &'a self,
        names: &'a [String],
    ) -> DriverFuture<'a, BTreeMap<String, Observation>> {
        Box::pin(async move {
            let sup = lock(&self.supervised);
            names
                .iter()
                .map(|n| {
                    let disk = std::fs::read_to_string(self.inner.usage_path(n))
                        .ok()
                        .and_then(|t| t.trim().parse::<u64>().ok());
                    let network: Option<NetworkFigures> = std::fs::read(self.inner.network_path(n))
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    if let Some(f) = network {
                        crate::metrics::agent_metrics().network_figures(n, f);
                    }
                    let mut detail = serde_json::Map::new();
                    if let Some(b) = disk {
                        detail.insert("disk_bytes".into(), b.into());
                    }
                    if let Some(f) = network {
                        detail.insert(
                            "network".into(),
                            serde_json::to_value(f).unwrap_or_default(),
                        );
                    }
                    (
                        n.clone(),
                        Observation {
                            running: sup.contains_key(n),
                            detail: (!detail.is_empty()).then(|| detail.into()),
                        },
                    )
                })
                .collect()
        })
    }

    fn render(&self, config: &DeploymentConfig) -> Result<serde_json::Value, DriverError> {
        let book = lock(&self.inner.ids);
        let deckies: Vec<serde_json::Value> = config
            .deckies
            .iter()
            .map(|d| {
                let runs_as = match (&d.user, self.inner.opts.isolation) {
                    (Some(u), _) => serde_json::json!(u),
                    (None, Isolation::None) => serde_json::json!("the agent's user (no isolation)"),
                    (None, Isolation::PerDeckyUid(range)) => {
                        match book.as_ref().and_then(|b| b.get(&d.name)) {
                            Some(uid) => serde_json::json!(uid),
                            None => serde_json::json!(format!("a new uid from {range}")),
                        }
                    }
                };
                serde_json::json!({
                    "name": d.name,
                    "argv": d.command,
                    "env": d.effective_env(),
                    "restart": d.restart,
                    "user": runs_as,
                    "limits": d.limits,
                    "workdir": self.inner.opts.decky_root.join(&d.name),
                    "log": self.inner.log_path(&d.name),
                    "ports": d.ports.iter().map(port_name).collect::<Vec<_>>(),
                    "network": self.inner.opts.network,
                })
            })
            .collect();
        Ok(serde_json::json!({ "driver": "process", "deckies": deckies }))
    }

    fn containment(&self) -> serde_json::Value {
        let opts = &self.inner.opts;
        let isolation = match opts.isolation {
            Isolation::PerDeckyUid(range) => serde_json::json!({
                "mode": "per-decky-uid",
                "ids": range.to_string(),
            }),
            Isolation::None => serde_json::json!({
                "mode": "none",
                "warning": "deckies run as the agent's user and can read its key",
            }),
        };
        let limits = match &opts.cgroup {
            Ok(tree) => serde_json::json!({
                "memory_cpu_pids": format!("cgroup v2 under {}", tree.root().display()),
            }),
            Err(why) => serde_json::json!({
                "memory_cpu_pids": "rlimits: RLIMIT_AS for memory, RLIMIT_NPROC for processes, CPU not limited",
                "cgroup_v2": why,
            }),
        };
        let network = match (opts.network, &opts.network_probe) {
            (DeckyNetwork::Own, Ok(())) => serde_json::json!({
                "mode": "own",
                "detail": "a user and network namespace per decky, loopback only; its ports are bound by the agent and handed in",
            }),
            (DeckyNetwork::Own, Err(why)) => serde_json::json!({
                "mode": "unavailable",
                "warning": no_own_network(why),
            }),
            (DeckyNetwork::Host, _) => serde_json::json!({
                "mode": "host",
                "warning": "deckies share the host's network (--decky-network host): they reach its loopback, the master and the other deckies",
            }),
        };
        let scratch = if matches!(
            (opts.network, &opts.network_probe),
            (DeckyNetwork::Own, Ok(()))
        ) {
            serde_json::json!({
                "mode": "own",
                "detail": "/tmp, /var/tmp and /dev/shm are a tmpfs of each decky's own (limits.tmp_mb)",
            })
        } else {
            serde_json::json!({
                "mode": "host",
                "warning": "deckies share the host's /tmp, /var/tmp and /dev/shm",
            })
        };
        let processes = match (&opts.network, &opts.network_probe, &opts.processes_probe) {
            (DeckyNetwork::Own, Ok(()), Ok(())) => serde_json::json!({
                "mode": "own",
                "detail": "a PID namespace per decky with its own /proc: it sees its own processes only",
            }),
            (_, _, Err(why)) => serde_json::json!({
                "mode": "host",
                "warning": format!("deckies see the host's processes and their command lines ({why})"),
            }),
            _ => serde_json::json!({ "mode": "host" }),
        };
        serde_json::json!({
            "isolation": isolation,
            "limits": limits,
            "network": network,
            "scratch": scratch,
            "processes": processes,
            "log_max_bytes": opts.log_max,
        })
    }
}

/// Whether `facts` still names the same live process.
pub fn is_alive(facts: ProcessFacts) -> bool {
    decnet_proc::is_same_process(facts.pid, facts.start_time)
}

/// The recorded shepherd of a decky, when it still runs.
pub fn shepherd_alive(id: ProcId) -> bool {
    decnet_proc::is_same_process(id.pid, id.start_time)
}
