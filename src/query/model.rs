//! The query an evaluator sends, as JSON, and its canonical form.
//!
//! ```json
//! {
//!   "cohort": {"arm": ["diversion"], "sex": ["f"], "require": [{"kind": "intake", "window": [0, 365]}]},
//!   "anchor": "first_referral",
//!   "outcome": {"type": "count", "kind": "arrest", "where": {"warrant": false}, "window": [0, 181]},
//!   "statistic": {"type": "difference", "baseline": [-182, -1]},
//!   "group_by": ["arm"],
//!   "bounds": [-5, 5],
//!   "epsilon": 1.0
//! }
//! ```
//!
//! Every day number is relative to the anchor, each person's first referral
//! (day 0); a window `[from, to]` holds the days `from..=to`. The cohort is
//! the persons with a referral, narrowed by declared public categories and by
//! required events. docs/queries.md describes every field.
//!
//! Canonical form: `Query::canonical` writes the query with defaults filled
//! in (anchor, bounds, funnel and rate parameters), lists sorted and
//! deduplicated, single filter values turned into one-element lists, object
//! keys sorted and numbers in one spelling. Two queries that mean the same
//! have the same canonical form; epsilon is part of it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::QueryError;

/// Earliest and latest day a window, a status day or a requirement may name (about ten years either side).
pub const MAX_DAY: i32 = 3650;
/// Largest month a status may be asked at.
pub const MAX_MONTH: u32 = 120;
/// Largest per-person count (events in a window) a query may clamp to.
pub const MAX_COUNT: i64 = 100;
/// Default per-person clamp of an event count: `[0, 5]` (Seattle's arrests in 6 months).
pub const DEFAULT_COUNT_UPPER: i64 = 5;
/// Default per-person clamp of days covered (e.g. jail days) in a window: `[0, 90]`.
pub const DEFAULT_DAYS_COVERED_UPPER: i64 = 90;
/// Default intake window of the referral funnel: an intake in `[0, 7]` is timely.
pub const DEFAULT_FUNNEL_DAYS: i32 = 7;
/// Default period of a rate: per person-year of 365 days.
pub const DEFAULT_RATE_DAYS: u32 = 365;

/// A declared public category of a person, taken from their first referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The referral's `arm` (diversion, comparison).
    Arm,
    /// The released identity category `sex` (f, m, x; unknown when missing).
    Sex,
    /// Age at the first referral: under_18, 18-25, 26-35, 36-45, 46-55, 56+, unknown.
    AgeBand,
    /// The referral's `race_ethnicity`.
    RaceEthnicity,
    /// The referral's `referral_type` (arrest, social_contact).
    ReferralType,
}

impl Category {
    pub const ALL: [Category; 5] =
        [Category::Arm, Category::Sex, Category::AgeBand, Category::RaceEthnicity, Category::ReferralType];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Arm => "arm",
            Category::Sex => "sex",
            Category::AgeBand => "age_band",
            Category::RaceEthnicity => "race_ethnicity",
            Category::ReferralType => "referral_type",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Days relative to the anchor, `[from, to]`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window(pub i32, pub i32);

impl Window {
    /// Number of days in the window.
    pub fn days(self) -> i64 {
        i64::from(self.1) - i64::from(self.0) + 1
    }

    pub(crate) fn validate(self) -> Result<(), QueryError> {
        let err = |reason: &str| Err(QueryError::Window { from: self.0, to: self.1, reason: reason.into() });
        if self.0 > self.1 {
            return err("inverted: `from` is after `to`");
        }
        if self.0 < -MAX_DAY || self.1 > MAX_DAY {
            return err(&format!("days must lie in [-{MAX_DAY}, {MAX_DAY}]"));
        }
        Ok(())
    }
}

/// A field value in a filter or a status value list: a bool, an integer or an enum value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Str(s) => write!(f, "{s}"),
        }
    }
}

/// An integer range filter: `{"min": 30}`, `{"max": 10}`, `{"min": 1, "max": 5}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntRange {
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
}

/// A condition on one field of an event: a value, any of several values, or an integer range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Match {
    One(Scalar),
    Any(Vec<Scalar>),
    Range(IntRange),
}

