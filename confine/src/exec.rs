//! The last step before a decky's program runs: [`exec_confined`].
//!
//! It runs in a process of its own that is still privileged (the agent's
//! helper, re-executed as `decnet-agent exec-decky`), single-threaded so the
//! per-thread id syscalls change the whole process, and in this order:
//!
//! 1. join the decky's cgroup (while still allowed to write it);
//! 2. start a session of its own (no terminal, no shared process group);
//! 3. lower the rlimits, hard limits included;
//! 4. create or reuse its working directory `0700` under a root-owned
//!    parent, hand it to the decky's ids and enter it (so the decky reaches
//!    it even when the parent's path is closed to it);
//! 5. drop every supplementary group, then the gid, then the uid, and check
//!    that root cannot be regained;
//! 6. with [`DeckyNetwork::Own`], enter a user and network namespace of its
//!    own, loopback only ([`crate::netns`]);
//! 7. set `no_new_privs`, so no setuid binary or file capability can raise
//!    it again;
//! 8. place the listening sockets handed in at 3, 4, … and close every
//!    other descriptor from 3 up ([`crate::handoff`]);
//! 9. execute the program with only the environment the config names (and
//!    the `LISTEN_*` variables of its sockets).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::limits::ResourceLimits;
use crate::netns::DeckyNetwork;

/// The ids a decky runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecIdentity {
    /// User id.
    pub uid: u32,
    /// Group id (the only group: supplementary groups are dropped).
    pub gid: u32,
}

/// Everything the confined start of one decky needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfinedExec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The whole environment of the program.
    pub env: BTreeMap<String, String>,
    /// Ids to switch to; `None` keeps the current ones (development only,
    /// for an agent that cannot switch ids).
    pub identity: Option<ExecIdentity>,
    /// Root-owned directory holding the decky's working directory.
    pub workdir_parent: PathBuf,
    /// Name of the working directory inside `workdir_parent`.
    pub workdir_name: String,
    /// Resource limits.
    pub limits: ResourceLimits,
    /// Bound memory with `RLIMIT_AS` (no cgroup does it).
    pub memory_by_rlimit: bool,
    /// The decky's cgroup to join, when cgroup v2 is in use.
    pub cgroup: Option<PathBuf>,
    /// Where its network lives.
    #[serde(default)]
    pub network: DeckyNetwork,
    /// The names of the listening sockets handed in with the spec (in
    /// order; `LISTEN_FDNAMES`).
    #[serde(default)]
    pub listen_names: Vec<String>,
    /// Bytes of scratch space of its own (`/tmp`, `/var/tmp`, `/dev/shm`
    /// each, [`crate::scratch`]); `None` leaves it the host's. Only with a
    /// network of its own (the same user namespace holds the mounts).
    #[serde(default)]
    pub scratch_bytes: Option<u64>,
    /// The destinations it may connect to ([`crate::egress`]); only with
    /// a network of its own. Their listeners go to the shepherd, sent on
    /// the report channel before the program starts.
    #[serde(default)]
    pub egress: Vec<crate::egress::EgressRule>,
    /// Processes of its own ([`crate::pidns`]): a PID namespace with a
    /// fresh `/proc` (with `scratch_bytes`, where the host allows it).
    #[serde(default)]
    pub own_processes: bool,
}

/// What the confinement helper sends on its report channel, with the
/// egress listeners attached, right before it executes the program (a
/// failure is plain text, never starting so).
pub const EGRESS_HANDOVER: &[u8] = b"EGRESS\n";

/// Which step of the confined start failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {step}: {source}")]
pub struct ExecError {
    /// The step, in words.
    pub step: &'static str,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn at(step: &'static str) -> impl FnOnce(std::io::Error) -> ExecError {
    move |source| ExecError { step, source }
}

fn errno(step: &'static str) -> impl FnOnce(rustix::io::Errno) -> ExecError {
    move |e| ExecError {
        step,
        source: e.into(),
    }
}

fn invalid(step: &'static str, msg: &str) -> ExecError {
    ExecError {
        step,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.to_string()),
    }
}

/// The search path when the config names none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resolve `program` like a shell would: as given when it holds a `/`,
/// otherwise the first executable file of that name on `path`.
pub fn resolve_program(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| rustix::fs::access(p, rustix::fs::Access::EXEC_OK).is_ok() && p.is_file())
}

