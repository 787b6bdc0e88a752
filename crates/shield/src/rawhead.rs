//! An origin's response head as it arrived: its fields as places in the received bytes, with
//! what each is to the shield. On the own client's path (see `upstream`) a response the shield
//! only passes on keeps its fields this way, and the shield's HTTP/1.1 writer copies them out
//! of the received bytes: no header map is built, hashed and dropped per response, as nginx
//! builds none. Anything that reads a response's fields gets them in the map first
//! ([`crate::body::complete_head`]); only `proxy::pass` leaves them here.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};

use crate::pages::X_QALQAN_CACHE;

/// The most fields kept this way; a head with more is put in a map (see `upstream`).
pub(crate) const MAX_FIELDS: usize = 32;

/// What a field is to the shield.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum Kind {
    /// Passed on as it is.
    #[default]
    Other,
    /// `Content-Length`: the writer frames the body by it.
    ContentLength,
    /// `Date`: the writer adds none of its own.
    Date,
    /// `Via`: the shield's own entry must join it.
    Via,
    /// `x-qalqan-cache`, which the shield sets itself: the origin's (another shield's, say) is
    /// replaced, so a head with one goes to a map.
    Replaced,
    /// `Transfer-Encoding`: frames the body on the origin's connection only; never passed on.
    TransferEncoding,
    /// Hop-by-hop (RFC 9110 7.6.1): never passed on. Kept in a map
    /// built from the head, where the shield strips it as it strips any message's.
    HopByHop,
    /// `Connection` naming other fields, which are hop-by-hop too.
    Connection,
    /// `Connection` naming only this connection's state (`keep-alive`, `close`): not even put
    /// in a map.
    Drop,
}

impl Kind {
    /// The kind of the field named `name`, compared without regard to case.
    pub(crate) fn of(name: &[u8]) -> Kind {
        let is = |s: &str| lower_eq(name, s.as_bytes());
        // By length first: most names match none of these.
        match name.len() {
            2 if is("te") => Kind::HopByHop,
            3 if is("via") => Kind::Via,
            4 if is("date") => Kind::Date,
            7 if is("trailer") || is("upgrade") => Kind::HopByHop,
            10 if is("connection") => Kind::Connection,
            10 if is("keep-alive") => Kind::HopByHop,
            14 if is("content-length") => Kind::ContentLength,
            14 if is("x-qalqan-cache") => Kind::Replaced,
            16 if is("proxy-connection") => Kind::HopByHop,
            17 if is("transfer-encoding") => Kind::TransferEncoding,
            18 if is("proxy-authenticate") => Kind::HopByHop,
            19 if is("proxy-authorization") => Kind::HopByHop,
            _ => Kind::Other,
        }
    }
}

/// Whether `b` is `lower` in any case, for a `lower` of lowercase letters, digits and `-` only.
/// Setting the bit that makes an ASCII letter lowercase maps no other byte onto one of those but
/// a few control bytes (CR onto `-`, and so on), which httparse lets into no name or value; so
/// the comparison is an OR and a compare per eight bytes, not a case conversion per byte.
pub(crate) fn lower_eq(b: &[u8], lower: &[u8]) -> bool {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let n = b.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return b.iter().zip(lower).all(|(&x, &y)| x | 0x20 == y);
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let mut at = 0;
    while at + 8 < n {
        if word(b, at) | LOWER != word(lower, at) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes (overlapping the word before when `n` is not a multiple of 8).
    word(b, n - 8) | LOWER == word(lower, n - 8)
}

/// Where one field's name and value lie in the head (a head is at most 64 KiB, so offsets fit
/// in 16 bits), and its kind.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Field {
    pub name: u16,
    pub name_len: u16,
    pub value: u16,
    pub value_len: u16,
    pub kind: Kind,
}

