//! The executor: turns deploy / teardown / mutate requests into driver calls,
//! keeps every decky's phase in the state file, and recovers the deckies of a
//! previous agent process at start.
//!
//! Deploys run in the background (they can take minutes) and are serialized;
//! each decky is started on its own, so one failure never marks another failed.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{Mutex, mpsc};

use crate::config::{ConfigError, DeckyConfig, DeploymentConfig, DriverKind};
use crate::driver::{Driver, DriverEvent, Observation};
use crate::lan::{HostNet, PlacementContext, Relocation};
use crate::state::{
    AgentState, DeckyPhase, DeckyRecord, Operation, OperationKind, StateError, StateStore,
};

/// Why an executor request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No such decky.
    #[error("no decky named {0:?} on this host")]
    UnknownDecky(String),
    /// No such operation.
    #[error("no operation {0:?} on this host")]
    UnknownOperation(String),
    /// The driver could not render the config.
    #[error("{0}")]
    Driver(String),
    /// The state file could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The config cannot be placed on this worker (field at fault).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The request conflicts with what runs here.
    #[error("{0}")]
    Conflict(String),
}

/// One decky as `/status` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct DeckyStatus {
    /// Name.
    pub name: String,
    /// Phase.
    pub state: DeckyPhase,
    /// Why it failed.
    pub error: Option<String>,
    /// Services it emulates.
    pub services: Vec<String>,
    /// Process id (process driver).
    pub pid: Option<u32>,
    /// The uid it runs under (process driver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Its address on the LAN (a deployment with a network section).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// The worker interface it sits on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Restarts after exits.
    pub restarts: u32,
    /// Last change (unix seconds).
    pub updated_at: i64,
    /// What the driver observes right now.
    pub observed: Option<Observation>,
}

/// The `/status` document.
#[derive(Clone, Debug, Serialize)]
pub struct StatusSnapshot {
    /// This host (agent CN).
    pub host: String,
    /// Agent version.
    pub version: String,
    /// Driver in use.
    pub driver: DriverKind,
    /// How deckies are contained on this host.
    pub containment: serde_json::Value,
    /// Every decky, by name.
    pub deckies: Vec<DeckyStatus>,
    /// The LAN the deckies are on (the network as set up on this worker)
    /// and how the latest deploy's config was mapped onto it, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lan: Option<serde_json::Value>,
}

/// An operation as `/operations/{id}` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct OperationStatus {
    /// Id.
    pub id: String,
    /// Kind.
    pub kind: OperationKind,
    /// Whether it has finished.
    pub done: bool,
    /// Start (unix seconds).
    pub started_at: i64,
    /// End (unix seconds).
    pub finished_at: Option<i64>,
    /// The deckies it concerns, with their current state.
    pub deckies: Vec<DeckyStatus>,
    /// How the config was mapped onto this worker's network, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relocation: Option<Relocation>,
}