fn threads_of_self() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Create the decky's working directory `name` under `parent` (taking it
/// back from the decky first when `take_back`: it was handed over on an
/// earlier run), mode 0700, and open it. The
/// descriptor stays usable once the directory is handed to the decky,
/// which is how its shepherd measures what the decky stores without
/// `CAP_DAC_OVERRIDE`.
pub fn prepare_workdir(parent: &Path, name: &str, take_back: bool) -> Result<OwnedFd, ExecError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(invalid(
            "prepare the working directory",
            "bad directory name",
        ));
    }
    let dir_flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let parent = rustix::fs::open(parent, dir_flags, Mode::empty())
        .map_err(errno("open the working directory's parent"))?;
    match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(errno("create the working directory")(e)),
    }
    // Without CAP_DAC_OVERRIDE and CAP_FOWNER (the agent's unit keeps
    // CAP_CHOWN only) root may neither open a decky's 0700 directory (left
    // by an earlier run) nor set the mode of one it does not own: take it
    // first, by name and never through a link (the parent is the agent's),
    // then set its mode.
    if take_back {
        rustix::fs::chownat(
            &parent,
            name,
            Some(rustix::process::geteuid()),
            Some(rustix::process::getegid()),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(errno("take the working directory"))?;
    }
    let dir = rustix::fs::openat(&parent, name, dir_flags, Mode::empty())
        .map_err(errno("open the working directory"))?;
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o700))
        .map_err(errno("set the working directory's mode"))?;
    Ok(dir)
}

fn enter_workdir(spec: &ConfinedExec) -> Result<(), ExecError> {
    let dir = prepare_workdir(
        &spec.workdir_parent,
        &spec.workdir_name,
        spec.identity.is_some(),
    )?;
    // Entered while still ours: root without CAP_DAC_OVERRIDE could not
    // search it once the decky owns it.
    rustix::process::fchdir(&dir).map_err(errno("enter the working directory"))?;
    if let Some(id) = spec.identity {
        rustix::fs::fchown(
            &dir,
            Some(rustix::fs::Uid::from_raw(id.uid)),
            Some(rustix::fs::Gid::from_raw(id.gid)),
        )
        .map_err(errno("hand the working directory to the decky"))?;
    }
    Ok(())
}

/// Take the ids `id` for the calling thread only (Linux ids are per thread
/// at the system call; the C library's broadcast to every thread is not
/// used), supplementary groups first. For a process about to become `id`
/// (single-threaded); a thread that must only read as `id` uses
/// [`read_as_for_this_thread`].
pub fn take_ids_for_this_thread(id: ExecIdentity) -> std::io::Result<()> {
    use rustix::thread::{set_thread_gid, set_thread_groups, set_thread_uid};
    set_thread_groups(&[])?;
    set_thread_gid(rustix::process::Gid::from_raw(id.gid))?;
    set_thread_uid(rustix::process::Uid::from_raw(id.uid))?;
    Ok(())
}

/// Read (and change) files as `id` on the calling thread only, without
/// becoming `id` otherwise: no supplementary groups and filesystem ids `id`
/// ([`crate::raw::set_fs_ids`]; the kernel then drops the thread's file
/// capabilities, so its file access is exactly `id`'s, while it may still
/// kill the decky it watches). Its real and effective ids stay root's, so a process of `id` — the decky
/// whose files the thread reads — can neither signal it nor change its
/// process's limits (which a thread that took `id` with `setuid` would
/// allow). For the agent's and shepherds' reader threads.
pub fn read_as_for_this_thread(id: ExecIdentity) -> std::io::Result<()> {
    rustix::thread::set_thread_groups(&[])?;
    crate::raw::set_fs_ids(id.uid, id.gid)?;
    Ok(())
}

fn drop_ids(id: ExecIdentity) -> Result<(), ExecError> {
    let uid = rustix::process::Uid::from_raw(id.uid);
    let gid = rustix::process::Gid::from_raw(id.gid);
    take_ids_for_this_thread(id).map_err(at("switch to the decky's ids"))?;
    let (r, e) = (rustix::process::getuid(), rustix::process::geteuid());
    if r != uid || e != uid || rustix::process::getegid() != gid {
        return Err(invalid("switch ids", "the ids did not change"));
    }
    if id.uid != 0 && rustix::thread::set_thread_uid(rustix::process::Uid::ROOT).is_ok() {
        return Err(invalid("drop root", "root could be regained"));
    }
    Ok(())
}

