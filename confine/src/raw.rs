//! The few system calls the confinement needs that have no safe wrapper:
//! the only `unsafe` code of the workspace, kept here, each call with the
//! reason it is sound.
#![allow(unsafe_code)]

use std::io;

/// Give the calling process a new user namespace and a new network
/// namespace (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`), with new mount and
/// IPC namespaces too when `scratch` (`CLONE_NEWNS | CLONE_NEWIPC`: its own
/// `/tmp` and its own System V and POSIX IPC objects, which would otherwise
/// outlive it under its uid), and a new PID namespace for its children when
/// `processes` (`CLONE_NEWPID`: the caller stays where it is; see
/// [`crate::pidns`]).
pub fn unshare_user_and_network(scratch: bool, processes: bool) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    let mut flags = UnshareFlags::NEWUSER | UnshareFlags::NEWNET;
    if scratch {
        flags |= UnshareFlags::NEWNS | UnshareFlags::NEWIPC;
    }
    if processes {
        flags |= UnshareFlags::NEWPID;
    }
    // SAFETY: the flags touch no memory or descriptor this process shares
    // with other threads (the caller checked it is single-threaded, and
    // neither CLONE_FILES nor CLONE_VM is given; CLONE_NEWNS implies
    // CLONE_FS, which only unshares this process's own root and working
    // directory from threads it does not have): only the namespaces it and
    // its children will run in change.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// `fork(2)`: `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
pub fn fork() -> io::Result<Option<u32>> {
    // SAFETY: only the confinement helper calls it, single-threaded (checked
    // before it confines anything), so the child's copy of the address space
    // holds no lock another thread held and no state half-updated; both
    // sides go on with plain system calls and exit or exec.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// The signals a relay passes on to the process it stands for (and
/// `SIGCHLD`, which tells it that process ended).
pub const RELAYED: [i32; 9] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGALRM,
    libc::SIGCHLD,
];

fn relayed_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a set we own, with
    // valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in RELAYED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block (`true`) or unblock the [`RELAYED`] signals for this thread (the
/// only one).
pub fn block_relayed(block: bool) -> io::Result<()> {
    let set = relayed_set();
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: a valid set, no old set asked for.
    let r = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Wait for one of the (blocked) [`RELAYED`] signals; its number.
pub fn wait_relayed() -> io::Result<i32> {
    let set = relayed_set();
    loop {
        // SAFETY: a valid set; no siginfo asked for.
        let r = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if r > 0 {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// End this process by `signal` as if it had not handled it (its parent
/// then sees "killed by signal"): the default action restored, unblocked,
/// raised.
pub fn die_by(signal: i32) -> ! {
    // SAFETY: restoring the default action of a valid signal, unblocking
    // it and raising it touch only this (single-threaded) process's signal
    // state; exit follows should the signal not end it.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

/// Close every descriptor from `first` to `last` (`close_range(2)`).
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: called by the confinement helper just before it executes the
    // decky's program, single-threaded; the caller first moved every
    // descriptor it still owns (the sockets handed in, its report channel)
    // above `last`, so nothing Rust owns is closed under it: what goes are
    // descriptors it inherited without close-on-exec and never owned.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Point standard input at `/dev/null` (a relay's stdin is the helper's
/// report channel, which must close when the program starts).
pub fn null_stdin() -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    use std::os::fd::AsRawFd;
    // SAFETY: dup2 onto descriptor 0, which this process owns as its
    // standard input and which nothing in it uses as an `OwnedFd`; the
    // source stays valid for the call.
    let r = unsafe { libc::dup2(null.as_raw_fd(), 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Set the calling thread's filesystem ids (`setfsgid`, then `setfsuid`):
/// file access is then checked as `uid`/`gid` (and the kernel drops the
/// thread's file capabilities), while its real, effective and saved ids —
/// which decide who may signal it or change its limits — stay as they were.
/// `Err` when the kernel did not take them.
pub fn set_fs_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: setfsgid/setfsuid are plain per-thread system calls (glibc
    // does not broadcast them to other threads) that take ids by value;
    // calling each twice reads back what is in force.
    let (g, u) = unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        (libc::setfsgid(gid) as u32, libc::setfsuid(uid) as u32)
    };
    if g == gid && u == uid {
        Ok(())
    } else {
        Err(io::Error::other("the filesystem ids did not change"))
    }
}

/// The calling thread's filesystem user id (what file access is checked
/// as: its effective uid unless [`set_fs_ids`] changed it).
pub fn fs_uid() -> u32 {
    // SAFETY: setfsuid with an invalid id (-1) changes nothing and returns
    // the thread's current filesystem uid.
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

/// Install `prog` as this thread's (and its future children's) seccomp
/// filter. `no_new_privs` must be set already.
pub fn install_seccomp(prog: &[crate::seccomp::Insn]) -> io::Result<()> {
    let mut filters: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: u16::try_from(filters.len()).map_err(io::Error::other)?,
        filter: filters.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `filters`, alive and unmoved for the call;
    // the kernel copies the program before returning.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Take ownership of a listening socket this process inherited at exec
/// (socket activation, or a socket its parent held across a restart), so it
/// is closed exactly once, and mark it close-on-exec. Refused — `Err`, the
/// descriptor left alone — unless `fd` (≥ 3) is an open socket in the
/// listening state: a number that names anything else (a file this process
/// opened, a socket it created) is never adopted. Each descriptor is
/// adopted at most once per process.
pub fn adopt_inherited_listener(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    static ADOPTED: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());
    if fd < 3 {
        return Err(io::Error::other(format!(
            "descriptor {fd} is a standard stream, not an inherited socket"
        )));
    }
    let mut adopted = ADOPTED.lock().unwrap_or_else(|p| p.into_inner());
    if adopted.contains(&fd) {
        return Err(io::Error::other(format!(
            "descriptor {fd} was adopted already"
        )));
    }
    // SAFETY: the borrow lives only for the checks below; fcntl(F_GETFD)
    // first proves the number names an open descriptor (EBADF otherwise).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = rustix::fs::fstat(borrowed).map_err(io::Error::from)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::other(format!("descriptor {fd} is not a socket")));
    }
    if !rustix::net::sockopt::socket_acceptconn(borrowed).map_err(io::Error::from)? {
        return Err(io::Error::other(format!(
            "descriptor {fd} is a socket but not listening"
        )));
    }
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC).map_err(io::Error::from)?;
    adopted.push(fd);
    // SAFETY: the descriptor is open and a listening socket, which nothing
    // in this process created: callers adopt only the numbers their parent
    // named in the environment at exec, before opening sockets of their own
    // (`decnet_server::activation`), and `ADOPTED` makes each number owned
    // once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Remove `keys` from this process's environment, if it has a single
/// thread; returns whether it did. Why: the variables a daemon was handed
/// its sockets with (`LISTEN_*`, `DECNET_HELD_*`) must not reach its
/// children, which would otherwise try to adopt descriptors they never had.
pub fn remove_env_while_single_threaded(keys: &[&str]) -> bool {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(usize::MAX);
    if threads != 1 {
        return false;
    }
    for k in keys {
        // SAFETY: `remove_var` races only with other threads reading or
        // writing the environment; this process has one thread (checked
        // just above, and a thread cannot appear but by this one's doing).
        unsafe { std::env::remove_var(k) };
    }
    true
}
