//! Every daemon serves Prometheus metrics (`--metrics-addr`): a real fleet
//! (master with its listener, an updater that installs and runs the agent,
//! the agent sending heartbeats and forwarding a log) is scraped, and the
//! key series must exist and move when the fleet does something. Off
//! loopback (or with `--metrics-mtls`) only monitor certificates may read
//! them: another host's agent may not, and a revoked monitor is refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use decnet_e2e::{
    Agent, Daemon, MasterHome, UpdaterFixture, append_lines, free_port, good_release, metric_value,
    mtls_client, scrape_metrics, wait_for, wait_metric,
};

fn must(body: &str, series: &str) -> f64 {
    metric_value(body, series).unwrap_or_else(|| panic!("{series} missing in:\n{body}"))
}

fn start_master(m: &MasterHome, listener_port: u16, metrics: SocketAddr) -> Daemon {
    m.serve(&[
        "--listener-port",
        &listener_port.to_string(),
        "--metrics-addr",
        &metrics.to_string(),
    ])
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn isolation_args() -> Vec<String> {
    if rustix::process::geteuid().is_root() {
        vec![]
    } else {
        vec!["--agent-arg=--decky-isolation=none".into()]
    }
}

#[test]
fn every_daemon_serves_its_series_and_they_move() {
    let m = MasterHome::new();
    m.enroll("w1");
    let listener_port = free_port();
    let master_metrics = loopback(free_port());
    let master = start_master(&m, listener_port, master_metrics);
    let api = master.addr;

    let log_file = m.dir.path().join("w1-app.log");
    std::fs::write(&log_file, "").unwrap();
    let agent_metrics = loopback(free_port());
    let updater_metrics = loopback(free_port());
    let mut extra = vec![
        format!("--metrics-addr={updater_metrics}"),
        format!("--agent-arg=--metrics-addr={agent_metrics}"),
        format!("--agent-arg=--master={api}"),
        "--agent-arg=--heartbeat-interval=1".into(),
        format!("--agent-arg=--forward-to=127.0.0.1:{listener_port}"),
        format!("--agent-arg=--forward-log={}", log_file.display()),
    ];
    extra.extend(isolation_args());
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _u = UpdaterFixture::start_with(&m, "w1", &[], &extra_refs);

    // Updater: its series exist before anything happened.
    let body = scrape_metrics(updater_metrics);
    assert!(
        body.contains("# TYPE decnet_probe_duration_seconds histogram"),
        "{body}"
    );
    assert_eq!(
        must(&body, "decnet_updates_total{op=\"update\",outcome=\"ok\"}"),
        0.0
    );
    assert_eq!(
        must(&body, "decnet_reverts_total{reason=\"unhealthy\"}"),
        0.0
    );
    assert!(
        must(
            &body,
            "decnet_certificate_expiry_timestamp_seconds{cn=\"updater@w1\",role=\"updater\"}"
        ) > decnet_fleet::unix_now() as f64
    );

    // An update: counted with its outcome, its probe timed.
    let rel = good_release(&m.dir.path().join("rel/v1"), false);
    let out = m.ok(&[
        "swarm",
        "update",
        "--release",
        rel.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    assert!(out.contains("UPDATED"), "{out}");
    let body = scrape_metrics(updater_metrics);
    assert_eq!(
        must(&body, "decnet_updates_total{op=\"update\",outcome=\"ok\"}"),
        1.0
    );
    assert!(
        must(&body, "decnet_probe_duration_seconds_count") >= 1.0,
        "{body}"
    );
    assert!(must(&body, "decnet_probes_total{healthy=\"true\"}") >= 1.0);
    assert!(
        must(
            &body,
            "decnet_http_requests_total{server=\"updater\",route=\"/update\",status=\"200\"}"
        ) >= 1.0,
        "{body}"
    );

    // The agent the update started: heartbeats go out and are counted on both ends.
    let body = wait_metric(
        agent_metrics,
        "decnet_heartbeats_sent_total{outcome=\"ok\"}",
        |v| v >= 2.0,
    );
    assert!(
        must(
            &body,
            "decnet_certificate_expiry_timestamp_seconds{cn=\"w1\",role=\"agent\"}"
        ) > decnet_fleet::unix_now() as f64
    );
    assert_eq!(must(&body, "decnet_deckies{state=\"running\"}"), 0.0);
    let first = must(
        &scrape_metrics(master_metrics),
        "decnet_heartbeats_received_total{host=\"w1\"}",
    );
    let body = wait_metric(
        master_metrics,
        "decnet_heartbeats_received_total{host=\"w1\"}",
        |v| v > first,
    );
    assert!(must(&body, "decnet_host_heartbeat_age_seconds{host=\"w1\"}") < 10.0);
    let skew = must(&body, "decnet_host_clock_skew_seconds{host=\"w1\"}");
    assert!(skew.abs() < 5.0, "same clock: {skew}");
    assert_eq!(must(&body, "decnet_hosts{status=\"active\"}"), 1.0);
    assert!(
        must(
            &body,
            "decnet_http_requests_total{server=\"control-api\",route=\"/heartbeat\",status=\"200\"}"
        ) >= 1.0,
        "{body}"
    );
    assert!(must(&body, "decnet_connections_open{server=\"control-api\"}") >= 1.0);
    assert!(
        must(
            &body,
            "decnet_certificate_expiry_timestamp_seconds{cn=\"decnet-master\",role=\"master\"}"
        ) > 0.0
    );

    // A decky deployed: the agent's gauge follows.
    let cfg = m.dir.path().join("d.json");
    std::fs::write(
        &cfg,
        serde_json::to_vec(&serde_json::json!({"version": 1, "deckies": [
            {"name": "web", "command": ["/bin/sh", "-c", "exec sleep 600"]}]}))
        .unwrap(),
    )
    .unwrap();
    m.ok(&[
        "swarm",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    wait_metric(agent_metrics, "decnet_deckies{state=\"running\"}", |v| {
        v == 1.0
    });

    // Log lines: delivered by the forwarder, received and written by the
    // listener, credited to w1; the lag drains to 0.
    let lines: Vec<String> = (0..25).map(|i| format!("metrics line {i}")).collect();
    append_lines(&log_file, &lines);
    let file = log_file.display().to_string();
    let body = wait_metric(
        agent_metrics,
        &format!("decnet_forwarder_delivered_lines_total{{file=\"{file}\"}}"),
        |v| v >= 25.0,
    );
    assert_eq!(
        must(
            &body,
            &format!("decnet_forwarder_connected{{file=\"{file}\"}}")
        ),
        1.0
    );
    assert_eq!(
        must(
            &body,
            &format!("decnet_forwarder_lag_bytes{{file=\"{file}\"}}")
        ),
        0.0
    );
    assert_eq!(
        must(
            &body,
            &format!("decnet_forwarder_lag_seconds{{file=\"{file}\"}}")
        ),
        0.0
    );
    let body = wait_metric(
        master_metrics,
        "decnet_log_lines_written_total{cn=\"w1\"}",
        |v| v >= 25.0,
    );
    assert!(must(&body, "decnet_log_lines_received_total{cn=\"w1\"}") >= 25.0);
    assert!(must(&body, "decnet_log_bytes_written_total{cn=\"w1\"}") > 25.0 * 14.0);

    drop(master);
}

#[test]
fn only_monitor_certificates_read_metrics_over_mtls_and_revocation_ends_it() {
    let m = MasterHome::new();
    m.enroll("w1");
    m.enroll("w2");
    let mon_dir = m.dir.path().join("prom");
    let out = m.ok(&[
        "ca",
        "issue-monitor",
        "prom",
        "--out",
        mon_dir.to_str().unwrap(),
    ]);
    assert!(out.contains("monitor@prom"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(mon_dir.join("monitor.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let master = start_master(&m, free_port(), loopback(free_port()));
    let metrics = loopback(free_port());
    let state = m.dir.path().join("w1-state");
    let mut extra = vec![
        "--metrics-addr".to_string(),
        metrics.to_string(),
        "--metrics-mtls".into(),
        "--master".into(),
        master.addr.to_string(),
        "--heartbeat-interval".into(),
        "1".into(),
    ];
    if !rustix::process::geteuid().is_root() {
        extra.extend(["--decky-isolation".into(), "none".into()]);
    }
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _agent = Agent::start(&m, "w1", &state, &extra_refs);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("https://{metrics}/metrics");
    let get = |dir: &Path, kind: decnet_pki::BundleKind| {
        let c = mtls_client(dir, kind, "w1");
        rt.block_on(async {
            match c.get(&url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    Ok((status, r.text().await.unwrap_or_default()))
                }
                Err(e) => Err(e.to_string()),
            }
        })
    };
    // The monitor reads them.
    let (status, body) = get(&mon_dir, decnet_pki::BundleKind::Monitor).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("decnet_deckies"), "{body}");
    // Plain text is not served there.
    assert!(
        TcpStream::connect(metrics)
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
                let mut b = Vec::new();
                let _ = s.read_to_end(&mut b);
                Ok(!String::from_utf8_lossy(&b).contains("decnet_deckies"))
            })
            .unwrap_or(true)
    );
    // The attacker owns worker w2: its agent certificate is not a monitor.
    let (status, body) = get(&m.agent_bundle_dir("w2"), decnet_pki::BundleKind::Agent).unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("monitor"), "{body}");
    assert!(!body.contains("decnet_deckies"));
    // Nor is the master's.
    let (status, _) = get(&m.master_bundle_dir(), decnet_pki::BundleKind::Master).unwrap();
    assert_eq!(status, 403);

    // Revoked: the agent learns the new CRL from its next heartbeat answer
    // and refuses the monitor at the handshake.
    let out = m.ok(&["ca", "revoke-monitor", "prom"]);
    assert!(out.contains("revoked"), "{out}");
    let refused = wait_for(Duration::from_secs(30), || {
        get(&mon_dir, decnet_pki::BundleKind::Monitor).err()
    });
    assert!(
        refused.is_some(),
        "a revoked monitor still reads the metrics"
    );
    let audit = m.ok(&["audit", "--limit", "10"]);
    assert!(
        audit.contains("ca.issue_monitor") && audit.contains("ca.revoke_monitor"),
        "{audit}"
    );
}

#[test]
fn doctor_reports_a_silent_host_a_pin_mismatch_and_exits_accordingly() {
    let m = MasterHome::new();
    m.enroll("w1");
    // Never heard from: a warning.
    let out = m.run(&["swarm", "doctor", "--no-probe", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "warning");
    assert_eq!(v["findings"][0]["check"], "never_seen");

    // An agent answering with the certificate of another host (w2's bundle
    // behind w1's recorded endpoint): a pin mismatch / wrong identity, an error.
    m.enroll("w2");
    let state = m.dir.path().join("imp-state");
    let mut extra: Vec<&str> = vec![];
    if !rustix::process::geteuid().is_root() {
        extra.extend(["--decky-isolation", "none"]);
    }
    let imp = Agent::start_with_bundle(&m, "w1", &m.agent_bundle_dir("w2"), &state, &extra);
    let out = m.run(&["swarm", "doctor", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "error");
    let findings = v["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["host"] == "w1"
            && f["severity"] == "error"
            && (f["check"] == "wrong_identity" || f["check"] == "pin_mismatch")),
        "{v:#}"
    );
    drop(imp);
    // The text form names the problem too.
    let out = m.run(&["swarm", "doctor", "--no-probe"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("never_seen") && text.contains("w1"), "{text}");
}
