//! The shepherd: one small privileged process per running process decky,
//! between the agent and the decky.
//!
//! ```text
//! decnet-agent serve ──spawns──▶ decnet-agent shepherd ──spawns──▶ decnet-agent exec-decky ══exec══▶ program
//!   (supervises)                  (own session; holds the            (confines itself, see
//!                                  output pipe, rotates the log,      decnet_confine::exec)
//!                                  records the exit)
//! ```
//!
//! Why a process of its own: a decky must outlive an agent restart, and its
//! output must go through a pipe the agent side holds (a log file handed to
//! the decky could be truncated or grown without bound by it). The shepherd
//! keeps that pipe across agent restarts, caps the log by rotating it, and
//! when the program ends it sweeps whatever the decky left behind (every
//! process of its uid, or its cgroup) and writes an exit record that any
//! later agent reads.
//!
//! Both helpers talk over their stdin, a Unix socket pair: the spec goes in
//! as JSON up to EOF — with the decky's listening sockets attached to its
//! first byte (`SCM_RIGHTS`), so they travel agent → shepherd →
//! exec-decky without ever being inherited by accident — and one answer
//! comes back. `exec-decky` answers only on failure; on success the socket
//! (close-on-exec) just closes.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use decnet_confine::ConfinedExec;
use serde::{Deserialize, Serialize};

use super::{DriverError, ProcId};

/// Largest spec a helper accepts.
const MAX_SPEC: u64 = 1 << 20;
/// Most listening sockets handed to one decky.
pub const MAX_LISTEN: usize = 64;
/// Most egress paths of one decky (one per allowed destination at most).
pub const MAX_EGRESS_PATHS: usize = 32;
/// How often a running decky's working directory is measured.
pub const DISK_CHECK: Duration = Duration::from_secs(5);
/// Entries a working directory may hold (the walk stays bounded, and a
/// million empty files is a flood too).
pub const MAX_ENTRIES: u64 = 1_000_000;
/// How long the agent waits for a shepherd's answer.
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// What the agent hands a shepherd.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShepherdSpec {
    /// The decky.
    pub decky: String,
    /// Its log file (rotated to `<log>.1` at `log_max` bytes).
    pub log_path: PathBuf,
    /// Rotation size in bytes.
    pub log_max: u64,
    /// Where the exit record goes.
    pub exit_path: PathBuf,
    /// The uid that belongs to this decky alone: every process of it is
    /// killed when the program ends.
    pub exclusive_uid: Option<u32>,
    /// The decky's cgroup, killed when the program ends.
    pub cgroup: Option<PathBuf>,
    /// The most its working directory may hold, in bytes: past it the
    /// decky is stopped for good.
    #[serde(default)]
    pub disk_budget: Option<u64>,
    /// Where the size of its working directory is kept for `/status`.
    #[serde(default)]
    pub usage_path: Option<PathBuf>,
    /// Where its network figures are kept for `/status` (a decky with a
    /// network of its own; [`super::egress_proxy::NetworkFigures`]).
    #[serde(default)]
    pub network_path: Option<PathBuf>,
    /// How the program is confined and started.
    pub exec: ConfinedExec,
}

/// The shepherd's one answer to the agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShepherdReport {
    /// The program runs.
    Started {
        /// Its pid.
        pid: u32,
        /// Its kernel start time.
        start_time: u64,
    },
    /// It could not be started; why.
    Failed {
        /// The reason (no secrets: a step and an OS error).
        error: String,
    },
}

/// How a decky's program ended, as the shepherd recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when one killed it.
    pub signal: Option<i32>,
    /// Why its shepherd stopped it for good (it exceeded its disk budget):
    /// it is not restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_for: Option<String>,
}

impl ExitRecord {
    /// `None` for a clean exit, otherwise what happened in words.
    pub fn failure(&self) -> Option<String> {
        if let Some(why) = &self.stopped_for {
            return Some(why.clone());
        }
        match (self.code, self.signal) {
            (Some(0), _) => None,
            (Some(c), _) => Some(format!("exited with status {c}")),
            (None, Some(s)) => Some(format!("killed by signal {s}")),
            _ => Some("exited".into()),
        }
    }
}

