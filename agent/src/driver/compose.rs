//! The `compose` driver: renders the deckies into a Docker Compose project
//! (`<state-dir>/compose/docker-compose.yml`; JSON, which is valid YAML) and
//! runs the real `docker compose` (or the older `docker-compose`) against the
//! local engine: `up -d <decky>` per decky, so one failing decky does not
//! fail the others, `rm -s -f <decky>` to tear one down, and the engine's own
//! view of the project's containers for status.
//!
//! Every other decky sits on a bridge of its own, `<project>_decky_<name>`
//! (interface `dn<hash>`, [`compose_firewall::interface_name`]): deckies
//! cannot reach each other, and with a network of their own
//! ([`DeckyNetwork::Own`], the default) the host's firewall refuses all a
//! decky sends (to the host, its loopback services, the master, the LAN,
//! the internet) but answers to connections made to it and its `egress`
//! allow-list ([`compose_firewall`]). The chain is built before the
//! container starts and removed after it is gone.
//!
//! Deckies placed on the LAN ([`crate::lan`]) join one project network,
//! `<project>_lan`, of the placement's driver (macvlan, ipvlan L2 or bridge)
//! at their own address (and MAC); compose creates it with the first such
//! decky, and the last teardown removes it. What they send on the LAN does
//! not pass the host's firewall, so they take no allow-list, and `NET_RAW`
//! only with `allow_lan_raw`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::OnceCell;

use decnet_confine::DeckyNetwork;

use super::compose_firewall;
use super::{Driver, DriverError, DriverFuture, Observation, ProcessFacts, Refusal, Started};
use crate::config::{
    DeckyConfig, DeploymentConfig, DriverKind, Protocol, RestartPolicy, capability_name,
};

/// Longest a single compose invocation may take (image start, not pull: no registry).
const COMPOSE_TIMEOUT: Duration = Duration::from_secs(300);

/// Docker Compose projects.
pub struct ComposeDriver {
    project: String,
    dir: PathBuf,
    desired: Mutex<BTreeMap<String, DeckyConfig>>,
    tool: OnceCell<Result<Vec<String>, DriverError>>,
    network: DeckyNetwork,
    /// Whether the host's firewall can hold deckies' bridges (`Err`: why not).
    firewall: Result<(), String>,
    /// Taken to remove a decky's rules and to rebuild missing ones, so an
    /// observation never rebuilds the rules of a decky being torn down.
    firewall_ops: tokio::sync::Mutex<()>,
}

impl ComposeDriver {
    /// A driver for compose project `project`, rendering into `dir`, whose
    /// deckies' bridges are firewalled ([`DeckyNetwork::Own`]) or not
    /// ([`DeckyNetwork::Host`]); `firewall` says whether this host can
    /// ([`compose_firewall::probe`]).
    pub fn new(
        project: String,
        dir: PathBuf,
        network: DeckyNetwork,
        firewall: Result<(), String>,
    ) -> Self {
        if network == DeckyNetwork::Host {
            // Chains saved while deckies were held are not rebuilt at the
            // next boot once they are not.
            let _ = std::fs::remove_file(compose_firewall::saved_path(&dir));
        }
        ComposeDriver {
            project,
            dir,
            desired: Mutex::new(BTreeMap::new()),
            tool: OnceCell::new(),
            network,
            firewall,
            firewall_ops: tokio::sync::Mutex::new(()),
        }
    }

    /// The bridge interface of `decky` when the host's firewall holds it
    /// (not on the LAN, [`DeckyNetwork::Own`]).
    fn firewalled(&self, decky: &DeckyConfig) -> Option<String> {
        (decky.lan.is_none() && self.network == DeckyNetwork::Own)
            .then(|| compose_firewall::interface_name(&self.project, &decky.name))
    }

    /// Build `decky`'s chain (before its container starts, or again after
    /// an agent restart).
    async fn hold(&self, decky: &DeckyConfig) -> Result<(), DriverError> {
        let Some(interface) = self.firewalled(decky) else {
            return Ok(());
        };
        if let Err(why) = &self.firewall {
            return Err(DriverError(no_firewall(why)));
        }
        let rules = allowed_of(decky).map_err(DriverError)?;
        compose_firewall::install(&interface, &rules)
            .await
            .map_err(|e| DriverError(format!("cannot hold decky {}'s network: {e}", decky.name)))
    }

