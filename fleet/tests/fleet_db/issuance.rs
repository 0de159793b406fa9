//! Issuance transactions with a real CA, on whichever database the caller
//! opened: renewal retires what it replaces, a stolen key stops renewing,
//! and renew/reissue races always end with one current certificate.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use decnet_fleet::enrollment::{EnrollRequest, enroll};
use decnet_fleet::{CrlPublisher, FleetDb, PeerRefusal, RenewPolicy, Standing};
use decnet_pki::{CaLayout, CertificateAuthority, PeerIdentity, RevocationList};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("CA"))
}

fn policy(min_interval: u64, grace: u64) -> RenewPolicy {
    RenewPolicy {
        validity: Duration::from_secs(3600),
        min_interval: Duration::from_secs(min_interval),
        grace: Duration::from_secs(grace),
    }
}

/// Enroll `host` (agent + updater); returns the agent's and updater's identities.
async fn enrolled(
    db: &FleetDb,
    layout: &CaLayout,
    host: &str,
    reissue: bool,
) -> (PeerIdentity, PeerIdentity) {
    let out = enroll(
        ca(),
        layout,
        db,
        &EnrollRequest {
            host: host.into(),
            address: Some("10.1.1.1".into()),
            updater: true,
            reissue,
            ..EnrollRequest::default()
        },
    )
    .await
    .expect("enroll");
    let load = |dir: &std::path::Path, cert: &str| {
        PeerIdentity::from_pem(&std::fs::read_to_string(dir.join(cert)).unwrap()).unwrap()
    };
    (
        load(&out.agent_bundle_dir, "worker.crt"),
        load(out.updater_bundle_dir.as_ref().unwrap(), "updater.crt"),
    )
}

fn csr(cn: &str) -> String {
    decnet_pki::ca::generate_csr(cn).unwrap().1
}

/// Every certificate of `host` that is not revoked.
async fn unrevoked(db: &FleetDb, host: &str) -> Vec<String> {
    db.certificates_of(host)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, revoked)| !revoked)
        .map(|(c, _)| c.fingerprint)
        .collect()
}

pub async fn all(db: &FleetDb) {
    let dir = tempfile::tempdir().unwrap();
    let layout = CaLayout::new(dir.path().join("ca"));
    renewal_retires_what_it_replaces(db, &layout).await;
    a_newer_renewal_forgets_the_pending_one(db, &layout).await;
    renewals_are_rate_limited_per_host(db, &layout).await;
    renew_reissue_race_leaves_one_current_certificate(db, &layout).await;
    the_crl_lists_what_was_revoked(db).await;
    an_operator_renewal_takes_on_first_use(db).await;
}

/// Whether operator `op-renew`'s certificate `fp` is accepted now.
async fn stands(db: &FleetDb, fp: &str) -> bool {
    db.operator_standing("op-renew", fp)
        .await
        .unwrap()
        .is_some()
}

/// An operator's renewal keeps the certificate it was asked with until the
/// new one is presented (a lost answer locks nobody out); the next renewal
/// revokes an unused one; presenting the new one revokes the older ones,
/// even within the second of their issue; a renewal first presented too
/// late is refused and revoked, the certificate it replaced kept.
async fn an_operator_renewal_takes_on_first_use(db: &FleetDb) {
    use decnet_fleet::join::JoinRequest;
    use decnet_fleet::operators::{RENEWAL_TAKE_WITHIN, join_operator, renew_operator};
    let name = decnet_pki::HostName::new("op-renew").unwrap();
    let (token, _) = db
        .add_operator(
            ca(),
            &name,
            "viewer",
            &[],
            Duration::from_secs(600),
            "local:test",
        )
        .await
        .unwrap();
    let joined = join_operator(
        db,
        ca(),
        &JoinRequest {
            token_id: token.id.clone(),
            secret: token.secret.clone(),
            role: "operator".into(),
            csr: csr("op-renew"),
            host: None,
            port: None,
        },
        "127.0.0.1".parse().unwrap(),
        "test",
        None,
    )
    .await
    .unwrap();
    let a = joined.fingerprint;
    assert!(stands(db, &a).await);
    // The answer of this renewal is lost: the certificate it was asked
    // with still works, and renews again.
    let lost = renew_operator(db, ca(), "op-renew", &a, &csr("x"))
        .await
        .unwrap();
    assert!(
        stands(db, &a).await,
        "a lost renewal answer locked the operator out"
    );
    let b = renew_operator(db, ca(), "op-renew", &a, &csr("x"))
        .await
        .unwrap();
    assert!(
        !stands(db, &lost.fingerprint).await,
        "the lost answer's certificate is still accepted"
    );
    assert!(stands(db, &a).await);
    // The renewed one presented (the same second as the renewals, often):
    // the one it replaces is refused from now on.
    assert!(stands(db, &b.fingerprint).await);
    assert!(
        !stands(db, &a).await,
        "the replaced certificate is still accepted"
    );
    assert!(stands(db, &b.fingerprint).await);
    // A renewal nobody presented in time (a thief's spare) is refused and
    // revoked when it shows up; the certificate it was asked with stays.
    let late = renew_operator(db, ca(), "op-renew", &b.fingerprint, &csr("x"))
        .await
        .unwrap();
    sqlx::query(
        "UPDATE certificates SET issued_at = issued_at - $1 WHERE host = 'operator@op-renew'",
    )
    .bind(RENEWAL_TAKE_WITHIN + 60)
    .execute(db.pool())
    .await
    .unwrap();
    assert!(
        !stands(db, &late.fingerprint).await,
        "a late renewal was accepted"
    );
    assert!(
        stands(db, &b.fingerprint).await,
        "a late renewal cost the operator its certificate"
    );
    assert!(!stands(db, &late.fingerprint).await);
    assert!(
        !unrevoked(db, "operator@op-renew")
            .await
            .contains(&late.fingerprint)
    );
}

