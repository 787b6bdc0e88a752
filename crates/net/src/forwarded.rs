//! The client behind trusted proxies, from `X-Forwarded-For`.
//!
//! Each proxy appends the address it received the request from to the right end of
//! `X-Forwarded-For`. Only the entries appended by proxies we trust are facts; everything to the
//! left of the first untrusted hop was written by a client and may be invented. So the list is
//! read from the right, skipping our own proxies, and the first address that is not one of them
//! is the client. A peer outside the trusted set never gets its header read at all.
//!
//! # Choices this module makes
//!
//! - **Garbage stops the walk.** An entry that is not an address (`unknown`, an empty element,
//!   a hostname, an obfuscated `_id`) ends the walk, and the client is the last *trusted*
//!   address seen before it — the hop nearest to the garbage — or the peer itself if the garbage
//!   is the rightmost entry. Skipping garbage and reading further left would trust entries that
//!   nothing vouches for. Since a trusted proxy always appends the address it saw on the right
//!   of anything the client sent, garbage is only ever reached when a trusted proxy wrote it
//!   (nginx writes `unknown` for a unix-socket peer), never through a client's own header. This
//!   also means empty list elements are not skipped as RFC 9110 would allow: they stop the walk
//!   like any other unreadable entry.
//! - **All trusted.** If every entry read is trusted, the leftmost entry read is the client.
//! - **Bounds.** At most [`MAX_ENTRIES`] entries and [`MAX_BYTES`] bytes are read, counted from
//!   the right end of the last header value. Entries further left are ignored as if the list
//!   began there; an entry cut by the byte bound is not read. A real chain of proxies is a handful
//!   of entries, so only a client's own padding is ever ignored.
//! - **Mapped addresses.** Every address, the peer's and each entry's, is unmapped
//!   ([`canonical_ip`]) before it is checked and before it is returned.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cidr::{CidrSet, canonical_ip};

/// The most `X-Forwarded-For` entries read, from the right.
pub const MAX_ENTRIES: usize = 64;

/// The most bytes of `X-Forwarded-For` read, from the right: entries plus one separator each.
pub const MAX_BYTES: usize = 8 * 1024;

/// The longest entry that can still be an address: `[` + 45-character IPv6 + `]:65535` is 53.
const MAX_ENTRY_LEN: usize = 64;

/// A client's address and where the shield learned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    /// The client's address, never IPv4-mapped IPv6 (see [`canonical_ip`]).
    pub ip: IpAddr,
    /// Where `ip` came from.
    pub source: AddrSource,
}

/// Where a [`ClientAddr`] came from, for logs and for deciding how much to trust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrSource {
    /// The TCP peer of the connection: no trusted proxy spoke for the client.
    Socket,
    /// An `X-Forwarded-For` entry vouched for by trusted proxies.
    Forwarded,
    /// The source address of a PROXY protocol header.
    ProxyProtocol,
}

/// The client of a request that arrived from `peer` with these `X-Forwarded-For` header values
/// (raw bytes of every such header, in the order received), given the trusted proxies.
///
/// If `peer` is not trusted the headers are ignored and the client is `peer`
/// ([`AddrSource::Socket`]). Otherwise the comma-separated entries of all values are walked from
/// the right: trusted entries are skipped and the first untrusted address is the client
/// ([`AddrSource::Forwarded`]). Entries may be `192.0.2.1`, `192.0.2.1:5678`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:443`, with spaces or tabs around them. See the module docs
/// for garbage entries, an all-trusted list and the bounds on how much is read.
pub fn client_from_xff(peer: IpAddr, xff_values: &[&[u8]], trusted: &CidrSet) -> ClientAddr {
    let peer = canonical_ip(peer);
    let from_socket = ClientAddr {
        ip: peer,
        source: AddrSource::Socket,
    };
    if !trusted.contains(peer) {
        return from_socket;
    }
    let nearest_trusted = |last: Option<IpAddr>| {
        last.map_or(from_socket, |ip| ClientAddr {
            ip,
            source: AddrSource::Forwarded,
        })
    };

    // The last trusted entry read so far, i.e. the leftmost trusted one.
    let mut last_trusted: Option<IpAddr> = None;
    let mut entries = 0_usize;
    let mut bytes = 0_usize;
    for value in xff_values.iter().rev() {
        let room = MAX_BYTES.saturating_sub(bytes);
        // Look only at the part of the value that fits the byte bound, so a megabyte of padding
        // costs no more than 8 KiB of scanning. If the value was cut, its leftmost piece is a
        // fragment of an entry and is not read.
        let cut_at = value.len().saturating_sub(room);
        let window = value.get(cut_at..).unwrap_or_default();
        let was_cut = cut_at > 0;
        let mut pieces = window.rsplit(|&b| b == b',').peekable();
        while let Some(piece) = pieces.next() {
            let is_fragment = was_cut && pieces.peek().is_none();
            if is_fragment || entries >= MAX_ENTRIES {
                return nearest_trusted(last_trusted);
            }
            entries += 1;
            bytes = bytes.saturating_add(piece.len()).saturating_add(1);
            match parse_entry(piece) {
                None => return nearest_trusted(last_trusted),
                Some(ip) if trusted.contains(ip) => last_trusted = Some(ip),
                Some(ip) => {
                    return ClientAddr {
                        ip,
                        source: AddrSource::Forwarded,
                    };
                }
            }
        }
        if bytes >= MAX_BYTES {
            return nearest_trusted(last_trusted);
        }
    }
    nearest_trusted(last_trusted)
}

