//! RFC 5424 messages: a parser that never panics on any input, and a writer
//! that wraps a plain log line into RFC 5424 when it is not one already.

use std::borrow::Cow;

use serde::Serialize;

use crate::byte_class;
use serde::ser::SerializeMap;

/// One structured-data element: `[id name="value" …]`, borrowing from the
/// input (a view into its [`StructuredData`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdElement<'s, 'a> {
    /// SD-ID.
    pub id: &'a str,
    /// Parameters in order (values unescaped).
    pub params: &'s [(&'a str, Cow<'a, str>)],
}

/// Structured data, serialized as `{id: {name: value}}`.
///
/// Every element's parameters are kept in one list, and the elements as
/// their IDs and where their parameters end: two vectors whatever the
/// number of elements, which a listener parsing line after line reuses
/// ([`StructuredData::recycle`], [`parse_reusing`]) instead of allocating
/// and freeing them for every line.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StructuredData<'a> {
    /// Each element's SD-ID and the end of its parameters in `params`.
    ids: Vec<(&'a str, usize)>,
    /// The parameters of every element, in order.
    params: Vec<(&'a str, Cow<'a, str>)>,
}

impl<'a> StructuredData<'a> {
    /// The elements in the order received.
    pub fn elements(&self) -> impl ExactSizeIterator<Item = SdElement<'_, 'a>> {
        let mut start = 0;
        self.ids.iter().map(move |&(id, end)| {
            let params = &self.params[start..end];
            start = end;
            SdElement { id, params }
        })
    }

    /// How many elements there are.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none (`-`).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every parameter value of every element, to be rewritten in place
    /// (the listener makes hostile values safe to read).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Cow<'a, str>> {
        self.params.iter_mut().map(|(_, value)| value)
    }

    /// Emptied, keeping the vectors' memory for the next parse: nothing
    /// of this input is borrowed any more.
    pub fn recycle(self) -> StructuredData<'static> {
        StructuredData {
            ids: emptied(self.ids),
            params: emptied(self.params),
        }
    }
}

/// `v` cleared and retyped to the same layout with another lifetime. std
/// collects a vector's `into_iter().map(..)` into the same allocation when
/// the layouts match, so its memory is kept (a test holds it to that).
fn emptied<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

impl Serialize for StructuredData<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        struct Params<'b, 'a>(&'b [(&'a str, Cow<'a, str>)]);
        impl Serialize for Params<'_, '_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let mut m = ser.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let mut m = ser.serialize_map(Some(self.len()))?;
        for e in self.elements() {
            m.serialize_entry(e.id, &Params(e.params))?;
        }
        m.end()
    }
}

/// A parsed RFC 5424 message borrowing from its input. `None` fields were
/// the NILVALUE `-`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syslog5424<'a> {
    /// Facility (PRI / 8).
    pub facility: u8,
    /// Severity (PRI % 8).
    pub severity: u8,
    /// VERSION (1).
    pub version: u16,
    /// TIMESTAMP as sent.
    pub timestamp: Option<&'a str>,
    /// HOSTNAME as claimed by the sender.
    pub hostname: Option<&'a str>,
    /// APP-NAME.
    pub app_name: Option<&'a str>,
    /// PROCID.
    pub procid: Option<&'a str>,
    /// MSGID.
    pub msgid: Option<&'a str>,
    /// STRUCTURED-DATA elements.
    pub structured_data: StructuredData<'a>,
    /// MSG (a leading UTF-8 BOM removed; invalid UTF-8 replaced).
    pub msg: Cow<'a, str>,
    /// The header from TIMESTAMP through MSGID as received (fields and the
    /// spaces between them): one scan of it tells a writer whether any
    /// field needs escaping ([`crate::json_record`]).
    pub header_bytes: &'a [u8],
    /// The STRUCTURED-DATA as received (`-` or the elements): every SD-ID,
    /// name and value parsed without unescaping is a slice of it.
    pub structured_data_bytes: &'a [u8],
}

/// Parse an RFC 5424 message; `None` when `input` is not one.
pub fn parse(input: &[u8]) -> Option<Syslog5424<'_>> {
    parse_reusing(input, StructuredData::default())
}

