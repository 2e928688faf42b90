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

/// A test on one field of an event.
#[derive(Debug, Clone)]
enum FieldTest {
    /// Enum index or bool (0/1) in the allowed set.
    Codes {
        col: usize,
        allowed: Vec<bool>,
    },
    Int {
        col: usize,
        min: i64,
        max: i64,
    },
}

/// Events of one kind passing field tests.
#[derive(Debug, Clone)]
struct EventTest {
    kind: usize,
    tests: Vec<FieldTest>,
}

impl EventTest {
    fn matches(&self, ev: &Events, i: usize) -> bool {
        self.tests.iter().all(|t| match t {
            FieldTest::Codes { col, allowed } => {
                ev.columns[*col].code(i).is_some_and(|c| allowed.get(usize::from(c)).copied().unwrap_or(false))
            }
            FieldTest::Int { col, min, max } => match &ev.columns[*col] {
                Column::Int(v) => v[i] != NO_INT && v[i] >= *min && v[i] <= *max,
                _ => false,
            },
        })
    }

    /// Indices of person `p`'s events dated in `w` (relative to `anchor`).
    fn in_window(ev: &Events, p: usize, anchor: i32, w: Window) -> std::ops::Range<usize> {
        let r = ev.range(p);
        let dates = &ev.dates[r.clone()];
        let lo = dates.partition_point(|&d| d < anchor + w.0);
        let hi = dates.partition_point(|&d| d <= anchor + w.1);
        r.start + lo..r.start + hi.max(lo)
    }
}

/// How a status field's value becomes the person's value.
#[derive(Debug, Clone)]
enum Select {
    /// 1 if the code is allowed (missing: 0).
    Binary(Vec<bool>),
    /// The code is the bin; a missing value goes to `missing` (if the field may be missing).
    Categorical { missing: Option<usize> },
}

impl Select {
    fn pick(&self, code: Option<u16>) -> Option<i64> {
        match (self, code) {
            (Select::Binary(allowed), c) => {
                Some(i64::from(c.is_some_and(|c| allowed.get(usize::from(c)).copied().unwrap_or(false))))
            }
            (Select::Categorical { .. }, Some(c)) => Some(i64::from(c)),
            (Select::Categorical { missing }, None) => missing.map(|m| m as i64),
        }
    }
}

/// The compiled outcome.
#[derive(Debug, Clone)]
enum Value {
    /// No outcome: every cohort person counts 1.
    Unit,
    Count(EventTest, Window),
    Any(EventTest, Window),
    NoEvent(EventTest, Window),
    DaysToFirst(EventTest, Window),
    DaysCovered {
        ev: EventTest,
        until: usize,
        window: Window,
    },
    StatusDay {
        ev: EventTest,
        col: usize,
        day: i32,
        select: Select,
    },
    StatusMonth {
        ev: EventTest,
        col: usize,
        month: u32,
        of: usize,
        of_col: Option<usize>,
        select: Select,
    },
    Funnel {
        ineligible: Option<u16>,
        declined: Option<u16>,
        intake: usize,
        within: i32,
    },
    Category(Category),
}

