//! A walk over a decky's working directory by descriptors: every entry is
//! reached with `openat`/`statat` from the open directory above it, never
//! by a path resolved again, and no link is ever followed. It runs under
//! the decky's own ids (a thread reading as the decky, see
//! [`crate::exec::read_as_for_this_thread`]), so it can read and change
//! nothing the decky could not; a directory the decky closed to itself is
//! opened up first, so it cannot hide what it stores.
//!
//! One walker for every reader of a decky's files: the shepherd's disk
//! watch (sizes), the evidence archive (contents), and the removal after a
//! teardown (post-order).

use std::ffi::CStr;
use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, openat, statat};

/// How deep a working directory may nest (the walk holds one descriptor a
/// level; deeper is a pathological tree, reported as [`Event::Hidden`]).
pub const MAX_DEPTH: usize = 64;

/// What the walk meets.
pub enum Event<'a> {
    /// An entry (pre-order: a directory before its contents). `path` is
    /// relative to the root, `/`-separated, as bytes.
    Entry {
        /// The open directory holding it.
        dir: &'a OwnedFd,
        /// Its name there.
        name: &'a CStr,
        /// Its path from the root.
        path: &'a [u8],
        /// Its status (of the entry itself, links not followed).
        stat: &'a Stat,
    },
    /// A directory whose contents were all visited (post-order), with the
    /// open directory holding it.
    Left {
        /// The open directory holding it.
        dir: &'a OwnedFd,
        /// Its name there.
        name: &'a CStr,
    },
    /// Something the walk could not see into (unreadable, or nested past
    /// [`MAX_DEPTH`]): whatever it holds was not visited.
    Hidden {
        /// Its path from the root.
        path: &'a [u8],
    },
}

/// Whether the walk goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Stop here (the walk returns at once).
    Stop,
}

/// Walk the tree under the open directory `root` (the root itself is not
/// an entry), calling `on` for each [`Event`]. Errors are only those of
/// reading `root` itself; below it, what cannot be read is an
/// [`Event::Hidden`].
pub fn walk(root: &OwnedFd, mut on: impl FnMut(Event<'_>) -> Flow) -> io::Result<()> {
    open_up(root);
    let mut path = Vec::new();
    visit(root, 0, &mut path, &mut on)?;
    Ok(())
}

/// Give the owner back read, write and search on a directory of the
/// walker's user that took them away.
fn open_up(dir: &OwnedFd) {
    let me = crate::raw::fs_uid();
    if let Ok(st) = rustix::fs::fstat(dir)
        && st.st_uid == me
        && st.st_mode & 0o700 != 0o700
    {
        let _ = rustix::fs::fchmod(dir, Mode::from_raw_mode((st.st_mode | 0o700) & 0o7777));
    }
}

/// Open the directory `name` in `at`, never through a link, opening it up
/// first when its owner (the walker's user) closed it.
pub fn open_dir(at: &OwnedFd, name: &CStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = match openat(at, name, flags, Mode::empty()) {
        Err(rustix::io::Errno::ACCESS) => {
            let pinned = grant_owner(at, name, FileType::Directory, 0o700)?;
            reopen(
                &pinned,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            )?
        }
        r => r?,
    };
    open_up(&dir);
    Ok(dir)
}

/// Give the owner `bits` on the entry `name` of `at` when it is of `kind`
/// and owned by the walker's (filesystem) user, never through a link: the
/// entry is pinned with `O_PATH | O_NOFOLLOW` and changed through its
/// `/proc/thread-self/fd` link, so a decky swapping it for a link between
/// the check and the change changes nothing of anyone else's. Returns the
/// pinned entry (see [`reopen`]).
pub fn grant_owner(
    at: &OwnedFd,
    name: &CStr,
    kind: FileType,
    bits: u32,
) -> rustix::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let pinned = openat(
        at,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&pinned)?;
    if FileType::from_raw_mode(st.st_mode) != kind || st.st_uid != crate::raw::fs_uid() {
        return Err(rustix::io::Errno::ACCESS);
    }
    rustix::fs::chmod(
        format!("/proc/thread-self/fd/{}", pinned.as_raw_fd()),
        Mode::from_raw_mode((st.st_mode | bits) & 0o7777),
    )?;
    Ok(pinned)
}

/// Open the entry `pinned` (an `O_PATH` descriptor) with `flags`, through
/// its `/proc/thread-self/fd` link: the very inode, whatever its name is now.
pub fn reopen(pinned: &OwnedFd, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    rustix::fs::open(
        format!("/proc/thread-self/fd/{}", pinned.as_raw_fd()),
        flags,
        Mode::empty(),
    )
}

