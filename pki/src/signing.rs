//! Ed25519 release signatures over a **manifest** that says what is signed:
//! which daemon the release is for (agent or updater), its label and
//! version, the tarball's SHA-256 and when it was signed. A signature over a
//! bare digest would let a signed agent release be pushed as an updater, or
//! an old signed release replayed as a downgrade; the manifest binds all of
//! it. An updater trusts a [`ReleaseKeyring`] of one or more public keys
//! (several during a key rotation) and refuses a release whose manifest is
//! missing, unsigned, not signed by one of them, or does not match.
//!
//! Files: the private key is PKCS#8 (written 0600), the public key is 64 hex
//! characters, a signature is 128 hex characters over the manifest's exact
//! JSON bytes.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Why a key or signature cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// Key generation failed.
    #[error("cannot generate a signing key")]
    Generate,
    /// The private key file is not a PKCS#8 Ed25519 key.
    #[error("{0} is not an Ed25519 private key (PKCS#8)")]
    BadPrivateKey(String),
    /// The public key is not 64 hex characters.
    #[error("the release public key must be 64 hex characters")]
    BadPublicKey,
    /// The signature is not 128 hex characters.
    #[error("the release signature must be 128 hex characters")]
    BadSignatureEncoding,
    /// The signature does not verify.
    #[error("the release signature does not verify against any configured public key")]
    Mismatch,
    /// A signature is required and there is none.
    #[error("this updater requires signed releases; the release carries no signed manifest")]
    Unsigned,
    /// The manifest is not one.
    #[error("the release manifest is malformed: {0}")]
    BadManifest(String),
    /// File access failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A release signing key pair.
pub struct ReleaseSigner {
    pair: Ed25519KeyPair,
}

impl ReleaseSigner {
    /// Generate a new key and write it to `private_path` (0600) and
    /// `<private_path>.pub` (hex public key). Returns the public key hex.
    pub fn generate_to(private_path: &Path) -> Result<String, SigningError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| SigningError::Generate)?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| SigningError::Generate)?;
        let public = crate::ca::hex(pair.public_key().as_ref());
        let io = |p: &Path, source| SigningError::Io {
            path: p.display().to_string(),
            source,
        };
        crate::secure_fs::write_atomic(private_path, pkcs8.as_ref(), crate::secure_fs::KEY_MODE)
            .map_err(|e| io(private_path, e))?;
        let pub_path = public_key_path(private_path);
        crate::secure_fs::write_atomic(
            &pub_path,
            format!("{public}\n").as_bytes(),
            crate::secure_fs::PUBLIC_MODE,
        )
        .map_err(|e| io(&pub_path, e))?;
        Ok(public)
    }

    /// Load a private key written by [`generate_to`](Self::generate_to)
    /// (refused when readable by group/others).
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let meta = std::fs::metadata(path).map_err(|source| SigningError::Io {
            path: path.display().to_string(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SigningError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(
                    "private key is readable by group/others; run chmod 600 on it",
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(|source| SigningError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|_| SigningError::BadPrivateKey(path.display().to_string()))?;
        Ok(ReleaseSigner { pair })
    }

    /// Sign `manifest`: its JSON text and the signature over those bytes.
    pub fn sign_manifest(&self, manifest: &ReleaseManifest) -> SignedManifest {
        let text = manifest.to_json();
        let signature = crate::ca::hex(self.pair.sign(text.as_bytes()).as_ref());
        SignedManifest {
            manifest: text,
            signature: Some(signature),
        }
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        crate::ca::hex(self.pair.public_key().as_ref())
    }
}

/// `<key>.pub`.
pub fn public_key_path(private_path: &Path) -> std::path::PathBuf {
    let mut s = private_path.as_os_str().to_owned();
    s.push(".pub");
    s.into()
}

/// A public key that verifies release signatures.
#[derive(Clone, Debug)]
pub struct ReleaseVerifier {
    public: Vec<u8>,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s.trim()).ok()
}

impl ReleaseVerifier {
    /// From 64 hex characters.
    pub fn from_hex(hex: &str) -> Result<Self, SigningError> {
        match unhex(hex) {
            Some(b) if b.len() == 32 => Ok(ReleaseVerifier { public: b }),
            _ => Err(SigningError::BadPublicKey),
        }
    }

    /// Read a `.pub` file.
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let text = std::fs::read_to_string(path).map_err(|source| SigningError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_hex(&text)
    }

    /// Verify a hex signature over `message`.
    pub fn verify(&self, message: &[u8], signature_hex: &str) -> Result<(), SigningError> {
        let sig = match unhex(signature_hex) {
            Some(s) if s.len() == 64 => s,
            _ => return Err(SigningError::BadSignatureEncoding),
        };
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(message, &sig)
            .map_err(|_| SigningError::Mismatch)
    }
}

/// Which daemon a release is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseTarget {
    /// `POST /update`: the agent's slots.
    Agent,
    /// `POST /update-self`: the updater's own slots.
    Updater,
}

