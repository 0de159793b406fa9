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

/// An append-only log file rotated by size.
pub struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
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
            rotate_bytes: policy.rotate_bytes,
            keep: policy.keep.max(1),
        })
    }

    /// Append `buf` (buffered).
    pub fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Flush to the kernel; rotate when the file has reached its size.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.rotate_bytes > 0 && self.size >= self.rotate_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Flush and fsync.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()
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
