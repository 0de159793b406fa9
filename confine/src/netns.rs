//! A network of its own for a decky: a user namespace, created after the
//! uid drop (so it needs no privilege on the host and grants none there),
//! holding a network namespace with nothing in it but loopback.
//!
//! The decky then cannot connect to the host's loopback, the master, the
//! other deckies or the internet, and cannot bind a host port; the
//! listening sockets the agent bound for it and handed in keep working,
//! because sockets belong to the namespace they were made in. Its uid maps
//! to itself inside (never to root), so the program runs without any
//! capability, even in its own namespaces.

use std::io;

use serde::{Deserialize, Serialize};

/// Where a decky's network lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeckyNetwork {
    /// The host's network (uncontained: it reaches whatever the host does).
    #[default]
    Host,
    /// A network namespace of its own, loopback only.
    Own,
}

/// `RTM_NEWLINK`.
const RTM_NEWLINK: u16 = 16;
/// `NLM_F_REQUEST | NLM_F_ACK`.
const REQUEST_ACK: u16 = 1 | 4;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `IFF_UP`.
const IFF_UP: u32 = 1;

/// The `RTM_NEWLINK` request that sets interface `index` up (an `nlmsghdr`
/// and an `ifinfomsg`, native endian). Pure: unit-tested.
pub fn link_up_request(index: i32, seq: u32) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0..4].copy_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes()); // nlmsg_type
    m[6..8].copy_from_slice(&REQUEST_ACK.to_ne_bytes()); // nlmsg_flags
    m[8..12].copy_from_slice(&seq.to_ne_bytes()); // nlmsg_seq
    // nlmsg_pid 0: the kernel; ifi_family AF_UNSPEC, ifi_type 0.
    m[20..24].copy_from_slice(&index.to_ne_bytes()); // ifi_index
    m[24..28].copy_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    m[28..32].copy_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    m
}

/// The kernel's answer to a request: `Ok` for an acknowledgement, the errno
/// it carries otherwise. Pure: unit-tested.
pub fn ack_of(answer: &[u8]) -> io::Result<()> {
    if answer.len() < 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short netlink answer",
        ));
    }
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if kind != NLMSG_ERROR {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink answer type {kind}"),
        ));
    }
    match i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

/// Set the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};
    // Protocol 0 is NETLINK_ROUTE.
    let sock = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    // In a new network namespace loopback is the first interface.
    let index = rustix::net::netdevice::name_to_index(&sock, "lo").unwrap_or(1);
    let req = link_up_request(i32::try_from(index).unwrap_or(1), 1);
    rustix::net::sendto(
        &sock,
        &req,
        SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )?;
    let mut answer = [0u8; 256];
    let (n, _) = rustix::net::recv(&sock, &mut answer, RecvFlags::empty())?;
    ack_of(&answer[..n])
}

/// Give this (single-threaded, already unprivileged) process a user
/// namespace of its own holding a network namespace with loopback up, with
/// `uid`/`gid` mapped to themselves; with `scratch`, a mount namespace too,
/// where `/tmp`, `/var/tmp` and `/dev/shm` are its own (see
/// [`crate::scratch`]); with `processes` (and `scratch`), a PID namespace
/// for its children (see [`crate::pidns`]).
pub fn isolate(uid: u32, gid: u32, scratch: Option<u64>, processes: bool) -> io::Result<()> {
    crate::raw::unshare_user_and_network(scratch.is_some(), processes && scratch.is_some())?;
    // The creator holds every capability in the new user namespace until
    // it executes its program: enough to set its own loopback up.
    loopback_up()?;
    // A process that switched ids is not dumpable, which leaves its
    // /proc/self files to root: it could not write its own maps. Dumpable
    // only while it does (its program's exec decides afresh).
    use rustix::process::{DumpableBehavior, dumpable_behavior, set_dumpable_behavior};
    let before = dumpable_behavior().unwrap_or(DumpableBehavior::NotDumpable);
    set_dumpable_behavior(DumpableBehavior::Dumpable)?;
    let maps = (|| {
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))?;
        std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))
    })();
    set_dumpable_behavior(before)?;
    maps?;
    match scratch {
        Some(bytes) => crate::scratch::mount_private(uid, gid, bytes),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_up_request_is_an_rtm_newlink_with_iff_up() {
        let m = link_up_request(1, 7);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 16);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 5);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(m[24..28].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(m[28..32].try_into().unwrap()), 1);
    }

    #[test]
    fn acks_and_errors_are_read_from_the_answer() {
        let mut a = [0u8; 36];
        a[4..6].copy_from_slice(&2u16.to_ne_bytes());
        assert!(ack_of(&a).is_ok());
        a[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(ack_of(&a).unwrap_err().raw_os_error(), Some(1));
        assert!(ack_of(&a[..10]).is_err());
        a[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert!(ack_of(&a).is_err());
    }
}
