//! Campaigns across outlets, on SQLite and PostgreSQL: one botnet hitting three outlets is
//! proposed as one campaign; attacks that share only warning-listed infrastructure (a CDN AS,
//! Googlebot's addresses and user agent), disjoint addresses, or the same botnet two months
//! later are not; an indicator over the fan-out cap links nothing; a rejected group is not
//! proposed again; a reader sees a campaign only through members it may see, and one it may not
//! see answers exactly like one that does not exist.

mod common;

use common::{Auth, Client, Kind, TestDb, actor};
use http::{Method, StatusCode};
use qalqan_atlas::campaigns::Params;
use qalqan_atlas::model::Role;
use qalqan_atlas::store::{IncidentIn, IncidentPatch, SightingIn};
use qalqan_atlas::{Actor, Db};
use serde_json::{Value, json};

both_backends! {
    one_botnet_three_outlets_is_one_campaign => botnet_story,
    fanout_cap_is_honoured => fanout_story,
    readers_see_only_visible_members => tlp_story,
    dashboard_lists_and_decides_with_csrf => web_story,
    stix_export_carries_confirmed_campaigns => stix_story,
    backup_and_restore_keep_decisions => backup_story,
}

fn incident(v: Value) -> IncidentIn {
    serde_json::from_value(v).expect("incident input")
}

async fn add(db: &Db, who: &Actor, title: &str, tlp: &str, start: &str, end: &str) -> String {
    db.create_incident(
        who,
        &incident(json!({
            "kind": "http_flood", "title": title, "tlp": tlp,
            "started_at": start, "ended_at": end,
        })),
    )
    .await
    .unwrap()
    .id
}

async fn sight(db: &Db, who: &Actor, id: &str, items: &[(&str, String)]) {
    let s: Vec<SightingIn> = items
        .iter()
        .map(|(k, v)| serde_json::from_value(json!({"kind": k, "value": v, "count": 100})).unwrap())
        .collect();
    db.add_sightings(who, id, &s).await.unwrap();
}

fn botnet(from: u32, to: u32) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&str, String)> = (from..=to)
        .map(|n| ("ip", format!("198.51.100.{n}")))
        .collect();
    v.push(("cidr", "198.51.100.0/24".into()));
    v.push(("user_agent", "Mozilla/5.0 (X11; Linux) flood-kit/3".into()));
    v
}

struct World {
    db: Db,
    client: Client,
    alpha: Actor,
    beta: Actor,
    gamma: Actor,
    delta: Actor,
    tokens: Vec<String>,
    a: String,
    b: String,
    c: String,
    d: String,
    e: String,
}

async fn world(t: &TestDb) -> World {
    let db = t.connect().await;
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for slug in ["alpha", "beta", "gamma", "delta"] {
        let o = db.create_outlet(slug, slug, "cli").await.unwrap();
        tokens.push(
            db.create_token(None, o.id, "t", Role::Editor)
                .await
                .unwrap(),
        );
        ids.push(o.id);
    }
    let alpha = actor(ids[0], Role::Editor, "user:editor@alpha.kz");
    let beta = actor(ids[1], Role::Editor, "user:editor@beta.kz");
    let gamma = actor(ids[2], Role::Editor, "user:editor@gamma.kz");
    let delta = actor(ids[3], Role::Editor, "user:editor@delta.kz");

    // One botnet, three outlets, one week; overlapping address sets, the same user agent, and a
    // CDN AS that means nothing.
    let a = add(
        &db,
        &alpha,
        "Флуд поиска",
        "green",
        "2024-03-05T10:00:00Z",
        "2024-03-05T14:00:00Z",
    )
    .await;
    let b = add(
        &db,
        &beta,
        "DDoS на главную",
        "green",
        "2024-03-07T02:00:00Z",
        "2024-03-07T05:00:00Z",
    )
    .await;
    let c = add(
        &db,
        &gamma,
        "Қазақ тіліндегі сайтқа шабуыл",
        "green",
        "2024-03-10T08:00:00Z",
        "2024-03-10T09:00:00Z",
    )
    .await;
    let mut sa = botnet(1, 40);
    sa.push(("asn", "AS13335".into()));
    sa.push(("ip", "66.249.66.1".into()));
    sa.push((
        "user_agent",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)".into(),
    ));
    sight(&db, &alpha, &a, &sa).await;
    sight(&db, &beta, &b, &botnet(11, 50)).await;
    sight(&db, &gamma, &c, &botnet(21, 60)).await;

    // Unrelated, the same week: other addresses, sharing with alpha only the CDN's AS,
    // Googlebot's address and Googlebot's user agent.
    let d = add(
        &db,
        &delta,
        "Другая атака",
        "green",
        "2024-03-06T10:00:00Z",
        "2024-03-06T11:00:00Z",
    )
    .await;
    let mut sd: Vec<(&str, String)> = (1..=30).map(|n| ("ip", format!("203.0.113.{n}"))).collect();
    sd.push(("asn", "AS13335".into()));
    sd.push(("ip", "66.249.66.1".into()));
    sd.push((
        "user_agent",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)".into(),
    ));
    sight(&db, &delta, &d, &sd).await;

    // The same botnet at delta, two months later: too far apart in time.
    let e = add(
        &db,
        &delta,
        "Повтор через два месяца",
        "green",
        "2024-05-20T10:00:00Z",
        "2024-05-20T11:00:00Z",
    )
    .await;
    sight(&db, &delta, &e, &botnet(1, 40)).await;

    let client = Client::new(db.clone());
    World {
        db,
        client,
        alpha,
        beta,
        gamma,
        delta,
        tokens,
        a,
        b,
        c,
        d,
        e,
    }
}

