//! The source's sled store: one tree, keys by a one-byte prefix.
//!
//! ```text
//! m:<name>                    meta: store_id, outbox_next, held:<kind>, files_done, files_rejected,
//!                             pushed_batches, pushed_records, last_push
//! o ‖ seq (u64 BE) ‖ piece (u32 BE)   outbox batch, in 16 KiB pieces: records (u32 BE) ‖ the records
//!                             as a binary records section (`wire::binary`), or, written by releases
//!                             before it, as the inside of a JSON array
//! r ‖ file id (32) ‖ chunk (u32 BE)   raw chunk, AES-256-GCM: nonce ‖ ciphertext ‖ tag (AD = this key);
//!                             chunk 0 is the file's header, 1.. its accepted rows
//! f ‖ file id (32)            the file's record (JSON): in progress (rows committed so far) or done
//! ```
//!
//! A file id is SHA-256 of the kind and the file's bytes, so the same export
//! dropped twice is recognised.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::storage::{Durable, WriteBatch};

use serde::{Deserialize, Serialize};

pub const FILE_ID_LEN: usize = 32;
pub type FileId = [u8; FILE_ID_LEN];

const OUTBOX: u8 = b'o';
const RAW: u8 = b'r';
const FILE: u8 = b'f';

pub const META_STORE_ID: &[u8] = b"m:store_id";
pub const META_OUTBOX_NEXT: &[u8] = b"m:outbox_next";
pub const META_FILES_DONE: &[u8] = b"m:files_done";
pub const META_FILES_REJECTED: &[u8] = b"m:files_rejected";
pub const META_PUSHED_BATCHES: &[u8] = b"m:pushed_batches";
pub const META_PUSHED_RECORDS: &[u8] = b"m:pushed_records";
pub const META_LAST_PUSH: &[u8] = b"m:last_push";
/// The key epoch new records are pseudonymized under (u32 BE).
pub const META_ACTIVE_EPOCH: &[u8] = b"m:active_epoch";
/// The epoch a re-pseudonymization is working toward (u32 BE); absent when none runs.
pub const META_REKEY_TARGET: &[u8] = b"m:rekey_target";
/// The outbox sequence at the last switch of epoch (u64 BE): the epoch is
/// complete once every batch below it is acknowledged.
pub const META_SWITCH_SEQ: &[u8] = b"m:switch_seq";
const REKEY: u8 = b'e';
const META_HELD: &[u8] = b"m:held:";

pub fn outbox_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = OUTBOX;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Bytes per stored piece of an outbox batch: a batch (megabytes) is kept as
/// pieces far under `storage::MAX_VALUE_BYTES`, so no sled page becomes an unsynced blob.
pub const OUTBOX_PIECE_BYTES: usize = 16 * 1024;

/// The key of piece `piece` of outbox batch `seq`: `o ‖ seq ‖ piece` (u32 BE).
pub fn outbox_piece_key(seq: u64, piece: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..9].copy_from_slice(&outbox_key(seq));
    k[9..].copy_from_slice(&piece.to_be_bytes());
    k
}

/// Add outbox batch `seq` (its count and records) to `batch`, in pieces.
pub fn insert_outbox(batch: &mut WriteBatch, seq: u64, records: u32, body: &[u8]) {
    let value = outbox_value(records, body);
    for (i, piece) in value.chunks(OUTBOX_PIECE_BYTES).enumerate() {
        batch.insert(&outbox_piece_key(seq, i as u32)[..], piece);
    }
}

/// The whole value of outbox batch `seq` (count and records), if it is still here.
pub fn read_outbox(tree: &sled::Tree, seq: u64) -> sled::Result<Option<Vec<u8>>> {
    let mut value = Vec::new();
    let mut found = false;
    for kv in tree.scan_prefix(outbox_key(seq)) {
        let (_, v) = kv?;
        found = true;
        value.extend_from_slice(&v);
    }
    Ok(found.then_some(value))
}

/// The lowest outbox sequence still in the store (not yet acknowledged).
pub fn first_outbox_seq(tree: &sled::Tree) -> sled::Result<Option<u64>> {
    Ok(tree.scan_prefix([OUTBOX]).keys().next().transpose()?.and_then(|k| seq_of(&k)))
}

