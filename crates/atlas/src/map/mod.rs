//! The map of attacks: where attack traffic comes from (a world choropleth and tables by AS and
//! by network), when (a timeline and a calendar), and who shares indicators with whom.
//!
//! - [`locate`] gives an address indicator its country, AS and network when it is first stored
//!   (`store::upsert_sightings`), from the geo tables of `qalqan-geo`, loaded once per process
//!   on first use.
//! - [`query`] reads the map's figures. **Every query starts from the incidents the caller may
//!   see (`store::VISIBLE` in SQL)**; nothing here filters in Rust after the fact.
//! - [`world`] turns the shipped Natural Earth geometry into SVG paths, once per process.
//! - [`pages`] serves `/map`, `/map/time` and `/map/shared` as server-rendered SVG and tables,
//!   with no script and nothing fetched from elsewhere.
//!
//! What this module must never do: show anything from an incident the caller may not see (a
//! RED incident's country, AS or indicator), or let a page's cost grow with the registry without
//! bound: the heavy views read at most the latest [`query::GEO_SAMPLE`],
//! [`query::DETAIL_SAMPLE`] or [`query::SHARED_SAMPLE`] incidents of the selection and say so on
//! the page.

pub mod countries;
pub mod messages;
pub mod pages;
pub mod query;
pub mod world;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::model::IndicatorKind;

/// Where an indicator is, as far as the geo tables know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Place {
    /// ISO 3166-1 alpha-2.
    pub country: Option<String>,
    /// AS number.
    pub asn: Option<i64>,
    /// The /24 (IPv4) or /48 (IPv6) of an address, or a CIDR indicator itself.
    pub net: Option<String>,
}

static GEO: OnceLock<Option<Arc<qalqan_geo::Geo>>> = OnceLock::new();
/// Set once [`preload`] has started loading the tables in the background.
static PRELOADING: AtomicBool = AtomicBool::new(false);

/// The geo tables, loaded on first use (about 0.15 s of CPU and 13 MiB, once per process; ten
/// times longer in a debug build). `None` if the embedded data cannot be read, which only a
/// broken build can cause; indicators then have no country or AS, and the map says nothing about
/// them.
fn geo() -> Option<Arc<qalqan_geo::Geo>> {
    GEO.get_or_init(|| match qalqan_geo::Geo::embedded() {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::error!(error = %e, "geo tables");
            None
        }
    })
    .clone()
}

/// The geo tables for the write path: never waits for a load that [`preload`] is doing, so the
/// first shield push after a start is not held up (an indicator stored in that moment gets its
/// country and AS the next time it is seen). Without a preload (tests, the CLI), loads here.
fn geo_now() -> Option<Arc<qalqan_geo::Geo>> {
    if let Some(g) = GEO.get() {
        return g.clone();
    }
    if PRELOADING.load(Ordering::Acquire) {
        return None;
    }
    geo()
}

/// Loads the geo tables now, off the async threads, so that the first ingest does not wait
/// for them (`serve` calls it at start).
pub fn preload() {
    PRELOADING.store(true, Ordering::Release);
    std::thread::spawn(|| {
        let _ = geo();
    });
}

fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => ipnet::Ipv4Net::new(v4, 24)
            .map(|n| n.trunc().to_string())
            .unwrap_or_default(),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 48)
            .map(|n| n.trunc().to_string())
            .unwrap_or_default(),
    }
}

fn place_of(ip: IpAddr, net: String) -> Place {
    let (country, asn) = match geo_now() {
        Some(g) => (
            g.country(ip)
                .and_then(|c| std::str::from_utf8(&c).ok().map(str::to_string)),
            g.asn(ip).map(|a| i64::from(a.number)),
        ),
        None => (None, None),
    };
    Place {
        country,
        asn,
        net: Some(net),
    }
}

/// The place of a normalised indicator value (`model::normalise_indicator` has checked it).
/// Kinds without a place (domains, accounts, …) get none.
pub fn locate(kind: IndicatorKind, value: &str) -> Place {
    match kind {
        IndicatorKind::Ip => match value.parse::<IpAddr>() {
            Ok(ip) => place_of(ip, network_of(ip)),
            Err(_) => Place::default(),
        },
        IndicatorKind::Cidr => match value.parse::<ipnet::IpNet>() {
            Ok(n) => place_of(n.network(), n.trunc().to_string()),
            Err(_) => Place::default(),
        },
        IndicatorKind::Asn => Place {
            asn: value
                .strip_prefix("AS")
                .and_then(|d| d.parse::<i64>().ok())
                .filter(|n| *n > 0),
            ..Place::default()
        },
        _ => Place::default(),
    }
}

/// The organisation running AS `n`, if the geo tables name it.
pub fn as_org(n: i64) -> Option<String> {
    let n = u32::try_from(n).ok()?;
    geo().and_then(|g| g.org(n).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        let p = locate(IndicatorKind::Ip, "10.1.2.3");
        assert_eq!(p.net.as_deref(), Some("10.1.2.0/24"));
        assert_eq!(p.country, None, "private addresses have no country");
        assert_eq!(p.asn, None);
        let p = locate(IndicatorKind::Ip, "2001:db8:1:2::5");
        assert_eq!(p.net.as_deref(), Some("2001:db8:1::/48"));
        let p = locate(IndicatorKind::Cidr, "203.0.113.0/24");
        assert_eq!(p.net.as_deref(), Some("203.0.113.0/24"));
        let p = locate(IndicatorKind::Asn, "AS9198");
        assert_eq!(p.asn, Some(9198));
        assert_eq!(p.net, None);
        assert_eq!(
            locate(IndicatorKind::Domain, "example.kz"),
            Place::default()
        );
        // A public address gets what the geo tables say, whatever that is.
        let g = qalqan_geo::Geo::embedded().unwrap();
        let ip: IpAddr = "8.8.8.8".parse().unwrap();
        let p = locate(IndicatorKind::Ip, "8.8.8.8");
        assert_eq!(
            p.country,
            g.country(ip)
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
        );
        assert_eq!(p.asn, g.asn(ip).map(|a| i64::from(a.number)));
        assert!(p.country.is_some());
    }
}
