//! The live TLS identity of a daemon, handed out through one watch channel.
//!
//! A daemon's bundle (leaf, key, CA) and the CRL it enforces change while it
//! runs: renewal replaces the bundle, the master publishes new CRLs. Every
//! consumer — the server runner, the heartbeat and renewal clients, the
//! forwarder, the updater's probe — reads the current [`TlsMaterial`] from a
//! [`MaterialSource`] instead of re-reading files, and rebuilds its
//! connections when it changes. A new material is checked before anyone
//! sees it (the key belongs to the leaf, the configs build), so a bad
//! renewal can never take a working daemon down.

use std::sync::Arc;

use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;

use crate::bundle::Bundle;
use crate::crl::{CrlError, RevocationList};
use crate::tls::{self, ClientAuth, ExpectedServer, TlsError};

/// A bundle, the CRL enforced with it, and the server configs built from them.
pub struct TlsMaterial {
    bundle: Bundle,
    crl: Option<RevocationList>,
    /// The subjects of the trusted CAs (what a peer's `issuer` must be).
    trusted_issuers: Vec<String>,
    server_required: Arc<ServerConfig>,
    server_optional: Arc<ServerConfig>,
    server_none: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("bundle", &self.bundle)
            .field("crl", &self.crl)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Check and build: fails when the key does not match the leaf or a
    /// config cannot be built.
    pub fn new(bundle: Bundle, crl: Option<RevocationList>) -> Result<Self, TlsError> {
        let server_required = tls::server_config(&bundle, crl.as_ref(), ClientAuth::Required)?;
        let server_optional = tls::server_config(&bundle, crl.as_ref(), ClientAuth::Optional)?;
        let server_none = tls::server_config(&bundle, crl.as_ref(), ClientAuth::None)?;
        let trusted_issuers = crate::trust::certificates(&bundle.ca_pem)
            .unwrap_or_default()
            .iter()
            .filter_map(|der| {
                use x509_parser::prelude::{FromDer, X509Certificate};
                X509Certificate::from_der(der)
                    .ok()
                    .map(|(_, c)| c.subject().to_string())
            })
            .collect();
        Ok(TlsMaterial {
            bundle,
            crl,
            trusted_issuers,
            server_required,
            server_optional,
            server_none,
        })
    }

    /// The bundle.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The CRL in force, if any.
    pub fn crl(&self) -> Option<&RevocationList> {
        self.crl.as_ref()
    }

    /// Whether a peer admitted at its handshake would still be: its
    /// certificate is not revoked, and its CA is still trusted (a CA
    /// rotation's finish or abort drops one). A server ends the open
    /// connections of a peer this turns false for.
    pub fn still_admits(&self, peer: &crate::PeerIdentity) -> bool {
        !self.crl.as_ref().is_some_and(|crl| crl.revokes(peer))
            && self.trusted_issuers.contains(&peer.issuer)
    }

    /// The server config for this material.
    pub fn server_config(&self, auth: ClientAuth) -> Arc<ServerConfig> {
        match auth {
            ClientAuth::Required => self.server_required.clone(),
            ClientAuth::Optional => self.server_optional.clone(),
            ClientAuth::None => self.server_none.clone(),
        }
    }

    /// A client config expecting `expected` on the other end.
    pub fn client_config(&self, expected: &ExpectedServer) -> Result<ClientConfig, TlsError> {
        tls::client_config(&self.bundle, self.crl.as_ref(), expected)
    }
}

/// Why a material update was refused (the old one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    /// The new bundle or CRL does not build a working TLS config.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The CRL is not acceptable.
    #[error(transparent)]
    Crl(#[from] CrlError),
    /// The new bundle is for another identity or CA.
    #[error("the new bundle is for {got}, not {expected}")]
    OtherIdentity {
        /// CN in force.
        expected: String,
        /// CN offered.
        got: String,
    },
}

/// The one place a daemon's current [`TlsMaterial`] lives. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MaterialSource {
    tx: Arc<watch::Sender<Arc<TlsMaterial>>>,
}

impl MaterialSource {
    /// A source starting with `material`.
    pub fn new(material: TlsMaterial) -> Self {
        MaterialSource {
            tx: Arc::new(watch::Sender::new(Arc::new(material))),
        }
    }

    /// Build the material from `bundle` and `crl` and start a source with it.
    pub fn from_parts(bundle: Bundle, crl: Option<RevocationList>) -> Result<Self, TlsError> {
        Ok(Self::new(TlsMaterial::new(bundle, crl)?))
    }

    /// The material in force now.
    pub fn current(&self) -> Arc<TlsMaterial> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TlsMaterial>> {
        self.tx.subscribe()
    }

    /// Switch to a renewed bundle, or to the same leaf with a new trust set
    /// (same CN; already verified and written). The CRL in force is kept.
    pub fn set_bundle(&self, bundle: Bundle) -> Result<(), MaterialError> {
        let cur = self.current();
        if bundle.identity.cn != cur.bundle.identity.cn {
            return Err(MaterialError::OtherIdentity {
                expected: cur.bundle.identity.cn.clone(),
                got: bundle.identity.cn.clone(),
            });
        }
        let next = TlsMaterial::new(bundle, cur.crl.clone())?;
        self.tx.send_replace(Arc::new(next));
        Ok(())
    }

    /// Enforce `crl` from now on, if it is newer than the one in force.
    /// Returns whether it changed anything.
    pub fn set_crl(&self, crl: RevocationList) -> Result<bool, MaterialError> {
        let cur = self.current();
        crl.newer_than(cur.crl.as_ref())?;
        if cur.crl.as_ref() == Some(&crl) {
            return Ok(false);
        }
        let next = TlsMaterial::new(cur.bundle.clone(), Some(crl))?;
        self.tx.send_replace(Arc::new(next));
        Ok(true)
    }
}
