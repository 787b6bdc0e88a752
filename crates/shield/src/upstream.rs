//! Keep-alive connections to the origin: two small pools of HTTP/1.1 connections, reused
//! last-in first-out, one per way of speaking to the origin.
//!
//! Most requests the shield forwards are bodiless GETs and HEADs. For them (no upgrade, a method
//! that is idempotent under RFC 9110 9.2.2, a request body already at its end) the shield talks
//! HTTP/1.1 itself, inside the request's own task: it writes the request head to a pooled
//! `TcpStream` in one write, parses the response head with `httparse` into places in the bytes
//! received (a header map is built only for a head that needs one, or for a reader of its
//! fields; see `rawhead`), and the response body reads the socket directly when it is polled. hyper's client, used before for everything, costs
//! a separate connection task per connection, an mpsc channel for the request, a oneshot for the
//! response, a channel for the body and the task wake-ups between them; on the cache-miss path
//! that was most of the gap to nginx. Everything else (requests with a body, upgrades, other
//! methods) still goes through `hyper::client::conn::http1`, with a pool of its own: those are
//! rare, and hyper handles request bodies and upgrades well.
//!
//! Why not `hyper_util`'s pooled client: on the cache-miss path it was the largest single cost
//! after hyper's own parsing (a hash map keyed by scheme and authority hashed with SipHash on
//! every checkout and return, a spawned task per response to wait for the connection to become
//! ready again, and large boxed futures moved around), about 8,500 instructions a request under
//! callgrind. The shield has one origin, so each pool is a vector behind one shared mutex; a
//! reload to another origin empties both.
//!
//! A connection goes back to its pool when its response body has been read exactly to the end
//! (the response head alone is not enough: HTTP/1.1 cannot start the next request before), the
//! response was HTTP/1.1 without `Connection: close`, and nothing beyond the response arrived. A
//! body dropped half-way takes its connection with it. Connections idle longer than
//! `idle_timeout` are dropped at checkout, and so are connections the origin has closed (for own
//! connections a one-byte `try_read`, which costs no system call while tokio knows the socket is
//! not readable; bytes found there also disqualify the connection). Retries: on the own path, a request on a reused connection that could not be
//! written, or whose connection ended before any byte of a response, is retried once on a new
//! connection (safe: only idempotent bodiless requests take that path). On the hyper path, a
//! request that a reused connection could not even send is retried once; one that was sent is
//! never retried, since it may not be idempotent. Upgrades (WebSocket) get a connection of their
//! own, which never returns to a pool.
//!
//! On the own path interim responses (100 Continue, 103 Early Hints) are skipped, a 101 is an
//! error, and chunked trailers are read and discarded. The origin is not trusted to be
//! well-behaved: the response head is limited to 64 KiB and 100 header fields, chunk-size lines
//! to 1 KiB and trailers to 16 KiB, and body frames handed out to at most 64 KiB. Memory is bounded by `max_idle` idle connections per pool plus the ones in
//! use, which the routes' gates and the listener's connection cap bound.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::body::{Body, Origin};
use crate::h1::{deadline_in, head_may_end, push_field};
use crate::rawhead::{Field, Kind, MAX_FIELDS, RawHead, lower_eq, map_of};

/// Largest response head (status line and header fields) accepted from the origin.
const MAX_HEAD: usize = 64 * 1024;
// Places in a head are 16-bit (see `rawhead::Field`).
const _: () = assert!(MAX_HEAD <= 1 << 16);
/// Most header fields accepted in a response head.
const MAX_HEADERS: usize = 100;
/// Most interim (1xx) responses accepted before the final one.
const MAX_INTERIM: usize = 16;
/// Largest body frame handed out; larger reads are split.
const MAX_FRAME: usize = 64 * 1024;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 1024;
/// Largest trailer section of a chunked body (discarded).
const MAX_TRAILERS: usize = 16 * 1024;
/// Read buffer of a new connection.
const READ_BUF: usize = 8 * 1024;
/// Free space wanted in the read buffer before reading a response head.
const HEAD_READ: usize = 4 * 1024;
/// Free space wanted before reading a body of unknown length.
const BODY_READ: usize = 16 * 1024;
/// Buffers larger than this are not kept with an idle connection.
const KEEP_BUF: usize = 64 * 1024;

/// Why the origin gave no response.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, DNS, timeout).
    Connect(io::Error),
    /// The connection failed while the request was sent or the response awaited (hyper path).
    Http(hyper::Error),
    /// The connection failed while the request was sent or the response head awaited (own
    /// path), including the origin closing it before the head was complete.
    Io(io::Error),
    /// The origin's response head broke HTTP/1.1 or the shield's limits (own path).
    Protocol(&'static str),
    /// No response head within the response timeout (connecting included).
    Timeout,
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connecting to the origin: {e}"),
            UpstreamError::Http(e) => write!(f, "origin connection: {e}"),
            UpstreamError::Io(e) => write!(f, "origin connection: {e}"),
            UpstreamError::Protocol(m) => write!(f, "origin response: {m}"),
            UpstreamError::Timeout => write!(f, "no response head from the origin in time"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(e) => Some(e),
            UpstreamError::Http(e) => Some(e),
            UpstreamError::Io(e) => Some(e),
            UpstreamError::Protocol(_) | UpstreamError::Timeout => None,
        }
    }
}

/// Why a response body ended early.
#[derive(Debug)]
pub enum BodyError {
    /// From hyper (hyper path).
    Http(hyper::Error),
    /// The connection failed or closed before the end of the body (own path).
    Io(io::Error),
    /// The body broke HTTP/1.1 framing, e.g. a bad chunk size (own path).
    Framing(&'static str),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Http(e) => write!(f, "origin body: {e}"),
            BodyError::Io(e) => write!(f, "origin body: {e}"),
            BodyError::Framing(m) => write!(f, "origin body: {m}"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Http(e) => Some(e),
            BodyError::Io(e) => Some(e),
            BodyError::Framing(_) => None,
        }
    }
}

struct Idle<T> {
    conn: T,
    since: Instant,
}

struct Slots {
    /// The origin the idle connections lead to; a reload to another origin empties the pools.
    authority: String,
    /// Counts origin changes, so a connection to the old origin is not returned to a pool
    /// (compared instead of the authority: no string per request).
    generation: u64,
    /// hyper connections (requests with bodies, other methods).
    hyper: Vec<Idle<SendRequest<Body>>>,
    /// Own connections (bodiless idempotent requests).
    own: Vec<Idle<Conn>>,
}

impl Slots {
    /// Empties both pools if `authority` is not the one they lead to.
    fn sync(&mut self, authority: &str) {
        if self.authority != authority {
            self.hyper.clear();
            self.own.clear();
            self.authority = authority.to_string();
            self.generation += 1;
        }
    }
}

/// Fields the shield adds to a request on its way to the origin (forwarding, `Via`). The own
/// client writes them after the request's own fields, so the common request needs no header map
/// insertions; hyper's path inserts them. The caller has removed any client fields of the same
/// names that these replace.
#[derive(Default)]
pub(crate) struct Added {
    pub forwarded_for: Option<HeaderValue>,
    pub forwarded_proto: Option<&'static str>,
    pub real_ip: Option<HeaderValue>,
    pub via: Option<&'static str>,
}

impl Added {
    /// The fields as `(name, value)` pairs, in the order they are sent.
    fn fields(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        let Added {
            forwarded_for,
            forwarded_proto,
            real_ip,
            via,
        } = self;
        [
            (
                "x-forwarded-for",
                forwarded_for.as_ref().map(HeaderValue::as_bytes),
            ),
            ("x-forwarded-proto", forwarded_proto.map(str::as_bytes)),
            ("x-real-ip", real_ip.as_ref().map(HeaderValue::as_bytes)),
            ("via", via.map(str::as_bytes)),
        ]
        .into_iter()
        .filter_map(|(n, v)| Some((n, v?)))
    }

    /// Puts the fields into `h` (appended after any of the same name). For hyper's path, which
    /// writes only the map; rare, so the values are copied.
    pub fn insert_into(self, h: &mut HeaderMap) {
        for (name, value) in self.fields() {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                h.append(header::HeaderName::from_static(name), v);
            }
        }
    }
}

/// The shield's connections to its origin.
pub struct Upstream {
    slots: Mutex<Slots>,
    max_idle: usize,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstream {
    pub fn new(max_idle: usize, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(Upstream {
            slots: Mutex::new(Slots {
                authority: String::new(),
                generation: 0,
                hyper: Vec::new(),
                own: Vec::new(),
            }),
            max_idle,
            connect_timeout,
            idle_timeout,
        })
    }

    /// Idle connections now, both pools (for tests and metrics).
    pub fn idle(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.hyper.len() + s.own.len())
    }

