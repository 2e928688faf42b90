//! Planning: a query checked against the schema and compiled (event tests, per-person values, groups), and every noisy release it will make fixed before any data is touched.

use super::*;

/// A test on one field of an event.
#[derive(Debug, Clone)]
pub(super) enum FieldTest {
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
pub(super) struct EventTest {
    pub(super) kind: usize,
    pub(super) tests: Vec<FieldTest>,
}

impl EventTest {
    pub(super) fn matches(&self, ev: &Events, i: usize) -> bool {
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
    pub(super) fn in_window(ev: &Events, p: usize, anchor: i32, w: Window) -> std::ops::Range<usize> {
        let r = ev.range(p);
        let dates = &ev.dates[r.clone()];
        let lo = dates.partition_point(|&d| d < anchor + w.0);
        let hi = dates.partition_point(|&d| d <= anchor + w.1);
        r.start + lo..r.start + hi.max(lo)
    }
}

/// How a status field's value becomes the person's value.
#[derive(Debug, Clone)]
pub(super) enum Select {
    /// 1 if the code is allowed (missing: 0).
    Binary(Vec<bool>),
    /// The code is the bin; a missing value goes to `missing` (if the field may be missing).
    Categorical { missing: Option<usize> },
}

impl Select {
    pub(super) fn pick(&self, code: Option<u16>) -> Option<i64> {
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
pub(super) enum Value {
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
    pub(super) fn of(&self, pop: &Population, p: usize, w: Option<Window>) -> Option<i64> {
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
                        Some(&e) if e != crate::query::population::NO_DATE => i64::from(e) - anchor,
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

pub(super) fn err_field(kind: &str, field: &str, reason: impl Into<String>) -> QueryError {
    QueryError::Field { kind: kind.into(), field: field.into(), reason: reason.into() }
}

pub(super) fn kind_index(schema: &Schema, kind: &str) -> Result<usize, QueryError> {
    schema
        .kinds
        .iter()
        .position(|k| k.name == kind)
        .ok_or_else(|| QueryError::UnknownKind(kind.into(), schema.kind_names().join(", ")))
}

pub(super) fn field_index(schema: &Schema, kind: usize, field: &str) -> Result<usize, QueryError> {
    let k = &schema.kinds[kind];
    k.field_index(field).ok_or_else(|| QueryError::UnknownField { kind: k.name.clone(), field: field.into() })
}

/// The codes of `values` for an enum or bool field, as an allowed-set.
pub(super) fn codes(schema: &Schema, kind: usize, col: usize, values: &[Scalar]) -> Result<Vec<bool>, QueryError> {
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

pub(super) fn compile_filter(schema: &Schema, kind: &str, filter: &Filter) -> Result<EventTest, QueryError> {
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

pub(super) fn check_day(day: i32, what: &str) -> Result<(), QueryError> {
    if !(-MAX_DAY..=MAX_DAY).contains(&day) {
        return Err(QueryError::Unsupported(format!("{what} must lie in [-{MAX_DAY}, {MAX_DAY}]")));
    }
    Ok(())
}

/// A status select over field `col` of `kind`: binary with `values`, categorical without.
pub(super) fn compile_select(
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

pub(super) fn compile_outcome(
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
    let hash = crate::query::model::canonical_hash(&canonical);
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
pub(super) fn split(epsilon: f64) -> (f64, f64) {
    let e_count = epsilon * (1.0 - SUM_EPSILON_SHARE);
    let mut e_sum = epsilon - e_count;
    while e_sum + e_count > epsilon {
        e_sum = f64::from_bits(e_sum.to_bits() - 1);
    }
    (e_sum, e_count)
}

pub(super) trait NoneOrBinary {
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
}
