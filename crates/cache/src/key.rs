//! Cache keys: one string per page, however the client spelled the request.
//!
//! A flood reaches the origin through the spellings the cache does not fold together, so the
//! key folds every spelling that origins treat as the same request: host case and default
//! ports, percent-encoding of characters that never need it, parameter order, `+` against
//! `%20`, tracking parameters that never change the page and, where the route allows it,
//! the case and spacing of parameter values ("Number  One" and "number one" are one search).
//!
//! What it never folds: the path's case, reserved characters in the path that are encoded
//! in one spelling and not in the other, parameter names' case, and a parameter without
//! `=` against one with an empty value. Those can be different pages at the origin, and
//! a key that merges two different pages serves one client's page to another.
//!
//! The key is built from a normalised request target ([`normalize_target`]) that is itself a
//! valid request target, so normalising it again gives the same key. It contains no spaces
//! or control characters, which keeps it safe to log.

use http::Method;

/// Longest request target (path and query) that gets a cache key, in bytes.
///
/// Real pages have short targets. A longer one is either an attack or something odd enough
/// that the origin should see it directly, and the cap bounds the work spent per request.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// Longest `Host` value that gets a cache key: a 253-byte DNS name, a trailing dot, a colon
/// and a five-digit port fit in this.
pub const MAX_HOST_BYTES: usize = 261;

/// Longest `vary_encoding` class accepted by [`cache_key`]. The classes are short names
/// such as `br`; anything longer is a caller bug, and gets no key rather than a huge one.
pub const MAX_ENCODING_CLASS_BYTES: usize = 32;

/// Longest `Accept-Encoding` value that [`accept_encoding_class`] reads. Browsers send
/// fewer than 100 bytes; a longer value gets no encoding class, which is always correct
/// because every client accepts an uncompressed body.
pub const MAX_ACCEPT_ENCODING_BYTES: usize = 4 * 1024;

/// How a route's cache keys treat the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRules {
    /// Query parameters that never change the page, dropped from the key. Each entry is an
    /// exact name or a prefix ending in `*` (`utm_*`). Names are compared after
    /// percent-decoding and ignoring ASCII case, so `UTM_Source` and `%75tm_source` are
    /// dropped by `utm_*` too.
    pub drop_params: Vec<String>,
    /// Lowercase parameter values (Unicode-aware, so "Номер" and "номер" are one value)
    /// and collapse runs of whitespace to one space, trimming both ends. Turn it on for
    /// routes whose values are free text, such as search; leave it off where values are
    /// case-sensitive identifiers or tokens.
    pub fold_query_case: bool,
}

impl Default for KeyRules {
    /// The tracking parameters of the common analytics and ad networks, and no case folding
    /// (folding is only safe where the route's values are known to be case-insensitive).
    fn default() -> Self {
        let drop_params = [
            "utm_*", "fbclid", "gclid", "yclid", "dclid", "msclkid", "mc_cid", "mc_eid", "_ga",
            "_gl", "igshid", "ref_src",
        ];
        KeyRules {
            drop_params: drop_params.iter().map(|p| (*p).to_owned()).collect(),
            fold_query_case: false,
        }
    }
}

