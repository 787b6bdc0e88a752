//! Listeners and connections: accept, cheap refusals before any parsing, PROXY protocol, TLS,
//! HTTP/1.1 and HTTP/2, timeouts, graceful shutdown and reload.
//!
//! The order at accept is deliberate: a blocked address or a connection over the caps is closed
//! before a byte is read, so a flood from blocked clients costs one hash lookup per connection.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use qalqan_net::forwarded::AddrSource;
use qalqan_net::proxy_protocol::{self, ProxyError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::accesslog::AccessLog;
use crate::body::{Body, ReqBody, full};
use crate::config::{Config, Listener};
use crate::metrics::ConnDrop;
use crate::proxy::{ConnInfo, handle};
use crate::state::{Runtime, Shared, tag};

/// How long open connections get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// A running shield: bound addresses and the means to reload and stop it.
pub struct Running {
    /// Public listeners, in configuration order (actual ports when 0 was asked).
    pub listen: Vec<SocketAddr>,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    /// Shared state (metrics, cache) for inspection.
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Replaces the reloadable configuration. Listener, admin, thread and cache-size changes
    /// need a restart and are returned as warnings.
    pub fn reload(&self, new: Config) -> Vec<String> {
        reload(&self.shared, new)
    }

    /// Stops accepting, lets open requests finish (up to 10 s), then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Applies a new configuration to a running shield.
pub fn reload(shared: &Shared, new: Config) -> Vec<String> {
    let old = shared.runtime.load();
    let mut w = Vec::new();
    if old.config.listen != new.listen || old.config.admin != new.admin {
        w.push(
            "listeners changed (addresses, TLS files or proxy_protocol): restart qalqan to apply them"
                .to_string(),
        );
    }
    if old.config.threads != new.threads {
        w.push("server.threads changed: restart qalqan to apply it".to_string());
    }
    if old.config.cache.max_bytes != new.cache.max_bytes
        || old.config.cache.max_object_bytes != new.cache.max_object_bytes
    {
        w.push("cache sizes changed: restart qalqan to apply them".to_string());
    }
    if old.config.block.table_size != new.block.table_size {
        w.push("block.table_size changed: restart qalqan to apply it".to_string());
    }
    // New geo data (a fresher `[geo] dir`) applies at once: episodes only read it.
    shared.attack.set_geo(new.geo.data.clone());
    // A new token, URL or threshold applies to the next push; queued episodes stay queued.
    shared.attack.set_atlas(new.atlas.clone());
    shared.runtime.store(Arc::new(Runtime::new(new)));
    shared.metrics.reloads_ok.fetch_add(1, Relaxed);
    w
}

/// Binds every listener and starts serving. Must run inside a Tokio runtime.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let log = match &config.access_log.path {
        None => AccessLog::off(),
        Some(p) => AccessLog::start(p, config.access_log.max_lines_per_second)
            .with_context(|| format!("cannot open the access log {p}"))?,
    };
    let listeners = config.listen.clone();
    let admin_addr = config.admin;
    let shared = Shared::new(config, log);
    let (tx, rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut bound = Vec::new();
    for l in listeners {
        let tls = match &l.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let sock = TcpListener::bind(l.address)
            .await
            .with_context(|| format!("cannot listen on {}", l.address))?;
        bound.push(sock.local_addr()?);
        tasks.push(tokio::spawn(accept_loop(
            sock,
            l,
            tls,
            shared.clone(),
            rx.clone(),
        )));
    }
    let admin = match admin_addr {
        Some(a) => {
            let sock = TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on the admin address {a}"))?;
            let addr = sock.local_addr()?;
            tasks.push(tokio::spawn(admin_loop(sock, shared.clone(), rx.clone())));
            Some(addr)
        }
        None => None,
    };
    tasks.push(tokio::spawn(attack_ticker(shared.clone(), rx.clone())));
    tasks.push(tokio::spawn(crate::push::run(shared.clone(), rx.clone())));
    Ok(Running {
        listen: bound,
        admin,
        shared,
        shutdown: tx,
        tasks,
    })
}

fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate found in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a private key from {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not form a usable pair")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Wall-clock milliseconds since the Unix epoch (episode and override times).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Feeds the attack detector once a second from the shield's own counters.
async fn attack_ticker(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_total = shared.metrics.total_requests();
    let mut last_hist = shared.metrics.origin_histogram();
    // Seconds spent in normal mode since the familiar-network counts were last halved: their
    // clock stops during an attack, so a long one does not erase what readers taught.
    let mut normal_secs = 0u64;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.changed() => return,
        }
        let total = shared.metrics.total_requests();
        let hist = shared.metrics.origin_histogram();
        let rt = shared.runtime.load();
        let capacity: usize = rt.routes.iter().map(|r| r.cfg.max_in_flight).sum();
        let in_flight = shared.metrics.origin_in_flight.load(Relaxed).max(0);
        let sample = qalqan_detect::Sample {
            requests: total.saturating_sub(last_total),
            origin_p95_ms: crate::metrics::Metrics::p95_ms(&last_hist, &hist),
            origin_in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
            origin_capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
        };
        let now = unix_ms();
        shared.attack.tick(now, sample);
        // Each route class against its own baseline: a flood on search alone is seen even when
        // it is small beside the whole site's traffic.
        let samples: Vec<(&str, qalqan_detect::Sample)> = rt
            .routes
            .iter()
            .map(|r| {
                let n = r.requests.load(Relaxed);
                let requests = n.saturating_sub(r.requests_seen.swap(n, Relaxed));
                let (in_flight, capacity) = r
                    .gate
                    .as_ref()
                    .map_or((0, 0), |g| (g.in_flight(), g.limit()));
                (
                    r.cfg.name.as_str(),
                    qalqan_detect::Sample {
                        requests,
                        // Origin latency is the site's signal; a class has its gate's load.
                        origin_p95_ms: 0.0,
                        origin_in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
                        origin_capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
                    },
                )
            })
            .collect();
        let modes = shared.attack.tick_routes(now, &samples);
        for (r, m) in rt.routes.iter().zip(modes) {
            crate::attack::store_mode(&r.mode, m);
        }
        let normal = shared.attack.mode() == qalqan_detect::Mode::Normal;
        // The routes' normal origin rates learn with the detector's baseline half-life.
        let half_life = f64::from(rt.config.attack.detect.baseline_half_life_secs.max(1));
        crate::state::learn_origin_rates(&rt, normal, 1.0 - 0.5f64.powf(1.0 / half_life));
        if normal {
            normal_secs += 1;
            if normal_secs >= rt.config.attack.familiar_half_life.as_secs() {
                shared.familiar.decay();
                normal_secs = 0;
            }
        }
        last_total = total;
        last_hist = hist;
    }
}

