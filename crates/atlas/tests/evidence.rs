//! Evidence packages built from a real store (SQLite file and PostgreSQL), checked by the
//! package-only verifier: a fresh package verifies; one flipped byte in any file, a deleted or
//! added file, or an edited custody line fails and names the file or entry; a collective package
//! holds only what the caller may see; the report is Russian by default. The RFC 3161 part runs
//! against a local authority made with `openssl ts -reply` behind a small HTTP server in this
//! process (no public authority is reachable from the test machines).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Auth, Client, Kind, TestDb, actor};
use http::{Method, StatusCode};
use qalqan_atlas::evidence::verify::Problem;
use qalqan_atlas::evidence::{self, Options, Timestamp, tsa::Tsa, verify};
use qalqan_atlas::i18n::Lang;
use qalqan_atlas::model::Role;
use qalqan_atlas::store::{IncidentIn, PublicationIn, SightingIn};
use qalqan_atlas::{Actor, Db, Error};
use serde_json::{Value, json};

both_backends! {
    package_verifies_and_tampering_is_named => package_story,
    collective_package_respects_tlp => collective_story,
    api_serves_packages => api_story,
}

fn incident(v: Value) -> IncidentIn {
    serde_json::from_value(v).expect("incident input")
}

struct World {
    db: Db,
    alpha: Actor,
    beta: Actor,
    gamma: Actor,
    /// alpha's GREEN flood with two attachments (one shared with beta's incident).
    a1: String,
    /// beta's GREEN incident, with the shared attachment.
    b1: String,
    /// beta's RED incident with no recipients: beta only.
    b_red: String,
}

const SHARED: &[u8] = b"\x89PNG\r\n\x1a\n screenshot bytes shared by two outlets";

async fn world(t: &TestDb) -> World {
    let db = t.connect().await;
    let a = db.create_outlet("alpha", "Alpha", "cli").await.unwrap();
    let b = db.create_outlet("beta", "Beta", "cli").await.unwrap();
    let g = db.create_outlet("gamma", "Gamma", "cli").await.unwrap();
    let alpha = actor(a.id, Role::Editor, "user:editor@alpha.kz");
    let beta = actor(b.id, Role::Editor, "user:editor@beta.kz");
    let gamma = actor(g.id, Role::Editor, "user:editor@gamma.kz");
    let a1 = db
        .create_incident(
            &alpha,
            &incident(json!({
                "kind": "http_flood", "title": "Флуд поиска", "tlp": "green",
                "description": "Поиск «номер один» <script>alert(1)</script>",
                "started_at": "2024-03-05T10:00:00Z", "ended_at": "2024-03-05T14:30:00Z",
                "status": "verified", "confidence": "confirmed",
                "impact": {"downtime_minutes": 270, "requests": 1300000000},
                "targets": [{"kind": "website", "value": "https://alpha.kz"}],
            })),
        )
        .await
        .unwrap()
        .id;
    let s: Vec<SightingIn> = serde_json::from_value(json!([
        {"kind": "ip", "value": "203.0.113.7", "count": 5000,
         "first_seen": "2024-03-05T10:00:00Z", "last_seen": "2024-03-05T14:00:00Z"},
        {"kind": "user_agent", "value": "=cmd|' /C calc'!A0", "count": 12},
    ]))
    .unwrap();
    db.add_sightings(&alpha, &a1, &s).await.unwrap();
    db.add_attachment(&alpha, &a1, "скриншот атаки.png", "image/png", SHARED)
        .await
        .unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    db.add_attachment(&alpha, &a1, "access.log.gz", "application/gzip", &big)
        .await
        .unwrap();
    let p: PublicationIn = serde_json::from_value(json!({
        "url": "https://alpha.kz/news/tender", "title": "Расследование о тендере",
        "published_at": "2024-03-04T09:00:00Z",
    }))
    .unwrap();
    db.add_publication(&alpha, &p).await.unwrap();
    let old: PublicationIn = serde_json::from_value(json!({
        "url": "https://alpha.kz/news/old", "title": "Old story",
        "published_at": "2024-02-01T09:00:00Z",
    }))
    .unwrap();
    db.add_publication(&alpha, &old).await.unwrap();
    let b1 = db
        .create_incident(
            &beta,
            &incident(
                json!({"kind": "http_flood", "title": "Beta flood", "tlp": "green",
                "started_at": "2024-03-06T08:00:00Z"}),
            ),
        )
        .await
        .unwrap()
        .id;
    db.add_attachment(&beta, &b1, "shot.png", "image/png", SHARED)
        .await
        .unwrap();
    // beta reads its copy: an entry alpha must not see in full.
    db.read_attachment(&beta, &b1, &verify::sha256_hex(SHARED))
        .await
        .unwrap();
    let b_red = db
        .create_incident(
            &beta,
            &incident(
                json!({"kind": "http_flood", "title": "Beta secret", "tlp": "red",
                "started_at": "2024-03-07T08:00:00Z"}),
            ),
        )
        .await
        .unwrap()
        .id;
    World {
        db,
        alpha,
        beta,
        gamma,
        a1,
        b1,
        b_red,
    }
}

