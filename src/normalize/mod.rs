//! Normalization of identity values before hashing (names, dates, sex codes, ids, addresses, places).
//!
//! Two sources that hold the same person must produce byte-identical
//! canonical forms, or their keyed hashes will not link. [`normalize`] turns a
//! raw field value into its canonical form according to the field's
//! [`NormKind`] (from the schema):
//!
//! | kind          | canonical form                                   | example                          |
//! |---------------|--------------------------------------------------|----------------------------------|
//! | `given_name`  | `a-z`, first name only, nickname-mapped          | `Mr. Billy J.` → `william`       |
//! | `family_name` | `a-z`, all words joined, suffixes removed        | `De La Cruz, Jr.` → `delacruz`   |
//! | `date`        | `YYYY-MM-DD`, 1900-01-01 ≤ date < 2100-01-01; a bare year `YYYY` (known only by its year) | `3/7/1985 10:22 AM` → `1985-03-07`, `1985` → `1985` |
//! | `sex`         | `m`, `f` or `x`                                  | `Female` → `f`                   |
//! | `id`          | `A-Z0-9`, leading zeros removed; placeholders (`999-99-9999`, `UNKNOWN`, `N/A`) are missing | `00-123-abc` → `123ABC` |
//! | `address`     | lowercase words joined, USPS abbreviations       | `12 North Main Street #4` → `12nmainstapt4` |
//! | `postal_code` | 5-digit ZIP, or uppercase letters and digits; placeholders (`HOMELESS`, `00000`) are missing | `02134-1234` → `02134` |
//! | `place`       | lowercase, words joined, `st`/`ft`/`mt`           | `Saint Louis` → `stlouis`        |
//!
//! Text kinds (all but `date` and `sex`) first fold Unicode to ASCII (NFKD,
//! combining marks dropped, `ß`→`ss`, `æ`→`ae`, `ø`→`o`, `ł`→`l`, `đ`→`d`,
//! `þ`→`th`, basic Cyrillic and Greek transliteration; see `fold`). Pure
//! ASCII input (the common case) skips folding and allocates nothing beyond
//! `out`. Name rules are documented in `names`, the nickname table in
//! `nicknames.txt`, date forms in [`parse_date`], address rules in `address`.
//!
//! Inputs longer than [`MAX_INPUT`] bytes are refused before any work. No
//! input makes these functions panic. Errors never contain the value.

mod address;
mod dates;
mod fold;
mod names;
mod nicknames;
mod phonetic;
#[cfg(test)]
mod proptests;
mod words;

pub use dates::parse_date;
pub use names::split_full_name;
pub use phonetic::soundex;

/// Longest accepted input, in bytes.
pub const MAX_INPUT: usize = 256;

/// Bytes that hold the normalized form of `raw`, and every value on the way
/// to it. [`normalize`] gives `out` this much room before it writes, so a
/// value is never moved to a larger buffer, which would free the old one
/// with the value's bytes in it (the caller wipes `out`; see
/// `Identity::slot`). Folding makes at most 18 ASCII bytes of one
/// character of at least 3 bytes (`U+FDFA`), 6 per input byte; a rule at
/// most doubles its input (an address separates numbers) and adds a
/// nickname or a date's dashes.
pub fn room(raw: &str) -> usize {
    rule_room(folded_room(raw))
}

/// Most bytes folding makes of `raw` (see [`room`]).
fn folded_room(raw: &str) -> usize {
    if raw.is_ascii() {
        raw.len()
    } else {
        6 * raw.len()
    }
}

/// Most bytes a rule (or one pass of one) makes of `n` bytes of ASCII input (see [`room`]).
pub(crate) fn rule_room(n: usize) -> usize {
    2 * n + 16
}

/// How an identity field is normalized. Deserialized from schema TOML as snake_case:
/// "given_name", "family_name", "date", "sex", "id", "address", "postal_code", "place".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// Given (first) name: first word only (hyphenated parts joined), nickname-mapped.
    GivenName,
    /// Family (last) name: all words joined, titles and suffixes removed.
    FamilyName,
    /// Calendar date, e.g. date of birth.
    Date,
    /// Sex code.
    Sex,
    /// Identifier (record number, licence number, ...).
    Id,
    /// Street address.
    Address,
    /// Postal code.
    PostalCode,
    /// Place name (city, county, place of birth).
    Place,
}

