//! Dashboard pages of publications: "what provokes attacks" (`/provoke`), the outlet's feeds in
//! the settings (`/settings/feeds`), and the rows of publications before an incident shown on
//! its page. A child of `web`, so it shares the frame, the session and the CSRF check.

use super::*;

use crate::feeds::FeedIn;
use crate::provoke::{DEFAULT_WINDOW_H, ProvokeQuery, Report};

/// Hours and minutes from a publication to an attack (`5:07`).
fn lead(minutes: i64) -> String {
    let m = minutes.max(0);
    format!("{}:{:02}", m / 60, m % 60)
}

/// One publication before an incident, on the incident page.
pub struct PrecedingRow {
    pub url: String,
    pub title: String,
    pub when: String,
    pub lead: String,
    pub tags: String,
}

/// The publications before an incident, for its page (empty on any error: the page itself
/// already proved the incident visible, and this section is an aid, not the record).
pub(super) async fn preceding_rows(a: &Atlas, c: &Actor, id: &str) -> Vec<PrecedingRow> {
    match a.db.preceding_publications(c, id, DEFAULT_WINDOW_H).await {
        Ok(p) => p
            .publications
            .into_iter()
            .map(|x| PrecedingRow {
                when: local_from_rfc(&x.published_at),
                lead: lead(x.lead_minutes),
                tags: x.tags.join(", "),
                url: x.url,
                title: x.title,
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "publications before an incident");
            Vec::new()
        }
    }
}

pub struct EvidencePubView {
    pub url: String,
    pub title: String,
    pub when: String,
    pub lead: String,
}

pub struct EvidenceView {
    pub href: String,
    pub title: String,
    pub outlet: String,
    pub started: String,
    pub pubs: Vec<EvidencePubView>,
}

pub struct TermView {
    pub term: String,
    pub kind: &'static str,
    pub before: u32,
    pub before_total: u32,
    pub all: u32,
    pub all_total: u32,
    pub lift: String,
    pub low: String,
    pub high: String,
    pub q: String,
    pub significant: bool,
    pub incidents: u32,
    pub evidence: Vec<EvidenceView>,
}

#[derive(Template)]
#[template(path = "provoke.html")]
struct ProvokePage {
    p: Frame,
    outlets: Vec<Opt>,
    window: String,
    from: String,
    to: String,
    /// `None` when the form had errors.
    report: Option<ReportView>,
    e: Errors,
}

pub struct ReportView {
    pub incidents: usize,
    pub publications: usize,
    pub before: usize,
    pub tested: usize,
    pub min_support: u32,
    pub significant: Vec<TermView>,
    pub others: Vec<TermView>,
}

fn view(l: Lang, r: Report) -> ReportView {
    let mut significant = Vec::new();
    let mut others = Vec::new();
    for s in r.terms {
        let v = TermView {
            term: s.term,
            kind: if s.kind == "tag" {
                t(l, "provoke.kind_tag")
            } else {
                t(l, "provoke.kind_keyword")
            },
            before: s.before,
            before_total: s.before_total,
            all: s.all,
            all_total: s.all_total,
            lift: format!("{:.2}", s.lift),
            low: format!("{:.2}", s.lift_low),
            high: format!("{:.2}", s.lift_high),
            q: if s.q_value < 0.001 {
                "< 0.001".into()
            } else {
                format!("{:.3}", s.q_value)
            },
            significant: s.significant,
            incidents: s.incidents,
            evidence: s
                .evidence
                .into_iter()
                .map(|e| EvidenceView {
                    href: format!("/incidents/{}", e.id),
                    title: e.title,
                    outlet: e.outlet,
                    started: local_from_rfc(&e.started_at),
                    pubs: e
                        .publications
                        .into_iter()
                        .map(|p| EvidencePubView {
                            when: local_from_rfc(&p.published_at),
                            lead: lead(p.lead_minutes),
                            url: p.url,
                            title: p.title,
                        })
                        .collect(),
                })
                .collect(),
        };
        if v.significant {
            significant.push(v);
        } else if others.len() < 10 {
            others.push(v);
        }
    }
    ReportView {
        incidents: r.incidents,
        publications: r.publications,
        before: r.publications_before,
        tested: r.terms_tested,
        min_support: r.min_support,
        significant,
        others,
    }
}

