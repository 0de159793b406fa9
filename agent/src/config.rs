//! The deployment config: a small, versioned JSON document describing the
//! deckies (workloads) a worker should run. Pure: parsing and validation only.
//!
//! ```json
//! {
//!   "version": 1,
//!   "deckies": [
//!     { "name": "ssh-trap", "services": ["ssh"],
//!       "command": ["/usr/bin/my-honeypot", "--port", "2222"],
//!       "env": {"BANNER": "OpenSSH_8.9"},
//!       "ports": [{"host": 2222, "container": 22}],
//!       "image": "decnet/busybox:local",
//!       "restart": "on-failure" }
//!   ]
//! }
//! ```
//!
//! The `process` driver runs `command` with `env` (plus `DECNET_DECKY` and
//! `DECNET_SERVICES`) and nothing else in its environment; the `compose`
//! driver runs `image` with `command`, `env` and `ports`.
//!
//! Version 2 adds a `network` section and per decky an `address` (and, for
//! macvlan, a `mac`): deckies then sit on the LAN as hosts of their own
//! (compose driver only; see [`crate::lan`]):
//!
//! ```json
//! { "version": 2,
//!   "network": { "mode": "macvlan", "parent": "eth0",
//!                "subnet": "192.168.1.0/24", "gateway": "192.168.1.1",
//!                "range": "192.168.1.192/27" },
//!   "deckies": [ { "name": "nas", "image": "…", "address": "192.168.1.20" } ] }
//! ```
//!
//! A decky is assumed hostile, so the config can only narrow what it gets:
//! `user` (root only with `allow_root: true`, which the master audits),
//! `limits` (memory, CPU share, processes, open files), and for compose
//! `cap_add` (from a short list of capabilities that do not reach the host)
//! and `writable_root`. Host mounts, host namespaces, privileged mode and
//! security options are refused by name ([`FORBIDDEN_FIELDS`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::lan::{LanPlacement, NetworkConfig};

/// The newest schema version this agent understands (1 is still read).
pub const CONFIG_VERSION: u32 = 2;
/// At most this many deckies per deployment.
pub const MAX_DECKIES: usize = 256;
/// Most ports one decky may have.
pub const MAX_PORTS: usize = 32;

/// A whole deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Schema version: 1, or 2 for `network`.
    pub version: u32,
    /// Where the deckies sit on the LAN (version 2, compose driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
    /// The workloads.
    pub deckies: Vec<DeckyConfig>,
}

/// When a crashed decky is started again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever it exits.
    Always,
    /// Restart when it exits with an error or a signal (default).
    #[default]
    OnFailure,
    /// Never restart.
    Never,
}

/// A port of a decky: published by the engine for a compose decky; bound
/// by the agent and handed to the program (systemd socket activation,
/// privileged ports included) for a process decky.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// Port on the worker.
    pub host: u16,
    /// Port inside the container (compose only; process deckies get the
    /// socket itself).
    #[serde(default)]
    pub container: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default = "tcp")]
    pub protocol: Protocol,
}

/// One destination a decky may connect to (`egress`): a network (CIDR, or
/// one address) and a TCP port. Nothing else leaves a process decky's
/// network namespace or a compose decky's bridge (IPv4 only there: the
/// containers have no IPv6). LAN deckies take none: their traffic does not
/// pass the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressEntry {
    /// `203.0.113.7`, `10.20.0.0/16`, `2001:db8::/64`.
    pub to: String,
    /// The port.
    pub port: u16,
    /// `tcp` (the default) or `udp` (compose deckies only: a process
    /// decky's allowed connections go through TCP paths).
    #[serde(default = "tcp", skip_serializing_if = "is_tcp")]
    pub protocol: Protocol,
}

fn is_tcp(p: &Protocol) -> bool {
    *p == Protocol::Tcp
}

impl EgressEntry {
    /// The rule the confinement applies (the entry was validated).
    pub fn rule(&self) -> Result<decnet_confine::egress::EgressRule, String> {
        decnet_confine::egress::EgressRule::new(&self.to, self.port).map_err(|e| e.to_string())
    }
}

/// Most egress entries of one decky.
pub const MAX_EGRESS: usize = 16;

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

