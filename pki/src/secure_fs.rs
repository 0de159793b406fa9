//! Files that hold secrets: private directories (0700), atomic writes with an
//! explicit mode (temp file in the same directory, fsync, rename, fsync the
//! directory), and the permission check every key load runs.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every private key file.
pub const KEY_MODE: u32 = 0o600;
/// Mode of every public file (certificates).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of every directory that holds a key.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Create `dir` (and missing parents) and force its mode to 0700.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Write `contents` to `path` atomically with `mode`: readers see the old
/// file or the new one, never a partial one, and the file never exists with
/// a wider mode than asked.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut suffix = [0u8; 6];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| io::Error::other("random source failed"))?;
    let tmp_name = format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; make it exact.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory, so the renames inside it survive a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why a key file may not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The key can be read by group or others.
    #[error(
        "private key {path} has mode {mode:04o}, readable by group or others; fix it with: chmod 600 {path}"
    )]
    TooOpen {
        /// The key path.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The key could not be read.
    #[error("cannot read private key {path}: {source}")]
    Io {
        /// The key path.
        path: String,
        /// The IO error.
        source: io::Error,
    },
}

/// Read a private key file, refusing one that group or others can access.
pub fn read_private_key(path: &Path) -> Result<String, KeyFileError> {
    let shown = path.display().to_string();
    let io_err = |source| KeyFileError::Io {
        path: shown.clone(),
        source,
    };
    let meta = fs::metadata(path).map_err(io_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: shown.clone(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"one", KEY_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&p, b"two", KEY_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // no temp files left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_dir_is_0700_even_if_it_existed_wider() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn open_key_refused_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"secret", 0o644).unwrap();
        let err = read_private_key(&p).unwrap_err().to_string();
        assert!(err.contains("0644"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("secret"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private_key(&p).unwrap(), "secret");
    }
}