    /// A ready idle hyper connection to `authority`, newest first; stale and closed ones are
    /// dropped. Also returns the pool's generation for `authority`, which the connection carries
    /// back.
    fn checkout(&self, authority: &str) -> (Option<SendRequest<Body>>, u64) {
        let Ok(mut s) = self.slots.lock() else {
            return (None, u64::MAX);
        };
        s.sync(authority);
        let now = Instant::now();
        while let Some(i) = s.hyper.pop() {
            if now.duration_since(i.since) < self.idle_timeout && !i.conn.is_closed() {
                return (Some(i.conn), s.generation);
            }
        }
        (None, s.generation)
    }

    fn give_back(&self, generation: u64, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let Ok(mut s) = self.slots.lock() else {
            return;
        };
        if s.generation == generation && s.hyper.len() < self.max_idle {
            s.hyper.push(Idle {
                conn: tx,
                since: Instant::now(),
            });
        }
    }

    /// An idle own connection to `authority` that is neither stale nor closed by the origin,
    /// newest first, and the pool's generation. The liveness check runs outside the lock.
    fn checkout_own(&self, authority: &str) -> (Option<Conn>, u64) {
        loop {
            let (idle, generation) = {
                let Ok(mut s) = self.slots.lock() else {
                    return (None, u64::MAX);
                };
                s.sync(authority);
                (s.own.pop(), s.generation)
            };
            let Some(i) = idle else {
                return (None, generation);
            };
            if i.since.elapsed() < self.idle_timeout && i.conn.alive() {
                return (Some(i.conn), generation);
            }
        }
    }

    fn give_back_own(&self, generation: u64, mut conn: Conn) {
        if conn.rbuf.capacity() > KEEP_BUF {
            conn.rbuf = BytesMut::new();
        }
        if conn.wbuf.capacity() > KEEP_BUF {
            conn.wbuf = Vec::new();
        }
        let refused = match self.slots.lock() {
            Ok(mut s) if s.generation == generation && s.own.len() < self.max_idle => {
                s.own.push(Idle {
                    conn,
                    since: Instant::now(),
                });
                None
            }
            _ => Some(conn),
        };
        // Closed outside the lock.
        drop(refused);
    }

    /// A new TCP connection to `authority`, within `connect_timeout`.
    async fn open(&self, authority: &http::uri::Authority) -> Result<TcpStream, UpstreamError> {
        let target = (
            authority.host().trim_matches(['[', ']']).to_string(),
            authority.port_u16().unwrap_or(80),
        );
        let stream = tokio::time::timeout(self.connect_timeout, async {
            let mut last = None;
            for addr in tokio::net::lookup_host(target).await? {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no address for the origin")
            }))
        })
        .await
        .map_err(|_| {
            UpstreamError::Connect(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
        })?
        .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(&stream);
        let _ = sock
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
        Ok(stream)
    }

    async fn connect(
        &self,
        authority: &http::uri::Authority,
        upgrades: bool,
    ) -> Result<SendRequest<Body>, UpstreamError> {
        let stream = self.open(authority).await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Http)?;
        if upgrades {
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
        } else {
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        Ok(tx)
    }

    /// Sends `req` (origin-form URI, Host set) to the origin at `authority` and returns its
    /// response; the response's body returns the connection to the pool when read to the end.
    pub async fn request(
        self: &Arc<Self>,
        authority: &http::uri::Authority,
        req: Request<Body>,
        upgrade: bool,
        timeout: Duration,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if !upgrade && own_path(req.method(), req.headers(), req.body()) {
            // The body is empty; it is dropped here.
            let (parts, _) = req.into_parts();
            let own = self
                .request_own(authority, &parts, &Added::default(), timeout)
                .await?;
            return Ok(own.into_response());
        }
        self.request_other(authority, req, upgrade, timeout).await
    }

    /// A request the own path does not take (see [`own_path`]), through hyper, with any
    /// [`Added`] fields already in its head. Boxed: this rarer path's larger future would otherwise size (and be
    /// copied with) every request's future.
    pub(crate) fn request_other<'a>(
        self: &'a Arc<Self>,
        authority: &'a http::uri::Authority,
        req: Request<Body>,
        upgrade: bool,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Response<PooledBody>, UpstreamError>> + Send + 'a>>
    {
        Box::pin(async move {
            tokio::time::timeout(timeout, self.request_hyper(authority, req, upgrade))
                .await
                .unwrap_or(Err(UpstreamError::Timeout))
        })
    }

    async fn request_hyper(
        self: &Arc<Self>,
        authority: &http::uri::Authority,
        mut req: Request<Body>,
        upgrade: bool,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if upgrade {
            let mut tx = self.connect(authority, true).await?;
            let resp = tx.send_request(req).await.map_err(UpstreamError::Http)?;
            return Ok(resp.map(|b| PooledBody::hyper(b, None)));
        }
        let mut retried = false;
        loop {
            let (idle, generation) = self.checkout(authority.as_str());
            let (mut tx, reused) = match idle {
                Some(tx) => (tx, true),
                None => (self.connect(authority, false).await?, false),
            };
            if reused && tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let home = Some(Home {
                        pool: self.clone(),
                        generation,
                        tx,
                    });
                    return Ok(resp.map(|b| PooledBody::hyper(b, home)));
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: the idle connection had been closed by the origin.
                    Some(back) if reused && !retried => {
                        retried = true;
                        req = back;
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// The own path: the request head written and the response head read by this task.
    pub(crate) async fn request_own(
        self: &Arc<Self>,
        authority: &http::uri::Authority,
        parts: &http::request::Parts,
        added: &Added,
        timeout: Duration,
    ) -> Result<OwnResponse, UpstreamError> {
        let head_only = parts.method == Method::HEAD;
        let deadline = deadline_in(timeout);
        let mut retried = false;
        loop {
            // The retry goes to a new connection: the origin may have closed all idle ones.
            let (idle, generation) = if retried {
                (None, self.generation())
            } else {
                self.checkout_own(authority.as_str())
            };
            let (mut conn, reused) = match idle {
                Some(c) => (c, true),
                // Boxed: connecting is rare (connections are pooled), and its future would
                // otherwise size, and be copied with, every request's.
                None => {
                    match tokio::time::timeout_at(deadline, Box::pin(self.open(authority))).await {
                        Ok(stream) => (Conn::new(stream?), false),
                        Err(_) => return Err(UpstreamError::Timeout),
                    }
                }
            };
            let close = conn.encode(parts, added);
            let head = match conn.exchange(head_only, close, deadline).await {
                Ok(h) => h,
                Err(HeadError::Nothing(e)) => {
                    if reused && !retried {
                        retried = true;
                        continue;
                    }
                    return Err(UpstreamError::Io(e));
                }
                Err(HeadError::Fail(e)) => return Err(e),
            };
            let (headers, raw) = match head.fields {
                // `parse_head` keeps at most `MAX_FIELDS` this way; were there more, they would
                // go to a map rather than be lost.
                Fields::Raw(bytes) if conn.spans.len() <= MAX_FIELDS => (
                    HeaderMap::new(),
                    RawHead::new(bytes, &conn.spans).unwrap_or_else(RawHead::empty),
                ),
                Fields::Raw(bytes) => (map_of(&bytes, &conn.spans, true), RawHead::empty()),
                Fields::Map(m) => (m, RawHead::empty()),
            };
            let body = PooledBody::own(OwnBody {
                conn: Some(conn),
                framing: head.framing,
                keep: head.keep,
                pool: self.clone(),
                generation,
            });
            return Ok(OwnResponse {
                status: head.status,
                version: head.version,
                headers,
                origin: Box::new(Origin {
                    head: raw,
                    body: crate::body::Guarded::unguarded(body),
                }),
            });
        }
    }

    fn generation(&self) -> u64 {
        self.slots.lock().map_or(u64::MAX, |s| s.generation)
    }
}

/// A response on the own path. Its fields are in `headers`, or, when the head was plain enough
/// to pass on as it came (see `rawhead`), in `origin.head`, hop-by-hop ones marked, and
/// `headers` is empty.
pub(crate) struct OwnResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub origin: Box<Origin>,
}

impl OwnResponse {
    /// As a response with every field in its map (hop-by-hop ones too, for the caller to strip).
    pub(crate) fn into_response(self) -> Response<PooledBody> {
        let OwnResponse {
            status,
            version,
            mut headers,
            origin,
        } = self;
        let Origin { head, body } = *origin;
        let body = body.into_inner();
        if !head.is_empty() {
            headers = head.to_map(true);
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        resp
    }
}

/// Whether `req` can take the own path (the caller has ruled out upgrades): an idempotent method
/// (RFC 9110 9.2.2), so a retry is safe, and no body to send.
pub(crate) fn own_path(m: &Method, h: &HeaderMap, body: &Body) -> bool {
    let idempotent = *m == Method::GET
        || *m == Method::HEAD
        || *m == Method::OPTIONS
        || *m == Method::TRACE
        || *m == Method::PUT
        || *m == Method::DELETE;
    if !idempotent || !body.is_end_stream() {
        return false;
    }
    // A head that announces a body the request does not have is left to hyper, as before (one
    // pass over the names; usually neither is there).
    if h.keys()
        .any(|k| k == header::TRANSFER_ENCODING || k == header::CONTENT_LENGTH)
    {
        return !h.contains_key(header::TRANSFER_ENCODING)
            && h.get_all(header::CONTENT_LENGTH)
                .iter()
                .all(|v| v.as_bytes() == b"0");
    }
    true
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a Connection value lists nothing but `keep-alive` and `close` (names of no field that
/// is not hop-by-hop anyway).
fn only_connection_state(value: &[u8]) -> bool {
    value.split(|&b| b == b',').all(|t| {
        let t = t.trim_ascii();
        t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")
    })
}

/// Adds the values of one Content-Length field line to `seen`: a list of identical decimal
/// numbers is one length; anything else is an error.
fn content_length(value: &[u8], seen: &mut Option<u64>) -> Result<(), &'static str> {
    // The usual field first: one number of at most 19 digits (no overflow), nothing else.
    if (1..=19).contains(&value.len()) && value.iter().all(u8::is_ascii_digit) {
        let n = value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        return match *seen {
            Some(prev) if prev != n => Err("conflicting Content-Length values"),
            _ => {
                *seen = Some(n);
                Ok(())
            }
        };
    }
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err("invalid Content-Length");
        }
        let n = digits.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        });
        let Some(n) = n else {
            return Err("invalid Content-Length");
        };
        match *seen {
            Some(prev) if prev != n => return Err("conflicting Content-Length values"),
            _ => *seen = Some(n),
        }
    }
    Ok(())
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug)]
enum Framing {
    /// No (more) body.
    Done,
    /// Content-Length: this many bytes still to come.
    Length(u64),
    /// Transfer-Encoding ending in chunked.
    Chunked(Chunked),
    /// Until the origin closes the connection.
    Close,
}