/// One workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeckyConfig {
    /// Unique name within the deployment (`[a-z0-9][a-z0-9_-]{0,62}`).
    pub name: String,
    /// The services it emulates (exported to the workload).
    #[serde(default)]
    pub services: Vec<String>,
    /// Program and arguments (`process`: required; `compose`: the container command).
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Published ports (`compose` only).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Container image (`compose` only; required there).
    #[serde(default)]
    pub image: Option<String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Account to run as: `NAME`, `UID` or `UID:GID` (default: a uid of its
    /// own for a process decky, `65534:65534` in a compose container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Allow `user` to be root. Audited by the master; off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_root: bool,
    /// Allow a LAN decky (`address`) to keep `NET_RAW`, with which it could
    /// forge frames on the LAN (ARP spoofing of its neighbours, the master
    /// among them). Audited by the master; off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_lan_raw: bool,
    /// Resource limits.
    #[serde(default)]
    pub limits: DeckyLimits,
    /// The destinations it may connect to (process deckies with a network
    /// of their own); none by default: nothing leaves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressEntry>,
    /// Capabilities a compose decky keeps (every other one is dropped);
    /// only from [`GRANTABLE_CAPS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Compose: a writable root filesystem (default read-only, with tmpfs
    /// on `/tmp` and `/run`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writable_root: bool,
    /// Its address on the LAN (version 2, with `network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// Its MAC address (macvlan only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Where the agent placed it on this worker's LAN. Set by the agent
    /// (after relocalisation), refused in a config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<LanPlacement>,
}

/// Resource limits of one decky.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeckyLimits {
    /// Memory in MiB (16-65536).
    pub memory_mb: u64,
    /// CPU share in percent of one core (1-6400).
    pub cpu_percent: u32,
    /// Processes and threads (8-65536).
    pub processes: u64,
    /// Open files per process (16-1048576).
    pub open_files: u64,
    /// Disk in MiB (1-1048576): the most its working directory may hold,
    /// and the largest file it may write (process deckies).
    pub disk_mb: u64,
    /// Scratch in MiB (1-65536) of each of its own `/tmp`, `/var/tmp` and
    /// `/dev/shm` (process deckies with a network of their own; memory,
    /// counted against `memory_mb` where cgroups apply).
    pub tmp_mb: u64,
}

impl Default for DeckyLimits {
    fn default() -> Self {
        DeckyLimits {
            memory_mb: 512,
            cpu_percent: 100,
            processes: 256,
            open_files: 1024,
            disk_mb: 1024,
            tmp_mb: 64,
        }
    }
}

impl DeckyLimits {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let check = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(err(
                    format!("{at}.limits.{name}"),
                    format!("must be between {lo} and {hi}"),
                ))
            }
        };
        check("memory_mb", self.memory_mb, 16, 65536)?;
        check("cpu_percent", u64::from(self.cpu_percent), 1, 6400)?;
        check("processes", self.processes, 8, 65536)?;
        check("open_files", self.open_files, 16, 1 << 20)?;
        check("disk_mb", self.disk_mb, 1, 1 << 20)?;
        check("tmp_mb", self.tmp_mb, 1, 65536)
    }

    /// The limits in the form the confinement applies.
    pub fn resource_limits(&self) -> decnet_confine::ResourceLimits {
        decnet_confine::ResourceLimits {
            open_files: self.open_files,
            processes: self.processes,
            memory_bytes: self.memory_mb << 20,
            cpu_percent: self.cpu_percent,
            file_bytes: self.disk_mb << 20,
        }
    }
}

/// Capabilities a compose decky may keep: the ones a network daemon needs
/// to bind, drop privileges and chroot. Anything that reaches the host
/// (`SYS_ADMIN`, `SYS_PTRACE`, `NET_ADMIN`, `SYS_MODULE`, `DAC_READ_SEARCH`,
/// `BPF`, ...) is refused.
pub const GRANTABLE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SYS_CHROOT",
];

