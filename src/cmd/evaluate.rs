//! `divert evaluate`: run an evaluation plan against the steward in one command — check that the budget covers the whole plan, release every statistic (or replay what was released before), write the report.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::evaluator::{Client, EvaluatorConfig};
use crate::query::engine::Answer;
use crate::query::evaluation::{self, EvaluationPlan, PlannedEvaluation, PlannedStep, PERSONS};
use crate::report::{self, BudgetLine, ReportInput, ReportRow, Spending};
use crate::synth::truth::TrueStatistics;
use crate::wire::{BudgetView, PlanResponse, QueryRequest, QueryResponse, PLAN_PATH, QUERY_PATH};

/// Arguments of `divert evaluate`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Run an evaluation plan against the steward and write the report.\n\n\
The plan (config/evaluation.toml is the standard evaluation) lists the analyses, headline first, \
and how the budget is shared among them. The steward plans it (no data read, nothing spent); if \
the budget left does not cover every statistic not yet released, nothing is spent and the command \
says how much is missing. Otherwise every statistic is released (shared denominators first) and \
the report is printed and written as one self-contained HTML file: the headline in plain words \
first, then every other statistic with its 95% interval, then where each epsilon went.\n\n\
Run again, it replays the stored answers at no cost (asking the same query again is free).\n\
`divert query --plan` shows what a plan buys before running it.\n\n\
Example:\n  divert evaluate --config unm.toml --plan config/evaluation.toml --out report.html")]
pub struct EvaluateArgs {
    /// The evaluator's config file (see `divert query --help`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The evaluation plan (TOML; see config/evaluation.toml and docs/queries.md).
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
    /// Where to write the HTML report.
    #[arg(long, value_name = "FILE", default_value = "report.html")]
    pub out: PathBuf,
    /// The program's name, for the report's title.
    #[arg(long, default_value = "evaluation")]
    pub program: String,
}

/// Read an evaluation plan from a TOML file.
pub fn read_plan(path: &Path) -> anyhow::Result<EvaluationPlan> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    evaluation::parse_toml(&text).with_context(|| format!("{}", path.display()))
}

/// The message of a refused request.
fn refused(status: u16, body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {status}"))
}

/// Ask the steward to plan `plan` for this evaluator: no data read, nothing spent.
pub fn plan_at_steward(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    plan: &EvaluationPlan,
) -> anyhow::Result<PlanResponse> {
    let reply = rt.block_on(client.request("POST", PLAN_PATH, Some(serde_json::to_vec(plan)?)))?;
    if reply.status != 200 {
        bail!("the steward refused the plan: {}", refused(reply.status, &reply.body));
    }
    serde_json::from_slice(&reply.body).context("the steward's plan has an unexpected shape")
}

/// What running a plan gave.
#[derive(Debug)]
pub struct Evaluated {
    pub planned: PlannedEvaluation,
    /// Each step with its answer and whether it was released by an earlier run.
    pub answers: Vec<(PlannedStep, Answer, bool)>,
    pub budget: BudgetView,
    /// The steward's responses, byte for byte, one per line.
    pub received: Vec<u8>,
}

/// Run a plan: refuse before spending anything if the budget left does not
/// cover what is not yet released; then release every step in order.
pub fn run_plan(rt: &tokio::runtime::Runtime, client: &Client, plan: &EvaluationPlan) -> anyhow::Result<Evaluated> {
    let PlanResponse { evaluation: planned, budget } = plan_at_steward(rt, client, plan)?;
    if planned.epsilon_needed > budget.left + 1e-9 {
        bail!(
            "the plan needs {} ε for the statistics not yet released, and {} ε is left of this evaluator's budget: \
             nothing was spent. Ask the steward's operator for more (divert budget grant), or lower the plan's \
             `epsilon` (divert query --plan shows what it buys)",
            planned.epsilon_needed,
            budget.left
        );
    }
    let mut answers = Vec::new();
    let mut received = Vec::new();
    let mut last = budget;
    for step in &planned.steps {
        let request = QueryRequest {
            analysis: None,
            params: BTreeMap::new(),
            query: Some(step.query.clone()),
            epsilon: None,
            dry_run: false,
        };
        let reply = rt.block_on(client.request("POST", QUERY_PATH, Some(serde_json::to_vec(&request)?)))?;
        if reply.status != 200 {
            bail!("releasing {} was refused: {}", step.analysis, refused(reply.status, &reply.body));
        }
        received.extend_from_slice(&reply.body);
        received.push(b'\n');
        let resp: QueryResponse = serde_json::from_slice(&reply.body).context("reading an answer")?;
        let answer = resp.answer.context("the steward's response holds no answer")?;
        last = resp.budget;
        answers.push((step.clone(), answer, resp.cached));
    }
    Ok(Evaluated { planned, answers, budget: last, received })
}

/// A step in words, for the table of where each epsilon went.
fn step_words(step: &PlannedStep, rows: &[ReportRow], answer: &Answer) -> String {
    // The label of its main value; else (a histogram) the label before the bin's name.
    let main = answer.values.iter().zip(rows).find(|(c, _)| evaluation::is_main(c)).map(|(_, r)| r.label.clone());
    let label = main.unwrap_or_else(|| {
        let first = rows.first().map_or_else(|| step.analysis.clone(), |r| r.label.clone());
        first.split(": ").next().unwrap_or(&first).to_string()
    });
    if step.analysis == PERSONS {
        format!("{label}, by arm")
    } else {
        label
    }
}

/// The report of an evaluation: rows (with true values when `truth` is given, synthetic data only), spending, budget.
pub fn report_input(program: &str, ev: &Evaluated, truth: Option<&TrueStatistics>) -> ReportInput {
    let mut rows = Vec::new();
    let mut spending = Vec::new();
    for (step, answer, cached) in &ev.answers {
        let mut these = report::rows_from_answer(&step.analysis, answer, truth);
        for r in &mut these {
            r.headline = step.headline;
        }
        spending.push(Spending { what: step_words(step, &these, answer), epsilon: step.epsilon, earlier: *cached });
        rows.extend(these);
    }
    ReportInput {
        program: program.to_string(),
        generated: crate::days::now_text(),
        rows,
        linkage: None,
        budget: Some(BudgetLine { granted: ev.budget.total, spent: ev.budget.spent, left: ev.budget.left }),
        synthetic: truth.is_some(),
        title: ev.planned.title.clone(),
        spending,
        split_rate: None,
        clamps: Vec::new(),
    }
}

pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    let config = EvaluatorConfig::load(&args.config).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {}: {p}", args.config.display())).collect();
        anyhow::anyhow!("{} has {} problem(s):\n{}", args.config.display(), problems.len(), lines.join("\n"))
    })?;
    let plan = read_plan(&args.plan)?;
    let client = Client::new(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ev = run_plan(&rt, &client, &plan)?;
    let input = report_input(&args.program, &ev, None);
    print!("{}", report::render_text(&input));
    fs::write(&args.out, report::render_html(&input)).with_context(|| format!("writing {}", args.out.display()))?;
    let spent: f64 = ev.answers.iter().filter(|(_, _, cached)| !cached).map(|(s, _, _)| s.epsilon).sum();
    println!();
    println!(
        "report: {} ({} statistics; {} ε spent now, {} ε left)",
        args.out.display(),
        ev.answers.len(),
        report::format_epsilon(spent),
        ev.budget.left
    );
    Ok(())
}
