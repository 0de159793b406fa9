//! The verified identity of a TLS peer, read from its certificate after the
//! handshake has validated the chain.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::hex;
use crate::fingerprint::Fingerprint;
use crate::role::{Role, RoleError};

/// Who is on the other end of a connection: what handlers and policies see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's subject CN.
    pub cn: String,
    /// The role the CN encodes.
    pub role: Role,
    /// SHA-256 of the certificate DER.
    pub fingerprint: Fingerprint,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// End of the certificate's validity.
    pub not_after: OffsetDateTime,
    /// Start of the certificate's validity.
    pub not_before: OffsetDateTime,
    /// The issuing CA's subject, as text (during a CA rotation: which of
    /// the two CAs signed it).
    pub issuer: String,
}

/// A certificate whose identity cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Not a parseable X.509 certificate.
    #[error("certificate cannot be parsed")]
    Parse,
    /// No CN in the subject.
    #[error("certificate has no subject CN")]
    NoCommonName,
    /// The CN names no role.
    #[error(transparent)]
    Role(#[from] RoleError),
}

impl PeerIdentity {
    /// Read the identity of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Parse)?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .ok_or(IdentityError::NoCommonName)?
            .to_string();
        let role = Role::from_cn(&cn)?;
        Ok(PeerIdentity {
            role,
            fingerprint: Fingerprint::of_der(der),
            serial: hex(cert.raw_serial()),
            not_after: cert.validity().not_after.to_datetime(),
            not_before: cert.validity().not_before.to_datetime(),
            issuer: cert.issuer().to_string(),
            cn,
        })
    }

    /// Read the identity of the first certificate in a PEM string.
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| IdentityError::Parse)?;
        Self::from_der(&der)
    }
}