impl std::fmt::Display for ReleaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReleaseTarget::Agent => "agent",
            ReleaseTarget::Updater => "updater",
        })
    }
}

/// What a release signature covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// The daemon it is for.
    pub target: ReleaseTarget,
    /// The release label (a commit id, a tag).
    pub label: String,
    /// The version: semver (a leading `v` allowed), compared for
    /// downgrades with [`release_version`]; empty when the release has none
    /// (it is then ordered by `signed_at`).
    pub version: String,
    /// SHA-256 of the tarball, hex.
    pub sha256: String,
    /// When it was signed (unix seconds).
    pub signed_at: i64,
    /// The signer allows installing it below an updater's floor (a signed
    /// downgrade permit: with a keyring, no master flag can allow one).
    #[serde(default, skip_serializing_if = "is_false")]
    pub permit_downgrade: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A release version as semver (`1.2.3`, `v1.2.3-rc.1+build`): pre-releases
/// order before their release (`1.2.3-rc1` < `1.2.3`), numbers compare as
/// numbers. `Err` says why it is not one.
pub fn release_version(v: &str) -> Result<semver::Version, String> {
    let t = v.trim();
    let t = t.strip_prefix('v').unwrap_or(t);
    semver::Version::parse(t).map_err(|e| format!("{v:?} is not a semver version ({e})"))
}

impl ReleaseManifest {
    /// The manifest as JSON text (what is signed).
    pub fn to_json(&self) -> String {
        // Plain strings and numbers: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// This manifest, sent without a signature (updaters without keys).
    pub fn unsigned(&self) -> SignedManifest {
        SignedManifest {
            manifest: self.to_json(),
            signature: None,
        }
    }
}

/// A manifest as it travels: its exact JSON text and the signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    /// The manifest's JSON text.
    pub manifest: String,
    /// Ed25519 signature over `manifest`'s bytes, hex.
    pub signature: Option<String>,
}

impl SignedManifest {
    /// Parse the manifest text.
    pub fn parse(&self) -> Result<ReleaseManifest, SigningError> {
        serde_json::from_str(&self.manifest).map_err(|e| SigningError::BadManifest(e.to_string()))
    }
}

/// The release keys an updater trusts.
#[derive(Clone, Debug, Default)]
pub struct ReleaseKeyring(Vec<ReleaseVerifier>);

impl ReleaseKeyring {
    /// Load every `.pub` file in `paths`.
    pub fn load(paths: &[PathBuf]) -> Result<Self, SigningError> {
        paths
            .iter()
            .map(|p| ReleaseVerifier::load(p))
            .collect::<Result<Vec<_>, _>>()
            .map(ReleaseKeyring)
    }

