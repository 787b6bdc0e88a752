//! Tests of the `qalqan` executable itself: configuration commands, the shield's quick mode, and
//! a shield started from a file that is reloaded with SIGHUP and stopped with SIGTERM.
//!
//! Each test that runs the shield starts a real origin on 127.0.0.1:0 in the test, picks free
//! ports for the shield by binding port 0 and releasing it, and kills the process if the test
//! fails half-way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn qalqan() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qalqan"))
}

fn run(args: &[&str]) -> Output {
    qalqan().args(args).output().expect("run qalqan")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn testdata(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shield/testdata")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no files in {}", dir.display());
    files
}

/// The values of `# name: value` comment lines in a test file.
fn annotations(file: &Path, name: &str) -> Vec<String> {
    let prefix = format!("# {name}:");
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
        .collect()
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("qalqan-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real origin on 127.0.0.1:0 answering `200 hello <path>`, never cacheable.
async fn origin() -> SocketAddr {
    let sock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = sock.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let mut r =
                        Response::new(Full::new(Bytes::from(format!("hello {}", req.uri()))));
                    r.headers_mut()
                        .insert("cache-control", "no-store".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// GET `url` on a fresh connection; `None` if there is no answer.
async fn get(url: &str) -> Option<(u16, String)> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(3), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, text(&body)))
}

/// Statuses of `n` GETs.
async fn statuses(url: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(url).await.expect("the shield answers").0);
    }
    out
}

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, body) = get(&format!("http://{admin}/metrics"))
        .await
        .expect("metrics");
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// A running `qalqan shield`, killed on drop. Its stderr goes to a file read by [`Shield::stderr`].
struct Shield {
    child: Child,
    stderr: PathBuf,
    admin: SocketAddr,
}

impl Shield {
    /// Starts `qalqan shield ARGS` and waits until its admin listener answers /healthz.
    async fn start(dir: &TempDir, args: &[&str], admin: SocketAddr) -> Shield {
        let stderr = dir.0.join("stderr.log");
        let child = qalqan()
            .arg("shield")
            .args(args)
            .env("QALQAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start qalqan shield");
        let mut s = Shield {
            child,
            stderr,
            admin,
        };
        let t = Instant::now();
        loop {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("qalqan shield exited early ({st}): {}", s.stderr());
            }
            if let Some((200, _)) = get(&format!("http://{admin}/healthz")).await {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(8),
                "no /healthz: {}",
                s.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // /healthz answers as soon as the listeners are up; the signal handlers are installed
        // just after. Give them a moment so an early SIGHUP is not taken for its default action.
        tokio::time::sleep(Duration::from_millis(300)).await;
        s
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill({pid}, {sig})");
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`.
    async fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(t.elapsed() < limit, "still running {limit:?} after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls a metric until it has `want`, at most 5 s.
    async fn wait_metric(&self, name: &str, want: f64) {
        let t = Instant::now();
        loop {
            let v = metric(self.admin, name).await;
            if v == want {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{name} is {v}, not {want}: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Shield {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn config_default_passes_check() {
    let out = run(&["config", "default"]);
    assert!(out.status.success());
    let default = text(&out.stdout);
    assert!(default.contains("[[route]]") && default.contains("name = \"default\""));
    let dir = TempDir::new("default");
    let file = dir.file("default.toml", &default);
    let out = run(&["config", "check", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ok (5 route classes)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn testdata_good_files_load() {
    for file in testdata("good") {
        let out = run(&["config", "check", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} must load: {}",
            file.display(),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains(": ok ("),
            "{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn testdata_bad_files_fail_with_their_key_paths() {
    for file in testdata("bad") {
        let out = run(&["config", "check", file.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{} must fail", file.display());
        assert_eq!(out.status.code(), Some(1), "{}", file.display());
        assert!(
            err.contains("problem(s) in the configuration"),
            "{}: {err}",
            file.display()
        );
        let expect = annotations(&file, "expect");
        assert!(
            !expect.is_empty(),
            "{} names no `# expect:` key path",
            file.display()
        );
        for path in expect {
            assert!(
                err.contains(&format!("  - {path}: ")),
                "{}: no problem reported at `{path}`:\n{err}",
                file.display()
            );
        }
    }
}

