//! `ReleaseSlots`: the release tree under the install dir, its atomic
//! promotion (a symlink swap by rename), the order of kept releases, and the
//! journal that lets a crash at any point be resolved at the next start.
//!
//! ```text
//! <install>/current -> releases/<id>      the running release; the swap is the promotion
//! <install>/releases/<id>/                bin/decnet-agent, release.json, .decnet-release.json
//! <install>/releases/.staging-<id>/       extraction in progress (never promoted)
//! <install>/releases/.upload-<random>/    extracted while its upload streams in (private, unverified)
//! <install>/state.json                    {"active": id, "previous": [ids, newest first]}
//! <install>/journal.json                  present only while a promotion is unresolved
//! <install>/starts                        starts of the promoted release while it is (self-update)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the per-slot manifest.
pub const MANIFEST: &str = ".decnet-release.json";

/// Why the slot tree cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// File system failure.
    #[error("{what} {path}: {source}")]
    Io {
        /// Operation.
        what: &'static str,
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A state file does not parse.
    #[error("{0} is corrupt")]
    Corrupt(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SlotError + 'a {
    move |source| SlotError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// The manifest of one installed release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// Slot id (directory name).
    pub slot: String,
    /// The release label (commit id, version…).
    pub sha: String,
    /// SHA-256 of the tarball.
    pub sha256: String,
    /// When it was installed (unix seconds).
    pub installed_at: i64,
    /// The version its manifest declared (the label for releases without one).
    #[serde(default)]
    pub version: Option<String>,
}

impl ReleaseInfo {
    /// The version to compare against for downgrades.
    pub fn version(&self) -> &str {
        self.version.as_deref().unwrap_or(&self.sha)
    }
}

/// Which releases are kept, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// The active release.
    pub active: Option<String>,
    /// Previous releases, newest first.
    pub previous: Vec<String>,
}

/// What an unresolved promotion was doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalOp {
    /// Installing a new release.
    Update,
    /// Going back to the previous release.
    Rollback,
}

/// The on-disk journal of a promotion in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The operation.
    pub op: JournalOp,
    /// The release active before.
    pub from: Option<String>,
    /// The release being promoted.
    pub to: String,
    /// The state before the promotion (restored on revert).
    pub before: SlotState,
}

/// The release tree of one program (the agent, or the updater itself).
#[derive(Clone, Debug)]
pub struct ReleaseSlots {
    root: PathBuf,
    keep: usize,
}

impl ReleaseSlots {
    /// The tree at `root` keeping `keep` previous releases.
    pub fn open(root: &Path, keep: usize) -> Result<Self, SlotError> {
        std::fs::create_dir_all(root.join("releases")).map_err(io("cannot create", root))?;
        Ok(ReleaseSlots {
            root: root.to_path_buf(),
            keep,
        })
    }

