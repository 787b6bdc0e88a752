//! Property tests: the parsers never panic on arbitrary bytes, agree with independent encoders
//! and naive reference implementations, and treat every prefix of a valid header as incomplete.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use qalqan_net::proxy_protocol::{self, MAX_HEADER_LEN, ProxyError, ProxyHeader, V2_SIGNATURE};
use qalqan_net::{AddrSource, CidrSet, ClientAddr, canonical_ip, client_from_xff};

// ---------------------------------------------------------------------------------------------
// Strategies

fn any_ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from_bits)
}

/// IPv6 addresses including the forms that need care: IPv4-mapped, `::`-compressed, loopback.
fn any_ipv6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<u128>().prop_map(Ipv6Addr::from_bits),
        any_ipv4().prop_map(|v4| v4.to_ipv6_mapped()),
        (any::<u16>(), any::<u16>())
            .prop_map(|(a, b)| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, a, b)),
        Just(Ipv6Addr::UNSPECIFIED),
        Just(Ipv6Addr::LOCALHOST),
    ]
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any_ipv4().prop_map(IpAddr::V4),
        any_ipv6().prop_map(IpAddr::V6)
    ]
}

fn any_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any_ipv4(), 0..=32_u8).prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(a, l).unwrap())),
        (any_ipv6(), 0..=128_u8).prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(a, l).unwrap())),
        // Networks inside ::ffff:0:0/96, which the set stores as IPv4.
        (any_ipv4(), 96..=128_u8)
            .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(a.to_ipv6_mapped(), l).unwrap())),
        // Mostly long prefixes, so sets are sparse and misses are common.
        (any_ipv4(), 16..=32_u8).prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(a, l).unwrap())),
        (any_ipv6(), 32..=128_u8).prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(a, l).unwrap())),
    ]
}

// ---------------------------------------------------------------------------------------------
// CidrSet against a naive scan

/// The set's documented meaning, written independently: a network inside `::ffff:0:0/96` means
/// the IPv4 network it maps, and addresses are unmapped before the check.
fn naive_contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical_ip(ip);
    nets.iter().any(|net| {
        let net = match net.trunc() {
            IpNet::V6(n) if n.prefix_len() >= 96 && n.network().to_ipv4_mapped().is_some() => {
                let v4 = n.network().to_ipv4_mapped().unwrap();
                IpNet::V4(Ipv4Net::new(v4, n.prefix_len() - 96).unwrap())
            }
            other => other,
        };
        net.contains(&ip)
    })
}

/// Addresses at and just outside each network's edges, where merged ranges can go wrong.
fn edges(net: &IpNet) -> Vec<IpAddr> {
    match net {
        IpNet::V4(n) => {
            let (lo, hi) = (n.network().to_bits(), n.broadcast().to_bits());
            [Some(lo), Some(hi), lo.checked_sub(1), hi.checked_add(1)]
                .into_iter()
                .flatten()
                .map(|b| IpAddr::V4(Ipv4Addr::from_bits(b)))
                .collect()
        }
        IpNet::V6(n) => {
            let (lo, hi) = (n.network().to_bits(), n.broadcast().to_bits());
            [Some(lo), Some(hi), lo.checked_sub(1), hi.checked_add(1)]
                .into_iter()
                .flatten()
                .map(|b| IpAddr::V6(Ipv6Addr::from_bits(b)))
                .collect()
        }
    }
}

