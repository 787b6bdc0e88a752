//! Field lookups in a request's header map, by a scan when the map is small. Most requests a
//! flood sends carry a handful of fields (so do a benchmark's), and the request path looks up
//! about ten names in each: comparing a name with a few (one byte for a standard name) costs less
//! than hashing it and probing the map, which `HeaderMap::get` does for every lookup.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Maps with at most this many values are scanned.
const SMALL: usize = 6;

/// The values of `name` in `h`, in order (as `HeaderMap::get_all`).
pub(crate) fn values<'a, 'n>(h: &'a HeaderMap, name: &'n HeaderName) -> Values<'a, 'n> {
    if h.len() <= SMALL {
        Values::Scan(h.iter(), name)
    } else {
        Values::All(h.get_all(name).iter())
    }
}

/// The first value of `name` in `h` (as `HeaderMap::get`).
pub(crate) fn first<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if h.len() <= SMALL {
        h.iter().find_map(|(k, v)| (k == name).then_some(v))
    } else {
        h.get(name)
    }
}

/// Whether `h` has a field `name` (as `HeaderMap::contains_key`).
pub(crate) fn has(h: &HeaderMap, name: &HeaderName) -> bool {
    first(h, name).is_some()
}

/// See [`values`].
pub(crate) enum Values<'a, 'n> {
    Scan(http::header::Iter<'a, HeaderValue>, &'n HeaderName),
    All(http::header::ValueIter<'a, HeaderValue>),
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a HeaderValue;

    fn next(&mut self) -> Option<&'a HeaderValue> {
        match self {
            Values::Scan(it, name) => it.find_map(|(k, v)| (k == *name).then_some(v)),
            Values::All(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the map, the scan finds what the map's own lookups find, in the same order.
        #[test]
        fn the_scan_finds_what_the_map_finds(
            fields in proptest::collection::vec((0usize..5, 0u8..10), 0..12),
        ) {
            let names = [
                header::HOST,
                header::USER_AGENT,
                header::COOKIE,
                HeaderName::from_static("x-forwarded-for"),
                HeaderName::from_static("x-other"),
            ];
            let mut h = HeaderMap::new();
            for (n, v) in &fields {
                h.append(names[*n].clone(), HeaderValue::from(u16::from(*v)));
            }
            for n in &names {
                let ours: Vec<&HeaderValue> = values(&h, n).collect();
                let theirs: Vec<&HeaderValue> = h.get_all(n).iter().collect();
                prop_assert_eq!(&ours, &theirs);
                prop_assert_eq!(first(&h, n), h.get(n));
                prop_assert_eq!(has(&h, n), h.contains_key(n));
            }
        }
    }
}
