//! The real forwarder (`decnet-agent forward`) and listener (`decnet
//! listener`) over mTLS on loopback.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use decnet_e2e::{Listener, MasterHome, append_lines, start_forwarder, wait_for};
use decnet_pki::{Bundle, BundleKind};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} line {i:04}")).collect()
}

#[test]
fn lines_are_credited_to_the_peer_cn_not_the_claimed_hostname() {
    let m = MasterHome::new();
    m.enroll("w1");
    let l = Listener::start(&m, 0);
    let log = m.dir.path().join("app.log");
    let state = m.dir.path().join("w1-fwd");
    append_lines(
        &log,
        &[
            "first plain line".into(),
            "<11>1 2026-11-23T10:00:00Z master-pwned sshd 42 AUTH [meta ip=\"10.0.0.9\"] spoofed"
                .into(),
            "third plain line \u{1b}[2J\u{202e}gnp.exe".into(),
            "<11>1 2026-11-23T10:00:00Z w1 sshd - - [meta ua=\"x\u{1b}]0;owned\u{7}\u{202e}y\"] fourth"
                .into(),
        ],
    );
    let _fwd = start_forwarder(&m, "w1", l.daemon.addr, &log, &state);
    let raw = l.wait_lines(4, WAIT);
    assert_eq!(raw.len(), 4);
    assert!(raw[0].ends_with("first plain line"), "{raw:?}");
    assert!(raw[1].contains("master-pwned"));
    // Every raw line starts with who really sent it, whatever it claims.
    let fp16 = Bundle::load(&m.agent_bundle_dir("w1"), BundleKind::Agent)
        .unwrap()
        .identity
        .fingerprint
        .short();
    for r in &raw {
        assert!(r.starts_with(&format!("w1 {fp16} ")), "{r}");
    }
    // Terminal escapes and bidi overrides arrive as visible text.
    assert!(
        raw[2].ends_with("third plain line \\x1b[2J\\u{202e}gnp.exe"),
        "{}",
        raw[2]
    );
    let recs = wait_for(WAIT, || {
        let r = l.records();
        (r.len() == 4).then_some(r)
    })
    .unwrap();
    let fp = Bundle::load(&m.agent_bundle_dir("w1"), BundleKind::Agent)
        .unwrap()
        .identity
        .fingerprint
        .to_hex();
    for r in &recs {
        assert_eq!(r["peer_cn"], "w1", "{r}");
        assert_eq!(r["peer_fingerprint"], fp);
        assert!(r["received_at"].as_str().is_some());
    }
    assert_eq!(
        recs[0]["claimed_hostname"], "w1",
        "wrapped lines carry the worker's own name"
    );
    assert_eq!(recs[0]["msg"], "first plain line");
    assert_eq!(recs[1]["claimed_hostname"], "master-pwned");
    assert_eq!(recs[1]["app_name"], "sshd");
    assert_eq!(recs[1]["procid"], "42");
    assert_eq!(recs[1]["msgid"], "AUTH");
    assert_eq!(recs[1]["severity"], 3);
    assert_eq!(recs[1]["facility"], 1);
    assert_eq!(recs[1]["structured_data"]["meta"]["ip"], "10.0.0.9");
    assert_eq!(recs[1]["msg"], "spoofed");
    assert_eq!(recs[2]["msg"], "third plain line \\x1b[2J\\u{202e}gnp.exe");
    // So do those hidden in a structured-data value.
    assert_eq!(
        recs[3]["structured_data"]["meta"]["ua"],
        "x\\x1b]0;owned\\x07\\u{202e}y"
    );
    assert_eq!(recs[3]["msg"], "fourth");
}

