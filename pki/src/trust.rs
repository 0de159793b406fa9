//! Trust bundles: the set of CA certificates a daemon trusts, and the one
//! rule by which that set may change while the fleet runs (CA rotation).
//!
//! A bundle's `ca.crt` may hold several CA certificates: during a rotation
//! it holds the CA being retired and its successor. A worker learns of a new
//! set from the master (the heartbeat answer carries its [`digest`]) and
//! takes it only through [`accept`]: every CA in the offered set must be one
//! it already trusts, or be *endorsed* by one it already trusts — an
//! endorsement is a signature by the trusted CA's key over the new CA's
//! fingerprint and an end date ([`CertificateAuthority::endorse`]). It is
//! not a certificate on purpose: a cross-certificate would be a path in
//! every TLS chain (a leaf of a dropped CA would still verify through it),
//! an endorsement is a path nowhere. So no one who merely reaches a worker
//! can make it trust a CA the fleet never vouched for; and dropping a CA
//! (the end of a rotation) needs no endorsement at all.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::CertificateAuthority;
use crate::fingerprint::Fingerprint;

/// Why an offered trust set was not taken (the one in force stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// A PEM blob does not hold certificates.
    #[error("the {0} do not parse as PEM certificates")]
    Parse(&'static str),
    /// The offered set is empty.
    #[error("the offered trust bundle holds no CA certificate")]
    Empty,
    /// A certificate of the set is not a CA.
    #[error("{0} in the offered trust bundle is not a CA certificate")]
    NotACa(String),
    /// An endorsement does not decode.
    #[error("an endorsement does not decode")]
    BadEndorsement,
    /// A new CA without an endorsement by a trusted one.
    #[error("the new CA {0} is not endorsed by a CA this host already trusts")]
    NotEndorsed(String),
}

/// How long an endorsement is good for: a rotation is expected to end
/// well within it (a host that has not taken the new CA by then rejoins).
pub const ENDORSEMENT_VALIDITY: time::Duration = time::Duration::days(90);

/// PEM label of an endorsement.
const ENDORSEMENT_LABEL: &str = "DECNET CA ENDORSEMENT";

/// What an endorsement's signature covers: a context string (so no other
/// signature by a CA key can pass for one), the endorsing and the endorsed
/// CA's fingerprints, and the end of its validity.
pub(crate) fn endorsement_message(
    endorser: &Fingerprint,
    endorsed: &Fingerprint,
    not_after: i64,
) -> Vec<u8> {
    let mut m = b"decnet-ca-endorsement-v1\n".to_vec();
    m.extend_from_slice(endorser.as_bytes());
    m.extend_from_slice(endorsed.as_bytes());
    m.extend_from_slice(&not_after.to_be_bytes());
    m
}

/// An endorsement as PEM: endorser (32 bytes), endorsed (32), end (8,
/// big-endian unix seconds), then the signature.
pub(crate) fn encode_endorsement(
    endorser: &Fingerprint,
    endorsed: &Fingerprint,
    not_after: i64,
    signature: &[u8],
) -> String {
    let mut body = Vec::with_capacity(72 + signature.len());
    body.extend_from_slice(endorser.as_bytes());
    body.extend_from_slice(endorsed.as_bytes());
    body.extend_from_slice(&not_after.to_be_bytes());
    body.extend_from_slice(signature);
    pem::encode(&pem::Pem::new(ENDORSEMENT_LABEL, body))
}

/// One decoded endorsement.
struct Endorsement {
    endorser: [u8; 32],
    endorsed: [u8; 32],
    not_after: i64,
    signature: Vec<u8>,
}

fn parse_endorsements(pem_text: &str) -> Result<Vec<Endorsement>, TrustError> {
    let blocks = pem::parse_many(pem_text).map_err(|_| TrustError::BadEndorsement)?;
    blocks
        .iter()
        .filter(|b| b.tag() == ENDORSEMENT_LABEL)
        .map(|b| {
            let c = b.contents();
            if c.len() <= 72 {
                return Err(TrustError::BadEndorsement);
            }
            let mut endorser = [0u8; 32];
            let mut endorsed = [0u8; 32];
            let mut end = [0u8; 8];
            endorser.copy_from_slice(&c[..32]);
            endorsed.copy_from_slice(&c[32..64]);
            end.copy_from_slice(&c[64..72]);
            Ok(Endorsement {
                endorser,
                endorsed,
                not_after: i64::from_be_bytes(end),
                signature: c[72..].to_vec(),
            })
        })
        .collect()
}

