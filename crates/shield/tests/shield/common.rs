//! Shared test fixtures: a real origin server, a running shield, and clients.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A handler decides the origin's answer for a request it has seen.
pub type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// A real HTTP/1.1 origin on 127.0.0.1:0 that records every request and counts those in flight.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    /// Delay before answering, per path prefix.
    pub delays: Arc<Mutex<HashMap<String, Duration>>>,
    stop: watch::Sender<bool>,
}

impl Origin {
    /// Starts an origin that answers with `handler`.
    pub async fn start(handler: Handler) -> Origin {
        let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let delays: Arc<Mutex<HashMap<String, Duration>>> = Arc::default();
        let (stop, mut stop_rx) = watch::channel(false);
        let (s2, f2, m2, d2) = (
            seen.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
            delays.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = sock.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                let (seen, inf, maxf, delays, handler) = (
                    s2.clone(),
                    f2.clone(),
                    m2.clone(),
                    d2.clone(),
                    handler.clone(),
                );
                let mut stop_conn = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, inf, maxf, delays, handler) = (
                            seen.clone(),
                            inf.clone(),
                            maxf.clone(),
                            delays.clone(),
                            handler.clone(),
                        );
                        async move {
                            let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                            maxf.fetch_max(now, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method,
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().unwrap().push(s.clone());
                            let delay = delays
                                .lock()
                                .unwrap()
                                .iter()
                                .find(|(p, _)| s.uri.starts_with(p.as_str()))
                                .map(|(_, d)| *d);
                            if let Some(d) = delay {
                                tokio::time::sleep(d).await;
                            }
                            let resp = handler(&s);
                            inf.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        Origin {
            addr,
            seen,
            in_flight,
            max_in_flight,
            delays,
            stop,
        }
    }

    /// An origin that answers `200 hello <path>` with the given Cache-Control (if any).
    pub async fn simple(cache_control: Option<&'static str>) -> Origin {
        Origin::start(Arc::new(move |s: &Seen| {
            let mut r = Response::new(Full::new(Bytes::from(format!("hello {}", s.uri))));
            if let Some(cc) = cache_control {
                r.headers_mut().insert("cache-control", cc.parse().unwrap());
            }
            r
        }))
        .await
    }

    /// Requests seen so far whose URI starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri.starts_with(prefix))
            .count()
    }

    /// The last request seen.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("origin saw no request")
    }

    /// Makes requests whose path starts with `prefix` wait `d` before the answer.
    pub fn delay(&self, prefix: &str, d: Duration) {
        self.delays.lock().unwrap().insert(prefix.to_string(), d);
    }

    /// Stops accepting and closes open connections (the origin is "down").
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A shield config as TOML: listener and admin on port 0, origin set, plus `extra` TOML.
pub fn config_toml(origin: &Origin, extra: &str) -> String {
    format!(
        "[origin]\nurl = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[access_log]\npath = \"\"\n{extra}\n",
        origin.url()
    )
}

/// Starts a shield from TOML text.
pub async fn shield(toml: &str) -> qalqan_shield::Running {
    let cfg = qalqan_shield::RawConfig::from_toml(toml).expect("test config must be valid");
    qalqan_shield::start(cfg).await.expect("shield starts")
}

/// Starts a shield in front of `origin` with `extra` TOML.
pub async fn shield_for(origin: &Origin, extra: &str) -> qalqan_shield::Running {
    shield(&config_toml(origin, extra)).await
}

/// A pooled HTTP/1.1 client.
pub fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

/// A collected response.
pub struct Got {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// Reads a whole response.
    pub async fn collect(resp: Response<Incoming>) -> Got {
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `path` on `addr` with extra headers, through a fresh connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    send(addr, http::Method::GET, path, headers, Bytes::new()).await
}

/// Any request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Got {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client()
        .request(b.body(Full::new(body)).unwrap())
        .await
        .expect("request");
    Got::collect(resp).await
}

/// Writes raw bytes on a new connection (optionally from a chosen local address) and reads
/// until the peer closes or `timeout` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    out
}

/// Connects from a specific loopback source address such as 127.0.0.7.
pub async fn connect_from(src: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = match src {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(src, 0))?;
    sock.connect(addr).await
}