fn member_ids(c: &Value) -> Vec<String> {
    let mut v: Vec<String> = c["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(v: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

async fn botnet_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    let alpha = Auth::Bearer(w.tokens[0].clone());
    let beta = Auth::Bearer(w.tokens[1].clone());
    let delta = Auth::Bearer(w.tokens[3].clone());

    let r = w
        .client
        .send(
            Method::POST,
            "/api/v1/campaigns/recompute",
            &alpha,
            None,
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let s = r.json();
    assert_eq!(s["groups"], 1, "{s}");
    assert_eq!(s["proposed_new"], 1, "{s}");
    assert!(
        s["ignored"].as_u64().unwrap() >= 3,
        "CDN AS, Googlebot IP and UA ignored: {s}"
    );

    let list = w.client.get("/api/v1/campaigns", &alpha).await.json();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let c = &items[0];
    assert_eq!(c["status"], "proposed");
    assert_eq!(
        member_ids(c),
        sorted(&[&w.a, &w.b, &w.c]),
        "the botnet's three incidents"
    );
    for other in [&w.d, &w.e] {
        assert!(
            !c.to_string().contains(other.as_str()),
            "unrelated incident grouped"
        );
    }
    let score = c["score"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&score), "{score}");
    assert_eq!(c["links"].as_array().unwrap().len(), 3, "{c}");
    let ev = &c["evidence"];
    assert!(ev["ip"]["shared"].as_u64().unwrap() >= 20, "{ev}");
    assert!(ev["net24"]["values"][0] == "198.51.100.0/24", "{ev}");
    assert_eq!(
        ev["user_agent"]["values"][0],
        "Mozilla/5.0 (X11; Linux) flood-kit/3"
    );
    assert!(
        ev.get("asn").is_none(),
        "the CDN's AS is not evidence: {ev}"
    );
    assert!(
        !c.to_string().contains("66.249.66.1"),
        "Googlebot is not evidence"
    );
    assert_eq!(c["first_seen"], "2024-03-05T10:00:00.000Z");
    assert_eq!(c["last_seen"], "2024-03-10T09:00:00.000Z");
    let id = c["id"].as_str().unwrap().to_string();

    // Running again changes nothing, not even the campaign's modification time.
    let again = w.db.recompute_campaigns(&Params::default()).await.unwrap();
    assert_eq!((again.groups, again.proposed_new, again.removed), (1, 0, 0));
    let same = w.db.campaign(&w.alpha, &id).await.unwrap();
    assert_eq!(same.updated_at, c["updated_at"].as_str().unwrap());

    // Deciding: a viewer may not, delta (no member) may not, bad input is a field error.
    let uri = format!("/api/v1/campaigns/{id}/decision");
    let viewer_token =
        w.db.create_token(None, w.alpha.outlet_id, "v", Role::Viewer)
            .await
            .unwrap();
    let r = w
        .client
        .json(
            Method::POST,
            &uri,
            &Auth::Bearer(viewer_token),
            &json!({"status": "confirmed"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = w
        .client
        .json(Method::POST, &uri, &delta, &json!({"status": "confirmed"}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "delta owns no member");
    let r = w
        .client
        .json(Method::POST, &uri, &beta, &json!({"status": "maybe"}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = w
        .client
        .send(
            Method::POST,
            &uri,
            &beta,
            Some("application/json"),
            b"{".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = w
        .client
        .json(Method::POST, &uri, &beta, &json!({"status": "rejected"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "rejected");
    assert_eq!(r.json()["decided_by"], "token:t");

    // A rejected group is not proposed again with the same members.
    let s = w.db.recompute_campaigns(&Params::default()).await.unwrap();
    assert_eq!((s.groups, s.proposed_new), (1, 0), "{s:?}");
    let proposed = w
        .client
        .get("/api/v1/campaigns?status=proposed", &alpha)
        .await
        .json();
    assert_eq!(proposed["items"].as_array().unwrap().len(), 0, "{proposed}");
    let rejected = w.db.campaigns(&w.alpha, Some("rejected")).await.unwrap();
    assert_eq!(rejected.len(), 1);
    let r = w.client.get("/api/v1/campaigns?status=nope", &alpha).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Changing one's mind is allowed and audited.
    let c =
        w.db.decide_campaign(&w.gamma, &id, "confirmed")
            .await
            .unwrap();
    assert_eq!(c.status, "confirmed");
    assert_eq!(c.decided_by.as_deref(), Some("user:editor@gamma.kz"));
    let log =
        w.db.audit_log(&actor(w.gamma.outlet_id, Role::Admin, "x"), 20)
            .await
            .unwrap();
    assert!(
        log.iter()
            .any(|e| e.action == "campaign.confirm" && e.object == id)
    );
    let _ = (&w.beta, &w.delta);
}

async fn fanout_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    // Four outlets, four incidents on one day, each seen from one and the same address.
    let mut ids = Vec::new();
    for n in 0..4 {
        let o = db
            .create_outlet(&format!("o{n}"), "o", "cli")
            .await
            .unwrap();
        let who = actor(o.id, Role::Editor, "user:e");
        let id = add(
            &db,
            &who,
            "x",
            "green",
            "2024-03-05T10:00:00Z",
            "2024-03-05T11:00:00Z",
        )
        .await;
        sight(&db, &who, &id, &[("ip", "192.0.2.99".to_string())]).await;
        ids.push((who, id));
    }
    // Under the default cap the shared address links all four.
    let s = db.recompute_campaigns(&Params::default()).await.unwrap();
    assert_eq!((s.groups, s.proposed_new), (1, 1), "{s:?}");
    let seen = db.campaigns(&ids[0].0, None).await.unwrap();
    assert_eq!(seen[0].members.len(), 4);
    // With the cap at 3, an address seen in 4 incidents is infrastructure: nothing is linked,
    // and the proposal that no longer holds is removed.
    let p = Params {
        max_fanout: 3,
        ..Params::default()
    };
    let s = db.recompute_campaigns(&p).await.unwrap();
    assert_eq!(s.infrastructure_skipped, 1, "{s:?}");
    assert_eq!((s.pairs, s.groups, s.removed), (0, 0, 1), "{s:?}");
    assert!(db.campaigns(&ids[0].0, None).await.unwrap().is_empty());
}

async fn tlp_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    w.db.recompute_campaigns(&Params::default()).await.unwrap();
    let id = w.db.campaigns(&w.alpha, None).await.unwrap()[0].id.clone();

    // gamma's incident becomes AMBER+STRICT: gamma still sees all three, alpha and delta see
    // alpha's and beta's only, with nothing of gamma's: no id, title, outlet or date.
    let patch: IncidentPatch = serde_json::from_value(json!({"tlp": "amber+strict"})).unwrap();
    w.db.update_incident(&w.gamma, &w.c, &patch).await.unwrap();
    let g = w.db.campaign(&w.gamma, &id).await.unwrap();
    assert_eq!(g.members.len(), 3);
    assert_eq!(g.tlp, "amber+strict");
    for (who, token) in [(&w.alpha, &w.tokens[0]), (&w.delta, &w.tokens[3])] {
        let v = w.db.campaign(who, &id).await.unwrap();
        let ids: Vec<&String> = v.members.iter().map(|m| &m.id).collect();
        assert_eq!(sorted(&ids), sorted(&[&w.a, &w.b]));
        assert_eq!(v.links.len(), 1);
        assert_eq!(v.tlp, "green");
        assert_eq!(
            v.last_seen, "2024-03-07T05:00:00.000Z",
            "gamma's date is not shown"
        );
        let text = w
            .client
            .get(
                &format!("/api/v1/campaigns/{id}"),
                &Auth::Bearer(token.clone()),
            )
            .await
            .text();
        for secret in [w.c.as_str(), "gamma", "Қазақ", "2024-03-10"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    // beta's incident too: alpha now sees one member only, so no campaign at all, and the
    // campaign answers exactly like one that does not exist.
    w.db.update_incident(&w.beta, &w.b, &patch).await.unwrap();
    assert!(w.db.campaigns(&w.alpha, None).await.unwrap().is_empty());
    let alpha = Auth::Bearer(w.tokens[0].clone());
    let hidden = w
        .client
        .get(&format!("/api/v1/campaigns/{id}"), &alpha)
        .await;
    let missing = w
        .client
        .get(
            "/api/v1/campaigns/6f1c1a52-0000-4000-8000-000000000000",
            &alpha,
        )
        .await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND);
    assert_eq!(
        (hidden.status, hidden.bytes.clone()),
        (missing.status, missing.bytes)
    );
    let r = w
        .client
        .json(
            Method::POST,
            &format!("/api/v1/campaigns/{id}/decision"),
            &alpha,
            &json!({"status": "rejected"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // beta sees its own and alpha's (GREEN), gamma its own and alpha's; neither the other's.
    let v = w.db.campaign(&w.beta, &id).await.unwrap();
    let ids: Vec<&String> = v.members.iter().map(|m| &m.id).collect();
    assert_eq!(sorted(&ids), sorted(&[&w.a, &w.b]));
    let v = w.db.campaign(&w.gamma, &id).await.unwrap();
    let ids: Vec<&String> = v.members.iter().map(|m| &m.id).collect();
    assert_eq!(sorted(&ids), sorted(&[&w.a, &w.c]));
    let _ = (&w.d, &w.e);
}

async fn web_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    w.db.recompute_campaigns(&Params::default()).await.unwrap();
    let id = w.db.campaigns(&w.beta, None).await.unwrap()[0].id.clone();
    let pw = "correct horse battery staple";
    w.db.create_user(None, w.beta.outlet_id, "ed@beta.kz", "Ed", pw, Role::Editor)
        .await
        .unwrap();
    w.db.create_user(
        None,
        w.delta.outlet_id,
        "ed@delta.kz",
        "Ed",
        pw,
        Role::Editor,
    )
    .await
    .unwrap();
    let (cookie, csrf) = w.client.login("ed@beta.kz", pw).await.unwrap();
    let s = Auth::Session(cookie, None);

    let page = w.client.get("/campaigns", &s).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    assert!(html.contains("Кампании"), "Russian by default");
    for want in [
        "Флуд поиска",
        "DDoS на главную",
        "Қазақ тіліндегі сайтқа шабуыл",
        "flood-kit/3",
        "198.51.100.0/24",
        "Подтвердить",
        "Отклонить",
        "/campaigns/recompute",
    ] {
        assert!(html.contains(want), "{want} missing");
    }
    for unwanted in ["Другая атака", "Повтор через два месяца", "<script"]
    {
        assert!(!html.contains(unwanted), "{unwanted} shown");
    }
    let kk = w.client.get("/campaigns?lang=kk", &s).await.text();
    assert!(kk.contains("Науқандар") && kk.contains("Растау"));

    // delta owns no member: no decision buttons, and a forged decision is refused.
    let (dcookie, dcsrf) = w.client.login("ed@delta.kz", pw).await.unwrap();
    let d = Auth::Session(dcookie, None);
    let dhtml = w.client.get("/campaigns", &d).await.text();
    assert!(dhtml.contains("flood-kit/3") && !dhtml.contains("Подтвердить"));

    let uri = format!("/campaigns/{id}/decision");
    let form = "application/x-www-form-urlencoded";
    let post = |auth: Auth, body: String| {
        let c = w.client.clone();
        let uri = uri.clone();
        async move {
            c.send(Method::POST, &uri, &auth, Some(form), body.into_bytes())
                .await
        }
    };
    let r = post(d.clone(), format!("csrf={dcsrf}&status=confirmed")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // No or a wrong CSRF field: refused before anything runs.
    let r = post(s.clone(), "status=confirmed".into()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = post(s.clone(), format!("csrf={dcsrf}&status=confirmed")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        w.db.campaign(&w.beta, &id).await.unwrap().status,
        "proposed"
    );
    // With it: done, and back to the list.
    let r = post(s.clone(), format!("csrf={csrf}&status=confirmed")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.header("location"), Some("/campaigns"));
    let c = w.db.campaign(&w.beta, &id).await.unwrap();
    assert_eq!(
        (c.status.as_str(), c.decided_by.as_deref()),
        ("confirmed", Some("user:ed@beta.kz"))
    );
    let html = w.client.get("/campaigns?status=confirmed", &s).await.text();
    assert!(html.contains("Подтверждена") && html.contains("ed@beta.kz"));
    let r = w
        .client
        .send(
            Method::POST,
            "/campaigns/recompute",
            &s,
            Some(form),
            format!("csrf={csrf}").into_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

async fn bundle(w: &World, token: &str, query: &str) -> Vec<Value> {
    let r = w
        .client
        .get(
            &format!("/api/v1/stix/bundle{query}"),
            &Auth::Bearer(token.to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["objects"].as_array().cloned().unwrap_or_default()
}

fn of_type<'a>(objs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["type"] == ty).collect()
}

async fn stix_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    w.db.recompute_campaigns(&Params::default()).await.unwrap();
    let id = w.db.campaigns(&w.alpha, None).await.unwrap()[0].id.clone();
    // A proposal is not exported.
    let objs = bundle(&w, &w.tokens[0], "").await;
    assert!(of_type(&objs, "campaign").is_empty());

    w.db.decide_campaign(&w.alpha, &id, "confirmed")
        .await
        .unwrap();
    let patch: IncidentPatch = serde_json::from_value(json!({"tlp": "amber+strict"})).unwrap();
    w.db.update_incident(&w.gamma, &w.c, &patch).await.unwrap();
    let cid = format!("campaign--{id}");
    for (n, who, want) in [
        (0, "alpha", vec![&w.a, &w.b]),
        (2, "gamma", vec![&w.a, &w.b, &w.c]),
    ] {
        let objs = bundle(&w, &w.tokens[n], "").await;
        let camps = of_type(&objs, "campaign");
        assert_eq!(camps.len(), 1, "{who}");
        let c = camps[0];
        assert_eq!(c["id"], cid.as_str());
        assert_eq!(c["spec_version"], "2.1");
        assert_eq!(c["first_seen"], "2024-03-05T10:00:00.000Z");
        let marking = if who == "gamma" {
            "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"
        } else {
            "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
        };
        assert_eq!(c["object_marking_refs"], json!([marking]), "{who}");
        let rels: Vec<&Value> = of_type(&objs, "relationship")
            .into_iter()
            .filter(|r| r["target_ref"] == cid.as_str())
            .collect();
        let mut members: Vec<String> = rels
            .iter()
            .filter(|r| r["relationship_type"] == "related-to")
            .map(|r| {
                r["source_ref"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("incident--")
                    .to_string()
            })
            .collect();
        members.sort();
        assert_eq!(members, sorted(&want), "{who}");
        assert!(
            rels.iter().any(|r| r["relationship_type"] == "indicates"),
            "{who}"
        );
        // Every reference resolves inside the bundle, markings included.
        let ids: std::collections::HashSet<&str> =
            objs.iter().map(|o| o["id"].as_str().unwrap()).collect();
        for r in &rels {
            for k in ["source_ref", "target_ref"] {
                assert!(
                    ids.contains(r[k].as_str().unwrap()),
                    "{who}: dangling {}",
                    r[k]
                );
            }
            assert!(ids.contains(r["object_marking_refs"][0].as_str().unwrap()));
        }
        if who == "alpha" {
            let text = serde_json::to_string(&objs).unwrap();
            assert!(
                !text.contains(w.c.as_str()),
                "gamma's incident leaked into alpha's bundle"
            );
        }
    }
    // An export of one incident carries the campaign with that member only.
    let objs = bundle(&w, &w.tokens[0], &format!("?incident={}", w.a)).await;
    let rel: Vec<&Value> = of_type(&objs, "relationship")
        .into_iter()
        .filter(|r| r["target_ref"] == cid.as_str() && r["relationship_type"] == "related-to")
        .collect();
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0]["source_ref"], format!("incident--{}", w.a));
}

async fn backup_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    w.db.recompute_campaigns(&Params::default()).await.unwrap();
    let id = w.db.campaigns(&w.alpha, None).await.unwrap()[0].id.clone();
    let before =
        w.db.decide_campaign(&w.beta, &id, "rejected")
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("atlas.backup");
    qalqan_atlas::backup::backup(&w.db, &file).await.unwrap();
    let Some(t2) = TestDb::new(kind).await else {
        return;
    };
    let db2 = t2.connect().await;
    qalqan_atlas::backup::restore(&db2, &file).await.unwrap();
    let after = db2.campaign(&w.alpha, &id).await.unwrap();
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        serde_json::to_value(&before).unwrap()
    );
    // The rejection holds in the restored atlas too.
    let s = db2.recompute_campaigns(&Params::default()).await.unwrap();
    assert_eq!((s.groups, s.proposed_new), (1, 0));
    assert_eq!(
        db2.campaign(&w.alpha, &id).await.unwrap().status,
        "rejected"
    );
}
