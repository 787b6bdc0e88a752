//! The HAProxy PROXY protocol header, version 1 (text) and version 2 (binary).
//!
//! A load balancer in front of the shield may open each TCP connection with a PROXY header that
//! names the real client. [`parse`] reads that header from the first bytes of a connection and
//! says how long it was, so the caller can drop it and hand the rest to HTTP.
//!
//! The specification is HAProxy's `proxy-protocol.txt`. Following it, a listener configured for
//! the PROXY protocol must *require* the header and accept it only from trusted peers; this
//! module does not guess, and [`looks_like_proxy`] exists for diagnostics (warning that a load
//! balancer sends headers to a listener not configured for them), not for optional detection.
//!
//! # Policy beyond the specification
//!
//! - A v2 header whose address block is longer than [`V2_MAX_ADDR_LEN`] (1024) bytes is refused.
//!   The format allows 65535, but addresses need at most 216 bytes and the TLVs senders emit in
//!   practice (ALPN, authority, TLS details, unique id up to 128 bytes) fit well within 1 KiB; a
//!   bigger header is an attempt to make the shield buffer 64 KiB before it sees any HTTP.
//! - v2 TLVs are not interpreted. Their bytes are skipped and counted in
//!   [`ProxyHeader::header_len`]; in particular a `PP2_TYPE_CRC32C` checksum is not verified.
//! - v1 ports may carry leading zeros (`080`), which the specification forbids; at most five
//!   digits are accepted and the value must be at most 65535. Addresses get no such leniency:
//!   an IPv4 octet with a leading zero is refused, as the specification demands, because it
//!   would read differently as octal.
//! - Only the v2 family/protocol bytes the specification lists are accepted (`0x00`, `0x11`,
//!   `0x12`, `0x21`, `0x22`, `0x31`, `0x32`). For the `LOCAL` command the family byte is ignored,
//!   as the specification says, and so are any address bytes.
//!
//! # Partial headers
//!
//! [`parse`] never needs the whole connection buffer: given any prefix of a valid header it
//! returns [`ProxyError::Incomplete`] with the smallest buffer length at which it can make
//! progress, and it rejects invalid bytes as soon as they are seen, so a slow garbage sender is
//! dropped early. The caller decides how long to wait (the specification suggests a timeout of a
//! few seconds) and must bound its own buffer by [`MAX_HEADER_LEN`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::cidr::canonical_ip;
use crate::forwarded::{AddrSource, ClientAddr};

/// The longest v1 line, CRLF included, that the specification allows.
pub const V1_MAX_LEN: usize = 107;

/// The shortest complete v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN_LEN: usize = 15;

/// The v1 header starts with these bytes.
const V1_PREFIX: &[u8; 5] = b"PROXY";

/// The twelve bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED_LEN: usize = 16;

/// The longest v2 address block (addresses plus TLVs) accepted; see the module docs.
pub const V2_MAX_ADDR_LEN: usize = 1024;

/// The longest header [`parse`] can accept: a caller never needs to buffer more than this.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + V2_MAX_ADDR_LEN;

