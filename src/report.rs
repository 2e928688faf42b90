//! The evaluator's report: released statistics as a terminal table and as one self-contained HTML page (`report.html`).
//!
//! Everything here is pure: no files, no clock, no network.
//!
//! - `rows_from_answer` turns a query `Answer` into `ReportRow`s, one per
//!   released value and group, each with a plain-language label, a unit, a
//!   stable machine `key` (what the row measures, e.g.
//!   `arrests_per_person.mean[-182,-1]`) and, for synthetic data, the true
//!   value of the same statistic from `TrueStatistics`.
//! - `render_text` prints the report for a terminal: the headline first (the
//!   rows marked `headline`: each arm's change and the difference between
//!   arms, in plain words — "with 95% confidence, arrests per person fell by
//!   between … and …"), then the table of every other statistic, then where
//!   each epsilon went (`spending`), then the notes: the clamps' cuts
//!   (synthetic truth only), the privacy unit (k·ε, with the measured split
//!   rate when known), linkage, budget.
//! - `render_html` writes an HTML5 document with inline CSS and hand-written
//!   inline SVG charts, no script and no external reference (readable
//!   offline), in the same order: a header, the headline in words and as a
//!   chart (each arm's change and the difference between arms with their
//!   intervals), a plain-language note on what the numbers are, the lines
//!   (budget, privacy unit, linkage, clamps), three charts (arrests before
//!   and after referral by arm; permanent housing over time; the referral
//!   funnel), the table of every statistic (headline rows first), and where
//!   each epsilon went. Every piece of text is HTML-escaped.
//!
//! Matching true values. The analysis's own query is read back from the
//! answer's canonical form (windows, baseline, status month and values,
//! filters, funnel days, rate period, cohort filters). A row gets a true
//! value when the analysis, the cell's statistic (and category), the window
//! or month and the filters are exactly those of a field of
//! `TrueStatistics` (e.g. `arrests_per_person` over `[-182, -1]` is
//! `arrests.before`), and its group is one arm: grouped by `arm` alone, or
//! ungrouped with a one-arm cohort, with no other cohort filter. Design
//! choices that do not change what is measured are not part of the match:
//! per-person clamping (`bounds`) and the follow-up limit of the timing
//! analyses. The true value is therefore the exact statistic of the
//! synthetic program; an interval can miss it through clamping or linkage
//! errors as well as through the 5% chance of the noise.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::query::engine::{Answer, Cell, DID};
use crate::query::evaluation::PERSONS;
use crate::query::model::{At, Category, Match, Outcome, Query, Scalar, Statistic, Window};
use crate::synth::truth::{ArmStatistics, StatusAt, TrueStatistics, STATUS_MONTHS};

/// Unit of a share (shown as a percentage).
pub const UNIT_SHARE: &str = "share";
/// Unit of a number of persons.
pub const UNIT_PERSONS: &str = "persons";
/// Unit of a mean count per person (arrests, bookings) or its change.
pub const UNIT_PER_PERSON: &str = "per person";
/// Unit of a mean number of days (days to intake, change in jail days).
pub const UNIT_DAYS: &str = "days";
/// Unit of a rate of events per person-year.
pub const UNIT_PER_PERSON_YEAR: &str = "per person-year";
/// Unit of a rate of days per person-year (jail days).
pub const UNIT_DAYS_PER_PERSON_YEAR: &str = "days per person-year";
/// Unit of exposure.
pub const UNIT_PERSON_DAYS: &str = "person-days";

/// Everything a report shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    /// The program's name, e.g. `santa-fe-lead`.
    pub program: String,
    /// When the report was made (RFC 3339).
    pub generated: String,
    /// One per released statistic and group.
    pub rows: Vec<ReportRow>,
    /// Linkage precision and recall against the synthetic truth, when known.
    pub linkage: Option<LinkageQuality>,
    /// The evaluator's privacy budget.
    pub budget: Option<BudgetLine>,
    /// Synthetic data: the true values are shown (never otherwise).
    pub synthetic: bool,
    /// What the evaluation is (the plan's title).
    #[serde(default)]
    pub title: String,
    /// Where each epsilon went: one line per released query, in the plan's order.
    #[serde(default)]
    pub spending: Vec<Spending>,
    /// Share of true persons that linkage split into more than one person (measured on synthetic data).
    #[serde(default)]
    pub split_rate: Option<f64>,
    /// How many persons each clamp cut (synthetic truth only; never shown otherwise).
    #[serde(default)]
    pub clamps: Vec<ClampLine>,
}

/// One released query and the epsilon it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spending {
    /// What was released, in words.
    pub what: String,
    pub epsilon: f64,
    /// Released by an earlier run: replayed from the steward's store, nothing spent now.
    #[serde(default)]
    pub earlier: bool,
}

/// The persons a clamp cut, per arm (synthetic truth only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClampLine {
    /// The value clamped, in words.
    pub what: String,
    pub bounds: [i64; 2],
    /// Why the clamp is what it is.
    #[serde(default)]
    pub reason: String,
    /// (arm, persons outside the clamp, persons in the arm).
    pub outside: Vec<(String, u64, u64)>,
}

/// One released value of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The catalog analysis, e.g. `arrests_per_person`.
    pub analysis: String,
    /// What the row measures, machine-readable and independent of the group:
    /// `<analysis>.<statistic>[:<category>]<qualifiers>`, e.g.
    /// `arrests_per_person.mean[-182,-1]`, `housing_status.share@m6=permanent`,
    /// `referral_funnel.count:enrolled@7d`. The charts find their rows by it.
    #[serde(default)]
    pub key: String,
    /// Plain language, without the group: "Arrests per person, 6 months after referral".
    pub label: String,
    /// The group: category → value (empty: everyone in the cohort).
    pub group: BTreeMap<String, String>,
    pub value: f64,
    /// 95% interval over the noise.
    pub ci95: (f64, f64),
    pub epsilon: f64,
    /// The true value (synthetic data only).
    pub truth: Option<f64>,
    /// One of the `UNIT_*` constants: "share", "persons", "per person", "days", ...
    pub unit: String,
    /// Part of the headline the report leads with.
    #[serde(default)]
    pub headline: bool,
}

/// Pairwise linkage quality against the synthetic truth (fractions in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkageQuality {
    pub precision: f64,
    pub recall: f64,
}

/// The evaluator's privacy budget (epsilon).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetLine {
    pub granted: f64,
    pub spent: f64,
    pub left: f64,
}

// ---------------------------------------------------------------------------
// Rows from an answer
// ---------------------------------------------------------------------------

/// What an answer's query measured, read back from its canonical form.
#[derive(Debug, Clone, Default)]
struct Spec {
    window: Option<(i32, i32)>,
    baseline: Option<(i32, i32)>,
    month: Option<u32>,
    day: Option<i32>,
    /// Status values (sorted), e.g. `["permanent"]`.
    values: Vec<String>,
    /// The outcome counts only events whose `warrant` flag is false.
    non_warrant: bool,
    /// Funnel: an intake within this many days is timely.
    within_days: Option<i32>,
    per_days: Option<u32>,
    /// Cohort filters on public categories, in category order.
    cohort: Vec<(String, Vec<String>)>,
    /// The cohort requires events (e.g. an intake).
    require: bool,
}

fn is_false_flag(m: Option<&Match>) -> bool {
    match m {
        Some(Match::One(Scalar::Bool(false))) => true,
        Some(Match::Any(list)) => list.as_slice() == [Scalar::Bool(false)],
        _ => false,
    }
}

fn spec_of(canonical: &str) -> Spec {
    let Ok(q) = Query::parse(canonical) else {
        return Spec::default();
    };
    let mut s = Spec::default();
    match &q.outcome {
        Some(
            Outcome::Count { filter, window, .. }
            | Outcome::Any { filter, window, .. }
            | Outcome::NoEvent { filter, window, .. }
            | Outcome::DaysToFirst { filter, window, .. }
            | Outcome::DaysCovered { filter, window, .. },
        ) => {
            s.window = Some((window.0, window.1));
            s.non_warrant = is_false_flag(filter.get("warrant"));
        }
        Some(Outcome::Status { values, at, .. }) => {
            if let Some(v) = values {
                s.values = v.iter().map(Scalar::to_string).collect();
                s.values.sort();
            }
            match at {
                At::Month { month, .. } => s.month = Some(*month),
                At::Day { day } => s.day = Some(*day),
            }
        }
        Some(Outcome::Funnel { within_days, .. }) => s.within_days = Some(*within_days),
        Some(Outcome::Category { .. }) | None => {}
    }
    match &q.statistic {
        Statistic::Difference { baseline } => s.baseline = Some((baseline.0, baseline.1)),
        Statistic::Rate { per_days } => s.per_days = Some(*per_days),
        _ => {}
    }
    for c in Category::ALL {
        if let Some(list) = q.cohort.filter(c) {
            s.cohort.push((c.as_str().to_string(), list.clone()));
        }
    }
    s.require = !q.cohort.require.is_empty();
    s
}

/// The qualifiers of a row's key: window, baseline, month, status values, filters, cohort.
fn qualifier(s: &Spec) -> String {
    let mut q = String::new();
    if let Some((a, b)) = s.window {
        let _ = write!(q, "[{a},{b}]");
    }
    if let Some((a, b)) = s.baseline {
        let _ = write!(q, "-[{a},{b}]");
    }
    if let Some(m) = s.month {
        let _ = write!(q, "@m{m}");
    }
    if let Some(d) = s.day {
        let _ = write!(q, "@d{d}");
    }
    if !s.values.is_empty() {
        let _ = write!(q, "={}", s.values.join("|"));
    }
    if s.non_warrant {
        q.push_str("!warrant");
    }
    if let Some(w) = s.within_days {
        let _ = write!(q, "@{w}d");
    }
    if let Some(p) = s.per_days.filter(|&p| p != 365) {
        let _ = write!(q, "/{p}d");
    }
    for (c, values) in &s.cohort {
        let _ = write!(q, "|{c}={}", values.join(","));
    }
    q
}

fn row_key(analysis: &str, statistic: &str, category: Option<&str>, s: &Spec) -> String {
    let cat = category.map(|c| format!(":{c}")).unwrap_or_default();
    format!("{analysis}.{statistic}{cat}{}", qualifier(s))
}

