//! The shield's own HTTP/1.1 reader and writer for the requests a flood is made of: bodiless
//! HTTP/1.1 requests in origin form. Everything else on the connection goes to hyper.
//!
//! Why: on the cache-miss and 429 paths hyper's server dispatcher (its per-request timer, body
//! channel and state machine) cost more than the shield's whole decision. This loop parses a
//! head with `httparse` (the parser hyper uses), builds the `Request` from slices of the read
//! buffer without copying, calls `proxy::handle` (in its steps), and writes the response head
//! and the first body frame with one vectored write.
//!
//! Hand-off: the first request this loop does not take (a body, `Expect`, an upgrade,
//! HTTP/1.0, absolute or asterisk form, `CONNECT`, a head too large or malformed, anything the
//! `http` types refuse) is left unparsed, and the connection, with every byte read so far,
//! continues under hyper until it closes. hyper then answers errors (400, 431) exactly as it
//! would have from the start. Nothing is written before that decision, so the client sees one
//! server either way.
//!
//! Timeouts: the first head must be complete within `header_read_timeout` of the start, a
//! later one within `header_read_timeout` of its first byte; between requests the connection's
//! idle watchdog (`server`) applies, and it also covers a client that stops reading a response.
//! On shutdown the loop finishes the request in progress, says `connection: close`, and closes.
//! While a response body is awaited the connection is still read, so a client that has gone
//! ends the response at once (as in hyper) instead of holding the origin until the idle timeout.
//!
//! Response framing follows hyper's server rules, so a response is sent the same way whichever
//! reader took the request: no body for HEAD, 1xx, 204 and 304; `content-length` when the body's
//! size is known (a handler's own header wins), chunked otherwise; `date` added when missing;
//! `connection: close` when the client asked for it. A body that fails before any of it was
//! written (an origin that sends a head and then drops the connection) is answered with the
//! shield's 502 page instead, since nothing of the response is on the wire yet; one that fails
//! later, or ends short of its length, closes the connection.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::body::{Body, ReqBody};
use crate::proxy::{Begun, ConnInfo, Decided};
use crate::rawhead::Kind as RawKind;
use crate::state::Shared;

/// hyper's own limit on request header fields, kept so both readers agree.
const MAX_HEADERS: usize = 100;
/// hyper's longest request target; longer ones get its 414.
const MAX_URI_BYTES: usize = 65534;
/// Read-buffer growth step.
const READ_CHUNK: usize = 8192;

/// What the loop left behind.
pub(crate) enum Outcome<I> {
    /// The connection is finished (closed by either side, timed out, or shut down).
    Done,
    /// A request this loop does not take: hyper continues with the IO and these bytes first.
    Handoff(I, Bytes),
}

/// Limits the loop applies, from the listener's settings.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// Serves requests on `io` until the connection ends or a request needs hyper.
pub(crate) async fn serve<I>(
    mut io: I,
    conn: &Arc<ConnInfo>,
    limits: Limits,
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
    busy: &Arc<AtomicUsize>,
) -> Outcome<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut spans: Vec<(Span, Span)> = Vec::new();
    // Armed at the start for the first head; later only once a head has begun to arrive.
    let deadline = tokio::time::sleep(limits.header_read_timeout);
    tokio::pin!(deadline);
    let mut armed = true;
    // A second view of the signal, read between requests.
    let stopping = shutdown.clone();
    // One wait for the shutdown signal for the connection's whole life: a new one per request
    // would register with the signal and leave it again every time.
    let stop = shutdown.changed();
    tokio::pin!(stop);
    // Bytes of a partial head already known to hold no end of head: a head sent a byte at a
    // time is parsed once per line, not once per byte.
    let mut scanned = 0;
    loop {
        // 1. A complete head, or a reason to stop.
        let (req, close) = loop {
            if *stopping.borrow() {
                return Outcome::Done;
            }
            if head_may_end(&buf, scanned) {
                match take(&mut buf, limits.max_header_bytes, &mut spans) {
                    Taken::Request(r, close) => break (r, close),
                    Taken::Handoff => return Outcome::Handoff(io, buf.freeze()),
                    Taken::Partial => {}
                }
            }
            scanned = buf.len();
            if buf.len() > limits.max_header_bytes {
                // hyper answers 431 for a head over the limit.
                return Outcome::Handoff(io, buf.freeze());
            }
            if !buf.is_empty() && !armed {
                deadline
                    .as_mut()
                    .reset(deadline_in(limits.header_read_timeout));
                armed = true;
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(READ_CHUNK);
            }
            let n = if buf.is_empty() && !armed {
                // Between requests: the idle watchdog outside bounds the wait.
                tokio::select! {
                    biased;
                    r = io.read_buf(&mut buf) => r,
                    _ = &mut stop => return Outcome::Done,
                }
            } else {
                tokio::select! {
                    biased;
                    r = io.read_buf(&mut buf) => r,
                    _ = &mut deadline => {
                        shared.metrics.conn_drop(crate::metrics::ConnDrop::Timeout);
                        return Outcome::Done;
                    }
                    _ = &mut stop => return Outcome::Done,
                }
            };
            match n {
                Ok(0) | Err(_) => return Outcome::Done,
                Ok(_) => {}
            }
        };
        armed = false;
        scanned = 0;

        // 2. The answer.
        let method = req.method().clone();
        let resp = {
            let _busy = crate::server::Busy::enter(busy.clone());
            // `proxy::handle` in its steps, so that the future of `forward` is moved into this
            // loop's state directly rather than inside another layer.
            let rt = shared.runtime.load_full();
            let begun = Begun::new(shared, &rt, conn, &req);
            // (`proxy::serve` in its two steps: a refused request builds no future for the rest.)
            let (route, client) = (begun.route, begun.client);
            let (resp, decision) = match crate::proxy::decide(shared, &rt, conn, route, client, req)
            {
                Decided::Answer(r, d) => (r, d),
                Decided::Onward(req, found) => {
                    crate::proxy::forward(shared, &rt, conn, route, client, req, found).await
                }
            };
            begun.finish(shared, &resp, decision);
            resp
        };

        // 3. The response. A shutdown that began meanwhile closes the connection after it, and
        // the response says so (as hyper's graceful shutdown does).
        let close = close || *stopping.borrow();
        let keep = match write_response(
            &mut io,
            &mut out,
            &mut buf,
            limits.max_header_bytes,
            &method,
            close,
            resp,
        )
        .await
        {
            Ok(keep) => keep,
            Err(_) => return Outcome::Done,
        };
        if !keep {
            let _ = io.shutdown().await;
            return Outcome::Done;
        }
    }
}

