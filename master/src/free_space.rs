//! Writes that keep the disk's free-space watermark. What an operator or a
//! worker chooses the size of (a release upload, an evidence archive
//! spooled for an operator) stops before the filesystem it shares with the
//! fleet database and the logs falls under the watermark the log listener
//! keeps (5 %, at most 1 GiB): a full disk would stop heartbeats, joins and
//! the audit log with it.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

/// How many bytes are written between two looks at the free space (a look
/// is one `statvfs`: microseconds). Each writer goes at most this far past
/// the watermark, so a few at once stay far inside it on any disk the
/// master runs on.
pub const CHECK_EVERY: u64 = 8 << 20;

/// Free and total bytes of a filesystem: the real one's ([`disk_of`]), or
/// a test's.
pub type FreeSpaceProbe = Box<dyn Fn() -> io::Result<(u64, u64)> + Send + Sync>;

/// The probe of the filesystem holding `dir`.
pub fn disk_of(dir: &Path) -> FreeSpaceProbe {
    let dir = dir.to_path_buf();
    Box::new(move || decnet_log_relay::disk::free_space(&dir))
}

/// Whether a filesystem with `free` of `total` bytes free is under the
/// watermark. Pure.
pub fn under_watermark(free: u64, total: u64) -> bool {
    free < decnet_log_relay::disk::watermark(&Default::default(), total)
}

/// `inner`, whose writes fail (`StorageFull`) once its disk is under the
/// watermark: looked at before the first write and every [`CHECK_EVERY`]
/// bytes, so a writer never takes more than that below it.
pub struct KeepFreeSpace<W> {
    inner: W,
    probe: FreeSpaceProbe,
    unchecked: u64,
}

impl<W> KeepFreeSpace<W> {
    /// Guard `inner`, whose disk `probe` measures.
    pub fn new(inner: W, probe: FreeSpaceProbe) -> KeepFreeSpace<W> {
        KeepFreeSpace {
            inner,
            probe,
            unchecked: CHECK_EVERY,
        }
    }

    /// The writer guarded.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for KeepFreeSpace<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.unchecked >= CHECK_EVERY {
            let (free, total) = (this.probe)()?;
            if under_watermark(free, total) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "the master's disk is down to the free space it keeps for its database and logs",
                )));
            }
            this.unchecked = 0;
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.unchecked += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncWriteExt;

    const G: u64 = 1 << 30;

    fn probe(free: &Arc<AtomicU64>) -> FreeSpaceProbe {
        let free = free.clone();
        Box::new(move || Ok((free.load(Ordering::SeqCst), 100 * G)))
    }

    /// A writer that fills the disk (an agent's endless archive, say) is
    /// stopped within one check of the watermark, and nothing is written
    /// on a disk already under it.
    #[tokio::test]
    async fn a_write_stops_at_the_watermark() {
        let free = Arc::new(AtomicU64::new(10 * G));
        let mut out = KeepFreeSpace::new(tokio::io::sink(), probe(&free));
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        let err = loop {
            match out.write_all(&chunk).await {
                Ok(()) => written += chunk.len() as u64,
                Err(e) => break e,
            }
            // The disk fills as we write: under the watermark (1 GiB of
            // 100) after the first MiB.
            free.store(G / 2, Ordering::SeqCst);
        };
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(written, CHECK_EVERY, "stopped at the next look");
        let mut out = KeepFreeSpace::new(tokio::io::sink(), probe(&free));
        let err = out.write_all(b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        // Above it, everything is written.
        free.store(2 * G, Ordering::SeqCst);
        let mut out = KeepFreeSpace::new(Vec::new(), probe(&free));
        out.write_all(&chunk).await.unwrap();
        assert_eq!(out.into_inner().len(), chunk.len());
    }

    #[test]
    fn the_watermark_is_the_log_listeners() {
        assert!(under_watermark(G - 1, 100 * G));
        assert!(!under_watermark(G, 100 * G));
        // 5 % of a small disk.
        assert!(under_watermark(G / 2 - 1, 10 * G) && !under_watermark(G / 2, 10 * G));
    }
}
