//! The JSON record of one received message, written by hand.
//!
//! The listener writes one record per line it receives; through serde the
//! record cost more than everything else a line costs (every string was
//! escaped byte by byte, and the three fields that name the peer were
//! written again for every line). Here the peer's fields are written once
//! per batch ([`RecordHead`]), and a string with nothing to escape — the
//! common case — is copied whole after a check the compiler vectorizes.
//! Anything else goes through serde_json's own string escaping. The output
//! is byte for byte what serde_json writes for the same record (the tests
//! hold it to that); pure, no IO.

use crate::byte_class::{json_plain, no_control_or_backslash};
use crate::syslog::{StructuredData, Syslog5424};

/// The fields naming who sent a batch, written once per batch: the start
/// of every record of that batch.
#[derive(Clone, Debug)]
pub struct RecordHead(Vec<u8>);

impl RecordHead {
    /// `{"received_at":…,"peer_cn":…,"peer_fingerprint":…,`.
    pub fn new(received_at: &str, peer_cn: &str, peer_fingerprint: Option<&str>) -> RecordHead {
        let mut head = Vec::with_capacity(128);
        head.extend_from_slice(b"{\"received_at\":");
        write_str(&mut head, received_at);
        head.extend_from_slice(b",\"peer_cn\":");
        write_str(&mut head, peer_cn);
        head.extend_from_slice(b",\"peer_fingerprint\":");
        write_opt_str(&mut head, peer_fingerprint);
        head.push(b',');
        RecordHead(head)
    }
}

/// Append the record of one message to `out` (no newline): the parsed
/// message's fields when it is RFC 5424, else only `msg` and
/// `"format":"not-rfc5424"`. `msg` is the message text as it is to be
/// shown (already made safe by the caller).
pub fn write_record(out: &mut Vec<u8>, head: &RecordHead, parsed: Option<&Syslog5424>, msg: &str) {
    out.extend_from_slice(&head.0);
    match parsed {
        Some(m) => {
            // The header fields are printable ASCII (the parser's rule):
            // one scan of the header for `"` and `\` clears all five.
            let header = if json_plain(m.header_bytes) {
                write_opt_plain
            } else {
                write_opt_str
            };
            out.extend_from_slice(b"\"claimed_hostname\":");
            header(out, m.hostname);
            out.extend_from_slice(b",\"app_name\":");
            header(out, m.app_name);
            out.extend_from_slice(b",\"procid\":");
            header(out, m.procid);
            out.extend_from_slice(b",\"msgid\":");
            header(out, m.msgid);
            out.extend_from_slice(b",\"severity\":");
            write_u8(out, m.severity);
            out.extend_from_slice(b",\"facility\":");
            write_u8(out, m.facility);
            out.extend_from_slice(b",\"timestamp\":");
            header(out, m.timestamp);
            out.extend_from_slice(b",\"structured_data\":");
            let sd_plain = no_control_or_backslash(m.structured_data_bytes);
            write_structured_data(out, &m.structured_data, sd_plain);
            out.extend_from_slice(b",\"msg\":");
            write_str(out, msg);
            out.push(b'}');
        }
        None => {
            out.extend_from_slice(
                b"\"claimed_hostname\":null,\"app_name\":null,\"procid\":null,\"msgid\":null,\
                  \"severity\":null,\"facility\":null,\"timestamp\":null,\"structured_data\":{},\"msg\":",
            );
            write_str(out, msg);
            out.extend_from_slice(b",\"format\":\"not-rfc5424\"}");
        }
    }
}

/// `{"SD-ID":{"name":"value",…},…}`, in the order received (a repeated
/// name is written twice, as serde_json writes a map it is handed).
/// `received_plain`: the structured data as received has no control byte
/// and no `\` ([`no_control_or_backslash`]), so its IDs and names, and every
/// value still borrowed from it, need no escaping; a value replaced since
/// (made safe by the listener) is checked as any string.
fn write_structured_data(out: &mut Vec<u8>, sd: &StructuredData, received_plain: bool) {
    let name = if received_plain {
        write_plain
    } else {
        write_str
    };
    out.push(b'{');
    for (i, e) in sd.elements().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        name(out, e.id);
        out.extend_from_slice(b":{");
        for (j, (key, value)) in e.params.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            name(out, key);
            out.push(b':');
            match value {
                std::borrow::Cow::Borrowed(v) if received_plain => write_plain(out, v),
                v => write_str(out, v),
            }
        }
        out.push(b'}');
    }
    out.push(b'}');
}

