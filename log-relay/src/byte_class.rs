//! Scans for the byte classes RFC 5424 and JSON care about, eight bytes at
//! a time.
//!
//! The parser walked a frame's header fields and structured-data names one
//! byte at a time, testing each against a range (a third of the parse,
//! measured), and the JSON record tested every string it copied the same
//! way. These scans load eight bytes into a `u64` and flag every byte of a
//! class with a few integer operations (the classic "has a byte less than
//! n / equal to c" tricks), so a field of 10–30 bytes is one to four steps.
//! Each flagging function may also flag bytes *after* a truly flagged one
//! (a borrow or carry runs upward), never before it, so the lowest flag is
//! always exact: the scans only ever use the lowest. Pure, no unsafe; the
//! tests hold every scan to its byte-by-byte definition.

/// `0x01` in every byte.
const ONES: u64 = u64::from_le_bytes([0x01; 8]);
/// `0x80` in every byte.
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// Flags (high bit) the bytes of `x` below `n` (`n` at most 128).
#[inline(always)]
const fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * n as u64) & !x & HIGHS
}

/// Flags the bytes of `x` above `n` (`n` at most 127).
#[inline(always)]
const fn above(x: u64, n: u8) -> u64 {
    (x.wrapping_add(ONES * (127 - n) as u64) | x) & HIGHS
}

/// Flags the bytes of `x` equal to `c`.
#[inline(always)]
const fn equal(x: u64, c: u8) -> u64 {
    let y = x ^ (ONES * c as u64);
    y.wrapping_sub(ONES) & !y & HIGHS
}

/// Bytes outside PRINTUSASCII (33–126): what ends an RFC 5424 header field.
#[inline(always)]
const fn not_printusascii(x: u64) -> u64 {
    below(x, 33) | above(x, 126)
}

/// What ends an SD-NAME: a byte outside PRINTUSASCII, `=`, `]` or `"`.
#[inline(always)]
const fn not_sd_name(x: u64) -> u64 {
    not_printusascii(x) | equal(x, b'=') | equal(x, b']') | equal(x, b'"')
}

/// What ends an SD-PARAM value's plain stretch: `"` or `\`.
#[inline(always)]
const fn quote_or_backslash(x: u64) -> u64 {
    equal(x, b'"') | equal(x, b'\\')
}

/// What a JSON string must escape: a control byte, `"` or `\`.
#[inline(always)]
const fn json_escaped(x: u64) -> u64 {
    below(x, 0x20) | equal(x, b'"') | equal(x, b'\\')
}

/// What may not stand in structured data written as it is: a control byte
/// or `\` (the `"` around values are the syntax's own).
#[inline(always)]
const fn control_or_backslash(x: u64) -> u64 {
    below(x, 0x20) | equal(x, b'\\')
}

/// A byte no flagging function here flags: the padding of a short tail.
const PAD: u8 = b'a';

/// `s` (shorter than eight bytes) as a word padded with [`PAD`], loaded in
/// registers: two overlapping loads of four (or two) bytes. Copied byte by
/// byte into an array, the word was written to memory and read back at
/// once, a stall that cost more than the whole scan.
#[inline(always)]
fn load_short(s: &[u8]) -> u64 {
    let n = s.len();
    debug_assert!(n < 8);
    let w = if n >= 4 {
        let lo = u64::from(u32::from_le_bytes(s[..4].try_into().expect("four bytes")));
        let hi = u64::from(u32::from_le_bytes(
            s[n - 4..].try_into().expect("four bytes"),
        ));
        lo | (hi << (8 * (n - 4)))
    } else if n >= 2 {
        let lo = u64::from(u16::from_le_bytes(s[..2].try_into().expect("two bytes")));
        let hi = u64::from(u16::from_le_bytes(
            s[n - 2..].try_into().expect("two bytes"),
        ));
        lo | (hi << (8 * (n - 2)))
    } else if n == 1 {
        u64::from(s[0])
    } else {
        0
    };
    w | (ONES * u64::from(PAD)) << (8 * n)
}

