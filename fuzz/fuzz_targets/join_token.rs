//! Join tokens (typed or pasted by operators, sent by anyone): parsing never
//! panics and accepts exactly `<12 hex>.<32 hex>.<64 hex>`.
#![no_main]

use decnet_swarm_client::join::parse_token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(t) = parse_token(text) {
        assert_eq!((t.id.len(), t.secret.len(), t.ca_sha256.len()), (12, 32, 64));
        assert!(format!("{t}").split('.').count() == 3);
        // Debug shows the public parts only, never the secret.
        assert_eq!(
            format!("{t:?}"),
            format!("TokenText {{ id: {:?}, ca_sha256: {:?}, .. }}", t.id, t.ca_sha256)
        );
    }
});
