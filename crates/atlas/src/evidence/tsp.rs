//! The little of RFC 3161 (Time-Stamp Protocol) the evidence packages need: building a
//! `TimeStampReq` for a SHA-256 hash, and reading the status, message imprint, nonce and
//! `genTime` out of a `TimeStampResp`.
//!
//! Written by hand over a minimal DER reader instead of pulling the RustCrypto `cms`/`x509-tsp`
//! stack: the request is 60 bytes of fixed shape, and the reply is only walked down to the
//! `TSTInfo`. Signature checking is not done here: it needs the authority's certificate, which
//! only the recipient can decide to trust, so it is left to `openssl ts -verify` (`VERIFY.txt`).
//! Every length is checked against what is left, so a hostile reply is an error, never a panic.

/// Object identifier of SHA-256 (2.16.840.1.101.3.4.2.1), DER content bytes.
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
/// id-signedData (1.2.840.113549.1.7.2).
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
/// id-ct-TSTInfo (1.2.840.113549.1.9.16.1.4).
const OID_TST_INFO: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x04,
];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0]` constructed, context-specific.
const CTX0: u8 = 0xa0;

/// What was read from a granted reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Whether the imprint's hash algorithm is SHA-256.
    pub sha256: bool,
    /// The hashed message the authority signed.
    pub imprint: Vec<u8>,
    /// The nonce echoed back, as unsigned big-endian bytes without leading zeros.
    pub nonce: Option<Vec<u8>>,
    /// `genTime` as written (`YYYYMMDDhhmmss[.f]Z`).
    pub gen_time: String,
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let len = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | len.len() as u8);
        out.extend_from_slice(len);
    }
    out.extend_from_slice(content);
    out
}

/// A non-negative INTEGER from unsigned big-endian bytes (a leading zero added when the top bit
/// is set, so it does not read as negative).
fn unsigned_integer(v: &[u8]) -> Vec<u8> {
    let skip = v.iter().take_while(|b| **b == 0).count();
    let mut c = v.get(skip..).unwrap_or_default().to_vec();
    if c.first().is_none_or(|b| b & 0x80 != 0) {
        c.insert(0, 0);
    }
    tlv(INTEGER, &c)
}

/// `TimeStampReq { version 1, messageImprint { sha256, hash }, nonce, certReq TRUE }`. The
/// authority's certificate is asked for so that `openssl ts -verify` needs only the root.
pub fn request(hash: &[u8; 32], nonce: &[u8; 8]) -> Vec<u8> {
    let alg = tlv(SEQUENCE, &[tlv(OID, OID_SHA256), tlv(NULL, &[])].concat());
    let imprint = tlv(SEQUENCE, &[alg, tlv(OCTET_STRING, hash)].concat());
    let body = [
        tlv(INTEGER, &[1]),
        imprint,
        unsigned_integer(nonce),
        tlv(BOOLEAN, &[0xff]),
    ]
    .concat();
    tlv(SEQUENCE, &body)
}

/// The nonce as [`TokenInfo::nonce`] reports it, for comparison.
pub fn nonce_value(nonce: &[u8; 8]) -> Vec<u8> {
    let skip = nonce.iter().take_while(|b| **b == 0).count();
    nonce.get(skip..).unwrap_or_default().to_vec()
}

/// A DER element: its tag and content.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
}

/// Reads one element off the front of `input`; returns it and the rest.
fn next(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("truncated")?;
    if tag & 0x1f == 0x1f {
        return Err("multi-byte tags are not used in RFC 3161".into());
    }
    let (&first, mut rest) = rest.split_first().ok_or("truncated")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err("indefinite or oversized length".into());
        }
        let (bytes, r) = rest.split_at_checked(n).ok_or("truncated length")?;
        rest = r;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (content, rest) = rest.split_at_checked(len).ok_or("length beyond the data")?;
    Ok((Tlv { tag, content }, rest))
}

fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    let (t, rest) = next(input)?;
    if t.tag != tag {
        return Err(format!("expected {what}"));
    }
    Ok((t.content, rest))
}

/// Reads a `TimeStampResp` (what `manifest.json.tsr` holds): the status must be granted (0) or
/// granted with modifications (1), and the token must carry a `TSTInfo`.
pub fn parse_reply(der: &[u8]) -> Result<TokenInfo, String> {
    let (resp, _) = expect(der, SEQUENCE, "TimeStampResp")?;
    let (status_info, rest) = expect(resp, SEQUENCE, "PKIStatusInfo")?;
    let (status, _) = expect(status_info, INTEGER, "status")?;
    if status != [0] && status != [1] {
        return Err(format!(
            "the authority refused the request (status {status:?})"
        ));
    }
    parse_token(rest)
}

/// Reads a `TimeStampToken` (a CMS `ContentInfo` with `SignedData` around a `TSTInfo`).
pub fn parse_token(der: &[u8]) -> Result<TokenInfo, String> {
    let (ci, _) = expect(der, SEQUENCE, "ContentInfo")?;
    let (oid, rest) = expect(ci, OID, "content type")?;
    if oid != OID_SIGNED_DATA {
        return Err("the token is not SignedData".into());
    }
    let (explicit, _) = expect(rest, CTX0, "[0] content")?;
    let (sd, _) = expect(explicit, SEQUENCE, "SignedData")?;
    let (_version, rest) = expect(sd, INTEGER, "version")?;
    let (_digests, rest) = expect(rest, SET, "digestAlgorithms")?;
    let (encap, _) = expect(rest, SEQUENCE, "encapContentInfo")?;
    let (oid, rest) = expect(encap, OID, "eContentType")?;
    if oid != OID_TST_INFO {
        return Err("the signed content is not a TSTInfo".into());
    }
    let (explicit, _) = expect(rest, CTX0, "[0] eContent")?;
    let (tst, _) = expect(explicit, OCTET_STRING, "eContent")?;
    parse_tst_info(tst)
}

fn parse_tst_info(der: &[u8]) -> Result<TokenInfo, String> {
    let (tst, _) = expect(der, SEQUENCE, "TSTInfo")?;
    let (_version, rest) = expect(tst, INTEGER, "version")?;
    let (_policy, rest) = expect(rest, OID, "policy")?;
    let (imprint, rest) = expect(rest, SEQUENCE, "messageImprint")?;
    let (alg, after_alg) = expect(imprint, SEQUENCE, "hashAlgorithm")?;
    let (alg_oid, _) = expect(alg, OID, "hash algorithm")?;
    let (hashed, _) = expect(after_alg, OCTET_STRING, "hashedMessage")?;
    let (_serial, rest) = expect(rest, INTEGER, "serialNumber")?;
    let (gen_time, mut rest) = expect(rest, GENERALIZED_TIME, "genTime")?;
    let gen_time = std::str::from_utf8(gen_time)
        .ok()
        .filter(|s| {
            s.len() <= 40
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || b == b'.' || b == b'Z')
        })
        .ok_or("genTime is not a GeneralizedTime")?
        .to_string();
    // Optional fields follow in a fixed order: accuracy (SEQUENCE), ordering (BOOLEAN),
    // nonce (INTEGER), tsa [0], extensions [1]. Only the nonce is wanted.
    let mut nonce = None;
    while !rest.is_empty() {
        let (t, r) = next(rest)?;
        if t.tag == INTEGER {
            let skip = t.content.iter().take_while(|b| **b == 0).count();
            nonce = Some(t.content.get(skip..).unwrap_or_default().to_vec());
            break;
        }
        rest = r;
    }
    Ok(TokenInfo {
        sha256: alg_oid == OID_SHA256,
        imprint: hashed.to_vec(),
        nonce,
        gen_time,
    })
}

/// `genTime` (`20240301100000Z`, maybe with fractions) as `2024-03-01T10:00:00Z`.
pub fn readable_time(g: &str) -> String {
    let d = |r: std::ops::Range<usize>| g.get(r).unwrap_or("??");
    format!(
        "{}-{}-{}T{}:{}:{}{}Z",
        d(0..4),
        d(4..6),
        d(6..8),
        d(8..10),
        d(10..12),
        d(12..14),
        g.get(14..).map(|f| f.trim_end_matches('Z')).unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_rfc_3161_shape() {
        let req = request(&[0xab; 32], &[0x80, 0, 0, 0, 0, 0, 0, 1]);
        // SEQUENCE, version 1, imprint with the SHA-256 OID and 32 bytes, nonce with a leading
        // zero (top bit set), certReq TRUE.
        let (body, rest) = expect(&req, SEQUENCE, "req").unwrap();
        assert!(rest.is_empty());
        let (v, rest) = expect(body, INTEGER, "v").unwrap();
        assert_eq!(v, [1]);
        let (imp, rest) = expect(rest, SEQUENCE, "imprint").unwrap();
        let (alg, h) = expect(imp, SEQUENCE, "alg").unwrap();
        assert_eq!(expect(alg, OID, "oid").unwrap().0, OID_SHA256);
        assert_eq!(expect(h, OCTET_STRING, "h").unwrap().0, [0xab; 32]);
        let (n, rest) = expect(rest, INTEGER, "nonce").unwrap();
        assert_eq!(n, [0, 0x80, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(expect(rest, BOOLEAN, "certReq").unwrap().0, [0xff]);
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x80, 0, 0],
            &[0x30, 0x03, 0x30, 0x01, 0x02],
            &[0x1f, 0x01, 0x00],
        ] {
            assert!(parse_reply(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gen_time_is_made_readable() {
        assert_eq!(readable_time("20240301100000Z"), "2024-03-01T10:00:00Z");
        assert_eq!(readable_time("20240301100000.5Z"), "2024-03-01T10:00:00.5Z");
    }
}
