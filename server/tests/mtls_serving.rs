//! The server runner on a real loopback socket with real certificates: the
//! mTLS checks of both ends, the role middleware, and what a hostile peer
//! can hold (handshakes, connections, time).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration as StdDuration;

use axum::Router;
use axum::routing::get;
use decnet_pki::{
    Bundle, BundleKind, CertificateAuthority, ClientAuth, ExpectedServer, Fingerprint, HostName,
    LeafSpec, MaterialSource, PeerIdentity, RevokedSerial, Role, RoleKind,
};
use decnet_server::{HttpLimits, HttpService, RoleSet, Server, ServerLimits, Transport};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("generate CA"))
}

fn bundle(ca: &CertificateAuthority, role: Role, kind: BundleKind) -> Bundle {
    let leaf = ca.issue(&LeafSpec::for_role(&role, &[])).unwrap();
    Bundle::from_issued(kind, &leaf, ca.cert_pem()).unwrap()
}

fn srv_role() -> Role {
    Role::Agent(HostName::new("srv").unwrap())
}

struct TestServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    server_fp: Fingerprint,
    material: MaterialSource,
    admission: Arc<decnet_server::admission::Admission>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl TestServer {
    /// Stop it and wait until the runner returns.
    async fn shutdown(mut self) -> StdDuration {
        let t = std::time::Instant::now();
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap();
        t.elapsed()
    }
}

async fn start_server_with(limits: ServerLimits, http: HttpLimits) -> TestServer {
    start_server_auth(limits, http, ClientAuth::Required).await
}

async fn start_server_auth(limits: ServerLimits, http: HttpLimits, auth: ClientAuth) -> TestServer {
    start_server_policy(limits, http, auth, RoleSet(vec![RoleKind::Master])).await
}

async fn start_server_policy(
    limits: ServerLimits,
    http: HttpLimits,
    auth: ClientAuth,
    policy: impl decnet_server::AccessPolicy,
) -> TestServer {
    decnet_pki::provider::install_default();
    let server_bundle = bundle(ca(), srv_role(), BundleKind::Agent);
    let material = MaterialSource::from_parts(server_bundle.clone(), None).unwrap();
    let server = Server::bind(
        "test",
        "127.0.0.1:0".parse().unwrap(),
        Transport::Tls {
            material: material.clone(),
            auth,
        },
        limits,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let admission = server.admission();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let router = Router::new()
        .route(
            "/whoami",
            get(
                move |decnet_server::VerifiedPeer(peer): decnet_server::VerifiedPeer| {
                    let h = h.clone();
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        format!("{}|{}", peer.cn, peer.fingerprint)
                    }
                },
            ),
        )
        .route(
            "/upload",
            axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(StdDuration::from_secs(30)).await;
                "late"
            }),
        )
        .route(
            "/endless",
            get(|| async {
                axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(tokio::io::repeat(
                    b'x',
                )))
            }),
        );
    let app = HttpService::new(router, policy, http);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.serve(app, async {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        hits,
        server_fp: server_bundle.identity.fingerprint,
        material,
        admission,
        stop: Some(tx),
        done: Some(done),
    }
}

async fn start_server() -> TestServer {
    start_server_with(ServerLimits::default(), HttpLimits::default()).await
}

fn client_expecting(b: &Bundle, expected: ExpectedServer) -> reqwest::Client {
    let cfg = decnet_pki::client_config(b, None, &expected).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .timeout(StdDuration::from_secs(20))
        .build()
        .unwrap()
}

fn client(b: &Bundle) -> reqwest::Client {
    client_expecting(b, ExpectedServer::role(srv_role()))
}

fn master() -> Bundle {
    bundle(ca(), Role::Master, BundleKind::Master)
}

/// A client config with no certificate at all (trusting our CA).
fn anonymous_client() -> reqwest::Client {
    let cfg = decnet_pki::tls::anonymous_client_config(
        ca().cert_pem(),
        &ExpectedServer::role(srv_role()),
    )
    .unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap()
}