impl KeyRules {
    /// Whether the percent-decoded parameter name `name` is one to drop.
    fn drops(&self, name: &[u8]) -> bool {
        self.drop_params.iter().any(|pattern| {
            let pattern = pattern.as_bytes();
            match pattern.split_last() {
                Some((b'*', prefix)) => name
                    .get(..prefix.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
                _ => name.eq_ignore_ascii_case(pattern),
            }
        })
    }
}

/// The cache key of a request, or `None` when the request gets no key and the caller must
/// pass it to the origin without the cache.
///
/// - `method`: only `GET` and `HEAD` have keys, and they share one: a `HEAD` is answered
///   from the stored `GET` response. Every other method gets `None`.
/// - `host`: the `Host` header or the authority. Lowercased, a trailing dot and the default
///   ports `:80` and `:443` removed. `None` when it is empty, longer than
///   [`MAX_HOST_BYTES`] or not a valid host.
/// - `path_and_query`: the request target in origin form (`/path?query`). See
///   [`normalize_target`]; `None` when it is longer than [`MAX_TARGET_BYTES`] or does not
///   start with `/` or `?`.
/// - `vary_encoding`: the response encoding class from [`accept_encoding_class`], appended
///   so that a brotli body is never served to a client that cannot read it.
///
/// The key has no scheme: when the origin answers `http` and `https` differently (for
/// example with a redirect to `https`), the caller must cache only one of them.
#[must_use]
pub fn cache_key(
    method: &Method,
    host: &str,
    path_and_query: &str,
    vary_encoding: Option<&str>,
    rules: &KeyRules,
) -> Option<String> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let encoding = match vary_encoding {
        Some(class) if class.len() > MAX_ENCODING_CLASS_BYTES => return None,
        // The class comes from the caller, not the client, but keys are logged: keep
        // them printable and free of spaces.
        Some(class) if class.bytes().any(|b| !b.is_ascii_graphic()) => return None,
        other => other,
    };
    // One string for the whole key: this runs on every cacheable request.
    let mut key = String::with_capacity(host.len() + path_and_query.len() + 16);
    normalize_host_into(host, &mut key)?;
    normalize_target_into(path_and_query, rules, &mut key)?;
    if let Some(class) = encoding {
        // Neither the host nor the normalised target can contain a space, so the space
        // separates the encoding class unambiguously.
        key.push(' ');
        key.push_str(class);
    }
    Some(key)
}

/// The normalised form of a `Host` value, or `None` when it is not a valid host.
///
/// ASCII is lowercased, a single trailing dot is dropped (`example.com.` is `example.com`)
/// and the default ports `80` and `443` are removed, as is an empty port. Other ports are
/// kept, written without leading zeros. Bracketed IPv6 literals are accepted. Anything with
/// characters that cannot appear in a host (`/`, `@`, spaces, non-ASCII, …) is rejected.
#[must_use]
pub fn normalize_host(host: &str) -> Option<String> {
    let mut out = String::with_capacity(host.len());
    normalize_host_into(host, &mut out)?;
    Some(out)
}

