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
//! Run: `cargo run --release -p decnet-e2e --bin decnet-fleet-bench -- [HOSTS] [MAX_PARALLEL]`

use std::time::Instant;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use decnet_e2e::{MasterHome, procstat};
use decnet_fleet::{CertRecord, CertRole, FleetDb, HostRecord};
use decnet_pki::{Bundle, BundleKind, ClientAuth, HostName, LeafSpec, MaterialSource, Role};
use decnet_server::{HttpLimits, HttpService, RoleSet, Server, ServerLimits, Transport};

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
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
    let count = |kind: &str| {
        decnet_server::metrics::server_metrics()
            .handshakes
            .get_or_create(&decnet_server::metrics::HandshakeLabels {
                server: "agent".into(),
                kind: kind.into(),
            })
            .get()
    };
    (count("full"), count("resumed"))
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

fn main() {
    let hosts = arg(1, 1000) as usize;
    let parallel = arg(2, 64).to_string();
    raise_open_files();
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
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
    // The simulated agents keep serving on the runtime's threads while the
    // real CLI runs.
    let _guard = rt.enter();
    let cfg = m.dir.path().join("deploy.json");
    std::fs::write(
        &cfg,
        r#"{"version":1,"deckies":[{"name":"web","command":["/bin/true"]}]}"#,
    )
    .expect("config");
    println!("hosts {hosts}, --max-parallel {parallel}, database SQLite");
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
            "{what:<13} {secs:>6.2}s  {answered}/{hosts} answered  master CPU {cpu:.2}s ({:.2} ms per host)  handshakes {full} full, {resumed} resumed  (exit {:?})",
            cpu * 1000.0 / hosts as f64,
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
    let rss = procstat::rss_kib("self").unwrap_or(0);
    println!(
        "simulator RSS {} MiB ({:.1} KiB per simulated agent)",
        rss / 1024,
        rss as f64 / hosts as f64
    );
}