#[tokio::test]
async fn master_is_admitted_and_handler_sees_its_identity() {
    let srv = start_server().await;
    let master = master();
    let resp = client(&master)
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
    let c = client(&agent);
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
    let r = client(&foreign)
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
    let r = client(&expired)
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await;
    assert!(r.is_err(), "expired cert must be refused: {r:?}");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_revoked_client_is_refused_at_the_handshake_once_the_crl_is_in_force() {
    let srv = start_server().await;
    let master = master();
    let url = format!("https://{}/whoami", srv.addr);
    assert_eq!(
        client(&master).get(&url).send().await.unwrap().status(),
        200
    );
    let crl = ca()
        .issue_crl(
            &[RevokedSerial {
                serial_hex: master.identity.serial.clone(),
                revoked_at: OffsetDateTime::now_utc(),
            }],
            1,
            OffsetDateTime::now_utc() + Duration::days(1),
        )
        .unwrap();
    assert!(srv.material.set_crl(crl).unwrap());
    // A new connection (the old client's pool may hold the old one).
    let r = client(&master).get(&url).send().await;
    assert!(r.is_err(), "revoked client must fail: {r:?}");
    // Another master certificate, not revoked, still gets in.
    assert_eq!(
        client(&self::master())
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn pinned_fingerprint_mismatch_is_refused_by_the_client() {
    let srv = start_server().await;
    let master = master();
    let wrong: Fingerprint = Fingerprint::of_der(b"not the server");
    let err = client_expecting(&master, ExpectedServer::role(srv_role()).pinned([wrong]))
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await
        .unwrap_err();
    assert!(decnet_pki::tls::is_pin_mismatch(&err), "{err:?}");
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
    // The right pin passes.
    let ok = client_expecting(
        &master,
        ExpectedServer::role(srv_role()).pinned([srv.server_fp]),
    )
    .get(format!("https://{}/whoami", srv.addr))
    .send()
    .await
    .unwrap();
    assert_eq!(ok.status(), 200);
}

/// The attack the role check exists for: a server holding a valid
/// certificate of our CA, but for another role or host than the client
/// dialed, gets no request at all.
#[tokio::test]
async fn a_server_of_another_role_or_host_is_refused_by_the_client() {
    let srv = start_server().await;
    let master = master();
    let url = format!("https://{}/whoami", srv.addr);
    for expected in [
        ExpectedServer::master(),
        ExpectedServer::role(Role::Agent(HostName::new("w2").unwrap())),
        ExpectedServer::role(Role::Updater(HostName::new("srv").unwrap())),
    ] {
        let err = client_expecting(&master, expected.clone())
            .get(&url)
            .send()
            .await
            .unwrap_err();
        assert!(
            decnet_pki::tls::is_unexpected_server(&err),
            "{expected:?}: {err:?}"
        );
    }
    assert_eq!(
        srv.hits.load(Ordering::SeqCst),
        0,
        "nothing reached the impostor"
    );
}

#[tokio::test]
async fn a_server_from_a_foreign_ca_is_refused_by_the_client() {
    decnet_pki::provider::install_default();
    let other = CertificateAuthority::generate().unwrap();
    let mut imposter = bundle(&other, srv_role(), BundleKind::Agent);
    imposter.ca_pem = ca().cert_pem().to_string(); // it would accept our clients
    let server = Server::bind(
        "imposter",
        "127.0.0.1:0".parse().unwrap(),
        Transport::Tls {
            material: MaterialSource::from_parts(imposter, None).unwrap(),
            auth: ClientAuth::Required,
        },
        ServerLimits::default(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let app = HttpService::new(
        Router::new().route("/", get(|| async { "hi" })),
        RoleSet::master_only(),
        HttpLimits::default(),
    );
    tokio::spawn(server.serve(app, std::future::pending()));
    let r = client(&master())
        .get(format!("https://{addr}/"))
        .send()
        .await;
    assert!(
        r.is_err(),
        "server from a foreign CA must be refused: {r:?}"
    );
}

#[tokio::test]
async fn a_renewed_server_certificate_is_served_without_a_restart() {
    let srv = start_server().await;
    let renewed = bundle(ca(), srv_role(), BundleKind::Agent);
    let new_fp = renewed.identity.fingerprint;
    srv.material.set_bundle(renewed).unwrap();
    let ok = client_expecting(&master(), ExpectedServer::role(srv_role()).pinned([new_fp]))
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // A bundle of another identity is refused and the old one stays.
    let other = bundle(ca(), Role::Master, BundleKind::Master);
    assert!(srv.material.set_bundle(other).is_err());
}

/// Hold `n` raw TCP connections from `source` that never speak TLS.
async fn idle_tcp(to: SocketAddr, source: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
        if let Ok(s) = sock.connect(to).await {
            held.push(s);
        }
    }
    held
}

#[tokio::test]
async fn idle_tcp_connections_from_one_source_do_not_delay_others() {
    let srv = start_server().await;
    // 1,000 idle connections from one (other) loopback address.
    let mut idle = idle_tcp(srv.addr, "127.0.0.2", 1000).await;
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    // Only the per-source handshake cap of them are held; the rest were closed at once.
    assert!(
        srv.admission.pending_handshakes()
            <= ServerLimits::default().max_pending_handshakes_per_source,
        "{} pending",
        srv.admission.pending_handshakes()
    );
    let mut closed = 0;
    for s in idle.iter_mut() {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(StdDuration::from_millis(5), s.read(&mut b)).await {
            closed += 1;
        }
    }
    let budget = ServerLimits::default().max_pending_handshakes_per_source;
    assert!(
        closed + budget >= 1000,
        "connections beyond the source's budget are closed, not parked: {closed} closed"
    );
    let t = std::time::Instant::now();
    let resp = client(&master())
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < StdDuration::from_secs(1), "{:?}", t.elapsed());
}

#[tokio::test]
async fn stalled_handshakes_time_out() {
    let srv = start_server_with(
        ServerLimits {
            handshake_timeout: StdDuration::from_millis(300),
            ..ServerLimits::default()
        },
        HttpLimits::default(),
    )
    .await;
    let mut idle = idle_tcp(srv.addr, "127.0.0.3", 3).await;
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    assert_eq!(srv.admission.pending_handshakes(), 3);
    tokio::time::sleep(StdDuration::from_millis(600)).await;
    assert_eq!(srv.admission.pending_handshakes(), 0);
    assert_eq!(srv.admission.open_connections(), 0);
    let mut b = [0u8; 1];
    assert_eq!(
        idle[0].read(&mut b).await.unwrap(),
        0,
        "closed by the server"
    );
}

#[tokio::test]
async fn one_certificate_cannot_hold_every_connection() {
    let srv = start_server_with(
        ServerLimits {
            max_connections_per_identity: 3,
            ..ServerLimits::default()
        },
        HttpLimits::default(),
    )
    .await;
    let hog = master();
    let cfg =
        Arc::new(decnet_pki::client_config(&hog, None, &ExpectedServer::role(srv_role())).unwrap());
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("srv").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        // TLS 1.3: a refusal shows on the first read.
        tls.write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 512];
        match tokio::time::timeout(StdDuration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => held.push(tls),
            _ => refused += 1,
        }
    }
    assert_eq!(held.len(), 3);
    assert_eq!(refused, 7);
    // Another certificate still gets in.
    let resp = client(&master())
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// A raw TLS connection to the test server as the master (for requests
/// written by hand).
async fn tls_as_master(addr: SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = Arc::new(
        decnet_pki::client_config(&master(), None, &ExpectedServer::role(srv_role())).unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("srv").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let srv = start_server_with(
        ServerLimits::default(),
        HttpLimits {
            header_timeout: StdDuration::from_millis(500),
            ..HttpLimits::default()
        },
    )
    .await;
    let mut tls = tls_as_master(srv.addr).await;
    tls.write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(StdDuration::from_secs(5), tls.read_to_end(&mut buf)).await;
    assert!(t.elapsed() < StdDuration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(srv.hits.load(Ordering::SeqCst), 0);
    assert!(srv.admission.open_connections() <= 1);
}

/// The header timeout is also the keep-alive idle limit, counted from
/// each answer: a connection whose requests keep coming stays open past
/// the first deadline (each head moves it later, on the one timer the
/// connection keeps), and is closed once it stays idle for the timeout.
#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let timeout = StdDuration::from_millis(600);
    let srv = start_server_with(
        ServerLimits::default(),
        HttpLimits {
            header_timeout: timeout,
            ..HttpLimits::default()
        },
    )
    .await;
    let mut tls = tls_as_master(srv.addr).await;
    let started = std::time::Instant::now();
    for _ in 0..4 {
        tls.write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        tls.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        // Drain the rest of the answer (headers and a short body).
        let mut rest = [0u8; 512];
        let _ = tokio::time::timeout(StdDuration::from_millis(50), tls.read(&mut rest)).await;
        tokio::time::sleep(StdDuration::from_millis(350)).await;
    }
    assert!(
        started.elapsed() > timeout * 2,
        "the requests spanned more than one timeout"
    );
    assert_eq!(srv.hits.load(Ordering::SeqCst), 4);
    // Idle from here: closed after the rest of the timeout, not sooner.
    let idle = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(StdDuration::from_secs(5), tls.read_to_end(&mut buf)).await;
    let waited = idle.elapsed();
    assert!(
        waited >= StdDuration::from_millis(150) && waited < StdDuration::from_secs(3),
        "closed after {waited:?} idle"
    );
}

/// The attacker asks for an answer that does not fit in the socket's
/// buffers (here one that never ends, as an event stream) and stops
/// reading. hyper's graceful close waits for the answer in flight, so
/// without a bound the connection, and whatever its answer holds (an
/// evidence spool slot, an event subscription), outlived the connection's
/// lifetime and its certificate's expiry for as long as the client liked.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_end_of_its_connection() {
    let srv = start_server_with(
        ServerLimits {
            max_connection_lifetime: Some(StdDuration::from_secs(1)),
            ..ServerLimits::default()
        },
        HttpLimits {
            request_timeout: StdDuration::from_secs(1),
            ..HttpLimits::default()
        },
    )
    .await;
    let mut tls = tls_as_master(srv.addr).await;
    tls.write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    tls.read_exact(&mut first).await.unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
    assert_eq!(srv.admission.open_connections(), 1);
    // Not reading from here on: the server's writes fill the buffers.
    let t = std::time::Instant::now();
    while srv.admission.open_connections() > 0 {
        assert!(
            t.elapsed() < StdDuration::from_secs(10),
            "a client that stopped reading kept its connection past its lifetime and the request timeout"
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    // Lifetime (1 s) plus the request timeout (1 s) for the answer in flight.
    assert!(t.elapsed() < StdDuration::from_secs(6), "{:?}", t.elapsed());
    drop(tls);
}

#[tokio::test]
async fn shutdown_is_bounded_even_with_a_request_in_flight() {
    let srv = start_server_with(
        ServerLimits {
            shutdown_grace: StdDuration::from_millis(500),
            ..ServerLimits::default()
        },
        HttpLimits::default(),
    )
    .await;
    let c = client(&master());
    let url = format!("https://{}/slow", srv.addr);
    let slow = tokio::spawn(async move { c.get(url).send().await });
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let took = srv.shutdown().await;
    assert!(took < StdDuration::from_secs(3), "{took:?}");
    assert!(slow.await.unwrap().is_err(), "the stuck request was cut");
}

/// A body over the limit is answered `413` before it is read whole; the
/// client, still sending, reads that answer rather than a reset (the
/// server's close lingers, draining what it still sends).
#[tokio::test]
async fn a_client_still_sending_a_body_over_the_limit_reads_its_413() {
    let srv = start_server_with(
        ServerLimits::default(),
        HttpLimits {
            max_body_bytes: 64 * 1024,
            ..HttpLimits::default()
        },
    )
    .await;
    let url = format!("https://{}/upload", srv.addr);
    let small = client(&master())
        .post(&url)
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(small.text().await.unwrap(), "1000");
    // A client still sending its 8 MiB body when the answer comes (the
    // server answers after 64 KiB). Without the lingering close, the
    // server closed with the rest unread, the kernel reset the connection,
    // and the client's next write failed: an HTTP client (hyper's, under
    // load: seen in `agent_e2e`) then reports a broken pipe, not the 413.
    let mut s = tls_as_master(srv.addr).await;
    let head = "POST /upload HTTP/1.1\r\nhost: srv\r\ncontent-length: 8388608\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'x'; 1024 * 1024]).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let more = async {
        s.write_all(&vec![b'x'; 1024 * 1024]).await?;
        s.flush().await
    }
    .await;
    assert!(
        more.is_ok(),
        "the client, still sending, was reset: {more:?}"
    );
    let mut answer = Vec::new();
    let read = tokio::time::timeout(StdDuration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "read {read:?}, answer {answer:?}"
    );
}

#[tokio::test]
async fn an_idle_server_stops_at_once() {
    let srv = start_server().await;
    let c = client(&master());
    assert_eq!(
        c.get(format!("https://{}/whoami", srv.addr))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A kept-alive idle connection does not hold the shutdown.
    let took = srv.shutdown().await;
    assert!(took < StdDuration::from_millis(500), "{took:?}");
}

#[tokio::test]
async fn plain_text_is_refused_off_loopback() {
    let r = Server::bind(
        "plain",
        "0.0.0.0:0".parse().unwrap(),
        Transport::Plain,
        ServerLimits::default(),
    )
    .await;
    assert!(matches!(
        r,
        Err(decnet_server::ServerError::PlaintextRefused(_))
    ));
}

/// Keep `n` silent TCP connections from `source` open, opening new ones as
/// the server closes (evicts) old ones, until the task is aborted.
fn silent_flood(to: SocketAddr, source: &'static str, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held: std::collections::VecDeque<tokio::net::TcpStream> = Default::default();
        loop {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
            if let Ok(s) = sock.connect(to).await {
                held.push_back(s);
            }
            if held.len() > n {
                held.pop_front();
            }
            tokio::task::yield_now().await;
        }
    })
}

/// A decky sharing its worker's address (or hosts behind one NAT) floods
/// the server with silent connections from that very address: the worker's
/// own new connections still complete, each within a second.
#[tokio::test]
async fn silent_connections_from_a_peers_own_address_do_not_lock_it_out() {
    let srv = start_server().await;
    let flood = silent_flood(srv.addr, "127.0.0.1", 1000);
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    let master = master();
    for i in 0..10 {
        let t = std::time::Instant::now();
        // A fresh client each time: a new connection and a full handshake.
        let resp = client(&master)
            .get(format!("https://{}/whoami", srv.addr))
            .send()
            .await
            .unwrap_or_else(|e| panic!("attempt {i}: {e:?}"));
        assert_eq!(resp.status(), 200);
        assert!(
            t.elapsed() < StdDuration::from_secs(1),
            "attempt {i}: {:?}",
            t.elapsed()
        );
    }
    assert!(
        srv.admission.pending_handshakes()
            <= ServerLimits::default().max_pending_handshakes_per_source,
        "the flood holds at most one source's budget"
    );
    flood.abort();
}

/// Hold `n` TLS connections without a certificate that never send a
/// request (each completes its handshake, then idles).
async fn anonymous_tls(
    to: SocketAddr,
    n: usize,
) -> Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    anonymous_tls_from(to, "127.0.0.1", n).await
}

/// [`anonymous_tls`] from the loopback address `source`.
async fn anonymous_tls_from(
    to: SocketAddr,
    source: &str,
    n: usize,
) -> Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let cfg = Arc::new(
        decnet_pki::tls::anonymous_client_config(
            ca().cert_pem(),
            &ExpectedServer::role(srv_role()),
        )
        .unwrap(),
    );
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let mut held = Vec::new();
    for _ in 0..n {
        // One at a time: a connection waiting silent for its turn would
        // be closed at the ClientHello timeout.
        let Some(tcp) = idle_tcp(to, source, 1).await.pop() else {
            continue;
        };
        let name = rustls_pki_types::ServerName::try_from("srv").unwrap();
        if let Ok(Ok(tls)) =
            tokio::time::timeout(StdDuration::from_secs(2), connector.connect(name, tcp)).await
        {
            held.push(tls);
        }
    }
    held
}

