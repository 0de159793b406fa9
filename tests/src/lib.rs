//! Helpers of the end-to-end tests: locate (and build once) the real
//! binaries, run the `decnet` CLI in a temp home, start daemons on loopback
//! port 0 and read back their bound address, and clean every process up.

pub mod hostile;
pub mod skip;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Directory of the workspace's built binaries (`DECNET_BIN_DIR`, or the
/// target dir this test binary lives in), building them once if needed.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("DECNET_BIN_DIR") {
            return PathBuf::from(d);
        }
        // target/<profile>/deps/<test-binary>, or target/<profile>/<bin>
        let exe = std::env::current_exe().expect("current exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace")
            .to_path_buf();
        let profile_release = dir.ends_with("release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&workspace).args([
            "build",
            "--quiet",
            "-p",
            "decnet-master",
            "-p",
            "decnet-agent",
            "-p",
            "decnet-updater",
        ]);
        if profile_release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the decnet binaries failed");
        dir
    })
}

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

/// The test PostgreSQL (`DECNET_TEST_POSTGRES_URL`, which `scripts/test.sh`
/// sets up).
pub mod postgres {
    /// A fresh database named `<prefix>_<random>` on the test PostgreSQL,
    /// or `None` (said loudly: [`crate::skip::missing`]).
    pub fn fresh_database(prefix: &str) -> Option<String> {
        let Ok(admin_url) = std::env::var("DECNET_TEST_POSTGRES_URL") else {
            crate::skip::missing(&format!(
                "\n!!! DECNET_TEST_POSTGRES_URL not set: {prefix} on PostgreSQL was NOT tested (scripts/test.sh sets it)\n"
            ));
            return None;
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let name = format!("{prefix}_{}", decnet_pki::random_hex(6));
        rt.block_on(async {
            sqlx::any::install_default_drivers();
            let admin = sqlx::AnyPool::connect(&admin_url)
                .await
                .expect("connect to the test PostgreSQL");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        });
        let (base, query) = admin_url
            .split_once('?')
            .map(|(b, q)| (b.to_string(), format!("?{q}")))
            .unwrap_or((admin_url.clone(), String::new()));
        let base = &base[..base.rfind('/').unwrap()];
        Some(format!("{base}/{name}{query}"))
    }
}

/// A temp decnet home with a CA, where the `decnet` CLI runs.
pub struct MasterHome {
    /// The temp dir (removed on drop).
    pub dir: tempfile::TempDir,
    /// The fleet database URL every command gets (`None`: the home's
    /// SQLite file).
    pub database_url: Option<String>,
    /// Through a context ([`via_context`]): the master daemon answering
    /// the operator commands, and the config dir holding its admin's context.
    operated: std::sync::OnceLock<(Daemon, PathBuf)>,
}

/// Whether this run drives the fleet through a context
/// (`DECNET_E2E_VIA=context`): every operator command a test runs on the
/// master host (`swarm …` but `enroll`, `audit`, `job`, `ca show`) goes
/// instead through the fleet API of a `master serve` on the same home, as
/// an admin operator logged in with `decnet login` — the same assertions,
/// the CLI as the API's client (the operators issue's parametrised run).
pub fn via_context() -> bool {
    std::env::var("DECNET_E2E_VIA").as_deref() == Ok("context")
}

/// Whether `decnet ARGS` is an operator command a context serves.
fn served_through_context(args: &[&str]) -> bool {
    match args {
        ["swarm", "enroll", ..] => false,
        ["swarm", ..] | ["audit", ..] | ["job", ..] | ["ca", "show", ..] => true,
        _ => false,
    }
}

impl MasterHome {
    /// A fresh home with `decnet ca init` done.
    pub fn new() -> MasterHome {
        Self::with_database(None)
    }

    /// A fresh home whose fleet database is `url` (e.g. PostgreSQL).
    pub fn with_database(url: Option<String>) -> MasterHome {
        let h = MasterHome {
            dir: tempfile::tempdir().expect("tempdir"),
            database_url: url,
            operated: std::sync::OnceLock::new(),
        };
        h.ok(&["ca", "init"]);
        h
    }

    /// A fresh home (SQLite) in a temp dir under `parent` (e.g. a small
    /// filesystem a test mounted).
    pub fn in_dir(parent: &Path) -> MasterHome {
        let h = MasterHome {
            dir: tempfile::tempdir_in(parent).expect("tempdir"),
            database_url: None,
            operated: std::sync::OnceLock::new(),
        };
        h.ok(&["ca", "init"]);
        h
    }

    /// The decnet home.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("decnet")
    }

    /// The master bundle dir.
    pub fn master_bundle_dir(&self) -> PathBuf {
        self.home().join("ca/master")
    }

    /// Where the master keeps `host`'s agent bundle.
    pub fn agent_bundle_dir(&self, host: &str) -> PathBuf {
        self.home().join("ca/workers").join(host)
    }

    /// Where the master keeps `host`'s updater bundle.
    pub fn updater_bundle_dir(&self, host: &str) -> PathBuf {
        self.agent_bundle_dir(host).join("updater")
    }

    /// `decnet master serve` on 127.0.0.1, port 0, against this home (and
    /// its database), with `extra` arguments (e.g. `--no-listener`); waits
    /// for the control API's address. Its log: `master-<random>.log`.
    pub fn serve(&self, extra: &[&str]) -> Daemon {
        self.serve_under(&[], extra)
    }

