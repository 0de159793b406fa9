//! Egress allow-list of a decky with a network of its own: nothing leaves
//! its namespace but connections to the destinations its config names
//! (`egress`: a CIDR and a TCP port), and those go through its shepherd.
//!
//! How, without any privilege on the host: in the decky's namespace (while
//! the confinement helper still holds its capabilities there) each allowed
//! network gets a `local` route to loopback, and a listener is bound on each
//! allowed port. A connection the decky makes to an allowed destination
//! lands on that listener (the socket's local address is the destination
//! it asked for); the listeners travel to the shepherd, outside the
//! namespace, which checks the destination against the list and connects
//! to it from the host. Anything else has no route: the decky's `connect`
//! fails at once with `ENETUNREACH`, and the kernel counts it
//! (`OutNoRoutes` in the namespace's `/proc/<pid>/net/snmp`). A connection
//! to an address that is routed inside the namespace but has no listener
//! there — an allowed host on another port, a port of the namespace's own
//! loopback — is refused by the namespace's own stack, and the kernel counts
//! that too (TCP `AttemptFails`: a connection that never left SYN-SENT;
//! allowed connections always land on a listener, so inside the namespace
//! only a forbidden one fails that way). Both make the forbidden attempts
//! ([`forbidden_attempts`]).

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};

use serde::{Deserialize, Serialize};

/// One allowed destination: a network and a TCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRule {
    /// The network's address (host bits zero).
    pub net: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The TCP port.
    pub port: u16,
}

/// Why an egress entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRule(pub String);

/// Parse `a.b.c.d/len`, `a:b::/len` or a bare address (a single host).
/// Pure: unit-tested.
pub fn parse_network(s: &str) -> Result<(IpAddr, u8), BadRule> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (
            a,
            Some(
                p.parse::<u8>()
                    .map_err(|_| BadRule(format!("{s:?}: the prefix length is not a number")))?,
            ),
        ),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| BadRule(format!("{s:?} is not an address or network (CIDR)")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return Err(BadRule(format!("{s:?}: the prefix length is over {max}")));
    }
    if masked(addr, prefix) != addr {
        return Err(BadRule(format!(
            "{s:?} has host bits set (the network is {}/{prefix})",
            masked(addr, prefix)
        )));
    }
    Ok((addr, prefix))
}

