//! UTC calendar days as day numbers (days since 1970-01-01, day 0), on
//! `chrono`'s proleptic Gregorian [`NaiveDate`]. This module only fixes the
//! ledger's formats: `YYYY-MM-DD` days and `YYYY-MM` months, four-digit
//! years, nothing else accepted. Cost: a few integer operations; no
//! allocation except the formatted string.

use chrono::{Datelike as _, Months, NaiveDate};

/// Milliseconds in one day.
const MS_PER_DAY: u64 = 86_400_000;

/// The date of day number `z`; days outside chrono's range (about ±262,000
/// years) clamp to its ends.
fn date(z: i64) -> NaiveDate {
    i32::try_from(z)
        .ok()
        .and_then(NaiveDate::from_epoch_days)
        .unwrap_or(if z < 0 {
            NaiveDate::MIN
        } else {
            NaiveDate::MAX
        })
}

/// `(year, month 1..=12, day 1..=31)` of day number `z` (days since 1970-01-01).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let d = date(z);
    (i64::from(d.year()), d.month(), d.day())
}

/// Day number (days since 1970-01-01) of a proleptic Gregorian date; `None`
/// unless it is a real date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    let date = NaiveDate::from_ymd_opt(i32::try_from(y).ok()?, m, d)?;
    Some(i64::from(date.to_epoch_days()))
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
    days_from_civil(
        digits(&s[0..4])?.into(),
        digits(&s[5..7])?,
        digits(&s[8..10])?,
    )
}

/// `(first day, last day)` numbers of a `YYYY-MM` month; `None` unless valid.
pub fn parse_month(s: &str) -> Option<(i64, i64)> {
    let b = s.as_bytes();
    if b.len() != 7 || b[4] != b'-' {
        return None;
    }
    let year = i32::try_from(digits(&s[0..4])?).ok()?;
    let first = NaiveDate::from_ymd_opt(year, digits(&s[5..7])?, 1)?;
    let last = first.checked_add_months(Months::new(1))?.pred_opt()?;
    Some((
        i64::from(first.to_epoch_days()),
        i64::from(last.to_epoch_days()),
    ))
}

/// The number written with exactly the digits of `s` (no sign, no spaces).
fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Days in month `m` of year `y` (0 for a month that does not exist).
    fn days_in_month(y: i64, m: u32) -> u32 {
        i32::try_from(y)
            .ok()
            .and_then(|y| NaiveDate::from_ymd_opt(y, m, 1))
            .map_or(0, |first| u32::from(first.num_days_in_month()))
    }

    #[test]
    fn ledger_civil_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(format_day(-1), "1969-12-31");
        assert_eq!(format_day(11_016), "2000-02-29");
        assert_eq!(format_day(19_782), "2024-02-29");
        assert_eq!(days_from_civil(2024, 2, 30), None);
        assert_eq!(days_from_civil(2024, 13, 1), None);
        // 2024-03-15T12:00:00Z
        assert_eq!(day_of(1_710_504_000_000), "2024-03-15");
        // Last millisecond of 1999-12-31.
        assert_eq!(day_of(946_684_799_999), "1999-12-31");
        assert_eq!(day_of(946_684_800_000), "2000-01-01");
    }

    #[test]
    fn ledger_civil_round_trips_every_day_of_four_centuries() {
        let start = days_from_civil(1900, 1, 1).expect("date");
        let end = days_from_civil(2300, 12, 31).expect("date");
        let mut prev = civil_from_days(start - 1);
        for z in start..=end {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), Some(z));
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
