//! `decnet-log-bench`: ingestion rate of the syslog listener over mTLS
//! (several connections, ~200-byte RFC 5424 messages), rsyslog's TLS receiver
//! under the same load for comparison, and the listener's RSS with 1,000
//! idle connections. Prints figures; it is a benchmark, not a test.
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-log-bench -- [CONNECTIONS] [MESSAGES_PER_CONNECTION]`

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use decnet_e2e::{Daemon, Listener, MasterHome};
use decnet_pki::Bundle;
use tokio::io::AsyncWriteExt;

fn message(i: usize) -> Vec<u8> {
    let msg = format!(
        "<134>1 2026-11-23T10:00:00.000Z bench-host honeypot 4242 CONN [conn src=\"10.0.0.1\" port=\"22\"] connection attempt number {i:010} from a scanner probing the fleet with a long enough line"
    );
    decnet_log_relay::frame::encode(msg.as_bytes())
}

async fn connect(
    bundle: &Bundle,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg =
        decnet_pki::client_config(bundle, None, &decnet_pki::ExpectedServer::master()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("decnet-master").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Counts the lines of a growing file, reading only what was appended since
/// the last call: re-reading the whole file every poll (hundreds of MB by
/// the end) took a core away from the receiver being measured.
struct LineCounter {
    file: Option<std::fs::File>,
    path: std::path::PathBuf,
    lines: usize,
    buf: Vec<u8>,
}

impl LineCounter {
    fn new(path: &Path) -> Self {
        LineCounter {
            file: None,
            path: path.to_path_buf(),
            lines: 0,
            buf: vec![0; 1 << 20],
        }
    }

    fn count(&mut self) -> usize {
        use std::io::Read;
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        if let Some(f) = self.file.as_mut() {
            while let Ok(n) = f.read(&mut self.buf) {
                if n == 0 {
                    break;
                }
                self.lines += self.buf[..n].iter().filter(|&&c| c == b'\n').count();
            }
        }
        self.lines
    }
}

/// Send `per_conn` messages on each of `conns` connections (connection `i`
/// presents `bundles[i]`: the listener allows only a few connections per
/// certificate); return the seconds until `out` holds all of them.
async fn load(
    bundles: &[Bundle],
    addr: std::net::SocketAddr,
    conns: usize,
    per_conn: usize,
    out: &Path,
) -> Option<f64> {
    let payload: Vec<u8> = (0..per_conn).flat_map(message).collect();
    let payload = Arc::new(payload);
    let mut counter = LineCounter::new(out);
    let before = counter.count();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        let bundle = bundles[i % bundles.len()].clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = connect(&bundle, addr).await;
            for chunk in payload.chunks(64 * 1024) {
                s.write_all(chunk).await.unwrap();
            }
            s.flush().await.unwrap();
            s
        }));
    }
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.unwrap());
    }
    let want = before + conns * per_conn;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if counter.count() >= want {
            let secs = start.elapsed().as_secs_f64();
            drop(streams);
            return Some(secs);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let args: Vec<String> = std::env::args().collect();
    let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let per_conn: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    // One identity per load connection; 250 identities x 4 connections (the
    // listener's per-certificate cap) for the idle-connection figures.
    let idle_ids = decnet_e2e::enroll_many(&m, "idle", 250);
    let agents = decnet_e2e::enroll_many(&m, "bench", conns);
    let msg_len = message(0).len();
    let total = conns * per_conn;
    println!(
        "decnet-log-bench: {conns} connections x {per_conn} messages of {msg_len} bytes (frame), {total} messages"
    );

    // Per-certificate log budgets off (rsyslog has none) and no rotation
    // (the figure counts the lines of one file).
    let l = Listener::start_with(&m, 0, &["--log-budget", "0", "--log-rotate-size", "0"]);
    let pid = l.daemon.child.id();
    let ours = load(&agents, l.daemon.addr, conns, per_conn, &l.raw)
        .await
        .map(|secs| {
            println!(
                "decnet listener: {:>9.0} msg/s  {:>6.1} MB/s  ({secs:.2}s, raw + JSON written)",
                total as f64 / secs,
                (total * msg_len) as f64 / secs / 1e6
            );
            total as f64 / secs
        });
    if ours.is_none() {
        println!("decnet listener: did not ingest everything within 300 s");
    }
    // 1,000 idle connections (250 certificates x 4), then closed again.
    let base = rss_kib(pid);
    let mut idle = Vec::new();
    for i in 0..1000 {
        idle.push(connect(&idle_ids[i / 4], l.daemon.addr).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_idle = rss_kib(pid);
    drop(idle);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    println!(
        "decnet listener RSS: {:.1} MiB before, {:.1} MiB with 1000 idle mTLS connections ({:.1} KiB each), {:.1} MiB 3 s after they closed",
        base as f64 / 1024.0,
        with_idle as f64 / 1024.0,
        (with_idle.saturating_sub(base)) as f64 / 1000.0,
        after as f64 / 1024.0
    );

    // rsyslog's TLS receiver under the same load.
    let rsyslogd = Path::new("/usr/sbin/rsyslogd");
    if !rsyslogd.exists() {
        println!("rsyslog: not installed; comparison skipped");
        return;
    }
    let mut theirs = Vec::new();
    for with_json in [false, true] {
        theirs.push(rsyslog_run(&m, &agents, rsyslogd, conns, per_conn, with_json).await);
    }
    if let (Some(ours), [Some(raw), Some(json)]) = (ours, theirs.as_slice()) {
        println!(
            "decnet vs rsyslog: {:.2}x rsyslog writing the raw file only, {:.2}x rsyslog doing the same job (raw + JSON)",
            ours / raw,
            ours / json
        );
    }
}

async fn rsyslog_run(
    m: &MasterHome,
    agents: &[Bundle],
    rsyslogd: &Path,
    conns: usize,
    per_conn: usize,
    with_json: bool,
) -> Option<f64> {
    let total = conns * per_conn;
    let msg_len = message(0).len();
    let dir = m.dir.path().join(if with_json {
        "rsyslog-json"
    } else {
        "rsyslog-raw"
    });
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = dir.join("out.log");
    let b = m.master_bundle_dir();
    let conf = format!(
        r#"
global(workDirectory="{work}" DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{b}/ca.crt" DefaultNetstreamDriverCertFile="{b}/worker.crt"
       DefaultNetstreamDriverKeyFile="{b}/worker.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.Authmode="x509/certvalid" MaxSessions="2000")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="json" type="string" string="%jsonmesg%\n")
action(type="omfile" file="{out}" template="RSYSLOG_SyslogProtocol23Format")
{json_action}
"#,
        json_action = if with_json {
            format!(
                r#"action(type="omfile" file="{}" template="json")"#,
                dir.join("out.json").display()
            )
        } else {
            String::new()
        },
        work = dir.join("work").display(),
        b = b.display(),
        out = out.display()
    );
    std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
    let mut cmd = Command::new(rsyslogd);
    cmd.args(["-n", "-f"])
        .arg(dir.join("rsyslog.conf"))
        .arg("-i")
        .arg(dir.join("pid"))
        .stdout(Stdio::null());
    let rs = Daemon::spawn(cmd, dir.join("rsyslogd.log"));
    decnet_e2e::wait_for(Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let rate = load(agents, ([127, 0, 0, 1], port).into(), conns, per_conn, &out).await;
    match rate {
        Some(secs) => println!(
            "rsyslog imtcp+gtls: {:>6.0} msg/s  {:>6.1} MB/s  ({secs:.2}s, {})",
            total as f64 / secs,
            (total * msg_len) as f64 / secs / 1e6,
            if with_json {
                "raw + JSON (%jsonmesg%) written: the same job"
            } else {
                "raw file only"
            }
        ),
        None => println!("rsyslog: did not ingest everything within 300 s"),
    }
    let rpid = rs.child.id();
    let rbase = rss_kib(rpid);
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect(&agents[0], ([127, 0, 0, 1], port).into()).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "rsyslog RSS: {:.1} MiB before, {:.1} MiB with 1000 idle TLS connections",
        rbase as f64 / 1024.0,
        rss_kib(rpid) as f64 / 1024.0
    );
    drop(idle);
    rate.map(|secs| total as f64 / secs)
}