/// `addr` with every bit past `prefix` cleared.
fn masked(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

impl EgressRule {
    /// The rule for network `to` (CIDR) and `port`, refusing destinations
    /// an allow-list must never open: the host's own loopback, unspecified
    /// and multicast addresses, and port 0.
    pub fn new(to: &str, port: u16) -> Result<EgressRule, BadRule> {
        let (net, prefix) = parse_network(to)?;
        if port == 0 {
            return Err(BadRule("port 0 is no destination".into()));
        }
        let touches = |other: IpAddr, other_prefix: u8| {
            net.is_ipv4() == other.is_ipv4()
                && masked(net, prefix.min(other_prefix)) == masked(other, prefix.min(other_prefix))
        };
        let forbidden: [(IpAddr, u8, &str); 5] = [
            ([127, 0, 0, 0].into(), 8, "the host's loopback"),
            ([0, 0, 0, 0].into(), 8, "unspecified addresses"),
            ([224, 0, 0, 0].into(), 4, "multicast"),
            (
                std::net::Ipv6Addr::LOCALHOST.into(),
                128,
                "the host's loopback",
            ),
            (
                "ff00::"
                    .parse::<IpAddr>()
                    .unwrap_or(IpAddr::V4([0; 4].into())),
                8,
                "multicast",
            ),
        ];
        for (other, other_prefix, what) in forbidden {
            if touches(other, other_prefix) {
                return Err(BadRule(format!(
                    "{to} reaches {what}: a decky may never connect there"
                )));
            }
        }
        if net.is_ipv6() && prefix == 0 {
            return Err(BadRule(format!(
                "{to} reaches the host's loopback: a decky may never connect there"
            )));
        }
        Ok(EgressRule { net, prefix, port })
    }

    /// Whether `dest` is this rule's.
    pub fn allows(&self, dest: SocketAddr) -> bool {
        let ip = match dest.ip() {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        dest.port() == self.port
            && ip.is_ipv4() == self.net.is_ipv4()
            && masked(ip, self.prefix) == self.net
    }
}

/// Whether any of `rules` allows `dest`.
pub fn allowed(rules: &[EgressRule], dest: SocketAddr) -> bool {
    rules.iter().any(|r| r.allows(dest))
}

/// `RTM_NEWROUTE`.
const RTM_NEWROUTE: u16 = 24;
/// `NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE`.
const CREATE_ACK: u16 = 1 | 4 | 0x200 | 0x400;
/// `RT_TABLE_LOCAL`.
const RT_TABLE_LOCAL: u8 = 255;
/// `RTPROT_STATIC`.
const RTPROT_STATIC: u8 = 4;
/// `RT_SCOPE_HOST`.
const RT_SCOPE_HOST: u8 = 254;
/// `RTN_LOCAL`.
const RTN_LOCAL: u8 = 2;
/// `RTA_DST`.
const RTA_DST: u16 = 1;
/// `RTA_OIF`.
const RTA_OIF: u16 = 4;

/// The `RTM_NEWROUTE` request for `local <net>/<prefix> dev <oif>` in the
/// local table (an `nlmsghdr`, an `rtmsg`, `RTA_DST` and `RTA_OIF`,
/// native endian). Pure: unit-tested.
pub fn local_route_request(net: IpAddr, prefix: u8, oif: u32, seq: u32) -> Vec<u8> {
    let (family, addr): (u8, Vec<u8>) = match net {
        IpAddr::V4(a) => (2, a.octets().to_vec()),
        IpAddr::V6(a) => (10, a.octets().to_vec()),
    };
    let attr = |kind: u16, data: &[u8]| {
        let len = 4 + data.len();
        let mut a = Vec::with_capacity(len.next_multiple_of(4));
        a.extend_from_slice(&(len as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        a.resize(len.next_multiple_of(4), 0);
        a
    };
    let mut body = vec![
        family,
        prefix,
        0, // rtm_src_len
        0, // rtm_tos
        RT_TABLE_LOCAL,
        RTPROT_STATIC,
        RT_SCOPE_HOST,
        RTN_LOCAL,
        0,
        0,
        0,
        0, // rtm_flags
    ];
    body.extend(attr(RTA_DST, &addr));
    body.extend(attr(RTA_OIF, &oif.to_ne_bytes()));
    let len = 16 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
    m.extend_from_slice(&CREATE_ACK.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    m.extend(body);
    m
}

/// In the current (the decky's) network namespace, with its capabilities
/// there: route every network of `rules` to loopback and bind a listener
/// per distinct destination (a single host's address, else the wildcard)
/// and port. The listeners are close-on-exec: they go to the shepherd,
/// never to the program.
pub fn open_paths(rules: &[EgressRule]) -> io::Result<Vec<TcpListener>> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};
    let sock = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    let lo = rustix::net::netdevice::name_to_index(&sock, "lo").unwrap_or(1);
    let mut routed = Vec::new();
    for (seq, r) in rules.iter().enumerate() {
        if routed.contains(&(r.net, r.prefix)) {
            continue;
        }
        routed.push((r.net, r.prefix));
        let req = local_route_request(r.net, r.prefix, lo, seq as u32 + 1);
        rustix::net::sendto(
            &sock,
            &req,
            SendFlags::empty(),
            &netlink::SocketAddrNetlink::new(0, 0),
        )?;
        let mut answer = [0u8; 512];
        let (n, _) = rustix::net::recv(&sock, &mut answer, RecvFlags::empty())?;
        crate::netns::ack_of(&answer[..n])
            .map_err(|e| io::Error::new(e.kind(), format!("route {}/{}: {e}", r.net, r.prefix)))?;
    }
    let mut listeners = Vec::new();
    for addr in listen_addrs(rules) {
        let l = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("listen on {addr}: {e}")))?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// Where the paths of `rules` listen: per port and family, the wildcard
/// when a rule of it spans more than one host, else each host's address.
/// Pure: unit-tested.
pub fn listen_addrs(rules: &[EgressRule]) -> Vec<SocketAddr> {
    let single = |r: &EgressRule| (r.net.is_ipv4() && r.prefix == 32) || r.prefix == 128;
    let mut out: Vec<SocketAddr> = Vec::new();
    for r in rules {
        let wide = rules
            .iter()
            .any(|o| o.port == r.port && o.net.is_ipv4() == r.net.is_ipv4() && !single(o));
        let ip = match (wide, r.net) {
            (false, ip) => ip,
            (true, IpAddr::V4(_)) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            (true, IpAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let addr = SocketAddr::new(ip, r.port);
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// Connections the process `pid`'s network namespace had no route for
/// (`OutNoRoutes` of IPv4 and IPv6, `/proc/<pid>/net/snmp`, `snmp6`) or
/// refused itself (TCP `AttemptFails`, IPv4 and IPv6 alike). For a decky
/// with a network of its own, every one is a forbidden attempt to reach
/// out (see the module docs).
pub fn forbidden_attempts(pid: u32) -> Option<u64> {
    let v4 = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).ok()?;
    let v6 = std::fs::read_to_string(format!("/proc/{pid}/net/snmp6")).unwrap_or_default();
    Some(
        out_no_routes(&v4).unwrap_or(0)
            + out_no_routes6(&v6).unwrap_or(0)
            + tcp_attempt_fails(&v4).unwrap_or(0),
    )
}

/// `AttemptFails` of the `Tcp:` table of `/proc/net/snmp` (TCP of both
/// families). Pure: unit-tested.
pub fn tcp_attempt_fails(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let at = names.split_whitespace().position(|n| n == "AttemptFails")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `OutNoRoutes` of the `Ip:` table of `/proc/net/snmp`. Pure: unit-tested.
pub fn out_no_routes(snmp: &str) -> Option<u64> {
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let names = ip.next()?;
    let values = ip.next()?;
    let at = names.split_whitespace().position(|n| n == "OutNoRoutes")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `Ip6OutNoRoutes` of `/proc/net/snmp6`. Pure: unit-tested.
pub fn out_no_routes6(snmp6: &str) -> Option<u64> {
    snmp6.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == "Ip6OutNoRoutes").then(|| f.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_strictly() {
        assert_eq!(parse_network("10.0.0.0/8"), Ok(([10, 0, 0, 0].into(), 8)));
        assert_eq!(
            parse_network("203.0.113.7"),
            Ok(([203, 0, 113, 7].into(), 32))
        );
        assert_eq!(
            parse_network("2001:db8::/32"),
            Ok(("2001:db8::".parse().unwrap(), 32))
        );
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "x/8",
            "10.0.0.0/x",
            "",
            "::/129",
        ] {
            assert!(parse_network(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_refuse_the_hosts_loopback_and_allow_only_their_destinations() {
        for bad in [
            "127.0.0.1",
            "127.0.0.0/8",
            "0.0.0.0/0",
            "::1",
            "::/0",
            "224.0.0.0/4",
            "0.0.0.0/1",
        ] {
            assert!(EgressRule::new(bad, 80).is_err(), "{bad}");
        }
        assert!(EgressRule::new("10.0.0.1", 0).is_err());
        let r = EgressRule::new("10.1.0.0/16", 443).unwrap();
        assert!(r.allows("10.1.2.3:443".parse().unwrap()));
        assert!(r.allows("[::ffff:10.1.2.3]:443".parse().unwrap()));
        assert!(!r.allows("10.1.2.3:80".parse().unwrap()));
        assert!(!r.allows("10.2.0.1:443".parse().unwrap()));
        assert!(!r.allows("127.0.0.1:443".parse().unwrap()));
        let v6 = EgressRule::new("2001:db8::/64", 53).unwrap();
        assert!(v6.allows("[2001:db8::5]:53".parse().unwrap()));
        assert!(!v6.allows("[2001:db9::5]:53".parse().unwrap()));
        assert!(!allowed(&[r, v6], "192.0.2.1:443".parse().unwrap()));
    }

    #[test]
    fn paths_listen_on_the_host_or_the_wildcard_of_their_port() {
        let r = |to: &str, port| EgressRule::new(to, port).unwrap();
        let got = listen_addrs(&[
            r("10.0.0.5", 80),
            r("10.0.0.6", 80),
            r("10.0.0.5", 443),
            r("10.9.0.0/16", 443),
            r("2001:db8::1", 53),
        ]);
        let want: Vec<SocketAddr> = [
            "10.0.0.5:80",
            "10.0.0.6:80",
            "0.0.0.0:443",
            "[2001:db8::1]:53",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_route_request_is_a_local_route_to_loopback() {
        let m = local_route_request([10, 1, 0, 0].into(), 16, 1, 9);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 24);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x605);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 9);
        // rtmsg: AF_INET, /16, local table, static, host scope, RTN_LOCAL.
        assert_eq!(&m[16..24], &[2, 16, 0, 0, 255, 4, 254, 2]);
        // RTA_DST 10.1.0.0, RTA_OIF 1.
        assert_eq!(&m[28..32], &[8, 0, 1, 0]);
        assert_eq!(&m[32..36], &[10, 1, 0, 0]);
        assert_eq!(&m[36..40], &[8, 0, 4, 0]);
        assert_eq!(u32::from_ne_bytes(m[40..44].try_into().unwrap()), 1);
        assert_eq!(m.len(), 44);
        let v6 = local_route_request("2001:db8::".parse().unwrap(), 64, 1, 1);
        assert_eq!(v6[16], 10);
        assert_eq!(v6.len(), 16 + 12 + 20 + 8);
    }

    #[test]
    fn forbidden_attempts_are_read_from_the_kernels_counters() {
        let snmp = "Ip: Forwarding DefaultTTL InReceives OutNoRoutes ReasmTimeout\n\
                    Ip: 1 64 0 4 0\nIcmp: InMsgs\nIcmp: 0\n";
        assert_eq!(out_no_routes(snmp), Some(4));
        assert_eq!(out_no_routes("Icmp: x\nIcmp: 1\n"), None);
        let snmp6 = "Ip6InReceives                   \t0\nIp6OutNoRoutes                  \t3\n";
        assert_eq!(out_no_routes6(snmp6), Some(3));
        let tcp = "Ip: Forwarding OutNoRoutes\nIp: 1 0\n\
                   Tcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens AttemptFails EstabResets\n\
                   Tcp: 1 200 9 2 5 0\nUdp: InDatagrams\nUdp: 0\n";
        assert_eq!(tcp_attempt_fails(tcp), Some(5));
        assert_eq!(tcp_attempt_fails(snmp), None);
        // This process's own namespace has the file.
        assert!(forbidden_attempts(std::process::id()).is_some());
    }
}
