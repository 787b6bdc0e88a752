//! What the drill needs from HTTP: a keep-alive client, one GET with a client address
//! in `X-Forwarded-For`, a bounded body read, a browser's cookie jar, and the shield's challenge
//! page read the way its JavaScript reads it.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The largest body the load generator reads; anything bigger is an error, not a page.
pub const MAX_BODY: usize = 1 << 20;

/// A keep-alive HTTP/1.1 client.
pub type Client = HyperClient<HttpConnector, Empty<Bytes>>;

/// A client keeping at most `idle` idle connections.
pub fn client(idle: usize) -> Client {
    build(None, idle)
}

/// A client whose connections come from `local` (an address in 127.0.0.0/8), keeping at most
/// `idle` idle connections (0: a new connection per request, as a bot farm makes them).
pub fn client_bound(local: IpAddr, idle: usize) -> Client {
    build(Some(local), idle)
}

fn build(local: Option<IpAddr>, idle: usize) -> Client {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(3)));
    conn.set_local_address(local);
    HyperClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(conn)
}

/// Refuses any base URL that is not plain HTTP on loopback (127.0.0.0/8 or ::1): the drill
/// loads only the machine it runs on. `localhost` is taken as 127.0.0.1 without asking DNS,
/// so a changed hosts file cannot point it elsewhere. Returns `http://HOST:PORT`.
pub fn loopback_base(url: &str) -> anyhow::Result<String> {
    let uri: Uri = url
        .trim()
        .parse()
        .with_context(|| format!("`{url}` is not a URL (e.g. http://127.0.0.1:8080)"))?;
    if uri.scheme_str() != Some("http") {
        bail!("`{url}`: only http:// targets on loopback are supported");
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        bail!("`{url}`: give the site's root (http://127.0.0.1:PORT), without a path");
    }
    let host = uri.host().unwrap_or("");
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Some(IpAddr::from([127, 0, 0, 1]))
    } else {
        host.trim_matches(['[', ']']).parse::<IpAddr>().ok()
    };
    let Some(ip) = ip.filter(IpAddr::is_loopback) else {
        bail!(
            "refusing target `{url}`: a drill only runs against this machine's loopback \
             (127.0.0.0/8 or [::1]); it is a rehearsal tool, not a load generator for other hosts"
        );
    };
    let port = uri.port_u16().unwrap_or(80);
    Ok(match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{port}"),
        IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
    })
}

/// An answer, with its body read (at most [`MAX_BODY`] bytes).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One GET of `base` + `path_and_query` as the client `addr` (X-Forwarded-For) with user agent
/// `ua` and an optional Cookie header.
pub async fn get(
    client: &Client,
    base: &str,
    path_and_query: &str,
    addr: &str,
    ua: &str,
    cookie: Option<&str>,
) -> anyhow::Result<Answer> {
    get_as(client, base, path_and_query, Some(addr), ua, cookie).await
}

