//! Sets of IP networks (trusted proxies, allow and deny lists) and helpers on single addresses.
//!
//! A [`CidrSet`] is built once from configuration and then asked [`CidrSet::contains`] for every
//! request, so lookups are a binary search over sorted, merged address ranges: the cost depends on
//! the number of configured networks, never on traffic.
//!
//! # IPv4-mapped addresses
//!
//! A dual-stack socket reports an IPv4 client as `::ffff:a.b.c.d`. Everywhere in this crate such
//! an address *is* the IPv4 address `a.b.c.d` ([`canonical_ip`]): lookups unmap it first, and a
//! configured network inside `::ffff:0:0/96` (for example `::ffff:10.0.0.0/104`) is stored as the
//! IPv4 network it maps (`10.0.0.0/8`). A shorter IPv6 network such as `::/0` or `::/64` covers
//! real IPv6 addresses only; it does not cover IPv4 clients.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A set of IPv4 and IPv6 networks with a fast membership test.
///
/// Build it with [`CidrSet::parse`] from configuration strings, or with [`CidrSet::from_nets`] /
/// `collect()` from [`IpNet`]s. The set keeps the networks it was given (normalised, see
/// [`CidrSet::iter`]) for display and auditing, and separately the merged address ranges that
/// [`CidrSet::contains`] searches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    /// The configured networks: host bits cleared, IPv4-mapped networks turned into IPv4,
    /// sorted, without duplicates.
    nets: Vec<IpNet>,
    /// Inclusive IPv4 ranges, sorted by start, non-overlapping and non-adjacent.
    v4: Vec<(u32, u32)>,
    /// Inclusive IPv6 ranges, same shape as `v4`.
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    /// An empty set: contains nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses configuration items, each a CIDR network (`192.0.2.0/24`, `2001:db8::/32`) or a
    /// bare address (`192.0.2.7` is `/32`, `2001:db8::7` is `/128`). Surrounding whitespace is
    /// ignored.
    ///
    /// On failure returns *every* bad item as `(index into items, message)`, so a config
    /// validator can report them all at once. A network with host bits set (`10.0.0.1/8`) is an
    /// error rather than silently widened or narrowed: in a trusted-proxy list the two readings
    /// differ by sixteen million trusted addresses, and only the operator knows which was meant.
    pub fn parse(items: &[String]) -> Result<CidrSet, Vec<(usize, String)>> {
        let mut nets = Vec::with_capacity(items.len());
        let mut errors = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match parse_item(item) {
                Ok(net) => nets.push(net),
                Err(message) => errors.push((index, message)),
            }
        }
        if errors.is_empty() {
            Ok(Self::from_nets(nets))
        } else {
            Err(errors)
        }
    }

    /// Builds a set from networks. Host bits are cleared (`10.0.0.1/8` becomes `10.0.0.0/8`) and
    /// IPv4-mapped IPv6 networks become IPv4 networks (see the module docs).
    pub fn from_nets<I: IntoIterator<Item = IpNet>>(nets: I) -> Self {
        let mut nets: Vec<IpNet> = nets.into_iter().map(normalize_net).collect();
        nets.sort_unstable();
        nets.dedup();

        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in &nets {
            match net {
                IpNet::V4(n) => v4.push((n.network().to_bits(), n.broadcast().to_bits())),
                IpNet::V6(n) => v6.push((n.network().to_bits(), n.broadcast().to_bits())),
            }
        }
        Self {
            nets,
            v4: merge_ranges(v4),
            v6: merge_ranges(v6),
        }
    }

    /// Whether `ip` lies in any network of the set. IPv4-mapped IPv6 addresses are looked up as
    /// IPv4. Cost: one binary search over the merged ranges of the address's family.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => range_lookup(&self.v4, v4.to_bits()),
            IpAddr::V6(v6) => range_lookup(&self.v6, v6.to_bits()),
        }
    }

    /// Whether the set has no networks.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The number of distinct networks, as configured (overlapping networks each count).
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    /// The networks, normalised: host bits cleared, IPv4-mapped networks shown as IPv4, sorted
    /// (IPv4 first), without duplicates.
    pub fn iter(&self) -> std::slice::Iter<'_, IpNet> {
        self.nets.iter()
    }
}

