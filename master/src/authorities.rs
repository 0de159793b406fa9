//! The CAs in force on this master: the one that signs new certificates,
//! the set every server and client trusts, and the endorsements that let a
//! host move from one set to the next (CA rotation, `decnet ca rotation`).
//!
//! On disk: the fleet's CA in `ca.crt`/`ca.key`; during a rotation its
//! successor in `rotation/ca.crt`/`rotation/ca.key` beside the two
//! endorsements (`rotation/endorsements.pem`). In the fleet database: the
//! rotation row (which way it goes). Both are read together by
//! [`Authorities::load`]; the daemon reloads them every second, so every
//! master on one database follows a rotation started on any of them (they
//! share the CA directory, as they share the CA key), and a restarted
//! master resumes it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use decnet_fleet::FleetDb;
use decnet_fleet::ca_rotation::{RotationDirection, RotationRecord};
use decnet_pki::{CaLayout, CertificateAuthority};

/// File of the two endorsements of a rotation, in the successor's directory.
pub const ENDORSEMENTS_FILE: &str = "endorsements.pem";

/// Where the successor CA of a rotation lives.
pub fn successor_layout(layout: &CaLayout) -> CaLayout {
    CaLayout::new(layout.root().join("rotation"))
}

/// The endorsements file of a rotation.
pub fn endorsements_path(layout: &CaLayout) -> PathBuf {
    successor_layout(layout).root().join(ENDORSEMENTS_FILE)
}

/// The CAs in force.
pub struct Authorities {
    /// Signs every new certificate (and carries the trust set it hands out).
    pub signing: Arc<CertificateAuthority>,
    /// Every trusted CA (each signs a revocation list of its own).
    pub trusted: Vec<Arc<CertificateAuthority>>,
    /// The digest of the trust set (announced to workers).
    pub digest: String,
    /// The rotation under way.
    pub rotation: Option<RotationRecord>,
    /// The signing CA's subject (what a peer certificate it signed names
    /// as its issuer).
    signing_subject: String,
}

impl std::fmt::Debug for Authorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorities")
            .field("signing", &self.signing.fingerprint().short())
            .field("trusted", &self.trusted.len())
            .field("rotation", &self.rotation)
            .finish()
    }
}

impl Authorities {
    /// Read the CAs and the rotation under way.
    pub async fn load(layout: &CaLayout, db: &FleetDb) -> anyhow::Result<Self> {
        let rotation = db
            .rotation()
            .await
            .context("reading the CA rotation from the fleet database")?;
        Self::load_with(layout, rotation)
    }

    /// Read the CAs for `rotation` (as read from the database).
    pub fn load_with(layout: &CaLayout, rotation: Option<RotationRecord>) -> anyhow::Result<Self> {
        let current = crate::usage::load_ca(layout)?;
        let Some(rot) = rotation else {
            return Ok(Self::single(current));
        };
        let fp = current.fingerprint().to_hex();
        if fp == rot.new_ca {
            // A finish that promoted the successor and stopped before it
            // forgot the rotation: the successor is the CA now.
            return Ok(Self::single(current));
        }
        if fp != rot.old_ca {
            anyhow::bail!(
                "the CA in {} ({}) is neither side of the rotation under way ({} -> {}); is this master's CA directory the one the fleet uses?",
                layout.root().display(),
                current.fingerprint().short(),
                &rot.old_ca[..16.min(rot.old_ca.len())],
                &rot.new_ca[..16.min(rot.new_ca.len())]
            );
        }
        let next_layout = successor_layout(layout);
        let next = CertificateAuthority::load(&next_layout).with_context(|| {
            format!(
                "loading the successor CA of the rotation from {}",
                next_layout.root().display()
            )
        })?;
        if next.fingerprint().to_hex() != rot.new_ca {
            anyhow::bail!(
                "the successor CA in {} is not the one the rotation under way names",
                next_layout.root().display()
            );
        }
        let endorsements = std::fs::read_to_string(endorsements_path(layout))
            .context("reading the rotation's endorsements")?;
        let trust = decnet_pki::trust::combine([current.cert_pem(), next.cert_pem()]);
        let digest = decnet_pki::trust::digest(&trust);
        let (signer, other) = match rot.direction {
            RotationDirection::Forward => (next, current),
            RotationDirection::Back => (current, next),
        };
        let other = Arc::new(other);
        let signing = Arc::new(signer.with_trust(trust, endorsements));
        Ok(Authorities {
            trusted: vec![signing.clone(), other],
            signing_subject: signing.subject(),
            signing,
            digest,
            rotation: Some(rot),
        })
    }

