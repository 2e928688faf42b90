//! Power loss, simulated: the steward runs with `tests/powerloss/shim.c` preloaded, which keeps a copy of each of its files as of the last fsync; after SIGKILL the data directory is rebuilt from those copies (what a disk holds after a power cut) and every acknowledgement must still hold.
//!
//! The SIGKILL trials in `crash.rs` cannot see a missing fsync (the page
//! cache survives a killed process); this can. Against a steward that
//! acknowledged after sled's `flush` alone (`sync_file_range`), acknowledged
//! batches vanished here; with the store's writer thread `fdatasync`ing its
//! data file before any acknowledgement, none does.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use divert::pki::Role;
use divert::steward::store::Store;

use crate::net::{batch, client_config, fake_records, write_steward_config, Client, Pki};
use crate::util::{
    divert_ok, holds, spawn_serve, spawn_serve_with, start_steward, start_steward_with, text, wait_until,
    wait_until_every,
};

/// Build the preload library with the machine's C compiler (gcc is part of the toolchain CI uses).
fn build_shim(out: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powerloss/shim.c");
    let so = out.join("powerloss.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&so)
        .arg(&src)
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("the power-loss test needs a C compiler (`cc`) to build its preload library");
    assert!(status.success(), "building {} failed", src.display());
    so
}

/// How many trials: `default` (what CI runs), or more from the environment variable `var` for a longer run.
fn trials(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn files(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            files(&e.path(), base, out);
        } else {
            out.push(e.path().strip_prefix(base).unwrap().to_path_buf());
        }
    }
}

fn shadow_name(rel: &Path) -> String {
    rel.to_string_lossy().replace('/', "%")
}

/// The power cut: every file of `data` becomes what its last fsync left
/// (its shadow), or, never synced during the trial, what it was before it
/// (`pre`), or nothing if it did not exist then.
fn power_off(data: &Path, pre: &Path, shadow: &Path) -> (usize, usize) {
    let (mut synced, mut reverted) = (0, 0);
    let mut now = Vec::new();
    files(data, data, &mut now);
    for rel in now {
        let path = data.join(&rel);
        let sh = shadow.join(shadow_name(&rel));
        if sh.exists() {
            std::fs::copy(&sh, &path).unwrap();
            synced += 1;
        } else if pre.join(&rel).exists() {
            std::fs::copy(pre.join(&rel), &path).unwrap();
            reverted += 1;
        } else {
            std::fs::remove_file(&path).unwrap();
            reverted += 1;
        }
    }
    (synced, reverted)
}

