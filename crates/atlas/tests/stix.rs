//! STIX 2.1 export, TAXII 2.1 and STIX import through the real router (in-process), on SQLite
//! and PostgreSQL.
//!
//! The TLP matrix: outlet A ("alpha") owns ten incidents, one per TLP level × named recipients
//! (none, or B); B and C own a few. Each outlet exports its bundle and walks the TAXII collection
//! in small pages, twice: with A's need-to-know list empty, then with [B]. The incidents found
//! (and every object hanging off one: indicators, sightings, notes, reports, observables) are
//! compared with [`may_see`], the TLP 2.0 rules written here independently of the store's SQL.
//! The OASIS validator's checks run in `tests/stix/validate.py` (scripts/test.sh).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use base64::Engine;
use common::{Auth, Client, Kind, TestDb};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use qalqan_atlas::model::{IndicatorKind, Role, Tlp};
use qalqan_atlas::stix;
use serde_json::{Value, json};
use tower::ServiceExt;

both_backends! {
    tlp_matrix => matrix_story,
    import => import_story,
    taxii_protocol => taxii_story,
    export_pages => pages_story,
    export_keyset_pages => keyset_story,
}

const OUTLETS: [&str; 3] = ["alpha", "bravo", "charlie"];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const TLPS: [&str; 5] = ["clear", "green", "amber", "amber+strict", "red"];
const TAXII: &str = "application/taxii+json;version=2.1";

#[test]
fn sco_ids_are_the_spec_uuidv5() {
    // The vectors of the registry research (python `uuid5` over canonical JSON).
    assert_eq!(
        stix::sco(IndicatorKind::Ip, "198.51.100.7").unwrap().0,
        "ipv4-addr--12592121-be4c-5a93-a813-5a5af16e50db"
    );
    assert_eq!(
        stix::sco(IndicatorKind::Url, "https://outlet.example/2026/03/story")
            .unwrap()
            .0,
        "url--870a4aea-1c88-5b75-97b4-ee0411aea952"
    );
    assert_eq!(
        stix::SCO_NAMESPACE.to_string(),
        "00abedb4-aa42-466c-9c01-fed23315a9b7"
    );
    // Version 5, and stable.
    let (id, _) = stix::sco(IndicatorKind::Asn, "AS9198").unwrap();
    assert_eq!(&id[..19], "autonomous-system--");
    let u = uuid::Uuid::parse_str(&id[19..]).unwrap();
    assert_eq!(u.get_version_num(), 5);
    assert_eq!(stix::sco(IndicatorKind::Asn, "AS9198").unwrap().0, id);
}

#[test]
fn patterns_escape_quotes_and_backslashes() {
    assert_eq!(stix::quote(r"it's a \ test"), r"'it\'s a \\ test'");
    let p = |k, v| stix::pattern(k, v).unwrap();
    assert_eq!(
        p(IndicatorKind::Ip, "203.0.113.7"),
        ("[ipv4-addr:value = '203.0.113.7']".into(), "stix")
    );
    assert_eq!(
        p(IndicatorKind::Ip, "2001:db8::1").0,
        "[ipv6-addr:value = '2001:db8::1']"
    );
    assert_eq!(
        p(IndicatorKind::Cidr, "203.0.113.0/24").0,
        "[ipv4-addr:value = '203.0.113.0/24']"
    );
    assert_eq!(
        p(IndicatorKind::Asn, "AS9198").0,
        "[autonomous-system:number = 9198]"
    );
    assert_eq!(
        p(IndicatorKind::Domain, "bad.example").0,
        "[domain-name:value = 'bad.example']"
    );
    assert_eq!(
        p(IndicatorKind::Email, "o'neil@bad.example").0,
        r"[email-addr:value = 'o\'neil@bad.example']"
    );
    // URLs become URIs first (a backslash is not allowed in one), then quotes are escaped.
    assert_eq!(
        p(IndicatorKind::Url, r"https://bad.example/it's/a\b").0,
        r"[url:value = 'https://bad.example/it\'s/a%5Cb']"
    );
    assert_eq!(
        p(IndicatorKind::SocialAccount, "telegram:o'bot").0,
        r"[user-account:account_type = 'telegram' AND user-account:account_login = 'o\'bot']"
    );
    assert_eq!(
        p(IndicatorKind::UserAgent, r"Mozilla/5.0 (X'; \evil)").0,
        r"[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent' = 'Mozilla/5.0 (X\'; \\evil)']"
    );
    let (pcre, ty) = p(IndicatorKind::TextPattern, "you (will) pay.");
    assert_eq!((pcre.as_str(), ty), (r"you \(will\) pay\.", "pcre"));
}

#[test]
fn tlp_markings_are_the_oasis_objects() {
    let m = stix::marking(Tlp::AmberStrict);
    assert_eq!(
        m,
        json!({
            "type": "marking-definition", "spec_version": "2.1",
            "id": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
            "created": "2022-10-01T00:00:00.000Z", "name": "TLP:AMBER+STRICT",
            "extensions": {"extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d":
                {"extension_type": "property-extension", "tlp_2_0": "amber+strict"}}
        })
    );
    // TLP 1.0 ids are understood on import.
    assert_eq!(
        stix::tlp_of_marking("marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"),
        Some(Tlp::Red)
    );
    assert_eq!(
        stix::tlp_of_marking("marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"),
        Some(Tlp::Clear)
    );
}

#[derive(Debug, Clone)]
struct Inc {
    id: String,
    owner: usize,
    tlp: &'static str,
    recipients: Vec<usize>,
    /// An address only this incident reports.
    ip: String,
}

fn may_see(viewer: usize, inc: &Inc, ntk: bool) -> bool {
    if viewer == inc.owner {
        return true;
    }
    match inc.tlp {
        "clear" | "green" => true,
        "amber" => (ntk && inc.owner == A && viewer == B) || inc.recipients.contains(&viewer),
        "amber+strict" => false,
        "red" => inc.recipients.contains(&viewer),
        other => panic!("unknown tlp {other}"),
    }
}

