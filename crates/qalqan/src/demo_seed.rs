//! The demo's sample task force: three outlets, their members, half a year of incidents with
//! shared indicators (one botnet behind floods at all three, a comment flood, bot followers,
//! phishing) and the demo site's publications, so the dashboard, the map, campaigns and the
//! "what provokes attacks" page have something to show. All of it is invented sample data,
//! marked as such in every description; the addresses are drawn from public ranges so that the
//! map has countries to colour, and say nothing about who owns them.

use qalqan_atlas::Db;
use qalqan_atlas::accounts::Actor;
use qalqan_atlas::model::{Role, Tlp, format_time};
use qalqan_atlas::store::{Impact, IncidentIn, PublicationIn, SightingIn, Target};
use qalqan_drill::rng::Rng;

/// One demo log-in.
#[derive(serde::Serialize, Clone)]
pub struct Login {
    pub outlet: String,
    pub email: String,
    pub password: String,
    pub role: String,
}

/// What the seed made that the demo prints.
pub struct Seeded {
    pub logins: Vec<Login>,
    /// An editor API token of the demo site's outlet.
    pub api_token: String,
    /// The ingest token the demo's shield pushes episodes with.
    pub ingest_token: String,
}

/// The demo site's outlet (the shield in front of the sample site reports to it).
pub const HOME: &str = "dala";

const OUTLETS: [(&str, &str); 3] = [
    ("dala", "Dala News"),
    ("qala", "Qala Times"),
    ("saryarqa", "Saryarqa Today"),
];

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;

fn password() -> anyhow::Result<String> {
    // 18 characters of a 256-bit random token: easy to paste, hard to guess.
    let t = qalqan_atlas::accounts::random_token("")?;
    Ok(format!("demo-{}", &t[..18]))
}

/// Addresses of the sample botnet: `n` addresses in a few public /16s.
fn botnet(rng: &mut Rng, n: usize) -> Vec<String> {
    const NETS: [(u8, u8); 8] = [
        (5, 188),
        (45, 146),
        (77, 83),
        (91, 240),
        (103, 152),
        (185, 220),
        (194, 26),
        (213, 109),
    ];
    (0..n)
        .map(|_| {
            let (a, b) = NETS[rng.below(NETS.len() as u64) as usize];
            format!("{a}.{b}.{}.{}", rng.below(256), 1 + rng.below(254))
        })
        .collect()
}

/// The store's error with its field problems spelled out (its Display says only "invalid").
fn explain(e: qalqan_atlas::Error) -> anyhow::Error {
    match e {
        qalqan_atlas::Error::Invalid(fields) => {
            let f: Vec<String> = fields.iter().map(|f| format!("{f:?}")).collect();
            anyhow::anyhow!("invalid sample data: {}", f.join("; "))
        }
        other => anyhow::anyhow!("{other}"),
    }
}

fn actor(outlet_id: i64) -> Actor {
    Actor {
        outlet_id,
        role: Role::Admin,
        label: "cli:demo".into(),
        user_id: None,
    }
}

