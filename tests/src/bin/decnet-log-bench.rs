//! `decnet-log-bench`: ingestion rate of the syslog listener over mTLS
//! (several connections, ~200-byte RFC 5424 messages), rsyslog's TLS receiver
//! under the same load for comparison, and the listener's RSS with 1,000
//! idle connections. Prints figures; it is a benchmark, not a test.
//!
//! This VM's speed drifts within a run, and one load lasts about a second,
//! so the listener and rsyslog writing the raw file only take turns for
//! ROUNDS rounds (each going first in turn) and the median round of each is
//! compared, after one load of each that is not counted (the first round
//! after a start ran at about half speed, for both). rsyslog writing raw +
//! JSON, several times slower, runs once.
//! Each round starts from empty files (the receivers append) after a
//! `sync`, with no dirty pages left to write back.
//! Besides messages per second (sender and receiver share the machine's
//! cores) it reports each receiver's CPU time per message, from
//! `/proc/<pid>/stat`: the cost that does not depend on the sender, and
//! the bytes it wrote per message (the listener writes two files, rsyslog
//! raw-only one): a load larger than the page cache takes is bound by the
//! disk's bandwidth divided by that.
//!
//! rsyslog runs with its batching turned up (main queue dequeue batches of
//! 1,024, 1 MiB output buffers); measured no faster than its defaults
//! here, kept so its side is not held back by them.
//!
//! Run: `cargo run --release -p decnet-e2e --bin decnet-log-bench -- [CONNECTIONS] [MESSAGES_PER_CONNECTION] [ROUNDS]`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use decnet_e2e::{Daemon, Listener, MasterHome, procstat};
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
                self.lines += newlines(&self.buf[..n]);
            }
        }
        self.lines
    }
}

/// The newlines in `bytes`, 32 bytes at a time (the compiler turns each
/// step into vector compares). Counted byte by byte, this took more of the
/// benchmark's CPU than its TLS senders, on the cores the receiver it
/// measures runs on, and the more so the faster the receiver.
fn newlines(bytes: &[u8]) -> usize {
    let mut chunks = bytes.chunks_exact(32);
    let mut n: usize = (&mut chunks)
        .map(|c| c.iter().map(|&b| u8::from(b == b'\n')).sum::<u8>() as usize)
        .sum();
    n += chunks.remainder().iter().filter(|&&b| b == b'\n').count();
    n
}

/// One load: seconds until the receiver had written every line, and the CPU
/// seconds the receiver and the sender used meanwhile.
#[derive(Clone, Copy, Debug)]
struct Round {
    secs: f64,
    receiver_cpu: f64,
    sender_cpu: f64,
    /// Core-seconds the machine left idle meanwhile (all cores).
    idle: f64,
    /// Bytes the receiver wrote to its files (raw, and JSON if it writes
    /// it): once the page cache is full, the disk's bandwidth divided by
    /// this is the most it can ingest.
    written: u64,
}

/// Send `per_conn` messages on each of `conns` connections (connection `i`
/// presents `bundles[i]`: the listener allows only a few connections per
/// certificate) to the receiver `pid` at `addr`; measure until `out` holds
/// all of them.
async fn load(
    bundles: &[Bundle],
    addr: SocketAddr,
    pid: u32,
    conns: usize,
    per_conn: usize,
    out: &Path,
) -> Option<Round> {
    let payload: Vec<u8> = (0..per_conn).flat_map(message).collect();
    let payload = Arc::new(payload);
    let mut counter = LineCounter::new(out);
    let before = counter.count();
    let (receiver_before, sender_before, idle_before) = (
        procstat::cpu_seconds(pid),
        procstat::cpu_seconds(std::process::id()),
        procstat::machine_idle_seconds(),
    );
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
            let round = Round {
                secs: start.elapsed().as_secs_f64(),
                receiver_cpu: procstat::cpu_seconds(pid) - receiver_before,
                sender_cpu: procstat::cpu_seconds(std::process::id()) - sender_before,
                idle: procstat::machine_idle_seconds() - idle_before,
                written: 0,
            };
            drop(streams);
            return Some(round);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(poll_interval(counter.lines, before, want)).await;
    }
}

/// How long to wait before counting again: 20 ms while most lines are
/// still to come, 1 ms over the last tenth. The round ends at the count
/// that first sees every line, so a coarse poll adds half its interval to
/// every round on average: 10 ms at 20 ms, 1.5 % of a 0.7-s round of the
/// listener but 0.5 % of rsyslog's 2-s round, a bias against the faster
/// receiver. The bytes read (the counter's cost) are the same either way.
fn poll_interval(counted: usize, before: usize, want: usize) -> Duration {
    let total = want - before;
    if counted.saturating_sub(before) * 10 >= total * 9 {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(20)
    }
}

/// The machine's cores, for the idle share.
fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn rss_kib(pid: u32) -> u64 {
    decnet_e2e::procstat::rss_kib(&pid.to_string()).unwrap_or(0)
}

