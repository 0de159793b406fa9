//! `decnet-updater launch`: the stable first step of every updater start,
//! which picks the updater binary to run.
//!
//! Why: a self-update installs a new updater into the updater's own slots
//! and re-executes it. A new updater that passes `--version` but dies at
//! every start would leave the worker without an updater, so without any
//! way back. The launcher is the packaged binary (never replaced by a
//! self-update); while a self-update is unresolved (its journal is on disk)
//! it counts the starts of the new updater and, after
//! [`MAX_FAILED_STARTS`], runs the previous one instead — which finds the
//! journal, sees that it is not the new updater, and reverts the promotion
//! (`UpdaterCore::recover`). The new updater resolves the journal the other
//! way once it has answered `/health`.

use std::path::{Path, PathBuf};

use crate::slots::{ReleaseSlots, SlotError};

/// Starts a new updater gets before the previous one is run instead.
pub const MAX_FAILED_STARTS: u32 = 3;

/// The updater binary inside a slot.
pub const UPDATER_BIN: &str = "bin/decnet-updater";

/// What the launcher runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaunchChoice {
    /// The installed updater (`<install>/updater/current`), or the launcher
    /// itself when none is installed; `attempt` counts the starts of an
    /// unconfirmed self-update (0: none in flight).
    Run {
        /// The binary.
        bin: PathBuf,
        /// Start of an unconfirmed new updater (1, 2, …), or 0.
        attempt: u32,
    },
    /// The new updater failed `starts - 1` starts: run the previous one
    /// (which reverts the self-update).
    Fallback {
        /// The previous updater (its slot, or the launcher itself).
        bin: PathBuf,
        /// Starts counted so far, this one included.
        starts: u32,
    },
}

impl LaunchChoice {
    /// The binary to execute.
    pub fn bin(&self) -> &Path {
        match self {
            LaunchChoice::Run { bin, .. } | LaunchChoice::Fallback { bin, .. } => bin,
        }
    }
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Pick the updater to run from the updater's own slots; `launcher` is the
/// packaged binary (run when nothing else is installed, or as the fallback
/// when the previous slot is gone). Counts this start when a self-update is
/// unresolved.
pub fn choose(
    self_slots: &ReleaseSlots,
    launcher: &Path,
    max_failed_starts: u32,
) -> Result<LaunchChoice, SlotError> {
    let installed = self_slots.current_link().join(UPDATER_BIN);
    let Some(journal) = self_slots.journal()? else {
        let bin = if executable(&installed) {
            installed
        } else {
            launcher.to_path_buf()
        };
        return Ok(LaunchChoice::Run { bin, attempt: 0 });
    };
    let starts = self_slots.count_start()?;
    if starts <= max_failed_starts && executable(&installed) {
        return Ok(LaunchChoice::Run {
            bin: installed,
            attempt: starts,
        });
    }
    let bin = journal
        .from
        .map(|from| self_slots.slot_dir(&from).join(UPDATER_BIN))
        .filter(|b| executable(b))
        .unwrap_or_else(|| launcher.to_path_buf());
    Ok(LaunchChoice::Fallback { bin, starts })
}

/// Whether this process runs the updater of `slot` (a directory of the
/// updater's slots): how a started updater tells the new release from a
/// fallback while a self-update is unresolved.
pub fn running_from(slot: &Path) -> bool {
    let (Ok(exe), Ok(slot)) = (std::env::current_exe(), slot.canonicalize()) else {
        return false;
    };
    exe.canonicalize().unwrap_or(exe).starts_with(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::JournalOp;

    fn install(slots: &ReleaseSlots, id: &str) {
        use std::os::unix::fs::PermissionsExt;
        let bin = slots.slot_dir(id).join(UPDATER_BIN);
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn no_self_update_runs_the_installed_updater_or_the_launcher() {
        let dir = tempfile::tempdir().unwrap();
        let slots = ReleaseSlots::open(dir.path(), 2).unwrap();
        let launcher = Path::new("/usr/bin/decnet-updater");
        assert_eq!(
            choose(&slots, launcher, 3).unwrap(),
            LaunchChoice::Run {
                bin: launcher.into(),
                attempt: 0
            }
        );
        install(&slots, "a");
        slots.promote(JournalOp::Update, "a").unwrap();
        slots.commit().unwrap();
        assert_eq!(
            choose(&slots, launcher, 3).unwrap(),
            LaunchChoice::Run {
                bin: slots.current_link().join(UPDATER_BIN),
                attempt: 0
            }
        );
        assert_eq!(slots.starts().unwrap(), 0, "nothing counted");
    }

    #[test]
    fn a_new_updater_that_keeps_failing_gives_way_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let slots = ReleaseSlots::open(dir.path(), 2).unwrap();
        let launcher = Path::new("/usr/bin/decnet-updater");
        install(&slots, "old");
        slots.promote(JournalOp::Update, "old").unwrap();
        slots.commit().unwrap();
        install(&slots, "new");
        slots.promote(JournalOp::Update, "new").unwrap();
        for attempt in 1..=3 {
            assert_eq!(
                choose(&slots, launcher, 3).unwrap(),
                LaunchChoice::Run {
                    bin: slots.current_link().join(UPDATER_BIN),
                    attempt
                }
            );
        }
        assert_eq!(
            choose(&slots, launcher, 3).unwrap(),
            LaunchChoice::Fallback {
                bin: slots.slot_dir("old").join(UPDATER_BIN),
                starts: 4
            }
        );
        // The fallback reverts; the count goes with the journal.
        let j = slots.journal().unwrap().unwrap();
        slots.revert(&j).unwrap();
        assert_eq!(slots.starts().unwrap(), 0);
        assert_eq!(slots.current_target().as_deref(), Some("old"));
    }

    #[test]
    fn the_first_self_update_falls_back_to_the_launcher_itself() {
        let dir = tempfile::tempdir().unwrap();
        let slots = ReleaseSlots::open(dir.path(), 2).unwrap();
        let launcher = Path::new("/usr/bin/decnet-updater");
        install(&slots, "new");
        slots.promote(JournalOp::Update, "new").unwrap();
        for _ in 0..2 {
            choose(&slots, launcher, 2).unwrap();
        }
        assert_eq!(
            choose(&slots, launcher, 2).unwrap(),
            LaunchChoice::Fallback {
                bin: launcher.into(),
                starts: 3
            }
        );
        // A confirmed self-update forgets its starts.
        slots.commit().unwrap();
        assert_eq!(slots.starts().unwrap(), 0);
    }
}
