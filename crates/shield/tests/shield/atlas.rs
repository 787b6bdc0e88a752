//! Shield to atlas, end to end: a real atlas (SQLite in a temp dir, the real router on loopback)
//! takes the episodes a real shield pushes after a real flood sent through a trusted proxy. Also:
//! a dead atlas does not stop the shield serving and gets the episode once it is back; several
//! pushes of one episode make one incident; an https atlas (behind a TLS relay) works.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt as _;
use qalqan_atlas::model::Role;
use qalqan_atlas::store::{ListFilter, Sighting};
use qalqan_atlas::{Actor, Db};

use crate::common::*;

const FLOOD_UA: &str = "flood-bot/3.0";
const READER: &str = "198.51.100.77";
const READER_UA: &str = "Mozilla/5.0 (a reader)";

/// A fresh temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(what: &str) -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "qalqan-atlas-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real atlas database with one outlet and an ingest token for it.
struct Registry {
    db: Db,
    token: String,
    viewer: Actor,
    _dir: Dir,
}

impl Registry {
    async fn new() -> Registry {
        let dir = Dir::new("db");
        let db = Db::connect(&format!("sqlite://{}/a.db", dir.0.display()))
            .await
            .expect("atlas database");
        let outlet = db
            .create_outlet("kursiv", "Kursiv Media", "test")
            .await
            .expect("outlet");
        let token = db
            .create_token(None, outlet.id, "shield-1", Role::Ingest)
            .await
            .expect("ingest token");
        Registry {
            db,
            token,
            viewer: Actor {
                outlet_id: outlet.id,
                role: Role::Viewer,
                label: "user:test@kursiv".into(),
                user_id: None,
            },
            _dir: dir,
        }
    }

