//! RFC 5425 octet-counted framing: `MSG-LEN SP SYSLOG-MSG`.
//!
//! [`FrameDecoder`] is pure: [`FrameDecoder::scan`] goes through the bytes
//! a connection has buffered and reports each frame as a range of them
//! (the listener formats frames where they lie: nothing copied or
//! reference-counted per frame), and it is also a
//! [`tokio_util::codec::Decoder`] built on that scan. It never buffers
//! more than one maximum frame. A frame whose declared length
//! exceeds the maximum is *discarded* as its bytes arrive — reported once as
//! [`FrameItem::Oversized`] with the length the peer declared — and the
//! stream carries on with the next frame. Only a length prefix that is not a
//! number (nothing can be resynchronised after it) is an error, and it ends
//! that connection only.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// Default maximum frame size (64 KiB).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// At most this many digits in a length prefix (10^12 bytes: far beyond any
/// maximum, short enough that a prefix of endless digits is caught at once).
pub const MAX_PREFIX_DIGITS: usize = 12;

/// Why a byte stream is not valid octet-counted syslog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix holds something other than digits.
    #[error("invalid frame length prefix (byte 0x{0:02x} where a digit or space was expected)")]
    BadPrefix(u8),
    /// The length prefix has more digits than any sane frame.
    #[error("frame length prefix longer than {MAX_PREFIX_DIGITS} digits")]
    PrefixTooLong,
    /// The stream ended inside a frame.
    #[error("connection ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
    /// The peer went away without closing the stream cleanly (no TLS
    /// `close_notify`, a reset, an abort): an ordinary disconnect, not a
    /// malformed stream.
    #[error("the peer went away without closing the connection")]
    Disconnected,
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => {
                FrameError::Disconnected
            }
            _ => FrameError::Io(e.to_string()),
        }
    }
}

impl FrameError {
    /// Whether the peer broke the syslog framing (counted as a malformed
    /// stream), rather than went away.
    pub fn is_malformed(&self) -> bool {
        matches!(self, FrameError::BadPrefix(_) | FrameError::PrefixTooLong)
    }
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameItem {
    /// A complete frame's payload (never empty: zero-length frames are skipped).
    Frame(Bytes),
    /// A frame declared longer than the maximum; its bytes are being skipped.
    Oversized {
        /// The length the peer declared.
        declared: u64,
    },
}

/// What [`FrameDecoder::scan`] finds in the bytes buffered, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A complete frame's payload: this range of the bytes scanned (never empty).
    Frame(std::ops::Range<usize>),
    /// A frame declared longer than the maximum; its bytes are being skipped.
    Oversized {
        /// The length the peer declared.
        declared: u64,
    },
}

/// Encode one message as an octet-counted frame.
pub fn encode(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 8);
    encode_into(msg, &mut out);
    out
}

/// Append one octet-counted frame of `msg` to `out`.
pub fn encode_into(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

/// The size of the frame [`encode`] makes of a `len`-byte message.
pub fn encoded_len(len: usize) -> usize {
    len + 1 + len.max(1).ilog10() as usize + 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the length prefix.
    Length,
    /// Waiting for a `len`-byte payload.
    Payload(usize),
    /// Skipping `left` bytes of an oversized frame.
    Discarding(u64),
}

/// Incremental octet-counting decoder with a maximum frame size.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max: usize,
    state: State,
}

