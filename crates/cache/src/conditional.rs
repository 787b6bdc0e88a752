//! Conditional requests answered from the cache: `If-None-Match` and `If-Modified-Since`.
//!
//! Browsers revalidate what they already hold. Answering with a bodiless `304` from the
//! store saves the outlet's bandwidth as well as its origin, which matters for small sites
//! on metered links during a flood.

use http::HeaderMap;
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};

use crate::store::CachedResponse;

/// Longest total `If-None-Match` value read. Real ones hold a few tags; a longer one is
/// answered with the full response, which is always correct.
pub const MAX_IF_NONE_MATCH_BYTES: usize = 8 * 1024;

/// Whether a `GET` or `HEAD` request can be answered `304 Not Modified` from `entry`.
///
/// Only call it for `GET` and `HEAD`: for other methods these headers mean something else
/// (RFC 9110 section 13.1.3). Preconditions are only evaluated against a successful (2xx)
/// stored response, as RFC 9110 section 13.2.1 asks.
///
/// `If-None-Match`, when present, decides alone: it matches when it is `*` or lists a tag
/// weakly equal to the entry's `ETag` (`W/"a"` matches `"a"`). Otherwise `If-Modified-Since`
/// matches when the entry's `Last-Modified` is no later than it. A header that cannot be
/// read, or that appears several times where only one is allowed, means "send the full
/// response".
#[must_use]
pub fn not_modified(req_headers: &HeaderMap, entry: &CachedResponse) -> bool {
    if !entry.status.is_success() {
        return false;
    }
    if req_headers.contains_key(IF_NONE_MATCH) {
        return if_none_match_matches(req_headers, entry);
    }
    let mut since = req_headers.get_all(IF_MODIFIED_SINCE).iter();
    let (Some(since), None) = (since.next(), since.next()) else {
        return false;
    };
    let Some(last_modified) = &entry.last_modified else {
        return false;
    };
    let parse = |value: &http::HeaderValue| {
        value
            .to_str()
            .ok()
            .and_then(|text| httpdate::parse_http_date(text.trim()).ok())
    };
    match (parse(since), parse(last_modified)) {
        (Some(since), Some(last_modified)) => last_modified <= since,
        _ => false,
    }
}

fn if_none_match_matches(req_headers: &HeaderMap, entry: &CachedResponse) -> bool {
    let values = req_headers.get_all(IF_NONE_MATCH);
    let total = values
        .iter()
        .fold(0_usize, |sum, value| sum.saturating_add(value.len()));
    if total > MAX_IF_NONE_MATCH_BYTES {
        return false;
    }
    let current = entry
        .etag
        .as_ref()
        .and_then(|etag| opaque_tag(etag.as_bytes().trim_ascii()));
    for value in values {
        let mut rest = value.as_bytes();
        loop {
            rest = rest.trim_ascii_start();
            while let Some(after_comma) = rest.strip_prefix(b",") {
                rest = after_comma.trim_ascii_start();
            }
            if rest.is_empty() {
                break;
            }
            if let Some(after_star) = rest.strip_prefix(b"*") {
                // `*` matches any current representation, and the entry is one.
                let after_star = after_star.trim_ascii_start();
                if after_star.is_empty() || after_star.starts_with(b",") {
                    return true;
                }
            }
            let (tag, after) = next_entity_tag(rest);
            if let (Some(tag), Some(current)) = (tag, current)
                && tag == current
            {
                return true;
            }
            rest = after;
        }
    }
    false
}

/// The opaque tag (quotes included) of a whole entity tag, weak or strong, or `None`.
fn opaque_tag(etag: &[u8]) -> Option<&[u8]> {
    let (tag, rest) = next_entity_tag(etag);
    if rest.trim_ascii().is_empty() {
        tag
    } else {
        None
    }
}

