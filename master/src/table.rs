//! Human output of the CLI: the fleet table, ages and times.

use decnet_fleet::HostRecord;
use time::OffsetDateTime;

/// A fixed-width table of hosts, as `swarm list` prints it.
pub fn fleet_table(hosts: &[HostRecord], now: i64) -> String {
    let mut rows = vec![[
        "HOST".to_string(),
        "ADDRESS".into(),
        "STATUS".into(),
        "LAST SEEN".into(),
        "VERSION".into(),
        "AGENT FP".into(),
        "UPDATER FP".into(),
    ]];
    for h in hosts {
        rows.push([
            h.name.clone(),
            format!("{}:{}", h.address, h.agent_port),
            h.status.as_str().to_string(),
            h.last_seen
                .map(|t| format_age(now - t))
                .unwrap_or_else(|| "never".into()),
            h.agent_version.clone().unwrap_or_else(|| "-".into()),
            h.agent_fingerprint
                .as_deref()
                .map(short_fp)
                .unwrap_or_else(|| "-".into()),
            h.updater_fingerprint
                .as_deref()
                .map(short_fp)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The first 16 hex digits of a fingerprint.
pub fn short_fp(fp: &str) -> String {
    fp.chars().take(16).collect()
}

/// "42s ago", "5m ago", "3h ago", "2d ago".
pub fn format_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// RFC 3339 for a unix time.
pub fn format_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
