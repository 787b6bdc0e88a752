//! The outlets' RSS and Atom feeds: polled in the background into `publications`.
//!
//! An outlet's admin adds feed URLs (settings page or `POST /api/v1/feeds`); `qalqan atlas`
//! polls each one every [`PollConfig::interval`] (default 15 minutes, ±10 % jitter so feeds added
//! together do not stay in step), with a conditional GET (`If-None-Match`, `If-Modified-Since`),
//! a deadline, a cap on the answer's size, at most [`MAX_REDIRECTS`] redirects and at most
//! [`MAX_ITEMS`] items read per poll. Items are stored like manual entries (same URL
//! normalisation, so one article is one row) and never overwrite a publication already there.
//! Each feed keeps the time and outcome of its last poll, shown in the settings.
//!
//! What this module must never do: fetch anything but `http://` or `https://` (the URLs come
//! from admins, but a typo must not make the service read `file:` or talk to itself by another
//! scheme), follow redirects forever, read an unbounded answer, or panic on a malformed feed: a
//! bad feed is an error stored on its row. Fetches run one at a time, off the request path.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::accounts::{Actor, audit};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::model::{FieldError, IndicatorKind, Role, format_time, normalise_indicator, now_ms};

/// Largest feed answer read; larger ones are an error on the feed's row.
pub const MAX_FEED_BYTES: usize = 5 * 1024 * 1024;
/// Most items stored from one poll (the newest first, as feeds list them).
pub const MAX_ITEMS: usize = 200;
/// Most redirects followed for one poll.
pub const MAX_REDIRECTS: usize = 3;
/// Most feeds one outlet may have.
pub const MAX_FEEDS_PER_OUTLET: i64 = 20;
/// Most feeds polled in one round of the loop; the rest wait for the next round.
const MAX_PER_ROUND: i64 = 50;
/// Longest one poll may take, from connect to the last byte.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Longest stored error text.
const MAX_ERROR: usize = 300;
/// Most tags kept per item.
const MAX_TAGS: usize = 30;
/// Longest summary kept per publication, in characters of plain text (about 150 words: the
/// lead of an article, which is what a feed's description usually is). Bounded so that "what
/// provokes attacks" over 50,000 publications stays within memory and time.
pub const MAX_SUMMARY: usize = 1_000;
/// Most characters of a feed item's summary HTML read to make its plain text.
const MAX_SUMMARY_INPUT: usize = 100_000;

/// How the background poller runs.
#[derive(Debug, Clone)]
pub struct PollConfig {
    /// Time between two polls of one feed (jittered by ±10 %). Zero turns polling off.
    pub interval: Duration,
    /// How often the loop looks for feeds that are due.
    pub tick: Duration,
    /// Also fetch from loopback, private, link-local and other internal addresses. Off by
    /// default: feed URLs are typed by outlets' admins, and an atlas that fetched anything
    /// would let them probe the network it runs in (a cloud's metadata service at
    /// 169.254.169.254 included).
    pub allow_private: bool,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval: Duration::from_secs(15 * 60),
            tick: Duration::from_secs(30),
            allow_private: false,
        }
    }
}

/// A feed of the caller's outlet, with the outcome of its last poll.
#[derive(Debug, Clone, Serialize)]
pub struct Feed {
    pub id: i64,
    pub url: String,
    pub added_by: String,
    pub added_at: String,
    /// Absent until the first poll.
    pub last_poll: Option<String>,
    pub last_ok: Option<String>,
    /// Empty when the last poll worked.
    pub last_error: String,
    /// Publications the last successful poll added.
    pub last_added: i64,
    pub next_poll: Option<String>,
}

/// A feed as a client sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedIn {
    pub url: String,
}

/// Where to connect for one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path and query (never empty; the fragment dropped).
    pub path: String,
}

impl FeedUrl {
    fn to_url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.authority,
            self.path
        )
    }
}

