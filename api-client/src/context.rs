//! Contexts: where an operator's `decnet` keeps its identity for one fleet
//! (`$XDG_CONFIG_HOME/decnet/contexts/<name>/`: `operator.key` 0600 — made
//! on this machine by `decnet login`, never sent anywhere — `operator.crt`,
//! `ca.crt` (the CA pinned at login), `master` (the control API) and
//! `fleet-api` (where the master said its fleet API listens)), and which
//! one is in use (`current`, or `--context` / `DECNET_CONTEXT`; the name
//! `local` means none: the CLI works on the master host's own files).

use std::path::{Path, PathBuf};

use decnet_pki::BundleKind;

/// A context that cannot be named, found or removed: the operator's
/// mistake or setup, said as such (the CLI exits 2, as for any usage
/// error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ContextError(pub String);

/// The context name that means "no context: work locally".
pub const LOCAL: &str = "local";

/// The root of the CLI's configuration: `$XDG_CONFIG_HOME/decnet`, else
/// `$HOME/.config/decnet`.
pub fn config_root() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"))
        .join("decnet")
}

/// The directory of context `name`.
pub fn dir_of(name: &str) -> PathBuf {
    config_root().join("contexts").join(name)
}

/// Whether `name` can name a context (a host-name-like word, not `local`).
pub fn valid_name(name: &str) -> bool {
    name != LOCAL && decnet_pki::HostName::new(name).is_ok()
}

/// The context in use: `flag` (`--context`, `DECNET_CONTEXT`), else the
/// one `decnet context use` chose; `None`: work locally.
pub fn selected(flag: Option<&str>) -> Result<Option<Context>, ContextError> {
    let name = match flag {
        Some(n) => n.to_string(),
        None => match std::fs::read_to_string(config_root().join("current")) {
            Ok(n) if !n.trim().is_empty() => n.trim().to_string(),
            _ => return Ok(None),
        },
    };
    if name == LOCAL {
        return Ok(None);
    }
    Context::load(&name).map(Some)
}

/// A saved context.
#[derive(Clone, Debug)]
pub struct Context {
    /// Its name.
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// The fleet API (`HOST:PORT`).
    pub fleet_api: String,
}

impl Context {
    /// Load context `name`.
    pub fn load(name: &str) -> Result<Context, ContextError> {
        if !valid_name(name) {
            return Err(ContextError(format!(
                "{name:?} is not a context name (see `decnet context list`)"
            )));
        }
        let dir = dir_of(name);
        if !dir.join(BundleKind::Operator.cert_file()).exists() {
            return Err(ContextError(format!(
                "no context named {name} (see `decnet context list`; `decnet login` makes one)"
            )));
        }
        let fleet_api =
            std::fs::read_to_string(dir.join(decnet_swarm_client::join::FLEET_API_FILE))
                .map(|s| s.trim().to_string())
                .map_err(|_| {
                    ContextError(format!(
                        "context {name} does not say where the fleet API listens; log in again"
                    ))
                })?;
        Ok(Context {
            name: name.to_string(),
            dir,
            fleet_api,
        })
    }

    /// Every saved context's name.
    pub fn names() -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(config_root().join("contexts"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(BundleKind::Operator.cert_file()).exists())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        out.sort();
        out
    }

    /// The context `decnet context use` chose, if any.
    pub fn current_name() -> Option<String> {
        std::fs::read_to_string(config_root().join("current"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Make `name` the context in use (`local`: none).
    pub fn use_name(name: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(config_root())?;
        decnet_pki::secure_fs::write_atomic(
            &config_root().join("current"),
            format!("{name}\n").as_bytes(),
            0o600,
        )
    }

    /// The control API it logged in through.
    pub fn master(&self) -> Option<String> {
        decnet_swarm_client::join::recorded_master(&self.dir)
    }
}

/// Remove context `name` (its key with it).
pub fn remove(name: &str) -> Result<(), ContextError> {
    let dir = dir_of(name);
    if !valid_name(name) || !dir.exists() {
        return Err(ContextError(format!("no context named {name}")));
    }
    std::fs::remove_dir_all(&dir)
        .map_err(|e| ContextError(format!("cannot remove {}: {e}", dir.display())))?;
    if Context::current_name().as_deref() == Some(name) {
        let _ = std::fs::remove_file(config_root().join("current"));
    }
    Ok(())
}

/// A fresh directory for a login in progress, beside the contexts.
pub fn staging_dir() -> std::io::Result<PathBuf> {
    let root = config_root().join("contexts");
    std::fs::create_dir_all(&root)?;
    set_private(&config_root())?;
    let dir = root.join(format!(".login-{}", decnet_pki::random_hex(4)));
    std::fs::create_dir(&dir)?;
    set_private(&dir)?;
    Ok(dir)
}

fn set_private(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
}
