//! Safe extraction of a release tarball (gzip'd tar) into a staging dir.
//!
//! Refused, with a message naming the entry: absolute paths, `..`, anything
//! that is not a regular file or a directory (symlinks, hard links, devices,
//! fifos), a total size over the cap, more than [`MAX_ENTRIES`] entries. Setuid/setgid/sticky bits and group
//! and other write bits are cleared.
//! Nothing is written outside the staging dir.
//!
//! An upload is extracted while it streams in ([`StreamingExtraction`]),
//! into a private directory beside the slots; it becomes a staging dir by
//! one rename once the upload is verified, and is removed otherwise.

use std::io::{BufRead, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use axum::body::Bytes;

/// Why a tarball was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry's path is absolute or climbs out.
    #[error("refused entry {0:?}: absolute paths and '..' are not allowed")]
    UnsafePath(String),
    /// An entry is a link, device or fifo.
    #[error(
        "refused entry {path:?}: {kind} entries are not allowed (only regular files and directories)"
    )]
    UnsafeType {
        /// The entry.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// The release is larger than allowed.
    #[error("release too large: more than {cap} bytes once extracted")]
    TooLarge {
        /// The cap.
        cap: u64,
    },
    /// The release has more entries than any release needs (empty files
    /// and directories cost no bytes, but an inode each).
    #[error("release refused: more than {max} entries")]
    TooManyEntries {
        /// The limit.
        max: u64,
    },
    /// The archive is not a valid gzip'd tar.
    #[error("not a valid .tar.gz release: {0}")]
    Corrupt(String),
    /// Writing failed.
    #[error("cannot extract: {0}")]
    Io(#[from] std::io::Error),
}

/// Most entries (files and directories) a release may have: a release is a
/// few binaries, and each entry costs the worker an inode.
pub const MAX_ENTRIES: u64 = 10_000;

/// Extract the file `tarball` into `dest` (created), at most `cap` bytes in
/// total.
pub fn extract_release(tarball: &Path, dest: &Path, cap: u64) -> Result<u64, ExtractError> {
    let file = std::fs::File::open(tarball)?;
    extract_release_from(std::io::BufReader::new(file), dest, cap)
}

/// Extract the gzip'd tar read from `source` into `dest` (created), at most
/// `cap` bytes in total. The one extractor of files and of streams.
pub fn extract_release_from(
    source: impl BufRead,
    dest: &Path,
    cap: u64,
) -> Result<u64, ExtractError> {
    let gz = flate2::bufread::GzDecoder::new(source);
    let mut archive = tar::Archive::new(gz);
    std::fs::create_dir_all(dest)?;
    let mut total = 0u64;
    let mut count = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let entries = archive
        .entries()
        .map_err(|e| ExtractError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ExtractError::Corrupt(e.to_string()))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ExtractError::TooManyEntries { max: MAX_ENTRIES });
        }
        let raw_path = entry
            .path()
            .map_err(|e| ExtractError::Corrupt(e.to_string()))?
            .into_owned();
        let shown = raw_path.display().to_string();
        let rel =
            safe_relative(&raw_path).ok_or_else(|| ExtractError::UnsafePath(shown.clone()))?;
        let kind = entry.header().entry_type();
        // Owner bits as given; group and others may never write (the agent
        // runs privileged code from here), special bits never survive.
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        if kind.is_dir() {
            if rel.as_os_str().is_empty() {
                continue;
            }
            let target = dest.join(&rel);
            std::fs::create_dir_all(&target).map_err(|e| clash(e, &shown))?;
            std::fs::set_permissions(
                &target,
                std::fs::Permissions::from_mode((mode | 0o700) & 0o755),
            )?;
            continue;
        }
        if !kind.is_file() {
            let kind = match kind {
                tar::EntryType::Symlink => "symlink",
                tar::EntryType::Link => "hard link",
                tar::EntryType::Char => "character device",
                tar::EntryType::Block => "block device",
                tar::EntryType::Fifo => "fifo",
                _ => "special",
            };
            return Err(ExtractError::UnsafeType { path: shown, kind });
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| ExtractError::Corrupt(e.to_string()))?;
        total = total.saturating_add(size);
        if total > cap {
            return Err(ExtractError::TooLarge { cap });
        }
        let target = dest.join(&rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| clash(e, &shown))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ExtractError::UnsafePath(format!("{shown} (duplicate entry)"))
                } else {
                    ExtractError::Io(e)
                }
            })?;
        // Never trust the header size alone: copy at most what it declared.
        let copied = copy_entry(&mut entry, &mut out, size, &shown, &mut buf)?;
        if copied != size {
            return Err(ExtractError::Corrupt(format!("{shown}: truncated entry")));
        }
        out.sync_all()?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(total)
}

