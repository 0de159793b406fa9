//! Listening sockets a daemon inherits instead of binding, so that its port
//! is never free while it restarts: nothing else on the host (a decky, a
//! local user) can take it in the gap and keep the real daemon out.
//!
//! Two ways in, both read once at start by [`adopt_inherited`]:
//! - systemd's socket activation (`LISTEN_PID`, `LISTEN_FDS`,
//!   `LISTEN_FDNAMES`, descriptors from 3): the packaged units
//!   `decnet-agent.socket` and `decnet-updater.socket` hold the ports from
//!   boot and name them `agent` and `updater`;
//! - [`HELD_SOCKETS_ENV`]: sockets a decnet process kept open for its
//!   successor — the updater's own socket across its self-update's re-exec,
//!   and the agent's socket, which an updater that spawns the agent holds
//!   for each agent it starts. Addressed to one process ([`HELD_FOR_ENV`]:
//!   the process itself after an exec, or a child of it), never to a
//!   grandchild that inherited the environment.
//!
//! [`listener`] then gives a server its socket by name: the inherited one
//! when there is one (which must be on the address asked for: a mismatch is
//! an error naming both, not a silent second socket), else a fresh bind.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

/// `name=fd,name=fd`: the sockets a decnet process kept for its successor.
pub const HELD_SOCKETS_ENV: &str = "DECNET_HELD_SOCKETS";
/// The pid [`HELD_SOCKETS_ENV`] is meant for (itself after an exec, or its
/// direct child).
pub const HELD_FOR_ENV: &str = "DECNET_HELD_FOR";

/// What is wrong with an inherited socket or its environment.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// An environment variable does not parse.
    #[error("{var}={value:?}: {why}")]
    Malformed {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A named descriptor is not a listening socket this process can own.
    #[error("inherited socket {name:?} (descriptor {fd}): {source}")]
    Adopt {
        /// Its name.
        name: String,
        /// Its number.
        fd: i32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The inherited socket is not on the address the daemon was told to use.
    #[error(
        "the {name} socket handed in is on {inherited}, but this daemon was told to listen on {requested}: \
         make them agree (the socket unit's ListenStream=, e.g. `systemctl edit {name}.socket`, or --host/--port)"
    )]
    Mismatch {
        /// The socket's name.
        name: String,
        /// Where it listens.
        inherited: SocketAddr,
        /// Where the daemon was told to listen.
        requested: SocketAddr,
    },
    /// Binding a fresh socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The sockets systemd passed (`LISTEN_*`), as (name, descriptor). Pure:
/// `None` values are unset variables; sockets for another pid are not ours.
pub fn parse_systemd(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    my_pid: u32,
) -> Result<Vec<(String, i32)>, ActivationError> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid.trim().parse().map_err(|_| ActivationError::Malformed {
        var: "LISTEN_PID",
        value: pid.into(),
        why: "not a process id",
    })?;
    if pid != my_pid {
        return Ok(Vec::new());
    }
    let n: i32 = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=1024).contains(n))
        .ok_or_else(|| ActivationError::Malformed {
            var: "LISTEN_FDS",
            value: fds.into(),
            why: "not a descriptor count",
        })?;
    let names: Vec<&str> = listen_fdnames
        .map(|s| s.split(':').collect())
        .unwrap_or_default();
    let named = names.len() == n as usize;
    Ok((0..n)
        .map(|i| {
            let name = if named { names[i as usize] } else { "unknown" };
            (name.to_string(), 3 + i)
        })
        .collect())
}

