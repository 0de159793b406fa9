//! Processes of its own for a decky: a PID namespace (made with its user
//! namespace, see [`crate::netns::isolate`]) with a fresh `/proc`, so `ps`
//! in a decky shows the decky and nothing else — not the agent, not the
//! shepherds, not the other deckies and their command lines, which would
//! tell an attacker at once that the host is a honeypot fleet.
//!
//! `unshare(CLONE_NEWPID)` moves the caller's children, not the caller, so
//! the confinement helper forks twice ([`enter`]):
//!
//! ```text
//! shepherd ─ helper (outer relay, host PID namespace: the decky's "leader")
//!              └─ init (PID 1 of the decky's namespace: mounts /proc, reaps)
//!                   └─ the program (PID 2)
//! ```
//!
//! Both relays pass the usual stop and control signals on (an init without
//! a handler would ignore `SIGTERM`), hold no descriptor of the decky's,
//! and end the way the program ended: its exit code, or the signal that
//! killed it, so the shepherd records what the program did. When the outer
//! relay dies (`SIGKILL` by the agent or the disk watch), init follows
//! (parent-death signal), and with init every process of the namespace.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use crate::raw;

/// Mount a fresh `/proc` for the current PID namespace (in the decky's own
/// mount namespace).
pub fn mount_proc() -> io::Result<()> {
    use rustix::mount::{MountFlags, mount};
    mount(
        "proc",
        "/proc",
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("mount /proc: {e}")))
}

/// After `isolate(.., processes)`: fork the relays and return in the
/// program's process (PID 2 of the new namespace), signals unblocked; the
/// relays never return.
pub fn enter() -> io::Result<()> {
    raw::block_relayed(true)?;
    let (status_r, status_w) = io::pipe()?;
    match raw::fork()? {
        Some(init) => {
            drop(status_w);
            let keep = OwnedFd::from(status_r);
            close_all_but(&keep);
            outer_relay(init, keep)
        }
        None => {
            drop(status_r);
            // Gone with the outer relay (whoever kills it kills the decky).
            let _ = rustix::process::set_parent_process_death_signal(Some(
                rustix::process::Signal::KILL,
            ));
            mount_proc()?;
            match raw::fork()? {
                Some(program) => {
                    let keep = OwnedFd::from(status_w);
                    close_all_but(&keep);
                    init_relay(program, keep)
                }
                None => {
                    drop(status_w);
                    raw::block_relayed(false)?;
                    Ok(())
                }
            }
        }
    }
}

/// Close every descriptor from 3 up but `keep`, and point stdin at
/// `/dev/null`: a relay holds nothing of the decky's (its sockets, its
/// report channel — the helper's stdin —, its egress paths).
fn close_all_but(keep: &OwnedFd) {
    // Nor any capability (in the decky's user namespace): a relay signals
    // and waits for processes of its own uid, which needs none.
    let none = rustix::thread::CapabilitySet::empty();
    let _ = rustix::thread::set_capabilities(
        None,
        rustix::thread::CapabilitySets {
            effective: none,
            permitted: none,
            inheritable: none,
        },
    );
    let _ = raw::null_stdin();
    let k = keep.as_raw_fd() as u32;
    if k > 3 {
        let _ = raw::close_range(3, k - 1);
    }
    let _ = raw::close_range(k + 1, u32::MAX);
}

fn signal(pid: u32, sig: i32) {
    if let (Some(p), Some(s)) = (
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::Signal::from_named_raw(sig),
    ) {
        let _ = rustix::process::kill_process(p, s);
    }
}

/// PID 1: pass signals on to the program, reap whatever ends, and when the
/// program ends hand its wait status to the outer relay and exit (the
/// kernel then ends every other process of the namespace).
fn init_relay(program: u32, status_w: OwnedFd) -> ! {
    use rustix::process::{WaitOptions, wait};
    let mut out = std::fs::File::from(status_w);
    loop {
        match raw::wait_relayed() {
            Ok(libc::SIGCHLD) => loop {
                match wait(WaitOptions::NOHANG) {
                    Ok(Some((pid, status))) => {
                        if pid.as_raw_nonzero().get() as u32 == program {
                            let _ = out.write_all(&status.as_raw().to_ne_bytes());
                            std::process::exit(0);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => std::process::exit(0),
                }
            },
            Ok(sig) => signal(program, sig),
            Err(_) => std::process::exit(1),
        }
    }
}

/// The helper, in the host's PID namespace: pass signals on to init; when
/// init ends, end as the program did.
fn outer_relay(init: u32, status_r: OwnedFd) -> ! {
    use rustix::process::{Pid, WaitOptions, waitpid};
    let init_pid = Pid::from_raw(init as i32);
    loop {
        match raw::wait_relayed() {
            Ok(libc::SIGCHLD) => {
                let Ok(Some((_, init_status))) = waitpid(init_pid, WaitOptions::NOHANG) else {
                    continue;
                };
                let mut raw_status = [0u8; 4];
                let status = match std::fs::File::from(status_r).read_exact(&mut raw_status) {
                    Ok(()) => i32::from_ne_bytes(raw_status),
                    // Init itself died (killed): as it did.
                    Err(_) => init_status.as_raw(),
                };
                end_as(status)
            }
            Ok(sig) => signal(init, sig),
            Err(_) => std::process::exit(1),
        }
    }
}

/// Exit with the wait status `status` describes: its code, or its signal.
fn end_as(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        raw::die_by(libc::WTERMSIG(status))
    }
    std::process::exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    })
}

/// Whether this (single-threaded, freshly isolated with `processes`)
/// process's children can have processes of their own: a child mounts
/// `/proc` for the new namespace. `Err` says why not (a container that
/// masks parts of its `/proc` forbids the mount, for one).
pub fn probe() -> Result<(), String> {
    match raw::fork().map_err(|e| e.to_string())? {
        None => std::process::exit(if mount_proc().is_ok() { 0 } else { 1 }),
        Some(child) => {
            let pid = rustix::process::Pid::from_raw(child as i32);
            match rustix::process::waitpid(pid, rustix::process::WaitOptions::empty()) {
                Ok(Some((_, st))) if st.exit_status() == Some(0) => Ok(()),
                Ok(_) => Err(
                    "a PID namespace cannot mount its own /proc here (a container masking /proc?)"
                        .into(),
                ),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}
