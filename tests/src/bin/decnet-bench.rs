//! `decnet-bench`: measures the agent's `GET /health` throughput over mTLS
//! (keep-alive, and a new TLS connection per request) and its idle RSS.
//! Prints figures; it is a benchmark, not a test.
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-bench -- [SECONDS] [CONCURRENCY]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use decnet_e2e::{Agent, MasterHome};
use decnet_pki::BundleKind;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

async fn run(
    url: String,
    client_for: impl Fn() -> reqwest::Client,
    seconds: u64,
    concurrency: usize,
) -> (u64, u64) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client_for();
        let (ok, failed, url) = (ok.clone(), failed.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let concurrency: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("bench");
    let agent = Agent::start(&m, "bench", &m.dir.path().join("bench-state"), &[]);
    let pid = agent.daemon.child.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_kib(pid).unwrap_or(0);
    let url = format!("https://{}/health", agent.daemon.addr);
    let bundle = decnet_pki::Bundle::load(&m.master_bundle_dir(), BundleKind::Master).unwrap();
    let expected = decnet_pki::ExpectedServer::role(decnet_pki::Role::from_cn("bench").unwrap());
    let keepalive_client = {
        let b = bundle.clone();
        let e = expected.clone();
        move || {
            reqwest::Client::builder()
                .tls_backend_preconfigured(decnet_pki::client_config(&b, None, &e).unwrap())
                .build()
                .unwrap()
        }
    };
    let fresh_client = {
        let b = bundle.clone();
        let e = expected.clone();
        move || {
            reqwest::Client::builder()
                .tls_backend_preconfigured(decnet_pki::client_config(&b, None, &e).unwrap())
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        }
    };
    println!(
        "decnet-bench: agent GET /health over mTLS, {seconds}s per mode, {concurrency} concurrent clients"
    );
    println!("agent idle RSS: {:.1} MiB", idle as f64 / 1024.0);
    let (ok, failed) = run(url.clone(), keepalive_client, seconds, concurrency).await;
    println!(
        "keep-alive:          {:>8.0} req/s  ({ok} ok, {failed} failed)",
        ok as f64 / seconds as f64
    );
    let (ok, failed) = run(url.clone(), fresh_client, seconds, concurrency).await;
    println!(
        "new conn per request: {:>7.0} req/s  ({ok} ok, {failed} failed; full TLS handshake with RSA-2048 client auth each)",
        ok as f64 / seconds as f64
    );
    println!(
        "agent RSS after load: {:.1} MiB",
        rss_kib(pid).unwrap_or(0) as f64 / 1024.0
    );
    drop(agent);
}
