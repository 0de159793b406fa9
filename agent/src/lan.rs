//! Deckies as hosts on the LAN: the `network` section of a version 2
//! deployment config, its validation, and the placement of each decky at
//! an address of its own on the worker's network (Docker macvlan, ipvlan L2
//! or a bridge).
//!
//! A config is written once for a whole fleet, against one interface and
//! subnet; workers differ. [`place`] maps it onto this worker: when the named
//! parent interface does not exist here, or carries an address outside the
//! config's subnet, the deckies go on the worker's own interface
//! (`--decky-interface`, else the default-route one) and subnet instead —
//! each configured address translated by its offset in the subnet, or,
//! when that is taken or absent, allocated from the range deterministically
//! (starting at a hash of the decky's name). A decky keeps the address it
//! had on this worker across redeploys. Never the gateway, the network or
//! broadcast address, or one of the worker's own addresses.
//!
//! Pure but for [`HostNet::read`], which asks `ip -j` for the interfaces
//! and the default route.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, DeckyConfig};

/// An IPv4 subnet (`10.0.0.0/24`); the address is the network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// The subnet of `addr`/`prefix` (host bits cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        if prefix > 32 {
            return None;
        }
        let mask = Self::mask_of(prefix);
        Some(Ipv4Net {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many addresses it spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !Self::mask_of(self.prefix))
    }

    /// Whether `a` is inside.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & Self::mask_of(self.prefix) == u32::from(self.network)
    }

    /// Whether `other` lies wholly inside.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// `a`'s offset from the network address (`None` outside).
    pub fn offset_of(&self, a: Ipv4Addr) -> Option<u64> {
        self.contains(a)
            .then(|| u64::from(u32::from(a) - u32::from(self.network)))
    }

    /// The address at `offset` (`None` past the end).
    pub fn at(&self, offset: u64) -> Option<Ipv4Addr> {
        (offset < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) + offset as u32))
    }

    /// Whether `a` may be given to a host: inside, and neither the network
    /// nor the broadcast address (for prefixes up to /30).
    pub fn is_host(&self, a: Ipv4Addr) -> bool {
        self.contains(a) && (self.prefix >= 31 || (a != self.network && a != self.broadcast()))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a subnet (expected A.B.C.D/N)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{p:?} is not a prefix length (0-32)"))?;
        let net = Ipv4Net::new(addr, prefix).ok_or_else(|| format!("{s:?} is not a subnet"))?;
        if net.network != addr {
            return Err(format!("{s:?} has host bits set (the subnet is {net})"));
        }
        Ok(net)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How deckies join the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LanMode {
    /// Each decky a MAC and an address of its own on the parent's segment.
    Macvlan,
    /// Addresses of their own on the parent's segment, sharing its MAC (L2).
    Ipvlan,
    /// A Docker bridge on the worker only (no parent).
    Bridge,
}

impl LanMode {
    /// The Docker network driver.
    pub fn driver(self) -> &'static str {
        match self {
            LanMode::Macvlan => "macvlan",
            LanMode::Ipvlan => "ipvlan",
            LanMode::Bridge => "bridge",
        }
    }
}

/// The `network` section of a version 2 config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// `macvlan`, `ipvlan` or `bridge`.
    pub mode: LanMode,
    /// The parent interface (macvlan and ipvlan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The subnet deckies get addresses in.
    pub subnet: Ipv4Net,
    /// Its gateway.
    pub gateway: Ipv4Addr,
    /// Where addresses are allocated for deckies that name none (default:
    /// the whole subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Ipv4Net>,
}

/// The network as it is set up on this worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedNetwork {
    /// Mode.
    pub mode: LanMode,
    /// Parent interface on this worker (none for a bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Subnet.
    pub subnet: Ipv4Net,
    /// Gateway.
    pub gateway: Ipv4Addr,
    /// Allocation range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Ipv4Net>,
}

/// Where one decky sits on the LAN (set by the agent, never by the config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanPlacement {
    /// The network.
    pub network: ResolvedNetwork,
    /// Its address.
    pub address: Ipv4Addr,
    /// Its MAC (macvlan, when the config gave one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// How a config was mapped onto this worker, shown in the operation, in
