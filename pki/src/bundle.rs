//! Key/cert/CA bundles on disk, with the exact names operators know:
//!
//! | kind | dir | files |
//! |---|---|---|
//! | master | `~/.decnet/ca/master/` | `worker.key`, `worker.crt`, `ca.crt` |
//! | agent | `~/.decnet/agent/` | `worker.key`, `worker.crt`, `ca.crt` |
//! | updater | `~/.decnet/updater/` | `updater.key`, `updater.crt`, `ca.crt` |
//!
//! The master keeps issued worker bundles under `~/.decnet/ca/workers/<host>/`
//! (agent files) and `…/<host>/updater/` (updater files); see [`CaLayout`].

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::ca::IssuedLeaf;
use crate::identity::{IdentityError, PeerIdentity};
use crate::role::HostName;
use crate::secure_fs::{self, KEY_MODE, KeyFileError, PUBLIC_MODE};

/// File name of the CA certificate in every bundle.
pub const CA_FILE: &str = "ca.crt";

/// Which daemon a bundle belongs to (decides file names and default dir).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleKind {
    /// The master's own client/server identity.
    Master,
    /// A worker's agent (also used by its log forwarder).
    Agent,
    /// A worker's updater.
    Updater,
}

impl BundleKind {
    /// Private key file name.
    pub fn key_file(self) -> &'static str {
        match self {
            BundleKind::Master | BundleKind::Agent => "worker.key",
            BundleKind::Updater => "updater.key",
        }
    }

    /// Certificate file name.
    pub fn cert_file(self) -> &'static str {
        match self {
            BundleKind::Master | BundleKind::Agent => "worker.crt",
            BundleKind::Updater => "updater.crt",
        }
    }

    /// Default bundle directory under a `~/.decnet` root.
    pub fn default_dir(self, decnet_home: &Path) -> PathBuf {
        match self {
            BundleKind::Master => decnet_home.join("ca").join("master"),
            BundleKind::Agent => decnet_home.join("agent"),
            BundleKind::Updater => decnet_home.join("updater"),
        }
    }

    /// What the operator runs to create a missing bundle.
    pub fn setup_hint(self) -> &'static str {
        match self {
            BundleKind::Master => "run `decnet ca init` on the master",
            BundleKind::Agent => {
                "enroll this worker on the master with `decnet swarm enroll --host NAME --address ADDR` and copy the issued bundle (~/.decnet/ca/workers/NAME/) here"
            }
            BundleKind::Updater => {
                "enroll this worker on the master with `decnet swarm enroll --host NAME --address ADDR --updater` and copy the issued updater bundle (~/.decnet/ca/workers/NAME/updater/) here"
            }
        }
    }
}

/// The default `~/.decnet` root (`$HOME/.decnet`).
pub fn default_decnet_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".decnet")
}

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file of the bundle is missing.
    #[error("missing {path}: {hint}")]
    Missing {
        /// The missing file.
        path: String,
        /// What to run.
        hint: &'static str,
    },
    /// The key is unusable.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// A PEM file does not hold what it should.
    #[error("{path} does not hold a valid PEM {what}")]
    BadPem {
        /// The path.
        path: String,
        /// "certificate" or "private key".
        what: &'static str,
    },
    /// The leaf names no role.
    #[error("{path}: {source}")]
    Identity {
        /// The certificate path.
        path: String,
        /// Why.
        source: IdentityError,
    },
}

/// A loaded or freshly issued bundle: the leaf, its key and the CA.
#[derive(Clone)]
pub struct Bundle {
    /// Which daemon it belongs to.
    pub kind: BundleKind,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The leaf's private key, PEM (secret).
    pub key_pem: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The leaf's own identity (CN, role, fingerprint, expiry).
    pub identity: PeerIdentity,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("kind", &self.kind)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Build a bundle from an issued leaf and the CA certificate.
    pub fn from_issued(
        kind: BundleKind,
        leaf: &IssuedLeaf,
        ca_pem: &str,
    ) -> Result<Self, IdentityError> {
        Ok(Bundle {
            kind,
            identity: PeerIdentity::from_pem(&leaf.cert_pem)?,
            cert_pem: leaf.cert_pem.clone(),
            key_pem: leaf.key_pem.clone(),
            ca_pem: ca_pem.to_string(),
        })
    }

