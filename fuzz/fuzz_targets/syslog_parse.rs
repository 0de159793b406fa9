//! RFC 5424 parsing of hostile messages: never panics; what it returns is
//! consistent (PRI in range, header fields printable) and serializes; the
//! neutralized text holds no control or bidi character.
#![no_main]

use decnet_log_relay::neutralize::neutralize;
use decnet_log_relay::syslog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(m) = syslog::parse(data) {
        assert!(m.facility < 24 && m.severity < 8);
        for f in [m.timestamp, m.hostname, m.app_name, m.procid, m.msgid].into_iter().flatten() {
            assert!(f.bytes().all(|b| (33..=126).contains(&b)), "{f:?}");
        }
        let _ = serde_json::to_string(&m.structured_data);
        let safe = neutralize(&m.msg);
        assert!(!safe.chars().any(|c| c.is_control() && c != '\t'));
    }
    let line = String::from_utf8_lossy(data);
    let wrapped = syslog::wrap_line(&line, "host", "app", time::OffsetDateTime::UNIX_EPOCH);
    assert!(syslog::parse(wrapped.as_bytes()).is_some() || syslog::parse(line.as_bytes()).is_some());
});
