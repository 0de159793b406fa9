//! The evidence archive: what a torn-down process decky left in its working
//! directory, kept for the operator as `<state-dir>/evidence/<decky>/<id>.tar.gz`
//! and fetched with `decnet swarm evidence HOST DECKY`.
//!
//! A honeypot's working directory is the attacker's footprint (dropped
//! tools, logs, session records), so a teardown must neither lose it nor
//! leave it behind under a uid the next decky may be given. At teardown the
//! tree is packed and then removed by a thread that reads as the decky (its
//! filesystem ids, [`decnet_confine::exec::read_as_for_this_thread`]): it reads
//! nothing the decky could not (a hard link to a file the decky cannot
//! read stays out), never follows a link (links are stored as links), and
//! stores only regular files, directories and links — under
//! `<decky>-<id>/`, owned by root, without set-id bits or others' write
//! bits, so extracting it as root recreates nothing of the decky's. An
//! archive holds at most [`MAX_ARCHIVE_ENTRIES`] entries and `max_bytes`
//! (names and links counted); the archive as a whole keeps at most `keep`
//! archives per decky and `max_bytes` in all, the oldest pruned first (the
//! newest always stays).

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use decnet_confine::ExecIdentity;
use decnet_confine::tree::{Event, Flow, walk};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

/// Entries one archive holds at most (past it the archive stops, and its
/// manifest says it is incomplete).
pub const MAX_ARCHIVE_ENTRIES: u64 = 200_000;

/// Bounds of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvidenceLimits {
    /// Bytes of archives in all (compressed); also the most one archive
    /// reads (uncompressed).
    pub max_bytes: u64,
    /// Archives kept per decky; `0` keeps none (a teardown then only
    /// removes the working directory).
    pub keep: usize,
}

impl Default for EvidenceLimits {
    fn default() -> Self {
        EvidenceLimits {
            max_bytes: 2 << 30,
            keep: 5,
        }
    }
}

/// One archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceEntry {
    /// The decky it came from.
    pub decky: String,
    /// Its id: the UTC time it was made (`20261205T141530Z`, `-2` … on a
    /// clash).
    pub id: String,
    /// Its size (compressed).
    pub bytes: u64,
}

/// What a teardown did with a working directory.
#[derive(Debug, Default)]
pub struct Archived {
    /// The archive made, if any.
    pub entry: Option<EvidenceEntry>,
    /// What could not be removed (the uid then keeps files: it is not
    /// freed).
    pub residue: Option<String>,
}

/// Why archiving failed (the working directory is left as it was).
#[derive(Debug, thiserror::Error)]
#[error("cannot archive the working directory of {decky}: {detail}")]
pub struct EvidenceError {
    decky: String,
    detail: String,
}

/// The archive under `<state-dir>/evidence`.
#[derive(Debug)]
pub struct EvidenceArchive {
    root: PathBuf,
    limits: EvidenceLimits,
}

/// The manifest stored last in every archive.
#[derive(Serialize)]
struct Manifest<'a> {
    decky: &'a str,
    archived_at: String,
    /// The uid the decky's files belonged to (the archive's entries are
    /// root's, so an extraction recreates nothing of the decky's).
    uid: Option<u32>,
    files: u64,
    bytes: u64,
    /// The archive stopped at its bound (entries, or bytes with names).
    incomplete: bool,
    /// Entries left out (unreadable, special files, past the size bound),
    /// the first 100.
    skipped: Vec<String>,
    skipped_count: u64,
}

const MANIFEST_NAME: &str = "decnet-evidence.json";

/// Whether `id` has the shape of an archive id (so it can name a file).
pub fn is_archive_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b"TZ-".contains(&b))
}

impl EvidenceArchive {
    /// The archive at `root` (created `0700`).
    pub fn open(root: PathBuf, limits: EvidenceLimits) -> Result<EvidenceArchive, String> {
        decnet_pki::secure_fs::ensure_private_dir(&root)
            .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        Ok(EvidenceArchive { root, limits })
    }

    /// Its bounds.
    pub fn limits(&self) -> EvidenceLimits {
        self.limits
    }

