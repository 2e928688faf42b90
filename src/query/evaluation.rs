//! An evaluation as a plan: the analyses an evaluator wants (headline first), how the budget is shared among them, and the intervals that buys — from the noise distributions only.
//!
//! A plan (`config/evaluation.toml` is the standard one) lists catalog
//! analyses, each with a priority `weight`, a `target` 95% half-width, or a
//! fixed `epsilon`, and the cohort sizes to plan for (`[assume]`). `plan`
//! turns it into the exact queries to ask, in order:
//!
//! 1. the **shared denominators**: for every distinct cohort and grouping of
//!    the analyses that can divide by one (means, differences, rates and
//!    shares of outcomes every person has), one census of its persons at
//!    `persons_epsilon`, released once and reused by all of them;
//! 2. the analyses with a fixed `epsilon`;
//! 3. the analyses with a `target`: the least epsilon (in whole
//!    micro-epsilon) whose expected half-width meets it;
//! 4. what is left, shared among the weighted analyses in proportion to
//!    their weights (rounded down to whole micro-epsilon).
//!
//! The expected interval of a value is the one the engine computes when every
//! noisy release comes out at its expected value (`Plan::expected`): the
//! assumed persons per group and the assumed per-person value, and each
//! release's noise scale. It never reads data, draws noise or spends budget;
//! the released intervals differ from it only through the noisy values
//! themselves (the noise scales are the same).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::catalog;
use super::engine::{self, Cell, PlannedRelease, DID};
use super::model::{Category, Query};
use super::QueryError;
use crate::schema::Schema;

/// Name of the census steps (the shared denominators) in a planned evaluation and a report.
pub const PERSONS: &str = "persons";

/// An evaluation plan, as written in `config/evaluation.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationPlan {
    /// What the evaluation is, for the report.
    #[serde(default)]
    pub title: String,
    /// The epsilon the whole plan may spend.
    pub epsilon: f64,
    /// Epsilon of each shared denominator (one census per distinct cohort and
    /// grouping); 0 or absent: every analysis releases its own count.
    #[serde(default)]
    pub persons_epsilon: f64,
    /// What to plan for (never read from the data).
    pub assume: Assume,
    /// The analyses, headline first.
    #[serde(rename = "analysis")]
    pub analyses: Vec<PlanEntry>,
}

/// The sizes a plan is made for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assume {
    /// Persons referred per arm, e.g. `{ diversion = 170, comparison = 130 }`.
    pub persons: BTreeMap<String, f64>,
}

/// One analysis of a plan. Give at most one of `weight`, `target`, `epsilon` (none: weight 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanEntry {
    /// The catalog analysis (`divert query --catalog`).
    pub analysis: String,
    /// Its parameters, as in `--param NAME=VALUE`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The statistic the evaluation leads with (the report puts it first).
    #[serde(default)]
    pub headline: bool,
    /// Priority: its share of the budget the fixed and targeted analyses leave.
    #[serde(default)]
    pub weight: Option<f64>,
    /// The widest 95% half-width wanted for its main values (per group and, for a change by arm, between arms).
    #[serde(default)]
    pub target: Option<f64>,
    /// A fixed epsilon.
    #[serde(default)]
    pub epsilon: Option<f64>,
    /// The per-person value to plan for (a mean, a change, a share); default 0 for a change, 0.5 for a share, else the middle of the clamp.
    #[serde(default)]
    pub assume: Option<f64>,
    /// The share of each arm's persons in this analysis's values (statuses and timing cover fewer persons); default 1.
    #[serde(default)]
    pub assume_share_of_persons: Option<f64>,
    /// Release its own count even where it could divide by the shared census.
    #[serde(default)]
    pub own_count: bool,
    /// Why its clamp is what it is (shown by the planner, kept with the plan).
    #[serde(default)]
    pub bounds_reason: Option<String>,
}

/// One query of a planned evaluation, with what it is expected to give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// The catalog analysis, or [`PERSONS`] for a shared denominator.
    pub analysis: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub headline: bool,
    /// The query in full, as it is sent.
    pub query: Query,
    pub query_hash: String,
    /// The epsilon it spends when released (nothing when asked again).
    pub epsilon: f64,
    /// The census it divides by, if any (`query_hash` of a [`PERSONS`] step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persons_hash: Option<String>,
    #[serde(default)]
    pub bounds: Option<[i64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds_reason: Option<String>,
    pub releases: Vec<PlannedRelease>,
    /// The values expected at the assumed sizes, with their intervals.
    pub expected: Vec<Cell>,
    /// Already released to this evaluator (asking again costs nothing). Filled in by the steward.
    #[serde(default)]
    pub released: bool,
}

