//! Whether an origin response may be stored, and for how long.
//!
//! The rules are RFC 9111's for a shared cache, read carefully: when the origin's headers are
//! unclear, the response is not stored. A micro-cache gains its worth from seconds of
//! freshness on public pages; losing a few cacheable responses costs little, while storing
//! one client's private page and serving it to everyone costs the outlet its readers' trust.
//!
//! What this module adds to RFC 9111, and why:
//!
//! - `no-cache` is treated like `no-store`. RFC 9111 allows storing it if every reuse is
//!   revalidated; a micro-cache does not revalidate, so storing would gain nothing.
//! - Qualified `private="…"` and `no-cache="…"` are treated like the plain directives,
//!   instead of storing the response without the named fields.
//! - `Vary` on anything but `Accept-Encoding` is not stored: the key only knows the
//!   encoding class.
//! - A request with credentials is only answered from a stored response when the origin said
//!   `public` or `s-maxage` (RFC 9111 section 3.5 also allows `must-revalidate`; that alone
//!   does not say the page is the same for everyone, so it is not enough here).
//! - The freshness lifetime is reduced by the response's `Age` header but not by
//!   `now - Date`: origin clocks drift, and a few seconds of drift would make every
//!   micro-cache response stale on arrival.

use std::time::{Duration, SystemTime};

use http::header::{AGE, CACHE_CONTROL, CONTENT_LENGTH, DATE, EXPIRES, PRAGMA, SET_COOKIE, VARY};
use http::{HeaderMap, Method, StatusCode};

/// Largest delta-seconds value honoured, as RFC 9111 section 1.2.2 suggests (2^31 seconds,
/// about 68 years). Larger values are read as this one.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// A route's cache settings, from the shield's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCacheRules {
    /// Freshness for responses that carry none of their own (no `s-maxage`, `max-age` or
    /// `Expires`), when the request had no credentials. `None` stores only responses that
    /// carry their own freshness.
    pub default_ttl: Option<Duration>,
    /// How long after going stale a response may still be served while it is refreshed in
    /// the background, unless the response sets its own `stale-while-revalidate`.
    pub stale_while_revalidate: Duration,
    /// How long after going stale a response may still be served when the origin fails,
    /// unless the response sets its own `stale-if-error`.
    pub stale_if_error: Duration,
    /// Largest body that is stored; a larger `Content-Length` is not stored.
    pub max_object_bytes: usize,
}

/// How long a stored response may be used, counted from when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// How long the response is fresh. Never zero in a [`Decision::Store`].
    pub ttl: Duration,
    /// How long after `ttl` it may be served while being refreshed.
    pub stale_while_revalidate: Duration,
    /// How long after `ttl` it may be served when the origin fails.
    pub stale_if_error: Duration,
}

/// Whether to store an origin response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Store it, with this freshness.
    Store(Freshness),
    /// Do not store it. The reason is a short fixed phrase, fit for a metric label:
    /// `"method"`, `"status"`, `"set-cookie"`, `"no-store"`, `"private"`, `"no-cache"`,
    /// `"vary"`, `"too large"`, `"bad content-length"`, `"credentials"`, `"no freshness"`
    /// or `"stale"`.
    Bypass(&'static str),
}

