//! Crash safety of the exchange: the steward, a real `divert serve` process, killed with SIGKILL in the middle of a stream of batches keeps every batch it acknowledged.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use divert::pki::Role;
use divert::steward::store::Store;

use crate::net::{batch, client_config, fake_records, write_steward_config, Client, Pki};
use crate::util::start_steward;

/// A small deterministic generator, so a failing trial can be replayed from its number.
fn delay_ms(trial: u64) -> u64 {
    let x = trial.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5bd1_e995;
    30 + x % 400
}

#[test]
fn steward_sigkill_keeps_every_acknowledged_batch() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(root.path());
    let client_dir = root.path().join("police");
    pki.issue_into(Role::Source, "police", &client_dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut total_acked = 0usize;

    for trial in 0..20u64 {
        let dir = root.path().join(format!("trial{trial}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = write_steward_config(&dir, &pki, "127.0.0.1:0", "");
        let data = dir.join("data");
        let log = dir.join("steward.log");
        let (mut child, addr) = start_steward(&config, &data, &log, Duration::from_secs(20));
        let cfg = client_config(&pki.ca_pem(), Some(&client_dir));

        // Stream batches until the steward dies; remember each acknowledged one.
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let acked_in = acked.clone();
        let stream = rt.spawn(async move {
            let mut n = 0u64;
            let Ok(mut client) = Client::connect(addr, cfg.clone()).await else { return };
            loop {
                let id = format!("t{trial}-b{n}");
                let b = batch("police", &id, fake_records("police", n * 200, 200));
                match client.post_batch(&b).await {
                    Ok((status, _)) if status.is_success() => {
                        acked_in.lock().expect("lock").push(id);
                        n += 1;
                    }
                    // The steward died mid-request: this batch was never acknowledged.
                    _ => break,
                }
            }
        });
        std::thread::sleep(Duration::from_millis(delay_ms(trial)));
        child.sigkill();
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(10), stream).await;
        });
        let acked = acked.lock().expect("lock").clone();
        total_acked += acked.len();

        // Restart the daemon on the same data: it must come up, then stop it
        // cleanly and read its store directly.
        let (mut again, _) = start_steward(&config, &data, &dir.join("steward-restart.log"), Duration::from_secs(20));
        let pid = again.id().to_string();
        let term = Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        assert!(term.success());
        let status = again.0.wait().expect("wait");
        assert!(status.success(), "trial {trial}: the restarted steward did not stop cleanly: {status:?}");

        let store = Store::open(&data.join("store")).expect("open store");
        for id in &acked {
            assert!(
                store.contains("police", id).expect("read store"),
                "trial {trial}: batch {id} was acknowledged but is missing after SIGKILL"
            );
        }
    }
    assert!(total_acked > 20, "the trials acknowledged only {total_acked} batches: the test did not exercise anything");
}