    /// Like [`serve`](Self::serve), run through the command `wrapper`
    /// (e.g. `["prlimit", "--nofile=1024:1024", "--"]`).
    pub fn serve_under(&self, wrapper: &[&str], extra: &[&str]) -> Daemon {
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin("decnet")),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("decnet"));
                c
            }
        };
        cmd.args(["master", "serve", "--host", "127.0.0.1"]);
        // Any port is the default; a test that restarts a master on the
        // same ports names them in `extra`.
        for port in ["--port", "--api-port", "--console-port"] {
            if !extra.contains(&port) {
                cmd.args([port, "0"]);
            }
        }
        cmd.args(extra)
            .env("DECNET_HOME", self.home())
            .env(
                "DECNET_LOG",
                std::env::var("DECNET_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("DECNET_DATABASE_URL");
        if let Some(url) = &self.database_url {
            cmd.env("DECNET_DATABASE_URL", url);
        }
        Daemon::start(
            cmd,
            self.dir
                .path()
                .join(format!("master-{}.log", decnet_pki::random_hex(3))),
        )
    }

    /// The command `decnet ARGS` against this home (and its database), not
    /// started: for a test that watches a command while it runs.
    pub fn command(&self, args: &[&str]) -> Command {
        if via_context() && served_through_context(args) {
            // The operator's machine: its own config dir, nothing of the
            // master's home.
            return self.operator_command(args);
        }
        let mut cmd = Command::new(bin("decnet"));
        cmd.args(args)
            .env("DECNET_HOME", self.home())
            .env_remove("DECNET_DATABASE_URL")
            .env_remove("DECNET_CA_DIR")
            // On the master host's own files, whatever context the user
            // running the tests may have.
            .env("DECNET_CONTEXT", "local")
            .stdin(Stdio::null());
        if let Some(url) = &self.database_url {
            cmd.env("DECNET_DATABASE_URL", url);
        }
        cmd
    }

    /// The command `decnet ARGS` through the admin context of this home's
    /// master daemon (started at the first call), whatever the run: for a
    /// test of what only a context does (jobs).
    pub fn operator_command(&self, args: &[&str]) -> Command {
        let (_, config) = self.operated();
        let mut cmd = Command::new(bin("decnet"));
        cmd.args(args)
            .env("XDG_CONFIG_HOME", config)
            .env("DECNET_HOME", self.dir.path().join("operator-no-home"))
            .env_remove("DECNET_DATABASE_URL")
            .env_remove("DECNET_CA_DIR")
            .env("DECNET_CONTEXT", "e2e-admin")
            .stdin(Stdio::null());
        cmd
    }

    /// The master daemon and admin context of [`via_context`] runs,
    /// started at the first operator command (no log listener: the test's
    /// own master, if any, has it).
    fn operated(&self) -> &(Daemon, PathBuf) {
        self.operated.get_or_init(|| {
            let master = self.serve(&["--no-listener"]);
            let config = self.dir.path().join("operator-config");
            let added = self.ok(&["operator", "add", "e2e-admin", "--role", "admin", "--json"]);
            let token: serde_json::Value =
                serde_json::from_str(&added).expect("operator add --json");
            let out = Command::new(bin("decnet"))
                .args([
                    "login",
                    "--master",
                    &master.addr.to_string(),
                    "--token",
                    token["token"].as_str().expect("token"),
                ])
                .env("XDG_CONFIG_HOME", &config)
                .env("DECNET_HOME", self.dir.path().join("operator-no-home"))
                .env_remove("DECNET_CONTEXT")
                .stdin(Stdio::null())
                .output()
                .expect("run decnet login");
            assert!(
                out.status.success(),
                "decnet login failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (master, config)
        })
    }

    /// Run `decnet ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run decnet")
    }

    /// Run `decnet ARGS`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "decnet {args:?} failed ({:?}):\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `decnet ARGS --json`-style commands and parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "decnet {args:?}: not JSON ({e}):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Enroll `host` on 127.0.0.1 (with an updater bundle).
    pub fn enroll(&self, host: &str) {
        self.ok(&[
            "swarm",
            "enroll",
            "--host",
            host,
            "--address",
            "127.0.0.1",
            "--updater",
        ]);
    }

    /// `swarm token create --host HOST --address 127.0.0.1 EXTRA…`: a join
    /// token for `host`.
    pub fn join_token(&self, host: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "swarm",
            "token",
            "create",
            "--host",
            host,
            "--address",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        self.ok(&args).trim().to_string()
    }

    /// Record where `host`'s agent listens.
    pub fn set_agent_port(&self, host: &str, port: u16) {
        self.ok(&[
            "swarm",
            "set-endpoint",
            host,
            "--agent-port",
            &port.to_string(),
        ]);
    }
}

impl Default for MasterHome {
    fn default() -> Self {
        MasterHome::new()
    }
}

