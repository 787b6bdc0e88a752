//! Keep-alive connections to the origin: a small pool of HTTP/1.1 connections, reused last-in
//! first-out.
//!
//! Why not `hyper_util`'s pooled client: on the cache-miss path it was the largest single cost
//! after hyper's own parsing (a hash map keyed by scheme and authority hashed with SipHash on
//! every checkout and return, a spawned task per response to wait for the connection to become
//! ready again, and large boxed futures moved around), about 8,500 instructions a request under
//! callgrind. The shield has one origin, so the pool is one mutex-guarded vector.
//!
//! A connection goes back to the pool when its response body has been read to the end (the
//! response head alone is not enough: HTTP/1.1 cannot start the next request before). A body
//! dropped half-way takes its connection with it. Connections idle longer than `idle_timeout`
//! are dropped at checkout. A request that a reused connection could not even send (the origin
//! closed it while it sat idle) is retried once on a new connection; one that was sent is never
//! retried, since it may not be idempotent. Upgrades (WebSocket) get a connection of their own,
//! which never returns to the pool.
//!
//! Memory is bounded by `max_idle` idle connections plus the ones in use, which the routes'
//! gates and the listener's connection cap bound.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::body::Body;

/// Why the origin gave no response.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, DNS, timeout).
    Connect(std::io::Error),
    /// The connection failed while the request was sent or the response awaited.
    Http(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connecting to the origin: {e}"),
            UpstreamError::Http(e) => write!(f, "origin connection: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(e) => Some(e),
            UpstreamError::Http(e) => Some(e),
        }
    }
}

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

struct Slots {
    /// The origin the idle connections lead to; a reload to another origin empties the pool.
    authority: String,
    /// Counts origin changes, so a connection to the old origin is not returned to the pool
    /// (compared instead of the authority: no string per request).
    generation: u64,
    idle: Vec<Idle>,
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
                idle: Vec::new(),
            }),
            max_idle,
            connect_timeout,
            idle_timeout,
        })
    }

    /// Idle connections now (for tests and metrics).
    pub fn idle(&self) -> usize {
        self.slots.lock().map_or(0, |s| s.idle.len())
    }

    /// A ready idle connection to `authority`, newest first; stale and closed ones are dropped.
    /// Also returns the pool's generation for `authority`, which the connection carries back.
    fn checkout(&self, authority: &str) -> (Option<SendRequest<Body>>, u64) {
        let Ok(mut s) = self.slots.lock() else {
            return (None, u64::MAX);
        };
        if s.authority != authority {
            s.idle.clear();
            s.authority = authority.to_string();
            s.generation += 1;
            return (None, s.generation);
        }
        let now = Instant::now();
        while let Some(i) = s.idle.pop() {
            if now.duration_since(i.since) < self.idle_timeout && !i.tx.is_closed() {
                return (Some(i.tx), s.generation);
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
        if s.generation == generation && s.idle.len() < self.max_idle {
            s.idle.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    async fn connect(
        &self,
        authority: &http::uri::Authority,
        upgrades: bool,
    ) -> Result<SendRequest<Body>, UpstreamError> {
        let target = (
            authority.host().trim_matches(['[', ']']).to_string(),
            authority.port_u16().unwrap_or(80),
        );
        let stream = tokio::time::timeout(self.connect_timeout, async {
            let mut last = None;
            for addr in tokio::net::lookup_host(target).await? {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the origin")
            }))
        })
        .await
        .map_err(|_| {
            UpstreamError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let sock = socket2::SockRef::from(&stream);
        let _ = sock
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
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
        mut req: Request<Body>,
        upgrade: bool,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if upgrade {
            let mut tx = self.connect(authority, true).await?;
            let resp = tx.send_request(req).await.map_err(UpstreamError::Http)?;
            return Ok(resp.map(|b| PooledBody::new(b, None)));
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
                    return Ok(resp.map(|b| PooledBody::new(b, home)));
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
}

/// Where a connection goes back when its response has been read.
struct Home {
    pool: Arc<Upstream>,
    generation: u64,
    tx: SendRequest<Body>,
}

/// The origin's response body; at its end, its connection returns to the pool.
pub struct PooledBody {
    inner: Incoming,
    home: Option<Home>,
}

impl PooledBody {
    fn new(inner: Incoming, home: Option<Home>) -> Self {
        let mut b = PooledBody { inner, home };
        if b.inner.is_end_stream() {
            b.release();
        }
        b
    }

    fn release(&mut self) {
        if let Some(h) = self.home.take() {
            h.pool.give_back(h.generation, h.tx);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.home = None,
            _ => {}
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