    /// Whether no key is configured (unsigned releases accepted).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Check that one of the keys signed `m`, and return its manifest.
    pub fn verify(&self, m: &SignedManifest) -> Result<ReleaseManifest, SigningError> {
        let sig = m.signature.as_deref().ok_or(SigningError::Unsigned)?;
        let mut last = SigningError::Mismatch;
        for key in &self.0 {
            match key.verify(m.manifest.as_bytes(), sig) {
                Ok(()) => return m.parse(),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Compare two release versions by their numeric parts (`v1.10.2` >
/// `1.9`, `release-7` > `release-6`); `None` when either has no number, so
/// no order can be told.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    fn parts(s: &str) -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u64>().unwrap_or(u64::MAX))
            .collect()
    }
    let (pa, pb) = (parts(a), parts(b));
    if pa.is_empty() || pb.is_empty() {
        return None;
    }
    let n = pa.len().max(pb.len());
    let get = |v: &Vec<u64>, i: usize| v.get(i).copied().unwrap_or(0);
    Some(
        (0..n)
            .map(|i| get(&pa, i).cmp(&get(&pb, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal),
    )
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// An incremental SHA-256 (for streamed uploads).
pub struct Sha256Stream(aws_lc_rs::digest::Context);

impl Default for Sha256Stream {
    fn default() -> Self {
        Sha256Stream(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl Sha256Stream {
    /// Add bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }
    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

/// Parse a 64-hex SHA-256 digest.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let b = unhex(hex)?;
    b.try_into().ok()
}

/// A digest as lowercase hex.
pub fn digest_hex(d: &[u8; 32]) -> String {
    crate::ca::hex(d)
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut s = Sha256Stream::default();
    s.update(bytes);
    digest_hex(&s.finish())
}

/// Compare two secrets (or their hashes) in constant time.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> ReleaseManifest {
        ReleaseManifest {
            target: ReleaseTarget::Agent,
            label: "abc123".into(),
            version: "1.2.0".into(),
            sha256: "0".repeat(64),
            signed_at: 1,
            permit_downgrade: false,
        }
    }

    #[test]
    fn release_versions_are_semver_with_prereleases_first() {
        let v = |s| release_version(s).unwrap();
        assert!(v("1.2.3-rc1") < v("1.2.3"));
        assert!(v("v1.10.0") > v("1.9.9"));
        assert!(v("1.2.3-alpha.2") < v("1.2.3-alpha.10"));
        assert!(release_version("4f2a9c1").is_err());
        assert!(release_version("v2").is_err());
    }

    #[test]
    fn a_permit_is_signed_and_absent_from_manifests_without_one() {
        assert!(!manifest().to_json().contains("permit"));
        let mut m = manifest();
        m.permit_downgrade = true;
        let back: ReleaseManifest = serde_json::from_str(&m.to_json()).unwrap();
        assert!(back.permit_downgrade);
    }

    #[test]
    fn manifests_verify_with_any_trusted_key_and_refuse_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.key");
        let new = dir.path().join("new.key");
        ReleaseSigner::generate_to(&old).unwrap();
        let public = ReleaseSigner::generate_to(&new).unwrap();
        let signer = ReleaseSigner::load(&new).unwrap();
        assert_eq!(signer.public_hex(), public);
        let ring = ReleaseKeyring::load(&[public_key_path(&old), public_key_path(&new)]).unwrap();
        let signed = signer.sign_manifest(&manifest());
        assert_eq!(ring.verify(&signed).unwrap(), manifest());
        // Only the old key: refused.
        let old_only = ReleaseKeyring::load(&[public_key_path(&old)]).unwrap();
        assert!(matches!(
            old_only.verify(&signed),
            Err(SigningError::Mismatch)
        ));
        // Any change to the signed text breaks it: retargeting included.
        let mut retarget = signed.clone();
        retarget.manifest = retarget.manifest.replace("\"agent\"", "\"updater\"");
        assert!(matches!(
            ring.verify(&retarget),
            Err(SigningError::Mismatch)
        ));
        assert!(matches!(
            ring.verify(&manifest().unsigned()),
            Err(SigningError::Unsigned)
        ));
        let mut garbled = signed.clone();
        garbled.signature = Some("zz".into());
        assert!(matches!(
            ring.verify(&garbled),
            Err(SigningError::BadSignatureEncoding)
        ));
        assert!(ReleaseVerifier::from_hex("abc").is_err());
    }

    #[test]
    fn versions_compare_by_their_numbers() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_versions("v1.10.2", "1.9"), Some(Greater));
        assert_eq!(compare_versions("1.2", "1.2.0"), Some(Equal));
        assert_eq!(compare_versions("release-6", "release-7"), Some(Less));
        assert_eq!(compare_versions("2026.11.23", "2026.2.1"), Some(Greater));
        assert_eq!(compare_versions("nightly", "1.0"), None);
    }

    #[test]
    fn digests() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            digest_hex(&sha256_file(&f).unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(parse_sha256("00").is_none());
        assert!(parse_sha256(&"0".repeat(64)).is_some());
    }
}
