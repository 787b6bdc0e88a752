//! Country and ASN in attack episodes: a flood sent through a trusted proxy (X-Forwarded-For)
//! ends up in the written episode with the clients' country and autonomous system, named from
//! the data built into the binary or from a `[geo] dir`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use crate::common::*;

/// The loopback peer may name clients; limits are out of the way so every request counts.
fn geo_config(episodes: &std::path::Path, geo: &str) -> String {
    format!(
        "[client]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[[route]]\nname = \"default\"\nrate_per_address = 0\nrate_per_prefix = 0\n[attack]\nepisodes_path = \"{}\"\n{geo}\n",
        episodes.display()
    )
}

async fn set_mode(admin: std::net::SocketAddr, query: &str) {
    let r = send(
        admin,
        Method::POST,
        &format!("/mode?{query}"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `tasks` concurrent clients for `d`; request `i` of a task comes from `addrs[i % len]`.
async fn flood_from(
    addr: std::net::SocketAddr,
    addrs: &'static [&'static str],
    tasks: usize,
    d: Duration,
) -> usize {
    let until = Instant::now() + d;
    let mut handles = Vec::new();
    for t in 0..tasks {
        handles.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while Instant::now() < until {
                let req = http::Request::builder()
                    .uri(format!("http://{addr}/search?q=number+one&t={t}"))
                    .header("x-forwarded-for", addrs[n % addrs.len()])
                    .header("user-agent", "flood-bot/2.0")
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap();
                if c.request(req).await.is_ok() {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap_or(0);
    }
    total
}

/// Three Kazakhtelecom addresses for every Google one.
const KZ_AND_US: &[&str] = &["95.56.0.1", "2.132.0.1", "178.89.7.9", "8.8.8.8"];

/// Runs a forced attack with a flood from `addrs`, ends it, and returns the written episode.
async fn episode_of_a_flood(geo: &str, addrs: &'static [&'static str]) -> serde_json::Value {
    let origin = Origin::simple(Some("max-age=60")).await;
    let file = std::env::temp_dir().join(format!(
        "qalqan-geo-episode-{}-{}.jsonl",
        std::process::id(),
        geo.len()
    ));
    let _ = std::fs::remove_file(&file);
    let sh = shield_apart(&origin, &geo_config(&file, geo)).await;
    let admin = sh.admin.expect("admin listener");
    set_mode(admin, "set=under-attack&for=1h").await;
    let sent = flood_from(sh.listen[0], addrs, 4, Duration::from_millis(1500)).await;
    assert!(
        sent > 200,
        "the flood was too small to mean anything: {sent}"
    );
    set_mode(admin, "set=auto").await;
    let text = std::fs::read_to_string(&file).expect("an episode file after the attack ended");
    let _ = std::fs::remove_file(&file);
    let line = text.lines().next().expect("one episode");
    serde_json::from_str(line).expect("the episode is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episode_names_the_flood_s_countries_and_autonomous_systems() {
    let ep = episode_of_a_flood("", KZ_AND_US).await;
    let hits = &ep["heavy_hitters"];
    let total = ep["total_requests"].as_u64().unwrap();
    let countries = hits["countries"].as_array().unwrap();
    assert_eq!(countries[0]["key"], "KZ", "{hits}");
    assert_eq!(countries[1]["key"], "US", "{hits}");
    assert_eq!(countries.len(), 2, "{hits}");
    let kz = countries[0]["count"].as_u64().unwrap();
    // Each task sends KZ, KZ, KZ, US in turn: about three quarters from Kazakhstan (each of
    // the four tasks may stop up to three KZ requests into a round, and a request that failed
    // is sent again from the same address, so within 1 %).
    let share = kz as f64 / total as f64;
    assert!((0.74..=0.76).contains(&share), "{kz} of {total}");
    let asns = hits["asns"].as_array().unwrap();
    assert_eq!(asns[0]["key"], 9198, "{hits}");
    assert_eq!(asns[0]["org"], "JSC Kazakhtelecom", "{hits}");
    assert_eq!(asns[1]["key"], 15169, "{hits}");
    assert_eq!(asns[1]["org"], "Google LLC", "{hits}");
    assert_eq!(
        asns[0]["count"].as_u64(),
        Some(kz),
        "every KZ address here is Kazakhtelecom's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_named_too() {
    const V6: &[&str] = &["2001:4860:4860::8888", "2a03:2880:f003::1"];
    let ep = episode_of_a_flood("", V6).await;
    let hits = &ep["heavy_hitters"];
    let mut asns: Vec<u64> = hits["asns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_u64().unwrap())
        .collect();
    asns.sort();
    assert_eq!(asns, [15169, 32934], "{hits}");
    let mut countries: Vec<&str> = hits["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["key"].as_str().unwrap())
        .collect();
    countries.sort();
    assert_eq!(countries, ["IE", "US"], "{hits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_geo_dir_replaces_the_built_in_data_and_disabled_means_none() {
    // Data of our own making, so the answer can only come from this directory: 95.56.0.0/14
    // is "XK" and AS 64500 here (KZ and AS9198 in the shipped data).
    let dir = std::env::temp_dir().join(format!("qalqan-geo-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gz = |name: &str, text: &[u8]| {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        let mut w = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        w.write_all(text).unwrap();
        w.finish().unwrap();
    };
    let mut country = Vec::new();
    qalqan_geo::format::write_country(
        &mut country,
        &["test".into()],
        &[(0x5f38_0000, Some(*b"XK")), (0x5f3c_0000, None)],
        &[],
    )
    .unwrap();
    gz(qalqan_geo::COUNTRY_FILE, &country);
    let mut asn = Vec::new();
    qalqan_geo::format::write_asn(
        &mut asn,
        &[],
        &[(64_500, "Test Telecom".into())],
        &[(0x5f38_0000, Some(64_500)), (0x5f3c_0000, None)],
        &[],
    )
    .unwrap();
    gz(qalqan_geo::ASN_FILE, &asn);

    let ep = episode_of_a_flood(
        &format!("[geo]\ndir = \"{}\"", dir.display()),
        &["95.56.0.1", "8.8.8.8"],
    )
    .await;
    let hits = &ep["heavy_hitters"];
    assert_eq!(hits["countries"].as_array().unwrap().len(), 1, "{hits}");
    assert_eq!(hits["countries"][0]["key"], "XK");
    assert_eq!(hits["asns"].as_array().unwrap().len(), 1, "{hits}");
    assert_eq!(hits["asns"][0]["key"], 64_500);
    assert_eq!(hits["asns"][0]["org"], "Test Telecom");

    let ep = episode_of_a_flood("[geo]\nenabled = false", KZ_AND_US).await;
    let hits = &ep["heavy_hitters"];
    assert!(ep["total_requests"].as_u64().unwrap() > 200);
    assert_eq!(hits["countries"], serde_json::json!([]), "{hits}");
    assert_eq!(hits["asns"], serde_json::json!([]), "{hits}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_geo_dir_is_a_configuration_problem_with_its_key_path() {
    let dir = std::env::temp_dir().join(format!("qalqan-geo-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(qalqan_geo::COUNTRY_FILE), b"not gzip").unwrap();
    std::fs::write(dir.join(qalqan_geo::ASN_FILE), b"not gzip").unwrap();
    let toml = format!(
        "[origin]\nurl = \"http://127.0.0.1:1\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n[geo]\ndir = \"{}\"\n",
        dir.display()
    );
    let err = qalqan_shield::RawConfig::from_toml(&toml).unwrap_err();
    let p = err
        .problems
        .iter()
        .find(|p| p.path == "geo.dir")
        .expect("geo.dir problem");
    assert!(p.message.contains("country.txt.gz"), "{}", p.message);
    let missing = toml.replace(dir.to_str().unwrap(), "/nonexistent/qalqan-geo");
    let err = qalqan_shield::RawConfig::from_toml(&missing).unwrap_err();
    assert!(err.problems.iter().any(|p| p.path == "geo.dir"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