impl FromIterator<IpNet> for CidrSet {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        Self::from_nets(iter)
    }
}

impl<'a> IntoIterator for &'a CidrSet {
    type Item = &'a IpNet;
    type IntoIter = std::slice::Iter<'a, IpNet>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// How much of a bad configuration item is quoted back in an error message.
const MAX_QUOTED_CHARS: usize = 60;

/// Quotes a configuration item for a message, cut short if it is long.
fn quoted(item: &str) -> String {
    let mut out = String::new();
    match item.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => {
            let _ = write!(out, "{:?}…", item.get(..cut).unwrap_or_default());
        }
        None => {
            let _ = write!(out, "{item:?}");
        }
    }
    out
}

/// Parses one configuration item; see [`CidrSet::parse`].
fn parse_item(item: &str) -> Result<IpNet, String> {
    let text = item.trim();
    if text.is_empty() {
        return Err(
            "empty entry: expected an IP address or a CIDR network such as 192.0.2.0/24".into(),
        );
    }
    let Some((addr_text, len_text)) = text.split_once('/') else {
        return text.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            format!(
                "{} is not an IP address or a CIDR network (expected e.g. 192.0.2.0/24, \
                 2001:db8::/32 or 192.0.2.7)",
                quoted(text)
            )
        });
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        format!(
            "{}: {} is not an IP address",
            quoted(text),
            quoted(addr_text)
        )
    })?;
    let max_len: u8 = if addr.is_ipv4() { 32 } else { 128 };
    // `u8::from_str` would accept a leading `+`; a prefix length is plain digits.
    let prefix_len = Some(len_text)
        .filter(|t| (1..=3).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u8>().ok())
        .filter(|&len| len <= max_len)
        .ok_or_else(|| {
            format!(
                "{}: prefix length must be a number from 0 to {max_len}",
                quoted(text)
            )
        })?;
    let net = IpNet::new(addr, prefix_len).map_err(|_| {
        format!(
            "{}: prefix length must be a number from 0 to {max_len}",
            quoted(text)
        )
    })?;
    let network = net.trunc();
    if network != net {
        return Err(format!(
            "{} has host bits set: write {network} for the whole network or {addr}/{max_len} \
             for the single address",
            quoted(text)
        ));
    }
    Ok(net)
}

/// Clears host bits and turns a network inside `::ffff:0:0/96` into the IPv4 network it maps.
fn normalize_net(net: IpNet) -> IpNet {
    match net.trunc() {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96)
                .map(|m| IpNet::V4(m.trunc()))
                .unwrap_or(IpNet::V6(n)),
            None => IpNet::V6(n),
        },
        other => other,
    }
}

/// Sorts inclusive ranges and merges those that overlap or touch.
fn merge_ranges<T>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)>
where
    T: Ord + Copy + RangeBound,
{
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        if let Some(last) = merged.last_mut()
            && (start <= last.1 || last.1.successor() == Some(start))
        {
            last.1 = last.1.max(end);
        } else {
            merged.push((start, end));
        }
    }
    merged.shrink_to_fit();
    merged
}

/// Whether `x` lies in one of the sorted, disjoint inclusive `ranges`.
fn range_lookup<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The first range starting after `x`; only the range before it can hold `x`.
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|&(_, end)| x <= end)
}

/// The next integer, if any: lets [`merge_ranges`] join `[a, b]` and `[b + 1, c]`.
trait RangeBound: Sized {
    fn successor(self) -> Option<Self>;
}