impl NormKind {
    /// Every kind, in declaration order.
    pub const ALL: [NormKind; 8] = [
        NormKind::GivenName,
        NormKind::FamilyName,
        NormKind::Date,
        NormKind::Sex,
        NormKind::Id,
        NormKind::Address,
        NormKind::PostalCode,
        NormKind::Place,
    ];

    /// The schema spelling (`"given_name"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            NormKind::GivenName => "given_name",
            NormKind::FamilyName => "family_name",
            NormKind::Date => "date",
            NormKind::Sex => "sex",
            NormKind::Id => "id",
            NormKind::Address => "address",
            NormKind::PostalCode => "postal_code",
            NormKind::Place => "place",
        }
    }
}

impl std::fmt::Display for NormKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a value could not be normalized. Never contains or prints the value
/// itself (these records are about drug use and arrests; identity values
/// never appear in errors). Messages are short phrases meant to follow a
/// location: "line 17, field dob: not a date".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NormError {
    /// Nothing left after normalization (blank, only punctuation, or a code
    /// meaning "unknown"); callers treat the field as missing.
    #[error("empty")]
    Empty,
    /// Not in any accepted date form.
    #[error("not a date")]
    NotADate,
    /// `D/M/YYYY`: a first number above 12 where the month goes, and a
    /// second that can be one (`13/05/1985`). Only month-first (US) dates
    /// are read: an export written day first has its other dates misread,
    /// so it is named, not guessed.
    #[error("month above 12: written day first (D/M/YYYY)? only M/D/YYYY is read; export YYYY-MM-DD")]
    DayFirst,
    /// A date with a two-digit year, which is ambiguous.
    #[error("two-digit year is ambiguous; export four-digit years")]
    TwoDigitYear,
    /// A well-formed date that does not exist (February 30, April 31,
    /// February 29 of a common year).
    #[error("no such day (e.g. February 30)")]
    NoSuchDay,
    /// A date outside 1900-01-01..2100-01-01.
    #[error("implausible date (before 1900 or after 2099)")]
    Implausible,
    /// A sex code that is neither male, female, other nor unknown.
    #[error("unknown sex code")]
    UnknownSexCode,
    /// Input longer than [`MAX_INPUT`] bytes.
    #[error("longer than 256 bytes")]
    TooLong,
}

/// Normalize `raw` as `kind`, writing the canonical form into `out` (cleared
/// first; left empty on error). See the module documentation for the forms.
pub fn normalize(kind: NormKind, raw: &str, out: &mut String) -> Result<(), NormError> {
    out.clear();
    if raw.len() > MAX_INPUT {
        return Err(NormError::TooLong);
    }
    // Empty now: growing it moves no byte of a value.
    out.reserve(room(raw));
    let rule: fn(&[u8], &mut String) = match kind {
        NormKind::Date => return finish(date(raw, out), out),
        NormKind::Sex => return finish(sex(raw, out), out),
        NormKind::GivenName => names::given,
        NormKind::FamilyName => names::family,
        NormKind::Id => id,
        NormKind::Address => address::address,
        NormKind::PostalCode => address::postal,
        NormKind::Place => address::place,
    };
    if raw.is_ascii() {
        rule(raw.as_bytes(), out);
    } else {
        // A folded identity value: wiped when dropped, never moved (see [`room`]).
        let mut folded = zeroize::Zeroizing::new(String::with_capacity(folded_room(raw)));
        let cap = folded.capacity();
        fold::fold_into(raw, &mut folded);
        debug_assert_eq!(folded.capacity(), cap, "folding outgrew its room");
        rule(folded.as_bytes(), out);
    }
    if out.is_empty() {
        Err(NormError::Empty)
    } else {
        Ok(())
    }
}