/// Why a buffer is not (yet) a PROXY header. Everything but [`ProxyError::Incomplete`] is the
/// peer's fault and final: the connection should be closed, and logged at debug level only,
/// since a flood can produce one per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The bytes so far are a valid start; read until the buffer holds at least
    /// `need_at_least` bytes and parse again.
    #[error("PROXY header incomplete: need at least {need_at_least} bytes")]
    Incomplete {
        /// The total buffer length (not the number of additional bytes) worth trying next.
        need_at_least: usize,
    },
    /// The bytes are neither a v1 (`PROXY`) nor a v2 (signature) header.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A v1 header without CRLF within the first [`V1_MAX_LEN`] bytes.
    #[error("PROXY v1 line longer than {V1_MAX_LEN} bytes")]
    V1TooLong,
    /// A v1 line that does not match the specification; the text says which part.
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    /// A v2 header whose version (high nibble of byte 13) is not 2; holds the whole byte.
    #[error("unsupported PROXY v2 version in byte {0:#04x}")]
    V2Version(u8),
    /// A v2 command (low nibble of byte 13) other than LOCAL or PROXY; holds the whole byte.
    #[error("unknown PROXY v2 command in byte {0:#04x}")]
    V2Command(u8),
    /// A v2 family/protocol byte the specification does not list.
    #[error("unknown PROXY v2 address family {0:#04x}")]
    V2Family(u8),
    /// A v2 address block longer than [`V2_MAX_ADDR_LEN`].
    #[error("PROXY v2 address block of {len} bytes exceeds the {V2_MAX_ADDR_LEN}-byte limit")]
    V2TooLong {
        /// The length announced in the header.
        len: usize,
    },
    /// A v2 address block too short for the addresses of its family.
    #[error("PROXY v2 address block of {len} bytes is too short for family {family:#04x}")]
    V2AddressTooShort {
        /// The family/protocol byte.
        family: u8,
        /// The length announced in the header.
        len: usize,
    },
}

impl ProxyError {
    /// Whether more bytes may still make a valid header (as opposed to a final refusal).
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Self::Incomplete { .. })
    }
}

/// A parsed PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxyHeader {
    /// Length of the header in bytes, TLVs included: application data starts at this offset.
    pub header_len: usize,
    /// The original client's address and port; `None` for v1 `UNKNOWN`, for the v2 `LOCAL`
    /// command (health checks) and for the v2 unspecified and unix families. In those cases the
    /// connection's own peer is the client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, `None` exactly when `source` is.
    pub destination: Option<SocketAddr>,
}

impl ProxyHeader {
    /// The client of a connection from `peer` that began with this header: the header's source
    /// ([`AddrSource::ProxyProtocol`]), or `peer` ([`AddrSource::Socket`]) when the header names
    /// none. The address is unmapped ([`canonical_ip`]). The caller must already have checked
    /// that `peer` is allowed to send PROXY headers at all.
    pub fn client(&self, peer: IpAddr) -> ClientAddr {
        match self.source {
            Some(source) => ClientAddr {
                ip: canonical_ip(source.ip()),
                source: AddrSource::ProxyProtocol,
            },
            None => ClientAddr {
                ip: canonical_ip(peer),
                source: AddrSource::Socket,
            },
        }
    }
}

/// Whether `buf` starts like a PROXY header: the whole v2 signature, or `PROXY ` for v1.
///
/// Needs 12 bytes to recognise v2 and 6 for v1; a shorter buffer answers `false`. HTTP methods
/// never start with `PROXY `, so a `true` here on a plain HTTP listener means a load balancer is
/// sending PROXY headers that nobody is configured to read.
pub fn looks_like_proxy(buf: &[u8]) -> bool {
    buf.starts_with(&V2_SIGNATURE) || buf.starts_with(b"PROXY ")
}

