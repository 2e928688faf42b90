//! Synthetic name frequency lists, the nickname table, and the spelling variants agencies introduce (typos, folding, case).
//!
//! The lists are plain common given and family names, drawn independently
//! and combined at random, so no generated person is a real individual.
//! Each list runs from most to least common and is sampled with Zipf-like
//! weights. A person carries the canonical given name (William, never Bill);
//! nicknames only appear as recording variants.

use std::borrow::Cow;

use rand::Rng;
use unicode_normalization::{char::is_combining_mark, UnicodeNormalization};

use super::dist::{chance, Categorical};
use super::model::{Race, Sex};

/// The name lists, from the data files beside this module (compiled in).
#[derive(Debug)]
pub struct Lists {
    pub given_male: Vec<&'static str>,
    pub given_female: Vec<&'static str>,
    pub given_male_spanish: Vec<&'static str>,
    pub given_female_spanish: Vec<&'static str>,
    pub family: Vec<&'static str>,
    pub family_spanish: Vec<&'static str>,
    pub family_asian: Vec<&'static str>,
    /// (nickname, canonical given name).
    pub nicknames: Vec<(&'static str, &'static str)>,
}

/// The lines of a list file that are not empty or a `#` comment.
fn entries(text: &'static str) -> impl Iterator<Item = &'static str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The name lists, read once.
pub fn lists() -> &'static Lists {
    static LISTS: std::sync::OnceLock<Lists> = std::sync::OnceLock::new();
    LISTS.get_or_init(|| Lists {
        given_male: entries(include_str!("names/given_male.txt")).collect(),
        given_female: entries(include_str!("names/given_female.txt")).collect(),
        given_male_spanish: entries(include_str!("names/given_male_spanish.txt")).collect(),
        given_female_spanish: entries(include_str!("names/given_female_spanish.txt")).collect(),
        family: entries(include_str!("names/family.txt")).collect(),
        family_spanish: entries(include_str!("names/family_spanish.txt")).collect(),
        family_asian: entries(include_str!("names/family_asian.txt")).collect(),
        nicknames: entries(include_str!("names/nicknames.txt")).filter_map(|l| l.split_once(' ')).collect(),
    })
}

/// The nickname agencies may write for a canonical given name.
pub fn nickname_of(canonical: &str) -> Option<&'static str> {
    lists().nicknames.iter().find(|(_, full)| *full == canonical).map(|(nick, _)| *nick)
}

/// A person's name suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suffix {
    Jr,
    Sr,
    Third,
}

impl Suffix {
    /// Spellings agencies use after the family name.
    pub fn spellings(self) -> &'static [&'static str] {
        match self {
            Suffix::Jr => &[" Jr", " Jr.", ", Jr.", " JR"],
            Suffix::Sr => &[" Sr", " Sr."],
            Suffix::Third => &[" III", ", III"],
        }
    }
}

/// The name lists with their sampling weights, built once per generation.
#[derive(Debug, Clone)]
pub struct NameTables {
    lists: &'static Lists,
    male: Categorical,
    female: Categorical,
    male_spanish: Categorical,
    female_spanish: Categorical,
    family: Categorical,
    family_spanish: Categorical,
    family_asian: Categorical,
}

impl Default for NameTables {
    /// The lists are short (a few hundred names where a real population has
    /// tens of thousands), so the weights are flattened to keep the share of
    /// the most common names near reality: about 3.4% for the top given name
    /// (SSA: James, Mary among people born 1960-1995) and 1.4% for the top
    /// family name (Census 2010: Smith 0.83%, the top 400 names together 40%).
    /// A head much heavier than reality would make different persons share
    /// names and birth dates far more often than they do, and understate
    /// linkage precision.
    fn default() -> Self {
        NameTables {
            lists: lists(),
            male: Categorical::zipf_with(lists().given_male.len(), 0.8, 5.0),
            female: Categorical::zipf_with(lists().given_female.len(), 0.8, 5.0),
            male_spanish: Categorical::zipf(lists().given_male_spanish.len()),
            female_spanish: Categorical::zipf(lists().given_female_spanish.len()),
            family: Categorical::zipf_with(lists().family.len(), 0.7, 10.0),
            family_spanish: Categorical::zipf(lists().family_spanish.len()),
            family_asian: Categorical::zipf(lists().family_asian.len()),
        }
    }
}

impl NameTables {
    /// A canonical given name; Hispanic persons draw from the Spanish list half the time.
    pub fn given<R: Rng>(&self, rng: &mut R, sex: Sex, race: Race) -> &'static str {
        let male = match sex {
            Sex::Male => true,
            Sex::Female => false,
            Sex::X => rng.gen(),
        };
        let spanish = chance(rng, if race == Race::Hispanic { 0.5 } else { 0.03 });
        let (list, table) = match (male, spanish) {
            (true, false) => (&self.lists.given_male, &self.male),
            (false, false) => (&self.lists.given_female, &self.female),
            (true, true) => (&self.lists.given_male_spanish, &self.male_spanish),
            (false, true) => (&self.lists.given_female_spanish, &self.female_spanish),
        };
        list[table.pick(rng)]
    }

    /// A family name, drawn from the list that fits the person's race/ethnicity most of the time.
    pub fn family<R: Rng>(&self, rng: &mut R, race: Race) -> &'static str {
        let (spanish, asian) = match race {
            Race::Hispanic => (0.85, 0.0),
            Race::Asian => (0.02, 0.7),
            _ => (0.03, 0.01),
        };
        let u: f64 = rng.gen();
        if u < spanish {
            self.lists.family_spanish[self.family_spanish.pick(rng)]
        } else if u < spanish + asian {
            self.lists.family_asian[self.family_asian.pick(rng)]
        } else {
            self.lists.family[self.family.pick(rng)]
        }
    }
}

