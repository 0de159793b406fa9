//! Human output of the CLI: the fleet table, ages and times.

use time::OffsetDateTime;

/// "in 824d", "in 3h", "EXPIRED 2d ago".
pub fn format_expiry(not_after: i64, now: i64) -> String {
    let left = not_after - now;
    if left <= 0 {
        return format!("EXPIRED {}", format_age(-left));
    }
    let span = match left {
        0..60 => format!("{left}s"),
        60..3600 => format!("{}m", left / 60),
        3600..86400 => format!("{}h", left / 3600),
        _ => format!("{}d", left / 86400),
    };
    format!("in {span}")
}

/// The longest worker-supplied text shown in a table cell or a line.
pub const MAX_SHOWN_CHARS: usize = 512;

/// Text a worker sent (a version, a decky's name or state, an error
/// detail), made inert for an operator's terminal: every control, bidi and
/// line-separator character escaped by the log relay's neutralizer, and the
/// length capped. Every human output of worker strings goes through here;
/// `--json` output stays exact JSON.
pub fn inert(s: &str) -> std::borrow::Cow<'_, str> {
    let safe = decnet_telemetry::neutralize::neutralize(s);
    match safe.char_indices().nth(MAX_SHOWN_CHARS) {
        None => safe,
        Some((cut, _)) => std::borrow::Cow::Owned(format!("{}…", &safe[..cut])),
    }
}

/// A borderless, left-aligned table with a header row (comfy-table), each
/// line trimmed, ending with a newline. Every cell is made [`inert`].
pub fn render<R, C>(header: &[&str], rows: R) -> String
where
    R: IntoIterator<Item = Vec<C>>,
    C: AsRef<str>,
{
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(header.to_vec());
    for r in rows {
        t.add_row(r.iter().map(|c| inert(c.as_ref()).into_owned()));
    }
    let mut out = String::new();
    for line in t.to_string().lines() {
        // Each cell is padded by one space: drop the first column's only.
        out.push_str(line.strip_prefix(' ').unwrap_or(line).trim_end());
        out.push('\n');
    }
    out
}

/// The table of hosts `swarm list` prints; CERTS EXPIRE is the sooner of
/// the host's current agent and updater certificates.
pub fn fleet_table(hosts: &[decnet_api::Host], now: i64) -> String {
    render(
        &[
            "HOST",
            "ADDRESS",
            "STATUS",
            "LAST SEEN",
            "VERSION",
            "CERTS EXPIRE",
            "AGENT FP",
            "UPDATER FP",
        ],
        hosts.iter().map(|h| {
            let (a, u) = (h.agent_cert_not_after, h.updater_cert_not_after);
            let soonest = match (a, u) {
                (Some(a), Some(u)) => Some(a.min(u)),
                (a, u) => a.or(u),
            };
            vec![
                h.name.clone(),
                format!("{}:{}", h.address, h.agent_port),
                h.status.clone(),
                match (h.last_seen, h.last_heartbeat) {
                    (None, _) => "never".into(),
                    (Some(t), Some(_)) => format_age(now - t),
                    (Some(t), None) => format!("{} (no heartbeats)", format_age(now - t)),
                },
                h.agent_version.clone().unwrap_or_else(|| "-".into()),
                soonest
                    .map(|t| format_expiry(t, now))
                    .unwrap_or_else(|| "-".into()),
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

/// Now, in unix seconds: what ages and times left are counted from.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix seconds, however many references deep (templates pass fields by
/// reference).
pub trait UnixTime {
    /// The seconds.
    fn unix(&self) -> i64;
}

impl UnixTime for i64 {
    fn unix(&self) -> i64 {
        *self
    }
}

impl<T: UnixTime + ?Sized> UnixTime for &T {
    fn unix(&self) -> i64 {
        (**self).unix()
    }
}

/// `2026-12-05 14:15:30Z` of unix seconds. Pure.
pub fn when(at: impl UnixTime) -> String {
    time::OffsetDateTime::from_unix_timestamp(at.unix())
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| "—".into())
}

/// A URL for the record and for listings: its scheme, host and port
/// only (chat services' webhooks carry their token in the path, others in
/// the query).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(invalid)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_reads_as_time_left_or_expired() {
        assert_eq!(format_expiry(1000 + 90 * 86400, 1000), "in 90d");
        assert_eq!(format_expiry(1000 + 7200, 1000), "in 2h");
        assert_eq!(format_expiry(1000 - 2 * 86400, 1000), "EXPIRED 2d ago");
    }

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
