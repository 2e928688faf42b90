//! Dates as agencies export them.
//!
//! Accepted date forms (surrounding whitespace ignored):
//! - `YYYY-MM-DD`, `YYYY/MM/DD` (month and day one or two digits),
//! - `YYYYMMDD`,
//! - US `M/D/YYYY` and `M-D-YYYY` (month and day one or two digits),
//! - with the month's name (whole, its first three letters or `Sept`, any
//!   case, an abbreviation optionally with a dot): `07-MAR-1985` (Oracle's
//!   form), `7 Mar 1985`, `7/Mar/1985`, `Mar 7, 1985`, `March 7 1985`,
//!   `MAR-07-1985`, `1985-Mar-07`.
//!
//! The separators of one date must agree (`2020-01/05` is refused). A date
//! may be followed by a time, separated by `T` or whitespace, which is
//! checked for shape and then ignored (no time-zone conversion: the written
//! calendar day is the day):
//! `HH:MM`, `HH:MM:SS`, `HH:MM:SS.fff` (or `,fff`), compact `HHMM`/`HHMMSS`,
//! each optionally followed by `AM`/`PM` (`a.m.`/`p.m.`) and/or a zone
//! (`Z`, `UTC`, `GMT`, `+HH`, `+HHMM`, `+HH:MM`, `-...`).
//!
//! Two-digit years (`1/2/85`, `85-01-02`, `850102`, `07-MAR-85`) are
//! refused as ambiguous rather than guessed, and so is a date written day
//! first (`13/05/1985`, [`NormError::DayFirst`]): reading it would hide
//! that the same export's `05/03/1985` means 5 March and is read as May 3.

use super::NormError;
use time::{Date, Month};

/// Parse a date; see the module documentation for the accepted forms.
pub fn parse_date(raw: &str) -> Result<Date, NormError> {
    if raw.len() > super::MAX_INPUT {
        return Err(NormError::TooLong);
    }
    let s = raw.trim().as_bytes();
    if s.is_empty() {
        return Err(NormError::Empty);
    }
    let mut p = Cursor { s, i: 0 };
    let (year, month, day) = date_part(&mut p)?;
    if !p.at_end() {
        time_part(&mut p)?;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(NormError::NotADate);
    }
    let month = Month::try_from(month).map_err(|_| NormError::NotADate)?;
    Date::from_calendar_date(year, month, day).map_err(|_| NormError::NoSuchDay)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    /// Consume a run of ASCII digits; returns (value, digit count). The value
    /// saturates (only short runs are ever accepted).
    fn digits(&mut self) -> (u32, usize) {
        let mut v: u32 = 0;
        let mut n = 0;
        while let Some(b) = self.peek().filter(u8::is_ascii_digit) {
            v = v.saturating_mul(10).saturating_add(u32::from(b - b'0'));
            n += 1;
            self.i += 1;
        }
        (v, n)
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Consume `word` case-insensitively.
    fn eat_word(&mut self, word: &[u8]) -> bool {
        let end = self.i + word.len();
        match self.s.get(self.i..end) {
            Some(w) if w.eq_ignore_ascii_case(word) => {
                self.i = end;
                true
            }
            _ => false,
        }
    }

    fn skip_spaces(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.i += 1;
        }
        self.i - start
    }
}

fn small(v: u32) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

const MONTHS: [&[u8]; 12] = [
    b"january",
    b"february",
    b"march",
    b"april",
    b"may",
    b"june",
    b"july",
    b"august",
    b"september",
    b"october",
    b"november",
    b"december",
];

/// A month's name, whole or its first three letters (`Sept` too), any case,
/// optionally followed by a dot: its number, the cursor after it. Anything
/// else: `None`, the cursor where it was.
fn month_name(p: &mut Cursor) -> Option<u8> {
    let start = p.i;
    while p.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
        p.i += 1;
    }
    let word = p.s.get(start..p.i).unwrap_or_default();
    let found = MONTHS.iter().position(|m| {
        word.eq_ignore_ascii_case(m)
            || (word.len() == 3 && m.get(..3).is_some_and(|m| word.eq_ignore_ascii_case(m)))
            || (word.eq_ignore_ascii_case(b"sept") && *m == b"september")
    });
    match found {
        Some(i) => {
            p.eat(b'.');
            Some(small(i as u32 + 1))
        }
        None => {
            p.i = start;
            None
        }
    }
}

