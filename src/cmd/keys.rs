//! `divert keys`: create the linkage key and show its status (epoch and fingerprint, never the key).

use std::path::PathBuf;

use clap::Subcommand;

use crate::keys;

/// Arguments of `divert keys`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Manage the linkage key: 32 random bytes per epoch, held by the source agencies only.\n\n\
The key turns identity values into tokens. Anyone holding it and a guess of a person's \
name and date of birth can test the guess against tokens, so it never goes to the steward \
or an evaluator. Key files are written 0600 and refused if group- or world-readable.\n\n\
Example:\n  divert keys init --keys /etc/divert/keys\n  divert keys status --keys /etc/divert/keys")]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the keys directory (0700) and a first epoch key (0600) from the system's secure RNG.
    Init {
        /// Directory for the key files; created if missing.
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
    },
    /// Show each epoch's number and fingerprint; the active epoch is the highest.
    Status {
        /// Directory holding the key files.
        #[arg(long, value_name = "DIR")]
        keys: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::Init { keys: dir } => {
            let k = keys::init(&dir)?;
            println!("created linkage key epoch {} (fingerprint {}) in {}", k.epoch(), k.fingerprint(), dir.display());
            println!("copy it to every source agency over a secure channel; never to the steward or an evaluator");
        }
        KeysCommand::Status { keys: dir, json } => {
            let epochs = keys::list(&dir)?;
            anyhow::ensure!(
                !epochs.is_empty(),
                "{}: no linkage key; create one with `divert keys init`",
                dir.display()
            );
            let active = epochs.last().map(|e| e.epoch);
            if json {
                println!("{}", serde_json::json!({ "active_epoch": active, "epochs": epochs }));
            } else {
                println!("{:>6}  {:<16}  state", "epoch", "fingerprint");
                for e in &epochs {
                    let state = if Some(e.epoch) == active { "active" } else { "retained" };
                    println!("{:>6}  {:<16}  {state}", e.epoch, e.fingerprint);
                }
            }
        }
    }
    Ok(())
}
