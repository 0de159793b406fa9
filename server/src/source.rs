//! What counts as one "source" for per-source limits.

use std::net::IpAddr;

/// The network source of a connection: an IPv4 address, or the /64 prefix of
/// an IPv6 address (one host commonly owns a whole /64, so keying by the full
/// address would let it open as many "sources" as it likes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    /// The key of a peer address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => SourceKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(IpAddr::V4(v4)),
                // 6to4 (2002::/16): every /48 is one IPv4 address, the one
                // embedded; counted as that address.
                None if v6.segments()[0] == 0x2002 => {
                    let s = v6.segments();
                    let [a, b] = s[1].to_be_bytes();
                    let [c, d] = s[2].to_be_bytes();
                    SourceKey(IpAddr::V4([a, b, c, d].into()))
                }
                None => {
                    let mut seg = v6.segments();
                    seg[4..].fill(0);
                    SourceKey(IpAddr::V6(seg.into()))
                }
            },
        }
    }
}

impl SourceKey {
    /// The network this source belongs to (see [`NetworkKey`]).
    pub fn network(&self) -> NetworkKey {
        match self.0 {
            IpAddr::V4(v4) => {
                let mut o = v4.octets();
                o[3] = 0;
                NetworkKey(IpAddr::V4(o.into()))
            }
            IpAddr::V6(v6) => {
                let mut seg = v6.segments();
                seg[3..].fill(0);
                NetworkKey(IpAddr::V6(seg.into()))
            }
        }
    }
}

/// The network of sources: an IPv4 /24, or an IPv6 /48. Why: one party
/// commonly holds a whole IPv6 /48 (65,536 /64 "sources") or many
/// addresses of a /24, so a per-source cap alone lets it fill every
/// server-wide budget; a cap per network makes that take many networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetworkKey(IpAddr);

impl std::fmt::Display for NetworkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}/24"),
            IpAddr::V6(v6) => write!(f, "{v6}/48"),
        }
    }
}

impl std::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_by_its_64_prefix_and_mapped_v4_by_the_v4_address() {
        let wide = |s: &str| SourceKey::of(s.parse().unwrap()).network().to_string();
        assert_eq!(wide("2001:db8:1:2:aaaa::1"), "2001:db8:1::/48");
        assert_eq!(wide("2001:db8:1:ffff::9"), "2001:db8:1::/48");
        assert_eq!(wide("10.1.2.3"), "10.1.2.0/24");
        assert_eq!(wide("::ffff:10.1.2.3"), "10.1.2.0/24");
        assert_ne!(wide("2001:db8:2::1"), wide("2001:db8:1::1"));
        // 6to4 is its IPv4 address's.
        assert_eq!(wide("2002:0a01:0203:7::1"), "10.1.2.0/24");
        assert_eq!(
            SourceKey::of("2002:0a01:0203:7::1".parse().unwrap()),
            SourceKey::of("10.1.2.3".parse().unwrap())
        );
        let a = SourceKey::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = SourceKey::of("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = SourceKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            SourceKey::of("::ffff:10.0.0.1".parse().unwrap()),
            SourceKey::of("10.0.0.1".parse().unwrap())
        );
        assert_ne!(
            SourceKey::of("10.0.0.1".parse().unwrap()),
            SourceKey::of("10.0.0.2".parse().unwrap())
        );
    }
}
