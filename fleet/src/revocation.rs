//! The deny list as a CA-signed CRL for the workers, and rotation of the
//! master's own certificate.
//!
//! The CRL number is the number of revocations ever recorded: it only
//! grows, it is the same on every master daemon sharing one database, and a
//! worker takes a list only when its number is higher than the one it holds.
//! The list names every revoked certificate that has not expired yet.

use std::path::Path;
use std::sync::RwLock;

use decnet_pki::{
    Bundle, BundleKind, CaLayout, CertificateAuthority, LeafSpec, PeerIdentity, RevocationList,
    RevokedSerial, Role,
};
use sqlx::Row;

use crate::db::{DbError, FleetDb, insert_certificate, revoke, unix_now};
use crate::model::{CertRecord, CertRole};

/// How long a published CRL says it is good for (workers keep using the
/// last one they have after that; rustls does not enforce nextUpdate here).
pub const CRL_LIFETIME: time::Duration = time::Duration::days(7);

impl FleetDb {
    /// How many revocations were ever recorded (the CRL number).
    pub async fn revocation_count(&self) -> Result<u64, DbError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM revoked_certificates")
            .fetch_one(self.pool())
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The serials of revoked certificates that have not expired.
    pub async fn revoked_serials(&self) -> Result<Vec<RevokedSerial>, DbError> {
        let rows = sqlx::query(
            "SELECT c.serial, r.revoked_at FROM revoked_certificates r \
             JOIN certificates c ON c.fingerprint = r.fingerprint \
             WHERE c.not_after > $1 ORDER BY r.revoked_at, c.serial",
        )
        .bind(unix_now())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let at: i64 = r.try_get(1)?;
                Ok(RevokedSerial {
                    serial_hex: r.try_get(0)?,
                    revoked_at: time::OffsetDateTime::from_unix_timestamp(at)
                        .map_err(|_| DbError::Corrupt("revoked_certificates.revoked_at"))?,
                })
            })
            .collect()
    }

    /// Record the master's own certificate in the ledger (at `ca init`).
    pub async fn record_master_certificate(&self, cert: &CertRecord) -> Result<(), DbError> {
        let mut tx = self.write_tx().await?;
        insert_certificate(&mut tx, cert).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Why a CRL could not be published.
#[derive(Debug, thiserror::Error)]
pub enum CrlPublishError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Signing failed.
    #[error(transparent)]
    Ca(#[from] decnet_pki::CaError),
}

/// Keeps the master's current CRL: rebuilt and re-signed when the number of
/// revocations changed, or the set of trusted CAs did (during a CA
/// rotation, each trusted CA signs a list of its own).
#[derive(Debug, Default)]
pub struct CrlPublisher {
    current: RwLock<Option<(RevocationList, Vec<String>)>>,
    checked: std::sync::Mutex<Option<std::time::Instant>>,
}

impl CrlPublisher {
    /// An empty publisher (call [`refresh`](Self::refresh) before serving).
    pub fn new() -> Self {
        Self::default()
    }

    /// The CRL in force.
    pub fn current(&self) -> Option<RevocationList> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(c, _)| c.clone())
    }

    /// The number of the CRL in force.
    pub fn number(&self) -> Option<u64> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(c, _)| c.number())
    }

    /// How long ago the deny list was last read and the list in force
    /// found up to date (`None`: never). What trusts the list's number to
    /// say "nothing was revoked since" must not once this grows.
    pub fn checked_ago(&self) -> Option<std::time::Duration> {
        self.checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|at| at.elapsed())
    }

    fn mark_checked(&self, at: std::time::Instant) {
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    /// Rebuild the CRL when the deny list grew or the trusted CAs `cas`
    /// changed; returns the new one if it changed.
    pub async fn refresh(
        &self,
        db: &FleetDb,
        cas: &[&CertificateAuthority],
    ) -> Result<Option<RevocationList>, CrlPublishError> {
        let number = db.revocation_count().await?;
        // The deny list was read: anything revoked until now is in `number`.
        let read_at = std::time::Instant::now();
        let signers: Vec<String> = cas.iter().map(|c| c.fingerprint().to_hex()).collect();
        {
            let held = self.current.read().unwrap_or_else(|p| p.into_inner());
            if let Some((c, s)) = held.as_ref()
                && c.number() == number
                && *s == signers
            {
                drop(held);
                self.mark_checked(read_at);
                return Ok(None);
            }
        }
        let serials = db.revoked_serials().await?;
        let next_update = time::OffsetDateTime::now_utc() + CRL_LIFETIME;
        let mut lists = Vec::with_capacity(cas.len());
        for ca in cas {
            lists.push(ca.issue_crl(&serials, number, next_update)?);
        }
        let crl = RevocationList::combine(lists)
            .map_err(|_| CrlPublishError::Ca(decnet_pki::CaError::BadSerial))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some((crl.clone(), signers));
        self.mark_checked(read_at);
        Ok(Some(crl))
    }
}

