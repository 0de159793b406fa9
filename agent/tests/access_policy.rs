//! Every agent route × every kind of caller, through the served
//! application (policy, limits and the 404 fallback included): the master
//! everywhere, this host's updater on `GET /health` only, nobody else.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use decnet_agent::api::{AgentPolicy, router};
use decnet_agent::driver::process::{Isolation, ProcessDriver, ProcessOptions};
use decnet_agent::executor::Executor;
use decnet_agent::state::StateStore;
use decnet_pki::{HostName, Role};
use decnet_server::testing::{assert_access, callers};
use decnet_server::{HttpLimits, HttpService};

#[tokio::test]
async fn every_route_admits_exactly_the_roles_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut opts = ProcessOptions::new(dir.path().join("state"), Isolation::None);
    opts.grace = Duration::from_secs(1);
    let driver = Arc::new(ProcessDriver::new(opts, tx).unwrap());
    let store = StateStore::open(&dir.path().join("state")).unwrap();
    let exec = Executor::start("w1".into(), "test".into(), driver, store, rx, None).unwrap();
    let own = HostName::new("w1").unwrap();
    let app = HttpService::new(
        router(exec),
        AgentPolicy {
            own_host: own.clone(),
        },
        HttpLimits::default(),
    )
    .app();
    let routes = [
        (Method::GET, "/health"),
        (Method::GET, "/status"),
        (Method::POST, "/deploy"),
        (Method::POST, "/teardown"),
        (Method::POST, "/mutate"),
        (Method::GET, "/operations/abc"),
        (Method::POST, "/health"),
        (Method::GET, "/no-such-route"),
        (Method::DELETE, "/status"),
    ];
    assert_access(
        &app,
        &routes,
        &callers("w1"),
        |method, path, caller| match caller {
            Some(Role::Master) => true,
            Some(Role::Updater(h)) => *h == own && method == Method::GET && path == "/health",
            _ => false,
        },
    )
    .await;
}
