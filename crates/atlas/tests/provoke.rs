//! Publications and what provokes attacks: the statistics on synthetic histories (a history
//! where attacks follow articles on one topic, and one where they do not; and the same with the
//! topic only in the publications' summaries, the titles saying nothing), the publications
//! before an incident ranked by closeness, TLP, and the feed poller against a real local HTTP
//! server serving RSS 2.0 and Atom fixtures.
//!
//! Store and API stories run on SQLite and PostgreSQL (`both_backends!`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxStatus, header};
use axum::response::IntoResponse;
use common::{Auth, Client, Kind, TestDb, actor};
use http::{Method, StatusCode};
use qalqan_atlas::feeds::{self, FeedIn, PollConfig};
use qalqan_atlas::model::{Role, format_time, parse_time};
use qalqan_atlas::provoke::{self, IncidentRow, Params, ProvokeQuery, PubRow};
use qalqan_atlas::store::IncidentIn;
use serde_json::{Value, json};

both_backends! {
    link_ranks_the_topic_first => link_story,
    no_link_reports_nothing => no_link_story,
    summary_link_ranks_the_topic_first => summary_link_story,
    summary_no_link_reports_nothing => summary_no_link_story,
    preceding_ranked_by_closeness => preceding_story,
    tlp_limits_both_views => tlp_story,
    feed_poller => feeds_story,
}

// ---------------------------------------------------------------------------------------------
// Synthetic histories.

/// SplitMix64: small, deterministic, good enough to draw a history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// The topic attacks follow in the "link" history: Kazakh tag, Russian/Kazakh/English words.
const PROVOKING: usize = 0;
const TOPICS: &[(&str, &[&str])] = &[
    ("сайлау", &["выборы", "сайлауы", "election", "избирком"]),
    ("экономика", &["тенге", "инфляция", "нацбанк", "economy"]),
    ("спорт", &["футбол", "кайрат", "олимпиада", "чемпионат"]),
    ("мәдениет", &["театр", "кино", "концерт", "фестиваль"]),
    ("ауа райы", &["снег", "жара", "буран", "weather"]),
    (
        "технологии",
        &["стартап", "интернет", "цифровизация", "ұялы"],
    ),
    ("білім", &["школа", "университет", "мектеп", "студенттер"]),
    ("здоровье", &["больница", "вакцина", "дәрігерлер", "health"]),
];
const FILLER: &[&str] = &[
    "Алматы",
    "Астана",
    "Шымкент",
    "Қарағанды",
    "репортаж",
    "мнение",
    "жаңалықтар",
    "today",
    "интервью",
    "обзор",
];

struct History {
    /// (url, title, published_ms, tags, topic, summary)
    pubs: Vec<(String, String, i64, Vec<String>, usize, String)>,
    /// Incident starts.
    attacks: Vec<i64>,
}

/// Share of the output on the provoking topic (a rare subject, such as investigations).
const PROVOKING_SHARE: f64 = 0.03;
/// Attacks in the 180 days of a history, about one a week. With a 72-hour window a quarter to a
/// third of the output falls "before an attack", which dilutes the signal: measured over 200
/// seeds, the link is found in 200 of 200 histories at 3 % and 25 attacks, but only in 196 at
/// 5 % and 25, and in about 60 % at 5 % and 15. Without a link, 11 of 200 histories reported
/// something significant (Benjamini–Hochberg at 5 %: about 10 expected).
const ATTACKS: usize = 25;

fn start_ms() -> i64 {
    parse_time("2025-01-01").unwrap()
}

/// About six publications a day for `days` days; the provoking topic is 3 % of the output,
/// the others share the rest. With `link`, `attacks` incidents start 1 to 24 hours after
/// randomly chosen articles on the provoking topic; without, at uniformly random times.
fn history(seed: u64, days: i64, attacks: usize, link: bool, slug: &str) -> History {
    let mut r = Rng(seed);
    let start = start_ms();
    let end = start + days * DAY;
    let mut pubs = Vec::new();
    let mut t = start;
    let mut n = 0;
    while t < end {
        let topic = if r.unit() < PROVOKING_SHARE {
            PROVOKING
        } else {
            1 + r.below(TOPICS.len() as u64 - 1) as usize
        };
        let (tag, words) = TOPICS[topic];
        let w1 = words[r.below(words.len() as u64) as usize];
        let w2 = words[r.below(words.len() as u64) as usize];
        let f1 = FILLER[r.below(FILLER.len() as u64) as usize];
        let f2 = FILLER[r.below(FILLER.len() as u64) as usize];
        let title = format!("{f1}: {w1} и {w2} — {f2}");
        pubs.push((
            format!("https://{slug}.example/news/{n}"),
            title,
            t,
            vec![tag.to_string()],
            topic,
            String::new(),
        ));
        n += 1;
        t += 2 * HOUR + r.below(4 * HOUR as u64) as i64;
    }
    let mut starts = Vec::new();
    if link {
        let candidates: Vec<i64> = pubs
            .iter()
            .filter(|p| p.4 == PROVOKING && p.2 > start + 4 * DAY && p.2 < end - DAY)
            .map(|p| p.2)
            .collect();
        let mut taken = vec![false; candidates.len()];
        while starts.len() < attacks.min(candidates.len()) {
            let i = r.below(candidates.len() as u64) as usize;
            if !taken[i] {
                taken[i] = true;
                starts.push(candidates[i] + HOUR + r.below(23 * HOUR as u64) as i64);
            }
        }
    } else {
        for _ in 0..attacks {
            starts.push(start + 4 * DAY + r.below(((days - 5) * DAY) as u64) as i64);
        }
    }
    starts.sort_unstable();
    History {
        pubs,
        attacks: starts,
    }
}

