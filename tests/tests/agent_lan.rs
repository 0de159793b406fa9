//! Deckies as hosts on the LAN, against the real Docker engine: a veth pair
//! whose one end (in this test's own network namespace) plays another host
//! on the segment and whose other end is the macvlan parent. Deckies get
//! their own addresses (and MACs), answer from the namespace, keep their
//! addresses across a redeploy, and the last teardown removes the network.
//! A config written for another interface and subnet is relocalised onto the
//! worker's. Traffic stays inside the test's veth pair and namespace.

use std::process::Command;
use std::time::Duration;

use decnet_e2e::docker::{BUSYBOX_IMAGE, ProjectCleanup, available, build_busybox_image};
use decnet_e2e::{Agent, MasterHome, wait_for};

/// A veth pair and a namespace holding one end; removed on drop.
struct Segment {
    /// The worker-side end (the macvlan parent).
    parent: String,
    /// The namespace with the other end.
    netns: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Segment {
    /// `peer` is the address (with prefix) of the namespace end; `worker`
    /// an address for the worker end, if any.
    fn new(peer: &str, worker: Option<&str>) -> Result<Segment, String> {
        let tag = decnet_pki::random_hex(3);
        let seg = Segment {
            parent: format!("dl{tag}a"),
            netns: format!("dl-{tag}"),
        };
        let peer_end = format!("dl{tag}b");
        ip(&["netns", "add", &seg.netns])?;
        ip(&[
            "link",
            "add",
            &seg.parent,
            "type",
            "veth",
            "peer",
            "name",
            &peer_end,
        ])?;
        ip(&["link", "set", &peer_end, "netns", &seg.netns])?;
        ip(&["link", "set", &seg.parent, "up"])?;
        if let Some(w) = worker {
            ip(&["addr", "add", w, "dev", &seg.parent])?;
        }
        ip(&["-n", &seg.netns, "addr", "add", peer, "dev", &peer_end])?;
        ip(&["-n", &seg.netns, "link", "set", &peer_end, "up"])?;
        ip(&["-n", &seg.netns, "link", "set", "lo", "up"])?;
        Ok(seg)
    }

    /// Connect from the namespace to `addr:8080` and read the answer.
    fn ask(&self, addr: &str) -> Option<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "busybox",
                "nc",
                "-w",
                "3",
                addr,
                "8080",
            ])
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    /// The MAC the namespace learnt for `addr`.
    fn neighbour_mac(&self, addr: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "neigh", "show", addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.parent]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

fn ready() -> bool {
    if !available() {
        decnet_e2e::skip::missing(
            "\n!!!!!!!!\n!!! NO DOCKER ENGINE: LAN deckies were NOT tested against a real engine here\n!!!!!!!!\n",
        );
        return false;
    }
    if !rustix::process::geteuid().is_root() {
        decnet_e2e::skip::missing(
            "\n!!! not root: cannot create veth pairs and namespaces; LAN deckies NOT tested\n",
        );
        return false;
    }
    if let Err(e) = build_busybox_image() {
        decnet_e2e::skip::missing(&format!(
            "\n!!! cannot build the test image ({e}); LAN deckies NOT tested\n"
        ));
        return false;
    }
    true
}

/// A decky that answers `hello-<name>` on port 8080.
fn decky(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut d = serde_json::json!({
        "name": name, "image": BUSYBOX_IMAGE,
        "command": ["sh", "-c", "while true; do echo hello-$DECNET_DECKY | nc -l -p 8080; done"],
    });
    if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    d
}