impl Match {
    fn normalized(&self) -> Match {
        match self {
            Match::One(s) => Match::Any(vec![s.clone()]),
            Match::Any(list) => Match::Any(sorted(list.clone())),
            Match::Range(r) => Match::Range(r.clone()),
        }
    }
}

/// Field filters on events of one kind: every condition must hold.
pub type Filter = BTreeMap<String, Match>;

fn normalized_filter(f: &Filter) -> Filter {
    f.iter().map(|(k, m)| (k.clone(), m.normalized())).collect()
}

/// Persons who have at least one event of `kind` matching `where` in `window`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Require {
    pub kind: String,
    #[serde(default, rename = "where")]
    pub filter: Filter,
    pub window: Window,
}

/// Who is counted: persons with a referral, narrowed by public categories and required events.
///
/// A category absent means every value; a list keeps persons whose value is in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cohort {
    #[serde(default)]
    pub arm: Option<Vec<String>>,
    #[serde(default)]
    pub sex: Option<Vec<String>>,
    #[serde(default)]
    pub age_band: Option<Vec<String>>,
    #[serde(default)]
    pub race_ethnicity: Option<Vec<String>>,
    #[serde(default)]
    pub referral_type: Option<Vec<String>>,
    #[serde(default)]
    pub require: Vec<Require>,
}

impl Cohort {
    /// The filter list of a category.
    pub fn filter(&self, c: Category) -> Option<&Vec<String>> {
        match c {
            Category::Arm => self.arm.as_ref(),
            Category::Sex => self.sex.as_ref(),
            Category::AgeBand => self.age_band.as_ref(),
            Category::RaceEthnicity => self.race_ethnicity.as_ref(),
            Category::ReferralType => self.referral_type.as_ref(),
        }
    }

    fn normalized(&self) -> Cohort {
        let list = |l: &Option<Vec<String>>| l.as_ref().map(|v| sorted(v.clone()));
        let mut require: Vec<Require> = self
            .require
            .iter()
            .map(|r| Require { kind: r.kind.clone(), filter: normalized_filter(&r.filter), window: r.window })
            .collect();
        require.sort();
        require.dedup();
        Cohort {
            arm: list(&self.arm),
            sex: list(&self.sex),
            age_band: list(&self.age_band),
            race_ethnicity: list(&self.race_ethnicity),
            referral_type: list(&self.referral_type),
            require,
        }
    }
}

/// The day 0 of every person. Only one anchor is defined: the first referral.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// The date of the person's earliest referral (ties: the first received).
    #[default]
    FirstReferral,
}

/// When a status is read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum At {
    /// The latest record of the kind dated on or before day `day`.
    Day { day: i32 },
    /// Month `month` after the first record of kind `of` on or after day 0:
    /// month 0 is that record itself; month m > 0 is the record of the kind
    /// dated the first day of the calendar month m months after its month.
    Month { month: u32, of: String },
}

/// The per-person value a statistic is computed over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// Number of events of `kind` matching `where` in `window`.
    Count {
        kind: String,
        #[serde(default, rename = "where")]
        filter: Filter,
        window: Window,
    },
    /// 1 if the person has such an event in the window, else 0.
    Any {
        kind: String,
        #[serde(default, rename = "where")]
        filter: Filter,
        window: Window,
    },
    /// 1 if the person has no such event in the window, else 0 (e.g. survival without rearrest).
    #[serde(rename = "none")]
    NoEvent {
        kind: String,
        #[serde(default, rename = "where")]
        filter: Filter,
        window: Window,
    },
    /// Days from the window's start to the first such event in it; the
    /// window's length in days when there is none (censored at its end).
    DaysToFirst {
        kind: String,
        #[serde(default, rename = "where")]
        filter: Filter,
        window: Window,
    },
    /// Days of the window covered by the events' spans `[event date, until)`
    /// summed over events (an event with no `until` date covers to the
    /// window's end), e.g. jail days from bookings.
    DaysCovered {
        kind: String,
        #[serde(default, rename = "where")]
        filter: Filter,
        until: String,
        window: Window,
    },
    /// A field of one record at a point in time. With `values`, 1 if the
    /// field is one of them and 0 otherwise (missing field: 0); without, the
    /// field's value as a category (for a histogram). Persons without such a
    /// record have no value and are left out.
    Status {
        kind: String,
        field: String,
        #[serde(default, rename = "where")]
        filter: Filter,
        #[serde(default)]
        values: Option<Vec<Scalar>>,
        at: At,
    },
    /// The referral funnel stage: ineligible, declined (the first referral's
    /// screening), else enrolled with an `intake` record in `[0, within_days]`,
    /// else no_timely_intake.
    Funnel {
        #[serde(default = "default_funnel_days")]
        within_days: i32,
        #[serde(default = "default_intake")]
        intake: String,
    },
    /// A public category of the person, as a category (for a histogram).
    Category { name: Category },
}

