//! The firewall of a compose decky's network: each decky that is not on
//! the LAN sits on a bridge of its own (see [`super::compose`]), and one
//! chain per bridge in the host's `filter` table decides what may leave it.
//!
//! ```text
//! DOCKER-USER -i dn<hash> -j DECNET-dn<hash>     (what it forwards: other deckies, the LAN, the internet)
//! INPUT       -i dn<hash> -j DECNET-dn<hash>     (what it sends the host itself: its gateway address, every host service)
//! raw PREROUTING -i dn<hash> -m rpfilter --invert -j DROP   (a source address the bridge does not route: forged)
//! security FORWARD -i dn<hash> -j DECNET-dn<hash>  (the safety net, below)
//!
//! DECNET-dn<hash>:
//!   -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN   (answers to connections made to it)
//!   -m addrtype --dst-type LOCAL -j REJECT                  (the host itself, whatever the allow-list says)
//!   -d <egress net> -p tcp --dport <port> -j RETURN         (one per allow-list entry)
//!   -p tcp -j REJECT --reject-with tcp-reset                (everything else, counted)
//!   -j REJECT --reject-with icmp-admin-prohibited
//!
//! security DECNET-dn<hash>:
//!   -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
//!   -d <egress net> -p tcp --dport <port> -j RETURN         (the same allow-list)
//!   -j DROP
//! ```
//!
//! **The safety net.** The engine, whenever it creates any network, takes
//! its jump `FORWARD -j DOCKER-USER` out and inserts it again (two
//! `iptables` calls, moby's `EnsureJumpRule`). In between no decky's chain
//! is consulted, and the engine's own `-i <bridge> ! -o <bridge> -j ACCEPT`
//! lets everything a decky sends out: an attacker in a decky sending
//! without pause gets datagrams (or a TCP handshake, which then lives on
//! as `ESTABLISHED`) past its allow-list each time a network is created,
//! the agent's own deploys included (seen in a CI run). The `security`
//! table's `FORWARD` runs after `filter`'s for every forwarded packet, and
//! the engine never writes it: the same allow-list there, ending in `DROP`,
//! holds whatever `filter` lets through. Normally it sees only what the
//! filter chain allowed (refusals stay `REJECT`s, counted there); a packet
//! it drops is counted as forbidden too.
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
        out.push_str(&allow_rule(&chain, a));
    }
    out.push_str(&format!(
        "-A {chain} -p tcp -j REJECT --reject-with tcp-reset\n\
         -A {chain} -j REJECT --reject-with icmp-admin-prohibited\n\
         COMMIT\n"
    ));
    // The safety net (see the module's documentation): the same verdict
    // where the engine never writes.
    out.push_str(&format!(
        "*security\n:{chain} - [0:0]\n\
         -A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n"
    ));
    for a in egress.iter().filter(|a| a.rule.net.is_ipv4()) {
        out.push_str(&allow_rule(&chain, a));
    }
    out.push_str(&format!("-A {chain} -j DROP\nCOMMIT\n"));
    out
}

/// The rule letting allow-list entry `a` through `chain`.
fn allow_rule(chain: &str, a: &Allowed) -> String {
    format!(
        "-A {chain} -d {}/{} -p {} --dport {} -j RETURN\n",
        a.rule.net,
        a.rule.prefix,
        a.transport(),
        a.rule.port
    )
}

/// One rule the chain of a bridge needs outside it: a jump into it, or the
/// reverse-path check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// The table (`filter`, `raw`, `security`).
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

/// The rules of `interface` outside its chains: the jumps from
/// [`DOCKER_USER`] (what the bridge forwards) and from `INPUT` (what it
/// sends the host), the reverse-path check in `raw`, and the jump to the
/// safety net from `security`'s `FORWARD`. Pure: unit-tested.
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
        HostRule {
            table: "security",
            chain: "FORWARD",
            spec: args(&["-i", interface, "-j", &chain]),
        },
    ]
}

/// What the host's tables hold of one bridge, read in one pass
/// ([`parse_tables`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BridgeRules {
    /// What its chain counted: the packets its `REJECT` rules refused
    /// (forbidden attempts, one packet each) and the packets that opened
    /// allowed connections (its allow-list rules see only packets that are
    /// no answer).
    pub figures: NetworkFigures,
    /// Its chain holds its refusals.
    pub chain: bool,
    /// The jump from [`DOCKER_USER`].
    pub forwarded: bool,
    /// The jump from `INPUT`.
    pub input: bool,
    /// The reverse-path check in `raw`.
    pub reverse_path: bool,
    /// The safety net: its chain in `security`, ending in `DROP`, and the
    /// jump to it from that table's `FORWARD`.
    pub safety_net: bool,
}