/// A receiver under measurement and its rounds.
struct Receiver {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
    /// The file whose lines are counted.
    out: PathBuf,
    /// Every file it writes (emptied before each round; it appends).
    files: Vec<PathBuf>,
    rounds: Vec<Round>,
}

impl Receiver {
    async fn measure(&mut self, bundles: &[Bundle], conns: usize, per_conn: usize) {
        // Every round starts from empty files and no dirty page cache: the
        // gigabytes the previous rounds wrote would otherwise be written
        // back during this one, and fresh page cache on this VM costs
        // first touches of guest memory (a copy into the page cache was
        // measured several times slower from the third round on) where
        // truncated files give their pages back for the next round.
        let _ = Command::new("sync").status();
        for f in &self.files {
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(f) {
                let _ = file.set_len(0);
            }
        }
        match load(bundles, self.addr, self.pid, conns, per_conn, &self.out).await {
            Some(mut r) => {
                r.written = self
                    .files
                    .iter()
                    .filter_map(|f| std::fs::metadata(f).ok())
                    .map(|m| m.len())
                    .sum();
                self.rounds.push(r)
            }
            None => println!("{}: did not ingest everything within 300 s", self.name),
        }
    }

    /// The median round (by time).
    fn median(&self) -> Option<Round> {
        let mut r = self.rounds.clone();
        r.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        r.get(r.len() / 2).copied()
    }

    /// Print the median round; returns its messages per second.
    fn report(&self, total: usize, msg_len: usize) -> Option<f64> {
        let m = self.median()?;
        let all: Vec<String> = self
            .rounds
            .iter()
            .map(|r| format!("{:.0}k", total as f64 / r.secs / 1e3))
            .collect();
        println!(
            "{:<34} {:>9.0} msg/s {:>6.1} MB/s   receiver CPU {:.2} us/msg, sender CPU {:.2} us/msg, machine idle {:.0} %, wrote {} B/msg   (rounds: {})",
            self.name,
            total as f64 / m.secs,
            (total * msg_len) as f64 / m.secs / 1e6,
            m.receiver_cpu / total as f64 * 1e6,
            m.sender_cpu / total as f64 * 1e6,
            m.idle / (m.secs * cores()) * 100.0,
            m.written / total as u64,
            all.join(" ")
        );
        Some(total as f64 / m.secs)
    }
}

