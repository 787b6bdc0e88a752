//! Pass-through fidelity: what the origin sees of the client's request and what the client sees
//! of the origin's answer. The shield may add forwarding headers and drop hop-by-hop ones; it must
//! change nothing else, must not hold back a streaming body, and must keep upgrades, TLS and
//! HTTP/2 working.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(3);

/// Header values the origin saw under `name`.
fn seen_all<'a>(s: &'a Seen, name: &str) -> Vec<&'a str> {
    s.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_host_kept_hop_by_hop_dropped_forwarding_set() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
        let h = r.headers_mut();
        h.insert("x-custom-resp", "from-origin".parse().unwrap());
        h.append("set-cookie", "a=1; Path=/".parse().unwrap());
        h.append("set-cookie", "b=2; Path=/; HttpOnly".parse().unwrap());
        // Hop-by-hop on the way back: named in Connection, and Keep-Alive.
        h.insert("connection", "x-resp-secret".parse().unwrap());
        h.insert("x-resp-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        r
    }))
    .await;
    let sh = shield_apart(&origin, "").await;

    // A raw request, so every header is exactly as written (no client library adds or drops any).
    let req = "GET /fidelity?x=1&y=%20z HTTP/1.1\r\n\
        Host: news.example\r\n\
        Connection: close, x-secret\r\n\
        X-Secret: 1\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        X-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-Proto: https\r\n\
        X-Real-IP: 6.6.6.6\r\n\
        X-Custom-Req: abc\r\n\
        Via: 1.1 edge\r\n\
        Via: 1.0 cdn\r\n\
        \r\n";
    let out = raw(sh.listen[0], req.as_bytes(), WAIT).await;
    let resp = parse_wire(&out, false);
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&out));

    // What the origin saw.
    let s = origin.last();
    assert_eq!(s.uri, "/fidelity?x=1&y=%20z", "target passes unchanged");
    assert_eq!(seen_all(&s, "host"), ["news.example"]);
    for gone in ["x-secret", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            !s.headers.contains_key(gone),
            "{gone} reached the origin: {:?}",
            s.headers
        );
    }
    for c in seen_all(&s, "connection") {
        assert!(
            !c.contains("x-secret"),
            "client's Connection reached the origin: {c}"
        );
    }
    assert_eq!(
        seen_all(&s, "x-forwarded-for"),
        ["127.0.0.1"],
        "spoofed XFF replaced"
    );
    assert_eq!(
        seen_all(&s, "x-forwarded-proto"),
        ["http"],
        "spoofed XFP replaced"
    );
    assert_eq!(seen_all(&s, "x-real-ip"), ["127.0.0.1"]);
    let via = seen_all(&s, "via").join(", ");
    assert_eq!(
        via, "1.1 edge, 1.0 cdn, 1.1 qalqan",
        "every earlier Via hop kept, in order, then the shield"
    );
    assert_eq!(seen_all(&s, "x-custom-req"), ["abc"]);

    // What the client got.
    assert!(
        resp.header("via").is_some_and(|v| v.contains("qalqan")),
        "{:?}",
        resp.headers
    );
    assert_eq!(resp.header("x-custom-resp"), Some("from-origin"));
    assert_eq!(
        resp.header_all("set-cookie"),
        ["a=1; Path=/", "b=2; Path=/; HttpOnly"],
        "every Set-Cookie, in order"
    );
    assert_eq!(
        resp.header("x-resp-secret"),
        None,
        "Connection-named response header dropped"
    );
    assert_eq!(resp.header("keep-alive"), None);
    for c in resp.header_all("connection") {
        assert!(
            !c.contains("x-resp-secret"),
            "origin's Connection passed: {c}"
        );
    }
    assert_eq!(resp.body, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_reaches_origin_in_origin_form() {
    let origin = Origin::simple(None).await;
    let sh = shield_apart(&origin, "").await;
    // HTTP/1.1 absolute-form: the Host header must agree with the authority; the origin gets
    // origin-form and the same Host.
    let req =
        "GET http://abs.example/p?q=1 HTTP/1.1\r\nHost: abs.example\r\nConnection: close\r\n\r\n";
    let resp = parse_wire(&raw(sh.listen[0], req.as_bytes(), WAIT).await, false);
    assert_eq!(resp.status, 200);
    let s = origin.last();
    assert_eq!(s.uri, "/p?q=1");
    assert_eq!(seen_all(&s, "host"), ["abs.example"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_gets_exactly_one_host() {
    let origin = Origin::simple(None).await;
    let sh = shield_apart(&origin, "").await;
    for (fields, why) in [
        // Two Host lines must not both reach the origin (one part of a chain could route by
        // one, another by the other); the origin gets the first.
        (
            "Host: a.example\r\nHost: b.example\r\nConnection: close",
            "repeated Host",
        ),
        // Fields named in Connection are dropped on the way, but not Host: without it the
        // origin would serve its default site (and that copy could be cached under this key).
        (
            "Host: a.example\r\nConnection: host, close",
            "Connection naming Host",
        ),
    ] {
        let req = format!("GET /h HTTP/1.1\r\n{fields}\r\n\r\n");
        let resp = parse_wire(&raw(sh.listen[0], req.as_bytes(), WAIT).await, false);
        assert_eq!(resp.status, 200, "{why}");
        assert_eq!(seen_all(&origin.last(), "host"), ["a.example"], "{why}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_with_content_length_arrives_byte_identical() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        Response::new(Full::new(Bytes::from(format!("got {}", s.body.len()))))
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    let body = Bytes::from(pattern_bytes(300_000, 7));
    let g = send(
        sh.listen[0],
        Method::POST,
        "/upload",
        &[("content-type", "application/octet-stream")],
        body.clone(),
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.text(), "got 300000");
    let s = origin.last();
    assert_eq!(s.method, Method::POST);
    assert_eq!(seen_all(&s, "content-length"), ["300000"]);
    assert_eq!(seen_all(&s, "content-type"), ["application/octet-stream"]);
    assert!(s.body == body, "POST body changed on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_arrives_whole() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        Response::new(Full::new(Bytes::from(format!("got {}", s.body.len()))))
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    let parts: [Vec<u8>; 3] = [b"hello".to_vec(), pattern_bytes(40_000, 3), b"!".to_vec()];
    let mut req =
        b"POST /chunked HTTP/1.1\r\nHost: news.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for p in &parts {
        req.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        req.extend_from_slice(p);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let resp = parse_wire(&raw(sh.listen[0], &req, WAIT).await, false);
    assert_eq!(resp.status, 200);
    let want: Vec<u8> = parts.concat();
    assert_eq!(resp.body, format!("got {}", want.len()).as_bytes());
    let s = origin.last();
    assert_eq!(s.method, Method::POST);
    assert!(
        s.body[..] == want[..],
        "chunked body changed on the way ({} bytes)",
        s.body.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_arrive_byte_identical_and_are_not_stored() {
    const BIG: usize = 3 << 20;
    let big = Bytes::from(pattern_bytes(BIG, 11));
    let b2 = big.clone();
    let origin = Origin::start(Arc::new(move |s: &Seen| {
        let mut r = Response::new(Full::new(b2.clone()));
        if s.uri.starts_with("/big-cc") {
            r.headers_mut()
                .insert("cache-control", "max-age=60".parse().unwrap());
        }
        r
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    for path in ["/big", "/big-cc", "/big-cc"] {
        let g = get(sh.listen[0], path, &[]).await;
        assert_eq!(g.status, StatusCode::OK, "{path}");
        assert_eq!(g.body.len(), BIG, "{path}");
        assert!(g.body == big, "{path}: body changed on the way");
        assert_eq!(g.header("x-qalqan-cache"), Some("bypass"), "{path}");
    }
    // Larger than cache.max_object_bytes (1 MiB): never stored, so both reached the origin.
    assert_eq!(origin.count("/big-cc"), 2);
}

/// A raw origin that answers every request with `body` in 64 KiB chunks, no Content-Length,
/// and closes; counts the requests.
async fn chunked_origin(
    body: Bytes,
    cache_control: &'static str,
    hits: Arc<AtomicUsize>,
) -> std::net::SocketAddr {
    raw_origin(move |mut s: TcpStream| {
        let (body, hits) = (body.clone(), hits.clone());
        async move {
            let _ = read_head(&mut s).await;
            hits.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nCache-Control: {cache_control}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes()).await;
            for c in body.chunks(64 * 1024) {
                let _ = s.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await;
                let _ = s.write_all(c).await;
                let _ = s.write_all(b"\r\n").await;
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
            let _ = s.shutdown().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_chunked_cacheable_response_past_object_limit_arrives_whole() {
    // No Content-Length: the shield starts reading it for the cache and only learns past 1 MiB
    // that it is too large; what it read so far and the rest must reach the client in order.
    const BIG: usize = 3 << 20;
    let big = Bytes::from(pattern_bytes(BIG, 5));
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = chunked_origin(big.clone(), "max-age=60", hits.clone()).await;
    let sh = shield_with_origin(&format!("http://{addr}"), "", "").await;
    for round in 0..2 {
        let g = get(sh.listen[0], "/big-chunked", &[]).await;
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.body.len(), BIG, "round {round}");
        assert!(g.body == big, "round {round}: body changed on the way");
        // The response streams from the first byte, before the shield knows it is too large
        // to store: the first is a miss; then the key is marked "hit-for-pass" and bypasses.
        let want = if round == 0 { "miss" } else { "bypass" };
        assert_eq!(g.header("x-qalqan-cache"), Some(want), "round {round}");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "too large to store: each request reached the origin"
    );
}

/// A raw origin that sends `first`, waits `pause`, records when it sends the rest, then sends it.
async fn pausing_origin(
    cache_control: Option<&'static str>,
    pause: Duration,
    rest_sent_at: Arc<Mutex<Option<Instant>>>,
) -> std::net::SocketAddr {
    raw_origin(move |mut s: TcpStream| {
        let rest_sent_at = rest_sent_at.clone();
        async move {
            let _ = read_head(&mut s).await;
            let cc = cache_control.map_or(String::new(), |c| format!("Cache-Control: {c}\r\n"));
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n{cc}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(b"b\r\nfirst-chunk\r\n").await;
            let _ = s.flush().await;
            tokio::time::sleep(pause).await;
            *rest_sent_at.lock().unwrap() = Some(Instant::now());
            let _ = s.write_all(b"4\r\nrest\r\n0\r\n\r\n").await;
            let _ = s.shutdown().await;
        }
    })
    .await
}

/// GETs `path` and returns (when the first body bytes arrived, the whole body).
async fn first_bytes_then_rest(
    addr: std::net::SocketAddr,
    path: &str,
) -> (Instant, Vec<u8>, http::HeaderMap) {
    let req = Request::builder()
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.expect("request");
    let (parts, mut body) = resp.into_parts();
    let mut first_at = None;
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            if !data.is_empty() && first_at.is_none() {
                first_at = Some(Instant::now());
            }
            all.extend_from_slice(&data);
        }
    }
    (first_at.expect("some body bytes"), all, parts.headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_response_streams_as_it_arrives() {
    let rest_sent_at = Arc::new(Mutex::new(None));
    let addr = pausing_origin(
        Some("no-store"),
        Duration::from_millis(500),
        rest_sent_at.clone(),
    )
    .await;
    let sh = shield_with_origin(&format!("http://{addr}"), "", "").await;
    let (first_at, body, _) = first_bytes_then_rest(sh.listen[0], "/stream").await;
    assert_eq!(body, b"first-chunkrest");
    let rest_at = rest_sent_at.lock().unwrap().expect("origin sent the rest");
    assert!(
        first_at < rest_at,
        "the first chunk reached the client only {:?} after the origin sent the rest",
        first_at - rest_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacheable_response_streams_as_it_arrives() {
    // No cache headers: the default route's micro-cache TTL makes it storable.
    let rest_sent_at = Arc::new(Mutex::new(None));
    let addr = pausing_origin(None, Duration::from_millis(500), rest_sent_at.clone()).await;
    let sh = shield_with_origin(&format!("http://{addr}"), "", "").await;
    let (first_at, body, _) = first_bytes_then_rest(sh.listen[0], "/live").await;
    assert_eq!(body, b"first-chunkrest");
    let rest_at = rest_sent_at.lock().unwrap().expect("origin sent the rest");
    assert!(
        first_at < rest_at,
        "the first chunk reached the client only {:?} after the origin sent the rest",
        first_at - rest_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_passes_origin_headers_without_body() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"twelve bytes")));
        r.headers_mut().insert("x-custom", "yes".parse().unwrap());
        r.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        r
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    let out = raw(
        sh.listen[0],
        b"HEAD /head HTTP/1.1\r\nHost: news.example\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    let r = parse_wire(&out, true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("12"));
    assert!(
        r.trailing.is_empty(),
        "HEAD answered with a body: {:?}",
        r.trailing
    );
    assert_eq!(origin.last().method, Method::HEAD);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_after_cached_get_is_a_hit_without_body() {
    let origin = Origin::simple(Some("max-age=60")).await;
    let sh = shield_apart(&origin, "").await;
    let g = get(sh.listen[0], "/head-c", &[("host", "news.example")]).await;
    assert_eq!(g.header("x-qalqan-cache"), Some("miss"));
    let out = raw(
        sh.listen[0],
        b"HEAD /head-c HTTP/1.1\r\nHost: news.example\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    let r = parse_wire(&out, true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-qalqan-cache"), Some("hit"));
    assert_eq!(
        r.header("content-length"),
        Some(g.body.len().to_string().as_str())
    );
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    assert!(
        r.trailing.is_empty(),
        "HEAD answered with a body: {:?}",
        r.trailing
    );
    assert_eq!(origin.count("/head-c"), 1, "HEAD answered from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_answered_304_from_cache() {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"tagged page")));
        r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
        r.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        r
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    // A conditional request on a cold cache: the fill asks the origin unconditionally (so the
    // copy can be stored), and the client still gets its 304.
    let g = get(sh.listen[0], "/etag", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(g.status, StatusCode::NOT_MODIFIED);
    assert_eq!(g.header("x-qalqan-cache"), Some("miss"));
    assert!(!origin.last().headers.contains_key("if-none-match"));
    let g = get(sh.listen[0], "/etag", &[]).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("etag"), Some("\"v1\""));
    assert_eq!(g.text(), "tagged page");
    let g = get(
        sh.listen[0],
        "/etag",
        &[("if-none-match", "W/\"v0\", \"v1\"")],
    )
    .await;
    assert_eq!(g.status, StatusCode::NOT_MODIFIED);
    assert_eq!(g.header("x-qalqan-cache"), Some("hit"));
    assert_eq!(g.header("etag"), Some("\"v1\""));
    assert!(g.body.is_empty());
    let g = get(sh.listen[0], "/etag", &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(g.status, StatusCode::OK, "a different tag gets the page");
    assert_eq!(g.text(), "tagged page");
    assert_eq!(origin.count("/etag"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_modified_since_answered_304_from_cache() {
    const LM: &str = "Tue, 15 Nov 1994 08:12:31 GMT";
    let origin = Origin::start(Arc::new(|_: &Seen| {
        let mut r = Response::new(Full::new(Bytes::from_static(b"dated page")));
        r.headers_mut().insert("last-modified", LM.parse().unwrap());
        r.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        r
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    let g = get(sh.listen[0], "/lm", &[]).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("x-qalqan-cache"), Some("miss"));
    let g = get(sh.listen[0], "/lm", &[("if-modified-since", LM)]).await;
    assert_eq!(g.status, StatusCode::NOT_MODIFIED);
    assert_eq!(g.header("x-qalqan-cache"), Some("hit"));
    assert_eq!(g.header("last-modified"), Some(LM));
    assert!(g.body.is_empty());
    let g = get(
        sh.listen[0],
        "/lm",
        &[("if-modified-since", "Mon, 14 Nov 1994 08:12:31 GMT")],
    )
    .await;
    assert_eq!(g.status, StatusCode::OK, "modified since an earlier date");
    assert_eq!(g.text(), "dated page");
    assert_eq!(origin.count("/lm"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_304_passes_through() {
    // A logged-in reader's conditional request goes to the origin as it is, and the origin's
    // own 304 for an uncacheable page reaches the client.
    let origin = Origin::start(Arc::new(|s: &Seen| {
        let matches = s
            .headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"p1\"");
        let mut r = Response::new(Full::new(if matches {
            Bytes::new()
        } else {
            Bytes::from_static(b"private page")
        }));
        if matches {
            *r.status_mut() = StatusCode::NOT_MODIFIED;
        }
        r.headers_mut().insert("etag", "\"p1\"".parse().unwrap());
        r.headers_mut()
            .insert("cache-control", "no-store".parse().unwrap());
        r
    }))
    .await;
    let sh = shield_apart(&origin, "").await;
    let g = get(
        sh.listen[0],
        "/account",
        &[("cookie", "session=1"), ("if-none-match", "\"p1\"")],
    )
    .await;
    assert_eq!(g.status, StatusCode::NOT_MODIFIED);
    assert_eq!(g.header("etag"), Some("\"p1\""));
    assert_eq!(g.header("x-qalqan-cache"), Some("bypass"));
    assert!(g.body.is_empty());
    let s = origin.last();
    assert_eq!(seen_all(&s, "if-none-match"), ["\"p1\""]);
    assert_eq!(seen_all(&s, "cookie"), ["session=1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_then_bytes_both_ways() {
    let seen_head = Arc::new(Mutex::new(String::new()));
    let sh_head = seen_head.clone();
    let addr = raw_origin(move |mut s: TcpStream| {
        let seen_head = sh_head.clone();
        async move {
            let (head, _) = read_head(&mut s).await;
            let upgrade = head.to_ascii_lowercase().contains("\r\nupgrade: websocket");
            *seen_head.lock().unwrap() = head;
            if !upgrade {
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            }
            let _ = s
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                )
                .await;
            // Echo until the peer closes.
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await;
    let sh = shield_with_origin(&format!("http://{addr}"), "", "").await;

    let mut c = TcpStream::connect(sh.listen[0]).await.unwrap();
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: news.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, early) = tokio::time::timeout(WAIT, read_head(&mut c))
        .await
        .expect("101 in time");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert!(early.is_empty());

    let origin_head = seen_head.lock().unwrap().to_ascii_lowercase();
    assert!(
        origin_head.contains("\r\nconnection: upgrade"),
        "{origin_head}"
    );
    assert!(
        origin_head.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{origin_head}"
    );
    assert!(
        origin_head.contains("\r\nx-forwarded-for: 127.0.0.1"),
        "{origin_head}"
    );

    for msg in [
        &b"ping-1"[..],
        &b"second message, longer"[..],
        &pattern_bytes(20_000, 9)[..],
    ] {
        c.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, c.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert!(back == msg, "echo differs");
    }
}

// --- TLS and HTTP/2 -----------------------------------------------------------------------

/// A self-signed certificate for `localhost`, written to a fresh temp dir.
struct TestCert {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    fn new() -> TestCert {
        static N: AtomicUsize = AtomicUsize::new(0);
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "qalqan-shield-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        TestCert {
            dir,
            cert,
            key,
            der: ck.cert.der().clone(),
        }
    }

    fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A shield whose only public listener speaks TLS with `cert`.
async fn tls_shield(origin: &Origin, cert: &TestCert) -> qalqan_shield::Running {
    shield(&format!(
        "[origin]\nurl = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\
[admin]\naddress = \"127.0.0.2:0\"\n[access_log]\npath = \"\"\n",
        origin.url(),
        cert.cert.display(),
        cert.key.display()
    ))
    .await
}

async fn tls_connect(
    cert: &TestCert,
    addr: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    cert.connector(alpn)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the shield")
}

/// Over TLS the shield's own HTTP/1.1 writer must flush: encrypted records left in the TLS
/// layer when the socket was full would never leave, and a page would stop short until the
/// idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_large_page_to_a_slow_reader_arrives_whole() {
    // Larger than the socket buffers loopback TCP grows to, so the shield's writes block and
    // the last ones go out while the socket is full.
    const SIZE: usize = 16 * 1024 * 1024;
    let origin = Origin::start(Arc::new(|_: &Seen| {
        let mut r = Response::new(Full::new(Bytes::from(vec![b'a'; SIZE])));
        r.headers_mut()
            .insert("cache-control", "no-store".parse().unwrap());
        r
    }))
    .await;
    let cert = TestCert::new();
    let sh = tls_shield(&origin, &cert).await;
    let mut tls = tls_connect(&cert, sh.listen[0], &[b"http/1.1"]).await;
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: secure.example\r\n\r\n")
        .await
        .unwrap();
    // Let the shield fill the socket and block before anything is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut head = Vec::new();
    let mut body = 0usize;
    let mut in_body = false;
    let whole = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            let n = match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if in_body {
                body += n;
            } else {
                head.extend_from_slice(&chunk[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    body = head.len() - end - 4;
                    head.truncate(end + 4);
                    in_body = true;
                }
            }
            if body >= SIZE {
                return true;
            }
            // A slow reader: the socket stays full while the shield writes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(whole, Ok(true), "{body} of {SIZE} body bytes arrived");
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_h2_client_reaches_origin_as_http11() {
    let origin = Origin::start(Arc::new(|s: &Seen| {
        Response::new(Full::new(Bytes::from(format!(
            "{} {} {}",
            s.method,
            s.uri,
            s.body.len()
        ))))
    }))
    .await;
    let cert = TestCert::new();
    let sh = tls_shield(&origin, &cert).await;
    let tls = tls_connect(&cert, sh.listen[0], &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN chose h2"
    );

    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .uri("https://news.example/h2page?a=1")
        .header("x-custom-req", "h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()
            .get("via")
            .is_some_and(|v| v.to_str().unwrap().contains("qalqan"))
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"GET /h2page?a=1 0");
    let s = origin.last();
    assert_eq!(s.version, http::Version::HTTP_11, "origin speaks HTTP/1.1");
    assert_eq!(
        seen_all(&s, "host"),
        ["news.example"],
        "Host from :authority"
    );
    assert_eq!(seen_all(&s, "x-forwarded-proto"), ["https"]);
    assert_eq!(seen_all(&s, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen_all(&s, "x-custom-req"), ["h2"]);
    assert!(seen_all(&s, "via").join(",").contains("2 qalqan"));

    // A body over HTTP/2 arrives whole on the same connection.
    let payload = Bytes::from(pattern_bytes(100_000, 21));
    let req = Request::builder()
        .method(Method::POST)
        .uri("https://news.example/h2post")
        .body(Full::new(payload.clone()))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 POST response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"POST /h2post 100000");
    assert!(origin.last().body == payload, "h2 body changed on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_http11_only_client_works() {
    let origin = Origin::simple(None).await;
    let cert = TestCert::new();
    let sh = tls_shield(&origin, &cert).await;
    for alpn in [&[&b"http/1.1"[..]][..], &[][..]] {
        let tls = tls_connect(&cert, sh.listen[0], alpn).await;
        let want = if alpn.is_empty() {
            None
        } else {
            Some(&b"http/1.1"[..])
        };
        assert_eq!(tls.get_ref().1.alpn_protocol(), want);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .uri("/tls11")
            .header("host", "secure.example")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.version(), http::Version::HTTP_11);
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello /tls11");
    }
    // Both requests have the same key: the first filled the cache, the second was a hit.
    assert_eq!(origin.count("/tls11"), 1);
    let s = origin.last();
    assert_eq!(seen_all(&s, "host"), ["secure.example"]);
    assert_eq!(seen_all(&s, "x-forwarded-proto"), ["https"]);
}

// --- Origin failures ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_without_stale_copy_gives_502_page() {
    let origin = Origin::simple(None).await;
    let sh = shield_apart(&origin, "").await;
    origin.stop();
    wait_refused(origin.addr).await;
    let before = metric(
        sh.admin.unwrap(),
        "qalqan_shield_requests_total{decision=\"error\"}",
    )
    .await;
    let g = get(sh.listen[0], "/down", &[]).await;
    assert_eq!(g.status, StatusCode::BAD_GATEWAY);
    assert_eq!(g.header("x-qalqan-decision"), Some("error"));
    assert_eq!(g.header("cache-control"), Some("no-store"));
    assert!(
        g.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(g.text().contains("502"), "{}", g.text());
    assert!(
        g.body.len() < 2048,
        "the shield's page is small: {} bytes",
        g.body.len()
    );
    let after = metric(
        sh.admin.unwrap(),
        "qalqan_shield_requests_total{decision=\"error\"}",
    )
    .await;
    assert_eq!(after - before, 1.0);
    // A POST (no cache key at all) fails the same way.
    let g = send(
        sh.listen[0],
        Method::POST,
        "/down",
        &[],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!(g.status, StatusCode::BAD_GATEWAY);
    assert_eq!(g.header("x-qalqan-decision"), Some("error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_response_timeout_gives_504() {
    let origin = Origin::simple(None).await;
    origin.delay("/slow", Duration::from_secs(2));
    let sh = shield_with_origin(&origin.url(), "response_timeout = \"500ms\"", "").await;
    let t0 = Instant::now();
    let g = get(sh.listen[0], "/slow", &[]).await;
    let took = t0.elapsed();
    assert_eq!(g.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(g.header("x-qalqan-decision"), Some("error"));
    assert!(g.text().contains("504"));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "answered after {took:?}, the timeout is 500ms"
    );
    assert_eq!(origin.count("/slow"), 1);
}

/// The fields the shield adds (written after the client's on the own client's path, inserted on
/// hyper's) reach the origin once each, the same on both paths: a plain GET takes the own path, a
/// POST with a body goes through hyper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_are_added_once_on_either_origin_path() {
    let origin = Origin::simple(None).await;
    let sh = shield_apart(&origin, "").await;
    for req in [
        &b"GET /plain HTTP/1.1\r\nHost: news.example\r\nConnection: close\r\n\r\n"[..],
        &b"POST /form HTTP/1.1\r\nHost: news.example\r\nContent-Length: 3\r\nConnection: close\r\n\r\na=1"[..],
        // Spoofed ones from an untrusted peer are replaced, not repeated.
        &b"GET /spoof HTTP/1.1\r\nHost: news.example\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"[..],
    ] {
        let what = String::from_utf8_lossy(req).lines().next().unwrap_or("").to_string();
        let resp = parse_wire(&raw(sh.listen[0], req, WAIT).await, false);
        assert_eq!(resp.status, 200, "{what}");
        let s = origin.last();
        assert_eq!(seen_all(&s, "x-forwarded-for"), ["127.0.0.1"], "{what}");
        assert_eq!(seen_all(&s, "x-forwarded-proto"), ["http"], "{what}");
        assert_eq!(seen_all(&s, "x-real-ip"), ["127.0.0.1"], "{what}");
        assert_eq!(seen_all(&s, "via"), ["1.1 qalqan"], "{what}");
        assert_eq!(seen_all(&s, "host"), ["news.example"], "{what}");
    }
}

/// An origin that sends a response head and drops the connection before any of the body: the
/// reader gets the shield's 502 page (nothing of the origin's response had been sent yet), not
/// a connection closed without an answer. Then the connection closes, as after any failed body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_lost_before_its_first_byte_is_answered_502() {
    let addr = raw_origin(|mut s: TcpStream| async move {
        let _ = read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 100\r\n\r\n")
            .await;
        let _ = s.shutdown().await;
    })
    .await;
    let sh = shield_with_origin(&format!("http://{addr}"), "", "").await;
    let out = raw(
        sh.listen[0],
        b"GET /gone HTTP/1.1\r\nHost: news.example\r\n\r\n",
        WAIT,
    )
    .await;
    let w = parse_wire(&out, false);
    assert_eq!(w.status, 502, "{}", String::from_utf8_lossy(&out));
    assert_eq!(w.header("x-qalqan-decision"), Some("error"));
    assert_eq!(w.header("connection"), Some("close"));
    assert!(String::from_utf8_lossy(&w.body).contains("502"));
    assert!(w.trailing.is_empty(), "nothing after the page");
}

/// An origin's response head on its way to the reader, through either writer (the shield's own
/// HTTP/1.1 one, which copies a plain head's fields from the bytes received, and hyper's, here
/// for an HTTP/1.0 client), on the first request of a key (a cache fill, which reads the
/// fields) and on later ones (passed on): end-to-end fields arrive once each, in order, in
/// their received case or not; hop-by-hop ones never; `Date`, `Content-Length`, `Via` and
/// `x-qalqan-cache` once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_s_head_reaches_the_reader_the_same_through_either_writer() {
    let addr = raw_origin(|mut s: TcpStream| async move {
        let (head, _) = read_head(&mut s).await;
        // More fields than a head passed on as received keeps (32): these go through a map.
        let many = {
            let mut h = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: no-store\r\n".to_vec();
            for i in 0..40 {
                h.extend_from_slice(format!("X-N{i}: {i}\r\n").as_bytes());
            }
            h.extend_from_slice(b"\r\nhello");
            h
        };
        let reply: &[u8] = if head.contains(" /many ") {
            &many
        } else if head.contains(" /te ") {
            b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\nX-Custom: One\r\n\
              Set-Cookie: a=1\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\
              Proxy-Authenticate: Basic\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n\
              Cache-Control: no-store\r\nset-cookie: b=2\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
        } else if head.contains(" /cl ") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: no-store\r\nX-Custom: Two\r\n\r\nhello"
        } else if head.contains(" /mark ") {
            // Another shield's mark is replaced by this one's.
            b"HTTP/1.1 200 OK\r\nX-Qalqan-Cache: hit\r\nContent-Length: 5\r\nCache-Control: no-store\r\n\r\nhello"
        } else {
            b"HTTP/1.1 200 OK\r\nVia: 1.1 varnish\r\nContent-Length: 5\r\nCache-Control: no-store\r\n\r\nhello"
        };
        let _ = s.write_all(reply).await;
        let _ = s.shutdown().await;
    })
    .await;
    let sh = shield_with_origin(&format!("http://{addr}"), "", "").await;
    for path in ["/te", "/cl", "/mark", "/via", "/many"] {
        for (round, version) in ["1.1", "1.1", "1.0", "1.0"].into_iter().enumerate() {
            let what = format!("{path} HTTP/{version}, request {}", round + 1);
            let req = format!(
                "GET {path} HTTP/{version}\r\nHost: news.example\r\nConnection: close\r\n\r\n"
            );
            let out = raw(sh.listen[0], req.as_bytes(), WAIT).await;
            let w = parse_wire(&out, false);
            assert_eq!(w.status, 200, "{what}: {}", String::from_utf8_lossy(&out));
            assert_eq!(w.body, b"hello", "{what}");
            for gone in ["keep-alive", "proxy-authenticate", "trailer", "upgrade"] {
                assert_eq!(w.header(gone), None, "{what}: {gone} passed on");
            }
            assert_eq!(w.header_all("x-qalqan-cache"), ["bypass"], "{what}");
            assert_eq!(w.header_all("date").len(), 1, "{what}: {:?}", w.headers);
            let te = w.header_all("transfer-encoding");
            match path {
                "/te" => {
                    assert_eq!(w.header_all("x-custom"), ["One"], "{what}");
                    assert_eq!(w.header_all("set-cookie"), ["a=1", "b=2"], "{what}");
                    assert_eq!(
                        w.header_all("date"),
                        ["Tue, 01 Jan 2030 00:00:00 GMT"],
                        "{what}: the origin's date is kept"
                    );
                    // The origin's chunking ends at the shield: an HTTP/1.1 reader gets the
                    // shield's own, an HTTP/1.0 one none.
                    let want: &[&str] = if version == "1.1" { &["chunked"] } else { &[] };
                    assert_eq!(te, want, "{what}");
                    assert_eq!(w.header_all("via"), ["1.1 qalqan"], "{what}");
                }
                "/cl" | "/mark" => {
                    let custom: &[&str] = if path == "/cl" { &["Two"] } else { &[] };
                    assert_eq!(w.header_all("x-custom"), custom, "{what}");
                    assert_eq!(w.header_all("content-length"), ["5"], "{what}");
                    assert!(te.is_empty(), "{what}");
                    assert_eq!(w.header_all("via"), ["1.1 qalqan"], "{what}");
                }
                "/many" => {
                    for i in 0..40 {
                        let n = format!("x-n{i}");
                        assert_eq!(w.header_all(&n), [i.to_string()], "{what}: {n}");
                    }
                    assert_eq!(w.header_all("via"), ["1.1 qalqan"], "{what}");
                }
                _ => {
                    assert_eq!(w.header_all("content-length"), ["5"], "{what}");
                    assert_eq!(
                        w.header_all("via").join(", "),
                        "1.1 varnish, 1.1 qalqan",
                        "{what}: the origin's Via, then this hop"
                    );
                }
            }
        }
    }
}