/// The instant `d` from now; a duration too long for the clock (a configured timeout of
/// centuries) gives a deadline about 30 years away, as tokio's own `sleep` does, not a panic.
pub(crate) fn deadline_in(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// A field name the shield meets on most messages, found by its length and compared as whole
/// words without regard to case; `None` for any other name (parsed the general way). The `http`
/// crate lowercases every name byte by byte into a scratch buffer before it matches; this is the
/// same answer with less work for the names a head is mostly made of.
pub(crate) fn common_name(b: &[u8]) -> Option<HeaderName> {
    // By length: each list holds at most a few names.
    static KNOWN: std::sync::OnceLock<Vec<Vec<Known>>> = std::sync::OnceLock::new();
    if b.len() < 4 || b.len() > 24 {
        return None;
    }
    let known = KNOWN.get_or_init(|| {
        use header as h;
        [
            h::HOST,
            h::DATE,
            h::ETAG,
            h::VARY,
            h::SERVER,
            h::ACCEPT,
            h::COOKIE,
            h::PRAGMA,
            h::REFERER,
            h::EXPIRES,
            h::UPGRADE,
            h::LOCATION,
            h::IF_RANGE,
            h::CONNECTION,
            h::USER_AGENT,
            h::SET_COOKIE,
            HeaderName::from_static("keep-alive"),
            h::CONTENT_TYPE,
            h::CACHE_CONTROL,
            h::LAST_MODIFIED,
            h::ACCEPT_RANGES,
            h::IF_NONE_MATCH,
            h::CONTENT_LENGTH,
            h::ACCEPT_ENCODING,
            h::ACCEPT_LANGUAGE,
            HeaderName::from_static("x-forwarded-for"),
            h::CONTENT_ENCODING,
            h::TRANSFER_ENCODING,
            h::IF_MODIFIED_SINCE,
        ]
        .into_iter()
        .fold(
            std::iter::repeat_with(Vec::new).take(25).collect(),
            |mut by_len: Vec<Vec<Known>>, n| {
                let k = Known::new(n);
                if let Some(list) = by_len.get_mut(k.len) {
                    list.push(k);
                }
                by_len
            },
        )
    });
    let list = known.get(b.len())?;
    if list.is_empty() {
        return None;
    }
    let words = Known::words(b);
    list.iter()
        .find(|k| {
            (words[0] | k.mask[0]) == k.word[0]
                && (words[1] | k.mask[1]) == k.word[1]
                && (words[2] | k.mask[2]) == k.word[2]
        })
        .map(|k| k.name.clone())
}

/// A common name as three little-endian words, with the bit that makes a letter lowercase set
/// in `mask` wherever the name has a letter: `(input | mask) == word` then holds exactly when
/// the input is the name in any mix of cases (other bytes must match as they are).
struct Known {
    len: usize,
    word: [u64; 3],
    mask: [u64; 3],
    name: HeaderName,
}

impl Known {
    fn new(name: HeaderName) -> Known {
        let lower = name.as_str().as_bytes();
        let mut mask = [0u8; 24];
        for (m, c) in mask.iter_mut().zip(lower) {
            if c.is_ascii_lowercase() {
                *m = 0x20;
            }
        }
        Known {
            len: lower.len(),
            word: Known::words(lower),
            mask: Known::words(&mask),
            name,
        }
    }

    /// The first 24 bytes of `b` (zero-padded) as words.
    fn words(b: &[u8]) -> [u64; 3] {
        let mut buf = [0u8; 24];
        let n = b.len().min(24);
        buf[..n].copy_from_slice(&b[..n]);
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        [word(0), word(1), word(2)]
    }
}

/// A field name: [`common_name`], or parsed (and checked) by the `http` crate.
pub(crate) fn field_name(b: &[u8]) -> Option<HeaderName> {
    common_name(b).or_else(|| HeaderName::from_bytes(b).ok())
}

/// Whether `buf` may hold a complete head, given that its first `scanned` bytes did not: an
/// empty line (`\n\n` or `\n\r\n`; httparse accepts a bare LF) ends somewhere after them.
/// Used for request heads here and for response heads in `upstream`.
pub(crate) fn head_may_end(buf: &[u8], scanned: usize) -> bool {
    if scanned == 0 {
        return true;
    }
    buf.get(scanned.saturating_sub(2)..).is_some_and(|tail| {
        tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
    })
}

/// What `take` found in the read buffer.
// Returned once per request and matched at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Taken {
    /// A request this loop serves (its head consumed from the buffer), and whether the client
    /// asked to close after it.
    Request(Request<ReqBody>, bool),
    /// Not a complete head yet.
    Partial,
    /// A head for hyper; nothing consumed.
    Handoff,
}

