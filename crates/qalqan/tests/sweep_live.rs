//! `qalqan sweep watch`, `clean` and `report-to-atlas` end to end, the real binary each time.
//!
//! **The real Telegram Bot API is unreachable from here**, so these tests run the binary
//! against `FakeBotApi`: a real HTTP server on port 0 in this test process that implements
//! the methods sweep calls (getMe, getUpdates with offset/limit/timeout, getChatMemberCount,
//! restrictChatMember, banChatMember, unbanChatMember, deleteMessages) with the Bot API's JSON
//! shapes, can answer 429 with `retry_after`, and records every call so the tests can assert
//! what was done, and that nothing was ever sent to a chat. The atlas is the real one, served
//! in this process on port 0 over SQLite.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const TOKEN: &str = "123456:TESTtokenTESTtokenTESTtoken_-12";
const GROUP: i64 = -1_001_500;
const CHANNEL: i64 = -1_001_600;
const HIDDEN_JOINS: i64 = 37;

fn qalqan() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qalqan"))
}

// ---------------------------------------------------------------------------------------------
// The fake Bot API.

#[derive(Default)]
struct FakeState {
    /// Every update the "server" holds, by id; getUpdates hands out those >= offset.
    updates: Vec<Value>,
    /// Only updates with an id below this are handed out (lets a test release them in stages).
    release_below: i64,
    /// One past the highest update id handed out so far.
    handed_out_below: i64,
    calls: Vec<(String, Value)>,
    /// Base member count per chat; the count grows with the joins handed out.
    base_count: HashMap<i64, i64>,
    /// Joins that never arrive as updates; they show in the count from the second count poll
    /// after everything was handed out (the first is the watcher's baseline after catching up).
    hidden_joins: HashMap<i64, i64>,
    polls_after_all_out: HashMap<i64, u32>,
    /// The n-th call (1-based, per method) to answer with 429 and this retry_after.
    fail_429: Option<(String, usize, u64)>,
}

#[derive(Clone)]
struct FakeBotApi {
    url: String,
    state: Arc<Mutex<FakeState>>,
}

impl FakeBotApi {
    async fn start() -> FakeBotApi {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let sock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = sock.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        FakeBotApi {
            url: format!("http://{addr}"),
            state,
        }
    }

    fn calls(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().calls.clone()
    }

    fn methods(&self) -> BTreeSet<String> {
        self.calls().into_iter().map(|(m, _)| m).collect()
    }

    fn count_of(&self, method: &str) -> usize {
        self.calls().iter().filter(|(m, _)| m == method).count()
    }
}

