//! The registry's vocabulary: roles, TLP levels, statuses, indicator kinds, and the checks that
//! turn untrusted input into values the store accepts.
//!
//! Everything that comes from the network passes through here first. A value that fails a check
//! becomes a [`FieldError`] naming the field, so the API can answer 422 with field-level messages.

use std::net::IpAddr;

use serde::Serialize;

/// A problem with one input field, reported to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field's path in the request (`targets[1].value`).
    pub field: String,
    /// What is wrong, in plain English.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as stored and as written in the API.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Reads the stored or API form; anything else is `None`.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }

            /// The accepted values, for error messages.
            pub fn choices() -> String {
                [$($text),+].join(", ")
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// What a member of an outlet may do.
    Role {
        /// Reads what the outlet may see.
        Viewer = "viewer",
        /// Also files and edits incidents, indicators, attachments, publications.
        Editor = "editor",
        /// Also manages the outlet's members, tokens, sharing settings; reads its audit log.
        Admin = "admin",
        /// A shield's token: may only push episodes.
        Ingest = "ingest",
    }
}

impl Role {
    /// Whether this role may change incidents and the rest of the outlet's records.
    pub fn can_write(self) -> bool {
        matches!(self, Role::Editor | Role::Admin)
    }
    /// Whether this role may read the registry (ingest tokens may not).
    pub fn can_read(self) -> bool {
        !matches!(self, Role::Ingest)
    }
}

vocabulary! {
    /// Traffic Light Protocol 2.0, from the most open to the most closed.
    Tlp {
        /// Public: anyone, including public aggregates.
        Clear = "clear",
        /// The whole task force.
        Green = "green",
        /// The outlets the owner lists as need-to-know, and named recipients.
        Amber = "amber",
        /// The owning outlet only.
        AmberStrict = "amber+strict",
        /// The named recipient outlets only (and the owner).
        Red = "red",
    }
}

impl Tlp {
    /// The STIX 2.1 marking-definition id of this TLP 2.0 level (OASIS tlp-2.0 extension).
    pub fn stix_id(self) -> &'static str {
        match self {
            Tlp::Clear => "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
            Tlp::Green => "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
            Tlp::Amber => "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
            Tlp::AmberStrict => "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
            Tlp::Red => "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
        }
    }

    /// How closed the level is: higher shares with fewer.
    pub fn rank(self) -> u8 {
        match self {
            Tlp::Clear => 0,
            Tlp::Green => 1,
            Tlp::Amber => 2,
            Tlp::AmberStrict => 3,
            Tlp::Red => 4,
        }
    }

    /// The more closed of two levels.
    pub fn stricter(self, other: Tlp) -> Tlp {
        if self.rank() >= other.rank() {
            self
        } else {
            other
        }
    }
}

vocabulary! {
    /// Where an incident is in its life.
    Status {
        Reported = "reported",
        Verified = "verified",
        Closed = "closed",
    }
}

vocabulary! {
    /// How sure the outlet is that this was an attack.
    Confidence {
        Suspected = "suspected",
        Confirmed = "confirmed",
    }
}

vocabulary! {
    /// What an incident hit.
    TargetKind {
        Website = "website",
        Social = "social",
        Mail = "mail",
        Server = "server",
    }
}

vocabulary! {
    /// The kinds of observable the registry tracks.
    IndicatorKind {
        Ip = "ip",
        Cidr = "cidr",
        Asn = "asn",
        Domain = "domain",
        Url = "url",
        Email = "email",
        SocialAccount = "social_account",
        UserAgent = "user_agent",
        TextPattern = "text_pattern",
        FileSha256 = "file_sha256",
    }
}

/// Longest accepted free text (descriptions, update bodies).
pub const MAX_TEXT: usize = 20_000;
/// Longest accepted short string (titles, names, values).
pub const MAX_SHORT: usize = 500;

