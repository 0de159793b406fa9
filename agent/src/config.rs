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
//! `DECNET_SERVICES`); the `compose` driver runs `image` with `command`, `env`
//! and `ports`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only schema version this agent understands.
pub const CONFIG_VERSION: u32 = 1;
/// At most this many deckies per deployment.
pub const MAX_DECKIES: usize = 256;

/// A whole deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Schema version; must be [`CONFIG_VERSION`].
    pub version: u32,
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

/// A port published by a compose decky.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// Port on the worker.
    pub host: u16,
    /// Port inside the container.
    pub container: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default = "tcp")]
    pub protocol: Protocol,
}

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(err(
                format!("{at}.command"),
                "arguments must not contain NUL",
            ));
        }
        match driver {
            DriverKind::Process => {
                if self.command.is_empty() {
                    return Err(err(
                        format!("{at}.command"),
                        "the process driver needs a command",
                    ));
                }
                if !self.ports.is_empty() {
                    return Err(err(
                        format!("{at}.ports"),
                        "the process driver does not publish ports; the program binds them itself",
                    ));
                }
            }
            DriverKind::Compose => {
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

impl DeploymentConfig {
    /// Parse and validate a JSON document for `driver`.
    pub fn parse(json: &[u8], driver: DriverKind) -> Result<DeploymentConfig, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let cfg: DeploymentConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            // The path names the field at fault, an unknown one included.
            let path = e.path().to_string();
            let field = match path.as_str() {
                "." | "?" => "$".to_string(),
                _ => path,
            };
            err(field, e.into_inner().to_string())
        })?;
        cfg.validate(driver)?;
        Ok(cfg)
    }

    /// Validate an already-decoded config for `driver`.
    pub fn validate(&self, driver: DriverKind) -> Result<(), ConfigError> {
        if self.version != CONFIG_VERSION {
            return Err(err(
                "version",
                format!(
                    "unsupported config version {} (this agent reads {CONFIG_VERSION})",
                    self.version
                ),
            ));
        }
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
            (r#"{"version":2,"deckies":[]}"#, "version"),
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
}