/// A daemon started by a test; SIGTERMed (then SIGKILLed) on drop.
pub struct Daemon {
    /// The child.
    pub child: Child,
    /// The address it reported.
    pub addr: SocketAddr,
    /// Its stderr log file.
    pub log: PathBuf,
    /// What it printed on stdout so far (`start` only).
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Start `cmd` (stdout piped) and wait for its `… listening on ADDR` line.
    pub fn start(mut cmd: Command, log: PathBuf) -> Daemon {
        let err = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn daemon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = printed.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                keep.lock().unwrap().push(line.trim().to_string());
                if let Some(addr) = line
                    .trim()
                    .rsplit("listening on ")
                    .next()
                    .and_then(|a| a.parse().ok())
                {
                    let _ = tx.send(addr);
                }
                line.clear();
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Daemon {
                child,
                addr,
                log,
                stdout: printed,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon did not report its address; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }

    /// Start `cmd` without waiting for an address line (clients such as the forwarder).
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Daemon {
        let err = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let child = cmd.spawn().expect("spawn");
        Daemon {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            stdout: Default::default(),
        }
    }

    /// The address of the line it printed containing `what` (`master
    /// serve` announces each listener: `console listening on https://…`),
    /// waiting up to 30 s for it.
    pub fn announced(&self, what: &str) -> SocketAddr {
        wait_for(Duration::from_secs(30), || {
            self.stdout
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(what))
                .and_then(|l| l.rsplit(['/', ' ']).next()?.parse().ok())
        })
        .unwrap_or_else(|| panic!("the daemon never printed {what:?}"))
    }

    /// The daemon's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// SIGTERM and wait (SIGKILL after 10 s); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        signal(self.child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().ok().and_then(|s| s.code());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// Send `sig` to `pid`.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    decnet_proc::signal(pid, sig);
}

/// Kill a process group (cleanup of deckies that outlive their agent).
pub fn kill_group(pid: u32) {
    decnet_proc::signal_group(pid, decnet_proc::Signal::KILL);
}

/// A decky uid range of its own for each agent a test starts: tests run in
/// parallel on one machine, and two agents must never hand out the same
/// uid (stopping a decky sweeps every process of its uid).
pub fn decky_id_range() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let slot = (std::process::id() % 1_000_000) * 16 + NEXT.fetch_add(1, Ordering::SeqCst) % 16;
    let first = 3_000_000 + slot * 64;
    format!("{first}-{}", first + 63)
}

/// Kill every decky an agent with state dir `state_dir` recorded, with its
/// shepherd and every process of its uid (deckies outlive their agent by
/// design, so tests clean them up).
pub fn kill_deckies(state_dir: &Path) {
    let Ok(text) = std::fs::read_to_string(state_dir.join("decnet-state.json")) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let Some(deckies) = v["deckies"].as_object() else {
        return;
    };
    for d in deckies.values() {
        if let (Some(pid), Some(t)) = (
            d["shepherd"]["pid"].as_u64(),
            d["shepherd"]["start_time"].as_u64(),
        ) && let Some(h) = decnet_proc::ProcessHandle::open(pid as u32, t)
        {
            let _ = h.signal(decnet_proc::Signal::KILL);
        }
        if let (Some(pid), Some(t)) = (d["pid"].as_u64(), d["pid_start"].as_u64())
            && let Some(h) = decnet_proc::ProcessHandle::open(pid as u32, t)
        {
            let _ = h.signal_group(decnet_proc::Signal::KILL);
        }
        // Only ids from the test ranges: never a real account's.
        if let Some(uid) = d["uid"].as_u64().filter(|u| *u >= 3_000_000) {
            decnet_proc::kill_user(uid as u32, Duration::from_secs(5));
        }
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    decnet_proc::is_running(pid)
}

/// `--no-master` unless `extra` names a master: a worker daemon refuses to
/// start without a master, and most tests run workers without one.
pub fn no_master_unless(extra: &[&str]) -> &'static [&'static str] {
    if extra
        .iter()
        .any(|a| *a == "--master" || a.starts_with("--master="))
    {
        &[]
    } else {
        &["--no-master"]
    }
}

/// Poll `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A started agent with its state dir; kills its deckies on drop.
pub struct Agent {
    /// The daemon.
    pub daemon: Daemon,
    /// Its state dir.
    pub state_dir: PathBuf,
    /// The uids its process deckies get.
    pub decky_ids: String,
}

impl Agent {
    /// Start `decnet-agent serve` with `host`'s bundle from `master` on 127.0.0.1:0.
    pub fn start(master: &MasterHome, host: &str, state_dir: &Path, extra: &[&str]) -> Agent {
        let decky_ids = decky_id_range();
        Agent {
            daemon: Self::spawn(master, host, state_dir, &decky_ids, extra),
            state_dir: state_dir.to_path_buf(),
            decky_ids,
        }
    }

