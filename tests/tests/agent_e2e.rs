//! The real `decnet-agent` driven by the real `decnet` CLI over mTLS on
//! loopback, with the `process` driver.

use std::path::Path;
use std::time::Duration;

use decnet_e2e::{Agent, MasterHome, alive, mtls_client, wait_for};
use decnet_pki::BundleKind;

fn write_config(dir: &Path, name: &str, json: serde_json::Value) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    p
}

fn sleeper(name: &str, services: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "services": services,
        "command": ["/bin/sh", "-c", "echo services=$DECNET_SERVICES; exec sleep 300"],
    })
}

fn decky<'a>(status: &'a serde_json::Value, host: &str, name: &str) -> &'a serde_json::Value {
    let host = status
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("{host} missing in {status}"));
    host["status"]["deckies"]
        .as_array()
        .unwrap_or_else(|| panic!("no status for {host}"))
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing in {host}"))
}

#[test]
fn deploy_two_deckies_teardown_one_restart_agent_and_readopt_the_other() {
    let m = MasterHome::new();
    m.enroll("w1");
    let mut agent = Agent::start(&m, "w1", &m.dir.path().join("w1-state"), &[]);
    let cfg = write_config(
        m.dir.path(),
        "deploy.json",
        serde_json::json!({"version": 1, "deckies": [sleeper("alpha", &["ssh"]), sleeper("beta", &["http"])]}),
    );
    let out = m.ok(&[
        "swarm",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    assert!(out.contains("2/2 deckies running"), "{out}");

    let st = m.json(&["swarm", "status", "w1", "--json"]);
    let a_pid = decky(&st, "w1", "alpha")["pid"].as_u64().unwrap() as u32;
    let b_pid = decky(&st, "w1", "beta")["pid"].as_u64().unwrap() as u32;
    assert_eq!(decky(&st, "w1", "alpha")["state"], "running");
    assert_eq!(decky(&st, "w1", "beta")["state"], "running");
    assert!(alive(a_pid) && alive(b_pid));
    // The decky sees its services; its output goes to its log file.
    let log = agent.state_dir.join("logs/alpha.log");
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("services=ssh")))
        .is_some()
    );

    m.ok(&["swarm", "teardown", "w1", "--decky", "alpha"]);
    let st = m.json(&["swarm", "status", "w1", "--json"]);
    assert_eq!(decky(&st, "w1", "alpha")["state"], "torn_down");
    assert_eq!(decky(&st, "w1", "beta")["state"], "running");
    assert!(wait_for(Duration::from_secs(5), || (!alive(a_pid)).then_some(())).is_some());
    assert!(alive(b_pid), "tearing down alpha must leave beta running");

    // Restart the agent: beta is re-adopted (same process), alpha stays down.
    agent.restart(&m, "w1", &[]);
    assert!(alive(b_pid), "deckies outlive an agent restart");
    let st = m.json(&["swarm", "status", "w1", "--json"]);
    assert_eq!(decky(&st, "w1", "beta")["state"], "running");
    assert_eq!(
        decky(&st, "w1", "beta")["pid"].as_u64().unwrap() as u32,
        b_pid
    );
    assert_eq!(decky(&st, "w1", "alpha")["state"], "torn_down");
    assert!(
        agent.daemon.log_text().contains("re-adopted"),
        "{}",
        agent.daemon.log_text()
    );

    // The adopted decky is still supervised: killed, it is started again.
    decnet_e2e::signal(b_pid, rustix::process::Signal::KILL);
    let new_pid = wait_for(Duration::from_secs(10), || {
        let st = m.json(&["swarm", "status", "w1", "--json"]);
        let d = decky(&st, "w1", "beta");
        let p = d["pid"].as_u64()? as u32;
        (d["state"] == "running" && p != b_pid).then_some(p)
    })
    .expect("adopted decky restarted after a crash");
    assert!(alive(new_pid));
    let st = m.json(&["swarm", "status", "w1", "--json"]);
    assert_eq!(decky(&st, "w1", "beta")["restarts"], 1);

    let audit = m.json(&["audit", "--json"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"swarm.deploy") && actions.contains(&"swarm.teardown"),
        "{actions:?}"
    );
}

