//! The CLI edge: one module per subcommand family, each with its clap `Args` and a `run`.

use std::path::Path;

use crate::schema::Schema;

pub mod audit;
pub mod budget;
pub mod ca;
pub mod config;
pub mod demo;
pub mod evaluate;
pub mod forget;
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

pub use crate::config::load_schema;

/// A source (agency) name: what certificates and records call it.
pub fn check_source_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    anyhow::ensure!(ok, "source name `{name}`: use 1-63 characters of a-z, 0-9, - and _");
    Ok(())
}