impl Field {
    /// The field's place in `head`, for a name and value that are slices of it; `None` if they
    /// are not inside it or it is longer than 16 bits can address.
    pub(crate) fn new(head: &[u8], name: &[u8], value: &[u8], kind: Kind) -> Option<Field> {
        let base = head.as_ptr() as usize;
        let at = |s: &[u8]| -> Option<(u16, u16)> {
            if s.is_empty() {
                return Some((0, 0));
            }
            let start = (s.as_ptr() as usize).checked_sub(base)?;
            let end = start.checked_add(s.len())?;
            (end <= head.len()).then_some(())?;
            Some((u16::try_from(start).ok()?, u16::try_from(s.len()).ok()?))
        };
        let (name, name_len) = at(name)?;
        let (value, value_len) = at(value)?;
        Some(Field {
            name,
            name_len,
            value,
            value_len,
            kind,
        })
    }

    /// The name's bytes in `head` (empty if out of range, which `new` rules out).
    pub(crate) fn name<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        let start = usize::from(self.name);
        head.get(start..start + usize::from(self.name_len))
            .unwrap_or_default()
    }

    fn value_range(&self) -> std::ops::Range<usize> {
        let start = usize::from(self.value);
        start..start + usize::from(self.value_len)
    }

    /// The value's bytes in `head`.
    pub(crate) fn value<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        head.get(self.value_range()).unwrap_or_default()
    }

    /// Where the field's whole line lies in `head`, when it is exactly `name: value\r\n` (one
    /// space, a value not empty, CRLF): then it can be copied as it is.
    pub(crate) fn line(&self, head: &[u8]) -> Option<std::ops::Range<usize>> {
        let start = usize::from(self.name);
        let colon = start + usize::from(self.name_len);
        let value = self.value_range();
        let end = value.end + 2;
        let plain = self.value_len > 0
            && value.start == colon + 2
            && head.get(colon..value.start) == Some(b": ".as_slice())
            && head.get(value.end..end) == Some(b"\r\n".as_slice());
        plain.then_some(start..end)
    }
}

/// The fields of a response head that are not (yet) in its map: the origin's, in the order
/// received, then what the shield adds (`via`, `x-qalqan-cache`).
pub(crate) struct RawHead {
    /// The head's bytes as received; the fields are places in it.
    bytes: Bytes,
    fields: [Field; MAX_FIELDS],
    len: u8,
    /// This hop's `Via` entry.
    pub via: Option<&'static str>,
    /// The `x-qalqan-cache` value.
    pub cache: Option<&'static str>,
}

impl RawHead {
    /// No fields.
    pub(crate) fn empty() -> RawHead {
        RawHead {
            bytes: Bytes::new(),
            fields: [Field::default(); MAX_FIELDS],
            len: 0,
            via: None,
            cache: None,
        }
    }

    /// The fields of `bytes` listed in `fields`; `None` if there are more than [`MAX_FIELDS`].
    pub(crate) fn new(bytes: Bytes, fields: &[Field]) -> Option<RawHead> {
        let mut h = RawHead::empty();
        h.fields.get_mut(..fields.len())?.copy_from_slice(fields);
        h.len = fields.len() as u8;
        h.bytes = bytes;
        Some(h)
    }

    /// Whether nothing is left here for a writer.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0 && self.via.is_none() && self.cache.is_none()
    }

    /// The head's bytes, which the fields are places in.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The origin's fields in the order received, hop-by-hop ones included (a writer skips
    /// them).
    pub(crate) fn field_list(&self) -> &[Field] {
        &self.fields[..usize::from(self.len)]
    }

    /// Moves every field into `map`, ahead of what it holds already; hop-by-hop fields are
    /// left out. `map` then has all of the response's fields and this head none.
    pub(crate) fn move_into(&mut self, map: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        let mut all = self.to_map(false);
        if let Some(v) = self.via.take() {
            all.append(header::VIA, HeaderValue::from_static(v));
        }
        if let Some(v) = self.cache.take() {
            all.append(X_QALQAN_CACHE.clone(), HeaderValue::from_static(v));
        }
        self.len = 0;
        prepend(map, all);
    }

    /// Every origin field as a map, hop-by-hop ones included (for the caller to strip); none is
    /// left here.
    pub(crate) fn take_map(&mut self) -> HeaderMap {
        let m = self.to_map(true);
        self.len = 0;
        m
    }

    /// The origin's fields as a map (values share the head's bytes); hop-by-hop ones only when
    /// `hop_by_hop` (for the shield to strip them as it strips any message's, see `upstream`).
    /// A field the `http` crate refuses is left out: none can be, as httparse accepts the same
    /// name and value bytes (a property test checks it).
    pub(crate) fn to_map(&self, hop_by_hop: bool) -> HeaderMap {
        map_of(
            &self.bytes,
            &self.fields[..usize::from(self.len)],
            hop_by_hop,
        )
    }
}

