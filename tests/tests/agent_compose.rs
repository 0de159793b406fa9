//! The `compose` driver against the real Docker engine, with a tiny image
//! built locally from scratch around Debian's static busybox (nothing can be
//! pulled). Where no engine runs, the test says so loudly and passes only the
//! rendering part (which the agent's unit tests also cover).

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use decnet_e2e::{Agent, MasterHome, wait_for};

use decnet_e2e::docker::{
    BUSYBOX_IMAGE as IMAGE, ProjectCleanup, available as docker_available,
    build_busybox_image as build_image,
};

fn container_state(project: &str, service: &str) -> Option<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--format",
            "{{.State}}",
        ])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

#[test]
fn compose_driver_runs_real_containers() {
    if !docker_available() {
        eprintln!(
            "\n!!!!!!!!\n!!! NO DOCKER ENGINE: the compose driver was NOT tested against a real engine here\n!!!!!!!!\n"
        );
        return;
    }
    if let Err(e) = build_image() {
        eprintln!(
            "\n!!!!!!!!\n!!! cannot build the test image ({e}); compose driver NOT tested against the engine\n!!!!!!!!\n"
        );
        return;
    }
    let m = MasterHome::new();
    m.enroll("dock");
    let project = format!("decnet-e2e-{}", decnet_pki::random_hex(4));
    let _cleanup = ProjectCleanup(project.clone());
    let _agent = Agent::start(
        &m,
        "dock",
        &m.dir.path().join("dock-state"),
        &["--driver", "compose", "--compose-project", &project],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = serde_json::json!({"version": 1, "deckies": [
        {"name": "web", "services": ["http"], "image": IMAGE,
         "command": ["httpd", "-f", "-p", "8080", "-h", "/"],
         "ports": [{"host": port, "container": 8080}]},
        {"name": "idle", "image": IMAGE, "command": ["sleep", "300"]},
        {"name": "ghost", "image": "decnet-e2e-does-not-exist:none", "command": ["true"]},
    ]});
    let path = m.dir.path().join("compose.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = m.run(&["swarm", "deploy", "--config", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "ghost fails, so the deploy is partial"
    );

    let st = m.json(&["swarm", "status", "dock", "--json"]);
    let deckies = st[0]["status"]["deckies"].as_array().unwrap().clone();
    let get = |n: &str| deckies.iter().find(|d| d["name"] == n).unwrap().clone();
    assert_eq!(get("web")["state"], "running");
    assert_eq!(get("idle")["state"], "running");
    assert_eq!(get("ghost")["state"], "failed");
    assert!(get("ghost")["error"].as_str().unwrap().contains("failed"));
    assert_eq!(get("web")["observed"]["running"], true);
    assert_eq!(get("web")["observed"]["detail"]["state"], "running");
    assert_eq!(container_state(&project, "web").as_deref(), Some("running"));

    // The published port answers HTTP from inside the container.
    let answer = wait_for(Duration::from_secs(15), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/").then_some(buf)
    });
    assert!(
        answer.is_some(),
        "httpd in the web decky answers on the published port"
    );

    // The compose file on disk is what compose ran.
    let file = m.dir.path().join("dock-state/compose/docker-compose.yml");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        doc["services"]["web"]["ports"][0],
        format!("{port}:8080/tcp")
    );

    m.ok(&["swarm", "teardown", "dock", "--decky", "idle"]);
    assert_eq!(
        container_state(&project, "idle"),
        None,
        "idle's container is removed"
    );
    assert_eq!(
        container_state(&project, "web").as_deref(),
        Some("running"),
        "web keeps running"
    );

    m.ok(&["swarm", "teardown", "dock"]);
    assert_eq!(container_state(&project, "web"), None);
}

const HOSTILE_IMAGE: &str = "decnet-e2e-hostile:local";

/// An image holding the hostile decky (with the shared libraries it links)
/// and a setuid-root copy of it, next to busybox.
fn build_hostile_image() -> Result<(), String> {
    let hostile = env!("CARGO_BIN_EXE_decnet-hostile-decky");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("busybox-static is not installed")?;
    let ctx = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = ctx.path().join("rootfs");
    let put = |src: &str, dst: &str| -> Result<(), String> {
        let to = root.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::copy(src, &to).map_err(|e| format!("{src}: {e}"))?;
        Ok(())
    };
    put(busybox, "/bin/busybox")?;
    put(hostile, "/bin/hostile")?;
    put(hostile, "/bin/suid-hostile")?;
    let ldd = Command::new("ldd")
        .arg(hostile)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        put(lib, lib)?;
    }
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN [\"/bin/busybox\", \"chmod\", \"4755\", \"/bin/suid-hostile\"]\nRUN [\"/bin/busybox\", \"chmod\", \"755\", \"/bin/hostile\"]\n",
    )
    .map_err(|e| e.to_string())?;
    decnet_e2e::docker::build_image(HOSTILE_IMAGE, ctx.path())
}

