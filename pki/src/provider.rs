//! The single crypto provider of the build.
//!
//! rustls panics at run time when two providers are compiled in and a builder
//! is used without an explicit one. Every config in this workspace is built
//! with [`crypto_provider`], and binaries also call [`install_default`] so that
//! third-party code using the process default gets the same provider.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

/// The aws-lc-rs provider, shared.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Install aws-lc-rs as the process-wide default provider (idempotent).
pub fn install_default() {
    // An Err only means a default is already installed, which is fine.
    let _ = CryptoProvider::install_default(rustls::crypto::aws_lc_rs::default_provider());
}