/// A directory or file that cannot be made because an earlier entry took
/// its name or its parent's (a file, then a directory of the same name):
/// the tarball's fault, not the host's.
fn clash(e: std::io::Error, shown: &str) -> ExtractError {
    match e.kind() {
        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
            ExtractError::UnsafePath(format!("{shown} (clashes with an earlier entry)"))
        }
        _ => ExtractError::Io(e),
    }
}

/// Copy at most `size` bytes of an entry into `out`. A failed read is the
/// archive's fault (truncated, a broken deflate stream or checksum:
/// [`ExtractError::Corrupt`]); a failed write is the host's
/// ([`ExtractError::Io`]).
fn copy_entry(
    entry: &mut impl Read,
    out: &mut std::fs::File,
    size: u64,
    shown: &str,
    buf: &mut [u8],
) -> Result<u64, ExtractError> {
    use std::io::Write;
    let mut copied = 0u64;
    while copied < size {
        let want = usize::try_from(size - copied).map_or(buf.len(), |left| left.min(buf.len()));
        let n = match entry.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ExtractError::Corrupt(format!("{shown}: {e}"))),
        };
        out.write_all(&buf[..n])?;
        copied += n as u64;
    }
    Ok(copied)
}

/// How many received chunks may wait for the extractor: beyond that the
/// upload waits (TCP pushes back on the sender), memory does not grow.
const CHUNKS_IN_FLIGHT: usize = 8;

/// The chunks of an upload, handed from the task receiving it to the thread
/// extracting it, read as one stream without copying them again.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
    consumed: usize,
}

impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.consumed == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.consumed = 0;
                }
                // The upload ended (or was dropped): end of stream.
                None => break,
            }
        }
        Ok(&self.current[self.consumed..])
    }

    fn consume(&mut self, n: usize) {
        self.consumed = (self.consumed + n).min(self.current.len());
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Permission to extract an upload before it is verified, held until what
/// was extracted is installed or removed (the updater grants one at a time,
/// so unverified bytes on disk never exceed one release's cap).
pub type EarlyPermit = tokio::sync::OwnedSemaphorePermit;

/// A release extracted on a blocking thread while its upload streams in, so
/// that receiving and extracting overlap instead of following each other.
/// The extractor is the same hostile-input extractor as for a file; what it
/// writes stays in a private directory, is neither run nor installed before
/// the upload is verified, and is removed when the upload is refused,
/// interrupted or dropped (also while [`StreamingExtraction::finish`] waits).
pub struct StreamingExtraction {
    chunks: Option<tokio::sync::mpsc::Sender<Bytes>>,
    extractor: Option<tokio::task::JoinHandle<Result<u64, ExtractError>>>,
    dir: PathBuf,
    permit: Option<EarlyPermit>,
}

impl StreamingExtraction {
    /// Start extracting into `dir`, created here and private to this upload
    /// (it must not exist yet), at most `cap` bytes in total, under `permit`.
    pub fn start(dir: PathBuf, cap: u64, permit: EarlyPermit) -> Result<Self, ExtractError> {
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
        let dest = dir.clone();
        let extractor = tokio::task::spawn_blocking(move || {
            let source = ChunkReader {
                chunks: rx,
                current: Bytes::new(),
                consumed: 0,
            };
            extract_release_from(source, &dest, cap)
        });
        Ok(StreamingExtraction {
            chunks: Some(tx),
            extractor: Some(extractor),
            dir,
            permit: Some(permit),
        })
    }

    /// Hand the next chunk of the upload to the extractor; waits while the
    /// extractor is behind. Once it has stopped (the archive ended, or was
    /// refused) the rest of the upload is not its concern and is dropped.
    pub async fn feed(&mut self, chunk: Bytes) {
        if let Some(tx) = &self.chunks
            && tx.send(chunk).await.is_err()
        {
            self.chunks = None;
        }
    }

    /// The upload is complete: wait for the extractor to finish, and hand
    /// over what it extracted (or why it refused the tarball).
    pub async fn finish(mut self) -> PrestagedRelease {
        self.chunks = None;
        // Awaited in place, taken only once done: if this future is dropped
        // meanwhile (a timeout, the client gone), `Drop` still sees the
        // extractor and removes its directory after it.
        let outcome = match self.extractor.as_mut() {
            Some(extractor) => extractor.await.unwrap_or_else(|e| {
                Err(ExtractError::Corrupt(format!("the extractor failed: {e}")))
            }),
            None => Err(ExtractError::Corrupt("the extractor is gone".into())),
        };
        self.extractor = None;
        PrestagedRelease {
            dir: std::mem::take(&mut self.dir),
            outcome,
            permit: self.permit.take(),
        }
    }
}

/// Remove `dir` on a blocking thread (a hostile tree may hold thousands of
/// entries), then release `permit`; inline when no runtime is left.
fn remove_in_background(dir: PathBuf, permit: Option<EarlyPermit>) {
    let remove = move || {
        let _ = std::fs::remove_dir_all(&dir);
        drop(permit);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(remove);
        }
        Err(_) => remove(),
    }
}