fn answer(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn is_join(u: &Value) -> Option<i64> {
    let c = u.get("chat_member")?;
    (c["new_chat_member"]["status"] == "member").then(|| c["chat"]["id"].as_i64().unwrap())
}

async fn handle(st: Arc<Mutex<FakeState>>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let params: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let Some(method) = path
        .strip_prefix(&format!("/bot{TOKEN}/"))
        .map(str::to_string)
    else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({"ok": false, "error_code": 404, "description": "Not Found"}),
        );
    };
    let timeout: u64;
    {
        let mut s = st.lock().unwrap();
        s.calls.push((method.clone(), params.clone()));
        let nth = s.calls.iter().filter(|(m, _)| *m == method).count();
        if let Some((m, n, secs)) = s.fail_429.clone()
            && m == method
            && n == nth
        {
            return answer(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"ok": false, "error_code": 429,
                       "description": format!("Too Many Requests: retry after {secs}"),
                       "parameters": {"retry_after": secs}}),
            );
        }
        match method.as_str() {
            "getMe" => {
                return answer(
                    StatusCode::OK,
                    json!({"ok": true, "result": {"id": 123456, "is_bot": true,
                        "first_name": "Qalqan sweep", "username": "qalqan_sweep_bot",
                        "can_join_groups": true, "can_read_all_group_messages": true,
                        "supports_inline_queries": false}}),
                );
            }
            "getChatMemberCount" => {
                let chat = params["chat_id"].as_i64().unwrap_or(0);
                let Some(base) = s.base_count.get(&chat).copied() else {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}),
                    );
                };
                let served = s.handed_out_below;
                let joined = s
                    .updates
                    .iter()
                    .filter(|u| u["update_id"].as_i64().unwrap() < served)
                    .filter(|u| is_join(u) == Some(chat))
                    .count() as i64;
                let all_out = s
                    .updates
                    .last()
                    .is_none_or(|u| u["update_id"].as_i64().unwrap() < served);
                if all_out {
                    *s.polls_after_all_out.entry(chat).or_default() += 1;
                }
                let hidden = if all_out && s.polls_after_all_out[&chat] >= 2 {
                    s.hidden_joins.get(&chat).copied().unwrap_or(0)
                } else {
                    0
                };
                return answer(
                    StatusCode::OK,
                    json!({"ok": true, "result": base + joined + hidden}),
                );
            }
            "restrictChatMember" | "banChatMember" | "unbanChatMember" => {
                if params["user_id"].as_i64().is_none() || params["chat_id"].as_i64().is_none() {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        json!({"ok": false, "error_code": 400, "description": "Bad Request: invalid user_id specified"}),
                    );
                }
                return answer(StatusCode::OK, json!({"ok": true, "result": true}));
            }
            "deleteMessages" => {
                let n = params["message_ids"].as_array().map_or(0, Vec::len);
                if !(1..=100).contains(&n) {
                    return answer(
                        StatusCode::BAD_REQUEST,
                        json!({"ok": false, "error_code": 400, "description": "Bad Request: message_ids must have 1-100 items"}),
                    );
                }
                return answer(StatusCode::OK, json!({"ok": true, "result": true}));
            }
            "getUpdates" => {
                let offset = params["offset"].as_i64().unwrap_or(0);
                let limit = params["limit"].as_u64().unwrap_or(100).clamp(1, 100) as usize;
                let allowed: Vec<&str> = params["allowed_updates"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                assert!(
                    allowed.contains(&"chat_member"),
                    "chat_member must be asked for explicitly"
                );
                let out: Vec<Value> = s
                    .updates
                    .iter()
                    .filter(|u| {
                        let id = u["update_id"].as_i64().unwrap();
                        id >= offset && id < s.release_below
                    })
                    .take(limit)
                    .cloned()
                    .collect();
                if let Some(last) = out.last() {
                    let next = last["update_id"].as_i64().unwrap() + 1;
                    s.handed_out_below = s.handed_out_below.max(next);
                }
                if !out.is_empty() {
                    return answer(StatusCode::OK, json!({"ok": true, "result": out}));
                }
                timeout = params["timeout"].as_u64().unwrap_or(0).min(2);
            }
            _ => {
                return answer(
                    StatusCode::NOT_FOUND,
                    json!({"ok": false, "error_code": 404, "description": "Not Found: method not found"}),
                );
            }
        }
    }
    // An empty long poll waits (briefly) like the real one.
    tokio::time::sleep(Duration::from_millis(timeout * 300)).await;
    answer(StatusCode::OK, json!({"ok": true, "result": []}))
}

// ---------------------------------------------------------------------------------------------
// The scenario: synthetic comments with an R.I.P flood and a copy-pasted threat in the
// discussion group, synthetic joins with a templated wave in the channel.

struct Scenario {
    updates: Vec<Value>,
    flood_messages: BTreeSet<i64>,
    flood_users: BTreeSet<i64>,
    threat_users: BTreeSet<i64>,
    wave_users: BTreeSet<i64>,
}