/// The same history with the topic moved out of sight of the title-only analysis: no tags,
/// titles of filler words only, and the topic's words in the summary, an HTML lead as feeds
/// send it (markup and references the poller strips; here stored as the poller would).
fn in_summaries(mut h: History, seed: u64) -> History {
    let mut r = Rng(seed ^ 0x5eed);
    for p in &mut h.pubs {
        let f1 = FILLER[r.below(FILLER.len() as u64) as usize];
        let f2 = FILLER[r.below(FILLER.len() as u64) as usize];
        let f3 = FILLER[r.below(FILLER.len() as u64) as usize];
        let lead = format!(
            "<p>{f3} &mdash; <b>{}</b>. Подробности&nbsp;в материале.</p>",
            p.1
        );
        p.5 = feeds::html_text(&lead, feeds::MAX_SUMMARY);
        p.1 = format!("{f1}, {f2}");
        p.3 = Vec::new();
    }
    h
}

fn pure_inputs(h: &History) -> (Vec<IncidentRow>, Vec<PubRow>) {
    let incidents = h
        .attacks
        .iter()
        .enumerate()
        .map(|(i, t)| IncidentRow {
            uuid: format!("i{i}"),
            title: format!("Атака {i}"),
            outlet_id: 1,
            outlet: "kursiv".into(),
            started_ms: *t,
        })
        .collect();
    let pubs = h
        .pubs
        .iter()
        .map(|p| PubRow {
            outlet_id: 1,
            url: p.0.clone(),
            title: p.1.clone(),
            summary: p.5.clone(),
            published_ms: p.2,
            tags: p.3.clone(),
        })
        .collect();
    (incidents, pubs)
}

fn is_provoking_term(term: &str) -> bool {
    let (tag, words) = TOPICS[PROVOKING];
    term == tag || words.contains(&term)
}

/// The pure analysis, over many seeds: with a link the topic is found every time; without one,
/// a false "significant" is rare (the Benjamini–Hochberg rate is at most 5 % per history, and
/// the exact test is conservative).
#[test]
fn calibration_over_many_seeds() {
    let seeds = 40u64;
    let mut found = 0;
    let mut false_alarms = 0;
    for seed in 0..seeds {
        let h = history(1000 + seed, 180, ATTACKS, true, "kursiv");
        let (i, p) = pure_inputs(&h);
        let a = provoke::analyze(&i, &p, &Params::default());
        let first = &a.terms[0];
        if first.significant && is_provoking_term(&first.term) {
            found += 1;
        }
        let h = history(5000 + seed, 180, ATTACKS, false, "kursiv");
        let (i, p) = pure_inputs(&h);
        let a = provoke::analyze(&i, &p, &Params::default());
        let sig: Vec<&str> = a
            .terms
            .iter()
            .filter(|t| t.significant)
            .map(|t| t.term.as_str())
            .collect();
        if !sig.is_empty() {
            println!("seed {}: false alarm {sig:?}", 5000 + seed);
            false_alarms += 1;
        }
    }
    println!("link found {found}/{seeds}; false alarms {false_alarms}/{seeds}");
    assert!(
        found >= seeds - 1,
        "link found in only {found}/{seeds} histories"
    );
    // Benjamini–Hochberg at 5 % allows about 2 of 40 under no link (measured: 0 to 2 with
    // these seeds); 5 or more would mean the control is broken.
    assert!(
        false_alarms <= 4,
        "{false_alarms}/{seeds} no-link histories reported something significant"
    );
}

/// The topic only in the summaries: with a link it ranks first (and the title-only analysis
/// would have had nothing to find: no title word is on the topic); without, nothing is
/// significant more often than Benjamini–Hochberg allows.
#[test]
fn summaries_calibration_over_many_seeds() {
    let seeds = 20u64;
    let (mut found, mut false_alarms) = (0, 0);
    for seed in 0..seeds {
        let h = in_summaries(history(2000 + seed, 180, ATTACKS, true, "kursiv"), seed);
        let (i, p) = pure_inputs(&h);
        assert!(p.iter().all(|p| {
            p.tags.is_empty()
                && provoke::keywords(&p.title)
                    .iter()
                    .all(|w| !is_provoking_term(w))
        }));
        let a = provoke::analyze(&i, &p, &Params::default());
        let first = &a.terms[0];
        if first.significant && is_provoking_term(&first.term) {
            found += 1;
        }
        let h = in_summaries(history(6000 + seed, 180, ATTACKS, false, "kursiv"), seed);
        let (i, p) = pure_inputs(&h);
        let a = provoke::analyze(&i, &p, &Params::default());
        if a.terms.iter().any(|t| t.significant) {
            false_alarms += 1;
        }
    }
    println!("summaries: link found {found}/{seeds}; false alarms {false_alarms}/{seeds}");
    assert!(found >= seeds - 1, "link found in only {found}/{seeds}");
    assert!(false_alarms <= 3, "{false_alarms}/{seeds} false alarms");
}

