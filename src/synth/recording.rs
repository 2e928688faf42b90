//! How an agency records a person: the identity as written on one record, with that agency's recording differences.
//!
//! Each record draws its own differences from the agency's rates, so one
//! person's records disagree with each other the way real exports do.

use std::borrow::Cow;

use rand::seq::SliceRandom;
use rand::Rng;

use super::dates::{checked, civil_from_days, Day};
use super::dist::chance;
use super::model::{Person, Sex, Status, What};
use super::names::{nickname_of, strip_diacritics, typo};
use super::params::RecordingRates;
use super::places::RecordedPlace;

/// The identity fields as one record carries them.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedIdentity {
    pub given: Cow<'static, str>,
    pub family: Cow<'static, str>,
    /// The date of birth as written (possibly wrong).
    pub dob: Day,
    /// Whether the date of birth is written at all, and how.
    pub dob_written: DobWritten,
    pub sex: Option<Sex>,
    pub state_id: Option<u32>,
    /// City and ZIP code as written (filled by `places::record`).
    pub place: RecordedPlace,
    /// The agency's own person number, where its exports carry one.
    pub local_id: Option<u32>,
}

/// How a record's date of birth cell is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DobWritten {
    /// The (possibly wrong) date, in the agency's date style.
    Date,
    /// Left empty.
    Missing,
    /// Text that is not a usable date (a placeholder, an impossible day, a two-digit year).
    Invalid(&'static str),
}

/// Unusable birth dates as systems write them: placeholders, impossible days, two-digit years.
const INVALID_DOBS: &[&str] = &["00/00/0000", "unknown", "1985-02-30", "13/45/1990", "3/7/85", "N/A", "0000-00-00"];

/// Second given names some records append ("John Michael"): the first word is the given name.
const MIDDLE_NAMES: &[&str] = &["Lee", "Ann", "Marie", "James", "Michael", "Ray", "Lynn", "Jo", "Louise", "Allen"];

/// Record `person` with an agency's recording differences.
pub fn record<R: Rng>(rng: &mut R, person: &Person, rates: &RecordingRates) -> RecordedIdentity {
    let mut given: Cow<'static, str> = Cow::Borrowed(person.given);
    if chance(rng, rates.nickname) {
        if let Some(nick) = nickname_of(person.given) {
            given = Cow::Borrowed(nick);
        }
    }
    let mut family: Cow<'static, str> = match person.second_family {
        None => Cow::Borrowed(person.family),
        Some(second) if chance(rng, rates.one_family_part) => {
            Cow::Borrowed(if chance(rng, 0.7) { person.family } else { second })
        }
        // Some systems keep both parts but lose the hyphen.
        Some(second) if chance(rng, 0.2) => Cow::Owned(format!("{} {second}", person.family)),
        Some(second) => Cow::Owned(format!("{}-{second}", person.family)),
    };
    // Several errors at once: a typo in each name, a wrong birth date and a wrong id digit, two of them.
    let several = chance(rng, rates.several_errors);
    let (mut extra_typo, mut extra_dob, mut extra_id) = (false, false, false);
    if several {
        match rng.gen_range(0..3) {
            0 => (extra_typo, extra_dob) = (true, true),
            1 => (extra_typo, extra_id) = (true, true),
            _ => (extra_dob, extra_id) = (true, true),
        }
    }
    if chance(rng, rates.typo) {
        if rng.gen() {
            given = Cow::Owned(typo(rng, &given));
        } else {
            family = Cow::Owned(typo(rng, &family));
        }
    }
    if extra_typo {
        given = Cow::Owned(typo(rng, &given));
        family = Cow::Owned(typo(rng, &family));
    }
    if chance(rng, rates.given_split) {
        given = Cow::Owned(split_word(rng, &given));
    }
    if chance(rng, rates.middle_name) {
        let middle = MIDDLE_NAMES.choose(rng).copied().unwrap_or("Lee");
        given = Cow::Owned(format!("{given} {middle}"));
    }
    if let Some(suffix) = person.suffix {
        if chance(rng, rates.suffix) {
            let spelling = suffix.spellings().choose(rng).copied().unwrap_or(" Jr");
            family = Cow::Owned(format!("{family}{spelling}"));
        }
    }
    if chance(rng, rates.strip_diacritics) {
        given = fold(given);
        family = fold(family);
    }
    if chance(rng, rates.upper_case) {
        given = Cow::Owned(given.to_uppercase());
        family = Cow::Owned(family.to_uppercase());
    }
    if chance(rng, rates.swapped_names) {
        std::mem::swap(&mut given, &mut family);
    }
    let dob = if chance(rng, rates.dob_error) || extra_dob { wrong_dob(rng, person.dob) } else { person.dob };
    let dob_written = if chance(rng, rates.dob_missing) {
        DobWritten::Missing
    } else if chance(rng, rates.dob_invalid) {
        DobWritten::Invalid(INVALID_DOBS.choose(rng).copied().unwrap_or("unknown"))
    } else {
        DobWritten::Date
    };
    let sex = (!chance(rng, rates.sex_missing)).then_some(person.sex);
    let mut state_id = chance(rng, rates.state_id).then_some(person.state_id);
    if let Some(id) = state_id.as_mut() {
        if chance(rng, rates.id_error) || extra_id {
            *id = wrong_id(rng, *id);
        }
    }
    RecordedIdentity { given, family, dob, dob_written, sex, state_id, place: RecordedPlace::default(), local_id: None }
}

