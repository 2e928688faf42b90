//! `divert link`: link pseudonymized records offline into persons, summarize, and score against a truth file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::linkage::{
    cross_source_metrics, find, pairs_of, pairwise_metrics, CrossSource, Linkage, Linker, PairMetrics, Quality,
};
use crate::record::PseudoRecord;
use crate::schema::{linkage_range, LinkageValue, Schema};
use crate::token::{parse_token, Token};

/// Arguments of `divert link`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Link pseudonymized records (from `divert pseudonymize`) into persons, offline, \
under the linkage rule of the schema, and print a summary: records, persons, and persons per \
combination of sources. This is the same linkage code the steward runs.\n\n\
Links are decided by match weights: per token scheme, m (agreement among the same person) \
and u (among different persons) are estimated from the records themselves, and two records \
link when their match weight reaches the schema's `[linkage] match_weight` (bits): the prior \
odds of a match among all record pairs, plus the evidence of their agreeing and disagreeing \
tokens and of fields the tokens show to differ. 0 bits: a match is more likely than not. \
The estimates and a quality summary are printed.\n\n\
With --truth (a CSV with columns source,kind,line,entity, as `divert synth` writes), also \
print the pairwise precision, recall and F1, as JSON on the last line. Every truth row \
counts: a row with no record among FILEs (quarantined, or its file not given) and a record \
with no token are persons of their own, so missing data lowers recall; the JSON says how \
many of each. It also gives `recall_reachable`: the share of true pairs joined by a chain of \
shared tokens through records of their own entity, the most any weights could link with \
these schemes. Recall well below it: the weights or threshold miss links; recall near it: \
the misses need another scheme (or carry too few identity values to tokenize). `cross_source` gives precision and recall over the pairs of \
records from two sources only: the pairs an evaluation joining agencies rests on (within one \
agency, most pairs, its own person number can link them).\n\n\
Without --schema the built-in default schema is used; stderr says which.\n\n\
Examples:\n  divert link --truth synth/truth.csv out/*.jsonl\n  \
divert link --truth synth/truth.csv --threshold 3.3 out/*.jsonl   # link only at 9 to 1 or better\n  \
divert link --truth synth/truth.csv --persons persons.csv out/*.jsonl   # each record's person, to study")]
pub struct LinkArgs {
    /// The record schema the records were made with (default: the built-in schema).
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// Link at this match weight (bits, the prior odds of a match included) instead of the
    /// schema's `[linkage] match_weight`: 0 links a pair when a match is more likely than not,
    /// 3.3 at 9 to 1, 6.6 at 99 to 1. (For a schema with the older `threshold` key: evidence
    /// alone, on its scale.)
    #[arg(long, value_name = "BITS", allow_negative_numbers = true)]
    pub threshold: Option<f64>,
    /// Use this `bridge` (bits, on the same scale) instead of the schema's (at least the threshold).
    #[arg(long, value_name = "BITS")]
    pub bridge: Option<f64>,
    /// True entities per record, to score the linkage (columns source,kind,line,entity).
    #[arg(long, value_name = "TRUTH.csv")]
    pub truth: Option<PathBuf>,
    /// Also write each record's person to this CSV (columns source,kind,line,person), to study
    /// the links with other tools. Person numbers are this run's only: they change as records do.
    #[arg(long, value_name = "OUT.csv")]
    pub persons: Option<PathBuf>,
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
    /// Records that carried no token at all (each is a person of its own).
    pub records_without_token: usize,
    pub quality: Quality,
    pub scheme_names: Vec<String>,
    /// Identity field names, in schema order (the quality's fields are numbers).
    pub field_names: Vec<String>,
    pub metrics: Option<Scored>,
    /// Per record, in the order read: (source, kind, line) and its person.
    #[serde(skip)]
    pub assignments: Vec<((String, String, u64), u32)>,
}

/// `--persons`: each record's person, one CSV row per record, written whole or not at all,
/// 0600: who is linked with whom across agencies is itself sensitive.
fn write_persons(path: &Path, rows: &[((String, String, u64), u32)]) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["source", "kind", "line", "person"])?;
    for ((source, kind, line), person) in rows {
        w.write_record([source.as_str(), kind.as_str(), &line.to_string(), &person.to_string()])?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("writing persons: {e}"))?;
    crate::fsutil::write_atomic(path, &bytes, 0o600).with_context(|| format!("writing {}", path.display()))
}

/// Pairwise metrics over every truth row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scored {
    #[serde(flatten)]
    pub pairs: PairMetrics,
    /// Rows of the truth file.
    pub truth_rows: usize,
    /// Truth rows with no record among the files (quarantined, or the file not given): missed.
    pub truth_rows_without_record: usize,
    /// Records with no token: linked to nothing, missed.
    pub records_without_token: usize,
    /// True pairs joined by a chain of shared tokens through records of
    /// their own entity: the most any weights could link with these schemes.
    pub pairs_reachable: u64,
    /// `pairs_reachable` over the true pairs: the recall these tokens allow.
    /// Below it, the weights and threshold miss pairs; above `recall` up to
    /// it, a scheme is missing or a field too damaged for exact tokens.
    pub recall_reachable: f64,
    /// Precision and recall over the pairs whose two records come from two
    /// sources: what an evaluation joining agencies rests on (the pairs
    /// within one agency are most pairs, and an agency's own number links them).
    pub cross_source: CrossSource,
}

