//! Scratch space of its own for a decky: in the mount namespace it holds
//! (made with its user namespace, see [`crate::netns::isolate`]), `/tmp`,
//! `/var/tmp` and `/dev/shm` are fresh tmpfs mounts owned by the decky,
//! mode 0700 and bounded in size.
//!
//! Without them every decky of a host shares one `/tmp`: one could plant
//! files for another, read what another left there, or keep files under
//! its uid after its teardown (which is why its uid could never be
//! reused). The mounts exist only in the decky's namespace: the host and
//! the other deckies never see them, and they vanish with its last
//! process.

use std::io;

/// The directories that become the decky's own.
pub const PRIVATE_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

/// The tmpfs mount options for a decky of `uid`/`gid` with `bytes` of
/// scratch per directory. Pure: unit-tested.
pub fn tmpfs_options(uid: u32, gid: u32, bytes: u64) -> String {
    // At least one page; inodes bounded too (one per 4 KiB, at least 1 024)
    // so a decky cannot exhaust them with empty files.
    let bytes = bytes.max(4096);
    let inodes = (bytes / 4096).max(1024);
    format!("size={bytes},nr_inodes={inodes},mode=0700,uid={uid},gid={gid}")
}

/// In the current (new, owned) mount namespace: stop mount events from
/// spreading either way, then mount a tmpfs on each of [`PRIVATE_DIRS`]
/// that exists. Must run while the process still holds its capabilities
/// in its user namespace (before it executes its program).
pub fn mount_private(uid: u32, gid: u32, bytes: u64) -> io::Result<()> {
    use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_change};
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )?;
    let options =
        std::ffi::CString::new(tmpfs_options(uid, gid, bytes)).map_err(io::Error::other)?;
    for dir in PRIVATE_DIRS {
        if !std::path::Path::new(dir).is_dir() {
            continue;
        }
        mount(
            "decnet-decky",
            dir,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            options.as_c_str(),
        )
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("mount {dir}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_bound_size_and_inodes_and_give_the_decky_its_dirs() {
        assert_eq!(
            tmpfs_options(20001, 20001, 64 << 20),
            "size=67108864,nr_inodes=16384,mode=0700,uid=20001,gid=20001"
        );
        assert_eq!(
            tmpfs_options(7, 8, 0),
            "size=4096,nr_inodes=1024,mode=0700,uid=7,gid=8"
        );
    }
}