impl Endorsement {
    /// Whether it endorses `endorsed`, is in force, and was signed by the
    /// key of the CA certificate `by`.
    fn vouches(&self, endorsed: &Fingerprint, by: &CertificateDer<'_>, now: i64) -> bool {
        let endorser = Fingerprint::of_der(by);
        if self.endorsed != *endorsed.as_bytes()
            || self.endorser != *endorser.as_bytes()
            || self.not_after <= now
        {
            return false;
        }
        let Ok((_, ca)) = X509Certificate::from_der(by) else {
            return false;
        };
        let msg = endorsement_message(&endorser, endorsed, self.not_after);
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            ca.public_key().subject_public_key.data.as_ref(),
        )
        .verify(&msg, &self.signature)
        .is_ok()
    }
}

/// The CA certificates (DER) of a PEM trust bundle, in file order.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TrustError::Parse("CA certificates"))?;
    Ok(certs)
}

/// The identity of a trust set: SHA-256 over the sorted fingerprints of its
/// CAs (so the order of the file and its line endings do not matter). The
/// master announces it; a worker holding another one fetches the set.
pub fn digest(pem: &str) -> String {
    let mut fps: Vec<String> = certificates(pem)
        .unwrap_or_default()
        .iter()
        .map(|c| Fingerprint::of_der(c).to_hex())
        .collect();
    fps.sort();
    fps.dedup();
    Fingerprint::of_der(fps.join(",").as_bytes()).to_hex()
}

/// The fingerprints of the CAs of a trust set.
pub fn fingerprints(pem: &str) -> Vec<Fingerprint> {
    certificates(pem)
        .unwrap_or_default()
        .iter()
        .map(|c| Fingerprint::of_der(c))
        .collect()
}

/// One certificate as PEM.
pub fn to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
}

/// One PEM file holding `pems` (each one or more certificates), each CA
/// once, in the order given.
pub fn combine<'a>(pems: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen = Vec::new();
    let mut out = String::new();
    for pem in pems {
        for der in certificates(pem).unwrap_or_default() {
            let fp = Fingerprint::of_der(&der);
            if seen.contains(&fp) {
                continue;
            }
            seen.push(fp);
            out.push_str(&to_pem(&der));
        }
    }
    out
}

/// Decide whether to move from the trust set `current` to `offered`, given
/// the `endorsements` the master sent along; returns the PEM to install.
///
/// Every CA of `offered` must be in `current`, or be endorsed (same subject,
/// same public key, signed by the key of a CA in `current`). CAs of
/// `current` missing from `offered` are dropped. The caller still checks
/// that its own certificate chains to the result before installing it.
pub fn accept(current: &str, offered: &str, endorsements: &str) -> Result<String, TrustError> {
    let held = certificates(current)?;
    let offered_certs = certificates(offered)?;
    if offered_certs.is_empty() {
        return Err(TrustError::Empty);
    }
    let endorsements = parse_endorsements(endorsements)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for der in &offered_certs {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|_| TrustError::Parse("CA certificates"))?;
        let name = cert.subject().to_string();
        if !cert.is_ca() {
            return Err(TrustError::NotACa(name));
        }
        if held.iter().any(|h| h.as_ref() == der.as_ref()) {
            continue;
        }
        let fp = Fingerprint::of_der(der);
        let endorsed = endorsements
            .iter()
            .any(|e| held.iter().any(|h| e.vouches(&fp, h, now)));
        if !endorsed {
            return Err(TrustError::NotEndorsed(name));
        }
    }
    Ok(combine([offered]))
}

