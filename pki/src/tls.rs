//! rustls configurations for every decnet connection, and the checks both
//! ends run on each other.
//!
//! * Servers ([`server_config`]) present their leaf and verify the client's
//!   chain against the CA and the CRL: a missing (unless
//!   [`ClientAuth::Optional`]), foreign, expired or revoked client
//!   certificate fails the handshake. The *role* of the client is checked by
//!   the serving layer's middleware, per route.
//! * Clients ([`client_config`]) present their leaf and verify the server
//!   with [`RoleVerifier`]: chain to the CA (no host-name check: workers enroll
//!   with arbitrary SANs), not revoked, and **the role the client expected**
//!   ([`ExpectedServer`]) — every leaf carries serverAuth, so the chain alone
//!   proves nothing: a worker's certificate chains too. Optional pins
//!   (fingerprints) narrow it further. This is the one server verifier of
//!   the workspace; no client builds its own.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::bundle::Bundle;
use crate::crl::RevocationList;
use crate::fingerprint::Fingerprint;
use crate::identity::PeerIdentity;
use crate::provider::crypto_provider;
use crate::role::Role;

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

/// The leaf chain and private key of a bundle, as rustls takes them.
pub(crate) fn leaf_and_key(
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

/// The bundle's leaf and key as a rustls [`CertifiedKey`](rustls::sign::CertifiedKey);
/// refuses a key that does not belong to the certificate.
pub(crate) fn certified_key(bundle: &Bundle) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let (certs, key) = leaf_and_key(bundle)?;
    let ck = rustls::sign::CertifiedKey::from_der(certs, key, &crypto_provider())?;
    ck.keys_match()?;
    Ok(Arc::new(ck))
}

/// Whether a server requires client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a valid certificate (every daemon).
    Required,
    /// A certificate is verified when presented, but not required: only the
    /// master's control API, whose `/join` routes admit workers that have no
    /// certificate yet.
    Optional,
    /// No client certificate is asked for: only the master's web console,
    /// whose browsers prove who they are with a session instead (a
    /// certificate request would make them prompt for one).
    None,
}

/// Server side: present `bundle`'s leaf; verify client certificates against
/// its CA and, when given, the CRL.
pub fn server_config(
    bundle: &Bundle,
    crl: Option<&RevocationList>,
    auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let roots = Arc::new(ca_roots(&bundle.ca_pem)?);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if let Some(crl) = crl {
        builder = builder
            .with_crls(crl.ders())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    if auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    let resolver = rustls::sign::SingleCertAndKey::from(certified_key(bundle)?);
    let versions =
        ServerConfig::builder_with_provider(provider).with_protocol_versions(PROTOCOL_VERSIONS)?;
    let config = if auth == ClientAuth::None {
        versions
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver))
    } else {
        versions
            .with_client_cert_verifier(Arc::new(FlatChainClientVerifier(builder.build()?)))
            .with_cert_resolver(Arc::new(resolver))
    };
    Ok(Arc::new(config))
}

/// Who a client expects to find on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedServer {
    /// The role the server's certificate must name.
    pub role: Role,
    /// When not empty, the server's leaf must be one of these (the master's
    /// recorded fingerprints of a worker).
    pub pins: Vec<Fingerprint>,
}

impl ExpectedServer {
    /// Expect `role`, no pin.
    pub fn role(role: Role) -> Self {
        ExpectedServer {
            role,
            pins: Vec::new(),
        }
    }

    /// Expect the master (every worker→master connection).
    pub fn master() -> Self {
        Self::role(Role::Master)
    }

    /// Also require one of `pins`.
    pub fn pinned(mut self, pins: impl IntoIterator<Item = Fingerprint>) -> Self {
        self.pins = pins.into_iter().collect();
        self
    }
}

/// Client side: present `bundle`, verify the server with [`RoleVerifier`].
/// Returned by value because reqwest takes an owned config; wrap it in an
/// `Arc` for tokio-rustls.
pub fn client_config(
    bundle: &Bundle,
    crl: Option<&RevocationList>,
    expected: &ExpectedServer,
) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = RoleVerifier::new(&bundle.ca_pem, crl, expected.clone(), &provider)?;
    let (certs, key) = leaf_and_key(bundle)?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)?)
}

