//! The real `decnet` binary against a temp home: CA init, enroll, reissue,
//! list/show, decommission, audit.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use decnet_pki::{Bundle, BundleKind};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("decnet")
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_decnet"))
            .args(args)
            .env("DECNET_HOME", self.path())
            .env_remove("DECNET_DATABASE_URL")
            .env_remove("DECNET_CA_DIR")
            .env("USER", "tester")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "decnet {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "decnet {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }
    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
    fn audit(&self) -> Vec<serde_json::Value> {
        self.json(&["audit", "--json", "--limit", "1000"])
            .as_array()
            .unwrap()
            .clone()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn openssl_verify(ca: &Path, leaf: &Path) -> bool {
    Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg(leaf)
        .output()
        .expect("openssl installed")
        .status
        .success()
}

#[test]
fn ca_init_writes_ca_and_master_bundle_and_refuses_to_overwrite() {
    let h = Home::new();
    h.ok(&["ca", "init"]);
    let ca = h.path().join("ca");
    assert_eq!(mode(&ca), 0o700);
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    assert_eq!(mode(&ca.join("master/worker.key")), 0o600);
    assert_eq!(mode(&h.path().join("master.db")), 0o600);
    let master = Bundle::load(&ca.join("master"), BundleKind::Master).unwrap();
    assert_eq!(master.identity.cn, "decnet-master");
    assert!(openssl_verify(
        &ca.join("ca.crt"),
        &ca.join("master/worker.crt")
    ));

    let before = std::fs::read(ca.join("ca.crt")).unwrap();
    let err = h.fails(&["ca", "init"], 2);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(ca.join("ca.crt")).unwrap(),
        before,
        "refused init must not touch the CA"
    );

    h.ok(&["ca", "init", "--force"]);
    assert_ne!(std::fs::read(ca.join("ca.crt")).unwrap(), before);

    let show = h.json(&["ca", "show", "--json"]);
    assert_eq!(show["ca_fingerprint"].as_str().unwrap().len(), 64);
    let audit = h.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "ca.init" && e["outcome"] == "refused")
    );
    assert_eq!(
        audit
            .iter()
            .filter(|e| e["action"] == "ca.init" && e["outcome"] == "ok")
            .count(),
        2
    );
    assert!(audit.iter().all(|e| e["actor"] == "local:tester"));
}