impl FrameDecoder {
    /// A decoder refusing frames over `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max,
            state: State::Length,
        }
    }

    /// The maximum frame size.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Go through `src`, the bytes buffered that no earlier call consumed:
    /// tell `found` of every complete frame (a range of `src`) and every
    /// oversized frame's declaration, until the bytes run out or `found`
    /// returns `false`. Returns how many bytes of `src` are done with
    /// (frames, length prefixes, skipped bytes), which the caller drops
    /// before the next call. An error ends the stream; what `found` was
    /// told before it stands.
    pub fn scan(
        &mut self,
        src: &[u8],
        mut found: impl FnMut(Found) -> bool,
    ) -> Result<usize, FrameError> {
        let mut at = 0;
        loop {
            let rest = &src[at..];
            match self.state {
                State::Discarding(left) => {
                    let n = (rest.len() as u64).min(left);
                    at += n as usize;
                    if left > n {
                        self.state = State::Discarding(left - n);
                        return Ok(at);
                    }
                    self.state = State::Length;
                }
                State::Payload(len) => {
                    if rest.len() < len {
                        return Ok(at);
                    }
                    self.state = State::Length;
                    if len == 0 {
                        continue;
                    }
                    let frame = at..at + len;
                    at += len;
                    if !found(Found::Frame(frame)) {
                        return Ok(at);
                    }
                }
                State::Length => {
                    let mut declared: u64 = 0;
                    let mut end = None;
                    for (i, &b) in rest.iter().enumerate() {
                        match b {
                            b'0'..=b'9' => {
                                if i >= MAX_PREFIX_DIGITS {
                                    return Err(FrameError::PrefixTooLong);
                                }
                                declared = declared * 10 + u64::from(b - b'0');
                            }
                            b' ' if i > 0 => {
                                end = Some(i);
                                break;
                            }
                            other => return Err(FrameError::BadPrefix(other)),
                        }
                    }
                    let Some(end) = end else {
                        if rest.len() > MAX_PREFIX_DIGITS {
                            return Err(FrameError::PrefixTooLong);
                        }
                        return Ok(at);
                    };
                    at += end + 1;
                    if declared > self.max as u64 {
                        self.state = State::Discarding(declared);
                        if !found(Found::Oversized { declared }) {
                            return Ok(at);
                        }
                    } else {
                        self.state = State::Payload(declared as usize);
                    }
                }
            }
        }
    }

    /// How many bytes beyond the `buffered` ones the frame being read
    /// still needs (0 when none is being read): room to make at once.
    pub fn wanted(&self, buffered: usize) -> usize {
        match self.state {
            State::Payload(len) => len.saturating_sub(buffered),
            _ => 0,
        }
    }

    /// Whether the stream may end here with `left` bytes not done with:
    /// between frames, or inside an oversized frame being skipped (nothing
    /// of it was going to be kept); anywhere else it was cut short.
    pub fn at_end(&self, left: usize) -> Result<(), FrameError> {
        match self.state {
            State::Length if left == 0 => Ok(()),
            State::Discarding(_) => Ok(()),
            _ => Err(FrameError::Truncated(left)),
        }
    }
}

impl Decoder for FrameDecoder {
    type Item = FrameItem;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<FrameItem>, FrameError> {
        let mut first = None;
        let done = self.scan(src, |found| {
            first = Some(found);
            false
        })?;
        Ok(match first {
            Some(Found::Frame(frame)) => {
                src.advance(frame.start);
                Some(FrameItem::Frame(src.split_to(frame.len()).freeze()))
            }
            Some(Found::Oversized { declared }) => {
                src.advance(done);
                Some(FrameItem::Oversized { declared })
            }
            None => {
                src.advance(done);
                src.reserve(self.wanted(src.len()));
                None
            }
        })
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<FrameItem>, FrameError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None => self.at_end(src.len()).map(|()| None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut FrameDecoder, bytes: &[u8]) -> Result<Vec<FrameItem>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = d.decode(&mut buf)? {
            out.push(item);
        }
        Ok(out)
    }

