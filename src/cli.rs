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
    /// The program's certificate authority: init, issue, revoke, crl, list.
    Ca(cmd::ca::CaArgs),
    /// Write synthetic program data for every agency, with the truth.
    Synth(cmd::synth::SynthArgs),
    /// Validate config files (schema, synthetic-data parameters), reporting every problem.
    Config(cmd::config::ConfigArgs),
    /// Create the linkage key and show its status.
    Keys(cmd::keys::KeysArgs),
    /// Pseudonymize one agency export offline (CSV or JSON lines → JSON lines).
    Pseudonymize(cmd::pseudonymize::PseudonymizeArgs),
    /// Link pseudonymized records into persons offline; score against a truth file.
    Link(cmd::link::LinkArgs),
    /// Ask the steward for a differentially private answer, as an evaluator.
    Query(cmd::query::QueryArgs),
    /// Run a source or steward daemon in the foreground.
    Serve(cmd::serve::ServeArgs),
    /// Show a running daemon's role, certificate expiry and counters.
    Status(cmd::status::StatusArgs),
    /// Hand an export file to the running source daemon.
    Ingest(cmd::ingest::IngestArgs),
    /// Run the whole pipeline on synthetic data in a temporary directory.
    Demo(cmd::demo::DemoArgs),
    /// Set and list evaluators' privacy budgets on the running steward.
    Budget(cmd::budget::BudgetArgs),
    /// Check the steward's hash-chained audit log.
    Audit(cmd::audit::AuditArgs),
}

/// Parse the command line, run it, and turn the outcome into an exit code.
pub fn main() -> ExitCode {
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
        Command::Serve(args) => cmd::serve::run(args)?,
        Command::Status(args) => cmd::status::run(args)?,
        Command::Ingest(args) => cmd::ingest::run(args)?,
        Command::Budget(args) => cmd::budget::run(args)?,
        Command::Audit(args) => return cmd::audit::run(args),
    }
    Ok(ExitCode::SUCCESS)
}
