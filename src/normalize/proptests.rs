//! Property tests of normalization: variants of one person agree, distinct
//! persons stay distinct, and arbitrary input never panics.

use super::names::is_affix_word;
use super::{nickname_groups, normalize, parse_date, NormError, NormKind};
use proptest::prelude::*;
use proptest::sample::select;
use time::Date;

fn norm(kind: NormKind, s: &str) -> Result<String, NormError> {
    let mut out = String::new();
    normalize(kind, s, &mut out).map(|()| out)
}

/// Accented forms that fold back to the base letter.
fn accented(c: char) -> &'static [char] {
    match c {
        'a' => &['á', 'à', 'â', 'ä', 'ã', 'å', 'ā', 'ă', 'ą'],
        'c' => &['ç', 'ć', 'č'],
        'd' => &['ď'],
        'e' => &['é', 'è', 'ê', 'ë', 'ē', 'ė', 'ę', 'ě', 'ễ'],
        'g' => &['ğ', 'ģ'],
        'i' => &['í', 'ì', 'î', 'ï', 'ī', 'į'],
        'l' => &['ĺ', 'ļ', 'ľ'],
        'n' => &['ñ', 'ń', 'ň', 'ņ'],
        'o' => &['ó', 'ò', 'ô', 'ö', 'õ', 'ō', 'ő', 'ơ'],
        'r' => &['ŕ', 'ř'],
        's' => &['ś', 'š', 'ş', 'ș'],
        't' => &['ţ', 'ť', 'ț'],
        'u' => &['ú', 'ù', 'û', 'ü', 'ū', 'ů', 'ű', 'ų', 'ư'],
        'y' => &['ý', 'ÿ'],
        'z' => &['ź', 'ż', 'ž'],
        _ => &[],
    }
}

/// Random choices that drive the variant transforms.
#[derive(Debug, Clone)]
struct Variant {
    /// (position, separator index) insertions.
    seps: Vec<(usize, usize)>,
    /// per-letter accent choice (0 = none).
    accents: Vec<u8>,
    /// per-char case choice.
    upper: Vec<bool>,
    prefix: usize,
    suffix: usize,
    lead_ws: usize,
    trail_ws: usize,
}

fn variant() -> impl Strategy<Value = Variant> {
    (
        prop::collection::vec((0usize..64, 0usize..16), 0..3),
        prop::collection::vec(0u8..24, 0..16),
        prop::collection::vec(any::<bool>(), 0..16),
        0usize..32,
        0usize..32,
        0usize..4,
        0usize..4,
    )
        .prop_map(|(seps, accents, upper, prefix, suffix, lead_ws, trail_ws)| Variant {
            seps,
            accents,
            upper,
            prefix,
            suffix,
            lead_ws,
            trail_ws,
        })
}

const GIVEN_SEPS: &[&str] = &["'", "-", "\u{2019}", " - ", "\u{2010}"];
const FAMILY_SEPS: &[&str] = &[" ", "-", "'", ".", "\u{2019}", " - ", ". ", "\u{00A0}", "  "];
const GIVEN_PREFIXES: &[&str] =
    &["Mr. ", "Mrs ", "Ms. ", "Miss ", "Dr ", "Dr. ", "Rev. ", "Prof. ", "Hon ", "Sr. ", "Mx ", "Rev. Dr. ", "MR "];
const GIVEN_SUFFIXES: &[&str] =
    &[" Jr.", ", Jr", " III", " Sr.", " 2nd", " Q.", " Quincy", " J", " Esq.", " Lee Jr.", "-Jr"];
const FAMILY_PREFIXES: &[&str] = &["Mr. ", "Dr ", "Mrs. ", "Rev. Dr. ", "Prof "];
const FAMILY_SUFFIXES: &[&str] = &[
    " Jr.",
    ", Jr.",
    " JR",
    " Sr.",
    ", Sr",
    " II",
    " III",
    " IV",
    " V",
    " 2nd",
    " 3rd",
    ", Esq.",
    " Jr., Esq.",
    " 4th",
];
const WS: &[&str] = &["", " ", "\t", "  \u{00A0}"];