/// Where a part of the head lies in the buffer.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn of(whole: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
        Span {
            start,
            end: start.saturating_add(part.len()),
        }
    }
    fn slice(self, b: &Bytes) -> Option<Bytes> {
        (self.start <= self.end && self.end <= b.len()).then(|| b.slice(self.start..self.end))
    }
}

/// Parses the head at the front of `buf` once and, when this loop takes it, consumes it and
/// builds the request from slices of its bytes (no copy). A head the `http` types refuse is
/// put back and handed to hyper, which answers it. `spans` is the connection's scratch space.
fn take(buf: &mut BytesMut, max_header_bytes: usize, spans: &mut Vec<(Span, Span)>) -> Taken {
    if buf.is_empty() {
        return Taken::Partial;
    }
    // Uninitialised slots: filling 100 empty headers on every request costs more than the
    // parse of a typical head.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Taken::Partial,
        Err(_) => return Taken::Handoff,
    };
    if len > max_header_bytes || req.version != Some(1) {
        return Taken::Handoff;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Taken::Handoff;
    };
    // hyper answers 414 above this length; the two readers must agree.
    if method == "CONNECT" || !path.starts_with('/') || path.len() > MAX_URI_BYTES {
        return Taken::Handoff;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Taken::Handoff;
    };
    let path = Span::of(buf, path.as_bytes());
    let mut close = false;
    spans.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if h.value != b"0" {
                return Taken::Handoff;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Taken::Handoff;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Taken::Handoff;
                }
            }
        }
        spans.push((Span::of(buf, name), Span::of(buf, h.value)));
    }
    let bytes = buf.split_to(len).freeze();
    match build(&bytes, method, path, spans) {
        Some(r) => Taken::Request(r, close),
        None => {
            // Put the head back in front of what follows it.
            let mut all = BytesMut::with_capacity(bytes.len() + buf.len());
            all.extend_from_slice(&bytes);
            all.extend_from_slice(buf);
            *buf = all;
            Taken::Handoff
        }
    }
}

/// The `http` request from a head's bytes; `None` when a part fails the `http` crate's own
/// checks.
fn build(
    bytes: &Bytes,
    method: Method,
    path: Span,
    headers: &[(Span, Span)],
) -> Option<Request<ReqBody>> {
    let uri = http::Uri::from_maybe_shared(path.slice(bytes)?).ok()?;
    // Room for the forwarding headers the shield adds on the way to the origin.
    let mut map = HeaderMap::with_capacity(headers.len() + 6);
    for (name, value) in headers {
        let name = field_name(bytes.get(name.start..name.end)?)?;
        let value = HeaderValue::from_maybe_shared(value.slice(bytes)?).ok()?;
        map.append(name, value);
    }
    let mut r = Request::new(ReqBody::Empty);
    *r.method_mut() = method;
    *r.uri_mut() = uri;
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = map;
    Some(r)
}

