//! Street addresses, places (cities, counties, birthplaces) and postal codes.
//!
//! Addresses and places: lowercase ASCII letters and digits, the words
//! joined without spaces, so a space typed inside a word, or left out
//! between two, does not matter (`Poynton St` = `PoyntonSt`, `Nicklin
//! Cre scent` = `Nicklin Crescent`); apostrophes join (`O'Connor` →
//! `oconnor`), every other punctuation character separates words.
//!
//! Addresses first use the USPS standard abbreviations for street
//! suffixes (`street`→`st`, `avenue`→`ave`, ...), directionals (`north`→`n`,
//! `northeast`→`ne`, ...), and a single secondary-unit designator: `apartment`,
//! `apt`, `unit`, `suite`, `ste` and `#` all become `apt`, and repeated
//! designators collapse (`Apt #4` → `apt4`). `P.O. Box`, `PO Box` and
//! `Post Office Box` become `pobox`. `saint`/`fort`/`mount` become
//! `st`/`ft`/`mt`, as in places. A street type run into the name before it
//! (`Poyntonstreet`) is abbreviated too, where it is one of the longer types
//! ([`GLUED_TYPES`]: not `road` or `lane`, which end other words, `Broad`).
//! (Up to this release words were joined by spaces: the tokens of schemes
//! holding an address changed, every other token did not.)
//!
//! Places: only `saint`→`st`, `fort`→`ft`, `mount`→`mt`; then the words are
//! joined without spaces, so a space typed inside a name, or left out, does
//! not matter (`Mc Kinley` = `McKinley` = `Mc-Kinley` → `mckinley`,
//! `Saint Louis` → `stlouis`).
//!
//! Postal codes: letters and digits, uppercase; if the result is 5 or 9 digits
//! (a US ZIP or ZIP+4, with or without the hyphen) only the 5-digit ZIP is
//! kept. A value with no digit (`HOMELESS`, `UNKNOWN`, `N/A`) or of one
//! repeated character (`00000`, `99999`) is a placeholder, not a code: it is
//! left empty (missing), so persons without an address never agree on one.

use super::words::{key_bytes, push_alnum, Key, Words};

/// Address abbreviation for a word key, if any.
fn address_abbrev(key: &[u8]) -> Option<&'static str> {
    Some(match key {
        b"street" | b"str" | b"strt" => "st",
        b"avenue" | b"av" | b"aven" | b"avenu" | b"avn" | b"avnue" => "ave",
        b"road" => "rd",
        b"boulevard" | b"boul" | b"boulv" => "blvd",
        b"drive" | b"driv" | b"drv" => "dr",
        b"lane" => "ln",
        b"court" => "ct",
        b"place" => "pl",
        b"terrace" | b"terr" => "ter",
        b"circle" | b"circ" | b"crcl" => "cir",
        b"highway" | b"hiway" | b"hiwy" | b"highwy" => "hwy",
        b"parkway" | b"parkwy" | b"pkway" | b"pky" => "pkwy",
        b"square" | b"sqr" => "sq",
        b"trail" | b"trails" => "trl",
        b"expressway" | b"expy" | b"expw" => "expy",
        b"freeway" | b"frwy" => "fwy",
        b"center" | b"centre" | b"cntr" | b"cent" => "ctr",
        b"heights" => "hts",
        b"crossing" | b"crssng" => "xing",
        b"plaza" | b"plza" => "plz",
        b"alley" | b"ally" => "aly",
        b"point" => "pt",
        b"route" => "rte",
        b"turnpike" | b"trnpk" => "tpke",
        b"junction" => "jct",
        b"mountain" => "mtn",
        b"mount" => "mt",
        b"fort" => "ft",
        b"saint" => "st",
        b"north" => "n",
        b"south" => "s",
        b"east" => "e",
        b"west" => "w",
        b"northeast" => "ne",
        b"northwest" => "nw",
        b"southeast" => "se",
        b"southwest" => "sw",
        b"apartment" | b"apt" | b"unit" | b"suite" | b"ste" | b"#" => "apt",
        b"building" | b"bldg" => "bldg",
        b"floor" => "fl",
        b"room" => "rm",
        b"department" => "dept",
        _ => return None,
    })
}

/// Place abbreviation for a word key, if any.
fn place_abbrev(key: &[u8]) -> Option<&'static str> {
    Some(match key {
        b"saint" => "st",
        b"fort" => "ft",
        b"mount" => "mt",
        _ => return None,
    })
}

/// Street types that may be run into the word before them
/// (`Poyntonstreet`), with their abbreviations: five letters or more, so
/// the end of another word is not taken for one.
const GLUED_TYPES: [(&str, &str); 12] = [
    ("street", "st"),
    ("avenue", "ave"),
    ("boulevard", "blvd"),
    ("drive", "dr"),
    ("court", "ct"),
    ("place", "pl"),
    ("terrace", "ter"),
    ("circle", "cir"),
    ("highway", "hwy"),
    ("parkway", "pkwy"),
    ("square", "sq"),
    ("crossing", "xing"),
];

