//! The firewall of a compose decky's network: each decky that is not on
//! the LAN sits on a bridge of its own (see [`super::compose`]), and one
//! chain per bridge in the host's `filter` table decides what may leave it.
//!
//! ```text
//! DOCKER-USER -i dn<hash> -j DECNET-dn<hash>     (what it forwards: other deckies, the LAN, the internet)
//! INPUT       -i dn<hash> -j DECNET-dn<hash>     (what it sends the host itself: its gateway address, every host service)
//! raw PREROUTING -i dn<hash> -m rpfilter --invert -j DROP   (a source address the bridge does not route: forged)
//!
//! DECNET-dn<hash>:
//!   -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN   (answers to connections made to it)
//!   -m addrtype --dst-type LOCAL -j REJECT                  (the host itself, whatever the allow-list says)
//!   -d <egress net> -p tcp --dport <port> -j RETURN         (one per allow-list entry)
//!   -p tcp -j REJECT --reject-with tcp-reset                (everything else, counted)
//!   -j REJECT --reject-with icmp-admin-prohibited
//! ```
//!
//! Connections made *to* the decky (its published ports) are untouched:
//! they enter the bridge, they do not leave it. Refusing rather than
//! dropping makes one attempt one counted packet (no retransmissions), so
//! the rejected packets are the decky's forbidden connection attempts. The
//! reverse-path check drops what a decky with `NET_RAW` forges with another
//! source address (which could otherwise pass as an answer of a connection
//! the host has open).
//!
//! The chain is (re)built in one `iptables-restore` transaction, so it is
//! never seen half-filled, then the jumps are added where missing. The
//! rules are built by pure functions (unit-tested) and applied with the
//! host's `iptables`, the same tool (and backend) the Docker engine uses.

use std::process::Stdio;
use std::time::Duration;

use decnet_confine::egress::EgressRule;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::egress_proxy::NetworkFigures;
use crate::config::Protocol;

/// One allowed destination of a compose decky: a rule and its transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allowed {
    /// The network and port.
    pub rule: EgressRule,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl Allowed {
    /// The `iptables` name of its transport.
    fn transport(&self) -> &'static str {
        match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The chain every forwarded packet passes first (the engine creates it).
pub const DOCKER_USER: &str = "DOCKER-USER";

/// Longest one `iptables` call may take (it waits for the xtables lock).
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(30);

/// The bridge interface of decky `decky` of compose project `project`:
/// `dn` and 12 hex digits of a digest (interface names have 15 bytes at
/// most, and a decky's name may be longer).
pub fn interface_name(project: &str, decky: &str) -> String {
    let digest = decnet_pki::signing::sha256_hex(format!("{project}/{decky}").as_bytes());
    format!("dn{}", &digest[..12])
}

/// The chain of bridge `interface`.
pub fn chain_name(interface: &str) -> String {
    format!("DECNET-{interface}")
}

/// The `iptables-restore --noflush` input that (re)builds the chain of
/// `interface` for `egress` in one transaction (declaring the chain creates
/// it, or empties it). Pure: unit-tested.
pub fn chain_restore(interface: &str, egress: &[Allowed]) -> String {
    let chain = chain_name(interface);
    let mut out = format!(
        "*filter\n:{chain} - [0:0]\n\
         -A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
         -A {chain} -p tcp -m addrtype --dst-type LOCAL -j REJECT --reject-with tcp-reset\n\
         -A {chain} -m addrtype --dst-type LOCAL -j REJECT --reject-with icmp-admin-prohibited\n"
    );
    for a in egress.iter().filter(|a| a.rule.net.is_ipv4()) {
        out.push_str(&format!(
            "-A {chain} -d {}/{} -p {} --dport {} -j RETURN\n",
            a.rule.net,
            a.rule.prefix,
            a.transport(),
            a.rule.port
        ));
    }
    out.push_str(&format!(
        "-A {chain} -p tcp -j REJECT --reject-with tcp-reset\n\
         -A {chain} -j REJECT --reject-with icmp-admin-prohibited\n\
         COMMIT\n"
    ));
    out
}

/// One rule the chain of a bridge needs outside it: a jump into it, or the
/// reverse-path check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// The table (`filter`, `raw`).
    pub table: &'static str,
    /// The built-in or engine chain it sits in.
    pub chain: &'static str,
    /// The rule itself (what follows the chain name).
    pub spec: Vec<String>,
}

