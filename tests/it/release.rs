//! The evaluator's API end to end, through real mTLS on 127.0.0.1 with a PKI per test: a steward holding a pseudonymized synthetic program, role checks both ways, budgets under concurrency, the answer cache, dry runs, restarts and SIGKILL, the audit chain, what never leaves the steward, and `divert query`.
//!
//! The program: `synth::generate(300 persons)`, each agency's CSV export
//! pseudonymized with one fresh linkage key (as the agencies would), posted
//! as batches from the agencies' source certificates (police, jail, da,
//! casemgmt, treatment). Budgets are granted in-process (`Steward::grant`)
//! or with `divert budget grant` against a `divert serve` process.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use divert::ingest::Format;
use divert::keys::EpochKey;
use divert::pki::{self, Role};
use divert::pseudonymize::{pseudonymize_stream, Pseudonymizer};
use divert::record::PseudoRecord;
use divert::schema::Schema;
use divert::synth::{self, Kind, Params};
use divert::token::Tokenizer;
use divert::wire::BATCH_PATH;
use divert::wire::{BudgetView, QueryResponse, BUDGET_PATH, CATALOG_PATH, QUERY_PATH, RELEASES_PATH};
use hyper::StatusCode;
use rustls::ClientConfig;
use serde_json::{json, Value};

use crate::net::{batch, client_config, write_steward_config, Client, LogCapture, Pki, TestSteward};
use crate::util::{divert_in, divert_ok, spawn_serve, start_steward, text, ChildGuard};

/// The evaluator's certificate name in every test.
const EVAL: &str = "eval";
/// Records per batch when loading the program.
const BATCH_RECORDS: usize = 2000;

// ---------------------------------------------------------------------------
// The synthetic program and what must never leave the steward
// ---------------------------------------------------------------------------

/// A pseudonymized synthetic program, grouped by agency, and the values of its exports that must never come out.
struct Program {
    by_agency: Vec<(&'static str, Vec<PseudoRecord>)>,
    secrets: Secrets,
    records: usize,
    /// A synthetic name and a token of the exports, to plant in bad requests.
    a_name: String,
    a_token: String,
}

/// Generated once per test run (300 referred persons, a fresh random linkage key).
fn program() -> &'static Program {
    static PROGRAM: OnceLock<Program> = OnceLock::new();
    PROGRAM.get_or_init(|| build_program(300, 20_250_101))
}

fn build_program(persons: u32, seed: u64) -> Program {
    let schema = Schema::default_schema().expect("built-in schema");
    let dataset = synth::generate(&Params::defaults().expect("params"), persons, seed);
    let key = EpochKey::from_bytes(1, &rand::random::<[u8; 32]>()).expect("fresh key");
    let tokenizer = Tokenizer::new(&schema, &key).expect("tokenizer");
    let mut secrets = Secrets::default();
    let mut by_agency: BTreeMap<&'static str, Vec<PseudoRecord>> = BTreeMap::new();
    for &kind in Kind::ALL {
        let mut csv = Vec::new();
        dataset.write_csv(kind, &mut csv, |_, _| {}).expect("export");
        secrets.add_export(&csv);
        let agency = kind.agency().as_str();
        let k = schema.kind(kind.as_str()).expect("kind in schema");
        let mut p = Pseudonymizer::new(&schema, k, agency, &tokenizer);
        let mut jsonl = Vec::new();
        let summary = pseudonymize_stream(&mut p, Format::Csv, csv.as_slice(), &mut jsonl, |_| Ok(())).expect("stream");
        assert_eq!(summary.quarantined, 0, "{kind:?}: rows quarantined");
        let out = by_agency.entry(agency).or_default();
        for line in jsonl.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let rec: PseudoRecord = serde_json::from_slice(line).expect("pseudonymized record");
            secrets.add_record(&rec);
            out.push(rec);
        }
    }
    for (i, p) in dataset.persons.iter().enumerate() {
        secrets.words.insert(synth::Person::entity_id(i as u32));
        for name in [p.given, p.family] {
            secrets.add_name(name);
        }
    }
    let records = by_agency.values().map(Vec::len).sum();
    let first = &by_agency["police"][0];
    let a_token = first.tokens.values().next().expect("a token").clone();
    let a_name = dataset.persons[0].family.to_string();
    Program { by_agency: by_agency.into_iter().collect(), secrets, records, a_name, a_token }
}

/// Identity values of the exports (names, record ids, state ids), tokens, rids and synthetic person ids.
#[derive(Default)]
struct Secrets {
    words: HashSet<String>,
}

impl Secrets {
    fn add_name(&mut self, name: &str) {
        let stripped = synth::names::strip_diacritics(name).into_owned();
        for form in [name.to_string(), stripped] {
            for w in [form.clone(), form.to_uppercase()] {
                for part in w.split(|c: char| !c.is_alphabetic()).filter(|p| p.chars().count() >= 3) {
                    self.words.insert(part.to_string());
                }
                if w.chars().count() >= 3 {
                    self.words.insert(w);
                }
            }
        }
    }

    /// Record ids (column 0), names and state ids of one CSV export.
    fn add_export(&mut self, csv_bytes: &[u8]) {
        let mut r = csv::ReaderBuilder::new().flexible(true).from_reader(csv_bytes);
        let headers: Vec<String> = r
            .headers()
            .expect("header")
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').to_ascii_lowercase())
            .collect();
        const NAMES: [&str; 8] =
            ["family_name", "given_name", "last_name", "first_name", "last", "first", "lname", "fname"];
        const STATE_IDS: [&str; 3] = ["state_id", "sid", "state_id_number"];
        for row in r.records() {
            let row = row.expect("csv row");
            for (i, cell) in row.iter().enumerate() {
                let cell = cell.trim();
                if cell.is_empty() {
                    continue;
                }
                let h = headers.get(i).map(String::as_str).unwrap_or("");
                if i == 0 || STATE_IDS.contains(&h) {
                    self.words.insert(cell.to_string());
                } else if NAMES.contains(&h) {
                    self.add_name(cell);
                }
            }
        }
    }

    fn add_record(&mut self, r: &PseudoRecord) {
        self.words.insert(r.rid.clone());
        for t in r.tokens.values() {
            self.words.insert(t.split_once(':').map_or(t.as_str(), |(_, hex)| hex).to_string());
        }
    }

    /// What of the secrets `text` contains, and any token-shaped string (`<epoch>:<32 hex>`).
    fn found_in(&self, text: &str) -> Vec<String> {
        let mut found = BTreeMap::new();
        let b = text.as_bytes();
        for (i, _) in text.match_indices(':') {
            // `<digits>:<exactly 32 lowercase hex>`, the digits starting a word (not `sha256:`).
            let mut s = i;
            while s > 0 && b[s - 1].is_ascii_digit() {
                s -= 1;
            }
            let word_start = s == 0 || !b[s - 1].is_ascii_alphanumeric();
            let hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
            let end = i + 1 + 32;
            if s < i
                && word_start
                && end <= b.len()
                && b[i + 1..end].iter().all(hex)
                && !matches!(b.get(end), Some(c) if c.is_ascii_alphanumeric())
            {
                found.insert(format!("token-shaped `{}`", &text[s..end]), ());
            }
        }
        for run in text.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\'')) {
            let run = run.trim_matches(|c| c == '-' || c == '\'');
            if run.is_empty() {
                continue;
            }
            let parts = std::iter::once(run).chain(run.split(['-', '\'']));
            for w in parts {
                if self.words.contains(w) {
                    found.insert(format!("`{w}`"), ());
                }
            }
        }
        found.into_keys().collect()
    }

    #[track_caller]
    fn assert_absent(&self, what: &str, text: &str) {
        let found = self.found_in(text);
        assert!(found.is_empty(), "{what} carries data of the exports: {found:?}\n--- {what} ---\n{}", clip(text));
    }
}

fn clip(s: &str) -> String {
    if s.len() <= 4000 {
        s.to_string()
    } else {
        let mut end = 4000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{} … ({} bytes)", &s[..end], s.len())
    }
}

// ---------------------------------------------------------------------------
// Certificates, loading, requests
// ---------------------------------------------------------------------------

