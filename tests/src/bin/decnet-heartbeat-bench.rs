//! `decnet-heartbeat-bench`: what one heartbeat costs the master. Prints
//! figures; it is a benchmark, not a test.
//!
//! HOSTS agent identities (real certificates signed by the master's CA,
//! recorded in its fleet database) send heartbeats to a real
//! `decnet master serve` the way agents do: each over its own kept-alive
//! mTLS connection (`MasterLink`), the master checking the certificate's
//! standing in the database on every request and recording the beat.
//! After a warm-up in which every host connected once (the full
//! handshakes), it measures for SECONDS with every host beating every
//! INTERVAL_MS, and reports the master's CPU time per heartbeat (from
//! `/proc/<pid>/stat`: what the load generator burns does not count), the
//! rate, failures, and the master's RSS per host.
//!
//! To keep the generator light, every identity shares one key pair (the
//! master checks certificates, not keys' uniqueness).
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-heartbeat-bench -- [HOSTS] [SECONDS] [INTERVAL_MS]`
//! (no arguments: 100, 333 and 1,000 hosts beating once a second, in turn)
//! (with `DECNET_DATABASE_URL=postgres://…` the master uses PostgreSQL;
//! `DECNET_LOG=warn` keeps its log small).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use decnet_e2e::{MasterHome, procstat};
use decnet_pki::MaterialSource;
use decnet_swarm_client::master_link::MasterLink;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    decnet_pki::provider::install_default();
    if std::env::args().nth(1).is_none() {
        // The rates real fleets run at: 100 hosts, 10,000 hosts every 30 s
        // (333/s), and 1,000/s; each against a fresh master.
        for hosts in [100, 333, 1000] {
            measure(hosts, 20, Duration::from_secs(1));
            println!();
        }
        return;
    }
    measure(
        arg(1, 1000) as usize,
        arg(2, 20),
        Duration::from_millis(arg(3, 1000).max(10)),
    );
}

/// One run: `hosts` beating every `interval`, measured for `seconds`.
fn measure(hosts: usize, seconds: u64, interval: Duration) {
    let m = MasterHome::with_database(std::env::var("DECNET_DATABASE_URL").ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Identities: one key, HOSTS certificates, recorded as enrolled hosts.
    let started = Instant::now();
    let bundles = decnet_e2e::issue_agent_identities(&m, &rt, hosts);
    eprintln!(
        "{hosts} identities issued and enrolled in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let master = m.serve(&["--no-listener", "--unreachable-after", "600"]);
    let pid = master.child.id();
    let addr = master.addr.to_string();

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let warmed = Arc::new(AtomicU64::new(0));
    let (ok_m, failed_m) = (ok.clone(), failed.clone());
    let report = rt.block_on(async move {
        let mut tasks = Vec::new();
        for (i, (name, bundle)) in bundles.into_iter().enumerate() {
            let link = MasterLink::new(
                addr.clone(),
                MaterialSource::from_parts(bundle, None).expect("material"),
                None,
            );
            let (ok, failed, measuring, stop, warmed) = (
                ok_m.clone(),
                failed_m.clone(),
                measuring.clone(),
                stop.clone(),
                warmed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                // Spread the hosts over the interval, as real agents are.
                tokio::time::sleep(interval.mul_f64(i as f64 / hosts as f64)).await;
                let body = serde_json::json!({
                    "version": "bench", "driver": "process", "deckies": [],
                    "sent_at_ms": 0,
                });
                let mut first = true;
                let mut tick = tokio::time::interval(interval);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let r = link.heartbeat(&body).await;
                    if first {
                        first = false;
                        warmed.fetch_add(1, Ordering::Relaxed);
                    }
                    if measuring.load(Ordering::Relaxed) {
                        match r {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                    eprintln!("{name}: {e}");
                                }
                                0
                            }
                        };
                    }
                }
            }));
        }
        // Warm-up: every host has connected (full handshake) and beaten once.
        let warm_start = Instant::now();
        while warmed.load(Ordering::Relaxed) < hosts as u64 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(interval).await;
        let warm = warm_start.elapsed();
        let cpu0 = procstat::cpu_seconds(pid);
        let t0 = Instant::now();
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = procstat::cpu_seconds(pid) - cpu0;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
        (warm, elapsed, cpu)
    });
    let (warm, elapsed, cpu) = report;
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let rss = procstat::rss_kib(&pid.to_string()).unwrap_or(0);
    println!(
        "hosts {hosts}, interval {} ms, database {}",
        interval.as_millis(),
        if m.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    println!(
        "warm-up (every host connected: full mTLS handshakes + first beat): {:.1}s",
        warm.as_secs_f64()
    );
    println!(
        "measured {elapsed:.1}s: {ok} heartbeats ({:.0}/s), {failed} failed",
        ok as f64 / elapsed
    );
    if ok > 0 {
        println!(
            "master CPU per heartbeat (kept-alive mTLS, standing check + record): {:.3} ms ({:.1} % of one core)",
            cpu * 1000.0 / ok as f64,
            cpu * 100.0 / elapsed
        );
        println!(
            "at a 30 s interval, one core holds about {:.0} hosts",
            30.0 / (cpu / ok as f64)
        );
    }
    println!(
        "master RSS {} MiB ({:.1} KiB per host)",
        rss / 1024,
        rss as f64 / hosts as f64
    );
    drop(master);
}
