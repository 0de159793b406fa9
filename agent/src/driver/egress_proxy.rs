//! The shepherd's end of a decky's egress paths ([`decnet_confine::egress`]):
//! it accepts on the listeners the confinement helper bound in the decky's
//! namespace, checks each connection's destination (the address the decky
//! asked for) against the allow-list, and connects to it from the host.
//!
//! Plain threads: a shepherd is a small synchronous process, and a decky's
//! outbound connections are few (at most [`MAX_CONNECTIONS`] at once).

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use decnet_confine::egress::{EgressRule, allowed};
use serde::{Deserialize, Serialize};

/// Outbound connections of one decky open at once; more are closed.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection to an allowed destination may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a decky's egress paths saw, for `/status` and the metrics.
#[derive(Debug, Default)]
pub struct EgressCounters {
    /// Connections to an allowed destination, opened.
    pub allowed: AtomicU64,
    /// Connections that reached a path but not an allowed destination
    /// (e.g. the path's port on another address).
    pub refused: AtomicU64,
    /// Allowed connections that could not be opened (unreachable, or
    /// [`MAX_CONNECTIONS`] already open).
    pub failed: AtomicU64,
}

/// The network figures of a decky that its shepherd keeps in
/// `run/<decky>.net` (JSON) for the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkFigures {
    /// Attempts to reach anything outside the allow-list: connections its
    /// namespace had no route for or refused itself (another port of an
    /// allowed host, its own loopback), plus [`EgressCounters::refused`].
    pub forbidden: u64,
    /// Connections through the allow-list.
    pub egress_allowed: u64,
    /// Allowed connections that could not be opened.
    pub egress_failed: u64,
}

/// Serve `listeners` (from the decky's namespace) for `rules`, counting in
/// `counters`; returns at once (the threads live as long as the shepherd).
pub fn serve(listeners: Vec<OwnedFd>, rules: Vec<EgressRule>, counters: Arc<EgressCounters>) {
    let rules = Arc::new(rules);
    let open = Arc::new(AtomicUsize::new(0));
    for fd in listeners {
        let listener = TcpListener::from(fd);
        let (rules, counters, open) = (rules.clone(), counters.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let dest = match conn.local_addr() {
                    Ok(d) => d,
                    Err(_) => continue,
                };
                if !allowed(&rules, dest) {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::SeqCst);
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let (counters, open) = (counters.clone(), open.clone());
                std::thread::spawn(move || {
                    relay(conn, dest, &counters);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
}

/// Connect to `dest` from the host and copy both ways until both ends
/// closed.
fn relay(inner: TcpStream, dest: SocketAddr, counters: &EgressCounters) {
    let dest = match dest {
        // A v4 destination asked through a v6 socket.
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => dest,
        },
        v4 => v4,
    };
    let Ok(outer) = TcpStream::connect_timeout(&dest, CONNECT_TIMEOUT) else {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    counters.allowed.fetch_add(1, Ordering::Relaxed);
    let (Ok(inner2), Ok(outer2)) = (inner.try_clone(), outer.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || copy_then_close(inner2, outer2));
    copy_then_close(outer, inner);
    let _ = up.join();
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_destination_off_the_list_is_closed_at_once_and_counted() {
        // A path listener standing in for the decky's; without a namespace
        // the address a connection was made to is the path's own, which the
        // list (another host) does not hold. Relaying is tested end to end
        // (containment_e2e), where the namespace exists.
        let path = TcpListener::bind("127.0.0.1:0").unwrap();
        let path_addr = path.local_addr().unwrap();
        let counters = Arc::new(EgressCounters::default());
        let rules = vec![EgressRule::new("192.0.2.1", path_addr.port()).unwrap()];
        serve(vec![OwnedFd::from(path)], rules, counters.clone());
        let mut c = TcpStream::connect(path_addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf).unwrap(), 0, "closed at once");
        assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
        assert_eq!(counters.allowed.load(Ordering::Relaxed), 0);
    }
}