/// One `X-Forwarded-For` entry as an unmapped address, or `None` if it is not an address.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = entry.trim_ascii_start().trim_ascii_end();
    if entry.is_empty() || entry.len() > MAX_ENTRY_LEN {
        return None;
    }
    let text = std::str::from_utf8(entry).ok()?;
    let ip = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if !after.is_empty() {
            valid_port(after.strip_prefix(':')?).then_some(())?;
        }
        IpAddr::V6(host.parse::<Ipv6Addr>().ok()?)
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else {
        // Only IPv4 may carry a port without brackets; `2001:db8::1:443` is an address.
        let (host, port) = text.rsplit_once(':')?;
        valid_port(port).then_some(())?;
        IpAddr::V4(host.parse::<Ipv4Addr>().ok()?)
    };
    Some(canonical_ip(ip))
}

/// A decimal port number from 0 to 65535; leading zeros are harmless here (the entry length is
/// bounded), and `u16::from_str` alone would also accept a `+` sign.
fn valid_port(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(items: &[&str]) -> CidrSet {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        CidrSet::parse(&items).unwrap()
    }

    fn proxies() -> CidrSet {
        trusted(&["10.0.0.0/8", "2001:db8:ffff::/48"])
    }

    fn forwarded(s: &str) -> ClientAddr {
        ClientAddr {
            ip: ip(s),
            source: AddrSource::Forwarded,
        }
    }

    fn socket(s: &str) -> ClientAddr {
        ClientAddr {
            ip: ip(s),
            source: AddrSource::Socket,
        }
    }

    fn walk(peer: &str, values: &[&str]) -> ClientAddr {
        let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        client_from_xff(ip(peer), &values, &proxies())
    }

    #[test]
    fn spoofed_header_from_untrusted_peer_is_ignored() {
        assert_eq!(walk("198.51.100.7", &["1.2.3.4"]), socket("198.51.100.7"));
        assert_eq!(walk("198.51.100.7", &["10.0.0.1"]), socket("198.51.100.7"));
        assert_eq!(walk("2001:db8::7", &["1.2.3.4"]), socket("2001:db8::7"));
        assert_eq!(walk("198.51.100.7", &[]), socket("198.51.100.7"));
    }

    #[test]
    fn one_trusted_proxy() {
        assert_eq!(walk("10.0.0.1", &["203.0.113.9"]), forwarded("203.0.113.9"));
        // What the client wrote itself is left of its real address and never read.
        assert_eq!(
            walk("10.0.0.1", &["6.6.6.6, 203.0.113.9"]),
            forwarded("203.0.113.9")
        );
        assert_eq!(
            walk("10.0.0.1", &["garbage, 10.0.0.5, 203.0.113.9"]),
            forwarded("203.0.113.9")
        );
    }

    #[test]
    fn chain_through_several_trusted_proxies() {
        assert_eq!(
            walk("10.0.0.1", &["6.6.6.6, 203.0.113.9, 10.1.1.1, 10.2.2.2"]),
            forwarded("203.0.113.9")
        );
        // The same chain split over several header lines.
        assert_eq!(
            walk(
                "10.0.0.1",
                &["6.6.6.6", "203.0.113.9,10.1.1.1", " 10.2.2.2 "]
            ),
            forwarded("203.0.113.9")
        );
        assert_eq!(
            walk(
                "2001:db8:ffff::1",
                &["2001:db8:1::1, [2001:db8:ffff::2]:443, 10.0.0.3:8080"]
            ),
            forwarded("2001:db8:1::1")
        );
    }

    #[test]
    fn entry_forms() {
        for (entry, want) in [
            ("203.0.113.9", "203.0.113.9"),
            ("203.0.113.9:5678", "203.0.113.9"),
            ("203.0.113.9:0", "203.0.113.9"),
            ("203.0.113.9:65535", "203.0.113.9"),
            ("203.0.113.9:000080", "203.0.113.9"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("2001:db8::1:443", "2001:db8::1:443"),
            ("\t 203.0.113.9 \t", "203.0.113.9"),
            ("::ffff:203.0.113.9", "203.0.113.9"),
            ("[::ffff:203.0.113.9]:80", "203.0.113.9"),
        ] {
            assert_eq!(parse_entry(entry.as_bytes()), Some(ip(want)), "{entry}");
        }
        for bad in [
            "",
            "   ",
            "unknown",
            "_hidden",
            "example.com",
            "203.0.113.9:65536",
            "203.0.113.9:",
            "203.0.113.9:+80",
            "203.0.113.9:065536",
            "203.0.113",
            "0203.0.113.9",
            "[203.0.113.9]:80",
            "[2001:db8::1",
            "[2001:db8::1]443",
            "[2001:db8::1]:",
            "fe80::1%eth0",
            "\"203.0.113.9\"",
            "203.0.113.9 203.0.113.10",
            "\u{ff}203.0.113.9",
        ] {
            assert_eq!(parse_entry(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(parse_entry(b"\xff\xfe"), None);
        assert_eq!(parse_entry(&[b'1'; 100]), None);
    }

    #[test]
    fn mapped_addresses_are_unmapped() {
        // A dual-stack listener reports the trusted proxy as mapped; it is still trusted.
        assert_eq!(
            walk("::ffff:10.0.0.1", &["::ffff:203.0.113.9"]),
            forwarded("203.0.113.9")
        );
        assert_eq!(
            walk("::ffff:198.51.100.7", &["1.2.3.4"]),
            socket("198.51.100.7")
        );
        assert_eq!(
            walk("10.0.0.1", &["203.0.113.9, ::ffff:10.0.0.2"]),
            forwarded("203.0.113.9")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_nearest_trusted_hop() {
        assert_eq!(
            walk("10.0.0.1", &["203.0.113.9, unknown, 10.0.0.2, 10.0.0.3"]),
            forwarded("10.0.0.2")
        );
        // Garbage right next to us: the peer itself is the nearest trusted hop.
        assert_eq!(
            walk("10.0.0.1", &["203.0.113.9, unknown"]),
            socket("10.0.0.1")
        );
        assert_eq!(walk("10.0.0.1", &["203.0.113.9,"]), socket("10.0.0.1"));
        assert_eq!(walk("10.0.0.1", &[""]), socket("10.0.0.1"));
        assert_eq!(walk("10.0.0.1", &["203.0.113.9", ""]), socket("10.0.0.1"));
        assert_eq!(
            walk("10.0.0.1", &["203.0.113.9, , 10.0.0.2"]),
            forwarded("10.0.0.2")
        );
    }

    #[test]
    fn no_header_from_trusted_peer_means_the_peer() {
        assert_eq!(walk("10.0.0.1", &[]), socket("10.0.0.1"));
    }

    #[test]
    fn all_trusted_means_the_leftmost() {
        assert_eq!(
            walk("10.0.0.1", &["10.0.0.9, 10.0.0.8", "10.0.0.7"]),
            forwarded("10.0.0.9")
        );
    }

    #[test]
    fn at_most_64_entries_are_read() {
        // 63 trusted hops then the client: all within the bound.
        let mut list: Vec<String> = vec!["6.6.6.6".into(), "203.0.113.9".into()];
        list.extend((0..63).map(|i| format!("10.0.0.{i}")));
        let joined = list.join(",");
        assert_eq!(walk("10.0.0.1", &[&joined]), forwarded("203.0.113.9"));
        // 64 trusted hops: the client entry lies beyond the bound and the leftmost entry read
        // is the answer.
        let mut list: Vec<String> = vec!["203.0.113.9".into()];
        list.extend((0..64).map(|i| format!("10.0.1.{i}")));
        let joined = list.join(",");
        assert_eq!(walk("10.0.0.1", &[&joined]), forwarded("10.0.1.0"));
    }

    #[test]
    fn at_most_8_kib_are_read() {
        // One huge value: padding on the left is never scanned or read.
        let huge = format!("{}, 203.0.113.9, 10.0.0.2", "x".repeat(1 << 20));
        assert_eq!(walk("10.0.0.1", &[&huge]), forwarded("203.0.113.9"));
        // Trusted hops padded with spaces to cross 8 KiB: the entry cut by the bound is not
        // read, and the leftmost entry read is the answer.
        let pad = " ".repeat(3000);
        let padded = format!("203.0.113.9,{pad}10.0.0.4,{pad}10.0.0.3,{pad}10.0.0.2");
        assert_eq!(walk("10.0.0.1", &[&padded]), forwarded("10.0.0.3"));
        // The same across header values.
        let values = [
            "203.0.113.9".to_string(),
            format!("{pad}10.0.0.4"),
            format!("{pad}10.0.0.3"),
            format!("{pad}10.0.0.2"),
        ];
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        assert_eq!(walk("10.0.0.1", &values), forwarded("10.0.0.3"));
    }

    #[test]
    fn many_header_values_are_bounded() {
        let values: Vec<&[u8]> = std::iter::repeat_n(&b"10.0.0.9"[..], 100_000).collect();
        assert_eq!(
            client_from_xff(ip("10.0.0.1"), &values, &proxies()),
            forwarded("10.0.0.9")
        );
    }
}
