//! The steward's event store: batches of pseudonymized records in one sled tree, written one batch per sled batch through the store's writer thread, acknowledged only once durable (`storage`).
//!
//! # Layout (one tree, `batches`, three key prefixes)
//!
//! | key | value |
//! |---|---|
//! | `h` source `00` batch_id | header: version, records, chunks, bytes, sequence, received-at (37 bytes) |
//! | `d` source `00` batch_id `00` chunk (u32 BE) | up to [`CHUNK_BYTES`] of the batch's JSON body, as received |
//! | `n` source | records and batches held for the source (two u64 LE) |
//!
//! A batch is validated (every record parsed) before it is stored, and then
//! kept as the bytes the source sent, cut into chunks: parsing is needed
//! anyway, but re-encoding is not, and the store writes a few hundred keys
//! per batch instead of one per record. Chunks stay small (4 KiB, far under
//! `storage::MAX_VALUE_BYTES`) so no sled page becomes an unsynced blob.
//!
//! The header, its chunks and the source's counts go in one `apply_batch`,
//! so a crash leaves a batch either wholly there or absent (the source then
//! re-sends it). The read-check-write of header and counts runs on the
//! store's writer thread, which applies concurrent batches one after the
//! other and makes them durable with one sync (group commit): `put_batch`
//! returns once its batch is durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::{Durable, WriteBatch};

use crate::record::PseudoRecord;
use crate::wire::Batch;

/// How many body bytes one chunk holds (see the module docs for why small).
pub const CHUNK_BYTES: usize = 4096;

const TREE: &str = "batches";
const HEADER_VERSION: u8 = 2;
const HEADER_LEN: usize = 1 + 8 + 4 + 8 + 8 + 8 + 4;
const P_HEADER: u8 = b'h';
const P_CHUNK: u8 = b'd';
const P_COUNT: u8 = b'n';

/// Why the store failed. Messages never carry a record or a value from one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: cannot open the steward store: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("steward store: {0}")]
    Sled(#[from] sled::Error),
    #[error("steward store: batch {batch_id} of {source_name} is damaged: {detail}")]
    Corrupt { source_name: String, batch_id: String, detail: String },
    #[error("steward store: a stored key is damaged: {0}")]
    BadKey(String),
}

/// The fixed-size record kept for every stored batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Records in the batch.
    pub records: u64,
    /// Chunks the body was cut into.
    pub chunks: u32,
    /// Length of the body in bytes.
    pub bytes: u64,
    /// Store-wide arrival order.
    pub seq: u64,
    /// Unix seconds when the batch was stored.
    pub received_at: i64,
    /// The key epoch of every record in the batch.
    pub epoch: u32,
}

impl BatchHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = HEADER_VERSION;
        out[1..9].copy_from_slice(&self.records.to_le_bytes());
        out[9..13].copy_from_slice(&self.chunks.to_le_bytes());
        out[13..21].copy_from_slice(&self.bytes.to_le_bytes());
        out[21..29].copy_from_slice(&self.seq.to_le_bytes());
        out[29..37].copy_from_slice(&self.received_at.to_le_bytes());
        out[37..41].copy_from_slice(&self.epoch.to_le_bytes());
        out
    }

    fn decode(v: &[u8]) -> Option<BatchHeader> {
        if v.len() != HEADER_LEN || v[0] != HEADER_VERSION {
            return None;
        }
        let u64_at = |i: usize| v.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        Some(BatchHeader {
            records: u64_at(1)?,
            chunks: v.get(9..13).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)?,
            bytes: u64_at(13)?,
            seq: u64_at(21)?,
            received_at: u64_at(29)? as i64,
            epoch: v.get(37..41).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)?,
        })
    }
}

/// Records and batches held for one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCounts {
    pub records: u64,
    pub batches: u64,
}

impl SourceCounts {
    fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.records.to_le_bytes());
        out[8..].copy_from_slice(&self.batches.to_le_bytes());
        out
    }

    fn decode(v: &[u8]) -> Option<SourceCounts> {
        Some(SourceCounts {
            records: u64::from_le_bytes(v.get(..8)?.try_into().ok()?),
            batches: u64::from_le_bytes(v.get(8..16)?.try_into().ok()?),
        })
    }
}

/// What storing a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The batch is new; this many records were written (durable after [`Store::flush`]).
    Stored(u64),
    /// The batch was already held; nothing was written.
    Duplicate,
}

/// One stored batch, read back.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub source: String,
    pub batch_id: String,
    pub header: BatchHeader,
    pub records: Vec<PseudoRecord>,
}