/// Statuses a shared cache may store without special knowledge (RFC 9110 section 15.1's
/// heuristically cacheable statuses, less `206 Partial Content`, which this cache does not
/// assemble).
const STORABLE_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Decides whether to store the origin's response to a request, and its freshness.
///
/// - `req_method`: only `GET` and `HEAD` responses are stored. A `HEAD` response has no
///   body while [`crate::cache_key`] gives `HEAD` the `GET` key, so a caller that stores
///   the response to a `HEAD` must have sent the origin a `GET` for it (as nginx's
///   `proxy_cache_convert_head` does); otherwise it must not store it.
/// - `req_has_credentials`: whether the request carried `Cookie` or `Authorization`.
/// - `now`: when the response was received; used when the response has no valid `Date`.
///
/// The checks run in the order of the reasons listed on [`Decision::Bypass`], and the first
/// that fails gives the reason.
#[must_use]
pub fn decide(
    req_method: &Method,
    req_has_credentials: bool,
    status: StatusCode,
    resp_headers: &HeaderMap,
    rules: &RouteCacheRules,
    now: SystemTime,
) -> Decision {
    if req_method != Method::GET && req_method != Method::HEAD {
        return Decision::Bypass("method");
    }
    if !STORABLE_STATUSES.contains(&status.as_u16()) {
        return Decision::Bypass("status");
    }
    if resp_headers.contains_key(SET_COOKIE) {
        return Decision::Bypass("set-cookie");
    }
    let cc = CacheControl::from_headers(resp_headers);
    if cc.no_store {
        return Decision::Bypass("no-store");
    }
    if cc.private {
        return Decision::Bypass("private");
    }
    if cc.no_cache || (!resp_headers.contains_key(CACHE_CONTROL) && pragma_no_cache(resp_headers)) {
        return Decision::Bypass("no-cache");
    }
    if !vary_is_storable(resp_headers) {
        return Decision::Bypass("vary");
    }
    match content_length(resp_headers) {
        Err(()) => return Decision::Bypass("bad content-length"),
        Ok(Some(length)) if u64::try_from(rules.max_object_bytes).is_ok_and(|max| length > max) => {
            return Decision::Bypass("too large");
        }
        Ok(_) => {}
    }
    if req_has_credentials && !cc.public && cc.s_maxage.is_none() {
        return Decision::Bypass("credentials");
    }

    let lifetime = if let Some(delta) = cc.s_maxage.or(cc.max_age) {
        // An unreadable value makes the response stale (RFC 9111 section 4.2.1).
        delta.unwrap_or(Duration::ZERO)
    } else if let Some(expires) = resp_headers.get(EXPIRES) {
        // An unreadable Expires, such as the common "0" or "-1", is a time in the past
        // (RFC 9111 section 5.3).
        let date = first_http_date(resp_headers, DATE).unwrap_or(now);
        http_date(expires)
            .and_then(|expires| expires.duration_since(date).ok())
            .unwrap_or(Duration::ZERO)
    } else if let Some(ttl) = rules.default_ttl.filter(|_| !req_has_credentials) {
        ttl
    } else {
        return Decision::Bypass("no freshness");
    };
    let age = resp_headers
        .get(AGE)
        .and_then(|age| parse_delta_seconds(age.as_bytes()))
        .unwrap_or(Duration::ZERO);
    let ttl = lifetime.saturating_sub(age);
    if ttl.is_zero() {
        return Decision::Bypass("stale");
    }

    // The origin's own stale directives win. Without them, the route's apply unless the
    // origin asked for revalidation once stale: `must-revalidate`, `proxy-revalidate`, or
    // `s-maxage`, which implies `proxy-revalidate` for shared caches (RFC 9111 5.2.2.10).
    let may_serve_stale = !(cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some());
    let stale = |own: Option<Option<Duration>>, route: Duration| match own {
        Some(own) => own.unwrap_or(Duration::ZERO),
        None if may_serve_stale => route,
        None => Duration::ZERO,
    };
    Decision::Store(Freshness {
        ttl,
        stale_while_revalidate: stale(cc.stale_while_revalidate, rules.stale_while_revalidate),
        stale_if_error: stale(cc.stale_if_error, rules.stale_if_error),
    })
}

/// The `Cache-Control` directives this cache acts on, from all of a response's
/// `Cache-Control` fields.
///
/// A delta-seconds directive is `None` when absent and `Some(None)` when present but
/// unreadable; when it appears twice, the first counts (RFC 9111 section 4.2.1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct CacheControl {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    must_revalidate: bool,
    proxy_revalidate: bool,
    max_age: Option<Option<Duration>>,
    s_maxage: Option<Option<Duration>>,
    stale_while_revalidate: Option<Option<Duration>>,
    stale_if_error: Option<Option<Duration>>,
}

