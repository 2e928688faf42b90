//! Key epochs at the steward: which epoch's linkage answers queries (active),
//! the one built beside it during a rotation (pending), what each source
//! reports, and when to switch.
//!
//! A rotation, as the steward sees it:
//!
//! 1. The first batch under epoch `A + 1` (from any source that has fetched
//!    the new key) makes it pending; its records are linked into a second
//!    `Persons` beside the active one. Queries keep using the active one.
//! 2. Each source re-pseudonymizes what it holds under the new epoch, sends
//!    it, and once the steward has acknowledged all of it, reports the epoch
//!    complete (`POST /v1/epochs`).
//! 3. When every source holding records under the active or pending epoch
//!    has reported the pending epoch complete, the steward switches:
//!    active := pending, durably, then the new linkage answers queries and
//!    the old epoch's batches are deleted.
//!
//! A batch under an epoch below the active one is refused (409, with the
//! current epoch) so its source sends the records again under the current one.
//!
//! State lives in the sled tree `steward_epochs`: `active` and `pending`
//! (u32 BE), `complete\0<source>` (u32 BE), `report\0<source>` (JSON).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::storage::{Durable, WriteBatch};

use crate::wire::{EpochReport, EpochStatus, SourceEpochs};

use super::store::SourceCounts;

const TREE: &str = "steward_epochs";
const ACTIVE: &[u8] = b"active";
const PENDING: &[u8] = b"pending";
const COMPLETE: &[u8] = b"complete\0";
const REPORT: &[u8] = b"report\0";
const EXCUSED: &[u8] = b"excused\0";

/// Where an admitted batch's records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The linkage that answers queries.
    Active,
    /// The linkage being built for epoch `.0`.
    Pending(u32),
}

/// Why a batch's epoch is not linked here. Carries epochs, never data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochMismatch {
    /// Older than the active epoch: send again under `current`.
    Retired { epoch: u32, current: u32 },
    /// More than one epoch ahead, or another epoch than the pending one.
    Unknown { epoch: u32, current: u32, pending: Option<u32> },
}

impl EpochMismatch {
    pub fn epoch(&self) -> u32 {
        match self {
            EpochMismatch::Retired { epoch, .. } | EpochMismatch::Unknown { epoch, .. } => *epoch,
        }
    }

    pub fn current(&self) -> u32 {
        match self {
            EpochMismatch::Retired { current, .. } | EpochMismatch::Unknown { current, .. } => *current,
        }
    }
}

impl std::fmt::Display for EpochMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EpochMismatch::Retired { epoch, current } => write!(
                f,
                "key epoch {epoch} is retired: the steward links epoch {current} now; \
                 re-pseudonymize these records under epoch {current} (from the key custodian) and send them again"
            ),
            EpochMismatch::Unknown { epoch, current, pending: Some(p) } => write!(
                f,
                "key epoch {epoch} is not linked here: the steward links epoch {current} and is building epoch {p}"
            ),
            EpochMismatch::Unknown { epoch, current, pending: None } => write!(
                f,
                "key epoch {epoch} is not linked here: the steward links epoch {current}, and a new epoch must be {}",
                current.saturating_add(1)
            ),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    active: Option<u32>,
    pending: Option<u32>,
    complete: BTreeMap<String, u32>,
    /// Sources an admin told the switch not to wait for, with the pending epoch it was for.
    excused: BTreeMap<String, u32>,
    reports: BTreeMap<String, (EpochReport, String)>,
}

/// The steward's key-epoch state.
/// Why an admin's excuse of a source (`divert keys excuse`) was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ExcuseError {
    #[error("no key rotation is under way: the steward builds no pending epoch")]
    NoRotation,
    #[error("the switch does not wait for `{name}`; it waits for: {waiting}")]
    NotWaitedFor { name: String, waiting: String },
    #[error("recording the excuse failed: {0}")]
    Store(#[source] sled::Error),
}

pub struct Epochs {
    durable: Arc<Durable>,
    tree: sled::Tree,
    state: Mutex<State>,
}

fn be_u32(v: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(v).ok().map(u32::from_be_bytes)
}