/// A plan turned into queries: what each costs and is expected to give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedEvaluation {
    pub title: String,
    /// The budget the plan was made for.
    pub epsilon: f64,
    /// What all its steps spend together (at most `epsilon`).
    pub epsilon_planned: f64,
    /// What releasing the steps not yet released would spend now. Filled in by the steward.
    #[serde(default)]
    pub epsilon_needed: f64,
    /// Shared denominators first, then the analyses in the plan's order.
    pub steps: Vec<PlannedStep>,
}

const MICRO: f64 = 1e6;

fn micro(e: f64) -> u64 {
    (e * MICRO).round() as u64
}

/// An error about one entry: names the analysis only when the catalog has it (never echoes what a request carried).
fn plan_err(entry: &str, reason: impl Into<String>) -> QueryError {
    let name = if catalog::find(entry).is_ok() { format!("analysis `{entry}`") } else { "an unknown analysis".into() };
    QueryError::Plan(format!("{name}: {}", reason.into()))
}

/// The main values of an answer: those a target and the headline are about.
pub fn is_main(cell: &Cell) -> bool {
    match cell.statistic.as_str() {
        "mean" | "mean_difference" | "rate" | DID => true,
        "share" => cell.category.is_none(),
        _ => false,
    }
}

/// The widest 95% half-width among the main values of an answer (0 when it has none).
pub fn widest_main(cells: &[Cell]) -> f64 {
    cells.iter().filter(|c| is_main(c)).map(|c| (c.ci95.1 - c.ci95.0) / 2.0).fold(0.0, f64::max)
}

/// An entry's query at `epsilon` (with the shared census when it takes one).
fn query_of(entry: &PlanEntry, plan: &EvaluationPlan, epsilon: f64) -> Result<Query, QueryError> {
    let analysis = catalog::find(&entry.analysis)?;
    let mut query = analysis.instantiate(&entry.params)?;
    query.epsilon = epsilon;
    if plan.persons_epsilon > 0.0 && !entry.own_count && query.can_share_persons() && query.persons.is_none() {
        query.persons = Some(super::model::SharedPersons { epsilon: plan.persons_epsilon });
    }
    Ok(query)
}

/// A step for `query`, with its expected values at the plan's assumed sizes.
fn step(
    entry: Option<&PlanEntry>,
    plan: &EvaluationPlan,
    query: Query,
    schema: &Schema,
) -> Result<PlannedStep, QueryError> {
    let p = engine::plan(&query, schema)?;
    let share = entry.and_then(|e| e.assume_share_of_persons).unwrap_or(1.0);
    let arms_in_grouping = query.group_by.contains(&Category::Arm);
    let groups = p.groups().max(1) as f64;
    let allowed_arms: Vec<&String> =
        plan.assume.persons.keys().filter(|a| query.cohort.arm.as_ref().map_or(true, |l| l.contains(a))).collect();
    let arm_groups = if arms_in_grouping { allowed_arms.len().max(1) as f64 } else { 1.0 };
    let persons = |group: &BTreeMap<String, String>| -> f64 {
        let base: f64 = match group.get(Category::Arm.as_str()) {
            Some(arm) => plan.assume.persons.get(arm).copied().unwrap_or(0.0),
            None => allowed_arms.iter().filter_map(|a| plan.assume.persons.get(*a)).sum(),
        };
        base * share / (groups / arm_groups)
    };
    let assumed = entry.and_then(|e| e.assume).unwrap_or_else(|| match (&query.statistic, p.bounds()) {
        (super::model::Statistic::Difference { .. }, _) => 0.0,
        (_, Some([lo, hi])) => (lo + hi) as f64 / 2.0,
        _ => 0.5,
    });
    let expected = p.expected(&persons, assumed)?;
    Ok(PlannedStep {
        analysis: entry.map_or_else(|| PERSONS.to_string(), |e| e.analysis.clone()),
        params: entry.map(|e| e.params.clone()).unwrap_or_default(),
        headline: entry.is_some_and(|e| e.headline),
        query_hash: p.hash().to_string(),
        epsilon: query.epsilon,
        persons_hash: p.census().map(|c| c.hash().to_string()),
        bounds: p.bounds(),
        bounds_reason: entry.and_then(|e| e.bounds_reason.clone()),
        releases: p.releases().to_vec(),
        expected: expected.values,
        query,
        released: false,
    })
}

