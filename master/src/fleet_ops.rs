//! Driving the agents: deploy, teardown, status and health checks across the
//! fleet, concurrently, with every host's outcome reported on its own (an
//! unreachable host is a row in the table, never a stack trace).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use decnet_pki::{Bundle, BundleKind, CaLayout};
use decnet_swarm_client::{AgentClient, ClientError, WorkerPool};
use tokio::task::JoinSet;

use crate::table::inert;
/// The wire types of a deploy's and a probe's per-host results.
pub use decnet_api::{HostDeploy, HostReport};
pub use decnet_cli::evidence::{NewFile, evidence_file, evidence_id, is_path_safe};
pub use decnet_cli::render::{
    print_check, print_deploy_plan, print_deploy_results, print_evidence_list, print_status,
    print_torn_down,
};

use crate::usage::UsageError;
use decnet_fleet::{AuditEntry, AuditOutcome, CertRole, FleetDb, HostRecord, HostStatus};

/// How long `swarm deploy` waits for a host's deploy to finish.
pub const DEPLOY_WAIT: Duration = Duration::from_secs(600);

/// The master bundle, or a setup error naming `decnet ca init`.
pub fn master_bundle(layout: &CaLayout) -> anyhow::Result<Bundle> {
    Bundle::load(&layout.master_dir(), BundleKind::Master).map_err(|e| match e {
        decnet_pki::BundleError::Missing { .. } => UsageError(e.to_string()).into(),
        e => anyhow::Error::new(e).context("loading the master bundle"),
    })
}

/// The master's one [`WorkerPool`] for a command: every host it dials goes
/// through one TLS configuration and HTTP client.
pub fn worker_pool(layout: &CaLayout) -> anyhow::Result<WorkerPool> {
    let master = master_bundle(layout)?;
    // The revocation list `master serve` last published beside the bundle:
    // a worker certificate revoked since its pin was recorded is refused.
    let crl = master.load_crl(&layout.master_dir());
    WorkerPool::with_crl(&master, crl.as_ref()).context("building the master's TLS client")
}

/// A client of `host`'s agent: role Agent(host), pinned to its recorded
/// fingerprints (current, and a renewed one not yet presented).
pub fn agent_client(pool: &WorkerPool, host: &HostRecord) -> Result<AgentClient, ClientError> {
    AgentClient::in_pool(
        pool,
        &host.name,
        &host.address,
        host.agent_port,
        host.pins(CertRole::Agent),
    )
}

/// The hosts a command applies to: the named ones (each must be enrolled and
/// not decommissioned) or, when none are named, every live host.
pub async fn select_hosts(db: &FleetDb, names: &[String]) -> anyhow::Result<Vec<HostRecord>> {
    let all = db.hosts().await?;
    if names.is_empty() {
        return Ok(all
            .into_iter()
            .filter(|h| !matches!(h.status, HostStatus::Decommissioned | HostStatus::Burned))
            .collect());
    }
    let mut picked = Vec::new();
    for n in names {
        match all.iter().find(|h| &h.name == n) {
            Some(h) if h.status == HostStatus::Decommissioned => {
                return Err(UsageError(format!("host {n} is decommissioned")).into());
            }
            Some(h) if h.status == HostStatus::Burned => {
                return Err(UsageError(format!(
                    "host {n} was burned: it must join again before the master talks to it"
                ))
                .into());
            }
            Some(h) => picked.push(h.clone()),
            None => {
                return Err(UsageError(format!(
                    "host {n} is not enrolled (see `decnet swarm list`)"
                ))
                .into());
            }
        }
    }
    Ok(picked)
}

async fn audit(
    db: &FleetDb,
    actor: &str,
    action: &str,
    target: &str,
    outcome: AuditOutcome,
    detail: String,
) {
    let entry = AuditEntry::now(actor, action, target, outcome, detail);
    if let Err(e) = db.audit(&entry).await {
        eprintln!("warning: cannot write the audit log: {e}");
    }
}

