//! Ed25519 release signatures: the operator signs the SHA-256 digest of a
//! release tarball; an updater configured with the public key refuses a
//! release whose signature is missing or does not verify.
//!
//! Files: the private key is PKCS#8 (written 0600), the public key is 64 hex
//! characters, a signature is 128 hex characters.

use std::path::Path;

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
    #[error("the release signature does not verify against the configured public key")]
    Mismatch,
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

    /// Sign a SHA-256 digest; returns the signature as hex.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> String {
        crate::ca::hex(self.pair.sign(digest).as_ref())
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
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
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

    /// Verify a hex signature over a SHA-256 digest.
    pub fn verify_digest(
        &self,
        digest: &[u8; 32],
        signature_hex: &str,
    ) -> Result<(), SigningError> {
        let sig = match unhex(signature_hex) {
            Some(s) if s.len() == 64 => s,
            _ => return Err(SigningError::BadSignatureEncoding),
        };
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(digest, &sig)
            .map_err(|_| SigningError::Mismatch)
    }
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

    #[test]
    fn sign_and_verify_and_refuse_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("release.key");
        let public = ReleaseSigner::generate_to(&key).unwrap();
        let signer = ReleaseSigner::load(&key).unwrap();
        assert_eq!(signer.public_hex(), public);
        let verifier = ReleaseVerifier::load(&public_key_path(&key)).unwrap();
        let digest = [7u8; 32];
        let sig = signer.sign_digest(&digest);
        verifier.verify_digest(&digest, &sig).unwrap();
        assert!(matches!(
            verifier.verify_digest(&[8u8; 32], &sig),
            Err(SigningError::Mismatch)
        ));
        assert!(matches!(
            verifier.verify_digest(&digest, "zz"),
            Err(SigningError::BadSignatureEncoding)
        ));
        let other = ReleaseVerifier::from_hex(&"ab".repeat(32)).unwrap();
        assert!(other.verify_digest(&digest, &sig).is_err());
        assert!(ReleaseVerifier::from_hex("abc").is_err());
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