impl Value {
    /// Person `p`'s value (a number, or a bin index for categorical outcomes), in window `w` if the outcome has one.
    fn of(&self, pop: &Population, p: usize, w: Option<Window>) -> Option<i64> {
        let anchor = pop.persons.anchor[p];
        let events = |t: &EventTest| &pop.kinds[t.kind];
        match self {
            Value::Unit => Some(1),
            Value::Count(t, win) => {
                let ev = events(t);
                Some(EventTest::in_window(ev, p, anchor, w.unwrap_or(*win)).filter(|&i| t.matches(ev, i)).count() as i64)
            }
            Value::Any(t, win) => {
                let ev = events(t);
                Some(i64::from(EventTest::in_window(ev, p, anchor, w.unwrap_or(*win)).any(|i| t.matches(ev, i))))
            }
            Value::NoEvent(t, win) => {
                let ev = events(t);
                Some(i64::from(!EventTest::in_window(ev, p, anchor, w.unwrap_or(*win)).any(|i| t.matches(ev, i))))
            }
            Value::DaysToFirst(t, win) => {
                let ev = events(t);
                let w = w.unwrap_or(*win);
                let first = EventTest::in_window(ev, p, anchor, w).find(|&i| t.matches(ev, i));
                Some(match first {
                    Some(i) => i64::from(ev.dates[i]) - i64::from(anchor) - i64::from(w.0),
                    None => w.days(),
                })
            }
            Value::DaysCovered { ev: t, until, window } => {
                let ev = events(t);
                let w = w.unwrap_or(*window);
                let (lo, hi) = (i64::from(w.0), i64::from(w.1));
                let anchor = i64::from(anchor);
                let ends = match &ev.columns[*until] {
                    Column::Date(d) => d.as_slice(),
                    _ => &[],
                };
                let mut days = 0i64;
                for i in ev.range(p) {
                    let start = i64::from(ev.dates[i]) - anchor;
                    if start > hi {
                        break;
                    }
                    if !t.matches(ev, i) {
                        continue;
                    }
                    let end = match ends.get(i) {
                        Some(&e) if e != super::population::NO_DATE => i64::from(e) - anchor,
                        _ => i64::MAX,
                    };
                    days += (end.min(hi + 1) - start.max(lo)).max(0);
                }
                Some(days)
            }
            Value::StatusDay { ev: t, col, day, select } => {
                let ev = events(t);
                let r = ev.range(p);
                let n = ev.dates[r.clone()].partition_point(|&d| d <= anchor + day);
                let latest = (r.start..r.start + n).rev().find(|&i| t.matches(ev, i))?;
                select.pick(ev.columns[*col].code(latest))
            }
            Value::StatusMonth { ev: t, col, month, of, of_col, select } => {
                let of_ev = &pop.kinds[*of];
                let r = of_ev.range(p);
                let k = of_ev.dates[r.clone()].partition_point(|&d| d < anchor);
                let start = r.start + k;
                if start >= r.end {
                    return None;
                }
                if *month == 0 {
                    let c = (*of_col)?;
                    return select.pick(of_ev.columns[c].code(start));
                }
                let target = first_of_month_after(of_ev.dates[start], *month);
                let ev = events(t);
                let r = ev.range(p);
                let dates = &ev.dates[r.clone()];
                let lo = r.start + dates.partition_point(|&d| d < target);
                let hi = r.start + dates.partition_point(|&d| d <= target);
                let found = (lo..hi).find(|&i| t.matches(ev, i))?;
                select.pick(ev.columns[*col].code(found))
            }
            Value::Funnel { ineligible, declined, intake, within } => {
                let s = pop.persons.screening[p];
                if Some(s) == *ineligible {
                    return Some(0);
                }
                if Some(s) == *declined {
                    return Some(1);
                }
                let ev = &pop.kinds[*intake];
                let timely = !EventTest::in_window(ev, p, anchor, Window(0, *within)).is_empty();
                Some(if timely { 3 } else { 2 })
            }
            Value::Category(c) => {
                let code = pop.persons.category[c.index()][p];
                (code != NO_CATEGORY).then_some(i64::from(code))
            }
        }
    }
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

fn err_field(kind: &str, field: &str, reason: impl Into<String>) -> QueryError {
    QueryError::Field { kind: kind.into(), field: field.into(), reason: reason.into() }
}

fn kind_index(schema: &Schema, kind: &str) -> Result<usize, QueryError> {
    schema
        .kinds
        .iter()
        .position(|k| k.name == kind)
        .ok_or_else(|| QueryError::UnknownKind(kind.into(), schema.kind_names().join(", ")))
}

fn field_index(schema: &Schema, kind: usize, field: &str) -> Result<usize, QueryError> {
    let k = &schema.kinds[kind];
    k.field_index(field).ok_or_else(|| QueryError::UnknownField { kind: k.name.clone(), field: field.into() })
}

/// The codes of `values` for an enum or bool field, as an allowed-set.
fn codes(schema: &Schema, kind: usize, col: usize, values: &[Scalar]) -> Result<Vec<bool>, QueryError> {
    let k = &schema.kinds[kind];
    let f = &k.fields[col];
    if values.is_empty() {
        return Err(err_field(&k.name, &f.name, "the value list is empty"));
    }
    match &f.ty {
        FieldType::Enum(e) => {
            let mut allowed = vec![false; e.values.len()];
            for v in values {
                let pos = match v {
                    Scalar::Str(s) => e.values.iter().position(|x| x == s),
                    _ => None,
                };
                let Some(i) = pos else {
                    return Err(QueryError::UnknownValue {
                        what: format!("{}.{}", k.name, f.name),
                        value: v.to_string(),
                        allowed: e.values.join(", "),
                    });
                };
                allowed[i] = true;
            }
            Ok(allowed)
        }
        FieldType::Bool => {
            let mut allowed = vec![false; 2];
            for v in values {
                let Scalar::Bool(b) = v else {
                    return Err(QueryError::UnknownValue {
                        what: format!("{}.{}", k.name, f.name),
                        value: v.to_string(),
                        allowed: "true, false".into(),
                    });
                };
                allowed[usize::from(*b)] = true;
            }
            Ok(allowed)
        }
        _ => Err(err_field(&k.name, &f.name, "values can only name enum or bool values")),
    }
}

fn compile_filter(schema: &Schema, kind: &str, filter: &Filter) -> Result<EventTest, QueryError> {
    let k = kind_index(schema, kind)?;
    let mut tests = Vec::new();
    for (name, m) in filter {
        let col = field_index(schema, k, name)?;
        let f = &schema.kinds[k].fields[col];
        let test = match (&f.ty, m) {
            (FieldType::Enum(_) | FieldType::Bool, Match::One(v)) => {
                FieldTest::Codes { col, allowed: codes(schema, k, col, std::slice::from_ref(v))? }
            }
            (FieldType::Enum(_) | FieldType::Bool, Match::Any(vs)) => {
                FieldTest::Codes { col, allowed: codes(schema, k, col, vs)? }
            }
            (FieldType::Integer { .. }, Match::Range(r)) => {
                let (min, max) = (r.min.unwrap_or(i64::MIN + 1), r.max.unwrap_or(i64::MAX));
                if min > max {
                    return Err(err_field(kind, name, "range is inverted"));
                }
                FieldTest::Int { col, min, max }
            }
            (FieldType::Integer { .. }, Match::One(Scalar::Int(i))) => FieldTest::Int { col, min: *i, max: *i },
            (FieldType::Integer { .. }, _) => {
                return Err(err_field(kind, name, "an integer field takes a value or {\"min\", \"max\"}"))
            }
            (FieldType::Enum(_) | FieldType::Bool, Match::Range(_)) => {
                return Err(err_field(kind, name, "a range only applies to integer fields"))
            }
            (FieldType::Date, _) => {
                return Err(err_field(kind, name, "dates are filtered with windows, not field filters"))
            }
            (FieldType::String { .. }, _) => return Err(err_field(kind, name, "text fields cannot be filtered")),
        };
        tests.push(test);
    }
    Ok(EventTest { kind: k, tests })
}

fn check_day(day: i32, what: &str) -> Result<(), QueryError> {
    if !(-MAX_DAY..=MAX_DAY).contains(&day) {
        return Err(QueryError::Unsupported(format!("{what} must lie in [-{MAX_DAY}, {MAX_DAY}]")));
    }
    Ok(())
}

/// A status select over field `col` of `kind`: binary with `values`, categorical without.
fn compile_select(
    schema: &Schema,
    kind: usize,
    col: usize,
    values: &Option<Vec<Scalar>>,
) -> Result<(Select, Vec<String>), QueryError> {
    let k = &schema.kinds[kind];
    let f = &k.fields[col];
    let labels: Vec<String> = match &f.ty {
        FieldType::Enum(e) => e.values.clone(),
        FieldType::Bool => vec!["false".into(), "true".into()],
        _ => return Err(err_field(&k.name, &f.name, "a status must be an enum or bool field")),
    };
    match values {
        Some(v) => Ok((Select::Binary(codes(schema, kind, col, v)?), Vec::new())),
        None => {
            let mut labels = labels;
            let missing = (!f.required).then(|| {
                labels.push(MISSING.into());
                labels.len() - 1
            });
            Ok((Select::Categorical { missing }, labels))
        }
    }
}

fn compile_outcome(
    schema: &Schema,
    categories: &Categories,
    outcome: Option<&Outcome>,
) -> Result<(Value, Vec<String>), QueryError> {
    let windowed = |kind: &str, filter: &Filter, w: &Window| -> Result<EventTest, QueryError> {
        w.validate()?;
        compile_filter(schema, kind, filter)
    };
    let none = Vec::new;
    Ok(match outcome {
        None => (Value::Unit, none()),
        Some(Outcome::Count { kind, filter, window }) => {
            (Value::Count(windowed(kind, filter, window)?, *window), none())
        }
        Some(Outcome::Any { kind, filter, window }) => (Value::Any(windowed(kind, filter, window)?, *window), none()),
        Some(Outcome::NoEvent { kind, filter, window }) => {
            (Value::NoEvent(windowed(kind, filter, window)?, *window), none())
        }
        Some(Outcome::DaysToFirst { kind, filter, window }) => {
            (Value::DaysToFirst(windowed(kind, filter, window)?, *window), none())
        }
        Some(Outcome::DaysCovered { kind, filter, until, window }) => {
            let ev = windowed(kind, filter, window)?;
            let until_col = field_index(schema, ev.kind, until)?;
            if !matches!(schema.kinds[ev.kind].fields[until_col].ty, FieldType::Date) {
                return Err(err_field(kind, until, "`until` must be a date field"));
            }
            (Value::DaysCovered { ev, until: until_col, window: *window }, none())
        }
        Some(Outcome::Status { kind, field, filter, values, at }) => {
            let ev = compile_filter(schema, kind, filter)?;
            let col = field_index(schema, ev.kind, field)?;
            let (select, labels) = compile_select(schema, ev.kind, col, values)?;
            let value = match at {
                At::Day { day } => {
                    check_day(*day, "status day")?;
                    Value::StatusDay { ev, col, day: *day, select }
                }
                At::Month { month, of } => {
                    if *month > MAX_MONTH {
                        return Err(QueryError::Unsupported(format!("status month must be at most {MAX_MONTH}")));
                    }
                    let of_kind = kind_index(schema, of)?;
                    let of_col = schema.kinds[of_kind].field_index(field);
                    if *month == 0 {
                        // Month 0 reads the `of` record itself: its field must mean the same.
                        let Some(c) = of_col else {
                            return Err(QueryError::UnknownField { kind: of.clone(), field: field.clone() });
                        };
                        let same = match (&schema.kinds[of_kind].fields[c].ty, &schema.kinds[ev.kind].fields[col].ty) {
                            (FieldType::Enum(a), FieldType::Enum(b)) => a.values == b.values,
                            (FieldType::Bool, FieldType::Bool) => true,
                            _ => false,
                        };
                        if !same {
                            return Err(err_field(of, field, format!("must have the same type as `{kind}.{field}`")));
                        }
                    }
                    Value::StatusMonth { ev, col, month: *month, of: of_kind, of_col, select }
                }
            };
            (value, labels)
        }
        Some(Outcome::Funnel { within_days, intake }) => {
            if !(0..=MAX_DAY).contains(within_days) {
                return Err(QueryError::Unsupported(format!("funnel within_days must lie in [0, {MAX_DAY}]")));
            }
            let referral = kind_index(schema, REFERRAL)?;
            let col = field_index(schema, referral, SCREENING)?;
            let FieldType::Enum(e) = &schema.kinds[referral].fields[col].ty else {
                return Err(QueryError::Schema(format!("{REFERRAL}.{SCREENING} must be an enum")));
            };
            let code = |v: &str| e.values.iter().position(|x| x == v).map(|i| i as u16);
            let value = Value::Funnel {
                ineligible: code("ineligible"),
                declined: code("declined"),
                intake: kind_index(schema, intake)?,
                within: *within_days,
            };
            (value, FUNNEL_STAGES.iter().map(|s| s.to_string()).collect())
        }
        Some(Outcome::Category { name }) => (Value::Category(*name), categories.values(*name).to_vec()),
    })
}

/// Check `query` against `schema` and fix every release it will make. Touches no data.
pub fn plan(query: &Query, schema: &Schema) -> Result<Plan, QueryError> {
    let query = query.normalized();
    let epsilon = query.epsilon;
    if !(epsilon.is_finite() && epsilon > 0.0 && epsilon <= dp::mechanism::MAX_EPSILON) {
        return Err(QueryError::Epsilon(epsilon));
    }
    let categories = Categories::from_schema(schema);
    if categories.values(Category::Arm).is_empty() {
        return Err(QueryError::Schema(format!("the schema needs a `{REFERRAL}` kind with an enum field `arm`")));
    }

    // Cohort.
    let mut allowed: [Option<Vec<bool>>; 5] = Default::default();
    for c in Category::ALL {
        if let Some(list) = query.cohort.filter(c) {
            let values = categories.values(c);
            if list.is_empty() {
                return Err(QueryError::Unsupported(format!("cohort `{}` lists no value", c.as_str())));
            }
            let mut a = vec![false; values.len()];
            for v in list {
                let Some(i) = values.iter().position(|x| x == v) else {
                    return Err(QueryError::UnknownValue {
                        what: format!("cohort.{}", c.as_str()),
                        value: v.clone(),
                        allowed: values.join(", "),
                    });
                };
                a[i] = true;
            }
            allowed[c.index()] = Some(a);
        }
    }
    let require = query
        .cohort
        .require
        .iter()
        .map(|r| {
            r.window.validate()?;
            Ok((compile_filter(schema, &r.kind, &r.filter)?, r.window))
        })
        .collect::<Result<Vec<_>, QueryError>>()?;

    // Outcome and statistic.
    let outcome = query.outcome.as_ref();
    let (value, labels) = compile_outcome(schema, &categories, outcome)?;
    let binary = outcome.is_none_or_binary();
    let categorical = outcome.is_some_and(Outcome::is_categorical);
    let (shape, bins, baseline) = match &query.statistic {
        Statistic::Count {} if binary => (Shape::Count, Vec::new(), None),
        Statistic::Count {} => {
            return Err(QueryError::Unsupported(
                "`count` counts cohort persons, or those whose 0/1 outcome (any, none, status with values) is 1; \
                 use `histogram` for a categorical outcome and `sum` for a numeric one"
                    .into(),
            ))
        }
        Statistic::Share {} if outcome.is_some_and(Outcome::is_binary) => {
            (Shape::Bins, vec!["1".to_string(), "0".to_string()], None)
        }
        Statistic::Share {} => {
            return Err(QueryError::Unsupported("`share` needs a 0/1 outcome: any, none, or status with values".into()))
        }
        Statistic::Histogram {} if categorical => (Shape::Bins, labels, None),
        Statistic::Histogram {} => {
            return Err(QueryError::Unsupported(
                "`histogram` needs a categorical outcome: status without values, funnel, or category".into(),
            ))
        }
        Statistic::Sum {} => (Shape::Sum, Vec::new(), None),
        Statistic::Mean {} => (Shape::SumCount, Vec::new(), None),
        Statistic::Rate { per_days } => {
            if !(1..=MAX_DAY as u32).contains(per_days) {
                return Err(QueryError::Unsupported(format!("rate per_days must lie in [1, {MAX_DAY}]")));
            }
            (Shape::SumCount, Vec::new(), None)
        }
        Statistic::Difference { baseline } => {
            baseline.validate()?;
            (Shape::SumCount, Vec::new(), Some(*baseline))
        }
    };

    // A shared denominator counts the cohort's persons per group: it is the
    // right denominator only when every one of them has a value to sum.
    let census = match query.census() {
        None => None,
        Some(census_query) => {
            if !query.can_share_persons() {
                return Err(QueryError::Unsupported(
                    "`persons` (a shared denominator) needs a mean, difference, rate or share of an outcome every \
                     cohort person has (count, any, none, days_to_first, days_covered); a status leaves out persons \
                     without a record: drop `persons`"
                        .into(),
                ));
            }
            Some(Box::new(plan(&census_query, schema)?))
        }
    };
    let shape = if census.is_some() { Shape::SumShared } else { shape };

    // Bounds.
    let rule = query.bounds_rule()?;
    let bounds = match (rule, query.bounds) {
        (None, Some([lower, upper])) => {
            return Err(QueryError::Bounds {
                lower,
                upper,
                reason: "bounds apply only to sum, mean, difference and rate (each person adds 0 or 1 here)".into(),
            })
        }
        (None, None) => None,
        (Some(rule), b) => {
            let [lower, upper] = b.unwrap_or(rule.default);
            let [min, max] = rule.limit;
            if lower >= upper {
                return Err(QueryError::Bounds { lower, upper, reason: "lower must be below upper".into() });
            }
            if lower < min || upper > max {
                return Err(QueryError::Bounds {
                    lower,
                    upper,
                    reason: format!("wider than this query's limit [{min}, {max}]"),
                });
            }
            Some([lower, upper])
        }
    };

    // Groups.
    let mut group_by = Vec::new();
    let mut group_pos = Vec::new();
    let mut groups = 1usize;
    for &c in &query.group_by {
        let n = categories.values(c).len();
        let codes: Vec<u8> =
            (0..n as u8).filter(|&i| allowed[c.index()].as_ref().map_or(true, |a| a[usize::from(i)])).collect();
        let mut pos = vec![u16::MAX; n];
        for (j, &code) in codes.iter().enumerate() {
            pos[usize::from(code)] = j as u16;
        }
        groups = groups.saturating_mul(codes.len().max(1));
        group_by.push((c, codes));
        group_pos.push(pos);
    }
    let per_group = if shape == Shape::Bins { bins.len() } else { 1 };
    let cells = groups.saturating_mul(per_group);
    if cells > MAX_CELLS {
        return Err(QueryError::Unsupported(format!(
            "the query would release {cells} values; at most {MAX_CELLS} (group by fewer categories)"
        )));
    }

    // Releases.
    let sum_sensitivity = bounds.map_or(1, |[l, u]| l.abs().max(u.abs()));
    let planned = |name: &str, values: usize, sensitivity: i64, epsilon: f64| -> Result<PlannedRelease, QueryError> {
        let noise_scale = dp::noise_scale(sensitivity, epsilon)?;
        Ok(PlannedRelease {
            name: name.into(),
            values,
            sensitivity,
            epsilon,
            noise_scale,
            ci95_half_width: dp::ci95_half_width(noise_scale)?,
        })
    };
    let releases = match shape {
        Shape::Count => vec![planned("count", groups, 1, epsilon)?],
        Shape::Bins => vec![planned("bins", cells, 1, epsilon)?],
        Shape::Sum => vec![planned("sum", groups, sum_sensitivity, epsilon)?],
        Shape::SumCount => {
            let (e_sum, e_count) = split(epsilon);
            vec![planned("sum", groups, sum_sensitivity, e_sum)?, planned("count", groups, 1, e_count)?]
        }
        Shape::SumShared => vec![planned("sum", groups, sum_sensitivity, epsilon)?],
    };

    let canonical = query.canonical();
    let hash = super::model::canonical_hash(&canonical);
    Ok(Plan {
        query,
        canonical,
        hash,
        layout: Layout::of(schema),
        categories,
        allowed,
        require,
        value,
        baseline,
        shape,
        bins,
        group_by,
        group_pos,
        groups,
        bounds,
        releases,
        census,
    })
}

/// (ε of the sum, ε of the count) of a mean, difference or rate: ¾ and ¼, never adding up to more than ε.
fn split(epsilon: f64) -> (f64, f64) {
    let e_count = epsilon * (1.0 - SUM_EPSILON_SHARE);
    let mut e_sum = epsilon - e_count;
    while e_sum + e_count > epsilon {
        e_sum = f64::from_bits(e_sum.to_bits() - 1);
    }
    (e_sum, e_count)
}

trait NoneOrBinary {
    fn is_none_or_binary(&self) -> bool;
}

impl NoneOrBinary for Option<&Outcome> {
    fn is_none_or_binary(&self) -> bool {
        self.map_or(true, Outcome::is_binary)
    }
}

impl Plan {
    /// The normalized query.
    pub fn query(&self) -> &Query {
        &self.query
    }