proptest! {
    #[test]
    fn cidr_contains_agrees_with_naive_scan(
        nets in prop::collection::vec(any_net(), 0..24),
        probes in prop::collection::vec(any_ip(), 0..32),
    ) {
        let set: CidrSet = nets.iter().copied().collect();
        let mut all_probes = probes;
        for net in &nets {
            all_probes.extend(edges(net));
        }
        for ip in all_probes {
            prop_assert_eq!(set.contains(ip), naive_contains(&nets, ip), "ip {} nets {:?}", ip, nets);
        }
    }

    /// Without mapped addresses anywhere, the set is exactly `IpNet::contains` over its input.
    #[test]
    fn cidr_contains_is_ipnet_contains_without_mapping(
        nets in prop::collection::vec(any_net(), 0..24),
        probes in prop::collection::vec(any_ip(), 0..32),
    ) {
        let is_mapped_net = |n: &IpNet| matches!(n, IpNet::V6(v6)
            if v6.prefix_len() >= 96 && v6.network().to_ipv4_mapped().is_some());
        let nets: Vec<IpNet> = nets.into_iter().filter(|n| !is_mapped_net(n)).collect();
        let set: CidrSet = nets.iter().copied().collect();
        let mut all_probes = probes;
        for net in &nets {
            all_probes.extend(edges(net));
        }
        for ip in all_probes {
            if canonical_ip(ip) != ip {
                continue;
            }
            let naive = nets.iter().any(|n| n.contains(&ip));
            prop_assert_eq!(set.contains(ip), naive, "ip {} nets {:?}", ip, nets);
        }
    }

    #[test]
    fn cidr_parse_accepts_what_it_prints(nets in prop::collection::vec(any_net(), 0..16)) {
        let set: CidrSet = nets.iter().copied().collect();
        let printed: Vec<String> = set.iter().map(ToString::to_string).collect();
        let reparsed = CidrSet::parse(&printed).unwrap();
        prop_assert_eq!(reparsed, set);
    }

    #[test]
    fn cidr_parse_never_panics(items in prop::collection::vec(".{0,60}", 0..8)) {
        match CidrSet::parse(&items) {
            Ok(set) => prop_assert!(set.len() <= items.len()),
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                prop_assert!(errors.iter().all(|(i, m)| *i < items.len() && !m.is_empty()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// X-Forwarded-For against a naive walk

fn trusted_set() -> CidrSet {
    ["10.0.0.0/8", "2001:db8:ffff::/48", "::ffff:192.168.0.0/112"]
        .into_iter()
        .map(|s| s.parse::<IpNet>().unwrap())
        .collect()
}

/// The documented walk over a fully materialised list, without bounds.
fn naive_xff(peer: IpAddr, values: &[&[u8]], trusted: &CidrSet) -> ClientAddr {
    let peer = canonical_ip(peer);
    let socket = ClientAddr {
        ip: peer,
        source: AddrSource::Socket,
    };
    if !trusted.contains(peer) {
        return socket;
    }
    let joined = values.join(&b','); // Header lines of a list header join with commas.
    let entries: Vec<&[u8]> = if values.is_empty() {
        Vec::new()
    } else {
        joined.split(|&b| b == b',').collect()
    };
    let mut last = None;
    for entry in entries.iter().rev() {
        let text = String::from_utf8_lossy(entry).trim().to_string();
        let parsed = text
            .parse::<IpAddr>()
            .ok()
            .or_else(|| text.parse::<SocketAddr>().ok().map(|sa| sa.ip()))
            .or_else(|| {
                let inner = text.strip_prefix('[')?.strip_suffix(']')?;
                inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
            })
            .map(canonical_ip);
        match parsed {
            None => break,
            Some(ip) if trusted.contains(ip) => last = Some(ip),
            Some(ip) => {
                return ClientAddr {
                    ip,
                    source: AddrSource::Forwarded,
                };
            }
        }
    }
    last.map_or(socket, |ip| ClientAddr {
        ip,
        source: AddrSource::Forwarded,
    })
}

/// One `X-Forwarded-For` entry as a proxy or a client might write it.
fn xff_entry() -> impl Strategy<Value = String> {
    let ip = prop_oneof![
        any_ip(),
        (0..4_u8).prop_map(|d| IpAddr::V4(Ipv4Addr::new(10, 0, 0, d))),
        (0..4_u16).prop_map(|d| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, d))),
        (0..4_u8).prop_map(|d| IpAddr::V6(Ipv4Addr::new(192, 168, 0, d).to_ipv6_mapped())),
    ];
    let written = (ip, any::<u16>(), 0..3_u8).prop_map(|(ip, port, form)| match (ip, form) {
        (_, 0) => ip.to_string(),
        (IpAddr::V4(v4), _) => format!("{v4}:{port}"),
        (IpAddr::V6(v6), 1) => format!("[{v6}]"),
        (IpAddr::V6(v6), _) => format!("[{v6}]:{port}"),
    });
    let garbage = prop_oneof![
        Just(String::new()),
        Just("unknown".to_string()),
        Just("_hidden".to_string()),
        "[a-z0-9.:\\[\\]]{1,12}",
    ];
    let pad = prop_oneof![Just(""), Just(" "), Just("\t"), Just("  ")];
    (prop_oneof![8 => written, 1 => garbage], pad.clone(), pad)
        .prop_map(|(e, l, r)| format!("{l}{e}{r}"))
}

fn xff_values() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::collection::vec(xff_entry(), 1..6).prop_map(|es| es.join(",")),
        0..5,
    )
}

fn peer() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any_ip(),
        Just("10.0.0.1".parse().unwrap()),
        Just("::ffff:10.0.0.1".parse().unwrap()),
        Just("2001:db8:ffff::1".parse().unwrap()),
    ]
}