async fn renewal_retires_what_it_replaces(db: &FleetDb, layout: &CaLayout) {
    let (old, _) = enrolled(db, layout, "rn-a", false).await;
    let p = policy(0, 3600);
    assert_eq!(
        db.authenticate(&old, p.grace).await.unwrap(),
        Standing::Current
    );

    // The renewal is pending: the old certificate is still current.
    let renewed = db.renew(ca(), &old, &csr("rn-a"), &p).await.unwrap();
    let new = PeerIdentity::from_pem(&renewed.cert_pem).unwrap();
    let h = db.host("rn-a").await.unwrap().unwrap();
    assert_eq!(
        h.agent_fingerprint.as_deref(),
        Some(old.fingerprint.to_hex().as_str())
    );
    assert_eq!(
        h.agent_pending.as_deref(),
        Some(new.fingerprint.to_hex().as_str())
    );
    assert_eq!(
        h.pins(decnet_fleet::CertRole::Agent).len(),
        2,
        "the master accepts both while pending"
    );

    // Presenting the new one makes it current; the old one retires.
    assert_eq!(
        db.authenticate(&new, p.grace).await.unwrap(),
        Standing::Promoted
    );
    assert_eq!(
        db.authenticate(&new, p.grace).await.unwrap(),
        Standing::Current
    );
    assert!(matches!(
        db.authenticate(&old, p.grace).await.unwrap(),
        Standing::Retiring { .. }
    ));

    // The attacker holding the old key cannot renew any more.
    assert_eq!(
        db.renew(ca(), &old, &csr("rn-a"), &p).await.unwrap_err(),
        PeerRefusal::Superseded
    );

    // When its grace is over it is revoked, and refused everywhere.
    sqlx::query("UPDATE certificates SET retire_at = $1 WHERE fingerprint = $2")
        .bind(decnet_fleet::unix_now() - 1)
        .bind(old.fingerprint.to_hex())
        .execute(db.pool())
        .await
        .unwrap();
    let retired = db.retire_due().await.unwrap();
    assert!(retired.contains(&old.fingerprint.to_hex()));
    assert_eq!(
        db.authenticate(&old, p.grace).await.unwrap_err(),
        PeerRefusal::Revoked
    );
    assert_eq!(unrevoked(db, "rn-a").await.len(), 2, "new agent + updater");

    // A certificate of another host never speaks for this one.
    let (other, other_updater) = enrolled(db, layout, "rn-b", false).await;
    let mut forged = other.clone();
    forged.role = decnet_pki::Role::Agent(decnet_pki::HostName::new("rn-a").unwrap());
    forged.cn = "rn-a".into();
    assert!(matches!(
        db.authenticate(&forged, p.grace).await.unwrap_err(),
        PeerRefusal::NotIssuedToPeer(_)
    ));
    // Updaters renew the same way.
    let u = db
        .renew(ca(), &other_updater, &csr("updater@rn-b"), &p)
        .await
        .unwrap();
    let u_new = PeerIdentity::from_pem(&u.cert_pem).unwrap();
    assert_eq!(u_new.role, other_updater.role);
    assert_eq!(
        db.authenticate(&u_new, p.grace).await.unwrap(),
        Standing::Promoted
    );
    let h = db.host("rn-b").await.unwrap().unwrap();
    assert_eq!(h.updater_fingerprint, Some(u_new.fingerprint.to_hex()));
    assert_eq!(
        h.agent_fingerprint,
        Some(other.fingerprint.to_hex()),
        "the agent is untouched"
    );
}