    /// The canonical form of the query (see `Query::canonical`).
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// `sha256:` hash of the canonical form.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The epsilon the query spends (the sum of its releases' epsilons is at most this).
    pub fn epsilon(&self) -> f64 {
        self.query.epsilon
    }

    /// The per-person clamp, for numeric statistics.
    pub fn bounds(&self) -> Option<[i64; 2]> {
        self.bounds
    }

    /// Every noisy release the query will make.
    pub fn releases(&self) -> &[PlannedRelease] {
        &self.releases
    }

    /// The releases and their 95% interval half-widths, touching no data and drawing no noise.
    pub fn dry_run(&self) -> DryRun {
        DryRun {
            query_hash: self.hash.clone(),
            statistic: self.query.statistic.name().into(),
            bounds: self.bounds,
            epsilon: self.query.epsilon,
            releases: self.releases.clone(),
            persons: self.census.as_ref().map(|c| Box::new(c.dry_run())),
            max_answer_bytes: self.max_answer_bytes(),
        }
    }

    /// The group index of person `p`, or `None` when outside the cohort's categories.
    fn group_of(&self, pop: &Population, p: usize) -> Option<usize> {
        for c in Category::ALL {
            if let Some(a) = &self.allowed[c.index()] {
                let code = pop.persons.category[c.index()][p];
                if !a.get(usize::from(code)).copied().unwrap_or(false) {
                    return None;
                }
            }
        }
        let mut g = 0usize;
        for ((c, codes), pos) in self.group_by.iter().zip(&self.group_pos) {
            let code = pop.persons.category[c.index()][p];
            let j = *pos.get(usize::from(code))?;
            if j == u16::MAX {
                return None;
            }
            g = g * codes.len() + usize::from(j);
        }
        Some(g)
    }

