//! Large reads from a peer that sends in bulk, none held for a quiet one.
//!
//! rustls asks its transport for at most 4 KiB at a time, so a peer
//! streaming logs or a release tarball over TLS cost one `recvfrom` (and
//! on loopback the acknowledgement it triggers) per 4 KiB: about a tenth
//! of the log listener's CPU, measured. [`ReadAhead`] passes reads
//! straight through until one comes back as full as asked (the socket held
//! at least that much: the peer is sending in bulk); from then on it reads
//! up to [`READ_AHEAD`] bytes at once into a buffer of its own and serves
//! the small reads from it. As soon as the socket has nothing more for it
//! (a read would wait) or a read comes back short, it goes back to passing
//! reads through, and the buffer is freed once drained: a connection that
//! waits for its peer holds none, so what a quiet or idle connection costs
//! is unchanged. Writes pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most read from the socket at once while a peer sends in bulk. Each
/// read on loopback also sends the window update that lets the sender's
/// queued data through, processed in the reader's system call: fewer,
/// larger reads pay that less often. Kept under glibc's threshold for
/// mapping an allocation on its own (128 KiB), as the buffer comes and goes
/// with bursts.
pub const READ_AHEAD: usize = 64 * 1024;

/// A byte stream read ahead in [`READ_AHEAD`] chunks while its peer sends
/// in bulk (see the module's documentation).
#[derive(Debug)]
pub struct ReadAhead<T> {
    inner: T,
    /// Bytes read ahead: `buf[start..end]` are not yet handed out. Empty
    /// (no allocation) unless the peer is sending in bulk.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read came back as full as asked.
    bulk: bool,
}