/// Read the exit record at `path`, leaving it in place.
pub fn read_exit_record(path: &Path) -> Option<ExitRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Read and remove the exit record at `path`.
pub fn take_exit_record(path: &Path) -> Option<ExitRecord> {
    let rec = read_exit_record(path);
    let _ = std::fs::remove_file(path);
    rec
}

/// Send `bytes` with `fds` attached to the first byte, then shut the
/// write side (the reader reads up to EOF).
fn send_spec(chan: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    decnet_confine::handoff::send_with_fds(chan, bytes, fds)?;
    chan.shutdown(std::net::Shutdown::Write)
}

/// Read a spec (JSON up to EOF) and the descriptors sent with it
/// (close-on-exec).
fn read_spec<T: for<'de> Deserialize<'de>>(chan: &UnixStream) -> Result<(T, Vec<OwnedFd>), String> {
    let (mut buf, fds) = decnet_confine::handoff::recv_with_fds(chan, 1, MAX_LISTEN)
        .map_err(|e| format!("cannot read the spec: {e}"))?;
    chan.take(MAX_SPEC)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read the spec: {e}"))?;
    let spec = serde_json::from_slice(&buf).map_err(|e| format!("bad spec: {e}"))?;
    Ok((spec, fds))
}

/// Our stdin as the socket it is (a close-on-exec duplicate).
fn stdin_channel() -> Result<UnixStream, String> {
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixStream::from)
        .map_err(|e| format!("no spec channel on stdin: {e}"))
}

/// `decnet-agent exec-decky`: confine this process and become the decky's
/// program. Returns (an exit code) only on failure, after telling the
/// shepherd why.
pub fn exec_decky_main() -> i32 {
    let Ok(mut chan) = stdin_channel() else {
        eprintln!("exec-decky is started by the agent's shepherd, not by hand");
        return 2;
    };
    let (spec, sockets): (ConfinedExec, _) = match read_spec(&chan) {
        Ok(s) => s,
        Err(e) => {
            let _ = chan.write_all(e.as_bytes());
            return 2;
        }
    };
    let mut channel = OwnedFd::from(chan);
    let err = decnet_confine::exec::exec_confined(&spec, sockets, &mut channel);
    let mut chan = UnixStream::from(channel);
    let _ = chan.write_all(err.to_string().as_bytes());
    127
}

/// `decnet-agent probe-decky-network`: try what a decky's confinement
/// does for its network — as an unprivileged user (nobody, when started as
/// root), a user and network namespace of its own with loopback up, and a
/// mount namespace with its own `/tmp` — and exit 0, or 1 saying why not.
pub fn probe_network_main() -> i32 {
    const NOBODY: u32 = 65534;
    if rustix::process::geteuid().is_root() {
        // Single-threaded: the thread's ids are the process's.
        let nobody = decnet_confine::ExecIdentity {
            uid: NOBODY,
            gid: NOBODY,
        };
        if let Err(e) = decnet_confine::exec::take_ids_for_this_thread(nobody) {
            eprintln!("cannot switch to an unprivileged user: {e}");
            return 1;
        }
    }
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    // With a PID namespace first; a host (or unit) that forbids only that
    // still gives deckies their network and scratch (unshare changes
    // nothing when it fails, so the second try starts clean).
    let with_pid = decnet_confine::netns::isolate(uid, gid, Some(1 << 20), true);
    let isolated = match &with_pid {
        Ok(()) => Ok(()),
        Err(_) => decnet_confine::netns::isolate(uid, gid, Some(1 << 20), false),
    };
    match isolated {
        Ok(()) => {
            // Network and scratch work: say whether processes of its own do.
            match with_pid
                .map_err(|e| format!("no PID namespace: {e}"))
                .and_then(|()| decnet_confine::pidns::probe())
            {
                Ok(()) => println!("processes=own"),
                Err(why) => println!("processes=shared: {why}"),
            }
            0
        }
        Err(e) => {
            eprintln!("an unprivileged user namespace with network and mount namespaces: {e}");
            1
        }
    }
}

