//! The in-memory store of origin responses, bounded in bytes.
//!
//! Built on moka's concurrent cache: its TinyLFU admission keeps a flood of one-off keys
//! (random query strings) from pushing out the pages everyone reads, and its weigher bounds
//! the store by the bytes of its entries rather than their number. Each entry is dropped by
//! moka once it can no longer be used in any way, that is after the last of its fresh,
//! stale-while-revalidate and stale-if-error windows.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, ETAG, HeaderName, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue, StatusCode};
use moka::Expiry;
use moka::sync::Cache;

use crate::policy::Freshness;

/// Longest freshness window honoured when turning durations into instants. Longer windows
/// are cut to this; a micro-cache has no use for more, and it keeps `Instant` arithmetic
/// far from overflow.
pub const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Bytes counted for each stored header on top of its name and value: the header map's
/// own bookkeeping.
const HEADER_OVERHEAD: usize = 48;

/// Bytes counted for each entry on top of its body and headers: the entry itself, its
/// `Arc`, the key's `String` and moka's per-entry bookkeeping.
const ENTRY_OVERHEAD: usize = 256;

/// Where a stored response stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Fresh: serve it.
    Fresh,
    /// Stale but within stale-while-revalidate: serve it and refresh it in the background.
    Stale,
    /// Past stale-while-revalidate but within stale-if-error: serve it only when the
    /// origin fails or cannot be reached.
    StaleIfError,
    /// Of no further use.
    Expired,
}

/// An origin response as stored: everything needed to answer a request without the origin.
///
/// Build it with [`CachedResponse::new`], which removes the headers that must never be
/// stored; [`Store::insert`] refuses a response that still has one.
#[derive(Clone)]
pub struct CachedResponse {
    /// The origin's status.
    pub status: StatusCode,
    /// The origin's end-to-end headers, without hop-by-hop headers or `Set-Cookie`.
    pub headers: HeaderMap,
    /// The full body, as the origin encoded it.
    pub body: Bytes,
    /// When the response was received from the origin.
    pub stored_at: Instant,
    /// Fresh until this instant.
    pub fresh_until: Instant,
    /// Servable while refreshing until this instant.
    pub swr_until: Instant,
    /// Servable when the origin fails until this instant.
    pub sie_until: Instant,
    /// The `ETag`, for conditional requests.
    pub etag: Option<HeaderValue>,
    /// The `Last-Modified`, for conditional requests.
    pub last_modified: Option<HeaderValue>,
}

impl CachedResponse {
    /// A response received at `now` with `freshness` (from [`crate::decide`]), with its
    /// hop-by-hop headers and `Set-Cookie` removed. The windows start at `now`; each is cut
    /// to [`MAX_WINDOW`].
    #[must_use]
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        freshness: &Freshness,
        now: Instant,
    ) -> Self {
        strip_unstorable_headers(&mut headers);
        let headers = compact(&headers);
        let after = |window: Duration| now.checked_add(window.min(MAX_WINDOW)).unwrap_or(now);
        let fresh_until = after(freshness.ttl);
        let after_fresh = |window: Duration| {
            fresh_until
                .checked_add(window.min(MAX_WINDOW))
                .unwrap_or(fresh_until)
        };
        CachedResponse {
            status,
            etag: headers.get(ETAG).cloned(),
            last_modified: headers.get(LAST_MODIFIED).cloned(),
            headers,
            body,
            stored_at: now,
            fresh_until,
            swr_until: after_fresh(freshness.stale_while_revalidate),
            sie_until: after_fresh(freshness.stale_if_error),
        }
    }

    /// Where the response stands at `now`. When stale-if-error is shorter than
    /// stale-while-revalidate, the stale-while-revalidate window wins while it lasts.
    #[must_use]
    pub fn state(&self, now: Instant) -> EntryState {
        if now < self.fresh_until {
            EntryState::Fresh
        } else if now < self.swr_until {
            EntryState::Stale
        } else if now < self.sie_until {
            EntryState::StaleIfError
        } else {
            EntryState::Expired
        }
    }

    /// How long the response has been in the cache at `now` (zero if `now` is earlier).
    /// This is the cache's own part of the `Age` to send.
    #[must_use]
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    /// The last instant at which the response can be used in any way.
    #[must_use]
    pub fn usable_until(&self) -> Instant {
        self.fresh_until.max(self.swr_until).max(self.sie_until)
    }

    /// An estimate of the memory the entry holds, in bytes: body, headers and a fixed
    /// overhead for the bookkeeping around them.
    #[must_use]
    pub fn weight(&self) -> usize {
        let headers = self.headers.iter().fold(0_usize, |sum, (name, value)| {
            sum.saturating_add(name.as_str().len() + value.len() + HEADER_OVERHEAD)
        });
        self.body
            .len()
            .saturating_add(headers)
            .saturating_add(ENTRY_OVERHEAD)
    }

    /// Whether any header that must never be stored is present.
    fn has_unstorable_header(&self) -> bool {
        self.headers.keys().any(is_unstorable)
    }
}