fn unpack(tar_path: &Path, dir: &Path) {
    let f = std::fs::File::open(tar_path).unwrap();
    tar::Archive::new(f).unpack(dir).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walk(from) {
        let rel = e.strip_prefix(from).unwrap();
        let dst = to.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&e, &dst).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn names(dir: &Path) -> Vec<String> {
    walk(dir)
        .iter()
        .map(|p| {
            p.strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect()
}

async fn package_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pkg.tar");
    let p = evidence::build(
        &w.db,
        &w.alpha,
        std::slice::from_ref(&w.a1),
        &Options::default(),
        &out,
    )
    .await
    .expect("package");
    assert_eq!(p.timestamp, Timestamp::None);
    // Only the package itself is left in the directory (the temporary file was renamed).
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    let r = verify::verify_path(&out).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.files_ok, p.files);
    // alpha's two attachments: added + exported each; the shared file also has beta's two
    // entries (added, read), redacted.
    assert_eq!(r.custody_entries, 6, "custody entries");

    let dir = tmp.path().join("unpacked");
    unpack(&out, &dir);
    let all = names(&dir);
    for want in [
        "report.html",
        "report.pdf",
        "facts.json",
        "facts.csv",
        "custody.jsonl",
        "manifest.json",
        "VERIFY.txt",
        "SHA256SUMS",
    ] {
        assert!(all.contains(&want.to_string()), "{want} in {all:?}");
    }
    let shared_sha = verify::sha256_hex(SHARED);
    let shared_path = all
        .iter()
        .find(|n| n.starts_with(&format!("attachments/{shared_sha}-")))
        .expect("shared attachment in the package");
    assert_eq!(
        std::fs::read(dir.join(shared_path)).unwrap(),
        SHARED,
        "bytes as stored"
    );
    assert_eq!(
        all.iter().filter(|n| n.starts_with("attachments/")).count(),
        2
    );
    assert!(
        verify::verify_path(&dir).unwrap().ok(),
        "the unpacked folder verifies too"
    );

    // The manifest is canonical JSON and lists every other file.
    let manifest_text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&manifest_text).unwrap();
    assert_eq!(verify::canonical_json(&manifest), manifest_text);
    assert_eq!(
        verify::sha256_hex(manifest_text.as_bytes()),
        p.manifest_sha256
    );
    assert_eq!(manifest["files"].as_array().unwrap().len(), all.len() - 1);
    assert_eq!(manifest["creator"]["actor"], "user:editor@alpha.kz");

    // The report: Russian by default, escaped, both clocks, the publication in the 72 h
    // before the start and not the older one.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<html lang=\"ru\">"));
    assert!(html.contains("Пакет доказательств"));
    assert!(
        html.contains("2024-03-05 10:00:00 UTC (2024-03-05 15:00:00 Алматы, UTC+5)"),
        "times"
    );
    assert!(html.contains("Расследование о тендере"));
    assert!(!html.contains("Old story"));
    assert!(!html.contains("<script>"), "text is escaped");
    assert!(html.contains("&lt;script&gt;"));
    assert!(html.contains(&shared_sha));
    assert!(html.contains("скриншот атаки.png"));
    assert!(html.contains("203.0.113.7"));
    // The CSV cannot run a formula; the JSON keeps the exact value.
    let csv = std::fs::read_to_string(dir.join("facts.csv")).unwrap();
    assert!(csv.contains("\"'=cmd|' /C calc'!A0\""), "{csv}");
    let facts: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("facts.json")).unwrap()).unwrap();
    assert_eq!(facts["incidents"][0]["incident"]["id"], w.a1.as_str());
    assert!(facts.to_string().contains("=cmd|' /C calc'!A0"));

    // Custody: beta's entries on the shared file are redacted, alpha's own are in full, and the
    // export itself is recorded, in the package and in the database.
    let custody = std::fs::read_to_string(dir.join("custody.jsonl")).unwrap();
    let lines: Vec<Value> = custody
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l["redacted"] == true).count(), 2);
    assert!(
        !custody.contains("beta.kz"),
        "beta's accesses are not disclosed"
    );
    assert_eq!(
        lines.iter().filter(|l| l["action"] == "exported").count(),
        2
    );
    let log =
        w.db.custody_log(&w.alpha, &w.a1, &shared_sha)
            .await
            .unwrap();
    assert_eq!(log.last().unwrap().action, "exported");
    let audit =
        w.db.audit_log(&actor(w.alpha.outlet_id, Role::Admin, "x"), 50)
            .await
            .unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "evidence.export" && a.object == w.a1)
    );

    // Kazakh and English on request.
    let kk = tmp.path().join("kk.tar");
    evidence::build(
        &w.db,
        &w.alpha,
        std::slice::from_ref(&w.a1),
        &Options {
            lang: Lang::Kk,
            tsa: None,
        },
        &kk,
    )
    .await
    .unwrap();
    let kdir = tmp.path().join("kk");
    unpack(&kk, &kdir);
    let khtml = std::fs::read_to_string(kdir.join("report.html")).unwrap();
    assert!(khtml.contains("<html lang=\"kk\">") && khtml.contains("Дәлелдер пакеті"));

    // One flipped byte in every file, in turn: the check fails and names that file.
    for name in &all {
        let case = tmp.path().join(format!("flip-{}", name.replace('/', "_")));
        copy_dir(&dir, &case);
        let f = case.join(name);
        let mut b = std::fs::read(&f).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x01;
        std::fs::write(&f, b).unwrap();
        let r = verify::verify_path(&case).unwrap();
        assert!(!r.ok(), "flipping a byte of {name} went unnoticed");
        if name != "manifest.json" {
            assert!(
                r.problems.contains(&Problem::Changed(name.clone())),
                "{name}: {:?}",
                r.problems
            );
        }
        std::fs::remove_dir_all(&case).unwrap();
    }

    // A deleted file, an added file.
    for name in &all {
        if name == "manifest.json" {
            continue;
        }
        let case = tmp.path().join("deleted");
        copy_dir(&dir, &case);
        std::fs::remove_file(case.join(name)).unwrap();
        let r = verify::verify_path(&case).unwrap();
        assert!(
            r.problems.contains(&Problem::Missing(name.clone())),
            "{name}: {:?}",
            r.problems
        );
        std::fs::remove_dir_all(&case).unwrap();
    }
    let case = tmp.path().join("added");
    copy_dir(&dir, &case);
    std::fs::write(case.join("attachments/planted.png"), b"not evidence").unwrap();
    let r = verify::verify_path(&case).unwrap();
    assert_eq!(
        r.problems,
        vec![Problem::Extra("attachments/planted.png".into())]
    );
    std::fs::remove_dir_all(&case).unwrap();
    let case = tmp.path().join("nomanifest");
    copy_dir(&dir, &case);
    std::fs::remove_file(case.join("manifest.json")).unwrap();
    let r = verify::verify_path(&case).unwrap();
    assert!(r.problems.contains(&Problem::Manifest("missing".into())));
    std::fs::remove_dir_all(&case).unwrap();

    // An edited custody line, first as is, then by a forger who also fixes the manifest and
    // SHA256SUMS: the chain still names the entry.
    let edited: Vec<String> = custody
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 3 {
                l.replace("user:editor@alpha.kz", "user:someone@else.kz")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(
        edited.join("\n"),
        custody.trim_end(),
        "line 4 names alpha's editor"
    );
    let edited = edited.join("\n") + "\n";
    let case = tmp.path().join("custody");
    copy_dir(&dir, &case);
    std::fs::write(case.join("custody.jsonl"), &edited).unwrap();
    let r = verify::verify_path(&case).unwrap();
    assert!(
        r.problems
            .contains(&Problem::Changed("custody.jsonl".into())),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::Custody(4, _))),
        "{:?}",
        r.problems
    );
    let mut m = manifest.clone();
    for f in m["files"].as_array_mut().unwrap() {
        if f["path"] == "custody.jsonl" {
            f["sha256"] = json!(verify::sha256_hex(edited.as_bytes()));
            f["size"] = json!(edited.len());
        }
    }
    std::fs::write(case.join("manifest.json"), verify::canonical_json(&m)).unwrap();
    let r = verify::verify_path(&case).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::Custody(4, _))),
        "{:?}",
        r.problems
    );
    std::fs::remove_dir_all(&case).unwrap();

    // The tar file itself: one flipped byte inside each member's data, named.
    let tar_bytes = std::fs::read(&out).unwrap();
    let mut positions = Vec::new();
    let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        positions.push((name, e.raw_file_position() + e.size() / 2));
    }
    assert_eq!(positions.len(), all.len());
    for (name, pos) in positions {
        let mut b = tar_bytes.clone();
        b[pos as usize] ^= 0x20;
        let f = tmp.path().join("flipped.tar");
        std::fs::write(&f, b).unwrap();
        let r = verify::verify_path(&f).unwrap();
        assert!(!r.ok(), "tar: {name} flip unnoticed");
        if name != "manifest.json" {
            assert!(
                r.problems.contains(&Problem::Changed(name.clone())),
                "tar {name}: {:?}",
                r.problems
            );
        }
    }
}

