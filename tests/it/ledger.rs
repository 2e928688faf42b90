//! The budget ledger (real sled on a temp dir) and the audit log (real files): concurrency, restarts, SIGKILL, the hash chain, epsilon parsing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};

use divert::audit::{self, AuditLog, Kind, ReleaseDetail};
use divert::dp::ledger::{parse_epsilon, Budget, EpsilonError, Ledger, LedgerError, Refusal};
use divert::storage::Durable;
use proptest::prelude::*;
use rand::Rng;

const CAP: u64 = 1_000_000_000;

/// Open the store (sled lets go of the file lock of a store closed in this
/// process from a background thread, a moment after the last handle drops).
fn open(path: &Path, cap: u64) -> (Arc<Durable>, Ledger) {
    let db = crate::util::wait_until(std::time::Duration::from_secs(10), "the store's file lock", || {
        Durable::open(path, 1 << 24).map_err(|e| e.to_string())
    });
    let db = Arc::new(db);
    let ledger = Ledger::open(&db, cap).unwrap();
    (db, ledger)
}

fn qhash(i: u64) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&i.to_le_bytes());
    h
}

#[test]
fn thousand_concurrent_reservations_spend_exactly_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, ledger) = open(&dir.path().join("store"), CAP);
    ledger.grant("eval", 1_000_000).unwrap();
    let ledger = Arc::new(ledger);
    let barrier = Arc::new(Barrier::new(1000));
    let handles: Vec<_> = (0..1000u64)
        .map(|i| {
            let ledger = ledger.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                ledger.reserve("eval", qhash(i), 10_000).unwrap()
            })
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let granted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(granted, 100);
    for o in &outcomes {
        if let Err(refusal) = o {
            assert_eq!(*refusal, Refusal::Exhausted { left_micro: 0 });
        }
    }
    assert_eq!(
        ledger.budget("eval").unwrap(),
        Budget { total_micro: 1_000_000, spent_micro: 1_000_000, left_micro: 0 }
    );
    assert_eq!(ledger.program_spent_micro().unwrap(), 1_000_000);
}

#[test]
fn spent_survives_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let (_db, ledger) = open(&path, CAP);
        ledger.grant("eval", 1_000_000).unwrap();
        ledger.reserve("eval", qhash(1), 250_000).unwrap().unwrap();
        ledger.store_answer("eval", qhash(1), b"{\"value\":3}").unwrap();
    }
    {
        let (_db, ledger) = open(&path, CAP);
        assert_eq!(ledger.budget("eval").unwrap().spent_micro, 250_000);
        assert_eq!(ledger.cached("eval", qhash(1)).unwrap().as_deref(), Some(&b"{\"value\":3}"[..]));
        ledger.reserve("eval", qhash(2), 700_000).unwrap().unwrap();
    }
    let (_db, ledger) = open(&path, CAP);
    assert_eq!(
        ledger.budget("eval").unwrap(),
        Budget { total_micro: 1_000_000, spent_micro: 950_000, left_micro: 50_000 }
    );
    assert_eq!(ledger.reserve("eval", qhash(3), 60_000).unwrap(), Err(Refusal::Exhausted { left_micro: 50_000 }));
    assert_eq!(ledger.budgets().unwrap(), vec![("eval".to_string(), ledger.budget("eval").unwrap())]);
}

/// The env var that turns `sigkill_child` into the reserving child process.
const CHILD_ENV: &str = "DIVERT_LEDGER_SIGKILL_CHILD_DB";
const CHILD_AMOUNT: u64 = 1_000;
const CHILD_MARK: &str = "RESERVED ";

/// Not a test on its own (hence ignored): run by
/// `sigkill_never_leaves_spent_below_what_was_answered` as a child process
/// (`--ignored --exact`), it reserves in a loop and reports each reservation
/// after `reserve` returned. Run any other way, it fails.
#[test]
#[ignore = "the child process of sigkill_never_leaves_spent_below_what_was_answered"]
fn sigkill_child() {
    let path = std::env::var(CHILD_ENV).expect(
        "run only as the child of sigkill_never_leaves_spent_below_what_was_answered, which sets the store path",
    );
    let db = Arc::new(Durable::open(Path::new(&path), 1 << 24).unwrap());
    let ledger = Ledger::open(&db, CAP).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        match ledger.reserve("eval", qhash(i), CHILD_AMOUNT).unwrap() {
            Ok(_) => {
                writeln!(out, "{CHILD_MARK}{i}").unwrap();
                out.flush().unwrap();
            }
            Err(_) => break,
        }
    }
    writeln!(out, "EXHAUSTED").unwrap();
}

