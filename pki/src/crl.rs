//! Certificate revocation lists: how revocation reaches the workers.
//!
//! The master keeps the deny list in its fleet database and publishes it as
//! a CA-signed X.509 CRL ([`CertificateAuthority::issue_crl`]). Workers fetch
//! it, check it with [`RevocationList::verify`] (signature by *their* CA,
//! issuer, a number not older than the one they hold) before they use or
//! store it, and hand its DER to rustls, which refuses a revoked peer at the
//! handshake on both sides (see [`crate::tls`]).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::ca::{CaError, CertificateAuthority};

/// A revocation list whose signature was checked against a trusted CA.
///
/// Usually one CRL; during a CA rotation one per trusted CA (each CA can
/// only revoke what it signed), all with the same number.
#[derive(Clone, PartialEq, Eq)]
pub struct RevocationList {
    parts: Vec<Vec<u8>>,
    number: u64,
    this_update: OffsetDateTime,
    revoked: Vec<Vec<u8>>,
}

impl std::fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationList")
            .field("number", &self.number)
            .field("this_update", &self.this_update)
            .field("issuers", &self.parts.len())
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

/// Why a CRL was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// Not a DER/PEM X.509 CRL.
    #[error("not a certificate revocation list")]
    Parse,
    /// The CA certificate given to check it does not parse.
    #[error("the CA certificate does not parse")]
    BadCa,
    /// Issued by someone else than our CA.
    #[error("the revocation list was not issued by this CA")]
    WrongIssuer,
    /// Its signature does not verify with the CA's key.
    #[error("the revocation list's signature does not verify with the CA key")]
    BadSignature,
    /// It carries no CRL number (ours always do).
    #[error("the revocation list has no CRL number")]
    NoNumber,
    /// The lists of a set carry different numbers.
    #[error("the revocation lists of the set carry different numbers")]
    MixedNumbers,
    /// Older than the one already held.
    #[error("revocation list number {got} is older than the one in use ({have})")]
    Stale {
        /// The number offered.
        got: u64,
        /// The number held.
        have: u64,
    },
}

/// One revoked certificate, as the CA lists it.
#[derive(Debug, Clone)]
pub struct RevokedSerial {
    /// Serial number, lowercase hex (as the fleet ledger stores it).
    pub serial_hex: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
}

impl RevocationList {
    /// Parse `der` and check that a CA of `ca_pem` (one or more CA
    /// certificates) issued and signed it.
    pub fn verify(der: &[u8], ca_pem: &str) -> Result<Self, CrlError> {
        let cas = crate::trust::certificates(ca_pem).map_err(|_| CrlError::BadCa)?;
        if cas.is_empty() {
            return Err(CrlError::BadCa);
        }
        match verify_part(der, &cas)? {
            Some(list) => Ok(list),
            None => Err(CrlError::WrongIssuer),
        }
    }

    /// Like [`verify`](Self::verify) for PEM: one CRL, or a set of them (one
    /// per CA of a rotation). Lists by a CA that `ca_pem` does not hold yet
    /// are left out (a host that has not taken the successor CA into its
    /// trust set yet); at least one must verify, and every one that claims
    /// a trusted issuer must verify.
    pub fn verify_pem(pem: &str, ca_pem: &str) -> Result<Self, CrlError> {
        let cas = crate::trust::certificates(ca_pem).map_err(|_| CrlError::BadCa)?;
        if cas.is_empty() {
            return Err(CrlError::BadCa);
        }
        let ders = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CrlError::Parse)?;
        if ders.is_empty() {
            return Err(CrlError::Parse);
        }
        let mut parts = Vec::new();
        for der in &ders {
            if let Some(list) = verify_part(der.as_ref(), &cas)? {
                parts.push(list);
            }
        }
        if parts.is_empty() {
            return Err(CrlError::WrongIssuer);
        }
        Self::combine(parts)
    }

    /// One list of several (one per CA), which must share a number.
    pub fn combine(lists: Vec<RevocationList>) -> Result<Self, CrlError> {
        let mut it = lists.into_iter();
        let Some(mut all) = it.next() else {
            return Err(CrlError::Parse);
        };
        for l in it {
            if l.number != all.number {
                return Err(CrlError::MixedNumbers);
            }
            all.parts.extend(l.parts);
            all.revoked.extend(l.revoked);
            all.this_update = all.this_update.min(l.this_update);
        }
        Ok(all)
    }

    /// Accept `self` as the successor of `held`: never go back to an older list.
    pub fn newer_than(&self, held: Option<&RevocationList>) -> Result<(), CrlError> {
        match held {
            Some(h) if self.number < h.number => Err(CrlError::Stale {
                got: self.number,
                have: h.number,
            }),
            _ => Ok(()),
        }
    }

    /// The CRL number (grows with every change of the deny list).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// When the CA produced it.
    pub fn this_update(&self) -> OffsetDateTime {
        self.this_update
    }

    /// How many certificates it revokes.
    pub fn len(&self) -> usize {
        self.revoked.len()
    }

    /// Whether it revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
    }

    /// Whether the certificate with this serial (big-endian bytes) is revoked.
    pub fn revokes_serial(&self, serial: &[u8]) -> bool {
        let s = strip_leading_zeros(serial);
        self.revoked.iter().any(|r| r == s)
    }

    /// Whether it revokes the certificate of `peer` (serial as the identity
    /// carries it, lowercase hex): how a server finds the open connections
    /// a new list ends.
    pub fn revokes(&self, peer: &crate::PeerIdentity) -> bool {
        hex::decode(&peer.serial).is_ok_and(|s| self.revokes_serial(&s))
    }

    /// The DER encoding of each list (what rustls takes).
    pub fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.parts
            .iter()
            .map(|d| CertificateRevocationListDer::from(d.clone()))
            .collect()
    }

    /// How many CAs' lists it holds (two during a rotation).
    pub fn issuers(&self) -> usize {
        self.parts.len()
    }

    /// The PEM encoding (what is stored beside a bundle and sent to workers).
    pub fn to_pem(&self) -> String {
        self.parts
            .iter()
            .map(|d| pem::encode(&pem::Pem::new("X509 CRL", d.clone())))
            .collect()
    }
}

