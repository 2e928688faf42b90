//! Given and family names: canonical form is lowercase `a-z` only.
//!
//! Both rules split the (ASCII or folded) input into words (see `words`):
//! apostrophes join (`O'Brien` → `obrien`), every other non-alphanumeric
//! character separates, and digits are dropped from the output.
//!
//! **Titles** (`mr mrs ms mx miss dr rev revd prof hon fr sr`) are removed
//! only at the start of the field (`Dr. Rev. Smith` → `smith`).
//! **Generational suffixes** (`jr jnr sr snr ii iii iv v 2nd 3rd 4th esq`)
//! are removed wherever they stand as words (`Garcia, Jr.` → `garcia`).
//! If removing titles and suffixes would leave nothing, nothing is removed
//! (a family name that is literally `Hon` stays `hon`). A word containing an
//! apostrophe is never a title or suffix (`M'iss` is part of a name).
//!
//! **Family names**: all remaining words joined (`De La Cruz` → `delacruz`,
//! `Smith-Jones` = `Smith Jones` = `SmithJones`); the word `saint` is written
//! `st` (`Saint John` = `St. John` → `stjohn`).
//!
//! **Given names**: only the first remaining word is kept, together with the
//! words hyphen-joined to it: `John Quincy` → `john`, `John Q.` → `john`,
//! but `Mary-Ann` → `maryann` (= `MaryAnn`). Consequence: `Mary Ann` →
//! `mary`, which does not agree with `Mary-Ann`; a space is read as "middle
//! name follows", a hyphen as "one compound name". The result is then mapped
//! through the nickname table (`Billy` → `william`).

use super::nicknames;
use super::words::{has_letter, key_bytes, push_letters, Key, Words};

/// Leading titles (removed only at the start of the field).
fn is_title(key: &[u8]) -> bool {
    matches!(
        key,
        b"mr" | b"mrs" | b"ms" | b"mx" | b"miss" | b"dr" | b"rev" | b"revd" | b"prof" | b"hon" | b"fr" | b"sr"
    )
}

/// Generational and honorific suffixes (removed anywhere).
fn is_suffix(key: &[u8]) -> bool {
    matches!(key, b"jr" | b"jnr" | b"sr" | b"snr" | b"ii" | b"iii" | b"iv" | b"v" | b"2nd" | b"3rd" | b"4th" | b"esq")
}

/// Whether a word would be removed as a title or suffix in some position.
/// Used by tests that generate name variants.
#[cfg(test)]
pub(crate) fn is_affix_word(word: &str) -> bool {
    let k = Key::of(word.as_bytes());
    let k = key_bytes(&k);
    is_title(k) || is_suffix(k)
}

/// Family name of ASCII input; leaves `out` empty when nothing remains.
pub(crate) fn family(s: &[u8], out: &mut String) {
    let mut leading = true;
    for w in Words::new(s) {
        let k = Key::of(w.bytes);
        let k = key_bytes(&k);
        if leading && is_title(k) {
            continue;
        }
        if !has_letter(w.bytes) {
            continue;
        }
        leading = false;
        if is_suffix(k) {
            continue;
        }
        if k == b"saint" {
            out.push_str("st");
        } else {
            push_letters(w.bytes, out);
        }
    }
    if out.is_empty() {
        // Everything was a title or suffix: keep it all rather than lose the field.
        for w in Words::new(s) {
            push_letters(w.bytes, out);
        }
    }
}

/// Given name of ASCII input, nickname-mapped; leaves `out` empty when
/// nothing remains.
pub(crate) fn given(s: &[u8], out: &mut String) {
    select_given(s, true, out);
    if out.is_empty() {
        select_given(s, false, out);
    }
    if let Some(canonical) = nicknames::canonical(out) {
        out.clear();
        out.push_str(canonical);
    }
}

/// First word (after titles, skipping suffixes when `strip`) plus the words
/// hyphen-joined to it.
fn select_given(s: &[u8], strip: bool, out: &mut String) {
    let mut leading = true;
    let mut started = false;
    for w in Words::new(s) {
        let k = Key::of(w.bytes);
        let k = key_bytes(&k);
        if started {
            if !w.hyphen_before {
                break;
            }
            if !(strip && is_suffix(k)) {
                push_letters(w.bytes, out);
            }
            continue;
        }
        if strip && leading && is_title(k) {
            continue;
        }
        if !has_letter(w.bytes) {
            continue;
        }
        leading = false;
        if strip && is_suffix(k) {
            continue;
        }
        push_letters(w.bytes, out);
        started = true;
    }
}

