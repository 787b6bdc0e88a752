//! The store suite: "story" tests written once and run against both backends (a fresh SQLite
//! file, and a fresh PostgreSQL database of its own), so SQLite and PostgreSQL keep answering
//! the same way. The last test moves a populated atlas SQLite → PostgreSQL → SQLite through the
//! backup format and compares every API answer.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::{Auth, Client, Kind, TestDb, actor};
use http::StatusCode;
use qalqan_atlas::Error;
use qalqan_atlas::model::{Role, Tlp, parse_time};
use qalqan_atlas::store::{
    EpisodeSignal, IncidentIn, IncidentPatch, ListFilter, PublicationIn, SightingIn,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

both_backends! {
    accounts => accounts_story,
    incidents_and_filters => incidents_story,
    cursor_paging => paging_story,
    sightings_and_ingest => sightings_story,
    indicator_dedup => indicator_dedup_story,
    attachments_and_custody => attachments_story,
    publications_upsert => publications_story,
    logs_are_append_only => append_only_story,
    search_plans => search_plans_story,
}

fn incident(kind: &str, title: &str, tlp: &str, started: &str) -> IncidentIn {
    serde_json::from_value(json!({
        "kind": kind, "title": title, "tlp": tlp, "started_at": started,
    }))
    .expect("incident input")
}

fn sighting(kind: &str, value: &str, count: i64) -> SightingIn {
    serde_json::from_value(json!({"kind": kind, "value": value, "count": count})).expect("sighting")
}

fn fields(e: &Error) -> Vec<String> {
    match e {
        Error::Invalid(f) => f.iter().map(|f| f.field.clone()).collect(),
        other => panic!("expected invalid input, got {other:?}"),
    }
}

async fn count(db: &qalqan_atlas::Db, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn list_filter(v: Value) -> ListFilter {
    serde_json::from_value(v).expect("filter")
}

async fn titles(db: &qalqan_atlas::Db, who: &qalqan_atlas::Actor, f: Value) -> Vec<String> {
    db.incidents(who, &list_filter(f))
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|i| i.title)
        .collect()
}

async fn accounts_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    // Every migration of the backend is recorded, and connecting again applies none twice.
    let dir = match kind {
        Kind::Sqlite => "sqlite",
        Kind::Postgres => "postgres",
    };
    let files = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dir),
    )
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
    })
    .count() as i64;
    assert!(files >= 2);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM _sqlx_migrations WHERE success").await,
        files
    );
    let again = t.connect().await;
    assert_eq!(
        count(&again, "SELECT COUNT(*) FROM _sqlx_migrations").await,
        files
    );
    again.close().await;

    db.set_task_force("Медиа-альянс").await.unwrap();
    db.set_task_force("Медиа-альянс КЗ").await.unwrap();
    assert_eq!(
        db.task_force().await.unwrap().as_deref(),
        Some("Медиа-альянс КЗ")
    );

    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let b = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    assert!(matches!(
        db.create_outlet("kursiv", "x", "cli").await,
        Err(Error::Conflict(_))
    ));
    let e = db.create_outlet("Bad Slug", "", "cli").await.unwrap_err();
    assert_eq!(fields(&e), ["slug", "name"]);
    let slugs: Vec<_> = db
        .outlets()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.slug)
        .collect();
    assert_eq!(slugs, ["kursiv", "vlast"]);
    assert_eq!(db.outlet_by_slug("vlast").await.unwrap().id, b.id);
    assert!(matches!(
        db.outlet_by_slug("nope").await,
        Err(Error::NotFound)
    ));
    // New outlets share nothing automatically until their admin says so.
    assert_eq!(a.auto_tlp, Tlp::AmberStrict);

    // Members: checked input, unique e-mail (case-insensitive), only admins of the same outlet.
    let pw = "correct horse battery";
    let e = db
        .create_user(None, a.id, "no-at-sign", "X", "short", Role::Editor)
        .await
        .unwrap_err();
    assert_eq!(fields(&e), ["email", "password"]);
    let e = db
        .create_user(None, a.id, "x@kursiv.media", "X", pw, Role::Ingest)
        .await
        .unwrap_err();
    assert_eq!(fields(&e), ["role"]);
    let m = db
        .create_user(
            None,
            a.id,
            " Editor@Kursiv.Media ",
            "Редактор",
            pw,
            Role::Editor,
        )
        .await
        .unwrap();
    assert_eq!(m.email, "editor@kursiv.media");
    assert!(matches!(
        db.create_user(None, a.id, "EDITOR@kursiv.media", "Y", pw, Role::Viewer)
            .await,
        Err(Error::Conflict(_))
    ));
    let admin_b = actor(b.id, Role::Admin, "user:admin@vlast.kz");
    assert!(matches!(
        db.create_user(
            Some(&admin_b),
            a.id,
            "intruder@vlast.kz",
            "I",
            pw,
            Role::Admin
        )
        .await,
        Err(Error::Forbidden)
    ));
    let editor_a = actor(a.id, Role::Editor, "user:editor@kursiv.media");
    assert!(matches!(
        db.create_user(
            Some(&editor_a),
            a.id,
            "friend@kursiv.media",
            "F",
            pw,
            Role::Admin
        )
        .await,
        Err(Error::Forbidden)
    ));
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
        .bind("editor@kursiv.media")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        stored.starts_with("$argon2id$"),
        "password stored as {stored:.12}…"
    );

    // Sessions: the same error for a wrong password and an unknown e-mail; the secret is kept
    // only as a hash; logout ends it.
    assert!(matches!(
        db.login("editor@kursiv.media", "wrong password!").await,
        Err(Error::Unauthenticated)
    ));
    assert!(matches!(
        db.login("nobody@kursiv.media", pw).await,
        Err(Error::Unauthenticated)
    ));
    let (secret, csrf, who) = db.login("EDITOR@kursiv.media", pw).await.unwrap();
    assert_eq!((who.outlet_id, who.role), (a.id, Role::Editor));
    let (again, csrf2) = db.session(&secret).await.unwrap();
    assert_eq!(
        (again.outlet_id, again.role, csrf2),
        (a.id, Role::Editor, csrf.clone())
    );
    assert_eq!(again.label, "user:editor@kursiv.media");
    let leaked = count(
        &db,
        &format!(
            "SELECT COUNT(*) FROM sessions WHERE token_hash = '{secret}' OR csrf = '{secret}'"
        ),
    )
    .await;
    assert_eq!(leaked, 0, "the session secret is stored in clear");
    assert!(matches!(
        db.session("not-a-session").await,
        Err(Error::Unauthenticated)
    ));
    db.logout(&secret).await.unwrap();
    assert!(matches!(
        db.session(&secret).await,
        Err(Error::Unauthenticated)
    ));

    // API tokens: shown once, stored hashed, resolved to outlet, role and name.
    let tok = db
        .create_token(None, a.id, "shield-1", Role::Ingest)
        .await
        .unwrap();
    assert!(tok.starts_with("qat_") && tok.len() > 40, "{tok}");
    let who = db.token(&tok).await.unwrap();
    assert_eq!(
        (who.outlet_id, who.role, who.label.as_str()),
        (a.id, Role::Ingest, "token:shield-1")
    );
    assert!(matches!(
        db.token("qat_wrong").await,
        Err(Error::Unauthenticated)
    ));
    let leaked = count(
        &db,
        &format!("SELECT COUNT(*) FROM api_tokens WHERE token_hash = '{tok}'"),
    )
    .await;
    assert_eq!(leaked, 0);
    assert!(matches!(
        db.create_token(Some(&admin_b), a.id, "stolen", Role::Admin)
            .await,
        Err(Error::Forbidden)
    ));

    // Sharing settings: admins only, own outlet dropped from its need-to-know list, unknown
    // outlets named by index.
    let admin_a = actor(a.id, Role::Admin, "user:admin@kursiv.media");
    assert!(matches!(
        db.set_sharing(&editor_a, Tlp::Green, &[]).await,
        Err(Error::Forbidden)
    ));
    let e = db
        .set_sharing(&admin_a, Tlp::Green, &["vlast".into(), "nope".into()])
        .await
        .unwrap_err();
    assert_eq!(fields(&e), ["need_to_know[1]"]);
    db.set_sharing(
        &admin_a,
        Tlp::Green,
        &["vlast".into(), "kursiv".into(), "vlast".into()],
    )
    .await
    .unwrap();
    assert_eq!(db.need_to_know(a.id).await.unwrap(), ["vlast"]);
    assert_eq!(db.outlet(a.id).await.unwrap().auto_tlp, Tlp::Green);

    // Every change above is in outlet A's audit log, newest first, and none of B's.
    let log = db.audit_log(&admin_a, 100).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "outlet.sharing",
            "token.create",
            "session.login",
            "member.add",
            "outlet.create"
        ]
    );
    assert!(
        log.iter()
            .all(|e| !e.detail.contains(pw) && !e.detail.contains(&tok))
    );
    let log_b = db.audit_log(&admin_b, 100).await.unwrap();
    assert_eq!(log_b.len(), 1);
    assert!(matches!(
        db.audit_log(&editor_a, 100).await,
        Err(Error::Forbidden)
    ));
    db.close().await;
}