fn finish(r: Result<(), NormError>, out: &mut String) -> Result<(), NormError> {
    if r.is_err() {
        out.clear();
    }
    r
}

/// The canonical given name of an already-normalized name (`a-z`) per the
/// nickname table, or `None` if it is in no group (`"billy"` → `"william"`).
pub fn nickname_canonical(name: &str) -> Option<&'static str> {
    nicknames::canonical(name)
}

/// The nickname group of an already-normalized name: canonical form first,
/// then every name that normalizes to it. Empty if the name is in no group.
/// Useful to generate test data whose variants are known to link.
pub fn nickname_group(name: &str) -> &'static [&'static str] {
    nicknames::group(name)
}

/// All nickname groups, in table order (canonical form first in each).
pub fn nickname_groups() -> impl Iterator<Item = &'static [&'static str]> {
    nicknames::groups()
}

/// A whole date as `YYYY-MM-DD`; a bare four-digit year (a birth date known
/// only by its year, or a `birth_year` column without month and day) as
/// `YYYY`, which feeds only the `year` transform: see [`year_only`].
fn date(raw: &str, out: &mut String) -> Result<(), NormError> {
    let t = raw.trim();
    if t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit()) {
        let year: u32 = t.parse().map_err(|_| NormError::NotADate)?;
        if !(1900..=2099).contains(&year) {
            return Err(NormError::Implausible);
        }
        push_digits(out, year, 4);
        return Ok(());
    }
    let d = parse_date(raw)?;
    let year = d.year();
    if !(1900..=2099).contains(&year) {
        return Err(NormError::Implausible);
    }
    push_digits(out, year.unsigned_abs(), 4);
    out.push('-');
    push_digits(out, u32::from(u8::from(d.month())), 2);
    out.push('-');
    push_digits(out, u32::from(d.day()), 2);
    Ok(())
}

/// The year of a normalized date known only by its year (`YYYY`), else `None`.
pub fn year_only(normalized_date: &str) -> Option<i32> {
    if normalized_date.len() == 4 {
        normalized_date.parse().ok()
    } else {
        None
    }
}