/// The index of the first byte of `s` that `flag` flags, or `s.len()`.
#[inline(always)]
fn first_flagged(s: &[u8], flag: impl Fn(u64) -> u64) -> usize {
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for w in &mut words {
        let f = flag(u64::from_le_bytes(w.try_into().expect("eight bytes")));
        if f != 0 {
            return at + (f.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let tail = words.remainder();
    if tail.is_empty() {
        return s.len();
    }
    let f = if s.len() >= 8 {
        // The last eight bytes, overlapping bytes already found clean
        // (which therefore flag nothing, nor anything after them).
        let last = u64::from_le_bytes(s[s.len() - 8..].try_into().expect("eight bytes"));
        flag(last) >> (8 * (8 - tail.len()))
    } else {
        flag(load_short(tail))
    };
    if f == 0 {
        s.len()
    } else {
        (at + (f.trailing_zeros() / 8) as usize).min(s.len())
    }
}

/// The length of the run of PRINTUSASCII bytes (33–126) `s` starts with:
/// an RFC 5424 header field.
#[inline]
pub fn printusascii_run(s: &[u8]) -> usize {
    first_flagged(s, not_printusascii)
}

/// The length of the run of SD-NAME bytes (PRINTUSASCII but `=`, `]` and
/// `"`) `s` starts with.
#[inline]
pub fn sd_name_run(s: &[u8]) -> usize {
    first_flagged(s, not_sd_name)
}

/// The index of the first `"` or `\` in `s`: where an SD-PARAM value ends
/// or has an escape.
#[inline]
pub fn find_quote_or_backslash(s: &[u8]) -> Option<usize> {
    let at = first_flagged(s, quote_or_backslash);
    (at < s.len()).then_some(at)
}

/// Whether `s` can stand between JSON quotes as it is: no control byte, no
/// `"`, no `\` (other bytes, those of non-ASCII UTF-8 included, are
/// written as they are).
#[inline]
pub fn json_plain(s: &[u8]) -> bool {
    if s.len() >= 16 {
        // Long strings (a message) in 16-byte steps the compiler turns into
        // vector compares, the last step overlapping.
        let clean = |c: &[u8]| {
            c.iter()
                .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'))
        };
        return s.chunks_exact(16).all(clean) && clean(&s[s.len() - 16..]);
    }
    first_flagged(s, json_escaped) == s.len()
}

/// Whether `s` has no control byte and no `\`: structured data received
/// so holds no escaped value, so none of its IDs, names and values has a
/// `"` either (a value's `"` must come escaped; IDs and names exclude it),
/// and each can stand between JSON quotes as it is.
#[inline]
pub fn no_control_or_backslash(s: &[u8]) -> bool {
    if s.len() >= 16 {
        let clean = |c: &[u8]| {
            c.iter()
                .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'\\'))
        };
        return s.chunks_exact(16).all(clean) && clean(&s[s.len() - 16..]);
    }
    first_flagged(s, control_or_backslash) == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printusascii(b: u8) -> bool {
        (33..=126).contains(&b)
    }

    fn sd_name_byte(b: u8) -> bool {
        printusascii(b) && !matches!(b, b'=' | b']' | b'"')
    }

    fn run_of(s: &[u8], f: impl Fn(u8) -> bool) -> usize {
        s.iter().position(|&b| !f(b)).unwrap_or(s.len())
    }

    /// Every scan of `s` agrees with its byte-by-byte definition.
    fn assert_classed_as_byte_by_byte(s: &[u8]) {
        assert_eq!(printusascii_run(s), run_of(s, printusascii), "{s:?}");
        assert_eq!(sd_name_run(s), run_of(s, sd_name_byte), "{s:?}");
        assert_eq!(
            find_quote_or_backslash(s),
            s.iter().position(|&c| c == b'"' || c == b'\\'),
            "{s:?}"
        );
        let plain = !s.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
        assert_eq!(json_plain(s), plain, "{s:?}");
        let sd_plain = !s.iter().any(|&c| c < 0x20 || c == b'\\');
        assert_eq!(no_control_or_backslash(s), sd_plain, "{s:?}");
    }

    /// A small deterministic generator (no dependency for a test).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn every_byte_value_at_every_position_is_classed_as_byte_by_byte() {
        for len in 0..=40 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'k'; len];
                    s[at] = b;
                    assert_classed_as_byte_by_byte(&s);
                }
            }
        }
    }

    #[test]
    fn random_strings_are_classed_as_byte_by_byte() {
        let mut rng = Lcg(7);
        // Bytes mostly near the class edges, so runs end anywhere.
        let edges = [
            0u8, 0x1f, 0x20, 0x21, b'"', b'=', b'\\', b']', 0x7e, 0x7f, 0x80, 0xff,
        ];
        for _ in 0..200_000 {
            let len = (rng.next() % 48) as usize;
            let s: Vec<u8> = (0..len)
                .map(|_| match rng.next() % 4 {
                    0 => edges[(rng.next() % edges.len() as u64) as usize],
                    1 => rng.next() as u8,
                    _ => b'a' + (rng.next() % 26) as u8,
                })
                .collect();
            assert_classed_as_byte_by_byte(&s);
        }
    }
}
