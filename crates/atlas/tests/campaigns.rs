//! Campaigns across outlets, on SQLite and PostgreSQL: one botnet hitting three outlets is
//! proposed as one campaign; attacks that share only warning-listed infrastructure (a CDN AS,
//! Googlebot's addresses and user agent), disjoint addresses, or the same botnet two months
//! later are not; an indicator over the fan-out cap links nothing; a rejected group is not
//! proposed again; a reader sees a campaign only through members it may see, and one it may not
//! see answers exactly like one that does not exist. Editors of a member outlet rename and
//! describe a campaign (API and page, CSRF, audit; viewers and outsiders may not), and TAXII
//! serves confirmed campaigns exactly as the export does, under the same TLP rule: a partner
//! with fewer rights sees neither a campaign whose other members it may not see, nor anything of
//! a member it may not see, in TAXII, in the export or on the pages.

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
    editors_rename_and_describe => rename_story,
    a_named_proposal_keeps_its_name_when_its_group_grows => grow_story,
    taxii_serves_campaigns_as_exported => taxii_story,
    fewer_rights_see_no_hidden_member_anywhere => rights_matrix_story,
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
    // A name and a description, and a publication with a summary: all kept by the backup.
    w.db.edit_campaign(
        &w.beta,
        &id,
        &serde_json::from_value(json!({"name": "Весна", "description": "Две\nстроки"})).unwrap(),
    )
    .await
    .unwrap();
    let publication: qalqan_atlas::store::PublicationIn = serde_json::from_value(json!({
        "url": "https://beta.example/a", "title": "Статья", "published_at": "2024-03-06",
        "summary": "Лид статьи",
    }))
    .unwrap();
    w.db.add_publication(&w.beta, &publication).await.unwrap();
    let before =
        w.db.decide_campaign(&w.beta, &id, "rejected")
            .await
            .unwrap();
    assert_eq!(
        (before.name.as_str(), before.description.as_str()),
        ("Весна", "Две\nстроки")
    );
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
    let pubs = db2
        .publications(&w.alpha, Some("beta"), 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0].summary, "Лид статьи");
    // The rejection holds in the restored atlas too.
    let s = db2.recompute_campaigns(&Params::default()).await.unwrap();
    assert_eq!((s.groups, s.proposed_new), (1, 0));
    assert_eq!(
        db2.campaign(&w.alpha, &id).await.unwrap().status,
        "rejected"
    );
}

// ---------------------------------------------------------------------------------------------
// Names and descriptions.

async fn audit_has(db: &Db, outlet_id: i64, action: &str, object: &str) -> Vec<String> {
    db.audit_log(&actor(outlet_id, Role::Admin, "x"), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == action && e.object == object)
        .map(|e| e.detail)
        .collect()
}

