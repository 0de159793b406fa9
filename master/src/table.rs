//! Human output of the CLI: the fleet table, ages and times.

use decnet_fleet::HostRecord;
use time::OffsetDateTime;

/// A borderless, left-aligned table with a header row (comfy-table), each
/// line trimmed, ending with a newline.
pub fn render<R, C>(header: &[&str], rows: R) -> String
where
    R: IntoIterator<Item = Vec<C>>,
    C: Into<comfy_table::Cell>,
{
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.to_vec());
    for r in rows {
        t.add_row(r);
    }
    let mut out = String::new();
    for line in t.to_string().lines() {
        // Each cell is padded by one space: drop the first column's only.
        out.push_str(line.strip_prefix(' ').unwrap_or(line).trim_end());
        out.push('\n');
    }
    out
}

/// The table of hosts `swarm list` prints.
pub fn fleet_table(hosts: &[HostRecord], now: i64) -> String {
    render(
        &[
            "HOST",
            "ADDRESS",
            "STATUS",
            "LAST SEEN",
            "VERSION",
            "AGENT FP",
            "UPDATER FP",
        ],
        hosts.iter().map(|h| {
            vec![
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
            ]
        }),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_borders() {
        let t = render(
            &["HOST", "STATUS"],
            [vec!["w1", "active"], vec!["web-longer", "-"]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("HOST"), "{t}");
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(lines[1].find("active"), Some(col), "{t}");
        assert!(!t.contains('|') && !t.contains('+'), "{t}");
        // An empty first header cell keeps the columns aligned.
        let t = render(&["", "SLOT"], [vec!["active", "a1"]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].find("SLOT"), lines[1].find("a1"), "{t}");
    }
}