async fn a_newer_renewal_forgets_the_pending_one(db: &FleetDb, layout: &CaLayout) {
    let (cur, _) = enrolled(db, layout, "rn-c", false).await;
    let p = policy(0, 3600);
    let first = db.renew(ca(), &cur, &csr("rn-c"), &p).await.unwrap();
    let revocations = db.revocation_count().await.unwrap();
    let second = db.renew(ca(), &cur, &csr("rn-c"), &p).await.unwrap();
    assert_eq!(
        second.superseded_pending.as_deref(),
        Some(first.fingerprint.as_str())
    );
    // Never presented, so nobody else holds it: forgotten, not published.
    assert_eq!(db.revocation_count().await.unwrap(), revocations);
    let first_id = PeerIdentity::from_pem(&first.cert_pem).unwrap();
    assert_eq!(
        db.authenticate(&first_id, p.grace).await.unwrap_err(),
        PeerRefusal::NotIssuedToPeer("rn-c".into())
    );
    // A reissue revokes the pending renewal too.
    enrolled(db, layout, "rn-c", true).await;
    let second_id = PeerIdentity::from_pem(&second.cert_pem).unwrap();
    assert_eq!(
        db.authenticate(&second_id, p.grace).await.unwrap_err(),
        PeerRefusal::Revoked
    );
    assert_eq!(
        db.authenticate(&cur, p.grace).await.unwrap_err(),
        PeerRefusal::Revoked
    );
    // Decommission ends everything.
    db.decommission("rn-c").await.unwrap();
    assert_eq!(unrevoked(db, "rn-c").await, Vec::<String>::new());
}

async fn renewals_are_rate_limited_per_host(db: &FleetDb, layout: &CaLayout) {
    let (cur, _) = enrolled(db, layout, "rn-d", false).await;
    let p = policy(3600, 3600);
    db.renew(ca(), &cur, &csr("rn-d"), &p).await.unwrap();
    assert_eq!(
        db.renew(ca(), &cur, &csr("rn-d"), &p).await.unwrap_err(),
        PeerRefusal::TooSoon(3600)
    );
    // A CSR that is not one is refused without touching anything.
    let p0 = policy(0, 3600);
    assert_eq!(
        db.renew(ca(), &cur, "not a csr", &p0).await.unwrap_err(),
        PeerRefusal::BadCsr
    );
}

async fn renew_reissue_race_leaves_one_current_certificate(db: &FleetDb, layout: &CaLayout) {
    let p = policy(0, 3600);
    for i in 0..12 {
        let host = format!("race-{i}");
        let (agent, _) = enrolled(db, layout, &host, false).await;
        let csr = csr(&host);
        let db1 = db.clone();
        let db2 = db.clone();
        let layout2 = layout.clone();
        let host2 = host.clone();
        let agent2 = agent.clone();
        let p2 = p.clone();
        // Start both at once; which one wins the host's lock varies.
        let renew = tokio::spawn(async move { db1.renew(ca(), &agent2, &csr, &p2).await });
        let reissue = tokio::spawn(async move { enrolled(&db2, &layout2, &host2, true).await });
        let renewed = renew.await.unwrap();
        let (new_agent, new_updater) = reissue.await.unwrap();
        let mut live = unrevoked(db, &host).await;
        live.sort();
        let mut want = vec![
            new_agent.fingerprint.to_hex(),
            new_updater.fingerprint.to_hex(),
        ];
        want.sort();
        assert_eq!(
            live,
            want,
            "round {i}: renew {:?}",
            renewed.as_ref().map(|r| &r.fingerprint)
        );
        let h = db.host(&host).await.unwrap().unwrap();
        assert_eq!(h.agent_fingerprint, Some(new_agent.fingerprint.to_hex()));
        assert_eq!(h.agent_pending, None);
        // Whatever the renewal produced (if anything) never speaks for the host.
        if let Ok(r) = renewed {
            let id = PeerIdentity::from_pem(&r.cert_pem).unwrap();
            assert!(db.authenticate(&id, p.grace).await.is_err());
        }
        assert!(db.authenticate(&agent, p.grace).await.is_err());
    }
}

async fn the_crl_lists_what_was_revoked(db: &FleetDb) {
    let publisher = Arc::new(CrlPublisher::new());
    let crl = publisher
        .refresh(db, &[ca()])
        .await
        .unwrap()
        .expect("a first CRL");
    assert_eq!(crl.number(), db.revocation_count().await.unwrap());
    assert!(crl.number() > 0);
    assert!(
        publisher.refresh(db, &[ca()]).await.unwrap().is_none(),
        "unchanged"
    );
    let again = RevocationList::verify(&crl.ders()[0], ca().cert_pem()).unwrap();
    // Every revoked certificate that has not expired is on it.
    for host in ["rn-a", "rn-c"] {
        for (c, revoked) in db.certificates_of(host).await.unwrap() {
            let serial = hex_bytes(&c.serial);
            assert_eq!(
                again.revokes_serial(&serial),
                revoked,
                "{host} {}",
                c.fingerprint
            );
        }
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
