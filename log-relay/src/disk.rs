//! What the listener does to the disk: files rotated by size with a
//! retention count, and a free-space watermark below which nothing more is
//! written, so the filesystem it shares with the fleet database always
//! keeps room (writing resumes by itself once space is back).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the listener's files are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskPolicy {
    /// Rotate a file once it reaches this many bytes (0: never).
    pub rotate_bytes: u64,
    /// Rotated files kept per log (`fleet.log.1` … `.N`); older ones are deleted.
    pub keep: usize,
    /// Stop writing while the filesystem has less free space than this
    /// (`None`: 5 % of the filesystem, at most 1 GiB; `Some(0)`: never stop).
    pub min_free_bytes: Option<u64>,
}

impl Default for DiskPolicy {
    fn default() -> Self {
        DiskPolicy {
            rotate_bytes: 256 * 1024 * 1024,
            keep: 10,
            min_free_bytes: None,
        }
    }
}

/// Free and total bytes of the filesystem holding `path` (available to
/// unprivileged users: what a write can really use).
pub fn free_space(path: &Path) -> std::io::Result<(u64, u64)> {
    let v = rustix::fs::statvfs(path)?;
    Ok((
        v.f_bavail.saturating_mul(v.f_frsize),
        v.f_blocks.saturating_mul(v.f_frsize),
    ))
}

/// The watermark in force for a filesystem of `total` bytes.
pub fn watermark(policy: &DiskPolicy, total: u64) -> u64 {
    policy
        .min_free_bytes
        .unwrap_or_else(|| (total / 20).min(1 << 30))
}

/// The write buffer of a log file. A write at least this large (a busy
/// peer's batch, tens to hundreds of KiB) goes to the file from its own
/// memory, not copied first (the copy into a 256 KiB buffer was about 5 %
/// of the listener's CPU, measured); smaller ones (quiet peers' lines)
/// gather here and go out in one system call.
const WRITE_BUFFER: usize = 32 * 1024;

/// Blocks reserved past a log file's end at a time ([`RotatingFile`]).
/// Appending into blocks not yet reserved made the filesystem do its
/// delayed-allocation bookkeeping for every 4 KiB page written (ext4:
/// reserving the block, quota, the extent-status tree: about a tenth of
/// the listener's CPU under load, measured); into blocks reserved ahead
/// with `fallocate` it maps them. Released again when the file is synced
/// (rotation, shutdown); a crash leaves at most this much reserved past
/// the end of the file it was writing.
pub const PREALLOCATE: u64 = 8 << 20;

/// An append-only log file rotated by size.
pub struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    /// Blocks are reserved up to here (see [`PREALLOCATE`]); `u64::MAX`
    /// once the filesystem has said it cannot; 0 when none can be.
    reserved_to: u64,
    /// For the watermark a reservation must leave room above.
    policy: DiskPolicy,
    rotate_bytes: u64,
    keep: usize,
}

fn open_append(p: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = p.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(p)
}