    /// Start `decnet-agent serve` with the bundle in `bundle_dir` (e.g. one
    /// written by a token join), recording its port for `host`.
    pub fn start_with_bundle(
        master: &MasterHome,
        host: &str,
        bundle_dir: &Path,
        state_dir: &Path,
        extra: &[&str],
    ) -> Agent {
        let decky_ids = decky_id_range();
        let mut cmd = Command::new(bin("decnet-agent"));
        cmd.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--stop-grace",
            "2",
            "--decky-ids",
            &decky_ids,
        ])
        .arg("--bundle-dir")
        .arg(bundle_dir)
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .args(no_master_unless(extra))
        .env("DECNET_LOG", "info");
        let daemon = Daemon::start(cmd, state_dir.with_extension("agent.log"));
        master.set_agent_port(host, daemon.port());
        Agent {
            daemon,
            state_dir: state_dir.to_path_buf(),
            decky_ids,
        }
    }

    /// Stop the agent process (its deckies keep running) and start a new
    /// one on the same state dir, as after an upgrade or crash.
    pub fn restart(&mut self, master: &MasterHome, host: &str, extra: &[&str]) {
        assert_eq!(
            self.daemon.stop(),
            Some(0),
            "agent did not shut down cleanly"
        );
        self.daemon = Self::spawn(master, host, &self.state_dir, &self.decky_ids, extra);
    }

    fn spawn(
        master: &MasterHome,
        host: &str,
        state_dir: &Path,
        decky_ids: &str,
        extra: &[&str],
    ) -> Daemon {
        let mut cmd = Command::new(bin("decnet-agent"));
        cmd.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--stop-grace",
            "2",
            "--decky-ids",
            decky_ids,
        ])
        .arg("--bundle-dir")
        .arg(master.agent_bundle_dir(host))
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .args(no_master_unless(extra))
        .env("DECNET_LOG", "info");
        let log = state_dir.with_extension("agent.log");
        let daemon = Daemon::start(cmd, log);
        master.set_agent_port(host, daemon.port());
        daemon
    }

    /// Pids recorded in the state file.
    pub fn recorded_pids(&self) -> Vec<u32> {
        let Ok(text) = std::fs::read_to_string(self.state_dir.join("decnet-state.json")) else {
            return vec![];
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["deckies"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|d| d["pid"].as_u64())
                    .map(|p| p as u32)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Kills every decky process the agent recorded (they outlive the agent by design).
impl Drop for Agent {
    fn drop(&mut self) {
        self.daemon.stop();
        kill_deckies(&self.state_dir);
    }
}

/// A reqwest client presenting the bundle in `dir` (of `kind`), trusting the
/// CA, requiring the server to present a certificate of CN `server_cn`.
pub fn mtls_client(dir: &Path, kind: decnet_pki::BundleKind, server_cn: &str) -> reqwest::Client {
    decnet_pki::provider::install_default();
    let b = decnet_pki::Bundle::load(dir, kind).expect("bundle");
    let expected =
        decnet_pki::ExpectedServer::role(decnet_pki::Role::from_cn(server_cn).expect("server CN"));
    let cfg = decnet_pki::client_config(&b, None, &expected).expect("client config");
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A running `decnet listener` with its output files.
pub struct Listener {
    /// The daemon.
    pub daemon: Daemon,
    /// Raw log.
    pub raw: PathBuf,
    /// JSON log.
    pub json: PathBuf,
}

impl Listener {
    /// Start `decnet listener` for `master` on 127.0.0.1:`port` (0 = any).
    pub fn start(master: &MasterHome, port: u16) -> Listener {
        Self::start_with(master, port, &[])
    }

    /// Like [`start`](Self::start), with extra arguments.
    pub fn start_with(master: &MasterHome, port: u16, extra: &[&str]) -> Listener {
        let raw = master.dir.path().join("fleet.log");
        let json = master.dir.path().join("fleet.json");
        let mut cmd = Command::new(bin("decnet"));
        cmd.args([
            "listener",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--log-path")
        .arg(&raw)
        .arg("--json-path")
        .arg(&json)
        .args(extra)
        .env("DECNET_HOME", master.home())
        .env("DECNET_LOG", "info");
        let daemon = Daemon::start(
            cmd,
            master
                .dir
                .path()
                .join(format!("listener-{}.log", decnet_pki::random_hex(3))),
        );
        Listener { daemon, raw, json }
    }

    /// Raw log lines so far.
    pub fn raw_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.raw)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// JSON records so far.
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.json)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait until the raw log holds at least `n` lines.
    pub fn wait_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        wait_for(timeout, || {
            let l = self.raw_lines();
            (l.len() >= n).then_some(l)
        })
        .unwrap_or_else(|| {
            panic!(
                "expected {n} lines, have {:?}\nlistener log:\n{}",
                self.raw_lines(),
                self.daemon.log_text()
            )
        })
    }
}

/// Start `decnet-agent forward` with `host`'s bundle towards `addr`.
pub fn start_forwarder(
    master: &MasterHome,
    host: &str,
    addr: SocketAddr,
    log_file: &Path,
    state_dir: &Path,
) -> Daemon {
    let mut cmd = Command::new(bin("decnet-agent"));
    cmd.args(["forward", "--master", &addr.to_string(), "--log-file"])
        .arg(log_file)
        .arg("--bundle-dir")
        .arg(master.agent_bundle_dir(host))
        .arg("--state-dir")
        .arg(state_dir)
        .env("DECNET_LOG", "info");
    Daemon::spawn(
        cmd,
        state_dir.with_extension(format!("fwd-{}.log", decnet_pki::random_hex(3))),
    )
}

/// `BIN join --master MASTER --token TOKEN --bundle-dir DIR` (`decnet-agent`
/// or `decnet-updater`), run to its end.
pub fn join_with_token(bin_name: &str, master: &Daemon, token: &str, dir: &Path) -> Output {
    Command::new(bin(bin_name))
        .args([
            "join",
            "--master",
            &master.addr.to_string(),
            "--token",
            token,
            "--bundle-dir",
        ])
        .arg(dir)
        .output()
        .expect("run join")
}

/// Copy the files of `from` (not its sub-directories) into `to`, created
/// 0700 (a bundle directory's copy).
pub fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).expect("create the copy");
    for e in std::fs::read_dir(from).expect("read the directory") {
        let e = e.expect("directory entry");
        if e.file_type().expect("file type").is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

/// Append lines to a file (like a logging program would).
pub fn append_lines(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    for l in lines {
        writeln!(f, "{l}").expect("write");
    }
}

/// Enroll `n` hosts named `<prefix>-<i>` in-process (through the fleet
/// library: much faster than `n` CLI runs) and return their agent bundles.
pub fn enroll_many(master: &MasterHome, prefix: &str, n: usize) -> Vec<decnet_pki::Bundle> {
    decnet_pki::provider::install_default();
    let home = master.home();
    let prefix = prefix.to_string();
    // Its own thread and runtime, so it can be called from async code too.
    std::thread::spawn(move || enroll_many_blocking(&home, &prefix, n))
        .join()
        .expect("enrolling")
}

fn enroll_many_blocking(home: &Path, prefix: &str, n: usize) -> Vec<decnet_pki::Bundle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let layout = decnet_pki::CaLayout::new(home.join("ca"));
        let ca = decnet_pki::CertificateAuthority::load(&layout).expect("CA");
        let db = decnet_fleet::FleetDb::connect(&decnet_fleet::default_url(home))
            .await
            .expect("fleet database");
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let req = decnet_fleet::enrollment::EnrollRequest {
                host: format!("{prefix}-{i}"),
                address: Some("127.0.0.1".into()),
                ..Default::default()
            };
            let e = decnet_fleet::enrollment::enroll(&ca, &layout, &db, &req)
                .await
                .expect("enroll");
            out.push(
                decnet_pki::Bundle::load(&e.agent_bundle_dir, decnet_pki::BundleKind::Agent)
                    .expect("bundle"),
            );
        }
        db.close().await;
        out
    })
}

