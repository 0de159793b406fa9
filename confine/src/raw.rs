//! The few system calls the confinement needs that have no safe wrapper:
//! the only `unsafe` code of the workspace, kept here, each call with the
//! reason it is sound.
#![allow(unsafe_code)]

use std::io;

/// Give the calling process a new user namespace and a new network
/// namespace (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`), with new mount and
/// IPC namespaces too when `scratch` (`CLONE_NEWNS | CLONE_NEWIPC`: its own
/// `/tmp` and its own System V and POSIX IPC objects, which would otherwise
/// outlive it under its uid).
pub fn unshare_user_and_network(scratch: bool) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    let mut flags = UnshareFlags::NEWUSER | UnshareFlags::NEWNET;
    if scratch {
        flags |= UnshareFlags::NEWNS | UnshareFlags::NEWIPC;
    }
    // SAFETY: the flags touch no memory or descriptor this process shares
    // with other threads (the caller checked it is single-threaded, and
    // neither CLONE_FILES nor CLONE_FS nor CLONE_VM is given): only the
    // namespaces it will execute its program in change (CLONE_NEWNS
    // implies CLONE_FS, which only unshares this process's own root and
    // working directory from threads it does not have).
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
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
