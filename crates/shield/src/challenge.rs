//! The proof-of-work challenge as the shield serves it: the page (self-contained, a few KB,
//! Russian, Kazakh or English by Accept-Language), its two ways through (JavaScript proof of
//! work in a Web Worker; a no-JavaScript path that only asks the reader to wait), the clearance
//! cookie, and the endpoints under `/.qalqan/` that check answers.
//!
//! Tokens are stateless and signed (`qalqan-challenge`); the only state is the bounded replay
//! guard. Failed and forged answers count as offences and escalate to a block like over-limit
//! requests do.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use qalqan_challenge::{Binding, Challenge, Clearance, Reject, ReplayGuard};

use crate::body::{Body, full};
use crate::config::{ChallengePolicy, Config};
use crate::metrics::Decision;
use crate::pages::X_QALQAN_REASON;

/// The clearance cookie's name.
pub const COOKIE: &str = "qalqan_clearance";
/// Where the shield's own endpoints live.
pub const PREFIX: &str = "/.qalqan/";
/// Scope byte of JavaScript proof-of-work challenges.
const SCOPE_POW: u8 = 0;
/// Scope byte of no-JavaScript (waiting) challenges.
const SCOPE_NOJS: u8 = 1;

/// Process-wide challenge state: the spent-nonce guard (fixed memory).
pub struct ChallengeState {
    /// Spent nonces.
    pub guard: ReplayGuard,
}

impl ChallengeState {
    /// A guard remembering nonces for the longest challenge lifetime allowed (10 minutes).
    pub fn new() -> Self {
        ChallengeState {
            guard: ReplayGuard::new(65_536, 600, unix_secs()),
        }
    }
}

impl Default for ChallengeState {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_secs() -> u64 {
    crate::server::unix_ms() / 1000
}

/// Whether this route challenges clients without clearance right now.
pub fn wanted(policy: ChallengePolicy, mode: qalqan_detect::Mode) -> bool {
    match policy {
        ChallengePolicy::Never => false,
        ChallengePolicy::Always => true,
        ChallengePolicy::Attack => mode == qalqan_detect::Mode::UnderAttack,
    }
}

/// The client's binding: its /24 or /48 and its user agent.
pub fn binding(client: IpAddr, headers: &HeaderMap) -> Binding {
    let ua = headers
        .get(header::USER_AGENT)
        .map_or(&b""[..], |v| v.as_bytes());
    Binding::new(client, ua)
}

/// A valid clearance from the request's cookie, if any.
pub fn clearance(cfg: &Config, headers: &HeaderMap, bind: &Binding) -> Option<Clearance> {
    for v in headers.get_all(header::COOKIE).iter().take(8) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';').take(64) {
            let (k, val) = pair.trim().split_once('=').unwrap_or(("", ""));
            if k == COOKIE
                && let Ok(c) =
                    qalqan_challenge::verify_clearance(&cfg.challenge.keys, val, bind, unix_secs())
            {
                return Some(c);
            }
        }
    }
    None
}

/// The language of the page: the first of ru, kk, en the reader accepts (Russian by default).
fn language(headers: &HeaderMap) -> &'static str {
    let al = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for part in al.split(',').take(16) {
        let tag = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        for l in ["kk", "ru", "en"] {
            if tag == l || tag.starts_with(&format!("{l}-")) {
                return l;
            }
        }
    }
    "ru"
}

/// Text of the page, by language.
struct Words {
    title: &'static str,
    what: &'static str,
    wait: &'static str,
    nojs: &'static str,
    stuck: &'static str,
}