fn default_funnel_days() -> i32 {
    DEFAULT_FUNNEL_DAYS
}

fn default_intake() -> String {
    "intake".into()
}

fn default_rate_days() -> u32 {
    DEFAULT_RATE_DAYS
}

impl Outcome {
    /// The outcome's window, for the outcomes that have one.
    pub fn window(&self) -> Option<Window> {
        match self {
            Outcome::Count { window, .. }
            | Outcome::Any { window, .. }
            | Outcome::NoEvent { window, .. }
            | Outcome::DaysToFirst { window, .. }
            | Outcome::DaysCovered { window, .. } => Some(*window),
            _ => None,
        }
    }

    /// Whether the per-person value is 0 or 1.
    pub fn is_binary(&self) -> bool {
        matches!(self, Outcome::Any { .. } | Outcome::NoEvent { .. } | Outcome::Status { values: Some(_), .. })
    }

    /// Whether the per-person value is a category.
    pub fn is_categorical(&self) -> bool {
        matches!(self, Outcome::Status { values: None, .. } | Outcome::Funnel { .. } | Outcome::Category { .. })
    }

    fn normalized(&self) -> Outcome {
        let mut o = self.clone();
        match &mut o {
            Outcome::Count { filter, .. }
            | Outcome::Any { filter, .. }
            | Outcome::NoEvent { filter, .. }
            | Outcome::DaysToFirst { filter, .. }
            | Outcome::DaysCovered { filter, .. } => *filter = normalized_filter(filter),
            Outcome::Status { filter, values, .. } => {
                *filter = normalized_filter(filter);
                if let Some(v) = values {
                    *v = sorted(v.clone());
                }
            }
            Outcome::Funnel { .. } | Outcome::Category { .. } => {}
        }
        o
    }
}

/// What is released about the per-person values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Statistic {
    /// Number of persons (with a 0/1 outcome: of persons whose value is 1).
    Count {},
    /// Share of persons whose 0/1 outcome is 1, among persons with a value.
    Share {},
    /// Sum of the clamped per-person values.
    Sum {},
    /// Mean of the clamped per-person values.
    Mean {},
    /// Mean of the per-person difference: outcome in its window minus outcome
    /// in `baseline`, clamped. Released as one noisy sum of differences and a
    /// noisy count.
    Difference { baseline: Window },
    /// Sum of the clamped values per `per_days` days of exposure (persons × window length).
    Rate {
        #[serde(default = "default_rate_days")]
        per_days: u32,
    },
    /// Number (and share) of persons in each value of a categorical outcome.
    Histogram {},
}

impl Statistic {
    pub fn name(&self) -> &'static str {
        match self {
            Statistic::Count {} => "count",
            Statistic::Share {} => "share",
            Statistic::Sum {} => "sum",
            Statistic::Mean {} => "mean",
            Statistic::Difference { .. } => "difference",
            Statistic::Rate { .. } => "rate",
            Statistic::Histogram {} => "histogram",
        }
    }

    /// Whether the statistic sums clamped per-person values (and so has bounds).
    pub fn is_numeric(&self) -> bool {
        matches!(self, Statistic::Sum {} | Statistic::Mean {} | Statistic::Difference { .. } | Statistic::Rate { .. })
    }
}

/// The default per-person clamp of a query and the widest one it may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundsRule {
    pub default: [i64; 2],
    pub limit: [i64; 2],
}