/// A PKI with a certificate for every agency, the evaluator, a second evaluator and a stray steward.
struct Certs {
    pki: Pki,
    sources: Vec<(&'static str, PathBuf)>,
    eval: PathBuf,
}

impl Certs {
    fn new(root: &Path) -> Certs {
        let pki = Pki::new(root);
        let sources = ["police", "jail", "da", "casemgmt", "treatment"]
            .into_iter()
            .map(|a| (a, pki.issue(Role::Source, a)))
            .collect();
        let eval = pki.issue(Role::Evaluator, EVAL);
        Certs { pki, sources, eval }
    }

    fn eval_cfg(&self) -> Arc<ClientConfig> {
        client_config(&self.pki.ca_pem(), Some(&self.eval))
    }

    fn source_cfg(&self, agency: &str) -> Arc<ClientConfig> {
        let dir = &self.sources.iter().find(|(a, _)| *a == agency).expect("agency").1;
        client_config(&self.pki.ca_pem(), Some(dir))
    }
}

/// Post the whole program as batches from each agency's certificate; returns the records acknowledged.
async fn load_program(addr: SocketAddr, certs: &Certs) -> usize {
    let mut stored = 0;
    for (agency, records) in &program().by_agency {
        let mut c = Client::connect(addr, certs.source_cfg(agency)).await.expect("source connects");
        for (i, chunk) in records.chunks(BATCH_RECORDS).enumerate() {
            let b = batch(agency, &format!("{agency}-{i}"), chunk.to_vec());
            let (status, body) = c.post_batch(&b).await.expect("post batch");
            assert_eq!(status, StatusCode::OK, "{agency} batch {i}: {}", text(&body));
            let ack: Value = serde_json::from_slice(&body).expect("ack");
            stored += ack["stored"].as_u64().expect("stored") as usize;
        }
    }
    assert_eq!(stored, program().records);
    stored
}

/// One request; status, parsed JSON (Null if not JSON) and the raw body.
async fn call(c: &mut Client, method: &str, path: &str, body: Option<&Value>) -> (StatusCode, Value, String) {
    let bytes = body.map(|b| serde_json::to_vec(b).expect("encode")).unwrap_or_default();
    let (status, raw) = c.request(method, path, bytes).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let v = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    (status, v, text(&raw))
}

/// One request on a fresh connection (refusals before the body is read close the connection).
async fn call_once(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value, String) {
    let mut c = Client::connect(addr, cfg).await.expect("connect");
    call(&mut c, method, path, body).await
}

async fn budget(c: &mut Client) -> BudgetView {
    let (status, v, raw) = call(c, "GET", BUDGET_PATH, None).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    serde_json::from_value(v).expect("budget view")
}

fn micro(e: f64) -> u64 {
    (e * 1e6).round() as u64
}

fn response(raw: &str) -> QueryResponse {
    serde_json::from_str(raw).unwrap_or_else(|e| panic!("not a query response ({e}): {raw}"))
}

/// The released values of an answer, as JSON (byte-comparable).
fn values_json(r: &QueryResponse) -> String {
    serde_json::to_string(&r.answer.as_ref().expect("an answer").values).expect("encode values")
}

/// A steward in this process holding the program, with an evaluator and the agencies' certificates.
struct Setup {
    tmp: tempfile::TempDir,
    certs: Certs,
    st: TestSteward,
}

impl Setup {
    async fn new() -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let certs = Certs::new(tmp.path());
        let st = TestSteward::start(&certs.pki, &tmp.path().join("steward"), "").await;
        load_program(st.addr, &certs).await;
        Setup { tmp, certs, st }
    }

    fn steward_dir(&self) -> PathBuf {
        self.tmp.path().join("steward")
    }

    fn audit_path(&self) -> PathBuf {
        self.steward_dir().join("data").join(divert::steward::AUDIT_FILE)
    }

    async fn eval(&self) -> Client {
        Client::connect(self.st.addr, self.certs.eval_cfg()).await.expect("evaluator connects")
    }
}

/// Audit entries of one kind.
fn audit_entries(path: &Path, kind: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read audit log")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("audit entry"))
        .filter(|e| e["kind"] == kind)
        .collect()
}

