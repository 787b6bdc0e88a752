//! The map pages: `/map` (where from), `/map/time` (when), `/map/shared` (who with whom).
//!
//! Server-rendered SVG and tables; no script, nothing from elsewhere, so a page works on a slow
//! phone and under the dashboard's CSP. Every chart has the same figures as a table next to it:
//! the table is what a screen reader reads and what a phone that cannot hover shows.
//!
//! Filters are GET parameters (`from`, `to` as local days, `outlet` slug, `kind` code, `tlp`);
//! a value that does not check out answers 400 with the page, the form and the field named, and
//! no data. Handlers only translate between HTTP and `map::query`, which applies the TLP rule.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;

use super::query::{DAY_MS, DayCount, GeoView, LOCAL_OFFSET_MS, MapFilter, SharedView};
use super::world;
use crate::Atlas;
use crate::accounts::Outlet;
use crate::i18n::{Lang, t};
use crate::model::Tlp;
use crate::web::{Auth, Frame, Opt, badge, fail, form_date, kind_names, opt, render};

/// Most periods on the timeline (20 years of months); older ones are left off.
const MAX_PERIODS: usize = 240;
/// Days on the calendar.
const CALENDAR_DAYS: i64 = 365;
/// Rows in the table of busiest days.
const BUSIEST: usize = 10;
/// Colours of incident kinds on the timeline, in the order of kind codes.
const PALETTE: [&str; 12] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939",
];

/// The map's routes (merged into the dashboard's router, under its middleware).
pub fn router() -> Router<Arc<Atlas>> {
    Router::new()
        .route("/map", get(where_page))
        .route("/map/time", get(when_page))
        .route("/map/shared", get(shared_page))
}

// ---------------------------------------------------------------------------------------------
// Filters.

/// The filter form as the page shows it, and the links between the map's views.
pub struct FilterForm {
    pub kinds: Vec<Opt>,
    pub tlps: Vec<Opt>,
    pub outlets: Vec<Opt>,
    pub from: String,
    pub to: String,
    /// The filter as a query string (`?from=…`), or "": kept by the tabs.
    pub query: String,
    pub errors: Vec<String>,
    /// Whether any filter is set (the box then starts open).
    pub open: bool,
}

/// Midnight (Kazakhstan time) at the start of a local day, as Unix milliseconds.
fn local_midnight_ms(d: time::Date) -> i64 {
    let day = i64::from(d.to_julian_day()) - 2_440_588;
    day * DAY_MS - LOCAL_OFFSET_MS
}

/// A day number (days since 1970-01-01, local) as a date.
fn day_date(day: i64) -> Option<time::Date> {
    i32::try_from(day + 2_440_588)
        .ok()
        .and_then(|j| time::Date::from_julian_day(j).ok())
}

fn day_label(day: i64) -> String {
    match day_date(day) {
        Some(d) => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        None => day.to_string(),
    }
}

/// Today's local day number.
fn today() -> i64 {
    (crate::model::now_ms() + LOCAL_OFFSET_MS).div_euclid(DAY_MS)
}

