//! Making hostile log text safe to read.
//!
//! Log lines come from decoys an attacker controls. Written as received they
//! could move an operator's terminal cursor, rewrite earlier lines (ESC
//! sequences), hide text (NUL, bidi overrides that reverse what is shown),
//! or split one message into two lines. Every control character (C0, DEL,
//! C1), every bidirectional formatting character and every line separator is
//! written as a visible escape instead; tab and printable text pass through.

use std::borrow::Cow;

/// Whether `c` must be escaped.
fn dangerous(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{a}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // bidi embeddings, overrides, isolates and marks
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}'
        // line and paragraph separators
        | '\u{2028}' | '\u{2029}')
}

fn escape_into(c: char, out: &mut String) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
        c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
    }
}

/// Whether every byte of `bytes` is printable ASCII or a tab: text with
/// nothing to escape, the common case, told apart without decoding
/// characters (the check runs 32 bytes at a time, without branches, so the
/// compiler vectorizes it).
#[inline]
pub fn plain_ascii(bytes: &[u8]) -> bool {
    bytes.chunks(32).all(|chunk| {
        chunk.iter().fold(true, |ok, &b| {
            ok & (((0x20..0x7f).contains(&b)) | (b == b'\t'))
        })
    })
}

/// `s` with every dangerous character escaped (borrowed when there is none).
#[inline]
pub fn neutralize(s: &str) -> Cow<'_, str> {
    if plain_ascii(s.as_bytes()) || !s.chars().any(dangerous) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if dangerous(c) {
            escape_into(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Append `bytes` to `out` as safe UTF-8 text: invalid UTF-8 becomes U+FFFD,
/// dangerous characters are escaped. Printable ASCII is copied as is.
#[inline]
pub fn neutralize_bytes_into(bytes: &[u8], out: &mut Vec<u8>) {
    if plain_ascii(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    out.extend_from_slice(neutralize(&text).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_can_fool_a_terminal() {
        assert_eq!(neutralize("plain text\tok"), "plain text\tok");
        assert!(matches!(neutralize("plain"), Cow::Borrowed(_)));
        assert_eq!(neutralize("a\u{1b}[2Jb"), "a\\x1b[2Jb");
        assert_eq!(neutralize("nul\0"), "nul\\x00");
        assert_eq!(neutralize("x\ny\rz"), "x\\ny\\rz");
        assert_eq!(neutralize("del\u{7f}"), "del\\x7f");
        assert_eq!(neutralize("c1\u{9b}"), "c1\\x9b");
        assert_eq!(neutralize("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(neutralize("\u{2066}iso\u{2069}"), "\\u{2066}iso\\u{2069}");
        assert_eq!(neutralize("sep\u{2028}"), "sep\\u{2028}");
        assert_eq!(neutralize("héllo ✓"), "héllo ✓");
    }

    #[test]
    fn plain_ascii_is_printable_ascii_and_tab_only() {
        assert!(plain_ascii(b""));
        assert!(plain_ascii(b"plain text\twith a tab ~"));
        // Every position of a long line is checked, not only the first chunk.
        let mut long = vec![b'a'; 100];
        assert!(plain_ascii(&long));
        for bad in [0u8, 0x1b, b'\n', b'\r', 0x7f, 0x80, 0xc2, 0xff] {
            for at in [0, 31, 32, 63, 99] {
                long[at] = bad;
                assert!(!plain_ascii(&long), "byte {bad:#x} at {at}");
                long[at] = b'a';
            }
        }
    }

    #[test]
    fn bytes_are_made_valid_utf8() {
        let mut out = Vec::new();
        neutralize_bytes_into(b"ok \xff\x1b", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "ok \u{fffd}\\x1b");
    }
}