#[test]
fn steward_power_loss_keeps_every_acknowledgement() {
    let root = tempfile::tempdir().unwrap();
    let shim = build_shim(root.path());
    let pki = Pki::new(root.path());
    let police = root.path().join("police");
    pki.issue_into(Role::Source, "police", &police);
    let eval = root.path().join("eval");
    pki.issue_into(Role::Evaluator, "eval", &eval);
    let dir = root.path().join("steward");
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_steward_config(&dir, &pki, "127.0.0.1:0", "");
    let data = dir.join("data");
    let cfg_arg = config.to_str().unwrap();

    // A store made and stopped cleanly, with a budget: the state before every trial.
    let (mut first, _) = start_steward(&config, &data, &dir.join("setup.log"), Duration::from_secs(30));
    divert_ok(&dir, &["budget", "grant", "--config", cfg_arg, "--evaluator", "eval", "--epsilon", "10", "--force"]);
    first.stop();
    let pre = root.path().join("pre");
    std::fs::remove_file(data.join(divert::config::LISTEN_ADDR_FILE)).unwrap();
    copy_dir(&data, &pre);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut acked_total, mut answered_total, mut synced_files) = (0usize, 0u64, 0usize);
    let trials = trials("DIVERT_POWERLOSS_STEWARD_TRIALS", 20);
    for trial in 0..trials {
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&pre, &data);
        let shadow = root.path().join(format!("shadow{trial}"));
        std::fs::create_dir_all(&shadow).unwrap();
        let env: [(&str, &OsStr); 3] = [
            ("LD_PRELOAD", shim.as_os_str()),
            ("POWERLOSS_DIR", data.as_os_str()),
            ("POWERLOSS_SHADOW", shadow.as_os_str()),
        ];
        let log = dir.join(format!("trial{trial}.log"));
        let (mut child, addr) = start_steward_with(&config, &data, &log, Duration::from_secs(30), &env);

        // Batches and budget-charged queries at once; remember every acknowledgement.
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let answered = Arc::new(AtomicU64::new(0));
        let (acked_in, cfg) = (acked.clone(), client_config(&pki.ca_pem(), Some(&police)));
        let batches = rt.spawn(async move {
            let Ok(mut client) = Client::connect(addr, cfg).await else { return };
            for n in 0u64.. {
                let id = format!("t{trial}-b{n}");
                match client.post_batch(&batch("police", &id, fake_records("police", n * 50, 50))).await {
                    Ok((status, _)) if status.is_success() => acked_in.lock().unwrap().push(id),
                    _ => break,
                }
            }
        });
        let (answered_in, cfg) = (answered.clone(), client_config(&pki.ca_pem(), Some(&eval)));
        let queries = rt.spawn(async move {
            let Ok(mut client) = Client::connect(addr, cfg).await else { return };
            for n in 0u64.. {
                let q = serde_json::json!({
                    "analysis": "any_arrest", "epsilon": 0.01,
                    "params": {"window_days": (30 + (trial * 1000 + n) % 300).to_string()},
                });
                match client.request("POST", "/v1/query", serde_json::to_vec(&q).unwrap()).await {
                    Ok((status, body)) if status.is_success() => {
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        if v["cached"] == false {
                            answered_in.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ => break,
                }
            }
        });
        // Power off at a point that varies with the trial, once something was acknowledged.
        let wanted = 2 + (trial as usize * 7) % 25;
        let what = format!("trial {trial}: {wanted} batches acknowledged");
        wait_until_every(Duration::from_millis(2), Duration::from_secs(60), &what, || {
            let n = acked.lock().unwrap().len();
            holds(n >= wanted, || format!("{n} acknowledged"))
        });
        child.sigkill();
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(10), batches).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), queries).await;
        });
        let acked = acked.lock().unwrap().clone();
        let answered = answered.load(Ordering::SeqCst);
        let (synced, _) = power_off(&data, &pre, &shadow);
        synced_files += synced;

        // Restart on what the disk held: every acknowledged batch is there, the
        // budget spent covers every answer and stays within the grant, the audit chain holds.
        // It must start on the data a power cut left.
        let log = dir.join(format!("restart{trial}.log"));
        let (mut again, _) = start_steward(&config, &data, &log, Duration::from_secs(30));
        let show = divert_ok(&dir, &["budget", "show", "--config", cfg_arg, "--json"]);
        let budgets: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
        let spent = budgets["evaluators"][0]["spent_micro"].as_u64().unwrap_or(0);
        assert!(
            spent >= answered * 10_000,
            "trial {trial}: {answered} answers, only {spent} µε spent after the power cut"
        );
        assert!(spent <= 10_000_000, "trial {trial}: overspent: {spent} µε");
        again.stop();
        let out = divert_ok(&dir, &["audit", "verify", "--config", cfg_arg]);
        assert!(text(&out.stdout).contains("chain intact"), "trial {trial}");
        let store = Store::open(&data.join("store")).expect("open the store");
        let lost: Vec<&String> = acked.iter().filter(|id| !store.contains("police", id).unwrap()).collect();
        assert!(
            lost.is_empty(),
            "trial {trial}: {} of {} acknowledged batches lost to the power cut (first: {})",
            lost.len(),
            acked.len(),
            lost[0]
        );
        drop(store);
        acked_total += acked.len();
        answered_total += answered;
    }
    assert!(synced_files > 0, "the shim saw no fsync: it is not loaded");
    eprintln!(
        "power-loss trials: {trials}, acknowledged batches {acked_total}, answers {answered_total}: none lost, none overspent"
    );
}