    /// Write the bundle into `dir` (created 0700): key 0600, certs 0644,
    /// each file atomically.
    pub fn write(&self, dir: &Path) -> Result<(), BundleError> {
        secure_fs::ensure_private_dir(dir).map_err(|source| BundleError::Io {
            what: "cannot create",
            path: dir.display().to_string(),
            source,
        })?;
        let put = |name: &str, data: &str, mode| {
            let path = dir.join(name);
            secure_fs::write_atomic(&path, data.as_bytes(), mode).map_err(|source| {
                BundleError::Io {
                    what: "cannot write",
                    path: path.display().to_string(),
                    source,
                }
            })
        };
        put(CA_FILE, &self.ca_pem, PUBLIC_MODE)?;
        put(self.kind.cert_file(), &self.cert_pem, PUBLIC_MODE)?;
        put(self.kind.key_file(), &self.key_pem, KEY_MODE)?;
        Ok(())
    }

    /// Load a bundle from `dir`, refusing a missing file (with the command
    /// that creates it), a key readable by group/others, or a leaf without a role.
    pub fn load(dir: &Path, kind: BundleKind) -> Result<Self, BundleError> {
        let paths = [
            dir.join(CA_FILE),
            dir.join(kind.cert_file()),
            dir.join(kind.key_file()),
        ];
        for p in &paths {
            if !p.exists() {
                return Err(BundleError::Missing {
                    path: p.display().to_string(),
                    hint: kind.setup_hint(),
                });
            }
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| BundleError::Io {
                what: "cannot read",
                path: p.display().to_string(),
                source,
            })
        };
        let ca_pem = read(&paths[0])?;
        let cert_pem = read(&paths[1])?;
        let key_pem = secure_fs::read_private_key(&paths[2])?;
        let bad = |p: &Path, what| BundleError::BadPem {
            path: p.display().to_string(),
            what,
        };
        CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|_| bad(&paths[0], "certificate"))?;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| bad(&paths[2], "private key"))?;
        let identity = PeerIdentity::from_pem(&cert_pem).map_err(|source| match source {
            IdentityError::Parse => bad(&paths[1], "certificate"),
            source => BundleError::Identity {
                path: paths[1].display().to_string(),
                source,
            },
        })?;
        Ok(Bundle {
            kind,
            cert_pem,
            key_pem,
            ca_pem,
            identity,
        })
    }

    /// Whether the leaf is expired at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.identity.not_after <= now
    }
}

/// Where the master keeps its CA and the bundles it issued.
///
/// ```text
/// <root>/ca.key  ca.crt
/// <root>/master/{worker.key, worker.crt, ca.crt}
/// <root>/workers/<host>/{worker.key, worker.crt, ca.crt}
/// <root>/workers/<host>/updater/{updater.key, updater.crt, ca.crt}
/// ```
#[derive(Clone, Debug)]
pub struct CaLayout {
    root: PathBuf,
}

impl CaLayout {
    /// A layout rooted at `root` (default `~/.decnet/ca`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CaLayout { root: root.into() }
    }

    /// The CA directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The CA private key.
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join(CA_FILE)
    }

    /// The master's own bundle.
    pub fn master_dir(&self) -> PathBuf {
        self.root.join("master")
    }

    /// All issued worker bundles.
    pub fn workers_dir(&self) -> PathBuf {
        self.root.join("workers")
    }

    /// The agent bundle issued to `host`.
    pub fn worker_dir(&self, host: &HostName) -> PathBuf {
        self.workers_dir().join(host.as_str())
    }

    /// The updater bundle issued to `host`.
    pub fn worker_updater_dir(&self, host: &HostName) -> PathBuf {
        self.worker_dir(host).join("updater")
    }
}