async fn incidents_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let b = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let ea = actor(a.id, Role::Editor, "user:ed@kursiv.media");
    let va = actor(a.id, Role::Viewer, "user:view@kursiv.media");
    let eb = actor(b.id, Role::Editor, "user:ed@vlast.kz");

    let mut flood = incident(
        "http_flood",
        "Флуд на сайт",
        "green",
        "2024-03-01T10:00:00Z",
    );
    flood.description = "Боты били по поиску: «номер один».".into();
    flood.targets =
        serde_json::from_value(json!([{"kind": "website", "value": "kursiv.media"}])).unwrap();
    let flood = db.create_incident(&ea, &flood).await.unwrap();
    assert_eq!(flood.outlet, "kursiv");
    assert_eq!(flood.status.as_str(), "reported");
    assert_eq!(flood.targets.len(), 1);
    let mut phishing = incident("phishing", "Phishing wave", "amber+strict", "2024-04-10");
    phishing.status = Some("verified".into());
    db.create_incident(&ea, &phishing).await.unwrap();
    db.create_incident(
        &eb,
        &incident(
            "bot_comments",
            "Бот-комментарии под статьёй",
            "clear",
            "2024-05-02",
        ),
    )
    .await
    .unwrap();
    let secret_b = db
        .create_incident(
            &eb,
            &incident("doxxing", "Доксинг редактора", "amber+strict", "2024-03-15"),
        )
        .await
        .unwrap();

    // Filters, seen from outlet A (B's AMBER+STRICT incident never appears).
    let all = titles(&db, &va, json!({})).await;
    assert_eq!(
        all,
        [
            "Бот-комментарии под статьёй",
            "Phishing wave",
            "Флуд на сайт"
        ]
    );
    assert_eq!(
        titles(&db, &va, json!({"kind": "http_flood"})).await,
        ["Флуд на сайт"]
    );
    assert_eq!(
        titles(&db, &va, json!({"status": "verified"})).await,
        ["Phishing wave"]
    );
    assert_eq!(
        titles(&db, &va, json!({"tlp": "green"})).await,
        ["Флуд на сайт"]
    );
    assert_eq!(
        titles(&db, &va, json!({"tlp": "amber+strict"})).await,
        ["Phishing wave"]
    );
    assert_eq!(
        titles(&db, &va, json!({"outlet": "vlast"})).await,
        ["Бот-комментарии под статьёй"]
    );
    // Search is case-insensitive for Cyrillic too, and reads the description.
    assert_eq!(
        titles(&db, &va, json!({"q": "флуд"})).await,
        ["Флуд на сайт"]
    );
    assert_eq!(
        titles(&db, &va, json!({"q": "ФЛУД"})).await,
        ["Флуд на сайт"]
    );
    assert_eq!(
        titles(&db, &va, json!({"q": "поиску номер"})).await,
        ["Флуд на сайт"]
    );
    assert_eq!(
        titles(&db, &va, json!({"q": "поиску phishing"})).await,
        Vec::<String>::new()
    );
    assert_eq!(
        titles(&db, &va, json!({"q": "доксинг"})).await,
        Vec::<String>::new()
    );
    // Wildcard and operator characters are not a pattern: they find nothing, or are refused
    // as a query with no words.
    for q in [
        "%",
        "_",
        "*",
        "\"",
        "флуд*",
        "NEAR(флуд)",
        "флуд OR phishing",
        "-флуд",
    ] {
        match db.incidents(&va, &list_filter(json!({"q": q}))).await {
            Ok(page) => assert!(
                page.items.iter().all(|i| i.title.starts_with("Флуд")),
                "{q:?} found {:?}",
                page.items.iter().map(|i| &i.title).collect::<Vec<_>>()
            ),
            Err(e) => assert_eq!(fields(&e), ["q"], "{q:?}"),
        }
    }
    // Date range: from inclusive, to exclusive.
    assert_eq!(
        titles(&db, &va, json!({"from": "2024-04-01"})).await,
        ["Бот-комментарии под статьёй", "Phishing wave"]
    );
    assert_eq!(
        titles(&db, &va, json!({"to": "2024-04-01"})).await,
        ["Флуд на сайт"]
    );
    assert_eq!(
        titles(&db, &va, json!({"from": "2024-04-01", "to": "2024-05-01"})).await,
        ["Phishing wave"]
    );
    assert_eq!(
        titles(
            &db,
            &va,
            json!({"from": "2024-03-01T10:00:00Z", "to": "2024-03-01T10:00:00.001Z"})
        )
        .await,
        ["Флуд на сайт"]
    );
    // Bad filters are field errors, all at once.
    let e = db
        .incidents(&va, &list_filter(json!({"status": "bogus", "tlp": "pink", "from": "yesterday", "cursor": "x", "limit": 0})))
        .await
        .unwrap_err();
    assert_eq!(fields(&e), ["status", "tlp", "from", "cursor", "limit"]);

    // Creation checks.
    let e = db
        .create_incident(&ea, &incident("no_such_kind", "t", "green", "2024-01-01"))
        .await
        .unwrap_err();
    assert_eq!(fields(&e), ["kind"]);
    let mut bad = incident("other", " ", "pink", "someday");
    bad.recipients = vec!["nope".into()];
    bad.impact.requests = Some(-1);
    let e = db.create_incident(&ea, &bad).await.unwrap_err();
    assert_eq!(
        fields(&e),
        ["title", "tlp", "started_at", "impact.requests"]
    );
    let mut bad = incident("other", "t", "red", "2024-01-02");
    bad.ended_at = Some("2024-01-01".into());
    assert_eq!(
        fields(&db.create_incident(&ea, &bad).await.unwrap_err()),
        ["ended_at"]
    );
    let mut bad = incident("other", "t", "red", "2024-01-02");
    bad.recipients = vec!["nope".into()];
    assert_eq!(
        fields(&db.create_incident(&ea, &bad).await.unwrap_err()),
        ["recipients[0]"]
    );
    assert!(matches!(
        db.create_incident(&va, &incident("other", "t", "green", "2024-01-01"))
            .await,
        Err(Error::Forbidden)
    ));

    // Get: visible or not found (never "forbidden", which would confirm it exists).
    assert_eq!(
        db.incident(&eb, &flood.id).await.unwrap().title,
        "Флуд на сайт"
    );
    assert!(matches!(
        db.incident(&ea, &secret_b.id).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        db.incident(&ea, "not-a-uuid").await,
        Err(Error::NotFound)
    ));

    // Update and timeline.
    let patch: IncidentPatch = serde_json::from_value(json!({
        "status": "verified", "title": "Флуд на сайт (подтверждён)", "impact": {"downtime_minutes": 95}
    }))
    .unwrap();
    let up = db.update_incident(&ea, &flood.id, &patch).await.unwrap();
    assert_eq!(up.title, "Флуд на сайт (подтверждён)");
    assert_eq!(up.impact.downtime_minutes, Some(95));
    assert_eq!(up.description, "Боты били по поиску: «номер один».");
    assert_eq!(up.updates.len(), 1);
    assert_eq!(up.updates[0].new_status.as_deref(), Some("verified"));
    db.add_update(&ea, &flood.id, "Провайдер подтвердил атаку.", None)
        .await
        .unwrap();
    db.add_update(&ea, &flood.id, "", Some("closed"))
        .await
        .unwrap();
    let got = db.incident(&va, &flood.id).await.unwrap();
    let timeline: Vec<(&str, Option<&str>)> = got
        .updates
        .iter()
        .map(|u| (u.body.as_str(), u.new_status.as_deref()))
        .collect();
    assert_eq!(
        timeline,
        [
            ("", Some("verified")),
            ("Провайдер подтвердил атаку.", None),
            ("", Some("closed"))
        ]
    );
    assert_eq!(got.status.as_str(), "closed");
    assert_eq!(got.updates[1].author, "user:ed@kursiv.media");
    assert_eq!(
        titles(&db, &va, json!({"q": "ПОДТВЕРЖДЁН"})).await,
        ["Флуд на сайт (подтверждён)"]
    );
    assert_eq!(
        fields(&db.add_update(&ea, &flood.id, "  ", None).await.unwrap_err()),
        ["body"]
    );
    assert_eq!(
        fields(
            &db.add_update(&ea, &flood.id, "x", Some("gone"))
                .await
                .unwrap_err()
        ),
        ["new_status"]
    );
    // Only the owner's writers change an incident, even one they can read.
    assert!(matches!(
        db.update_incident(&eb, &flood.id, &patch).await,
        Err(Error::Forbidden)
    ));
    assert!(matches!(
        db.update_incident(&va, &flood.id, &patch).await,
        Err(Error::Forbidden)
    ));
    assert!(matches!(
        db.add_update(&eb, &flood.id, "x", None).await,
        Err(Error::Forbidden)
    ));
    assert!(matches!(
        db.update_incident(&ea, &secret_b.id, &patch).await,
        Err(Error::NotFound)
    ));
    // Tightening TLP takes effect at once.
    let strict: IncidentPatch = serde_json::from_value(json!({"tlp": "amber+strict"})).unwrap();
    db.update_incident(&ea, &flood.id, &strict).await.unwrap();
    assert!(matches!(
        db.incident(&eb, &flood.id).await,
        Err(Error::NotFound)
    ));
    db.close().await;
}

