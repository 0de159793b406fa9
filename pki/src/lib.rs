//! decnet PKI: the one crate that owns certificates, keys, identities and the
//! crypto provider.
//!
//! * [`ca`] creates the flat RSA CA and issues leaf certificates;
//! * [`bundle`] writes and loads key/cert/CA bundles with safe permissions;
//! * [`fingerprint`] is the lowercase hex SHA-256 of a certificate's DER;
//! * [`role`] turns a certificate CN into a [`Role`] and validates host names;
//! * [`identity`] is the verified [`PeerIdentity`] of a TLS peer;
//! * [`tls`] builds the rustls server and client configurations, with the
//!   role-checking server verifier every client uses;
//! * [`crl`] makes and checks the CA-signed revocation lists;
//! * [`material`] is a daemon's live bundle + CRL, handed out through one
//!   watch channel so renewals and new CRLs apply without restarts;
//! * [`signing`] signs and checks release manifests;
//! * [`trust`] is the set of trusted CAs and how it may change (CA rotation).
//!
//! Serving (accept, limits, the role middleware) lives in `decnet-server`.
//!
//! Every rustls object in the workspace is built with [`provider::crypto_provider`],
//! so exactly one crypto provider (aws-lc-rs) exists in the build.

pub mod bundle;
pub mod ca;
pub mod crl;
pub mod fingerprint;
pub mod identity;
pub mod material;
pub mod provider;
pub mod random;
pub mod role;
pub mod secure_fs;
pub mod signing;
pub mod tls;
pub mod trust;

pub use bundle::{Bundle, BundleError, BundleKind, CaLayout};
pub use ca::{CaError, CertificateAuthority, IssuedLeaf, LeafSpec};
pub use crl::{CrlError, RevocationList, RevokedSerial};
pub use fingerprint::Fingerprint;
pub use identity::{IdentityError, PeerIdentity};
pub use material::{MaterialError, MaterialSource, TlsMaterial};
pub use random::random_hex;
pub use role::{HostName, HostNameError, MASTER_CN, Role, RoleError, RoleKind};
pub use tls::{
    ClientAuth, ExpectedServer, ServerDirectory, TlsError, client_config, fleet_client_config,
    server_config,
};