/// Turn a plan into its queries, epsilons and expected intervals. Touches no data.
pub fn plan(plan: &EvaluationPlan, schema: &Schema) -> Result<PlannedEvaluation, QueryError> {
    let total = micro(plan.epsilon);
    if !(plan.epsilon.is_finite() && plan.epsilon > 0.0) {
        return Err(QueryError::Plan(format!("`epsilon` must be a positive number, got {}", plan.epsilon)));
    }
    if !(plan.persons_epsilon.is_finite() && plan.persons_epsilon >= 0.0) {
        return Err(QueryError::Plan("`persons_epsilon` must be 0 (no shared denominator) or positive".into()));
    }
    if plan.analyses.is_empty() {
        return Err(QueryError::Plan("the plan lists no analysis: add [[analysis]] tables".into()));
    }
    for e in &plan.analyses {
        let given = [e.weight.is_some(), e.target.is_some(), e.epsilon.is_some()].iter().filter(|&&b| b).count();
        if given > 1 {
            return Err(plan_err(&e.analysis, "give one of `weight`, `target`, `epsilon`"));
        }
        for (what, v) in [("weight", e.weight), ("target", e.target), ("epsilon", e.epsilon)] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(plan_err(&e.analysis, format!("`{what}` must be a positive number")));
            }
        }
    }

    // Shared denominators: one per distinct census, in order of first use.
    let mut censuses: Vec<Query> = Vec::new();
    for e in &plan.analyses {
        if let Some(c) = query_of(e, plan, 1.0)?.census() {
            if !censuses.iter().any(|k| k.canonical() == c.canonical()) {
                censuses.push(c);
            }
        }
    }
    let mut spent: u64 = censuses.len() as u64 * micro(plan.persons_epsilon);

    // Fixed, then targets, then weights.
    let mut eps: Vec<Option<u64>> = vec![None; plan.analyses.len()];
    for (i, e) in plan.analyses.iter().enumerate() {
        if let Some(x) = e.epsilon {
            eps[i] = Some(micro(x));
            spent += micro(x);
        }
    }
    for (i, e) in plan.analyses.iter().enumerate() {
        let Some(target) = e.target else { continue };
        let left = total.saturating_sub(spent);
        let width = |m: u64| -> Result<f64, QueryError> {
            let q = query_of(e, plan, m as f64 / MICRO)?;
            Ok(widest_main(&step(Some(e), plan, q, schema)?.expected))
        };
        if left == 0 || width(left.min(micro(crate::dp::mechanism::MAX_EPSILON)))? > target {
            return Err(plan_err(
                &e.analysis,
                format!("a 95% half-width of {target} needs more than the {} epsilon left", left as f64 / MICRO),
            ));
        }
        // The least whole micro-epsilon that meets the target (the half-width shrinks as epsilon grows).
        let (mut lo, mut hi) = (0u64, left.min(micro(crate::dp::mechanism::MAX_EPSILON)));
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if width(mid)? <= target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        eps[i] = Some(hi);
        spent += hi;
    }
    if spent > total {
        return Err(QueryError::Plan(format!(
            "the fixed epsilons, targets and shared denominators need {} epsilon, more than the plan's {}",
            spent as f64 / MICRO,
            plan.epsilon
        )));
    }
    let weights: Vec<(usize, f64)> = plan
        .analyses
        .iter()
        .enumerate()
        .filter(|(i, _)| eps[*i].is_none())
        .map(|(i, e)| (i, e.weight.unwrap_or(1.0)))
        .collect();
    let sum_w: f64 = weights.iter().map(|w| w.1).sum();
    let pool = total - spent;
    let mut given = 0u64;
    for &(i, w) in &weights {
        let m = ((pool as f64) * w / sum_w).floor() as u64;
        if m == 0 {
            return Err(plan_err(&plan.analyses[i].analysis, "no epsilon is left for it: raise the budget or drop it"));
        }
        eps[i] = Some(m);
        given += m;
    }
    // What rounding down left over: one micro-epsilon more to the first weighted analyses.
    for &(i, _) in weights.iter().take(pool.saturating_sub(given) as usize) {
        eps[i] = eps[i].map(|m| m + 1);
    }
    for &(i, _) in &weights {
        eps[i] = eps[i].map(|m| m.min(micro(crate::dp::mechanism::MAX_EPSILON)));
    }

    let mut steps = Vec::new();
    for c in censuses {
        steps.push(step(None, plan, c, schema)?);
    }
    for (i, e) in plan.analyses.iter().enumerate() {
        let m = eps[i].unwrap_or(0);
        steps.push(step(Some(e), plan, query_of(e, plan, m as f64 / MICRO)?, schema)?);
    }
    let epsilon_planned = steps.iter().map(|s| micro(s.epsilon)).sum::<u64>() as f64 / MICRO;
    Ok(PlannedEvaluation {
        title: plan.title.clone(),
        epsilon: plan.epsilon,
        epsilon_planned,
        epsilon_needed: epsilon_planned,
        steps,
    })
}

