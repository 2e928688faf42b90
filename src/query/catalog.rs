//! The named standard analyses of a diversion-program evaluation (statistics 1–9 of lead-evaluations.md).
//!
//! Each analysis is a query template with parameters. Definitions follow
//! `crate::synth::truth` (the synthetic program's true statistics), so the
//! steward's pre-noise values equal the truth on perfectly linked synthetic
//! data:
//! - day 0 is the first referral; a window `[a, b]` holds days a..=b;
//! - shares and means are over the persons of the group (arm by default);
//! - status at month m is read from the first intake on or after day 0
//!   (m = 0) or from the monthly status dated the first of the calendar month
//!   m months after the intake's month; persons without one are left out;
//! - timing (statistic 9) is among persons with an intake on or after day 0
//!   (within `follow_up_days`).
//!
//! Every analysis takes the common parameters `epsilon` (default 1),
//! `group_by` (comma-separated categories, default `arm`; `none` for no
//! grouping), cohort filters `arm`, `sex`, `age_band`, `race_ethnicity`,
//! `referral_type` (comma-separated values; empty: all) and, when it sums
//! per-person values, `lower` and `upper` (the clamp; empty: the analysis
//! default); and `persons_epsilon`, the shared denominator (empty: the
//! query releases its own count).

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::{
    At, Category, Cohort, Match, Outcome, Query, Require, Scalar, SharedPersons, Statistic, Window, MAX_DAY, MAX_MONTH,
};
use super::QueryError;

/// A parameter of an analysis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parameter {
    pub name: String,
    pub default: String,
    pub description: String,
}

/// The parameters given to `instantiate`, merged with the defaults.
pub struct Params<'a> {
    analysis: &'a str,
    values: BTreeMap<String, String>,
}

impl Params<'_> {
    fn err(&self, name: &str, reason: impl Into<String>) -> QueryError {
        QueryError::Parameter { analysis: self.analysis.into(), parameter: name.into(), reason: reason.into() }
    }

    fn get(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    fn int(&self, name: &str, min: i64, max: i64) -> Result<i64, QueryError> {
        let v: i64 = self.get(name).trim().parse().map_err(|_| self.err(name, "not an integer"))?;
        if !(min..=max).contains(&v) {
            return Err(self.err(name, format!("must lie in [{min}, {max}]")));
        }
        Ok(v)
    }

    fn day(&self, name: &str, min: i32, max: i32) -> Result<i32, QueryError> {
        Ok(self.int(name, i64::from(min), i64::from(max))? as i32)
    }

    fn boolean(&self, name: &str) -> Result<bool, QueryError> {
        match self.get(name).trim() {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            _ => Err(self.err(name, "must be true or false")),
        }
    }

    fn choice<'c>(&self, name: &str, choices: &[&'c str]) -> Result<&'c str, QueryError> {
        let v = self.get(name).trim();
        choices
            .iter()
            .find(|c| **c == v)
            .copied()
            .ok_or_else(|| self.err(name, format!("one of {}", choices.join(", "))))
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.get(name).split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
    }
}

type Build = fn(&Params) -> Result<Query, QueryError>;

/// A named analysis: a query template with parameters.
#[derive(Clone, Serialize)]
pub struct Analysis {
    pub name: String,
    /// The statistic's number in lead-evaluations.md ("Statistics evaluators ask for").
    pub statistic: u8,
    pub description: String,
    pub parameters: Vec<Parameter>,
    /// The per-person clamp with default parameters (`None`: each person adds 0 or 1).
    pub default_bounds: Option<[i64; 2]>,
    /// The query with every parameter at its default.
    pub template: Query,
    #[serde(skip)]
    build: Build,
    #[serde(skip)]
    numeric: bool,
}

impl std::fmt::Debug for Analysis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analysis").field("name", &self.name).field("template", &self.template).finish()
    }
}