    /// The group's labels.
    fn group_labels(&self, mut g: usize) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (c, codes) in self.group_by.iter().rev() {
            let n = codes.len().max(1);
            let code = codes.get(g % n).copied().unwrap_or(0);
            g /= n;
            let label = self.categories.values(*c).get(usize::from(code)).cloned().unwrap_or_default();
            out.insert(c.as_str().to_string(), label);
        }
        out
    }

    /// The exact per-group totals of each release, in release order. Never leaves this module.
    fn aggregate(&self, pop: &Population) -> Vec<Vec<i64>> {
        let g = self.groups;
        let nb = self.bins.len();
        let mut count = vec![0i64; if matches!(self.shape, Shape::Count | Shape::SumCount) { g } else { 0 }];
        let mut sum =
            vec![0i64; if matches!(self.shape, Shape::Sum | Shape::SumCount | Shape::SumShared) { g } else { 0 }];
        let mut bins = vec![0i64; if self.shape == Shape::Bins { g * nb } else { 0 }];
        let clamp = |v: i64| match self.bounds {
            Some([l, u]) => v.clamp(l, u),
            None => v,
        };
        for p in 0..pop.len() {
            let Some(group) = self.group_of(pop, p) else { continue };
            let anchor = pop.persons.anchor[p];
            let required = self.require.iter().all(|(t, w)| {
                let ev = &pop.kinds[t.kind];
                EventTest::in_window(ev, p, anchor, *w).any(|i| t.matches(ev, i))
            });
            if !required {
                continue;
            }
            let Some(v) = self.value.of(pop, p, None) else { continue };
            match self.shape {
                Shape::Count => count[group] += i64::from(v == 1),
                Shape::Bins => {
                    // Share: bin 0 holds value 1, bin 1 value 0; histogram: the category code is the bin.
                    let bin = if matches!(self.query.statistic, Statistic::Share {}) {
                        usize::from(v != 1)
                    } else {
                        v as usize
                    };
                    if bin < nb {
                        bins[group * nb + bin] += 1;
                    }
                }
                Shape::Sum => sum[group] += clamp(v),
                Shape::SumCount | Shape::SumShared => {
                    let v = match self.baseline {
                        Some(b) => match self.value.of(pop, p, Some(b)) {
                            Some(before) => v - before,
                            None => continue,
                        },
                        None => v,
                    };
                    sum[group] += clamp(v);
                    if self.shape == Shape::SumCount {
                        count[group] += 1;
                    }
                }
            }
        }
        match self.shape {
            Shape::Count => vec![count],
            Shape::Bins => vec![bins],
            Shape::Sum | Shape::SumShared => vec![sum],
            Shape::SumCount => vec![sum, count],
        }
    }
}

