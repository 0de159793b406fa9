//! Certificate fingerprints: lowercase hex SHA-256 of the DER encoding.
//!
//! The fleet database records them, clients pin them, listeners check them
//! against the revocation list.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A SHA-256 certificate fingerprint (32 bytes), shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex form (what the database stores and humans compare).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short prefix for log lines and tables.
    pub fn short(&self) -> String {
        self.to_hex()[..16].to_string()
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("a fingerprint is 64 hexadecimal digits (SHA-256), got {len} characters")]
pub struct ParseFingerprintError {
    len: usize,
}

impl FromStr for Fingerprint {
    type Err = ParseFingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        let err = || ParseFingerprintError { len: s.len() };
        if clean.len() != 64 {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&clean, &mut out).map_err(|_| err())?;
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        // SHA-256("abc")
        let fp = Fingerprint::of_der(b"abc");
        assert_eq!(
            fp.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_round_trip_and_colons() {
        let fp = Fingerprint::of_der(b"x");
        assert_eq!(fp.to_hex().parse::<Fingerprint>().unwrap(), fp);
        let upper_colons = fp
            .to_hex()
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_string())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(upper_colons.parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("z".repeat(64).parse::<Fingerprint>().is_err());
    }
}
