//! The `compose` driver: renders the deckies into a Docker Compose project
//! (`<state-dir>/compose/docker-compose.yml`; JSON, which is valid YAML) and
//! runs the real `docker compose` (or the older `docker-compose`) against the
//! local engine: `up -d <decky>` per decky, so one failing decky does not
//! fail the others, `rm -s -f <decky>` to tear one down, and the engine's own
//! view of the project's containers for status.
//!
//! Deckies placed on the LAN ([`crate::lan`]) join one project network,
//! `<project>_lan`, of the placement's driver (macvlan, ipvlan L2 or bridge)
//! at their own address (and MAC); compose creates it with the first such
//! decky, and the last teardown removes it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::OnceCell;

use super::{Driver, DriverError, DriverFuture, Observation, ProcessFacts, Started};
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
}

impl ComposeDriver {
    /// A driver for compose project `project`, rendering into `dir`.
    pub fn new(project: String, dir: PathBuf) -> Self {
        ComposeDriver {
            project,
            dir,
            desired: Mutex::new(BTreeMap::new()),
            tool: OnceCell::new(),
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
        let doc = render_project(&self.project, desired.values());
        decnet_pki::secure_fs::ensure_private_dir(&self.dir)
            .map_err(|e| DriverError(format!("cannot create {}: {e}", self.dir.display())))?;
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| DriverError(e.to_string()))?;
        decnet_pki::secure_fs::write_atomic(&self.compose_file(), &bytes, 0o600).map_err(|e| {
            DriverError(format!(
                "cannot write {}: {e}",
                self.compose_file().display()
            ))
        })
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

/// The key of the LAN network in the compose file.
const LAN_KEY: &str = "decnet_lan";

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

/// The compose document for a set of deckies of project `project`.
pub fn render_project<'a>(
    project: &str,
    deckies: impl Iterator<Item = &'a DeckyConfig>,
) -> serde_json::Value {
    let mut services = serde_json::Map::new();
    let mut lan = None;
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
            lan.get_or_insert_with(|| render_lan(project, &p.network));
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
    match lan {
        Some(net) => serde_json::json!({ "services": services, "networks": { LAN_KEY: net } }),
        None => serde_json::json!({ "services": services }),
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
            // The engine keeps containers running across agent restarts.
            match self.containers().await {
                Ok(c) => c.get(&decky.name).is_some_and(|v| v["State"] == "running"),
                Err(_) => false,
            }
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
            if result.is_ok() && !lan_left {
                self.remove_lan().await;
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
            "compose": render_project(&self.project, config.deckies.iter()),
        }))
    }

    fn containment(&self) -> serde_json::Value {
        serde_json::json!({
            "isolation": {
                "mode": "container",
                "defaults": format!("cap_drop ALL, no-new-privileges, read-only root with tmpfs /tmp and /run, user {DEFAULT_USER}"),
            },
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
        let doc = render_project("p", cfg.deckies.iter());
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
        let doc = render_project("p", cfg.deckies.iter());
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
        let doc = render_project("proj", [&a].into_iter());
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
        let doc = render_project("proj", [&b, &plain].into_iter());
        assert_eq!(
            doc["networks"]["decnet_lan"]["driver_opts"]["ipvlan_mode"],
            "l2"
        );
        assert!(doc["services"]["a"].get("networks").is_none());
        let doc = render_project("proj", [&plain].into_iter());
        assert!(doc.get("networks").is_none());
    }
}