impl HostRule {
    /// The `iptables` arguments of operation `op` (`-C`, `-D`, `-I`) on it.
    fn args(&self, op: &str) -> Vec<String> {
        let mut a = args(&["-t", self.table, op, self.chain]);
        if op == "-I" {
            a.push("1".into());
        }
        a.extend(self.spec.iter().cloned());
        a
    }
}

/// The rules of `interface` outside its chain: the jumps from
/// [`DOCKER_USER`] (what the bridge forwards) and from `INPUT` (what it
/// sends the host), and the reverse-path check in `raw`. Pure: unit-tested.
pub fn host_rules(interface: &str) -> Vec<HostRule> {
    let chain = chain_name(interface);
    vec![
        HostRule {
            table: "raw",
            chain: "PREROUTING",
            spec: args(&["-i", interface, "-m", "rpfilter", "--invert", "-j", "DROP"]),
        },
        HostRule {
            table: "filter",
            chain: DOCKER_USER,
            spec: args(&["-i", interface, "-j", &chain]),
        },
        HostRule {
            table: "filter",
            chain: "INPUT",
            spec: args(&["-i", interface, "-j", &chain]),
        },
    ]
}

/// What the chain counted, from `iptables -L CHAIN -v -x -n`: the packets
/// its `REJECT` rules refused (forbidden attempts, one packet each) and the
/// packets that opened allowed connections (its allow-list rules see only
/// packets that are no answer). Pure: unit-tested.
pub fn chain_figures(listing: &str) -> Option<NetworkFigures> {
    let mut seen = false;
    let mut figures = NetworkFigures::default();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 3 {
            continue;
        }
        let count = || cols[0].parse::<u64>().ok();
        match cols[2] {
            "REJECT" => {
                figures.forbidden = figures.forbidden.saturating_add(count()?);
                seen = true;
            }
            "RETURN" if line.contains("dpt:") => {
                figures.egress_allowed = figures.egress_allowed.saturating_add(count()?);
            }
            _ => {}
        }
    }
    seen.then_some(figures)
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Why the firewall could not be set.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct FirewallError(pub String);

async fn iptables(a: &[String]) -> Result<String, FirewallError> {
    let mut cmd = Command::new("iptables");
    cmd.arg("-w")
        .args(a)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| FirewallError(format!("cannot run iptables: {e}")))?;
    let out = tokio::time::timeout(IPTABLES_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| FirewallError("iptables did not finish within 30s".into()))?
        .map_err(|e| FirewallError(format!("iptables failed: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said
            .lines()
            .filter(|l| !l.starts_with("# Warning") && !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        Err(FirewallError(format!(
            "iptables {} failed: {said}",
            a.join(" ")
        )))
    }
}

async fn iptables_restore(input: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| FirewallError(format!("cannot run iptables-restore: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| FirewallError(format!("iptables-restore: {e}")))?;
    }
    let out = tokio::time::timeout(IPTABLES_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| FirewallError("iptables-restore did not finish within 30s".into()))?
        .map_err(|e| FirewallError(format!("iptables-restore failed: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError(format!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.starts_with("# Warning") && !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join(" | ")
        )))
    }
}

/// Build (or rebuild: the call is idempotent) the chain of `interface`
/// for `egress` in one transaction, then add what of [`host_rules`] is
/// missing. The chain is complete before any jump to it exists, so a new
/// bridge never forwards a packet unfiltered, and a rebuild is never seen
/// half-done.
pub async fn install(interface: &str, egress: &[Allowed]) -> Result<(), FirewallError> {
    iptables_restore(&chain_restore(interface, egress)).await?;
    for rule in host_rules(interface) {
        if iptables(&rule.args("-C")).await.is_err() {
            iptables(&rule.args("-I")).await?;
        }
    }
    Ok(())
}

/// Remove the chain of `interface` and the rules around it (after its
/// bridge is gone). Missing pieces are not an error.
pub async fn remove(interface: &str) -> Result<(), FirewallError> {
    for rule in host_rules(interface) {
        // A rule inserted twice (two agents racing) is deleted twice.
        for _ in 0..8 {
            if iptables(&rule.args("-D")).await.is_err() {
                break;
            }
        }
    }
    let chain = chain_name(interface);
    if iptables(&args(&["-F", &chain])).await.is_ok() {
        iptables(&args(&["-X", &chain])).await?;
    }
    Ok(())
}

/// What the chain of `interface` counted so far (`None`: no chain).
pub async fn figures(interface: &str) -> Option<NetworkFigures> {
    let listing = iptables(&args(&["-L", &chain_name(interface), "-v", "-x", "-n"]))
        .await
        .ok()?;
    chain_figures(&listing)
}

/// The chains a compose agent holds, kept beside its compose file
/// (`compose/firewall.json`) so they can be rebuilt at boot before the
/// engine restarts the containers ([`restore_saved`], `decnet-agent
/// hold-networks`, `decnet-decky-firewall.service`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedChains {
    /// One entry per held decky.
    pub chains: Vec<SavedChain>,
}

/// One held decky's chain: its bridge and its allow-list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedChain {
    /// The decky (for the operator reading the file).
    pub decky: String,
    /// Its bridge interface ([`interface_name`]).
    pub interface: String,
    /// Its egress allow-list.
    pub egress: Vec<Allowed>,
}

