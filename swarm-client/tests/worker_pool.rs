//! One [`WorkerPool`] for many workers, on real sockets with real
//! certificates: each worker is still held to its own identity, per
//! connection, and a resumed TLS session never stands in for a check that
//! would now fail. The attacker here owns a worker (a valid certificate of
//! our CA) and answers where another host was dialed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::routing::get;
use decnet_pki::{
    Bundle, BundleKind, CertificateAuthority, ClientAuth, Fingerprint, HostName, LeafSpec,
    MaterialSource, Role, RoleKind,
};
use decnet_server::{HttpLimits, HttpService, RoleSet, Server, ServerLimits, Transport};
use decnet_swarm_client::{AgentClient, ClientError, WorkerPool};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("generate CA"))
}

fn bundle(role: Role, kind: BundleKind) -> Bundle {
    let leaf = ca().issue(&LeafSpec::for_role(&role, &[])).unwrap();
    Bundle::from_issued(kind, &leaf, ca().cert_pem()).unwrap()
}

/// A real agent-shaped server for `host` (the production runner, mTLS, only
/// the master admitted) answering `/health`; counts the requests it served.
struct FakeAgent {
    addr: SocketAddr,
    fingerprint: Fingerprint,
    hits: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn agent(host: &str) -> FakeAgent {
    agent_named(host, "agent").await
}

/// Like [`agent`], served under the runner name `server` (the label of its
/// handshake counters, so a test can read its own).
async fn agent_named(host: &str, server: &'static str) -> FakeAgent {
    decnet_pki::provider::install_default();
    let b = bundle(Role::Agent(HostName::new(host).unwrap()), BundleKind::Agent);
    let fingerprint = b.identity.fingerprint;
    let server = Server::bind(
        server,
        "127.0.0.1:0".parse().unwrap(),
        Transport::Tls {
            material: MaterialSource::from_parts(b, None).unwrap(),
            auth: ClientAuth::Required,
        },
        ServerLimits::default(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let hits = Arc::new(AtomicUsize::new(0));
    let (h, name) = (hits.clone(), host.to_string());
    let router = Router::new()
        .route(
            "/health",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                let name = name.clone();
                async move {
                    axum::Json(serde_json::json!({
                        "status": "ok", "role": "agent", "host": name, "version": "test"
                    }))
                }
            }),
        )
        // A hostile worker's status: more than any status holds, streamed
        // (no length announced), JSON whitespace all the way.
        .route(
            "/status",
            get(|| async {
                let chunks = (0..80).map(|_| {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 64 * 1024]))
                });
                axum::body::Body::from_stream(futures_util::stream::iter(chunks))
            }),
        )
        // And an operation's answer past what one holds (the 16 MiB of
        // any answer used to be read, a LAN relocation of small objects
        // decoded into a tree of over a GiB).
        .route(
            "/operations/{id}",
            get(|| async {
                oversized_json(b"{\"id\":\"op\",\"done\":true,\"deckies\":[],\"relocation\":[")
            }),
        )
        // A dry run's plan past what one holds.
        .route(
            "/deploy",
            axum::routing::post(|| async { oversized_json(b"{\"rendered\":[") }),
        );
    let app = HttpService::new(
        router,
        RoleSet(vec![RoleKind::Master]),
        HttpLimits::default(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(app, async {
        let _ = rx.await;
    }));
    FakeAgent {
        addr,
        fingerprint,
        hits,
        _stop: tx,
    }
}

/// A streamed answer (no length announced) that opens with `head` and goes
/// on with over 5 MiB of small objects, past what an operation or a plan
/// holds.
fn oversized_json(head: &'static [u8]) -> axum::body::Body {
    let head = futures_util::stream::iter([Ok::<_, std::io::Error>(
        axum::body::Bytes::from_static(head),
    )]);
    let body = futures_util::stream::iter(
        (0..80)
            .map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(b"{\"\":0},".repeat(9362)))),
    );
    axum::body::Body::from_stream(futures_util::StreamExt::chain(head, body))
}