/// Reads a metric's value from the admin listener (first sample whose line starts with `name`).
pub async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let g = get(admin, "/metrics", &[]).await;
    g.text()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// `127.0.0.last`: a loopback source address (Linux routes all of 127.0.0.0/8 to `lo`).
pub fn lo(last: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
}

/// A client HTTP/1.1 connection from a chosen source address that stays open for several
/// requests, so a test can prove that one TCP connection keeps working.
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
    host: String,
}

impl KeepAlive {
    /// Connects from `src` to `addr` and does the HTTP/1.1 handshake.
    pub async fn open(src: std::net::IpAddr, addr: SocketAddr) -> KeepAlive {
        let stream = connect_from(src, addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        KeepAlive {
            sender,
            conn,
            host: addr.to_string(),
        }
    }

    /// GET `path` on this connection. Panics if the connection is gone.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Got {
        self.sender.ready().await.expect("connection still open");
        let mut b = Request::builder().uri(path).header("host", &self.host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .sender
            .send_request(b.body(Full::new(Bytes::new())).unwrap())
            .await
            .expect("request on the kept-alive connection");
        Got::collect(resp).await
    }

    /// Whether the peer has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed() || self.conn.is_finished()
    }

    /// Waits up to `timeout` for the peer to close the connection; `true` if it did.
    pub async fn closed_within(self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.conn).await.is_ok()
    }
}

/// GET `path` over a fresh connection from source address `src`.
pub async fn get_from(
    src: std::net::IpAddr,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    KeepAlive::open(src, addr).await.get(path, headers).await
}

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawReply {
    /// Bytes read before the close (or the timeout).
    pub bytes: Vec<u8>,
    /// The peer closed (EOF or reset) before the timeout.
    pub closed: bool,
}