fn statuses(m: &MasterHome, host: &str) -> Vec<serde_json::Value> {
    let st = m.json(&["swarm", "status", host, "--json"]);
    st[0]["status"]["deckies"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn address_of(m: &MasterHome, host: &str, name: &str) -> String {
    statuses(m, host)
        .iter()
        .find(|d| d["name"] == name)
        .and_then(|d| d["address"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{name} has no address: {:?}", statuses(m, host)))
}

fn network_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["network", "inspect", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn subnet_octet() -> u8 {
    // 10.213.X.0/24 and 10.214.X.0/24: a fresh /24 per test run.
    u8::from_str_radix(&decnet_pki::random_hex(1), 16).unwrap_or(7) % 200 + 20
}

#[test]
fn lan_deckies_get_their_own_addresses_and_answer_from_the_segment() {
    if !ready() {
        return;
    }
    let x = subnet_octet();
    let seg = Segment::new(&format!("10.213.{x}.200/24"), None).expect("veth pair and namespace");
    let m = MasterHome::new();
    m.enroll("lan1");
    let project = format!("dl{}", decnet_pki::random_hex(3));
    let _cleanup = ProjectCleanup(project.clone());
    let _agent = Agent::start(
        &m,
        "lan1",
        &m.dir.path().join("lan1-state"),
        &["--driver", "compose", "--compose-project", &project],
    );
    let mac = format!("02:42:0a:d5:{x:02x}:0a");
    let cfg = serde_json::json!({
        "version": 2,
        "network": {"mode": "macvlan", "parent": seg.parent, "subnet": format!("10.213.{x}.0/24"),
                    "gateway": format!("10.213.{x}.1"), "range": format!("10.213.{x}.64/27")},
        "deckies": [
            decky("alpha", serde_json::json!({"address": format!("10.213.{x}.10"), "mac": mac})),
            decky("beta", serde_json::json!({})),
        ]
    });
    let path = m.dir.path().join("lan.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();

    // The plan first: addresses, no relocalisation, nothing started.
    let plan = m.json(&[
        "swarm",
        "deploy",
        "--config",
        path.to_str().unwrap(),
        "--dry-run",
    ]);
    let p = &plan[0]["plan"];
    assert_eq!(p["addresses"]["alpha"], format!("10.213.{x}.10"), "{plan}");
    assert!(p["relocation"].is_null(), "{plan}");
    assert_eq!(p["compose"]["networks"]["decnet_lan"]["driver"], "macvlan");
    assert!(statuses(&m, "lan1").is_empty(), "a dry run starts nothing");

    let out = m.ok(&["swarm", "deploy", "--config", path.to_str().unwrap()]);
    assert!(out.contains(&format!("at 10.213.{x}.10")), "{out}");
    let alpha = address_of(&m, "lan1", "alpha");
    let beta = address_of(&m, "lan1", "beta");
    assert_eq!(alpha, format!("10.213.{x}.10"));
    let b_last: u8 = beta.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        beta.starts_with(&format!("10.213.{x}.")) && (64..96).contains(&b_last),
        "beta allocated from the range: {beta}"
    );
    let st = statuses(&m, "lan1");
    assert!(
        st.iter().all(|d| d["interface"] == seg.parent.as_str()),
        "{st:?}"
    );

    // Both answer from the other host on the segment, at their own addresses.
    for (name, addr) in [("alpha", &alpha), ("beta", &beta)] {
        let answer = wait_for(Duration::from_secs(20), || seg.ask(addr));
        assert_eq!(
            answer.as_deref(),
            Some(format!("hello-{name}").as_str()),
            "{addr}"
        );
    }
    // alpha has the MAC the config gave it.
    assert!(
        seg.neighbour_mac(&alpha).contains(&mac),
        "{}",
        seg.neighbour_mac(&alpha)
    );

    // A redeploy (after a teardown of beta) keeps the addresses.
    m.ok(&["swarm", "teardown", "lan1", "--decky", "beta"]);
    assert!(
        network_exists(&format!("{project}_lan")),
        "alpha still uses it"
    );
    m.ok(&["swarm", "deploy", "--config", path.to_str().unwrap()]);
    assert_eq!(address_of(&m, "lan1", "beta"), beta);
    assert_eq!(address_of(&m, "lan1", "alpha"), alpha);
    let answer = wait_for(Duration::from_secs(20), || seg.ask(&beta));
    assert_eq!(answer.as_deref(), Some("hello-beta"));

    // The last teardown removes the network.
    m.ok(&["swarm", "teardown", "lan1"]);
    assert!(
        !network_exists(&format!("{project}_lan")),
        "the LAN network outlived its deckies"
    );
}

#[test]
fn a_config_for_another_interface_and_subnet_is_relocalised_onto_the_worker() {
    if !ready() {
        return;
    }
    let y = subnet_octet();
    let seg = Segment::new(
        &format!("10.214.{y}.200/24"),
        Some(&format!("10.214.{y}.2/24")),
    )
    .expect("veth pair and namespace");
    let m = MasterHome::new();
    m.enroll("lan2");
    let project = format!("dl{}", decnet_pki::random_hex(3));
    let _cleanup = ProjectCleanup(project.clone());
    let _agent = Agent::start(
        &m,
        "lan2",
        &m.dir.path().join("lan2-state"),
        &[
            "--driver",
            "compose",
            "--compose-project",
            &project,
            "--decky-interface",
            &seg.parent,
        ],
    );
    // Written for another site: an interface this worker lacks, another subnet.
    let cfg = serde_json::json!({
        "version": 2,
        "network": {"mode": "macvlan", "parent": "ens99", "subnet": "10.0.0.0/24",
                    "gateway": "10.0.0.1", "range": "10.0.0.64/27"},
        "deckies": [
            decky("alpha", serde_json::json!({"address": "10.0.0.10"})),
            // Maps onto the worker's own address: re-allocated from the range.
            decky("clash", serde_json::json!({"address": "10.0.0.2"})),
        ]
    });
    let path = m.dir.path().join("foreign.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();

    let plan = m.json(&[
        "swarm",
        "deploy",
        "--config",
        path.to_str().unwrap(),
        "--dry-run",
    ]);
    let r = &plan[0]["plan"]["relocation"];
    assert_eq!(r["from_parent"], "ens99", "{plan}");
    assert_eq!(r["to_parent"], seg.parent.as_str());
    assert_eq!(r["to_subnet"], format!("10.214.{y}.0/24"));
    assert!(
        r["reason"].as_str().unwrap().contains("no interface ens99"),
        "{r}"
    );
    assert_eq!(
        r["addresses"]["alpha"]["assigned"],
        format!("10.214.{y}.10")
    );

    let out = m.ok(&["swarm", "deploy", "--config", path.to_str().unwrap()]);
    assert!(out.contains("LAN relocalised"), "{out}");
    let alpha = address_of(&m, "lan2", "alpha");
    assert_eq!(alpha, format!("10.214.{y}.10"));
    let clash = address_of(&m, "lan2", "clash");
    assert_ne!(
        clash,
        format!("10.214.{y}.2"),
        "never the worker's own address"
    );
    let c_last: u8 = clash.rsplit('.').next().unwrap().parse().unwrap();
    assert!((64..96).contains(&c_last), "{clash}");
    // Status shows the network and the mapping too.
    let st = m.json(&["swarm", "status", "lan2", "--json"]);
    let lan = &st[0]["status"]["lan"];
    assert_eq!(lan["network"]["parent"], seg.parent.as_str(), "{st}");
    assert_eq!(lan["relocation"]["from_subnet"], "10.0.0.0/24", "{st}");
    let answer = wait_for(Duration::from_secs(20), || seg.ask(&alpha));
    assert_eq!(answer.as_deref(), Some("hello-alpha"));
    let answer = wait_for(Duration::from_secs(20), || seg.ask(&clash));
    assert_eq!(answer.as_deref(), Some("hello-clash"));

    // The process driver refuses LAN configs with a clear 422.
    m.enroll("proc1");
    let _p = Agent::start(
        &m,
        "proc1",
        &m.dir.path().join("proc1-state"),
        if rustix::process::geteuid().is_root() {
            &[]
        } else {
            &["--decky-isolation", "none"]
        },
    );
    let out = m.run(&[
        "swarm",
        "deploy",
        "--config",
        path.to_str().unwrap(),
        "--host",
        "proc1",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        text.contains("process driver") && text.contains("network"),
        "{text}"
    );
}
