//! The release floor: what an updater with a release keyring will never go
//! below, whatever the master says.
//!
//! The floor is the highest semver version and the latest signing time
//! ever installed in a slot tree (and the version of the packaged binary),
//! persisted beside the slots (`floor.json`) so a restart or a rollback
//! does not lower it. A release with a version is compared by semver; one
//! without (a commit-hash label) by when it was signed; either way nothing
//! incomparable passes. Going below the floor needs a **signed** permit in
//! the manifest — a compromised master cannot forge one. A manifest signed
//! in the future is refused. Pure checks, one small file.

use std::path::{Path, PathBuf};

use decnet_pki::signing::{ReleaseManifest, release_version};
use serde::{Deserialize, Serialize};

/// How far in the future a signing time may be (clock skew).
pub const MAX_FUTURE_SKEW_SECS: i64 = 300;

/// The floor of one slot tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseFloor {
    /// The highest semver version installed (or packaged).
    pub version: Option<String>,
    /// The latest signing time installed.
    pub signed_at: Option<i64>,
}

/// The floor file in a slot tree.
pub fn floor_path(root: &Path) -> PathBuf {
    root.join("floor.json")
}

impl ReleaseFloor {
    /// The floor stored in `root` (none yet: empty), raised to the
    /// `packaged` version (the binaries the package installed).
    pub fn load(root: &Path, packaged: &str) -> Self {
        let mut f: ReleaseFloor = std::fs::read(floor_path(root))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        f.raise_version(packaged);
        f
    }

    /// Store it (atomically, like every file the updater keeps).
    pub fn save(&self, root: &Path) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        decnet_pki::secure_fs::write_atomic(
            &floor_path(root),
            &body,
            decnet_pki::secure_fs::PUBLIC_MODE,
        )
    }

    fn raise_version(&mut self, v: &str) {
        let Ok(new) = release_version(v) else {
            return;
        };
        let higher = match self.version.as_deref().map(release_version) {
            Some(Ok(cur)) => new > cur,
            _ => true,
        };
        if higher {
            self.version = Some(new.to_string());
        }
    }

    /// Whether the verified `m` may be installed at `now` (unix seconds):
    /// `Err` says why not.
    pub fn check(&self, m: &ReleaseManifest, now: i64) -> Result<(), String> {
        if m.signed_at > now + MAX_FUTURE_SKEW_SECS {
            return Err(format!(
                "the release was signed {}s in the future; check the signer's clock",
                m.signed_at - now
            ));
        }
        if m.version.trim().is_empty() {
            if let Some(floor) = self.signed_at
                && m.signed_at < floor
                && !m.permit_downgrade
            {
                return Err("this release was signed before the newest one installed here (it has no version, so it is ordered by its signing time); a downgrade needs a signed permit (decnet release pack --permit-downgrade)".to_string());
            }
            return Ok(());
        }
        let v = release_version(&m.version)?;
        if let Some(floor) = self
            .version
            .as_deref()
            .map(release_version)
            .and_then(Result::ok)
            && v < floor
            && !m.permit_downgrade
        {
            return Err(format!(
                "version {v} is below this updater's floor {floor} (the highest installed or packaged); a downgrade needs a signed permit (decnet release pack --permit-downgrade)"
            ));
        }
        Ok(())
    }

    /// Raise the floor to `m`, once it is installed (a permitted downgrade
    /// lowers nothing: the floor only rises).
    pub fn raise(&mut self, m: &ReleaseManifest) {
        self.raise_version(&m.version);
        if self.signed_at.is_none_or(|s| m.signed_at > s) {
            self.signed_at = Some(m.signed_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use decnet_pki::signing::ReleaseTarget;

    fn m(version: &str, signed_at: i64) -> ReleaseManifest {
        ReleaseManifest {
            target: ReleaseTarget::Agent,
            label: "x".into(),
            version: version.into(),
            sha256: "0".repeat(64),
            signed_at,
            permit_downgrade: false,
        }
    }

    #[test]
    fn versions_below_the_floor_need_a_signed_permit() {
        let mut f = ReleaseFloor::default();
        f.raise_version("0.1.0");
        assert!(f.check(&m("1.2.3", 10), 100).is_ok());
        f.raise(&m("1.2.3", 10));
        assert!(
            f.check(&m("1.2.3-rc1", 20), 100).is_err(),
            "pre-release sorts first"
        );
        assert!(f.check(&m("1.2.2", 20), 100).is_err());
        let mut permit = m("1.2.2", 20);
        permit.permit_downgrade = true;
        assert!(f.check(&permit, 100).is_ok());
        // A permitted downgrade does not lower the floor.
        f.raise(&permit);
        assert_eq!(f.version.as_deref(), Some("1.2.3"));
        assert!(f.check(&m("1.3.0", 30), 100).is_ok());
        // Not semver: refused, never passed as incomparable.
        assert!(f.check(&m("banana", 30), 100).is_err());
    }

    #[test]
    fn releases_without_a_version_are_ordered_by_signing_time() {
        let mut f = ReleaseFloor::default();
        f.raise(&m("", 1000));
        assert!(
            f.check(&m("", 1000), 2000).is_ok(),
            "the same release again"
        );
        assert!(f.check(&m("", 1500), 2000).is_ok());
        assert!(f.check(&m("", 900), 2000).is_err());
        assert!(
            f.check(&m("", 2000 + MAX_FUTURE_SKEW_SECS + 1), 2000)
                .is_err()
        );
    }

    #[test]
    fn the_floor_survives_a_restart_and_the_package_raises_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = ReleaseFloor::load(dir.path(), "0.1.0");
        assert_eq!(f.version.as_deref(), Some("0.1.0"));
        f.raise(&m("2.0.0", 50));
        f.save(dir.path()).unwrap();
        let back = ReleaseFloor::load(dir.path(), "0.1.0");
        assert_eq!(back, f);
        let newer_package = ReleaseFloor::load(dir.path(), "3.0.0");
        assert_eq!(newer_package.version.as_deref(), Some("3.0.0"));
    }
}