impl BridgeRules {
    /// Whether everything [`install`] puts in place is there.
    pub fn intact(&self) -> bool {
        self.chain && self.forwarded && self.input && self.reverse_path && self.safety_net
    }
}

/// Every bridge's rules, by interface, from `iptables-save -c` of the
/// `filter`, `raw` and `security` tables (one read for all deckies, not a
/// call per decky and rule). Pure: unit-tested.
pub fn parse_tables(
    filter: &str,
    raw: &str,
    security: &str,
) -> std::collections::BTreeMap<String, BridgeRules> {
    let mut out: std::collections::BTreeMap<String, BridgeRules> = Default::default();
    for rule in saved_rules(filter) {
        let target = rule.arg("-j");
        if let Some(interface) = rule.chain.strip_prefix("DECNET-") {
            let e = out.entry(interface.to_string()).or_default();
            match target {
                Some("REJECT") => {
                    e.figures.forbidden = e.figures.forbidden.saturating_add(rule.count);
                    e.chain = true;
                }
                Some("RETURN") if rule.has("--dport") => {
                    e.figures.egress_allowed = e.figures.egress_allowed.saturating_add(rule.count);
                }
                _ => {}
            }
        } else if let Some(interface) = rule.jump_of_bridge() {
            let e = out.entry(interface.to_string()).or_default();
            match rule.chain {
                DOCKER_USER => e.forwarded = true,
                "INPUT" => e.input = true,
                _ => {}
            }
        }
    }
    for rule in saved_rules(raw) {
        if rule.chain == "PREROUTING"
            && rule.has("rpfilter")
            && rule.arg("-j") == Some("DROP")
            && let Some(interface) = rule.arg("-i")
        {
            out.entry(interface.to_string()).or_default().reverse_path = true;
        }
    }
    // The safety net: complete when both its jump and its final drop are there.
    let mut net_jumps = std::collections::BTreeSet::new();
    let mut net_drops = std::collections::BTreeSet::new();
    for rule in saved_rules(security) {
        if let Some(interface) = rule.chain.strip_prefix("DECNET-") {
            if rule.arg("-j") == Some("DROP") {
                net_drops.insert(interface.to_string());
                // What only the safety net stopped was forbidden all the same.
                let e = out.entry(interface.to_string()).or_default();
                e.figures.forbidden = e.figures.forbidden.saturating_add(rule.count);
            }
        } else if rule.chain == "FORWARD"
            && let Some(interface) = rule.jump_of_bridge()
        {
            net_jumps.insert(interface.to_string());
        }
    }
    for interface in net_jumps.intersection(&net_drops) {
        out.entry(interface.clone()).or_default().safety_net = true;
    }
    out
}

/// One appended rule of an `iptables-save -c` table:
/// `[packets:bytes] -A CHAIN …` (counters only with `-c`).
struct SavedRule<'a> {
    /// Packets it counted.
    count: u64,
    /// The chain it is in.
    chain: &'a str,
    /// Its words after the chain.
    words: Vec<&'a str>,
}

impl<'a> SavedRule<'a> {
    /// The word after `flag`.
    fn arg(&self, flag: &str) -> Option<&'a str> {
        let at = self.words.iter().position(|w| *w == flag)?;
        self.words.get(at + 1).copied()
    }

    /// Whether `word` is one of its words.
    fn has(&self, word: &str) -> bool {
        self.words.contains(&word)
    }

    /// The bridge whose chain this rule jumps to (`-i dn… -j DECNET-dn…`).
    fn jump_of_bridge(&self) -> Option<&'a str> {
        let interface = self.arg("-i")?;
        (self.arg("-j")? == chain_name(interface)).then_some(interface)
    }
}

/// The appended rules of one table as `iptables-save -c` prints it.
fn saved_rules(table: &str) -> impl Iterator<Item = SavedRule<'_>> {
    table.lines().filter_map(|line| {
        let line = line.trim();
        let (count, rest) = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
            Some((c, rest)) => (
                c.split(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
                rest,
            ),
            None => (0, line),
        };
        let mut words = rest.split_whitespace();
        if words.next() != Some("-A") {
            return None;
        }
        let chain = words.next()?;
        Some(SavedRule {
            count,
            chain,
            words: words.collect(),
        })
    })
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
    for table in ["filter", "security"] {
        if iptables(&args(&["-t", table, "-F", &chain])).await.is_ok() {
            iptables(&args(&["-t", table, "-X", &chain])).await?;
        }
    }
    Ok(())
}

