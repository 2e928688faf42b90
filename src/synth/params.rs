//! The generator's parameters: the TOML shape of config/synth.toml, the built-in defaults, overlays and validation.

use serde::{Deserialize, Serialize};

use super::dates::{self, Day};
use super::model::Agency;

/// The built-in parameters: config/synth.toml, embedded so the binary needs no file.
pub const DEFAULT_TOML: &str = include_str!("../../config/synth.toml");

/// Why a parameter file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    #[error("{origin}: not valid TOML or not the shape of config/synth.toml: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {} invalid parameter(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid { origin: String, problems: Vec<String> },
}

/// All parameters of the model. See config/synth.toml for what each means and where its default comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub program: Program,
    pub demographics: Demographics,
    pub referral: Referral,
    pub arrests: Arrests,
    pub jail: Jail,
    pub charges: Charges,
    pub program_status: ProgramStatus,
    pub casemgmt: CaseMgmt,
    pub treatment: Treatment,
    pub recording: Recording,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Program {
    /// First day referrals are made, `YYYY-MM-DD`.
    pub start: String,
    /// Last day referrals are made, `YYYY-MM-DD`.
    pub end: String,
    pub days_before: u32,
    pub days_after: u32,
    pub diversion_share: f64,
    pub background_per_referred: f64,
    pub rereferral_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demographics {
    pub female_share: f64,
    pub nonbinary_share: f64,
    pub age_mean: f64,
    pub age_sd: f64,
    pub age_min: u32,
    pub age_max: u32,
    pub race: RaceShares,
    pub hyphenated_family_share: f64,
    pub suffix_share: f64,
    pub no_fixed_address_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaceShares {
    pub black: f64,
    pub white: f64,
    pub hispanic: f64,
    pub native: f64,
    pub asian: f64,
    pub other: f64,
    pub unknown: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Referral {
    pub social_contact_share: f64,
    pub offense: OffenseShares,
    pub ineligible_share: f64,
    pub declined_share: f64,
    pub no_timely_intake_share: f64,
    pub late_intake_share: f64,
    pub late_intake_max_days: u32,
    pub intake_mean_days: f64,
    pub notes_share: f64,
    pub messy_notes_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffenseShares {
    pub possession: f64,
    pub small_sale: f64,
    pub sex_work: f64,
    pub other: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrests {
    pub rate_mean: f64,
    pub rate_shape: f64,
    pub pre_referral_rate_ratio: f64,
    pub diversion_odds_ratio_6m: f64,
    pub diversion_rate_ratio_later: f64,
    pub warrant_share: f64,
    pub violent_share: f64,
    pub felony_share: f64,
    pub violent_ratio_diversion_after: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jail {
    pub booking_share: f64,
    pub booking_share_diversion_after: f64,
    pub stay_mean_days: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charges {
    pub charge_share: f64,
    pub filing_delay_mean_days: f64,
    pub referral_charge_felony_share: f64,
    pub disposition: DispositionShares,
    pub diverted_share_diversion_after: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispositionShares {
    pub pending: f64,
    pub dismissed: f64,
    pub convicted: f64,
    pub acquitted: f64,
    pub diverted: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramStatus {
    pub ejected_share: f64,
    pub completed_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseMgmt {
    pub plan_share: f64,
    pub plan_mean_days: f64,
    pub contacts_per_month: f64,
    pub contacts_shape: f64,
    pub services_per_month: f64,
    pub service_types: ServiceShares,
    pub months: u32,
    pub monthly_churn: f64,
    pub intake: IntakeShares,
    pub effects: Effects,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceShares {
    pub housing: f64,
    pub mat: f64,
    pub treatment: f64,
    pub transport: f64,
    pub employment: f64,
    pub benefits: f64,
    pub legal: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeShares {
    pub permanent_share: f64,
    pub sheltered_share: f64,
    pub transitional_share: f64,
    pub continuum_share: f64,
    pub training_share: f64,
    pub full_time_share: f64,
    pub income_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Effects {
    pub sheltered_odds: f64,
    pub permanent_odds: f64,
    pub continuum_odds: f64,
    pub income_odds: f64,
    pub ramp_months: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Treatment {
    pub rate_per_year: f64,
    pub entry_90d_with_intake: f64,
    pub entry_90d_otherwise: f64,
    pub modality: ModalityShares,
    pub mean_days: ModalityDays,
    pub discharge_missing_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModalityShares {
    pub mat: f64,
    pub outpatient: f64,
    pub residential: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModalityDays {
    pub mat: f64,
    pub outpatient: f64,
    pub residential: f64,
}

/// Recording differences of each agency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    pub police: RecordingRates,
    pub jail: RecordingRates,
    pub da: RecordingRates,
    pub casemgmt: RecordingRates,
    pub treatment: RecordingRates,
}

/// The chance that one record of an agency shows each recording difference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingRates {
    pub typo: f64,
    pub nickname: f64,
    pub swapped_names: f64,
    pub dob_error: f64,
    pub sex_missing: f64,
    pub state_id: f64,
    pub upper_case: f64,
    pub strip_diacritics: f64,
    pub one_family_part: f64,
    pub suffix: f64,
    pub dob_missing: f64,
    pub dob_invalid: f64,
    pub id_error: f64,
    pub given_split: f64,
    pub middle_name: f64,
    pub several_errors: f64,
    pub city_missing: f64,
    pub zip_missing: f64,
    pub place_spacing: f64,
    pub other_residence: f64,
    pub local_id_duplicate: f64,
}

impl Params {
    /// The built-in defaults (config/synth.toml).
    pub fn defaults() -> Result<Params, ParamsError> {
        Params::from_overlay("built-in defaults", "")
    }

    /// Parameters from a TOML overlay: keys it sets replace the defaults', the rest stay. Validated.
    pub fn from_overlay(origin: &str, overlay: &str) -> Result<Params, ParamsError> {
        let parse = |text: &str, origin: &str| {
            text.parse::<toml::Table>()
                .map_err(|e| ParamsError::Parse { origin: origin.to_string(), message: e.to_string() })
        };
        let mut merged = parse(DEFAULT_TOML, "built-in defaults")?;
        merge(&mut merged, parse(overlay, origin)?);
        let params: Params = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ParamsError::Parse { origin: origin.to_string(), message: e.to_string() })?;
        let problems = params.problems();
        if problems.is_empty() {
            Ok(params)
        } else {
            Err(ParamsError::Invalid { origin: origin.to_string(), problems })
        }
    }

    /// First and last referral day.
    pub fn period(&self) -> (Day, Day) {
        // Validation guarantees both parse; the fallback only keeps `generate` total on unvalidated input.
        let start = dates::parse_iso(&self.program.start).unwrap_or(dates::days_from_civil(2016, 1, 1));
        let end = dates::parse_iso(&self.program.end).unwrap_or(start).max(start);
        (start, end)
    }

    /// Every problem with the values, all at once, so one edit can fix them all.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Problems::default();
        let pr = &self.program;
        match (dates::parse_iso(&pr.start), dates::parse_iso(&pr.end)) {
            (Some(s), Some(e)) if s > e => p.push("program.start is after program.end".into()),
            (s, e) => {
                if s.is_none() {
                    p.push(format!("program.start = {:?} is not a YYYY-MM-DD date", pr.start));
                }
                if e.is_none() {
                    p.push(format!("program.end = {:?} is not a YYYY-MM-DD date", pr.end));
                }
            }
        }
        p.at_least("program.days_before", pr.days_before as f64, 365.0);
        p.at_least("program.days_after", pr.days_after as f64, 365.0);
        p.share("program.diversion_share", pr.diversion_share);
        p.non_negative("program.background_per_referred", pr.background_per_referred);
        p.share("program.rereferral_share", pr.rereferral_share);

        let d = &self.demographics;
        p.share("demographics.female_share", d.female_share);
        p.share("demographics.nonbinary_share", d.nonbinary_share);
        if d.female_share + d.nonbinary_share > 1.0 {
            p.push("demographics.female_share + nonbinary_share exceeds 1".into());
        }
        p.non_negative("demographics.age_sd", d.age_sd);
        if !(d.age_min >= 14 && d.age_min <= d.age_max && d.age_max <= 100) {
            p.push("demographics.age_min..age_max must be a range within 14..100".into());
        }
        let r = &d.race;
        p.distribution("demographics.race", &[r.black, r.white, r.hispanic, r.native, r.asian, r.other, r.unknown]);
        p.share("demographics.hyphenated_family_share", d.hyphenated_family_share);
        p.share("demographics.suffix_share", d.suffix_share);
        p.share("demographics.no_fixed_address_share", d.no_fixed_address_share);

        let re = &self.referral;
        p.share("referral.social_contact_share", re.social_contact_share);
        let o = &re.offense;
        p.distribution("referral.offense", &[o.possession, o.small_sale, o.sex_work, o.other]);
        p.share("referral.ineligible_share", re.ineligible_share);
        p.share("referral.declined_share", re.declined_share);
        p.share("referral.no_timely_intake_share", re.no_timely_intake_share);
        if re.ineligible_share + re.declined_share + re.no_timely_intake_share > 1.0 {
            p.push("referral: ineligible + declined + no_timely_intake shares exceed 1".into());
        }
        p.share("referral.late_intake_share", re.late_intake_share);
        p.at_least("referral.late_intake_max_days", re.late_intake_max_days as f64, 8.0);
        p.non_negative("referral.intake_mean_days", re.intake_mean_days);
        p.share("referral.notes_share", re.notes_share);
        p.share("referral.messy_notes_share", re.messy_notes_share);

        let a = &self.arrests;
        p.non_negative("arrests.rate_mean", a.rate_mean);
        p.positive("arrests.rate_shape", a.rate_shape);
        p.non_negative("arrests.pre_referral_rate_ratio", a.pre_referral_rate_ratio);
        p.positive("arrests.diversion_odds_ratio_6m", a.diversion_odds_ratio_6m);
        p.non_negative("arrests.diversion_rate_ratio_later", a.diversion_rate_ratio_later);
        p.share("arrests.warrant_share", a.warrant_share);
        p.share("arrests.violent_share", a.violent_share);
        p.share("arrests.felony_share", a.felony_share);
        p.non_negative("arrests.violent_ratio_diversion_after", a.violent_ratio_diversion_after);

        p.share("jail.booking_share", self.jail.booking_share);
        p.share("jail.booking_share_diversion_after", self.jail.booking_share_diversion_after);
        p.non_negative("jail.stay_mean_days", self.jail.stay_mean_days);

        let c = &self.charges;
        p.share("charges.charge_share", c.charge_share);
        p.non_negative("charges.filing_delay_mean_days", c.filing_delay_mean_days);
        p.share("charges.referral_charge_felony_share", c.referral_charge_felony_share);
        let ds = &c.disposition;
        p.distribution("charges.disposition", &[ds.pending, ds.dismissed, ds.convicted, ds.acquitted, ds.diverted]);
        p.share("charges.diverted_share_diversion_after", c.diverted_share_diversion_after);

        let ps = &self.program_status;
        p.share("program_status.ejected_share", ps.ejected_share);
        p.share("program_status.completed_share", ps.completed_share);
        if ps.ejected_share + ps.completed_share > 1.0 {
            p.push("program_status: ejected + completed shares exceed 1".into());
        }

        let cm = &self.casemgmt;
        p.share("casemgmt.plan_share", cm.plan_share);
        p.non_negative("casemgmt.plan_mean_days", cm.plan_mean_days);
        p.non_negative("casemgmt.contacts_per_month", cm.contacts_per_month);
        p.positive("casemgmt.contacts_shape", cm.contacts_shape);
        p.non_negative("casemgmt.services_per_month", cm.services_per_month);
        let s = &cm.service_types;
        p.distribution(
            "casemgmt.service_types",
            &[s.housing, s.mat, s.treatment, s.transport, s.employment, s.benefits, s.legal],
        );
        if cm.months == 0 || cm.months > 60 {
            p.push("casemgmt.months must be between 1 and 60".into());
        }
        p.share("casemgmt.monthly_churn", cm.monthly_churn);
        let i = &cm.intake;
        p.share("casemgmt.intake.permanent_share", i.permanent_share);
        p.share("casemgmt.intake.sheltered_share", i.sheltered_share);
        if i.permanent_share > i.sheltered_share {
            p.push("casemgmt.intake.permanent_share exceeds sheltered_share (permanent housing is sheltered)".into());
        }
        p.share("casemgmt.intake.transitional_share", i.transitional_share);
        p.share("casemgmt.intake.continuum_share", i.continuum_share);
        p.share("casemgmt.intake.training_share", i.training_share);
        p.share("casemgmt.intake.full_time_share", i.full_time_share);
        p.share("casemgmt.intake.income_share", i.income_share);
        let e = &cm.effects;
        p.positive("casemgmt.effects.sheltered_odds", e.sheltered_odds);
        p.positive("casemgmt.effects.permanent_odds", e.permanent_odds);
        p.positive("casemgmt.effects.continuum_odds", e.continuum_odds);
        p.positive("casemgmt.effects.income_odds", e.income_odds);

        let t = &self.treatment;
        p.non_negative("treatment.rate_per_year", t.rate_per_year);
        p.share("treatment.entry_90d_with_intake", t.entry_90d_with_intake);
        p.share("treatment.entry_90d_otherwise", t.entry_90d_otherwise);
        p.distribution("treatment.modality", &[t.modality.mat, t.modality.outpatient, t.modality.residential]);
        p.positive("treatment.mean_days.mat", t.mean_days.mat);
        p.positive("treatment.mean_days.outpatient", t.mean_days.outpatient);
        p.positive("treatment.mean_days.residential", t.mean_days.residential);
        p.share("treatment.discharge_missing_share", t.discharge_missing_share);

        for &agency in Agency::ALL {
            let rates = self.recording.of(agency);
            let name = |field: &str| format!("recording.{}.{field}", agency.as_str());
            p.share(&name("typo"), rates.typo);
            p.share(&name("nickname"), rates.nickname);
            p.share(&name("swapped_names"), rates.swapped_names);
            p.share(&name("dob_error"), rates.dob_error);
            p.share(&name("sex_missing"), rates.sex_missing);
            p.share(&name("state_id"), rates.state_id);
            p.share(&name("upper_case"), rates.upper_case);
            p.share(&name("strip_diacritics"), rates.strip_diacritics);
            p.share(&name("one_family_part"), rates.one_family_part);
            p.share(&name("suffix"), rates.suffix);
            p.share(&name("dob_missing"), rates.dob_missing);
            p.share(&name("dob_invalid"), rates.dob_invalid);
            p.share(&name("id_error"), rates.id_error);
            p.share(&name("given_split"), rates.given_split);
            p.share(&name("middle_name"), rates.middle_name);
            p.share(&name("several_errors"), rates.several_errors);
            p.share(&name("city_missing"), rates.city_missing);
            p.share(&name("zip_missing"), rates.zip_missing);
            p.share(&name("place_spacing"), rates.place_spacing);
            p.share(&name("other_residence"), rates.other_residence);
            p.share(&name("local_id_duplicate"), rates.local_id_duplicate);
        }
        p.0
    }
}

impl Recording {
    /// The rates of one agency.
    pub fn of(&self, agency: Agency) -> &RecordingRates {
        match agency {
            Agency::Police => &self.police,
            Agency::Jail => &self.jail,
            Agency::Da => &self.da,
            Agency::Casemgmt => &self.casemgmt,
            Agency::Treatment => &self.treatment,
        }
    }
}

/// Deep-merge `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, problem: String) {
        self.0.push(problem);
    }
    fn share(&mut self, name: &str, v: f64) {
        if !(0.0..=1.0).contains(&v) {
            self.push(format!("{name} = {v} is not a share between 0 and 1"));
        }
    }
    fn non_negative(&mut self, name: &str, v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            self.push(format!("{name} = {v} must be a finite number ≥ 0"));
        }
    }
    fn positive(&mut self, name: &str, v: f64) {
        if !(v.is_finite() && v > 0.0) {
            self.push(format!("{name} = {v} must be a finite number > 0"));
        }
    }
    fn at_least(&mut self, name: &str, v: f64, min: f64) {
        if v < min {
            self.push(format!("{name} = {v} must be at least {min}"));
        }
    }
    /// Shares of one categorical variable: each in [0, 1], summing to 1 (within rounding).
    fn distribution(&mut self, name: &str, shares: &[f64]) {
        for &s in shares {
            self.share(name, s);
        }
        let sum: f64 = shares.iter().sum();
        if (sum - 1.0).abs() > 1e-6 {
            self.push(format!("{name}: shares sum to {sum}, not 1"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_defaults_parse_and_validate() {
        let p = Params::defaults().unwrap();
        assert_eq!(p.program.start, "2016-01-01");
        assert_eq!(p.program.diversion_share, 0.6);
        assert_eq!(p.recording.jail.upper_case, 1.0);
    }

    #[test]
    fn overlay_replaces_only_its_keys() {
        let p = Params::from_overlay("t", "[demographics]\nfemale_share = 0.65\nage_mean = 26.0\n").unwrap();
        assert_eq!(p.demographics.female_share, 0.65);
        assert_eq!(p.demographics.age_mean, 26.0);
        assert_eq!(p.demographics.age_sd, Params::defaults().unwrap().demographics.age_sd);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_all_at_once() {
        assert!(matches!(Params::from_overlay("t", "[program]\nstrat = 1\n"), Err(ParamsError::Parse { .. })));
        let err = Params::from_overlay("t", "[program]\ndiversion_share = 1.5\n[jail]\nbooking_share = -1.0\n");
        match err {
            Err(ParamsError::Invalid { problems, .. }) => assert_eq!(problems.len(), 2, "{problems:?}"),
            other => panic!("expected invalid, got {other:?}"),
        }
    }
}