/// The sockets a decnet process kept for its successor
/// ([`HELD_SOCKETS_ENV`]), as (name, descriptor). Pure: meant for
/// `held_for`, which must be this process (`my_pid`, after an exec) or its
/// parent (`parent_pid`, a spawned child).
pub fn parse_held(
    held_for: Option<&str>,
    held: Option<&str>,
    my_pid: u32,
    parent_pid: u32,
) -> Result<Vec<(String, i32)>, ActivationError> {
    let (Some(pid), Some(held)) = (held_for, held) else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid.trim().parse().map_err(|_| ActivationError::Malformed {
        var: HELD_FOR_ENV,
        value: pid.into(),
        why: "not a process id",
    })?;
    if pid != my_pid && pid != parent_pid {
        return Ok(Vec::new());
    }
    held.split(',')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            entry
                .split_once('=')
                .and_then(|(name, fd)| {
                    let fd: i32 = fd.parse().ok().filter(|fd| *fd >= 3)?;
                    (!name.is_empty()).then(|| (name.to_string(), fd))
                })
                .ok_or_else(|| ActivationError::Malformed {
                    var: HELD_SOCKETS_ENV,
                    value: held.into(),
                    why: "expected name=descriptor,… with descriptors from 3",
                })
        })
        .collect()
}

/// The environment that hands `sockets` (name, descriptor) to `for_pid`
/// (this process before it re-executes, or the parent of the child about
/// to start). The descriptors must be open without close-on-exec
/// ([`inheritable`]). Pure.
pub fn held_env(sockets: &[(&str, i32)], for_pid: u32) -> [(String, String); 2] {
    let list: Vec<String> = sockets.iter().map(|(n, fd)| format!("{n}={fd}")).collect();
    [
        (HELD_SOCKETS_ENV.into(), list.join(",")),
        (HELD_FOR_ENV.into(), for_pid.to_string()),
    ]
}

/// A copy of `fd` that survives an exec (no close-on-exec), for
/// [`held_env`]; the original keeps its flags.
pub fn inheritable(fd: &impl AsFd) -> io::Result<OwnedFd> {
    let copy = rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), 3)?;
    rustix::io::fcntl_setfd(&copy, rustix::io::FdFlags::empty())?;
    Ok(copy)
}

static INHERITED: Mutex<Option<HashMap<String, OwnedFd>>> = Mutex::new(None);

fn inherited() -> std::sync::MutexGuard<'static, Option<HashMap<String, OwnedFd>>> {
    INHERITED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Take over the sockets this process inherited (either way in), once: call
/// it first thing in `main`, before the process opens sockets of its own or
/// starts a thread. Each becomes close-on-exec and the variables naming
/// them leave the environment (deckies, Docker and other children never see
/// either). Returns their names; later calls return the names not yet
/// taken.
pub fn adopt_inherited() -> Result<Vec<String>, ActivationError> {
    let mut guard = inherited();
    if let Some(map) = guard.as_ref() {
        return Ok(map.keys().cloned().collect());
    }
    let var = |k: &str| std::env::var(k).ok();
    let me = std::process::id();
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    let mut found = parse_systemd(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        me,
    )?;
    found.extend(parse_held(
        var(HELD_FOR_ENV).as_deref(),
        var(HELD_SOCKETS_ENV).as_deref(),
        me,
        parent,
    )?);
    let mut map = HashMap::new();
    for (name, fd) in found {
        let owned = decnet_confine::raw::adopt_inherited_listener(fd).map_err(|source| {
            ActivationError::Adopt {
                name: name.clone(),
                fd,
                source,
            }
        })?;
        tracing::debug!(socket = %name, fd, "inherited a listening socket");
        map.insert(name, owned);
    }
    let names = map.keys().cloned().collect();
    *guard = Some(map);
    // Handed over: no child of this daemon sees them.
    if !decnet_confine::raw::remove_env_while_single_threaded(&[
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        HELD_SOCKETS_ENV,
        HELD_FOR_ENV,
    ]) {
        tracing::debug!("inherited-socket variables left in the environment (threads already run)");
    }
    Ok(names)
}

/// Where a server's socket came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Handed in (socket activation or a held socket).
    Inherited,
    /// Bound by this process.
    Bound,
}

/// Whether an inherited socket on `inherited` serves `requested` (port 0:
/// any port; an unspecified address matches an unspecified one of either
/// family, as systemd's `ListenStream=PORT` binds `[::]`). Pure.
pub fn serves(requested: SocketAddr, inherited: SocketAddr) -> bool {
    let port = requested.port() == 0 || requested.port() == inherited.port();
    let ip = requested.ip() == inherited.ip()
        || (requested.ip().is_unspecified() && inherited.ip().is_unspecified());
    port && ip
}