    /// Every archive, oldest first.
    pub fn list(&self) -> Vec<EvidenceEntry> {
        let mut all = Vec::new();
        let Ok(deckies) = std::fs::read_dir(&self.root) else {
            return all;
        };
        for d in deckies.flatten() {
            let Some(decky) = d.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if crate::config::validate_decky_name(&decky).is_err() {
                continue;
            }
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".tar.gz")) else {
                    continue;
                };
                if !is_archive_id(id) {
                    continue;
                }
                let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
                all.push(EvidenceEntry {
                    decky: decky.clone(),
                    id: id.to_string(),
                    bytes,
                });
            }
        }
        all.sort_by(|a, b| (&a.id, &a.decky).cmp(&(&b.id, &b.decky)));
        all
    }

    /// The file of archive `id` of `decky`, when it exists (`None` for
    /// names that could not be one).
    pub fn path_of(&self, decky: &str, id: &str) -> Option<PathBuf> {
        if crate::config::validate_decky_name(decky).is_err() || !is_archive_id(id) {
            return None;
        }
        let p = self.root.join(decky).join(format!("{id}.tar.gz"));
        p.is_file().then_some(p)
    }

    /// Pack the working directory `name` under `decky_root` (reading as
    /// `reader`, the decky's ids; `None`: as this process), remove it, and
    /// prune. Nothing there: nothing archived. Blocking.
    pub fn archive(
        &self,
        decky_root: &Path,
        name: &str,
        reader: Option<ExecIdentity>,
        now: time::OffsetDateTime,
    ) -> Result<Archived, EvidenceError> {
        let fail = |detail: String| EvidenceError {
            decky: name.to_string(),
            detail,
        };
        crate::config::validate_decky_name(name).map_err(fail)?;
        let Some(workdir) =
            take_workdir(decky_root, name, reader).map_err(|e| fail(e.to_string()))?
        else {
            return Ok(Archived::default());
        };
        let (file, out) = if self.limits.keep == 0 {
            (None, None)
        } else {
            let (file, part, entry) = self.new_file(name, now).map_err(|e| fail(e.to_string()))?;
            (Some(file), Some((part, entry)))
        };
        let id = out.as_ref().map(|(_, e)| e.id.clone()).unwrap_or_default();
        let cap = self.limits.max_bytes;
        let decky = name.to_string();
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        // A thread of its own: it reads as the decky, which must never
        // reach a thread that serves anything else.
        let worker = std::thread::spawn(move || -> Result<(bool, Option<String>), String> {
            if let Some(id) = reader {
                decnet_confine::exec::read_as_for_this_thread(id)
                    .map_err(|e| format!("cannot take the decky's ids: {e}"))?;
            }
            let mut empty = true;
            if let Some(file) = &file {
                empty =
                    pack(&workdir, &decky, &id, &stamp, file, cap).map_err(|e| e.to_string())? == 0;
            }
            let residue = decnet_confine::tree::remove_contents(&workdir)
                .err()
                .map(|e| e.to_string());
            Ok((empty, residue))
        });
        let outcome = worker
            .join()
            .map_err(|_| fail("the archiving thread panicked".into()))?;
        let (empty, residue) = match outcome {
            Ok(r) => r,
            Err(e) => {
                if let Some((part, _)) = &out {
                    let _ = std::fs::remove_file(part);
                }
                return Err(fail(e));
            }
        };
        let entry = match out {
            // Nothing in it: nothing to keep.
            Some((part, _)) if empty => {
                let _ = std::fs::remove_file(part);
                None
            }
            Some((part, entry)) => {
                let done = part.with_extension("");
                std::fs::rename(&part, &done).map_err(|e| fail(e.to_string()))?;
                let bytes = std::fs::metadata(&done).map(|m| m.len()).unwrap_or(0);
                Some(EvidenceEntry { bytes, ..entry })
            }
            None => None,
        };
        let residue = match residue {
            Some(r) => Some(r),
            None => remove_workdir(decky_root, name)
                .err()
                .map(|e| e.to_string()),
        };
        if let Some(e) = &entry {
            self.prune(e);
        }
        Ok(Archived { entry, residue })
    }

    /// A new archive file for `decky` (`<id>.tar.gz.part`, `0600`).
    fn new_file(
        &self,
        decky: &str,
        now: time::OffsetDateTime,
    ) -> io::Result<(std::fs::File, PathBuf, EvidenceEntry)> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.root.join(decky);
        decnet_pki::secure_fs::ensure_private_dir(&dir)?;
        let base = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        for n in 1..100 {
            let id = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            let done = dir.join(format!("{id}.tar.gz"));
            let part = dir.join(format!("{id}.tar.gz.part"));
            if done.exists() {
                continue;
            }
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&part)
            {
                Ok(f) => {
                    return Ok((
                        f,
                        part,
                        EvidenceEntry {
                            decky: decky.to_string(),
                            id,
                            bytes: 0,
                        },
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("too many archives in one second"))
    }

    /// Keep at most `keep` archives per decky and `max_bytes` in all,
    /// removing the oldest first; `newest` always stays.
    fn prune(&self, newest: &EvidenceEntry) {
        let all = self.list();
        let mut keep: Vec<&EvidenceEntry> = Vec::new();
        let mut per_decky: std::collections::HashMap<&str, usize> = Default::default();
        // Newest first: the first `keep` of each decky stay.
        for e in all.iter().rev() {
            let n = per_decky.entry(e.decky.as_str()).or_default();
            *n += 1;
            if *n <= self.limits.keep || e == newest {
                keep.push(e);
            } else {
                self.remove(e);
            }
        }
        let mut total: u64 = keep.iter().map(|e| e.bytes).sum();
        // Oldest first, past the byte bound.
        for e in keep.iter().rev() {
            if total <= self.limits.max_bytes {
                break;
            }
            if *e == newest {
                continue;
            }
            self.remove(e);
            total = total.saturating_sub(e.bytes);
        }
    }

    fn remove(&self, e: &EvidenceEntry) {
        let p = self.root.join(&e.decky).join(format!("{}.tar.gz", e.id));
        if std::fs::remove_file(&p).is_ok() {
            tracing::info!(decky = %e.decky, id = %e.id, "evidence archive pruned");
        }
    }
}

/// Open the working directory `name` of `decky_root` for a walk by
/// `reader`: taken back first (the agent may not open a decky's `0700`
/// directory without `CAP_DAC_OVERRIDE`), opened, then handed back so the
/// reader (the decky's ids) can search it. `None` when there is none.
fn take_workdir(
    decky_root: &Path,
    name: &str,
    reader: Option<ExecIdentity>,
) -> io::Result<Option<OwnedFd>> {
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let parent = rustix::fs::open(decky_root, flags, Mode::empty())?;
    match rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
            // Not the agent's making: gone, never followed.
            rustix::fs::unlinkat(&parent, name, AtFlags::empty())?;
            return Ok(None);
        }
        Ok(_) => {}
    }
    let dir = match reader {
        Some(id) => {
            let dir = decnet_confine::exec::prepare_workdir(decky_root, name, true)
                .map_err(|e| io::Error::other(e.to_string()))?;
            rustix::fs::fchown(
                &dir,
                Some(rustix::fs::Uid::from_raw(id.uid)),
                Some(rustix::fs::Gid::from_raw(id.gid)),
            )?;
            dir
        }
        None => rustix::fs::openat(&parent, name, flags, Mode::empty())?,
    };
    Ok(Some(dir))
}