fn words(lang: &str) -> Words {
    match lang {
        "kk" => Words {
            title: "Тексеру",
            what: "Сайтқа қазір шабуыл жасалып жатыр. Оқырмандарды боттардан ажырату үшін браузеріңіз бір секундтай шағын есеп шығарады.",
            wait: "Тексерілуде…",
            nojs: "JavaScript өшірулі болса, бірнеше секунд күтіңіз: бет өзі ашылады, немесе осы сілтемені басыңыз.",
            stuck: "Кіре алмасаңыз, бізге жазыңыз:",
        },
        "en" => Words {
            title: "Checking",
            what: "This site is under attack right now. To tell readers from bots, your browser solves a small puzzle that takes about a second.",
            wait: "Checking…",
            nojs: "Without JavaScript, wait a few seconds: the page opens by itself, or follow this link.",
            stuck: "If you cannot get through, write to us:",
        },
        _ => Words {
            title: "Проверка",
            what: "Сайт сейчас под атакой. Чтобы отличить читателей от ботов, ваш браузер решает небольшую задачу — около секунды.",
            wait: "Проверяем…",
            nojs: "Если JavaScript выключен, подождите несколько секунд: страница откроется сама, или перейдите по этой ссылке.",
            stuck: "Если не получается пройти, напишите нам:",
        },
    }
}

/// Escapes text for HTML (attributes and content).
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Decodes a percent-encoded query value (lossy on bad UTF-8).
fn dec(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |x: u8| (x as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Only same-site paths are followed after a challenge (no open redirect).
fn safe_return(r: &str) -> String {
    if r.starts_with('/') && !r.starts_with("//") && !r.starts_with("/\\") && r.len() <= 2048 {
        r.to_string()
    } else {
        "/".to_string()
    }
}

/// The SHA-256 proof of work, in a Web Worker. WebCrypto where the page is a secure context;
/// elsewhere (plain HTTP) a compact SHA-256 in JavaScript.
const SCRIPT: &str = r#"(function(){
var d=document.getElementById('q'),t=d.dataset.t,n=+d.dataset.d,r=d.dataset.r;
var w="var K=[1116352408,1899447441,3049323471,3921009573,961987163,1508970993,2453635748,2870763221,3624381080,310598401,607225278,1426881987,1925078388,2162078206,2614888103,3248222580,3835390401,4022224774,264347078,604807628,770255983,1249150122,1555081692,1996064986,2554220882,2821834349,2952996808,3210313671,3336571891,3584528711,113926993,338241895,666307205,773529912,1294757372,1396182291,1695183700,1986661051,2177026350,2456956037,2730485921,2820302411,3259730800,3345764771,3516065817,3600352804,4094571909,275423344,430227734,506948616,659060556,883997877,958139571,1322822218,1537002063,1747873779,1955562222,2024104815,2227730452,2361852424,2428436474,2756734187,3204031479,3329325298];"+
"function R(x,n){return(x>>>n)|(x<<(32-n))}"+
"function S(m){var l=m.length,p=new Uint8Array(((l+9+63)>>6)<<6);p.set(m);p[l]=128;var b=l*8;p[p.length-4]=b>>>24;p[p.length-3]=b>>>16;p[p.length-2]=b>>>8;p[p.length-1]=b;"+
"var h=[1779033703,3144134277,1013904242,2773480762,1359893119,2600822924,528734635,1541459225],W=new Array(64);"+
"for(var o=0;o<p.length;o+=64){for(var i=0;i<16;i++)W[i]=(p[o+4*i]<<24)|(p[o+4*i+1]<<16)|(p[o+4*i+2]<<8)|p[o+4*i+3];"+
"for(i=16;i<64;i++){var s0=R(W[i-15],7)^R(W[i-15],18)^(W[i-15]>>>3),s1=R(W[i-2],17)^R(W[i-2],19)^(W[i-2]>>>10);W[i]=(W[i-16]+s0+W[i-7]+s1)|0}"+
"var a=h[0],b2=h[1],c=h[2],e0=h[3],e=h[4],f=h[5],g=h[6],k=h[7];"+
"for(i=0;i<64;i++){var t1=(k+(R(e,6)^R(e,11)^R(e,25))+((e&f)^(~e&g))+K[i]+W[i])|0,t2=((R(a,2)^R(a,13)^R(a,22))+((a&b2)^(a&c)^(b2&c)))|0;k=g;g=f;f=e;e=(e0+t1)|0;e0=c;c=b2;b2=a;a=(t1+t2)|0}"+
"h[0]=(h[0]+a)|0;h[1]=(h[1]+b2)|0;h[2]=(h[2]+c)|0;h[3]=(h[3]+e0)|0;h[4]=(h[4]+e)|0;h[5]=(h[5]+f)|0;h[6]=(h[6]+g)|0;h[7]=(h[7]+k)|0}"+
"var out=new Uint8Array(32);for(i=0;i<8;i++){out[4*i]=h[i]>>>24;out[4*i+1]=h[i]>>>16;out[4*i+2]=h[i]>>>8;out[4*i+3]=h[i]}return out}"+
"function Z(h){var z=0;for(var i=0;i<h.length;i++){if(h[i]===0){z+=8;continue}z+=Math.clz32(h[i])-24;break}return z}"+
"onmessage=async function(ev){var t=ev.data.t,n=ev.data.n,E=new TextEncoder(),C=self.crypto&&self.crypto.subtle;"+
"for(var c=0;;c++){var m=E.encode(t+':'+c),h=C?new Uint8Array(await C.digest('SHA-256',m)):S(m);if(Z(h)>=n){postMessage(c);return}}}";
try{var wk=new Worker(URL.createObjectURL(new Blob([w],{type:'text/javascript'})));
wk.onmessage=function(e){location.replace('/.qalqan/verify?t='+t+'&c='+e.data+'&r='+encodeURIComponent(r))};
wk.postMessage({t:t,n:n})}catch(x){}
})();"#;

