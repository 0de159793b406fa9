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
use crate::crl::RevocationList;
use crate::identity::{IdentityError, PeerIdentity};
use crate::role::{HostName, Role};
use crate::secure_fs::{self, KEY_MODE, KeyFileError, PUBLIC_MODE};

/// File name of the CA certificate in every bundle.
pub const CA_FILE: &str = "ca.crt";
/// File name of the CRL a worker keeps beside its bundle.
pub const CRL_FILE: &str = "crl.pem";
/// A committed bundle write whose files are not all in place yet.
const PENDING_DIR: &str = ".bundle-pending";
/// A bundle write in progress (not committed; removed when found).
const STAGING_PREFIX: &str = ".bundle-staging-";

/// Which daemon a bundle belongs to (decides file names and default dir).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleKind {
    /// The master's own client/server identity.
    Master,
    /// A worker's agent (also used by its log forwarder).
    Agent,
    /// A worker's updater.
    Updater,
    /// A metrics scraper's client identity (`monitor@<name>`).
    Monitor,
    /// An operator's client identity (`operator@<name>`), in a context of
    /// the `decnet` CLI on the operator's own machine.
    Operator,
}

impl BundleKind {
    /// Private key file name.
    pub fn key_file(self) -> &'static str {
        match self {
            BundleKind::Master | BundleKind::Agent => "worker.key",
            BundleKind::Updater => "updater.key",
            BundleKind::Monitor => "monitor.key",
            BundleKind::Operator => "operator.key",
        }
    }

    /// "an agent's", for messages.
    pub fn article(self) -> &'static str {
        match self {
            BundleKind::Master => "the master's",
            BundleKind::Agent => "an agent's",
            BundleKind::Updater => "an updater's",
            BundleKind::Monitor => "a monitor's",
            BundleKind::Operator => "an operator's",
        }
    }

    /// Certificate file name.
    pub fn cert_file(self) -> &'static str {
        match self {
            BundleKind::Master | BundleKind::Agent => "worker.crt",
            BundleKind::Updater => "updater.crt",
            BundleKind::Monitor => "monitor.crt",
            BundleKind::Operator => "operator.crt",
        }
    }

    /// Default bundle directory under a `~/.decnet` root.
    pub fn default_dir(self, decnet_home: &Path) -> PathBuf {
        match self {
            BundleKind::Master => decnet_home.join("ca").join("master"),
            BundleKind::Agent => decnet_home.join("agent"),
            BundleKind::Updater => decnet_home.join("updater"),
            BundleKind::Monitor => decnet_home.join("monitor"),
            BundleKind::Operator => decnet_home.join("operator"),
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
            BundleKind::Monitor => {
                "issue a monitor certificate on the master with `decnet ca issue-monitor NAME --out DIR`"
            }
            BundleKind::Operator => {
                "log in with `decnet login --master HOST[:8770] --token TOKEN` (an admin runs `decnet operator add NAME` for the token)"
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
    /// The directory holds another kind's bundle (an agent's given to the
    /// updater, say).
    #[error("{dir} holds {found} bundle ({file}), not {wanted} one: {hint}")]
    WrongKind {
        /// The bundle directory.
        dir: String,
        /// What it holds ("an agent's", …).
        found: &'static str,
        /// The certificate file found.
        file: &'static str,
        /// What was expected ("an updater's", …).
        wanted: &'static str,
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
    /// The key in the bundle does not belong to its certificate.
    #[error("{path} is not the private key of the bundle's certificate")]
    KeyMismatch {
        /// The key path.
        path: String,
    },
    /// A bundle (from a join or a renewal) failed its checks and was not used.
    #[error("refusing the new certificate: {reason}")]
    NotVerified {
        /// Why.
        reason: String,
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

    /// Check a bundle before it is written or used: the leaf names
    /// `expected`, chains to the bundle's CA and is valid now, and the key
    /// belongs to it.
    pub fn verify(&self, expected: &Role) -> Result<(), BundleError> {
        let refuse = |reason: String| BundleError::NotVerified { reason };
        if &self.identity.role != expected {
            return Err(refuse(format!(
                "the certificate names {}, expected {}",
                self.identity.cn,
                expected.cn()
            )));
        }
        let (certs, _) = crate::tls::leaf_and_key(self).map_err(|e| refuse(e.to_string()))?;
        let roots = crate::tls::ca_roots(&self.ca_pem).map_err(|e| refuse(e.to_string()))?;
        let parsed = rustls::server::ParsedCertificate::try_from(&certs[0])
            .map_err(|e| refuse(format!("the certificate does not parse: {e}")))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &certs[1..],
            rustls_pki_types::UnixTime::now(),
            crate::provider::crypto_provider()
                .signature_verification_algorithms
                .all,
        )
        .map_err(|e| refuse(format!("the certificate does not chain to the CA: {e}")))?;
        crate::tls::certified_key(self)
            .map_err(|_| refuse("the private key does not belong to the certificate".into()))?;
        Ok(())
    }

    /// Write the bundle into `dir` (created 0700; key 0600, certificates
    /// 0644) as **one unit**: the three files are staged in a private
    /// sub-directory, committed by one rename, then moved into place. A
    /// crash or an error at any point leaves either the old bundle or the
    /// new one — never a new certificate beside an old key: a committed
    /// but unfinished move is completed by the next [`load`](Self::load).
    /// A failure before the commit (full disk, read-only directory) leaves
    /// the old bundle untouched and nothing behind.
    pub fn write(&self, dir: &Path) -> Result<(), BundleError> {
        let io = |what: &'static str, path: &Path| {
            let path = path.display().to_string();
            move |source| BundleError::Io { what, path, source }
        };
        secure_fs::ensure_private_dir(dir).map_err(io("cannot create", dir))?;
        // One writer at a time (a command and the daemon both write the
        // master's bundle): two commits racing would mix their files.
        let _writer = lock_dir(dir).map_err(io("cannot lock", dir))?;
        // Finish an earlier committed write first: its files belong in place
        // before this one is staged.
        roll_forward(dir).map_err(io("cannot complete the pending bundle in", dir))?;
        let staging = dir.join(format!("{STAGING_PREFIX}{}", crate::random_hex(6)));
        let staged = (|| {
            fault::check(fault::Point::Stage)?;
            secure_fs::ensure_private_dir(&staging)?;
            secure_fs::write_atomic(&staging.join(CA_FILE), self.ca_pem.as_bytes(), PUBLIC_MODE)?;
            secure_fs::write_atomic(
                &staging.join(self.kind.cert_file()),
                self.cert_pem.as_bytes(),
                PUBLIC_MODE,
            )?;
            fault::check(fault::Point::StageKey)?;
            secure_fs::write_atomic(
                &staging.join(self.kind.key_file()),
                self.key_pem.as_bytes(),
                KEY_MODE,
            )?;
            fault::check(fault::Point::Commit)?;
            // The commit point: one rename makes the staged bundle the one to use.
            std::fs::rename(&staging, dir.join(PENDING_DIR))?;
            secure_fs::sync_dir(dir)
        })();
        if let Err(e) = staged {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(io("cannot write the bundle into", dir)(e));
        }
        roll_forward(dir).map_err(io("cannot move the new bundle into", dir))
    }

    /// Load a bundle from `dir`, refusing a missing file (with the command
    /// that creates it), a key readable by group/others, a key that does not
    /// belong to the certificate, or a leaf without a role. A committed but
    /// unfinished [`write`](Self::write) is completed first (or, on a
    /// read-only directory, read from where it was committed).
    pub fn load(dir: &Path, kind: BundleKind) -> Result<Self, BundleError> {
        // Best effort: a read-only dir keeps the committed files where they
        // are. Under the writers' lock, so as not to move a later write's
        // files half way.
        if dir.join(PENDING_DIR).exists() {
            let _lock = lock_dir(dir);
            let _ = roll_forward(dir);
        }
        // Read while no writer moves files: a writer finishing its commit
        // moved a file from the pending directory into place between the
        // choice of where to read it and the read ("missing ca.crt" though
        // every write succeeded). Best effort, as above.
        let _reading = lock_dir_shared(dir);
        let pending = dir.join(PENDING_DIR);
        let pick = |name: &str| {
            let p = pending.join(name);
            if p.exists() { p } else { dir.join(name) }
        };
        let paths = [pick(CA_FILE), pick(kind.cert_file()), pick(kind.key_file())];
        if !paths[1].exists()
            && let Some((found, file)) = [
                (BundleKind::Agent, "an agent's (or the master's)"),
                (BundleKind::Updater, "an updater's"),
                (BundleKind::Monitor, "a monitor's"),
                (BundleKind::Operator, "an operator's"),
            ]
            .into_iter()
            .filter(|(k, _)| k.cert_file() != kind.cert_file())
            .map(|(k, what)| (what, k.cert_file()))
            .find(|(_, file)| pick(file).exists())
        {
            return Err(BundleError::WrongKind {
                dir: dir.display().to_string(),
                found,
                file,
                wanted: kind.article(),
                hint: kind.setup_hint(),
            });
        }
        for p in &paths {
            if !p.exists() {
                return Err(BundleError::Missing {
                    path: dir
                        .join(p.file_name().unwrap_or_default())
                        .display()
                        .to_string(),
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
        let bundle = Bundle {
            kind,
            cert_pem,
            key_pem,
            ca_pem,
            identity,
        };
        crate::tls::certified_key(&bundle).map_err(|_| BundleError::KeyMismatch {
            path: paths[2].display().to_string(),
        })?;
        Ok(bundle)
    }

    /// The fingerprint of the certificate the bundle in `dir` holds (the
    /// one [`load`](Self::load) would take), from that one file: a daemon
    /// watching for a rotated certificate looks every second, and a whole
    /// load parses and checks the private key each time.
    pub fn certificate_fingerprint(
        dir: &Path,
        kind: BundleKind,
    ) -> Option<crate::fingerprint::Fingerprint> {
        // As in `load`: no writer moves the file between the choice and the read.
        let _reading = lock_dir_shared(dir);
        let pending = dir.join(PENDING_DIR).join(kind.cert_file());
        let path = if pending.exists() {
            pending
        } else {
            dir.join(kind.cert_file())
        };
        let pem = std::fs::read(path).ok()?;
        let der = CertificateDer::from_pem_slice(&pem).ok()?;
        Some(crate::fingerprint::Fingerprint::of_der(&der))
    }

    /// The CRL stored beside the bundle in `dir`, if there is one and it is
    /// signed by this bundle's CA (an unusable file is reported and ignored).
    pub fn load_crl(&self, dir: &Path) -> Option<RevocationList> {
        let path = dir.join(CRL_FILE);
        let pem = std::fs::read_to_string(&path).ok()?;
        match RevocationList::verify_pem(&pem, &self.ca_pem) {
            Ok(crl) => Some(crl),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring the stored revocation list");
                None
            }
        }
    }

    /// Store `crl` beside the bundle in `dir` (atomically).
    pub fn save_crl(dir: &Path, crl: &RevocationList) -> Result<(), BundleError> {
        let path = dir.join(CRL_FILE);
        secure_fs::write_atomic(&path, crl.to_pem().as_bytes(), PUBLIC_MODE).map_err(|source| {
            BundleError::Io {
                what: "cannot write",
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// Whether the leaf is expired at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.identity.not_after <= now
    }
}

/// How old an uncommitted staging directory must be before a load or a
/// write removes it: younger ones may belong to a write in progress in
/// another process (a daemon loads the bundle a command is writing).
const STALE_STAGING: std::time::Duration = std::time::Duration::from_secs(600);

/// An exclusive lock on the bundle directory itself (`flock` on its
/// descriptor), held until the returned handle is dropped: writes of one
/// bundle, and completing one, take turns across threads and processes.
fn lock_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let handle = std::fs::File::open(dir)?;
    handle.lock()?;
    Ok(handle)
}

/// A shared lock on the bundle directory: loads hold it while they read,
/// so no writer moves a file under them, and never wait on each other.
fn lock_dir_shared(dir: &Path) -> std::io::Result<std::fs::File> {
    let handle = std::fs::File::open(dir)?;
    handle.lock_shared()?;
    Ok(handle)
}

/// Complete a committed bundle write in `dir`: move each file of the
/// pending directory into place, then remove it; drop stale uncommitted
/// staging directories. Idempotent, so a crash at any point is finished by
/// the next call — and safe to run in two processes at once (a file or the
/// pending directory another one already moved is not an error).
fn roll_forward(dir: &Path) -> std::io::Result<()> {
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    };
    let pending = dir.join(PENDING_DIR);
    if pending.is_dir() {
        let mut names: Vec<_> = match std::fs::read_dir(&pending) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .filter(|n| !n.to_string_lossy().starts_with('.'))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        // Any order is safe: until the pending directory is gone, `load`
        // reads every file it still holds from there.
        names.sort();
        for (i, name) in names.iter().enumerate() {
            gone(std::fs::rename(pending.join(name), dir.join(name)))?;
            if i == 0 {
                fault::check(fault::Point::MidSwap)?;
            }
        }
        secure_fs::sync_dir(dir)?;
        gone(std::fs::remove_dir_all(&pending))?;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_STAGING);
            if stale && e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// Failure injection for the bundle write (a test seam): the variable
/// `DECNET_BUNDLE_FAULT` names a point and what happens there —
/// `stage=erofs`, `stage-key=enospc` fail with that error;
/// `commit=crash`, `mid-swap=crash` abort the process there.
mod fault {
    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(super) enum Point {
        Stage,
        StageKey,
        Commit,
        MidSwap,
    }

    impl Point {
        fn name(self) -> &'static str {
            match self {
                Point::Stage => "stage",
                Point::StageKey => "stage-key",
                Point::Commit => "commit",
                Point::MidSwap => "mid-swap",
            }
        }
    }

    pub(super) fn check(point: Point) -> std::io::Result<()> {
        let Ok(spec) = std::env::var("DECNET_BUNDLE_FAULT") else {
            return Ok(());
        };
        let Some((at, what)) = spec.split_once('=') else {
            return Ok(());
        };
        if at != point.name() {
            return Ok(());
        }
        match what {
            "crash" => {
                tracing::error!(point = at, "injected crash during a bundle write");
                std::process::abort()
            }
            "enospc" => Err(std::io::Error::from_raw_os_error(28)),
            "erofs" => Err(std::io::Error::from_raw_os_error(30)),
            _ => Ok(()),
        }
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

/// The file in a bundle directory naming the master's control API the
/// bundle was joined through (or enrolled for) (`host:port`, one line): `serve` heartbeats and
/// renews there when no `--master` is given, so a packaged worker works once
/// joined, without editing its settings.
pub const MASTER_FILE: &str = "master";

/// Record `master` (`host:port`) in `dir` (atomically, like the bundle).
pub fn record_master(dir: &Path, master: &str) -> std::io::Result<()> {
    secure_fs::write_atomic(
        &dir.join(MASTER_FILE),
        format!("{master}\n").as_bytes(),
        PUBLIC_MODE,
    )
}

/// The master recorded at join (or enrolment) in `dir`, if any (an empty or unreadable file
/// counts as none).
pub fn recorded_master(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(MASTER_FILE)).ok()?;
    let master = text.trim();
    (!master.is_empty()).then(|| master.to_string())
}