/// A window in words.
fn describe_window(w: Option<(i32, i32)>) -> String {
    match w {
        Some((-182, -1)) => "6 months before referral".into(),
        Some((0, 181)) => "6 months after referral".into(),
        Some((182, 364)) => "6 to 12 months after referral".into(),
        Some((-365, -1)) => "year before referral".into(),
        Some((0, 364)) => "year after referral".into(),
        Some((a, b)) if a >= 0 => format!("days {a} to {b} after referral"),
        Some((a, b)) if b < 0 => format!("from {} to {} days before referral", -a, -b),
        Some((a, b)) => format!("days {a} to {b} around referral"),
        None => "window not stated".into(),
    }
}

/// The two windows of a before/after difference in words.
fn versus(s: &Spec) -> String {
    match (s.window, s.baseline) {
        (Some((0, 181)), Some((-182, -1))) => "6 months after vs 6 months before referral".into(),
        (Some((0, 364)), Some((-365, -1))) => "year after vs year before referral".into(),
        (w, b) => format!("{} vs {}", describe_window(w), describe_window(b)),
    }
}

fn describe_month(s: &Spec) -> String {
    match (s.month, s.day) {
        (Some(0), _) => "at intake".into(),
        (Some(1), _) => "1 month after intake".into(),
        (Some(m), _) => format!("{m} months after intake"),
        (None, Some(d)) => format!("on day {d} after referral"),
        (None, None) => "time not stated".into(),
    }
}

fn housing_phrase(value: &str) -> String {
    match value {
        "street" => "on the street".into(),
        "shelter" => "in a shelter".into(),
        "transitional" => "in transitional housing".into(),
        "permanent" => "in permanent housing".into(),
        "missing" => "with housing not recorded".into(),
        other => format!("with housing {}", other.replace('_', " ")),
    }
}

fn housing_values_phrase(values: &[String]) -> String {
    let v: Vec<&str> = values.iter().map(String::as_str).collect();
    match v.as_slice() {
        ["permanent", "shelter", "transitional"] => "sheltered (not on the street)".into(),
        [one] => housing_phrase(one),
        _ => format!("with housing {}", values.join(" or ")),
    }
}

fn funnel_stage_phrase(stage: &str, within: i32) -> String {
    match stage {
        "ineligible" => "ineligible".into(),
        "declined" => "declined".into(),
        "no_timely_intake" => format!("no intake within {within} days"),
        "enrolled" => format!("enrolled (intake within {within} days)"),
        other => other.replace('_', " "),
    }
}

/// The description of an analysis's main value and its unit; `None` for an analysis this module does not know.
fn describe(analysis: &str, s: &Spec) -> Option<(String, &'static str)> {
    let w = describe_window(s.window);
    let arrests = if s.non_warrant { "non-warrant arrests" } else { "arrests" };
    Some(match analysis {
        "arrests_per_person" => {
            let word = if s.non_warrant { "Non-warrant arrests" } else { "Arrests" };
            (format!("{word} per person, {w}"), UNIT_PER_PERSON)
        }
        "arrests_before_after" => (format!("Change in {arrests} per person, {}", versus(s)), UNIT_PER_PERSON),
        "any_arrest" => {
            let what = if s.non_warrant { "any non-warrant arrest" } else { "any arrest" };
            (format!("Share with {what}, {w}"), UNIT_SHARE)
        }
        "felony_charge" => (format!("Share with a felony charge, {w}"), UNIT_SHARE),
        "violent_charge" => (format!("Share with a violent charge, {w}"), UNIT_SHARE),
        "rearrest_free" => {
            let d = s.window.map_or_else(|| "?".to_string(), |w| w.1.to_string());
            (format!("Share not rearrested by day {d} after referral"), UNIT_SHARE)
        }
        "days_to_rearrest" => {
            let l = s.window.map_or_else(|| "?".to_string(), |w| Window(w.0, w.1).days().to_string());
            (format!("Days from referral to first rearrest (counted up to {l} days)"), UNIT_DAYS)
        }
        "jail_bookings_per_person_year" => (format!("Jail bookings per person-year, {w}"), UNIT_PER_PERSON_YEAR),
        "jail_days_per_person_year" => (format!("Jail days per person-year, {w}"), UNIT_DAYS_PER_PERSON_YEAR),
        "jail_bookings_before_after" => (format!("Change in jail bookings per person, {}", versus(s)), UNIT_PER_PERSON),
        "jail_days_before_after" => (format!("Change in jail days per person, {}", versus(s)), UNIT_DAYS),
        "housing_status" => (format!("Share {}, {}", housing_values_phrase(&s.values), describe_month(s)), UNIT_SHARE),
        "housing_at_month" => (format!("Housing {}", describe_month(s)), UNIT_PERSONS),
        "employment_status" => (format!("Share employed (part or full time), {}", describe_month(s)), UNIT_SHARE),
        "income_benefits_status" => (format!("Share with income or benefits, {}", describe_month(s)), UNIT_SHARE),
        "days_to_intake" => ("Days from referral to intake".into(), UNIT_DAYS),
        "intake_within_days" => {
            let d = s.window.map_or_else(|| "?".to_string(), |w| w.1.to_string());
            (format!("Share with an intake within {d} days of referral"), UNIT_SHARE)
        }
        "days_to_plan" => ("Days from referral to individual plan".into(), UNIT_DAYS),
        "referral_funnel" => ("Referral funnel".into(), UNIT_PERSONS),
        PERSONS if s.require => ("Persons in the cohort (shared denominator)".into(), UNIT_PERSONS),
        PERSONS => ("Persons referred (shared denominator)".into(), UNIT_PERSONS),
        _ => return None,
    })
}

