//! The `compose` driver against the real Docker engine, with a tiny image
//! built locally from scratch around Debian's static busybox (nothing can be
//! pulled). Where no engine runs, the test says so loudly and passes only the
//! rendering part (which the agent's unit tests also cover).

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use decnet_e2e::{Agent, MasterHome, wait_for};

const IMAGE: &str = "decnet-e2e-busybox:local";

fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn build_image() -> Result<(), String> {
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
    let out = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE])
        .arg(ctx.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

struct ProjectCleanup(String);

impl Drop for ProjectCleanup {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.0),
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("{}_default", self.0)])
            .output();
    }
}

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
