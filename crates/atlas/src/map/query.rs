//! The map's figures, read from the database.
//!
//! **Architecture invariant:** every query here starts from `incidents i WHERE store::VISIBLE`
//! with the caller's outlet bound as `$1`, and reaches countries, AS numbers, networks and
//! indicators only through those incidents. Nothing is filtered in Rust after the fact.
//!
//! Cost: the timeline reads one narrow index row per selected incident (`incidents_map`). The
//! country and AS figures read the per-incident summaries `incident_countries` and
//! `incident_asns` of the latest [`GEO_SAMPLE`] selected incidents, the network table
//! `incident_nets` of the latest [`DETAIL_SAMPLE`], and the outlet matrix raw sightings of the
//! latest [`SHARED_SAMPLE`]. Counts of the selection stop one past the sample. The
//! pages say when a sample is smaller than the selection, so a
//! page costs the same on a registry of a thousand incidents and of a million.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use crate::db::Db;
use crate::error::Result;
use crate::model::Tlp;
use crate::store::VISIBLE;

/// Most incidents whose countries and AS numbers one page adds up.
pub const GEO_SAMPLE: i64 = 1_000;
/// Most incidents whose networks the network table adds up (a shield episode brings up to
/// thousands of addresses, mostly in networks of their own).
pub const DETAIL_SAMPLE: i64 = 100;
/// Most incidents whose sightings the outlet × outlet matrix reads.
pub const SHARED_SAMPLE: i64 = 200;
/// Rows in the AS and network tables.
pub const TOP_ROWS: i64 = 50;
/// Rows in the table of shared indicators.
pub const TOP_SHARED: usize = 30;
/// Kazakhstan's clock (UTC+5) in milliseconds: days and months are local.
pub const LOCAL_OFFSET_MS: i64 = 5 * 3_600_000;
/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// What the caller narrowed the map to. Checked by the page before it gets here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapFilter {
    /// Incidents that started at or after this time (Unix ms).
    pub from_ms: Option<i64>,
    /// Incidents that started before this time (Unix ms).
    pub to_ms: Option<i64>,
    /// One outlet's incidents.
    pub outlet_id: Option<i64>,
    /// One kind of incident.
    pub kind: Option<String>,
    /// One TLP level.
    pub tlp: Option<Tlp>,
}

enum Bind {
    Int(i64),
    Text(String),
}

type AnyQuery<'q> = Query<'q, sqlx::Any, AnyArguments>;

/// The WHERE clause over `incidents i`: the TLP rule (`$1`, the caller's outlet) and the filter
/// (`$2`…).
fn clause(f: &MapFilter) -> (String, Vec<Bind>) {
    let mut w = vec![VISIBLE.to_string()];
    let mut b = Vec::new();
    let mut next = |w: &mut Vec<String>, cond: &str, v: Bind| {
        b.push(v);
        w.push(cond.replace('?', &format!("${}", b.len() + 1)));
    };
    if let Some(x) = f.from_ms {
        next(&mut w, "i.started_ms >= ?", Bind::Int(x));
    }
    if let Some(x) = f.to_ms {
        next(&mut w, "i.started_ms < ?", Bind::Int(x));
    }
    if let Some(x) = f.outlet_id {
        next(&mut w, "i.outlet_id = ?", Bind::Int(x));
    }
    if let Some(x) = &f.kind {
        next(&mut w, "i.kind = ?", Bind::Text(x.clone()));
    }
    if let Some(x) = f.tlp {
        next(&mut w, "i.tlp = ?", Bind::Text(x.as_str().to_string()));
    }
    (w.join(" AND "), b)
}

fn bind<'q>(mut q: AnyQuery<'q>, viewer: i64, binds: Vec<Bind>) -> AnyQuery<'q> {
    q = q.bind(viewer);
    for b in binds {
        q = match b {
            Bind::Int(v) => q.bind(v),
            Bind::Text(v) => q.bind(v),
        };
    }
    q
}

/// The latest `n` selected incidents, as a CTE named `sel` with columns `id` and `outlet_id`.
fn sample(w: &str, n: i64) -> String {
    format!(
        "WITH sel AS (SELECT i.id, i.outlet_id FROM incidents i WHERE {w}
           ORDER BY i.started_ms DESC, i.id DESC LIMIT {n})"
    )
}