/// A year of four digits (two: refused as ambiguous), then the end of the date.
fn year_at_end(p: &mut Cursor) -> Result<i32, NormError> {
    let (y, ny) = p.digits();
    end_of_date(p)?;
    match ny {
        4 => i32::try_from(y).map_err(|_| NormError::NotADate),
        2 => Err(NormError::TwoDigitYear),
        _ => Err(NormError::NotADate),
    }
}

/// Dates with the month's name: `Mar 7, 1985`, `March 7 1985`, `7 Mar
/// 1985`, `07-MAR-1985` (as Oracle writes it), `1985-Mar-07`. `a` (of `na`
/// digits) is what came before the name, if anything; the separator after it
/// (`-`, `/` or spaces) must come again after the name.
fn named_month(p: &mut Cursor, a: u32, na: usize) -> Result<(i32, u8, u8), NormError> {
    if na == 0 {
        // Mar 7, 1985 / March 7 1985 (spaces, a comma allowed) or MAR-07-1985.
        let month = month_name(p).ok_or(NormError::NotADate)?;
        let dashed = if p.skip_spaces() > 0 {
            false
        } else if p.eat(b'-') {
            true
        } else {
            return Err(NormError::NotADate);
        };
        let (day, nd) = p.digits();
        if !(1..=2).contains(&nd) {
            return Err(NormError::NotADate);
        }
        let again = if dashed {
            p.eat(b'-')
        } else {
            p.eat(b',');
            p.skip_spaces() > 0
        };
        if !again {
            return Err(NormError::NotADate);
        }
        return Ok((year_at_end(p)?, month, small(day)));
    }
    let spaced = p.skip_spaces() > 0;
    let sep = if spaced {
        b' '
    } else {
        match p.peek() {
            Some(b @ (b'-' | b'/')) => {
                p.i += 1;
                b
            }
            _ => return Err(NormError::NotADate),
        }
    };
    let month = month_name(p).ok_or(NormError::NotADate)?;
    let again = if sep == b' ' { p.skip_spaces() > 0 } else { p.eat(sep) };
    if !again {
        return Err(NormError::NotADate);
    }
    match na {
        // 7 Mar 1985, 07-MAR-1985
        1 | 2 => Ok((year_at_end(p)?, month, small(a))),
        // 1985-Mar-07
        4 => {
            let (day, nd) = p.digits();
            end_of_date(p)?;
            if !(1..=2).contains(&nd) {
                return Err(NormError::NotADate);
            }
            Ok((i32::try_from(a).map_err(|_| NormError::NotADate)?, month, small(day)))
        }
        _ => Err(NormError::NotADate),
    }
}

/// Whether the month's name comes next, after an optional `-`, `/` or spaces.
fn name_follows(p: &Cursor) -> bool {
    let mut i = p.i;
    if matches!(p.s.get(i), Some(b'-' | b'/')) {
        i += 1;
    } else {
        while p.s.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
    }
    p.s.get(i).is_some_and(u8::is_ascii_alphabetic)
}

/// Parse the date; leaves the cursor after it. Returns (year, month, day)
/// with month and day not yet range-checked.
fn date_part(p: &mut Cursor) -> Result<(i32, u8, u8), NormError> {
    let (a, na) = p.digits();
    if na == 0 || (matches!(na, 1 | 2 | 4) && name_follows(p)) {
        return named_month(p, a, na);
    }
    match na {
        8 => {
            // YYYYMMDD
            let y = a / 10_000;
            let m = (a / 100) % 100;
            let d = a % 100;
            end_of_date(p)?;
            Ok((i32::try_from(y).map_err(|_| NormError::NotADate)?, small(m), small(d)))
        }
        6 => {
            end_of_date(p)?;
            Err(NormError::TwoDigitYear)
        }
        1 | 2 | 4 => {
            let sep = match p.peek() {
                Some(b @ (b'-' | b'/')) => b,
                _ => return Err(NormError::NotADate),
            };
            p.i += 1;
            let (b, nb) = p.digits();
            if !(1..=2).contains(&nb) || !p.eat(sep) {
                return Err(NormError::NotADate);
            }
            let (c, nc) = p.digits();
            end_of_date(p)?;
            match (na, nc) {
                // YYYY-M-D, YYYY/M/D
                (4, 1 | 2) => Ok((i32::try_from(a).map_err(|_| NormError::NotADate)?, small(b), small(c))),
                // M/D/YYYY, M-D-YYYY; a day written first is named, not guessed.
                (1 | 2, 4) if (13..=31).contains(&a) && (1..=12).contains(&b) => Err(NormError::DayFirst),
                (1 | 2, 4) => Ok((i32::try_from(c).map_err(|_| NormError::NotADate)?, small(a), small(b))),
                // M/D/YY, YY-MM-DD
                (1 | 2, 2) => Err(NormError::TwoDigitYear),
                _ => Err(NormError::NotADate),
            }
        }
        _ => Err(NormError::NotADate),
    }
}

