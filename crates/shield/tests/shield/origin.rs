//! Origin protection under load: the adaptive concurrency limit against a real slow origin, the
//! per-clearance origin budget under attack, queued requests challenged when the mode turns
//! `under_attack`, and a full origin queue switching the mode at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::common::*;

/// A real origin with one worker, like a one-process PHP-FPM pool: requests are accepted at
/// once but worked on one at a time, `work` each; the rest wait inside the origin. Records, for
/// every request as it arrives, how many were already waiting inside.
struct OneWorker {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    waiting_at_arrival: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl OneWorker {
    async fn start(work: Duration) -> OneWorker {
        let sock = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let worker = Arc::new(Semaphore::new(1));
        let waiting = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let log: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
        let (w2, s2, l2) = (waiting.clone(), served.clone(), log.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = sock.accept().await else {
                    continue;
                };
                let (worker, waiting, served, log) =
                    (worker.clone(), w2.clone(), s2.clone(), l2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        let (worker, waiting, served, log) =
                            (worker.clone(), waiting.clone(), served.clone(), log.clone());
                        async move {
                            let before = waiting.fetch_add(1, Ordering::SeqCst);
                            log.lock().unwrap().push(before);
                            let slot = worker.acquire().await.unwrap();
                            waiting.fetch_sub(1, Ordering::SeqCst);
                            tokio::time::sleep(work).await;
                            drop(slot);
                            served.fetch_add(1, Ordering::SeqCst);
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                b"<ol class=\"results\"></ol>",
                            )));
                            r.headers_mut()
                                .insert("cache-control", "no-store".parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        OneWorker {
            addr,
            served,
            waiting_at_arrival: log,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_converges_on_a_one_worker_origin() {
    let origin = OneWorker::start(Duration::from_millis(15)).await;
    // max_in_flight 16 is only the ceiling; the queue is long and patient enough that every
    // request is served, so the test is about where the requests wait, not whether.
    let extra = r#"
[[route]]
name = "search"
path_prefix = ["/search"]
rate_per_address = 0
rate_per_prefix = 0
max_in_flight = 16
queue = 64
queue_timeout = "60s"
cache_ttl = "0s"
[[route]]
name = "default"
rate_per_address = 0
rate_per_prefix = 0
"#;
    let sh = shield_with_origin(&format!("http://{}", origin.addr), "", extra).await;
    let addr = sh.listen[0];
    let admin = sh.admin.expect("admin listener");
    let clients = 12;
    let each = 20;
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..each {
                if get(addr, &format!("/search?q=c{c}r{i}"), &[]).await.status == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, clients * each, "every request is served");
    assert_eq!(origin.served.load(Ordering::SeqCst), clients * each);
    let limit = metric(admin, "qalqan_shield_origin_limit{route=\"search\"}").await;
    assert!(
        (1.0..=3.0).contains(&limit),
        "one worker: the limit settles at 1 or 2 (3 while probing upward), not the ceiling of 16; got {limit}"
    );
    // With the fixed cap of 16, twelve clients would keep eleven requests waiting inside the
    // origin. Once learned, the queue stays in the shield: after the first requests (the slow
    // start that finds the limit) no request met more than two others waiting in the origin.
    let log = origin.waiting_at_arrival.lock().unwrap().clone();
    let late = &log[log.len() / 2..];
    let worst = late.iter().copied().max().unwrap_or(0);
    assert!(
        worst <= 2,
        "requests waiting inside the origin in the second half: at most {worst}"
    );
}

const UA_A: &str = "Mozilla/5.0 (reader A)";
const UA_B: &str = "Mozilla/5.0 (reader B)";

/// Solves the challenge page `page` for `ua` and returns the clearance cookie (`name=value`).
async fn clearance(addr: SocketAddr, page: &Got, ua: &str) -> String {
    clearance_as(addr, page, &[("user-agent", ua)]).await
}

/// [`clearance`] for a client named by `headers` (user agent, X-Forwarded-For).
async fn clearance_as(addr: SocketAddr, page: &Got, headers: &[(&str, &str)]) -> String {
    let html = page.text();
    let attr = |name: &str| {
        let start = html.find(&format!("{name}=\"")).expect("attribute") + name.len() + 2;
        let end = html[start..].find('"').expect("quote") + start;
        html[start..end].replace("&amp;", "&")
    };
    let token = attr("data-t");
    let bits: u8 = attr("data-d").parse().expect("difficulty");
    let counter = qalqan_challenge::solve(&token, bits, 1 << 24).expect("solvable");
    let ok = get(
        addr,
        &format!("/.qalqan/verify?t={token}&c={counter}&r=/"),
        headers,
    )
    .await;
    assert_eq!(ok.status, 303, "{}", ok.text());
    ok.header("set-cookie")
        .expect("a clearance cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

async fn mode(admin: SocketAddr) -> String {
    let g = get(admin, "/mode", &[]).await;
    let v: serde_json::Value = serde_json::from_slice(&g.body).expect("mode is JSON");
    v["mode"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_attack_a_cleared_client_over_its_search_budget_gets_429_another_is_served() {
    let origin = Origin::simple(Some("no-store")).await;
    let extra = r#"
[[route]]
name = "search"
path_prefix = ["/search"]
rate_per_address = 1000
rate_per_prefix = 10000
challenge = "attack"
attack_origin_budget = 3
attack_origin_budget_window = "10m"
[[route]]
name = "default"
rate_per_address = 1000
rate_per_prefix = 10000
[challenge]
difficulty = 8
"#;
    let sh = shield_apart(&origin, extra).await;
    let (addr, admin) = (sh.listen[0], sh.admin.expect("admin listener"));
    force_under_attack(admin).await;
    let page_a = get(addr, "/search?q=a0", &[("user-agent", UA_A)]).await;
    assert_eq!(page_a.header("x-qalqan-decision"), Some("challenge"));
    let cookie_a = clearance(addr, &page_a, UA_A).await;
    let page_b = get(addr, "/search?q=b0", &[("user-agent", UA_B)]).await;
    let cookie_b = clearance(addr, &page_b, UA_B).await;
    let a = [("user-agent", UA_A), ("cookie", cookie_a.as_str())];
    let b = [("user-agent", UA_B), ("cookie", cookie_b.as_str())];

    for i in 0..3 {
        let g = get(addr, &format!("/search?q=a-random-{i}"), &a).await;
        assert_eq!(g.status, 200, "search {i} is within the budget");
    }
    let before = origin.count("/search");
    let over = get(addr, "/search?q=a-random-3", &a).await;
    assert_eq!(over.status, 429, "the fourth uncached search in the window");
    assert_eq!(over.header("x-qalqan-reason"), Some("origin-budget"));
    assert_eq!(over.header("retry-after"), Some("600"));
    let text = over.text();
    assert!(text.contains("поиск временно ограничен") && text.contains("search is limited"));
    assert_eq!(
        origin.count("/search"),
        before,
        "it did not reach the origin"
    );

    let other = get(addr, "/search?q=b-random-0", &b).await;
    assert_eq!(other.status, 200, "another cleared reader is served");
    assert_eq!(origin.count("/search"), before + 1);
    // Articles are not counted against the search budget.
    assert_eq!(get(addr, "/article/1", &a).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_for_the_origin_get_the_challenge_when_the_attack_begins() {
    let origin = Origin::simple(Some("no-store")).await;
    origin.delay("/search?q=slow", Duration::from_secs(2));
    let extra = r#"
[[route]]
name = "search"
path_prefix = ["/search"]
rate_per_address = 1000
rate_per_prefix = 10000
challenge = "attack"
max_in_flight = 1
adaptive_concurrency = false
queue = 8
queue_timeout = "60s"
[[route]]
name = "default"
rate_per_address = 1000
rate_per_prefix = 10000
[challenge]
difficulty = 8
"#;
    let sh = shield_apart(&origin, extra).await;
    let (addr, admin) = (sh.listen[0], sh.admin.expect("admin listener"));
    // One search holds the only slot at the origin; three more wait in the shield's queue.
    let first = tokio::spawn(async move { get(addr, "/search?q=slow", &[UA_PAIR]).await.status });
    assert!(eventually(Duration::from_secs(10), || origin.count("/search") == 1).await);
    let mut queued = Vec::new();
    for i in 0..3 {
        queued.push(tokio::spawn(async move {
            get(addr, &format!("/search?q=queued{i}"), &[UA_PAIR]).await
        }));
    }
    let queue = "qalqan_shield_origin_queue{route=\"search\"}";
    let three_wait = eventually_async(Duration::from_secs(10), || async move {
        metric(admin, queue).await == 3.0
    })
    .await;
    assert!(three_wait, "three requests wait in the queue");
    force_under_attack(admin).await;
    for q in queued {
        let g = q.await.unwrap();
        assert_eq!(g.status, 403, "{}", g.text());
        assert_eq!(g.header("x-qalqan-decision"), Some("challenge"));
    }
    assert_eq!(
        first.await.unwrap(),
        200,
        "the request already at the origin finishes"
    );
    assert_eq!(
        origin.count("/search"),
        1,
        "the queued requests never reached the origin"
    );
}

const UA_PAIR: (&str, &str) = ("user-agent", "Mozilla/5.0 (test reader)");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_origin_queue_turns_the_mode_under_attack_at_once() {
    let origin = Origin::simple(Some("no-store")).await;
    origin.delay("/search", Duration::from_secs(3));
    // The default warm-up (30 s) keeps the request rate from raising the mode; only the
    // overflow can.
    let extra = r#"
[[route]]
name = "search"
path_prefix = ["/search"]
rate_per_address = 1000
rate_per_prefix = 10000
challenge = "attack"
max_in_flight = 1
adaptive_concurrency = false
queue = 1
queue_timeout = "60s"
[[route]]
name = "default"
rate_per_address = 1000
rate_per_prefix = 10000
[attack]
episodes_path = ""
"#;
    let sh = shield_apart(&origin, extra).await;
    let (addr, admin) = (sh.listen[0], sh.admin.expect("admin listener"));
    assert_eq!(mode(admin).await, "normal");
    let held: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(async move { get(addr, &format!("/search?q=h{i}"), &[UA_PAIR]).await })
        })
        .collect();
    let queue = "qalqan_shield_origin_queue{route=\"search\"}";
    let one_waits = eventually_async(Duration::from_secs(10), || async move {
        metric(admin, queue).await == 1.0
    })
    .await;
    assert!(one_waits, "one request waits in the queue");
    let shed = get(addr, "/search?q=third", &[UA_PAIR]).await;
    assert_eq!(shed.status, 503, "slot and queue are full");
    assert_eq!(mode(admin).await, "under_attack");
    let v: serde_json::Value =
        serde_json::from_slice(&get(admin, "/mode", &[]).await.body).unwrap();
    assert_eq!(v["last_transition"]["reason"]["kind"], "origin_queue_full");
    // The request that waited in the queue had no clearance: the attack answers it with the
    // challenge; the one at the origin finishes.
    let mut statuses: Vec<u16> = Vec::new();
    for h in held {
        statuses.push(h.await.unwrap().status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 403]);
}

/// A search route that challenges under attack, with a budget of five uncached searches per
/// clearance and a newcomers' pace of one per ten seconds; clients named by X-Forwarded-For.
const NEWCOMER_CONFIG: &str = r#"
[client]
trusted_proxies = ["127.0.0.0/8"]
[[route]]
name = "search"
path_prefix = ["/search"]
rate_per_address = 1000
rate_per_prefix = 10000
challenge = "attack"
attack_origin_budget = 5
attack_origin_budget_window = "10m"
attack_newcomer_rate = 0.1
[[route]]
name = "default"
rate_per_address = 1000
rate_per_prefix = 10000
[challenge]
difficulty = 8
"#;

/// Under attack, cleared clients from networks the site never heard from before share one pace
/// to the origin, while a reader from a network of the site's normal audience keeps its own
/// budget; right after a start (nothing learned yet) nobody is paced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_attack_newcomers_share_a_pace_and_familiar_readers_keep_their_budget() {
    let origin = Origin::simple(Some("no-store")).await;
    let sh = shield_apart(&origin, NEWCOMER_CONFIG).await;
    let (addr, admin) = (sh.listen[0], sh.admin.expect("admin listener"));
    // The site's normal audience: 400 article views from readers in 95.56.0.0/16.
    for i in 0..400u32 {
        let ip = format!("95.56.{}.{}", i % 250, 1 + i % 200);
        let g = get(addr, "/article/1", &[("x-forwarded-for", ip.as_str())]).await;
        assert_eq!(g.status, 200);
    }
    let m = get(admin, "/metrics", &[]).await.text();
    assert!(
        m.contains("qalqan_shield_familiar_networks 1\n"),
        "one familiar /16:\n{}",
        m.lines()
            .filter(|l| l.contains("familiar"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    force_under_attack(admin).await;

    let cleared = |ip: &'static str, ua: &'static str| async move {
        let h = [("user-agent", ua), ("x-forwarded-for", ip)];
        let page = get(addr, "/search?q=first", &h).await;
        assert_eq!(page.header("x-qalqan-decision"), Some("challenge"), "{ip}");
        clearance_as(addr, &page, &h).await
    };
    // A reader of the usual network, from an address it never used before the attack.
    let reader = cleared("95.56.251.7", UA_A).await;
    // Four bots, each from a network of its own that sent nothing before the attack.
    let mut bots = Vec::new();
    for (i, ip) in ["20.1.1.1", "31.2.2.2", "45.3.3.3", "77.4.4.4"]
        .iter()
        .enumerate()
    {
        bots.push((*ip, cleared(ip, UA_B).await, i));
    }

    let before = origin.count("/search");
    let mut served = 0;
    let mut paced = 0;
    for (ip, cookie, i) in &bots {
        let g = get(
            addr,
            &format!("/search?q=bot-{i}"),
            &[
                ("user-agent", UA_B),
                ("x-forwarded-for", ip),
                ("cookie", cookie.as_str()),
            ],
        )
        .await;
        match g.status.as_u16() {
            200 => served += 1,
            429 => {
                assert_eq!(g.header("x-qalqan-reason"), Some("origin-budget"));
                assert!(g.header("retry-after").is_some());
                paced += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        (served, paced),
        (1, 3),
        "a pace of 0.1/s lets one newcomer through"
    );
    assert_eq!(origin.count("/search"), before + 1);

    // The familiar reader is not held by the newcomers' pace: all five of its budget pass.
    let h = [
        ("user-agent", UA_A),
        ("x-forwarded-for", "95.56.251.7"),
        ("cookie", reader.as_str()),
    ];
    for i in 0..5 {
        let g = get(addr, &format!("/search?q=reader-{i}"), &h).await;
        assert_eq!(g.status, 200, "reader search {i}");
    }
    assert_eq!(
        get(addr, "/search?q=reader-5", &h).await.status,
        429,
        "then its own budget ends"
    );
    let m = get(admin, "/metrics", &[]).await.text();
    assert!(
        m.contains("qalqan_shield_newcomer_paced_total 3\n"),
        "{}",
        m.lines()
            .filter(|l| l.contains("newcomer"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Right after a start nothing is known about the audience, so nobody counts as a newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_learned_audience_nobody_is_paced() {
    let origin = Origin::simple(Some("no-store")).await;
    let sh = shield_apart(&origin, NEWCOMER_CONFIG).await;
    let (addr, admin) = (sh.listen[0], sh.admin.expect("admin listener"));
    force_under_attack(admin).await;
    for (i, ip) in ["20.1.1.1", "31.2.2.2", "45.3.3.3"].iter().enumerate() {
        let h = [("user-agent", UA_B), ("x-forwarded-for", *ip)];
        let page = get(addr, "/search?q=first", &h).await;
        let cookie = clearance_as(addr, &page, &h).await;
        let g = get(
            addr,
            &format!("/search?q=n-{i}"),
            &[
                ("user-agent", UA_B),
                ("x-forwarded-for", ip),
                ("cookie", cookie.as_str()),
            ],
        )
        .await;
        assert_eq!(g.status, 200, "{ip}");
    }
}
