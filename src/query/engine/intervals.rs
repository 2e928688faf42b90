//! Post-processing released totals into values and their 95% intervals: counts, shares, means, rates, the shared denominator and the difference in differences.

use super::*;

/// A noisy input of a value, with its half-width at the value's share of α.
pub(super) struct In<'a> {
    pub(super) name: &'a str,
    pub(super) r: &'a Release,
    pub(super) hw: f64,
}

impl In<'_> {
    pub(super) fn v(&self) -> f64 {
        self.r.value as f64
    }
    pub(super) fn lo(&self) -> f64 {
        self.v() - self.hw
    }
    pub(super) fn hi(&self) -> f64 {
        self.v() + self.hw
    }
}

/// The inputs of a value computed from `k` releases: each at α = 0.05/k.
pub(super) fn inputs<'a>(list: &[(&'a str, &'a Release)]) -> Result<Vec<In<'a>>, QueryError> {
    let k = list.len().max(1) as f64;
    list.iter()
        .map(|&(name, r)| {
            let hw =
                if list.len() == 1 { r.ci95_half_width } else { dp::half_width(r.scale, dp::mechanism::ALPHA_95 / k)? };
            Ok(In { name, r, hw })
        })
        .collect()
}

pub(super) fn cell(
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
pub(super) fn count_cell(
    group: &BTreeMap<String, String>,
    statistic: &str,
    category: Option<&str>,
    ins: &[In<'_>],
) -> Cell {
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
pub(super) fn share_cell(group: &BTreeMap<String, String>, category: Option<&str>, ins: &[In<'_>]) -> Cell {
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
pub(super) fn mean_cell(
    group: &BTreeMap<String, String>,
    statistic: &str,
    bounds: [i64; 2],
    scale: f64,
    ins: &[In<'_>],
) -> Cell {
    let (value, lo, hi) = mean_range(bounds, &ins[0], &ins[1]);
    cell(group, statistic, None, value * scale, (lo * scale, hi * scale), ins)
}

/// (value, low, high) of the mean S / N of a noisy sum and count, clamped to the bounds, over the box of their intervals.
pub(super) fn mean_range(bounds: [i64; 2], s: &In<'_>, n: &In<'_>) -> (f64, f64, f64) {
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
pub(super) fn did_cell(
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
pub(super) fn cells(
    plan: &Plan,
    released: &[Vec<Release>],
    census: Option<&[Release]>,
) -> Result<Vec<Cell>, QueryError> {
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
