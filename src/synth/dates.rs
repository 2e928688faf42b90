//! Calendar days as plain integers (days since 1970-01-01) and the date spellings the agencies export.
//!
//! The generator handles millions of dates; a bare `i32` with total
//! conversions keeps that fast and free of error paths.

use std::fmt::Write;

pub use crate::days::{civil_from_days, days_from_civil, first_of_month_after, Day};

/// The day if (y, m, d) is a real calendar date.
pub fn checked(y: i32, m: u32, d: u32) -> Option<Day> {
    if !(1..=12).contains(&m) || d == 0 || d > 31 {
        return None;
    }
    let day = days_from_civil(y, m, d);
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

/// Parse `YYYY-MM-DD`.
pub fn parse_iso(s: &str) -> Option<Day> {
    let mut parts = s.trim().splitn(3, '-');
    let y = parts.next()?.parse().ok()?;
    let m = parts.next()?.parse().ok()?;
    let d = parts.next()?.parse().ok()?;
    checked(y, m, d)
}

/// How an agency spells a date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateStyle {
    /// `2019-03-04`
    Iso,
    /// `3/4/2019`
    Us,
    /// `3/4/2019 10:22`: a US date with a clock time.
    UsTime,
}

/// Append `day` spelled in `style` to `out`; `minutes` is the time of day for styles that show one.
pub fn write_date(out: &mut String, day: Day, style: DateStyle, minutes: u32) {
    let (y, m, d) = civil_from_days(day);
    // Writing to a String cannot fail.
    let _ = match style {
        DateStyle::Iso => write!(out, "{y:04}-{m:02}-{d:02}"),
        DateStyle::Us => write!(out, "{m}/{d}/{y}"),
        DateStyle::UsTime => write!(out, "{m}/{d}/{y} {}:{:02}", (minutes / 60) % 24, minutes % 60),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_against_the_time_crate() {
        let epoch = time::Date::from_calendar_date(1970, time::Month::January, 1).unwrap();
        for day in (-40_000..40_000).step_by(37) {
            let date = epoch + time::Duration::days(day as i64);
            let (y, m, d) = civil_from_days(day);
            assert_eq!((y, m, d), (date.year(), u8::from(date.month()) as u32, date.day() as u32));
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn parses_and_spells_dates() {
        let day = parse_iso("2019-03-04").unwrap();
        assert_eq!(parse_iso("2019-02-29"), None);
        assert_eq!(parse_iso("2020-02-29").map(civil_from_days), Some((2020, 2, 29)));
        let spell = |style| {
            let mut s = String::new();
            write_date(&mut s, day, style, 622);
            s
        };
        assert_eq!(spell(DateStyle::Iso), "2019-03-04");
        assert_eq!(spell(DateStyle::Us), "3/4/2019");
        assert_eq!(spell(DateStyle::UsTime), "3/4/2019 10:22");
        assert_eq!(civil_from_days(first_of_month_after(day, 10)), (2020, 1, 1));
        assert_eq!(civil_from_days(first_of_month_after(day, 0)), (2019, 3, 1));
    }
}
