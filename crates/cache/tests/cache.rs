//! The crate's one integration-test binary: property tests of the cache key, and one story
//! that walks a response through policy, store and conditional requests.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use proptest::prelude::*;
use qalqan_cache::key::normalize_target;
use qalqan_cache::{
    CachedResponse, Decision, EntryState, KeyRules, RouteCacheRules, Store, accept_encoding_class,
    cache_key, decide, not_modified,
};

fn rules(fold: bool) -> KeyRules {
    KeyRules {
        fold_query_case: fold,
        ..KeyRules::default()
    }
}

fn key(pq: &str, fold: bool) -> Option<String> {
    cache_key(&Method::GET, "example.com", pq, None, &rules(fold))
}

/// Characters that make request targets interesting: every kind the normaliser treats
/// differently, a few that need UTF-8 and case folding, and some controls.
const TARGET_CHARS: &[char] = &[
    'a', 'B', 'z', '0', '7', 'f', 'F', '-', '.', '_', '~', '%', '+', '&', '=', '?', '#', '/', ';',
    ':', '@', '!', '$', ',', '*', ' ', '\t', '\n', '"', '<', 'é', 'Н', 'о', 'Σ', 'ς', 'İ', 'ß',
    '\u{a0}', '\u{0}', '😀',
];

fn target_text(allowed: &'static [char], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(allowed), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
}

fn target() -> impl Strategy<Value = String> {
    target_text(TARGET_CHARS, 60).prop_map(|rest| format!("/{rest}"))
}

/// Characters allowed in a query name or value as the tests build them: no `&`, `=` or `#`,
/// which would change the structure of the query.
const PARAM_CHARS: &[char] = &[
    'a', 'b', 'Q', '1', '%', '2', '0', 'f', '+', '-', '.', '_', '~', '/', '?', ',', ' ', 'é', 'Н',
    'ς', 'Σ', '\u{a0}',
];

fn param() -> impl Strategy<Value = (String, Option<String>)> {
    (
        target_text(PARAM_CHARS, 8),
        prop::option::of(target_text(PARAM_CHARS, 12)),
    )
}

