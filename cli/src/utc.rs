//! UTC timestamps in RFC 3339, with std only (no date crate for two
//! formatters): certificate dates in `divert check`, event times in
//! `divert tap`.

const DAY: i64 = 86_400;

/// A Unix time in seconds, to the second: `2026-11-25T03:12:45Z`.
pub fn rfc3339(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(DAY));
    let s = secs.rem_euclid(DAY);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// A Unix time in microseconds, to the millisecond:
/// `2026-11-25T03:12:45.123Z`.
pub fn rfc3339_millis(unix_micros: u64) -> String {
    let secs = i64::try_from(unix_micros / 1_000_000).unwrap_or(i64::MAX);
    let millis = unix_micros % 1_000_000 / 1_000;
    let mut s = rfc3339(secs);
    s.pop();
    format!("{s}.{millis:03}Z")
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`: counted from 0000-03-01 so that the leap day
/// ends each year, then split into 400-year eras, years, and months of
/// 153-day pairs).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn event_times_to_the_millisecond() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(951_782_400_000_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(1_795_576_365_123_999),
            "2026-11-25T03:12:45.123Z"
        );
        assert_eq!(
            rfc3339_millis(1_772_323_200_000_000),
            "2026-03-01T00:00:00.000Z"
        );
        // 2100 is not a leap year.
        assert_eq!(
            rfc3339_millis(4_107_542_400_000_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(94_694_399_999_000),
            "1972-12-31T23:59:59.999Z"
        );
    }
}