/// Reads an `http://` or `https://` URL. Anything else (other schemes, user names, spaces,
/// control characters, a missing host, a bad port) is refused with a reason.
pub fn parse_feed_url(url: &str) -> std::result::Result<FeedUrl, String> {
    let url = url.trim();
    if url.len() > 2_000 {
        return Err("at most 2000 characters".into());
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("https://") {
        (true, url.get(8..).unwrap_or(""))
    } else if lower.starts_with("http://") {
        (false, url.get(7..).unwrap_or(""))
    } else {
        return Err("only http:// and https:// feeds are polled".into());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..end).unwrap_or("");
    let mut path = rest.get(end..).unwrap_or("").to_string();
    if let Some(i) = path.find('#') {
        path.truncate(i);
    }
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    if authority.is_empty() || authority.contains('@') {
        return Err("needs a host (and no user name or password)".into());
    }
    let default_port = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("bad IPv6 address")?;
        let port = match after {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or("bad port")?,
        };
        (h.to_string(), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), p.parse::<u16>().map_err(|_| "bad port")?),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_alphanumeric() || ".-_:".contains(c))
    {
        return Err("bad host name".into());
    }
    Ok(FeedUrl {
        https,
        host: host.to_lowercase(),
        port,
        authority: authority.to_lowercase(),
        path,
    })
}

/// Where a redirect points, from the URL that answered it.
fn resolve(base: &FeedUrl, location: &str) -> std::result::Result<FeedUrl, String> {
    let l = location.trim();
    let lower = l.get(..8).unwrap_or(l).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return parse_feed_url(l);
    }
    if l.contains(':') && !l.starts_with('/') && l.find(':') < l.find('/') {
        return Err("redirected to a scheme other than http or https".into());
    }
    if let Some(rest) = l.strip_prefix("//") {
        let scheme = if base.https { "https" } else { "http" };
        return parse_feed_url(&format!("{scheme}://{rest}"));
    }
    let path = if l.starts_with('/') {
        l.to_string()
    } else {
        let dir = base
            .path
            .split('?')
            .next()
            .and_then(|p| p.rsplit_once('/'))
            .map(|(d, _)| d)
            .unwrap_or("");
        format!("{dir}/{l}")
    };
    let mut next = base.clone();
    next.path = path;
    parse_feed_url(&next.to_url())
}

/// The answer to one poll.
#[derive(Debug)]
pub enum Fetched {
    /// 304: nothing changed since the validators were given.
    NotModified,
    Body {
        bytes: Vec<u8>,
        etag: String,
        last_modified: String,
        /// The URL after redirects (relative links in the feed resolve against it).
        url: String,
    },
}

const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The rustls client for `https://` feeds: the system's CA bundle, read once.
fn tls() -> std::result::Result<Arc<rustls::ClientConfig>, String> {
    static TLS: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    TLS.get_or_init(|| {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let path = SYSTEM_CA_FILES
            .iter()
            .find(|p| std::path::Path::new(p).is_file())
            .ok_or("https feeds need the system's CA certificates, and none were found")?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {path}: {e}"))?
            .filter_map(|c| c.ok())
            .collect();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("no usable CA certificate in {path}"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol versions: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    })
    .clone()
}

/// One GET of a feed, following at most [`MAX_REDIRECTS`] redirects, within [`TIMEOUT`].
pub async fn fetch(
    url: &str,
    etag: &str,
    last_modified: &str,
    allow_private: bool,
) -> std::result::Result<Fetched, String> {
    tokio::time::timeout(
        TIMEOUT,
        fetch_inner(url, etag, last_modified, allow_private),
    )
    .await
    .map_err(|_| format!("no complete answer within {} s", TIMEOUT.as_secs()))?
}

async fn fetch_inner(
    url: &str,
    etag: &str,
    last_modified: &str,
    allow_private: bool,
) -> std::result::Result<Fetched, String> {
    let mut target = parse_feed_url(url)?;
    for _ in 0..=MAX_REDIRECTS {
        let resp = get_once(&target, etag, last_modified, allow_private).await?;
        let status = resp.status();
        if status.is_redirection() && status != http::StatusCode::NOT_MODIFIED {
            let loc = resp
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("HTTP {} without a Location", status.as_u16()))?;
            target = resolve(&target, loc)?;
            continue;
        }
        if status == http::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(format!("the server answered HTTP {}", status.as_u16()));
        }
        let header = |h: http::header::HeaderName| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 200)
                .unwrap_or("")
                .to_string()
        };
        let new_etag = header(http::header::ETAG);
        let new_lm = header(http::header::LAST_MODIFIED);
        let too_big = || format!("the feed is larger than {} MB", MAX_FEED_BYTES >> 20);
        if resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_FEED_BYTES as u64)
        {
            return Err(too_big());
        }
        let bytes = Limited::new(resp.into_body(), MAX_FEED_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_big()
                } else {
                    format!("reading the answer: {e}")
                }
            })?
            .to_bytes();
        return Ok(Fetched::Body {
            bytes: bytes.to_vec(),
            etag: new_etag,
            last_modified: new_lm,
            url: target.to_url(),
        });
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

