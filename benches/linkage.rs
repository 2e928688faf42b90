//! Linkage speed: 1M pseudonymized records linked into persons with match weights under the default schema, with the bare `Linker` and as the steward does it (`steward::persons::Persons`).
//!
//! `cargo bench --bench linkage` (optionally `-- PERSONS RUNS`, default 20000
//! referred persons ≈ 1.05M records, 3 runs). Plain `std::time`, one thread.
//! Run by `cargo test --benches` (no `--bench` argument) it is a smoke run at a small size.
//!
//! Setup (not timed): the synthetic program's exports, pseudonymized in
//! memory as the agencies would (CSV → ingest → 8 keyed tokens per record →
//! JSON lines) and parsed back into `PseudoRecord`s, in agency and export
//! order (the order batches reach the steward).
//!
//! Timed:
//! 1. `Linker::add` for every record (token slots parsed beforehand: blocking,
//!    candidate pairs, agreement patterns) and `Linker::link()` (EM estimate
//!    of m/u, weights, clustering, quality figures) — the linkage itself;
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
use divert::synth::{self, Agency, Kind, Params};
use divert::token::{parse_token, Token, Tokenizer};

/// Records per batch, as a source daemon sends them.
const BATCH: usize = 2000;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// This thread's time on a CPU and time runnable but waiting for one, from
/// `/proc/thread-self/schedstat` (Linux; zero elsewhere). On a busy machine
/// wall time overstates the work: the on-CPU time is what linking costs.
fn sched() -> (Duration, Duration) {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut f = text.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    (Duration::from_nanos(f.next().unwrap_or(0)), Duration::from_nanos(f.next().unwrap_or(0)))
}

/// Wall time, on-CPU time and time spent waiting for a CPU of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, [Duration; 3]) {
    let (cpu0, wait0) = sched();
    let t = Instant::now();
    let out = f();
    let wall = t.elapsed();
    let (cpu1, wait1) = sched();
    (out, [wall, cpu1.saturating_sub(cpu0), wait1.saturating_sub(wait0)])
}

fn show(d: [Duration; 3]) -> String {
    format!("{:>7.3} s wall, {:>7.3} s on CPU, {:>6.3} s waiting for a CPU", secs(d[0]), secs(d[1]), secs(d[2]))
}

fn median3(v: &[[Duration; 3]]) -> [Duration; 3] {
    [0, 1, 2].map(|i| median(v.iter().map(|d| d[i]).collect()))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mut args = std::env::args().skip(1).filter_map(|a| a.parse::<u32>().ok());
    let persons = args.next().unwrap_or(if smoke { 200 } else { 20_000 });
    let runs = args.next().unwrap_or(if smoke { 1 } else { 3 }).max(1) as usize;
    if smoke {
        println!("smoke run (`cargo test --benches`, no `--bench`): it checks that the bench runs; its figures and goal lines are not measurements");
    }
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
    let turn = |source: &str| Agency::ALL.iter().position(|a| a.as_str() == source).unwrap_or(Agency::ALL.len());
    records.sort_by_key(|r| turn(&r.source));
    let pseudonymize = t.elapsed();
    drop(dataset);
    let n = records.len();

    // Token slots for the bare linker: one per scheme, parsed once.
    let scheme_index: HashMap<&str, usize> =
        schema.schemes.iter().enumerate().map(|(i, s)| (s.name.as_str(), i)).collect();
    let n_schemes = schema.schemes.len();
    let mut slots: Vec<Option<Token>> = vec![None; n * n_schemes];
    let mut epochs = Vec::with_capacity(n);
    let mut scopes: Vec<u32> = Vec::with_capacity(n);
    let mut tokens_total = 0usize;
    for (i, r) in records.iter().enumerate() {
        for (name, text) in &r.tokens {
            if let (Some(&s), Some((_, t))) = (scheme_index.get(name.as_str()), parse_token(text)) {
                slots[i * n_schemes + s] = Some(t);
                tokens_total += 1;
            }
        }
        epochs.push(r.epoch);
        scopes.push(turn(&r.source) as u32);
    }
    println!(
        "records: {n} ({:.2} tokens per record, {} schemes); true persons: {true_persons}",
        tokens_total as f64 / n as f64,
        n_schemes,
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
    let mut quality = None;
    for _ in 0..runs {
        let (linker, add) = timed(|| {
            let mut linker = Linker::new(&schema.linkage, n_schemes);
            linker.reserve(n);
            for (i, &epoch) in epochs.iter().enumerate() {
                linker.add(epoch, scopes[i], &slots[i * n_schemes..(i + 1) * n_schemes]).expect("add");
            }
            linker
        });
        let (linkage, number) = timed(|| linker.link());
        found = linkage.persons.iter().copied().max().map_or(0, |m| m as usize + 1);
        quality = Some(linkage.quality.clone());
        black_box(linkage);
        adds.push(add);
        numbers.push(number);
        totals.push([0, 1, 2].map(|i| add[i] + number[i]));
    }
    let (add, number, total) = (median3(&adds), median3(&numbers), median3(&totals));
    println!("\nLinker (median of {runs} runs):");
    println!("  add, all records:   {}  ({:.0} records/s on CPU)", show(add), n as f64 / secs(add[1]));
    println!("  link():             {}  (EM, weights, clusters, quality)", show(number));
    println!("  linkage total:      {}  -> {found} persons (goal: under 5 s)", show(total));
    if let Some(q) = quality {
        println!(
            "  {} profiles, {} candidate pairs, {} links ({} not bridged), EM {} iterations; estimated merged {:.4}, split {:.4}",
            q.profiles,
            q.candidate_pairs,
            q.links,
            q.links_not_bridged,
            q.em_iterations,
            q.estimated_merged_share,
            q.estimated_split_share
        );
    }
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
    let ((), add) = timed(|| {
        for b in batches {
            persons.add(b);
        }
    });
    let (pop, population) = timed(|| persons.population());
    let (again, cached) = timed(|| persons.population());
    println!("\nsteward::persons::Persons (one run):");
    println!(
        "  add, {n_batches} batches of {BATCH}: {}  ({:.0} records/s on CPU; parses token text, links, keeps records)",
        show(add),
        n as f64 / secs(add[1])
    );
    println!(
        "  population():      {}  ({} referred persons, {} events in the query population)",
        show(population),
        pop.len(),
        pop.event_count()
    );
    println!("  population() again: {:.6} s wall (cached until records arrive)", secs(cached[0]));
    println!(
        "  steward total:      {}  (goal for linkage: under 5 s)",
        show([0, 1, 2].map(|i| add[i] + population[i]))
    );
    black_box(again);
}