/// Apply the variant to `base` (lowercase a-z).
fn apply(base: &str, v: &Variant, seps: &[&str], prefixes: &[&str], suffixes: &[&str]) -> String {
    // 1. separators inside the name, unless a fragment would read as a title
    //    or suffix (a real "Iv Anov" is legitimately shortened)
    let mut cuts: Vec<(usize, &str)> = v
        .seps
        .iter()
        .filter_map(|&(pos, s)| {
            let pos = 1 + pos % base.len().max(1);
            (pos < base.len()).then(|| (pos, seps[s % seps.len()]))
        })
        .collect();
    cuts.sort_by_key(|c| c.0);
    cuts.dedup_by_key(|c| c.0);
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().map(|c| c.0));
    bounds.push(base.len());
    let affix = bounds.windows(2).any(|w| is_affix_word(&base[w[0]..w[1]]));
    if affix {
        cuts.clear();
    }
    // 2. accents and case, per letter
    let mut body = String::new();
    let mut cut = cuts.iter().peekable();
    for (i, c) in base.chars().enumerate() {
        if let Some(&&(pos, sep)) = cut.peek() {
            if pos == i {
                body.push_str(sep);
                cut.next();
            }
        }
        let choices = accented(c);
        let a = usize::from(v.accents.get(i).copied().unwrap_or(0));
        let c = if a > 0 && a <= choices.len() { choices[a - 1] } else { c };
        if v.upper.get(i).copied().unwrap_or(false) {
            body.extend(c.to_uppercase());
        } else {
            body.push(c);
        }
    }
    // 3. title, suffix, surrounding whitespace
    let prefix = prefixes.get(v.prefix).copied().unwrap_or("");
    let suffix = suffixes.get(v.suffix).copied().unwrap_or("");
    format!("{}{prefix}{body}{suffix}{}", WS[v.lead_ws % WS.len()], WS[v.trail_ws % WS.len()])
}

fn groups() -> Vec<&'static [&'static str]> {
    nickname_groups().collect()
}

const FAMILIES: &[&str] = &[
    "obrien",
    "smith",
    "smithjones",
    "garcia",
    "nguyen",
    "delacruz",
    "mcdonald",
    "johnson",
    "vanderberg",
    "martinez",
    "oconnor",
    "rodriguez",
    "kowalski",
    "muller",
    "washington",
    "lee",
    "ivanova",
    "fitzgerald",
    "dangelo",
    "abernathy",
    "yamamoto",
    "hernandez",
    "kim",
    "li",
    "wu",
    "stjohn",
    "esposito",
    "sanchezvilla",
];

/// The supported renderings of a date.
fn render_date(d: Date, fmt: usize, pad: bool, time: usize) -> String {
    let (y, m, day) = (d.year(), u8::from(d.month()), d.day());
    let md = |x: u8| {
        if pad {
            format!("{x:02}")
        } else {
            x.to_string()
        }
    };
    let date = match fmt % 5 {
        0 => format!("{y:04}-{}-{}", md(m), md(day)),
        1 => format!("{y:04}/{}/{}", md(m), md(day)),
        2 => format!("{y:04}{m:02}{day:02}"),
        3 => format!("{}/{}/{y:04}", md(m), md(day)),
        _ => format!("{}-{}-{y:04}", md(m), md(day)),
    };
    const TIMES: &[&str] = &[
        "",
        "T10:22:00Z",
        "T10:22:00",
        "T10:22:00.123+02:00",
        " 10:22",
        " 10:22:00",
        " 10:22:00 AM",
        " 1:05 PM",
        " 00:00:00.000000",
        "T23:59:59-05:00",
        "T102200Z",
    ];
    format!("{date}{}", TIMES[time % TIMES.len()])
}