/// Reads the entity tag at the start of `bytes`: its opaque tag (quotes included) if it is
/// well formed, and what follows it. A malformed element is skipped up to the next comma.
fn next_entity_tag(bytes: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let unprefixed = bytes.strip_prefix(b"W/").unwrap_or(bytes);
    if unprefixed.first() == Some(&b'"')
        && let Some(close) = unprefixed[1..].iter().position(|&b| b == b'"')
    {
        let (tag, after) = unprefixed.split_at(close + 2);
        // etagc excludes spaces, controls and the quote; obs-text (0x80..) is allowed.
        let well_formed = tag[1..tag.len() - 1]
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80);
        let after_trimmed = after.trim_ascii_start();
        if well_formed && (after_trimmed.is_empty() || after_trimmed.starts_with(b",")) {
            return (Some(tag), after_trimmed);
        }
    }
    let skip = bytes.iter().position(|&b| b == b',').unwrap_or(bytes.len());
    (None, &bytes[skip..])
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http::{HeaderName, HeaderValue, StatusCode};

    use super::*;
    use crate::policy::Freshness;

    fn entry(
        status: StatusCode,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> CachedResponse {
        let mut headers = HeaderMap::new();
        if let Some(etag) = etag {
            headers.insert("etag", HeaderValue::from_str(etag).expect("test etag"));
        }
        if let Some(last_modified) = last_modified {
            headers.insert(
                "last-modified",
                HeaderValue::from_str(last_modified).expect("test date"),
            );
        }
        CachedResponse::new(
            status,
            headers,
            Bytes::from_static(b"page"),
            &Freshness {
                ttl: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
            Instant::now(),
        )
    }

    fn request(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                HeaderValue::from_bytes(value).expect("test header value"),
            );
        }
        map
    }

    const LM: &str = "Tue, 15 Nov 1994 08:12:31 GMT";
    const EARLIER: &[u8] = b"Tue, 15 Nov 1994 08:12:30 GMT";
    const LATER: &[u8] = b"Tue, 15 Nov 1994 08:12:32 GMT";

    #[test]
    fn if_none_match_strong_and_weak() {
        let strong = entry(StatusCode::OK, Some("\"v1\""), None);
        let weak = entry(StatusCode::OK, Some("W/\"v1\""), None);
        for e in [&strong, &weak] {
            assert!(not_modified(&request(&[("if-none-match", b"\"v1\"")]), e));
            assert!(not_modified(&request(&[("if-none-match", b"W/\"v1\"")]), e));
            assert!(!not_modified(&request(&[("if-none-match", b"\"v2\"")]), e));
            assert!(!not_modified(&request(&[("if-none-match", b"v1")]), e));
        }
    }

    #[test]
    fn if_none_match_lists_and_repeats() {
        let e = entry(StatusCode::OK, Some("\"v3\""), None);
        assert!(not_modified(
            &request(&[("if-none-match", b"\"v1\", W/\"v2\" ,\"v3\"")]),
            &e
        ));
        assert!(not_modified(
            &request(&[("if-none-match", b"\"v1\""), ("if-none-match", b"\"v3\"")]),
            &e
        ));
        assert!(not_modified(
            &request(&[("if-none-match", b"garbage, \"v3\"")]),
            &e
        ));
        assert!(not_modified(
            &request(&[("if-none-match", b",,\"v3\",,")]),
            &e
        ));
        assert!(!not_modified(
            &request(&[("if-none-match", b"\"v1\", \"v2\"")]),
            &e
        ));
        // A comma inside a tag is part of it, not a separator.
        let comma = entry(StatusCode::OK, Some("\"a,b\""), None);
        assert!(not_modified(
            &request(&[("if-none-match", b"\"a,b\"")]),
            &comma
        ));
        assert!(!not_modified(
            &request(&[("if-none-match", b"\"a\"")]),
            &comma
        ));
    }

    #[test]
    fn if_none_match_star() {
        let e = entry(StatusCode::OK, None, None);
        assert!(not_modified(&request(&[("if-none-match", b"*")]), &e));
        assert!(not_modified(&request(&[("if-none-match", b" * ")]), &e));
        assert!(!not_modified(&request(&[("if-none-match", b"*x")]), &e));
    }

    #[test]
    fn if_none_match_beats_if_modified_since() {
        let e = entry(StatusCode::OK, Some("\"v1\""), Some(LM));
        assert!(!not_modified(
            &request(&[("if-none-match", b"\"v2\""), ("if-modified-since", LATER)]),
            &e
        ));
        assert!(not_modified(
            &request(&[("if-none-match", b"\"v1\""), ("if-modified-since", EARLIER)]),
            &e
        ));
    }

    #[test]
    fn if_none_match_without_etag_does_not_match() {
        let e = entry(StatusCode::OK, None, Some(LM));
        assert!(!not_modified(
            &request(&[("if-none-match", b"\"v1\""), ("if-modified-since", LATER)]),
            &e
        ));
    }

    #[test]
    fn malformed_etags_never_match() {
        let e = entry(StatusCode::OK, Some("\"v1\" junk"), None);
        assert!(!not_modified(&request(&[("if-none-match", b"\"v1\"")]), &e));
        let e = entry(StatusCode::OK, Some("\"v1\""), None);
        assert!(!not_modified(&request(&[("if-none-match", b"\"v1")]), &e));
        assert!(!not_modified(
            &request(&[("if-none-match", b"\"v1\"x")]),
            &e
        ));
        assert!(!not_modified(
            &request(&[("if-none-match", b"\"v 1\"")]),
            &e
        ));
        assert!(!not_modified(&request(&[("if-none-match", b"")]), &e));
    }

    #[test]
    fn long_if_none_match_is_not_read() {
        let e = entry(StatusCode::OK, Some("\"v1\""), None);
        let mut long = b"\"x\", ".repeat(MAX_IF_NONE_MATCH_BYTES / 5 + 1);
        long.extend_from_slice(b"\"v1\"");
        assert!(!not_modified(&request(&[("if-none-match", &long)]), &e));
    }

    #[test]
    fn if_modified_since_compares_dates() {
        let e = entry(StatusCode::OK, None, Some(LM));
        assert!(not_modified(
            &request(&[("if-modified-since", LM.as_bytes())]),
            &e
        ));
        assert!(not_modified(&request(&[("if-modified-since", LATER)]), &e));
        assert!(!not_modified(
            &request(&[("if-modified-since", EARLIER)]),
            &e
        ));
        // Other HTTP-date formats are read too.
        assert!(not_modified(
            &request(&[("if-modified-since", b"Sunday, 06-Nov-94 08:49:37 GMT")]),
            &entry(StatusCode::OK, None, Some("Sun, 06 Nov 1994 08:49:37 GMT"))
        ));
    }

    #[test]
    fn if_modified_since_garbage_or_repeated_is_ignored() {
        let e = entry(StatusCode::OK, None, Some(LM));
        assert!(!not_modified(
            &request(&[("if-modified-since", b"yesterday")]),
            &e
        ));
        assert!(!not_modified(
            &request(&[("if-modified-since", LATER), ("if-modified-since", LATER)]),
            &e
        ));
        let no_lm = entry(StatusCode::OK, None, None);
        assert!(!not_modified(
            &request(&[("if-modified-since", LATER)]),
            &no_lm
        ));
        let bad_lm = entry(StatusCode::OK, None, Some("soon"));
        assert!(!not_modified(
            &request(&[("if-modified-since", LATER)]),
            &bad_lm
        ));
    }

    #[test]
    fn no_conditional_headers_no_304() {
        let e = entry(StatusCode::OK, Some("\"v1\""), Some(LM));
        assert!(!not_modified(&HeaderMap::new(), &e));
    }

    #[test]
    fn only_successful_entries_answer_304() {
        let e = entry(StatusCode::NOT_FOUND, Some("\"v1\""), Some(LM));
        assert!(!not_modified(&request(&[("if-none-match", b"\"v1\"")]), &e));
        assert!(!not_modified(&request(&[("if-none-match", b"*")]), &e));
        assert!(!not_modified(&request(&[("if-modified-since", LATER)]), &e));
    }
}
