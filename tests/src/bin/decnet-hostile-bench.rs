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
//! connections and after they close.
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-hostile-bench`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use decnet_e2e::{Listener, MasterHome};
use decnet_pki::{Bundle, BundleKind, ExpectedServer, MaterialSource, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tcp_from(source: &str, to: SocketAddr) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(format!("{source}:0").parse().ok()?).ok()?;
    s.connect(to).await.ok()
}

async fn tls_from(
    source: &str,
    to: SocketAddr,
    bundle: Option<&Bundle>,
    ca_pem: &str,
    expected: &ExpectedServer,
) -> Option<Tls> {
    let cfg = match bundle {
        Some(b) => decnet_pki::client_config(b, None, expected).ok()?,
        None => decnet_pki::tls::anonymous_client_config(ca_pem, expected).ok()?,
    };
    let tcp = tcp_from(source, to).await?;
    let name = rustls_pki_types::ServerName::try_from("decnet").ok()?;
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .ok()?
    .ok()
}

/// Whether the server still holds `s` (no EOF or error within 50 ms).
async fn held(s: &mut (impl AsyncReadExt + Unpin)) -> bool {
    let mut b = [0u8; 64];
    !matches!(
        tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
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
}
