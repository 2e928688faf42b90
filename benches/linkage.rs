//! Linkage speed: 1M pseudonymized records linked into persons under the default schema's rule, with the bare `Linker` and as the steward does it (`steward::persons::Persons`).
//!
//! `cargo bench --bench linkage` (optionally `-- PERSONS RUNS`, default 20000
//! referred persons ≈ 1.05M records, 3 runs). Plain `std::time`, one thread.
//!
//! Setup (not timed): the synthetic program's exports, pseudonymized in
//! memory as the agencies would (CSV → ingest → 8 keyed tokens per record →
//! JSON lines) and parsed back into `PseudoRecord`s, in agency and export
//! order (the order batches reach the steward).
//!
//! Timed:
//! 1. `Linker::add` for every record (token slots parsed beforehand) and
//!    `Linker::persons()` — the linkage itself;
//! 2. `Persons::add` in batches of 2,000 records (parsing each record's
//!    token text, linking, keeping the record without its tokens), then
//!    `Persons::population()` (persons numbered, the query population built)
//!    — what the steward does as batches arrive and at the first query.
//!
//! Goal: linkage under 5 s.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use divert::ingest::Format;
use divert::keys::EpochKey;
use divert::linkage::Linker;
use divert::pseudonymize::{pseudonymize_stream, Pseudonymizer};
use divert::record::PseudoRecord;
use divert::schema::Schema;
use divert::steward::persons::Persons;
use divert::synth::{self, Kind, Params};
use divert::token::{parse_token, Token, Tokenizer};

/// Records per batch, as a source daemon sends them.
const BATCH: usize = 2000;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).filter_map(|a| a.parse::<u32>().ok());
    let persons = args.next().unwrap_or(20_000);
    let runs = args.next().unwrap_or(3).max(1) as usize;
    let schema = Arc::new(Schema::default_schema().expect("built-in schema"));
    let key = EpochKey::from_bytes(1, &[0x5a; 32]).expect("key");
    let tokenizer = Tokenizer::new(&schema, &key).expect("tokenizer");

    eprintln!("generating a synthetic program with {persons} referred persons ...");
    let t = Instant::now();
    let dataset = synth::generate(&Params::defaults().expect("params"), persons, 1);
    let generate = t.elapsed();
    let true_persons = dataset.persons.len();

    eprintln!("pseudonymizing {} records in memory ...", dataset.record_count());
    let t = Instant::now();
    let mut records: Vec<PseudoRecord> = Vec::with_capacity(dataset.record_count());
    for &kind in Kind::ALL {
        let mut csv = Vec::new();
        dataset.write_csv(kind, &mut csv, |_, _| {}).expect("csv");
        let k = schema.kind(kind.as_str()).expect("kind");
        let mut p = Pseudonymizer::new(&schema, k, kind.agency().as_str(), &tokenizer);
        let mut jsonl = Vec::new();
        pseudonymize_stream(&mut p, Format::Csv, &csv[..], &mut jsonl, |_| Ok(())).expect("stream");
        for line in jsonl.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            records.push(serde_json::from_slice(line).expect("record"));
        }
    }
    // Agencies send in turn (police, jail, da, casemgmt, treatment), each in export order.
    records.sort_by_key(|r| {
        ["police", "jail", "da", "casemgmt", "treatment"].iter().position(|a| *a == r.source).unwrap_or(usize::MAX)
    });
    let pseudonymize = t.elapsed();
    drop(dataset);
    let n = records.len();

    // Token slots for the bare linker: one per scheme, parsed once.
    let scheme_index: HashMap<&str, usize> =
        schema.schemes.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let n_schemes = schema.schemes.len();
    let mut slots: Vec<Option<Token>> = vec![None; n * n_schemes];
    let mut epochs = Vec::with_capacity(n);
    let mut tokens_total = 0usize;
    for (i, r) in records.iter().enumerate() {
        for (name, text) in &r.tokens {
            if let (Some(&s), Some((_, t))) = (scheme_index.get(name.as_str()), parse_token(text)) {
                slots[i * n_schemes + s] = Some(t);
                tokens_total += 1;
            }
        }
        epochs.push(r.epoch);
    }
    println!(
        "records: {n} ({:.2} tokens per record, {} schemes, {} qualifying sets); true persons: {true_persons}",
        tokens_total as f64 / n as f64,
        n_schemes,
        schema.linkage.qualifying.len()
    );
    println!(
        "setup: generated in {:.1} s, pseudonymized and parsed in {:.1} s (not timed below)",
        secs(generate),
        secs(pseudonymize)
    );
    if n < 1_000_000 {
        println!("note: fewer than 1M records; pass a larger PERSONS");
    }

    // 1. The bare linker.
    let (mut adds, mut numbers, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut found = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let mut linker = Linker::new(&schema.linkage, n_schemes);
        linker.reserve(n);
        for (i, &epoch) in epochs.iter().enumerate() {
            linker.add(epoch, &slots[i * n_schemes..(i + 1) * n_schemes]).expect("add");
        }
        let added = t.elapsed();
        let persons = linker.persons();
        let total = t.elapsed();
        found = persons.iter().copied().max().map_or(0, |m| m as usize + 1);
        black_box(persons);
        adds.push(added);
        numbers.push(total - added);
        totals.push(total);
    }
    let (add, number, total) = (median(adds), median(numbers), median(totals));
    println!("\nLinker (median of {runs}):");
    println!("  add, all records:        {:>7.3} s  ({:.0} records/s)", secs(add), n as f64 / secs(add));
    println!("  persons():               {:>7.3} s", secs(number));
    println!("  linkage total:           {:>7.3} s  -> {found} persons (goal: under 5 s)", secs(total));
    drop(slots);

    // 2. What the steward does: Persons::add batch by batch, then the population.
    let batches: Vec<Vec<PseudoRecord>> = {
        let mut out = Vec::with_capacity(n.div_ceil(BATCH));
        let mut it = records.into_iter().peekable();
        while it.peek().is_some() {
            out.push(it.by_ref().take(BATCH).collect());
        }
        out
    };
    let n_batches = batches.len();
    let persons = Persons::new(schema.clone());
    let t = Instant::now();
    for b in batches {
        persons.add(b);
    }
    let add = t.elapsed();
    let t = Instant::now();
    let pop = persons.population();
    let population = t.elapsed();
    let t = Instant::now();
    let again = persons.population();
    let cached = t.elapsed();
    println!("\nsteward::persons::Persons (one run):");
    println!(
        "  add, {n_batches} batches of {BATCH}: {:>7.3} s  ({:.0} records/s; parses token text, links, keeps records)",
        secs(add),
        n as f64 / secs(add)
    );
    println!(
        "  population():            {:>7.3} s  ({} referred persons, {} events in the query population)",
        secs(population),
        pop.len(),
        pop.event_count()
    );
    println!("  population() again:      {:>7.6} s  (cached until records arrive)", secs(cached));
    println!("  steward total:           {:>7.3} s  (goal for linkage: under 5 s)", secs(add + population));
    black_box(again);
}