impl Analysis {
    /// The query for `params` (names from `parameters`; missing ones take their default).
    pub fn instantiate(&self, params: &BTreeMap<String, String>) -> Result<Query, QueryError> {
        let mut values: BTreeMap<String, String> =
            self.parameters.iter().map(|p| (p.name.clone(), p.default.clone())).collect();
        for (k, v) in params {
            if !values.contains_key(k) {
                let known: Vec<&str> = self.parameters.iter().map(|p| p.name.as_str()).collect();
                return Err(QueryError::Parameter {
                    analysis: self.name.clone(),
                    parameter: k.clone(),
                    reason: format!("unknown (parameters: {})", known.join(", ")),
                });
            }
            values.insert(k.clone(), v.clone());
        }
        let p = Params { analysis: &self.name, values };
        let mut q = (self.build)(&p)?;

        // Common parameters.
        let eps: f64 = p.get("epsilon").trim().parse().map_err(|_| p.err("epsilon", "not a number"))?;
        q.epsilon = eps;
        let mut group_by = Vec::new();
        for g in p.list("group_by") {
            if g == "none" {
                continue;
            }
            let c = Category::ALL
                .into_iter()
                .find(|c| c.as_str() == g)
                .ok_or_else(|| p.err("group_by", "categories: arm, sex, age_band, race_ethnicity, referral_type"))?;
            group_by.push(c);
        }
        q.group_by = group_by;
        let filter = |name: &str| {
            let l = p.list(name);
            (!l.is_empty()).then_some(l)
        };
        q.cohort.arm = filter("arm");
        q.cohort.sex = filter("sex");
        q.cohort.age_band = filter("age_band");
        q.cohort.race_ethnicity = filter("race_ethnicity");
        q.cohort.referral_type = filter("referral_type");
        let shared = p.get("persons_epsilon").trim();
        if !shared.is_empty() {
            let epsilon: f64 = shared.parse().map_err(|_| p.err("persons_epsilon", "not a number"))?;
            q.persons = Some(SharedPersons { epsilon });
        }
        if self.numeric {
            let (lower, upper) = (p.get("lower").trim(), p.get("upper").trim());
            if !lower.is_empty() || !upper.is_empty() {
                let default = q.effective_bounds().unwrap_or([0, 1]);
                let parse = |name: &str, s: &str, d: i64| -> Result<i64, QueryError> {
                    if s.is_empty() {
                        Ok(d)
                    } else {
                        s.parse().map_err(|_| p.err(name, "not an integer"))
                    }
                };
                q.bounds = Some([parse("lower", lower, default[0])?, parse("upper", upper, default[1])?]);
            }
        }
        Ok(q)
    }
}

fn param(name: &str, default: &str, description: &str) -> Parameter {
    Parameter { name: name.into(), default: default.into(), description: description.into() }
}

fn common(numeric: bool) -> Vec<Parameter> {
    let mut v = vec![
        param("epsilon", "1", "privacy loss of the query, in (0, 10]"),
        param(
            "group_by",
            "arm",
            "comma-separated: arm, sex, age_band, race_ethnicity, referral_type; `none` for no grouping",
        ),
        param("arm", "", "cohort filter: comma-separated arms; empty: all"),
        param("sex", "", "cohort filter: f, m, x, unknown; empty: all"),
        param("age_band", "", "cohort filter: under_18, 18-25, 26-35, 36-45, 46-55, 56+, unknown; empty: all"),
        param("race_ethnicity", "", "cohort filter: comma-separated values; empty: all"),
        param("referral_type", "", "cohort filter: arrest, social_contact; empty: all"),
        param(
            "persons_epsilon",
            "",
            "divide by the shared census of the cohort and grouping, released once at this epsilon and reused \
             (means, differences, rates and shares of outcomes every person has); empty: the query's own count",
        ),
    ];
    if numeric {
        v.push(param("lower", "", "per-person clamp, lower end; empty: the analysis default"));
        v.push(param("upper", "", "per-person clamp, upper end; empty: the analysis default"));
    }
    v
}

