//! `divert query`: the evaluator asks the steward for a differentially private answer (a catalog analysis or a query file), or looks at the catalog, its budget and its past releases.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::evaluator::{Client, EvaluatorConfig};
use crate::query::engine::Answer;
use crate::query::evaluation;
use crate::wire::{PlanResponse, QueryRequest, QueryResponse, BUDGET_PATH, CATALOG_PATH, QUERY_PATH, RELEASES_PATH};

/// Arguments of `divert query`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Ask the steward a question, as an evaluator, over mutual TLS.\n\n\
Every answer is a set of noisy aggregates released under differential privacy: each value comes \
with its 95% interval (the range that holds the true value 19 times in 20, given the noise) and \
the epsilon it cost. Asking the same query again returns the same stored answer at no cost; \
--dry-run shows the intervals an epsilon would give without spending anything.\n\n\
The config names the evaluator's certificate and the steward:\n\
  role = \"evaluator\"\n  name = \"unm\"\n  program = \"demo-program\"\n  steward_url = \"https://localhost:7443\"\n\
  [tls]\n  cert = \"tls/cert.pem\"\n  key = \"tls/key.pem\"\n  ca = \"tls/ca.pem\"\n  crl = \"tls/crl.pem\"\n\n\
Examples:\n  divert query --config unm.toml --catalog\n  divert query --config unm.toml --analysis arrests_before_after --param window_days=182\n\
  divert query --config unm.toml --analysis any_arrest --epsilon 0.5 --dry-run\n  divert query --config unm.toml my-query.json --json\n  divert query --config unm.toml --budget\n\
  divert query --config unm.toml --plan config/evaluation.toml\n\n\
--plan FILE plans a whole evaluation (config/evaluation.toml is the standard one): the epsilon of \
each analysis and the 95% intervals expected at the plan's assumed cohort sizes, from the noise \
distributions only. Nothing is read from the data and nothing is spent; `divert evaluate` runs it.")]
pub struct QueryArgs {
    /// The evaluator's config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// A named analysis of the catalog (see --catalog).
    #[arg(long, value_name = "NAME", conflicts_with = "file")]
    pub analysis: Option<String>,
    /// A parameter of the analysis, as NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", requires = "analysis")]
    pub params: Vec<String>,
    /// A query in full, as a JSON file (see docs/queries.md).
    #[arg(value_name = "QUERY.json")]
    pub file: Option<PathBuf>,
    /// Epsilon to spend (overrides the analysis's or the file's): a decimal
    /// such as 0.5, more than 0 and at most 10, in whole millionths.
    #[arg(long, value_parser = epsilon_arg)]
    pub epsilon: Option<f64>,
    /// Show the 95% intervals this epsilon would give; no data is touched, no budget spent.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the steward's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// List the catalog's analyses and their parameters.
    #[arg(long, conflicts_with_all = ["analysis", "file", "budget", "releases"])]
    pub catalog: bool,
    /// Show this evaluator's budget.
    #[arg(long, conflicts_with_all = ["analysis", "file", "releases"])]
    pub budget: bool,
    /// List this evaluator's past releases.
    #[arg(long, conflicts_with_all = ["analysis", "file"])]
    pub releases: bool,
    /// Plan an evaluation (TOML, e.g. config/evaluation.toml): epsilon and expected 95% intervals per analysis; spends nothing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["analysis", "file", "catalog", "budget", "releases", "dry_run", "epsilon"])]
    pub plan: Option<PathBuf>,
}

pub fn run(args: QueryArgs) -> anyhow::Result<()> {
    let config = EvaluatorConfig::load(&args.config).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {}: {p}", args.config.display())).collect();
        anyhow::anyhow!("{} has {} problem(s):\n{}", args.config.display(), problems.len(), lines.join("\n"))
    })?;
    let client = Client::new(config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Some(plan_file) = &args.plan {
        let plan = super::evaluate::read_plan(plan_file)?;
        let resp = super::evaluate::plan_at_steward(&rt, &client, &plan)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&resp)?);
        } else {
            print_plan(&resp);
        }
        return Ok(());
    }
    let (method, path, body) = if args.catalog {
        ("GET", CATALOG_PATH, None)
    } else if args.budget {
        ("GET", BUDGET_PATH, None)
    } else if args.releases {
        ("GET", RELEASES_PATH, None)
    } else {
        let request = build_request(&args)?;
        ("POST", QUERY_PATH, Some(serde_json::to_vec(&request)?))
    };
    let reply = rt.block_on(client.request(method, path, body))?;
    if reply.status != 200 {
        let msg = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {}", reply.status));
        bail!("the steward refused: {msg}");
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(&reply.body));
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_slice(&reply.body).context("the steward's answer is not JSON")?;
    if args.catalog {
        print_catalog(&value);
    } else if args.budget {
        println!("budget: total {} ε, spent {} ε, left {} ε", value["total"], value["spent"], value["left"]);
    } else if args.releases {
        for r in value.as_array().into_iter().flatten() {
            println!(
                "{}  ε {}  {}",
                r["time"].as_str().unwrap_or(""),
                r["epsilon"],
                r["canonical"].as_str().unwrap_or("")
            );
        }
    } else {
        let resp: QueryResponse =
            serde_json::from_value(value).context("the steward's answer has an unexpected shape")?;
        print_response(&resp);
    }
    Ok(())
}