/// A log connection ends when its certificate expires, not only when it is
/// revoked: an expired certificate must not keep an open connection alive.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_connection_is_cut_when_its_certificate_expires() {
    use tokio::io::AsyncReadExt;
    let m = MasterHome::new();
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "exp1",
        "--address",
        "127.0.0.1",
        "--valid-for",
        "12s",
    ]);
    let l = Listener::start(&m, 0);
    decnet_pki::provider::install_default();
    let b = Bundle::load(&m.agent_bundle_dir("exp1"), BundleKind::Agent).unwrap();
    let left = b.identity.not_after - time::OffsetDateTime::now_utc();
    let cfg = decnet_pki::client_config(&b, None, &decnet_pki::ExpectedServer::master()).unwrap();
    let tcp = tokio::net::TcpStream::connect(l.daemon.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("decnet-master").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(&decnet_log_relay::frame::encode(
        b"<13>1 - exp1 a - - - before expiry",
    ))
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "the connection outlived its certificate: {n:?}"
    );
    let waited = t.elapsed().as_secs_f64();
    let expected = left.as_seconds_f64();
    assert!(
        (expected - 2.0..expected + 5.0).contains(&waited),
        "cut after {waited:.1}s, the certificate had {expected:.1}s left"
    );
    assert!(l.raw_lines().iter().any(|r| r.ends_with("before expiry")));
}

#[test]
fn forwarder_restart_does_not_resend_delivered_lines() {
    let m = MasterHome::new();
    m.enroll("w2");
    let l = Listener::start(&m, 0);
    let log = m.dir.path().join("app.log");
    let state = m.dir.path().join("w2-fwd");
    append_lines(&log, &lines("a", 5));
    let mut fwd = start_forwarder(&m, "w2", l.daemon.addr, &log, &state);
    l.wait_lines(5, WAIT);
    assert_eq!(fwd.stop(), Some(0));
    append_lines(&log, &lines("b", 3));
    let _fwd = start_forwarder(&m, "w2", l.daemon.addr, &log, &state);
    l.wait_lines(8, WAIT);
    std::thread::sleep(Duration::from_millis(800));
    let raw = l.raw_lines();
    assert_eq!(
        raw.len(),
        8,
        "no line resent after a clean restart: {raw:?}"
    );
}