fn base(outcome: Outcome, statistic: Statistic) -> Query {
    Query {
        cohort: Cohort::default(),
        anchor: Default::default(),
        outcome: Some(outcome),
        statistic,
        group_by: Vec::new(),
        bounds: None,
        epsilon: 1.0,
        persons: None,
    }
}

fn filter(pairs: &[(&str, Scalar)]) -> BTreeMap<String, Match> {
    pairs.iter().map(|(k, v)| (k.to_string(), Match::One(v.clone()))).collect()
}

fn arrests(p: &Params) -> Result<BTreeMap<String, Match>, QueryError> {
    Ok(if p.boolean("non_warrant")? { filter(&[("warrant", Scalar::Bool(false))]) } else { BTreeMap::new() })
}

fn window_days(p: &Params) -> Result<i32, QueryError> {
    p.day("window_days", 1, MAX_DAY)
}

/// The window of a period: `before` = `[-days, -1]`, `after` = `[0, days - 1]`.
fn period(p: &Params) -> Result<Window, QueryError> {
    let w = window_days(p)?;
    Ok(match p.choice("period", &["before", "after"])? {
        "before" => Window(-w, -1),
        _ => Window(0, w - 1),
    })
}

fn status_share(kind_field: &str, values: Vec<Scalar>, p: &Params) -> Result<Query, QueryError> {
    let month = p.int("month", 0, i64::from(MAX_MONTH))? as u32;
    Ok(base(
        Outcome::Status {
            kind: "monthly_status".into(),
            field: kind_field.into(),
            filter: BTreeMap::new(),
            values: Some(values),
            at: At::Month { month, of: "intake".into() },
        },
        Statistic::Share {},
    ))
}

fn with_intake(follow_up: i32) -> Require {
    Require { kind: "intake".into(), filter: BTreeMap::new(), window: Window(0, follow_up) }
}

struct Def {
    name: &'static str,
    statistic: u8,
    description: &'static str,
    params: Vec<Parameter>,
    numeric: bool,
    build: Build,
}

