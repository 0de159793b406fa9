//! Certificates checked by an independent implementation (OpenSSL) and
//! bundles checked on the real file system.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::OnceLock;

use decnet_pki::bundle::CA_FILE;
use decnet_pki::{
    Bundle, BundleError, BundleKind, CaLayout, CertificateAuthority, Fingerprint, HostName,
    LeafSpec, Role,
};

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("generate CA"))
}

fn openssl(args: &[&str], stdin_file: Option<&std::path::Path>) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    if let Some(f) = stdin_file {
        cmd.stdin(std::fs::File::open(f).unwrap());
    }
    let out = cmd
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn x509_text(pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.pem");
    std::fs::write(&p, pem).unwrap();
    let (ok, text) = openssl(
        &["x509", "-noout", "-text", "-in", p.to_str().unwrap()],
        None,
    );
    assert!(ok, "openssl x509 failed: {text}");
    text
}

#[test]
fn ca_certificate_has_the_designed_extensions() {
    let text = x509_text(ca().cert_pem());
    assert!(text.contains("Public-Key: (4096 bit)"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("Subject Key Identifier"), "{text}");
    assert!(
        text.contains("CN=DECNET SWARM Root CA") || text.contains("CN = DECNET SWARM Root CA"),
        "{text}"
    );
}

#[test]
fn leaf_certificates_verify_with_openssl_and_carry_role_sans_and_eku() {
    let host = HostName::new("worker-1").unwrap();
    let spec = LeafSpec::for_role(
        &Role::Agent(host.clone()),
        &["10.0.0.5".into(), "w1.lab".into()],
    );
    let leaf = ca().issue(&spec).unwrap();
    let text = x509_text(&leaf.cert_pem);
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(
        text.contains("CN=worker-1") || text.contains("CN = worker-1"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("IP Address:10.0.0.5"), "{text}");
    assert!(text.contains("DNS:w1.lab"), "{text}");
    assert!(text.contains("DNS:worker-1"), "{text}");
    assert!(text.contains("Authority Key Identifier"), "{text}");
    assert!(text.contains("Subject Key Identifier"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");

    // Validity: 825 days, starting a few minutes in the past.
    let id = decnet_pki::PeerIdentity::from_pem(&leaf.cert_pem).unwrap();
    let days = (id.not_after - time::OffsetDateTime::now_utc()).whole_days();
    assert!((824..=825).contains(&days), "leaf valid for {days} days");

    // Chain verification by OpenSSL, for both purposes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca().cert_pem()).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &leaf.cert_pem).unwrap();
    for purpose in ["sslserver", "sslclient"] {
        let (ok, out) = openssl(
            &[
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                dir.path().join("ca.pem").to_str().unwrap(),
                dir.path().join("leaf.pem").to_str().unwrap(),
            ],
            None,
        );
        assert!(
            ok && out.contains("OK"),
            "openssl verify ({purpose}): {out}"
        );
    }

    // The fingerprint is SHA-256 of the DER, as OpenSSL computes it.
    let (ok, out) = openssl(
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            dir.path().join("leaf.pem").to_str().unwrap(),
        ],
        None,
    );
    assert!(ok);
    let theirs: Fingerprint = out.trim().rsplit('=').next().unwrap().parse().unwrap();
    assert_eq!(theirs, leaf.fingerprint);
    assert_eq!(
        leaf.fingerprint.to_hex(),
        leaf.fingerprint.to_hex().to_lowercase()
    );
}

#[test]
fn updater_leaf_has_updater_cn_and_loopback_san() {
    let host = HostName::new("edge-7").unwrap();
    let leaf = ca()
        .issue(&LeafSpec::for_role(&Role::Updater(host), &[]))
        .unwrap();
    let text = x509_text(&leaf.cert_pem);
    assert!(text.contains("updater@edge-7"), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    let id = decnet_pki::PeerIdentity::from_pem(&leaf.cert_pem).unwrap();
    assert_eq!(id.role, Role::Updater(HostName::new("edge-7").unwrap()));
    assert!(text.contains("OU = swarm-worker"), "{text}");
}

#[test]
fn the_master_certificate_has_its_own_unit() {
    let leaf = ca().issue(&LeafSpec::for_role(&Role::Master, &[])).unwrap();
    let text = x509_text(&leaf.cert_pem);
    assert!(text.contains("OU = swarm-master"), "{text}");
    assert!(!text.contains("swarm-worker"), "{text}");
}

#[test]
fn a_foreign_ca_leaf_does_not_verify_against_ours() {
    let other = CertificateAuthority::generate().unwrap();
    let leaf = other
        .issue(&LeafSpec::for_role(
            &Role::Agent(HostName::new("intruder").unwrap()),
            &[],
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca().cert_pem()).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &leaf.cert_pem).unwrap();
    let (ok, _) = openssl(
        &[
            "verify",
            "-CAfile",
            dir.path().join("ca.pem").to_str().unwrap(),
            dir.path().join("leaf.pem").to_str().unwrap(),
        ],
        None,
    );
    assert!(!ok);
}

#[test]
fn bundle_files_have_designed_names_and_modes_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("agent");
    let leaf = ca()
        .issue(&LeafSpec::for_role(
            &Role::Agent(HostName::new("w2").unwrap()),
            &[],
        ))
        .unwrap();
    let bundle = Bundle::from_issued(BundleKind::Agent, &leaf, ca().cert_pem()).unwrap();
    bundle.write(&bdir).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&bdir), 0o700);
    assert_eq!(mode(&bdir.join("worker.key")), 0o600);
    assert_eq!(mode(&bdir.join("worker.crt")), 0o644);
    assert_eq!(mode(&bdir.join(CA_FILE)), 0o644);
    let loaded = Bundle::load(&bdir, BundleKind::Agent).unwrap();
    assert_eq!(loaded.identity.fingerprint, leaf.fingerprint);
    assert_eq!(loaded.identity.cn, "w2");
    // The cheap look at the certificate alone says the same.
    assert_eq!(
        Bundle::certificate_fingerprint(&bdir, BundleKind::Agent).as_ref(),
        Some(&leaf.fingerprint)
    );
    assert_eq!(
        Bundle::certificate_fingerprint(&bdir, BundleKind::Updater),
        None
    );

    // Updater bundles use their own file names.
    let udir = dir.path().join("updater");
    let uleaf = ca()
        .issue(&LeafSpec::for_role(
            &Role::Updater(HostName::new("w2").unwrap()),
            &[],
        ))
        .unwrap();
    Bundle::from_issued(BundleKind::Updater, &uleaf, ca().cert_pem())
        .unwrap()
        .write(&udir)
        .unwrap();
    assert!(udir.join("updater.key").exists() && udir.join("updater.crt").exists());
}

/// A daemon loads the bundle a command is writing (the master's, every
/// second): the load never breaks the write, and ends up with what was
/// written last.
#[test]
fn loads_running_beside_a_write_never_break_it() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("master");
    let leaves: Vec<_> = (0..3)
        .map(|_| ca().issue(&LeafSpec::for_role(&Role::Master, &[])).unwrap())
        .collect();
    let bundle = |i: usize| {
        Bundle::from_issued(BundleKind::Master, &leaves[i % 3], ca().cert_pem()).unwrap()
    };
    bundle(0).write(&bdir).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every load succeeds, whole: a load that chose to read a file from the
    // pending directory just as the writer moved it into place found it
    // missing (seen in CI), and one reading files of two writes would
    // pair a certificate with another write's key.
    let fingerprints: Vec<_> = leaves.iter().map(|l| l.fingerprint).collect();
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let (bdir, stop, fingerprints) = (bdir.clone(), stop.clone(), fingerprints.clone());
            std::thread::spawn(move || {
                let mut loads = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let b = Bundle::load(&bdir, BundleKind::Master)
                        .unwrap_or_else(|e| panic!("load {loads} beside writes: {e}"));
                    assert!(fingerprints.contains(&b.identity.fingerprint));
                    loads += 1;
                }
                loads
            })
        })
        .collect();
    for i in 1..200 {
        bundle(i)
            .write(&bdir)
            .unwrap_or_else(|e| panic!("write {i} failed beside loads: {e}"));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in loaders {
        assert!(l.join().unwrap() > 0, "the loader never ran");
    }
    let last = Bundle::load(&bdir, BundleKind::Master).unwrap();
    assert_eq!(last.identity.fingerprint, leaves[199 % 3].fingerprint);
    assert_eq!(
        Bundle::certificate_fingerprint(&bdir, BundleKind::Master).as_ref(),
        Some(&last.identity.fingerprint)
    );
}