/// Input of any characters, the widest-folding ones among them (`U+FDFA`
/// folds to 18 bytes, `ﬃ` to 3), up to the longest accepted.
fn any_input() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,85}",
        prop::collection::vec(select(vec!["\u{FDFA}", "ﬃ", "ß", "Ⅷ", "1", " ", "St", "-", "㎏"]), 0..85)
            .prop_map(|v| v.concat()),
        // Values that come out longer than they went in: a date's dashes, a nickname's full name.
        select(vec!["1/2/1985", "19850102", "1985-1-2", "al", "Al", "bo", "jim", "Ⅷ/2/1985"]).prop_map(String::from),
    ]
    .prop_filter("at most MAX_INPUT bytes", |s| s.len() <= super::MAX_INPUT)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every normalized value fits the room `normalize` gives it first, so
    /// the buffer holding it is never moved (and the old one freed with the
    /// value in it); the folded and the first-pass address buffers inside
    /// check the same of themselves (debug assertions).
    #[test]
    fn a_value_never_outgrows_its_room(raw in any_input()) {
        for kind in NormKind::ALL {
            let mut out = String::with_capacity(super::room(&raw));
            let cap = out.capacity();
            let _ = normalize(kind, &raw, &mut out);
            prop_assert_eq!(out.capacity(), cap, "{:?}, {} bytes in, {} out", kind, raw.len(), out.len());
        }
    }

    /// (1) Variants of one given name — any member of its nickname group,
    /// with case, accents, apostrophes/hyphens, titles, suffixes, middle
    /// names and whitespace — normalize to the group's canonical form.
    #[test]
    fn given_name_variants_agree(g in select(groups()), m in any::<prop::sample::Index>(), v in variant()) {
        let canonical = g[0];
        let member = g[m.index(g.len())];
        let raw = apply(member, &v, GIVEN_SEPS, GIVEN_PREFIXES, GIVEN_SUFFIXES);
        prop_assert_eq!(norm(NormKind::GivenName, &raw), Ok(canonical.to_string()), "raw {:?}", raw);
    }

    /// (1) Variants of one family name agree.
    #[test]
    fn family_name_variants_agree(base in select(FAMILIES), v in variant()) {
        let raw = apply(base, &v, FAMILY_SEPS, FAMILY_PREFIXES, FAMILY_SUFFIXES);
        prop_assert_eq!(norm(NormKind::FamilyName, &raw), Ok(base.to_string()), "raw {:?}", raw);
    }

    /// (2) Different canonical given names (different groups) stay distinct,
    /// even through variants.
    #[test]
    fn distinct_given_names_stay_distinct(
        i in any::<prop::sample::Index>(), d in any::<prop::sample::Index>(), v in variant(), w in variant()
    ) {
        let all = groups();
        let i = i.index(all.len());
        let (a, b) = (all[i], all[(i + 1 + d.index(all.len() - 1)) % all.len()]);
        prop_assert_ne!(a[0], b[0]);
        let ra = apply(a[0], &v, GIVEN_SEPS, GIVEN_PREFIXES, GIVEN_SUFFIXES);
        let rb = apply(b[0], &w, GIVEN_SEPS, GIVEN_PREFIXES, GIVEN_SUFFIXES);
        prop_assert_ne!(norm(NormKind::GivenName, &ra), norm(NormKind::GivenName, &rb));
    }

    /// (2) Different family names stay distinct.
    #[test]
    fn distinct_family_names_stay_distinct(
        i in 0..FAMILIES.len(), d in 1..FAMILIES.len(), v in variant()
    ) {
        let (a, b) = (FAMILIES[i], FAMILIES[(i + d) % FAMILIES.len()]);
        let ra = apply(a, &v, FAMILY_SEPS, FAMILY_PREFIXES, FAMILY_SUFFIXES);
        prop_assert_ne!(norm(NormKind::FamilyName, &ra), norm(NormKind::FamilyName, b));
    }

    /// (2) One day written in any supported format normalizes identically;
    /// different days differ.
    #[test]
    fn date_formats_agree(
        jd in 2_415_021..2_488_070i32,
        fmt in 0usize..5, pad: bool, time in 0usize..16, ws in 0usize..4, other in 1i32..40_000,
    ) {
        // 2_415_021 = 1900-01-01, 2_488_070 = 2100-01-01
        let d = Date::from_julian_day(jd).unwrap();
        let raw = format!("{}{}{}", WS[ws], render_date(d, fmt, pad, time), WS[(ws + 1) % WS.len()]);
        prop_assert_eq!(parse_date(&raw), Ok(d), "raw {:?}", raw);
        let iso = format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day());
        prop_assert_eq!(norm(NormKind::Date, &raw), Ok(iso.clone()));
        prop_assert_eq!(norm(NormKind::Date, &iso), Ok(iso.clone()));
        if let Ok(e) = Date::from_julian_day(2_415_021 + (jd - 2_415_021 + other) % 73_049) {
            let raw_e = render_date(e, fmt + 1, !pad, time + 1);
            prop_assert_ne!(norm(NormKind::Date, &raw_e), Ok(iso));
        }
    }

    /// (3) No panic on arbitrary input; outputs are in the canonical alphabet,
    /// bounded in length, and normalization is idempotent.
    #[test]
    fn arbitrary_input_is_safe(chars in prop::collection::vec(any::<char>(), 0..140)) {
        let s: String = chars.into_iter().collect();
        check_any(&s)?;
    }

    /// (3) Same, with input biased towards the characters the rules care about.
    #[test]
    fn tricky_input_is_safe(
        s in "[ a-zA-Z0-9'.,#/:+\\-ÀÉßæøłđþİıＡ１\u{300}-\u{36f}\u{2019}\u{2013}\u{ad}\u{200b}Ⅻ⒇ﷺ王Яα]{0,40}"
    ) {
        check_any(&s)?;
    }

    /// Any whole name splits without panicking into two pieces of itself:
    /// around its first comma, or given then family (what follows the
    /// family name, suffixes and initials, left out).
    #[test]
    fn a_whole_name_splits_into_pieces_of_itself(s in "(\\PC|[ ,.-]){0,40}") {
        let (given, family) = super::split_full_name(&s);
        if s.contains(',') && given.len() + family.len() + 1 == s.len() {
            prop_assert_eq!(format!("{family},{given}"), s.clone());
        } else {
            prop_assert!(s.starts_with(given), "{:?}", (&s, given, family));
            prop_assert!(s[given.len()..].starts_with(family), "{:?}", (&s, given, family));
        }
    }

    /// The ASCII fast path and the folding path agree.
    #[test]
    fn ascii_and_folded_paths_agree(s in "[ -~]{0,40}") {
        let forced = format!("{s}\u{200B}");
        for kind in NormKind::ALL {
            if matches!(kind, NormKind::Date | NormKind::Sex) {
                continue;
            }
            prop_assert_eq!(norm(kind, &s), norm(kind, &forced), "{}", kind);
        }
    }
}

