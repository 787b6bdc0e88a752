//! Small self-contained pages the shield answers with itself: no external resources, a few hundred
//! bytes, readable on a slow phone, in Russian, Kazakh and English at once (the shield does not
//! know the reader's language when the origin is down, so it shows all three, shortest first).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full};

/// Statuses the shield answers with itself; their pages are rendered once.
const STATUSES: [StatusCode; 7] = [
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::FORBIDDEN,
    StatusCode::SERVICE_UNAVAILABLE,
    StatusCode::GATEWAY_TIMEOUT,
    StatusCode::BAD_GATEWAY,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::BAD_REQUEST,
];

/// Builds a shield-made page with `Cache-Control: no-store` and the decision header. The body is
/// rendered once per status and shared, so answering a flood with 429s allocates no HTML.
pub fn page(
    status: StatusCode,
    decision: &'static str,
    retry_after: Option<u64>,
) -> Response<Body> {
    static RENDERED: std::sync::OnceLock<Vec<(StatusCode, Bytes)>> = std::sync::OnceLock::new();
    let rendered = RENDERED.get_or_init(|| STATUSES.iter().map(|s| (*s, render(*s))).collect());
    let body = rendered
        .iter()
        .find(|(s, _)| *s == status)
        .map_or_else(|| render(status), |(_, b)| b.clone());
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-qalqan-decision", HeaderValue::from_static(decision));
    if let Some(s) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

/// The 429 a cleared reader gets when its origin budget on a challenging route (search) is spent
/// during an attack: it says that search, not the reader, is being limited, and that articles
/// open as usual. Rendered once; the wait is in `Retry-After`.
pub fn origin_budget(retry_after: u64) -> Response<Body> {
    static RENDERED: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    let body = RENDERED
        .get_or_init(|| {
            html(
                429,
                "Сайт сейчас под атакой, и поиск временно ограничен: не больше нескольких новых \
                 запросов в минуту. Повторите поиск через минуту; статьи открываются как обычно.",
                "Сайтқа қазір шабуыл жасалып жатыр, сондықтан іздеу уақытша шектелген: минутына \
                 бірнеше жаңа сұраныс қана. Бір минуттан кейін қайта іздеңіз; мақалалар әдеттегідей \
                 ашылады.",
                "This site is under attack, so search is limited for now: a few new searches a \
                 minute. Please search again in a minute; articles open as usual.",
            )
        })
        .clone();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-qalqan-decision", HeaderValue::from_static("limited"));
    h.insert("x-qalqan-reason", HeaderValue::from_static("origin-budget"));
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
            let r = page(st, "limited", Some(1));
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
