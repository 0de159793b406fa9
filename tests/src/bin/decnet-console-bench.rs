//! `decnet-console-bench`: what the console and the event stream cost the
//! master. Prints figures; it is a benchmark, not a test.
//!
//! 1. **The fleet page at HOSTS hosts.** HOSTS agent identities are issued
//!    and enrolled, each heartbeats once (so every row has a status, a
//!    version, a last-seen time and three deckies); a console session is
//!    opened with a one-time URL; `GET /` is fetched RUNS times over a
//!    kept-alive TLS connection: the time to the first byte (the master
//!    reads the fleet and renders the page), to the last byte, and the
//!    page's size.
//! 2. **The event stream.** BEATING of those hosts heartbeat every second
//!    with a decky whose state flips at every beat (one `host.deckies`
//!    event per beat); the master's CPU (from `/proc`, the generator's does
//!    not count) is measured for SECONDS with 0 followers, then with each
//!    count of FOLLOWERS reading `GET /v1/events` (operator certificates
//!    spread over identities, as teams are). CPU per event delivered is
//!    the difference over events × followers.
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-console-bench -- [HOSTS] [BEATING] [SECONDS]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use decnet_e2e::{MasterHome, Operator, procstat};
use decnet_pki::MaterialSource;
use decnet_swarm_client::master_link::MasterLink;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// A decky list whose state flips with `n`.
fn deckies(n: u64) -> serde_json::Value {
    let flip = if n.is_multiple_of(2) {
        "running"
    } else {
        "exited"
    };
    serde_json::json!([
        {"name": "ssh", "state": "running", "restarts": 0},
        {"name": "web", "state": "running", "restarts": 0},
        {"name": "smb", "state": flip, "restarts": n},
    ])
}