/// What removes outbox batch `seq`, every piece at once (apply it with [`Store::apply`]).
pub fn remove_outbox(tree: &sled::Tree, seq: u64) -> sled::Result<WriteBatch> {
    let mut batch = WriteBatch::default();
    for kv in tree.scan_prefix(outbox_key(seq)) {
        let (k, _) = kv?;
        batch.remove(k);
    }
    Ok(batch)
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

pub fn raw_key(file: &FileId, chunk: u32) -> [u8; 37] {
    let mut k = [0u8; 37];
    k[0] = RAW;
    k[1..33].copy_from_slice(file);
    k[33..].copy_from_slice(&chunk.to_be_bytes());
    k
}

fn raw_prefix(file: &FileId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = RAW;
    k[1..].copy_from_slice(file);
    k
}

/// `e ‖ file id`: how far the running re-pseudonymization is in a file:
/// next raw chunk (u32 BE) ‖ rows done (u64 BE).
pub fn rekey_key(file: &FileId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = REKEY;
    k[1..].copy_from_slice(file);
    k
}

pub fn rekey_value(next_chunk: u32, rows: u64) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&next_chunk.to_be_bytes());
    v[4..].copy_from_slice(&rows.to_be_bytes());
    v
}

/// Every key under the re-pseudonymization progress prefix.
pub fn rekey_keys(tree: &sled::Tree) -> sled::Result<Vec<sled::IVec>> {
    tree.scan_prefix([REKEY]).keys().collect()
}

/// (next raw chunk, rows done) of a file's re-pseudonymization; (1, 0) before it starts.
pub fn rekey_progress(tree: &sled::Tree, file: &FileId) -> sled::Result<(u32, u64)> {
    Ok(tree
        .get(rekey_key(file))?
        .and_then(|v| {
            let c = <[u8; 4]>::try_from(v.get(..4)?).ok()?;
            let r = <[u8; 8]>::try_from(v.get(4..12)?).ok()?;
            Some((u32::from_be_bytes(c), u64::from_be_bytes(r)))
        })
        .unwrap_or((1, 0)))
}

/// Every file the store knows: (id, record).
pub fn files(tree: &sled::Tree) -> sled::Result<Vec<(FileId, FileRecord)>> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix([FILE]) {
        let (k, v) = kv?;
        if let (Some(id), Ok(rec)) =
            (k.get(1..).and_then(|b| FileId::try_from(b).ok()), serde_json::from_slice::<FileRecord>(&v))
        {
            out.push((id, rec));
        }
    }
    Ok(out)
}

pub fn file_key(file: &FileId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = FILE;
    k[1..].copy_from_slice(file);
    k
}

pub fn held_key(kind: &str) -> Vec<u8> {
    [META_HELD, kind.as_bytes()].concat()
}

