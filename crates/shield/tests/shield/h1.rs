//! The shield's own HTTP/1.1 reader (`h1`) and its hand-off to hyper, on raw connections: the
//! bytes a client sends and reads are checked directly, so framing mistakes cannot hide behind a
//! forgiving client library.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(5);

/// One response read off a raw connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response for a request with `method` from `s`, keeping extra bytes in `buf`.
/// Handles Content-Length and chunked bodies; `None` if the connection ends first.
async fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>, method: &str) -> Option<Reply> {
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        (n > 0).then(|| buf.extend_from_slice(&chunk[..n]))
    }
    let (status, headers, head_len) = loop {
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut h);
        if let httparse::Status::Complete(n) = r.parse(buf).expect("a valid response head") {
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            break (r.code.expect("status"), headers, n);
        }
        more(s, buf).await?;
    };
    buf.drain(..head_len);
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if method != "HEAD" && status != 204 && status != 304 {
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    more(s, buf).await?;
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?, 16).ok()?;
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    more(s, buf).await?;
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len.trim().parse().expect("content-length");
            while buf.len() < len {
                more(s, buf).await?;
            }
            body = buf.drain(..len).collect();
        }
    }
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// A connection on which one plain GET has been answered 200 by the shield's own reader.
async fn after_one_plain_request(addr: std::net::SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: news.example\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, &mut buf, "GET").await.expect("reply");
    assert_eq!(r.status, 200);
    (s, buf)
}