async fn paging_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let b = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let ea = actor(a.id, Role::Editor, "user:ed@kursiv.media");
    let vb = actor(b.id, Role::Viewer, "user:v@vlast.kz");
    let day = 86_400_000i64;
    let base = parse_time("2024-01-01").unwrap();
    let mut shared_with_b = BTreeSet::new();
    // Three incidents per start time, so the cursor must break ties by row.
    for i in 0..250i64 {
        let started = qalqan_atlas::model::format_time(base + (i / 3) * day);
        let tlp = if i % 5 == 0 { "amber+strict" } else { "green" };
        let title = if i % 2 == 0 {
            format!("Флуд №{i}")
        } else {
            format!("Фишинг №{i}")
        };
        let inc = db
            .create_incident(&ea, &incident("other", &title, tlp, &started))
            .await
            .unwrap();
        if tlp == "green" {
            shared_with_b.insert(inc.id);
        }
    }
    async fn walk(
        db: &qalqan_atlas::Db,
        who: &qalqan_atlas::Actor,
        extra: Value,
        limit: i64,
    ) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut f = extra.clone();
            f["limit"] = json!(limit);
            if let Some(c) = &cursor {
                f["cursor"] = json!(c);
            }
            let page = db.incidents(who, &list_filter(f)).await.expect("page");
            assert!(page.items.len() as i64 <= limit);
            out.extend(page.items.into_iter().map(|i| (i.started_ms, i.id)));
            pages += 1;
            assert!(pages < 1000, "cursor does not advance");
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        out
    }
    let ea_view = actor(a.id, Role::Viewer, "user:v@kursiv.media");
    for limit in [7, 50, 200] {
        let seen = walk(&db, &ea_view, json!({}), limit).await;
        let ids: BTreeSet<_> = seen.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(seen.len(), 250, "limit {limit}: gaps or duplicates");
        assert_eq!(ids.len(), 250, "limit {limit}: duplicates");
        assert!(
            seen.windows(2).all(|w| w[0].0 >= w[1].0),
            "limit {limit}: not newest first"
        );
        let b_seen = walk(&db, &vb, json!({}), limit).await;
        let b_ids: BTreeSet<_> = b_seen.iter().map(|(_, id)| id.clone()).collect();
        assert_eq!(b_seen.len(), b_ids.len());
        assert_eq!(b_ids, shared_with_b, "limit {limit}: outlet B's pages");
    }
    // Paging under a search filter.
    let floods = walk(&db, &ea_view, json!({"q": "флуд"}), 9).await;
    assert_eq!(floods.len(), 125);
    let from_to = walk(
        &db,
        &ea_view,
        json!({"from": "2024-01-10", "to": "2024-01-20"}),
        4,
    )
    .await;
    assert_eq!(from_to.len(), 30);
    db.close().await;
}