/// `err` is the cut of an answer longer than `limit`.
fn assert_cut_at(err: &ClientError, limit: usize) {
    assert!(
        matches!(err, ClientError::Decode { detail, .. } if detail.contains(&format!("larger than {limit} bytes"))),
        "{err:?}"
    );
}

fn client(pool: &WorkerPool, host: &str, at: &FakeAgent, pins: Vec<Fingerprint>) -> AgentClient {
    AgentClient::in_pool(pool, host, "127.0.0.1", at.addr.port(), pins).unwrap()
}

fn master_pool() -> WorkerPool {
    WorkerPool::new(&bundle(Role::Master, BundleKind::Master)).unwrap()
}

#[tokio::test]
async fn one_pool_holds_each_worker_to_its_own_identity() {
    let (w1, w2) = (agent("w1").await, agent("w2").await);
    let pool = master_pool();
    let c1 = client(&pool, "w1", &w1, vec![w1.fingerprint]);
    let c2 = client(&pool, "w2", &w2, vec![w2.fingerprint]);

    // Interleaved, concurrently, many times: every answer comes from the
    // host that was asked (no connection is handed to the wrong host).
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (c, want) = if i % 2 == 0 {
            (c1.clone(), "w1")
        } else {
            (c2.clone(), "w2")
        };
        calls.spawn(async move { (c.health().await.unwrap().host, want) });
    }
    while let Some(r) = calls.join_next().await {
        let (got, want) = r.unwrap();
        assert_eq!(got, want);
    }
    assert_eq!(w1.hits.load(Ordering::SeqCst), 20);
    assert_eq!(w2.hits.load(Ordering::SeqCst), 20);

    // The attacker's worker w2 answers at the address the master has for
    // w1: refused at the handshake, for its role; it is sent no request.
    let spoofed = client(&pool, "w1", &w2, vec![w1.fingerprint]);
    let err = spoofed.health().await.unwrap_err();
    assert!(matches!(err, ClientError::WrongServer { .. }), "{err}");
    assert_eq!(w2.hits.load(Ordering::SeqCst), 20);

    // Through the same pool w1 still answers, under its own name.
    assert_eq!(c1.health().await.unwrap().host, "w1");
    assert_eq!(pool.servers(), 3);
}

/// w1's session is cached (it was just dialed); then its recorded
/// fingerprint changes (the master re-enrolled w1 elsewhere). The old
/// session must not resume past the new pin: the call is refused and the
/// server sees no request.
#[tokio::test]
async fn a_cached_session_does_not_outlive_a_change_of_pins() {
    let w1 = agent("w1").await;
    let pool = master_pool();
    let before = client(&pool, "w1", &w1, vec![w1.fingerprint]);
    for _ in 0..3 {
        before.health().await.unwrap();
    }
    let hits = w1.hits.load(Ordering::SeqCst);
    let other = Fingerprint::of_der(b"the re-enrolled w1");
    let after = client(&pool, "w1", &w1, vec![other]);
    let err = after.health().await.unwrap_err();
    assert!(matches!(err, ClientError::PinMismatch { .. }), "{err}");
    assert_eq!(w1.hits.load(Ordering::SeqCst), hits);
}

#[tokio::test]
async fn a_worker_recorded_by_host_name_is_resolved_when_dialed() {
    let w1 = agent("w1").await;
    let pool = master_pool();
    let by_name = AgentClient::in_pool(
        &pool,
        "w1",
        "localhost",
        w1.addr.port(),
        vec![w1.fingerprint],
    )
    .unwrap();
    assert_eq!(by_name.health().await.unwrap().host, "w1");
    // A name that does not resolve is an unreachable host, said plainly.
    let nowhere = AgentClient::in_pool(
        &pool,
        "w1",
        "no-such-host.invalid",
        w1.addr.port(),
        vec![w1.fingerprint],
    )
    .unwrap();
    let err = nowhere.health().await.unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    assert!(err.to_string().contains("does not resolve"), "{err}");
}

/// TLS handshakes the runner named `server` completed: (full, resumed).
fn handshakes(server: &str) -> (u64, u64) {
    decnet_server::metrics::server_metrics().handshake_counts(server)
}

