//! Planning and executing a query: validation, the noisy releases and their sensitivity, aggregation, post-processing.
//!
//! `plan` checks a query against the schema and fixes, before any data is
//! touched, every noisy release the query will make: its L1 sensitivity,
//! its share of epsilon, its noise scale and its 95% interval. `execute`
//! computes each cohort person's value, clamps it to the bounds, adds it to
//! the person's group, hands the per-group totals to the mechanism, and
//! turns the noisy totals into the answer's values (shares, means, rates)
//! and intervals by post-processing alone.
//!
//! Sensitivity. Neighbouring datasets differ by one person (add or remove).
//! Groups are cells of declared category values and each person is in
//! exactly one (or none), so one person changes one group's totals: a
//! release over all groups has the sensitivity of one group (parallel
//! composition). Within a group:
//!
//! | release | what one person adds | L1 sensitivity |
//! |---|---|---|
//! | `count` | 1 | 1 |
//! | `bins` (share, histogram) | 1 to exactly one bin | 1 |
//! | `sum` | a value clamped to `[lower, upper]` | max(\|lower\|, \|upper\|) |
//!
//! Epsilon. `count`, `share`, `histogram` and `sum` make one release at the
//! query's ε. `mean`, `difference` and `rate` make two: the sum at ¾ε and
//! the count at ¼ε (sequential composition: ¾ε + ¼ε = ε). The sum gets the
//! larger share because its sensitivity is the larger one (a mean's error is
//! mostly the sum's noise divided by the count).
//!
//! Intervals. A released integer's 95% interval is opendp's discrete Laplace
//! accuracy at α = 0.05. A value computed from k releases (a share from two
//! bins, a mean from a sum and a count) takes each release's interval at
//! α = 0.05/k and the range of the value over that box, so it covers with
//! probability at least 95% over the noise (a union bound).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{At, Category, Filter, Match, Outcome, Query, Scalar, Statistic, Window, MAX_DAY, MAX_MONTH};
use super::population::{
    first_of_month_after, Categories, Column, Events, Layout, Population, NO_CATEGORY, NO_INT, REFERRAL, SCREENING,
};
use super::QueryError;
use crate::dp::{self, Noise, Release};
use crate::schema::{FieldType, Schema};

/// The share of a query's epsilon spent on the sum of a mean, difference or rate (the count gets the rest).
pub const SUM_EPSILON_SHARE: f64 = 0.75;
/// Most values (groups × bins) one query may release.
pub const MAX_CELLS: usize = 10_000;
/// Funnel stages, in order.
pub const FUNNEL_STAGES: [&str; 4] = ["ineligible", "declined", "no_timely_intake", "enrolled"];
/// Label of the bin of a missing status value.
pub const MISSING: &str = "missing";
/// Statistic of the between-arm difference of a before/after change (difference in differences).
pub const DID: &str = "difference_in_differences";

/// A noisy release a plan will make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRelease {
    /// `count`, `sum` or `bins`.
    pub name: String,
    /// How many values it releases (groups × bins).
    pub values: usize,
    /// L1 sensitivity of the whole release to one person.
    pub sensitivity: i64,
    pub epsilon: f64,
    /// Discrete Laplace scale (sensitivity / epsilon, confirmed by opendp).
    pub noise_scale: f64,
    /// Half-width of each released value's 95% interval.
    pub ci95_half_width: f64,
}

/// What a query would release, without touching data or drawing noise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    pub query_hash: String,
    pub statistic: String,
    pub bounds: Option<[i64; 2]>,
    pub epsilon: f64,
    pub releases: Vec<PlannedRelease>,
    /// The shared census the query divides by (released once, reused for free; see `Query::persons`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persons: Option<Box<DryRun>>,
    /// The most bytes the answer can take (the steward refuses a query whose answer it could not keep).
    #[serde(default)]
    pub max_answer_bytes: usize,
}

/// One noisy release a value was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Noisy {
    pub release: String,
    pub value: i64,
    pub noise_scale: f64,
    pub ci95_half_width: f64,
}

