//! The map of attacks (`/map`, `/map/time`, `/map/shared`), through the real router, on SQLite
//! and PostgreSQL.
//!
//! Three outlets as in `isolation.rs`: A ("alpha") owns one incident per TLP level × named
//! recipients (none, or B); B and C own a few; C's shield pushes an episode. Every incident has
//! an address of its own in a country and an AS no other incident uses, a domain of its own, and
//! one Kazakh address that all share; A's RED incident for B and C's CLEAR incident also share a
//! domain. Each outlet's member then reads each map view, with and without filters, twice (A's
//! need-to-know list empty, then [B]), and every figure is compared with what a small oracle
//! computes from the incidents the TLP 2.0 rules let that outlet see, with countries and AS
//! numbers looked up here in `qalqan-geo`, apart from the store's SQL. An incident's own country,
//! AS and network must never appear to an outlet that may not see it.
//!
//! Then: filter validation (bad values answer 400 naming the field, never 500), a page without
//! a session goes to the login, and a backup restored into a fresh database draws the same map.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use common::{Auth, Client, Kind, TestDb};
use http::{Method, StatusCode};
use qalqan_atlas::model::Role;
use serde_json::json;

both_backends! {
    matrix => matrix_story,
    validation => validation_story,
    restore => restore_story,
}

const OUTLETS: [&str; 3] = ["alpha", "bravo", "charlie"];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const PASSWORD: &str = "correct horse battery";
const SECRET_DOMAIN: &str = "red-and-clear.evil.example";

#[derive(Debug, Clone)]
struct Inc {
    owner: usize,
    tlp: &'static str,
    recipients: Vec<usize>,
    kind: &'static str,
    /// Local day of the month (October 2026) it started on.
    day: u32,
    /// Its own address, country and AS.
    ip: String,
    country: String,
    asn: u32,
    /// Every indicator it reports, as (kind, value).
    indicators: Vec<(String, String)>,
}

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

/// `n` public addresses, each in a country and an AS of its own (and none in Kazakhstan), and
/// one Kazakh address, all found by asking the geo tables directly.
/// (address, country, AS number).
type Place = (String, String, u32);

fn addresses(n: usize) -> (Vec<Place>, (String, u32)) {
    let g = qalqan_geo::Geo::embedded().unwrap();
    let mut out: Vec<Place> = Vec::new();
    let mut kz = None;
    'outer: for a in 1u8..=223 {
        for b in (0u8..=255).step_by(5) {
            let ip: IpAddr = format!("{a}.{b}.77.9").parse().unwrap();
            let (Some(c), Some(asn)) = (g.country(ip), g.asn(ip)) else {
                continue;
            };
            let c = String::from_utf8(c.to_vec()).unwrap();
            if c == "KZ" {
                if kz.is_none() {
                    kz = Some((ip.to_string(), asn.number));
                }
                continue;
            }
            if out.len() < n && !out.iter().any(|(_, oc, oa)| *oc == c || *oa == asn.number) {
                out.push((ip.to_string(), c, asn.number));
            }
            if out.len() == n && kz.is_some() {
                break 'outer;
            }
        }
    }
    if kz.is_none() {
        // Kazakh networks are few; look where Kazakhtelecom's are.
        for a in [
            2u8, 5, 37, 46, 77, 78, 79, 82, 89, 92, 95, 147, 176, 178, 185, 194, 212,
        ] {
            for b in 0u8..=255 {
                let ip: IpAddr = format!("{a}.{b}.1.1").parse().unwrap();
                if g.country(ip) == Some(*b"KZ")
                    && let Some(asn) = g.asn(ip)
                    && !out.iter().any(|(_, _, oa)| *oa == asn.number)
                {
                    kz = Some((ip.to_string(), asn.number));
                    break;
                }
            }
            if kz.is_some() {
                break;
            }
        }
    }
    assert_eq!(
        out.len(),
        n,
        "not enough distinct countries in the geo data"
    );
    (out, kz.expect("a Kazakh address in the geo data"))
}

struct World {
    client: Client,
    /// Dashboard session of a viewer per outlet, and of A's admin.
    viewers: Vec<String>,
    admin_a: String,
    incidents: Vec<Inc>,
    kz: (String, u32),
}

