//! `decnet-bench`: the agent's `GET /health` over mTLS, measured honestly
//! and beside its anchor, nginx, under the same load. Prints figures; it is a
//! benchmark, not a test.
//!
//! Modes, each for SECONDS, with clients presenting the master certificate:
//!
//! * **keep-alive** at 1, 16 and 64 connections (all under the one master
//!   certificate): requests back to back, each written as its bytes and its
//!   answer read and checked (status 200, the whole body by its
//!   `Content-Length`) with no client library's machinery: hyper's client
//!   cost more CPU per request than the servers it measured, so client and
//!   server shared the two cores; this one costs less, so the server is
//!   what is measured;
//! * **full handshake**: a new TCP + TLS connection per request, TLS session
//!   resumption disabled on the client, so every handshake is a full one
//!   (RSA-2048 signatures and verifications on both sides);
//! * **resumed handshake**: a new connection per request, resumption on.
//!
//! Each mode runs three rounds per server, the servers alternating, and the
//! median round is shown (with the failures of all three): this VM's speed
//! drifts within a run. When nginx is installed (`/usr/sbin/nginx`) each
//! mode is run against it too: `worker_processes auto`, the agent's own certificate and key,
//! `ssl_verify_client on` against the same CA and CRL, returning the very
//! body the agent answered. Both are printed with their ratio.
//!
//! Every handshake's kind is counted from rustls (full / resumed), so the
//! labels are checked, not assumed. Besides requests per second (client and
//! server share the machine's cores) it reports the server's CPU time per
//! request, from `/proc/<pid>/stat` (nginx: master and workers): the cost
//! that does not depend on what the client burns.
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-bench -- [SECONDS] [MODES]`
//!
//! MODES (optional, comma-separated) keeps only the modes named: `1`, `16`,
//! `64` (keep-alive at that many connections), `full`, `resumed`; for
//! profiling one mode (the servers' pids are printed, for `perf -p`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use decnet_e2e::{Agent, Daemon, MasterHome, procstat};
use decnet_pki::{BundleKind, ExpectedServer, Role};
use rustls::HandshakeKind;
use rustls::client::Resumption;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    full: AtomicU64,
    resumed: AtomicU64,
}

/// The load client's side of one connection: `GET /health` written as its
/// bytes, the answer read until complete and checked.
struct HealthClient {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

/// The request, as a browser-less client sends it.
const REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nhost: w1\r\n\r\n";

/// Where the body of a complete `200` answer lies in `buf`: `Ok(None)`
/// while the answer is incomplete, `Err` for anything but a `200` with a
/// `Content-Length` (both servers send one).
fn health_body(buf: &[u8]) -> Result<Option<std::ops::Range<usize>>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf).map_err(|_| ())? {
        httparse::Status::Complete(head) => head,
        httparse::Status::Partial => return Ok(None),
    };
    if resp.code != Some(200) {
        return Err(());
    }
    let len: usize = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .ok_or(())?;
    match buf.len().cmp(&(head + len)) {
        std::cmp::Ordering::Less => Ok(None),
        std::cmp::Ordering::Equal => Ok(Some(head..head + len)),
        // Nothing was asked for beyond this answer.
        std::cmp::Ordering::Greater => Err(()),
    }
}

impl HealthClient {
    /// One request; the body of its answer, or `None` on any failure
    /// (the connection is then given up).
    async fn get(&mut self) -> Option<&[u8]> {
        self.tls.write_all(REQUEST).await.ok()?;
        self.tls.flush().await.ok()?;
        self.buf.clear();
        let body = loop {
            if let Some(body) = health_body(&self.buf).ok()? {
                break body;
            }
            if self.tls.read_buf(&mut self.buf).await.ok()? == 0 {
                return None;
            }
        };
        Some(&self.buf[body])
    }
}

async fn connect(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    counts: &Counts,
) -> Option<HealthClient> {
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
    Some(HealthClient {
        tls,
        buf: Vec::with_capacity(4096),
    })
}

/// Pids whose CPU counts for a server: `pid` and its children (nginx's
/// workers; the agent has none that serve).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    pids.extend(
        children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok()),
    );
    pids
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| procstat::cpu_seconds(*p)).sum()
}

/// A server under measurement.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    pids: Vec<u32>,
}

/// nginx serving the agent's own `/health` answer with the agent's
/// certificate and key, requiring a client certificate of the same CA.
struct Nginx {
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn binary() -> Option<PathBuf> {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }

    fn start(nginx: &Path, bundle_dir: &Path, body: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = decnet_e2e::free_port();
        let d = dir.path().display();
        let b = bundle_dir.display();
        // Every setting that costs per request or per handshake matches the
        // agent's: TLS 1.2/1.3, client certificates verified against the CA
        // and its CRL, session resumption on, no access log.
        let crl = bundle_dir.join("crl.pem");
        let crl = if crl.exists() {
            format!("ssl_crl {};", crl.display())
        } else {
            String::new()
        };
        let conf = format!(
            r#"worker_processes auto;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 30s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {b}/worker.crt;
        ssl_certificate_key {b}/worker.key;
        ssl_client_certificate {b}/ca.crt;
        ssl_verify_client on;
        ssl_verify_depth 1;
        {crl}
        ssl_session_cache shared:bench:10m;
        ssl_session_tickets on;
        location = /health {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut cmd = Command::new(nginx);
        cmd.arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"));
        let mut daemon = Daemon::spawn(cmd, dir.path().join("nginx.out"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        daemon.addr = addr;
        decnet_e2e::wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).ok()
        })
        .unwrap_or_else(|| panic!("nginx did not listen: {}", daemon.log_text()));
        Nginx { daemon, _dir: dir }
    }

    fn target(&self) -> Target {
        let pid = self.daemon.child.id();
        Target {
            name: "nginx",
            addr: self.daemon.addr,
            pids: process_tree(pid),
        }
    }
}

/// What one mode measured against one server.
struct Measured {
    per_second: f64,
    cpu_ms: f64,
    /// The load client's CPU per request (this process): the same client
    /// for both servers, so a difference here is the server's doing (how
    /// it frames its answers, how often it makes the client wait).
    client_cpu_ms: f64,
    /// The share of the machine's cores left idle during the round.
    idle: f64,
    counts: Arc<Counts>,
}

/// Run one mode against `target`.
async fn run(
    target: &Target,
    cfg: Arc<rustls::ClientConfig>,
    keep_alive: bool,
    seconds: u64,
    concurrency: usize,
) -> Measured {
    let counts = Arc::new(Counts::default());
    let addr = target.addr;
    let cpu0 = cpu_of(&target.pids);
    let client0 = procstat::cpu_seconds(std::process::id());
    let idle0 = procstat::machine_idle_seconds();
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
                    Some(c) => c.get().await.is_some(),
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
    let cpu = cpu_of(&target.pids) - cpu0;
    let client = procstat::cpu_seconds(std::process::id()) - client0;
    let idle = procstat::machine_idle_seconds() - idle0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let ok = counts.ok.load(Ordering::Relaxed).max(1) as f64;
    Measured {
        per_second: ok / secs,
        cpu_ms: cpu * 1000.0 / ok,
        client_cpu_ms: client * 1000.0 / ok,
        idle: idle / (secs * cores),
        counts,
    }
}

/// Rounds per mode and server.
const ROUNDS: usize = 3;

/// Rounds per mode and server: `DECNET_BENCH_ROUNDS` (odd, for a median
/// round), else [`ROUNDS`]. This VM's speed moves between runs more than
/// the servers differ, so a ratio worth writing down takes more rounds.
fn rounds() -> usize {
    std::env::var("DECNET_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map_or(ROUNDS, |n| n | 1)
}

/// The round with the median rate; its failures are every round's.
/// The median of `v` (empty: NaN).
fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Each round's requests per second, in the order run, in thousands.
fn each_round(rounds: &[Measured]) -> String {
    rounds
        .iter()
        .map(|m| format!("{:.1}k", m.per_second / 1000.0))
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(mut rounds: Vec<Measured>) -> Measured {
    let failed: u64 = rounds
        .iter()
        .map(|m| m.counts.failed.load(Ordering::Relaxed))
        .sum();
    rounds.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    let m = rounds.swap_remove(rounds.len() / 2);
    m.counts.failed.store(failed, Ordering::Relaxed);
    m
}

fn line(server: &str, mode: &str, conns: usize, m: &Measured) {
    let c = &m.counts;
    println!(
        "{server:<6} {mode:<22} {conns:>3} conns {:>9.0} req/s   CPU {:>6.3} ms/req (client {:.3}, machine idle {:.0} %)   ({} ok, {} failed; handshakes: {} full, {} resumed)",
        m.per_second,
        m.cpu_ms,
        m.client_cpu_ms,
        m.idle * 100.0,
        c.ok.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        c.full.load(Ordering::Relaxed),
        c.resumed.load(Ordering::Relaxed),
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let only: Option<Vec<String>> = args
        .get(2)
        .map(|s| s.split(',').map(str::to_owned).collect());
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
    let agent_target = Target {
        name: "agent",
        addr: agent.daemon.addr,
        pids: vec![pid],
    };
    // The agent's answer, served verbatim by nginx.
    let body = {
        let mut client = connect(agent_target.addr, &config(true), &Counts::default())
            .await
            .expect("connect to the agent");
        let bytes = client.get().await.expect("health");
        String::from_utf8(bytes.to_vec()).expect("utf-8 body")
    };
    let nginx = Nginx::binary().map(|bin| Nginx::start(&bin, &m.agent_bundle_dir("w1"), &body));
    let nginx_target = nginx.as_ref().map(Nginx::target);
    println!("decnet-bench: GET /health over mTLS, {seconds}s per mode and server");
    println!("agent idle RSS: {:.1} MiB", idle as f64 / 1024.0);
    println!(
        "pids: agent {pid}, nginx {:?}",
        nginx_target.as_ref().map(|t| &t.pids)
    );
    if nginx.is_none() {
        println!("nginx: not installed; comparison skipped");
    }
    let modes: [(&str, bool, bool, usize); 5] = [
        ("keep-alive", true, true, 1),
        ("keep-alive", true, true, 16),
        ("keep-alive", true, true, 64),
        ("full handshake/req", false, false, 8),
        ("resumed handshake/req", true, false, 8),
    ];
    // The VM's speed drifts between runs and even within one: each mode is
    // measured in `rounds()` rounds, the two servers alternating (and taking
    // turns at going first), and the median round of each is shown.
    let mut summary = Vec::new();
    for (mode, resume, keep_alive, conns) in modes {
        let key = match (keep_alive, resume) {
            (true, _) => conns.to_string(),
            (false, false) => "full".to_owned(),
            (false, true) => "resumed".to_owned(),
        };
        if only.as_ref().is_some_and(|o| !o.contains(&key)) {
            continue;
        }
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for round in 0..rounds() {
            let mut turn = vec![(&agent_target, &mut ours)];
            if let Some(t) = &nginx_target {
                turn.push((t, &mut theirs));
            }
            if round % 2 == 1 {
                turn.reverse();
            }
            for (target, into) in turn {
                into.push(run(target, config(resume), keep_alive, seconds, conns).await);
            }
        }
        let spread = (each_round(&ours), each_round(&theirs));
        // Each round of the agent beside the nginx round next to it in
        // time: the median of these ratios follows the servers, not the
        // VM's drift across the run.
        let paired = median_f64(
            ours.iter()
                .zip(&theirs)
                .map(|(a, n)| a.per_second / n.per_second)
                .collect(),
        );
        let ours = median(ours);
        line(agent_target.name, mode, conns, &ours);
        println!("       rounds: {}", spread.0);
        if let Some(t) = &nginx_target {
            let theirs = median(theirs);
            line(t.name, mode, conns, &theirs);
            println!("       rounds: {}", spread.1);
            summary.push((
                mode,
                conns,
                ours.per_second / theirs.per_second,
                paired,
                theirs.cpu_ms / ours.cpu_ms,
            ));
        }
    }
    if !summary.is_empty() {
        println!(
            "agent vs nginx, median of {} alternating rounds (above 1.0: the agent is ahead)",
            rounds()
        );
        for (mode, conns, rate, paired, cpu) in summary {
            println!(
                "  {mode:<22} {conns:>3} conns   req/s {rate:>5.2}x (round by round {paired:>5.2}x)   CPU per request {cpu:>5.2}x"
            );
        }
    }
    println!(
        "agent RSS after the load: {:.1} MiB",
        procstat::rss_kib(&pid.to_string()).unwrap_or(0) as f64 / 1024.0
    );
    drop(nginx);
    drop(agent);
}
