//! X-Forwarded-For walking over arbitrary header values.
//!
//! Input layout: the first byte picks the peer (trusted or not, IPv4, IPv6 or IPv4-mapped); the
//! rest is split on `\n` into header values, so the fuzzer controls how many headers there are
//! and what each holds. Checks: an untrusted peer always gets its own address back, and the
//! answer is never an IPv4-mapped IPv6 address.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qalqan_net::{AddrSource, CidrSet, canonical_ip, client_from_xff};

fn trusted() -> &'static CidrSet {
    static TRUSTED: OnceLock<CidrSet> = OnceLock::new();
    TRUSTED.get_or_init(|| {
        let items: Vec<String> = [
            "10.0.0.0/8",
            "127.0.0.1",
            "2001:db8::/32",
            "::ffff:192.168.0.0/112",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        CidrSet::parse(&items).expect("the fuzz target's trusted list is valid")
    })
}

const PEERS: [IpAddr; 6] = [
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc0a8, 0x0001)), // ::ffff:192.168.0.1
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
    IpAddr::V6(Ipv6Addr::new(0x2a00, 0x1450, 0, 0, 0, 0, 0, 1)),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let peer = PEERS[usize::from(selector) % PEERS.len()];
    let values: Vec<&[u8]> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(|&b| b == b'\n').collect()
    };
    let trusted = trusted();
    let client = client_from_xff(peer, &values, trusted);
    assert_eq!(canonical_ip(client.ip), client.ip);
    if !trusted.contains(peer) {
        assert_eq!(client.ip, canonical_ip(peer));
        assert_eq!(client.source, AddrSource::Socket);
    }
});