/// A space between two words only where a number would run into a number:
/// `1 23rd St` and `12 3rd St` stay two addresses.
fn separate_numbers(out: &mut String, next: &[u8]) {
    let next_digit = next.iter().find(|b| b.is_ascii_alphanumeric()).is_some_and(u8::is_ascii_digit);
    if next_digit && out.as_bytes().last().is_some_and(u8::is_ascii_digit) {
        out.push(' ');
    }
}

fn push_word(out: &mut String, w: &str) {
    separate_numbers(out, w.as_bytes());
    out.push_str(w);
}

/// Address of ASCII input; leaves `out` empty when nothing remains.
///
/// Two passes of the same rules, the second over the first's output:
/// joining words can make a listed word (`Sain t` → `saint` → `st`, `Elm
/// Cour t` → `elmcourt` → `elmct`), and the second pass gives it the form
/// it would have had typed whole, so the result is a fixed point.
pub(crate) fn address(s: &[u8], out: &mut String) {
    // Room for the first pass's whole output (see `normalize::room`): the
    // value is never moved, and is wiped when dropped.
    let mut first = zeroize::Zeroizing::new(String::with_capacity(super::rule_room(s.len())));
    let cap = first.capacity();
    address_pass(s, &mut first);
    debug_assert_eq!(first.capacity(), cap, "an address pass outgrew its room");
    address_pass(first.as_bytes(), out);
}

fn address_pass(s: &[u8], out: &mut String) {
    let mut words = Words::with_hash(s);
    let mut last_was_apt = false;
    while let Some(w) = words.next() {
        let k = Key::of_unquoted(w.bytes);
        let k = key_bytes(&k);
        if !w.bytes.iter().any(|&b| b.is_ascii_alphanumeric() || b == b'#') {
            continue; // only apostrophes
        }
        // P.O. Box / Post Office Box → po box
        if k == b"p" || k == b"post" {
            let second: &[u8] = if k == b"p" { b"o" } else { b"office" };
            let mut ahead = words.clone();
            if let (Some(o), Some(b)) = (ahead.next(), ahead.next()) {
                if key_bytes(&Key::of_unquoted(o.bytes)) == second && key_bytes(&Key::of_unquoted(b.bytes)) == b"box" {
                    words.next();
                    push_word(out, "po");
                    last_was_apt = false;
                    continue;
                }
            }
        }
        match address_abbrev(k) {
            Some("apt") => {
                if !last_was_apt {
                    push_word(out, "apt");
                }
                last_was_apt = true;
            }
            Some(a) => {
                push_word(out, a);
                last_was_apt = false;
            }
            None => {
                separate_numbers(out, w.bytes);
                let start = out.len();
                push_alnum(w.bytes, out);
                last_was_apt = false;
                // A street type run into the name before it: abbreviated as if apart.
                let word = out.get(start..).unwrap_or_default();
                if let Some((full, abbr)) =
                    GLUED_TYPES.iter().find(|(full, _)| word.len() > full.len() && word.ends_with(full))
                {
                    out.truncate(out.len() - full.len());
                    out.push_str(abbr);
                }
            }
        }
    }
}

/// Place of ASCII input; leaves `out` empty when nothing remains.
pub(crate) fn place(s: &[u8], out: &mut String) {
    for w in Words::new(s) {
        if !w.bytes.iter().any(u8::is_ascii_alphanumeric) {
            continue;
        }
        // Words are joined: "Mc Kinley", "McKinley" and "Mc-Kinley" are one place.
        let k = Key::of_unquoted(w.bytes);
        match place_abbrev(key_bytes(&k)) {
            Some(a) => out.push_str(a),
            None => push_alnum(w.bytes, out),
        }
    }
    // Joining can make a listed word ("Sain t"): abbreviate it too, so the form is idempotent.
    if let Some(a) = place_abbrev(out.as_bytes()) {
        out.clear();
        out.push_str(a);
    }
}