struct Plan {
    outlet: usize,
    kind: &'static str,
    title: &'static str,
    tlp: &'static str,
    day: i64,
    hours: i64,
    sightings: Vec<SightingIn>,
    impact: Impact,
    target: (&'static str, Option<&'static str>, &'static str),
}

fn ip_sightings(ips: &[String], count: i64) -> Vec<SightingIn> {
    ips.iter()
        .map(|v| SightingIn {
            kind: "ip".into(),
            value: v.clone(),
            count: Some(count),
            first_seen: None,
            last_seen: None,
        })
        .collect()
}

fn s(kind: &str, value: &str, count: i64) -> SightingIn {
    SightingIn {
        kind: kind.into(),
        value: value.into(),
        count: Some(count),
        first_seen: None,
        last_seen: None,
    }
}

/// Fills an empty atlas with the sample task force. `now_ms` anchors the history.
pub async fn seed(db: &Db, now_ms: i64) -> anyhow::Result<Seeded> {
    db.set_task_force("Демо: рабочая группа независимых СМИ")
        .await
        .map_err(explain)?;
    let mut ids = Vec::new();
    let mut logins = Vec::new();
    for (slug, name) in OUTLETS {
        let o = db
            .create_outlet(slug, name, "cli:demo")
            .await
            .map_err(explain)?;
        let email = format!("admin@{slug}.demo");
        let pw = password()?;
        db.create_user(
            None,
            o.id,
            &email,
            &format!("{name} admin"),
            &pw,
            Role::Admin,
        )
        .await
        .map_err(explain)?;
        logins.push(Login {
            outlet: slug.into(),
            email,
            password: pw,
            role: "admin".into(),
        });
        ids.push(o.id);
    }
    let pw = password()?;
    db.create_user(
        None,
        ids[0],
        "viewer@dala.demo",
        "Dala viewer",
        &pw,
        Role::Viewer,
    )
    .await
    .map_err(explain)?;
    logins.push(Login {
        outlet: HOME.into(),
        email: "viewer@dala.demo".into(),
        password: pw,
        role: "viewer".into(),
    });
    // Dala shares AMBER with Qala; its shield's episodes are GREEN (the whole task force), so
    // partners see the demo attack too.
    db.set_sharing(&actor(ids[0]), Tlp::Green, &["qala".to_string()])
        .await
        .map_err(explain)?;
    let api_token = db
        .create_token(None, ids[0], "demo API", Role::Editor)
        .await
        .map_err(explain)?;
    let ingest_token = db
        .create_token(None, ids[0], "demo shield", Role::Ingest)
        .await
        .map_err(explain)?;

    let mut rng = Rng::new(2024);
    let net = botnet(&mut rng, 120);
    let bot_uas = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        "python-requests/2.31.0",
    ];
    let mut plans = Vec::new();
    // One botnet, three outlets, three waves a month apart: the campaign the atlas should find.
    for (wave, day) in [(0, 150), (1, 96), (2, 40)] {
        for (o, title) in [
            (0, "Поисковый флуд: «number one» на сайте"),
            (1, "HTTP-флуд на главную страницу"),
            (2, "DDoS на поиск по сайту"),
        ] {
            let mut sg: Vec<SightingIn> = ip_sightings(
                &net[(wave * 20 + o * 7)..(wave * 20 + o * 7 + 60)],
                200 + 50 * o as i64,
            );
            sg.push(s("user_agent", bot_uas[wave % 2], 40_000));
            sg.push(s("asn", "AS9009", 30_000));
            plans.push(Plan {
                outlet: o,
                kind: "http_flood",
                title,
                tlp: if o == 2 { "clear" } else { "green" },
                day: day - o as i64,
                hours: 5 + o as i64,
                sightings: sg,
                impact: Impact {
                    downtime_minutes: Some(40 + 30 * o as i64),
                    requests: Some(1_300_000 * (3 - o as i64)),
                    followers_added: None,
                    comments: None,
                },
                target: ("website", None, "https://example.org/search"),
            });
        }
    }
    plans.push(Plan {
        outlet: 2,
        kind: "bot_comments",
        title: "4 000 комментариев «R.I.P» под видео",
        tlp: "green",
        day: 60,
        hours: 30,
        sightings: vec![
            s("text_pattern", "r.i.p", 4000),
            s("social_account", "youtube:@rip_bot_0147", 35),
            s("social_account", "youtube:@rip_bot_0203", 31),
        ],
        impact: Impact {
            comments: Some(4000),
            ..Impact::default()
        },
        target: ("social", Some("youtube"), "@saryarqa.today"),
    });
    plans.push(Plan {
        outlet: 1,
        kind: "bot_followers",
        title: "Волна ботов-подписчиков в Telegram-канале",
        tlp: "green",
        day: 75,
        hours: 48,
        sightings: vec![
            s("social_account", "telegram:kz_news_fan_0001", 1),
            s("social_account", "telegram:kz_news_fan_0002", 1),
            s("text_pattern", "kz_news_fan_####", 90_000),
        ],
        impact: Impact {
            followers_added: Some(90_000),
            ..Impact::default()
        },
        target: ("social", Some("telegram"), "@qalatimes"),
    });
    plans.push(Plan {
        outlet: 0,
        kind: "phishing",
        title: "Фишинговые письма от имени редакции",
        tlp: "amber",
        day: 20,
        hours: 6,
        sightings: vec![
            s("domain", "dala-news-login.example", 12),
            s("email", "security@dala-news-login.example", 12),
        ],
        impact: Impact::default(),
        target: ("mail", None, "editor@dala.example"),
    });
    plans.push(Plan {
        outlet: 0,
        kind: "threat_comments",
        title: "Копипаст-угрозы журналисту в комментариях",
        tlp: "amber+strict",
        day: 12,
        hours: 10,
        sightings: vec![s("text_pattern", "мы знаем где ты живёшь", 240)],
        impact: Impact {
            comments: Some(240),
            ..Impact::default()
        },
        target: ("social", Some("instagram"), "@dala.news"),
    });
    plans.push(Plan {
        outlet: 1,
        kind: "mass_complaints",
        title: "Блокировка Instagram-аккаунта после массовых жалоб",
        tlp: "green",
        day: 33,
        hours: 72,
        sightings: vec![],
        impact: Impact::default(),
        target: ("social", Some("instagram"), "@qala.times"),
    });
    plans.push(Plan {
        outlet: 2,
        kind: "unreachable",
        title: "Сайт недоступен из Казахстана двое суток",
        tlp: "clear",
        day: 120,
        hours: 48,
        sightings: vec![],
        impact: Impact {
            downtime_minutes: Some(2880),
            ..Impact::default()
        },
        target: ("website", None, "https://saryarqa.example"),
    });
    plans.push(Plan {
        outlet: 0,
        kind: "intrusion",
        title: "Подбор паролей к почте редакции",
        tlp: "amber",
        day: 8,
        hours: 20,
        sightings: ip_sightings(&net[100..110], 900),
        impact: Impact::default(),
        target: ("mail", None, "mail.dala.example"),
    });

