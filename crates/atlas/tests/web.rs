//! The dashboard over a real socket: the real service (`qalqan_atlas::app`) on 127.0.0.1 port 0,
//! SQLite in a temporary directory, and a small HTTP/1.1 client on a plain TCP stream, so every
//! byte a browser would get is what the test reads.

use std::net::SocketAddr;
use std::sync::Arc;

use qalqan_atlas::model::Role;
use qalqan_atlas::store::IncidentIn;
use qalqan_atlas::{Actor, Atlas, Db};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "correct horse battery";

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A browser-like client: keeps cookies, speaks HTTP/1.1 with one request per connection.
struct Client {
    addr: SocketAddr,
    cookies: Vec<(String, String)>,
    accept_language: Option<String>,
    /// Sent as `Sec-Fetch-Site`, as a browser does.
    fetch_site: Option<&'static str>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            cookies: Vec::new(),
            accept_language: None,
            fetch_site: None,
        }
    }

    async fn send(&mut self, method: &str, path: &str, ctype: Option<&str>, body: &[u8]) -> Resp {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(c) = ctype {
            head.push_str(&format!("Content-Type: {c}\r\n"));
        }
        if let Some(f) = self.fetch_site {
            head.push_str(&format!("Sec-Fetch-Site: {f}\r\n"));
        }
        if let Some(l) = &self.accept_language {
            head.push_str(&format!("Accept-Language: {l}\r\n"));
        }
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            head.push_str(&format!("Cookie: {}\r\n", c.join("; ")));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("no end of head");
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut body = raw[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        if chunked {
            body = dechunk(&body);
        }
        for (k, v) in &headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                let pair = v.split(';').next().unwrap();
                let (name, val) = pair.split_once('=').unwrap();
                self.cookies.retain(|(n, _)| n != name);
                if !val.is_empty() && !v.contains("Max-Age=0") {
                    self.cookies.push((name.to_string(), val.to_string()));
                }
            }
        }
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, None, b"").await
    }

    async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            s.append_pair(k, v);
        }
        let body = s.finish();
        self.send(
            "POST",
            path,
            Some("application/x-www-form-urlencoded"),
            body.as_bytes(),
        )
        .await
    }

    async fn login(&mut self, email: &str) {
        let r = self
            .post_form("/login", &[("email", email), ("password", PASSWORD)])
            .await;
        assert_eq!(r.status, 303, "login of {email}: {}", r.body);
        assert_eq!(r.header("location"), Some("/"));
        assert!(self.cookies.iter().any(|(k, _)| k == "qalqan_session"));
    }

    /// The CSRF token from a page's forms.
    async fn csrf(&mut self) -> String {
        let r = self.get("/").await;
        assert_eq!(r.status, 200);
        csrf_of(&r.body)
    }
}

fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let i = html.find(marker).expect("a form with a CSRF field") + marker.len();
    html[i..].split('"').next().unwrap().to_string()
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 4 + n..];
    }
}

struct World {
    addr: SocketAddr,
    atlas: Arc<Atlas>,
    _dir: tempfile::TempDir,
}

