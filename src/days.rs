//! Calendar days as plain integers (days since 1970-01-01): the conversions the synthetic generator and the query engine share (H. Hinnant's algorithms); and times as RFC 3339 text, the one form every status, receipt and log shows.
//!
//! Millions of dates pass through both; a bare `i32` with total
//! conversions keeps that fast and free of error paths.

/// A calendar day: days since 1970-01-01 (negative before).
pub type Day = i32;

/// Days since 1970-01-01 of a proleptic Gregorian date (`days_from_civil`).
pub fn days_from_civil(y: i32, m: u32, d: u32) -> Day {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i32;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i32 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Year, month (1-12), day (1-31) of a day (`civil_from_days`).
pub fn civil_from_days(z: Day) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The ASCII text `YYYY-MM-DD` of a day of the years 0000 to 9999 (years
/// outside are clamped into them), without allocating: what
/// `format!("{y:04}-{m:02}-{d:02}")` writes for such a day.
pub fn iso_date_bytes(day: Day) -> [u8; 10] {
    let (y, m, d) = civil_from_days(day);
    let y = y.clamp(0, 9999) as u32;
    let digit = |n: u32| b'0' + (n % 10) as u8;
    [
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(m / 10),
        digit(m),
        b'-',
        digit(d / 10),
        digit(d),
    ]
}

/// The first day of the calendar month `months` months after the month of `day`.
pub fn first_of_month_after(day: Day, months: u32) -> Day {
    let (y, m, _) = civil_from_days(day);
    let index = y * 12 + (m as i32 - 1) + months as i32;
    days_from_civil(index.div_euclid(12), index.rem_euclid(12) as u32 + 1, 1)
}

/// A time as RFC 3339 text (falls back to the Debug form, which cannot fail).
pub fn format_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| format!("{t:?}"))
}

/// Now, as [`format_time`] writes it.
pub fn now_text() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_months() {
        for day in [-800_000, -1, 0, 1, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(civil_from_days(first_of_month_after(days_from_civil(2019, 11, 30), 3)), (2020, 2, 1));
    }
}