#[test]
fn listener_restart_mid_stream_loses_no_line() {
    let m = MasterHome::new();
    m.enroll("w3");
    // A reserved port: it stays free while the listener is down.
    let port = decnet_e2e::free_port();
    let mut l = Listener::start(&m, port);
    let log = m.dir.path().join("app.log");
    let state = m.dir.path().join("w3-fwd");
    let _fwd = start_forwarder(&m, "w3", l.daemon.addr, &log, &state);
    let writer_log = log.clone();
    let writer = std::thread::spawn(move || {
        for chunk in 0..40 {
            append_lines(&writer_log, &lines(&format!("c{chunk:02}"), 10));
            std::thread::sleep(Duration::from_millis(25));
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(l.daemon.stop(), Some(0), "listener stops cleanly");
    std::thread::sleep(Duration::from_millis(300));
    let l2 = Listener::start(&m, port);
    writer.join().unwrap();
    let expected: BTreeSet<String> = (0..40)
        .flat_map(|c| lines(&format!("c{c:02}"), 10))
        .collect();
    let got = wait_for(Duration::from_secs(60), || {
        let seen: BTreeSet<String> = l2
            .raw_lines()
            .iter()
            .filter_map(|r| r.split(" - - - ").nth(1).map(String::from))
            .collect();
        expected.is_subset(&seen).then_some(seen)
    });
    let seen: BTreeSet<String> = l2
        .raw_lines()
        .iter()
        .filter_map(|r| r.split(" - - - ").nth(1).map(String::from))
        .collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    assert!(
        got.is_some(),
        "{} lines lost across a listener restart: {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>()
    );
    drop(l);
}

#[test]
fn rotation_by_rename_and_truncation_deliver_everything() {
    let m = MasterHome::new();
    m.enroll("w4");
    let l = Listener::start(&m, 0);
    let log = m.dir.path().join("app.log");
    let state = m.dir.path().join("w4-fwd");
    append_lines(&log, &lines("old", 3));
    let mut fwd = start_forwarder(&m, "w4", l.daemon.addr, &log, &state);
    l.wait_lines(3, WAIT);
    // Stop the forwarder, rotate while it is down: the writer still appends
    // to the renamed file, and the new file outgrows the old offset.
    assert_eq!(fwd.stop(), Some(0));
    let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::rename(&log, m.dir.path().join("app.log.1")).unwrap();
    writeln!(old, "old late line 1").unwrap();
    writeln!(old, "old late line 2").unwrap();
    drop(old);
    append_lines(&log, &lines("new-file-with-longer-lines-than-before", 6));
    let _fwd = start_forwarder(&m, "w4", l.daemon.addr, &log, &state);
    let raw = l.wait_lines(11, WAIT);
    let body: Vec<&str> = raw
        .iter()
        .filter_map(|r| r.split(" - - - ").nth(1))
        .collect();
    assert_eq!(body[3], "old late line 1", "{body:?}");
    assert_eq!(body[4], "old late line 2");
    assert_eq!(body[5], "new-file-with-longer-lines-than-before line 0000");
    assert_eq!(body.len(), 11);
    // Truncation: the file shrinks below the offset and starts over.
    std::fs::write(&log, "after truncate\n").unwrap();
    let raw = l.wait_lines(12, WAIT);
    assert!(raw[11].ends_with("after truncate"), "{raw:?}");
}

async fn send_raw(bundle: &Bundle, addr: std::net::SocketAddr, payload: &[u8]) {
    let cfg =
        decnet_pki::client_config(bundle, None, &decnet_pki::ExpectedServer::master()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("decnet-master").unwrap();
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = tls.write_all(payload).await;
        let _ = tls.flush().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = tls.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_peers_write_nothing_and_bad_peers_do_not_disturb_others() {
    let m = MasterHome::new();
    m.enroll("good");
    m.enroll("gone");
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], decnet_e2e::free_port()));
    let l = Listener::start_with(&m, 0, &["--metrics-addr", &metrics.to_string()]);
    let addr = l.daemon.addr;
    let frame =
        decnet_log_relay::frame::encode(b"<13>1 - intruder - - - - should never be written");
    decnet_pki::provider::install_default();

    // Master and updater certificates are not log senders.
    let master = Bundle::load(&m.master_bundle_dir(), BundleKind::Master).unwrap();
    send_raw(&master, addr, &frame).await;
    let updater = Bundle::load(&m.updater_bundle_dir("good"), BundleKind::Updater).unwrap();
    send_raw(&updater, addr, &frame).await;
    // A foreign CA's agent certificate fails the handshake.
    let other = decnet_pki::CertificateAuthority::generate().unwrap();
    let leaf = other
        .issue(&decnet_pki::LeafSpec::for_role(
            &decnet_pki::Role::Agent(decnet_pki::HostName::new("good").unwrap()),
            &[],
        ))
        .unwrap();
    let mut foreign = Bundle::from_issued(BundleKind::Agent, &leaf, other.cert_pem()).unwrap();
    foreign.ca_pem = std::fs::read_to_string(m.home().join("ca/ca.crt")).unwrap();
    send_raw(&foreign, addr, &frame).await;
    // A decommissioned host is refused at once, without a listener restart.
    let gone = Bundle::load(&m.agent_bundle_dir("gone"), BundleKind::Agent).unwrap();
    m.ok(&["swarm", "decommission", "gone", "--yes"]);
    send_raw(&gone, addr, &frame).await;
    // A certificate superseded by a reissue is refused too.
    let old_good = Bundle::load(&m.agent_bundle_dir("good"), BundleKind::Agent).unwrap();
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "good",
        "--address",
        "127.0.0.1",
        "--reissue",
    ]);
    send_raw(&old_good, addr, &frame).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        l.raw_lines().is_empty(),
        "refused peers wrote: {:?}",
        l.raw_lines()
    );
    assert!(l.records().is_empty());
    let log = l.daemon.log_text();
    assert!(log.contains("may not send logs"), "{log}");
    // Refused handshakes are logged with their reason, like the other servers'.
    assert!(
        log.contains("TLS handshake refused") && log.contains("foreign_ca"),
        "{log}"
    );
    assert!(log.contains("certificate is revoked"), "{log}");
    // ... and counted, by CN (refused after the handshake) or by reason.
    let body = tokio::task::spawn_blocking(move || decnet_e2e::scrape_metrics(metrics))
        .await
        .unwrap();
    let count = |series: &str| decnet_e2e::metric_value(&body, series).unwrap_or(0.0);
    assert!(
        count("decnet_log_connections_refused_total{cn=\"decnet-master\"}") >= 1.0,
        "{body}"
    );
    assert!(
        count("decnet_log_connections_refused_total{cn=\"updater@good\"}") >= 1.0,
        "{body}"
    );
    assert!(
        count("decnet_handshake_failures_total{server=\"listener\",reason=\"foreign_ca\"}") >= 1.0,
        "{body}"
    );

    // Bad peers: a dangling "99 " and a 4 GB length prefix; meanwhile a good
    // forwarder delivers everything.
    let good = Bundle::load(&m.agent_bundle_dir("good"), BundleKind::Agent).unwrap();
    let log_file = m.dir.path().join("good.log");
    append_lines(&log_file, &lines("good", 20));
    let state = m.dir.path().join("good-fwd");
    let _fwd = start_forwarder(&m, "good", addr, &log_file, &state);
    let g1 = good.clone();
    let g2 = good.clone();
    let bad1 = tokio::spawn(async move { send_raw(&g1, addr, b"99 ").await });
    let bad2 = tokio::spawn(async move { send_raw(&g2, addr, b"4294967296 ").await });
    let _ = tokio::join!(bad1, bad2);
    append_lines(&log_file, &lines("more", 5));
    let (raw, _l) = tokio::task::spawn_blocking(move || (l.wait_lines(25, WAIT), l))
        .await
        .unwrap();
    assert_eq!(raw.len(), 25);
    assert!(raw.iter().all(|r| !r.contains("intruder")));
    // The 4 GB frame was skipped and counted against its sender.
    let body = tokio::task::spawn_blocking(move || {
        decnet_e2e::wait_metric(
            metrics,
            "decnet_log_lines_written_total{cn=\"good\"}",
            |v| v >= 25.0,
        )
    })
    .await
    .unwrap();
    let count = |series: &str| decnet_e2e::metric_value(&body, series).unwrap_or(0.0);
    assert!(
        count("decnet_log_frame_errors_total{cn=\"good\",kind=\"oversized\"}") >= 1.0,
        "{body}"
    );
    assert!(
        count("decnet_log_bytes_refused_total{cn=\"good\",reason=\"oversized\"}") >= 4294967296.0,
        "{body}"
    );
    assert_eq!(count("decnet_log_lines_received_total{cn=\"good\"}"), 25.0);
}