impl<T> ReadAhead<T> {
    /// `inner`, reads passed through until its peer sends in bulk.
    pub fn new(inner: T) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
            bulk: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes held in the read-ahead buffer now (memory, not data: its
    /// allocated size).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Hand out what was read ahead; free the buffer once drained unless
    /// the peer is still sending in bulk.
    fn serve(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.end - self.start);
        out.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if !self.bulk {
                self.buf = Vec::new();
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            // A read served from the buffer counts against the task's
            // cooperative budget as a socket read would. Uncounted, one
            // socket read was one unit for up to READ_AHEAD bytes: a peer
            // sending 1-byte TLS records made rustls decrypt some 2 850
            // records per unit, and a connection held its worker thread
            // for over 100 ms before tokio made it yield (the listener,
            // the lingering close). Counted, a unit is at most what rustls
            // asks for (4 KiB).
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            this.serve(out);
            coop.made_progress();
            return Poll::Ready(Ok(()));
        }
        let asked = out.remaining();
        // Nothing asked (never read ahead into a buffer that cannot take
        // any of it: the caller would see an end of stream), or as much as
        // read-ahead would fetch: straight through.
        if !this.bulk || asked == 0 || asked >= READ_AHEAD {
            let before = out.filled().len();
            let r = Pin::new(&mut this.inner).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = r {
                this.bulk = asked > 0 && out.filled().len() - before == asked;
            } else if r.is_pending() {
                this.bulk = false;
                this.buf = Vec::new();
            }
            return r;
        }
        if this.buf.len() < READ_AHEAD {
            this.buf = vec![0; READ_AHEAD];
        }
        let mut ahead = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.inner).poll_read(cx, &mut ahead) {
            Poll::Pending => {
                // Nothing more for now: the peer paused; hold nothing while waiting.
                this.bulk = false;
                this.buf = Vec::new();
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let n = ahead.filled().len();
                this.bulk = n == READ_AHEAD;
                this.end = n;
                if n == 0 {
                    // End of stream.
                    this.buf = Vec::new();
                } else {
                    this.serve(out);
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A socket stand-in: serves `data` in reads of at most `chunk` bytes
    /// (what the kernel has queued), answers `Pending` (waking at once)
    /// after each `pause_every` bytes, and counts the reads made of it.
    struct Scripted {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
        pause_every: usize,
        paused_at: usize,
        reads: usize,
    }

    impl Scripted {
        fn new(data: Vec<u8>, chunk: usize, pause_every: usize) -> Self {
            Scripted {
                data,
                at: 0,
                chunk,
                pause_every,
                paused_at: 0,
                reads: 0,
            }
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            if this.at - this.paused_at >= this.pause_every && this.at < this.data.len() {
                this.paused_at = this.at;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.reads += 1;
            let until_pause = this.pause_every - (this.at - this.paused_at);
            let n = out
                .remaining()
                .min(this.chunk)
                .min(until_pause)
                .min(this.data.len() - this.at);
            out.put_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Read everything through `ReadAhead` in `ask`-byte reads, as rustls
    /// does (4 KiB); return the bytes and the reads made of the socket.
    async fn drain(mut r: ReadAhead<Scripted>, ask: usize) -> (Vec<u8>, usize) {
        let mut got = Vec::new();
        let mut chunk = vec![0; ask];
        loop {
            let n = r.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        (got, r.inner.reads)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_bulk_sender_is_read_in_large_reads_and_every_byte_arrives_in_order() {
        let sent = data(1 << 20);
        let (got, reads) = drain(
            ReadAhead::new(Scripted::new(sent.clone(), usize::MAX, usize::MAX)),
            4096,
        )
        .await;
        assert_eq!(got, sent);
        // 4 KiB a read would be 256 reads; read ahead, about 1 MiB / READ_AHEAD.
        assert!(reads <= (1 << 20) / READ_AHEAD + 3, "{reads} reads");
    }

    /// A socket that always has more, and that does not count against the
    /// task's budget itself: what is left is ReadAhead's own count.
    struct Endless;

    impl AsyncRead for Endless {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = out.remaining();
            out.put_slice(&vec![0x17; n]);
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn reads_served_from_the_buffer_make_a_flooding_peer_yield() {
        // The attacker's case: a peer that always has more, read 4 KiB at a
        // time as rustls does. Every read is served at once; tokio must
        // still get its worker back within a budget's worth of them (128)
        // and not after a READ_AHEAD's worth of bytes per unit.
        let mut r = ReadAhead::new(Endless);
        let mut chunk = vec![0; 4096];
        let served_before_yield = std::future::poll_fn(|cx| {
            for served in 0..100_000usize {
                let mut out = ReadBuf::new(&mut chunk);
                match Pin::new(&mut r).poll_read(cx, &mut out) {
                    Poll::Pending => return Poll::Ready(Some(served)),
                    Poll::Ready(res) => res.unwrap(),
                }
            }
            Poll::Ready(None)
        })
        .await;
        assert!(
            served_before_yield.is_some_and(|n| n <= 256),
            "reads served before the task yielded: {served_before_yield:?}"
        );
        // And it goes on reading once it has yielded.
        let mut out = ReadBuf::new(&mut chunk);
        std::future::poll_fn(|cx| Pin::new(&mut r).poll_read(cx, &mut out))
            .await
            .unwrap();
        assert_eq!(out.filled().len(), 4096);
    }

    #[tokio::test]
    async fn short_reads_and_pauses_lose_nothing() {
        for (chunk, pause) in [(1000, 5000), (4096, 4096), (7000, 70_000), (50_000, 12_345)] {
            let sent = data(300_000);
            let (got, _) = drain(
                ReadAhead::new(Scripted::new(sent.clone(), chunk, pause)),
                4096,
            )
            .await;
            assert_eq!(got, sent, "chunk {chunk}, pause every {pause}");
        }
    }

    #[tokio::test]
    async fn a_quiet_peer_is_read_straight_through_and_a_waiting_connection_holds_no_buffer() {
        // Small messages (less than asked): no read-ahead at all.
        let mut quiet = ReadAhead::new(Scripted::new(data(3000), 300, usize::MAX));
        let mut chunk = [0; 4096];
        for _ in 0..10 {
            assert_eq!(quiet.read(&mut chunk).await.unwrap(), 300);
            assert_eq!(quiet.buffered_capacity(), 0);
        }
        // A burst, then the socket has nothing: once the burst is read,
        // the buffer is gone before the connection waits.
        let mut burst = ReadAhead::new(Scripted::new(data(200_000), usize::MAX, 100_000));
        let mut read = 0;
        let mut held_while_bulk = 0;
        while read < 100_000 {
            read += burst.read(&mut chunk).await.unwrap();
            held_while_bulk = held_while_bulk.max(burst.buffered_capacity());
        }
        assert_eq!(held_while_bulk, READ_AHEAD);
        // The next read meets the pause (Pending): the buffer is freed.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut out = ReadBuf::new(&mut chunk);
        assert!(
            Pin::new(&mut burst)
                .poll_read(&mut cx, &mut out)
                .is_pending()
        );
        assert_eq!(burst.buffered_capacity(), 0);
    }
}