impl CacheControl {
    fn from_headers(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for value in headers.get_all(CACHE_CONTROL) {
            cc.parse(value.as_bytes());
        }
        cc
    }

    /// Reads one field value: directives separated by commas, each a name with an optional
    /// `=token` or `="quoted string"`. Names ignore case; unknown directives and pieces
    /// that are not directives are skipped up to the next comma outside quotes.
    fn parse(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            while bytes.get(i).is_some_and(|&b| b == b',' || is_ows(b)) {
                i += 1;
            }
            let start = i;
            while bytes
                .get(i)
                .is_some_and(|&b| b != b'=' && b != b',' && !is_ows(b))
            {
                i += 1;
            }
            let name = &bytes[start..i];
            while bytes.get(i).copied().is_some_and(is_ows) {
                i += 1;
            }
            let mut value = None;
            if bytes.get(i) == Some(&b'=') {
                i += 1;
                while bytes.get(i).copied().is_some_and(is_ows) {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'"') {
                    let (quoted, next) = quoted_string(bytes, i + 1);
                    value = Some(quoted);
                    i = next;
                } else {
                    let start = i;
                    while bytes.get(i).is_some_and(|&b| b != b',' && !is_ows(b)) {
                        i += 1;
                    }
                    value = Some(bytes[start..i].to_vec());
                }
            }
            // Whatever follows the directive before the next comma is garbage; skip it,
            // without splitting inside a quoted string.
            while let Some(&b) = bytes.get(i) {
                if b == b',' {
                    break;
                }
                i = if b == b'"' {
                    quoted_string(bytes, i + 1).1
                } else {
                    i + 1
                };
            }
            if !name.is_empty() {
                self.apply(name, value.as_deref());
            }
        }
    }

    fn apply(&mut self, name: &[u8], value: Option<&[u8]>) {
        let delta = || Some(value.and_then(parse_delta_seconds));
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("private") {
            self.private = true;
        } else if is("public") {
            self.public = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("max-age") {
            self.max_age = self.max_age.or_else(delta);
        } else if is("s-maxage") {
            self.s_maxage = self.s_maxage.or_else(delta);
        } else if is("stale-while-revalidate") {
            self.stale_while_revalidate = self.stale_while_revalidate.or_else(delta);
        } else if is("stale-if-error") {
            self.stale_if_error = self.stale_if_error.or_else(delta);
        }
    }
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The content of a quoted string whose opening quote is just before `start`, with
/// backslash escapes resolved, and the index after its closing quote. An unterminated
/// string runs to the end of the field.
fn quoted_string(bytes: &[u8], start: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut i = start;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => return (out, i + 1),
            b'\\' => {
                if let Some(&escaped) = bytes.get(i + 1) {
                    out.push(escaped);
                }
                i += 2;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    (out, bytes.len())
}

/// RFC 9111 delta-seconds: one or more ASCII digits, capped at [`MAX_DELTA_SECONDS`].
/// Surrounding whitespace is tolerated; anything else makes it unreadable.
fn parse_delta_seconds(bytes: &[u8]) -> Option<Duration> {
    let digits = bytes.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let seconds = digits.iter().fold(0_u64, |acc, d| {
        acc.saturating_mul(10)
            .saturating_add(u64::from(d - b'0'))
            .min(MAX_DELTA_SECONDS)
    });
    Some(Duration::from_secs(seconds))
}

fn http_date(value: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

fn first_http_date(headers: &HeaderMap, name: http::header::HeaderName) -> Option<SystemTime> {
    headers.get(name).and_then(http_date)
}

/// `Pragma: no-cache` from an HTTP/1.0 origin, honoured only when there is no
/// `Cache-Control` (RFC 9111 section 5.4 deprecates it, but old origins still send it to
/// mean "do not cache").
fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers.get_all(PRAGMA).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
    })
}