/// One keying mistake at a random letter position (the first letter included):
/// a substitution, deletion, transposition of neighbours, or a doubled letter.
/// Always changes the name unless it has no letters to change.
pub fn typo<R: Rng>(rng: &mut R, name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let letters: Vec<usize> = (0..chars.len()).filter(|&i| chars[i].is_alphabetic()).collect();
    if letters.is_empty() {
        return name.to_string();
    }
    for _ in 0..8 {
        let i = letters[rng.gen_range(0..letters.len())];
        let mut out = chars.clone();
        match rng.gen_range(0..4) {
            0 => {
                let original = chars[i].to_lowercase().next().unwrap_or(chars[i]);
                let mut c = char::from(b'a' + rng.gen_range(0..26u8));
                if c == original {
                    c = if c == 'z' { 'a' } else { char::from(c as u8 + 1) };
                }
                out[i] = if chars[i].is_uppercase() { c.to_ascii_uppercase() } else { c };
            }
            1 if letters.len() >= 3 => {
                out.remove(i);
            }
            2 if i + 1 < chars.len() && chars[i + 1].is_alphabetic() && !same_letter(chars[i], chars[i + 1]) => {
                // Keep the capital at the front: "Nguyen" → "Gnuyen" reads as a typo, "gNuyen" as noise.
                let (a, b) = (chars[i], chars[i + 1]);
                if a.is_uppercase() && b.is_lowercase() {
                    out[i] = b.to_uppercase().next().unwrap_or(b);
                    out[i + 1] = a.to_lowercase().next().unwrap_or(a);
                } else {
                    out.swap(i, i + 1);
                }
            }
            3 => {
                let doubled =
                    if chars[i].is_uppercase() { chars[i].to_lowercase().next().unwrap_or(chars[i]) } else { chars[i] };
                out.insert(i + 1, doubled);
            }
            _ => continue,
        }
        return out.into_iter().collect();
    }
    // Eight unlucky draws of an inapplicable edit: double the first letter, always possible.
    let mut out = chars;
    let i = letters[0];
    let c = out[i].to_lowercase().next().unwrap_or(out[i]);
    out.insert(i + 1, c);
    out.into_iter().collect()
}

fn same_letter(a: char, b: char) -> bool {
    a.to_lowercase().eq(b.to_lowercase())
}

/// Remove diacritics: canonical decomposition, combining marks dropped (José → Jose, Nguyễn → Nguyen).
pub fn strip_diacritics(name: &str) -> Cow<'_, str> {
    if name.is_ascii() {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(name.nfd().filter(|c| !is_combining_mark(*c)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::dist::stream;

    #[test]
    fn lists_have_no_duplicates_and_canonical_names_only() {
        let l = lists();
        let all = [&l.given_male, &l.given_female, &l.given_male_spanish, &l.given_female_spanish];
        for list in all.iter().chain([&l.family, &l.family_spanish, &l.family_asian].iter()) {
            let mut seen = std::collections::BTreeSet::new();
            for name in list.iter() {
                assert!(seen.insert(*name), "duplicate {name}");
                assert!(!name.is_empty() && name.trim() == *name, "`{name}`");
            }
        }
        assert!(l.given_male.len() >= 200 && l.given_female.len() >= 200);
        assert!(l.family.len() + l.family_spanish.len() + l.family_asian.len() >= 400);
        assert!(l.nicknames.len() >= 30, "every line of nicknames.txt is a pair");
        for (nick, full) in &l.nicknames {
            assert!(all.iter().any(|l| l.contains(full)), "{full} missing");
            assert!(!all.iter().any(|l| l.contains(nick)), "nickname {nick} used as a canonical name");
        }
    }

    #[test]
    fn typos_change_the_name_at_any_position() {
        let mut rng = stream(1, 0, 0);
        let mut first_changed = false;
        for _ in 0..2000 {
            let t = typo(&mut rng, "Nguyễn");
            assert_ne!(t, "Nguyễn");
            first_changed |= !t.starts_with('N');
        }
        assert!(first_changed);
        assert_ne!(typo(&mut rng, "Li"), "Li");
    }

    #[test]
    fn diacritics_fold_to_ascii() {
        assert_eq!(strip_diacritics("Nguyễn"), "Nguyen");
        assert_eq!(strip_diacritics("Dương"), "Duong");
        assert_eq!(strip_diacritics("Zoë Muñoz-Björk"), "Zoe Munoz-Bjork");
        let l = lists();
        for name in l.family.iter().chain(&l.family_spanish).chain(&l.family_asian).chain(&l.given_male_spanish) {
            assert!(strip_diacritics(name).is_ascii(), "{name}");
        }
    }
}
