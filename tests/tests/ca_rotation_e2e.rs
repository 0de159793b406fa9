//! CA rotation with real processes: a master, agents heartbeating every
//! second, an updater, a forwarder writing a line every 100 ms, and a host
//! that is down through the whole rotation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use decnet_e2e::{
    Agent, MasterHome, UpdaterFixture, append_lines, copy_dir, free_port, join_with_token, wait_for,
};
use decnet_pki::{Bundle, BundleKind};

fn status(m: &MasterHome) -> serde_json::Value {
    m.json(&["ca", "rotation", "status", "--json"])
}

fn host<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|r| r["host"] == name))
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Wait until `ok` holds of the rotation status.
fn wait_status(m: &MasterHome, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let mut last = serde_json::Value::Null;
    let done = wait_for(Duration::from_secs(60), || {
        last = status(m);
        ok(&last).then_some(())
    });
    assert!(done.is_some(), "{what}: {last}");
}

/// Every listed host's current certificates are of `side` ("old"/"new").
fn all_on(v: &serde_json::Value, hosts: &[(&str, bool)], side: &str) -> bool {
    hosts.iter().all(|(h, updater)| {
        let r = host(v, h);
        r["agent_ca"] == side && (!updater || r["updater_ca"] == side)
    })
}

fn trust_digest(dir: &Path) -> String {
    decnet_pki::trust::digest(&std::fs::read_to_string(dir.join("ca.crt")).unwrap())
}

fn openssl_verify(ca: &Path, cert: &Path) -> bool {
    std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether a client presenting the bundle in `dir` gets an answer from
/// `url` (expecting a server of role `server_cn`).
fn answered(dir: &Path, kind: BundleKind, server_cn: &str, url: &str) -> Result<u16, String> {
    let client = decnet_e2e::mtls_client(dir, kind, server_cn);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        client
            .get(url)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("{e:?}"))
    })
}

/// `swarm check` reaches every one of `hosts` (retried a few times: an
/// agent may still be starting).
fn check_reaches(m: &MasterHome, hosts: &[&str]) {
    let mut last = String::new();
    let reached = wait_for(Duration::from_secs(20), || {
        let out = m.run(&["swarm", "check", "--json"]);
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        hosts
            .iter()
            .all(|h| {
                v.as_array()
                    .and_then(|rows| rows.iter().find(|r| r["host"] == *h))
                    .is_some_and(|r| r["reachable"] == true)
            })
            .then_some(())
    });
    assert!(
        reached.is_some(),
        "swarm check does not reach {hosts:?}: {last}"
    );
}

/// Writes a numbered line every 100 ms into a file its forwarder follows.
struct LineWriter {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<usize>>,
}

impl LineWriter {
    fn start(path: PathBuf) -> LineWriter {
        Self::start_as(path, "rotation-line")
    }

