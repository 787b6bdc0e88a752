//! The one body type the shield hands to hyper, and small constructors.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// Errors inside a body stream (origin reset, size limit).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response and forwarded request body: bytes that live as long as the process (the
/// shield's own pages, rendered once; nothing at all), or any other body, boxed. Answering a
/// flood with 429s then allocates no box per request.
///
/// It is as small as a box (16 bytes, checked below): a `Response` of it stays within the
/// 128 bytes the compiler still moves with a few register stores rather than a `memcpy` call,
/// and responses are moved often on the way out.
pub struct Body(Kind);

enum Kind {
    /// Bytes sent as one frame; `NOTHING` once sent, or when there were none.
    Fixed(&'static Fixed),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

/// Bytes that live as long as the process (a page rendered once), and, for a shield page, the
/// head fields that go with them.
pub struct Fixed {
    pub body: Bytes,
    pub head: Option<FixedHead>,
}

/// A shield page's own head fields: as a map, and encoded once as HTTP/1.1 field lines
/// (`name: value\r\n` each) for the shield's own writer. They are not in the response's header
/// map (building and dropping that map per 429 costs more than the rest of the answer): the
/// HTTP/1.1 writer writes `encoded`, and responses handed to hyper get `fields` added first
/// (`with_fixed_head`). Fields the handler adds to the response's map come after them, and must
/// not repeat them.
pub struct FixedHead {
    pub fields: http::HeaderMap,
    pub encoded: Box<[u8]>,
}

static NOTHING: Fixed = Fixed {
    body: Bytes::new(),
    head: None,
};

const _: () = assert!(std::mem::size_of::<Body>() == 16);

impl Body {
    /// Any other body, boxed.
    pub fn boxed<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body(Kind::Boxed(body.map_err(Into::into).boxed_unsync()))
    }

    /// Bytes that live as long as the process (a page rendered once), sent without a copy.
    pub fn fixed(b: &'static Fixed) -> Body {
        Body(Kind::Fixed(b))
    }

    /// The head fields of a shield page not yet in its response's map (see [`FixedHead`]).
    pub fn fixed_head(&self) -> Option<&'static FixedHead> {
        match self.0 {
            Kind::Fixed(f) => f.head.as_ref(),
            Kind::Boxed(_) => None,
        }
    }
}

/// `resp` with a shield page's own head fields in its map, for every writer but the shield's
/// own HTTP/1.1 one.
pub fn with_fixed_head(mut resp: http::Response<Body>) -> http::Response<Body> {
    if let Some(h) = resp.body().fixed_head() {
        let map = resp.headers_mut();
        let added = std::mem::replace(map, h.fields.clone());
        // (The iterator names a field only at the first of its values.)
        let mut last = None;
        for (name, value) in added {
            if name.is_some() {
                last = name;
            }
            if let Some(name) = &last {
                map.append(name.clone(), value);
            }
        }
    }
    resp
}

impl Default for Body {
    fn default() -> Self {
        empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Fixed(_) => "Body::Fixed",
            Kind::Boxed(_) => "Body::Boxed",
        })
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Fixed(f) => {
                let out = std::mem::replace(f, &NOTHING);
                Poll::Ready((!out.body.is_empty()).then(|| Ok(Frame::data(out.body.clone()))))
            }
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Fixed(f) => f.body.is_empty(),
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Fixed(f) => SizeHint::with_exact(f.body.len() as u64),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}

/// A complete body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    Body::boxed(http_body_util::Full::new(b.into()))
}

/// An empty body.
pub fn empty() -> Body {
    Body(Kind::Fixed(&NOTHING))
}

/// A body that holds a guard (an origin concurrency permit, a connection slot) until the stream
/// ends or is dropped, so the origin counts as busy exactly as long as it is streaming to us.
pub struct Guarded<B, G> {
    inner: B,
    guard: Option<G>,
}

impl<B, G> Guarded<B, G> {
    /// Wraps `inner`, releasing `guard` at end of stream.
    pub fn new(inner: B, guard: G) -> Self {
        Guarded {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B, G> http_body::Body for Guarded<B, G>
where
    B: http_body::Body + Unpin,
    G: Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = r {
            this.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body that first yields bytes already read, then the rest of a stream: used when a response
/// that looked cacheable turns out larger than the cache's object limit mid-read.
pub struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> Prefixed<B> {
    /// `prefix` then `rest`.
    pub fn new(prefix: Bytes, rest: B) -> Self {
        Prefixed {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            rest,
        }
    }
}

impl<B> http_body::Body for Prefixed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

/// A body fed frame by frame through a bounded channel: the cache fill sends the origin's
/// frames to the requester while it keeps a copy.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
}

impl ChannelBody {
    /// Reads frames from `rx` until the sender is dropped.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>) -> Self {
        ChannelBody { rx }
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }
}

/// A client's request body: hyper's, or none at all for a request the shield's own HTTP/1.1
/// reader took (those never have a body; see `h1`).
pub enum ReqBody {
    /// A body hyper reads from the connection (HTTP/2, bodies, upgrades, anything unusual).
    Hyper(hyper::body::Incoming),
    /// No body.
    Empty,
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Hyper(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Hyper(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}