/// rsyslog's TLS receiver (`imtcp` with the GnuTLS driver, certificates of
/// the same CA), writing the raw file, plus a JSON file when `with_json`.
fn start_rsyslog(m: &MasterHome, rsyslogd: &Path, with_json: bool) -> (Daemon, Receiver) {
    let dir = m.dir.path().join(if with_json {
        "rsyslog-json"
    } else {
        "rsyslog-raw"
    });
    std::fs::create_dir_all(dir.join("work")).unwrap();
    let port = decnet_e2e::free_port();
    let out = dir.join("out.log");
    let b = m.master_bundle_dir();
    let conf = format!(
        r#"
global(workDirectory="{work}" DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{b}/ca.crt" DefaultNetstreamDriverCertFile="{b}/worker.crt"
       DefaultNetstreamDriverKeyFile="{b}/worker.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.Authmode="x509/certvalid" MaxSessions="2000")
main_queue(queue.dequeueBatchSize="1024" queue.size="100000")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="json" type="string" string="%jsonmesg%\n")
action(type="omfile" file="{out}" template="RSYSLOG_SyslogProtocol23Format" ioBufferSize="1m")
{json_action}
"#,
        json_action = if with_json {
            format!(
                r#"action(type="omfile" file="{}" template="json" ioBufferSize="1m")"#,
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
    let daemon = Daemon::spawn(cmd, dir.join("rsyslogd.log"));
    decnet_e2e::wait_for(Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let receiver = Receiver {
        name: if with_json {
            "rsyslog, raw + JSON (the same job)"
        } else {
            "rsyslog, raw file only"
        },
        addr: ([127, 0, 0, 1], port).into(),
        pid: daemon.child.id(),
        files: vec![out.clone(), dir.join("out.json")],
        out,
        rounds: Vec::new(),
    };
    (daemon, receiver)
}

/// The receiver's RSS before, with 1,000 idle mTLS connections (250
/// certificates x 4: the listener's per-certificate cap) and 3 s after
/// they closed.
async fn idle_rss(r: &Receiver, ids: &[Bundle]) {
    let base = rss_kib(r.pid);
    let mut idle = Vec::new();
    for i in 0..1000 {
        idle.push(connect(&ids[i / 4], r.addr).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_idle = rss_kib(r.pid);
    drop(idle);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(r.pid);
    println!(
        "{} RSS: {:.1} MiB before, {:.1} MiB with 1000 idle mTLS connections ({:.1} KiB each), {:.1} MiB 3 s after they closed",
        r.name,
        base as f64 / 1024.0,
        with_idle as f64 / 1024.0,
        (with_idle.saturating_sub(base)) as f64 / 1000.0,
        after as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let per_conn: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    decnet_pki::provider::install_default();
    let m = MasterHome::new();
    let idle_ids = decnet_e2e::enroll_many(&m, "idle", 250);
    let agents = decnet_e2e::enroll_many(&m, "bench", conns);
    let msg_len = message(0).len();
    let total = conns * per_conn;
    println!(
        "decnet-log-bench: {conns} connections x {per_conn} messages of {msg_len} bytes (frame), {total} messages per round, {rounds} rounds"
    );

    // Per-host log budgets off (rsyslog has none) and no rotation
    // (the figure counts the lines of one file). With
    // DECNET_LOG_BENCH_BUDGETS=on the budgets are in force, as in
    // production, but set too high to drop a line: what charging every
    // line costs.
    let budgets = std::env::var("DECNET_LOG_BENCH_BUDGETS").is_ok_and(|v| v == "on");
    let flags: &[&str] = if budgets {
        println!("per-host log budgets: in force (never reached)");
        &[
            "--log-budget",
            "100G",
            "--log-burst",
            "1000G",
            "--log-line-budget",
            "1000000000",
            "--log-rotate-size",
            "0",
        ]
    } else {
        &["--log-budget", "0", "--log-rotate-size", "0"]
    };
    let l = Listener::start_with(&m, 0, flags);
    let mut ours = Receiver {
        name: "decnet listener (raw + JSON)",
        addr: l.daemon.addr,
        pid: l.daemon.child.id(),
        out: l.raw.clone(),
        files: vec![l.raw.clone(), l.json.clone()],
        rounds: Vec::new(),
    };
    let rsyslogd = Path::new("/usr/sbin/rsyslogd");
    let mut raw_only = rsyslogd
        .exists()
        .then(|| start_rsyslog(&m, rsyslogd, false));
    if raw_only.is_none() {
        println!("rsyslog: not installed; comparison skipped");
    }
    // A first load of each, not counted: the first round after a receiver
    // starts ran at half the speed of the next ones, for rsyslog as for us
    // (its files' first pages, the guest memory the page cache first
    // touches); the figure is the receivers' steady state.
    ours.measure(&agents, conns, per_conn).await;
    ours.rounds.clear();
    if let Some((_, raw)) = raw_only.as_mut() {
        raw.measure(&agents, conns, per_conn).await;
        raw.rounds.clear();
    }
    for round in 0..rounds {
        if round % 2 == 0 {
            ours.measure(&agents, conns, per_conn).await;
        }
        if let Some((_, raw)) = raw_only.as_mut() {
            raw.measure(&agents, conns, per_conn).await;
        }
        if round % 2 == 1 {
            ours.measure(&agents, conns, per_conn).await;
        }
    }
    let mut same_job = raw_only
        .is_some()
        .then(|| start_rsyslog(&m, rsyslogd, true));
    if let Some((_, json)) = same_job.as_mut() {
        json.measure(&agents, conns, per_conn).await;
    }

    println!("median round of each:");
    let our_rate = ours.report(total, msg_len);
    let raw_rate = raw_only
        .as_ref()
        .and_then(|(_, r)| r.report(total, msg_len));
    let json_rate = same_job
        .as_ref()
        .and_then(|(_, r)| r.report(total, msg_len));
    if let (Some(o), Some(r)) = (our_rate, raw_rate) {
        let cpu = |rc: &Receiver| rc.median().map(|m| m.receiver_cpu).unwrap_or(f64::NAN);
        let raw = &raw_only.as_ref().unwrap().1;
        // Each round of ours beside rsyslog's next to it in time (the
        // rounds alternate): the median of these ratios follows the
        // receivers, not the VM's drift across the run.
        let mut paired: Vec<f64> = ours
            .rounds
            .iter()
            .zip(&raw.rounds)
            .map(|(a, b)| b.secs / a.secs)
            .collect();
        paired.sort_by(f64::total_cmp);
        println!(
            "decnet vs rsyslog raw only: {:.2}x msg/s (round by round {:.2}x), {:.2}x less CPU per message",
            o / r,
            paired.get(paired.len() / 2).copied().unwrap_or(f64::NAN),
            cpu(raw) / cpu(&ours)
        );
        if let (Some(j), Some((_, json))) = (json_rate, same_job.as_ref()) {
            println!(
                "decnet vs rsyslog raw + JSON (the same job): {:.2}x msg/s, {:.2}x less CPU per message",
                o / j,
                cpu(json) / cpu(&ours)
            );
        }
    }
    idle_rss(&ours, &idle_ids).await;
    if let Some((_, raw)) = raw_only.as_ref() {
        idle_rss(raw, &idle_ids).await;
    }
}