/// How the body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// Nothing after the head.
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// Writes `resp` for a request with `method`; returns whether the connection stays open.
/// While a body frame is awaited, the connection is read into `inbox` (up to `inbox_max`
/// bytes, kept for the next request): a client that has gone (end of stream, as hyper does
/// without half-close) ends the response at once, so a stalled body does not hold what it holds
/// (an origin slot, a cache fill) until the idle timeout.
async fn write_response<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    inbox: &mut BytesMut,
    inbox_max: usize,
    method: &Method,
    client_close: bool,
    resp: Response<Body>,
) -> io::Result<bool>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (parts, mut body) = resp.into_parts();
    out.clear();
    let (framing, server_close) = encode_head(out, method, client_close, &parts, &body);
    let mut keep = !client_close && !server_close;
    // A shield page (a 429 to a flood, most often): its whole body is at hand, so head and body
    // go out in one write, without the frame loop below.
    if let Some(data) = body.fixed_bytes() {
        let data: Option<&[u8]> = match framing {
            Framing::Length(n) if n == data.len() as u64 => Some(data),
            Framing::None => Some(&[]),
            // (Not produced for such a body; the loop below handles it.)
            _ => None,
        };
        if let Some(data) = data {
            write_all(io, &mut [&out[..], data]).await?;
            return Ok(keep);
        }
    }
    let mut head = Some(&out[..]);
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    if framing != Framing::None && !body.is_end_stream() {
        loop {
            let next = loop {
                if inbox.len() >= inbox_max {
                    break body.frame().await;
                }
                tokio::select! {
                    biased;
                    f = body.frame() => break f,
                    r = io.read_buf(inbox) => match r {
                        Ok(0) | Err(_) => {
                            return Err(io::ErrorKind::ConnectionAborted.into());
                        }
                        Ok(_) => {}
                    },
                }
            };
            let frame = match next {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(_)) if head.is_some() => {
                    // Nothing of this response is on the wire yet (the head goes out with the
                    // first bytes): the client gets the shield's 502 page, not a silent close.
                    return bad_gateway(io, out, inbox, inbox_max, method).await;
                }
                Some(Err(_)) => return Err(io::Error::other("response body failed")),
            };
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers are not sent over HTTP/1.1 here
            };
            let last = body.is_end_stream();
            match framing {
                Framing::Length(_) => {
                    if data.len() as u64 > left {
                        data.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                        keep = false;
                    }
                    left -= data.len() as u64;
                    write_all(io, &mut [head.take().unwrap_or(&[]), &data]).await?;
                    if left == 0 {
                        break;
                    }
                }
                Framing::Chunked => {
                    if !data.is_empty() {
                        let mut size = [0u8; 20];
                        let size = chunk_size_line(&mut size, data.len());
                        let tail: &[u8] = if last { b"\r\n0\r\n\r\n" } else { b"\r\n" };
                        write_all(io, &mut [head.take().unwrap_or(&[]), size, &data, tail]).await?;
                        if last {
                            return Ok(keep);
                        }
                    }
                }
                Framing::None => {}
            }
            if last {
                break;
            }
        }
    }
    match framing {
        Framing::Chunked => write_all(io, &mut [head.take().unwrap_or(&[]), b"0\r\n\r\n"]).await?,
        _ => {
            if let Some(h) = head.take() {
                write_all(io, &mut [h]).await?;
            }
        }
    }
    if matches!(framing, Framing::Length(_)) && left > 0 {
        // The body ended short of its length: the client must not wait for the rest.
        keep = false;
    }
    Ok(keep)
}

/// The shield's 502 page in place of a response whose body failed before any of it was written;
/// the connection closes after it, as after any failed body. Rare: kept out of line and boxed, so
/// that it neither sizes nor slows `write_response` on every request.
#[cold]
#[inline(never)]
fn bad_gateway<'a, I>(
    io: &'a mut I,
    out: &'a mut Vec<u8>,
    inbox: &'a mut BytesMut,
    inbox_max: usize,
    method: &'a Method,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<bool>> + Send + 'a>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let page = crate::pages::page(StatusCode::BAD_GATEWAY, "error", Some(10));
    Box::pin(async move {
        write_response(io, out, inbox, inbox_max, method, true, page)
            .await
            .map(|_| false)
    })
}

