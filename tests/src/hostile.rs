//! What the attacker tests and `decnet-hostile-bench` do to a server: raw
//! connections from a chosen loopback source, TLS with or without a
//! certificate, floods that keep their connections open (reopening what the
//! server closes), and syslog frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::path::Path;
use std::time::Instant;

use decnet_pki::{Bundle, ExpectedServer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A client TLS stream.
pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TCP connection to `to` from the loopback address `source`.
pub async fn tcp_from(source: &str, to: SocketAddr) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(format!("{source}:0").parse().ok()?).ok()?;
    s.connect(to).await.ok()
}

/// A TLS connection to `to` from `source`, presenting `bundle` (or no
/// certificate), expecting `expected` on the other end.
pub async fn tls_from(
    source: &str,
    to: SocketAddr,
    bundle: Option<&Bundle>,
    ca_pem: &str,
    expected: &ExpectedServer,
) -> Option<Tls> {
    try_tls_from(source, to, bundle, ca_pem, expected)
        .await
        .ok()
}

/// [`tls_from`], saying why it failed.
pub async fn try_tls_from(
    source: &str,
    to: SocketAddr,
    bundle: Option<&Bundle>,
    ca_pem: &str,
    expected: &ExpectedServer,
) -> Result<Tls, String> {
    let cfg = match bundle {
        Some(b) => decnet_pki::client_config(b, None, expected),
        None => decnet_pki::tls::anonymous_client_config(ca_pem, expected),
    }
    .map_err(|e| e.to_string())?;
    let s = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    s.bind(format!("{source}:0").parse().map_err(|e| format!("{e}"))?)
        .map_err(|e| format!("bind: {e}"))?;
    let tcp = s.connect(to).await.map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("decnet").map_err(|e| e.to_string())?;
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake: {e}"))
}

/// Keep `n` silent TCP connections from `source` to `to` open (never a
/// byte of TLS), opening a new one as fast as it can and dropping the
/// oldest beyond `n`, until the task is aborted.
pub fn silent_flood(to: SocketAddr, source: &str, n: usize) -> tokio::task::JoinHandle<()> {
    let source = source.to_string();
    tokio::spawn(async move {
        let mut held = std::collections::VecDeque::new();
        loop {
            if let Some(s) = tcp_from(&source, to).await {
                held.push_back(s);
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if held.len() > n {
                held.pop_front();
            }
            tokio::task::yield_now().await;
        }
    })
}

/// From each of `sources`, keep up to `per_source` TLS connections without
/// a certificate open (handshake done, then silence), reopening every
/// second what the server closed (at most 4 a source at a time: the
/// attack is on descriptors and budgets, not on the CPU), until aborted.
pub fn anonymous_flood(
    to: SocketAddr,
    sources: Vec<String>,
    per_source: usize,
    ca_pem: String,
    expected: ExpectedServer,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for source in sources {
            let (ca, expected) = (ca_pem.clone(), expected.clone());
            tasks.spawn(async move {
                let mut held: Vec<Tls> = Vec::new();
                let mut first = true;
                loop {
                    // Drop what the server closed.
                    let mut open = Vec::with_capacity(held.len());
                    for mut s in held.drain(..) {
                        if still_open(&mut s).await {
                            open.push(s);
                        }
                    }
                    held = open;
                    let mut tries = 0;
                    while held.len() < per_source && (first || tries < 4) {
                        tries += 1;
                        match tls_from(&source, to, None, &ca, &expected).await {
                            Some(s) => held.push(s),
                            None => break,
                        }
                    }
                    first = false;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// Whether the server still holds `s` (no EOF or error within 10 ms).
pub async fn still_open(s: &mut (impl tokio::io::AsyncReadExt + Unpin)) -> bool {
    let mut b = [0u8; 64];
    !matches!(
        tokio::time::timeout(Duration::from_millis(10), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// One RFC 5425 frame carrying an RFC 5424 message from `host`.
pub fn syslog_frame(host: &str, msg: &[u8]) -> Vec<u8> {
    let mut m = format!("<14>1 2026-12-05T12:00:00Z {host} decnet - - - ").into_bytes();
    m.extend_from_slice(msg);
    let mut f = format!("{} ", m.len()).into_bytes();
    f.extend_from_slice(&m);
    f
}

/// A heartbeat of `b` to the control API at `api` on a new connection (a
/// full handshake); how long it took.
pub async fn heartbeat(api: SocketAddr, b: &Bundle) -> Result<Duration, String> {
    let cfg =
        decnet_pki::client_config(b, None, &ExpectedServer::master()).map_err(|e| e.to_string())?;
    let c = reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let r = c
        .post(format!("https://{api}/heartbeat"))
        .json(&serde_json::json!({"version": "0.1.0", "deckies": {}}))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status();
    if status != 200 {
        return Err(format!("{status}: {}", r.text().await.unwrap_or_default()));
    }
    Ok(t.elapsed())
}

/// Send 60 kB frames of `byte` under `b`'s certificate to the listener at
/// `to` as fast as possible for `secs` (reconnecting when cut); the bytes
/// sent.
pub fn flood_lines(
    to: SocketAddr,
    b: Bundle,
    ca: String,
    byte: u8,
    secs: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let frame = syslog_frame(&b.identity.cn, &vec![byte; 60_000]);
        let end = Instant::now() + Duration::from_secs(secs);
        let mut sent = 0u64;
        while Instant::now() < end {
            let Some(mut s) =
                tls_from("127.0.0.1", to, Some(&b), &ca, &ExpectedServer::master()).await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while Instant::now() < end {
                if s.write_all(&frame).await.is_err() {
                    break;
                }
                sent += frame.len() as u64;
            }
        }
        sent
    })
}

/// Bytes the listener wrote to `logs/fleet.log` and `logs/fleet.json` in
/// `log_dir` for `cn` (raw lines and JSON records, newlines included).
pub fn written_for(log_dir: &Path, cn: &str) -> usize {
    let read = |f: &str| std::fs::read_to_string(log_dir.join(f)).unwrap_or_default();
    let raw: usize = read("fleet.log")
        .lines()
        .filter(|l| l.starts_with(&format!("{cn} ")))
        .map(|l| l.len() + 1)
        .sum();
    let json: usize = read("fleet.json")
        .lines()
        .filter(|l| l.contains(&format!("\"peer_cn\":\"{cn}\"")))
        .map(|l| l.len() + 1)
        .sum();
    raw + json
}