/// The parts of a final response head that the body and the response need.
struct Head {
    status: StatusCode,
    version: Version,
    fields: Fields,
    framing: Framing,
    /// Whether the connection may carry another request once the body is read.
    keep: bool,
}

/// Where a response head's fields are.
enum Fields {
    /// In these bytes, at the places the connection's `spans` give (at most `MAX_FIELDS`).
    Raw(Bytes),
    /// In a map (a head with a `Via`, a `Connection` naming fields, a length to correct, or
    /// more than `MAX_FIELDS` fields).
    Map(HeaderMap),
}

enum HeadError {
    /// The connection ended or failed before any byte of a response: a reused connection the
    /// origin had closed, so a retry is safe.
    Nothing(io::Error),
    Fail(UpstreamError),
}

enum Parsed {
    Partial,
    Interim,
    Final(Head),
}

/// An own connection: the socket and its buffers.
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed. Response heads and body frames are split off it without
    /// copying.
    rbuf: BytesMut,
    /// The request head being written; kept to be reused by the next request.
    wbuf: Vec<u8>,
    /// Where each field of the response head lies, and what it is (scratch space kept between
    /// responses, so a response costs no zeroed array of 100 slots; at most 100 entries).
    spans: Vec<Field>,
    /// The response timeout's timer, kept with the connection and moved to each request's
    /// deadline: a later deadline only updates the registered entry (an atomic store), where a
    /// timer per request would enter and leave the runtime's timer wheel every time. Made on
    /// first use; out of the connection while a request uses it.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_BUF),
            wbuf: Vec::new(),
            spans: Vec::new(),
            timer: None,
        }
    }

    /// Sends the request head in `wbuf` and reads the response head, by `deadline`.
    async fn exchange(
        &mut self,
        head_only: bool,
        close: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Head, HeadError> {
        let mut timer = match self.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let r = {
            let mut work = std::pin::pin!(async {
                if let Err(e) = self.stream.write_all(&self.wbuf).await {
                    return Err(HeadError::Nothing(e));
                }
                self.read_head(head_only, close).await
            });
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = work.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(HeadError::Fail(UpstreamError::Timeout)))
            })
            .await
        };
        self.timer = Some(timer);
        r
    }

    /// Whether an idle connection still looks usable: not closed by the origin, and nothing
    /// unexpected sent on it. While tokio's cached readiness says "not readable" (the common
    /// case, see `try_fill`), `try_read` returns WouldBlock without a system call.
    fn alive(&self) -> bool {
        let mut one = [0u8; 1];
        matches!(self.stream.try_read(&mut one), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Serializes the request head into `wbuf`; returns whether the request asked for the
    /// connection to be closed.
    fn encode(&mut self, parts: &http::request::Parts, added: &Added) -> bool {
        let b = &mut self.wbuf;
        b.clear();
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let pq = if pq.is_empty() { "/" } else { pq };
        b.extend_from_slice(parts.method.as_str().as_bytes());
        b.push(b' ');
        b.extend_from_slice(pq.as_bytes());
        b.extend_from_slice(b" HTTP/1.1\r\n");
        let mut close = false;
        for (name, value) in &parts.headers {
            if name == header::CONNECTION && has_token(value.as_bytes(), b"close") {
                close = true;
            }
            push_field(b, name.as_str().as_bytes(), value.as_bytes());
        }
        for (name, value) in added.fields() {
            push_field(b, name.as_bytes(), value);
        }
        b.extend_from_slice(b"\r\n");
        close
    }

    /// Reads into `rbuf` what the socket has now, without waiting.
    fn try_fill(&mut self) -> io::Result<usize> {
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let stream = &self.stream;
        let rbuf = &mut self.rbuf;
        let mut got = 0;
        let r = stream.try_io(Interest::READABLE, || {
            got = stream.try_read_buf(rbuf)?;
            // With epoll and kqueue a read that did not fill the buffer has drained the socket.
            // Reporting WouldBlock makes tokio forget the readiness it cached (as its own
            // `poll_read` does), so the checkout's `try_read` of an idle connection costs no
            // system call. Readiness that arrived during the read has a newer tick and is kept.
            if DRAIN_CLEARS_READINESS && got > 0 && got < spare {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(got)
            }
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            r => r,
        }
    }

    /// Reads at least one byte into `rbuf`, with at least `want` bytes of room first; `Ok(0)`
    /// at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < want {
            self.rbuf.reserve(want);
        }
        loop {
            match self.try_fill() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.stream.poll_read_ready(cx))?;
                }
                r => return Poll::Ready(r),
            }
        }
    }

    /// Reads the final response head, skipping interim ones.
    async fn read_head(&mut self, head_only: bool, close: bool) -> Result<Head, HeadError> {
        let mut received = false;
        let mut interim = 0;
        // Bytes at the start of `rbuf` known not to hold a complete head. A head that arrives in
        // pieces is parsed again only once an empty line may have arrived, so an origin sending
        // it byte by byte costs linear, not quadratic, time.
        let mut scanned = 0;
        loop {
            if head_may_end(&self.rbuf, scanned) {
                match self.parse_head(head_only, close).map_err(HeadError::Fail)? {
                    Parsed::Final(h) => return Ok(h),
                    Parsed::Interim => {
                        interim += 1;
                        if interim > MAX_INTERIM {
                            return Err(HeadError::Fail(UpstreamError::Protocol(
                                "too many interim responses",
                            )));
                        }
                        scanned = 0;
                        continue;
                    }
                    Parsed::Partial => {}
                }
            }
            scanned = self.rbuf.len();
            if self.rbuf.len() >= MAX_HEAD {
                return Err(HeadError::Fail(UpstreamError::Protocol(
                    "response head too large",
                )));
            }
            let r = std::future::poll_fn(|cx| self.poll_fill(cx, HEAD_READ)).await;
            let e = match r {
                Ok(0) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the origin closed the connection before the response head",
                ),
                Ok(_) => {
                    received = true;
                    continue;
                }
                Err(e) => e,
            };
            return Err(if received {
                HeadError::Fail(UpstreamError::Io(e))
            } else {
                HeadError::Nothing(e)
            });
        }
    }

    /// Parses a response head at the start of `rbuf`. An interim response is consumed; a final
    /// one is split off `rbuf` (the rest stays for the body) and its header values become
    /// slices of it.
    fn parse_head(&mut self, head_only: bool, req_close: bool) -> Result<Parsed, UpstreamError> {
        if self.rbuf.is_empty() {
            return Ok(Parsed::Partial);
        }
        // Where each field's name and value lie in the head, and what it is: the parsed slices
        // borrow `rbuf`, which is split below.
        let spans = &mut self.spans;
        spans.clear();
        let (len, code, minor) = {
            let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut []);
            let buf: &[u8] = &self.rbuf;
            let len = match httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
            {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(UpstreamError::Protocol("more than 100 header fields"));
                }
                Err(_) => return Err(UpstreamError::Protocol("malformed response head")),
            };
            if len > MAX_HEAD {
                return Err(UpstreamError::Protocol("response head too large"));
            }
            let head = &buf[..len];
            for h in res.headers.iter() {
                let name = h.name.as_bytes();
                let field = Field::new(head, name, h.value, Kind::of(name))
                    .ok_or_else(|| UpstreamError::Protocol("malformed response head"))?;
                spans.push(field);
            }
            let (Some(code), Some(minor)) = (res.code, res.version) else {
                return Err(UpstreamError::Protocol("malformed response head"));
            };
            (len, code, minor)
        };
        let status = StatusCode::from_u16(code)
            .map_err(|_| UpstreamError::Protocol("invalid status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::Protocol(
                "101 Switching Protocols without an upgrade",
            ));
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints: not forwarded; the final response follows.
            self.rbuf.advance(len);
            return Ok(Parsed::Interim);
        }
        let version = match minor {
            0 => Version::HTTP_10,
            1 => Version::HTTP_11,
            _ => return Err(UpstreamError::Protocol("unsupported HTTP version")),
        };
        let head = self.rbuf.split_to(len).freeze();
        let mut length = None;
        // Whether the Content-Length fields, as received, are one field already in plain form.
        let mut length_fields = 0u32;
        let mut length_plain = true;
        let mut te = false;
        let mut chunked = false;
        let mut close = req_close;
        // Whether the fields can be passed on as they came (see `rawhead`): not too many, no
        // `Via` for this hop's entry to join, no `Connection` naming other fields.
        let mut raw = spans.len() <= MAX_FIELDS;
        // (httparse checked every name and value: the `http` crate accepts the same bytes, as a
        // property test in `rawhead` checks.)
        for f in spans.iter_mut() {
            let value = f.value(&head);
            match f.kind {
                Kind::ContentLength => {
                    content_length(value, &mut length).map_err(UpstreamError::Protocol)?;
                    length_fields += 1;
                    // Plain: digits only, no leading zero (the fast path above took digits only).
                    length_plain &= value.iter().all(u8::is_ascii_digit)
                        && (value.len() == 1 || value[0] != b'0');
                }
                Kind::TransferEncoding => {
                    te = true;
                    // The last coding decides: only a final `chunked` delimits the body.
                    if let Some(last) = value
                        .rsplit(|&b| b == b',')
                        .map(<[u8]>::trim_ascii)
                        .find(|t| !t.is_empty())
                    {
                        chunked = last.eq_ignore_ascii_case(b"chunked");
                    }
                }
                Kind::Connection => {
                    // A Connection field naming only this connection's state (`keep-alive`,
                    // `close`) is hop-by-hop and names no other field: dropped here rather than
                    // stored to be stripped again. One naming fields stays for the stripping.
                    // (One token, the usual case, is compared whole.)
                    let one = value.trim_ascii();
                    if lower_eq(one, b"keep-alive") {
                        f.kind = Kind::Drop;
                        continue;
                    }
                    close |= has_token(value, b"close");
                    if only_connection_state(value) {
                        f.kind = Kind::Drop;
                    } else {
                        raw = false;
                    }
                }
                Kind::Via | Kind::Replaced => raw = false,
                _ => {}
            }
        }
        let mut keep = version == Version::HTTP_11 && !close;
        // What the Content-Length passed on must be instead of the received one: none, or one
        // plain value.
        let mut fix_length: Option<Option<u64>> = None;
        let framing = if head_only
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Done
        } else if te {
            // Transfer-Encoding wins over Content-Length, but such a message may be an attempt
            // at request smuggling: the connection is not reused. In HTTP/1.0 it is not valid
            // framing at all (RFC 9112 6.1), so the body runs to the close.
            if length.is_some() {
                keep = false;
                // RFC 9112 6.3: the received Content-Length must not be passed on; it would
                // frame the decoded body wrongly for the client and for the cache.
                fix_length = Some(None);
            }
            if chunked && version == Version::HTTP_11 {
                Framing::Chunked(Chunked::new())
            } else {
                keep = false;
                Framing::Close
            }
        } else {
            // One plain value, however the origin listed it (`5, 5`, or two identical fields):
            // hyper's encoder refuses a repeated field after a hand-off.
            if let Some(n) = length
                && (length_fields > 1 || !length_plain)
            {
                fix_length = Some(Some(n));
            }
            match length {
                Some(0) => Framing::Done,
                Some(n) => Framing::Length(n),
                None => {
                    keep = false;
                    Framing::Close
                }
            }
        };
        let fields = if raw && fix_length.is_none() {
            Fields::Raw(head)
        } else {
            let mut headers = map_of(&head, spans, true);
            match fix_length {
                Some(Some(n)) => {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                Some(None) => {
                    headers.remove(header::CONTENT_LENGTH);
                }
                None => {}
            }
            Fields::Map(headers)
        };
        Ok(Parsed::Final(Head {
            status,
            version,
            fields,
            framing,
            keep,
        }))
    }
}