/// The source side: an export dropped in the inbox is overwritten and
/// deleted once its outcome is durable; a power cut right after must leave
/// every accepted row in the store, and the steward must end up with each of
/// them exactly once (outbox batches re-sent after the cut are deduplicated
/// by batch id).
#[test]
fn source_power_loss_after_ingest_loses_no_row() {
    let root = tempfile::tempdir().unwrap();
    let shim = build_shim(root.path());
    let pki = Pki::new(root.path());
    let synth = root.path().join("synth");
    divert_ok(root.path(), &["synth", "--persons", "200", "--seed", "5", "--out", synth.to_str().unwrap()]);
    let export = synth.join("police").join("arrest.csv");

    let sdir = root.path().join("steward");
    std::fs::create_dir_all(&sdir).unwrap();
    let steward_config = write_steward_config(&sdir, &pki, "127.0.0.1:0", "");
    let steward_data = sdir.join("data");

    let src = root.path().join("police");
    pki.issue_into(Role::Source, "police", &src.join("tls"));
    divert::keys::init(&src.join("keys")).unwrap();
    let data = src.join("data");
    let write_config = |port: u16| {
        let t = crate::net::tls_paths(&src.join("tls"));
        let text = format!(
            "role = \"source\"\nname = \"police\"\nprogram = \"{}\"\ndata_dir = \"{}\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\ncrl = \"{}\"\n\n\
             [source]\nsteward_url = \"https://localhost:{port}\"\nkeys = \"{}\"\npoll_interval_ms = 20\nmax_backoff_secs = 1\nbatch_records = 100\n",
            crate::net::PROGRAM,
            data.display(),
            t.cert.display(),
            t.key.display(),
            t.ca.display(),
            t.crl.display(),
            src.join("keys").display()
        );
        std::fs::write(src.join("divert.toml"), text).unwrap();
        src.join("divert.toml")
    };

    // The source's state before every trial: made and stopped cleanly.
    let config = write_config(1);
    let mut first = spawn_serve(&config, &src.join("setup.log"));
    wait_until(Duration::from_secs(30), "the source's admin socket", || {
        holds(data.join("admin.sock").exists(), || std::fs::read_to_string(src.join("setup.log")).unwrap_or_default())
    });
    first.stop();
    let pre = root.path().join("source-pre");
    copy_dir(&data, &pre);

    let trials = trials("DIVERT_POWERLOSS_SOURCE_TRIALS", 10);
    let mut rows_total = 0u64;
    for trial in 0..trials {
        // A fresh steward, so each trial's records are counted on their own.
        let _ = std::fs::remove_dir_all(&steward_data);
        let log = sdir.join(format!("steward{trial}.log"));
        let (mut steward, addr) = start_steward(&steward_config, &steward_data, &log, Duration::from_secs(30));
        let config = write_config(addr.port());
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&pre, &data);
        let shadow = root.path().join(format!("source-shadow{trial}"));
        std::fs::create_dir_all(&shadow).unwrap();
        let env: [(&str, &OsStr); 3] = [
            ("LD_PRELOAD", shim.as_os_str()),
            ("POWERLOSS_DIR", data.as_os_str()),
            ("POWERLOSS_SHADOW", shadow.as_os_str()),
        ];
        let mut source = spawn_serve_with(&config, &src.join(format!("trial{trial}.log")), &env);
        let inbox = data.join("inbox");
        let part = inbox.join("arrest.csv.part");
        std::fs::copy(&export, &part).unwrap();
        std::fs::rename(&part, inbox.join("arrest.csv")).unwrap();
        // Cut the power the moment the export is gone from the inbox (its receipt is there).
        let receipt = inbox.join("done").join("arrest.csv.receipt");
        let what = format!("trial {trial}: the export ingested");
        wait_until_every(Duration::from_millis(1), Duration::from_secs(60), &what, || {
            holds(receipt.exists() && !inbox.join("arrest.csv").exists(), String::new)
        });
        source.sigkill();
        power_off(&data, &pre, &shadow);
        let accepted: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap_or_else(|_| {
                panic!("trial {trial}: the receipt did not survive the power cut, but the export is gone")
            }))
            .unwrap();
        let accepted = accepted["accepted"].as_u64().unwrap();

        // Restarted on what the disk held, the source sends every accepted row, once.
        let mut source = spawn_serve(&config, &src.join(format!("restart{trial}.log")));
        let status = |cfg: &Path| {
            let out = crate::util::divert_in(root.path(), &["status", "--config", cfg.to_str().unwrap(), "--json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
        };
        let what = format!("trial {trial}: the {accepted} accepted rows at the steward after the power cut");
        let held = wait_until(Duration::from_secs(60), &what, || {
            let held = status(&steward_config)["steward"]["records"].as_u64().unwrap_or(0);
            let outbox = status(&config)["source"]["outbox"]["records"].as_u64();
            if held >= accepted && outbox == Some(0) {
                Ok(held)
            } else {
                Err(format!("the steward holds {held}, the outbox {outbox:?}"))
            }
        });
        assert_eq!(held, accepted, "trial {trial}: rows sent twice");
        source.stop();
        steward.stop();
        rows_total += accepted;
    }
    eprintln!("source power-loss trials: {trials}, {rows_total} accepted rows, none lost or doubled");
}
