//! The systemd units parse and say what they must (checked with the real
//! `systemd-analyze verify` where it exists).

use std::path::Path;
use std::process::Command;

const UNITS: &[&str] = &[
    "decnet-agent.service",
    "decnet-updater.service",
    "decnet-forwarder.service",
    "decnet-listener.service",
];

fn unit(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn units_restart_on_failure_and_are_hardened() {
    for u in UNITS {
        let text = unit(u);
        for key in [
            "Restart=on-failure",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "ProtectSystem=",
        ] {
            assert!(text.contains(key), "{u} lacks {key}");
        }
    }
    // Deckies must survive an agent restart.
    let agent = unit("decnet-agent.service");
    assert!(agent.contains("KillMode=process"));
    // Least privilege: exactly what per-decky ids need, and only the state
    // and bundle dirs writable.
    let caps = agent
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    let mut caps: Vec<&str> = caps.split_whitespace().collect();
    caps.sort();
    let mut needed: Vec<&str> = decnet_confine::caps::FOR_PER_DECKY_IDS
        .iter()
        .map(|(_, n)| *n)
        .collect();
    needed.sort();
    assert_eq!(caps, needed);
    for key in [
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/decnet/agent /etc/decnet/agent",
        "ProtectHome=yes",
        "Delegate=yes",
        "RestrictNamespaces=yes",
    ] {
        assert!(agent.contains(key), "agent unit lacks {key}");
    }
    // The updater drives the agent unit through systemd and may self-update.
    let up = unit("decnet-updater.service");
    assert!(
        up.contains("--agent-control systemd") && up.contains("--agent-unit decnet-agent.service")
    );
    assert!(up.contains("/opt/decnet/updater/current/bin/decnet-updater"));
    assert!(up.contains("ReadWritePaths=/opt/decnet /etc/decnet/updater"));
}

#[test]
fn systemd_analyze_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("!!! systemd-analyze not installed: unit syntax NOT verified");
        return;
    }
    for u in UNITS {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/systemd")
            .join(u);
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&p)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // The binaries are not installed on a build machine.
            assert!(line.contains("is not executable"), "{u}: {line}");
        }
    }
}
