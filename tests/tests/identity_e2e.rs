//! Both ends prove their role. A compromised worker holds a certificate our
//! CA signed — every leaf carries serverAuth — so the chain alone proves
//! nothing: these tests stand such a worker up as the "master" and check
//! that the real binaries give it nothing. They also cover what keeps
//! identities honest over time: revocation reaching workers, rotation of
//! the master's certificate, renewal followed by an update, and bundle
//! writes that fail half-way.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use decnet_e2e::{Daemon, MasterHome, UpdaterFixture, copy_dir, good_release, wait_for};
use decnet_pki::{Bundle, BundleKind, ClientAuth, RevocationList};

/// A TLS server presenting a *worker's* certificate, impersonating the
/// master. It answers `GET /join/ca` with the real (public) CA — the step a
/// joining worker takes before it trusts anything — and records every other
/// byte a client sends after a completed handshake.
struct Impostor {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    handshakes: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Impostor {
    fn start(bundle: Bundle, ca_pem: String) -> Impostor {
        decnet_pki::provider::install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = decnet_pki::server_config(&bundle, None, ClientAuth::Optional).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tcp = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = tcp.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (rec, hs) = (received.clone(), handshakes.clone());
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((sock, _)) = tcp.accept().await else {
                    return;
                };
                let (acceptor, rec, hs, ca_pem) =
                    (acceptor.clone(), rec.clone(), hs.clone(), ca_pem.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    hs.fetch_add(1, Ordering::SeqCst);
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut first = true;
                    loop {
                        let n = match tokio::time::timeout(
                            Duration::from_secs(5),
                            tls.read(&mut buf),
                        )
                        .await
                        {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => return,
                        };
                        if first && buf[..n].starts_with(b"GET /join/ca") {
                            let body = serde_json::json!({ "ca_pem": ca_pem }).to_string();
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = tls.write_all(resp.as_bytes()).await;
                            let _ = tls.shutdown().await;
                            return;
                        }
                        first = false;
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Impostor {
            addr,
            received,
            handshakes,
            _runtime: runtime,
        }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

fn ca_pem(m: &MasterHome) -> String {
    std::fs::read_to_string(m.home().join("ca/ca.crt")).unwrap()
}

fn start_master(m: &MasterHome, extra: &[&str]) -> Daemon {
    let mut args = vec!["--no-listener"];
    args.extend_from_slice(extra);
    m.serve(&args)
}

/// `decnet-agent serve` for `host` with its bundle in `bundle_dir`, extra
/// arguments and environment.
fn agent(
    m: &MasterHome,
    host: &str,
    bundle_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Daemon {
    let state = m.dir.path().join(format!("{host}-state"));
    let mut cmd = Command::new(decnet_e2e::bin("decnet-agent"));
    cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .arg("--bundle-dir")
        .arg(bundle_dir)
        .arg("--state-dir")
        .arg(&state)
        .args(extra)
        .args(decnet_e2e::no_master_unless(extra))
        .env("DECNET_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let d = Daemon::start(
        cmd,
        m.dir
            .path()
            .join(format!("{host}-agent-{}.log", decnet_pki::random_hex(3))),
    );
    m.set_agent_port(host, d.port());
    d
}

fn fingerprint(dir: &Path, kind: BundleKind) -> String {
    Bundle::load(dir, kind)
        .unwrap()
        .identity
        .fingerprint
        .to_hex()
}

#[test]
fn a_worker_posing_as_the_master_gets_no_secret_no_line_no_heartbeat_no_renewal() {
    let m = MasterHome::new();
    m.enroll("w2"); // the compromised worker: its bundle is the attacker's
    let w2 = Bundle::load(&m.agent_bundle_dir("w2"), BundleKind::Agent).unwrap();
    let imp = Impostor::start(w2, ca_pem(&m));
    let imp_addr = imp.addr.to_string();

    // Join: the CA hash in the token matches (the CA is public), but the
    // secret never goes to a server that cannot prove it is the master.
    let token = m
        .ok(&[
            "swarm",
            "token",
            "create",
            "--host",
            "w1",
            "--address",
            "127.0.0.1",
        ])
        .trim()
        .to_string();
    let secret = token.split('.').nth(1).unwrap().to_string();
    let dir = m.dir.path().join("w1-joined");
    let out = Command::new(decnet_e2e::bin("decnet-agent"))
        .args(["join", "--master", &imp_addr, "--token", &token])
        .arg("--bundle-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("expected decnet-master"), "{err}");
    assert!(!dir.join("worker.key").exists() && !dir.join("worker.crt").exists());
    assert!(!imp.received().contains(&secret), "the token secret leaked");
    assert_eq!(imp.received(), "", "nothing but the CA download reached it");
    // The token was not spent: the real master accepts it.
    let master = start_master(&m, &[]);
    let out = Command::new(decnet_e2e::bin("decnet-agent"))
        .args([
            "join",
            "--master",
            &master.addr.to_string(),
            "--token",
            &token,
        ])
        .arg("--bundle-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Forwarder: no line is delivered (or counted as delivered).
    let log = m.dir.path().join("w1-app.log");
    std::fs::write(&log, "secret log line one\nsecret log line two\n").unwrap();
    let state = m.dir.path().join("w1-fwd");
    let mut cmd = Command::new(decnet_e2e::bin("decnet-agent"));
    cmd.args(["forward", "--master", &imp_addr])
        .arg("--log-file")
        .arg(&log)
        .arg("--bundle-dir")
        .arg(&dir)
        .arg("--state-dir")
        .arg(&state)
        .env("DECNET_LOG", "info");
    let fwd = Daemon::spawn(cmd, m.dir.path().join("w1-fwd.log"));
    assert!(
        wait_for(Duration::from_secs(10), || fwd
            .log_text()
            .contains("expected decnet-master")
            .then_some(()))
        .is_some(),
        "{}",
        fwd.log_text()
    );
    assert!(!imp.received().contains("secret log line"));
    assert!(
        !state.join("forwarder-offset.json").exists(),
        "nothing was marked delivered"
    );

    // Heartbeats and renewal: a short-lived certificate makes the agent
    // try to renew within seconds; neither reaches the impostor.
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "w3",
        "--address",
        "127.0.0.1",
        "--valid-for",
        "12s",
    ]);
    let w3_dir = m.dir.path().join("w3-bundle");
    copy_dir(&m.agent_bundle_dir("w3"), &w3_dir);
    let before = fingerprint(&w3_dir, BundleKind::Agent);
    let a = agent(
        &m,
        "w3",
        &w3_dir,
        &["--master", &imp_addr, "--heartbeat-interval", "1"],
        &[],
    );
    let renewal_refused = wait_for(Duration::from_secs(20), || {
        let l = a.log_text();
        (l.contains("certificate renewal failed") && l.contains("heartbeat failed")).then_some(l)
    });
    let l = renewal_refused.unwrap_or_else(|| a.log_text());
    assert!(l.contains("expected decnet-master"), "{l}");
    assert_eq!(
        fingerprint(&w3_dir, BundleKind::Agent),
        before,
        "nothing was written"
    );
    assert_eq!(
        imp.handshakes.load(Ordering::SeqCst),
        1,
        "no handshake completed but the CA download"
    );
    assert_eq!(imp.received(), "");
}

/// The serial (hex) of the certificate in `dir`.
fn serial(dir: &Path, kind: BundleKind) -> String {
    Bundle::load(dir, kind).unwrap().identity.serial
}

/// Whether the CRL stored in `dir` revokes `serial`.
fn crl_revokes(dir: &Path, ca_pem: &str, serial: &str) -> bool {
    let Ok(pem) = std::fs::read_to_string(dir.join("crl.pem")) else {
        return false;
    };
    let Ok(crl) = RevocationList::verify_pem(&pem, ca_pem) else {
        return false;
    };
    let bytes: Vec<u8> = (0..serial.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&serial[i..i + 2], 16).unwrap())
        .collect();
    crl.revokes_serial(&bytes)
}

fn get(client_dir: &Path, kind: BundleKind, server_cn: &str, url: &str) -> Result<u16, String> {
    let c = decnet_e2e::mtls_client(client_dir, kind, server_cn);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { c.get(url).send().await })
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn a_rotated_master_certificate_is_refused_by_agents_and_updaters_and_renewal_then_update_works() {
    let m = MasterHome::new();
    m.enroll("cr1");
    let master = start_master(&m, &["--renew-min-interval", "0s"]);
    let api = master.addr.to_string();
    let agent_args = [
        "--agent-arg=--master".to_string(),
        format!("--agent-arg={api}"),
        "--agent-arg=--heartbeat-interval".to_string(),
        "--agent-arg=1".to_string(),
    ];
    let mut extra: Vec<&str> = vec!["--master", &api, "--crl-refresh", "1"];
    extra.extend(agent_args.iter().map(String::as_str));
    let u = UpdaterFixture::start_with(&m, "cr1", &[], &extra);
    let v1 = good_release(&m.dir.path().join("v1"), false);
    m.ok(&[
        "swarm",
        "update",
        "--release",
        v1.to_str().unwrap(),
        "--host",
        "cr1",
    ]);

    let old_master = m.dir.path().join("old-master");
    copy_dir(&m.master_bundle_dir(), &old_master);
    let old_serial = serial(&old_master, BundleKind::Master);
    let agent_url = format!("https://127.0.0.1:{}/health", u.agent_port);
    let updater_url = format!("https://{}/health", u.daemon.addr);
    assert_eq!(
        get(&old_master, BundleKind::Master, "cr1", &agent_url),
        Ok(200)
    );

    m.ok(&["ca", "rotate-master"]);
    let ca = ca_pem(&m);
    // The CRL reaches the agent (through its heartbeats) and the updater.
    let agent_dir = m.agent_bundle_dir("cr1");
    let updater_dir = m.updater_bundle_dir("cr1");
    let reached = wait_for(Duration::from_secs(30), || {
        (crl_revokes(&agent_dir, &ca, &old_serial) && crl_revokes(&updater_dir, &ca, &old_serial))
            .then_some(())
    });
    assert!(
        reached.is_some(),
        "the CRL did not reach the workers; updater log:\n{}",
        u.daemon.log_text()
    );
    // Give the daemons a moment to put the stored list in force.
    std::thread::sleep(Duration::from_millis(500));
    let refused = get(&old_master, BundleKind::Master, "cr1", &agent_url);
    assert!(
        refused.is_err(),
        "the agent accepted the revoked master: {refused:?}"
    );
    let refused = get(&old_master, BundleKind::Master, "updater@cr1", &updater_url);
    assert!(
        refused.is_err(),
        "the updater accepted the revoked master: {refused:?}"
    );
    // The new master certificate works everywhere, without re-enrolling anyone.
    assert_eq!(
        get(
            &m.master_bundle_dir(),
            BundleKind::Master,
            "cr1",
            &agent_url
        ),
        Ok(200)
    );
    assert_eq!(
        get(
            &m.master_bundle_dir(),
            BundleKind::Master,
            "updater@cr1",
            &updater_url
        ),
        Ok(200)
    );
    m.ok(&["swarm", "check"]);

    // The agent renews (forced), the master follows, and an update still
    // passes the updater's probe (it checks the agent's role, not a pin).
    let before = m.json(&["swarm", "show", "cr1", "--json"])["agent_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    m.ok(&["swarm", "renew", "cr1"]);
    let renewed = wait_for(Duration::from_secs(20), || {
        let fp = m.json(&["swarm", "show", "cr1", "--json"])["agent_fingerprint"]
            .as_str()?
            .to_string();
        (fp != before).then_some(())
    });
    assert!(
        renewed.is_some(),
        "no renewal; updater log:\n{}",
        u.daemon.log_text()
    );
    let v2 = good_release(&m.dir.path().join("v2"), false);
    let out = m.run(&[
        "swarm",
        "update",
        "--release",
        v2.to_str().unwrap(),
        "--host",
        "cr1",
    ]);
    assert!(
        out.status.success(),
        "update after an agent renewal failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(master);
}

/// A crash, a full disk or a read-only directory while the agent writes its
/// renewed bundle leaves a working bundle: the old one, or — when the write
/// was already committed — the complete new one.
#[test]
fn a_failed_bundle_write_leaves_a_working_bundle() {
    let m = MasterHome::new();
    m.enroll("bw1");
    let master = start_master(&m, &["--renew-min-interval", "0s"]);
    let api = master.addr.to_string();
    let dir = m.dir.path().join("bw1-bundle");
    copy_dir(&m.agent_bundle_dir("bw1"), &dir);
    let args = ["--master", api.as_str(), "--heartbeat-interval", "1"];
    let current = |m: &MasterHome| {
        m.json(&["swarm", "show", "bw1", "--json"])["agent_fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    };

    for fault in ["stage=erofs", "stage-key=enospc"] {
        let before = fingerprint(&dir, BundleKind::Agent);
        let a = agent(&m, "bw1", &dir, &args, &[("DECNET_BUNDLE_FAULT", fault)]);
        m.ok(&["swarm", "renew", "bw1"]);
        let failed = wait_for(Duration::from_secs(15), || {
            a.log_text()
                .contains("cannot write the renewed bundle")
                .then_some(())
        });
        assert!(failed.is_some(), "{fault}: {}", a.log_text());
        assert_eq!(fingerprint(&dir, BundleKind::Agent), before, "{fault}");
        assert!(
            std::fs::read_dir(&dir).unwrap().all(|e| {
                !e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".bundle")
            }),
            "{fault}: leftovers"
        );
        // Still the same identity to the master, which still reaches it.
        assert_eq!(current(&m), before, "{fault}");
        m.ok(&["swarm", "check"]);
    }

    // Crash before the commit: the old bundle.
    let before = fingerprint(&dir, BundleKind::Agent);
    let mut a = agent(
        &m,
        "bw1",
        &dir,
        &args,
        &[("DECNET_BUNDLE_FAULT", "commit=crash")],
    );
    m.ok(&["swarm", "renew", "bw1"]);
    assert!(
        wait_for(Duration::from_secs(15), || a
            .child
            .try_wait()
            .unwrap()
            .map(|_| ()))
        .is_some(),
        "the injected crash did not happen: {}",
        a.log_text()
    );
    let a2 = agent(&m, "bw1", &dir, &args, &[]);
    assert_eq!(fingerprint(&dir, BundleKind::Agent), before);
    m.ok(&["swarm", "check"]);
    drop(a2);

    // Crash half-way through moving the committed files: the next start
    // completes the move, the new certificate is used and becomes current.
    let mut a = agent(
        &m,
        "bw1",
        &dir,
        &args,
        &[("DECNET_BUNDLE_FAULT", "mid-swap=crash")],
    );
    m.ok(&["swarm", "renew", "bw1"]);
    assert!(
        wait_for(Duration::from_secs(15), || a
            .child
            .try_wait()
            .unwrap()
            .map(|_| ()))
        .is_some(),
        "the injected crash did not happen: {}",
        a.log_text()
    );
    let _a3 = agent(&m, "bw1", &dir, &args, &[]);
    let after = fingerprint(&dir, BundleKind::Agent);
    assert_ne!(after, before, "the committed bundle was completed");
    let promoted = wait_for(Duration::from_secs(15), || {
        (current(&m) == after).then_some(())
    });
    assert!(
        promoted.is_some(),
        "the renewed certificate never became current"
    );
    m.ok(&["swarm", "check"]);
}
