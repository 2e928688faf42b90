//! Where synthetic persons live: the cities and ZIP codes of one county, a person's residence, and how agencies write it (spacing, case, ZIP+4, placeholders, an earlier address).
//!
//! The county is King County, Washington (Seattle's LEAD program): its
//! cities with rough shares of a diversion program's population (most in
//! Seattle) and some of their real ZIP codes. Neighbouring cities share ZIP
//! codes, as real ones do. Several names have two words, or one word that
//! people split ("SeaTac", "Sea Tac"), which is what `place_spacing` varies.

use std::borrow::Cow;

use rand::seq::SliceRandom;
use rand::Rng;

use super::dist::{chance, Categorical};
use super::params::RecordingRates;
use super::recording::{space_before, split_word};

/// (city, share of persons, ZIP codes).
pub const CITIES: &[(&str, f64, &[u32])] = &[
    (
        "Seattle",
        0.55,
        &[
            98101, 98102, 98103, 98104, 98105, 98106, 98107, 98108, 98109, 98112, 98115, 98116, 98117, 98118, 98119,
            98121, 98122, 98125, 98126, 98133, 98134, 98136, 98144, 98146, 98168, 98177, 98178, 98199,
        ],
    ),
    ("Burien", 0.05, &[98146, 98148, 98166]),
    ("SeaTac", 0.04, &[98158, 98188, 98198]),
    ("Tukwila", 0.04, &[98168, 98178, 98188]),
    ("Shoreline", 0.04, &[98133, 98155, 98177]),
    ("Renton", 0.06, &[98055, 98056, 98057, 98058, 98059]),
    ("Kent", 0.06, &[98030, 98031, 98032, 98042]),
    ("Federal Way", 0.05, &[98003, 98023]),
    ("Des Moines", 0.03, &[98148, 98198]),
    ("Auburn", 0.04, &[98001, 98002, 98092]),
    ("Lake Forest Park", 0.01, &[98155]),
    ("Mercer Island", 0.01, &[98040]),
    ("Bellevue", 0.02, &[98004, 98005, 98006, 98007, 98008]),
];

/// What systems write in a ZIP cell for a person with no fixed address, when they write anything.
const NO_ADDRESS_ZIPS: &[&str] = &["HOMELESS", "00000", "TRANSIENT", "99999"];

/// A place of residence: an index into [`CITIES`] and, for a fixed address, a ZIP code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residence {
    pub city: u16,
    pub zip: Option<u32>,
}

/// Draws residences by the cities' shares.
#[derive(Debug)]
pub struct Places {
    cities: Categorical,
}

impl Default for Places {
    fn default() -> Self {
        let shares: Vec<f64> = CITIES.iter().map(|c| c.1).collect();
        Places { cities: Categorical::new(&shares) }
    }
}

impl Places {
    /// A residence; `fixed` says whether the person has a fixed address (a ZIP code).
    pub fn residence<R: Rng>(&self, rng: &mut R, fixed: bool) -> Residence {
        let city = self.cities.pick(rng).min(CITIES.len() - 1);
        let zip = fixed.then(|| CITIES[city].2.choose(rng).copied().unwrap_or(98101));
        Residence { city: city as u16, zip }
    }
}

/// The place cells of one record as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordedPlace {
    pub city: Option<Cow<'static, str>>,
    pub zip: Option<Cow<'static, str>>,
}

/// How one record of an agency writes a person's residence: another (earlier
/// or later) residence at `other_residence`, the city left empty at
/// `city_missing`, its spacing varied at `place_spacing`, capitals at
/// `upper_case`; the ZIP left empty at `zip_missing`, as ZIP+4 on one record
/// in five. With no fixed address the ZIP cell is empty, or on one record in
/// four a placeholder (HOMELESS, 00000).
pub fn record<R: Rng>(rng: &mut R, places: &Places, home: Residence, rates: &RecordingRates) -> RecordedPlace {
    let home = if chance(rng, rates.other_residence) { places.residence(rng, home.zip.is_some()) } else { home };
    let city = (!chance(rng, rates.city_missing)).then(|| {
        let name = CITIES.get(usize::from(home.city)).map_or("Seattle", |c| c.0);
        let mut city: Cow<'static, str> = Cow::Borrowed(name);
        if chance(rng, rates.place_spacing) {
            city = Cow::Owned(respace(rng, name));
        }
        if chance(rng, rates.upper_case) {
            city = Cow::Owned(city.to_uppercase());
        }
        city
    });
    let zip = match home.zip {
        Some(_) if chance(rng, rates.zip_missing) => None,
        Some(zip) if chance(rng, 0.2) => Some(Cow::Owned(format!("{zip:05}-{:04}", rng.gen_range(1..10_000)))),
        Some(zip) => Some(Cow::Owned(format!("{zip:05}"))),
        None if chance(rng, 0.25) => NO_ADDRESS_ZIPS.choose(rng).map(|z| Cow::Borrowed(*z)),
        None => None,
    };
    RecordedPlace { city, zip }
}

/// A place name with its spacing varied: two words run together or a space
/// doubled ("FederalWay", "Federal  Way"); one word split ("Sea Tac").
fn respace<R: Rng>(rng: &mut R, name: &str) -> String {
    if name.contains(' ') {
        return if rng.gen() { name.replace(' ', "") } else { name.replace(' ', "  ") };
    }
    // A split before a capital inside the word where there is one (SeaTac), elsewhere at random.
    let chars: Vec<char> = name.chars().collect();
    match (1..chars.len()).find(|&i| chars[i].is_uppercase()) {
        Some(at) => space_before(&chars, at),
        None => split_word(rng, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{normalize, NormKind};
    use crate::synth::dist::stream;

    fn norm(kind: NormKind, s: &str) -> Option<String> {
        let mut out = String::new();
        normalize(kind, s, &mut out).ok().map(|()| out)
    }

    #[test]
    fn respaced_and_capitalized_cities_normalize_to_the_same_place() {
        let mut rng = stream(1, 0, 9);
        for (name, ..) in CITIES {
            for _ in 0..20 {
                let spaced = respace(&mut rng, name);
                assert_ne!(spaced, *name);
                assert_eq!(spaced.replace(' ', ""), name.replace(' ', ""));
                assert_eq!(norm(NormKind::Place, &spaced.to_uppercase()), norm(NormKind::Place, name), "{spaced}");
            }
        }
    }

    #[test]
    fn zip_codes_are_written_as_five_digits_or_zip_plus_four_and_placeholders_are_no_code() {
        let places = Places::default();
        let mut rng = stream(1, 0, 10);
        let mut rates = crate::synth::params::Params::defaults().expect("defaults").recording.police;
        (rates.zip_missing, rates.other_residence) = (0.0, 0.0);
        let home = places.residence(&mut rng, true);
        let mut plus4 = 0;
        for _ in 0..200 {
            let zip = record(&mut rng, &places, home, &rates).zip.expect("written");
            plus4 += usize::from(zip.len() == 10);
            assert_eq!(norm(NormKind::PostalCode, &zip), home.zip.map(|z| format!("{z:05}")));
        }
        assert!((10..80).contains(&plus4), "{plus4} of 200 written as ZIP+4");
        let homeless = Residence { zip: None, ..home };
        let mut placeholders = 0;
        for _ in 0..200 {
            if let Some(zip) = record(&mut rng, &places, homeless, &rates).zip {
                placeholders += 1;
                assert_eq!(norm(NormKind::PostalCode, &zip), None, "{zip} is no postal code");
            }
        }
        assert!((20..90).contains(&placeholders), "{placeholders} of 200");
    }
}