type Answer = http::Response<hyper::body::Incoming>;

/// One request on a fresh connection (polls are minutes apart: a pool would only hold sockets).
/// Whether an address is inside a network no public feed lives in: loopback, private (RFC 1918,
/// IPv6 unique-local), link-local (and so cloud metadata services), carrier-grade NAT,
/// unspecified, multicast, broadcast, documentation and benchmarking ranges, and IPv4 written
/// inside IPv6.
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)
                || (seg[0] == 0x0064 && seg[1] == 0xff9b)
                || seg[..6] == [0, 0, 0, 0, 0, 0]
        }
    }
}

/// Connects to the first public address of the feed's host (any address with
/// `allow_private`). The check is on the resolved address actually connected to, so a name
/// that resolves to an internal address, or a redirect to one, is refused too.
async fn connect(
    t: &FeedUrl,
    allow_private: bool,
) -> std::result::Result<tokio::net::TcpStream, String> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("looking up {}: {e}", t.host))?
        .take(16)
        .collect();
    let mut last = format!("{} has no address", t.host);
    let mut refused = false;
    for a in addrs {
        if !allow_private && is_internal(a.ip()) {
            refused = true;
            continue;
        }
        match tokio::net::TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connecting to {}: {e}", t.authority),
        }
    }
    if refused {
        return Err(format!(
            "{} is an internal address; feeds are fetched from public addresses only \
             (`qalqan atlas --feed-allow-private` lifts this)",
            t.host
        ));
    }
    Err(last)
}

async fn get_once(
    t: &FeedUrl,
    etag: &str,
    last_modified: &str,
    allow_private: bool,
) -> std::result::Result<Answer, String> {
    let tcp = connect(t, allow_private).await?;
    let mut req = http::Request::get(t.path.as_str())
        .header(http::header::HOST, t.authority.as_str())
        .header(
            http::header::USER_AGENT,
            concat!("qalqan-atlas/", env!("CARGO_PKG_VERSION"), " (feed poller)"),
        )
        .header(
            http::header::ACCEPT,
            "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5",
        )
        .header(http::header::CONNECTION, "close");
    if !etag.is_empty() {
        req = req.header(http::header::IF_NONE_MATCH, etag);
    }
    if !last_modified.is_empty() {
        req = req.header(http::header::IF_MODIFIED_SINCE, last_modified);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    if t.https {
        let cfg = tls()?;
        let name = rustls_pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| format!("TLS name {}: {e}", t.host))?;
        let io = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", t.authority))?;
        exchange(hyper_util::rt::TokioIo::new(io), req).await
    } else {
        exchange(hyper_util::rt::TokioIo::new(tcp), req).await
    }
}

async fn exchange<I>(io: I, req: http::Request<Empty<Bytes>>) -> std::result::Result<Answer, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection task ends with the body (Connection: close) or when the poll times out
    // and drops everything.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.send_request(req)
        .await
        .map_err(|e| format!("sending the request: {e}"))
}

/// One item of a feed, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub url: String,
    pub title: String,
    /// The item's summary (RSS `description`, Atom `summary`, else the start of its content) as
    /// plain text, at most [`MAX_SUMMARY`] characters; '' when it has none.
    pub summary: String,
    pub published_ms: i64,
    pub tags: Vec<String>,
}

