//! The key epoch switch at the steward: which epochs are held and reported, an admin's excuse of a source gone for good, and the switch itself (durable, audited, the new linkage swapped in, the old epoch's batches deleted).

use std::sync::Arc;

use tracing::{error, info, warn};

use super::admin::AdminError;
use super::epochs::ExcuseError;
use super::store::StoreError;
use super::{persons, Steward};

impl Steward {
    /// The key epochs as `GET /v1/epochs` and `divert keys status` show them.
    pub fn epoch_status(&self) -> Result<crate::wire::EpochStatus, StoreError> {
        Ok(self.epochs.status(&self.store.counts_by_epoch()?))
    }

    /// An admin's decision (`divert keys excuse`): the switch stops waiting for
    /// `source`, a source that is gone for good. Its records under the active
    /// epoch leave the linkage at the switch (they cannot be linked under the
    /// new key). Audited; may switch at once. Returns (pending epoch, records dropped).
    pub async fn excuse(&self, source: &str) -> Result<(u32, u64), AdminError> {
        let counts = self.store.counts_by_epoch()?;
        let waiting = self.epochs.waiting_for(&counts).ok_or(ExcuseError::NoRotation)?;
        if !waiting.contains(source) {
            let list: Vec<&str> = waiting.iter().map(String::as_str).collect();
            let waiting = if list.is_empty() { "nobody".to_string() } else { list.join(", ") };
            return Err(ExcuseError::NotWaitedFor { name: source.to_string(), waiting }.into());
        }
        let active = self.epochs.active().unwrap_or(0);
        let dropped = counts.get(source).and_then(|per| per.get(&active)).map_or(0, |c| c.records);
        let (epochs, name) = (self.epochs.clone(), source.to_string());
        let pending = tokio::task::spawn_blocking(move || epochs.excuse(&name))
            .await
            .map_err(|e| AdminError::Task { what: "excuse", detail: e.to_string() })??;
        let detail = serde_json::json!({
            "event": "source_excused", "source": source, "epoch": pending, "records_left_out": dropped,
        });
        self.audit.append_async(crate::audit::Kind::Key, "admin", &detail).await?;
        warn!(
            source,
            epoch = pending,
            records_left_out = dropped,
            "the key rotation no longer waits for this source: its records under the old epoch leave the linkage at the switch"
        );
        self.maybe_switch().await;
        Ok((pending, dropped))
    }

    /// Switch to the pending epoch if every source holding records has
    /// reported it complete: durably, then the new linkage answers queries,
    /// then the old epoch's batches are deleted. Audited.
    pub(crate) async fn maybe_switch(&self) {
        let gate = self.epoch_gate.write().await;
        let counts = match self.store.counts_by_epoch() {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "reading counts for the key epoch switch failed");
                return;
            }
        };
        match self.epochs.waiting_for(&counts) {
            Some(w) if w.is_empty() => {}
            _ => return,
        }
        let epochs = self.epochs.clone();
        let switched = match tokio::task::spawn_blocking(move || epochs.switch()).await {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                error!(error = %e, "recording the key epoch switch failed");
                return;
            }
            Err(e) => {
                error!(error = %e, "the task recording the key epoch switch failed");
                return;
            }
        };
        let (old, new) = switched;
        let next = self.next_persons.lock().unwrap_or_else(|p| p.into_inner()).take();
        let next = match next {
            Some((e, p)) if e == new => p,
            _ => Arc::new(persons::Persons::new(self.schema.clone())),
        };
        let records = next.records();
        *self.persons.write().unwrap_or_else(|p| p.into_inner()) = next;
        let sources: Vec<String> = counts.keys().cloned().collect();
        let detail = serde_json::json!({ "event": "epoch_switched", "from": old, "to": new, "sources": sources });
        if let Err(e) = self.audit.append_async(crate::audit::Kind::Key, "steward", &detail).await {
            error!(error = %e, "auditing the key epoch switch failed");
        }
        info!(
            from = old,
            to = new,
            records,
            "key epoch switched: the new linkage answers queries; deleting the old epoch's batches"
        );
        drop(gate);
        // In the background: on a large store this outlasts the report that triggered the switch.
        // A stop part-way leaves whole batches of the old epoch, removed at the next start.
        let store = self.store.clone();
        tokio::spawn(async move {
            let store2 = store.clone();
            let removed = tokio::task::spawn_blocking(move || store2.remove_epochs_below(new)).await;
            match removed {
                Ok(Ok(n)) => info!(batches = n, epoch = old, "old key epoch's batches deleted"),
                Ok(Err(e)) => error!(error = %e, "deleting the old epoch's batches failed; the next start retries"),
                Err(e) => {
                    error!(error = %e, "the task deleting the old epoch's batches failed; the next start retries")
                }
            }
        });
    }
}