/// Label and unit of one cell.
fn label_of(analysis: &str, s: &Spec, cell: &Cell) -> (String, String) {
    let stat = cell.statistic.as_str();
    let cat = cell.category.as_deref();
    let (label, unit) = match (describe(analysis, s), stat, cat) {
        (Some(_), "persons", _) if analysis == "referral_funnel" => {
            ("Referral funnel: persons referred".to_string(), UNIT_PERSONS)
        }
        (Some(_), "count", Some(c)) if analysis == "referral_funnel" => {
            (format!("Referral funnel: {}", funnel_stage_phrase(c, s.within_days.unwrap_or(7))), UNIT_PERSONS)
        }
        (Some(_), "share", Some(c)) if analysis == "referral_funnel" => {
            (format!("Referral funnel: share {}", funnel_stage_phrase(c, s.within_days.unwrap_or(7))), UNIT_SHARE)
        }
        (Some(_), "count", Some(c)) if analysis == "housing_at_month" => {
            (format!("Persons {}, {}", housing_phrase(c), describe_month(s)), UNIT_PERSONS)
        }
        (Some(_), "share", Some(c)) if analysis == "housing_at_month" => {
            (format!("Share {}, {}", housing_phrase(c), describe_month(s)), UNIT_SHARE)
        }
        (Some((d, _)), "count", None) if analysis == PERSONS => (d, UNIT_PERSONS),
        (Some((d, u)), DID, _) => {
            (format!("Difference between arms (diversion minus comparison) in the {}", lower_first(&d)), u)
        }
        (Some((d, _)), "persons", _) => (format!("{d}: persons counted"), UNIT_PERSONS),
        (Some((d, _)), "person_days", _) => (format!("{d}: person-days of exposure"), UNIT_PERSON_DAYS),
        (Some((d, _)), "count", c) => (with_category(&format!("{d}: persons"), c), UNIT_PERSONS),
        (Some((d, _)), "share", c) if c.is_some() => (with_category(&format!("{d}: share"), c), UNIT_SHARE),
        (Some((d, _)), "sum", _) => (format!("{d}: total"), UNIT_PER_PERSON),
        (Some((d, u)), _, _) => (d, u),
        (None, _, c) => {
            let unit = match stat {
                "share" => UNIT_SHARE,
                "count" | "persons" => UNIT_PERSONS,
                "person_days" => UNIT_PERSON_DAYS,
                "rate" => UNIT_PER_PERSON_YEAR,
                _ => UNIT_PER_PERSON,
            };
            (with_category(&format!("{}: {}", analysis, stat.replace('_', " ")), c), unit)
        }
    };
    let label = if s.cohort.is_empty() {
        label
    } else {
        let filters: Vec<String> =
            s.cohort.iter().map(|(c, v)| format!("{} {}", c.replace('_', " "), v.join(" or "))).collect();
        format!("{label} (cohort: {})", filters.join("; "))
    };
    (label, unit.to_string())
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn with_category(label: &str, category: Option<&str>) -> String {
    match category {
        Some(c) => format!("{label} {}", c.replace('_', " ")),
        None => label.to_string(),
    }
}

/// The arm a cell is about, when it is exactly one whole arm (see the module doc).
fn arm_of<'a>(group: &'a BTreeMap<String, String>, s: &'a Spec) -> Option<&'a str> {
    if s.cohort.iter().any(|(c, _)| c != "arm") {
        return None;
    }
    if group.is_empty() {
        return match s.cohort.iter().find(|(c, _)| c == "arm") {
            Some((_, values)) if values.len() == 1 => values.first().map(String::as_str),
            _ => None,
        };
    }
    if group.len() == 1 {
        return group.get("arm").map(String::as_str);
    }
    None
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

fn status_at(t: &ArmStatistics, month: Option<u32>) -> Option<&StatusAt> {
    let m = month?;
    t.status.iter().find(|s| s.month == m)
}

fn diff(after: Option<f64>, before: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// The true value of a cell of `analysis` for one arm's statistics, when `TrueStatistics` has that very statistic.
fn truth_of(analysis: &str, s: &Spec, cell: &Cell, t: &ArmStatistics) -> Option<f64> {
    let referred = t.funnel.referred as f64;
    let stat = cell.statistic.as_str();
    let cat = cell.category.as_deref();
    let w = s.window;
    let before_after = |win: (i32, i32), base: (i32, i32)| w == Some(win) && s.baseline == Some(base);
    match analysis {
        PERSONS if stat == "count" && !s.require => Some(referred),
        "referral_funnel" if s.within_days == Some(7) => {
            let f = &t.funnel;
            let stage = |c: &str| match c {
                "ineligible" => Some(f.ineligible),
                "declined" => Some(f.declined),
                "no_timely_intake" => Some(f.no_timely_intake),
                "enrolled" => Some(f.enrolled),
                _ => None,
            };
            match (stat, cat) {
                ("persons", None) => Some(referred),
                ("count", Some(c)) => stage(c).map(|n| n as f64),
                ("share", Some(c)) => stage(c).and_then(|n| ratio(n, f.referred)),
                _ => None,
            }
        }
        "arrests_per_person" | "days_to_rearrest" | "rearrest_free" | "felony_charge" | "violent_charge"
            if stat == "persons" =>
        {
            Some(referred)
        }
        "arrests_per_person" if stat == "mean" && !s.non_warrant => match w {
            Some((-182, -1)) => t.arrests.before,
            Some((0, 181)) => t.arrests.after_6m,
            Some((182, 364)) => t.arrests.after_6_12m,
            _ => None,
        },
        "arrests_before_after" | "any_arrest" if stat == "persons" => Some(referred),
        "arrests_before_after" if stat == "mean_difference" && !s.non_warrant && before_after((0, 181), (-182, -1)) => {
            t.arrests.difference_6m
        }
        "any_arrest" if stat == "share" && w == Some((0, 181)) => {
            if s.non_warrant {
                t.any_arrest.share_non_warrant_6m
            } else {
                t.any_arrest.share_6m
            }
        }
        "felony_charge" if stat == "share" && w == Some((0, 364)) => t.charges.share_felony_12m,
        "violent_charge" if stat == "share" && w == Some((0, 364)) => t.charges.share_violent_12m,
        "rearrest_free" if stat == "share" => match w {
            Some((0, 90)) => t.survival.day_90,
            Some((0, 180)) => t.survival.day_180,
            Some((0, 365)) => t.survival.day_365,
            _ => None,
        },
        "jail_bookings_per_person_year" | "jail_days_per_person_year" if stat == "person_days" => {
            w.map(|(a, b)| referred * Window(a, b).days() as f64)
        }
        "jail_bookings_per_person_year" if stat == "rate" && s.per_days == Some(365) => match w {
            Some((-365, -1)) => t.jail.bookings_per_person_year_before,
            Some((0, 364)) => t.jail.bookings_per_person_year_after,
            _ => None,
        },
        "jail_days_per_person_year" if stat == "rate" && s.per_days == Some(365) => match w {
            Some((-365, -1)) => t.jail.days_per_person_year_before,
            Some((0, 364)) => t.jail.days_per_person_year_after,
            _ => None,
        },
        "jail_bookings_before_after" | "jail_days_before_after" if stat == "persons" => Some(referred),
        "jail_bookings_before_after" if stat == "mean_difference" && before_after((0, 364), (-365, -1)) => {
            diff(t.jail.bookings_per_person_year_after, t.jail.bookings_per_person_year_before)
        }
        "jail_days_before_after" if stat == "mean_difference" && before_after((0, 364), (-365, -1)) => {
            diff(t.jail.days_per_person_year_after, t.jail.days_per_person_year_before)
        }
        "housing_status" | "employment_status" | "income_benefits_status" | "housing_at_month"
            if stat == "persons" && s.day.is_none() =>
        {
            status_at(t, s.month).map(|a| a.persons as f64)
        }
        "housing_status" if stat == "share" => {
            let a = status_at(t, s.month)?;
            let v: Vec<&str> = s.values.iter().map(String::as_str).collect();
            match v.as_slice() {
                ["permanent"] => a.permanent,
                ["permanent", "shelter", "transitional"] => a.sheltered,
                _ => None,
            }
        }
        "housing_at_month" if cat == Some("permanent") => {
            let a = status_at(t, s.month)?;
            match stat {
                "share" => a.permanent,
                "count" => a.permanent.map(|p| (p * a.persons as f64).round()),
                _ => None,
            }
        }
        "employment_status" if stat == "share" => status_at(t, s.month)?.employed,
        "income_benefits_status" if stat == "share" => status_at(t, s.month)?.income_benefits,
        "days_to_intake" | "intake_within_days" if stat == "persons" => Some(t.timing.persons_with_intake as f64),
        "days_to_intake" if stat == "mean" => t.timing.mean_days_to_intake,
        "intake_within_days" if stat == "share" && w == Some((0, 7)) => t.timing.share_intake_within_7_days,
        "days_to_plan" if stat == "persons" => Some(t.timing.persons_with_plan as f64),
        "days_to_plan" if stat == "mean" => t.timing.mean_days_to_plan,
        _ => None,
    }
}

/// The rows of an answer of the catalog analysis `analysis`: one per value (cell), in the answer's order.
///
/// Labels, units and keys come from the analysis's name and its query (read
/// back from `answer.canonical`); with `truth`, each row whose statistic
/// `TrueStatistics` holds gets its true value (see the module doc for the
/// matching rule). An analysis this module does not know still gives rows,
/// with generic labels and no true value.
pub fn rows_from_answer(analysis: &str, answer: &Answer, truth: Option<&TrueStatistics>) -> Vec<ReportRow> {
    let spec = spec_of(&answer.canonical);
    answer
        .values
        .iter()
        .map(|cell| {
            let (label, unit) = label_of(analysis, &spec, cell);
            let arm = truth.and_then(|t| match arm_of(&cell.group, &spec) {
                Some("diversion") => Some(&t.diversion),
                Some("comparison") => Some(&t.comparison),
                _ => None,
            });
            // The difference in differences: the arms' true changes, subtracted.
            let did = truth.filter(|_| cell.statistic == DID && spec.cohort.is_empty()).and_then(|t| {
                let change = Cell { statistic: "mean_difference".into(), ..cell.clone() };
                Some(
                    truth_of(analysis, &spec, &change, &t.diversion)?
                        - truth_of(analysis, &spec, &change, &t.comparison)?,
                )
            });
            ReportRow {
                analysis: analysis.to_string(),
                key: row_key(analysis, &cell.statistic, cell.category.as_deref(), &spec),
                label,
                group: cell.group.clone(),
                value: cell.value,
                ci95: cell.ci95,
                epsilon: cell.epsilon,
                truth: did.or_else(|| arm.and_then(|t| truth_of(analysis, &spec, cell, t))),
                unit,
                headline: false,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

/// Escape text for HTML content and attribute values (`&`, `<`, `>`, `"`, `'`).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `v` with `decimals` decimals, without a minus sign on a value that rounds to zero.
fn fixed(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// A whole number with thousands separators.
fn thousands(v: f64) -> String {
    let n = v.round();
    if n.abs() >= 1e15 {
        return format!("{n:e}");
    }
    let digits = format!("{}", n.abs() as i64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A value in its unit: shares as percentages, persons as whole numbers.
pub fn format_value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    match unit {
        UNIT_SHARE => format!("{}%", fixed(v * 100.0, 1)),
        UNIT_PERSONS | UNIT_PERSON_DAYS => thousands(v),
        UNIT_DAYS | UNIT_DAYS_PER_PERSON_YEAR => fixed(v, 1),
        _ => fixed(v, 2),
    }
}

/// An epsilon for people: at most three decimals, no trailing zeros.
pub fn format_epsilon(e: f64) -> String {
    if !e.is_finite() {
        return "n/a".into();
    }
    let s = format!("{e:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".into()
    } else {
        s.to_string()
    }
}

fn format_group(g: &BTreeMap<String, String>) -> String {
    if g.is_empty() {
        return "all".into();
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(arm) = g.get("arm") {
        parts.push(arm.clone());
    }
    for (k, v) in g.iter().filter(|(k, _)| k.as_str() != "arm") {
        parts.push(format!("{} {}", k.replace('_', " "), v));
    }
    parts.join(", ")
}

fn inside(row: &ReportRow, t: f64) -> bool {
    // A little slack for floating-point post-processing at the interval's ends.
    let tol = 1e-9 * (1.0 + t.abs());
    t >= row.ci95.0 - tol && t <= row.ci95.1 + tol
}

/// (true values inside their interval, rows with a true value).
fn coverage(rows: &[ReportRow]) -> (usize, usize) {
    let with: Vec<(&ReportRow, f64)> = rows.iter().filter_map(|r| r.truth.map(|t| (r, t))).collect();
    (with.iter().filter(|(r, t)| inside(r, *t)).count(), with.len())
}

fn percent(f: f64, decimals: usize) -> String {
    format!("{}%", fixed(f * 100.0, decimals))
}

fn linkage_sentence(l: &LinkageQuality) -> String {
    format!(
        "Linkage quality against the synthetic truth: precision {} (linked pairs that are the same person), recall {} (pairs of the same person that were linked).",
        percent(l.precision, 2),
        percent(l.recall, 2)
    )
}

fn budget_sentence(b: &BudgetLine) -> String {
    format!(
        "Privacy budget (epsilon): {} granted, {} spent, {} left.",
        format_epsilon(b.granted),
        format_epsilon(b.spent),
        format_epsilon(b.left)
    )
}

/// The date part of an RFC 3339 time in words ("5 June 2024"), or the text itself.
fn human_date(generated: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let format = time::macros::format_description!("[day padding:none] [month repr:long] [year]");
    match time::OffsetDateTime::parse(generated, &Rfc3339) {
        Ok(t) => t.format(&format).unwrap_or_else(|_| generated.to_string()),
        Err(_) => generated.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------

/// Width at which the text table's labels wrap.
const TEXT_LABEL_WIDTH: usize = 64;

/// `text` in lines of at most `width` characters, broken at spaces (a longer word stands alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// The headline's rows: the per-arm changes and the difference between arms, in that order.
fn headline_rows(rows: &[ReportRow]) -> Vec<&ReportRow> {
    let mut h: Vec<&ReportRow> = rows.iter().filter(|r| r.headline && is_headline_value(r)).collect();
    h.sort_by_key(|r| r.key.contains(DID));
    h
}

fn is_headline_value(r: &ReportRow) -> bool {
    r.key.contains(".mean_difference") || r.key.contains(DID) || r.key.contains(".mean") || r.key.contains(".share")
}

/// What a headline value measures, for a sentence: "arrests per person" from
/// "Change in arrests per person, 6 months after vs 6 months before referral".
fn measure_of(label: &str) -> (String, String) {
    let label = label.strip_prefix("Difference between arms (diversion minus comparison) in the ").unwrap_or(label);
    let label = lower_first(label);
    let label = label.strip_prefix("change in ").unwrap_or(&label).to_string();
    match label.split_once(", ") {
        Some((what, when)) => (what.to_string(), when.to_string()),
        None => (label, String::new()),
    }
}

/// The headline in plain words: "with 95% confidence, arrests per person fell by between 0.19 and 0.41".
pub fn headline_sentence(r: &ReportRow, synthetic: bool) -> String {
    let (what, when) = measure_of(&r.label);
    let f = |v: f64| format_value(v, &r.unit);
    let (lo, hi) = r.ci95;
    let did = r.key.contains(DID);
    let who = if did { "Between the arms".to_string() } else { capitalize(&format_group(&r.group)) };
    let body = if did {
        if hi < 0.0 {
            format!(
                "{what} fell by between {} and {} more in the diversion arm than in the comparison arm",
                f(-hi),
                f(-lo)
            )
        } else if lo > 0.0 {
            format!(
                "{what} rose by between {} and {} more in the diversion arm than in the comparison arm",
                f(lo),
                f(hi)
            )
        } else {
            format!(
                "the diversion arm's change in {what} differs from the comparison arm's by between {} and {}: \
                 the interval includes no difference",
                f(lo),
                f(hi)
            )
        }
    } else if hi < 0.0 {
        format!("{what} fell by between {} and {}", f(-hi), f(-lo))
    } else if lo > 0.0 {
        format!("{what} rose by between {} and {}", f(lo), f(hi))
    } else {
        format!("{what} changed by between {} and {}: the interval includes no change", f(lo), f(hi))
    };
    let mut out = format!("{who}: with 95% confidence, {body}");
    if !when.is_empty() {
        let _ = write!(out, " ({when})");
    }
    let _ = write!(out, "; estimate {}", f(r.value));
    if synthetic {
        if let Some(t) = r.truth {
            let _ = write!(out, ", true value {}", f(t));
        }
    }
    out.push('.');
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The privacy unit in plain words, with the split rate when it was measured.
fn privacy_unit_sentence(input: &ReportInput) -> String {
    let mut s = "The privacy unit is the linked person: a person whose records linkage split into k persons is \
                 protected at k times the epsilon spent"
        .to_string();
    if let Some(b) = &input.budget {
        let _ = write!(s, " (two persons: {} instead of {})", format_epsilon(2.0 * b.spent), format_epsilon(b.spent));
    }
    match input.split_rate {
        Some(r) => {
            let _ = write!(
                s,
                "; linkage split {} of the persons in this program (measured against the synthetic truth).",
                percent(r, 1)
            );
        }
        None => s.push_str("; how many persons linkage splits can be measured only where the truth is known."),
    }
    s
}

/// A text table of rows: statistic, group, value, 95% interval, epsilon and
/// (synthetic data only) the true value and whether the interval holds it.
fn text_table(rows: &[&ReportRow], synthetic: bool) -> String {
    let mut out = String::new();
    let mut header = vec!["Statistic", "Group", "Value", "95% interval", "epsilon"];
    if synthetic {
        header.extend(["True value", "In interval"]);
    }
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let mut line = vec![
            r.label.clone(),
            format_group(&r.group),
            format_value(r.value, &r.unit),
            format!("[{}, {}]", format_value(r.ci95.0, &r.unit), format_value(r.ci95.1, &r.unit)),
            format_epsilon(r.epsilon),
        ];
        if synthetic {
            match r.truth {
                Some(t) => {
                    line.push(format_value(t, &r.unit));
                    line.push(if inside(r, t) { "yes" } else { "NO" }.into());
                }
                None => line.extend(["-".to_string(), "-".to_string()]),
            }
        }
        table.push(line);
    }
    // Long labels wrap onto continuation lines.
    let table: Vec<Vec<String>> = table
        .into_iter()
        .flat_map(|line| {
            let mut parts = wrap(line.first().map_or("", String::as_str), TEXT_LABEL_WIDTH).into_iter();
            let mut first = line;
            if let Some(head) = first.first_mut() {
                *head = parts.next().unwrap_or_default();
            }
            std::iter::once(first).chain(parts.map(|p| vec![format!("  {p}")]))
        })
        .collect();
    let columns = table.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| table.iter().map(|l| l.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    // Text columns left-aligned, numbers right-aligned.
    let left = |c: usize| c < 2;
    for (i, line) in table.iter().enumerate() {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            let w = widths.get(c).copied().unwrap_or(0);
            if c > 0 {
                text.push_str("  ");
            }
            if left(c) {
                let _ = write!(text, "{cell:<w$}");
            } else {
                let _ = write!(text, "{cell:>w$}");
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
            let _ = writeln!(out, "{}", "-".repeat(total));
        }
    }
    if rows.is_empty() {
        out.push_str("(no statistics released)\n");
    }
    out
}

fn clamp_sentence(c: &ClampLine) -> String {
    let parts: Vec<String> =
        c.outside.iter().map(|(arm, n, of)| format!("{n} of {of} persons in the {arm} arm")).collect();
    format!("{} clamped to [{}, {}]: {} outside.", c.what, c.bounds[0], c.bounds[1], parts.join(", "))
}

/// The report for a terminal: the headline in plain words first, then every
/// other statistic (value, 95% interval, epsilon and, for synthetic data
/// only, the true value and whether the interval holds it), then where each
/// epsilon went, then the notes (clamps on synthetic data, the privacy unit,
/// linkage, budget).
pub fn render_text(input: &ReportInput) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Evaluation report: {}", input.program);
    if !input.title.is_empty() {
        let _ = writeln!(out, "{}", input.title);
    }
    let _ = writeln!(out, "Generated {}", input.generated);
    out.push_str(
        "Every number is a noisy aggregate released under differential privacy. The 95% interval holds the\n\
         true value 19 times out of 20 given the noise (it does not cover linkage errors or sampling).\n\n",
    );
    let headline = headline_rows(&input.rows);
    if !headline.is_empty() {
        out.push_str("HEADLINE\n");
        for r in &headline {
            for line in wrap(&headline_sentence(r, input.synthetic), 100) {
                let _ = writeln!(out, "  {line}");
            }
        }
        out.push('\n');
    }
    let rest: Vec<&ReportRow> = input.rows.iter().filter(|r| !headline.iter().any(|h| std::ptr::eq(*h, *r))).collect();
    out.push_str(if headline.is_empty() { "STATISTICS\n" } else { "ALL OTHER STATISTICS\n" });
    out.push_str(&text_table(&rest, input.synthetic));
    out.push('\n');
    if !input.spending.is_empty() {
        out.push_str("WHERE THE PRIVACY BUDGET WENT\n");
        let width = input.spending.iter().map(|s| s.what.chars().count()).max().unwrap_or(0).min(90);
        for s in &input.spending {
            let earlier = if s.earlier { "  (released earlier; replayed at no cost)" } else { "" };
            let _ = writeln!(out, "  {:<width$}  {:>8}{earlier}", s.what, format_epsilon(s.epsilon));
        }
        let total: f64 = input.spending.iter().map(|s| s.epsilon).sum();
        let _ = writeln!(out, "  {:<width$}  {:>8}", "total", format_epsilon(total));
        out.push('\n');
    }
    if input.synthetic {
        for c in &input.clamps {
            for line in wrap(&format!("Clamp (synthetic truth): {}", clamp_sentence(c)), 100) {
                let _ = writeln!(out, "{line}");
            }
        }
        let (inside, with) = coverage(&input.rows);
        if with > 0 {
            let _ = writeln!(
                out,
                "True values inside their 95% interval: {inside} of {with} ({}).",
                percent(inside as f64 / with as f64, 0)
            );
        }
    }
    for line in wrap(&privacy_unit_sentence(input), 100) {
        let _ = writeln!(out, "{line}");
    }
    if let Some(l) = &input.linkage {
        let _ = writeln!(out, "{}", linkage_sentence(l));
    }
    if let Some(b) = &input.budget {
        let _ = writeln!(out, "{}", budget_sentence(b));
    }
    out
}

// ---------------------------------------------------------------------------
// SVG charts
// ---------------------------------------------------------------------------

const CHART_W: f64 = 720.0;
const CHART_H: f64 = 360.0;

/// Series (arms) of the charts: a row grouped by `arm` alone, or an ungrouped row ("all persons").
fn series_of(group: &BTreeMap<String, String>) -> Option<String> {
    match group.len() {
        0 => Some("all persons".into()),
        1 => group.get("arm").cloned(),
        _ => None,
    }
}

fn series_rank(s: &str) -> (u8, String) {
    match s {
        "diversion" => (0, String::new()),
        "comparison" => (1, String::new()),
        "all persons" => (3, String::new()),
        other => (2, other.to_string()),
    }
}

fn series_color(s: &str, i: usize) -> &'static str {
    const OTHERS: [&str; 4] = ["#2a9d8f", "#8e44ad", "#c0392b", "#7f8c8d"];
    match s {
        "diversion" => "#1b6ca8",
        "comparison" => "#d9822b",
        "all persons" => "#555555",
        _ => OTHERS[i % OTHERS.len()],
    }
}

/// The first row with this key for this series.
fn find_row<'a>(rows: &'a [ReportRow], key: &str, series: &str) -> Option<&'a ReportRow> {
    rows.iter().find(|r| r.key == key && series_of(&r.group).as_deref() == Some(series))
}

/// The series present among rows with one of `keys`, in display order.
fn series_among(rows: &[ReportRow], keys: &[String]) -> Vec<String> {
    let mut s: Vec<String> =
        rows.iter().filter(|r| keys.contains(&r.key)).filter_map(|r| series_of(&r.group)).collect();
    s.sort_by_key(|x| series_rank(x));
    s.dedup();
    s
}

/// Axis range and tick step: round numbers covering [lo, hi].
fn nice_scale(lo: f64, hi: f64) -> (f64, f64, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() { (lo.min(hi), lo.max(hi)) } else { (0.0, 1.0) };
    let hi = if hi - lo < 1e-12 { lo + if lo.abs() > 1e-12 { lo.abs() } else { 1.0 } } else { hi };
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm <= 1.0 {
            1.0
        } else if norm <= 2.0 {
            2.0
        } else if norm <= 2.5 {
            2.5
        } else if norm <= 5.0 {
            5.0
        } else {
            10.0
        };
    ((lo / step + 1e-9).floor() * step, (hi / step - 1e-9).ceil() * step, step)
}

fn ticks(min: f64, max: f64, step: f64) -> Vec<f64> {
    let n = ((max - min) / step + 1e-6).floor() as usize;
    (0..=n.min(50)).map(|k| min + k as f64 * step).collect()
}

fn tick_label(v: f64, step: f64, share: bool) -> String {
    let (v, step) = if share { (v * 100.0, step * 100.0) } else { (v, step) };
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil().max(0.0) as usize + 1 };
    let decimals = if decimals > 0 && (step * 10f64.powi(decimals as i32 - 1)).fract().abs() < 1e-9 {
        decimals - 1
    } else {
        decimals
    };
    let s = fixed(v, decimals);
    if share {
        format!("{s}%")
    } else {
        s
    }
}

/// A linear map from data to pixels; values outside the domain are clamped to it (display only).
#[derive(Clone, Copy)]
struct Scale {
    d0: f64,
    d1: f64,
    r0: f64,
    r1: f64,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        let span = self.d1 - self.d0;
        if !v.is_finite() || span.abs() < 1e-300 {
            return self.r0;
        }
        let v = v.clamp(self.d0.min(self.d1), self.d0.max(self.d1));
        self.r0 + (v - self.d0) / span * (self.r1 - self.r0)
    }
}

/// Pixel coordinates, one decimal.
fn px(v: f64) -> String {
    fixed(v, 1)
}

fn svg_open(out: &mut String, id: &str, title: &str, desc: &str) {
    let _ = writeln!(
        out,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-labelledby="{id}-title {id}-desc" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif" font-size="12">"#,
        w = CHART_W,
        h = CHART_H
    );
    let _ = writeln!(out, r#"<title id="{id}-title">{}</title>"#, escape_html(title));
    let _ = writeln!(out, r#"<desc id="{id}-desc">{}</desc>"#, escape_html(desc));
    let _ = writeln!(out, r##"<rect x="0" y="0" width="{CHART_W}" height="{CHART_H}" fill="#ffffff"/>"##);
}

fn svg_text(out: &mut String, x: f64, y: f64, anchor: &str, extra: &str, text: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="{anchor}"{extra}>{}</text>"#,
        px(x),
        px(y),
        escape_html(text)
    );
}

fn svg_line(out: &mut String, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str, width: f64) {
    let _ = writeln!(
        out,
        r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{stroke}" stroke-width="{}"/>"#,
        px(x1),
        px(y1),
        px(x2),
        px(y2),
        px(width)
    );
}

/// A vertical (or horizontal) error bar from `a` to `b` at `at`, with caps.
fn error_bar(out: &mut String, vertical: bool, at: f64, a: f64, b: f64) {
    let cap = 5.0;
    let ink = "#222222";
    if vertical {
        svg_line(out, at, a, at, b, ink, 1.5);
        svg_line(out, at - cap, a, at + cap, a, ink, 1.5);
        svg_line(out, at - cap, b, at + cap, b, ink, 1.5);
    } else {
        svg_line(out, a, at, b, at, ink, 1.5);
        svg_line(out, a, at - cap, a, at + cap, ink, 1.5);
        svg_line(out, b, at - cap, b, at + cap, ink, 1.5);
    }
}

fn diamond(out: &mut String, x: f64, y: f64) {
    let r = 5.0;
    let _ = writeln!(
        out,
        r##"<polygon points="{},{} {},{} {},{} {},{}" fill="#ffffff" stroke="#000000" stroke-width="1.5"/>"##,
        px(x),
        px(y - r),
        px(x + r),
        px(y),
        px(x),
        px(y + r),
        px(x - r),
        px(y)
    );
}

enum Glyph {
    Swatch(&'static str),
    ErrorBar,
    Truth,
}

/// A one-line legend starting at (x, y).
fn legend(out: &mut String, x: f64, y: f64, items: &[(String, Glyph)]) {
    let mut at = x;
    let _ = writeln!(out, r#"<g class="legend">"#);
    for (label, glyph) in items {
        match glyph {
            Glyph::Swatch(color) => {
                let _ = writeln!(
                    out,
                    r#"<rect x="{}" y="{}" width="14" height="14" fill="{color}"/>"#,
                    px(at),
                    px(y - 11.0)
                );
            }
            Glyph::ErrorBar => {
                let _ = writeln!(out, r#"<g>"#);
                error_bar(out, true, at + 7.0, y - 11.0, y + 3.0);
                let _ = writeln!(out, r#"</g>"#);
            }
            Glyph::Truth => diamond(out, at + 7.0, y - 4.0),
        }
        svg_text(out, at + 20.0, y, "start", "", label);
        at += 20.0 + 7.0 * label.chars().count() as f64 + 22.0;
    }
    let _ = writeln!(out, "</g>");
}

fn legend_items(series: &[String], with_truth: bool) -> Vec<(String, Glyph)> {
    let mut items: Vec<(String, Glyph)> =
        series.iter().enumerate().map(|(i, s)| (s.clone(), Glyph::Swatch(series_color(s, i)))).collect();
    items.push(("95% interval".into(), Glyph::ErrorBar));
    if with_truth {
        items.push(("true value (synthetic data)".into(), Glyph::Truth));
    }
    items
}

/// Horizontal grid lines and y tick labels of a vertical value axis.
fn y_axis(
    out: &mut String,
    y: Scale,
    left: f64,
    right: f64,
    (min, max, step): (f64, f64, f64),
    share: bool,
    title: &str,
) {
    for t in ticks(min, max, step) {
        let yy = y.at(t);
        svg_line(out, left, yy, right, yy, "#e3e3e3", 1.0);
        svg_text(out, left - 6.0, yy + 4.0, "end", "", &tick_label(t, step, share));
    }
    svg_line(out, left, y.r0, left, y.r1, "#444444", 1.0);
    let mid = (y.r0 + y.r1) / 2.0;
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        px(mid),
        px(mid),
        escape_html(title)
    );
}

/// The value range a chart must show: values, interval ends and (when shown) true values.
fn extent<'a>(rows: impl Iterator<Item = &'a ReportRow>, synthetic: bool) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for r in rows {
        let mut vals = vec![r.value, r.ci95.0, r.ci95.1];
        if synthetic {
            vals.extend(r.truth);
        }
        for v in vals.into_iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    (lo, hi)
}

fn note(text: &str) -> String {
    format!("<p class=\"chart-note\">{}</p>\n", escape_html(text))
}

fn figure(title: &str, caption: &str, body: &str) -> String {
    format!(
        "<figure>\n<figcaption><strong>{}</strong> {}</figcaption>\n{}</figure>\n",
        escape_html(title),
        escape_html(caption),
        body
    )
}

/// The headline chart: each arm's change and the difference between arms, as points with 95% intervals around a zero line.
fn chart_headline(rows: &[&ReportRow], synthetic: bool) -> String {
    let title = "The headline, with 95% intervals.";
    let with_truth = synthetic && rows.iter().any(|r| r.truth.is_some());
    let (lo, hi) = extent(rows.iter().copied(), synthetic);
    let (min, max, step) = nice_scale(lo.min(0.0), hi.max(0.0));
    let (left, right, top, bottom) = (70.0, 20.0, 20.0, 80.0);
    let y = Scale { d0: min, d1: max, r0: CHART_H - bottom, r1: top };
    let mut out = String::new();
    let unit = rows.first().map_or(UNIT_PER_PERSON, |r| r.unit.as_str()).to_string();
    svg_open(
        &mut out,
        "chart-headline",
        "The headline: change per arm and the difference between arms",
        "Points: the released values; black bars: 95% intervals over the noise; the line at 0 is no change.",
    );
    y_axis(&mut out, y, left, CHART_W - right, (min, max, step), unit == UNIT_SHARE, &format!("change, {unit}"));
    let plot_w = CHART_W - left - right;
    let slot = plot_w / rows.len().max(1) as f64;
    svg_line(&mut out, left, y.at(0.0), CHART_W - right, y.at(0.0), "#444444", 1.5);
    for (i, r) in rows.iter().enumerate() {
        let x = left + slot * (i as f64 + 0.5);
        let name = if r.key.contains(DID) { "difference between arms".to_string() } else { format_group(&r.group) };
        svg_text(&mut out, x, CHART_H - bottom + 20.0, "middle", "", &name);
        error_bar(&mut out, true, x, y.at(r.ci95.0), y.at(r.ci95.1));
        let color = if r.key.contains(DID) { "#5e3c99" } else { series_color(&format_group(&r.group), i) };
        let _ = writeln!(
            out,
            r#"<circle cx="{}" cy="{}" r="6" fill="{color}"><title>{}</title></circle>"#,
            px(x),
            px(y.at(r.value)),
            escape_html(&format!("{name}: {}", format_value(r.value, &r.unit)))
        );
        if with_truth {
            if let Some(t) = r.truth {
                diamond(&mut out, x + 14.0, y.at(t));
            }
        }
        svg_text(
            &mut out,
            x + 12.0,
            y.at(r.value) + 4.0,
            "start",
            r#" font-size="11""#,
            &format_value(r.value, &r.unit),
        );
    }
    let mut items = vec![("95% interval".to_string(), Glyph::ErrorBar)];
    if with_truth {
        items.push(("true value (synthetic data)".into(), Glyph::Truth));
    }
    legend(&mut out, left, CHART_H - 18.0, &items);
    out.push_str("</svg>\n");
    let caption = rows.first().map_or(String::new(), |r| {
        format!("{}: per arm, and diversion minus comparison (difference in differences).", r.label)
    });
    figure(title, &caption, &out)
}

const ARREST_PERIODS: [((i32, i32), &str); 3] = [
    ((-182, -1), "6 months before referral"),
    ((0, 181), "6 months after referral"),
    ((182, 364), "6 to 12 months after referral"),
];

/// Chart (a): mean arrests per person before and after referral, by arm, with 95% intervals.
fn chart_arrests(rows: &[ReportRow], synthetic: bool) -> String {
    let title = "Arrests per person before and after referral.";
    let key = |(a, b): (i32, i32)| format!("arrests_per_person.mean[{a},{b}]");
    let present: Vec<((i32, i32), &str)> = ARREST_PERIODS
        .iter()
        .copied()
        .filter(|(w, _)| rows.iter().any(|r| r.key == key(*w) && series_of(&r.group).is_some()))
        .collect();
    let missing: Vec<String> = ARREST_PERIODS
        .iter()
        .take(2)
        .filter(|(w, _)| !present.iter().any(|(p, _)| p == w))
        .map(|((a, b), name)| format!("the {name} (from={a}, to={b})"))
        .collect();
    if !missing.is_empty() {
        return figure(
            title,
            "",
            &note(&format!(
                "Not drawn: the analysis arrests_per_person (grouped by arm) was not run for {}.",
                missing.join(" and ")
            )),
        );
    }
    let keys: Vec<String> = present.iter().map(|(w, _)| key(*w)).collect();
    let series = series_among(rows, &keys);
    let cells: Vec<Vec<Option<&ReportRow>>> =
        present.iter().map(|(w, _)| series.iter().map(|s| find_row(rows, &key(*w), s)).collect()).collect();
    let shown = cells.iter().flatten().flatten().copied();
    let with_truth = synthetic && cells.iter().flatten().flatten().any(|r| r.truth.is_some());
    let (lo, hi) = extent(shown, synthetic);
    let (min, max, step) = nice_scale(lo.min(0.0), hi.max(0.0));

    let (left, right, top, bottom) = (70.0, 20.0, 20.0, 80.0);
    let y = Scale { d0: min, d1: max, r0: CHART_H - bottom, r1: top };
    let mut out = String::new();
    svg_open(
        &mut out,
        "chart-arrests",
        "Arrests per person before and after referral, by arm",
        "Bars: mean arrests per person in each period; black bars: 95% intervals over the noise.",
    );
    y_axis(&mut out, y, left, CHART_W - right, (min, max, step), false, "arrests per person");
    let plot_w = CHART_W - left - right;
    let group_w = plot_w / present.len().max(1) as f64;
    let bar_w = (group_w * 0.7 / series.len().max(1) as f64).min(56.0);
    for (p, (_, name)) in present.iter().enumerate() {
        let center = left + group_w * (p as f64 + 0.5);
        svg_text(&mut out, center, CHART_H - bottom + 20.0, "middle", "", name);
        for (i, s) in series.iter().enumerate() {
            let Some(row) = cells.get(p).and_then(|c| c.get(i)).copied().flatten() else {
                continue;
            };
            let x = center + (i as f64 - (series.len() as f64 - 1.0) / 2.0) * bar_w;
            let (y0, yv) = (y.at(0.0_f64.max(min)), y.at(row.value));
            let _ = writeln!(
                out,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>"#,
                px(x - bar_w * 0.45),
                px(y0.min(yv)),
                px(bar_w * 0.9),
                px((y0 - yv).abs()),
                series_color(s, i),
                escape_html(&format!("{s}, {name}: {}", format_value(row.value, &row.unit)))
            );
            error_bar(&mut out, true, x, y.at(row.ci95.0), y.at(row.ci95.1));
            if with_truth {
                if let Some(t) = row.truth {
                    diamond(&mut out, x, y.at(t));
                }
            }
            svg_text(
                &mut out,
                x,
                y.at(row.ci95.1).min(yv) - 7.0,
                "middle",
                r#" font-size="11""#,
                &format_value(row.value, &row.unit),
            );
        }
    }
    svg_line(&mut out, left, y.at(0.0_f64.max(min)), CHART_W - right, y.at(0.0_f64.max(min)), "#444444", 1.0);
    legend(&mut out, left, CHART_H - 18.0, &legend_items(&series, with_truth));
    out.push_str("</svg>\n");
    let caption =
        "Mean number of arrests per person in each period around the referral (analysis arrests_per_person), \
                   with the range that holds the value 19 times out of 20 given the noise.";
    figure(title, caption, &out)
}

/// Month → share row, per series, for permanent housing.
fn housing_rows(rows: &[ReportRow]) -> BTreeMap<u32, Vec<&ReportRow>> {
    let mut by_month: BTreeMap<u32, Vec<&ReportRow>> = BTreeMap::new();
    for r in rows {
        let month = r
            .key
            .strip_prefix("housing_status.share@m")
            .and_then(|rest| rest.strip_suffix("=permanent"))
            .or_else(|| r.key.strip_prefix("housing_at_month.share:permanent@m"))
            .and_then(|m| m.parse::<u32>().ok());
        if let (Some(m), Some(_)) = (month, series_of(&r.group)) {
            by_month.entry(m).or_default().push(r);
        }
    }
    by_month
}

/// Chart (b): share in permanent housing at intake and months after, by arm, with 95% intervals.
fn chart_housing(rows: &[ReportRow], synthetic: bool) -> String {
    let title = "Permanent housing over time.";
    let by_month = housing_rows(rows);
    if by_month.is_empty() {
        return figure(
            title,
            "",
            &note(
                "Not drawn: the analysis housing_status (share in permanent housing at intake and 6, 12, 18 months, grouped by arm) was not run.",
            ),
        );
    }
    let mut series: Vec<String> = by_month.values().flatten().filter_map(|r| series_of(&r.group)).collect();
    series.sort_by_key(|x| series_rank(x));
    series.dedup();
    // One row per (month, series): housing_status first, then the histogram.
    let pick = |m: u32, s: &str| -> Option<&ReportRow> {
        let list = by_month.get(&m)?;
        list.iter()
            .find(|r| r.analysis == "housing_status" && series_of(&r.group).as_deref() == Some(s))
            .or_else(|| list.iter().find(|r| series_of(&r.group).as_deref() == Some(s)))
            .copied()
    };
    let months: Vec<u32> = by_month.keys().copied().collect();
    // A series whose every interval covers 0% to 100% says nothing (e.g. no one with a status): left out.
    let (series, blank): (Vec<String>, Vec<String>) = series
        .into_iter()
        .partition(|s| months.iter().filter_map(|&m| pick(m, s)).any(|r| r.ci95.0 > 0.0 || r.ci95.1 < 1.0));
    if series.is_empty() {
        return figure(
            title,
            "",
            &note("Not drawn: every interval of housing_status covers 0% to 100% (too few persons with a status)."),
        );
    }
    let shown: Vec<&ReportRow> = months.iter().flat_map(|&m| series.iter().filter_map(move |s| pick(m, s))).collect();
    let with_truth = synthetic && shown.iter().any(|r| r.truth.is_some());
    let (lo, hi) = extent(shown.iter().copied(), synthetic);
    let (min, max, step) = nice_scale(lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0));
    let (min, max) = (min.max(0.0), max.min(1.0));
    let (min, max) = if max - min < step * 0.5 { (0.0, 1.0) } else { (min, max) };
    let step = if (min, max) == (0.0, 1.0) && step > 0.25 { 0.2 } else { step };

    let (left, right, top, bottom) = (70.0, 30.0, 20.0, 80.0);
    let y = Scale { d0: min, d1: max, r0: CHART_H - bottom, r1: top };
    let (m0, m1) = (months.first().copied().unwrap_or(0), months.last().copied().unwrap_or(0));
    let pad = 50.0;
    let x = |m: u32| {
        if m1 == m0 {
            (left + CHART_W - right) / 2.0
        } else {
            left + pad + f64::from(m - m0) / f64::from(m1 - m0) * (CHART_W - left - right - 2.0 * pad)
        }
    };
    let mut out = String::new();
    svg_open(
        &mut out,
        "chart-housing",
        "Share in permanent housing at intake and after, by arm",
        "Points: share of persons in permanent housing at each month after intake; black bars: 95% intervals over the noise.",
    );
    y_axis(&mut out, y, left, CHART_W - right, (min, max, step), true, "share in permanent housing");
    svg_line(&mut out, left, y.r0, CHART_W - right, y.r0, "#444444", 1.0);
    for &m in &months {
        let name = if m == 0 { "at intake".to_string() } else { format!("{m} months") };
        svg_text(&mut out, x(m), CHART_H - bottom + 20.0, "middle", "", &name);
    }
    let n = series.len() as f64;
    for (i, s) in series.iter().enumerate() {
        let dodge = (i as f64 - (n - 1.0) / 2.0) * 10.0;
        let color = series_color(s, i);
        let points: Vec<(f64, &ReportRow)> =
            months.iter().filter_map(|&m| pick(m, s).map(|r| (x(m) + dodge, r))).collect();
        if points.len() > 1 {
            let path: Vec<String> =
                points.iter().map(|(xx, r)| format!("{},{}", px(*xx), px(y.at(r.value.clamp(0.0, 1.0))))).collect();
            let _ = writeln!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2.5"/>"#,
                path.join(" ")
            );
        }
        for (xx, r) in &points {
            error_bar(&mut out, true, *xx, y.at(r.ci95.0.clamp(0.0, 1.0)), y.at(r.ci95.1.clamp(0.0, 1.0)));
            let _ = writeln!(
                out,
                r##"<circle cx="{}" cy="{}" r="5" fill="{color}" stroke="#ffffff" stroke-width="1.5"><title>{}</title></circle>"##,
                px(*xx),
                px(y.at(r.value.clamp(0.0, 1.0))),
                escape_html(&format!("{s}: {}", format_value(r.value, &r.unit)))
            );
            if with_truth {
                if let Some(t) = r.truth {
                    diamond(&mut out, *xx, y.at(t.clamp(0.0, 1.0)));
                }
            }
            if series.len() <= 2 {
                let (dx, anchor) = if i == 0 { (-9.0, "end") } else { (9.0, "start") };
                svg_text(
                    &mut out,
                    xx + dx,
                    y.at(r.value.clamp(0.0, 1.0)) + 4.0,
                    anchor,
                    r#" font-size="11""#,
                    &format_value(r.value, &r.unit),
                );
            }
        }
    }
    legend(&mut out, left, CHART_H - 18.0, &legend_items(&series, with_truth));
    out.push_str("</svg>\n");
    let not_run: Vec<String> = STATUS_MONTHS
        .iter()
        .filter(|m| !by_month.contains_key(m))
        .map(|&m| if m == 0 { "at intake".to_string() } else { format!("month {m}") })
        .collect();
    let mut caption =
        "Share of persons in permanent housing at intake and in the months after it (analysis housing_status), \
                       among persons with a status recorded that month, with 95% intervals."
            .to_string();
    if !not_run.is_empty() {
        let _ = write!(caption, " Not run: {}.", not_run.join(", "));
    }
    if !blank.is_empty() {
        let _ = write!(
            caption,
            " Not shown: {} (every interval covers 0% to 100%: too few persons with a housing status).",
            blank.join(", ")
        );
    }
    figure(title, &caption, &out)
}

/// One series of the funnel: (stage name, value, interval if released, truth).
type FunnelBar = (String, f64, Option<(f64, f64)>, Option<f64>);

/// Chart (c): the referral funnel as horizontal bars, by arm.
fn chart_funnel(rows: &[ReportRow], synthetic: bool) -> String {
    let title = "The referral funnel.";
    // The funnel's qualifier: timely within 7 days if run so, else the first one found.
    let mut quals: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.key.strip_prefix("referral_funnel.persons"))
        .filter(|q| q.starts_with('@'))
        .collect();
    quals.sort_by_key(|q| *q != "@7d");
    let within = quals
        .first()
        .and_then(|q| q.strip_prefix('@'))
        .and_then(|q| q.strip_suffix('d'))
        .and_then(|d| d.parse::<i32>().ok());
    let (Some(qual), Some(within)) = (quals.first().copied(), within) else {
        return figure(title, "", &note("Not drawn: the analysis referral_funnel (grouped by arm) was not run."));
    };
    let key = |stat: &str| format!("referral_funnel.{stat}{qual}");
    let stages = ["ineligible", "declined", "no_timely_intake", "enrolled"];
    let mut keys: Vec<String> = stages.iter().map(|s| key(&format!("count:{s}"))).collect();
    keys.push(key("persons"));
    let all_series = series_among(rows, &keys);
    // Per series: referred (released), eligible and not declined (sums of released stage counts), enrolled (released).
    let mut series: Vec<String> = Vec::new();
    let mut bars: Vec<Vec<FunnelBar>> = Vec::new();
    for s in &all_series {
        let get = |k: &str| find_row(rows, &key(k), s);
        let (Some(referred), Some(inel), Some(decl), Some(_), Some(enr)) = (
            get("persons"),
            get("count:ineligible"),
            get("count:declined"),
            get("count:no_timely_intake"),
            get("count:enrolled"),
        ) else {
            continue;
        };
        // Stages by subtraction from the persons referred, so that the bars never grow down the funnel.
        let eligible = (referred.value - inel.value).max(0.0);
        let not_declined = (eligible - decl.value).max(0.0);
        let eligible_truth = referred.truth.zip(inel.truth).map(|(r, i)| r - i);
        let not_declined_truth = eligible_truth.zip(decl.truth).map(|(e, d)| e - d);
        series.push(s.clone());
        bars.push(vec![
            ("referred".into(), referred.value, Some(referred.ci95), referred.truth),
            ("eligible".into(), eligible, None, eligible_truth),
            ("not declined".into(), not_declined, None, not_declined_truth),
            (format!("timely intake (within {within} days): enrolled"), enr.value, Some(enr.ci95), enr.truth),
        ]);
    }
    if series.is_empty() {
        return figure(
            title,
            "",
            &note("Not drawn: the analysis referral_funnel was not run grouped by arm (its stage counts are missing)."),
        );
    }
    let with_truth = synthetic && bars.iter().flatten().any(|b| b.3.is_some());
    let mut hi: f64 = 0.0;
    for (_, v, ci, t) in bars.iter().flatten() {
        hi = hi.max(*v);
        if let Some((_, b)) = ci {
            hi = hi.max(*b);
        }
        if with_truth {
            hi = hi.max(t.unwrap_or(0.0));
        }
    }
    let (min, max, step) = nice_scale(0.0, hi);
    let (left, right, top, bottom) = (210.0, 70.0, 16.0, 64.0);
    let xs = Scale { d0: min, d1: max, r0: left, r1: CHART_W - right };
    let mut out = String::new();
    svg_open(
        &mut out,
        "chart-funnel",
        "Referral funnel, by arm",
        "Horizontal bars: persons referred, eligible, not declined, and with a timely intake (enrolled); black bars: 95% intervals of released counts.",
    );
    for t in ticks(min, max, step) {
        let xx = xs.at(t);
        svg_line(&mut out, xx, top, xx, CHART_H - bottom, "#e3e3e3", 1.0);
        svg_text(&mut out, xx, CHART_H - bottom + 16.0, "middle", "", &tick_label(t, step, false));
    }
    svg_line(&mut out, left, top, left, CHART_H - bottom, "#444444", 1.0);
    svg_line(&mut out, left, CHART_H - bottom, CHART_W - right, CHART_H - bottom, "#444444", 1.0);
    svg_text(&mut out, (left + CHART_W - right) / 2.0, CHART_H - bottom + 34.0, "middle", "", "persons");
    let n_stages = bars.first().map_or(0, Vec::len);
    let stage_h = (CHART_H - bottom - top) / n_stages.max(1) as f64;
    let bar_h = (stage_h * 0.75 / series.len().max(1) as f64).min(26.0);
    for stage in 0..n_stages {
        let center = top + stage_h * (stage as f64 + 0.5);
        let name = bars.first().and_then(|b| b.get(stage)).map_or("", |b| b.0.as_str());
        let label = name.split(": ").collect::<Vec<_>>();
        match label.as_slice() {
            [a, b] => {
                svg_text(&mut out, left - 8.0, center - 3.0, "end", "", a);
                svg_text(&mut out, left - 8.0, center + 11.0, "end", "", b);
            }
            _ => svg_text(&mut out, left - 8.0, center + 4.0, "end", "", name),
        }
        for (i, s) in series.iter().enumerate() {
            let Some((_, v, ci, t)) = bars.get(i).and_then(|b| b.get(stage)) else {
                continue;
            };
            let referred = bars.get(i).and_then(|b| b.first()).map_or(0.0, |b| b.1);
            let yy = center + (i as f64 - (series.len() as f64 - 1.0) / 2.0) * bar_h;
            let _ = writeln!(
                out,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>"#,
                px(left),
                px(yy - bar_h * 0.42),
                px((xs.at(*v) - left).max(0.0)),
                px(bar_h * 0.84),
                series_color(s, i),
                escape_html(&format!("{s}, {name}: {}", format_value(*v, UNIT_PERSONS)))
            );
            let mut end = xs.at(*v);
            if let Some((a, b)) = ci {
                error_bar(&mut out, false, yy, xs.at(*a), xs.at(*b));
                end = end.max(xs.at(*b));
            }
            if with_truth {
                if let Some(t) = t {
                    diamond(&mut out, xs.at(*t), yy);
                    end = end.max(xs.at(*t) + 5.0);
                }
            }
            let share = if stage > 0 && referred > 0.0 {
                format!(" ({})", percent((v / referred).clamp(0.0, 1.0), 0))
            } else {
                String::new()
            };
            svg_text(
                &mut out,
                end + 6.0,
                yy + 4.0,
                "start",
                r#" font-size="11""#,
                &format!("{}{share}", format_value(*v, UNIT_PERSONS)),
            );
        }
    }
    legend(&mut out, 20.0, CHART_H - 12.0, &legend_items(&series, with_truth));
    out.push_str("</svg>\n");
    let caption = format!(
        "Persons referred and how many remained at each step (analysis referral_funnel): eligible at screening, \
         not declining, and with an intake within {within} days of referral, which is what enrolled means here. \
         Eligible and not declined are computed from the released counts (referred minus ineligible, minus declined) \
         and carry no interval of their own; \
         percentages are of the persons referred."
    );
    figure(title, &caption, &out)
}

// ---------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------

const CSS: &str = "
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 980px; padding: 24px 20px 48px; color: #1d1d1d; background: #ffffff;
  font: 16px/1.5 system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; }
header { border-bottom: 3px solid #1b6ca8; margin-bottom: 20px; }
h1 { font-size: 1.8em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 32px 0 8px; }
.meta { color: #555555; margin: 0 0 12px; }
.badge { display: inline-block; background: #fff3cd; border: 1px solid #e0c36a; border-radius: 4px; padding: 0 6px; font-size: 0.85em; }
.note { background: #f4f8fb; border-left: 4px solid #1b6ca8; padding: 12px 16px; }
.note ul { margin: 6px 0 0; padding-left: 20px; }
.lines p { margin: 4px 0; }
figure { margin: 24px 0; page-break-inside: avoid; }
figcaption { margin-bottom: 6px; }
svg.chart { width: 100%; height: auto; max-width: 720px; display: block; border: 1px solid #e6e6e6; }
.chart-note { background: #fafafa; border: 1px dashed #bbbbbb; padding: 10px 14px; color: #444444; }
table { border-collapse: collapse; width: 100%; font-size: 0.92em; }
th, td { border-bottom: 1px solid #e1e1e1; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td .an { display: block; color: #777777; font-size: 0.8em; font-family: ui-monospace, Menlo, Consolas, monospace; }
td.miss { color: #a4262c; font-weight: bold; }
footer { margin-top: 32px; color: #666666; font-size: 0.85em; }
@media print { body { max-width: none; } }
";

/// The report as one self-contained HTML5 document (inline CSS and SVG, no script, no external reference).
pub fn render_html(input: &ReportInput) -> String {
    let e = escape_html;
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(h, "<title>Evaluation report: {}</title>", e(&input.program));
    let _ = writeln!(h, "<style>{CSS}</style>\n</head>\n<body>");

    // Header.
    h.push_str("<header>\n");
    let _ = writeln!(h, "<h1>{}: evaluation report</h1>", e(&input.program));
    let _ = write!(
        h,
        "<p class=\"meta\">Generated <time datetime=\"{}\">{}</time>",
        e(&input.generated),
        e(&human_date(&input.generated))
    );
    if input.synthetic {
        h.push_str(" &middot; <span class=\"badge\">synthetic data: a demonstration, not a real program</span>");
    }
    h.push_str("</p>\n");
    if !input.title.is_empty() {
        let _ = writeln!(h, "<p>{}</p>", e(&input.title));
    }
    h.push_str("</header>\n");

    // The headline first: in words, then as a chart.
    let headline = headline_rows(&input.rows);
    if !headline.is_empty() {
        h.push_str("<section class=\"headline\">\n<h2>Headline</h2>\n<ul>\n");
        for r in &headline {
            let _ = writeln!(h, "<li>{}</li>", e(&headline_sentence(r, input.synthetic)));
        }
        h.push_str("</ul>\n");
        h.push_str(&chart_headline(&headline, input.synthetic));
        h.push_str("</section>\n");
    }

    // What the numbers are.
    h.push_str("<section class=\"note\">\n<h2>What these numbers are</h2>\n<ul>\n");
    h.push_str(
        "<li>Every number in this report is a <strong>noisy aggregate</strong>: a count, share, average or rate over \
         many people, released under <strong>differential privacy</strong>. Random noise of a known size was added \
         before release, so no person can be singled out, whether or not they are in the data.</li>\n",
    );
    h.push_str(
        "<li>Each number comes with a <strong>95% interval</strong>: the range that holds the true value 19 times out \
         of 20, given the noise. It does not account for errors in linking records between agencies, nor for \
         sampling (how this group of people differs from others who could have been referred).</li>\n",
    );
    h.push_str(
        "<li>Averages and rates count each person up to a limit (for example at most 5 arrests in a period), so that \
         one person cannot move a number by much; the limits are part of the privacy protection.</li>\n",
    );
    h.push_str(
        "<li>Each statistic spends part of a fixed <strong>privacy budget</strong> (epsilon, shown per row): the \
         smaller the epsilon spent, the more noise and the stronger the protection. The budget cannot be \
         overspent.</li>\n",
    );
    if input.synthetic {
        h.push_str(
            "<li>The data are <strong>synthetic</strong>, so the true values are known and shown beside the released \
             ones, with whether the interval holds them. With perfect linkage and no limits reached, about 19 in 20 \
             intervals should hold their true value.</li>\n",
        );
    }
    h.push_str("</ul>\n</section>\n");

    // Budget and linkage.
    h.push_str("<section class=\"lines\">\n");
    match &input.budget {
        Some(b) => {
            let _ = writeln!(h, "<p><strong>{}</strong></p>", e(&budget_sentence(b)));
        }
        None => h.push_str("<p>Privacy budget: not stated; the epsilon of each statistic is in the table.</p>\n"),
    }
    let _ = writeln!(h, "<p>{}</p>", e(&privacy_unit_sentence(input)));
    if let Some(l) = &input.linkage {
        let _ = writeln!(h, "<p>{}</p>", e(&linkage_sentence(l)));
    }
    if input.synthetic {
        for c in &input.clamps {
            let _ = writeln!(h, "<p>Clamp (synthetic truth): {}</p>", e(&clamp_sentence(c)));
        }
        let (inside, with) = coverage(&input.rows);
        if with > 0 {
            let _ = writeln!(
                h,
                "<p>True values inside their 95% interval: {inside} of {with} ({}).</p>",
                e(&percent(inside as f64 / with as f64, 0))
            );
        }
    }
    h.push_str("</section>\n");

    // Charts.
    h.push_str("<section>\n<h2>At a glance</h2>\n");
    h.push_str(&chart_arrests(&input.rows, input.synthetic));
    h.push_str(&chart_housing(&input.rows, input.synthetic));
    h.push_str(&chart_funnel(&input.rows, input.synthetic));
    h.push_str("</section>\n");

    // Table.
    h.push_str("<section>\n<h2>Every released statistic</h2>\n");
    let rest: Vec<&ReportRow> = input.rows.iter().filter(|r| !headline.iter().any(|x| std::ptr::eq(*x, *r))).collect();
    let rows_in_order: Vec<&ReportRow> = headline.iter().copied().chain(rest).collect();
    if input.rows.is_empty() {
        h.push_str("<p>No statistic was released.</p>\n");
    } else {
        h.push_str("<table>\n<thead>\n<tr><th>Statistic</th><th>Group</th><th class=\"num\">Value</th>");
        h.push_str("<th class=\"num\">95% interval</th><th class=\"num\">Epsilon</th>");
        if input.synthetic {
            h.push_str("<th class=\"num\">True value</th><th>In interval</th>");
        }
        h.push_str("</tr>\n</thead>\n<tbody>\n");
        for r in rows_in_order {
            let _ = write!(
                h,
                "<tr><td>{}<span class=\"an\">{}</span></td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{} &ndash; {}</td><td class=\"num\">{}</td>",
                e(&r.label),
                e(&r.analysis),
                e(&format_group(&r.group)),
                e(&format_value(r.value, &r.unit)),
                e(&format_value(r.ci95.0, &r.unit)),
                e(&format_value(r.ci95.1, &r.unit)),
                e(&format_epsilon(r.epsilon)),
            );
            if input.synthetic {
                match r.truth {
                    Some(t) if inside(r, t) => {
                        let _ = write!(h, "<td class=\"num\">{}</td><td>yes</td>", e(&format_value(t, &r.unit)));
                    }
                    Some(t) => {
                        let _ = write!(
                            h,
                            "<td class=\"num\">{}</td><td class=\"miss\">no</td>",
                            e(&format_value(t, &r.unit))
                        );
                    }
                    None => h.push_str("<td class=\"num\">&mdash;</td><td>&mdash;</td>"),
                }
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</tbody>\n</table>\n");
    }
    h.push_str("</section>\n");

    // Where each epsilon went.
    if !input.spending.is_empty() {
        h.push_str("<section>\n<h2>Where the privacy budget went</h2>\n<table>\n<thead>\n");
        h.push_str("<tr><th>Released</th><th class=\"num\">Epsilon</th><th>Note</th></tr>\n</thead>\n<tbody>\n");
        for s in &input.spending {
            let note = if s.earlier { "released earlier; replayed at no cost" } else { "" };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                e(&s.what),
                e(&format_epsilon(s.epsilon)),
                note
            );
        }
        let total: f64 = input.spending.iter().map(|s| s.epsilon).sum();
        let _ = writeln!(
            h,
            "<tr><td><strong>total</strong></td><td class=\"num\"><strong>{}</strong></td><td></td></tr>",
            e(&format_epsilon(total))
        );
        h.push_str("</tbody>\n</table>\n</section>\n");
    }

    h.push_str(
        "<footer>\n<p>Made by divert. Statistics are released by the program's data steward only as differentially \
         private aggregates; no record, name or identifier left any agency for this report.</p>\n</footer>\n",
    );
    h.push_str("</body>\n</html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_handles_markup_and_quotes() {
        assert_eq!(
            escape_html(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape_html("plain — text"), "plain — text");
    }

    #[test]
    fn labels_wrap_at_spaces() {
        assert_eq!(wrap("a bb ccc dddd", 6), vec!["a bb", "ccc", "dddd"]);
        assert_eq!(wrap("", 6), vec![""]);
        assert_eq!(wrap("unbreakable-word x", 4), vec!["unbreakable-word", "x"]);
    }

    #[test]
    fn values_are_formatted_in_their_unit() {
        assert_eq!(format_value(0.4234, UNIT_SHARE), "42.3%");
        assert_eq!(format_value(1234.4, UNIT_PERSONS), "1,234");
        assert_eq!(format_value(-1234567.0, UNIT_PERSON_DAYS), "-1,234,567");
        assert_eq!(format_value(-0.001, UNIT_PER_PERSON), "0.00");
        assert_eq!(format_value(12.345, UNIT_DAYS), "12.3");
        assert_eq!(format_value(f64::NAN, UNIT_DAYS), "n/a");
        assert_eq!(format_epsilon(0.75), "0.75");
        assert_eq!(format_epsilon(1.0), "1");
        assert_eq!(format_epsilon(1.0 / 3.0), "0.333");
    }

    #[test]
    fn nice_scales_cover_the_data() {
        for (lo, hi) in [(0.0, 0.87), (0.0, 1.0), (0.13, 0.61), (0.0, 118.0), (-0.4, 0.2), (3.0, 3.0), (0.0, 0.0)] {
            let (min, max, step) = nice_scale(lo, hi);
            assert!(min <= lo && max >= hi && step > 0.0 && max > min, "{lo} {hi}: {min} {max} {step}");
            assert!(ticks(min, max, step).len() <= 12, "{lo} {hi}");
        }
        assert_eq!(tick_label(0.2, 0.2, true), "20%");
        assert_eq!(tick_label(0.25, 0.05, false), "0.25");
        assert_eq!(tick_label(40.0, 20.0, false), "40");
    }

    #[test]
    fn windows_and_keys_read_back_from_the_canonical_query() {
        let q = Query::parse(
            r#"{"outcome":{"type":"count","kind":"arrest","where":{"warrant":false},"window":[0,181]},"statistic":{"type":"difference","baseline":[-182,-1]},"cohort":{"sex":["f"]},"group_by":["arm"],"epsilon":1}"#,
        )
        .unwrap();
        let s = spec_of(&q.canonical());
        assert_eq!((s.window, s.baseline, s.non_warrant), (Some((0, 181)), Some((-182, -1)), true));
        assert_eq!(
            row_key("arrests_before_after", "mean_difference", None, &s),
            "arrests_before_after.mean_difference[0,181]-[-182,-1]!warrant|sex=f"
        );
        let g: BTreeMap<String, String> = [("arm".to_string(), "diversion".to_string())].into();
        assert_eq!(arm_of(&g, &s), None, "a sex filter is not a whole arm");
        assert_eq!(spec_of("not json").window, None);
    }
}
