//! The TLP isolation matrix, through the HTTP API (the real router, in-process).
//!
//! Three outlets: A ("alpha") owns ten incidents, one per TLP level × named recipients (none, or
//! B); B ("bravo") may be on A's need-to-know list; C ("charlie") is named nowhere. B and C own
//! a few incidents of their own so that every list has something to hide. Every outlet calls
//! with a token of every role (viewer, editor, admin, ingest), twice: with A's need-to-know list
//! empty, then with [B]. For each caller × incident × endpoint the answer is compared with
//! [`may_see`], a small pure function of the TLP 2.0 rules written here, independently of the
//! store's SQL. The endpoints: list, get, search, incident indicators, indicator lookup (with the
//! first/last-seen dates and counts of a shared indicator, so that invisible sightings cannot
//! leak through them), attachments list, download and custody, audit, public statistics, and the
//! dashboard's list, search, incident page and download as a logged-in member of the same outlet
//! and role. Then: writes to another outlet's incident are refused for every role, a viewer
//! cannot write anything, an ingest token can only ingest.

mod common;

use std::collections::BTreeSet;

use common::{Auth, Client, Kind, TestDb, enc};
use http::{Method, StatusCode};
use qalqan_atlas::model::Role;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

both_backends! {
    matrix => matrix_story,
}

const OUTLETS: [&str; 3] = ["alpha", "bravo", "charlie"];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const ROLES: [Role; 4] = [Role::Viewer, Role::Editor, Role::Admin, Role::Ingest];
const TLPS: [&str; 5] = ["clear", "green", "amber", "amber+strict", "red"];
/// The indicator every incident reports, with a count of 2^n so that a sum names exactly the
/// incidents that were counted.
const SHARED_IP: &str = "198.51.100.7";
const PASSWORD: &str = "correct horse battery";

#[derive(Debug, Clone)]
struct Inc {
    id: String,
    owner: usize,
    tlp: &'static str,
    recipients: Vec<usize>,
    tag: String,
    domain: String,
    month: String,
    kind: &'static str,
    first_ms: i64,
    last_ms: i64,
    weight: i64,
    sha: String,
    bytes: Vec<u8>,
}

/// The oracle: may outlet `viewer` see `inc`, when `ntk` lists the (owner, peer) need-to-know
/// pairs? TLP 2.0 as the task force uses it: CLEAR and GREEN the whole task force; AMBER the
/// owner's need-to-know outlets and the named recipients; AMBER+STRICT the owner only; RED the
/// named recipients only. The owner always sees its own.
fn may_see(viewer: usize, inc: &Inc, ntk: &BTreeSet<(usize, usize)>) -> bool {
    if viewer == inc.owner {
        return true;
    }
    match inc.tlp {
        "clear" | "green" => true,
        "amber" => ntk.contains(&(inc.owner, viewer)) || inc.recipients.contains(&viewer),
        "amber+strict" => false,
        "red" => inc.recipients.contains(&viewer),
        other => panic!("unknown tlp {other}"),
    }
}

/// Whether `viewer` may see `inc` under either need-to-know setting this test uses.
fn ever_sees(viewer: usize, inc: &Inc) -> bool {
    may_see(viewer, inc, &BTreeSet::new()) || may_see(viewer, inc, &BTreeSet::from([(A, B)]))
}

/// GET routes of one incident that the matrix does not check one by one (an evidence export,
/// say): taken from the OpenAPI document, so a new endpoint joins the matrix by being
/// documented. Each must answer 2xx to those who may see the incident and 404 to the rest.
fn other_incident_routes() -> Vec<String> {
    let checked = [
        "/incidents/{id}",
        "/incidents/{id}/indicators",
        "/incidents/{id}/attachments",
        "/incidents/{id}/attachments/{sha}",
        "/incidents/{id}/attachments/{sha}/custody",
    ];
    let doc: Value = serde_json::from_str(qalqan_atlas::openapi::DOCUMENT).unwrap();
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, ops)| {
            // Only routes of an incident: `/campaigns/{id}` names a campaign (its TLP rules are
            // tested in `campaigns.rs`).
            p.starts_with("/incidents/{id}")
                && ops.get("get").is_some()
                && !checked.contains(&p.as_str())
        })
        .map(|(p, _)| p.clone())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn token_label(outlet: usize, role: Role) -> String {
    format!("{}-{}", OUTLETS[outlet], role.as_str())
}

