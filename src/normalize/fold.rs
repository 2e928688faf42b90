//! Unicode folding: an ASCII, lowercase approximation of arbitrary text.
//!
//! Only used when the input holds a byte >= 0x80; pure-ASCII input never
//! reaches this module. The result is ASCII only, so every later stage works
//! on bytes.
//!
//! Per character, in order:
//! 1. ASCII is kept (lowercased).
//! 2. A small table maps letters that do not decompose (`ß`→`ss`, `æ`→`ae`,
//!    `ø`→`o`, `ł`→`l`, `đ`→`d`, `þ`→`th`, ...), typographic apostrophes to `'`,
//!    dash-like characters to `-`, and drops invisible characters (soft hyphen,
//!    zero-width space/joiners, BOM). Cyrillic and Greek letters are
//!    transliterated with a simple letter-by-letter scheme.
//! 3. Otherwise the character is NFKD-decomposed (so `é`→`e`+mark, `ﬁ`→`fi`,
//!    fullwidth `Ａ`→`A`, `Ⅲ`→`III`); combining marks are dropped, ASCII is
//!    kept, table entries are applied to the pieces, and anything else
//!    (CJK, emoji, symbols) becomes a space, i.e. a word separator.

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// Append the folded (ASCII, lowercase) form of `s` to `out`.
pub(crate) fn fold_into(s: &str, out: &mut String) {
    let mut prev_omicron = false;
    for c in s.chars() {
        let base = greek_base(c);
        // Greek digraph: ου is "ou", not "oy" (Παπαδόπουλος → papadopoulos)
        if prev_omicron && base == Some('υ') {
            out.push('u');
            prev_omicron = false;
            continue;
        }
        prev_omicron = base == Some('ο');
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if let Some(rep) = special(c) {
            out.push_str(rep);
        } else {
            decompose_compatible(c, |d| {
                if d.is_ascii() {
                    out.push(d.to_ascii_lowercase());
                } else if is_combining_mark(d) {
                    // accent, cedilla, ogonek, ...: dropped
                } else if let Some(rep) = special(d) {
                    out.push_str(rep);
                } else {
                    out.push(' ');
                }
            });
        }
    }
}

/// The lowercase base letter of a Greek character (accents removed).
fn greek_base(c: char) -> Option<char> {
    if !matches!(c, '\u{0370}'..='\u{03FF}' | '\u{1F00}'..='\u{1FFF}') {
        return None;
    }
    let mut first = None;
    decompose_compatible(c, |d| {
        if first.is_none() {
            first = Some(d);
        }
    });
    first.and_then(|d| d.to_lowercase().next())
}

/// Replacement for characters NFKD does not reduce to ASCII.
fn special(c: char) -> Option<&'static str> {
    let rep = match c {
        'ß' | 'ẞ' => "ss",
        'æ' | 'Æ' | 'ǽ' | 'Ǽ' | 'ǣ' | 'Ǣ' => "ae",
        'œ' | 'Œ' => "oe",
        'ø' | 'Ø' | 'ǿ' | 'Ǿ' => "o",
        'ł' | 'Ł' | 'ƚ' | 'ŀ' | 'Ŀ' => "l",
        'đ' | 'Đ' | 'ð' | 'Ð' | 'ɖ' | 'Ɖ' => "d",
        'þ' | 'Þ' => "th",
        'ı' | 'ɨ' | 'Ɨ' => "i",
        'ħ' | 'Ħ' => "h",
        'ŧ' | 'Ŧ' => "t",
        'ŋ' | 'Ŋ' => "ng",
        'ĸ' => "k",
        'ƒ' | 'Ƒ' => "f",
        'ƀ' | 'Ƀ' => "b",
        'ǥ' | 'Ǥ' => "g",
        'ʒ' | 'Ʒ' => "z",
        'ɛ' | 'Ɛ' => "e",
        'ɔ' | 'Ɔ' => "o",
        // typographic apostrophes and primes: treated like ASCII '
        '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{02BC}' | '\u{02BB}' | '\u{02B9}' | '\u{02BE}'
        | '\u{02BF}' | '\u{00B4}' | '\u{2032}' | '\u{FF07}' => "'",
        // dashes and minus signs: treated like ASCII -
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE58}' | '\u{FE63}' | '\u{FF0D}' => "-",
        // invisible: soft hyphen, zero-width space/non-joiner/joiner, word joiner, BOM
        '\u{00AD}' | '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' => "",
        '\u{0400}'..='\u{04FF}' => return cyrillic(c),
        '\u{0370}'..='\u{03FF}' => return greek(c),
        _ => return None,
    };
    Some(rep)
}