/// A word in both the title and the summary of one publication is one publication carrying
/// it: counts never exceed the publications.
#[test]
fn title_and_summary_count_once() {
    let h = history(11, 180, ATTACKS, true, "kursiv");
    let (i, mut p) = pure_inputs(&h);
    let a = provoke::analyze(&i, &p, &Params::default());
    // The summary repeats the title three times: every figure stays the same.
    for x in &mut p {
        x.summary = format!("{0} {0} {0}", x.title);
    }
    let b = provoke::analyze(&i, &p, &Params::default());
    assert_eq!(a.terms.len(), b.terms.len());
    for (x, y) in a.terms.iter().zip(&b.terms) {
        assert_eq!(
            (&x.term, x.before, x.all, x.before_total, x.all_total),
            (&y.term, y.before, y.all, y.before_total, y.all_total)
        );
        assert!(y.before <= y.before_total && y.all <= y.all_total);
    }
}

/// With nothing before attacks at all, nothing is tested, nothing is significant.
#[test]
fn no_incidents_no_terms() {
    let h = history(7, 30, 0, false, "kursiv");
    let (i, p) = pure_inputs(&h);
    let a = provoke::analyze(&i, &p, &Params::default());
    assert_eq!(a.incidents, 0);
    assert!(a.terms.is_empty());
}

async fn load(db: &qalqan_atlas::Db, outlet_id: i64, h: &History) {
    let mut tx = db.pool.begin().await.unwrap();
    for p in &h.pubs {
        sqlx::query(
            "INSERT INTO publications (outlet_id, url, title, published_ms, tags, summary)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(outlet_id)
        .bind(&p.0)
        .bind(&p.1)
        .bind(p.2)
        .bind(serde_json::to_string(&p.3).unwrap())
        .bind(&p.5)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

fn incident_in(title: &str, tlp: &str, started_ms: i64) -> IncidentIn {
    serde_json::from_value(json!({
        "kind": "http_flood", "title": title, "tlp": tlp, "started_at": format_time(started_ms),
    }))
    .unwrap()
}

fn period(days: i64) -> ProvokeQuery {
    ProvokeQuery {
        from: Some(format_time(start_ms())),
        to: Some(format_time(start_ms() + days * DAY)),
        ..ProvokeQuery::default()
    }
}

async fn link_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let k = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let ed = actor(k.id, Role::Editor, "e");
    let h = history(42, 180, ATTACKS, true, "kursiv");
    load(&db, k.id, &h).await;
    let mut ids = Vec::new();
    for (n, s) in h.attacks.iter().enumerate() {
        let i = db
            .create_incident(&ed, &incident_in(&format!("DDoS {n}"), "green", *s))
            .await
            .unwrap();
        ids.push(i.id);
    }
    let r = db.provoke(&ed, &period(180)).await.unwrap();
    assert_eq!(r.incidents, ATTACKS);
    assert_eq!(r.publications, h.pubs.len());
    assert!(r.publications_before > 0 && r.terms_tested > 10, "{r:?}");
    for t in r.terms.iter().take(8) {
        println!(
            "{} ({}) lift {:.2} [{:.2}, {:.2}] {}/{} vs {}/{} p={:.2e} q={:.2e} {}",
            t.term,
            t.kind,
            t.lift,
            t.lift_low,
            t.lift_high,
            t.before,
            t.before_total,
            t.all,
            t.all_total,
            t.p_value,
            t.q_value,
            t.significant
        );
    }
    let first = &r.terms[0];
    println!(
        "first: {} ({}) lift {:.2} [{:.2}, {:.2}] {}/{} vs {}/{} q={:.2e}",
        first.term,
        first.kind,
        first.lift,
        first.lift_low,
        first.lift_high,
        first.before,
        first.before_total,
        first.all,
        first.all_total,
        first.q_value
    );
    assert!(is_provoking_term(&first.term), "first term: {first:?}");
    assert!(first.significant && first.lift_low > 1.0 && first.q_value <= 0.05);
    // Every significant term belongs to the provoking topic.
    for s in r.terms.iter().filter(|s| s.significant) {
        assert!(
            is_provoking_term(&s.term),
            "significant but unrelated: {s:?}"
        );
    }
    // The evidence: visible incidents, each with publications carrying the term before it.
    assert!(first.incidents >= 10, "{}", first.incidents);
    assert!(!first.evidence.is_empty());
    for ev in &first.evidence {
        assert!(ids.contains(&ev.id));
        assert!(!ev.publications.is_empty());
        for p in &ev.publications {
            assert!((0..=72 * 60).contains(&p.lead_minutes), "{p:?}");
        }
    }
    // A shorter window still finds it (the triggers are 1 to 24 h before).
    let mut q = period(180);
    q.window_hours = Some(24);
    let r24 = db.provoke(&ed, &q).await.unwrap();
    assert!(is_provoking_term(&r24.terms[0].term) && r24.terms[0].significant);
    // Bad parameters are field errors, all at once.
    let bad = ProvokeQuery {
        window_hours: Some(0),
        from: Some("yesterday".into()),
        limit: Some(0),
        ..ProvokeQuery::default()
    };
    match db.provoke(&ed, &bad).await {
        Err(qalqan_atlas::Error::Invalid(f)) => {
            let names: Vec<&str> = f.iter().map(|f| f.field.as_str()).collect();
            assert_eq!(names, ["window_hours", "from", "limit"]);
        }
        other => panic!("{other:?}"),
    }
    db.close().await;
}

async fn no_link_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let k = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let ed = actor(k.id, Role::Editor, "e");
    let h = history(43, 180, ATTACKS, false, "kursiv");
    load(&db, k.id, &h).await;
    for (n, s) in h.attacks.iter().enumerate() {
        db.create_incident(&ed, &incident_in(&format!("DDoS {n}"), "green", *s))
            .await
            .unwrap();
    }
    let r = db.provoke(&ed, &period(180)).await.unwrap();
    assert_eq!(r.incidents, ATTACKS);
    assert!(r.publications_before > 100, "{}", r.publications_before);
    assert!(
        !r.terms.is_empty(),
        "terms are still listed, as not significant"
    );
    let sig: Vec<&str> = r
        .terms
        .iter()
        .filter(|t| t.significant)
        .map(|t| t.term.as_str())
        .collect();
    assert!(sig.is_empty(), "no-link history reported {sig:?}");
    db.close().await;
}

/// The topic only in the summaries, through the store: stored summaries are read and ranked.
async fn summary_link_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let k = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let ed = actor(k.id, Role::Editor, "e");
    let h = in_summaries(history(44, 180, ATTACKS, true, "kursiv"), 44);
    load(&db, k.id, &h).await;
    for (n, s) in h.attacks.iter().enumerate() {
        db.create_incident(&ed, &incident_in(&format!("DDoS {n}"), "green", *s))
            .await
            .unwrap();
    }
    let r = db.provoke(&ed, &period(180)).await.unwrap();
    assert_eq!(r.publications, h.pubs.len());
    let first = &r.terms[0];
    assert_eq!(first.kind, "keyword");
    assert!(is_provoking_term(&first.term), "first term: {first:?}");
    assert!(first.significant && first.lift_low > 1.0, "{first:?}");
    for s in r.terms.iter().filter(|s| s.significant) {
        assert!(
            is_provoking_term(&s.term),
            "significant but unrelated: {s:?}"
        );
    }
    // The evidence shows the publications whose summary carries the term.
    let ev = &first.evidence[0].publications[0];
    let stored = h.pubs.iter().find(|p| p.0 == ev.url).unwrap();
    assert!(provoke::keywords(&stored.5).contains(&first.term), "{ev:?}");
    db.close().await;
}