    /// The install root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/current`.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// A slot's directory.
    pub fn slot_dir(&self, id: &str) -> PathBuf {
        self.root.join("releases").join(id)
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    fn journal_path(&self) -> PathBuf {
        self.root.join("journal.json")
    }

    /// The persisted order of releases.
    pub fn state(&self) -> Result<SlotState, SlotError> {
        read_json(&self.state_path()).map(Option::unwrap_or_default)
    }

    fn save_state(&self, s: &SlotState) -> Result<(), SlotError> {
        write_json(&self.state_path(), s)
    }

    /// The unresolved journal, if any.
    pub fn journal(&self) -> Result<Option<Journal>, SlotError> {
        read_json(&self.journal_path())
    }

    /// The slot `current` points at.
    pub fn current_target(&self) -> Option<String> {
        let t = std::fs::read_link(self.current_link()).ok()?;
        t.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// A release's manifest.
    pub fn info(&self, id: &str) -> Option<ReleaseInfo> {
        read_json(&self.slot_dir(id).join(MANIFEST)).ok().flatten()
    }

    /// Active first, then previous ones, newest first.
    pub fn releases(&self) -> Result<Vec<ReleaseInfo>, SlotError> {
        let st = self.state()?;
        Ok(st
            .active
            .iter()
            .chain(st.previous.iter())
            .filter_map(|id| self.info(id))
            .collect())
    }

    /// A new staging directory for a release labelled `sha`: `(slot id, dir)`.
    pub fn new_staging(&self, sha: &str) -> Result<(String, PathBuf), SlotError> {
        let releases = self.root.join("releases");
        // Leftovers of an interrupted extraction are garbage.
        for e in std::fs::read_dir(&releases)
            .map_err(io("cannot read", &releases))?
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(".staging-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let next = std::fs::read_dir(&releases)
            .map_err(io("cannot read", &releases))?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .split('-')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
            + 1;
        let label: String = sha
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_'))
            .take(40)
            .collect();
        let id = format!(
            "{next:06}-{}",
            if label.is_empty() { "release" } else { &label }
        );
        let dir = releases.join(format!(".staging-{id}"));
        std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
        Ok((id, dir))
    }

    /// Where an upload is extracted while it streams in
    /// (`releases/.upload-<random>`, not created here): on the slots' file
    /// system, so that it becomes a staging dir by one rename once verified.
    pub fn new_upload_dir(&self) -> PathBuf {
        self.root
            .join("releases")
            .join(format!(".upload-{}", decnet_pki::random_hex(8)))
    }

    /// Remove what an interrupted run left unfinished: staging dirs and
    /// uploads being extracted. Run at start, before any upload can be in
    /// flight; returns how many were removed.
    pub fn clear_interrupted(&self) -> usize {
        remove_leftovers(&self.root.join("releases"), |name| {
            name.starts_with(".staging-") || name.starts_with(".upload-")
        })
    }

    /// Turn a fully extracted and checked staging dir into slot `id`.
    pub fn finish_staging(
        &self,
        id: &str,
        staging: &Path,
        info: &ReleaseInfo,
    ) -> Result<(), SlotError> {
        write_json(&staging.join(MANIFEST), info)?;
        let dest = self.slot_dir(id);
        std::fs::rename(staging, &dest).map_err(io("cannot rename", staging))?;
        sync_dir(&self.root.join("releases"));
        Ok(())
    }

    /// Point `current` at `id` atomically (temp symlink + rename).
    fn point_current(&self, id: Option<&str>) -> Result<(), SlotError> {
        let link = self.current_link();
        match id {
            Some(id) => {
                let tmp = self
                    .root
                    .join(format!(".current-{}", decnet_pki::random_hex(4)));
                std::os::unix::fs::symlink(Path::new("releases").join(id), &tmp)
                    .map_err(io("cannot link", &tmp))?;
                std::fs::rename(&tmp, &link).map_err(io("cannot swap", &link))?;
            }
            None => match std::fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("cannot remove", &link)(e)),
            },
        }
        sync_dir(&self.root);
        Ok(())
    }

    /// Promote `to`: journal first, then the swap, then the new order.
    pub fn promote(&self, op: JournalOp, to: &str) -> Result<Journal, SlotError> {
        let before = self.state()?;
        let journal = Journal {
            op,
            from: before.active.clone(),
            to: to.to_string(),
            before: before.clone(),
        };
        write_json(&self.journal_path(), &journal)?;
        self.point_current(Some(to))?;
        let mut previous: Vec<String> = before.active.iter().cloned().collect();
        previous.extend(before.previous.iter().filter(|p| p.as_str() != to).cloned());
        self.save_state(&SlotState {
            active: Some(to.to_string()),
            previous,
        })?;
        Ok(journal)
    }

    fn starts_path(&self) -> PathBuf {
        self.root.join("starts")
    }

    /// Count one more start of the promoted release while the journal is
    /// unresolved (the updater's own slots: a new updater that never comes
    /// up is given up on after a few); returns the count so far.
    pub fn count_start(&self) -> Result<u32, SlotError> {
        let n = self.starts()? + 1;
        write_json(&self.starts_path(), &n)?;
        Ok(n)
    }

    /// Starts counted by [`count_start`](Self::count_start) since the promotion.
    pub fn starts(&self) -> Result<u32, SlotError> {
        Ok(read_json::<u32>(&self.starts_path())?.unwrap_or(0))
    }

    /// The promotion succeeded: drop the journal and collect old releases.
    pub fn commit(&self) -> Result<(), SlotError> {
        remove_if_exists(&self.journal_path())?;
        remove_if_exists(&self.starts_path())?;
        self.collect_garbage()
    }

    /// The promotion failed: restore the previous state and pointer. A failed
    /// update's slot is deleted; with no previous release, `current` is
    /// removed (never left dangling).
    pub fn revert(&self, journal: &Journal) -> Result<(), SlotError> {
        self.point_current(journal.from.as_deref())?;
        self.save_state(&journal.before)?;
        if journal.op == JournalOp::Update && journal.from.as_deref() != Some(journal.to.as_str()) {
            let dir = self.slot_dir(&journal.to);
            let _ = std::fs::remove_dir_all(&dir);
        }
        remove_if_exists(&self.starts_path())?;
        remove_if_exists(&self.journal_path())
    }

    /// Make `state.json` agree with `current` (after a crash between the two).
    pub fn reconcile(&self) -> Result<(), SlotError> {
        let mut st = self.state()?;
        let target = self.current_target();
        if st.active != target {
            if let Some(t) = &target {
                st.previous.retain(|p| p != t);
            }
            if let Some(a) = st.active.take()
                && Some(&a) != target.as_ref()
            {
                st.previous.insert(0, a);
            }
            st.active = target;
            self.save_state(&st)?;
        }
        Ok(())
    }

    /// Delete releases beyond the newest `keep` previous ones, and slots no
    /// state refers to.
    pub fn collect_garbage(&self) -> Result<(), SlotError> {
        let mut st = self.state()?;
        let dropped: Vec<String> = st.previous.split_off(st.previous.len().min(self.keep));
        self.save_state(&st)?;
        for d in dropped {
            let _ = std::fs::remove_dir_all(self.slot_dir(&d));
        }
        let releases = self.root.join("releases");
        for e in std::fs::read_dir(&releases)
            .map_err(io("cannot read", &releases))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.')
                && st.active.as_deref() != Some(&name)
                && !st.previous.contains(&name)
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}

/// Remove the entries of `dir` (files, or directories with what they hold)
/// whose name `is_leftover` says an interrupted run left behind; returns how
/// many went. A missing `dir` has none.
pub fn remove_leftovers(dir: &Path, is_leftover: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| is_leftover(&e.file_name().to_string_lossy()))
        .filter(|e| {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(path).is_ok()
            } else {
                std::fs::remove_file(path).is_ok()
            }
        })
        .count()
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<Option<T>, SlotError> {
    match std::fs::read(p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|_| SlotError::Corrupt(p.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", p)(e)),
    }
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<(), SlotError> {
    let bytes =
        serde_json::to_vec_pretty(v).map_err(|_| SlotError::Corrupt(p.display().to_string()))?;
    decnet_pki::secure_fs::write_atomic(p, &bytes, 0o644).map_err(io("cannot write", p))
}

fn remove_if_exists(p: &Path) -> Result<(), SlotError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("cannot remove", p)(e)),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(slots: &ReleaseSlots, sha: &str) -> String {
        let (id, dir) = slots.new_staging(sha).unwrap();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        slots
            .finish_staging(
                &id,
                &dir,
                &ReleaseInfo {
                    slot: id.clone(),
                    sha: sha.into(),
                    sha256: "00".into(),
                    installed_at: 0,
                    version: None,
                },
            )
            .unwrap();
        id
    }

    #[test]
    fn promote_commit_keeps_n_and_rollback_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = ReleaseSlots::open(dir.path(), 2).unwrap();
        let mut ids = Vec::new();
        for sha in ["a", "b", "c", "d"] {
            let id = install(&s, sha);
            s.promote(JournalOp::Update, &id).unwrap();
            s.commit().unwrap();
            ids.push(id);
        }
        let rel: Vec<String> = s.releases().unwrap().into_iter().map(|r| r.sha).collect();
        assert_eq!(rel, vec!["d", "c", "b"], "active first, then 2 previous");
        assert!(!s.slot_dir(&ids[0]).exists(), "oldest collected");
        assert_eq!(s.current_target().as_deref(), Some(ids[3].as_str()));
        assert!(s.journal().unwrap().is_none());
    }

