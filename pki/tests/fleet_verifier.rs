//! The verifier of a fleet-wide client configuration: one configuration
//! for every worker, the expected identity looked up per connection by the
//! name it was dialed by. These tests play the worker that answers for
//! another: each presents a valid certificate of our CA.

use std::sync::{Arc, OnceLock};

use decnet_pki::tls::RoleVerifier;
use decnet_pki::{
    CertificateAuthority, ExpectedServer, Fingerprint, HostName, LeafSpec, Role, ServerDirectory,
};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("generate CA"))
}

fn agent(host: &str) -> Role {
    Role::Agent(HostName::new(host).unwrap())
}

/// A leaf of `role` from our CA: (DER, fingerprint).
fn leaf(role: &Role) -> (CertificateDer<'static>, Fingerprint) {
    let issued = ca().issue(&LeafSpec::for_role(role, &[])).unwrap();
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    (der, issued.fingerprint)
}

fn verifier(directory: Arc<ServerDirectory>) -> RoleVerifier {
    let provider = decnet_pki::provider::crypto_provider();
    RoleVerifier::with_directory(ca().cert_pem(), None, directory, &provider).unwrap()
}

fn verify(v: &RoleVerifier, cert: &CertificateDer<'_>, name: &str) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn each_connection_is_held_to_the_host_its_name_was_registered_for() {
    let directory = Arc::new(ServerDirectory::new());
    let v = verifier(directory.clone());
    let (w1, fp1) = leaf(&agent("w1"));
    let (w2, fp2) = leaf(&agent("w2"));
    let n1 = directory.register(&ExpectedServer::role(agent("w1")).pinned([fp1]), "10.0.0.1");
    let n2 = directory.register(&ExpectedServer::role(agent("w2")).pinned([fp2]), "10.0.0.2");
    assert_ne!(n1, n2);
    assert!(n1.ends_with(".decnet.invalid"), "{n1}");

    // Each host passes under its own name.
    verify(&v, &w1, &n1).unwrap();
    verify(&v, &w2, &n2).unwrap();

    // w2 (a worker the attacker owns) answering where w1 was dialed: refused
    // for its role, though its chain is valid and it passes under its own name.
    let err = verify(&v, &w2, &n1).unwrap_err();
    let e: &(dyn std::error::Error + 'static) = &err;
    assert!(decnet_pki::tls::is_unexpected_server(e), "{err:?}");

    // Another w1 certificate (a re-enrollment the master has not recorded):
    // right role, not the pinned leaf.
    let (w1_again, _) = leaf(&agent("w1"));
    let err = verify(&v, &w1_again, &n1).unwrap_err();
    let e: &(dyn std::error::Error + 'static) = &err;
    assert!(decnet_pki::tls::is_pin_mismatch(e), "{err:?}");
}

#[test]
fn a_name_nobody_registered_is_refused() {
    let directory = Arc::new(ServerDirectory::new());
    let v = verifier(directory.clone());
    let (w1, fp1) = leaf(&agent("w1"));
    // A valid w1 certificate, but the connection was not opened for any
    // registered server: fail closed.
    let err = verify(&v, &w1, "s00000000000000000000000000000000.decnet.invalid").unwrap_err();
    let e: &(dyn std::error::Error + 'static) = &err;
    assert!(decnet_pki::tls::is_unexpected_server(e), "{err:?}");
    // An IP address as the server name is not a registered name either.
    let ip = ServerName::try_from("127.0.0.1").unwrap();
    assert!(
        v.verify_server_cert(&w1, &[], &ip, &[], UnixTime::now())
            .is_err()
    );
    // Registered, the same certificate passes.
    let n = directory.register(&ExpectedServer::role(agent("w1")).pinned([fp1]), "10.0.0.1");
    verify(&v, &w1, &n).unwrap();
}

/// A TLS session is resumed per server name without the verifier running
/// again, so the name must change whenever what was verified would:
/// another role, other pins, another address.
#[test]
fn names_change_with_role_pins_and_address_and_only_with_them() {
    let d = ServerDirectory::new();
    let fp_a = Fingerprint::of_der(b"a");
    let fp_b = Fingerprint::of_der(b"b");
    let base = ExpectedServer::role(agent("w1")).pinned([fp_a, fp_b]);
    let n = d.register(&base, "10.0.0.1");
    // Stable, and blind to the order of the pins.
    assert_eq!(
        n,
        d.register(
            &ExpectedServer::role(agent("w1")).pinned([fp_b, fp_a]),
            "10.0.0.1"
        )
    );
    let others = [
        d.register(
            &ExpectedServer::role(agent("w1")).pinned([fp_a]),
            "10.0.0.1",
        ),
        d.register(&ExpectedServer::role(agent("w1")), "10.0.0.1"),
        d.register(
            &ExpectedServer::role(Role::Updater(HostName::new("w1").unwrap())).pinned([fp_a, fp_b]),
            "10.0.0.1",
        ),
        d.register(
            &ExpectedServer::role(agent("w2")).pinned([fp_a, fp_b]),
            "10.0.0.1",
        ),
        d.register(&base, "10.0.0.9"),
    ];
    for o in &others {
        assert_ne!(&n, o);
    }
    assert_eq!(d.len(), 1 + others.len());
    assert_eq!(d.lookup(&n), Some(base));
    assert_eq!(d.lookup("nothing.decnet.invalid"), None);
}