/// A query: who, what per person, what statistic, by which groups, at what epsilon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    #[serde(default)]
    pub cohort: Cohort,
    #[serde(default)]
    pub anchor: Anchor,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    pub statistic: Statistic,
    #[serde(default)]
    pub group_by: Vec<Category>,
    /// Per-person clamp `[lower, upper]` of numeric statistics; default per outcome (see `bounds_rule`).
    #[serde(default)]
    pub bounds: Option<[i64; 2]>,
    pub epsilon: f64,
    /// The denominator of a mean, difference, rate or share: the shared
    /// census of this cohort and grouping (released once at its own epsilon,
    /// reused for free by every query that names it) instead of a count of
    /// the query's own. Absent: the query releases its own count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persons: Option<SharedPersons>,
}

/// A shared denominator: the noisy number of persons of a cohort and grouping, released once (see `Query::census`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedPersons {
    /// The epsilon the census is (or was) released at; part of its identity.
    pub epsilon: f64,
}

impl Query {
    /// Parse a query from JSON (unknown fields refused).
    pub fn parse(json: &str) -> Result<Query, QueryError> {
        serde_json::from_str(json).map_err(|e| QueryError::Json(e.to_string()))
    }

    /// The default clamp of this query's per-person values and its limit;
    /// `None` when each person contributes 0 or 1 anyway (count, share, histogram).
    pub fn bounds_rule(&self) -> Result<Option<BoundsRule>, QueryError> {
        if !self.statistic.is_numeric() {
            return Ok(None);
        }
        let Some(outcome) = &self.outcome else {
            return Err(QueryError::Unsupported(format!("statistic `{}` needs an outcome", self.statistic.name())));
        };
        let rule = |d: [i64; 2], l: [i64; 2]| Ok(Some(BoundsRule { default: d, limit: l }));
        let unsupported = || {
            Err(QueryError::Unsupported(format!(
                "statistic `{}` needs a numeric outcome (count, any, none, days_to_first, days_covered, status with values)",
                self.statistic.name()
            )))
        };
        if let Statistic::Difference { baseline } = &self.statistic {
            let Some(w) = outcome.window() else {
                return Err(QueryError::Unsupported(
                    "a difference needs an outcome with a window (count, any, none, days_to_first, days_covered)"
                        .into(),
                ));
            };
            let days = w.days().max(baseline.days()).max(1);
            return match outcome {
                Outcome::Count { .. } => rule([-DEFAULT_COUNT_UPPER, DEFAULT_COUNT_UPPER], [-MAX_COUNT, MAX_COUNT]),
                Outcome::Any { .. } | Outcome::NoEvent { .. } => rule([-1, 1], [-1, 1]),
                Outcome::DaysToFirst { .. } => rule([-days, days], [-days, days]),
                Outcome::DaysCovered { .. } => {
                    let d = days.min(DEFAULT_DAYS_COVERED_UPPER);
                    rule([-d, d], [-days, days])
                }
                _ => unsupported(),
            };
        }
        if let Statistic::Rate { .. } = &self.statistic {
            if !matches!(
                outcome,
                Outcome::Count { .. } | Outcome::Any { .. } | Outcome::NoEvent { .. } | Outcome::DaysCovered { .. }
            ) {
                return Err(QueryError::Unsupported(
                    "a rate needs an outcome counted over a window (count, any, none, days_covered)".into(),
                ));
            }
        }
        match outcome {
            Outcome::Count { .. } => rule([0, DEFAULT_COUNT_UPPER], [0, MAX_COUNT]),
            Outcome::Any { .. } | Outcome::NoEvent { .. } | Outcome::Status { values: Some(_), .. } => {
                rule([0, 1], [0, 1])
            }
            Outcome::DaysToFirst { window, .. } => rule([0, window.days()], [0, window.days()]),
            Outcome::DaysCovered { window, .. } => {
                rule([0, window.days().min(DEFAULT_DAYS_COVERED_UPPER)], [0, window.days()])
            }
            _ => unsupported(),
        }
    }