fn episode(id: &str, start_ms: i64, end_ms: i64, total: i64, indicators: Value) -> EpisodeSignal {
    serde_json::from_value(json!({
        "episode_id": id, "site": "kursiv.media", "start_ms": start_ms, "end_ms": end_ms,
        "peak_rps": 900, "total_requests": total, "indicators": indicators,
    }))
    .expect("episode")
}

async fn sightings_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let b = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let ea = actor(a.id, Role::Editor, "user:ed@kursiv.media");
    let va = actor(a.id, Role::Viewer, "user:v@kursiv.media");
    let inc = db
        .create_incident(&ea, &incident("http_flood", "Флуд", "green", "2024-03-01"))
        .await
        .unwrap();

    // Manual sightings: the same observable in two spellings is one row; counts add up.
    let n = db
        .add_sightings(
            &ea,
            &inc.id,
            &[
                sighting("ip", "203.0.113.5", 3),
                sighting("ip", " ::ffff:203.0.113.5 ", 2),
                sighting("domain", "Bad.Example.", 1),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    db.add_sightings(&ea, &inc.id, &[sighting("ip", "203.0.113.5", 4)])
        .await
        .unwrap();
    let got: BTreeMap<String, i64> = db
        .incident_sightings(&va, &inc.id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (format!("{}:{}", s.kind, s.value), s.count))
        .collect();
    assert_eq!(
        got,
        BTreeMap::from([
            ("domain:bad.example".into(), 1),
            ("ip:203.0.113.5".into(), 9)
        ])
    );
    let e = db
        .add_sightings(
            &ea,
            &inc.id,
            &[
                sighting("bogus", "x", 1),
                sighting("ip", "1.2.3", 1),
                sighting("ip", "1.2.3.4", 0),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(
        fields(&e),
        [
            "indicators[0].kind",
            "indicators[1].value",
            "indicators[2].count"
        ]
    );
    assert!(matches!(
        db.add_sightings(&va, &inc.id, &[sighting("ip", "1.2.3.4", 1)])
            .await,
        Err(Error::Forbidden)
    ));

    // Ingest: the outlet's automatic level applies; a retry is the same incident with the same
    // counts; a later push of the same episode replaces the counts.
    let admin_a = actor(a.id, Role::Admin, "user:admin@kursiv.media");
    db.set_sharing(&admin_a, Tlp::Green, &[]).await.unwrap();
    let shield = actor(a.id, Role::Ingest, "token:shield-1");
    let start = parse_time("2024-06-01T12:00:00Z").unwrap();
    let ind = json!([
        {"kind": "ip", "value": "198.51.100.1", "count": 500},
        {"kind": "ip", "value": "198.51.100.2", "count": 70},
        {"kind": "user_agent", "value": "curl/8.5", "count": 570}
    ]);
    let ep = episode(
        "node1-1717243200000",
        start,
        start + 600_000,
        120_000,
        ind.clone(),
    );
    let (id1, created) = db.ingest_episode(&shield, &ep).await.unwrap();
    assert!(created);
    let (id2, created) = db.ingest_episode(&shield, &ep).await.unwrap();
    assert_eq!((id2.as_str(), created), (id1.as_str(), false));
    assert_eq!(
        count(&db, &format!("SELECT COUNT(*) FROM incidents WHERE ingest_key = 'node1-1717243200000' AND outlet_id = {}", a.id)).await,
        1
    );
    let counts = |v: Vec<qalqan_atlas::store::Sighting>| -> BTreeMap<String, i64> {
        v.into_iter().map(|s| (s.value, s.count)).collect()
    };
    let after_retry = counts(db.incident_sightings(&va, &id1).await.unwrap());
    assert_eq!(
        after_retry,
        BTreeMap::from([
            ("198.51.100.1".into(), 500),
            ("198.51.100.2".into(), 70),
            ("curl/8.5".into(), 570)
        ])
    );
    let got = db.incident(&va, &id1).await.unwrap();
    assert_eq!(
        (got.kind.as_str(), got.source.as_str(), got.tlp),
        ("http_flood", "shield", Tlp::Green)
    );
    assert_eq!(got.impact.requests, Some(120_000));
    assert_eq!(got.targets[0].value, "kursiv.media");
    assert_eq!(got.created_by, "token:shield-1");
    let sight = db.incident_sightings(&va, &id1).await.unwrap();
    assert!(
        sight
            .iter()
            .all(|s| parse_time(&s.first_seen).unwrap() >= start)
    );
    let later = json!([
        {"kind": "ip", "value": "198.51.100.1", "count": 650},
        {"kind": "ip", "value": "198.51.100.2", "count": 70},
        {"kind": "user_agent", "value": "curl/8.5", "count": 720}
    ]);
    let ep2 = episode(
        "node1-1717243200000",
        start,
        start + 900_000,
        150_000,
        later,
    );
    let (id3, created) = db.ingest_episode(&shield, &ep2).await.unwrap();
    assert_eq!((id3.as_str(), created), (id1.as_str(), false));
    assert_eq!(
        counts(db.incident_sightings(&va, &id1).await.unwrap())["198.51.100.1"],
        650
    );
    let got = db.incident(&va, &id1).await.unwrap();
    assert_eq!(got.impact.requests, Some(150_000));
    assert!(got.title.contains("150000"), "{}", got.title);
    // The same episode id from another outlet's shield is that outlet's own incident.
    let shield_b = actor(b.id, Role::Ingest, "token:shield-b");
    let (idb, created) = db.ingest_episode(&shield_b, &ep).await.unwrap();
    assert!(created && idb != id1);
    // Ingest tokens only ingest; viewers and editors do not ingest.
    assert!(matches!(
        db.incident(&shield, &id1).await,
        Err(Error::Forbidden)
    ));
    assert!(matches!(
        db.ingest_episode(&va, &ep).await,
        Err(Error::Forbidden)
    ));
    assert!(matches!(
        db.ingest_episode(&ea, &ep).await,
        Err(Error::Forbidden)
    ));
    // Bad signals are field errors.
    let bad = episode(" ", -5, -10, -1, json!([{"kind": "ip", "value": "x"}]));
    let e = db.ingest_episode(&shield, &bad).await.unwrap_err();
    assert_eq!(
        fields(&e),
        ["episode_id", "start_ms", "end_ms", "total_requests"]
    );
    db.close().await;
}

async fn indicator_dedup_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let b = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let c = db.create_outlet("orda", "Орда", "cli").await.unwrap();
    let ea = actor(a.id, Role::Editor, "user:ed@kursiv.media");
    let eb = actor(b.id, Role::Editor, "user:ed@vlast.kz");
    let va = actor(a.id, Role::Viewer, "v");
    let vb = actor(b.id, Role::Viewer, "v");
    let vc = actor(c.id, Role::Viewer, "v");
    let ia = db
        .create_incident(
            &ea,
            &incident("http_flood", "A", "amber+strict", "2024-03-01"),
        )
        .await
        .unwrap();
    let ib = db
        .create_incident(&eb, &incident("http_flood", "B", "green", "2024-03-05"))
        .await
        .unwrap();
    let s = |v: &str, n: i64, first: &str, last: &str| -> SightingIn {
        serde_json::from_value(
            json!({"kind": "ip", "value": v, "count": n, "first_seen": first, "last_seen": last}),
        )
        .unwrap()
    };
    // A saw it earlier and later than B: if A's dates leaked, B's view would show them.
    db.add_sightings(
        &ea,
        &ia.id,
        &[s(
            "198.51.100.7",
            40,
            "2024-02-01T00:00:00Z",
            "2024-04-01T00:00:00Z",
        )],
    )
    .await
    .unwrap();
    db.add_sightings(
        &eb,
        &ib.id,
        &[s(
            "::ffff:198.51.100.7",
            3,
            "2024-03-05T00:00:00Z",
            "2024-03-06T00:00:00Z",
        )],
    )
    .await
    .unwrap();
    db.add_sightings(
        &ea,
        &ia.id,
        &[s(
            "198.51.100.99",
            1,
            "2024-03-01T00:00:00Z",
            "2024-03-01T00:00:00Z",
        )],
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM indicators WHERE kind = 'ip' AND value = '198.51.100.7'"
        )
        .await,
        1
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM sightings").await, 3);

    let view =
        |x: qalqan_atlas::store::IndicatorView| (x.incidents, x.count, x.first_seen, x.last_seen);
    assert_eq!(
        view(db.indicator(&va, "ip", "198.51.100.7").await.unwrap()),
        (
            2,
            43,
            "2024-02-01T00:00:00.000Z".into(),
            "2024-04-01T00:00:00.000Z".into()
        )
    );
    for who in [&vb, &vc] {
        assert_eq!(
            view(db.indicator(who, "ip", "198.51.100.7").await.unwrap()),
            (
                1,
                3,
                "2024-03-05T00:00:00.000Z".into(),
                "2024-03-06T00:00:00.000Z".into()
            )
        );
        // Seen only in A's closed incident: as if it did not exist.
        assert!(matches!(
            db.indicator(who, "ip", "198.51.100.99").await,
            Err(Error::NotFound)
        ));
        assert!(matches!(
            db.incident_sightings(who, &ia.id).await,
            Err(Error::NotFound)
        ));
    }
    assert_eq!(db.incident_sightings(&vc, &ib.id).await.unwrap().len(), 1);
    // The lookup normalises its input, and names a bad value.
    assert_eq!(
        db.indicator(&vc, "ip", " ::FFFF:198.51.100.7 ")
            .await
            .unwrap()
            .incidents,
        1
    );
    assert_eq!(
        fields(&db.indicator(&vc, "ip", "nope").await.unwrap_err()),
        ["value"]
    );
    assert_eq!(
        fields(&db.indicator(&vc, "colour", "x").await.unwrap_err()),
        ["kind"]
    );
    db.close().await;
}

/// Recomputes every custody chain from the raw rows:
/// `chain = SHA-256(previous chain of the same file | "|sha|incident|actor|action|at_ms")`.
async fn verify_custody_chains(db: &qalqan_atlas::Db) -> usize {
    let rows = sqlx::query(
        "SELECT sha256, incident_id, actor, action, at_ms, chain FROM custody_log ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut last: HashMap<String, String> = HashMap::new();
    for r in &rows {
        let sha: String = r.get("sha256");
        let incident: i64 = r.get("incident_id");
        let actor: String = r.get("actor");
        let action: String = r.get("action");
        let at: i64 = r.get("at_ms");
        let chain: String = r.get("chain");
        let mut h = Sha256::new();
        h.update(last.get(&sha).cloned().unwrap_or_default().as_bytes());
        h.update(format!("|{sha}|{incident}|{actor}|{action}|{at}").as_bytes());
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            chain, want,
            "custody chain broken at {sha} {action} by {actor}"
        );
        last.insert(sha, chain);
    }
    rows.len()
}

async fn attachments_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let b = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let c = db.create_outlet("orda", "Орда", "cli").await.unwrap();
    let ea = actor(a.id, Role::Editor, "user:ed@kursiv.media");
    let va = actor(a.id, Role::Viewer, "user:v@kursiv.media");
    let vb = actor(b.id, Role::Viewer, "user:v@vlast.kz");
    let vc = actor(c.id, Role::Viewer, "user:v@orda.kz");
    let i1 = db
        .create_incident(
            &ea,
            &incident("defacement", "Дефейс", "green", "2024-03-01"),
        )
        .await
        .unwrap();
    let i2 = db
        .create_incident(
            &ea,
            &incident("defacement", "Дефейс 2", "amber+strict", "2024-03-02"),
        )
        .await
        .unwrap();
    let png: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    let want_sha: String = Sha256::digest(&png)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let x = db
        .add_attachment(&ea, &i1.id, "скрин.png", "image/png", &png)
        .await
        .unwrap();
    assert_eq!(x.sha256, want_sha);
    let y = db
        .add_attachment(&ea, &i1.id, "again.png", "image/png", &png)
        .await
        .unwrap();
    assert_eq!(y.sha256, want_sha);
    db.add_attachment(&ea, &i2.id, "same.png", "image/png", &png)
        .await
        .unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM attachments").await,
        1,
        "same bytes stored twice"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM incident_attachments").await,
        2
    );
    let list = db.attachments(&vb, &i1.id).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].name.as_str(), list[0].size), ("скрин.png", 5000));
    assert!(matches!(
        db.attachments(&vb, &i2.id).await,
        Err(Error::NotFound)
    ));

    // Reads are recorded; each outlet sees its own custody entries, the owner sees all.
    let (meta, data) = db
        .read_attachment(&va, &i1.id, &want_sha.to_uppercase())
        .await
        .unwrap();
    assert_eq!(
        (meta.sha256.as_str(), data.as_slice()),
        (want_sha.as_str(), png.as_slice())
    );
    db.read_attachment(&vb, &i1.id, &want_sha).await.unwrap();
    db.read_attachment(&vc, &i1.id, &want_sha).await.unwrap();
    assert!(matches!(
        db.read_attachment(&vb, &i2.id, &want_sha).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        db.read_attachment(&vb, &i1.id, &"0".repeat(64)).await,
        Err(Error::NotFound)
    ));
    let owner_view: Vec<(String, String)> = db
        .custody_log(&va, &i1.id, &want_sha)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.actor, c.action))
        .collect();
    assert_eq!(
        owner_view,
        [
            ("user:ed@kursiv.media".to_string(), "added".to_string()),
            ("user:ed@kursiv.media".into(), "added".into()),
            ("user:v@kursiv.media".into(), "read".into()),
            ("user:v@vlast.kz".into(), "read".into()),
            ("user:v@orda.kz".into(), "read".into()),
        ]
    );
    let b_view: Vec<String> = db
        .custody_log(&vb, &i1.id, &want_sha)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.actor)
        .collect();
    assert_eq!(b_view, ["user:v@vlast.kz"]);
    assert_eq!(verify_custody_chains(&db).await, 6);

    let e = db
        .add_attachment(&ea, &i1.id, "", "", &[])
        .await
        .unwrap_err();
    assert_eq!(fields(&e), ["name", "media_type", "body"]);
    assert!(matches!(
        db.add_attachment(&va, &i1.id, "x", "text/plain", b"x")
            .await,
        Err(Error::Forbidden)
    ));
    let eb = actor(b.id, Role::Editor, "user:ed@vlast.kz");
    assert!(matches!(
        db.add_attachment(&eb, &i1.id, "x", "text/plain", b"x")
            .await,
        Err(Error::Forbidden)
    ));
    db.close().await;
}