/// How many servers a [`fleet_client_config`] keeps TLS sessions of, for
/// resumption: every host of a large fleet (10 000) with room to spare.
pub const FLEET_SESSIONS: usize = 16_384;

/// TLS 1.3 tickets rustls keeps per server: its memory cache is sized in
/// tickets (`in_memory_sessions(n)` remembers `n / 8` servers), so the
/// fleet cache is sized `FLEET_SESSIONS * TICKETS_PER_SERVER`. Sized in
/// servers by mistake, a fan-out over more than 2 048 hosts resumed nothing.
const TICKETS_PER_SERVER: usize = 8;

/// Client side for dialing many servers with ONE configuration (the
/// master's fan-out to its workers): present `bundle`, and verify each
/// server against the [`ExpectedServer`] that `directory` holds for the
/// TLS server name the connection was opened for (see [`ServerDirectory`]).
/// Sessions are kept for resumption ([`FLEET_SESSIONS`]); SNI is not sent
/// (the names are the client's own, meaningless to a server).
pub fn fleet_client_config(
    bundle: &Bundle,
    crl: Option<&RevocationList>,
    directory: Arc<ServerDirectory>,
) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = RoleVerifier::with_directory(&bundle.ca_pem, crl, directory, &provider)?;
    let (certs, key) = leaf_and_key(bundle)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)?;
    config.resumption = Resumption::in_memory_sessions(FLEET_SESSIONS * TICKETS_PER_SERVER);
    config.enable_sni = false;
    Ok(config)
}

/// The expected identity of every server a [`fleet_client_config`] dials,
/// by the TLS server name the connection is opened for.
///
/// Why: one TLS configuration (and one connection pool) serves the whole
/// fleet only if the verifier can tell, per connection, which host it is
/// meant to be talking to. The client gives each (expected identity,
/// address) its own synthetic name under `decnet.invalid` (a hash of the
/// role, the pins and the address), dials that name, and the verifier looks
/// the expectation up by it. Because the pins are part of the name, a TLS
/// session resumed for a name was verified against exactly the same
/// expectation, and a change of pins (a renewal, a re-enrollment) opens a
/// new name: nothing verified under old pins is reused. A name that is not
/// in the directory is refused (fail closed).
#[derive(Debug, Default)]
pub struct ServerDirectory {
    names: RwLock<HashMap<String, ExpectedServer>>,
}

/// The domain of [`ServerDirectory`] names (reserved: never resolvable).
pub const DIRECTORY_DOMAIN: &str = "decnet.invalid";

impl ServerDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// The server name under which `expected`, reached at `address` (where
    /// the client dials it: address and port), is registered (registering
    /// it if new): `s<32 hex>.decnet.invalid`.
    pub fn register(&self, expected: &ExpectedServer, address: &str) -> String {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(expected.role.cn().as_bytes());
        ctx.update(b"\0");
        let mut pins: Vec<&Fingerprint> = expected.pins.iter().collect();
        pins.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for pin in pins {
            ctx.update(pin.as_bytes());
        }
        ctx.update(b"\0");
        ctx.update(address.as_bytes());
        let digest = ctx.finish();
        let name = format!(
            "s{}.{DIRECTORY_DOMAIN}",
            hex::encode(&digest.as_ref()[..16])
        );
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        names
            .entry(name.clone())
            .or_insert_with(|| expected.clone());
        name
    }

    /// The expectation registered under `name`, if any.
    pub fn lookup(&self, name: &str) -> Option<ExpectedServer> {
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        names.get(name).cloned()
    }

    /// How many names are registered.
    pub fn len(&self) -> usize {
        self.names.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no name is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Client side without a certificate (the POST of a token join), verifying
/// the server with [`RoleVerifier`] against `ca_pem`.
pub fn anonymous_client_config(
    ca_pem: &str,
    expected: &ExpectedServer,
) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier = RoleVerifier::new(ca_pem, None, expected.clone(), &provider)?;
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
    bootstrap_client_config_noting(None)
}