impl Epochs {
    /// Read the state from the store.
    pub fn open(durable: &Arc<Durable>) -> sled::Result<Epochs> {
        let tree = durable.db().open_tree(TREE)?;
        let mut st = State {
            active: tree.get(ACTIVE)?.and_then(|v| be_u32(&v)),
            pending: tree.get(PENDING)?.and_then(|v| be_u32(&v)),
            ..State::default()
        };
        for kv in tree.scan_prefix(COMPLETE) {
            let (k, v) = kv?;
            if let (Ok(name), Some(e)) = (std::str::from_utf8(&k[COMPLETE.len()..]), be_u32(&v)) {
                st.complete.insert(name.to_string(), e);
            }
        }
        for kv in tree.scan_prefix(EXCUSED) {
            let (k, v) = kv?;
            if let (Ok(name), Some(e)) = (std::str::from_utf8(&k[EXCUSED.len()..]), be_u32(&v)) {
                st.excused.insert(name.to_string(), e);
            }
        }
        for kv in tree.scan_prefix(REPORT) {
            let (k, v) = kv?;
            if let (Ok(name), Ok(r)) =
                (std::str::from_utf8(&k[REPORT.len()..]), serde_json::from_slice::<(EpochReport, String)>(&v))
            {
                st.reports.insert(name.to_string(), r);
            }
        }
        Ok(Epochs { durable: durable.clone(), tree, state: Mutex::new(st) })
    }

