//! `decnet-fleet-bench`: the real `decnet swarm check`, `status` and
//! `deploy` over a simulated fleet of HOSTS agents. Prints figures; it is a
//! benchmark, not a test.
//!
//! The simulator is this process: HOSTS agent identities (real certificates
//! from the master's CA, one shared key pair to keep it light), each served
//! on a loopback port of its own by the production server runner
//! (`decnet-server`: mTLS, the role middleware admitting only the master),
//! answering the agent API's `/health`, `/status`, `/deploy` and
//! `/operations/{id}` with canned but well-formed documents. The master
//! side is the real `decnet` binary against the real fleet database, so
//! what is measured is the master's fan-out: `--max-parallel` dials, a full
//! mTLS handshake per host (the master verifies the host's role and pins),
//! one transaction for the results. It prints each command's wall time and
//! the `decnet` process's own CPU time (the simulator's does not count).
//!
//! With `--real-agents` the fleet is HOSTS real `decnet-agent serve`
//! processes instead (the release binary, each with a key and certificate
//! of its own from an in-process enrollment, a state dir and a decky uid
//! range of its own, the process driver); `swarm deploy` then really starts
//! one decky (`sleep`) per host, and every process is stopped at the end.
//!
//! With `--through-daemon` the commands go through a context to a real
//! `decnet master serve` (its fleet API and its warm worker pool) as an
//! admin operator: `swarm check` twice (the second resumes the TLS sessions
//! the daemon kept), `swarm status` and `swarm deploy` (a job of the
//! daemon, followed by the CLI); the CPU shown is the daemon's.
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-fleet-bench -- [HOSTS] [MAX_PARALLEL] [--real-agents] [--through-daemon]`

use std::time::Instant;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use decnet_e2e::{Daemon, MasterHome, bin, enroll_many, kill_deckies, procstat};
use decnet_fleet::{CertRecord, CertRole, FleetDb, HostRecord};
use decnet_pki::{Bundle, BundleKind, ClientAuth, HostName, LeafSpec, MaterialSource, Role};
use decnet_server::{HttpLimits, HttpService, RoleSet, Server, ServerLimits, Transport};

/// The `i`th positional argument (flags are not counted), or `default`.
fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .filter(|a| !a.starts_with("--"))
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// The canned agent API of one simulated host.
fn agent_router(host: String) -> Router {
    let h1 = host.clone();
    let h2 = host.clone();
    Router::new()
        .route(
            "/health",
            get(move || async move {
                axum::Json(serde_json::json!({
                    "status": "ok", "role": "agent", "host": h1, "version": "sim",
                    "driver": "process", "deckies": {}
                }))
            }),
        )
        .route(
            "/status",
            get(move || async move {
                axum::Json(serde_json::json!({
                    "host": h2, "version": "sim", "driver": "process",
                    "deckies": [{"name": "web", "state": "running", "error": null,
                                 "services": ["http"], "pid": 4242, "restarts": 0,
                                 "updated_at": 0, "observed": null}]
                }))
            }),
        )
        .route(
            "/deploy",
            post(|| async {
                (
                    axum::http::StatusCode::ACCEPTED,
                    axum::Json(serde_json::json!({
                        "operation_id": "0123456789ab", "status_url": "/operations/0123456789ab"
                    })),
                )
            }),
        )
        .route(
            "/operations/{id}",
            get(|Path(id): Path<String>| async move {
                axum::Json(serde_json::json!({
                    "id": id, "kind": "deploy", "done": true, "started_at": 0, "finished_at": 0,
                    "deckies": [{"name": "web", "state": "running", "error": null,
                                 "services": ["http"], "pid": 4242, "restarts": 0,
                                 "updated_at": 0, "observed": null}]
                }))
            }),
        )
}

/// Handshakes the simulated agents completed so far: (full, resumed).
fn agent_handshakes() -> (u64, u64) {
    decnet_server::metrics::server_metrics().handshake_counts("agent")
}

fn raise_open_files() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
}

/// Run `decnet ARGS`: wall seconds, the command's CPU seconds, its output.
fn run_timed(m: &MasterHome, args: &[&str]) -> (f64, f64, std::process::Output) {
    let cpu = procstat::children_cpu_seconds();
    let t = Instant::now();
    let out = m.run(args);
    (
        t.elapsed().as_secs_f64(),
        procstat::children_cpu_seconds() - cpu,
        out,
    )
}

/// Serve `hosts` simulated agents on the runtime `rt` and enroll them in
/// `m`'s fleet database.
fn simulate(m: &MasterHome, rt: &tokio::runtime::Runtime, hosts: usize) {
    let started = Instant::now();
    let layout = decnet_pki::CaLayout::new(m.home().join("ca"));
    let ca = decnet_pki::CertificateAuthority::load(&layout).expect("CA");
    let (key_pem, csr_pem) = decnet_pki::ca::generate_csr("bench").expect("key");
    let url = decnet_fleet::default_url(&m.home());
    rt.block_on(async {
        let db = FleetDb::connect(&url).await.expect("fleet database");
        for i in 0..hosts {
            let name = format!("sim-{i:05}");
            let role = Role::Agent(HostName::new(&name).expect("name"));
            let mut leaf = ca
                .sign_csr(&LeafSpec::for_role(&role, &["127.0.0.1".into()]), &csr_pem)
                .expect("sign");
            leaf.key_pem = key_pem.clone();
            let bundle =
                Bundle::from_issued(BundleKind::Agent, &leaf, ca.cert_pem()).expect("bundle");
            let server = Server::bind(
                "agent",
                "127.0.0.1:0".parse().expect("addr"),
                Transport::Tls {
                    material: MaterialSource::from_parts(bundle, None).expect("material"),
                    auth: ClientAuth::Required,
                },
                ServerLimits::default(),
            )
            .await
            .expect("bind");
            let port = server.local_addr().port();
            let app = HttpService::new(
                agent_router(name.clone()),
                RoleSet::master_only(),
                HttpLimits::default(),
            );
            tokio::spawn(server.serve(app, std::future::pending()));
            let mut host = HostRecord::new(&name, "127.0.0.1", port, 9);
            host.agent_fingerprint = Some(leaf.fingerprint.to_hex());
            db.record_enrollment(&host, &[CertRecord::of_leaf(&leaf, &name, CertRole::Agent)])
                .await
                .expect("record");
        }
        db.close().await;
    });
    eprintln!(
        "{hosts} simulated agents issued, enrolled and serving in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// `hosts` real agents: enrolled in `m`'s fleet (keys of their own), each a
/// `decnet-agent serve` process on a loopback port of its own, recorded as
/// the host's endpoint. Stopped (with their deckies) when dropped.
struct RealAgents {
    daemons: Vec<Daemon>,
    state_dirs: Vec<std::path::PathBuf>,
}

impl RealAgents {
    fn start(m: &MasterHome, rt: &tokio::runtime::Runtime, hosts: usize) -> RealAgents {
        let started = Instant::now();
        let bundles = enroll_many(m, "real", hosts);
        eprintln!(
            "{hosts} hosts enrolled in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let mut agents = RealAgents {
            daemons: Vec::with_capacity(hosts),
            state_dirs: Vec::with_capacity(hosts),
        };
        let mut ports = Vec::with_capacity(hosts);
        for (i, bundle) in bundles.iter().enumerate() {
            let host = bundle.identity.cn.clone();
            let state_dir = m.dir.path().join(format!("state-{host}"));
            // A uid range of its own per agent, clear of the tests' ranges.
            let first = 2_000_000_000u64 + i as u64 * 64;
            let mut cmd = std::process::Command::new(bin("decnet-agent"));
            cmd.args(["serve", "--host", "127.0.0.1", "--port", "0", "--no-master"])
                .args(["--stop-grace", "1"])
                .arg("--decky-ids")
                .arg(format!("{first}-{}", first + 63))
                .arg("--bundle-dir")
                .arg(m.agent_bundle_dir(&host))
                .arg("--state-dir")
                .arg(&state_dir)
                .env("DECNET_LOG", "warn");
            let daemon = Daemon::start(cmd, state_dir.with_extension("log"));
            ports.push((host, daemon.port()));
            agents.daemons.push(daemon);
            agents.state_dirs.push(state_dir);
        }
        let url = decnet_fleet::default_url(&m.home());
        rt.block_on(async {
            let db = FleetDb::connect(&url).await.expect("fleet database");
            for (host, port) in &ports {
                db.update_endpoint(host, None, Some(*port), None)
                    .await
                    .expect("record the agent's port");
            }
            db.close().await;
        });
        eprintln!(
            "{hosts} real agents started in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        agents
    }

    /// The agents' summed RSS (KiB).
    fn rss_kib(&self) -> u64 {
        self.daemons
            .iter()
            .filter_map(|d| procstat::rss_kib(&d.child.id().to_string()))
            .sum()
    }
}

impl Drop for RealAgents {
    fn drop(&mut self) {
        // SIGTERM every agent first (they stop in parallel), then reap.
        for d in &self.daemons {
            decnet_e2e::signal(d.child.id(), rustix::process::Signal::TERM);
        }
        for d in &mut self.daemons {
            d.stop();
        }
        for dir in &self.state_dirs {
            kill_deckies(dir);
        }
    }
}

fn main() {
    let hosts = arg(1, 1000) as usize;
    let parallel = arg(2, 64).to_string();
    let real = std::env::args().any(|a| a == "--real-agents");
    raise_open_files();
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let agents = if real {
        Some(RealAgents::start(&m, &rt, hosts))
    } else {
        // The simulated agents keep serving on the runtime's threads while
        // the real CLI runs.
        simulate(&m, &rt, hosts);
        None
    };
    let _guard = rt.enter();
    if std::env::args().any(|a| a == "--through-daemon") {
        through_daemon(&m, hosts, &parallel);
        drop(agents);
        return;
    }
    let cfg = m.dir.path().join("deploy.json");
    std::fs::write(
        &cfg,
        r#"{"version":1,"deckies":[{"name":"web","command":["/bin/sleep","600"]}]}"#,
    )
    .expect("config");
    println!(
        "hosts {hosts} ({}), --max-parallel {parallel}, database SQLite",
        if real {
            "real decnet-agent processes"
        } else {
            "simulated in this process"
        }
    );
    for (what, args) in [
        (
            "swarm check",
            vec!["swarm", "check", "--json", "--max-parallel", &parallel],
        ),
        (
            "swarm status",
            vec!["swarm", "status", "--json", "--max-parallel", &parallel],
        ),
        (
            "swarm deploy",
            vec![
                "swarm",
                "deploy",
                "--config",
                cfg.to_str().expect("path"),
                "--json",
                "--max-parallel",
                &parallel,
            ],
        ),
    ] {
        let (full, resumed) = agent_handshakes();
        let (secs, cpu, out) = run_timed(&m, &args);
        let (full, resumed) = {
            let (f, r) = agent_handshakes();
            (f - full, r - resumed)
        };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let rows = v.as_array().cloned().unwrap_or_default();
        let answered = rows
            .iter()
            .filter(|r| r["reachable"] == true || r["operation_id"].is_string())
            .count();
        println!(
            "{what:<13} {secs:>6.2}s  {answered}/{hosts} answered  master CPU {cpu:.2}s ({:.2} ms per host){}  (exit {:?})",
            cpu * 1000.0 / hosts as f64,
            if real {
                String::new()
            } else {
                format!("  handshakes {full} full, {resumed} resumed")
            },
            out.status.code()
        );
        if answered < hosts {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = rows
                .iter()
                .find(|r| r["error"].is_string())
                .map(|r| r["error"].to_string())
                .unwrap_or_default();
            eprintln!(
                "  first error: {first} {}",
                err.lines().next().unwrap_or("")
            );
        }
    }
    match &agents {
        Some(a) => {
            let rss = a.rss_kib();
            println!(
                "agents' RSS {} MiB ({:.1} MiB per agent)",
                rss / 1024,
                rss as f64 / 1024.0 / hosts as f64
            );
        }
        None => {
            let rss = procstat::rss_kib("self").unwrap_or(0);
            println!(
                "simulator RSS {} MiB ({:.1} KiB per simulated agent)",
                rss / 1024,
                rss as f64 / hosts as f64
            );
        }
    }
    drop(agents);
}

/// The fleet commands through a context to a real `decnet master serve`:
/// what an operator away from the master host waits for, and the daemon's
/// CPU per host.
fn through_daemon(m: &MasterHome, hosts: usize, parallel: &str) {
    let daemon = m.serve(&["--no-listener"]);
    let t = m.ok(&["operator", "add", "bench", "--role", "admin", "--json"]);
    let token = serde_json::from_str::<serde_json::Value>(&t).expect("token")["token"]
        .as_str()
        .expect("token")
        .to_string();
    let config = m.dir.path().join("operator-config");
    let decnet = |args: &[&str]| {
        std::process::Command::new(bin("decnet"))
            .args(args)
            .env("XDG_CONFIG_HOME", &config)
            .env("DECNET_HOME", m.dir.path().join("not-the-master"))
            .env_remove("DECNET_CONTEXT")
            .output()
            .expect("run decnet")
    };
    let out = decnet(&[
        "login",
        "--master",
        &daemon.addr.to_string(),
        "--token",
        &token,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "hosts {hosts} (simulated in this process), --max-parallel {parallel}, through the fleet API of a master daemon (SQLite)"
    );
    let cfg = m.dir.path().join("deploy.json");
    std::fs::write(
        &cfg,
        r#"{"version":1,"deckies":[{"name":"web","command":["/bin/sleep","600"]}]}"#,
    )
    .expect("config");
    let cfg = cfg.to_str().expect("path");
    let commands: [(&str, Vec<&str>); 4] = [
        (
            "check (first)",
            vec!["swarm", "check", "--json", "--max-parallel", parallel],
        ),
        (
            "check (again)",
            vec!["swarm", "check", "--json", "--max-parallel", parallel],
        ),
        (
            "status",
            vec!["swarm", "status", "--json", "--max-parallel", parallel],
        ),
        // A job of the daemon: the CLI follows its progress, then prints
        // the per-host results.
        (
            "deploy (job)",
            vec![
                "swarm",
                "deploy",
                "--config",
                cfg,
                "--json",
                "--max-parallel",
                parallel,
            ],
        ),
    ];
    for (what, args) in commands {
        let (full, resumed) = agent_handshakes();
        let cpu = procstat::cpu_seconds(daemon.child.id());
        let started = Instant::now();
        let out = decnet(&args);
        let secs = started.elapsed().as_secs_f64();
        let cpu = procstat::cpu_seconds(daemon.child.id()) - cpu;
        let (f, r) = agent_handshakes();
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let answered = rows
            .iter()
            .filter(|r| r["reachable"] == true || r["operation_id"].is_string())
            .count();
        println!(
            "{what:<14} {secs:>6.2}s  {answered}/{hosts} answered  daemon CPU {cpu:.2}s ({:.2} ms per host)  handshakes {} full, {} resumed  (exit {:?})",
            cpu * 1000.0 / hosts as f64,
            f - full,
            r - resumed,
            out.status.code()
        );
    }
    let rss = procstat::rss_kib(&daemon.child.id().to_string()).unwrap_or(0);
    println!("daemon RSS {} MiB", rss / 1024);
}