    /// The clamp this query uses: its own bounds, else the default (`None` for count, share, histogram).
    pub fn effective_bounds(&self) -> Option<[i64; 2]> {
        match self.bounds_rule() {
            Ok(Some(rule)) => Some(self.bounds.unwrap_or(rule.default)),
            _ => self.bounds,
        }
    }

    /// The query with defaults filled in and lists in canonical order.
    pub fn normalized(&self) -> Query {
        let mut group_by = self.group_by.clone();
        group_by.sort();
        group_by.dedup();
        Query {
            cohort: self.cohort.normalized(),
            anchor: self.anchor,
            outcome: self.outcome.as_ref().map(Outcome::normalized),
            statistic: self.statistic.clone(),
            group_by,
            bounds: self.effective_bounds(),
            epsilon: self.epsilon,
            persons: self.persons,
        }
    }

    /// Whether a shared census can be this query's denominator: a mean,
    /// difference, rate or share of an outcome every cohort person has (one
    /// counted over a window; a status leaves out persons without a record).
    pub fn can_share_persons(&self) -> bool {
        matches!(
            self.statistic,
            Statistic::Mean {} | Statistic::Difference { .. } | Statistic::Rate { .. } | Statistic::Share {}
        ) && self.outcome.as_ref().and_then(Outcome::window).is_some()
    }

    /// The census a query with a shared denominator divides by: the persons
    /// of the same cohort (categories, required events, anchor) counted per
    /// group of the same grouping, at the shared epsilon. `None` without
    /// `persons`. Two queries over the same cohort and grouping name the same
    /// census (same canonical form), so it is released once and reused.
    pub fn census(&self) -> Option<Query> {
        let shared = self.persons?;
        Some(Query {
            cohort: self.cohort.clone(),
            anchor: self.anchor,
            outcome: None,
            statistic: Statistic::Count {},
            group_by: self.group_by.clone(),
            bounds: None,
            epsilon: shared.epsilon,
            persons: None,
        })
    }

    /// Stable JSON text of the normalized query: sorted keys, no spaces. Used for caching and hashing.
    pub fn canonical(&self) -> String {
        let value = serde_json::to_value(self.normalized()).unwrap_or(serde_json::Value::Null);
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out
    }

    /// `sha256:` and the hex SHA-256 of the canonical form.
    pub fn hash(&self) -> String {
        canonical_hash(&self.canonical())
    }
}