/// Simple transliteration of (Russian/Ukrainian) Cyrillic. Letters with a
/// decomposition (`й`, `ё`, `ї`) are handled by NFKD first, so they never
/// reach here directly but their bases do.
fn cyrillic(c: char) -> Option<&'static str> {
    // Basic uppercase block А..Я maps onto lowercase а..я.
    let lower = match c {
        '\u{0410}'..='\u{042F}' => char::from_u32(c as u32 + 0x20)?,
        '\u{0400}'..='\u{040F}' => char::from_u32(c as u32 + 0x50)?,
        '\u{0490}' => '\u{0491}',
        _ => c,
    };
    let rep = match lower {
        'а' => "a",
        'б' => "b",
        'в' => "v",
        'г' => "g",
        'д' => "d",
        'е' => "e",
        'ж' => "zh",
        'з' => "z",
        'и' => "i",
        'к' => "k",
        'л' => "l",
        'м' => "m",
        'н' => "n",
        'о' => "o",
        'п' => "p",
        'р' => "r",
        'с' => "s",
        'т' => "t",
        'у' => "u",
        'ф' => "f",
        'х' => "kh",
        'ц' => "ts",
        'ч' => "ch",
        'ш' => "sh",
        'щ' => "shch",
        'ъ' | 'ь' => "",
        'ы' => "y",
        'э' => "e",
        'ю' => "yu",
        'я' => "ya",
        'є' => "ye",
        'і' => "i",
        'ґ' => "g",
        // ё, ї, й, ў decompose (NFKD) before reaching here; handle the
        // precomposed forms anyway in case of direct calls.
        'ё' => "e",
        'ї' => "i",
        'й' => "i",
        'ў' => "u",
        _ => return None,
    };
    Some(rep)
}

/// Simple transliteration of Greek (accents are removed by NFKD first).
fn greek(c: char) -> Option<&'static str> {
    let lower = match c {
        '\u{0391}'..='\u{03A9}' => char::from_u32(c as u32 + 0x20)?,
        _ => c,
    };
    let rep = match lower {
        'α' => "a",
        'β' => "v",
        'γ' => "g",
        'δ' => "d",
        'ε' => "e",
        'ζ' => "z",
        'η' => "i",
        'θ' => "th",
        'ι' => "i",
        'κ' => "k",
        'λ' => "l",
        'μ' => "m",
        'ν' => "n",
        'ξ' => "x",
        'ο' => "o",
        'π' => "p",
        'ρ' => "r",
        'σ' | 'ς' => "s",
        'τ' => "t",
        'υ' => "y",
        'φ' => "f",
        'χ' => "ch",
        'ψ' => "ps",
        'ω' => "o",
        _ => return None,
    };
    Some(rep)
}

#[cfg(test)]
mod tests {
    use super::fold_into;

    fn fold(s: &str) -> String {
        let mut out = String::new();
        fold_into(s, &mut out);
        out
    }

    #[test]
    fn folds_latin() {
        assert_eq!(fold("José Muñoz"), "jose munoz");
        assert_eq!(fold("Nguyễn"), "nguyen");
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("Ærøskøbing"), "aeroskobing");
        assert_eq!(fold("Łódź"), "lodz");
        assert_eq!(fold("Đặng"), "dang");
        assert_eq!(fold("Þórr"), "thorr");
        assert_eq!(fold("Çağlar İnce"), "caglar ince");
        assert_eq!(fold("Ｓｍｉｔｈ"), "smith");
        assert_eq!(fold("Louis Ⅻ"), "louis xii");
        assert_eq!(fold("ﬁnn"), "finn");
    }

    #[test]
    fn folds_punctuation_and_invisibles() {
        assert_eq!(fold("O\u{2019}Brien"), "o'brien");
        assert_eq!(fold("Smith\u{2013}Jones"), "smith-jones");
        assert_eq!(fold("Mary\u{2011}Ann"), "mary-ann");
        assert_eq!(fold("Ro\u{00AD}bert\u{200B}"), "robert");
        assert_eq!(fold("a\u{00A0}b"), "a b");
    }

    #[test]
    fn transliterates() {
        assert_eq!(fold("Иванов"), "ivanov");
        assert_eq!(fold("Щукин"), "shchukin");
        assert_eq!(fold("Алёна"), "alena");
        assert_eq!(fold("Андрій"), "andrii");
        assert_eq!(fold("Παπαδόπουλος"), "papadopoulos");
        assert_eq!(fold("ΠΑΠΑΔΟΠΟΥΛΟΣ"), "papadopoulos");
        assert_eq!(fold("Γεώργιος"), "georgios");
    }

    #[test]
    fn unknown_scripts_become_separators() {
        assert_eq!(fold("王 Li"), "  li");
        assert_eq!(fold("😀"), " ");
    }

    #[test]
    fn output_is_ascii_lowercase() {
        for s in ["ÀÉÎÕÜ", "ǅ", "Ǳ", "ŉ", "\u{1E9E}"] {
            let f = fold(s);
            assert!(f.is_ascii(), "{f:?}");
            assert!(!f.bytes().any(|b| b.is_ascii_uppercase()), "{f:?}");
        }
    }
}
