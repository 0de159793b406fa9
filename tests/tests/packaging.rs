//! The systemd units parse and say what they must (checked with the real
//! `systemd-analyze verify` where it exists); the Debian packages build
//! and carry what they must (checked with the real `dpkg-deb`).

use std::path::Path;
use std::process::Command;

const UNITS: &[&str] = &[
    "decnet-master.service",
    "decnet-agent.service",
    "decnet-updater.service",
    "decnet-forwarder.service",
    "decnet-listener.service",
    "decnet-decky-firewall.service",
];

/// The socket units that hold the worker daemons' ports across restarts.
const SOCKETS: &[&str] = &["decnet-agent.socket", "decnet-updater.socket"];

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
    // Least privilege: exactly what per-decky ids, decky ports and the
    // compose deckies' firewall need, and only the state and bundle dirs
    // writable.
    let caps = agent
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    let mut caps: Vec<&str> = caps.split_whitespace().collect();
    caps.sort();
    let mut needed: Vec<&str> = decnet_confine::caps::FOR_PER_DECKY_IDS
        .iter()
        .chain(decnet_confine::caps::FOR_DECKY_PORTS)
        .chain(decnet_confine::caps::FOR_DECKY_FIREWALL)
        .map(|(_, n)| *n)
        .collect();
    needed.sort();
    assert_eq!(caps, needed);
    for key in [
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/decnet/agent /etc/decnet/agent",
        "ProtectHome=yes",
        "Delegate=yes",
        // A decky's own user, network, mount, IPC and PID namespaces, nothing else.
        "RestrictNamespaces=user net mnt ipc pid",
    ] {
        assert!(agent.contains(key), "agent unit lacks {key}");
    }
    // The updater drives the agent unit through systemd and may self-update.
    let up = unit("decnet-updater.service");
    assert!(
        up.contains("--agent-control systemd") && up.contains("--agent-unit decnet-agent.service")
    );
    // Through the packaged launcher, which falls back from a new updater
    // that does not come up.
    assert!(up.contains("launch --install-dir /opt/decnet -- serve"));
    assert!(up.contains("ReadWritePaths=/opt/decnet /etc/decnet/updater"));
    // The way back from a bad release never stops restarting.
    assert!(up.contains("StartLimitIntervalSec=0"));
    // Least privilege for the updater (no capability at all) and the
    // forwarder (reading the log it ships, nothing else).
    let fwd = unit("decnet-forwarder.service");
    for (text, caps) in [
        (&up, "CapabilityBoundingSet=\n"),
        (&fwd, "CapabilityBoundingSet=CAP_DAC_READ_SEARCH\n"),
    ] {
        assert!(text.contains(caps), "{caps:?}");
        for key in [
            "NoNewPrivileges=yes",
            "PrivateDevices=yes",
            "ProtectSystem=strict",
            "RestrictNamespaces=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "SystemCallArchitectures=native",
        ] {
            assert!(text.contains(key), "{key}");
        }
    }
    // Installed enabled, the worker units wait for their bundles; the agent
    // runs the packaged binary until the updater installs a release.
    assert!(agent.contains("ConditionPathExists=/etc/decnet/agent/worker.crt"));
    assert!(agent.contains("bin=/usr/bin/decnet-agent"));
    assert!(up.contains("ConditionPathExists=/etc/decnet/updater/updater.crt"));
    let master = unit("decnet-master.service");
    assert!(master.contains("User=decnet") && master.contains("ConditionPathExists="));
}

/// Each worker daemon's port is held by a socket unit of its own, named as
/// the daemon's server takes it (`agent`, `updater`), on the daemon's
/// default address, required by its service and waiting for the same
/// bundle.
#[test]
fn socket_units_hold_the_worker_daemons_ports() {
    for (daemon, port, crt) in [
        ("agent", 8765, "/etc/decnet/agent/worker.crt"),
        ("updater", 8766, "/etc/decnet/updater/updater.crt"),
    ] {
        let sock = unit(&format!("decnet-{daemon}.socket"));
        for key in [
            format!("ListenStream=0.0.0.0:{port}"),
            format!("FileDescriptorName={daemon}"),
            format!("ConditionPathExists={crt}"),
            "WantedBy=sockets.target".to_string(),
        ] {
            assert!(sock.contains(&key), "decnet-{daemon}.socket lacks {key}");
        }
        let svc = unit(&format!("decnet-{daemon}.service"));
        assert!(
            svc.contains(&format!("Requires=decnet-{daemon}.socket")),
            "decnet-{daemon}.service does not require its socket"
        );
    }
}