    /// One CA alone (no rotation under way).
    pub fn single(ca: CertificateAuthority) -> Self {
        let signing = Arc::new(ca);
        Authorities {
            digest: decnet_pki::trust::digest(signing.cert_pem()),
            trusted: vec![signing.clone()],
            signing_subject: signing.subject(),
            signing,
            rotation: None,
        }
    }

    /// The trusted CAs, as the revocation-list publisher takes them.
    pub fn trusted_refs(&self) -> Vec<&CertificateAuthority> {
        self.trusted.iter().map(|c| c.as_ref()).collect()
    }

    /// Whether a peer whose certificate names `issuer` should renew now: a
    /// rotation is under way and its certificate is not signed by the CA
    /// that signs now.
    pub fn should_renew(&self, issuer: &str) -> bool {
        self.rotation.is_some() && issuer != self.signing_subject
    }
}

/// The [`Authorities`] in force, replaced as a whole when a rotation moves.
#[derive(Debug)]
pub struct LiveAuthorities(RwLock<Arc<Authorities>>);

impl LiveAuthorities {
    /// Start with `a`.
    pub fn new(a: Authorities) -> Arc<Self> {
        Arc::new(LiveAuthorities(RwLock::new(Arc::new(a))))
    }

    /// The CAs in force now.
    pub fn current(&self) -> Arc<Authorities> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The CA that signs now.
    pub fn signing(&self) -> Arc<CertificateAuthority> {
        self.current().signing.clone()
    }

    /// Put `a` in force.
    pub fn replace(&self, a: Authorities) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(a);
    }
}

/// The master's own bundle, trusting exactly the CAs of `cas`: when the
/// `ca.crt` beside it names another set (a rotation began, was aborted, or
/// a master restarted in the middle of one), it is rewritten (the
/// certificate and key unchanged) so that the master's servers admit
/// clients of both CAs and its clients accept servers of both.
pub fn master_bundle_trusting(
    layout: &CaLayout,
    cas: &Authorities,
) -> anyhow::Result<decnet_pki::Bundle> {
    let mut bundle = crate::fleet_ops::master_bundle(layout)?;
    if decnet_pki::trust::digest(&bundle.ca_pem) == cas.digest {
        return Ok(bundle);
    }
    bundle.ca_pem = cas.signing.trust_pem().to_string();
    if bundle.verify(&decnet_pki::Role::Master).is_err() {
        // Its certificate is signed by a CA that is no longer trusted: a
        // finish that promoted the successor before reissuing it. The
        // operator finishes the rotation again (it reissues it).
        anyhow::bail!(
            "the master certificate in {} is not signed by a CA of the trust set in force; run `decnet ca rotation finish` again",
            layout.master_dir().display()
        );
    }
    bundle
        .write(&layout.master_dir())
        .context("writing the master's trust set")?;
    Ok(bundle)
}

/// The CA that signs now (with the trust set it hands out), for the
/// commands run on the master host that issue certificates (enroll, join
/// tokens, operators, monitors).
pub async fn signing_ca(
    layout: &CaLayout,
    db: &FleetDb,
) -> anyhow::Result<Arc<CertificateAuthority>> {
    Ok(Authorities::load(layout, db).await?.signing)
}
