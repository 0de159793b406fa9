//! The descriptors a decky's program starts with: 0 `/dev/null`, 1 and 2
//! its output pipe, its listening sockets from 3 (systemd's socket
//! activation protocol: `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) —
//! and nothing else, whatever the agent inherited from whoever started it.
//!
//! The agent binds a decky's ports (privileged ones included) and the
//! sockets travel to the confinement helper; there, just before the
//! program is executed, [`hand_over`] lifts what must survive above every
//! open descriptor, closes everything from 3 up below it, and places the
//! sockets at 3, 4, … without close-on-exec.

use std::io;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};

/// The highest descriptor open in this process.
fn highest_open_fd() -> io::Result<i32> {
    let mut top = 2;
    for e in std::fs::read_dir("/proc/self/fd")? {
        if let Some(n) = e?.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
            top = top.max(n);
        }
    }
    Ok(top)
}

/// The `LISTEN_*` environment of `n` sockets named `names`, for the
/// process `pid`. Pure: unit-tested.
pub fn listen_env(n: usize, names: &[String], pid: u32) -> Vec<(String, String)> {
    if n == 0 {
        return Vec::new();
    }
    vec![
        ("LISTEN_FDS".into(), n.to_string()),
        ("LISTEN_PID".into(), pid.to_string()),
        ("LISTEN_FDNAMES".into(), names.join(":")),
    ]
}

/// Place `sockets` at 3, 4, … for the program this process is about to
/// execute, close every other descriptor from 3 up, and return the
/// `LISTEN_*` environment. `keep` (a close-on-exec channel the caller still
/// needs until the exec) is moved out of the way first, so it is usable
/// whatever happens. Single-threaded callers only, right before the exec.
pub fn hand_over(
    sockets: Vec<OwnedFd>,
    names: &[String],
    keep: &mut OwnedFd,
) -> io::Result<Vec<(String, String)>> {
    let top = highest_open_fd()? + 1;
    let lift =
        |fd: &dyn AsFd| rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), top).map_err(io::Error::from);
    *keep = lift(&*keep)?;
    let lifted = sockets
        .iter()
        .map(|s| lift(s))
        .collect::<io::Result<Vec<OwnedFd>>>()?;
    drop(sockets);
    if top > 3 {
        crate::raw::close_range(3, (top - 1) as u32)?;
    }
    for (i, high) in lifted.iter().enumerate() {
        let low = rustix::io::fcntl_dupfd_cloexec(high, 3)?;
        let want = 3 + i as i32;
        if low.as_raw_fd() != want {
            return Err(io::Error::other(format!(
                "listening socket {i} landed on descriptor {}, not {want}",
                low.as_raw_fd()
            )));
        }
        rustix::io::fcntl_setfd(&low, rustix::io::FdFlags::empty())?;
        // From the exec on, the program owns it.
        let _ = low.into_raw_fd();
    }
    Ok(listen_env(lifted.len(), names, std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_environment_follows_systemd() {
        assert!(listen_env(0, &[], 7).is_empty());
        let env = listen_env(2, &["tcp-22".into(), "udp-53".into()], 42);
        assert_eq!(
            env,
            vec![
                ("LISTEN_FDS".to_string(), "2".to_string()),
                ("LISTEN_PID".to_string(), "42".to_string()),
                ("LISTEN_FDNAMES".to_string(), "tcp-22:udp-53".to_string()),
            ]
        );
    }
}