/// Append the last `width` decimal digits of `v`, zero-padded.
fn push_digits(out: &mut String, v: u32, width: u32) {
    for i in (0..width).rev() {
        let digit = (v / 10u32.pow(i)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

fn sex(raw: &str, out: &mut String) -> Result<(), NormError> {
    const MALE: &[&str] = &["m", "male", "man", "boy", "1"];
    const FEMALE: &[&str] = &["f", "female", "woman", "girl", "2"];
    const OTHER: &[&str] = &["x", "nonbinary", "non-binary", "non binary", "other", "intersex"];
    // ISO/IEC 5218 uses 0 = not known, 9 = not applicable.
    const MISSING: &[&str] = &["", "u", "unk", "unknown", "9", "0", "not recorded", "not known", "not stated", "n/a"];
    let s = raw.trim();
    let is = |list: &[&str]| list.iter().any(|w| s.eq_ignore_ascii_case(w));
    let code = if is(MALE) {
        "m"
    } else if is(FEMALE) {
        "f"
    } else if is(OTHER) {
        "x"
    } else if is(MISSING) {
        return Err(NormError::Empty);
    } else {
        return Err(NormError::UnknownSexCode);
    };
    out.push_str(code);
    Ok(())
}

/// Identifier: letters and digits, uppercase, leading zeros removed.
/// Codes systems write where an id is not known: they are no id, and two
/// persons must never agree on one. Compared after normalization.
const ID_PLACEHOLDERS: &[&str] = &[
    "UNKNOWN",
    "UNK",
    "NONE",
    "NA",
    "NULL",
    "NIL",
    "REFUSED",
    "DECLINED",
    "NOTRECORDED",
    "NOTKNOWN",
    "NOTPROVIDED",
    "NOTAVAILABLE",
    "PENDING",
    "TBD",
    "NOID",
    "NOSSN",
    "NOSID",
    "123456789",
    "1234567890",
];

/// At least `min` characters, all the same (`00000`, `XXXX`): what systems write for "not known".
fn one_character_repeated(s: &str, min: usize) -> bool {
    let first = s.as_bytes().first().copied();
    s.len() >= min && s.bytes().all(|b| Some(b) == first)
}

fn id(s: &[u8], out: &mut String) {
    for &b in s {
        if b.is_ascii_alphanumeric() && !(out.is_empty() && b == b'0') {
            out.push(b.to_ascii_uppercase() as char);
        }
    }
    // Four or more of one repeated character (999999999, XXXX) or a word for "unknown": a placeholder.
    if one_character_repeated(out, 4) || ID_PLACEHOLDERS.contains(&out.as_str()) {
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(kind: NormKind, s: &str) -> Result<String, NormError> {
        let mut out = String::from("stale");
        let r = normalize(kind, s, &mut out);
        match r {
            Ok(()) => Ok(out),
            Err(e) => {
                assert!(out.is_empty(), "out not cleared on error");
                Err(e)
            }
        }
    }

    #[test]
    fn spec_examples() {
        assert_eq!(norm(NormKind::FamilyName, "José Muñoz"), norm(NormKind::FamilyName, "jose munoz"));
        assert_eq!(norm(NormKind::FamilyName, "José Muñoz").as_deref(), Ok("josemunoz"));
        assert_eq!(norm(NormKind::GivenName, "José Muñoz").as_deref(), Ok("jose"));
        assert_eq!(norm(NormKind::FamilyName, "Nguyễn").as_deref(), Ok("nguyen"));
        assert_eq!(norm(NormKind::FamilyName, "Garcia, Jr.").as_deref(), Ok("garcia"));
        assert_eq!(norm(NormKind::FamilyName, "De La Cruz").as_deref(), Ok("delacruz"));
    }

    #[test]
    fn dates() {
        let d = |s| norm(NormKind::Date, s);
        assert_eq!(d("3/7/1985").as_deref(), Ok("1985-03-07"));
        assert_eq!(d("19850307").as_deref(), Ok("1985-03-07"));
        assert_eq!(d("1985/03/07 10:22:00 PM").as_deref(), Ok("1985-03-07"));
        assert_eq!(d("1900-01-01").as_deref(), Ok("1900-01-01"));
        assert_eq!(d("2099-12-31").as_deref(), Ok("2099-12-31"));
        assert_eq!(d("2/29/2000").as_deref(), Ok("2000-02-29"));
        assert_eq!(d("1899-12-31"), Err(NormError::Implausible));
        assert_eq!(d("2100-01-01"), Err(NormError::Implausible));
        assert_eq!(d("0001-01-01"), Err(NormError::Implausible));
        assert_eq!(d("9999-12-31"), Err(NormError::Implausible));
        assert_eq!(d("2/30/2000"), Err(NormError::NoSuchDay));
        assert_eq!(d("1/2/85"), Err(NormError::TwoDigitYear));
        // Known only by its year.
        assert_eq!(d(" 1985 ").as_deref(), Ok("1985"));
        assert_eq!(year_only("1985"), Some(1985));
        assert_eq!(year_only("1985-03-07"), None);
        assert_eq!(d("1899"), Err(NormError::Implausible));
        assert_eq!(d("0385"), Err(NormError::Implausible));
        assert_eq!(d("85"), Err(NormError::NotADate));
        assert_eq!(d("yesterday"), Err(NormError::NotADate));
        assert_eq!(d(" "), Err(NormError::Empty));
    }

    #[test]
    fn sex_codes() {
        let s = |v| norm(NormKind::Sex, v);
        for v in ["m", "M", " male ", "MALE", "Man", "boy", "1"] {
            assert_eq!(s(v).as_deref(), Ok("m"), "{v}");
        }
        for v in ["f", "F", "Female", "woman", "GIRL", "2"] {
            assert_eq!(s(v).as_deref(), Ok("f"), "{v}");
        }
        for v in ["x", "X", "nonbinary", "Non-Binary", "other", "Intersex"] {
            assert_eq!(s(v).as_deref(), Ok("x"), "{v}");
        }
        for v in ["", "  ", "u", "U", "unknown", "Unknown", "9", "0", "not recorded", "Not Recorded"] {
            assert_eq!(s(v), Err(NormError::Empty), "{v:?}");
        }
        for v in ["3", "mf", "malee", "é", "femme", "m f"] {
            assert_eq!(s(v), Err(NormError::UnknownSexCode), "{v:?}");
        }
    }

    #[test]
    fn ids() {
        let i = |v| norm(NormKind::Id, v);
        assert_eq!(i("00-123-abc").as_deref(), Ok("123ABC"));
        assert_eq!(i("A0012").as_deref(), Ok("A0012"));
        assert_eq!(i(" 0001 ").as_deref(), Ok("1"));
        assert_eq!(i("１２３").as_deref(), Ok("123"));
        assert_eq!(i("é-1"), Ok("E1".to_string()));
        assert_eq!(i("000"), Err(NormError::Empty));
        assert_eq!(i("--"), Err(NormError::Empty));
        // Placeholders agencies write for an unknown id are no id: two persons never agree on one.
        for v in ["999-99-9999", "UNKNOWN", "unk", "N/A", "none", "Refused", "123-45-6789", "XXXX", "1111111111"] {
            assert_eq!(i(v), Err(NormError::Empty), "{v:?}");
        }
        assert_eq!(i("777").as_deref(), Ok("777"));
        assert_eq!(i("NA5").as_deref(), Ok("NA5"));
        assert_eq!(i("none@example.org").as_deref(), Ok("NONEEXAMPLEORG"));
    }

    #[test]
    fn too_long_for_every_kind() {
        let long = "a".repeat(MAX_INPUT + 1);
        let ok = "1".repeat(MAX_INPUT);
        for kind in NormKind::ALL {
            assert_eq!(norm(kind, &long), Err(NormError::TooLong), "{kind}");
            assert_ne!(norm(kind, &ok), Err(NormError::TooLong), "{kind}");
        }
        // the limit is in bytes, not characters
        assert_eq!(norm(NormKind::FamilyName, &"é".repeat(129)), Err(NormError::TooLong));
        assert!(norm(NormKind::FamilyName, &"é".repeat(128)).is_ok());
    }

    #[test]
    fn error_messages_are_fixed_phrases() {
        let all = [
            NormError::Empty,
            NormError::NotADate,
            NormError::DayFirst,
            NormError::TwoDigitYear,
            NormError::NoSuchDay,
            NormError::Implausible,
            NormError::UnknownSexCode,
            NormError::TooLong,
        ];
        let msgs: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "empty",
                "not a date",
                "month above 12: written day first (D/M/YYYY)? only M/D/YYYY is read; export YYYY-MM-DD",
                "two-digit year is ambiguous; export four-digit years",
                "no such day (e.g. February 30)",
                "implausible date (before 1900 or after 2099)",
                "unknown sex code",
                "longer than 256 bytes",
            ]
        );
        // the value never shows up in an error, whatever the input
        for kind in NormKind::ALL {
            if let Err(e) = norm(kind, "Zebedee 13/13/1313 secret") {
                let shown = format!("{e} {e:?}");
                assert!(!shown.contains("Zebedee") && !shown.contains("1313"));
            }
        }
    }

    #[test]
    fn kinds_serde() {
        #[derive(serde::Deserialize)]
        struct Field {
            norm: NormKind,
        }
        for kind in NormKind::ALL {
            let f: Field = toml::from_str(&format!("norm = \"{kind}\"")).unwrap();
            assert_eq!(f.norm, kind);
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{}\"", kind.as_str()));
        }
        assert!(toml::from_str::<Field>("norm = \"GivenName\"").is_err());
    }

    #[test]
    fn nickname_api() {
        assert_eq!(nickname_canonical("billy"), Some("william"));
        assert_eq!(nickname_canonical("Billy"), None);
        assert_eq!(nickname_group("bill").first(), Some(&"william"));
        assert!(nickname_group("bill").contains(&"liam"));
        assert!(nickname_groups().count() >= 150);
    }
}