/// Releases the connection's slots when it ends.
struct ConnGuard {
    shared: Arc<Shared>,
    ip: Option<std::net::IpAddr>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.metrics.connections_open.fetch_sub(1, Relaxed);
        if let Some(ip) = self.ip {
            self.shared.conns.remove(ip);
        }
    }
}

fn is_blocked(shared: &Shared, rt: &Runtime, ip: std::net::IpAddr) -> bool {
    rt.config.block.enabled
        && shared
            .blocks
            .blocked_until(
                shared.hasher.hash_ip(ip, tag::ADDR),
                qalqan_limits::now_ms(),
            )
            .is_some()
}

/// Closes a socket with a reset: no FIN handshake, no TIME_WAIT held by us.
fn reset(stream: TcpStream) {
    // A zero linger does not block on drop (the deprecation is about non-zero values): the
    // kernel discards the socket and sends RST at once.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn accept_loop(
    sock: TcpListener,
    l: Listener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = sock.accept() => r,
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                if let Some(more) = shared.log_accept.allow() {
                    tracing::warn!(error = %e, similar_since_last = more, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let rt = shared.runtime.load();
        let real_ip = qalqan_net::cidr::canonical_ip(peer.ip());
        let trusted = rt.config.client.trusted_proxies.contains(real_ip);
        // Blocks and connection caps count an IPv6 subscriber's whole prefix as one client, so
        // rotating addresses inside a /64 does not escape them.
        let ip = crate::state::subscriber(real_ip, &rt.config.client);
        let m = &shared.metrics;
        if !trusted && is_blocked(&shared, &rt, ip) {
            m.conn_drop(ConnDrop::Blocked);
            m.decision(crate::metrics::Decision::Blocked);
            reset(stream);
            continue;
        }
        let c = &rt.config.client;
        if m.connections_open.load(Relaxed) >= c.max_connections as i64 {
            m.conn_drop(ConnDrop::TooMany);
            reset(stream);
            continue;
        }
        if !trusted && !shared.conns.try_add(ip, c.max_connections_per_address) {
            m.conn_drop(ConnDrop::PerAddress);
            reset(stream);
            continue;
        }
        m.connections_open.fetch_add(1, Relaxed);
        let guard = ConnGuard {
            shared: shared.clone(),
            ip: (!trusted).then_some(ip),
        };
        let settings = ConnSettings {
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            max_header_bytes: c.max_header_bytes,
            proxy_protocol: l.proxy_protocol,
        };
        drop(rt);
        conns.spawn(connection(
            stream,
            peer,
            trusted,
            tls.clone(),
            settings,
            shared.clone(),
            shutdown.clone(),
            guard,
        ));
    }
    // Let open connections drain (they watch the same shutdown signal).
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

#[derive(Clone, Copy)]
struct ConnSettings {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
    proxy_protocol: bool,
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    mut stream: TcpStream,
    socket_peer: SocketAddr,
    socket_trusted: bool,
    tls: Option<TlsAcceptor>,
    s: ConnSettings,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    let _ = stream.set_nodelay(true);
    let mut peer = socket_peer;
    let mut source = AddrSource::Socket;
    let mut prefix = Bytes::new();
    if s.proxy_protocol {
        // Only trusted peers may name another source; anyone else is refused outright.
        if !socket_trusted {
            shared.metrics.conn_drop(ConnDrop::Handshake);
            return;
        }
        match tokio::time::timeout(s.header_read_timeout, read_proxy_header(&mut stream)).await {
            Ok(Ok((src, rest))) => {
                if let Some(src) = src {
                    peer = src;
                    source = AddrSource::ProxyProtocol;
                }
                prefix = rest;
            }
            Ok(Err(e)) => {
                tracing::debug!(peer = %socket_peer, error = %e, "bad PROXY header");
                shared.metrics.conn_drop(ConnDrop::Handshake);
                return;
            }
            Err(_) => {
                shared.metrics.conn_drop(ConnDrop::Timeout);
                return;
            }
        }
        let rt = shared.runtime.load();
        let ip =
            crate::state::subscriber(qalqan_net::cidr::canonical_ip(peer.ip()), &rt.config.client);
        if source == AddrSource::ProxyProtocol && is_blocked(&shared, &rt, ip) {
            shared.metrics.conn_drop(ConnDrop::Blocked);
            return;
        }
    }
    let peer_trusted = shared
        .runtime
        .load()
        .config
        .client
        .trusted_proxies
        .contains(qalqan_net::cidr::canonical_ip(peer.ip()));
    let activity = Arc::new(AtomicU64::new(0));
    let io = Rewind::new(prefix, stream);
    let conn = Arc::new(ConnInfo::new(peer, peer_trusted, source, tls.is_some()));
    match tls {
        None => {
            let io = IdleIo::new(io, activity.clone());
            serve_io(io, false, conn, s, shared, shutdown, activity).await;
        }
        Some(acc) => {
            let hs = tokio::time::timeout(s.header_read_timeout, acc.accept(io)).await;
            let tls_stream = match hs {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %socket_peer, error = %e, "TLS handshake failed");
                    shared.metrics.conn_drop(ConnDrop::Handshake);
                    return;
                }
                Err(_) => {
                    shared.metrics.conn_drop(ConnDrop::Timeout);
                    return;
                }
            };
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = IdleIo::new(tls_stream, activity.clone());
            serve_io(io, h2, conn, s, shared, shutdown, activity).await;
        }
    }
}