/// Fields a decky may never have, each with the reason given in the 422.
pub const FORBIDDEN_FIELDS: &[(&str, &str)] = &[
    ("privileged", "privileged mode hands the decky the host"),
    (
        "volumes",
        "host mounts (the Docker socket among them) are never allowed",
    ),
    ("volumes_from", "host mounts are never allowed"),
    ("mounts", "host mounts are never allowed"),
    ("devices", "host devices are never allowed"),
    (
        "network_mode",
        "the host network namespace is never allowed",
    ),
    ("networks", "networks are chosen by the agent"),
    ("pid", "the host PID namespace is never allowed"),
    ("ipc", "the host IPC namespace is never allowed"),
    ("uts", "the host UTS namespace is never allowed"),
    (
        "userns_mode",
        "user namespace settings are chosen by the agent",
    ),
    ("cgroup_parent", "cgroups are chosen by the agent"),
    ("security_opt", "security options are chosen by the agent"),
    (
        "cap_drop",
        "every capability is dropped already; use cap_add for the few a decky may keep",
    ),
    ("sysctls", "kernel settings are never allowed"),
];

/// Whether `user` names root: `root`, `0`, or either with a group.
pub fn names_root(user: &str) -> bool {
    let u = user.split(':').next().unwrap_or(user);
    u == "root" || u.parse::<u32>() == Ok(0)
}

/// The canonical name of capability `cap` (`cap_net_raw` → `NET_RAW`).
pub fn capability_name(cap: &str) -> String {
    let up = cap.to_ascii_uppercase();
    up.strip_prefix("CAP_").unwrap_or(&up).to_string()
}

/// A config that cannot be deployed, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// JSON path of the offending field, e.g. `deckies[1].name`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// Which driver the config will be validated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Supervised local processes.
    Process,
    /// Docker Compose.
    Compose,
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriverKind::Process => "process",
            DriverKind::Compose => "compose",
        })
    }
}

/// Whether `name` is a valid decky name.
pub fn validate_decky_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid decky name {name:?}: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        ))
    }
}