async fn summary_no_link_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let k = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let ed = actor(k.id, Role::Editor, "e");
    let h = in_summaries(history(45, 180, ATTACKS, false, "kursiv"), 45);
    load(&db, k.id, &h).await;
    for (n, s) in h.attacks.iter().enumerate() {
        db.create_incident(&ed, &incident_in(&format!("DDoS {n}"), "green", *s))
            .await
            .unwrap();
    }
    let r = db.provoke(&ed, &period(180)).await.unwrap();
    assert!(r.terms_tested > 10 && !r.terms.is_empty(), "{r:?}");
    let sig: Vec<&str> = r
        .terms
        .iter()
        .filter(|t| t.significant)
        .map(|t| t.term.as_str())
        .collect();
    assert!(sig.is_empty(), "no-link history reported {sig:?}");
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// Publications before one incident.

async fn preceding_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let k = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let admin = db
        .create_token(None, k.id, "admin", Role::Admin)
        .await
        .unwrap();
    let c = Client::new(db);
    let auth = Auth::Bearer(admin);
    let start = parse_time("2025-03-10T12:00:00Z").unwrap();
    for (slug, at_h) in [
        ("far", -80i64),
        ("day", -30),
        ("hour", -1),
        ("after", 1),
        ("edge", -72),
    ] {
        let r = c
            .json(
                Method::POST,
                "/api/v1/publications",
                &auth,
                &json!({
                    "url": format!("https://kursiv.example/{slug}"),
                    "title": format!("Статья {slug}"),
                    "published_at": format_time(start + at_h * HOUR),
                    "tags": ["Политика"],
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let r = c
        .json(
            Method::POST,
            "/api/v1/incidents",
            &auth,
            &json!({"kind": "http_flood", "title": "DDoS", "tlp": "amber+strict",
                    "started_at": format_time(start)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let got = c
        .get(&format!("/api/v1/incidents/{id}/publications"), &auth)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    let v = got.json();
    let urls: Vec<&str> = v["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            "https://kursiv.example/hour",
            "https://kursiv.example/day",
            "https://kursiv.example/edge"
        ]
    );
    let leads: Vec<i64> = v["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["lead_minutes"].as_i64().unwrap())
        .collect();
    assert_eq!(leads, [60, 30 * 60, 72 * 60]);
    assert_eq!(v["window_hours"], 72);
    assert_eq!(v["publications"][0]["tags"], json!(["политика"]));
    let wide = c
        .get(
            &format!("/api/v1/incidents/{id}/publications?window_hours=96"),
            &auth,
        )
        .await
        .json();
    assert_eq!(wide["publications"].as_array().unwrap().len(), 4);
    for bad in [
        "window_hours=0",
        "window_hours=721",
        "window_hours=x",
        "nope=1",
    ] {
        let r = c
            .get(&format!("/api/v1/incidents/{id}/publications?{bad}"), &auth)
            .await;
        assert!(
            r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::BAD_REQUEST,
            "{bad}: {}",
            r.status
        );
    }
    let r = c
        .get(
            "/api/v1/incidents/00000000-0000-0000-0000-000000000000/publications",
            &auth,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    c.db().close().await;
}

// ---------------------------------------------------------------------------------------------
// TLP.

async fn tlp_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let k = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let v = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let k_tok = Auth::Bearer(
        db.create_token(None, k.id, "k", Role::Viewer)
            .await
            .unwrap(),
    );
    let v_tok = Auth::Bearer(
        db.create_token(None, v.id, "v", Role::Viewer)
            .await
            .unwrap(),
    );
    let ed = actor(k.id, Role::Editor, "e");
    // Kursiv's hidden incidents (AMBER+STRICT) follow the provoking topic; its shared ones
    // (GREEN) fall at random times.
    let linked = history(44, 180, ATTACKS, true, "kursiv");
    load(&db, k.id, &linked).await;
    let random = history(45, 180, 8, false, "kursiv");
    let mut hidden = Vec::new();
    for (n, s) in linked.attacks.iter().enumerate() {
        let i = db
            .create_incident(
                &ed,
                &incident_in(&format!("Скрытая {n}"), "amber+strict", *s),
            )
            .await
            .unwrap();
        hidden.push(i.id);
    }
    let mut shared = Vec::new();
    for (n, s) in random.attacks.iter().enumerate() {
        let i = db
            .create_incident(&ed, &incident_in(&format!("Общая {n}"), "green", *s))
            .await
            .unwrap();
        shared.push(i.id);
    }
    let c = Client::new(db);
    let q = format!(
        "/api/v1/provoke?from={}&to={}",
        common::enc(&format_time(start_ms())),
        common::enc(&format_time(start_ms() + 180 * DAY))
    );
    // Kursiv sees all of them and finds the topic.
    let own = c.get(&q, &k_tok).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text());
    let own = own.json();
    assert_eq!(own["incidents"], ATTACKS + 8);
    assert!(is_provoking_term(own["terms"][0]["term"].as_str().unwrap()));
    assert_eq!(own["terms"][0]["significant"], true);
    // Vlast sees only the 8 shared ones: the link is invisible to it, and no evidence names a
    // hidden incident.
    let other = c.get(&q, &v_tok).await;
    assert_eq!(other.status, StatusCode::OK);
    let other = other.json();
    assert_eq!(other["incidents"], 8);
    let text = other.to_string();
    for h in &hidden {
        assert!(!text.contains(h.as_str()), "hidden incident {h} leaked");
    }
    for term in other["terms"].as_array().unwrap() {
        assert_eq!(term["significant"], false, "{term}");
        for ev in term["evidence"].as_array().unwrap() {
            assert!(shared.contains(&ev["id"].as_str().unwrap().to_string()));
        }
    }
    // Vlast asking for Kursiv explicitly changes nothing.
    let other_k = c.get(&format!("{q}&outlet=kursiv"), &v_tok).await.json();
    assert_eq!(other_k["incidents"], 8);
    // Publications before a hidden incident: 404 for Vlast, exactly like an unknown incident.
    let hid = c
        .get(
            &format!("/api/v1/incidents/{}/publications", hidden[0]),
            &v_tok,
        )
        .await;
    let none = c
        .get(
            "/api/v1/incidents/00000000-0000-0000-0000-000000000000/publications",
            &v_tok,
        )
        .await;
    assert_eq!(hid.status, StatusCode::NOT_FOUND);
    assert_eq!(
        (hid.status, hid.bytes.clone()),
        (none.status, none.bytes.clone())
    );
    // ...and listed for Kursiv, and for Vlast on a shared incident.
    let mine = c
        .get(
            &format!("/api/v1/incidents/{}/publications", hidden[0]),
            &k_tok,
        )
        .await;
    assert_eq!(mine.status, StatusCode::OK);
    assert!(!mine.json()["publications"].as_array().unwrap().is_empty());
    let sh = c
        .get(
            &format!("/api/v1/incidents/{}/publications", shared[0]),
            &v_tok,
        )
        .await;
    assert_eq!(sh.status, StatusCode::OK);
    c.db().close().await;
}

// ---------------------------------------------------------------------------------------------
// The feed poller, against a real HTTP server on port 0.

#[derive(Default)]
struct Served {
    rss: AtomicUsize,
    rss_conditional: AtomicUsize,
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/testdata/feeds")
            .join(name),
    )
    .unwrap()
}

async fn rss(State(s): State<Arc<Served>>, h: HeaderMap) -> axum::response::Response {
    s.rss.fetch_add(1, Ordering::SeqCst);
    if h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some("\"v1\"") {
        s.rss_conditional.fetch_add(1, Ordering::SeqCst);
        return AxStatus::NOT_MODIFIED.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/rss+xml"),
            (header::ETAG, "\"v1\""),
        ],
        fixture("rss2.xml"),
    )
        .into_response()
}

/// A local origin: RSS (with ETag and 304), Atom, malformed XML, an HTML page, a body over the
/// cap (declared, and chunked without a length), redirects (good, looping, to `file:`).
async fn origin() -> (String, Arc<Served>) {
    use axum::routing::get;
    let served = Arc::new(Served::default());
    let big = vec![b' '; feeds::MAX_FEED_BYTES + 10];
    let app = axum::Router::new()
        .route("/rss.xml", get(rss))
        .route(
            "/atom.xml",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/atom+xml")],
                    fixture("atom.xml"),
                )
            }),
        )
        .route("/bad.xml", get(|| async { fixture("malformed.xml") }))
        .route(
            "/page.html",
            get(|| async { "<html><body>Not a feed</body></html>" }),
        )
        .route("/big.xml", get(move || async move { big.clone() }))
        .route(
            "/chunked.xml",
            get(|| async {
                axum::body::Body::new(Chunks {
                    left: feeds::MAX_FEED_BYTES / (64 * 1024) + 4,
                })
            }),
        )
        .route(
            "/moved",
            get(|| async { (AxStatus::FOUND, [(header::LOCATION, "/rss.xml")]) }),
        )
        .route(
            "/loop",
            get(|| async { (AxStatus::FOUND, [(header::LOCATION, "/loop")]) }),
        )
        .route(
            "/to-file",
            get(|| async { (AxStatus::FOUND, [(header::LOCATION, "file:///etc/passwd")]) }),
        )
        .route("/gone", get(|| async { AxStatus::GONE }))
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), served)
}