async fn record(
    db: &FleetDb,
    host: &str,
    result: Result<(Option<&str>, Option<&str>), &ClientError>,
) {
    // Unreachable, or answered with an error or the wrong certificate: either
    // way not healthy; the error is kept for `swarm show`.
    let r = match result {
        Ok(ok) => db.record_contact(host, Ok(ok)).await,
        Err(e) => db.record_contact(host, Err(&e.to_string())).await,
    };
    if let Err(e) = r {
        eprintln!("warning: cannot record contact with {host}: {e}");
    }
}

/// The results of a fleet-wide command waiting to be written: audit
/// entries and failed contacts, written in one transaction per batch: when
/// [`Self::BATCH`] are queued, when the oldest has waited [`Self::MAX_HOLD`]
/// (see [`Self::due`]), and at the end ([`Self::flush`]).
///
/// Why: one commit per host cost the master more than the deploy itself at
/// 10 000 hosts; batches keep that to a few dozen commits, while an
/// interrupted command (Ctrl-C, a crash) loses at most half a second of
/// audit entries.
struct PendingRecords<'a> {
    db: &'a FleetDb,
    audits: Vec<AuditEntry>,
    contacts: Vec<decnet_fleet::Contact>,
    since: Option<tokio::time::Instant>,
}

impl<'a> PendingRecords<'a> {
    /// Entries held before they are written.
    const BATCH: usize = 256;
    /// How long an entry is held at most.
    const MAX_HOLD: Duration = Duration::from_millis(500);

    fn new(db: &'a FleetDb) -> Self {
        PendingRecords {
            db,
            audits: Vec::new(),
            contacts: Vec::new(),
            since: None,
        }
    }

    /// When the queued entries must be written (`None`: nothing queued).
    fn due(&self) -> Option<tokio::time::Instant> {
        self.since.map(|t| t + Self::MAX_HOLD)
    }