/// Puts `first` ahead of what `map` holds.
pub(crate) fn prepend(map: &mut HeaderMap, first: HeaderMap) {
    let later = std::mem::replace(map, first);
    // (The iterator names a field only at the first of its values.)
    let mut last = None;
    for (name, value) in later {
        if name.is_some() {
            last = name;
        }
        if let Some(name) = &last {
            map.append(name.clone(), value);
        }
    }
}

/// The fields of `head` listed in `fields`, as a map; hop-by-hop ones only when `hop_by_hop`,
/// and a `Connection` naming only this connection's state never.
pub(crate) fn map_of(head: &Bytes, fields: &[Field], hop_by_hop: bool) -> HeaderMap {
    // Room for what the shield adds (via, x-qalqan-cache, ...) without growing the map.
    let mut map = HeaderMap::with_capacity(fields.len() + 4);
    for f in fields {
        match f.kind {
            Kind::Drop => continue,
            Kind::HopByHop | Kind::TransferEncoding | Kind::Connection if !hop_by_hop => continue,
            _ => {}
        }
        let Some(name) = crate::h1::field_name(f.name(head)) else {
            continue;
        };
        let r = f.value_range();
        if r.end > head.len() {
            continue;
        }
        if let Ok(value) = HeaderValue::from_maybe_shared(head.slice(r)) {
            map.append(name, value);
        }
    }
    map
}

