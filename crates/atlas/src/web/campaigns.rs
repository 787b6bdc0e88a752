//! Dashboard page of campaigns across outlets (`/campaigns`): proposals and decisions, each
//! with its score, members and shared evidence, as the reader may see them (the store decides,
//! [`crate::campaigns`]); editors of a member outlet confirm or reject with a CSRF-checked form,
//! and on a campaign's own page (`/campaigns/{id}`) rename it and describe it.
//! A child of `web`, so it shares the frame, the session and the CSRF check.

use super::*;

use crate::campaigns::{Campaign, CampaignEdit, MAX_DESCRIPTION, MAX_NAME, Params};

/// The words of this page: (key, Russian, Kazakh, English). Chained into the i18n table.
pub const MESSAGES: &[(&str, &str, &str, &str)] = &[
    ("nav.campaigns", "Кампании", "Науқандар", "Campaigns"),
    (
        "campaigns.title",
        "Кампании: одни и те же атакующие у разных редакций",
        "Науқандар: әр түрлі редакцияларға бір шабуылдаушылар",
        "Campaigns: the same attackers at different outlets",
    ),
    (
        "campaigns.intro",
        "Атаки на разные редакции в пределах 14 дней, у которых общие адреса, сети, агенты, тексты или аккаунты, предлагаются как одна кампания. Сети CDN, поисковые роботы и сервисы предпросмотра ссылок не учитываются. Видны только инциденты, которые вам разрешено видеть.",
        "14 күн ішінде әр түрлі редакцияларға жасалған, ортақ мекенжайлары, желілері, агенттері, мәтіндері не аккаунттары бар шабуылдар бір науқан ретінде ұсынылады. CDN желілері, іздеу роботтары және сілтеме алдын ала қарау қызметтері есепке алынбайды. Тек көруге рұқсат етілген инциденттер көрінеді.",
        "Attacks on different outlets within 14 days that share addresses, networks, agents, texts or accounts are proposed as one campaign. CDNs, search crawlers and link-preview services are ignored. Only incidents you may see are shown.",
    ),
    (
        "campaigns.none",
        "Кампаний нет.",
        "Науқандар жоқ.",
        "No campaigns.",
    ),
    ("campaigns.all", "Все", "Барлығы", "All"),
    ("campaigns.proposed", "Предложена", "Ұсынылған", "Proposed"),
    (
        "campaigns.confirmed",
        "Подтверждена",
        "Расталған",
        "Confirmed",
    ),
    (
        "campaigns.rejected",
        "Отклонена",
        "Қабылданбаған",
        "Rejected",
    ),
    ("campaigns.score", "Оценка", "Баға", "Score"),
    ("campaigns.period", "Период", "Кезең", "Period"),
    ("campaigns.members", "Инциденты", "Инциденттер", "Incidents"),
    (
        "campaigns.evidence",
        "Общие признаки",
        "Ортақ белгілер",
        "Shared evidence",
    ),
    ("campaigns.shared", "общих", "ортақ", "shared"),
    ("campaigns.confirm", "Подтвердить", "Растау", "Confirm"),
    ("campaigns.reject", "Отклонить", "Қабылдамау", "Reject"),
    ("campaigns.decided", "Решение", "Шешім", "Decision"),
    (
        "campaigns.recompute",
        "Пересчитать сейчас",
        "Қазір қайта есептеу",
        "Recompute now",
    ),
    (
        "campaigns.ev_ip",
        "IP-адреса (доля общих)",
        "IP мекенжайлар (ортақ үлесі)",
        "IP addresses (share in common)",
    ),
    (
        "campaigns.ev_net24",
        "Сети /24 (доля общих)",
        "/24 желілері (ортақ үлесі)",
        "/24 networks (share in common)",
    ),
    (
        "campaigns.ev_asn",
        "Автономные системы",
        "Автономды жүйелер",
        "Autonomous systems",
    ),
    (
        "campaigns.ev_user_agent",
        "Агенты (User-Agent)",
        "Агенттер (User-Agent)",
        "User agents",
    ),
    (
        "campaigns.ev_text_pattern",
        "Тексты",
        "Мәтіндер",
        "Text patterns",
    ),
    (
        "campaigns.ev_social_account",
        "Аккаунты",
        "Аккаунттар",
        "Accounts",
    ),
    ("campaigns.ev_domain", "Домены", "Домендер", "Domains"),
    ("campaigns.ev_url", "Ссылки", "Сілтемелер", "URLs"),
    (
        "campaigns.ev_email",
        "Адреса e-mail",
        "E-mail мекенжайлары",
        "E-mail addresses",
    ),
    (
        "campaigns.open",
        "Страница кампании",
        "Науқан беті",
        "Campaign page",
    ),
    (
        "campaigns.back",
        "Все кампании",
        "Барлық науқандар",
        "All campaigns",
    ),
    (
        "campaigns.edit",
        "Название и описание",
        "Атауы мен сипаттамасы",
        "Name and description",
    ),
    (
        "campaigns.edit_hint",
        "Название до 200 знаков, описание до 4000. Их видят все, кто видит кампанию, и они попадают в выгрузку STIX и TAXII: не пишите того, чего нельзя знать читателям с меньшими правами.",
        "Атауы 200 таңбаға дейін, сипаттамасы 4000 таңбаға дейін. Оларды науқанды көретіндердің бәрі көреді және олар STIX пен TAXII экспортына түседі: құқығы аз оқырмандар білмеуге тиіс нәрсені жазбаңыз.",
        "Name up to 200 characters, description up to 4000. Everyone who sees the campaign sees them, and they go into the STIX and TAXII export: do not write what readers with fewer rights may not know.",
    ),
    ("campaigns.name", "Название", "Атауы", "Name"),
    (
        "campaigns.description",
        "Описание",
        "Сипаттамасы",
        "Description",
    ),
    ("campaigns.save", "Сохранить", "Сақтау", "Save"),
    (
        "campaigns.ev_file_sha256",
        "Файлы (SHA-256)",
        "Файлдар (SHA-256)",
        "Files (SHA-256)",
    ),
];