fn scenario() -> Scenario {
    use qalqan_sweep::synth;
    let c = synth::comments(11, 1500, 150);
    let j = synth::joins(12, 2500, 400);
    let mut ids: HashMap<String, i64> = HashMap::new();
    let mut uid = |a: &str| -> i64 {
        if let Some(n) = a.strip_prefix("user").and_then(|n| n.parse().ok()) {
            return n;
        }
        let next = 5_000_000 + ids.len() as i64;
        *ids.entry(a.to_string()).or_insert(next)
    };
    // (time, update without id)
    let mut events: Vec<(i64, Value)> = Vec::new();
    let mut msg_id = 0;
    let mut s = Scenario {
        updates: Vec::new(),
        flood_messages: BTreeSet::new(),
        flood_users: BTreeSet::new(),
        threat_users: BTreeSet::new(),
        wave_users: BTreeSet::new(),
    };
    for (m, flood) in c.messages.iter().zip(&c.flood) {
        msg_id += 1;
        let u = uid(&m.author_id);
        if *flood {
            s.flood_messages.insert(msg_id);
            s.flood_users.insert(u);
        }
        events.push((
            m.time,
            json!({"message": {"message_id": msg_id, "date": m.time,
                "chat": {"id": GROUP, "type": "supergroup", "title": "Комментарии"},
                "from": {"id": u, "is_bot": false, "first_name": m.author_name},
                "text": m.text}}),
        ));
    }
    // Five accounts paste the same threat within an hour on day 15.
    let t0 = synth::EPOCH + 15 * 86_400 + 10 * 3600;
    for k in 0..5i64 {
        msg_id += 1;
        let u = 6_100_000 + k;
        s.threat_users.insert(u);
        let text = if k % 2 == 0 {
            "Журналист, мы знаем где ты живёшь. Удали статью."
        } else {
            "Журналист, мы знаем, где ты живешь!! Удали статью"
        };
        events.push((
            t0 + k * 600,
            json!({"message": {"message_id": msg_id, "date": t0 + k * 600,
                "chat": {"id": GROUP, "type": "supergroup"},
                "from": {"id": u, "is_bot": false, "first_name": "Аноним"},
                "text": text}}),
        ));
    }
    // A sticker (no text) and a message from a chat nobody watches.
    events.push((
        t0,
        json!({"message": {"message_id": 999_999, "date": t0, "chat": {"id": GROUP, "type": "supergroup"},
            "from": {"id": 1, "is_bot": false, "first_name": "a"}, "sticker": {"file_id": "x"}}}),
    ));
    events.push((
        t0,
        json!({"message": {"message_id": 5, "date": t0, "chat": {"id": -42, "type": "group"},
            "from": {"id": 1, "is_bot": false, "first_name": "a"}, "text": "hi"}}),
    ));
    for (jn, bot) in j.joins.iter().zip(&j.bot) {
        let u = uid(&jn.account_id);
        if *bot {
            s.wave_users.insert(u);
        }
        let user = if jn.username.as_deref().is_some_and(|x| !x.is_empty()) {
            json!({"id": u, "is_bot": false, "first_name": jn.name, "username": jn.username})
        } else {
            json!({"id": u, "is_bot": false, "first_name": jn.name})
        };
        let mut cm = json!({"chat": {"id": CHANNEL, "type": "channel", "title": "Kursiv"},
            "from": user, "date": jn.time,
            "old_chat_member": {"status": "left", "user": user},
            "new_chat_member": {"status": "member", "user": user}});
        if let Some(l) = &jn.invite_link {
            cm["invite_link"] = json!({"invite_link": l, "creator": {"id": 1, "is_bot": false, "first_name": "admin"},
                "creates_join_request": false, "is_primary": false, "is_revoked": false});
        }
        events.push((jn.time, json!({"chat_member": cm})));
    }
    events.sort_by_key(|e| e.0);
    for (i, (_, mut u)) in events.into_iter().enumerate() {
        u["update_id"] = json!(900_000 + i as i64);
        s.updates.push(u);
    }
    s
}

fn journal_ids(dir: &Path) -> Vec<i64> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["update_id"].as_i64())
        .collect()
}

fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("bot.token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    p
}

fn watch_cmd(api: &FakeBotApi, state: &Path, token: &Path, until_idle: bool) -> Command {
    let mut c = qalqan();
    c.args(["sweep", "watch", "--api-url", &api.url, "--token-file"])
        .arg(token)
        .args(["--chat", &GROUP.to_string(), "--chat", &CHANNEL.to_string()])
        .arg("--state")
        .arg(state)
        .args([
            "--poll-timeout",
            "1",
            "--count-every",
            "1s",
            "--analyze-every",
            "1s",
            "--window",
            "60d",
            "--lang",
            "kk",
        ])
        .env("QALQAN_LOG", "info");
    if until_idle {
        c.arg("--until-idle");
    }
    c
}

fn run_ok(c: &mut Command) -> (String, String) {
    let out = c.output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "stdout: {o}\nstderr: {e}");
    (o, e)
}

fn first_offset_after(api: &FakeBotApi, calls_before: usize) -> i64 {
    api.calls()[calls_before..]
        .iter()
        .find(|(m, _)| m == "getUpdates")
        .map(|(_, p)| p["offset"].as_i64().unwrap())
        .unwrap()
}

