//! The post-update probe talks only to the agent of its own host — checked
//! by role, so it keeps working across the agent's certificate renewals —
//! and a worker certificate of another host answering on the agent's port
//! gets no request at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use decnet_pki::{
    Bundle, BundleKind, CertificateAuthority, ClientAuth, HostName, LeafSpec, MaterialSource, Role,
    RoleKind,
};
use decnet_server::{HttpLimits, HttpService, RoleSet, Server, ServerLimits, Transport};
use decnet_updater::probe::{ProbeOptions, Prober};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("CA"))
}

fn bundle(role: Role, kind: BundleKind) -> Bundle {
    let leaf = ca().issue(&LeafSpec::for_role(&role, &[])).unwrap();
    Bundle::from_issued(kind, &leaf, ca().cert_pem()).unwrap()
}

fn host(n: &str) -> HostName {
    HostName::new(n).unwrap()
}

/// An agent-like `/health` that always claims to be `w1`, served with
/// `cert`; returns its material, port and hit counter.
async fn health_server(cert: Bundle) -> (MaterialSource, u16, Arc<AtomicUsize>) {
    let material = MaterialSource::from_parts(cert, None).unwrap();
    let server = Server::bind(
        "agent",
        "127.0.0.1:0".parse().unwrap(),
        Transport::Tls {
            material: material.clone(),
            auth: ClientAuth::Required,
        },
        ServerLimits::default(),
    )
    .await
    .unwrap();
    let port = server.local_addr().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/health",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async {
                axum::Json(serde_json::json!({
                    "status": "ok", "role": "agent", "host": "w1", "version": "9.9"
                }))
            }
        }),
    );
    let svc = HttpService::new(app, RoleSet(vec![RoleKind::Updater]), HttpLimits::default());
    tokio::spawn(server.serve(svc, std::future::pending()));
    (material, port, hits)
}

fn prober(port: u16) -> Prober {
    let updater =
        MaterialSource::from_parts(bundle(Role::Updater(host("w1")), BundleKind::Updater), None)
            .unwrap();
    Prober::new(
        updater,
        &host("w1"),
        ProbeOptions {
            port,
            attempts: 2,
            timeout: Duration::from_secs(3),
            interval: Duration::from_millis(50),
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_probe_trusts_its_own_agent_across_renewals() {
    decnet_pki::provider::install_default();
    let (agent, port, hits) =
        health_server(bundle(Role::Agent(host("w1")), BundleKind::Agent)).await;
    let p = prober(port);
    let report = p.probe().await;
    assert!(report.healthy, "{:?}", report.transcript);
    assert_eq!(report.version.as_deref(), Some("9.9"));
    // The agent renews: a new certificate, same role — still healthy.
    agent
        .set_bundle(bundle(Role::Agent(host("w1")), BundleKind::Agent))
        .unwrap();
    let report = p.probe().await;
    assert!(report.healthy, "{:?}", report.transcript);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn another_workers_certificate_on_the_agent_port_gets_nothing() {
    decnet_pki::provider::install_default();
    for impostor in [
        bundle(Role::Agent(host("w2")), BundleKind::Agent),
        bundle(Role::Updater(host("w1")), BundleKind::Updater),
        bundle(Role::Master, BundleKind::Master),
    ] {
        let cn = impostor.identity.cn.clone();
        let (_m, port, hits) = health_server(impostor).await;
        let report = prober(port).probe().await;
        assert!(!report.healthy, "{cn}: {:?}", report.transcript);
        assert!(
            report.transcript.iter().all(|l| l.contains("expected w1")),
            "{cn}: {:?}",
            report.transcript
        );
        assert_eq!(hits.load(Ordering::SeqCst), 0, "{cn}: a request reached it");
    }
}