/// `path` with `.n` appended (`fleet.log.3`).
pub fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl RotatingFile {
    /// Open `path` for appending (created 0640, never through a symlink).
    pub fn open(path: &Path, policy: &DiskPolicy) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            size,
            // A crashed run may have left blocks reserved past the end:
            // released at the first sync like this run's.
            reserved_to: size,
            policy: *policy,
            rotate_bytes: policy.rotate_bytes,
            keep: policy.keep.max(1),
        })
    }

    /// Append `buf` (buffered).
    pub fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let end = self.size + buf.len() as u64;
        if end > self.reserved_to {
            self.reserve(end);
        }
        self.file.write_all(buf)?;
        self.size = end;
        Ok(())
    }

    /// Reserve blocks for the bytes up to `end` and [`PREALLOCATE`] more,
    /// from the file's end as it is (it may have been truncated by someone
    /// else since: logrotate's `copytruncate`), its size unchanged. A
    /// refusal costs nothing but the speed: a full disk (tried again a
    /// chunk later), or a filesystem without `fallocate` (not tried
    /// again). Nothing is reserved that would bring the free space near
    /// the watermark: that room is the fleet database's.
    fn reserve(&mut self, end: u64) {
        use rustix::fs::{FallocateFlags, fallocate, fstatvfs};
        self.reserved_to = end.saturating_add(PREALLOCATE);
        let Ok(eof) = self.file.get_ref().metadata().map(|m| m.len()) else {
            return;
        };
        // Still to land past `eof`: the buffered bytes and this write.
        let pending = (self.file.buffer().len() as u64) + (end - self.size);
        let len = pending.saturating_add(PREALLOCATE);
        let Ok(fs) = fstatvfs(self.file.get_ref()) else {
            return;
        };
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        let total = fs.f_blocks.saturating_mul(fs.f_frsize);
        if free < watermark(&self.policy, total).saturating_add(len.saturating_mul(2)) {
            return;
        }
        if let Err(rustix::io::Errno::OPNOTSUPP) =
            fallocate(self.file.get_ref(), FallocateFlags::KEEP_SIZE, eof, len)
        {
            self.reserved_to = u64::MAX;
        }
    }

    /// Flush to the kernel; rotate when the file has reached its size.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.rotate_bytes > 0 && self.size >= self.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Flush, release the blocks reserved past the end, and fsync.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.release_reserved();
        self.file.get_ref().sync_all()
    }

    /// Release the blocks reserved past the end (rotation, shutdown, and
    /// when writing pauses at the watermark: that room is the database's
    /// then). Truncating a file to its own size releases them; it is done
    /// only when the file is as long as this writer made it, so a file
    /// someone else has truncated (`copytruncate`) is never grown back.
    /// A failure only leaves the blocks reserved.
    pub fn release_reserved(&mut self) {
        if self.reserved_to == 0 || self.reserved_to == u64::MAX || self.file.flush().is_err() {
            return;
        }
        let file = self.file.get_ref();
        if file.metadata().is_ok_and(|m| m.len() == self.size) {
            let _ = file.set_len(self.size);
        }
        self.reserved_to = 0;
    }

    /// `path` -> `path.1` -> … -> `path.keep` (the oldest deleted), and a
    /// new empty `path`.
    pub fn rotate(&mut self) -> std::io::Result<()> {
        self.sync()?;
        let _ = std::fs::remove_file(rotated_name(&self.path, self.keep));
        for n in (1..self.keep).rev() {
            let from = rotated_name(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated_name(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated_name(&self.path, 1))?;
        self.file = BufWriter::with_capacity(WRITE_BUFFER, open_append(&self.path)?);
        self.size = 0;
        self.reserved_to = 0;
        tracing::info!(file = %self.path.display(), keep = self.keep, "log file rotated");
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The file the guard keeps beside the raw log while writing is paused
/// (`{"since":…,"free_bytes":…,"watermark_bytes":…}`): how `swarm doctor`
/// and an operator see it without the metrics endpoint.
pub const PAUSED_MARKER: &str = "writing-paused";

/// How often the free space is looked at, at most, while writing goes on.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The free-space watermark of the directories the listener writes to.
pub struct FreeSpaceGuard {
    dirs: Vec<PathBuf>,
    policy: DiskPolicy,
    paused: bool,
    last_check: Option<Instant>,
    written_since: u64,
    /// Bytes written between two checks at most (so a burst cannot run
    /// far past the watermark between checks).
    check_bytes: u64,
    /// The free space seen at the last check (for reports).
    last_free: u64,
    last_mark: u64,
    /// The write refused when writing paused: space must come back for it
    /// too before writing resumes (no flapping on the next big batch).
    pause_margin: u64,
}

/// What the guard saw, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceChange {
    /// Writing stopped: free space fell below the watermark.
    Paused {
        /// Free bytes seen.
        free: u64,
        /// The watermark.
        watermark: u64,
    },
    /// Writing resumed.
    Resumed {
        /// Free bytes seen.
        free: u64,
    },
}

impl FreeSpaceGuard {
    /// A guard for files in `dirs` (the first holds the paused marker; a
    /// stale one from an earlier run is removed).
    pub fn new(dirs: Vec<PathBuf>, policy: DiskPolicy) -> Self {
        if let Some(d) = dirs.first() {
            let _ = std::fs::remove_file(d.join(PAUSED_MARKER));
        }
        FreeSpaceGuard {
            dirs,
            policy,
            paused: false,
            last_check: None,
            written_since: 0,
            check_bytes: 1 << 20,
            last_free: u64::MAX,
            last_mark: 0,
            pause_margin: 0,
        }
    }

    /// Whether writing is stopped now.
    pub fn paused(&self) -> bool {
        self.paused
    }

    fn check(&mut self, now: Instant) -> Option<SpaceChange> {
        self.last_check = Some(now);
        self.written_since = 0;
        let mut free = u64::MAX;
        let mut mark = 0;
        for d in &self.dirs {
            match free_space(d) {
                Ok((f, total)) => {
                    let m = watermark(&self.policy, total);
                    if m > 0 && f.saturating_sub(m) < free.saturating_sub(mark) {
                        free = f;
                        mark = m;
                    }
                }
                Err(e) => tracing::warn!(dir = %d.display(), error = %e, "cannot read free space"),
            }
        }
        self.last_free = free;
        self.last_mark = mark;
        // Between checks at most an eighth of the margin is written.
        self.check_bytes = (mark / 8).clamp(4096, 1 << 20);
        if mark == 0 {
            let was = std::mem::replace(&mut self.paused, false);
            return was.then_some(SpaceChange::Resumed { free });
        }
        // Hysteresis: resume a quarter of the watermark above it (plus the
        // write that paused it).
        let resume_at = mark
            .saturating_add(mark / 4)
            .saturating_add(self.pause_margin);
        if !self.paused && free < mark {
            self.paused = true;
            self.pause_margin = 0;
            return Some(SpaceChange::Paused {
                free,
                watermark: mark,
            });
        }
        if self.paused && free >= resume_at {
            self.paused = false;
            return Some(SpaceChange::Resumed { free });
        }
        None
    }

    /// Keep the paused marker in step with a change.
    fn note(&self, change: Option<SpaceChange>) -> Option<SpaceChange> {
        let Some(marker) = self.dirs.first().map(|d| d.join(PAUSED_MARKER)) else {
            return change;
        };
        match change {
            Some(SpaceChange::Paused { free, watermark }) => {
                let since = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let body = format!(
                    "{{\"since\":{since},\"free_bytes\":{free},\"watermark_bytes\":{watermark}}}\n"
                );
                if let Err(e) = std::fs::write(&marker, body) {
                    tracing::warn!(file = %marker.display(), error = %e, "cannot write the paused marker");
                }
            }
            Some(SpaceChange::Resumed { .. }) => {
                let _ = std::fs::remove_file(&marker);
            }
            None => {}
        }
        change
    }

    /// Whether `bytes` more may be written now (checks the filesystems when
    /// due); reports a change of state (and keeps [`PAUSED_MARKER`]). A
    /// write that would take the free space below the watermark is refused
    /// and pauses writing.
    pub fn allow(&mut self, bytes: u64, now: Instant) -> (bool, Option<SpaceChange>) {
        let (ok, change) = self.decide(bytes, now);
        (ok, self.note(change))
    }

    fn decide(&mut self, bytes: u64, now: Instant) -> (bool, Option<SpaceChange>) {
        let due = match self.last_check {
            None => true,
            Some(t) if now.duration_since(t) >= CHECK_EVERY => true,
            Some(_) => !self.paused && self.written_since + bytes > self.check_bytes,
        };
        let change = if due { self.check(now) } else { None };
        if self.paused {
            return (false, change);
        }
        let left = self
            .last_free
            .saturating_sub(self.written_since)
            .saturating_sub(bytes);
        if self.last_mark > 0 && left < self.last_mark {
            self.paused = true;
            self.pause_margin = bytes;
            return (
                false,
                change.or(Some(SpaceChange::Paused {
                    free: self.last_free.saturating_sub(self.written_since),
                    watermark: self.last_mark,
                })),
            );
        }
        self.written_since += bytes;
        (true, change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_by_size_and_keep_their_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.log");
        let policy = DiskPolicy {
            rotate_bytes: 100,
            keep: 3,
            min_free_bytes: Some(0),
        };
        let mut f = RotatingFile::open(&p, &policy).unwrap();
        for i in 0..10 {
            f.write_all(format!("{i}{}\n", "x".repeat(98)).as_bytes())
                .unwrap();
            f.flush().unwrap();
        }
        f.sync().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        for n in 1..=3 {
            let body = std::fs::read_to_string(rotated_name(&p, n)).unwrap();
            assert!(body.starts_with(&format!("{}", 10 - n)), "{n}: {body}");
        }
        assert!(!rotated_name(&p, 4).exists(), "older ones are deleted");
    }

    /// Blocks the filesystem holds for `p`.
    fn allocated(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    }

    #[test]
    fn blocks_are_reserved_ahead_of_the_writes_and_released_on_sync() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.log");
        let mut f = RotatingFile::open(&p, &DiskPolicy::default()).unwrap();
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..1000 {
            f.write_all(line.as_bytes()).unwrap();
        }
        f.flush().unwrap();
        // The size is what was written; the blocks reach further.
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 100_000);
        assert!(
            allocated(&p) >= PREALLOCATE,
            "{} bytes allocated",
            allocated(&p)
        );
        f.sync().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 100_000);
        assert!(allocated(&p) < 200_000, "{} bytes allocated", allocated(&p));
        assert_eq!(std::fs::read(&p).unwrap(), line.repeat(1000).into_bytes());
        // Writing on after the release reserves again; releasing without
        // a sync (writing paused) gives them back as well.
        f.write_all(line.as_bytes()).unwrap();
        f.flush().unwrap();
        assert!(allocated(&p) >= PREALLOCATE);
        f.release_reserved();
        assert!(allocated(&p) < 200_000, "{} bytes allocated", allocated(&p));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 100_100);
    }

    #[test]
    fn what_a_crashed_run_left_reserved_is_released_by_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.log");
        let mut crashed = RotatingFile::open(&p, &DiskPolicy::default()).unwrap();
        crashed.write_all(&[b'x'; 1000]).unwrap();
        crashed.flush().unwrap();
        drop(crashed);
        assert!(allocated(&p) >= PREALLOCATE);
        let mut next = RotatingFile::open(&p, &DiskPolicy::default()).unwrap();
        next.sync().unwrap();
        assert!(allocated(&p) < 100_000, "{} bytes allocated", allocated(&p));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1000);
    }

    #[test]
    fn nothing_is_reserved_out_of_the_room_the_watermark_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.log");
        let (free, _) = free_space(dir.path()).unwrap();
        // A watermark just under the free space: writing goes on, but a
        // reservation would eat into the room kept.
        let policy = DiskPolicy {
            min_free_bytes: Some(free.saturating_sub(PREALLOCATE)),
            ..DiskPolicy::default()
        };
        let mut f = RotatingFile::open(&p, &policy).unwrap();
        f.write_all(&[b'x'; 100_000]).unwrap();
        f.flush().unwrap();
        assert!(allocated(&p) < 200_000, "{} bytes allocated", allocated(&p));
    }

    #[test]
    fn a_file_truncated_behind_the_writer_is_not_grown_back_on_sync() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.log");
        let mut f = RotatingFile::open(&p, &DiskPolicy::default()).unwrap();
        f.write_all(&[b'x'; 5000]).unwrap();
        f.flush().unwrap();
        // logrotate's copytruncate, say.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        f.write_all(b"after\n").unwrap();
        f.flush().unwrap();
        // The next reservation starts at the end as it is, not as it was.
        f.write_all(&vec![b'y'; PREALLOCATE as usize]).unwrap();
        f.flush().unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        assert_eq!(len, 6 + PREALLOCATE);
        assert!(allocated(&p) >= len + PREALLOCATE, "{}", allocated(&p));
        assert!(allocated(&p) < len + 3 * PREALLOCATE, "{}", allocated(&p));
        f.sync().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
        assert!(std::fs::read(&p).unwrap().starts_with(b"after\ny"));
        // Truncated again: a release finds the file shorter than this
        // writer made it and leaves it alone (a truncation to the length
        // it expected would grow the file back with zeros).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(3)
            .unwrap();
        f.release_reserved();
        f.sync().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"aft");
    }

    #[test]
    fn a_log_file_is_never_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        let p = dir.path().join("fleet.log");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(RotatingFile::open(&p, &DiskPolicy::default()).is_err());
    }

    #[test]
    fn the_watermark_pauses_and_resumes_with_hysteresis() {
        let dir = tempfile::tempdir().unwrap();
        let (free, _) = free_space(dir.path()).unwrap();
        let t0 = Instant::now();
        // A watermark above what is free: paused at the first check.
        let mut g = FreeSpaceGuard::new(
            vec![dir.path().to_path_buf()],
            DiskPolicy {
                min_free_bytes: Some(free.saturating_mul(2)),
                ..DiskPolicy::default()
            },
        );
        let (ok, change) = g.allow(10, t0);
        assert!(!ok);
        assert!(matches!(change, Some(SpaceChange::Paused { .. })));
        let marker = dir.path().join(PAUSED_MARKER);
        assert!(
            std::fs::read_to_string(&marker)
                .unwrap()
                .contains("watermark_bytes")
        );
        // No change reported again while it stays paused.
        assert_eq!(g.allow(10, t0 + Duration::from_secs(2)), (false, None));
        // A write that would cross the watermark is refused before it is made.
        let mut g2 = FreeSpaceGuard::new(
            vec![dir.path().to_path_buf()],
            DiskPolicy {
                min_free_bytes: Some(free / 2),
                ..DiskPolicy::default()
            },
        );
        assert!(g2.allow(10, t0).0);
        let (ok, change) = g2.allow(free, t0);
        assert!(!ok, "a batch of all the free space is refused");
        assert!(matches!(change, Some(SpaceChange::Paused { .. })));
        // Space comes back (here: the watermark drops).
        g.policy.min_free_bytes = Some(1);
        let (ok, change) = g.allow(10, t0 + Duration::from_secs(4));
        assert!(ok);
        assert!(matches!(change, Some(SpaceChange::Resumed { .. })));
        assert!(!marker.exists(), "the marker goes when writing resumes");
    }

    #[test]
    fn the_default_watermark_is_five_percent_at_most_a_gibibyte() {
        let p = DiskPolicy::default();
        assert_eq!(watermark(&p, 10 << 30), (10 << 30) / 20);
        assert_eq!(watermark(&p, 1 << 40), 1 << 30);
    }
}