/// A body with no declared length, streamed in 64 KiB pieces (chunked on the wire).
struct Chunks {
    left: usize,
}

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from(
            vec![b' '; 64 * 1024],
        )))))
    }
}

async fn feeds_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let k = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let v = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let admin = actor(k.id, Role::Admin, "user:admin");
    let editor = actor(k.id, Role::Editor, "user:ed");
    let v_admin = actor(v.id, Role::Admin, "user:vadmin");
    let (base, served) = origin().await;
    let cfg = PollConfig {
        interval: Duration::from_secs(900),
        tick: Duration::from_millis(50),
        // The test's feed server is on loopback.
        allow_private: true,
    };
    let add = |url: String| FeedIn { url };
    // Only admins add; only http(s).
    assert!(matches!(
        db.add_feed(&editor, &add(format!("{base}/rss.xml"))).await,
        Err(qalqan_atlas::Error::Forbidden)
    ));
    for bad in [
        "file:///etc/passwd",
        "ftp://x.kz/rss",
        "http://u:p@x.kz/",
        "gopher://x",
    ] {
        assert!(
            matches!(
                db.add_feed(&admin, &add(bad.into())).await,
                Err(qalqan_atlas::Error::Invalid(_))
            ),
            "{bad}"
        );
    }
    let mut ids = std::collections::HashMap::new();
    for path in [
        "rss.xml",
        "bad.xml",
        "page.html",
        "big.xml",
        "chunked.xml",
        "moved",
        "loop",
        "to-file",
        "gone",
    ] {
        let f = db
            .add_feed(&admin, &add(format!("{base}/{path}")))
            .await
            .unwrap();
        assert!(f.last_poll.is_none());
        ids.insert(path, f.id);
    }
    assert!(matches!(
        db.add_feed(&admin, &add(format!("{base}/rss.xml"))).await,
        Err(qalqan_atlas::Error::Conflict(_))
    ));
    let atom = db
        .add_feed(&v_admin, &add(format!("{base}/atom.xml")))
        .await
        .unwrap();
    // A publication entered by hand before the feed brings the same article.
    let manual: qalqan_atlas::store::PublicationIn = serde_json::from_value(json!({
        "url": "https://kursiv.example/news/2025/03/tenge",
        "title": "Ручная запись",
        "published_at": "2025-03-02T18:05:00Z",
        "tags": ["Ручной"],
        "summary": "<p>Курс &laquo;тенге&raquo;\n по данным KASE</p>",
    }))
    .unwrap();
    let stored = db.add_publication(&editor, &manual).await.unwrap();
    assert_eq!(stored.summary, "Курс «тенге» по данным KASE");
    // A summary is bounded and free of control characters; absent, it is empty.
    for bad in [json!("x".repeat(100_001)), json!("a\u{0007}b"), json!(17)] {
        let v = json!({"url": "https://kursiv.example/x", "title": "x",
                       "published_at": "2025-03-02T18:05:00Z", "summary": bad});
        // Not a string: refused by the parser already (400 through the API).
        if let Ok(p) = serde_json::from_value::<qalqan_atlas::store::PublicationIn>(v) {
            assert!(matches!(
                db.add_publication(&editor, &p).await,
                Err(qalqan_atlas::Error::Invalid(_))
            ));
        }
    }
    let long: qalqan_atlas::store::PublicationIn = serde_json::from_value(json!({
        "url": "https://kursiv.example/long", "title": "Длинный лид",
        "published_at": "2025-03-01T10:00:00Z", "summary": "слово ".repeat(5_000),
    }))
    .unwrap();
    // (At an outlet of its own, so the feed's figures below stay as they are.)
    let dala = db.create_outlet("dala", "Дала", "cli").await.unwrap();
    let dala_ed = actor(dala.id, Role::Editor, "user:dala");
    let long = db.add_publication(&dala_ed, &long).await.unwrap();
    assert_eq!(long.summary.chars().count(), feeds::MAX_SUMMARY);
    // One round polls all ten.
    let now = qalqan_atlas::model::now_ms();
    assert_eq!(feeds::poll_due(&db, &cfg, now).await.unwrap(), 10);
    let status = |list: &[feeds::Feed], id: i64| list.iter().find(|f| f.id == id).unwrap().clone();
    let mine = db.feeds(&editor).await.unwrap();
    assert_eq!(mine.len(), 9, "another outlet's feed is not listed");
    let rss_row = status(&mine, ids["rss.xml"]);
    assert_eq!(rss_row.last_error, "");
    assert_eq!(rss_row.last_added, 2, "{rss_row:?}");
    assert!(rss_row.last_ok.is_some() && rss_row.next_poll.is_some());
    let err = |p: &str| status(&mine, ids[p]).last_error;
    assert!(
        err("bad.xml").starts_with("not a readable RSS or Atom feed"),
        "{}",
        err("bad.xml")
    );
    assert!(
        err("page.html").starts_with("not a readable RSS or Atom feed"),
        "{}",
        err("page.html")
    );
    assert!(
        err("big.xml").contains("larger than 5 MB"),
        "{}",
        err("big.xml")
    );
    assert!(
        err("chunked.xml").contains("larger than 5 MB"),
        "{}",
        err("chunked.xml")
    );
    assert_eq!(
        status(&mine, ids["moved"]).last_error,
        "",
        "redirect followed"
    );
    assert!(err("loop").contains("redirects"), "{}", err("loop"));
    assert!(err("to-file").contains("scheme"), "{}", err("to-file"));
    assert!(err("gone").contains("410"), "{}", err("gone"));
    for e in ["bad.xml", "big.xml", "loop"] {
        assert!(status(&mine, ids[e]).last_ok.is_none());
    }
    // What the RSS feed stored: three usable items (no http link: skipped; no title: skipped),
    // URLs normalised like manual entries (so the hand-entered one is left as it was, and
    // `/moved` added nothing new), tags lower case, the undated item dated at the poll.
    let ed_read = actor(k.id, Role::Viewer, "v");
    let pubs = db
        .publications(&ed_read, Some("kursiv"), 0, i64::MAX)
        .await
        .unwrap();
    let mut got: Vec<(String, String, Vec<String>)> = pubs
        .iter()
        .map(|p| (p.url.clone(), p.title.clone(), p.tags.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "https://kursiv.example/news/2025/03/saylau".to_string(),
                "Сайлау: ОСК тіркеуді аяқтады".to_string(),
                vec!["сайлау".to_string(), "политика".to_string()]
            ),
            (
                "https://kursiv.example/news/2025/03/tenge".to_string(),
                "Ручная запись".to_string(),
                vec!["ручной".to_string()]
            ),
            (
                "https://kursiv.example/news/review".to_string(),
                "Без даты: обзор прессы".to_string(),
                vec![]
            ),
        ]
    );
    let saylau = pubs.iter().find(|p| p.url.ends_with("saylau")).unwrap();
    assert_eq!(saylau.published_at, "2025-03-03T04:30:00.000Z");
    // The item's description, stored as plain text; the hand-entered summary kept.
    assert_eq!(saylau.summary, "Орталық сайлау комиссиясы…");
    let tenge = pubs.iter().find(|p| p.url.ends_with("tenge")).unwrap();
    assert_eq!(tenge.summary, "Курс «тенге» по данным KASE");
    let review = pubs.iter().find(|p| p.url.ends_with("review")).unwrap();
    assert!(parse_time(&review.published_at).unwrap() >= now);
    // Atom: Vlast's publications, the published date preferred, HTML title made plain.
    let vp = db
        .publications(&ed_read, Some("vlast"), 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(vp.len(), 2);
    let el = vp.iter().find(|p| p.url.contains("elections")).unwrap();
    assert_eq!(el.published_at, "2025-03-04T03:00:00.000Z");
    assert_eq!(el.tags, ["elections"]);
    assert!(vp.iter().any(|p| p.title == "Бюджет 2026"));
    assert!(db.feeds(&v_admin).await.unwrap()[0].id == atom.id);
    // Nothing is due right after; 20 minutes later everything is, and the RSS answer is a
    // 304 (the server saw our ETag) that adds nothing and keeps the feed healthy.
    assert_eq!(feeds::poll_due(&db, &cfg, now + 1000).await.unwrap(), 0);
    let before = served.rss_conditional.load(Ordering::SeqCst);
    assert_eq!(
        feeds::poll_due(&db, &cfg, now + 20 * 60_000).await.unwrap(),
        10
    );
    // /rss.xml and /moved both reach the RSS handler with the validators of their own row:
    // the direct feed sends its ETag; so does the redirected one after its first success.
    assert_eq!(served.rss_conditional.load(Ordering::SeqCst), before + 2);
    let again = db.feeds(&editor).await.unwrap();
    let rss_row = status(&again, ids["rss.xml"]);
    assert_eq!((rss_row.last_error.as_str(), rss_row.last_added), ("", 0));
    assert_eq!(
        db.publications(&ed_read, Some("kursiv"), 0, i64::MAX)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(served.rss.load(Ordering::SeqCst) >= 4);
    // Removing: admins of the outlet only; another outlet's feed is "not found".
    assert!(matches!(
        db.remove_feed(&editor, ids["gone"]).await,
        Err(qalqan_atlas::Error::Forbidden)
    ));
    assert!(matches!(
        db.remove_feed(&v_admin, ids["gone"]).await,
        Err(qalqan_atlas::Error::NotFound)
    ));
    db.remove_feed(&admin, ids["gone"]).await.unwrap();
    assert_eq!(db.feeds(&editor).await.unwrap().len(), 8);
    // The background loop polls on its own.
    let looped = db
        .add_feed(&v_admin, &add(format!("{base}/rss.xml")))
        .await
        .unwrap();
    let task = tokio::spawn(feeds::poll_loop(db.clone(), cfg.clone()));
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let f = db.feeds(&v_admin).await.unwrap();
        if f.iter().any(|f| f.id == looped.id && f.last_ok.is_some()) {
            ok = true;
            break;
        }
    }
    task.abort();
    assert!(ok, "the loop polled the new feed");
    db.close().await;
}