/// Words that begin a family name written after the given name (`Maria de
/// la Cruz`, `Ludwig van Beethoven`): a whole name without a comma keeps
/// them with the family name, as the family-name rule joins them (`delacruz`).
fn is_particle(key: &[u8]) -> bool {
    matches!(
        key,
        b"da"
            | b"das"
            | b"de"
            | b"del"
            | b"dela"
            | b"della"
            | b"der"
            | b"des"
            | b"den"
            | b"di"
            | b"do"
            | b"dos"
            | b"du"
            | b"la"
            | b"le"
            | b"lo"
            | b"van"
            | b"vander"
            | b"von"
            | b"ter"
            | b"ten"
            | b"bin"
            | b"ibn"
            | b"al"
            | b"el"
            | b"st"
            | b"saint"
    )
}

/// A word of a whole name without the dots and commas around it (`Jr.,` → `Jr`).
fn bare(word: &str) -> &str {
    word.trim_matches(|c: char| c == '.' || c == ',')
}

/// Whether a word of a whole name is on a word list (its [`Key`], no allocation).
fn listed(word: &str, list: fn(&[u8]) -> bool) -> bool {
    list(key_bytes(&Key::of(bare(word).as_bytes())))
}

/// Split a whole name, as exports write it in one column, into its given
/// and family parts: `(given, family)`, both slices of `s`, for the given-
/// and family-name rules to normalize.
///
/// - `Family, Given Middle` (a comma): the family part is before the first
///   comma (`Doe Jr, John` → `Doe Jr`, whose suffix the family rule drops).
///   A comma before suffixes only (`John Doe, Jr.`) is not that comma.
/// - `Given Middle Family` (no comma): the family part is the last word
///   that is neither a suffix nor an initial, with the particles before it
///   (`Maria de la Cruz` → `de la Cruz`) and any words hyphen-joined to it;
///   the given part is what comes before it, and what follows it (`Jr.`,
///   a middle initial) is left out. One word is a family name alone.
///
/// `Family Given` without a comma is read the other way round; the schemes
/// that hold both names unordered still agree on it (also with a middle
/// initial, `DOE JOHN A`), but not with a whole middle name (`DOE JOHN
/// ALLEN` reads as given `Doe`, family `Allen`): only a comma says which
/// word is the family name.
pub fn split_full_name(s: &str) -> (&str, &str) {
    if let Some(comma) = s.find(',') {
        let after = &s[comma + 1..];
        let only_suffixes = after.split_whitespace().all(|w| bare(w).is_empty() || listed(w, is_suffix));
        if !only_suffixes {
            return (after, &s[..comma]);
        }
    }
    let words: Vec<(usize, &str)> =
        s.split_whitespace().map(|w| (w.as_ptr() as usize - s.as_ptr() as usize, w)).collect();
    // The family name's last word: not a suffix, and not an initial (`DOE
    // JOHN A` ends in a middle initial) unless every word is one.
    let named = |&(_, w): &(usize, &str)| !bare(w).is_empty() && !listed(w, is_suffix);
    let initial = |&(_, w): &(usize, &str)| bare(w).chars().count() == 1;
    let Some(core) = words.iter().rposition(|w| named(w) && !initial(w)).or_else(|| words.iter().rposition(named))
    else {
        return ("", s);
    };
    let mut first = core;
    while first > 1 {
        let (_, before) = words[first - 1];
        let (_, this) = words[first];
        let joined = before.ends_with('-') || this.starts_with('-');
        if !(joined || listed(before, is_particle)) {
            break;
        }
        first -= 1;
    }
    // Up to the end of that word: what follows is suffixes and initials.
    let at = words[first].0;
    let end = words[core].0 + words[core].1.len();
    (&s[..at], &s[at..end])
}

#[cfg(test)]
mod tests {
    use super::super::{normalize, NormError, NormKind};

    fn given(s: &str) -> String {
        let mut out = String::new();
        normalize(NormKind::GivenName, s, &mut out).map(|()| out).unwrap()
    }

    fn family(s: &str) -> String {
        let mut out = String::new();
        normalize(NormKind::FamilyName, s, &mut out).map(|()| out).unwrap()
    }

    #[test]
    fn diacritics() {
        assert_eq!(family("Muñoz"), "munoz");
        assert_eq!(given("José"), "jose");
        assert_eq!(family("Nguyễn"), "nguyen");
        assert_eq!(family("NGUYỄN"), "nguyen");
        assert_eq!(family("Müller"), "muller");
        assert_eq!(family("Strauß"), "strauss");
        assert_eq!(family("Søren\u{AD}sen"), "sorensen");
        assert_eq!(family("Wałęsa"), "walesa");
        assert_eq!(family("Đỗ"), "do");
        assert_eq!(family("Ægir"), "aegir");
        assert_eq!(family("Şahin"), "sahin");
        assert_eq!(family("Иванов"), "ivanov");
    }