/// Confine this process as `spec` says and execute the program with the
/// listening `sockets` handed in. Returns only on failure, saying which
/// step failed, with `channel` (the caller's close-on-exec report channel,
/// kept open through the hand-over). Must run single-threaded.
pub fn exec_confined(
    spec: &ConfinedExec,
    sockets: Vec<OwnedFd>,
    channel: &mut OwnedFd,
) -> ExecError {
    let (program, egress) = match prepare(spec) {
        Ok(p) => p,
        Err(e) => return e,
    };
    // From here on in the program's own process, under its relays.
    if spec.own_processes
        && spec.scratch_bytes.is_some()
        && spec.network == DeckyNetwork::Own
        && let Err(source) = crate::pidns::enter()
    {
        return ExecError {
            step: "give the decky processes of its own",
            source,
        };
    }
    if !egress.is_empty() {
        use std::os::fd::AsFd;
        let fds: Vec<_> = egress.iter().map(|l| l.as_fd()).collect();
        if let Err(source) = crate::handoff::send_with_fds(channel, EGRESS_HANDOVER, &fds) {
            return ExecError {
                step: "hand the egress paths to the shepherd",
                source,
            };
        }
    }
    drop(egress);
    if sockets.len() != spec.listen_names.len() {
        return invalid(
            "hand over the listening sockets",
            "sockets and names differ",
        );
    }
    let listen_env = match crate::handoff::hand_over(sockets, &spec.listen_names, channel) {
        Ok(env) => env,
        Err(source) => {
            return ExecError {
                step: "hand over the listening sockets",
                source,
            };
        }
    };
    // Last: no namespace or mount of its own, whatever it runs.
    if let Err(source) = crate::raw::install_seccomp(&crate::seccomp::filter()) {
        return ExecError {
            step: "narrow the decky's system calls",
            source,
        };
    }
    let err = std::process::Command::new(&program)
        .arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.env)
        .envs(listen_env)
        .stdin(std::process::Stdio::null())
        .exec();
    ExecError {
        step: "start the program",
        source: std::io::Error::new(err.kind(), format!("{}: {err}", program.display())),
    }
}

fn prepare(spec: &ConfinedExec) -> Result<(PathBuf, Vec<std::net::TcpListener>), ExecError> {
    if spec.argv.is_empty() {
        return Err(invalid("start the program", "no command"));
    }
    if threads_of_self() != Some(1) {
        return Err(invalid(
            "confine the decky",
            "the helper is not single-threaded",
        ));
    }
    if let Some(cg) = &spec.cgroup {
        crate::cgroup::join(cg).map_err(at("join the decky's cgroup"))?;
    }
    rustix::process::setsid().map_err(errno("start a session"))?;
    spec.limits
        .apply_rlimits(spec.memory_by_rlimit)
        .map_err(at("set resource limits"))?;
    rustix::process::umask(Mode::from_raw_mode(0o077));
    enter_workdir(spec)?;
    if let Some(id) = spec.identity {
        drop_ids(id)?;
    }
    let path = spec
        .env
        .get("PATH")
        .map(String::as_str)
        .unwrap_or(DEFAULT_PATH);
    let program = resolve_program(&spec.argv[0], path).ok_or_else(|| ExecError {
        step: "start the program",
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} not found on PATH {path}", spec.argv[0]),
        ),
    })?;
    if spec.network == DeckyNetwork::Own {
        let (uid, gid) = match spec.identity {
            Some(id) => (id.uid, id.gid),
            None => (
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw(),
            ),
        };
        crate::netns::isolate(uid, gid, spec.scratch_bytes, spec.own_processes)
            .map_err(at("give the decky a network of its own"))?;
        if spec.scratch_bytes.is_some() && !program.exists() {
            return Err(ExecError {
                step: "start the program",
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "{} lies under {}, which are the decky's own (empty) \
                         scratch space: install it elsewhere",
                        program.display(),
                        crate::scratch::PRIVATE_DIRS.join(", ")
                    ),
                ),
            });
        }
    }
    let egress = if spec.egress.is_empty() {
        Vec::new()
    } else if spec.network != DeckyNetwork::Own {
        return Err(invalid(
            "open the egress paths",
            "egress needs a network of its own",
        ));
    } else {
        crate::egress::open_paths(&spec.egress).map_err(at("open the egress paths"))?
    };
    rustix::thread::set_no_new_privs(true).map_err(errno("set no_new_privs"))?;
    Ok((program, egress))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_on_the_given_path_only() {
        assert_eq!(resolve_program("/x/y", ""), Some(PathBuf::from("/x/y")));
        assert_eq!(resolve_program("./y", ""), Some(PathBuf::from("./y")));
        assert_eq!(
            resolve_program("sh", "/nonexistent:/bin"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve_program("sh", "/nonexistent"), None);
        assert_eq!(
            resolve_program("definitely-not-a-program", DEFAULT_PATH),
            None
        );
    }

    #[test]
    fn a_multithreaded_caller_is_refused_before_anything_changes() {
        // A second thread that lives through the call, whatever the harness does.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || rx.recv());
        let spec = ConfinedExec {
            argv: vec!["/bin/true".into()],
            env: BTreeMap::new(),
            identity: None,
            workdir_parent: std::env::temp_dir(),
            workdir_name: "never-created".into(),
            limits: ResourceLimits::default(),
            memory_by_rlimit: false,
            cgroup: None,
            network: DeckyNetwork::Own,
            listen_names: Vec::new(),
            scratch_bytes: None,
            egress: Vec::new(),
            own_processes: false,
        };
        let mut channel: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let e = exec_confined(&spec, Vec::new(), &mut channel);
        drop(tx);
        let _ = helper.join();
        assert!(e.to_string().contains("single-threaded"), "{e}");
        assert!(!std::env::temp_dir().join("never-created").exists());
    }
}