impl fmt::Debug for CachedResponse {
    // The body can be megabytes; its length says enough.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("stored_at", &self.stored_at)
            .field("fresh_until", &self.fresh_until)
            .field("swr_until", &self.swr_until)
            .field("sie_until", &self.sie_until)
            .field("etag", &self.etag)
            .field("last_modified", &self.last_modified)
            .finish()
    }
}

/// Headers that belong to one connection or one client and are never stored (RFC 9110
/// section 7.6.1 for the hop-by-hop ones).
fn is_unstorable(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "set-cookie"
    ) || name.starts_with("proxy-")
}

/// The same headers with every value in its own allocation. A parsed value is usually a slice of
/// the connection's read buffer (hyper's or the shield's own), and a stored entry would keep that
/// whole buffer alive while its weight counts only the value: a copy keeps the cache's memory
/// what its capacity says.
fn compact(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if let Ok(mut v) = HeaderValue::from_bytes(value.as_bytes()) {
            v.set_sensitive(value.is_sensitive());
            out.append(name.clone(), v);
        }
    }
    out
}

/// Removes the unstorable headers, and the headers that `Connection` names as hop-by-hop.
fn strip_unstorable_headers(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .filter_map(|item| HeaderName::from_bytes(item.trim_ascii()).ok())
        .collect();
    doomed.extend(headers.keys().filter(|name| is_unstorable(name)).cloned());
    for name in doomed {
        headers.remove(name);
    }
}

/// Tells moka to drop each entry once it can no longer be used.
struct UntilUnusable;

impl UntilUnusable {
    fn remaining(value: &CachedResponse, at: Instant) -> Option<Duration> {
        Some(value.usable_until().saturating_duration_since(at))
    }
}

impl Expiry<String, Arc<CachedResponse>> for UntilUnusable {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedResponse>,
        created_at: Instant,
    ) -> Option<Duration> {
        Self::remaining(value, created_at)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<CachedResponse>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        // A replaced entry lives as long as the new response, not the old one.
        Self::remaining(value, updated_at)
    }
}

/// The byte-bounded store of cached responses, shared between threads.
///
/// Cloning is cheap and the clones share one store.
#[derive(Clone)]
pub struct Store {
    cache: Cache<String, Arc<CachedResponse>>,
    capacity_bytes: u64,
    max_object_bytes: usize,
}

impl Store {
    /// A store holding at most `capacity_bytes` of entries (by [`CachedResponse::weight`]
    /// plus the key), each at most `max_object_bytes`.
    #[must_use]
    pub fn new(capacity_bytes: u64, max_object_bytes: usize) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|key: &String, value: &Arc<CachedResponse>| {
                u32::try_from(entry_weight(key, value)).unwrap_or(u32::MAX)
            })
            .expire_after(UntilUnusable)
            .build();
        Store {
            cache,
            capacity_bytes,
            max_object_bytes,
        }
    }

    /// The stored response for `key`, in whatever state it is: the caller checks
    /// [`CachedResponse::state`]. Entries past their last usable instant are not returned.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<Arc<CachedResponse>> {
        self.cache.get(key)
    }

    /// Stores `value` under `key`, replacing any earlier entry. Returns `false`, storing
    /// nothing, when the entry weighs more than the maximum object size or the whole store,
    /// when it has a header that must never be stored, or when it is already expired.
    ///
    /// `true` means the entry was handed to the store, not that it will be kept: moka admits
    /// a new entry over a full store only if it is likely to be read more often than the
    /// entries it would push out.
    pub fn insert(&self, key: String, value: Arc<CachedResponse>) -> bool {
        let weight = entry_weight(&key, &value);
        let fits = value.weight() <= self.max_object_bytes
            && u64::try_from(weight).is_ok_and(|weight| weight <= self.capacity_bytes)
            && u32::try_from(weight).is_ok();
        if !fits
            || value.has_unstorable_header()
            || value.state(Instant::now()) == EntryState::Expired
        {
            return false;
        }
        self.cache.insert(key, value);
        true
    }

    /// Removes the entry for `key`, if any.
    pub fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    /// How many entries the store holds. Runs moka's pending bookkeeping first so the count
    /// is current; meant for metrics and tests, not for each request.
    #[must_use]
    pub fn entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// How many bytes the store holds, by the same measure as its capacity. Runs moka's
    /// pending bookkeeping first; meant for metrics and tests, not for each request.
    #[must_use]
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// The capacity given to [`Store::new`], in bytes.
    #[must_use]
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }
}

