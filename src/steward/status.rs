//! What the steward shows of itself (`divert status`, metrics): counts, never a record, token or id.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::{Refusal, SourceCounts, Steward};

impl Steward {
    /// How many refusals of one kind so far (this run).
    pub fn refusals(&self, kind: Refusal) -> u64 {
        self.refusals[kind.index()].load(Ordering::Relaxed)
    }

    /// All refusals so far (this run).
    pub fn refusals_total(&self) -> u64 {
        self.refusals.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// For `divert status`: counts only, never a record, token or id.
    pub fn status(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "listen": self.local_addr.to_string(),
            "data_dir": self.data_dir.display().to_string(),
            "connections_open": self.open.load(Ordering::Relaxed),
            "max_connections": self.cfg.max_connections,
            "connections_waiting": self.waiting.load(Ordering::Relaxed),
            "handshakes_pending": self.admission.pending(),
            "max_pending_handshakes": self.cfg.pending.pending,
            "max_pending_per_address": self.cfg.pending.per_address,
            "batches_stored_this_run": self.batches_stored.load(Ordering::Relaxed),
            "duplicates_this_run": self.batches_duplicate.load(Ordering::Relaxed),
        });
        let mut refusals: serde_json::Map<String, serde_json::Value> =
            Refusal::ALL.iter().map(|r| (r.as_str().to_string(), self.refusals(*r).into())).collect();
        refusals.insert("total".into(), self.refusals_total().into());
        status["refusals"] = refusals.into();
        status["key_epochs"] = serde_json::json!({ "active": self.epochs.active(), "pending": self.epochs.pending() });
        status["linkage"] = self.persons().quality_status();
        match self.store.counts(self.epochs.active()) {
            Ok(counts) => {
                let per = |f: fn(&SourceCounts) -> u64| -> BTreeMap<&str, u64> {
                    counts.iter().map(|(k, c)| (k.as_str(), f(c))).collect()
                };
                status["records_per_source"] = serde_json::json!(per(|c| c.records));
                status["batches_per_source"] = serde_json::json!(per(|c| c.batches));
                status["records"] = counts.values().map(|c| c.records).sum::<u64>().into();
                status["batches"] = counts.values().map(|c| c.batches).sum::<u64>().into();
            }
            Err(e) => status["store_error"] = e.to_string().into(),
        }
        // Per source and kind: what re-sends did (counts only; the evaluator sees none of it).
        match self.store.versions() {
            Ok(v) => status["record_versions"] = serde_json::json!(v),
            Err(e) => status["store_error"] = e.to_string().into(),
        }
        let writer = self.store.durable().stats();
        status["store_writes"] = serde_json::json!({
            "writes": writer.writes.load(Ordering::Relaxed),
            "syncs": writer.syncs.load(Ordering::Relaxed),
            "blob_files": self.store.durable().blobs(),
        });
        match self.store.size_on_disk() {
            Ok(n) => status["store_bytes"] = n.into(),
            Err(e) => status["store_error"] = e.to_string().into(),
        }
        status
    }
}
