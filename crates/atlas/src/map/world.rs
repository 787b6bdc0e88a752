//! The world map's geometry: Natural Earth 1:110m countries (npm `world-atlas` 2.0.2, shipped as
//! `crates/atlas/data/countries-110m.json`), decoded from TopoJSON and projected once per process
//! into SVG path strings keyed by ISO 3166-1 alpha-2.
//!
//! TopoJSON stores shared borders once as *arcs*: quantized integer points, each one a delta
//! from the previous. A polygon ring is a list of arc indexes; a negative index `!i` (that is,
//! `-i - 1`) means arc `i` reversed. The last point of each arc is the first of the next, so it
//! is dropped when arcs are joined.
//!
//! The projection is equirectangular (plate carrée) on a 1000-unit-wide canvas, cropped to 84°N
//! … 57°S (Antarctica is left out: nothing attacks from there, and it would take a fifth of a
//! phone screen). Coordinates are whole canvas units, drawn with relative `l` commands, which
//! keeps the whole map near 40 KB.
//!
//! Country keys: the file's `id` is the ISO numeric code as a string ("398" is Kazakhstan).
//! Three shapes have none at this scale: Kosovo (drawn as `XK`, the code the geo data uses),
//! Northern Cyprus (drawn as `CY`) and Somaliland (drawn as `SO`), which is also how IP
//! registries place their addresses. Baikonur only exists as a separate shape at 1:10m; at this
//! scale it is part of Kazakhstan.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use serde::Deserialize;

use super::countries::COUNTRIES;

/// The TopoJSON file, public domain data (Natural Earth) packaged under ISC (see `data/README.md`).
static TOPOLOGY: &str = include_str!("../../data/countries-110m.json");

/// Canvas width in SVG units.
pub const WIDTH: f64 = 1000.0;
/// Northernmost latitude drawn.
const NORTH: f64 = 84.0;
/// Southernmost latitude drawn.
const SOUTH: f64 = -57.0;
/// Units per degree.
const K: f64 = WIDTH / 360.0;

/// Canvas height in SVG units.
pub fn height() -> f64 {
    ((NORTH - SOUTH) * K).round()
}

/// One country's outline, ready to print.
#[derive(Debug, Clone)]
pub struct Shape {
    /// ISO 3166-1 alpha-2, upper case.
    pub code: &'static str,
    /// The SVG path data (`M… l… z`).
    pub d: String,
}

#[derive(Deserialize)]
struct Topology {
    transform: Transform,
    arcs: Vec<Vec<[i64; 2]>>,
    objects: Objects,
}

#[derive(Deserialize)]
struct Transform {
    scale: [f64; 2],
    translate: [f64; 2],
}

#[derive(Deserialize)]
struct Objects {
    countries: Collection,
}

#[derive(Deserialize)]
struct Collection {
    geometries: Vec<Geometry>,
}

#[derive(Deserialize)]
struct Geometry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    arcs: serde_json::Value,
    #[serde(default)]
    properties: Properties,
}

#[derive(Deserialize, Default)]
struct Properties {
    #[serde(default)]
    name: String,
}

/// The alpha-2 code of a country in the file: by numeric id, or by name for the three shapes
/// without one.
fn alpha2(id: Option<&str>, name: &str) -> Option<&'static str> {
    match id {
        Some(n) => COUNTRIES.iter().find(|c| c.1 == n).map(|c| c.0),
        None => match name {
            "Kosovo" => Some("XK"),
            "N. Cyprus" => Some("CY"),
            "Somaliland" => Some("SO"),
            _ => None,
        },
    }
}

/// Decodes every arc into absolute longitude/latitude points.
fn decode_arcs(t: &Topology) -> Vec<Vec<(f64, f64)>> {
    t.arcs
        .iter()
        .map(|arc| {
            let (mut x, mut y) = (0i64, 0i64);
            arc.iter()
                .map(|[dx, dy]| {
                    x += dx;
                    y += dy;
                    (
                        x as f64 * t.transform.scale[0] + t.transform.translate[0],
                        y as f64 * t.transform.scale[1] + t.transform.translate[1],
                    )
                })
                .collect()
        })
        .collect()
}

/// Projects a point to whole canvas units.
fn project(lon: f64, lat: f64) -> (i64, i64) {
    let lat = lat.clamp(SOUTH, NORTH);
    (
        ((lon + 180.0) * K).round() as i64,
        ((NORTH - lat) * K).round() as i64,
    )
}