/// `GET /metrics` over plain HTTP from a daemon's loopback `--metrics-addr`;
/// checks the status, the content type and the `# EOF` end; the body.
pub fn scrape_metrics(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("content-type: application/openmetrics-text"),
        "{out}"
    );
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    body.to_string()
}

/// The value of the sample named exactly `series` (labels included) in a
/// scrape.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrape `addr` until `series` satisfies `ok` (45 s at most); the last scrape.
pub fn wait_metric(addr: SocketAddr, series: &str, ok: impl Fn(f64) -> bool) -> String {
    let mut last = String::new();
    wait_for(Duration::from_secs(45), || {
        last = scrape_metrics(addr);
        metric_value(&last, series).filter(|v| ok(*v)).map(|_| ())
    })
    .unwrap_or_else(|| panic!("{series} never reached the expected value; last scrape:\n{last}"));
    last
}

/// A loopback port for a daemon a test starts (or keeps down) later.
///
/// Bound and released, it could be taken before the daemon binds it, and
/// an updater restarting its agent leaves the port free for a moment. So
/// the ports handed out lie below the kernel's ephemeral range (no client
/// socket and no `bind(0)` ever takes them), and each is reserved across
/// the test processes running at once by an exclusive lock on a file
/// named for it, held until this process exits.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = test_port_range();
    let span = u32::from(high - low);
    let dir = std::env::temp_dir().join("decnet-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let start = u32::from_str_radix(&decnet_pki::random_hex(4), 16).unwrap_or(0) % span;
    let mut held = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        let Ok(lock) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        // A lock this process or another one holds: that port is taken.
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            held.push(lock);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// Where [`free_port`] picks: the 10,000 ports just below the kernel's
/// ephemeral range, or above it when there is no room below.
fn test_port_range() -> (u16, u16) {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if lo >= 11024 {
        (lo - 10000, lo)
    } else if hi <= 55535 {
        (hi + 1, hi + 10001)
    } else {
        panic!("the ephemeral port range {lo}-{hi} leaves no room for test ports")
    }
}

/// Where one worker's updater and agent live.
#[derive(Clone, Copy)]
struct Node<'a> {
    host: &'a str,
    install: &'a Path,
    agent_state: &'a Path,
    agent_port: u16,
    port: u16,
    decky_ids: &'a str,
}

/// A running `decnet-updater` (spawn mode) for one enrolled host, with its
/// install dir; kills the agent it spawned on drop.
pub struct UpdaterFixture {
    /// The updater daemon.
    pub daemon: Daemon,
    /// Install dir.
    pub install: PathBuf,
    /// Agent port.
    pub agent_port: u16,
    /// Agent state dir.
    pub agent_state: PathBuf,
    /// Host name.
    pub host: String,
    /// The uids its agent's process deckies get.
    pub decky_ids: String,
}

impl UpdaterFixture {
    /// Start an updater for `host` (enrolled with `--updater`), recording its
    /// ports in the fleet database.
    pub fn start(master: &MasterHome, host: &str, env: &[(&str, &str)]) -> UpdaterFixture {
        Self::start_with(master, host, env, &[])
    }