fn query(params: &[(String, Option<String>)]) -> String {
    params
        .iter()
        .map(|(name, value)| match value {
            Some(value) => format!("{name}={value}"),
            None => name.clone(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_strings(
        method in prop::sample::select(vec![Method::GET, Method::HEAD, Method::POST]),
        host in any::<String>(),
        pq in any::<String>(),
        encoding in prop::option::of(any::<String>()),
        fold in any::<bool>(),
        drop in prop::collection::vec(any::<String>(), 0..4),
    ) {
        let custom = KeyRules { drop_params: drop, fold_query_case: fold };
        let _ = cache_key(&method, &host, &pq, encoding.as_deref(), &custom);
        let _ = cache_key(&method, "example.com", &pq, None, &rules(fold));
        let _ = cache_key(&method, &host, "/", None, &rules(fold));
    }

    #[test]
    fn never_panics_on_target_like_strings(pq in target(), fold in any::<bool>()) {
        let _ = key(&pq, fold);
    }

    #[test]
    fn accept_encoding_never_panics(value in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = accept_encoding_class(Some(&value));
    }

    #[test]
    fn normalising_is_idempotent(pq in target(), fold in any::<bool>()) {
        if let Some(once) = normalize_target(&pq, &rules(fold)) {
            prop_assert!(once.starts_with('/'));
            let twice = normalize_target(&once, &rules(fold));
            prop_assert_eq!(twice.as_deref(), Some(once.as_str()));
            prop_assert_eq!(key(&once, fold), key(&pq, fold));
        }
    }

    #[test]
    fn normalising_arbitrary_queries_is_idempotent(q in any::<String>(), fold in any::<bool>()) {
        let pq = format!("/s?q={q}");
        if let Some(once) = normalize_target(&pq, &rules(fold)) {
            let twice = normalize_target(&once, &rules(fold));
            prop_assert_eq!(twice.as_deref(), Some(once.as_str()));
        }
    }

    #[test]
    fn keys_are_printable_without_spaces(pq in target(), fold in any::<bool>()) {
        if let Some(k) = key(&pq, fold) {
            prop_assert!(k.bytes().all(|b| b.is_ascii_graphic()), "{:?}", k);
        }
    }

    #[test]
    fn parameter_order_is_irrelevant(
        (params, shuffled) in prop::collection::vec(param(), 0..8)
            .prop_flat_map(|params| (Just(params.clone()), Just(params).prop_shuffle())),
        fold in any::<bool>(),
    ) {
        let a = format!("/search?{}", query(&params));
        let b = format!("/search?{}", query(&shuffled));
        prop_assert_eq!(key(&a, fold), key(&b, fold));
    }

    #[test]
    fn utm_parameters_are_irrelevant(
        params in prop::collection::vec(param(), 0..6),
        suffix in "[A-Za-z_]{0,10}",
        prefix in prop::sample::select(vec!["utm_", "UTM_", "Utm_", "%75tm_", "utm%5F"]),
        value in prop::option::of(target_text(PARAM_CHARS, 10)),
        at in any::<prop::sample::Index>(),
        fold in any::<bool>(),
    ) {
        let base = format!("/story?{}", query(&params));
        let mut with_utm = params.clone();
        with_utm.insert(at.index(params.len() + 1), (format!("{prefix}{suffix}"), value));
        let tracked = format!("/story?{}", query(&with_utm));
        prop_assert_eq!(key(&base, fold), key(&tracked, fold));
    }

    #[test]
    fn plus_and_percent_20_are_equivalent(
        value in target_text(PARAM_CHARS, 20),
        replace in prop::collection::vec(any::<bool>(), 20),
        fold in any::<bool>(),
    ) {
        let mut plus_index = 0;
        let swapped: String = value
            .chars()
            .map(|c| {
                if c == '+' {
                    plus_index += 1;
                    if replace[plus_index % replace.len()] {
                        return "%20".to_owned();
                    }
                }
                c.to_string()
            })
            .collect();
        prop_assert_eq!(
            key(&format!("/search?q={value}"), fold),
            key(&format!("/search?q={swapped}"), fold)
        );
    }

    #[test]
    fn encoding_unreserved_characters_is_irrelevant(
        pq in target_text(
            &['a', 'Z', '0', '9', '-', '.', '_', '~', '/', '?', '&', '=', '+', ',', 'é', ' '],
            40,
        ),
        encode in prop::collection::vec(any::<bool>(), 40),
        lower_hex in any::<bool>(),
        fold in any::<bool>(),
    ) {
        let pq = format!("/{pq}");
        let encoded: String = pq
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let unreserved = c.is_ascii_alphanumeric() || "-._~".contains(c);
                if unreserved && encode[i % encode.len()] {
                    let escape = format!("%{:02X}", u32::from(c));
                    if lower_hex { escape.to_lowercase() } else { escape }
                } else {
                    c.to_string()
                }
            })
            .collect();
        prop_assert_eq!(key(&pq, fold), key(&encoded, fold));
    }

    #[test]
    fn hex_case_of_escapes_is_irrelevant(pq in target(), fold in any::<bool>()) {
        // Lowercase the hex digits of every valid escape; the key must not change.
        let chars: Vec<char> = pq.chars().collect();
        let mut lowered = String::with_capacity(pq.len());
        let mut i = 0;
        while i < chars.len() {
            let escape = chars[i] == '%'
                && chars.get(i + 1).is_some_and(char::is_ascii_hexdigit)
                && chars.get(i + 2).is_some_and(char::is_ascii_hexdigit);
            if escape {
                lowered.push('%');
                lowered.push(chars[i + 1].to_ascii_lowercase());
                lowered.push(chars[i + 2].to_ascii_lowercase());
                i += 3;
            } else {
                lowered.push(chars[i]);
                i += 1;
            }
        }
        prop_assert_eq!(key(&pq, fold), key(&lowered, fold));
    }

    #[test]
    fn folding_ignores_value_case_and_spacing(
        words in prop::collection::vec("[a-zA-Zа-яА-Я0-9]{1,6}", 1..4),
        spaces in prop::collection::vec(
            prop::sample::select(vec!["+", "%20", "++", "%09", "%C2%A0"]),
            4,
        ),
    ) {
        let plain = words.iter().map(|w| w.to_lowercase()).collect::<Vec<_>>().join("+");
        let mut messy = String::from(spaces[3]);
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                messy.push_str(spaces[i % 3]);
            }
            messy.push_str(&word.to_uppercase());
        }
        messy.push_str(spaces[0]);
        prop_assert_eq!(
            key(&format!("/search?q={plain}"), true),
            key(&format!("/search?q={messy}"), true)
        );
    }
}

