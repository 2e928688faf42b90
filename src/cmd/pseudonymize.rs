//! `divert pseudonymize`: one agency export in, pseudonymized JSON lines out, bad rows to a quarantine file beside the input.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::ingest::{header_coverage, Action, Coverage, Format, Issue};
use crate::keys;
use crate::pseudonymize::{pseudonymize_stream, Pseudonymizer, StreamError, Summary};
use crate::schema::Schema;
use crate::token::Tokenizer;

/// Arguments of `divert pseudonymize`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Pseudonymize one agency export offline.\n\n\
Reads a CSV (header names mapped case-insensitively, in any order) or JSON-lines export of \
one record kind, checks every row against the schema, and writes one JSON line per accepted \
row to stdout: tokens (keyed hashes of the identity fields under the active key epoch), the \
released fields, `age` at the event, and `source`, `kind` and the input `line`. Names, dates \
of birth and ids never appear in the output, and free text only where the schema marks it safe.\n\n\
Rows that fail go to FILE.quarantine.csv (line, field, reason; never the value). Identity \
fields are optional unless the schema marks them required: a missing or unusable value drops \
that field only, and the row links on the others. A summary goes to stderr: rows, values \
dropped per field and reason, header columns that look like identity but map to no field, and \
token schemes that no row got a token for (their fields have no column, or no row has them). \
Without --schema the built-in default schema is used.\n\n\
Example:\n  divert pseudonymize --schema config/schema.toml --keys keys/ --source police --kind arrest arrests.csv > arrests.jsonl")]
pub struct PseudonymizeArgs {
    /// The record schema (default: the built-in schema, as shipped in config/schema.toml).
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// Directory holding the linkage key (made by `divert keys init`).
    #[arg(long, value_name = "DIR")]
    pub keys: PathBuf,
    /// The agency this export comes from (e.g. police, jail, da).
    #[arg(long)]
    pub source: String,
    /// The record kind of every row (a kind of the schema, e.g. arrest).
    #[arg(long)]
    pub kind: String,
    /// Input format; by default from the file extension (.csv, .jsonl/.ndjson).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Where to write quarantined rows (default: FILE.quarantine.csv beside the input).
    #[arg(long, value_name = "FILE")]
    pub quarantine: Option<PathBuf>,
    /// Write the records here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The export to read.
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Csv,
    Jsonl,
}

pub fn run(args: PseudonymizeArgs) -> anyhow::Result<()> {
    let schema = super::load_schema_noted(args.schema.as_deref())?;
    let key = keys::load_active(&args.keys)?;
    let tokenizer = Tokenizer::new(&schema, &key)?;
    let format = match args.format {
        Some(FormatArg::Csv) => Format::Csv,
        Some(FormatArg::Jsonl) => Format::JsonLines,
        None => Format::from_path(&args.file).with_context(|| {
            format!(
                "{}: cannot tell the format from the extension; pass --format csv or --format jsonl",
                args.file.display()
            )
        })?,
    };
    let quarantine = args.quarantine.clone().unwrap_or_else(|| quarantine_path(&args.file));
    if format == Format::Csv {
        if let Some(kind) = schema.kind(&args.kind) {
            if let Some(Ok(c)) = read_header(&args.file).map(|h| header_coverage(&schema, kind, &h)) {
                for line in coverage_lines(&c) {
                    eprintln!("divert: {}: {line}", args.file.display());
                }
            }
        }
    }
    let summary = match &args.output {
        Some(path) => {
            let out = File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let s =
                pseudonymize_file(&schema, &args.source, &args.kind, &tokenizer, format, &args.file, &quarantine, out)?;
            // The output is only useful whole: make it durable before reporting success.
            File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", path.display()))?;
            s
        }
        None => {
            let stdout = io::stdout().lock();
            pseudonymize_file(&schema, &args.source, &args.kind, &tokenizer, format, &args.file, &quarantine, stdout)?
        }
    };
    eprintln!("{}", summary_line(&args.source, &args.kind, &summary.summary, &quarantine));
    for ((field, reason), n) in &summary.dropped {
        eprintln!("  {n} values of {field} dropped: {reason}");
    }
    if summary.summary.accepted > 0 {
        let none: Vec<&str> = schema
            .schemes
            .iter()
            .zip(&summary.tokens_per_scheme)
            .filter(|(_, &n)| n == 0)
            .map(|(s, _)| s.name.as_str())
            .collect();
        if !none.is_empty() {
            eprintln!(
                "  no row got a token of scheme{} {}: records of this file cannot link through {}",
                if none.len() > 1 { "s" } else { "" },
                none.join(", "),
                if none.len() > 1 { "them" } else { "it" }
            );
        }
    }
    Ok(())
}

/// The header line of a CSV export, lower-cased names; `None` if unreadable.
pub fn read_header(path: &Path) -> Option<Vec<String>> {
    let mut r = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_path(path).ok()?;
    let mut rec = csv::StringRecord::new();
    r.read_record(&mut rec).ok()?.then(|| rec.iter().map(|h| h.to_string()).collect())
}