struct World {
    client: Client,
    /// tokens[outlet][role index]
    tokens: Vec<Vec<String>>,
    /// Dashboard session secrets of a member per outlet and reader role: sessions[outlet][role]
    /// (the dashboard takes people, not tokens).
    sessions: Vec<Vec<String>>,
    incidents: Vec<Inc>,
}

impl World {
    fn auth(&self, outlet: usize, role: usize) -> Auth {
        Auth::Bearer(self.tokens[outlet][role].clone())
    }
}

async fn build(kind: Kind) -> Option<(TestDb, World)> {
    let t = TestDb::new(kind).await?;
    let db = t.connect().await;
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for slug in OUTLETS {
        let o = db
            .create_outlet(slug, &slug.to_uppercase(), "cli")
            .await
            .unwrap();
        ids.push(o.id);
        let mut ts = Vec::new();
        for r in ROLES {
            ts.push(
                db.create_token(None, o.id, &token_label(ids.len() - 1, r), r)
                    .await
                    .unwrap(),
            );
        }
        tokens.push(ts);
    }
    for (o, id) in ids.iter().enumerate() {
        for r in &ROLES[..3] {
            let email = format!("{}@{}.kz", r.as_str(), OUTLETS[o]);
            db.create_user(None, *id, &email, "Member", PASSWORD, *r)
                .await
                .unwrap();
        }
    }
    let client = Client::new(db);
    let mut sessions = Vec::new();
    for slug in OUTLETS {
        let mut ss = Vec::new();
        for r in &ROLES[..3] {
            let (secret, _csrf) = client
                .login(&format!("{}@{slug}.kz", r.as_str()), PASSWORD)
                .await
                .unwrap();
            ss.push(secret);
        }
        sessions.push(ss);
    }
    let mut world = World {
        client,
        tokens,
        sessions,
        incidents: Vec::new(),
    };
    // A's ten incidents, then a few of B's and C's.
    let mut plan: Vec<(usize, &'static str, Vec<usize>)> = Vec::new();
    for tlp in TLPS {
        for recipients in [vec![], vec![B]] {
            plan.push((A, tlp, recipients));
        }
    }
    plan.push((B, "green", vec![]));
    plan.push((B, "amber+strict", vec![]));
    plan.push((B, "red", vec![A]));
    plan.push((C, "amber", vec![]));
    plan.push((C, "clear", vec![]));
    let day = 86_400_000i64;
    let base = qalqan_atlas::model::parse_time("2023-01-01").unwrap();
    for (n, (owner, tlp, recipients)) in plan.into_iter().enumerate() {
        let tag = format!("метка{n:02}ж");
        let month = format!("20{:02}-{:02}", 10 + n / 12, n % 12 + 1);
        let kind = if n % 2 == 0 { "http_flood" } else { "phishing" };
        let editor = Auth::Bearer(world.tokens[owner][1].clone());
        let r: Vec<&str> = recipients.iter().map(|i| OUTLETS[*i]).collect();
        let created = world
            .client
            .json(
                Method::POST,
                "/api/v1/incidents",
                &editor,
                &json!({
                    "kind": kind,
                    "title": format!("Инцидент {tag} {tlp}"),
                    "description": format!("Секретные подробности {tag}"),
                    "tlp": tlp,
                    "started_at": format!("{month}-15T12:00:00Z"),
                    "recipients": r,
                }),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        let id = created.json()["id"].as_str().unwrap().to_string();
        let domain = format!("s{n:02}.evil.example");
        let first_ms = base + (n as i64) * day;
        let last_ms = base + 400 * day - (n as i64) * day;
        let weight = 1i64 << n;
        let s = world
            .client
            .json(
                Method::POST,
                &format!("/api/v1/incidents/{id}/indicators"),
                &editor,
                &json!([
                    {"kind": "domain", "value": domain, "count": 1},
                    {"kind": "ip", "value": SHARED_IP, "count": weight,
                     "first_seen": qalqan_atlas::model::format_time(first_ms),
                     "last_seen": qalqan_atlas::model::format_time(last_ms)},
                ]),
            )
            .await;
        assert_eq!(s.status, StatusCode::CREATED, "{}", s.text());
        let bytes = format!("evidence of incident {n}").into_bytes();
        let att = world
            .client
            .send(
                Method::POST,
                &format!("/api/v1/incidents/{id}/attachments?name=e{n}.txt"),
                &editor,
                Some("text/plain"),
                bytes.clone(),
            )
            .await;
        assert_eq!(att.status, StatusCode::CREATED, "{}", att.text());
        world.incidents.push(Inc {
            id,
            owner,
            tlp,
            recipients,
            tag,
            domain,
            month,
            kind,
            first_ms,
            last_ms,
            weight,
            sha: hex(&Sha256::digest(&bytes)),
            bytes,
        });
    }
    Some((t, world))
}

/// Counts checked cells and collects every disagreement with the oracle.
#[derive(Default)]
struct Tally {
    cells: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.cells += 1;
        if !ok {
            self.failures.push(what());
        }
    }
}

/// Checks what every caller sees. `full` runs every endpoint; otherwise only the list, get and
/// the shared indicator (enough to show that a change of sharing settings took effect).
async fn read_matrix(
    w: &World,
    ntk: &BTreeSet<(usize, usize)>,
    phase: &str,
    full: bool,
    t: &mut Tally,
) {
    let c = &w.client;
    let extra = other_incident_routes();
    let has_many_export = qalqan_atlas::api::ROUTES.contains(&"/evidence");
    // Public statistics: anyone, CLEAR only.
    let stats = c.get("/api/v1/public/stats", &Auth::None).await;
    assert_eq!(stats.status, StatusCode::OK);
    let stats = stats.json();
    let months: BTreeSet<(String, String)> = stats["incidents_by_kind_and_month"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["month"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for inc in &w.incidents {
        let shown = months.contains(&(inc.kind.to_string(), inc.month.clone()));
        t.check(shown == (inc.tlp == "clear"), || {
            format!(
                "{phase}: public stats show {} ({}): {shown}",
                inc.tag, inc.tlp
            )
        });
    }

    for (o, slug) in OUTLETS.iter().enumerate() {
        for (ri, role) in ROLES.iter().enumerate() {
            let auth = w.auth(o, ri);
            let who = format!("{phase}: {slug}/{}", role.as_str());
            let reader = *role != Role::Ingest;
            let visible: Vec<&Inc> = w.incidents.iter().filter(|i| may_see(o, i, ntk)).collect();

            // List.
            let list = c.get("/api/v1/incidents?limit=200", &auth).await;
            if reader {
                assert_eq!(list.status, StatusCode::OK, "{who}: list");
                let got: BTreeSet<String> = list.json()["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["id"].as_str().unwrap().to_string())
                    .collect();
                for inc in &w.incidents {
                    let want = may_see(o, inc, ntk);
                    t.check(got.contains(&inc.id) == want, || {
                        format!("{who}: list shows {} {}: {}", inc.tag, inc.tlp, !want)
                    });
                }
                t.check(got.len() == visible.len(), || {
                    format!(
                        "{who}: list has {} items, oracle {}",
                        got.len(),
                        visible.len()
                    )
                });
            } else {
                t.check(list.status == StatusCode::FORBIDDEN, || {
                    format!("{who}: list answered {}", list.status)
                });
            }

            // The indicator every incident reports: counts and dates only from visible ones.
            let shared = c
                .get(
                    &format!("/api/v1/indicators?kind=ip&value={}", enc(SHARED_IP)),
                    &auth,
                )
                .await;
            if reader {
                assert_eq!(shared.status, StatusCode::OK, "{who}: shared indicator");
                let v = shared.json();
                let want_count: i64 = visible.iter().map(|i| i.weight).sum();
                let want_first = visible.iter().map(|i| i.first_ms).min().unwrap();
                let want_last = visible.iter().map(|i| i.last_ms).max().unwrap();
                let got_count = v["count"].as_i64().unwrap();
                for inc in &w.incidents {
                    let counted = got_count & inc.weight != 0;
                    t.check(counted == may_see(o, inc, ntk), || {
                        format!("{who}: shared indicator counts {}: {counted}", inc.tag)
                    });
                }
                t.check(
                    got_count == want_count
                        && v["incidents"].as_i64() == Some(visible.len() as i64),
                    || format!("{who}: shared indicator {v}"),
                );
                t.check(
                    v["first_seen"].as_str() == Some(&qalqan_atlas::model::format_time(want_first))
                        && v["last_seen"].as_str()
                            == Some(&qalqan_atlas::model::format_time(want_last)),
                    || format!("{who}: shared indicator dates leak: {v}"),
                );
            } else {
                t.check(shared.status == StatusCode::FORBIDDEN, || {
                    format!("{who}: indicator answered {}", shared.status)
                });
            }

            // Audit: admins read their own outlet's log only.
            let audit = c.get("/api/v1/audit?limit=1000", &auth).await;
            if *role == Role::Admin {
                assert_eq!(audit.status, StatusCode::OK);
                let text = audit.text();
                for inc in &w.incidents {
                    // The owner's log records the incident; another outlet's log may record its
                    // own actions on an incident it could see (an export, say), never more.
                    let mentioned = text.contains(&inc.id) || text.contains(&inc.tag);
                    let ok = if inc.owner == o {
                        mentioned
                    } else {
                        !mentioned || ever_sees(o, inc)
                    };
                    t.check(ok, || {
                        format!("{who}: audit mentions {}: {mentioned}", inc.tag)
                    });
                }
            } else {
                t.check(audit.status == StatusCode::FORBIDDEN, || {
                    format!("{who}: audit answered {}", audit.status)
                });
            }

            // The STIX export of everything the caller may see.
            if full && qalqan_atlas::api::ROUTES.contains(&"/stix/bundle") {
                let bundle = c.get("/api/v1/stix/bundle", &auth).await;
                if reader {
                    t.check(bundle.status == StatusCode::OK, || {
                        format!("{who}: STIX bundle answered {}", bundle.status)
                    });
                    let text = bundle.text();
                    for inc in &w.incidents {
                        let see = may_see(o, inc, ntk);
                        t.check(
                            text.contains(&inc.tag) == see && text.contains(&inc.domain) == see,
                            || {
                                format!(
                                    "{who}: STIX bundle and {} ({}): shown {}",
                                    inc.tag, inc.tlp, !see
                                )
                            },
                        );
                    }
                } else {
                    t.check(bundle.status == StatusCode::FORBIDDEN, || {
                        format!("{who}: STIX bundle answered {}", bundle.status)
                    });
                }
            }

            // Per endpoint of `extra`: the answer for an incident that does not exist.
            let mut extra_refusals: Vec<(String, (StatusCode, Vec<u8>))> = Vec::new();
            // Exports build a package and write custody entries each time: checked for the
            // viewer (a reader, as every reading role sees the same) and the ingest token.
            if full && matches!(role, Role::Viewer | Role::Ingest) {
                let fake = "00000000-0000-4000-8000-000000000000";
                for route in &extra {
                    let r = c
                        .get(
                            &format!(
                                "/api/v1{}",
                                route
                                    .replace("{id}", fake)
                                    .replace("{sha}", &w.incidents[0].sha)
                            ),
                            &auth,
                        )
                        .await;
                    extra_refusals.push((route.clone(), (r.status, r.bytes)));
                }
                if has_many_export {
                    let r = c
                        .json(
                            Method::POST,
                            "/api/v1/evidence",
                            &auth,
                            &json!({"incidents": [fake]}),
                        )
                        .await;
                    extra_refusals.push(("POST /evidence".into(), (r.status, r.bytes)));
                }
            }
            for inc in &w.incidents {
                let see = may_see(o, inc, ntk);
                let want = if !reader {
                    StatusCode::FORBIDDEN
                } else if see {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                };
                let cell = |e: &str, got: StatusCode| {
                    format!(
                        "{who}: {e} of {} ({}, to {:?}) answered {got}, want {want}",
                        inc.tag, inc.tlp, inc.recipients
                    )
                };

                let get = c.get(&format!("/api/v1/incidents/{}", inc.id), &auth).await;
                t.check(get.status == want, || cell("get", get.status));
                if get.status == StatusCode::OK {
                    // Recipients are the owner's business.
                    let r = get.json()["recipients"]
                        .as_array()
                        .map(|a| a.len())
                        .unwrap_or(99);
                    let want_r = if o == inc.owner {
                        inc.recipients.len()
                    } else {
                        0
                    };
                    t.check(r == want_r, || {
                        format!("{who}: get {} shows {r} recipients", inc.tag)
                    });
                } else {
                    t.check(!get.text().contains(&inc.tag), || {
                        format!("{who}: refusal of {} leaks its text", inc.tag)
                    });
                }

                if !full {
                    continue;
                }
                // Other endpoints of one incident (exports): what may not be seen answers
                // exactly as an incident that does not exist, so nothing tells them apart.
                for (route, nowhere) in &extra_refusals {
                    let r = if route == "POST /evidence" {
                        c.json(
                            Method::POST,
                            "/api/v1/evidence",
                            &auth,
                            &json!({"incidents": [inc.id]}),
                        )
                        .await
                    } else {
                        c.get(
                            &format!(
                                "/api/v1{}",
                                route.replace("{id}", &inc.id).replace("{sha}", &inc.sha)
                            ),
                            &auth,
                        )
                        .await
                    };
                    let ok = if reader && see {
                        r.status.is_success()
                    } else {
                        (r.status, r.bytes.as_slice()) == (nowhere.0, nowhere.1.as_slice())
                    };
                    t.check(ok, || {
                        format!(
                            "{} / {}",
                            cell(route, r.status),
                            r.text().chars().take(200).collect::<String>()
                        )
                    });
                }

                let search = c
                    .get(&format!("/api/v1/incidents?q={}", enc(&inc.tag)), &auth)
                    .await;
                if reader {
                    let items = search.json()["items"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let found = items.iter().any(|i| i["id"] == inc.id.as_str());
                    t.check(found == see && items.len() == usize::from(see), || {
                        format!("{who}: search {} found {}", inc.tag, items.len())
                    });
                } else {
                    t.check(search.status == StatusCode::FORBIDDEN, || {
                        cell("search", search.status)
                    });
                }

                let ind = c
                    .get(&format!("/api/v1/incidents/{}/indicators", inc.id), &auth)
                    .await;
                t.check(ind.status == want, || {
                    cell("incident indicators", ind.status)
                });
                if ind.status == StatusCode::OK {
                    t.check(ind.json().as_array().map(|a| a.len()) == Some(2), || {
                        format!("{who}: indicators of {}", inc.tag)
                    });
                }

                let lookup = c
                    .get(
                        &format!("/api/v1/indicators?kind=domain&value={}", inc.domain),
                        &auth,
                    )
                    .await;
                t.check(lookup.status == want, || {
                    cell("indicator lookup", lookup.status)
                });
                if lookup.status == StatusCode::OK {
                    t.check(lookup.json()["incidents"] == 1, || {
                        format!("{who}: lookup {}", inc.domain)
                    });
                }

                let atts = c
                    .get(&format!("/api/v1/incidents/{}/attachments", inc.id), &auth)
                    .await;
                t.check(atts.status == want, || cell("attachments", atts.status));
                if atts.status == StatusCode::OK {
                    t.check(atts.json()[0]["sha256"] == inc.sha.as_str(), || {
                        format!("{who}: attachments of {}", inc.tag)
                    });
                }

                let dl = c
                    .get(
                        &format!("/api/v1/incidents/{}/attachments/{}", inc.id, inc.sha),
                        &auth,
                    )
                    .await;
                t.check(dl.status == want, || cell("download", dl.status));
                if dl.status == StatusCode::OK {
                    t.check(dl.bytes == inc.bytes, || {
                        format!("{who}: download of {} has other bytes", inc.tag)
                    });
                } else {
                    t.check(!dl.bytes.windows(8).any(|w| w == b"evidence"), || {
                        format!("{who}: refused download leaks")
                    });
                }

                let custody = c
                    .get(
                        &format!(
                            "/api/v1/incidents/{}/attachments/{}/custody",
                            inc.id, inc.sha
                        ),
                        &auth,
                    )
                    .await;
                t.check(custody.status == want, || cell("custody", custody.status));
                if custody.status == StatusCode::OK {
                    let entries = custody.json();
                    let actors: Vec<String> = entries
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["actor"].as_str().unwrap().to_string())
                        .collect();
                    // Entries name tokens (`token:bravo-viewer`) and members (`user:viewer@bravo.kz`).
                    let own = |a: &String| {
                        a.starts_with(&format!("token:{slug}-"))
                            || a.ends_with(&format!("@{slug}.kz"))
                    };
                    let ok = if o == inc.owner {
                        actors.iter().any(|a| a.ends_with("-editor"))
                    } else {
                        !actors.is_empty() && actors.iter().all(own)
                    };
                    t.check(ok, || {
                        format!("{who}: custody of {} shows {actors:?}", inc.tag)
                    });
                }

                // The dashboard, as a member of the same outlet and role.
                if reader {
                    let session = Auth::Session(w.sessions[o][ri].clone(), None);
                    let page = c.get(&format!("/incidents/{}", inc.id), &session).await;
                    let want_page = if see {
                        StatusCode::OK
                    } else {
                        StatusCode::NOT_FOUND
                    };
                    t.check(page.status == want_page, || {
                        cell("dashboard page", page.status)
                    });
                    t.check(page.text().contains(&inc.tag) == see, || {
                        format!("{who}: dashboard page of {} shows it: {}", inc.tag, !see)
                    });
                    let dl = c
                        .get(
                            &format!("/incidents/{}/attachments/{}", inc.id, inc.sha),
                            &session,
                        )
                        .await;
                    t.check(dl.status == want_page, || {
                        cell("dashboard download", dl.status)
                    });
                    t.check((dl.bytes == inc.bytes) == see, || {
                        format!("{who}: dashboard download of {}", inc.tag)
                    });
                    // The search form echoes the words, so look for the incident's link.
                    let search = c.get(&format!("/?q={}", enc(&inc.tag)), &session).await;
                    t.check(
                        search.status == StatusCode::OK && search.text().contains(&inc.id) == see,
                        || {
                            format!(
                                "{who}: dashboard search {} ({}) shows it: {}",
                                inc.tag, search.status, !see
                            )
                        },
                    );
                }
            }
            if reader && full {
                // The dashboard's list page.
                let session = Auth::Session(w.sessions[o][ri].clone(), None);
                let page = c.get("/", &session).await;
                assert_eq!(page.status, StatusCode::OK, "{who}: dashboard list");
                let text = page.text();
                for inc in &w.incidents {
                    t.check(text.contains(&inc.id) == may_see(o, inc, ntk), || {
                        format!("{who}: dashboard list and {}", inc.tag)
                    });
                }
            }
        }
    }
}

async fn set_ntk(w: &World, peers: &[&str]) {
    let r = w
        .client
        .json(
            Method::PUT,
            "/api/v1/outlet/settings",
            &w.auth(A, 2),
            &json!({"auto_tlp": "amber+strict", "need_to_know": peers}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
}

async fn matrix_story(kind: Kind) {
    let Some((_t, w)) = build(kind).await else {
        return;
    };
    let mut tally = Tally::default();

    set_ntk(&w, &[]).await;
    read_matrix(&w, &BTreeSet::new(), "need-to-know []", true, &mut tally).await;
    set_ntk(&w, &["bravo"]).await;
    read_matrix(
        &w,
        &BTreeSet::from([(A, B)]),
        "need-to-know [bravo]",
        true,
        &mut tally,
    )
    .await;
    // And back: removing B takes its access away at once.
    set_ntk(&w, &[]).await;
    read_matrix(
        &w,
        &BTreeSet::new(),
        "need-to-know [] again",
        false,
        &mut tally,
    )
    .await;

    write_matrix(&w, &mut tally).await;
    only_ingest(&w, &mut tally).await;
    viewers_cannot_write(&w, &mut tally).await;

    println!(
        "{kind:?}: isolation matrix: {} cells checked ({} outlets × {} roles × {} incidents × 3 sharing phases, then writes), {} failures",
        tally.cells,
        OUTLETS.len(),
        ROLES.len(),
        w.incidents.len(),
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {} cells disagree with the oracle:\n{}",
        tally.failures.len(),
        tally.cells,
        tally.failures.join("\n")
    );
}

/// Writes to another outlet's incident: refused (403 or 404) for every role of every other
/// outlet, and nothing changes. The owner's viewer and ingest token are refused too.
async fn write_matrix(w: &World, t: &mut Tally) {
    let c = &w.client;
    for inc in &w.incidents {
        let owner_auth = w.auth(inc.owner, 0);
        let before = c
            .get(&format!("/api/v1/incidents/{}", inc.id), &owner_auth)
            .await
            .json();
        let atts_before = c
            .get(
                &format!("/api/v1/incidents/{}/attachments", inc.id),
                &owner_auth,
            )
            .await
            .json();
        let ind_before = c
            .get(
                &format!("/api/v1/incidents/{}/indicators", inc.id),
                &owner_auth,
            )
            .await
            .json();
        for (o, slug) in OUTLETS.iter().enumerate() {
            for (ri, role) in ROLES.iter().enumerate() {
                if o == inc.owner && role.can_write() {
                    continue;
                }
                let auth = w.auth(o, ri);
                let who = format!(
                    "{slug}/{} on {} ({})",
                    role.as_str(),
                    inc.tag,
                    OUTLETS[inc.owner]
                );
                let writes = [
                    c.json(
                        Method::PATCH,
                        &format!("/api/v1/incidents/{}", inc.id),
                        &auth,
                        &json!({"title": "hijacked", "tlp": "clear"}),
                    )
                    .await,
                    c.json(
                        Method::POST,
                        &format!("/api/v1/incidents/{}/updates", inc.id),
                        &auth,
                        &json!({"body": "hijacked", "new_status": "closed"}),
                    )
                    .await,
                    c.json(
                        Method::POST,
                        &format!("/api/v1/incidents/{}/indicators", inc.id),
                        &auth,
                        &json!([{"kind": "ip", "value": "192.0.2.66"}]),
                    )
                    .await,
                    c.send(
                        Method::POST,
                        &format!("/api/v1/incidents/{}/attachments?name=x.txt", inc.id),
                        &auth,
                        Some("text/plain"),
                        b"hijacked".to_vec(),
                    )
                    .await,
                ];
                for (e, a) in ["patch", "update", "indicators", "attachment"]
                    .iter()
                    .zip(writes)
                {
                    t.check(
                        a.status == StatusCode::FORBIDDEN || a.status == StatusCode::NOT_FOUND,
                        || format!("{who}: {e} answered {}", a.status),
                    );
                }
            }
        }
        let after = c
            .get(&format!("/api/v1/incidents/{}", inc.id), &owner_auth)
            .await
            .json();
        t.check(after == before, || {
            format!("{}: changed by refused writes", inc.tag)
        });
        let atts_after = c
            .get(
                &format!("/api/v1/incidents/{}/attachments", inc.id),
                &owner_auth,
            )
            .await
            .json();
        t.check(atts_after == atts_before, || {
            format!("{}: attachments changed", inc.tag)
        });
        let ind_after = c
            .get(
                &format!("/api/v1/incidents/{}/indicators", inc.id),
                &owner_auth,
            )
            .await
            .json();
        t.check(ind_after == ind_before, || {
            format!("{}: indicators changed", inc.tag)
        });
    }
}

fn own_incident(w: &World, outlet: usize) -> &Inc {
    w.incidents.iter().find(|i| i.owner == outlet).unwrap()
}

/// Every write endpoint with a valid body, as (method, uri, content type, body).
fn writes(inc: &Inc, n: usize) -> Vec<(Method, String, &'static str, Vec<u8>)> {
    let j = |v: Value| serde_json::to_vec(&v).unwrap();
    vec![
        (
            Method::PUT,
            "/api/v1/outlet/settings".into(),
            "application/json",
            j(json!({"auto_tlp": "clear", "need_to_know": []})),
        ),
        (
            Method::POST,
            "/api/v1/outlet/members".into(),
            "application/json",
            j(
                json!({"email": format!("new{n}@x.kz"), "name": "N", "password": "correct horse battery", "role": "admin"}),
            ),
        ),
        (
            Method::POST,
            "/api/v1/outlet/tokens".into(),
            "application/json",
            j(json!({"name": format!("t{n}"), "role": "admin"})),
        ),
        (
            Method::POST,
            "/api/v1/incidents".into(),
            "application/json",
            j(json!({"kind": "other", "title": "t", "started_at": "2024-01-01"})),
        ),
        (
            Method::PATCH,
            format!("/api/v1/incidents/{}", inc.id),
            "application/json",
            j(json!({"title": "changed"})),
        ),
        (
            Method::POST,
            format!("/api/v1/incidents/{}/updates", inc.id),
            "application/json",
            j(json!({"body": "note"})),
        ),
        (
            Method::POST,
            format!("/api/v1/incidents/{}/indicators", inc.id),
            "application/json",
            j(json!([{"kind": "ip", "value": "192.0.2.1"}])),
        ),
        (
            Method::POST,
            format!("/api/v1/incidents/{}/attachments?name=a.txt", inc.id),
            "text/plain",
            b"bytes".to_vec(),
        ),
        (
            Method::POST,
            "/api/v1/publications".into(),
            "application/json",
            j(json!({"url": "https://x.kz/a", "title": "t", "published_at": "2024-01-01"})),
        ),
        (
            Method::POST,
            "/api/v1/ingest/episodes".into(),
            "application/json",
            j(json!({"episode_id": format!("e{n}"), "start_ms": 1_700_000_000_000i64})),
        ),
    ]
}

/// A viewer cannot write anything, even on its own outlet's incidents.
async fn viewers_cannot_write(w: &World, t: &mut Tally) {
    for (o, slug) in OUTLETS.iter().enumerate() {
        let inc = own_incident(w, o);
        for (n, (m, uri, ct, body)) in writes(inc, o).into_iter().enumerate() {
            let a = w
                .client
                .send(m.clone(), &uri, &w.auth(o, 0), Some(ct), body)
                .await;
            t.check(a.status == StatusCode::FORBIDDEN, || {
                format!("{slug}/viewer: {m} {uri} (#{n}) answered {}", a.status)
            });
        }
    }
}

/// An ingest token can push episodes and do nothing else.
async fn only_ingest(w: &World, t: &mut Tally) {
    for (o, slug) in OUTLETS.iter().enumerate() {
        let inc = own_incident(w, o);
        let auth = w.auth(o, 3);
        for (m, uri, ct, body) in writes(inc, 100 + o) {
            let a = w.client.send(m.clone(), &uri, &auth, Some(ct), body).await;
            let ok = if uri.ends_with("/ingest/episodes") {
                a.status == StatusCode::CREATED
            } else {
                a.status == StatusCode::FORBIDDEN
            };
            t.check(ok, || {
                format!("{slug}/ingest: {m} {uri} answered {}", a.status)
            });
        }
        let reads = [
            "/api/v1/kinds".to_string(),
            "/api/v1/outlets".into(),
            "/api/v1/outlet/settings".into(),
            "/api/v1/outlet/members".into(),
            "/api/v1/incidents".into(),
            format!("/api/v1/incidents/{}", inc.id),
            format!("/api/v1/incidents/{}/indicators", inc.id),
            format!("/api/v1/incidents/{}/attachments", inc.id),
            format!("/api/v1/incidents/{}/attachments/{}", inc.id, inc.sha),
            format!(
                "/api/v1/incidents/{}/attachments/{}/custody",
                inc.id, inc.sha
            ),
            "/api/v1/indicators?kind=ip&value=198.51.100.7".into(),
            "/api/v1/publications".into(),
            "/api/v1/audit".into(),
        ];
        for uri in reads {
            let a = w.client.get(&uri, &auth).await;
            t.check(a.status == StatusCode::FORBIDDEN, || {
                format!("{slug}/ingest: GET {uri} answered {}", a.status)
            });
        }
        // Editors and viewers do not ingest.
        for ri in [0, 1] {
            let a = w
                .client
                .json(
                    Method::POST,
                    "/api/v1/ingest/episodes",
                    &w.auth(o, ri),
                    &json!({"episode_id": "x", "start_ms": 1_700_000_000_000i64}),
                )
                .await;
            t.check(a.status == StatusCode::FORBIDDEN, || {
                format!(
                    "{slug}/{}: ingest answered {}",
                    ROLES[ri].as_str(),
                    a.status
                )
            });
        }
    }
    // The episode became an incident at A's automatic level (AMBER+STRICT: every settings
    // write in this test but the admin's was refused).
    let a_admin = w.auth(A, 2);
    let list = w
        .client
        .get("/api/v1/incidents?limit=200&kind=http_flood", &a_admin)
        .await
        .json();
    let ingested: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            i["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("HTTP flood"))
        })
        .collect();
    t.check(
        ingested.len() == 1 && ingested[0]["tlp"] == "amber+strict",
        || format!("ingested incident of A: {ingested:?}"),
    );
}