async fn collective_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("collective.tar");
    // alpha may see beta's GREEN incident: a package across two outlets.
    let p = evidence::build(
        &w.db,
        &w.alpha,
        &[w.a1.clone(), w.b1.clone()],
        &Options::default(),
        &out,
    )
    .await
    .expect("collective package");
    let r = verify::verify_path(&out).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    let dir = tmp.path().join("c");
    unpack(&out, &dir);
    let facts: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("facts.json")).unwrap()).unwrap();
    let ids: Vec<&str> = facts["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["incident"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [w.a1.as_str(), w.b1.as_str()]);
    // The shared file is in once.
    assert_eq!(
        names(&dir)
            .iter()
            .filter(|n| n.starts_with("attachments/"))
            .count(),
        2
    );
    // Two attachments, custody, facts (2), report (HTML and PDF), VERIFY.txt, SHA256SUMS.
    assert_eq!(p.files, 9);

    // beta's RED incident without recipients: refused for alpha and gamma, named by position,
    // and no package is written.
    let refused = tmp.path().join("refused.tar");
    for who in [&w.alpha, &w.gamma] {
        let e = evidence::build(
            &w.db,
            who,
            &[w.a1.clone(), w.b_red.clone()],
            &Options::default(),
            &refused,
        )
        .await
        .expect_err("RED of another outlet");
        match e {
            Error::Invalid(f) => assert_eq!(f[0].field, "incidents[1]"),
            other => panic!("expected invalid input, got {other:?}"),
        }
        assert!(!refused.exists());
    }
    // Its owner may package it.
    evidence::build(
        &w.db,
        &w.beta,
        std::slice::from_ref(&w.b_red),
        &Options::default(),
        &refused,
    )
    .await
    .expect("owner packages its RED incident");
    assert!(verify::verify_path(&refused).unwrap().ok());
    // Ingest tokens may not read the registry at all.
    let ingest = actor(w.alpha.outlet_id, Role::Ingest, "token:shield");
    assert!(matches!(
        evidence::build(
            &w.db,
            &ingest,
            std::slice::from_ref(&w.a1),
            &Options::default(),
            &refused
        )
        .await,
        Err(Error::Forbidden)
    ));
    let too_many: Vec<String> = (0..51).map(|i| format!("x{i}")).collect();
    assert!(matches!(
        evidence::build(&w.db, &w.alpha, &too_many, &Options::default(), &refused).await,
        Err(Error::Invalid(_))
    ));
}