impl RawReply {
    /// The status code of the first response line, if any.
    pub fn status(&self) -> Option<u16> {
        let line = self.bytes.split(|&b| b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?;
        let mut parts = line.split(' ');
        parts.next().filter(|v| v.starts_with("HTTP/1."))?;
        parts.next()?.parse().ok()
    }

    /// The reply as text, for assertion messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `bytes` on a connected stream, then reads until the peer closes or `timeout` passes.
/// A reset counts as a close; write errors are ignored (the peer may close first).
pub async fn raw_on(mut s: TcpStream, bytes: &[u8], timeout: Duration) -> RawReply {
    if !bytes.is_empty() {
        let _ = s.write_all(bytes).await;
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    RawReply {
        bytes: out,
        closed: read.is_ok(),
    }
}

/// [`raw_on`] over a new connection from source address `src`. A connection the peer resets
/// before `connect` returns (a shield dropping it at accept can be that quick) is a close with
/// no bytes.
pub async fn raw_from(
    src: std::net::IpAddr,
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> RawReply {
    match connect_from(src, addr).await {
        Ok(s) => raw_on(s, bytes, timeout).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => RawReply {
            bytes: Vec::new(),
            closed: true,
        },
        Err(e) => panic!("connect from {src} to {addr}: {e}"),
    }
}

/// Like [`config_toml`] but with the admin listener on 127.0.0.2:0. The configuration check
/// takes two port-0 addresses for the same address and refuses `config_toml`'s listener and
/// admin pair (see `reload::port_zero_listener_and_admin_do_not_clash`); once that is fixed this
/// and [`shield_apart`] can give way to [`shield_for`].
pub fn config_toml_apart(origin: &Origin, extra: &str) -> String {
    format!(
        "[origin]\nurl = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.2:0\"\n[access_log]\npath = \"\"\n{extra}\n",
        origin.url()
    )
}

/// Starts a shield from [`config_toml_apart`].
pub async fn shield_apart(origin: &Origin, extra: &str) -> qalqan_shield::Running {
    shield(&config_toml_apart(origin, extra)).await
}

// ---------------------------------------------------------------------------------------------
// Helpers for the fidelity and cache modules.

/// A shield config like [`config_toml_apart`], for an origin at `origin_url`, with
/// `origin_keys` added to `[origin]` (a TOML table cannot be opened twice, so timeouts go here).
pub fn config_toml_origin(origin_url: &str, origin_keys: &str, extra: &str) -> String {
    format!(
        "[origin]\nurl = \"{origin_url}\"\n{origin_keys}\n[[listen]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.2:0\"\n[access_log]\npath = \"\"\n{extra}\n"
    )
}

/// Starts a shield for an origin given by URL, with extra `[origin]` keys and `extra` TOML.
pub async fn shield_with_origin(
    origin_url: &str,
    origin_keys: &str,
    extra: &str,
) -> qalqan_shield::Running {
    shield(&config_toml_origin(origin_url, origin_keys, extra)).await
}

/// Polls `cond` every 5 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (up to 2 s) until nothing accepts connections at `addr`, e.g. after [`Origin::stop`].
pub async fn wait_refused(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An HTTP/1.1 response parsed off the wire by hand, so that tests see exactly what was sent.
#[derive(Debug)]
pub struct WireResponse {
    pub status: u16,
    /// Header names lowercased, values as sent, in order.
    pub headers: Vec<(String, String)>,
    /// The body after de-chunking (or as sent with Content-Length, or up to the close).
    pub body: Vec<u8>,
    /// Bytes after the body (there must be none on a closed connection).
    pub trailing: Vec<u8>,
}

impl WireResponse {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Splits `bytes` at the end of an HTTP head; `None` when the head is incomplete.
pub fn split_head(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&bytes[..end], &bytes[end + 4..]))
}

/// Parses one response from raw bytes. `head_only` is for responses to HEAD (no body expected:
/// everything after the head is `trailing`).
pub fn parse_wire(bytes: &[u8], head_only: bool) -> WireResponse {
    let (head, rest) = split_head(bytes).unwrap_or_else(|| {
        panic!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(bytes)
        )
    });
    let head = std::str::from_utf8(head).expect("response head is text");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut w = WireResponse {
        status,
        headers,
        body: Vec::new(),
        trailing: Vec::new(),
    };
    let no_body = head_only || status == 304 || status == 204 || (100..200).contains(&status);
    if no_body {
        w.trailing = rest.to_vec();
    } else if w
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut i = 0;
        loop {
            let line_end = rest[i..]
                .windows(2)
                .position(|x| x == b"\r\n")
                .map(|p| i + p)
                .expect("chunk size line");
            let size_text = std::str::from_utf8(&rest[i..line_end]).expect("chunk size is text");
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size is hex");
            i = line_end + 2;
            if size == 0 {
                // No trailers are expected: the last chunk is followed by CRLF.
                i += 2;
                break;
            }
            w.body.extend_from_slice(&rest[i..i + size]);
            i += size + 2;
        }
        w.trailing = rest[i.min(rest.len())..].to_vec();
    } else if let Some(len) = w.header("content-length") {
        let len: usize = len.parse().expect("numeric content-length");
        w.body = rest[..len.min(rest.len())].to_vec();
        w.trailing = rest[len.min(rest.len())..].to_vec();
    } else {
        w.body = rest.to_vec();
    }
    w
}

/// Reads from a raw socket until the end of an HTTP head; returns the head as text and any
/// bytes read past it. Panics if the peer closes first.
pub async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((head, rest)) = split_head(&buf) {
            return (String::from_utf8_lossy(head).into_owned(), rest.to_vec());
        }
        let n = s.read(&mut chunk).await.expect("read a head");
        assert!(n > 0, "peer closed before the end of the head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Starts a raw TCP "origin" on 127.0.0.1:0 that hands each accepted connection to `serve`.
/// For origins that must control the bytes on the wire (streaming, upgrades, chunking).
pub async fn raw_origin<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = sock.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Any request through a given (pooled) client.
pub async fn send_via(
    c: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut b = Request::builder().uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request");
    Got::collect(resp).await
}

/// `n` bytes of a fixed, non-repeating-looking pattern (so a shifted or dropped block shows).
pub fn pattern_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Polls an async condition every 50 ms until it holds or `within` passes.
pub async fn eventually_async<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Puts the shield under attack for an hour through its admin listener.
pub async fn force_under_attack(admin: SocketAddr) {
    let set = send(
        admin,
        http::Method::POST,
        "/mode?set=under-attack&for=1h",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
}