/// Plain text of a feed's title: markup dropped, whitespace collapsed, control characters gone,
/// at most `max` characters.
fn plain(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if in_tag => {}
            c if c.is_control() || c.is_whitespace() => out.push(' '),
            c => out.push(c),
        }
    }
    let words: Vec<&str> = out.split_whitespace().collect();
    words.join(" ").chars().take(max).collect()
}

/// Plain text of an HTML fragment (a feed item's summary, or a summary given by hand): tags
/// dropped with the text of `script` and `style` elements, character references decoded
/// (named ones of common use, decimal and hexadecimal), whitespace collapsed, control
/// characters gone, at most `max` characters out of at most [`MAX_SUMMARY_INPUT`] read.
pub fn html_text(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = s.chars().take(MAX_SUMMARY_INPUT).peekable();
    // Inside `<script>` or `<style>`: their text is code, not words.
    let mut hidden: Option<&'static str> = None;
    let mut len = 0usize;
    let mut space = true;
    fn push(c: char, out: &mut String, len: &mut usize, space: &mut bool) {
        if c == '\u{ad}' {
            // A soft hyphen is a line-break hint inside a word, not a character of it.
        } else if c.is_whitespace() || c.is_control() {
            if !*space {
                out.push(' ');
                *len += 1;
                *space = true;
            }
        } else {
            out.push(c);
            *len += 1;
            *space = false;
        }
    }
    while let Some(c) = chars.next() {
        if len >= max {
            break;
        }
        if c == '<'
            && chars
                .peek()
                .is_some_and(|n| n.is_alphabetic() || "/!?".contains(*n))
        {
            // A tag (or a comment, or a declaration): read its name, skip to its end. A `<`
            // before anything else is text ("a < b").
            let mut tag = String::new();
            let mut named = false;
            for t in chars.by_ref() {
                if t == '>' {
                    break;
                }
                if !named && (t.is_ascii_alphanumeric() || (t == '/' && tag.is_empty())) {
                    if tag.len() < 10 {
                        tag.push(t.to_ascii_lowercase());
                    }
                } else if !tag.is_empty() {
                    named = true;
                }
            }
            match tag.as_str() {
                "script" => hidden = Some("/script"),
                "style" => hidden = Some("/style"),
                t if hidden == Some(t) => hidden = None,
                _ => {}
            }
            push(' ', &mut out, &mut len, &mut space);
            continue;
        }
        if hidden.is_some() {
            continue;
        }
        if c == '&' {
            // A character reference of at most 10 characters before `;`.
            let mut name = String::new();
            let mut look = chars.clone();
            let mut ended = false;
            for t in look.by_ref().take(11) {
                if t == ';' {
                    ended = true;
                    break;
                }
                name.push(t);
            }
            if let Some(d) = ended.then(|| entity(&name)).flatten() {
                chars = look;
                push(d, &mut out, &mut len, &mut space);
                continue;
            }
        }
        push(c, &mut out, &mut len, &mut space);
    }
    out.trim().chars().take(max).collect()
}

/// Checks a summary given by hand (API): at most [`MAX_SUMMARY_INPUT`] characters, no control
/// characters but line breaks and tabs; stored as [`html_text`] of it (a pasted HTML lead
/// loses its markup), at most [`MAX_SUMMARY`] characters.
pub fn check_summary(s: &str, errors: &mut Vec<FieldError>) -> String {
    if s.chars().count() > MAX_SUMMARY_INPUT {
        errors.push(FieldError::new(
            "summary",
            format!("at most {MAX_SUMMARY_INPUT} characters"),
        ));
        return String::new();
    }
    if s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        errors.push(FieldError::new(
            "summary",
            "must not contain control characters",
        ));
        return String::new();
    }
    html_text(s, MAX_SUMMARY)
}

/// The character a reference names (`amp`, `#1179`, `#x49B`…), if it is one this knows.
fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let n = match num.strip_prefix(['x', 'X']) {
            Some(h) => u32::from_str_radix(h, 16).ok()?,
            None => num.parse::<u32>().ok()?,
        };
        return char::from_u32(n).filter(|c| *c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" | "ensp" | "emsp" | "thinsp" => ' ',
        "laquo" => '«',
        "raquo" => '»',
        "ldquo" => '“',
        "rdquo" => '”',
        "lsquo" => '‘',
        "rsquo" => '’',
        "bdquo" => '„',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "middot" => '·',
        "shy" => '\u{ad}',
        _ => return None,
    })
}