    fn start_as(path: PathBuf, tag: &'static str) -> LineWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut n = 0;
            while !flag.load(Ordering::SeqCst) {
                append_lines(&path, &[format!("{tag}-{n:05}")]);
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        });
        LineWriter {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

#[test]
fn the_fleet_moves_to_a_new_ca_without_losing_a_heartbeat_or_a_line() {
    let m = MasterHome::new();
    m.enroll("w1");
    m.ok(&["swarm", "enroll", "--host", "w2", "--address", "127.0.0.1"]);
    // w3 is down through the whole rotation.
    m.enroll("w3");
    m.set_agent_port("w3", free_port());
    let raw = m.dir.path().join("fleet.log");
    let master = m.serve(&["--listener-port", "0", "--log-path", raw.to_str().unwrap()]);
    let listener = master.announced("decnet listener listening on").to_string();
    let api = master.addr.to_string();
    let w1 = UpdaterFixture::start_with(
        &m,
        "w1",
        &[],
        &[
            "--master",
            &api,
            "--crl-refresh",
            "1",
            &format!("--agent-arg=--master={api}"),
            "--agent-arg=--heartbeat-interval=1",
        ],
    );
    let log_file = m.dir.path().join("w2-app.log");
    std::fs::write(&log_file, "").unwrap();
    let w2 = Agent::start(
        &m,
        "w2",
        &m.dir.path().join("w2-state"),
        &[
            "--master",
            &api,
            "--heartbeat-interval",
            "1",
            "--forward-to",
            &listener,
            "--forward-log",
            log_file.to_str().unwrap(),
        ],
    );
    let writer = LineWriter::start(log_file.clone());
    // w1 ships its logs with a standalone forwarder (as the packaged
    // decnet-forwarder unit does) beside the agent that renews the bundle.
    let w1_log = m.dir.path().join("w1-app.log");
    std::fs::write(&w1_log, "").unwrap();
    let _w1_forwarder = decnet_e2e::start_forwarder(
        &m,
        "w1",
        listener.parse().unwrap(),
        &w1_log,
        &m.dir.path().join("w1-fwd-state"),
    );
    let w1_writer = LineWriter::start_as(w1_log, "w1-line");
    // w1's agent runs from a release its updater installed.
    let push = |version: &str| {
        let dir = decnet_e2e::good_release(&m.dir.path().join("rel").join(version), false);
        std::fs::write(dir.join("VERSION"), version).unwrap();
        let out = m.ok(&[
            "swarm",
            "update",
            "--release",
            dir.to_str().unwrap(),
            "--host",
            "w1",
        ]);
        assert!(out.contains("UPDATED"), "{out}");
    };
    push("1.0.0");
    check_reaches(&m, &["w1", "w2"]);
    let before = status(&m);
    assert_eq!(before["phase"], "none", "{before}");
    let old_ca_copy = m.dir.path().join("old-ca.crt");
    std::fs::copy(m.home().join("ca/ca.crt"), &old_ca_copy).unwrap();
    let old_key = std::fs::read(m.home().join("ca/ca.key")).unwrap();
    let old_master = m.dir.path().join("old-master-bundle");
    copy_dir(&m.master_bundle_dir(), &old_master);

    // Start: every live host takes both CAs and renews under the new one.
    let started = m.json(&["ca", "rotation", "start", "--json"]);
    assert_eq!(started["phase"], "rotating", "{started}");
    let again = m.run(&["ca", "rotation", "start"]);
    assert_ne!(again.status.code(), Some(0), "a second start is refused");
    wait_status(
        &m,
        "w1 and w2 trust both CAs and renew under the new one",
        |v| {
            all_on(v, &[("w1", true), ("w2", false)], "new")
                && host(v, "w1")["trusts_both"] == true
                && host(v, "w2")["trusts_both"] == true
        },
    );
    let mid = status(&m);
    assert_eq!(host(&mid, "w3")["agent_ca"], "old", "{mid}");
    // `swarm doctor` names the host still on the old CA.
    let doctor = m.run(&["swarm", "doctor", "--json"]);
    let d: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let rotation: Vec<&serde_json::Value> = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "ca_rotation")
        .collect();
    assert!(
        rotation.iter().any(|f| f["host"] == "w3")
            && !rotation
                .iter()
                .any(|f| f["host"] == "w1" || f["host"] == "w2"),
        "{d}"
    );
    // In the middle: the master reaches every live host, and an update works.
    check_reaches(&m, &["w1", "w2"]);
    push("1.0.1");

    // Finish is refused while the down host depends on the old CA…
    let refused = m.run(&["ca", "rotation", "finish"]);
    assert_ne!(refused.status.code(), Some(0));
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        why.contains("w3 (agent)") && !why.contains("w1") && !why.contains("w2"),
        "{why}"
    );
    // …and --force cuts exactly it off.
    let forced = m.run(&["ca", "rotation", "finish", "--force"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&forced.stdout),
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(forced.status.code(), Some(0), "{said}");
    assert!(
        said.contains("cuts off: w3 (agent), w3 (updater)"),
        "{said}"
    );
    assert!(said.contains("OLD CA KEY IS DESTROYED"), "{said}");

    // Every live host drops the old CA; nothing of the old key is left.
    let new_ca = m.home().join("ca/ca.crt");
    let only_new = trust_digest(&m.home().join("ca"));
    assert_ne!(std::fs::read(m.home().join("ca/ca.key")).unwrap(), old_key);
    assert!(!m.home().join("ca/rotation").exists());
    for dir in [
        m.agent_bundle_dir("w1"),
        m.updater_bundle_dir("w1"),
        m.agent_bundle_dir("w2"),
    ] {
        assert!(
            wait_for(Duration::from_secs(30), || (trust_digest(&dir) == only_new)
                .then_some(()))
            .is_some(),
            "{} still trusts the old CA",
            dir.display()
        );
    }
    for cert in [
        m.agent_bundle_dir("w1").join("worker.crt"),
        m.updater_bundle_dir("w1").join("updater.crt"),
        m.agent_bundle_dir("w2").join("worker.crt"),
        m.master_bundle_dir().join("worker.crt"),
    ] {
        assert!(openssl_verify(&new_ca, &cert), "{}", cert.display());
        assert!(!openssl_verify(&old_ca_copy, &cert), "{}", cert.display());
    }
    // An old-CA certificate is refused everywhere: w3's at the master, the
    // old master certificate at a worker. (Each client trusts the new CA,
    // so a refusal is the server's.)
    let w3_old = m.dir.path().join("w3-old-bundle");
    copy_dir(&m.agent_bundle_dir("w3"), &w3_old);
    std::fs::copy(&new_ca, w3_old.join("ca.crt")).unwrap();
    std::fs::copy(&new_ca, old_master.join("ca.crt")).unwrap();
    let crl_url = format!("https://{api}/crl");
    assert!(
        wait_for(Duration::from_secs(10), || answered(
            &w3_old,
            BundleKind::Agent,
            "decnet-master",
            &crl_url
        )
        .is_err()
        .then_some(()))
        .is_some(),
        "the master still admits a certificate of the old CA"
    );
    let health = format!("https://127.0.0.1:{}/health", w2.daemon.port());
    let old_master_at_w2 = answered(&old_master, BundleKind::Master, "w2", &health);
    assert!(old_master_at_w2.is_err(), "{old_master_at_w2:?}");
    check_reaches(&m, &["w1", "w2"]);

    // No heartbeat failed, and every line of both forwarders arrived once
    // (the old-CA connections were ended at the finish and made again with
    // the renewed certificates).
    for (writer, tag) in [(writer, "rotation-line-"), (w1_writer, "w1-line-")] {
        let lines = writer.finish();
        let all = wait_for(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&raw).unwrap_or_default();
            let got: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split_whitespace().find(|w| w.starts_with(tag)))
                .collect();
            (got.len() >= lines).then(|| got.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        })
        .unwrap_or_else(|| panic!("{tag} lines lost; w2 log:\n{}", w2.daemon.log_text()));
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "a {tag} line arrived twice");
        assert_eq!(
            all.len(),
            lines,
            "{tag}: {lines} written, {} arrived",
            all.len()
        );
    }
    let w2_log = w2.daemon.log_text();
    assert!(!w2_log.contains("heartbeat failed"), "{w2_log}");
    let audit = m.json(&["audit", "--json"]);
    for action in ["ca.rotation.start", "ca.rotation.finish"] {
        assert!(
            audit
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action),
            "{action} not audited"
        );
    }
    drop(w1);
}

