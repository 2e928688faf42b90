//! `divert synth`: write synthetic program data for every agency with its truth.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::synth::{self, Params, Progress};

/// Arguments of `divert synth`.
#[derive(Debug, clap::Args)]
#[command(after_help = WRITES)]
pub struct SynthArgs {
    /// Number of referred persons (split between the diversion and comparison
    /// arms). Background persons who are never referred are added on top:
    /// program.background_per_referred times as many.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub persons: u32,

    /// Seed of the random generator. The same seed and parameters give
    /// byte-identical files.
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: u64,

    /// Directory to write into; created if missing. Files already there are replaced.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Model parameters (TOML, the shape of config/synth.toml). Keys the file
    /// leaves out keep the built-in defaults, which are config/synth.toml.
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
}

/// What `--help` says the command writes.
const WRITES: &str = "\
Writes, under --out:
  police/referral.csv police/arrest.csv   jail/booking.csv
  da/charge.csv da/program_status.csv     treatment/episode.csv
  casemgmt/intake.csv plan.csv contact.csv service.csv monthly_status.csv
each in that agency's own export style (headers, date formats, BOM and CRLF
for case management) and with its own recording differences (typos,
nicknames, swapped names, wrong dates of birth, missing sex or state id,
the city and ZIP code of residence with spacing variants, moves and no
fixed address);
  truth.csv   source,kind,line,entity: the synthetic person (P000123) behind
              each record, by the line the record starts on;
  truth.json  the true values of the standard statistics, by arm.
Progress is reported on stderr from 10000 persons on.

Example:
  divert synth --persons 300 --seed 1 --out /tmp/program
  divert synth --persons 5000 --params my-rates.toml --out /tmp/big";

/// Runs long enough to report progress from this many referred persons on.
const PROGRESS_FROM: u32 = 10_000;

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let params = match &args.params {
        None => Params::defaults().context("the built-in parameters are broken")?,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the parameter file {}", path.display()))?;
            Params::from_overlay(&path.display().to_string(), &text)?
        }
    };
    let started = Instant::now();
    let verbose = args.persons >= PROGRESS_FROM;
    let mut report = |p: Progress| {
        if !verbose {
            return;
        }
        match p {
            Progress::Generated { done, total } => {
                eprintln!("synth: simulated {done}/{total} persons ({:.1}s)", started.elapsed().as_secs_f64())
            }
            Progress::Wrote { path, records } => {
                eprintln!("synth: wrote {} ({records} records)", path.display())
            }
        }
    };
    let dataset = synth::generate_with_progress(&params, args.persons, args.seed, &mut report);
    let summary = synth::write_dataset(&dataset, &args.out, &mut report)
        .with_context(|| format!("cannot write the synthetic data to {}", args.out.display()))?;
    let per_agency: Vec<String> = summary.records.iter().map(|(a, n)| format!("{} {n}", a.as_str())).collect();
    eprintln!(
        "synth: {} referred + {} background persons; records: {}; written to {} (truth.csv, truth.json) in {:.1}s",
        summary.referred,
        summary.background,
        per_agency.join(", "),
        summary.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
