//! Asking a timestamping authority (RFC 3161 over HTTP) to sign a manifest's hash, and the
//! queue of requests that could not be sent.
//!
//! A package never waits on the authority for long: one attempt with a short timeout, then the
//! package is delivered without `manifest.json.tsr` and the request is written to the queue
//! directory (`<manifest sha256>.json`). [`retry_loop`] sends queued requests again with growing
//! delays; a token obtained later is kept as `<manifest sha256>.tsr` and served by
//! `GET /api/v1/evidence/timestamps/{sha256}` to the outlet that made the package, which puts it
//! next to the package's `manifest.json` (it proves the manifest existed at the token's time).
//!
//! Only `http://` authorities are supported: the reply is signed, so transport security adds
//! nothing to what it proves, and public authorities (FreeTSA, DigiCert, Sectigo) answer on
//! plain HTTP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};

use super::tsp;
use crate::model::now_ms;

/// Longest wait for an authority's answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply read (a token with its certificate chain is a few kilobytes).
const MAX_REPLY: usize = 256 * 1024;
/// Most requests waiting in the queue; beyond it new ones are not queued (and the package says so).
pub const MAX_QUEUED: usize = 1_000;
/// Delay before the first retry; doubled each time up to [`MAX_DELAY_MS`].
const FIRST_DELAY_MS: i64 = 60_000;
const MAX_DELAY_MS: i64 = 6 * 3600 * 1000;
/// Attempts before a request is given up.
const MAX_ATTEMPTS: u32 = 50;

/// A timestamping authority and where unanswered requests wait.
#[derive(Debug, Clone)]
pub struct Tsa {
    /// `http://host[:port]/path`.
    pub url: String,
    pub queue_dir: PathBuf,
}

/// One queued request, as written to `<sha>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Queued {
    manifest_sha256: String,
    outlet_id: i64,
    url: String,
    created_ms: i64,
    attempts: u32,
    next_ms: i64,
    last_error: String,
}

struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("the authority's URL must start with http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("the authority's URL needs a host (and no user name)".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h.trim_start_matches('[').trim_end_matches(']'), p),
            Err(_) if authority.starts_with('[') && authority.ends_with(']') => {
                (authority.trim_start_matches('[').trim_end_matches(']'), 80)
            }
            Err(_) => return Err("bad port in the authority's URL".into()),
        },
        _ => (authority, 80),
    };
    Ok(Target {
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// Checks a configured URL when the service starts.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

/// Sends one request and checks the reply: granted, SHA-256, our hash, our nonce.
async fn send(url: &str, hash: &[u8; 32]) -> Result<(Vec<u8>, tsp::TokenInfo), String> {
    let t = parse_url(url)?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
    let body = tsp::request(hash, &nonce);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connecting to {}: {e}", t.authority))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::post(&t.path)
            .header(http::header::HOST, &t.authority)
            .header(http::header::CONTENT_TYPE, "application/timestamp-query")
            .header(http::header::ACCEPT, "application/timestamp-reply")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the authority answered HTTP {}", resp.status()));
        }
        let bytes = Limited::new(resp.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| format!("reading the reply: {e}"))?
            .to_bytes();
        Ok::<_, String>(bytes.to_vec())
    };
    let reply = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| {
            format!(
                "no answer from {} within {}s",
                t.authority,
                TIMEOUT.as_secs()
            )
        })??;
    let info = tsp::parse_reply(&reply)?;
    if !info.sha256 || info.imprint != hash {
        return Err("the reply's message imprint is not the manifest's hash".into());
    }
    if info.nonce.as_deref() != Some(tsp::nonce_value(&nonce).as_slice()) {
        return Err("the reply does not carry our nonce".into());
    }
    Ok((reply, info))
}

/// One attempt to timestamp a manifest hash.
pub async fn stamp(cfg: &Tsa, hash: &[u8; 32]) -> Result<(Vec<u8>, tsp::TokenInfo), String> {
    send(&cfg.url, hash).await
}

