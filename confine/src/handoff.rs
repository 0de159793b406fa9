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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};

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

/// Send `bytes` over the stream socket `chan` with `fds` attached to its
/// first byte (`SCM_RIGHTS`); the rest follows as plain stream data.
pub fn send_with_fds(chan: &impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors to send"));
    }
    let first = bytes.len().min(1);
    rustix::net::sendmsg(
        chan,
        &[io::IoSlice::new(&bytes[..first])],
        &mut control,
        SendFlags::empty(),
    )?;
    let mut rest = &bytes[first..];
    while !rest.is_empty() {
        let n = rustix::io::write(chan, rest)?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Receive up to `max` bytes from `chan` with the descriptors attached
/// (at most `max_fds`, close-on-exec): one read, so `bytes` may be short
/// of what the sender sent (the rest is plain stream data). Empty at EOF.
pub fn recv_with_fds(
    chan: &impl AsFd,
    max: usize,
    max_fds: usize,
) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    let mut space =
        vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(max_fds.max(1)))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = vec![0u8; max.max(1)];
    let got = rustix::net::recvmsg(
        chan,
        &mut [io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    buf.truncate(got.bytes);
    Ok((buf, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_travel_with_the_first_byte() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        send_with_fds(&a, b"hello", &[f.as_fd()]).unwrap();
        drop(a);
        let (first, fds) = recv_with_fds(&b, 1, 4).unwrap();
        assert_eq!((first.as_slice(), fds.len()), (&b"h"[..], 1));
        let (rest, none) = recv_with_fds(&b, 64, 4).unwrap();
        assert_eq!((rest.as_slice(), none.len()), (&b"ello"[..], 0));
        assert!(recv_with_fds(&b, 64, 4).unwrap().0.is_empty());
    }

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