/// What a header leaves out, one line each (column and scheme names only).
pub fn coverage_lines(c: &Coverage) -> Vec<String> {
    let mut out = Vec::new();
    for col in &c.unmapped_identity_columns {
        out.push(format!(
            "column `{col}` looks like identity but no identity field maps it, so it is ignored; add it to a field's `columns` in the schema if it identifies the person"
        ));
    }
    for (field, lacking) in &c.partial_joins {
        out.push(format!(
            "field `{field}` can be joined from several columns, but the header lacks {}: the pieces it has are ignored",
            lacking.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    for field in &c.year_only {
        out.push(format!(
            "field `{field}` has only its year column (no month, day or whole date): it is read as its year alone, and only schemes that use just the year get tokens from it"
        ));
    }
    // One line per set of missing fields: "schemes a, b get no token: no column for `dob`".
    let mut by_lack: std::collections::BTreeMap<&[String], Vec<&str>> = std::collections::BTreeMap::new();
    for (scheme, lacking) in &c.schemes_unfed {
        by_lack.entry(lacking.as_slice()).or_default().push(scheme.as_str());
    }
    for (lacking, schemes) in by_lack {
        out.push(format!(
            "scheme{} {} get{} no token: no column for {}",
            if schemes.len() > 1 { "s" } else { "" },
            schemes.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
            if schemes.len() > 1 { "" } else { "s" },
            lacking.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

/// A pseudonymized file: the summary, values dropped per (field, reason), tokens per scheme.
#[derive(Debug, Clone, Default)]
pub struct FileSummary {
    pub summary: Summary,
    pub dropped: std::collections::BTreeMap<(String, String), u64>,
    pub tokens_per_scheme: Vec<u64>,
}

pub use crate::ingest::quarantine_path;

/// The one-line summary printed on stderr.
pub fn summary_line(source: &str, kind: &str, s: &Summary, quarantine: &Path) -> String {
    let mut line =
        format!("{source}/{kind}: {} rows read, {} accepted, {} quarantined", s.rows_read, s.accepted, s.quarantined);
    if s.values_dropped > 0 {
        line.push_str(&format!(", {} unusable optional values dropped", s.values_dropped));
    }
    if s.quarantined + s.values_dropped > 0 {
        line.push_str(&format!(" (reasons in {})", quarantine.display()));
    }
    line
}

/// Pseudonymize `input` into `out`; write issues to `quarantine` (removed when there are none).
#[allow(clippy::too_many_arguments)]
pub fn pseudonymize_file<W: Write>(
    schema: &Schema,
    source: &str,
    kind_name: &str,
    tokenizer: &Tokenizer,
    format: Format,
    input: &Path,
    quarantine: &Path,
    out: W,
) -> anyhow::Result<FileSummary> {
    super::check_source_name(source)?;
    let kind = schema.kind(kind_name).with_context(|| {
        format!("`{kind_name}` is not a record kind of the schema; kinds: {}", schema.kind_names().join(", "))
    })?;
    let file = File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let mut q: Option<csv::Writer<File>> = None;
    let mut dropped = std::collections::BTreeMap::new();
    let mut on_issue = |i: &Issue| -> io::Result<()> {
        if i.action == Action::ValueDropped {
            *dropped.entry((i.field.clone(), i.reason.clone())).or_insert(0) += 1;
        }
        if q.is_none() {
            let mut w = csv::Writer::from_writer(File::create(quarantine)?);
            w.write_record(["line", "field", "reason", "action"])?;
            q = Some(w);
        }
        if let Some(w) = q.as_mut() {
            w.write_record([i.line.to_string().as_str(), &i.field, &i.reason, i.action.as_str()])?;
        }
        Ok(())
    };
    let out = BufWriter::with_capacity(1 << 20, out);
    let mut p = Pseudonymizer::new(schema, kind, source, tokenizer);
    let summary =
        match pseudonymize_stream(&mut p, format, io::BufReader::with_capacity(1 << 20, file), out, &mut on_issue) {
            Ok(s) => s,
            Err(e @ StreamError::Input(_)) => {
                return Err(anyhow::Error::new(e).context(format!("{}: refused", input.display())))
            }
            Err(StreamError::Quarantine(e)) => anyhow::bail!("writing {}: {e}", quarantine.display()),
            Err(e @ StreamError::Output(_)) => return Err(anyhow::Error::new(e).context(input.display().to_string())),
        };
    match q {
        Some(mut w) => w.flush().with_context(|| format!("writing {}", quarantine.display()))?,
        None => {
            // A quarantine file from an earlier run would describe rows that are now fine.
            if quarantine.exists() {
                std::fs::remove_file(quarantine).with_context(|| format!("removing stale {}", quarantine.display()))?;
            }
        }
    }
    let tokens_per_scheme = p.tokens_per_scheme().to_vec();
    Ok(FileSummary { summary, dropped, tokens_per_scheme })
}