/// Two outlets (kursiv with an admin, an editor and a viewer; vlast with an editor), served on
/// a real socket.
async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}/atlas.db", dir.path().display()))
        .await
        .unwrap();
    db.set_task_force("Тестовая группа").await.unwrap();
    let kursiv = db.create_outlet("kursiv", "Kursiv", "test").await.unwrap();
    let vlast = db.create_outlet("vlast", "Vlast.kz", "test").await.unwrap();
    for (outlet, email, role) in [
        (kursiv.id, "admin@kursiv.kz", Role::Admin),
        (kursiv.id, "editor@kursiv.kz", Role::Editor),
        (kursiv.id, "viewer@kursiv.kz", Role::Viewer),
        (vlast.id, "editor@vlast.kz", Role::Editor),
    ] {
        db.create_user(None, outlet, email, email, PASSWORD, role)
            .await
            .unwrap();
    }
    let atlas = Arc::new(Atlas::new(db, false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = qalqan_atlas::app(atlas.clone());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    World {
        addr,
        atlas,
        _dir: dir,
    }
}

async fn actor(w: &World, email: &str) -> Actor {
    let (_, _, a) = w.atlas.db.login(email, PASSWORD).await.unwrap();
    a
}

fn incident(title: &str, tlp: &str) -> IncidentIn {
    serde_json::from_value(serde_json::json!({
        "kind": "http_flood", "title": title, "tlp": tlp, "started_at": "2024-03-01T10:00:00Z",
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_speak_russian_by_default_and_switch_language() {
    let w = world().await;
    let mut c = Client::new(w.addr);

    // Not logged in: the list sends the browser to the login page.
    let r = c.get("/").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));

    let r = c.get("/login").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<html lang=\"ru\""), "{}", r.body);
    assert!(r.body.contains("Пароль") && r.body.contains("Вход"));
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(!r.body.contains("<script"), "the dashboard runs no script");

    // A browser that prefers English still gets Russian; Kazakh first gets Kazakh.
    c.accept_language = Some("en-US,en;q=0.9".into());
    assert!(c.get("/login").await.body.contains("<html lang=\"ru\""));
    c.accept_language = Some("kk-KZ,kk;q=0.9,ru;q=0.8".into());
    assert!(c.get("/login").await.body.contains("<html lang=\"kk\""));
    c.accept_language = None;

    // ?lang= switches and is remembered in a cookie.
    let r = c.get("/login?lang=kk").await;
    assert!(r.body.contains("<html lang=\"kk\""));
    assert!(r.body.contains("Құпиясөз"));
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with("lang=kk") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let r = c.get("/login").await;
    assert!(
        r.body.contains("<html lang=\"kk\""),
        "the cookie keeps Kazakh"
    );
    let r = c.get("/login?lang=en").await;
    assert!(r.body.contains("<html lang=\"en\"") && r.body.contains("Password"));
    // An unknown language changes nothing.
    let r = c.get("/login?lang=de").await;
    assert!(r.body.contains("<html lang=\"en\""));
    assert!(r.header("set-cookie").is_none());

    // Unknown routes: a 404 page in the current language.
    let r = c.get("/no/such/page").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("Page not found"));
    let r = c.get("/no/such/page?lang=ru").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("<html lang=\"ru\"") && r.body.contains("Страница не найдена"));

    // The language links keep the page and its query.
    c.login("editor@kursiv.kz").await;
    let r = c.get("/incidents/new?kind=bot_followers").await;
    assert!(
        r.body
            .contains("href=\"/incidents/new?kind=bot_followers&#38;lang=kk\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_explained_and_throttled() {
    let w = world().await;
    let mut c = Client::new(w.addr);
    let r = c
        .post_form(
            "/login",
            &[
                ("email", "editor@kursiv.kz"),
                ("password", "wrong password!"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Неверный e-mail или пароль"));
    assert!(
        r.body.contains("value=\"editor@kursiv.kz\""),
        "the e-mail is kept"
    );
    assert!(!c.cookies.iter().any(|(k, _)| k == "qalqan_session"));

    // A login form posted from another site is refused (login CSRF).
    let mut s = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    let body = format!(
        "email=editor%40kursiv.kz&password={}",
        PASSWORD.replace(' ', "+")
    );
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nOrigin: https://evil.example\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        w.addr,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");

    // Current browsers name the requesting site in Sec-Fetch-Site, whatever the referrer policy.
    let mut s = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    let req = req.replace("Origin: https://evil.example", "Sec-Fetch-Site: cross-site");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 403"), "{raw}");

    // A link followed from another site arrives without the SameSite=Strict session cookie: the
    // page reloads itself from our origin (no script) instead of asking to log in again.
    c.login("editor@kursiv.kz").await;
    let session = c.cookies.clone();
    c.cookies.clear();
    c.fetch_site = Some("cross-site");
    let r = c.get("/incidents/new?kind=phishing").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains("http-equiv=\"refresh\" content=\"0; url=/incidents/new?kind=phishing\""),
        "{}",
        r.body
    );
    c.fetch_site = Some("same-origin");
    assert_eq!(
        c.get("/incidents/new?kind=phishing").await.status,
        303,
        "really logged out"
    );
    c.cookies = session;
    assert_eq!(c.get("/incidents/new?kind=phishing").await.status, 200);
    c.fetch_site = None;

    // A crafted `//host` path cannot turn the language links into links to another site.
    let r = c.get("//evil.example/x").await;
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("href=\"//evil"), "{}", r.body);

    // After eight failures for one account, even the right password waits.
    for _ in 0..8 {
        c.post_form(
            "/login",
            &[
                ("email", "viewer@kursiv.kz"),
                ("password", "nope nope nope"),
            ],
        )
        .await;
    }
    let r = c
        .post_form(
            "/login",
            &[("email", "viewer@kursiv.kz"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(r.status, 429);
    assert!(r.body.contains("Слишком много"));

    // The right password for another account works, and logout needs the CSRF token.
    c.login("editor@kursiv.kz").await;
    let r = c.post_form("/logout", &[]).await;
    assert_eq!(r.status, 403);
    let csrf = c.csrf().await;
    let r = c.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
    assert_eq!(c.get("/").await.status, 303, "the session is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guided_form_files_an_incident() {
    let w = world().await;
    let mut c = Client::new(w.addr);
    c.login("editor@kursiv.kz").await;

    // Step 1: one big button per kind, in plain words.
    let r = c.get("/incidents/new").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("В наш Telegram-канал пришли боты"));
    assert!(
        r.body
            .contains("Наш Instagram заблокировали после массовых жалоб")
    );
    assert!(r.body.contains("name=\"kind\" value=\"bot_followers\""));

    // Step 2 adapts to the kind: a social kind asks for the account, a website kind for the URL.
    let r = c.get("/incidents/new?kind=bot_followers").await;
    assert!(r.body.contains("name=\"account\"") && r.body.contains("name=\"followers_added\""));
    assert!(!r.body.contains("name=\"downtime_minutes\""));
    assert!(
        r.body.contains("value=\"amber+strict\" checked"),
        "AMBER+STRICT by default"
    );
    assert!(r.body.contains("Только наша редакция"));
    assert!(
        r.body.contains("value=\"vlast\""),
        "other outlets can be named as recipients"
    );
    assert!(
        r.body.len() < 30 * 1024,
        "form page is {} bytes",
        r.body.len()
    );
    let r = c.get("/incidents/new?kind=http_flood").await;
    assert!(r.body.contains("name=\"url\"") && r.body.contains("name=\"downtime_minutes\""));
    let csrf = csrf_of(&r.body);

    // Errors come back next to their fields, with the values kept.
    let r = c
        .post_form(
            "/incidents/new",
            &[
                ("csrf", &csrf),
                ("kind", "bot_followers"),
                ("platform", "telegram"),
                ("account", ""),
                ("followers_added", "many"),
                ("started_date", "2024-13-40"),
                ("description", "Ночью пришло около 5000 ботов"),
                ("tlp", "amber+strict"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("id=\"account-err\""));
    assert!(
        r.body.contains("id=\"followers_added-err\"") && r.body.contains("Введите целое число")
    );
    assert!(r.body.contains("id=\"started_date-err\""));
    assert!(
        r.body.contains("Ночью пришло около 5000 ботов"),
        "values are kept"
    );
    assert!(r.body.contains("value=\"many\""));

    // TLP:RED without a recipient is refused by the form.
    let r = c
        .post_form(
            "/incidents/new",
            &[
                ("csrf", &csrf),
                ("kind", "http_flood"),
                ("url", "https://kursiv.media"),
                ("started_date", "2024-03-01"),
                ("tlp", "red"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("id=\"recipients-err\""));

    // A good submission creates the incident and shows it.
    let r = c
        .post_form(
            "/incidents/new",
            &[
                ("csrf", &csrf),
                ("kind", "bot_followers"),
                ("platform", "telegram"),
                ("account", "@kursivmedia"),
                ("followers_added", "5 000"),
                ("started_date", "2024-03-01"),
                ("started_time", "03:15"),
                ("description", "Ночью пришло около 5000 ботов"),
                ("tlp", "amber"),
                ("recipients", "vlast"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let location = r.header("location").unwrap().to_string();
    assert!(location.starts_with("/incidents/"));
    let r = c.get(&location).await;
    assert_eq!(r.status, 200);
    // No title given: one is made from the kind and the account.
    assert!(
        r.body
            .contains("Накрутка ботов-подписчиков: telegram @kursivmedia"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("2024-03-01 03:15"),
        "shown in Astana time as entered"
    );
    assert!(r.body.contains("5000"));
    assert!(r.body.contains("TLP:AMBER"));
    assert!(r.body.contains("editor@kursiv.kz"), "who created it");

    // It is listed, for this outlet and for the named recipient.
    let r = c.get("/").await;
    assert!(r.body.contains("telegram @kursivmedia"));
    assert!(
        r.body.len() < 30 * 1024,
        "list page is {} bytes",
        r.body.len()
    );
    let mut other = Client::new(w.addr);
    other.login("editor@vlast.kz").await;
    assert!(other.get("/").await.body.contains("telegram @kursivmedia"));
    // The recipient may read but not write: no forms for it.
    let r = other.get(&location).await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("/updates\""));

    // Filters: by kind and text, and a date range that leaves it out.
    assert!(
        c.get("/?kind=bot_followers&q=5000")
            .await
            .body
            .contains("kursivmedia")
    );
    assert!(
        !c.get("/?kind=http_flood")
            .await
            .body
            .contains("kursivmedia")
    );
    assert!(
        !c.get("/?from=2024-03-02")
            .await
            .body
            .contains("kursivmedia")
    );
    assert!(
        c.get("/?from=2024-03-01&to=2024-03-01")
            .await
            .body
            .contains("kursivmedia")
    );
    let r = c.get("/?from=yesterday").await;
    assert_eq!(r.status, 422);

    // An incident whose exact date is unknown is marked so in the list.
    let r = c
        .post_form(
            "/incidents/new",
            &[
                ("csrf", &csrf),
                ("kind", "mass_complaints"),
                ("platform", "instagram"),
                ("account", "kursiv.media"),
                ("started_date", ""),
                ("date_unknown", "1"),
                ("tlp", "amber+strict"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let list = c.get("/?kind=mass_complaints").await.body;
    assert!(list.contains("instagram kursiv.media") && list.contains("дата неизвестна"));

    // Timeline entry with a status change, an indicator, an attachment.
    let r = c
        .post_form(
            &format!("{location}/updates"),
            &[
                ("csrf", &csrf),
                ("body", "Написали в поддержку Telegram"),
                ("new_status", "verified"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let r = c
        .post_form(
            &format!("{location}/indicators"),
            &[
                ("csrf", &csrf),
                ("ind_kind", "ip"),
                ("ind_value", "1.2.3"),
                ("ind_count", "3"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("id=\"ind_value-err\""));
    let r = c
        .post_form(
            &format!("{location}/indicators"),
            &[
                ("csrf", &csrf),
                ("ind_kind", "social_account"),
                ("ind_value", "Telegram:@Bot123"),
                ("ind_count", "3"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);

    let boundary = "----qalqan-test-boundary";
    let upload = |csrf: &str, first_csrf: bool| {
        let csrf_part = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n"
        );
        let file_part = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"C:\\\\shots\\\\bots.txt\"\r\nContent-Type: text/plain\r\n\r\nbot list\r\n"
        );
        let mut b = if first_csrf {
            csrf_part + &file_part
        } else {
            file_part + &csrf_part
        };
        b.push_str(&format!("--{boundary}--\r\n"));
        b
    };
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let r = c
        .send(
            "POST",
            &format!("{location}/attachments"),
            Some(&ctype),
            upload(&csrf, false).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 403, "the CSRF field must come before the file");
    let r = c
        .send(
            "POST",
            &format!("{location}/attachments"),
            Some(&ctype),
            upload("wrong", true).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = c
        .send(
            "POST",
            &format!("{location}/attachments"),
            Some(&ctype),
            upload(&csrf, true).as_bytes(),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);

    let r = c.get(&location).await;
    assert!(
        r.body.len() < 30 * 1024,
        "incident page is {} bytes",
        r.body.len()
    );
    assert!(r.body.contains("Написали в поддержку Telegram") && r.body.contains("Подтверждено"));
    assert!(r.body.contains("telegram:bot123"));
    assert!(r.body.contains("bots.txt"));
    let i = r.body.find("/attachments/").unwrap();
    let href: String = r.body[..i].rsplit('"').next().unwrap().to_string()
        + r.body[i..].split('"').next().unwrap();
    let r = c.get(&href).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "bot list");
    assert!(
        r.header("content-disposition")
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_roles_and_tlp_are_enforced() {
    let w = world().await;
    let vlast = actor(&w, "editor@vlast.kz").await;
    let secret = w
        .atlas
        .db
        .create_incident(
            &vlast,
            &incident("Секретная атака на Vlast", "amber+strict"),
        )
        .await
        .unwrap();
    let shared = w
        .atlas
        .db
        .create_incident(&vlast, &incident("Общая атака на Vlast", "green"))
        .await
        .unwrap();

    let mut c = Client::new(w.addr);
    c.login("editor@kursiv.kz").await;
    let fields = [
        ("kind", "http_flood"),
        ("url", "https://kursiv.media"),
        ("started_date", "2024-03-01"),
        ("tlp", "amber+strict"),
    ];

    // No CSRF field, or a wrong one: 403 and nothing is created.
    let r = c.post_form("/incidents/new", &fields).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("Нет доступа"));
    let mut wrong = fields.to_vec();
    wrong.push(("csrf", "not-the-token"));
    assert_eq!(c.post_form("/incidents/new", &wrong).await.status, 403);

    // Another outlet's AMBER+STRICT incident is neither listed nor readable; GREEN is both.
    let r = c.get("/").await;
    assert!(!r.body.contains("Секретная атака"));
    assert!(r.body.contains("Общая атака на Vlast"));
    assert_eq!(
        c.get(&format!("/incidents/{}", secret.id)).await.status,
        404
    );
    let r = c.get(&format!("/incidents/{}", shared.id)).await;
    assert_eq!(r.status, 200);
    assert!(
        !r.body.contains("/indicators\" class"),
        "no forms on another outlet's incident"
    );
    // Writing to another outlet's incident is refused even with a valid token.
    let csrf = c.csrf().await;
    let r = c
        .post_form(
            &format!("/incidents/{}/updates", shared.id),
            &[("csrf", &csrf), ("body", "x")],
        )
        .await;
    assert_eq!(r.status, 403);
    let r = c
        .post_form(
            &format!("/incidents/{}/updates", secret.id),
            &[("csrf", &csrf), ("body", "x")],
        )
        .await;
    assert_eq!(r.status, 404);

    // XSS in a title is shown as text.
    let mut xss = fields.to_vec();
    xss.push(("csrf", &csrf));
    xss.push((
        "title",
        "<script>alert(1)</script><img src=x onerror=alert(2)>",
    ));
    let r = c.post_form("/incidents/new", &xss).await;
    assert_eq!(r.status, 303);
    let location = r.header("location").unwrap().to_string();
    for page in ["/", location.as_str()] {
        let body = c.get(page).await.body;
        // Askama escapes with numeric references.
        assert!(
            body.contains("&#60;script&#62;alert(1)&#60;/script&#62;&#60;img src=x"),
            "{page}"
        );
        assert!(
            !body.contains("<script") && !body.contains("<img"),
            "{page}"
        );
    }

    // A viewer reads but may not file: 403 on the form and on the POST with a valid token.
    let mut v = Client::new(w.addr);
    v.login("viewer@kursiv.kz").await;
    let r = v.get("/").await;
    assert!(r.body.contains("&#60;script&#62;"));
    assert!(!r.body.contains("href=\"/incidents/new\""));
    assert_eq!(v.get("/incidents/new").await.status, 403);
    let csrf = csrf_of(&r.body);
    let mut ok = fields.to_vec();
    ok.push(("csrf", &csrf));
    let r = v.post_form("/incidents/new", &ok).await;
    assert_eq!(r.status, 403);
    assert_eq!(v.get("/settings").await.status, 403);

    // Settings are for admins: sharing and members.
    assert_eq!(c.get("/settings").await.status, 403);
    let mut a = Client::new(w.addr);
    a.login("admin@kursiv.kz").await;
    let r = a.get("/settings").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("viewer@kursiv.kz"));
    let csrf = csrf_of(&r.body);
    let r = a
        .post_form(
            "/settings",
            &[
                ("csrf", &csrf),
                ("auto_tlp", "amber"),
                ("need_to_know", "vlast"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let r = a.get("/settings?saved=1").await;
    assert!(
        r.body
            .contains("name=\"need_to_know\" value=\"vlast\" checked")
    );
    assert!(r.body.contains("name=\"auto_tlp\" value=\"amber\" checked"));
    let r = a
        .post_form(
            "/settings/members",
            &[
                ("csrf", &csrf),
                ("email", "new@kursiv.kz"),
                ("name", "Новый"),
                ("password", "short"),
                ("role", "editor"),
            ],
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body.contains("id=\"password-err\""));
    assert!(r.body.contains("value=\"new@kursiv.kz\""), "values kept");
    assert!(
        !r.body.contains("value=\"short\""),
        "the password is never sent back"
    );
    let r = a
        .post_form(
            "/settings/members",
            &[
                ("csrf", &csrf),
                ("email", "new@kursiv.kz"),
                ("name", "Новый"),
                ("password", PASSWORD),
                ("role", "editor"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let mut n = Client::new(w.addr);
    n.login("new@kursiv.kz").await;
    let r = a
        .post_form(
            "/settings/members",
            &[
                ("csrf", &csrf),
                ("email", "new@kursiv.kz"),
                ("name", "Снова"),
                ("password", PASSWORD),
                ("role", "editor"),
            ],
        )
        .await;
    assert_eq!(r.status, 409);
    assert!(r.body.contains("Участник с таким e-mail уже есть"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_with_the_cursor_and_stays_small() {
    let w = world().await;
    let editor = actor(&w, "editor@kursiv.kz").await;
    for n in 0..35 {
        let title = format!("Атака номер {n:02} {}", "длинный заголовок ".repeat(6));
        w.atlas
            .db
            .create_incident(&editor, &incident(&title, "amber+strict"))
            .await
            .unwrap();
    }
    let mut c = Client::new(w.addr);
    c.login("viewer@kursiv.kz").await;
    let first = c.get("/?q=%D0%B0%D1%82%D0%B0%D0%BA%D0%B0").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body.matches("<tr><td>").count(), 30);
    assert!(first.body.len() < 30 * 1024, "{} bytes", first.body.len());
    // The next-page link keeps the filter and carries the store's cursor.
    let i = first.body.find("rel=\"next\"").expect("a next link");
    let href = first.body[..i].rsplit("href=\"").next().unwrap();
    let href = href.split('"').next().unwrap().replace("&#38;", "&");
    assert!(href.contains("q=") && href.contains("cursor="), "{href}");
    let second = c.get(&href).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body.matches("<tr><td>").count(), 5);
    assert!(!second.body.contains("rel=\"next\""));
    // Together the two pages hold all 35, each once.
    for n in 0..35 {
        let t = format!("Атака номер {n:02} ");
        let count = first.body.matches(&t).count() + second.body.matches(&t).count();
        assert_eq!(count, 1, "{t}");
    }
    // A forged cursor is an error on the page, not a crash.
    let r = c.get("/?cursor=abc").await;
    assert_eq!(r.status, 422);
}
