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
        decnet_e2e::skip::missing(
            "\n!!!!!!!!\n!!! NO DOCKER ENGINE: the compose driver was NOT tested against a real engine here\n!!!!!!!!\n",
        );
        return;
    }
    if let Err(e) = build_image() {
        decnet_e2e::skip::missing(&format!(
            "\n!!!!!!!!\n!!! cannot build the test image ({e}); compose driver NOT tested against the engine\n!!!!!!!!\n"
        ));
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
    let port = decnet_e2e::free_port();
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
        decnet_e2e::skip::missing(
            "\n!!!!!!!!\n!!! NO DOCKER ENGINE: compose containment was NOT tested against a real engine here\n!!!!!!!!\n",
        );
        return;
    }
    if let Err(e) = build_image().and_then(|()| build_hostile_image()) {
        decnet_e2e::skip::missing(&format!(
            "\n!!!!!!!!\n!!! cannot build the test images ({e}); compose containment NOT tested\n!!!!!!!!\n"
        ));
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

/// A network namespace standing for the LAN and the internet beyond the
/// worker: a veth pair routed from the host (`10.231.x.y/30`), with
/// busybox's httpd serving on two ports inside. Removed on drop.
struct Outside {
    ns: String,
    host_if: String,
    /// Its address, as the deckies' traffic reaches it.
    ip: String,
    servers: Vec<std::process::Child>,
    _root: tempfile::TempDir,
}

impl Outside {
    fn start(ports: &[u16]) -> Result<Outside, String> {
        let tag = decnet_pki::random_hex(3);
        let n = u32::from_str_radix(&tag, 16).unwrap_or(1);
        let (a, b) = ((n >> 8) & 0xff, (n & 0x3f) * 4);
        let ns = format!("dnt-{tag}");
        let host_if = format!("dnt{tag}a");
        let ns_if = format!("dnt{tag}b");
        let ip = format!("10.231.{a}.{}", b + 2);
        let sh = |args: &[&str]| -> Result<(), String> {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::write(root.path().join("index.html"), "outside\n").map_err(|e| e.to_string())?;
        let mut me = Outside {
            ns: ns.clone(),
            host_if: host_if.clone(),
            ip: ip.clone(),
            servers: Vec::new(),
            _root: root,
        };
        sh(&["ip", "netns", "add", &ns])?;
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        sh(&["ip", "link", "set", &ns_if, "netns", &ns])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.231.{a}.{}/30", b + 1),
            "dev",
            &host_if,
        ])?;
        sh(&["ip", "link", "set", &host_if, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", ns.as_str()];
            all.extend_from_slice(args);
            sh(&all)
        };
        in_ns(&["ip", "addr", "add", &format!("{ip}/30"), "dev", &ns_if])?;
        in_ns(&["ip", "link", "set", &ns_if, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        in_ns(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.231.{a}.{}", b + 1),
        ])?;
        for port in ports {
            let child = Command::new("ip")
                .args(["netns", "exec", &ns, "busybox", "httpd", "-f", "-p"])
                .arg(format!("{ip}:{port}"))
                .arg("-h")
                .arg(me._root.path())
                .spawn()
                .map_err(|e| e.to_string())?;
            me.servers.push(child);
        }
        Ok(me)
    }
}

impl Outside {
    /// A UDP listener on port 53 of the outside address (Python's, in the
    /// namespace), writing a line per datagram into the file returned (`webleak` for
    /// a lookup of `webleak.example`, else `dgram`).
    fn udp_sink(&mut self) -> std::path::PathBuf {
        let file = self._root.path().join("datagrams");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "python3", "-c"])
            .arg(
                "import socket, sys\n\
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.bind((sys.argv[1], 53))\n\
                 while True:\n\
                 \x20   d, _ = s.recvfrom(4096)\n\
                 \x20   open(sys.argv[2], 'a').write('webleak\\n' if b'webleak' in d else 'dgram\\n')\n",
            )
            .arg(&self.ip)
            .arg(&file)
            .spawn()
            .expect("python3 in the outside namespace");
        self.servers.push(child);
        file
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// `docker exec` an HTTP request to `addr` (`IP:PORT`) in container `id`
/// (busybox's nc: its static wget crashes in a scratch image): the body,
/// or why not.
fn fetch_from(id: &str, addr: &str) -> Result<String, String> {
    let (ip, port) = addr.rsplit_once(':').expect("IP:PORT");
    let out = Command::new("docker")
        .args(["exec", id, "sh", "-c"])
        .arg(format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 4 {ip} {port}"
        ))
        .output()
        .expect("docker exec");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    match said.split_once("\r\n\r\n") {
        Some((head, body)) if out.status.success() && head.starts_with("HTTP/") => {
            Ok(body.to_string())
        }
        _ => Err(format!(
            "{said}{}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn container_network(id: &str, field: &str) -> String {
    docker_out(&[
        "inspect",
        "--format",
        &format!("{{{{range .NetworkSettings.Networks}}}}{{{{.{field}}}}}{{{{end}}}}"),
        id,
    ])
    .trim()
    .to_string()
}

/// The engine's gap, played for one bridge: its `-i br ! -o br -j ACCEPT`
/// first in FORWARD, above the jump to DOCKER-USER, until dropped.
struct EngineGap(Vec<String>);

impl EngineGap {
    fn open(bridge: &str) -> EngineGap {
        let spec: Vec<String> = ["FORWARD", "-i", bridge, "!", "-o", bridge, "-j", "ACCEPT"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ok = Command::new("iptables")
            .args(["-w", "-I"])
            .args(&spec)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "iptables -I {spec:?}");
        EngineGap(spec)
    }
}

impl Drop for EngineGap {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-w", "-D"])
            .args(&self.0)
            .status();
    }
}

#[test]
fn a_compose_decky_reaches_nothing_but_its_allow_list() {
    if !docker_available() {
        decnet_e2e::skip::missing(
            "\n!!!!!!!!\n!!! NO DOCKER ENGINE: compose deckies' networks were NOT tested against a real engine here\n!!!!!!!!\n",
        );
        return;
    }
    let iptables = Command::new("iptables")
        .args(["-w", "-L", "DOCKER-USER", "-n"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !iptables {
        decnet_e2e::skip::missing(
            "\n!!!!!!!!\n!!! NO iptables WITH THE ENGINE'S DOCKER-USER CHAIN (not root?): compose deckies' networks were NOT tested\n!!!!!!!!\n",
        );
        return;
    }
    build_image().expect("the busybox test image");
    let mut outside = Outside::start(&[8081, 8082]).expect("the outside network namespace");
    let datagrams = outside.udp_sink();

    let m = MasterHome::new();
    m.enroll("fw");
    let project = format!("decnet-e2e-{}", decnet_pki::random_hex(4));
    let _cleanup = ProjectCleanup(project.clone());
    let _agent = Agent::start(
        &m,
        "fw",
        &m.dir.path().join("fw-state"),
        &["--driver", "compose", "--compose-project", &project],
    );
    let published = decnet_e2e::free_port();
    // An allow-list as broad as Docker's address pools, on the port of a
    // host service below: it must still not open the host.
    let host_port = decnet_e2e::free_port();
    let cfg = serde_json::json!({"version": 1, "deckies": [
        {"name": "web", "image": IMAGE, "command": ["httpd", "-f", "-p", "8080", "-h", "/"],
         "ports": [{"host": published, "container": 8080}]},
        {"name": "hostile", "image": IMAGE, "command": ["sleep", "600"],
         "egress": [{"to": outside.ip, "port": 8081},
                    {"to": outside.ip, "port": 53, "protocol": "udp"},
                    {"to": "10.0.0.0/8", "port": host_port},
                    {"to": "172.16.0.0/12", "port": host_port},
                    {"to": "192.168.0.0/16", "port": host_port}]},
    ]});
    let path = m.dir.path().join("fw.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    m.ok(&["swarm", "deploy", "--config", path.to_str().unwrap()]);
    let hostile = container_id(&project, "hostile").expect("hostile container");
    let web = container_id(&project, "web").expect("web container");
    let gateway = container_network(&hostile, "Gateway");
    let web_ip = container_network(&web, "IPAddress");
    assert!(!gateway.is_empty() && !web_ip.is_empty());
    assert_ne!(
        container_network(&hostile, "NetworkID"),
        container_network(&web, "NetworkID"),
        "each decky has a network of its own"
    );

    // Connections made to a decky still arrive: the web decky answers on its
    // published port.
    let answer = wait_for(Duration::from_secs(15), || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", published)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/").then_some(buf)
    });
    assert!(answer.is_some(), "the published port answers");

    // The allow-list lets exactly its destination through.
    let allowed = format!("{}:8081", outside.ip);
    let page = wait_for(Duration::from_secs(15), || {
        fetch_from(&hostile, &allowed).ok()
    });
    assert_eq!(
        page.as_deref(),
        Some("outside\n"),
        "the egress entry reaches its destination"
    );

    // The attacker inside the decky tries everything else.
    let host_service = std::net::TcpListener::bind((gateway.as_str(), host_port))
        .expect("a host service on the decky's gateway address");
    let attempts = [
        (
            "the allowed host on another port",
            format!("{}:8082", outside.ip),
        ),
        (
            "a host service on its gateway address (inside its allow-list)",
            format!("{gateway}:{host_port}"),
        ),
        ("another decky", format!("{web_ip}:8080")),
        (
            "another decky's published port through the host",
            format!("{gateway}:{published}"),
        ),
    ];
    for (what, url) in &attempts {
        let got = fetch_from(&hostile, url);
        assert!(got.is_err(), "the decky reached {what} ({url}): {got:?}");
    }
    host_service.set_nonblocking(true).unwrap();
    assert!(
        host_service.accept().is_err(),
        "no connection from the decky reached the host's service"
    );
    // The web decky itself reaches no one either (not even the outside).
    assert!(fetch_from(&web, &allowed).is_err(), "web has no allow-list");
    // A UDP entry for port 53 of one host is the decky's resolver: its
    // lookups reach it (the engine's DNS forwards them from the decky's own
    // network); the web decky's, with no such entry, do not.
    let count = || {
        std::fs::read_to_string(&datagrams)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let _ = Command::new("docker")
        .args(["exec", &hostile, "nslookup", "example.com"])
        .output()
        .unwrap();
    let got = wait_for(Duration::from_secs(10), || (count() > 0).then_some(count()))
        .expect("the allowed resolver got the decky's lookup");
    assert!(
        docker_out(&["inspect", "--format", "{{json .HostConfig.Dns}}", &hostile])
            .contains(&outside.ip),
        "the allowed resolver is the decky's"
    );
    // The web decky asks a name of its own, so a late datagram of the
    // hostile decky's lookup (the engine's DNS may still be retrying it on
    // a loaded machine) is not taken for one of web's.
    let _ = Command::new("docker")
        .args(["exec", &web, "nslookup", "webleak.example", &outside.ip])
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let seen = std::fs::read_to_string(&datagrams).unwrap_or_default();
    assert!(
        !seen.lines().any(|l| l == "webleak"),
        "web's lookup to the same host was refused: {seen:?}"
    );
    // Each time the engine creates a network (any network: the agent's
    // next deploy, an operator's `docker network create`) it takes its
    // jump to DOCKER-USER out of FORWARD and puts it back; in between, a
    // bridge's own `-i br ! -o br -j ACCEPT` decides. Played here for
    // web's bridge alone (that ACCEPT put first, as in the gap): the safety
    // net in the `security` table still holds what web sends.
    let bridge = docker_out(&[
        "network",
        "inspect",
        "--format",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
        &container_network(&web, "NetworkID"),
    ])
    .trim()
    .to_string();
    assert!(bridge.starts_with("dn"), "web's bridge: {bridge:?}");
    let gap = EngineGap::open(&bridge);
    let _ = Command::new("docker")
        .args(["exec", &web, "nslookup", "webleak.example", &outside.ip])
        .output()
        .unwrap();
    let reached = fetch_from(&web, &allowed);
    std::thread::sleep(Duration::from_secs(2));
    drop(gap);
    let seen = std::fs::read_to_string(&datagrams).unwrap_or_default();
    assert!(
        !seen.lines().any(|l| l == "webleak"),
        "web's lookup passed while the engine's jump was out: {seen:?}"
    );
    assert!(
        reached.is_err(),
        "web reached the outside while the engine's jump was out: {reached:?}"
    );
    assert!(count() >= got);
    // No IPv6 to go around the IPv4 chain.
    assert_eq!(
        docker_out(&[
            "exec",
            &hostile,
            "cat",
            "/proc/sys/net/ipv6/conf/all/disable_ipv6"
        ])
        .trim(),
        "1",
        "the engine gives a decky's network no IPv6"
    );
    // A decky without a resolver in its allow-list resolves nothing: its
    // lookups go to an address that is never routed, from its own network.
    let lookup = Command::new("docker")
        .args(["exec", &web, "nslookup", "example.com"])
        .output()
        .unwrap();
    assert!(
        !lookup.status.success(),
        "a name lookup got an answer: {}",
        String::from_utf8_lossy(&lookup.stdout)
    );
    assert!(
        docker_out(&["inspect", "--format", "{{json .HostConfig.Dns}}", &web])
            .contains("192.0.2.53"),
        "lookups go to an address that is never routed"
    );

    // Counted: what the attacker tried shows in swarm status and /status.
    let st = wait_for(Duration::from_secs(20), || {
        let st = m.json(&["swarm", "status", "fw", "--json"]);
        let d = st[0]["status"]["deckies"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == "hostile")?
            .clone();
        let net = &d["observed"]["detail"]["network"];
        (net["forbidden"].as_u64()? >= attempts.len() as u64
            && net["egress_allowed"].as_u64()? >= 1)
            .then_some(st)
    })
    .unwrap_or_else(|| panic!("{}", m.ok(&["swarm", "status", "fw", "--json"])));
    assert_eq!(
        st[0]["status"]["containment"]["network"]["mode"], "own",
        "{}",
        st[0]["status"]["containment"]
    );

    // Another tool flushes the chains and drops the jumps to them, the
    // safety net's included (a firewall reload): the next observation puts
    // them back.
    let bridge_now = docker_out(&[
        "network",
        "inspect",
        "--format",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
        &format!("{project}_decky_hostile"),
    ]);
    let bridge_now = bridge_now.trim();
    let hostile_chain = format!("DECNET-{bridge_now}");
    for args in [
        vec!["-w", "-F", hostile_chain.as_str()],
        vec![
            "-w",
            "-D",
            "DOCKER-USER",
            "-i",
            bridge_now,
            "-j",
            hostile_chain.as_str(),
        ],
        vec!["-w", "-t", "security", "-F", hostile_chain.as_str()],
        vec![
            "-w",
            "-t",
            "security",
            "-D",
            "FORWARD",
            "-i",
            bridge_now,
            "-j",
            hostile_chain.as_str(),
        ],
    ] {
        assert!(
            Command::new("iptables")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    let other_port = format!("{}:8082", outside.ip);
    assert!(
        fetch_from(&hostile, &other_port).is_ok(),
        "with its rules gone the decky gets out (the attack this guards against)"
    );
    m.ok(&["swarm", "status", "fw", "--json"]);
    assert!(
        fetch_from(&hostile, &other_port).is_err(),
        "its rules are back after an observation"
    );

    // After a reboot the chains are gone and the engine restarts the
    // containers before the agent runs: `hold-networks` (run by
    // decnet-decky-firewall.service before docker.service) rebuilds them
    // from what the agent saved, the allow-list included.
    decnet_e2e::docker::remove_decky_chain(bridge_now);
    assert!(
        fetch_from(&hostile, &other_port).is_ok(),
        "with its rules gone the decky gets out"
    );
    let held = Command::new(decnet_e2e::bin("decnet-agent"))
        .args(["hold-networks", "--state-dir"])
        .arg(m.dir.path().join("fw-state"))
        .output()
        .unwrap();
    assert!(
        held.status.success(),
        "{}",
        String::from_utf8_lossy(&held.stderr)
    );
    assert!(
        String::from_utf8_lossy(&held.stdout).contains("2 decky network(s) held"),
        "{}",
        String::from_utf8_lossy(&held.stdout)
    );
    assert!(
        fetch_from(&hostile, &other_port).is_err(),
        "rebuilt before any agent looked"
    );
    assert_eq!(
        fetch_from(&hostile, &allowed).ok().as_deref(),
        Some("outside\n"),
        "its allow-list rebuilt with it"
    );

    // A teardown removes the decky's network and its chain.
    let bridge = docker_out(&[
        "network",
        "inspect",
        "--format",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
        &format!("{project}_decky_hostile"),
    ]);
    let chain = format!("DECNET-{}", bridge.trim());
    let chain_exists = || {
        Command::new("iptables")
            .args(["-w", "-S", &chain])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(chain_exists(), "{chain} holds the hostile decky");
    m.ok(&["swarm", "teardown", "fw", "--decky", "hostile"]);
    assert!(!chain_exists(), "{chain} is gone with its decky");
    assert!(
        docker_out(&["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .all(|n| n != format!("{project}_decky_hostile")),
        "its network is gone"
    );
    m.ok(&["swarm", "teardown", "fw"]);
}