/// Join wave and message flood streamed as updates → journal on disk → a restart after a
/// stale checkpoint and a SIGKILL resumes at the right offset with no loss or duplication →
/// the reports find the wave, the flood and the threat; the count backstop sees hidden joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_against_fake_bot_api_since_real_telegram_is_unreachable() {
    let api = FakeBotApi::start().await;
    let sc = scenario();
    let n = sc.updates.len() as i64;
    let first_id = 900_000;
    let half = first_id + n / 2;
    {
        let mut s = api.state.lock().unwrap();
        s.updates = sc.updates.clone();
        s.release_below = half;
        s.base_count = HashMap::from([(GROUP, 800), (CHANNEL, 10_000)]);
        s.hidden_joins = HashMap::from([(CHANNEL, HIDDEN_JOINS)]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let state = tmp.path().join("state");

    // Run 1: the first half, then idle → exit.
    let (out, err) = tokio::task::spawn_blocking({
        let mut c = watch_cmd(&api, &state, &token, true);
        move || run_ok(&mut c)
    })
    .await
    .unwrap();
    assert!(out.contains("recorded"), "{out}");
    assert!(
        !err.contains(TOKEN) && !out.contains(TOKEN),
        "the token leaked"
    );
    let cp: Value =
        serde_json::from_slice(&std::fs::read(state.join("offset.json")).unwrap()).unwrap();
    assert_eq!(cp["offset"], half);

    // A crash between the journal's fsync and the checkpoint: the offset on disk is stale.
    std::fs::write(
        state.join("offset.json"),
        json!({"offset": half - 150}).to_string(),
    )
    .unwrap();

    // Run 2: release everything, kill the process with SIGKILL mid-stream.
    api.state.lock().unwrap().release_below = first_id + n;
    let before = api.calls().len();
    let mut child = watch_cmd(&api, &state, &token, false)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        let polls = api.calls()[before..]
            .iter()
            .filter(|(m, _)| m == "getUpdates")
            .count();
        if polls >= 8 || t.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // It resumed where the journal ends, not at the stale checkpoint.
    assert_eq!(first_offset_after(&api, before), half);

    // Run 3: catch up and exit.
    let last_journal = *journal_ids(&state).iter().max().unwrap();
    let before = api.calls().len();
    let (out, _) = tokio::task::spawn_blocking({
        let mut c = watch_cmd(&api, &state, &token, true);
        move || run_ok(&mut c)
    })
    .await
    .unwrap();
    let resumed_at = first_offset_after(&api, before);
    assert!(
        resumed_at > half && resumed_at <= last_journal + 1,
        "resumed at {resumed_at}, journal ends at {last_journal}"
    );

    // No loss, no duplication: every update that carries an event of a watched chat is in the
    // journal exactly once.
    let ids = journal_ids(&state);
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicated updates in the journal");
    let expected: BTreeSet<i64> = sc
        .updates
        .iter()
        .filter(|u| {
            let chat = u["message"]["chat"]["id"]
                .as_i64()
                .or_else(|| u["chat_member"]["chat"]["id"].as_i64());
            let text = u.get("chat_member").is_some() || u["message"]["text"].is_string();
            text && (chat == Some(GROUP) || chat == Some(CHANNEL))
        })
        .map(|u| u["update_id"].as_i64().unwrap())
        .collect();
    assert_eq!(unique, expected);
    assert!(out.contains("missed joins (estimate) 37"), "{out}");
    let status: Value =
        serde_json::from_slice(&std::fs::read(state.join("status.json")).unwrap()).unwrap();
    assert_eq!(status[CHANNEL.to_string()]["missed_joins"], HIDDEN_JOINS);

    // The channel's report finds the wave's cohort; the group's the flood and the threat.
    let report = |chat: i64| -> Value {
        serde_json::from_slice(
            &std::fs::read(state.join(format!("reports/{chat}/report.json"))).unwrap(),
        )
        .unwrap()
    };
    let ch = report(CHANNEL);
    let w = ch["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "bot_followers")
        .expect("no bot_followers finding");
    let found: BTreeSet<i64> = w["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["account_id"].as_str().unwrap()[4..].parse().unwrap())
        .collect();
    let hit = found.intersection(&sc.wave_users).count();
    assert!(
        hit * 10 >= sc.wave_users.len() * 9,
        "found {hit} of {}",
        sc.wave_users.len()
    );
    let gr = report(GROUP);
    assert_eq!(gr["input"]["format"], "sweep-live");
    let flood = gr["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "bot_comments")
        .expect("no flood");
    let flagged: BTreeSet<i64> = flood["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["message_id"]
                .as_str()
                .unwrap()
                .split('/')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(flagged, sc.flood_messages);
    let threat = gr["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "threat_comments")
        .expect("no threat finding");
    assert_eq!(threat["accounts_count"], 5);
    assert_eq!(threat["threat_rules"][0]["id"], "threat.we_know_where");
    let html = std::fs::read_to_string(state.join(format!("reports/{GROUP}/report.html"))).unwrap();
    assert!(
        html.contains("Қайда тұратыныңды білеміз"),
        "kk rule text missing"
    );

    // The journal is readable by `sweep analyze` like any export.
    let (out, _) = run_ok(
        qalqan()
            .args(["sweep", "analyze"])
            .arg(state.join("events.jsonl"))
            .arg("--out")
            .arg(tmp.path().join("offline")),
    );
    assert!(out.contains("(sweep-live)"), "{out}");

    // Only reading methods were ever called: nothing was posted.
    let methods = api.methods();
    assert_eq!(
        methods,
        BTreeSet::from(["getMe", "getUpdates", "getChatMemberCount"].map(String::from))
    );
    let _ = sc.flood_users;
    let _ = sc.threat_users;
}

/// A report with one flood in the group, as `sweep watch` writes it, made from a journal.
fn group_report(dir: &Path, bots: i64) -> (PathBuf, Vec<i64>, Vec<i64>) {
    let mut lines = String::new();
    let mut users = Vec::new();
    let mut msgs = Vec::new();
    for k in 0..bots {
        let u = 7_000_000 + k * 3;
        users.push(u);
        for r in 0..2 {
            let m = 1 + k * 2 + r;
            msgs.push(m);
            lines.push_str(
                &json!({"sweep": "message", "update_id": m, "chat": GROUP,
                    "id": format!("{GROUP}/{m}"), "author_id": format!("user{u}"),
                    "author_name": "Bot", "time": 1_709_251_200 + m, "text": if r == 0 { "R.I.P" } else { "Р.І.Р 🙏" }})
                .to_string(),
            );
            lines.push('\n');
        }
    }
    let j = dir.join("events.jsonl");
    std::fs::write(&j, lines).unwrap();
    run_ok(
        qalqan()
            .args(["sweep", "analyze"])
            .arg(&j)
            .arg("--out")
            .arg(dir.join("r")),
    );
    (dir.join("r/report.json"), users, msgs)
}

fn clean_cmd(api: &FakeBotApi, report: &Path, token: &Path, step: &str, apply: bool) -> Command {
    let mut c = qalqan();
    c.args(["sweep", "clean", "--report"])
        .arg(report)
        .args([
            "--cluster",
            "c1",
            "--step",
            step,
            "--api-url",
            &api.url,
            "--token-file",
        ])
        .arg(token)
        .args(["--rate", "30"]);
    if apply {
        c.arg("--apply");
    }
    c
}

/// Clean-up: the dry run makes no call; restrict runs within budget, survives a 429 and a
/// SIGKILL and resumes without repeating; delete batches ids by 100; unban undoes the ban.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_against_fake_bot_api_since_real_telegram_is_unreachable() {
    let api = FakeBotApi::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let (report, users, msgs) = group_report(tmp.path(), 150);

    // Dry run (the default): a plan, and not one call.
    let (out, _) = run_ok(&mut clean_cmd(&api, &report, &token, "ban", false));
    assert!(
        out.contains("dry run") && out.contains("150 targets"),
        "{out}"
    );
    assert!(out.contains("nothing was sent"), "{out}");
    let (out, _) = run_ok(&mut clean_cmd(&api, &report, &token, "delete", false));
    assert!(
        out.contains("300 targets, 3 API calls") && out.contains("cannot be undone"),
        "{out}"
    );
    assert!(api.calls().is_empty(), "a dry run called the API");

    // Restrict, with a 429 on the 20th call and a SIGKILL part-way.
    api.state.lock().unwrap().fail_429 = Some(("restrictChatMember".into(), 20, 1));
    let mut child = clean_cmd(&api, &report, &token, "restrict", true)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while api.count_of("restrictChatMember") < 60 && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = api.count_of("restrictChatMember");
    assert!(
        killed_at < 151,
        "finished before the kill ({killed_at} calls)"
    );
    let started = Instant::now();
    let (out, _) = tokio::task::spawn_blocking({
        let mut c = clean_cmd(&api, &report, &token, "restrict", true);
        move || run_ok(&mut c)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(out.contains("done 150/150"), "{out}");
    let calls = api.calls();
    let mut per_user: BTreeMap<i64, usize> = BTreeMap::new();
    for (m, p) in &calls {
        if m == "restrictChatMember" {
            assert_eq!(p["chat_id"], GROUP);
            assert_eq!(p["permissions"]["can_send_messages"], false);
            *per_user.entry(p["user_id"].as_i64().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(per_user.keys().copied().collect::<Vec<_>>(), users);
    // One retry after the 429, and at most the one action in flight at the kill repeated.
    let total: usize = per_user.values().sum();
    assert!(
        (151..=152).contains(&total),
        "{total} restrict calls for 150 users"
    );
    // The rate limit held: the second run's calls took at least (calls - 1) / 30 s.
    let second_run = 151 + 1 - killed_at.min(151);
    assert!(
        took.as_secs_f64() >= (second_run.saturating_sub(2)) as f64 / 30.0,
        "{second_run} calls in {took:?}"
    );

    // Delete: 300 ids in 3 calls of at most 100.
    let (out, _) = run_ok(&mut clean_cmd(&api, &report, &token, "delete", true));
    assert!(out.contains("done 3/3"), "{out}");
    let deleted: Vec<i64> = api
        .calls()
        .iter()
        .filter(|(m, _)| m == "deleteMessages")
        .flat_map(|(_, p)| {
            let ids = p["message_ids"].as_array().unwrap().clone();
            assert!(ids.len() <= 100);
            ids.into_iter().map(|v| v.as_i64().unwrap())
        })
        .collect();
    let mut sorted = deleted.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, msgs);

    // Ban, then undo it.
    run_ok(&mut clean_cmd(&api, &report, &token, "ban", true));
    run_ok(&mut clean_cmd(&api, &report, &token, "unban", true));
    let calls = api.calls();
    assert!(
        calls
            .iter()
            .filter(|(m, _)| m == "banChatMember")
            .all(|(_, p)| p["revoke_messages"] == false)
    );
    assert_eq!(api.count_of("banChatMember"), 150);
    assert_eq!(api.count_of("unbanChatMember"), 150);
    // A rerun of a finished queue does nothing.
    let n = api.calls().len();
    let (out, _) = run_ok(&mut clean_cmd(&api, &report, &token, "ban", true));
    assert!(out.contains("done 150/150"), "{out}");
    assert_eq!(api.calls().len(), n);
    // Never anything sent to the chat.
    assert!(
        api.methods()
            .iter()
            .all(|m| !m.starts_with("send") && !m.starts_with("forward") && !m.starts_with("copy")),
        "{:?}",
        api.methods()
    );
}

/// Findings become atlas incidents with indicators and the report attached, in a real atlas
/// (SQLite, served in this process on port 0); a second run sends nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_to_atlas_makes_incidents_with_indicators_and_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (report, _, _) = group_report(tmp.path(), 40);
    let db = format!("sqlite://{}", tmp.path().join("atlas.db").display());
    let cli = |args: &[&str]| -> String {
        let out = qalqan()
            .args(["atlas", "--database", &db])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    cli(&["task-force", "Медиа-альянс"]);
    cli(&["outlet", "add", "alpha", "Альфа"]);
    let editor = cli(&[
        "token", "create", "--outlet", "alpha", "--name", "sweep", "--role", "editor",
    ]);
    let atlas = qalqan_atlas::Atlas::new(qalqan_atlas::Db::connect(&db).await.unwrap(), false);
    let sock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", sock.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(sock, qalqan_atlas::app(Arc::new(atlas)))
            .await
            .unwrap();
    });
    let tf = tmp.path().join("atlas.token");
    std::fs::write(&tf, &editor).unwrap();
    let send = || {
        let mut c = qalqan();
        c.args(["sweep", "report-to-atlas", "--report"])
            .arg(&report)
            .args(["--atlas", &url, "--atlas-token-file"])
            .arg(&tf)
            .args(["--top-accounts", "25", "--lang", "en"]);
        c
    };
    let (out, err) = tokio::task::spawn_blocking({
        let mut c = send();
        move || run_ok(&mut c)
    })
    .await
    .unwrap();
    assert!(!out.contains(&editor) && !err.contains(&editor));
    let inc = out
        .lines()
        .find_map(|l| l.strip_prefix("c1 -> incident "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();

    let mut http =
        qalqan_sweep::http::Client::new(qalqan_sweep::http::Endpoint::parse(&url).unwrap(), None)
            .unwrap();
    let mut get = async |path: &str| -> Value {
        let a = http
            .send(
                http::Method::GET,
                &format!("/api/v1{path}"),
                &[(http::header::AUTHORIZATION, format!("Bearer {editor}"))],
                Vec::new(),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        serde_json::from_slice(&a.body).unwrap()
    };
    let i = get(&format!("/incidents/{inc}")).await;
    assert_eq!(i["kind"], "bot_comments");
    assert_eq!(i["tlp"], "amber");
    assert!(
        i["title"]
            .as_str()
            .unwrap()
            .starts_with("Bot comments: 80 from 40 accounts")
    );
    let ind = get(&format!("/incidents/{inc}/indicators")).await;
    let ind = ind.as_array().unwrap();
    let accounts = ind.iter().filter(|s| s["kind"] == "social_account").count();
    assert_eq!(accounts, 25, "top accounts only");
    assert!(
        ind.iter()
            .any(|s| s["kind"] == "social_account" && s["value"] == "telegram:user7000000")
    );
    assert!(
        ind.iter()
            .any(|s| s["kind"] == "text_pattern" && s["value"] == "R.I.P")
    );
    let att = get(&format!("/incidents/{inc}/attachments")).await;
    let names: BTreeSet<&str> = att
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["sweep-report.json", "sweep-report.html"])
    );
    let sha = att
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "sweep-report.json")
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let want = {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(std::fs::read(&report).unwrap());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(sha, want);

    // Again: the ledger says it is done; no second incident.
    let (out2, _) = tokio::task::spawn_blocking({
        let mut c = send();
        move || run_ok(&mut c)
    })
    .await
    .unwrap();
    assert!(out2.contains(&inc));
    let list = get("/incidents?kind=bot_comments").await;
    let n = list["items"]
        .as_array()
        .or(list.as_array())
        .map_or(0, Vec::len);
    assert_eq!(n, 1, "{list}");
}

/// YouTube: the plan counts 50-id calls and quota units; `--apply` is refused, since there is
/// no YouTube API to test against here and the plan is meant for YouTube Studio.
#[test]
fn youtube_clean_up_is_a_plan_with_quota_units() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("yt.csv");
    let mut s = String::from("id,authorChannelId,authorDisplayName,publishedAt,textOriginal\n");
    for i in 0..120 {
        s.push_str(&format!(
            "Ugx{i},UCbot{i},Bot {i},2024-03-01T10:{:02}:00Z,R.I.P\n",
            i % 60
        ));
    }
    std::fs::write(&csv, s).unwrap();
    run_ok(
        qalqan()
            .args(["sweep", "analyze"])
            .arg(&csv)
            .arg("--out")
            .arg(tmp.path().join("r")),
    );
    let report = tmp.path().join("r/report.json");
    let (out, _) = run_ok(
        qalqan()
            .args(["sweep", "clean", "--report"])
            .arg(&report)
            .args(["--cluster", "c1", "--step", "delete"]),
    );
    assert!(
        out.contains("120 targets, 3 API calls, 150 quota units (1 day(s)"),
        "{out}"
    );
    let st = qalqan()
        .args(["sweep", "clean", "--report"])
        .arg(&report)
        .args(["--cluster", "c1", "--step", "delete", "--apply"])
        .env("QALQAN_TELEGRAM_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("YouTube Studio"));
    // Banning is not a YouTube call at all.
    let st = qalqan()
        .args(["sweep", "clean", "--report"])
        .arg(&report)
        .args(["--cluster", "c1", "--step", "ban"])
        .output()
        .unwrap();
    assert!(!st.status.success());
}