impl RangeBound for u32 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl RangeBound for u128 {
    fn successor(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// The address with IPv4-mapped IPv6 (`::ffff:a.b.c.d`) turned into IPv4 (`a.b.c.d`); every
/// other address unchanged. The deprecated IPv4-compatible form (`::a.b.c.d`) is *not* unmapped:
/// it is a distinct IPv6 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The network of `ip` with prefix `v4_len` for IPv4 or `v6_len` for IPv6, host bits cleared:
/// `prefix_of(192.0.2.77, 24, 64)` is `192.0.2.0/24`. Use it to count or limit a client together
/// with its neighbours (an IPv6 client usually controls a whole /64). The address is unmapped
/// first ([`canonical_ip`]); lengths above 32 or 128 are clamped to them.
pub fn prefix_of(ip: IpAddr, v4_len: u8, v6_len: u8) -> IpNet {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => IpNet::V4(
            Ipv4Net::new(v4, v4_len.min(32))
                .map(|n| n.trunc())
                .unwrap_or_else(|_| Ipv4Net::from(v4)),
        ),
        IpAddr::V6(v6) => IpNet::V6(
            Ipv6Net::new(v6, v6_len.min(128))
                .map(|n| n.trunc())
                .unwrap_or_else(|_| Ipv6Net::from(v6)),
        ),
    }
}

/// IPv4 networks that are not globally routable unicast (from IANA's special-purpose address
/// registry, plus multicast and the reserved 240/4), as `(network, prefix length)`.
const V4_NOT_PUBLIC: [(Ipv4Addr, u8); 15] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space (carrier-grade NAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // deprecated 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, includes 255.255.255.255
];

/// IPv6 networks inside global unicast 2000::/3 that are still not a real client's address.
const V6_NOT_PUBLIC: [(Ipv6Addr, u8); 4] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments (Teredo, ...)
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4, tunnelled IPv4
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation (RFC 9637)
];

/// Whether `ip` can be a real client on the public Internet: a globally routable unicast
/// address. False for private, loopback, link-local, carrier-grade NAT, documentation,
/// benchmarking, multicast, reserved and unspecified addresses; an IPv6 address must also lie in
/// global unicast 2000::/3. IPv4-mapped addresses are judged as IPv4.
///
/// This is a conservative reading of IANA's special-purpose registries, meant for decisions such
/// as "is this forwarded address plausible" — not a routing table.
pub fn is_public_unicast(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            let bits = v4.to_bits();
            !V4_NOT_PUBLIC
                .iter()
                .any(|&(net, len)| bits & mask_u32(len) == net.to_bits())
        }
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            let global_unicast = bits & mask_u128(3) == 0x2000_u128 << 112;
            global_unicast
                && !V6_NOT_PUBLIC
                    .iter()
                    .any(|&(net, len)| bits & mask_u128(len) == net.to_bits())
        }
    }
}

/// The netmask of an IPv4 prefix length, as bits.
fn mask_u32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32_u32.saturating_sub(u32::from(len)))
        .unwrap_or(0)
}

/// The netmask of an IPv6 prefix length, as bits.
fn mask_u128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128_u32.saturating_sub(u32::from(len)))
        .unwrap_or(0)
}

/// The shortest IPv4 prefix a trusted-proxy list may hold without a warning.
pub const AUDIT_MIN_V4_PREFIX: u8 = 8;
/// The shortest IPv6 prefix a trusted-proxy list may hold without a warning.
pub const AUDIT_MIN_V6_PREFIX: u8 = 32;