// ---------------------------------------------------------------------------
// In-process steward
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_role_checks_both_ways() {
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).expect("grant");
    let addr = s.st.addr;
    let held = s.st.record_count();
    assert_eq!(held, program().records);

    // An evaluator certificate cannot send a batch: 403, nothing stored.
    let records = program().by_agency[0].1[..10].to_vec();
    for source in ["police", EVAL] {
        let b = batch(
            source,
            "from-an-evaluator",
            records.iter().map(|r| PseudoRecord { source: source.into(), ..r.clone() }).collect(),
        );
        let (status, v, raw) =
            call_once(addr, s.certs.eval_cfg(), "POST", BATCH_PATH, Some(&serde_json::to_value(&b).unwrap())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{raw}");
        assert!(v["error"].as_str().unwrap().contains("only source certificates"), "{raw}");
    }
    assert_eq!(s.st.record_count(), held, "an evaluator's batch was stored");

    // A source certificate cannot use any evaluator endpoint.
    let q = json!({"analysis": "any_arrest", "epsilon": 0.1});
    for (method, path, body) in [
        ("POST", QUERY_PATH, Some(&q)),
        ("GET", CATALOG_PATH, None),
        ("GET", BUDGET_PATH, None),
        ("GET", RELEASES_PATH, None),
    ] {
        let (status, v, raw) = call_once(addr, s.certs.source_cfg("police"), method, path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "source {method} {path}: {raw}");
        assert!(v["error"].as_str().unwrap().contains("only evaluator certificates"), "{raw}");
    }
    assert_eq!(s.st.steward.budgets().unwrap().program_spent_micro, 0, "a source's query spent budget");

    // The evaluator gets 200 on all four.
    let mut c = s.eval().await;
    let (status, catalog, raw) = call(&mut c, "GET", CATALOG_PATH, None).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let names: Vec<&str> = catalog.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"any_arrest") && names.contains(&"referral_funnel"), "{names:?}");
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&q)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let b = budget(&mut c).await;
    assert_eq!((micro(b.total), micro(b.spent), micro(b.left)), (1_000_000, 100_000, 900_000));
    let (status, releases, raw) = call(&mut c, "GET", RELEASES_PATH, None).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    assert_eq!(releases.as_array().unwrap().len(), 1, "{raw}");

    // Another evaluator sees only its own (no) releases and has no budget.
    let other = s.certs.pki.issue(Role::Evaluator, "other-eval");
    let other_cfg = client_config(&s.certs.pki.ca_pem(), Some(&other));
    let (status, v, raw) = call_once(addr, other_cfg.clone(), "GET", RELEASES_PATH, None).await;
    assert_eq!((status, v), (StatusCode::OK, json!([])), "{raw}");
    let (status, v, raw) = call_once(addr, other_cfg, "POST", QUERY_PATH, Some(&q)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{raw}");
    assert!(v["error"].as_str().unwrap().contains("no privacy budget"), "{raw}");

    // A steward certificate as a client: neither a source nor an evaluator.
    let stray = s.certs.pki.issue(Role::Steward, "stray-steward");
    let stray_cfg = client_config(&s.certs.pki.ca_pem(), Some(&stray));
    let b = batch("stray-steward", "x", vec![]);
    let (status, _, raw) =
        call_once(addr, stray_cfg.clone(), "POST", BATCH_PATH, Some(&serde_json::to_value(&b).unwrap())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "steward cert batch: {raw}");
    let (status, _, raw) = call_once(addr, stray_cfg, "POST", QUERY_PATH, Some(&q)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "steward cert query: {raw}");

    // Wrong method and unknown path for an evaluator.
    let (status, _, raw) = call_once(addr, s.certs.eval_cfg(), "GET", QUERY_PATH, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{raw}");
    let (status, _, raw) = call_once(addr, s.certs.eval_cfg(), "GET", "/v1/persons", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{raw}");

    assert_eq!(s.st.record_count(), held);
    assert_eq!(s.st.steward.budgets().unwrap().program_spent_micro, 100_000);
    s.st.stop().await;
}

/// The distinct query number `i`: `any_arrest` over a window of `1 + i % 3650` days.
fn distinct_query(i: u64, epsilon: f64) -> Value {
    json!({"analysis": "any_arrest", "params": {"window_days": (1 + i % 3650).to_string()}, "epsilon": epsilon})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_thousand_concurrent_queries_spend_exactly_the_budget() {
    const CONNECTIONS: u64 = 50;
    const PER_CONNECTION: u64 = 20;
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).expect("grant");
    let barrier = Arc::new(tokio::sync::Barrier::new(CONNECTIONS as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..CONNECTIONS {
        let (addr, cfg, barrier) = (s.st.addr, s.certs.eval_cfg(), barrier.clone());
        tasks.spawn(async move {
            let mut c = Client::connect(addr, cfg).await.expect("connect");
            barrier.wait().await;
            let mut out = Vec::new();
            for k in 0..PER_CONNECTION {
                let q = distinct_query(conn * PER_CONNECTION + k, 0.01);
                out.push(call(&mut c, "POST", QUERY_PATH, Some(&q)).await);
            }
            out
        });
    }
    let mut answered = Vec::new();
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        for (status, v, raw) in r.expect("task") {
            match status {
                StatusCode::OK => {
                    let r = response(&raw);
                    assert!(!r.cached, "{raw}");
                    assert_eq!(micro(r.epsilon_spent), 10_000, "{raw}");
                    answered.push(micro(r.budget.left));
                }
                StatusCode::FORBIDDEN => {
                    let msg = v["error"].as_str().unwrap_or_default();
                    assert!(msg.contains("budget") && msg.contains("0 ε left"), "{raw}");
                    assert_eq!(v["budget_left"], json!(0.0), "{raw}");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {raw}"),
            }
        }
    }
    assert_eq!((answered.len(), refused), (100, 900), "answered, refused");
    // Each reservation saw its own budget: the lefts are exactly 0.99, 0.98, ..., 0.
    answered.sort_unstable();
    assert_eq!(answered, (0..100).map(|k| k * 10_000).collect::<Vec<u64>>());

    let mut c = s.eval().await;
    let b = budget(&mut c).await;
    assert_eq!((micro(b.total), micro(b.spent), micro(b.left)), (1_000_000, 1_000_000, 0), "{b:?}");
    assert_eq!(s.st.steward.budgets().unwrap().program_spent_micro, 1_000_000);
    let (_, releases, _) = call(&mut c, "GET", RELEASES_PATH, None).await;
    assert_eq!(releases.as_array().unwrap().len(), 100);
    let path = s.audit_path();
    assert_eq!(audit_entries(&path, "release").len(), 100);
    assert_eq!(audit_entries(&path, "refusal").iter().filter(|e| e["detail"]["reason"] == "budget").count(), 900);
    assert_eq!(divert::audit::AuditLog::spent_by_evaluator(&path).unwrap().get(EVAL), Some(&1_000_000));
    divert::audit::verify(&path).expect("audit chain");
    s.st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_cache_same_query_same_answer_at_no_cost() {
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).expect("grant");
    let mut c = s.eval().await;
    let q = json!({"analysis": "any_arrest", "epsilon": 0.1});
    let (status, _, raw1) = call(&mut c, "POST", QUERY_PATH, Some(&q)).await;
    assert_eq!(status, StatusCode::OK, "{raw1}");
    let first = response(&raw1);
    assert!(!first.cached);
    assert_eq!(micro(first.epsilon_spent), 100_000);
    let releases_before = audit_entries(&s.audit_path(), "release").len();

    // The same query, and the same query in another spelling (a default given explicitly, a full query).
    let template = divert::query::catalog::find("any_arrest").unwrap().instantiate(&BTreeMap::new()).unwrap();
    let full = divert::query::Query { epsilon: 0.1, ..template };
    for again in [
        q.clone(),
        json!({"analysis": "any_arrest", "params": {"window_days": "182", "epsilon": "0.1"}}),
        json!({"query": serde_json::to_value(&full).unwrap()}),
    ] {
        let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&again)).await;
        assert_eq!(status, StatusCode::OK, "{raw}");
        let r = response(&raw);
        assert!(r.cached, "{again}: not served from the cache: {raw}");
        assert_eq!(r.epsilon_spent, 0.0);
        assert_eq!(values_json(&r), values_json(&first), "{again}: another answer");
        assert_eq!(r.answer.as_ref().unwrap().query_hash, first.answer.as_ref().unwrap().query_hash);
        assert_eq!(micro(r.budget.spent), 100_000, "{raw}");
    }
    assert_eq!(
        audit_entries(&s.audit_path(), "release").len(),
        releases_before,
        "a cached answer was audited as a release"
    );

    // Another epsilon is another query: it spends, and its answer is its own.
    let q2 = json!({"analysis": "any_arrest", "epsilon": 0.2});
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&q2)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let second = response(&raw);
    assert!(!second.cached);
    assert_eq!(micro(second.epsilon_spent), 200_000);
    assert_ne!(second.answer.as_ref().unwrap().query_hash, first.answer.as_ref().unwrap().query_hash);
    let b = budget(&mut c).await;
    assert_eq!((micro(b.spent), micro(b.left)), (300_000, 700_000));
    // And it is cached in its turn.
    let (_, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&q2)).await;
    let again = response(&raw);
    assert!(again.cached);
    assert_eq!(values_json(&again), values_json(&second));
    assert_eq!(micro(budget(&mut c).await.spent), 300_000);

    // The cache is per evaluator: another evaluator pays for the same query.
    let other = s.certs.pki.issue(Role::Evaluator, "other-eval");
    s.st.steward.grant("other-eval", 500_000).unwrap();
    let (status, _, raw) =
        call_once(s.st.addr, client_config(&s.certs.pki.ca_pem(), Some(&other)), "POST", QUERY_PATH, Some(&q)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let theirs = response(&raw);
    assert!(!theirs.cached);
    assert_eq!(micro(theirs.epsilon_spent), 100_000);
    s.st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_dry_run_spends_nothing_and_gives_the_real_intervals() {
    let s = Setup::new().await;
    let mut c = s.eval().await;
    let audit_len = || std::fs::read_to_string(s.audit_path()).unwrap().len();

    // No budget at all: a dry run still answers, and touches nothing.
    let before = audit_len();
    let dry =
        json!({"analysis": "arrests_before_after", "params": {"group_by": "arm,sex"}, "epsilon": 0.3, "dry_run": true});
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&dry)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let r = response(&raw);
    assert!(r.answer.is_none() && !r.cached && r.epsilon_spent == 0.0, "{raw}");
    assert_eq!(r.budget, BudgetView { total: 0.0, spent: 0.0, left: 0.0 });
    let plan = r.dry_run.expect("dry run");
    assert_eq!(plan.epsilon, 0.3);
    assert!(!plan.releases.is_empty() && plan.bounds.is_some(), "{raw}");
    assert_eq!(audit_len(), before, "a dry run wrote to the audit log");
    assert!(s.st.steward.budgets().unwrap().evaluators.is_empty(), "a dry run made a budget record");

    // With a budget: a dry run asking for more than is left still answers and spends nothing.
    s.st.steward.grant(EVAL, 500_000).unwrap();
    let before = audit_len();
    let greedy = json!({"analysis": "any_arrest", "epsilon": 5, "dry_run": true});
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&greedy)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    assert_eq!(budget(&mut c).await, BudgetView { total: 0.5, spent: 0.0, left: 0.5 });
    assert_eq!(audit_len(), before);

    // The real query then: not served from any cache, and its releases are the dry run's.
    let real = json!({"analysis": "arrests_before_after", "params": {"group_by": "arm,sex"}, "epsilon": 0.3});
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&real)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let r = response(&raw);
    assert!(!r.cached);
    let answer = r.answer.expect("answer");
    assert_eq!(answer.releases, plan.releases, "the dry run promised other intervals");
    assert_eq!(answer.query_hash, plan.query_hash);
    assert_eq!(answer.bounds, plan.bounds);
    for cell in &answer.values {
        for n in &cell.noisy {
            let p = plan.releases.iter().find(|p| p.name == n.release).expect("planned release");
            assert_eq!((n.noise_scale, n.ci95_half_width), (p.noise_scale, p.ci95_half_width));
        }
    }
    assert_eq!(micro(budget(&mut c).await.spent), 300_000);
    s.st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_restart_keeps_what_was_spent() {
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).unwrap();
    let q1 = json!({"analysis": "any_arrest", "epsilon": 0.3});
    let q2 = json!({"analysis": "felony_charge", "epsilon": 0.2});
    let mut c = s.eval().await;
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&q1)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let first = response(&raw);
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&q2)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    drop(c);
    let Setup { tmp, certs, st } = s;
    st.stop().await;

    let st = TestSteward::start(&certs.pki, &tmp.path().join("steward"), "").await;
    assert_eq!(st.record_count(), program().records, "held records after the restart");
    let mut c = Client::connect(st.addr, certs.eval_cfg()).await.unwrap();
    assert_eq!(budget(&mut c).await, BudgetView { total: 1.0, spent: 0.5, left: 0.5 });
    // The stored answer survived too.
    let (_, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&q1)).await;
    let again = response(&raw);
    assert!(again.cached, "{raw}");
    assert_eq!(values_json(&again), values_json(&first));
    // What is left is what is left.
    let (status, v, raw) =
        call(&mut c, "POST", QUERY_PATH, Some(&json!({"analysis": "violent_charge", "epsilon": 0.6}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{raw}");
    assert_eq!(v["budget_left"], json!(0.5));
    let (status, _, raw) =
        call(&mut c, "POST", QUERY_PATH, Some(&json!({"analysis": "violent_charge", "epsilon": 0.5}))).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    drop(c);
    st.stop().await;

    // Once more: all of it spent, and the releases list kept.
    let st = TestSteward::start(&certs.pki, &tmp.path().join("steward"), "").await;
    let mut c = Client::connect(st.addr, certs.eval_cfg()).await.unwrap();
    assert_eq!(budget(&mut c).await, BudgetView { total: 1.0, spent: 1.0, left: 0.0 });
    let (_, releases, _) = call(&mut c, "GET", RELEASES_PATH, None).await;
    let eps: Vec<f64> = releases.as_array().unwrap().iter().map(|r| r["epsilon"].as_f64().unwrap()).collect();
    assert_eq!(eps, vec![0.3, 0.2, 0.5]);
    let (status, _, _) = call(&mut c, "POST", QUERY_PATH, Some(&distinct_query(7, 0.000001))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    drop(c);
    st.stop().await;
}

/// Flip one byte of a release entry's query hash (line `n`, 1-based) in the audit log.
fn flip_release_byte(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    let (idx, line) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(r#""kind":"release""#))
        .nth(1)
        .expect("a second release entry");
    let line_start: usize = text.lines().take(idx).map(|l| l.len() + 1).sum();
    let key = r#""query_hash":""#;
    let mut at = line_start + line.find(key).unwrap() + key.len();
    let mut bytes = text.into_bytes();
    if bytes[at..].starts_with(b"sha256:") {
        at += "sha256:".len();
    }
    at += 10;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(path, bytes).unwrap();
    idx as u64 + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_flipped_audit_byte_is_found_and_the_steward_refuses_to_start() {
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).unwrap();
    let mut c = s.eval().await;
    for i in 0..4 {
        let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&distinct_query(i, 0.05))).await;
        assert_eq!(status, StatusCode::OK, "{raw}");
    }
    drop(c);
    let Setup { tmp, certs, st } = s;
    st.stop().await;
    let dir = tmp.path().join("steward");
    let audit = dir.join("data").join(divert::steward::AUDIT_FILE);
    let audit_arg = audit.to_str().unwrap();

    let out = divert_ok(tmp.path(), &["audit", "verify", audit_arg]);
    assert!(text(&out.stdout).contains("chain intact"), "{}", text(&out.stdout));

    let line = flip_release_byte(&audit);
    let out = divert_in(tmp.path(), &["audit", "verify", audit_arg]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "audit verify missed the flipped byte: {stderr}{}", text(&out.stdout));
    assert!(stderr.contains(&format!("BAD ENTRY at line {line} (seq {line})")), "{stderr}");
    assert!(stderr.contains("changed"), "{stderr}");
    assert!(stderr.contains(&format!("{} entries before it check out", line - 1)), "{stderr}");

    // In process: start refuses, naming the log and the entry.
    let err = crate::net::TestSteward::try_start(&certs.pki, &dir, "")
        .await
        .err()
        .expect("the steward started on a broken log");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("audit.log") && msg.contains(&format!("line {line}")) && msg.contains("divert audit verify"),
        "{msg}"
    );

    // As a process: `divert serve` exits with a clear message.
    let config = write_steward_config(&dir, &certs.pki, "127.0.0.1:0", "");
    let log = tmp.path().join("serve.log");
    let mut child = spawn_serve(&config, &log);
    let status = child.wait_for_exit(Duration::from_secs(30));
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("audit.log")
            && stderr.contains(&format!("line {line}"))
            && stderr.contains("divert audit verify"),
        "{stderr}"
    );
}