/// Why the master's certificate could not be rotated.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The current master bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] decnet_pki::BundleError),
    /// Issuing failed.
    #[error(transparent)]
    Ca(#[from] decnet_pki::CaError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The new certificate does not read back.
    #[error(transparent)]
    Identity(#[from] decnet_pki::IdentityError),
}

/// The outcome of a rotation.
#[derive(Clone, Debug)]
pub struct Rotated {
    /// Fingerprint of the new master certificate.
    pub new_fingerprint: String,
    /// Fingerprint of the replaced one (now revoked).
    pub old_fingerprint: String,
}

/// Replace the master's own certificate (`decnet ca rotate-master`): a new
/// leaf with the old one's SANs (or `sans` when given), written as one
/// unit; the old one revoked. Workers accept the new one at once — they
/// check the master's role, not its fingerprint — and refuse the old one
/// as soon as they hold the next CRL.
pub async fn rotate_master(
    ca: &CertificateAuthority,
    layout: &CaLayout,
    db: &FleetDb,
    sans: Option<&[String]>,
) -> Result<Rotated, RotateError> {
    let dir = layout.master_dir();
    let old = Bundle::load(&dir, BundleKind::Master)?;
    let sans = match sans {
        Some(s) => s.to_vec(),
        None => decnet_pki::ca::leaf_sans(&old.cert_pem).unwrap_or_default(),
    };
    let leaf = ca.issue(&LeafSpec::for_role(&Role::Master, &sans))?;
    let new = Bundle::from_issued(BundleKind::Master, &leaf, ca.trust_pem())?;
    new.verify(&Role::Master)?;
    let old_id = PeerIdentity::from_pem(&old.cert_pem)?;
    let old_fp = old_id.fingerprint.to_hex();
    let master = decnet_pki::MASTER_CN;
    let old_in_ledger = db.certificate(&old_fp).await?.is_some();
    let mut tx = db.write_tx().await?;
    if !old_in_ledger {
        insert_certificate(
            &mut tx,
            &CertRecord {
                fingerprint: old_fp.clone(),
                host: master.into(),
                role: CertRole::Master,
                serial: old_id.serial.clone(),
                not_after: old_id.not_after.unix_timestamp(),
                ca: None,
            },
        )
        .await?;
    }
    insert_certificate(
        &mut tx,
        &CertRecord::of_leaf(&leaf, master, CertRole::Master),
    )
    .await?;
    revoke(
        &mut tx,
        &old_fp,
        master,
        CertRole::Master,
        "master certificate rotated",
    )
    .await?;
    // The new bundle goes on disk before the revocation is committed: a
    // failure here leaves the old certificate current and unrevoked.
    new.write(&dir)?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(Rotated {
        new_fingerprint: leaf.fingerprint.to_hex(),
        old_fingerprint: old_fp,
    })
}

/// Whether the master bundle in `dir` differs from `fingerprint` (for a
/// running daemon picking up a rotation).
pub fn master_bundle_changed(dir: &Path, fingerprint: &decnet_pki::Fingerprint) -> Option<Bundle> {
    // The certificate file alone first: the whole bundle (its key parsed
    // and matched) only when that changed.
    if Bundle::certificate_fingerprint(dir, BundleKind::Master).as_ref() == Some(fingerprint) {
        return None;
    }
    let b = Bundle::load(dir, BundleKind::Master).ok()?;
    (b.identity.fingerprint != *fingerprint && b.verify(&Role::Master).is_ok()).then_some(b)
}
