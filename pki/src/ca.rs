//! The flat RSA certificate authority and leaf issuance.
//!
//! CA: RSA-4096, SHA-256, 3650 days, `CA:TRUE, pathlen:0` (critical),
//! keyCertSign + cRLSign, Subject Key Identifier. Leaves: RSA-2048, SHA-256,
//! 825 days, `CA:FALSE`, digitalSignature + keyEncipherment, EKU serverAuth +
//! clientAuth, SANs, Authority and Subject Key Identifiers, a random serial.
//! Every notBefore is set a few minutes in the past to absorb clock skew.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256, PublicKeyData, RsaKeySize, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use crate::bundle::CaLayout;
use crate::fingerprint::Fingerprint;
use crate::role::{HostName, MASTER_CN, Role};
use crate::secure_fs::{self, KEY_MODE, PUBLIC_MODE};

/// Validity of the CA certificate.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of a leaf certificate (the CA/B Forum ceiling).
pub const LEAF_VALIDITY_DAYS: i64 = 825;
/// How far in the past every notBefore is placed.
pub const CLOCK_SKEW: Duration = Duration::minutes(5);
/// Common name of the CA.
pub const CA_COMMON_NAME: &str = "DECNET SWARM Root CA";
/// Organization of every certificate.
pub const ORGANIZATION: &str = "DECNET";

/// Errors of CA creation, loading and issuance.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Key generation or signing failed inside the crypto library.
    #[error("certificate operation failed: {0}")]
    Crypto(#[from] rcgen::Error),
    /// A file of the CA could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The CA key file is unusable (permissions).
    #[error(transparent)]
    Key(#[from] secure_fs::KeyFileError),
    /// No CA exists at the given place.
    #[error("no CA at {dir}: run `decnet ca init` first")]
    Missing {
        /// The CA directory.
        dir: String,
    },
    /// A CA already exists and overwriting was not asked for.
    #[error(
        "a CA already exists at {dir}; refusing to overwrite it (use --force to replace it and invalidate every issued certificate)"
    )]
    Exists {
        /// The CA directory.
        dir: String,
    },
    /// A PEM file is not a certificate.
    #[error("{path} does not hold a PEM certificate")]
    BadCertificate {
        /// The path.
        path: String,
    },
    /// A validity period that does not fit the calendar.
    #[error("the certificate validity is out of range")]
    BadValidity,
    /// A serial number in the ledger is not hex (should never happen).
    #[error("a certificate serial number is malformed")]
    BadSerial,
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key does not belong to the CA certificate")]
    KeyMismatch,
    /// A SAN is neither an IP address nor a valid DNS name.
    #[error("subject alternative name {0:?} is neither an IP address nor a valid DNS name")]
    BadSan(String),
}