/// [`get`], with the X-Forwarded-For header optional (none when the connection's own address
/// names the client).
pub async fn get_as(
    client: &Client,
    base: &str,
    path_and_query: &str,
    xff: Option<&str>,
    ua: &str,
    cookie: Option<&str>,
) -> anyhow::Result<Answer> {
    let mut b = Request::get(format!("{base}{path_and_query}")).header(header::USER_AGENT, ua);
    if let Some(a) = xff {
        b = b.header("x-forwarded-for", a);
    }
    b = b
        .header(
            header::ACCEPT,
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .header(header::ACCEPT_LANGUAGE, "ru-RU,ru;q=0.9,kk;q=0.8,en;q=0.7");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    let req = b.body(Empty::new()).context("request")?;
    let resp = client.request(req).await.context("send")?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Whether the shield answered with its challenge page.
pub fn is_challenge(a: &Answer) -> bool {
    a.status == StatusCode::FORBIDDEN
        && a.headers
            .get("x-qalqan-decision")
            .is_some_and(|v| v.as_bytes() == b"challenge")
}

/// A browser's cookie jar for one site: name and value of each cookie, at most
/// [`Jar::MAX`] of them. Attributes are ignored (everything here is one host, one path).
#[derive(Default, Clone)]
pub struct Jar {
    cookies: Vec<(String, String)>,
}

impl Jar {
    const MAX: usize = 16;

    /// Takes in every Set-Cookie of an answer.
    pub fn absorb(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(header::SET_COOKIE).iter().take(Self::MAX) {
            let Ok(s) = v.to_str() else { continue };
            let mut parts = s.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
                continue;
            };
            if name.is_empty() || name.len() > 64 || value.len() > 4096 {
                continue;
            }
            let gone = parts.any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            self.cookies.retain(|(n, _)| n != name);
            if !gone && self.cookies.len() < Self::MAX {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
    }

    /// The Cookie header to send, if there is anything to send.
    pub fn header(&self) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        Some(
            self.cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// Whether the jar holds a cookie of this name.
    pub fn has(&self, name: &str) -> bool {
        self.cookies.iter().any(|(n, _)| n == name)
    }
}

/// The challenge as the page's script reads it from `<p id="q" data-t data-d data-r>`.
#[derive(Debug, PartialEq)]
pub struct Challenge {
    pub token: String,
    pub difficulty: u8,
    pub return_to: String,
}

/// Reads the challenge from the page, as `document.getElementById('q').dataset` does.
pub fn parse_challenge(page: &[u8]) -> anyhow::Result<Challenge> {
    let page = std::str::from_utf8(page).context("challenge page is not UTF-8")?;
    let start = page
        .find("id=\"q\"")
        .context("no element with id=\"q\" in the challenge page")?;
    let tag_end = page[start..]
        .find('>')
        .map(|i| start + i)
        .context("unterminated tag")?;
    let tag = &page[start..tag_end];
    let attr = |name: &str| -> anyhow::Result<String> {
        let key = format!("{name}=\"");
        let at = tag.find(&key).with_context(|| format!("no {name}"))? + key.len();
        let len = tag[at..]
            .find('"')
            .with_context(|| format!("unterminated {name}"))?;
        Ok(html_unescape(&tag[at..at + len]))
    };
    let token = attr("data-t")?;
    if token.is_empty()
        || token.len() > 512
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("challenge token is not base64url");
    }
    let difficulty: u8 = attr("data-d")?.parse().context("difficulty")?;
    if difficulty > 32 {
        bail!("difficulty {difficulty} is beyond anything a browser would try");
    }
    let return_to = attr("data-r")?;
    if return_to.len() > 4096 {
        bail!("return path too long");
    }
    Ok(Challenge {
        token,
        difficulty,
        return_to,
    })
}

/// Undoes the five escapes an HTML attribute value may carry here.
fn html_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// JavaScript's `encodeURIComponent`.
pub fn encode_uri_component(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Solves a challenge on the blocking pool, as the page's Web Worker would, and returns the
/// path the page then navigates to (`location.replace('/.qalqan/verify?…')`). `None` when no
/// counter was found within sixteen times the expected work.
pub async fn solve(ch: Challenge) -> anyhow::Result<Option<String>> {
    let bound = 1u64 << (u32::from(ch.difficulty) + 4).min(40);
    let Challenge {
        token,
        difficulty,
        return_to,
    } = ch;
    let found = tokio::task::spawn_blocking(move || {
        qalqan_challenge::pow::solve(&token, difficulty, bound).map(|c| (token, c))
    })
    .await
    .context("solver task")?;
    Ok(found.map(|(t, c)| {
        format!(
            "/.qalqan/verify?t={t}&c={c}&r={}",
            encode_uri_component(&return_to)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn reads_the_challenge_like_the_page_script() {
        let page = br#"<p>x</p><p id="q" data-t="AbC-_9" data-d="14" data-r="/search?q=a&amp;b=1">wait</p>"#;
        let c = parse_challenge(page).unwrap();
        assert_eq!(c.token, "AbC-_9");
        assert_eq!(c.difficulty, 14);
        assert_eq!(c.return_to, "/search?q=a&b=1");
        assert!(parse_challenge(b"<p id=\"q\" data-t=\"a b\" data-d=\"1\" data-r=\"/\">").is_err());
        assert!(parse_challenge(b"<p id=\"q\" data-t=\"ab\" data-d=\"99\" data-r=\"/\">").is_err());
        assert!(parse_challenge(b"no challenge here").is_err());
    }

    #[test]
    fn encodes_like_javascript() {
        assert_eq!(
            encode_uri_component("/search?q=number+one&x=ä"),
            "%2Fsearch%3Fq%3Dnumber%2Bone%26x%3D%C3%A4"
        );
    }

    #[test]
    fn jar_keeps_replaces_and_deletes() {
        let mut j = Jar::default();
        assert_eq!(j.header(), None);
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("a=1; Path=/; HttpOnly"),
        );
        h.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        j.absorb(&h);
        assert_eq!(j.header().as_deref(), Some("a=1; b=2"));
        let mut h = HeaderMap::new();
        h.append(header::SET_COOKIE, HeaderValue::from_static("a=3"));
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("b=; Max-Age=0"),
        );
        j.absorb(&h);
        assert_eq!(j.header().as_deref(), Some("a=3"));
        assert!(j.has("a") && !j.has("b"));
    }

    #[test]
    fn refuses_anything_but_loopback() {
        assert_eq!(
            loopback_base("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(loopback_base("http://[::1]:80").unwrap(), "http://[::1]:80");
        assert_eq!(
            loopback_base("http://LOCALHOST:81").unwrap(),
            "http://127.0.0.1:81"
        );
        assert_eq!(
            loopback_base("http://127.9.8.7").unwrap(),
            "http://127.9.8.7:80"
        );
        assert!(loopback_base("http://128.0.0.1:80").is_err());
        assert!(loopback_base("http://127.0.0.1.example.com:80").is_err());
        assert!(loopback_base("http://127.0.0.1:80/wp-admin").is_err());
        assert!(loopback_base("http://[::ffff:8.8.8.8]:80").is_err());
        assert!(loopback_base("http://10.0.0.1:80").is_err());
        assert!(loopback_base("https://127.0.0.1:80").is_err());
        assert!(loopback_base("http://example.com").is_err());
    }
}
