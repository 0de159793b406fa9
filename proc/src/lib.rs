//! Process identity and signalling for the daemons that start and stop
//! processes (the agent's deckies, the updater's agent, the demo).
//!
//! A pid alone can be recycled; a pid together with the kernel start time
//! (field 22 of `/proc/PID/stat`) names one process for its whole life, so
//! that is what gets recorded and compared.

pub use rustix::process::Signal;

/// `/proc/PID/stat` after the command name (which may hold spaces and ')').
fn stat_fields(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 1..].to_string())
}

/// Kernel start time of a live (non-zombie) process.
pub fn start_time(pid: u32) -> Option<u64> {
    let rest = stat_fields(pid)?;
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    f.nth(18)?.parse().ok()
}

/// Whether `pid` is a live process (not a zombie).
pub fn is_running(pid: u32) -> bool {
    start_time(pid).is_some()
}

/// Whether `pid` is still the process that started at `started` (`0`
/// accepts any live process with that pid).
pub fn is_same_process(pid: u32, started: u64) -> bool {
    start_time(pid).is_some_and(|t| started == 0 || t == started)
}

fn pid_of(pid: u32) -> Option<rustix::process::Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
}

/// Send `sig` to `pid` (errors, e.g. already gone, are ignored).
pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = pid_of(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Send `sig` to the process group led by `pid`, or to `pid` alone when it
/// leads no group.
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
        assert!(is_same_process(me, 0));
        assert!(!is_same_process(me, t + 1));
        assert!(!is_running(u32::MAX - 1));
    }
}
