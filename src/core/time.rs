//! Durations and time stamps for people: pure, `now` is always a parameter.

use std::time::{Duration, UNIX_EPOCH};

/// The earliest time stamp hwpass accepts in any document: 1970-01-01T00:00:00Z.
pub const MIN_TIME: i64 = 0;
/// The latest: 9999-12-31T23:59:59Z (RFC 3339 has four-digit years).
pub const MAX_TIME: i64 = 253_402_300_799;

/// Whether `unix` lies within [`MIN_TIME`]…[`MAX_TIME`].
pub fn in_range(unix: i64) -> bool {
    (MIN_TIME..=MAX_TIME).contains(&unix)
}

/// Parses a human duration such as `7d`, `12h`, `90m`, `1w 2d` into seconds (> 0, at most the
/// span of [`MIN_TIME`]…[`MAX_TIME`]).
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 7d, 12h or 30m ({e})"))?;
    let secs = i64::try_from(d.as_secs())
        .ok()
        .filter(|&secs| secs <= MAX_TIME)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    if secs <= 0 {
        return Err(format!("{s:?} is not a positive duration"));
    }
    Ok(secs)
}

/// Formats seconds as a short human duration (`6d 23h 59m`); any `i64`, never a panic.
pub fn format_duration(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let secs = secs.unsigned_abs();
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let parts: Vec<String> = [(d, "d"), (h, "h"), (m, "m")]
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v}{u}"))
        .collect();
    if parts.is_empty() {
        format!("{sign}{s}s")
    } else {
        format!("{sign}{}", parts.join(" "))
    }
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-25T05:00:00Z`); any `i64`, never a panic
/// (outside 1970…9999 it says so).
pub fn format_time(unix: i64) -> String {
    match u64::try_from(unix) {
        Ok(s) if in_range(unix) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
        }
        Ok(_) => format!("{unix} (after 9999)"),
        Err(_) => format!("{unix} (before 1970)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap(), 7 * 86400);
        assert_eq!(parse_duration("12h 30m").unwrap(), 12 * 3600 + 1800);
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(7 * 86400 - 60), "6d 23h 59m");
        assert_eq!(format_duration(42), "42s");
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn every_i64_formats_without_a_panic() {
        assert_eq!(format_time(MAX_TIME), "9999-12-31T23:59:59Z");
        assert_eq!(format_time(MAX_TIME + 1), "253402300800 (after 9999)");
        assert_eq!(format_time(i64::MIN), "-9223372036854775808 (before 1970)");
        assert_eq!(format_time(i64::MAX), "9223372036854775807 (after 9999)");
        assert_eq!(format_duration(-90), "-1m");
        assert_eq!(format_duration(i64::MIN), "-106751991167300d 15h 30m");
        assert!(format_duration(i64::MAX).starts_with("106751991167300d"));
        assert!(parse_duration("400000y").is_err());
    }
}
