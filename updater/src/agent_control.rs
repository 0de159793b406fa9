//! Starting and stopping the agent: spawned by the updater (pidfile, process
//! discovery when the pidfile is missing or stale) or, when the agent runs as
//! a systemd unit, through `systemctl` (a spawned child would inherit the
//! updater's sandbox).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use decnet_proc::{ProcessHandle, Signal, is_same_process as alive, start_time};

/// How the agent is controlled.
#[derive(Clone, Debug)]
pub enum AgentControl {
    /// The updater spawns `<install>/current/bin/decnet-agent`.
    Spawn(SpawnControl),
    /// The agent is a systemd unit.
    Systemd {
        /// The unit name, e.g. `decnet-agent.service`.
        unit: String,
    },
}

/// Settings of the spawn mode.
#[derive(Clone, Debug)]
pub struct SpawnControl {
    /// The install dir (`current`, `agent.pid`, `agent.spawn.log`).
    pub install_dir: PathBuf,
    /// Arguments after `decnet-agent` (e.g. `serve --port 8765 --bundle-dir …`).
    pub agent_args: Vec<String>,
    /// SIGTERM → SIGKILL grace.
    pub grace: Duration,
    /// The agent's listening socket, held by the updater and handed to each
    /// agent it starts, so the port is never free between two agents.
    pub held: HeldAgentSocket,
}

/// The agent's port, held by the updater for the agents it spawns: taken
/// over from a predecessor (socket activation, or the updater's own re-exec)
/// or bound at the first start that finds it free. Without it (the port was
/// taken when the updater looked: an agent of an older updater still
/// running), agents bind it themselves until the next start.
#[derive(Clone, Debug)]
pub struct HeldAgentSocket {
    addr: std::net::SocketAddr,
    fd: std::sync::Arc<std::sync::Mutex<Option<std::os::fd::OwnedFd>>>,
}

impl HeldAgentSocket {
    /// The agent's `addr`, held from the first [`hold_now`](Self::hold_now)
    /// or agent start that finds it free (or handed in).
    pub fn new(addr: std::net::SocketAddr) -> HeldAgentSocket {
        HeldAgentSocket {
            addr,
            fd: Default::default(),
        }
    }

    /// Hold the port now if possible: an inherited socket, or a free port.
    pub fn hold_now(&self) -> bool {
        self.get().is_some()
    }

    /// The held socket (close-on-exec); bound now when it is not held yet
    /// and the port is free.
    fn get(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        let mut fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        if fd.is_none() {
            match decnet_server::activation::listener("agent", self.addr) {
                Ok((l, _)) => {
                    tracing::info!(addr = %self.addr, "holding the agent's port across its restarts");
                    *fd = Some(std::os::fd::OwnedFd::from(l));
                }
                Err(e) => tracing::warn!(
                    addr = %self.addr,
                    error = %e,
                    "cannot hold the agent's port yet; the agent binds it itself this time"
                ),
            }
        }
        fd.as_ref().map(|f| f.as_raw_fd())
    }

    /// Run `spawn` (which starts a child) with the held socket inheritable
    /// for that child only: no other child of the updater (a release's
    /// `--version` preflight, `systemctl`) ever gets it, and no two spawns
    /// (or a re-exec) overlap. `spawn` gets the descriptor (`None`: not held).
    pub fn spawn_with<T>(&self, spawn: impl FnOnce(Option<i32>) -> T) -> T {
        let _one_at_a_time = lock_spawns();
        let fd = self.get();
        let held = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(owned) = held.as_ref() {
            let _ = rustix::io::fcntl_setfd(owned, rustix::io::FdFlags::empty());
        }
        let out = spawn(fd);
        if let Some(owned) = held.as_ref() {
            let _ = rustix::io::fcntl_setfd(owned, rustix::io::FdFlags::CLOEXEC);
        }
        out
    }

    /// The held descriptor made inheritable, for the updater's re-exec
    /// (called under [`lock_spawns`], right before the exec).
    pub fn inheritable_for_exec(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        let f = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let owned = f.as_ref()?;
        rustix::io::fcntl_setfd(owned, rustix::io::FdFlags::empty()).ok()?;
        Some(owned.as_raw_fd())
    }
}

/// Serializes the updater's children that may inherit a held socket (an
/// agent's spawn) and its own re-exec: held, no other spawn can overlap.
pub fn lock_spawns() -> std::sync::MutexGuard<'static, ()> {
    static SPAWNS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SPAWNS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A control failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ControlError(pub String);

impl SpawnControl {
    fn pidfile(&self) -> PathBuf {
        self.install_dir.join("agent.pid")
    }