/// [`normalize_host`], appended to `out` (left as it was when the host is refused).
fn normalize_host_into(host: &str, out: &mut String) -> Option<()> {
    if host.is_empty() || host.len() > MAX_HOST_BYTES {
        return None;
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return None,
        };
        (&host[..end + 2], port)
    } else {
        let (name, port) = match host.bytes().position(|b| b == b':') {
            Some(i) => (&host[..i], Some(&host[i + 1..])),
            None => (host, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        // Labels of letters, digits, `-` and `_`, separated by single dots: one pass.
        let mut prev_dot = true; // no dot first
        let valid_name = !name.is_empty()
            && name.bytes().all(|b| {
                let dot = b == b'.';
                let ok = if dot {
                    !prev_dot
                } else {
                    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
                };
                prev_dot = dot;
                ok
            })
            && !prev_dot; // no dot last
        if !valid_name {
            return None;
        }
        (name, port)
    };
    // A port other than the default, as its digits without leading zeros.
    let port = match port {
        None | Some("") => None,
        Some(port) => {
            if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            match port.parse::<u16>().ok()? {
                80 | 443 => None,
                0 => return None,
                // The digits as given, when they are already the plain form (most are).
                _ if !port.starts_with('0') => Some(port),
                _ => Some(port.trim_start_matches('0')),
            }
        }
    };
    out.push_str(name);
    let start = out.len() - name.len();
    out[start..].make_ascii_lowercase();
    if let Some(port) = port {
        out.push(':');
        out.push_str(port);
    }
    Some(())
}

/// The normalised request target (`/path?query`, no fragment), or `None` when it is too
/// long or is not in origin form.
///
/// - The fragment (`#…`) is ignored; an empty target or one starting with `?` gets the
///   path `/`.
/// - In the path, escapes of unreserved characters are decoded (`%7E` is `~`), other escapes
///   get uppercase hex digits (`%2f` is `%2F`), characters that must be escaped are escaped,
///   and a `%` that does not start a valid escape is kept as a literal percent sign
///   (written `%25`, so it can never be mistaken for an escape).
/// - The query is read as origins read it (`application/x-www-form-urlencoded`): split on
///   `&`, empty pieces dropped, each piece split on its first `=`, `+` and `%20` both a space.
///   Parameters named in [`KeyRules::drop_params`] are dropped. With
///   [`KeyRules::fold_query_case`], values are lowercased and their whitespace collapsed.
///   Names and values are then written back in one canonical encoding (unreserved
///   characters as they are, a space as `+`, everything else as `%XX`), and the parameters
///   are sorted by name, then value, keeping duplicates.
#[must_use]
pub fn normalize_target(path_and_query: &str, rules: &KeyRules) -> Option<String> {
    let mut out = String::with_capacity(path_and_query.len() + 8);
    normalize_target_into(path_and_query, rules, &mut out)?;
    Some(out)
}

/// [`normalize_target`], appended to `out` (unchanged when the target is refused).
fn normalize_target_into(path_and_query: &str, rules: &KeyRules, out: &mut String) -> Option<()> {
    if path_and_query.len() > MAX_TARGET_BYTES {
        return None;
    }
    // The path ends at the first `?` or `#`; a query, if any, at the first `#` after it. (One
    // scan of the bytes: most targets have neither, and this runs on every cacheable request.)
    let bytes = path_and_query.as_bytes();
    let (path, query) = match bytes.iter().position(|&b| b == b'?' || b == b'#') {
        None => (path_and_query, None),
        Some(i) if bytes[i] == b'#' => (&path_and_query[..i], None),
        Some(i) => {
            let rest = &path_and_query[i + 1..];
            let query = rest.split_once('#').map_or(rest, |(q, _fragment)| q);
            (&path_and_query[..i], Some(query))
        }
    };
    if !(path.is_empty() || path.starts_with('/')) {
        return None;
    }
    if path.is_empty() {
        out.push('/');
    } else {
        normalize_path(path, out);
    }
    if let Some(query) = query {
        normalize_query(query, rules, out);
    }
    Some(())
}

/// RFC 3986 section 2.3: characters that never need percent-encoding, and whose encoded and
/// plain forms are the same URI.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters that may appear unencoded in a path segment and mean something different
/// from their encoded form (RFC 3986 `sub-delims`, `:`, `@`, and `/` between segments).
fn is_path_reserved(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@'
            | b'/'
    )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte encoded by a valid escape starting at `bytes[i]` (which is `%`).
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let high = hex_value(*bytes.get(i + 1)?)?;
    let low = hex_value(*bytes.get(i + 2)?)?;
    Some((high << 4) | low)
}

fn push_escaped(byte: u8, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0f)]));
}

fn normalize_path(path: &str, out: &mut String) {
    // Runs of characters kept as they are (most paths are one such run) are copied at once.
    let keep = |b: u8| is_unreserved(b) || is_path_reserved(b);
    let path_str = path;
    let path = path.as_bytes();
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        if keep(b) {
            let run = path[i..]
                .iter()
                .position(|&b| !keep(b))
                .unwrap_or(path.len() - i);
            // ASCII only, so the run's ends are character boundaries.
            out.push_str(path_str.get(i..i + run).unwrap_or_default());
            i += run;
            continue;
        }
        if b == b'%' {
            if let Some(decoded) = escape_at(path, i) {
                if is_unreserved(decoded) {
                    out.push(char::from(decoded));
                } else {
                    push_escaped(decoded, out);
                }
                i += 3;
                continue;
            }
            // A `%` that starts no valid escape is a literal percent sign.
            push_escaped(b'%', out);
        } else {
            push_escaped(b, out);
        }
        i += 1;
    }
}