/// The listening socket of the server `name` on `addr`: the inherited one
/// named `name` when there is one (it must serve `addr`), else a fresh bind
/// (`SO_REUSEADDR`, as every decnet server). Non-blocking either way.
pub fn listener(
    name: &str,
    addr: SocketAddr,
) -> Result<(std::net::TcpListener, Origin), ActivationError> {
    let taken = inherited().as_mut().and_then(|m| m.remove(name));
    if let Some(fd) = taken {
        let l = std::net::TcpListener::from(fd);
        let local = l.local_addr().map_err(|source| ActivationError::Adopt {
            name: name.into(),
            fd: l.as_raw_fd(),
            source,
        })?;
        if !serves(addr, local) {
            return Err(ActivationError::Mismatch {
                name: name.into(),
                inherited: local,
                requested: addr,
            });
        }
        l.set_nonblocking(true)
            .map_err(|source| ActivationError::Bind { addr, source })?;
        return Ok((l, Origin::Inherited));
    }
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    let l = socket
        .and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(1024)
        })
        .and_then(|l| l.into_std())
        .map_err(|source| ActivationError::Bind { addr, source })?;
    Ok((l, Origin::Bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_sockets_are_ours_only_for_our_pid() {
        assert_eq!(
            parse_systemd(Some("42"), Some("2"), Some("agent:extra"), 42).unwrap(),
            vec![("agent".to_string(), 3), ("extra".to_string(), 4)]
        );
        assert!(
            parse_systemd(Some("41"), Some("2"), None, 42)
                .unwrap()
                .is_empty()
        );
        assert!(parse_systemd(None, Some("1"), None, 42).unwrap().is_empty());
        // Names that do not match the count are ignored, as sd_listen_fds does.
        assert_eq!(
            parse_systemd(Some("42"), Some("1"), Some("a:b"), 42).unwrap(),
            vec![("unknown".to_string(), 3)]
        );
        assert!(parse_systemd(Some("x"), Some("1"), None, 42).is_err());
        assert!(parse_systemd(Some("42"), Some("-1"), None, 42).is_err());
        assert!(parse_systemd(Some("42"), Some("99999"), None, 42).is_err());
    }

    #[test]
    fn held_sockets_reach_the_process_itself_or_its_child_only() {
        let env = held_env(&[("updater", 7), ("agent", 9)], 100);
        assert_eq!(env[0].1, "updater=7,agent=9");
        let parse = |me, parent| parse_held(Some(&env[1].1), Some(&env[0].1), me, parent);
        let want = vec![("updater".to_string(), 7), ("agent".to_string(), 9)];
        assert_eq!(parse(100, 1).unwrap(), want, "re-executed");
        assert_eq!(parse(200, 100).unwrap(), want, "spawned child");
        assert!(parse(300, 200).unwrap().is_empty(), "a grandchild");
        for bad in ["agent", "agent=", "=5", "agent=2", "agent=x"] {
            assert!(parse_held(Some("1"), Some(bad), 1, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_inherited_socket_must_serve_the_address_asked_for() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(serves(a("0.0.0.0:8765"), a("[::]:8765")));
        assert!(serves(a("127.0.0.1:0"), a("127.0.0.1:4000")));
        assert!(!serves(a("0.0.0.0:9000"), a("0.0.0.0:8765")));
        assert!(!serves(a("127.0.0.1:8765"), a("0.0.0.0:8765")));
    }

    #[test]
    fn only_a_listening_socket_is_adopted() {
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(decnet_confine::raw::adopt_inherited_listener(file.as_raw_fd()).is_err());
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(decnet_confine::raw::adopt_inherited_listener(s.as_raw_fd()).is_err());
        assert!(decnet_confine::raw::adopt_inherited_listener(1).is_err());
    }
}