    fn frames(items: &[FrameItem]) -> Vec<Vec<u8>> {
        items
            .iter()
            .filter_map(|i| match i {
                FrameItem::Frame(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn round_trip_split_at_every_byte() {
        let msgs: Vec<&[u8]> = vec![
            b"hello",
            b"<13>1 - - - - - - x",
            b"with space and \n newline",
        ];
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode(m)).collect();
        for split in 0..stream.len() {
            let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            buf.extend_from_slice(&stream[..split]);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                out.push(f);
            }
            buf.extend_from_slice(&stream[split..]);
            while let Some(f) = d.decode_eof(&mut buf).unwrap() {
                out.push(f);
            }
            assert_eq!(
                frames(&out),
                msgs.iter().map(|m| m.to_vec()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn oversized_frames_are_skipped_and_the_stream_goes_on() {
        let mut d = FrameDecoder::new(10);
        let mut stream = b"3 one".to_vec();
        stream.extend_from_slice(b"25 ");
        stream.extend_from_slice(&[b'x'; 25]);
        stream.extend_from_slice(b"3 two");
        // The oversized body arrives in pieces: nothing of it is buffered.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in stream.chunks(4) {
            buf.extend_from_slice(chunk);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                out.push(f);
            }
            assert!(buf.len() <= 10 + MAX_PREFIX_DIGITS);
        }
        assert_eq!(
            out,
            vec![
                FrameItem::Frame(Bytes::from_static(b"one")),
                FrameItem::Oversized { declared: 25 },
                FrameItem::Frame(Bytes::from_static(b"two")),
            ]
        );
    }

    #[test]
    fn the_declared_length_is_reported_whole() {
        let mut d = FrameDecoder::new(1024);
        let out = decode_all(&mut d, b"104857600 abc").unwrap();
        assert_eq!(
            out,
            vec![FrameItem::Oversized {
                declared: 104_857_600
            }]
        );
    }

    #[test]
    fn refuses_bad_prefixes() {
        let mut d = FrameDecoder::new(1024);
        assert_eq!(
            decode_all(&mut d, b"12x hello"),
            Err(FrameError::BadPrefix(b'x'))
        );
        let mut d = FrameDecoder::new(1024);
        assert_eq!(
            decode_all(&mut d, b" 5 hello"),
            Err(FrameError::BadPrefix(b' '))
        );
        let mut d = FrameDecoder::new(1024);
        assert_eq!(
            decode_all(&mut d, b"0000000000000"),
            Err(FrameError::PrefixTooLong)
        );
    }

    #[test]
    fn incomplete_frame_waits_and_truncation_is_reported() {
        let mut d = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&b"99 "[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert_eq!(d.decode_eof(&mut buf), Err(FrameError::Truncated(0)));
        // An ordinary disconnect is not a malformed stream.
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/",
        );
        assert_eq!(FrameError::from(eof), FrameError::Disconnected);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!FrameError::from(reset).is_malformed());
        assert!(FrameError::BadPrefix(b'x').is_malformed());
        assert!(!FrameError::Truncated(3).is_malformed());
        let mut d = FrameDecoder::new(1024);
        assert_eq!(
            frames(&decode_all(&mut d, b"0 3 abc").unwrap()),
            vec![b"abc".to_vec()],
            "zero-length frames are skipped"
        );
    }

    /// `scan` over bytes arriving in pieces, as the listener calls it: the
    /// frames (copied out of the ranges) and oversized declarations.
    fn scan_all(
        d: &mut FrameDecoder,
        stream: &[u8],
        piece: usize,
    ) -> Result<Vec<FrameItem>, FrameError> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in stream.chunks(piece) {
            buf.extend_from_slice(chunk);
            let mut found = Vec::new();
            let done = d.scan(&buf, |f| {
                found.push(f);
                true
            })?;
            for f in found {
                out.push(match f {
                    Found::Frame(r) => FrameItem::Frame(Bytes::copy_from_slice(&buf[r])),
                    Found::Oversized { declared } => FrameItem::Oversized { declared },
                });
            }
            buf.drain(..done);
            assert!(buf.len() <= d.max() + MAX_PREFIX_DIGITS + 1 + piece);
        }
        d.at_end(buf.len())?;
        Ok(out)
    }

    #[test]
    fn scanning_in_place_finds_what_decoding_does_however_the_bytes_arrive() {
        let mut stream = Vec::new();
        for m in [
            &b"one"[..],
            b"",
            b"<13>1 - - - - - - two",
            &[b'x'; 40],
            b"three",
        ] {
            stream.extend_from_slice(&encode(m));
        }
        let mut d = FrameDecoder::new(32);
        let expected = decode_all(&mut d, &stream).unwrap();
        assert_eq!(expected.len(), 4, "{expected:?}");
        for piece in 1..=stream.len() {
            let mut d = FrameDecoder::new(32);
            assert_eq!(
                scan_all(&mut d, &stream, piece).unwrap(),
                expected,
                "pieces of {piece}"
            );
        }
        // Cut inside a frame: truncated; inside an oversized one: a clean end.
        let mut d = FrameDecoder::new(32);
        assert_eq!(scan_all(&mut d, b"5 ab", 2), Err(FrameError::Truncated(2)));
        let mut d = FrameDecoder::new(32);
        assert_eq!(
            scan_all(&mut d, b"3 abc99 xx", 3).unwrap(),
            vec![
                FrameItem::Frame(Bytes::from_static(b"abc")),
                FrameItem::Oversized { declared: 99 }
            ]
        );
        // A bad prefix after a frame: the frame is reported, then the error.
        let mut d = FrameDecoder::new(32);
        let mut seen = Vec::new();
        let r = d.scan(b"3 abc3x", |f| {
            seen.push(f);
            true
        });
        assert_eq!(
            (r, seen),
            (Err(FrameError::BadPrefix(b'x')), vec![Found::Frame(2..5)])
        );
    }

    #[test]
    fn encoded_len_matches_encode() {
        for n in [0, 1, 9, 10, 99, 100, 65_535, 65_536] {
            assert_eq!(encoded_len(n), encode(&vec![b'a'; n]).len(), "{n}");
        }
    }

    #[test]
    fn random_input_never_panics_or_buffers_past_the_limit() {
        // xorshift: deterministic pseudo-random bytes, heavy on digits/spaces.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            let mut d = FrameDecoder::new(64);
            let len = (x % 200) as usize;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = match x % 4 {
                    0 => b' ',
                    1 | 2 => b'0' + (x >> 8) as u8 % 10,
                    _ => (x >> 16) as u8,
                };
                bytes.push(b);
            }
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = d.decode(&mut buf) {
                if let FrameItem::Frame(f) = f {
                    assert!(f.len() <= 64);
                }
            }
            let _ = d.decode_eof(&mut buf);
        }
    }
}