/// Postal code of ASCII input; leaves `out` empty when nothing remains.
pub(crate) fn postal(s: &[u8], out: &mut String) {
    for &b in s {
        if b.is_ascii_alphanumeric() {
            out.push(b.to_ascii_uppercase() as char);
        }
    }
    if (out.len() == 5 || out.len() == 9) && out.bytes().all(|b| b.is_ascii_digit()) {
        out.truncate(5);
    }
    if super::one_character_repeated(out, 3) || !out.bytes().any(|b| b.is_ascii_digit()) {
        out.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{normalize, NormError, NormKind};

    fn norm(kind: NormKind, s: &str) -> Result<String, NormError> {
        let mut out = String::new();
        normalize(kind, s, &mut out).map(|()| out)
    }

    fn addr(s: &str) -> String {
        norm(NormKind::Address, s).unwrap()
    }

    #[test]
    fn addresses() {
        for v in [
            "123 North Main Street, Apartment 4",
            "123 N. Main St. Apt. 4",
            "123 N MAIN ST #4",
            "123 n main st apt #4",
            "123 N Main St, Unit 4",
            "123 N Main St Suite 4",
            "123  N  Main   St  Ste 4",
            "123 N. Main St., # 4",
        ] {
            assert_eq!(addr(v), "123nmainstapt4", "{v}");
        }
        assert_eq!(addr("45 Martin Luther King Jr. Boulevard"), "45martinlutherkingjrblvd");
        assert_eq!(addr("9 O'Connor Avenue"), "9oconnorave");
        assert_eq!(addr("9 Elm St're'et"), "9elmst");
        assert_eq!(addr("1 Saint Paul Road"), "1stpaulrd");
        assert_eq!(addr("77 Southwest Elm Lane"), "77swelmln");
        assert_eq!(addr("P.O. Box 12"), "pobox12");
        assert_eq!(addr("PO Box 12"), "pobox12");
        assert_eq!(addr("Post Office Box 12"), "pobox12");
        assert_eq!(addr("p o"), "po");
        assert_eq!(addr("1 Rue de l'Église"), "1ruedeleglise");
        assert_eq!(addr("12-B Court Place"), "12bctpl");
        assert_eq!(addr("#"), "apt");
        // A space typed inside a word, or left out between two, does not matter.
        for v in ["87 Poynton Street", "87 poyntonstreet", "87 Poynton St", "87 PoyntonSt.", "87 Poyn ton Street"] {
            assert_eq!(addr(v), "87poyntonst", "{v}");
        }
        assert_eq!(addr("6 Nicklin Cre scent"), addr("6 Nicklin Crescent"));
        // Only the longer street types are taken off a word's end: "Broad" is no road.
        assert_eq!(addr("12 Broad"), "12broad");
        assert_eq!(addr("12 Broadway"), "12broadway");
        // A word made by joining gets the form it has typed whole (and the result is a fixed point).
        assert_eq!(addr("Sain t"), "st");
        assert_eq!(addr("9 Elm Cour t"), "9elmct");
        for v in
            ["1 Sain t", "1 Sain t Paul Road", "No rth Elm", "9 Elm Cour t", "Apar tment 4", "1 23rd St", "p o box 5"]
        {
            assert_eq!(addr(&addr(v)), addr(v), "{v}");
        }
        // Numbers do not run into numbers: these stay two addresses.
        assert_ne!(addr("1 23rd St"), addr("12 3rd St"));
        assert_ne!(addr("101 St Ave"), addr("10 1st Ave"));
        assert_eq!(addr("1 23rd St"), "1 23rdst");
        assert_eq!(norm(NormKind::Address, " ,. "), Err(NormError::Empty));
    }

    #[test]
    fn places() {
        let p = |s| norm(NormKind::Place, s).unwrap();
        assert_eq!(p("Saint Louis"), "stlouis");
        assert_eq!(p("St. Louis"), "stlouis");
        assert_eq!(p("ST LOUIS"), "stlouis");
        assert_eq!(p("Fort Worth"), "ftworth");
        assert_eq!(p("Ft. Worth"), "ftworth");
        assert_eq!(p("Mount Vernon"), "mtvernon");
        assert_eq!(p("Mt Vernon"), "mtvernon");
        assert_eq!(p("Winston-Salem"), "winstonsalem");
        assert_eq!(p("Coeur d'Alene"), "coeurdalene");
        assert_eq!(p("San José"), "sanjose");
        assert_eq!(p("  Los   Angeles  "), "losangeles");
        assert_eq!(p("Street"), "street");
        assert_eq!(norm(NormKind::Place, "--"), Err(NormError::Empty));
    }

    #[test]
    fn place_spacing_variants_agree() {
        let p = |s| norm(NormKind::Place, s).unwrap();
        for v in ["McKinley", "Mc Kinley", "Mc-Kinley", "MC KIN LEY", "mckinley "] {
            assert_eq!(p(v), "mckinley", "{v}");
        }
        assert_eq!(p("Sain t"), "st");
        assert_eq!(p("st"), "st");
    }

    #[test]
    fn postal_codes() {
        let p = |s| norm(NormKind::PostalCode, s);
        assert_eq!(p("02134").as_deref(), Ok("02134"));
        assert_eq!(p(" 02134-1234 ").as_deref(), Ok("02134"));
        assert_eq!(p("021341234").as_deref(), Ok("02134"));
        assert_eq!(p("02134 1234").as_deref(), Ok("02134"));
        assert_eq!(p("k1a 0b1").as_deref(), Ok("K1A0B1"));
        assert_eq!(p("SW1A 1AA").as_deref(), Ok("SW1A1AA"));
        assert_eq!(p("1234").as_deref(), Ok("1234"));
        assert_eq!(p("12345678").as_deref(), Ok("12345678"));
        assert_eq!(p(" - "), Err(NormError::Empty));
        // What systems write for a person with no address is no code: it must not link them.
        for v in ["HOMELESS", "Transient", "unknown", "N/A", "00000", "99999", "00000-0000"] {
            assert_eq!(p(v), Err(NormError::Empty), "{v:?}");
        }
        assert_eq!(p("10001").as_deref(), Ok("10001"));
    }
}
