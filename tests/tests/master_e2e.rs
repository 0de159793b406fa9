//! `decnet master serve`: heartbeats from real agents over mTLS, silence
//! detection, and refusal of wrong, unknown and revoked certificates.

use std::process::Command;
use std::time::Duration;

use decnet_e2e::{Agent, Daemon, MasterHome, mtls_client, wait_for};
use decnet_pki::{Bundle, BundleKind, CaLayout, CertificateAuthority, HostName, LeafSpec, Role};

fn start_master(m: &MasterHome, unreachable_after: u64) -> Daemon {
    let mut cmd = Command::new(decnet_e2e::bin("decnet"));
    cmd.args([
        "master",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-listener",
    ])
    .args(["--unreachable-after", &unreachable_after.to_string()])
    .env("DECNET_HOME", m.home())
    .env("DECNET_LOG", "info");
    Daemon::start(cmd, m.dir.path().join("master-serve.log"))
}

#[test]
fn heartbeats_turn_a_host_active_then_silence_makes_it_unreachable() {
    let m = MasterHome::new();
    m.enroll("hb1");
    let master = start_master(&m, 3);
    let mut agent = Agent::start(
        &m,
        "hb1",
        &m.dir.path().join("hb1-state"),
        &[
            "--master",
            &master.addr.to_string(),
            "--heartbeat-interval",
            "1",
        ],
    );
    let active = wait_for(Duration::from_secs(15), || {
        let h = m.json(&["swarm", "show", "hb1", "--json"]);
        (h["status"] == "active" && h["agent_version"] == env!("CARGO_PKG_VERSION")).then_some(h)
    });
    assert!(
        active.is_some(),
        "no heartbeat recorded; agent log:\n{}",
        agent.daemon.log_text()
    );
    let table = m.ok(&["swarm", "list"]);
    assert!(
        table.contains("active") && table.contains("s ago"),
        "{table}"
    );

    agent.daemon.stop();
    let gone = wait_for(Duration::from_secs(20), || {
        let h = m.json(&["swarm", "show", "hb1", "--json"]);
        (h["status"] == "unreachable").then_some(h)
    })
    .expect("silent host marked unreachable");
    assert!(
        gone["last_error"]
            .as_str()
            .unwrap()
            .contains("no heartbeat"),
        "{gone}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_from_wrong_unknown_or_revoked_certificates_are_refused() {
    let m = MasterHome::new();
    m.enroll("hb2");
    m.enroll("hb3");
    let master = start_master(&m, 90);
    let url = format!("https://{}/heartbeat", master.addr);
    let body = serde_json::json!({"version": "x", "deckies": []});

    // The current certificate is accepted.
    let current = mtls_client(&m.agent_bundle_dir("hb2"), BundleKind::Agent);
    assert_eq!(
        current
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Another role is refused by the middleware.
    let as_master = mtls_client(&m.master_bundle_dir(), BundleKind::Master);
    let r = as_master.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["required_role"],
        "agent"
    );

    // A certificate from the CA for a host never enrolled: 404.
    let ca = CertificateAuthority::load(&CaLayout::new(m.home().join("ca"))).unwrap();
    let leaf = ca
        .issue(&LeafSpec::for_role(
            &Role::Agent(HostName::new("stranger").unwrap()),
            &[],
        ))
        .unwrap();
    let dir = m.dir.path().join("stranger");
    Bundle::from_issued(BundleKind::Agent, &leaf, ca.cert_pem())
        .unwrap()
        .write(&dir)
        .unwrap();
    let r = mtls_client(&dir, BundleKind::Agent)
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A certificate for an enrolled name that this master never recorded: 403.
    let leaf = ca
        .issue(&LeafSpec::for_role(
            &Role::Agent(HostName::new("hb3").unwrap()),
            &[],
        ))
        .unwrap();
    let dir = m.dir.path().join("forged-hb3");
    Bundle::from_issued(BundleKind::Agent, &leaf, ca.cert_pem())
        .unwrap()
        .write(&dir)
        .unwrap();
    let r = mtls_client(&dir, BundleKind::Agent)
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Reissue revokes the old certificate at once, without a restart.
    let old = m.dir.path().join("old-hb2");
    Bundle::load(&m.agent_bundle_dir("hb2"), BundleKind::Agent)
        .unwrap()
        .write(&old)
        .unwrap();
    m.ok(&[
        "swarm",
        "enroll",
        "--host",
        "hb2",
        "--address",
        "127.0.0.1",
        "--reissue",
    ]);
    let r = mtls_client(&old, BundleKind::Agent)
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("revoked"));
    let fresh = mtls_client(&m.agent_bundle_dir("hb2"), BundleKind::Agent);
    assert_eq!(
        fresh.post(&url).json(&body).send().await.unwrap().status(),
        200
    );

    // Decommissioned: refused.
    m.ok(&["swarm", "decommission", "hb2", "--yes"]);
    let r = fresh.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);

    // Malformed body: 422, not a crash.
    let hb3 = mtls_client(&m.agent_bundle_dir("hb3"), BundleKind::Agent);
    let r = hb3
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"deckies\": 5}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}