/// The file [`SavedChains`] live in, under the compose directory `dir`.
pub fn saved_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("firewall.json")
}

/// Rebuild every chain saved in the compose directory `dir` (at boot,
/// before the engine starts): the engine's [`DOCKER_USER`] chain is created
/// when it does not exist yet (the engine keeps an existing one, and the
/// jumps in it). Returns how many chains were built, or what failed.
pub async fn restore_saved(dir: &std::path::Path) -> Result<usize, FirewallError> {
    let path = saved_path(dir);
    let saved: SavedChains = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| FirewallError(format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(FirewallError(format!("{}: {e}", path.display()))),
    };
    if iptables(&args(&["-L", DOCKER_USER, "-n"])).await.is_err() {
        iptables(&args(&["-N", DOCKER_USER])).await?;
    }
    let mut failed = Vec::new();
    for c in &saved.chains {
        // A name that is not ours is never handed to iptables.
        if !(c.interface.starts_with("dn")
            && c.interface.len() == 14
            && c.interface[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        {
            failed.push(format!("{}: not a decky bridge name", c.interface));
            continue;
        }
        if let Err(e) = install(&c.interface, &c.egress).await {
            failed.push(format!("decky {}: {e}", c.decky));
        }
    }
    if failed.is_empty() {
        Ok(saved.chains.len())
    } else {
        Err(FirewallError(failed.join("; ")))
    }
}

/// Whether every rule of `interface` outside its chain ([`host_rules`]) is
/// in place: a firewall reload or a flush by another tool removes them
/// without telling anyone.
pub async fn jumps_in_place(interface: &str) -> bool {
    for rule in host_rules(interface) {
        if iptables(&rule.args("-C")).await.is_err() {
            return false;
        }
    }
    true
}

/// Whether this agent can firewall deckies' bridges: `iptables` runs, the
/// engine's [`DOCKER_USER`] chain exists, and a full chain can be built
/// and removed (for a probe interface no bridge will ever have).
pub async fn probe() -> Result<(), FirewallError> {
    let missing = decnet_confine::caps::missing(&decnet_confine::caps::FOR_DECKY_FIREWALL[..1]);
    if !missing.is_empty() {
        return Err(FirewallError(format!(
            "the agent lacks {}",
            missing.join(", ")
        )));
    }
    iptables(&args(&["-L", DOCKER_USER, "-n"]))
        .await
        .map_err(|e| {
            FirewallError(format!(
                "the Docker engine's {DOCKER_USER} chain is not reachable ({e}); the agent needs CAP_NET_ADMIN and an engine that manages iptables"
            ))
        })?;
    let probe = format!("dnprobe{:06x}", std::process::id() & 0xff_ffff);
    let built = install(&probe, &[]).await;
    let removed = remove(&probe).await;
    built.and(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_and_differ_per_decky_and_project() {
        let a = interface_name("decnet", "a-rather-long-decky-name-for-ssh");
        assert!(a.len() <= 15 && a.starts_with("dn"), "{a}");
        assert_ne!(a, interface_name("decnet", "b"));
        assert_ne!(
            a,
            interface_name("other", "a-rather-long-decky-name-for-ssh")
        );
        assert_eq!(
            a,
            interface_name("decnet", "a-rather-long-decky-name-for-ssh")
        );
        assert!(
            chain_name(&a).len() <= 28,
            "iptables chain names have 28 bytes at most"
        );
    }

    #[test]
    fn the_chain_lets_answers_and_the_allow_list_through_and_refuses_the_rest() {
        let tcp = |to, port| Allowed {
            rule: EgressRule::new(to, port).unwrap(),
            protocol: Protocol::Tcp,
        };
        let egress = [
            tcp("203.0.113.0/24", 443),
            tcp("2001:db8::/64", 80),
            Allowed {
                rule: EgressRule::new("192.0.2.53", 53).unwrap(),
                protocol: Protocol::Udp,
            },
        ];
        let text = chain_restore("dn0123", &egress);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "*filter",
                ":DECNET-dn0123 - [0:0]",
                "-A DECNET-dn0123 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-A DECNET-dn0123 -p tcp -m addrtype --dst-type LOCAL -j REJECT --reject-with tcp-reset",
                "-A DECNET-dn0123 -m addrtype --dst-type LOCAL -j REJECT --reject-with icmp-admin-prohibited",
                "-A DECNET-dn0123 -d 203.0.113.0/24 -p tcp --dport 443 -j RETURN",
                "-A DECNET-dn0123 -d 192.0.2.53/32 -p udp --dport 53 -j RETURN",
                "-A DECNET-dn0123 -p tcp -j REJECT --reject-with tcp-reset",
                "-A DECNET-dn0123 -j REJECT --reject-with icmp-admin-prohibited",
                "COMMIT",
            ],
            "the host is refused before the allow-list; IPv6 entries are not rules of the IPv4 table"
        );
        let rules: Vec<String> = host_rules("dn0123")
            .iter()
            .map(|r| r.args("-I").join(" "))
            .collect();
        assert_eq!(
            rules,
            [
                "-t raw -I PREROUTING 1 -i dn0123 -m rpfilter --invert -j DROP",
                "-t filter -I DOCKER-USER 1 -i dn0123 -j DECNET-dn0123",
                "-t filter -I INPUT 1 -i dn0123 -j DECNET-dn0123",
            ]
        );
        assert_eq!(
            host_rules("dn0123")[1].args("-D").join(" "),
            "-t filter -D DOCKER-USER -i dn0123 -j DECNET-dn0123"
        );
    }

    #[test]
    fn refusals_and_allowed_connections_are_read_from_the_listing() {
        let listing = "Chain DECNET-dn0123 (2 references)\n    pkts      bytes target     prot opt in     out     source               destination\n      12      720 RETURN     all  --  *      *       0.0.0.0/0            0.0.0.0/0            ctstate RELATED,ESTABLISHED\n       3      180 RETURN     tcp  --  *      *       0.0.0.0/0            203.0.113.0/24       tcp dpt:443\n       5      300 REJECT     tcp  --  *      *       0.0.0.0/0            0.0.0.0/0            reject-with tcp-reset\n       2       84 REJECT     all  --  *      *       0.0.0.0/0            0.0.0.0/0            reject-with icmp-admin-prohibited\n";
        let f = chain_figures(listing).unwrap();
        assert_eq!((f.forbidden, f.egress_allowed, f.egress_failed), (7, 3, 0));
        assert_eq!(chain_figures("Chain X (0 references)\n"), None);
        assert_eq!(chain_figures("  x y REJECT\n"), None, "garbage is no count");
    }
}