/// Whether a read that leaves room in the buffer proves the socket drained (epoll, kqueue).
const DRAIN_CLEARS_READINESS: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
));

/// The states of the chunked decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// The hex digits of a chunk size.
    Size,
    /// After the size: whitespace and extensions (ignored), up to CR.
    Ext,
    /// The LF ending a chunk-size line.
    SizeLf,
    /// Chunk data, `Chunked::size` bytes still to come.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The start of a trailer field line, or of the final empty line.
    TrailerStart,
    /// Inside a trailer field line (discarded).
    Trailer,
    /// The LF ending a trailer field line.
    TrailerLf,
    /// The LF ending the body.
    EndLf,
    Done,
    Failed,
}

/// What the chunked decoder produced.
#[derive(Debug)]
enum Step {
    Data(Bytes),
    /// More bytes are needed.
    More,
    End,
}

/// An incremental decoder of the chunked transfer coding (RFC 9112 7.1). It consumes framing
/// bytes from the read buffer and splits chunk data off it without copying; the buffer may end
/// anywhere.
#[derive(Debug)]
struct Chunked {
    state: ChunkState,
    /// The chunk size being read, then the data bytes still to come.
    size: u64,
    /// Whether the size has at least one digit.
    digits: bool,
    /// Bytes in the current chunk-size line.
    line: usize,
    /// Bytes in the trailer section.
    trailer: usize,
    /// Why decoding failed, repeated by later calls.
    error: &'static str,
}

impl Chunked {
    fn new() -> Self {
        Chunked {
            state: ChunkState::Size,
            size: 0,
            digits: false,
            line: 0,
            trailer: 0,
            error: "",
        }
    }

    fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The next piece of the body from `buf`.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        self.framing(buf)?;
        if self.state == ChunkState::Done {
            return Ok(Step::End);
        }
        if self.state != ChunkState::Data || buf.is_empty() {
            return Ok(Step::More);
        }
        let n = usize::try_from(self.size)
            .unwrap_or(usize::MAX)
            .min(buf.len())
            .min(MAX_FRAME);
        self.size -= n as u64;
        if self.size == 0 {
            self.state = ChunkState::DataCr;
        }
        Ok(Step::Data(buf.split_to(n).freeze()))
    }

    /// Consumes framing bytes from `buf` until chunk data, the end, or the end of `buf`.
    fn framing(&mut self, buf: &mut BytesMut) -> Result<(), &'static str> {
        let mut used = 0;
        let r = self.scan(buf, &mut used);
        buf.advance(used);
        r
    }

    fn scan(&mut self, bytes: &[u8], used: &mut usize) -> Result<(), &'static str> {
        if self.state == ChunkState::Failed {
            return Err(self.error);
        }
        for &b in bytes {
            if matches!(self.state, ChunkState::Data | ChunkState::Done) {
                break;
            }
            *used += 1;
            if let Err(e) = self.step(b) {
                self.state = ChunkState::Failed;
                self.error = e;
                return Err(e);
            }
        }
        Ok(())
    }

    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        use ChunkState as S;
        match self.state {
            S::Size | S::Ext | S::SizeLf => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err("chunk-size line too long");
                }
            }
            S::TrailerStart | S::Trailer | S::TrailerLf | S::EndLf => {
                self.trailer += 1;
                if self.trailer > MAX_TRAILERS {
                    return Err("chunked trailer section too large");
                }
            }
            _ => {}
        }
        self.state = match (self.state, b) {
            (S::Size, _) if b.is_ascii_hexdigit() => {
                let d = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    b'A'..=b'F' => b - b'A' + 10,
                    _ => return Err("invalid chunk size"),
                };
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(d)))
                    .ok_or("chunk size too large")?;
                self.digits = true;
                S::Size
            }
            (S::Size, b'\r') if self.digits => S::SizeLf,
            (S::Size, b';' | b' ' | b'\t') if self.digits => S::Ext,
            (S::Size, _) => return Err("invalid chunk size"),
            (S::Ext, b'\r') => S::SizeLf,
            (S::Ext, b'\t' | 0x20..=0x7e | 0x80..=0xff) => S::Ext,
            (S::Ext, _) => return Err("invalid byte in a chunk extension"),
            (S::SizeLf, b'\n') if self.size == 0 => S::TrailerStart,
            (S::SizeLf, b'\n') => S::Data,
            (S::DataCr, b'\r') => S::DataLf,
            (S::DataLf, b'\n') => {
                self.size = 0;
                self.digits = false;
                self.line = 0;
                S::Size
            }
            (S::TrailerStart, b'\r') => S::EndLf,
            (S::TrailerStart | S::Trailer, b'\n') => return Err("bare LF in the trailer section"),
            (S::Trailer, b'\r') => S::TrailerLf,
            (S::TrailerStart | S::Trailer, _) => S::Trailer,
            (S::TrailerLf, b'\n') => S::TrailerStart,
            (S::EndLf, b'\n') => S::Done,
            (S::Data | S::Done | S::Failed, _) => return Err("chunked decoder misuse"),
            (S::SizeLf | S::DataCr | S::DataLf | S::TrailerLf | S::EndLf, _) => {
                return Err("missing CRLF in chunked body");
            }
        };
        Ok(())
    }
}