/// Who answered a bootstrap connection: the CN its certificate names.
/// Nothing is trusted yet at that point, but who answered says whether it
/// was the master at all (a join pointed at an agent's port is told so).
#[derive(Debug, Default)]
pub struct PresentedServer(std::sync::Mutex<Option<String>>);

impl PresentedServer {
    /// The CN the server presented, once a handshake got that far.
    pub fn cn(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// [`bootstrap_client_config`], noting the server's CN in `seen`.
pub fn bootstrap_client_config_noting(
    seen: Option<Arc<PresentedServer>>,
) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedServer(
            provider.signature_verification_algorithms,
            seen,
        )))
        .with_no_client_auth())
}

/// The server presented a valid chain but not the pinned leaf.
#[derive(Debug, thiserror::Error)]
#[error("server certificate fingerprint {got} is not the recorded one")]
pub struct PinMismatch {
    /// What the server presented.
    pub got: Fingerprint,
}

/// The server presented a valid chain, but for another role than expected
/// (e.g. a worker's certificate where the master was expected).
#[derive(Debug, thiserror::Error)]
#[error("server certificate names {got}, expected {expected}")]
pub struct UnexpectedServer {
    /// The CN that was expected.
    pub expected: String,
    /// The CN the certificate names (or why none could be read).
    pub got: String,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The most certificates a peer may send besides its own leaf.
///
/// decnet's CA is flat: a CA the peer trusts signs every leaf itself, and
/// decnet sends the leaf alone (one more is allowed for a TLS stack that
/// sends its CA along). Path building tries the certificates a peer sends
/// in every order that names match, before anything is authenticated:
/// ten hostile certificates sharing one name cost 60–140 ms of CPU per
/// handshake (webpki stops at 200 000 tries), on a thread that serves
/// other connections meanwhile. Anyone who can open a connection could
/// have done that at will; a longer chain is now refused before a path is
/// built, on both ends of every connection.
pub const MAX_INTERMEDIATES: usize = 1;

/// A peer sent more certificates than a flat CA needs ([`MAX_INTERMEDIATES`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "the peer sent {sent} certificates besides its own; at most {MAX_INTERMEDIATES} accepted (a decnet CA signs every certificate itself)"
)]
pub struct ChainTooLong {
    /// How many it sent.
    pub sent: usize,
}

/// Refuse a chain longer than a flat CA needs, before any path building.
fn refuse_long_chain(intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
    if intermediates.len() > MAX_INTERMEDIATES {
        return Err(other(ChainTooLong {
            sent: intermediates.len(),
        }));
    }
    Ok(())
}

/// webpki's client verification behind [`refuse_long_chain`]; everything
/// else is webpki's as it is.
#[derive(Debug)]
struct FlatChainClientVerifier(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for FlatChainClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        refuse_long_chain(intermediates)?;
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }
}

/// Verifies a server: chain to the decnet CA (validity, signatures, serverAuth
/// EKU), not revoked by the CRL, then the expected role, then the pins.
///
/// The chain and revocation checks are webpki's (through rustls'
/// [`WebPkiServerVerifier`]); its host-name check, which comes last, is the
/// one result we discard — decnet identifies servers by the role in their CN,
/// which we check instead.
#[derive(Debug)]
pub struct RoleVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    expected: Expectation,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Where a [`RoleVerifier`] takes the identity it requires from.
#[derive(Debug)]
enum Expectation {
    /// One server, always the same.
    Fixed(ExpectedServer),
    /// Per connection, by server name (see [`ServerDirectory`]).
    Directory(Arc<ServerDirectory>),
}

/// The name passed to webpki, whose name check we ignore (see [`RoleVerifier`]).
const UNCHECKED_NAME: &str = "decnet.invalid";

impl RoleVerifier {
    /// A verifier trusting `ca_pem`, refusing what `crl` revokes, requiring `expected`.
    pub fn new(
        ca_pem: &str,
        crl: Option<&RevocationList>,
        expected: ExpectedServer,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        Self::build(ca_pem, crl, Expectation::Fixed(expected), provider)
    }