fn validate_service(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl DeckyConfig {
    /// Validate one decky for `driver`; `at` is its JSON path.
    pub fn validate(&self, driver: DriverKind, at: &str) -> Result<(), ConfigError> {
        validate_decky_name(&self.name).map_err(|m| err(format!("{at}.name"), m))?;
        for (i, s) in self.services.iter().enumerate() {
            if !validate_service(s) {
                return Err(err(
                    format!("{at}.services[{i}]"),
                    format!("invalid service name {s:?}"),
                ));
            }
        }
        for k in self.env.keys() {
            let ok = !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !k.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(err(
                    format!("{at}.env"),
                    format!("invalid variable name {k:?}"),
                ));
            }
            if k.starts_with("LISTEN_") {
                return Err(err(
                    format!("{at}.env"),
                    format!("{k} is set by the agent for the sockets it hands in (ports)"),
                ));
            }
        }
        if self.ports.len() > MAX_PORTS {
            return Err(err(
                format!("{at}.ports"),
                format!("at most {MAX_PORTS} ports per decky"),
            ));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.host == 0 {
                return Err(err(format!("{at}.ports[{i}].host"), "a port is 1-65535"));
            }
            if self.ports[..i]
                .iter()
                .any(|q| q.host == p.host && q.protocol == p.protocol)
            {
                return Err(err(
                    format!("{at}.ports[{i}]"),
                    format!("port {} is listed twice", p.host),
                ));
            }
        }
        if self.egress.len() > MAX_EGRESS {
            return Err(err(
                format!("{at}.egress"),
                format!("at most {MAX_EGRESS} egress entries per decky"),
            ));
        }
        for (i, e) in self.egress.iter().enumerate() {
            e.rule()
                .map_err(|why| err(format!("{at}.egress[{i}]"), why))?;
        }
        if self.command.iter().any(|a| a.contains('\0'))
            || self.env.values().any(|v| v.contains('\0'))
        {
            return Err(err(
                format!("{at}.command"),
                "arguments and values must not contain NUL",
            ));
        }
        if let Some(user) = &self.user {
            let ok = !user.is_empty()
                && user.len() <= 65
                && user.split(':').count() <= 2
                && user.split(':').all(|p| {
                    !p.is_empty()
                        && p.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
                        })
                });
            if !ok {
                return Err(err(
                    format!("{at}.user"),
                    format!("invalid user {user:?}: use NAME, UID or UID:GID"),
                ));
            }
            if names_root(user) && !self.allow_root {
                return Err(err(
                    format!("{at}.user"),
                    "a decky runs as root only with \"allow_root\": true (the master audits it)",
                ));
            }
        }
        self.limits.validate(at)?;
        match driver {
            DriverKind::Process => {
                if self.command.is_empty() {
                    return Err(err(
                        format!("{at}.command"),
                        "the process driver needs a command",
                    ));
                }
                if !self.cap_add.is_empty() {
                    return Err(err(
                        format!("{at}.cap_add"),
                        "process deckies run without any capability; cap_add is for compose",
                    ));
                }
                if self.writable_root {
                    return Err(err(
                        format!("{at}.writable_root"),
                        "writable_root is for compose deckies",
                    ));
                }
                if let Some(i) = self.egress.iter().position(|e| e.protocol == Protocol::Udp) {
                    return Err(err(
                        format!("{at}.egress[{i}].protocol"),
                        "UDP egress is for compose deckies: a process decky's allowed connections go through TCP paths",
                    ));
                }
            }
            DriverKind::Compose => {
                if !self.egress.is_empty() && self.address.is_some() {
                    return Err(err(
                        format!("{at}.egress"),
                        "a LAN decky's traffic does not pass the host's firewall: it cannot take an egress allow-list",
                    ));
                }
                if let Some(i) = self.egress.iter().position(|e| e.to.contains(':')) {
                    return Err(err(
                        format!("{at}.egress[{i}]"),
                        "compose deckies have no IPv6: an egress entry names an IPv4 network",
                    ));
                }
                let raw = self.cap_add.iter().any(|c| capability_name(c) == "NET_RAW");
                if raw && self.address.is_some() && !self.allow_lan_raw {
                    return Err(err(
                        format!("{at}.cap_add"),
                        "NET_RAW on the LAN lets a decky forge frames there (ARP spoofing of its neighbours, the master among them); it is kept only with \"allow_lan_raw\": true (the master audits it)",
                    ));
                }
                if let Some(i) = self.ports.iter().position(|p| p.container == 0) {
                    return Err(err(
                        format!("{at}.ports[{i}].container"),
                        "a compose decky's port names the port inside the container",
                    ));
                }
                let image = self.image.as_deref().unwrap_or("");
                if image.is_empty() || image.chars().any(|c| c.is_whitespace()) {
                    return Err(err(
                        format!("{at}.image"),
                        "the compose driver needs an image",
                    ));
                }
                for (i, p) in self.ports.iter().enumerate() {
                    if p.host == 0 || p.container == 0 {
                        return Err(err(format!("{at}.ports[{i}]"), "ports must be 1-65535"));
                    }
                }
                for (i, c) in self.cap_add.iter().enumerate() {
                    if !GRANTABLE_CAPS.contains(&capability_name(c).as_str()) {
                        return Err(err(
                            format!("{at}.cap_add[{i}]"),
                            format!(
                                "capability {c:?} is not granted to deckies (grantable: {})",
                                GRANTABLE_CAPS.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The environment the workload sees: its `env` plus `DECNET_DECKY` and
    /// `DECNET_SERVICES`.
    pub fn effective_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        env.insert("DECNET_DECKY".into(), self.name.clone());
        env.insert("DECNET_SERVICES".into(), self.services.join(","));
        env
    }
}

/// Refuse a field of [`FORBIDDEN_FIELDS`] by name and reason, before the
/// generic "unknown field" answer would hide why.
fn refuse_forbidden_fields(json: &[u8]) -> Result<(), ConfigError> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Ok(()); // the typed decode reports the syntax error
    };
    let Some(deckies) = doc.get("deckies").and_then(|d| d.as_array()) else {
        return Ok(());
    };
    for (i, d) in deckies.iter().enumerate() {
        let Some(obj) = d.as_object() else { continue };
        for (field, why) in FORBIDDEN_FIELDS {
            if obj.contains_key(*field) {
                return Err(err(
                    format!("deckies[{i}].{field}"),
                    format!("{why}: a decky is assumed hostile"),
                ));
            }
        }
    }
    Ok(())
}

impl DeploymentConfig {
    /// Names of the deckies that run as root (`allow_root`), for the audit.
    pub fn root_deckies(&self) -> Vec<&str> {
        self.deckies
            .iter()
            .filter(|d| d.allow_root)
            .map(|d| d.name.as_str())
            .collect()
    }

    /// The LAN fields: version 2 only, compose only, every address and MAC
    /// valid and unique, never `lan` (the agent's own).
    fn validate_lan(&self, driver: DriverKind) -> Result<(), ConfigError> {
        for (i, d) in self.deckies.iter().enumerate() {
            if d.lan.is_some() {
                return Err(err(
                    format!("deckies[{i}].lan"),
                    "set by the agent when it places the decky; a config cannot name it",
                ));
            }
        }
        let named = self
            .deckies
            .iter()
            .position(|d| d.address.is_some() || d.mac.is_some());
        if self.network.is_none() && named.is_none() {
            return Ok(());
        }
        if self.version < 2 {
            return Err(err(
                "version",
                "network, address and mac need config version 2",
            ));
        }
        if driver == DriverKind::Process {
            return Err(err(
                if self.network.is_some() {
                    "network".to_string()
                } else {
                    format!("deckies[{}].address", named.unwrap_or(0))
                },
                "the process driver cannot give deckies addresses of their own on the LAN; run the agent with --driver compose",
            ));
        }
        let Some(net) = &self.network else {
            let i = named.unwrap_or(0);
            let field = if self.deckies[i].address.is_some() {
                "address"
            } else {
                "mac"
            };
            return Err(err(
                format!("deckies[{i}].{field}"),
                "needs a network section",
            ));
        };
        crate::lan::validate(net, &self.deckies)
    }

    /// Parse and validate a JSON document for `driver`.
    pub fn parse(json: &[u8], driver: DriverKind) -> Result<DeploymentConfig, ConfigError> {
        refuse_forbidden_fields(json)?;
        let de = &mut serde_json::Deserializer::from_slice(json);
        let cfg: DeploymentConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            // The path names the field at fault, an unknown one included.
            // Segments the decoder could not name ("?") say nothing: the
            // field is the nearest named one.
            let path = e.path().to_string().replace(".?", "");
            let field = match path.as_str() {
                "." | "?" | "" => "$".to_string(),
                _ => path,
            };
            err(
                field,
                decnet_server::plain_decode_message(&e.into_inner().to_string()),
            )
        })?;
        cfg.validate(driver)?;
        Ok(cfg)
    }

    /// Validate an already-decoded config for `driver`.
    pub fn validate(&self, driver: DriverKind) -> Result<(), ConfigError> {
        if !(1..=CONFIG_VERSION).contains(&self.version) {
            return Err(err(
                "version",
                format!(
                    "unsupported config version {} (this agent reads 1 to {CONFIG_VERSION})",
                    self.version
                ),
            ));
        }
        self.validate_lan(driver)?;
        if self.deckies.is_empty() {
            return Err(err("deckies", "at least one decky is required"));
        }
        if self.deckies.len() > MAX_DECKIES {
            return Err(err("deckies", format!("at most {MAX_DECKIES} deckies")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in self.deckies.iter().enumerate() {
            d.validate(driver, &format!("deckies[{i}]"))?;
            if !seen.insert(d.name.as_str()) {
                return Err(err(
                    format!("deckies[{i}].name"),
                    format!("duplicate decky name {:?}", d.name),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> &'static str {
        r#"{"version":1,"deckies":[
            {"name":"a","services":["ssh"],"command":["/bin/sleep","100"]},
            {"name":"b-2","command":["/bin/true"],"env":{"X_1":"y"},"restart":"never"}]}"#
    }

    #[test]
    fn decoding_errors_name_the_field_by_path() {
        let e = DeploymentConfig::parse(
            br#"{"version":1,"deckies":[{"name":"a","command":["/bin/true"],"colour":"red"}]}"#,
            DriverKind::Process,
        )
        .unwrap_err();
        assert_eq!(e.field, "deckies[0].colour", "{e}");
        let e = DeploymentConfig::parse(
            br#"{"version":1,"deckies":[{"name":5}]}"#,
            DriverKind::Process,
        )
        .unwrap_err();
        assert_eq!(e.field, "deckies[0].name", "{e}");
        let e = DeploymentConfig::parse(br#"{"version":1,"extra":true}"#, DriverKind::Process)
            .unwrap_err();
        assert_eq!(e.field, "extra", "{e}");
        let e = DeploymentConfig::parse(b"{not json", DriverKind::Process).unwrap_err();
        assert_eq!(e.field, "$", "{e}");
    }

    #[test]
    fn parses_a_valid_process_config() {
        let c = DeploymentConfig::parse(sample().as_bytes(), DriverKind::Process).unwrap();
        assert_eq!(c.deckies.len(), 2);
        assert_eq!(c.deckies[1].restart, RestartPolicy::Never);
        assert_eq!(c.deckies[0].restart, RestartPolicy::OnFailure);
        let env = c.deckies[0].effective_env();
        assert_eq!(env["DECNET_SERVICES"], "ssh");
        assert_eq!(env["DECNET_DECKY"], "a");
    }

    #[test]
    fn refuses_with_the_field_at_fault() {
        let cases = [
            (r#"{"version":3,"deckies":[]}"#, "version"),
            (r#"{"version":1,"deckies":[]}"#, "deckies"),
            (
                r#"{"version":1,"deckies":[{"name":"Bad","command":["x"]}]}"#,
                "deckies[0].name",
            ),
            (
                r#"{"version":1,"deckies":[{"name":"a"}]}"#,
                "deckies[0].command",
            ),
            (
                r#"{"version":1,"deckies":[{"name":"a","command":["x"]},{"name":"a","command":["x"]}]}"#,
                "deckies[1].name",
            ),
            (
                r#"{"version":1,"deckies":[{"name":"a","command":["x"],"env":{"1X":"v"}}]}"#,
                "deckies[0].env",
            ),
            (
                r#"{"version":1,"deckies":[{"name":"a","command":["x"],"bogus":1}]}"#,
                "deckies[0].bogus",
            ),
            (r#"not json"#, "$"),
        ];
        for (json, field) in cases {
            let e = DeploymentConfig::parse(json.as_bytes(), DriverKind::Process).unwrap_err();
            assert_eq!(e.field, field, "{json}: {e}");
        }
    }

    #[test]
    fn containment_fields_are_checked_and_host_access_is_refused_by_name() {
        let cases = [
            (
                DriverKind::Process,
                r#"{"name":"a","command":["x"],"user":"root"}"#,
                "deckies[0].user",
                "allow_root",
            ),
            (
                DriverKind::Process,
                r#"{"name":"a","command":["x"],"user":"0:0"}"#,
                "deckies[0].user",
                "allow_root",
            ),
            (
                DriverKind::Process,
                r#"{"name":"a","command":["x"],"user":"a b"}"#,
                "deckies[0].user",
                "invalid user",
            ),
            (
                DriverKind::Process,
                r#"{"name":"a","command":["x"],"cap_add":["NET_RAW"]}"#,
                "deckies[0].cap_add",
                "without any capability",
            ),
            (
                DriverKind::Compose,
                r#"{"name":"a","image":"i","cap_add":["SYS_ADMIN"]}"#,
                "deckies[0].cap_add[0]",
                "not granted",
            ),
            (
                DriverKind::Compose,
                r#"{"name":"a","image":"i","privileged":true}"#,
                "deckies[0].privileged",
                "hostile",
            ),
            (
                DriverKind::Compose,
                r#"{"name":"a","image":"i","volumes":["/var/run/docker.sock:/var/run/docker.sock"]}"#,
                "deckies[0].volumes",
                "Docker socket",
            ),
            (
                DriverKind::Compose,
                r#"{"name":"a","image":"i","network_mode":"host"}"#,
                "deckies[0].network_mode",
                "host network",
            ),
            (
                DriverKind::Compose,
                r#"{"name":"a","image":"i","pid":"host"}"#,
                "deckies[0].pid",
                "PID namespace",
            ),
            (
                DriverKind::Process,
                r#"{"name":"a","command":["x"],"limits":{"memory_mb":1}}"#,
                "deckies[0].limits.memory_mb",
                "between",
            ),
            (
                DriverKind::Process,
                r#"{"name":"a","command":["x"],"limits":{"swap":1}}"#,
                "deckies[0].limits.swap",
                "unknown field",
            ),
        ];
        for (driver, decky, field, words) in cases {
            let json = format!(r#"{{"version":1,"deckies":[{decky}]}}"#);
            let e = DeploymentConfig::parse(json.as_bytes(), driver).unwrap_err();
            assert_eq!(e.field, field, "{decky}: {e}");
            assert!(e.message.contains(words), "{decky}: {e}");
        }
        let ok = r#"{"version":1,"deckies":[{"name":"a","command":["x"],"user":"root","allow_root":true,
            "limits":{"memory_mb":64}}]}"#;
        let c = DeploymentConfig::parse(ok.as_bytes(), DriverKind::Process).unwrap();
        assert_eq!(c.root_deckies(), vec!["a"]);
        assert_eq!(
            c.deckies[0].limits.processes, 256,
            "unset limits keep their defaults"
        );
        assert_eq!(c.deckies[0].limits.resource_limits().memory_bytes, 64 << 20);
    }

    #[test]
    fn compose_needs_an_image_and_valid_ports() {
        let no_image = r#"{"version":1,"deckies":[{"name":"a","command":["x"]}]}"#;
        assert_eq!(
            DeploymentConfig::parse(no_image.as_bytes(), DriverKind::Compose)
                .unwrap_err()
                .field,
            "deckies[0].image"
        );
        let ok = r#"{"version":1,"deckies":[{"name":"a","image":"busybox:local","ports":[{"host":8080,"container":80}]}]}"#;
        let c = DeploymentConfig::parse(ok.as_bytes(), DriverKind::Compose).unwrap();
        assert_eq!(c.deckies[0].ports[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn lan_fields_need_version_2_the_compose_driver_and_a_network() {
        let lan = r#"{"version":2,
            "network":{"mode":"macvlan","parent":"eth0","subnet":"10.0.0.0/24","gateway":"10.0.0.1"},
            "deckies":[{"name":"a","image":"i","address":"10.0.0.5","mac":"02:00:00:00:00:05"},
                       {"name":"b","image":"i"}]}"#;
        let cfg = DeploymentConfig::parse(lan.as_bytes(), DriverKind::Compose).unwrap();
        assert_eq!(
            cfg.network.as_ref().unwrap().subnet.to_string(),
            "10.0.0.0/24"
        );
        assert_eq!(cfg.deckies[0].address, Some("10.0.0.5".parse().unwrap()));
        // Version 1 still reads, without LAN fields.
        DeploymentConfig::parse(
            br#"{"version":1,"deckies":[{"name":"a","image":"i"}]}"#,
            DriverKind::Compose,
        )
        .unwrap();
        let cases: &[(&str, DriverKind, &str)] = &[
            (&lan.replace(r#""version":2"#, r#""version":1"#), DriverKind::Compose, "version"),
            (lan, DriverKind::Process, "network"),
            (
                r#"{"version":2,"deckies":[{"name":"a","image":"i","address":"10.0.0.5"}]}"#,
                DriverKind::Compose,
                "deckies[0].address",
            ),
            (
                &lan.replace("10.0.0.5", "10.0.9.5"),
                DriverKind::Compose,
                "deckies[0].address",
            ),
            (
                &lan.replace(r#""subnet":"10.0.0.0/24""#, r#""subnet":"10.0.0.7/24""#),
                DriverKind::Compose,
                "network.subnet",
            ),
            (
                &lan.replace(r#""mode":"macvlan""#, r#""mode":"vxlan""#),
                DriverKind::Compose,
                "network.mode",
            ),
            (
                &lan.replace(r#"{"name":"b","image":"i"}"#, r#"{"name":"b","image":"i","lan":null}"#)
                    .replace(r#""lan":null"#, r#""lan":{"network":{"mode":"bridge","subnet":"10.0.0.0/24","gateway":"10.0.0.1"},"address":"10.0.0.9"}"#),
                DriverKind::Compose,
                "deckies[1].lan",
            ),
        ];
        for (json, driver, field) in cases {
            let e = DeploymentConfig::parse(json.as_bytes(), *driver).unwrap_err();
            assert_eq!(e.field, *field, "{json}: {e}");
        }
    }

    #[test]
    fn the_shipped_examples_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for (file, driver) in [
            ("deployment.json", DriverKind::Process),
            ("deployment-compose.json", DriverKind::Compose),
            ("deployment-lan.json", DriverKind::Compose),
        ] {
            let json = std::fs::read(dir.join(file)).unwrap();
            DeploymentConfig::parse(&json, driver).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
}