#[test]
fn sigkill_never_leaves_spent_below_what_was_answered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let (_db, ledger) = open(&path, CAP);
        ledger.grant("eval", 100_000_000).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut received = 0u64;
    for _round in 0..4 {
        let kill_after = rng.gen_range(1..300u64);
        let mut child = Command::new(&exe)
            .args(["ledger::sigkill_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0u64;
        while seen < kill_after {
            match lines.next() {
                Some(Ok(line)) if line.starts_with(CHILD_MARK) => seen += 1,
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        if rng.gen_bool(0.5) {
            std::thread::sleep(std::time::Duration::from_micros(rng.gen_range(0..2000)));
        }
        child.kill().unwrap(); // SIGKILL on Unix
                               // Lines already written before the kill were answered too.
        for line in lines.map_while(Result::ok) {
            if line.starts_with(CHILD_MARK) {
                seen += 1;
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was meant to be killed mid-stream");
        received += seen;
        let (_db, ledger) = open(&path, CAP);
        let spent = ledger.budget("eval").unwrap().spent_micro;
        assert!(spent >= received * CHILD_AMOUNT, "spent {spent} µε, but {received} reservations were answered");
        assert!(spent <= 100_000_000);
    }
    assert!(received > 0);
}

#[test]
fn answers_are_cached_per_evaluator_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, ledger) = open(&dir.path().join("store"), CAP);
    ledger.grant("eval", 1_000_000).unwrap();
    assert_eq!(ledger.cached("eval", qhash(9)).unwrap(), None);
    ledger.reserve("eval", qhash(9), 100_000).unwrap().unwrap();
    assert!(ledger.store_answer("eval", qhash(9), b"answer").unwrap());
    assert_eq!(ledger.cached("eval", qhash(9)).unwrap().as_deref(), Some(&b"answer"[..]));
    assert_eq!(ledger.cached("eval", qhash(10)).unwrap(), None);
    assert_eq!(ledger.cached("other", qhash(9)).unwrap(), None);
    assert_eq!(ledger.budget("eval").unwrap().spent_micro, 100_000);
}

#[test]
fn grants_respect_spent_and_the_program_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (db, ledger) = open(&dir.path().join("store"), 2_000_000);
    ledger.grant("a", 1_500_000).unwrap();
    assert!(matches!(ledger.grant("b", 600_000), Err(LedgerError::OverCap { .. })));
    ledger.grant("b", 500_000).unwrap();
    ledger.reserve("a", qhash(0), 1_000_000).unwrap().unwrap();
    assert!(matches!(ledger.grant("a", 999_999), Err(LedgerError::BelowSpent { .. })));
    assert_eq!(ledger.grant("a", 1_000_000).unwrap().left_micro, 0);
    ledger.grant("b", 1_000_000).unwrap();
    // A lowered cap: the ledger opens, and only lowering grants pass.
    drop(ledger);
    let ledger = Ledger::open(&db, 1_000_000).unwrap();
    assert!(matches!(ledger.grant("b", 1_000_001), Err(LedgerError::OverCap { .. })));
    ledger.grant("b", 0).unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Grant(usize, u64),
    Reserve(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, 0..4_000u64).prop_map(|(e, a)| Op::Grant(e, a)),
        (0..4usize, 1..1_500u64).prop_map(|(e, a)| Op::Reserve(e, a)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The ledger against a model: same outcomes; spent never above total;
    /// totals never above the cap; refusals change nothing.
    #[test]
    fn ledger_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..60)) {
        const MODEL_CAP: u64 = 6_000;
        let names = ["a", "b", "c", "d"];
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Durable::open(dir.path(), 1 << 20).unwrap());
        let ledger = Ledger::open(&db, MODEL_CAP).unwrap();
        let mut model: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            let before = ledger.budgets().unwrap();
            match *op {
                Op::Grant(e, amount) => {
                    let name = names[e];
                    let (total, spent) = model.get(name).copied().unwrap_or((0, 0));
                    let others: u64 = model.iter().filter(|(n, _)| **n != name).map(|(_, (t, _))| t).sum();
                    let ok = amount >= spent && (others + amount <= MODEL_CAP || amount <= total);
                    let got = ledger.grant(name, amount);
                    prop_assert_eq!(got.is_ok(), ok, "grant {} {}: {:?}", name, amount, got);
                    if ok {
                        model.insert(name, (amount, spent));
                    } else {
                        prop_assert_eq!(ledger.budgets().unwrap(), before);
                    }
                }
                Op::Reserve(e, amount) => {
                    let name = names[e];
                    let got = ledger.reserve(name, qhash(i as u64), amount).unwrap();
                    match model.get_mut(name) {
                        None => prop_assert_eq!(got, Err(Refusal::NoBudget)),
                        Some((total, spent)) if *spent + amount > *total => {
                            prop_assert_eq!(got, Err(Refusal::Exhausted { left_micro: *total - *spent }));
                            prop_assert_eq!(ledger.budgets().unwrap(), before);
                        }
                        Some((total, spent)) => {
                            *spent += amount;
                            let r = got.unwrap();
                            prop_assert_eq!(r.budget, Budget { total_micro: *total, spent_micro: *spent, left_micro: *total - *spent });
                        }
                    }
                }
            }
            let budgets = ledger.budgets().unwrap();
            let mut sum = 0;
            for (name, b) in &budgets {
                prop_assert!(b.spent_micro <= b.total_micro);
                prop_assert_eq!(Some(&(b.total_micro, b.spent_micro)), model.get(name.as_str()));
                sum += b.total_micro;
            }
            prop_assert!(sum <= MODEL_CAP);
            prop_assert_eq!(budgets.len(), model.len());
        }
    }
}

