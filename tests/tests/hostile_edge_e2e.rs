//! The hostile edge (#25), each test playing the attacker against the real
//! `decnet master serve` and `decnet-agent` on loopback: floods from a
//! worker's own address, a descriptor-starved master, a peer flooding the
//! listener with control bytes, a filled log filesystem, and revocations
//! that must reach connections already open.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use decnet_e2e::hostile::{
    Tls, anonymous_flood, flood_lines, heartbeat, silent_flood, syslog_frame, try_tls_from,
    written_for,
};
use decnet_e2e::{MasterHome, free_port};
use decnet_pki::{Bundle, BundleKind, ExpectedServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn agent_bundle(m: &MasterHome, host: &str) -> Bundle {
    Bundle::load(&m.agent_bundle_dir(host), BundleKind::Agent).unwrap()
}

fn ca_pem(m: &MasterHome) -> String {
    std::fs::read_to_string(m.home().join("ca/ca.crt")).unwrap()
}

/// A new log connection of `b` from 127.0.0.1, how long its handshake
/// took, and `msg` sent on it.
async fn log_line(
    listener: SocketAddr,
    b: &Bundle,
    ca: &str,
    msg: &str,
) -> Result<(Duration, Tls), String> {
    let t = Instant::now();
    let mut s = try_tls_from(
        "127.0.0.1",
        listener,
        Some(b),
        ca,
        &ExpectedServer::master(),
    )
    .await
    .map_err(|e| format!("no log connection: {e}"))?;
    let took = t.elapsed();
    s.write_all(&syslog_frame(&b.identity.cn, msg.as_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    Ok((took, s))
}

fn raw_log(m: &MasterHome) -> String {
    std::fs::read_to_string(m.home().join("logs/fleet.log")).unwrap_or_default()
}

/// Wait (off the async workers) until the raw log contains `marker`.
async fn arrives(m: &MasterHome, marker: &str, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if raw_log(m).contains(marker) {
            return Some(t.elapsed());
        }
        if t.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on {addr}");
}

/// A master with its listener on a port of its own.
fn serve_with_listener(m: &MasterHome, extra: &[&str]) -> (decnet_e2e::Daemon, SocketAddr) {
    let port = free_port();
    let mut args = vec!["--listener-port".to_string(), port.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = m.serve(&args);
    (d, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A decky sharing its worker's address (or hosts behind one NAT) holds
/// 1,000 silent TCP connections to the control API and to the listener and
/// 500 slow anonymous TLS connections to the control API, all from the
/// worker's own address: the worker's new connections still complete, each
/// within a second, and its lines arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_from_a_workers_own_address_does_not_cut_it_off() {
    decnet_server::descriptors::raise_nofile_limit();
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (master, listener) = serve_with_listener(&m, &["--metrics-addr", &metrics.to_string()]);
    let api = master.addr;
    wait_listening(listener).await;
    let (w1, ca) = (agent_bundle(&m, "w1"), ca_pem(&m));
    let refusals = || {
        decnet_e2e::scrape_metrics(metrics)
            .lines()
            .filter(|l| {
                l.starts_with("decnet_connections_refused")
                    || l.starts_with("decnet_handshake_failures")
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let floods = [
        silent_flood(api, "127.0.0.1", 1000),
        silent_flood(listener, "127.0.0.1", 1000),
        anonymous_flood(
            api,
            vec!["127.0.0.1".into()],
            500,
            ca.clone(),
            ExpectedServer::master(),
        ),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..5 {
        let took = heartbeat(api, &w1).await.unwrap_or_else(|e| {
            panic!(
                "heartbeat {i} failed under the flood: {e}\nrefusals:\n{}",
                refusals()
            )
        });
        assert!(took < Duration::from_secs(1), "heartbeat {i}: {took:?}");
        let marker = format!("same-source-{i}");
        let (took, _conn) = log_line(listener, &w1, &ca, &marker)
            .await
            .unwrap_or_else(|e| panic!("log connection {i}: {e}\nrefusals:\n{}", refusals()));
        assert!(took < Duration::from_secs(1), "log handshake {i}: {took:?}");
        assert!(
            arrives(&m, &marker, Duration::from_secs(5)).await.is_some(),
            "line {i} never arrived; refusals:\n{}",
            refusals()
        );
    }
    for f in floods {
        f.abort();
    }
}

/// Under systemd's default open-file limit (1,024), 64 sources holding 16
/// anonymous TLS connections each would exhaust the master's descriptors:
/// it fits its caps below the limit instead, and keeps taking heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_limited_to_1024_descriptors_keeps_taking_heartbeats_under_64_sources() {
    decnet_server::descriptors::raise_nofile_limit();
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    let master = m.serve_under(&["prlimit", "--nofile=1024:1024", "--"], &["--no-listener"]);
    let api = master.addr;
    let (w1, ca) = (agent_bundle(&m, "w1"), ca_pem(&m));
    // Each in a network of its own (a /24), as many parties would be.
    let sources: Vec<String> = (2..66).map(|i| format!("127.0.{i}.1")).collect();
    let flood = anonymous_flood(api, sources, 16, ca, ExpectedServer::master());
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..10 {
        let took = heartbeat(api, &w1).await.unwrap_or_else(|e| {
            panic!(
                "heartbeat {i} failed under the descriptor attack: {e}\nmaster log:\n{}",
                master.log_text()
            )
        });
        assert!(took < Duration::from_secs(3), "heartbeat {i}: {took:?}");
    }
    let log = master.log_text();
    assert!(
        log.contains("connection caps lowered to fit the open-file limit"),
        "the master said nothing about its caps:\n{log}"
    );
    assert!(
        log.matches("accept failed").count() < 20,
        "accept failures flood the log:\n{log}"
    );
    flood.abort();
}

/// A worker (or a decky through it) floods the listener with control bytes
/// for 20 s over two connections at once: what it gets written stays
/// within its one budget (a second connection buys nothing), another
/// host's lines arrive within 2 s meanwhile, and heartbeats go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_flood_stays_within_its_budget_and_leaves_room_for_everyone_else() {
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    m.enroll("evil");
    let (master, listener) = serve_with_listener(&m, &["--log-budget", "64k", "--log-burst", "1M"]);
    wait_listening(listener).await;
    let ca = ca_pem(&m);
    let (w1, evil) = (agent_bundle(&m, "w1"), agent_bundle(&m, "evil"));
    let flood = flood_lines(listener, evil.clone(), ca.clone(), 0x1b, 20);
    let second_flood = flood_lines(listener, evil, ca.clone(), 0x1b, 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, mut conn) = log_line(listener, &w1, &ca, "calm-0").await.unwrap();
    let mut worst = Duration::ZERO;
    for i in 1..=12 {
        let marker = format!("calm-{i}");
        conn.write_all(&syslog_frame("w1", marker.as_bytes()))
            .await
            .unwrap();
        let took = arrives(&m, &marker, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{marker} never arrived during the flood"));
        worst = worst.max(took);
        heartbeat(master.addr, &w1)
            .await
            .unwrap_or_else(|e| panic!("heartbeat during the flood: {e}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("worst calm line: {worst:?}");
    assert!(worst < Duration::from_secs(2), "a calm line took {worst:?}");
    let sent = flood.await.unwrap() + second_flood.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = written_for(&m.home().join("logs"), "evil");
    // The burst, the rate over the flood, and one line of slack.
    let allowed = 1024 * 1024 + 64 * 1024 * 22 + 300 * 1024;
    assert!(
        written <= allowed,
        "evil got {written} bytes written (allowed {allowed}) of {sent} sent"
    );
    assert!(
        sent > 10 * allowed as u64,
        "the flood was too weak to prove anything: {sent} bytes sent"
    );
    assert!(written > 0, "the budget lets some of it through");
    let log = master.log_text();
    assert!(
        log.contains("log peer over its budget") && log.contains("evil"),
        "the listener did not name the peer over its budget:\n{log}"
    );
}

/// Unmounts a test's filesystem when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Mounted {
    std::fs::create_dir_all(at).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "this test mounts a small tmpfs (it needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mounted(at.to_path_buf())
}

/// The logs share a small filesystem with the fleet database; a peer with
/// no budget fills it: the listener stops at the watermark, the database
/// stays writable (heartbeats, `swarm list`), `swarm doctor` says so, and
/// writing resumes by itself once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filled_log_filesystem_leaves_the_database_writable() {
    decnet_pki::provider::install_default();
    let outer = tempfile::tempdir().unwrap();
    let mnt = outer.path().join("small");
    let _mounted = mount_tmpfs(&mnt, "64m");
    let m = MasterHome::in_dir(&mnt);
    m.enroll("w1");
    m.enroll("evil");
    let (master, listener) = serve_with_listener(&m, &["--log-budget", "0"]);
    wait_listening(listener).await;
    let ca = ca_pem(&m);
    let (w1, evil) = (agent_bundle(&m, "w1"), agent_bundle(&m, "evil"));
    let flood = flood_lines(listener, evil, ca.clone(), b'A', 60);
    let paused = {
        let t = Instant::now();
        loop {
            if master.log_text().contains("log writing paused") {
                break true;
            }
            if t.elapsed() > Duration::from_secs(60) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert!(paused, "the listener never paused:\n{}", master.log_text());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (free, total) = decnet_log_relay::disk::free_space(&mnt).unwrap();
    let mark = total / 20;
    assert!(
        free >= mark / 2,
        "the logs ate the filesystem: {free} bytes free of {total}"
    );
    // The database still takes writes.
    heartbeat(master.addr, &w1)
        .await
        .unwrap_or_else(|e| panic!("heartbeat with the log filesystem full: {e}"));
    m.ok(&["swarm", "enroll", "--host", "w2", "--address", "127.0.0.1"]);
    assert!(m.ok(&["swarm", "list"]).contains("w2"));
    let doctor = m.run(&["swarm", "doctor", "--no-probe"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(3), "{text}");
    assert!(
        text.contains("disk_space") && text.contains("stopped writing"),
        "{text}"
    );
    flood.abort();
    // The operator frees space: writing resumes without a restart.
    for f in ["fleet.log", "fleet.json"] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.home().join("logs").join(f))
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    let mut resumed = false;
    for i in 0..20 {
        let marker = format!("after-{i}");
        if let Ok((_, _conn)) = log_line(listener, &w1, &ca, &marker).await
            && arrives(&m, &marker, Duration::from_secs(1)).await.is_some()
        {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "writing never resumed:\n{}", master.log_text());
    drop(master);
}

/// Whether the server closes `s` within `within` (EOF or an error).
async fn closed_within(s: &mut Tls, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A decommissioned host's log connection, already open, is closed within
/// two seconds, not at the listener's next periodic check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_hosts_open_log_connection_is_closed_at_once() {
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    let (master, listener) = serve_with_listener(&m, &[]);
    wait_listening(listener).await;
    let (w1, ca) = (agent_bundle(&m, "w1"), ca_pem(&m));
    let (_, mut conn) = log_line(listener, &w1, &ca, "before-decommission")
        .await
        .unwrap();
    assert!(
        arrives(&m, "before-decommission", Duration::from_secs(5))
            .await
            .is_some()
    );
    m.ok(&["swarm", "decommission", "w1", "--yes"]);
    let t = Instant::now();
    assert!(
        closed_within(&mut conn, Duration::from_secs(2)).await,
        "the decommissioned host's log connection stayed open; master log:\n{}",
        master.log_text()
    );
    assert!(t.elapsed() < Duration::from_secs(2));
    // Nothing it sends now is written.
    let _ = conn
        .write_all(&syslog_frame("w1", b"after-decommission"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!raw_log(&m).contains("after-decommission"));
}

/// `decnet ca rotate-master` revokes the old master certificate: a
/// connection kept alive under it to an agent is closed as soon as the
/// agent has the new CRL (one heartbeat and one fetch), and runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_of_a_rotated_out_master_is_closed_by_the_agent() {
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    let master = m.serve(&["--no-listener"]);
    let api = master.addr.to_string();
    let agent = decnet_e2e::Agent::start(
        &m,
        "w1",
        &m.dir.path().join("w1-state"),
        &["--master", &api, "--heartbeat-interval", "1"],
    );
    let old_master = Bundle::load(&m.master_bundle_dir(), BundleKind::Master).unwrap();
    let cfg = decnet_pki::client_config(
        &old_master,
        None,
        &ExpectedServer::role(decnet_pki::Role::from_cn("w1").unwrap()),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(agent.daemon.addr)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("w1").unwrap();
    let mut conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: w1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    m.ok(&["ca", "rotate-master"]);
    assert!(
        closed_within(&mut conn, Duration::from_secs(15)).await,
        "the agent kept serving the rotated-out master; agent log:\n{}",
        agent.daemon.log_text()
    );
}

/// A worker with no master never learns a revocation: started from a
/// copied bundle without `--master` it refuses to start (saying how to fix
/// it); `swarm enroll --master` records the master in the bundles it
/// writes — only in `--out-dir`, keeping no copy of the keys — and an agent
/// started from them heartbeats without any flag.
#[test]
fn a_worker_without_a_master_refuses_to_start_and_enrolled_bundles_record_it() {
    let m = MasterHome::new();
    m.enroll("w1");
    let state = m.dir.path().join("w1-state");
    let out = std::process::Command::new(decnet_e2e::bin("decnet-agent"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .arg("--bundle-dir")
        .arg(m.agent_bundle_dir("w1"))
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no master to fetch revocations from") && err.contains("--no-master"),
        "{err}"
    );
    let out = std::process::Command::new(decnet_e2e::bin("decnet-updater"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0"])
        .arg("--bundle-dir")
        .arg(m.updater_bundle_dir("w1"))
        .arg("--agent-bundle-dir")
        .arg(m.agent_bundle_dir("w1"))
        .arg("--install-dir")
        .arg(m.dir.path().join("w1-opt"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no master to fetch revocations from"), "{err}");

    let master = m.serve(&["--no-listener"]);
    let ship = m.dir.path().join("w2-ship");
    let printed = m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "w2",
        "--address",
        "127.0.0.1",
        "--updater",
        "--out-dir",
        ship.to_str().unwrap(),
        "--master",
        &master.addr.to_string(),
    ]);
    assert!(printed.contains("record the master"), "{printed}");
    assert!(
        !m.agent_bundle_dir("w2").exists(),
        "--out-dir left a copy of the keys under the CA directory"
    );
    for kind in ["agent", "updater"] {
        assert_eq!(
            std::fs::read_to_string(ship.join(kind).join("master"))
                .unwrap()
                .trim(),
            master.addr.to_string()
        );
    }
    let agent = decnet_e2e::Agent::start_with_bundle(
        &m,
        "w2",
        &ship.join("agent"),
        &m.dir.path().join("w2-state"),
        &["--heartbeat-interval", "1"],
    );
    let seen = decnet_e2e::wait_for(Duration::from_secs(20), || {
        let h = m.json(&["swarm", "show", "w2", "--json"]);
        (h["status"] == "active").then_some(())
    });
    assert!(
        seen.is_some(),
        "the agent never heartbeated to the recorded master:\n{}",
        agent.daemon.log_text()
    );
}

/// Copy a bundle directory's files (a thief's copy of a worker's key).
fn steal(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn host_status(m: &MasterHome, host: &str) -> String {
    m.json(&["swarm", "show", host, "--json"])["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn wait_status(m: &MasterHome, host: &str, want: &str, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if host_status(m, host) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// A thief with a copy of a worker's key renews first and uses its new
/// certificate; the real worker heartbeats on with the one the thief's
/// renewal replaced. Two holders of one identity: the host turns `suspect`
/// within seconds (listed, reported by the doctor, audited), renewals are
/// frozen (the thief's and `swarm renew`'s), and `swarm burn` cuts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thief_renewing_with_a_copied_key_makes_the_host_suspect_and_burn_cuts_both() {
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    let master = m.serve(&["--no-listener", "--renew-min-interval", "0s"]);
    let api = master.addr.to_string();
    let thief_dir = m.dir.path().join("thief");
    steal(&m.agent_bundle_dir("w1"), &thief_dir);
    let _agent = decnet_e2e::Agent::start(
        &m,
        "w1",
        &m.dir.path().join("w1-state"),
        &["--master", &api, "--heartbeat-interval", "1"],
    );
    assert!(wait_status(&m, "w1", "active", Duration::from_secs(15)).await);

    let material =
        decnet_swarm_client::master_link::load_material(&thief_dir, BundleKind::Agent).unwrap();
    let thief = decnet_swarm_client::master_link::MasterLink::new(api.clone(), material, None);
    thief
        .renew(&thief_dir)
        .await
        .expect("the thief renews first");
    let beat = serde_json::json!({"version": "0.1.0", "deckies": {}});
    thief
        .heartbeat(&beat)
        .await
        .expect("its new certificate is presented");
    let t = Instant::now();
    assert!(
        wait_status(&m, "w1", "suspect", Duration::from_secs(15)).await,
        "no suspicion; master log:\n{}",
        master.log_text()
    );
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    assert!(m.ok(&["swarm", "list"]).contains("suspect"));
    let doctor = m.run(&["swarm", "doctor", "--no-probe"]);
    assert_eq!(doctor.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&doctor.stdout).contains("suspect"));
    let audit = m.json(&["audit", "--json", "--limit", "200"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "swarm.suspect" && e["target"] == "w1"),
        "{audit}"
    );
    // Renewals are frozen: the thief cannot renew again, nor can an
    // operator hand a renewal to whoever asks first.
    let err = thief.renew(&thief_dir).await.unwrap_err().to_string();
    assert!(err.contains("suspect"), "{err}");
    let out = m.run(&["swarm", "renew", "w1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("swarm burn w1"));

    let real = agent_bundle(&m, "w1");
    let printed = m.ok(&["swarm", "burn", "w1", "--yes"]);
    assert!(
        printed.contains("swarm token create --host w1"),
        "{printed}"
    );
    assert_eq!(host_status(&m, "w1"), "burned");
    // Both holders are cut: the thief's renewed certificate and the real
    // worker's old one.
    let cut = {
        let t = Instant::now();
        loop {
            let thief_refused = thief.heartbeat(&beat).await.is_err();
            let real_refused = heartbeat(master.addr, &real).await.is_err();
            if thief_refused && real_refused {
                break true;
            }
            if t.elapsed() > Duration::from_secs(3) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(cut, "a holder of the burned identity still heartbeats");
}

/// The same certificate heartbeating from two addresses in turn is two
/// holders too: suspect, without any renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_heartbeating_from_two_sources_makes_the_host_suspect() {
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    let master = m.serve(&["--no-listener"]);
    let w1 = agent_bundle(&m, "w1");
    let from = |last: u8| {
        let cfg = decnet_pki::client_config(&w1, None, &ExpectedServer::master()).unwrap();
        reqwest::Client::builder()
            .tls_backend_preconfigured(cfg)
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    let url = format!("https://{}/heartbeat", master.addr);
    let beat = serde_json::json!({"version": "0.1.0", "deckies": {}});
    for (i, last) in [1u8, 1, 9, 1].into_iter().enumerate() {
        let r = from(last).post(&url).json(&beat).send().await.unwrap();
        assert_eq!(r.status(), 200, "beat {i}");
        let want = if i < 3 { "active" } else { "suspect" };
        // Beats are recorded in batches (within a tenth of a second).
        let seen = decnet_e2e::wait_for(Duration::from_secs(3), || {
            let now = host_status(&m, "w1");
            (now == want).then_some(now)
        });
        assert_eq!(
            seen.as_deref(),
            Some(want),
            "after beat {i} from 127.0.0.{last}"
        );
    }
}

/// A worker asking to be refused 2,000 times (a malformed renewal on a
/// kept-alive connection) gets most answers from the rate limit, before the
/// database, and the refusals that reach it are audited as a handful of
/// counted entries, not one row each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_refused_renewals_write_a_handful_of_audit_rows() {
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("evil");
    let master = m.serve(&["--no-listener", "--renew-min-interval", "0s"]);
    let evil = agent_bundle(&m, "evil");
    let cfg = decnet_pki::client_config(&evil, None, &ExpectedServer::master()).unwrap();
    let c = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap();
    let url = format!("https://{}/renew", master.addr);
    let (mut limited, mut refused) = (0, 0);
    for _ in 0..2000 {
        let r = c
            .post(&url)
            .json(&serde_json::json!({"csr": "not a csr"}))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            429 => limited += 1,
            400 => refused += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert!(limited > 1500, "{limited} limited, {refused} refused");
    let rows = || {
        m.json(&["audit", "--json", "--limit", "5000"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "swarm.renew")
            .count()
    };
    assert!(rows() <= 2, "{} audit rows for {refused} refusals", rows());
    // Stopping the master writes what its windows counted.
    drop(master);
    let audit = m.json(&["audit", "--json", "--limit", "5000"]);
    let renewals: Vec<&serde_json::Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "swarm.renew")
        .collect();
    assert!(renewals.len() <= 3, "{renewals:?}");
    if refused > 1 {
        assert!(
            renewals
                .iter()
                .any(|e| e["detail"].as_str().unwrap().contains("more time(s)")),
            "{renewals:?}"
        );
    }
}

/// What a compromised worker puts in the strings it reports: cursor moves,
/// a window title, text hidden with `ESC[8m`, a bidi override, a fake row.
const EVIL: &str = "1.0\u{1b}[2J\u{1b}]0;owned\u{7}\u{1b}[8m\u{202e}\nw9  10.0.0.9  active";

/// A compromised worker's agent, on the production runner with its own
/// (valid) certificate, answering `/health` and `/status` with escape-laden
/// strings, and any evidence archive a byte a second.
async fn evil_agent(m: &MasterHome, host: &str) -> SocketAddr {
    use axum::routing::get;
    let bundle = agent_bundle(m, host);
    let material = decnet_pki::MaterialSource::from_parts(bundle, None).unwrap();
    let server = decnet_server::Server::bind(
        "evil-agent",
        "127.0.0.1:0".parse().unwrap(),
        decnet_server::Transport::Tls {
            material,
            auth: decnet_pki::ClientAuth::Required,
        },
        decnet_server::ServerLimits::default(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let h = host.to_string();
    let h2 = host.to_string();
    let router = axum::Router::new()
        .route(
            "/health",
            get(move || {
                let h = h.clone();
                async move {
                    axum::Json(serde_json::json!({
                        "status": "ok", "role": "agent", "host": h, "version": EVIL
                    }))
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let h = h2.clone();
                async move {
                    axum::Json(serde_json::json!({
                        "host": h, "version": EVIL, "driver": EVIL,
                        "deckies": [{"name": EVIL, "state": EVIL, "error": EVIL, "address": EVIL}]
                    }))
                }
            }),
        )
        .route(
            "/evidence/{decky}/{id}",
            get(|| async {
                let trickle = futures_util::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Some((
                        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"x")),
                        (),
                    ))
                });
                axum::body::Body::from_stream(trickle)
            }),
        );
    let app = decnet_server::HttpService::new(
        router,
        decnet_server::RoleSet::master_only(),
        decnet_server::HttpLimits::default(),
    );
    tokio::spawn(server.serve(app, std::future::pending()));
    addr
}

/// Worker-supplied strings are inert: an escape-laden heartbeat `version`
/// is refused, and whatever a compromised agent answers reaches no
/// terminal raw — `swarm check`, `status`, `list` and `show` print no ESC,
/// BEL, bidi or line break of its making, while `--json` keeps it exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_strings_reach_no_terminal_raw() {
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    let master = m.serve(&["--no-listener"]);
    let w1 = agent_bundle(&m, "w1");
    let cfg = decnet_pki::client_config(&w1, None, &ExpectedServer::master()).unwrap();
    let c = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap();
    let r = c
        .post(format!("https://{}/heartbeat", master.addr))
        .json(&serde_json::json!({"version": EVIL, "deckies": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = c
        .post(format!("https://{}/heartbeat", master.addr))
        .json(&serde_json::json!({"version": "1.0", "deckies": {}, "sent_at_ms": i64::MIN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "an absurd sent_at_ms is data, not a panic");

    let addr = evil_agent(&m, "w1").await;
    m.set_agent_port("w1", addr.port());
    let clean = |what: &str, out: &std::process::Output| {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for bad in ['\u{1b}', '\u{7}', '\u{202e}'] {
            assert!(!text.contains(bad), "{what} printed {bad:?} raw:\n{text:?}");
        }
        assert!(
            !text.contains("\nw9  "),
            "{what} printed a forged row:\n{text}"
        );
        text
    };
    let checked = clean("swarm check", &m.run(&["swarm", "check"]));
    assert!(checked.contains("\\x1b"), "shown escaped: {checked}");
    clean("swarm status", &m.run(&["swarm", "status"]));
    clean("swarm list", &m.run(&["swarm", "list"]));
    clean("swarm show", &m.run(&["swarm", "show", "w1"]));
    // --json stays exact JSON: the string round-trips.
    let status = m.json(&["swarm", "status", "--json"]);
    assert!(status.to_string().contains("\\u001b[2J"), "{status}");
}

/// A TCP port that takes connections and never answers (an agent port a
/// compromised worker holds, or a host gone dark mid-handshake) until
/// released; counts the connections it holds at once, and the most ever.
struct Tarpit {
    addr: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

async fn tarpit() -> Tarpit {
    use std::sync::atomic::Ordering::SeqCst;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pit = Tarpit {
        addr: listener.local_addr().unwrap(),
        open: Default::default(),
        most: Default::default(),
        release: tokio::sync::watch::channel(false).0,
    };
    let (open, most, release) = (pit.open.clone(), pit.most.clone(), pit.release.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            if *release.borrow() {
                continue; // closed at once
            }
            let now = open.fetch_add(1, SeqCst) + 1;
            most.fetch_max(now, SeqCst);
            let (open, mut released) = (open.clone(), release.subscribe());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    tokio::select! {
                        r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                        _ = released.wait_for(|r| *r) => break,
                    }
                }
                open.fetch_sub(1, SeqCst);
            });
        }
    });
    pit
}

/// Operator `name` with `role`, logged in from a machine of its own (a
/// temp config dir): a client presenting its certificate, and the fleet
/// API's address its context names.
fn operator_client(
    m: &MasterHome,
    master: &decnet_e2e::Daemon,
    name: &str,
    role: &str,
    config: &Path,
) -> (reqwest::Client, String) {
    let added: serde_json::Value =
        serde_json::from_str(&m.ok(&["operator", "add", name, "--role", role, "--json"])).unwrap();
    let out = std::process::Command::new(decnet_e2e::bin("decnet"))
        .args(["login", "--master", &master.addr.to_string(), "--token"])
        .arg(added["token"].as_str().unwrap())
        .env("XDG_CONFIG_HOME", config)
        .env("HOME", config)
        .env("DECNET_HOME", config.join("no-decnet-home"))
        .env_remove("DECNET_CONTEXT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctx = config.join("decnet/contexts").join(name);
    let bundle = Bundle::load(&ctx, BundleKind::Operator).unwrap();
    let cfg = decnet_pki::client_config(&bundle, None, &ExpectedServer::master()).unwrap();
    let api = std::fs::read_to_string(ctx.join("fleet-api")).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap();
    (client, format!("https://{}", api.trim()))
}

/// A viewer's certificate (stolen, or a viewer gone rogue) cannot make the
/// master dial without bound, nor take its fleet-wide reads from everyone:
/// six `/v1/check?parallel=1024` at once against hosts whose agent ports
/// never answer. Requests that only look hold at most half of
/// `--max-outbound` connections to workers at once (4 of 8 here, where the
/// six would want 18), the viewer's
/// requests beyond its allowance of four are refused at once with 429, and
/// its other requests and the admin's are served meanwhile; once the hosts
/// answer, every admitted check ends and the allowance is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_cannot_make_the_master_dial_without_bound() {
    use std::sync::atomic::Ordering::SeqCst;
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    let pit = tarpit().await;
    for h in ["w1", "w2", "w3"] {
        m.enroll(h);
        m.set_agent_port(h, pit.addr.port());
    }
    let master = m.serve(&["--no-listener", "--max-outbound", "8"]);
    let machines = tempfile::tempdir().unwrap();
    let (eve, api) = operator_client(&m, &master, "eve", "viewer", &machines.path().join("eve"));
    let (root, _) = operator_client(&m, &master, "root", "admin", &machines.path().join("root"));
    let check = format!("{api}/v1/check?parallel=1024");
    let sent: Vec<_> = (0..6)
        .map(|_| {
            let (eve, check) = (eve.clone(), check.clone());
            tokio::spawn(async move {
                let r = eve.get(&check).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while pit.open.load(SeqCst) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        pit.open.load(SeqCst),
        4,
        "the checks hold the whole outbound budget"
    );
    // Two of the six are beyond eve's allowance: refused, not queued.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent.iter().filter(|s| s.is_finished()).count() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pit.most.load(SeqCst),
        4,
        "never more than half of --max-outbound at once"
    );
    // Her cheap requests, and the admin's, are served meanwhile.
    for c in [&eve, &root] {
        let r = c.get(format!("{api}/v1/hosts")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let mut refused = 0;
    let mut answered = Vec::new();
    let (done, waiting): (Vec<_>, Vec<_>) = sent.into_iter().partition(|s| s.is_finished());
    for s in done {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("busy") && body.contains("wait"), "{body}");
        refused += 1;
    }
    assert_eq!(
        refused, 2,
        "exactly the two beyond the allowance are refused"
    );
    // The hosts answer now (the tarpit closes): every admitted check ends.
    pit.release.send_replace(true);
    for s in waiting {
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("an admitted check ends once its hosts answer")
            .unwrap();
        assert_eq!(status, 200, "{body}");
        answered.push(body);
    }
    assert_eq!(answered.len(), 4);
    assert!(
        answered
            .iter()
            .all(|b| b.matches("\"reachable\":false").count() == 3),
        "{answered:?}"
    );
    assert!(pit.most.load(SeqCst) <= 4);
    // Her allowance is given back.
    let r = eve.get(&check).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A compromised worker cannot hold the master's evidence spools: asked
/// for an archive, it sends a byte a second (for the hour the fetch would
/// otherwise be allowed). The master cuts the fetch once a 30 s window
/// brings less than 64 KiB/s, answers the operator with why, and the
/// operator's spool is free again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_trickling_evidence_cannot_hold_the_masters_spools() {
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    let master = m.serve(&["--no-listener"]);
    let addr = evil_agent(&m, "w1").await;
    m.set_agent_port("w1", addr.port());
    let machines = tempfile::tempdir().unwrap();
    let (eve, api) = operator_client(&m, &master, "ann", "viewer", machines.path());
    let fetch = format!("{api}/v1/hosts/w1/evidence/d1/20261206");
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(50), eve.get(&fetch).send())
        .await
        .expect("the master cut the trickle")
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("slower than 64 KiB/s"), "{body}");
    let held = started.elapsed();
    assert!(held >= Duration::from_secs(30), "{held:?}");
    // Her spool is hers again: a second fetch is asked, not refused busy.
    let r = eve.get(&fetch).send();
    let again = tokio::time::timeout(Duration::from_secs(3), r).await;
    assert!(
        again.is_err(),
        "the second fetch is under way, not refused: {again:?}"
    );
}

/// A deployer's certificate cannot hold a connection and its upload
/// allowance by trickling a release the master already has: the body it
/// sends anyway is read at the pace an upload must keep (64 KiB/s over
/// 30 s) or cut with 408, and while it is read the same deployer's next
/// upload is refused busy at once (before, the body was read for as long
/// as it came, up to the fleet API's 30-minute request timeout, on as many
/// connections as the deployer liked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_trickling_a_known_release_is_cut() {
    use futures_util::StreamExt;
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    let master = m.serve(&["--no-listener"]);
    let machines = tempfile::tempdir().unwrap();
    let (dan, api) = operator_client(&m, &master, "dan", "deployer", machines.path());
    let blob = b"a release the master already has".to_vec();
    let put = format!(
        "{api}/v1/releases/{}",
        decnet_pki::signing::sha256_hex(&blob)
    );
    let r = dan.put(&put).body(blob.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // Sent again whole, it is known: 200, nothing written.
    let r = dan.put(&put).body(blob.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let trickle = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((Ok::<_, std::io::Error>(vec![b'x']), ()))
    })
    .boxed();
    let started = Instant::now();
    let held = spawn_streamed_put(&dan, &put, trickle);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = dan.put(&put).body(blob.clone()).send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 429, "the trickle holds dan's allowance: {body}");
    assert!(body.contains("busy"), "{body}");
    let (status, body) = tokio::time::timeout(Duration::from_secs(50), held)
        .await
        .expect("the master cut the trickle")
        .unwrap();
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("slower than 64 KiB/s"), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(30));
    // The allowance is given back.
    let r = dan.put(&put).body(blob).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// `PUT url` with `body` streamed as it comes, in a task of its own:
/// its status and answer once the master has answered.
fn spawn_streamed_put(
    client: &reqwest::Client,
    url: &str,
    body: futures_util::stream::BoxStream<'static, Result<Vec<u8>, std::io::Error>>,
) -> tokio::task::JoinHandle<(u16, String)> {
    let put = client.put(url).body(reqwest::Body::wrap_stream(body));
    tokio::spawn(async move {
        let r = put.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    })
}

/// A deployer's certificate cannot hold every release upload of the
/// master: its upload, kept just fast enough not to be cut, holds one of
/// the two slots for as long as it lasts (up to the request timeout), and
/// another deployer's upload is written meanwhile in the other (before,
/// one slot: it waited behind it, then got 429). Both are kept whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_holding_a_slow_upload_leaves_the_other_slot() {
    use futures_util::StreamExt;
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    let master = m.serve(&["--no-listener"]);
    let machines = tempfile::tempdir().unwrap();
    let (dan, api) = operator_client(&m, &master, "dan", "deployer", &machines.path().join("dan"));
    let (eve, _) = operator_client(&m, &master, "eve", "deployer", &machines.path().join("eve"));
    // 12 chunks of 128 KiB a second apart: twice the pace an upload must
    // keep, so it is never cut, and it lasts about 12 s.
    let chunk = 128 * 1024;
    let slow: Vec<u8> = (0..12 * chunk).map(|i| (i * 31 % 251) as u8).collect();
    let slow_put = format!(
        "{api}/v1/releases/{}",
        decnet_pki::signing::sha256_hex(&slow)
    );
    let chunks: Vec<Vec<u8>> = slow.chunks(chunk).map(<[u8]>::to_vec).collect();
    let paced = futures_util::stream::iter(chunks)
        .then(|c| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, std::io::Error>(c)
        })
        .boxed();
    let started = Instant::now();
    let held = spawn_streamed_put(&dan, &slow_put, paced);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let blob = b"eve's release".to_vec();
    let put = format!(
        "{api}/v1/releases/{}",
        decnet_pki::signing::sha256_hex(&blob)
    );
    let r = tokio::time::timeout(Duration::from_secs(5), eve.put(&put).body(blob).send())
        .await
        .expect("eve's upload is written beside dan's, not behind it")
        .unwrap();
    let status = r.status();
    assert_eq!(status, 201, "{}", r.text().await.unwrap());
    assert!(
        !held.is_finished(),
        "dan's upload is still coming in ({:?} in)",
        started.elapsed()
    );
    let (status, body) = tokio::time::timeout(Duration::from_secs(40), held)
        .await
        .expect("dan's upload ends")
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let kept = std::fs::read_dir(m.home().join("uploads")).unwrap().count();
    assert_eq!(kept, 2, "both uploads are kept");
}