#[test]
fn one_failing_decky_never_marks_the_others_failed() {
    let m = MasterHome::new();
    m.enroll("w2");
    let _agent = Agent::start(&m, "w2", &m.dir.path().join("w2-state"), &[]);
    let cfg = write_config(
        m.dir.path(),
        "mixed.json",
        serde_json::json!({"version": 1, "deckies": [
            sleeper("good", &["ssh"]),
            {"name": "bad", "command": ["/nonexistent/honeypot"]},
            {"name": "crashy", "command": ["/bin/sh", "-c", "exit 3"]},
        ]}),
    );
    let out = m.run(&["swarm", "deploy", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "a partial deploy exits 1");
    let st = m.json(&["swarm", "status", "w2", "--json"]);
    assert_eq!(decky(&st, "w2", "good")["state"], "running");
    assert_eq!(decky(&st, "w2", "bad")["state"], "failed");
    let why = decky(&st, "w2", "bad")["error"].as_str().unwrap();
    assert!(
        why.contains("cannot start the program: /nonexistent/honeypot"),
        "{why}"
    );
    assert_eq!(decky(&st, "w2", "crashy")["state"], "failed");
    assert!(
        decky(&st, "w2", "crashy")["error"]
            .as_str()
            .unwrap()
            .contains("status 3")
    );
    let audit = m.json(&["audit", "--json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "swarm.deploy" && e["outcome"] == "partial")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn role_matrix_and_malformed_bodies() {
    let m = MasterHome::new();
    m.enroll("w3");
    m.enroll("other");
    let agent = Agent::start(&m, "w3", &m.dir.path().join("w3-state"), &[]);
    let base = format!("https://{}", agent.daemon.addr);
    let master = mtls_client(&m.master_bundle_dir(), BundleKind::Master, "w3");
    let other_agent = mtls_client(&m.agent_bundle_dir("other"), BundleKind::Agent, "w3");
    let other_updater = mtls_client(&m.updater_bundle_dir("other"), BundleKind::Updater, "w3");
    let own_updater = mtls_client(&m.updater_bundle_dir("w3"), BundleKind::Updater, "w3");

    let get = |c: &reqwest::Client, path: &str| c.get(format!("{base}{path}")).send();
    assert_eq!(get(&master, "/health").await.unwrap().status(), 200);
    assert_eq!(get(&master, "/status").await.unwrap().status(), 200);
    assert_eq!(get(&master, "/evidence").await.unwrap().status(), 200);
    // Names that could leave the archive are no archive.
    for path in [
        "/evidence/x/20261205T000000Z",
        "/evidence/..%2F..%2Fdecky-ids.json/1",
        "/evidence/x/..%2F..%2F..%2Fworker.key",
    ] {
        let r = get(&master, path).await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "not_found");
    }
    for (c, path) in [
        (&other_agent, "/health"),
        (&other_agent, "/status"),
        (&other_updater, "/health"),
        (&own_updater, "/status"),
        // Evidence is the master's alone: a decky's loot may hold secrets.
        (&own_updater, "/evidence"),
        (&other_agent, "/evidence/x/20261205T000000Z"),
    ] {
        let r = get(c, path).await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
        assert!(
            body["required_role"].as_str().unwrap().contains("master"),
            "{body}"
        );
    }
    let r = get(&own_updater, "/health").await.unwrap();
    assert_eq!(r.status(), 200, "updater@own-host may probe /health");
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(h["role"], "agent");
    assert_eq!(h["host"], "w3");
    let r = own_updater
        .post(format!("{base}/teardown"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // No client certificate: the handshake fails.
    let roots =
        decnet_pki::tls::ca_roots(&std::fs::read_to_string(m.home().join("ca/ca.crt")).unwrap())
            .unwrap();
    let anon = rustls::ClientConfig::builder_with_provider(decnet_pki::provider::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let anon = reqwest::Client::builder()
        .tls_backend_preconfigured(anon)
        .build()
        .unwrap();
    assert!(anon.get(format!("{base}/health")).send().await.is_err());

    // Malformed bodies: 4xx with a JSON message, never a crash.
    let post = |path: &str, body: &'static str| {
        master
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (path, body, code) in [
        ("/deploy", "not json", 400),
        ("/deploy", "{}", 422),
        (
            "/deploy",
            r#"{"config": {"version": 9, "deckies": []}}"#,
            422,
        ),
        (
            "/deploy",
            r#"{"config": {"version": 1, "deckies": [{"name": "BAD", "command": ["x"]}]}}"#,
            422,
        ),
        ("/teardown", r#"{"decky_id": "nope"}"#, 404),
        ("/teardown", "[", 400),
        ("/mutate", r#"{"decky_id": "nope", "services": []}"#, 404),
        ("/mutate", r#"{"services": 5}"#, 422),
        ("/deploy", r#""a string""#, 422),
        ("/deploy", r#"{"config": "a string"}"#, 422),
        (
            "/deploy",
            r#"{"config": {"version": 1, "deckies": [{"name": "a", "command": ["x"], "ports": [{"host": 1, "protocol": "sctp"}]}]}}"#,
            422,
        ),
    ] {
        let r = post(path, body).await.unwrap();
        assert_eq!(r.status().as_u16(), code, "{path} {body}");
        let v: serde_json::Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{path} {body}: not JSON: {e}"));
        let detail = v["detail"].as_str().unwrap_or_default();
        assert!(!detail.is_empty(), "{v}");
        // Plain words: no decoder internals, no unnamed path segment.
        for internal in ["struct ", " elements", "enum "] {
            assert!(!detail.contains(internal), "{path} {body}: {v}");
        }
        assert!(
            !v["field"].as_str().unwrap_or_default().contains('?'),
            "{v}"
        );
    }
    let r = post("/deploy", r#"{"config": {"version": 9, "deckies": []}}"#)
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["field"], "version");
    let huge = format!(r#"{{"config": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    // On its own connection: the server closes it after refusing the body.
    let oversize = mtls_client(&m.master_bundle_dir(), BundleKind::Master, "w3");
    let r = oversize
        .post(format!("{base}/deploy"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "payload_too_large", "{v}");
    // An unknown field is named by its path.
    let r = post(
        "/deploy",
        r#"{"config": {"version": 1, "deckies": [{"name": "a", "command": ["/bin/true"], "colour": "red"}]}}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["field"], "deckies[0].colour", "{v}");
    assert_eq!(
        get(&master, "/operations/unknown").await.unwrap().status(),
        404
    );

    // Dry run renders and starts nothing.
    let r = master
        .post(format!("{base}/deploy"))
        .json(&serde_json::json!({"config": {"version": 1, "deckies": [sleeper("dry", &[])]}, "dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["rendered"]["deckies"][0]["name"], "dry");
    let st: serde_json::Value = get(&master, "/status").await.unwrap().json().await.unwrap();
    assert!(st["deckies"].as_array().unwrap().is_empty());

    // Async deploy: 202 + operation id, then mutate changes services for real.
    let r = master
        .post(format!("{base}/deploy"))
        .json(&serde_json::json!({"config": {"version": 1, "deckies": [sleeper("mut", &["ssh"])]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    let op = v["operation_id"].as_str().unwrap().to_string();
    let mut done = false;
    for _ in 0..100 {
        let o: serde_json::Value = get(&master, &format!("/operations/{op}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if o["done"] == true {
            assert_eq!(o["deckies"][0]["state"], "running");
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done);
    let r = master
        .post(format!("{base}/mutate"))
        .json(&serde_json::json!({"decky_id": "mut", "services": ["http", "ftp"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = agent.state_dir.join("logs/mut.log");
    let mut seen = false;
    for _ in 0..50 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("services=http,ftp")
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "mutated decky runs with its new services");
}

#[test]
fn a_reissued_agent_certificate_is_refused_by_the_pinning_client() {
    let m = MasterHome::new();
    m.enroll("w4");
    let state = m.dir.path().join("w4-state");
    // Run the agent from a copy of its current bundle, then re-enroll: the
    // master now pins a new fingerprint the running agent does not present.
    let copy = m.dir.path().join("w4-bundle");
    decnet_pki::Bundle::load(&m.agent_bundle_dir("w4"), BundleKind::Agent)
        .unwrap()
        .write(&copy)
        .unwrap();
    let mut cmd = std::process::Command::new(decnet_e2e::bin("decnet-agent"));
    cmd.args([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-master",
        "--bundle-dir",
    ])
    .arg(&copy)
    .arg("--state-dir")
    .arg(&state);
    let daemon = decnet_e2e::Daemon::start(cmd, m.dir.path().join("w4.log"));
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "w4",
        "--address",
        "127.0.0.1",
        "--reissue",
    ]);
    m.set_agent_port("w4", daemon.port());
    let out = m.run(&["swarm", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("does not match its recorded fingerprint"),
        "{text}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn check_reports_unreachable_hosts_and_records_them() {
    let m = MasterHome::new();
    m.enroll("up");
    m.enroll("down");
    let _agent = Agent::start(&m, "up", &m.dir.path().join("up-state"), &[]);
    // Nothing listens on this port.
    let port = decnet_e2e::free_port();
    m.set_agent_port("down", port);
    // One host at a time: the same answers (the bound only paces them).
    let out = m.run(&["swarm", "check", "--json", "--max-parallel", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let paced: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(paced.as_array().map(Vec::len), Some(2));
    let out = m.run(&["swarm", "check", "--max-parallel", "0"]);
    assert_eq!(out.status.code(), Some(2), "a bound of 0 is a usage error");
    let out = m.run(&["swarm", "check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    let up = rows.iter().find(|r| r["host"] == "up").unwrap();
    let down = rows.iter().find(|r| r["host"] == "down").unwrap();
    assert_eq!(up["reachable"], true);
    assert_eq!(up["version"], env!("CARGO_PKG_VERSION"));
    // A check asks for health only: no empty `status` (nor `error` when
    // none) in its JSON.
    for r in rows {
        assert!(r.get("status").is_none(), "{r}");
    }
    assert!(up.get("error").is_none(), "{up}");
    assert_eq!(down["reachable"], false);
    assert!(
        down["error"].as_str().unwrap().contains("unreachable"),
        "{down}"
    );
    assert_eq!(
        m.json(&["swarm", "show", "up", "--json"])["status"],
        "active"
    );
    let d = m.json(&["swarm", "show", "down", "--json"]);
    assert_eq!(d["status"], "unreachable");
    assert!(d["last_error"].as_str().is_some());
    let table = m.ok(&["swarm", "list"]);
    assert!(
        table.contains("unreachable") && table.contains("active"),
        "{table}"
    );
}

#[test]
fn agent_without_a_bundle_exits_2_naming_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(decnet_e2e::bin("decnet-agent"))
        .args(["serve", "--port", "0", "--bundle-dir"])
        .arg(dir.path().join("none"))
        .arg("--state-dir")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("decnet swarm enroll"), "{err}");
    let v = std::process::Command::new(decnet_e2e::bin("decnet-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// A fleet-wide deploy audits each host soon after it finishes, not only
/// when the last host is done: while one host stalls (it takes the TCP
/// connection and never answers), the deploy to the other is already in
/// the audit log. An interrupted command must not lose what was done.
#[test]
fn a_deploy_audits_each_host_while_others_are_still_pending() {
    let m = MasterHome::new();
    m.enroll("w1");
    m.enroll("w2");
    let _agent = Agent::start(&m, "w1", &m.dir.path().join("w1-state"), &[]);
    // w2 "listens" but never speaks TLS.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    m.set_agent_port("w2", stall.local_addr().unwrap().port());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in stall.incoming().flatten() {
            keep.lock().unwrap().push(c);
        }
    });
    let cfg = write_config(
        m.dir.path(),
        "deploy.json",
        serde_json::json!({"version": 1, "deckies": [sleeper("alpha", &["ssh"])]}),
    );
    let mut deploy = m
        .command(&[
            "swarm",
            "deploy",
            "--config",
            cfg.to_str().unwrap(),
            "--json",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let audited_while_running = wait_for(Duration::from_secs(30), || {
        let running = deploy.try_wait().unwrap().is_none();
        let audit = m.json(&["audit", "--json"]);
        let w1 = audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "swarm.deploy" && e["target"] == "w1");
        match (w1, running) {
            (true, true) => Some(true),
            (_, false) => Some(false),
            (false, true) => None,
        }
    });
    assert_eq!(
        audited_while_running,
        Some(true),
        "w1's deploy was not audited while w2 was still pending"
    );
    assert!(!held.lock().unwrap().is_empty(), "w2 was never dialed");
    let status = deploy.wait().unwrap();
    assert!(!status.success(), "w2 cannot have succeeded");
    let audit = m.json(&["audit", "--json"]);
    let w2 = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "swarm.deploy" && e["target"] == "w2")
        .expect("w2's failed deploy is audited too");
    assert_eq!(w2["outcome"], "failed", "{w2}");
}

/// A burned host keeps no decky running: the burn tears them all down
/// first, while the agent can still be reached, says so and audits it; a
/// host whose agent cannot be reached is burned anyway, with a warning.
#[test]
fn burning_a_host_tears_its_deckies_down_first() {
    let m = MasterHome::new();
    m.enroll("w1");
    m.enroll("gone");
    let _agent = Agent::start(&m, "w1", &m.dir.path().join("w1-state"), &[]);
    let cfg = write_config(
        m.dir.path(),
        "deploy.json",
        serde_json::json!({"version": 1, "deckies": [sleeper("alpha", &["ssh"]), sleeper("beta", &["http"])]}),
    );
    m.ok(&[
        "swarm",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    let st = m.json(&["swarm", "status", "w1", "--json"]);
    let pids: Vec<u32> = ["alpha", "beta"]
        .iter()
        .map(|n| decky(&st, "w1", n)["pid"].as_u64().unwrap() as u32)
        .collect();
    assert!(pids.iter().all(|p| alive(*p)));

    let out = m.ok(&["swarm", "burn", "w1", "--yes"]);
    assert!(
        out.contains("2 decky(ies) torn down before the burn"),
        "{out}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || pids
            .iter()
            .all(|p| !alive(*p))
            .then_some(()))
        .is_some(),
        "a decky of the burned host still runs"
    );
    let audit = m.json(&["audit", "--json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "swarm.burn"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("teardown=[alpha,beta]"))),
        "{audit}"
    );

    // Nobody answers for `gone`: burned all the same, with a warning.
    let out = m.run(&["swarm", "burn", "gone", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not be torn down"),
        "{out:?}"
    );
}

/// A bundle of the wrong kind is named for what it is: the agent's bundle
/// given to the updater (and the updater's to the agent) says so, instead
/// of reporting a missing file.
#[test]
fn a_bundle_of_another_kind_is_named_for_what_it_is() {
    let m = MasterHome::new();
    m.enroll("w1");
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(decnet_e2e::bin("decnet-updater"))
        .args(["serve", "--port", "0", "--no-master", "--bundle-dir"])
        .arg(m.agent_bundle_dir("w1"))
        .arg("--install-dir")
        .arg(dir.path().join("opt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "holds an agent's (or the master's) bundle (worker.crt), not an updater's one"
        ),
        "{err}"
    );
    let out = std::process::Command::new(decnet_e2e::bin("decnet-agent"))
        .args(["serve", "--port", "0", "--no-master", "--bundle-dir"])
        .arg(m.updater_bundle_dir("w1"))
        .arg("--state-dir")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds an updater's bundle (updater.crt), not an agent's one"),
        "{err}"
    );
}

/// A join pointed at an agent's port (not the master's control API) is
/// told so in plain words, not with an HTTP client's error chain, and not
/// as "cannot reach": something did answer.
#[test]
fn a_join_pointed_at_an_agent_port_says_it_is_not_the_master() {
    let m = MasterHome::new();
    m.enroll("w1");
    let agent = Agent::start(&m, "w1", &m.dir.path().join("w1-state"), &[]);
    let token = m.ok(&[
        "swarm",
        "token",
        "create",
        "--host",
        "j9",
        "--address",
        "127.0.0.1",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(decnet_e2e::bin("decnet-agent"))
        .args([
            "join",
            "--master",
            &agent.daemon.addr.to_string(),
            "--token",
        ])
        .arg(token.trim())
        .arg("--bundle-dir")
        .arg(dir.path().join("b"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not the master's control API"), "{err}");
    assert!(
        !err.contains("cannot reach") && !err.contains("client error"),
        "{err}"
    );
}