/// `status` and in a dry run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relocation {
    /// Why.
    pub reason: String,
    /// The config's parent and subnet.
    pub from_parent: Option<String>,
    /// The config's subnet.
    pub from_subnet: Ipv4Net,
    /// This worker's interface.
    pub to_parent: Option<String>,
    /// This worker's subnet.
    pub to_subnet: Ipv4Net,
    /// The gateway used.
    pub to_gateway: Ipv4Addr,
    /// Each decky: the address it asked for (if any) and the one it got.
    pub addresses: BTreeMap<String, AddressMapping>,
}

/// One decky's address before and after relocalisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressMapping {
    /// The configured address.
    pub configured: Option<Ipv4Addr>,
    /// The address on this worker.
    pub assigned: Ipv4Addr,
}

/// The placement of a whole deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// The network on this worker.
    pub network: ResolvedNetwork,
    /// Each decky's address (and MAC).
    pub deckies: BTreeMap<String, LanPlacement>,
    /// Set when the config was mapped onto this worker's interface.
    pub relocation: Option<Relocation>,
}

/// A network interface of the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInterface {
    /// Its name.
    pub name: String,
    /// Its IPv4 addresses with their prefix lengths.
    pub addrs: Vec<(Ipv4Addr, u8)>,
}

/// What the worker's network looks like.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostNet {
    /// Its interfaces.
    pub interfaces: Vec<HostInterface>,
    /// The interface of the default route.
    pub default_interface: Option<String>,
    /// The default gateway.
    pub default_gateway: Option<Ipv4Addr>,
}

