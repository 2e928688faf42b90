//! `divert demo`: the whole pipeline on synthetic data in one command — synthetic exports for every agency, a fresh linkage key, pseudonymization per agency, linkage, and its quality against the truth.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::cmd::link::{link_files, LinkReport};
use crate::cmd::pseudonymize::{pseudonymize_file, quarantine_path};
use crate::ingest::Format;
use crate::keys;
use crate::schema::Schema;
use crate::synth::{self, Params};
use crate::token::Tokenizer;

/// Arguments of `divert demo`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Run divert's pipeline end to end on synthetic data, with no setup.\n\n\
In a working directory (temporary unless --dir is given) it: generates a synthetic \
diversion program (`divert synth`: police, jail, DA, case management and treatment exports \
with realistic recording differences), creates a linkage key, pseudonymizes each agency's \
exports, links the records into persons, and prints a summary with the linkage's precision \
and recall against the synthetic truth.\n\n\
Example:\n  cargo run --release -- demo\n  divert demo --persons 2000 --seed 7 --dir /tmp/divert-demo --keep")]
pub struct DemoArgs {
    /// Referred persons in the synthetic program (both arms; background persons come on top).
    #[arg(long, default_value_t = 300)]
    pub persons: u32,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Working directory (created if missing); default: a new temporary directory, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the working directory (always kept when --dir is given).
    #[arg(long)]
    pub keep: bool,
    /// Record schema (token schemes, linkage rule) to use; default: the built-in config/schema.toml.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
}

/// What the demo did, for the summary and for tests.
#[derive(Debug)]
pub struct DemoReport {
    pub dir: PathBuf,
    pub files: Vec<FileRow>,
    pub link: LinkReport,
}

#[derive(Debug)]
pub struct FileRow {
    pub agency: String,
    pub kind: String,
    pub summary: crate::pseudonymize::Summary,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (dir, temporary) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (temp_dir()?, !args.keep),
    };
    let schema = match &args.schema {
        Some(p) => super::load_schema(Some(p))?,
        None => Schema::default_schema().map_err(|p| anyhow::anyhow!("built-in schema: {p:?}"))?,
    };
    let result = run_in(&dir, &schema, args.persons, args.seed);
    match &result {
        Ok(report) => print_report(report, started),
        Err(_) if temporary => eprintln!("demo: working directory kept for inspection: {}", dir.display()),
        Err(_) => {}
    }
    if result.is_ok() && temporary {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        println!("(working directory removed; run with --keep or --dir DIR to keep it)");
    } else if result.is_ok() {
        println!("working directory: {}", dir.display());
    }
    result.map(|_| ())
}

/// A fresh private directory under the system's temporary directory.
fn temp_dir() -> anyhow::Result<PathBuf> {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("divert-demo-{}-{nanos:08x}", std::process::id()));
    crate::fsutil::create_private_dir(&dir)?;
    Ok(dir)
}

/// Run the pipeline in `dir`.
pub fn run_in(dir: &Path, schema: &Schema, persons: u32, seed: u64) -> anyhow::Result<DemoReport> {
    crate::fsutil::create_private_dir(dir)?;

    step("generating synthetic program data");
    let params = Params::defaults().context("built-in synthetic-data parameters")?;
    let dataset = synth::generate(&params, persons, seed);
    let data = dir.join("synth");
    synth::write_dataset(&dataset, &data, &mut |_| {}).with_context(|| format!("writing {}", data.display()))?;

    step("creating a linkage key (held by the sources only)");
    let keys_dir = dir.join("keys");
    let key = match keys::load_active(&keys_dir) {
        Ok(k) => k,
        Err(keys::KeyError::NoKey { .. }) | Err(keys::KeyError::Dir { .. }) => keys::init(&keys_dir)?,
        Err(e) => return Err(e.into()),
    };
    let tokenizer = Tokenizer::new(schema, &key)?;

    step("pseudonymizing each agency's exports");
    let out_dir = dir.join("pseudonymized");
    let mut files = Vec::new();
    let mut outputs = Vec::new();
    for agency in sorted_dirs(&data)? {
        let agency_name = file_name(&agency);
        for input in sorted_files(&agency, "csv")? {
            let kind = file_name(&input).trim_end_matches(".csv").to_string();
            if kind.ends_with(".quarantine") {
                continue;
            }
            let out = out_dir.join(&agency_name).join(format!("{kind}.jsonl"));
            fs::create_dir_all(out.parent().unwrap_or(&out_dir))?;
            let file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let summary = pseudonymize_file(
                schema,
                &agency_name,
                &kind,
                &tokenizer,
                Format::Csv,
                &input,
                &quarantine_path(&input),
                file,
            )
            .with_context(|| format!("pseudonymizing {}", input.display()))?;
            files.push(FileRow { agency: agency_name.clone(), kind, summary });
            outputs.push(out);
        }
    }

    step("linking records into persons");
    let link = link_files(schema, &outputs, Some(&data.join("truth.csv")))?;
    Ok(DemoReport { dir: dir.to_path_buf(), files, link })
}

fn step(what: &str) {
    eprintln!("demo: {what} ...");
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn sorted_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    v.sort();
    Ok(v)
}

fn sorted_files(dir: &Path, ext: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    Ok(v)
}

fn print_report(r: &DemoReport, started: Instant) {
    println!();
    println!("{:<10} {:<15} {:>9} {:>9} {:>11}", "agency", "kind", "rows", "accepted", "quarantined");
    let mut total = crate::pseudonymize::Summary::default();
    for f in &r.files {
        println!(
            "{:<10} {:<15} {:>9} {:>9} {:>11}",
            f.agency, f.kind, f.summary.rows_read, f.summary.accepted, f.summary.quarantined
        );
        total.rows_read += f.summary.rows_read;
        total.accepted += f.summary.accepted;
        total.quarantined += f.summary.quarantined;
    }
    println!("{:<10} {:<15} {:>9} {:>9} {:>11}", "all", "", total.rows_read, total.accepted, total.quarantined);
    println!();
    println!("linkage: {} records -> {} persons", r.link.records, r.link.persons);
    let mut combos: Vec<_> = r.link.persons_by_sources.iter().collect();
    combos.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    for (combo, n) in combos.iter().take(8) {
        println!("  {n:>7}  {combo}");
    }
    if let Some(m) = &r.link.metrics {
        println!(
            "linkage quality against the synthetic truth: precision {:.4}, recall {:.4}, F1 {:.4} ({} true pairs, {} found)",
            m.precision, m.recall, m.f1, m.pairs_true, m.pairs_found
        );
    }
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
}