    /// A verifier trusting `ca_pem`, refusing what `crl` revokes, requiring
    /// of each server what `directory` holds for the name it was dialed by.
    pub fn with_directory(
        ca_pem: &str,
        crl: Option<&RevocationList>,
        directory: Arc<ServerDirectory>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        Self::build(ca_pem, crl, Expectation::Directory(directory), provider)
    }

    fn build(
        ca_pem: &str,
        crl: Option<&RevocationList>,
        expected: Expectation,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let roots = Arc::new(ca_roots(ca_pem)?);
        let mut builder = WebPkiServerVerifier::builder_with_provider(roots, provider.clone());
        if let Some(crl) = crl {
            builder = builder
                .with_crls(crl.ders())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        Ok(RoleVerifier {
            webpki: builder.build()?,
            expected,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for RoleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let looked_up;
        let expected = match &self.expected {
            Expectation::Fixed(e) => e,
            Expectation::Directory(directory) => {
                looked_up = match server_name {
                    ServerName::DnsName(n) => directory.lookup(n.as_ref()),
                    _ => None,
                }
                .ok_or_else(|| {
                    other(UnexpectedServer {
                        expected: "a server registered with this client".into(),
                        got: format!("a connection to {}", server_name.to_str()),
                    })
                })?;
                &looked_up
            }
        };
        refuse_long_chain(intermediates)?;
        let name = ServerName::try_from(UNCHECKED_NAME)
            .map_err(|_| rustls::Error::General("name".into()))?;
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
        {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let expected_cn = expected.role.cn();
        let identity = PeerIdentity::from_der(end_entity).map_err(|e| {
            other(UnexpectedServer {
                expected: expected_cn.clone(),
                got: e.to_string(),
            })
        })?;
        if identity.role != expected.role {
            return Err(other(UnexpectedServer {
                expected: expected_cn,
                got: identity.cn,
            }));
        }
        if !expected.pins.is_empty() && !expected.pins.contains(&identity.fingerprint) {
            return Err(other(PinMismatch {
                got: identity.fingerprint,
            }));
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

/// Accepts any server certificate (still checking the handshake signature):
/// only for [`bootstrap_client_config`].
#[derive(Debug)]
struct UnverifiedServer(WebPkiSupportedAlgorithms, Option<Arc<PresentedServer>>);

impl ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(seen) = &self.1 {
            *seen.0.lock().unwrap_or_else(|p| p.into_inner()) =
                crate::PeerIdentity::from_der(end_entity).ok().map(|p| p.cn);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// When an error (chain) is a refusal of the server's identity by
/// [`RoleVerifier`] (another role or host, or not the pinned certificate),
/// its plain message — what an operator needs, instead of the nested
/// TLS-library wording.
pub fn identity_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) =
            s.downcast_ref::<rustls::Error>()
        {
            if let Some(u) = o.0.downcast_ref::<UnexpectedServer>() {
                return Some(u.to_string());
            }
            if let Some(p) = o.0.downcast_ref::<PinMismatch>() {
                return Some(p.to_string());
            }
        }
        cur = match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    None
}

/// Whether an error (chain) says the server was refused by [`RoleVerifier`]
/// for naming another role.
pub fn is_unexpected_server(e: &(dyn std::error::Error + 'static)) -> bool {
    find_in_chain::<UnexpectedServer>(e)
}

/// Whether an error (chain) is a [`ChainTooLong`] refusal.
pub fn is_chain_too_long(e: &(dyn std::error::Error + 'static)) -> bool {
    find_in_chain::<ChainTooLong>(e)
}

/// Whether an error (chain) is a [`PinMismatch`].
pub fn is_pin_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    find_in_chain::<PinMismatch>(e)
}

fn find_in_chain<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = cur {
        if s.downcast_ref::<T>().is_some() {
            return true;
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) =
            s.downcast_ref::<rustls::Error>()
            && o.0.downcast_ref::<T>().is_some()
        {
            return true;
        }
        // `io::Error::source` skips the error it wraps: look inside.
        cur = match s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => s.source(),
        };
    }
    false
}