    #[test]
    fn whole_names_split_into_given_and_family() {
        use super::split_full_name as split;
        let names = |s| {
            let (g, f) = split(s);
            (given(g), family(f))
        };
        let doe = ("john".to_string(), "doe".to_string());
        for v in [
            "DOE, JOHN",
            "Doe, John A.",
            "DOE,JOHN ALLEN",
            "John Doe",
            "JOHN A DOE",
            "John A. Doe Jr.",
            "John Doe, Jr.",
            "DOE JR, JOHN",
            "Doe, Jr., John",
            "Mr. John Doe",
            "  John   Doe  ",
            "Johnny Doe",
        ] {
            assert_eq!(names(v), doe, "{v}");
        }
        for v in ["Maria de la Cruz", "DE LA CRUZ, MARIA", "Maria De La Cruz"] {
            assert_eq!(names(v), ("maria".to_string(), "delacruz".to_string()), "{v}");
        }
        for v in ["Mary Ann Smith-Jones", "Mary Smith - Jones", "SMITH-JONES, MARY ANN"] {
            assert_eq!(names(v), ("mary".to_string(), "smithjones".to_string()), "{v}");
        }
        assert_eq!(names("Ludwig van Beethoven"), ("ludwig".to_string(), "vanbeethoven".to_string()));
        // One word: a family name alone. The first word always stays given.
        assert_eq!(split("Doe"), ("", "Doe"));
        assert_eq!(split("De Cruz"), ("De ", "Cruz"));
        assert_eq!(split("Doe, "), ("", "Doe,"));
        assert_eq!(split(", John"), (" John", ""));
        assert_eq!(split(""), ("", ""));
        assert_eq!(split("Jr."), ("", "Jr."));
        assert_eq!(split("John Doe Jr."), ("John ", "Doe"));
        // A word longer than any listed word is still a name.
        assert_eq!(split("Ann Wolfeschlegelsteinhausen"), ("Ann ", "Wolfeschlegelsteinhausen"));
        // Without a comma the family name is taken last: "Doe John" reads John as the family name,
        // and a middle initial after it is no family name.
        assert_eq!(names("DOE JOHN"), ("doe".to_string(), "john".to_string()));
        assert_eq!(names("DOE JOHN A"), ("doe".to_string(), "john".to_string()));
        assert_eq!(names("DOE JOHN A."), ("doe".to_string(), "john".to_string()));
        assert_eq!(split("J D"), ("J ", "D"));
        // Not ASCII: split on whitespace all the same.
        assert_eq!(split("Zoë Ñúñez"), ("Zoë ", "Ñúñez"));
    }

    #[test]
    fn punctuation_and_spacing() {
        for v in ["O'Brien", "OBRIEN", "o brien", "O\u{2019}Brien", "o'brien ", "O. Brien"] {
            assert_eq!(family(v), "obrien", "{v}");
        }
        for v in ["Smith-Jones", "Smith Jones", "SmithJones", "smith \u{2013} jones"] {
            assert_eq!(family(v), "smithjones", "{v}");
        }
        assert_eq!(family("De La Cruz"), "delacruz");
        assert_eq!(family("de la cruz"), "delacruz");
        assert_eq!(family("DeLaCruz"), "delacruz");
        assert_eq!(family("Saint John"), "stjohn");
        assert_eq!(family("St. John"), "stjohn");
        assert_eq!(family("Smith2"), "smith");
    }

    #[test]
    fn suffixes() {
        for v in [
            "Garcia, Jr.",
            "Garcia Jr",
            "GARCIA JR.",
            "Garcia Sr.",
            "Garcia III",
            "Garcia, II",
            "Garcia IV",
            "Garcia V",
            "Garcia 2nd",
            "Garcia 3rd",
            "Garcia, Esq.",
            "Garcia Jr., Esq.",
        ] {
            assert_eq!(family(v), "garcia", "{v}");
        }
        assert_eq!(given("John Jr."), "john");
        assert_eq!(given("Jr. John"), "john");
        // the only word is never removed
        assert_eq!(family("Jr"), "jr");
        assert_eq!(family("V"), "v");
        assert_eq!(given("V"), "v");
    }

