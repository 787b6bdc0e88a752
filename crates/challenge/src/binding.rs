//! The loose client binding carried inside every token.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// IPv4 clients are bound to their /24.
pub const IPV4_PREFIX_BITS: u8 = 24;
/// IPv6 clients are bound to their /48.
pub const IPV6_PREFIX_BITS: u8 = 48;

/// A loose description of who a token was issued to: the client's network prefix and a hash of
/// its `User-Agent`.
///
/// **Why loose.** Binding a token to the exact address breaks real readers: phones hop between
/// addresses inside a carrier's pool, and dual-stack browsers alternate between IPv4 and IPv6
/// (TecharoHQ/anubis#564). An IPv4 /24 or IPv6 /48 survives most of those moves while still
/// stopping a token solved on one machine from being handed out to a botnet spread across the
/// internet. A client whose address family flips between the challenge and the submit will still
/// fail the binding; the shield treats [`crate::Reject::WrongBinding`] as innocent and simply
/// challenges again. The `User-Agent` hash keeps a cookie from being pasted into a different
/// client on the same network; it only changes when the browser updates, which is rare within a
/// token's lifetime.
///
/// The binding is reduced to a 64-bit fingerprint (SHA-256 based, so every node computes the same
/// value) before it goes into a token; tokens never carry the address itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Binding {
    fingerprint: u64,
}

impl Binding {
    /// Binds to the network prefix of `ip` (IPv4 /24, IPv6 /48; IPv4-mapped IPv6 addresses count
    /// as IPv4) and to a hash of the raw `User-Agent` header value (empty if absent).
    pub fn new(ip: IpAddr, user_agent: &[u8]) -> Self {
        let mut prefix = [0u8; 7];
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                prefix[0] = 4;
                prefix[1..4].copy_from_slice(&v4.octets()[..3]);
            }
            IpAddr::V6(v6) => {
                prefix[0] = 6;
                prefix[1..7].copy_from_slice(&v6.octets()[..6]);
            }
        }
        Self::from_parts(&prefix, user_agent_hash(user_agent))
    }

    /// A binding that every client shares: for deployments that rely on a short lifetime and
    /// per-clearance rate limits alone (for example behind a carrier-grade NAT-heavy audience).
    pub fn unbound() -> Self {
        Self::from_parts(&[0], 0)
    }

    /// The 64-bit value stored in tokens.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub(crate) fn from_fingerprint(fingerprint: u64) -> Self {
        Self { fingerprint }
    }

    fn from_parts(prefix: &[u8], ua_hash: u64) -> Self {
        let digest = Sha256::new()
            .chain_update(b"qalqan-binding-v1\0")
            .chain_update(prefix)
            .chain_update(ua_hash.to_be_bytes())
            .finalize();
        Self {
            fingerprint: first_u64(&digest),
        }
    }
}

/// A 64-bit hash of a `User-Agent` value, the same on every node and every version of this crate.
pub fn user_agent_hash(user_agent: &[u8]) -> u64 {
    let digest = Sha256::new()
        .chain_update(b"qalqan-user-agent-v1\0")
        .chain_update(user_agent)
        .finalize();
    first_u64(&digest)
}

fn first_u64(bytes: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn same_prefix_same_binding() {
        let ua = b"Mozilla/5.0";
        assert_eq!(
            Binding::new(ip("203.0.113.7"), ua),
            Binding::new(ip("203.0.113.250"), ua)
        );
        assert_eq!(
            Binding::new(ip("2001:db8:1:aaaa::1"), ua),
            Binding::new(ip("2001:db8:1:bbbb:1:2:3:4"), ua)
        );
        assert_eq!(
            Binding::new(ip("::ffff:203.0.113.9"), ua),
            Binding::new(ip("203.0.113.7"), ua)
        );
    }

    #[test]
    fn different_prefix_or_agent_differs() {
        let ua = b"Mozilla/5.0";
        let base = Binding::new(ip("203.0.113.7"), ua);
        assert_ne!(base, Binding::new(ip("203.0.114.7"), ua));
        assert_ne!(base, Binding::new(ip("203.0.113.7"), b"curl/8"));
        assert_ne!(
            Binding::new(ip("2001:db8:1::1"), ua),
            Binding::new(ip("2001:db8:2::1"), ua)
        );
        assert_ne!(base, Binding::unbound());
    }
}