/// Run a plan over a population, drawing noise from `noise`.
///
/// The caller reserves the plan's epsilon before calling (the steward's
/// ledger). A plan with a shared denominator needs its census: use
/// [`execute_with_census`].
pub fn execute(plan: &Plan, population: &Population, noise: &mut dyn Noise) -> Result<Answer, QueryError> {
    execute_with_census(plan, population, noise, None)
}

/// Run a plan whose denominator is the shared census `census` (the released
/// answer of `plan.census()`), drawing noise for the plan's own releases only.
/// The census is post-processed, not released again: it costs nothing here.
pub fn execute_with_census(
    plan: &Plan,
    population: &Population,
    noise: &mut dyn Noise,
    census: Option<&Answer>,
) -> Result<Answer, QueryError> {
    if plan.layout != population.layout || plan.categories != population.categories {
        return Err(QueryError::SchemaMismatch);
    }
    let census = plan.census_releases(census)?;
    let totals = plan.aggregate(population);
    let mut released: Vec<Vec<Release>> = Vec::with_capacity(totals.len());
    for (r, values) in plan.releases.iter().zip(&totals) {
        let out = noise.release_all(values, r.sensitivity, r.epsilon)?;
        if out.len() != values.len() {
            return Err(QueryError::Noise(dp::DpError::OpenDp("release returned a different number of values".into())));
        }
        released.push(out);
    }
    drop(totals);
    Ok(plan.answer(cells(plan, &released, census.as_deref())?))
}

