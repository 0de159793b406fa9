//! What operators see of every daemon: logs without terminal escape codes
//! when stderr is not a terminal, JSON logs on request, and a prompt stop
//! on SIGTERM when idle.

use std::time::{Duration, Instant};

use decnet_e2e::{Agent, Daemon, Listener, MasterHome, UpdaterFixture};

fn stop_time(d: &mut Daemon) -> Duration {
    let t = Instant::now();
    assert_eq!(d.stop(), Some(0), "clean exit; log:\n{}", d.log_text());
    t.elapsed()
}

#[test]
fn idle_daemons_stop_promptly_and_log_without_escape_codes() {
    let m = MasterHome::new();
    m.enroll("hy1");
    let mut master = m.serve(&["--no-listener"]);
    let mut agent = Agent::start(
        &m,
        "hy1",
        &m.dir.path().join("hy1-state"),
        &[
            "--master",
            &master.addr.to_string(),
            "--heartbeat-interval",
            "1",
        ],
    );
    let mut listener = Listener::start(&m, 0);
    let mut updater = UpdaterFixture::start(&m, "hy1", &[]);
    let log_file = m.dir.path().join("hy1-app.log");
    decnet_e2e::append_lines(&log_file, &["one line".to_string()]);
    // With a metrics endpoint: a second task awaiting the same signal.
    let mut forwarder = {
        let mut cmd = std::process::Command::new(decnet_e2e::bin("decnet-agent"));
        cmd.args([
            "forward",
            "--master",
            &listener.daemon.addr.to_string(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-file",
        ])
        .arg(&log_file)
        .arg("--bundle-dir")
        .arg(m.agent_bundle_dir("hy1"))
        .arg("--state-dir")
        .arg(m.dir.path().join("hy1-fwd"))
        .env("DECNET_LOG", "info");
        Daemon::spawn(cmd, m.dir.path().join("hy1-fwd.log"))
    };
    // Something happened and was logged (the forwarder's line delivered).
    listener.wait_lines(1, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    for (name, d) in [
        ("forwarder", &mut forwarder),
        ("agent", &mut agent.daemon),
        ("updater", &mut updater.daemon),
        ("listener", &mut listener.daemon),
        ("master", &mut master),
    ] {
        let took = stop_time(d);
        let log = d.log_text();
        assert!(!log.is_empty(), "{name} logged nothing");
        assert!(!log.contains('\u{1b}'), "{name} wrote escape codes:\n{log}");
        assert!(
            took < Duration::from_millis(500),
            "{name} took {took:?} to stop"
        );
        assert_eq!(
            log.matches("shutdown requested").count(),
            1,
            "{name} says it was asked to stop, once:\n{log}"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let m = MasterHome::new();
    m.enroll("hy2");
    let mut agent = Agent::start(
        &m,
        "hy2",
        &m.dir.path().join("hy2-state"),
        &["--log-format", "json"],
    );
    agent.daemon.stop();
    let log = agent.daemon.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
}

/// At their default log level (no `DECNET_LOG`), the master and the
/// listener log a refused handshake, as the agent and updater do.
#[test]
fn master_and_listener_log_refused_handshakes_by_default() {
    use std::io::{Read, Write};
    let m = MasterHome::new();
    let started = |args: &[&str], name: &str| {
        let mut cmd = std::process::Command::new(decnet_e2e::bin("decnet"));
        cmd.args(args)
            .env("DECNET_HOME", m.home())
            .env_remove("DECNET_LOG")
            .env_remove("DECNET_DATABASE_URL");
        Daemon::start(cmd, m.dir.path().join(format!("{name}.log")))
    };
    let raw = m.dir.path().join("fleet.log");
    let json = m.dir.path().join("fleet.json");
    let mut daemons = [
        (
            "master serve",
            started(
                &[
                    "master",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--api-port",
                    "0",
                    "--console-port",
                    "0",
                    "--no-listener",
                ],
                "master",
            ),
        ),
        (
            "listener",
            started(
                &[
                    "listener",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--log-path",
                    raw.to_str().unwrap(),
                    "--json-path",
                    json.to_str().unwrap(),
                ],
                "listener",
            ),
        ),
    ];
    for (name, d) in &mut daemons {
        // Not TLS at all: the handshake fails.
        let mut s = std::net::TcpStream::connect(d.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let _ = s.read_to_end(&mut Vec::new());
        let logged = decnet_e2e::wait_for(Duration::from_secs(10), || {
            d.log_text().contains("TLS handshake refused").then_some(())
        });
        assert!(
            logged.is_some(),
            "{name} did not log the refused handshake at its default level:\n{}",
            d.log_text()
        );
        d.stop();
    }
}

/// `master serve` runs the log listener itself: started beside a
/// separate listener on the same port, each says which other one holds it.
#[test]
fn a_listener_port_taken_by_the_other_listener_is_named() {
    let m = MasterHome::new();
    let listener = Listener::start(&m, 0);
    let port = listener.daemon.addr.port().to_string();
    let out = m.run(&[
        "master",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-api",
        "--listener-port",
        &port,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--no-listener"), "{err}");
    assert!(err.contains("decnet-listener.service"), "{err}");

    drop(listener);
    let port = decnet_e2e::free_port().to_string();
    let _master = m.serve(&["--listener-port", &port]);
    let out = m.run(&["listener", "--host", "127.0.0.1", "--port", &port]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("decnet master serve"), "{err}");
}

/// `--help` names the ports the flags default to: the listener's 6514 for
/// forwarding, the control API's 8770 for joins and heartbeats — never the
/// agent's own 8765.
#[test]
fn help_texts_name_the_ports_their_flags_default_to() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(decnet_e2e::bin("decnet-agent"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let forward = help(&["forward"]);
    assert!(forward.contains("HOST[:6514]"), "{forward}");
    let serve = help(&["serve"]);
    assert!(
        serve.contains("HOST[:6514]") && serve.contains("HOST[:8770]"),
        "{serve}"
    );
    let join = help(&["join"]);
    assert!(join.contains("HOST[:8770]"), "{join}");
    for text in [&forward, &serve, &join] {
        assert!(!text.contains("HOST[:8765]"), "{text}");
    }
}