#[test]
fn an_abort_after_a_master_restart_brings_every_host_back_to_the_old_ca() {
    let m = MasterHome::new();
    m.ok(&["swarm", "enroll", "--host", "a1", "--address", "127.0.0.1"]);
    m.ok(&["swarm", "enroll", "--host", "a2", "--address", "127.0.0.1"]);
    let port = free_port().to_string();
    let serve = ["--no-listener", "--port", port.as_str()];
    let mut master = m.serve(&serve);
    let api = master.addr.to_string();
    let beat = ["--master", api.as_str(), "--heartbeat-interval", "1"];
    let a1 = Agent::start(&m, "a1", &m.dir.path().join("a1-state"), &beat);
    let _a2 = Agent::start(&m, "a2", &m.dir.path().join("a2-state"), &beat);
    let old_digest = trust_digest(&m.home().join("ca"));
    m.ok(&["ca", "rotation", "start"]);
    wait_status(&m, "a1 and a2 renew under the new CA", |v| {
        all_on(v, &[("a1", false), ("a2", false)], "new")
    });
    // A restart in the middle resumes the rotation.
    master.stop();
    master = m.serve(&serve);
    assert_eq!(master.addr.to_string(), api);
    assert_eq!(status(&m)["phase"], "rotating");
    check_reaches(&m, &["a1", "a2"]);
    // The abort turns the rotation around at once; with hosts still on the
    // new CA it is not complete yet, and a restart in this phase resumes
    // it too.
    let turned = m.run(&["ca", "rotation", "abort"]);
    let said = String::from_utf8_lossy(&turned.stderr).to_string();
    assert_ne!(turned.status.code(), Some(0), "{said}");
    assert!(said.contains("the abort is under way"), "{said}");
    assert_eq!(status(&m)["phase"], "aborting");
    master.stop();
    master = m.serve(&serve);
    assert_eq!(status(&m)["phase"], "aborting");
    // Hosts renew back under the old CA, then it completes.
    let out = m.ok(&["ca", "rotation", "abort", "--wait", "60"]);
    assert!(out.contains("abort complete"), "{out}");
    assert_eq!(status(&m)["phase"], "none");
    assert!(!m.home().join("ca/rotation").exists());
    assert_eq!(trust_digest(&m.home().join("ca")), old_digest);
    for h in ["a1", "a2"] {
        let dir = m.agent_bundle_dir(h);
        assert!(
            wait_for(Duration::from_secs(30), || (trust_digest(&dir)
                == old_digest)
                .then_some(()))
            .is_some(),
            "{h} still trusts the aborted CA"
        );
        let b = Bundle::load(&dir, BundleKind::Agent).unwrap();
        assert!(b.verify(&b.identity.role).is_ok());
        assert!(openssl_verify(
            &m.home().join("ca/ca.crt"),
            &dir.join("worker.crt")
        ));
    }
    check_reaches(&m, &["a1", "a2"]);
    let log = a1.daemon.log_text();
    assert!(log.contains("trust set updated"), "{log}");
    drop(master);
}

