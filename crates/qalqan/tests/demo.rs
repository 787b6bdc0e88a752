//! `qalqan demo` as a newcomer runs it: the real binary, real sockets on loopback. Everything
//! it prints must answer, the dashboard must show the sample outlets, an attack replay must
//! leave an incident in the atlas, and Ctrl-C must stop the whole process and free its ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A minimal HTTP/1.1 exchange over a fresh connection (`Connection: close`): status, headers
/// (lower-cased names), body.
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(hostport).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        headers,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    )
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qalqan"))
            .arg("demo")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qalqan demo");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Demo { child, lines }
    }

    /// The next JSON line printed, within `wait`.
    fn next_json(&self, wait: Duration) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self
                .lines
                .recv_timeout(left)
                .expect("the demo printed no JSON line in time");
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                return v;
            }
        }
    }

    fn interrupt(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with the child's own pid and SIGINT, the signal Ctrl-C sends.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert_eq!(rc, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not stop within 20 s of Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn host_port(url: &str) -> String {
    let r = url.strip_prefix("http://").unwrap();
    r.split('/').next().unwrap().to_string()
}

/// Logs in through the dashboard's form and returns the session cookie.
fn log_in(atlas: &str, email: &str, password: &str) -> String {
    let body = format!("email={}&password={}", email.replace('@', "%40"), password);
    let (st, headers, _) = http(
        "POST",
        &format!("{atlas}/login"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &body,
    );
    assert!(st == 303 || st == 302 || st == 200, "login: {st}");
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_string())
        .next()
        .expect("a session cookie")
}

#[test]
fn demo_serves_everything_replays_an_attack_and_stops_on_ctrl_c() {
    let mut demo = Demo::start(&[
        "--port",
        "0",
        "--json",
        "--attack",
        "--attack-seconds",
        "12",
    ]);
    let ready = demo.next_json(Duration::from_secs(60));
    assert_eq!(s(&ready, "event"), "ready");
    let (site, atlas, taxii, metrics, origin) = (
        s(&ready, "site"),
        s(&ready, "atlas"),
        s(&ready, "taxii"),
        s(&ready, "metrics"),
        s(&ready, "origin"),
    );
    let token = s(&ready, "api_token");
    let data_dir = s(&ready, "data_dir").to_string();
    assert!(token.starts_with("qat_"));
    assert!(std::path::Path::new(&data_dir).join("atlas.db").exists());

    // Every URL answers.
    let (st, _, body) = http("GET", &format!("{site}/"), &[], "");
    assert_eq!(st, 200);
    assert!(body.contains("Dala News"), "{body}");
    let (st, _, body) = http("GET", &format!("{site}/feed.xml"), &[], "");
    assert_eq!(st, 200);
    assert!(body.contains("<rss"), "{body}");
    assert_eq!(http("GET", &format!("{origin}/__stats"), &[], "").0, 200);
    let (st, _, body) = http("GET", metrics, &[], "");
    assert_eq!(st, 200);
    assert!(body.contains("qalqan_shield_requests_total"));
    let auth = format!("Bearer {token}");
    let (st, _, body) = http(
        "GET",
        taxii,
        &[
            ("Authorization", &auth),
            ("Accept", "application/taxii+json;version=2.1"),
        ],
        "",
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("api_roots"), "{body}");
    let (st, _, body) = http(
        "GET",
        &format!("{atlas}/api/v1/incidents?limit=100"),
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(st, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    let outlets: std::collections::BTreeSet<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["outlet"].as_str().unwrap())
        .collect();
    assert_eq!(
        outlets.into_iter().collect::<Vec<_>>(),
        ["dala", "qala", "saryarqa"],
        "the sample history spans the three outlets"
    );

    // The dashboard, logged in as the demo outlet's admin, shows the sample outlets.
    let login = &ready["logins"][0];
    assert_eq!(s(login, "email"), "admin@dala.demo");
    let cookie = log_in(atlas, s(login, "email"), s(login, "password"));
    let (st, _, page) = http("GET", &format!("{atlas}/"), &[("Cookie", &cookie)], "");
    assert_eq!(st, 200);
    for name in ["Dala News", "Qala Times", "Saryarqa Today"] {
        assert!(page.contains(name), "{name} missing from the dashboard");
    }

    // The attack replay ends with the shield's incident in the atlas.
    let done = demo.next_json(Duration::from_secs(240));
    assert_eq!(s(&done, "event"), "attack_done");
    let id = done["incident"]
        .as_str()
        .unwrap_or_else(|| panic!("no incident after the attack: {done}"));
    let (st, _, body) = http(
        "GET",
        &format!("{atlas}/api/v1/incidents/{id}"),
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(st, 200, "{body}");
    let inc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(inc["kind"], "http_flood");
    assert_eq!(inc["outlet"], "dala");
    // The map, campaigns and the publications feed have something to show.
    let (st, _, body) = http(
        "GET",
        &format!("{atlas}/api/v1/campaigns"),
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(st, 200, "{body}");
    let camps: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !camps["items"].as_array().unwrap().is_empty(),
        "the sample botnet should be proposed as a campaign: {body}"
    );
    let (st, _, body) = http(
        "GET",
        &format!("{atlas}/api/v1/feeds"),
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(st, 200, "{body}");
    let feeds: Value = serde_json::from_str(&body).unwrap();
    assert!(
        feeds[0]["last_ok"].is_string(),
        "the sample feed was polled: {body}"
    );
    let (st, _, page) = http("GET", &format!("{atlas}/map"), &[("Cookie", &cookie)], "");
    assert_eq!(st, 200);
    assert!(page.contains("<svg"), "the map page draws the world");
    let sum = &done["summary"];
    assert!(sum["attackers"]["sent"].as_u64().unwrap() > 0, "{sum}");
    assert!(sum["baseline"]["views"].as_u64().unwrap() > 0, "{sum}");

    // Ctrl-C: the process ends cleanly, its ports close, its temporary files go.
    let st = demo.interrupt();
    assert!(st.success(), "{st:?}");
    for url in [site, atlas, metrics, origin] {
        assert!(
            TcpStream::connect(host_port(url)).is_err(),
            "{url} still accepts connections after Ctrl-C"
        );
    }
    assert!(
        !std::path::Path::new(&data_dir).exists(),
        "{data_dir} left behind"
    );
}