/// Where a hyper connection goes back when its response has been read.
struct Home {
    pool: Arc<Upstream>,
    generation: u64,
    tx: SendRequest<Body>,
}

/// The body of a response on an own connection.
struct OwnBody {
    /// None once the body has ended (the connection returned to the pool or closed).
    conn: Option<Conn>,
    framing: Framing,
    /// Whether the connection may go back to the pool once the body is read to its end.
    keep: bool,
    pool: Arc<Upstream>,
    generation: u64,
}

impl OwnBody {
    /// The body has been read to its end: the connection goes back to the pool if it can carry
    /// another request and nothing beyond the response arrived on it.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.keep
            && conn.rbuf.is_empty()
        {
            self.pool.give_back_own(self.generation, conn);
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match &mut self.framing {
                Framing::Done => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(rem) => {
                    if !conn.rbuf.is_empty() {
                        let n = usize::try_from(*rem)
                            .unwrap_or(usize::MAX)
                            .min(conn.rbuf.len())
                            .min(MAX_FRAME);
                        let data = conn.rbuf.split_to(n).freeze();
                        *rem -= n as u64;
                        if *rem == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    usize::try_from(*rem)
                        .unwrap_or(usize::MAX)
                        .clamp(HEAD_READ, MAX_FRAME)
                }
                Framing::Chunked(dec) => match dec.decode(&mut conn.rbuf) {
                    Ok(Step::Data(data)) => {
                        // Consume the framing after the data now: if the body ends here, the
                        // stream reports its end with this frame and the connection is free
                        // sooner. An error is reported by the next call.
                        let _ = dec.framing(&mut conn.rbuf);
                        if dec.is_done() {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::End) => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => BODY_READ,
                    Err(m) => return self.fail(BodyError::Framing(m)),
                },
                Framing::Close => {
                    if !conn.rbuf.is_empty() {
                        let n = conn.rbuf.len().min(MAX_FRAME);
                        return Poll::Ready(Some(Ok(Frame::data(conn.rbuf.split_to(n).freeze()))));
                    }
                    BODY_READ
                }
            };
            match ready!(conn.poll_fill(cx, want)) {
                Ok(0) if matches!(self.framing, Framing::Close) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return self.fail(BodyError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the origin closed the connection before the end of the body",
                    )));
                }
                Ok(_) => {}
                Err(e) => return self.fail(BodyError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Chunked(_) | Framing::Close => SizeHint::default(),
        }
    }
}

enum Inner {
    Hyper { inner: Incoming, home: Option<Home> },
    Own(OwnBody),
}

/// The origin's response body; at its end, its connection returns to the pool.
pub struct PooledBody(Inner);

impl PooledBody {
    fn hyper(inner: Incoming, home: Option<Home>) -> Self {
        let mut b = PooledBody(Inner::Hyper { inner, home });
        if let Inner::Hyper { inner, home } = &mut b.0
            && inner.is_end_stream()
            && let Some(h) = home.take()
        {
            h.pool.give_back(h.generation, h.tx);
        }
        b
    }