/// A command and the daemon write the master's bundle at the same time (a
/// CA rotation's trust set): every write succeeds, and the bundle left is
/// one of them whole, never a certificate beside another write's key.
#[test]
fn writers_at_the_same_time_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let bdir = dir.path().join("master");
    let leaves: Vec<_> = (0..2)
        .map(|_| ca().issue(&LeafSpec::for_role(&Role::Master, &[])).unwrap())
        .collect();
    let writers: Vec<_> = leaves
        .iter()
        .map(|leaf| {
            let bundle = Bundle::from_issued(BundleKind::Master, leaf, ca().cert_pem()).unwrap();
            let bdir = bdir.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    bundle
                        .write(&bdir)
                        .unwrap_or_else(|e| panic!("write {i} failed beside another: {e}"));
                    Bundle::load(&bdir, BundleKind::Master)
                        .unwrap_or_else(|e| panic!("load after write {i}: {e}"));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let last = Bundle::load(&bdir, BundleKind::Master).unwrap();
    assert!(
        leaves
            .iter()
            .any(|l| l.fingerprint == last.identity.fingerprint)
    );
}

#[test]
fn a_key_readable_by_others_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca()
        .issue(&LeafSpec::for_role(
            &Role::Agent(HostName::new("w3").unwrap()),
            &[],
        ))
        .unwrap();
    Bundle::from_issued(BundleKind::Agent, &leaf, ca().cert_pem())
        .unwrap()
        .write(dir.path())
        .unwrap();
    let key = dir.path().join("worker.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Bundle::load(dir.path(), BundleKind::Agent).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("chmod 600"), "{msg}");
    assert!(
        !msg.contains("PRIVATE KEY"),
        "secret leaked into error: {msg}"
    );
}

#[test]
fn a_missing_bundle_names_the_enroll_command() {
    let dir = tempfile::tempdir().unwrap();
    let err = Bundle::load(&dir.path().join("nope"), BundleKind::Agent).unwrap_err();
    assert!(matches!(err, BundleError::Missing { .. }));
    assert!(err.to_string().contains("decnet swarm enroll"), "{err}");
}

#[test]
fn ca_save_and_load_round_trip_with_private_key_mode() {
    let dir = tempfile::tempdir().unwrap();
    let layout = CaLayout::new(dir.path().join("ca"));
    ca().save(&layout).unwrap();
    let mode = std::fs::metadata(layout.ca_key())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = CertificateAuthority::load(&layout).unwrap();
    assert_eq!(loaded.fingerprint(), ca().fingerprint());
    // A leaf from the loaded CA chains to the same certificate.
    let leaf = loaded
        .issue(&LeafSpec::for_role(&Role::Master, &[]))
        .unwrap();
    let id = decnet_pki::PeerIdentity::from_pem(&leaf.cert_pem).unwrap();
    assert_eq!(id.role, Role::Master);
}