/// Parses the PROXY header (v1 or v2) at the start of `buf`. Bytes after the header are not
/// looked at. See [`ProxyError`] for the outcomes and the module docs for the policy.
pub fn parse(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    match buf.first() {
        None => Err(ProxyError::Incomplete {
            need_at_least: V1_MIN_LEN,
        }),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

/// Whether `buf` agrees with `expected` for as many bytes as both have.
fn agrees_with(buf: &[u8], expected: &[u8]) -> bool {
    buf.iter().zip(expected).all(|(a, b)| a == b)
}

fn parse_v1(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if !agrees_with(buf, V1_PREFIX) {
        return Err(ProxyError::NotProxy);
    }
    if buf.get(V1_PREFIX.len()).is_some_and(|&b| b != b' ') {
        return Err(ProxyError::V1Malformed("expected a space after PROXY"));
    }
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // A CR is fine only as the last byte so far, where its LF may still come.
        if let Some(cr) = window.iter().position(|&b| b == b'\r')
            && cr + 1 < window.len()
        {
            return Err(ProxyError::V1Malformed("CR not followed by LF"));
        }
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        return Err(ProxyError::Incomplete {
            need_at_least: (buf.len() + 1).max(V1_MIN_LEN),
        });
    };
    let line = window
        .get(..lf)
        .and_then(|l| l.strip_suffix(b"\r"))
        .ok_or(ProxyError::V1Malformed("line ends in LF without CR"))?;
    if line.contains(&b'\r') {
        return Err(ProxyError::V1Malformed("CR not followed by LF"));
    }
    let fields = line
        .strip_prefix(b"PROXY ")
        .ok_or(ProxyError::V1Malformed("expected a space after PROXY"))?;
    let (source, destination) = parse_v1_fields(fields)?;
    Ok(ProxyHeader {
        header_len: lf + 1,
        source,
        destination,
    })
}

/// The part of a v1 line after `PROXY `, without CRLF.
fn parse_v1_fields(fields: &[u8]) -> Result<(Option<SocketAddr>, Option<SocketAddr>), ProxyError> {
    let mut fields = fields.split(|&b| b == b' ');
    let want_v6 = match fields.next().unwrap_or_default() {
        // The sender may omit the rest of the line or put anything there; it is ignored.
        b"UNKNOWN" => return Ok((None, None)),
        b"TCP4" => false,
        b"TCP6" => true,
        _ => {
            return Err(ProxyError::V1Malformed(
                "protocol must be TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1Malformed(
            "expected exactly: source destination source-port destination-port",
        ));
    };
    let src = v1_address(src, want_v6)?;
    let dst = v1_address(dst, want_v6)?;
    let sport = v1_port(sport)?;
    let dport = v1_port(dport)?;
    Ok((
        Some(SocketAddr::new(src, sport)),
        Some(SocketAddr::new(dst, dport)),
    ))
}

fn v1_address(field: &[u8], want_v6: bool) -> Result<IpAddr, ProxyError> {
    let text = std::str::from_utf8(field).map_err(|_| ProxyError::V1Malformed("bad address"))?;
    if want_v6 {
        text.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::V1Malformed("bad IPv6 address for TCP6"))
    } else {
        // The standard parser refuses octets with leading zeros, as the specification asks.
        text.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::V1Malformed("bad IPv4 address for TCP4"))
    }
}

fn v1_port(field: &[u8]) -> Result<u16, ProxyError> {
    let bad = ProxyError::V1Malformed("port must be a decimal number from 0 to 65535");
    if field.is_empty() || field.len() > 5 || !field.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let value = field
        .iter()
        .fold(0_u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| bad)
}

/// The v2 command in the low nibble of byte 13.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    Local,
    Proxy,
}

fn v2_command(ver_cmd: u8) -> Result<Command, ProxyError> {
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd));
    }
    match ver_cmd & 0x0f {
        0x0 => Ok(Command::Local),
        0x1 => Ok(Command::Proxy),
        _ => Err(ProxyError::V2Command(ver_cmd)),
    }
}

/// The address bytes a family needs, or an error for a family the specification does not list.
fn v2_family_len(family: u8) -> Result<usize, ProxyError> {
    match family {
        0x00 => Ok(0),
        0x11 | 0x12 => Ok(2 * 4 + 2 * 2),
        0x21 | 0x22 => Ok(2 * 16 + 2 * 2),
        0x31 | 0x32 => Ok(2 * 108),
        _ => Err(ProxyError::V2Family(family)),
    }
}

