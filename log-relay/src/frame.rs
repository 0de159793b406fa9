//! RFC 5425 octet-counted framing: `MSG-LEN SP SYSLOG-MSG`.
//!
//! [`FrameDecoder`] is pure and incremental: feed it bytes as they arrive and
//! take complete frames out. It enforces a maximum frame size *before*
//! buffering a frame (a `4294967296 ` prefix is refused at once, nothing is
//! allocated for it), and a malformed prefix is an error for that connection
//! only.

/// Default maximum frame size (64 KiB).
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Why a byte stream is not valid octet-counted syslog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix holds something other than digits.
    #[error("invalid frame length prefix (byte 0x{0:02x} where a digit or space was expected)")]
    BadPrefix(u8),
    /// The declared length exceeds the maximum.
    #[error("frame length {declared} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// What the peer declared (saturated).
        declared: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
}

/// Encode one message as an octet-counted frame.
pub fn encode(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 8);
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
    out
}

/// Incremental octet-counting decoder with a maximum frame size.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames over `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Append received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    /// Zero-length frames are skipped.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        Ok(self.next_frame_into(&mut out)?.map(|_| out))
    }

    /// Like [`next_frame`](Self::next_frame), but appends the frame to
    /// `arena` and returns its range there (one allocation for a whole batch).
    pub fn next_frame_into(
        &mut self,
        arena: &mut Vec<u8>,
    ) -> Result<Option<std::ops::Range<usize>>, FrameError> {
        loop {
            let data = &self.buf[self.start..];
            let max_digits = self.max.to_string().len();
            let mut len: u64 = 0;
            let mut digits = 0usize;
            let mut header = None;
            for (i, &b) in data.iter().enumerate() {
                match b {
                    b'0'..=b'9' => {
                        len = len.saturating_mul(10).saturating_add(u64::from(b - b'0'));
                        digits += 1;
                        if digits > max_digits || len > self.max as u64 {
                            return Err(FrameError::TooLarge {
                                declared: len,
                                max: self.max,
                            });
                        }
                    }
                    b' ' if digits > 0 => {
                        header = Some(i + 1);
                        break;
                    }
                    other => return Err(FrameError::BadPrefix(other)),
                }
            }
            let Some(header) = header else {
                return Ok(None);
            };
            let len = len as usize;
            if data.len() < header + len {
                return Ok(None);
            }
            let at = arena.len();
            arena.extend_from_slice(&data[header..header + len]);
            self.start += header + len;
            if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if len == 0 {
                continue;
            }
            return Ok(Some(at..at + len));
        }
    }

    /// At end of stream: an error when bytes of an unfinished frame remain.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.pending() {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut out = Vec::new();
            d.feed(&stream[..split]);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
            d.feed(&stream[split..]);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
            assert_eq!(out, msgs.iter().map(|m| m.to_vec()).collect::<Vec<_>>());
            d.finish().unwrap();
        }
    }

    #[test]
    fn refuses_bad_prefixes_and_huge_lengths_without_buffering() {
        let mut d = FrameDecoder::new(1024);
        d.feed(b"12x hello");
        assert_eq!(d.next_frame(), Err(FrameError::BadPrefix(b'x')));
        let mut d = FrameDecoder::new(1024);
        d.feed(b"4294967296 ");
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        let mut d = FrameDecoder::new(1024);
        d.feed(b"1025 ");
        assert!(matches!(
            d.next_frame(),
            Err(FrameError::TooLarge { declared: 1025, .. })
        ));
        let mut d = FrameDecoder::new(1024);
        d.feed(b" 5 hello");
        assert_eq!(d.next_frame(), Err(FrameError::BadPrefix(b' ')));
        // Too many digits is refused as soon as they are seen, before a space.
        let mut d = FrameDecoder::new(1024);
        d.feed(b"000000");
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn incomplete_frame_waits_and_truncation_is_reported() {
        let mut d = FrameDecoder::new(1024);
        d.feed(b"99 ");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(3)));
        let mut d = FrameDecoder::new(1024);
        d.feed(b"0 3 abc");
        assert_eq!(
            d.next_frame(),
            Ok(Some(b"abc".to_vec())),
            "zero-length frames are skipped"
        );
    }

    #[test]
    fn random_input_never_panics() {
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
            d.feed(&bytes);
            while let Ok(Some(f)) = d.next_frame() {
                assert!(f.len() <= 64);
            }
            let _ = d.finish();
        }
    }
}