/// Reads a feed (RSS 0.9x/1.0/2.0, Atom, JSON Feed) into at most `max` items. Items without a
/// usable http(s) link or a title are skipped; an item without a date gets `now`, and a date
/// in the future is clamped to `now` (a wrong clock must not put articles ahead of attacks).
pub fn parse_items(
    bytes: &[u8],
    base: &str,
    now: i64,
    max: usize,
) -> std::result::Result<Vec<Item>, String> {
    let feed = feed_rs::parser::Builder::new()
        .base_uri(Some(base))
        .build()
        .parse(bytes)
        .map_err(|e| {
            let m: String = plain(&e.to_string(), 200);
            format!("not a readable RSS or Atom feed: {m}")
        })?;
    let mut items = Vec::new();
    for e in feed.entries.into_iter() {
        if items.len() >= max {
            break;
        }
        let link = e
            .links
            .iter()
            .find(|l| l.rel.as_deref().is_none_or(|r| r == "alternate"))
            .or(e.links.first())
            .map(|l| l.href.clone())
            .or_else(|| e.id.starts_with("http").then(|| e.id.clone()));
        let Some(url) = link.and_then(|l| normalise_indicator(IndicatorKind::Url, &l).ok()) else {
            continue;
        };
        let title = e
            .title
            .as_ref()
            .map(|t| plain(&t.content, crate::model::MAX_SHORT))
            .unwrap_or_default();
        if title.is_empty() {
            continue;
        }
        // The summary (RSS `description`, Atom `summary`), else the start of the content.
        let summary = e
            .summary
            .as_ref()
            .map(|t| html_text(&t.content, MAX_SUMMARY))
            .filter(|s| !s.is_empty())
            .or_else(|| {
                e.content
                    .as_ref()
                    .and_then(|c| c.body.as_deref())
                    .map(|b| html_text(b, MAX_SUMMARY))
            })
            .unwrap_or_default();
        let published_ms = e
            .published
            .or(e.updated)
            .map(|t| t.timestamp_millis())
            .unwrap_or(now)
            .min(now);
        let mut tags: Vec<String> = Vec::new();
        for c in &e.categories {
            let raw = c
                .label
                .as_deref()
                .filter(|l| !l.trim().is_empty())
                .unwrap_or(&c.term);
            let t = plain(raw, 100).to_lowercase();
            if !t.is_empty() && !tags.contains(&t) && tags.len() < MAX_TAGS {
                tags.push(t);
            }
        }
        items.push(Item {
            url,
            title,
            summary,
            published_ms,
            tags,
        });
    }
    Ok(items)
}

fn bounded_error(e: &str) -> String {
    plain(e, MAX_ERROR)
}

fn feed_row(r: &sqlx::any::AnyRow) -> Result<Feed> {
    let opt = |ms: i64| (ms > 0).then(|| format_time(ms));
    Ok(Feed {
        id: r.try_get("id")?,
        url: r.try_get("url")?,
        added_by: r.try_get("added_by")?,
        added_at: format_time(r.try_get("added_ms")?),
        last_poll: opt(r.try_get("last_poll_ms")?),
        last_ok: opt(r.try_get("last_ok_ms")?),
        last_error: r.try_get("last_error")?,
        last_added: r.try_get("last_added")?,
        next_poll: opt(r.try_get("next_poll_ms")?),
    })
}

/// A feed that is due, for the poller.
#[derive(Debug, Clone)]
pub struct DueFeed {
    pub id: i64,
    pub outlet_id: i64,
    pub url: String,
    pub etag: String,
    pub last_modified: String,
}

