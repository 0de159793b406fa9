//! The mTLS serving helper on a real loopback socket with real certificates.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::routing::get;
use axum::{Extension, Router};
use decnet_pki::serve::serve_router;
use decnet_pki::{
    AcceptOptions, Bundle, BundleKind, CertificateAuthority, Fingerprint, HostName, LeafSpec,
    MtlsListener, PeerIdentity, Role, RoleKind, RoleSet,
};
use time::{Duration, OffsetDateTime};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("generate CA"))
}

fn bundle(ca: &CertificateAuthority, role: Role, kind: BundleKind) -> Bundle {
    let leaf = ca.issue(&LeafSpec::for_role(&role, &[])).unwrap();
    Bundle::from_issued(kind, &leaf, ca.cert_pem()).unwrap()
}

struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    server_fp: Fingerprint,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start_server() -> Server {
    decnet_pki::provider::install_default();
    let server_bundle = bundle(
        ca(),
        Role::Agent(HostName::new("srv").unwrap()),
        BundleKind::Agent,
    );
    let config = decnet_pki::server_config(&server_bundle).unwrap();
    let listener = MtlsListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        config,
        AcceptOptions::default(),
    )
    .await
    .unwrap();
    let addr = listener.local_addr();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let router = Router::new().route(
        "/whoami",
        get(move |Extension(peer): Extension<PeerIdentity>| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                format!("{}|{}", peer.cn, peer.fingerprint)
            }
        }),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_router(
        listener,
        router,
        RoleSet(vec![RoleKind::Master]),
        async {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        hits,
        server_fp: server_bundle.identity.fingerprint,
        stop: Some(tx),
    }
}

fn client(b: &Bundle, pin: Option<Fingerprint>) -> reqwest::Client {
    let cfg = decnet_pki::client_config(b, pin).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap()
}

/// A client config with no certificate at all (trusting our CA).
fn anonymous_client() -> reqwest::Client {
    let roots = decnet_pki::tls::ca_roots(ca().cert_pem()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(decnet_pki::provider::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap()
}

#[tokio::test]
async fn master_is_admitted_and_handler_sees_its_identity() {
    let srv = start_server().await;
    let master = bundle(ca(), Role::Master, BundleKind::Master);
    let resp = client(&master, Some(srv.server_fp))
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert_eq!(
        body,
        format!("decnet-master|{}", master.identity.fingerprint)
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wrong_role_gets_403_json_naming_the_required_role() {
    let srv = start_server().await;
    let agent = bundle(
        ca(),
        Role::Agent(HostName::new("other").unwrap()),
        BundleKind::Agent,
    );
    let c = client(&agent, None);
    for path in ["/whoami", "/no-such-route"] {
        let resp = c
            .get(format!("https://{}{path}", srv.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "forbidden");
        assert_eq!(body["required_role"], "master");
    }
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn no_client_certificate_fails_before_any_handler() {
    let srv = start_server().await;
    let r = anonymous_client()
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await;
    assert!(r.is_err(), "request without client cert must fail: {r:?}");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn foreign_ca_client_fails_before_any_handler() {
    let srv = start_server().await;
    let other = CertificateAuthority::generate().unwrap();
    // Its bundle trusts OUR CA for the server, but its leaf is foreign.
    let mut foreign = bundle(&other, Role::Master, BundleKind::Master);
    foreign.ca_pem = ca().cert_pem().to_string();
    let r = client(&foreign, None)
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await;
    assert!(r.is_err(), "foreign CA must be refused: {r:?}");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn expired_client_certificate_fails_before_any_handler() {
    let srv = start_server().await;
    let now = OffsetDateTime::now_utc();
    let spec = LeafSpec::for_role(&Role::Master, &[])
        .with_validity(now - Duration::days(10), now - Duration::days(1));
    let leaf = ca().issue(&spec).unwrap();
    let expired = Bundle::from_issued(BundleKind::Master, &leaf, ca().cert_pem()).unwrap();
    let r = client(&expired, None)
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await;
    assert!(r.is_err(), "expired cert must be refused: {r:?}");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn pinned_fingerprint_mismatch_is_refused_by_the_client() {
    let srv = start_server().await;
    let master = bundle(ca(), Role::Master, BundleKind::Master);
    let wrong: Fingerprint = Fingerprint::of_der(b"not the server");
    let err = client(&master, Some(wrong))
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await
        .unwrap_err();
    let chain = format!("{err:?}");
    assert!(chain.to_lowercase().contains("fingerprint"), "{chain}");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_server_from_a_foreign_ca_is_refused_by_the_client() {
    decnet_pki::provider::install_default();
    let other = CertificateAuthority::generate().unwrap();
    let mut imposter = bundle(
        &other,
        Role::Agent(HostName::new("srv").unwrap()),
        BundleKind::Agent,
    );
    imposter.ca_pem = ca().cert_pem().to_string(); // it would accept our clients
    let listener = MtlsListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        decnet_pki::server_config(&imposter).unwrap(),
        AcceptOptions::default(),
    )
    .await
    .unwrap();
    let addr = listener.local_addr();
    tokio::spawn(serve_router(
        listener,
        Router::new().route("/", get(|| async { "hi" })),
        RoleSet::master_only(),
        std::future::pending(),
    ));
    let master = bundle(ca(), Role::Master, BundleKind::Master);
    let r = client(&master, None)
        .get(format!("https://{addr}/"))
        .send()
        .await;
    assert!(
        r.is_err(),
        "server from a foreign CA must be refused: {r:?}"
    );
}

#[tokio::test]
async fn a_stalled_handshake_does_not_block_other_clients() {
    let srv = start_server().await;
    // Open a raw TCP connection and never speak TLS.
    let _idle = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let master = bundle(ca(), Role::Master, BundleKind::Master);
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client(&master, None)
            .get(format!("https://{}/whoami", srv.addr))
            .send(),
    )
    .await
    .expect("served while another handshake stalls")
    .unwrap();
    assert_eq!(resp.status(), 200);
}