    /// Like [`start`](Self::start), with extra updater arguments.
    pub fn start_with(
        master: &MasterHome,
        host: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> UpdaterFixture {
        let base = master.dir.path().join(format!("{host}-node"));
        let install = base.join("opt");
        let agent_state = base.join("agent-state");
        let agent_port = free_port();
        let decky_ids = decky_id_range();
        let node = Node {
            host,
            install: &install,
            agent_state: &agent_state,
            agent_port,
            port: free_port(),
            decky_ids: &decky_ids,
        };
        let daemon = Self::spawn(master, &node, env, extra);
        master.ok(&[
            "swarm",
            "set-endpoint",
            host,
            "--agent-port",
            &agent_port.to_string(),
            "--updater-port",
            &daemon.port().to_string(),
        ]);
        UpdaterFixture {
            daemon,
            install,
            agent_port,
            agent_state,
            host: host.to_string(),
            decky_ids,
        }
    }

    fn spawn(master: &MasterHome, node: &Node<'_>, env: &[(&str, &str)], extra: &[&str]) -> Daemon {
        let cmd = Self::command(master, node, env, extra, false);
        let log = node
            .install
            .with_extension(format!("updater-{}.log", decnet_pki::random_hex(3)));
        Daemon::start(cmd, log)
    }

    /// The updater's command line; `launched`: through `decnet-updater
    /// launch` (as its systemd unit starts it) rather than `serve` directly.
    fn command(
        master: &MasterHome,
        node: &Node<'_>,
        env: &[(&str, &str)],
        extra: &[&str],
        launched: bool,
    ) -> Command {
        let Node {
            host,
            install,
            agent_state,
            agent_port,
            port,
            decky_ids,
        } = *node;
        std::fs::create_dir_all(install).expect("install dir");
        let mut cmd = Command::new(bin("decnet-updater"));
        if launched {
            cmd.arg("launch")
                .arg("--install-dir")
                .arg(install)
                .arg("--");
        }
        // A fixed port: a self-updated updater re-executes and binds it again.
        cmd.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--agent-control",
            "spawn",
        ])
        .arg("--bundle-dir")
        .arg(master.updater_bundle_dir(host))
        .arg("--agent-bundle-dir")
        .arg(master.agent_bundle_dir(host))
        .arg("--install-dir")
        .arg(install)
        .args(["--agent-port", &agent_port.to_string()])
        .args([
            "--agent-host",
            "127.0.0.1",
            "--agent-arg=--stop-grace",
            "--agent-arg=2",
        ])
        .arg(format!("--agent-arg=--state-dir={}", agent_state.display()))
        .arg(format!("--agent-arg=--decky-ids={decky_ids}"))
        .args([
            "--probe-attempts",
            "12",
            "--probe-interval-ms",
            "250",
            "--probe-timeout",
            "2",
            "--stop-grace",
            "3",
        ])
        .args(extra)
        .args(no_master_unless(extra));
        if !extra.iter().any(|a| a.starts_with("--agent-arg=--master")) {
            cmd.arg("--agent-arg=--no-master");
        }
        cmd.env("DECNET_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// One start of the updater as its systemd unit does it (through
    /// `decnet-updater launch`, same install dir and ports), the way a
    /// supervisor restarts it: `Ok` with the daemon once it listens, `Err`
    /// with its log when the process exits first.
    pub fn launch(&mut self, master: &MasterHome) -> Result<(), String> {
        if matches!(self.daemon.child.try_wait(), Ok(None)) {
            self.daemon.stop();
        }
        let node = Node {
            host: &self.host,
            install: &self.install,
            agent_state: &self.agent_state,
            agent_port: self.agent_port,
            port: self.daemon.port(),
            decky_ids: &self.decky_ids,
        };
        let mut cmd = Self::command(master, &node, &[], &[], true);
        let log = self
            .install
            .with_extension(format!("launch-{}.log", decnet_pki::random_hex(3)));
        cmd.stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn the launcher");
        let port = self.daemon.port();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                self.daemon = Daemon {
                    child,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    log,
                    stdout: Default::default(),
                };
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "neither listening nor exited; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restart the updater (same install dir and ports), with `env`.
    pub fn restart(&mut self, master: &MasterHome, env: &[(&str, &str)]) {
        self.daemon.stop();
        let port = self.daemon.port();
        let node = Node {
            host: &self.host,
            install: &self.install,
            agent_state: &self.agent_state,
            agent_port: self.agent_port,
            port,
            decky_ids: &self.decky_ids,
        };
        self.daemon = Self::spawn(master, &node, env, &[]);
        master.ok(&[
            "swarm",
            "set-endpoint",
            &self.host,
            "--updater-port",
            &self.daemon.port().to_string(),
        ]);
    }

    /// The pid of the agent the updater runs (from its pidfile), if alive.
    pub fn agent_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.install.join("agent.pid")).ok()?;
        let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
        alive(pid).then_some(pid)
    }
}

impl Drop for UpdaterFixture {
    fn drop(&mut self) {
        self.daemon.stop();
        if let Some(pid) = self.agent_pid() {
            signal(pid, rustix::process::Signal::KILL);
        }
        kill_deckies(&self.agent_state);
    }
}

/// A release dir with the real agent binary (and optionally the updater's).
pub fn good_release(dir: &Path, with_updater: bool) -> PathBuf {
    std::fs::create_dir_all(dir.join("bin")).expect("release dir");
    std::fs::copy(bin("decnet-agent"), dir.join("bin/decnet-agent")).expect("copy agent");
    if with_updater {
        std::fs::copy(bin("decnet-updater"), dir.join("bin/decnet-updater")).expect("copy updater");
    }
    dir.to_path_buf()
}

/// A release whose agent passes `--version` but never becomes healthy.
pub fn broken_release(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("bin")).expect("release dir");
    let p = dir.join("bin/decnet-agent");
    std::fs::write(&p, "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'decnet-agent 99.0-broken'; exit 0; fi\necho 'broken agent: cannot start' >&2\nexit 3\n").expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir.to_path_buf()
}