/// `--epsilon`: refused unless an exact decimal in (0, MAX_EPSILON]: a `NaN` or
/// `inf` must never become "no epsilon given" (JSON has no NaN, so it would
/// be sent as null and the default spent).
fn epsilon_arg(s: &str) -> Result<f64, crate::dp::ledger::EpsilonError> {
    crate::dp::ledger::parse_query_epsilon(s)
}

fn build_request(args: &QueryArgs) -> anyhow::Result<QueryRequest> {
    let mut params = BTreeMap::new();
    for p in &args.params {
        let (k, v) = p.split_once('=').with_context(|| format!("--param {p}: write NAME=VALUE"))?;
        params.insert(k.trim().to_string(), v.trim().to_string());
    }
    let query = match (&args.analysis, &args.file) {
        (Some(_), _) => None,
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            Some(crate::query::Query::parse(&text).with_context(|| format!("{}", f.display()))?)
        }
        (None, None) => bail!("name an --analysis (see --catalog) or give a QUERY.json file"),
    };
    Ok(QueryRequest { analysis: args.analysis.clone(), params, query, epsilon: args.epsilon, dry_run: args.dry_run })
}

fn print_catalog(value: &serde_json::Value) {
    for a in value.as_array().into_iter().flatten() {
        println!("{}  (statistic {})", a["name"].as_str().unwrap_or(""), a["statistic"]);
        println!("    {}", a["description"].as_str().unwrap_or(""));
        for p in a["parameters"].as_array().into_iter().flatten() {
            println!(
                "    --param {}={}   {}",
                p["name"].as_str().unwrap_or(""),
                p["default"].as_str().unwrap_or(""),
                p["description"].as_str().unwrap_or("")
            );
        }
    }
}

fn group_label(g: &BTreeMap<String, String>) -> String {
    if g.is_empty() {
        "all".into()
    } else {
        g.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }
}

fn print_answer(a: &Answer) {
    println!("{:<32} {:<18} {:>12} {:>27} {:>8}", "group", "statistic", "value", "95% interval", "epsilon");
    for c in &a.values {
        let stat = match &c.category {
            Some(cat) => format!("{} {cat}", c.statistic),
            None => c.statistic.clone(),
        };
        println!(
            "{:<32} {:<18} {:>12.4} {:>27} {:>8}",
            group_label(&c.group),
            stat,
            c.value,
            format!("[{:.4}, {:.4}]", c.ci95.0, c.ci95.1),
            format!("{:.3}", c.epsilon)
        );
    }
    if let Some([lo, hi]) = a.bounds {
        println!("each person's value clamped to [{lo}, {hi}]");
    }
}

fn print_plan(r: &PlanResponse) {
    let ev = &r.evaluation;
    println!("plan: {} (nothing read from the data, nothing spent)", ev.title);
    for s in &ev.steps {
        let params: Vec<String> = s.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut flags = Vec::new();
        if s.headline {
            flags.push("headline".to_string());
        }
        if s.persons_hash.is_some() {
            flags.push("divides by the shared persons".to_string());
        }
        if s.released {
            flags.push("released: replayed at no cost".to_string());
        }
        let flags = if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join("; ")) };
        println!("\n{} {}  ε {}{flags}", s.analysis, params.join(" "), s.epsilon);
        if let (Some([lo, hi]), Some(reason)) = (s.bounds, &s.bounds_reason) {
            println!("    clamp [{lo}, {hi}]: {reason}");
        }
        let shown = |c: &&crate::query::Cell| {
            evaluation::is_main(c)
                || s.analysis == evaluation::PERSONS
                || (c.statistic == "share" && c.category.is_some())
        };
        for c in s.expected.iter().filter(shown) {
            let stat = match &c.category {
                Some(cat) => format!("{} {cat}", c.statistic),
                None => c.statistic.clone(),
            };
            println!(
                "    {:<32} {:<26} expected ± {:.4}  (at {:.4}: [{:.4}, {:.4}])",
                group_label(&c.group),
                stat,
                (c.ci95.1 - c.ci95.0) / 2.0,
                c.value,
                c.ci95.0,
                c.ci95.1
            );
        }
    }
    println!(
        "\nplanned: {} ε of {}; not yet released: {} ε; budget: {} of {} left",
        ev.epsilon_planned, ev.epsilon, ev.epsilon_needed, r.budget.left, r.budget.total
    );
}

fn print_response(r: &QueryResponse) {
    if let Some(d) = &r.dry_run {
        println!("dry run (no data touched, no budget spent): epsilon {}", d.epsilon);
        for rel in &d.releases {
            println!(
                "  release {:<6} {} value(s): sensitivity {}, epsilon {:.4}, noise scale {:.3}, 95% interval ± {:.2}",
                rel.name, rel.values, rel.sensitivity, rel.epsilon, rel.noise_scale, rel.ci95_half_width
            );
        }
        if let Some([lo, hi]) = d.bounds {
            println!("  each person's value clamped to [{lo}, {hi}]");
        }
    }
    if let Some(n) = r.epsilon_needed {
        println!("  this request would spend {n} ε now (with its shared denominator if not yet released)");
    }
    if let Some(a) = &r.answer {
        print_answer(a);
    }
    let cached = if r.cached { " (the stored answer to this query: nothing spent)" } else { "" };
    println!("epsilon spent: {}{cached}; budget: {} of {} left", r.epsilon_spent, r.budget.left, r.budget.total);
    if let Some(receipt) = &r.audit {
        println!(
            "audit receipt: {receipt}\n  (keep it: `divert audit verify --expect {receipt}` on the steward's log shows \
             it was not cut short or rewritten since)"
        );
    }
}
