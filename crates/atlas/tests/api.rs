//! Bad input at the API: malformed JSON (400), wrong, missing and unknown fields (422 naming the
//! field), oversize bodies (413), unknown routes (404 JSON), missing credentials (401 with
//! WWW-Authenticate), session cookies without the CSRF header (403), login throttling (429 with
//! Retry-After), and never a 500 for thousands of mutated bodies. Also: the OpenAPI document,
//! `api::ROUTES` and the router agree path for path and method for method.
//!
//! Everything goes through the real router (`qalqan_atlas::app`) in-process; the tests that can
//! differ by backend run on both SQLite and PostgreSQL.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Auth, Client, Kind, TestDb};
use http::{Method, StatusCode};
use qalqan_atlas::api::ROUTES;
use qalqan_atlas::model::Role;
use serde_json::{Value, json};

both_backends! {
    malformed_json => malformed_story,
    invalid_fields => invalid_fields_story,
    never_a_500 => never_500_story,
}

/// A fresh atlas with outlets `alpha` and `bravo`, an admin token of alpha, and one incident of
/// alpha's.
struct Fixture {
    _t: TestDb,
    client: Client,
    admin: Auth,
    viewer: Auth,
    incident: String,
}

async fn fixture(kind: Kind) -> Option<Fixture> {
    let t = TestDb::new(kind).await?;
    let db = t.connect().await;
    let a = db.create_outlet("alpha", "Alpha", "cli").await.unwrap();
    db.create_outlet("bravo", "Bravo", "cli").await.unwrap();
    let admin = Auth::Bearer(
        db.create_token(None, a.id, "admin", Role::Admin)
            .await
            .unwrap(),
    );
    let viewer = Auth::Bearer(
        db.create_token(None, a.id, "viewer", Role::Viewer)
            .await
            .unwrap(),
    );
    let client = Client::new(db);
    let r = client
        .json(
            Method::POST,
            "/api/v1/incidents",
            &admin,
            &json!({"kind": "http_flood", "title": "Флуд", "started_at": "2024-03-01", "tlp": "green"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let incident = r.json()["id"].as_str().unwrap().to_string();
    Some(Fixture {
        _t: t,
        client,
        admin,
        viewer,
        incident,
    })
}

/// Every endpoint that reads a JSON body, with a valid body for it.
fn json_endpoints(inc: &str) -> Vec<(Method, String, Value)> {
    vec![
        (
            Method::POST,
            "/api/v1/session".into(),
            json!({"email": "nobody@x.kz", "password": "wrong password!"}),
        ),
        (
            Method::PUT,
            "/api/v1/outlet/settings".into(),
            json!({"auto_tlp": "green", "need_to_know": ["bravo"]}),
        ),
        (
            Method::POST,
            "/api/v1/outlet/members".into(),
            json!({"email": "m@alpha.kz", "name": "M", "password": "correct horse battery", "role": "viewer"}),
        ),
        (
            Method::POST,
            "/api/v1/outlet/tokens".into(),
            json!({"name": "t", "role": "viewer"}),
        ),
        (
            Method::POST,
            "/api/v1/incidents".into(),
            json!({
                "kind": "http_flood", "title": "Флуд на сайт", "description": "Боты", "status": "reported",
                "confidence": "suspected", "tlp": "amber", "started_at": "2024-03-01T10:00:00Z",
                "ended_at": "2024-03-01T12:00:00Z", "date_unknown": false,
                "impact": {"downtime_minutes": 5, "requests": 1000, "followers_added": 0, "comments": 0},
                "targets": [{"kind": "social", "platform": "telegram", "value": "@alpha"}],
                "recipients": ["bravo"]
            }),
        ),
        (
            Method::PATCH,
            format!("/api/v1/incidents/{inc}"),
            json!({"title": "Флуд (обновлено)", "status": "verified", "impact": {"requests": 5}, "recipients": []}),
        ),
        (
            Method::POST,
            format!("/api/v1/incidents/{inc}/updates"),
            json!({"body": "Заметка", "new_status": "verified"}),
        ),
        (
            Method::POST,
            format!("/api/v1/incidents/{inc}/indicators"),
            json!([{"kind": "ip", "value": "203.0.113.5", "count": 3, "first_seen": "2024-03-01", "last_seen": "2024-03-02"}]),
        ),
        (
            Method::POST,
            "/api/v1/publications".into(),
            json!({"url": "https://alpha.kz/a", "title": "Статья", "published_at": "2024-03-01", "tags": ["суды"]}),
        ),
        (
            Method::POST,
            "/api/v1/ingest/episodes".into(),
            json!({
                "episode_id": "node-1", "site": "alpha.kz", "start_ms": 1_709_280_000_000i64,
                "end_ms": 1_709_283_600_000i64, "peak_rps": 900, "total_requests": 100_000,
                "indicators": [{"kind": "ip", "value": "198.51.100.1", "count": 5}]
            }),
        ),
    ]
}

async fn malformed_story(kind: Kind) {
    let Some(f) = fixture(kind).await else { return };
    let bodies: [&[u8]; 9] = [
        b"",
        b"{",
        b"not json",
        b"{,}",
        b"[}",
        b"[1, 2",
        b"{\"title\": \"\xff\xfe\"}",
        b"{\"title\": \"x\"} trailing",
        b"\"unterminated",
    ];
    let mut checked = 0;
    for (m, uri, _) in json_endpoints(&f.incident) {
        for body in bodies {
            let r = f
                .client
                .send(
                    m.clone(),
                    &uri,
                    &f.admin,
                    Some("application/json"),
                    body.to_vec(),
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{kind:?} {m} {uri} with {:?}: {}",
                String::from_utf8_lossy(body),
                r.text()
            );
            assert_eq!(r.json()["error"], "malformed request", "{m} {uri}");
            checked += 1;
        }
    }
    println!("{kind:?}: {checked} malformed bodies refused with 400");
}

/// (endpoint index in `json_endpoints`, body, the field the 422 must name)
fn invalid_cases() -> Vec<(usize, Value, &'static str)> {
    vec![
        (0, json!({"email": 5, "password": "x"}), "email"),
        (0, json!({"email": "a@b.kz"}), "password"),
        (
            0,
            json!({"email": "a@b.kz", "password": "x", "remember": true}),
            "remember",
        ),
        (1, json!({"auto_tlp": "pink"}), "auto_tlp"),
        (
            1,
            json!({"auto_tlp": "green", "need_to_know": ["nope"]}),
            "need_to_know[0]",
        ),
        (
            1,
            json!({"auto_tlp": "green", "need_to_know": "bravo"}),
            "need_to_know",
        ),
        (
            2,
            json!({"email": "m@alpha.kz", "name": "M", "password": "short", "role": "viewer"}),
            "password",
        ),
        (
            2,
            json!({"email": "m@alpha.kz", "name": "M", "password": "correct horse battery", "role": "ingest"}),
            "role",
        ),
        (
            2,
            json!({"email": "m@alpha.kz", "name": "M", "password": "correct horse battery"}),
            "role",
        ),
        (3, json!({"name": "t", "role": "god"}), "role"),
        (3, json!({"name": "", "role": "viewer"}), "name"),
        (
            4,
            json!({"kind": "other", "title": 5, "started_at": "2024-01-01"}),
            "title",
        ),
        (
            4,
            json!({"kind": "other", "started_at": "2024-01-01"}),
            "title",
        ),
        (
            4,
            json!({"kind": "other", "title": "t", "started_at": "2024-01-01", "colour": "red"}),
            "colour",
        ),
        (
            4,
            json!({"kind": "other", "title": "t", "started_at": "2024-01-01", "targets": [{"kind": 5, "value": "x"}]}),
            "targets[0].kind",
        ),
        (
            4,
            json!({"kind": "other", "title": "t", "started_at": "2024-01-01", "targets": [{"kind": "tv", "value": "x"}]}),
            "targets[0].kind",
        ),
        (
            4,
            json!({"kind": "other", "title": "t", "started_at": "2024-01-01", "impact": {"requests": "many"}}),
            "impact.requests",
        ),
        (
            4,
            json!({"kind": "other", "title": "t", "started_at": "2024-01-01", "impact": {"victims": 1}}),
            "impact.victims",
        ),
        (
            4,
            json!({"kind": "other", "title": "t", "started_at": "soon"}),
            "started_at",
        ),
        (
            4,
            json!({"kind": "other", "title": "t", "started_at": "2024-01-01", "tlp": "pink"}),
            "tlp",
        ),
        (
            4,
            json!({"kind": "nope", "title": "t", "started_at": "2024-01-01"}),
            "kind",
        ),
        (
            4,
            json!({"kind": "other", "title": "t", "started_at": "2024-01-01", "recipients": ["nope"]}),
            "recipients[0]",
        ),
        (
            4,
            json!({"kind": "other", "title": "t", "started_at": "2024-01-01", "date_unknown": "yes"}),
            "date_unknown",
        ),
        (5, json!({"title": 5}), "title"),
        (5, json!({"tlp": "pink"}), "tlp"),
        (5, json!({"owner": "bravo"}), "owner"),
        (6, json!({"body": 5}), "body"),
        (6, json!({"body": "x", "new_status": "gone"}), "new_status"),
        (7, json!([{"kind": "ip", "value": 5}]), "[0].value"),
        (
            7,
            json!([{"kind": "ip", "value": "1.2.3"}]),
            "indicators[0].value",
        ),
        (
            7,
            json!([{"kind": "ip", "value": "1.2.3.4", "count": 0}]),
            "indicators[0].count",
        ),
        (
            7,
            json!([{"kind": "ip", "value": "1.2.3.4", "colour": 0}]),
            "[0].colour",
        ),
        (
            8,
            json!({"url": "javascript:alert(1)", "title": "t", "published_at": "2024-01-01"}),
            "url",
        ),
        (
            8,
            json!({"url": "https://a.kz/", "title": "t", "published_at": "2024-01-01", "tags": "x"}),
            "tags",
        ),
        (
            9,
            json!({"episode_id": "e", "start_ms": "yesterday"}),
            "start_ms",
        ),
        (9, json!({"start_ms": 1}), "episode_id"),
        // A shield must never send readers' data: fields beyond the signal are refused.
        (
            9,
            json!({"episode_id": "e", "start_ms": 1_700_000_000_000i64, "samples": ["GET /?q=name"]}),
            "samples",
        ),
        (
            9,
            json!({"episode_id": "e", "start_ms": 1_700_000_000_000i64, "indicators": [{"kind": "ip", "value": "1.2.3.4", "count": -1}]}),
            "indicators[0].count",
        ),
    ]
}

async fn invalid_fields_story(kind: Kind) {
    let Some(f) = fixture(kind).await else { return };
    let eps = json_endpoints(&f.incident);
    let mut problems = Vec::new();
    for (i, body, field) in invalid_cases() {
        let (m, uri, _) = &eps[i];
        let auth = if i == 0 { Auth::None } else { f.admin.clone() };
        let r = f.client.json(m.clone(), uri, &auth, &body).await;
        if r.status != StatusCode::UNPROCESSABLE_ENTITY {
            problems.push(format!("{m} {uri} {body}: {} {}", r.status, r.text()));
            continue;
        }
        let v = r.json();
        let names: Vec<&str> = v["fields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["field"].as_str())
            .collect();
        let messages_ok = v["fields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["message"].as_str().is_some_and(|m| !m.is_empty()));
        if !names.contains(&field) || !messages_ok {
            problems.push(format!(
                "{m} {uri} {body}: fields {names:?}, want {field:?}"
            ));
        }
    }
    // Query strings are checked the same way.
    for (uri, field) in [
        ("/api/v1/incidents?limit=abc", "query"),
        ("/api/v1/incidents?colour=red", "query"),
        ("/api/v1/incidents?limit=100000", "limit"),
        ("/api/v1/incidents?cursor=zzz", "cursor"),
        ("/api/v1/incidents?from=yesterday", "from"),
        ("/api/v1/indicators?kind=ip", "query"),
        ("/api/v1/indicators?kind=colour&value=red", "kind"),
        ("/api/v1/indicators?kind=ip&value=1.2.3", "value"),
        ("/api/v1/publications?from=yesterday", "from"),
    ] {
        let r = f.client.get(uri, &f.admin).await;
        let names: Vec<String> = serde_json::from_slice::<Value>(&r.bytes)
            .ok()
            .and_then(|v| v["fields"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|f| f["field"].as_str().map(str::to_string))
            .collect();
        if r.status != StatusCode::UNPROCESSABLE_ENTITY || !names.iter().any(|n| n == field) {
            problems.push(format!("GET {uri}: {} {}", r.status, r.text()));
        }
    }
    assert!(problems.is_empty(), "{kind:?}:\n{}", problems.join("\n"));
    println!(
        "{kind:?}: {} invalid inputs answered 422 with the field named",
        invalid_cases().len() + 9
    );
}

/// A value path inside a JSON document.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

fn paths(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                at.push(Seg::Key(k.clone()));
                paths(x, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                at.push(Seg::Index(i));
                paths(x, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    let mut cur = v;
    for s in path {
        cur = match s {
            Seg::Key(k) => &mut cur[k.as_str()],
            Seg::Index(i) => &mut cur[*i],
        };
    }
    cur
}

/// Values that break assumptions: wrong types, extremes, control and direction characters,
/// impossible dates, deep nesting.
fn nasty_values() -> Vec<Value> {
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1e308),
        json!(-0.5),
        json!(""),
        json!("   "),
        json!("x".repeat(25_000)),
        json!("nul\u{0}byte"),
        json!("\u{202e}evil\u{feff}"),
        json!("9999-12-31T23:59:59Z"),
        json!("0000-01-01"),
        json!("2024-02-30"),
        json!("+275760-09-13T00:00:00Z"),
        json!(-9_000_000_000_000_000i64),
        json!([]),
        json!({}),
        json!(["bravo", "bravo", "alpha"]),
        deep,
    ]
}

/// A small deterministic generator (xorshift64*), so a failure can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate_bytes(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    for _ in 0..=rng.below(4) {
        let pos = rng.below(b.len() + 1);
        match rng.below(6) {
            0 if !b.is_empty() => {
                b.remove(pos.min(b.len() - 1));
            }
            1 => b.insert(pos, (rng.next() & 0xff) as u8),
            2 => {
                let set = b"{}[]\",:0-e\\u";
                b.insert(pos, set[rng.below(set.len())]);
            }
            3 => b.truncate(pos),
            4 if !b.is_empty() => {
                let i = pos.min(b.len() - 1);
                let set = b"0123456789-.eE\"nul\\";
                b[i] = set[rng.below(set.len())];
            }
            _ => {
                let set = [
                    "\\u0000",
                    "\\ud800",
                    "1e999",
                    "-9223372036854775809",
                    "null",
                    "\"\"",
                    "[]",
                ];
                let ins = set[rng.below(set.len())];
                for (k, c) in ins.bytes().enumerate() {
                    b.insert((pos + k).min(b.len()), c);
                }
            }
        }
    }
    b
}

async fn never_500_story(kind: Kind) {
    let Some(f) = fixture(kind).await else { return };
    let seed = 0x0005_eeda_71a5_u64;
    let mut rng = Rng(seed);
    let mut total = 0usize;
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    // The member endpoint hashes passwords (slow on purpose) and the login endpoint is
    // throttled, so they get the fixed cases above and the single NUL case below instead.
    let eps: Vec<_> = json_endpoints(&f.incident).into_iter().skip(3).collect();
    let mut check = |what: String, r: &common::Answer| {
        total += 1;
        *by_status.entry(r.status.as_u16()).or_default() += 1;
        if r.status.is_server_error() {
            failures.push(format!("{what}: {} {}", r.status, r.text()));
        }
    };
    for (m, uri, valid) in &eps {
        let mut ps = Vec::new();
        paths(valid, &mut Vec::new(), &mut ps);
        for p in &ps {
            for nasty in nasty_values() {
                let mut body = valid.clone();
                *at_mut(&mut body, p) = nasty.clone();
                let r = f.client.json(m.clone(), uri, &f.admin, &body).await;
                let shown: String = nasty.to_string().chars().take(40).collect();
                check(format!("{m} {uri} {p:?} = {shown}"), &r);
            }
            // The field removed, and an unknown field next to it.
            if let Some(Seg::Key(k)) = p.last() {
                let mut body = valid.clone();
                let parent = at_mut(&mut body, &p[..p.len() - 1]);
                if let Some(o) = parent.as_object_mut() {
                    o.remove(k);
                    o.insert(format!("{k}_extra"), json!(1));
                }
                let r = f.client.json(m.clone(), uri, &f.admin, &body).await;
                check(format!("{m} {uri} without {k}"), &r);
            }
        }
        let bytes = serde_json::to_vec(valid).unwrap();
        for i in 0..150 {
            let b = mutate_bytes(&mut rng, &bytes);
            let r = f
                .client
                .send(
                    m.clone(),
                    uri,
                    &f.admin,
                    Some("application/json"),
                    b.clone(),
                )
                .await;
            check(
                format!(
                    "{m} {uri} byte mutation #{i} (seed {seed:#x}): {}",
                    String::from_utf8_lossy(&b)
                        .chars()
                        .take(120)
                        .collect::<String>()
                ),
                &r,
            );
        }
    }
    // Text with a NUL byte anywhere the API reads text: PostgreSQL refuses to store it, which
    // must surface as bad input, not as a database failure.
    let nul = "%00";
    for uri in [
        format!("/api/v1/incidents/a{nul}b"),
        format!("/api/v1/incidents/a{nul}b/indicators"),
        format!("/api/v1/incidents/a{nul}b/attachments"),
        format!("/api/v1/incidents/{}/attachments/a{nul}b", f.incident),
        format!(
            "/api/v1/incidents/{}/attachments/a{nul}b/custody",
            f.incident
        ),
        format!("/api/v1/incidents?kind=a{nul}b"),
        format!("/api/v1/incidents?outlet=a{nul}b"),
        format!("/api/v1/incidents?q=a{nul}b"),
        format!("/api/v1/publications?outlet=a{nul}b"),
        format!("/api/v1/indicators?kind=ip&value=a{nul}b"),
    ] {
        let r = f.client.get(&uri, &f.admin).await;
        check(format!("GET {uri}"), &r);
    }
    let r = f
        .client
        .json(
            Method::POST,
            "/api/v1/session",
            &Auth::None,
            &json!({"email": "a\u{0}@b.kz", "password": "x"}),
        )
        .await;
    check("login with NUL e-mail".into(), &r);
    let r = f
        .client
        .send(
            Method::POST,
            &format!("/api/v1/incidents/{}/attachments?name=a%00b", f.incident),
            &f.admin,
            Some("text/plain"),
            b"x".to_vec(),
        )
        .await;
    check("attachment named with NUL".into(), &r);
    // Counts that would overflow a 64-bit sum when added to what is stored.
    for _ in 0..2 {
        let r = f
            .client
            .json(
                Method::POST,
                &format!("/api/v1/incidents/{}/indicators", f.incident),
                &f.admin,
                &json!([{"kind": "ip", "value": "192.0.2.99", "count": i64::MAX}, {"kind": "ip", "value": "192.0.2.99", "count": i64::MAX}]),
            )
            .await;
        check("indicator count near i64::MAX".into(), &r);
    }
    let r = f
        .client
        .get(
            &format!("/api/v1/incidents/{}/indicators", f.incident),
            &f.admin,
        )
        .await;
    check("reading the indicators back".into(), &r);
    let r = f
        .client
        .get("/api/v1/indicators?kind=ip&value=192.0.2.99", &f.admin)
        .await;
    check("looking the indicator up".into(), &r);
    // The viewer's reads of the same state.
    let r = f.client.get("/api/v1/incidents?limit=200", &f.viewer).await;
    check("list after all that".into(), &r);
    assert_eq!(r.status, StatusCode::OK);
    println!("{kind:?}: {total} mutated requests, answers by status {by_status:?}");
    assert!(
        failures.is_empty(),
        "{kind:?}: {} answers were 5xx:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn doc() -> Value {
    serde_json::from_str(qalqan_atlas::openapi::DOCUMENT).expect("the OpenAPI document is JSON")
}

/// The paths of `.route("…")` calls in `api::router()`, read from the source.
fn routes_in_source() -> BTreeSet<String> {
    let src = include_str!("../src/api.rs");
    let start = src.find("pub fn router()").expect("router() in api.rs");
    let body = &src[start..];
    let end = body.find("\n}\n").unwrap_or(body.len());
    let mut out = BTreeSet::new();
    let mut rest = &body[..end];
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + 7..];
        let q1 = rest.find('"').unwrap();
        let q2 = rest[q1 + 1..].find('"').unwrap();
        out.insert(rest[q1 + 1..q1 + 1 + q2].to_string());
    }
    out
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-0000-0000-000000000000")
        .replace("{sha}", &"0".repeat(64))
}

#[tokio::test]
async fn openapi_document_routes_and_router_agree() {
    let t = TestDb::new(Kind::Sqlite).await.unwrap();
    let client = Client::new(t.connect().await);
    // Served without credentials, as JSON.
    let served = client.get("/api/v1/openapi.json", &Auth::None).await;
    assert_eq!(served.status, StatusCode::OK);
    assert!(
        served
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let d = served.json();
    assert_eq!(d, doc());
    assert!(
        d["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        d["openapi"]
    );
    assert_eq!(d["servers"][0]["url"], "/api/v1");
    assert!(d["info"]["title"].is_string() && d["info"]["version"].is_string());

    let documented: BTreeMap<String, BTreeSet<String>> = d["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, ops)| {
            let methods = ops
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    [
                        "get", "put", "post", "delete", "patch", "head", "options", "trace",
                    ]
                    .contains(&k.as_str())
                })
                .map(|k| k.to_uppercase())
                .collect();
            (p.clone(), methods)
        })
        .collect();
    let consts: BTreeSet<String> = ROUTES.iter().map(|s| s.to_string()).collect();
    assert_eq!(consts.len(), ROUTES.len(), "ROUTES has duplicates");
    let doc_paths: BTreeSet<String> = documented.keys().cloned().collect();
    assert_eq!(doc_paths, consts, "OpenAPI paths vs api::ROUTES");
    assert_eq!(
        routes_in_source(),
        consts,
        "router() in api.rs vs api::ROUTES"
    );

    // Each route is live, and allows exactly the documented methods: a method it does not
    // serve answers 405 with an Allow header listing the ones it does.
    for (path, methods) in &documented {
        let r = client
            .send(
                Method::TRACE,
                &format!("/api/v1{}", concrete(path)),
                &Auth::None,
                None,
                Vec::new(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{path}: {}",
            r.text()
        );
        let allow: BTreeSet<String> = r
            .header("allow")
            .unwrap_or_else(|| panic!("{path}: 405 without Allow"))
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| m != "HEAD")
            .collect();
        assert_eq!(&allow, methods, "{path}: router methods vs documented");
        // Every operation documents its answers, and every path parameter.
        for m in methods {
            let op = &d["paths"][path][m.to_lowercase()];
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{m} {path}: no responses"
            );
            for param in ["id", "sha"] {
                if path.contains(&format!("{{{param}}}")) {
                    let mut params: Vec<Value> =
                        op["parameters"].as_array().cloned().unwrap_or_default();
                    params.extend(
                        d["paths"][path]["parameters"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default(),
                    );
                    let text = serde_json::to_string(&params).unwrap();
                    let text = resolve_refs(&d, &text);
                    assert!(
                        text.contains(&format!("\"name\":\"{param}\"")),
                        "{m} {path}: parameter {param} undocumented"
                    );
                }
            }
        }
    }
    // Every $ref points somewhere.
    let text = serde_json::to_string(&d).unwrap();
    for part in text.split("\"$ref\":\"").skip(1) {
        let target = &part[..part.find('"').unwrap()];
        let ptr = target.strip_prefix('#').expect("local $ref");
        assert!(d.pointer(ptr).is_some(), "dangling $ref {target}");
    }
}

/// Inlines `#/components/parameters/…` references (one level) so parameter names can be found.
fn resolve_refs(d: &Value, text: &str) -> String {
    let mut out = text.to_string();
    for part in text.split("\"$ref\":\"").skip(1) {
        let target = &part[..part.find('"').unwrap()];
        if let Some(v) = target.strip_prefix('#').and_then(|p| d.pointer(p)) {
            out.push_str(&serde_json::to_string(v).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn unknown_routes_missing_credentials_and_oversize_bodies() {
    let f = fixture(Kind::Sqlite).await.unwrap();
    let c = &f.client;
    // Unknown routes under the API: 404 with a JSON body.
    for (m, uri) in [
        (Method::GET, "/api/v1/nope"),
        (Method::POST, "/api/v1/nope"),
        (Method::GET, "/api/v1/incidents/x/y/z/w"),
        (Method::GET, "/api/v2/incidents"),
        (Method::DELETE, "/api/v1/"),
    ] {
        let r = c.send(m.clone(), uri, &f.admin, None, Vec::new()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {uri}");
        // Under the API prefix the answer is JSON. (`/api/v1/` itself and other prefixes fall
        // through to the dashboard's HTML 404 page, which is fine for a person.)
        if uri.starts_with("/api/v1/") && uri.len() > "/api/v1/".len() {
            let v: Value = serde_json::from_slice(&r.bytes).unwrap_or(Value::Null);
            assert_eq!(
                v["error"],
                "not found",
                "{m} {uri}: {}",
                r.text().chars().take(80).collect::<String>()
            );
        }
    }

    // No or bad credentials: 401 with WWW-Authenticate on every route but the public ones.
    let doc = doc();
    let bad_auths = [
        Auth::None,
        Auth::Bearer("qat_not-a-token".into()),
        Auth::Bearer(String::new()),
        Auth::Session("not-a-session".into(), Some("x".into())),
    ];
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for m in ops.as_object().unwrap().keys() {
            let public = matches!(
                (m.as_str(), path.as_str()),
                ("get", "/openapi.json") | ("get", "/public/stats") | ("post", "/session")
            );
            if public {
                continue;
            }
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            for auth in &bad_auths {
                let r = c
                    .send(
                        method.clone(),
                        &format!("/api/v1{}", concrete(path)),
                        auth,
                        Some("application/json"),
                        b"{}".to_vec(),
                    )
                    .await;
                assert_eq!(
                    r.status,
                    StatusCode::UNAUTHORIZED,
                    "{m} {path} with {auth:?}: {}",
                    r.text()
                );
                assert!(
                    r.header("www-authenticate")
                        .is_some_and(|v| v.starts_with("Bearer")),
                    "{m} {path}"
                );
                checked += 1;
            }
        }
    }
    // Other schemes are not credentials either.
    for h in [
        &b"Basic YWRtaW46YWRtaW4="[..],
        b"Bearer",
        b"qat_x",
        b"Bearer qat_\xff\xfe",
    ] {
        let req = http::Request::builder()
            .uri("/api/v1/me")
            .header("authorization", http::HeaderValue::from_bytes(h).unwrap())
            .body(axum::body::Body::empty())
            .unwrap();
        let r = tower::ServiceExt::oneshot(c.app.clone(), req)
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            String::from_utf8_lossy(h)
        );
    }
    println!("{checked} unauthenticated calls answered 401");

    // Body limits: 1 MiB of JSON, 20 MiB of attachment.
    let big = vec![b' '; qalqan_atlas::api::MAX_JSON + 1];
    for (m, uri, _) in json_endpoints(&f.incident) {
        let auth = if uri.ends_with("/session") {
            Auth::None
        } else {
            f.admin.clone()
        };
        let r = c
            .send(
                m.clone(),
                &uri,
                &auth,
                Some("application/json"),
                big.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{m} {uri}");
    }
    let uri = format!("/api/v1/incidents/{}/attachments?name=big.bin", f.incident);
    let r = c
        .send(
            Method::POST,
            &uri,
            &f.admin,
            Some("application/octet-stream"),
            vec![7u8; qalqan_atlas::store::MAX_ATTACHMENT + 1],
        )
        .await;
    assert!(
        r.status == StatusCode::PAYLOAD_TOO_LARGE || r.status == StatusCode::UNPROCESSABLE_ENTITY,
        "attachment one byte over: {}",
        r.status
    );
    let r = c
        .send(
            Method::POST,
            &uri,
            &f.admin,
            Some("application/octet-stream"),
            vec![7u8; qalqan_atlas::store::MAX_ATTACHMENT + 4096],
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = c
        .send(
            Method::POST,
            &uri,
            &f.admin,
            Some("application/octet-stream"),
            vec![7u8; 2 * 1024 * 1024],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "a 2 MiB attachment is fine: {}",
        r.text()
    );
}

#[tokio::test]
async fn sessions_need_csrf_and_logins_are_throttled() {
    let t = TestDb::new(Kind::Sqlite).await.unwrap();
    let db = t.connect().await;
    let a = db.create_outlet("alpha", "Alpha", "cli").await.unwrap();
    let pw = "correct horse battery";
    db.create_user(None, a.id, "admin@alpha.kz", "Admin", pw, Role::Admin)
        .await
        .unwrap();
    db.create_user(None, a.id, "other@alpha.kz", "Other", pw, Role::Viewer)
        .await
        .unwrap();
    let c = Client::new(db);

    // The cookie is HttpOnly, SameSite=Strict, for the whole site.
    let login = c
        .json(
            Method::POST,
            "/api/v1/session",
            &Auth::None,
            &json!({"email": "admin@alpha.kz", "password": pw}),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    let set = login.header("set-cookie").unwrap().to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(
        !login
            .text()
            .contains(set.split(';').next().unwrap().split('=').nth(1).unwrap()),
        "secret in the body"
    );
    let (secret, csrf) = c.login("admin@alpha.kz", pw).await.unwrap();
    // Secure is set when the atlas does not listen on loopback only.
    let secure = qalqan_atlas::Atlas::new(qalqan_atlas::Db::connect(&t.url).await.unwrap(), true);
    let mut resp = axum::response::Response::new(axum::body::Body::empty());
    secure.set_session_cookie(&mut resp, "x");
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );

    let create = json!({"kind": "other", "title": "t", "started_at": "2024-01-01"});
    let no_csrf = Auth::Session(secret.clone(), None);
    let wrong_csrf = Auth::Session(secret.clone(), Some(format!("{csrf}x")));
    let other_csrf = Auth::Session(secret.clone(), Some(String::new()));
    let good = Auth::Session(secret.clone(), Some(csrf.clone()));
    for auth in [&no_csrf, &wrong_csrf, &other_csrf] {
        for (m, uri, body) in [
            (Method::POST, "/api/v1/incidents", create.clone()),
            (
                Method::PUT,
                "/api/v1/outlet/settings",
                json!({"auto_tlp": "clear"}),
            ),
            (
                Method::POST,
                "/api/v1/outlet/tokens",
                json!({"name": "t", "role": "admin"}),
            ),
            (Method::DELETE, "/api/v1/session", json!({})),
        ] {
            let r = c.json(m.clone(), uri, auth, &body).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {uri} with {auth:?}");
        }
    }
    // Reads need no CSRF token; writes with it work.
    assert_eq!(c.get("/api/v1/me", &no_csrf).await.status, StatusCode::OK);
    assert_eq!(
        c.json(Method::POST, "/api/v1/incidents", &good, &create)
            .await
            .status,
        StatusCode::CREATED
    );
    // Logging out ends the session for good.
    let out = c
        .send(Method::DELETE, "/api/v1/session", &good, None, Vec::new())
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        c.get("/api/v1/me", &no_csrf).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Per account: after 8 wrong passwords, even the right one is refused, from anywhere, with
    // Retry-After; another account from the same address still logs in.
    let wrong = json!({"email": "admin@alpha.kz", "password": "wrong password!"});
    for i in 0..8 {
        let r = c
            .json(Method::POST, "/api/v1/session", &Auth::None, &wrong)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = c
        .json(Method::POST, "/api/v1/session", &Auth::None, &wrong)
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 3600, "{retry}");
    let right = json!({"email": "ADMIN@alpha.kz", "password": pw});
    let r = c
        .json(Method::POST, "/api/v1/session", &Auth::None, &right)
        .await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the right password while throttled"
    );
    assert!(r.header("set-cookie").is_none());
    let r = c
        .send_from(
            Method::POST,
            "/api/v1/session",
            &Auth::None,
            Some("application/json"),
            serde_json::to_vec(&right).unwrap(),
            "198.51.100.5:1",
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the account is throttled from every address"
    );
    assert!(c.login("other@alpha.kz", pw).await.is_ok());

    // Per address: 20 failures from one address over many accounts lock that address out, and
    // no other.
    let from = "203.0.113.77:5000";
    for i in 0..20 {
        let body = json!({"email": format!("guess{i}@alpha.kz"), "password": "wrong password!"});
        let r = c
            .send_from(
                Method::POST,
                "/api/v1/session",
                &Auth::None,
                Some("application/json"),
                serde_json::to_vec(&body).unwrap(),
                from,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let other = serde_json::to_vec(&json!({"email": "other@alpha.kz", "password": pw})).unwrap();
    let r = c
        .send_from(
            Method::POST,
            "/api/v1/session",
            &Auth::None,
            Some("application/json"),
            other.clone(),
            from,
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let r = c
        .send_from(
            Method::POST,
            "/api/v1/session",
            &Auth::None,
            Some("application/json"),
            other,
            "203.0.113.78:5000",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}