// ---------------------------------------------------------------------------------------------
// The API and the dashboard (SQLite).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_api_and_pages() {
    let t = TestDb::new(Kind::Sqlite).await.unwrap();
    let db = t.connect().await;
    let k = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let pw = "correct horse battery";
    db.create_user(None, k.id, "admin@kursiv.kz", "Админ", pw, Role::Admin)
        .await
        .unwrap();
    let admin = Auth::Bearer(db.create_token(None, k.id, "a", Role::Admin).await.unwrap());
    let viewer = Auth::Bearer(
        db.create_token(None, k.id, "v", Role::Viewer)
            .await
            .unwrap(),
    );
    let h = history(46, 180, ATTACKS, true, "kursiv");
    load(&db, k.id, &h).await;
    let ed = actor(k.id, Role::Editor, "e");
    let mut first_incident = String::new();
    for (n, s) in h.attacks.iter().enumerate() {
        let i = db
            .create_incident(&ed, &incident_in(&format!("DDoS {n}"), "green", *s))
            .await
            .unwrap();
        first_incident = i.id;
    }
    let c = Client::new(db);
    // Feeds over the API.
    let r = c
        .json(
            Method::POST,
            "/api/v1/feeds",
            &admin,
            &json!({"url": "https://kursiv.example/rss"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();
    for (auth, body, want) in [
        (
            &viewer,
            json!({"url": "https://kursiv.example/x"}),
            StatusCode::FORBIDDEN,
        ),
        (
            &admin,
            json!({"url": "file:///etc/passwd"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &admin,
            json!({"url": "https://kursiv.example/rss"}),
            StatusCode::CONFLICT,
        ),
        (&admin, json!({"url": 5}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            &admin,
            json!({"url": "https://a.kz/", "x": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let r = c.json(Method::POST, "/api/v1/feeds", auth, &body).await;
        assert_eq!(r.status, want, "{body}: {}", r.text());
    }
    let list = c.get("/api/v1/feeds", &viewer).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json()[0]["url"], "https://kursiv.example/rss");
    assert_eq!(list.json()[0]["last_poll"], Value::Null);
    let r = c
        .send(
            Method::DELETE,
            &format!("/api/v1/feeds/{id}"),
            &viewer,
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c
        .send(
            Method::DELETE,
            &format!("/api/v1/feeds/{id}"),
            &admin,
            None,
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = c
        .send(Method::DELETE, "/api/v1/feeds/abc", &admin, None, vec![])
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The provoke endpoint rejects bad parameters.
    for bad in ["window_hours=0", "from=soon", "limit=1000", "unknown=1"] {
        let r = c.get(&format!("/api/v1/provoke?{bad}"), &viewer).await;
        assert!(
            r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::BAD_REQUEST,
            "{bad}: {}",
            r.status
        );
    }
    // The dashboard: a member logs in and reads the page in Kazakh, with the topic on top, the
    // method explained, no script.
    let (session, csrf) = c.login("admin@kursiv.kz", pw).await.unwrap();
    let s = Auth::Session(session.clone(), None);
    let page = c
        .get("/provoke?from=2025-01-01&to=2025-07-01&lang=kk", &s)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let html = page.text();
    assert!(html.contains("Маңызды байланыстар"), "Kazakh heading");
    assert!(html.contains("Бенджамини"), "method explained");
    assert!(!html.contains("<script"));
    let first_term = html
        .split("<span class=\"term\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap_or("");
    assert!(
        is_provoking_term(first_term),
        "first term on the page: {first_term:?}"
    );
    let bad = c.get("/provoke?window_hours=abc&from=31.12.2024", &s).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The incident page lists the publications before the attack.
    let inc = c
        .get(&format!("/incidents/{first_incident}?lang=en"), &s)
        .await;
    assert_eq!(inc.status, StatusCode::OK);
    let html = inc.text();
    assert!(html.contains("Publications in the 72 hours before the attack"));
    assert!(
        html.contains("https://kursiv.example/news/"),
        "a publication is linked"
    );
    // Feeds in the settings: add through the form (CSRF checked), the list shows it.
    let form = format!(
        "csrf={}&url={}",
        common::enc(&csrf),
        common::enc("https://kursiv.example/atom")
    );
    let r = c
        .send(
            Method::POST,
            "/settings/feeds",
            &s,
            Some("application/x-www-form-urlencoded"),
            form.into_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let r = c
        .send(
            Method::POST,
            "/settings/feeds",
            &s,
            Some("application/x-www-form-urlencoded"),
            format!("csrf=wrong&url={}", common::enc("https://kursiv.example/x")).into_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c
        .send(
            Method::POST,
            "/settings/feeds",
            &s,
            Some("application/x-www-form-urlencoded"),
            format!("csrf={}&url=ftp%3A%2F%2Fx.kz%2F", common::enc(&csrf)).into_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let settings = c.get("/settings/feeds?lang=ru", &s).await;
    assert_eq!(settings.status, StatusCode::OK);
    let html = settings.text();
    assert!(html.contains("https://kursiv.example/atom"));
    assert!(html.contains("ещё не опрашивалась"));
    assert!(!html.contains("x.kz"));
    c.db().close().await;
}

/// Feed URLs come from outlets' admins: by default the poller refuses addresses inside the
/// atlas's own network (here, the loopback feed server), so a feed cannot be used to probe it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_on_internal_addresses_are_refused_by_default() {
    let (base, served) = origin().await;
    let url = format!("{base}/rss.xml");
    let refused = feeds::fetch(&url, "", "", false).await;
    let Err(e) = refused else {
        panic!("a loopback feed was fetched");
    };
    assert!(e.contains("internal address"), "{e}");
    assert_eq!(
        served.rss.load(Ordering::SeqCst),
        0,
        "nothing reached the server"
    );
    assert!(feeds::fetch(&url, "", "", true).await.is_ok());
    assert_eq!(
        served.rss.load(Ordering::SeqCst),
        1,
        "allowed: fetched once"
    );
}