    fn queued(&mut self) {
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    /// Queue a failed contact with `host` (kept for `swarm show`; written
    /// with the next batch).
    fn failed_contact(&mut self, host: &str, error: &ClientError) {
        self.contacts.push(decnet_fleet::Contact {
            host: host.to_string(),
            outcome: Err(error.to_string()),
        });
        self.queued();
    }

    /// Queue an audit entry, writing the batch when it is full.
    async fn audit(&mut self, entry: AuditEntry) {
        self.audits.push(entry);
        self.queued();
        if self.audits.len() >= Self::BATCH {
            self.flush().await;
        }
    }

    /// Write everything queued.
    async fn flush(&mut self) {
        self.since = None;
        if !self.contacts.is_empty() {
            if let Err(e) = self.db.record_contacts(&self.contacts).await {
                eprintln!("warning: cannot record the contacts with the hosts: {e}");
            }
            self.contacts.clear();
        }
        if !self.audits.is_empty() {
            if let Err(e) = self.db.audit_all(&self.audits).await {
                eprintln!("warning: cannot write the audit log: {e}");
            }
            self.audits.clear();
        }
    }
}

/// Read and parse a deployment config file (a usage error when it cannot be).
fn read_config(config_path: &Path) -> anyhow::Result<serde_json::Value> {
    let raw = std::fs::read(config_path)
        .with_context(|| format!("reading the deployment config {}", config_path.display()))
        .map_err(|e| UsageError(format!("{e:#}")))?;
    Ok(serde_json::from_slice(&raw)
        .map_err(|e| UsageError(format!("{} is not valid JSON: {e}", config_path.display())))?)
}

/// `decnet swarm deploy --dry-run`: each agent's plan (nothing runs);
/// prints `[{host, plan} | {host, error}]`.
pub async fn deploy_plan(
    db: &FleetDb,
    layout: &CaLayout,
    config_path: &Path,
    hosts: &[String],
) -> anyhow::Result<bool> {
    let config = read_config(config_path)?;
    let pool = worker_pool(layout)?;
    let targets = select_hosts(db, hosts).await?;
    print_deploy_plan(&deploy_plan_of(&pool, &config, targets).await)
}

/// Ask each of `targets` what it would run for `config` (nothing runs):
/// a plan or an error per host, in host order, each plan kept as the
/// agent's text.
pub async fn deploy_plan_of(
    pool: &WorkerPool,
    config: &serde_json::Value,
    targets: Vec<HostRecord>,
) -> Vec<decnet_api::HostPlan> {
    let mut out = Vec::new();
    for h in targets {
        let _turn = FanOut::one_look().await;
        let plan = match agent_client(pool, &h) {
            Ok(c) => c.dry_run(config).await,
            Err(e) => Err(e),
        };
        let (plan, error) = match plan {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(decnet_api::HostPlan {
            host: h.name,
            plan,
            error,
        });
    }
    out
}

/// How `swarm deploy` runs.
#[derive(Clone, Copy, Debug)]
pub struct DeployOptions {
    /// Wait for the deckies to start (`--no-wait` clears it).
    pub wait: bool,
    /// Print JSON.
    pub json: bool,
    /// Requests in flight at once (`--max-parallel`).
    pub parallel: usize,
}

/// Where a deploy's progress lines go: the terminal (the local CLI) or a
/// job's log (the master daemon). Lines starting `warning:` belong on
/// stderr.
pub type Emit = Arc<dyn Fn(String) + Send + Sync>;

/// A deploy as asked: the config, its name for the audit log, and how.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DeployRun {
    /// The deployment config.
    pub config: serde_json::Value,
    /// What the audit log calls it (the file's name).
    pub config_name: String,
    /// Wait for the deckies to start.
    pub wait: bool,
    /// Requests in flight at once.
    pub parallel: usize,
}

/// `decnet swarm deploy`.
pub async fn deploy(
    db: &FleetDb,
    layout: &CaLayout,
    actor: &str,
    config_path: &Path,
    hosts: &[String],
    how: DeployOptions,
) -> anyhow::Result<bool> {
    let run = DeployRun {
        config: read_config(config_path)?,
        config_name: config_path.display().to_string(),
        wait: how.wait,
        parallel: how.parallel,
    };
    let pool = worker_pool(layout)?;
    let targets = select_hosts(db, hosts).await?;
    if targets.is_empty() {
        return Err(UsageError(
            "no hosts to deploy to (enroll one with `decnet swarm enroll`)".into(),
        )
        .into());
    }
    let json = how.json;
    let emit: Emit = Arc::new(move |line: String| {
        if json {
        } else if line.starts_with("warning:") {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    });
    let results = deploy_run(
        db,
        &pool,
        actor,
        &run,
        targets,
        emit,
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    print_deploy_results(&results, run.wait, json)
}

/// Deploy `run` to `targets` (`--max-parallel` at a time), telling `emit`
/// each step as a line, auditing each host as `actor` (in batches), until
/// every host answered, failed or (waiting) has its deckies settled — or
/// `cancel`: hosts not yet asked are skipped, waits end. The results are
/// sorted by host.
pub async fn deploy_run(
    db: &FleetDb,
    pool: &WorkerPool,
    actor: &str,
    run: &DeployRun,
    targets: Vec<HostRecord>,
    emit: Emit,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Vec<HostDeploy>> {
    let DeployRun {
        config,
        config_name,
        wait,
        parallel,
    } = run;
    let (wait, parallel) = (*wait, *parallel);
    // Deckies allowed to run as root, or to keep NET_RAW on the LAN, are
    // named in every audit entry.
    let mut grants_note = String::new();
    for (field, what) in [
        ("allow_root", "may run as root"),
        ("allow_lan_raw", "may forge frames on the LAN (NET_RAW)"),
    ] {
        let named = deckies_allowed(config, field);
        if named.is_empty() {
            continue;
        }
        emit(format!(
            "warning: {} {what} ({field}); the audit log records it",
            named.join(", ")
        ));
        grants_note.push_str(&format!(" {field}=[{}]", named.join(",")));
    }
    // Requests in flight at once (a host waiting for its deckies holds none).
    let limit = FanOut::new(parallel);
    let mut set = JoinSet::new();
    for h in targets {
        let pool = pool.clone();
        let config = config.clone();
        let limit = limit.clone();
        let emit = emit.clone();
        let cancel = cancel.clone();
        set.spawn(async move {
            let mut out = HostDeploy {
                host: h.name.clone(),
                operation_id: None,
                deckies: Vec::new(),
                relocation: None,
                error: None,
            };
            let client = match agent_client(&pool, &h) {
                Ok(c) => c,
                Err(e) => {
                    out.error = Some(e.to_string());
                    return (out, None);
                }
            };
            let permit = limit.turn().await;
            if cancel.is_cancelled() {
                out.error = Some("cancelled before it was asked".into());
                return (out, None);
            }
            // A cancel ends the wait for an agent that does not answer (the
            // request may still reach it).
            let accepted = tokio::select! {
                a = client.deploy(&config) => a,
                _ = cancel.cancelled() => {
                    out.error = Some("cancelled while the agent was being asked".into());
                    return (out, None);
                }
            };
            drop(permit);
            let accepted = match accepted {
                Ok(a) => a,
                Err(e) => {
                    out.error = Some(e.to_string());
                    return (out, Some(e));
                }
            };
            out.operation_id = Some(accepted.operation_id.clone());
            emit(format!(
                "{:<16} deploy accepted (operation {})",
                h.name,
                inert(&accepted.operation_id)
            ));
            if !wait {
                return (out, None);
            }
            let deadline = tokio::time::Instant::now() + DEPLOY_WAIT;
            let mut shown: BTreeMap<String, String> = BTreeMap::new();
            let mut relocation_shown = false;
            loop {
                if cancel.is_cancelled() {
                    out.error = Some("cancelled while waiting for its deckies".into());
                    return (out, None);
                }
                let permit = limit.turn().await;
                let polled = client.operation(&accepted.operation_id).await;
                drop(permit);
                match polled {
                    Ok(op) => {
                        if let (Some(raw), false) = (&op.relocation, relocation_shown) {
                            relocation_shown = true;
                            let r = decnet_api::worker::RelocationSummary::of(raw);
                            emit(format!(
                                "{:<16} LAN relocalised: {} {} -> {} {} (gateway {}): {}",
                                h.name,
                                inert(r.from_parent.as_deref().unwrap_or("-")),
                                inert(r.from_subnet.as_deref().unwrap_or("?")),
                                inert(r.to_parent.as_deref().unwrap_or("-")),
                                inert(r.to_subnet.as_deref().unwrap_or("?")),
                                inert(r.to_gateway.as_deref().unwrap_or("?")),
                                inert(r.reason.as_deref().unwrap_or(""))
                            ));
                        }
                        for d in &op.deckies {
                            if shown.get(&d.name) != Some(&d.state) {
                                emit(format!(
                                    "{:<16} {:<20} {}{}{}",
                                    h.name,
                                    inert(&d.name),
                                    inert(&d.state),
                                    d.address
                                        .as_deref()
                                        .map(|a| format!(" at {}", inert(a)))
                                        .unwrap_or_default(),
                                    d.error
                                        .as_deref()
                                        .map(|e| format!(": {}", inert(e)))
                                        .unwrap_or_default()
                                ));
                                shown.insert(d.name.clone(), d.state.clone());
                            }
                        }
                        if op.done {
                            out.relocation = op.relocation;
                            out.deckies = op.deckies;
                            return (out, None);
                        }
                    }
                    Err(e) => {
                        out.error = Some(format!("lost track of the deploy: {e}"));
                        return (out, Some(e));
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    out.error = Some(format!(
                        "deploy did not finish within {}s",
                        DEPLOY_WAIT.as_secs()
                    ));
                    return (out, None);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
    let mut results = Vec::new();
    let mut records = PendingRecords::new(db);
    loop {
        let joined = match records.due() {
            Some(at) => tokio::select! {
                joined = set.join_next() => joined,
                _ = tokio::time::sleep_until(at) => {
                    records.flush().await;
                    continue;
                }
            },
            None => set.join_next().await,
        };
        let Some(joined) = joined else { break };
        let (out, err) = match joined {
            Ok(done) => done,
            Err(e) => {
                // What finished before is still audited.
                records.flush().await;
                return Err(anyhow::Error::new(e).context("a deploy task failed"));
            }
        };
        if let Some(e) = &err {
            records.failed_contact(&out.host, e);
        }
        let outcome = if out.error.is_some() {
            AuditOutcome::Failed
        } else if !wait || out.succeeded() {
            AuditOutcome::Ok
        } else {
            AuditOutcome::Partial
        };
        let failed: Vec<String> = out
            .deckies
            .iter()
            .filter(|d| d.state == "failed")
            .map(|d| d.name.clone())
            .collect();
        records
            .audit(AuditEntry::now(
                actor,
                "swarm.deploy",
                &out.host,
                outcome,
                format!(
                    "config={} operation={} failed_deckies=[{}]{grants_note}{}",
                    config_name,
                    out.operation_id.as_deref().unwrap_or("-"),
                    failed.join(","),
                    out.error
                        .as_deref()
                        .map(|e| format!(" error={e}"))
                        .unwrap_or_default()
                ),
            ))
            .await;
        results.push(out);
    }
    records.flush().await;
    results.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(results)
}

/// `swarm teardown`: ask `host`'s agent to tear down `decky` (every decky
/// when `None`); audited as `actor`. Returns the deckies torn down.
pub async fn teardown(
    db: &FleetDb,
    pool: &WorkerPool,
    actor: &str,
    host: &str,
    decky: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let h = select_hosts(db, &[host.to_string()]).await?.remove(0);
    let _turn = FanOut::one_change().await;
    let client = agent_client(pool, &h)?;
    match client.teardown(decky).await {
        Ok(names) => {
            audit(
                db,
                actor,
                "swarm.teardown",
                host,
                AuditOutcome::Ok,
                format!("deckies=[{}]", names.join(",")),
            )
            .await;
            Ok(names)
        }
        Err(e) => {
            record(db, host, Err(&e)).await;
            audit(
                db,
                actor,
                "swarm.teardown",
                host,
                AuditOutcome::Failed,
                e.to_string(),
            )
            .await;
            Err(e.into())
        }
    }
}

/// Before a burn: tear down every decky of `host`, best effort (a burned
/// host is presumed compromised, so this is only as good as its agent;
/// rebuilding it is what makes sure). Returns what was torn down, or why
/// not.
pub async fn teardown_before_burn(
    pool: &WorkerPool,
    host: &HostRecord,
) -> Result<Vec<String>, String> {
    let client = agent_client(pool, host).map_err(|e| e.to_string())?;
    match tokio::time::timeout(BURN_TEARDOWN_WAIT, client.teardown(None)).await {
        Ok(Ok(names)) => Ok(names),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the agent did not answer within {}s",
            BURN_TEARDOWN_WAIT.as_secs()
        )),
    }
}

/// How long a burn waits for the host's deckies to be torn down.
pub const BURN_TEARDOWN_WAIT: Duration = Duration::from_secs(120);

/// A host's evidence archives, as its agent lists them.
pub async fn evidence_list(
    db: &FleetDb,
    pool: &WorkerPool,
    host: &str,
) -> anyhow::Result<decnet_swarm_client::agent::EvidenceList> {
    let h = select_hosts(db, &[host.to_string()]).await?.remove(0);
    let _turn = FanOut::one_look().await;
    let client = agent_client(pool, &h)?;
    match client.evidence().await {
        Ok(l) => Ok(l),
        Err(e) => {
            record(db, host, Err(&e)).await;
            Err(e.into())
        }
    }
}

/// Fetch archive `id` of `decky` from `host`'s agent into `out` (at most
/// `max` bytes: a compromised agent sends no more); audited as `actor`.
/// Returns its size.
#[allow(clippy::too_many_arguments)]
pub async fn evidence_fetch(
    db: &FleetDb,
    pool: &WorkerPool,
    actor: &str,
    host: &str,
    decky: &str,
    id: &str,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    max: u64,
) -> anyhow::Result<u64> {
    if !is_path_safe(decky) || !is_path_safe(id) {
        return Err(UsageError(format!("{decky:?}/{id:?} is not a decky's archive")).into());
    }
    let h = select_hosts(db, &[host.to_string()]).await?.remove(0);
    let _turn = FanOut::one_look().await;
    let client = agent_client(pool, &h)?;
    match client.fetch_evidence_within(decky, id, out, max).await {
        Ok(bytes) => {
            audit(
                db,
                actor,
                "swarm.evidence",
                host,
                AuditOutcome::Ok,
                format!("decky={decky} id={id} bytes={bytes}"),
            )
            .await;
            Ok(bytes)
        }
        Err(e) => {
            audit(
                db,
                actor,
                "swarm.evidence",
                host,
                AuditOutcome::Failed,
                format!("decky={decky} id={id}: {e}"),
            )
            .await;
            Err(e.into())
        }
    }
}

/// The largest decky state a status probe stores for a host (a
/// heartbeat's is smaller still: `control_api::MAX_HEARTBEAT_BYTES`).
pub const MAX_STORED_STATE: usize = 1 << 20;

/// The master daemon's warm worker pool, shared by every request and job,
/// and replaced whole when what it was built from changes (the master's
/// certificate rotated, a new revocation list): requests in flight finish
/// on the pool they took.
#[derive(Clone)]
pub struct SharedPool(Arc<std::sync::RwLock<WorkerPool>>);

impl SharedPool {
    /// Share `pool`.
    pub fn new(pool: WorkerPool) -> SharedPool {
        SharedPool(Arc::new(std::sync::RwLock::new(pool)))
    }

    /// The pool to use now.
    pub fn current(&self) -> WorkerPool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Use `pool` from now on.
    pub fn replace(&self, pool: WorkerPool) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = pool;
    }
}

pub use decnet_cli::args::{DEFAULT_MAX_OUTBOUND, DEFAULT_PARALLEL};

/// The connections to workers a process may hold at once: all of them,
/// and those of requests that only look (status, check, the doctor,
/// releases, evidence, deploy plans), which together hold at most half, so
/// a viewer's checks never take the turns a deploy, a rollout or a
/// rollback needs.
pub struct OutboundBudget {
    all: Arc<tokio::sync::Semaphore>,
    looks: Arc<tokio::sync::Semaphore>,
}

impl OutboundBudget {
    /// A budget of `n` connections (at least 1; the looks get half).
    pub fn new(n: usize) -> OutboundBudget {
        OutboundBudget {
            all: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
            looks: Arc::new(tokio::sync::Semaphore::new((n / 2).max(1))),
        }
    }

    /// A command that changes hosts (deploy, update, rollback, renew,
    /// teardown), at most `parallel` hosts at once.
    pub fn changes(&self, parallel: usize) -> FanOut {
        FanOut {
            own: Arc::new(tokio::sync::Semaphore::new(parallel.max(1))),
            looks: None,
            all: self.all.clone(),
        }
    }

    /// A command that only looks, at most `parallel` hosts at once.
    pub fn looks(&self, parallel: usize) -> FanOut {
        FanOut {
            looks: Some(self.looks.clone()),
            ..self.changes(parallel)
        }
    }
}

static OUTBOUND: std::sync::OnceLock<OutboundBudget> = std::sync::OnceLock::new();

/// Set how many connections to workers this process may hold at once (the
/// daemon, from `--max-outbound`, before it serves). The first setting
/// stays; without one the process has [`DEFAULT_MAX_OUTBOUND`].
pub fn set_max_outbound(n: usize) {
    let _ = OUTBOUND.set(OutboundBudget::new(n));
}

fn outbound() -> &'static OutboundBudget {
    OUTBOUND.get_or_init(|| OutboundBudget::new(DEFAULT_MAX_OUTBOUND))
}

/// One command's share of the process's connections to workers: at most
/// `parallel` of its hosts at once, and every command together at most the
/// process's [`OutboundBudget`]. Why: `parallel` is the caller's to choose
/// (an operator's query string), so without the process-wide budget any
/// number of requests, each with the largest `parallel`, would make the
/// master dial tens of thousands of sockets at once. Cheap to clone.
#[derive(Clone)]
pub struct FanOut {
    own: Arc<tokio::sync::Semaphore>,
    looks: Option<Arc<tokio::sync::Semaphore>>,
    all: Arc<tokio::sync::Semaphore>,
}

/// A host's turn in a [`FanOut`]: held while its requests are in flight.
pub struct FanOutTurn {
    _own: tokio::sync::OwnedSemaphorePermit,
    _looks: Option<tokio::sync::OwnedSemaphorePermit>,
    _all: tokio::sync::OwnedSemaphorePermit,
}

impl FanOut {
    /// A command of this process that changes hosts (see
    /// [`OutboundBudget::changes`]).
    pub fn new(parallel: usize) -> FanOut {
        outbound().changes(parallel)
    }

    /// A command of this process that only looks (see
    /// [`OutboundBudget::looks`]).
    pub fn looks(parallel: usize) -> FanOut {
        outbound().looks(parallel)
    }

    /// The turn of a request that looks at one host.
    pub async fn one_look() -> FanOutTurn {
        FanOut::looks(1).turn().await
    }

    /// The turn of a request that changes one host.
    pub async fn one_change() -> FanOutTurn {
        FanOut::new(1).turn().await
    }

    /// Wait for a host's turn: the command's own share first, then the
    /// looks' (when it only looks), then the process's, always in this
    /// order, so one command never holds more of a budget than its
    /// `parallel`, and no two wait on each other.
    pub async fn turn(&self) -> FanOutTurn {
        // No semaphore here is ever closed.
        let own = self.own.clone().acquire_owned().await.expect("open");
        let looks = match &self.looks {
            Some(l) => Some(l.clone().acquire_owned().await.expect("open")),
            None => None,
        };
        let all = self.all.clone().acquire_owned().await.expect("open");
        FanOutTurn {
            _own: own,
            _looks: looks,
            _all: all,
        }
    }
}

/// A progress line on stderr for long fleet-wide commands (on a terminal
/// only, at most every 10 %).
struct Progress {
    total: usize,
    done: usize,
    shown_at: usize,
    what: &'static str,
    on: bool,
}

impl Progress {
    fn new(what: &'static str, total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            shown_at: 0,
            what,
            on: total >= 50 && std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self) {
        self.done += 1;
        if self.on && (self.done - self.shown_at) * 10 >= self.total {
            self.shown_at = self.done;
            eprint!("\r{} {}/{}", self.what, self.done, self.total);
            if self.done == self.total {
                eprintln!();
            }
        }
    }
}

/// Probe `hosts`' agents (`full`: `/status`, else `/health`), record the
/// contacts, and return a report per host, sorted by name.
pub async fn probe_all(
    db: &FleetDb,
    pool: &WorkerPool,
    hosts: Vec<HostRecord>,
    full: bool,
    parallel: usize,
) -> Vec<HostReport> {
    let limit = FanOut::looks(parallel);
    let mut progress = Progress::new(if full { "status" } else { "checked" }, hosts.len());
    let mut set = JoinSet::new();
    for h in hosts {
        let pool = pool.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let _turn = limit.turn().await;
            let client = match agent_client(&pool, &h) {
                Ok(c) => c,
                Err(e) => return (h.name.clone(), Err(e)),
            };
            let r = if full {
                client.status().await.map(|s| (s.version.clone(), Some(s)))
            } else {
                client.health().await.map(|hl| (hl.version, None))
            };
            (h.name.clone(), r)
        });
    }
    let mut reports = Vec::new();
    let mut contacts = Vec::new();
    while let Some(joined) = set.join_next().await {
        progress.tick();
        let Ok((host, r)) = joined else { continue };
        match r {
            Ok((version, status)) => {
                // Stored and shown to every operator: an answer larger
                // than any real host's state is not kept.
                let state = status
                    .as_ref()
                    .and_then(|s| serde_json::to_string(&s.deckies).ok())
                    .filter(|s| s.len() <= MAX_STORED_STATE);
                // A version that is not a plain label is not stored.
                let stored = decnet_fleet::is_reported_version(&version).then(|| version.clone());
                contacts.push(decnet_fleet::Contact {
                    host: host.clone(),
                    outcome: Ok((stored, state)),
                });
                reports.push(HostReport {
                    host,
                    reachable: true,
                    version: Some(version),
                    status,
                    error: None,
                    updated_at: None,
                });
            }
            Err(e) => {
                // Unreachable, or answered with an error or the wrong
                // certificate: either way not healthy; the error is kept
                // for `swarm show`.
                contacts.push(decnet_fleet::Contact {
                    host: host.clone(),
                    outcome: Err(e.to_string()),
                });
                reports.push(HostReport {
                    host,
                    reachable: false,
                    version: None,
                    status: None,
                    error: Some(e.to_string()),
                    updated_at: None,
                });
            }
        }
    }
    // One transaction for the whole fleet, not one per host.
    if let Err(e) = db.record_contacts(&contacts).await {
        eprintln!("warning: cannot record the contacts with the hosts: {e}");
    }
    reports.sort_by(|a, b| a.host.cmp(&b.host));
    if let Ok(records) = db.hosts().await {
        let updated: std::collections::HashMap<&str, i64> = records
            .iter()
            .map(|h| (h.name.as_str(), h.updated_at))
            .collect();
        for r in &mut reports {
            r.updated_at = updated.get(r.host.as_str()).copied();
        }
    }
    reports
}

/// Names of the deckies a config grants `field` (`allow_root`,
/// `allow_lan_raw`): what the audit names.
fn deckies_allowed(config: &serde_json::Value, field: &str) -> Vec<String> {
    config["deckies"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .filter(|d| d[field] == true)
                .filter_map(|d| d["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `decnet swarm status [HOST]`.
pub async fn status(
    db: &FleetDb,
    layout: &CaLayout,
    host: Option<&str>,
    json: bool,
    parallel: usize,
) -> anyhow::Result<bool> {
    let pool = worker_pool(layout)?;
    let names: Vec<String> = host.map(|h| vec![h.to_string()]).unwrap_or_default();
    let hosts = select_hosts(db, &names).await?;
    let reports = probe_all(db, &pool, hosts, true, parallel).await;
    print_status(&reports, json)
}

/// `decnet swarm check`: probe every host's agent concurrently.
pub async fn check(
    db: &FleetDb,
    layout: &CaLayout,
    json: bool,
    parallel: usize,
) -> anyhow::Result<bool> {
    let pool = worker_pool(layout)?;
    let hosts = select_hosts(db, &[]).await?;
    let reports = probe_all(db, &pool, hosts, false, parallel).await;
    print_check(&reports, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks (a viewer's checks) hold at most half of the budget, so the
    /// changes (a deploy, a rollback) always find turns; everything
    /// together holds at most the budget; a turn given back is taken again.
    #[tokio::test]
    async fn looks_leave_half_the_budget_to_changes() {
        let wait = std::time::Duration::from_millis(50);
        let budget = OutboundBudget::new(4);
        let looks = budget.looks(1024);
        let held = [looks.turn().await, looks.turn().await];
        assert!(
            tokio::time::timeout(wait, budget.looks(1).turn())
                .await
                .is_err(),
            "a third look waits"
        );
        let changes = budget.changes(1024);
        let changing = [changes.turn().await, changes.turn().await];
        assert!(
            tokio::time::timeout(wait, changes.turn()).await.is_err(),
            "the whole budget is held"
        );
        drop(held);
        let more = tokio::time::timeout(wait, changes.turn()).await;
        assert!(more.is_ok(), "a turn given back is taken again");
        drop((changing, more));
        // A command's own `parallel` bounds it below the budget.
        let one = budget.changes(1);
        let _first = one.turn().await;
        assert!(tokio::time::timeout(wait, one.turn()).await.is_err());
    }
}
