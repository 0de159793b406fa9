//! Which Linux capabilities this process holds, so a daemon can say at start
//! exactly which one it lacks instead of failing at the first decky.

/// The capabilities the agent needs to run process deckies under ids of
/// their own: switch ids (`SETUID`, `SETGID`), hand a working directory to
/// a decky (`CHOWN`) and signal processes of other users (`KILL`).
pub const FOR_PER_DECKY_IDS: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
];

/// The capability the agent needs to bind a process decky's privileged
/// ports (below 1024) for it: the decky itself never holds it.
pub const FOR_DECKY_PORTS: &[(u32, &str)] = &[(10, "CAP_NET_BIND_SERVICE")];

/// What the compose driver needs to build the firewall chain of each
/// decky's bridge with `iptables` (`CAP_NET_RAW`: the legacy backend's
/// socket).
pub const FOR_DECKY_FIREWALL: &[(u32, &str)] = &[(12, "CAP_NET_ADMIN"), (13, "CAP_NET_RAW")];

/// The effective capability mask from `/proc/self/status` text.
pub fn effective_mask(proc_status: &str) -> Option<u64> {
    let hex = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The names in `needed` that this process does not hold.
pub fn missing(needed: &[(u32, &'static str)]) -> Vec<&'static str> {
    let mask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_mask(&s))
        .unwrap_or(0);
    needed
        .iter()
        .filter(|(bit, _)| mask & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_parse_and_missing_ones_are_named() {
        let status = "Name:\tx\nCapEff:\t00000000000000c1\n";
        assert_eq!(effective_mask(status), Some(0xc1));
        assert_eq!(effective_mask("Name:\tx\n"), None);
        // The test process: root holds them all, anyone else none of them.
        let m = missing(FOR_PER_DECKY_IDS);
        if rustix::process::geteuid().as_raw() == 0 {
            assert!(m.is_empty(), "{m:?}");
        } else {
            assert_eq!(m.len(), FOR_PER_DECKY_IDS.len());
        }
    }
}