/// The steward's store (a sled database of its own).
pub struct Store {
    durable: Arc<Durable>,
    db: sled::Db,
    tree: sled::Tree,
}

fn batch_key(prefix: u8, source: &str, batch_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + source.len() + batch_id.len() + 5);
    k.push(prefix);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(batch_id.as_bytes());
    k
}

/// `n` source `00` epoch (u32 BE): counts per source and key epoch.
fn count_key(source: &str, epoch: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + source.len());
    k.push(P_COUNT);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

/// Split a header key (without its prefix byte) into source and batch id.
fn split_batch_key(k: &[u8]) -> Result<(String, String), StoreError> {
    let rest = k.get(1..).unwrap_or_default();
    let pos = rest.iter().position(|&b| b == 0).ok_or_else(|| StoreError::BadKey("no separator".into()))?;
    let (s, b) = rest.split_at(pos);
    let text = |x: &[u8]| String::from_utf8(x.to_vec()).map_err(|_| StoreError::BadKey("not UTF-8".into()));
    Ok((text(s)?, text(b.get(1..).unwrap_or_default())?))
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Store {
    /// Open (or create) the store in directory `path`. sled locks it: a second
    /// process opening the same store fails here.
    /// The sled database, for the trees other steward parts keep beside the batches (budgets, releases).
    /// Read through it; write through [`Store::durable`].
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The store's writer: the one way to write any of its trees.
    pub fn durable(&self) -> &Arc<Durable> {
        &self.durable
    }

    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_path_buf(), source };
        // Batches are written once and read rarely (linkage); a modest cache is enough.
        let durable = Arc::new(Durable::open(path, 256 * 1024 * 1024).map_err(open_err)?);
        let db = durable.db().clone();
        let tree = db.open_tree(TREE).map_err(open_err)?;
        let store = Store { durable, db, tree };
        store.migrate_v1()?;
        Ok(store)
    }

    /// Store the body of a batch (already validated: `records` is how many it
    /// holds) unless `(source, batch_id)` is already held. Blocking: call it
    /// from `spawn_blocking`. Durable when it returns (a duplicate too: the
    /// first copy was made durable before, or in the same group).
    pub fn put_batch(
        &self,
        source: &str,
        batch_id: &str,
        epoch: u32,
        records: u64,
        body: &[u8],
    ) -> Result<PutOutcome, StoreError> {
        let header_key = batch_key(P_HEADER, source, batch_id);
        let mut chunk_prefix = batch_key(P_CHUNK, source, batch_id);
        chunk_prefix.push(0);
        let chunks = u32::try_from(body.len().div_ceil(CHUNK_BYTES)).unwrap_or(u32::MAX);

        // Build the write set before handing it to the writer: copying the body is the costly part.
        let mut batch = WriteBatch::default();
        for (i, chunk) in body.chunks(CHUNK_BYTES).enumerate() {
            let mut k = Vec::with_capacity(chunk_prefix.len() + 4);
            k.extend_from_slice(&chunk_prefix);
            k.extend_from_slice(&u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes());
            batch.insert(k, chunk);
        }
        let tree = self.tree.clone();
        let ckey = count_key(source, epoch);
        let bytes = body.len() as u64;
        // On the writer thread: the duplicate check and the counts see every earlier write.
        let outcome = self.durable.write(move |db| {
            if tree.contains_key(&header_key)? {
                return Ok(PutOutcome::Duplicate);
            }
            let mut counts = tree.get(&ckey)?.and_then(|v| SourceCounts::decode(&v)).unwrap_or_default();
            counts.records = counts.records.saturating_add(records);
            counts.batches = counts.batches.saturating_add(1);
            let header = BatchHeader { records, chunks, bytes, seq: db.generate_id()?, received_at: now_unix(), epoch };
            batch.insert(header_key, header.encode());
            batch.insert(ckey, counts.encode());
            tree.apply_batch(batch.into_inner()?)?;
            Ok(PutOutcome::Stored(records))
        })?;
        Ok(outcome)
    }

    /// A store written before batches carried their key epoch (header version 1,
    /// counts per source only): take each batch's epoch from its records, rewrite
    /// its header, and recount. One atomic batch; nothing is done when there is no v1 header.
    fn migrate_v1(&self) -> Result<(), StoreError> {
        const V1_LEN: usize = 37;
        let mut old = Vec::new();
        for kv in self.tree.scan_prefix([P_HEADER]) {
            let (k, v) = kv?;
            if v.len() == V1_LEN && v[0] == 1 {
                old.push((k, v));
            }
        }
        if old.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let mut counts: BTreeMap<(String, u32), SourceCounts> = BTreeMap::new();
        for kv in self.tree.scan_prefix([P_COUNT]) {
            batch.remove(kv?.0);
        }
        for kv in self.tree.scan_prefix([P_HEADER]) {
            let (k, v) = kv?;
            let (source, batch_id) = split_batch_key(&k)?;
            let mut header = v.to_vec();
            if header.len() == V1_LEN && header[0] == 1 {
                header[0] = HEADER_VERSION;
                header.extend_from_slice(&0u32.to_le_bytes());
                let b = self.read_batch(source.clone(), batch_id, &header)?;
                let epoch = b.records.first().map_or(0, |r| r.epoch);
                header[37..41].copy_from_slice(&epoch.to_le_bytes());
                batch.insert(k.clone(), header.clone());
            }
            let h = BatchHeader::decode(&header).ok_or_else(|| StoreError::BadKey("a batch header".into()))?;
            let c = counts.entry((source, h.epoch)).or_default();
            c.records += h.records;
            c.batches += 1;
        }
        for ((source, epoch), c) in &counts {
            batch.insert(count_key(source, *epoch), c.encode());
        }
        self.durable.apply(&self.tree, batch)?;
        tracing::info!(batches = old.len(), "steward store upgraded: batches now carry their key epoch");
        Ok(())
    }

    /// Wait until everything written so far is durable (each write already
    /// is when it returns; this is for a stopping daemon). Shares a sync with other writers.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.durable.sync_async().await?;
        Ok(())
    }

    /// Records and batches held per source and key epoch.
    pub fn counts_by_epoch(&self) -> Result<BTreeMap<String, BTreeMap<u32, SourceCounts>>, StoreError> {
        let mut out: BTreeMap<String, BTreeMap<u32, SourceCounts>> = BTreeMap::new();
        for kv in self.tree.scan_prefix([P_COUNT]) {
            let (k, v) = kv?;
            let rest = k.get(1..).unwrap_or_default();
            let (name, epoch) = match rest.len().checked_sub(5).map(|i| rest.split_at(i)) {
                Some((name, [0, e @ ..])) => (name, e),
                _ => return Err(StoreError::BadKey("a count key has no epoch".into())),
            };
            let name =
                String::from_utf8(name.to_vec()).map_err(|_| StoreError::BadKey("source name not UTF-8".into()))?;
            let epoch = <[u8; 4]>::try_from(epoch).map(u32::from_be_bytes).unwrap_or(0);
            let c = SourceCounts::decode(&v).ok_or_else(|| StoreError::BadKey(format!("counts of {name}")))?;
            out.entry(name).or_default().insert(epoch, c);
        }
        Ok(out)
    }

    /// Records and batches held per source, under key epoch `epoch` only
    /// (`None`: every epoch added up).
    pub fn counts(&self, epoch: Option<u32>) -> Result<BTreeMap<String, SourceCounts>, StoreError> {
        let mut out = BTreeMap::new();
        for (name, per) in self.counts_by_epoch()? {
            let mut total = SourceCounts::default();
            for (e, c) in per {
                if epoch.map_or(true, |want| want == e) {
                    total.records += c.records;
                    total.batches += c.batches;
                }
            }
            if total.batches > 0 {
                out.insert(name, total);
            }
        }
        Ok(out)
    }

    /// Remove every batch (header, chunks) and count of a key epoch below
    /// `epoch`: a retired epoch's data. Several atomic sled batches, each
    /// removing whole batches, so a crash leaves some old batches (removed
    /// at the next start), never part of one. Returns the batches removed.
    pub fn remove_epochs_below(&self, epoch: u32) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        let mut old = Vec::new();
        for kv in self.tree.scan_prefix([P_HEADER]) {
            let (k, v) = kv?;
            match BatchHeader::decode(&v) {
                Some(h) if h.epoch < epoch => old.push(k),
                _ => {}
            }
        }
        for keys in old.chunks(64) {
            let mut batch = WriteBatch::default();
            for k in keys {
                let mut chunk_prefix = k.to_vec();
                chunk_prefix[0] = P_CHUNK;
                chunk_prefix.push(0);
                for kv in self.tree.scan_prefix(&chunk_prefix) {
                    batch.remove(kv?.0);
                }
                batch.remove(k.clone());
            }
            self.durable.apply(&self.tree, batch)?;
            removed += keys.len() as u64;
        }
        let mut batch = WriteBatch::default();
        for kv in self.tree.scan_prefix([P_COUNT]) {
            let (k, _) = kv?;
            let e = k.len().checked_sub(4).and_then(|i| <[u8; 4]>::try_from(&k[i..]).ok()).map(u32::from_be_bytes);
            if e.is_some_and(|e| e < epoch) {
                batch.remove(k);
            }
        }
        self.durable.apply(&self.tree, batch)?;
        Ok(removed)
    }

    /// Whether `(source, batch_id)` is held.
    pub fn contains(&self, source: &str, batch_id: &str) -> Result<bool, StoreError> {
        Ok(self.tree.contains_key(batch_key(P_HEADER, source, batch_id))?)
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Every stored batch, in key order (source, then batch id).
    pub fn batches(&self) -> impl Iterator<Item = Result<StoredBatch, StoreError>> + '_ {
        self.tree.scan_prefix([P_HEADER]).map(move |kv| {
            let (k, v) = kv?;
            let (source, batch_id) = split_batch_key(&k)?;
            self.read_batch(source, batch_id, &v)
        })
    }

    /// Every stored record, batch by batch.
    pub fn records(&self) -> impl Iterator<Item = Result<PseudoRecord, StoreError>> + '_ {
        self.batches().flat_map(|b| -> Box<dyn Iterator<Item = Result<PseudoRecord, StoreError>>> {
            match b {
                Ok(b) => Box::new(b.records.into_iter().map(Ok)),
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        })
    }

    fn read_batch(&self, source: String, batch_id: String, header: &[u8]) -> Result<StoredBatch, StoreError> {
        let corrupt = |detail: &str| StoreError::Corrupt {
            source_name: source.clone(),
            batch_id: batch_id.clone(),
            detail: detail.to_string(),
        };
        let header = BatchHeader::decode(header).ok_or_else(|| corrupt("unreadable header"))?;
        let mut prefix = batch_key(P_CHUNK, &source, &batch_id);
        prefix.push(0);
        let mut body = Vec::with_capacity(usize::try_from(header.bytes).unwrap_or(0));
        // Exactly `chunks` chunks: any beyond belong to no stored batch.
        for (i, kv) in self.tree.scan_prefix(&prefix).take(header.chunks as usize).enumerate() {
            let (k, v) = kv?;
            let idx = k.get(prefix.len()..).and_then(|s| <[u8; 4]>::try_from(s).ok()).map(u32::from_be_bytes);
            if idx != u32::try_from(i).ok() {
                return Err(corrupt("a chunk is missing"));
            }
            body.extend_from_slice(&v);
        }
        if body.len() as u64 != header.bytes {
            return Err(corrupt("chunks do not add up to the stored length"));
        }
        let batch: Batch =
            serde_json::from_slice(&body).map_err(|e| corrupt(&format!("not a batch ({:?})", e.classify())))?;
        if batch.records.len() as u64 != header.records {
            return Err(corrupt("record count differs from the header"));
        }
        Ok(StoredBatch { source, batch_id, header, records: batch.records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Open a store again in this process. sled releases its file lock from a background
    /// thread shortly after the last handle is dropped, so the first attempts may find it held.
    fn reopen(path: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(path) {
                Ok(s) => return s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        }
    }

    fn body(source: &str, id: &str, n: usize) -> Vec<u8> {
        let records: Vec<PseudoRecord> = (0..n)
            .map(|i| PseudoRecord {
                source: source.into(),
                kind: "arrest".into(),
                line: i as u64 + 2,
                epoch: 1,
                rid: format!("{i:032x}"),
                tokens: [("name_dob".to_string(), format!("1:{:032x}", i * 7))].into(),
                fields: [("age".to_string(), serde_json::json!(30))].into(),
            })
            .collect();
        serde_json::to_vec(&Batch { source: source.into(), batch_id: id.into(), records }).unwrap()
    }

    #[tokio::test]
    async fn stores_once_counts_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let b = body("police", "p-1", 3000);
        assert!(b.len() > 10 * CHUNK_BYTES);
        assert_eq!(store.put_batch("police", "p-1", 1, 3000, &b).unwrap(), PutOutcome::Stored(3000));
        assert_eq!(store.put_batch("police", "p-1", 1, 3000, &b).unwrap(), PutOutcome::Duplicate);
        // A batch id that extends another must not be confused with it.
        let b2 = body("police", "p-10", 2);
        assert_eq!(store.put_batch("police", "p-10", 1, 2, &b2).unwrap(), PutOutcome::Stored(2));
        let b3 = body("jail", "p-1", 1);
        assert_eq!(store.put_batch("jail", "p-1", 1, 1, &b3).unwrap(), PutOutcome::Stored(1));
        store.flush().await.unwrap();
        let counts = store.counts(None).unwrap();
        assert_eq!(counts["police"], SourceCounts { records: 3002, batches: 2 });
        assert_eq!(counts["jail"], SourceCounts { records: 1, batches: 1 });
        let all: Vec<PseudoRecord> = store.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 3003);
        let batches: Vec<StoredBatch> = store.batches().collect::<Result<_, _>>().unwrap();
        let ids: Vec<(&str, &str)> = batches.iter().map(|b| (b.source.as_str(), b.batch_id.as_str())).collect();
        assert_eq!(ids, [("jail", "p-1"), ("police", "p-1"), ("police", "p-10")]);
        assert!(batches[1].header.seq < batches[2].header.seq);
        assert!(store.contains("police", "p-10").unwrap());
        assert!(!store.contains("police", "p-2").unwrap());
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            store.put_batch("police", "a", 1, 5, &body("police", "a", 5)).unwrap();
            store.flush().await.unwrap();
        }
        let store = reopen(&path);
        assert_eq!(store.records().count(), 5);
        assert_eq!(store.put_batch("police", "a", 1, 5, &body("police", "a", 5)).unwrap(), PutOutcome::Duplicate);
    }

    #[test]
    fn header_round_trips() {
        let h = BatchHeader { records: 7, chunks: 2, bytes: 5000, seq: 9, received_at: -3, epoch: 4 };
        assert_eq!(BatchHeader::decode(&h.encode()), Some(h));
        assert_eq!(BatchHeader::decode(&[9; HEADER_LEN]), None);
    }

    #[tokio::test]
    async fn a_store_from_before_epochs_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            store.put_batch("police", "a", 1, 5, &body("police", "a", 5)).unwrap();
            // Make it look as the previous version wrote it: a 37-byte v1 header, counts per source.
            let hk = batch_key(P_HEADER, "police", "a");
            let mut v1 = store.tree.get(&hk).unwrap().unwrap().to_vec();
            v1.truncate(37);
            v1[0] = 1;
            store.tree.insert(&hk, v1).unwrap();
            store.tree.remove(count_key("police", 1)).unwrap();
            let mut old_count = vec![P_COUNT];
            old_count.extend_from_slice(b"police");
            store.tree.insert(old_count, &SourceCounts { records: 5, batches: 1 }.encode()[..]).unwrap();
            store.flush().await.unwrap();
        }
        let store = reopen(&path);
        let by = store.counts_by_epoch().unwrap();
        assert_eq!(by["police"][&1], SourceCounts { records: 5, batches: 1 });
        let b: Vec<StoredBatch> = store.batches().collect::<Result<_, _>>().unwrap();
        assert_eq!((b.len(), b[0].header.epoch, b[0].records.len()), (1, 1, 5));
    }

    #[tokio::test]
    async fn counts_by_epoch_and_retiring_an_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let b = body("police", "a", 3000);
        store.put_batch("police", "a", 1, 3000, &b).unwrap();
        store.put_batch("jail", "a", 1, 3000, &body("jail", "a", 3000)).unwrap();
        let mut b2: Batch = serde_json::from_slice(&body("police", "b", 4)).unwrap();
        for r in &mut b2.records {
            r.epoch = 2;
            r.tokens.values_mut().for_each(|t| *t = t.replacen("1:", "2:", 1));
        }
        store.put_batch("police", "b", 2, 4, &serde_json::to_vec(&b2).unwrap()).unwrap();
        let by = store.counts_by_epoch().unwrap();
        assert_eq!(by["police"][&1].records, 3000);
        assert_eq!(by["police"][&2].records, 4);
        assert_eq!(store.counts(Some(2)).unwrap().len(), 1);
        assert_eq!(store.remove_epochs_below(2).unwrap(), 2);
        store.flush().await.unwrap();
        let by = store.counts_by_epoch().unwrap();
        assert_eq!(by.len(), 1);
        assert_eq!(by["police"].keys().copied().collect::<Vec<_>>(), [2]);
        let left: Vec<PseudoRecord> = store.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(left.len(), 4);
        assert!(left.iter().all(|r| r.epoch == 2));
        // No chunk of a removed batch is left behind.
        assert_eq!(store.tree.scan_prefix([P_CHUNK]).count(), 1);
    }
}