/// The challenge page for a request without clearance. `extra_bits` raises the configured
/// difficulty as the attack grows (answers are accepted down to the configured difficulty, so a
/// page issued a moment earlier still counts).
pub fn page(
    cfg: &Config,
    client: IpAddr,
    headers: &HeaderMap,
    return_to: &str,
    extra_bits: u8,
) -> Response<Body> {
    let c = &cfg.challenge;
    let bind = binding(client, headers);
    let now = unix_secs();
    let ttl = c.ttl.as_secs();
    let difficulty = c.difficulty.saturating_add(extra_bits).min(24);
    let pow = Challenge::new(nonce(), difficulty, SCOPE_POW, bind, now, ttl).sign(&c.keys);
    let nojs = Challenge::new(nonce(), 0, SCOPE_NOJS, bind, now, ttl).sign(&c.keys);
    let lang = language(headers);
    let w = words(lang);
    let ret = safe_return(return_to);
    let delay = c.nojs_delay.as_secs().max(1);
    let nojs_url = format!("/.qalqan/nojs?t={nojs}&r={}", enc(&ret));
    let contact = if c.contact.is_empty() {
        String::new()
    } else {
        format!("<p>{} {}</p>", w.stuck, esc(&c.contact))
    };
    let html = format!(
        "<!doctype html><html lang=\"{lang}\"><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\"><title>{title}</title>\
<noscript><meta http-equiv=\"refresh\" content=\"{delay};url={nojs_url_a}\"></noscript>\
<body style=\"font:16px/1.5 sans-serif;max-width:34em;margin:2em auto;padding:0 1em\">\
<h1 style=\"font-size:1.3em\">{title}</h1><p>{what}</p>\
<p id=\"q\" data-t=\"{pow}\" data-d=\"{diff}\" data-r=\"{ret_a}\">{wait}</p>\
<p><small><a href=\"{nojs_url_a}\">{nojs}</a></small></p>{contact}\
<script>{SCRIPT}</script></body></html>\n",
        title = w.title,
        what = w.what,
        wait = w.wait,
        nojs = w.nojs,
        diff = difficulty,
        nojs_url_a = esc(&nojs_url),
        ret_a = esc(&ret),
    );
    let mut r = Response::new(full(Bytes::from(html)));
    *r.status_mut() = StatusCode::FORBIDDEN;
    *r.headers_mut() = crate::pages::shield_head("challenge", 0);
    r
}