#[test]
fn a_refused_forwarder_never_advances_its_offset() {
    let m = MasterHome::new();
    m.enroll("ex");
    // The worker's own copy of its bundle (the master deletes its copy on decommission).
    let worker_bundle = m.dir.path().join("ex-worker-bundle");
    Bundle::load(&m.agent_bundle_dir("ex"), BundleKind::Agent)
        .unwrap()
        .write(&worker_bundle)
        .unwrap();
    m.ok(&["swarm", "decommission", "ex", "--yes"]);
    let l = Listener::start(&m, 0);
    let log = m.dir.path().join("ex.log");
    append_lines(&log, &lines("ex", 3));
    let state = m.dir.path().join("ex-fwd");
    let mut cmd = std::process::Command::new(decnet_e2e::bin("decnet-agent"));
    cmd.args([
        "forward",
        "--master",
        &l.daemon.addr.to_string(),
        "--log-file",
    ])
    .arg(&log)
    .arg("--bundle-dir")
    .arg(&worker_bundle)
    .arg("--state-dir")
    .arg(&state);
    let fwd = decnet_e2e::Daemon::spawn(cmd, m.dir.path().join("ex-fwd.log"));
    // The handshake succeeds (TLS 1.3), the listener then closes: the
    // forwarder must notice and keep its offset where it was.
    let refused = wait_for(WAIT, || {
        fwd.log_text()
            .contains("refused this forwarder")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", fwd.log_text());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !state.join("forwarder-offset.json").exists(),
        "offset advanced although nothing was accepted"
    );
    assert!(l.raw_lines().is_empty());
}

#[test]
fn plaintext_is_refused_off_loopback() {
    let m = MasterHome::new();
    let out = m.run(&[
        "listener",
        "--plaintext",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback only"), "{err}");
}

#[test]
fn the_agent_daemon_forwards_with_forward_to() {
    let m = MasterHome::new();
    m.enroll("wf");
    let l = Listener::start(&m, 0);
    let log = m.dir.path().join("wf.log");
    append_lines(&log, &lines("embedded", 4));
    let _agent = decnet_e2e::Agent::start(
        &m,
        "wf",
        &m.dir.path().join("wf-state"),
        &[
            "--forward-to",
            &l.daemon.addr.to_string(),
            "--forward-log",
            log.to_str().unwrap(),
        ],
    );
    let raw = l.wait_lines(4, WAIT);
    assert!(raw[3].ends_with("embedded line 0003"), "{raw:?}");
    assert!(l.records().iter().all(|r| r["peer_cn"] == "wf"));
}

#[test]
fn a_listener_that_cannot_write_exits_with_the_error() {
    let m = MasterHome::new();
    m.enroll("wd");
    let mut cmd = std::process::Command::new(decnet_e2e::bin("decnet"));
    cmd.args([
        "listener",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-path",
    ])
    .arg(m.dir.path().join("raw.log"))
    .args(["--json-path", "/dev/full"])
    .env("DECNET_HOME", m.home());
    let mut l = decnet_e2e::Daemon::start(cmd, m.dir.path().join("full.log"));
    let addr = l.addr;
    let log = m.dir.path().join("wd.log");
    append_lines(&log, &lines("disk", 3));
    let state = m.dir.path().join("wd-fwd");
    let _fwd = start_forwarder(&m, "wd", addr, &log, &state);
    let code = wait_for(WAIT, || l.child.try_wait().ok().flatten()).expect("listener exits");
    assert_eq!(code.code(), Some(1));
    assert!(l.log_text().contains("No space left"), "{}", l.log_text());
    drop(l);
}

/// A forwarder given a log file that is not there says so (a typo must not
/// look like silence), keeps waiting, and forwards it once it appears.
#[test]
fn a_missing_log_file_is_said_and_forwarded_once_it_appears() {
    let m = MasterHome::new();
    m.enroll("w5");
    let l = Listener::start(&m, 0);
    let log = m.dir.path().join("not-yet.log");
    let state = m.dir.path().join("w5-fwd");
    let fwd = start_forwarder(&m, "w5", l.daemon.addr, &log, &state);
    assert!(
        decnet_e2e::wait_for(WAIT, || fwd
            .log_text()
            .contains("the log file does not exist (yet)")
            .then_some(()))
        .is_some(),
        "{}",
        fwd.log_text()
    );
    append_lines(&log, &lines("late", 3));
    l.wait_lines(3, WAIT);
    assert!(
        fwd.log_text().contains("the log file appeared"),
        "{}",
        fwd.log_text()
    );
}

/// A peer that just goes away — no TLS `close_notify`, or a reset — is an
/// ordinary disconnect: said at info, not a malformed stream, not counted
/// as a frame error; what it sent is kept.
#[test]
fn a_peer_that_goes_away_is_a_disconnect_not_a_malformed_stream() {
    let m = MasterHome::new();
    m.enroll("gone");
    let listener = Listener::start(&m, 0);
    let bundle = Bundle::load(&m.agent_bundle_dir("gone"), BundleKind::Agent).unwrap();
    let ca = std::fs::read_to_string(m.home().join("ca/ca.crt")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (i, reset) in [false, true].into_iter().enumerate() {
        rt.block_on(async {
            let mut tls = decnet_e2e::hostile::try_tls_from(
                "127.0.0.1",
                listener.daemon.addr,
                Some(&bundle),
                &ca,
                &decnet_pki::ExpectedServer::master(),
            )
            .await
            .expect("a log connection");
            tls.write_all(&decnet_e2e::hostile::syslog_frame(
                "gone",
                format!("line {i} before going away").as_bytes(),
            ))
            .await
            .unwrap();
            tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Away without close_notify: the TCP stream alone is closed.
            let (tcp, _) = tls.into_inner();
            if reset {
                rustix::net::sockopt::set_socket_linger(&tcp, Some(Duration::ZERO)).unwrap();
            }
            drop(tcp);
        });
    }
    let got = listener.wait_lines(2, Duration::from_secs(10));
    assert!(
        got.iter().any(|l| l.contains("line 1 before going away")),
        "{got:?}"
    );
    let log = wait_for(Duration::from_secs(10), || {
        let log = listener.daemon.log_text();
        (log.matches("went away without closing the connection")
            .count()
            >= 2)
            .then_some(log)
    })
    .unwrap_or_else(|| panic!("{}", listener.daemon.log_text()));
    assert!(!log.contains("malformed"), "{log}");
    assert!(!log.contains("docs.rs"), "no library manual URL: {log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("decnet_log_relay")),
        "an ordinary disconnect is no warning: {log}"
    );
}
