//! The uid each process decky owns, kept in `<state-dir>/decky-ids.json`.
//!
//! A name keeps its uid while it is deployed (a redeploy and an agent
//! restart find the same one), so the files in its working directory stay
//! its own. Its teardown archives and removes those files, and only then
//! frees the uid ([`DeckyIds::release`]): no decky ever inherits another's
//! files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use decnet_confine::IdRange;

/// Uids of process deckies by name, persisted.
#[derive(Debug)]
pub struct DeckyIds {
    path: PathBuf,
    range: IdRange,
    by_name: BTreeMap<String, u32>,
}

impl DeckyIds {
    /// Load the book at `path` (missing: empty) for ids from `range`.
    pub fn open(path: PathBuf, range: IdRange) -> Result<DeckyIds, String> {
        let by_name = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} is corrupt ({e}); move it aside (deckies then get new uids)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(DeckyIds {
            path,
            range,
            by_name,
        })
    }

    /// The uid recorded for `name`, if any.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// The uid of `name`: its recorded one while that is still in the range
    /// and not `unusable` for a reason other than this decky's own
    /// processes (`listed` says whether an account holds it), else a new
    /// one that no other decky holds and `unusable` does not refuse.
    pub fn get_or_allocate(
        &mut self,
        name: &str,
        listed: impl Fn(u32) -> bool,
        unusable: impl Fn(u32) -> bool,
    ) -> Result<u32, String> {
        if let Some(uid) = self.get(name)
            && self.range.contains(uid)
            && !listed(uid)
        {
            return Ok(uid);
        }
        let taken: std::collections::BTreeSet<u32> = self
            .by_name
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(_, u)| *u)
            .collect();
        let uid = self
            .range
            .allocate(name, |id| taken.contains(&id) || listed(id) || unusable(id))
            .ok_or_else(|| {
                format!(
                    "no free uid left in the decky range {} (widen --decky-ids)",
                    self.range
                )
            })?;
        self.by_name.insert(name.to_string(), uid);
        self.save()?;
        Ok(uid)
    }

    /// Free the uid of `name` (its teardown removed every file and process
    /// of it): a later decky may be given it.
    pub fn release(&mut self, name: &str) -> Result<Option<u32>, String> {
        let freed = self.by_name.remove(name);
        if freed.is_some() {
            self.save()?;
        }
        Ok(freed)
    }

    fn save(&self) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(&self.by_name).map_err(|e| e.to_string())?;
        decnet_pki::secure_fs::write_atomic(&self.path, &bytes, 0o600)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_uid_and_never_share_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decky-ids.json");
        let range: IdRange = "7000-7001".parse().unwrap();
        let mut ids = DeckyIds::open(path.clone(), range).unwrap();
        let a = ids.get_or_allocate("a", |_| false, |_| false).unwrap();
        let b = ids.get_or_allocate("b", |_| false, |_| false).unwrap();
        assert_ne!(a, b);
        assert!(range.contains(a) && range.contains(b));
        let e = ids.get_or_allocate("c", |_| false, |_| false).unwrap_err();
        assert!(e.contains("no free uid"), "{e}");

        // Reloaded: same ids; a decky's own running processes do not move it.
        let mut again = DeckyIds::open(path.clone(), range).unwrap();
        assert_eq!(again.get_or_allocate("a", |_| false, |_| true), Ok(a));
        // An account that appeared on that id since does move it.
        let mut again = DeckyIds::open(path, "7000-7005".parse().unwrap()).unwrap();
        let moved = again.get_or_allocate("a", |id| id == a, |_| false).unwrap();
        assert_ne!(moved, a);
        assert_ne!(moved, b);
        // Released, persisted: the name holds no uid any more.
        assert_eq!(again.release("b"), Ok(Some(b)));
        assert_eq!(again.release("b"), Ok(None));
        let reloaded = DeckyIds::open(dir.path().join("decky-ids.json"), range).unwrap();
        assert_eq!(reloaded.get("b"), None);
    }

    #[test]
    fn a_corrupt_book_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decky-ids.json");
        std::fs::write(&path, b"{nope").unwrap();
        let e = DeckyIds::open(path, "7000-7001".parse().unwrap()).unwrap_err();
        assert!(e.contains("decky-ids.json is corrupt"), "{e}");
    }
}