/// Appends one ring (a list of arc indexes) to the path data. Returns false if the ring refers
/// to an arc the file does not have.
///
/// A few rings of the 1:110m file cross the antimeridian (Fiji, Chukotka): their longitudes
/// jump from 180 to -180. They are unwrapped into one continuous ring, drawn once where it
/// starts and once shifted by 360° so the part past the edge shows on the other side; the SVG
/// viewport clips what falls outside.
fn ring(out: &mut String, indexes: &[serde_json::Value], arcs: &[Vec<(f64, f64)>]) -> bool {
    let mut lonlat: Vec<(f64, f64)> = Vec::new();
    for v in indexes {
        let Some(i) = v.as_i64() else { return false };
        let (idx, reversed) = if i < 0 { (!i, true) } else { (i, false) };
        let Some(arc) = usize::try_from(idx).ok().and_then(|i| arcs.get(i)) else {
            return false;
        };
        let mut a = arc.clone();
        if reversed {
            a.reverse();
        }
        // The first point of each arc after the first repeats the last point of the previous.
        let skip = usize::from(!lonlat.is_empty());
        lonlat.extend(a.into_iter().skip(skip));
    }
    let mut shift = 0.0;
    let mut prev_lon: Option<f64> = None;
    for p in &mut lonlat {
        if let Some(prev) = prev_lon {
            let raw = p.0 + shift;
            if raw - prev > 180.0 {
                shift -= 360.0;
            } else if prev - raw > 180.0 {
                shift += 360.0;
            }
        }
        p.0 += shift;
        prev_lon = Some(p.0);
    }
    let (min, max) = lonlat.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let mut copies = vec![0.0];
    if max > 180.0 {
        copies.push(-360.0);
    }
    if min < -180.0 {
        copies.push(360.0);
    }
    for offset in copies {
        let mut pts: Vec<(i64, i64)> = lonlat
            .iter()
            .map(|(x, y)| project(x + offset, *y))
            .collect();
        pts.dedup();
        if pts.len() < 3 {
            continue; // Too small to see at this scale.
        }
        let mut prev = pts[0];
        let _ = write!(out, "M{} {}", prev.0, prev.1);
        let mut first = true;
        for p in &pts[1..] {
            let (dx, dy) = (p.0 - prev.0, p.1 - prev.1);
            if first {
                out.push('l');
                first = false;
            } else if dx >= 0 {
                out.push(' ');
            }
            let _ = write!(out, "{dx}");
            if dy >= 0 {
                out.push(' ');
            }
            let _ = write!(out, "{dy}");
            prev = *p;
        }
        out.push('z');
    }
    true
}

fn build() -> Result<Vec<Shape>, String> {
    let t: Topology =
        serde_json::from_str(TOPOLOGY).map_err(|e| format!("countries-110m.json: {e}"))?;
    let arcs = decode_arcs(&t);
    let mut by_code: HashMap<&'static str, String> = HashMap::new();
    let mut order: Vec<&'static str> = Vec::new();
    for g in &t.objects.countries.geometries {
        // Antarctica: left out (see the module comment).
        if g.id.as_deref() == Some("010") {
            continue;
        }
        let Some(code) = alpha2(g.id.as_deref(), &g.properties.name) else {
            return Err(format!(
                "no ISO code for {:?} ({:?})",
                g.properties.name, g.id
            ));
        };
        let polygons: Vec<&serde_json::Value> = match (g.kind.as_str(), &g.arcs) {
            ("Polygon", v) => vec![v],
            ("MultiPolygon", serde_json::Value::Array(ps)) => ps.iter().collect(),
            _ => continue,
        };
        let d = by_code.entry(code).or_insert_with(|| {
            order.push(code);
            String::new()
        });
        for poly in polygons {
            let Some(rings) = poly.as_array() else {
                return Err(format!("{code}: a polygon is not a list of rings"));
            };
            for r in rings {
                let Some(indexes) = r.as_array() else {
                    return Err(format!("{code}: a ring is not a list of arcs"));
                };
                if !ring(d, indexes, &arcs) {
                    return Err(format!("{code}: a ring names an arc that does not exist"));
                }
            }
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|code| {
            let d = by_code.remove(code)?;
            (!d.is_empty()).then_some(Shape { code, d })
        })
        .collect())
}