    /// Remove `decky`'s own bridge and its chain, once its container is gone.
    async fn release_network(&self, decky: &DeckyConfig) {
        if decky.lan.is_some() {
            return;
        }
        let name = decky_network_name(&self.project, &decky.name);
        let mut cmd = Command::new("docker");
        cmd.args(["network", "rm", &name])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match run(cmd, "docker network rm").await {
            Ok(_) => {}
            Err(e) if e.0.contains("No such network") || e.0.contains("not found") => {}
            Err(e) => {
                // Its chain stays as long as its bridge does.
                tracing::warn!(network = %name, error = %e, "cannot remove a decky's network; its firewall chain stays");
                return;
            }
        }
        let _ops = self.firewall_ops.lock().await;
        if let Some(interface) = self.firewalled(decky)
            && let Err(e) = compose_firewall::remove(&interface).await
        {
            tracing::warn!(decky = %decky.name, error = %e, "cannot remove a decky's firewall chain");
        }
    }

    /// The compose file path.
    pub fn compose_file(&self) -> PathBuf {
        self.dir.join("docker-compose.yml")
    }

    /// `docker compose` when the plugin exists, else `docker-compose`.
    async fn tool(&self) -> Result<Vec<String>, DriverError> {
        self.tool
            .get_or_init(|| async {
                for candidate in [vec!["docker", "compose"], vec!["docker-compose"]] {
                    let ok = Command::new(candidate[0])
                        .args(&candidate[1..])
                        .arg("version")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .await
                        .map(|s| s.success())
                        .unwrap_or(false);
                    if ok {
                        return Ok(candidate.into_iter().map(String::from).collect());
                    }
                }
                Err(DriverError(
                    "Docker Compose is not installed (neither `docker compose` nor `docker-compose` works)".into(),
                ))
            })
            .await
            .clone()
    }

