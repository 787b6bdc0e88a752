//! The micro-cache: hits, keys, what is never stored, coalescing, stale copies when the origin
//! fails or is busy, search admission, and the memory bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::common::*;

/// Lets 127.0.0.0/8 past the rate limits so a test can send many requests from one address
/// while keeping the default route classes.
const NO_LIMITS: &str = "[lists]\nallow_cidrs = [\"127.0.0.0/8\"]\n";

const STALE: &str = "qalqan_shield_requests_total{decision=\"stale\"}";

/// An origin whose answer carries a version that the test can bump, and that fails on demand.
struct Versioned {
    origin: Origin,
    version: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

async fn versioned(cache_control: Option<&'static str>) -> Versioned {
    let version = Arc::new(AtomicUsize::new(1));
    let failing = Arc::new(AtomicBool::new(false));
    let (v, f) = (version.clone(), failing.clone());
    let origin = Origin::start(Arc::new(move |s: &Seen| {
        if f.load(Ordering::SeqCst) {
            let mut r = Response::new(Full::new(Bytes::from_static(b"origin broken")));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "v{} {}",
            v.load(Ordering::SeqCst),
            s.uri
        ))));
        if let Some(cc) = cache_control {
            r.headers_mut().insert("cache-control", cc.parse().unwrap());
        }
        r
    }))
    .await;
    Versioned {
        origin,
        version,
        failing,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_copy_is_served_from_cache() {
    let origin = Origin::simple(Some("max-age=60")).await;
    let sh = shield_apart(&origin, "").await;
    let a = get(sh.listen[0], "/c", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-qalqan-cache"), Some("miss"));
    let b = get(sh.listen[0], "/c", &[]).await;
    assert_eq!(b.header("x-qalqan-cache"), Some("hit"));
    assert_eq!(b.body, a.body);
    assert_eq!(b.header("cache-control"), Some("max-age=60"));
    let age: u64 = b
        .header("age")
        .expect("Age on a hit")
        .parse()
        .expect("Age is a number");
    assert!(age < 60, "age {age}");
    assert_eq!(origin.count("/c"), 1);
    let hits = metric(
        sh.admin.unwrap(),
        "qalqan_shield_requests_total{decision=\"cache_hit\"}",
    )
    .await;
    assert_eq!(hits, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_order_and_tracking_params_share_one_entry() {
    let origin = Origin::simple(Some("max-age=60")).await;
    let sh = shield_apart(&origin, "").await;
    let first = get(sh.listen[0], "/c?b=2&a=1", &[]).await;
    assert_eq!(first.header("x-qalqan-cache"), Some("miss"));
    for path in [
        "/c?a=1&b=2",
        "/c?a=1&b=2&utm_source=newsletter&utm_medium=email",
        "/c?utm_campaign=x&b=2&fbclid=abc&a=1",
    ] {
        let g = get(sh.listen[0], path, &[]).await;
        assert_eq!(g.header("x-qalqan-cache"), Some("hit"), "{path}");
        assert_eq!(g.body, first.body, "{path}");
    }
    assert_eq!(origin.count("/c?"), 1);
    // A different value is a different page, and so is a value in other case (the default
    // route does not fold case), and so is another host.
    for (path, host) in [
        ("/c?a=1&b=3", None),
        ("/c?a=1&b=X", None),
        ("/c?a=1&b=x", None),
        ("/c?a=1&b=2", Some("other.example")),
    ] {
        let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
        let g = get(sh.listen[0], path, &headers).await;
        assert_eq!(g.header("x-qalqan-cache"), Some("miss"), "{path} {host:?}");
    }
    assert_eq!(origin.count("/c?"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_micro_ttl_caches_anonymous_pages() {
    // No cache headers at all: the default route's 5 s micro-cache applies.
    let origin = Origin::simple(None).await;
    let sh = shield_apart(&origin, "").await;
    let a = get(sh.listen[0], "/article", &[]).await;
    assert_eq!(a.header("x-qalqan-cache"), Some("miss"));
    let b = get(sh.listen[0], "/article", &[]).await;
    assert_eq!(b.header("x-qalqan-cache"), Some("hit"));
    assert!(b.header("age").is_some());
    assert_eq!(origin.count("/article"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_cookie_or_authorization_bypass_the_cache() {
    let origin = Origin::simple(Some("max-age=60")).await;
    let sh = shield_apart(&origin, "").await;
    assert_eq!(
        get(sh.listen[0], "/p", &[]).await.header("x-qalqan-cache"),
        Some("miss")
    );
    // A fresh copy exists, yet credentialed requests go to the origin.
    let g = get(sh.listen[0], "/p", &[("cookie", "session=editor")]).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("x-qalqan-cache"), Some("bypass"));
    assert_eq!(origin.count("/p"), 2);
    assert_eq!(
        origin.last().headers.get("cookie").unwrap(),
        "session=editor"
    );
    let g = get(sh.listen[0], "/p", &[("authorization", "Bearer t")]).await;
    assert_eq!(g.header("x-qalqan-cache"), Some("bypass"));
    assert_eq!(origin.count("/p"), 3);

    // And a credentialed answer is not stored for anonymous readers.
    let g = get(sh.listen[0], "/q", &[("cookie", "session=editor")]).await;
    assert_eq!(g.header("x-qalqan-cache"), Some("bypass"));
    let g = get(sh.listen[0], "/q", &[]).await;
    assert_eq!(g.header("x-qalqan-cache"), Some("miss"));
    assert_eq!(origin.count("/q"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_no_store_and_private_responses_are_not_stored() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let mut r = Response::new(Full::new(Bytes::from(format!("page {}", s.uri))));
        let h = r.headers_mut();
        if s.uri.starts_with("/sc") {
            h.insert("set-cookie", "sid=123".parse().unwrap());
            h.insert("cache-control", "max-age=60".parse().unwrap());
        } else if s.uri.starts_with("/ns") {
            h.insert("cache-control", "no-store".parse().unwrap());
        } else if s.uri.starts_with("/pv") {
            h.insert("cache-control", "private, max-age=60".parse().unwrap());
        } else if s.uri.starts_with("/vc") {
            h.insert("cache-control", "max-age=60".parse().unwrap());
            h.insert("vary", "Cookie".parse().unwrap());
        }
        r
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    for path in ["/sc", "/ns", "/pv", "/vc"] {
        for round in 0..2 {
            let g = get(sh.listen[0], path, &[]).await;
            assert_eq!(g.status, StatusCode::OK);
            assert_eq!(
                g.header("x-qalqan-cache"),
                Some("bypass"),
                "{path} round {round}"
            );
        }
        assert_eq!(origin.count(path), 2, "{path} reached the origin each time");
    }
    let g = get(sh.listen[0], "/sc", &[]).await;
    assert_eq!(
        g.header("set-cookie"),
        Some("sid=123"),
        "Set-Cookie passes to its own client"
    );
    assert_eq!(
        metric(sh.admin.unwrap(), "qalqan_shield_cache_entries").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_misses_coalesce_into_one_origin_fetch() {
    let origin = Origin::simple(Some("max-age=60")).await;
    origin.delay("/slow", Duration::from_millis(300));
    let sh = shield_apart(&origin, NO_LIMITS).await;
    let addr = sh.listen[0];
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { get(addr, "/slow", &[]).await }))
        .collect();
    let mut bodies = Vec::new();
    let mut misses = 0;
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.status, StatusCode::OK);
        if g.header("x-qalqan-cache") == Some("miss") {
            misses += 1;
        } else {
            assert_eq!(g.header("x-qalqan-cache"), Some("hit"));
        }
        bodies.push(g.body);
    }
    assert_eq!(
        origin.count("/slow"),
        1,
        "one origin fetch for 50 identical misses"
    );
    assert_eq!(origin.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(misses, 1, "only the leader's answer is a miss");
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    assert_eq!(&bodies[0][..], b"hello /slow");
}

/// Route settings for stale tests: 300 ms of freshness from the route, no background refresh,
/// an hour of stale-if-error, and no rate limits.
const SHORT_TTL_SIE: &str = "[[route]]\nname = \"default\"\nrate_per_address = 0\nrate_per_prefix = 0\n\
cache_ttl = \"300ms\"\nstale_while_revalidate = \"0s\"\nstale_if_error = \"1h\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_copy_served_when_origin_is_down() {
    let v = versioned(None).await;
    let sh = shield_apart(&v.origin, SHORT_TTL_SIE).await;
    let admin = sh.admin.unwrap();
    let a = get(sh.listen[0], "/sie", &[]).await;
    assert_eq!(a.header("x-qalqan-cache"), Some("miss"));
    assert_eq!(a.text(), "v1 /sie");
    v.origin.stop();
    wait_refused(v.origin.addr).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // past the 300 ms TTL
    let before = metric(admin, STALE).await;
    let g = get(sh.listen[0], "/sie", &[]).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("x-qalqan-cache"), Some("stale"));
    assert_eq!(g.text(), "v1 /sie");
    assert_eq!(metric(admin, STALE).await - before, 1.0);
    // A page never cached gets the error page.
    let g = get(sh.listen[0], "/never", &[]).await;
    assert_eq!(g.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_copy_served_when_origin_answers_503() {
    let v = versioned(None).await;
    let sh = shield_apart(&v.origin, SHORT_TTL_SIE).await;
    let admin = sh.admin.unwrap();
    assert_eq!(get(sh.listen[0], "/e", &[]).await.text(), "v1 /e");
    v.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = metric(admin, STALE).await;
    let g = get(sh.listen[0], "/e", &[]).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("x-qalqan-cache"), Some("stale"));
    assert_eq!(g.text(), "v1 /e");
    assert_eq!(v.origin.count("/e"), 2, "the origin was asked and failed");
    assert_eq!(metric(admin, STALE).await - before, 1.0);
    // Without a copy, the origin's 503 passes through as it is.
    let g = get(sh.listen[0], "/e-new", &[]).await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(g.text(), "origin broken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    let v = versioned(None).await;
    let sh = shield_apart(
        &v.origin,
        "[[route]]\nname = \"default\"\nrate_per_address = 0\nrate_per_prefix = 0\n\
cache_ttl = \"300ms\"\nstale_while_revalidate = \"30s\"\nstale_if_error = \"0s\"\n",
    )
    .await;
    let addr = sh.listen[0];
    assert_eq!(get(addr, "/swr", &[]).await.text(), "v1 /swr");
    v.version.store(2, Ordering::SeqCst);
    // The refresh takes 800 ms at the origin: every stale hit meanwhile must not wait for it.
    v.origin.delay("/swr", Duration::from_millis(800));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/swr", &[]).await }))
        .collect();
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.header("x-qalqan-cache"), Some("stale"));
        assert_eq!(g.text(), "v1 /swr");
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(600),
        "stale hits waited for the refresh: {took:?}"
    );
    assert!(
        eventually(Duration::from_secs(2), || v.origin.count("/swr") >= 2).await,
        "no background refresh reached the origin"
    );
    // Once the refresh is in, readers get the new copy from the cache.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let g = get(addr, "/swr", &[]).await;
        if g.header("x-qalqan-cache") == Some("hit") {
            assert_eq!(g.text(), "v2 /swr");
            break;
        }
        assert_eq!(g.header("x-qalqan-cache"), Some("stale"));
        assert!(
            Instant::now() < deadline,
            "the refreshed copy never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        v.origin.count("/swr"),
        2,
        "one refresh for all the stale hits"
    );
}

/// Search admission needs three uses within the sketch's 60 s window. The window is aligned
/// to the process clock; three uses that straddled a boundary would see the older ones weighted
/// down, so start well inside a window (the three uses take a few milliseconds).
async fn away_from_admission_window_edge() {
    let into = qalqan_limits::now_ms() % 60_000;
    if into > 59_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into + 20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_is_stored_after_three_uses_and_folds_case() {
    let origin = Origin::simple(None).await;
    // The default route classes, as shipped; only the rate limits are lifted for 127.0.0.1.
    let sh = shield_apart(&origin, NO_LIMITS).await;
    away_from_admission_window_edge().await;
    for i in 1..=3 {
        let g = get(sh.listen[0], "/search?q=number+one", &[]).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.header("x-qalqan-cache"), Some("miss"), "use {i}");
        assert_eq!(origin.count("/search"), i);
    }
    for path in [
        "/search?q=number+one",
        "/search?q=number+one",
        "/search?q=Number%20One",
        "/search?q=NUMBER++one&utm_source=x",
    ] {
        let g = get(sh.listen[0], path, &[]).await;
        assert_eq!(g.header("x-qalqan-cache"), Some("hit"), "{path}");
        assert_eq!(g.text(), "hello /search?q=number+one", "{path}");
    }
    assert_eq!(
        origin.count("/search"),
        3,
        "the origin stopped seeing the query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_off_search_queries_are_never_stored() {
    let origin = Origin::simple(None).await;
    let sh = shield_apart(&origin, NO_LIMITS).await;
    let admin = sh.admin.unwrap();
    let before = metric(admin, "qalqan_shield_cache_entries").await;
    let c = client();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let g = send_via(&c, sh.listen[0], &format!("/search?q=rnd{i}x{x:x}"), &[]).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.header("x-qalqan-cache"), Some("miss"));
    }
    assert_eq!(
        origin.count("/search?q=rnd"),
        200,
        "every one-off query reached the origin"
    );
    let after = metric(admin, "qalqan_shield_cache_entries").await;
    assert_eq!(after - before, 0.0, "one-off queries were stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_stays_within_max_bytes() {
    const CAP: f64 = 256.0 * 1024.0;
    let page = Bytes::from(pattern_bytes(4096, 1));
    let origin = Origin::start(Arc::new(move |_: &Seen| {
        let mut r = Response::new(Full::new(page.clone()));
        r.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        r
    }))
    .await;
    let sh = shield_apart(
        &origin,
        &format!("[cache]\nmax_bytes = \"256KiB\"\nmax_object_bytes = \"64KiB\"\n{NO_LIMITS}"),
    )
    .await;
    let admin = sh.admin.unwrap();
    let c = client();
    for i in 0..500 {
        let g = send_via(&c, sh.listen[0], &format!("/b/{i}"), &[]).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.body.len(), 4096);
        if i % 100 == 99 {
            let bytes = metric(admin, "qalqan_shield_cache_bytes").await;
            assert!(
                bytes <= CAP,
                "after {} pages the cache holds {bytes} bytes",
                i + 1
            );
        }
    }
    let bytes = metric(admin, "qalqan_shield_cache_bytes").await;
    let entries = metric(admin, "qalqan_shield_cache_entries").await;
    assert!(bytes > 0.0 && bytes <= CAP, "cache holds {bytes} bytes");
    assert!(
        entries > 0.0 && entries < 500.0,
        "{entries} entries for 2 MiB of pages"
    );
    assert_eq!(origin.count("/b/"), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_origin_gate_serves_stale_copy_instead_of_503() {
    let v = versioned(None).await;
    let sh = shield_apart(
        &v.origin,
        "[[route]]\nname = \"news\"\npath_prefix = [\"/news\"]\nrate_per_address = 0\nrate_per_prefix = 0\n\
max_in_flight = 1\nqueue = 0\ncache_ttl = \"300ms\"\nstale_while_revalidate = \"0s\"\nstale_if_error = \"1h\"\n\
[[route]]\nname = \"default\"\nrate_per_address = 0\nrate_per_prefix = 0\n",
    )
    .await;
    let addr = sh.listen[0];
    assert_eq!(get(addr, "/news/a", &[]).await.text(), "v1 /news/a");
    tokio::time::sleep(Duration::from_millis(400)).await; // /news/a is now past its TTL
    v.version.store(2, Ordering::SeqCst);
    v.origin.delay("/news/slow", Duration::from_millis(800));
    let slow = tokio::spawn(async move { get(addr, "/news/slow", &[]).await });
    assert!(
        eventually(Duration::from_secs(2), || v
            .origin
            .in_flight
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the slow request never reached the origin"
    );
    let g = get(addr, "/news/a", &[]).await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.text());
    assert_eq!(g.header("x-qalqan-cache"), Some("stale"));
    assert_eq!(g.text(), "v1 /news/a");
    assert_eq!(
        v.origin.count("/news/a"),
        1,
        "the busy origin was not asked"
    );
    // A page without a copy is shed by the shield itself.
    let g = get(addr, "/news/b", &[]).await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(g.header("x-qalqan-decision"), Some("shed"));
    assert_eq!(v.origin.count("/news/b"), 0);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_never_share_a_set_cookie() {
    let n = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start(Arc::new(move |_: &Seen| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"welcome")));
        let sid = n.fetch_add(1, Ordering::SeqCst);
        r.headers_mut()
            .insert("set-cookie", format!("sid={sid}").parse().unwrap());
        r
    }))
    .await;
    origin.delay("/welcome", Duration::from_millis(200));
    let sh = shield_apart(&origin, NO_LIMITS).await;
    let addr = sh.listen[0];
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(addr, "/welcome", &[]).await }))
        .collect();
    let mut cookies = Vec::new();
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.status, StatusCode::OK);
        cookies.push(g.header("set-cookie").expect("own Set-Cookie").to_string());
    }
    cookies.sort();
    cookies.dedup();
    assert_eq!(
        cookies.len(),
        10,
        "a session cookie was handed to two readers"
    );
    assert_eq!(origin.count("/welcome"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_accept_encoding_keeps_encodings_apart() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let gzip = s
            .headers
            .get("accept-encoding")
            .is_some_and(|v| v.to_str().unwrap().contains("gzip"));
        let mut r = Response::new(Full::new(Bytes::from_static(if gzip {
            b"\x1f\x8bGZIPPED"
        } else {
            b"plain text"
        })));
        let h = r.headers_mut();
        h.insert("cache-control", "max-age=60".parse().unwrap());
        h.insert("vary", "Accept-Encoding".parse().unwrap());
        if gzip {
            h.insert("content-encoding", "gzip".parse().unwrap());
        }
        r
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    let z = get(
        sh.listen[0],
        "/enc",
        &[("accept-encoding", "gzip, deflate")],
    )
    .await;
    assert_eq!(z.header("content-encoding"), Some("gzip"));
    let p = get(sh.listen[0], "/enc", &[]).await;
    assert_eq!(
        p.text(),
        "plain text",
        "a client without gzip got the gzip copy"
    );
    assert_eq!(p.header("content-encoding"), None);
    let z2 = get(
        sh.listen[0],
        "/enc",
        &[("accept-encoding", "gzip, deflate")],
    )
    .await;
    assert_eq!(z2.header("x-qalqan-cache"), Some("hit"));
    assert_eq!(z2.body, z.body);
    let p2 = get(sh.listen[0], "/enc", &[]).await;
    assert_eq!(p2.header("x-qalqan-cache"), Some("hit"));
    assert_eq!(p2.text(), "plain text");
    assert_eq!(origin.count("/enc"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_leader_does_not_cancel_the_shared_fetch() {
    let origin = Origin::simple(Some("max-age=60")).await;
    origin.delay("/slow", Duration::from_millis(500));
    let sh = shield_apart(&origin, NO_LIMITS).await;
    let addr = sh.listen[0];
    // The leader asks and hangs up while the origin works.
    let mut leader = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Same Host as the follower's client sends, so both ask for the same cache key.
    let head = format!("GET /slow HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut leader, head.as_bytes())
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(2), || origin.count("/slow") == 1).await);
    let follower = tokio::spawn(async move { get(addr, "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(leader);
    let g = follower.await.unwrap();
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.text(), "hello /slow");
    let g = get(addr, "/slow", &[]).await;
    assert_eq!(g.header("x-qalqan-cache"), Some("hit"));
    assert_eq!(
        origin.count("/slow"),
        1,
        "the follower fetched again after the leader left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_a_failed_fetch_get_the_stale_copy_without_asking_again() {
    let v = versioned(None).await;
    let sh = shield_with_origin(&v.origin.url(), "response_timeout = \"1s\"", SHORT_TTL_SIE).await;
    let addr = sh.listen[0];
    assert_eq!(get(addr, "/hang", &[]).await.text(), "v1 /hang");
    // The origin now hangs past the response timeout; the copy is past its 300 ms TTL.
    v.origin.delay("/hang", Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(addr, "/hang", &[]).await }))
        .collect();
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.header("x-qalqan-cache"), Some("stale"));
        assert_eq!(g.text(), "v1 /hang");
    }
    let took = t0.elapsed();
    assert_eq!(
        v.origin.count("/hang"),
        2,
        "one fill, then one failed fetch for all ten"
    );
    assert!(
        took < Duration::from_millis(1800),
        "stale answers took {took:?} (timeout 1 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_counts_the_origins_age() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"aged")));
        r.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        r.headers_mut().insert("age", "10".parse().unwrap());
        r
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    for want in ["miss", "hit"] {
        let g = get(sh.listen[0], "/aged", &[]).await;
        assert_eq!(g.header("x-qalqan-cache"), Some(want));
        let age: u64 = g.header("age").expect("Age").parse().unwrap();
        assert!(
            (10..60).contains(&age),
            "{want}: Age {age}, the origin said 10"
        );
    }
}

/// A reader that leaves while the origin stalls in the middle of a cacheable body: the fill
/// notices at once and gives the origin `response_timeout` more, instead of holding the key's
/// flight (and the origin's slot) until the origin closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_leaving_a_stalled_origin_body_frees_the_fill() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw origin: a cacheable head and 10 of 100,000 promised bytes, then silence for 30 s.
    let sock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sock.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 100000\r\n\r\n0123456789",
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let shield = shield_with_origin(
        &format!("http://{origin_addr}"),
        "response_timeout = \"1s\"",
        NO_LIMITS,
    )
    .await;
    let admin = shield.admin.unwrap();
    let errors = "qalqan_shield_origin_errors_total";
    let before = metric(admin, errors).await;
    let mut c = tokio::net::TcpStream::connect(shield.listen[0])
        .await
        .unwrap();
    c.write_all(b"GET /stalls HTTP/1.1\r\nHost: news.example\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"0123456789") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
            .await
            .expect("the first bytes arrive")
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    drop(c);
    let t0 = Instant::now();
    let mut freed = false;
    while t0.elapsed() < Duration::from_secs(5) {
        if metric(admin, errors).await > before {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        freed,
        "the fill still waits on the stalled origin {:?} after the reader left",
        t0.elapsed()
    );
}