/// [`parse`], its structured data kept in `spare` (an earlier message's,
/// [recycled](StructuredData::recycle)): a parser of many lines allocates
/// none for them once the vectors are large enough.
pub fn parse_reusing<'a>(
    input: &'a [u8],
    spare: StructuredData<'static>,
) -> Option<Syslog5424<'a>> {
    // A frame that is valid UTF-8 (nearly all) is checked once, and its
    // fields are then slices of it; only other frames convert field by field.
    let mut p = Cursor {
        s: input,
        text: std::str::from_utf8(input).ok(),
        i: 0,
    };
    p.expect(b'<')?;
    let pri_digits = p.take_while(|b| b.is_ascii_digit());
    if pri_digits.is_empty() || pri_digits.len() > 3 {
        return None;
    }
    let pri = decimal(pri_digits);
    if pri > 191 {
        return None;
    }
    p.expect(b'>')?;
    let version_digits = p.take_while(|b| b.is_ascii_digit());
    if version_digits.is_empty() || version_digits.len() > 2 || version_digits[0] == b'0' {
        return None;
    }
    let version = decimal(version_digits);
    p.expect(b' ')?;
    let header_at = p.i;
    let timestamp = p.header_field(128)?;
    p.expect(b' ')?;
    let hostname = p.header_field(255)?;
    p.expect(b' ')?;
    let app_name = p.header_field(48)?;
    p.expect(b' ')?;
    let procid = p.header_field(128)?;
    p.expect(b' ')?;
    let msgid = p.header_field(32)?;
    let header_bytes = &input[header_at..p.i];
    p.expect(b' ')?;
    let sd_at = p.i;
    let mut structured_data: StructuredData<'a> = spare;
    p.structured_data(&mut structured_data)?;
    let structured_data_bytes = &input[sd_at..p.i];
    let msg = match p.peek() {
        None => Cow::Borrowed(""),
        Some(b' ') => {
            p.i += 1;
            match p.text {
                Some(text) => {
                    let rest = text.get(p.i..)?;
                    Cow::Borrowed(rest.strip_prefix('\u{feff}').unwrap_or(rest))
                }
                None => {
                    let rest = &input[p.i..];
                    let rest = rest.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(rest);
                    String::from_utf8_lossy(rest)
                }
            }
        }
        Some(_) => return None,
    };
    Some(Syslog5424 {
        facility: (pri / 8) as u8,
        severity: (pri % 8) as u8,
        version,
        timestamp,
        hostname,
        app_name,
        procid,
        msgid,
        structured_data,
        msg,
        header_bytes,
        structured_data_bytes,
    })
}

/// The value of at most three ASCII digits (checked by the caller).
fn decimal(digits: &[u8]) -> u16 {
    digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'))
}

struct Cursor<'a> {
    s: &'a [u8],
    /// `s` as text, when it is valid UTF-8.
    text: Option<&'a str>,
    i: usize,
}

impl<'a> Cursor<'a> {
    /// `s[start..end]` as text: a slice of the checked frame, or converted
    /// (invalid UTF-8 replaced) when the frame is not valid UTF-8.
    #[inline(always)]
    fn text_of(&self, start: usize, end: usize) -> Option<Cow<'a, str>> {
        match self.text {
            Some(text) => text.get(start..end).map(Cow::Borrowed),
            None => Some(String::from_utf8_lossy(&self.s[start..end])),
        }
    }
    /// `s[start..end]`, known to be ASCII, as text.
    #[inline(always)]
    fn ascii_of(&self, start: usize, end: usize) -> Option<&'a str> {
        match self.text {
            Some(text) => text.get(start..end),
            None => std::str::from_utf8(&self.s[start..end]).ok(),
        }
    }
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    #[inline(always)]
    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }
    #[inline(always)]
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        // Over the rest as a slice: no bounds check per byte.
        let rest = &self.s[self.i.min(self.s.len())..];
        let n = rest.iter().position(|&b| !f(b)).unwrap_or(rest.len());
        self.i += n;
        &rest[..n]
    }
    /// A header field of printable US-ASCII, `-` meaning absent.
    #[inline(always)]
    fn header_field(&mut self, max: usize) -> Option<Option<&'a str>> {
        let start = self.i;
        let rest = &self.s[self.i.min(self.s.len())..];
        let f = &rest[..byte_class::printusascii_run(rest)];
        self.i += f.len();
        if f.is_empty() || f.len() > max {
            return None;
        }
        if f == b"-" {
            return Some(None);
        }
        // Printable ASCII is valid UTF-8.
        Some(Some(self.ascii_of(start, self.i)?))
    }
    #[inline(always)]
    fn sd_name(&mut self) -> Option<&'a str> {
        let start = self.i;
        let rest = &self.s[self.i.min(self.s.len())..];
        let n = byte_class::sd_name_run(rest);
        self.i += n;
        if n == 0 || n > 32 {
            return None;
        }
        self.ascii_of(start, self.i)
    }
    /// Into `sd` (emptied first): `-`, or one or more elements.
    fn structured_data(&mut self, sd: &mut StructuredData<'a>) -> Option<()> {
        sd.ids.clear();
        sd.params.clear();
        if self.peek()? == b'-' {
            self.i += 1;
            return Some(());
        }
        while self.peek() == Some(b'[') {
            self.i += 1;
            let id = self.sd_name()?;
            loop {
                match self.peek()? {
                    b']' => {
                        self.i += 1;
                        break;
                    }
                    b' ' => {
                        self.i += 1;
                        let name = self.sd_name()?;
                        self.expect(b'=')?;
                        self.expect(b'"')?;
                        let start = self.i;
                        let mut escaped = false;
                        loop {
                            // To the next quote or backslash at once.
                            let rest = self.s.get(self.i..)?;
                            self.i += byte_class::find_quote_or_backslash(rest)?;
                            if self.s[self.i] == b'"' {
                                break;
                            }
                            escaped = true;
                            self.i += 2;
                            self.peek()?;
                        }
                        let raw = &self.s[start..self.i];
                        self.i += 1;
                        let value = if escaped {
                            let mut v = Vec::with_capacity(raw.len());
                            let mut k = 0;
                            while k < raw.len() {
                                if raw[k] == b'\\' && k + 1 < raw.len() {
                                    if !matches!(raw[k + 1], b'"' | b'\\' | b']') {
                                        v.push(b'\\');
                                    }
                                    v.push(raw[k + 1]);
                                    k += 2;
                                } else {
                                    v.push(raw[k]);
                                    k += 1;
                                }
                            }
                            Cow::Owned(String::from_utf8_lossy(&v).into_owned())
                        } else {
                            // Borrowed only as received: the JSON record
                            // writes a borrowed value unchecked when the
                            // structured data as received is clean
                            // (`json_record::write_structured_data`), so a
                            // value this parser changes must be owned.
                            self.text_of(start, self.i - 1)?
                        };
                        sd.params.push((name, value));
                    }
                    _ => return None,
                }
            }
            sd.ids.push((id, sd.params.len()));
        }
        (!sd.is_empty()).then_some(())
    }
}