    #[test]
    fn revert_restores_and_first_install_leaves_no_current() {
        let dir = tempfile::tempdir().unwrap();
        let s = ReleaseSlots::open(dir.path(), 2).unwrap();
        let first = install(&s, "first");
        let j = s.promote(JournalOp::Update, &first).unwrap();
        s.revert(&j).unwrap();
        assert!(
            std::fs::symlink_metadata(s.current_link()).is_err(),
            "no dangling current"
        );
        assert_eq!(s.state().unwrap(), SlotState::default());
        assert!(!s.slot_dir(&first).exists());

        let good = install(&s, "good");
        s.promote(JournalOp::Update, &good).unwrap();
        s.commit().unwrap();
        let bad = install(&s, "bad");
        let j = s.promote(JournalOp::Update, &bad).unwrap();
        assert!(s.journal().unwrap().is_some());
        s.revert(&j).unwrap();
        assert_eq!(s.current_target().as_deref(), Some(good.as_str()));
        assert_eq!(s.state().unwrap().active.as_deref(), Some(good.as_str()));
        assert!(s.journal().unwrap().is_none());
    }

    #[test]
    fn reconcile_after_crash_between_swap_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let s = ReleaseSlots::open(dir.path(), 2).unwrap();
        let a = install(&s, "a");
        s.promote(JournalOp::Update, &a).unwrap();
        s.commit().unwrap();
        let b = install(&s, "b");
        // Simulate: symlink swapped, state not yet written.
        s.point_current(Some(&b)).unwrap();
        s.reconcile().unwrap();
        let st = s.state().unwrap();
        assert_eq!(st.active.as_deref(), Some(b.as_str()));
        assert_eq!(st.previous, vec![a]);
    }
}