/// Every country's outline, computed on first use and kept for the life of the process. An
/// error here is a broken file in the repository (the tests decode it), never user input; the
/// map then shows only its table.
pub fn shapes() -> &'static [Shape] {
    static SHAPES: OnceLock<Vec<Shape>> = OnceLock::new();
    SHAPES.get_or_init(|| {
        build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "world map geometry");
            Vec::new()
        })
    })
}

/// A country's name in a language (`0` English, `1` Russian, `2` Kazakh), or the code itself.
pub fn country_name(code: &str, lang: usize) -> &str {
    COUNTRIES
        .iter()
        .find(|c| c.0 == code)
        .map(|c| match lang {
            1 => c.3,
            2 => c.4,
            _ => c.2,
        })
        .unwrap_or(code)
}

/// Whether `code` is an ISO 3166-1 alpha-2 code we know (or `XK`).
pub fn is_country(code: &str) -> bool {
    COUNTRIES.iter().any(|c| c.0 == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_country_with_a_code() {
        let s = build().expect("geometry decodes");
        assert!(s.len() > 170, "only {} shapes", s.len());
        let codes: Vec<&str> = s.iter().map(|s| s.code).collect();
        for c in ["KZ", "RU", "CN", "US", "XK", "UZ", "KG", "BR", "AU"] {
            assert!(codes.contains(&c), "{c} missing");
        }
        assert!(!codes.contains(&"AQ"), "Antarctica is left out");
        let mut dedup = codes.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), codes.len(), "one path per country");
        // Every ring starts on the canvas, or within one world's width of it (the shifted
        // copies of rings that cross the antimeridian), and no step crosses half the world.
        let h = height() as i64;
        let w = WIDTH as i64;
        for sh in &s {
            for m in sh.d.split('M').skip(1) {
                let nums: Vec<i64> = m
                    .replace(['l', 'z'], " ")
                    .replace('-', " -")
                    .split_whitespace()
                    .map(|n| n.parse().unwrap())
                    .collect();
                let (x, y) = (nums[0], nums[1]);
                assert!(
                    (-w..=2 * w).contains(&x) && (0..=h).contains(&y),
                    "{}",
                    sh.code
                );
                for step in nums[2..].chunks(2) {
                    assert!(step[0].abs() < w / 2, "{}: a step across the map", sh.code);
                }
            }
        }
        let total: usize = s.iter().map(|s| s.d.len()).sum();
        assert!(total < 80_000, "map paths take {total} bytes");
    }

    #[test]
    fn kazakhstan_sits_where_it_should() {
        // Astana is at 71.4°E 51.2°N: inside the bounding box of KZ's first ring.
        let kz = build()
            .unwrap()
            .into_iter()
            .find(|s| s.code == "KZ")
            .unwrap();
        let (ax, ay) = project(71.4, 51.2);
        let mut x: i64 = 0;
        let mut y: i64 = 0;
        let (mut minx, mut maxx, mut miny, mut maxy) = (i64::MAX, i64::MIN, i64::MAX, i64::MIN);
        for part in
            kz.d.split('M')
                .nth(1)
                .unwrap()
                .split('z')
                .next()
                .unwrap()
                .split('l')
        {
            let nums: Vec<i64> = part
                .replace('-', " -")
                .split_whitespace()
                .map(|n| n.parse().unwrap())
                .collect();
            for (i, pair) in nums.chunks(2).enumerate() {
                if x == 0 && y == 0 && i == 0 {
                    (x, y) = (pair[0], pair[1]);
                } else {
                    x += pair[0];
                    y += pair[1];
                }
                minx = minx.min(x);
                maxx = maxx.max(x);
                miny = miny.min(y);
                maxy = maxy.max(y);
            }
        }
        assert!((minx..=maxx).contains(&ax) && (miny..=maxy).contains(&ay));
    }

    #[test]
    fn every_code_has_three_names() {
        for c in COUNTRIES {
            assert_eq!(c.0.len(), 2);
            assert!(
                !c.2.is_empty() && !c.3.is_empty() && !c.4.is_empty(),
                "{}",
                c.0
            );
        }
        assert_eq!(country_name("KZ", 2), "Қазақстан");
        assert_eq!(country_name("ZZ", 0), "ZZ");
    }
}