/// A log file capped by rotating it to `<path>.1`.
struct RotatingLog {
    path: PathBuf,
    max: u64,
    file: std::fs::File,
    size: u64,
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl RotatingLog {
    fn open(path: PathBuf, max: u64) -> std::io::Result<RotatingLog> {
        let file = open_log(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            max: max.max(4096),
            file,
            size,
        })
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, &old)?;
            self.file = open_log(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }
}

fn pump(mut from: std::io::PipeReader, mut log: RotatingLog) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                // A full disk loses output, never the decky.
                let _ = log.write(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn report(chan: &mut UnixStream, r: &ShepherdReport) {
    if let Ok(line) = serde_json::to_vec(r) {
        let _ = chan.write_all(&line);
    }
    let _ = chan.shutdown(std::net::Shutdown::Write);
}

/// `decnet-agent shepherd`: start one decky and stay with it until it ends.
pub fn shepherd_main() -> i32 {
    let Ok(mut chan) = stdin_channel() else {
        eprintln!("shepherd is started by the agent, not by hand");
        return 2;
    };
    let (spec, sockets): (ShepherdSpec, _) = match read_spec(&chan) {
        Ok(s) => s,
        Err(error) => {
            report(&mut chan, &ShepherdReport::Failed { error });
            return 2;
        }
    };
    match run(&spec, sockets, &mut chan) {
        Ok(()) => 0,
        Err(error) => {
            report(&mut chan, &ShepherdReport::Failed { error });
            1
        }
    }
}

fn run(spec: &ShepherdSpec, sockets: Vec<OwnedFd>, chan: &mut UnixStream) -> Result<(), String> {
    // A session of its own: the agent's stop or its terminal never reach it.
    let _ = decnet_proc::new_session();
    let log = RotatingLog::open(spec.log_path.clone(), spec.log_max)
        .map_err(|e| format!("cannot open {}: {e}", spec.log_path.display()))?;
    let (out_r, out_w) = std::io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    let err_w = out_w
        .try_clone()
        .map_err(|e| format!("cannot make a pipe: {e}"))?;
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("cannot make a socket pair: {e}"))?;
    // The working directory, opened while still the shepherd's: the watch
    // below reads the decky's tree from it once the decky owns it.
    let workdir = spec.disk_budget.and_then(|_| {
        decnet_confine::exec::prepare_workdir(
            &spec.exec.workdir_parent,
            &spec.exec.workdir_name,
            spec.exec.identity.is_some(),
        )
        .ok()
    });
    let mut child = {
        // The command (holding our copies of the pipe's write end) is
        // dropped right after the spawn, so the pump sees EOF once the
        // decky's processes are gone.
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("exec-decky")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        cmd.spawn()
            .map_err(|e| format!("cannot start the confinement helper: {e}"))?
    };
    let spec_bytes = serde_json::to_vec(&spec.exec).map_err(|e| e.to_string())?;
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.as_fd()).collect();
    let _ = send_spec(&ours, &spec_bytes, &fds);
    // Only the decky holds its sockets from now on (and the agent, which
    // bound them).
    drop(fds);
    drop(sockets);
    let (mut said, egress) = egress_handover(&ours);
    let _ = (&ours).take(64 * 1024).read_to_end(&mut said);
    if !said.is_empty() {
        drop(egress);
        let _ = child.wait();
        return Err(String::from_utf8_lossy(&said).into_owned());
    }
    let counters = Arc::new(super::egress_proxy::EgressCounters::default());
    if !egress.is_empty() {
        super::egress_proxy::serve(egress, spec.exec.egress.clone(), counters.clone());
    }
    let pid = child.id();
    let start_time = decnet_proc::start_time(pid).unwrap_or(0);
    let pump = std::thread::spawn(move || pump(out_r, log));
    report(chan, &ShepherdReport::Started { pid, start_time });
    let ended = Arc::new(AtomicBool::new(false));
    let breach: Arc<Mutex<Option<String>>> = Arc::default();
    if let (Some(budget), Some(workdir)) = (spec.disk_budget, workdir) {
        let watch = DiskWatch {
            workdir,
            budget,
            usage: spec.usage_path.as_ref().and_then(|p| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(p)
                    .ok()
            }),
            identity: spec.exec.identity,
            leader: ProcId { pid, start_time },
            ended: ended.clone(),
            breach: breach.clone(),
            network: spec
                .network_path
                .as_ref()
                .and_then(|p| {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(p)
                        .ok()
                })
                .map(|f| (f, counters.clone())),
        };
        std::thread::spawn(move || watch.run());
    }

    // Observe the end without reaping, so the leader's pid and group stay
    // reserved while what it left behind is swept.
    let _ = decnet_proc::wait_exited_unreaped(pid);
    ended.store(true, Ordering::SeqCst);
    sweep(spec, pid);
    let status = child.wait().map_err(|e| format!("cannot wait: {e}"))?;
    // Output still in flight drains; processes outside our reach (a decky
    // under a shared account that escaped its group) cannot hold us.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = pump.join();
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    use std::os::unix::process::ExitStatusExt;
    let record = ExitRecord {
        code: status.code(),
        signal: status.signal(),
        stopped_for: lock(&breach).take(),
    };
    let bytes = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
    decnet_pki::secure_fs::write_atomic(&spec.exit_path, &bytes, 0o600)
        .map_err(|e| format!("cannot write {}: {e}", spec.exit_path.display()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub use decnet_confine::tree::MAX_DEPTH;

/// The bytes (allocated blocks) and entries under the open directory
/// `dir` ([`decnet_confine::tree::walk`]: by descriptors, no link
/// followed), stopping once either passes its bound. A tree nesting deeper
/// than [`MAX_DEPTH`] or holding what the walk cannot read counts as past
/// `max_entries`: a directory the decky closed to itself is opened up, one
/// still unreadable is a breach, never a hiding place.
pub fn disk_usage(dir: &OwnedFd, max_bytes: u64, max_entries: u64) -> std::io::Result<(u64, u64)> {
    use decnet_confine::tree::{Event, Flow, walk};
    let (mut bytes, mut entries) = (0u64, 0u64);
    walk(dir, |e| {
        match e {
            Event::Entry { stat, .. } => {
                entries += 1;
                bytes += u64::try_from(stat.st_blocks).unwrap_or(0) * 512;
            }
            Event::Hidden { .. } => entries = max_entries.saturating_add(1),
            Event::Left { .. } => {}
        }
        if bytes > max_bytes || entries > max_entries {
            Flow::Stop
        } else {
            Flow::Continue
        }
    })?;
    Ok((bytes, entries))
}

/// The shepherd's watch over a decky's working directory: a thread of its
/// own that reads as the decky (its filesystem ids, for itself only: ids are per
/// thread at the system call) to read what the decky stores, measures it
/// every [`DISK_CHECK`], keeps the figure for `/status`, and kills the
/// program when it passes its budget (the shepherd's sweep does the rest).
struct DiskWatch {
    /// The decky's working directory, opened while it was still the
    /// shepherd's (the decky's uid may not reach it by path).
    workdir: OwnedFd,
    budget: u64,
    usage: Option<std::fs::File>,
    identity: Option<decnet_confine::ExecIdentity>,
    leader: ProcId,
    ended: Arc<AtomicBool>,
    breach: Arc<Mutex<Option<String>>>,
    /// Its network figures' file and its egress paths' counters.
    network: Option<(std::fs::File, Arc<super::egress_proxy::EgressCounters>)>,
}

impl DiskWatch {
    fn run(mut self) {
        if let Some(id) = self.identity
            && decnet_confine::exec::read_as_for_this_thread(id).is_err()
        {
            return;
        }
        let mut unreadable = 0;
        while !self.ended.load(Ordering::SeqCst) {
            let (bytes, entries) = match disk_usage(&self.workdir, self.budget, MAX_ENTRIES) {
                Ok(m) => {
                    unreadable = 0;
                    m
                }
                // Its directory itself unreadable, again and again: a
                // directory that cannot be measured is a breach.
                Err(_) => {
                    unreadable += 1;
                    if unreadable < 3 {
                        std::thread::sleep(DISK_CHECK);
                        continue;
                    }
                    (0, MAX_ENTRIES.saturating_add(1))
                }
            };
            if let Some(f) = self.usage.as_mut() {
                rewrite(f, bytes.to_string().as_bytes());
            }
            if let Some((f, counters)) = self.network.as_mut() {
                let refused = counters.refused.load(Ordering::Relaxed);
                let figures = super::egress_proxy::NetworkFigures {
                    forbidden: decnet_confine::egress::forbidden_attempts(self.leader.pid)
                        .unwrap_or(0)
                        + refused,
                    egress_allowed: counters.allowed.load(Ordering::Relaxed),
                    egress_failed: counters.failed.load(Ordering::Relaxed),
                };
                if let Ok(json) = serde_json::to_vec(&figures) {
                    rewrite(f, &json);
                }
            }
            if bytes > self.budget || entries > MAX_ENTRIES {
                *lock(&self.breach) = Some(if entries > MAX_ENTRIES {
                    format!(
                        "stopped: its working directory holds over {MAX_ENTRIES} entries, \
                         nests deeper than {MAX_DEPTH}, or hides itself or a directory"
                    )
                } else {
                    format!(
                        "stopped: its working directory exceeded its disk budget of {} MiB",
                        self.budget >> 20
                    )
                });
                if let Some(h) =
                    decnet_proc::ProcessHandle::open(self.leader.pid, self.leader.start_time)
                {
                    let _ = h.signal(decnet_proc::Signal::KILL);
                }
                return;
            }
            // Sleep in short steps: the decky may end meanwhile. A large
            // tree is walked less often (a walk costs the shepherd, not the
            // decky's own quota): one more second per 20 000 entries, at
            // most a minute between walks.
            let pause = DISK_CHECK
                .saturating_add(Duration::from_secs(entries / 20_000))
                .min(Duration::from_secs(60));
            for _ in 0..(pause.as_millis() / 250) {
                if self.ended.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

/// Replace the contents of `f` with `bytes`.
fn rewrite(f: &mut std::fs::File, bytes: &[u8]) {
    use std::io::Seek;
    let _ = f.set_len(0);
    let _ = f.rewind();
    let _ = f.write_all(bytes);
}

/// The egress listeners the confinement helper sends before it executes
/// the program ([`decnet_confine::exec::EGRESS_HANDOVER`]), and whatever
/// else it said in the same read (the start of a failure).
fn egress_handover(chan: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
    use decnet_confine::exec::EGRESS_HANDOVER;
    let Ok((mut said, fds)) =
        decnet_confine::handoff::recv_with_fds(chan, 64 * 1024, MAX_EGRESS_PATHS)
    else {
        return (Vec::new(), Vec::new());
    };
    if fds.is_empty() {
        return (said, fds);
    }
    // The marker may arrive in pieces.
    while said.len() < EGRESS_HANDOVER.len() {
        let mut more = [0u8; 64];
        match (&*chan).read(&mut more) {
            Ok(0) | Err(_) => break,
            Ok(n) => said.extend_from_slice(&more[..n]),
        }
    }
    match said.strip_prefix(EGRESS_HANDOVER) {
        Some(rest) => (rest.to_vec(), fds),
        None => (said, Vec::new()),
    }
}

/// Kill what the decky's program left behind once it has ended.
fn sweep(spec: &ShepherdSpec, leader: u32) {
    if let Some(cg) = &spec.cgroup {
        let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    }
    match spec.exclusive_uid {
        Some(uid) => {
            decnet_proc::kill_user(uid, Duration::from_secs(5));
        }
        None => {
            // The leader is a zombie we have not reaped: its group id is
            // still its own.
            decnet_proc::signal_unreaped_group(leader, decnet_proc::Signal::KILL);
        }
    }
}

/// Start a shepherd for `spec` from the agent binary `helper`, handing it
/// the decky's listening `sockets`; returns the shepherd (a child of this
/// process) and the facts of both processes.
pub async fn launch(
    helper: &Path,
    spec: &ShepherdSpec,
    sockets: Vec<OwnedFd>,
) -> Result<(tokio::process::Child, ProcId, ProcId), DriverError> {
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| DriverError(format!("cannot make a socket pair: {e}")))?;
    let child = tokio::process::Command::new(helper)
        .arg("shepherd")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| DriverError(format!("cannot start a shepherd: {e}")))?;
    let shepherd_pid = child
        .id()
        .ok_or_else(|| DriverError("the shepherd exited at once".into()))?;
    let shepherd_start = decnet_proc::start_time(shepherd_pid).unwrap_or(0);
    let bytes = serde_json::to_vec(spec).map_err(|e| DriverError(e.to_string()))?;
    let answer = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        let s = ours;
        s.set_read_timeout(Some(REPORT_TIMEOUT))?;
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|f| f.as_fd()).collect();
        send_spec(&s, &bytes, &fds)?;
        drop(fds);
        drop(sockets);
        let mut buf = Vec::new();
        (&s).take(64 * 1024).read_to_end(&mut buf)?;
        Ok(buf)
    })
    .await
    .map_err(|e| DriverError(format!("shepherd handshake: {e}")))?
    .map_err(|e| DriverError(format!("no answer from the shepherd: {e}")))?;
    match serde_json::from_slice::<ShepherdReport>(&answer) {
        Ok(ShepherdReport::Started { pid, start_time }) => Ok((
            child,
            ProcId {
                pid: shepherd_pid,
                start_time: shepherd_start,
            },
            ProcId { pid, start_time },
        )),
        Ok(ShepherdReport::Failed { error }) => Err(DriverError(error)),
        Err(_) => Err(DriverError(
            "the shepherd ended without an answer (see the agent log)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut log = RotatingLog::open(path.clone(), 4096).unwrap();
        log.write(&[b'a'; 3000]).unwrap();
        log.write(&[b'b'; 3000]).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("d.log.1")).unwrap(),
            vec![b'a'; 3000]
        );
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'b'; 3000]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn disk_usage_counts_blocks_without_following_links_and_stops_early() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("d");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), vec![1u8; 64 * 1024]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.join("usr")).unwrap();
        let d = OwnedFd::from(std::fs::File::open(&dir).unwrap());
        let (bytes, entries) = disk_usage(&d, u64::MAX, u64::MAX).unwrap();
        assert!((64 * 1024..1 << 20).contains(&bytes), "{bytes}");
        assert_eq!(entries, 3, "sub, sub/a, the link itself");
        let (over, _) = disk_usage(&d, 1024, u64::MAX).unwrap();
        assert!(over > 1024);
        // A tree nested past the bound is a breach, not a walk without end.
        let mut deep = dir.clone();
        for _ in 0..(MAX_DEPTH + 2) {
            deep.push("x");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let (_, entries) = disk_usage(&d, u64::MAX, 1000).unwrap();
        assert!(entries > 1000);
        std::fs::remove_dir_all(dir.join("x")).unwrap();
        // A directory its owner closed to itself is opened up and counted.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("sub"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let (bytes, entries) = disk_usage(&d, u64::MAX, u64::MAX).unwrap();
        assert!(bytes >= 64 * 1024, "{bytes}");
        assert_eq!(entries, 3);
    }

    #[test]
    fn exit_records_describe_failures() {
        let clean = ExitRecord {
            code: Some(0),
            signal: None,
            stopped_for: None,
        };
        assert_eq!(clean.failure(), None);
        let code = ExitRecord {
            code: Some(3),
            signal: None,
            stopped_for: None,
        };
        assert_eq!(code.failure().unwrap(), "exited with status 3");
        let sig = ExitRecord {
            code: None,
            signal: Some(9),
            stopped_for: Some("stopped: over budget".into()),
        };
        assert_eq!(sig.failure().unwrap(), "stopped: over budget");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.exit");
        std::fs::write(&p, serde_json::to_vec(&code).unwrap()).unwrap();
        assert_eq!(take_exit_record(&p), Some(code));
        assert!(!p.exists(), "an exit record is read once");
    }
}