async fn api_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    let token =
        w.db.create_token(None, w.alpha.outlet_id, "lawyer", Role::Viewer)
            .await
            .unwrap();
    let client = Client::new(w.db.clone());
    let auth = Auth::Bearer(token);
    let r = client
        .get(
            &format!("/api/v1/incidents/{}/evidence?lang=en", w.a1),
            &auth,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-tar"));
    assert_eq!(r.header("x-qalqan-timestamp"), Some("none"));
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("api.tar");
    std::fs::write(&f, &r.bytes).unwrap();
    let rep = verify::verify_path(&f).unwrap();
    assert!(rep.ok(), "{:?}", rep.problems);
    let dir = tmp.path().join("api");
    unpack(&f, &dir);
    assert_eq!(
        verify::sha256_hex(&std::fs::read(dir.join("manifest.json")).unwrap()),
        r.header("x-qalqan-manifest-sha256").unwrap()
    );
    assert!(
        std::fs::read_to_string(dir.join("report.html"))
            .unwrap()
            .contains("<html lang=\"en\">")
    );
    // Recorded as the token's export.
    let log =
        w.db.custody_log(&w.alpha, &w.a1, &verify::sha256_hex(SHARED))
            .await
            .unwrap();
    assert_eq!(
        log.last().map(|c| (c.action.as_str(), c.actor.as_str())),
        Some(("exported", "token:lawyer"))
    );

    // Collective package through the API; RED of another outlet refused.
    let r = client
        .json(
            Method::POST,
            "/api/v1/evidence",
            &auth,
            &json!({"incidents": [w.a1, w.b1]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = client
        .json(
            Method::POST,
            "/api/v1/evidence",
            &auth,
            &json!({"incidents": [w.b_red]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().contains("incidents[0]"));
    let r = client
        .get(&format!("/api/v1/incidents/{}/evidence", w.b_red), &auth)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = client
        .json(
            Method::POST,
            "/api/v1/evidence",
            &auth,
            &json!({"incidents": [w.a1], "extra": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = client
        .get(
            &format!("/api/v1/incidents/{}/evidence?lang=fr", w.a1),
            &auth,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = client
        .get(&format!("/api/v1/incidents/{}/evidence", w.a1), &Auth::None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // No authority configured: no late tokens.
    let r = client
        .get(
            &format!("/api/v1/evidence/timestamps/{}", "0".repeat(64)),
            &auth,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// A timestamping authority on loopback: `openssl ts -reply` behind a one-route HTTP server,
/// with a self-signed certificate marked for time stamping only.
struct LocalTsa {
    dir: tempfile::TempDir,
    url: String,
}

fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian's) must be installed for this test")
}

async fn local_tsa() -> LocalTsa {
    let dir = tempfile::tempdir().unwrap();
    let o = openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "tsa.key",
            "-out",
            "tsa.crt",
            "-days",
            "2",
            "-subj",
            "/CN=qalqan test TSA",
            "-addext",
            "extendedKeyUsage=critical,timeStamping",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(
        dir.path().join("tsa.cnf"),
        "[ tsa ]\ndefault_tsa = tsa1\n[ tsa1 ]\nserial = ./serial\ncrypto_device = builtin\n\
         signer_cert = ./tsa.crt\nsigner_key = ./tsa.key\nsigner_digest = sha256\n\
         default_policy = 1.2.3.4.1\ndigests = sha256\naccuracy = secs:1\nordering = yes\n\
         tsa_name = yes\ness_cert_id_chain = no\ness_cert_id_alg = sha256\n",
    )
    .unwrap();
    let work = dir.path().to_path_buf();
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    let app = axum::Router::new().route(
        "/tsa",
        axum::routing::post(move |body: axum::body::Bytes| {
            let work = work.clone();
            let lock = lock.clone();
            async move {
                let _g = lock.lock().await;
                std::fs::write(work.join("req.tsq"), &body).unwrap();
                let o = openssl(
                    &work,
                    &[
                        "ts",
                        "-reply",
                        "-config",
                        "tsa.cnf",
                        "-queryfile",
                        "req.tsq",
                        "-out",
                        "resp.tsr",
                    ],
                );
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                (
                    [("content-type", "application/timestamp-reply")],
                    std::fs::read(work.join("resp.tsr")).unwrap(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    LocalTsa {
        dir,
        url: format!("http://{addr}/tsa"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc3161_timestamp_attached_and_checked_by_openssl() {
    let t = TestDb::new(Kind::Sqlite).await.unwrap();
    let w = world(&t).await;
    let tsa = local_tsa().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("stamped.tar");
    let opts = Options {
        lang: Lang::Ru,
        tsa: Some(Tsa {
            url: tsa.url.clone(),
            queue_dir: tmp.path().join("queue"),
        }),
    };
    let p = evidence::build(&w.db, &w.alpha, std::slice::from_ref(&w.a1), &opts, &out)
        .await
        .unwrap();
    let Timestamp::Attached(when) = &p.timestamp else {
        panic!("expected a token, got {:?}", p.timestamp);
    };
    let r = verify::verify_path(&out).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    assert!(r.timestamp.is_some());
    assert!(when.starts_with("20"), "{when}");

    // openssl agrees: the token signs this manifest.
    let dir = tmp.path().join("u");
    unpack(&out, &dir);
    let ca = tsa.dir.path().join("tsa.crt");
    let ca = ca.to_str().unwrap();
    let o = openssl(
        &dir,
        &[
            "ts",
            "-verify",
            "-data",
            "manifest.json",
            "-in",
            "manifest.json.tsr",
            "-CAfile",
            ca,
        ],
    );
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Verification: OK"),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // A changed manifest: the token no longer matches it, for us and for openssl.
    let m = dir.join("manifest.json");
    let mut b = std::fs::read(&m).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x01;
    std::fs::write(&m, &b).unwrap();
    let r = verify::verify_path(&dir).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| matches!(p, Problem::Timestamp(_))),
        "{:?}",
        r.problems
    );
    let o = openssl(
        &dir,
        &[
            "ts",
            "-verify",
            "-data",
            "manifest.json",
            "-in",
            "manifest.json.tsr",
            "-CAfile",
            ca,
        ],
    );
    assert!(!o.status.success());
    b[i] ^= 0x01;
    std::fs::write(&m, &b).unwrap();
    // A flipped byte in the token's signature is the signature's business: openssl refuses it.
    let tsr = dir.join("manifest.json.tsr");
    let mut tb = std::fs::read(&tsr).unwrap();
    let last = tb.len() - 3;
    tb[last] ^= 0x01;
    std::fs::write(&tsr, &tb).unwrap();
    let o = openssl(
        &dir,
        &[
            "ts",
            "-verify",
            "-data",
            "manifest.json",
            "-in",
            "manifest.json.tsr",
            "-CAfile",
            ca,
        ],
    );
    assert!(
        !o.status.success(),
        "openssl must refuse a token with a changed signature"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc3161_unreachable_authority_queues_and_retries() {
    let t = TestDb::new(Kind::Sqlite).await.unwrap();
    let w = world(&t).await;
    let tmp = tempfile::tempdir().unwrap();
    // A port with nothing listening: bind, note the port, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let queue = tmp.path().join("queue");
    let opts = Options {
        lang: Lang::Ru,
        tsa: Some(Tsa {
            url: format!("http://{dead}/tsa"),
            queue_dir: queue.clone(),
        }),
    };
    let out = tmp.path().join("p.tar");
    let p = evidence::build(&w.db, &w.alpha, std::slice::from_ref(&w.a1), &opts, &out)
        .await
        .unwrap();
    assert!(
        matches!(p.timestamp, Timestamp::Queued(_)),
        "{:?}",
        p.timestamp
    );
    let r = verify::verify_path(&out).unwrap();
    assert!(
        r.ok() && r.timestamp.is_none(),
        "the package is complete without a token"
    );
    let queued = queue.join(format!("{}.json", p.manifest_sha256));
    assert!(queued.exists());

    // The authority comes back; the queued request is sent when due.
    let tsa = local_tsa().await;
    let mut q: Value = serde_json::from_slice(&std::fs::read(&queued).unwrap()).unwrap();
    q["url"] = json!(tsa.url);
    q["next_ms"] = json!(0);
    std::fs::write(&queued, serde_json::to_vec(&q).unwrap()).unwrap();
    let cfg = Tsa {
        url: tsa.url.clone(),
        queue_dir: queue.clone(),
    };
    assert_eq!(evidence::tsa::retry_due(&cfg).await, 1);
    assert!(!queued.exists());
    let token = evidence::tsa::late_token(&cfg, &p.manifest_sha256, w.alpha.outlet_id)
        .unwrap()
        .expect("token");
    assert!(
        evidence::tsa::late_token(&cfg, &p.manifest_sha256, w.beta.outlet_id).is_err(),
        "other outlets get nothing"
    );

    // Put next to the package's manifest, it verifies, with openssl too.
    let dir = tmp.path().join("u");
    unpack(&out, &dir);
    std::fs::write(dir.join("manifest.json.tsr"), &token).unwrap();
    let r = verify::verify_path(&dir).unwrap();
    assert!(r.ok() && r.timestamp.is_some(), "{:?}", r.problems);
    let ca = tsa.dir.path().join("tsa.crt");
    let o = openssl(
        &dir,
        &[
            "ts",
            "-verify",
            "-data",
            "manifest.json",
            "-in",
            "manifest.json.tsr",
            "-CAfile",
            ca.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
