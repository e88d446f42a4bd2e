//! Random values from the operating system's generator (ring's `SystemRandom`, which
//! reads `getrandom`), for what must not repeat or be guessed: claim tokens, delivery
//! ids, instance names, backoff jitter. Not a hash of a `RandomState`, whose seed is
//! only meant to spread hash tables.

use ring::rand::{SecureRandom, SystemRandom};

/// Eight random bytes as a number.
pub fn u64() -> u64 {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random generator works");
    u64::from_le_bytes(bytes)
}

/// A uniform sample in [0, 1).
pub fn unit() -> f64 {
    // The top 53 bits: exactly the precision of an f64 mantissa.
    (u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `bytes` random bytes in lowercase hex.
pub fn hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut raw)
        .expect("the operating system's random generator works");
    crate::verify::hex_encode(&raw)
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_differ_and_samples_stay_in_range() {
        assert_ne!(super::u64(), super::u64());
        for _ in 0..1000 {
            let x = super::unit();
            assert!((0.0..1.0).contains(&x), "{x}");
        }
        let h = super::hex(12);
        assert_eq!(h.len(), 24);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