pub struct MemberRow {
    pub href: String,
    pub outlet: String,
    pub title: String,
    pub started: String,
}

pub struct EvidenceRow {
    pub label: &'static str,
    pub shared: u64,
    pub values: String,
}

pub struct CampaignRow {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Editors of a member outlet may rename it (not once rejected).
    pub can_edit: bool,
    pub status: &'static str,
    pub score: String,
    pub first: String,
    pub last: String,
    pub tlp: String,
    pub members: Vec<MemberRow>,
    pub evidence: Vec<EvidenceRow>,
    pub decided: String,
    pub can_decide: bool,
}

pub struct Filter {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "campaigns.html")]
struct CampaignsPage {
    p: Frame,
    filters: Vec<Filter>,
    items: Vec<CampaignRow>,
}

fn row(l: Lang, can_write: bool, c: Campaign) -> CampaignRow {
    let status = match c.status.as_str() {
        "confirmed" => "campaigns.confirmed",
        "rejected" => "campaigns.rejected",
        _ => "campaigns.proposed",
    };
    CampaignRow {
        score: format!("{:.0} %", c.score * 100.0),
        first: local_from_rfc(&c.first_seen),
        last: local_from_rfc(&c.last_seen),
        tlp: c.tlp.to_uppercase(),
        members: c
            .members
            .iter()
            .map(|m| MemberRow {
                href: format!("/incidents/{}", m.id),
                outlet: m.outlet.clone(),
                title: m.title.clone(),
                started: local_from_rfc(&m.started_at),
            })
            .collect(),
        evidence: c
            .evidence
            .iter()
            .map(|(kind, e)| EvidenceRow {
                label: t(l, &format!("campaigns.ev_{kind}")),
                shared: e.shared,
                values: e.values.join(", "),
            })
            .collect(),
        decided: match (&c.decided_by, &c.decided_at) {
            (Some(by), Some(at)) => {
                format!("{}, {}", by.trim_start_matches("user:"), local_from_rfc(at))
            }
            _ => String::new(),
        },
        can_decide: can_write && c.own_member,
        can_edit: can_write && c.own_member && c.status != "rejected",
        status: t(l, status),
        id: c.id,
        name: c.name,
        description: c.description,
    }
}

