//! RFC 5425 framing: whatever the bytes and however they are split, the
//! decoder never panics, never yields a frame over the maximum, and never
//! buffers more than one maximum frame (plus a length prefix).
#![no_main]

use bytes::BytesMut;
use decnet_log_relay::frame::{FrameDecoder, FrameItem, MAX_PREFIX_DIGITS};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX: usize = 256;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the chunk size the bytes arrive in.
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(split).max(1);
    let mut d = FrameDecoder::new(MAX);
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(FrameItem::Frame(f))) => assert!(!f.is_empty() && f.len() <= MAX),
                Ok(Some(FrameItem::Oversized { declared })) => assert!(declared > MAX as u64),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() <= MAX + MAX_PREFIX_DIGITS + 1 + chunk, "buffered {}", buf.len());
    }
    let _ = d.decode_eof(&mut buf);
});
