//! `decnet demo`: a whole local fleet on loopback, driven step by step with
//! the real daemons and the same code paths as the operator commands, each
//! step verified. Throw-away CA and database in a temp dir; everything is
//! cleaned up on exit or Ctrl-C unless `--keep`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use decnet_pki::{Bundle, BundleKind, CaLayout, CertificateAuthority, LeafSpec, Role};
use decnet_proc::{ProcessHandle, Signal, signal};

use crate::home::MasterHome;
use crate::release;
use crate::rollout::{self, RolloutPlan};
use decnet_fleet::FleetDb;
use decnet_fleet::enrollment::{self, EnrollRequest};

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Number of workers.
    pub workers: usize,
    /// Leave everything running at the end.
    pub keep: bool,
    /// Where to put the demo (default: a new temp dir).
    pub dir: Option<PathBuf>,
}

/// Processes the demo started; stopped (and their deckies killed) on drop.
struct Fleet {
    children: Vec<(String, Child)>,
    installs: Vec<PathBuf>,
    states: Vec<PathBuf>,
    keep: bool,
}

impl Fleet {
    fn stop_all(&mut self) {
        for (_, c) in &self.children {
            signal(c.id(), Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, c) in &mut self.children {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Agents were spawned by the updaters, deckies by the agents: both
        // outlive their parents by design.
        for i in &self.installs {
            if let Some(pid) = std::fs::read_to_string(i.join("agent.pid"))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
            {
                signal(pid, Signal::TERM);
                std::thread::sleep(Duration::from_millis(300));
                signal(pid, Signal::KILL);
            }
        }
        for s in &self.states {
            if let Ok(text) = std::fs::read_to_string(s.join("decnet-state.json"))
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(m) = v["deckies"].as_object()
            {
                for d in m.values() {
                    // The decky's shepherd sweeps the rest once it ends.
                    if let (Some(pid), Some(t)) = (d["pid"].as_u64(), d["pid_start"].as_u64())
                        && let Some(h) = ProcessHandle::open(pid as u32, t)
                    {
                        let _ = h.signal_group(Signal::KILL);
                    }
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if !self.keep {
            self.stop_all();
        }
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the decnet binary")?;
    let p = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    if !p.exists() {
        return Err(crate::usage::UsageError(format!(
            "{name} not found beside {} — build all binaries first: `cargo build --release --bins` (or run ./scripts/demo.sh)",
            exe.display()
        ))
        .into());
    }
    Ok(p)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Spawn `cmd`, wait for its `… listening on ADDR` line.
fn spawn_listening(
    name: &str,
    mut cmd: Command,
    log: &Path,
) -> anyhow::Result<(Child, SocketAddr)> {
    let err = std::fs::File::create(log)?;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .stdin(Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if let Some(a) = line
                .trim()
                .rsplit("listening on ")
                .next()
                .and_then(|a| a.parse().ok())
            {
                let _ = tx.send(a);
            }
            line.clear();
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => Ok((child, addr)),
        Err(_) => {
            let _ = child.kill();
            bail!(
                "{name} did not start; its log ({}):\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            )
        }
    }
}

/// `text` wrapped in the SGR `code` when stdout is a terminal that may
/// take colour (never into a file, a pipe, or with `NO_COLOR`).
fn paint(code: &str, text: &str) -> String {
    if decnet_telemetry::colour_allowed_on(&std::io::stdout()) {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn step(n: usize, title: &str) {
    println!("\n{}", paint("1", &format!("== step {n}: {title}")));
}

fn ok(msg: &str) {
    println!("{} {msg}", paint("32", "✔"));
}

async fn fleet_table(db: &FleetDb) -> anyhow::Result<()> {
    print!(
        "{}",
        crate::table::fleet_table(&crate::cli::host_views(db).await?, decnet_fleet::unix_now())
    );
    Ok(())
}

/// Run the demo. Returns an error unless every step was verified.
pub async fn run(opts: &DemoOptions) -> anyhow::Result<()> {
    let agent_bin = sibling("decnet-agent")?;
    let updater_bin = sibling("decnet-updater")?;
    let decnet_bin = std::env::current_exe()?;
    let tmp;
    let root = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("decnet-demo-").tempdir()?;
            if opts.keep {
                tmp.keep()
            } else {
                tmp.path().to_path_buf()
            }
        }
    };
    let home_dir = root.join("master");
    let home = MasterHome::resolve(Some(home_dir.clone()), None, None);
    let layout: CaLayout = home.ca_layout();
    let mut fleet = Fleet {
        children: Vec::new(),
        installs: Vec::new(),
        states: Vec::new(),
        keep: opts.keep,
    };
    let actor = "demo";
    println!(
        "decnet demo: {} workers on loopback, everything under {}",
        opts.workers,
        root.display()
    );

    step(1, "throw-away CA, master certificate and fleet database");
    let ca = CertificateAuthority::generate()?;
    ca.save(&layout)?;
    let leaf = ca.issue(&LeafSpec::for_role(&Role::Master, &["127.0.0.1".into()]))?;
    Bundle::from_issued(BundleKind::Master, &leaf, ca.cert_pem())?.write(&layout.master_dir())?;
    let db = FleetDb::connect(&home.database_url).await?;
    ok(&format!(
        "CA {} (fingerprint {})",
        layout.root().display(),
        ca.fingerprint().short()
    ));

    step(
        2,
        "enroll the workers (agent + updater certificates, the master's address recorded)",
    );
    let names: Vec<String> = (1..=opts.workers).map(|i| format!("worker-{i}")).collect();
    // The control API's address, recorded in every bundle: the workers
    // heartbeat, renew and fetch revocations there.
    let api_port = free_port()?;
    let listener_port = free_port()?;
    for n in &names {
        let out = enrollment::enroll(
            &ca,
            &layout,
            &db,
            &EnrollRequest {
                host: n.clone(),
                address: Some("127.0.0.1".into()),
                updater: true,
                out_dir: Some(root.join(n).join("home")),
                master: Some(format!("127.0.0.1:{api_port}")),
                agent_port: Some(0),
                updater_port: Some(0),
                ..EnrollRequest::default()
            },
        )
        .await?;
        ok(&format!(
            "{n}: agent {}",
            out.host.agent_fingerprint.as_deref().unwrap_or("-")
        ));
    }
    fleet_table(&db).await?;

    step(3, "start the master: control API and log listener");
    let logs = root.join("logs");
    let mut cmd = Command::new(&decnet_bin);
    cmd.args(["master", "serve", "--host", "127.0.0.1"])
        .args(["--port", &api_port.to_string(), "--api-port", "0"])
        .args(["--console-port", "0"])
        .args(["--listener-port", &listener_port.to_string()])
        .arg("--log-path")
        .arg(logs.join("fleet.log"))
        .arg("--json-path")
        .arg(logs.join("fleet.json"))
        .env("DECNET_HOME", &home_dir)
        .env("DECNET_DATABASE_URL", &home.database_url);
    let (child, api_addr) = spawn_listening("master", cmd, &root.join("master.log"))?;
    fleet.children.push(("master".into(), child));
    let listener_addr = SocketAddr::from(([127, 0, 0, 1], listener_port));
    ok(&format!(
        "control API on {api_addr} (heartbeats, renewals, revocations); listener on {listener_addr} (mTLS, agents only)"
    ));

    step(
        4,
        "start an updater and a forwarder per worker; install release v1 (starts the agents)",
    );
    let v1 = root.join("releases/v1");
    let v2 = root.join("releases/v2");
    let broken = root.join("releases/broken");
    for d in [&v1, &v2] {
        std::fs::create_dir_all(d.join("bin"))?;
        std::fs::copy(&agent_bin, d.join("bin/decnet-agent"))?;
    }
    std::fs::create_dir_all(broken.join("bin"))?;
    std::fs::write(
        broken.join("bin/decnet-agent"),
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'decnet-agent broken'; exit 0; fi\necho 'this build crashes at start' >&2\nexit 70\n",
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            broken.join("bin/decnet-agent"),
            std::fs::Permissions::from_mode(0o755),
        )?;
    }
    // Deckies run under uids of their own when the demo runs as root;
    // otherwise (a developer's account) as the agent's user, said loudly.
    let isolation = if decnet_proc::current_uid() == 0 {
        "uid"
    } else {
        println!(
            "  note: not root, so deckies run as your user (--decky-isolation none); run as root to see them contained"
        );
        "none"
    };
    for (i, n) in names.iter().enumerate() {
        let node = root.join(n);
        let whome = node.join("home");
        // One id range per worker: they share this machine.
        let first = 2_000_000 + 1000 * i as u32;
        let decky_ids = format!("{first}-{}", first + 999);
        let install = node.join("opt");
        let state = node.join("agent-state");
        std::fs::create_dir_all(&install)?;
        let agent_port = free_port()?;
        let updater_port = free_port()?;
        let mut cmd = Command::new(&updater_bin);
        cmd.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &updater_port.to_string(),
            "--agent-control",
            "spawn",
        ])
        .arg("--bundle-dir")
        .arg(whome.join("updater"))
        .arg("--agent-bundle-dir")
        .arg(whome.join("agent"))
        .arg("--install-dir")
        .arg(&install)
        .args([
            "--agent-port",
            &agent_port.to_string(),
            "--agent-host",
            "127.0.0.1",
        ])
        .arg(format!("--agent-arg=--state-dir={}", state.display()))
        .args(["--agent-arg=--stop-grace", "--agent-arg=2"])
        .arg(format!("--agent-arg=--decky-isolation={isolation}"))
        .arg(format!("--agent-arg=--decky-ids={decky_ids}"))
        .args([
            "--probe-attempts",
            "12",
            "--probe-interval-ms",
            "250",
            "--stop-grace",
            "3",
        ]);
        let (child, _) = spawn_listening("updater", cmd, &node.join("updater.log"))?;
        fleet.children.push((format!("{n} updater"), child));
        fleet.installs.push(install);
        fleet.states.push(state.clone());
        db.update_endpoint(n, None, Some(agent_port), Some(updater_port))
            .await?;
        // The forwarder ships the deckies' log file once it exists.
        let mut cmd = Command::new(&agent_bin);
        cmd.args([
            "forward",
            "--master",
            &listener_addr.to_string(),
            "--log-file",
        ])
        .arg(state.join("logs/ssh-trap.log"))
        .arg("--bundle-dir")
        .arg(whome.join("agent"))
        .arg("--state-dir")
        .arg(node.join("forwarder"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            node.join("forwarder.log"),
        )?));
        fleet.children.push((
            format!("{n} forwarder"),
            cmd.spawn().context("starting a forwarder")?,
        ));
    }
    let rel_v1 = release::pack(
        &v1,
        &root.join("releases/v1.tar.gz"),
        "v1",
        None,
        &release::Signing::unsigned(),
    )?;
    let plan = RolloutPlan {
        hosts: vec![],
        allow_downgrade: false,
        max_parallel: 4,
        canary: 0,
        include_self: false,
        continue_on_error: false,
    };
    let results = rollout::rollout(&db, &layout, actor, &rel_v1, &plan, true).await?;
    ensure!(
        results
            .iter()
            .all(|r| r.outcome == decnet_api::UpdateOutcome::Updated),
        "release v1 did not install everywhere"
    );
    ensure!(
        crate::fleet_ops::check(&db, &layout, false, crate::fleet_ops::DEFAULT_PARALLEL).await?,
        "not every agent answers after v1"
    );
    ok("every worker runs release v1; every agent answers over mTLS");
    fleet_table(&db).await?;

    step(5, "deploy a process decky on each worker");
    let config = root.join("deployment.json");
    std::fs::write(
        &config,
        serde_json::to_vec_pretty(&serde_json::json!({
            "version": 1,
            "deckies": [{
                "name": "ssh-trap",
                "services": ["ssh"],
                "command": ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo \"ssh-trap: probe $i from 203.0.113.$i\"; sleep 1; done"],
            }]
        }))?,
    )?;
    ensure!(
        crate::fleet_ops::deploy(
            &db,
            &layout,
            actor,
            &config,
            &[],
            crate::fleet_ops::DeployOptions {
                wait: true,
                json: false,
                parallel: crate::fleet_ops::DEFAULT_PARALLEL,
            },
        )
        .await?,
        "the deploy did not succeed everywhere"
    );
    ensure!(
        crate::fleet_ops::status(
            &db,
            &layout,
            None,
            false,
            crate::fleet_ops::DEFAULT_PARALLEL
        )
        .await?,
        "status failed"
    );
    ok("ssh-trap runs on every worker");

    step(6, "push release v2 to every worker");
    let rel_v2 = release::pack(
        &v2,
        &root.join("releases/v2.tar.gz"),
        "v2",
        None,
        &release::Signing::unsigned(),
    )?;
    let results = rollout::rollout(&db, &layout, actor, &rel_v2, &plan, true).await?;
    ensure!(
        results
            .iter()
            .all(|r| r.outcome == decnet_api::UpdateOutcome::Updated
                && r.release.as_deref() == Some("v2")),
        "v2 did not go live everywhere"
    );
    ok("v2 is live on every worker");

    step(
        7,
        "push a broken release to one canary: automatic revert, rollout halted",
    );
    let rel_bad = release::pack(
        &broken,
        &root.join("releases/broken.tar.gz"),
        "broken",
        Some("3.0.0"),
        &release::Signing::unsigned(),
    )?;
    let canary_plan = RolloutPlan {
        canary: 1,
        ..plan.clone()
    };
    let results = rollout::rollout(&db, &layout, actor, &rel_bad, &canary_plan, true).await?;
    let canary = &results[0];
    ensure!(
        canary.outcome == decnet_api::UpdateOutcome::RolledBack,
        "the canary was not rolled back: {canary:?}"
    );
    ensure!(
        results
            .iter()
            .skip(1)
            .all(|r| r.outcome == decnet_api::UpdateOutcome::Skipped),
        "the rollout did not halt after the canary failed"
    );
    ensure!(
        crate::fleet_ops::check(&db, &layout, false, crate::fleet_ops::DEFAULT_PARALLEL).await?,
        "an agent does not answer after the revert"
    );
    let pool = crate::fleet_ops::worker_pool(&layout)?;
    for h in db.hosts().await? {
        let active = rollout::updater_client(&pool, &h)?.releases().await?;
        ensure!(
            active.first().map(|r| r.sha.as_str()) == Some("v2"),
            "{} is not on v2 after the revert",
            h.name
        );
    }
    ok(&format!(
        "{} reverted to v2 by itself; the other workers were never touched",
        canary.host
    ));

    step(
        8,
        "log lines from every worker, credited to its certificate CN",
    );
    let json_log = logs.join("fleet.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let credited = loop {
        let text = std::fs::read_to_string(&json_log).unwrap_or_default();
        let mut seen: std::collections::BTreeMap<String, String> = Default::default();
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && let (Some(cn), Some(msg)) = (v["peer_cn"].as_str(), v["msg"].as_str())
            {
                seen.insert(cn.to_string(), msg.to_string());
            }
        }
        if names.iter().all(|n| seen.contains_key(n)) {
            break seen;
        }
        if Instant::now() > deadline {
            bail!(
                "log lines did not arrive from every worker (have {:?})",
                seen.keys().collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (cn, msg) in &credited {
        println!("  {cn:<12} {msg}");
    }
    ok(&format!(
        "lines from all {} workers arrived in {}",
        names.len(),
        json_log.display()
    ));
    fleet_table(&db).await?;

    println!("\n{}", paint("1;32", "demo complete: every step verified"));
    if opts.keep {
        fleet.keep = true;
        println!(
            "\nLeft running (stop the processes with `pkill -f {}`):",
            root.display()
        );
        println!("  export DECNET_HOME={}", home_dir.display());
        println!("  decnet swarm list; decnet swarm status; decnet swarm check");
        println!("  tail -f {}", logs.join("fleet.json").display());
    }
    db.close().await;
    Ok(())
}
