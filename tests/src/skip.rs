//! A test whose dependency is missing here (no Docker engine, not root, no
//! rsyslog, no PostgreSQL, ...). Under CI (`CI` set) that is a failure
//! naming it: CI installs everything, so a missing piece is a broken setup,
//! never a pass. Elsewhere the test is skipped, said on stderr, and written
//! to `$DECNET_TEST_SKIPS` (set by `scripts/test.sh`), whose closing
//! summary counts and names every skipped test.
//!
//! One home for the rule: the fleet crate's tests include this file too.

use std::io::Write;

/// Whether this run is CI's (`CI` set to anything but empty, `0`, `false`).
pub fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The current test cannot run here because `why`: under CI a panic,
/// elsewhere a recorded skip. The caller returns after it.
pub fn missing(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let why = why
        .trim_matches(|c: char| c == '\n' || c == '!' || c.is_whitespace())
        .replace("!!!!!!!!", "")
        .replace("!!! ", "")
        .replace('\n', " ");
    let why = why.trim();
    if strict() {
        panic!("{test}: {why} (CI is set: every test dependency must be present)");
    }
    eprintln!("\n!!! SKIPPED {test}: {why}\n");
    if let Some(path) = std::env::var_os("DECNET_TEST_SKIPS")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        // One write: parallel tests append whole lines.
        let _ = f.write_all(format!("{test}: {why}\n").as_bytes());
    }
}