    async fn compose(&self, args: &[&str]) -> Result<String, DriverError> {
        let tool = self.tool().await?;
        let file = self.compose_file();
        let mut cmd = Command::new(&tool[0]);
        cmd.args(&tool[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&file)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        run(
            cmd,
            &format!("{} {}", tool.join(" "), args.first().unwrap_or(&"")),
        )
        .await
    }

    /// Write the compose file for the current desired set.
    fn write_file(&self) -> Result<(), DriverError> {
        let desired = self
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let doc = render_project(
            &self.project,
            desired.values(),
            self.network == DeckyNetwork::Own,
        );
        decnet_pki::secure_fs::ensure_private_dir(&self.dir)
            .map_err(|e| DriverError(format!("cannot create {}: {e}", self.dir.display())))?;
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| DriverError(e.to_string()))?;
        decnet_pki::secure_fs::write_atomic(&self.compose_file(), &bytes, 0o600).map_err(|e| {
            DriverError(format!(
                "cannot write {}: {e}",
                self.compose_file().display()
            ))
        })?;
        // The chains to rebuild at boot, before the engine restarts them.
        if self.network == DeckyNetwork::Own {
            let saved = compose_firewall::SavedChains {
                chains: desired
                    .values()
                    .filter(|d| d.lan.is_none())
                    .map(|d| compose_firewall::SavedChain {
                        decky: d.name.clone(),
                        interface: compose_firewall::interface_name(&self.project, &d.name),
                        egress: allowed_of(d).unwrap_or_default(),
                    })
                    .collect(),
            };
            let path = compose_firewall::saved_path(&self.dir);
            let bytes =
                serde_json::to_vec_pretty(&saved).map_err(|e| DriverError(e.to_string()))?;
            decnet_pki::secure_fs::write_atomic(&path, &bytes, 0o600)
                .map_err(|e| DriverError(format!("cannot write {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// Remove the project's LAN network (after its last decky left).
    async fn remove_lan(&self) {
        let name = lan_network_name(&self.project);
        let mut cmd = Command::new("docker");
        cmd.args(["network", "rm", &name])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match run(cmd, "docker network rm").await {
            Ok(_) => tracing::info!(network = %name, "LAN network removed with its last decky"),
            Err(e) if e.0.contains("No such network") || e.0.contains("not found") => {}
            Err(e) => tracing::warn!(network = %name, error = %e, "cannot remove the LAN network"),
        }
    }

    /// The engine's view of this project's containers, by decky name.
    async fn containers(&self) -> Result<BTreeMap<String, serde_json::Value>, DriverError> {
        let mut cmd = Command::new("docker");
        cmd.args([
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--format",
            "{{json .}}",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true);
        let out = run(cmd, "docker ps").await?;
        let mut map = BTreeMap::new();
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let labels = v["Labels"].as_str().unwrap_or("");
            let service = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("com.docker.compose.service="))
                .map(str::to_string);
            if let Some(service) = service {
                map.insert(service, v);
            }
        }
        Ok(map)
    }
}

impl ComposeDriver {
    /// The networks container `id` is attached to (`None`: unknown).
    async fn networks_of(&self, id: &str) -> Option<Vec<String>> {
        let mut cmd = Command::new("docker");
        cmd.args([
            "inspect",
            "--format",
            "{{json .NetworkSettings.Networks}}",
            id,
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true);
        let out = run(cmd, "docker inspect").await.ok()?;
        let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
        Some(v.as_object()?.keys().cloned().collect())
    }
}

async fn run(mut cmd: Command, what: &str) -> Result<String, DriverError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| DriverError(format!("cannot run {what}: {e}")))?;
    let out = tokio::time::timeout(COMPOSE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            DriverError(format!(
                "{what} did not finish within {}s",
                COMPOSE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| DriverError(format!("{what} failed: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        Err(DriverError(format!("{what} failed: {tail}")))
    }
}

/// The user a compose decky runs as when its config names none.
pub const DEFAULT_USER: &str = "65534:65534";

/// `s` as compose will pass it on: `$` doubled, so no interpolation happens.
pub fn literal(s: &str) -> String {
    s.replace('$', "$$")
}

/// What `decky`'s allow-list lets through its chain.
fn allowed_of(decky: &DeckyConfig) -> Result<Vec<compose_firewall::Allowed>, String> {
    decky
        .egress
        .iter()
        .map(|e| {
            Ok(compose_firewall::Allowed {
                rule: e.rule()?,
                protocol: e.protocol,
            })
        })
        .collect()
}

/// The resolver of a held decky: the host its allow-list opens UDP port 53
/// on (a sinkhole, a resolver the operator trusts), else [`HELD_DNS`].
fn held_resolver(decky: &DeckyConfig) -> String {
    allowed_of(decky)
        .unwrap_or_default()
        .iter()
        .find(|a| {
            a.protocol == Protocol::Udp
                && a.rule.port == 53
                && a.rule.net.is_ipv4()
                && a.rule.prefix == 32
        })
        .map(|a| a.rule.net.to_string())
        .unwrap_or_else(|| HELD_DNS.to_string())
}

/// Why compose deckies cannot be given a network of their own here.
fn no_firewall(why: &str) -> String {
    format!(
        "this host cannot firewall deckies' networks ({why}); compose deckies off the LAN are refused (start the agent with --decky-network host to run them uncontained)"
    )
}

/// The key of the LAN network in the compose file.
const LAN_KEY: &str = "decnet_lan";

/// The compose key of decky `decky`'s own network.
fn decky_key(decky: &str) -> String {
    format!("decnet_decky_{decky}")
}

/// The Docker name of decky `decky`'s own network in project `project`.
pub fn decky_network_name(project: &str, decky: &str) -> String {
    format!("{project}_decky_{decky}")
}

/// The compose network of decky `decky` alone: a bridge whose interface
/// name the firewall's chain matches.
fn render_decky_network(project: &str, decky: &str) -> serde_json::Value {
    serde_json::json!({
        "name": decky_network_name(project, decky),
        "driver": "bridge",
        "driver_opts": {
            "com.docker.network.bridge.name": compose_firewall::interface_name(project, decky),
            "com.docker.network.bridge.enable_icc": "false",
        },
        "labels": { "decnet.decky": decky },
    })
}

/// The Docker name of project `project`'s LAN network.
pub fn lan_network_name(project: &str) -> String {
    format!("{project}_lan")
}

/// The compose network of a LAN placement.
fn render_lan(project: &str, net: &crate::lan::ResolvedNetwork) -> serde_json::Value {
    let mut opts = serde_json::Map::new();
    if let Some(p) = &net.parent {
        opts.insert("parent".into(), serde_json::json!(literal(p)));
    }
    if net.mode == crate::lan::LanMode::Ipvlan {
        opts.insert("ipvlan_mode".into(), serde_json::json!("l2"));
    }
    serde_json::json!({
        "name": lan_network_name(project),
        "driver": net.mode.driver(),
        "driver_opts": opts,
        "ipam": { "config": [ {
            "subnet": net.subnet.to_string(),
            "gateway": net.gateway.to_string(),
        } ] },
        "labels": { "decnet.lan": "true" },
    })
}

/// Where a held decky's name lookups go: an address of TEST-NET-1
/// (RFC 5737), never routed, so the engine's embedded DNS forwards them
/// from the decky's own network, where its chain refuses (and counts)
/// them — never from the host's namespace, as the engine does for a
/// loopback resolver.
pub const HELD_DNS: &str = "192.0.2.53";

/// The compose document for a set of deckies of project `project`;
/// `held`: the host's firewall holds deckies off the LAN
/// ([`DeckyNetwork::Own`]).
pub fn render_project<'a>(
    project: &str,
    deckies: impl Iterator<Item = &'a DeckyConfig>,
    held: bool,
) -> serde_json::Value {
    let mut services = serde_json::Map::new();
    let mut networks = serde_json::Map::new();
    for d in deckies {
        let mut svc = serde_json::Map::new();
        if let Some(p) = &d.lan {
            let mut attach = serde_json::Map::new();
            attach.insert(
                "ipv4_address".into(),
                serde_json::json!(p.address.to_string()),
            );
            svc.insert("networks".into(), serde_json::json!({ LAN_KEY: attach }));
            if let Some(mac) = &p.mac {
                svc.insert("mac_address".into(), serde_json::json!(mac));
            }
            networks
                .entry(LAN_KEY)
                .or_insert_with(|| render_lan(project, &p.network));
        } else {
            let key = decky_key(&d.name);
            svc.insert("networks".into(), serde_json::json!([key]));
            networks.insert(key, render_decky_network(project, &d.name));
            if held {
                svc.insert("dns".into(), serde_json::json!([held_resolver(d)]));
                // The chain is IPv4: no IPv6 to go around it, whatever the
                // engine's defaults.
                svc.insert(
                    "sysctls".into(),
                    serde_json::json!({ "net.ipv6.conf.all.disable_ipv6": "1" }),
                );
            }
        }
        svc.insert(
            "image".into(),
            serde_json::json!(literal(d.image.as_deref().unwrap_or_default())),
        );
        if !d.command.is_empty() {
            let argv: Vec<String> = d.command.iter().map(|a| literal(a)).collect();
            svc.insert("command".into(), serde_json::json!(argv));
        }
        let env: BTreeMap<String, String> = d
            .effective_env()
            .into_iter()
            .map(|(k, v)| (k, literal(&v)))
            .collect();
        svc.insert("environment".into(), serde_json::json!(env));
        if !d.ports.is_empty() {
            let ports: Vec<String> = d
                .ports
                .iter()
                .map(|p| {
                    let proto = match p.protocol {
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                    };
                    format!("{}:{}/{proto}", p.host, p.container)
                })
                .collect();
            svc.insert("ports".into(), serde_json::json!(ports));
        }
        let restart = match d.restart {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "no",
        };
        svc.insert("restart".into(), serde_json::json!(restart));
        svc.insert(
            "labels".into(),
            serde_json::json!({ "decnet.decky": d.name, "decnet.services": literal(&d.services.join(",")) }),
        );
        // Containment.
        svc.insert(
            "user".into(),
            serde_json::json!(literal(d.user.as_deref().unwrap_or(DEFAULT_USER))),
        );
        svc.insert("cap_drop".into(), serde_json::json!(["ALL"]));
        if !d.cap_add.is_empty() {
            let caps: Vec<String> = d.cap_add.iter().map(|c| capability_name(c)).collect();
            svc.insert("cap_add".into(), serde_json::json!(caps));
        }
        svc.insert(
            "security_opt".into(),
            serde_json::json!(["no-new-privileges:true"]),
        );
        svc.insert("read_only".into(), serde_json::json!(!d.writable_root));
        svc.insert(
            "tmpfs".into(),
            serde_json::json!([
                "/tmp:rw,nosuid,nodev,size=64m",
                "/run:rw,nosuid,nodev,size=16m"
            ]),
        );
        let l = &d.limits;
        svc.insert("mem_limit".into(), serde_json::json!(l.memory_mb << 20));
        svc.insert("memswap_limit".into(), serde_json::json!(l.memory_mb << 20));
        svc.insert(
            "cpus".into(),
            serde_json::json!(f64::from(l.cpu_percent) / 100.0),
        );
        svc.insert("pids_limit".into(), serde_json::json!(l.processes));
        svc.insert(
            "ulimits".into(),
            serde_json::json!({ "nofile": { "soft": l.open_files, "hard": l.open_files } }),
        );
        services.insert(d.name.clone(), serde_json::Value::Object(svc));
    }
    if networks.is_empty() {
        serde_json::json!({ "services": services })
    } else {
        serde_json::json!({ "services": services, "networks": networks })
    }
}

impl Driver for ComposeDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Compose
    }

    fn start<'a>(
        &'a self,
        decky: &'a DeckyConfig,
    ) -> DriverFuture<'a, Result<Started, DriverError>> {
        Box::pin(async move {
            self.desired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(decky.name.clone(), decky.clone());
            self.write_file()?;
            // Its chain exists before its bridge forwards a packet; a
            // container of an earlier deploy is not left running without.
            if let Err(e) = self.hold(decky).await {
                let _ = self.compose(&["rm", "-s", "-f", &decky.name]).await;
                return Err(e);
            }
            self.compose(&["up", "-d", "--no-build", &decky.name])
                .await?;
            Ok(Started::default())
        })
    }

    fn adopt<'a>(
        &'a self,
        decky: &'a DeckyConfig,
        _facts: Option<ProcessFacts>,
    ) -> DriverFuture<'a, bool> {
        Box::pin(async move {
            self.desired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(decky.name.clone(), decky.clone());
            if self.write_file().is_err() {
                return false;
            }
            // The engine keeps containers running across agent restarts;
            // the chain is rebuilt (a host restart lost it). A decky that
            // cannot be held is stopped rather than left unfiltered.
            if let Err(e) = self.hold(decky).await {
                tracing::error!(decky = %decky.name, error = %e, "stopping a compose decky whose network cannot be held");
                let _ = self.compose(&["rm", "-s", "-f", &decky.name]).await;
                return false;
            }
            let container = match self.containers().await {
                Ok(c) => match c.get(&decky.name) {
                    Some(v) if v["State"] == "running" => v["ID"].as_str().map(str::to_string),
                    _ => None,
                },
                Err(_) => None,
            };
            let Some(id) = container else {
                return false;
            };
            // A container started before deckies had networks of their own
            // (an upgraded agent) is not on its held bridge: recreated.
            if decky.lan.is_none() {
                let want = decky_network_name(&self.project, &decky.name);
                let on = self.networks_of(&id).await;
                if on.as_deref() != Some(std::slice::from_ref(&want)) {
                    tracing::warn!(decky = %decky.name, networks = ?on, "compose decky not on its own network; recreating it");
                    return false;
                }
            }
            true
        })
    }

