//! Real hosts: the Debian packages installed on Debian bookworm containers
//! that boot systemd as PID 1, and a fleet of them (one master, two
//! workers) driven through the units an operator gets, on an internal Docker
//! network this test creates (no traffic leaves it).
//!
//! The image is built once from Debian's package registry
//! (`tests/systemd-hosts/build-image.sh`: debootstrap + `docker import`,
//! cached by its tag). The containers get `CAP_SYS_ADMIN` (not
//! `--privileged`): without it systemd cannot build the units' mount
//! namespaces and silently runs them without `ProtectSystem=` and friends,
//! which would hide exactly what this test is for (the hardened units).
//! Skipped, saying so, only where no Docker engine answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const IMAGE: &str = "decnet-e2e-bookworm-systemd:1";
/// The master's CLI as the packaged daemon's user, on its state.
const DECNET: &str = "runuser -u decnet -- env DECNET_HOME=/var/lib/decnet/master decnet";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether to run: a Docker engine answers (else skipped, saying so), and
/// the test image exists (built here on first use).
fn ready() -> bool {
    if !decnet_e2e::docker::available() {
        decnet_e2e::skip::missing("!!! no Docker engine: the systemd-host tests are SKIPPED");
        return false;
    }
    let out = Command::new(workspace().join("tests/systemd-hosts/build-image.sh"))
        .arg(IMAGE)
        .output()
        .expect("run build-image.sh");
    assert!(
        out.status.success(),
        "building the test image failed:\n{}",
        text(&out)
    );
    true
}

/// A private, internal Docker network (removed on drop, after its hosts).
struct Network(String);

