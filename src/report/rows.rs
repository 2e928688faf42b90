//! Rows from an answer: what each released value measures (label, unit, key) and, for synthetic data, its true value.

use super::*;

/// What an answer's query measured, read back from its canonical form.
#[derive(Debug, Clone, Default)]
pub(super) struct Spec {
    pub(super) window: Option<(i32, i32)>,
    pub(super) baseline: Option<(i32, i32)>,
    pub(super) month: Option<u32>,
    pub(super) day: Option<i32>,
    /// Status values (sorted), e.g. `["permanent"]`.
    pub(super) values: Vec<String>,
    /// The outcome counts only events whose `warrant` flag is false.
    pub(super) non_warrant: bool,
    /// Funnel: an intake within this many days is timely.
    pub(super) within_days: Option<i32>,
    pub(super) per_days: Option<u32>,
    /// Cohort filters on public categories, in category order.
    pub(super) cohort: Vec<(String, Vec<String>)>,
    /// The cohort requires events (e.g. an intake).
    pub(super) require: bool,
}

pub(super) fn is_false_flag(m: Option<&Match>) -> bool {
    match m {
        Some(Match::One(Scalar::Bool(false))) => true,
        Some(Match::Any(list)) => list.as_slice() == [Scalar::Bool(false)],
        _ => false,
    }
}

pub(super) fn spec_of(canonical: &str) -> Spec {
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
pub(super) fn qualifier(s: &Spec) -> String {
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

pub(super) fn row_key(analysis: &str, statistic: &str, category: Option<&str>, s: &Spec) -> String {
    let cat = category.map(|c| format!(":{c}")).unwrap_or_default();
    format!("{analysis}.{statistic}{cat}{}", qualifier(s))
}

/// A window in words.
pub(super) fn describe_window(w: Option<(i32, i32)>) -> String {
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
pub(super) fn versus(s: &Spec) -> String {
    match (s.window, s.baseline) {
        (Some((0, 181)), Some((-182, -1))) => "6 months after vs 6 months before referral".into(),
        (Some((0, 364)), Some((-365, -1))) => "year after vs year before referral".into(),
        (w, b) => format!("{} vs {}", describe_window(w), describe_window(b)),
    }
}

pub(super) fn describe_month(s: &Spec) -> String {
    match (s.month, s.day) {
        (Some(0), _) => "at intake".into(),
        (Some(1), _) => "1 month after intake".into(),
        (Some(m), _) => format!("{m} months after intake"),
        (None, Some(d)) => format!("on day {d} after referral"),
        (None, None) => "time not stated".into(),
    }
}

pub(super) fn housing_phrase(value: &str) -> String {
    match value {
        "street" => "on the street".into(),
        "shelter" => "in a shelter".into(),
        "transitional" => "in transitional housing".into(),
        "permanent" => "in permanent housing".into(),
        "missing" => "with housing not recorded".into(),
        other => format!("with housing {}", other.replace('_', " ")),
    }
}

pub(super) fn housing_values_phrase(values: &[String]) -> String {
    let v: Vec<&str> = values.iter().map(String::as_str).collect();
    match v.as_slice() {
        ["permanent", "shelter", "transitional"] => "sheltered (not on the street)".into(),
        [one] => housing_phrase(one),
        _ => format!("with housing {}", values.join(" or ")),
    }
}

pub(super) fn funnel_stage_phrase(stage: &str, within: i32) -> String {
    match stage {
        "ineligible" => "ineligible".into(),
        "declined" => "declined".into(),
        "no_timely_intake" => format!("no intake within {within} days"),
        "enrolled" => format!("enrolled (intake within {within} days)"),
        other => other.replace('_', " "),
    }
}

/// The description of an analysis's main value and its unit; `None` for an analysis this module does not know.
pub(super) fn describe(analysis: &str, s: &Spec) -> Option<(String, &'static str)> {
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
pub(super) fn label_of(analysis: &str, s: &Spec, cell: &Cell) -> (String, String) {
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

pub(super) fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

pub(super) fn with_category(label: &str, category: Option<&str>) -> String {
    match category {
        Some(c) => format!("{label} {}", c.replace('_', " ")),
        None => label.to_string(),
    }
}

/// The arm a cell is about, when it is exactly one whole arm (see the module doc).
pub(super) fn arm_of<'a>(group: &'a BTreeMap<String, String>, s: &'a Spec) -> Option<&'a str> {
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

pub(super) fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

pub(super) fn status_at(t: &ArmStatistics, month: Option<u32>) -> Option<&StatusAt> {
    let m = month?;
    t.status.iter().find(|s| s.month == m)
}

pub(super) fn diff(after: Option<f64>, before: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// The true value of a cell of `analysis` for one arm's statistics, when `TrueStatistics` has that very statistic.
pub(super) fn truth_of(analysis: &str, s: &Spec, cell: &Cell, t: &ArmStatistics) -> Option<f64> {
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
