//! Monitor certificates: the identities Prometheus presents to the
//! daemons' `/metrics` endpoints (`monitor@<name>`).
//!
//! They are in the certificate ledger like every other certificate (host
//! column = the CN), so they can be revoked and land in the CRL the daemons
//! enforce. Issuing a monitor again revokes its earlier certificates: one
//! name, one live certificate.

use crate::db::{DbError, FleetDb, insert_certificate, revoke_all_but};
use crate::model::{CertRecord, CertRole};

impl FleetDb {
    /// Record a newly issued monitor certificate and revoke the earlier
    /// ones of the same monitor, in one transaction. Returns the revoked
    /// fingerprints.
    pub async fn record_monitor(&self, cert: &CertRecord) -> Result<Vec<String>, DbError> {
        let mut tx = self.write_tx().await?;
        let revoked = revoke_all_but(
            &mut tx,
            &cert.host,
            Some(CertRole::Monitor),
            &[cert.fingerprint.as_str()],
            "replaced by a new monitor certificate",
        )
        .await?;
        insert_certificate(&mut tx, cert).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Revoke every certificate of the monitor whose CN is `cn`. Returns the
    /// revoked fingerprints (empty: none was live).
    pub async fn revoke_monitor(&self, cn: &str) -> Result<Vec<String>, DbError> {
        let mut tx = self.write_tx().await?;
        let revoked = revoke_all_but(
            &mut tx,
            cn,
            Some(CertRole::Monitor),
            &[],
            "monitor revoked by the operator",
        )
        .await?;
        tx.commit().await?;
        Ok(revoked)
    }
}
