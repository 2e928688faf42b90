//! Command-line parsing and dispatch: `main` → `run` → errors printed with context and mapped to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd;

/// divert: evaluate a diversion program without anyone outside an agency learning who is who.
#[derive(Debug, Parser)]
#[command(name = "divert", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    // (about only: a doc comment here would hide the subcommand's long help)
    #[command(about = "The program's certificate authority: init, issue, revoke, crl, list")]
    Ca(cmd::ca::CaArgs),
    #[command(about = "Write synthetic program data for every agency, with the truth")]
    Synth(cmd::synth::SynthArgs),
    #[command(
        about = "Validate config files (schema, synthetic data, daemon and evaluator configs), reporting every problem"
    )]
    Config(cmd::config::ConfigArgs),
    #[command(about = "Create the linkage key and show its status")]
    Keys(cmd::keys::KeysArgs),
    #[command(about = "Pseudonymize one agency export offline (CSV or JSON lines → JSON lines)")]
    Pseudonymize(cmd::pseudonymize::PseudonymizeArgs),
    #[command(about = "Link pseudonymized records into persons offline; score against a truth file")]
    Link(cmd::link::LinkArgs),
    #[command(about = "Ask the steward for a differentially private answer, as an evaluator")]
    Query(cmd::query::QueryArgs),
    #[command(about = "Run an evaluation plan against the steward and write the report, as an evaluator")]
    Evaluate(cmd::evaluate::EvaluateArgs),
    #[command(about = "Run a source or steward daemon in the foreground")]
    Serve(cmd::serve::ServeArgs),
    #[command(about = "Show a running daemon's role, certificate expiry and counters")]
    Status(cmd::status::StatusArgs),
    #[command(about = "Hand an export file to the running source daemon")]
    Ingest(cmd::ingest::IngestArgs),
    #[command(about = "Delete records (sealed, expunged) at a source daemon and, by tombstone, at the steward")]
    Forget(cmd::forget::ForgetArgs),
    #[command(about = "Run the whole program on one machine: daemons, mTLS, the DP evaluation, the report")]
    Demo(cmd::demo::DemoArgs),
    #[command(about = "Set and list evaluators' privacy budgets on the running steward")]
    Budget(cmd::budget::BudgetArgs),
    #[command(about = "Check the steward's hash-chained audit log")]
    Audit(cmd::audit::AuditArgs),
}

/// Parse the command line, run it, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
    // Before anything reads a key: no core dumps, not dumpable (see daemon::harden).
    if let Err(e) = crate::daemon::harden::process() {
        eprintln!("divert: error: {e}; refusing to run with secrets that a core dump could expose");
        return ExitCode::from(1);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("divert: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Run one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ca(args) => cmd::ca::run(args)?,
        Command::Synth(args) => cmd::synth::run(args)?,
        Command::Config(args) => return cmd::config::run(args),
        Command::Keys(args) => cmd::keys::run(args)?,
        Command::Pseudonymize(args) => cmd::pseudonymize::run(args)?,
        Command::Link(args) => cmd::link::run(args)?,
        Command::Demo(args) => cmd::demo::run(args)?,
        Command::Query(args) => cmd::query::run(args)?,
        Command::Evaluate(args) => cmd::evaluate::run(args)?,
        Command::Serve(args) => cmd::serve::run(args)?,
        Command::Status(args) => cmd::status::run(args)?,
        Command::Ingest(args) => cmd::ingest::run(args)?,
        Command::Forget(args) => cmd::forget::run(args)?,
        Command::Budget(args) => cmd::budget::run(args)?,
        Command::Audit(args) => return cmd::audit::run(args),
    }
    Ok(ExitCode::SUCCESS)
}