/// One value of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// The group: category → value (empty without group_by).
    pub group: BTreeMap<String, String>,
    /// `count`, `share`, `persons`, `sum`, `mean`, `mean_difference`, `rate`, `person_days`.
    pub statistic: String,
    /// The histogram bin (or funnel stage) the value is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub value: f64,
    /// 95% interval (over the noise).
    pub ci95: (f64, f64),
    /// Noise scale of the first release the value comes from (all are in `noisy`).
    pub noise_scale: f64,
    /// Epsilon of the releases the value comes from (each release counted once).
    pub epsilon: f64,
    /// The noisy releases the value was computed from.
    pub noisy: Vec<Noisy>,
}

/// A query's answer: noisy values only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub query_hash: String,
    pub canonical: String,
    pub statistic: String,
    /// Per-person clamp of summed values; `None` when each person adds 0 or 1.
    pub bounds: Option<[i64; 2]>,
    pub epsilon_spent: f64,
    /// Filled in by the steward from the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_left: Option<f64>,
    pub releases: Vec<PlannedRelease>,
    pub values: Vec<Cell>,
}

/// How the per-person values are aggregated and released.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// One count per group.
    Count,
    /// Bins per group (share: [value 1, value 0]; histogram: the categories).
    Bins,
    /// One sum per group.
    Sum,
    /// A sum and a count per group.
    SumCount,
    /// One sum per group, divided by the shared census of the cohort and grouping (`Query::persons`).
    SumShared,
}

/// A checked query, with every release it will make.
#[derive(Debug, Clone)]
pub struct Plan {
    query: Query,
    canonical: String,
    hash: String,
    layout: Layout,
    categories: Categories,
    /// Allowed category codes of the cohort (None: all).
    allowed: [Option<Vec<bool>>; 5],
    require: Vec<(EventTest, Window)>,
    value: Value,
    baseline: Option<Window>,
    shape: Shape,
    /// Bin labels (share: ["1", "0"]; histogram: category values).
    bins: Vec<String>,
    /// Grouping categories and, for each, the category codes that form groups.
    group_by: Vec<(Category, Vec<u8>)>,
    /// Category code → position among the group's codes (u16::MAX: not a group), per grouping category.
    group_pos: Vec<Vec<u16>>,
    groups: usize,
    bounds: Option<[i64; 2]>,
    releases: Vec<PlannedRelease>,
    /// The plan of the shared census this query divides by (`Query::persons`).
    census: Option<Box<Plan>>,
}

mod compile;
mod execute;
mod intervals;

