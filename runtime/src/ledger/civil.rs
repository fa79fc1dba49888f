//! UTC calendar days without a date crate: Howard Hinnant's
//! `civil_from_days` / `days_from_civil` (proleptic Gregorian).
//!
//! Day numbers count days since 1970-01-01 (day 0). Cost: a few integer
//! operations; no allocation except the formatted string.

/// Milliseconds in one day.
const MS_PER_DAY: u64 = 86_400_000;

/// `(year, month 1..=12, day 1..=31)` of day number `z` (days since 1970-01-01).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Day number (days since 1970-01-01) of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // [0, 11]
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// Day number of a unix-millisecond timestamp (UTC).
pub fn day_number(time_ms: u64) -> i64 {
    (time_ms / MS_PER_DAY) as i64
}

/// `YYYY-MM-DD` of day number `z`.
pub fn format_day(z: i64) -> String {
    let (y, m, d) = civil_from_days(z);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD` (UTC) of a unix-millisecond timestamp.
pub fn day_of(time_ms: u64) -> String {
    format_day(day_number(time_ms))
}

/// Day number of a `YYYY-MM-DD` string; `None` unless it is exactly that
/// shape and a real date (years 0000..=9999).
pub fn parse_day(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = digits(&s[0..4])?.into();
    let m = digits(&s[5..7])?;
    let d = digits(&s[8..10])?;
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// `(first day, last day)` numbers of a `YYYY-MM` month; `None` unless valid.
pub fn parse_month(s: &str) -> Option<(i64, i64)> {
    let b = s.as_bytes();
    if b.len() != 7 || b[4] != b'-' {
        return None;
    }
    let y: i64 = digits(&s[0..4])?.into();
    let m = digits(&s[5..7])?;
    if !(1..=12).contains(&m) {
        return None;
    }
    Some((
        days_from_civil(y, m, 1),
        days_from_civil(y, m, days_in_month(y, m)),
    ))
}

/// Days in month `m` of year `y`.
pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_civil_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(format_day(-1), "1969-12-31");
        assert_eq!(format_day(11_016), "2000-02-29");
        assert_eq!(format_day(19_782), "2024-02-29");
        // 2024-03-15T12:00:00Z
        assert_eq!(day_of(1_710_504_000_000), "2024-03-15");
        // Last millisecond of 1999-12-31.
        assert_eq!(day_of(946_684_799_999), "1999-12-31");
        assert_eq!(day_of(946_684_800_000), "2000-01-01");
    }

    #[test]
    fn ledger_civil_round_trips_every_day_of_four_centuries() {
        let start = days_from_civil(1900, 1, 1);
        let end = days_from_civil(2300, 12, 31);
        let mut prev = civil_from_days(start - 1);
        for z in start..=end {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
            assert!(d >= 1 && d <= days_in_month(y, m));
            // Consecutive: next day of the same month, or the 1st of the next.
            if d != 1 {
                assert_eq!((y, m, d - 1), prev);
            }
            assert_eq!(parse_day(&format_day(z)), Some(z));
            prev = (y, m, d);
        }
    }

    #[test]
    fn ledger_civil_parse_rejects_garbage() {
        for bad in [
            "",
            "2024-2-01",
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "abcd-ef-gh",
            "2024-01-1x",
            "+024-01-01",
            "2024/01/01",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
        assert_eq!(parse_day("1900-02-29"), None);
        assert!(parse_day("2000-02-29").is_some());
        let (a, b) = parse_month("2024-02").expect("month");
        assert_eq!(
            (format_day(a), format_day(b)),
            ("2024-02-01".into(), "2024-02-29".into())
        );
        assert_eq!(parse_month("2024-13"), None);
        assert_eq!(parse_month("2024-1"), None);
    }
}
