//! Trust bundles: the set of CA certificates a daemon trusts, and the one
//! rule by which that set may change while the fleet runs (CA rotation).
//!
//! A bundle's `ca.crt` may hold several CA certificates: during a rotation
//! it holds the CA being retired and its successor. A worker learns of a new
//! set from the master (the heartbeat answer carries its [`digest`]) and
//! takes it only through [`accept`]: every CA in the offered set must be one
//! it already trusts, or be *endorsed* by one it already trusts — an
//! endorsement is a certificate with the new CA's subject and public key,
//! signed by the trusted CA's key ([`CertificateAuthority::endorse`]). So a
//! master that lost its CA key to no one cannot be made, by anyone who
//! merely reaches a worker, to trust a CA the fleet never vouched for; and
//! dropping a CA (the end of a rotation) needs no endorsement at all.

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
    /// A new CA without an endorsement by a trusted one.
    #[error("the new CA {0} is not endorsed by a CA this host already trusts")]
    NotEndorsed(String),
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
    let endorsements = certificates(endorsements).map_err(|_| TrustError::Parse("endorsements"))?;
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
        let endorsed = endorsements.iter().any(|e| {
            let Ok((_, e)) = X509Certificate::from_der(e) else {
                return false;
            };
            e.is_ca()
                && e.subject().as_raw() == cert.subject().as_raw()
                && e.public_key().raw == cert.public_key().raw
                && held.iter().any(|h| signed_by(&e, h))
        });
        if !endorsed {
            return Err(TrustError::NotEndorsed(name));
        }
    }
    Ok(combine([offered]))
}

/// Whether `cert` was issued and signed by the CA certificate `issuer`
/// (RSA PKCS#1 v1.5 SHA-256: the only algorithm our CAs sign with).
fn signed_by(cert: &X509Certificate<'_>, issuer: &CertificateDer<'_>) -> bool {
    let Ok((_, issuer)) = X509Certificate::from_der(issuer) else {
        return false;
    };
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return false;
    }
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        issuer.public_key().subject_public_key.data.as_ref(),
    )
    .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
    .is_ok()
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