/// The status line and headers, as hyper's server writes them. Returns the framing and whether
/// the response itself says `connection: close`.
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    client_close: bool,
    parts: &http::response::Parts,
    body: &Body,
) -> (Framing, bool) {
    let status = parts.status;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A shield page's own fields, encoded once (see `body::FixedHead`).
    if let Some(h) = body.fixed_head() {
        out.extend_from_slice(&h.encoded);
    }
    let head_req = method == Method::HEAD;
    let no_content = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let can_body = !head_req && !no_content;
    // What the body says of its length: nothing (already at its end), exact, or unknown.
    let known: Option<Option<u64>> = if body.is_end_stream() {
        None
    } else {
        Some(body.size_hint().exact())
    };
    let mut w = Fields {
        out,
        head_req,
        no_content,
        can_body,
        known,
        framing: None,
        wrote_date: false,
        server_close: false,
        wrote_connection: false,
    };
    // An origin's fields as received (see `rawhead`), then the map's.
    if let Some(raw) = body.raw_head() {
        w.raw(raw);
    }
    for (name, value) in &parts.headers {
        let class = match *name {
            header::CONTENT_LENGTH => Class::ContentLength,
            header::TRANSFER_ENCODING => Class::TransferEncoding,
            header::TRAILER => Class::Trailer,
            header::CONNECTION => Class::Connection,
            header::DATE => Class::Date,
            _ => Class::Other,
        };
        w.field(class, name.as_str().as_bytes(), value.as_bytes());
    }
    let Fields {
        out,
        framing,
        wrote_date,
        server_close,
        wrote_connection,
        ..
    } = w;
    let framing = match framing {
        Some(f) => f,
        None => match known {
            Some(None) if can_body => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            Some(None) => Framing::None,
            None | Some(Some(0)) => {
                if !no_content && !head_req {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(Some(n)) => {
                if !no_content {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                Framing::Length(n)
            }
        },
    };
    let framing = if can_body { framing } else { Framing::None };
    let framing = if framing == Framing::Length(0) {
        Framing::None
    } else {
        framing
    };
    if client_close && !wrote_connection {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, server_close)
}

/// What the writer makes of a field.
#[derive(Clone, Copy)]
enum Class {
    Other,
    ContentLength,
    TransferEncoding,
    Trailer,
    Connection,
    Date,
}

/// A response head's fields being written, and what they have said so far.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    head_req: bool,
    no_content: bool,
    can_body: bool,
    known: Option<Option<u64>>,
    framing: Option<Framing>,
    wrote_date: bool,
    server_close: bool,
    wrote_connection: bool,
}

/// What becomes of a field on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Nothing.
    Skip,
    /// The field as it is.
    AsIs,
    /// `content-length: N`, the body's own length.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
}

impl Fields<'_> {
    /// What becomes of a field (the state it changes, nothing written yet).
    fn act(&mut self, class: Class, value: &[u8]) -> Act {
        match class {
            Class::ContentLength => {
                if self.framing.is_some() || self.no_content {
                    return Act::Skip;
                }
                match self.known {
                    // The body's own size is what goes on the wire, so it is what the header
                    // says, whatever the handler's copy of the header claimed.
                    Some(Some(n)) => {
                        self.framing = Some(Framing::Length(n));
                        Act::Length(n)
                    }
                    Some(None) => match std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                    {
                        Some(n) => {
                            self.framing = Some(Framing::Length(n));
                            Act::AsIs
                        }
                        None => Act::Skip,
                    },
                    // An empty body: only a HEAD answer keeps the length it describes.
                    None if self.head_req => {
                        self.framing = Some(Framing::Length(0));
                        Act::AsIs
                    }
                    None => Act::Skip,
                }
            }
            Class::TransferEncoding => {
                if !self.can_body || self.framing.is_some() {
                    return Act::Skip;
                }
                self.framing = Some(Framing::Chunked);
                Act::Chunked
            }
            Class::Trailer if !self.can_body => Act::Skip,
            Class::Connection => {
                self.wrote_connection = true;
                if value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
                {
                    self.server_close = true;
                }
                Act::AsIs
            }
            Class::Date => {
                self.wrote_date = true;
                Act::AsIs
            }
            Class::Trailer | Class::Other => Act::AsIs,
        }
    }

    /// Writes what `act` says of a field.
    fn write(&mut self, act: Act, name: &[u8], value: &[u8]) {
        match act {
            Act::Skip => {}
            Act::AsIs => push_field(self.out, name, value),
            Act::Length(n) => {
                self.out.extend_from_slice(b"content-length: ");
                self.out
                    .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                self.out.extend_from_slice(b"\r\n");
            }
            Act::Chunked => self
                .out
                .extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
    }

    /// Writes one field, or what it must become on the wire, or nothing.
    fn field(&mut self, class: Class, name: &[u8], value: &[u8]) {
        let act = self.act(class, value);
        self.write(act, name, value);
    }

    /// An origin's fields as received (see `rawhead`). Fields that go on the wire unchanged,
    /// each on a line already in the form `name: value\r\n`, are copied a run of adjacent lines
    /// at a time: most of a plain head is one or two such runs.
    fn raw(&mut self, raw: &crate::rawhead::RawHead) {
        let bytes = raw.bytes();
        let mut run: Option<std::ops::Range<usize>> = None;
        for f in raw.field_list() {
            let class = match f.kind {
                RawKind::Other | RawKind::Via | RawKind::Replaced => Class::Other,
                RawKind::ContentLength => Class::ContentLength,
                RawKind::Date => Class::Date,
                RawKind::HopByHop
                | RawKind::TransferEncoding
                | RawKind::Connection
                | RawKind::Drop => continue,
            };
            let (name, value) = (f.name(bytes), f.value(bytes));
            let act = self.act(class, value);
            let unchanged = match act {
                Act::AsIs => true,
                Act::Length(n) => itoa::Buffer::new().format(n).as_bytes() == value,
                Act::Skip | Act::Chunked => false,
            };
            if let Some(line) = f.line(bytes).filter(|_| unchanged) {
                match &mut run {
                    Some(r) if r.end == line.start => r.end = line.end,
                    _ => {
                        if let Some(r) = run.replace(line) {
                            self.out.extend_from_slice(&bytes[r]);
                        }
                    }
                }
                continue;
            }
            if let Some(r) = run.take() {
                self.out.extend_from_slice(&bytes[r]);
            }
            self.write(act, name, value);
        }
        if let Some(r) = run {
            self.out.extend_from_slice(&bytes[r]);
        }
        if let Some(v) = raw.via {
            self.field(Class::Other, b"via", v.as_bytes());
        }
        if let Some(v) = raw.cache {
            self.field(Class::Other, b"x-qalqan-cache", v.as_bytes());
        }
    }
}

/// Appends one HTTP/1.1 field line, `name: value\r\n`, to `out`. Every head the shield writes
/// (responses here, requests to the origin, its pages' fields) is written with it.
#[inline]
pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunk-size line (`1a2\r\n`) for `len`, in `buf`.
fn chunk_size_line(buf: &mut [u8; 20], len: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len() - 2;
    buf[i] = b'\r';
    buf[i + 1] = b'\n';
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Writes every byte of `parts`, with as few vectored writes as the socket allows.
async fn write_all<I: AsyncWrite + Unpin>(io: &mut I, parts: &mut [&[u8]]) -> io::Result<()> {
    let mut slices: [IoSlice<'_>; 4] = [IoSlice::new(&[]); 4];
    let mut n = 0;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        if n == slices.len() {
            break;
        }
        slices[n] = IoSlice::new(p);
        n += 1;
    }
    let mut bufs = &mut slices[..n];
    while !bufs.is_empty() {
        let written = io.write_vectored(bufs).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, written);
    }
    // A TLS stream may hold encrypted records until flushed; on plain TCP this is free.
    io.flush().await
}

/// The `date` header's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub fn extend(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                *c = (secs, httpdate::fmt_http_date(now));
            }
            out.extend_from_slice(c.1.as_bytes());
        });
    }
}