#[test]
fn epsilon_text_is_parsed_exactly() {
    assert_eq!(parse_epsilon("0.000001"), Ok(1));
    assert_eq!(parse_epsilon("1.5"), Ok(1_500_000));
    assert_eq!(parse_epsilon("0.01"), Ok(10_000));
    assert_eq!(parse_epsilon("0.3"), Ok(300_000)); // 0.3 is not exact in binary floating point
    assert_eq!(parse_epsilon("10"), Ok(10_000_000));
    assert_eq!(parse_epsilon("007.250000"), Ok(7_250_000));
    assert!(matches!(parse_epsilon("0.0000001"), Err(EpsilonError::TooPrecise { .. })));
    for bad in ["", "-1", "1e-3", "1.", ".", "abc", "1 ", "NaN", "inf"] {
        assert!(matches!(parse_epsilon(bad), Err(EpsilonError::NotDecimal { .. })), "{bad:?}");
    }
}

// ---- audit log ----

fn write_entries(path: &Path, n: u64) -> AuditLog {
    let log = AuditLog::open(path).unwrap();
    for i in 0..n {
        let d = ReleaseDetail {
            evaluator: format!("eval-{}", i % 3),
            query_hash: format!("{i:064x}"),
            epsilon_micro: 1_000 * (i + 1),
            left_micro: 5,
        };
        assert_eq!(log.release(&d).unwrap(), i + 1);
    }
    log
}

#[test]
fn audit_chain_verifies_and_continues_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    drop(write_entries(&path, 5));
    let log = AuditLog::open(&path).unwrap();
    assert_eq!(log.append(Kind::BudgetGrant, "admin", &serde_json::json!({"evaluator": "eval-0"})).unwrap(), 6);
    let report = audit::verify(&path).unwrap();
    assert_eq!(report.entries, 6);
    assert_eq!(report.last_hash.as_ref().map(String::len), Some(64));
    let spent = AuditLog::spent_by_evaluator(&path).unwrap();
    assert_eq!(spent.get("eval-0"), Some(&(1_000 + 4_000)));
    assert_eq!(spent.get("eval-1"), Some(&(2_000 + 5_000)));
    assert_eq!(spent.get("eval-2"), Some(&3_000));
    let empty = dir.path().join("empty.log");
    drop(AuditLog::open(&empty).unwrap());
    assert_eq!(audit::verify(&empty).unwrap(), audit::VerifyReport { entries: 0, last_hash: None });
}

#[test]
fn audit_concurrent_appends_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = Arc::new(AuditLog::open(&path).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    log.append(
                        Kind::Batch,
                        "police",
                        &serde_json::json!({"source": "police", "batch_id": format!("b{t}")}),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(audit::verify(&path).unwrap().entries, 80);
}

#[test]
fn audit_any_flipped_byte_is_found_at_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    drop(write_entries(&path, 6));
    let original = std::fs::read(&path).unwrap();
    // Which line each byte belongs to (1-based; the newline ends its line).
    let mut line_of = Vec::with_capacity(original.len());
    let mut line = 1u64;
    for &b in &original {
        line_of.push(line);
        if b == b'\n' {
            line += 1;
        }
    }
    let mut rng = rand::thread_rng();
    let mut positions: Vec<usize> = (0..200).map(|_| rng.gen_range(0..original.len())).collect();
    positions.extend([0, original.len() - 1, original.len() / 2]);
    for pos in positions {
        let mut bytes = original.clone();
        bytes[pos] ^= 1 << rng.gen_range(0..8);
        let flipped = dir.path().join("flipped.log");
        std::fs::write(&flipped, &bytes).unwrap();
        let err = audit::verify(&flipped).expect_err("a flipped byte must break the chain");
        assert_eq!(err.line, line_of[pos], "byte {pos}: {err}");
        assert_eq!(err.good_entries, line_of[pos] - 1);
    }
}