/// The agent's executor.
pub struct Executor {
    host: String,
    version: String,
    driver: Arc<dyn Driver>,
    store: StateStore,
    state: crate::census::StateCell,
    serial: Mutex<()>,
    lan_interface: Option<String>,
    /// The part of the `/health` answer that never changes, written once
    /// (see `api::health`).
    pub(crate) health_head: std::sync::OnceLock<String>,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Executor {
    /// An executor over `driver`, persisting to `store`; loads the previous
    /// state and starts consuming the driver's `events`. `lan_interface`
    /// (`--decky-interface`) is where a LAN config written for another
    /// interface or subnet is relocalised to (default: the default-route
    /// interface).
    pub fn start(
        host: String,
        version: String,
        driver: Arc<dyn Driver>,
        store: StateStore,
        events: mpsc::UnboundedReceiver<DriverEvent>,
        lan_interface: Option<String>,
    ) -> Result<Arc<Executor>, StateError> {
        let state = store.load(driver.kind())?;
        crate::metrics::observe_state(&state);
        let exec = Arc::new(Executor {
            host,
            version,
            driver,
            store,
            state: crate::census::StateCell::new(state),
            serial: Mutex::new(()),
            lan_interface,
            health_head: std::sync::OnceLock::new(),
        });
        tokio::spawn(Arc::clone(&exec).consume_events(events));
        Ok(exec)
    }

    /// The driver in use.
    pub fn driver_kind(&self) -> DriverKind {
        self.driver.kind()
    }

    /// The archive of what torn-down deckies left, when the driver keeps
    /// one.
    pub fn evidence(&self) -> Option<&crate::evidence::EvidenceArchive> {
        self.driver.evidence()
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    async fn consume_events(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<DriverEvent>) {
        while let Some(ev) = events.recv().await {
            let mut st = self.state.lock().await;
            match ev {
                DriverEvent::Started {
                    name,
                    process,
                    restart,
                } => {
                    if let Some(r) = st.deckies.get_mut(&name)
                        && r.phase != DeckyPhase::TornDown
                    {
                        r.phase = DeckyPhase::Running;
                        r.error = None;
                        r.set_process(process);
                        r.restarts += u32::from(restart);
                        if restart {
                            crate::metrics::agent_metrics()
                                .restarts
                                .get_or_create(&crate::metrics::DeckyLabel {
                                    decky: name.clone(),
                                })
                                .inc();
                        }
                        r.updated_at = now();
                        tracing::info!(decky = %name, restart, "decky started");
                    }
                }
                DriverEvent::Exited { name, error } => {
                    if let Some(r) = st.deckies.get_mut(&name)
                        && r.phase != DeckyPhase::TornDown
                    {
                        r.phase = if error.is_some() {
                            DeckyPhase::Failed
                        } else {
                            DeckyPhase::Exited
                        };
                        tracing::warn!(decky = %name, error = ?error, "decky exited");
                        r.error = error;
                        r.set_process(None);
                        r.updated_at = now();
                    }
                }
            }
            self.persist(&st);
        }
    }

    fn persist(&self, st: &AgentState) {
        crate::metrics::observe_state(st);
        if let Err(e) = self.store.save(st) {
            tracing::error!(error = %e, "cannot persist agent state");
        }
    }

    /// Take over the deckies of a previous agent process: adopt the ones
    /// still running, start the ones that should run and do not.
    pub async fn recover(&self) {
        let _serial = self.serial.lock().await;
        let records: Vec<(String, DeckyRecord)> = {
            let st = self.state.lock().await;
            st.deckies
                .iter()
                .filter(|(_, r)| matches!(r.phase, DeckyPhase::Running | DeckyPhase::Pending))
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect()
        };
        for (name, rec) in records {
            let facts = rec.process();
            if rec.phase == DeckyPhase::Running && self.driver.adopt(&rec.config, facts).await {
                tracing::info!(decky = %name, pid = ?rec.pid, "re-adopted running decky");
                continue;
            }
            tracing::info!(decky = %name, "decky not running after agent restart; starting it");
            self.start_one(&rec.config).await;
        }
        // Interrupted operations will never finish now.
        let mut st = self.state.lock().await;
        let t = now();
        for op in st.operations.iter_mut().filter(|o| o.finished_at.is_none()) {
            op.finished_at = Some(t);
        }
        self.persist(&st);
    }

    async fn start_one(&self, config: &DeckyConfig) {
        let result = self.driver.start(config).await;
        let mut st = self.state.lock().await;
        let rec = st
            .deckies
            .entry(config.name.clone())
            .or_insert_with(|| DeckyRecord::pending(config.clone(), now()));
        rec.config = config.clone();
        rec.updated_at = now();
        match result {
            Ok(started) => {
                rec.phase = if started.exited {
                    DeckyPhase::Exited
                } else {
                    DeckyPhase::Running
                };
                rec.error = None;
                rec.set_process(started.process.filter(|_| !started.exited));
            }
            Err(e) => {
                tracing::warn!(decky = %config.name, error = %e, "decky failed to start");
                rec.phase = DeckyPhase::Failed;
                rec.error = Some(e.0);
                rec.set_process(None);
            }
        }
        self.persist(&st);
    }

    /// Give every decky of a config with a `network` section its place on
    /// this worker's LAN (relocalised when the config was written for
    /// another interface or subnet); returns the relocalisation, if any.
    async fn place(&self, config: &mut DeploymentConfig) -> Result<Option<Relocation>, ExecError> {
        let Some(net) = config.network.clone() else {
            return Ok(None);
        };
        let host = tokio::task::spawn_blocking(HostNet::read)
            .await
            .map_err(|e| ExecError::Driver(format!("cannot read the network interfaces: {e}")))?
            .map_err(ExecError::Driver)?;
        let names: std::collections::BTreeSet<String> =
            config.deckies.iter().map(|d| d.name.clone()).collect();
        let st = self.state.lock().await;
        let previous = st
            .deckies
            .iter()
            .filter_map(|(n, r)| r.config.lan.as_ref().map(|l| (n.clone(), l.address)))
            .collect();
        let others: Vec<&DeckyRecord> = st
            .deckies
            .values()
            .filter(|r| {
                r.phase != DeckyPhase::TornDown
                    && r.config.lan.is_some()
                    && !names.contains(&r.config.name)
            })
            .collect();
        let ctx = PlacementContext {
            host: &host,
            interface: self.lan_interface.as_deref(),
            previous,
            taken: others
                .iter()
                .filter_map(|r| r.config.lan.as_ref().map(|l| l.address))
                .collect(),
        };
        let placement = crate::lan::place(&net, &config.deckies, &ctx)?;
        // One LAN per worker: deckies of earlier deployments must be on the same one.
        if let Some(r) = others.iter().find(|r| {
            r.config
                .lan
                .as_ref()
                .is_some_and(|l| l.network != placement.network)
        }) {
            return Err(ExecError::Conflict(format!(
                "decky {} is on another LAN of this worker; tear it down first, or deploy it again with this network section",
                r.config.name
            )));
        }
        drop(st);
        for d in &mut config.deckies {
            d.lan = placement.deckies.get(&d.name).cloned();
        }
        if let Some(r) = &placement.relocation {
            tracing::info!(
                reason = %r.reason,
                from = %r.from_subnet,
                to = %r.to_subnet,
                interface = ?r.to_parent,
                "LAN config relocalised onto this worker"
            );
        }
        Ok(placement.relocation)
    }

    /// What a deploy of `config` would do (dry run): nothing is started.
    pub async fn render(&self, config: &DeploymentConfig) -> Result<serde_json::Value, ExecError> {
        let mut config = config.clone();
        let relocation = self.place(&mut config).await?;
        let mut rendered = self
            .driver
            .render(&config)
            .map_err(|e| ExecError::Driver(e.0))?;
        if config.network.is_some() {
            rendered["addresses"] = serde_json::json!(
                config
                    .deckies
                    .iter()
                    .filter_map(|d| d.lan.as_ref().map(|l| (d.name.clone(), l.address)))
                    .collect::<std::collections::BTreeMap<_, _>>()
            );
            rendered["relocation"] = serde_json::json!(relocation);
        }
        Ok(rendered)
    }

    /// Accept a deploy: mark its deckies pending, run it in the background,
    /// and return the operation id at once.
    pub async fn deploy(
        self: &Arc<Self>,
        mut config: DeploymentConfig,
    ) -> Result<String, ExecError> {
        let relocation = self.place(&mut config).await?;
        let id = decnet_pki::random_hex(12);
        {
            let mut st = self.state.lock().await;
            // What each decky takes on the host (its ports) is taken now:
            // a conflict is the answer to this request, not a failed start.
            for (i, d) in config.deckies.iter().enumerate() {
                let unchanged = st
                    .deckies
                    .get(&d.name)
                    .is_some_and(|r| r.config == *d && r.phase == DeckyPhase::Running);
                if unchanged {
                    // It runs and holds what it needs (after an agent
                    // restart the program itself holds its ports).
                    continue;
                }
                self.driver.admit(d).map_err(|r| match r {
                    crate::driver::Refusal::Conflict(m) => {
                        ExecError::Conflict(format!("decky {}: {m}", d.name))
                    }
                    crate::driver::Refusal::Unsupported(message) => {
                        ExecError::Config(crate::config::ConfigError {
                            field: format!("deckies[{i}]"),
                            message,
                        })
                    }
                })?;
            }
            let t = now();
            for d in &config.deckies {
                let unchanged = st
                    .deckies
                    .get(&d.name)
                    .is_some_and(|r| r.config == *d && r.phase == DeckyPhase::Running);
                if !unchanged {
                    // The uid stays with the name across redeploys.
                    let uid = st.deckies.get(&d.name).and_then(|r| r.uid);
                    let mut rec = DeckyRecord::pending(d.clone(), t);
                    rec.uid = uid;
                    st.deckies.insert(d.name.clone(), rec);
                }
            }
            st.push_operation(Operation {
                id: id.clone(),
                kind: OperationKind::Deploy,
                deckies: config.deckies.iter().map(|d| d.name.clone()).collect(),
                started_at: t,
                finished_at: None,
                relocation,
            });
            self.store.save(&st)?;
        }
        let exec = Arc::clone(self);
        let op = id.clone();
        tokio::spawn(async move {
            let _serial = exec.serial.lock().await;
            for d in &config.deckies {
                let pending = exec
                    .state
                    .lock()
                    .await
                    .deckies
                    .get(&d.name)
                    .is_some_and(|r| r.phase == DeckyPhase::Pending);
                if pending {
                    exec.start_one(d).await;
                }
            }
            let mut st = exec.state.lock().await;
            if let Some(o) = st.operation_mut(&op) {
                o.finished_at = Some(now());
            }
            exec.persist(&st);
            tracing::info!(operation = %op, "deploy finished");
        });
        Ok(id)
    }

    /// Stop and remove one decky, or all of them. Returns the names torn down.
    pub async fn teardown(&self, decky: Option<&str>) -> Result<Vec<String>, ExecError> {
        let _serial = self.serial.lock().await;
        let configs: Vec<DeckyConfig> = {
            let st = self.state.lock().await;
            match decky {
                Some(n) => match st.deckies.get(n) {
                    Some(r) => vec![r.config.clone()],
                    None => return Err(ExecError::UnknownDecky(n.to_string())),
                },
                None => st
                    .deckies
                    .values()
                    .filter(|r| r.phase != DeckyPhase::TornDown)
                    .map(|r| r.config.clone())
                    .collect(),
            }
        };
        let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
        let mut errors = Vec::new();
        for (n, config) in names.iter().zip(&configs) {
            let stopped = self.driver.stop(config).await;
            let mut st = self.state.lock().await;
            if let Some(r) = st.deckies.get_mut(n) {
                match &stopped {
                    Ok(()) => {
                        r.phase = DeckyPhase::TornDown;
                        r.set_process(None);
                        r.error = None;
                    }
                    // Not recorded as gone: it may still run (a container
                    // the engine would not remove); a new teardown retries.
                    Err(e) => {
                        r.phase = DeckyPhase::Failed;
                        r.error = Some(format!("teardown failed: {e}"));
                    }
                }
                r.updated_at = now();
            }
            self.persist(&st);
            if let Err(e) = stopped {
                errors.push(format!("{n}: {e}"));
            }
        }
        let mut st = self.state.lock().await;
        let t = now();
        st.push_operation(Operation {
            id: decnet_pki::random_hex(12),
            kind: OperationKind::Teardown,
            deckies: names.clone(),
            started_at: t,
            finished_at: Some(t),
            relocation: None,
        });
        self.store.save(&st)?;
        if errors.is_empty() {
            Ok(names)
        } else {
            Err(ExecError::Driver(errors.join("; ")))
        }
    }

    /// Change one decky's services and restart it with them.
    pub async fn mutate(
        &self,
        decky: &str,
        services: Vec<String>,
    ) -> Result<DeckyStatus, ExecError> {
        let _serial = self.serial.lock().await;
        let mut config = {
            let st = self.state.lock().await;
            match st.deckies.get(decky) {
                Some(r) if r.phase != DeckyPhase::TornDown => r.config.clone(),
                _ => return Err(ExecError::UnknownDecky(decky.to_string())),
            }
        };
        config.services = services;
        config
            .validate(self.driver.kind(), "services")
            .map_err(|e| ExecError::Driver(e.to_string()))?;
        self.start_one(&config).await;
        let mut st = self.state.lock().await;
        let t = now();
        st.push_operation(Operation {
            id: decnet_pki::random_hex(12),
            kind: OperationKind::Mutate,
            deckies: vec![decky.to_string()],
            started_at: t,
            finished_at: Some(t),
            relocation: None,
        });
        self.store.save(&st)?;
        let rec = st.deckies.get(decky).cloned();
        drop(st);
        let rec = rec.ok_or_else(|| ExecError::UnknownDecky(decky.to_string()))?;
        Ok(status_of(decky, &rec, None))
    }

    /// The current state of every decky, with what the driver observes.
    pub async fn snapshot(&self) -> StatusSnapshot {
        let (records, lan) = {
            let st = self.state.lock().await;
            let network = st
                .deckies
                .values()
                .filter(|r| r.phase != DeckyPhase::TornDown)
                .find_map(|r| r.config.lan.as_ref().map(|l| l.network.clone()));
            let lan = network.map(|n| {
                let relocation = st
                    .operations
                    .iter()
                    .rev()
                    .find(|o| o.kind == OperationKind::Deploy && o.relocation.is_some())
                    .and_then(|o| o.relocation.clone())
                    .filter(|r| r.to_subnet == n.subnet && r.to_parent == n.parent);
                serde_json::json!({ "network": n, "relocation": relocation })
            });
            (st.deckies.clone(), lan)
        };
        let names: Vec<String> = records.keys().cloned().collect();
        let mut observed = self.driver.observe(&names).await;
        StatusSnapshot {
            lan,
            host: self.host.clone(),
            version: self.version.clone(),
            driver: self.driver.kind(),
            containment: self.driver.containment(),
            deckies: records
                .iter()
                .map(|(n, r)| status_of(n, r, observed.remove(n)))
                .collect(),
        }
    }

    /// Counts of deckies per phase (for `/health`).
    pub fn phase_counts(&self) -> crate::census::PhaseCounts {
        self.state.counts()
    }

    /// One operation's progress.
    pub async fn operation(&self, id: &str) -> Result<OperationStatus, ExecError> {
        let st = self.state.lock().await;
        let op = st
            .operations
            .iter()
            .find(|o| o.id == id)
            .ok_or_else(|| ExecError::UnknownOperation(id.to_string()))?;
        Ok(OperationStatus {
            id: op.id.clone(),
            kind: op.kind,
            done: op.finished_at.is_some(),
            started_at: op.started_at,
            finished_at: op.finished_at,
            relocation: op.relocation.clone(),
            deckies: op
                .deckies
                .iter()
                .filter_map(|n| st.deckies.get(n).map(|r| status_of(n, r, None)))
                .collect(),
        })
    }
}

fn status_of(name: &str, r: &DeckyRecord, observed: Option<Observation>) -> DeckyStatus {
    DeckyStatus {
        name: name.to_string(),
        state: r.phase,
        error: r.error.clone(),
        services: r.config.services.clone(),
        pid: r.pid,
        uid: r.uid,
        address: r.config.lan.as_ref().map(|l| l.address),
        interface: r.config.lan.as_ref().and_then(|l| l.network.parent.clone()),
        restarts: r.restarts,
        updated_at: r.updated_at,
        observed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{DriverError, DriverFuture, ProcessFacts, Started};
    use std::time::Duration;

    /// A driver whose teardown fails (the injected failure: an engine that
    /// will not remove a container).
    struct StopFails;

    impl Driver for StopFails {
        fn kind(&self) -> DriverKind {
            DriverKind::Compose
        }
        fn start<'a>(
            &'a self,
            _: &'a DeckyConfig,
        ) -> DriverFuture<'a, Result<Started, DriverError>> {
            Box::pin(async { Ok(Started::default()) })
        }
        fn adopt<'a>(
            &'a self,
            _: &'a DeckyConfig,
            _: Option<ProcessFacts>,
        ) -> DriverFuture<'a, bool> {
            Box::pin(async { true })
        }
        fn stop<'a>(&'a self, _: &'a DeckyConfig) -> DriverFuture<'a, Result<(), DriverError>> {
            Box::pin(async { Err(DriverError("the engine would not remove it".into())) })
        }
        fn observe<'a>(
            &'a self,
            _: &'a [String],
        ) -> DriverFuture<'a, std::collections::BTreeMap<String, Observation>> {
            Box::pin(async { std::collections::BTreeMap::new() })
        }
        fn render(&self, _: &DeploymentConfig) -> Result<serde_json::Value, DriverError> {
            Ok(serde_json::json!({}))
        }
        fn containment(&self) -> serde_json::Value {
            serde_json::json!({})
        }
    }

    /// An executor of host `w1` over [`StopFails`], its state in `dir`; the
    /// sender of its driver events is returned to be held.
    fn executor_over_stop_fails(
        dir: &std::path::Path,
    ) -> (Arc<Executor>, mpsc::UnboundedSender<DriverEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let exec = Executor::start(
            "w1".into(),
            "0".into(),
            Arc::new(StopFails),
            StateStore::open(dir).unwrap(),
            rx,
            None,
        )
        .unwrap();
        (exec, tx)
    }

    /// Wait (up to a second) until `n` deckies run.
    async fn wait_running(exec: &Executor, n: usize) {
        for _ in 0..100 {
            if exec.phase_counts().get(DeckyPhase::Running) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_teardown_is_not_recorded_as_gone_and_can_be_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (exec, _events) = executor_over_stop_fails(dir.path());
        let config = DeploymentConfig::parse(
            br#"{"version":1,"deckies":[{"name":"web","image":"i"}]}"#,
            DriverKind::Compose,
        )
        .unwrap();
        exec.deploy(config).await.unwrap();
        wait_running(&exec, 1).await;
        assert!(exec.teardown(Some("web")).await.is_err());
        let snap = exec.snapshot().await;
        let web = &snap.deckies[0];
        assert_eq!(web.state, DeckyPhase::Failed, "not recorded as torn down");
        assert!(
            web.error
                .as_deref()
                .is_some_and(|e| e.contains("teardown failed")),
            "{:?}",
            web.error
        );
        // Still listed for a teardown: a retry reaches the driver again.
        assert!(exec.teardown(Some("web")).await.is_err());
    }

    /// `/health` is written from a head made once and the counts of the
    /// moment: valid JSON with every field, the counts following the
    /// deckies from one answer to the next.
    #[tokio::test]
    async fn the_health_answer_carries_its_fixed_fields_and_the_counts_of_the_moment() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let (exec, _events) = executor_over_stop_fails(dir.path());
        let health = || async {
            let resp = crate::api::router(Arc::clone(&exec))
                .oneshot(
                    axum::http::Request::get("/health")
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "application/json");
            let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        };
        let before = health().await;
        assert_eq!(
            before,
            serde_json::json!({
                "status": "ok",
                "role": "agent",
                "host": "w1",
                "version": env!("CARGO_PKG_VERSION"),
                "driver": "compose",
                "deckies": {},
            })
        );
        let config = DeploymentConfig::parse(
            br#"{"version":1,"deckies":[{"name":"web","image":"i"},{"name":"db","image":"i"}]}"#,
            DriverKind::Compose,
        )
        .unwrap();
        exec.deploy(config).await.unwrap();
        wait_running(&exec, 2).await;
        let after = health().await;
        assert_eq!(after["deckies"], serde_json::json!({"running": 2}));
        assert_eq!(after["host"], "w1");
    }
}