fn nonce() -> [u8; 16] {
    let b = crate::config::random_bytes();
    let mut n = [0u8; 16];
    n.copy_from_slice(&b[..16]);
    n
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').take(16).find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Answers `/.qalqan/verify` and `/.qalqan/nojs`. Returns the response, the decision, and
/// whether the attempt was suspicious (forged, replayed, no work): the caller counts those as
/// offences.
pub fn endpoint(
    cfg: &Config,
    state: &ChallengeState,
    client: IpAddr,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    tls: bool,
) -> (Response<Body>, Decision, bool) {
    let bind = binding(client, headers);
    let now = unix_secs();
    let c = &cfg.challenge;
    let token = query_param(query, "t").unwrap_or("");
    let ret = safe_return(&dec(query_param(query, "r").unwrap_or("/")));
    let result: Result<(), Reject> = match path {
        "/.qalqan/verify" => {
            let counter = query_param(query, "c")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(u64::MAX);
            qalqan_challenge::verify_solution(
                &c.keys,
                token,
                counter,
                &bind,
                now,
                c.difficulty,
                &state.guard,
            )
            .and_then(|v| {
                if v.challenge.scope == SCOPE_POW {
                    Ok(())
                } else {
                    Err(Reject::Malformed)
                }
            })
        }
        "/.qalqan/nojs" => {
            // Difficulty 0: the work is the wait. Check the wait before spending the nonce.
            match early(c, token, &bind, now) {
                Some(left) => {
                    return (
                        wait_page(left, &format!("/.qalqan/nojs?{query}")),
                        Decision::Challenge,
                        false,
                    );
                }
                None => qalqan_challenge::verify_solution(
                    &c.keys,
                    token,
                    0,
                    &bind,
                    now,
                    0,
                    &state.guard,
                )
                .and_then(|v| {
                    if v.challenge.scope == SCOPE_NOJS {
                        Ok(())
                    } else {
                        Err(Reject::Malformed)
                    }
                }),
            }
        }
        _ => Err(Reject::Malformed),
    };
    match result {
        Ok(()) => {
            let cookie = qalqan_challenge::issue_clearance(
                &c.keys,
                bind,
                nonce(),
                now,
                c.clearance_ttl.as_secs(),
            );
            let mut r = Response::new(crate::body::empty());
            *r.status_mut() = StatusCode::SEE_OTHER;
            let secure = if tls { "; Secure" } else { "" };
            let set = format!(
                "{COOKIE}={cookie}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                c.clearance_ttl.as_secs()
            );
            if let Ok(v) = HeaderValue::from_str(&set) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&ret) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            (r, Decision::Pass, false)
        }
        Err(e) => {
            tracing::debug!(reason = e.reason(), "challenge answer refused");
            let mut r = crate::pages::page(StatusCode::FORBIDDEN, "challenge", None);
            r.headers_mut().insert(
                X_QALQAN_REASON.clone(),
                HeaderValue::from_static(e.reason()),
            );
            (r, Decision::Challenge, e.is_suspicious())
        }
    }
}

/// Seconds still to wait on the no-JS path, if the token is otherwise well-formed and early.
fn early(c: &crate::config::Challenge, token: &str, bind: &Binding, now: u64) -> Option<u64> {
    // The signed expiry says when it was issued: expires - ttl.
    let guard = ReplayGuard::new(1, 600, now);
    let v = qalqan_challenge::verify_solution(&c.keys, token, 0, bind, now, 0, &guard).ok()?;
    let issued = v.challenge.expires_unix.saturating_sub(c.ttl.as_secs());
    let ready = issued.saturating_add(c.nojs_delay.as_secs());
    (now < ready).then(|| ready - now)
}

fn wait_page(secs: u64, again: &str) -> Response<Body> {
    let a = esc(again);
    let html = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{secs};url={a}\">\
<title>…</title><p>Подождите {secs} с. / {secs} с күтіңіз. / Please wait {secs} s. <a href=\"{a}\">→</a></p>\n"
    );
    let mut r = Response::new(full(Bytes::from(html)));
    *r.status_mut() = StatusCode::FORBIDDEN;
    *r.headers_mut() = crate::pages::shield_head("challenge", 0);
    r
}
