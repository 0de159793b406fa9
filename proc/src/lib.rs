//! Process identity and signalling for the daemons that start and stop
//! processes (the agent's deckies, the updater's agent, the demo).
//!
//! A pid alone can be recycled; a pid together with the kernel start time
//! (field 22 of `/proc/PID/stat`) names one process for its whole life, so
//! that is what gets recorded and compared. A recorded process is signalled
//! only through a [`ProcessHandle`]: a pidfd opened and then checked against
//! the recorded start time, so a signal can never land on a stranger that
//! inherited the number, and a signal after the process was reaped fails
//! instead of hitting whoever got the pid next. A start time of `0`
//! ("unknown") never matches anything.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open, pidfd_send_signal};

pub use rustix::process::Signal;

/// `/proc/PID/stat` after the command name (which may hold spaces and ')').
fn stat_fields(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 1..].to_string())
}

/// Kernel start time of a live process: not a zombie — unless only its
/// main thread has ended (`pthread_exit`) while other threads run on, which
/// `/proc` shows as a zombie leader (`Zl`) of a process that is very much
/// alive and must still be found, signalled and killed.
pub fn start_time(pid: u32) -> Option<u64> {
    let rest = stat_fields(pid)?;
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    if (state == "Z" || state == "X") && !has_live_thread(pid) {
        return None;
    }
    f.nth(18)?.parse().ok()
}

/// Whether any thread of `pid` has not ended.
fn has_live_thread(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                let state = rest.split_whitespace().next()?.to_string();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    })
}

/// Real user id of a process (`/proc/PID/status`).
pub fn real_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether `pid` is a live process (not a zombie).
pub fn is_running(pid: u32) -> bool {
    start_time(pid).is_some()
}

/// Whether `pid` is still the process that started at `started`. An
/// unknown start time (`0`) matches nothing: it is never a wildcard.
pub fn is_same_process(pid: u32, started: u64) -> bool {
    started != 0 && start_time(pid).is_some_and(|t| t == started)
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// One live process, pinned by a pidfd: signals sent through it reach that
/// process or fail, never another one that reuses the number.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: u32,
    start_time: u64,
    fd: OwnedFd,
}

impl ProcessHandle {
    /// A handle on `pid` when it is alive and started at `start_time`;
    /// `None` otherwise (gone, a different process, or an unknown start
    /// time `0`).
    pub fn open(pid: u32, start_time: u64) -> Option<ProcessHandle> {
        if start_time == 0 {
            return None;
        }
        let h = Self::open_any(pid)?;
        (h.start_time == start_time).then_some(h)
    }

    /// A handle on whatever live process has `pid` now (for a child just
    /// spawned, whose start time is then read from the kernel).
    pub fn open_any(pid: u32) -> Option<ProcessHandle> {
        let fd = pidfd_open(pid_of(pid)?, PidfdFlags::empty()).ok()?;
        // Read after the pidfd pins the process: if it is still running
        // afterwards, what /proc said was about this very process.
        let start_time = start_time(pid)?;
        let h = ProcessHandle {
            pid,
            start_time,
            fd,
        };
        (!h.has_exited()).then_some(h)
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kernel start time.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// The pidfd (readable once the process has exited), e.g. to await the
    /// exit on an event loop.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether the process has exited (zombie or reaped).
    pub fn has_exited(&self) -> bool {
        self.wait_exit(Duration::ZERO)
    }

    /// Wait up to `timeout` for the process to exit; `true` once it has.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        loop {
            match poll(&mut fds, Some(&ts)) {
                Ok(n) => return n > 0,
                Err(rustix::io::Errno::INTR) => continue,
                // A pidfd that cannot be polled is treated as gone.
                Err(_) => return true,
            }
        }
    }

    /// Reap the process once it has exited, when it is this process's
    /// child (an agent spawned by an updater that has since re-executed
    /// itself: the new image's runtime does not know the child, which would
    /// stay a zombie). Not a child, or still running: nothing happens.
    pub fn reap_if_child(&self) {
        use rustix::process::{WaitId, WaitIdOptions, waitid};
        let _ = waitid(
            WaitId::PidFd(self.fd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
    }

    /// Send `sig` to this process; fails with `ESRCH` once it has exited.
    pub fn signal(&self, sig: Signal) -> std::io::Result<()> {
        pidfd_send_signal(&self.fd, sig).map_err(std::io::Error::from)
    }

    /// Send `sig` to the process group this process leads (or to the
    /// process alone when it leads none). Only while the process has not
    /// exited: a living leader keeps its group id from being reused.
    pub fn signal_group(&self, sig: Signal) -> std::io::Result<()> {
        if self.has_exited() {
            return Err(std::io::Error::from_raw_os_error(3)); // ESRCH
        }
        let Some(p) = pid_of(self.pid) else {
            return self.signal(sig);
        };
        match rustix::process::kill_process_group(p, sig) {
            Ok(()) => Ok(()),
            Err(_) => self.signal(sig),
        }
    }
}

/// Every live process whose real user id is `uid`, each pinned by a pidfd.
pub fn processes_of_user(uid: u32) -> Vec<ProcessHandle> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            // Only a process of `uid` is pinned (a pidfd for every process
            // on the box made each call cost the kernel far more).
            if real_uid(pid)? != uid {
                return None;
            }
            let h = ProcessHandle::open_any(pid)?;
            // Read again with the process pinned, and still running after
            // the read: the uid is this process's, not a reused pid's.
            (real_uid(pid)? == uid && !h.has_exited()).then_some(h)
        })
        .collect()
}

