//! What the listener's formatting costs per line, without TLS, sockets or
//! files: the RFC 5424 parse, and the parse plus the JSON record, of the
//! message `decnet-log-bench` sends. Prints nanoseconds per line (the
//! median of several runs, as this VM's speed drifts); a benchmark, not a
//! test.
//!
//! Run: `cargo bench -p decnet-log-relay --bench format`

use std::hint::black_box;
use std::time::Instant;

use decnet_log_relay::json_record::{RecordHead, write_record};
use decnet_log_relay::syslog;

/// Lines per run.
const LINES: usize = 1_000_000;
/// Runs per figure.
const RUNS: usize = 7;

fn median_ns_per_line(mut run: impl FnMut() -> usize) -> f64 {
    let mut figures: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(run());
            start.elapsed().as_secs_f64() / LINES as f64 * 1e9
        })
        .collect();
    figures.sort_by(f64::total_cmp);
    figures[RUNS / 2]
}

fn main() {
    let frames: Vec<Vec<u8>> = (0..256)
        .map(|i| {
            format!(
                "<134>1 2026-11-23T10:00:00.000Z bench-host honeypot 4242 CONN [conn src=\"10.0.0.1\" port=\"22\"] connection attempt number {i:010} from a scanner probing the fleet with a long enough line"
            )
            .into_bytes()
        })
        .collect();
    let fingerprint = "ab".repeat(32);
    let head = RecordHead::new(
        "2026-12-06T18:00:00.123456789Z",
        "worker-bench-0001",
        Some(&fingerprint),
    );
    let parse = median_ns_per_line(|| {
        let mut n = 0;
        for f in frames.iter().cycle().take(LINES) {
            n += syslog::parse(black_box(f)).map_or(0, |m| m.msg.len());
        }
        n
    });
    // As the listener parses: the structured-data lists reused line after line.
    let reusing = median_ns_per_line(|| {
        let mut n = 0;
        let mut spare = syslog::StructuredData::default();
        for f in frames.iter().cycle().take(LINES) {
            if let Some(m) = syslog::parse_reusing(black_box(f), std::mem::take(&mut spare)) {
                n += m.msg.len();
                spare = m.structured_data.recycle();
            }
        }
        n
    });
    let mut out = Vec::with_capacity(1 << 20);
    let record = median_ns_per_line(|| {
        let mut n = 0;
        let mut spare = syslog::StructuredData::default();
        for f in frames.iter().cycle().take(LINES) {
            if let Some(m) = syslog::parse_reusing(black_box(f), std::mem::take(&mut spare)) {
                write_record(&mut out, &head, Some(&m), &m.msg);
                out.push(b'\n');
                spare = m.structured_data.recycle();
            }
            if out.len() > (1 << 20) - 1024 {
                n += out.len();
                out.clear();
            }
        }
        n
    });
    println!("RFC 5424 parse:                 {parse:6.1} ns/line");
    println!("parse, structured data reused:  {reusing:6.1} ns/line");
    println!("parse (reused) + JSON record:   {record:6.1} ns/line");
}