impl Drop for StreamingExtraction {
    /// An upload dropped before [`StreamingExtraction::finish`] (interrupted,
    /// malformed): the extractor sees the stream end and stops; its
    /// directory is removed once it has (not before: it could still write).
    fn drop(&mut self) {
        self.chunks = None;
        if let Some(extractor) = self.extractor.take() {
            let dir = std::mem::take(&mut self.dir);
            let permit = self.permit.take();
            // Without a runtime (shutdown) nothing runs: the next start
            // removes the directory.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = extractor.await;
                    remove_in_background(dir, permit);
                });
            }
        }
    }
}

/// A release extracted from its upload, waiting for the upload to be
/// verified. Its directory is removed when this is dropped, unless
/// [`PrestagedRelease::move_to`] moved it into a slot's staging dir first.
#[derive(Debug)]
pub struct PrestagedRelease {
    dir: PathBuf,
    /// Bytes extracted, or why the tarball was refused.
    pub outcome: Result<u64, ExtractError>,
    permit: Option<EarlyPermit>,
}

impl PrestagedRelease {
    /// Move the extracted tree to `staging`, an empty directory on the same
    /// file system, in one rename; it is no longer private (0755, as a
    /// staging dir is).
    pub fn move_to(&self, staging: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.dir, staging)?;
        std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o755))
    }
}

impl Drop for PrestagedRelease {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.dir);
        // After a move there is nothing left here to remove.
        let permit = self.permit.take();
        if dir.exists() {
            remove_in_background(dir, permit);
        }
    }
}