/// An answer-sized f64 that takes the most characters serde_json can write (24).
const WIDEST_F64: f64 = -2.2250738585072014e-308;

/// Counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Plan {
    /// How many groups the query releases values for.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The plan of the shared census this query divides by, if it names one (`Query::persons`).
    pub fn census(&self) -> Option<&Plan> {
        self.census.as_deref()
    }

    fn answer(&self, values: Vec<Cell>) -> Answer {
        Answer {
            query_hash: self.hash.clone(),
            canonical: self.canonical.clone(),
            statistic: self.query.statistic.name().into(),
            bounds: self.bounds,
            epsilon_spent: self.query.epsilon,
            budget_left: None,
            releases: self.releases.clone(),
            values,
        }
    }

    /// The census's noisy counts, one per group, from its released answer; checks that it is this plan's census.
    fn census_releases(&self, census: Option<&Answer>) -> Result<Option<Vec<Release>>, QueryError> {
        let (Some(plan), Some(answer)) = (self.census.as_deref(), census) else {
            return match (&self.census, census) {
                (None, None) => Ok(None),
                (Some(_), None) => Err(QueryError::Unsupported(
                    "this query divides by a shared census: release the census first".into(),
                )),
                _ => Err(QueryError::Unsupported("a census was given to a query that has its own count".into())),
            };
        };
        let wrong = || QueryError::Unsupported("the census given is not the one this query divides by".into());
        if answer.query_hash != plan.hash || answer.values.len() != self.groups {
            return Err(wrong());
        }
        let release = plan.releases.first().ok_or_else(wrong)?;
        answer
            .values
            .iter()
            .enumerate()
            .map(|(g, cell)| {
                let noisy = cell.noisy.first().ok_or_else(wrong)?;
                if cell.statistic != "count" || cell.group != self.group_labels(g) {
                    return Err(wrong());
                }
                Ok(Release {
                    value: noisy.value,
                    sensitivity: release.sensitivity,
                    epsilon: release.epsilon,
                    scale: noisy.noise_scale,
                    ci95_half_width: noisy.ci95_half_width,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The values the answer would hold if every noisy release came out at
    /// its expected value: `persons(group)` persons in each group, each with
    /// the per-person value `assumed` (a mean, a mean change, a share, or the
    /// per-person value in a rate's window; a histogram's persons spread
    /// evenly over its bins). Intervals are computed by the very code that
    /// computes released ones, from the noise scales alone: no data, no noise.
    pub fn expected(
        &self,
        persons: &dyn Fn(&BTreeMap<String, String>) -> f64,
        assumed: f64,
    ) -> Result<Answer, QueryError> {
        let release = |value: f64, r: &PlannedRelease| Release {
            value: value.round() as i64,
            sensitivity: r.sensitivity,
            epsilon: r.epsilon,
            scale: r.noise_scale,
            ci95_half_width: r.ci95_half_width,
        };
        let nb = self.bins.len();
        let mut released: Vec<Vec<Release>> = self.releases.iter().map(|_| Vec::new()).collect();
        let mut census = Vec::new();
        for g in 0..self.groups {
            let n = persons(&self.group_labels(g)).max(0.0);
            if let Some(c) = &self.census {
                let r =
                    c.releases.first().ok_or_else(|| QueryError::Unsupported("a census without a release".into()))?;
                census.push(release(n, r));
            }
            for (i, r) in self.releases.iter().enumerate() {
                match (self.shape, i) {
                    (Shape::Count, _) if self.query.outcome.is_none() => released[i].push(release(n, r)),
                    (Shape::Count, _) => released[i].push(release(assumed.clamp(0.0, 1.0) * n, r)),
                    (Shape::Bins, _) if matches!(self.query.statistic, Statistic::Share {}) => {
                        let yes = assumed.clamp(0.0, 1.0) * n;
                        released[i].push(release(yes, r));
                        released[i].push(release(n - yes, r));
                    }
                    (Shape::Bins, _) => {
                        released[i].extend((0..nb).map(|_| release(n / nb.max(1) as f64, r)));
                    }
                    (Shape::SumCount, 1) => released[i].push(release(n, r)),
                    _ => released[i].push(release(assumed * n, r)),
                }
            }
        }
        let census = self.census.as_ref().map(|_| census);
        Ok(self.answer(cells(self, &released, census.as_deref())?))
    }

    /// The most bytes the JSON of this query's answer can take, whatever the
    /// data and the noise: the answer's shape is fixed by the plan, and every
    /// number is written at its widest. Touches no data.
    pub fn max_answer_bytes(&self) -> usize {
        // The shape comes from the planned releases; the numbers are widened below.
        let widest = |r: &PlannedRelease| Release {
            value: 1,
            sensitivity: r.sensitivity,
            epsilon: r.epsilon,
            scale: r.noise_scale,
            ci95_half_width: r.ci95_half_width,
        };
        let mut released: Vec<Vec<Release>> =
            self.releases.iter().map(|r| (0..r.values).map(|_| widest(r)).collect()).collect();
        let census: Option<Vec<Release>> = match self.census.as_ref().map(|c| c.releases.first()) {
            None => None,
            Some(Some(r)) => Some((0..self.groups).map(|_| widest(r)).collect()),
            Some(None) => return usize::MAX,
        };
        // Any values will do for the shape; the numbers are widened below.
        for r in released.iter_mut().flatten() {
            r.value = 1;
        }
        let Ok(mut values) = cells(self, &released, census.as_deref()) else {
            return usize::MAX;
        };
        for c in &mut values {
            c.value = WIDEST_F64;
            c.ci95 = (WIDEST_F64, WIDEST_F64);
            c.noise_scale = WIDEST_F64;
            c.epsilon = WIDEST_F64;
            for n in &mut c.noisy {
                n.value = i64::MIN;
                n.noise_scale = WIDEST_F64;
                n.ci95_half_width = WIDEST_F64;
            }
        }
        let mut answer = self.answer(values);
        answer.budget_left = Some(WIDEST_F64);
        answer.epsilon_spent = WIDEST_F64;
        for r in &mut answer.releases {
            r.values = usize::MAX;
            r.sensitivity = i64::MIN;
            r.epsilon = WIDEST_F64;
            r.noise_scale = WIDEST_F64;
            r.ci95_half_width = WIDEST_F64;
        }
        let mut count = ByteCount(0);
        match serde_json::to_writer(&mut count, &answer) {
            Ok(()) => count.0,
            Err(_) => usize::MAX,
        }
    }
}

/// A noisy input of a value, with its half-width at the value's share of α.
struct In<'a> {
    name: &'a str,
    r: &'a Release,
    hw: f64,
}

impl In<'_> {
    fn v(&self) -> f64 {
        self.r.value as f64
    }
    fn lo(&self) -> f64 {
        self.v() - self.hw
    }
    fn hi(&self) -> f64 {
        self.v() + self.hw
    }
}

/// The inputs of a value computed from `k` releases: each at α = 0.05/k.
fn inputs<'a>(list: &[(&'a str, &'a Release)]) -> Result<Vec<In<'a>>, QueryError> {
    let k = list.len().max(1) as f64;
    list.iter()
        .map(|&(name, r)| {
            let hw =
                if list.len() == 1 { r.ci95_half_width } else { dp::half_width(r.scale, dp::mechanism::ALPHA_95 / k)? };
            Ok(In { name, r, hw })
        })
        .collect()
}

fn cell(
    group: &BTreeMap<String, String>,
    statistic: &str,
    category: Option<&str>,
    value: f64,
    ci95: (f64, f64),
    ins: &[In<'_>],
) -> Cell {
    Cell {
        group: group.clone(),
        statistic: statistic.into(),
        category: category.map(str::to_string),
        value,
        ci95,
        noise_scale: ins.first().map_or(0.0, |i| i.r.scale),
        // Each distinct release once: the values of one release (bins, groups) share its epsilon.
        epsilon: ins
            .iter()
            .enumerate()
            .filter(|(k, i)| !ins[..*k].iter().any(|j| j.name == i.name))
            .map(|(_, i)| i.r.epsilon)
            .sum(),
        noisy: ins
            .iter()
            .map(|i| Noisy {
                release: i.name.into(),
                value: i.r.value,
                noise_scale: i.r.scale,
                ci95_half_width: i.r.ci95_half_width,
            })
            .collect(),
    }
}

/// A count (of persons, or of person-bins): never below 0.
fn count_cell(group: &BTreeMap<String, String>, statistic: &str, category: Option<&str>, ins: &[In<'_>]) -> Cell {
    let v: f64 = ins.iter().map(In::v).sum();
    let lo: f64 = ins.iter().map(In::lo).sum();
    let hi: f64 = ins.iter().map(In::hi).sum();
    // A count is never below 0: a noisy value below 0 is shown as 0, and its
    // interval cut at 0 could be [0, 0] or [0, 0.3] — which reads as exact.
    // The interval is then the half-width above the value shown: [0, a].
    let ci95 = if v >= 0.0 { (lo.max(0.0), hi) } else { (0.0, hi.max(ins.iter().map(|i| i.hw).sum())) };
    cell(group, statistic, category, v.max(0.0), ci95, ins)
}

/// Share y / (y + n) of noisy counts `yes` and `no` (n may be several releases), with its interval.
fn share_cell(group: &BTreeMap<String, String>, category: Option<&str>, ins: &[In<'_>]) -> Cell {
    let (yes, no) = ins.split_at(1);
    let y = yes[0].v().max(0.0);
    let n: f64 = no.iter().map(|i| i.v().max(0.0)).sum();
    let value = if y + n > 0.0 { y / (y + n) } else { 0.5 };
    let (y_lo, y_hi) = (yes[0].lo().max(0.0), yes[0].hi().max(0.0));
    let n_lo: f64 = no.iter().map(|i| i.lo().max(0.0)).sum();
    let n_hi: f64 = no.iter().map(|i| i.hi().max(0.0)).sum();
    let lo = if y_lo + n_hi > 0.0 { y_lo / (y_lo + n_hi) } else { 0.0 };
    let hi = if y_hi + n_lo > 0.0 { y_hi / (y_hi + n_lo) } else { 1.0 };
    cell(group, "share", category, value, (lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0)), ins)
}

/// Mean S / N of a noisy sum and count, clamped to the bounds, with its interval; `scale` multiplies it (rates).
fn mean_cell(group: &BTreeMap<String, String>, statistic: &str, bounds: [i64; 2], scale: f64, ins: &[In<'_>]) -> Cell {
    let (value, lo, hi) = mean_range(bounds, &ins[0], &ins[1]);
    cell(group, statistic, None, value * scale, (lo * scale, hi * scale), ins)
}

/// (value, low, high) of the mean S / N of a noisy sum and count, clamped to the bounds, over the box of their intervals.
fn mean_range(bounds: [i64; 2], s: &In<'_>, n: &In<'_>) -> (f64, f64, f64) {
    let (lo_b, hi_b) = (bounds[0] as f64, bounds[1] as f64);
    let value = if n.v() >= 1.0 { (s.v() / n.v()).clamp(lo_b, hi_b) } else { (lo_b + hi_b) / 2.0 };
    // The true count is a whole number and at least 1 for a mean to exist.
    let (n_lo, n_hi) = (n.lo().max(1.0), n.hi());
    // Without a noisy count of at least one person there is no estimate: the
    // value is the middle of the bounds and the interval all of them.
    let (lo, hi) = if n_hi < 1.0 || n.v() < 1.0 {
        (lo_b, hi_b)
    } else {
        let corners = [s.lo() / n_lo, s.lo() / n_hi, s.hi() / n_lo, s.hi() / n_hi];
        let lo = corners.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = corners.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // The value is inside the corners' hull up to clamping; widen for the rare edge.
        (lo.clamp(lo_b, hi_b).min(value), hi.clamp(lo_b, hi_b).max(value))
    };
    (value, lo, hi)
}

/// The difference in differences of a before/after change between two groups
/// (the first minus the second), from each group's noisy sum and count: all
/// four inputs at α = 0.05/4, and the range of the difference of the two
/// means over that box (a union bound: at least 95%). Post-processing only.
fn did_cell(
    label: BTreeMap<String, String>,
    bounds: [i64; 2],
    first: (&Release, &str, &Release),
    second: (&Release, &str, &Release),
) -> Result<Cell, QueryError> {
    let ins = inputs(&[("sum", first.0), (first.1, first.2), ("sum", second.0), (second.1, second.2)])?;
    let (v1, lo1, hi1) = mean_range(bounds, &ins[0], &ins[1]);
    let (v2, lo2, hi2) = mean_range(bounds, &ins[2], &ins[3]);
    Ok(cell(&label, DID, None, v1 - v2, (lo1 - hi2, hi1 - lo2), &ins))
}

/// The answer's values from the noisy releases.
fn cells(plan: &Plan, released: &[Vec<Release>], census: Option<&[Release]>) -> Result<Vec<Cell>, QueryError> {
    let mut out = Vec::new();
    let nb = plan.bins.len();
    let window_days = plan.query.outcome.as_ref().and_then(Outcome::window).map_or(1, Window::days) as f64;
    // Per group: (sum, name of the denominator, denominator), for the difference in differences.
    let mut changes: Vec<(&Release, &str, &Release)> = Vec::new();
    for g in 0..plan.groups {
        let group = plan.group_labels(g);
        match plan.shape {
            Shape::Count => {
                let ins = inputs(&[("count", &released[0][g])])?;
                out.push(count_cell(&group, "count", None, &ins));
            }
            Shape::Sum => {
                let ins = inputs(&[("sum", &released[0][g])])?;
                let nonnegative = plan.bounds.is_some_and(|b| b[0] >= 0);
                let c = if nonnegative {
                    count_cell(&group, "sum", None, &ins)
                } else {
                    cell(&group, "sum", None, ins[0].v(), (ins[0].lo(), ins[0].hi()), &ins)
                };
                out.push(c);
            }
            Shape::SumCount | Shape::SumShared => {
                let shared = plan.shape == Shape::SumShared;
                let (s, n, n_name) = if shared {
                    let census = census.ok_or_else(|| {
                        QueryError::Unsupported(
                            "this query divides by a shared census: release the census first".into(),
                        )
                    })?;
                    let n = census.get(g).ok_or_else(|| {
                        QueryError::Unsupported("the census given is not the one this query divides by".into())
                    })?;
                    (&released[0][g], n, "persons")
                } else {
                    (&released[0][g], &released[1][g], "count")
                };
                let bounds = plan.bounds.unwrap_or([0, 1]);
                let both = inputs(&[("sum", s), (n_name, n)])?;
                match &plan.query.statistic {
                    Statistic::Rate { per_days } => {
                        out.push(mean_cell(&group, "rate", bounds, f64::from(*per_days) / window_days, &both));
                        let ins = inputs(&[(n_name, n)])?;
                        let mut c = count_cell(&group, "person_days", None, &ins);
                        c.value *= window_days;
                        c.ci95 = (c.ci95.0 * window_days, c.ci95.1 * window_days);
                        out.push(c);
                    }
                    Statistic::Difference { .. } => {
                        out.push(mean_cell(&group, "mean_difference", bounds, 1.0, &both));
                        changes.push((s, n_name, n));
                    }
                    Statistic::Share {} => out.push(mean_cell(&group, "share", [0, 1], 1.0, &both)),
                    _ => out.push(mean_cell(&group, "mean", bounds, 1.0, &both)),
                }
                // A shared census is its own answer: its counts are not repeated here.
                if !shared && !matches!(plan.query.statistic, Statistic::Rate { .. }) {
                    out.push(count_cell(&group, "persons", None, &inputs(&[(n_name, n)])?));
                }
            }
            Shape::Bins => {
                let row = &released[0][g * nb..(g + 1) * nb];
                if matches!(plan.query.statistic, Statistic::Share {}) {
                    let both = inputs(&[("bins", &row[0]), ("bins", &row[1])])?;
                    out.push(share_cell(&group, None, &both));
                    out.push(count_cell(&group, "persons", None, &both));
                    continue;
                }
                for (i, label) in plan.bins.iter().enumerate() {
                    out.push(count_cell(&group, "count", Some(label), &inputs(&[("bins", &row[i])])?));
                    // This bin first, then the others: share of this bin among all.
                    let mut list: Vec<(&str, &Release)> = vec![("bins", &row[i])];
                    list.extend(row.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, r)| ("bins", r)));
                    out.push(share_cell(&group, Some(label), &inputs(&list)?));
                }
                let all: Vec<(&str, &Release)> = row.iter().map(|r| ("bins", r)).collect();
                out.push(count_cell(&group, "persons", None, &inputs(&all)?));
            }
        }
    }
    // Grouped by arm alone with two arms: the between-arm difference of the change.
    let by_arm = matches!(plan.group_by.as_slice(), [(Category::Arm, codes)] if codes.len() == 2);
    if let ([first, second], true) = (changes.as_slice(), by_arm) {
        let (a, b) = (plan.group_labels(0), plan.group_labels(1));
        let name = |m: &BTreeMap<String, String>| m.get(Category::Arm.as_str()).cloned().unwrap_or_default();
        let label = BTreeMap::from([(Category::Arm.as_str().to_string(), format!("{} - {}", name(&a), name(&b)))]);
        out.push(did_cell(label, plan.bounds.unwrap_or([0, 1]), *first, *second)?);
    }
    Ok(out)
}

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
        let pop2 = Population::build(&other, Vec::new());
        assert!(matches!(execute(&p, &pop2, &mut OpenDpNoise::new()), Err(QueryError::SchemaMismatch)));
    }
}