/// Form-decodes one query name or value: valid escapes to their byte, `+` to a space, and
/// anything else (including a `%` that starts no valid escape) as it is.
fn form_decode(piece: &str) -> Vec<u8> {
    let bytes = piece.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                if let Some(decoded) = escape_at(bytes, i) {
                    out.push(decoded);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            other => out.push(other),
        }
        i += 1;
    }
    out
}

/// Writes form-decoded bytes back in the one canonical form: unreserved characters as they
/// are, a space as `+`, and every other byte as an uppercase `%XX`.
fn form_encode(decoded: &[u8], out: &mut String) {
    for &b in decoded {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            push_escaped(b, out);
        }
    }
}

/// Lowercases a decoded value and collapses its whitespace: runs of Unicode whitespace
/// become one space, leading and trailing whitespace goes.
///
/// Values are bytes, not always UTF-8 (`%FF` is a valid escape). Valid UTF-8 stretches are
/// folded with Unicode rules; invalid bytes are kept as they are rather than replaced, so
/// two different invalid values never fold into one.
fn fold_value(decoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(decoded.len());
    // Collapsed but not yet lowercased text. `str::to_lowercase` runs on whole stretches,
    // not character by character, so that a final capital sigma becomes `ς` as it should.
    let mut text = String::new();
    let mut started = false;
    let mut pending_space = false;
    for chunk in decoded.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_whitespace() {
                pending_space = started;
                continue;
            }
            if pending_space {
                text.push(' ');
                pending_space = false;
            }
            text.push(c);
            started = true;
        }
        let invalid = chunk.invalid();
        if !invalid.is_empty() {
            if pending_space {
                text.push(' ');
                pending_space = false;
            }
            out.extend_from_slice(text.to_lowercase().as_bytes());
            text.clear();
            out.extend_from_slice(invalid);
            started = true;
        }
    }
    out.extend_from_slice(text.to_lowercase().as_bytes());
    out
}

fn normalize_query(query: &str, rules: &KeyRules, out: &mut String) {
    // Each parameter as its canonical (name, value) text; `None` is a name without `=`,
    // which some origins treat differently from `name=`.
    let mut params: Vec<(String, Option<String>)> = Vec::new();
    for piece in query.split('&').filter(|piece| !piece.is_empty()) {
        let (name, value) = match piece.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (piece, None),
        };
        let name = form_decode(name);
        if rules.drops(&name) {
            continue;
        }
        let mut canonical_name = String::with_capacity(name.len());
        form_encode(&name, &mut canonical_name);
        let canonical_value = value.map(|value| {
            let mut decoded = form_decode(value);
            if rules.fold_query_case {
                decoded = fold_value(&decoded);
            }
            let mut canonical = String::with_capacity(decoded.len());
            form_encode(&decoded, &mut canonical);
            canonical
        });
        params.push((canonical_name, canonical_value));
    }
    // `sort` is stable; equal pairs are identical text, so order among them cannot matter.
    params.sort();
    for (i, (name, value)) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(name);
        if let Some(value) = value {
            out.push('=');
            out.push_str(value);
        }
    }
}