async fn rename_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    w.db.recompute_campaigns(&Params::default()).await.unwrap();
    let before = w.db.campaigns(&w.alpha, None).await.unwrap()[0].clone();
    let id = before.id.clone();
    assert!(before.name.starts_with("C-") && before.description.is_empty());
    let uri = format!("/api/v1/campaigns/{id}");
    let alpha = Auth::Bearer(w.tokens[0].clone());
    let delta = Auth::Bearer(w.tokens[3].clone());
    let viewer = Auth::Bearer(
        w.db.create_token(None, w.alpha.outlet_id, "v", Role::Viewer)
            .await
            .unwrap(),
    );
    let body =
        json!({"name": "Весенний ботнет", "description": "Три редакции, одна сеть.\nДве строки."});

    // Viewers may not, an outlet without a member may not, nothing changes.
    let r = w.client.json(Method::PATCH, &uri, &viewer, &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = w.client.json(Method::PATCH, &uri, &delta, &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "delta owns no member");
    assert!(matches!(
        w.db.edit_campaign(
            &actor(w.alpha.outlet_id, Role::Viewer, "v"),
            &id,
            &serde_json::from_value(body.clone()).unwrap()
        )
        .await,
        Err(qalqan_atlas::Error::Forbidden)
    ));
    assert_eq!(
        w.db.campaign(&w.alpha, &id).await.unwrap().name,
        before.name
    );

    // Bad input: field errors, all at once; bad JSON 400.
    for (bad, fields) in [
        (json!({"name": "  "}), vec!["name"]),
        (json!({"name": "я".repeat(201)}), vec!["name"]),
        (json!({"name": "a\u{0007}b"}), vec!["name"]),
        (json!({}), vec!["name"]),
        (
            json!({"name": "", "description": "д".repeat(4001)}),
            vec!["name", "description"],
        ),
        (json!({"description": "bell\u{0007}"}), vec!["description"]),
    ] {
        let r = w.client.json(Method::PATCH, &uri, &alpha, &bad).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.text()
        );
        let got: Vec<String> = r.json()["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, fields, "{bad}");
    }
    let r = w
        .client
        .send(
            Method::PATCH,
            &uri,
            &alpha,
            Some("application/json"),
            b"{".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = w
        .client
        .json(
            Method::PATCH,
            &uri,
            &alpha,
            &json!({"name": "x", "status": "confirmed"}),
        )
        .await;
    assert!(r.status.is_client_error(), "unknown fields are refused");
    assert_eq!(
        w.db.campaign(&w.alpha, &id).await.unwrap().name,
        before.name
    );

    // A proposal is renamed: stored, shown, audited with the old and the new name.
    let r = w.client.json(Method::PATCH, &uri, &alpha, &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c = r.json();
    assert_eq!(c["name"], "Весенний ботнет");
    assert_eq!(c["description"], "Три редакции, одна сеть.\nДве строки.");
    assert!(c["updated_at"].as_str().unwrap() > before.updated_at.as_str());
    let other = w.db.campaign(&w.beta, &id).await.unwrap();
    assert_eq!(
        other.name, "Весенний ботнет",
        "every reader sees the new name"
    );
    let log = audit_has(&w.db, w.alpha.outlet_id, "campaign.rename", &id).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0].contains(&before.name) && log[0].contains("Весенний ботнет"),
        "{log:?}"
    );
    // The longest name passes; only the description may change.
    let long = "я".repeat(200);
    let r = w
        .client
        .json(Method::PATCH, &uri, &alpha, &json!({"name": long}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let c =
        w.db.edit_campaign(
            &w.gamma,
            &id,
            &serde_json::from_value(json!({"description": ""})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        (c.name.as_str(), c.description.as_str()),
        (long.as_str(), "")
    );
    assert_eq!(
        audit_has(&w.db, w.gamma.outlet_id, "campaign.rename", &id)
            .await
            .len(),
        1
    );

    // Confirmed: the export carries the name and description, `modified` moves on rename.
    w.db.decide_campaign(&w.beta, &id, "confirmed")
        .await
        .unwrap();
    let cid = format!("campaign--{id}");
    let exported = |objs: Vec<Value>| objs.into_iter().find(|o| o["id"] == cid.as_str()).unwrap();
    let old = exported(bundle(&w, &w.tokens[0], "").await);
    assert_eq!(old["name"], long.as_str());
    assert!(
        old["description"]
            .as_str()
            .unwrap()
            .starts_with("Attacks on 3 outlets")
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    let r = w
        .client
        .json(
            Method::PATCH,
            &uri,
            &Auth::Bearer(w.tokens[1].clone()),
            &json!({"name": "Кампания «Весна»", "description": "Описание для партнёров"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let new = exported(bundle(&w, &w.tokens[0], "").await);
    assert_eq!(new["name"], "Кампания «Весна»");
    assert_eq!(new["description"], "Описание для партнёров");
    assert!(
        new["modified"].as_str().unwrap() > old["modified"].as_str().unwrap(),
        "{old} {new}"
    );
    assert_eq!(new["created"], old["created"]);

    // Rejected: no more renaming (409), and the page offers no form.
    w.db.decide_campaign(&w.beta, &id, "rejected")
        .await
        .unwrap();
    let r = w.client.json(Method::PATCH, &uri, &alpha, &body).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());

    // A campaign the caller may not see: 404 whatever it sends, like one that does not exist.
    let r = w
        .client
        .json(
            Method::PATCH,
            "/api/v1/campaigns/6f1c1a52-0000-4000-8000-000000000000",
            &alpha,
            &body,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The page: a form for editors of member outlets, CSRF-checked, escaped output.
    w.db.decide_campaign(&w.beta, &id, "confirmed")
        .await
        .unwrap();
    let pw = "correct horse battery staple";
    for (email, outlet, role) in [
        ("ed@beta.kz", w.beta.outlet_id, Role::Editor),
        ("view@beta.kz", w.beta.outlet_id, Role::Viewer),
        ("ed@delta.kz", w.delta.outlet_id, Role::Editor),
    ] {
        w.db.create_user(None, outlet, email, "U", pw, role)
            .await
            .unwrap();
    }
    let (cookie, csrf) = w.client.login("ed@beta.kz", pw).await.unwrap();
    let ed = Auth::Session(cookie, None);
    let page = w.client.get(&format!("/campaigns/{id}"), &ed).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    for want in [
        "Кампания «Весна»",
        "Описание для партнёров",
        "Название и описание",
        &format!("action=\"/campaigns/{id}/edit\""),
        "Флуд поиска",
    ] {
        assert!(html.contains(want), "{want} missing");
    }
    let en = w
        .client
        .get(&format!("/campaigns/{id}?lang=en"), &ed)
        .await
        .text();
    assert!(en.contains("Name and description") && en.contains("Save"));
    let kk = w
        .client
        .get(&format!("/campaigns/{id}?lang=kk"), &ed)
        .await
        .text();
    assert!(kk.contains("Атауы мен сипаттамасы") && kk.contains("Сақтау"));
    let list = w.client.get("/campaigns", &ed).await.text();
    assert!(
        list.contains(&format!("href=\"/campaigns/{id}\""))
            && list.contains("Описание для партнёров")
    );

    let edit_uri = format!("/campaigns/{id}/edit");
    let form = "application/x-www-form-urlencoded";
    let post = |auth: Auth, body: String| {
        let c = w.client.clone();
        let uri = edit_uri.clone();
        async move {
            c.send(Method::POST, &uri, &auth, Some(form), body.into_bytes())
                .await
        }
    };
    let fields = "name=%3Cscript%3Ealert(1)%3C%2Fscript%3E+%D0%92%D0%B5%D1%81%D0%BD%D0%B0&description=%D0%A1%D1%82%D1%80%D0%BE%D0%BA%D0%B0+1%0D%0A%D0%A1%D1%82%D1%80%D0%BE%D0%BA%D0%B0+2";
    // No CSRF field, or another session's: refused before anything runs.
    let r = post(ed.clone(), fields.to_string()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (vcookie, vcsrf) = w.client.login("view@beta.kz", pw).await.unwrap();
    let vs = Auth::Session(vcookie, None);
    let r = post(ed.clone(), format!("csrf={vcsrf}&{fields}")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A viewer with its own CSRF token: not allowed, and no form on its page.
    let r = post(vs.clone(), format!("csrf={vcsrf}&{fields}")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let vhtml = w.client.get(&format!("/campaigns/{id}"), &vs).await.text();
    assert!(!vhtml.contains(&format!("/campaigns/{id}/edit")));
    // delta sees the campaign (all GREEN) but owns no member: no form, and refused.
    let (dcookie, dcsrf) = w.client.login("ed@delta.kz", pw).await.unwrap();
    let ds = Auth::Session(dcookie, None);
    let dhtml = w.client.get(&format!("/campaigns/{id}"), &ds).await.text();
    assert!(
        dhtml.contains("Кампания «Весна»") && !dhtml.contains(&format!("/campaigns/{id}/edit"))
    );
    let r = post(ds.clone(), format!("csrf={dcsrf}&{fields}")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        w.db.campaign(&w.beta, &id).await.unwrap().name,
        "Кампания «Весна»"
    );
    // An empty name through the page: the field error, nothing stored.
    let r = post(ed.clone(), format!("csrf={csrf}&name=+&description=")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    // With the session's CSRF token: stored, and back to the campaign's page.
    let r = post(ed.clone(), format!("csrf={csrf}&{fields}")).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("/campaigns/{id}").as_str())
    );
    let c = w.db.campaign(&w.alpha, &id).await.unwrap();
    assert_eq!(c.name, "<script>alert(1)</script> Весна");
    assert_eq!(c.description, "Строка 1\nСтрока 2");
    let html = w.client.get(&format!("/campaigns/{id}"), &ed).await.text();
    assert!(!html.contains("<script>alert(1)"), "the name is escaped");
    assert!(html.contains("&lt;script&gt;alert(1)") || html.contains("&#60;script&#62;alert(1)"));
    assert!(html.contains("Строка 1<br>Строка 2"));
    assert_eq!(
        audit_has(&w.db, w.beta.outlet_id, "campaign.rename", &id)
            .await
            .len(),
        2,
        "the API rename and the page's"
    );
    // A campaign page the reader may not see is "not found".
    let r = w
        .client
        .get("/campaigns/6f1c1a52-0000-4000-8000-000000000000", &ed)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// TAXII.

const TAXII_OBJECTS: &str = "/taxii2/api/collections/8a3a9f8e-5c1e-4b7e-9d2a-61c3f0b7a2d4/objects/";

/// Walks a TAXII listing (`objects/` or `manifest/` with `query`) in pages of `limit`,
/// following `next`; returns the items and the last page's `X-TAXII-Date-Added-Last`.
async fn taxii_walk(
    w: &World,
    token: &str,
    path: &str,
    query: &str,
    limit: usize,
) -> (Vec<Value>, Option<String>) {
    let auth = Auth::Bearer(token.to_string());
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    let mut last = None;
    for _ in 0..5_000 {
        let mut uri = format!("{path}?limit={limit}{query}");
        if let Some(n) = &next {
            uri.push_str(&format!("&next={n}"));
        }
        let r = w.client.get(&uri, &auth).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
        if let Some(h) = r.header("x-taxii-date-added-last") {
            last = Some(h.to_string());
        }
        let env = r.json();
        let page = env["objects"].as_array().cloned().unwrap_or_default();
        if env["more"] == true {
            assert_eq!(page.len(), limit, "a page with more after it is full");
        }
        out.extend(page);
        match env["next"].as_str() {
            Some(n) if env["more"] == true => next = Some(n.to_string()),
            _ => return (out, last),
        }
    }
    panic!("TAXII paging does not end");
}

/// The objects of a campaign in a set: itself and the relationships to it, sorted.
fn campaign_part(objs: &[Value], cid: &str) -> Vec<Value> {
    let mut v: Vec<Value> = objs
        .iter()
        .filter(|o| o["id"] == cid || o["target_ref"] == cid)
        .cloned()
        .collect();
    v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    v
}

async fn taxii_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    w.db.recompute_campaigns(&Params::default()).await.unwrap();
    let id = w.db.campaigns(&w.alpha, None).await.unwrap()[0].id.clone();
    let cid = format!("campaign--{id}");
    // A proposal is served by neither.
    let (objs, _) = taxii_walk(&w, &w.tokens[0], TAXII_OBJECTS, "", 1000).await;
    assert!(campaign_part(&objs, &cid).is_empty());
    w.db.decide_campaign(&w.alpha, &id, "confirmed")
        .await
        .unwrap();

    for n in [0usize, 3] {
        let token = &w.tokens[n];
        let exported = bundle(&w, token, "").await;
        let want = campaign_part(&exported, &cid);
        assert!(
            want.len() > 4,
            "campaign, three members, indicators: {}",
            want.len()
        );
        // In pages of 5 (so pages end inside the campaign's row of objects) and of 1000.
        for limit in [5, 1000] {
            let (objs, _) = taxii_walk(&w, token, TAXII_OBJECTS, "", limit).await;
            let ids: std::collections::BTreeSet<&str> =
                objs.iter().map(|o| o["id"].as_str().unwrap()).collect();
            assert_eq!(ids.len(), objs.len(), "each object once (limit {limit})");
            assert_eq!(
                campaign_part(&objs, &cid),
                want,
                "TAXII = export (limit {limit})"
            );
            // Every reference of the campaign's objects resolves in the collection.
            for o in &want {
                for k in ["source_ref", "target_ref"] {
                    if let Some(r) = o[k].as_str() {
                        assert!(ids.contains(r), "dangling {r}");
                    }
                }
                assert!(ids.contains(o["object_marking_refs"][0].as_str().unwrap()));
            }
        }
        // By type, by id, versions, manifest.
        let (camps, _) = taxii_walk(&w, token, TAXII_OBJECTS, "&match[type]=campaign", 1).await;
        assert_eq!(camps.len(), 1);
        assert_eq!(
            camps[0],
            want.iter()
                .find(|o| o["id"] == cid.as_str())
                .cloned()
                .unwrap()
        );
        let (rels, _) = taxii_walk(&w, token, TAXII_OBJECTS, "&match[type]=relationship", 7).await;
        assert_eq!(
            campaign_part(&rels, &cid),
            want.iter()
                .filter(|o| o["type"] == "relationship")
                .cloned()
                .collect::<Vec<_>>()
        );
        let auth = Auth::Bearer(token.clone());
        let r = w.client.get(&format!("{TAXII_OBJECTS}{cid}/"), &auth).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["objects"], json!([camps[0].clone()]));
        let r = w
            .client
            .get(&format!("{TAXII_OBJECTS}{cid}/versions/"), &auth)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["versions"], json!([camps[0]["modified"].clone()]));
        let rel_id = want.iter().find(|o| o["type"] == "relationship").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = w
            .client
            .get(&format!("{TAXII_OBJECTS}{rel_id}/"), &auth)
            .await;
        assert_eq!(r.status, StatusCode::OK, "a campaign's relationship by id");
        let manifest = TAXII_OBJECTS.replace("objects/", "manifest/");
        let (m, _) = taxii_walk(&w, token, &manifest, "", 9).await;
        let mids: Vec<&str> = m.iter().map(|x| x["id"].as_str().unwrap()).collect();
        for o in &want {
            assert!(
                mids.contains(&o["id"].as_str().unwrap()),
                "manifest lacks {}",
                o["id"]
            );
        }
        let (m, _) = taxii_walk(&w, token, &manifest, "&match[type]=campaign", 10).await;
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["version"], camps[0]["modified"]);
    }

    // `added_after` the last object seen: nothing; after a rename, the campaign and its
    // relationships, and nothing else.
    let (_, last) = taxii_walk(&w, &w.tokens[0], TAXII_OBJECTS, "", 1000).await;
    let last = last.unwrap();
    let (none, _) = taxii_walk(
        &w,
        &w.tokens[0],
        TAXII_OBJECTS,
        &format!("&added_after={last}"),
        10,
    )
    .await;
    assert!(none.is_empty(), "{none:?}");
    std::thread::sleep(std::time::Duration::from_millis(5));
    w.db.edit_campaign(
        &w.beta,
        &id,
        &serde_json::from_value(json!({"name": "Весна"})).unwrap(),
    )
    .await
    .unwrap();
    let (newer, _) = taxii_walk(
        &w,
        &w.tokens[0],
        TAXII_OBJECTS,
        &format!("&added_after={last}"),
        4,
    )
    .await;
    let want = campaign_part(&bundle(&w, &w.tokens[0], "").await, &cid);
    assert_eq!(campaign_part(&newer, &cid), want);
    assert_eq!(
        newer.len(),
        want.len(),
        "only the campaign's objects are new"
    );
    assert_eq!(
        want.iter().find(|o| o["id"] == cid.as_str()).unwrap()["name"],
        "Весна"
    );
}

/// A partner with fewer rights, everywhere a campaign shows: TAXII (objects, by id, versions,
/// manifest), the STIX export, the campaign pages and the API.
async fn rights_matrix_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    w.db.recompute_campaigns(&Params::default()).await.unwrap();
    let id = w.db.campaigns(&w.alpha, None).await.unwrap()[0].id.clone();
    let cid = format!("campaign--{id}");
    w.db.decide_campaign(&w.alpha, &id, "confirmed")
        .await
        .unwrap();
    let pw = "correct horse battery staple";
    for (email, outlet) in [
        ("ed@alpha.kz", w.alpha.outlet_id),
        ("ed@gamma.kz", w.gamma.outlet_id),
    ] {
        w.db.create_user(None, outlet, email, "U", pw, Role::Editor)
            .await
            .unwrap();
    }
    let (acookie, _) = w.client.login("ed@alpha.kz", pw).await.unwrap();
    let alpha_page = Auth::Session(acookie, None);
    let (gcookie, _) = w.client.login("ed@gamma.kz", pw).await.unwrap();
    let gamma_page = Auth::Session(gcookie, None);
    let strict: IncidentPatch = serde_json::from_value(json!({"tlp": "amber+strict"})).unwrap();

    // Everything a reader can get about campaigns, as one text per channel.
    async fn channels(
        w: &World,
        token: &str,
        page: &Auth,
        id: &str,
    ) -> Vec<(&'static str, String)> {
        let cid = format!("campaign--{id}");
        let auth = Auth::Bearer(token.to_string());
        let (objs, _) = taxii_walk(w, token, TAXII_OBJECTS, "", 6).await;
        let manifest = TAXII_OBJECTS.replace("objects/", "manifest/");
        let (m, _) = taxii_walk(w, token, &manifest, "", 50).await;
        let by_id = w.client.get(&format!("{TAXII_OBJECTS}{cid}/"), &auth).await;
        let versions = w
            .client
            .get(&format!("{TAXII_OBJECTS}{cid}/versions/"), &auth)
            .await;
        let exported = bundle(w, token, "").await;
        let list = w.client.get("/campaigns", page).await;
        let one = w.client.get(&format!("/campaigns/{id}"), page).await;
        let api = w.client.get("/api/v1/campaigns", &auth).await;
        vec![
            (
                "taxii objects",
                serde_json::to_string(&campaign_part(&objs, &cid)).unwrap(),
            ),
            ("taxii manifest", serde_json::to_string(&m).unwrap()),
            ("taxii by id", format!("{} {}", by_id.status, by_id.text())),
            (
                "taxii versions",
                format!("{} {}", versions.status, versions.text()),
            ),
            (
                "export",
                serde_json::to_string(&campaign_part(&exported, &cid)).unwrap(),
            ),
            ("campaigns page", list.text()),
            ("campaign page", format!("{} {}", one.status, one.text())),
            ("api", api.text()),
        ]
    }

    // gamma's incident becomes AMBER+STRICT: alpha still sees the campaign (its and beta's
    // incidents are linked), but nowhere anything of gamma's incident.
    w.db.update_incident(&w.gamma, &w.c, &strict).await.unwrap();
    for (channel, text) in channels(&w, &w.tokens[0], &alpha_page, &id).await {
        if channel == "taxii versions" {
            assert!(text.starts_with("200"), "alpha: {channel}: {text}");
        } else {
            assert!(text.contains(&id), "alpha: {channel} lacks the campaign");
        }
        assert!(
            !text.contains(w.c.as_str()),
            "alpha: {channel} shows gamma's incident"
        );
        assert!(
            !text.contains("Қазақ тіліндегі"),
            "alpha: {channel} shows gamma's title"
        );
    }
    // gamma sees all three.
    let g = campaign_part(&bundle(&w, &w.tokens[2], "").await, &cid);
    assert!(serde_json::to_string(&g).unwrap().contains(w.c.as_str()));

    // beta's too: alpha may see only its own member, so the campaign groups incidents alpha
    // cannot see, and alpha sees it nowhere: not listed, not by id (404 as for a campaign that
    // does not exist), not in the manifest, not in the export.
    w.db.update_incident(&w.beta, &w.b, &strict).await.unwrap();
    for (channel, text) in channels(&w, &w.tokens[0], &alpha_page, &id).await {
        // (The "not found" page of `/campaigns/{id}` names the address asked for in its
        // language links; it is checked for its status and for the members below.)
        assert!(
            channel == "campaign page" || !text.contains(&id),
            "alpha: {channel} shows the campaign: {}",
            text.chars().take(300).collect::<String>()
        );
        assert!(
            !text.contains(w.b.as_str()) && !text.contains(w.c.as_str()),
            "alpha: {channel}"
        );
        if channel.starts_with("taxii by") || channel.starts_with("taxii versions") {
            assert!(text.starts_with("404"), "alpha: {channel}: {text}");
        }
        if channel == "campaign page" {
            assert!(text.starts_with("404"), "alpha: {channel}");
        }
    }
    // delta (no member, GREEN only) likewise; gamma sees its own and alpha's member.
    for (channel, text) in channels(&w, &w.tokens[3], &alpha_page, &id).await {
        if channel.starts_with("taxii") || channel == "export" || channel == "api" {
            assert!(!text.contains(&id), "delta: {channel} shows the campaign");
        }
    }
    for (channel, text) in channels(&w, &w.tokens[2], &gamma_page, &id).await {
        if channel == "taxii versions" {
            assert!(text.starts_with("200"), "gamma: {channel}: {text}");
        } else {
            assert!(text.contains(&id), "gamma: {channel} lacks the campaign");
        }
        assert!(
            text.contains(w.c.as_str()) || !channel.starts_with("taxii o"),
            "gamma: {channel}"
        );
        assert!(
            !text.contains(w.b.as_str()),
            "gamma: {channel} shows beta's incident"
        );
    }
}

/// An editor names a proposal; the botnet then hits a fourth incident and the group grows. The
/// next run keeps the proposal (same id, name, description) with the new member, instead of
/// replacing it with a fresh `C-…` one; an unnamed proposal whose group changes is replaced.
async fn grow_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let w = world(&t).await;
    w.db.recompute_campaigns(&Params::default()).await.unwrap();
    let before = w.db.campaigns(&w.alpha, None).await.unwrap()[0].clone();
    assert_eq!(before.members.len(), 3);
    let edit: qalqan_atlas::campaigns::CampaignEdit =
        serde_json::from_value(json!({"name": "Весенний ботнет", "description": "Одна сеть."}))
            .unwrap();
    w.db.edit_campaign(&w.alpha, &before.id, &edit)
        .await
        .unwrap();

    // The same botnet at delta, within the week.
    let f = add(
        &w.db,
        &w.delta,
        "Ещё одна редакция",
        "green",
        "2024-03-08T10:00:00Z",
        "2024-03-08T12:00:00Z",
    )
    .await;
    sight(&w.db, &w.delta, &f, &botnet(5, 45)).await;
    let s = w.db.recompute_campaigns(&Params::default()).await.unwrap();
    assert_eq!(s.proposed_new, 0, "no new proposal: {s:?}");
    assert_eq!(s.removed, 0, "{s:?}");
    let after = w.db.campaigns(&w.alpha, None).await.unwrap();
    assert_eq!(after.len(), 1);
    let c = &after[0];
    assert_eq!(c.id, before.id, "the same proposal");
    assert_eq!(c.name, "Весенний ботнет");
    assert_eq!(c.description, "Одна сеть.");
    assert_eq!(c.members.len(), 4, "the fourth incident joined");

    // Without a name the grown group is a new proposal and the old one goes.
    let t2 = TestDb::new(kind).await.expect("the same backend again");
    let w2 = world(&t2).await;
    w2.db.recompute_campaigns(&Params::default()).await.unwrap();
    let plain = w2.db.campaigns(&w2.alpha, None).await.unwrap()[0].clone();
    let f2 = add(
        &w2.db,
        &w2.delta,
        "Ещё одна редакция",
        "green",
        "2024-03-08T10:00:00Z",
        "2024-03-08T12:00:00Z",
    )
    .await;
    sight(&w2.db, &w2.delta, &f2, &botnet(5, 45)).await;
    let s = w2.db.recompute_campaigns(&Params::default()).await.unwrap();
    assert_eq!((s.proposed_new, s.removed), (1, 1), "{s:?}");
    let now = w2.db.campaigns(&w2.alpha, None).await.unwrap();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].id, plain.id);
    assert_eq!(now[0].members.len(), 4);
}