/// An outbox value: record count, then the records.
pub fn outbox_value(records: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + body.len());
    v.extend_from_slice(&records.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The records of an outbox batch, in the form they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxRecords<'v> {
    /// A records section of the binary form (`wire::binary::Encoder::finish_section`): what ingest,
    /// re-pseudonymization and deletion write.
    Binary(&'v [u8]),
    /// The records as the inside of a JSON array (comma-separated objects):
    /// what releases before the binary outbox wrote. Still sent (converted at
    /// send time) and rewritten by a deletion as they are.
    Json(&'v [u8]),
}

/// (record count, the records) of an outbox value. A section starts with
/// its magic; JSON text with `{`, so the two never look alike.
pub fn split_outbox_value(v: &[u8]) -> Option<(u32, OutboxRecords<'_>)> {
    let n: [u8; 4] = v.get(..4)?.try_into().ok()?;
    let body = &v[4..];
    let records =
        if crate::wire::binary::is_section(body) { OutboxRecords::Binary(body) } else { OutboxRecords::Json(body) };
    Some((u32::from_be_bytes(n), records))
}

/// Every record of an outbox value, in either form (tests read the outbox with it).
#[cfg(test)]
pub fn outbox_value_records(v: &[u8]) -> Vec<crate::record::PseudoRecord> {
    match split_outbox_value(v).expect("an outbox value").1 {
        OutboxRecords::Binary(s) => {
            crate::wire::binary::decode_section(s).expect("a records section").to_batch().records
        }
        OutboxRecords::Json(text) => serde_json::from_slice(&[b"[", text, b"]"].concat()).expect("JSON records"),
    }
}

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Its first `committed_rows` accepted rows are durable (raw chunks
    /// `1..next_chunk`, outbox batches in `seqs`, pushable); ingesting it
    /// again resumes after them.
    InProgress,
    /// All of it is written and durable.
    Done,
}

/// What the store knows of one ingested file. Counts and names only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub state: FileState,
    pub kind: String,
    /// The file's name when it was ingested.
    pub name: String,
    /// Where an inbox file goes in done/ (so a restart moves it to the same name).
    pub dest: Option<String>,
    /// Outbox sequence ranges `[start, end)` the file's batches were given.
    pub seqs: Vec<(u64, u64)>,
    /// Accepted rows written (all of them once done).
    pub committed_rows: u64,
    /// The next raw chunk number.
    pub next_chunk: u32,
    pub rows_read: u64,
    pub accepted: u64,
    pub quarantined: u64,
    pub values_dropped: u64,
    /// The quarantine file written, if any.
    pub quarantine: Option<String>,
    /// RFC 3339.
    pub at: String,
}

/// The store. Cheap to share. Read through [`Store::tree`]; every write
/// goes through the store's writer thread and is durable when it returns
/// (`storage`).
#[derive(Clone)]
pub struct Store {
    durable: Arc<Durable>,
    tree: sled::Tree,
}

impl Store {
    pub fn open(dir: &Path) -> sled::Result<Store> {
        let durable = Arc::new(Durable::open(dir, 128 * 1024 * 1024)?);
        let tree = durable.db().open_tree("source")?;
        Ok(Store { durable, tree })
    }

    /// The writer, for benchmarks and status.
    pub fn durable(&self) -> &Arc<Durable> {
        &self.durable
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub fn get_u64(&self, key: &[u8]) -> sled::Result<u64> {
        Ok(self.tree.get(key)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map_or(0, u64::from_be_bytes))
    }

    /// Set a counter, durably (blocking).
    pub fn put_u64(&self, key: &[u8], n: u64) -> sled::Result<()> {
        self.put_u64_bytes(key, &n.to_be_bytes())
    }

    /// Set `key` to a short value, durably (blocking).
    pub fn put_u64_bytes(&self, key: &[u8], value: &[u8]) -> sled::Result<()> {
        let mut b = WriteBatch::default();
        b.insert(key, value);
        self.apply(b)
    }

    /// The store's random id, made on first use and kept.
    pub fn store_id(&self) -> anyhow::Result<String> {
        if let Some(v) = self.tree.get(META_STORE_ID)? {
            if let Ok(s) = std::str::from_utf8(&v) {
                return Ok(s.to_string());
            }
        }
        let mut id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
        let id = crate::hex::encode(&id);
        let mut b = WriteBatch::default();
        b.insert(META_STORE_ID, id.as_bytes());
        self.apply(b)?;
        Ok(id)
    }

    pub fn held(&self) -> sled::Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for kv in self.tree.scan_prefix(META_HELD) {
            let (k, v) = kv?;
            let kind = String::from_utf8_lossy(&k[META_HELD.len()..]).into_owned();
            let n = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
            out.insert(kind, n);
        }
        Ok(out)
    }

    pub fn file(&self, id: &FileId) -> sled::Result<Option<FileRecord>> {
        Ok(self.tree.get(file_key(id))?.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Remove what a file wrote and is still here (its unsent outbox batches,
    /// raw chunks and record) in one atomic batch. Only for a file refused
    /// after part of it was written, which the pre-scan makes all but impossible.
    pub fn rollback(&self, id: &FileId, rec: &FileRecord) -> sled::Result<()> {
        let mut batch = WriteBatch::default();
        for &(start, end) in &rec.seqs {
            for kv in self.tree.range(outbox_key(start)..outbox_key(end)) {
                let (k, _) = kv?;
                batch.remove(k);
            }
        }
        for kv in self.tree.scan_prefix(raw_prefix(id)) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        batch.remove(&file_key(id)[..]);
        self.apply(batch)
    }

    /// Files left part-way by a stop or a crash (they resume when ingested again).
    pub fn unfinished(&self) -> sled::Result<Vec<FileRecord>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([FILE]) {
            let (_, v) = kv?;
            if let Ok(rec) = serde_json::from_slice::<FileRecord>(&v) {
                if rec.state == FileState::InProgress {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// The outbox: sequence → record count, oldest first.
    pub fn outbox_index(&self) -> sled::Result<BTreeMap<u64, u32>> {
        let mut out = BTreeMap::new();
        for kv in self.tree.scan_prefix([OUTBOX]) {
            let (k, v) = kv?;
            // The count is at the start of a batch's first piece.
            let first_piece = k.len() == 13 && k[9..] == [0, 0, 0, 0];
            if let (true, Some(seq), Some((n, _))) = (first_piece, seq_of(&k), split_outbox_value(&v)) {
                out.insert(seq, n);
            }
        }
        Ok(out)
    }

    /// The next outbox sequence: past the persisted counter and every key present.
    pub fn outbox_next(&self) -> sled::Result<u64> {
        let stored = self.get_u64(META_OUTBOX_NEXT)?;
        let last = match self.tree.scan_prefix([OUTBOX]).next_back() {
            Some(kv) => seq_of(&kv?.0).map_or(0, |s| s + 1),
            None => 0,
        };
        Ok(stored.max(last))
    }

    /// Apply `batch` to the tree, durably (blocking: call it off the reactor).
    pub fn apply(&self, batch: WriteBatch) -> sled::Result<()> {
        self.durable.apply(&self.tree, batch)
    }

    /// Start [`Store::apply`] and return at once; durable when the
    /// [`crate::storage::Pending`] says so (blocking wait: off the reactor).
    pub fn apply_later(&self, batch: WriteBatch) -> sled::Result<crate::storage::Pending> {
        self.durable.apply_later(&self.tree, batch)
    }

    /// [`Store::apply`] for async code.
    pub async fn apply_async(&self, batch: WriteBatch) -> sled::Result<()> {
        self.durable.apply_async(&self.tree, batch).await
    }

    /// Wait until every write so far is durable (each already is when it returned).
    pub async fn flush_async(&self) -> sled::Result<()> {
        self.durable.sync_async().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(outbox_key(1) < outbox_key(256) && outbox_key(256) < outbox_key(u64::MAX - 1));
        let id = [3u8; 32];
        let mut b = WriteBatch::default();
        for seq in 4..7 {
            insert_outbox(&mut b, seq, 2, b"{},{}");
        }
        b.insert(&raw_key(&id, 0)[..], b"x".as_slice());
        b.insert(&raw_key(&[4u8; 32], 0)[..], b"y".as_slice());
        let rec = FileRecord {
            state: FileState::InProgress,
            kind: "arrest".into(),
            name: "a.csv".into(),
            dest: None,
            seqs: vec![(5, 6), (6, 7)],
            committed_rows: 4,
            next_chunk: 1,
            rows_read: 0,
            accepted: 0,
            quarantined: 0,
            values_dropped: 0,
            quarantine: None,
            at: String::new(),
        };
        b.insert(&file_key(&id)[..], serde_json::to_vec(&rec).unwrap());
        b.insert(META_OUTBOX_NEXT, 7u64.to_be_bytes());
        s.apply(b).unwrap();
        assert_eq!(s.outbox_next().unwrap(), 7);
        assert_eq!(s.unfinished().unwrap(), vec![rec.clone()]);
        s.rollback(&id, &rec).unwrap();
        assert_eq!(s.outbox_index().unwrap().into_iter().collect::<Vec<_>>(), vec![(4, 2)]);
        assert!(s.tree().get(raw_key(&id, 0)).unwrap().is_none());
        assert!(s.tree().get(raw_key(&[4u8; 32], 0)).unwrap().is_some());
        assert!(s.file(&id).unwrap().is_none());
        assert_eq!(s.outbox_next().unwrap(), 7, "sequences are never reused");
        let sid = s.store_id().unwrap();
        assert_eq!(sid.len(), 32);
        assert_eq!(s.store_id().unwrap(), sid);
    }

    #[test]
    fn a_large_outbox_batch_is_stored_in_small_pieces_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut b = WriteBatch::default();
        insert_outbox(&mut b, 5, 4000, &body);
        s.apply(b).unwrap();
        for kv in s.tree().scan_prefix(outbox_key(5)) {
            let (_, v) = kv.unwrap();
            assert!(v.len() <= OUTBOX_PIECE_BYTES, "a piece of {} bytes would go to an unsynced sled blob", v.len());
        }
        let whole = read_outbox(s.tree(), 5).unwrap().unwrap();
        assert_eq!(split_outbox_value(&whole), Some((4000, OutboxRecords::Json(&body[..]))));
        assert_eq!(s.outbox_index().unwrap().into_iter().collect::<Vec<_>>(), vec![(5, 4000)]);
        s.apply(remove_outbox(s.tree(), 5).unwrap()).unwrap();
        assert!(read_outbox(s.tree(), 5).unwrap().is_none());
    }
}
