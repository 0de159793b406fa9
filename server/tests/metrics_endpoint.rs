//! The `/metrics` endpoint on real loopback sockets: plain text only on
//! loopback, otherwise mTLS admitting the monitor role alone; the runner's
//! own series move with the traffic they count.

use std::sync::OnceLock;
use std::time::Duration;

use decnet_pki::{
    Bundle, BundleKind, CertificateAuthority, ExpectedServer, HostName, LeafSpec, MaterialSource,
    Role,
};
use decnet_server::metrics::MetricsEndpoint;

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("generate CA"))
}

fn bundle(role: Role, kind: BundleKind) -> Bundle {
    let leaf = ca().issue(&LeafSpec::for_role(&role, &[])).unwrap();
    Bundle::from_issued(kind, &leaf, ca().cert_pem()).unwrap()
}

fn agent_role() -> Role {
    Role::Agent(HostName::new("w1").unwrap())
}

fn client(b: &Bundle) -> reqwest::Client {
    let cfg = decnet_pki::client_config(b, None, &ExpectedServer::role(agent_role())).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn monitors_only_over_mtls_and_the_series_count_what_happened() {
    decnet_pki::provider::install_default();
    let agent = bundle(agent_role(), BundleKind::Agent);
    let material = MaterialSource::from_parts(agent.clone(), None).unwrap();
    // mTLS even on loopback when asked for.
    let ep = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap(), Some(&material), true)
        .await
        .unwrap();
    let addr = ep.spawn();
    let url = format!("https://{addr}/metrics");

    let monitor = bundle(
        Role::Monitor(HostName::new("prom").unwrap()),
        BundleKind::Monitor,
    );
    let r = client(&monitor).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let body = r.text().await.unwrap();
    // Its own certificate's expiry, by CN and role.
    let expiry = agent.identity.not_after.unix_timestamp();
    assert!(
        body.contains(&format!(
            "decnet_certificate_expiry_timestamp_seconds{{cn=\"w1\",role=\"agent\"}} {expiry}"
        )),
        "{body}"
    );

    // The master, an agent, an updater: refused by role, and counted.
    for (role, kind) in [
        (Role::Master, BundleKind::Master),
        (agent_role(), BundleKind::Agent),
        (
            Role::Updater(HostName::new("w1").unwrap()),
            BundleKind::Updater,
        ),
    ] {
        let r = client(&bundle(role.clone(), kind))
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{role}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["required_role"], "monitor");
    }
    // No certificate: the handshake fails, and is counted.
    let anon = decnet_pki::tls::anonymous_client_config(
        ca().cert_pem(),
        &ExpectedServer::role(agent_role()),
    )
    .unwrap();
    let anon = reqwest::Client::builder()
        .tls_backend_preconfigured(anon)
        .build()
        .unwrap();
    assert!(
        !anon
            .get(&url)
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    );

    let body = client(&monitor)
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // At least: the other test of this binary shares the process registry.
    for (series, at_least) in [
        (
            "decnet_role_refusals_total{server=\"metrics\",route=\"/metrics\"}",
            3.0,
        ),
        (
            "decnet_http_requests_total{server=\"metrics\",route=\"/metrics\",status=\"403\"}",
            3.0,
        ),
        (
            "decnet_http_requests_total{server=\"metrics\",route=\"/metrics\",status=\"200\"}",
            1.0,
        ),
        (
            "decnet_handshake_failures_total{server=\"metrics\",reason=\"no_certificate\"}",
            1.0,
        ),
        ("decnet_connections_open{server=\"metrics\"}", 1.0),
        (
            "decnet_tls_handshakes_total{server=\"metrics\",kind=\"full\"}",
            4.0,
        ),
    ] {
        let v = value(&body, series).unwrap_or_else(|| panic!("missing {series}:\n{body}"));
        assert!(v >= at_least, "{series} = {v}");
    }
}

/// The value of the sample `series` (name and labels exactly) in `body`.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn plain_text_only_on_loopback() {
    decnet_pki::provider::install_default();
    let ep = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap(), None, false)
        .await
        .unwrap();
    let addr = ep.spawn();
    let r = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().trim_end().ends_with("# EOF"));
    // Anything else on a plain endpoint is still only /metrics.
    let r = reqwest::get(format!("http://{addr}/status")).await.unwrap();
    assert_eq!(r.status(), 404);
    // Elsewhere, no plain text and no endpoint without a certificate.
    let e = MetricsEndpoint::bind("0.0.0.0:0".parse().unwrap(), None, false)
        .await
        .err()
        .expect("refused");
    assert!(
        e.to_string()
            .contains("plain text is allowed on loopback only"),
        "{e}"
    );
}