fn check_any(s: &str) -> Result<(), TestCaseError> {
    for kind in NormKind::ALL {
        let mut out = String::from("stale");
        match normalize(kind, s, &mut out) {
            Err(_) => prop_assert!(out.is_empty()),
            Ok(()) => {
                prop_assert!(!out.is_empty());
                prop_assert!(out.len() <= 4 * s.len() + 16, "{} {:?} -> {:?}", kind, s, out);
                let ok = match kind {
                    NormKind::GivenName | NormKind::FamilyName => out.bytes().all(|b| b.is_ascii_lowercase()),
                    NormKind::Date => {
                        (out.len() == 10 && parse_date(&out).is_ok())
                            || (out.len() == 4 && out.bytes().all(|b| b.is_ascii_digit()))
                    }
                    NormKind::Sex => matches!(out.as_str(), "m" | "f" | "x"),
                    NormKind::Id | NormKind::PostalCode => {
                        out.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    }
                    NormKind::Place => out.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                    NormKind::Address => {
                        out.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b' ')
                            && !out.starts_with(' ')
                            && !out.ends_with(' ')
                            && !out.contains("  ")
                    }
                };
                prop_assert!(ok, "{} {:?} -> {:?}", kind, s, out);
                prop_assert_eq!(norm(kind, &out), Ok(out.clone()), "{} not idempotent", kind);
            }
        }
    }
    Ok(())
}

/// Rough throughput figure; run with
/// `cargo test --release --lib normalize::proptests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let given = ["William", "Billy", "MARY-ANN", "Dr. John Q.", "katie", "Robert", "Jennifer", "José"];
    let family = ["Smith", "O'Brien", "Garcia, Jr.", "De La Cruz", "NGUYEN", "Smith-Jones", "Müller", "Lee"];
    let mut out = String::with_capacity(64);
    let n = 2_000_000;
    for (label, kind, data) in [("given", NormKind::GivenName, &given), ("family", NormKind::FamilyName, &family)] {
        let start = std::time::Instant::now();
        let mut total = 0usize;
        for i in 0..n {
            let _ = normalize(kind, data[i % data.len()], &mut out);
            total += out.len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!("{label}: {:.2} M names/s ({total})", n as f64 / secs / 1e6);
    }
    let dates = ["1985-03-07", "3/7/1985", "19850307", "1985-03-07T10:22:00Z"];
    let start = std::time::Instant::now();
    for i in 0..n {
        let _ = normalize(NormKind::Date, dates[i % dates.len()], &mut out);
    }
    println!("date: {:.2} M/s", n as f64 / start.elapsed().as_secs_f64() / 1e6);
}
