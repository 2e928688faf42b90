//! Every stored batch audited once: its `batch` entry, and a `deletion` entry per record kind its tombstones removed records of.
//!
//! The store writes an [`Unaudited`] mark with the batch, in the same
//! atomic write; the entries are appended together (one write, one sync);
//! then the mark is removed. A failed audit (the source is told to retry)
//! leaves the mark, and the replay — a duplicate to the store — finishes the
//! audit before it is acknowledged. A crash between the store and the audit
//! leaves it too, and the next start finishes the audit, writing only the
//! entries the log does not hold yet. One task at a time audits a batch: a
//! replay arriving meanwhile waits, then finds the mark gone and writes
//! nothing, so no entry is written twice.

use std::collections::HashSet;
use std::sync::Arc;

use tracing::{error, info};

use super::store::Unaudited;
use super::Steward;
use crate::audit::{AuditError, BatchDetail, BatchEntry, DeletionDetail, Kind};

/// One lock per batch being audited (see [`Steward::audit_batch`]).
pub(crate) type Auditing = std::sync::Mutex<std::collections::HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// Why a batch's audit did not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiptError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
}

impl Steward {
    /// Append the batch's entries that `logged` does not hold (all when
    /// `None`) in one write, then remove its mark off the acknowledgement
    /// path. Returns once the entries are durable. With `stored_mark`, the
    /// store holds a mark for the batch, and a batch whose mark is gone was
    /// audited already (by a replay that came first): nothing is written.
    pub(crate) async fn audit_batch(
        self: &Arc<Self>,
        mark: Unaudited,
        logged: Option<&HashSet<BatchEntry>>,
        stored_mark: bool,
    ) -> Result<(), ReceiptError> {
        let key = (mark.source.clone(), mark.batch_id.clone());
        // One auditor per batch at a time; the lock is held until the mark is gone.
        let lock = {
            let mut map = self.auditing.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        if stored_mark && self.store.unaudited_of(&mark.source, &mark.batch_id)?.is_none() {
            // Audited already, by a copy of the batch that came first.
            return Ok(());
        }
        let has = |kind: Option<&str>| {
            logged.is_some_and(|l| l.contains(&(mark.source.clone(), mark.batch_id.clone(), kind.map(str::to_string))))
        };
        let mut entries = Vec::new();
        if !has(None) {
            let detail = BatchDetail { source: mark.source.clone(), batch_id: mark.batch_id.clone() };
            entries.push((Kind::Batch, mark.source.clone(), serde_json::to_value(detail).map_err(AuditError::from)?));
        }
        // A deletion is audited as such: that records of this source and kind went, never which.
        for (kind, n) in &mark.deletions {
            if !has(Some(kind)) {
                let detail = DeletionDetail {
                    source: mark.source.clone(),
                    kind: kind.clone(),
                    records: *n,
                    batch_id: mark.batch_id.clone(),
                };
                let detail = serde_json::to_value(detail).map_err(AuditError::from)?;
                entries.push((Kind::Deletion, mark.source.clone(), detail));
            }
        }
        let appended = if entries.is_empty() { Ok(()) } else { self.audit.append_all_async(entries).await.map(|_| ()) };
        // On failure the mark stays, and the lock with it: the replay audits.
        appended?;
        // Off the acknowledgement path: the mark goes, then the lock is let go,
        // so a replay waiting for it finds no mark and writes nothing.
        let st = self.clone();
        tokio::spawn(async move {
            match st.store.audited(&key.0, &key.1).await {
                Ok(()) => {
                    st.auditing.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                }
                // The mark stays: a replay of this batch in this run would write its
                // entries again (the store failing its writes has worse news); the next
                // start finds them in the log and only removes the mark.
                Err(e) => error!(error = %e, "removing a batch's audit mark failed; the next start removes it"),
            }
            drop(guard);
        });
        Ok(())
    }

    /// At start: finish the audit of every batch stored before a crash (or a
    /// failed audit) without its entries, writing only those the log lacks.
    pub(crate) async fn finish_audits(self: &Arc<Self>) -> Result<usize, super::StewardError> {
        let marks = self.store.unaudited().map_err(super::StewardError::Records)?;
        if marks.is_empty() {
            return Ok(0);
        }
        let path = self.audit.path().to_path_buf();
        let p2 = path.clone();
        let logged = tokio::task::spawn_blocking(move || crate::audit::batch_entries(&p2))
            .await
            .map_err(|e| super::StewardError::Join(e.to_string()))?
            .map_err(|source| super::StewardError::AuditUnreadable { path: path.clone(), source })?;
        let n = marks.len();
        for mark in marks {
            match self.audit_batch(mark, Some(&logged), true).await {
                Ok(()) => {}
                Err(ReceiptError::Audit(source)) => return Err(super::StewardError::Audit { path, source }),
                Err(ReceiptError::Store(e)) => return Err(super::StewardError::Records(e)),
            }
        }
        info!(batches = n, "finished the audit of batches stored just before the last stop");
        Ok(n)
    }
}