    for p in &plans {
        let started = now_ms - p.day * DAY + 9 * HOUR;
        let input = IncidentIn {
            kind: p.kind.into(),
            title: p.title.into(),
            description: "Пример для демонстрации Qalqan (вымышленные данные). Sample data for the Qalqan demo.".into(),
            status: Some("closed".into()),
            confidence: Some("confirmed".into()),
            tlp: Some(p.tlp.into()),
            started_at: format_time(started),
            ended_at: Some(format_time(started + p.hours * HOUR)),
            date_unknown: false,
            impact: p.impact.clone(),
            targets: vec![Target {
                kind: p.target.0.into(),
                platform: p.target.1.map(str::to_string),
                value: p.target.2.into(),
            }],
            recipients: Vec::new(),
        };
        let a = actor(ids[p.outlet]);
        let inc = db.create_incident(&a, &input).await.map_err(explain)?;
        if !p.sightings.is_empty() {
            let mut sg = p.sightings.clone();
            for x in &mut sg {
                x.first_seen = Some(format_time(started));
                x.last_seen = Some(format_time(started + p.hours * HOUR));
            }
            db.add_sightings(&a, &inc.id, &sg).await.map_err(explain)?;
        }
    }

    // The demo site's publications: three a day for 160 days. Investigations come out on the
    // eve of each flood at Dala, as in the story the task force told.
    let topics = qalqan_drill::origin::TOPICS;
    let flood_days: Vec<i64> = plans
        .iter()
        .filter(|p| p.outlet == 0 && p.kind == "http_flood")
        .map(|p| p.day)
        .collect();
    let home = actor(ids[0]);
    let mut n = 0u32;
    for day in (1..=160i64).rev() {
        for slot in 0..3i64 {
            n += 1;
            let eve = flood_days.contains(&(day + 1)) && slot == 2;
            let topic = if eve {
                "расследования"
            } else {
                topics[rng.below(topics.len() as u64) as usize]
            };
            let (title, _) = qalqan_drill::origin::article_title(n);
            let title = if eve {
                "Расследование: кому принадлежат подрядчики акимата"
            } else {
                title
            };
            db.add_publication(
                &home,
                &PublicationIn {
                    url: format!("https://dala.example/article/{n}"),
                    title: title.into(),
                    published_at: format_time(now_ms - day * DAY + (8 + 5 * slot) * HOUR),
                    tags: vec![topic.into()],
                    summary: None,
                },
            )
            .await
            .map_err(explain)?;
        }
    }
    Ok(Seeded {
        logins,
        api_token,
        ingest_token,
    })
}