/// Whether every `Vary` field names only `Accept-Encoding` (or nothing).
fn vary_is_storable(headers: &HeaderMap) -> bool {
    headers.get_all(VARY).iter().all(|value| {
        value.as_bytes().split(|&b| b == b',').all(|item| {
            let item = item.trim_ascii();
            item.is_empty() || item.eq_ignore_ascii_case(b"accept-encoding")
        })
    })
}

/// The response's declared body length: `Ok(None)` when absent, `Err` when unreadable or
/// when several values disagree (RFC 9112 section 6.3 makes that a broken response).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let parsed = item
                .iter()
                .fold(0_u64, |acc, d| acc * 10 + u64::from(d - b'0'));
            match length {
                Some(previous) if previous != parsed => return Err(()),
                _ => length = Some(parsed),
            }
        }
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const MINUTE: Duration = Duration::from_secs(60);

    fn rules() -> RouteCacheRules {
        RouteCacheRules {
            default_ttl: Some(Duration::from_secs(5)),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(300),
            max_object_bytes: 1024 * 1024,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::header::HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }

    fn now() -> SystemTime {
        httpdate::parse_http_date("Tue, 15 Nov 1994 08:12:31 GMT").expect("test date")
    }

    fn decide_get(pairs: &[(&str, &str)]) -> Decision {
        decide(
            &Method::GET,
            false,
            StatusCode::OK,
            &headers(pairs),
            &rules(),
            now(),
        )
    }

    fn ttl(decision: Decision) -> Option<Duration> {
        match decision {
            Decision::Store(freshness) => Some(freshness.ttl),
            Decision::Bypass(_) => None,
        }
    }

    #[test]
    fn only_get_and_head_are_stored() {
        let h = headers(&[("cache-control", "max-age=60")]);
        for method in [Method::GET, Method::HEAD] {
            let d = decide(&method, false, StatusCode::OK, &h, &rules(), now());
            assert!(matches!(d, Decision::Store(_)), "{method}");
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let d = decide(&method, false, StatusCode::OK, &h, &rules(), now());
            assert_eq!(d, Decision::Bypass("method"), "{method}");
        }
    }

    #[test]
    fn only_listed_statuses_are_stored() {
        let h = headers(&[("cache-control", "max-age=60")]);
        for code in 100..=599_u16 {
            let Ok(status) = StatusCode::from_u16(code) else {
                continue;
            };
            let d = decide(&Method::GET, false, status, &h, &rules(), now());
            if STORABLE_STATUSES.contains(&code) {
                assert!(matches!(d, Decision::Store(_)), "{code}");
            } else {
                assert_eq!(d, Decision::Bypass("status"), "{code}");
            }
        }
    }

    #[test]
    fn set_cookie_is_never_stored() {
        let d = decide_get(&[
            ("cache-control", "public, max-age=60"),
            ("set-cookie", "a=b"),
        ]);
        assert_eq!(d, Decision::Bypass("set-cookie"));
    }

    #[test]
    fn no_store_private_and_no_cache_are_not_stored() {
        assert_eq!(
            decide_get(&[("cache-control", "no-store")]),
            Decision::Bypass("no-store")
        );
        assert_eq!(
            decide_get(&[("cache-control", "max-age=60, NO-STORE")]),
            Decision::Bypass("no-store")
        );
        assert_eq!(
            decide_get(&[("cache-control", "private, max-age=60")]),
            Decision::Bypass("private")
        );
        assert_eq!(
            decide_get(&[("cache-control", "private=\"set-cookie, x\", max-age=60")]),
            Decision::Bypass("private")
        );
        assert_eq!(
            decide_get(&[("cache-control", "public, no-cache, max-age=60")]),
            Decision::Bypass("no-cache")
        );
        assert_eq!(
            decide_get(&[("cache-control", "no-cache=\"set-cookie\"")]),
            Decision::Bypass("no-cache")
        );
    }

    #[test]
    fn directives_in_repeated_headers_count() {
        let d = decide_get(&[
            ("cache-control", "max-age=60"),
            ("cache-control", "private"),
        ]);
        assert_eq!(d, Decision::Bypass("private"));
    }

    #[test]
    fn pragma_no_cache_counts_only_without_cache_control() {
        assert_eq!(
            decide_get(&[("pragma", "no-cache")]),
            Decision::Bypass("no-cache")
        );
        assert_eq!(
            ttl(decide_get(&[
                ("pragma", "no-cache"),
                ("cache-control", "max-age=60")
            ])),
            Some(MINUTE)
        );
    }

    #[test]
    fn vary_only_on_accept_encoding() {
        let cc = ("cache-control", "max-age=60");
        assert_eq!(
            ttl(decide_get(&[cc, ("vary", "Accept-Encoding")])),
            Some(MINUTE)
        );
        assert_eq!(
            ttl(decide_get(&[cc, ("vary", "accept-encoding, ,")])),
            Some(MINUTE)
        );
        assert_eq!(
            ttl(decide_get(&[
                cc,
                ("vary", "accept-encoding"),
                ("vary", "ACCEPT-ENCODING")
            ])),
            Some(MINUTE)
        );
        assert_eq!(decide_get(&[cc, ("vary", "*")]), Decision::Bypass("vary"));
        assert_eq!(
            decide_get(&[cc, ("vary", "Accept-Encoding, Cookie")]),
            Decision::Bypass("vary")
        );
        assert_eq!(
            decide_get(&[cc, ("vary", "accept-encoding"), ("vary", "user-agent")]),
            Decision::Bypass("vary")
        );
    }

    #[test]
    fn large_and_broken_content_lengths() {
        let cc = ("cache-control", "max-age=60");
        let limit = rules().max_object_bytes;
        let at_limit = limit.to_string();
        let over = (limit + 1).to_string();
        assert_eq!(
            ttl(decide_get(&[cc, ("content-length", &at_limit)])),
            Some(MINUTE)
        );
        assert_eq!(
            decide_get(&[cc, ("content-length", &over)]),
            Decision::Bypass("too large")
        );
        assert_eq!(
            decide_get(&[cc, ("content-length", "99999999999999999999999")]),
            Decision::Bypass("bad content-length")
        );
        assert_eq!(
            decide_get(&[cc, ("content-length", "12abc")]),
            Decision::Bypass("bad content-length")
        );
        assert_eq!(
            decide_get(&[cc, ("content-length", "10"), ("content-length", "11")]),
            Decision::Bypass("bad content-length")
        );
        assert_eq!(
            ttl(decide_get(&[cc, ("content-length", "10, 10")])),
            Some(MINUTE)
        );
    }

    #[test]
    fn credentials_need_public_or_s_maxage() {
        let with_credentials = |pairs: &[(&str, &str)]| {
            decide(
                &Method::GET,
                true,
                StatusCode::OK,
                &headers(pairs),
                &rules(),
                now(),
            )
        };
        assert_eq!(
            with_credentials(&[("cache-control", "max-age=60")]),
            Decision::Bypass("credentials")
        );
        assert_eq!(with_credentials(&[]), Decision::Bypass("credentials"));
        assert_eq!(
            ttl(with_credentials(&[("cache-control", "public, max-age=60")])),
            Some(MINUTE)
        );
        assert_eq!(
            ttl(with_credentials(&[("cache-control", "s-maxage=60")])),
            Some(MINUTE)
        );
        // `public` alone does not let the route's default apply to a credentialed request.
        assert_eq!(
            with_credentials(&[("cache-control", "public")]),
            Decision::Bypass("no freshness")
        );
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let expires = ("expires", "Tue, 15 Nov 1994 08:22:31 GMT");
        let date = ("date", "Tue, 15 Nov 1994 08:12:31 GMT");
        assert_eq!(
            ttl(decide_get(&[
                ("cache-control", "max-age=30, s-maxage=90"),
                expires,
                date
            ])),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            ttl(decide_get(&[
                ("cache-control", "max-age=30"),
                expires,
                date
            ])),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            ttl(decide_get(&[expires, date])),
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn expires_without_date_counts_from_now() {
        let expires = ("expires", "Tue, 15 Nov 1994 08:13:31 GMT");
        assert_eq!(ttl(decide_get(&[expires])), Some(MINUTE));
        assert_eq!(
            ttl(decide_get(&[expires, ("date", "not a date")])),
            Some(MINUTE),
            "an unreadable Date is replaced by now"
        );
    }

    #[test]
    fn past_or_unreadable_expires_is_stale() {
        let date = ("date", "Tue, 15 Nov 1994 08:12:31 GMT");
        assert_eq!(
            decide_get(&[("expires", "0"), date]),
            Decision::Bypass("stale")
        );
        assert_eq!(decide_get(&[("expires", "-1")]), Decision::Bypass("stale"));
        assert_eq!(
            decide_get(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT"), date]),
            Decision::Bypass("stale")
        );
    }

    #[test]
    fn default_ttl_only_without_own_freshness() {
        assert_eq!(ttl(decide_get(&[])), Some(Duration::from_secs(5)));
        assert_eq!(
            ttl(decide_get(&[("cache-control", "public")])),
            Some(Duration::from_secs(5))
        );
        let no_default = RouteCacheRules {
            default_ttl: None,
            ..rules()
        };
        let d = decide(
            &Method::GET,
            false,
            StatusCode::OK,
            &HeaderMap::new(),
            &no_default,
            now(),
        );
        assert_eq!(d, Decision::Bypass("no freshness"));
    }

    #[test]
    fn zero_ttl_is_not_stored() {
        assert_eq!(
            decide_get(&[("cache-control", "max-age=0")]),
            Decision::Bypass("stale")
        );
        assert_eq!(
            decide_get(&[("cache-control", "s-maxage=0, max-age=60")]),
            Decision::Bypass("stale")
        );
        let zero_default = RouteCacheRules {
            default_ttl: Some(Duration::ZERO),
            ..rules()
        };
        let d = decide(
            &Method::GET,
            false,
            StatusCode::OK,
            &HeaderMap::new(),
            &zero_default,
            now(),
        );
        assert_eq!(d, Decision::Bypass("stale"));
    }

    #[test]
    fn age_is_subtracted() {
        assert_eq!(
            ttl(decide_get(&[
                ("cache-control", "max-age=60"),
                ("age", "20")
            ])),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            decide_get(&[("cache-control", "max-age=60"), ("age", "60")]),
            Decision::Bypass("stale")
        );
        assert_eq!(
            ttl(decide_get(&[
                ("cache-control", "max-age=60"),
                ("age", "junk")
            ])),
            Some(MINUTE)
        );
    }

    #[test]
    fn unreadable_max_age_is_stale_not_default() {
        assert_eq!(
            decide_get(&[("cache-control", "max-age=abc")]),
            Decision::Bypass("stale")
        );
        assert_eq!(
            decide_get(&[("cache-control", "max-age")]),
            Decision::Bypass("stale")
        );
        assert_eq!(
            decide_get(&[("cache-control", "max-age=-5")]),
            Decision::Bypass("stale")
        );
    }

    #[test]
    fn first_occurrence_wins() {
        assert_eq!(
            ttl(decide_get(&[("cache-control", "max-age=60, max-age=0")])),
            Some(MINUTE)
        );
        assert_eq!(
            ttl(decide_get(&[
                ("cache-control", "max-age=60"),
                ("cache-control", "max-age=5")
            ])),
            Some(MINUTE)
        );
    }

    #[test]
    fn huge_delta_seconds_are_capped() {
        assert_eq!(
            ttl(decide_get(&[(
                "cache-control",
                "max-age=99999999999999999999999999"
            )])),
            Some(Duration::from_secs(MAX_DELTA_SECONDS))
        );
    }

    #[test]
    fn cache_control_parsing_is_robust() {
        let parse = |s: &str| {
            let mut cc = CacheControl::default();
            cc.parse(s.as_bytes());
            cc
        };
        let cc = parse(
            "  Max-Age = \"60\" ,PUBLIC,,, garbage;;;, s-maxage=\"1,2\", x=\"a\\\"b,private\"",
        );
        assert_eq!(cc.max_age, Some(Some(MINUTE)));
        assert!(cc.public);
        assert_eq!(
            cc.s_maxage,
            Some(None),
            "a quoted comma stays inside the value"
        );
        assert!(
            !cc.private,
            "directives inside quoted values are not directives"
        );
        let cc = parse("max-age=60 junk, no-store");
        assert_eq!(cc.max_age, Some(Some(MINUTE)));
        assert!(cc.no_store);
        let cc = parse("x=\"unterminated, no-store");
        assert!(!cc.no_store);
        let cc = parse("=,=\"\",\"\\");
        assert_eq!(cc, CacheControl::default());
        // Non-UTF-8 bytes are skipped like any other garbage.
        let cc = parse("\u{ff}\u{fe}, max-age=5");
        assert_eq!(cc.max_age, Some(Some(Duration::from_secs(5))));
    }

    #[test]
    fn stale_directives_override_the_route() {
        let freshness = |pairs: &[(&str, &str)]| match decide_get(pairs) {
            Decision::Store(freshness) => freshness,
            Decision::Bypass(reason) => panic!("bypassed: {reason}"),
        };
        let f = freshness(&[("cache-control", "max-age=60")]);
        assert_eq!(f.stale_while_revalidate, Duration::from_secs(10));
        assert_eq!(f.stale_if_error, Duration::from_secs(300));
        let f = freshness(&[(
            "cache-control",
            "max-age=60, stale-while-revalidate=30, stale-if-error=86400",
        )]);
        assert_eq!(f.stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(f.stale_if_error, Duration::from_secs(86400));
        let f = freshness(&[("cache-control", "max-age=60, stale-if-error=0")]);
        assert_eq!(f.stale_if_error, Duration::ZERO);
        assert_eq!(f.stale_while_revalidate, Duration::from_secs(10));
        let f = freshness(&[("cache-control", "max-age=60, stale-while-revalidate=x")]);
        assert_eq!(f.stale_while_revalidate, Duration::ZERO);
    }

    #[test]
    fn revalidation_directives_turn_off_route_stale_windows() {
        for cc in [
            "max-age=60, must-revalidate",
            "max-age=60, proxy-revalidate",
            "s-maxage=60",
        ] {
            let Decision::Store(f) = decide_get(&[("cache-control", cc)]) else {
                panic!("{cc} was not stored");
            };
            assert_eq!(f.stale_while_revalidate, Duration::ZERO, "{cc}");
            assert_eq!(f.stale_if_error, Duration::ZERO, "{cc}");
        }
        let Decision::Store(f) =
            decide_get(&[("cache-control", "s-maxage=60, stale-if-error=120")])
        else {
            panic!("not stored");
        };
        assert_eq!(f.stale_if_error, Duration::from_secs(120));
        assert_eq!(f.stale_while_revalidate, Duration::ZERO);
    }

    #[test]
    fn delta_seconds() {
        assert_eq!(parse_delta_seconds(b"0"), Some(Duration::ZERO));
        assert_eq!(parse_delta_seconds(b" 42 "), Some(Duration::from_secs(42)));
        assert_eq!(parse_delta_seconds(b""), None);
        assert_eq!(parse_delta_seconds(b"4 2"), None);
        assert_eq!(parse_delta_seconds(b"+1"), None);
        assert_eq!(parse_delta_seconds(b"1.5"), None);
    }
}
