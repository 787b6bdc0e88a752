//! Small self-contained pages the shield answers with itself: no external resources, a few hundred
//! bytes, readable on a slow phone, in Russian, Kazakh and English at once (the shield does not
//! know the reader's language when the origin is down, so it shows all three, shortest first).

use std::cell::RefCell;
use std::sync::Mutex;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use crate::body::{Body, Fixed, FixedHead, full};

/// The shield's own response headers, named once (a `&str` name is parsed on every use).
pub static X_QALQAN_DECISION: HeaderName = HeaderName::from_static("x-qalqan-decision");
pub static X_QALQAN_REASON: HeaderName = HeaderName::from_static("x-qalqan-reason");
pub static X_QALQAN_CACHE: HeaderName = HeaderName::from_static("x-qalqan-cache");

/// Most distinct pages (status, decision, wait) kept for the life of the process. The shield
/// makes about a dozen, all from constants; past this one is built for each answer instead.
const PAGES: usize = 32;

/// Builds a shield-made page with `Cache-Control: no-store` and the decision header. Each
/// distinct page is rendered once, body and head, and kept for the life of the process (see
/// [`FixedHead`]), so the answer to each request of a flood allocates nothing and builds no
/// header map.
pub fn page(
    status: StatusCode,
    decision: &'static str,
    retry_after: Option<u64>,
) -> Response<Body> {
    let body = match fixed_page(status, decision, retry_after) {
        Some(f) => Body::fixed(f),
        None => {
            let f = render_page(status, decision, retry_after);
            let mut resp = Response::new(full(f.body));
            *resp.status_mut() = status;
            if let Some(h) = f.head {
                *resp.headers_mut() = h.fields;
            }
            return resp;
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}

/// The head every shield-made HTML page carries: HTML, never to be stored, and the decision,
/// with room for `more` fields.
pub fn shield_head(decision: &'static str, more: usize) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(3 + more);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        X_QALQAN_DECISION.clone(),
        HeaderValue::from_static(decision),
    );
    h
}

type PageKey = (StatusCode, &'static str, Option<u64>);

thread_local! {
    /// This thread's view of `ALL`, read without a lock.
    static SEEN: RefCell<Vec<(PageKey, &'static Fixed)>> = const { RefCell::new(Vec::new()) };
}

/// The page for `key`, rendered the first time it is asked for; `None` once `PAGES` are kept.
fn fixed_page(
    status: StatusCode,
    decision: &'static str,
    retry_after: Option<u64>,
) -> Option<&'static Fixed> {
    static ALL: Mutex<Vec<(PageKey, &'static Fixed)>> = Mutex::new(Vec::new());
    let key = (status, decision, retry_after);
    SEEN.with(|seen| {
        if let Ok(seen) = seen.try_borrow()
            && let Some((_, f)) = seen.iter().find(|(k, _)| *k == key)
        {
            return Some(*f);
        }
        let f = {
            let mut all = ALL.lock().unwrap_or_else(|e| e.into_inner());
            match all.iter().find(|(k, _)| *k == key) {
                Some((_, f)) => *f,
                None if all.len() < PAGES => {
                    // Kept for the life of the process, like the page set itself (bounded).
                    let f: &'static Fixed =
                        Box::leak(Box::new(render_page(status, decision, retry_after)));
                    all.push((key, f));
                    f
                }
                None => return None,
            }
        };
        if let Ok(mut seen) = seen.try_borrow_mut()
            && seen.len() < PAGES
        {
            seen.push((key, f));
        }
        Some(f)
    })
}

fn render_page(status: StatusCode, decision: &'static str, retry_after: Option<u64>) -> Fixed {
    let mut fields = shield_head(decision, 1);
    if let Some(s) = retry_after {
        fields.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    let mut encoded = Vec::new();
    for (name, value) in &fields {
        crate::h1::push_field(&mut encoded, name.as_str().as_bytes(), value.as_bytes());
    }
    Fixed {
        body: render(status),
        head: Some(FixedHead {
            fields,
            encoded: encoded.into_boxed_slice(),
        }),
    }
}

/// The 429 a cleared reader gets when its origin budget on a challenging route (search) is spent
/// during an attack: it says that search, not the reader, is being limited, and that articles
/// open as usual. Rendered once; the wait is in `Retry-After`.
pub fn origin_budget(retry_after: u64) -> Response<Body> {
    static RENDERED: std::sync::OnceLock<Fixed> = std::sync::OnceLock::new();
    let body = RENDERED.get_or_init(|| Fixed {
        body: html(
                429,
                "Сайт сейчас под атакой, и поиск временно ограничен: не больше нескольких новых \
                 запросов в минуту. Повторите поиск через минуту; статьи открываются как обычно.",
                "Сайтқа қазір шабуыл жасалып жатыр, сондықтан іздеу уақытша шектелген: минутына \
                 бірнеше жаңа сұраныс қана. Бір минуттан кейін қайта іздеңіз; мақалалар әдеттегідей \
                 ашылады.",
                "This site is under attack, so search is limited for now: a few new searches a \
                 minute. Please search again in a minute; articles open as usual.",
        ),
        head: None,
    });
    let mut resp = Response::new(Body::fixed(body));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = resp.headers_mut();
    *h = shield_head("limited", 2);
    h.insert(
        X_QALQAN_REASON.clone(),
        HeaderValue::from_static("origin-budget"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

fn render(status: StatusCode) -> Bytes {
    let (ru, kk, en) = match status {
        StatusCode::TOO_MANY_REQUESTS => (
            "Слишком много запросов. Подождите немного и обновите страницу.",
            "Сұраныстар тым көп. Біраз күтіп, бетті жаңартыңыз.",
            "Too many requests. Please wait a moment and reload.",
        ),
        StatusCode::FORBIDDEN => (
            "Доступ с этого адреса закрыт.",
            "Бұл мекенжайдан кіру жабық.",
            "Access from this address is blocked.",
        ),
        StatusCode::SERVICE_UNAVAILABLE => (
            "Сайт сейчас перегружен. Попробуйте через несколько секунд.",
            "Сайт қазір шамадан тыс жүктелген. Бірнеше секундтан кейін қайталаңыз.",
            "The site is busy right now. Please try again in a few seconds.",
        ),
        StatusCode::GATEWAY_TIMEOUT | StatusCode::BAD_GATEWAY => (
            "Сайт временно не отвечает. Попробуйте позже.",
            "Сайт уақытша жауап бермейді. Кейінірек қайталаңыз.",
            "The site is not answering right now. Please try again later.",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "Запрос слишком большой.",
            "Сұраныс тым үлкен.",
            "The request is too large.",
        ),
        _ => ("Ошибка запроса.", "Сұраныс қатесі.", "Bad request."),
    };
    html(status.as_u16(), ru, kk, en)
}

fn html(code: u16, ru: &str, kk: &str, en: &str) -> Bytes {
    let html = format!(
        "<!doctype html><html lang=\"ru\"><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{code}</title>\
<body style=\"font:16px/1.5 sans-serif;max-width:34em;margin:2em auto;padding:0 1em\">\
<h1 style=\"font-size:1.3em\">{code}</h1><p>{ru}</p><p lang=\"kk\">{kk}</p><p lang=\"en\">{en}</p></body></html>\n"
    );
    Bytes::from(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_small_and_marked() {
        for s in [429u16, 403, 503, 502, 504, 413, 400] {
            let st = StatusCode::from_u16(s).unwrap();
            let r = crate::body::for_hyper(page(st, "limited", Some(1)));
            assert_eq!(r.status(), st);
            assert!(r.headers().contains_key("x-qalqan-decision"));
            let len = http_body::Body::size_hint(r.body()).exact().unwrap();
            assert!(len < 2048, "{s}: {len} bytes");
        }
        let r = origin_budget(60);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "60");
        let len = http_body::Body::size_hint(r.body()).exact().unwrap();
        assert!(len < 2048, "budget page: {len} bytes");
    }
}
