//! `divert status`: ask a running daemon for its role, identity, certificate expiry and counters.

use std::path::PathBuf;

use crate::daemon::admin::{self, Request};
use crate::daemon::admin_socket_of;

/// Arguments of `divert status`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Ask the running daemon of a config file for its status, through its admin socket: \
role, program, certificate expiry (with a warning under 30 days), and the role's counters — \
for a source the key epoch fingerprint, outbox depth and last successful push; for a steward \
the records held per source. Counts only, never a record.\n\n\
Example:\n  divert status --config /etc/divert/police.toml\n  divert status --config steward.toml --json")]
pub struct StatusArgs {
    /// The daemon's config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let (_, socket) = admin_socket_of(&args.config)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let resp = rt.block_on(admin::request(&socket, &Request::Status))?;
    let Some(result) = resp.result.filter(|_| resp.ok) else {
        anyhow::bail!("the daemon refused: {}", resp.error.unwrap_or_default());
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    if let Some(w) = result["certificate"]["warning"].as_str() {
        eprintln!("WARNING: {w}");
    }
    print_value("", &result, 0);
    Ok(())
}

/// Print a JSON value as indented `key: value` lines.
fn print_value(key: &str, v: &serde_json::Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        serde_json::Value::Object(map) => {
            if !key.is_empty() {
                println!("{pad}{key}:");
            }
            let depth = if key.is_empty() { depth } else { depth + 1 };
            for (k, v) in map {
                print_value(k, v, depth);
            }
        }
        serde_json::Value::Null => println!("{pad}{key}: -"),
        serde_json::Value::String(s) => println!("{pad}{key}: {s}"),
        other => println!("{pad}{key}: {other}"),
    }
}
