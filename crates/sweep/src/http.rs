//! A small HTTP/1.1 client for the two services sweep talks to: the Telegram Bot API and the
//! atlas. One kept-alive connection, reopened when it closes; TLS by rustls (ring) with the
//! system's CA bundle; every answer read up to a size cap and under a deadline.
//!
//! Why not a general client crate: requests here are few and sequential (one long poll, or a
//! rate-limited clean-up queue), and hyper, tokio-rustls and rustls are already in the tree.
//!
//! The URL path is never put into an error: the Bot API carries its token in the path.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest answer read, in bytes. A `getUpdates` page of 100 updates is well below this.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;

/// Why a request failed before an HTTP answer came back. Never contains the request path.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL: {0}")]
    Url(String),
    #[error("connect to {0}: {1}")]
    Connect(String, String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Where requests go: scheme, host, port, and a path prefix.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
    authority: String,
    /// Without a trailing slash.
    pub base_path: String,
}

impl Endpoint {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Endpoint, HttpError> {
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|e| HttpError::Url(format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(HttpError::Url(
                    "the URL must start with http:// or https://".into(),
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| HttpError::Url("the URL has no host".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(HttpError::Url("the URL has no host".into()));
        }
        if uri.query().is_some() {
            return Err(HttpError::Url("the URL must not have a query".into()));
        }
        Ok(Endpoint {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            host,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }

    /// Whether a secret sent here would cross a network in clear: plain http to a host that is
    /// not loopback or private.
    pub fn secret_in_clear(&self) -> bool {
        if self.https {
            return false;
        }
        match self.host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => !(a.is_loopback() || a.is_private()),
            Ok(std::net::IpAddr::V6(a)) => !a.is_loopback(),
            Err(_) => self.host != "localhost",
        }
    }
}

/// An answer: status, `Retry-After` in seconds if present, and the body (capped).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

/// One endpoint, one connection at a time.
pub struct Client {
    ep: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Option<SendRequest<Full<Bytes>>>,
    user_agent: &'static str,
}

/// Places where distributions keep their bundle of trusted CA certificates.
const SYSTEM_CA_FILES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

impl Client {
    /// A client for `ep`; for https, trusts `ca_file` or the system's bundle.
    pub fn new(ep: Endpoint, ca_file: Option<&Path>) -> Result<Client, HttpError> {
        let tls = if ep.https {
            Some(tls_config(ca_file)?)
        } else {
            None
        };
        Ok(Client {
            ep,
            tls,
            conn: None,
            user_agent: concat!("qalqan-sweep/", env!("CARGO_PKG_VERSION")),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let target = format!("{}:{}", self.ep.host, self.ep.port);
        let tcp = TcpStream::connect((self.ep.host.as_str(), self.ep.port))
            .await
            .map_err(|e| HttpError::Connect(target.clone(), e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some(cfg) => {
                let name = rustls_pki_types::ServerName::try_from(self.ep.host.clone())
                    .map_err(|e| HttpError::Tls(format!("name {}: {e}", self.ep.host)))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| HttpError::Tls(e.to_string()))?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }

    /// Sends one request to `base_path + path` and reads the answer, all within `deadline`.
    pub async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        headers: &[(http::HeaderName, String)],
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<Answer, HttpError> {
        match tokio::time::timeout(deadline, self.send_inner(method, path, headers, body)).await {
            Ok(r) => {
                if r.is_err() {
                    self.conn = None;
                }
                r
            }
            Err(_) => {
                self.conn = None;
                Err(HttpError::Timeout(deadline))
            }
        }
    }

    async fn send_inner(
        &mut self,
        method: http::Method,
        path: &str,
        headers: &[(http::HeaderName, String)],
        body: Vec<u8>,
    ) -> Result<Answer, HttpError> {
        let reuse = match self.conn.as_mut() {
            Some(c) if !c.is_closed() => c.ready().await.is_ok(),
            _ => false,
        };
        if !reuse {
            self.conn = Some(self.connect().await?);
        }
        let Some(sender) = self.conn.as_mut() else {
            return Err(HttpError::Http("no connection".into()));
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.ep.base_path, path))
            .header(header::HOST, self.ep.authority.as_str())
            .header(header::USER_AGENT, self.user_agent);
        for (k, v) in headers {
            req = req.header(k, v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| HttpError::Http("cannot build the request".into()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| HttpError::Http(e.to_string()))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| HttpError::Http(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, HttpError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(|e| HttpError::Http(format!("handshake: {e}")))?;
    // The connection task ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_CA_FILES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .map(Path::to_path_buf)
            .ok_or_else(|| HttpError::Tls("no system CA bundle found; name one".into()))?,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .map_err(|e| HttpError::Tls(format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| HttpError::Tls(format!("bad PEM in {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(HttpError::Tls(format!(
            "no usable CA certificate in {}",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_know_when_a_secret_would_travel_in_clear() {
        let e = Endpoint::parse("https://api.telegram.org").unwrap();
        assert!(e.https && e.port == 443 && e.base_path.is_empty());
        assert!(!e.secret_in_clear());
        let e = Endpoint::parse("http://127.0.0.1:8081/tg/").unwrap();
        assert_eq!((e.port, e.base_path.as_str()), (8081, "/tg"));
        assert!(!e.secret_in_clear());
        assert!(
            Endpoint::parse("http://atlas.example.org")
                .unwrap()
                .secret_in_clear()
        );
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://x/?a=1").is_err());
        assert!(Endpoint::parse("nonsense").is_err());
    }
}