/// What a leaf certificate should say.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// The CN (encodes the role).
    pub common_name: String,
    /// Subject alternative names: IPs become IP SANs, the rest DNS SANs.
    pub sans: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// The standard leaf for `role`: CN from the role, the operator's SANs
    /// plus the host name (and `127.0.0.1` for an updater, which the local
    /// agent probe dials), valid for [`LEAF_VALIDITY_DAYS`].
    pub fn for_role(role: &Role, extra_sans: &[String]) -> LeafSpec {
        let mut sans: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            if !sans.iter().any(|x| x.eq_ignore_ascii_case(s)) {
                sans.push(s.to_string());
            }
        };
        for s in extra_sans {
            add(s.trim());
        }
        match role {
            Role::Master => add(MASTER_CN),
            Role::Agent(h) => add(h.as_str()),
            Role::Updater(h) => {
                add(h.as_str());
                add("127.0.0.1");
            }
            // A scraper only ever dials out: its name is its CN.
            Role::Monitor(_) | Role::Operator(_) => {}
        }
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            common_name: role.cn(),
            sans,
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::days(LEAF_VALIDITY_DAYS),
        }
    }

    /// Replace the validity window (short-lived certs for renewal, expired
    /// certs in tests).
    pub fn with_validity(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

/// A freshly issued leaf: its key, its certificate, and facts about it.
#[derive(Clone)]
pub struct IssuedLeaf {
    /// PKCS#8 PEM private key (secret: write it 0600, never log it).
    pub key_pem: String,
    /// PEM certificate.
    pub cert_pem: String,
    /// SHA-256 of the certificate DER.
    pub fingerprint: Fingerprint,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Fingerprint of the CA that signed it (which CA a host depends on
    /// during a rotation).
    pub issuer: Fingerprint,
}

impl std::fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("fingerprint", &self.fingerprint)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A loaded CA that can sign leaves.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The trust set handed out with what this CA signs, when it is more
    /// than this CA alone (a rotation): see [`with_trust`](Self::with_trust).
    trust: Option<(String, String)>,
}

impl CertificateAuthority {
    /// Generate a new CA (RSA-4096; takes about a second).
    pub fn generate() -> Result<Self, CaError> {
        Self::generate_named(None)
    }

    /// Generate the successor of a CA for a rotation: like
    /// [`generate`](Self::generate), with a subject of its own (an OU naming
    /// its generation), so that certificates and revocation lists of the two
    /// CAs are never mistaken for each other while both are trusted.
    pub fn generate_successor() -> Result<Self, CaError> {
        let tag = format!("rotated {}", crate::random_hex(4));
        Self::generate_named(Some(&tag))
    }

    fn generate_named(unit: Option<&str>) -> Result<Self, CaError> {
        let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(CA_COMMON_NAME, unit);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(CertificateAuthority {
            cert_pem,
            cert_der,
            issuer: Issuer::new(params, key),
            trust: None,
        })
    }

    /// Rebuild a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| CaError::BadCertificate {
                path: "CA certificate".into(),
            })?
            .into_owned();
        {
            use x509_parser::prelude::{FromDer, X509Certificate};
            let (_, cert) =
                X509Certificate::from_der(&cert_der).map_err(|_| CaError::BadCertificate {
                    path: "CA certificate".into(),
                })?;
            // A key and a certificate of two CAs (a torn write) never sign
            // anything together.
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(CaError::KeyMismatch);
            }
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
            trust: None,
        })
    }

    /// Load the CA from `layout` (`ca.crt`, `ca.key`; the key must be 0600).
    pub fn load(layout: &CaLayout) -> Result<Self, CaError> {
        let cert_path = layout.ca_cert();
        if !cert_path.exists() || !layout.ca_key().exists() {
            return Err(CaError::Missing {
                dir: layout.root().display().to_string(),
            });
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|source| CaError::Io {
            what: "cannot read",
            path: cert_path.display().to_string(),
            source,
        })?;
        let key_pem = secure_fs::read_private_key(&layout.ca_key())?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            CaError::BadCertificate { .. } => CaError::BadCertificate {
                path: cert_path.display().to_string(),
            },
            other => other,
        })
    }

    /// Write `ca.key` (0600) and `ca.crt` into `layout`'s root (0700).
    pub fn save(&self, layout: &CaLayout) -> Result<(), CaError> {
        let root = layout.root();
        secure_fs::ensure_private_dir(root).map_err(|source| CaError::Io {
            what: "cannot create",
            path: root.display().to_string(),
            source,
        })?;
        write(
            &layout.ca_key(),
            self.issuer.key().serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        write(&layout.ca_cert(), self.cert_pem.as_bytes(), PUBLIC_MODE)?;
        Ok(())
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Hand out `trust_pem` (several CA certificates) instead of this CA
    /// alone with everything it signs, with the `endorsements_pem` that let
    /// a host holding one of them take the others (a CA rotation: both CAs
    /// are trusted while this one signs).
    pub fn with_trust(mut self, trust_pem: String, endorsements_pem: String) -> Self {
        self.trust = Some((trust_pem, endorsements_pem));
        self
    }

    /// The trust set to put into a bundle this CA signs the leaf of: this
    /// CA's certificate, or every CA trusted during a rotation.
    pub fn trust_pem(&self) -> &str {
        match &self.trust {
            Some((t, _)) => t,
            None => &self.cert_pem,
        }
    }

    /// The endorsements that go with [`trust_pem`](Self::trust_pem) (empty
    /// outside a rotation).
    pub fn endorsements_pem(&self) -> &str {
        match &self.trust {
            Some((_, e)) => e,
            None => "",
        }
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The signing half of the CA (certificates and CRLs).
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Fingerprint of the CA certificate (what join tokens embed).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_der(&self.cert_der)
    }

    /// The CA's subject as text: what [`PeerIdentity::issuer`](crate::PeerIdentity)
    /// says of a certificate it signed.
    pub fn subject(&self) -> String {
        use x509_parser::prelude::{FromDer, X509Certificate};
        X509Certificate::from_der(&self.cert_der)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default()
    }

    /// An endorsement of `other` by this CA, valid for
    /// [`ENDORSEMENT_VALIDITY`](crate::trust::ENDORSEMENT_VALIDITY): a
    /// signature by this CA's key over `other`'s fingerprint (see
    /// [`crate::trust`]). A host that trusts this CA takes `other` into its
    /// trust set on the strength of it. It is deliberately not a
    /// certificate: nothing can chain through it, so once a CA leaves the
    /// trust sets, no endorsement brings it back.
    pub fn endorse(&self, other: &CertificateAuthority) -> Result<String, CaError> {
        let until =
            (OffsetDateTime::now_utc() + crate::trust::ENDORSEMENT_VALIDITY).unix_timestamp();
        self.endorse_until(other, until)
    }

    /// [`endorse`](Self::endorse) with an explicit end (unix seconds).
    pub(crate) fn endorse_until(
        &self,
        other: &CertificateAuthority,
        not_after: i64,
    ) -> Result<String, CaError> {
        use rcgen::SigningKey;
        let (endorser, endorsed) = (self.fingerprint(), other.fingerprint());
        let msg = crate::trust::endorsement_message(&endorser, &endorsed, not_after);
        let signature = self.issuer.key().sign(&msg)?;
        Ok(crate::trust::encode_endorsement(
            &endorser, &endorsed, not_after, &signature,
        ))
    }

    /// Issue a leaf with a freshly generated RSA-2048 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedLeaf, CaError> {
        let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?;
        let mut leaf = self.sign(spec, &key)?;
        leaf.key_pem = key.serialize_pem();
        Ok(leaf)
    }

    /// Whether `csr_pem` is a well-formed PKCS#10 request whose signature
    /// verifies (what [`sign_csr`](Self::sign_csr) checks before signing):
    /// cheap, so a server can refuse a bad request before it takes a lock.
    pub fn check_csr(csr_pem: &str) -> Result<(), CaError> {
        rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        Ok(())
    }

    /// Sign the public key of a PEM CSR (its signature is verified; its
    /// subject and SANs are ignored: `spec` decides the CN and SANs).
    pub fn sign_csr(&self, spec: &LeafSpec, csr_pem: &str) -> Result<IssuedLeaf, CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        self.sign(spec, &csr.public_key)
    }

    /// Sign a leaf for a public key held elsewhere (a CSR's key). The returned
    /// [`IssuedLeaf`] has an empty `key_pem`.
    pub fn sign(
        &self,
        spec: &LeafSpec,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedLeaf, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name =
            distinguished_name(&spec.common_name, Some(unit_of(&spec.common_name)));
        params.subject_alt_names = spec.sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let serial = random_serial()?;
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(IssuedLeaf {
            key_pem: String::new(),
            cert_pem: cert.pem(),
            fingerprint: Fingerprint::of_der(cert.der()),
            serial: serial_hex,
            not_after: spec.not_after,
            issuer: self.fingerprint(),
        })
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    secure_fs::write_atomic(path, bytes, mode).map_err(|source| CaError::Io {
        what: "cannot write",
        path: path.display().to_string(),
        source,
    })
}