async fn build(kind: Kind) -> Option<(TestDb, World)> {
    let t = TestDb::new(kind).await?;
    let db = t.connect().await;
    let mut ids = Vec::new();
    let mut editors = Vec::new();
    let mut ingest = Vec::new();
    for slug in OUTLETS {
        let o = db
            .create_outlet(slug, &slug.to_uppercase(), "cli")
            .await
            .unwrap();
        ids.push(o.id);
        editors.push(
            db.create_token(None, o.id, &format!("{slug}-editor"), Role::Editor)
                .await
                .unwrap(),
        );
        ingest.push(
            db.create_token(None, o.id, &format!("{slug}-ingest"), Role::Ingest)
                .await
                .unwrap(),
        );
        db.create_user(
            None,
            o.id,
            &format!("viewer@{slug}.kz"),
            "Viewer",
            PASSWORD,
            Role::Viewer,
        )
        .await
        .unwrap();
    }
    db.create_user(
        None,
        ids[A],
        "admin@alpha.kz",
        "Admin",
        PASSWORD,
        Role::Admin,
    )
    .await
    .unwrap();
    let client = Client::new(db);
    let mut viewers = Vec::new();
    for slug in OUTLETS {
        viewers.push(
            client
                .login(&format!("viewer@{slug}.kz"), PASSWORD)
                .await
                .unwrap()
                .0,
        );
    }
    let admin_a = client.login("admin@alpha.kz", PASSWORD).await.unwrap().0;

    let mut plan: Vec<(usize, &'static str, Vec<usize>)> = Vec::new();
    for tlp in ["clear", "green", "amber", "amber+strict", "red"] {
        for recipients in [vec![], vec![B]] {
            plan.push((A, tlp, recipients));
        }
    }
    plan.push((B, "green", vec![]));
    plan.push((B, "amber+strict", vec![]));
    plan.push((B, "red", vec![A]));
    plan.push((C, "amber", vec![]));
    plan.push((C, "clear", vec![]));
    let (places, kz) = addresses(plan.len() + 1);
    let mut incidents = Vec::new();
    for (n, (owner, tlp, recipients)) in plan.into_iter().enumerate() {
        let kind = if n % 2 == 0 { "http_flood" } else { "phishing" };
        let day = 1 + n as u32;
        let (ip, country, asn) = places[n].clone();
        let r: Vec<&str> = recipients.iter().map(|i| OUTLETS[*i]).collect();
        let editor = Auth::Bearer(editors[owner].clone());
        let created = client
            .json(
                Method::POST,
                "/api/v1/incidents",
                &editor,
                &json!({
                    "kind": kind,
                    "title": format!("Incident {n} {tlp}"),
                    "description": "map test",
                    "tlp": tlp,
                    "started_at": format!("2026-10-{day:02}T06:00:00Z"),
                    "recipients": r,
                }),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        let id = created.json()["id"].as_str().unwrap().to_string();
        let mut indicators = vec![
            ("ip".to_string(), ip.clone()),
            ("ip".to_string(), kz.0.clone()),
            ("domain".to_string(), format!("own{n:02}.evil.example")),
        ];
        let red_for_b = owner == A && tlp == "red" && !recipients.is_empty();
        let c_clear = owner == C && tlp == "clear";
        if red_for_b || c_clear {
            indicators.push(("domain".to_string(), SECRET_DOMAIN.to_string()));
        }
        let body: Vec<_> = indicators
            .iter()
            .map(|(k, v)| json!({"kind": k, "value": v, "count": 10}))
            .collect();
        let s = client
            .json(
                Method::POST,
                &format!("/api/v1/incidents/{id}/indicators"),
                &editor,
                &json!(body),
            )
            .await;
        assert_eq!(s.status, StatusCode::CREATED, "{}", s.text());
        incidents.push(Inc {
            owner,
            tlp,
            recipients,
            kind,
            day,
            ip,
            country,
            asn,
            indicators,
        });
    }
    // C's shield: an episode becomes an AMBER+STRICT incident of C (the outlet's default).
    let (ip, country, asn) = places[incidents.len()].clone();
    let start = qalqan_atlas::model::parse_time("2026-10-20T06:00:00Z").unwrap();
    let e = client
        .json(
            Method::POST,
            "/api/v1/ingest/episodes",
            &Auth::Bearer(ingest[C].clone()),
            &json!({
                "episode_id": "shield-c:1", "start_ms": start, "end_ms": start + 60_000,
                "peak_rps": 900, "total_requests": 50_000,
                "indicators": [
                    {"kind": "ip", "value": ip, "count": 40_000},
                    {"kind": "ip", "value": kz.0, "count": 10_000},
                ],
            }),
        )
        .await;
    assert_eq!(e.status, StatusCode::CREATED, "{}", e.text());
    incidents.push(Inc {
        owner: C,
        tlp: "amber+strict",
        recipients: vec![],
        kind: "http_flood",
        day: 20,
        ip: ip.clone(),
        country,
        asn,
        indicators: vec![("ip".into(), ip), ("ip".into(), kz.0.clone())],
    });
    Some((
        t,
        World {
            client,
            viewers,
            admin_a,
            incidents,
            kz,
        },
    ))
}

/// The first number in each `<td class="n">` of the row with the given id prefix, by id.
fn rows(html: &str, prefix: &str) -> BTreeMap<String, Vec<i64>> {
    let mut out = BTreeMap::new();
    let marker = format!("<tr id=\"{prefix}");
    for part in html.split(&marker).skip(1) {
        let id = part.split('"').next().unwrap().to_string();
        let row = part.split("</tr>").next().unwrap();
        let nums: Vec<i64> = row
            .split("<td class=\"n\">")
            .skip(1)
            .map(|c| {
                c.split('<')
                    .next()
                    .unwrap()
                    .replace('\u{202F}', "")
                    .parse()
                    .unwrap()
            })
            .collect();
        out.insert(id, nums);
    }
    out
}

/// The matrix cells: row slug → values in column order.
fn matrix(html: &str) -> BTreeMap<String, Vec<i64>> {
    let mut out = BTreeMap::new();
    for part in html.split("<tr id=\"m-").skip(1) {
        let slug = part.split('"').next().unwrap().to_string();
        let row = part.split("</tr>").next().unwrap();
        let vals: Vec<i64> = row
            .split("<td ")
            .skip(1)
            .map(|c| {
                c.split('>')
                    .nth(1)
                    .unwrap()
                    .split('<')
                    .next()
                    .unwrap()
                    .replace('\u{202F}', "")
                    .parse()
                    .unwrap()
            })
            .collect();
        out.insert(slug, vals);
    }
    out
}

/// The colour class of a country's path; "none" for a country too small to draw at 1:110m
/// (Hong Kong, Singapore, …), which only the table shows.
fn path_class(html: &str, cc: &str) -> String {
    let Some(at) = html.find(&format!("<path id=\"cc-{cc}\" class=\"")) else {
        assert!(cc != "KZ" && cc != "RU" && cc != "US", "no path for {cc}");
        return "none".into();
    };
    html[at..]
        .split("class=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string()
}

async fn page(w: &World, session: &str, uri: &str) -> String {
    let a = w
        .client
        .get(uri, &Auth::Session(session.to_string(), None))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.text());
    let ct = a.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/html"), "{uri}: {ct}");
    a.text()
}

/// Checks `/map` for one viewer and one filter against the oracle.
fn check_where(html: &str, who: &str, shown: &[&Inc], hidden: &[&Inc], w: &World) {
    assert!(html.len() < 200_000, "{who}: /map is {} bytes", html.len());
    // Countries: each visible incident's own country once; Kazakhstan once per visible one.
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for i in shown {
        *want.entry(i.country.clone()).or_default() += 1;
        *want.entry("KZ".to_string()).or_default() += 1;
    }
    let got: BTreeMap<String, i64> = rows(html, "country-")
        .into_iter()
        .map(|(k, v)| (k, v[0]))
        .collect();
    assert_eq!(got, want, "{who}: countries");
    // Every visible incident's AS with one incident; Kazakhstan's AS with all of them.
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for i in shown {
        *want.entry(format!("asn-AS{}", i.asn)).or_default() += 1;
        *want.entry(format!("asn-AS{}", w.kz.1)).or_default() += 1;
    }
    let got: BTreeMap<String, i64> = rows(html, "asn-AS")
        .into_iter()
        .map(|(k, v)| (format!("asn-AS{k}"), v[0]))
        .collect();
    assert_eq!(got, want, "{who}: AS numbers");
    for i in shown {
        let class = path_class(html, &i.country);
        assert!(class != "c0", "{who}: {} not shaded", i.country);
    }
    if !shown.is_empty() {
        assert_eq!(path_class(html, "KZ"), "c5", "{who}: KZ is the darkest");
    }
    for i in hidden {
        let class = path_class(html, &i.country);
        assert!(
            class == "c0" || class == "none",
            "{who}: {} shaded",
            i.country
        );
        for leak in [
            format!(">AS{}<", i.asn),
            format!(
                ">{}/24<",
                i.ip.rsplit_once('.').unwrap().0.to_string() + ".0"
            ),
        ] {
            assert!(
                !html.contains(&leak),
                "{who}: {leak} of a hidden incident shows"
            );
        }
    }
}

async fn read_all(w: &World, ntk: &BTreeSet<(usize, usize)>, phase: &str) -> usize {
    let mut checked = 0;
    type Keep = Box<dyn Fn(&Inc) -> bool>;
    let filters: Vec<(String, Keep)> = vec![
        ("".into(), Box::new(|_| true)),
        ("tlp=red".into(), Box::new(|i| i.tlp == "red")),
        ("tlp=amber".into(), Box::new(|i| i.tlp == "amber")),
        ("tlp=clear".into(), Box::new(|i| i.tlp == "clear")),
        ("outlet=alpha".into(), Box::new(|i| i.owner == A)),
        ("outlet=charlie".into(), Box::new(|i| i.owner == C)),
        ("kind=phishing".into(), Box::new(|i| i.kind == "phishing")),
        (
            "from=2026-10-05&to=2026-10-09".into(),
            Box::new(|i| (5..=9).contains(&i.day)),
        ),
    ];
    for (viewer, slug) in OUTLETS.iter().enumerate() {
        let mut sessions = vec![w.viewers[viewer].clone()];
        if viewer == A {
            sessions.push(w.admin_a.clone());
        }
        for session in &sessions {
            for (q, keep) in &filters {
                let who = format!("{phase}: {slug} ?{q}");
                let shown: Vec<&Inc> = w
                    .incidents
                    .iter()
                    .filter(|i| may_see(viewer, i, ntk) && keep(i))
                    .collect();
                let hidden: Vec<&Inc> = w
                    .incidents
                    .iter()
                    .filter(|i| !may_see(viewer, i, ntk))
                    .collect();
                let html = page(w, session, &format!("/map?lang=en&{q}")).await;
                check_where(&html, &who, &shown, &hidden, w);
                if !q.is_empty() {
                    assert!(
                        html.contains(&format!("Incidents selected: {}.", shown.len())),
                        "{who}: selected count"
                    );
                }

                // When: the total, and one calendar square per day.
                let range = if q.starts_with("from") {
                    q.clone()
                } else {
                    format!("{q}&from=2026-10-01&to=2026-10-31")
                };
                let html = page(w, session, &format!("/map/time?lang=en&{range}")).await;
                if shown.is_empty() {
                    assert!(html.contains("id=\"no-incidents\""), "{who}: empty");
                } else {
                    let total = html
                        .split("<span id=\"total\">")
                        .nth(1)
                        .and_then(|s| s.split('<').next())
                        .unwrap();
                    assert_eq!(total, shown.len().to_string(), "{who}: timeline total");
                }
                // The calendar looks back 365 days from `to`, whatever `from` says.
                let (cal_end, with_from) = if q.starts_with("from") {
                    (9, true)
                } else {
                    (31, false)
                };
                for i in w.incidents.iter().filter(|i| i.day <= cal_end) {
                    let n = w
                        .incidents
                        .iter()
                        .filter(|s| {
                            s.day == i.day && may_see(viewer, s, ntk) && (with_from || keep(s))
                        })
                        .count();
                    let square = format!("2026-10-{:02}: {n}</title>", i.day);
                    assert!(html.contains(&square), "{who}: calendar {square}");
                }

                // Who with whom: outlet pairs that saw the same indicators, counted here.
                let mut owners: BTreeMap<(String, String), BTreeSet<usize>> = BTreeMap::new();
                for i in &shown {
                    for ind in &i.indicators {
                        owners.entry(ind.clone()).or_default().insert(i.owner);
                    }
                }
                let mut want: BTreeMap<String, Vec<i64>> = BTreeMap::new();
                let members: BTreeSet<usize> = owners
                    .values()
                    .filter(|s| s.len() > 1)
                    .flatten()
                    .copied()
                    .collect();
                for a in &members {
                    let row = members
                        .iter()
                        .map(|b| {
                            owners
                                .values()
                                .filter(|s| s.len() > 1 && s.contains(a) && s.contains(b))
                                .count() as i64
                        })
                        .collect();
                    want.insert(OUTLETS[*a].to_string(), row);
                }
                let html = page(w, session, &format!("/map/shared?lang=en&{q}")).await;
                assert_eq!(matrix(&html), want, "{who}: matrix");
                let secret_shared = owners
                    .get(&("domain".to_string(), SECRET_DOMAIN.to_string()))
                    .is_some_and(|s| s.len() > 1);
                assert_eq!(
                    html.contains(SECRET_DOMAIN),
                    secret_shared,
                    "{who}: shared domain"
                );
                for i in &hidden {
                    assert!(!html.contains(&i.ip), "{who}: hidden address {}", i.ip);
                }
                checked += 1;
            }
        }
    }
    checked
}

async fn matrix_story(kind: Kind) {
    let Some((_t, w)) = build(kind).await else {
        return;
    };
    let n = read_all(&w, &BTreeSet::new(), "no need-to-know").await;
    // A puts B on its need-to-know list: B now sees A's AMBER incidents on the map too.
    let db = w.client.db();
    let admin = common::actor(
        db.outlet_by_slug("alpha").await.unwrap().id,
        Role::Admin,
        "user:admin@alpha.kz",
    );
    db.set_sharing(
        &admin,
        qalqan_atlas::model::Tlp::AmberStrict,
        &["bravo".to_string()],
    )
    .await
    .unwrap();
    let m = read_all(&w, &BTreeSet::from([(A, B)]), "need-to-know [B]").await;
    assert_eq!(n + m, 2 * 4 * 8, "every viewer × filter was checked");
}

async fn validation_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let o = db.create_outlet("alpha", "ALPHA", "cli").await.unwrap();
    db.create_user(None, o.id, "v@alpha.kz", "V", PASSWORD, Role::Viewer)
        .await
        .unwrap();
    let client = Client::new(db);
    let (s, _) = client.login("v@alpha.kz", PASSWORD).await.unwrap();
    let auth = Auth::Session(s, None);
    for path in ["/map", "/map/time", "/map/shared"] {
        // Without a session: the login page.
        let a = client.get(path, &Auth::None).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{path}");
        // Empty registry: a page, not an error.
        let a = client.get(&format!("{path}?lang=en"), &auth).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text());
        assert!(!a.text().contains("<script"), "{path}: no script");
        for (q, field) in [
            ("from=2026-13-01", "From: "),
            ("from=yesterday", "From: "),
            ("to=2026-02-30", "To: "),
            ("from=2026-03-01&to=2026-02-01", "To: ends before it starts"),
            ("outlet=nobody", "Outlet: no such value"),
            ("kind=%3Cscript%3E", "Kind: no such value"),
            ("tlp=purple", "TLP: no such value"),
            ("tlp=RED", "TLP: no such value"),
            ("from=%00%FF%FE", "From: "),
            ("outlet=%D0%B0%D0%B1", "Outlet: no such value"),
        ] {
            let a = client.get(&format!("{path}?lang=en&{q}"), &auth).await;
            assert_eq!(
                a.status,
                StatusCode::BAD_REQUEST,
                "{path}?{q}: {}",
                a.text()
            );
            let html = a.text();
            assert!(html.contains("id=\"filter-errors\""), "{path}?{q}");
            assert!(html.contains(field), "{path}?{q}: names {field}");
            assert!(!html.contains("<script"), "{path}?{q}: escaped");
        }
        // A very long value is an error too, and the page stays small.
        let long = "9".repeat(5000);
        let a = client.get(&format!("{path}?from={long}"), &auth).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.bytes.len() < 100_000);
        // Unknown parameters are ignored; the language switch keeps the filter.
        let a = client
            .get(&format!("{path}?lang=kk&tlp=red&foo=bar"), &auth)
            .await;
        assert_eq!(a.status, StatusCode::OK);
        let html = a.text();
        assert!(
            html.contains("tlp=red&#38;foo=bar&#38;lang=ru"),
            "{path}: language link {}",
            html.split("hreflang=\"ru\"")
                .next()
                .unwrap_or("")
                .rsplit("href")
                .next()
                .unwrap_or("")
        );
    }
}

async fn restore_story(kind: Kind) {
    let Some((_t, w)) = build(kind).await else {
        return;
    };
    let before = page(&w, &w.viewers[B], "/map?lang=en").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("atlas.jsonl");
    qalqan_atlas::backup::backup(w.client.db(), &file)
        .await
        .unwrap();
    let t2 = TestDb::new(kind).await.unwrap();
    let db2 = t2.connect().await;
    qalqan_atlas::backup::restore(&db2, &file).await.unwrap();
    let c2 = Client::new(db2);
    let (s, _) = c2.login("viewer@bravo.kz", PASSWORD).await.unwrap();
    let a = c2.get("/map?lang=en", &Auth::Session(s, None)).await;
    assert_eq!(a.status, StatusCode::OK);
    let after = a.text();
    assert_eq!(rows(&before, "country-"), rows(&after, "country-"));
    assert_eq!(rows(&before, "asn-"), rows(&after, "asn-"));
    assert!(!rows(&after, "country-").is_empty());
    // The restored indicators kept their places.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM indicators WHERE country IS NOT NULL")
        .fetch_one(&c2.db().pool)
        .await
        .unwrap();
    assert!(n as usize > w.incidents.len());
}
