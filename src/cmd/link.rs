//! `divert link`: link pseudonymized records offline into persons, summarize, and score against a truth file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::linkage::{pairwise_metrics, Linker, PairMetrics};
use crate::record::PseudoRecord;
use crate::schema::Schema;
use crate::token::{parse_token, Token};

/// Arguments of `divert link`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Link pseudonymized records (from `divert pseudonymize`) into persons, offline, \
under the linkage rule of the schema, and print a summary: records, persons, and persons per \
combination of sources. This is the same linkage code the steward runs.\n\n\
With --truth (a CSV with columns source,kind,line,entity, as `divert synth` writes), also \
print the pairwise precision, recall and F1 of the linkage, as JSON on the last line.\n\n\
Example:\n  divert link --truth synth/truth.csv out/*.jsonl")]
pub struct LinkArgs {
    /// The record schema the records were made with.
    #[arg(long, value_name = "FILE", default_value = super::DEFAULT_SCHEMA_PATH)]
    pub schema: PathBuf,
    /// True entities per record, to score the linkage (columns source,kind,line,entity).
    #[arg(long, value_name = "TRUTH.csv")]
    pub truth: Option<PathBuf>,
    /// Pseudonymized record files (JSON lines).
    #[arg(required = true, value_name = "FILE.jsonl")]
    pub files: Vec<PathBuf>,
}

/// What linking gave.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkReport {
    pub records: usize,
    pub persons: usize,
    /// "police+jail" → number of persons whose records come from exactly those sources.
    pub persons_by_sources: BTreeMap<String, usize>,
    pub metrics: Option<PairMetrics>,
}

pub fn run(args: LinkArgs) -> anyhow::Result<()> {
    let schema = super::load_schema(Some(&args.schema))?;
    let report = link_files(&schema, &args.files, args.truth.as_deref())?;
    print_report(&report);
    Ok(())
}

/// Print the summary; the metrics, if any, as JSON on the last line.
pub fn print_report(r: &LinkReport) {
    println!("records: {}", r.records);
    println!("persons: {}", r.persons);
    println!("persons by sources holding their records:");
    let mut rows: Vec<_> = r.persons_by_sources.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    for (combo, n) in rows {
        println!("  {n:>8}  {combo}");
    }
    if let Some(m) = &r.metrics {
        println!(
            "{}",
            serde_json::json!({
                "precision": m.precision, "recall": m.recall, "f1": m.f1,
                "pairs_true": m.pairs_true, "pairs_found": m.pairs_found,
            })
        );
    }
}

/// Link the records of `files`, optionally scoring them against `truth`.
pub fn link_files(schema: &Schema, files: &[PathBuf], truth: Option<&Path>) -> anyhow::Result<LinkReport> {
    let scheme_index: HashMap<&str, usize> =
        schema.schemes.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut linker = Linker::new(&schema.linkage, schema.schemes.len());
    let mut sources: Vec<u16> = Vec::new();
    let mut source_names: Vec<String> = Vec::new();
    let mut keys: Vec<(u16, String, u64)> = Vec::new();
    let mut epochs = BTreeSet::new();
    let mut tokens: Vec<Option<Token>> = vec![None; schema.schemes.len()];
    for path in files {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let line = line.with_context(|| format!("{}: reading line {}", path.display(), n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let rec: PseudoRecord = serde_json::from_str(&line).map_err(|e| {
                anyhow::anyhow!("{} line {}: not a pseudonymized record (column {})", path.display(), n + 1, e.column())
            })?;
            tokens.iter_mut().for_each(|t| *t = None);
            for (name, text) in &rec.tokens {
                let Some(&i) = scheme_index.get(name.as_str()) else {
                    bail!("{} line {}: token scheme `{name}` is not in the schema; link with the schema the records were made with", path.display(), n + 1);
                };
                let Some((epoch, t)) = parse_token(text) else {
                    bail!("{} line {}: token `{name}` is malformed", path.display(), n + 1);
                };
                if epoch != rec.epoch {
                    bail!(
                        "{} line {}: token `{name}` is of epoch {epoch}, the record says {}",
                        path.display(),
                        n + 1,
                        rec.epoch
                    );
                }
                tokens[i] = Some(t);
            }
            epochs.insert(rec.epoch);
            linker.add(rec.epoch, &tokens)?;
            let sid = match source_names.iter().position(|s| *s == rec.source) {
                Some(i) => i,
                None => {
                    source_names.push(rec.source.clone());
                    source_names.len() - 1
                }
            };
            sources.push(sid as u16);
            keys.push((sid as u16, rec.kind, rec.line));
        }
    }
    if epochs.len() > 1 {
        eprintln!(
            "divert: warning: the records carry tokens of epochs {epochs:?}; tokens of different epochs never agree"
        );
    }
    let persons = linker.persons();
    let n_persons = persons.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
    let mut combo_of: Vec<BTreeSet<u16>> = vec![BTreeSet::new(); n_persons];
    for (&p, &s) in persons.iter().zip(&sources) {
        combo_of[p as usize].insert(s);
    }
    let mut persons_by_sources = BTreeMap::new();
    for set in &combo_of {
        let mut names: Vec<&str> = set.iter().map(|&s| source_names[usize::from(s)].as_str()).collect();
        names.sort_unstable();
        *persons_by_sources.entry(names.join("+")).or_insert(0) += 1;
    }
    let metrics = match truth {
        None => None,
        Some(t) => {
            let truth = read_truth(t)?;
            let mut entities = Vec::with_capacity(keys.len());
            for (s, kind, line) in &keys {
                let source = &source_names[usize::from(*s)];
                let e = truth.get(&(source.clone(), kind.clone(), *line)).with_context(|| {
                    format!("{}: no entity for source {source}, kind {kind}, line {line}", t.display())
                })?;
                entities.push(*e);
            }
            Some(pairwise_metrics(&persons, &entities))
        }
    };
    Ok(LinkReport { records: persons.len(), persons: n_persons, persons_by_sources, metrics })
}

/// Read `source,kind,line,entity` into a map to a dense entity number.
fn read_truth(path: &Path) -> anyhow::Result<HashMap<(String, String, u64), u32>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let headers: Vec<String> = r.headers()?.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no `{name}` column (need source,kind,line,entity)", path.display()))
    };
    let (cs, ck, cl, ce) = (col("source")?, col("kind")?, col("line")?, col("entity")?);
    let mut entity_ids: HashMap<String, u32> = HashMap::new();
    let mut out = HashMap::new();
    for (n, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", path.display(), n + 2))?;
        let get = |c: usize| rec.get(c).unwrap_or("").trim();
        let line: u64 =
            get(cl).parse().with_context(|| format!("{}: row {}: line is not a number", path.display(), n + 2))?;
        let next = entity_ids.len() as u32;
        let e = *entity_ids.entry(get(ce).to_string()).or_insert(next);
        out.insert((get(cs).to_string(), get(ck).to_string(), line), e);
    }
    Ok(out)
}
