//! Roles encoded in certificate CNs, and host-name rules.
//!
//! | CN | role |
//! |---|---|
//! | `decnet-master` | [`Role::Master`] |
//! | `updater@<host>` | [`Role::Updater`] of `<host>` |
//! | `monitor@<name>` | [`Role::Monitor`] named `<name>` (a metrics scraper) |
//! | `operator@<name>` | [`Role::Operator`] named `<name>` (a person or a script driving the fleet API) |
//! | `<host>` (a valid host name) | [`Role::Agent`] of `<host>` |
//!
//! Servers authorize on the role, never on a CN string comparison scattered
//! through handlers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The CN of the master's own certificate; never a valid worker name.
pub const MASTER_CN: &str = "decnet-master";

/// Prefix of an updater CN (`updater@<host>`).
const UPDATER_PREFIX: &str = "updater@";
/// Prefix of a monitor CN (`monitor@<name>`).
const MONITOR_PREFIX: &str = "monitor@";
/// Prefix of an operator CN (`operator@<name>`).
const OPERATOR_PREFIX: &str = "operator@";

/// A validated worker host name: DNS labels (letters, digits, `-`), each
/// 1–63 characters not starting or ending with `-`, at most 253 characters in
/// all, never the reserved master CN. Stored lowercase.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct HostName(String);

/// Why a host name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    /// Empty string.
    #[error("host name is empty")]
    Empty,
    /// Longer than 253 characters.
    #[error("host name is longer than 253 characters")]
    TooLong,
    /// A label (between dots) is empty or longer than 63 characters.
    #[error("host name label {label:?} must be 1-63 characters")]
    BadLabelLength {
        /// The offending label.
        label: String,
    },
    /// A character outside letters, digits, `-` and `.`.
    #[error("host name may contain only letters, digits, '-' and '.', found {found:?}")]
    BadCharacter {
        /// The first offending character.
        found: char,
    },
    /// A label starts or ends with a hyphen.
    #[error("host name label {label:?} must not start or end with '-'")]
    HyphenAtEdge {
        /// The offending label.
        label: String,
    },
    /// The reserved master CN.
    #[error("{MASTER_CN:?} is reserved for the master")]
    Reserved,
}

impl HostName {
    /// Validate and normalize (lowercase) a host name.
    pub fn new(name: &str) -> Result<Self, HostNameError> {
        if name.is_empty() {
            return Err(HostNameError::Empty);
        }
        if name.len() > 253 {
            return Err(HostNameError::TooLong);
        }
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            return Err(HostNameError::BadCharacter { found });
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(HostNameError::BadLabelLength {
                    label: label.to_string(),
                });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(HostNameError::HyphenAtEdge {
                    label: label.to_string(),
                });
            }
        }
        let lower = name.to_ascii_lowercase();
        if lower == MASTER_CN {
            return Err(HostNameError::Reserved);
        }
        Ok(HostName(lower))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The CN of this host's updater certificate.
    pub fn updater_cn(&self) -> String {
        format!("{UPDATER_PREFIX}{}", self.0)
    }
}

impl FromStr for HostName {
    type Err = HostNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostName::new(s)
    }
}

impl<'de> Deserialize<'de> for HostName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostName::new(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName({})", self.0)
    }
}

impl AsRef<str> for HostName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What a certificate's CN says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "role", content = "host", rename_all = "lowercase")]
pub enum Role {
    /// The master (`decnet-master`): drives agents and updaters.
    Master,
    /// The agent daemon of a worker host (CN = the host name).
    Agent(HostName),
    /// The updater daemon of a worker host (CN = `updater@<host>`).
    Updater(HostName),
    /// A metrics scraper (CN = `monitor@<name>`): may read `/metrics`, and
    /// nothing else anywhere.
    Monitor(HostName),
    /// An operator (CN = `operator@<name>`): may call the master's fleet API
    /// (`/v1`), as its role and host scope in the fleet database allow, and
    /// nothing else anywhere.
    Operator(HostName),
}

/// The role without its host, for policies ("admit Master and Agent").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleKind {
    /// See [`Role::Master`].
    Master,
    /// See [`Role::Agent`].
    Agent,
    /// See [`Role::Updater`].
    Updater,
    /// See [`Role::Monitor`].
    Monitor,
    /// See [`Role::Operator`].
    Operator,
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoleKind::Master => "master",
            RoleKind::Agent => "agent",
            RoleKind::Updater => "updater",
            RoleKind::Monitor => "monitor",
            RoleKind::Operator => "operator",
        })
    }
}

/// A CN that names no role.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate CN {cn:?} names no decnet role: {reason}")]
pub struct RoleError {
    cn: String,
    reason: HostNameError,
}