    /// Write `key` = `value` durably (blocking: the state lock is held across it,
    /// so the in-memory state never runs ahead of the store).
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> sled::Result<()> {
        let tree = self.tree.clone();
        crate::storage::check_value(&value)?;
        self.durable.write(move |_| tree.insert(key, value).map(|_| ()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn active(&self) -> Option<u32> {
        self.lock().active
    }

    pub fn pending(&self) -> Option<u32> {
        self.lock().pending
    }

    /// Decide where a batch under `epoch` goes; the first batch ever sets the
    /// active epoch, the first under `active + 1` starts a rotation. The
    /// change is durable when this returns (blocking: call it off the reactor).
    pub fn admit(&self, epoch: u32) -> Result<(Slot, bool), EpochMismatch> {
        let mut st = self.lock();
        let Some(active) = st.active else {
            if let Err(e) = self.put(ACTIVE.to_vec(), epoch.to_be_bytes().to_vec()) {
                tracing::error!(error = %e, "recording the first key epoch failed");
                return Err(EpochMismatch::Unknown { epoch, current: epoch, pending: None });
            }
            st.active = Some(epoch);
            return Ok((Slot::Active, true));
        };
        if epoch == active {
            return Ok((Slot::Active, false));
        }
        if epoch < active {
            return Err(EpochMismatch::Retired { epoch, current: active });
        }
        match st.pending {
            Some(p) if p == epoch => Ok((Slot::Pending(p), false)),
            None if epoch == active.saturating_add(1) => {
                if let Err(e) = self.put(PENDING.to_vec(), epoch.to_be_bytes().to_vec()) {
                    tracing::error!(error = %e, "recording a new key epoch failed");
                    return Err(EpochMismatch::Unknown { epoch, current: active, pending: None });
                }
                st.pending = Some(epoch);
                Ok((Slot::Pending(epoch), true))
            }
            pending => Err(EpochMismatch::Unknown { epoch, current: active, pending }),
        }
    }

    /// Record a source's report, durably (blocking). A report of the pending
    /// epoch complete counts toward the switch.
    pub fn report(&self, source: &str, report: &EpochReport, at: &str) -> sled::Result<()> {
        let mut st = self.lock();
        // A source cannot be complete past the epoch it pseudonymizes under.
        if let Some(c) = report.complete.map(|c| c.min(report.active)) {
            if st.complete.get(source).map_or(true, |&old| old < c) {
                self.put([COMPLETE, source.as_bytes()].concat(), c.to_be_bytes().to_vec())?;
                st.complete.insert(source.to_string(), c);
            }
        }
        let value = serde_json::to_vec(&(report, at))
            .map_err(|e| sled::Error::Unsupported(format!("encoding an epoch report: {e}")))?;
        self.put([REPORT, source.as_bytes()].concat(), value)?;
        st.reports.insert(source.to_string(), (report.clone(), at.to_string()));
        Ok(())
    }

    /// The sources the pending epoch still waits for: every source holding
    /// records under the active or pending epoch that has not reported the
    /// pending epoch complete. `None` when no rotation is under way.
    pub fn waiting_for(&self, counts: &BTreeMap<String, BTreeMap<u32, SourceCounts>>) -> Option<BTreeSet<String>> {
        let st = self.lock();
        let (active, pending) = (st.active?, st.pending?);
        let mut waiting = BTreeSet::new();
        // Sources on the pending epoch must hold the same key: two different keys under one
        // number would split every person. Then none of them counts as complete.
        let at_pending: Vec<(&String, &str)> = st
            .reports
            .iter()
            .filter(|(_, (r, _))| r.active == pending)
            .map(|(s, (r, _))| (s, r.fingerprint.as_str()))
            .collect();
        let fingerprints: BTreeSet<&str> = at_pending.iter().map(|(_, f)| *f).collect();
        if fingerprints.len() > 1 {
            waiting.extend(at_pending.iter().map(|(s, _)| (*s).clone()));
        }
        for (source, per) in counts {
            if st.excused.get(source) == Some(&pending) {
                continue;
            }
            let holds = [active, pending].iter().any(|e| per.get(e).is_some_and(|c| c.records > 0));
            if holds && st.complete.get(source).map_or(true, |&c| c < pending) {
                waiting.insert(source.clone());
            }
        }
        Some(waiting)
    }

    /// Tell the switch to the pending epoch not to wait for `source` (one that is gone
    /// for good). Its records under the active epoch are deleted with that epoch at the
    /// switch; if it comes back it re-sends what it holds under the new epoch. Returns the
    /// pending epoch. Durable when it returns (blocking).
    pub fn excuse(&self, source: &str) -> Result<u32, ExcuseError> {
        let mut st = self.lock();
        let Some(pending) = st.pending else {
            return Err(ExcuseError::NoRotation);
        };
        self.put([EXCUSED, source.as_bytes()].concat(), pending.to_be_bytes().to_vec()).map_err(ExcuseError::Store)?;
        st.excused.insert(source.to_string(), pending);
        Ok(pending)
    }

    /// Make the pending epoch active, durably (blocking). Returns (old, new).
    pub fn switch(&self) -> sled::Result<Option<(u32, u32)>> {
        let mut st = self.lock();
        let (Some(old), Some(new)) = (st.active, st.pending) else {
            return Ok(None);
        };
        let mut batch = WriteBatch::default();
        batch.insert(ACTIVE, new.to_be_bytes());
        batch.remove(PENDING);
        self.durable.apply(&self.tree, batch)?;
        st.active = Some(new);
        st.pending = None;
        Ok(Some((old, new)))
    }

    /// The view sources and `divert keys status` get.
    pub fn status(&self, counts: &BTreeMap<String, BTreeMap<u32, SourceCounts>>) -> EpochStatus {
        let waiting = self.waiting_for(counts).unwrap_or_default();
        let st = self.lock();
        let mut sources: BTreeMap<String, SourceEpochs> = BTreeMap::new();
        for (source, per) in counts {
            let e = sources.entry(source.clone()).or_default();
            e.records = per.iter().map(|(&ep, c)| (ep, c.records)).collect();
        }
        for (source, (report, at)) in &st.reports {
            let e = sources.entry(source.clone()).or_default();
            e.report = Some(report.clone());
            e.reported_at = Some(at.clone());
        }
        for (source, e) in sources.iter_mut() {
            e.waiting_for = waiting.contains(source);
            e.excused = st.pending.is_some() && st.excused.get(source) == st.pending.as_ref();
        }
        let conflict = st.pending.and_then(|p| {
            let f: BTreeSet<&str> =
                st.reports.values().filter(|(r, _)| r.active == p).map(|(r, _)| r.fingerprint.as_str()).collect();
            (f.len() > 1).then(|| {
                format!(
                    "sources hold different keys under epoch {p} (fingerprints {}): give every source the \
                     custodian's key for epoch {p}; the switch waits until they agree",
                    f.into_iter().collect::<Vec<_>>().join(", ")
                )
            })
        });
        EpochStatus { active: st.active, pending: st.pending, sources, conflict }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(list: &[(&str, u32, u64)]) -> BTreeMap<String, BTreeMap<u32, SourceCounts>> {
        let mut out: BTreeMap<String, BTreeMap<u32, SourceCounts>> = BTreeMap::new();
        for &(s, e, n) in list {
            out.entry(s.into()).or_default().insert(e, SourceCounts { records: n, batches: 1 });
        }
        out
    }

    /// Open the database again. sled releases its file lock from a background thread
    /// shortly after the last handle is dropped, so the first attempts may find it held.
    fn reopen(path: &std::path::Path) -> Arc<Durable> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Durable::open(path, 1 << 20) {
                Ok(db) => return Arc::new(db),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        }
    }

    fn report(active: u32, complete: Option<u32>) -> EpochReport {
        EpochReport {
            active,
            keys: vec![active],
            rekey: None,
            complete,
            fingerprint: format!("f{active}"),
            error: None,
        }
    }

    #[test]
    fn a_rotation_from_first_batch_to_switch_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Durable::open(dir.path(), 1 << 20).unwrap());
        let e = Epochs::open(&db).unwrap();
        assert_eq!(e.admit(1), Ok((Slot::Active, true)));
        assert_eq!(e.admit(1), Ok((Slot::Active, false)));
        assert!(matches!(e.admit(3), Err(EpochMismatch::Unknown { epoch: 3, current: 1, pending: None })));
        assert_eq!(e.admit(2), Ok((Slot::Pending(2), true)));
        assert_eq!(e.admit(2), Ok((Slot::Pending(2), false)));
        let c = counts(&[("police", 1, 10), ("police", 2, 4), ("jail", 1, 5)]);
        assert_eq!(e.waiting_for(&c).unwrap(), ["jail".to_string(), "police".to_string()].into());
        e.report("police", &report(2, Some(2)), "t").unwrap();
        e.report("jail", &report(1, Some(1)), "t").unwrap();
        assert_eq!(e.waiting_for(&c).unwrap(), ["jail".to_string()].into());
        drop(e);
        drop(db);
        let db = reopen(dir.path());
        let e = Epochs::open(&db).unwrap();
        assert_eq!((e.active(), e.pending()), (Some(1), Some(2)));
        assert_eq!(e.waiting_for(&c).unwrap(), ["jail".to_string()].into());
        // A report cannot claim more than its own epoch.
        e.report("jail", &EpochReport { complete: Some(9), ..report(1, None) }, "t").unwrap();
        assert_eq!(e.waiting_for(&c).unwrap(), ["jail".to_string()].into());
        // Two keys under one epoch number block the switch until they agree.
        let mut other = report(2, Some(2));
        other.fingerprint = "another key".into();
        e.report("jail", &other, "t").unwrap();
        assert_eq!(e.waiting_for(&c).unwrap().len(), 2);
        assert!(e.status(&c).conflict.unwrap().contains("different keys"));
        e.report("jail", &report(2, Some(2)), "t").unwrap();
        assert!(e.waiting_for(&c).unwrap().is_empty());
        assert_eq!(e.status(&c).conflict, None);
        assert_eq!(e.status(&c).sources["jail"].report.as_ref().unwrap().complete, Some(2));
        assert_eq!(e.switch().unwrap(), Some((1, 2)));
        assert_eq!(e.waiting_for(&c), None);
        let retired = e.admit(1).unwrap_err();
        assert_eq!(retired, EpochMismatch::Retired { epoch: 1, current: 2 });
        assert!(retired.to_string().contains("retired"), "{retired}");
        drop(e);
        drop(db);
        let db = reopen(dir.path());
        let e = Epochs::open(&db).unwrap();
        assert_eq!((e.active(), e.pending()), (Some(2), None));
    }
}