/// `GET /provoke`: the form (outlet, window, period) is a plain GET, so a result is a link.
pub(super) async fn provoke(
    State(a): State<Arc<Atlas>>,
    auth: Auth,
    uri: axum::http::Uri,
) -> Response {
    let l = auth.ctx.lang;
    let f = Form::parse(uri.query().unwrap_or("").as_bytes());
    let mut e = Errors::default();
    let window = f.get("window_hours").trim().to_string();
    let window_hours = if window.is_empty() {
        None
    } else {
        match window.parse::<i64>() {
            Ok(h) => Some(h),
            Err(_) => {
                e.add("window_hours", t(l, "err.number").to_string());
                None
            }
        }
    };
    // Dates typed in the form are local (UTC+5) days: from the start of `from` to the end of `to`.
    let day = |k: &str, e: &mut Errors, end: bool| -> Option<String> {
        let v = f.get(k).trim();
        if v.is_empty() {
            return None;
        }
        match form_date(v) {
            Some(d) if end => Some(rfc_local(d, 23, 59)),
            Some(d) => Some(rfc_local(d, 0, 0)),
            None => {
                e.add(k, t(l, "err.date").to_string());
                None
            }
        }
    };
    let from = day("from", &mut e, false);
    let to = day("to", &mut e, true);
    let outlet = f.get("outlet").trim().to_string();
    let all = a.db.outlets().await.unwrap_or_default();
    let mut outlets = vec![opt("", t(l, "provoke.all_outlets"), outlet.is_empty())];
    outlets.extend(all.iter().map(|o| opt(&o.slug, &o.name, o.slug == outlet)));
    let report = if e.is_empty() {
        let q = ProvokeQuery {
            outlet: Some(outlet.clone()),
            window_hours,
            from,
            to,
            ..ProvokeQuery::default()
        };
        match a.db.provoke(&auth.actor, &q).await {
            Ok(r) => Some(view(l, r)),
            Err(Error::Invalid(fs)) => {
                for fe in fs {
                    e.add(&fe.field, field_message(l, &fe.message));
                }
                None
            }
            Err(err) => return fail(&auth.ctx, Some(&auth), err),
        }
    } else {
        None
    };
    let page = ProvokePage {
        p: Frame::new(&auth.ctx, Some(&auth), t(l, "provoke.title").into()),
        outlets,
        window: if window.is_empty() {
            DEFAULT_WINDOW_H.to_string()
        } else {
            window
        },
        from: f.get("from").trim().to_string(),
        to: f.get("to").trim().to_string(),
        report,
        e,
    };
    let status = if page.report.is_some() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    render(status, &page)
}

pub struct FeedRow {
    pub id: i64,
    pub url: String,
    pub added: String,
    pub last_poll: String,
    pub last_ok: String,
    pub error: String,
    pub added_count: i64,
}

#[derive(Template)]
#[template(path = "feeds.html")]
struct FeedsPage {
    p: Frame,
    feeds: Vec<FeedRow>,
    url: String,
    max: i64,
    e: Errors,
}

async fn feeds_page(
    a: &Atlas,
    auth: &Auth,
    url: String,
    e: Errors,
    status: StatusCode,
) -> Response {
    let l = auth.ctx.lang;
    if auth.actor.role != Role::Admin {
        return fail(&auth.ctx, Some(auth), Error::Forbidden);
    }
    let feeds = match a.db.feeds(&auth.actor).await {
        Ok(f) => f,
        Err(err) => return fail(&auth.ctx, Some(auth), err),
    };
    let when = |s: &Option<String>| s.as_deref().map(local_from_rfc).unwrap_or_default();
    let page = FeedsPage {
        p: Frame::new(&auth.ctx, Some(auth), t(l, "feeds.title").into()),
        feeds: feeds
            .iter()
            .map(|f| FeedRow {
                id: f.id,
                url: f.url.clone(),
                added: local_from_rfc(&f.added_at),
                last_poll: when(&f.last_poll),
                last_ok: when(&f.last_ok),
                error: f.last_error.clone(),
                added_count: f.last_added,
            })
            .collect(),
        url,
        max: crate::feeds::MAX_FEEDS_PER_OUTLET,
        e,
    };
    render(status, &page)
}

/// `GET /settings/feeds` (outlet admins).
pub(super) async fn feeds(State(a): State<Arc<Atlas>>, auth: Auth) -> Response {
    feeds_page(&a, &auth, String::new(), Errors::default(), StatusCode::OK).await
}

/// `POST /settings/feeds`: adds a feed.
pub(super) async fn add_feed(State(a): State<Arc<Atlas>>, f: AuthForm) -> Response {
    let AuthForm { auth, form } = f;
    let l = auth.ctx.lang;
    let url = form.get("url").trim().to_string();
    match a
        .db
        .add_feed(&auth.actor, &FeedIn { url: url.clone() })
        .await
    {
        Ok(_) => see_other("/settings/feeds"),
        Err(Error::Invalid(fs)) => {
            let mut e = Errors::default();
            for fe in fs {
                e.add("url", field_message(l, &fe.message));
            }
            feeds_page(&a, &auth, url, e, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(Error::Conflict(_)) => {
            let mut e = Errors::default();
            e.add("url", t(l, "feeds.duplicate").to_string());
            feeds_page(&a, &auth, url, e, StatusCode::CONFLICT).await
        }
        Err(err) => fail(&auth.ctx, Some(&auth), err),
    }
}

/// `POST /settings/feeds/{id}/delete`: removes a feed (its publications stay).
pub(super) async fn remove_feed(
    State(a): State<Arc<Atlas>>,
    Path(id): Path<String>,
    f: AuthForm,
) -> Response {
    let AuthForm { auth, .. } = f;
    let Ok(id) = id.parse::<i64>() else {
        return fail(&auth.ctx, Some(&auth), Error::NotFound);
    };
    match a.db.remove_feed(&auth.actor, id).await {
        Ok(()) => see_other("/settings/feeds"),
        Err(err) => fail(&auth.ctx, Some(&auth), err),
    }
}
