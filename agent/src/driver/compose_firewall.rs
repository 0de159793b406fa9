//! The firewall of a compose decky's network: each decky that is not on
//! the LAN sits on a bridge of its own (see [`super::compose`]), and one
//! chain per bridge in the host's `filter` table decides what may leave it.
//!
//! ```text
//! DOCKER-USER -i dn<hash> -j DECNET-dn<hash>     (what it forwards: other deckies, the LAN, the internet)
//! INPUT       -i dn<hash> -j DECNET-dn<hash>     (what it sends the host itself: its gateway address, every host service)
//!
//! DECNET-dn<hash>:
//!   -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN   (answers to connections made to it)
//!   -d <egress net> -p tcp --dport <port> -j RETURN         (one per allow-list entry)
//!   -p tcp -j REJECT --reject-with tcp-reset                (everything else, counted)
//!   -j REJECT --reject-with icmp-admin-prohibited
//! ```
//!
//! Connections made *to* the decky (its published ports) are untouched:
//! they enter the bridge, they do not leave it. Refusing rather than
//! dropping makes one attempt one counted packet (no retransmissions), so
//! the rejected packets are the decky's forbidden connection attempts.
//!
//! The rules are built by pure functions (unit-tested) and applied with the
//! host's `iptables`, the same tool (and backend) the Docker engine uses.

use std::process::Stdio;
use std::time::Duration;

use decnet_confine::egress::EgressRule;
use tokio::process::Command;

use super::egress_proxy::NetworkFigures;

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

/// The `iptables` argument lists that (re)build the chain of `interface`
/// for `egress`, in order; the jumps to it come from [`jump_rules`].
/// Pure: unit-tested.
pub fn chain_rules(interface: &str, egress: &[EgressRule]) -> Vec<Vec<String>> {
    let chain = chain_name(interface);
    let mut rules = vec![args(&[
        "-A",
        &chain,
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "RETURN",
    ])];
    for r in egress.iter().filter(|r| r.net.is_ipv4()) {
        rules.push(args(&[
            "-A",
            &chain,
            "-d",
            &format!("{}/{}", r.net, r.prefix),
            "-p",
            "tcp",
            "--dport",
            &r.port.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    rules.push(args(&[
        "-A",
        &chain,
        "-p",
        "tcp",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]));
    rules.push(args(&[
        "-A",
        &chain,
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-admin-prohibited",
    ]));
    rules
}

/// The jumps into the chain of `interface`: from [`DOCKER_USER`] (what
/// the bridge forwards) and from `INPUT` (what it sends the host), each
/// without the leading `-I`/`-C`/`-D`. Pure: unit-tested.
pub fn jump_rules(interface: &str) -> Vec<Vec<String>> {
    let chain = chain_name(interface);
    [DOCKER_USER, "INPUT"]
        .iter()
        .map(|from| args(&[from, "-i", interface, "-j", &chain]))
        .collect()
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

/// Build (or rebuild: the call is idempotent) the chain of `interface`
/// for `egress` and jump to it. The chain is filled before any jump to it
/// exists, so a new bridge never forwards a packet unfiltered.
pub async fn install(interface: &str, egress: &[EgressRule]) -> Result<(), FirewallError> {
    let chain = chain_name(interface);
    if let Err(e) = iptables(&args(&["-N", &chain])).await {
        // Already there (an earlier start, an agent restart): rebuilt below.
        iptables(&args(&["-L", &chain, "-n"]))
            .await
            .map_err(|_| e)?;
    }
    iptables(&args(&["-F", &chain])).await?;
    for rule in chain_rules(interface, egress) {
        iptables(&rule).await?;
    }
    for jump in jump_rules(interface) {
        let mut check = vec!["-C".to_string()];
        check.extend(jump.iter().cloned());
        if iptables(&check).await.is_err() {
            let mut insert = vec!["-I".to_string(), jump[0].clone(), "1".to_string()];
            insert.extend(jump[1..].iter().cloned());
            iptables(&insert).await?;
        }
    }
    Ok(())
}

/// Remove the chain of `interface` and every jump to it (after its bridge
/// is gone). Missing pieces are not an error.
pub async fn remove(interface: &str) -> Result<(), FirewallError> {
    for jump in jump_rules(interface) {
        let mut delete = vec!["-D".to_string()];
        delete.extend(jump.iter().cloned());
        // A jump inserted twice (two agents racing) is deleted twice.
        for _ in 0..8 {
            if iptables(&delete).await.is_err() {
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

/// Whether this agent can firewall deckies' bridges: `iptables` runs, the
/// engine's [`DOCKER_USER`] chain exists, and a full chain can be built
/// and removed (for a probe interface no bridge will ever have).
pub async fn probe() -> Result<(), FirewallError> {
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
        let egress = [
            EgressRule::new("203.0.113.0/24", 443).unwrap(),
            EgressRule::new("2001:db8::/64", 80).unwrap(),
        ];
        let rules = chain_rules("dn0123", &egress);
        let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            text,
            [
                "-A DECNET-dn0123 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-A DECNET-dn0123 -d 203.0.113.0/24 -p tcp --dport 443 -j RETURN",
                "-A DECNET-dn0123 -p tcp -j REJECT --reject-with tcp-reset",
                "-A DECNET-dn0123 -j REJECT --reject-with icmp-admin-prohibited",
            ],
            "IPv6 entries are not rules of the IPv4 table (containers have no IPv6 here)"
        );
        let jumps: Vec<String> = jump_rules("dn0123").iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            jumps,
            [
                "DOCKER-USER -i dn0123 -j DECNET-dn0123",
                "INPUT -i dn0123 -j DECNET-dn0123"
            ]
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