#[test]
fn enroll_issues_bundles_records_fingerprints_and_out_dir() {
    let h = Home::new();
    h.ok(&["ca", "init"]);
    let out = h.dir.path().join("ship");
    h.ok(&[
        "swarm",
        "enroll",
        "--host",
        "web-1",
        "--address",
        "10.1.2.3",
        "--sans",
        "web1.lab,10.9.9.9",
        "--updater",
        "--out-dir",
        out.to_str().unwrap(),
        "--agent-port",
        "9001",
    ]);
    let ca = h.path().join("ca");
    // --out-dir writes the bundles there only, laid out like the worker's
    // ~/.decnet: no copy of the keys stays on the master.
    assert!(!ca.join("workers/web-1").exists());
    let wdir = out.join("agent");
    assert_eq!(mode(&wdir), 0o700);
    assert_eq!(mode(&wdir.join("worker.key")), 0o600);
    let agent = Bundle::load(&wdir, BundleKind::Agent).unwrap();
    let updater = Bundle::load(&out.join("updater"), BundleKind::Updater).unwrap();
    assert_eq!(agent.identity.cn, "web-1");
    assert_eq!(updater.identity.cn, "updater@web-1");
    assert!(openssl_verify(&ca.join("ca.crt"), &wdir.join("worker.crt")));
    assert!(openssl_verify(
        &ca.join("ca.crt"),
        &out.join("updater/updater.crt")
    ));
    assert_eq!(mode(&out.join("updater/updater.key")), 0o600);

    let show = h.json(&["swarm", "show", "web-1", "--json"]);
    assert_eq!(
        show["agent_fingerprint"],
        agent.identity.fingerprint.to_hex()
    );
    assert_eq!(
        show["updater_fingerprint"],
        updater.identity.fingerprint.to_hex()
    );
    assert_eq!(show["address"], "10.1.2.3");
    assert_eq!(show["agent_port"], 9001);
    assert_eq!(show["updater_port"], 8766);
    assert_eq!(show["status"], "enrolled");
    let sans: Vec<&str> = show["sans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for s in ["10.1.2.3", "web1.lab", "10.9.9.9", "web-1"] {
        assert!(sans.contains(&s), "{sans:?}");
    }
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(wdir.join("worker.crt"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("IP Address:10.1.2.3") && text.contains("DNS:web1.lab"),
        "{text}"
    );

    let list = h.json(&["swarm", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let table = h.ok(&["swarm", "list"]);
    assert!(
        table.contains("web-1") && table.contains("enrolled"),
        "{table}"
    );
}

#[test]
fn second_enroll_is_refused_and_reissue_revokes_the_old_certificates() {
    let h = Home::new();
    h.ok(&["ca", "init"]);
    h.ok(&[
        "swarm",
        "enroll",
        "--host",
        "db-1",
        "--address",
        "10.0.0.1",
        "--updater",
    ]);
    let first = h.json(&["swarm", "show", "db-1", "--json"]);
    let err = h.fails(
        &["swarm", "enroll", "--host", "db-1", "--address", "10.0.0.1"],
        2,
    );
    assert!(err.contains("--reissue"), "{err}");
    // The suggested command runs as printed (tested below with the same args).
    assert!(
        err.contains("run: decnet swarm enroll --host db-1 --reissue"),
        "{err}"
    );
    assert_eq!(
        h.json(&["swarm", "show", "db-1", "--json"])["agent_fingerprint"],
        first["agent_fingerprint"]
    );

    h.ok(&[
        "swarm",
        "enroll",
        "--host",
        "db-1",
        "--address",
        "10.0.0.2",
        "--updater",
        "--reissue",
    ]);
    let second = h.json(&["swarm", "show", "db-1", "--json"]);
    assert_ne!(second["agent_fingerprint"], first["agent_fingerprint"]);
    assert_ne!(second["updater_fingerprint"], first["updater_fingerprint"]);
    assert_eq!(second["address"], "10.0.0.2");
    let revoked = second["revoked_fingerprints"].as_array().unwrap();
    assert!(revoked.contains(&first["agent_fingerprint"]));
    assert!(revoked.contains(&first["updater_fingerprint"]));
    assert!(!revoked.contains(&second["agent_fingerprint"]));
    let bundle = Bundle::load(&h.path().join("ca/workers/db-1"), BundleKind::Agent).unwrap();
    assert_eq!(
        second["agent_fingerprint"],
        bundle.identity.fingerprint.to_hex()
    );

    // A reissue keeps the endpoint and the recorded SANs unless restated.
    h.ok(&[
        "swarm",
        "set-endpoint",
        "db-1",
        "--agent-port",
        "9100",
        "--updater-port",
        "9101",
    ]);
    h.ok(&[
        "swarm",
        "enroll",
        "--host",
        "db-1",
        "--address",
        "10.0.0.2",
        "--sans",
        "db-1.lab,10.9.9.9",
        "--reissue",
    ]);
    let out = h.ok(&["swarm", "enroll", "--host", "db-1", "--reissue"]);
    assert!(
        !out.contains("updater"),
        "no updater bundle was issued: {out}"
    );
    let third = h.json(&["swarm", "show", "db-1", "--json"]);
    assert_eq!(third["address"], "10.0.0.2");
    assert_eq!(
        (third["agent_port"].as_u64(), third["updater_port"].as_u64()),
        (Some(9100), Some(9101))
    );
    let sans: Vec<&str> = third["sans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        sans.contains(&"db-1.lab") && sans.contains(&"10.9.9.9") && sans.contains(&"10.0.0.2"),
        "{sans:?}"
    );
    // A new host still needs an address.
    let err = h.fails(&["swarm", "enroll", "--host", "db-new"], 2);
    assert!(err.contains("--address is required"), "{err}");

    let audit = h.audit();
    assert!(audit.iter().any(|e| e["action"] == "swarm.enroll"
        && e["outcome"] == "refused"
        && e["target"] == "db-1"));
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "swarm.reissue" && e["outcome"] == "ok")
    );
}

#[test]
fn bad_input_is_refused_with_exit_2_and_nothing_written() {
    let h = Home::new();
    let err = h.fails(
        &["swarm", "enroll", "--host", "w", "--address", "1.2.3.4"],
        2,
    );
    assert!(err.contains("decnet ca init"), "{err}");
    h.ok(&["ca", "init"]);
    for bad in ["Bad_Name", "decnet-master", "updater@x", "-lead", ""] {
        let err = h.fails(
            &["swarm", "enroll", "--host", bad, "--address", "1.2.3.4"],
            2,
        );
        assert!(err.starts_with("error:"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    h.fails(
        &[
            "swarm",
            "enroll",
            "--host",
            "ok-host",
            "--address",
            "bad address!",
        ],
        2,
    );
    assert!(!h.path().join("ca/workers/ok-host").exists());
    assert_eq!(
        h.json(&["swarm", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    h.fails(&["swarm", "show", "nope"], 2);
    h.fails(&["swarm", "enroll", "--host"], 2); // clap usage error
}

#[test]
fn decommission_needs_confirmation_then_revokes_and_removes_bundles() {
    let h = Home::new();
    h.ok(&["ca", "init"]);
    h.ok(&[
        "swarm",
        "enroll",
        "--host",
        "edge-9",
        "--address",
        "192.0.2.9",
        "--updater",
    ]);
    let before = h.json(&["swarm", "show", "edge-9", "--json"]);
    let err = h.fails(&["swarm", "decommission", "edge-9"], 2);
    assert!(err.contains("--yes"), "{err}");
    assert!(h.path().join("ca/workers/edge-9/worker.key").exists());

    h.ok(&["swarm", "decommission", "edge-9", "--yes"]);
    let after = h.json(&["swarm", "show", "edge-9", "--json"]);
    assert_eq!(after["status"], "decommissioned");
    let revoked = after["revoked_fingerprints"].as_array().unwrap();
    assert!(revoked.contains(&before["agent_fingerprint"]));
    assert!(revoked.contains(&before["updater_fingerprint"]));
    assert!(!h.path().join("ca/workers/edge-9").exists());
    let audit = h.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "swarm.decommission" && e["outcome"] == "refused")
    );
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "swarm.decommission" && e["outcome"] == "ok")
    );

    // A decommissioned name may be enrolled again, with fresh certificates.
    h.ok(&[
        "swarm",
        "enroll",
        "--host",
        "edge-9",
        "--address",
        "192.0.2.9",
    ]);
    let again = h.json(&["swarm", "show", "edge-9", "--json"]);
    assert_eq!(again["status"], "enrolled");
    assert_ne!(again["agent_fingerprint"], before["agent_fingerprint"]);
}

#[test]
fn concurrent_enrollments_all_land() {
    let h = Home::new();
    h.ok(&["ca", "init"]);
    let children: Vec<_> = (0..6)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_decnet"))
                .args([
                    "swarm",
                    "enroll",
                    "--host",
                    &format!("par-{i}"),
                    "--address",
                    &format!("10.0.1.{i}"),
                ])
                .env("DECNET_HOME", h.path())
                .env_remove("DECNET_DATABASE_URL")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        h.json(&["swarm", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        6
    );
}

#[test]
fn concurrent_first_use_of_a_fresh_database() {
    let h = Home::new();
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_decnet"))
                .args(["swarm", "list", "--json"])
                .env("DECNET_HOME", h.path())
                .env_remove("DECNET_DATABASE_URL")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn help_is_available_everywhere() {
    let h = Home::new();
    for args in [
        vec!["--help"],
        vec!["ca", "--help"],
        vec!["ca", "init", "--help"],
        vec!["swarm", "enroll", "--help"],
        vec!["swarm", "decommission", "--help"],
    ] {
        let out = h.ok(&args);
        assert!(out.contains("Usage"), "{out}");
    }
    assert!(h.ok(&["--version"]).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn fleet_commands_refuse_early_and_report_unreachable_hosts_as_rows() {
    let h = Home::new();
    h.ok(&["ca", "init"]);
    h.ok(&[
        "swarm",
        "enroll",
        "--host",
        "nu-1",
        "--address",
        "127.0.0.1",
    ]);
    // Nothing listens on port 1: the host is unreachable.
    h.ok(&["swarm", "set-endpoint", "nu-1", "--agent-port", "1"]);
    let rel = h.dir.path().join("rel");
    std::fs::create_dir_all(rel.join("bin")).unwrap();
    std::fs::write(rel.join("bin/decnet-agent"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        rel.join("bin/decnet-agent"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    // An unknown host is refused before anything is packed.
    let err = h.fails(
        &[
            "swarm",
            "update",
            "--release",
            "/nonexistent",
            "--host",
            "ghost",
        ],
        2,
    );
    assert!(err.contains("not enrolled"), "{err}");
    // No updater certificate: said plainly, with no upload announced.
    let out = h.run(&[
        "swarm",
        "update",
        "--release",
        rel.to_str().unwrap(),
        "--host",
        "nu-1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("skipping 1 host(s) without an updater certificate: nu-1"),
        "{text}"
    );
    assert!(text.contains("no updater certificate: issue one"), "{text}");
    assert!(!text.contains("uploading"), "{text}");

    // status and check: an unreachable host is a row, and exit 1.
    for cmd in ["status", "check"] {
        let out = h.run(&["swarm", cmd, "--json"]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["host"], "nu-1", "{cmd}: {v}");
        assert_eq!(v[0]["reachable"], false, "{cmd}");
        assert!(v[0]["updated_at"].is_i64(), "{cmd}: {v}");
        let error = v[0]["error"].as_str().unwrap();
        assert!(error.contains("connection refused"), "{cmd}: {error}");
        assert!(
            !error.contains("hyper") && !error.contains("client error"),
            "{cmd}: {error}"
        );
    }
}