async fn publications_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let b = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let ea = actor(a.id, Role::Editor, "e");
    let eb = actor(b.id, Role::Editor, "e");
    let vb = actor(b.id, Role::Viewer, "v");
    let p = |url: &str, title: &str, at: &str, tags: Value| -> PublicationIn {
        serde_json::from_value(
            json!({"url": url, "title": title, "published_at": at, "tags": tags}),
        )
        .unwrap()
    };
    db.add_publication(
        &ea,
        &p(
            "HTTPS://Kursiv.Media/news/1",
            "Первая",
            "2024-03-01",
            json!(["Расследование"]),
        ),
    )
    .await
    .unwrap();
    let again = db
        .add_publication(
            &ea,
            &p(
                "https://kursiv.media/news/1",
                "Первая (исправлено)",
                "2024-03-02",
                json!(["Суды", "KZ"]),
            ),
        )
        .await
        .unwrap();
    assert_eq!(again.url, "https://kursiv.media/news/1");
    db.add_publication(
        &eb,
        &p("https://vlast.kz/a", "Власть", "2024-04-01", json!([])),
    )
    .await
    .unwrap();
    db.add_publication(
        &eb,
        &p(
            "https://kursiv.media/news/1",
            "Перепечатка",
            "2024-04-02",
            json!([]),
        ),
    )
    .await
    .unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM publications").await, 3);
    let all = db.publications(&vb, None, 0, i64::MAX).await.unwrap();
    let got: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|p| (p.outlet.as_str(), p.title.as_str(), p.published_at.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("vlast", "Перепечатка", "2024-04-02T00:00:00.000Z"),
            ("vlast", "Власть", "2024-04-01T00:00:00.000Z"),
            ("kursiv", "Первая (исправлено)", "2024-03-02T00:00:00.000Z"),
        ]
    );
    assert_eq!(all[2].tags, ["суды", "kz"]);
    assert_eq!(
        db.publications(&vb, Some("kursiv"), 0, i64::MAX)
            .await
            .unwrap()
            .len(),
        1
    );
    let window = db
        .publications(
            &vb,
            None,
            parse_time("2024-03-02").unwrap(),
            parse_time("2024-04-02").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(window.len(), 2);
    let e = db
        .add_publication(&ea, &p("javascript:alert(1)", "", "soon", json!([])))
        .await
        .unwrap_err();
    assert_eq!(fields(&e), ["url", "title", "published_at"]);
    assert!(matches!(
        db.add_publication(&vb, &p("https://x.kz/", "t", "2024-01-01", json!([])))
            .await,
        Err(Error::Forbidden)
    ));
    let ingest = actor(a.id, Role::Ingest, "token:s");
    assert!(matches!(
        db.publications(&ingest, None, 0, i64::MAX).await,
        Err(Error::Forbidden)
    ));
    db.close().await;
}