/// `sha256:<hex>` of a canonical query text.
pub fn canonical_hash(canonical: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    let mut out = String::from("sha256:");
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

/// JSON with object keys in sorted order and no white space.
fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = map.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(json: &str) -> Query {
        Query::parse(json).unwrap()
    }

    #[test]
    fn parses_every_outcome_and_statistic() {
        let outcomes = [
            r#"{"type":"count","kind":"arrest","window":[0,181]}"#,
            r#"{"type":"any","kind":"arrest","where":{"warrant":false},"window":[0,181]}"#,
            r#"{"type":"none","kind":"arrest","window":[0,90]}"#,
            r#"{"type":"days_to_first","kind":"arrest","window":[0,364]}"#,
            r#"{"type":"days_covered","kind":"booking","until":"release_date","window":[-365,-1]}"#,
            r#"{"type":"status","kind":"monthly_status","field":"housing","values":["permanent"],"at":{"month":6,"of":"intake"}}"#,
            r#"{"type":"status","kind":"monthly_status","field":"housing","at":{"day":182}}"#,
            r#"{"type":"funnel"}"#,
            r#"{"type":"category","name":"race_ethnicity"}"#,
        ];
        for o in outcomes {
            let text = format!(r#"{{"outcome":{o},"statistic":{{"type":"count"}},"epsilon":1}}"#);
            Query::parse(&text).unwrap_or_else(|e| panic!("{o}: {e}"));
        }
        for s in [
            r#"{"type":"count"}"#,
            r#"{"type":"share"}"#,
            r#"{"type":"sum"}"#,
            r#"{"type":"mean"}"#,
            r#"{"type":"difference","baseline":[-182,-1]}"#,
            r#"{"type":"rate"}"#,
            r#"{"type":"rate","per_days":30}"#,
            r#"{"type":"histogram"}"#,
        ] {
            Query::parse(&format!(r#"{{"statistic":{s},"epsilon":0.5}}"#)).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        let f = q(r#"{"outcome":{"type":"funnel"},"statistic":{"type":"histogram"},"epsilon":1}"#);
        assert_eq!(f.outcome, Some(Outcome::Funnel { within_days: 7, intake: "intake".into() }));
    }

    #[test]
    fn unknown_fields_are_refused() {
        for bad in [
            r#"{"statistic":{"type":"count"},"epsilon":1,"extra":1}"#,
            r#"{"statistic":{"type":"count","x":1},"epsilon":1}"#,
            r#"{"cohort":{"arms":["diversion"]},"statistic":{"type":"count"},"epsilon":1}"#,
            r#"{"outcome":{"type":"count","kind":"arrest","window":[0,1],"oops":2},"statistic":{"type":"count"},"epsilon":1}"#,
            r#"{"outcome":{"type":"status","kind":"k","field":"f","at":{"day":1,"of":"x"}},"statistic":{"type":"count"},"epsilon":1}"#,
            r#"{"statistic":{"type":"median"},"epsilon":1}"#,
            r#"{"statistic":{"type":"count"}}"#,
        ] {
            assert!(matches!(Query::parse(bad), Err(QueryError::Json(_))), "{bad}");
        }
    }

    #[test]
    fn canonical_ignores_key_order_spelling_and_defaults() {
        let a = q(r#"{"statistic":{"type":"mean"},"epsilon":1,
                      "outcome":{"window":[0,181],"kind":"arrest","type":"count","where":{"warrant":false}},
                      "group_by":["sex","arm","sex"],"cohort":{"arm":["diversion","comparison"]}}"#);
        let b = q(r#"{"cohort":{"require":[],"arm":["comparison","diversion"],"sex":null},"anchor":"first_referral",
                      "outcome":{"type":"count","kind":"arrest","where":{"warrant":[false]},"window":[0,181]},
                      "statistic":{"type":"mean"},"group_by":["arm","sex"],"bounds":[0,5],"epsilon":1.0}"#);
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(a.hash(), b.hash());
        assert!(a.canonical().contains(r#""bounds":[0,5]"#), "{}", a.canonical());
        assert!(!a.canonical().contains(' '));

        let c = Query { epsilon: 0.5, ..a.clone() };
        assert_ne!(a.canonical(), c.canonical(), "epsilon is part of the canonical form");
        let d = Query { bounds: Some([0, 3]), ..a.clone() };
        assert_ne!(a.canonical(), d.canonical());

        let e = q(r#"{"outcome":{"type":"funnel"},"statistic":{"type":"histogram"},"epsilon":1e0}"#);
        let f = q(
            r#"{"outcome":{"type":"funnel","within_days":7,"intake":"intake"},"statistic":{"type":"histogram"},"epsilon":1}"#,
        );
        assert_eq!(e.canonical(), f.canonical());
        let r1 = q(
            r#"{"outcome":{"type":"count","kind":"booking","window":[0,364]},"statistic":{"type":"rate"},"epsilon":2}"#,
        );
        let r2 = q(
            r#"{"outcome":{"type":"count","kind":"booking","window":[0,364]},"statistic":{"type":"rate","per_days":365},"epsilon":2.0}"#,
        );
        assert_eq!(r1.canonical(), r2.canonical());
    }

    #[test]
    fn default_bounds_per_query_kind() {
        let b = |o: &str, s: &str| {
            q(&format!(r#"{{"outcome":{o},"statistic":{s},"epsilon":1}}"#)).bounds_rule().unwrap().map(|r| r.default)
        };
        let arrests = r#"{"type":"count","kind":"arrest","window":[0,181]}"#;
        assert_eq!(b(arrests, r#"{"type":"mean"}"#), Some([0, 5]));
        assert_eq!(b(arrests, r#"{"type":"difference","baseline":[-182,-1]}"#), Some([-5, 5]));
        assert_eq!(
            b(r#"{"type":"days_to_first","kind":"arrest","window":[0,364]}"#, r#"{"type":"mean"}"#),
            Some([0, 365])
        );
        assert_eq!(b(arrests, r#"{"type":"share"}"#), None);
    }
}
