//! `divert ingest`: hand a file to the running source daemon of a config (the daemon holds the store's lock).

use std::path::PathBuf;

use anyhow::Context;

use crate::daemon::admin::{self, Request};
use crate::daemon::admin_socket_of;

/// Arguments of `divert ingest`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Hand an export to the running source daemon of a config, through its admin socket. \
The daemon checks every row, keeps the raw records encrypted for re-keying, queues the \
pseudonymized records for the steward, and writes bad rows to FILE.quarantine.csv. The file \
stays where it is: it is yours to delete (files dropped into the daemon's inbox are overwritten and \
deleted once ingested, a receipt left in done/; files refused whole wait in rejected/).\n\n\
Example:\n  divert ingest --config /etc/divert/police.toml --kind arrest /exports/arrests-2019.csv")]
pub struct IngestArgs {
    /// The source daemon's config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The record kind of every row (a kind of the schema, e.g. arrest).
    #[arg(long)]
    pub kind: String,
    /// For a whole-table (`snapshot`) kind: delete the records it lacks even when
    /// they are more than the source's `snapshot_max_delete_percent`.
    #[arg(long)]
    pub force_snapshot: bool,
    /// The export to ingest (CSV or JSON lines).
    pub path: PathBuf,
}

pub fn run(args: IngestArgs) -> anyhow::Result<()> {
    let (_, socket) = admin_socket_of(&args.config)?;
    let path = std::fs::canonicalize(&args.path).with_context(|| format!("{}", args.path.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let resp = rt.block_on(admin::request(
        &socket,
        &Request::Ingest { kind: args.kind.clone(), path, force_snapshot: args.force_snapshot },
    ))?;
    match (resp.ok, resp.result, resp.error) {
        (true, Some(r), _) => {
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        (_, _, e) => anyhow::bail!("{}: {}", args.path.display(), e.unwrap_or_else(|| "refused".into())),
    }
}