fn defs() -> Vec<Def> {
    let non_warrant = || param("non_warrant", "false", "count only arrests whose warrant flag is false");
    let month = || param("month", "0", "month after intake: 0 is the intake record, m > 0 the monthly status");
    let follow_up = || param("follow_up_days", "365", "only persons with an intake in [0, follow_up_days]");
    vec![
        Def {
            name: "referral_funnel",
            statistic: 1,
            description: "Referral funnel: persons referred, and per stage: ineligible, declined, no timely intake, enrolled (screening of the first referral; an intake in [0, within_days] is timely).",
            params: vec![param("within_days", "7", "an intake this many days after referral is timely")],
            numeric: false,
            build: |p| {
                let within_days = p.day("within_days", 0, MAX_DAY)?;
                Ok(base(Outcome::Funnel { within_days, intake: "intake".into() }, Statistic::Histogram {}))
            },
        },
        Def {
            name: "arrests_per_person",
            statistic: 2,
            description: "Mean arrests per person in days [from, to] after referral (e.g. -182..-1 before, 0..181 after, 182..364 six to twelve months after).",
            params: vec![param("from", "0", "first day of the window"), param("to", "181", "last day of the window"), non_warrant()],
            numeric: true,
            build: |p| {
                let w = Window(p.day("from", -MAX_DAY, MAX_DAY)?, p.day("to", -MAX_DAY, MAX_DAY)?);
                Ok(base(Outcome::Count { kind: "arrest".into(), filter: arrests(p)?, window: w }, Statistic::Mean {}))
            },
        },
        Def {
            name: "arrests_before_after",
            statistic: 2,
            description: "Mean per-person change in arrests: [0, window_days-1] after referral minus [-window_days, -1] before (one noisy sum of differences and a noisy count).",
            params: vec![param("window_days", "182", "length of each window in days"), non_warrant()],
            numeric: true,
            build: |p| {
                let w = window_days(p)?;
                Ok(base(
                    Outcome::Count { kind: "arrest".into(), filter: arrests(p)?, window: Window(0, w - 1) },
                    Statistic::Difference { baseline: Window(-w, -1) },
                ))
            },
        },
        Def {
            name: "any_arrest",
            statistic: 3,
            description: "Share of persons with any arrest (or any non-warrant arrest) in [0, window_days-1] after referral.",
            params: vec![param("window_days", "182", "length of the window in days"), non_warrant()],
            numeric: false,
            build: |p| {
                let w = window_days(p)?;
                Ok(base(Outcome::Any { kind: "arrest".into(), filter: arrests(p)?, window: Window(0, w - 1) }, Statistic::Share {}))
            },
        },
        Def {
            name: "felony_charge",
            statistic: 4,
            description: "Share of persons with a felony charge filed in [0, window_days-1] after referral.",
            params: vec![param("window_days", "365", "length of the window in days")],
            numeric: false,
            build: |p| {
                let w = window_days(p)?;
                let f = filter(&[("level", Scalar::Str("felony".into()))]);
                Ok(base(Outcome::Any { kind: "charge".into(), filter: f, window: Window(0, w - 1) }, Statistic::Share {}))
            },
        },
        Def {
            name: "violent_charge",
            statistic: 4,
            description: "Share of persons with a violent charge filed in [0, window_days-1] after referral.",
            params: vec![param("window_days", "365", "length of the window in days")],
            numeric: false,
            build: |p| {
                let w = window_days(p)?;
                let f = filter(&[("violent", Scalar::Bool(true))]);
                Ok(base(Outcome::Any { kind: "charge".into(), filter: f, window: Window(0, w - 1) }, Statistic::Share {}))
            },
        },
        Def {
            name: "rearrest_free",
            statistic: 5,
            description: "Survival without rearrest: share of persons with no arrest in [0, day] after referral (e.g. day 90, 180, 365).",
            params: vec![param("day", "90", "last day of the survival window")],
            numeric: false,
            build: |p| {
                let d = p.day("day", 0, MAX_DAY)?;
                Ok(base(
                    Outcome::NoEvent { kind: "arrest".into(), filter: BTreeMap::new(), window: Window(0, d) },
                    Statistic::Share {},
                ))
            },
        },
        Def {
            name: "days_to_rearrest",
            statistic: 5,
            description: "Mean days from referral to the first arrest in [0, window_days-1], censored at window_days.",
            params: vec![param("window_days", "365", "follow-up in days")],
            numeric: true,
            build: |p| {
                let w = window_days(p)?;
                Ok(base(
                    Outcome::DaysToFirst { kind: "arrest".into(), filter: BTreeMap::new(), window: Window(0, w - 1) },
                    Statistic::Mean {},
                ))
            },
        },
        Def {
            name: "jail_bookings_per_person_year",
            statistic: 6,
            description: "Jail bookings per person-year in the year before ([-365, -1]) or after ([0, 364]) referral, with person-days of exposure.",
            params: vec![param("period", "after", "before or after"), param("window_days", "365", "length of the period in days")],
            numeric: true,
            build: |p| {
                Ok(base(
                    Outcome::Count { kind: "booking".into(), filter: BTreeMap::new(), window: period(p)? },
                    Statistic::Rate { per_days: 365 },
                ))
            },
        },
        Def {
            name: "jail_days_per_person_year",
            statistic: 6,
            description: "Jail days (nights in custody from booking to release) per person-year in the year before or after referral, with person-days of exposure.",
            params: vec![param("period", "after", "before or after"), param("window_days", "365", "length of the period in days")],
            numeric: true,
            build: |p| {
                Ok(base(
                    Outcome::DaysCovered {
                        kind: "booking".into(),
                        filter: BTreeMap::new(),
                        until: "release_date".into(),
                        window: period(p)?,
                    },
                    Statistic::Rate { per_days: 365 },
                ))
            },
        },
        Def {
            name: "jail_bookings_before_after",
            statistic: 6,
            description: "Mean per-person change in jail bookings: the year after referral minus the year before.",
            params: vec![param("window_days", "365", "length of each period in days")],
            numeric: true,
            build: |p| {
                let w = window_days(p)?;
                Ok(base(
                    Outcome::Count { kind: "booking".into(), filter: BTreeMap::new(), window: Window(0, w - 1) },
                    Statistic::Difference { baseline: Window(-w, -1) },
                ))
            },
        },
        Def {
            name: "jail_days_before_after",
            statistic: 6,
            description: "Mean per-person change in jail days: the year after referral minus the year before.",
            params: vec![param("window_days", "365", "length of each period in days")],
            numeric: true,
            build: |p| {
                let w = window_days(p)?;
                Ok(base(
                    Outcome::DaysCovered {
                        kind: "booking".into(),
                        filter: BTreeMap::new(),
                        until: "release_date".into(),
                        window: Window(0, w - 1),
                    },
                    Statistic::Difference { baseline: Window(-w, -1) },
                ))
            },
        },
        Def {
            name: "housing_status",
            statistic: 7,
            description: "Share of persons in permanent housing (or sheltered: not on the street, or any one housing value) at intake (month 0) or month m after intake.",
            params: vec![
                month(),
                param("housing", "permanent", "permanent, sheltered (not street), street, shelter or transitional"),
            ],
            numeric: false,
            build: |p| {
                let values: Vec<Scalar> =
                    match p.choice("housing", &["permanent", "sheltered", "street", "shelter", "transitional"])? {
                        "sheltered" => ["shelter", "transitional", "permanent"].iter().map(|s| Scalar::Str(s.to_string())).collect(),
                        one => vec![Scalar::Str(one.into())],
                    };
                status_share("housing", values, p)
            },
        },
        Def {
            name: "housing_at_month",
            statistic: 7,
            description: "Persons by housing (street, shelter, transitional, permanent) at intake (month 0) or month m after intake.",
            params: vec![month()],
            numeric: false,
            build: |p| {
                let month = p.int("month", 0, i64::from(MAX_MONTH))? as u32;
                Ok(base(
                    Outcome::Status {
                        kind: "monthly_status".into(),
                        field: "housing".into(),
                        filter: BTreeMap::new(),
                        values: None,
                        at: At::Month { month, of: "intake".into() },
                    },
                    Statistic::Histogram {},
                ))
            },
        },
        Def {
            name: "employment_status",
            statistic: 8,
            description: "Share of persons employed (part or full time) at intake (month 0) or month m after intake.",
            params: vec![month()],
            numeric: false,
            build: |p| {
                status_share("employment", vec![Scalar::Str("part_time".into()), Scalar::Str("full_time".into())], p)
            },
        },
        Def {
            name: "income_benefits_status",
            statistic: 8,
            description: "Share of persons with income or benefits at intake (month 0) or month m after intake.",
            params: vec![month()],
            numeric: false,
            build: |p| status_share("income_benefits", vec![Scalar::Bool(true)], p),
        },
        Def {
            name: "days_to_intake",
            statistic: 9,
            description: "Mean days from referral to the first intake on or after it, among persons with an intake in [0, follow_up_days].",
            params: vec![follow_up()],
            numeric: true,
            build: |p| {
                let f = p.day("follow_up_days", 0, MAX_DAY)?;
                let mut q = base(
                    Outcome::DaysToFirst { kind: "intake".into(), filter: BTreeMap::new(), window: Window(0, f) },
                    Statistic::Mean {},
                );
                q.cohort.require = vec![with_intake(f)];
                q.bounds = Some([0, 60.min(i64::from(f) + 1)]);
                Ok(q)
            },
        },
        Def {
            name: "intake_within_days",
            statistic: 9,
            description: "Share of persons whose first intake is within [0, within_days] of referral, among persons with an intake in [0, follow_up_days].",
            params: vec![param("within_days", "7", "days after referral"), follow_up()],
            numeric: false,
            build: |p| {
                let f = p.day("follow_up_days", 0, MAX_DAY)?;
                let within = p.day("within_days", 0, MAX_DAY)?;
                let mut q = base(
                    Outcome::Any { kind: "intake".into(), filter: BTreeMap::new(), window: Window(0, within) },
                    Statistic::Share {},
                );
                q.cohort.require = vec![with_intake(f)];
                Ok(q)
            },
        },
        Def {
            name: "days_to_plan",
            statistic: 9,
            description: "Mean days from referral to the first individual plan on or after it, among persons with an intake and a plan in [0, follow_up_days].",
            params: vec![follow_up()],
            numeric: true,
            build: |p| {
                let f = p.day("follow_up_days", 0, MAX_DAY)?;
                let mut q = base(
                    Outcome::DaysToFirst { kind: "plan".into(), filter: BTreeMap::new(), window: Window(0, f) },
                    Statistic::Mean {},
                );
                q.cohort.require = vec![
                    with_intake(f),
                    Require { kind: "plan".into(), filter: BTreeMap::new(), window: Window(0, f) },
                ];
                q.bounds = Some([0, 90.min(i64::from(f) + 1)]);
                Ok(q)
            },
        },
    ]
}