/// Reads and checks the filter. Field errors name the form's label and what is wrong.
fn read_filter(
    l: Lang,
    uri: &Uri,
    kinds: &[(String, String)],
    outlets: &[Outlet],
) -> (MapFilter, FilterForm) {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .take(50)
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect();
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let mut f = MapFilter::default();
    let mut errors = Vec::new();
    let mut bad = |label: &str, key: &str| errors.push(format!("{label}: {}", t(l, key)));
    let from = get("from").chars().take(40).collect::<String>();
    let to = get("to").chars().take(40).collect::<String>();
    if !from.is_empty() {
        match form_date(&from) {
            Some(d) => f.from_ms = Some(local_midnight_ms(d)),
            None => bad(t(l, "list.from"), "err.date"),
        }
    }
    if !to.is_empty() {
        match form_date(&to).and_then(|d| d.next_day()) {
            Some(d) => f.to_ms = Some(local_midnight_ms(d)),
            None => bad(t(l, "list.to"), "err.date"),
        }
    }
    if let (Some(a), Some(b)) = (f.from_ms, f.to_ms)
        && b <= a
    {
        bad(t(l, "list.to"), "map.bad_range");
    }
    let outlet = get("outlet");
    if !outlet.is_empty() {
        match outlets.iter().find(|o| o.slug == outlet) {
            Some(o) => f.outlet_id = Some(o.id),
            None => bad(t(l, "list.outlet"), "map.bad_choice"),
        }
    }
    let kind = get("kind");
    if !kind.is_empty() {
        match kinds.iter().find(|(c, _)| c == kind) {
            Some((c, _)) => f.kind = Some(c.clone()),
            None => bad(t(l, "list.kind"), "map.bad_choice"),
        }
    }
    let tlp = get("tlp");
    if !tlp.is_empty() {
        match Tlp::parse(tlp) {
            Some(x) => f.tlp = Some(x),
            None => bad("TLP", "map.bad_choice"),
        }
    }
    let sel = |k: &str, v: &str| get(k) == v;
    let mut kind_opts = vec![opt("", t(l, "list.any"), false)];
    kind_opts.extend(kinds.iter().map(|(c, n)| opt(c, n, sel("kind", c))));
    let mut tlps = vec![opt("", t(l, "list.any"), false)];
    tlps.extend(
        Tlp::ALL
            .iter()
            .map(|x| opt(x.as_str(), badge(*x).label, sel("tlp", x.as_str()))),
    );
    let mut outlet_opts = vec![opt("", t(l, "list.any"), false)];
    outlet_opts.extend(
        outlets
            .iter()
            .map(|o| opt(&o.slug, &o.name, sel("outlet", &o.slug))),
    );
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut open = false;
    for k in ["from", "to", "outlet", "kind", "tlp"] {
        let v = get(k);
        if !v.is_empty() {
            q.append_pair(k, &v.chars().take(100).collect::<String>());
            open = true;
        }
    }
    let query = q.finish();
    let form = FilterForm {
        kinds: kind_opts,
        tlps,
        outlets: outlet_opts,
        from,
        to,
        query: if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        },
        errors,
        open,
    };
    (f, form)
}

/// What every map page loads first: kinds, outlets and the checked filter.
async fn prepare(
    a: &Atlas,
    auth: &Auth,
    uri: &Uri,
) -> Result<(MapFilter, FilterForm, Vec<(String, String)>, Vec<Outlet>), Response> {
    let l = auth.ctx.lang;
    let (kinds, outlets) = match (kind_names(a, l).await, a.db.outlets().await) {
        (Ok(k), Ok(o)) => (k, o),
        (Err(e), _) | (_, Err(e)) => return Err(fail(&auth.ctx, Some(auth), e)),
    };
    let (f, form) = read_filter(l, uri, &kinds, &outlets);
    Ok((f, form, kinds, outlets))
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Escapes text for SVG and HTML built here (the templates escape on their own).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// A number with thin spaces between thousands (`12 345`).
pub fn num(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut o = String::new();
    if n < 0 {
        o.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            o.push('\u{202F}');
        }
        o.push(c);
    }
    o
}

/// The colour class (1…5) of a positive value on a log scale up to `max`; 0 for none.
pub fn shade(n: i64, max: i64) -> usize {
    if n <= 0 || max <= 0 {
        return 0;
    }
    if max == 1 {
        return 5;
    }
    let r = (n as f64).ln() / (max as f64).ln();
    ((r * 4.0).floor() as usize + 1).min(5)
}

/// The legend of [`shade`]: for each class, the range of values it stands for.
fn legend(max: i64) -> Vec<(usize, String)> {
    let mut ranges: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
    // Bounded: `max` is a count of incidents in a sample, or a day's incidents.
    for n in 1..=max.min(1_000_000) {
        let c = shade(n, max);
        let e = ranges.entry(c).or_insert((n, n));
        e.1 = n;
    }
    ranges
        .into_iter()
        .map(|(c, (lo, hi))| {
            (
                c,
                if lo == hi {
                    num(lo)
                } else {
                    format!("{}–{}", num(lo), num(hi))
                },
            )
        })
        .collect()
}

fn lang_index(l: Lang) -> usize {
    match l {
        Lang::En => 0,
        Lang::Ru => 1,
        Lang::Kk => 2,
    }
}

fn fill(template: &str, n: i64, total: i64) -> String {
    template
        .replace("{n}", &num(n))
        .replace("{total}", &num(total))
}

