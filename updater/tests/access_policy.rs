//! Every updater route × every kind of caller, through the served
//! application: the master only, on every route (the 404 fallback too).

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use decnet_pki::{
    Bundle, BundleKind, CertificateAuthority, HostName, LeafSpec, MaterialSource, Role,
};
use decnet_server::testing::{assert_access, callers};
use decnet_server::{HttpLimits, HttpService, RoleSet};
use decnet_updater::agent_control::{AgentControl, SpawnControl};
use decnet_updater::api::{ApiState, router};
use decnet_updater::pipeline::UpdaterCore;
use decnet_updater::probe::{ProbeOptions, Prober};
use decnet_updater::slots::ReleaseSlots;

#[tokio::test]
async fn every_route_admits_only_the_master() {
    decnet_pki::provider::install_default();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate().unwrap();
    let host = HostName::new("u1").unwrap();
    let leaf = ca
        .issue(&LeafSpec::for_role(&Role::Updater(host.clone()), &[]))
        .unwrap();
    let bundle = Bundle::from_issued(BundleKind::Updater, &leaf, ca.cert_pem()).unwrap();
    let material = MaterialSource::from_parts(bundle, None).unwrap();
    let install = dir.path().join("opt");
    let core = UpdaterCore::new(
        ReleaseSlots::open(&install, 2).unwrap(),
        ReleaseSlots::open(&install.join("updater"), 2).unwrap(),
        AgentControl::Spawn(SpawnControl {
            install_dir: install.clone(),
            agent_args: vec![],
            grace: Duration::from_secs(1),
            held: decnet_updater::agent_control::HeldAgentSocket::new(
                "127.0.0.1:0".parse().unwrap(),
            ),
        }),
        Prober::new(
            material,
            &host,
            ProbeOptions {
                port: 1,
                attempts: 1,
                timeout: Duration::from_secs(1),
                interval: Duration::ZERO,
            },
        ),
        1 << 20,
        Default::default(),
    );
    let state = Arc::new(ApiState {
        core,
        host: "u1".into(),
        upload_dir: install.join(".uploads"),
        instance: "test".into(),
        restart_self: Box::new(|| {}),
        renew_now: Some(Arc::default()),
    });
    let app = HttpService::new(router(state), RoleSet::master_only(), HttpLimits::default()).app();
    let routes = [
        (Method::GET, "/health"),
        (Method::GET, "/releases"),
        (Method::POST, "/update"),
        (Method::POST, "/update-self"),
        (Method::POST, "/rollback"),
        (Method::POST, "/renew"),
        (Method::GET, "/no-such-route"),
        (Method::DELETE, "/releases"),
    ];
    assert_access(&app, &routes, &callers("u1"), |_, _, caller| {
        matches!(caller, Some(Role::Master))
    })
    .await;
}
