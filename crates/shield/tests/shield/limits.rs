//! Per-client limits: rates per address, per prefix and per route class, repeat offenders
//! blocked at the connection level, allow and deny lists, and the origin gate that queues and
//! sheds an expensive route.
//!
//! Rates are estimated over a sliding second and never under-count, so "the first N pass" is
//! exact; how many of the rest are limited depends on timing, so those assertions leave room.

use std::time::{Duration, Instant};

use crate::common::*;

/// Sends `n` GETs for `path` from `src`, each on a fresh connection, and returns the statuses.
async fn statuses_from(
    src: std::net::IpAddr,
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get_from(src, addr, path, &[]).await.status.as_u16());
    }
    out
}

fn count(statuses: &[u16], code: u16) -> usize {
    statuses.iter().filter(|&&s| s == code).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_per_address_limits_one_address_and_spares_another() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(
        &origin,
        "[[route]]\nname = \"default\"\nrate_per_address = 5\nrate_per_prefix = 1000\n",
    )
    .await;
    let addr = shield.listen[0];

    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(get(addr, "/", &[]).await);
    }
    let statuses: Vec<u16> = got.iter().map(|g| g.status.as_u16()).collect();
    assert_eq!(statuses[..5], [200; 5], "the first five pass: {statuses:?}");
    assert!(
        count(&statuses, 429) >= 10,
        "a burst of 20 is limited: {statuses:?}"
    );
    assert_eq!(
        count(&statuses, 200) + count(&statuses, 429),
        20,
        "{statuses:?}"
    );
    for g in got.iter().filter(|g| g.status == 429) {
        assert_eq!(g.header("x-qalqan-decision"), Some("limited"));
        assert_eq!(g.header("retry-after"), Some("1"));
    }

    // Another address of the same /24 has its own budget.
    let other = get_from(lo(2), addr, "/", &[]).await;
    assert_eq!(
        other.status, 200,
        "127.0.0.2 is not limited by 127.0.0.1's burst"
    );
    let limited = metric(
        shield.admin.unwrap(),
        "qalqan_shield_requests_total{decision=\"limited\"}",
    )
    .await;
    assert_eq!(limited as usize, count(&statuses, 429));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_per_prefix_limits_neighbours_as_a_group() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(
        &origin,
        "[client]\nipv4_prefix = 24\n[[route]]\nname = \"default\"\nrate_per_address = 1000\nrate_per_prefix = 10\n",
    )
    .await;
    let addr = shield.listen[0];

    // One request from each of 29 addresses: no address is over its own limit, the /24 is.
    let mut statuses = Vec::new();
    for last in 2..=30 {
        statuses.push(get_from(lo(last), addr, "/", &[]).await.status.as_u16());
    }
    assert_eq!(
        statuses[..10],
        [200; 10],
        "the first ten of the /24 pass: {statuses:?}"
    );
    assert!(
        count(&statuses, 429) >= 15,
        "the /24 is limited as a group: {statuses:?}"
    );

    // A different /24 has its own budget.
    let elsewhere = get_from("127.0.1.5".parse().unwrap(), addr, "/", &[]).await;
    assert_eq!(elsewhere.status, 200, "127.0.1.0/24 is another group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_differ_per_route_class() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(
        &origin,
        "[[route]]\nname = \"search\"\npath_prefix = [\"/search\"]\nrate_per_address = 2\nrate_per_prefix = 1000\n\
         [[route]]\nname = \"default\"\nrate_per_address = 100\nrate_per_prefix = 1000\n",
    )
    .await;
    let addr = shield.listen[0];

    let search = statuses_from(lo(1), addr, "/search?q=x", 10).await;
    assert_eq!(search[..2], [200, 200], "{search:?}");
    assert!(
        count(&search, 429) >= 6,
        "search is limited at 2/s: {search:?}"
    );

    // The same client, right after, is well within the default class's limit.
    let home = statuses_from(lo(1), addr, "/", 10).await;
    assert_eq!(
        home, [200; 10],
        "the default class has its own, higher limit"
    );
    let admin = shield.admin.unwrap();
    assert_eq!(
        metric(
            admin,
            "qalqan_shield_route_requests_total{route=\"search\"}"
        )
        .await,
        10.0
    );
    assert_eq!(
        metric(
            admin,
            "qalqan_shield_route_requests_total{route=\"default\"}"
        )
        .await,
        10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_offender_connections_are_dropped_before_any_response() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(
        &origin,
        "[block]\nafter_limited = 5\nwindow = \"10s\"\nduration = \"1m\"\n\
         [[route]]\nname = \"default\"\nrate_per_address = 2\nrate_per_prefix = 1000\n",
    )
    .await;
    let addr = shield.listen[0];
    let admin = shield.admin.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    // Keep asking until the shield stops answering: 2 pass, then 429s, then the block.
    let mut statuses = Vec::new();
    let mut dropped = None;
    for _ in 0..30 {
        let t = Instant::now();
        let r = raw_from(lo(1), addr, request, Duration::from_secs(3)).await;
        assert!(r.closed, "every exchange ends with a close: {}", r.text());
        match r.status() {
            Some(s) => statuses.push(s),
            None => {
                assert!(r.bytes.is_empty(), "no partial response: {}", r.text());
                dropped = Some(t.elapsed());
                break;
            }
        }
    }
    let dropped = dropped.unwrap_or_else(|| panic!("never blocked; statuses {statuses:?}"));
    assert!(
        dropped < Duration::from_secs(1),
        "closed at once, not after a timeout: {dropped:?}"
    );
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    assert!(statuses[2..].iter().all(|&s| s == 429), "{statuses:?}");
    assert!(
        count(&statuses, 429) > 5,
        "blocked only after more than 5 limited answers: {statuses:?}"
    );

    // Still blocked on the next connection, counted as such.
    let again = raw_from(lo(1), addr, request, Duration::from_secs(3)).await;
    assert!(
        again.closed && again.bytes.is_empty(),
        "still blocked: {}",
        again.text()
    );
    let blocked = metric(
        admin,
        "qalqan_shield_connections_dropped_total{reason=\"blocked\"}",
    )
    .await;
    assert_eq!(blocked, 2.0);
    assert_eq!(metric(admin, "qalqan_shield_blocked_clients").await, 1.0);

    // A neighbour is not punished for the offender.
    let other = get_from(lo(2), addr, "/", &[]).await;
    assert_eq!(other.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(
        &origin,
        r#"
[lists]
deny_cidrs = ["127.0.0.5/32"]
deny_user_agents = ["(?i)badbot"]
allow_cidrs = ["127.0.0.6/32"]
allow_user_agents = ["^GoodCrawler/"]
[[route]]
name = "default"
rate_per_address = 1
rate_per_prefix = 1000
"#,
    )
    .await;
    let addr = shield.listen[0];

    let denied = get_from(lo(5), addr, "/denied-net", &[]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("x-qalqan-decision"), Some("blocked"));
    let bot = get_from(
        lo(7),
        addr,
        "/denied-ua",
        &[("user-agent", "Mozilla/5.0 (BadBot 2.1)")],
    )
    .await;
    assert_eq!(bot.status, 403);
    assert_eq!(bot.header("x-qalqan-decision"), Some("blocked"));
    assert_eq!(
        origin.count("/denied"),
        0,
        "denied requests never reach the origin"
    );

    // The control: an ordinary client is limited at 1/s.
    let plain = statuses_from(lo(8), addr, "/", 4).await;
    assert_eq!(plain[0], 200);
    assert!(count(&plain, 429) >= 2, "the limit is on: {plain:?}");

    // Allowed networks and user agents skip the limit.
    let net = statuses_from(lo(6), addr, "/", 8).await;
    assert_eq!(net, [200; 8], "allow_cidrs skips the rate limit");
    let mut ua = Vec::new();
    for _ in 0..8 {
        let g = get_from(lo(9), addr, "/", &[("user-agent", "GoodCrawler/2.0")]).await;
        ua.push(g.status.as_u16());
    }
    assert_eq!(ua, [200; 8], "allow_user_agents skips the rate limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_route_is_capped_queued_then_shed() {
    let origin = Origin::simple(Some("no-store")).await;
    origin.delay("/search", Duration::from_millis(500));
    let shield = shield_apart(
        &origin,
        r#"
[[route]]
name = "search"
path_prefix = ["/search"]
max_in_flight = 2
# The fixed cap, queue and shed; the adaptive limit under it has tests of its own (origin.rs).
adaptive_concurrency = false
queue = 2
queue_timeout = "2s"
cache_ttl = "0s"
rate_per_address = 1000
rate_per_prefix = 1000
[[route]]
name = "default"
rate_per_address = 1000
rate_per_prefix = 1000
"#,
    )
    .await;
    let addr = shield.listen[0];

    // Distinct queries so that no two requests coalesce into one origin fetch.
    let started = Instant::now();
    let tasks: Vec<_> = (0..12)
        .map(|i| tokio::spawn(async move { get(addr, &format!("/search?q={i}"), &[]).await }))
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        let g = t.await.unwrap();
        match g.status.as_u16() {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert_eq!(g.header("x-qalqan-decision"), Some("shed"));
                assert!(
                    g.header("retry-after").is_some(),
                    "a shed answer says when to retry"
                );
            }
            s => panic!("unexpected status {s}: {}", g.text()),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "nobody waited past the queue timeout"
    );
    assert!(
        origin
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            <= 2,
        "the origin never had more than max_in_flight search requests"
    );
    assert!(ok >= 4, "two in flight and two queued are served, got {ok}");
    assert!(shed >= 1, "the rest are shed, got {shed}");
    assert_eq!(ok + shed, 12);
    assert_eq!(
        origin.count("/search"),
        ok,
        "shed requests never reached the origin"
    );
    let metric_shed = metric(
        shield.admin.unwrap(),
        "qalqan_shield_requests_total{decision=\"shed\"}",
    )
    .await;
    assert_eq!(metric_shed as usize, shed);
}

/// A 429 page's own fields (kept out of its header map and written from a copy encoded once) are
/// on the wire exactly once, whichever writer sends it: the shield's own HTTP/1.1 writer, or
/// hyper (here for HTTP/1.0, which the own reader hands over), and for HEAD too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_has_each_of_its_fields_once_from_either_writer() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(
        &origin,
        "[[route]]\nname = \"default\"\nrate_per_address = 1\nrate_per_prefix = 1000\n\
         [block]\nenabled = false\n",
    )
    .await;
    let addr = shield.listen[0];
    let wait = Duration::from_secs(3);
    // Spend the budget of one request per second.
    let _ = get(addr, "/", &[]).await;
    for (request, head_only) in [
        (
            &b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"[..],
            false,
        ),
        (&b"GET / HTTP/1.0\r\nhost: a\r\n\r\n"[..], false),
        (
            &b"HEAD / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"[..],
            true,
        ),
        (&b"HEAD / HTTP/1.0\r\nhost: a\r\n\r\n"[..], true),
    ] {
        let what = String::from_utf8_lossy(request)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        let w = parse_wire(&raw(addr, request, wait).await, head_only);
        assert_eq!(w.status, 429, "{what}");
        for (name, value) in [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "no-store"),
            ("x-qalqan-decision", "limited"),
            ("retry-after", "1"),
        ] {
            assert_eq!(w.header_all(name), [value], "{what}: {name} once");
        }
        let len: usize = w
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{what}: a content-length"));
        assert!(len > 100, "{what}: the page's length, {len}");
        if head_only {
            assert!(w.trailing.is_empty(), "{what}: no body after a HEAD answer");
        } else {
            assert_eq!(w.body.len(), len, "{what}");
            assert!(String::from_utf8_lossy(&w.body).contains("429"), "{what}");
        }
    }
}