#[test]
fn tokens_pin_the_ca_of_their_time_and_a_host_cut_off_rejoins() {
    let m = MasterHome::new();
    // c1 is enrolled under the old CA and stays down.
    m.ok(&["swarm", "enroll", "--host", "c1", "--address", "127.0.0.1"]);
    m.set_agent_port("c1", free_port());
    let master = m.serve(&["--no-listener"]);
    let api = master.addr.to_string();
    let before = m.join_token("t1", &[]);
    let unused = m.join_token("t3", &[]);
    let started = m.json(&["ca", "rotation", "start", "--json"]);
    let new_fp = started["new_ca"].as_str().unwrap().to_string();
    // A running master follows within its housekeeping second.
    std::thread::sleep(Duration::from_secs(2));
    let during = m.join_token("t2", &[]);
    assert!(
        during.ends_with(&new_fp),
        "a token made now pins the new CA"
    );
    assert!(!before.ends_with(&new_fp));
    // Both join during the rotation: each trusts both CAs (the other one
    // through its endorsement) and holds a certificate of the new CA.
    let both = trust_digest(&m.master_bundle_dir());
    for (t, h) in [(&before, "t1"), (&during, "t2")] {
        let dir = m.dir.path().join(format!("{h}-bundle"));
        let out = join_with_token("decnet-agent", &master, t, &dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(trust_digest(&dir), both, "{h}");
        let b = Bundle::load(&dir, BundleKind::Agent).unwrap();
        assert!(
            b.identity.issuer.contains("rotated"),
            "{:?}",
            b.identity.issuer
        );
    }
    // Only c1 depends on the old CA: cut off by --force.
    let forced = m.run(&["ca", "rotation", "finish", "--force"]);
    let said = String::from_utf8_lossy(&forced.stderr).to_string();
    assert_eq!(forced.status.code(), Some(0), "{said}");
    assert!(said.contains("cuts off: c1 (agent)"), "{said}");
    std::thread::sleep(Duration::from_secs(2));
    // A token made before the rotation, still unused, is refused now.
    let out = join_with_token(
        "decnet-agent",
        &master,
        &unused,
        &m.dir.path().join("t3-bundle"),
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not the one the token names"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The host cut off rejoins with a new token and is reached again.
    let dir = m.dir.path().join("c1-rejoined");
    let out = join_with_token("decnet-agent", &master, &m.join_token("c1", &[]), &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _c1 = Agent::start_with_bundle(
        &m,
        "c1",
        &dir,
        &m.dir.path().join("c1-state"),
        &["--master", &api, "--heartbeat-interval", "1"],
    );
    check_reaches(&m, &["c1"]);
    let st = m.json(&["swarm", "show", "c1", "--json"]);
    assert_eq!(st["status"], "active", "{st}");
}

#[test]
fn two_masters_on_postgresql_follow_one_rotation() {
    let Some(db) = decnet_e2e::postgres::fresh_database("decnet_rot") else {
        return;
    };
    let m = MasterHome::with_database(Some(db));
    m.ok(&["swarm", "enroll", "--host", "p1", "--address", "127.0.0.1"]);
    m.ok(&["swarm", "enroll", "--host", "p2", "--address", "127.0.0.1"]);
    let a = m.serve(&["--no-listener"]);
    let b = m.serve(&["--no-listener"]);
    // p1 talks to the first master, p2 to the second.
    let (a_api, b_api) = (a.addr.to_string(), b.addr.to_string());
    let _p1 = Agent::start(
        &m,
        "p1",
        &m.dir.path().join("p1-state"),
        &["--master", &a_api, "--heartbeat-interval", "1"],
    );
    let _p2 = Agent::start(
        &m,
        "p2",
        &m.dir.path().join("p2-state"),
        &["--master", &b_api, "--heartbeat-interval", "1"],
    );
    check_reaches(&m, &["p1", "p2"]);
    m.ok(&["ca", "rotation", "start"]);
    wait_status(&m, "both hosts move, each through its own master", |v| {
        all_on(v, &[("p1", false), ("p2", false)], "new")
    });
    let old_key = std::fs::read(m.home().join("ca/ca.key")).unwrap();
    let archive = m.dir.path().join("offline");
    let out = m.ok(&[
        "ca",
        "rotation",
        "finish",
        "--wait",
        "30",
        "--archive-key",
        archive.to_str().unwrap(),
    ]);
    assert!(out.contains("OLD CA KEY IS ARCHIVED"), "{out}");
    let archived: Vec<PathBuf> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    assert_eq!(archived.len(), 1);
    assert_eq!(std::fs::read(&archived[0]).unwrap(), old_key);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&archived[0])
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_ne!(std::fs::read(m.home().join("ca/ca.key")).unwrap(), old_key);
    let only_new = trust_digest(&m.home().join("ca"));
    for h in ["p1", "p2"] {
        let dir = m.agent_bundle_dir(h);
        assert!(
            wait_for(Duration::from_secs(30), || (trust_digest(&dir) == only_new)
                .then_some(()))
            .is_some(),
            "{h} still trusts the old CA"
        );
    }
    check_reaches(&m, &["p1", "p2"]);
    drop((a, b));
}