/// A head parsed as `upstream` parses one: its bytes and fields (kinds by name only).
#[cfg(test)]
pub(crate) fn parse(head: &[u8]) -> Option<(Bytes, Vec<Field>)> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut slots);
    let httparse::Status::Complete(n) = res.parse(head).ok()? else {
        return None;
    };
    let bytes = Bytes::copy_from_slice(&head[..n]);
    let fields = res
        .headers
        .iter()
        .map(|h| {
            let ns = h.name.as_ptr() as usize - head.as_ptr() as usize;
            let vs = h.value.as_ptr() as usize - head.as_ptr() as usize;
            Field::new(
                &bytes,
                &bytes[ns..ns + h.name.len()],
                &bytes[vs..vs + h.value.len()],
                Kind::of(h.name.as_bytes()),
            )
        })
        .collect::<Option<Vec<_>>>()?;
    Some((bytes, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_eq_is_eq_ignore_ascii_case_for_names_and_tokens() {
        let lowers = [
            "te",
            "via",
            "date",
            "close",
            "chunked",
            "trailer",
            "keep-alive",
            "connection",
            "content-length",
            "proxy-connection",
            "transfer-encoding",
            "proxy-authorization",
        ];
        for l in lowers {
            for other in lowers {
                for cand in [other.to_string(), other.to_ascii_uppercase()] {
                    assert_eq!(
                        lower_eq(cand.as_bytes(), l.as_bytes()),
                        cand.eq_ignore_ascii_case(l),
                        "{cand} vs {l}"
                    );
                }
            }
            // One byte changed anywhere (to a token character) is a difference.
            for i in 0..l.len() {
                for c in [b'x', b'_', b'.', b'0', b'~', b'^', b'M'] {
                    let mut b = l.as_bytes().to_vec();
                    if b[i].eq_ignore_ascii_case(&c) {
                        continue;
                    }
                    b[i] = c;
                    assert!(
                        !lower_eq(&b, l.as_bytes()),
                        "{}",
                        String::from_utf8_lossy(&b)
                    );
                }
            }
        }
    }

    #[test]
    fn kinds_are_found_in_any_case() {
        for (name, kind) in [
            ("Content-Length", Kind::ContentLength),
            ("DATE", Kind::Date),
            ("via", Kind::Via),
            ("X-Qalqan-Cache", Kind::Replaced),
            ("Connection", Kind::Connection),
            ("Keep-Alive", Kind::HopByHop),
            ("TE", Kind::HopByHop),
            ("Trailer", Kind::HopByHop),
            ("Upgrade", Kind::HopByHop),
            ("Proxy-Connection", Kind::HopByHop),
            ("Transfer-Encoding", Kind::TransferEncoding),
            ("Proxy-Authenticate", Kind::HopByHop),
            ("Proxy-Authorization", Kind::HopByHop),
            ("Content-Type", Kind::Other),
            ("Dates", Kind::Other),
            ("tf", Kind::Other),
            ("", Kind::Other),
        ] {
            assert_eq!(Kind::of(name.as_bytes()), kind, "{name}");
        }
    }

    #[test]
    fn moved_fields_come_before_the_map_s_and_hop_by_hop_ones_stay_out() {
        let (bytes, fields) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nKeep-Alive: timeout=5\r\n\
              Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        let mut raw = RawHead::new(bytes, &fields).unwrap();
        raw.via = Some("1.1 qalqan");
        raw.cache = Some("bypass");
        let mut map = HeaderMap::new();
        map.insert("x-later", HeaderValue::from_static("1"));
        raw.move_into(&mut map);
        assert!(raw.is_empty());
        let names: Vec<&str> = map.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "set-cookie",
                "set-cookie",
                "via",
                "x-qalqan-cache",
                "x-later"
            ]
        );
        let cookies: Vec<&[u8]> = map
            .get_all("set-cookie")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(cookies, [b"a=1".as_slice(), b"b=2"]);
        // Moving again changes nothing.
        let before = map.clone();
        raw.move_into(&mut map);
        assert_eq!(map, before);
    }

    #[test]
    fn more_fields_than_kept_are_refused() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_FIELDS {
            head.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let (bytes, fields) = parse(&head).unwrap();
        assert_eq!(fields.len(), MAX_FIELDS + 1);
        assert!(RawHead::new(bytes.clone(), &fields).is_none());
        assert!(RawHead::new(bytes, &fields[..MAX_FIELDS]).is_some());
    }

    #[test]
    fn a_slice_outside_the_head_has_no_place() {
        let head = b"abcdef";
        let other = b"xyz";
        assert!(Field::new(head, &head[1..3], other, Kind::Other).is_none());
        assert!(Field::new(head, &head[1..3], &head[4..], Kind::Other).is_some());
    }

    /// The writer copies fields out of the bytes without the `http` crate's checks; that is
    /// safe only if every name and value httparse accepts the `http` crate accepts too (so no
    /// byte it would refuse reaches a reader, and the map built for any other writer has
    /// exactly the same fields). Every byte, in a name and in a value, before and after the
    /// first 32 bytes (httparse checks values 32 bytes at a time with SIMD), with each line
    /// ending httparse knows.
    #[test]
    fn every_field_httparse_accepts_the_http_crate_accepts() {
        let mut parsed = 0;
        for b in 0..=255u8 {
            for at in [0, 5, 31, 32, 33, 40, 63, 64, 70] {
                let mut name = vec![b'x'; at.min(40) + 1];
                let i = at.min(40);
                name[i] = b;
                let mut value = vec![b'v'; at + 8];
                value[at] = b;
                for end in [&b"\r\n"[..], b"\n"] {
                    for (n, v) in [(&name[..], &b"ok"[..]), (b"x-ok", &value[..])] {
                        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
                        head.extend_from_slice(n);
                        head.extend_from_slice(b": ");
                        head.extend_from_slice(v);
                        head.extend_from_slice(end);
                        head.extend_from_slice(end);
                        let Some((bytes, fields)) = parse(&head) else {
                            continue;
                        };
                        parsed += 1;
                        for f in &fields {
                            let (n, v) = (f.name(&bytes), f.value(&bytes));
                            assert!(crate::h1::field_name(n).is_some(), "{n:?}");
                            assert!(HeaderValue::from_bytes(v).is_ok(), "{v:?}");
                            assert!(!v.contains(&b'\r') && !v.contains(&b'\n'));
                        }
                        assert_eq!(map_of(&bytes, &fields, true).len(), fields.len());
                    }
                }
            }
        }
        // Letters, digits and token signs in names, and most bytes in values, parse.
        assert!(parsed > 4_000, "{parsed}");
    }
}