#[test]
fn release_nothing_leaves_but_noisy_aggregates() {
    // A current-thread runtime so that LogCapture sees the steward's log lines.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let logs = LogCapture::default();
    let _guard = logs.install();
    let secrets = &program().secrets;
    rt.block_on(async {
        let s = Setup::new().await;
        let addr = s.st.addr;
        s.st.steward.grant(EVAL, 2_000_000).unwrap();
        let mut bodies: Vec<(String, String)> = Vec::new();
        let mut c = s.eval().await;
        // Every analysis of the catalog, grouped finely.
        for a in divert::query::catalog() {
            let q = json!({"analysis": a.name, "params": {"group_by": "arm,sex,age_band"}, "epsilon": 0.02});
            let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&q)).await;
            assert_eq!(status, StatusCode::OK, "{}: {raw}", a.name);
            bodies.push((format!("answer to {}", a.name), raw));
            let dry = json!({"analysis": a.name, "epsilon": 0.5, "dry_run": true});
            let (_, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&dry)).await;
            bodies.push((format!("dry run of {}", a.name), raw));
        }
        // Cached, catalog, budget, releases, a budget refusal.
        let again = json!({"analysis": "any_arrest", "params": {"group_by": "arm,sex,age_band"}, "epsilon": 0.02});
        for (m, p, b) in [
            ("POST", QUERY_PATH, Some(&again)),
            ("GET", CATALOG_PATH, None),
            ("GET", BUDGET_PATH, None),
            ("GET", RELEASES_PATH, None),
            ("POST", QUERY_PATH, Some(&json!({"analysis": "any_arrest", "epsilon": 9}))),
        ] {
            let (_, _, raw) = call(&mut c, m, p, b).await;
            bodies.push((format!("{m} {p}"), raw));
        }
        // Bad requests and wrong roles.
        let (a_name, a_token) = (&program().a_name, &program().a_token);
        let bad = [
            json!({"analysis": "no_such_analysis", "epsilon": 0.1}),
            json!({"analysis": "arrests_per_person", "params": {"lower": "10", "upper": "5"}}),
            json!({"analysis": "any_arrest", "epsilon": 0}),
            json!({"analysis": "any_arrest", "params": {"window_days": a_name}}),
            json!({"analysis": "any_arrest", "tokens": [a_token]}),
        ];
        for q in &bad {
            let (status, _, raw) = call_once(addr, s.certs.eval_cfg(), "POST", QUERY_PATH, Some(q)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {raw}");
            bodies.push((format!("error for {q}"), raw));
        }
        let b = batch("police", "leak-check", program().by_agency[0].1[..5].to_vec());
        let as_value = serde_json::to_value(&b).unwrap();
        for (cfg, m, p, body) in [
            (s.certs.eval_cfg(), "POST", BATCH_PATH, Some(&as_value)),
            (s.certs.source_cfg("police"), "POST", QUERY_PATH, Some(&again)),
            (s.certs.source_cfg("police"), "GET", RELEASES_PATH, None),
            (s.certs.eval_cfg(), "GET", "/v1/persons", None),
        ] {
            let (_, _, raw) = call_once(addr, cfg, m, p, body).await;
            bodies.push((format!("{m} {p} by the wrong role"), raw));
        }
        // A source's own duplicate and malformed batches.
        let mut police = Client::connect(addr, s.certs.source_cfg("police")).await.unwrap();
        let (_, dup) =
            police.post_batch(&batch("police", "police-0", program().by_agency[0].1[..5].to_vec())).await.unwrap();
        bodies.push(("duplicate batch ack".into(), text(&dup)));
        let mut broken = serde_json::to_string(&b).unwrap();
        broken.truncate(broken.len() - 3);
        let (_, raw) = police.request("POST", BATCH_PATH, broken.into_bytes()).await.unwrap();
        bodies.push(("malformed batch".into(), text(&raw)));

        for (what, body) in &bodies {
            secrets.assert_absent(what, body);
        }
        let audit = std::fs::read_to_string(s.audit_path()).unwrap();
        secrets.assert_absent("the audit log", &audit);
        let Setup { tmp: _tmp, st, .. } = s;
        st.stop().await;
    });
    let log = logs.text();
    assert!(
        log.contains("released") && log.contains("query refused: budget"),
        "the log capture missed the steward: {}",
        clip(&log)
    );
    secrets.assert_absent("the steward's log", &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_bad_query_errors_never_echo_the_request() {
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).unwrap();
    let addr = s.st.addr;
    // Something an evaluator might paste by mistake, planted where each bad value goes.
    let marker = format!("{}-{}", program().a_name, program().a_token);
    let template = divert::query::catalog::find("arrests_per_person").unwrap().instantiate(&BTreeMap::new()).unwrap();
    let mut full = serde_json::to_value(&template).unwrap();
    full["bounds"] = json!([50, -50]);
    let mut unknown_kind = serde_json::to_value(&template).unwrap();
    unknown_kind["outcome"]["kind"] = json!(marker);
    let cases = [
        ("unknown analysis", json!({"analysis": marker, "epsilon": 0.1})),
        (
            "bad bounds (lower > upper)",
            json!({"analysis": "arrests_per_person", "params": {"lower": "10", "upper": "5"}}),
        ),
        ("bad bounds (not a number)", json!({"analysis": "arrests_per_person", "params": {"upper": marker}})),
        ("bad bounds (full query)", json!({"query": full})),
        ("epsilon 0", json!({"analysis": "any_arrest", "epsilon": 0, "params": {"group_by": "arm"}})),
        ("epsilon 0 (parameter)", json!({"analysis": "any_arrest", "params": {"epsilon": "0"}})),
        ("unknown parameter", json!({"analysis": "any_arrest", "params": {marker.clone(): "1"}})),
        ("unknown record kind (full query)", json!({"query": unknown_kind})),
        ("unknown field", json!({"analysis": "any_arrest", marker.clone(): 1})),
        ("not JSON", Value::String(format!("{{\"analysis\": \"{marker}"))),
    ];
    let mut echoed = Vec::new();
    for (what, body) in &cases {
        let raw_request = match body {
            Value::String(s) => s.clone().into_bytes(),
            v => serde_json::to_vec(v).unwrap(),
        };
        let mut c = Client::connect(addr, s.certs.eval_cfg()).await.unwrap();
        let (status, raw) = c.request("POST", QUERY_PATH, raw_request.clone()).await.unwrap();
        let raw = text(&raw);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {raw}");
        let v: Value = serde_json::from_str(&raw).unwrap_or_else(|_| panic!("{what}: the error is not JSON: {raw}"));
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{what}: no error message: {raw}"));
        assert!(!msg.is_empty());
        if raw.contains(&text(&raw_request)) || raw.contains(&marker) || !program().secrets.found_in(&raw).is_empty() {
            echoed.push(format!("{what}: {raw}"));
        }
    }
    assert_eq!(micro(budget(&mut s.eval().await).await.spent), 0, "a bad query spent budget");
    assert!(
        echoed.is_empty(),
        "{} of {} bad-query errors echo what the request carried (marker `{marker}`):\n{}",
        echoed.len(),
        cases.len(),
        echoed.join("\n")
    );
    s.st.stop().await;
}

