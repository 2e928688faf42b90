//! The CLI edge: one module per subcommand family, each with its clap `Args` and a `run`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::schema::Schema;

pub mod audit;
pub mod budget;
pub mod ca;
pub mod config;
pub mod demo;
pub mod evaluate;
pub mod ingest;
pub mod keys;
pub mod link;
pub mod pseudonymize;
pub mod query;
pub mod serve;
pub mod status;
pub mod synth;

/// Where the shipped schema lives in the repository (compiled in as the default).
pub const DEFAULT_SCHEMA_PATH: &str = "config/schema.toml";

/// Load a schema as [`load_schema`] does and say on stderr which one is used
/// (a file, or the compiled-in default): for the offline commands, whose
/// results depend on it.
pub fn load_schema_noted(path: Option<&Path>) -> anyhow::Result<Schema> {
    let schema = load_schema(path)?;
    match path {
        Some(p) => eprintln!("divert: schema: {}", p.display()),
        None => eprintln!("divert: schema: the built-in default, as shipped in {DEFAULT_SCHEMA_PATH} (pass --schema FILE for another)"),
    }
    Ok(schema)
}

/// Load and validate a schema file, printing every problem; with no path,
/// the built-in copy of the shipped `config/schema.toml` (never a file that
/// happens to be in the working directory).
pub fn load_schema(path: Option<&Path>) -> anyhow::Result<Schema> {
    let (path, text) = match path {
        Some(p) => {
            (p.to_path_buf(), std::fs::read_to_string(p).with_context(|| format!("reading schema {}", p.display()))?)
        }
        None => (PathBuf::from("<built-in schema>"), crate::schema::DEFAULT_SCHEMA.to_string()),
    };
    Schema::from_toml(&text).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {}: {p}", path.display())).collect();
        anyhow::anyhow!("{} has {} problem(s):\n{}", path.display(), problems.len(), lines.join("\n"))
    })
}

/// A source (agency) name: what certificates and records call it.
pub fn check_source_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    anyhow::ensure!(ok, "source name `{name}`: use 1-63 characters of a-z, 0-9, - and _");
    Ok(())
}