/// Warnings, one per network, for a trusted-proxy list that would let clients forge their
/// address: any network covering everything (`0.0.0.0/0`, `::/0`) or wider than
/// [`AUDIT_MIN_V4_PREFIX`] / [`AUDIT_MIN_V6_PREFIX`]. Every peer inside a trusted network may
/// name any address in `X-Forwarded-For` or a PROXY header, so such a list turns per-client
/// limits off for a large part of the Internet. Meant to be logged loudly at start; an empty
/// result means nothing looked dangerous.
pub fn audit_trusted(set: &CidrSet) -> Vec<String> {
    set.iter()
        .filter_map(|net| {
            let (len, min) = match net {
                IpNet::V4(n) => (n.prefix_len(), AUDIT_MIN_V4_PREFIX),
                IpNet::V6(n) => (n.prefix_len(), AUDIT_MIN_V6_PREFIX),
            };
            if len == 0 {
                Some(format!(
                    "trusting {net} lets any client forge its address: every peer of this \
                     family may then claim any address in X-Forwarded-For or a PROXY header"
                ))
            } else if len < min {
                Some(format!(
                    "trusting {net} lets any client forge its address: every peer inside this \
                     network (wider than /{min}) may claim any address; list only your own \
                     proxies"
                ))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn set(items: &[&str]) -> CidrSet {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        CidrSet::parse(&items).unwrap()
    }

    #[test]
    fn parses_networks_and_bare_addresses() {
        let s = set(&[
            "10.0.0.0/8",
            " 192.0.2.7 ",
            "2001:db8::/32",
            "2001:db8:1::7",
        ]);
        assert_eq!(s.len(), 4);
        let nets: Vec<IpNet> = s.iter().copied().collect();
        assert_eq!(
            nets,
            vec![
                net("10.0.0.0/8"),
                net("192.0.2.7/32"),
                net("2001:db8::/32"),
                net("2001:db8:1::7/128"),
            ]
        );
        assert!(s.contains(ip("10.255.255.255")));
        assert!(s.contains(ip("192.0.2.7")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(s.contains(ip("2001:db8:ffff::1")));
        assert!(!s.contains(ip("2001:db9::1")));
    }

    #[test]
    fn parse_reports_every_bad_item_with_its_index() {
        let items: Vec<String> = [
            "10.0.0.0/8",
            "",
            "not-an-ip",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "fe80::1%eth0",
            "192.0.2.0/24",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let errors = CidrSet::parse(&items).unwrap_err();
        let indexes: Vec<usize> = errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        let host_bits = &errors[2].1;
        assert!(host_bits.contains("host bits"), "{host_bits}");
        assert!(host_bits.contains("10.0.0.0/8"), "{host_bits}");
        assert!(host_bits.contains("10.0.0.1/32"), "{host_bits}");
    }

    #[test]
    fn long_bad_items_are_quoted_short() {
        let items = vec!["x".repeat(10_000)];
        let errors = CidrSet::parse(&items).unwrap_err();
        assert!(errors[0].1.len() < 200, "{}", errors[0].1);
    }

    #[test]
    fn mapped_addresses_are_looked_up_as_ipv4() {
        let s = set(&["192.0.2.0/24"]);
        assert!(s.contains(ip("::ffff:192.0.2.1")));
        assert!(!s.contains(ip("::ffff:192.0.3.1")));
        // The IPv4-compatible form is a different IPv6 address.
        assert!(!s.contains(ip("::192.0.2.1")));
    }

    #[test]
    fn mapped_networks_are_stored_as_ipv4() {
        let s = set(&["::ffff:10.0.0.0/104", "::ffff:192.0.2.9"]);
        let nets: Vec<IpNet> = s.iter().copied().collect();
        assert_eq!(nets, vec![net("10.0.0.0/8"), net("192.0.2.9/32")]);
        assert!(s.contains(ip("10.1.2.3")));
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        // A short IPv6 network covers real IPv6 only.
        let all_v6 = set(&["::/0"]);
        assert!(all_v6.contains(ip("2001:db8::1")));
        assert!(!all_v6.contains(ip("192.0.2.1")));
        assert!(!all_v6.contains(ip("::ffff:192.0.2.1")));
    }

    #[test]
    fn overlapping_and_adjacent_networks_merge() {
        let s = set(&[
            "10.0.0.0/9",
            "10.128.0.0/9",
            "10.1.0.0/16",
            "11.0.0.0/8",
            "255.255.255.255",
        ]);
        assert_eq!(s.len(), 5);
        assert_eq!(
            s.v4,
            vec![
                (ip4(10, 0, 0, 0), ip4(11, 255, 255, 255)),
                (u32::MAX, u32::MAX)
            ]
        );
        assert!(s.contains(ip("11.3.4.5")));
        assert!(!s.contains(ip("12.0.0.0")));
        assert!(!s.contains(ip("9.255.255.255")));
        assert!(s.contains(ip("255.255.255.255")));
    }

    fn ip4(a: u8, b: u8, c: u8, d: u8) -> u32 {
        Ipv4Addr::new(a, b, c, d).to_bits()
    }

    #[test]
    fn whole_space_sets() {
        let s = set(&["0.0.0.0/0", "::/0"]);
        assert!(s.contains(ip("0.0.0.0")));
        assert!(s.contains(ip("255.255.255.255")));
        assert!(s.contains(ip("::")));
        assert!(s.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn empty_set_contains_nothing() {
        let s = CidrSet::new();
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
        assert!(!s.contains(ip("127.0.0.1")));
        assert!(!s.contains(ip("::1")));
        assert_eq!(CidrSet::parse(&[]).unwrap(), s);
    }

    #[test]
    fn duplicates_count_once() {
        let s = set(&["10.0.0.0/8", "10.0.0.0/8", "::ffff:10.0.0.0/104"]);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn canonical_ip_unmaps_only_mapped() {
        assert_eq!(canonical_ip(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("::1.2.3.4")), ip("::1.2.3.4"));
        assert_eq!(canonical_ip(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    #[test]
    fn prefix_of_clears_host_bits_and_clamps() {
        assert_eq!(prefix_of(ip("192.0.2.77"), 24, 64), net("192.0.2.0/24"));
        assert_eq!(
            prefix_of(ip("::ffff:192.0.2.77"), 16, 64),
            net("192.0.0.0/16")
        );
        assert_eq!(
            prefix_of(ip("2001:db8:1:2:3:4:5:6"), 24, 64),
            net("2001:db8:1:2::/64")
        );
        assert_eq!(prefix_of(ip("192.0.2.77"), 200, 200), net("192.0.2.77/32"));
        assert_eq!(prefix_of(ip("2001:db8::1"), 0, 200), net("2001:db8::1/128"));
        assert_eq!(prefix_of(ip("192.0.2.77"), 0, 0), net("0.0.0.0/0"));
    }

    #[test]
    fn public_unicast() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "::ffff:8.8.8.8",
            "2a00:1450::1",
            "2001:4860::8888",
        ] {
            assert!(is_public_unicast(ip(public)), "{public}");
        }
        for private in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.1.1",
            "172.31.255.255",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:10.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "2002::1",
            "3fff::1",
            "64:ff9b::1.2.3.4",
        ] {
            assert!(!is_public_unicast(ip(private)), "{private}");
        }
    }

    #[test]
    fn audit_flags_wide_trusted_networks() {
        assert!(audit_trusted(&set(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"])).is_empty());
        assert!(audit_trusted(&CidrSet::new()).is_empty());

        let warnings = audit_trusted(&set(&["0.0.0.0/0", "::/0", "8.0.0.0/7", "2000::/3"]));
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        for (w, n) in warnings
            .iter()
            .zip(["0.0.0.0/0", "8.0.0.0/7", "::/0", "2000::/3"])
        {
            assert!(
                w.starts_with(&format!("trusting {n} lets any client forge its address")),
                "{w}"
            );
        }
        // The whole IPv4-mapped space is the whole IPv4 space.
        let mapped = audit_trusted(&set(&["::ffff:0.0.0.0/96"]));
        assert_eq!(mapped.len(), 1);
        assert!(mapped[0].starts_with("trusting 0.0.0.0/0"), "{}", mapped[0]);
    }
}