async fn append_only_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let ea = actor(a.id, Role::Editor, "e");
    let i = db
        .create_incident(&ea, &incident("other", "x", "green", "2024-01-01"))
        .await
        .unwrap();
    db.add_attachment(&ea, &i.id, "a.txt", "text/plain", b"evidence")
        .await
        .unwrap();
    let audit = count(&db, "SELECT COUNT(*) FROM audit_log").await;
    let custody = count(&db, "SELECT COUNT(*) FROM custody_log").await;
    assert!(audit >= 3 && custody == 1);
    for sql in [
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE id = (SELECT MAX(id) FROM audit_log)",
        "UPDATE custody_log SET chain = 'forged'",
        "DELETE FROM custody_log",
        "UPDATE attachments SET data = $1",
    ] {
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(b"forged".to_vec())
            .execute(&db.pool)
            .await;
        assert!(r.is_err(), "{kind:?}: {sql} was allowed");
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit_log").await, audit);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM custody_log").await,
        custody
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM audit_log WHERE actor = 'someone else'"
        )
        .await,
        0
    );
    // Appending still works.
    db.add_update(&ea, &i.id, "note", None).await.unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM audit_log").await,
        audit + 1
    );
    db.close().await;
}

/// Fills an atlas through the store with every kind of record, and returns admin tokens of the
/// three outlets (tokens survive a backup; sessions do not).
async fn populate(db: &qalqan_atlas::Db) -> Vec<String> {
    db.set_task_force("Медиа-альянс").await.unwrap();
    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let b = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let c = db.create_outlet("orda", "Орда", "cli").await.unwrap();
    db.add_kind("sim_swap", "Подмена SIM", "SIM ауыстыру", "SIM swap")
        .await
        .unwrap();
    let admin_a = actor(a.id, Role::Admin, "user:admin@kursiv.media");
    db.set_sharing(&admin_a, Tlp::Amber, &["vlast".into()])
        .await
        .unwrap();
    db.create_user(
        None,
        b.id,
        "editor@vlast.kz",
        "Редактор",
        "correct horse battery",
        Role::Editor,
    )
    .await
    .unwrap();
    let mut tokens = Vec::new();
    for o in [&a, &b, &c] {
        tokens.push(
            db.create_token(None, o.id, &format!("admin-{}", o.slug), Role::Admin)
                .await
                .unwrap(),
        );
    }
    let ea = actor(a.id, Role::Editor, "user:ed@kursiv.media");
    let eb = actor(b.id, Role::Editor, "user:ed@vlast.kz");
    let tlps = ["clear", "green", "amber", "amber+strict", "red"];
    let mut ids = Vec::new();
    for (n, tlp) in tlps.iter().enumerate() {
        let mut i = incident(
            if n % 2 == 0 { "http_flood" } else { "sim_swap" },
            &format!("Инцидент {tlp}"),
            tlp,
            &format!("2024-0{}-1{n}T08:00:00Z", n + 1),
        );
        i.description = "Описание с «кавычками» и\nпереносом строки.".into();
        if *tlp == "red" {
            i.recipients = vec!["orda".into()];
        }
        i.targets = serde_json::from_value(
            json!([{"kind": "social", "platform": "Telegram", "value": "@kursiv"}]),
        )
        .unwrap();
        let inc = db.create_incident(&ea, &i).await.unwrap();
        db.add_sightings(
            &ea,
            &inc.id,
            &[
                sighting("ip", "203.0.113.9", n as i64 + 1),
                sighting("domain", &format!("bad{n}.example"), 2),
            ],
        )
        .await
        .unwrap();
        db.add_update(&ea, &inc.id, &format!("Заметка {n}"), Some("verified"))
            .await
            .unwrap();
        db.add_attachment(
            &ea,
            &inc.id,
            &format!("файл-{n}.bin"),
            "application/octet-stream",
            format!("evidence {n}").as_bytes(),
        )
        .await
        .unwrap();
        // Distinct times keep every list's order the same on both backends.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        ids.push(inc.id);
    }
    let ib = db
        .create_incident(
            &eb,
            &incident("phishing", "Фишинг у Власти", "green", "2024-07-01"),
        )
        .await
        .unwrap();
    db.add_sightings(&eb, &ib.id, &[sighting("ip", "203.0.113.9", 100)])
        .await
        .unwrap();
    let shield = actor(b.id, Role::Ingest, "token:shield-b");
    db.ingest_episode(
        &shield,
        &episode(
            "b-1",
            1_719_000_000_000,
            1_719_000_600_000,
            5000,
            json!([{"kind": "asn", "value": "AS9198", "count": 5000}]),
        ),
    )
    .await
    .unwrap();
    let pb: PublicationIn = serde_json::from_value(json!({"url": "https://vlast.kz/x", "title": "Статья", "published_at": "2024-05-05", "tags": ["суды"]})).unwrap();
    db.add_publication(&eb, &pb).await.unwrap();
    let vc = actor(c.id, Role::Viewer, "user:v@orda.kz");
    db.read_attachment(
        &vc,
        &ids[4],
        &Sha256::digest(b"evidence 4")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
    .await
    .unwrap();
    tokens
}

/// Every read-only answer of the API for each token, keyed by request.
async fn snapshot(client: &Client, tokens: &[String]) -> BTreeMap<String, (u16, Value)> {
    let mut out = BTreeMap::new();
    for (n, tok) in tokens.iter().enumerate() {
        let auth = Auth::Bearer(tok.clone());
        let mut uris: Vec<String> = [
            "/api/v1/me",
            "/api/v1/kinds",
            "/api/v1/outlets",
            "/api/v1/outlet/settings",
            "/api/v1/outlet/members",
            "/api/v1/incidents?limit=200",
            "/api/v1/incidents?q=%D0%B8%D0%BD%D1%86%D0%B8%D0%B4%D0%B5%D0%BD%D1%82",
            "/api/v1/indicators?kind=ip&value=203.0.113.9",
            "/api/v1/indicators?kind=asn&value=9198",
            "/api/v1/publications",
            "/api/v1/audit?limit=1000",
            "/api/v1/public/stats",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let list = client
            .get("/api/v1/incidents?limit=200", &auth)
            .await
            .json();
        for item in list["items"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap();
            uris.push(format!("/api/v1/incidents/{id}"));
            uris.push(format!("/api/v1/incidents/{id}/indicators"));
            let atts = client
                .get(&format!("/api/v1/incidents/{id}/attachments"), &auth)
                .await
                .json();
            uris.push(format!("/api/v1/incidents/{id}/attachments"));
            for a in atts.as_array().unwrap() {
                uris.push(format!(
                    "/api/v1/incidents/{id}/attachments/{}/custody",
                    a["sha256"].as_str().unwrap()
                ));
            }
        }
        for uri in uris {
            let a = client.get(&uri, &auth).await;
            let body = serde_json::from_slice(&a.bytes).unwrap_or(Value::Null);
            out.insert(format!("{n} {uri}"), (a.status.as_u16(), body));
        }
    }
    out
}

fn assert_same(what: &str, a: &BTreeMap<String, (u16, Value)>, b: &BTreeMap<String, (u16, Value)>) {
    assert_eq!(a.len(), b.len(), "{what}: different requests");
    for (k, v) in a {
        assert_eq!(Some(v), b.get(k), "{what}: {k} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_sqlite_restore_postgres_and_back_gives_identical_answers() {
    let Some(pg) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let sq = TestDb::new(Kind::Sqlite).await.unwrap();
    let sq_db = sq.connect().await;
    let tokens = populate(&sq_db).await;
    let first = Client::new(sq_db);
    let before = snapshot(&first, &tokens).await;
    assert!(
        before.values().all(|(s, _)| *s < 500),
        "{:?}",
        before.iter().find(|(_, (s, _))| *s >= 500)
    );
    let ok = before.values().filter(|(s, _)| *s == 200).count();
    assert!(ok > 60, "snapshot too small: {ok} answers of 200");

    let dir = tempfile::tempdir().unwrap();
    let file1 = dir.path().join("one.jsonl");
    let rows = qalqan_atlas::backup::backup(first.db(), &file1)
        .await
        .unwrap();
    assert!(rows > 50, "{rows} rows");

    let pg_db = pg.connect().await;
    assert_eq!(
        qalqan_atlas::backup::restore(&pg_db, &file1).await.unwrap(),
        rows
    );
    // A second restore into a database that holds outlets is refused.
    assert!(qalqan_atlas::backup::restore(&pg_db, &file1).await.is_err());
    let second = Client::new(pg_db);
    let on_pg = snapshot(&second, &tokens).await;
    assert_same("SQLite → PostgreSQL", &before, &on_pg);

    let file2 = dir.path().join("two.jsonl");
    assert_eq!(
        qalqan_atlas::backup::backup(second.db(), &file2)
            .await
            .unwrap(),
        rows
    );
    let sq2 = TestDb::new(Kind::Sqlite).await.unwrap();
    let sq2_db = sq2.connect().await;
    qalqan_atlas::backup::restore(&sq2_db, &file2)
        .await
        .unwrap();
    let third = Client::new(sq2_db);
    let back = snapshot(&third, &tokens).await;
    assert_same("PostgreSQL → SQLite", &before, &back);

    // Attachments come back byte for byte, and both restored atlases keep taking writes (the
    // PostgreSQL sequences were moved past the restored ids).
    let auth = Auth::Bearer(tokens[0].clone());
    for client in [&second, &third] {
        let list = client
            .get("/api/v1/incidents?limit=200", &auth)
            .await
            .json();
        let own = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["outlet"] == "kursiv")
            .unwrap();
        let id = own["id"].as_str().unwrap().to_string();
        let atts = client
            .get(&format!("/api/v1/incidents/{id}/attachments"), &auth)
            .await
            .json();
        let sha = atts[0]["sha256"].as_str().unwrap();
        let bytes = client
            .get(&format!("/api/v1/incidents/{id}/attachments/{sha}"), &auth)
            .await;
        assert_eq!(bytes.status, StatusCode::OK);
        let got: String = Sha256::digest(&bytes.bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, sha);
        let created = client
            .json(
                http::Method::POST,
                "/api/v1/incidents",
                &auth,
                &json!({"kind": "other", "title": "после восстановления", "started_at": "2024-09-01"}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        let s = client
            .json(
                http::Method::POST,
                &format!("/api/v1/incidents/{id}/indicators"),
                &auth,
                &json!([{"kind": "ip", "value": "192.0.2.200"}]),
            )
            .await;
        assert_eq!(s.status, StatusCode::CREATED, "{}", s.text());
    }
    verify_custody_chains(third.db()).await;
    first.db().close().await;
    second.db().close().await;
    third.db().close().await;
}

/// Text search picks its plan by how many incidents a word is in (on SQLite: take the matches and
/// sort them, or walk incidents newest first and probe the matches). Whatever the plan, a page
/// must be exactly the newest visible matches. 1,200 incidents put one word past the switch point
/// (1,000 matches); they are inserted in one SQL statement, as the store's own triggers and
/// indexes see any insert.
async fn search_plans_story(kind: Kind) {
    let Some(t) = TestDb::new(kind).await else {
        return;
    };
    let db = t.connect().await;
    let a = db.create_outlet("kursiv", "Курсив", "cli").await.unwrap();
    let b = db.create_outlet("vlast", "Власть", "cli").await.unwrap();
    let n = 1200i64;
    // Every incident says "флуд"; every 100th also "редкое"; every 3rd is AMBER+STRICT of outlet
    // a, which outlet b must not find.
    let series = match kind {
        Kind::Sqlite => format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT x FROM c"
        ),
        Kind::Postgres => format!("SELECT x FROM generate_series(1::bigint, {n}) AS c(x)"),
    };
    let sql = format!(
        "INSERT INTO incidents (uuid, outlet_id, kind, title, description, search, status, confidence, tlp,
           started_ms, date_unknown, source, created_by, created_ms, updated_ms)
         SELECT 'u-' || x, {}, 'other', 'Флуд ' || x, '', CASE WHEN x % 100 = 0 THEN 'флуд редкое ' ELSE 'флуд ' END || x,
           'reported', 'suspected', CASE WHEN x % 3 = 0 THEN 'amber+strict' ELSE 'green' END,
           1700000000000 + (x % 400) * 1000, 0, 'manual', 'test', 0, 0
         FROM ({series}) AS s",
        a.id
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&db.pool)
        .await
        .unwrap();
    // What a page must hold: the viewer's visible matches, newest first, ties by row id.
    let expected = |viewer: i64, rare: bool, limit: usize| -> Vec<String> {
        let mut rows: Vec<(i64, i64)> = (1..=n)
            .filter(|x| !rare || x % 100 == 0)
            .filter(|x| viewer == a.id || x % 3 != 0)
            .map(|x| (1_700_000_000_000 + (x % 400) * 1000, x))
            .collect();
        // Row ids follow x in insertion order.
        rows.sort_by(|p, q| q.cmp(p));
        rows.iter()
            .take(limit)
            .map(|(_, x)| format!("u-{x}"))
            .collect()
    };
    for (viewer, role_of) in [(a.id, "a"), (b.id, "b")] {
        let who = actor(viewer, Role::Viewer, &format!("user:{role_of}"));
        for (q, rare) in [("ФЛУД", false), ("редк", true), ("флуд редкое", true)]
        {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            // Three pages of 50 from the top, across the plan switch.
            for _ in 0..3 {
                let page = db
                    .incidents(
                        &who,
                        &list_filter(json!({"q": q, "limit": 50, "cursor": cursor})),
                    )
                    .await
                    .unwrap();
                seen.extend(page.items.iter().map(|i| i.id.clone()));
                cursor = page.next.clone();
                if cursor.is_none() {
                    break;
                }
            }
            let want = expected(viewer, rare, 150);
            assert_eq!(seen, want, "viewer {role_of}, q={q:?} on {kind:?}");
        }
    }
}
