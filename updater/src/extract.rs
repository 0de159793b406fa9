//! Safe extraction of a release tarball (gzip'd tar) into a staging dir.
//!
//! Refused, with a message naming the entry: absolute paths, `..`, anything
//! that is not a regular file or a directory (symlinks, hard links, devices,
//! fifos), a total size over the cap. Setuid/setgid/sticky bits and group
//! and other write bits are cleared.
//! Nothing is written outside the staging dir.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

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
    /// The archive is not a valid gzip'd tar.
    #[error("not a valid .tar.gz release: {0}")]
    Corrupt(String),
    /// Writing failed.
    #[error("cannot extract: {0}")]
    Io(#[from] std::io::Error),
}

/// Extract `tarball` into `dest` (created), at most `cap` bytes in total.
pub fn extract_release(tarball: &Path, dest: &Path, cap: u64) -> Result<u64, ExtractError> {
    let file = std::fs::File::open(tarball)?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut archive = tar::Archive::new(gz);
    std::fs::create_dir_all(dest)?;
    let mut total = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| ExtractError::Corrupt(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ExtractError::Corrupt(e.to_string()))?;
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
            std::fs::create_dir_all(&target)?;
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
            std::fs::create_dir_all(parent)?;
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
        let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)?;
        if copied != size {
            return Err(ExtractError::Corrupt(format!("{shown}: truncated entry")));
        }
        out.sync_all()?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(total)
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
}