    /// Serves the atlas on `listener` until the returned sender is dropped.
    fn serve(&self, listener: tokio::net::TcpListener) -> tokio::sync::oneshot::Sender<()> {
        let app = qalqan_atlas::app(Arc::new(qalqan_atlas::Atlas::new(self.db.clone(), false)));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
        });
        tx
    }

    /// Incidents the outlet sees: (id, kind).
    async fn incidents(&self) -> Vec<(String, String)> {
        self.db
            .incidents(&self.viewer, &ListFilter::default())
            .await
            .expect("incident list")
            .items
            .into_iter()
            .map(|i| (i.id, i.kind))
            .collect()
    }

    async fn sightings(&self, id: &str) -> Vec<Sighting> {
        self.db
            .incident_sightings(&self.viewer, id)
            .await
            .expect("sightings")
    }

    /// Waits until there is an incident whose episode has ended; returns its id.
    async fn ended_incident(&self, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            for (id, _) in self.incidents().await {
                let i = self.db.incident(&self.viewer, &id).await.expect("incident");
                if i.ended_at.is_some() {
                    return Some(id);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The shield's configuration: the loopback peer may name clients, limits are out of the way so
/// every request counts, and `[atlas]` points at `url`.
fn shield_config(episodes: &Path, url: &str, token: &str, atlas_extra: &str) -> String {
    format!(
        "[client]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
[[route]]\nname = \"default\"\nrate_per_address = 0\nrate_per_prefix = 0\n\
[attack]\nepisodes_path = \"{}\"\n[geo]\nenabled = false\n\
[atlas]\nurl = \"{url}\"\ntoken = \"{token}\"\nsite = \"https://kursiv.example\"\nnode = \"test-node\"\nmin_share = 0.05\n{atlas_extra}\n",
        episodes.display()
    )
}

async fn set_mode(admin: SocketAddr, query: &str) {
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

/// The flooding addresses: eight in one /24.
fn flood_addrs() -> Vec<String> {
    (1..=8).map(|i| format!("203.0.113.{i}")).collect()
}

/// `per_address` search requests from each of the flooding addresses, one keep-alive client per address, all
/// through the trusted loopback peer. Returns how many were answered 200.
async fn flood(shield: SocketAddr, per_address: usize) -> usize {
    let mut tasks = Vec::new();
    for (t, a) in flood_addrs().into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut ok = 0;
            for _ in 0..per_address {
                let req = http::Request::builder()
                    .uri(format!("http://{shield}/search?q=number+one&t={t}"))
                    .header("x-forwarded-for", a.as_str())
                    .header("user-agent", FLOOD_UA)
                    .body(http_body_util::Full::new(Bytes::new()))
                    .unwrap();
                if let Ok(r) = c.request(req).await {
                    let status = r.status();
                    let _ = r.into_body().collect().await;
                    if status == 200 {
                        ok += 1;
                    }
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap_or(0);
    }
    ok
}

/// One reader reading an article `n` times; returns how many were answered 200.
async fn reader(shield: SocketAddr, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let g = get(
            shield,
            "/article",
            &[("x-forwarded-for", READER), ("user-agent", READER_UA)],
        )
        .await;
        if g.status == 200 {
            ok += 1;
        }
    }
    ok
}

fn find<'a>(s: &'a [Sighting], kind: &str, value: &str) -> Option<&'a Sighting> {
    s.iter().find(|x| x.kind == kind && x.value == value)
}

/// Checks what the atlas holds for the flood: every flooding address with a count near what it
/// sent (a request can miss the episode while the recorder's once-a-second tick holds it), its
/// /24, its user agent and search term; nothing of the reader.
fn assert_flood_sightings(s: &[Sighting], per_address: i64) {
    for a in flood_addrs() {
        let x = find(s, "ip", &a).unwrap_or_else(|| panic!("{a} missing in {s:?}"));
        assert!(
            (per_address * 9 / 10..=per_address).contains(&x.count),
            "{a}: {} requests recorded, {per_address} sent",
            x.count
        );
    }
    let net = find(s, "cidr", "203.0.113.0/24").expect("the flood's /24");
    assert!(net.count > per_address * 8 * 9 / 10 && net.count <= per_address * 8);
    assert!(find(s, "user_agent", FLOOD_UA).is_some(), "{s:?}");
    assert!(find(s, "text_pattern", "q=number one").is_some(), "{s:?}");
    for x in s {
        assert!(
            !x.value.contains("198.51.100") && x.value != READER_UA,
            "a reader's data reached the atlas: {x:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_becomes_one_incident_with_its_addresses_and_not_the_readers() {
    let reg = Registry::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _stop = reg.serve(listener);
    let origin = Origin::simple(Some("max-age=60")).await;
    let files = Dir::new("episodes");
    let episodes = files.0.join("e.jsonl");
    let sh = shield_apart(
        &origin,
        &shield_config(&episodes, &url, &reg.token, "send_while_open = \"0s\""),
    )
    .await;
    let admin = sh.admin.expect("admin listener");

    set_mode(admin, "set=under-attack&for=1h").await;
    // 8 x 150 flood requests and 25 from a reader: the reader passes the 20-request floor but
    // stays far below the 5 % share (62 of 1,225).
    let (flooded, read) = tokio::join!(flood(sh.listen[0], 150), reader(sh.listen[0], 25));
    assert_eq!(flooded, 1200, "every flood request was answered");
    assert_eq!(read, 25, "the reader was served during the attack");
    set_mode(admin, "set=auto").await;

    let id = reg
        .ended_incident(Duration::from_secs(15))
        .await
        .expect("the episode reached the atlas");
    let all = reg.incidents().await;
    assert_eq!(all.len(), 1, "one episode, one incident: {all:?}");
    assert_eq!(all[0].1, "http_flood");
    let incident = reg.db.incident(&reg.viewer, &id).await.unwrap();
    let requests = incident.impact.requests.unwrap_or(0);
    assert!(
        (1_100..=1_225).contains(&requests),
        "the incident counts {requests} requests of 1,225"
    );
    assert!(
        incident
            .targets
            .iter()
            .any(|t| t.value == "https://kursiv.example"),
        "{:?}",
        incident.targets
    );
    assert_eq!(incident.source, "shield");
    let s = reg.sightings(&id).await;
    assert_flood_sightings(&s, 150);

    // The local record holds the reader (it is the outlet's own evidence); the atlas does not.
    let local = std::fs::read_to_string(&episodes).expect("the episode file");
    assert!(
        local.contains(READER),
        "the local episode keeps every heavy hitter"
    );
    assert_eq!(
        metric(admin, "qalqan_shield_atlas_push_total{result=\"ok\"}").await,
        1.0
    );
    assert_eq!(metric(admin, "qalqan_shield_atlas_queue_length").await, 0.0);
    for r in ["retry", "dropped", "rejected"] {
        assert_eq!(
            metric(
                admin,
                &format!("qalqan_shield_atlas_push_total{{result=\"{r}\"}}")
            )
            .await,
            0.0,
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_atlas_does_not_stop_the_site_and_gets_the_episode_when_it_is_back() {
    let reg = Registry::new().await;
    // A port nobody listens on yet: the atlas is down.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let origin = Origin::simple(Some("max-age=60")).await;
    let files = Dir::new("episodes");
    let sh = shield_apart(
        &origin,
        &shield_config(
            &files.0.join("e.jsonl"),
            &format!("http://{addr}"),
            &reg.token,
            "send_while_open = \"1s\"",
        ),
    )
    .await;
    let admin = sh.admin.expect("admin listener");
    let retries = "qalqan_shield_atlas_push_total{result=\"retry\"}";

    set_mode(admin, "set=under-attack&for=1h").await;
    let (flooded, read) = tokio::join!(flood(sh.listen[0], 100), reader(sh.listen[0], 10));
    assert_eq!(flooded, 800);
    assert_eq!(read, 10);
    // The open episode is pushed every second and fails; the site keeps being served meanwhile.
    let mut failed = false;
    for _ in 0..100 {
        if metric(admin, retries).await >= 1.0 {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed, "no push was tried while the episode was open");
    assert_eq!(reader(sh.listen[0], 5).await, 5, "served while pushes fail");
    set_mode(admin, "set=auto").await;
    assert_eq!(reader(sh.listen[0], 5).await, 5, "served after the attack");
    // Every snapshot of the episode and its final form share one place in the queue.
    assert_eq!(metric(admin, "qalqan_shield_atlas_queue_length").await, 1.0);
    assert!(reg.incidents().await.is_empty());

    // The atlas comes up on that port; the next retry delivers the final episode.
    let listener = {
        let mut tries = 0;
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind {addr} again: {e}"),
            }
        }
    };
    let _stop = reg.serve(listener);
    let id = reg
        .ended_incident(Duration::from_secs(45))
        .await
        .expect("the queued episode reached the atlas once it was up");
    assert_eq!(reg.incidents().await.len(), 1);
    assert_flood_sightings(&reg.sightings(&id).await, 100);
    assert!(metric(admin, retries).await >= 1.0);
    assert_eq!(metric(admin, "qalqan_shield_atlas_queue_length").await, 0.0);
    assert_eq!(
        metric(admin, "qalqan_shield_atlas_push_total{result=\"dropped\"}").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_one_episode_several_times_makes_one_incident_with_totals() {
    let reg = Registry::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _stop = reg.serve(listener);
    let origin = Origin::simple(Some("max-age=60")).await;
    let files = Dir::new("episodes");
    let sh = shield_apart(
        &origin,
        &shield_config(
            &files.0.join("e.jsonl"),
            &url,
            &reg.token,
            "send_while_open = \"1s\"",
        ),
    )
    .await;
    let admin = sh.admin.expect("admin listener");
    let ok = "qalqan_shield_atlas_push_total{result=\"ok\"}";

    set_mode(admin, "set=under-attack&for=1h").await;
    // Two waves with a push of the open episode after each, then the final push.
    for (wave, want) in [(1, 1.0), (2, 2.0)] {
        assert_eq!(flood(sh.listen[0], 60).await, 480, "wave {wave}");
        let mut pushed = false;
        for _ in 0..100 {
            if metric(admin, ok).await >= want {
                pushed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(pushed, "the open episode was not pushed after wave {wave}");
    }
    let while_open = reg.incidents().await;
    assert_eq!(while_open.len(), 1, "{while_open:?}");
    let open = reg
        .db
        .incident(&reg.viewer, &while_open[0].0)
        .await
        .unwrap();
    assert!(open.ended_at.is_none(), "still open in the atlas");
    set_mode(admin, "set=auto").await;

    let id = reg
        .ended_incident(Duration::from_secs(15))
        .await
        .expect("the final push arrived");
    let all = reg.incidents().await;
    assert_eq!(
        all.len(),
        1,
        "pushes of one episode update one incident: {all:?}"
    );
    assert_eq!(all[0].0, id);
    // Counts are the episode's totals, replaced on each push, never added up across pushes.
    assert_flood_sightings(&reg.sightings(&id).await, 120);
    assert!(metric(admin, ok).await >= 3.0);
    assert_eq!(metric(admin, "qalqan_shield_atlas_queue_length").await, 0.0);
}

/// A TLS relay for `target` with a self-signed certificate for `localhost`: the atlas itself
/// speaks plain HTTP, as it does behind a reverse proxy in production.
struct TlsRelay {
    addr: SocketAddr,
    ca: PathBuf,
    _dir: Dir,
}

async fn tls_relay(target: SocketAddr) -> TlsRelay {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = Dir::new("tls");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(ck.signing_key.serialize_pem().as_bytes()).unwrap();
    let cert = CertificateDer::from_pem_slice(ck.cert.pem().as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let sock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = sock.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    TlsRelay {
        addr,
        ca,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_atlas_is_reached_with_the_configured_ca() {
    let reg = Registry::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = listener.local_addr().unwrap();
    let _stop = reg.serve(listener);
    let relay = tls_relay(plain).await;
    let origin = Origin::simple(Some("max-age=60")).await;
    let files = Dir::new("episodes");
    let url = format!("https://localhost:{}", relay.addr.port());
    let sh = shield_apart(
        &origin,
        &shield_config(
            &files.0.join("e.jsonl"),
            &url,
            &reg.token,
            &format!(
                "send_while_open = \"0s\"\nca_file = \"{}\"",
                relay.ca.display()
            ),
        ),
    )
    .await;
    let admin = sh.admin.expect("admin listener");
    set_mode(admin, "set=under-attack&for=1h").await;
    assert_eq!(flood(sh.listen[0], 30).await, 240);
    set_mode(admin, "set=auto").await;
    let id = reg
        .ended_incident(Duration::from_secs(15))
        .await
        .expect("the episode reached the atlas over TLS");
    let s = reg.sightings(&id).await;
    assert!(find(&s, "ip", "203.0.113.1").is_some(), "{s:?}");

    // Without the relay's CA the handshake fails: the episode waits in the queue, not sent in
    // clear and not dropped.
    let sh2 = shield_apart(
        &origin,
        &shield_config(
            &files.0.join("e2.jsonl"),
            &url,
            &reg.token,
            "send_while_open = \"0s\"",
        ),
    )
    .await;
    let admin2 = sh2.admin.expect("admin listener");
    set_mode(admin2, "set=under-attack&for=1h").await;
    assert_eq!(flood(sh2.listen[0], 30).await, 240);
    set_mode(admin2, "set=auto").await;
    let mut retried = false;
    for _ in 0..100 {
        if metric(admin2, "qalqan_shield_atlas_push_total{result=\"retry\"}").await >= 1.0 {
            retried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(retried, "an untrusted certificate is a failed push");
    assert_eq!(
        metric(admin2, "qalqan_shield_atlas_queue_length").await,
        1.0
    );
    assert_eq!(reg.incidents().await.len(), 1);
}