fn main() {
    let hosts = arg(1, 10_000) as usize;
    let beating = (arg(2, 200) as usize).min(hosts);
    let seconds = arg(3, 10);
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let bundles = decnet_e2e::issue_agent_identities(&m, &rt, hosts);
    eprintln!(
        "{hosts} identities issued and enrolled in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let master = m.serve(&["--no-listener", "--unreachable-after", "600"]);
    let pid = master.child.id();
    let addr = master.addr.to_string();
    let console = master.announced("console listening on");
    let links: Vec<Arc<MasterLink>> = bundles
        .into_iter()
        .map(|(_, b)| {
            MasterLink::new(
                addr.clone(),
                MaterialSource::from_parts(b, None).expect("material"),
                None,
            )
        })
        .collect();
    // Every host beats once: a full fleet page.
    rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for l in &links {
            let (l, sem) = (l.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await;
                let body = serde_json::json!({"version": "bench", "deckies": deckies(0)});
                let _ = l.heartbeat(&body).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });

    // 1. The fleet page.
    m.ok(&["operator", "add", "bench", "--role", "admin", "--json"]);
    let url = m.ok(&[
        "console",
        "--operator",
        "bench",
        "--print-url",
        "--url-host",
        "127.0.0.1",
        "--console-port",
        &console.port().to_string(),
    ]);
    let client = reqwest::Client::builder()
        // The fleet's CA signs the master's certificate; a benchmark
        // client need not verify it.
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let (ttfb, total, size) = rt.block_on(async {
        let ticket = url.trim().rsplit('=').next().expect("ticket").to_string();
        let r = client
            .post(format!("https://127.0.0.1:{}/login", console.port()))
            .header("Origin", format!("https://127.0.0.1:{}", console.port()))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("ticket={ticket}"))
            .send()
            .await
            .expect("login");
        assert!(r.status().is_redirection(), "login: {}", r.status());
        let cookie = r
            .headers()
            .get(reqwest::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("a session cookie")
            .to_string();
        let page = format!("https://127.0.0.1:{}/", console.port());
        let mut runs = Vec::new();
        for _ in 0..arg(4, 5) {
            let t0 = Instant::now();
            let r = client
                .get(&page)
                .header(reqwest::header::COOKIE, &cookie)
                .send()
                .await
                .expect("fleet page");
            let first = t0.elapsed();
            assert!(r.status().is_success(), "fleet page: {}", r.status());
            let body = r.bytes().await.expect("body");
            runs.push((first, t0.elapsed(), body.len()));
        }
        runs.sort();
        runs[runs.len() / 2]
    });
    println!("hosts {hosts}");
    println!(
        "fleet page (median of {}): first byte {:.0} ms, whole page {:.0} ms, {:.1} MiB ({} bytes per host)",
        arg(4, 5),
        ttfb.as_secs_f64() * 1000.0,
        total.as_secs_f64() * 1000.0,
        size as f64 / (1 << 20) as f64,
        size / hosts.max(1)
    );

    // 2. The event stream.
    let operators: Vec<Operator> = (0..8)
        .map(|i| Operator::login(&m, &master, &format!("watch{i}"), "viewer", &[]))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let beats = Arc::new(AtomicU64::new(0));
    let _beaters: Vec<_> = links
        .iter()
        .take(beating)
        .enumerate()
        .map(|(i, l)| {
            let (l, stop, beats) = (l.clone(), stop.clone(), beats.clone());
            rt.spawn(async move {
                tokio::time::sleep(Duration::from_millis((i * 1000 / beating.max(1)) as u64)).await;
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut n = 1;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let body = serde_json::json!({"version": "bench", "deckies": deckies(n)});
                    if l.heartbeat(&body).await.is_ok() {
                        beats.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let received = Arc::new(AtomicU64::new(0));
    let mut followers: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    println!(
        "event stream: {beating} hosts beating every second, each beat one host.deckies event"
    );
    let mut baseline: Option<f64> = None;
    for want in [0usize, 10, 100, 500] {
        while followers.len() < want {
            let op = &operators[followers.len() % operators.len()];
            let ctx = op.context_dir();
            let bundle =
                decnet_pki::Bundle::load(&ctx, decnet_pki::BundleKind::Operator).expect("bundle");
            let cfg = decnet_pki::tls::client_config(
                &bundle,
                None,
                &decnet_pki::tls::ExpectedServer::master(),
            )
            .expect("tls");
            let api = std::fs::read_to_string(ctx.join("fleet-api")).expect("fleet-api");
            let c = reqwest::Client::builder()
                .tls_backend_preconfigured(cfg)
                .build()
                .expect("client");
            let url = format!("https://{}/v1/events?topic=host", api.trim());
            let received = received.clone();
            followers.push(rt.spawn(async move {
                let mut r = c.get(url).send().await.expect("follow");
                assert!(r.status().is_success(), "follow: {}", r.status());
                while let Ok(Some(chunk)) = r.chunk().await {
                    let n = chunk.windows(4).filter(|w| w == b"\nid:").count() as u64
                        + u64::from(chunk.starts_with(b"id:"));
                    received.fetch_add(n, Ordering::Relaxed);
                }
            }));
        }
        std::thread::sleep(Duration::from_secs(2));
        let (b0, r0, c0) = (
            beats.load(Ordering::Relaxed),
            received.load(Ordering::Relaxed),
            procstat::cpu_seconds(pid),
        );
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        let elapsed = t0.elapsed().as_secs_f64();
        let events = (beats.load(Ordering::Relaxed) - b0) as f64;
        let got = (received.load(Ordering::Relaxed) - r0) as f64;
        let cpu = procstat::cpu_seconds(pid) - c0;
        let per_s = cpu / elapsed;
        print!(
            "  {want:>3} followers: {:.0} events/s, {:.0} delivered/s, master CPU {:.1} % of a core",
            events / elapsed,
            got / elapsed,
            per_s * 100.0
        );
        match baseline {
            None => {
                baseline = Some(per_s);
                println!(" (heartbeats and publishing, no follower)");
            }
            Some(base) if got > 0.0 => println!(
                ", {:.1} µs per event delivered to a follower",
                (per_s - base) * elapsed * 1e6 / got
            ),
            Some(_) => println!(),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in followers {
        f.abort();
    }
    let rss = procstat::rss_kib(&pid.to_string()).unwrap_or(0);
    println!(
        "master RSS {} MiB with {hosts} hosts and 500 followers",
        rss / 1024
    );
    drop(master);
}