#[test]
fn several_problems_are_reported_at_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shield/testdata/bad");
    let file = dir.join("many_problems.toml");
    let out = run(&["config", "check", file.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    let expect = annotations(&file, "expect");
    assert!(expect.len() >= 8);
    assert!(
        err.contains(&format!("{} problem(s) in the configuration", expect.len())),
        "one run reports all {} problems:\n{err}",
        expect.len()
    );
    for path in expect {
        assert!(
            err.contains(&format!("  - {path}: ")),
            "missing {path}:\n{err}"
        );
    }
}

#[test]
fn config_check_of_a_missing_file_says_so() {
    let out = run(&["config", "check", "/nonexistent/qalqan.toml"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read the configuration /nonexistent/qalqan.toml"),
        "{err}"
    );
}

#[test]
fn config_check_never_prints_the_atlas_token() {
    let dir = TempDir::new("atlas-token");
    let base = "[[listen]]\naddress = \"127.0.0.1:8080\"\n[origin]\nurl = \"http://127.0.0.1:8081\"\n[atlas]\nsite = \"https://kursiv.media\"\n";
    // Plain http to a public address: accepted with a warning, which names the URL, not the token.
    let warned = dir.file(
        "warned.toml",
        &format!("{base}url = \"http://203.0.113.5\"\ntoken = \"qat_secret_in_clear\"\n"),
    );
    // A token with a space cannot be sent: refused, without quoting it.
    let bad = dir.file(
        "bad.toml",
        &format!("{base}url = \"http://127.0.0.1:9\"\ntoken = \"qat_secret with_space\"\n"),
    );
    let out = run(&["config", "check", warned.to_str().unwrap()]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(all.contains("token travels in clear"), "{all}");
    assert!(!all.contains("qat_secret"), "{all}");
    let out = run(&["config", "check", bad.to_str().unwrap()]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success());
    assert!(all.contains("atlas.token: "), "{all}");
    assert!(!all.contains("qat_secret"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_serves_and_proxies() {
    let origin = origin().await;
    let (listen, admin) = (free_port(), free_port());
    let dir = TempDir::new("quick");
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let shield = Shield::start(
        &dir,
        &[
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--upstream",
            &format!("http://{origin}"),
            "--admin",
            &admin_addr.to_string(),
            "--threads",
            "1",
        ],
        admin_addr,
    )
    .await;
    let (status, body) = get(&format!("http://127.0.0.1:{listen}/news/today"))
        .await
        .expect("an answer");
    assert_eq!(status, 200);
    assert_eq!(body, "hello /news/today", "the origin's page came through");
    assert_eq!(
        metric(
            admin_addr,
            "qalqan_shield_requests_total{decision=\"pass\"}"
        )
        .await,
        1.0
    );
    let err = shield.stderr();
    assert!(
        !err.contains("WARNING"),
        "no warning for a sane setup: {err}"
    );
    let st = shield.terminate(Duration::from_secs(12)).await;
    assert!(st.success(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_warns_loudly_when_trusting_everyone() {
    let origin = origin().await;
    let (listen, admin) = (free_port(), free_port());
    let dir = TempDir::new("trust-all");
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let shield = Shield::start(
        &dir,
        &[
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--upstream",
            &format!("http://{origin}"),
            "--admin",
            &admin_addr.to_string(),
            "--trusted-proxy",
            "0.0.0.0/0",
        ],
        admin_addr,
    )
    .await;
    let err = shield.stderr();
    let warning = err
        .lines()
        .find(|l| l.starts_with("WARNING:"))
        .unwrap_or_else(|| panic!("no WARNING line on stderr:\n{err}"));
    assert!(
        warning.contains("0.0.0.0/0") && warning.contains("forge"),
        "{warning}"
    );
    let st = shield.terminate(Duration::from_secs(12)).await;
    assert!(st.success(), "{st}");
}

#[test]
fn quick_mode_refuses_a_non_http_upstream() {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = run(&["shield", "--listen", &listen, "--upstream", "ftp://x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--upstream") && err.contains("ftp://x") && err.contains("http://"),
        "{err}"
    );
    assert!(
        !err.contains("origin.url"),
        "the message speaks of the flag, not the file key: {err}"
    );
}

#[test]
fn shield_without_config_or_upstream_says_what_to_give() {
    let out = run(&["shield"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("--config") && err.contains("--upstream"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_refuses_a_broken_file_and_sigterm_stops() {
    let origin = origin().await;
    let (listen, admin) = (free_port(), free_port());
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let dir = TempDir::new("sighup");
    let config = |rate: u32| {
        format!(
            "[[listen]]\naddress = \"127.0.0.1:{listen}\"\n[admin]\naddress = \"{admin_addr}\"\n\
             [origin]\nurl = \"http://{origin}\"\n[access_log]\npath = \"\"\n\
             [[route]]\nname = \"default\"\nrate_per_address = {rate}\nrate_per_prefix = 1000\ncache_ttl = \"0s\"\n"
        )
    };
    let file = dir.file("shield.toml", &config(2));
    let shield = Shield::start(&dir, &["--config", file.to_str().unwrap()], admin_addr).await;
    let url = format!("http://127.0.0.1:{listen}/");

    let before = statuses(&url, 5).await;
    assert_eq!(before[..2], [200, 200], "{before:?}");
    assert!(before[2..].contains(&429), "limited at 2/s: {before:?}");

    // A higher limit, applied by SIGHUP.
    dir.file("shield.toml", &config(100));
    shield.signal(libc::SIGHUP);
    shield.wait_metric("qalqan_shield_reloads_total", 1.0).await;
    let after = statuses(&url, 25).await;
    assert_eq!(after, [200; 25], "the new limit (100/s) applies");

    // A broken file is refused; the running configuration stays.
    dir.file(
        "shield.toml",
        &format!("{}\n[client]\nipv4_prefix = 99\n", config(1)),
    );
    shield.signal(libc::SIGHUP);
    shield
        .wait_metric("qalqan_shield_reload_failures_total", 1.0)
        .await;
    assert_eq!(metric(admin_addr, "qalqan_shield_reloads_total").await, 1.0);
    let kept = statuses(&url, 25).await;
    assert_eq!(
        kept, [200; 25],
        "still 100/s, not the broken file's 1/s nor a default"
    );
    let err = shield.stderr();
    assert!(
        err.contains("reload refused") && err.contains("client.ipv4_prefix"),
        "{err}"
    );

    let t = Instant::now();
    let st = shield.terminate(Duration::from_secs(12)).await;
    assert!(st.success(), "exit status {st}");
    assert!(t.elapsed() < Duration::from_secs(12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shield_mode_command_sets_and_clears_the_override() {
    let origin = origin().await;
    let (listen, admin) = (free_port(), free_port());
    let dir = TempDir::new("mode");
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let shield = Shield::start(
        &dir,
        &[
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--upstream",
            &format!("http://{origin}"),
            "--admin",
            &admin_addr.to_string(),
        ],
        admin_addr,
    )
    .await;
    let admin_s = admin_addr.to_string();
    let under = |m: f64| m == 1.0;
    let out = run(&[
        "shield",
        "mode",
        "under-attack",
        "--for",
        "2h",
        "--admin",
        &admin_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"mode\":\"under_attack\""),
        "{}",
        text(&out.stdout)
    );
    assert!(under(
        metric(admin_addr, "qalqan_shield_mode{mode=\"under_attack\"}").await
    ));
    // A duration is required, and a bad one is refused before anything is sent.
    let out = run(&["shield", "mode", "under-attack", "--admin", &admin_s]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--for"), "{}", text(&out.stderr));
    let out = run(&[
        "shield",
        "mode",
        "under-attack",
        "--for",
        "soon",
        "--admin",
        &admin_s,
    ]);
    assert!(!out.status.success());
    let out = run(&["shield", "mode", "auto", "--admin", &admin_s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(under(
        metric(admin_addr, "qalqan_shield_mode{mode=\"normal\"}").await
    ));
    // Nobody listening: a clear error, not a hang.
    let out = run(&[
        "shield",
        "mode",
        "auto",
        "--admin",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
    let st = shield.terminate(Duration::from_secs(12)).await;
    assert!(st.success(), "{st}");
}

#[test]
fn shield_episodes_lists_recorded_attacks() {
    let dir = TempDir::new("episodes");
    let mut e = qalqan_detect::Episode::new(1_795_774_110_000);
    for i in 0..50u64 {
        let addr = if i % 5 == 0 {
            "198.51.100.9"
        } else {
            "203.0.113.7"
        };
        let kz = i % 5 != 0;
        e.observe(
            &qalqan_detect::Request {
                addr: addr.parse().unwrap(),
                asn: kz.then_some(9198),
                country: kz.then_some(*b"KZ"),
                method: "GET",
                path: "/search",
                query: "q=number+one",
                user_agent: "bot",
                decision: "limited",
            },
            i,
        );
    }
    e.record_second(1_795_774_111_000, 50);
    e.finish(1_795_774_410_000);
    let file = dir.0.join("episodes.jsonl");
    // The shield names each AS from its geo data when it writes the episode.
    let mut v = serde_json::to_value(&e).unwrap();
    v["heavy_hitters"]["asns"][0]["org"] = "JSC Kazakhtelecom".into();
    let line = v.to_string();
    std::fs::write(&file, format!("{line}\nnot json\n")).unwrap();
    let out = run(&["shield", "episodes", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let row = table.lines().nth(1).expect("one row");
    assert!(row.starts_with("27/Nov/2026:10:08:30 +0000"), "{row}");
    assert!(
        row.contains("203.0.113.7") && row.contains("/search") && row.contains(" 50 "),
        "{row}"
    );
    assert!(
        row.contains(" KZ ") && row.contains("AS9198 JSC Kazakhtelecom"),
        "the top country and AS are listed: {row}"
    );
    assert!(text(&out.stderr).contains("line 2: not an episode"));
    let out = run(&[
        "shield",
        "episodes",
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(text(&out.stdout).lines().next(), Some(line.as_str()));
    let out = run(&[
        "shield",
        "episodes",
        "--file",
        dir.0.join("none").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no attack recorded yet"));
}
