//! The one body type the shield hands to hyper, and small constructors.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use crate::rawhead::RawHead;

/// Errors inside a body stream (origin reset, size limit).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response and forwarded request body: bytes that live as long as the process (the
/// shield's own pages, rendered once; nothing at all), an origin's response on the shield's own
/// client, or any other body, boxed. Answering a flood with 429s then allocates no box per
/// request, and an origin's response one.
///
/// It is as small as a box (16 bytes, checked below): a `Response` of it stays within the
/// 128 bytes the compiler still moves with a few register stores rather than a `memcpy` call,
/// and responses are moved often on the way out.
pub struct Body(Kind);

enum Kind {
    /// Bytes sent as one frame; `NOTHING` once sent, or when there were none.
    Fixed(&'static Fixed),
    /// Any other body (an origin's response on the own client's path among them), boxed. A
    /// third variant for the origin's would make `Body` 24 bytes: a box of a trait object
    /// leaves room for one other variant only.
    Boxed(Pin<Box<dyn Dyn>>),
}

/// A boxed body, which may carry an origin's head fields (see `rawhead`).
trait Dyn: http_body::Body<Data = Bytes, Error = BoxError> + Send {
    fn raw_head(&self) -> Option<&RawHead> {
        None
    }
    fn raw_head_mut(self: Pin<&mut Self>) -> Option<&mut RawHead> {
        None
    }
}

/// Any body, its errors boxed.
impl<B, F> Dyn for http_body_util::combinators::MapErr<B, F>
where
    B: http_body::Body<Data = Bytes> + Send,
    F: FnMut(B::Error) -> BoxError + Send,
{
}

/// An origin's response on the own client's path: its body, the route's origin permit held
/// until the body ends (the origin counts as busy while it streams), and those of its head's
/// fields not in the response's map (see `rawhead`; only `proxy::pass` leaves any there).
pub(crate) struct Origin {
    pub head: RawHead,
    pub body: Guarded<crate::upstream::PooledBody, crate::gate::Permit>,
}

impl http_body::Body for Origin {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.get_mut().body).poll_frame(cx);
        r.map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Dyn for Origin {
    fn raw_head(&self) -> Option<&RawHead> {
        Some(&self.head)
    }
    fn raw_head_mut(self: Pin<&mut Self>) -> Option<&mut RawHead> {
        Some(&mut self.get_mut().head)
    }
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
/// (`for_hyper`). Fields the handler adds to the response's map come after them, and must
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
        Body(Kind::Boxed(Box::pin(body.map_err(Into::into))))
    }

    /// Bytes that live as long as the process (a page rendered once), sent without a copy.
    pub fn fixed(b: &'static Fixed) -> Body {
        Body(Kind::Fixed(b))
    }

    /// An origin's response on the own client's path.
    pub(crate) fn origin(o: Box<Origin>) -> Body {
        // (A `Box<Origin>` becomes the box of the trait object without a new allocation.)
        let b: Box<dyn Dyn> = o;
        Body(Kind::Boxed(Box::into_pin(b)))
    }

    /// The whole body, when it is bytes that live as long as the process (a shield page, or
    /// nothing) and has not been read yet.
    pub fn fixed_bytes(&self) -> Option<&'static Bytes> {
        match self.0 {
            Kind::Fixed(f) => Some(&f.body),
            _ => None,
        }
    }

    /// The head fields of a shield page not yet in its response's map (see [`FixedHead`]).
    pub fn fixed_head(&self) -> Option<&'static FixedHead> {
        match self.0 {
            Kind::Fixed(f) => f.head.as_ref(),
            _ => None,
        }
    }

    /// An origin's head fields not yet in its response's map (see `rawhead`).
    pub(crate) fn raw_head(&self) -> Option<&RawHead> {
        match &self.0 {
            Kind::Boxed(b) => b.raw_head().filter(|h| !h.is_empty()),
            Kind::Fixed(_) => None,
        }
    }

    /// The same, to change; `None` when the body is not an origin's on the own client's path.
    pub(crate) fn raw_head_mut(&mut self) -> Option<&mut RawHead> {
        match &mut self.0 {
            Kind::Boxed(b) => b.as_mut().raw_head_mut(),
            Kind::Fixed(_) => None,
        }
    }
}

/// Puts into `resp`'s map the fields of an origin's head still outside it (see `rawhead`), so
/// that the map holds every field. For any code that reads a response's fields.
pub(crate) fn complete_head(resp: &mut http::Response<Body>) {
    if resp.body().raw_head().is_some() {
        let mut map = std::mem::take(resp.headers_mut());
        if let Some(h) = resp.body_mut().raw_head_mut() {
            h.move_into(&mut map);
        }
        *resp.headers_mut() = map;
    }
}

/// `resp` with every field in its map (a shield page's own, an origin's still outside it), for
/// every writer but the shield's own HTTP/1.1 one.
pub fn for_hyper(mut resp: http::Response<Body>) -> http::Response<Body> {
    complete_head(&mut resp);
    if let Some(h) = resp.body().fixed_head() {
        crate::rawhead::prepend(resp.headers_mut(), h.fields.clone());
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
            Kind::Boxed(b) => b.as_mut().poll_frame(cx),
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

    /// Wraps `inner` with no guard yet (see `set_guard`).
    pub fn unguarded(inner: B) -> Self {
        Guarded { inner, guard: None }
    }

    /// Holds `guard` from now until the stream ends or is dropped.
    pub fn set_guard(&mut self, guard: Option<G>) {
        self.guard = guard;
    }

    /// The wrapped body; the guard is released.
    pub fn into_inner(self) -> B {
        self.inner
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