struct World {
    client: Client,
    /// Editor tokens per outlet.
    editors: Vec<String>,
    /// Admin tokens per outlet.
    admins: Vec<String>,
    /// Ingest tokens per outlet.
    ingest: Vec<String>,
    incidents: Vec<Inc>,
}

async fn build(kind: Kind) -> Option<(TestDb, World)> {
    let t = TestDb::new(kind).await?;
    let db = t.connect().await;
    let mut editors = Vec::new();
    let mut admins = Vec::new();
    let mut ingest = Vec::new();
    for slug in OUTLETS {
        let o = db
            .create_outlet(slug, &slug.to_uppercase(), "cli")
            .await
            .unwrap();
        editors.push(
            db.create_token(None, o.id, "e", Role::Editor)
                .await
                .unwrap(),
        );
        admins.push(db.create_token(None, o.id, "a", Role::Admin).await.unwrap());
        ingest.push(
            db.create_token(None, o.id, "i", Role::Ingest)
                .await
                .unwrap(),
        );
    }
    let client = Client::new(db);
    let mut plan: Vec<(usize, &'static str, Vec<usize>)> = Vec::new();
    for tlp in TLPS {
        for r in [vec![], vec![B]] {
            plan.push((A, tlp, r));
        }
    }
    plan.push((B, "green", vec![]));
    plan.push((B, "red", vec![A]));
    plan.push((C, "amber+strict", vec![]));
    let mut incidents = Vec::new();
    for (n, (owner, tlp, recipients)) in plan.into_iter().enumerate() {
        let auth = Auth::Bearer(editors[owner].clone());
        let r: Vec<&str> = recipients.iter().map(|i| OUTLETS[*i]).collect();
        let a = client
            .json(
                Method::POST,
                "/api/v1/incidents",
                &auth,
                &json!({"kind": "http_flood", "title": format!("incident {n}"), "tlp": tlp,
                        "started_at": "2026-03-01T10:00:00Z", "recipients": r}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
        let id = a.json()["id"].as_str().unwrap().to_string();
        let ip = format!("198.51.100.{}", n + 1);
        let s = client
            .json(
                Method::POST,
                &format!("/api/v1/incidents/{id}/indicators"),
                &auth,
                &json!([{"kind": "ip", "value": ip, "count": 10},
                        {"kind": "ip", "value": "203.0.113.250", "count": 1},
                        {"kind": "user_agent", "value": format!("bot {n}")}]),
            )
            .await;
        assert_eq!(s.status, StatusCode::CREATED, "{}", s.text());
        let u = client
            .json(
                Method::POST,
                &format!("/api/v1/incidents/{id}/updates"),
                &auth,
                &json!({"body": format!("note {n}")}),
            )
            .await;
        assert_eq!(u.status, StatusCode::CREATED, "{}", u.text());
        incidents.push(Inc {
            id,
            owner,
            tlp,
            recipients,
            ip,
        });
    }
    Some((
        t,
        World {
            client,
            editors,
            admins,
            ingest,
            incidents,
        },
    ))
}

/// Sends a request with any headers through the real router.
async fn raw(
    c: &Client,
    method: Method,
    uri: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let mut req = b.body(Body::from(body)).unwrap();
    let peer: std::net::SocketAddr = common::PEER.parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let resp = c.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let h = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, h, bytes)
}

fn bearer(t: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {t}"))
}

fn basic(user: &str, pass: &str) -> (&'static str, String) {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    ("authorization", format!("Basic {b}"))
}

fn accept() -> (&'static str, String) {
    ("accept", TAXII.to_string())
}

/// The bundle of an outlet, checked for the bundle-level rules.
async fn bundle(w: &World, outlet: usize, query: &str) -> Vec<Value> {
    let a = w
        .client
        .get(
            &format!("/api/v1/stix/bundle{query}"),
            &Auth::Bearer(w.editors[outlet].clone()),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(
        a.header("content-type"),
        Some("application/stix+json;version=2.1")
    );
    let b = a.json();
    assert_eq!(b["type"], "bundle");
    assert!(
        b.get("spec_version").is_none(),
        "no spec_version on a 2.1 bundle"
    );
    let objects = b
        .get("objects")
        .map(|o| o.as_array().unwrap().clone())
        .unwrap_or_default();
    if b.get("objects").is_some() {
        assert!(!objects.is_empty(), "an objects list is never empty");
    }
    check_refs(&objects);
    objects
}

/// Every reference resolves inside the set, every id is well formed, domain objects carry
/// exactly one TLP marking, and ids are unique.
fn check_refs(objects: &[Value]) {
    let ids: BTreeSet<&str> = objects.iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), objects.len(), "duplicate ids");
    for o in objects {
        let id = o["id"].as_str().unwrap();
        let (ty, u) = id.split_once("--").unwrap();
        assert_eq!(ty, o["type"].as_str().unwrap());
        let u = uuid::Uuid::parse_str(u).unwrap();
        let sco = stix::sco_types().contains(&ty);
        assert_eq!(u.get_version_num(), if sco { 5 } else { 4 }, "{id}");
        if ty != "marking-definition" {
            assert_eq!(
                o["object_marking_refs"].as_array().map(Vec::len),
                Some(1),
                "{id}: one TLP marking"
            );
        }
        let mut refs: Vec<&str> = Vec::new();
        if let Some(m) = o.as_object() {
            for (k, v) in m {
                if k.ends_with("_ref") {
                    refs.push(v.as_str().unwrap());
                } else if k.ends_with("_refs") {
                    refs.extend(v.as_array().unwrap().iter().map(|x| x.as_str().unwrap()));
                }
            }
        }
        for r in refs {
            assert!(ids.contains(r), "{id} refers to {r}, not in the set");
        }
    }
}

/// The incident UUIDs among the objects, and the incident each dependent object belongs to.
fn incidents_in(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .filter(|o| o["type"] == "incident")
        .map(|o| o["id"].as_str().unwrap()["incident--".len()..].to_string())
        .collect()
}

/// Walks the TAXII collection with `limit`, following `next`; returns the objects.
async fn walk(w: &World, auth: (&'static str, String), limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    let base = format!(
        "/taxii2/api/collections/{}/objects/?limit={limit}",
        qalqan_atlas::taxii::COLLECTION_ID
    );
    for _ in 0..10_000 {
        let uri = match &next {
            Some(n) => format!("{base}&next={n}"),
            None => base.clone(),
        };
        let (st, h, body) = raw(
            &w.client,
            Method::GET,
            &uri,
            &[auth.clone(), accept()],
            Vec::new(),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(h.get("content-type").unwrap(), TAXII);
        let env: Value = serde_json::from_slice(&body).unwrap();
        let page = env["objects"].as_array().cloned().unwrap_or_default();
        let more = env["more"].as_bool().unwrap();
        if more {
            assert_eq!(page.len(), limit, "a page with more after it is full");
        }
        if !page.is_empty() {
            assert!(h.get("x-taxii-date-added-first").is_some());
            assert!(h.get("x-taxii-date-added-last").is_some());
        }
        out.extend(page);
        if !more {
            return out;
        }
        next = Some(env["next"].as_str().unwrap().to_string());
    }
    panic!("TAXII paging does not end");
}

async fn matrix_story(kind: Kind) {
    let Some((_t, w)) = build(kind).await else {
        return;
    };
    for ntk in [false, true] {
        let peers = if ntk { json!(["bravo"]) } else { json!([]) };
        let r = w
            .client
            .json(
                Method::PUT,
                "/api/v1/outlet/settings",
                &Auth::Bearer(w.admins[A].clone()),
                &json!({"auto_tlp": "amber", "need_to_know": peers}),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
        for viewer in [A, B, C] {
            let want: BTreeSet<String> = w
                .incidents
                .iter()
                .filter(|i| may_see(viewer, i, ntk))
                .map(|i| i.id.clone())
                .collect();
            let hidden: Vec<&Inc> = w
                .incidents
                .iter()
                .filter(|i| !may_see(viewer, i, ntk))
                .collect();
            let ctx = format!("{kind:?} viewer={} ntk={ntk}", OUTLETS[viewer]);

            // The bundle.
            let objects = bundle(&w, viewer, "").await;
            assert_eq!(incidents_in(&objects), want, "{ctx}: bundle incidents");
            let text = serde_json::to_string(&objects).unwrap();
            for h in &hidden {
                // Nothing of a hidden incident: not its id, not its own address, not its note.
                assert!(
                    !text.contains(&h.id),
                    "{ctx}: bundle mentions hidden {}",
                    h.id
                );
                assert!(
                    !text.contains(&format!("'{}'", h.ip)),
                    "{ctx}: hidden address {}",
                    h.ip
                );
                assert!(
                    !text.contains(&format!("\"{}\"", h.ip)),
                    "{ctx}: hidden observable {}",
                    h.ip
                );
            }
            // The shared address is an observable once, marked with the most open level seen.
            let shared: Vec<&Value> = objects
                .iter()
                .filter(|o| o["value"] == "203.0.113.250")
                .collect();
            assert_eq!(shared.len(), 1, "{ctx}");
            let best = w
                .incidents
                .iter()
                .filter(|i| may_see(viewer, i, ntk))
                .map(|i| Tlp::parse(i.tlp).unwrap())
                .min_by_key(|t| t.rank())
                .unwrap();
            assert_eq!(shared[0]["object_marking_refs"][0], best.stix_id(), "{ctx}");
            // Each visible incident: report, note, indicators, sightings, relationships, all
            // marked with the incident's level.
            for inc in w.incidents.iter().filter(|i| may_see(viewer, i, ntk)) {
                let tlp = Tlp::parse(inc.tlp).unwrap().stix_id();
                let inc_id = format!("incident--{}", inc.id);
                let report = objects
                    .iter()
                    .find(|o| o["type"] == "report" && o["object_refs"][0] == inc_id.as_str())
                    .unwrap_or_else(|| panic!("{ctx}: no report for {inc_id}"));
                assert_eq!(report["object_marking_refs"][0], tlp);
                let rels: Vec<&Value> = objects
                    .iter()
                    .filter(|o| o["type"] == "relationship" && o["target_ref"] == inc_id.as_str())
                    .collect();
                assert_eq!(rels.len(), 3, "{ctx}: {inc_id} relationships");
                for r in rels {
                    assert_eq!(r["object_marking_refs"][0], tlp);
                }
                assert!(
                    objects
                        .iter()
                        .any(|o| o["type"] == "note" && o["object_refs"][0] == inc_id.as_str())
                );
            }

            // TAXII: the same incidents, through small pages, with Bearer and with Basic.
            let taxii = walk(&w, bearer(&w.editors[viewer]), 7).await;
            check_refs(&taxii);
            assert_eq!(incidents_in(&taxii), want, "{ctx}: TAXII incidents");
            let taxii_ids: BTreeSet<&str> =
                taxii.iter().map(|o| o["id"].as_str().unwrap()).collect();
            let bundle_ids: BTreeSet<&str> =
                objects.iter().map(|o| o["id"].as_str().unwrap()).collect();
            let extra: Vec<&&str> = taxii_ids.difference(&bundle_ids).collect();
            assert!(
                extra
                    .iter()
                    .all(|i| i.starts_with("marking-definition--") || i.starts_with("identity--")),
                "{ctx}: TAXII has more than the bundle: {extra:?}"
            );
            assert!(
                bundle_ids.is_subset(&taxii_ids),
                "{ctx}: bundle objects missing in TAXII"
            );
            let basic_walk = walk(&w, basic(OUTLETS[viewer], &w.editors[viewer]), 50).await;
            assert_eq!(basic_walk.len(), taxii.len(), "{ctx}: Basic sees the same");
            // A hidden incident is not there by id either, nor in the manifest.
            for h in &hidden {
                let (st, _, _) = raw(
                    &w.client,
                    Method::GET,
                    &format!(
                        "/taxii2/api/collections/{}/objects/incident--{}/",
                        qalqan_atlas::taxii::COLLECTION_ID,
                        h.id
                    ),
                    &[bearer(&w.editors[viewer]), accept()],
                    Vec::new(),
                )
                .await;
                assert_eq!(st, StatusCode::NOT_FOUND, "{ctx}");
            }
            let (st, _, body) = raw(
                &w.client,
                Method::GET,
                &format!(
                    "/taxii2/api/collections/{}/manifest/?limit=1000",
                    qalqan_atlas::taxii::COLLECTION_ID
                ),
                &[bearer(&w.editors[viewer]), accept()],
                Vec::new(),
            )
            .await;
            assert_eq!(st, StatusCode::OK);
            let m: Value = serde_json::from_slice(&body).unwrap();
            let mids: BTreeSet<&str> = m["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap())
                .collect();
            assert_eq!(mids, taxii_ids, "{ctx}: manifest");
        }
    }
    // Ingest tokens read nothing: 403 on export and TAXII objects.
    let a = w
        .client
        .get("/api/v1/stix/bundle", &Auth::Bearer(w.ingest[A].clone()))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let (st, _, _) = raw(
        &w.client,
        Method::GET,
        &format!(
            "/taxii2/api/collections/{}/objects/",
            qalqan_atlas::taxii::COLLECTION_ID
        ),
        &[bearer(&w.ingest[A]), accept()],
        Vec::new(),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Filters: one incident; an outlet with nothing gives a bundle without objects.
    let one = bundle(&w, A, &format!("?incident={}", w.incidents[0].id)).await;
    assert_eq!(
        incidents_in(&one),
        BTreeSet::from([w.incidents[0].id.clone()])
    );
    let none = bundle(&w, C, "?from=2030-01-01").await;
    assert!(none.is_empty());
    let hidden = w.incidents.iter().find(|i| !may_see(C, i, true)).unwrap();
    let a = w
        .client
        .get(
            &format!("/api/v1/stix/bundle?incident={}", hidden.id),
            &Auth::Bearer(w.editors[C].clone()),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = w
        .client
        .get(
            "/api/v1/stix/bundle?from=yesterday",
            &Auth::Bearer(w.editors[C].clone()),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Repeated exports give the same objects (only the bundle id differs).
    let again = bundle(&w, A, "").await;
    let first = bundle(&w, A, "").await;
    assert_eq!(again, first);
}

async fn import_story(kind: Kind) {
    let Some((_t, w)) = build(kind).await else {
        return;
    };
    let c_editor = Auth::Bearer(w.editors[C].clone());
    // A's GREEN incident, exported and imported by C: a new incident of C's, GREEN.
    let green = w
        .incidents
        .iter()
        .find(|i| i.owner == A && i.tlp == "green")
        .unwrap();
    let a = w
        .client
        .get(
            &format!("/api/v1/stix/bundle?incident={}", green.id),
            &Auth::Bearer(w.editors[A].clone()),
        )
        .await;
    let exported = a.bytes.clone();
    let r = w
        .client
        .send(
            Method::POST,
            "/api/v1/stix/import",
            &c_editor,
            Some("application/json"),
            exported.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let out = r.json();
    assert_eq!(out["tlp"], "green");
    // Two addresses; the user agent comes back too.
    assert_eq!(out["sightings"], 3, "{out}");
    let new_id = out["incident"].as_str().unwrap().to_string();
    let s = w
        .client
        .get(&format!("/api/v1/incidents/{new_id}/indicators"), &c_editor)
        .await;
    let values: BTreeSet<String> = s
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["value"].as_str().unwrap().to_string())
        .collect();
    assert!(values.contains(&green.ip), "{values:?}");
    assert!(values.contains("203.0.113.250"));
    let ten = s
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["value"] == green.ip.as_str())
        .unwrap()["count"]
        .clone();
    assert_eq!(ten, 10);
    // Again: the same incident, counts set not added.
    let r = w
        .client
        .send(
            Method::POST,
            "/api/v1/stix/import",
            &c_editor,
            Some("application/json"),
            exported,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["incident"], new_id.as_str());
    let s = w
        .client
        .get(&format!("/api/v1/incidents/{new_id}/indicators"), &c_editor)
        .await;
    let ten = s
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["value"] == green.ip.as_str())
        .unwrap()["count"]
        .clone();
    assert_eq!(ten, 10);

    // A partner's bundle with TLP 1.0 AMBER on one object and TLP 2.0 GREEN on another: AMBER.
    let partner = json!({"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d", "objects": [
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
         "created": "2026-03-01T10:00:00.000Z", "modified": "2026-03-01T10:00:00.000Z",
         "pattern": "[domain-name:value = 'Evil.Example.']", "pattern_type": "stix",
         "valid_from": "2026-03-01T10:00:00Z",
         "object_marking_refs": ["marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"]},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--9e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
         "created": "2026-03-01T10:00:00.000Z", "modified": "2026-03-01T10:00:00.000Z",
         "pattern": "[process:name = 'x.exe']", "pattern_type": "stix", "valid_from": "2026-03-01T10:00:00Z",
         "object_marking_refs": ["marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"]},
        {"type": "sighting", "spec_version": "2.1", "id": "sighting--ae2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
         "created": "2026-03-01T10:00:00.000Z", "modified": "2026-03-01T10:00:00.000Z",
         "sighting_of_ref": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", "count": 41,
         "first_seen": "2026-03-01T09:00:00Z", "last_seen": "2026-03-01T09:10:00Z"},
        {"type": "observed-data", "spec_version": "2.1", "id": "observed-data--be2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
         "created": "2026-03-01T10:00:00.000Z", "modified": "2026-03-01T10:00:00.000Z",
         "first_observed": "2026-03-01T09:00:00Z", "last_observed": "2026-03-01T09:00:00Z", "number_observed": 5,
         "object_refs": ["ipv4-addr--12592121-be4c-5a93-a813-5a5af16e50db"]},
        {"type": "ipv4-addr", "id": "ipv4-addr--12592121-be4c-5a93-a813-5a5af16e50db", "value": "198.51.100.77"},
    ]});
    let r = w
        .client
        .json(Method::POST, "/api/v1/stix/import", &c_editor, &partner)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let out = r.json();
    assert_eq!(out["tlp"], "amber", "{out}");
    assert_eq!(out["sightings"], 2, "{out}");
    assert_eq!(out["skipped_count"], 1);
    assert_eq!(out["skipped"][0]["index"], 1);
    let id = out["incident"].as_str().unwrap();
    let s = w
        .client
        .get(&format!("/api/v1/incidents/{id}/indicators"), &c_editor)
        .await;
    let got: BTreeMap<String, i64> = s
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["value"].as_str().unwrap().to_string(),
                x["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        BTreeMap::from([("evil.example".into(), 41), ("198.51.100.77".into(), 5)])
    );

    // Into a named incident of another outlet: refused; of one's own: its TLP tightens.
    let b_inc = w
        .incidents
        .iter()
        .find(|i| i.owner == B && i.tlp == "green")
        .unwrap();
    let r = w
        .client
        .json(
            Method::POST,
            &format!("/api/v1/stix/import?incident={}", b_inc.id),
            &c_editor,
            &partner,
        )
        .await;
    assert!(
        matches!(r.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
        "{}",
        r.status
    );
    let r = w
        .client
        .json(
            Method::POST,
            &format!("/api/v1/stix/import?incident={}", b_inc.id),
            &Auth::Bearer(w.editors[B].clone()),
            &partner,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["tlp"], "amber");
    let i = w
        .client
        .get(
            &format!("/api/v1/incidents/{}", b_inc.id),
            &Auth::Bearer(w.editors[B].clone()),
        )
        .await;
    assert_eq!(i.json()["tlp"], "amber");

    // Invalid bundles: 422 naming the object and the reason.
    for (bad, field) in [
        (
            json!({"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
                "objects": [{"type": "indicator", "id": "indicator--not-a-uuid", "pattern": "[x:y = 'z']",
                             "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z"}]}),
            "objects[0].id",
        ),
        (
            json!({"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
                "objects": [{"type": "ipv4-addr", "id": "ipv4-addr--12592121-be4c-5a93-a813-5a5af16e50db", "value": "1.2.3.4"},
                            {"type": "sighting", "id": "sighting--ae2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
                             "sighting_of_ref": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f", "count": -1}]}),
            "objects[1].count",
        ),
        (
            json!({"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
                "objects": [{"type": "indicator", "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
                             "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z"}]}),
            "objects[0].pattern",
        ),
        (
            json!({"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d",
                "objects": [{"type": "observed-data", "id": "observed-data--be2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
                             "first_observed": "2026-03-01T09:00:00Z", "last_observed": "2026-03-01T08:00:00Z",
                             "number_observed": 1}]}),
            "objects[0].last_observed",
        ),
        (
            json!({"type": "report", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d"}),
            "type",
        ),
        (
            json!({"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d", "objects": [7]}),
            "objects[0]",
        ),
    ] {
        let r = w
            .client
            .json(Method::POST, "/api/v1/stix/import", &c_editor, &bad)
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.text()
        );
        let fields: Vec<String> = r.json()["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap().to_string())
            .collect();
        assert!(fields.contains(&field.to_string()), "{bad}: {fields:?}");
    }
    let r = w
        .client
        .send(
            Method::POST,
            "/api/v1/stix/import",
            &c_editor,
            Some("application/json"),
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Viewers and ingest tokens may not import.
    let r = w
        .client
        .json(
            Method::POST,
            "/api/v1/stix/import",
            &Auth::Bearer(w.ingest[C].clone()),
            &partner,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Too large: refused before parsing.
    let big = vec![b' '; qalqan_atlas::stix_import::MAX_BUNDLE_BYTES + 10];
    let r = w
        .client
        .send(
            Method::POST,
            "/api/v1/stix/import",
            &c_editor,
            Some("application/json"),
            big,
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

async fn taxii_story(kind: Kind) {
    let Some((_t, w)) = build(kind).await else {
        return;
    };
    let col = format!(
        "/taxii2/api/collections/{}",
        qalqan_atlas::taxii::COLLECTION_ID
    );
    let a_auth = bearer(&w.editors[A]);
    // Media types: every answer is TAXII JSON, a wrong Accept is 406.
    for path in [
        "/taxii2/".to_string(),
        "/taxii2/api/".into(),
        "/taxii2/api/collections/".into(),
        format!("{col}/"),
    ] {
        let (st, h, body) = raw(
            &w.client,
            Method::GET,
            &path,
            &[a_auth.clone(), accept()],
            Vec::new(),
        )
        .await;
        assert_eq!(
            st,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(h.get("content-type").unwrap(), TAXII, "{path}");
        let (st, h, _) = raw(
            &w.client,
            Method::GET,
            &path,
            &[a_auth.clone(), ("accept", "application/json".into())],
            Vec::new(),
        )
        .await;
        assert_eq!(st, StatusCode::NOT_ACCEPTABLE, "{path}");
        assert_eq!(h.get("content-type").unwrap(), TAXII);
        // No or wrong credentials: 401, naming both schemes.
        for bad in [
            vec![],
            vec![bearer("qat_nope")],
            vec![basic("bravo", &w.editors[A])],
            vec![basic("alpha", "x")],
        ] {
            let mut hs = bad.clone();
            hs.push(accept());
            let (st, h, body) = raw(&w.client, Method::GET, &path, &hs, Vec::new()).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{path} {bad:?}");
            assert!(
                h.get("www-authenticate")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .contains("Basic")
            );
            let e: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(e["http_status"], "401");
        }
    }
    let (_, _, body) = raw(
        &w.client,
        Method::GET,
        "/taxii2/",
        &[a_auth.clone(), accept()],
        Vec::new(),
    )
    .await;
    let d: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(d["default"], "/taxii2/api/");
    let (_, _, body) = raw(
        &w.client,
        Method::GET,
        &format!("{col}/"),
        &[a_auth.clone(), accept()],
        Vec::new(),
    )
    .await;
    let c: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (c["can_read"].as_bool(), c["can_write"].as_bool()),
        (Some(true), Some(false))
    );
    // Filters.
    let get = |q: String| {
        let w = &w;
        let a_auth = a_auth.clone();
        let col = col.clone();
        async move {
            let (st, h, body) = raw(
                &w.client,
                Method::GET,
                &format!("{col}/objects/{q}"),
                &[a_auth, accept()],
                Vec::new(),
            )
            .await;
            (
                st,
                h,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    let (st, _, e) = get("?match[type]=indicator,sighting&limit=1000".into()).await;
    assert_eq!(st, StatusCode::OK);
    let types: BTreeSet<&str> = e["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, BTreeSet::from(["indicator", "sighting"]));
    let inc = &w.incidents[0];
    let (st, _, e) = get(format!("?match[id]=incident--{}", inc.id)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(e["objects"].as_array().unwrap().len(), 1);
    let modified = e["objects"][0]["modified"].as_str().unwrap().to_string();
    let (_, _, e) = get(format!(
        "?match[id]=incident--{}&match[version]={modified}",
        inc.id
    ))
    .await;
    assert_eq!(e["objects"].as_array().unwrap().len(), 1);
    let (_, _, e) = get(format!(
        "?match[id]=incident--{}&match[version]=2020-01-01T00:00:00.000Z",
        inc.id
    ))
    .await;
    assert!(e.get("objects").is_none(), "{e}");
    let (_, _, e) = get("?match[spec_version]=2.0".into()).await;
    assert!(e.get("objects").is_none());
    for bad in [
        "?limit=0",
        "?limit=x",
        "?match[type]=Not_A_Type",
        "?match[id]=nope",
        "?next=garbage",
        "?added_after=yesterday",
        "?match[version]=soon",
        "?match[spec_version]=3.0",
        "?match[color]=red",
        "?color=red",
    ] {
        let (st, h, e) = get(bad.into()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert_eq!(h.get("content-type").unwrap(), TAXII);
    }
    // Versions of an object: its one version.
    let (st, _, body) = raw(
        &w.client,
        Method::GET,
        &format!("{col}/objects/incident--{}/versions/", inc.id),
        &[a_auth.clone(), accept()],
        Vec::new(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["versions"], json!([modified]));
    // An unknown collection: 404.
    let (st, _, _) = raw(
        &w.client,
        Method::GET,
        "/taxii2/api/collections/00000000-0000-4000-8000-000000000000/objects/",
        &[a_auth.clone(), accept()],
        Vec::new(),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Writing: refused until the outlet is trusted, then only for editors and admins.
    let envelope = json!({"objects": [
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
         "created": "2026-03-01T10:00:00.000Z", "modified": "2026-03-01T10:00:00.000Z",
         "pattern": "[ipv4-addr:value = '192.0.2.200']", "pattern_type": "stix", "valid_from": "2026-03-01T10:00:00Z",
         "object_marking_refs": ["marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da"]},
        {"type": "note", "spec_version": "2.1", "id": "note--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
         "created": "2026-03-01T10:00:00.000Z", "modified": "2026-03-01T10:00:00.000Z",
         "content": "x", "object_refs": ["indicator--8e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"]},
        {"type": "indicator", "spec_version": "2.1", "id": "indicator--9e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f",
         "created": "2026-03-01T10:00:00.000Z", "modified": "2026-03-01T10:00:00.000Z",
         "pattern": "x", "pattern_type": "sigma", "valid_from": "2026-03-01T10:00:00Z"},
    ]});
    let body = serde_json::to_vec(&envelope).unwrap();
    let post = |auth: (&'static str, String), ct: &str| {
        let w = &w;
        let col = col.clone();
        let body = body.clone();
        let ct = ct.to_string();
        async move {
            raw(
                &w.client,
                Method::POST,
                &format!("{col}/objects/"),
                &[auth, accept(), ("content-type", ct)],
                body,
            )
            .await
        }
    };
    let (st, _, _) = post(bearer(&w.editors[B]), TAXII).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    w.client.db().set_taxii_write("bravo", true).await.unwrap();
    let (st, _, _) = post(bearer(&w.ingest[B]), TAXII).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "ingest tokens never write");
    let (st, _, _) = post(bearer(&w.editors[B]), "application/json").await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (st, h, body) = post(basic("bravo", &w.editors[B]), TAXII).await;
    assert_eq!(
        st,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(h.get("content-type").unwrap(), TAXII);
    let s: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(s["status"], "complete");
    assert_eq!(
        (
            s["total_count"].as_i64(),
            s["success_count"].as_i64(),
            s["failure_count"].as_i64(),
            s["pending_count"].as_i64()
        ),
        (Some(3), Some(2), Some(1), Some(0))
    );
    assert_eq!(
        s["failures"][0]["id"],
        "indicator--9e2e2d2b-17d4-4cbf-938f-98ee46b3cd3f"
    );
    let sid = s["id"].as_str().unwrap();
    let (st, _, body) = raw(
        &w.client,
        Method::GET,
        &format!("/taxii2/api/status/{sid}/"),
        &[bearer(&w.editors[B]), accept()],
        Vec::new(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), s);
    // Another outlet does not see that status.
    let (st, _, _) = raw(
        &w.client,
        Method::GET,
        &format!("/taxii2/api/status/{sid}"),
        &[bearer(&w.editors[A]), accept()],
        Vec::new(),
    )
    .await;
    assert!(matches!(st, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND));
    // The pushed indicator is GREEN (TLP 1.0 green): A sees it.
    let (_, _, e) = get("?match[type]=indicator&limit=1000".into()).await;
    assert!(
        e["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["pattern"] == "[ipv4-addr:value = '192.0.2.200']")
    );
    // Posting the same envelope again: success, no new incident.
    let (st, _, _) = post(bearer(&w.editors[B]), TAXII).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let list = w
        .client
        .get(
            "/api/v1/incidents?limit=200",
            &Auth::Bearer(w.editors[B].clone()),
        )
        .await;
    let stix_made = list.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["outlet"] == "bravo")
        .count();
    assert_eq!(stix_made, 3, "two of bravo's own plus one from TAXII");
    // Invalid envelope: 422 with the object named.
    let bad =
        serde_json::to_vec(&json!({"objects": [{"type": "indicator", "id": "indicator--x"}]}))
            .unwrap();
    let (st, _, body) = raw(
        &w.client,
        Method::POST,
        &format!("{col}/objects/"),
        &[
            bearer(&w.editors[B]),
            accept(),
            ("content-type", TAXII.into()),
        ],
        bad,
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(String::from_utf8_lossy(&body).contains("objects[0].id"));
    // Too large: 413.
    let big = vec![b' '; qalqan_atlas::stix_import::MAX_BUNDLE_BYTES + 10];
    let (st, _, _) = raw(
        &w.client,
        Method::POST,
        &format!("{col}/objects/"),
        &[
            bearer(&w.editors[B]),
            accept(),
            ("content-type", TAXII.into()),
        ],
        big,
    )
    .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
    // Trust taken away: read only again.
    w.client.db().set_taxii_write("bravo", false).await.unwrap();
    let (st, _, _) = post(bearer(&w.editors[B]), TAXII).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

/// More indicators than one database page of the export (500): every observable comes out
/// exactly once, only those sighted inside the time filter when one is given, and an address
/// shared by a filtered-out incident is still exported when an incident inside the filter saw it.
async fn pages_story(kind: Kind) {
    let Some((_t, w)) = build(kind).await else {
        return;
    };
    let auth = Auth::Bearer(w.editors[B].clone());
    let mut made = Vec::new();
    for (day, n) in [("2026-05-01", 1200usize), ("2026-06-01", 700)] {
        let a = w
            .client
            .json(
                Method::POST,
                "/api/v1/incidents",
                &auth,
                &json!({"kind": "http_flood", "title": format!("flood {day}"), "tlp": "green",
                        "started_at": format!("{day}T10:00:00Z")}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
        let id = a.json()["id"].as_str().unwrap().to_string();
        // The June flood's addresses overlap the May flood's last 200.
        let first = if day == "2026-05-01" { 0 } else { 1000 };
        let ips: Vec<Value> = (first..first + n)
            .map(|k| json!({"kind": "ip", "value": format!("10.{}.{}.{}", k / 65536, (k / 256) % 256, k % 256), "count": 3}))
            .collect();
        for chunk in ips.chunks(400) {
            let s = w
                .client
                .json(
                    Method::POST,
                    &format!("/api/v1/incidents/{id}/indicators"),
                    &auth,
                    &Value::Array(chunk.to_vec()),
                )
                .await;
            assert_eq!(s.status, StatusCode::CREATED, "{}", s.text());
        }
        made.push(id);
    }
    let addrs = |objects: &[Value]| -> BTreeSet<String> {
        let v: Vec<String> = objects
            .iter()
            .filter(|o| o["type"] == "ipv4-addr" && o["value"].as_str().unwrap().starts_with("10."))
            .map(|o| o["value"].as_str().unwrap().to_string())
            .collect();
        let set: BTreeSet<String> = v.iter().cloned().collect();
        assert_eq!(set.len(), v.len(), "an observable came out twice");
        set
    };
    let all = addrs(&bundle(&w, B, "").await);
    assert_eq!(all.len(), 1700, "1,200 + 700 addresses, 200 of them shared");
    let may = addrs(&bundle(&w, B, "?from=2026-04-01&to=2026-05-15").await);
    assert_eq!(may.len(), 1200);
    let june = addrs(&bundle(&w, B, "?from=2026-05-15&to=2026-07-01").await);
    assert_eq!(june.len(), 700);
    assert_eq!(may.intersection(&june).count(), 200);
}

/// The export pages notes and sightings by (incident, key) inside the selected incidents' row-id
/// span: rows across page boundaries (500 rows; 100 incidents), inside one incident and across
/// incidents, with an invisible incident's rows in between and sightings added to an earlier
/// incident after a later one's, come out exactly once, and nothing of the invisible incident
/// leaks.
async fn keyset_story(kind: Kind) {
    let Some((_t, w)) = build(kind).await else {
        return;
    };
    let ip = |set: u32, k: u32| format!("10.{set}.{}.{}", k / 256, k % 256);
    let create = |owner: usize, title: String, tlp: &'static str, day: &'static str| {
        let client = &w.client;
        let auth = Auth::Bearer(w.editors[owner].clone());
        async move {
            let a = client
                .json(
                    Method::POST,
                    "/api/v1/incidents",
                    &auth,
                    &json!({"kind": "http_flood", "title": title, "tlp": tlp,
                            "started_at": format!("{day}T10:00:00Z")}),
                )
                .await;
            assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
            a.json()["id"].as_str().unwrap().to_string()
        }
    };
    let add = |owner: usize, id: String, ips: Vec<String>| {
        let client = &w.client;
        let auth = Auth::Bearer(w.editors[owner].clone());
        async move {
            for chunk in ips.chunks(400) {
                let body: Vec<Value> = chunk
                    .iter()
                    .map(|v| json!({"kind": "ip", "value": v, "count": 2}))
                    .collect();
                let s = client
                    .json(
                        Method::POST,
                        &format!("/api/v1/incidents/{id}/indicators"),
                        &auth,
                        &Value::Array(body),
                    )
                    .await;
                assert_eq!(s.status, StatusCode::CREATED, "{}", s.text());
            }
        }
    };
    // Bravo's big incident, alpha's RED one (bravo may not see it), bravo's second incident
    // (its first 50 addresses are the big one's), then more addresses for the big one.
    let big = create(B, "big".into(), "green", "2026-06-10").await;
    let big_ips: Vec<String> = (0..1234).map(|k| ip(1, k)).collect();
    add(B, big.clone(), big_ips.clone()).await;
    let hidden = create(A, "hidden".into(), "red", "2026-06-15").await;
    add(A, hidden.clone(), (0..600).map(|k| ip(2, k)).collect()).await;
    let second = create(B, "second".into(), "green", "2026-06-20").await;
    let second_ips: Vec<String> = (0..50)
        .map(|k| ip(1, k))
        .chain((50..300).map(|k| ip(3, k)))
        .collect();
    add(B, second.clone(), second_ips.clone()).await;
    let late: Vec<String> = (0..100).map(|k| ip(4, k)).collect();
    add(B, big.clone(), late.clone()).await;
    // 130 small incidents (more than a page of incidents), each with the same address.
    let mut small = Vec::new();
    for n in 0..130 {
        let id = create(B, format!("small {n}"), "green", "2026-07-01").await;
        add(B, id.clone(), vec!["10.9.9.9".into()]).await;
        small.push(id);
    }
    // Notes, written interleaved: 700 on the big incident, 300 on the hidden one, 450 on the
    // second.
    let db = w.client.db();
    let row = |uuid: &str| {
        let uuid = uuid.to_string();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT id FROM incidents WHERE uuid = $1")
                .bind(uuid)
                .fetch_one(&db.pool)
                .await
                .unwrap()
        }
    };
    let (big_row, hidden_row, second_row) =
        (row(&big).await, row(&hidden).await, row(&second).await);
    let mut tx = db.pool.begin().await.unwrap();
    for k in 0..700i64 {
        let mut on = vec![big_row];
        if k < 300 {
            on.push(hidden_row);
        }
        if k < 450 {
            on.push(second_row);
        }
        for inc in on {
            sqlx::query(
                "INSERT INTO incident_updates (incident_id, author, created_ms, body) VALUES ($1, 'test', $2, $3)",
            )
            .bind(inc)
            .bind(1_780_000_000_000 + k)
            .bind(format!("note {k}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        }
    }
    tx.commit().await.unwrap();
    let notes_of = |inc: i64, uuid: String| async move {
        let rows: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM incident_updates WHERE incident_id = $1 AND author = 'test'",
        )
        .bind(inc)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| stix::derived_id("note", &[&uuid, &r.to_string()]))
            .collect::<BTreeSet<String>>()
    };
    let sightings_of = |uuid: &str, ips: &[String]| -> BTreeSet<String> {
        ips.iter()
            .map(|v| stix::sighting_ids(uuid, IndicatorKind::Ip, v).sighting)
            .collect()
    };
    let of_type = |objects: &[Value], ty: &str| -> Vec<String> {
        objects
            .iter()
            .filter(|o| o["type"] == ty)
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect()
    };
    let set = |v: Vec<String>| -> BTreeSet<String> {
        let s: BTreeSet<String> = v.iter().cloned().collect();
        assert_eq!(s.len(), v.len(), "an object came out twice");
        s
    };
    let big_all: Vec<String> = big_ips.iter().chain(&late).cloned().collect();
    let mut want_sightings = sightings_of(&big, &big_all);
    want_sightings.extend(sightings_of(&second, &second_ips));
    for id in &small {
        want_sightings.extend(sightings_of(id, &["10.9.9.9".to_string()]));
    }
    let mut want_notes = notes_of(big_row, big.clone()).await;
    want_notes.extend(notes_of(second_row, second.clone()).await);
    assert_eq!(want_notes.len(), 1150);

    // Bravo, over the window of the new incidents only.
    let window = "?from=2026-06-01&to=2026-08-01";
    let objects = bundle(&w, B, window).await;
    let mut want_incidents: BTreeSet<String> = small.iter().cloned().collect();
    want_incidents.extend([big.clone(), second.clone()]);
    assert_eq!(incidents_in(&objects), want_incidents);
    assert_eq!(set(of_type(&objects, "sighting")), want_sightings);
    assert_eq!(set(of_type(&objects, "note")), want_notes);
    let addrs: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["type"] == "ipv4-addr")
        .map(|o| o["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(addrs.len(), 1334 + 250 + 1, "each address once");
    let text = serde_json::to_string(&objects).unwrap();
    assert!(
        !text.contains(&hidden),
        "the RED incident of alpha leaks into bravo's export"
    );
    assert!(
        !text.contains("10.2.0.1\""),
        "an address only the hidden incident has leaks"
    );

    // Alpha sees its own RED incident too, in the middle of the span.
    let objects = bundle(&w, A, window).await;
    let hidden_sightings = sightings_of(&hidden, &(0..600).map(|k| ip(2, k)).collect::<Vec<_>>());
    let got = set(of_type(&objects, "sighting"));
    assert_eq!(got.len(), want_sightings.len() + 600);
    assert!(got.is_superset(&hidden_sightings) && got.is_superset(&want_sightings));
    let got = set(of_type(&objects, "note"));
    assert_eq!(got.len(), 1150 + 300);

    // One incident alone: every page is inside it.
    let objects = bundle(&w, B, &format!("?incident={big}")).await;
    assert_eq!(
        set(of_type(&objects, "sighting")),
        sightings_of(&big, &big_all)
    );
    assert_eq!(
        set(of_type(&objects, "note")),
        notes_of(big_row, big.clone()).await
    );
    // A window with nothing in it.
    assert!(bundle(&w, B, "?from=2030-01-01").await.is_empty());
}
