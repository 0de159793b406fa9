//! Chains longer than a flat CA needs, refused before any path is built.
//!
//! These tests play anyone who can open a connection (no certificate of
//! ours needed): a certificate message of a leaf and certificates that all
//! share the name its issuer has made webpki try one ordering after
//! another, some 100 ms of CPU per handshake on the thread that serves
//! other connections, before anything was authenticated.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use decnet_pki::tls::RoleVerifier;
use decnet_pki::{
    Bundle, BundleKind, CertificateAuthority, ClientAuth, ExpectedServer, HostName, LeafSpec, Role,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("generate CA"))
}

fn agent() -> Role {
    Role::Agent(HostName::new("w1").unwrap())
}

/// The attacker's certificate message: a leaf issued by "X" and `n` CA
/// certificates named "X", each with its own key (webpki skips a
/// certificate already on the path by name and key, not by name alone).
fn hostile_chain(n: usize) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let mut certs = Vec::new();
    let mut last = None;
    for i in 0..n {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "X");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.serial_number = Some((i as u64 + 1).into());
        certs.push(p.self_signed(&key).unwrap().der().clone());
        last = Some((p, key));
    }
    let (p, k) = last.unwrap();
    let issuer = Issuer::new(p, k);
    let leaf_key = KeyPair::generate().unwrap();
    let mut lp = CertificateParams::new(vec![]).unwrap();
    lp.distinguished_name.push(DnType::CommonName, "master");
    let leaf = lp.signed_by(&leaf_key, &issuer).unwrap();
    let mut chain = vec![leaf.der().clone()];
    chain.extend(certs);
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
    (chain, key)
}

/// Run a handshake in memory between a client presenting `chain` and a
/// decnet server requiring client certificates, each end checking the
/// other as decnet does; the first error of either end, and how long the
/// server spent processing.
fn handshake(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (Result<(), rustls::Error>, Duration) {
    let issued = ca().issue(&LeafSpec::for_role(&agent(), &[])).unwrap();
    let bundle = Bundle::from_issued(BundleKind::Agent, &issued, ca().cert_pem()).unwrap();
    let server_config = decnet_pki::server_config(&bundle, None, ClientAuth::Required).unwrap();
    // The client checks the server as every decnet client does.
    let provider = decnet_pki::provider::crypto_provider();
    let verifier = RoleVerifier::new(
        ca().cert_pem(),
        None,
        ExpectedServer::role(agent()),
        &provider,
    )
    .unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let mut client =
        rustls::ClientConnection::new(Arc::new(client_config), ServerName::try_from("w1").unwrap())
            .unwrap();
    let mut server = rustls::ServerConnection::new(server_config).unwrap();
    let mut spent = Duration::ZERO;
    for _ in 0..10 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut at = &wire[..];
        while !at.is_empty() {
            server.read_tls(&mut at).unwrap();
        }
        let started = Instant::now();
        let r = server.process_new_packets();
        spent += started.elapsed();
        if let Err(e) = r {
            return (Err(e), spent);
        }
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back).unwrap();
        }
        let mut at = &back[..];
        while !at.is_empty() {
            client.read_tls(&mut at).unwrap();
        }
        if let Err(e) = client.process_new_packets() {
            return (Err(e), spent);
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return (Ok(()), spent);
        }
    }
    (
        Err(rustls::Error::General(
            "the handshake did not finish".into(),
        )),
        spent,
    )
}

#[test]
fn a_server_refuses_a_long_chain_before_building_a_path() {
    let (chain, key) = hostile_chain(10);
    let (r, spent) = handshake(chain, key);
    let err = r.expect_err("a chain of ten intermediates must be refused");
    let e: &(dyn std::error::Error + 'static) = &err;
    assert!(decnet_pki::tls::is_chain_too_long(e), "{err:?}");
    // Refused by counting (the error says so), not after webpki gave up.
    println!("server time on the hostile handshake: {spent:?}");
}

#[test]
fn a_fleet_leaf_sent_with_its_ca_still_handshakes() {
    // Some TLS stacks send the CA along: one certificate more is accepted.
    let issued = ca().issue(&LeafSpec::for_role(&Role::Master, &[])).unwrap();
    let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    let ca_der = CertificateDer::from_pem_slice(ca().cert_pem().as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let (r, _) = handshake(vec![leaf.clone(), ca_der], key.clone_key());
    r.expect("leaf + CA");
    let (r, _) = handshake(vec![leaf], key);
    r.expect("leaf alone");
}

#[test]
fn a_client_refuses_a_server_with_a_long_chain() {
    // A hostile worker answering the master with the same chain.
    let provider = decnet_pki::provider::crypto_provider();
    let v = RoleVerifier::new(
        ca().cert_pem(),
        None,
        ExpectedServer::role(agent()),
        &provider,
    )
    .unwrap();
    let (chain, _) = hostile_chain(10);
    let name = ServerName::try_from("w1").unwrap();
    let err = v
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .unwrap_err();
    let e: &(dyn std::error::Error + 'static) = &err;
    assert!(decnet_pki::tls::is_chain_too_long(e), "{err:?}");
    // A real agent leaf with the CA along passes.
    let issued = ca().issue(&LeafSpec::for_role(&agent(), &[])).unwrap();
    let leaf = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    let ca_der = CertificateDer::from_pem_slice(ca().cert_pem().as_bytes()).unwrap();
    v.verify_server_cert(&leaf, &[ca_der], &name, &[], UnixTime::now())
        .expect("an agent leaf with its CA");
}
