//! A lingering close: an answer sent before its request was read whole
//! still reaches the client.
//!
//! A server that answers early (a body over its limit: `413`; a refusal)
//! and closes with the rest of the request unread makes the kernel reset
//! the connection, and a client still sending gets a broken pipe instead
//! of the answer: it never learns why. So, like nginx's `lingering_close`,
//! when HTTP is done with a connection whose client has not closed its
//! side, [`LingeringClose`] shuts the server's side (TLS `close_notify`
//! and a FIN), then reads and discards what the client still sends, until
//! it closes too, for at most [`LINGER_TIME`] and [`LINGER_BYTES`]: what
//! a hostile client can make a closing connection cost is bounded. A
//! connection whose client already closed (the usual end) closes at once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest a closing connection drains what its client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// The most a closing connection reads and discards.
pub const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// A byte stream whose shutdown lingers (see the module's documentation).
#[derive(Debug)]
pub struct LingeringClose<T> {
    inner: T,
    /// The client closed its side (a read returned no bytes).
    client_closed: bool,
    /// Our side is shut; draining until this timer fires.
    draining: Option<Pin<Box<tokio::time::Sleep>>>,
    drained: u64,
}

impl<T> LingeringClose<T> {
    /// `inner`, its shutdown lingering.
    pub fn new(inner: T) -> Self {
        LingeringClose {
            inner,
            client_closed: false,
            draining: None,
            drained: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LingeringClose<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && buf.remaining() > 0
            && buf.filled().len() == before
        {
            this.client_closed = true;
        }
        r
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingeringClose<T> {
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

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.draining.is_none() {
            let shut = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
            if this.client_closed || shut.is_err() {
                return Poll::Ready(shut);
            }
            this.draining = Some(Box::pin(tokio::time::sleep(LINGER_TIME)));
        }
        let mut scratch = [0u8; 8192];
        loop {
            if let Some(timer) = this.draining.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => {
                    this.drained += buf.filled().len() as u64;
                    if this.drained >= LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                // The client reset or broke the stream: nothing left to wait for.
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}
