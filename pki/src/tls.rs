//! rustls configurations for every decnet connection.
//!
//! * [`server_config`]: presents the bundle's leaf, **requires** a client
//!   certificate chained to the CA, TLS 1.2 minimum. A missing, foreign or
//!   expired client certificate fails the handshake.
//! * [`client_config`]: presents the bundle's leaf and verifies the server
//!   chain against the CA only — no host-name check, because workers enroll
//!   with arbitrary SANs — and, when given, pins the server leaf's
//!   fingerprint (fail closed on mismatch).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::bundle::Bundle;
use crate::fingerprint::Fingerprint;
use crate::provider::crypto_provider;

/// TLS versions every decnet endpoint accepts: 1.3 and 1.2, nothing older.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Errors building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM blob does not hold what it should.
    #[error("bundle {0} is not valid PEM")]
    BadPem(&'static str),
    /// rustls refused the configuration (e.g. key does not match cert).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. empty CA).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A root store holding exactly the decnet CA.
pub fn ca_roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|_| TlsError::BadPem("CA certificate"))?;
        roots.add(cert)?;
        n += 1;
    }
    if n == 0 {
        return Err(TlsError::BadPem("CA certificate"));
    }
    Ok(roots)
}

fn leaf_and_key(
    bundle: &Bundle,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = CertificateDer::pem_slice_iter(bundle.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::BadPem("certificate"))?;
    if certs.is_empty() {
        return Err(TlsError::BadPem("certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(bundle.key_pem.as_bytes())
        .map_err(|_| TlsError::BadPem("private key"))?;
    Ok((certs, key))
}

/// The server certificate of a daemon that renews it while running: the
/// TLS config resolves it on every handshake, so [`reload`](Self::reload)
/// takes effect for new connections at once, without a restart, while open
/// connections carry on.
#[derive(Debug)]
pub struct ReloadableCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableCert {
    fn certified(bundle: &Bundle) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let (certs, key) = leaf_and_key(bundle)?;
        let key = crypto_provider().key_provider.load_private_key(key)?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(certs, key)))
    }

    /// Serve `bundle`'s certificate.
    pub fn new(bundle: &Bundle) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(ReloadableCert {
            current: std::sync::RwLock::new(Self::certified(bundle)?),
        }))
    }

    /// Switch to `bundle`'s certificate for the next handshakes.
    pub fn reload(&self, bundle: &Bundle) -> Result<(), TlsError> {
        let next = Self::certified(bundle)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The server-side builder every decnet server config starts from: our
/// provider and protocol versions, client certificates verified against the
/// bundle's CA — required, or (`optional`) verified only when presented.
fn server_builder(
    bundle: &Bundle,
    optional: bool,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::server::WantsServerCert>, TlsError> {
    let provider = crypto_provider();
    let roots = Arc::new(ca_roots(&bundle.ca_pem)?);
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    let verifier = if optional {
        builder.allow_unauthenticated().build()?
    } else {
        builder.build()?
    };
    Ok(ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_client_cert_verifier(verifier))
}

/// Like [`server_config`], but the certificate can be swapped at run time
/// through the returned [`ReloadableCert`] (certificate renewal).
pub fn server_config_reloadable(
    bundle: &Bundle,
) -> Result<(Arc<ServerConfig>, Arc<ReloadableCert>), TlsError> {
    let cert = ReloadableCert::new(bundle)?;
    let config = server_builder(bundle, false)?.with_cert_resolver(cert.clone());
    Ok((Arc::new(config), cert))
}

/// Server side: present `bundle`, require a CA-signed client certificate.
pub fn server_config(bundle: &Bundle) -> Result<Arc<ServerConfig>, TlsError> {
    let (certs, key) = leaf_and_key(bundle)?;
    Ok(Arc::new(
        server_builder(bundle, false)?.with_single_cert(certs, key)?,
    ))
}

/// Server side for the master's control API: present `bundle`; a client
/// certificate is verified against the CA when presented (a foreign or
/// expired one still fails the handshake) but not required, so a worker
/// without a certificate yet can join with a token.
pub fn server_config_allowing_anonymous(bundle: &Bundle) -> Result<Arc<ServerConfig>, TlsError> {
    let (certs, key) = leaf_and_key(bundle)?;
    Ok(Arc::new(
        server_builder(bundle, true)?.with_single_cert(certs, key)?,
    ))
}

/// Client side without a certificate (token join), verifying the server
/// against `ca_pem` (CA only, no host name).
pub fn anonymous_client_config(ca_pem: &str) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = CaOnlyServerVerifier::new(ca_roots(ca_pem)?, None, &provider);
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Client side without a certificate and WITHOUT verifying the server: used
/// only to download the CA certificate at the start of a token join, which is
/// then checked against the SHA-256 the token carries before anything is
/// trusted or any secret is sent.
pub fn bootstrap_client_config() -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = CaOnlyServerVerifier {
        roots: None,
        pin: None,
        algorithms: provider.signature_verification_algorithms,
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Client side: present `bundle`, trust only its CA, no host-name check,
/// optionally pin the server leaf's fingerprint.
/// Returned by value because reqwest takes an owned config; wrap it in an
/// `Arc` for tokio-rustls.
pub fn client_config(bundle: &Bundle, pin: Option<Fingerprint>) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = CaOnlyServerVerifier::new(ca_roots(&bundle.ca_pem)?, pin, &provider);
    let (certs, key) = leaf_and_key(bundle)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)?;
    Ok(config)
}

/// The server presented a valid chain but not the pinned leaf.
#[derive(Debug, thiserror::Error)]
#[error("server certificate fingerprint {got} does not match the pinned {expected}")]
pub struct PinMismatch {
    /// The pinned fingerprint.
    pub expected: Fingerprint,
    /// What the server presented.
    pub got: Fingerprint,
}

/// Verifies a server chain against the decnet CA (validity, signatures,
/// serverAuth EKU), deliberately without a host-name check, then the pin.
#[derive(Debug)]
pub struct CaOnlyServerVerifier {
    /// `None` only for the join bootstrap (see [`bootstrap_client_config`]).
    roots: Option<RootCertStore>,
    pin: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl CaOnlyServerVerifier {
    /// A verifier trusting `roots`, optionally pinning the leaf.
    pub fn new(roots: RootCertStore, pin: Option<Fingerprint>, provider: &CryptoProvider) -> Self {
        CaOnlyServerVerifier {
            roots: Some(roots),
            pin,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for CaOnlyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        if let Some(expected) = self.pin {
            let got = Fingerprint::of_der(end_entity);
            if got != expected {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(PinMismatch { expected, got })),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