    fn stop<'a>(&'a self, decky: &'a DeckyConfig) -> DriverFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let name = decky.name.as_str();
            let result = self.compose(&["rm", "-s", "-f", name]).await;
            let lan_left = {
                let mut desired = self.desired.lock().unwrap_or_else(|p| p.into_inner());
                let had_lan = desired.get(name).is_some_and(|d| d.lan.is_some());
                desired.remove(name);
                !had_lan || desired.values().any(|d| d.lan.is_some())
            };
            self.write_file()?;
            if result.is_ok() {
                self.release_network(decky).await;
                if !lan_left {
                    self.remove_lan().await;
                }
            }
            result.map(|_| ())
        })
    }

    fn observe<'a>(
        &'a self,
        names: &'a [String],
    ) -> DriverFuture<'a, BTreeMap<String, Observation>> {
        Box::pin(async move {
            let containers = self.containers().await;
            // What each held decky's chain refused and let through.
            let mut figures = BTreeMap::new();
            if self.network == DeckyNetwork::Own && self.firewall.is_ok() {
                let held: Vec<DeckyConfig> = {
                    let desired = self.desired.lock().unwrap_or_else(|p| p.into_inner());
                    names
                        .iter()
                        .filter_map(|n| desired.get(n).filter(|d| d.lan.is_none()).cloned())
                        .collect()
                };
                // One read of the tables for every decky (none: not judged).
                let tables = if held.is_empty() {
                    None
                } else {
                    compose_firewall::read_tables().await
                };
                for d in held.iter().filter(|_| tables.is_some()) {
                    let interface = compose_firewall::interface_name(&self.project, &d.name);
                    let found = tables.as_ref().and_then(|t| t.get(&interface)).copied();
                    // A chain or a jump that another tool removed (a
                    // firewall reload, a flush) is put back at once.
                    if !found.is_some_and(|f| f.intact()) {
                        let _ops = self.firewall_ops.lock().await;
                        let still = self
                            .desired
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains_key(&d.name);
                        if !still {
                            continue; // torn down meanwhile: nothing to rebuild
                        }
                        match self.hold(d).await {
                            Ok(()) => {
                                tracing::warn!(decky = %d.name, "a compose decky's firewall rules were gone; rebuilt")
                            }
                            Err(e) => {
                                tracing::error!(decky = %d.name, error = %e, "a compose decky's firewall rules are gone and cannot be rebuilt")
                            }
                        }
                    }
                    if let Some(f) = found.filter(|f| f.chain) {
                        crate::metrics::agent_metrics().network_figures(&d.name, f.figures);
                        figures.insert(d.name.clone(), f.figures);
                    }
                }
            }
            names
                .iter()
                .map(|n| {
                    let obs = match &containers {
                        Ok(c) => match c.get(n) {
                            Some(v) => Observation {
                                running: v["State"] == "running",
                                detail: Some(serde_json::json!({
                                    "container": v["Names"],
                                    "state": v["State"],
                                    "status": v["Status"],
                                    "image": v["Image"],
                                    "ports": v["Ports"],
                                    "network": figures.get(n),
                                })),
                            },
                            None => Observation {
                                running: false,
                                detail: Some(serde_json::json!({ "state": "absent" })),
                            },
                        },
                        Err(e) => Observation {
                            running: false,
                            detail: Some(serde_json::json!({ "error": e.0 })),
                        },
                    };
                    (n.clone(), obs)
                })
                .collect()
        })
    }

    fn render(&self, config: &DeploymentConfig) -> Result<serde_json::Value, DriverError> {
        Ok(serde_json::json!({
            "driver": "compose",
            "project": self.project,
            "file": self.compose_file(),
            "compose": render_project(&self.project, config.deckies.iter(), self.network == DeckyNetwork::Own),
        }))
    }

    fn admit(&self, decky: &DeckyConfig) -> Result<(), Refusal> {
        if let Some(lan) = &decky.lan {
            // A bridge "LAN" is a Docker bridge on this worker, not the LAN:
            // its deckies would reach the host and each other unheld.
            if lan.network.mode == crate::lan::LanMode::Bridge && self.network == DeckyNetwork::Own
            {
                return Err(Refusal::Unsupported(format!(
                    "decky {}: a bridge-mode LAN is a Docker bridge on this worker whose deckies the host's firewall does not hold; use macvlan or ipvlan, or start the agent with --decky-network host",
                    decky.name
                )));
            }
            return Ok(());
        }
        if decky.address.is_some() {
            return Ok(());
        }
        // Two names whose bridges would share an interface (and a chain).
        let interface = compose_firewall::interface_name(&self.project, &decky.name);
        let clash = self
            .desired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .find(|n| {
                **n != decky.name && compose_firewall::interface_name(&self.project, n) == interface
            })
            .cloned();
        if let Some(other) = clash {
            return Err(Refusal::Conflict(format!(
                "its network interface name ({interface}) is the one of decky {other}: rename one of them"
            )));
        }
        match (self.network, &self.firewall) {
            (DeckyNetwork::Own, Err(why)) => Err(Refusal::Unsupported(no_firewall(why))),
            (DeckyNetwork::Host, _) if !decky.egress.is_empty() => {
                Err(Refusal::Unsupported(format!(
                    "decky {}: an egress allow-list needs the host's firewall, and this agent does not hold deckies' networks (--decky-network host), where nothing is held back",
                    decky.name
                )))
            }
            _ => Ok(()),
        }
    }

    fn containment(&self) -> serde_json::Value {
        let network = match (self.network, &self.firewall) {
            (DeckyNetwork::Own, Ok(())) => serde_json::json!({
                "mode": "own",
                "detail": "a bridge of its own per decky; the host's firewall refuses all it sends (the host, the master, the other deckies, the LAN, the internet) but answers and its egress allow-list; LAN deckies are on the LAN, unfiltered",
            }),
            (DeckyNetwork::Own, Err(why)) => serde_json::json!({
                "mode": "unavailable",
                "warning": no_firewall(why),
            }),
            (DeckyNetwork::Host, _) => serde_json::json!({
                "mode": "host",
                "warning": "deckies have bridges of their own but what they send is not held back (--decky-network host): they reach the host, the master, the LAN and the internet",
            }),
        };
        serde_json::json!({
            "isolation": {
                "mode": "container",
                "defaults": format!("cap_drop ALL, no-new-privileges, read-only root with tmpfs /tmp and /run, user {DEFAULT_USER}"),
            },
            "network": network,
            "limits": { "memory_cpu_pids": "docker: mem_limit, cpus, pids_limit, ulimit nofile" },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_services_ports_env_restart_and_labels() {
        let cfg = DeploymentConfig::parse(
            br#"{"version":1,"deckies":[{"name":"web","services":["http"],"image":"img:1",
                "command":["httpd","-f"],"env":{"A":"b"},"ports":[{"host":8080,"container":80},
                {"host":53,"container":53,"protocol":"udp"}],"restart":"always"}]}"#,
            DriverKind::Compose,
        )
        .unwrap();
        let doc = render_project("p", cfg.deckies.iter(), true);
        let web = &doc["services"]["web"];
        assert_eq!(web["image"], "img:1");
        assert_eq!(web["command"], serde_json::json!(["httpd", "-f"]));
        assert_eq!(
            web["ports"],
            serde_json::json!(["8080:80/tcp", "53:53/udp"])
        );
        assert_eq!(web["restart"], "always");
        assert_eq!(web["environment"]["A"], "b");
        assert_eq!(web["environment"]["DECNET_SERVICES"], "http");
        assert_eq!(web["labels"]["decnet.decky"], "web");
        assert!(
            doc.get("version").is_none(),
            "compose spec format, no version key"
        );
    }

    #[test]
    fn containers_are_hardened_by_default_and_values_stay_literal() {
        let cfg = DeploymentConfig::parse(
            br#"{"version":1,"deckies":[{"name":"web","image":"img:1",
                "command":["sh","-c","echo $HOME ${PATH}"],"env":{"A":"$HOME","B":"$${X}"}},
                {"name":"ssh","image":"img:1","cap_add":["net_bind_service","CAP_SETUID"],
                 "user":"root","allow_root":true,"writable_root":true,
                 "limits":{"memory_mb":64,"cpu_percent":50,"processes":32,"open_files":256}}]}"#,
            DriverKind::Compose,
        )
        .unwrap();
        let doc = render_project("p", cfg.deckies.iter(), true);
        let web = &doc["services"]["web"];
        assert_eq!(web["cap_drop"], serde_json::json!(["ALL"]));
        assert!(web.get("cap_add").is_none());
        assert_eq!(
            web["security_opt"],
            serde_json::json!(["no-new-privileges:true"])
        );
        assert_eq!(web["read_only"], true);
        assert_eq!(web["user"], DEFAULT_USER);
        assert_eq!(web["mem_limit"], 512u64 << 20);
        assert_eq!(web["pids_limit"], 256);
        assert_eq!(web["cpus"], 1.0);
        assert_eq!(web["ulimits"]["nofile"]["hard"], 1024);
        assert!(web["tmpfs"].as_array().unwrap().len() == 2);
        // Compose turns `$$` back into `$`: the container sees the text as written.
        assert_eq!(web["environment"]["A"], "$$HOME");
        assert_eq!(web["environment"]["B"], "$$$${X}");
        assert_eq!(web["command"][2], "echo $$HOME $${PATH}");
        for key in [
            "privileged",
            "volumes",
            "network_mode",
            "pid",
            "ipc",
            "devices",
        ] {
            assert!(web.get(key).is_none(), "{key}");
        }
        let ssh = &doc["services"]["ssh"];
        assert_eq!(
            ssh["cap_add"],
            serde_json::json!(["NET_BIND_SERVICE", "SETUID"])
        );
        assert_eq!(ssh["user"], "root");
        assert_eq!(ssh["read_only"], false);
        assert_eq!(ssh["mem_limit"], 64u64 << 20);
        assert_eq!(ssh["cpus"], 0.5);
        assert_eq!(ssh["pids_limit"], 32);
    }

    #[test]
    fn lan_deckies_join_one_project_network_at_their_address() {
        use crate::lan::{LanMode, LanPlacement, ResolvedNetwork};
        let network = ResolvedNetwork {
            mode: LanMode::Macvlan,
            parent: Some("eth0".into()),
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            range: None,
        };
        let mut a = DeckyConfig {
            name: "a".into(),
            image: Some("i".into()),
            ..DeckyConfig::default()
        };
        let plain = a.clone();
        a.lan = Some(LanPlacement {
            network: network.clone(),
            address: "10.0.0.5".parse().unwrap(),
            mac: Some("02:00:00:00:00:05".into()),
        });
        let doc = render_project("proj", [&a].into_iter(), true);
        let net = &doc["networks"]["decnet_lan"];
        assert_eq!(net["name"], "proj_lan");
        assert_eq!(net["driver"], "macvlan");
        assert_eq!(net["driver_opts"]["parent"], "eth0");
        assert_eq!(net["ipam"]["config"][0]["subnet"], "10.0.0.0/24");
        assert_eq!(net["ipam"]["config"][0]["gateway"], "10.0.0.1");
        let svc = &doc["services"]["a"];
        assert_eq!(svc["networks"]["decnet_lan"]["ipv4_address"], "10.0.0.5");
        assert_eq!(svc["mac_address"], "02:00:00:00:00:05");
        // ipvlan is L2; deckies without a placement stay off the LAN.
        let mut b = a.clone();
        b.name = "b".into();
        if let Some(l) = b.lan.as_mut() {
            l.network.mode = LanMode::Ipvlan;
            l.mac = None;
        }
        let doc = render_project("proj", [&b, &plain].into_iter(), true);
        assert_eq!(
            doc["networks"]["decnet_lan"]["driver_opts"]["ipvlan_mode"],
            "l2"
        );
        assert_eq!(
            doc["services"]["a"]["networks"],
            serde_json::json!(["decnet_decky_a"]),
            "a decky off the LAN sits on a bridge of its own"
        );
        let doc = render_project("proj", [&plain].into_iter(), true);
        assert!(doc["networks"].get("decnet_lan").is_none());
    }

    #[test]
    fn each_decky_off_the_lan_has_a_bridge_of_its_own() {
        let cfg = DeploymentConfig::parse(
            br#"{"version":1,"deckies":[{"name":"web","image":"i"},{"name":"ssh","image":"i"}]}"#,
            DriverKind::Compose,
        )
        .unwrap();
        let doc = render_project("proj", cfg.deckies.iter(), true);
        for name in ["web", "ssh"] {
            let key = format!("decnet_decky_{name}");
            assert_eq!(
                doc["services"][name]["networks"],
                serde_json::json!([key]),
                "{name} joins its own network only (not the project's default)"
            );
            let net = &doc["networks"][&key];
            assert_eq!(net["name"], format!("proj_decky_{name}"));
            assert_eq!(net["driver"], "bridge");
            assert_eq!(
                net["driver_opts"]["com.docker.network.bridge.name"],
                compose_firewall::interface_name("proj", name),
                "the interface the firewall's chain matches"
            );
            assert_eq!(doc["services"][name]["dns"], serde_json::json!([HELD_DNS]));
        }
        let unheld = render_project("proj", cfg.deckies.iter(), false);
        assert!(
            unheld["services"]["web"].get("dns").is_none(),
            "--decky-network host: the engine's usual resolvers"
        );
    }

    #[test]
    fn a_udp_port_53_host_in_the_allow_list_is_the_resolver() {
        let cfg = DeploymentConfig::parse(
            br#"{"version":1,"deckies":[
                {"name":"a","image":"i","egress":[{"to":"10.9.9.9","port":53,"protocol":"udp"}]},
                {"name":"b","image":"i","egress":[{"to":"10.9.9.0/24","port":53,"protocol":"udp"}]},
                {"name":"c","image":"i","egress":[{"to":"10.9.9.9","port":53}]}]}"#,
            DriverKind::Compose,
        )
        .unwrap();
        let doc = render_project("p", cfg.deckies.iter(), true);
        assert_eq!(doc["services"]["a"]["dns"], serde_json::json!(["10.9.9.9"]));
        for other in ["b", "c"] {
            assert_eq!(
                doc["services"][other]["dns"],
                serde_json::json!([HELD_DNS]),
                "{other}: a network or TCP is no resolver"
            );
        }
        let e = DeploymentConfig::parse(
            br#"{"version":1,"deckies":[{"name":"a","command":["x"],"egress":[{"to":"10.9.9.9","port":53,"protocol":"udp"}]}]}"#,
            DriverKind::Process,
        )
        .unwrap_err();
        assert!(e.to_string().contains("UDP egress is for compose"), "{e}");
    }

    #[test]
    fn compose_egress_net_raw_on_the_lan_and_ipv6_are_judged() {
        let parse = |decky: &str| {
            DeploymentConfig::parse(
                format!(r#"{{"version":1,"deckies":[{decky}]}}"#).as_bytes(),
                DriverKind::Compose,
            )
        };
        assert!(
            parse(r#"{"name":"a","image":"i","egress":[{"to":"203.0.113.7","port":443}]}"#).is_ok()
        );
        let e = parse(r#"{"name":"a","image":"i","egress":[{"to":"2001:db8::/64","port":443}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("IPv6"), "{e}");
        let lan = |decky: &str| {
            DeploymentConfig::parse(
                format!(
                    r#"{{"version":2,"network":{{"mode":"macvlan","parent":"eth0","subnet":"10.0.0.0/24","gateway":"10.0.0.1"}},"deckies":[{decky}]}}"#
                )
                .as_bytes(),
                DriverKind::Compose,
            )
        };
        let e = lan(r#"{"name":"a","image":"i","address":"10.0.0.5","cap_add":["NET_RAW"]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("allow_lan_raw"), "{e}");
        assert!(
            lan(r#"{"name":"a","image":"i","address":"10.0.0.5","cap_add":["NET_RAW"],"allow_lan_raw":true}"#)
                .is_ok()
        );
        let e = lan(r#"{"name":"a","image":"i","address":"10.0.0.5","egress":[{"to":"10.0.0.9","port":80}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("firewall"), "{e}");
        assert!(
            parse(r#"{"name":"a","image":"i","cap_add":["NET_RAW"]}"#).is_ok(),
            "NET_RAW on its own bridge reaches no one"
        );
    }
}