/// The response encoding class of a request, from its `Accept-Encoding` value: `"br"` when
/// the client accepts brotli, else `"gzip"` when it accepts gzip, else `None` (identity).
///
/// A coding is accepted when it is listed with a `q` above zero, or when it is not listed
/// and `*` is, with a `q` above zero (RFC 9110 section 12.5.3). Names ignore case, `x-gzip`
/// is gzip, and an item with an unreadable `q` is ignored. A value that is not ASCII or
/// longer than [`MAX_ACCEPT_ENCODING_BYTES`] gets `None`, which is always safe.
#[must_use]
pub fn accept_encoding_class(value: Option<&[u8]>) -> Option<&'static str> {
    let value = value?;
    if value.len() > MAX_ACCEPT_ENCODING_BYTES || !value.is_ascii() {
        return None;
    }
    // For each coding: None when not listed, Some(accepted) when listed.
    let mut br = None;
    let mut gzip = None;
    let mut any = None;
    for item in value.split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';');
        let name = parts.next().unwrap_or_default().trim_ascii();
        if name.is_empty() {
            continue;
        }
        let mut accepted = Some(true);
        for param in parts {
            let (param_name, q) = match param.iter().position(|&b| b == b'=') {
                Some(eq) => (&param[..eq], Some(&param[eq + 1..])),
                None => (param, None),
            };
            if param_name.trim_ascii().eq_ignore_ascii_case(b"q") {
                accepted = q.and_then(|q| parse_qvalue(q.trim_ascii())).map(|q| q > 0);
                break;
            }
        }
        let Some(accepted) = accepted else {
            continue;
        };
        let slot = if name.eq_ignore_ascii_case(b"br") {
            &mut br
        } else if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") {
            &mut gzip
        } else if name == b"*" {
            &mut any
        } else {
            continue;
        };
        // When a coding is listed twice, the first listing counts.
        if slot.is_none() {
            *slot = Some(accepted);
        }
    }
    let any = any.unwrap_or(false);
    if br.unwrap_or(any) {
        Some("br")
    } else if gzip.unwrap_or(any) {
        Some("gzip")
    } else {
        None
    }
}

