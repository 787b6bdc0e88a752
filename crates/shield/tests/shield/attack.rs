//! Attack mode: the detector fed by real traffic, the manual override through the admin
//! listener, and the episode written when the attack ends.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;

use crate::common::*;

const FAST_DETECTION: &str = r#"
[[route]]
name = "default"
rate_per_address = 0
rate_per_prefix = 0
"#;

fn attack_section(path: &std::path::Path) -> String {
    format!(
        "[attack]\nwarmup = \"1s\"\nenter_after = \"1s\"\ncooldown = \"2s\"\nfloor_rps = 5.0\nepisodes_path = \"{}\"\n",
        path.display()
    )
}

async fn mode(admin: std::net::SocketAddr) -> String {
    let g = get(admin, "/mode", &[]).await;
    let v: serde_json::Value = serde_json::from_slice(&g.body).expect("mode is JSON");
    v["mode"].as_str().unwrap_or("").to_string()
}

/// Sends requests from `tasks` concurrent clients for `d`.
async fn flood(addr: std::net::SocketAddr, tasks: usize, d: Duration) -> usize {
    let until = Instant::now() + d;
    let mut handles = Vec::new();
    for t in 0..tasks {
        handles.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while Instant::now() < until {
                let req = http::Request::builder()
                    .uri(format!("http://{addr}/search?q=number+one&t={t}"))
                    .header("user-agent", "flood-bot/1.0")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_enters_attack_mode_and_its_end_writes_an_episode() {
    let origin = Origin::simple(Some("max-age=60")).await;
    let dir = std::env::temp_dir().join(format!("qalqan-attack-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let extra = format!("{FAST_DETECTION}{}", attack_section(&dir));
    let sh = shield_apart(&origin, &extra).await;
    let admin = sh.admin.expect("admin listener");
    assert_eq!(mode(admin).await, "normal");

    // A quiet baseline, then a flood far above ten times it.
    for _ in 0..6 {
        let _ = get(sh.listen[0], "/article", &[]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        mode(admin).await,
        "normal",
        "quiet reading must not look like an attack"
    );
    let started = Instant::now();
    let flood_task = tokio::spawn(flood(sh.listen[0], 8, Duration::from_secs(4)));
    let entered = eventually_async(Duration::from_secs(5), || async {
        mode(admin).await == "under_attack"
    })
    .await;
    assert!(entered, "a flood did not enter under_attack within 5 s");
    let detect_time = started.elapsed();
    assert_eq!(
        metric(admin, "qalqan_shield_mode{mode=\"under_attack\"}").await,
        1.0
    );
    let sent = flood_task.await.unwrap();
    assert!(
        sent > 500,
        "the flood was too small to mean anything: {sent}"
    );

    // After the flood, the mode steps down only after the cooldowns, then the episode is written.
    assert_eq!(mode(admin).await, "under_attack", "no cooldown was kept");
    let back = eventually_async(Duration::from_secs(10), || async {
        mode(admin).await == "normal"
    })
    .await;
    assert!(back, "the mode did not return to normal after the flood");
    let text = std::fs::read_to_string(&dir).expect("an episode file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one attack, one episode: {text}");
    let ep: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert!(ep["total_requests"].as_u64().unwrap_or(0) > 100, "{ep}");
    assert!(
        lines[0].contains("127.0.0.1"),
        "the flooding address is a heavy hitter: {ep}"
    );
    assert!(
        lines[0].contains("flood-bot/1.0"),
        "the flood's user agent is recorded"
    );
    println!("detected in {detect_time:?}");
    let _ = std::fs::remove_file(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_override_through_the_admin_listener() {
    let origin = Origin::simple(None).await;
    let dir = std::env::temp_dir().join(format!("qalqan-override-{}", std::process::id()));
    let sh = shield_apart(&origin, &attack_section(&dir)).await;
    let admin = sh.admin.expect("admin listener");
    let set = send(
        admin,
        Method::POST,
        "/mode?set=under-attack&for=1h",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(mode(admin).await, "under_attack");
    let bad = send(
        admin,
        Method::POST,
        "/mode?set=under-attack",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        bad.status, 400,
        "under-attack without a duration is refused"
    );
    let bad = send(admin, Method::POST, "/mode?set=party", &[], Bytes::new()).await;
    assert_eq!(bad.status, 400);
    let auto = send(admin, Method::POST, "/mode?set=auto", &[], Bytes::new()).await;
    assert_eq!(auto.status, 200);
    assert_eq!(mode(admin).await, "normal");
    let _ = std::fs::remove_file(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_attack_limits_are_tightened() {
    let origin = Origin::simple(Some("no-store")).await;
    let dir = std::env::temp_dir().join(format!("qalqan-tighten-{}", std::process::id()));
    let extra = format!(
        "[[route]]\nname = \"default\"\nrate_per_address = 6\nrate_per_prefix = 0\n{}tighten_limits = 3.0\n",
        attack_section(&dir)
    );
    let sh = shield_apart(&origin, &extra).await;
    let admin = sh.admin.expect("admin listener");
    let mut ok_normal = 0;
    for _ in 0..10 {
        if get_from(lo(2), sh.listen[0], "/a", &[]).await.status == 200 {
            ok_normal += 1;
        }
    }
    force_under_attack(admin).await;
    let mut ok_attack = 0;
    for _ in 0..10 {
        if get_from(lo(3), sh.listen[0], "/a", &[]).await.status == 200 {
            ok_attack += 1;
        }
    }
    assert_eq!(ok_normal, 6, "normal mode keeps the configured rate");
    assert_eq!(
        ok_attack, 2,
        "under attack the rate is divided by tighten_limits"
    );
    let _ = std::fs::remove_file(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_attack_stale_copies_go_to_everyone_and_cookies_do_not_bypass() {
    let origin = Origin::simple(Some("max-age=1")).await;
    let dir = std::env::temp_dir().join(format!("qalqan-stale-{}", std::process::id()));
    let extra = format!(
        "[[route]]\nname = \"default\"\nrate_per_address = 0\nrate_per_prefix = 0\nstale_while_revalidate = \"0s\"\n{}",
        attack_section(&dir)
    );
    let sh = shield_apart(&origin, &extra).await;
    let admin = sh.admin.expect("admin listener");
    let first = get(sh.listen[0], "/page", &[]).await;
    assert_eq!(first.header("x-qalqan-cache"), Some("miss"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Normal mode: an expired copy is not served while the origin is fine.
    let normal = get(sh.listen[0], "/page", &[]).await;
    assert_eq!(normal.header("x-qalqan-cache"), Some("miss"));
    assert_eq!(origin.count("/page"), 2);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    force_under_attack(admin).await;
    let before = origin.count("/page");
    for i in 0..20 {
        let cookie = format!("session={i}");
        let g = get(sh.listen[0], "/page", &[("cookie", cookie.as_str())]).await;
        assert_eq!(g.status, 200);
        assert_ne!(g.header("x-qalqan-cache"), Some("bypass"), "request {i}");
        assert_ne!(g.header("x-qalqan-cache"), Some("miss"), "request {i}");
    }
    assert!(
        origin.count("/page") <= before + 1,
        "under attack the origin saw more than one refresh: {} -> {}",
        before,
        origin.count("/page")
    );
    let _ = std::fs::remove_file(&dir);
}

/// The value of `name="…"`-style attribute `attr` in an HTML page (first occurrence).
fn attr(html: &str, attr: &str) -> String {
    let start = html.find(&format!("{attr}=\"")).expect("attribute present") + attr.len() + 2;
    let end = html[start..].find('"').expect("closing quote") + start;
    html[start..end].replace("&amp;", "&")
}

const UA: (&str, &str) = ("user-agent", "Mozilla/5.0 (test reader)");

/// Search challenged under attack, feeds never; limits high enough not to interfere.
const CHALLENGE_ROUTES: &str = r#"
[[route]]
name = "search"
path_prefix = ["/search"]
rate_per_address = 1000
rate_per_prefix = 10000
challenge = "attack"
[[route]]
name = "feeds"
path_prefix = ["/feed"]
rate_per_address = 1000
rate_per_prefix = 10000
[[route]]
name = "default"
rate_per_address = 1000
rate_per_prefix = 10000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_attack_search_is_challenged_and_a_solved_challenge_clears_the_reader() {
    let origin = Origin::simple(Some("no-store")).await;
    let dir = std::env::temp_dir().join(format!("qalqan-chal-{}", std::process::id()));
    let extra = format!(
        "{CHALLENGE_ROUTES}{}[challenge]\ndifficulty = 8\n",
        attack_section(&dir)
    );
    let sh = shield_apart(&origin, &extra).await;
    let admin = sh.admin.expect("admin listener");
    let addr = sh.listen[0];
    assert_eq!(
        get(addr, "/search?q=a", &[UA]).await.status,
        200,
        "normal mode: no challenge"
    );
    force_under_attack(admin).await;

    let page = get(
        addr,
        "/search?q=b",
        &[UA, ("accept-language", "kk-KZ,ru;q=0.8")],
    )
    .await;
    assert_eq!(page.status, 403);
    assert_eq!(page.header("x-qalqan-decision"), Some("challenge"));
    let html = page.text();
    assert!(html.len() < 20 * 1024, "the page is {} bytes", html.len());
    assert!(html.contains("lang=\"kk\""), "Kazakh by Accept-Language");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );
    let before = origin.count("/search");
    let token = attr(&html, "data-t");
    assert_eq!(attr(&html, "data-d"), "8");

    // A client that does not solve it never reaches the origin.
    for _ in 0..3 {
        assert_eq!(get(addr, "/search?q=b", &[UA]).await.status, 403);
    }
    let bad = get(
        addr,
        &format!("/.qalqan/verify?t={token}&c=0&r=/search"),
        &[UA],
    )
    .await;
    if qalqan_challenge::work_bits(&token, 0) < 8 {
        assert_eq!(bad.status, 403, "no work, no clearance");
    }

    // The browser's work, done here in Rust: the same SHA-256 rule.
    let counter = qalqan_challenge::solve(&token, 8, 1 << 24).expect("solvable");
    let ok = get(
        addr,
        &format!("/.qalqan/verify?t={token}&c={counter}&r=%2Fsearch%3Fq%3Db"),
        &[UA],
    )
    .await;
    assert_eq!(ok.status, 303, "{}", ok.text());
    assert_eq!(ok.header("location"), Some("/search?q=b"));
    let set = ok
        .header("set-cookie")
        .expect("a clearance cookie")
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();

    let cleared = get(addr, "/search?q=b", &[UA, ("cookie", cookie.as_str())]).await;
    assert_eq!(cleared.status, 200, "a cleared reader reaches the page");
    assert_eq!(
        origin.count("/search"),
        before + 1,
        "only the cleared request reached the origin"
    );
    let again = get(addr, "/search?q=c", &[UA, ("cookie", cookie.as_str())]).await;
    assert_eq!(
        again.status, 200,
        "a cleared reader is not challenged again"
    );

    // The same answer twice is refused; a cookie from another browser is worth nothing.
    let replay = get(
        addr,
        &format!("/.qalqan/verify?t={token}&c={counter}&r=/"),
        &[UA],
    )
    .await;
    assert_eq!(replay.status, 403);
    assert_eq!(replay.header("x-qalqan-reason"), Some("already used"));
    let other_ua = get(
        addr,
        "/search?q=b",
        &[("user-agent", "curl/8"), ("cookie", cookie.as_str())],
    )
    .await;
    assert_eq!(
        other_ua.status, 403,
        "the clearance is bound to the browser"
    );

    // The funnel: pages issued, one answer solved, two refused (no work, replay), cleared requests.
    let stage = |s: &str| format!("qalqan_shield_challenge_total{{stage=\"{s}\"}}");
    assert!(metric(admin, &stage("issued")).await >= 4.0);
    assert_eq!(metric(admin, &stage("solved")).await, 1.0);
    assert!(metric(admin, &stage("failed")).await >= 1.0);
    assert_eq!(metric(admin, &stage("cleared_request")).await, 2.0);

    // Feeds are never challenged, even under attack.
    assert_eq!(get(addr, "/feed/", &[UA]).await.status, 200);
    let _ = std::fs::remove_file(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_javascript_readers_pass_by_waiting() {
    let origin = Origin::simple(Some("no-store")).await;
    let dir = std::env::temp_dir().join(format!("qalqan-nojs-{}", std::process::id()));
    let extra = format!(
        "{CHALLENGE_ROUTES}{}[challenge]\nnojs_delay = \"1s\"\n",
        attack_section(&dir)
    );
    let sh = shield_apart(&origin, &extra).await;
    force_under_attack(sh.admin.expect("admin")).await;
    let addr = sh.listen[0];
    let page = get(addr, "/search?q=x", &[UA]).await;
    assert_eq!(page.status, 403);
    let html = page.text();
    assert!(
        html.contains("<noscript><meta http-equiv=\"refresh\""),
        "meta refresh for no-JS"
    );
    let link = attr(&html, "href");
    assert!(link.starts_with("/.qalqan/nojs?"), "{link}");
    // Too early: asked to wait, no clearance.
    let early = get(addr, &link, &[UA]).await;
    assert_eq!(early.status, 403);
    assert!(early.header("set-cookie").is_none());
    assert!(early.text().contains("http-equiv=\"refresh\""));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ok = get(addr, &link, &[UA]).await;
    assert_eq!(ok.status, 303, "{}", ok.text());
    let cookie = ok
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let cleared = get(addr, "/search?q=x", &[UA, ("cookie", cookie.as_str())]).await;
    assert_eq!(cleared.status, 200);
    // The waiting token is single-use too.
    assert_eq!(get(addr, &link, &[UA]).await.status, 403);
    let _ = std::fs::remove_file(&dir);
}

/// A search flood too small to escalate the whole site puts the search class under attack on
/// its own baseline: searches without clearance get the challenge, articles are served as
/// before, and the site-wide mode stays normal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_route_class_is_detected_against_its_own_baseline() {
    let origin = Origin::simple(Some("no-store")).await;
    let dir = std::env::temp_dir().join(format!("qalqan-route-attack-{}", std::process::id()));
    let extra = format!(
        "[[route]]\nname = \"search\"\npath_prefix = [\"/search\"]\nrate_per_address = 100000\nrate_per_prefix = 0\nchallenge = \"attack\"\n\
         [[route]]\nname = \"default\"\nrate_per_address = 100000\nrate_per_prefix = 0\n\
         [attack]\nwarmup = \"4s\"\nenter_after = \"1s\"\ncooldown = \"60s\"\nfloor_rps = 1.0\nepisodes_path = \"{}\"\n",
        dir.join("episodes.jsonl").display()
    );
    std::fs::create_dir_all(&dir).unwrap();
    let sh = shield_apart(&origin, &extra).await;
    let (addr, admin) = (sh.listen[0], sh.admin.expect("admin listener"));
    let mut reader = KeepAlive::open(lo(3), addr).await;
    // Articles at about 150 a second for six seconds: the site's baseline, learned during the
    // four-second warm-up and after.
    let paced = |n: u32| async move {
        tokio::time::sleep(std::time::Duration::from_millis(u64::from(n))).await;
    };
    for i in 0..900u32 {
        assert_eq!(reader.get(&format!("/a{}", i % 50), &[]).await.status, 200);
        if i % 15 == 0 {
            paced(100).await;
        }
    }
    // Then as many searches as articles, for up to eight seconds, until the class turns: twice
    // the site's baseline (under its elevated factor of 4), a hundred times the search class's.
    let mut flood = KeepAlive::open(lo(4), addr).await;
    let mut turned = false;
    for i in 0..1200u32 {
        let _ = flood.get(&format!("/search?q=w{i}"), &[]).await;
        assert_eq!(reader.get(&format!("/a{}", i % 50), &[]).await.status, 200);
        if i % 15 == 0 {
            paced(100).await;
        }
        if i % 30 == 0 {
            let v: serde_json::Value =
                serde_json::from_slice(&get(admin, "/mode", &[]).await.body).unwrap();
            if v["routes"]["search"]["mode"] == "under_attack" {
                assert_eq!(v["mode"], "normal", "the site as a whole stays calm: {v}");
                turned = true;
                break;
            }
        }
    }
    assert!(turned, "the search class never went under attack");
    let s = get(addr, "/search?q=reader", &[]).await;
    assert_eq!(s.header("x-qalqan-decision"), Some("challenge"));
    let a = get(addr, "/a1", &[]).await;
    assert_eq!(a.status, 200, "articles are not challenged");
    assert_eq!(mode(admin).await, "normal");
    let m = get(admin, "/metrics", &[]).await.text();
    assert!(
        m.contains("qalqan_shield_route_mode{route=\"search\"} 2"),
        "{m}"
    );
    assert!(m.contains("qalqan_shield_route_mode{route=\"default\"} 0"));
    let _ = std::fs::remove_dir_all(&dir);
}