/// A space typed inside a name, away from its ends ("Will iam"); short names are kept.
pub(super) fn split_word<R: Rng>(rng: &mut R, name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() < 4 || chars.iter().any(|c| !c.is_alphabetic()) {
        return name.to_string();
    }
    space_before(&chars, rng.gen_range(2..chars.len() - 1))
}

/// The characters with a space typed before the one at `at`.
pub(super) fn space_before(chars: &[char], at: usize) -> String {
    let mut out: String = chars[..at].iter().collect();
    out.push(' ');
    out.extend(&chars[at..]);
    out
}

/// An 8-digit id as mis-keyed: two adjacent different digits transposed, or one digit changed.
pub fn wrong_id<R: Rng>(rng: &mut R, id: u32) -> u32 {
    let mut digits: Vec<u8> = format!("{id:08}").into_bytes();
    let swaps: Vec<usize> = (0..digits.len() - 1).filter(|&i| digits[i] != digits[i + 1]).collect();
    match swaps.choose(rng) {
        Some(&i) if rng.gen_bool(0.5) => digits.swap(i, i + 1),
        _ => {
            let i = rng.gen_range(0..digits.len());
            let old = digits[i] - b'0';
            digits[i] = b'0' + (old + rng.gen_range(1..10)) % 10;
        }
    }
    digits.iter().fold(0u32, |acc, d| acc.wrapping_mul(10).wrapping_add(u32::from(d - b'0')))
}