/// Read a plan from TOML (`config/evaluation.toml`).
pub fn parse_toml(text: &str) -> Result<EvaluationPlan, QueryError> {
    toml::from_str(text).map_err(|e| QueryError::Plan(e.to_string()))
}

/// The standard evaluation of a diversion program (`config/evaluation.toml`, built in).
pub const STANDARD: &str = include_str!("../../config/evaluation.toml");

/// The standard evaluation, parsed.
pub fn standard() -> Result<EvaluationPlan, QueryError> {
    parse_toml(STANDARD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::default_schema().unwrap()
    }

    #[test]
    fn the_standard_plan_spends_its_budget_headline_first_and_shares_denominators() {
        let p = standard().unwrap();
        let planned = super::plan(&p, &schema()).unwrap();
        assert!(planned.epsilon_planned <= p.epsilon + 1e-9, "{}", planned.epsilon_planned);
        assert_eq!(micro(planned.epsilon_planned), micro(p.epsilon), "the whole budget is planned");
        let analyses: Vec<&PlannedStep> = planned.steps.iter().filter(|s| s.analysis != PERSONS).collect();
        assert!(analyses[0].headline, "headline first");
        assert!(analyses.len() >= 12, "at least 12 statistics: {}", analyses.len());
        // Every step that divides by a census finds it among the steps before it.
        for (i, s) in planned.steps.iter().enumerate() {
            if let Some(h) = &s.persons_hash {
                assert!(planned.steps[..i].iter().any(|c| &c.query_hash == h && c.analysis == PERSONS));
            }
        }
        // The census is charged once, however many analyses divide by it.
        let censuses = planned.steps.iter().filter(|s| s.analysis == PERSONS).count();
        let sharing = planned.steps.iter().filter(|s| s.persons_hash.is_some()).count();
        assert!(censuses >= 1 && sharing > censuses, "{censuses} census(es), {sharing} analyses sharing");
    }

    #[test]
    fn a_target_gets_the_least_epsilon_that_meets_it() {
        let mut p = standard().unwrap();
        p.analyses.truncate(1);
        p.analyses[0].weight = None;
        p.analyses[0].epsilon = None;
        p.analyses[0].target = Some(0.3);
        let planned = super::plan(&p, &schema()).unwrap();
        let s = planned.steps.iter().find(|s| s.analysis != PERSONS).unwrap();
        assert!(widest_main(&s.expected) <= 0.3);
        // One micro-epsilon less misses it.
        let mut less = p.clone();
        less.analyses[0].target = None;
        less.analyses[0].epsilon = Some(s.epsilon - 1e-6);
        let planned = super::plan(&less, &schema()).unwrap();
        let s = planned.steps.iter().find(|s| s.analysis != PERSONS).unwrap();
        assert!(widest_main(&s.expected) > 0.3);
        // An unreachable target is refused, naming the analysis.
        p.analyses[0].target = Some(1e-6);
        let e = super::plan(&p, &schema()).unwrap_err().to_string();
        assert!(e.contains(&p.analyses[0].analysis) && e.contains("half-width"), "{e}");
    }

    #[test]
    fn plans_that_cannot_be_met_are_refused() {
        let mut p = standard().unwrap();
        p.analyses[0].epsilon = Some(p.epsilon * 2.0);
        p.analyses[0].weight = None;
        p.analyses[0].target = None;
        assert!(super::plan(&p, &schema()).unwrap_err().to_string().contains("more than"));
        let mut p = standard().unwrap();
        p.analyses[0].weight = Some(1.0);
        p.analyses[0].target = Some(1.0);
        p.analyses[0].epsilon = None;
        assert!(super::plan(&p, &schema()).unwrap_err().to_string().contains("one of"));
        assert!(parse_toml("epsilon = 1\n[assume]\npersons = {}\n[[analysis]]\nanalysis = \"x\"\nbogus = 1\n").is_err());
    }
}