/// Verify one DER CRL against the CA among `cas` that issued it; `None`
/// when none of them did.
fn verify_part(der: &[u8], cas: &[CertificateDer<'_>]) -> Result<Option<RevocationList>, CrlError> {
    let (_, crl) = CertificateRevocationList::from_der(der).map_err(|_| CrlError::Parse)?;
    let mut issuer = None;
    for ca_der in cas {
        let (_, ca) = X509Certificate::from_der(ca_der).map_err(|_| CrlError::BadCa)?;
        if crl.issuer().as_raw() == ca.subject().as_raw() {
            issuer = Some(ca);
            break;
        }
    }
    let Some(ca) = issuer else {
        return Ok(None);
    };
    // Our CA signs with RSA PKCS#1 v1.5 SHA-256 (the only algorithm we accept).
    let spk = &ca.public_key().subject_public_key.data;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        spk.as_ref(),
    )
    .verify(crl.tbs_cert_list.as_ref(), &crl.signature_value.data)
    .map_err(|_| CrlError::BadSignature)?;
    let number = crl
        .crl_number()
        .and_then(|n| n.to_string().parse::<u64>().ok())
        .ok_or(CrlError::NoNumber)?;
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| strip_leading_zeros(r.raw_serial()).to_vec())
        .collect();
    Ok(Some(RevocationList {
        parts: vec![der.to_vec()],
        number,
        this_update: crl.last_update().to_datetime(),
        revoked,
    }))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

impl CertificateAuthority {
    /// Sign a CRL listing `revoked`, numbered `number` (must grow with every
    /// change), valid until `next_update`.
    pub fn issue_crl(
        &self,
        revoked: &[RevokedSerial],
        number: u64,
        next_update: OffsetDateTime,
    ) -> Result<RevocationList, CaError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            let bytes = hex::decode(&r.serial_hex).map_err(|_| CaError::BadSerial)?;
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&bytes),
                revocation_time: r.revoked_at,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - crate::ca::CLOCK_SKEW,
            next_update,
            crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(self.issuer())?;
        RevocationList::verify(crl.der().as_ref(), self.cert_pem()).map_err(|_| CaError::BadSerial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::LeafSpec;
    use crate::role::{HostName, Role};

    #[test]
    fn issued_crl_verifies_and_lists_serials() {
        let ca = CertificateAuthority::generate().unwrap();
        let leaf = ca
            .issue(&LeafSpec::for_role(
                &Role::Agent(HostName::new("w1").unwrap()),
                &[],
            ))
            .unwrap();
        let crl = ca
            .issue_crl(
                &[RevokedSerial {
                    serial_hex: leaf.serial.clone(),
                    revoked_at: OffsetDateTime::now_utc(),
                }],
                7,
                OffsetDateTime::now_utc() + time::Duration::days(7),
            )
            .unwrap();
        assert_eq!(crl.number(), 7);
        assert_eq!(crl.len(), 1);
        assert!(crl.revokes_serial(&hex::decode(&leaf.serial).unwrap()));
        let again = RevocationList::verify_pem(&crl.to_pem(), ca.cert_pem()).unwrap();
        assert_eq!(again, crl);

        // Another CA's list is refused, and so is an older number.
        let other = CertificateAuthority::generate().unwrap();
        let foreign = other
            .issue_crl(&[], 9, OffsetDateTime::now_utc() + time::Duration::days(1))
            .unwrap();
        assert!(RevocationList::verify(&foreign.ders()[0], ca.cert_pem()).is_err());
        let older = ca
            .issue_crl(&[], 6, OffsetDateTime::now_utc() + time::Duration::days(1))
            .unwrap();
        assert!(matches!(
            older.newer_than(Some(&crl)),
            Err(CrlError::Stale { got: 6, have: 7 })
        ));
        // A flipped byte in the signed part breaks the signature.
        let mut tampered = crl.ders()[0].to_vec();
        let n = tampered.len();
        tampered[n / 2] ^= 1;
        assert!(RevocationList::verify(&tampered, ca.cert_pem()).is_err());
    }
}