impl Db {
    /// The feeds of the caller's outlet, with their status (any member may read them).
    pub async fn feeds(&self, actor: &Actor) -> Result<Vec<Feed>> {
        if !actor.role.can_read() {
            return Err(Error::Forbidden);
        }
        let rows = sqlx::query("SELECT * FROM feeds WHERE outlet_id = $1 ORDER BY id")
            .bind(actor.outlet_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(feed_row).collect()
    }

    /// Adds a feed to the caller's outlet (admins only). It is polled at the next round.
    pub async fn add_feed(&self, actor: &Actor, f: &FeedIn) -> Result<Feed> {
        if actor.role != Role::Admin {
            return Err(Error::Forbidden);
        }
        let url = parse_feed_url(&f.url)
            .map_err(|m| Error::Invalid(vec![FieldError::new("url", m)]))?
            .to_url();
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM feeds WHERE outlet_id = $1")
            .bind(actor.outlet_id)
            .fetch_one(&mut *tx)
            .await?;
        if n >= MAX_FEEDS_PER_OUTLET {
            return Err(Error::field(
                "url",
                format!("at most {MAX_FEEDS_PER_OUTLET} feeds per outlet"),
            ));
        }
        let dup: Option<i64> =
            sqlx::query_scalar("SELECT id FROM feeds WHERE outlet_id = $1 AND url = $2")
                .bind(actor.outlet_id)
                .bind(&url)
                .fetch_optional(&mut *tx)
                .await?;
        if dup.is_some() {
            return Err(Error::Conflict("this feed is already listed".into()));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO feeds (outlet_id, url, added_by, added_ms) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(actor.outlet_id)
        .bind(&url)
        .bind(&actor.label)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        audit(
            &mut tx,
            Some(actor.outlet_id),
            &actor.label,
            "feed.add",
            &url,
            "",
        )
        .await?;
        tx.commit().await?;
        let r = sqlx::query("SELECT * FROM feeds WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        feed_row(&r)
    }

    /// Removes a feed of the caller's outlet (admins only). Its publications stay.
    pub async fn remove_feed(&self, actor: &Actor, id: i64) -> Result<()> {
        if actor.role != Role::Admin {
            return Err(Error::Forbidden);
        }
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        let url: Option<String> =
            sqlx::query_scalar("SELECT url FROM feeds WHERE id = $1 AND outlet_id = $2")
                .bind(id)
                .bind(actor.outlet_id)
                .fetch_optional(&mut *tx)
                .await?;
        let url = url.ok_or(Error::NotFound)?;
        sqlx::query("DELETE FROM feeds WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        audit(
            &mut tx,
            Some(actor.outlet_id),
            &actor.label,
            "feed.remove",
            &url,
            "",
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Feeds whose next poll is due at `now`, the longest-waiting first.
    pub async fn due_feeds(&self, now: i64, limit: i64) -> Result<Vec<DueFeed>> {
        let rows = sqlx::query(
            "SELECT id, outlet_id, url, etag, last_modified FROM feeds
             WHERE next_poll_ms <= $1 ORDER BY next_poll_ms, id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DueFeed {
                    id: r.try_get("id")?,
                    outlet_id: r.try_get("outlet_id")?,
                    url: r.try_get("url")?,
                    etag: r.try_get("etag")?,
                    last_modified: r.try_get("last_modified")?,
                })
            })
            .collect()
    }

    /// Stores a poll's items as publications of the outlet (a URL already stored, by hand or
    /// by an earlier poll, is left as it is) and the poll's outcome on the feed. Returns how many
    /// publications were added.
    async fn feed_polled(
        &self,
        feed: &DueFeed,
        outcome: std::result::Result<Option<(Vec<Item>, String, String)>, String>,
        now: i64,
        next_ms: i64,
    ) -> Result<i64> {
        let _w = self.write().await;
        let mut tx = self.pool.begin().await?;
        let mut added = 0i64;
        match outcome {
            Ok(Some((items, etag, lm))) => {
                for it in &items {
                    let r = sqlx::query(
                        "INSERT INTO publications (outlet_id, url, title, published_ms, tags, summary)
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (outlet_id, url) DO NOTHING",
                    )
                    .bind(feed.outlet_id)
                    .bind(&it.url)
                    .bind(&it.title)
                    .bind(it.published_ms)
                    .bind(serde_json::to_string(&it.tags).unwrap_or_else(|_| "[]".into()))
                    .bind(&it.summary)
                    .execute(&mut *tx)
                    .await?;
                    added += i64::try_from(r.rows_affected()).unwrap_or(0);
                }
                sqlx::query(
                    "UPDATE feeds SET etag = $2, last_modified = $3, last_poll_ms = $4,
                       last_ok_ms = $4, last_error = '', last_added = $5, next_poll_ms = $6
                     WHERE id = $1",
                )
                .bind(feed.id)
                .bind(&etag)
                .bind(&lm)
                .bind(now)
                .bind(added)
                .bind(next_ms)
                .execute(&mut *tx)
                .await?;
            }
            Ok(None) => {
                sqlx::query(
                    "UPDATE feeds SET last_poll_ms = $2, last_ok_ms = $2, last_error = '',
                       last_added = 0, next_poll_ms = $3 WHERE id = $1",
                )
                .bind(feed.id)
                .bind(now)
                .bind(next_ms)
                .execute(&mut *tx)
                .await?;
            }
            Err(e) => {
                sqlx::query(
                    "UPDATE feeds SET last_poll_ms = $2, last_error = $3, next_poll_ms = $4
                     WHERE id = $1",
                )
                .bind(feed.id)
                .bind(now)
                .bind(bounded_error(&e))
                .bind(next_ms)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(added)
    }
}

/// The next poll time: `now + interval`, ±10 %.
fn next_poll(now: i64, interval: Duration) -> i64 {
    let base = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX / 4);
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX); // 0..=1
    let jitter = ((frac - 0.5) * 0.2 * base as f64) as i64;
    now.saturating_add(base).saturating_add(jitter)
}

/// Polls one feed and records the outcome. Returns the publications added, or the error that
/// was stored on the feed.
pub async fn poll_one(
    db: &Db,
    feed: &DueFeed,
    cfg: &PollConfig,
) -> Result<std::result::Result<i64, String>> {
    let fetched = fetch(
        &feed.url,
        &feed.etag,
        &feed.last_modified,
        cfg.allow_private,
    )
    .await;
    let now = now_ms();
    let outcome = match fetched {
        Ok(Fetched::NotModified) => Ok(None),
        Ok(Fetched::Body {
            bytes,
            etag,
            last_modified,
            url,
        }) => parse_items(&bytes, &url, now, MAX_ITEMS)
            .map(|items| Some((items, etag, last_modified))),
        Err(e) => Err(e),
    };
    let err = outcome.as_ref().err().cloned();
    let added = db
        .feed_polled(feed, outcome, now, next_poll(now, cfg.interval))
        .await?;
    Ok(match err {
        Some(e) => {
            tracing::debug!(feed = feed.id, error = %bounded_error(&e), "feed poll failed");
            Err(bounded_error(&e))
        }
        None => Ok(added),
    })
}

/// Polls every feed due at `now`, one at a time. Returns how many were polled.
pub async fn poll_due(db: &Db, cfg: &PollConfig, now: i64) -> Result<usize> {
    let due = db.due_feeds(now, MAX_PER_ROUND).await?;
    for f in &due {
        // A feed's own failure is stored on its row; only a database error stops the round.
        let _outcome = poll_one(db, f, cfg).await?;
    }
    Ok(due.len())
}

/// The background poller of `qalqan atlas`: runs until the process ends.
pub async fn poll_loop(db: Db, cfg: PollConfig) {
    if cfg.interval.is_zero() {
        tracing::info!("feed polling is off");
        return;
    }
    loop {
        if let Err(e) = poll_due(&db, &cfg, now_ms()).await {
            tracing::warn!(error = %e, "feed polling round failed");
        }
        tokio::time::sleep(cfg.tick).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_known() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "95.56.0.1",
            "8.8.8.8",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls() {
        let u = parse_feed_url("HTTPS://Kursiv.Media/feed?x=1#top").unwrap();
        assert!(u.https);
        assert_eq!(u.host, "kursiv.media");
        assert_eq!(u.port, 443);
        assert_eq!(u.path, "/feed?x=1");
        assert_eq!(u.to_url(), "https://kursiv.media/feed?x=1");
        let u = parse_feed_url("http://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/")
        );
        for bad in [
            "file:///etc/passwd",
            "ftp://x.kz/feed",
            "gopher://x",
            "http://user:pw@x.kz/",
            "http:///feed",
            "http://x.kz:99999/",
            "http://x .kz/",
            "javascript:alert(1)",
            "",
        ] {
            assert!(parse_feed_url(bad).is_err(), "{bad}");
        }
        let base = parse_feed_url("http://a.kz/news/rss.xml").unwrap();
        assert_eq!(resolve(&base, "/b").unwrap().to_url(), "http://a.kz/b");
        assert_eq!(
            resolve(&base, "c.xml").unwrap().to_url(),
            "http://a.kz/news/c.xml"
        );
        assert_eq!(
            resolve(&base, "//b.kz/x").unwrap().to_url(),
            "http://b.kz/x"
        );
        assert!(resolve(&base, "file:///etc/passwd").is_err());
        assert!(resolve(&base, "ftp://b.kz/").is_err());
    }

    #[test]
    fn plain_text() {
        assert_eq!(
            plain("  <b>Выборы</b>\n в  Казахстане ", 100),
            "Выборы в Казахстане"
        );
        assert_eq!(plain("абвгд", 3), "абв");
    }

    #[test]
    fn summaries_are_plain_bounded_text() {
        assert_eq!(
            html_text(
                "<p>Суд над <b>журналистами</b>&nbsp;&laquo;Власти&raquo; &amp; &#1179;&#x493;</p>\n<script>var x = 'провокация';</script><style>p{}</style>  итог",
                1000
            ),
            "Суд над журналистами «Власти» & қғ итог"
        );
        // Unknown or unterminated references stay as text; `&lt;` is text, not a tag.
        assert_eq!(
            html_text("a &bogus; b & c &lt;i&gt;", 100),
            "a &bogus; b & c <i>"
        );
        assert_eq!(html_text("&#0; &#xFFFFFFFF;", 100), "&#0; &#xFFFFFFFF;");
        assert_eq!(html_text("<a href='x'>один</a><br/>два", 100), "один два");
        assert_eq!(html_text("абвгд еж", 3), "абв");
        assert_eq!(html_text("1 < 2 <!-- c --> и 3 > 2", 100), "1 < 2 и 3 > 2");
        assert_eq!(html_text("выбо&shy;ры", 100), "выборы");
        let long = "слово ".repeat(10_000);
        assert_eq!(html_text(&long, MAX_SUMMARY).chars().count(), MAX_SUMMARY);
        // An unclosed tag swallows the rest, but never panics.
        assert_eq!(html_text("текст <a href=", 100), "текст");
    }

    #[test]
    fn feed_items_carry_their_summaries() {
        let rss = r#"<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
<item><title>Заголовок</title><link>https://a.kz/1</link>
<description>&lt;p&gt;Лид о &lt;b&gt;выборах&lt;/b&gt;&amp;nbsp;в маслихат&lt;/p&gt;</description></item>
<item><title>Без лида</title><link>https://a.kz/2</link></item>
</channel></rss>"#;
        let items = parse_items(rss.as_bytes(), "https://a.kz/rss", 1_000, 10).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].summary, "Лид о выборах в маслихат");
        assert_eq!(items[1].summary, "");
        let atom = r#"<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">
<title>t</title><id>urn:x</id><updated>2024-01-01T00:00:00Z</updated>
<entry><title>Э</title><id>urn:e</id><link href="https://a.kz/3"/><updated>2024-01-01T00:00:00Z</updated>
<content type="html">&lt;p&gt;Полный текст про тендер&lt;/p&gt;</content></entry></feed>"#;
        let items = parse_items(atom.as_bytes(), "https://a.kz/atom", i64::MAX, 10).unwrap();
        assert_eq!(items[0].summary, "Полный текст про тендер");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let i = Duration::from_secs(900);
        for _ in 0..200 {
            let n = next_poll(0, i);
            assert!((810_000..=990_000).contains(&n), "{n}");
        }
    }
}
