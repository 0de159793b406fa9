//! Every control API route × every kind of caller, through the served
//! application: heartbeats from agents; renewals and CRL fetches from
//! agents and updaters; joins from anyone, certificate or not; `/health`
//! for any certificate; nothing else for anyone (the master's own
//! certificate included: operators use the fleet API's listener).

use std::sync::Arc;

use axum::http::Method;
use decnet_fleet::{CrlPublisher, FleetDb, RenewPolicy};
use decnet_master::control_api::{ControlPolicy, ControlState, router};
use decnet_pki::{CertificateAuthority, Role};
use decnet_server::testing::{assert_access, callers};
use decnet_server::{HttpLimits, HttpService};

#[tokio::test]
async fn every_route_admits_exactly_the_roles_it_should() {
    decnet_pki::provider::install_default();
    let dir = tempfile::tempdir().unwrap();
    let db = FleetDb::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("m.db").display()
    ))
    .await
    .unwrap();
    let state = Arc::new(ControlState::new(
        db,
        decnet_master::authorities::LiveAuthorities::new(
            decnet_master::authorities::Authorities::single(
                CertificateAuthority::generate().unwrap(),
            ),
        ),
        Arc::new(CrlPublisher::new()),
        RenewPolicy::default(),
        decnet_master::events::Events::new(),
    ));
    let app = HttpService::new(router(state), ControlPolicy, HttpLimits::default()).app();
    let routes = [
        (Method::POST, "/heartbeat"),
        (Method::POST, "/renew"),
        (Method::GET, "/crl"),
        (Method::GET, "/trust"),
        (Method::GET, "/join/ca"),
        (Method::POST, "/join"),
        (Method::GET, "/health"),
        (Method::GET, "/heartbeat"),
        (Method::GET, "/no-such-route"),
    ];
    assert_access(
        &app,
        &routes,
        &callers("w1"),
        |method, path, caller| match (caller, method, path) {
            (_, &Method::GET, "/join/ca") | (_, &Method::POST, "/join") => true,
            (None, _, _) => false,
            (Some(_), &Method::GET, "/health") => true,
            (Some(Role::Agent(_)), &Method::POST, "/heartbeat") => true,
            (Some(Role::Agent(_) | Role::Updater(_)), &Method::POST, "/renew") => true,
            (Some(Role::Agent(_) | Role::Updater(_)), &Method::GET, "/crl" | "/trust") => true,
            _ => false,
        },
    )
    .await;
}
