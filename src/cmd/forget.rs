//! `divert forget`: delete records at the running source daemon of a config (raw store, outbox) and, by tombstones, at the steward.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context;

use crate::daemon::admin::RecordIds;
use crate::daemon::admin::{self, Request};
use crate::daemon::admin_socket_of;

/// Arguments of `divert forget`. `Debug` leaves the id out.
#[derive(clap::Args)]
#[command(long_about = "Delete records at the running source daemon of a config, by the agency's own \
record id: a sealed or expunged record, or one the agency must no longer share. The daemon removes \
the raw rows from its encrypted raw store and the records from its outbox, and queues a tombstone \
(the keyed hash of the id, nothing else) that makes the steward remove the record from its store and \
from linkage; the steward's audit log records that a record of this source and kind was removed, never \
which. The answer gives counts only. What deletion cannot undo (answers already released, backups) is \
in the README, \"Re-exports, corrections and deletions\".\n\n\
Examples:\n  divert forget --config /etc/divert/police.toml --kind arrest --id A-2019-00017\n  \
divert forget --config /etc/divert/police.toml --kind arrest --ids sealed-2024-05.txt")]
pub struct ForgetArgs {
    /// The source daemon's config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The record kind (a kind of the schema, e.g. arrest).
    #[arg(long)]
    pub kind: String,
    /// One agency record id.
    #[arg(long, value_name = "RECORD_ID", conflicts_with = "ids", required_unless_present = "ids")]
    pub id: Option<String>,
    /// A file of agency record ids, one per line (a court's list); `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub ids: Option<PathBuf>,
}

impl std::fmt::Debug for ForgetArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgetArgs")
            .field("config", &self.config)
            .field("kind", &self.kind)
            .field("id", &self.id.as_ref().map(|_| "(redacted)"))
            .field("ids", &self.ids)
            .finish()
    }
}

pub fn run(args: ForgetArgs) -> anyhow::Result<()> {
    let (_, socket) = admin_socket_of(&args.config)?;
    let ids = match (&args.id, &args.ids) {
        (Some(id), _) => vec![id.clone()],
        (None, Some(path)) => {
            let mut text = zeroize::Zeroizing::new(String::new());
            if path.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text).context("reading ids from standard input")?;
            } else {
                std::fs::File::open(path)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .with_context(|| format!("reading ids from {}", path.display()))?;
            }
            text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
        }
        (None, None) => anyhow::bail!("name the records: --id RECORD_ID or --ids FILE"),
    };
    let n = ids.len();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let req = Request::Forget { kind: args.kind.clone(), ids: RecordIds(ids) };
    let resp = rt.block_on(admin::request(&socket, &req))?;
    match (resp.ok, resp.result, resp.error) {
        (true, Some(r), _) => {
            println!("{}", serde_json::to_string_pretty(&r)?);
            Ok(())
        }
        (_, _, e) => {
            anyhow::bail!("deleting {n} record id(s) of kind {}: {}", args.kind, e.unwrap_or_else(|| "refused".into()))
        }
    }
}