/// Send `sig` to every process of user `uid`; returns how many were signalled.
pub fn signal_user(uid: u32, sig: Signal) -> usize {
    processes_of_user(uid)
        .iter()
        .filter(|p| p.signal(sig).is_ok())
        .count()
}

/// SIGKILL every process of user `uid`, again and again (a forking process
/// may add new ones), until none is left or `timeout` passes; `true` when
/// none is left. Only for a uid that belongs to one workload alone.
pub fn kill_user(uid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let procs = processes_of_user(uid);
        if procs.is_empty() {
            return true;
        }
        for p in &procs {
            let _ = p.signal(Signal::KILL);
        }
        if Instant::now() >= deadline {
            return processes_of_user(uid).is_empty();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The real user id of this process.
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Make this process the leader of a new session (no controlling
/// terminal, a process group of its own).
pub fn new_session() -> std::io::Result<()> {
    rustix::process::setsid()
        .map(|_| ())
        .map_err(std::io::Error::from)
}

/// Block until this process's child `pid` has exited, without reaping it:
/// until the caller reaps it, its pid and the group it leads stay reserved,
/// so [`signal_unreaped_group`] cannot reach a stranger.
pub fn wait_exited_unreaped(pid: u32) -> std::io::Result<()> {
    let p = pid_of(pid).ok_or_else(|| std::io::Error::from_raw_os_error(3))?;
    loop {
        match rustix::process::waitid(
            rustix::process::WaitId::Pid(p),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(()),
        }
    }
}

/// Send `sig` to the process group led by this process's exited, not yet
/// reaped child `pid` (see [`wait_exited_unreaped`]).
pub fn signal_unreaped_group(pid: u32, sig: Signal) {
    if let Some(p) = pid_of(pid) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// Send `sig` to `pid` by number, unverified. Only for a process this
/// program just started and still owns (e.g. tests and the demo tearing
/// down their own children); everything recorded goes through
/// [`ProcessHandle`].
pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = pid_of(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Send `sig` to the process group led by `pid`, or to `pid` alone when it
/// leads no group. Unverified, like [`signal`].
pub fn signal_group(pid: u32, sig: Signal) {
    if let Some(p) = pid_of(pid)
        && rustix::process::kill_process_group(p, sig).is_err()
    {
        let _ = rustix::process::kill_process(p, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_and_pid_reuse_detection() {
        let me = std::process::id();
        let t = start_time(me).unwrap();
        assert!(is_same_process(me, t));
        assert!(
            !is_same_process(me, 0),
            "an unknown start time is no wildcard"
        );
        assert!(!is_same_process(me, t + 1));
        assert!(!is_running(u32::MAX - 1));
        assert_eq!(real_uid(me), Some(rustix::process::getuid().as_raw()));
    }

    #[test]
    fn handles_refuse_unknown_or_wrong_start_times_and_see_exits() {
        let me = std::process::id();
        let t = start_time(me).unwrap();
        assert!(ProcessHandle::open(me, 0).is_none());
        assert!(ProcessHandle::open(me, t + 1).is_none());
        let h = ProcessHandle::open(me, t).unwrap();
        assert!(!h.has_exited());

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let h = ProcessHandle::open_any(child.id()).unwrap();
        assert!(!h.wait_exit(Duration::from_millis(50)));
        h.signal(Signal::KILL).unwrap();
        assert!(
            h.wait_exit(Duration::from_secs(5)),
            "pidfd readable on exit"
        );
        child.wait().unwrap();
        // Reaped: the handle refuses to signal instead of hitting a stranger.
        assert!(h.signal(Signal::TERM).is_err());
        assert!(h.signal_group(Signal::TERM).is_err());
    }

    #[test]
    fn an_exited_child_is_observed_before_it_is_reaped() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        wait_exited_unreaped(child.id()).unwrap();
        // Still a zombie: the pid is reserved until the reap below.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
        assert!(stat.contains(") Z "), "{stat}");
        signal_unreaped_group(child.id(), Signal::KILL);
        assert_eq!(child.wait().unwrap().code(), Some(7));
    }
}