fn joined(path: &mut Vec<u8>, name: &[u8]) -> usize {
    let before = path.len();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    before
}

fn visit(
    dir: &OwnedFd,
    depth: usize,
    path: &mut Vec<u8>,
    on: &mut impl FnMut(Event<'_>) -> Flow,
) -> io::Result<Flow> {
    let mut listing = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = listing.read() {
        let Ok(entry) = entry else {
            return Ok(on(Event::Hidden { path }));
        };
        let n = entry.file_name();
        if n.to_bytes() == b"." || n.to_bytes() == b".." {
            continue;
        }
        let before = joined(path, n.to_bytes());
        let flow = (|| -> io::Result<Flow> {
            let st = match statat(dir, n, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => return Ok(Flow::Continue), // gone since listed
                Err(_) => return Ok(on(Event::Hidden { path })),
            };
            if on(Event::Entry {
                dir,
                name: n,
                path,
                stat: &st,
            }) == Flow::Stop
            {
                return Ok(Flow::Stop);
            }
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return Ok(Flow::Continue);
            }
            if depth + 1 >= MAX_DEPTH {
                return Ok(on(Event::Hidden { path }));
            }
            match open_dir(dir, n) {
                Ok(sub) => {
                    if visit(&sub, depth + 1, path, on)? == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                    drop(sub);
                    Ok(on(Event::Left { dir, name: n }))
                }
                Err(rustix::io::Errno::NOENT) => Ok(Flow::Continue),
                Err(_) => Ok(on(Event::Hidden { path })),
            }
        })()?;
        path.truncate(before);
        if flow == Flow::Stop {
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Continue)
}

/// Remove everything under the open directory `root` (not `root` itself),
/// as the walker's user; `Err` names what stayed.
pub fn remove_contents(root: &OwnedFd) -> io::Result<()> {
    let mut left = None;
    walk(root, |e| {
        match e {
            Event::Entry {
                dir, name, stat, ..
            } if FileType::from_raw_mode(stat.st_mode) != FileType::Directory => {
                if let Err(err) = rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                    left.get_or_insert_with(|| format!("{}: {err}", name.to_string_lossy()));
                }
            }
            Event::Left { dir, name } => {
                if let Err(err) = rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
                    left.get_or_insert_with(|| format!("{}: {err}", name.to_string_lossy()));
                }
            }
            Event::Hidden { path } => {
                left.get_or_insert_with(|| {
                    format!("{}: cannot be read", String::from_utf8_lossy(path))
                });
            }
            Event::Entry { .. } => {}
        }
        Flow::Continue
    })?;
    match left {
        None => Ok(()),
        Some(what) => Err(io::Error::other(format!("could not remove {what}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn open(p: &std::path::Path) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(p).unwrap())
    }

    #[test]
    fn the_walk_sees_every_entry_once_never_follows_links_and_removes_all() {
        let top = tempfile::tempdir().unwrap();
        let d = top.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        std::fs::write(d.join("a/b/f"), b"x").unwrap();
        std::fs::write(d.join("g"), b"y").unwrap();
        std::os::unix::fs::symlink("/etc", d.join("etc")).unwrap();
        std::fs::set_permissions(d.join("a"), std::fs::Permissions::from_mode(0o000)).unwrap();
        let root = open(d);
        let mut seen = Vec::new();
        let mut left = 0;
        walk(&root, |e| {
            match e {
                Event::Entry { path, .. } => seen.push(String::from_utf8_lossy(path).into_owned()),
                Event::Left { .. } => left += 1,
                Event::Hidden { path } => panic!("hidden {}", String::from_utf8_lossy(path)),
            }
            Flow::Continue
        })
        .unwrap();
        seen.sort();
        assert_eq!(seen, ["a", "a/b", "a/b/f", "etc", "g"]);
        assert_eq!(left, 2);

        remove_contents(&root).unwrap();
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
        assert!(std::path::Path::new("/etc").is_dir(), "a link was followed");
    }

    #[test]
    fn a_tree_past_the_depth_bound_is_hidden_and_stop_stops() {
        let top = tempfile::tempdir().unwrap();
        let mut deep = top.path().to_path_buf();
        for _ in 0..(MAX_DEPTH + 2) {
            deep.push("x");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let root = open(top.path());
        let mut hidden = 0;
        walk(&root, |e| {
            if let Event::Hidden { .. } = e {
                hidden += 1;
            }
            Flow::Continue
        })
        .unwrap();
        assert_eq!(hidden, 1);
        let mut entries = 0;
        walk(&root, |e| {
            if let Event::Entry { .. } = e {
                entries += 1;
            }
            if entries == 3 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
        .unwrap();
        assert_eq!(entries, 3);
    }
}