/// Wrap `line` into RFC 5424 unless it already is one: facility user,
/// severity notice, the current UTC time, `hostname` and `app_name`.
pub fn wrap_line(line: &str, hostname: &str, app_name: &str, now: time::OffsetDateTime) -> String {
    if parse(line.as_bytes()).is_some() {
        return line.to_string();
    }
    let ts = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into());
    format!(
        "<13>1 {ts} {} {} - - - {line}",
        header_safe(hostname),
        header_safe(app_name)
    )
}

fn header_safe(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(48)
        .collect();
    if cleaned.is_empty() {
        "-".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameters of the first structured-data element.
    fn first_params<'s, 'a>(m: &'s Syslog5424<'a>) -> &'s [(&'a str, Cow<'a, str>)] {
        m.structured_data
            .elements()
            .next()
            .expect("an element")
            .params
    }

    #[test]
    fn recycled_structured_data_keeps_its_memory_and_parses_the_next_line_alike() {
        let first = parse(br#"<13>1 - h a - - [a x="1" y="2"][b z="3"] m"#).unwrap();
        let sd = first.structured_data;
        let capacity = (sd.ids.capacity(), sd.params.capacity());
        assert!(capacity.0 >= 2 && capacity.1 >= 3);
        let spare = sd.recycle();
        assert!(spare.is_empty() && spare.params.is_empty());
        assert_eq!((spare.ids.capacity(), spare.params.capacity()), capacity);

        let line = b"<13>1 - h a - - [c w=\"9\"] m".to_vec();
        let again = parse_reusing(&line, spare).unwrap();
        assert_eq!(
            serde_json::to_value(&again.structured_data).unwrap(),
            serde_json::json!({"c": {"w": "9"}})
        );
        assert_eq!(
            (
                again.structured_data.ids.capacity(),
                again.structured_data.params.capacity()
            ),
            capacity
        );
        // A spare that still holds elements (parsed from a static line) is
        // emptied first: nothing of another line leaks into this one.
        let stale = parse(br#"<13>1 - h a - - [old k="v"] m"#)
            .unwrap()
            .structured_data;
        let plain = parse_reusing(b"<13>1 - h a - - - m", stale).unwrap();
        assert!(plain.structured_data.is_empty());
    }

    #[test]
    fn parses_the_rfc_examples() {
        let m = parse(b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xEF\xBB\xBF'su root' failed").unwrap();
        assert_eq!((m.facility, m.severity), (4, 2));
        assert_eq!(m.hostname, Some("mymachine.example.com"));
        assert_eq!(m.app_name, Some("su"));
        assert_eq!(m.procid, None);
        assert_eq!(m.msgid, Some("ID47"));
        assert_eq!(m.msg, "'su root' failed");
        assert_eq!(
            m.header_bytes,
            b"2003-10-11T22:14:15.003Z mymachine.example.com su - ID47"
        );
        assert_eq!(m.structured_data_bytes, b"-");

        let m = parse(br#"<165>1 2003-10-11T22:14:15.003Z host app - ID47 [exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"] msg"#).unwrap();
        let elements: Vec<_> = m.structured_data.elements().collect();
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[0].id, "exampleSDID@32473");
        assert_eq!(elements[0].params.len(), 3);
        assert_eq!(elements[0].params[1], ("eventSource", "Application".into()));
        assert_eq!(elements[1].params, [("class", "high".into())]);
        let json = serde_json::to_value(&m.structured_data).unwrap();
        assert_eq!(json["examplePriority@32473"]["class"], "high");
        assert_eq!(m.msg, "msg");
        assert_eq!(m.header_bytes, b"2003-10-11T22:14:15.003Z host app - ID47");
        assert_eq!(
            m.structured_data_bytes,
            br#"[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"][examplePriority@32473 class="high"]"#
        );

        let m = parse(br#"<13>1 - - - - - [a b="q\"uo\]te\\"]"#).unwrap();
        assert_eq!(first_params(&m)[0].1, r#"q"uo]te\"#);
        assert_eq!(m.msg, "");
    }

    #[test]
    fn text_fields_whether_or_not_the_frame_is_utf8() {
        // Valid UTF-8: fields are slices of the frame.
        let m = parse("<13>1 - h a - - [x@1 k=\"é✓\"] \u{feff}msg é".as_bytes()).unwrap();
        assert_eq!(first_params(&m)[0].1, "é✓");
        assert!(matches!(first_params(&m)[0].1, Cow::Borrowed(_)));
        assert_eq!(m.msg, "msg é");
        assert!(matches!(m.msg, Cow::Borrowed(_)));
        // Invalid UTF-8 anywhere: each text field is converted on its own.
        let m = parse(b"<13>1 - h a - - [x@1 k=\"v\xffw\" j=\"ok\"] \xef\xbb\xbfm\xfen").unwrap();
        assert_eq!(first_params(&m)[0].1, "v\u{fffd}w");
        assert_eq!(first_params(&m)[1].1, "ok");
        assert_eq!(m.msg, "m\u{fffd}n");
        assert_eq!(m.hostname, Some("h"));
        assert_eq!((m.facility, m.severity, m.version), (1, 5, 1));
    }

    #[test]
    fn rejects_non_5424() {
        for bad in [
            &b""[..],
            b"hello world",
            b"<13>Oct 11 22:14:15 host app: bsd style",
            b"<192>1 - - - - - -",
            b"<13>0 - - - - - -",
            b"<13>1 - - - - -",
            b"<13>1 - - - - - [unterminated",
            // A value that never closes: at its end, after an escape, or
            // with the frame ending inside an escape.
            b"<13>1 - - - - - [a b=\"x",
            b"<13>1 - - - - - [a b=\"x\\\"",
            b"<13>1 - - - - - [a b=\"x\\",
            b"<13>1 - - - - - -x",
        ] {
            assert!(parse(bad).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn wraps_plain_lines_and_keeps_5424_lines() {
        let now = time::macros::datetime!(2026-11-23 10:00:00 UTC);
        let w = wrap_line("plain text line", "worker-1", "decnet", now);
        let m = parse(w.as_bytes()).unwrap();
        assert_eq!(m.hostname, Some("worker-1"));
        assert_eq!(m.msg, "plain text line");
        assert_eq!(m.timestamp, Some("2026-11-23T10:00:00Z"));
        let already = "<14>1 2026-01-01T00:00:00Z h a p m - x";
        assert_eq!(wrap_line(already, "w", "d", now), already);
    }

    #[test]
    fn random_input_never_panics() {
        let seeds: [&[u8]; 3] = [
            b"<13>1 2026-01-01T00:00:00Z h a p m [x y=\"z\"] msg",
            b"<0>1 - - - - - -",
            b"<191>99 a b c d e [f]",
        ];
        let mut x: u64 = 0x2545F4914F6CDD1D;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut s = seeds[(x % 3) as usize].to_vec();
            // Mutate a few bytes, truncate sometimes.
            for k in 0..(x % 5) {
                let pos = ((x >> (8 + k * 5)) as usize) % s.len().max(1);
                if !s.is_empty() {
                    s[pos] = (x >> (k * 7)) as u8;
                }
            }
            if x.is_multiple_of(7) {
                let cut = (x >> 20) as usize % (s.len() + 1);
                s.truncate(cut);
            }
            let _ = parse(&s);
        }
    }
}
