//! `decnet-hostile-bench`: what legitimate traffic gets while hostile peers
//! hold as much as they can against each server. Prints figures; it is a
//! benchmark, not a test.
//!
//! Against the agent, the control API and the listener in turn, it holds
//! 1,000 idle TCP connections from one unauthenticated source, 500
//! slow-header TLS requests and 1,000 idle TLS connections under one (valid,
//! compromised-worker) certificate — the attackers use their own loopback
//! addresses (127.0.0.2–4), the legitimate callers 127.0.0.1 — and times a
//! real master request to the agent, a heartbeat, a token join and a log line
//! meanwhile. Then the listener's RSS with 1,000 idle authenticated
//! connections and after they close. Then the attacks of the hostile-edge
//! issue: floods from the worker's own address (1,000 silent TCP
//! connections reopened as fast as they are evicted, 500 slow anonymous TLS
//! connections) against a heartbeat and a log connection; a master limited
//! to 1,024 descriptors under 64 sources x 16 anonymous connections; and a
//! peer flooding the listener with control bytes for 20 s under the default
//! budget (what it got written, and another host's line latency).
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-hostile-bench`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use decnet_e2e::{Listener, MasterHome};
use decnet_pki::{Bundle, BundleKind, ExpectedServer, MaterialSource, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use decnet_e2e::hostile::{
    Tls, anonymous_flood, flood_lines, heartbeat, silent_flood, still_open as held, tcp_from,
    tls_from, written_for,
};

struct Siege {
    idle_tcp: Vec<TcpStream>,
    slow: Vec<Tls>,
    idle_tls: Vec<Tls>,
    /// How many of each the server held right after they were opened.
    held_at_open: [usize; 3],
}

async fn count_held<S: AsyncReadExt + Unpin>(v: &mut [S]) -> usize {
    let mut n = 0;
    for s in v.iter_mut() {
        n += usize::from(held(s).await);
    }
    n
}

impl Siege {
    /// Open everything against `to`; `evil` is a compromised worker's
    /// certificate, `None` for slow headers from an anonymous peer.
    async fn open(
        to: SocketAddr,
        evil: &Bundle,
        slow_anonymous: bool,
        ca: &str,
        expected: &ExpectedServer,
    ) -> Siege {
        let mut idle_tcp = Vec::new();
        for _ in 0..1000 {
            if let Some(s) = tcp_from("127.0.0.2", to).await {
                idle_tcp.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let held_tcp = count_held(&mut idle_tcp).await;
        let mut slow = Vec::new();
        for _ in 0..500 {
            let b = (!slow_anonymous).then_some(evil);
            if let Some(mut s) = tls_from("127.0.0.3", to, b, ca, expected).await
                && s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
                    .await
                    .is_ok()
            {
                slow.push(s);
            }
        }
        let mut idle_tls = Vec::new();
        for _ in 0..1000 {
            if let Some(s) = tls_from("127.0.0.4", to, Some(evil), ca, expected).await {
                idle_tls.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held_slow = count_held(&mut slow).await;
        let held_tls = count_held(&mut idle_tls).await;
        Siege {
            idle_tcp,
            slow,
            idle_tls,
            held_at_open: [held_tcp, held_slow, held_tls],
        }
    }

    /// What the server held of each kind right after it was opened.
    fn report(&self) -> String {
        let [a, b, c] = self.held_at_open;
        format!(
            "the server held {a}/{} idle TCP, {b}/{} slow-header TLS, {c}/{} idle TLS under one certificate",
            self.idle_tcp.len(),
            self.slow.len(),
            self.idle_tls.len()
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

async fn worst<F, Fut>(n: usize, mut f: F) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        f().await?;
        worst = worst.max(t.elapsed());
    }
    Ok(worst)
}

fn rss_kib(pid: u32) -> u64 {
    decnet_e2e::procstat::rss_kib(&pid.to_string()).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    m.enroll("w1");
    m.enroll("evil");
    let ca = std::fs::read_to_string(m.home().join("ca/ca.crt")).unwrap();
    let master_bundle = Bundle::load(&m.master_bundle_dir(), BundleKind::Master).unwrap();
    let w1 = Bundle::load(&m.agent_bundle_dir("w1"), BundleKind::Agent).unwrap();
    let evil = Bundle::load(&m.agent_bundle_dir("evil"), BundleKind::Agent).unwrap();

    let api = m.serve(&["--no-listener"]);
    let agent = decnet_e2e::Agent::start(&m, "w1", &m.dir.path().join("w1-state"), &[]);
    let listener = Listener::start(&m, 0);
    println!("decnet-hostile-bench: attackers on 127.0.0.2-4, legitimate callers on 127.0.0.1");
    println!("(worst of 5 calls each, full TLS handshakes: every call uses a new client)\n");

    // 1. Agent: a real master request while the agent is besieged.
    let siege = Siege::open(
        agent.daemon.addr,
        &evil,
        false,
        &ca,
        &ExpectedServer::role(Role::from_cn("w1").unwrap()),
    )
    .await;
    let held_now = siege.report();
    let addr = agent.daemon.addr;
    let w1_pin = w1.identity.fingerprint;
    let r = worst(5, || {
        let mb = master_bundle.clone();
        async move {
            let c = decnet_swarm_client::AgentClient::new(
                "w1",
                &mb,
                "127.0.0.1",
                addr.port(),
                vec![w1_pin],
            )
            .map_err(|e| e.to_string())?;
            c.health().await.map(|_| ()).map_err(|e| e.to_string())
        }
    })
    .await;
    println!(
        "agent        master GET /health: {}   [{held_now}]",
        r.map(ms).unwrap_or_else(|e| e)
    );
    drop(siege);

    // 2. Control API: a heartbeat and a token join; slow headers from
    //    anonymous peers (the control API admits them, for joins).
    let api_addr = api.addr;
    let siege = Siege::open(api_addr, &evil, true, &ca, &ExpectedServer::master()).await;
    let held_now = siege.report();
    let r = worst(5, || {
        let w1 = w1.clone();
        async move {
            let material = MaterialSource::from_parts(w1, None).map_err(|e| e.to_string())?;
            let link = decnet_swarm_client::master_link::MasterLink::new(
                api_addr.to_string(),
                material,
                None,
            );
            link.heartbeat(&serde_json::json!({"version": "bench", "deckies": []}))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let hb = r.map(ms).unwrap_or_else(|e| e);
    let mut i = 0;
    let r = worst(5, || {
        i += 1;
        let host = format!("joiner-{i}");
        let token = m
            .ok(&[
                "swarm",
                "token",
                "create",
                "--host",
                &host,
                "--address",
                "127.0.0.1",
            ])
            .trim()
            .to_string();
        let dir = m.dir.path().join(&host);
        async move {
            decnet_swarm_client::join::join(
                &api_addr.to_string(),
                &token,
                BundleKind::Agent,
                &dir,
                &Default::default(),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
    })
    .await;
    println!(
        "control API  heartbeat: {hb}, token join: {}   [{held_now}]",
        r.map(ms).unwrap_or_else(|e| e),
    );
    drop(siege);

    // 3. Listener: one log line, from sending to written.
    let l_addr = listener.daemon.addr;
    let siege = Siege::open(l_addr, &evil, false, &ca, &ExpectedServer::master()).await;
    let held_now = siege.report();
    let mut n = 0;
    let r = worst(5, || {
        n += 1;
        let line = format!("hostile-bench line {n}");
        let w1 = w1.clone();
        let ca = ca.clone();
        let raw = listener.raw.clone();
        async move {
            let mut s = tls_from(
                "127.0.0.1",
                l_addr,
                Some(&w1),
                &ca,
                &ExpectedServer::master(),
            )
            .await
            .ok_or("no connection")?;
            let msg = format!("<13>1 - w1 bench - - - {line}");
            s.write_all(&decnet_log_relay::frame::encode(msg.as_bytes()))
                .await
                .map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::fs::read_to_string(&raw)
                    .unwrap_or_default()
                    .contains(&line)
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err("line not written within 10 s".into())
        }
    })
    .await;
    println!(
        "listener     one log line sent→written: {}   [{held_now}]",
        r.map(ms).unwrap_or_else(|e| e)
    );
    drop(siege);

    // 4. Listener memory: 1,000 idle authenticated connections (250
    //    certificates x the per-certificate cap of 4), then closed.
    let ids = decnet_e2e::enroll_many(&m, "idle", 250);
    let pid = listener.daemon.child.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib(pid);
    println!("\nlistener RSS idle: {:.1} MiB", base as f64 / 1024.0);
    for round in 1..=3 {
        let mut idle = Vec::new();
        for i in 0..1000 {
            if let Some(s) = tls_from(
                "127.0.0.1",
                l_addr,
                Some(&ids[i / 4]),
                &ca,
                &ExpectedServer::master(),
            )
            .await
            {
                idle.push(s);
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut still = 0;
        for s in &mut idle {
            still += usize::from(held(s).await);
        }
        let with = rss_kib(pid);
        drop(idle);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = rss_kib(pid);
        println!(
            "round {round}: {:.1} MiB with {still} idle authenticated connections ({:.1} KiB each over idle), {:.1} MiB 3 s after they closed",
            with as f64 / 1024.0,
            with.saturating_sub(base) as f64 / still.max(1) as f64,
            after as f64 / 1024.0
        );
    }

    drop(listener);
    drop(agent);
    drop(api);
    same_source(&m, &w1, &ca).await;
    descriptors(&m, &w1, &ca).await;
    log_flood(&m, &w1, &ca).await;
}

/// A master with its listener on a port of its own.
fn master_with_listener(
    m: &MasterHome,
    wrapper: &[&str],
    extra: &[&str],
) -> (decnet_e2e::Daemon, SocketAddr) {
    let port = decnet_e2e::free_port();
    let mut args = vec!["--listener-port".to_string(), port.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (
        m.serve_under(wrapper, &args),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

async fn wait_port(addr: SocketAddr) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A log line of `w1` on a new connection: handshake, then until written.
async fn log_line_latency(
    listener: SocketAddr,
    w1: &Bundle,
    ca: &str,
    raw: &std::path::Path,
    line: &str,
) -> Result<(Duration, Duration), String> {
    let t = Instant::now();
    let mut s = tls_from(
        "127.0.0.1",
        listener,
        Some(w1),
        ca,
        &ExpectedServer::master(),
    )
    .await
    .ok_or("no connection")?;
    let handshake = t.elapsed();
    s.write_all(&decnet_e2e::hostile::syslog_frame("w1", line.as_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    while t.elapsed() < Duration::from_secs(10) {
        if std::fs::read_to_string(raw)
            .unwrap_or_default()
            .contains(line)
        {
            return Ok((handshake, t.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err("line not written within 10 s".into())
}

/// 5. Floods from the worker's own address (a decky sharing it).
async fn same_source(m: &MasterHome, w1: &Bundle, ca: &str) {
    println!(
        "\nsame source: 1,000 silent TCP (reopened as evicted) to the control API and the listener, 500 slow anonymous TLS to the control API, all from 127.0.0.1 = the worker's address"
    );
    let (master, listener) = master_with_listener(m, &[], &[]);
    wait_port(listener).await;
    let floods = [
        silent_flood(master.addr, "127.0.0.1", 1000),
        silent_flood(listener, "127.0.0.1", 1000),
        anonymous_flood(
            master.addr,
            vec!["127.0.0.1".into()],
            500,
            ca.to_string(),
            ExpectedServer::master(),
        ),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;
    let raw = m.home().join("logs/fleet.log");
    let (mut hb, mut hs, mut line, mut failed) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for i in 0..10 {
        match heartbeat(master.addr, w1).await {
            Ok(d) => hb.push(d),
            Err(_) => failed += 1,
        }
        match log_line_latency(listener, w1, ca, &raw, &format!("same-source-{i}")).await {
            Ok((h, l)) => {
                hs.push(h);
                line.push(l);
            }
            Err(_) => failed += 1,
        }
    }
    for f in floods {
        f.abort();
    }
    let worst = |v: &[Duration]| {
        v.iter()
            .max()
            .copied()
            .map(ms)
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "  heartbeat (new connection) worst {}, log handshake worst {}, log line sent→written worst {}; {failed} of 20 failed",
        worst(&hb),
        worst(&hs),
        worst(&line)
    );
}

/// 6. The descriptor attack on a master limited to 1,024 descriptors.
async fn descriptors(m: &MasterHome, w1: &Bundle, ca: &str) {
    println!(
        "\ndescriptors: master under prlimit --nofile=1024, 64 sources x 16 anonymous TLS connections"
    );
    let master = m.serve_under(&["prlimit", "--nofile=1024:1024", "--"], &["--no-listener"]);
    let sources: Vec<String> = (2..66).map(|i| format!("127.0.0.{i}")).collect();
    let flood = anonymous_flood(
        master.addr,
        sources,
        16,
        ca.to_string(),
        ExpectedServer::master(),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (mut worst, mut failed) = (Duration::ZERO, 0);
    for _ in 0..10 {
        match heartbeat(master.addr, w1).await {
            Ok(d) => worst = worst.max(d),
            Err(_) => failed += 1,
        }
    }
    flood.abort();
    let accept_failed = master.log_text().matches("accept failed").count();
    println!(
        "  heartbeat (new connection) worst {}; {failed} of 10 failed; 'accept failed' logged {accept_failed} time(s)",
        ms(worst)
    );
}

/// 7. A peer flooding the listener with control bytes under the default budget.
async fn log_flood(m: &MasterHome, w1: &Bundle, ca: &str) {
    println!(
        "\nlog flood: one certificate sends 60 kB frames of ESC bytes for 20 s; default budget (1 MiB/s, 64 MiB burst)"
    );
    m.enroll("flooder");
    let evil = Bundle::load(&m.agent_bundle_dir("flooder"), BundleKind::Agent).unwrap();
    let (master, listener) = master_with_listener(m, &[], &[]);
    wait_port(listener).await;
    let flood = flood_lines(listener, evil, ca.to_string(), 0x1b, 20);
    let raw = m.home().join("logs/fleet.log");
    let mut worst = Duration::ZERO;
    for i in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok((_, l)) = log_line_latency(listener, w1, ca, &raw, &format!("calm-{i}")).await {
            worst = worst.max(l);
        }
    }
    let sent = flood.await.unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = written_for(&m.home().join("logs"), "flooder");
    println!(
        "  sent {:.1} MiB, written for it {:.1} MiB (budget allows {:.1} MiB in 20 s), another host's line sent→written worst {}",
        sent as f64 / (1 << 20) as f64,
        written as f64 / (1 << 20) as f64,
        (64.0 + 20.0),
        ms(worst)
    );
    drop(master);
}