fn pending(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// Writes a file atomically (temporary name, then rename).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Queues a request that could not be sent now.
pub fn enqueue(cfg: &Tsa, hash: &[u8; 32], outlet_id: i64) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.queue_dir)
        .map_err(|e| format!("creating {}: {e}", cfg.queue_dir.display()))?;
    if pending(&cfg.queue_dir) >= MAX_QUEUED {
        return Err(format!("the queue is full ({MAX_QUEUED} requests)"));
    }
    let sha = crate::accounts::hex(hash);
    let now = now_ms();
    let q = Queued {
        manifest_sha256: sha.clone(),
        outlet_id,
        url: cfg.url.clone(),
        created_ms: now,
        attempts: 1,
        next_ms: now + FIRST_DELAY_MS,
        last_error: String::new(),
    };
    let data = serde_json::to_vec(&q).map_err(|e| e.to_string())?;
    write_atomic(&cfg.queue_dir.join(format!("{sha}.json")), &data).map_err(|e| e.to_string())
}

fn is_sha(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Sends every queued request that is due; returns how many tokens were obtained.
pub async fn retry_due(cfg: &Tsa) -> usize {
    let Ok(dir) = std::fs::read_dir(&cfg.queue_dir) else {
        return 0;
    };
    let now = now_ms();
    let mut got = 0;
    for e in dir.filter_map(|e| e.ok()).take(MAX_QUEUED) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(sha) = name.strip_suffix(".json").filter(|s| is_sha(s)) else {
            continue;
        };
        let path = e.path();
        let Ok(mut q) = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Queued>(&b).map_err(|e| e.to_string()))
        else {
            continue;
        };
        if q.next_ms > now {
            continue;
        }
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = sha
                .get(i * 2..i * 2 + 2)
                .and_then(|x| u8::from_str_radix(x, 16).ok())
                .unwrap_or(0);
        }
        match send(&q.url, &hash).await {
            Ok((reply, _)) => {
                let meta = serde_json::to_vec(&q).unwrap_or_default();
                if write_atomic(&cfg.queue_dir.join(format!("{sha}.tsr")), &reply).is_ok()
                    && write_atomic(&cfg.queue_dir.join(format!("{sha}.done")), &meta).is_ok()
                {
                    let _ = std::fs::remove_file(&path);
                    got += 1;
                }
            }
            Err(why) => {
                q.attempts += 1;
                q.last_error = why;
                if q.attempts > MAX_ATTEMPTS {
                    tracing::warn!(manifest = sha, "timestamp request given up");
                    let _ = std::fs::rename(&path, path.with_extension("failed"));
                    continue;
                }
                let shift = q.attempts.min(16);
                q.next_ms = now + (FIRST_DELAY_MS << shift).min(MAX_DELAY_MS);
                if let Ok(b) = serde_json::to_vec(&q) {
                    let _ = write_atomic(&path, &b);
                }
            }
        }
    }
    got
}

/// Retries queued requests once a minute, for as long as the service runs.
pub async fn retry_loop(cfg: Tsa) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let n = retry_due(&cfg).await;
        if n > 0 {
            tracing::info!(tokens = n, "queued timestamp requests answered");
        }
    }
}

/// A token obtained after the package was made, for the outlet that made it. `Ok(None)` while
/// the request still waits; `NotFound` when there is no such request or it is another outlet's.
pub fn late_token(cfg: &Tsa, sha: &str, outlet_id: i64) -> Result<Option<Vec<u8>>, crate::Error> {
    let sha = sha.to_ascii_lowercase();
    if !is_sha(&sha) {
        return Err(crate::Error::NotFound);
    }
    let owner = |ext: &str| -> Option<i64> {
        let b = std::fs::read(cfg.queue_dir.join(format!("{sha}.{ext}"))).ok()?;
        serde_json::from_slice::<Queued>(&b)
            .ok()
            .map(|q| q.outlet_id)
    };
    if let Some(o) = owner("done") {
        if o != outlet_id {
            return Err(crate::Error::NotFound);
        }
        return std::fs::read(cfg.queue_dir.join(format!("{sha}.tsr")))
            .map(Some)
            .map_err(|_| crate::Error::NotFound);
    }
    match owner("json") {
        Some(o) if o == outlet_id => Ok(None),
        _ => Err(crate::Error::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:3180/tsa").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 3180, "/tsa")
        );
        let t = parse_url("http://freetsa.org/tsr").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("freetsa.org", 80));
        let t = parse_url("http://[::1]:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8080, "/")
        );
        for bad in [
            "https://x",
            "ftp://x",
            "http://",
            "http://u@x/",
            "http://x:99999/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