async fn eof_within(s: &mut TcpStream, buf: &mut Vec<u8>, t: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + t;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_and_hyper_s_share_one_connection_in_order() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = shield_for(&origin, "").await;
    let (addr, admin) = (shield.listen[0], shield.admin.unwrap());
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();

    // Two pipelined GETs in one write: answered in order by the shield's own reader.
    s.write_all(b"GET /a HTTP/1.1\r\nHost: news.example\r\n\r\nGET /b?x=1 HTTP/1.1\r\nHost: news.example\r\n\r\n")
        .await
        .unwrap();
    for want in ["hello /a", "hello /b?x=1"] {
        let r = read_reply(&mut s, &mut buf, "GET").await.expect("reply");
        assert_eq!((r.status, r.text().as_str()), (200, want));
        assert_eq!(r.header("content-length"), Some(&*want.len().to_string()));
        assert!(r.header("date").is_some(), "a date header: {r:?}");
        assert_eq!(r.header("x-qalqan-cache"), Some("bypass"));
    }
    // HEAD: the length without a body, and the next answer is not out of step.
    s.write_all(b"HEAD /h HTTP/1.1\r\nHost: news.example\r\n\r\nGET /c HTTP/1.1\r\nHost: news.example\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, &mut buf, "HEAD")
        .await
        .expect("HEAD reply");
    assert_eq!(r.status, 200);
    let r = read_reply(&mut s, &mut buf, "GET").await.expect("reply");
    assert_eq!(r.text(), "hello /c");
    assert_eq!(
        metric(admin, "qalqan_shield_http1_handoffs_total").await,
        0.0,
        "no request so far needed hyper"
    );
    let origin_seen = origin.seen.lock().unwrap().clone();
    let a = origin_seen
        .iter()
        .find(|x| x.uri == "/a")
        .expect("origin saw /a");
    assert_eq!(a.headers["host"], "news.example");
    assert!(a.headers.contains_key("x-forwarded-for"));

    // A POST with a body moves the connection to hyper, with the GET pipelined behind it.
    s.write_all(b"POST /p HTTP/1.1\r\nHost: news.example\r\nContent-Length: 5\r\n\r\nhelloGET /d HTTP/1.1\r\nHost: news.example\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, &mut buf, "POST")
        .await
        .expect("POST reply");
    assert_eq!((r.status, r.text().as_str()), (200, "hello /p"));
    let r = read_reply(&mut s, &mut buf, "GET")
        .await
        .expect("reply after POST");
    assert_eq!((r.status, r.text().as_str()), (200, "hello /d"));
    let posted = origin
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|x| x.uri == "/p")
        .cloned();
    assert_eq!(posted.expect("origin saw the POST").body, "hello");
    assert_eq!(
        metric(admin, "qalqan_shield_http1_handoffs_total").await,
        1.0
    );

    // Connection: close is answered, said, and honoured.
    s.write_all(b"GET /e HTTP/1.1\r\nHost: news.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, &mut buf, "GET").await.expect("reply");
    assert_eq!(r.text(), "hello /e");
    assert!(
        eof_within(&mut s, &mut buf, WAIT).await,
        "closed after close"
    );
    assert!(buf.is_empty(), "nothing after the last reply: {buf:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_a_plain_request_is_honoured_by_the_own_reader() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = shield_for(&origin, "").await;
    let mut s = TcpStream::connect(shield.listen[0]).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /only HTTP/1.1\r\nHost: news.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, &mut buf, "GET").await.expect("reply");
    assert_eq!((r.status, r.text().as_str()), (200, "hello /only"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(eof_within(&mut s, &mut buf, WAIT).await);
    assert_eq!(
        metric(shield.admin.unwrap(), "qalqan_shield_http1_handoffs_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_head_after_plain_requests_gets_hyper_s_400() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = shield_for(&origin, "").await;
    let (mut s, mut buf) = after_one_plain_request(shield.listen[0]).await;
    s.write_all(b"GET /x HTTP/1.1\r\nBad Header Line\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, &mut buf, "GET")
        .await
        .expect("an answer");
    assert_eq!(r.status, 400);
    assert!(eof_within(&mut s, &mut buf, WAIT).await, "closed after 400");
    assert_eq!(origin.count("/x"), 0);

    // A head over max_header_bytes after a plain request: 431.
    let (mut s, mut buf) = after_one_plain_request(shield.listen[0]).await;
    let mut big = b"GET /big HTTP/1.1\r\nHost: news.example\r\n".to_vec();
    for i in 0..20 {
        big.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let _ = s.write_all(&big).await;
    let r = read_reply(&mut s, &mut buf, "GET")
        .await
        .expect("an answer");
    assert_eq!(r.status, 431);
    assert_eq!(origin.count("/big"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_head_that_never_completes_is_cut_at_the_header_timeout() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = shield_for(
        &origin,
        "[client]\nheader_read_timeout = \"1s\"\nidle_timeout = \"60s\"\n",
    )
    .await;
    let (mut s, mut buf) = after_one_plain_request(shield.listen[0]).await;
    // Quiet for longer than the header timeout: an idle keep-alive connection is not cut.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: news.example\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    assert!(
        eof_within(&mut s, &mut buf, Duration::from_secs(4)).await,
        "a half head is cut"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "cut after {took:?}, want about 1 s"
    );
    assert!(buf.is_empty(), "no answer to a half head: {buf:?}");
    assert_eq!(origin.count("/slow"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_the_request_in_progress_is_answered_with_close() {
    let origin = Origin::simple(Some("no-store")).await;
    origin.delay("/slow", Duration::from_millis(600));
    let shield = shield_for(&origin, "").await;
    let mut s = TcpStream::connect(shield.listen[0]).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: news.example\r\n\r\n")
        .await
        .unwrap();
    // The request is at the origin when the shutdown begins.
    assert!(eventually(WAIT, || origin.count("/slow") == 1).await);
    let stopping = tokio::spawn(shield.shutdown());
    let r = read_reply(&mut s, &mut buf, "GET")
        .await
        .expect("the answer");
    assert_eq!((r.status, r.text().as_str()), (200, "hello /slow"));
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "the client is told not to send another request"
    );
    assert!(eof_within(&mut s, &mut buf, WAIT).await, "then closed");
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown finished")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_a_byte_at_a_time_is_served() {
    let origin = Origin::simple(Some("no-store")).await;
    let shield = shield_for(&origin, "").await;
    let mut s = TcpStream::connect(shield.listen[0]).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    for b in b"GET /drip HTTP/1.1\r\nHost: news.example\r\n\r\n" {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = read_reply(&mut s, &mut buf, "GET").await.expect("reply");
    assert_eq!((r.status, r.text().as_str()), (200, "hello /drip"));
    assert_eq!(
        metric(shield.admin.unwrap(), "qalqan_shield_http1_handoffs_total").await,
        0.0
    );
}