fn parse_v2(buf: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if !agrees_with(buf, &V2_SIGNATURE) {
        return Err(ProxyError::NotProxy);
    }
    let incomplete = ProxyError::Incomplete {
        need_at_least: V2_FIXED_LEN,
    };
    let Some((fixed, rest)) = buf.split_first_chunk::<V2_FIXED_LEN>() else {
        // Judge the version, command and family bytes as soon as they arrive.
        if let Some(&ver_cmd) = buf.get(12)
            && v2_command(ver_cmd)? == Command::Proxy
            && let Some(&family) = buf.get(13)
        {
            v2_family_len(family)?;
        }
        return Err(incomplete);
    };
    let [.., ver_cmd, family, len_hi, len_lo] = *fixed;
    let command = v2_command(ver_cmd)?;
    let family_len = match command {
        Command::Local => 0,
        Command::Proxy => v2_family_len(family)?,
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if len > V2_MAX_ADDR_LEN {
        return Err(ProxyError::V2TooLong { len });
    }
    if len < family_len {
        return Err(ProxyError::V2AddressTooShort { family, len });
    }
    let header_len = V2_FIXED_LEN + len;
    let Some(block) = rest.get(..len) else {
        return Err(ProxyError::Incomplete {
            need_at_least: header_len,
        });
    };
    let too_short = ProxyError::V2AddressTooShort { family, len };
    let (source, destination) = match (command, family) {
        (Command::Proxy, 0x11 | 0x12) => {
            let &[a0, a1, a2, a3, b0, b1, b2, b3, p0, p1, q0, q1] =
                block.first_chunk::<12>().ok_or(too_short)?;
            (
                Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(a0, a1, a2, a3)),
                    u16::from_be_bytes([p0, p1]),
                )),
                Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(b0, b1, b2, b3)),
                    u16::from_be_bytes([q0, q1]),
                )),
            )
        }
        (Command::Proxy, 0x21 | 0x22) => {
            let (src, rest) = block.split_first_chunk::<16>().ok_or(too_short)?;
            let (dst, rest) = rest.split_first_chunk::<16>().ok_or(too_short)?;
            let &[p0, p1, q0, q1] = rest.first_chunk::<4>().ok_or(too_short)?;
            (
                Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(*src)),
                    u16::from_be_bytes([p0, p1]),
                )),
                Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(*dst)),
                    u16::from_be_bytes([q0, q1]),
                )),
            )
        }
        // LOCAL (a health check by the proxy itself), UNSPEC and unix sockets name no client.
        _ => (None, None),
    };
    Ok(ProxyHeader {
        header_len,
        source,
        destination,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(family);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn malformed(r: Result<ProxyHeader, ProxyError>) -> bool {
        matches!(r, Err(ProxyError::V1Malformed(_)))
    }

    #[test]
    fn v1_tcp4() {
        let buf = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(h.header_len, 47);
        assert_eq!(&buf[h.header_len..h.header_len + 3], b"GET");
        assert_eq!(h.source, sa("192.168.0.1:56324"));
        assert_eq!(h.destination, sa("192.168.0.11:443"));
    }

    #[test]
    fn v1_tcp6() {
        let buf = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n";
        let h = parse(buf).unwrap();
        assert_eq!(h.header_len, buf.len());
        assert_eq!(h.source, sa("[2001:db8::1]:65535"));
        assert_eq!(h.destination, sa("[2001:db8::2]:0"));
    }

    #[test]
    fn v1_mapped_source_is_unmapped_for_the_client() {
        let h = parse(b"PROXY TCP6 ::ffff:203.0.113.9 2001:db8::2 1 2\r\n").unwrap();
        assert_eq!(h.source, sa("[::ffff:203.0.113.9]:1"));
        assert_eq!(
            h.client("10.0.0.1".parse().unwrap()),
            ClientAddr {
                ip: "203.0.113.9".parse().unwrap(),
                source: AddrSource::ProxyProtocol
            }
        );
    }

    #[test]
    fn v1_longest_line_is_accepted() {
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let line = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(line.len(), V1_MAX_LEN);
        let h = parse(line.as_bytes()).unwrap();
        assert_eq!(h.header_len, V1_MAX_LEN);
        assert_eq!(h.source, None);
        let line = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(parse(line.as_bytes()).unwrap().header_len, 104);
    }

    #[test]
    fn v1_unknown() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UNKNOWN anything \x01 at all\r\n",
        ] {
            let h = parse(line).unwrap();
            assert_eq!(h.header_len, line.len());
            assert_eq!((h.source, h.destination), (None, None));
            let peer = "10.0.0.1".parse().unwrap();
            assert_eq!(
                h.client(peer),
                ClientAddr {
                    ip: peer,
                    source: AddrSource::Socket
                }
            );
        }
    }

    #[test]
    fn v1_ports_allow_leading_zeros_up_to_five_digits() {
        let h = parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 080 00443\r\n").unwrap();
        assert_eq!(h.source, sa("1.2.3.4:80"));
        assert_eq!(h.destination, sa("5.6.7.8:443"));
        assert!(malformed(parse(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 000080 443\r\n"
        )));
        assert!(malformed(parse(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n"
        )));
        assert!(malformed(parse(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 443\r\n"
        )));
        assert!(malformed(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n")));
        assert!(malformed(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 443\r\n")));
        assert!(malformed(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8  443\r\n")));
    }

    #[test]
    fn v1_malformed_lines() {
        for line in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
            b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                malformed(parse(line)),
                "{:?} -> {:?}",
                String::from_utf8_lossy(line),
                parse(line)
            );
        }
        // A lone CR is refused as soon as the next byte shows it is not CRLF.
        assert!(malformed(parse(b"PROXY TCP4\rx")));
    }

    #[test]
    fn v1_without_crlf_within_107_bytes_is_too_long() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN, b'a');
        assert_eq!(parse(&line), Err(ProxyError::V1TooLong));
        line.truncate(V1_MAX_LEN - 1);
        assert!(parse(&line).unwrap_err().is_incomplete());
        line.push(b'\r');
        assert_eq!(parse(&line), Err(ProxyError::V1TooLong));
        let huge = [b"PROXY TCP4 ".as_slice(), &[b'1'; 100_000]].concat();
        assert_eq!(parse(&huge), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn v1_prefixes_are_incomplete() {
        let line = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        for n in 0..line.len() {
            match parse(&line[..n]) {
                Err(ProxyError::Incomplete { need_at_least }) => assert!(need_at_least > n),
                other => panic!("prefix {n}: {other:?}"),
            }
        }
    }

    #[test]
    fn not_proxy() {
        for buf in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST / HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n",
            b"\x16\x03\x01",
            b"\r\n\r\nGET",
            b"PROX ",
        ] {
            assert_eq!(parse(buf), Err(ProxyError::NotProxy), "{buf:?}");
            assert!(!looks_like_proxy(buf));
        }
    }

    #[test]
    fn looks_like() {
        assert!(looks_like_proxy(b"PROXY TCP4"));
        assert!(looks_like_proxy(b"PROXY "));
        assert!(!looks_like_proxy(b"PROXY"));
        assert!(looks_like_proxy(&V2_SIGNATURE));
        assert!(!looks_like_proxy(&V2_SIGNATURE[..11]));
        assert!(!looks_like_proxy(b""));
    }

    #[test]
    fn v2_tcp4_with_tlvs() {
        let mut block = vec![192, 0, 2, 1, 198, 51, 100, 2, 0x1f, 0x90, 0x01, 0xbb];
        block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // ALPN TLV
        let mut buf = v2(0x21, 0x11, &block);
        let header_len = buf.len();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let h = parse(&buf).unwrap();
        assert_eq!(h.header_len, header_len);
        assert_eq!(h.source, sa("192.0.2.1:8080"));
        assert_eq!(h.destination, sa("198.51.100.2:443"));
    }

    #[test]
    fn v2_udp6() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let block = [&src.octets()[..], &dst.octets(), &[0, 53, 0xff, 0xff]].concat();
        let h = parse(&v2(0x21, 0x22, &block)).unwrap();
        assert_eq!(h.header_len, 16 + 36);
        assert_eq!(h.source, sa("[2001:db8::1]:53"));
        assert_eq!(h.destination, sa("[2001:db8::2]:65535"));
    }

    #[test]
    fn v2_without_client_address() {
        // LOCAL ignores the family, even an unlisted one, and any address bytes.
        for (ver_cmd, family, block) in [
            (0x20, 0x00, &[][..]),
            (0x20, 0x11, &[1, 2, 3, 4][..]),
            (0x20, 0xff, &[9; 40][..]),
            (0x21, 0x00, &[][..]),
            (0x21, 0x00, &[7; 12][..]),
            (0x21, 0x31, &[0; 216][..]),
            (0x21, 0x32, &[0; 300][..]),
        ] {
            let h = parse(&v2(ver_cmd, family, block)).unwrap();
            assert_eq!(h.header_len, 16 + block.len());
            assert_eq!((h.source, h.destination), (None, None));
        }
    }

    #[test]
    fn v2_invalid() {
        assert_eq!(
            parse(&v2(0x11, 0x11, &[0; 12])),
            Err(ProxyError::V2Version(0x11))
        );
        assert_eq!(
            parse(&v2(0x31, 0x11, &[0; 12])),
            Err(ProxyError::V2Version(0x31))
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, &[0; 12])),
            Err(ProxyError::V2Command(0x22))
        );
        assert_eq!(
            parse(&v2(0x2f, 0x11, &[0; 12])),
            Err(ProxyError::V2Command(0x2f))
        );
        for family in [0x01, 0x10, 0x13, 0x20, 0x23, 0x30, 0x33, 0x41, 0xff] {
            assert_eq!(
                parse(&v2(0x21, family, &[0; 216])),
                Err(ProxyError::V2Family(family))
            );
        }
        assert_eq!(
            parse(&v2(0x21, 0x11, &[0; 11])),
            Err(ProxyError::V2AddressTooShort {
                family: 0x11,
                len: 11
            })
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 35])),
            Err(ProxyError::V2AddressTooShort {
                family: 0x21,
                len: 35
            })
        );
        assert_eq!(
            parse(&v2(0x21, 0x31, &[0; 215])),
            Err(ProxyError::V2AddressTooShort {
                family: 0x31,
                len: 215
            })
        );
        // Bad bytes are refused before the rest of the header arrives.
        assert_eq!(
            parse(&v2(0x21, 0x11, &[0; 11])[..16]),
            Err(ProxyError::V2AddressTooShort {
                family: 0x11,
                len: 11
            })
        );
        assert_eq!(
            parse(&v2(0x11, 0x11, &[])[..13]),
            Err(ProxyError::V2Version(0x11))
        );
        assert_eq!(
            parse(&v2(0x21, 0x99, &[])[..14]),
            Err(ProxyError::V2Family(0x99))
        );
        let mut bad_sig = v2(0x21, 0x11, &[0; 12]);
        bad_sig[11] = b'X';
        assert_eq!(parse(&bad_sig), Err(ProxyError::NotProxy));
        assert_eq!(parse(&bad_sig[..12]), Err(ProxyError::NotProxy));
    }

    #[test]
    fn v2_huge_headers_are_refused_before_buffering() {
        let mut head = V2_SIGNATURE.to_vec();
        head.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&head), Err(ProxyError::V2TooLong { len: 65535 }));
        let mut head = V2_SIGNATURE.to_vec();
        head.extend_from_slice(&[0x21, 0x11, 0x04, 0x01]);
        assert_eq!(parse(&head), Err(ProxyError::V2TooLong { len: 1025 }));
        // Exactly the limit is fine.
        let h = parse(&v2(0x21, 0x11, &[0; V2_MAX_ADDR_LEN])).unwrap();
        assert_eq!(h.header_len, MAX_HEADER_LEN);
    }

    #[test]
    fn v2_prefixes_are_incomplete_with_exact_need() {
        let buf = v2(0x21, 0x11, &[1; 20]);
        for n in 0..buf.len() {
            let want = if n == 0 {
                V1_MIN_LEN
            } else if n < 16 {
                16
            } else {
                36
            };
            assert_eq!(
                parse(&buf[..n]),
                Err(ProxyError::Incomplete {
                    need_at_least: want
                }),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            ProxyError::Incomplete { need_at_least: 16 }.to_string(),
            "PROXY header incomplete: need at least 16 bytes"
        );
        assert_eq!(
            ProxyError::V2Family(0x99).to_string(),
            "unknown PROXY v2 address family 0x99"
        );
        assert!(!ProxyError::NotProxy.is_incomplete());
    }
}