impl CertificateAuthority {
    /// Both endorsements of a rotation from `self` to `successor`, PEM: the
    /// successor signed by `self` (what hosts that trust `self` need) and
    /// `self` signed by the successor (what a host that joins with a token
    /// pinning the successor needs to trust the master still presenting a
    /// certificate of `self`).
    pub fn endorsements_for(
        &self,
        successor: &CertificateAuthority,
    ) -> Result<String, crate::CaError> {
        Ok(format!(
            "{}{}",
            self.endorse(successor)?,
            successor.endorse(self)?
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successor_endorsed_by_a_trusted_ca_is_taken_and_a_stranger_is_not() {
        let old = CertificateAuthority::generate().unwrap();
        let new = CertificateAuthority::generate_successor().unwrap();
        let stranger = CertificateAuthority::generate_successor().unwrap();
        let both = combine([old.cert_pem(), new.cert_pem()]);
        let endorsements = old.endorsements_for(&new).unwrap();
        // Trusting the old CA: the new one is taken with its endorsement.
        let got = accept(old.cert_pem(), &both, &endorsements).unwrap();
        assert_eq!(digest(&got), digest(&both));
        assert_ne!(digest(&got), digest(old.cert_pem()));
        // Without it, or with an endorsement by the stranger, it is not.
        assert!(matches!(
            accept(old.cert_pem(), &both, ""),
            Err(TrustError::NotEndorsed(_))
        ));
        let forged = stranger.endorse(&new).unwrap();
        assert!(matches!(
            accept(old.cert_pem(), &both, &forged),
            Err(TrustError::NotEndorsed(_))
        ));
        // An expired endorsement, or one whose bytes were changed, is not.
        let expired = old.endorse_until(&new, 1).unwrap();
        assert!(accept(old.cert_pem(), &both, &expired).is_err());
        let good = old.endorse(&new).unwrap();
        let mut blocks = pem::parse_many(&good).unwrap();
        let mut body = blocks[0].contents().to_vec();
        let last = body.len() - 1;
        body[last] ^= 1;
        blocks[0] = pem::Pem::new(blocks[0].tag(), body);
        assert!(accept(old.cert_pem(), &both, &pem::encode_many(&blocks)).is_err());
        // Nothing in the endorsements is a certificate: no TLS chain can
        // pass through one.
        assert!(certificates(&endorsements).unwrap().is_empty());
        // An endorsement of another key under the same name does not pass.
        let offered = combine([old.cert_pem(), stranger.cert_pem()]);
        assert!(accept(old.cert_pem(), &offered, &endorsements).is_err());
        // A host pinned to the new CA takes the old one through the reverse
        // endorsement.
        assert!(accept(new.cert_pem(), &both, &endorsements).is_ok());
        // Dropping a CA needs nothing.
        let only_new = accept(&both, new.cert_pem(), "").unwrap();
        assert_eq!(digest(&only_new), digest(new.cert_pem()));
        // An empty offer is refused.
        assert_eq!(accept(&both, "", ""), Err(TrustError::Empty));
    }

    #[test]
    fn the_digest_ignores_order_and_duplicates() {
        let a = CertificateAuthority::generate().unwrap();
        let b = CertificateAuthority::generate_successor().unwrap();
        assert_eq!(
            digest(&combine([a.cert_pem(), b.cert_pem()])),
            digest(&format!("{}{}{}", b.cert_pem(), a.cert_pem(), b.cert_pem()))
        );
        assert_ne!(digest(a.cert_pem()), digest(b.cert_pem()));
        assert_eq!(
            fingerprints(&combine([a.cert_pem(), b.cert_pem()])).len(),
            2
        );
    }

    #[test]
    fn a_ca_key_of_another_ca_is_refused() {
        let a = CertificateAuthority::generate().unwrap();
        let b = CertificateAuthority::generate_successor().unwrap();
        let torn = CertificateAuthority::from_pem(a.cert_pem(), &b.issuer().key().serialize_pem());
        assert!(matches!(torn, Err(crate::CaError::KeyMismatch)));
        assert!(
            CertificateAuthority::from_pem(a.cert_pem(), &a.issuer().key().serialize_pem()).is_ok()
        );
    }

    #[test]
    fn a_leaf_is_not_taken_as_a_ca() {
        let a = CertificateAuthority::generate().unwrap();
        let leaf = a
            .issue(&crate::LeafSpec::for_role(&crate::Role::Master, &[]))
            .unwrap();
        let offered = combine([a.cert_pem(), leaf.cert_pem.as_str()]);
        assert!(matches!(
            accept(a.cert_pem(), &offered, ""),
            Err(TrustError::NotACa(_))
        ));
    }
}
