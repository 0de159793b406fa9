//! `decnet master serve`: heartbeats from real agents over mTLS, silence
//! detection, and refusal of wrong, unknown and revoked certificates.

use std::process::Command;
use std::time::Duration;

use decnet_e2e::join_with_token as join;
use decnet_e2e::{Agent, Daemon, MasterHome, mtls_client, wait_for};
use decnet_pki::{Bundle, BundleKind, CaLayout, CertificateAuthority, HostName, LeafSpec, Role};

fn start_master(m: &MasterHome, unreachable_after: u64) -> Daemon {
    m.serve(&[
        "--no-listener",
        "--unreachable-after",
        &unreachable_after.to_string(),
    ])
}

#[test]
fn heartbeats_turn_a_host_active_then_silence_makes_it_unreachable() {
    let m = MasterHome::new();
    m.enroll("hb1");
    let master = start_master(&m, 3);
    let mut agent = Agent::start(
        &m,
        "hb1",
        &m.dir.path().join("hb1-state"),
        &[
            "--master",
            &master.addr.to_string(),
            "--heartbeat-interval",
            "1",
        ],
    );
    let active = wait_for(Duration::from_secs(15), || {
        let h = m.json(&["swarm", "show", "hb1", "--json"]);
        (h["status"] == "active" && h["agent_version"] == env!("CARGO_PKG_VERSION")).then_some(h)
    });
    assert!(
        active.is_some(),
        "no heartbeat recorded; agent log:\n{}",
        agent.daemon.log_text()
    );
    let table = m.ok(&["swarm", "list"]);
    assert!(
        table.contains("active") && table.contains("s ago"),
        "{table}"
    );

    agent.daemon.stop();
    let gone = wait_for(Duration::from_secs(20), || {
        let h = m.json(&["swarm", "show", "hb1", "--json"]);
        (h["status"] == "unreachable").then_some(h)
    })
    .expect("silent host marked unreachable");
    assert!(
        gone["last_error"]
            .as_str()
            .unwrap()
            .contains("no heartbeat"),
        "{gone}"
    );
}