impl fmt::Debug for Store {
    // moka's own Debug lists every entry, which is no use for a store of thousands.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("capacity_bytes", &self.capacity_bytes)
            .field("max_object_bytes", &self.max_object_bytes)
            .finish_non_exhaustive()
    }
}

fn entry_weight(key: &str, value: &CachedResponse) -> usize {
    value.weight().saturating_add(key.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freshness(ttl: u64, swr: u64, sie: u64) -> Freshness {
        Freshness {
            ttl: Duration::from_secs(ttl),
            stale_while_revalidate: Duration::from_secs(swr),
            stale_if_error: Duration::from_secs(sie),
        }
    }

    #[test]
    fn stored_headers_do_not_keep_the_read_buffer_alive() {
        // A 64 KiB "read buffer" whose first bytes hold a header value, as a parser leaves it.
        let mut raw = vec![b'x'; 64 * 1024];
        raw[..5].copy_from_slice(b"hello");
        let buffer = Bytes::from(raw);
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let mut headers = HeaderMap::new();
        let mut secret = HeaderValue::from_maybe_shared(buffer.slice(0..5)).unwrap();
        secret.set_sensitive(true);
        headers.insert("x-from-origin", secret);
        let entry = CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"body"),
            &freshness(60, 0, 0),
            Instant::now(),
        );
        let kept = &entry.headers["x-from-origin"];
        assert_eq!(kept, "hello");
        assert!(kept.is_sensitive(), "sensitivity survives the copy");
        assert!(
            !range.contains(&(kept.as_bytes().as_ptr() as usize)),
            "the stored value still points into the 64 KiB buffer"
        );
    }

    fn response(body_len: usize, now: Instant) -> Arc<CachedResponse> {
        Arc::new(CachedResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; body_len]),
            &freshness(60, 10, 300),
            now,
        ))
    }

    #[test]
    fn states_follow_the_windows() {
        let t0 = Instant::now();
        let r = CachedResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            &freshness(60, 10, 300),
            t0,
        );
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(r.state(t0), EntryState::Fresh);
        assert_eq!(r.state(at(59)), EntryState::Fresh);
        assert_eq!(r.state(at(60)), EntryState::Stale);
        assert_eq!(r.state(at(69)), EntryState::Stale);
        assert_eq!(r.state(at(70)), EntryState::StaleIfError);
        assert_eq!(r.state(at(359)), EntryState::StaleIfError);
        assert_eq!(r.state(at(360)), EntryState::Expired);
        assert_eq!(r.age(at(42)), Duration::from_secs(42));
        assert_eq!(r.usable_until(), at(360));
    }

    #[test]
    fn swr_longer_than_sie() {
        let t0 = Instant::now();
        let r = CachedResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            &freshness(10, 100, 5),
            t0,
        );
        assert_eq!(r.state(t0 + Duration::from_secs(12)), EntryState::Stale);
        assert_eq!(r.state(t0 + Duration::from_secs(109)), EntryState::Stale);
        assert_eq!(r.state(t0 + Duration::from_secs(110)), EntryState::Expired);
        assert_eq!(r.usable_until(), t0 + Duration::from_secs(110));
    }

    #[test]
    fn age_before_storing_is_zero() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let r = response(0, t0);
        assert_eq!(r.age(Instant::now()), Duration::ZERO);
    }

    #[test]
    fn huge_windows_are_cut() {
        let t0 = Instant::now();
        let r = CachedResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            &freshness(u64::MAX, u64::MAX, u64::MAX),
            t0,
        );
        assert_eq!(r.fresh_until, t0 + MAX_WINDOW);
        assert_eq!(r.sie_until, t0 + MAX_WINDOW + MAX_WINDOW);
    }

    #[test]
    fn hop_by_hop_and_set_cookie_are_stripped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-private-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("set-cookie", "a=b"),
            ("x-private-hop", "1"),
            ("content-type", "text/html"),
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 15 Nov 1994 08:12:31 GMT"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let r = CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::new(),
            &freshness(60, 0, 0),
            Instant::now(),
        );
        let mut names: Vec<&str> = r.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "etag", "last-modified"]);
        assert_eq!(r.etag, Some(HeaderValue::from_static("\"v1\"")));
        assert!(r.last_modified.is_some());
    }

    #[test]
    fn weight_counts_body_and_headers() {
        let now = Instant::now();
        let empty = response(0, now);
        let big = response(1000, now);
        assert_eq!(big.weight() - empty.weight(), 1000);
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("12345"));
        let with_header = CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::new(),
            &freshness(60, 0, 0),
            now,
        );
        assert_eq!(
            with_header.weight() - empty.weight(),
            3 + 5 + HEADER_OVERHEAD
        );
    }

    #[test]
    fn insert_get_remove_clear() {
        let store = Store::new(1 << 20, 64 * 1024);
        let now = Instant::now();
        assert!(store.get("k").is_none());
        assert!(store.insert("k".to_owned(), response(10, now)));
        assert_eq!(store.get("k").map(|r| r.body.len()), Some(10));
        assert_eq!(store.entries(), 1);
        assert!(store.weighted_bytes() >= 10);
        store.remove("k");
        assert!(store.get("k").is_none());
        assert!(store.insert("a".to_owned(), response(1, now)));
        assert!(store.insert("b".to_owned(), response(1, now)));
        assert_eq!(store.entries(), 2);
        store.clear();
        assert_eq!(store.entries(), 0);
        assert_eq!(store.weighted_bytes(), 0);
    }

    #[test]
    fn replacing_an_entry_replaces_it() {
        let store = Store::new(1 << 20, 64 * 1024);
        let now = Instant::now();
        assert!(store.insert("k".to_owned(), response(10, now)));
        assert!(store.insert("k".to_owned(), response(20, now)));
        assert_eq!(store.get("k").map(|r| r.body.len()), Some(20));
        assert_eq!(store.entries(), 1);
    }

    #[test]
    fn oversized_entries_are_refused() {
        let store = Store::new(1 << 20, 1000);
        let now = Instant::now();
        let fits = 1000 - response(0, now).weight();
        assert!(store.insert("k".to_owned(), response(fits, now)));
        assert!(!store.insert("k2".to_owned(), response(fits + 1, now)));
        assert!(store.get("k2").is_none());
        // Bigger than the whole store, even if the object limit allows it.
        let small = Store::new(500, 1 << 20);
        assert!(!small.insert("k".to_owned(), response(1000, now)));
    }

    #[test]
    fn unstorable_headers_and_expired_entries_are_refused() {
        let store = Store::new(1 << 20, 64 * 1024);
        let now = Instant::now();
        let mut sneaky = (*response(1, now)).clone();
        sneaky
            .headers
            .insert("set-cookie", HeaderValue::from_static("session=1"));
        assert!(!store.insert("k".to_owned(), Arc::new(sneaky)));
        let old = now.checked_sub(Duration::from_secs(3600));
        if let Some(old) = old {
            assert!(!store.insert("old".to_owned(), response(1, old)));
        }
        assert_eq!(store.entries(), 0);
    }

    #[test]
    fn entries_are_dropped_after_their_last_usable_instant() {
        let store = Store::new(1 << 20, 64 * 1024);
        let now = Instant::now();
        let short = Arc::new(CachedResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            &Freshness {
                ttl: Duration::from_millis(30),
                stale_while_revalidate: Duration::from_millis(20),
                stale_if_error: Duration::ZERO,
            },
            now,
        ));
        assert!(store.insert("short".to_owned(), short));
        assert!(store.get("short").is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert!(store.get("short").is_none());
        // moka's timer wheel frees expired entries at ticks of about a second; reads
        // already ignore them (above), and the memory follows.
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.entries() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(store.entries(), 0);
        assert_eq!(store.weighted_bytes(), 0);
    }

    #[test]
    fn flood_of_inserts_stays_within_capacity() {
        let capacity = 64 * 1024;
        let store = Store::new(capacity, 4096);
        let now = Instant::now();
        let mut accepted = 0;
        for i in 0..5_000 {
            if store.insert(format!("example.com/search?q={i}"), response(1000, now)) {
                accepted += 1;
            }
            if i % 500 == 0 {
                assert!(store.weighted_bytes() <= capacity);
            }
        }
        assert_eq!(accepted, 5_000);
        assert!(store.weighted_bytes() <= capacity);
        assert!(store.entries() > 0);
        assert!(store.entries() * 1000 <= capacity);
    }
}