proptest! {
    #[test]
    fn xff_agrees_with_naive_walk(peer in peer(), values in xff_values()) {
        let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        let trusted = trusted_set();
        prop_assert_eq!(
            client_from_xff(peer, &values, &trusted),
            naive_xff(peer, &values, &trusted)
        );
    }

    #[test]
    fn xff_never_panics_and_never_trusts_untrusted_peers(
        peer in peer(),
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..8),
    ) {
        let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let trusted = trusted_set();
        let client = client_from_xff(peer, &values, &trusted);
        prop_assert_eq!(canonical_ip(client.ip), client.ip);
        if !trusted.contains(peer) {
            prop_assert_eq!(client, ClientAddr { ip: canonical_ip(peer), source: AddrSource::Socket });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol against independent encoders

/// Encodes a v1 line the way a sender would.
fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// What a v2 sender puts in its header.
#[derive(Debug, Clone)]
enum V2Body {
    Local {
        family: u8,
        block: Vec<u8>,
    },
    Inet {
        udp: bool,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        tlvs: Vec<u8>,
    },
    Inet6 {
        udp: bool,
        src: (Ipv6Addr, u16),
        dst: (Ipv6Addr, u16),
        tlvs: Vec<u8>,
    },
    Unix {
        dgram: bool,
        block: Vec<u8>,
    },
    Unspec {
        block: Vec<u8>,
    },
}

fn encode_v2(body: &V2Body) -> Vec<u8> {
    let (ver_cmd, family, block) = match body {
        V2Body::Local { family, block } => (0x20, *family, block.clone()),
        V2Body::Inet {
            udp,
            src,
            dst,
            tlvs,
        } => {
            let mut b = Vec::new();
            b.extend_from_slice(&src.0.octets());
            b.extend_from_slice(&dst.0.octets());
            b.extend_from_slice(&src.1.to_be_bytes());
            b.extend_from_slice(&dst.1.to_be_bytes());
            b.extend_from_slice(tlvs);
            (0x21, if *udp { 0x12 } else { 0x11 }, b)
        }
        V2Body::Inet6 {
            udp,
            src,
            dst,
            tlvs,
        } => {
            let mut b = Vec::new();
            b.extend_from_slice(&src.0.octets());
            b.extend_from_slice(&dst.0.octets());
            b.extend_from_slice(&src.1.to_be_bytes());
            b.extend_from_slice(&dst.1.to_be_bytes());
            b.extend_from_slice(tlvs);
            (0x21, if *udp { 0x22 } else { 0x21 }, b)
        }
        V2Body::Unix { dgram, block } => (0x21, if *dgram { 0x32 } else { 0x31 }, block.clone()),
        V2Body::Unspec { block } => (0x21, 0x00, block.clone()),
    };
    let mut out = V2_SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(family);
    out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&block);
    out
}

fn expected_v2(body: &V2Body, header_len: usize) -> ProxyHeader {
    let (source, destination) = match body {
        V2Body::Inet { src, dst, .. } => (
            Some(SocketAddr::new(IpAddr::V4(src.0), src.1)),
            Some(SocketAddr::new(IpAddr::V4(dst.0), dst.1)),
        ),
        V2Body::Inet6 { src, dst, .. } => (
            Some(SocketAddr::new(IpAddr::V6(src.0), src.1)),
            Some(SocketAddr::new(IpAddr::V6(dst.0), dst.1)),
        ),
        _ => (None, None),
    };
    ProxyHeader {
        header_len,
        source,
        destination,
    }
}

/// TLVs as senders emit them: type, big-endian length, value; total kept within policy.
fn tlvs(max_total: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)),
        0..6,
    )
    .prop_map(move |list| {
        let mut out = Vec::new();
        for (ty, value) in list {
            if out.len() + 3 + value.len() > max_total {
                break;
            }
            out.push(ty);
            out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
            out.extend_from_slice(&value);
        }
        out
    })
}

