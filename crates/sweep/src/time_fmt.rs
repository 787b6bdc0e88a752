//! Time parsing and formatting for the export formats (UTC only; no local-time guessing).

use time::OffsetDateTime;
use time::PrimitiveDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// Parses unix seconds, RFC 3339 (`2024-03-01T10:00:00Z`, with an offset or fractions), or
/// a zone-less `YYYY-MM-DD[T ]HH:MM:SS`, which is taken as UTC (Telegram Desktop writes the
/// exporting computer's local time there; its `date_unixtime` is preferred when present).
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(n) = s.parse::<i64>() {
        // Milliseconds are recognised by size: no comment was posted after the year 5138.
        return Some(if n.abs() >= 100_000_000_000 {
            n / 1000
        } else {
            n
        });
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    let naive = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let spaced = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    PrimitiveDateTime::parse(s, naive)
        .or_else(|_| PrimitiveDateTime::parse(s, spaced))
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// `2024-03-01 10:00 UTC` for reports; falls back to the raw number outside the range `time`
/// can represent.
pub(crate) fn format_minute(t: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute()
        ),
        Err(_) => t.to_string(),
    }
}

/// RFC 3339 in UTC for JSON.
pub(crate) fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Hour of day (0..24) in UTC.
pub(crate) fn hour_of_day(t: i64) -> usize {
    (t.rem_euclid(86_400) / 3600) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_exports_use() {
        assert_eq!(parse_time("1704110400"), Some(1_704_110_400));
        assert_eq!(parse_time("1704110400000"), Some(1_704_110_400));
        assert_eq!(parse_time("2024-01-01T12:00:00Z"), Some(1_704_110_400));
        assert_eq!(parse_time("2024-01-01T17:00:00+05:00"), Some(1_704_110_400));
        assert_eq!(parse_time("2024-01-01T12:00:00.123Z"), Some(1_704_110_400));
        assert_eq!(parse_time("2024-01-01T12:00:00"), Some(1_704_110_400));
        assert_eq!(parse_time("2024-01-01 12:00:00"), Some(1_704_110_400));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(""), None);
        assert_eq!(format_minute(1_704_110_400), "2024-01-01 12:00 UTC");
        assert_eq!(rfc3339(1_704_110_400), "2024-01-01T12:00:00Z");
    }
}