/// Every bridge's rules as the host's tables hold them now ([`parse_tables`]):
/// three `iptables-save` calls for all deckies. `None`: they cannot be read.
pub async fn read_tables() -> Option<std::collections::BTreeMap<String, BridgeRules>> {
    let save = |table: &'static str| async move {
        let out = Command::new("iptables-save")
            .args(["-c", "-t", table])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(IPTABLES_TIMEOUT, out).await {
            Ok(Ok(o)) if o.status.success() => {
                Some(String::from_utf8_lossy(&o.stdout).into_owned())
            }
            _ => None,
        }
    };
    let filter = save("filter").await?;
    let raw = save("raw").await?;
    let security = save("security").await?;
    Some(parse_tables(&filter, &raw, &security))
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
    // What observations read: the built chain, whole.
    let read = match read_tables().await {
        Some(t) if t.get(&probe).is_some_and(|r| r.intact()) => Ok(()),
        _ => Err(FirewallError(
            "iptables-save does not show the chains it builds".into(),
        )),
    };
    let removed = remove(&probe).await;
    built.and(read).and(removed)
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
                "*security",
                ":DECNET-dn0123 - [0:0]",
                "-A DECNET-dn0123 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
                "-A DECNET-dn0123 -d 203.0.113.0/24 -p tcp --dport 443 -j RETURN",
                "-A DECNET-dn0123 -d 192.0.2.53/32 -p udp --dport 53 -j RETURN",
                "-A DECNET-dn0123 -j DROP",
                "COMMIT",
            ],
            "the host is refused before the allow-list; IPv6 entries are not rules of the IPv4 table; \
             the safety net holds the same allow-list and drops the rest"
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
                "-t security -I FORWARD 1 -i dn0123 -j DECNET-dn0123",
            ]
        );
        assert_eq!(
            host_rules("dn0123")[1].args("-D").join(" "),
            "-t filter -D DOCKER-USER -i dn0123 -j DECNET-dn0123"
        );
    }

    #[test]
    fn every_bridge_is_read_from_one_save_of_the_tables() {
        let filter = "*filter\n\
            :DECNET-dn0123 - [0:0]\n\
            [7:420] -A DOCKER-USER -i dn0123 -j DECNET-dn0123\n\
            [0:0] -A INPUT -i dn0123 -j DECNET-dn0123\n\
            [12:720] -A DECNET-dn0123 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n\
            [1:60] -A DECNET-dn0123 -p tcp -m addrtype --dst-type LOCAL -j REJECT --reject-with tcp-reset\n\
            [3:180] -A DECNET-dn0123 -d 203.0.113.0/24 -p tcp -m tcp --dport 443 -j RETURN\n\
            [5:300] -A DECNET-dn0123 -p tcp -j REJECT --reject-with tcp-reset\n\
            [2:84] -A DECNET-dn0123 -j REJECT --reject-with icmp-admin-prohibited\n\
            [0:0] -A DECNET-dn4567 -p tcp -j REJECT --reject-with tcp-reset\n\
            [0:0] -A DOCKER-USER -j RETURN\n\
            COMMIT\n";
        let raw = "*raw\n[0:0] -A PREROUTING -i dn0123 -m rpfilter --invert -j DROP\nCOMMIT\n";
        let security = "*security\n\
            [9:540] -A FORWARD -i dn0123 -j DECNET-dn0123\n\
            [3:180] -A DECNET-dn0123 -d 203.0.113.0/24 -p tcp -m tcp --dport 443 -j RETURN\n\
            [2:120] -A DECNET-dn0123 -j DROP\n\
            [0:0] -A DECNET-dn4567 -j DROP\n\
            COMMIT\n";
        let got = parse_tables(filter, raw, security);
        let a = got["dn0123"];
        assert_eq!(
            (
                a.figures.forbidden,
                a.figures.egress_allowed,
                a.figures.egress_failed
            ),
            (10, 3, 0),
            "what only the safety net dropped is forbidden too; what it let through is not counted twice"
        );
        assert!(a.intact());
        // Without the safety net's jump (or its chain), not intact: the
        // agent's repair puts it back.
        let no_jump = parse_tables(filter, raw, "*security\n[0:0] -A DECNET-dn0123 -j DROP\n");
        assert!(!no_jump["dn0123"].safety_net && !no_jump["dn0123"].intact());
        let no_chain = parse_tables(
            filter,
            raw,
            "*security\n[0:0] -A FORWARD -i dn0123 -j DECNET-dn0123\n",
        );
        assert!(!no_chain["dn0123"].intact());
        let b = got["dn4567"];
        assert!(b.chain && !b.forwarded && !b.input && !b.reverse_path);
        assert!(!b.intact(), "a chain nobody jumps to holds nothing");
        assert!(!got.contains_key("dn89ab"));
        assert!(parse_tables("garbage\n[x] -A\n", "", "").is_empty());
    }
}