/// The number of `name` in `names`, added at the end when new.
fn number(names: &mut Vec<String>, name: &str) -> u16 {
    let i = names.iter().position(|s| s == name).unwrap_or_else(|| {
        names.push(name.to_string());
        names.len() - 1
    });
    i as u16
}

pub fn run(args: LinkArgs) -> anyhow::Result<()> {
    let mut schema = super::load_schema_noted(args.schema.as_deref())?;
    if args.threshold.is_some() || args.bridge.is_some() {
        let threshold = args.threshold.unwrap_or(schema.linkage.threshold);
        let bridge = args.bridge.unwrap_or(schema.linkage.bridge.max(threshold));
        if let Err((bad, what)) = linkage_range(threshold, bridge, schema.linkage.with_prior) {
            let flag = if bad == LinkageValue::Threshold { "--threshold" } else { "--bridge" };
            let scale = if schema.linkage.with_prior { "match weight" } else { "the schema's older `threshold` scale" };
            bail!("{flag} must be {what} ({scale})");
        }
        schema.linkage.threshold = threshold;
        schema.linkage.bridge = bridge;
    }
    let report = link_files(&schema, &args.files, args.truth.as_deref())?;
    if let Some(out) = &args.persons {
        write_persons(out, &report.assignments)?;
    }
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
    if r.records_without_token > 0 {
        println!("records without any token (persons of their own): {}", r.records_without_token);
    }
    print_quality(&r.quality, &r.scheme_names, &r.field_names);
    if let Some(m) = &r.metrics {
        println!(
            "true pairs joined by shared tokens within their entity: {} of {} (the recall these schemes allow: {:.4})",
            m.pairs_reachable, m.pairs.pairs_true, m.recall_reachable
        );
        println!(
            "{}",
            serde_json::json!({
                "precision": m.pairs.precision, "recall": m.pairs.recall, "f1": m.pairs.f1,
                "pairs_true": m.pairs.pairs_true, "pairs_found": m.pairs.pairs_found,
                "truth_rows": m.truth_rows, "truth_rows_without_record": m.truth_rows_without_record,
                "records_without_token": m.records_without_token,
                "pairs_reachable": m.pairs_reachable, "recall_reachable": m.recall_reachable,
                "cross_source": m.cross_source,
            })
        );
    }
}

/// The linkage quality summary (no truth needed): estimates, weights, expected errors.
pub fn print_quality(q: &Quality, names: &[String], field_names: &[String]) {
    println!(
        "linkage: {} {} bits, bridge {} bits, prior {:.1} bits{}; {} candidate pairs, {} links ({} not bridged); m/u {}",
        if q.weights_include_prior { "link at match weight" } else { "link at evidence (older `threshold`)" },
        q.threshold_bits,
        q.bridge_bits,
        q.prior_bits,
        if q.weights_include_prior { " (included in every weight)" } else { " (left out)" },
        q.candidate_pairs,
        q.links,
        q.links_not_bridged,
        if q.estimated {
            format!("estimated by EM in {} iterations", q.em_iterations)
        } else {
            "from the schema's prior (too few pairs to estimate)".into()
        }
    );
    for (g, group) in q.groups.iter().enumerate() {
        println!("  group {g} (level: the first agreeing scheme)   {:>8} {:>10} {:>7}", "m", "u", "bits");
        for &k in &group.schemes {
            let (Some(name), Some(s)) = (names.get(k), q.schemes.get(k)) else { continue };
            let prior = if s.from_prior { "  (prior)" } else { "" };
            println!("    {name:<42} {:>8.4} {:>10.2e} {:>7.1}{prior}", s.m, s.u, s.agree_bits);
        }
        println!("    {:<42} {:>8.4} {:>10.2e} {:>7.1}", "(none agrees)", group.m_none, group.u_none, group.none_bits);
    }
    let counted: Vec<_> = q.fields_shown_to_differ.iter().filter(|f| f.counted).collect();
    if !counted.is_empty() {
        println!("  a field the tokens show to differ (beyond the levels)      m          u    bits");
        for f in counted {
            let name = field_names.get(f.field).map_or("?", String::as_str);
            println!("    {name:<42} {:>8.4} {:>10.2e} {:>7.1}", f.m, f.u, f.differ_bits);
        }
    }
    println!(
        "  estimated share of persons merged: {:.4}, split: {:.4} (from pairs that share a token)",
        q.estimated_merged_share, q.estimated_split_share
    );
    if q.records_without_token > 0 {
        println!(
            "  split {:.4} if each record without a token belongs to a person with other records",
            q.estimated_split_share_with_tokenless
        );
    }
}