/// One country on the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountryCount {
    pub country: String,
    /// Incidents with at least one indicator there.
    pub incidents: i64,
    /// Indicators there (counted once per incident).
    pub indicators: i64,
    /// Requests (sighting counts) from there.
    pub requests: i64,
}

/// One autonomous system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsnCount {
    pub asn: i64,
    /// A country where it was seen (the first by code when several).
    pub country: Option<String>,
    pub incidents: i64,
    pub indicators: i64,
    pub requests: i64,
}

/// One network (/24, /48 or a CIDR indicator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetCount {
    pub net: String,
    pub country: Option<String>,
    pub asn: Option<i64>,
    pub incidents: i64,
    pub indicators: i64,
    pub requests: i64,
}

/// The figures of `/map`.
#[derive(Debug, Clone, Default)]
pub struct GeoView {
    /// Incidents in the selection, counted up to one more than [`GEO_SAMPLE`].
    pub selected: i64,
    /// Of those, how many the country and AS figures cover (the latest).
    pub geo_covered: i64,
    /// Of those, how many the network table covers (the latest).
    pub detail_covered: i64,
    /// Every country, most incidents first.
    pub countries: Vec<CountryCount>,
    /// The top AS numbers.
    pub asns: Vec<AsnCount>,
    /// The top networks.
    pub nets: Vec<NetCount>,
}

/// Incidents of one local day, outlet and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCount {
    /// Days since 1970-01-01 in Kazakhstan's time.
    pub day: i64,
    pub outlet_id: i64,
    pub kind: String,
    pub incidents: i64,
}

/// One indicator that several outlets saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedIndicator {
    pub kind: String,
    pub value: String,
    /// (outlet id, incidents of that outlet with it), by outlet id.
    pub outlets: Vec<(i64, i64)>,
}

/// The figures of `/map/shared`.
#[derive(Debug, Clone, Default)]
pub struct SharedView {
    /// Incidents in the selection, counted up to one more than [`SHARED_SAMPLE`].
    pub selected: i64,
    pub covered: i64,
    /// (outlet a, outlet b) → indicators both saw; (a, a) → indicators a shares with anyone.
    pub matrix: BTreeMap<(i64, i64), i64>,
    /// The indicators seen by the most outlets.
    pub top: Vec<SharedIndicator>,
    /// Indicators seen by two outlets or more.
    pub shared_total: i64,
}

