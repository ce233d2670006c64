//! Durations and time stamps for people: pure, `now` is always a parameter.

use std::time::{Duration, UNIX_EPOCH};

/// Parses a human duration such as `7d`, `12h`, `90m`, `1w 2d` into seconds (> 0).
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 7d, 12h or 30m ({e})"))?;
    let secs = i64::try_from(d.as_secs()).map_err(|_| format!("{s:?} is too long"))?;
    if secs <= 0 {
        return Err(format!("{s:?} is not a positive duration"));
    }
    Ok(secs)
}

/// Formats seconds as a short human duration (`6d 23h 59m`).
pub fn format_duration(secs: i64) -> String {
    if secs < 0 {
        return format!("-{}", format_duration(-secs));
    }
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
        format!("{s}s")
    } else {
        parts.join(" ")
    }
}

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-25T05:00:00Z`).
pub fn format_time(unix: i64) -> String {
    match u64::try_from(unix) {
        Ok(s) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string(),
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
}