/// A release whose updater passes `--version` (so it is installed) but
/// dies at every start, with the real agent beside it.
pub fn crash_looping_updater_release(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    good_release(dir, false);
    let p = dir.join("bin/decnet-updater");
    std::fs::write(&p, "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'decnet-updater 99.0-crashes'; exit 0; fi\necho 'crashing updater: cannot start' >&2\nexit 3\n").expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir.to_path_buf()
}

/// The two Debian packages (`decnet`, `decnet-worker`) built by
/// `packaging/deb/build-debs.sh` from this workspace's binaries,
/// uncompressed (xz of debug binaries takes minutes), in a temp dir.
pub struct DebianPackages {
    /// Holds the packages (removed on drop).
    pub dir: tempfile::TempDir,
    /// `decnet_<version>_<arch>.deb`.
    pub master: PathBuf,
    /// `decnet-worker_<version>_<arch>.deb`.
    pub worker: PathBuf,
}

impl DebianPackages {
    /// Build both; panics with the script's output if it fails.
    pub fn build() -> DebianPackages {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb/build-debs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir.path())
            .env("DECNET_BIN_DIR", bin_dir())
            .env("DECNET_DEB_COMPRESS", "none")
            .output()
            .expect("run build-debs.sh");
        assert!(
            out.status.success(),
            "build-debs.sh: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let find = |package: &str| {
            std::fs::read_dir(dir.path())
                .expect("read the package dir")
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
                })
                .unwrap_or_else(|| panic!("no {package} package"))
        };
        DebianPackages {
            master: find("decnet"),
            worker: find("decnet-worker"),
            dir,
        }
    }
}

/// Docker helpers of the tests that drive a real engine.
pub mod docker {
    use std::process::Command;

    /// The test image: Debian's static busybox in a scratch image, built locally
    /// (nothing can be pulled).
    pub const BUSYBOX_IMAGE: &str = "decnet-e2e-busybox:local";

    /// Whether a Docker engine answers.
    pub fn available() -> bool {
        Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Build [`BUSYBOX_IMAGE`] (quick when cached).
    pub fn build_busybox_image() -> Result<(), String> {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or("busybox-static is not installed")?;
        let ctx = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::copy(busybox, ctx.path().join("busybox")).map_err(|e| e.to_string())?;
        std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n",
    )
    .map_err(|e| e.to_string())?;
        build_image(BUSYBOX_IMAGE, ctx.path())
    }

    /// `docker build` the context `dir` as `tag` (the classic builder: no
    /// registry, no BuildKit needed); the engine's message on failure.
    pub fn build_image(tag: &str, dir: &std::path::Path) -> Result<(), String> {
        let out = Command::new("docker")
            .args(["build", "-q", "-t", tag])
            .arg(dir)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Removes a compose project's containers and networks on drop.
    pub struct ProjectCleanup(pub String);

    impl Drop for ProjectCleanup {
        fn drop(&mut self) {
            let label = format!("label=com.docker.compose.project={}", self.0);
            let ids = docker_words(&["ps", "-aq", "--filter", &label]);
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .arg("rm")
                    .arg("-f")
                    .args(&ids)
                    .output();
            }
            // Every network of the project (the deckies' own bridges among
            // them), and the firewall chains the agent built for them.
            let nets = docker_words(&["network", "ls", "-q", "--filter", &label]);
            for net in nets {
                let bridge = Command::new("docker")
                    .args([
                        "network",
                        "inspect",
                        "--format",
                        "{{index .Options \"com.docker.network.bridge.name\"}}",
                        &net,
                    ])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default();
                let _ = Command::new("docker")
                    .args(["network", "rm", &net])
                    .output();
                if bridge.starts_with("dn") {
                    remove_decky_chain(&bridge);
                }
            }
            for net in ["default", "lan"] {
                let _ = Command::new("docker")
                    .args(["network", "rm", &format!("{}_{net}", self.0)])
                    .output();
            }
        }
    }

    /// The words `docker ARGS` printed (ids, names); none when it failed.
    fn docker_words(args: &[&str]) -> Vec<String> {
        Command::new("docker")
            .args(args)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Remove the firewall chain of a decky's bridge, the jumps to it and
    /// its reverse-path check (what the agent's teardown does, for a test
    /// that stopped early).
    pub fn remove_decky_chain(bridge: &str) {
        let chain = format!("DECNET-{bridge}");
        for from in ["DOCKER-USER", "INPUT"] {
            for _ in 0..4 {
                let ok = Command::new("iptables")
                    .args(["-w", "-D", from, "-i", bridge, "-j", &chain])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !ok {
                    break;
                }
            }
        }
        let _ = Command::new("iptables")
            .args([
                "-w",
                "-t",
                "raw",
                "-D",
                "PREROUTING",
                "-i",
                bridge,
                "-m",
                "rpfilter",
                "--invert",
                "-j",
                "DROP",
            ])
            .output();
        let _ = Command::new("iptables").args(["-w", "-F", &chain]).output();
        let _ = Command::new("iptables").args(["-w", "-X", &chain]).output();
        // The safety net in the `security` table.
        for _ in 0..4 {
            let ok = Command::new("iptables")
                .args([
                    "-w", "-t", "security", "-D", "FORWARD", "-i", bridge, "-j", &chain,
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                break;
            }
        }
        for op in ["-F", "-X"] {
            let _ = Command::new("iptables")
                .args(["-w", "-t", "security", op, &chain])
                .output();
        }
    }
}

/// Figures of a process from `/proc`, for the benchmarks.
pub mod procstat {
    fn stat_fields(pid: &str) -> Vec<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the command name (which may contain spaces).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        rest.split_whitespace()
            .map(|v| v.parse::<f64>().unwrap_or(0.0))
            .collect()
    }

    /// CPU seconds (user + system) process `pid` has used.
    pub fn cpu_seconds(pid: u32) -> f64 {
        let f = stat_fields(&pid.to_string());
        // utime, stime: fields 14 and 15 (1-based), 11 and 12 after ')'.
        (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
    }

    /// Seconds the machine's cores have spent idle (or waiting for IO)
    /// since boot, all cores together: over a window, what no process used.
    pub fn machine_idle_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse::<f64>().unwrap_or(0.0))
            .collect();
        // user nice system idle iowait …, in USER_HZ (100 a second).
        (cpu.get(3).unwrap_or(&0.0) + cpu.get(4).unwrap_or(&0.0)) / 100.0
    }