/// Heartbeats of `client` are refused within 3 s: a 403 whose body names
/// `reason`, or, once the master enforces its new revocation list, a
/// refused handshake or a closed connection. A change of standing made by
/// another process (the CLI) reaches a running master with its revocation
/// list, which it reloads every second; until then it may still accept a
/// certificate it found current (the standing cache, issue #31).
async fn refused_within(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    reason: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match client.post(url).json(body).send().await {
            Ok(r) if r.status() == 403 => {
                let text = r.text().await.unwrap();
                assert!(text.contains(reason), "{text}");
                return;
            }
            Ok(r) => assert_eq!(r.status(), 200, "neither accepted nor refused"),
            Err(_) => return,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still accepted 3 s after the change"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_from_wrong_unknown_or_revoked_certificates_are_refused() {
    let m = MasterHome::new();
    m.enroll("hb2");
    m.enroll("hb3");
    let master = start_master(&m, 90);
    let url = format!("https://{}/heartbeat", master.addr);
    let body = serde_json::json!({"version": "x", "deckies": []});

    // The current certificate is accepted.
    let current = mtls_client(
        &m.agent_bundle_dir("hb2"),
        BundleKind::Agent,
        "decnet-master",
    );
    assert_eq!(
        current
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A hostile worker's oversized or shapeless heartbeat is refused before
    // it is stored (a list of zeros would be 16 times its size parsed),
    // and the host's next honest beat is taken.
    let huge = serde_json::json!({"version": "x", "deckies": [{"name": "d", "error": "e".repeat(300 * 1024)}]});
    let r = current.post(&url).json(&huge).send().await.unwrap();
    assert_eq!(r.status(), 413, "{}", r.text().await.unwrap_or_default());
    let zeros = serde_json::json!({"version": "x", "deckies": vec![0; 50_000]});
    let r = current.post(&url).json(&zeros).send().await.unwrap();
    assert_eq!(r.status(), 422, "{}", r.text().await.unwrap_or_default());
    assert_eq!(
        current
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Another role is refused by the middleware.
    let as_master = mtls_client(&m.master_bundle_dir(), BundleKind::Master, "decnet-master");
    let r = as_master.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["required_role"],
        "agent"
    );

    // A certificate from the CA for a host never enrolled: 404.
    let ca = CertificateAuthority::load(&CaLayout::new(m.home().join("ca"))).unwrap();
    let leaf = ca
        .issue(&LeafSpec::for_role(
            &Role::Agent(HostName::new("stranger").unwrap()),
            &[],
        ))
        .unwrap();
    let dir = m.dir.path().join("stranger");
    Bundle::from_issued(BundleKind::Agent, &leaf, ca.cert_pem())
        .unwrap()
        .write(&dir)
        .unwrap();
    let r = mtls_client(&dir, BundleKind::Agent, "decnet-master")
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A certificate for an enrolled name that this master never recorded: 403.
    let leaf = ca
        .issue(&LeafSpec::for_role(
            &Role::Agent(HostName::new("hb3").unwrap()),
            &[],
        ))
        .unwrap();
    let dir = m.dir.path().join("forged-hb3");
    Bundle::from_issued(BundleKind::Agent, &leaf, ca.cert_pem())
        .unwrap()
        .write(&dir)
        .unwrap();
    let r = mtls_client(&dir, BundleKind::Agent, "decnet-master")
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Reissue revokes the old certificate within a second, without a restart.
    let old = m.dir.path().join("old-hb2");
    Bundle::load(&m.agent_bundle_dir("hb2"), BundleKind::Agent)
        .unwrap()
        .write(&old)
        .unwrap();
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "hb2",
        "--address",
        "127.0.0.1",
        "--reissue",
    ]);
    let old_client = mtls_client(&old, BundleKind::Agent, "decnet-master");
    refused_within(&old_client, &url, &body, "revoked").await;
    let fresh = mtls_client(
        &m.agent_bundle_dir("hb2"),
        BundleKind::Agent,
        "decnet-master",
    );
    assert_eq!(
        fresh.post(&url).json(&body).send().await.unwrap().status(),
        200
    );

    // Decommissioned: refused, on the connection it kept open too.
    m.ok(&["swarm", "decommission", "hb2", "--yes"]);
    refused_within(&fresh, &url, &body, "").await;

    // Malformed body: 422, not a crash.
    let hb3 = mtls_client(
        &m.agent_bundle_dir("hb3"),
        BundleKind::Agent,
        "decnet-master",
    );
    let r = hb3
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"deckies\": 5}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}

#[test]
fn token_join_issues_certificates_for_locally_generated_keys() {
    use std::os::unix::fs::PermissionsExt;
    let m = MasterHome::new();
    let master = start_master(&m, 90);
    let t = m.join_token("j1", &["--updater", "--sans", "j1.lab"]);
    assert_eq!(t.split('.').count(), 3);
    let ca = CertificateAuthority::load(&CaLayout::new(m.home().join("ca"))).unwrap();
    assert!(
        t.ends_with(&ca.fingerprint().to_hex()),
        "the token embeds the CA's SHA-256"
    );

    let agent_dir = m.dir.path().join("j1-agent");
    let out = join("decnet-agent", &master, &t, &agent_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(agent_dir.join("worker.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let b = Bundle::load(&agent_dir, BundleKind::Agent).unwrap();
    assert_eq!(b.identity.cn, "j1");
    let show = m.json(&["swarm", "show", "j1", "--json"]);
    assert_eq!(show["agent_fingerprint"], b.identity.fingerprint.to_hex());
    let sans: Vec<&str> = show["sans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        sans.contains(&"127.0.0.1") && sans.contains(&"j1.lab"),
        "{sans:?}"
    );
    // The master never saw the key: it is not in its copy of the worker dir.
    assert!(!m.agent_bundle_dir("j1").join("worker.key").exists());

    // Single use per role.
    let out = join("decnet-agent", &master, &t, &m.dir.path().join("again"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already used"));

    // The updater joins with the same token (created with --updater), read
    // from a file (argv is visible in /proc), telling the master its port.
    let up_dir = m.dir.path().join("j1-updater");
    let token_file = m.dir.path().join("token");
    std::fs::write(&token_file, format!("{t}\n")).unwrap();
    // Readable by others: refused, saying how to fix it.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(decnet_e2e::bin("decnet-updater"))
        .args(["join", "--master", &master.addr.to_string()])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--bundle-dir")
        .arg(&up_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(decnet_e2e::bin("decnet-updater"))
        .args([
            "join",
            "--master",
            &master.addr.to_string(),
            "--port",
            "9876",
        ])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--bundle-dir")
        .arg(&up_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        m.json(&["swarm", "show", "j1", "--json"])["updater_port"],
        9876
    );
    let ub = Bundle::load(&up_dir, BundleKind::Updater).unwrap();
    assert_eq!(ub.identity.cn, "updater@j1");

    // The updater half of a token ends once its agent half was used long
    // enough ago: a token found later on the worker's disk opens nothing.
    let t_late = m.join_token("j1late", &["--updater"]);
    let out = join(
        "decnet-agent",
        &master,
        &t_late,
        &m.dir.path().join("j1late"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let late_id = t_late.split('.').next().unwrap().to_string();
    let url = decnet_fleet::default_url(&m.home());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        // Eleven minutes pass.
        sqlx::query("UPDATE join_tokens SET used_agent = used_agent - 660 WHERE id = $1")
            .bind(&late_id)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    let late_file = m.dir.path().join("late-token");
    std::fs::write(&late_file, format!("{t_late}\n")).unwrap();
    std::fs::set_permissions(&late_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(decnet_e2e::bin("decnet-updater"))
        .args(["join", "--master", &master.addr.to_string()])
        .arg("--token-file")
        .arg(&late_file)
        .arg("--bundle-dir")
        .arg(m.dir.path().join("j1late-updater"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ended this half"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        m.json(&["swarm", "show", "j1", "--json"])["updater_fingerprint"],
        ub.identity.fingerprint.to_hex()
    );

    // The joined agent is a full member: its heartbeats are accepted.
    let _agent = Agent::start_with_bundle(
        &m,
        "j1",
        &agent_dir,
        &m.dir.path().join("j1-state"),
        &[
            "--master",
            &master.addr.to_string(),
            "--heartbeat-interval",
            "1",
        ],
    );
    assert!(
        wait_for(Duration::from_secs(15), || {
            (m.json(&["swarm", "show", "j1", "--json"])["status"] == "active").then_some(())
        })
        .is_some()
    );
    let audit = m.json(&["audit", "--json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "swarm.join" && e["outcome"] == "ok")
    );
}

#[test]
fn expired_reused_tampered_and_guessed_tokens_are_refused() {
    let m = MasterHome::new();
    let master = start_master(&m, 90);
    // Expired.
    let t = m.join_token("j2", &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let out = join("decnet-agent", &master, &t, &m.dir.path().join("j2"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"));
    assert!(
        !m.dir.path().join("j2/worker.key").exists(),
        "nothing written on refusal"
    );

    // An agent token does not let an updater in.
    let t = m.join_token("j3", &[]);
    let out = join("decnet-updater", &master, &t, &m.dir.path().join("j3u"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not allow an updater"));

    // A token naming another CA (the wrong master): refused before any secret is sent.
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    parts[2] = "0".repeat(64);
    let out = join(
        "decnet-agent",
        &master,
        &parts.join("."),
        &m.dir.path().join("j3x"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the one the token names"));

    // A stranger who learnt the token's id guesses secrets from another
    // address: it shuts itself out, never the token's host.
    let ca_pem = std::fs::read_to_string(m.home().join("ca/ca.crt")).unwrap();
    let id = t.split('.').next().unwrap().to_string();
    let stranger = reqwest::Client::builder()
        .tls_backend_preconfigured(
            decnet_pki::tls::anonymous_client_config(
                &ca_pem,
                &decnet_pki::ExpectedServer::master(),
            )
            .unwrap(),
        )
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let url = format!("https://{}/join", master.addr);
    let answers: Vec<(u16, String)> = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut out = Vec::new();
        for _ in 0..8 {
            let r = stranger
                .post(&url)
                .json(&serde_json::json!({
                    "token_id": id, "secret": "f".repeat(32), "role": "agent", "csr": "x"
                }))
                .send()
                .await
                .unwrap();
            out.push((r.status().as_u16(), r.text().await.unwrap()));
        }
        out
    });
    assert!(answers.iter().all(|(s, _)| *s == 403), "{answers:?}");
    assert!(
        answers[..5]
            .iter()
            .all(|(_, b)| b.contains("invalid token")),
        "{answers:?}"
    );
    assert!(
        answers[5..]
            .iter()
            .all(|(_, b)| b.contains("too many wrong token secrets")),
        "{answers:?}"
    );
    // The token's own host, from its own address, still joins with it.
    let out = join("decnet-agent", &master, &t, &m.dir.path().join("j3"));
    assert!(
        out.status.success(),
        "a stranger's guesses locked the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A worker naming another host than the token's is refused; the token stays usable.
    let t5 = m.join_token("j5b", &[]);
    let out = Command::new(decnet_e2e::bin("decnet-agent"))
        .args([
            "join",
            "--master",
            &master.addr.to_string(),
            "--token",
            &t5,
            "--host",
            "imposter",
            "--bundle-dir",
        ])
        .arg(m.dir.path().join("j5b-wrong"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bound to another host"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(decnet_e2e::bin("decnet-agent"))
        .args([
            "join",
            "--master",
            &master.addr.to_string(),
            "--token",
            &t5,
            "--host",
            "j5b",
            "--bundle-dir",
        ])
        .arg(m.dir.path().join("j5b"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Malformed token text.
    let out = join(
        "decnet-agent",
        &master,
        "not-a-token",
        &m.dir.path().join("x"),
    );
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_master_decides_cn_and_sans_never_the_csr() {
    let m = MasterHome::new();
    let master = start_master(&m, 90);
    let t = m.join_token("j4", &[]);
    let parts: Vec<&str> = t.split('.').collect();
    let ca_pem = std::fs::read_to_string(m.home().join("ca/ca.crt")).unwrap();
    decnet_pki::provider::install_default();
    // A CSR claiming to be the master.
    let (_key, csr) = decnet_pki::ca::generate_csr("decnet-master").unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(
            decnet_pki::tls::anonymous_client_config(
                &ca_pem,
                &decnet_pki::ExpectedServer::master(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let r = client
        .post(format!("https://{}/join", master.addr))
        .json(&serde_json::json!({"token_id": parts[0], "secret": parts[1], "role": "agent", "csr": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let id = decnet_pki::PeerIdentity::from_pem(v["cert_pem"].as_str().unwrap()).unwrap();
    assert_eq!(id.cn, "j4", "the CN comes from the token, not the CSR");
    // Anonymous peers get nothing else.
    let r = client
        .get(format!("https://{}/health", master.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .post(format!("https://{}/heartbeat", master.addr))
        .json(&serde_json::json!({"version": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Garbage CSR: 400, token not spent.
    let t2 = m.join_token("j5", &[]);
    let p2: Vec<&str> = t2.split('.').collect();
    let r = client
        .post(format!("https://{}/join", master.addr))
        .json(&serde_json::json!({"token_id": p2[0], "secret": p2[1], "role": "agent", "csr": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let out = join("decnet-agent", &master, &t2, &m.dir.path().join("j5"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn agents_renew_before_expiry_keep_serving_and_the_master_pins_the_new_certificate() {
    let m = MasterHome::new();
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "rn1",
        "--address",
        "127.0.0.1",
        "--valid-for",
        "24s",
    ]);
    let master = m.serve(&[
        "--no-listener",
        "--leaf-validity",
        "30s",
        "--renew-min-interval",
        "0s",
        "--renew-grace",
        "2s",
    ]);
    let agent = Agent::start(
        &m,
        "rn1",
        &m.dir.path().join("rn1-state"),
        &[
            "--master",
            &master.addr.to_string(),
            "--heartbeat-interval",
            "1",
        ],
    );
    let first = m.json(&["swarm", "show", "rn1", "--json"])["agent_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();

    // Keep calling the agent over fresh TLS connections during the swap.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok_count, failures) = {
        let stop_flag = stop.clone();
        let url = format!("https://{}/health", agent.daemon.addr);
        let master_dir = m.master_bundle_dir();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                decnet_pki::provider::install_default();
                let b = Bundle::load(&master_dir, BundleKind::Master).unwrap();
                let agent_role = decnet_pki::ExpectedServer::role(Role::from_cn("rn1").unwrap());
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop_flag.load(std::sync::atomic::Ordering::SeqCst) {
                    let c = reqwest::Client::builder()
                        .tls_backend_preconfigured(
                            decnet_pki::client_config(&b, None, &agent_role).unwrap(),
                        )
                        .pool_max_idle_per_host(0)
                        .build()
                        .unwrap();
                    match c.get(&url).send().await {
                        Ok(r) if r.status().is_success() => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (ok, failed)
            })
        });
        let renewed = wait_for(Duration::from_secs(40), || {
            let fp = m.json(&["swarm", "show", "rn1", "--json"])["agent_fingerprint"]
                .as_str()?
                .to_string();
            (fp != first).then_some(fp)
        });
        assert!(
            renewed.is_some(),
            "no renewal; agent log:\n{}",
            agent.daemon.log_text()
        );
        // The agent now presents the new certificate: the pinned check passes.
        assert!(
            wait_for(Duration::from_secs(5), || m
                .run(&["swarm", "check"])
                .status
                .success()
                .then_some(()))
            .is_some(),
            "the master's pinned check fails after the renewal"
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        handle.join().unwrap()
    };
    assert!(
        failures.is_empty(),
        "requests failed during the swap: {failures:?}"
    );
    assert!(
        ok_count >= 5,
        "only {ok_count} requests during the renewal window"
    );
    // The replaced certificate retires: revoked once its grace (2 s) is over.
    let revoked = wait_for(Duration::from_secs(15), || {
        let show = m.json(&["swarm", "show", "rn1", "--json"]);
        show["revoked_fingerprints"]
            .as_array()?
            .iter()
            .any(|f| f == first.as_str())
            .then_some(show)
    });
    let show = revoked.expect("the replaced certificate was never revoked");
    let on_disk = Bundle::load(&m.agent_bundle_dir("rn1"), BundleKind::Agent).unwrap();
    assert_eq!(
        on_disk.identity.fingerprint.to_hex(),
        show["agent_fingerprint"].as_str().unwrap()
    );

    // An operator can force a renewal.
    let before = show["agent_fingerprint"].as_str().unwrap().to_string();
    m.ok(&["swarm", "renew", "rn1"]);
    assert!(
        wait_for(Duration::from_secs(15), || {
            let fp = m.json(&["swarm", "show", "rn1", "--json"])["agent_fingerprint"]
                .as_str()?
                .to_string();
            (fp != before).then_some(())
        })
        .is_some(),
        "forced renewal did not happen"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decommissioned_or_revoked_host_cannot_renew() {
    let m = MasterHome::new();
    m.enroll("rn2");
    let master = start_master(&m, 90);
    let url = format!("https://{}/renew", master.addr);
    let b = Bundle::load(&m.agent_bundle_dir("rn2"), BundleKind::Agent).unwrap();
    let (_k, csr) = decnet_pki::ca::generate_csr("rn2").unwrap();
    let old = m.dir.path().join("rn2-old");
    b.write(&old).unwrap();
    // Reissued: the old certificate is revoked and cannot renew.
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "rn2",
        "--address",
        "127.0.0.1",
        "--reissue",
    ]);
    let r = mtls_client(&old, BundleKind::Agent, "decnet-master")
        .post(&url)
        .json(&serde_json::json!({"csr": csr}))
        .send()
        .await;
    assert_renewal_refused(r);
    // The current one can, until the host is decommissioned.
    let current = mtls_client(
        &m.agent_bundle_dir("rn2"),
        BundleKind::Agent,
        "decnet-master",
    );
    let r = current
        .post(&url)
        .json(&serde_json::json!({"csr": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let current_dir = m.dir.path().join("rn2-cur");
    Bundle::load(&m.agent_bundle_dir("rn2"), BundleKind::Agent)
        .unwrap()
        .write(&current_dir)
        .unwrap();
    m.ok(&["swarm", "decommission", "rn2", "--yes"]);
    let r = mtls_client(&current_dir, BundleKind::Agent, "decnet-master")
        .post(&url)
        .json(&serde_json::json!({"csr": csr}))
        .send()
        .await;
    assert_renewal_refused(r);
}

/// A revoked certificate's renewal is refused: by the handler (403) or,
/// once the master's listener has reloaded its revocation list, already at
/// the handshake (a `certificate revoked` alert). Which one depends on how
/// soon the reload happens; both give the host nothing.
fn assert_renewal_refused(r: Result<reqwest::Response, reqwest::Error>) {
    match r {
        Ok(r) => assert_eq!(r.status(), 403),
        Err(e) => {
            let chain = decnet_swarm_client::transport::error_chain(&e);
            assert!(chain.contains("CertificateRevoked"), "{chain}");
        }
    }
}

#[test]
fn updaters_renew_too_and_keep_installing_releases() {
    let m = MasterHome::new();
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "ru1",
        "--address",
        "127.0.0.1",
        "--updater",
        "--valid-for",
        "24s",
    ]);
    let master = m.serve(&["--no-listener", "--leaf-validity", "1h"]);
    let u = decnet_e2e::UpdaterFixture::start_with(
        &m,
        "ru1",
        &[],
        &["--master", &master.addr.to_string()],
    );
    let first = m.json(&["swarm", "show", "ru1", "--json"])["updater_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let renewed = wait_for(Duration::from_secs(40), || {
        let fp = m.json(&["swarm", "show", "ru1", "--json"])["updater_fingerprint"]
            .as_str()?
            .to_string();
        (fp != first).then_some(())
    });
    assert!(
        renewed.is_some(),
        "updater did not renew; log:\n{}",
        u.daemon.log_text()
    );
    // The master pins the new fingerprint and the updater serves it; its
    // probe presents the renewed certificate to the agent.
    let rel = decnet_e2e::good_release(&m.dir.path().join("rel"), false);
    let out = m.ok(&[
        "swarm",
        "update",
        "--release",
        rel.to_str().unwrap(),
        "--host",
        "ru1",
    ]);
    assert!(out.contains("UPDATED"), "{out}");
}

/// The audit log speaks plainly: `set-endpoint` records what changed, never
/// Rust's debug syntax (`Some(…)`, quotes).
#[test]
fn set_endpoint_audits_what_changed_in_plain_words() {
    let m = MasterHome::new();
    m.enroll("w1");
    m.ok(&["swarm", "set-endpoint", "w1", "--agent-port", "28785"]);
    m.ok(&[
        "swarm",
        "set-endpoint",
        "w1",
        "--address",
        "10.0.0.9",
        "--updater-port",
        "8799",
    ]);
    let audit = m.json(&["audit", "--json"]);
    let details: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "swarm.set_endpoint")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert!(details.contains(&"agent_port=28785"), "{details:?}");
    assert!(
        details.contains(&"address=10.0.0.9 updater_port=8799"),
        "{details:?}"
    );
}

/// One rule for host names everywhere: a name enrolled as `W9` is `w9`,
/// and every command finds it whichever case it is given in.
#[test]
fn host_names_are_one_name_in_any_case() {
    let m = MasterHome::new();
    m.enroll("W9");
    let show = m.json(&["swarm", "show", "W9", "--json"]);
    assert_eq!(show["name"], "w9", "{show}");
    m.ok(&["swarm", "set-endpoint", "W9", "--agent-port", "9999"]);
    assert_eq!(
        m.json(&["swarm", "show", "w9", "--json"])["agent_port"],
        9999
    );
    let bad = m.run(&["swarm", "show", "not_a_host"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("host name may contain only"),
        "{bad:?}"
    );
}

/// A decommissioned host's certificates are revoked: `swarm list` shows no
/// expiry for them.
#[test]
fn a_decommissioned_host_lists_no_certificate_expiry() {
    let m = MasterHome::new();
    m.enroll("w1");
    m.enroll("w2");
    let before = m.json(&["swarm", "list", "--json"]);
    assert!(before[0]["agent_cert_not_after"].is_i64(), "{before}");
    m.ok(&["swarm", "decommission", "w1", "--yes"]);
    let list = m.json(&["swarm", "list", "--json"]);
    let w1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "w1")
        .unwrap();
    assert!(w1["agent_cert_not_after"].is_null(), "{w1}");
    assert!(w1["updater_cert_not_after"].is_null(), "{w1}");
    let table = m.ok(&["swarm", "list"]);
    let row = table.lines().find(|l| l.starts_with("w1 ")).unwrap();
    assert!(!row.contains("in "), "{row}");
}

/// `decnet … | head`: a reader that goes away ends the command quietly
/// (128 + SIGPIPE), never with a panic.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let m = MasterHome::new();
    for i in 0..40 {
        m.enroll(&format!("w{i}"));
    }
    let mut child = m
        .command(&["swarm", "list", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success() || out.status.code() == Some(141),
        "{:?}: {err}",
        out.status
    );
}

/// A host whose agent sends no heartbeats (no `--master`), reached by
/// `swarm check`, is shown as such — not turned unreachable once the
/// silence window passes, and not called silent by the doctor.
#[test]
fn a_host_without_heartbeats_is_shown_as_such_not_as_down() {
    let m = MasterHome::new();
    m.enroll("nohb");
    let _master = start_master(&m, 2);
    let _agent = Agent::start(&m, "nohb", &m.dir.path().join("nohb-state"), &[]);
    m.ok(&["swarm", "check"]);
    // Past the silence window, with the master's silence sweep running.
    std::thread::sleep(Duration::from_secs(5));
    let h = m.json(&["swarm", "show", "nohb", "--json"]);
    assert_eq!(h["status"], "active", "{h}");
    assert!(h["last_heartbeat"].is_null(), "{h}");
    let list = m.ok(&["swarm", "list"]);
    assert!(list.contains("(no heartbeats)"), "{list}");
    let show = m.ok(&["swarm", "show", "nohb"]);
    assert!(show.contains("last heartbeat:      never"), "{show}");
    let out = m.run(&["swarm", "doctor", "--no-probe", "--json"]);
    let doctor = String::from_utf8_lossy(&out.stdout);
    assert!(doctor.contains("no_heartbeats"), "{doctor}");
    assert!(!doctor.contains("\"silent\""), "{doctor}");
}