fn v2_body() -> impl Strategy<Value = V2Body> {
    prop_oneof![
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(family, block)| V2Body::Local { family, block }),
        (
            any::<bool>(),
            any_ipv4(),
            any::<u16>(),
            any_ipv4(),
            any::<u16>(),
            tlvs(1024 - 12)
        )
            .prop_map(|(udp, s, sp, d, dp, tlvs)| V2Body::Inet {
                udp,
                src: (s, sp),
                dst: (d, dp),
                tlvs
            }),
        (
            any::<bool>(),
            any_ipv6(),
            any::<u16>(),
            any_ipv6(),
            any::<u16>(),
            tlvs(1024 - 36)
        )
            .prop_map(|(udp, s, sp, d, dp, tlvs)| V2Body::Inet6 {
                udp,
                src: (s, sp),
                dst: (d, dp),
                tlvs
            }),
        (any::<bool>(), prop::collection::vec(any::<u8>(), 216..300))
            .prop_map(|(dgram, block)| V2Body::Unix { dgram, block }),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|block| V2Body::Unspec { block }),
    ]
}

fn socket_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (any_ipv4(), any::<u16>(), any_ipv4(), any::<u16>()).prop_map(|(s, sp, d, dp)| (
            SocketAddr::new(IpAddr::V4(s), sp),
            SocketAddr::new(IpAddr::V4(d), dp)
        )),
        (any_ipv6(), any::<u16>(), any_ipv6(), any::<u16>()).prop_map(|(s, sp, d, dp)| (
            SocketAddr::new(IpAddr::V6(s), sp),
            SocketAddr::new(IpAddr::V6(d), dp)
        )),
    ]
}

/// Checks the promises `parse` makes about any input.
fn check_parse_invariants(buf: &[u8]) -> Result<(), TestCaseError> {
    match proxy_protocol::parse(buf) {
        Ok(h) => {
            prop_assert!(h.header_len <= buf.len() && h.header_len <= MAX_HEADER_LEN);
            prop_assert_eq!(h.source.is_some(), h.destination.is_some());
            // The header alone parses the same: nothing after it was looked at.
            prop_assert_eq!(proxy_protocol::parse(&buf[..h.header_len]), Ok(h));
        }
        Err(ProxyError::Incomplete { need_at_least }) => {
            prop_assert!(need_at_least > buf.len());
            prop_assert!(need_at_least <= MAX_HEADER_LEN);
        }
        Err(_) => {}
    }
    prop_assert_eq!(
        proxy_protocol::looks_like_proxy(buf),
        buf.starts_with(&V2_SIGNATURE) || buf.starts_with(b"PROXY ")
    );
    Ok(())
}

proptest! {
    #[test]
    fn proxy_parse_never_panics_on_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_parse_invariants(&buf)?;
    }

    /// Arbitrary bytes behind a valid start reach the deeper parts of both parsers.
    #[test]
    fn proxy_parse_never_panics_behind_a_valid_start(
        v2 in any::<bool>(),
        head in prop::collection::vec(any::<u8>(), 0..4),
        tail in prop::collection::vec(any::<u8>(), 0..1200),
    ) {
        let mut buf = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
        if v2 {
            // Mostly valid version/command and family bytes, then anything.
            buf.extend_from_slice(&[0x21, 0x11]);
        }
        buf.extend_from_slice(&head);
        buf.extend_from_slice(&tail);
        check_parse_invariants(&buf)?;
        let text = b"PROXY TCP4 ".iter().chain(&tail).copied().collect::<Vec<u8>>();
        check_parse_invariants(&text)?;
    }

    #[test]
    fn proxy_v1_round_trip(
        (src, dst) in socket_pair(),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = encode_v1(src, dst);
        let mut buf = header.clone();
        buf.extend_from_slice(&payload);
        let parsed = proxy_protocol::parse(&buf).unwrap();
        prop_assert_eq!(parsed, ProxyHeader {
            header_len: header.len(),
            source: Some(src),
            destination: Some(dst),
        });
        for n in 0..header.len() {
            match proxy_protocol::parse(&header[..n]) {
                Err(ProxyError::Incomplete { need_at_least }) => prop_assert!(need_at_least > n),
                other => prop_assert!(false, "prefix {} of {:?}: {:?}", n, String::from_utf8_lossy(&header), other),
            }
        }
    }

    #[test]
    fn proxy_v2_round_trip(body in v2_body(), payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let header = encode_v2(&body);
        let mut buf = header.clone();
        buf.extend_from_slice(&payload);
        let parsed = proxy_protocol::parse(&buf).unwrap();
        prop_assert_eq!(parsed, expected_v2(&body, header.len()));
        for n in 0..header.len() {
            match proxy_protocol::parse(&header[..n]) {
                Err(ProxyError::Incomplete { need_at_least }) => {
                    prop_assert!(need_at_least > n);
                    prop_assert!(need_at_least <= header.len() || n == 0);
                }
                other => prop_assert!(false, "prefix {} of {:?}: {:?}", n, body, other),
            }
        }
    }
}