/// A fleet-wide command dials every host, then dials each again (a deploy
/// polls its operation): the second dial must resume the host's session
/// even after thousands of other hosts were dialed in between. (The pool's
/// session cache was once sized in tickets where servers were meant: past
/// 2 048 hosts nothing resumed and every poll paid a full handshake.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_resumes_its_session_after_thousands_of_others() {
    const SERVER: &str = "agent-resumes";
    let first = agent_named("w1", SERVER).await;
    let others = agent("w2").await;
    let pool = master_pool();
    let c1 = client(&pool, "w1", &first, vec![first.fingerprint]);
    c1.health().await.unwrap();
    assert_eq!(handshakes(SERVER), (1, 0));

    // 2 100 other hosts, each under a name of its own (a pin list of its
    // own; the real pin is among them so each is verified and answers).
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..2_100u32 {
        let c = client(
            &pool,
            "w2",
            &others,
            vec![others.fingerprint, Fingerprint::of_der(&i.to_be_bytes())],
        );
        let limit = limit.clone();
        calls.spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            c.health().await.map(|h| h.host)
        });
    }
    while let Some(r) = calls.join_next().await {
        assert_eq!(r.unwrap().unwrap(), "w2");
    }
    assert!(pool.servers() > 2_100);

    c1.health().await.unwrap();
    assert_eq!(
        handshakes(SERVER),
        (1, 1),
        "w1's second dial must resume its session, not sign again"
    );
}

/// A worker that never accepts the connection (its accept queue full, so
/// the kernel drops the SYN) is reported after the connect timeout, saying
/// that timeout: not the request timeout it never reached.
#[tokio::test]
async fn a_status_answer_larger_than_a_status_holds_is_cut() {
    // The master asks every worker for its status at once and keeps the
    // answers until the last is in: a worker answering without end must
    // be cut at what a status can hold, not at the 16 MiB of any answer.
    let w = agent("w1").await;
    let pool = master_pool();
    let c = client(&pool, "w1", &w, vec![w.fingerprint]);
    let err = c.status().await.unwrap_err();
    assert_cut_at(&err, decnet_swarm_client::agent::MAX_STATUS_ANSWER);
    // The same connection pool still serves the host's health.
    c.health().await.unwrap();
}

#[tokio::test]
async fn an_operation_answer_larger_than_an_operation_holds_is_cut() {
    let w = agent("w1").await;
    let pool = master_pool();
    let c = client(&pool, "w1", &w, vec![w.fingerprint]);
    let err = c.operation("op").await.unwrap_err();
    assert_cut_at(&err, decnet_swarm_client::agent::MAX_OPERATION_ANSWER);
    c.health().await.unwrap();
}

#[tokio::test]
async fn a_dry_run_answer_larger_than_a_plan_holds_is_cut() {
    let w = agent("w1").await;
    let pool = master_pool();
    let c = client(&pool, "w1", &w, vec![w.fingerprint]);
    let err = c
        .dry_run(&serde_json::json!({"version": 1, "deckies": []}))
        .await
        .unwrap_err();
    assert_cut_at(&err, decnet_swarm_client::agent::MAX_PLAN_ANSWER);
    c.health().await.unwrap();
}

#[tokio::test]
async fn a_connection_never_accepted_is_reported_at_the_connect_timeout() {
    decnet_pki::provider::install_default();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let _queue: Vec<std::net::TcpStream> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).ok()
        })
        .collect();
    let pool = WorkerPool::new(&bundle(Role::Master, BundleKind::Master)).unwrap();
    let pin = bundle(Role::Agent(HostName::new("w1").unwrap()), BundleKind::Agent)
        .identity
        .fingerprint;
    let client = AgentClient::in_pool(&pool, "w1", "127.0.0.1", addr.port(), vec![pin]).unwrap();
    let t = std::time::Instant::now();
    let e = client.health().await.unwrap_err();
    assert!(
        matches!(e, ClientError::Timeout { secs: 5, .. }),
        "{e:?} after {:?}",
        t.elapsed()
    );
    assert!(e.to_string().contains("within 5s"), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(9));
    drop(listener);
}
