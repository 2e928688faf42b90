//! `divert config check`: validate any of the project's config files, reporting every problem with its file and key.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::schema::{toml_problem, Problem, Schema};

/// Arguments of `divert config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check config files (record schema, synthetic-data parameters); report every problem at once.
    #[command(long_about = "Check config files and report every problem at once, each with its file and key.\n\n\
The kind of each file is recognised from its content: a record schema has `[kinds]`, \
synthetic-data parameters `[demographics]`, a daemon config `role`, an evaluation plan \
`[[analysis]]` (planned against the built-in schema: every analysis, parameter, target and the \
budget are checked). Exit status 1 if any file has a problem.

\
With --header EXPORT.csv and --kind, also read the export's header line (only the header) and \
say, for each schema, what linkage will miss: token schemes that no column of the export can \
feed (every row will lack their token), and columns that look like identity (a name, birth \
date, sex, id, address, postal code, place) but map to no identity field (add them to the \
field's `columns`). These are warnings: the exit status stays 0.

\
Examples:
  divert config check config/*.toml
  \
divert config check --header exports/arrests.csv --kind arrest my-schema.toml")]
    Check {
        /// Files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// A CSV export whose header to check against each schema (needs --kind).
        #[arg(long, value_name = "EXPORT.csv", requires = "kind")]
        header: Option<PathBuf>,
        /// The record kind of the --header export.
        #[arg(long, requires = "header")]
        kind: Option<String>,
    },
}

/// What kind of config a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Schema,
    Synth,
    Daemon,
    Evaluator,
    EvaluationPlan,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<std::process::ExitCode> {
    let ConfigCommand::Check { files, header, kind: export_kind } = args.command;
    let header_names = match &header {
        Some(h) => Some(
            super::pseudonymize::read_header(h)
                .ok_or_else(|| anyhow::anyhow!("{}: cannot read a CSV header line from it", h.display()))?,
        ),
        None => None,
    };
    let mut bad = 0;
    for f in &files {
        match check_file(f) {
            Ok((kind, detail)) => {
                println!("{}: ok ({kind:?}: {detail})", f.display());
                if let (ConfigKind::Schema, Some(names), Some(h), Some(k)) =
                    (kind, &header_names, &header, &export_kind)
                {
                    for line in header_warnings(f, names, k) {
                        println!("{}: warning: {}: {line}", f.display(), h.display());
                    }
                }
            }
            Err(problems) => {
                bad += 1;
                for p in &problems {
                    println!("{}: {p}", f.display());
                }
            }
        }
    }
    if bad > 0 {
        eprintln!("divert: {bad} of {} file(s) have problems", files.len());
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// What a schema leaves out of linkage for an export with these header names.
fn header_warnings(schema_path: &Path, names: &[String], kind: &str) -> Vec<String> {
    let schema = match std::fs::read_to_string(schema_path).ok().and_then(|t| Schema::from_toml(&t).ok()) {
        Some(s) => s,
        None => return Vec::new(),
    };
    let Some(k) = schema.kind(kind) else {
        return vec![format!(
            "`{kind}` is not a record kind of this schema; kinds: {}",
            schema.kind_names().join(", ")
        )];
    };
    match crate::ingest::header_coverage(&schema, k, names) {
        Ok(c) => super::pseudonymize::coverage_lines(&c),
        Err(e) => vec![e.to_string()],
    }
}

/// Check one file; on success its kind and a one-line description.
pub fn check_file(path: &Path) -> Result<(ConfigKind, String), Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![Problem { key: String::new(), message: format!("cannot read: {e}") }])?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| vec![toml_problem(&e)])?;
    let kind = if value.contains_key("kinds") || value.contains_key("schemes") {
        ConfigKind::Schema
    } else if value.contains_key("recording") || value.contains_key("demographics") {
        ConfigKind::Synth
    } else if value.get("role").and_then(|r| r.as_str()) == Some("evaluator") {
        ConfigKind::Evaluator
    } else if value.contains_key("role") {
        ConfigKind::Daemon
    } else if value.contains_key("analysis") {
        ConfigKind::EvaluationPlan
    } else {
        return Err(vec![Problem {
            key: String::new(),
            message: "not a divert config this version knows (a schema has [kinds], synthetic-data parameters [demographics], a daemon config `role`, an evaluation plan [[analysis]])".into(),
        }]);
    };
    match kind {
        ConfigKind::Schema => {
            let s = Schema::from_toml(&text)?;
            Ok((
                kind,
                format!(
                    "{} record kinds, {} identity fields, {} token schemes",
                    s.kinds.len(),
                    s.identity.len(),
                    s.schemes.len()
                ),
            ))
        }
        ConfigKind::EvaluationPlan => {
            let problem = |e: crate::query::QueryError| vec![Problem { key: String::new(), message: e.to_string() }];
            let plan = crate::query::evaluation::parse_toml(&text).map_err(problem)?;
            let schema = Schema::default_schema()?;
            let planned = crate::query::evaluation::plan(&plan, &schema).map_err(problem)?;
            Ok((
                kind,
                format!("{} queries, {} ε planned of {}", planned.steps.len(), planned.epsilon_planned, plan.epsilon),
            ))
        }
        ConfigKind::Evaluator => {
            let c = crate::evaluator::EvaluatorConfig::from_toml(&text, path)?;
            Ok((kind, format!("evaluator {} of the steward at {}", c.spiffe_id, c.steward_addr)))
        }
        ConfigKind::Daemon => {
            let c = crate::config::Config::from_toml(&text, path)?;
            Ok((
                kind,
                format!(
                    "{} daemon {}",
                    if matches!(c.role, crate::config::RoleConfig::Steward(_)) { "steward" } else { "source" },
                    c.spiffe_id
                ),
            ))
        }
        ConfigKind::Synth => {
            match crate::synth::Params::from_overlay(&path.display().to_string(), &text) {
                Ok(_) => Ok((kind, "synthetic-data parameters".into())),
                Err(crate::synth::ParamsError::Invalid { problems, .. }) => Err(problems
                    .into_iter()
                    .map(|p| match p.split_once(' ') {
                        // Problems start with the key they are about.
                        Some((key, rest)) if key.contains('.') => {
                            Problem { key: key.to_string(), message: rest.to_string() }
                        }
                        _ => Problem { key: String::new(), message: p },
                    })
                    .collect()),
                Err(e) => Err(vec![Problem { key: String::new(), message: e.to_string() }]),
            }
        }
    }
}