/// A control API's join slots, scaled down: 8 connections without a
/// certificate, a quarter of them per network, a full budget evicting.
fn eight_join_slots() -> ServerLimits {
    ServerLimits {
        max_anonymous: 8,
        max_anonymous_per_source: 2,
        max_anonymous_per_network: 2,
        evict_anonymous: true,
        ..ServerLimits::default()
    }
}

/// Wait until the server holds its 8 anonymous connections (a client's
/// handshake ends before the server has counted it).
async fn all_join_slots_held(srv: &TestServer) {
    let deadline = std::time::Instant::now() + StdDuration::from_secs(5);
    while srv.admission.anonymous_connections() < 8 && std::time::Instant::now() < deadline {
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    assert_eq!(srv.admission.anonymous_connections(), 8);
}

/// The attacker holds every join slot (the server's connections without
/// a certificate) with idle TLS connections from as few networks as the
/// per-network cap allows (a quarter of the slots each: four /24s, as
/// four cloud ranges would): a joiner from another network is still
/// served, one attacker connection being closed to make room, and the
/// attacker's next connections, from a new network or its own, only ever
/// take the place of its own.
#[tokio::test]
async fn a_joiner_gets_in_when_one_network_holds_every_anonymous_slot() {
    let srv = start_server_auth(
        eight_join_slots(),
        HttpLimits::default(),
        ClientAuth::Optional,
    )
    .await;
    assert_eq!(srv.admission.limits().max_anonymous_per_network, 2);
    let mut attacker = Vec::new();
    for net in 1..=4 {
        attacker.extend(anonymous_tls_from(srv.addr, &format!("127.0.{net}.1"), 2).await);
    }
    assert_eq!(attacker.len(), 8);
    all_join_slots_held(&srv).await;
    let mut joiner = anonymous_tls_from(srv.addr, "127.0.9.1", 1)
        .await
        .pop()
        .expect("the joiner's handshake");
    joiner
        .write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(StdDuration::from_secs(5), joiner.read(&mut buf))
        .await
        .expect("the joiner is answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    // Exactly one of the attacker's connections was closed for it.
    let mut closed = 0;
    for s in attacker.iter_mut() {
        let mut b = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(StdDuration::from_millis(300), s.read(&mut b)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "one attacker connection made room");
    // The attacker's next connections, from the network that lost one and
    // from a fifth network: each is admitted by evicting one of the
    // attacker's own (from a network holding two), never the joiner's
    // (its network holds one: fewer than either newcomer's would).
    let mut kept = Vec::new();
    for source in ["127.0.1.2", "127.0.5.1"] {
        let mut again = anonymous_tls_from(srv.addr, source, 1).await;
        let s = again.first_mut().expect("the attacker's handshake");
        s.write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(StdDuration::from_secs(5), s.read(&mut b))
            .await
            .expect("answered by the server");
        assert!(matches!(r, Ok(n) if n > 0), "{source}: {r:?}");
        kept.push(again);
    }
    joiner
        .write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(StdDuration::from_secs(5), joiner.read(&mut buf))
        .await
        .expect("the joiner is still served")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 "));
    assert_eq!(srv.admission.anonymous_connections(), 8);
}

/// Whether the server closed `s` (end of stream or an error within 5 s).
async fn closed_by_server(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(StdDuration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The attacker holds every join slot from a network of its own (eight
/// /24s for eight slots, as 256 cloud ranges could for the control API's
/// 256): a joiner from another network still gets in, the attacker's
/// oldest connection making room. Reconnecting from new networks, the
/// attacker closes its own connections oldest first: it must go through
/// every slot, faster than a joiner sends its request, before it reaches
/// the joiner's. (Before, the first eight held the slots for good.)
#[tokio::test]
async fn a_joiner_gets_in_when_every_anonymous_slot_is_held_from_a_network_of_its_own() {
    let srv = start_server_auth(
        eight_join_slots(),
        HttpLimits::default(),
        ClientAuth::Optional,
    )
    .await;
    let mut attacker = Vec::new();
    for net in 1..=8 {
        attacker.extend(anonymous_tls_from(srv.addr, &format!("127.0.{net}.1"), 1).await);
    }
    assert_eq!(attacker.len(), 8);
    all_join_slots_held(&srv).await;
    let mut joiner = anonymous_tls_from(srv.addr, "127.0.9.1", 1)
        .await
        .pop()
        .expect("the joiner's handshake");
    let whoami = b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    joiner.write_all(whoami).await.unwrap();
    let n = tokio::time::timeout(StdDuration::from_secs(5), joiner.read(&mut buf))
        .await
        .expect("the joiner is answered")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 "));
    assert!(
        closed_by_server(&mut attacker[0]).await,
        "the oldest made room"
    );
    // Seven reconnections from new networks close the attacker's seven
    // others, oldest first; the joiner, newer than all of them, stays.
    let mut churn = Vec::new();
    for net in 10..=16 {
        churn.extend(anonymous_tls_from(srv.addr, &format!("127.0.{net}.1"), 1).await);
    }
    assert_eq!(churn.len(), 7);
    for (i, s) in attacker.iter_mut().enumerate().skip(1) {
        assert!(
            closed_by_server(s).await,
            "attacker connection {i} made room"
        );
    }
    joiner.write_all(whoami).await.unwrap();
    let n = tokio::time::timeout(StdDuration::from_secs(5), joiner.read(&mut buf))
        .await
        .expect("the joiner is still served")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 "));
    // Only now is the joiner's the oldest: the eighth reconnection closes it.
    churn.extend(anonymous_tls_from(srv.addr, "127.0.17.1", 1).await);
    assert!(
        closed_by_server(&mut joiner).await,
        "the oldest goes, at last"
    );
    assert_eq!(srv.admission.anonymous_connections(), 8);
}

/// A server with [`eight_join_slots`] whose `/slow` admits strangers (as
/// the control API admits joiners on `/join`) and is answered `408` at
/// `request_timeout`.
async fn join_slots_with_a_slow_route(request_timeout: StdDuration) -> TestServer {
    start_server_policy(
        eight_join_slots(),
        HttpLimits {
            request_timeout,
            ..HttpLimits::default()
        },
        ClientAuth::Optional,
        SlowForStrangers,
    )
    .await
}

/// Admits the master everywhere, and peers without a certificate on
/// `/slow` (as the control API admits joiners on `/join`).
struct SlowForStrangers;

impl decnet_server::AccessPolicy for SlowForStrangers {
    fn check(
        &self,
        peer: &PeerIdentity,
        method: &axum::http::Method,
        path: &str,
    ) -> Result<(), decnet_server::Refusal> {
        RoleSet(vec![RoleKind::Master]).check(peer, method, path)
    }

    fn allows_anonymous(&self, _method: &axum::http::Method, path: &str) -> bool {
        path == "/slow"
    }
}

/// An anonymous connection evicted for a joiner while its request is in
/// flight (a join whose token is already spent) gets its answer before it
/// is closed, not a cut connection.
#[tokio::test]
async fn an_evicted_connection_is_answered_before_it_is_closed() {
    let srv = join_slots_with_a_slow_route(StdDuration::from_secs(1)).await;
    // Four networks, two connections each: the first of each asks `/slow`
    // (answered 408 at the request timeout), the second idles.
    let mut asking = Vec::new();
    let mut idle = Vec::new();
    for net in 1..=4 {
        let mut two = anonymous_tls_from(srv.addr, &format!("127.0.{net}.1"), 2).await;
        idle.push(two.pop().expect("second connection"));
        asking.push(two.pop().expect("first connection"));
    }
    all_join_slots_held(&srv).await;
    for s in asking.iter_mut() {
        s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
    }
    // The joiner evicts the oldest connection of one network: one asking.
    let _joiner = anonymous_tls_from(srv.addr, "127.0.9.1", 1)
        .await
        .pop()
        .expect("the joiner's handshake");
    let mut closed = 0;
    for s in asking.iter_mut() {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(StdDuration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer within the request timeout")
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "answered: {answer:?}");
        let mut b = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(StdDuration::from_millis(500), s.read(&mut b)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
            closed += 1;
        }
    }
    assert_eq!(closed, 1, "the evicted connection closes after its answer");
    drop(idle);
}

/// Evicted connections finish the request in flight, but no more of them
/// at once than the anonymous budget: an attacker whose every connection
/// starts a slow request, each newcomer evicting one, cannot keep every
/// connection it lost open for the request timeout (they no longer count
/// as anonymous, so they would pile up past every anonymous budget).
#[tokio::test]
async fn evicted_connections_finishing_their_requests_are_capped() {
    let srv = join_slots_with_a_slow_route(StdDuration::from_secs(10)).await;
    let slow = b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n";
    // Eight slots, each asking `/slow` from a network of its own.
    let mut first = Vec::new();
    for net in 1..=8 {
        first.extend(anonymous_tls_from(srv.addr, &format!("127.0.{net}.1"), 1).await);
    }
    assert_eq!(first.len(), 8);
    all_join_slots_held(&srv).await;
    for s in first.iter_mut() {
        s.write_all(slow).await.unwrap();
    }
    // Eight newcomers, each asking `/slow` at once: each evicts one of the
    // first eight, which may finish (eight draining: the budget).
    let mut second = Vec::new();
    for net in 10..=17 {
        let mut s = anonymous_tls_from(srv.addr, &format!("127.0.{net}.1"), 1)
            .await
            .pop()
            .expect("a newcomer's handshake");
        s.write_all(slow).await.unwrap();
        second.push(s);
    }
    // A ninth newcomer evicts the first newcomer while eight are still
    // draining: it is cut at once, its request unanswered.
    let started = std::time::Instant::now();
    let _ninth = anonymous_tls_from(srv.addr, "127.0.20.1", 1)
        .await
        .pop()
        .expect("the ninth newcomer's handshake");
    let mut buf = vec![0u8; 4096];
    let cut = tokio::time::timeout(StdDuration::from_secs(5), second[0].read(&mut buf))
        .await
        .expect("closed by the server");
    assert!(matches!(cut, Ok(0) | Err(_)), "{cut:?}");
    assert!(
        started.elapsed() < StdDuration::from_secs(5),
        "cut before its request timeout"
    );
    // The first eight, evicted within the cap, were answered.
    for s in first.iter_mut() {
        let n = tokio::time::timeout(StdDuration::from_secs(15), s.read(&mut buf))
            .await
            .expect("an answer within the request timeout")
            .unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "answered: {answer:?}");
    }
}

/// On a server that admits anonymous peers (the control API's joins), 500
/// slow anonymous TLS connections and 1,000 silent ones from the peer's own
/// address neither hold more than their budgets nor keep the certified
/// peer out.
#[tokio::test]
async fn slow_anonymous_peers_are_held_to_their_budget_and_never_starve_a_certified_one() {
    let srv = start_server_auth(
        ServerLimits::default(),
        HttpLimits::default(),
        ClientAuth::Optional,
    )
    .await;
    let anon = anonymous_tls(srv.addr, 500).await;
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    assert!(
        srv.admission.anonymous_connections() <= ServerLimits::default().max_anonymous_per_source,
        "{} anonymous held from one source",
        srv.admission.anonymous_connections()
    );
    let flood = silent_flood(srv.addr, "127.0.0.1", 1000);
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let t = std::time::Instant::now();
    let resp = client(&master())
        .get(format!("https://{}/whoami", srv.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() < StdDuration::from_secs(1), "{:?}", t.elapsed());
    flood.abort();
    drop(anon);
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_closed_after_the_hello_timeout() {
    let srv = start_server_with(
        ServerLimits {
            client_hello_timeout: StdDuration::from_millis(300),
            handshake_timeout: StdDuration::from_secs(30),
            ..ServerLimits::default()
        },
        HttpLimits::default(),
    )
    .await;
    let mut idle = idle_tcp(srv.addr, "127.0.0.4", 1).await;
    let t = std::time::Instant::now();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(StdDuration::from_secs(5), idle[0].read(&mut b))
        .await
        .expect("closed by the server")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t.elapsed() < StdDuration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(srv.admission.open_connections(), 0);
}

/// A revocation list published while a kept-alive connection is open ends
/// that connection at once, not only the next handshake.
#[tokio::test]
async fn an_open_connection_is_closed_when_its_certificate_is_revoked() {
    let srv = start_server().await;
    let thief = master();
    let cfg = Arc::new(
        decnet_pki::client_config(&thief, None, &ExpectedServer::role(srv_role())).unwrap(),
    );
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("srv").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let hits = srv.hits.load(Ordering::SeqCst);
    let crl = ca()
        .issue_crl(
            &[RevokedSerial {
                serial_hex: thief.identity.serial.clone(),
                revoked_at: OffsetDateTime::now_utc(),
            }],
            1,
            OffsetDateTime::now_utc() + Duration::days(1),
        )
        .unwrap();
    let t = std::time::Instant::now();
    assert!(srv.material.set_crl(crl).unwrap());
    // The server closes the connection by itself...
    let end = tokio::time::timeout(StdDuration::from_secs(2), tls.read(&mut buf))
        .await
        .expect("the server closed the revoked peer's connection");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(t.elapsed() < StdDuration::from_secs(1), "{:?}", t.elapsed());
    // ... and nothing more is served on it.
    let _ = tls
        .write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    assert_eq!(srv.hits.load(Ordering::SeqCst), hits);
    assert_eq!(srv.admission.open_connections(), 0);
}
