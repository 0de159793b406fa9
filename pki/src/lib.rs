//! decnet PKI: the one crate that owns certificates, keys, identities and the
//! crypto provider.
//!
//! * [`ca`] creates the flat RSA CA and issues leaf certificates;
//! * [`bundle`] writes and loads key/cert/CA bundles with safe permissions;
//! * [`fingerprint`] is the lowercase hex SHA-256 of a certificate's DER;
//! * [`role`] turns a certificate CN into a [`Role`] and validates host names;
//! * [`identity`] is the verified [`PeerIdentity`] of a TLS peer;
//! * [`tls`] builds the rustls server and client configurations;
//! * [`serve`] accepts mTLS connections (handshake off the accept path, with a
//!   timeout) and serves an axum router over them;
//! * [`authz`] is the role-checking middleware every server runs.
//!
//! Every rustls object in the workspace is built with [`provider::crypto_provider`],
//! so exactly one crypto provider (aws-lc-rs) exists in the build.

pub mod authz;
pub mod bundle;
pub mod ca;
pub mod fingerprint;
pub mod identity;
pub mod provider;
pub mod random;
pub mod role;
pub mod secure_fs;
pub mod serve;
pub mod signing;
pub mod tls;

pub use authz::{AccessPolicy, Refusal, RoleSet};
pub use bundle::{Bundle, BundleError, BundleKind, CaLayout};
pub use ca::{CaError, CertificateAuthority, IssuedLeaf, LeafSpec};
pub use fingerprint::Fingerprint;
pub use identity::{IdentityError, PeerIdentity};
pub use random::random_hex;
pub use role::{HostName, HostNameError, MASTER_CN, Role, RoleError, RoleKind};
pub use serve::{AcceptOptions, MtlsListener, TlsPeer};
pub use tls::{TlsError, client_config, server_config};