// ---------------------------------------------------------------------------------------------
// Where from.

pub struct CountryRow {
    pub code: String,
    pub name: String,
    pub incidents: String,
    pub indicators: String,
    pub requests: String,
    pub shade: usize,
}

pub struct AsnRow {
    pub asn: String,
    pub org: String,
    pub country: String,
    pub incidents: String,
    pub indicators: String,
    pub requests: String,
}

pub struct NetRow {
    pub net: String,
    pub asn: String,
    pub country: String,
    pub incidents: String,
    pub indicators: String,
    pub requests: String,
}

#[derive(Template)]
#[template(path = "map.html")]
struct WherePage {
    p: Frame,
    f: FilterForm,
    tab: &'static str,
    /// The world map as inline SVG (built here, escaped here).
    svg: String,
    legend: Vec<(usize, String)>,
    countries: Vec<CountryRow>,
    asns: Vec<AsnRow>,
    nets: Vec<NetRow>,
    notes: Vec<String>,
    has_data: bool,
}

/// The choropleth: one path per country, shaded by incidents, with a `<title>` each.
pub fn world_svg(l: Lang, counts: &HashMap<&str, i64>, max: i64) -> String {
    let h = world::height();
    let mut s = String::with_capacity(60_000);
    let _ = write!(
        s,
        "<svg class=\"world\" viewBox=\"0 0 {} {h}\" role=\"img\" aria-labelledby=\"world-title\"><title id=\"world-title\">{}</title>",
        world::WIDTH,
        esc(t(l, "map.world_label"))
    );
    let li = lang_index(l);
    for shape in world::shapes() {
        let n = counts.get(shape.code).copied().unwrap_or(0);
        let _ = write!(
            s,
            "<path id=\"cc-{}\" class=\"c{}\" d=\"{}\"><title>{}: {}</title></path>",
            shape.code,
            shade(n, max),
            shape.d,
            esc(world::country_name(shape.code, li)),
            if n > 0 {
                num(n)
            } else {
                t(l, "map.no_data").to_string()
            }
        );
    }
    s.push_str("</svg>");
    s
}

async fn where_page(State(a): State<Arc<Atlas>>, auth: Auth, uri: Uri) -> Response {
    let l = auth.ctx.lang;
    let (f, form, _, _) = match prepare(&a, &auth, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let failed = !form.errors.is_empty();
    let view = if failed {
        GeoView::default()
    } else {
        match a.db.map_geo(auth.actor.outlet_id, &f).await {
            Ok(v) => v,
            Err(e) => return fail(&auth.ctx, Some(&auth), e),
        }
    };
    let li = lang_index(l);
    let max = view
        .countries
        .iter()
        .map(|c| c.incidents)
        .max()
        .unwrap_or(0);
    let counts: HashMap<&str, i64> = view
        .countries
        .iter()
        .map(|c| (c.country.as_str(), c.incidents))
        .collect();
    let country_label = |c: &Option<String>| match c {
        Some(c) => format!("{c} {}", world::country_name(c, li)),
        None => String::new(),
    };
    let countries = view
        .countries
        .iter()
        .map(|c| CountryRow {
            code: c.country.clone(),
            name: world::country_name(&c.country, li).to_string(),
            incidents: num(c.incidents),
            indicators: num(c.indicators),
            requests: num(c.requests),
            shade: shade(c.incidents, max),
        })
        .collect();
    let asns = view
        .asns
        .iter()
        .map(|r| AsnRow {
            asn: format!("AS{}", r.asn),
            org: super::as_org(r.asn).unwrap_or_default(),
            country: country_label(&r.country),
            incidents: num(r.incidents),
            indicators: num(r.indicators),
            requests: num(r.requests),
        })
        .collect();
    let nets = view
        .nets
        .iter()
        .map(|r| NetRow {
            net: r.net.clone(),
            asn: r.asn.map(|n| format!("AS{n}")).unwrap_or_default(),
            country: country_label(&r.country),
            incidents: num(r.incidents),
            indicators: num(r.indicators),
            requests: num(r.requests),
        })
        .collect();
    let mut notes = Vec::new();
    if !failed {
        if view.selected > view.geo_covered {
            notes.push(fill(t(l, "map.selected_more"), view.geo_covered, 0));
            notes.push(fill(t(l, "map.sample_geo"), view.geo_covered, 0));
        } else {
            notes.push(fill(t(l, "map.selected"), 0, view.selected));
        }
        if view.detail_covered < view.selected {
            notes.push(fill(t(l, "map.sample_detail"), view.detail_covered, 0));
        }
    }
    let page = WherePage {
        p: Frame::new(&auth.ctx, Some(&auth), t(l, "map.title").into()),
        tab: "where",
        svg: world_svg(l, &counts, max),
        legend: legend(max),
        has_data: !view.countries.is_empty() || !view.asns.is_empty() || !view.nets.is_empty(),
        countries,
        asns,
        nets,
        notes,
        f: form,
    };
    render(status(failed), &page)
}

fn status(failed: bool) -> StatusCode {
    if failed {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    }
}

// ---------------------------------------------------------------------------------------------
// When.

pub struct KindRow {
    pub name: String,
    pub colour: &'static str,
    pub total: String,
}

pub struct OutletRow {
    pub name: String,
    pub svg: String,
    pub total: String,
}

pub struct PeriodRow {
    pub label: String,
    pub total: String,
}

pub struct DayRow {
    pub day: String,
    pub incidents: String,
}

#[derive(Template)]
#[template(path = "map_time.html")]
struct WhenPage {
    p: Frame,
    f: FilterForm,
    tab: &'static str,
    by: &'static str,
    timeline: String,
    kinds: Vec<KindRow>,
    outlets: Vec<OutletRow>,
    periods: Vec<PeriodRow>,
    calendar: String,
    legend: Vec<(usize, String)>,
    busiest: Vec<DayRow>,
    total: String,
    has_data: bool,
}

/// Weeks (Monday first) or months: the period of a day, as a sortable key and a label.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Week,
    Month,
}