/// Checks a required short string: trimmed, not empty, bounded, no control characters.
pub fn short_text(field: &str, s: &str, errors: &mut Vec<FieldError>) -> String {
    let t = s.trim();
    if t.is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if t.chars().count() > MAX_SHORT {
        errors.push(FieldError::new(
            field,
            format!("at most {MAX_SHORT} characters"),
        ));
    } else if t.chars().any(|c| c.is_control()) {
        errors.push(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    t.to_string()
}

/// Checks free text: bounded, no control characters but line breaks and tabs.
pub fn long_text(field: &str, s: &str, errors: &mut Vec<FieldError>) -> String {
    if s.chars().count() > MAX_TEXT {
        errors.push(FieldError::new(
            field,
            format!("at most {MAX_TEXT} characters"),
        ));
    } else if s
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        errors.push(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    s.trim().to_string()
}

/// Parses one of a vocabulary's values, or records which values are allowed.
pub fn choice<T>(
    field: &str,
    s: &str,
    parse: fn(&str) -> Option<T>,
    choices: fn() -> String,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    let v = parse(s.trim());
    if v.is_none() {
        errors.push(FieldError::new(
            field,
            format!("must be one of: {}", choices()),
        ));
    }
    v
}

/// The one spelling of a URL that every way in (the API, feeds, STIX imports) stores, so that a
/// URL comes back from a partner's bundle to the row it left from: escapes that spell non-ASCII
/// UTF-8 characters are decoded (`%D0%BF` becomes `п`, readable for journalists), ASCII
/// characters that a STIX URI must escape are escaped (`\` becomes `%5C`, as
/// [`crate::stix::uri`] writes them), and every other escape keeps its meaning with upper-case
/// hex digits. `stix::uri` of the result, read back through this, gives the result again.
fn canonical_url(url: &str) -> String {
    let b = url.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let byte_at = |i: usize| -> Option<u8> {
        if b.get(i) != Some(&b'%') {
            return None;
        }
        Some((hex(*b.get(i + 1)?)? << 4) | hex(*b.get(i + 2)?)?)
    };
    let escape = |out: &mut String, x: u8| out.push_str(&format!("%{x:02X}"));
    let mut out = String::with_capacity(url.len());
    let mut i = 0;
    while i < b.len() {
        if let Some(x) = byte_at(i) {
            if x < 0x80 {
                escape(&mut out, x);
                i += 3;
                continue;
            }
            // A run of escaped bytes >= 0x80: its valid UTF-8 decoded, the rest kept escaped.
            let mut run = Vec::new();
            while let Some(x) = byte_at(i).filter(|x| *x >= 0x80) {
                run.push(x);
                i += 3;
            }
            for chunk in run.utf8_chunks() {
                out.push_str(chunk.valid());
                for x in chunk.invalid() {
                    escape(&mut out, *x);
                }
            }
            continue;
        }
        let c = url[i..].chars().next().unwrap_or('\u{FFFD}');
        if c.is_ascii() && !(c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)) {
            escape(&mut out, c as u8);
        } else {
            out.push(c);
        }
        i += c.len_utf8();
    }
    out
}

/// Turns an indicator value into its canonical form, so the same observable reported by two
/// outlets lands on one row. `Err` says why the value is not a valid indicator of that kind.
pub fn normalise_indicator(kind: IndicatorKind, raw: &str) -> Result<String, String> {
    let v = raw.trim();
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.chars().count() > 2_000 {
        return Err("at most 2000 characters".into());
    }
    if v.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters".into());
    }
    match kind {
        IndicatorKind::Ip => v
            .parse::<IpAddr>()
            .map(|ip| match ip {
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4).to_string(),
                    None => ip.to_string(),
                },
                IpAddr::V4(_) => ip.to_string(),
            })
            .map_err(|_| "not an IP address".into()),
        IndicatorKind::Cidr => v
            .parse::<ipnet::IpNet>()
            .map(|n| n.trunc().to_string())
            .map_err(|_| "not a CIDR prefix such as 203.0.113.0/24".into()),
        IndicatorKind::Asn => {
            let digits = v
                .strip_prefix("AS")
                .or_else(|| v.strip_prefix("as"))
                .unwrap_or(v);
            match digits.parse::<u32>() {
                Ok(n) if n > 0 => Ok(format!("AS{n}")),
                _ => Err("not an AS number such as AS9198".into()),
            }
        }
        IndicatorKind::Domain => {
            let d = v.trim_end_matches('.').to_lowercase();
            let ok = d.len() <= 253
                && d.contains('.')
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_alphanumeric() || c == '-')
                });
            if ok {
                Ok(d)
            } else {
                Err("not a domain name".into())
            }
        }
        IndicatorKind::Url => {
            let lower = v.to_ascii_lowercase();
            let rest = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"));
            match rest {
                Some(r)
                    if !r.is_empty() && !r.starts_with('/') && !v.contains(char::is_whitespace) =>
                {
                    // Scheme and host are case-insensitive; the path is not.
                    let scheme_len = v.len() - r.len();
                    let host_end = r.find(['/', '?', '#']).unwrap_or(r.len());
                    let host = r.get(..host_end).unwrap_or("");
                    let tail = v.get(scheme_len + host_end..).unwrap_or("");
                    let scheme = lower.get(..scheme_len).unwrap_or("");
                    // One row for one URL however it was escaped: STIX exports escape non-ASCII
                    // characters, a reader pastes them as they are.
                    Ok(canonical_url(&format!("{scheme}{host}{tail}")))
                }
                _ => Err("not an http(s) URL".into()),
            }
        }
        IndicatorKind::Email => {
            let e = v.to_lowercase();
            match e.split_once('@') {
                Some((l, d)) if !l.is_empty() && d.contains('.') && !d.contains('@') => Ok(e),
                _ => Err("not an e-mail address".into()),
            }
        }
        IndicatorKind::SocialAccount => {
            // platform:handle, both lower case, handle without a leading @.
            match v.split_once(':') {
                Some((p, h))
                    if !p.trim().is_empty() && !h.trim().trim_start_matches('@').is_empty() =>
                {
                    Ok(format!(
                        "{}:{}",
                        p.trim().to_lowercase(),
                        h.trim().trim_start_matches('@').to_lowercase()
                    ))
                }
                _ => Err("must be platform:handle, such as telegram:kursivmedia".into()),
            }
        }
        IndicatorKind::UserAgent | IndicatorKind::TextPattern => Ok(v.to_string()),
        IndicatorKind::FileSha256 => {
            let h = v.to_ascii_lowercase();
            if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
                Ok(h)
            } else {
                Err("not a SHA-256 hex digest".into())
            }
        }
    }
}