#[test]
fn audit_deleted_or_swapped_line_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    drop(write_entries(&path, 5));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let broken = dir.path().join("broken.log");

    let mut without_third: Vec<&str> = lines.clone();
    without_third.remove(2);
    std::fs::write(&broken, without_third.join("\n") + "\n").unwrap();
    let err = audit::verify(&broken).unwrap_err();
    assert_eq!((err.line, err.seq), (3, Some(4)), "{err}");

    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    std::fs::write(&broken, swapped.join("\n") + "\n").unwrap();
    let err = audit::verify(&broken).unwrap_err();
    assert_eq!((err.line, err.seq), (2, Some(3)), "{err}");

    // An edited entry no longer matches its hash.
    let mut edited: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    edited["detail"]["epsilon_micro"] = serde_json::json!(1);
    let mut changed = lines.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    changed[1] = serde_json::to_string(&edited).unwrap();
    std::fs::write(&broken, changed.join("\n") + "\n").unwrap();
    assert_eq!(audit::verify(&broken).unwrap_err().line, 2);
}

#[test]
fn audit_torn_last_line_is_cut_off_on_open_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    drop(write_entries(&path, 4));
    let whole = std::fs::read(&path).unwrap();
    // A crash mid-append: half of a fifth line, no newline.
    let log = write_entries(&dir.path().join("other.log"), 5);
    drop(log);
    let fifth = std::fs::read_to_string(dir.path().join("other.log")).unwrap();
    let fifth = fifth.lines().nth(4).unwrap().as_bytes().to_vec();
    let mut torn = whole.clone();
    torn.extend_from_slice(&fifth[..fifth.len() / 2]);
    std::fs::write(&path, &torn).unwrap();

    // verify reports it (an unterminated line is not part of a whole chain) …
    let err = audit::verify(&path).unwrap_err();
    assert_eq!((err.line, err.good_entries), (5, 4), "{err}");
    assert!(err.reason.contains("unterminated"), "{err}");
    // … reconciliation ignores it (never acknowledged) …
    assert_eq!(AuditLog::spent_by_evaluator(&path).unwrap().values().sum::<u64>(), 1_000 + 2_000 + 3_000 + 4_000);
    // … and opening cuts it off, records the recovery, and continues the chain.
    let log = AuditLog::open(&path).unwrap();
    assert_eq!(log.append(Kind::Refusal, "eval-0", &serde_json::json!({"reason": "budget exhausted"})).unwrap(), 6);
    drop(log);
    let report = audit::verify(&path).unwrap();
    assert_eq!(report.entries, 6);
    let text = std::fs::read_to_string(&path).unwrap();
    let recovery: serde_json::Value = serde_json::from_str(text.lines().nth(4).unwrap()).unwrap();
    assert_eq!(recovery["kind"], "recovery");
    assert_eq!(recovery["detail"]["dropped_torn_line_bytes"], fifth.len() / 2);
    assert!(text.as_bytes().starts_with(&whole));

    // A damaged last *complete* line is not silently repaired.
    let mut bad = std::fs::read(&path).unwrap();
    let n = bad.len();
    bad[n - 10] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(AuditLog::open(&path), Err(audit::AuditError::Damaged { .. })));
}

#[test]
fn audit_reconcile_raises_the_ledger_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.log");
    let (_db, ledger) = open(&dir.path().join("store"), CAP);
    ledger.grant("eval-0", 1_000_000).unwrap();
    let log = AuditLog::open(&audit_path).unwrap();
    // Steward order: reserve → (noise) → audit → store answer.
    let r = ledger.reserve("eval-0", qhash(1), 40_000).unwrap().unwrap();
    log.release(&ReleaseDetail {
        evaluator: "eval-0".into(),
        query_hash: "01".repeat(32),
        epsilon_micro: r.epsilon_micro,
        left_micro: r.budget.left_micro,
    })
    .unwrap();
    // A release the ledger lost (say, a store restored from an older backup).
    log.release(&ReleaseDetail {
        evaluator: "eval-0".into(),
        query_hash: "02".repeat(32),
        epsilon_micro: 30_000,
        left_micro: 930_000,
    })
    .unwrap();
    let audited = AuditLog::spent_by_evaluator(&audit_path).unwrap();
    let changed = ledger.reconcile(&audited).unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!((changed[0].from_spent_micro, changed[0].to_spent_micro), (40_000, 70_000));
    assert_eq!(ledger.budget("eval-0").unwrap().spent_micro, 70_000);
    // Never lowered: a ledger ahead of the log (a crash between reserve and append) stays.
    ledger.reserve("eval-0", qhash(3), 10_000).unwrap().unwrap();
    assert!(ledger.reconcile(&audited).unwrap().is_empty());
    assert_eq!(ledger.budget("eval-0").unwrap().spent_micro, 80_000);
}