/// An RFC 9110 `qvalue` in thousandths: `0`, `0.5`, `1`, `1.000`; `None` if malformed.
fn parse_qvalue(q: &[u8]) -> Option<u16> {
    let (whole, fraction) = match q.iter().position(|&b| b == b'.') {
        Some(dot) => (&q[..dot], &q[dot + 1..]),
        None => (q, &q[q.len()..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths: u16 = 0;
    for i in 0..3 {
        let digit = fraction.get(i).map_or(0, |d| u16::from(d - b'0'));
        thousandths = thousandths * 10 + digit;
    }
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pq: &str) -> Option<String> {
        cache_key(&Method::GET, "example.com", pq, None, &KeyRules::default())
    }

    fn folded(pq: &str) -> Option<String> {
        let rules = KeyRules {
            fold_query_case: true,
            ..KeyRules::default()
        };
        cache_key(&Method::GET, "example.com", pq, None, &rules)
    }

    #[test]
    fn plain_target_keeps_its_shape() {
        assert_eq!(
            key("/news/2024?page=2").as_deref(),
            Some("example.com/news/2024?page=2")
        );
        assert_eq!(key("/").as_deref(), Some("example.com/"));
    }

    #[test]
    fn head_shares_the_get_key_and_other_methods_get_none() {
        let rules = KeyRules::default();
        let get = cache_key(&Method::GET, "example.com", "/a", None, &rules);
        let head = cache_key(&Method::HEAD, "example.com", "/a", None, &rules);
        assert!(get.is_some());
        assert_eq!(get, head);
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert_eq!(cache_key(&method, "example.com", "/a", None, &rules), None);
        }
    }

    #[test]
    fn host_is_lowercased_and_default_ports_dropped() {
        for host in [
            "Example.COM",
            "example.com:80",
            "example.com:443",
            "example.com.",
            "EXAMPLE.com.:443",
            "example.com:",
            "example.com:0080",
        ] {
            assert_eq!(
                normalize_host(host).as_deref(),
                Some("example.com"),
                "{host}"
            );
        }
        assert_eq!(
            normalize_host("example.com:8080").as_deref(),
            Some("example.com:8080")
        );
        assert_eq!(normalize_host("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(
            normalize_host("[2001:DB8::1]:8443").as_deref(),
            Some("[2001:db8::1]:8443")
        );
        assert_eq!(normalize_host("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn invalid_hosts_get_no_key() {
        for host in [
            "",
            "a b",
            "a/b",
            "user@example.com",
            "example.com:99999",
            "example.com:0",
            "example.com:8x",
            "a:1:2",
            "[::1",
            "[::1]x",
            "[]",
            "[zz]",
            ".example.com",
            "a..b",
            "bücher.de",
            "example.com..",
            ".",
            "..",
            ".:80",
            "a.-b..",
        ] {
            assert_eq!(normalize_host(host), None, "{host:?}");
        }
        let long = "a".repeat(MAX_HOST_BYTES + 1);
        assert_eq!(normalize_host(&long), None);
    }

    #[test]
    fn path_decodes_unreserved_and_uppercases_other_escapes() {
        assert_eq!(
            key("/%7Euser/%61bc").as_deref(),
            Some("example.com/~user/abc")
        );
        assert_eq!(key("/a%2fb%3a").as_deref(), Some("example.com/a%2Fb%3A"));
        // Reserved characters keep their form: encoded and plain are different paths.
        assert_ne!(key("/a%2Fb"), key("/a/b"));
        // Characters that must be escaped are escaped, so raw and encoded UTF-8 agree.
        assert_eq!(
            key("/новости"),
            key("/%D0%BD%D0%BE%D0%B2%D0%BE%D1%81%D1%82%D0%B8")
        );
        assert_eq!(key("/a b").as_deref(), Some("example.com/a%20b"));
        // The path's case matters.
        assert_ne!(key("/News"), key("/news"));
    }

    #[test]
    fn invalid_escapes_are_literal_percent_signs() {
        assert_eq!(key("/100%").as_deref(), Some("example.com/100%25"));
        assert_eq!(key("/%zz").as_deref(), Some("example.com/%25zz"));
        assert_eq!(key("/%4").as_deref(), Some("example.com/%254"));
        // "%%414" is a literal `%`, then `A`, then `4`: not the escape `%A4`.
        assert_ne!(key("/%%414"), key("/%A4"));
        assert_eq!(key("/?q=%"), key("/?q=%25"));
    }

    #[test]
    fn fragment_is_ignored() {
        assert_eq!(key("/a?b=1#top"), key("/a?b=1"));
        assert_eq!(key("/a#x?b=1"), key("/a"));
    }

    #[test]
    fn empty_path_is_root_and_non_origin_form_gets_no_key() {
        assert_eq!(key(""), key("/"));
        assert_eq!(key("?q=1"), key("/?q=1"));
        assert_eq!(key("*"), None);
        assert_eq!(key("http://example.com/"), None);
        assert_eq!(key("news"), None);
    }

    #[test]
    fn long_targets_get_no_key() {
        let ok = format!("/{}", "a".repeat(MAX_TARGET_BYTES - 1));
        assert!(key(&ok).is_some());
        let long = format!("/{}", "a".repeat(MAX_TARGET_BYTES));
        assert_eq!(key(&long), None);
    }

    #[test]
    fn query_order_empty_pieces_and_empty_query() {
        assert_eq!(key("/s?b=2&a=1"), key("/s?a=1&b=2"));
        assert_eq!(key("/s?&&a=1&&b=2&"), key("/s?a=1&b=2"));
        assert_eq!(key("/s?"), key("/s"));
        assert_eq!(key("/s?&&"), key("/s"));
        // Duplicates stay, sorted by value.
        assert_eq!(key("/s?a=2&a=1").as_deref(), Some("example.com/s?a=1&a=2"));
        // A name without `=` is not the same as an empty value.
        assert_ne!(key("/s?a"), key("/s?a="));
    }

    #[test]
    fn tracking_parameters_are_dropped() {
        let clean = key("/story?id=7");
        assert_eq!(key("/story?id=7&utm_source=x&utm_medium=y"), clean);
        assert_eq!(key("/story?fbclid=abc&id=7&gclid=1"), clean);
        assert_eq!(key("/story?UTM_Source=x&id=7&FBCLID=1"), clean);
        assert_eq!(key("/story?%75tm_source=x&id=7&fb%63lid=1"), clean);
        assert_eq!(key("/story?id=7&utm_"), clean);
        // Prefix patterns match prefixes only; exact names match whole names.
        assert_ne!(key("/story?id=7&xutm_source=1"), clean);
        assert_ne!(key("/story?id=7&fbclid2=1"), clean);
        assert_eq!(key("/?utm_a=1").as_deref(), Some("example.com/"));
    }

    #[test]
    fn plus_and_percent_20_are_one_space() {
        assert_eq!(key("/search?q=number+one"), key("/search?q=number%20one"));
        assert_eq!(
            key("/search?q=number+one").as_deref(),
            Some("example.com/search?q=number+one")
        );
        // An encoded plus is a plus, not a space.
        assert_ne!(key("/search?q=a%2Bb"), key("/search?q=a+b"));
    }

    #[test]
    fn query_escapes_are_canonical() {
        assert_eq!(key("/s?q=%41%62c"), key("/s?q=Abc"));
        assert_eq!(key("/s?q=a%2cb"), key("/s?q=a,b"));
        assert_eq!(key("/s?q=a,b").as_deref(), Some("example.com/s?q=a%2Cb"));
        // `&` and `=` keep their meaning only when not encoded.
        assert_ne!(key("/s?q=a%26b=c"), key("/s?q=a&b=c"));
    }

    #[test]
    fn values_keep_their_case_unless_folded() {
        assert_ne!(key("/search?q=Number+One"), key("/search?q=number+one"));
        assert_eq!(
            folded("/search?q=Number+One"),
            folded("/search?q=number+one")
        );
        assert_eq!(
            folded("/search?q=++NUMBER%20%20one+"),
            folded("/search?q=number+one")
        );
        assert_eq!(
            folded("/search?q=%D0%9D%D0%BE%D0%BC%D0%B5%D1%80"),
            folded("/search?q=номер")
        );
        assert_eq!(folded("/search?q=Номер"), folded("/search?q=номер"));
        // Tabs, newlines and no-break spaces are whitespace too.
        assert_eq!(folded("/search?q=a%09%0A%C2%A0b"), folded("/search?q=a+b"));
        // Names keep their case even when values are folded.
        assert_ne!(folded("/search?Q=a"), folded("/search?q=a"));
    }

    #[test]
    fn folding_keeps_invalid_utf8_distinct() {
        assert_ne!(folded("/s?q=%FF"), folded("/s?q=%FE"));
        assert_eq!(folded("/s?q=A%FFB"), folded("/s?q=a%FFb"));
        assert_eq!(folded("/s?q=A++%FF"), folded("/s?q=a+%FF"));
    }

    #[test]
    fn folding_uses_final_sigma() {
        assert_eq!(folded("/s?q=ΟΔΟΣ"), folded("/s?q=οδος"));
    }

    #[test]
    fn encoding_class_is_appended() {
        let rules = KeyRules::default();
        let br = cache_key(&Method::GET, "example.com", "/", Some("br"), &rules);
        let gzip = cache_key(&Method::GET, "example.com", "/", Some("gzip"), &rules);
        let none = cache_key(&Method::GET, "example.com", "/", None, &rules);
        assert_eq!(br.as_deref(), Some("example.com/ br"));
        assert_ne!(br, gzip);
        assert_ne!(gzip, none);
        assert_eq!(
            cache_key(&Method::GET, "example.com", "/", Some("b r"), &rules),
            None
        );
        let long = "x".repeat(MAX_ENCODING_CLASS_BYTES + 1);
        assert_eq!(
            cache_key(&Method::GET, "example.com", "/", Some(&long), &rules),
            None
        );
    }

    #[test]
    fn keys_have_no_spaces_or_controls() {
        let k = key("/a b\r\n\t?q=x y&z=\u{0}").unwrap_or_default();
        assert!(k.bytes().all(|b| b.is_ascii_graphic()), "{k:?}");
    }

    #[test]
    fn custom_drop_list_and_star() {
        let rules = KeyRules {
            drop_params: vec!["*".to_owned()],
            fold_query_case: false,
        };
        assert_eq!(
            normalize_target("/a?x=1&y=2", &rules).as_deref(),
            Some("/a")
        );
        let rules = KeyRules {
            drop_params: Vec::new(),
            fold_query_case: false,
        };
        assert_eq!(
            normalize_target("/a?utm_source=1", &rules).as_deref(),
            Some("/a?utm_source=1")
        );
    }

    fn class(value: &str) -> Option<&'static str> {
        accept_encoding_class(Some(value.as_bytes()))
    }

    #[test]
    fn accept_encoding_prefers_br_then_gzip() {
        assert_eq!(accept_encoding_class(None), None);
        assert_eq!(class("gzip, deflate, br, zstd"), Some("br"));
        assert_eq!(class("gzip, deflate"), Some("gzip"));
        assert_eq!(class("BR;q=0.5, GZIP"), Some("br"));
        assert_eq!(class("x-gzip"), Some("gzip"));
        assert_eq!(class("deflate, identity"), None);
        assert_eq!(class(""), None);
    }

    #[test]
    fn accept_encoding_honours_q_zero() {
        assert_eq!(class("br;q=0, gzip"), Some("gzip"));
        assert_eq!(class("br; q=0.000, gzip;q=0"), None);
        assert_eq!(class("br;Q=0.0,gzip;q=0.001"), Some("gzip"));
        assert_eq!(class("br;q=1.000"), Some("br"));
        assert_eq!(class("br;level=5;q=0"), None);
    }

    #[test]
    fn accept_encoding_wildcard_covers_unlisted_codings() {
        assert_eq!(class("*"), Some("br"));
        assert_eq!(class("br;q=0, *"), Some("gzip"));
        assert_eq!(class("*;q=0"), None);
        assert_eq!(class("gzip, *;q=0"), Some("gzip"));
    }

    #[test]
    fn accept_encoding_ignores_garbage() {
        assert_eq!(class("br;q=2"), None);
        assert_eq!(class("br;q=abc, gzip"), Some("gzip"));
        assert_eq!(class("br;q, gzip"), Some("gzip"));
        // Only the parameter named exactly `q` is the weight.
        assert_eq!(class("br;quality=0"), Some("br"));
        assert_eq!(class("br; Q = 0 "), None);
        assert_eq!(class(",,;;,=,"), None);
        assert_eq!(class("br;q=0.5.5"), None);
        assert_eq!(class("br;q=1.5"), None);
        assert_eq!(class("br;q=0.1234"), None);
        assert_eq!(accept_encoding_class(Some(b"br\xff")), None);
        let long = format!("{}br", " ".repeat(MAX_ACCEPT_ENCODING_BYTES));
        assert_eq!(class(&long), None);
    }

    #[test]
    fn accept_encoding_first_listing_counts() {
        assert_eq!(class("br;q=0, br"), None);
        assert_eq!(class("br, br;q=0"), Some("br"));
    }

    #[test]
    fn qvalues() {
        assert_eq!(parse_qvalue(b"0"), Some(0));
        assert_eq!(parse_qvalue(b"0."), Some(0));
        assert_eq!(parse_qvalue(b"0.5"), Some(500));
        assert_eq!(parse_qvalue(b"0.001"), Some(1));
        assert_eq!(parse_qvalue(b"1"), Some(1000));
        assert_eq!(parse_qvalue(b"1.0"), Some(1000));
        assert_eq!(parse_qvalue(b"1.001"), None);
        assert_eq!(parse_qvalue(b""), None);
        assert_eq!(parse_qvalue(b".5"), None);
        assert_eq!(parse_qvalue(b"2"), None);
    }
}