/// Append `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    if json_plain(s.as_bytes()) {
        write_plain(out, s);
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Append `s`, known to need no escaping ([`json_plain`]), as a JSON string.
#[inline(always)]
fn write_plain(out: &mut Vec<u8>, s: &str) {
    debug_assert!(json_plain(s.as_bytes()), "{s:?}");
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_opt_plain(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_plain(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_u8(out: &mut Vec<u8>, n: u8) {
    if n >= 100 {
        out.push(b'0' + n / 100);
    }
    if n >= 10 {
        out.push(b'0' + (n / 10) % 10);
    }
    out.push(b'0' + n % 10);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syslog;

    /// The record as serde_json writes it: the reference.
    #[derive(serde::Serialize)]
    struct Record<'a> {
        received_at: &'a str,
        peer_cn: &'a str,
        peer_fingerprint: Option<&'a str>,
        claimed_hostname: Option<&'a str>,
        app_name: Option<&'a str>,
        procid: Option<&'a str>,
        msgid: Option<&'a str>,
        severity: Option<u8>,
        facility: Option<u8>,
        timestamp: Option<&'a str>,
        structured_data: &'a StructuredData<'a>,
        msg: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        format: Option<&'static str>,
    }

    fn reference(
        at: &str,
        cn: &str,
        fp: Option<&str>,
        parsed: Option<&Syslog5424>,
        msg: &str,
    ) -> Vec<u8> {
        let empty = StructuredData::default();
        let r = match parsed {
            Some(m) => Record {
                received_at: at,
                peer_cn: cn,
                peer_fingerprint: fp,
                claimed_hostname: m.hostname,
                app_name: m.app_name,
                procid: m.procid,
                msgid: m.msgid,
                severity: Some(m.severity),
                facility: Some(m.facility),
                timestamp: m.timestamp,
                structured_data: &m.structured_data,
                msg,
                format: None,
            },
            None => Record {
                received_at: at,
                peer_cn: cn,
                peer_fingerprint: fp,
                claimed_hostname: None,
                app_name: None,
                procid: None,
                msgid: None,
                severity: None,
                facility: None,
                timestamp: None,
                structured_data: &empty,
                msg,
                format: Some("not-rfc5424"),
            },
        };
        serde_json::to_vec(&r).unwrap()
    }

    fn ours(
        at: &str,
        cn: &str,
        fp: Option<&str>,
        parsed: Option<&Syslog5424>,
        msg: &str,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        write_record(&mut out, &RecordHead::new(at, cn, fp), parsed, msg);
        out
    }

    const LINES: [&[u8]; 12] = [
        b"<134>1 2026-11-23T10:00:00.000Z bench-host honeypot 4242 CONN [conn src=\"10.0.0.1\" port=\"22\"] connection attempt",
        b"<0>1 - - - - - -",
        b"<191>1 - h a p m [a b=\"q\\\"uo\\]te\\\\\" c=\"\x1b[2J\"][x@1 y=\"\xe2\x80\xae\"] msg \"quoted\" back\\slash",
        b"<13>1 2026-01-01T00:00:00Z h\"ost a\\pp p m [id k=\"v\" k=\"w\"] tab\there \xc3\xa9",
        b"<13>1 - - - - - - ",
        b"plain text, not syslog",
        b"<13>Oct 11 22:14:15 host app: bsd style \"q\" \x01\x7f",
        b"",
        b"<165>1 2003-10-11T22:14:15.003Z host app - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\"][examplePriority@32473 class=\"high\"] \xef\xbb\xbfmsg",
        // Structured data that must be escaped though no value has an
        // escape: a `\` in an SD-ID and a name, a control byte in a value.
        b"<13>1 - h a p m [i\\d k\\ey=\"plain\"] m",
        b"<13>1 - h a p m [id k=\"a\tb\"] m",
        // Header fields with `"` and `\` each, the others plain.
        b"<13>1 2026-01-01T00:00:00Z host app\\ - \"m [id k=\"v\"] m",
    ];

    #[test]
    fn records_are_what_serde_json_writes() {
        // The lines for the fast paths' edges are RFC 5424 (else they
        // would test the other path).
        for line in &LINES[9..] {
            assert!(
                syslog::parse(line).is_some(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        for line in LINES {
            let parsed = syslog::parse(line);
            let lossy = String::from_utf8_lossy(line);
            let msg = match &parsed {
                Some(m) => m.msg.clone(),
                None => lossy.clone(),
            };
            for (at, cn, fp) in [
                ("2026-12-06T07:00:00.123456789Z", "worker-1", Some("ab12")),
                ("t", "loopback", None),
                ("t\"", "we\\ird\u{1}cn", Some("\n")),
            ] {
                assert_eq!(
                    String::from_utf8(ours(at, cn, fp, parsed.as_ref(), &msg)).unwrap(),
                    String::from_utf8(reference(at, cn, fp, parsed.as_ref(), &msg)).unwrap(),
                    "line {:?}",
                    lossy
                );
            }
        }
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é✓\u{202e}\u{2028}\u{10ffff}");
        let mut samples = vec![String::new(), "plain".to_string(), all.clone()];
        for c in all.chars() {
            samples.push(format!("{}{c}{}", "x".repeat(31), "y".repeat(40)));
        }
        for s in samples {
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numbers_are_decimal() {
        for n in 0..=u8::MAX {
            let mut out = Vec::new();
            write_u8(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn random_lines_match_the_reference() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let alphabet: &[u8] = b"<>1 -[]=\"\\ab\x00\x1b\x7f\xc3\xa9\xe2\x80\xae\t\n13";
        for _ in 0..20_000 {
            let mut line = LINES[(x % LINES.len() as u64) as usize].to_vec();
            for k in 0..(x % 6) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if !line.is_empty() {
                    let pos = (x >> 3) as usize % line.len();
                    line[pos] = alphabet[(x >> 40) as usize % alphabet.len()];
                }
                if k == 4 {
                    line.truncate((x >> 20) as usize % (line.len() + 1));
                }
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let parsed = syslog::parse(&line);
            let lossy = String::from_utf8_lossy(&line);
            let msg = match &parsed {
                Some(m) => m.msg.clone(),
                None => lossy.clone(),
            };
            assert_eq!(
                ours("t", "cn", Some("fp"), parsed.as_ref(), &msg),
                reference("t", "cn", Some("fp"), parsed.as_ref(), &msg),
                "line {lossy:?}"
            );
        }
    }
}