    /// CPU seconds used by this process's reaped children.
    pub fn children_cpu_seconds() -> f64 {
        let f = stat_fields("self");
        // cutime, cstime: fields 16 and 17 (1-based), 13 and 14 after ')'.
        (f.get(13).unwrap_or(&0.0) + f.get(14).unwrap_or(&0.0)) / 100.0
    }

    /// Resident memory of process `pid` (`"self"` for this one), KiB.
    pub fn rss_kib(pid: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
}

/// An operator's machine: a config dir of its own, nothing of the
/// master's; logged in to a `master serve` with `decnet login`.
pub struct Operator {
    /// Its config dir and `$HOME`.
    pub dir: tempfile::TempDir,
}

impl Operator {
    /// Add operator `name` on the master host and log in as it.
    pub fn login(
        m: &MasterHome,
        master: &Daemon,
        name: &str,
        role: &str,
        hosts: &[&str],
    ) -> Operator {
        let mut args = vec!["operator", "add", name, "--role", role, "--json"];
        for h in hosts {
            args.extend(["--hosts", h]);
        }
        let added: serde_json::Value = serde_json::from_str(&m.ok(&args)).unwrap();
        let op = Operator {
            dir: tempfile::tempdir().unwrap(),
        };
        op.ok(&[
            "login",
            "--master",
            &master.addr.to_string(),
            "--token",
            added["token"].as_str().unwrap(),
        ]);
        op
    }

    /// `decnet ARGS` on this machine.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("decnet"));
        cmd.args(args)
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("HOME", self.dir.path())
            .env("DECNET_HOME", self.dir.path().join("no-decnet-home"))
            .env_remove("DECNET_CONTEXT")
            .env_remove("DECNET_DATABASE_URL")
            .stdin(Stdio::null());
        cmd
    }

    /// Run `decnet ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Run `decnet ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "decnet {args:?} failed ({:?}):\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The (only) context's directory.
    pub fn context_dir(&self) -> PathBuf {
        let contexts = self.dir.path().join("config/decnet/contexts");
        std::fs::read_dir(&contexts)
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
    }

    /// `decnet events ARGS` running in the background, its stdout in a file.
    pub fn follow(&self, args: &[&str], out: &Path) -> Following {
        let mut full = vec!["events"];
        full.extend(args);
        let child = self
            .command(&full)
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        Following {
            child,
            out: out.to_path_buf(),
        }
    }
}

/// A `decnet events --follow` process; killed on drop.
pub struct Following {
    child: Child,
    out: PathBuf,
}

impl Following {
    /// The events printed so far (`--json`).
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hosts` agent identities for a benchmark: certificates signed by the
/// master's CA (`sim-00000`, …; one shared key pair, to keep the load
/// generator light: the master checks certificates, not keys'
/// uniqueness), each recorded in the fleet database as an enrolled host.
pub fn issue_agent_identities(
    m: &MasterHome,
    rt: &tokio::runtime::Runtime,
    hosts: usize,
) -> Vec<(String, decnet_pki::Bundle)> {
    use decnet_fleet::{CertRecord, CertRole, FleetDb, HostRecord};
    use decnet_pki::{Bundle, BundleKind, HostName, LeafSpec, Role};
    let layout = decnet_pki::CaLayout::new(m.home().join("ca"));
    let ca = decnet_pki::CertificateAuthority::load(&layout).expect("CA");
    let (key_pem, csr_pem) = decnet_pki::ca::generate_csr("bench").expect("key");
    let url = m
        .database_url
        .clone()
        .unwrap_or_else(|| decnet_fleet::default_url(&m.home()));
    rt.block_on(async {
        let db = FleetDb::connect(&url).await.expect("fleet database");
        let mut out = Vec::with_capacity(hosts);
        for i in 0..hosts {
            let name = format!("sim-{i:05}");
            let role = Role::Agent(HostName::new(&name).expect("name"));
            let mut leaf = ca
                .sign_csr(&LeafSpec::for_role(&role, &["127.0.0.1".into()]), &csr_pem)
                .expect("sign");
            leaf.key_pem = key_pem.clone();
            let mut host = HostRecord::new(&name, "127.0.0.1", 9, 9);
            host.agent_fingerprint = Some(leaf.fingerprint.to_hex());
            db.record_enrollment(&host, &[CertRecord::of_leaf(&leaf, &name, CertRole::Agent)])
                .await
                .expect("record");
            out.push((
                name,
                Bundle::from_issued(BundleKind::Agent, &leaf, ca.cert_pem()).expect("bundle"),
            ));
        }
        db.close().await;
        out
    })
}
