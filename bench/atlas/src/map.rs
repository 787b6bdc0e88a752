//! The map pages (`/map`, `/map/time`, `/map/shared`) over the registry `read_run` fills.
//!
//! The generated indicators are private addresses (10.0.0.0/8), which the geo tables never
//! place; here each gets a country and an AS in SQL, as `store::upsert_sightings` would give a
//! public address: 50 AS numbers in 20 countries, assigned by indicator id, so an incident's 100
//! addresses fall in about 43 AS numbers (a spread-out botnet, the map's worst case). Then the
//! per-incident summaries (`incident_countries`, `incident_asns`, `incident_nets`) are rebuilt from the sightings (the generated sightings
//! bypass the store), and each page is requested over HTTP as a member of one outlet (a viewer)
//! and of another (an admin), with and without filters.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use qalqan_atlas::Db;
use qalqan_atlas::model::Role;
use sqlx::AssertSqlSafe;

use crate::HttpClient;

/// Country codes the generated AS numbers sit in.
const COUNTRIES: &str = "KZRUCNUSDENLUAUZKGTRFRGBINBRVNIRKRJPPLSG";

/// Gives the generated indicators places and builds the per-incident summaries; returns a line for the
/// report.
pub async fn prepare(db: &Db) -> anyhow::Result<String> {
    let t = Instant::now();
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE indicators SET asn = 100 + (id % 50),
            country = substr('{COUNTRIES}', CAST(1 + 2 * ((id % 50) % 20) AS INTEGER), 2)
         WHERE kind = 'ip'"
    )))
    .execute(&db.pool)
    .await?;
    // The /24: the generated values are '10.a.b.c'; cut the last number off.
    sqlx::query(
        "UPDATE indicators SET net = rtrim(value, '0123456789') || '0/24' WHERE kind = 'ip'",
    )
    .execute(&db.pool)
    .await?;
    let places = t.elapsed();
    let t = Instant::now();
    let _w = db.write().await;
    let mut tx = db.pool.begin().await?;
    qalqan_atlas::map::query::rebuild_geo(&mut tx)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    tx.commit().await?;
    drop(_w);
    let rebuild = t.elapsed();
    sqlx::query("ANALYZE").execute(&db.pool).await?;
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM incident_countries) + (SELECT COUNT(*) FROM incident_asns) + (SELECT COUNT(*) FROM incident_nets)",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok(format!(
        "Places given to the indicators in {:.0} s; `incident_countries`, `incident_asns` and `incident_nets` rebuilt from the sightings in {:.0} s ({rows} rows).",
        places.as_secs_f64(),
        rebuild.as_secs_f64()
    ))
}

/// Creates an admin of `outlet_id` and logs in; returns the session cookie value.
pub async fn admin_session(
    db: &Db,
    client: &HttpClient,
    addr: SocketAddr,
    outlet_id: i64,
) -> anyhow::Result<String> {
    db.create_user(
        None,
        outlet_id,
        "admin@example.kz",
        "Admin",
        "bench-password-123",
        Role::Admin,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let req = http::Request::post(format!("http://{addr}/api/v1/session"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"email":"admin@example.kz","password":"bench-password-123"}"#,
        )))?;
    let r = client.request(req).await?;
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("qalqan_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .context("no admin session cookie")
}

/// Requests each map page `requests` times (after 5 warm-up requests) as each member; returns
/// the Markdown table.
pub async fn measure(
    client: &HttpClient,
    addr: SocketAddr,
    viewer: &str,
    admin: &str,
    requests: usize,
) -> anyhow::Result<String> {
    let filters = [
        ("no filter", ""),
        ("kind", "?kind=bot_comments"),
        ("outlet + TLP", "?outlet=outlet-3&tlp=green"),
        ("one week", "?from=2020-09-14&to=2020-09-20"),
    ];
    let mut table = format!(
        "\nSequential requests on one keep-alive connection, {requests} per row after 5 warm-up requests. \
         *viewer*: a viewer of outlet-0 (sees its own incidents and every CLEAR and GREEN one, about 42,000); \
         *admin*: an admin of outlet-1 (the same rule for its outlet).\n\n\
         | page | member | filter | status | KB | p50 ms | p95 ms | p99 ms | max ms | goal p99 ≤ 200 ms |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---|\n"
    );
    for page in ["/map", "/map/time", "/map/shared"] {
        for (member, cookie) in [("viewer", viewer), ("admin", admin)] {
            for (fname, q) in filters {
                if member == "admin" && !q.is_empty() && fname != "one week" {
                    continue;
                }
                let uri = format!("http://{addr}{page}{q}");
                let mut lat = Vec::with_capacity(requests);
                let mut status = 0;
                let mut bytes = 0;
                for i in 0..requests + 5 {
                    let req = http::Request::get(&uri)
                        .header("cookie", format!("qalqan_session={cookie}"))
                        .body(Full::new(Bytes::new()))?;
                    let t = Instant::now();
                    let r = client.request(req).await?;
                    status = r.status().as_u16();
                    let body = r.into_body().collect().await?.to_bytes();
                    if i >= 5 {
                        lat.push(t.elapsed());
                    }
                    bytes = body.len();
                }
                lat.sort();
                let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                let p99 = ms(p(0.99));
                let line = format!(
                    "| `{page}` | {member} | {fname} | {status} | {:.0} | {:.1} | {:.1} | {p99:.1} | {:.1} | {} |\n",
                    bytes as f64 / 1024.0,
                    ms(p(0.5)),
                    ms(p(0.95)),
                    ms(*lat.last().unwrap_or(&Duration::ZERO)),
                    if status == 200 && p99 <= 200.0 {
                        "met"
                    } else {
                        "**not met**"
                    }
                );
                eprint!("{line}");
                table.push_str(&line);
            }
        }
    }
    Ok(table)
}