#[test]
fn systemd_analyze_accepts_the_units() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        decnet_e2e::skip::missing("!!! systemd-analyze not installed: unit syntax NOT verified");
        return;
    }
    for u in UNITS.iter().chain(SOCKETS) {
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

/// Every `decnet_*` series name in `text` (histogram and counter suffixes
/// folded to the registered family name).
fn series_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = text[i..].find("decnet_") {
        let start = i + off;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_count", "_sum", "_total"] {
                if let Some(n) = name.strip_suffix(suffix) {
                    name = n;
                    break;
                }
            }
            out.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// The family names registered in the crates' sources (`"decnet_…"` string
/// literals passed to `register` or `encode_descriptor`).
fn registered_series() -> std::collections::BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                if !["target", ".git", "tests", "fuzz", "wiki", "packaging"]
                    .contains(&name.as_str())
                {
                    stack.push(p);
                }
            } else if name == "metrics.rs" || name == "master_link.rs" {
                let text = std::fs::read_to_string(&p).unwrap();
                for lit in text.split('"').skip(1).step_by(2) {
                    // (`decnet_test_*`: the registry's own unit test.)
                    if lit.starts_with("decnet_")
                        && !lit.starts_with("decnet_test_")
                        && lit.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        out.insert(lit.to_string());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_dashboard_and_alerts_use_only_series_the_daemons_register() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let registered = registered_series();
    for must in [
        "decnet_http_requests",
        "decnet_host_heartbeat_age_seconds",
        "decnet_forwarder_lag_bytes",
        "decnet_probe_duration_seconds",
        "decnet_log_lines_written",
    ] {
        assert!(
            registered.contains(must),
            "{must} not found in {registered:?}"
        );
    }
    let dashboard = std::fs::read_to_string(dir.join("grafana/decnet-fleet.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert_eq!(v["uid"], "decnet-fleet");
    let panels = v["panels"].as_array().unwrap();
    assert!(panels.len() > 10);
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "panel {} has no query",
            p["title"]
        );
    }
    let alerts = std::fs::read_to_string(dir.join("prometheus/decnet-alerts.yml")).unwrap();
    for (what, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let used = series_names(text);
        assert!(used.len() > 5, "{what}: {used:?}");
        let unknown: Vec<&String> = used.difference(&registered).collect();
        assert!(
            unknown.is_empty(),
            "{what} uses series no daemon registers: {unknown:?}"
        );
    }
    // Every registered series is on the dashboard.
    let on_dashboard = series_names(&dashboard);
    let missing: Vec<&String> = registered.difference(&on_dashboard).collect();
    assert!(
        missing.is_empty(),
        "series not on the dashboard: {missing:?}"
    );
    let scrape = std::fs::read_to_string(dir.join("prometheus/prometheus.yml")).unwrap();
    for job in ["decnet-master", "decnet-agent", "decnet-updater"] {
        assert!(scrape.contains(&format!("job_name: {job}")), "{job}");
    }
    assert!(scrape.contains("monitor.key") && scrape.contains("scheme: https"));
}

#[test]
fn the_target_generator_turns_the_fleet_list_into_file_sd() {
    if Command::new("jq").arg("--version").output().is_err() {
        decnet_e2e::skip::missing("!!! jq not installed: decnet-targets NOT exercised");
        return;
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus/decnet-targets");
    let list = r#"[{"name":"w1","address":"10.0.0.5","status":"active","agent_fingerprint":"aa","updater_fingerprint":null},
        {"name":"w2","address":"fd00::2","status":"unreachable","agent_fingerprint":"bb","updater_fingerprint":"cc"},
        {"name":"w3","address":"10.0.0.7","status":"decommissioned","agent_fingerprint":"dd","updater_fingerprint":"ee"}]"#;
    let run = |role: &str, port: &str| -> serde_json::Value {
        use std::io::Write;
        let mut child = Command::new("sh")
            .arg(&script)
            .args([role, port])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(list.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(
        run("agent", "9471"),
        serde_json::json!([
            {"targets": ["10.0.0.5:9471"], "labels": {"host": "w1"}},
            {"targets": ["[fd00::2]:9471"], "labels": {"host": "w2"}}
        ])
    );
    assert_eq!(
        run("updater", "9472"),
        serde_json::json!([{"targets": ["[fd00::2]:9472"], "labels": {"host": "w2"}}])
    );
}

/// `dpkg-deb` output for `args` on `deb`.
fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debian_packages_build_with_their_files_modes_and_scripts() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        decnet_e2e::skip::missing(
            "!!! dpkg-deb not installed: the Debian packages are NOT built or checked",
        );
        return;
    }
    let debs = decnet_e2e::DebianPackages::build();
    let (master, worker) = (debs.master.clone(), debs.worker.clone());

    // Fields.
    assert_eq!(
        dpkg_deb(&["-f"], &master).lines().next(),
        Some("Package: decnet")
    );
    let fields = dpkg_deb(&["-f"], &worker);
    assert!(fields.contains("Package: decnet-worker"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{fields}"
    );

    // Contents: path -> (mode, owner).
    let contents = |deb: &Path| -> std::collections::BTreeMap<String, (String, String)> {
        dpkg_deb(&["-c"], deb)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let path = f.get(5)?.trim_start_matches('.').to_string();
                Some((path, (f[0].to_string(), f[1].to_string())))
            })
            .collect()
    };
    let m = contents(&master);
    assert_eq!(
        m["/usr/bin/decnet"],
        ("-rwxr-xr-x".into(), "root/root".into())
    );
    assert!(
        m.contains_key("/lib/systemd/system/decnet-master.service"),
        "{m:?}"
    );
    assert!(m.contains_key("/usr/share/doc/decnet/Install.md"));
    let w = contents(&worker);
    for b in ["/usr/bin/decnet-agent", "/usr/bin/decnet-updater"] {
        assert_eq!(w[b], ("-rwxr-xr-x".into(), "root/root".into()), "{b}");
    }
    for u in [
        "decnet-agent.service",
        "decnet-agent.socket",
        "decnet-updater.service",
        "decnet-updater.socket",
        "decnet-forwarder.service",
        "decnet-decky-firewall.service",
    ] {
        let p = format!("/lib/systemd/system/{u}");
        assert_eq!(w[&p].0, "-rw-r--r--", "{p}");
    }
    assert_eq!(w["/etc/default/decnet"].0, "-rw-r--r--");
    // No key, no bundle, no state ships in a package.
    for p in m.keys().chain(w.keys()) {
        assert!(
            !(p.ends_with(".key") || p.ends_with(".crt") || p.starts_with("/var/")),
            "{p} must not ship"
        );
    }

    // Maintainer scripts: the settings file is a conffile; the scripts
    // parse; purge removes the keys, remove keeps them.
    let ctl = tempfile::tempdir().unwrap();
    let status = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&worker)
        .arg(ctl.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(ctl.path().join("conffiles"))
            .unwrap()
            .trim(),
        "/etc/default/decnet"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let ok = Command::new("sh")
            .arg("-n")
            .arg(ctl.path().join(s))
            .status()
            .unwrap();
        assert!(ok.success(), "{s} does not parse");
    }
    let postinst = std::fs::read_to_string(ctl.path().join("postinst")).unwrap();
    assert!(
        postinst.contains("-m 0700 /etc/decnet/agent /etc/decnet/updater"),
        "{postinst}"
    );
    assert!(postinst.contains("waits for its bundle"), "{postinst}");
    let postrm = std::fs::read_to_string(ctl.path().join("postrm")).unwrap();
    let purge = postrm.split("purge)").nth(1).expect("a purge branch");
    assert!(
        purge.contains("rm -rf /etc/decnet/agent /etc/decnet/updater"),
        "{postrm}"
    );
    let remove = postrm
        .split("remove)")
        .nth(1)
        .unwrap()
        .split(";;")
        .next()
        .unwrap();
    assert!(
        !remove.contains("rm -rf"),
        "remove keeps the keys: {remove}"
    );
}