    /// The spawn log (the agent's stdout and stderr).
    pub fn spawn_log(&self) -> PathBuf {
        self.install_dir.join("agent.spawn.log")
    }

    /// Where the spawn log stood when the agent was last started (so a
    /// failure report shows this start's output only).
    fn spawn_offset(&self) -> PathBuf {
        self.install_dir.join("agent.spawn.offset")
    }

    /// Keep the spawn log bounded: past [`SPAWN_LOG_MAX`] it moves to
    /// `agent.spawn.log.1` (replacing the older one) and starts afresh.
    fn rotate_spawn_log(&self) {
        let log = self.spawn_log();
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > SPAWN_LOG_MAX) {
            let _ = std::fs::rename(&log, self.install_dir.join("agent.spawn.log.1"));
        }
    }

    fn read_pidfile(&self) -> Option<(u32, u64)> {
        let text = std::fs::read_to_string(self.pidfile()).ok()?;
        let mut it = text.split_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }

    /// Agent processes running from this install tree (pidfile lost).
    fn discover(&self) -> Vec<(u32, u64)> {
        let releases = self.install_dir.join("releases");
        let releases = std::fs::canonicalize(&releases).unwrap_or(releases);
        let mut found = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return found;
        };
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
                continue;
            };
            let exe = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
            if exe.starts_with(&releases)
                && exe.file_name().is_some_and(|n| n == "decnet-agent")
                && let Some(t) = start_time(pid)
            {
                found.push((pid, t));
            }
        }
        found
    }

    /// Whether the recorded agent is alive.
    pub fn running_pid(&self) -> Option<u32> {
        self.read_pidfile()
            .filter(|(p, t)| alive(*p, *t))
            .map(|(p, _)| p)
    }

    async fn stop(&self) {
        // Only processes verified through a pidfd are signalled: the
        // recorded one (pid + start time), or the ones discovered running
        // from this install tree.
        let mut targets: Vec<ProcessHandle> = self
            .read_pidfile()
            .and_then(|(p, t)| ProcessHandle::open(p, t))
            .into_iter()
            .collect();
        if targets.is_empty() {
            targets = self
                .discover()
                .into_iter()
                .filter_map(|(p, t)| ProcessHandle::open(p, t))
                .collect();
        }
        for h in &targets {
            let _ = h.signal(Signal::TERM);
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        while targets.iter().any(|h| !h.has_exited()) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for h in &targets {
            if !h.has_exited() {
                tracing::warn!(pid = h.pid(), "agent ignored SIGTERM; killing it");
                let _ = h.signal(Signal::KILL);
            }
        }
        while targets.iter().any(|h| !h.has_exited()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // An agent started before this updater re-executed itself is its
        // child, unknown to this image's runtime: reaped here, or it would
        // linger as a zombie.
        for h in &targets {
            h.reap_if_child();
        }
        let _ = std::fs::remove_file(self.pidfile());
    }

    async fn start(&self) -> Result<u32, ControlError> {
        let bin = self.install_dir.join("current/bin/decnet-agent");
        self.rotate_spawn_log();
        let offset = std::fs::metadata(self.spawn_log())
            .map(|m| m.len())
            .unwrap_or(0);
        let _ = std::fs::write(self.spawn_offset(), offset.to_string());
        // 0600: the agent's output may hold what only its operator should read.
        let log = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(self.spawn_log())
        }
        .map_err(|e| ControlError(format!("cannot open {}: {e}", self.spawn_log().display())))?;
        {
            // A log written by an older updater may have been left 0644.
            use std::os::unix::fs::PermissionsExt;
            let _ = log.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        let log2 = log.try_clone().map_err(|e| ControlError(e.to_string()))?;
        let child = self
            .held
            .spawn_with(|fd| {
                let mut cmd = tokio::process::Command::new(&bin);
                // Only what this updater hands this agent, never what it
                // was handed itself.
                for k in [
                    "LISTEN_PID",
                    "LISTEN_FDS",
                    "LISTEN_FDNAMES",
                    decnet_server::activation::HELD_SOCKETS_ENV,
                    decnet_server::activation::HELD_FOR_ENV,
                ] {
                    cmd.env_remove(k);
                }
                if let Some(fd) = fd {
                    cmd.envs(decnet_server::activation::held_env(
                        &[("agent", fd)],
                        std::process::id(),
                    ));
                }
                cmd.args(&self.agent_args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(log))
                    .stderr(Stdio::from(log2))
                    .process_group(0)
                    .kill_on_drop(false)
                    .spawn()
            })
            .map_err(|e| ControlError(format!("cannot start {}: {e}", bin.display())))?;
        let pid = child
            .id()
            .ok_or_else(|| ControlError("agent exited at once".into()))?;
        // A start time the kernel no longer reports means it already ended;
        // `0` is recorded then, and never matches a process later.
        let t = start_time(pid).unwrap_or(0);
        decnet_pki::secure_fs::write_atomic(
            &self.pidfile(),
            format!("{pid} {t}\n").as_bytes(),
            0o644,
        )
        .map_err(|e| ControlError(format!("cannot write {}: {e}", self.pidfile().display())))?;
        // The child is reaped by tokio in the background once it exits.
        drop(child);
        Ok(pid)
    }
}

async fn systemctl(verb: &str, unit: &str) -> Result<(), ControlError> {
    let out = tokio::process::Command::new("systemctl")
        .args([verb, unit])
        .output()
        .await
        .map_err(|e| ControlError(format!("cannot run systemctl: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ControlError(format!(
            "systemctl {verb} {unit} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl AgentControl {
    /// Stop the agent (no error when it is not running).
    pub async fn stop(&self) -> Result<(), ControlError> {
        match self {
            AgentControl::Spawn(s) => {
                s.stop().await;
                Ok(())
            }
            AgentControl::Systemd { unit } => systemctl("stop", unit).await,
        }
    }

    /// Start the agent from `current`.
    pub async fn start(&self) -> Result<(), ControlError> {
        match self {
            AgentControl::Spawn(s) => s.start().await.map(|_| ()),
            AgentControl::Systemd { unit } => {
                // A deliberate start: clear an earlier failure and systemd's
                // start-rate limit first (a quick series of updates and
                // reverts exceeds the default 5 starts in 10 s, and systemd
                // would then refuse, leaving the agent down). `restart`, not
                // `start`: a connection to the agent's socket unit may have
                // started an agent since the stop, from the release before
                // the swap; restart replaces it with `current`'s.
                let _ = systemctl("reset-failed", unit).await;
                systemctl("restart", unit).await
            }
        }
    }

    /// Whether the agent has certainly stopped: spawn mode, its process is
    /// gone; systemd, its unit is `failed` or `inactive` (not while systemd
    /// waits to restart it: `activating`). The probe stops waiting then.
    pub async fn has_stopped(&self) -> bool {
        match self {
            AgentControl::Spawn(s) => s.running_pid().is_none(),
            AgentControl::Systemd { unit } => {
                let out = tokio::process::Command::new("systemctl")
                    .args(["show", "-p", "ActiveState", unit])
                    .output()
                    .await;
                out.ok().is_some_and(|o| {
                    let state = String::from_utf8_lossy(&o.stdout);
                    matches!(
                        state.trim().strip_prefix("ActiveState="),
                        Some("failed" | "inactive")
                    )
                })
            }
        }
    }

    /// Whether the agent is (believed to be) running.
    pub async fn is_running(&self) -> bool {
        match self {
            AgentControl::Spawn(s) => s.running_pid().is_some(),
            AgentControl::Systemd { unit } => systemctl("is-active", unit).await.is_ok(),
        }
    }

    /// The last lines the agent wrote (spawn mode), for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        match self {
            AgentControl::Spawn(s) => {
                let from = std::fs::read_to_string(s.spawn_offset())
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                tail(&s.spawn_log(), from, lines)
            }
            AgentControl::Systemd { unit } => format!("see `journalctl -u {unit}`"),
        }
    }

    /// The running agent's pid (spawn mode).
    pub fn pid(&self) -> Option<u32> {
        match self {
            AgentControl::Spawn(s) => s.running_pid(),
            AgentControl::Systemd { .. } => None,
        }
    }
}

/// Largest spawn log before it is rotated.
pub const SPAWN_LOG_MAX: u64 = 1 << 20;

/// The last `lines` lines of `path` after byte `from`, without terminal
/// escape sequences (a report is read in a browser or a JSON viewer).
fn tail(path: &Path, from: u64, lines: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let text = strip_ansi(&String::from_utf8_lossy(&bytes[from..]));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `s` without ANSI escape sequences (`ESC [ … final-byte`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether this process runs under systemd (`INVOCATION_ID` is set by it).
pub fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn the_tail_starts_at_this_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "old 1\nold 2\nnew 1\nnew 2\n").unwrap();
        assert_eq!(tail(&p, 12, 10), "new 1\nnew 2");
        assert_eq!(tail(&p, 0, 1), "new 2");
        assert_eq!(tail(&p, 999, 5), "");
    }
}