/// After the date: end of input, `T`, or whitespace.
fn end_of_date(p: &Cursor) -> Result<(), NormError> {
    match p.peek() {
        None | Some(b'T' | b't') => Ok(()),
        Some(b) if b.is_ascii_whitespace() => Ok(()),
        Some(_) => Err(NormError::NotADate),
    }
}

/// A time after the date: shape-checked, then ignored.
fn time_part(p: &mut Cursor) -> Result<(), NormError> {
    let bad = Err(NormError::NotADate);
    if !(p.eat(b'T') || p.eat(b't')) && p.skip_spaces() == 0 {
        return bad;
    }
    let (h, nh) = p.digits();
    let (hour, minute, second) = match nh {
        1 | 2 => {
            if !p.eat(b':') {
                return bad;
            }
            let (m, nm) = p.digits();
            if nm != 2 {
                return bad;
            }
            let mut s = 0;
            if p.eat(b':') {
                let (sv, ns) = p.digits();
                if ns != 2 {
                    return bad;
                }
                s = sv;
            }
            (h, m, s)
        }
        4 => (h / 100, h % 100, 0),
        6 => (h / 10_000, (h / 100) % 100, h % 100),
        _ => return bad,
    };
    if p.peek().is_some_and(|b| b == b'.' || b == b',') {
        p.i += 1;
        let (_, nf) = p.digits();
        if nf == 0 || nf > 9 {
            return bad;
        }
    }
    if hour > 24 || minute > 59 || second > 60 {
        return bad;
    }
    // optional AM/PM
    let save = p.i;
    p.skip_spaces();
    if p.eat_word(b"am") || p.eat_word(b"pm") || p.eat_word(b"a.m.") || p.eat_word(b"p.m.") {
        if !(1..=12).contains(&hour) {
            return bad;
        }
    } else {
        p.i = save;
    }
    // optional zone
    p.skip_spaces();
    if p.eat(b'Z') || p.eat(b'z') || p.eat_word(b"utc") || p.eat_word(b"gmt") {
        // UTC may itself carry an offset: "UTC+02:00"
    }
    if p.eat(b'+') || p.eat(b'-') {
        let (_, n) = p.digits();
        match n {
            2 => {
                if p.eat(b':') && p.digits().1 != 2 {
                    return bad;
                }
            }
            4 => {}
            _ => return bad,
        }
    }
    if p.at_end() {
        Ok(())
    } else {
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn formats() {
        let d = date!(1985 - 03 - 07);
        for s in [
            "1985-03-07",
            "1985-3-7",
            "1985/03/07",
            "1985/3/7",
            "19850307",
            "3/7/1985",
            "03/07/1985",
            "3-7-1985",
            "03-07-1985",
            "  1985-03-07\t",
            "1985-03-07T10:22:00Z",
            "1985-03-07T10:22:00",
            "1985-03-07T10:22:00.123456Z",
            "1985-03-07T10:22:00+02:00",
            "1985-03-07T10:22:00-0500",
            "1985-03-07T10:22:00-05",
            "1985-03-07t10:22",
            "1985-03-07 10:22",
            "1985-03-07 10:22:00",
            "1985-03-07  00:00:00.000",
            "1985-03-07 10:22:00 UTC",
            "3/7/1985 10:22",
            "3/7/1985 10:22:00 AM",
            "3/7/1985 10:22:00 pm",
            "3/7/1985 1:05 p.m.",
            "03/07/1985 12:00:00 AM",
            "19850307T102200Z",
            "19850307 1022",
            "1985-03-07 10:22:00,5 +01:00",
            "07-MAR-1985",
            "7-Mar-1985",
            "7 Mar 1985",
            "07 March 1985",
            "7/Mar/1985",
            "Mar 7, 1985",
            "March 7, 1985",
            "march 7 1985",
            "Mar. 7, 1985",
            "MAR-07-1985",
            "1985-Mar-07",
            "1985 MARCH 7",
            "07-MAR-1985 10:22:00",
            "March 7, 1985 10:22 AM",
        ] {
            assert_eq!(parse_date(s), Ok(d), "{s:?}");
        }
    }

    #[test]
    fn calendar() {
        assert_eq!(parse_date("2000-02-29"), Ok(date!(2000 - 02 - 29)));
        assert_eq!(parse_date("2/29/2024"), Ok(date!(2024 - 02 - 29)));
        assert_eq!(parse_date("1900-02-29"), Err(NormError::NoSuchDay));
        assert_eq!(parse_date("2023-02-29"), Err(NormError::NoSuchDay));
        assert_eq!(parse_date("2021-02-30"), Err(NormError::NoSuchDay));
        assert_eq!(parse_date("2/30/2021"), Err(NormError::NoSuchDay));
        assert_eq!(parse_date("2021-04-31"), Err(NormError::NoSuchDay));
        assert_eq!(parse_date("2021-12-31"), Ok(date!(2021 - 12 - 31)));
        assert_eq!(parse_date("May. 7, 1985"), Ok(date!(1985 - 05 - 07)));
        assert_eq!(parse_date("7 Sept 1985"), Ok(date!(1985 - 09 - 07)));
        assert_eq!(parse_date("Feb 30, 2021"), Err(NormError::NoSuchDay));
        assert_eq!(parse_date("2021-13-01"), Err(NormError::NotADate));
        assert_eq!(parse_date("2021-00-01"), Err(NormError::NotADate));
        assert_eq!(parse_date("2021-01-00"), Err(NormError::NotADate));
        assert_eq!(parse_date("2021-01-32"), Err(NormError::NotADate));
        // US order: month first
        assert_eq!(parse_date("12/1/2021"), Ok(date!(2021 - 12 - 01)));
        // A day written first is named, not read: its export's ambiguous dates would be misread.
        assert_eq!(parse_date("13/1/2021"), Err(NormError::DayFirst));
        assert_eq!(parse_date("31-12-2021"), Err(NormError::DayFirst));
        assert_eq!(parse_date("13/13/2021"), Err(NormError::NotADate));
        assert_eq!(parse_date("32/1/2021"), Err(NormError::NotADate));
        assert_eq!(parse_date("13/45/1990"), Err(NormError::NotADate));
    }

    #[test]
    fn two_digit_years() {
        for s in
            ["1/2/85", "01/02/85", "1-2-85", "85-01-02", "850102", "010285", "1/2/85 10:00", "07-MAR-85", "Mar 7, 85"]
        {
            assert_eq!(parse_date(s), Err(NormError::TwoDigitYear), "{s:?}");
        }
    }

    #[test]
    fn refused() {
        assert_eq!(parse_date(""), Err(NormError::Empty));
        assert_eq!(parse_date("   "), Err(NormError::Empty));
        for s in [
            "x",
            "1985",
            "1985-03",
            "1985-03/07",
            "3/7-1985",
            "1985.03.07",
            "07.03.1985",
            "1985-03-07x",
            "1985-03-07 foo",
            "1985-03-07T",
            "1985-03-07 25:00",
            "1985-03-07 10:60",
            "1985-03-07 10:2",
            "1985-03-07 13:00 PM",
            "1985-03-07 10:22 +5",
            "1985-03-07 10:22:00.",
            "198503071",
            "19850-03-07",
            "985-03-07",
            "3/7/19850",
            "3/7/198",
            "Marc 7, 1985",
            "Sep. 7, 1985x",
            "7 Mar-1985",
            "7-Mar 1985",
            "07-XYZ-1985",
            "Mar 7th, 1985",
            "Mar, 1985",
            "1985-Mar",
            "Mar 123, 1985",
            "Mar-7 1985",
            "Mar 7-1985",
            "Mar-07, 1985",
            "１９８５-03-07",
            "-1985-03-07",
            "+1985-03-07",
            "1985-003-07",
        ] {
            assert_eq!(parse_date(s), Err(NormError::NotADate), "{s:?}");
        }
        assert_eq!(parse_date(&"1".repeat(300)), Err(NormError::TooLong));
    }

    #[test]
    fn huge_digit_runs_do_not_overflow() {
        assert_eq!(parse_date("99999999999999999999"), Err(NormError::NotADate));
        assert_eq!(parse_date("1985-03-07T99999999999999999999"), Err(NormError::NotADate));
        assert_eq!(parse_date("99999999"), Err(NormError::NotADate));
    }
}