impl Role {
    /// Parse the role from a certificate CN.
    pub fn from_cn(cn: &str) -> Result<Role, RoleError> {
        if cn == MASTER_CN {
            return Ok(Role::Master);
        }
        let wrap = |reason| RoleError {
            cn: cn.to_string(),
            reason,
        };
        if let Some(host) = cn.strip_prefix(UPDATER_PREFIX) {
            return HostName::new(host).map(Role::Updater).map_err(wrap);
        }
        if let Some(name) = cn.strip_prefix(MONITOR_PREFIX) {
            return HostName::new(name).map(Role::Monitor).map_err(wrap);
        }
        if let Some(name) = cn.strip_prefix(OPERATOR_PREFIX) {
            return HostName::new(name).map(Role::Operator).map_err(wrap);
        }
        HostName::new(cn).map(Role::Agent).map_err(wrap)
    }

    /// The CN that encodes this role.
    pub fn cn(&self) -> String {
        match self {
            Role::Master => MASTER_CN.to_string(),
            Role::Agent(h) => h.to_string(),
            Role::Updater(h) => h.updater_cn(),
            Role::Monitor(n) => format!("{MONITOR_PREFIX}{n}"),
            Role::Operator(n) => format!("{OPERATOR_PREFIX}{n}"),
        }
    }

    /// The role's kind.
    pub fn kind(&self) -> RoleKind {
        match self {
            Role::Master => RoleKind::Master,
            Role::Agent(_) => RoleKind::Agent,
            Role::Updater(_) => RoleKind::Updater,
            Role::Monitor(_) => RoleKind::Monitor,
            Role::Operator(_) => RoleKind::Operator,
        }
    }

    /// The worker host this role belongs to (none for the master, monitors
    /// and operators).
    pub fn host(&self) -> Option<&HostName> {
        match self {
            Role::Master | Role::Monitor(_) | Role::Operator(_) => None,
            Role::Agent(h) | Role::Updater(h) => Some(h),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cn())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_from_cn() {
        assert_eq!(Role::from_cn("decnet-master").unwrap(), Role::Master);
        let w1 = HostName::new("w1").unwrap();
        assert_eq!(Role::from_cn("w1").unwrap(), Role::Agent(w1.clone()));
        assert_eq!(Role::from_cn("updater@w1").unwrap(), Role::Updater(w1));
        assert!(Role::from_cn("updater@").is_err());
        assert!(Role::from_cn("updater@decnet-master").is_err());
        assert!(Role::from_cn("a@b").is_err());
        assert!(Role::from_cn("").is_err());
        assert!(Role::from_cn("updater@updater@x").is_err());
        assert_eq!(
            Role::from_cn("operator@alice").unwrap(),
            Role::Operator(HostName::new("alice").unwrap())
        );
        assert!(Role::from_cn("operator@").is_err());
        assert!(Role::from_cn("operator@decnet-master").is_err());
        let prom = HostName::new("prom").unwrap();
        assert_eq!(Role::from_cn("monitor@prom").unwrap(), Role::Monitor(prom));
        assert_eq!(Role::from_cn("monitor@prom").unwrap().host(), None);
        assert!(Role::from_cn("monitor@").is_err());
        assert!(Role::from_cn("monitor@decnet-master").is_err());
    }

    #[test]
    fn cn_round_trip() {
        for cn in [
            "decnet-master",
            "w-1.lab",
            "updater@w-1.lab",
            "monitor@prom",
        ] {
            assert_eq!(Role::from_cn(cn).unwrap().cn(), cn);
        }
    }

    #[test]
    fn host_name_rules() {
        assert!(HostName::new("decoy-01").is_ok());
        assert!(HostName::new("a.b.c").is_ok());
        assert_eq!(HostName::new("Web1").unwrap().as_str(), "web1");
        assert_eq!(HostName::new(""), Err(HostNameError::Empty));
        assert_eq!(HostName::new("DECNET-MASTER"), Err(HostNameError::Reserved));
        assert!(matches!(
            HostName::new("a_b"),
            Err(HostNameError::BadCharacter { found: '_' })
        ));
        assert!(matches!(
            HostName::new("x@y"),
            Err(HostNameError::BadCharacter { found: '@' })
        ));
        assert!(matches!(
            HostName::new("-a"),
            Err(HostNameError::HyphenAtEdge { .. })
        ));
        assert!(matches!(
            HostName::new("a..b"),
            Err(HostNameError::BadLabelLength { .. })
        ));
        assert!(HostName::new(&"a".repeat(63)).is_ok());
        assert!(matches!(
            HostName::new(&"a".repeat(64)),
            Err(HostNameError::BadLabelLength { .. })
        ));
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(HostName::new(&long), Err(HostNameError::TooLong));
        assert!(HostName::new("../etc").is_err());
        assert!(HostName::new("a/b").is_err());
    }
}