fn fold(name: Cow<'static, str>) -> Cow<'static, str> {
    match strip_diacritics(&name) {
        Cow::Borrowed(_) => name,
        Cow::Owned(folded) => Cow::Owned(folded),
    }
}

/// A date of birth as mis-keyed: day and month swapped, or two neighbouring
/// digits of YYYYMMDD transposed (1975 → 1957), picked at random among those
/// that give a different real date within 30 years. When there is none
/// (1980-03-14), the last digit of the day is off by one instead.
pub fn wrong_dob<R: Rng>(rng: &mut R, dob: Day) -> Day {
    let (y, m, d) = civil_from_days(dob);
    let mut candidates = Vec::new();
    if d != m {
        candidates.extend(checked(y, d, m));
    }
    let digits: Vec<u8> = format!("{:04}{m:02}{d:02}", y.clamp(0, 9999)).into_bytes();
    for i in 0..digits.len() - 1 {
        if digits[i] == digits[i + 1] {
            continue;
        }
        let mut t = digits.clone();
        t.swap(i, i + 1);
        let num = |a: usize, b: usize| t[a..b].iter().fold(0u32, |acc, c| acc * 10 + u32::from(c - b'0'));
        let year = num(0, 4) as i32;
        if (year - y).abs() <= 30 {
            candidates.extend(checked(year, num(4, 6), num(6, 8)));
        }
    }
    match candidates.choose(rng) {
        Some(&day) => day,
        None => {
            let step = if d % 10 == 9 || checked(y, m, d + 1).is_none() { -1 } else { 1 };
            dob + step
        }
    }
}

/// Officer notes without CSV-special characters.
const NOTES: &[&str] = &[
    "Referred after contact; agreed to meet case manager",
    "Social contact, offered program",
    "Referred at transit center",
    "Possession under 1g; diverted per protocol",
];
/// Officer notes with a comma, double quotes and a line break: they need CSV quoting.
const MESSY_NOTES: &[&str] = &[
    "Contact on Cerrillos Rd, near the bus stop.\nSaid \"ready to talk\"",
    "Stated \"I want help\", referred.\nCase manager notified",
    "Found with syringe, no weapon.\nCalm, \"cooperative\"",
    "Referred on a \"greenlight\" shift, 2nd contact\nFollow-up in 2 weeks",
];
const REASONS_ENROLLED: &[&str] = &["Intake completed", "Enrolled at intake"];
const REASONS_EJECTED: &[&str] = &["No contact for 90 days", "New charge; returned to prosecution"];
const REASONS_COMPLETED: &[&str] = &["Completed plan goals", "Stable housing; employed part time"];
const MESSY_REASONS: &[&str] = &[
    "Plan goals: housing, MAT.\nNotes say \"engaged\"",
    "Closed by case manager, \"no contact\"\nfor 3 months",
    "Graduated, \"all goals met\"\nFollow-up scheduled",
];

/// The free-text field of a record, if its kind has one: officer notes on
/// referrals, the reason on program status. Some carry commas, quotes and a
/// line break, as free text typed by people does.
pub fn free_text<R: Rng>(rng: &mut R, what: &What, share: f64, messy_share: f64) -> Option<Box<str>> {
    let clean: &[&str] = match what {
        What::Referral { .. } => NOTES,
        What::ProgramStatus { status: Status::Enrolled } => REASONS_ENROLLED,
        What::ProgramStatus { status: Status::Ejected } => REASONS_EJECTED,
        What::ProgramStatus { status: Status::Completed } => REASONS_COMPLETED,
        _ => return None,
    };
    if !chance(rng, share) {
        return None;
    }
    let messy = if matches!(what, What::Referral { .. }) { MESSY_NOTES } else { MESSY_REASONS };
    let list = if chance(rng, messy_share) { messy } else { clean };
    list.choose(rng).map(|s| Box::from(*s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::dates::days_from_civil;
    use crate::synth::dist::stream;
    use crate::synth::model::Race;
    use crate::synth::names::Suffix;

    fn person() -> Person {
        Person {
            given: "William",
            family: "Muñoz",
            second_family: Some("Björk"),
            suffix: Some(Suffix::Jr),
            dob: days_from_civil(1980, 3, 14),
            sex: Sex::Male,
            race: Race::Hispanic,
            state_id: 12_345_678,
            residence: crate::synth::places::Residence { city: 0, zip: Some(98103) },
            referred: true,
        }
    }

    fn rates(v: f64) -> RecordingRates {
        RecordingRates {
            typo: v,
            nickname: v,
            swapped_names: v,
            dob_error: v,
            sex_missing: v,
            state_id: 1.0 - v,
            upper_case: v,
            strip_diacritics: v,
            one_family_part: v,
            suffix: v,
            dob_missing: 0.0,
            dob_invalid: v,
            id_error: v,
            given_split: 0.0,
            middle_name: v,
            several_errors: v,
            city_missing: v,
            zip_missing: v,
            place_spacing: v,
            other_residence: v,
            local_id_duplicate: v,
        }
    }

    #[test]
    fn no_differences_at_rate_zero() {
        let mut rng = stream(1, 0, 0);
        let r = record(&mut rng, &person(), &rates(0.0));
        assert_eq!((r.given.as_ref(), r.family.as_ref()), ("William", "Muñoz-Björk"));
        assert_eq!((r.dob, r.sex, r.state_id), (person().dob, Some(Sex::Male), Some(12_345_678)));
        assert_eq!(r.dob_written, DobWritten::Date);
    }

    #[test]
    fn wrong_id_differs_in_one_digit_or_one_transposition() {
        let mut rng = stream(1, 0, 3);
        for id in [12_345_678u32, 1, 99_999_999, 10_000_000, 55_555_556] {
            for _ in 0..50 {
                let w = wrong_id(&mut rng, id);
                assert_ne!(w, id);
                let (a, b) = (format!("{id:08}").into_bytes(), format!("{w:08}").into_bytes());
                let diff: Vec<usize> = (0..8).filter(|&i| a[i] != b[i]).collect();
                let transposed = diff.len() == 2 && diff[1] == diff[0] + 1 && a[diff[0]] == b[diff[1]];
                assert!(diff.len() == 1 || transposed, "{id} -> {w}");
            }
        }
    }

    #[test]
    fn missing_and_invalid_dobs_and_split_given_names() {
        let mut rng = stream(1, 0, 4);
        let mut r = rates(0.0);
        r.dob_missing = 1.0;
        assert_eq!(record(&mut rng, &person(), &r).dob_written, DobWritten::Missing);
        r.dob_missing = 0.0;
        r.dob_invalid = 1.0;
        let DobWritten::Invalid(text) = record(&mut rng, &person(), &r).dob_written else { panic!("not invalid") };
        let mut out = String::new();
        assert!(crate::normalize::normalize(crate::normalize::NormKind::Date, text, &mut out).is_err());
        r.dob_invalid = 0.0;
        r.given_split = 1.0;
        let g = record(&mut rng, &person(), &r).given;
        assert_eq!(g.replace(' ', ""), "William");
        assert!(g.contains(' ') && !g.starts_with(' ') && !g.ends_with(' '));
    }

    #[test]
    fn every_difference_at_rate_one() {
        let mut rng = stream(1, 0, 1);
        let r = record(&mut rng, &person(), &rates(1.0));
        // Swapped: the family name column holds the (typo'd, upper-cased) nickname.
        assert!(r.family.chars().all(|c| !c.is_lowercase()), "{r:?}");
        assert!(r.given.contains("JR") || r.given.contains("MUN") || r.given.contains("BJO"), "{r:?}");
        assert!(r.given.is_ascii() && r.family.is_ascii());
        assert_ne!(r.dob, person().dob);
        assert_eq!((r.sex, r.state_id), (None, None));
    }

    #[test]
    fn wrong_dob_is_a_different_real_date() {
        let mut rng = stream(1, 0, 2);
        let (mut tried, mut changed) = (0, 0);
        for day in (days_from_civil(1940, 1, 1)..days_from_civil(2005, 1, 1)).step_by(7) {
            let w = wrong_dob(&mut rng, day);
            tried += 1;
            changed += usize::from(w != day);
            let (y0, ..) = civil_from_days(day);
            assert!((civil_from_days(w).0 - y0).abs() <= 30);
        }
        assert_eq!(changed, tried);
    }
}
