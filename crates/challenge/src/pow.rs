//! The proof of work: SHA-256 over `token ":" counter`, counted in leading zero bits.
//!
//! The browser does exactly this with WebCrypto: for counter = 0, 1, 2, … it hashes the UTF-8
//! string `token + ":" + String(counter)` (decimal, no leading zeros, no sign) and stops at the
//! first hash with at least `difficulty` leading zero bits. The token string itself is the
//! challenge string, so nothing else has to travel with it.

use sha2::{Digest, Sha256};

/// Counts the leading zero bits of a SHA-256 hash (0 ..= 256).
pub fn leading_zero_bits(hash: &[u8; 32]) -> u32 {
    let mut bits = 0;
    for &byte in hash {
        if byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// The number of leading zero bits that `counter` achieves for `challenge`.
pub fn work_bits(challenge: &str, counter: u64) -> u32 {
    let mut digits = [0u8; 20];
    let hash: [u8; 32] = Sha256::new()
        .chain_update(challenge.as_bytes())
        .chain_update(b":")
        .chain_update(decimal(counter, &mut digits))
        .finalize()
        .into();
    leading_zero_bits(&hash)
}

/// Finds the smallest counter with at least `difficulty` leading zero bits, trying at most
/// `max_iterations` counters. `None` if none was found within the bound.
///
/// Expected cost is 2^difficulty hashes. The shield uses this only for tests and for paths where
/// it solves on the client's behalf; browsers solve in JavaScript.
pub fn solve(challenge: &str, difficulty: u8, max_iterations: u64) -> Option<u64> {
    // Hash the fixed prefix once and clone the state for every counter.
    let prefix = Sha256::new()
        .chain_update(challenge.as_bytes())
        .chain_update(b":");
    let mut digits = [0u8; 20];
    (0..max_iterations).find(|&counter| {
        let hash: [u8; 32] = prefix
            .clone()
            .chain_update(decimal(counter, &mut digits))
            .finalize()
            .into();
        leading_zero_bits(&hash) >= u32::from(difficulty)
    })
}

/// Formats `n` in decimal into the end of `buf` and returns the digits.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn leading_zero_bits_counts_across_bytes() {
        let mut h = [0u8; 32];
        assert_eq!(leading_zero_bits(&h), 256);
        h[0] = 0x80;
        assert_eq!(leading_zero_bits(&h), 0);
        h[0] = 0x01;
        assert_eq!(leading_zero_bits(&h), 7);
        h[0] = 0;
        h[1] = 0x10;
        assert_eq!(leading_zero_bits(&h), 11);
    }

    #[test]
    fn solve_finds_enough_bits_and_respects_the_bound() {
        let c = solve("abc", 10, 1 << 20).unwrap();
        assert!(work_bits("abc", c) >= 10);
        for smaller in 0..c {
            assert!(work_bits("abc", smaller) < 10);
        }
        assert_eq!(solve("abc", 64, 1000), None);
        assert_eq!(solve("abc", 0, 1), Some(0));
    }

    #[test]
    fn matches_a_plain_sha256_of_the_string() {
        // What the browser computes: SHA-256 of the literal string.
        let hash: [u8; 32] = Sha256::digest(b"tok:1234567").into();
        assert_eq!(work_bits("tok", 1_234_567), leading_zero_bits(&hash));
    }

    proptest! {
        #[test]
        fn decimal_matches_to_string(n: u64) {
            let mut buf = [0u8; 20];
            let expected = n.to_string();
            prop_assert_eq!(decimal(n, &mut buf), expected.as_bytes());
        }
    }
}
