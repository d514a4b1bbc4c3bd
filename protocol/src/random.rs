//! Randomness from the operating system (`getrandom`), in the few shapes driftwatch
//! needs: secret tokens, unique ids, and a jitter fraction.

/// `bytes` random bytes as lowercase hex (twice as many digits); fails only when the
/// system has no randomness source, which a caller making a secret must not paper over.
pub fn hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Fills `buf` with random bytes; fails only without a randomness source.
pub fn fill(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// A fraction in 0..=1, for jitter; 0.5 when the system has no randomness source (a
/// jitter that does not spread is a nuisance, not a failure).
pub fn unit() -> f64 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_or(0.5, |()| {
        f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hex_of_the_asked_length_and_differ() {
        let a = hex(16).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, hex(16).unwrap());
        for _ in 0..100 {
            assert!((0.0..=1.0).contains(&unit()));
        }
    }
}