/// The curl examples of docs/api.md, against this steward (fails when curl is not installed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_curl_examples_of_the_api_docs_work() {
    crate::util::require_tool("curl", "--version");
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).unwrap();
    let base = format!("https://localhost:{}", s.st.addr.port());
    let e = &s.certs.eval;
    let curl = |extra: &[&str], path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
            .arg("--cert")
            .arg(e.join(pki::CERT_FILE))
            .arg("--key")
            .arg(e.join(pki::KEY_FILE))
            .arg("--cacert")
            .arg(e.join(pki::CA_CERT_FILE))
            .args(extra)
            .arg(format!("{base}{path}"))
            .output()
            .expect("run curl");
        let out = text(&out.stdout);
        let (body, code) = out.rsplit_once('\n').expect("status line");
        (code.to_string(), body.to_string())
    };
    let (code, body) = tokio::task::block_in_place(|| curl(&[], CATALOG_PATH));
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"any_arrest\""), "{body}");
    let post = [
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"analysis": "any_arrest", "params": {"window_days": "182"}, "epsilon": 0.1}"#,
    ];
    let (code, body) = tokio::task::block_in_place(|| curl(&post, QUERY_PATH));
    assert_eq!(code, "200", "{body}");
    let r = response(&body);
    assert_eq!(micro(r.epsilon_spent), 100_000);
    let (code, body) = tokio::task::block_in_place(|| curl(&[], BUDGET_PATH));
    assert_eq!((code.as_str(), body.as_str()), ("200", r#"{"total":1.0,"spent":0.1,"left":0.9}"#));
    // A source certificate with curl gets the role refusal.
    let police = &s.certs.sources[0].1;
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .arg("--cert")
        .arg(police.join(pki::CERT_FILE))
        .arg("--key")
        .arg(police.join(pki::KEY_FILE))
        .arg("--cacert")
        .arg(police.join(pki::CA_CERT_FILE))
        .arg(format!("{base}{CATALOG_PATH}"))
        .output()
        .unwrap();
    let out = text(&out.stdout);
    assert!(out.ends_with("\n403") && out.contains("only evaluator certificates may query"), "{out}");
    s.st.stop().await;
}

// ---------------------------------------------------------------------------
// `divert serve` processes
// ---------------------------------------------------------------------------

/// A `divert serve` steward process on a fresh data directory.
struct Process {
    config: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    child: ChildGuard,
    addr: SocketAddr,
    log: PathBuf,
}

impl Process {
    fn start(dir: &Path, pki: &Pki) -> Process {
        std::fs::create_dir_all(dir).unwrap();
        let config = write_steward_config(dir, pki, "127.0.0.1:0", "");
        let data = dir.join("data");
        let (child, addr, log) = Process::spawn(&config, &data, dir, 0);
        Process { config, data, dir: dir.to_path_buf(), child, addr, log }
    }

    fn spawn(config: &Path, data: &Path, dir: &Path, n: u32) -> (ChildGuard, SocketAddr, PathBuf) {
        let log = dir.join(format!("steward-{n}.log"));
        let (child, addr) = start_steward(config, data, &log, Duration::from_secs(60));
        (child, addr, log)
    }

    /// Start again on the same data (after a kill or a stop).
    fn restart(&mut self, n: u32) {
        let (child, addr, log) = Process::spawn(&self.config, &self.data, &self.dir, n);
        (self.child, self.addr, self.log) = (child, addr, log);
    }

    /// An evaluator config (`<dir>/eval.toml`) for this steward, with the evaluator's certificate of `certs`.
    fn evaluator_config(&self, dir: &Path, certs: &Certs) -> PathBuf {
        let path = dir.join("eval.toml");
        let e = &certs.eval;
        std::fs::write(
            &path,
            format!(
                "role = \"evaluator\"\nname = \"{EVAL}\"\nprogram = \"{}\"\nsteward_url = \"https://localhost:{}\"\n\n[tls]\n\
                 cert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\ncrl = \"{}\"\n",
                crate::net::PROGRAM,
                self.addr.port(),
                e.join(pki::CERT_FILE).display(),
                e.join(pki::KEY_FILE).display(),
                e.join(pki::CA_CERT_FILE).display(),
                e.join(pki::CRL_FILE).display(),
            ),
        )
        .unwrap();
        path
    }

    fn grant(&self, evaluator: &str, epsilon: &str) -> String {
        let out = divert_ok(
            &self.dir,
            &[
                "budget",
                "grant",
                "--config",
                self.config.to_str().unwrap(),
                "--evaluator",
                evaluator,
                "--epsilon",
                epsilon,
                "--force",
            ],
        );
        text(&out.stdout)
    }
}

#[test]
fn release_sigkill_during_a_query_stream_never_leaves_spent_below_the_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::new(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut p = Process::start(&tmp.path().join("steward"), &certs.pki);
    rt.block_on(load_program(p.addr, &certs));
    assert!(p.grant(EVAL, "10").contains("eval: total 10 ε, spent 0 ε, left 10 ε"));

    let answered = Arc::new(AtomicU64::new(0)); // micro-epsilon of the answers received
    let next = Arc::new(AtomicU64::new(0)); // distinct query numbers, never repeated
    let mut answers_total = 0u64;
    let spent_now = |rt: &tokio::runtime::Runtime, addr| {
        rt.block_on(async {
            let mut c = Client::connect(addr, certs.eval_cfg()).await.expect("connect after restart");
            micro(budget(&mut c).await.spent)
        })
    };
    for trial in 0..6u32 {
        if trial > 0 {
            p.restart(trial);
            let spent = spent_now(&rt, p.addr);
            let got = answered.load(Ordering::SeqCst);
            assert!(spent >= got, "trial {trial}: after SIGKILL spent {spent} µε < {got} µε answered");
        }
        let counted = Arc::new(AtomicU64::new(0));
        let mut streams = Vec::new();
        for _ in 0..3 {
            let (addr, cfg) = (p.addr, certs.eval_cfg());
            let (answered, next, counted) = (answered.clone(), next.clone(), counted.clone());
            streams.push(rt.spawn(async move {
                let Ok(mut c) = Client::connect(addr, cfg).await else { return };
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let eps = 0.001 * (1 + i / 3650) as f64;
                    let body = serde_json::to_vec(&distinct_query(i, eps)).unwrap();
                    match c.request("POST", QUERY_PATH, body).await {
                        Ok((StatusCode::OK, raw)) => {
                            let r: QueryResponse = serde_json::from_slice(&raw).expect("response");
                            assert!(!r.cached);
                            answered.fetch_add(micro(r.epsilon_spent), Ordering::SeqCst);
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((status, raw)) => panic!("unexpected {status}: {}", text(&raw)),
                        // The steward died mid-request: that answer never arrived.
                        Err(_) => break,
                    }
                }
            }));
        }
        let delay = 200 + (u64::from(trial) * 7919) % 900;
        std::thread::sleep(Duration::from_millis(delay));
        p.child.sigkill();
        rt.block_on(async {
            for s in streams {
                tokio::time::timeout(Duration::from_secs(20), s).await.expect("stream ended").expect("stream task");
            }
        });
        answers_total += counted.load(Ordering::SeqCst);
    }
    p.restart(99);
    let spent = spent_now(&rt, p.addr);
    let got = answered.load(Ordering::SeqCst);
    assert!(answers_total >= 20, "only {answers_total} answers in all trials: the test exercised little");
    assert!(spent >= got, "spent {spent} µε < {got} µε answered");
    assert!(spent <= 10_000_000, "overspent: {spent}");
    // The audit log, repaired of any torn line on restart, verifies and accounts for every answer.
    let audit = p.data.join(divert::steward::AUDIT_FILE);
    let audited = *divert::audit::AuditLog::spent_by_evaluator(&audit).unwrap().get(EVAL).unwrap_or(&0);
    assert!(audited >= got && audited <= spent, "audited {audited} µε, answered {got} µε, spent {spent} µε");
    divert_ok(tmp.path(), &["audit", "verify", audit.to_str().unwrap()]);
    p.child.stop();
    eprintln!("SIGKILL trials: {answers_total} answers ({got} µε), spent {spent} µε, audited {audited} µε");
}

#[test]
fn release_query_cli_against_a_steward_process() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::new(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut p = Process::start(&tmp.path().join("steward"), &certs.pki);
    rt.block_on(load_program(p.addr, &certs));
    assert!(p.grant(EVAL, "1").contains("eval: total 1 ε"));

    let eval_toml = p.evaluator_config(tmp.path(), &certs);
    let cfg = eval_toml.to_str().unwrap();
    let query = |args: &[&str]| {
        let mut all = vec!["query", "--config", cfg];
        all.extend_from_slice(args);
        divert_in(tmp.path(), &all)
    };
    let ok = |args: &[&str]| {
        let out = query(args);
        assert!(out.status.success(), "divert query {args:?}: {}{}", text(&out.stderr), text(&out.stdout));
        text(&out.stdout)
    };

    let catalog = ok(&["--catalog"]);
    assert!(catalog.contains("any_arrest  (statistic 3)"), "{catalog}");
    assert!(catalog.contains("--param window_days=182"), "{catalog}");
    assert!(catalog.contains("referral_funnel"), "{catalog}");

    let answer = ok(&["--analysis", "any_arrest", "--epsilon", "0.2"]);
    for want in [
        "95% interval",
        "arm=diversion",
        "arm=comparison",
        "share",
        "persons",
        "epsilon spent: 0.2;",
        "budget: 0.8 of 1 left",
    ] {
        assert!(answer.contains(want), "no `{want}` in:\n{answer}");
    }
    let again = ok(&["--analysis", "any_arrest", "--epsilon", "0.2"]);
    assert!(again.contains("the stored answer to this query: nothing spent"), "{again}");
    let rows = |s: &str| s.lines().filter(|l| l.starts_with("arm=")).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(rows(&answer), rows(&again), "the cached answer differs");

    let b = ok(&["--budget"]);
    assert!(b.contains("budget: total 1.0 ε, spent 0.2 ε, left 0.8 ε"), "{b}");

    let dry =
        ok(&["--analysis", "arrests_before_after", "--param", "window_days=182", "--epsilon", "0.5", "--dry-run"]);
    assert!(dry.contains("dry run (no data touched, no budget spent): epsilon 0.5"), "{dry}");
    assert!(dry.contains("95% interval ±") && dry.contains("clamped to"), "{dry}");
    assert!(dry.contains("epsilon spent: 0;"), "{dry}");
    assert!(ok(&["--budget"]).contains("spent 0.2 ε"), "a dry run spent budget");

    let json_out = ok(&["--analysis", "felony_charge", "--epsilon", "0.1", "--json"]);
    let r = response(json_out.trim());
    assert_eq!(micro(r.epsilon_spent), 100_000);
    assert_eq!(micro(r.budget.left), 700_000);

    let releases = ok(&["--releases"]);
    assert_eq!(releases.lines().count(), 2, "{releases}");
    assert!(releases.contains("ε 0.2") && releases.contains("ε 0.1"), "{releases}");

    // Refused: more than is left; the budget left is printed, exit 1, nothing spent.
    let out = query(&["--analysis", "any_arrest", "--param", "window_days=90", "--epsilon", "0.9"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}{}", text(&out.stdout));
    assert!(stderr.contains("the steward refused") && stderr.contains("0.7 ε left"), "{stderr}");
    assert!(ok(&["--budget"]).contains("spent 0.3 ε, left 0.7 ε"));
    // A bad query: exit 1 with the steward's words.
    let out = query(&["--analysis", "any_arrest", "--param", "window_days=0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("window_days"), "{}", text(&out.stderr));
    // An epsilon that is not a number is refused by the CLI, never sent as "use the default"
    // (JSON has no NaN: serde writes null, which the API reads as the analysis's default).
    for bad in ["NaN", "inf", "-inf", "1e400", "0", "-1", "10.5", "0.0000001"] {
        for dry in [false, true] {
            let arg = format!("--epsilon={bad}");
            let mut args = vec!["--analysis", "jail_days_before_after", &arg];
            if dry {
                args.push("--dry-run");
            }
            let out = query(&args);
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "--epsilon {bad} accepted: {}", text(&out.stdout));
            assert!(stderr.contains("--epsilon") && stderr.contains(bad), "--epsilon {bad}: {stderr}");
            assert!(!text(&out.stdout).contains("epsilon 1"), "--epsilon {bad}: {}", text(&out.stdout));
        }
    }
    assert!(ok(&["--budget"]).contains("spent 0.3 ε, left 0.7 ε"), "a refused epsilon spent budget");
    assert_eq!(ok(&["--releases"]).lines().count(), 2, "a refused epsilon made a release");

    let show = divert_ok(&p.dir, &["budget", "show", "--config", p.config.to_str().unwrap()]);
    let show = text(&show.stdout);
    assert!(show.contains("eval") && show.contains("0.3") && show.contains("0.7"), "{show}");

    let out = divert_ok(&p.dir, &["audit", "verify", "--config", p.config.to_str().unwrap()]);
    assert!(text(&out.stdout).contains("chain intact"));
    p.child.stop();
    let log = std::fs::read_to_string(&p.log).unwrap();
    assert!(log.contains("released"), "{}", clip(&log));
    program().secrets.assert_absent("the steward process's log", &log);
}

/// The leak checks above would see a leak: the detector finds tokens, rids, names, record ids and state ids.
#[test]
fn release_leak_detector_sees_what_it_looks_for() {
    let p = program();
    let s = &p.secrets;
    let rec = &p.by_agency.iter().find(|(a, _)| *a == "jail").unwrap().1[0];
    let found = s.found_in(&serde_json::to_string(rec).unwrap());
    assert!(found.iter().any(|f| f.starts_with("token-shaped")), "{found:?}");
    assert!(found.contains(&format!("`{}`", rec.rid)), "{found:?}");
    assert!(!s.found_in(&format!("name={} ", p.a_name)).is_empty());
    assert!(!s.found_in(&format!("NAME: {}.", p.a_name.to_uppercase())).is_empty());
    // A jail export row: booking number, names in capitals, state id.
    let dataset = synth::generate(&Params::defaults().unwrap(), 300, 20_250_101);
    let mut csv = Vec::new();
    dataset.write_csv(Kind::Booking, &mut csv, |_, _| {}).unwrap();
    let row = text(&csv).lines().nth(1).unwrap().to_string();
    let found = s.found_in(&row);
    assert!(found.len() >= 3, "{row}: {found:?}");
    // And is quiet on what the steward says.
    assert!(s.found_in("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").is_empty());
    assert!(s.found_in(&serde_json::to_string(&divert::query::catalog()).unwrap()).is_empty());
}

/// The ledger charges at least the epsilon the mechanism spends, and an epsilon too small to
/// charge (under 1 µε) is refused as a bad query, not answered with an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_epsilon_is_charged_in_full() {
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).unwrap();
    let mut c = s.eval().await;
    let mut problems = Vec::new();
    // An epsilon between two micro-epsilon cannot be charged exactly: it is refused, nothing spent.
    for (i, eps) in [0.0000014, 0.0100004].into_iter().enumerate() {
        let before = micro(budget(&mut c).await.spent);
        let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&distinct_query(50 + i as u64, eps))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "ε {eps}: {raw}");
        assert!(raw.contains("multiple of 0.000001"), "ε {eps}: {raw}");
        assert_eq!(micro(budget(&mut c).await.spent), before, "ε {eps} spent budget");
    }
    for (i, eps) in [0.000001, 0.010001, 0.25].into_iter().enumerate() {
        let before = micro(budget(&mut c).await.spent);
        let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&distinct_query(i as u64, eps))).await;
        assert_eq!(status, StatusCode::OK, "ε {eps}: {raw}");
        let r = response(&raw);
        let used = r.answer.as_ref().unwrap().epsilon_spent;
        let used_by_releases: f64 = r.answer.as_ref().unwrap().releases.iter().map(|x| x.epsilon).sum();
        let charged = micro(budget(&mut c).await.spent) - before;
        if (charged as f64) < used * 1e6 - 1e-6 || (charged as f64) < used_by_releases * 1e6 - 1e-6 {
            problems.push(format!(
                "ε {eps}: the mechanism spent {used} ε (releases {used_by_releases} ε) but the ledger charged {charged} µε \
                 (response epsilon_spent {})",
                r.epsilon_spent
            ));
        }
    }
    for eps in [0.0000001, 1e-300] {
        let before = micro(budget(&mut c).await.spent);
        let (status, _, raw) =
            call_once(s.st.addr, s.certs.eval_cfg(), "POST", QUERY_PATH, Some(&distinct_query(99, eps))).await;
        if status != StatusCode::BAD_REQUEST {
            problems.push(format!("ε {eps:e} (under 1 µε, cannot be charged): {status} {raw}, expected 400"));
        }
        assert_eq!(micro(budget(&mut c).await.spent), before, "ε {eps:e} spent budget");
    }
    assert!(problems.is_empty(), "epsilon accounting:\n{}", problems.join("\n"));
    s.st.stop().await;
}