/// Runs the request reader's parse on arbitrary bytes and checks its promises: a hand-off or a
/// partial head leaves every byte in place; a taken request consumed exactly one head, is a
/// bodiless HTTP/1.1 request in origin form, and left what follows it. For the `h1_request`
/// fuzz target and the property test below; not an API.
#[doc(hidden)]
pub fn fuzz_take(data: &[u8]) {
    for max in [64, 16 * 1024] {
        let mut buf = BytesMut::from(data);
        match take(&mut buf, max, &mut Vec::new()) {
            Taken::Partial | Taken::Handoff => assert_eq!(&buf[..], data, "bytes lost"),
            Taken::Request(r, _) => {
                let used = data.len() - buf.len();
                assert!(used > 0 && used <= max, "consumed {used} of at most {max}");
                assert_eq!(&buf[..], &data[used..], "what follows the head changed");
                assert_eq!(r.version(), Version::HTTP_11);
                assert!(r.uri().scheme().is_none() && r.uri().authority().is_none());
                assert!(r.uri().path().starts_with('/'));
                assert_ne!(r.method(), Method::CONNECT);
                assert!(r.body().is_end_stream());
                for name in ["transfer-encoding", "expect", "upgrade"] {
                    assert!(!r.headers().contains_key(name), "{name} taken");
                }
                assert!(
                    r.headers()
                        .get_all(header::CONTENT_LENGTH)
                        .iter()
                        .all(|v| v == "0")
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_keep_the_reader_s_promises(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            fuzz_take(&data);
        }

        #[test]
        fn near_valid_heads_keep_the_reader_s_promises(
            method in prop::sample::select(vec!["GET", "HEAD", "POST", "CONNECT", "OPTIONS", "G\x7fT"]),
            target in "[ -~]{0,40}",
            version in prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "]),
            headers in proptest::collection::vec(
                ("(content-length|transfer-encoding|connection|expect|upgrade|host|x-[a-z]{1,5}|bad name)",
                 "[ -~]{0,20}"),
                0..6,
            ),
            eol in prop::sample::select(vec!["\r\n", "\n"]),
            tail in "[ -~]{0,30}",
        ) {
            let mut head = format!("{method} {target} {version}{eol}");
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}{eol}"));
            }
            head.push_str(eol);
            head.push_str(&tail);
            fuzz_take(head.as_bytes());
        }

        /// The short cut for common names gives what the `http` crate gives, for any bytes and
        /// for the common names in any case.
        #[test]
        fn field_names_are_what_the_http_crate_makes_of_them(
            any_bytes in proptest::collection::vec(any::<u8>(), 0..24),
            name in "(host|date|etag|vary|server|accept|cookie|pragma|referer|expires|upgrade|\
                location|if-range|connection|user-agent|set-cookie|keep-alive|content-type|\
                cache-control|last-modified|accept-ranges|if-none-match|content-length|\
                accept-encoding|accept-language|x-forwarded-for|content-encoding|\
                transfer-encoding|if-modified-since|hosT|dat3|x-[a-z]{1,14})",
            upper in proptest::collection::vec(any::<bool>(), 24),
        ) {
            prop_assert_eq!(field_name(&any_bytes), HeaderName::from_bytes(&any_bytes).ok());
            let mixed: Vec<u8> = name
                .bytes()
                .zip(upper.iter().cycle())
                .map(|(b, &u)| if u { b.to_ascii_uppercase() } else { b })
                .collect();
            let want = HeaderName::from_bytes(&mixed).ok();
            prop_assert_eq!(field_name(&mixed), want.clone());
            if let Some(n) = common_name(&mixed) {
                prop_assert_eq!(Some(n), want);
            }
        }
    }

    #[test]
    fn common_names_cover_every_entry_in_any_case() {
        for n in [
            "Host",
            "DATE",
            "ETag",
            "Vary",
            "Server",
            "Accept",
            "Cookie",
            "Pragma",
            "Referer",
            "Expires",
            "Upgrade",
            "Location",
            "If-Range",
            "Connection",
            "User-Agent",
            "Set-Cookie",
            "Keep-Alive",
            "Content-Type",
            "Cache-Control",
            "Last-Modified",
            "Accept-Ranges",
            "If-None-Match",
            "Content-Length",
            "Accept-Encoding",
            "Accept-Language",
            "X-Forwarded-For",
            "Content-Encoding",
            "Transfer-Encoding",
            "If-Modified-Since",
        ] {
            let got = common_name(n.as_bytes()).unwrap_or_else(|| panic!("{n} not covered"));
            assert_eq!(got, HeaderName::from_bytes(n.as_bytes()).unwrap(), "{n}");
            assert_eq!(got.as_str(), n.to_ascii_lowercase());
        }
        assert_eq!(common_name(b"x-custom"), None);
        assert_eq!(common_name(b"hos t"), None);
    }

    fn taken(buf: &[u8], max: usize) -> Taken {
        take(&mut BytesMut::from(buf), max, &mut Vec::new())
    }

    fn fast(buf: &[u8]) -> Option<bool> {
        match taken(buf, 16384) {
            Taken::Request(_, close) => Some(close),
            _ => None,
        }
    }

    #[test]
    fn takes_plain_bodiless_requests_and_hands_off_the_rest() {
        assert_eq!(fast(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n"), Some(false));
        assert_eq!(
            fast(b"HEAD / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            fast(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Some(false)
        );
        for other in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
            // DEL in a value: httparse refuses it (and the http crate would); hyper answers.
            b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
        ] {
            // Handed off untouched: hyper sees every byte.
            let mut buf = BytesMut::from(other);
            assert!(
                matches!(take(&mut buf, 16384, &mut Vec::new()), Taken::Handoff),
                "{:?}",
                String::from_utf8_lossy(other)
            );
            assert_eq!(&buf[..], other);
        }
        assert!(matches!(
            taken(b"GET / HTTP/1.1\r\nHost: x\r\n", 16384),
            Taken::Partial
        ));
        // Over the limit: hyper answers 431.
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
        assert!(matches!(taken(big.as_bytes(), 100), Taken::Handoff));
    }

    #[test]
    fn builds_the_request_from_the_head_bytes_and_keeps_what_follows() {
        let mut buf = BytesMut::from(
            &b"GET /search?q=number+one HTTP/1.1\r\nHost: kursiv.media\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next"[..],
        );
        let Taken::Request(r, close) = take(&mut buf, 16384, &mut Vec::new()) else {
            panic!("not taken")
        };
        assert!(!close);
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().path(), "/search");
        assert_eq!(r.uri().query(), Some("q=number+one"));
        assert_eq!(r.headers()["host"], "kursiv.media");
        let all: Vec<_> = r.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert!(r.body().is_end_stream());
        assert_eq!(&buf[..], b"GET /next", "the next request's bytes stay");
    }

    fn head_of(method: Method, status: u16, headers: &[(&str, &str)], body: Body) -> String {
        let mut r = Response::new(body);
        *r.status_mut() = StatusCode::from_u16(status).expect("status");
        for (k, v) in headers {
            r.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let (parts, body) = r.into_parts();
        let mut out = Vec::new();
        let (f, _) = encode_head(&mut out, &method, false, &parts, &body);
        format!("{f:?}|{}", String::from_utf8_lossy(&out))
    }

    #[test]
    fn frames_responses_as_hyper_does() {
        use crate::body::{empty, full};
        let h = head_of(Method::GET, 200, &[("x", "1")], full("hello"));
        assert!(h.starts_with("Length(5)|HTTP/1.1 200 OK\r\nx: 1\r\ncontent-length: 5\r\ndate: "));
        let h = head_of(Method::GET, 200, &[], empty());
        assert!(h.starts_with("None|HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"));
        // HEAD keeps the handler's length and sends nothing.
        let h = head_of(Method::HEAD, 200, &[("content-length", "42")], empty());
        assert!(h.starts_with("None|HTTP/1.1 200 OK\r\ncontent-length: 42\r\n"));
        let h = head_of(Method::HEAD, 200, &[], empty());
        assert!(!h.contains("content-length"));
        // 204 and 304 carry no body; 304 keeps no implicit length either.
        let h = head_of(Method::GET, 204, &[("content-length", "0")], empty());
        assert!(h.starts_with("None|HTTP/1.1 204 No Content\r\ndate: "));
        let h = head_of(Method::GET, 304, &[("etag", "\"a\"")], empty());
        assert!(h.starts_with("None|HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\ndate: "));
        // Unknown length: chunked.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(tx);
        let stream = Body::boxed(crate::body::ChannelBody::new(rx));
        let h = head_of(Method::GET, 502, &[], stream);
        assert!(
            h.starts_with("Chunked|HTTP/1.1 502 Bad Gateway\r\ntransfer-encoding: chunked\r\n"),
            "{h}"
        );
        // The handler's date stays; connection: close is noticed.
        let mut r = Response::new(full("x"));
        r.headers_mut().insert(
            header::DATE,
            HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT"),
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let (parts, body) = r.into_parts();
        let mut out = Vec::new();
        let (_, close) = encode_head(&mut out, &Method::GET, true, &parts, &body);
        let s = String::from_utf8_lossy(&out);
        assert!(close);
        assert_eq!(s.matches("date: ").count(), 1);
        assert_eq!(s.matches("connection: ").count(), 1);
    }

    #[test]
    fn the_length_on_the_wire_is_the_body_s() {
        use crate::body::full;
        // A handler's stale header (a cached copy, a bug) must not frame the body wrongly:
        // the client would read the rest as the next response.
        let h = head_of(Method::GET, 200, &[("content-length", "0")], full("hello"));
        assert!(
            h.starts_with("Length(5)|HTTP/1.1 200 OK\r\ncontent-length: 5\r\n"),
            "{h}"
        );
        assert_eq!(h.matches("content-length").count(), 1);
        let h = head_of(
            Method::GET,
            200,
            &[("content-length", "5"), ("content-length", "5")],
            full("hello"),
        );
        assert_eq!(h.matches("content-length").count(), 1, "{h}");
    }

    #[test]
    fn a_head_end_is_looked_for_only_in_new_bytes() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        // Fed a byte at a time, the end is seen exactly when the last byte arrives.
        let mut scanned = 0;
        for n in 1..=head.len() {
            let may = head_may_end(&head[..n], scanned);
            assert_eq!(may, n == head.len() || scanned == 0, "after {n} bytes");
            scanned = n;
        }
        assert!(head_may_end(b"GET / HTTP/1.1\n\n", 15), "bare LF");
        assert!(!head_may_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 10));
    }

    #[test]
    fn number_formatting() {
        assert_eq!(chunk_size_line(&mut [0; 20], 0), b"0\r\n");
        assert_eq!(chunk_size_line(&mut [0; 20], 0x1a2f), b"1a2f\r\n");
    }

    /// An origin's fields as received are written as writing them one by one would write them
    /// (the case of a name aside): lines already in the form `name: value\r\n` copied in runs, the others
    /// (no space or two after the colon, a bare LF, an empty value) rewritten, hop-by-hop ones
    /// left out, the length the body's own, whatever the body knows of itself.
    #[test]
    fn an_origin_s_fields_in_runs_are_what_one_by_one_writes() {
        let head = b"HTTP/1.1 200 OK\r\nServer: o\r\nDate: d\r\nContent-Type: text/html\r\n\
            Content-Length: 5\r\nConnection: keep-alive\r\nX-Tight:t\r\nX-Wide:  w  \r\n\
            X-Bare: b\nX-Empty:\r\nCache-Control: no-store\r\nKeep-Alive: 5\r\nVary: a\r\n\r\n";
        let (bytes, mut fields) = crate::rawhead::parse(head).unwrap();
        for f in &mut fields {
            if f.kind == RawKind::Connection {
                f.kind = RawKind::Drop;
            }
        }
        let mut raw = crate::rawhead::RawHead::new(bytes.clone(), &fields).unwrap();
        raw.via = Some("1.1 qalqan");
        raw.cache = Some("bypass");
        let mut runs = 0;
        for known in [None, Some(None), Some(Some(5)), Some(Some(7))] {
            for head_req in [false, true] {
                let writer = |out| Fields {
                    out,
                    head_req,
                    no_content: false,
                    can_body: !head_req,
                    known,
                    framing: None,
                    wrote_date: false,
                    server_close: false,
                    wrote_connection: false,
                };
                let mut fast = Vec::new();
                let mut w = writer(&mut fast);
                w.raw(&raw);
                let (framing, date) = (w.framing, w.wrote_date);
                let mut slow = Vec::new();
                let mut w = writer(&mut slow);
                for f in raw.field_list() {
                    let class = match f.kind {
                        RawKind::ContentLength => Class::ContentLength,
                        RawKind::Date => Class::Date,
                        RawKind::Other | RawKind::Via | RawKind::Replaced => Class::Other,
                        _ => continue,
                    };
                    w.field(class, f.name(&bytes), f.value(&bytes));
                }
                w.field(Class::Other, b"via", b"1.1 qalqan");
                w.field(Class::Other, b"x-qalqan-cache", b"bypass");
                let same_state = framing == w.framing && date == w.wrote_date;
                assert!(same_state, "known {known:?}, HEAD {head_req}");
                // (A length copied as it came keeps the origin's case of its name.)
                let lines = |b: &[u8]| -> Vec<(String, String)> {
                    String::from_utf8_lossy(b)
                        .split_inclusive("\r\n")
                        .map(|l| {
                            let (n, v) = l.split_once(": ").unwrap_or((l, ""));
                            (n.to_ascii_lowercase(), v.to_string())
                        })
                        .collect()
                };
                assert_eq!(
                    lines(&fast),
                    lines(&slow),
                    "known {known:?}, HEAD {head_req}"
                );
                let text = String::from_utf8_lossy(&fast).into_owned();
                assert!(text.contains("X-Tight: t\r\nX-Wide: w\r\nX-Bare: b\r\nX-Empty: \r\n"));
                assert!(!text.contains("eep-Alive") && !text.contains("onnection"));
                runs += usize::from(text.starts_with("Server: o\r\nDate: d\r\n"));
            }
        }
        assert_eq!(runs, 8);
    }
}