fn distinguished_name(cn: &str, unit: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    if let Some(u) = unit {
        dn.push(DnType::OrganizationalUnitName, u);
    }
    dn
}

/// The OU of a leaf: the master has its own; workers' leaves say `swarm-worker`.
fn unit_of(cn: &str) -> &'static str {
    if cn == MASTER_CN {
        "swarm-master"
    } else {
        "swarm-worker"
    }
}

fn san(s: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if s != MASTER_CN && HostName::new(s).is_err() {
        return Err(CaError::BadSan(s.to_string()));
    }
    Ok(SanType::DnsName(
        s.to_ascii_lowercase()
            .try_into()
            .map_err(|_| CaError::BadSan(s.to_string()))?,
    ))
}

/// The SANs of a PEM certificate (IP addresses and DNS names, as text).
pub fn leaf_sans(cert_pem: &str) -> Option<Vec<String>> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let ext = cert.subject_alternative_name().ok()??;
    Some(
        ext.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                    16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect(),
    )
}

/// A fresh RSA-2048 key and a CSR for it: `(key_pem, csr_pem)`. The key
/// never leaves the machine that calls this (token join, renewal).
pub fn generate_csr(common_name: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name, Some("swarm-worker"));
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// A positive, non-zero-leading 128-bit random serial (RFC 5280 allows 20 octets).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| rcgen::Error::RingUnspecified)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x10;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Whether `s` is a valid SAN (an IP address or a DNS name), for input
/// validation before anything is issued.
pub fn validate_san(s: &str) -> Result<(), CaError> {
    san(s).map(|_| ())
}