/// The entry path as a plain relative path, or `None` when it is unsafe.
fn safe_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build a .tar.gz with raw headers (so malicious entries can be made).
    pub fn tarball(entries: &[(&str, tar::EntryType, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, kind, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").unwrap();
                h.set_size(0);
            }
            // Write the name bytes directly so '..' and '/' survive.
            let name = path.as_bytes();
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn try_extract(bytes: Vec<u8>, cap: u64) -> (Result<u64, ExtractError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("r.tar.gz");
        std::fs::write(&t, bytes).unwrap();
        let r = extract_release(&t, &dir.path().join("stage"), cap);
        (r, dir)
    }

    #[test]
    fn extracts_files_and_clears_setuid() {
        let (r, dir) = try_extract(
            tarball(&[
                ("bin/", tar::EntryType::Directory, b"", 0o755),
                (
                    "bin/decnet-agent",
                    tar::EntryType::Regular,
                    b"#!/bin/sh\n",
                    0o4755,
                ),
            ]),
            1024,
        );
        assert_eq!(r.unwrap(), 10);
        let p = dir.path().join("stage/bin/decnet-agent");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o755
        );
    }

    #[test]
    fn nobody_but_the_owner_may_write_what_is_installed() {
        let (r, dir) = try_extract(
            tarball(&[
                ("share/", tar::EntryType::Directory, b"", 0o777),
                ("share/open", tar::EntryType::Regular, b"x", 0o777),
                ("share/sticky", tar::EntryType::Regular, b"y", 0o1777),
                ("share/group", tar::EntryType::Regular, b"z", 0o664),
            ]),
            1024,
        );
        r.unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join("stage").join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("share"), 0o755);
        assert_eq!(mode("share/open"), 0o755);
        assert_eq!(mode("share/sticky"), 0o755);
        assert_eq!(mode("share/group"), 0o644);
    }

    #[test]
    fn refuses_malicious_entries() {
        for (entries, what) in [
            (
                vec![("../evil", tar::EntryType::Regular, &b"x"[..], 0o644)],
                "'..'",
            ),
            (
                vec![("/etc/evil", tar::EntryType::Regular, &b"x"[..], 0o644)],
                "absolute",
            ),
            (
                vec![("bin/link", tar::EntryType::Symlink, &b""[..], 0o777)],
                "symlink",
            ),
            (
                vec![("dev", tar::EntryType::Char, &b""[..], 0o644)],
                "device",
            ),
            (
                vec![
                    ("a", tar::EntryType::Regular, &[0u8; 600][..], 0o644),
                    ("b", tar::EntryType::Regular, &[0u8; 600][..], 0o644),
                ],
                "too large",
            ),
        ] {
            let (r, dir) = try_extract(tarball(&entries), 1000);
            let e = r.expect_err(what).to_string();
            assert!(e.contains(what) || e.contains("not allowed"), "{what}: {e}");
            assert!(!dir.path().join("evil").exists());
        }
        let (r, _d) = try_extract(b"not a tarball at all".to_vec(), 1000);
        assert!(matches!(r, Err(ExtractError::Corrupt(_))));
    }

    /// Stream `bytes` through a [`StreamingExtraction`] in `chunk`-byte
    /// pieces, into `<dir>/.upload-x`.
    async fn stream(bytes: &[u8], chunk: usize, cap: u64, dir: &Path) -> PrestagedRelease {
        let mut x = StreamingExtraction::start(dir.join(".upload-x"), cap, permit()).unwrap();
        for piece in bytes.chunks(chunk) {
            x.feed(Bytes::copy_from_slice(piece)).await;
        }
        x.finish().await
    }

    fn permit() -> EarlyPermit {
        std::sync::Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap()
    }

    /// Whether `path` is gone within 5 s (removal runs in the background).
    async fn gone(path: &Path) -> bool {
        for _ in 0..500 {
            if !path.exists() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    #[test]
    fn faults_of_the_archive_itself_are_refusals_not_host_failures() {
        // A file, then a directory or a file under the same name.
        for second in [
            ("a/", tar::EntryType::Directory, &b""[..], 0o755),
            ("a/b", tar::EntryType::Regular, &b"y"[..], 0o644),
        ] {
            let (r, _dir) = try_extract(
                tarball(&[("a", tar::EntryType::Regular, b"x", 0o644), second]),
                1024,
            );
            assert!(
                matches!(&r, Err(ExtractError::UnsafePath(p)) if p.contains("clashes")),
                "{}: {r:?}",
                second.0
            );
        }
        // Cut off inside a file's data.
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let whole = tarball(&[("bin/decnet-agent", tar::EntryType::Regular, &data, 0o755)]);
        let (r, _dir) = try_extract(whole[..whole.len() / 2].to_vec(), 1 << 20);
        assert!(matches!(r, Err(ExtractError::Corrupt(_))), "{r:?}");
    }

    #[test]
    fn a_release_of_countless_empty_entries_is_refused() {
        let names: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("e{i}")).collect();
        let entries: Vec<(&str, tar::EntryType, &[u8], u32)> = names
            .iter()
            .map(|n| (n.as_str(), tar::EntryType::Regular, &b""[..], 0o644))
            .collect();
        let (r, _dir) = try_extract(tarball(&entries), 1 << 20);
        assert!(
            matches!(r, Err(ExtractError::TooManyEntries { max: MAX_ENTRIES })),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_streamed_upload_is_extracted_privately_then_moved_into_staging() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = tarball(&[
            ("bin/", tar::EntryType::Directory, b"", 0o755),
            (
                "bin/decnet-agent",
                tar::EntryType::Regular,
                b"#!/bin/sh\n",
                0o4755,
            ),
        ]);
        // Pieces of 7 bytes: headers and the gzip stream split anywhere.
        let pre = stream(&bytes, 7, 1024, dir.path()).await;
        assert_eq!(*pre.outcome.as_ref().unwrap(), 10);
        let private = dir.path().join(".upload-x");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&private), 0o700, "unverified: nobody else may look");
        let staging = dir.path().join(".staging-000001-x");
        std::fs::create_dir(&staging).unwrap();
        pre.move_to(&staging).unwrap();
        drop(pre);
        assert_eq!(mode(&staging), 0o755, "installed, no longer private");
        let agent = staging.join("bin/decnet-agent");
        assert_eq!(std::fs::read(&agent).unwrap(), b"#!/bin/sh\n");
        assert_eq!(mode(&agent), 0o755, "setuid cleared as from a file");
        assert!(!private.exists());
    }

    #[tokio::test]
    async fn a_refused_or_abandoned_streamed_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Refused at its first entry; the megabyte after it is taken (and
        // dropped) without the sender waiting on a stopped extractor.
        let mut bytes = tarball(&[("../evil", tar::EntryType::Regular, b"x", 0o644)]);
        bytes.extend(std::iter::repeat_n(0u8, 1 << 20));
        let pre = stream(&bytes, 4096, 1024, dir.path()).await;
        assert!(
            matches!(pre.outcome, Err(ExtractError::UnsafePath(_))),
            "{:?}",
            pre.outcome
        );
        drop(pre);
        assert!(gone(&dir.path().join(".upload-x")).await);
        assert!(!dir.path().join("evil").exists());
        // Over the cap while streaming.
        let big = tarball(&[("a", tar::EntryType::Regular, &[1u8; 4096], 0o644)]);
        let pre = stream(&big, 512, 1000, dir.path()).await;
        assert!(matches!(pre.outcome, Err(ExtractError::TooLarge { .. })));
        drop(pre);
        assert!(gone(&dir.path().join(".upload-x")).await);
        // Dropped half way (an interrupted upload): removed once the
        // extractor has stopped, and only then is the permit free again.
        let early = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let held = early.clone().try_acquire_owned().unwrap();
        let mut x =
            StreamingExtraction::start(dir.path().join(".upload-y"), 1 << 20, held).unwrap();
        x.feed(Bytes::copy_from_slice(&big[..big.len() / 2])).await;
        assert!(early.clone().try_acquire_owned().is_err(), "one at a time");
        drop(x);
        assert!(
            gone(&dir.path().join(".upload-y")).await,
            "an abandoned extraction was left behind"
        );
        assert!(gone(&dir.path().join(".upload-y")).await);
        let mut freed = false;
        for _ in 0..500 {
            if early.clone().try_acquire_owned().is_ok() {
                freed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(freed, "the permit is released after the removal");
        // Dropped while `finish` waits for the extractor (the request timed
        // out): removed all the same.
        let mut x =
            StreamingExtraction::start(dir.path().join(".upload-w"), 1 << 20, permit()).unwrap();
        x.feed(Bytes::copy_from_slice(&big)).await;
        let _ = tokio::time::timeout(std::time::Duration::ZERO, x.finish()).await;
        assert!(gone(&dir.path().join(".upload-w")).await);
        // A directory that exists is never reused.
        std::fs::create_dir(dir.path().join(".upload-z")).unwrap();
        assert!(StreamingExtraction::start(dir.path().join(".upload-z"), 1024, permit()).is_err());
    }
}