    #[test]
    fn titles() {
        for v in ["Mr. John", "Mr John", "MR. JOHN", "Dr. John", "Rev Dr John", "Prof. John"] {
            assert_eq!(given(v), "john", "{v}");
        }
        assert_eq!(given("Sr. Mary"), "mary");
        assert_eq!(given("Miss Jane"), "jane");
        assert_eq!(given("Mrs. Jane"), "jane");
        assert_eq!(given("Hon. Jane"), "jane");
        assert_eq!(family("Dr. Smith"), "smith");
        // not at the start: not a title
        assert_eq!(family("Smith Hon"), "smithhon");
        assert_eq!(family("Hon"), "hon");
        assert_eq!(given("Miss"), "miss");
    }

    #[test]
    fn given_name_words() {
        assert_eq!(given("John Quincy"), "john");
        assert_eq!(given("John Q."), "john");
        assert_eq!(given("Mary-Ann"), "maryann");
        assert_eq!(given("Mary - Ann"), "maryann");
        assert_eq!(given("MaryAnn"), "maryann");
        assert_eq!(given("Mary Ann"), "mary");
        assert_eq!(given("Jean-Pierre Luc"), "jeanpierre");
        assert_eq!(given("D'Andre"), "dandre");
        assert_eq!(given("  ,John"), "john");
        assert_eq!(given("123 John"), "john");
    }

    #[test]
    fn nicknames() {
        for (v, c) in [
            ("Bill", "william"),
            ("Billy", "william"),
            ("will", "william"),
            ("Bob", "robert"),
            ("Bobby", "robert"),
            ("Rob", "robert"),
            ("Liz", "elizabeth"),
            ("Beth", "elizabeth"),
            ("Betty", "elizabeth"),
            ("Eliza", "elizabeth"),
            ("Mike", "michael"),
            ("Mick", "michael"),
            ("Jim", "james"),
            ("Jimmy", "james"),
            ("Jamie", "james"),
            ("Kate", "katherine"),
            ("Katie", "katherine"),
            ("Kathy", "katherine"),
            ("Catherine", "katherine"),
            ("Kathryn", "katherine"),
            ("Tony", "anthony"),
            ("Joe", "joseph"),
            ("Joey", "joseph"),
            ("Dave", "david"),
            ("Chris", "christopher"),
            ("Jen", "jennifer"),
            ("Jenny", "jennifer"),
            ("Sue", "susan"),
            ("Susie", "susan"),
            ("Tom", "thomas"),
            ("Tommy", "thomas"),
            ("Dan", "daniel"),
            ("Danny", "daniel"),
            ("Rick", "richard"),
            ("Rich", "richard"),
            ("Dick", "richard"),
            ("Pat", "patricia"),
            ("Patty", "patricia"),
            ("Peggy", "margaret"),
            ("Maggie", "margaret"),
            ("Meg", "margaret"),
            ("Sandy", "sandra"),
            ("Becky", "rebecca"),
            ("Steve", "steven"),
            ("Stephen", "steven"),
            ("Matt", "matthew"),
            ("Nick", "nicholas"),
            ("Alex", "alexander"),
            ("Sam", "samuel"),
            ("Ben", "benjamin"),
            ("Andy", "andrew"),
            ("Drew", "andrew"),
            ("Greg", "gregory"),
            ("Larry", "lawrence"),
            ("Jerry", "gerald"),
            ("Ron", "ronald"),
            ("Don", "donald"),
            ("Ed", "edward"),
            ("Eddie", "edward"),
            ("Ted", "edward"),
            ("Frank", "francis"),
            ("Jack", "john"),
            ("Johnny", "john"),
            ("Josh", "joshua"),
            ("Tim", "timothy"),
            ("Ken", "kenneth"),
            ("Vicky", "victoria"),
            ("Debbie", "deborah"),
            ("Cindy", "cynthia"),
            ("Jackie", "jacqueline"),
            ("Tina", "christina"),
            ("Terry", "teresa"),
            ("Angie", "angela"),
            ("Barb", "barbara"),
            ("Jess", "jessica"),
            ("Mandy", "amanda"),
            ("Abby", "abigail"),
            ("Nate", "nathan"),
            ("William", "william"),
            ("Mr. Billy Bob", "william"),
            ("Wm.", "william"),
        ] {
            assert_eq!(given(v), c, "{v}");
        }
        // nickname mapping is for given names only
        assert_eq!(family("Bill"), "bill");
    }

    #[test]
    fn empty() {
        let mut out = String::from("stale");
        for v in ["", "   ", "-", "'", "123", ".,;", "王", "😀"] {
            assert_eq!(normalize(NormKind::GivenName, v, &mut out), Err(NormError::Empty), "{v:?}");
            assert_eq!(normalize(NormKind::FamilyName, v, &mut out), Err(NormError::Empty), "{v:?}");
        }
    }
}
