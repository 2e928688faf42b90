//! One process-wide lock around sled's batch writes, transactions and flushes.
//!
//! sled 0.34 keeps a global (process-wide) reader-writer lock: once any batch
//! or transaction has run, every operation takes its read side, batches and
//! transactions its write side, and a flush holds the read side while it
//! waits for the log to reach disk. A batch waiting for the write side then
//! blocks the log flusher's read, the flush never completes, and everything
//! stops (seen in this project's tests). Taking this lock around every
//! batch, transaction and flush keeps a writer from waiting on sled's lock
//! while a flush is in progress. Never hold it while taking it again.

use std::sync::{Mutex, MutexGuard};

static SLED_WRITES: Mutex<()> = Mutex::new(());

/// Hold while calling `apply_batch`, `transaction` or `flush` on any sled tree or db.
pub fn guard() -> MutexGuard<'static, ()> {
    SLED_WRITES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Flush `db` under the lock, off the async reactor.
pub async fn flush(db: &sled::Db) -> sled::Result<usize> {
    let db = db.clone();
    match tokio::task::spawn_blocking(move || {
        let _g = guard();
        db.flush()
    })
    .await
    {
        Ok(r) => r,
        Err(e) => Err(sled::Error::ReportableBug(format!("the flush task failed: {e}"))),
    }
}