/// Parses an RFC 3339 time (`2024-03-01T10:00:00Z`) or a bare date (`2024-03-01`) into Unix ms.
pub fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
    }
    let d = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
    Some(d.midnight().assume_utc().unix_timestamp() * 1000)
}

/// Formats Unix ms as RFC 3339 UTC with milliseconds (`2024-03-01T10:00:00.000Z`), as STIX wants.
pub fn format_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_default()
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_have_one_spelling_that_survives_a_stix_round_trip() {
        let n = |v: &str| normalise_indicator(IndicatorKind::Url, v).unwrap();
        assert_eq!(
            n("HTTPS://Пример.kz/%d0%bf%D1%83%D1%82%D1%8C?a=%2f&b=%FF&c=%E2%82п"),
            "https://Пример.kz/путь?a=%2F&b=%FF&c=%E2%82п",
            "ASCII escapes keep their meaning, bytes that are not UTF-8 stay escaped"
        );
        assert_eq!(
            n(r"https://bad.example/it's/a\path?q={x}"),
            "https://bad.example/it's/a%5Cpath?q=%7Bx%7D"
        );
        // What a STIX export writes comes back to the same row.
        for raw in [
            "https://пример.kz/новости/2024?q=боты",
            r"https://bad.example/it's/a\path?q=1",
            "https://x.kz/%e2%82п%20",
            "https://x.kz/%",
            "https://x.kz/%Z1%",
        ] {
            let once = n(raw);
            assert_eq!(n(&crate::stix::uri(&once)), once, "{raw}");
            assert_eq!(n(&once), once, "{raw}");
        }
    }

    use proptest::prelude::*;

    #[test]
    fn indicators_are_canonical() {
        let n = |k, v| normalise_indicator(k, v).unwrap();
        assert_eq!(n(IndicatorKind::Ip, " ::ffff:1.2.3.4 "), "1.2.3.4");
        assert_eq!(n(IndicatorKind::Ip, "2001:DB8::1"), "2001:db8::1");
        assert_eq!(n(IndicatorKind::Cidr, "203.0.113.77/24"), "203.0.113.0/24");
        assert_eq!(n(IndicatorKind::Asn, "as9198"), "AS9198");
        assert_eq!(n(IndicatorKind::Asn, "9198"), "AS9198");
        assert_eq!(n(IndicatorKind::Domain, "Kursiv.Media."), "kursiv.media");
        assert_eq!(
            n(
                IndicatorKind::Url,
                "HTTPS://Kursiv.Media/Search?q=Number+One"
            ),
            "https://kursiv.media/Search?q=Number+One"
        );
        assert_eq!(
            n(IndicatorKind::SocialAccount, "Telegram:@Bot123"),
            "telegram:bot123"
        );
        assert!(normalise_indicator(IndicatorKind::Ip, "1.2.3").is_err());
        assert!(normalise_indicator(IndicatorKind::Asn, "AS0").is_err());
        assert!(normalise_indicator(IndicatorKind::Url, "javascript:alert(1)").is_err());
        assert!(normalise_indicator(IndicatorKind::FileSha256, "abc").is_err());
    }

    #[test]
    fn times_round_trip() {
        let ms = parse_time("2024-03-01T10:00:00.250Z").unwrap();
        assert_eq!(format_time(ms), "2024-03-01T10:00:00.250Z");
        assert_eq!(parse_time("2024-03-01"), Some(1_709_251_200_000));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn tlp_order() {
        assert_eq!(Tlp::Green.stricter(Tlp::Red), Tlp::Red);
        assert_eq!(Tlp::AmberStrict.stricter(Tlp::Amber), Tlp::AmberStrict);
        for t in Tlp::ALL {
            assert_eq!(Tlp::parse(t.as_str()), Some(*t));
        }
    }

    proptest! {
        #[test]
        fn normalising_never_panics_and_is_idempotent(s in "\\PC{0,80}", k in 0usize..10) {
            let kind = IndicatorKind::ALL[k];
            if let Ok(v) = normalise_indicator(kind, &s) {
                prop_assert_eq!(normalise_indicator(kind, &v), Ok(v.clone()));
            }
        }

        #[test]
        fn a_url_survives_a_stix_round_trip(path in "[a-zA-Z0-9пр%\\\\{}'\"^|.~/?=&-]{0,40}") {
            let n = |v: &str| normalise_indicator(IndicatorKind::Url, v);
            if let Ok(once) = n(&format!("https://x.kz/{path}")) {
                prop_assert_eq!(n(&crate::stix::uri(&once)), Ok(once.clone()));
            }
        }

        #[test]
        fn time_parsing_never_panics(s in "\\PC{0,40}") {
            let _ = parse_time(&s);
        }
    }
}