/// `GET /campaigns[?status=…]`
pub(super) async fn list(
    State(a): State<Arc<Atlas>>,
    auth: Auth,
    uri: axum::http::Uri,
) -> Response {
    let l = auth.ctx.lang;
    let f = Form::parse(uri.query().unwrap_or("").as_bytes());
    let status = match f.get("status") {
        s @ ("proposed" | "confirmed" | "rejected") => Some(s),
        _ => None,
    };
    let items = match a.db.campaigns(&auth.actor, status).await {
        Ok(c) => c,
        Err(e) => return fail(&auth.ctx, Some(&auth), e),
    };
    let can_write = auth.actor.role.can_write();
    let filters = [
        ("/campaigns", "campaigns.all", None),
        (
            "/campaigns?status=proposed",
            "campaigns.proposed",
            Some("proposed"),
        ),
        (
            "/campaigns?status=confirmed",
            "campaigns.confirmed",
            Some("confirmed"),
        ),
        (
            "/campaigns?status=rejected",
            "campaigns.rejected",
            Some("rejected"),
        ),
    ]
    .into_iter()
    .map(|(href, key, s)| Filter {
        href,
        label: t(l, key),
        current: s == status,
    })
    .collect();
    let page = CampaignsPage {
        p: Frame::new(&auth.ctx, Some(&auth), t(l, "campaigns.title").into()),
        filters,
        items: items.into_iter().map(|c| row(l, can_write, c)).collect(),
    };
    render(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "campaign.html")]
struct CampaignPage {
    p: Frame,
    c: CampaignRow,
    max_name: usize,
    max_description: usize,
}

/// `GET /campaigns/{id}`: one campaign as the reader sees it; for editors of a member outlet,
/// the form that names and describes it. A campaign the reader may not see is "not found".
pub(super) async fn show(
    State(a): State<Arc<Atlas>>,
    Path(id): Path<String>,
    auth: Auth,
) -> Response {
    let l = auth.ctx.lang;
    let c = match a.db.campaign(&auth.actor, &id).await {
        Ok(c) => c,
        Err(e) => return fail(&auth.ctx, Some(&auth), e),
    };
    let c = row(l, auth.actor.role.can_write(), c);
    let page = CampaignPage {
        p: Frame::new(&auth.ctx, Some(&auth), c.name.clone()),
        c,
        max_name: MAX_NAME,
        max_description: MAX_DESCRIPTION,
    };
    render(StatusCode::OK, &page)
}

/// `POST /campaigns/{id}/edit` (fields `name`, `description`): renames and describes it.
pub(super) async fn edit(
    State(a): State<Arc<Atlas>>,
    Path(id): Path<String>,
    f: AuthForm,
) -> Response {
    let AuthForm { auth, form } = f;
    let e = CampaignEdit {
        name: Some(form.get("name").to_string()),
        description: Some(form.get("description").to_string()),
    };
    match a.db.edit_campaign(&auth.actor, &id, &e).await {
        Ok(c) => see_other(&format!("/campaigns/{}", c.id)),
        Err(e) => fail(&auth.ctx, Some(&auth), e),
    }
}

/// `POST /campaigns/{id}/decision` (field `status`: confirmed or rejected)
pub(super) async fn decide(
    State(a): State<Arc<Atlas>>,
    Path(id): Path<String>,
    f: AuthForm,
) -> Response {
    let AuthForm { auth, form } = f;
    match a
        .db
        .decide_campaign(&auth.actor, &id, form.get("status"))
        .await
    {
        Ok(_) => see_other("/campaigns"),
        Err(e) => fail(&auth.ctx, Some(&auth), e),
    }
}

/// `POST /campaigns/recompute` (editors and admins)
pub(super) async fn recompute(State(a): State<Arc<Atlas>>, f: AuthForm) -> Response {
    let AuthForm { auth, .. } = f;
    if !auth.actor.role.can_write() {
        return fail(&auth.ctx, Some(&auth), Error::Forbidden);
    }
    match a.db.recompute_campaigns(&Params::default()).await {
        Ok(_) => see_other("/campaigns?status=proposed"),
        Err(e) => fail(&auth.ctx, Some(&auth), e),
    }
}

#[cfg(test)]
mod tests {
    use super::MESSAGES;

    #[test]
    fn words_have_three_languages_and_reach_the_table() {
        let mut seen = std::collections::HashSet::new();
        for (k, ru, kk, en) in MESSAGES {
            assert!(seen.insert(*k), "duplicate {k}");
            // Chained into the dashboard's table, and not shadowed by a key of the same name.
            for (lang, text) in [
                (crate::i18n::Lang::Ru, ru),
                (crate::i18n::Lang::Kk, kk),
                (crate::i18n::Lang::En, en),
            ] {
                assert_eq!(crate::i18n::t(lang, k), *text, "{k}");
            }
            let cyrillic = |s: &str| s.chars().any(|c| ('\u{400}'..='\u{4ff}').contains(&c));
            assert!(!en.trim().is_empty(), "{k}: no English");
            assert!(
                cyrillic(ru) && cyrillic(kk),
                "{k}: Russian or Kazakh not in Cyrillic"
            );
        }
    }
}