/// The flood from the crate docs: many spellings of one search become one key.
#[test]
fn number_one_flood_spellings_share_a_key() {
    let rules = KeyRules {
        fold_query_case: true,
        ..KeyRules::default()
    };
    let spellings = [
        ("example.com", "/search?q=number+one"),
        ("EXAMPLE.COM:443", "/search?q=Number%20One&utm_source=tg"),
        ("example.com", "/%73earch?q=NUMBER++ONE+&fbclid=IwAR0"),
        ("example.com.", "/search?gclid=1&q=%6Eumber%20one#results"),
    ];
    let keys: Vec<_> = spellings
        .iter()
        .map(|(host, pq)| cache_key(&Method::GET, host, pq, Some("br"), &rules))
        .collect();
    assert!(keys[0].is_some());
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

/// One response, from the origin to a client's revalidation.
#[test]
fn response_story() {
    let route = RouteCacheRules {
        default_ttl: Some(Duration::from_secs(5)),
        stale_while_revalidate: Duration::from_secs(10),
        stale_if_error: Duration::from_secs(600),
        max_object_bytes: 1 << 20,
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=30"),
    );
    headers.insert("etag", HeaderValue::from_static("W/\"frontpage-42\""));
    headers.insert("content-type", HeaderValue::from_static("text/html"));
    headers.insert("connection", HeaderValue::from_static("keep-alive"));
    headers.insert("vary", HeaderValue::from_static("Accept-Encoding"));

    let Decision::Store(freshness) = decide(
        &Method::GET,
        false,
        StatusCode::OK,
        &headers,
        &route,
        SystemTime::now(),
    ) else {
        panic!("a public page with max-age must be stored");
    };
    assert_eq!(freshness.ttl, Duration::from_secs(30));

    let now = Instant::now();
    let response = Arc::new(CachedResponse::new(
        StatusCode::OK,
        headers,
        Bytes::from_static(b"<html>front page</html>"),
        &freshness,
        now,
    ));
    assert!(!response.headers.contains_key("connection"));

    let store = Store::new(1 << 20, 1 << 16);
    let key = cache_key(
        &Method::GET,
        "Example.com",
        "/",
        Some("br"),
        &KeyRules::default(),
    )
    .expect("the front page has a key");
    assert!(store.insert(key.clone(), response));

    let head_key = cache_key(
        &Method::HEAD,
        "example.com:443",
        "/?utm_medium=x",
        Some("br"),
        &KeyRules::default(),
    );
    let hit = store
        .get(head_key.as_deref().unwrap_or_default())
        .expect("a HEAD finds the GET entry");
    assert_eq!(hit.state(now), EntryState::Fresh);
    assert_eq!(hit.state(now + Duration::from_secs(35)), EntryState::Stale);
    assert_eq!(
        hit.state(now + Duration::from_secs(100)),
        EntryState::StaleIfError
    );

    let mut conditional = HeaderMap::new();
    conditional.insert(
        "if-none-match",
        HeaderValue::from_static("\"frontpage-41\", \"frontpage-42\""),
    );
    assert!(not_modified(&conditional, &hit));
}