/// Link the records of `files`, optionally scoring them against `truth`.
pub fn link_files(schema: &Schema, files: &[PathBuf], truth: Option<&Path>) -> anyhow::Result<LinkReport> {
    let scheme_index: HashMap<&str, usize> =
        schema.schemes.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let mut linker = Linker::new(&schema.linkage, schema.schemes.len());
    let mut records_without_token = 0usize;
    let mut sources: Vec<u16> = Vec::new();
    let mut source_names: Vec<String> = Vec::new();
    let mut epochs = BTreeSet::new();
    let mut tokens: Vec<Option<Token>> = vec![None; schema.schemes.len()];
    let mut record_keys: Vec<(String, String, u64)> = Vec::new();
    let truth_rows = truth.map(read_truth).transpose()?;
    // With a truth file: each record's entity (looked up once), which truth rows a record had, and what tokens join.
    let mut entities: Vec<u32> = Vec::new();
    let mut seen = vec![false; truth_rows.as_ref().map_or(0, HashMap::len)];
    let mut reach = Reach::default();
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
            records_without_token += usize::from(tokens.iter().all(Option::is_none));
            if let (Some(t), Some(truth)) = (truth, truth_rows.as_ref()) {
                let Some(&(e, row)) = truth.get(&(rec.source.clone(), rec.kind.clone(), rec.line)) else {
                    bail!("{}: no entity for source {}, kind {}, line {}", t.display(), rec.source, rec.kind, rec.line);
                };
                seen[row] = true;
                entities.push(e);
                reach.add(e, rec.epoch, &tokens);
            }
            let sid = number(&mut source_names, &rec.source);
            linker.add(rec.epoch, u32::from(sid), &tokens)?;
            sources.push(sid);
            record_keys.push((rec.source, rec.kind, rec.line));
        }
    }
    if epochs.len() > 1 {
        eprintln!(
            "divert: warning: the records carry tokens of epochs {epochs:?}; tokens of different epochs never agree"
        );
    }
    let Linkage { persons, quality } = linker.link();
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
    let metrics = match truth_rows {
        Some(truth) => {
            // Every truth row counts: one without a record is a person of its own, found with nobody.
            let mut found = persons.clone();
            let mut missing = 0usize;
            let mut row_sources = sources.clone();
            for ((source, ..), &(e, row)) in truth.iter() {
                if !seen[row] {
                    found.push(n_persons as u32 + missing as u32);
                    entities.push(e);
                    // A source no file was given for: numbered past the files' sources.
                    row_sources.push(number(&mut source_names, source));
                    missing += 1;
                }
            }
            let pairs = pairwise_metrics(&found, &entities);
            let cross_source = cross_source_metrics(&found, &entities, &row_sources);
            let pairs_reachable = reach.pairs();
            Some(Scored {
                pairs,
                truth_rows: truth.len(),
                truth_rows_without_record: missing,
                records_without_token,
                pairs_reachable,
                recall_reachable: if pairs.pairs_true == 0 {
                    1.0
                } else {
                    pairs_reachable as f64 / pairs.pairs_true as f64
                },
                cross_source,
            })
        }
        None => None,
    };
    Ok(LinkReport {
        records: persons.len(),
        persons: n_persons,
        persons_by_sources,
        records_without_token,
        quality,
        scheme_names: schema.schemes.iter().map(|s| s.name.clone()).collect(),
        field_names: schema.identity.iter().map(|f| f.name.clone()).collect(),
        metrics,
        assignments: record_keys.into_iter().zip(persons).collect(),
    })
}

/// Which records of one true entity a chain of shared tokens joins
/// (scoring only: it needs the truth, which the steward never has).
#[derive(Default)]
struct Reach {
    /// Union-find over records, in the order added.
    parent: Vec<u32>,
    /// (entity, epoch, scheme, token) → the first record of that entity with it.
    first: HashMap<(u32, u32, u8, Token), u32>,
}

impl Reach {
    /// Add the next record, of true entity `entity`.
    fn add(&mut self, entity: u32, epoch: u32, tokens: &[Option<Token>]) {
        let me = self.parent.len() as u32;
        self.parent.push(me);
        for (s, t) in tokens.iter().enumerate() {
            let Some(t) = t else { continue };
            let first = *self.first.entry((entity, epoch, s as u8, *t)).or_insert(me);
            if first != me {
                let (a, b) = (find(&mut self.parent, first), find(&mut self.parent, me));
                self.parent[a.max(b) as usize] = a.min(b);
            }
        }
    }

    /// Pairs of records in one joined set.
    fn pairs(mut self) -> u64 {
        let mut size = vec![0u64; self.parent.len()];
        for r in 0..self.parent.len() as u32 {
            size[find(&mut self.parent, r) as usize] += 1;
        }
        size.iter().map(|&n| pairs_of(n)).sum()
    }
}

/// (source, kind, line) → (entity number, truth row number).
type Truth = HashMap<(String, String, u64), (u32, usize)>;

/// Read `source,kind,line,entity` into a map to a dense entity number and
/// the row's number (0.., one per distinct source, kind and line).
fn read_truth(path: &Path) -> anyhow::Result<Truth> {
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
        let key = (get(cs).to_string(), get(ck).to_string(), line);
        let row = out.get(&key).map_or(out.len(), |&(_, row)| row);
        out.insert(key, (e, row));
    }
    Ok(out)
}