async fn serve_io<I>(
    io: I,
    h2: bool,
    conn: Arc<ConnInfo>,
    s: ConnSettings,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    activity: Arc<AtomicU64>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Requests in progress: while one waits on the origin, silence on the socket is not idleness.
    let busy = Arc::new(AtomicUsize::new(0));
    let idle = idle_watchdog(activity, busy.clone(), s.idle_timeout);
    tokio::pin!(idle);
    // HTTP/1.1: the shield's own reader takes the plain requests; the first one it does not take
    // moves the connection, with the bytes read so far, to hyper (see `h1`).
    let io = if h2 {
        Rewind::new(Bytes::new(), io)
    } else {
        let limits = crate::h1::Limits {
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
        };
        let outcome = tokio::select! {
            o = crate::h1::serve(io, &conn, limits, &shared, &mut shutdown, &busy) => o,
            _ = &mut idle => {
                shared.metrics.conn_drop(ConnDrop::Timeout);
                return;
            }
        };
        match outcome {
            crate::h1::Outcome::Done => return,
            crate::h1::Outcome::Handoff(io, read) => {
                shared.metrics.http1_handoffs.fetch_add(1, Relaxed);
                Rewind::new(read, io)
            }
        }
    };
    let svc = {
        let (shared, busy) = (shared.clone(), busy.clone());
        service_fn(move |req: Request<Incoming>| {
            let guard = Busy::enter(busy.clone());
            let fut = handle(shared.clone(), conn.clone(), req.map(ReqBody::Hyper));
            async move {
                let r = fut.await;
                drop(guard);
                // hyper writes only the header map: a shield page's own fields go into it.
                r.map(crate::body::for_hyper)
            }
        })
    };
    // Both connection kinds are driven the same way: to completion, until idle, or drained on
    // shutdown.
    macro_rules! drive {
        ($c:expr) => {{
            let c = $c;
            tokio::pin!(c);
            tokio::select! {
                _ = c.as_mut() => {}
                _ = &mut idle => {
                    shared.metrics.conn_drop(ConnDrop::Timeout);
                }
                _ = shutdown.changed() => {
                    c.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, c).await;
                }
            }
        }};
    }
    if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(100)
            .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
        drive!(b.serve_connection(TokioIo::new(io), svc));
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(s.header_read_timeout)
            .keep_alive(true)
            // hyper's read buffer has a floor of 8 KiB; the head limit itself is exact.
            .max_buf_size(s.max_header_bytes.max(8192))
            .max_header_size(s.max_header_bytes)
            .max_headers(100);
        drive!(b.serve_connection(TokioIo::new(io), svc).with_upgrades());
    }
}