impl Db {
    /// How many incidents the caller may see in the selection, counting no further than
    /// `cap + 1` (so that the answer costs no more than the sample the page reads).
    pub async fn map_selected(&self, viewer: i64, f: &MapFilter, cap: i64) -> Result<i64> {
        let (w, b) = clause(f);
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM incidents i WHERE {w} LIMIT {}) AS capped",
            cap + 1
        );
        let n: i64 = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), viewer, b)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(n)
    }

    /// Countries, AS numbers and networks of the attack traffic the caller may see.
    pub async fn map_geo(&self, viewer: i64, f: &MapFilter) -> Result<GeoView> {
        let selected = self.map_selected(viewer, f, GEO_SAMPLE).await?;
        let (w, b) = clause(f);
        let sql = format!(
            "{} SELECT g.country, COUNT(*) AS incidents,
                 CAST(SUM(g.indicators) AS BIGINT) AS indicators, CAST(SUM(g.requests) AS BIGINT) AS requests
               FROM sel JOIN incident_countries g ON g.incident_id = sel.id
               GROUP BY g.country",
            sample(&w, GEO_SAMPLE)
        );
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), viewer, b)
            .fetch_all(&self.pool)
            .await?;
        let mut countries = rows
            .iter()
            .map(|r| {
                Ok(CountryCount {
                    country: r.try_get("country")?,
                    incidents: r.try_get("incidents")?,
                    indicators: r.try_get("indicators")?,
                    requests: r.try_get("requests")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        countries.sort_by(|a, b| {
            (b.incidents, b.requests, &a.country).cmp(&(a.incidents, a.requests, &b.country))
        });

        let (w, b) = clause(f);
        let sql = format!(
            "{} SELECT g.asn, MIN(g.country) AS country, COUNT(*) AS incidents,
                 CAST(SUM(g.indicators) AS BIGINT) AS indicators, CAST(SUM(g.requests) AS BIGINT) AS requests
               FROM sel JOIN incident_asns g ON g.incident_id = sel.id
               GROUP BY g.asn
               ORDER BY incidents DESC, requests DESC, g.asn LIMIT {TOP_ROWS}",
            sample(&w, GEO_SAMPLE)
        );
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), viewer, b)
            .fetch_all(&self.pool)
            .await?;
        let asns = rows
            .iter()
            .map(|r| {
                Ok(AsnCount {
                    asn: r.try_get("asn")?,
                    country: r.try_get("country")?,
                    incidents: r.try_get("incidents")?,
                    indicators: r.try_get("indicators")?,
                    requests: r.try_get("requests")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let (w, b) = clause(f);
        let sql = format!(
            "{} SELECT g.net, MIN(g.country) AS country, MIN(g.asn) AS asn, COUNT(*) AS incidents,
                 CAST(SUM(g.indicators) AS BIGINT) AS indicators, CAST(SUM(g.requests) AS BIGINT) AS requests
               FROM sel JOIN incident_nets g ON g.incident_id = sel.id
               GROUP BY g.net ORDER BY incidents DESC, requests DESC, g.net LIMIT {TOP_ROWS}",
            sample(&w, DETAIL_SAMPLE)
        );
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), viewer, b)
            .fetch_all(&self.pool)
            .await?;
        let nets = rows
            .iter()
            .map(|r| {
                Ok(NetCount {
                    net: r.try_get("net")?,
                    country: r.try_get("country")?,
                    asn: r.try_get("asn")?,
                    incidents: r.try_get("incidents")?,
                    indicators: r.try_get("indicators")?,
                    requests: r.try_get("requests")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GeoView {
            selected,
            geo_covered: selected.min(GEO_SAMPLE),
            detail_covered: selected.min(DETAIL_SAMPLE),
            countries,
            asns,
            nets,
        })
    }

    /// Incidents per local day, outlet and kind, of every selected incident the caller may see.
    pub async fn map_days(&self, viewer: i64, f: &MapFilter) -> Result<Vec<DayCount>> {
        let (w, b) = clause(f);
        let sql = format!(
            "SELECT (i.started_ms + {LOCAL_OFFSET_MS}) / {DAY_MS} AS day, i.outlet_id, i.kind, COUNT(*) AS n
             FROM incidents i WHERE {w} GROUP BY (i.started_ms + {LOCAL_OFFSET_MS}) / {DAY_MS}, i.outlet_id, i.kind"
        );
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), viewer, b)
            .fetch_all(&self.pool)
            .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(DayCount {
                    day: r.try_get("day")?,
                    outlet_id: r.try_get("outlet_id")?,
                    kind: r.try_get("kind")?,
                    incidents: r.try_get("n")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.day, a.outlet_id, &a.kind).cmp(&(b.day, b.outlet_id, &b.kind)));
        Ok(out)
    }

    /// Which outlets saw the same indicators, among the latest selected incidents.
    pub async fn map_shared(&self, viewer: i64, f: &MapFilter) -> Result<SharedView> {
        let selected = self.map_selected(viewer, f, SHARED_SAMPLE).await?;
        let (w, b) = clause(f);
        let sql = format!(
            "{},
             pairs AS (SELECT s.indicator_id AS ind, sel.outlet_id AS outlet, COUNT(*) AS incidents
                       FROM sel JOIN sightings s ON s.incident_id = sel.id
                       GROUP BY s.indicator_id, sel.outlet_id),
             multi AS (SELECT ind FROM pairs GROUP BY ind HAVING COUNT(*) > 1)
             SELECT p.ind, p.outlet, p.incidents FROM pairs p JOIN multi m ON m.ind = p.ind",
            sample(&w, SHARED_SAMPLE)
        );
        let rows = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), viewer, b)
            .fetch_all(&self.pool)
            .await?;
        let mut by_ind: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for r in &rows {
            by_ind
                .entry(r.try_get("ind")?)
                .or_default()
                .push((r.try_get("outlet")?, r.try_get("incidents")?));
        }
        let mut matrix: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        for outlets in by_ind.values_mut() {
            outlets.sort();
            for (a, _) in outlets.iter() {
                *matrix.entry((*a, *a)).or_default() += 1;
                for (b, _) in outlets.iter() {
                    if a != b {
                        *matrix.entry((*a, *b)).or_default() += 1;
                    }
                }
            }
        }
        let shared_total = by_ind.len() as i64;
        let mut ranked: Vec<(i64, Vec<(i64, i64)>)> = by_ind.into_iter().collect();
        ranked.sort_by(|(ia, a), (ib, b)| {
            let sum = |v: &[(i64, i64)]| v.iter().map(|x| x.1).sum::<i64>();
            (b.len(), sum(b), ia).cmp(&(a.len(), sum(a), ib))
        });
        ranked.truncate(TOP_SHARED);
        let mut top = Vec::with_capacity(ranked.len());
        if !ranked.is_empty() {
            let ids: Vec<String> = ranked.iter().map(|(id, _)| id.to_string()).collect();
            // Ids are integers from the query above, not input; the values are read again
            // through the TLP rule, like everything else here.
            let sql = format!(
                "SELECT ind.id, ind.kind, ind.value FROM indicators ind WHERE ind.id IN ({})
                   AND EXISTS (SELECT 1 FROM sightings s JOIN incidents i ON i.id = s.incident_id
                               WHERE s.indicator_id = ind.id AND {VISIBLE})",
                ids.join(", ")
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(viewer)
                .fetch_all(&self.pool)
                .await?;
            let mut names: HashMap<i64, (String, String)> = HashMap::new();
            for r in &rows {
                names.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
            }
            for (id, outlets) in ranked {
                if let Some((kind, value)) = names.remove(&id) {
                    top.push(SharedIndicator {
                        kind,
                        value,
                        outlets,
                    });
                }
            }
        }
        Ok(SharedView {
            selected,
            covered: selected.min(SHARED_SAMPLE),
            matrix,
            top,
            shared_total,
        })
    }
}

/// The per-incident summaries, from sightings and indicators; `{scope}` narrows the sightings.
fn summaries(scope: &str) -> [String; 3] {
    [
        format!(
            "INSERT INTO incident_countries (incident_id, country, indicators, requests)
             SELECT s.incident_id, ind.country, COUNT(*), CAST(SUM(s.count) AS BIGINT)
             FROM sightings s JOIN indicators ind ON ind.id = s.indicator_id
             WHERE {scope} ind.country IS NOT NULL
             GROUP BY s.incident_id, ind.country"
        ),
        format!(
            "INSERT INTO incident_asns (incident_id, asn, country, indicators, requests)
             SELECT s.incident_id, ind.asn, MIN(ind.country), COUNT(*), CAST(SUM(s.count) AS BIGINT)
             FROM sightings s JOIN indicators ind ON ind.id = s.indicator_id
             WHERE {scope} ind.asn IS NOT NULL
             GROUP BY s.incident_id, ind.asn"
        ),
        format!(
            "INSERT INTO incident_nets (incident_id, net, country, asn, indicators, requests)
             SELECT s.incident_id, ind.net, MIN(ind.country), MIN(ind.asn), COUNT(*), CAST(SUM(s.count) AS BIGINT)
             FROM sightings s JOIN indicators ind ON ind.id = s.indicator_id
             WHERE {scope} ind.net IS NOT NULL
             GROUP BY s.incident_id, ind.net"
        ),
    ]
}

/// Rewrites one incident's rows of `incident_countries` and `incident_asns` from its sightings
/// (the store calls it after every change to an incident's sightings, in the same transaction).
pub(crate) async fn refresh_incident(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    incident_id: i64,
) -> Result<()> {
    for table in ["incident_countries", "incident_asns", "incident_nets"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE incident_id = $1"
        )))
        .bind(incident_id)
        .execute(&mut **tx)
        .await?;
    }
    for sql in summaries("s.incident_id = $1 AND") {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(incident_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Rebuilds the per-incident summaries (after a restore, or a bulk load that bypassed the store).
pub async fn rebuild_geo(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
    for table in ["incident_countries", "incident_asns", "incident_nets"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut **tx)
            .await?;
    }
    for sql in summaries("") {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
