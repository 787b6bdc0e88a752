//! Verified good bots under attack: crawlers and preview fetchers whose address proves their
//! user agent are never challenged and are limited per family; the same user agent from any
//! other address is challenged like anyone; feeds, sitemaps, robots.txt, favicons and static
//! files are never challenged at all. The client address comes from X-Forwarded-For set by a
//! trusted proxy (the test client on loopback), as behind a CDN.

use crate::common::*;

const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const TELEGRAM: &str = "TelegramBot (like TwitterBot)";
const READER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0";

/// Loopback is the trusted proxy; attack detection stays out of the way (the mode is forced).
const TRUSTED: &str =
    "[client]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[attack]\nepisodes_path = \"\"\n";

/// GET `path` as `ua` from client address `ip` (named in X-Forwarded-For by the trusted proxy).
async fn get_as(addr: std::net::SocketAddr, path: &str, ua: &str, ip: &str) -> Got {
    get(addr, path, &[("user-agent", ua), ("x-forwarded-for", ip)]).await
}

fn challenged(g: &Got) -> bool {
    g.header("x-qalqan-decision") == Some("challenge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_attack_verified_crawlers_pass_and_fake_ones_are_challenged() {
    let origin = Origin::simple(Some("no-store")).await;
    // The built-in route classes: search is challenged under attack, the rest never.
    let sh = shield_apart(&origin, TRUSTED).await;
    let admin = sh.admin.expect("admin listener");
    let addr = sh.listen[0];
    force_under_attack(admin).await;

    // A reader without clearance is challenged on search: the route really challenges.
    let reader = get_as(addr, "/search?q=news", READER, "198.51.100.20").await;
    assert!(challenged(&reader), "status {}", reader.status);

    // Googlebot from Google's published range gets the page.
    let before = origin.count("/search");
    let real = get_as(addr, "/search?q=news", GOOGLEBOT, "66.249.66.1").await;
    assert_eq!(real.status, 200, "{}", real.text());
    assert!(!challenged(&real));
    assert_eq!(
        origin.count("/search"),
        before + 1,
        "the crawler reached the origin"
    );
    // So does Googlebot over IPv6 from Google's published range.
    let v6 = get_as(addr, "/search?q=news", GOOGLEBOT, "2001:4860:4801:10::7").await;
    assert_eq!(v6.status, 200);

    // The same user agent from a documentation address is an impostor: challenged.
    let fake = get_as(addr, "/search?q=news", GOOGLEBOT, "203.0.113.7").await;
    assert_eq!(fake.status, 403);
    assert!(challenged(&fake));
    // A Bing address does not prove a Googlebot claim.
    let wrong_family = get_as(addr, "/search?q=news", GOOGLEBOT, "157.55.39.10").await;
    assert!(challenged(&wrong_family));

    // Telegram's link preview from Telegram's published network gets the page.
    let tg = get_as(addr, "/search?q=news", TELEGRAM, "149.154.161.5").await;
    assert_eq!(tg.status, 200, "{}", tg.text());
    let fake_tg = get_as(addr, "/search?q=news", TELEGRAM, "203.0.113.8").await;
    assert!(challenged(&fake_tg));

    // Feeds, sitemaps, robots.txt, the favicon and static files are never challenged, whoever
    // asks, even a fake crawler.
    // (A fresh address per request keeps the routes' own per-address rates out of the way.)
    let never = [
        "/feed/",
        "/rss.xml",
        "/sitemap.xml",
        "/sitemap_index.xml",
        "/robots.txt",
        "/favicon.ico",
        "/wp-content/themes/news/style.css",
        "/wp-content/uploads/photo.jpg",
    ];
    for (k, path) in never.iter().enumerate() {
        let reader_ip = format!("198.51.100.{}", 100 + k);
        let fake_ip = format!("203.0.113.{}", 100 + k);
        for (ua, ip) in [(READER, &reader_ip), (GOOGLEBOT, &fake_ip)] {
            let g = get_as(addr, path, ua, ip).await;
            assert_eq!(g.status, 200, "{path} as {ua} from {ip}");
            assert!(!challenged(&g), "{path}");
        }
    }

    let series = |fam: &str, v: &str| {
        format!("qalqan_shield_goodbot_requests_total{{family=\"{fam}\",verified=\"{v}\"}}")
    };
    assert_eq!(metric(admin, &series("googlebot", "true")).await, 2.0);
    // Unverified: the two impostors on search and the one on each never-challenged path
    // (claims are counted wherever a limit applies).
    assert_eq!(
        metric(admin, &series("googlebot", "false")).await,
        2.0 + never.len() as f64
    );
    assert_eq!(metric(admin, &series("telegram", "true")).await, 1.0);
    assert_eq!(metric(admin, &series("telegram", "false")).await, 1.0);
    assert_eq!(metric(admin, &series("bingbot", "true")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_crawlers_are_limited_per_family_not_per_address() {
    let origin = Origin::simple(Some("no-store")).await;
    let extra = format!(
        "{TRUSTED}[[route]]\nname = \"default\"\nrate_per_address = 1\nrate_per_prefix = 1\n[goodbots]\nrate_per_family = 4\n"
    );
    let sh = shield_apart(&origin, &extra).await;
    let admin = sh.admin.expect("admin listener");
    let addr = sh.listen[0];

    // One address, three requests: a reader is over its per-address rate, a verified crawler
    // from one address is not.
    let statuses = |v: &[Got]| v.iter().map(|g| g.status.as_u16()).collect::<Vec<_>>();
    let mut reader = Vec::new();
    let mut crawler = Vec::new();
    for _ in 0..3 {
        reader.push(get_as(addr, "/a", READER, "198.51.100.40").await);
        crawler.push(get_as(addr, "/a", GOOGLEBOT, "66.249.66.1").await);
    }
    assert_eq!(statuses(&reader), [200, 429, 429]);
    assert_eq!(statuses(&crawler), [200, 200, 200]);
    // The family's budget (4 per second) is shared by all of Google's addresses.
    let other = get_as(addr, "/a", GOOGLEBOT, "66.249.66.2").await;
    assert_eq!(other.status, 200, "the fourth request of the family");
    let over = get_as(addr, "/a", GOOGLEBOT, "66.249.70.3").await;
    assert_eq!(over.status, 429, "over the family's budget");
    assert_eq!(
        metric(
            admin,
            "qalqan_shield_goodbot_limited_total{family=\"googlebot\"}"
        )
        .await,
        1.0
    );
    // Bing is counted apart from Google.
    let bing = get_as(
        addr,
        "/a",
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "157.55.39.10",
    )
    .await;
    assert_eq!(bing.status, 200);
    // A fake crawler is limited per address like the reader.
    let fake: Vec<Got> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(get_as(addr, "/a", GOOGLEBOT, "203.0.113.50").await);
        }
        v
    };
    assert_eq!(statuses(&fake), [200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresher_lists_from_ranges_dir_verify_new_families_and_off_means_off() {
    let origin = Origin::simple(Some("no-store")).await;
    let dir = std::env::temp_dir().join(format!("qalqan-goodbots-it-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("newsbot.txt"),
        "# A family the outlet trusts, with its own network.\nfamily newsbot\nua NewsAggregator\n192.0.2.0/24\n",
    )
    .unwrap();
    let routes = "[[route]]\nname = \"default\"\nrate_per_address = 1000\nrate_per_prefix = 1000\nchallenge = \"attack\"\n";
    let extra = format!(
        "{TRUSTED}{routes}[goodbots]\nranges_dir = \"{}\"\n",
        dir.display()
    );
    let sh = shield_apart(&origin, &extra).await;
    force_under_attack(sh.admin.expect("admin")).await;
    let addr = sh.listen[0];
    let ua = "NewsAggregator/3.1 (+https://example.org/bot)";
    assert_eq!(get_as(addr, "/story", ua, "192.0.2.44").await.status, 200);
    assert!(challenged(
        &get_as(addr, "/story", ua, "198.51.100.44").await
    ));
    assert_eq!(
        get_as(addr, "/story", GOOGLEBOT, "66.249.66.1")
            .await
            .status,
        200,
        "built-in families are kept"
    );

    // With good bots off, even a real Googlebot address is challenged like anyone.
    let off = shield_apart(
        &origin,
        &format!("{TRUSTED}{routes}[goodbots]\nenabled = false\n"),
    )
    .await;
    force_under_attack(off.admin.expect("admin")).await;
    let g = get_as(off.listen[0], "/story", GOOGLEBOT, "66.249.66.1").await;
    assert!(challenged(&g));
    let _ = std::fs::remove_dir_all(&dir);
}
