//! Random identifiers and secrets from the one crypto provider's CSPRNG, so
//! no second random-number crate enters the build.

/// `n` random bytes as lowercase hex (`2n` characters).
///
/// Used for operation ids, audit ids and enrollment tokens.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // aws-lc's RNG fails only if the OS entropy source is gone; nothing
    // sensible can continue then.
    aws_lc_rs::rand::fill(&mut bytes).expect("system random source unavailable");
    crate::ca::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_uniqueness() {
        let a = random_hex(16);
        let b = random_hex(16);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
