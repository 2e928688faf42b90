//! Pseudonymization throughput on one core: records normalized and tokenized per second for the default schema, beside the bare rate of the HMAC calls it makes, measured in the same run.
//!
//! `cargo bench --bench pseudonymize` (optionally `-- PERSONS`, default 20000 ≈ 1M records).
//! Run by `cargo test --benches` (no `--bench` argument) it is a smoke run at a small size.
//! Plain `std::time`, single-threaded: every figure is one core.

use std::hint::black_box;
use std::time::Instant;

use divert::ingest::{Format, Outcome, Reader, Row};
use divert::keys::EpochKey;
use divert::pseudonymize::{pseudonymize_stream, Pseudonymizer};
use divert::schema::Schema;
use divert::synth::{self, Kind, Params};
use divert::token::{self, Scratch, Tokenizer};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: a smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let persons: u32 =
        std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(if smoke { 200 } else { 20_000 });
    if smoke {
        println!("smoke run (`cargo test --benches`, no `--bench`): it checks that the bench runs; its figures and goal lines are not measurements");
    }
    let schema = Schema::default_schema().expect("built-in schema");
    let key = EpochKey::from_bytes(1, &[0x5a; 32]).expect("key");
    let tokenizer = Tokenizer::new(&schema, &key).expect("tokenizer");

    eprintln!("generating a synthetic program with {persons} referred persons ...");
    let params = Params::defaults().expect("params");
    let dataset = synth::generate(&params, persons, 1);
    let mut exports = Vec::new();
    for &kind in Kind::ALL {
        let mut bytes = Vec::new();
        dataset.write_csv(kind, &mut bytes, |_, _| {}).expect("csv");
        exports.push((kind.agency().as_str(), kind.as_str(), bytes));
    }
    let total_bytes: usize = exports.iter().map(|e| e.2.len()).sum();

    // 1. Ingest + normalize + tokenize, no output: the cost the issue asks
    //    about. Twice: with the memo (`divert pseudonymize` as it runs: an
    //    identity met before costs one HMAC), and without it (every record
    //    hashed scheme by scheme: the rate for records all of new persons).
    let tokenize = |memo: usize| {
        let (mut records, mut hmac_calls, mut token_slots, mut remembered) = (0u64, 0u64, 0u64, 0u64);
        let t = Instant::now();
        for (_, kind_name, bytes) in &exports {
            let kind = schema.kind(kind_name).expect("kind");
            let mut reader = Reader::new(&schema, kind, Format::Csv, &bytes[..]).expect("reader");
            let mut row = Row::new(&schema, kind);
            let mut issues = Vec::new();
            let mut scratch = Scratch::with_memo(memo);
            let mut tokens = Vec::new();
            while let Some(o) = reader.next_row(&mut row, &mut issues).expect("row") {
                issues.clear();
                if o == Outcome::Accepted {
                    tokenizer.tokens(&row.identity, "police", &mut scratch, &mut tokens);
                    black_box(tokenizer.record_id("src", kind_name, &row.record_id));
                    records += 1;
                    if memo == 0 {
                        hmac_calls += 1 + tokens.iter().filter(|t| t.is_some()).count() as u64;
                    }
                    token_slots += tokens.len() as u64;
                }
            }
            remembered += scratch.memo_served();
        }
        (records, hmac_calls, token_slots, remembered, t.elapsed().as_secs_f64())
    };
    // Alternated, twice each, the faster run of each kept: neither runs only on warm caches.
    let (records, hmac_calls, token_bytes, _, cold_a) = tokenize(0);
    let (_, _, _, remembered, memo_a) = tokenize(token::MEMO_ENTRIES);
    let (_, _, _, _, cold_b) = tokenize(0);
    let (_, _, _, _, memo_b) = tokenize(token::MEMO_ENTRIES);
    let (tokenize_secs, memo_secs) = (cold_a.min(cold_b), memo_a.min(memo_b));

    // 2. The whole stream as `divert pseudonymize` runs it: CSV in, JSON lines out (to a sink).
    let t = Instant::now();
    let mut streamed = 0u64;
    for (agency, kind_name, bytes) in &exports {
        let kind = schema.kind(kind_name).expect("kind");
        let mut p = Pseudonymizer::new(&schema, kind, agency, &tokenizer);
        let s = pseudonymize_stream(&mut p, Format::Csv, &bytes[..], std::io::sink(), |_| Ok(())).expect("stream");
        streamed += s.accepted;
    }
    let stream_secs = t.elapsed().as_secs_f64();

    // 3. The bare HMAC calls: as many as step 1 made, on messages of the
    //    same shape (four length-prefixed parts of typical lengths).
    let keys: Vec<ring::hmac::Key> = (0..schema.schemes.len())
        .map(|i| key.derive_hmac_key(format!("bench{i}").as_bytes()).expect("derive"))
        .collect();
    let parts: [&[u8]; 4] = [b"margaret", b"obrien", b"1980-03-14", b"f"];
    let t = Instant::now();
    for i in 0..hmac_calls {
        let mut ctx = ring::hmac::Context::with_key(&keys[(i as usize) % keys.len()]);
        for p in parts {
            ctx.update(&(p.len() as u32).to_be_bytes());
            ctx.update(p);
        }
        black_box(ctx.sign());
    }
    let hmac_secs = t.elapsed().as_secs_f64();

    let per_rec = hmac_calls as f64 / records as f64;
    println!("records: {records} ({:.0} MB of CSV), token slots {token_bytes}, HMAC calls {hmac_calls} ({per_rec:.1} per record)", total_bytes as f64 / 1e6);
    println!(
        "normalize + tokenize:        {:>10.0} records/s ({memo_secs:.2} s; {remembered} records, {:.1}%, of an identity met before in their file and served from the memo: one HMAC each)",
        records as f64 / memo_secs,
        100.0 * remembered as f64 / records as f64
    );
    println!(
        "  every record hashed:       {:>10.0} records/s ({tokenize_secs:.2} s; no memo, as if every record were of a new person)",
        records as f64 / tokenize_secs
    );
    println!(
        "full stream (CSV -> JSONL):  {:>10.0} records/s ({stream_secs:.2} s, {streamed} records)",
        streamed as f64 / stream_secs
    );
    println!(
        "bare HMAC calls alone:       {:>10.0} records/s ({hmac_secs:.2} s, {:.0} HMAC/s)",
        records as f64 / hmac_secs,
        hmac_calls as f64 / hmac_secs
    );
    println!(
        "tokenize rate / HMAC-bound rate: {:.2} (goal: at least 0.5)",
        (records as f64 / tokenize_secs) / (records as f64 / hmac_secs)
    );
}
