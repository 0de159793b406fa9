//! CSR handling (`POST /join`, `POST /renew` bodies): a hostile CSR never
//! panics the CA; what gets signed carries the CN the master chose, never
//! one from the CSR.
#![no_main]

use std::sync::OnceLock;

use decnet_pki::{CertificateAuthority, HostName, LeafSpec, PeerIdentity, Role};
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate().expect("CA"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let role = Role::Agent(HostName::new("fuzz-host").unwrap());
    if let Ok(leaf) = ca().sign_csr(&LeafSpec::for_role(&role, &[]), text) {
        let id = PeerIdentity::from_pem(&leaf.cert_pem).expect("a signed leaf parses");
        assert_eq!(id.role, role);
    }
});