/// Counts a request in progress on a connection.
pub(crate) struct Busy(Arc<AtomicUsize>);

impl Busy {
    pub(crate) fn enter(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Relaxed);
        Busy(n)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Resolves when no byte has moved for `idle` while no request was in progress.
///
/// The connection's IO counts its reads and writes (`IdleIo`), and this looks at the count eight
/// times per `idle`: a connection closes between `idle` and 9/8 of it after its last byte, and
/// no read or write has to read the clock.
async fn idle_watchdog(activity: Arc<AtomicU64>, busy: Arc<AtomicUsize>, idle: Duration) {
    const CHECKS: u32 = 8;
    let step = (idle / CHECKS).max(Duration::from_millis(1));
    let tick = tokio::time::sleep_until(crate::h1::deadline_in(step));
    tokio::pin!(tick);
    let mut seen = activity.load(Relaxed);
    let mut quiet = 0;
    loop {
        tick.as_mut().await;
        tick.as_mut().reset(crate::h1::deadline_in(step));
        let now = activity.load(Relaxed);
        if now != seen || busy.load(Relaxed) > 0 {
            seen = now;
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet >= CHECKS {
            return;
        }
    }
}

/// Reads a PROXY v1/v2 header; returns the source it names and any bytes read past it.
async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<(Option<SocketAddr>, Bytes)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        match proxy_protocol::parse(&buf) {
            Ok(h) => {
                let rest = Bytes::copy_from_slice(&buf[h.header_len..]);
                return Ok((h.source, rest));
            }
            Err(ProxyError::Incomplete { .. }) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        if buf.len() > 16 + 1024 + 512 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "PROXY header too long",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before PROXY header",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An IO that first yields bytes already read (after a PROXY header), then the socket.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// An IO that counts the reads and writes that moved bytes, for the idle watchdog.
pub struct IdleIo<T> {
    inner: T,
    activity: Arc<AtomicU64>,
}

impl<T> IdleIo<T> {
    fn new(inner: T, activity: Arc<AtomicU64>) -> Self {
        IdleIo { inner, activity }
    }
    fn touch(&self) {
        // This IO is the only writer: a plain increment, no locked instruction.
        let n = self.activity.load(Relaxed);
        self.activity.store(n.wrapping_add(1), Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, b);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

async fn admin_loop(sock: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = sock.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(admin(&shared, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `POST /mode?set=under-attack&for=2h` or `?set=auto`: the manual override.
fn set_mode(shared: &Shared, query: Option<&str>) -> Result<String, String> {
    let mut set = None;
    let mut dur = None;
    for kv in query.unwrap_or("").split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "set" => set = Some(v),
            "for" => dur = Some(crate::config::parse_duration(v)?),
            _ => {}
        }
    }
    let now = unix_ms();
    let ov = match set {
        Some("auto") => qalqan_detect::Override::Auto,
        Some("under-attack") | Some("under_attack") => {
            let d = dur.ok_or("`for` is needed with under-attack, e.g. for=2h")?;
            let until = now.saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64);
            qalqan_detect::Override::UnderAttackUntil(until)
        }
        _ => return Err("set=under-attack&for=DURATION or set=auto".into()),
    };
    shared.attack.set_override(now, ov);
    Ok(shared.attack.status_json())
}

fn admin(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let (status, ctype, body) = match req.uri().path() {
        "/mode" if req.method() == http::Method::POST => {
            match set_mode(shared, req.uri().query()) {
                Ok(j) => (StatusCode::OK, "application/json", j),
                Err(e) => (
                    StatusCode::BAD_REQUEST,
                    "text/plain; charset=utf-8",
                    format!("{e}\n"),
                ),
            }
        }
        "/mode" => (
            StatusCode::OK,
            "application/json",
            shared.attack.status_json(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.render_metrics(),
        ),
        "/healthz" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ok\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".to_string(),
        ),
    };
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}