fn container_id(project: &str, service: &str) -> Option<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn docker_out(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_hostile_compose_decky_is_contained_by_default() {
    if !docker_available() {
        eprintln!(
            "\n!!!!!!!!\n!!! NO DOCKER ENGINE: compose containment was NOT tested against a real engine here\n!!!!!!!!\n"
        );
        return;
    }
    if let Err(e) = build_image().and_then(|()| build_hostile_image()) {
        eprintln!(
            "\n!!!!!!!!\n!!! cannot build the test images ({e}); compose containment NOT tested\n!!!!!!!!\n"
        );
        return;
    }
    let m = MasterHome::new();
    m.enroll("dock2");
    let project = format!("decnet-e2e-{}", decnet_pki::random_hex(4));
    let _cleanup = ProjectCleanup(project.clone());
    let agent = Agent::start(
        &m,
        "dock2",
        &m.dir.path().join("dock2-state"),
        &["--driver", "compose", "--compose-project", &project],
    );
    let agent_pid = agent.daemon.child.id().to_string();
    let key = m.agent_bundle_dir("dock2").join("worker.key");
    let cfg = serde_json::json!({"version": 1, "deckies": [
        {"name": "victim", "image": IMAGE, "command": ["sleep", "600"]},
        {"name": "hostile", "image": HOSTILE_IMAGE,
         "env": {"A": "$HOME", "B": "${PATH:-x}"},
         "limits": {"processes": 32, "memory_mb": 64},
         "command": ["/bin/hostile", "attack",
            "--read", key.to_str().unwrap(),
            "--read", "/var/run/docker.sock",
            "--write", "/bin/busybox",
            "--create-in", "/", "--create-in", "/etc",
            "--signal", &agent_pid, "--trace", &agent_pid,
            "--suid", "/bin/suid-hostile",
            "--fork-bomb", "--eat-memory",
            "--print-env", "A", "--print-env", "B", "--print-arg", "$HOME"]},
    ]});
    let path = m.dir.path().join("hostile.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    m.ok(&["swarm", "deploy", "--config", path.to_str().unwrap()]);
    let id = container_id(&project, "hostile").expect("hostile container");
    let log = wait_for(Duration::from_secs(60), || {
        let l = docker_out(&["logs", &id]);
        l.contains("DONE").then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "the hostile decky never finished: {}",
            docker_out(&["logs", &id])
        )
    });

    let attempts: Vec<&str> = log.lines().filter(|l| l.starts_with("ATTEMPT")).collect();
    assert_eq!(attempts.len(), 7, "{log}");
    for a in &attempts {
        assert!(a.contains(": blocked ("), "the decky got through: {a}");
    }
    assert!(log.contains("IDS uid=65534 euid=65534 gid=65534"), "{log}");
    assert!(log.contains("EUID 65534"), "setuid gave nothing: {log}");
    let forks: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("FORKS "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("fork bomb ran");
    assert!(forks < 32, "pids limit held: {log}");
    let mib: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("MEMORY "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("memory eater ran");
    assert!(mib < 64, "memory limit held: {log}");
    // Values reach the container exactly as written: compose interpolated nothing.
    assert!(log.contains("ENV A=$HOME\n"), "{log}");
    assert!(log.contains("ENV B=${PATH:-x}\n"), "{log}");
    assert!(log.contains("ARG $HOME\n"), "{log}");

    // What the engine and the kernel say about the container.
    let inspect: serde_json::Value =
        serde_json::from_str(&docker_out(&["inspect", &id])).expect("inspect");
    let hc = &inspect[0]["HostConfig"];
    assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]));
    assert_eq!(hc["Privileged"], false);
    assert_eq!(hc["ReadonlyRootfs"], true);
    assert!(
        hc["SecurityOpt"].to_string().contains("no-new-privileges"),
        "{hc}"
    );
    assert_eq!(hc["PidsLimit"], 32);
    assert_eq!(hc["Memory"], 64u64 << 20);
    assert!(hc["Binds"].as_array().is_none_or(|b| b.is_empty()), "{hc}");
    assert_ne!(hc["NetworkMode"], "host");
    assert_ne!(hc["PidMode"], "host");
    let pid = inspect[0]["State"]["Pid"].as_u64().unwrap();
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |n: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(n))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");

    // The agent still serves the master; the other decky is untouched.
    let st = m.json(&["swarm", "status", "dock2", "--json"]);
    let deckies = st[0]["status"]["deckies"].as_array().unwrap();
    for n in ["victim", "hostile"] {
        let d = deckies.iter().find(|d| d["name"] == n).unwrap();
        assert_eq!(d["state"], "running", "{d}");
    }
    assert_eq!(
        container_state(&project, "victim").as_deref(),
        Some("running")
    );
    assert_eq!(
        st[0]["status"]["containment"]["isolation"]["mode"],
        "container"
    );
    drop(agent);
}