pub use self::compile::plan;
pub use self::execute::{execute, execute_with_census};
use self::{compile::*, intervals::*};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dp::{DpError, OpenDpNoise};
    use crate::record::PseudoRecord;

    fn schema() -> Schema {
        Schema::default_schema().unwrap()
    }

    fn rec(kind: &str, fields: serde_json::Value) -> PseudoRecord {
        PseudoRecord {
            source: "t".into(),
            kind: kind.into(),
            line: 1,
            epoch: 1,
            rid: "0".repeat(32),
            seq: 0,
            deleted: false,
            tokens: BTreeMap::new(),
            fields: serde_json::from_value(fields).unwrap(),
        }
    }

    /// Returns the true values: the pre-noise totals (tests only).
    struct Exact;
    impl Noise for Exact {
        fn release(&mut self, v: i64, sensitivity: i64, epsilon: f64) -> Result<Release, DpError> {
            Ok(Release { value: v, sensitivity, epsilon, scale: 1.0, ci95_half_width: 1.0 })
        }
    }

    fn pop() -> Population {
        let mut records = Vec::new();
        // Person 1: diversion, 2 arrests before, 1 after; intake day 3.
        records.push((1, rec("referral", serde_json::json!({"referral_date": "2018-01-10", "arm": "diversion", "referral_type": "arrest", "sex": "f", "age": 40, "race_ethnicity": "black", "screening": "eligible"}))));
        for d in ["2017-10-01", "2017-12-01", "2018-03-01"] {
            records.push((
                1,
                rec(
                    "arrest",
                    serde_json::json!({"arrest_date": d, "warrant": false, "violent": false, "felony": false}),
                ),
            ));
        }
        records.push((1, rec("intake", serde_json::json!({"intake_date": "2018-01-13", "housing": "street", "employment": "unemployed", "income_benefits": false}))));
        records.push((1, rec("monthly_status", serde_json::json!({"month": "2018-07-01", "housing": "permanent", "employment": "part_time", "income_benefits": true}))));
        // Person 2: comparison, no arrests; a booking of 10 days after.
        records.push((2, rec("referral", serde_json::json!({"referral_date": "2018-02-01", "arm": "comparison", "referral_type": "social_contact", "sex": "m", "age": 22}))));
        records
            .push((2, rec("booking", serde_json::json!({"booking_date": "2018-02-01", "release_date": "2018-02-11"}))));
        // Person 3: diversion, declined, 7 arrests after (clamped to 5).
        records.push((3, rec("referral", serde_json::json!({"referral_date": "2018-01-01", "arm": "diversion", "referral_type": "arrest", "sex": "x", "age": 60, "screening": "declined"}))));
        for i in 0..7 {
            records.push((3, rec("arrest", serde_json::json!({"arrest_date": format!("2018-02-{:02}", i + 1), "warrant": true, "violent": false, "felony": true}))));
        }
        Population::build(&schema(), records)
    }

    fn run(json: &str) -> Answer {
        let p = plan(&Query::parse(json).unwrap(), &schema()).unwrap();
        execute(&p, &pop(), &mut Exact).unwrap()
    }

    fn value(a: &Answer, group: &[(&str, &str)], statistic: &str, category: Option<&str>) -> f64 {
        let group: BTreeMap<String, String> = group.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        a.values
            .iter()
            .find(|c| c.group == group && c.statistic == statistic && c.category.as_deref() == category)
            .unwrap_or_else(|| panic!("no {statistic} {category:?} for {group:?} in {:#?}", a.values))
            .value
    }

    #[test]
    fn exact_values_of_each_statistic() {
        let a = run(
            r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"mean"},"group_by":["arm"],"epsilon":1}"#,
        );
        assert_eq!(value(&a, &[("arm", "diversion")], "mean", None), 3.0, "(1 + min(7, 5)) / 2");
        assert_eq!(value(&a, &[("arm", "diversion")], "persons", None), 2.0);
        assert_eq!(value(&a, &[("arm", "comparison")], "mean", None), 0.0);

        let a = run(
            r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"difference","baseline":[-182,-1]},"cohort":{"arm":["diversion"]},"epsilon":1}"#,
        );
        assert_eq!(value(&a, &[], "mean_difference", None), 2.0, "((1 - 2) + 5) / 2");

        let a = run(
            r#"{"outcome":{"type":"any","kind":"arrest","where":{"warrant":false},"window":[0,181]},"statistic":{"type":"share"},"epsilon":1}"#,
        );
        assert!((value(&a, &[], "share", None) - 1.0 / 3.0).abs() < 1e-12);

        let a = run(r#"{"outcome":{"type":"funnel"},"statistic":{"type":"histogram"},"group_by":["arm"],"epsilon":1}"#);
        assert_eq!(value(&a, &[("arm", "diversion")], "count", Some("declined")), 1.0);
        assert_eq!(value(&a, &[("arm", "diversion")], "count", Some("enrolled")), 1.0);
        assert_eq!(value(&a, &[("arm", "comparison")], "count", Some("no_timely_intake")), 1.0);
        assert_eq!(value(&a, &[("arm", "diversion")], "persons", None), 2.0);

        let a = run(
            r#"{"outcome":{"type":"days_covered","kind":"booking","until":"release_date","window":[0,364]},"statistic":{"type":"rate"},"cohort":{"arm":["comparison"]},"epsilon":1}"#,
        );
        assert_eq!(value(&a, &[], "rate", None), 10.0);
        assert_eq!(value(&a, &[], "person_days", None), 365.0);

        let a = run(
            r#"{"outcome":{"type":"status","kind":"monthly_status","field":"housing","values":["permanent"],"at":{"month":6,"of":"intake"}},"statistic":{"type":"share"},"epsilon":1}"#,
        );
        assert_eq!(value(&a, &[], "share", None), 1.0);
        assert_eq!(value(&a, &[], "persons", None), 1.0, "only person 1 has a month-6 status");
        let a = run(
            r#"{"outcome":{"type":"status","kind":"monthly_status","field":"housing","values":["permanent"],"at":{"month":0,"of":"intake"}},"statistic":{"type":"share"},"epsilon":1}"#,
        );
        assert_eq!(value(&a, &[], "share", None), 0.0, "street at intake");

        let a = run(
            r#"{"outcome":{"type":"days_to_first","kind":"arrest","window":[0,364]},"statistic":{"type":"mean"},"bounds":[0,365],"epsilon":1}"#,
        );
        let d1 = f64::from(
            super::super::population::parse_date("2018-03-01").unwrap()
                - super::super::population::parse_date("2018-01-10").unwrap(),
        );
        assert!((value(&a, &[], "mean", None) - (d1 + 365.0 + 31.0) / 3.0).abs() < 1e-9);

        let a =
            run(r#"{"outcome":{"type":"category","name":"age_band"},"statistic":{"type":"histogram"},"epsilon":1}"#);
        assert_eq!(value(&a, &[], "count", Some("56+")), 1.0);
        assert_eq!(value(&a, &[], "count", Some("18-25")), 1.0);

        let a = run(r#"{"statistic":{"type":"count"},"group_by":["sex"],"epsilon":1}"#);
        assert_eq!(value(&a, &[("sex", "x")], "count", None), 1.0);
        assert_eq!(value(&a, &[("sex", "unknown")], "count", None), 0.0);
        assert_eq!(a.values.len(), 4);

        let a = run(
            r#"{"statistic":{"type":"count"},"cohort":{"require":[{"kind":"intake","window":[0,30]}]},"epsilon":1}"#,
        );
        assert_eq!(value(&a, &[], "count", None), 1.0);
    }

    #[test]
    fn validation_errors_name_the_problem() {
        let s = schema();
        let e = |json: &str| plan(&Query::parse(json).unwrap(), &s).unwrap_err().to_string();
        assert!(e(
            r#"{"outcome":{"type":"count","kind":"arrests","window":[0,1]},"statistic":{"type":"sum"},"epsilon":1}"#
        )
        .contains("unknown record kind `arrests`"));
        assert!(e(r#"{"outcome":{"type":"count","kind":"arrest","where":{"warant":true},"window":[0,1]},"statistic":{"type":"sum"},"epsilon":1}"#).contains("no field `warant`"));
        assert!(e(r#"{"outcome":{"type":"count","kind":"charge","where":{"level":"high"},"window":[0,1]},"statistic":{"type":"sum"},"epsilon":1}"#).contains("unknown value `high`"));
        assert!(
            e(r#"{"cohort":{"arm":["treatment"]},"statistic":{"type":"count"},"epsilon":1}"#).contains("cohort.arm")
        );
        assert!(e(r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"mean"},"bounds":[0,1000],"epsilon":1}"#).contains("limit [0, 100]"));
        assert!(e(r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"mean"},"bounds":[3,3],"epsilon":1}"#).contains("lower must be below upper"));
        assert!(e(r#"{"statistic":{"type":"count"},"bounds":[0,1],"epsilon":1}"#).contains("bounds apply only"));
        for eps in ["0", "-1", "10.5"] {
            assert!(e(&format!(r#"{{"statistic":{{"type":"count"}},"epsilon":{eps}}}"#)).contains("epsilon"), "{eps}");
        }
        assert!(e(
            r#"{"outcome":{"type":"count","kind":"arrest","window":[10,1]},"statistic":{"type":"sum"},"epsilon":1}"#
        )
        .contains("inverted"));
        assert!(e(
            r#"{"outcome":{"type":"count","kind":"arrest","window":[0,9999]},"statistic":{"type":"sum"},"epsilon":1}"#
        )
        .contains("[-3650, 3650]"));
        assert!(e(r#"{"outcome":{"type":"funnel"},"statistic":{"type":"share"},"epsilon":1}"#).contains("0/1 outcome"));
        assert!(e(r#"{"outcome":{"type":"count","kind":"arrest","window":[0,1]},"statistic":{"type":"histogram"},"epsilon":1}"#).contains("categorical"));
        assert!(e(r#"{"outcome":{"type":"count","kind":"arrest","where":{"arrest_date":"2018-01-01"},"window":[0,1]},"statistic":{"type":"sum"},"epsilon":1}"#).contains("windows"));
    }

    #[test]
    fn sensitivity_and_epsilon_split_are_planned() {
        let s = schema();
        let p = |json: &str| plan(&Query::parse(json).unwrap(), &s).unwrap();
        let mean = p(
            r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"difference","baseline":[-182,-1]},"group_by":["arm","sex"],"epsilon":1}"#,
        );
        let r = mean.releases();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].name.as_str(), r[0].sensitivity, r[0].epsilon, r[0].values), ("sum", 5, 0.75, 8));
        assert_eq!((r[1].name.as_str(), r[1].sensitivity, r[1].epsilon), ("count", 1, 0.25));
        assert!(r.iter().map(|r| r.epsilon).sum::<f64>() <= 1.0);
        let share = p(
            r#"{"outcome":{"type":"any","kind":"arrest","window":[0,181]},"statistic":{"type":"share"},"group_by":["race_ethnicity"],"epsilon":0.5}"#,
        );
        assert_eq!(share.releases().len(), 1);
        assert_eq!(
            (share.releases()[0].sensitivity, share.releases()[0].epsilon, share.releases()[0].values),
            (1, 0.5, 14)
        );
        for e in [0.1, 0.3, 1.0 / 3.0, 7.77, 10.0] {
            let (a, b) = split(e);
            assert!(a + b <= e && a > 0.0 && b > 0.0, "{e}");
        }
    }

    #[test]
    fn a_shared_denominator_is_the_census_of_the_same_cohort_and_grouping() {
        let s = schema();
        let census_q = r#"{"statistic":{"type":"count"},"group_by":["arm"],"epsilon":0.5}"#;
        let census_plan = plan(&Query::parse(census_q).unwrap(), &s).unwrap();
        let census = execute(&census_plan, &pop(), &mut Exact).unwrap();
        let q = r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"difference","baseline":[-182,-1]},"group_by":["arm"],"persons":{"epsilon":0.5},"epsilon":1}"#;
        let p = plan(&Query::parse(q).unwrap(), &s).unwrap();
        assert_eq!(p.census().map(Plan::hash), Some(census_plan.hash()), "the census is the same query");
        // The query's own releases: the sum only, at its whole epsilon.
        assert_eq!(p.releases().len(), 1);
        assert_eq!((p.releases()[0].name.as_str(), p.releases()[0].epsilon), ("sum", 1.0));
        let a = execute_with_census(&p, &pop(), &mut Exact, Some(&census)).unwrap();
        assert_eq!(value(&a, &[("arm", "diversion")], "mean_difference", None), 2.0, "((1 - 2) + 5) / 2");
        assert_eq!(value(&a, &[("arm", "comparison")], "mean_difference", None), 0.0);
        assert!(!a.values.iter().any(|c| c.statistic == "persons"), "the census's counts are its own answer");
        let cell = a.values.iter().find(|c| c.statistic == "mean_difference").unwrap();
        assert_eq!(cell.epsilon, 1.5, "the value depends on the sum (1) and the census (0.5)");
        assert_eq!(cell.noisy[1].release, "persons");
        // The difference in differences: diversion minus comparison.
        assert_eq!(value(&a, &[("arm", "diversion - comparison")], DID, None), 2.0);

        // Without the census, or with another one, nothing is computed.
        assert!(execute(&p, &pop(), &mut Exact).is_err());
        let other = plan(&Query::parse(r#"{"statistic":{"type":"count"},"epsilon":0.5}"#).unwrap(), &s).unwrap();
        let other = execute(&other, &pop(), &mut Exact).unwrap();
        let e = execute_with_census(&p, &pop(), &mut Exact, Some(&other)).unwrap_err().to_string();
        assert!(e.contains("not the one"), "{e}");

        // A share divides its count of ones by the census.
        let q = r#"{"outcome":{"type":"any","kind":"arrest","where":{"warrant":false},"window":[0,181]},"statistic":{"type":"share"},"group_by":["arm"],"persons":{"epsilon":0.5},"epsilon":1}"#;
        let p = plan(&Query::parse(q).unwrap(), &s).unwrap();
        let a = execute_with_census(&p, &pop(), &mut Exact, Some(&census)).unwrap();
        assert_eq!(value(&a, &[("arm", "diversion")], "share", None), 0.5);

        // Refused where the census is not the denominator: statuses leave persons out; counts have none.
        for q in [
            r#"{"outcome":{"type":"status","kind":"monthly_status","field":"housing","values":["permanent"],"at":{"month":6,"of":"intake"}},"statistic":{"type":"share"},"persons":{"epsilon":0.5},"epsilon":1}"#,
            r#"{"statistic":{"type":"count"},"persons":{"epsilon":0.5},"epsilon":1}"#,
            r#"{"outcome":{"type":"funnel"},"statistic":{"type":"histogram"},"persons":{"epsilon":0.5},"epsilon":1}"#,
        ] {
            let e = plan(&Query::parse(q).unwrap(), &s).unwrap_err().to_string();
            assert!(e.contains("shared denominator"), "{q}: {e}");
        }
        // The census's epsilon is checked like any other.
        let q = r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"mean"},"persons":{"epsilon":0},"epsilon":1}"#;
        assert!(matches!(plan(&Query::parse(q).unwrap(), &s), Err(QueryError::Epsilon(_))));
    }

    /// Every release comes out at a fixed noisy value.
    struct Fixed(i64);
    impl Noise for Fixed {
        fn release(&mut self, _v: i64, sensitivity: i64, epsilon: f64) -> Result<Release, DpError> {
            let scale = dp::noise_scale(sensitivity, epsilon)?;
            Ok(Release { value: self.0, sensitivity, epsilon, scale, ci95_half_width: dp::ci95_half_width(scale)? })
        }
    }

    #[test]
    fn a_count_whose_interval_lies_below_zero_does_not_read_as_exact() {
        let p = plan(&Query::parse(r#"{"statistic":{"type":"count"},"epsilon":1}"#).unwrap(), &schema()).unwrap();
        let a = execute(&p, &pop(), &mut Fixed(-50)).unwrap();
        let c = &a.values[0];
        let hw = p.releases()[0].ci95_half_width;
        assert_eq!(c.value, 0.0);
        assert_eq!(c.ci95, (0.0, hw), "the half-width above the value shown, not [0, 0]");
        // Below 0 but within the half-width: still [0, a], not [0, a - 1] (which rounds towards [0, 0]).
        let a = execute(&p, &pop(), &mut Fixed(-1)).unwrap();
        assert_eq!(a.values[0].ci95, (0.0, hw));
        let a = execute(&p, &pop(), &mut Fixed(1)).unwrap();
        assert_eq!(a.values[0].ci95, (0.0, 1.0 + hw), "an interval reaching above 0 is cut at 0");
    }

    #[test]
    fn the_answer_never_exceeds_its_planned_size() {
        let s = schema();
        let census = execute(
            &plan(&Query::parse(r#"{"statistic":{"type":"count"},"group_by":["arm"],"epsilon":0.5}"#).unwrap(), &s)
                .unwrap(),
            &pop(),
            &mut OpenDpNoise::new(),
        )
        .unwrap();
        for (q, shared) in [
            (
                r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"mean"},"group_by":["arm","sex"],"epsilon":0.3}"#,
                false,
            ),
            (
                r#"{"outcome":{"type":"funnel"},"statistic":{"type":"histogram"},"group_by":["arm","age_band"],"epsilon":0.001}"#,
                false,
            ),
            (
                r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"difference","baseline":[-182,-1]},"group_by":["arm"],"persons":{"epsilon":0.5},"epsilon":0.000001}"#,
                true,
            ),
        ] {
            let p = plan(&Query::parse(q).unwrap(), &s).unwrap();
            for v in [-1_000_000_000, 0, 7, i64::MAX / 4] {
                let mut a = execute_with_census(&p, &pop(), &mut Fixed(v), shared.then_some(&census)).unwrap();
                a.budget_left = Some(1.0 / 3.0);
                let bytes = serde_json::to_vec(&a).unwrap().len();
                assert!(bytes <= p.max_answer_bytes(), "{q}: {bytes} > {}", p.max_answer_bytes());
                assert!(p.max_answer_bytes() < 3 * bytes, "{q}: a loose bound {} for {bytes}", p.max_answer_bytes());
            }
            assert_eq!(p.dry_run().max_answer_bytes, p.max_answer_bytes());
        }
    }

    #[test]
    fn expected_values_use_the_released_intervals_code() {
        let s = schema();
        let q = r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"mean"},"cohort":{"arm":["diversion"]},"bounds":[0,3],"epsilon":0.7}"#;
        let p = plan(&Query::parse(q).unwrap(), &s).unwrap();
        let a = execute(&p, &pop(), &mut OpenDpNoise::new()).unwrap();
        let noisy = &a.values[0].noisy;
        let (sum, n) = (noisy[0].value as f64, noisy[1].value as f64);
        // At the released noisy values, the expected answer is the released one.
        let e = p.expected(&|_| n, if n != 0.0 { sum / n } else { 0.0 }).unwrap();
        if n >= 1.0 {
            assert_eq!(e.values, a.values);
        }
        // At assumed sizes: the noise scales only, no data.
        let e = p.expected(&|_| 170.0, 0.5).unwrap();
        let mean = e.values.iter().find(|c| c.statistic == "mean").unwrap();
        assert_eq!(mean.value, 85.0 / 170.0);
        assert!(mean.ci95.0 < 0.5 && mean.ci95.1 > 0.5);
    }

    #[test]
    fn dry_run_matches_the_mechanism() {
        let s = schema();
        let p = plan(&Query::parse(r#"{"outcome":{"type":"count","kind":"arrest","window":[0,181]},"statistic":{"type":"mean"},"epsilon":0.3}"#).unwrap(), &s).unwrap();
        let dry = p.dry_run();
        let mut m = OpenDpNoise::new();
        for r in &dry.releases {
            let real = m.release(0, r.sensitivity, r.epsilon).unwrap();
            assert_eq!((real.scale, real.ci95_half_width), (r.noise_scale, r.ci95_half_width));
        }
        let a = execute(&p, &pop(), &mut m).unwrap();
        for c in &a.values {
            for n in &c.noisy {
                let planned = dry.releases.iter().find(|r| r.name == n.release).unwrap();
                assert_eq!((n.noise_scale, n.ci95_half_width), (planned.noise_scale, planned.ci95_half_width));
            }
        }
    }

    #[test]
    fn answers_carry_no_identity_and_mismatched_schemas_are_refused() {
        let s = schema();
        let p = plan(&Query::parse(r#"{"statistic":{"type":"count"},"group_by":["arm"],"epsilon":1}"#).unwrap(), &s)
            .unwrap();
        let a = execute(&p, &pop(), &mut OpenDpNoise::new()).unwrap();
        let text = serde_json::to_string(&a).unwrap();
        assert!(!text.contains("tokens") && !text.contains("rid"), "{text}");
        let other = Schema::from_toml(&crate::schema::DEFAULT_SCHEMA.replace("minutes = {", "minutes2 = {")).unwrap();
        let pop2 = Population::build(&other, Vec::<(u32, crate::record::PseudoRecord)>::new());
        assert!(matches!(execute(&p, &pop2, &mut OpenDpNoise::new()), Err(QueryError::SchemaMismatch)));
    }
}
