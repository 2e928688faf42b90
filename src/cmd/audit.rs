//! `divert audit verify`: check the steward's hash-chained audit log and name the first bad entry.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::audit;

/// Arguments of `divert audit`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Check the steward's audit log: every batch receipt, budget grant, release and \
refusal is a line carrying the hash of the line before it, so an edited, deleted or reordered entry \
breaks the chain. `verify` names the first bad entry and exits 1. Keep the last hash it prints \
somewhere else: removing the newest entries cannot be seen from the file alone.\n\n\
Example:\n  divert audit verify --config /etc/divert/steward.toml\n  divert audit verify /var/lib/divert/steward/audit.log")]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check every entry's hash and its link to the one before; exit 1 naming the first bad entry.
    #[command(long_about = "Check the steward's audit log: every entry's SHA-256, its link (prev) to the \
entry before it, and the sequence numbers. Prints the number of entries checked and the last entry's \
hash (keep it elsewhere: deleting the last entries, or re-hashing the whole log, can only be seen \
against a receipt kept outside the file; check receipts with --expect SEQ:HASH). On a broken chain, names the first bad entry (line and seq) and exits 1.\n\n\
An unterminated last line is reported as bad: it is an append in progress (run again) or a crash \
mid-write, which the steward cuts off (with a `recovery` entry) when it next starts.\n\n\
Examples:\n  divert audit verify /var/lib/divert/steward/audit.log\n  divert audit verify --config steward.toml\n  \
divert audit verify --config steward.toml --expect SEQ:HASH   (a receipt `divert query` printed)")]
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The audit log file.
    #[arg(value_name = "FILE", required_unless_present = "config", conflicts_with = "config")]
    pub file: Option<PathBuf>,
    /// A steward config: check `<data_dir>/audit.log`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A receipt kept from earlier (`divert query` prints one with every answer;
    /// `verify` prints the last one): the entry SEQ must exist and have HASH,
    /// or the log was cut short or rewritten since. Repeatable.
    #[arg(long = "expect", value_name = "SEQ:HASH")]
    pub expect: Vec<audit::Receipt>,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        AuditCommand::Verify(v) => verify(v),
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let path = match (args.file, args.config) {
        (Some(file), _) => file,
        (None, Some(config)) => {
            let (config, _) = crate::daemon::admin_socket_of(&config)?;
            config.data_dir.join(audit::AUDIT_FILE)
        }
        (None, None) => anyhow::bail!("give the audit log FILE or --config of the steward"),
    };
    match audit::verify_receipts(&path, &args.expect) {
        Ok(report) => {
            println!("{}: {} entries checked, chain intact", path.display(), report.entries);
            if !args.expect.is_empty() {
                println!("{} receipt(s) held: nothing before them was cut or rewritten", args.expect.len());
            }
            println!("last hash: {}", report.last_hash.as_deref().unwrap_or("- (empty log)"));
            if let Some(h) = &report.last_hash {
                println!("receipt: {}:{h}", report.entries);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.line == 0 => Err(anyhow::anyhow!("{}", e.reason)),
        Err(e) => {
            eprintln!("{}: BAD ENTRY at {e}", path.display());
            eprintln!("{} entries before it check out", e.good_entries);
            Ok(ExitCode::from(1))
        }
    }
}
