//! Who the client is and what it may hold open: trusted proxies and X-Forwarded-For, the PROXY
//! protocol, slow and capped connections, malformed and oversized requests, idle connections and
//! IPv6 clients grouped by /64.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// No cache on the default route and a per-address limit, so every admitted request reaches
/// the origin and the limit is the only thing that refuses.
fn limited_default(rate_per_address: u32) -> String {
    format!(
        "[[route]]\nname = \"default\"\nrate_per_address = {rate_per_address}\nrate_per_prefix = 1000\ncache_ttl = \"0s\"\n"
    )
}

fn header(seen: &Seen, name: &str) -> String {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The request the origin saw for exactly `uri`.
fn seen_at(origin: &Origin, uri: &str) -> Seen {
    origin
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.uri == uri)
        .cloned()
        .unwrap_or_else(|| panic!("origin never saw {uri}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_forwarded_clients_are_limited_one_by_one() {
    let origin = Origin::simple(Some("no-store")).await;
    let extra = format!(
        "[client]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{}",
        limited_default(3)
    );
    let shield = shield_apart(&origin, &extra).await;
    let addr = shield.listen[0];

    let mut first = Vec::new();
    for i in 0..6 {
        let g = get(
            addr,
            &format!("/a/{i}"),
            &[("x-forwarded-for", "203.0.113.7")],
        )
        .await;
        first.push(g.status.as_u16());
    }
    assert_eq!(first[..3], [200; 3], "{first:?}");
    assert!(
        first[3..].contains(&429),
        "203.0.113.7 is limited: {first:?}"
    );

    // Another forwarded client behind the same proxy has its own budget.
    let other = get(addr, "/b", &[("x-forwarded-for", "198.51.100.9")]).await;
    assert_eq!(
        other.status, 200,
        "198.51.100.9 is not limited by 203.0.113.7"
    );

    // The chain is read from the right: a made-up entry on the left does not change who it is.
    let spoofed = get(addr, "/c", &[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]).await;
    assert_eq!(
        spoofed.status, 429,
        "still 203.0.113.7, whatever it wrote on the left"
    );

    let seen = seen_at(&origin, "/a/0");
    assert_eq!(header(&seen, "x-forwarded-for"), "203.0.113.7, 127.0.0.1");
    assert_eq!(header(&seen, "x-real-ip"), "203.0.113.7");
    let seen = seen_at(&origin, "/b");
    assert_eq!(header(&seen, "x-forwarded-for"), "198.51.100.9, 127.0.0.1");

    // The proxy itself, with no header, is the client.
    let own = get(addr, "/d", &[]).await;
    assert_eq!(own.status, 200);
    assert_eq!(
        header(&seen_at(&origin, "/d"), "x-forwarded-for"),
        "127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_from_untrusted_peer_is_ignored() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = shield_apart(&origin, &limited_default(3)).await;
    let addr = shield.listen[0];

    let mut statuses = Vec::new();
    for i in 0..10 {
        let xff = format!("10.0.0.{i}");
        let g = get(addr, &format!("/s/{i}"), &[("x-forwarded-for", &xff)]).await;
        statuses.push(g.status.as_u16());
    }
    assert_eq!(statuses[..3], [200; 3], "{statuses:?}");
    assert!(
        statuses[3..].iter().filter(|&&s| s == 429).count() >= 5,
        "rotating X-Forwarded-For does not escape the per-address limit: {statuses:?}"
    );
    for i in 0..3 {
        let seen = seen_at(&origin, &format!("/s/{i}"));
        assert_eq!(
            header(&seen, "x-forwarded-for"),
            "127.0.0.1",
            "the chain starts at the shield"
        );
        assert_eq!(header(&seen, "x-real-ip"), "127.0.0.1");
    }
    let untrusted = metric(
        shield.admin.unwrap(),
        "qalqan_shield_untrusted_forwarded_total",
    )
    .await;
    assert_eq!(untrusted, 10.0);
}

/// A shield whose only listener expects the PROXY protocol from 127.0.0.1.
async fn proxy_protocol_shield(origin: &Origin) -> qalqan_shield::Running {
    shield(&format!(
        "[origin]\nurl = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\
         [admin]\naddress = \"127.0.0.2:0\"\n[access_log]\npath = \"\"\n\
         [client]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{}",
        origin.url(),
        limited_default(2)
    ))
    .await
}

fn http_get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: news.example\r\nConnection: close\r\n\r\n")
}

/// A PROXY v2 header for TCP over IPv4, with `tlv` appended to the address block.
fn proxy_v2_tcp4(src: SocketAddr, dst: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
        panic!("IPv4 only");
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, command PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&(12 + tlv.len() as u16).to_be_bytes());
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h.extend_from_slice(tlv);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_names_the_client() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = proxy_protocol_shield(&origin).await;
    let addr = shield.listen[0];
    let wait = Duration::from_secs(3);

    let v1 =
        |src: &str, path: &str| format!("PROXY TCP4 {src} 127.0.0.1 5555 80\r\n{}", http_get(path));
    let r = raw_from(lo(1), addr, v1("203.0.113.7", "/pp1").as_bytes(), wait).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    let seen = seen_at(&origin, "/pp1");
    assert_eq!(header(&seen, "x-forwarded-for"), "203.0.113.7");
    assert_eq!(header(&seen, "x-real-ip"), "203.0.113.7");

    // The named source is the client for the limits too (2/s here), not the load balancer.
    let r = raw_from(lo(1), addr, v1("203.0.113.7", "/pp2").as_bytes(), wait).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    let r = raw_from(lo(1), addr, v1("203.0.113.7", "/pp3").as_bytes(), wait).await;
    assert_eq!(r.status(), Some(429), "{}", r.text());
    let r = raw_from(lo(1), addr, v1("203.0.113.8", "/pp4").as_bytes(), wait).await;
    assert_eq!(
        r.status(),
        Some(200),
        "another source behind the same balancer: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_names_the_client() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = proxy_protocol_shield(&origin).await;
    let addr = shield.listen[0];
    let src: SocketAddr = "198.51.100.23:40000".parse().unwrap();
    let dst: SocketAddr = "192.0.2.1:443".parse().unwrap();

    let mut bytes = proxy_v2_tcp4(src, dst, &[]);
    bytes.extend_from_slice(http_get("/v2").as_bytes());
    let r = raw_from(lo(1), addr, &bytes, Duration::from_secs(3)).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    let seen = seen_at(&origin, "/v2");
    assert_eq!(header(&seen, "x-forwarded-for"), "198.51.100.23");
    assert_eq!(header(&seen, "x-real-ip"), "198.51.100.23");

    // TLVs (here PP2_TYPE_AUTHORITY "news.kz") are skipped, not read as HTTP.
    let tlv = [&[0x02, 0x00, 0x07][..], b"news.kz"].concat();
    let mut bytes = proxy_v2_tcp4("198.51.100.24:40001".parse().unwrap(), dst, &tlv);
    bytes.extend_from_slice(http_get("/v2-tlv").as_bytes());
    let r = raw_from(lo(1), addr, &bytes, Duration::from_secs(3)).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(
        header(&seen_at(&origin, "/v2-tlv"), "x-forwarded-for"),
        "198.51.100.24"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_refuses_untrusted_peers_and_garbage() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = proxy_protocol_shield(&origin).await;
    let addr = shield.listen[0];
    let admin = shield.admin.unwrap();
    let wait = Duration::from_secs(3);
    let header_v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n{}",
        http_get("/x")
    );

    // 127.0.0.2 is not a trusted proxy: it may not name a client, so it is not served at all.
    let t = Instant::now();
    let r = raw_from(lo(2), addr, header_v1.as_bytes(), wait).await;
    assert!(
        r.closed && r.bytes.is_empty(),
        "untrusted PROXY sender dropped: {}",
        r.text()
    );
    assert!(t.elapsed() < Duration::from_secs(1));

    // From the trusted peer: garbage, and plain HTTP without the header, are both refused.
    let r = raw_from(lo(1), addr, b"HELLO THERE\r\n\r\n", wait).await;
    assert!(
        r.closed && r.bytes.is_empty(),
        "garbage header: {}",
        r.text()
    );
    let r = raw_from(lo(1), addr, http_get("/y").as_bytes(), wait).await;
    assert!(
        r.closed && r.bytes.is_empty(),
        "missing header: {}",
        r.text()
    );
    let r = raw_from(lo(1), addr, b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n", wait).await;
    assert!(
        r.closed && r.bytes.is_empty(),
        "bad address in v1: {}",
        r.text()
    );
    assert_eq!(origin.count("/"), 0, "nothing reached the origin");
    let drops = metric(
        admin,
        "qalqan_shield_connections_dropped_total{reason=\"handshake\"}",
    )
    .await;
    assert_eq!(drops, 4.0);

    // The listener still serves a well-formed one.
    let r = raw_from(lo(1), addr, header_v1.as_bytes(), wait).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
}

/// A slow client on `s`: part of a request head, then nothing (or, with `trickle`, one byte
/// every 300 ms). Returns `Some` when the peer closes, `None` if it still holds on after 6 s.
async fn slow_client(mut s: tokio::net::TcpStream, trickle: bool) -> Option<()> {
    let head = b"GET /slow HTTP/1.1\r\nHost: news.example\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa";
    let mut sent = if trickle { 1 } else { 40 };
    if s.write_all(&head[..sent]).await.is_err() {
        return Some(());
    }
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::sleep(Duration::from_secs(6));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(()),
                Ok(_) => {} // a 408 or similar before the close is fine
            },
            _ = tokio::time::sleep(Duration::from_millis(300)), if trickle && sent < head.len() => {
                if s.write_all(&head[sent..sent + 1]).await.is_err() {
                    return Some(());
                }
                sent += 1;
            }
            _ = &mut deadline => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_time_out_while_readers_are_served() {
    const SLOW: usize = 1000;
    let origin = Origin::simple(None).await;
    let shield = shield_apart(
        &origin,
        "[client]\nheader_read_timeout = \"1s\"\nmax_connections_per_address = 50\n\
         [[route]]\nname = \"default\"\nrate_per_address = 1000\nrate_per_prefix = 100000\n",
    )
    .await;
    let addr = shield.listen[0];
    let admin = shield.admin.unwrap();

    // An ordinary reader keeps asking from 127.0.0.1 the whole time, and must be served
    // promptly every time.
    let reader = tokio::spawn(async move {
        let started = Instant::now();
        let mut waits = Vec::new();
        while started.elapsed() < Duration::from_millis(2500) {
            let t = Instant::now();
            let g = tokio::time::timeout(Duration::from_secs(2), get(addr, "/", &[]))
                .await
                .expect("a reader's request finishes");
            assert_eq!(g.status, 200);
            waits.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        waits
    });

    // 1000 connections from 39 addresses (at most 26 each, under the cap of 50). Nine in ten
    // send part of a head and then nothing; one in ten trickles a byte every 300 ms. Each task
    // reports how long after its connect the shield closed it. They are opened a hundred at a
    // time, waiting for the shield to accept each hundred, so the kernel's accept queue (1024)
    // never overflows: an overflow drops SYNs, and the reader's retransmitted SYN would wait a
    // second for reasons that are not the shield's.
    let open_now = || {
        shield
            .shared
            .metrics
            .connections_open
            .load(Ordering::Relaxed)
    };
    let closed = Arc::new(AtomicUsize::new(0));
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let s = connect_from(lo(2 + (i % 39) as u8), addr)
            .await
            .expect("connect");
        let t = Instant::now();
        let done = closed.clone();
        slow.push(tokio::spawn(async move {
            let r = slow_client(s, i % 10 == 0).await;
            done.fetch_add(1, Ordering::Relaxed);
            r.map(|_| t.elapsed())
        }));
        if (i + 1) % 100 == 0 {
            // Accepted so far: open now, plus those already closed again.
            let t = Instant::now();
            while open_now() + (closed.load(Ordering::Relaxed) as i64) < (i + 1) as i64 - 5 {
                assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "the shield stopped accepting"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    let waits = reader.await.unwrap();
    assert!(waits.len() >= 10, "only {} reader requests", waits.len());
    let longest = waits.iter().max().unwrap();
    assert!(
        *longest < Duration::from_secs(1),
        "a reader waited {longest:?}"
    );

    let mut times = Vec::with_capacity(SLOW);
    for t in slow {
        times.push(
            t.await
                .unwrap()
                .expect("the shield closed every slow connection"),
        );
    }
    // Closed by the header timeout, not refused at accept (nor by the per-address cap).
    let earliest = times.iter().min().unwrap();
    let latest = times.iter().max().unwrap();
    assert!(
        *earliest >= Duration::from_millis(900),
        "held until the header timeout: {earliest:?}"
    );
    assert!(
        *latest < Duration::from_secs(3),
        "closed soon after the header timeout: {latest:?}"
    );
    assert_eq!(origin.count("/slow"), 0);

    // Every slot is given back.
    let t = Instant::now();
    while metric(admin, "qalqan_shield_connections_open").await > 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "connections still counted open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(&origin, "[client]\nmax_connections_per_address = 50\n").await;
    let addr = shield.listen[0];
    let admin = shield.admin.unwrap();

    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(connect_from(lo(50), addr).await.expect("connect"));
    }
    let t = Instant::now();
    let r = raw_from(lo(50), addr, &[], Duration::from_secs(3)).await;
    assert!(
        r.closed && r.bytes.is_empty(),
        "the 51st is closed: {}",
        r.text()
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "closed at once: {:?}",
        t.elapsed()
    );
    assert_eq!(
        metric(
            admin,
            "qalqan_shield_connections_dropped_total{reason=\"per_address\"}"
        )
        .await,
        1.0
    );
    assert_eq!(metric(admin, "qalqan_shield_connections_open").await, 50.0);

    // Another address is not affected.
    assert_eq!(get_from(lo(51), addr, "/", &[]).await.status, 200);

    // The held connections still work, and closing them gives the slots back.
    let first = held.pop().unwrap();
    let r = raw_on(first, http_get("/held").as_bytes(), Duration::from_secs(3)).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    drop(held);
    let t = Instant::now();
    loop {
        let r = raw_from(
            lo(50),
            addr,
            http_get("/again").as_bytes(),
            Duration::from_secs(3),
        )
        .await;
        if r.status() == Some(200) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "slots never released: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_refused_without_harm() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = shield_apart(
        &origin,
        "[client]\nmax_header_bytes = \"8KiB\"\nmax_body_bytes = \"1KiB\"\n",
    )
    .await;
    let addr = shield.listen[0];
    let wait = Duration::from_secs(3);
    let still_serving = |label: &'static str| async move {
        let g = get(addr, "/ok", &[]).await;
        assert_eq!(g.status, 200, "the shield still serves after {label}");
    };

    let r = raw_from(lo(1), addr, b"\x01\x02 nonsense \x7f\r\n\r\n", wait).await;
    assert_eq!(r.status(), Some(400), "garbage request line: {}", r.text());
    still_serving("garbage").await;

    let mut big = b"GET /big-head HTTP/1.1\r\nHost: news.example\r\n".to_vec();
    for i in 0..20 {
        big.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let r = raw_from(lo(1), addr, &big, wait).await;
    assert_eq!(r.status(), Some(431), "20 KiB of headers: {}", r.text());
    assert_eq!(origin.count("/big-head"), 0);
    still_serving("a huge head").await;

    let mut post =
        b"POST /upload HTTP/1.1\r\nHost: news.example\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"
            .to_vec();
    post.extend_from_slice(&[b'x'; 5000]);
    let r = raw_from(lo(1), addr, &post, wait).await;
    assert_eq!(
        r.status(),
        Some(413),
        "Content-Length over the limit: {}",
        r.text()
    );
    assert_eq!(origin.count("/upload"), 0, "the origin saw nothing");
    still_serving("a large Content-Length").await;

    let mut chunked =
        b"POST /chunked HTTP/1.1\r\nHost: news.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"3e8\r\n");
        chunked.extend_from_slice(&[b'y'; 1000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw_from(lo(1), addr, &chunked, wait).await;
    assert_eq!(
        r.status(),
        Some(413),
        "chunked body over the limit: {}",
        r.text()
    );
    for s in origin
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.uri == "/chunked")
    {
        assert!(
            s.body.len() <= 1024,
            "the origin got {} body bytes",
            s.body.len()
        );
    }
    still_serving("a large chunked body").await;

    // A body within the limit goes through whole.
    let ok = send(
        addr,
        http::Method::POST,
        "/small",
        &[],
        Bytes::from(vec![b'z'; 1000]),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(seen_at(&origin, "/small").body.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(&origin, "[client]\nidle_timeout = \"1s\"\n").await;
    let addr = shield.listen[0];

    let mut c = KeepAlive::open(lo(1), addr).await;
    assert_eq!(c.get("/", &[]).await.status, 200);
    let t = Instant::now();
    assert!(!c.is_closed());
    assert!(
        c.closed_within(Duration::from_secs(4)).await,
        "an idle connection is closed"
    );
    let after = t.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "not before the idle timeout: {after:?}"
    );
    assert!(
        after < Duration::from_millis(2500),
        "soon after the idle timeout: {after:?}"
    );
    assert_eq!(
        metric(
            shield.admin.unwrap(),
            "qalqan_shield_connections_dropped_total{reason=\"timeout\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_limited_by_slash_64() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("SKIP ipv6_clients_are_limited_by_slash_64: cannot bind [::1] on this machine");
        return;
    }
    let origin = Origin::simple(Some("no-store")).await;
    // [::1] is the only IPv6 address a test can connect from, so the addresses of one /64 come
    // through a trusted proxy on [::1].
    let shield = shield(&format!(
        "[origin]\nurl = \"{}\"\n[[listen]]\naddress = \"[::1]:0\"\n[admin]\naddress = \"127.0.0.2:0\"\n\
         [access_log]\npath = \"\"\n[client]\ntrusted_proxies = [\"::1/128\"]\nipv6_prefix = 64\n\
         [[route]]\nname = \"default\"\nrate_per_address = 1000\nrate_per_prefix = 3\ncache_ttl = \"0s\"\n",
        origin.url()
    ))
    .await;
    let addr = shield.listen[0];
    assert!(addr.is_ipv6());

    let own = get(addr, "/own", &[]).await;
    assert_eq!(own.status, 200, "served over IPv6");
    assert_eq!(header(&seen_at(&origin, "/own"), "x-forwarded-for"), "::1");

    let mut statuses = Vec::new();
    for host in ["a", "b", "c", "d", "e"] {
        let xff = format!("2001:db8:1:2::{host}");
        statuses.push(
            get(addr, &format!("/v6/{host}"), &[("x-forwarded-for", &xff)])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses[..3], [200; 3], "{statuses:?}");
    assert_eq!(
        statuses[3..],
        [429, 429],
        "five addresses of one /64 share its limit: {statuses:?}"
    );
    let elsewhere = get(addr, "/v6/other", &[("x-forwarded-for", "2001:db8:1:3::a")]).await;
    assert_eq!(elsewhere.status, 200, "the next /64 is another subscriber");
    assert_eq!(
        header(&seen_at(&origin, "/v6/a"), "x-real-ip"),
        "2001:db8:1:2::a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limit_under_8_kib_is_enforced() {
    let origin = Origin::simple(None).await;
    let shield = shield_apart(&origin, "[client]\nmax_header_bytes = \"2KiB\"\n").await;
    let mut head = b"GET /head HTTP/1.1\r\nHost: news.example\r\n".to_vec();
    for i in 0..5 {
        head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let r = raw_from(lo(1), shield.listen[0], &head, Duration::from_secs(3)).await;
    assert_eq!(
        r.status(),
        Some(431),
        "a 5 KiB head over a 2 KiB limit: {}",
        r.text()
    );
    assert_eq!(origin.count("/head"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_does_not_cut_a_request_waiting_on_the_origin() {
    let origin = Origin::simple(None).await;
    origin.delay("/slow", Duration::from_millis(1500));
    // response_timeout stays at its default of 30 s.
    let shield = shield_apart(&origin, "[client]\nidle_timeout = \"1s\"\n").await;
    let r = raw_from(
        lo(1),
        shield.listen[0],
        http_get("/slow-page").as_bytes(),
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(
        r.status(),
        Some(200),
        "the origin answered in 1.5 s: {:?}",
        r.text()
    );
}
