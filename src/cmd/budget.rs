//! `divert budget grant|show`: set and list evaluators' privacy budgets on the running steward, through its admin socket.

use std::path::{Path, PathBuf};

use crate::daemon::admin::{self, Request};
use crate::daemon::admin_socket_of;
use crate::dp::ledger::{format_epsilon, parse_epsilon, BudgetsView, EvaluatorBudget};

/// Arguments of `divert budget`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Set and list evaluators' privacy budgets, on the steward host, through the running \
steward's admin socket. Budgets are kept in whole micro-epsilon; the sum of all evaluators' budgets may \
not exceed the steward's `program_epsilon_cap`, and a budget is never set below what is already spent. \
Every grant is written to the audit log.\n\n\
Example:\n  divert budget grant --config /etc/divert/steward.toml --evaluator unm --epsilon 2\n  \
divert budget show --config /etc/divert/steward.toml")]
pub struct BudgetArgs {
    #[command(subcommand)]
    pub command: BudgetCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum BudgetCommand {
    /// Set an evaluator's total epsilon budget (never below what it has spent; within the program cap).
    #[command(long_about = "Set an evaluator's total privacy budget on the running steward. The \
total may be raised or lowered, but not below what the evaluator has already spent, and the sum \
of all evaluators' totals may not exceed the program cap of the steward's config. Epsilon is a \
decimal with at most 6 decimals (kept exactly, in millionths). The grant is recorded in the \
audit log.\n\n\
A first grant must name an evaluator that holds a certificate: give the program CA's directory \
with --ca to check its register (the steward host often has no CA: copy `members.json` from it, \
which holds no key), or --force when you are sure of the name.\n\n\
Examples:\n  divert budget grant --config steward.toml --evaluator university-a --epsilon 2.5 --ca /srv/divert-ca\n  \
divert budget grant --config steward.toml --evaluator university-a --epsilon 3   (raising an existing budget)")]
    Grant(GrantArgs),
    /// List every evaluator's budget: total, spent, left; and the program's cap.
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    /// The steward's config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The evaluator's certificate name.
    #[arg(long, value_name = "NAME")]
    pub evaluator: String,
    /// The evaluator's new total budget, e.g. 1 or 0.5.
    #[arg(long, value_name = "E")]
    pub epsilon: String,
    /// The program CA's directory: check that a valid evaluator certificate
    /// with this name was issued (its register, `members.json`).
    #[arg(long, value_name = "DIR")]
    pub ca: Option<PathBuf>,
    /// Grant to a name the steward cannot check (no budget yet and no --ca):
    /// a typo would otherwise set aside budget that nobody can use.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The steward's config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print JSON for scripts (amounts in micro-epsilon).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BudgetArgs) -> anyhow::Result<()> {
    match args.command {
        BudgetCommand::Grant(a) => grant(a),
        BudgetCommand::Show(a) => show(a),
    }
}

fn grant(args: GrantArgs) -> anyhow::Result<()> {
    crate::pki::validate_name(&args.evaluator)?;
    let epsilon_micro = parse_epsilon(&args.epsilon)?;
    let (_, socket) = admin_socket_of(&args.config)?;
    check_evaluator_known(&socket, &args)?;
    let result = ask(&socket, &Request::BudgetGrant { evaluator: args.evaluator.clone(), epsilon_micro })?;
    match serde_json::from_value::<EvaluatorBudget>(result.clone()) {
        Ok(b) => println!(
            "{}: total {} ε, spent {} ε, left {} ε",
            b.evaluator,
            format_epsilon(b.budget.total_micro),
            format_epsilon(b.budget.spent_micro),
            format_epsilon(b.budget.left_micro)
        ),
        Err(_) => println!("{}", serde_json::to_string_pretty(&result)?),
    }
    Ok(())
}

/// A grant must name an evaluator that can use it: one with a budget
/// already, or (with --ca) a valid evaluator certificate in the CA's
/// register; --force skips the check.
fn check_evaluator_known(socket: &Path, args: &GrantArgs) -> anyhow::Result<()> {
    let name = &args.evaluator;
    if let Some(ca) = &args.ca {
        let now = time::OffsetDateTime::now_utc();
        let members = crate::pki::members(ca)?;
        let valid = members.iter().any(|m| {
            m.role == crate::pki::Role::Evaluator
                && &m.name == name
                && m.revoked_at.is_none()
                && m.not_before <= now
                && now < m.not_after
        });
        if valid || args.force {
            return Ok(());
        }
        anyhow::bail!(
            "the CA register in {} has no valid (issued, unexpired, unrevoked) evaluator certificate named `{name}`; \
             check the name with `divert ca list --ca {}`, issue one with `divert ca issue --role evaluator --name {name}`, \
             or grant anyway with --force",
            ca.display(),
            ca.display()
        );
    }
    if args.force {
        return Ok(());
    }
    let view: BudgetsView = serde_json::from_value(ask(socket, &Request::Budgets)?)
        .map_err(|e| anyhow::anyhow!("the steward's budget list was not understood ({e})"))?;
    if view.evaluators.iter().any(|e| &e.evaluator == name) {
        return Ok(());
    }
    anyhow::bail!(
        "`{name}` has no budget yet, and nothing shows that an evaluator certificate with this name exists: \
         pass --ca DIR (the program CA's directory) to check its register, or --force if you are sure of the name"
    )
}

fn show(args: ShowArgs) -> anyhow::Result<()> {
    let (_, socket) = admin_socket_of(&args.config)?;
    let result = ask(&socket, &Request::Budgets)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let view: BudgetsView = serde_json::from_value(result)
        .map_err(|e| anyhow::anyhow!("the steward's budget list was not understood ({e}); try --json"))?;
    print!("{}", table(&view));
    Ok(())
}

/// Send one request to the steward; the result of a successful answer.
fn ask(socket: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let resp = rt.block_on(admin::request(socket, req))?;
    match resp.result.filter(|_| resp.ok) {
        Some(result) => Ok(result),
        None => anyhow::bail!("the steward refused: {}", resp.error.unwrap_or_default()),
    }
}

/// The budget list as a text table (epsilon in decimal).
pub fn table(view: &BudgetsView) -> String {
    let mut rows: Vec<[String; 4]> = vec![["evaluator".into(), "total ε".into(), "spent ε".into(), "left ε".into()]];
    for e in &view.evaluators {
        rows.push([
            e.evaluator.clone(),
            format_epsilon(e.budget.total_micro),
            format_epsilon(e.budget.spent_micro),
            format_epsilon(e.budget.left_micro),
        ]);
    }
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let widths = [width(0), width(1), width(2), width(3)];
    let mut out = String::new();
    for r in &rows {
        out.push_str(&format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        ));
    }
    if view.evaluators.is_empty() {
        out.push_str("(no budgets granted)\n");
    }
    out.push_str(&format!(
        "program: cap {} ε, granted {} ε, spent {} ε\n",
        format_epsilon(view.program_cap_micro),
        format_epsilon(view.program_granted_micro),
        format_epsilon(view.program_spent_micro)
    ));
    out
}