/// Remove the (emptied) working directory `name` of `decky_root`.
fn remove_workdir(decky_root: &Path, name: &str) -> io::Result<()> {
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY;
    let parent = rustix::fs::open(decky_root, flags, Mode::empty())?;
    rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Write a gzipped tar of the tree under `root` (as `<decky>/…`, then the
/// manifest) to `out`, reading at most `cap` bytes of contents; returns how
/// many entries the tree held.
fn pack(
    root: &OwnedFd,
    decky: &str,
    id: &str,
    stamp: &str,
    out: &std::fs::File,
    cap: u64,
) -> io::Result<u64> {
    let gz = flate2::write::GzEncoder::new(io::BufWriter::new(out), flate2::Compression::fast());
    let mut body = tar::Builder::new(gz);
    body.mode(tar::HeaderMode::Complete);
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut skipped = Vec::new();
    let mut skipped_count = 0u64;
    let mut skip = |what: String, skipped: &mut Vec<String>| {
        skipped_count += 1;
        if skipped.len() < 100 {
            skipped.push(what);
        }
    };
    let mut failure = None;
    let mut entries = 0u64;
    let mut bound_reached = false;
    // `<decky>-<id>/…`: archives of one decky never share a top directory,
    // so extracting two into one place cannot let one's links redirect the
    // other's files.
    let base = PathBuf::from(format!("{decky}-{id}"));
    walk(root, |e| {
        entries += 1;
        // Names and link targets count too: a tree of long names or links
        // is as much data as file contents.
        if entries > MAX_ARCHIVE_ENTRIES || bytes > cap {
            bound_reached = true;
            return Flow::Stop;
        }
        let (dir, name, path, stat) = match e {
            Event::Entry {
                dir,
                name,
                path,
                stat,
            } => (dir, name, path, stat),
            Event::Hidden { path } => {
                skip(
                    format!("{} (cannot be read)", String::from_utf8_lossy(path)),
                    &mut skipped,
                );
                return Flow::Continue;
            }
            Event::Left { .. } => return Flow::Continue,
        };
        use std::os::unix::ffi::OsStrExt;
        let rel = base.join(std::ffi::OsStr::from_bytes(path));
        let shown = String::from_utf8_lossy(path).into_owned();
        bytes = bytes.saturating_add(512 + path.len() as u64);
        let mut header = tar::Header::new_gnu();
        // Harmless to whoever extracts it, root included: owned by the
        // extractor (uid 0 in the header, the decky's uid in the manifest),
        // no set-id or sticky bit, nothing writable by others.
        let kind = FileType::from_raw_mode(stat.st_mode);
        header.set_mode(match kind {
            FileType::Directory => 0o755,
            _ if stat.st_mode & 0o111 != 0 => 0o755,
            _ => 0o644,
        });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
        let r = match kind {
            FileType::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                body.append_data(&mut header, &rel, io::empty())
            }
            FileType::Symlink => match rustix::fs::readlinkat(dir, name, Vec::new()) {
                Ok(target) => {
                    bytes = bytes.saturating_add(target.to_bytes().len() as u64);
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    body.append_link(
                        &mut header,
                        &rel,
                        std::ffi::OsStr::from_bytes(target.to_bytes()),
                    )
                }
                Err(e) => {
                    skip(format!("{shown} ({e})"), &mut skipped);
                    Ok(())
                }
            },
            FileType::RegularFile => match open_regular(dir, name) {
                Ok((file, size)) if bytes.saturating_add(size) <= cap => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    files += 1;
                    bytes += size;
                    // Exactly `size` bytes, whatever the file does meanwhile.
                    let exact = std::fs::File::from(file)
                        .take(size)
                        .chain(io::repeat(0))
                        .take(size);
                    body.append_data(&mut header, &rel, exact)
                }
                Ok(_) => {
                    skip(
                        format!("{shown} (past the archive's size bound)"),
                        &mut skipped,
                    );
                    Ok(())
                }
                Err(e) => {
                    skip(format!("{shown} ({e})"), &mut skipped);
                    Ok(())
                }
            },
            _ => {
                skip(
                    format!("{shown} (not a file, directory or link)"),
                    &mut skipped,
                );
                Ok(())
            }
        };
        match r {
            Ok(()) => Flow::Continue,
            Err(e) => {
                failure = Some(e);
                Flow::Stop
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let manifest = serde_json::to_vec_pretty(&Manifest {
        decky,
        archived_at: stamp.to_string(),
        uid: (decnet_confine::raw::fs_uid() != 0).then(decnet_confine::raw::fs_uid),
        files,
        bytes,
        incomplete: bound_reached,
        skipped,
        skipped_count,
    })
    .map_err(io::Error::other)?;
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(manifest.len() as u64);
    header.set_entry_type(tar::EntryType::Regular);
    body.append_data(&mut header, MANIFEST_NAME, manifest.as_slice())?;
    let mut buffered = body.into_inner()?.finish()?;
    buffered.flush()?;
    drop(buffered);
    out.sync_all()?;
    Ok(entries)
}

/// Open a regular file for reading, never through a link and never
/// blocking on a FIFO swapped in; a file its owner (the reader) closed to
/// itself is opened up. Its size comes from the open file.
fn open_regular(dir: &OwnedFd, name: &std::ffi::CStr) -> io::Result<(OwnedFd, u64)> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let f = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Err(rustix::io::Errno::ACCESS) => {
            let pinned =
                decnet_confine::tree::grant_owner(dir, name, FileType::RegularFile, 0o400)?;
            decnet_confine::tree::reopen(
                &pinned,
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            )?
        }
        r => r?,
    };
    let st = rustix::fs::fstat(&f)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((f, u64::try_from(st.st_size).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries_of(path: &Path) -> Vec<(String, tar::EntryType, Vec<u8>)> {
        let f = std::fs::File::open(path).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let kind = e.header().entry_type();
                let mut data = Vec::new();
                if kind == tar::EntryType::Symlink {
                    data = e
                        .link_name()
                        .unwrap()
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes();
                } else {
                    e.read_to_end(&mut data).unwrap();
                }
                (name, kind, data)
            })
            .collect()
    }

    #[test]
    fn a_working_directory_is_packed_links_as_links_then_removed_and_pruned() {
        let state = tempfile::tempdir().unwrap();
        let deckies = state.path().join("deckies");
        std::fs::create_dir_all(deckies.join("trap/loot")).unwrap();
        std::fs::write(
            deckies.join("trap/loot/tool.sh"),
            b"#!/bin/sh\necho pwned\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/shadow", deckies.join("trap/shadow")).unwrap();
        let limits = EvidenceLimits {
            max_bytes: 1 << 20,
            keep: 2,
        };
        let archive = EvidenceArchive::open(state.path().join("evidence"), limits).unwrap();
        let t0 = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let done = archive.archive(&deckies, "trap", None, t0).unwrap();
        assert_eq!(done.residue, None);
        let entry = done.entry.unwrap();
        assert_eq!(entry.id, "20270115T080000Z");
        assert!(
            !deckies.join("trap").exists(),
            "the working directory stayed"
        );
        let path = archive.path_of("trap", &entry.id).unwrap();
        let got = entries_of(&path);
        // Nothing an extraction as root could turn against the operator.
        let f = std::fs::File::open(&path).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.mode().unwrap() & 0o7022, 0, "{:?}", e.path());
        }
        let last = got.last().unwrap();
        assert_eq!(last.0, MANIFEST_NAME);
        let manifest: serde_json::Value = serde_json::from_slice(&last.2).unwrap();
        assert_eq!(manifest["files"], 1);
        let top = format!("trap-{}", entry.id);
        assert!(got.contains(&(
            format!("{top}/loot/tool.sh"),
            tar::EntryType::Regular,
            b"#!/bin/sh\necho pwned\n".to_vec()
        )));
        assert!(got.contains(&(
            format!("{top}/shadow"),
            tar::EntryType::Symlink,
            b"/etc/shadow".to_vec()
        )));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // Nothing there, or an empty directory: nothing archived.
        let none = archive.archive(&deckies, "trap", None, t0).unwrap();
        assert!(none.entry.is_none());
        std::fs::create_dir_all(deckies.join("trap")).unwrap();
        let empty = archive.archive(&deckies, "trap", None, t0).unwrap();
        assert!(empty.entry.is_none() && empty.residue.is_none());
        assert!(!deckies.join("trap").exists());
        assert_eq!(archive.list().len(), 1);

        // Kept: two per decky, the oldest pruned first.
        for s in 1..=3 {
            std::fs::create_dir_all(deckies.join("trap")).unwrap();
            std::fs::write(deckies.join("trap/f"), b"x").unwrap();
            let t = t0 + time::Duration::seconds(s);
            archive.archive(&deckies, "trap", None, t).unwrap();
        }
        let ids: Vec<String> = archive.list().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["20270115T080002Z", "20270115T080003Z"]);
        assert!(archive.path_of("trap", "../x").is_none());
        assert!(archive.path_of("../x", "20270115T080003Z").is_none());
    }

    #[test]
    fn archive_ids_name_nothing_else() {
        assert!(is_archive_id("20261205T141530Z"));
        assert!(is_archive_id("20261205T141530Z-2"));
        for bad in ["", "..", "a/b", "x.tar.gz", "20261205T141530Z/.."] {
            assert!(!is_archive_id(bad), "{bad}");
        }
    }
}