impl Network {
    fn create(tag: &str) -> Network {
        let name = format!("decnet-sd-{}-{tag}", std::process::id());
        let _ = docker(&["network", "rm", &name]);
        let out = docker(&["network", "create", "--internal", &name]);
        assert!(out.status.success(), "network create:\n{}", text(&out));
        Network(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

static HOSTS: AtomicUsize = AtomicUsize::new(0);

/// One container booted with systemd as PID 1 (removed on drop).
struct Host {
    container: String,
    name: String,
}

impl Host {
    /// Start `name` on `net` (reachable there as `name`); [`Host::booted`]
    /// waits for systemd.
    fn start(net: &Network, name: &str) -> Host {
        let container = format!("{}-{name}-{}", net.0, HOSTS.fetch_add(1, Ordering::Relaxed));
        let out = docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            name,
            "--network",
            &net.0,
            "--network-alias",
            name,
            "--cap-add",
            "SYS_ADMIN",
            "--stop-signal",
            "SIGRTMIN+3",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            IMAGE,
        ]);
        assert!(out.status.success(), "docker run {name}:\n{}", text(&out));
        Host {
            container,
            name: name.to_string(),
        }
    }

    /// Wait until systemd has finished booting.
    fn booted(self) -> Host {
        self.wait_until(
            "systemctl is-system-running | grep -Eq '^(running|degraded)$'",
            Duration::from_secs(90),
            "systemd to finish booting",
        );
        self
    }

    fn sh(&self, cmd: &str) -> Output {
        docker(&["exec", &self.container, "sh", "-c", cmd])
    }

    /// Run `cmd`; its stdout, or a panic with everything it printed.
    fn ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        assert!(
            out.status.success(),
            "on {}: `{cmd}` failed:\n{}",
            self.name,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `cmd` until it succeeds; its stdout.
    fn wait_until(&self, cmd: &str, timeout: Duration, what: &str) -> String {
        let end = Instant::now() + timeout;
        loop {
            let out = self.sh(cmd);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > end {
                panic!(
                    "on {}: gave up waiting for {what} (`{cmd}`):\n{}\n--- journal\n{}",
                    self.name,
                    text(&out),
                    self.journal("")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn copy_in(&self, from: &Path, to: &str) {
        let out = docker(&[
            "cp",
            &from.display().to_string(),
            &format!("{}:{to}", self.container),
        ]);
        assert!(out.status.success(), "docker cp:\n{}", text(&out));
    }

    fn write(&self, path: &str, content: &str, mode: u32) {
        let tmp = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(tmp.path(), content).expect("write");
        self.copy_in(tmp.path(), path);
        self.ok(&format!("chmod {mode:o} {path}"));
    }

    /// The journal of `units` (space-separated; empty: everything).
    fn journal(&self, units: &str) -> String {
        let sel: String = units
            .split_whitespace()
            .map(|u| format!(" -u {u}"))
            .collect();
        String::from_utf8_lossy(
            &self
                .sh(&format!("journalctl --no-pager{sel} | tail -200"))
                .stdout,
        )
        .into_owned()
    }

    /// The executable of a unit's main process.
    fn main_exe(&self, unit: &str) -> String {
        self.ok(&format!(
            "readlink -f /proc/$(systemctl show -p MainPID --value {unit})/exe"
        ))
        .trim()
        .to_string()
    }

    /// Reboot the container (systemd halts on SIGRTMIN+3), wait for the boot.
    fn restart(self) -> Host {
        let out = docker(&["restart", &self.container]);
        assert!(out.status.success(), "docker restart:\n{}", text(&out));
        self.booted()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- journal of {} (decnet units)\n{}",
                self.name,
                self.journal("decnet-master decnet-agent decnet-updater decnet-forwarder")
            );
        }
        let _ = docker(&["rm", "-f", &self.container]);
    }
}

fn stat(host: &Host, path: &str) -> String {
    host.ok(&format!("stat -c '%U %a' {path}"))
        .trim()
        .to_string()
}

/// The packages on a fresh bookworm, both on one host (a lab box that is
/// master and worker): users, directories and modes, units enabled and
/// waiting for their bundles with a clear message, a working master and
/// agent once set up, then remove (keys stay) and purge (all gone, the
/// other package's state untouched).
#[test]
fn packages_install_wait_for_their_bundles_and_remove_and_purge_cleanly() {
    if !ready() {
        return;
    }
    let debs = decnet_e2e::DebianPackages::build();
    let net = Network::create("pkg");
    let host = Host::start(&net, "solo").booted();
    host.copy_in(&debs.master, "/tmp/decnet.deb");
    host.copy_in(&debs.worker, "/tmp/decnet-worker.deb");
    let out = host.ok("dpkg -i /tmp/decnet.deb /tmp/decnet-worker.deb 2>&1");
    assert!(out.contains("waits for the CA"), "{out}");
    assert!(
        out.contains("decnet-agent.service is enabled and waits for its bundle"),
        "{out}"
    );
    host.ok("id -u decnet");
    assert_eq!(stat(&host, "/var/lib/decnet"), "root 755");
    assert_eq!(stat(&host, "/var/lib/decnet/master"), "decnet 700");
    assert_eq!(stat(&host, "/etc/decnet/agent"), "root 700");
    assert_eq!(stat(&host, "/etc/decnet/updater"), "root 700");
    assert_eq!(stat(&host, "/var/lib/decnet/agent"), "root 700");
    for b in ["decnet", "decnet-agent", "decnet-updater"] {
        host.ok(&format!("{b} --version"));
    }
    // Enabled, and waiting: a start is skipped by its condition.
    for u in ["decnet-master", "decnet-agent", "decnet-updater"] {
        assert_eq!(
            host.ok(&format!("systemctl is-enabled {u}")).trim(),
            "enabled"
        );
        host.ok(&format!("systemctl start {u}"));
        assert_eq!(
            host.ok(&format!(
                "systemctl show -p ConditionResult -p ActiveState --value {u}"
            ))
            .split_whitespace()
            .collect::<Vec<_>>(),
            ["inactive", "no"],
            "{u} must wait for its bundle"
        );
    }

    // Set up as the post-install message says: both come up.
    host.ok(&format!("{DECNET} ca init --sans solo"));
    host.ok("systemctl start decnet-master");
    let token = host.ok(&format!(
        "{DECNET} swarm token create --host solo --address solo --updater"
    ));
    host.write("/root/solo.token", token.trim(), 0o600);
    host.ok("decnet-agent join --master solo --token-file /root/solo.token --bundle-dir /etc/decnet/agent --host solo");
    host.ok("sed -i 's|^DECNET_AGENT_ARGS=.*|DECNET_AGENT_ARGS=\"--driver process --heartbeat-interval 2\"|' /etc/default/decnet");
    host.ok("systemctl start decnet-agent");
    host.wait_until(
        &format!("{DECNET} swarm list | grep -E '^solo +solo:8765 +active'"),
        Duration::from_secs(30),
        "the agent's heartbeat",
    );
    assert_eq!(
        stat(&host, "/var/lib/decnet/master"),
        "decnet 700",
        "still the master's"
    );

    // Deckies running (they outlive the agent's unit on purpose)...
    let config = std::fs::read_to_string(workspace().join("examples/deployment.json")).unwrap();
    host.write("/tmp/deployment.json", &config, 0o644);
    host.ok(&format!(
        "{DECNET} swarm deploy --config /tmp/deployment.json --host solo"
    ));
    assert_eq!(
        host.ok("pgrep -c -f '^sleep 86400'").trim(),
        "2",
        "the deckies run"
    );

    // Remove keeps the keys and the CA; purge takes each package's own.
    // A removal ends the deckies too.
    host.ok("dpkg -r decnet-worker");
    assert!(!host.sh("systemctl is-active decnet-agent").status.success());
    assert!(
        !host.sh("pgrep -f '^sleep 86400'").status.success(),
        "a decky survived the package's removal: {}",
        host.sh("ps -eo pid,uid,args").stdout.escape_ascii()
    );
    host.ok("test -f /etc/decnet/agent/worker.key && test ! -e /usr/bin/decnet-agent");
    host.ok("dpkg -P decnet-worker");
    host.ok("test ! -e /etc/decnet && test ! -e /opt/decnet && test ! -e /var/lib/decnet/agent");
    host.ok("test -f /var/lib/decnet/master/ca/ca.key");
    assert_eq!(
        host.ok("systemctl is-active decnet-master").trim(),
        "active"
    );
    host.ok("dpkg -r decnet");
    assert!(
        !host
            .sh("systemctl is-active decnet-master")
            .status
            .success()
    );
    host.ok("test -f /var/lib/decnet/master/ca/ca.key");
    host.ok("dpkg -P decnet");
    host.ok("test ! -e /var/lib/decnet");
    assert!(!host.sh("id decnet").status.success(), "the user is gone");
    assert_eq!(
        host.ok("systemctl list-unit-files 'decnet*' --no-legend | wc -l")
            .trim(),
        "0"
    );
}

/// A release directory on the master: the agent (and maybe an updater) in
/// `bin/`, readable by the `decnet` user.
fn release(master: &Host, name: &str, agent: &Path, updater: Option<&Path>) -> String {
    let dir = format!("/tmp/releases/{name}");
    master.ok(&format!("mkdir -p {dir}/bin"));
    master.copy_in(agent, &format!("{dir}/bin/decnet-agent"));
    if let Some(u) = updater {
        master.copy_in(u, &format!("{dir}/bin/decnet-updater"));
    }
    master.ok(&format!(
        "chmod -R a+rX /tmp/releases && chmod 755 {dir}/bin/*"
    ));
    dir
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

/// The decky lines of `swarm status HOST` in state `running`.
fn running_deckies(master: &Host, host: &str) -> usize {
    let out = master.sh(&format!("{DECNET} swarm status {host}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("running"))
        .count()
}

/// The messages the master's listener wrote for `cn`.
fn lines_from(master: &Host, cn: &str) -> Vec<String> {
    let out = master.sh("cat /var/lib/decnet/master/logs/fleet.json 2>/dev/null");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["peer_cn"] == cn)
        .filter_map(|r| r["msg"].as_str().map(String::from))
        .collect()
}

fn append_lines(host: &Host, prefix: &str, range: std::ops::Range<usize>) {
    let lines: String = range.map(|i| format!("{prefix} line {i}\n")).collect();
    let tmp = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(tmp.path(), lines).expect("write");
    host.copy_in(tmp.path(), "/tmp/lines");
    host.ok("cat /tmp/lines >> /var/log/decnet-test.log");
}

fn wait_lines(master: &Host, cn: &str, prefix: &str, n: usize) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let got = lines_from(master, cn);
        let want: Vec<String> = (0..n).map(|i| format!("{prefix} line {i}")).collect();
        if want.iter().all(|w| got.contains(w)) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{cn}: {} of {n} lines arrived; missing e.g. {:?}",
            want.iter().filter(|w| got.contains(w)).count(),
            want.iter().find(|w| !got.contains(w))
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn fingerprints(master: &Host, host: &str) -> (String, String) {
    let v: serde_json::Value =
        serde_json::from_str(&master.ok(&format!("{DECNET} swarm show {host} --json")))
            .expect("swarm show --json");
    (
        v["agent_fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        v["updater_fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// A master and two workers from the packages, driven as an operator
/// would: joins, heartbeats, deploys, updates through systemd (a broken one
/// reverted, a manual rollback), a forced renewal of agent and updater under
/// the hardened units, a self-update and one whose updater crash-loops, a
/// host reboot, every log line credited by CN, and a decommission.
#[test]
fn a_fleet_of_systemd_hosts_installed_from_the_packages() {
    if !ready() {
        return;
    }
    let debs = decnet_e2e::DebianPackages::build();
    let net = Network::create("fleet");
    let master = Host::start(&net, "master");
    let w1 = Host::start(&net, "w1");
    let w2 = Host::start(&net, "w2");
    let master = master.booted();
    let w1 = w1.booted();
    let w2 = w2.booted();

    // --- The master: package, CA, daemon unit.
    master.copy_in(&debs.master, "/tmp/decnet.deb");
    master.ok("dpkg -i /tmp/decnet.deb");
    master.ok(&format!("{DECNET} ca init --sans master"));
    master.ok("systemctl start decnet-master");
    master.wait_until(
        "systemctl is-active decnet-master",
        Duration::from_secs(20),
        "the master unit",
    );

    // --- The workers: package, token join (both daemons, one token), units.
    for w in [&w1, &w2] {
        let token = master.ok(&format!(
            "{DECNET} swarm token create --host {0} --address {0} --updater",
            w.name
        ));
        w.copy_in(&debs.worker, "/tmp/decnet-worker.deb");
        w.ok("dpkg -i /tmp/decnet-worker.deb");
        w.write("/root/join.token", token.trim(), 0o600);
        for d in ["agent", "updater"] {
            w.ok(&format!(
                "decnet-{d} join --master master --token-file /root/join.token --bundle-dir /etc/decnet/{d} --host {}",
                w.name
            ));
        }
        // The operator's settings: process deckies, a quick heartbeat for
        // the test, the forwarder pointed at the master's listener.
        w.ok("sed -i -e 's|^DECNET_AGENT_ARGS=.*|DECNET_AGENT_ARGS=\"--driver process --heartbeat-interval 2\"|' \
              -e 's|^DECNET_MASTER=.*|DECNET_MASTER=master:6514|' \
              -e 's|^DECNET_FORWARD_LOG=.*|DECNET_FORWARD_LOG=/var/log/decnet-test.log|' /etc/default/decnet");
        w.ok("touch /var/log/decnet-test.log && systemctl enable --now decnet-agent decnet-updater decnet-forwarder");
    }
    for w in ["w1", "w2"] {
        master.wait_until(
            &format!("{DECNET} swarm list | grep -E '^{w} +{w}:8765 +active'"),
            Duration::from_secs(30),
            "heartbeats from both workers",
        );
    }

    // --- A deploy to the whole fleet.
    let config = std::fs::read_to_string(workspace().join("examples/deployment.json")).unwrap();
    master.write("/tmp/deployment.json", &config, 0o644);
    let out = master.ok(&format!(
        "{DECNET} swarm deploy --config /tmp/deployment.json"
    ));
    assert!(
        out.matches("done: 2/2 deckies running").count() == 2,
        "{out}"
    );

    // --- An update of w1's agent through systemd (--agent-control systemd).
    let tmp = tempfile::tempdir().unwrap();
    let agent = decnet_e2e::bin("decnet-agent");
    let updater = decnet_e2e::bin("decnet-updater");
    let r1 = release(&master, "r1", &agent, None);
    let out = master.ok(&format!(
        "{DECNET} swarm update --release {r1} --host w1 --release-version 1.0.1"
    ));
    assert!(out.contains("new release is live and healthy"), "{out}");
    let slot1 = w1.ok("readlink -f /opt/decnet/current").trim().to_string();
    assert!(slot1.starts_with("/opt/decnet/releases/"), "{slot1}");
    assert_eq!(
        w1.main_exe("decnet-agent"),
        format!("{slot1}/bin/decnet-agent")
    );
    assert_eq!(
        running_deckies(&master, "w1"),
        2,
        "the deckies outlived the agent's restart"
    );

    // --- A broken update: reverted, the running release untouched.
    let broken = script(
        tmp.path(),
        "broken-agent",
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'decnet-agent 99.0-broken'; exit 0; fi\necho 'broken agent: cannot start' >&2\nexit 3\n",
    );
    let rb = release(&master, "broken", &broken, None);
    let out = master.sh(&format!(
        "{DECNET} swarm update --release {rb} --host w1 --release-version 1.0.2"
    ));
    assert!(
        !out.status.success(),
        "a broken release must fail:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("rolled_back") || text(&out).contains("reverted"),
        "{}",
        text(&out)
    );
    assert_eq!(w1.ok("readlink -f /opt/decnet/current").trim(), slot1);
    w1.wait_until(
        "systemctl is-active decnet-agent",
        Duration::from_secs(20),
        "the reverted agent",
    );
    assert_eq!(
        w1.main_exe("decnet-agent"),
        format!("{slot1}/bin/decnet-agent")
    );

    // --- Another good release, then a manual rollback to r1.
    let r2 = release(&master, "r2", &agent, None);
    master.ok(&format!(
        "{DECNET} swarm update --release {r2} --host w1 --release-version 1.0.3"
    ));
    let slot2 = w1.ok("readlink -f /opt/decnet/current").trim().to_string();
    assert_ne!(slot2, slot1);
    let out = master.ok(&format!("{DECNET} swarm rollback w1"));
    assert!(
        out.contains("rolled_back") || out.contains("rolled back"),
        "{out}"
    );
    assert_eq!(w1.ok("readlink -f /opt/decnet/current").trim(), slot1);
    w1.wait_until(
        &format!("test \"$(readlink -f /proc/$(systemctl show -p MainPID --value decnet-agent)/exe)\" = {slot1}/bin/decnet-agent"),
        Duration::from_secs(20),
        "the agent to run the rolled-back release",
    );

    // --- A forced renewal of both daemons, under the hardened units (their
    // bundle directories are the only writable part of /etc).
    let (agent_fp, updater_fp) = fingerprints(&master, "w1");
    let out = master.ok(&format!("{DECNET} swarm renew w1"));
    assert!(out.contains("the updater is renewing"), "{out}");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (a, u) = fingerprints(&master, "w1");
        if a != agent_fp && u != updater_fp {
            break;
        }
        assert!(Instant::now() < end, "no renewal: agent {a}, updater {u}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let journal = w1.journal("decnet-agent decnet-updater");
    assert_eq!(
        journal
            .matches("certificate renewed and now in use")
            .count(),
        2,
        "{journal}"
    );
    // The hardening was in force: both see / read-only.
    for u in ["decnet-agent", "decnet-updater"] {
        let root_opts = w1.ok(&format!(
            "awk '$5 == \"/\" {{ print $6 }}' /proc/$(systemctl show -p MainPID --value {u})/mountinfo"
        ));
        assert!(
            root_opts.split(',').next() == Some("ro"),
            "{u}: / is not read-only ({root_opts}): the unit ran unhardened"
        );
    }
    // Still driven after the renewal: a deploy and an update.
    let out = master.ok(&format!(
        "{DECNET} swarm deploy --config /tmp/deployment.json --host w1"
    ));
    assert!(out.contains("done: 2/2 deckies running"), "{out}");
    // --- From here through the self-update, a local process on w1 (as
    // nobody) tries all the time to take the agent's and the updater's
    // ports; systemd holds them (decnet-*.socket) and the daemons hand
    // them on, so it never gets one and both updates go through.
    w1.write(
        "/tmp/squat.pl",
        "use IO::Socket::INET;\n\
         my ($n, @kept) = (0);\n\
         my $end = time + 300;\n\
         while (time < $end && ! -e '/tmp/squat.stop') {\n\
           for my $p (8765, 8766) {\n\
             $n++;\n\
             my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0', LocalPort => $p,\n\
               Proto => 'tcp', Listen => 5, ReuseAddr => 1);\n\
             if ($s) { print \"SQUATTED $p\\n\"; push @kept, $s; }\n\
           }\n\
           select(undef, undef, undef, 0.001);\n\
         }\n\
         print \"tries $n\\n\";\n",
        0o644,
    );
    w1.ok("setsid runuser -u nobody -- perl /tmp/squat.pl >/tmp/squat.log 2>&1 </dev/null &");
    let r3 = release(&master, "r3", &agent, Some(&updater));
    let out = master.ok(&format!(
        "{DECNET} swarm update --release {r3} --host w1 --release-version 1.0.4"
    ));
    assert!(out.contains("new release is live and healthy"), "{out}");

    // --- A self-update of the updater.
    let out = master.ok(&format!(
        "{DECNET} swarm update --release {r3} --host w1 --release-version 1.0.5 --include-self"
    ));
    assert!(out.contains("updater replaced"), "{out}");
    let good_updater = w1
        .ok("readlink -f /opt/decnet/updater/current")
        .trim()
        .to_string();
    assert_eq!(
        w1.main_exe("decnet-updater"),
        format!("{good_updater}/bin/decnet-updater")
    );
    w1.ok("test ! -e /opt/decnet/updater/journal.json");
    w1.ok("touch /tmp/squat.stop");
    let squat = w1.wait_until(
        "grep tries /tmp/squat.log && cat /tmp/squat.log",
        Duration::from_secs(20),
        "the squatter's report",
    );
    assert!(!squat.contains("SQUATTED"), "a port was taken: {squat}");
    let tries: u64 = squat
        .lines()
        .find_map(|l| l.strip_prefix("tries "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(tries > 100, "the squatter barely tried: {squat}");

    // --- A self-update whose updater crash-loops: systemd restarts it
    // through the launcher, which falls back to the previous updater; that
    // one reverts, and the master says so.
    let crashing = script(
        tmp.path(),
        "crashing-updater",
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'decnet-updater 99.0-crashes'; exit 0; fi\necho 'crashing updater: cannot start' >&2\nexit 3\n",
    );
    let rc = release(&master, "crashes", &agent, Some(&crashing));
    let out = master.sh(&format!(
        "{DECNET} swarm update --release {rc} --host w1 --release-version 1.0.6 --include-self"
    ));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the new updater did not come up"),
        "{}",
        text(&out)
    );
    w1.wait_until(
        "test ! -e /opt/decnet/updater/journal.json && systemctl is-active decnet-updater",
        Duration::from_secs(60),
        "the fallback updater",
    );
    assert_eq!(
        w1.ok("readlink -f /opt/decnet/updater/current").trim(),
        good_updater
    );
    assert_eq!(
        w1.main_exe("decnet-updater"),
        format!("{good_updater}/bin/decnet-updater")
    );
    let journal = w1.journal("decnet-updater");
    assert!(
        journal.contains("crashing updater: cannot start"),
        "{journal}"
    );
    assert!(journal.contains("reverting the self-update"), "{journal}");
    master.ok(&format!("{DECNET} swarm releases w1"));

    // --- Logs from both workers, and a reboot of w1 between two batches:
    // units come back, deckies run again, the forwarder resumes, no line lost.
    append_lines(&w1, "w1", 0..50);
    append_lines(&w2, "w2", 0..50);
    let w1 = w1.restart();
    for u in ["decnet-agent", "decnet-updater", "decnet-forwarder"] {
        w1.wait_until(
            &format!("systemctl is-active {u}"),
            Duration::from_secs(30),
            "the units after the reboot",
        );
    }
    let end = Instant::now() + Duration::from_secs(60);
    while running_deckies(&master, "w1") != 2 {
        assert!(
            Instant::now() < end,
            "deckies after the reboot:\n{}",
            master.sh(&format!("{DECNET} swarm status w1")).stdout.len()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    append_lines(&w1, "w1", 50..100);
    wait_lines(&master, "w1", "w1", 100);
    wait_lines(&master, "w2", "w2", 50);
    let w1_lines = lines_from(&master, "w1");
    assert!(
        w1_lines.iter().all(|l| !l.starts_with("w2 ")),
        "no w2 line credited to w1"
    );

    // --- Decommission w2: new connections are refused at once, and its
    // open one is closed as soon as the master's revocation list has it
    // (within a second, wiki/Log-Relay.md).
    master.ok(&format!("{DECNET} swarm decommission w2 --yes"));
    std::thread::sleep(Duration::from_secs(2));
    append_lines(&w2, "w2", 50..60);
    std::thread::sleep(Duration::from_secs(8));
    let got = lines_from(&master, "w2");
    assert!(
        !(50..60).any(|i| got.contains(&format!("w2 line {i}"))),
        "a decommissioned host's lines must be refused: {:?}",
        &got[got.len().saturating_sub(5)..]
    );
    let journal = master.journal("decnet-master");
    assert!(
        journal.contains("open connection closed: its certificate was revoked")
            && journal.contains("peer_cn=w2"),
        "{journal}"
    );
    assert!(
        master
            .sh(&format!("{DECNET} swarm status w2"))
            .status
            .code()
            != Some(0),
        "w2 is no longer driven"
    );
    let listing = master.ok(&format!("{DECNET} swarm list"));
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("w2 ") && l.contains("decommissioned")),
        "{listing}"
    );
    // w1 is untouched.
    append_lines(&w1, "w1", 100..110);
    wait_lines(&master, "w1", "w1", 110);
}