#[test]
fn audit_verify_cli_names_the_first_bad_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    drop(write_entries(&path, 3));
    let p = path.to_str().unwrap();
    let out = crate::util::divert_ok(dir.path(), &["audit", "verify", p]);
    let stdout = crate::util::text(&out.stdout);
    assert!(stdout.contains("3 entries checked"), "{stdout}");
    let mut bytes = std::fs::read(&path).unwrap();
    let second_line_start = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    bytes[second_line_start + 20] ^= 0x02;
    std::fs::write(&path, &bytes).unwrap();
    let out = crate::util::divert_in(dir.path(), &["audit", "verify", p]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = crate::util::text(&out.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
}

/// `divert budget grant|show` speak the admin socket's `budget_grant` and
/// `budgets` requests (a stand-in daemon answers them here).
#[test]
fn budget_cli_speaks_the_admin_requests() {
    use divert::daemon::admin::{self, Request, Response};
    use divert::dp::ledger::{BudgetsView, EvaluatorBudget};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let config = dir.path().join("steward.toml");
    std::fs::write(
        &config,
        "role = \"steward\"\nname = \"steward\"\nprogram = \"demo\"\ndata_dir = \"data\"\n\
         [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"\ncrl = \"crl.pem\"\n\
         [steward]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let seen: Arc<std::sync::Mutex<Vec<Request>>> = Arc::default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = rt.block_on(admin::bind(&data.join("admin.sock"))).unwrap();
    let handler: admin::Handler = {
        let seen = seen.clone();
        Arc::new(move |req| {
            seen.lock().unwrap().push(req.clone());
            Box::pin(async move {
                let a = EvaluatorBudget {
                    evaluator: "university-a".into(),
                    budget: Budget { total_micro: 1_500_000, spent_micro: 250_000, left_micro: 1_250_000 },
                };
                match req {
                    Request::BudgetGrant { .. } => Response::ok(serde_json::to_value(&a).unwrap()),
                    Request::Budgets => Response::ok(
                        serde_json::to_value(BudgetsView {
                            program_cap_micro: 10_000_000,
                            program_granted_micro: 1_500_000,
                            program_spent_micro: 250_000,
                            evaluators: vec![a],
                        })
                        .unwrap(),
                    ),
                    _ => Response::err("not here"),
                }
            })
        })
    };
    let server = rt.spawn(admin::serve(listener, handler, shutdown.clone(), tokio_util::task::TaskTracker::new()));
    let cfg = config.to_str().unwrap();

    let out = crate::util::divert_ok(
        dir.path(),
        &["budget", "grant", "--config", cfg, "--evaluator", "university-a", "--epsilon", "1.5"],
    );
    let stdout = crate::util::text(&out.stdout);
    assert!(stdout.contains("university-a: total 1.5 ε, spent 0.25 ε, left 1.25 ε"), "{stdout}");
    let out = crate::util::divert_ok(dir.path(), &["budget", "show", "--config", cfg]);
    let stdout = crate::util::text(&out.stdout);
    assert!(stdout.contains("university-a") && stdout.contains("1.25") && stdout.contains("cap 10 ε"), "{stdout}");
    let out = crate::util::divert_ok(dir.path(), &["budget", "show", "--config", cfg, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["evaluators"][0]["left_micro"], 1_250_000);
    // Refused before anything is sent.
    let out = crate::util::divert_in(
        dir.path(),
        &["budget", "grant", "--config", cfg, "--evaluator", "university-a", "--epsilon", "0.0000001"],
    );
    assert_eq!(out.status.code(), Some(1));

    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            // The grant first checks that the evaluator is known (it has a budget here).
            Request::Budgets,
            Request::BudgetGrant { evaluator: "university-a".into(), epsilon_micro: 1_500_000 },
            Request::Budgets,
            Request::Budgets
        ]
    );
    shutdown.cancel();
    rt.block_on(server).unwrap();
}
