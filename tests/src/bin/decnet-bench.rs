//! `decnet-bench`: the agent's `GET /health` over mTLS, measured honestly.
//! Prints figures; it is a benchmark, not a test.
//!
//! Three modes, each for SECONDS with CONCURRENCY clients presenting the
//! master certificate:
//!
//! * **keep-alive**: one connection per client, requests back to back over
//!   hyper's bare HTTP/1 client (no pool, no redirect or cookie machinery:
//!   a client lighter than the server, so the server is what is measured);
//! * **full handshake**: a new TCP + TLS connection per request, TLS session
//!   resumption disabled on the client, so every handshake is a full one
//!   (RSA-2048 signatures and verifications on both sides);
//! * **resumed handshake**: a new connection per request, resumption on.
//!
//! Every handshake's kind is counted from rustls (full / resumed), so the
//! labels are checked, not assumed. Besides requests per second (client
//! and agent share the machine's cores) it reports the agent's CPU time per
//! request, from `/proc/<pid>/stat`: the cost that does not depend on what
//! the client burns.
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-bench -- [SECONDS] [CONCURRENCY]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use decnet_e2e::{Agent, MasterHome, procstat};
use decnet_pki::{BundleKind, ExpectedServer, Role};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::HandshakeKind;
use rustls::client::Resumption;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
}

async fn connect(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    counts: &Counts,
) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from("w1").ok()?;
    let tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .ok()?;
    match tls.get_ref().1.handshake_kind() {
        Some(HandshakeKind::Resumed) => counts.resumed.fetch_add(1, Ordering::Relaxed),
        _ => counts.full.fetch_add(1, Ordering::Relaxed),
    };
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

async fn get(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> bool {
    let req = hyper::Request::get("/health")
        .header("host", "w1")
        .body(Empty::new())
        .expect("request");
    match send.send_request(req).await {
        Ok(resp) if resp.status().is_success() => resp.into_body().collect().await.is_ok(),
        _ => false,
    }
}

/// Run one mode; returns (requests/s, agent CPU ms per request, counts).
async fn run(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    keep_alive: bool,
    seconds: u64,
    concurrency: usize,
    agent_pid: u32,
) -> (f64, f64, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let cpu0 = procstat::cpu_seconds(agent_pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (cfg, counts) = (cfg.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            while Instant::now() < deadline {
                if conn.is_none() || !keep_alive {
                    conn = connect(addr, &cfg, &counts).await;
                }
                let ok = match conn.as_mut() {
                    Some(c) => get(c).await,
                    None => false,
                };
                if ok {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = procstat::cpu_seconds(agent_pid) - cpu0;
    let ok = counts.ok.load(Ordering::Relaxed).max(1) as f64;
    (ok / secs, cpu * 1000.0 / ok, counts)
}

fn line(mode: &str, r: &(f64, f64, Arc<Counts>)) {
    let c = &r.2;
    println!(
        "{mode:<22} {:>9.0} req/s   agent CPU {:>6.3} ms/req   ({} ok, {} failed; handshakes: {} full, {} resumed)",
        r.0,
        r.1,
        c.ok.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.full.load(Ordering::Relaxed),
        c.resumed.load(Ordering::Relaxed),
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let concurrency: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    let agent = Agent::start(&m, "w1", &m.dir.path().join("w1-state"), &[]);
    let pid = agent.daemon.child.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = procstat::rss_kib(&pid.to_string()).unwrap_or(0);
    let bundle = decnet_pki::Bundle::load(&m.master_bundle_dir(), BundleKind::Master).unwrap();
    let expected = ExpectedServer::role(Role::from_cn("w1").unwrap());
    let config = |resume: bool| {
        let mut c = decnet_pki::client_config(&bundle, None, &expected).unwrap();
        if !resume {
            c.resumption = Resumption::disabled();
        }
        Arc::new(c)
    };
    println!(
        "decnet-bench: agent GET /health over mTLS, {seconds}s per mode, {concurrency} concurrent clients"
    );
    println!("agent idle RSS: {:.1} MiB", idle as f64 / 1024.0);
    let addr = agent.daemon.addr;
    line(
        "keep-alive",
        &run(addr, config(true), true, seconds, concurrency, pid).await,
    );
    line(
        "full handshake/req",
        &run(addr, config(false), false, seconds, concurrency, pid).await,
    );
    line(
        "resumed handshake/req",
        &run(addr, config(true), false, seconds, concurrency, pid).await,
    );
    println!(
        "agent RSS after the load: {:.1} MiB",
        procstat::rss_kib(&pid.to_string()).unwrap_or(0) as f64 / 1024.0
    );
    drop(agent);
}