impl HostNet {
    /// Read the interfaces and the default route (`ip -j`; every link, also
    /// those without an IPv4 address: `-4` would hide a dedicated NIC).
    pub fn read() -> Result<HostNet, String> {
        let run = |args: &[&str]| -> Result<String, String> {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let addrs = run(&["-j", "addr", "show"])?;
        let routes = run(&["-j", "-4", "route", "show", "default"])?;
        let (default_interface, default_gateway) = parse_default_route(&routes);
        Ok(HostNet {
            interfaces: parse_interfaces(&addrs),
            default_interface,
            default_gateway,
        })
    }

    fn interface(&self, name: &str) -> Option<&HostInterface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// Every IPv4 address of the worker.
    pub fn own_addresses(&self) -> BTreeSet<Ipv4Addr> {
        self.interfaces
            .iter()
            .flat_map(|i| i.addrs.iter().map(|(a, _)| *a))
            .collect()
    }
}

/// The interfaces in `ip -j addr show` output (IPv4 addresses only).
pub fn parse_interfaces(json: &str) -> Vec<HostInterface> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v.as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| {
                    let name = l["ifname"].as_str()?.to_string();
                    let addrs = l["addr_info"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter(|i| i["family"] == "inet")
                                .filter_map(|i| {
                                    let ip = i["local"].as_str()?.parse().ok()?;
                                    let p = u8::try_from(i["prefixlen"].as_u64()?).ok()?;
                                    Some((ip, p))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Some(HostInterface { name, addrs })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The default route's interface and gateway in `ip -j -4 route show
/// default` output.
pub fn parse_default_route(json: &str) -> (Option<String>, Option<Ipv4Addr>) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let first = v
        .as_array()
        .and_then(|r| r.first())
        .cloned()
        .unwrap_or_default();
    (
        first["dev"].as_str().map(str::to_string),
        first["gateway"].as_str().and_then(|g| g.parse().ok()),
    )
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether `name` can be a Linux interface name.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// Whether `mac` is a unicast MAC address `xx:xx:xx:xx:xx:xx`.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
        && mac != "00:00:00:00:00:00"
}

/// Validate the network section against the deckies (pure; parse time).
pub fn validate(net: &NetworkConfig, deckies: &[DeckyConfig]) -> Result<(), ConfigError> {
    match (net.mode, &net.parent) {
        (LanMode::Bridge, Some(_)) => {
            return Err(err(
                "network.parent",
                "a bridge network has no parent interface",
            ));
        }
        (LanMode::Macvlan | LanMode::Ipvlan, None) => {
            return Err(err(
                "network.parent",
                "macvlan and ipvlan need the parent interface (e.g. eth0; relocalised on workers that lack it)",
            ));
        }
        (_, Some(p)) if !valid_ifname(p) => {
            return Err(err(
                "network.parent",
                format!("{p:?} is not an interface name"),
            ));
        }
        _ => {}
    }
    let s = net.subnet;
    if !(8..=30).contains(&s.prefix()) {
        return Err(err(
            "network.subnet",
            format!("{s}: use a prefix between /8 and /30"),
        ));
    }
    if !s.is_host(net.gateway) {
        return Err(err(
            "network.gateway",
            format!("{} is not a host address of {s}", net.gateway),
        ));
    }
    if let Some(r) = net.range
        && !s.covers(&r)
    {
        return Err(err("network.range", format!("{r} is not inside {s}")));
    }
    let mut addresses = BTreeMap::new();
    let mut macs = BTreeMap::new();
    for (i, d) in deckies.iter().enumerate() {
        if let Some(a) = d.address {
            let field = format!("deckies[{i}].address");
            if !s.is_host(a) {
                return Err(err(field, format!("{a} is not a host address of {s}")));
            }
            if a == net.gateway {
                return Err(err(field, format!("{a} is the gateway")));
            }
            if let Some(other) = addresses.insert(a, d.name.as_str()) {
                return Err(err(field, format!("{a} is also the address of {other}")));
            }
        }
        if let Some(m) = &d.mac {
            let field = format!("deckies[{i}].mac");
            if net.mode != LanMode::Macvlan {
                return Err(err(field, "a MAC address needs mode macvlan"));
            }
            if !valid_mac(m) {
                return Err(err(
                    field,
                    format!("{m:?} is not a unicast MAC address (xx:xx:xx:xx:xx:xx)"),
                ));
            }
            if let Some(other) = macs.insert(m.to_ascii_lowercase(), d.name.as_str()) {
                return Err(err(field, format!("{m} is also the MAC of {other}")));
            }
        }
    }
    Ok(())
}

/// A stable starting offset for `name` in a range of `size` addresses.
fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What [`place`] needs besides the config.
#[derive(Clone, Debug)]
pub struct PlacementContext<'a> {
    /// The worker's network.
    pub host: &'a HostNet,
    /// `--decky-interface`: where a relocalised config goes (default: the
    /// default-route interface).
    pub interface: Option<&'a str>,
    /// Addresses deckies had on this worker before (kept across redeploys).
    pub previous: BTreeMap<String, Ipv4Addr>,
    /// Addresses held by other deckies of this worker (not in this deploy).
    pub taken: BTreeSet<Ipv4Addr>,
}

impl<'a> PlacementContext<'a> {
    /// A context for `host`: default-route relocalisation, no history.
    pub fn new(host: &'a HostNet) -> Self {
        PlacementContext {
            host,
            interface: None,
            previous: BTreeMap::new(),
            taken: BTreeSet::new(),
        }
    }
}

/// Map the config onto this worker and give every decky its address.
pub fn place(
    net: &NetworkConfig,
    deckies: &[DeckyConfig],
    ctx: &PlacementContext<'_>,
) -> Result<Placement, ConfigError> {
    let own = ctx.host.own_addresses();
    // Where the deckies go, and whether that is a relocalisation.
    let (network, relocated_reason) = match net.mode {
        LanMode::Bridge => (
            ResolvedNetwork {
                mode: net.mode,
                parent: None,
                subnet: net.subnet,
                gateway: net.gateway,
                range: net.range,
            },
            None,
        ),
        LanMode::Macvlan | LanMode::Ipvlan => {
            let parent = net.parent.clone().unwrap_or_default();
            let fits = ctx.host.interface(&parent).map(|i| {
                // A parent without IPv4 (a NIC dedicated to deckies) is used as is.
                i.addrs.is_empty() || i.addrs.iter().any(|(a, _)| net.subnet.contains(*a))
            });
            match fits {
                Some(true) => (
                    ResolvedNetwork {
                        mode: net.mode,
                        parent: Some(parent),
                        subnet: net.subnet,
                        gateway: net.gateway,
                        range: net.range,
                    },
                    None,
                ),
                found => {
                    let reason = if found.is_none() {
                        format!("this worker has no interface {parent}")
                    } else {
                        format!("{parent} is not on {}", net.subnet)
                    };
                    let target = ctx
                        .interface
                        .map(str::to_string)
                        .or_else(|| ctx.host.default_interface.clone())
                        .ok_or_else(|| {
                            err(
                                "network.parent",
                                format!("{reason}, and no --decky-interface or default route to relocalise onto"),
                            )
                        })?;
                    let iface = ctx.host.interface(&target).ok_or_else(|| {
                        err(
                            "network.parent",
                            format!("{reason}, and the relocalisation target {target} does not exist either"),
                        )
                    })?;
                    let (addr, prefix) = *iface.addrs.first().ok_or_else(|| {
                        err(
                            "network.parent",
                            format!(
                                "{reason}, and {target} has no IPv4 address to take the subnet from"
                            ),
                        )
                    })?;
                    let subnet = Ipv4Net::new(addr, prefix).unwrap_or(net.subnet);
                    if !(8..=30).contains(&subnet.prefix()) {
                        return Err(err(
                            "network.parent",
                            format!(
                                "{reason}, and {target}'s subnet {subnet} is too small for deckies"
                            ),
                        ));
                    }
                    let gateway = ctx
                        .host
                        .default_gateway
                        .filter(|g| {
                            ctx.host.default_interface.as_deref() == Some(target.as_str())
                                && subnet.is_host(*g)
                        })
                        .or_else(|| translate(net.gateway, &net.subnet, &subnet))
                        .filter(|g| subnet.is_host(*g))
                        .unwrap_or_else(|| subnet.at(1).unwrap_or(subnet.network()));
                    let range = net.range.and_then(|r| {
                        let start = translate(r.network(), &net.subnet, &subnet)?;
                        let prefix = r.prefix().max(subnet.prefix());
                        Ipv4Net::new(start, prefix).filter(|t| subnet.covers(t))
                    });
                    (
                        ResolvedNetwork {
                            mode: net.mode,
                            parent: Some(target),
                            subnet,
                            gateway,
                            range,
                        },
                        Some(reason),
                    )
                }
            }
        }
    };
    let subnet = network.subnet;
    let free = |a: Ipv4Addr, used: &BTreeSet<Ipv4Addr>| {
        subnet.is_host(a)
            && a != network.gateway
            && !own.contains(&a)
            && !ctx.taken.contains(&a)
            && !used.contains(&a)
    };
    let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut out = BTreeMap::new();
    let mut mapping = BTreeMap::new();
    // Deckies that name an address first (so an allocation never takes one
    // that is asked for), then the rest; each group in config order.
    let order: Vec<(usize, &DeckyConfig)> = deckies
        .iter()
        .enumerate()
        .filter(|(_, d)| d.address.is_some())
        .chain(
            deckies
                .iter()
                .enumerate()
                .filter(|(_, d)| d.address.is_none()),
        )
        .collect();
    for (i, d) in order {
        let field = format!("deckies[{i}].address");
        let kept = ctx.previous.get(&d.name).copied().filter(|a| {
            free(*a, &used)
                && match d.address {
                    // A configured address that still fits wins over memory.
                    Some(c) if relocated_reason.is_none() => c == *a,
                    _ => true,
                }
        });
        let address = match (kept, d.address, &relocated_reason) {
            (Some(a), _, _) => a,
            (None, Some(c), None) => {
                if own.contains(&c) {
                    return Err(err(field, format!("{c} is this worker's own address")));
                }
                if !free(c, &used) {
                    return Err(err(
                        field,
                        format!("{c} is taken on this worker (another decky holds it)"),
                    ));
                }
                c
            }
            (None, configured, _) => {
                let translated = configured
                    .and_then(|c| translate(c, &net.subnet, &subnet))
                    .filter(|a| free(*a, &used));
                match translated {
                    Some(a) => a,
                    None => allocate(&d.name, network.range.unwrap_or(subnet), |a| free(a, &used))
                        .ok_or_else(|| {
                            err(
                                field,
                                format!(
                                    "no free address left in {}",
                                    network.range.unwrap_or(subnet)
                                ),
                            )
                        })?,
                }
            }
        };
        used.insert(address);
        mapping.insert(
            d.name.clone(),
            AddressMapping {
                configured: d.address,
                assigned: address,
            },
        );
        out.insert(
            d.name.clone(),
            LanPlacement {
                network: network.clone(),
                address,
                mac: if network.mode == LanMode::Macvlan {
                    d.mac.clone()
                } else {
                    None
                },
            },
        );
    }
    let relocation = relocated_reason.map(|reason| Relocation {
        reason,
        from_parent: net.parent.clone(),
        from_subnet: net.subnet,
        to_parent: network.parent.clone(),
        to_subnet: network.subnet,
        to_gateway: network.gateway,
        addresses: mapping,
    });
    Ok(Placement {
        network,
        deckies: out,
        relocation,
    })
}

/// `a` moved from `from` to `to` by its offset (`None` when it does not fit).
fn translate(a: Ipv4Addr, from: &Ipv4Net, to: &Ipv4Net) -> Option<Ipv4Addr> {
    to.at(from.offset_of(a)?)
}

/// The first address of `range` that `ok` accepts, starting at a hash of
/// `name` (so the same name lands on the same address when it can).
fn allocate(name: &str, range: Ipv4Net, ok: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let size = range.size();
    let start = name_hash(name) % size;
    (0..size)
        .map(|i| (start + i) % size)
        .filter_map(|o| range.at(o))
        .find(|a| ok(*a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decky(name: &str, address: Option<&str>) -> DeckyConfig {
        DeckyConfig {
            name: name.into(),
            image: Some("img".into()),
            address: address.map(|a| a.parse().unwrap()),
            ..DeckyConfig::default()
        }
    }

    fn net(mode: LanMode, parent: Option<&str>, subnet: &str, gw: &str) -> NetworkConfig {
        NetworkConfig {
            mode,
            parent: parent.map(str::to_string),
            subnet: subnet.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            range: None,
        }
    }

    fn host() -> HostNet {
        HostNet {
            interfaces: vec![
                HostInterface {
                    name: "lo".into(),
                    addrs: vec![("127.0.0.1".parse().unwrap(), 8)],
                },
                HostInterface {
                    name: "eth0".into(),
                    addrs: vec![("192.168.5.7".parse().unwrap(), 24)],
                },
                HostInterface {
                    name: "eth9".into(),
                    addrs: vec![],
                },
            ],
            default_interface: Some("eth0".into()),
            default_gateway: Some("192.168.5.254".parse().unwrap()),
        }
    }

    #[test]
    fn subnets_parse_and_compute() {
        let s: Ipv4Net = "10.1.2.0/24".parse().unwrap();
        assert_eq!(s.size(), 256);
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 1, 2, 255));
        assert!(s.is_host("10.1.2.1".parse().unwrap()));
        assert!(!s.is_host("10.1.2.0".parse().unwrap()));
        assert!(!s.is_host("10.1.3.1".parse().unwrap()));
        assert!(
            "10.1.2.5/24"
                .parse::<Ipv4Net>()
                .unwrap_err()
                .contains("host bits")
        );
        assert!("10.1.2.0".parse::<Ipv4Net>().is_err());
        assert!(s.covers(&"10.1.2.64/26".parse().unwrap()));
        assert!(!s.covers(&"10.1.0.0/16".parse().unwrap()));
    }

    #[test]
    fn validation_names_the_field() {
        let n = net(LanMode::Macvlan, Some("eth0"), "10.0.0.0/24", "10.0.0.1");
        let e = validate(&n, &[decky("a", Some("10.0.1.5"))]).unwrap_err();
        assert_eq!(e.field, "deckies[0].address");
        let e = validate(&n, &[decky("a", Some("10.0.0.1"))]).unwrap_err();
        assert!(e.message.contains("gateway"), "{e}");
        let e = validate(
            &n,
            &[decky("a", Some("10.0.0.9")), decky("b", Some("10.0.0.9"))],
        )
        .unwrap_err();
        assert_eq!(e.field, "deckies[1].address");
        let e = validate(&n, &[decky("a", Some("10.0.0.255"))]).unwrap_err();
        assert_eq!(e.field, "deckies[0].address", "broadcast");
        let mut bad = n.clone();
        bad.gateway = "10.9.9.9".parse().unwrap();
        assert_eq!(validate(&bad, &[]).unwrap_err().field, "network.gateway");
        let mut noparent = n.clone();
        noparent.parent = None;
        assert_eq!(
            validate(&noparent, &[]).unwrap_err().field,
            "network.parent"
        );
        let mut m = decky("a", None);
        m.mac = Some("01:00:5e:00:00:01".into());
        assert_eq!(
            validate(&n, &[m.clone()]).unwrap_err().field,
            "deckies[0].mac"
        );
        m.mac = Some("02:42:ac:11:00:02".into());
        validate(&n, &[m.clone()]).unwrap();
        let ipv = net(LanMode::Ipvlan, Some("eth0"), "10.0.0.0/24", "10.0.0.1");
        assert!(
            validate(&ipv, &[m])
                .unwrap_err()
                .message
                .contains("macvlan")
        );
        let mut r = n.clone();
        r.range = Some("10.0.1.0/28".parse().unwrap());
        assert_eq!(validate(&r, &[]).unwrap_err().field, "network.range");
    }

    #[test]
    fn a_matching_parent_is_used_as_is() {
        let n = net(
            LanMode::Macvlan,
            Some("eth0"),
            "192.168.5.0/24",
            "192.168.5.254",
        );
        let h = host();
        let ctx = PlacementContext::new(&h);
        let p = place(
            &n,
            &[decky("a", Some("192.168.5.20")), decky("b", None)],
            &ctx,
        )
        .unwrap();
        assert!(p.relocation.is_none());
        assert_eq!(p.network.parent.as_deref(), Some("eth0"));
        assert_eq!(p.deckies["a"].address, Ipv4Addr::new(192, 168, 5, 20));
        let b = p.deckies["b"].address;
        assert!(p.network.subnet.is_host(b) && b != Ipv4Addr::new(192, 168, 5, 7));
        assert_ne!(b, Ipv4Addr::new(192, 168, 5, 254));
        // The worker's own address is refused, naming the field.
        let e = place(&n, &[decky("a", Some("192.168.5.7"))], &ctx).unwrap_err();
        assert_eq!(e.field, "deckies[0].address");
        assert!(e.message.contains("own address"), "{e}");
        // A parent with no IPv4 (dedicated NIC) is used as is too.
        let dedicated = net(LanMode::Macvlan, Some("eth9"), "10.50.0.0/24", "10.50.0.1");
        let p = place(&dedicated, &[decky("a", Some("10.50.0.9"))], &ctx).unwrap();
        assert!(p.relocation.is_none());
    }

    #[test]
    fn a_foreign_config_is_relocalised_by_offset_and_deterministically() {
        let mut n = net(LanMode::Macvlan, Some("ens18"), "10.0.0.0/24", "10.0.0.1");
        n.range = Some("10.0.0.128/25".parse().unwrap());
        let h = host();
        let ctx = PlacementContext::new(&h);
        let deckies = [
            decky("ssh", Some("10.0.0.20")),
            decky("own", Some("10.0.0.7")), // maps onto the worker's own address
            decky("web", None),
        ];
        let p = place(&n, &deckies, &ctx).unwrap();
        let r = p.relocation.as_ref().expect("relocated");
        assert!(r.reason.contains("no interface ens18"), "{}", r.reason);
        assert_eq!(r.to_parent.as_deref(), Some("eth0"));
        assert_eq!(r.to_subnet.to_string(), "192.168.5.0/24");
        assert_eq!(
            r.to_gateway,
            Ipv4Addr::new(192, 168, 5, 254),
            "the default gateway"
        );
        assert_eq!(p.deckies["ssh"].address, Ipv4Addr::new(192, 168, 5, 20));
        let own = p.deckies["own"].address;
        assert_ne!(own, Ipv4Addr::new(192, 168, 5, 7));
        assert!(
            u32::from(own) >= u32::from(Ipv4Addr::new(192, 168, 5, 128)),
            "allocated from the translated range: {own}"
        );
        let web = p.deckies["web"].address;
        assert!(u32::from(web) >= u32::from(Ipv4Addr::new(192, 168, 5, 128)));
        // The same input gives the same answer.
        assert_eq!(place(&n, &deckies, &ctx).unwrap(), p);
        // Addresses are kept across redeploys, even when the config changes order.
        let ctx2 = PlacementContext {
            host: &h,
            previous: p
                .deckies
                .iter()
                .map(|(k, v)| (k.clone(), v.address))
                .collect(),
            ..PlacementContext::new(&h)
        };
        let reordered = [deckies[2].clone(), deckies[1].clone(), deckies[0].clone()];
        let again = place(&n, &reordered, &ctx2).unwrap();
        for name in ["ssh", "own", "web"] {
            assert_eq!(
                again.deckies[name].address, p.deckies[name].address,
                "{name}"
            );
        }
        // An explicit interface wins over the default route.
        let h2 = HostNet {
            interfaces: vec![HostInterface {
                name: "vlan9".into(),
                addrs: vec![("172.20.9.2".parse().unwrap(), 24)],
            }],
            default_interface: None,
            default_gateway: None,
        };
        let ctx3 = PlacementContext {
            host: &h2,
            interface: Some("vlan9"),
            ..PlacementContext::new(&h)
        };
        let p3 = place(&n, &deckies, &ctx3).unwrap();
        assert_eq!(p3.network.parent.as_deref(), Some("vlan9"));
        assert_eq!(
            p3.network.gateway,
            Ipv4Addr::new(172, 20, 9, 1),
            "translated gateway"
        );
        assert_eq!(p3.deckies["ssh"].address, Ipv4Addr::new(172, 20, 9, 20));
        // Nowhere to go: a clear error.
        let ctx4 = PlacementContext::new(&h2);
        let e = place(&n, &deckies, &ctx4).unwrap_err();
        assert_eq!(e.field, "network.parent");
        assert!(e.message.contains("--decky-interface"), "{e}");
    }

    #[test]
    fn a_full_range_is_an_error_and_taken_addresses_are_skipped() {
        let mut n = net(LanMode::Bridge, None, "10.9.0.0/24", "10.9.0.1");
        n.range = Some("10.9.0.4/30".parse().unwrap());
        let h = HostNet::default();
        let ctx = PlacementContext {
            host: &h,
            taken: ["10.9.0.4".parse().unwrap()].into_iter().collect(),
            ..PlacementContext::new(&h)
        };
        let p = place(
            &n,
            &[decky("a", None), decky("b", None), decky("c", None)],
            &ctx,
        )
        .unwrap();
        let got: BTreeSet<Ipv4Addr> = p.deckies.values().map(|l| l.address).collect();
        assert_eq!(got.len(), 3);
        assert!(!got.contains(&"10.9.0.4".parse().unwrap()));
        let e = place(
            &n,
            &[
                decky("a", None),
                decky("b", None),
                decky("c", None),
                decky("d", None),
            ],
            &ctx,
        )
        .unwrap_err();
        assert!(e.message.contains("no free address"), "{e}");
    }

    #[test]
    fn ip_json_is_read() {
        let addrs = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"192.168.5.7","prefixlen":24}]},
            {"ifindex":3,"ifname":"eth1","addr_info":[]}]"#;
        let i = parse_interfaces(addrs);
        assert_eq!(i.len(), 3);
        assert_eq!(i[1].addrs, vec![("192.168.5.7".parse().unwrap(), 24)]);
        let (dev, gw) = parse_default_route(
            r#"[{"dst":"default","gateway":"192.168.5.254","dev":"eth0","flags":[]}]"#,
        );
        assert_eq!(dev.as_deref(), Some("eth0"));
        assert_eq!(gw, Some("192.168.5.254".parse().unwrap()));
        assert_eq!(parse_default_route("[]"), (None, None));
        assert!(parse_interfaces("not json").is_empty());
    }
}
