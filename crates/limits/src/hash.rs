//! Keyed hashing of client identities into sketch and table keys.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use foldhash::SharedSeed;
use foldhash::quality::FoldHasher;

/// Keyed 64-bit hasher with a per-process random seed, so an attacker cannot craft
/// colliding keys.
///
/// Count-min sketches and set-associative tables are only as good as the spread of
/// their keys. With a fixed, public hash function an attacker could choose source
/// addresses that all land on the counters of one innocent client (who would then be
/// rate limited) or in one table bucket. With a seed the attacker never sees, the
/// positions look random to them.
///
/// The hash is foldhash's quality variant: fast (a few nanoseconds for an address),
/// with good statistical spread. It is not a cryptographic MAC. It resists collisions
/// chosen blindly; someone able to study the shield's decisions for a long time
/// might still learn something about the seed, which is why the seed changes every
/// time the process starts.
///
/// The `tag` argument separates uses of the same input: hashing an address for the
/// request-rate sketch (one tag) and for the connection sketch (another tag) gives
/// unrelated keys, so a collision in one does not carry over to the other.
#[derive(Clone)]
pub struct KeyHasher {
    shared: SharedSeed,
    seed: u64,
}

impl KeyHasher {
    /// A hasher with a fresh random seed from the operating system's random source.
    pub fn new() -> Self {
        // std's RandomState draws its keys from the OS random source (getrandom on
        // Linux). Hashing a constant with it yields an unpredictable u64; two of them
        // seed the two halves of foldhash's state. This avoids a dependency on a
        // random-number crate for the one random number the shield needs.
        let state = std::hash::RandomState::new();
        let shared = state.hash_one(0x5141_4c51_414e_u64);
        let seed = state.hash_one(0x7365_6564_u64);
        Self::from_parts(shared, seed)
    }

    /// A deterministic hasher, for tests and benches. Never use a fixed seed in the
    /// shield itself: it would let an attacker precompute collisions.
    pub fn with_seed(seed: u64) -> Self {
        Self::from_parts(seed, seed.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn from_parts(shared: u64, seed: u64) -> Self {
        Self {
            shared: SharedSeed::from_u64(shared),
            seed,
        }
    }

    fn hasher(&self, tag: u8) -> FoldHasher<'_> {
        let mut h = FoldHasher::with_seed(self.seed, &self.shared);
        h.write_u8(tag);
        h
    }

    /// Hashes a client address under `tag`.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, as a dual-stack socket reports
    /// IPv4 clients) hash like the IPv4 address itself, so one client gets one key
    /// whichever way it arrived. Grouping (for example, counting a whole IPv6 /64 as
    /// one client) is the caller's policy: mask the address before hashing it.
    pub fn hash_ip(&self, ip: IpAddr, tag: u8) -> u64 {
        let mut h = self.hasher(tag);
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                h.write_u8(4);
                h.write_u32(v4.to_bits());
            }
            IpAddr::V6(v6) => {
                h.write_u8(6);
                h.write_u128(v6.to_bits());
            }
        }
        h.finish()
    }

    /// Hashes arbitrary bytes (a path, a header value, an address plus a path) under
    /// `tag`.
    pub fn hash_bytes(&self, bytes: &[u8], tag: u8) -> u64 {
        let mut h = self.hasher(tag);
        h.write(bytes);
        h.finish()
    }
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// The seed is a secret: printing it in a log would undo its purpose.
impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn same_seed_same_input_same_output() {
        let a = KeyHasher::with_seed(7);
        let b = KeyHasher::with_seed(7);
        assert_eq!(a.hash_ip(V4, 1), b.hash_ip(V4, 1));
        assert_eq!(a.hash_bytes(b"/news", 2), b.hash_bytes(b"/news", 2));
        let c = a.clone();
        assert_eq!(a.hash_ip(V4, 1), c.hash_ip(V4, 1));
    }

    #[test]
    fn different_seeds_differ() {
        let a = KeyHasher::with_seed(7);
        let b = KeyHasher::with_seed(8);
        assert_ne!(a.hash_ip(V4, 1), b.hash_ip(V4, 1));
    }

    #[test]
    fn random_seeds_differ() {
        // Two draws from the OS random source colliding would be a 2^-64 event.
        let a = KeyHasher::new();
        let b = KeyHasher::new();
        assert_ne!(a.hash_ip(V4, 1), b.hash_ip(V4, 1));
    }

    #[test]
    fn different_tags_differ() {
        let h = KeyHasher::with_seed(1);
        let ip_keys: std::collections::HashSet<u64> =
            (0..=255u8).map(|tag| h.hash_ip(V4, tag)).collect();
        assert_eq!(ip_keys.len(), 256);
        let byte_keys: std::collections::HashSet<u64> =
            (0..=255u8).map(|tag| h.hash_bytes(b"x", tag)).collect();
        assert_eq!(byte_keys.len(), 256);
    }

    #[test]
    fn mapped_v6_hashes_like_v4() {
        let h = KeyHasher::with_seed(3);
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(h.hash_ip(mapped, 0), h.hash_ip(V4, 0));
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_ne!(h.hash_ip(other, 0), h.hash_ip(V4, 0));
    }

    #[test]
    fn debug_does_not_print_the_seed() {
        let h = KeyHasher::with_seed(0x1234_5678);
        let shown = format!("{h:?}");
        assert_eq!(shown, "KeyHasher { .. }");
    }

    #[test]
    fn addresses_spread_over_low_bits() {
        // Sequential addresses (a /16 an attacker might own) must not cluster in the
        // low bits the sketches index by.
        let h = KeyHasher::with_seed(11);
        let mut buckets = [0u32; 64];
        for i in 0..65_536u32 {
            let ip = IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 | i));
            buckets[(h.hash_ip(ip, 0) & 63) as usize] += 1;
        }
        // Expected 1024 per bucket; a fair spread stays well within ±20%.
        for (i, &n) in buckets.iter().enumerate() {
            assert!((820..=1230).contains(&n), "bucket {i} got {n}");
        }
    }
}