    /// A body without bytes (HEAD, 204, 304, Content-Length: 0) frees its connection at once.
    fn own(mut body: OwnBody) -> Self {
        if body.is_end_stream() {
            body.finish();
        }
        PooledBody(Inner::Own(body))
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.0 {
            Inner::Own(b) => b.poll_frame(cx),
            Inner::Hyper { inner, home } => {
                let r = Pin::new(&mut *inner).poll_frame(cx);
                let release = match &r {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
                    Poll::Ready(Some(Err(_))) => {
                        *home = None;
                        false
                    }
                    Poll::Pending => false,
                };
                if release && let Some(h) = home.take() {
                    h.pool.give_back(h.generation, h.tx);
                }
                r.map(|o| o.map(|f| f.map_err(BodyError::Http)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Own(b) => b.is_end_stream(),
            Inner::Hyper { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Own(b) => b.size_hint(),
            Inner::Hyper { inner, .. } => inner.size_hint(),
        }
    }
}

/// Feeds arbitrary bytes to the chunked decoder, whole and in pieces cut where the first bytes
/// say, and checks its promises: no panic, frames non-empty and at most `MAX_FRAME` bytes, and
/// the same data and outcome however the stream is cut. For the `chunked` fuzz target; not an
/// API.
#[doc(hidden)]
pub fn fuzz_chunked(data: &[u8]) {
    let (cuts, stream) = data.split_at(data.len().min(4));
    let run = |cuts: &[u8]| -> (Vec<u8>, Result<bool, &'static str>) {
        let mut dec = Chunked::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut ends: Vec<usize> = cuts
            .iter()
            .map(|&c| usize::from(c).min(stream.len()))
            .collect();
        ends.sort_unstable();
        ends.push(stream.len());
        let mut at = 0;
        for end in ends {
            buf.extend_from_slice(stream.get(at..end).unwrap_or_default());
            at = at.max(end);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Step::Data(d)) => {
                        assert!(!d.is_empty() && d.len() <= MAX_FRAME);
                        out.extend_from_slice(&d);
                    }
                    Ok(Step::More) => break,
                    Ok(Step::End) => return (out, Ok(true)),
                    Err(e) => return (out, Err(e)),
                }
            }
        }
        (out, Ok(false))
    };
    let whole = run(&[]);
    let pieces = run(cuts);
    // An error may surface after a different amount of data; the end and the data before a
    // clean end may not differ.
    if whole.1.is_ok() && pieces.1.is_ok() {
        assert_eq!(whole, pieces, "cutting the stream changed the result");
    }
    assert_eq!(
        whole.1.is_err(),
        pieces.1.is_err(),
        "cutting the stream changed validity"
    );
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::str::FromStr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// One step of a scripted origin connection.
    #[derive(Clone)]
    enum Act {
        /// Read one request head (and a Content-Length body) and record the head.
        Read,
        /// Write these bytes, then pause so the client likely sees them as a read of their own.
        Write(Vec<u8>),
        /// Wait this long.
        Pause(Duration),
        /// Close the connection.
        Close,
    }

    use Act::{Close, Read};

    fn w(s: impl AsRef<[u8]>) -> Act {
        Act::Write(s.as_ref().to_vec())
    }

    /// A raw-TCP origin: the n-th accepted connection plays the n-th script; a connection without
    /// a script is closed at once. After its script a connection stays open until the client
    /// closes it.
    struct Origin {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Origin {
        async fn start(scripts: Vec<Vec<Act>>) -> Origin {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let heads = Arc::new(Mutex::new(Vec::new()));
            let (a, h) = (accepted.clone(), heads.clone());
            tokio::spawn(async move {
                let mut scripts = scripts.into_iter();
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        return;
                    };
                    a.fetch_add(1, Ordering::SeqCst);
                    let script = scripts.next().unwrap_or_else(|| vec![Close]);
                    tokio::spawn(play(s, script, h.clone()));
                }
            });
            Origin {
                addr,
                accepted,
                heads,
            }
        }

        fn authority(&self) -> http::uri::Authority {
            http::uri::Authority::from_str(&self.addr.to_string()).unwrap()
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        fn heads(&self) -> Vec<Vec<u8>> {
            self.heads.lock().unwrap().clone()
        }
    }

    async fn play(mut s: TcpStream, script: Vec<Act>, heads: Arc<Mutex<Vec<Vec<u8>>>>) {
        let _ = s.set_nodelay(true);
        let mut buf = Vec::new();
        for act in script {
            match act {
                Act::Read => {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut tmp = [0u8; 4096];
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let head: Vec<u8> = buf.drain(..end).collect();
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < len {
                        let mut tmp = [0u8; 4096];
                        match s.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    buf.drain(..len);
                    heads.lock().unwrap().push(head);
                }
                Act::Write(b) => {
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Act::Pause(d) => tokio::time::sleep(d).await,
                Act::Close => return,
            }
        }
        let mut tmp = [0u8; 4096];
        while let Ok(n) = s.read(&mut tmp).await {
            if n == 0 {
                return;
            }
        }
    }

    fn pool() -> Arc<Upstream> {
        Upstream::new(8, Duration::from_secs(2), Duration::from_secs(30))
    }

    fn req(method: Method, path: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "origin.test")
            .body(crate::body::empty())
            .unwrap()
    }

    fn get(path: &str) -> Request<Body> {
        req(Method::GET, path)
    }

    async fn send(
        up: &Arc<Upstream>,
        o: &Origin,
        r: Request<Body>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        tokio::time::timeout(
            Duration::from_secs(10),
            up.request(&o.authority(), r, false, Duration::from_secs(5)),
        )
        .await
        .expect("request timed out")
    }

    /// The whole body, or its error.
    async fn read_body(b: PooledBody) -> Result<Bytes, BodyError> {
        tokio::time::timeout(Duration::from_secs(5), b.collect())
            .await
            .expect("body timed out")
            .map(|c| c.to_bytes())
    }

    /// Sends `r` and reads the response to its end.
    async fn fetch(up: &Arc<Upstream>, o: &Origin, r: Request<Body>) -> (StatusCode, Bytes) {
        let resp = send(up, o, r).await.expect("response");
        let status = resp.status();
        (status, read_body(resp.into_body()).await.expect("body"))
    }

    const OK5: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[tokio::test]
    async fn content_length_body() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nX-A: c\r\n\r\nhello"),
        ]])
        .await;
        let up = pool();
        let resp = send(&up, &o, get("/")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_11);
        let xa: Vec<_> = resp.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["b", "c"]);
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        assert!(!resp.body().is_end_stream());
        assert_eq!(read_body(resp.into_body()).await.unwrap(), "hello");
        assert_eq!(up.idle(), 1);
    }

    #[tokio::test]
    async fn head_in_pieces() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 200 OK\r\nContent-Le"),
            w("ngth: 5\r\n\r"),
            w("\nhel"),
            w("lo"),
            Read,
            w("HTTP/1.1 200 OK\nContent-Length: 5\n"),
            w("\nhello"),
        ]])
        .await;
        let up = pool();
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 1);
    }

    #[test]
    fn head_end_detection() {
        assert!(head_may_end(b"", 0));
        assert!(!head_may_end(b"HTTP/1.1 200 OK\r\nA: b\r\n", 5));
        assert!(head_may_end(b"HTTP/1.1 200 OK\r\n\r\n", 17));
        assert!(head_may_end(b"HTTP/1.1 200 OK\r\n\r\n", 18));
        assert!(head_may_end(b"HTTP/1.1 200 OK\n\n", 16));
        assert!(!head_may_end(b"HTTP/1.1 200 OK\n\n", 18));
    }

    #[tokio::test]
    async fn large_body_is_split_into_bounded_frames() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        resp.extend_from_slice(&body);
        let o = Origin::start(vec![vec![Read, Act::Write(resp)]]).await;
        let up = pool();
        let mut b = send(&up, &o, get("/")).await.unwrap().into_body();
        let mut got = Vec::new();
        while let Some(f) = b.frame().await {
            let d = f.unwrap().into_data().unwrap();
            assert!(
                !d.is_empty() && d.len() <= MAX_FRAME,
                "frame of {}",
                d.len()
            );
            got.extend_from_slice(&d);
            assert_eq!(b.size_hint().exact(), Some((body.len() - got.len()) as u64));
        }
        assert_eq!(got, body);
        assert!(b.is_end_stream());
        assert_eq!(up.idle(), 1);
    }

    #[tokio::test]
    async fn chunked_body_with_extensions_and_trailer_in_pieces() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=\"v\"\r"),
            w("\nhel"),
            w("lo\r"),
            w("\n1"),
            w("0 ; a=b\r\n0123456789abcdef\r\n0\r\nX-T"),
            w("railer: t\r\n\r"),
            w("\n"),
        ]])
        .await;
        let up = pool();
        let resp = send(&up, &o, get("/")).await.unwrap();
        assert_eq!(resp.body().size_hint().exact(), None);
        assert_eq!(
            read_body(resp.into_body()).await.unwrap(),
            "hello0123456789abcdef"
        );
        assert_eq!(up.idle(), 1);
    }

    #[tokio::test]
    async fn close_delimited_body() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 200 OK\r\n\r\nabc"),
            w("def"),
            Close,
        ]])
        .await;
        let up = pool();
        let (s, b) = fetch(&up, &o, get("/")).await;
        assert_eq!((s, &b[..]), (StatusCode::OK, &b"abcdef"[..]));
        assert_eq!(up.idle(), 0);
    }

    #[tokio::test]
    async fn head_with_content_length_has_no_body_and_reuses() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"),
            Read,
            w(OK5),
        ]])
        .await;
        let up = pool();
        let resp = send(&up, &o, req(Method::HEAD, "/")).await.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "100");
        assert!(resp.body().is_end_stream());
        assert_eq!(resp.body().size_hint().exact(), Some(0));
        // Released with the response, before the body is touched.
        assert_eq!(up.idle(), 1);
        assert_eq!(read_body(resp.into_body()).await.unwrap(), "");
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 1);
    }

    #[tokio::test]
    async fn no_content_and_not_modified_have_no_body() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 204 No Content\r\n\r\n"),
            Read,
            w("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"x\"\r\n\r\n"),
            Read,
            w(OK5),
        ]])
        .await;
        let up = pool();
        let r = send(&up, &o, get("/a")).await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(r.body().is_end_stream());
        assert_eq!(read_body(r.into_body()).await.unwrap(), "");
        let r = send(&up, &o, get("/b")).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(r.body().is_end_stream());
        assert_eq!(read_body(r.into_body()).await.unwrap(), "");
        assert_eq!(fetch(&up, &o, get("/c")).await.1, "hello");
        assert_eq!(o.accepted(), 1);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"),
            w("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ]])
        .await;
        let up = pool();
        let r = send(&up, &o, get("/")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get(header::LINK).is_none());
        assert_eq!(read_body(r.into_body()).await.unwrap(), "ok");
        assert_eq!(up.idle(), 1);
    }

    #[tokio::test]
    async fn switching_protocols_without_upgrade_is_an_error() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
        ]])
        .await;
        let e = send(&pool(), &o, get("/")).await.err().unwrap();
        assert!(matches!(e, UpstreamError::Protocol(_)), "{e}");
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection() {
        let o = Origin::start(vec![vec![Read, w(OK5), Read, w(OK5), Read, w(OK5)]]).await;
        let up = pool();
        for _ in 0..3 {
            assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        }
        assert_eq!(o.accepted(), 1);
        assert_eq!(o.heads().len(), 3);
        assert_eq!(up.idle(), 1);
    }

    async fn send_within(
        up: &Arc<Upstream>,
        o: &Origin,
        r: Request<Body>,
        timeout: Duration,
    ) -> (Result<Response<PooledBody>, UpstreamError>, Duration) {
        let t0 = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            up.request(&o.authority(), r, false, timeout),
        )
        .await
        .expect("the response timeout did not end the request");
        (r, t0.elapsed())
    }

    #[tokio::test]
    async fn a_silent_origin_times_out_at_the_deadline() {
        let o = Origin::start(vec![vec![Read]]).await;
        let (r, took) = send_within(&pool(), &o, get("/"), Duration::from_millis(200)).await;
        assert!(matches!(r, Err(UpstreamError::Timeout)), "{:?}", r.err());
        assert!(took >= Duration::from_millis(190), "{took:?}");
    }

    #[tokio::test]
    async fn a_timeout_too_long_for_the_clock_is_no_panic() {
        let o = Origin::start(vec![vec![Read, w(OK5)]]).await;
        let (r, _) = send_within(&pool(), &o, get("/"), Duration::MAX).await;
        assert_eq!(
            read_body(r.expect("response").into_body()).await.unwrap(),
            "hello"
        );
    }

    /// The connection keeps its timer between requests: moved earlier, later, or after it fired
    /// while the connection was idle, it must end each request at that request's deadline.
    #[tokio::test]
    async fn a_reused_connection_times_out_at_each_requests_own_deadline() {
        let ms = Duration::from_millis;
        // (the first request's timeout, idle time between, the second's timeout, what the
        // second must take at least, and at most)
        for (first, idle, second, least, most) in [
            // Earlier: the timer is at +10 s after the first; the second must end at +200 ms.
            (ms(10_000), ms(0), ms(200), ms(190), ms(5_000)),
            // Later: moved from +300 ms to +700 ms, it must not fire at +300 ms.
            (ms(300), ms(0), ms(700), ms(650), ms(5_000)),
            // After firing: the first deadline passes while the connection is idle.
            (ms(100), ms(300), ms(300), ms(290), ms(5_000)),
        ] {
            let o = Origin::start(vec![vec![Read, w(OK5), Read]]).await;
            let up = pool();
            let (r, _) = send_within(&up, &o, get("/"), first).await;
            let body = read_body(r.expect("first response").into_body()).await;
            assert_eq!(body.unwrap(), "hello");
            tokio::time::sleep(idle).await;
            let (r, took) = send_within(&up, &o, get("/"), second).await;
            assert!(matches!(r, Err(UpstreamError::Timeout)), "{:?}", r.err());
            assert!(
                least <= took && took <= most,
                "{first:?} then {second:?}: {took:?}"
            );
            assert_eq!(
                o.accepted(),
                1,
                "the second request used the pooled connection"
            );
        }
    }

    #[tokio::test]
    async fn connection_close_response_is_not_reused() {
        let o = Origin::start(vec![
            vec![
                Read,
                w("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"),
            ],
            vec![Read, w(OK5)],
        ])
        .await;
        let up = pool();
        let r = send(&up, &o, get("/")).await.unwrap();
        // Hop-by-hop and naming no other field: not passed on.
        assert!(r.headers().get(header::CONNECTION).is_none());
        assert_eq!(read_body(r.into_body()).await.unwrap(), "hello");
        assert_eq!(up.idle(), 0);
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
    }

    #[tokio::test]
    async fn a_connection_field_naming_other_fields_is_kept_for_the_stripping() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\nhello"),
        ]])
        .await;
        let r = send(&pool(), &o, get("/")).await.unwrap();
        assert_eq!(r.headers()[header::CONNECTION], "keep-alive, X-Hop");
        assert_eq!(r.headers()["x-hop"], "1");
        assert_eq!(read_body(r.into_body()).await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn request_asking_for_close_is_not_reused() {
        let o = Origin::start(vec![vec![Read, w(OK5)], vec![Read, w(OK5)]]).await;
        let up = pool();
        let mut r = get("/");
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        assert_eq!(fetch(&up, &o, r).await.1, "hello");
        assert_eq!(up.idle(), 0);
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
    }

    #[tokio::test]
    async fn http10_response_is_not_reused() {
        let o = Origin::start(vec![
            vec![
                Read,
                w("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"),
            ],
            vec![Read, w(OK5)],
        ])
        .await;
        let up = pool();
        let r = send(&up, &o, get("/")).await.unwrap();
        assert_eq!(r.version(), Version::HTTP_10);
        assert_eq!(read_body(r.into_body()).await.unwrap(), "hello");
        assert_eq!(up.idle(), 0);
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
    }

    #[tokio::test]
    async fn idle_connection_closed_by_the_origin_is_replaced() {
        let o = Origin::start(vec![vec![Read, w(OK5), Close], vec![Read, w(OK5)]]).await;
        let up = pool();
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(up.idle(), 1);
        // Let the FIN arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The checkout itself sees the close (no request is sent on the dead connection).
        assert!(up.checkout_own(o.authority().as_str()).0.is_none());
        assert_eq!(up.idle(), 0);
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
        assert_eq!(o.heads().len(), 2);
    }

    #[tokio::test]
    async fn idle_connection_check_needs_no_system_call() {
        let o = Origin::start(vec![vec![Read, w(OK5), Read, w(OK5)]]).await;
        let up = pool();
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        // The last read was short, so tokio no longer believes the socket readable: the
        // checkout's `try_read` would not reach the kernel (`try_io` skips its closure).
        let mut reached = false;
        {
            let s = up.slots.lock().unwrap();
            let r = s.own[0].conn.stream.try_io(Interest::READABLE, || {
                reached = true;
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
            assert!(r.is_err());
        }
        assert!(!reached);
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 1);
    }

    #[tokio::test]
    async fn reused_connection_closed_before_any_response_byte_is_retried() {
        // The origin reads the second request and closes without answering, as one does that
        // closed an idle connection the moment the request arrived.
        let o = Origin::start(vec![vec![Read, w(OK5), Read, Close], vec![Read, w(OK5)]]).await;
        let up = pool();
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(fetch(&up, &o, get("/again")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
        let heads = o.heads();
        assert_eq!(heads.len(), 3);
        assert!(heads[1].starts_with(b"GET /again "));
        assert_eq!(heads[1], heads[2]);
    }

    #[tokio::test]
    async fn no_retry_once_part_of_a_response_arrived() {
        let o = Origin::start(vec![
            vec![Read, w(OK5), Read, w("HTTP/1.1 200"), Close],
            vec![Read, w(OK5)],
        ])
        .await;
        let up = pool();
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        let e = send(&up, &o, get("/")).await.err().unwrap();
        assert!(matches!(e, UpstreamError::Io(_)), "{e}");
        assert_eq!(o.accepted(), 1);
    }

    #[tokio::test]
    async fn no_retry_on_a_new_connection() {
        let o = Origin::start(vec![vec![Read, Close], vec![Read, w(OK5)]]).await;
        let e = send(&pool(), &o, get("/")).await.err().unwrap();
        assert!(matches!(e, UpstreamError::Io(_)), "{e}");
        assert_eq!(o.accepted(), 1);
    }

    #[tokio::test]
    async fn body_dropped_half_way_drops_the_connection() {
        let o = Origin::start(vec![
            vec![
                Read,
                w("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"),
            ],
            vec![Read, w(OK5)],
        ])
        .await;
        let up = pool();
        let mut b = send(&up, &o, get("/")).await.unwrap().into_body();
        let f = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(f, "hello");
        assert_eq!(b.size_hint().exact(), Some(5));
        drop(b);
        assert_eq!(up.idle(), 0);
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
    }

    #[tokio::test]
    async fn early_close_inside_a_length_body_is_a_body_error() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"),
            Close,
        ]])
        .await;
        let up = pool();
        let mut b = send(&up, &o, get("/")).await.unwrap().into_body();
        let mut err = None;
        while let Some(f) = b.frame().await {
            if let Err(e) = f {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(BodyError::Io(_))), "{err:?}");
        assert!(b.frame().await.is_none());
        assert!(b.is_end_stream());
        assert_eq!(up.idle(), 0);
    }

    #[tokio::test]
    async fn malformed_status_line_is_an_error() {
        let o = Origin::start(vec![vec![Read, w("HTTP/1.1 2x0 OK\r\n\r\n")]]).await;
        let e = send(&pool(), &o, get("/")).await.err().unwrap();
        assert!(matches!(e, UpstreamError::Protocol(_)), "{e}");
    }

    #[tokio::test]
    async fn head_over_64_kib_is_an_error() {
        // Fewer than 100 fields, but too long in total.
        let mut long = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 70 * 1024));
        long.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let o = Origin::start(vec![vec![Read, Act::Write(long)]]).await;
        let e = send(&pool(), &o, get("/")).await.err().unwrap();
        assert!(
            matches!(e, UpstreamError::Protocol("response head too large")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn more_than_100_header_fields_is_an_error() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..101 {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        let o = Origin::start(vec![vec![Read, Act::Write(head)]]).await;
        let e = send(&pool(), &o, get("/")).await.err().unwrap();
        assert!(
            matches!(e, UpstreamError::Protocol("more than 100 header fields")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn content_length_lists() {
        let o = Origin::start(vec![
            vec![
                Read,
                w("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello"),
            ],
            vec![
                Read,
                w("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
            ],
            vec![
                Read,
                w("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!"),
            ],
            vec![
                Read,
                w("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"),
            ],
            vec![
                Read,
                w("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            ],
        ])
        .await;
        // Each on its own pool so each gets its own connection. The agreeing list is passed on
        // as one plain value.
        let r = send(&pool(), &o, get("/")).await.unwrap();
        let lengths: Vec<_> = r.headers().get_all("content-length").iter().collect();
        assert_eq!(lengths, ["5"]);
        assert_eq!(read_body(r.into_body()).await.unwrap(), "hello");
        for _ in 0..4 {
            let e = send(&pool(), &o, get("/")).await.err().unwrap();
            assert!(matches!(e, UpstreamError::Protocol(_)), "{e}");
        }
    }

    #[tokio::test]
    async fn transfer_encoding_wins_over_content_length_and_prevents_reuse() {
        let o = Origin::start(vec![
            vec![
                Read,
                w("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
            ],
            vec![Read, w(OK5)],
        ])
        .await;
        let up = pool();
        let r = send(&up, &o, get("/")).await.unwrap();
        assert_eq!(r.body().size_hint().exact(), None);
        // The received length would frame the decoded body wrongly further on.
        assert!(!r.headers().contains_key("content-length"));
        assert_eq!(read_body(r.into_body()).await.unwrap(), "hello");
        assert_eq!(up.idle(), 0);
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
    }

    #[tokio::test]
    async fn transfer_encoding_not_ending_in_chunked_reads_to_close() {
        let o = Origin::start(vec![vec![
            Read,
            w("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello"),
            Close,
        ]])
        .await;
        let up = pool();
        assert_eq!(fetch(&up, &o, get("/")).await.1, "5\r\nhello");
        assert_eq!(up.idle(), 0);
    }

    async fn chunked_body_error(body: &str) -> BodyError {
        let o = Origin::start(vec![vec![
            Read,
            w(format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            )),
        ]])
        .await;
        let up = pool();
        let mut b = send(&up, &o, get("/")).await.unwrap().into_body();
        let e = loop {
            match tokio::time::timeout(Duration::from_secs(5), b.frame()).await {
                Ok(Some(Err(e))) => break e,
                Ok(Some(Ok(_))) => {}
                other => panic!("no body error: {other:?}"),
            }
        };
        assert!(b.frame().await.is_none(), "the body ends after its error");
        assert_eq!(up.idle(), 0);
        e
    }

    #[tokio::test]
    async fn chunk_size_overflow_is_a_body_error() {
        let e = chunked_body_error("10000000000000000\r\n").await;
        assert!(
            matches!(e, BodyError::Framing("chunk size too large")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn non_hex_chunk_size_is_a_body_error() {
        let e = chunked_body_error("5\r\nhello\r\nzz\r\n").await;
        assert!(matches!(e, BodyError::Framing("invalid chunk size")), "{e}");
    }

    #[tokio::test]
    async fn overlong_chunk_line_is_a_body_error() {
        let e = chunked_body_error(&format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(2000))).await;
        assert!(
            matches!(e, BodyError::Framing("chunk-size line too long")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn extra_bytes_after_the_body_prevent_reuse() {
        let o = Origin::start(vec![
            vec![Read, w("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiXYZ")],
            vec![Read, w(OK5)],
        ])
        .await;
        let up = pool();
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hi");
        assert_eq!(up.idle(), 0);
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
    }

    #[tokio::test]
    async fn bytes_after_the_body_arriving_later_prevent_reuse() {
        let o = Origin::start(vec![
            vec![
                Read,
                w("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"),
                Act::Pause(Duration::from_millis(100)),
                w("HTTP/1.1 200 OK\r\n"),
            ],
            vec![Read, w(OK5)],
        ])
        .await;
        let up = pool();
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hi");
        assert_eq!(up.idle(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
    }

    #[tokio::test]
    async fn request_head_is_exactly_what_the_caller_set() {
        let o = Origin::start(vec![vec![Read, w(OK5), Read, w(OK5)]]).await;
        let up = pool();
        let mut r = get("/p/a?q=1&r");
        r.headers_mut().append("x-a", HeaderValue::from_static("1"));
        r.headers_mut().append("x-a", HeaderValue::from_static("2"));
        r.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        fetch(&up, &o, r).await;
        fetch(&up, &o, req(Method::HEAD, "/h")).await;
        let heads = o.heads();
        assert_eq!(
            String::from_utf8_lossy(&heads[0]),
            "GET /p/a?q=1&r HTTP/1.1\r\nhost: origin.test\r\nx-a: 1\r\nx-a: 2\r\naccept: */*\r\n\r\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&heads[1]),
            "HEAD /h HTTP/1.1\r\nhost: origin.test\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn requests_with_bodies_take_the_hyper_path() {
        let o = Origin::start(vec![
            vec![
                Read,
                w("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
            ],
            vec![Read, w(OK5)],
        ])
        .await;
        let up = pool();
        let r = Request::builder()
            .method(Method::POST)
            .uri("/form")
            .header(header::HOST, "origin.test")
            .header(header::CONTENT_LENGTH, "3")
            .body(crate::body::full("abc"))
            .unwrap();
        let (s, b) = fetch(&up, &o, r).await;
        assert_eq!((s, &b[..]), (StatusCode::CREATED, &b"ok"[..]));
        assert_eq!(up.idle(), 1);
        // A GET does not take the hyper connection: it opens an own one. Both are counted.
        assert_eq!(fetch(&up, &o, get("/")).await.1, "hello");
        assert_eq!(o.accepted(), 2);
        assert_eq!(up.idle(), 2);
        assert!(o.heads()[0].starts_with(b"POST /form HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn another_origin_empties_the_pool() {
        let a = Origin::start(vec![vec![Read, w(OK5)], vec![Read, w(OK5)]]).await;
        let b = Origin::start(vec![vec![Read, w(OK5)]]).await;
        let up = pool();
        fetch(&up, &a, get("/")).await;
        assert_eq!(up.idle(), 1);
        fetch(&up, &b, get("/")).await;
        assert_eq!(up.idle(), 1);
        fetch(&up, &a, get("/")).await;
        assert_eq!(a.accepted(), 2);
    }

    #[tokio::test]
    async fn stale_idle_connections_are_not_used() {
        let o = Origin::start(vec![vec![Read, w(OK5)], vec![Read, w(OK5)]]).await;
        let up = Upstream::new(8, Duration::from_secs(2), Duration::from_millis(20));
        fetch(&up, &o, get("/")).await;
        assert_eq!(up.idle(), 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        fetch(&up, &o, get("/")).await;
        assert_eq!(o.accepted(), 2);
    }

    /// Chunked-encodes `chunks`, with an extension on every other chunk and a trailer.
    fn chunked(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().filter(|c| !c.is_empty()).enumerate() {
            if i % 2 == 0 {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            } else {
                out.extend_from_slice(format!("{:X};ext={i}\r\n", c.len()).as_bytes());
            }
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
        out
    }

    /// Feeds `stream` to a decoder in pieces ending at `cuts`; returns the data and whether the
    /// end was seen exactly after the last byte.
    fn decode_in_pieces(stream: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), &'static str> {
        let mut dec = Chunked::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(stream.len())).collect();
        ends.sort_unstable();
        ends.push(stream.len());
        for end in ends {
            buf.extend_from_slice(stream.get(at..end).unwrap_or_default());
            at = at.max(end);
            loop {
                match dec.decode(&mut buf)? {
                    Step::Data(d) => {
                        assert!(!d.is_empty() && d.len() <= MAX_FRAME);
                        out.extend_from_slice(&d);
                    }
                    Step::More => break,
                    Step::End => return Ok((out, at == stream.len() && buf.is_empty())),
                }
            }
        }
        Ok((out, false))
    }

    proptest! {
        #[test]
        fn chunked_decoding_ignores_chunking_and_splits(
            chunks in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(0usize..3000, 0..12),
        ) {
            let stream = chunked(&chunks);
            let (data, ended) = decode_in_pieces(&stream, &cuts).unwrap();
            prop_assert_eq!(data, chunks.concat());
            prop_assert!(ended);
        }

        #[test]
        fn arbitrary_chunked_streams_keep_the_decoder_s_promises(
            data in proptest::collection::vec(
                prop::sample::select(b"0123456789abcdefABXZ;= \t\r\n".to_vec()), 0..400),
        ) {
            fuzz_chunked(&data);
        }
    }

    #[test]
    fn large_chunks_give_bounded_frames() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let stream = chunked(&[big.clone(), b"tail".to_vec()]);
        let (data, ended) = decode_in_pieces(&stream, &[10, 70_000]).unwrap();
        assert!(ended);
        assert_eq!(data, [big, b"tail".to_vec()].concat());
    }

    #[test]
    fn chunked_decoder_refuses_bad_framing() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nbad\n\r\n",
            b"-1\r\n",
            b" 5\r\n",
            b"5;\x00\r\n",
        ] {
            assert!(
                decode_in_pieces(bad, &[]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut trailer = b"0\r\n".to_vec();
        for _ in 0..2000 {
            trailer.extend_from_slice(b"x-t: 0123456789\r\n");
        }
        trailer.extend_from_slice(b"\r\n");
        assert_eq!(
            decode_in_pieces(&trailer, &[]),
            Err("chunked trailer section too large")
        );
        // An error is sticky.
        let mut dec = Chunked::new();
        let mut buf = BytesMut::from(&b"x"[..]);
        assert!(dec.decode(&mut buf).is_err());
        assert!(dec.decode(&mut BytesMut::from(&b"0\r\n\r\n"[..])).is_err());
    }

    #[test]
    fn content_length_values() {
        let parse = |v: &[u8]| {
            let mut seen = None;
            content_length(v, &mut seen).map(|_| seen)
        };
        assert_eq!(parse(b"0"), Ok(Some(0)));
        assert_eq!(parse(b"12, 12 ,12"), Ok(Some(12)));
        assert_eq!(parse(b"18446744073709551615"), Ok(Some(u64::MAX)));
        for bad in [
            &b""[..],
            b"1,",
            b"1, 2",
            b"0x1",
            b"-1",
            b"18446744073709551616",
            b"1 2",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