fn period_of(step: Step, day: i64) -> i64 {
    match step {
        // 1970-01-01 was a Thursday: day + 3 counts from a Monday.
        Step::Week => (day + 3).div_euclid(7),
        Step::Month => day_date(day)
            .map(|d| i64::from(d.year()) * 12 + i64::from(u8::from(d.month())) - 1)
            .unwrap_or(0),
    }
}

fn period_label(step: Step, p: i64) -> String {
    match step {
        Step::Week => day_label(p * 7 - 3),
        Step::Month => format!("{:04}-{:02}", p.div_euclid(12), p.rem_euclid(12) + 1),
    }
}

/// Bars of `series` (period → [(colour, value, label)]) on a 1000 × `height` canvas.
fn bars(
    periods: &[i64],
    step: Step,
    series: &BTreeMap<i64, Vec<(&str, i64, String)>>,
    height: f64,
    axis: bool,
    label: &str,
) -> String {
    let max = series
        .values()
        .map(|v| v.iter().map(|x| x.1).sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let top = if axis { 14.0 } else { 2.0 };
    let bottom = if axis { 16.0 } else { 0.0 };
    let plot = height - top - bottom;
    let n = periods.len().max(1) as f64;
    let w = 1000.0 / n;
    let mut s = String::with_capacity(periods.len() * 120);
    let _ = write!(
        s,
        "<svg class=\"bars\" viewBox=\"0 0 1000 {height}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{}\">",
        esc(label)
    );
    if axis {
        let _ = write!(
            s,
            "<text x=\"2\" y=\"11\" class=\"ax\">{}</text><line x1=\"0\" x2=\"1000\" y1=\"{top}\" y2=\"{top}\" class=\"grid\"/>",
            num(max)
        );
    }
    let every = (periods.len() / 8).max(1);
    for (i, p) in periods.iter().enumerate() {
        let x = i as f64 * w;
        let mut y = top + plot;
        if let Some(stack) = series.get(p) {
            for (colour, v, title) in stack {
                if *v <= 0 {
                    continue;
                }
                let bh = plot * (*v as f64) / (max as f64);
                y -= bh;
                let _ = write!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{}</title></rect>",
                    (w * 0.85).max(0.5),
                    esc(title)
                );
            }
        }
        if axis && i % every == 0 {
            let _ = write!(
                s,
                "<text x=\"{x:.1}\" y=\"{}\" class=\"ax\">{}</text>",
                height - 3.0,
                period_label(step, *p)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// The calendar: one square per day of the 365 ending on `last`, weeks as columns.
fn calendar_svg(l: Lang, per_day: &BTreeMap<i64, i64>, last: i64) -> (String, i64) {
    let first = last - CALENDAR_DAYS + 1;
    let max = (first..=last)
        .map(|d| per_day.get(&d).copied().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let week0 = period_of(Step::Week, first);
    let weeks = period_of(Step::Week, last) - week0 + 1;
    let (cell, step, top) = (13, 15, 14);
    let width = weeks * step;
    let height = top + 7 * step;
    let mut s = String::with_capacity(40_000);
    let _ = write!(
        s,
        "<svg class=\"cal\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\">",
        esc(t(l, "map.calendar"))
    );
    let mut last_month = None;
    for d in first..=last {
        let col = period_of(Step::Week, d) - week0;
        let row = (d + 3).rem_euclid(7);
        let n = per_day.get(&d).copied().unwrap_or(0);
        let month = period_of(Step::Month, d);
        if last_month != Some(month) && row == 0 || d == first {
            if last_month != Some(month) {
                let _ = write!(
                    s,
                    "<text x=\"{}\" y=\"10\" class=\"ax\">{}</text>",
                    col * step,
                    period_label(Step::Month, month)
                        .get(5..)
                        .unwrap_or_default()
                );
            }
            last_month = Some(month);
        }
        let _ = write!(
            s,
            "<rect id=\"d-{}\" x=\"{}\" y=\"{}\" width=\"{cell}\" height=\"{cell}\" class=\"h{}\"><title>{}: {}</title></rect>",
            day_label(d),
            col * step,
            top + row * step,
            shade(n, max),
            day_label(d),
            num(n)
        );
    }
    s.push_str("</svg>");
    (s, max)
}

async fn when_page(State(a): State<Arc<Atlas>>, auth: Auth, uri: Uri) -> Response {
    let l = auth.ctx.lang;
    let (f, form, kinds, outlets) = match prepare(&a, &auth, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let failed = !form.errors.is_empty();
    // The calendar ends on the last day of the selection (or today) and looks 365 days back,
    // whatever `from` says: one query covers both.
    let cal_last = match f.to_ms {
        Some(to) => (to - 1 + LOCAL_OFFSET_MS).div_euclid(DAY_MS),
        None => today(),
    };
    let cal_first = cal_last - CALENDAR_DAYS + 1;
    let days: Vec<DayCount> = if failed {
        Vec::new()
    } else {
        let mut wide = f.clone();
        wide.from_ms = f
            .from_ms
            .map(|x| x.min(cal_first * DAY_MS - LOCAL_OFFSET_MS));
        match a.db.map_days(auth.actor.outlet_id, &wide).await {
            Ok(v) => v,
            Err(e) => return fail(&auth.ctx, Some(&auth), e),
        }
    };
    let from_day = f.from_ms.map(|x| (x + LOCAL_OFFSET_MS).div_euclid(DAY_MS));
    let in_range: Vec<&DayCount> = days
        .iter()
        .filter(|d| from_day.is_none_or(|f| d.day >= f))
        .collect();
    let has_data = !in_range.is_empty();
    let first_day = from_day
        .or_else(|| in_range.first().map(|d| d.day))
        .unwrap_or(cal_last);
    let last_day = if f.to_ms.is_some() {
        cal_last
    } else {
        in_range.last().map(|d| d.day).unwrap_or(cal_last)
    }
    .max(first_day);
    let step = if last_day - first_day <= 180 {
        Step::Week
    } else {
        Step::Month
    };
    let mut periods: Vec<i64> = Vec::new();
    {
        let (p0, p1) = (period_of(step, first_day), period_of(step, last_day));
        let start = p0.max(p1 - MAX_PERIODS as i64 + 1);
        periods.extend(start..=p1);
    }
    let kind_codes: Vec<&str> = {
        let mut k: Vec<&str> = in_range.iter().map(|d| d.kind.as_str()).collect();
        k.sort();
        k.dedup();
        k
    };
    let colour = |code: &str| {
        let i = kind_codes.iter().position(|k| *k == code).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let kind_name = |code: &str| {
        kinds
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| code.to_string())
    };
    // Period → kind → incidents, and outlet → period → incidents.
    let mut by_period: BTreeMap<i64, BTreeMap<&str, i64>> = BTreeMap::new();
    let mut by_outlet: BTreeMap<i64, BTreeMap<i64, i64>> = BTreeMap::new();
    let mut kind_total: BTreeMap<&str, i64> = BTreeMap::new();
    let mut total = 0i64;
    let p_first = periods.first().copied().unwrap_or(0);
    for d in &in_range {
        let p = period_of(step, d.day);
        if p < p_first {
            continue;
        }
        *by_period.entry(p).or_default().entry(&d.kind).or_default() += d.incidents;
        *by_outlet
            .entry(d.outlet_id)
            .or_default()
            .entry(p)
            .or_default() += d.incidents;
        *kind_total.entry(&d.kind).or_default() += d.incidents;
        total += d.incidents;
    }
    let series: BTreeMap<i64, Vec<(&str, i64, String)>> = by_period
        .iter()
        .map(|(p, ks)| {
            (
                *p,
                ks.iter()
                    .map(|(k, n)| {
                        (
                            colour(k),
                            *n,
                            format!("{} · {}: {}", period_label(step, *p), kind_name(k), n),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let timeline = bars(
        &periods,
        step,
        &series,
        220.0,
        true,
        t(l, "map.timeline_label"),
    );
    let kinds_rows = kind_total
        .iter()
        .map(|(k, n)| KindRow {
            name: kind_name(k),
            colour: colour(k),
            total: num(*n),
        })
        .collect();
    let outlet_rows = by_outlet
        .iter()
        .map(|(o, per)| {
            let name = outlets
                .iter()
                .find(|x| x.id == *o)
                .map(|x| x.name.clone())
                .unwrap_or_default();
            let series: BTreeMap<i64, Vec<(&str, i64, String)>> = per
                .iter()
                .map(|(p, n)| {
                    (
                        *p,
                        vec![(
                            "#14243b",
                            *n,
                            format!("{} · {}: {}", period_label(step, *p), name, n),
                        )],
                    )
                })
                .collect();
            OutletRow {
                svg: bars(&periods, step, &series, 36.0, false, &name),
                total: num(per.values().sum()),
                name,
            }
        })
        .collect();
    let period_rows = by_period
        .iter()
        .rev()
        .map(|(p, ks)| PeriodRow {
            label: period_label(step, *p),
            total: num(ks.values().sum()),
        })
        .collect();
    let mut per_day: BTreeMap<i64, i64> = BTreeMap::new();
    for d in &days {
        if d.day >= cal_first && d.day <= cal_last {
            *per_day.entry(d.day).or_default() += d.incidents;
        }
    }
    let (calendar, cal_max) = calendar_svg(l, &per_day, cal_last);
    let mut busiest: Vec<(i64, i64)> = per_day.iter().map(|(d, n)| (*d, *n)).collect();
    busiest.sort_by_key(|&(d, n)| std::cmp::Reverse((n, d)));
    busiest.truncate(BUSIEST);
    let page = WhenPage {
        p: Frame::new(&auth.ctx, Some(&auth), t(l, "map.title").into()),
        f: form,
        tab: "when",
        by: if step == Step::Week {
            "map.by_week"
        } else {
            "map.by_month"
        },
        timeline,
        kinds: kinds_rows,
        outlets: outlet_rows,
        periods: period_rows,
        calendar,
        legend: legend(cal_max),
        busiest: busiest
            .into_iter()
            .map(|(d, n)| DayRow {
                day: day_label(d),
                incidents: num(n),
            })
            .collect(),
        total: num(total),
        has_data,
    };
    render(status(failed), &page)
}

// ---------------------------------------------------------------------------------------------
// Who with whom.

pub struct MatrixCell {
    pub value: String,
    pub shade: usize,
    pub diagonal: bool,
    pub title: String,
}

pub struct MatrixRow {
    pub name: String,
    pub slug: String,
    pub cells: Vec<MatrixCell>,
}

pub struct SharedRow {
    pub kind: String,
    pub value: String,
    pub outlets: String,
}

#[derive(Template)]
#[template(path = "map_shared.html")]
struct SharedPage {
    p: Frame,
    f: FilterForm,
    tab: &'static str,
    heads: Vec<String>,
    rows: Vec<MatrixRow>,
    top: Vec<SharedRow>,
    notes: Vec<String>,
    has_data: bool,
}

async fn shared_page(State(a): State<Arc<Atlas>>, auth: Auth, uri: Uri) -> Response {
    let l = auth.ctx.lang;
    let (f, form, _, outlets) = match prepare(&a, &auth, &uri).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let failed = !form.errors.is_empty();
    let view = if failed {
        SharedView::default()
    } else {
        match a.db.map_shared(auth.actor.outlet_id, &f).await {
            Ok(v) => v,
            Err(e) => return fail(&auth.ctx, Some(&auth), e),
        }
    };
    let name_of = |id: i64| {
        outlets
            .iter()
            .find(|o| o.id == id)
            .map(|o| (o.name.clone(), o.slug.clone()))
            .unwrap_or_default()
    };
    let mut ids: Vec<i64> = view.matrix.keys().map(|(a, _)| *a).collect();
    ids.sort();
    ids.dedup();
    ids.sort_by_key(|id| name_of(*id).0);
    let max = view.matrix.values().copied().max().unwrap_or(0);
    let rows = ids
        .iter()
        .map(|a| {
            let (name, slug) = name_of(*a);
            MatrixRow {
                cells: ids
                    .iter()
                    .map(|b| {
                        let n = view.matrix.get(&(*a, *b)).copied().unwrap_or(0);
                        MatrixCell {
                            value: num(n),
                            shade: shade(n, max),
                            diagonal: a == b,
                            title: format!("{} × {}: {}", name, name_of(*b).0, n),
                        }
                    })
                    .collect(),
                name,
                slug,
            }
        })
        .collect();
    let top = view
        .top
        .iter()
        .map(|s| SharedRow {
            kind: s.kind.clone(),
            value: s.value.clone(),
            outlets: s
                .outlets
                .iter()
                .map(|(o, n)| format!("{} ({n})", name_of(*o).0))
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    let mut notes = Vec::new();
    if !failed {
        if view.selected > view.covered {
            notes.push(fill(t(l, "map.selected_more"), view.covered, 0));
            notes.push(fill(t(l, "map.sample_shared"), view.covered, 0));
        } else {
            notes.push(fill(t(l, "map.selected"), 0, view.selected));
        }
        notes.push(fill(t(l, "map.shared_count"), 0, view.shared_total));
    }
    let page = SharedPage {
        p: Frame::new(&auth.ctx, Some(&auth), t(l, "map.title").into()),
        f: form,
        tab: "shared",
        heads: ids.iter().map(|id| name_of(*id).0).collect(),
        has_data: !view.matrix.is_empty(),
        rows,
        top,
        notes,
    };
    render(status(failed), &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shades_grow_with_the_count_on_a_log_scale() {
        assert_eq!(shade(0, 100), 0);
        assert_eq!(shade(1, 100), 1);
        assert_eq!(shade(100, 100), 5);
        assert_eq!(shade(1, 1), 5);
        let mut last = 0;
        for n in 1..=1000 {
            let s = shade(n, 1000);
            assert!(s >= last && (1..=5).contains(&s));
            last = s;
        }
        let l = legend(1000);
        assert_eq!(l.first().map(|x| x.0), Some(1));
        assert_eq!(l.last().map(|x| x.0), Some(5));
    }

    #[test]
    fn numbers_and_days() {
        assert_eq!(num(0), "0");
        assert_eq!(num(1234567), "1\u{202F}234\u{202F}567");
        assert_eq!(num(-1000), "-1\u{202F}000");
        let d = form_date("2024-03-01").unwrap();
        let ms = local_midnight_ms(d);
        // 2024-03-01T00:00+05:00 = 2024-02-29T19:00Z.
        assert_eq!(ms, 1_709_233_200_000);
        assert_eq!(day_label((ms + LOCAL_OFFSET_MS) / DAY_MS), "2024-03-01");
        // 2024-03-01 was a Friday: its week starts on Monday 2024-02-26.
        let day = (ms + LOCAL_OFFSET_MS) / DAY_MS;
        assert_eq!(
            period_label(Step::Week, period_of(Step::Week, day)),
            "2024-02-26"
        );
        assert_eq!(
            period_label(Step::Month, period_of(Step::Month, day)),
            "2024-03"
        );
    }

    #[test]
    fn svg_text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