/// A 405 names the methods the endpoint allows (`Allow`, RFC 9110 §15.5.6), as the batch endpoint does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_method_not_allowed_names_the_allowed_methods() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::new(tmp.path());
    let st = TestSteward::start(&certs.pki, &tmp.path().join("steward"), "").await;
    let mut missing = Vec::new();
    for (cfg, method, path, allow) in [
        (certs.source_cfg("police"), "GET", BATCH_PATH, "POST"),
        (certs.eval_cfg(), "GET", QUERY_PATH, "POST"),
        (certs.eval_cfg(), "POST", CATALOG_PATH, "GET"),
        (certs.eval_cfg(), "DELETE", BUDGET_PATH, "GET"),
        (certs.eval_cfg(), "PUT", RELEASES_PATH, "GET"),
    ] {
        let req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n");
        let (status, head, body) = crate::net::raw_exchange(st.addr, cfg, req.as_bytes()).await.expect("exchange");
        assert_eq!(status, 405, "{method} {path}: {head}{}", text(&body));
        let allowed = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("allow").then(|| v.trim().to_string())
        });
        if allowed.as_deref() != Some(allow) {
            missing.push(format!("{method} {path}: Allow {allowed:?}, expected {allow:?}"));
        }
    }
    assert!(missing.is_empty(), "405 without the right Allow header:\n{}", missing.join("\n"));
    st.stop().await;
}