/// Every named analysis, with its template at default parameters.
pub fn catalog() -> Vec<Analysis> {
    defs()
        .into_iter()
        .filter_map(|d| {
            let mut parameters = d.params;
            parameters.extend(common(d.numeric));
            let mut a = Analysis {
                name: d.name.into(),
                statistic: d.statistic,
                description: d.description.into(),
                parameters,
                default_bounds: None,
                template: base(Outcome::Funnel { within_days: 7, intake: String::new() }, Statistic::Count {}),
                build: d.build,
                numeric: d.numeric,
            };
            let template = a.instantiate(&BTreeMap::new()).ok()?;
            a.default_bounds = template.effective_bounds();
            a.template = template;
            Some(a)
        })
        .collect()
}

/// The analysis called `name`.
pub fn find(name: &str) -> Result<Analysis, QueryError> {
    catalog().into_iter().find(|a| a.name == name).ok_or_else(|| QueryError::UnknownAnalysis(name.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::engine::plan;
    use crate::schema::Schema;

    #[test]
    fn every_analysis_plans_at_its_defaults() {
        let schema = Schema::default_schema().unwrap();
        let all = catalog();
        assert_eq!(all.len(), defs().len(), "every template instantiates");
        for n in 1..=9 {
            assert!(all.iter().any(|a| a.statistic == n), "statistic {n} covered");
        }
        for a in &all {
            let p = plan(&a.template, &schema).unwrap_or_else(|e| panic!("{}: {e}", a.name));
            assert_eq!(p.bounds(), a.default_bounds, "{}", a.name);
            serde_json::to_string(a).unwrap();
        }
    }

    #[test]
    fn parameters_are_checked() {
        let a = find("arrests_before_after").unwrap();
        let params = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let q = a.instantiate(&params(&[("window_days", "90"), ("group_by", "arm,sex"), ("upper", "3")])).unwrap();
        assert_eq!(q.statistic, Statistic::Difference { baseline: Window(-90, -1) });
        assert_eq!(q.group_by, vec![Category::Arm, Category::Sex]);
        assert_eq!(q.bounds, Some([-5, 3]));
        assert!(a.instantiate(&params(&[("window", "90")])).is_err());
        assert!(a.instantiate(&params(&[("window_days", "0")])).is_err());
        assert!(a.instantiate(&params(&[("group_by", "planet")])).is_err());
        assert!(a.instantiate(&params(&[("epsilon", "lots")])).is_err());
        let q = a.instantiate(&params(&[("group_by", "none"), ("sex", "f,x")])).unwrap();
        assert!(q.group_by.is_empty());
        assert_eq!(q.cohort.sex, Some(vec!["f".to_string(), "x".to_string()]));
        assert!(matches!(find("nope"), Err(QueryError::UnknownAnalysis(_))));
    }
}