// ---------------------------------------------------------------------------
// Shared denominators, stored replays, answer sizes, evaluation plans
// ---------------------------------------------------------------------------

/// The `persons` noisy inputs of an answer's values (the census's counts), by group.
fn census_inputs(r: &QueryResponse) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = r
        .answer
        .as_ref()
        .expect("an answer")
        .values
        .iter()
        .filter(|c| c.statistic != divert::query::engine::DID)
        .flat_map(|c| {
            let g = serde_json::to_string(&c.group).unwrap();
            c.noisy.iter().filter(|n| n.release == "persons").map(move |n| (g.clone(), n.value))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_shared_denominator_is_released_once_charged_cached_and_audited() {
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).expect("grant");
    let mut c = s.eval().await;
    let releases = || audit_entries(&s.audit_path(), "release").len();
    let before = releases();

    // A dry run says what the census would add.
    let change = json!({"analysis": "arrests_before_after", "params": {"persons_epsilon": "0.2", "lower": "-2", "upper": "2"}, "epsilon": 0.3});
    let mut dry = change.clone();
    dry["dry_run"] = json!(true);
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&dry)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let d = response(&raw);
    assert_eq!(micro(d.epsilon_needed.expect("epsilon_needed")), 500_000, "{raw}");
    let census = d.dry_run.as_ref().and_then(|p| p.persons.as_ref()).expect("the census in the dry run");
    assert_eq!((census.epsilon, census.releases[0].name.as_str()), (0.2, "count"));

    // The first query releases the census and itself: both charged, both audited.
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&change)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let first = response(&raw);
    assert_eq!(micro(first.epsilon_spent), 500_000);
    assert_eq!(releases(), before + 2);
    assert_eq!(micro(budget(&mut c).await.spent), 500_000);
    let answer = first.answer.as_ref().unwrap();
    assert!(answer.values.iter().any(|v| v.statistic == divert::query::engine::DID), "{raw}");
    let counts = census_inputs(&first);
    assert_eq!(counts.len(), 2, "one census count per arm: {counts:?}");

    // Another analysis over the same cohort and grouping reuses it: only its own epsilon.
    let share = json!({"analysis": "any_arrest", "params": {"persons_epsilon": "0.2"}, "epsilon": 0.1});
    let (status, _, raw) = call(&mut c, "POST", QUERY_PATH, Some(&share)).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let second = response(&raw);
    assert_eq!(micro(second.epsilon_spent), 100_000);
    assert_eq!(census_inputs(&second), counts, "the same noisy denominators");
    assert_eq!(releases(), before + 3);

    // The census asked for itself is the stored one, free.
    let census_query = divert::query::Query {
        cohort: Default::default(),
        anchor: Default::default(),
        outcome: None,
        statistic: divert::query::model::Statistic::Count {},
        group_by: vec![divert::query::Category::Arm],
        bounds: None,
        epsilon: 0.2,
        persons: None,
    };
    let (status, _, raw) =
        call(&mut c, "POST", QUERY_PATH, Some(&json!({"query": serde_json::to_value(&census_query).unwrap()}))).await;
    assert_eq!(status, StatusCode::OK, "{raw}");
    let r = response(&raw);
    assert!(r.cached && r.epsilon_spent == 0.0, "{raw}");
    let released: Vec<(String, i64)> = {
        let mut v: Vec<(String, i64)> = r
            .answer
            .unwrap()
            .values
            .iter()
            .map(|c| (serde_json::to_string(&c.group).unwrap(), c.noisy[0].value))
            .collect();
        v.sort();
        v
    };
    assert_eq!(released, counts);

    // Budget for the query but not for its (other) census too: both refused, nothing spent.
    let left_before = budget(&mut c).await;
    let other =
        json!({"analysis": "any_arrest", "params": {"persons_epsilon": "0.3", "arm": "diversion"}, "epsilon": 0.2});
    let (status, v, raw) = call(&mut c, "POST", QUERY_PATH, Some(&other)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{raw}");
    assert!(v["error"].as_str().unwrap_or("").contains("0.5 ε"), "{raw}");
    assert_eq!(budget(&mut c).await, left_before);
    assert_eq!(releases(), before + 3, "the census was released alone");
    s.st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_replay_returns_the_stored_bytes() {
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).expect("grant");
    let mut c = s.eval().await;
    let q = json!({"analysis": "jail_days_per_person_year", "params": {"group_by": "arm,sex"}, "epsilon": 0.3});
    let (status, _, first) = call(&mut c, "POST", QUERY_PATH, Some(&q)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (_, _, again) = call(&mut c, "POST", QUERY_PATH, Some(&q)).await;
    assert!(response(&again).cached);
    // The answer is the first field: its bytes, up to the response's own fields, are the stored ones.
    let answer_of = |raw: &str| raw[..raw.rfind(",\"cached\":").expect("cached field")].to_string();
    assert!(first.starts_with("{\"answer\":{"), "{}", clip(&first));
    assert_eq!(answer_of(&first), answer_of(&again), "the replay is not byte for byte the first answer");
    s.st.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_answer_too_large_to_keep_is_refused_before_charging() {
    let s = Setup::new().await;
    s.st.steward.grant(EVAL, 1_000_000).expect("grant");
    let mut c = s.eval().await;
    let audit_len = || std::fs::read_to_string(s.audit_path()).unwrap().len();
    let huge = json!({"analysis": "housing_at_month", "params": {"group_by": "arm,sex,age_band,race_ethnicity,referral_type"}, "epsilon": 0.1});
    let before = audit_len();
    for dry_run in [true, false] {
        let mut q = huge.clone();
        q["dry_run"] = json!(dry_run);
        let (status, v, raw) = call(&mut c, "POST", QUERY_PATH, Some(&q)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "dry run {dry_run}: {}", clip(&raw));
        let e = v["error"].as_str().unwrap_or("");
        assert!(e.contains("more than the 4194304 the steward keeps") && e.contains("group by fewer"), "{e}");
    }
    assert_eq!(budget(&mut c).await, BudgetView { total: 1.0, spent: 0.0, left: 1.0 }, "charged for nothing");
    assert_eq!(audit_len(), before, "a refused query left an audit entry");
    s.st.stop().await;
}

#[test]
fn release_plan_and_evaluate_cli_spend_once_then_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = Certs::new(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut p = Process::start(&tmp.path().join("steward"), &certs.pki);
    rt.block_on(load_program(p.addr, &certs));
    assert!(p.grant(EVAL, "2").contains("eval: total 2 ε"));
    let eval_toml = p.evaluator_config(tmp.path(), &certs);
    let cfg = eval_toml.to_str().unwrap();
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/config/evaluation.toml");
    let run = |args: &[&str]| {
        let out = divert_in(tmp.path(), args);
        assert!(out.status.success(), "divert {args:?}: {}{}", text(&out.stderr), text(&out.stdout));
        text(&out.stdout)
    };
    let budget_line = || run(&["query", "--config", cfg, "--budget"]);

    // The planner: epsilons and expected intervals, nothing spent, nothing audited.
    let audit = p.data.join(divert::steward::AUDIT_FILE);
    let audit_before = std::fs::read_to_string(&audit).unwrap().len();
    let planned = run(&["query", "--config", cfg, "--plan", plan]);
    for want in ["arrests_before_after", "[headline", "difference_in_differences", "expected ±", "planned: 2 ε of 2"]
    {
        assert!(planned.contains(want), "no `{want}` in:\n{planned}");
    }
    assert!(budget_line().contains("spent 0.0 ε"), "the planner spent budget");
    assert_eq!(std::fs::read_to_string(&audit).unwrap().len(), audit_before, "the planner was audited as a release");

    // The planner's releases are the released ones.
    let json_plan: Value = serde_json::from_str(&run(&["query", "--config", cfg, "--plan", plan, "--json"])).unwrap();

    // A plan the budget does not cover spends nothing.
    let greedy = tmp.path().join("greedy.toml");
    std::fs::write(&greedy, std::fs::read_to_string(plan).unwrap().replace("epsilon = 2.0", "epsilon = 3.0")).unwrap();
    let out = divert_in(tmp.path(), &["evaluate", "--config", cfg, "--plan", greedy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nothing was spent"), "{}", text(&out.stderr));
    assert!(budget_line().contains("spent 0.0 ε"));

    // The plan: everything released, the report written, the whole budget spent.
    let html = tmp.path().join("report.html");
    let first = run(&["evaluate", "--config", cfg, "--plan", plan, "--out", html.to_str().unwrap()]);
    for want in ["HEADLINE", "with 95% confidence", "Between the arms", "WHERE THE PRIVACY BUDGET WENT", "k times"] {
        assert!(first.contains(want), "no `{want}` in:\n{first}");
    }
    assert!(!first.contains("True value"), "a real report shows true values");
    let report = std::fs::read_to_string(&html).unwrap();
    assert!(report.contains("chart-headline") && report.contains("Where the privacy budget went"));
    assert!(report.find("Headline").unwrap() < report.find("Every released statistic").unwrap());
    assert!(budget_line().contains("spent 2.0 ε, left 0.0 ε"), "{}", budget_line());

    // Run again: every answer replayed, nothing spent, the same numbers.
    let second = run(&["evaluate", "--config", cfg, "--plan", plan, "--out", html.to_str().unwrap()]);
    assert!(second.contains("released earlier; replayed at no cost") && second.contains("0 ε spent now"), "{second}");
    let statistics = |s: &str| {
        let from = s.find("HEADLINE").expect("headline");
        let to = s.find("WHERE THE PRIVACY BUDGET WENT").expect("spending");
        s[from..to].to_string()
    };
    assert_eq!(statistics(&first), statistics(&second), "the replay differs");

    // What the planner predicted per release is what was released.
    let releases: Vec<Value> = serde_json::from_str(&run(&["query", "--config", cfg, "--releases", "--json"])).unwrap();
    assert_eq!(releases.len(), json_plan["evaluation"]["steps"].as_array().unwrap().len());
    p.child.stop();
}
