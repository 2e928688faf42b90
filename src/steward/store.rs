//! The steward's event store: batches of pseudonymized records in one sled tree, written one batch per sled batch through the store's writer thread, acknowledged only once durable (`storage`).
//!
//! # Layout (one tree, `batches`, three key prefixes)
//!
//! | key | value |
//! |---|---|
//! | `h` source `00` batch_id | header: version (2: the body is JSON, 3: the [binary form](crate::wire::binary)), records, chunks, bytes, sequence, received-at, epoch (41 bytes) |
//! | `d` source `00` batch_id `00` chunk (u32 BE) | up to [`CHUNK_BYTES`] of the batch's body: binary (as received, or re-encoded from JSON), or JSON when a record has no binary form or the batch was stored by an earlier release |
//! | `n` source `00` epoch (u32 BE) | records and batches held for the source under the epoch (two u64 LE) |
//! | `i` epoch (u32 BE) source `00` kind `00` rid (16 bytes) | a tombstone, or a version raised by an unchanged re-send: seq (u64 LE), content hash (16), live (1: held, 0: deleted), batch id — the index of every other record is in memory, rebuilt at open from the batches |
//! | `s` source `00` kind | versions counted: new, replaced, unchanged, stale, deleted (five u64 LE) |
//! | `a` source `00` batch_id | the batch's audit may be unfinished ([`Unaudited`]): written with the batch, removed once its audit entries are durable; per kind whose records its tombstones removed: name length (u16 LE), name, count (u64 LE) |
//! | `m:rid_index` | 1 once the rid index is built (a store of an earlier version is upgraded on open) |
//!
//! # One record per (source, kind, rid)
//!
//! A record whose rid is held under its epoch is a new *version* of it: the
//! higher `seq` (the source's order, [`record_seq`](crate::record::record_seq))
//! wins, so replays and reordered batches end in the same state. The same
//! content again changes nothing but the version number (`unchanged`); other
//! content replaces the version held, which is cut out of its batch
//! (`replaced`); an older version is dropped (`stale`); a tombstone cuts it
//! out and stays in the index, so an older version arriving later cannot
//! come back (`deleted`). Superseded and deleted records are removed from
//! the stored batches in the same atomic write, not only hidden: the store
//! holds exactly the records that count.
//!
//! A batch is validated (every record parsed) before it is stored, and then
//! kept whole in its compact [binary form](crate::wire::binary), cut into
//! chunks: as the source sent it, or re-encoded once when it came as JSON
//! (a quarter of the bytes to write and to keep, and one form to read back;
//! a batch with a record that has no binary form, which the steward's checks
//! refuse anyway, stays JSON). The store writes a few dozen keys per batch
//! instead of one per record. Batches stored as JSON by earlier releases
//! (header version 2) are read as they are: the header's version says which
//! form the chunks hold. Chunks stay small (4 KiB, far under
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

use crate::keyedhash::Keyed;
use crate::storage::{Durable, WriteBatch};

use crate::record::PseudoRecord;
use crate::wire::binary::{BatchView, FieldValue, RecordView};
use crate::wire::{binary, Batch, BatchFormat};

/// How many body bytes one chunk holds (see the module docs for why small).
pub const CHUNK_BYTES: usize = 4096;

const TREE: &str = "batches";
/// Header version of a batch whose body is JSON (every batch before the binary form).
const HEADER_JSON: u8 = 2;
/// Header version of a batch whose body is the binary form.
const HEADER_BINARY: u8 = 3;
const HEADER_LEN: usize = 1 + 8 + 4 + 8 + 8 + 8 + 4;
const P_HEADER: u8 = b'h';
const P_CHUNK: u8 = b'd';
const P_COUNT: u8 = b'n';
const P_RID: u8 = b'i';
const P_VERSIONS: u8 = b's';
const P_UNAUDITED: u8 = b'a';
const RID_INDEX_MARK: &[u8] = b"m:rid_index";

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
    /// How the body is written.
    pub format: BatchFormat,
}

impl BatchHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = match self.format {
            BatchFormat::Json => HEADER_JSON,
            BatchFormat::Binary => HEADER_BINARY,
        };
        out[1..9].copy_from_slice(&self.records.to_le_bytes());
        out[9..13].copy_from_slice(&self.chunks.to_le_bytes());
        out[13..21].copy_from_slice(&self.bytes.to_le_bytes());
        out[21..29].copy_from_slice(&self.seq.to_le_bytes());
        out[29..37].copy_from_slice(&self.received_at.to_le_bytes());
        out[37..41].copy_from_slice(&self.epoch.to_le_bytes());
        out
    }

    fn decode(v: &[u8]) -> Option<BatchHeader> {
        if v.len() != HEADER_LEN {
            return None;
        }
        let format = match v[0] {
            HEADER_JSON => BatchFormat::Json,
            HEADER_BINARY => BatchFormat::Binary,
            _ => return None,
        };
        let u64_at = |i: usize| v.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        Some(BatchHeader {
            records: u64_at(1)?,
            chunks: v.get(9..13).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)?,
            bytes: u64_at(13)?,
            seq: u64_at(21)?,
            received_at: u64_at(29)? as i64,
            epoch: v.get(37..41).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes)?,
            format,
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

/// What the versions of a batch did, counted per (source, kind). Counts only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Versions {
    /// Records whose rid was not held.
    pub new: u64,
    /// Records that replaced a held version with other content.
    pub replaced: u64,
    /// Records equal to the version held (a re-export): nothing stored.
    pub unchanged: u64,
    /// Records older than the version held (a replay or a reordered batch): dropped.
    pub stale: u64,
    /// Held records removed by a tombstone.
    pub deleted: u64,
}

impl Versions {
    fn encode(&self) -> [u8; 40] {
        let mut out = [0u8; 40];
        for (i, n) in [self.new, self.replaced, self.unchanged, self.stale, self.deleted].iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&n.to_le_bytes());
        }
        out
    }

    fn decode(v: &[u8]) -> Option<Versions> {
        let at = |i: usize| v.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
        Some(Versions { new: at(0)?, replaced: at(1)?, unchanged: at(2)?, stale: at(3)?, deleted: at(4)? })
    }

    pub fn add(&mut self, o: &Versions) {
        self.new += o.new;
        self.replaced += o.replaced;
        self.unchanged += o.unchanged;
        self.stale += o.stale;
        self.deleted += o.deleted;
    }
}

/// The version of a record the index holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    seq: u64,
    hash: [u8; 16],
    live: bool,
    /// Shared by every record of the batch.
    batch_id: Arc<[u8]>,
}

impl Held {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(25 + self.batch_id.len());
        v.extend_from_slice(&self.seq.to_le_bytes());
        v.extend_from_slice(&self.hash);
        v.push(u8::from(self.live));
        v.extend_from_slice(&self.batch_id);
        v
    }

    fn decode(v: &[u8]) -> Option<Held> {
        Some(Held {
            seq: u64::from_le_bytes(v.get(..8)?.try_into().ok()?),
            hash: v.get(8..24)?.try_into().ok()?,
            live: *v.get(24)? == 1,
            batch_id: v.get(25..)?.into(),
        })
    }
}

/// `i` epoch source `00` kind `00` rid: where the version of a record is kept.
fn rid_key(epoch: u32, source: &str, kind: &str, rid: &str) -> Vec<u8> {
    // Admitted rids are 32 hex digits (checked at the door): 16 bytes, no allocation.
    match crate::hex::decode_array::<16>(rid) {
        Some(b) => rid_key_of(epoch, source, kind, &b),
        None => rid_key_of(epoch, source, kind, rid.as_bytes()),
    }
}

/// [`rid_key`] of a rid given as its 16 bytes (an admitted rid: the same key
/// its 32 hex digits give) or, never admitted, as its text.
fn rid_key_of(epoch: u32, source: &str, kind: &str, rid: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + source.len() + kind.len() + rid.len());
    k.push(P_RID);
    k.extend_from_slice(&epoch.to_be_bytes());
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(kind.as_bytes());
    k.push(0);
    k.extend_from_slice(rid);
    k
}

/// A record's key in the in-memory index: what its `i` key ([`rid_key`])
/// says, in 24 bytes and no allocation — the epoch, the (source, kind) pair
/// as the number [`Scopes`] gives it, and the rid's 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RidKey {
    epoch: u32,
    scope: u32,
    rid: [u8; 16],
}

/// The 16 bytes of an admitted rid (32 hex digits). A rid of another form
/// is never admitted (the door checks it); for totality it is what its `i`
/// key holds ([`rid_key`]): its text when that is 16 bytes long (as
/// ambiguous as the `i` key is), else the first 16 bytes of the SHA-256 of
/// its text — so [`Scopes::key_of_stored`] gives the same key.
fn rid16(rid: &str) -> [u8; 16] {
    match crate::hex::decode_array::<16>(rid) {
        Some(b) => b,
        None => odd_rid16(rid.as_bytes()),
    }
}

/// [`rid16`] of a rid that is not 32 hex digits, from the bytes its `i` key holds.
fn odd_rid16(text: &[u8]) -> [u8; 16] {
    <[u8; 16]>::try_from(text).unwrap_or_else(|_| {
        let d = ring::digest::digest(&ring::digest::SHA256, text);
        let mut b = [0u8; 16];
        b.copy_from_slice(&d.as_ref()[..16]);
        b
    })
}

/// Numbers for the (source, kind) pairs of [`RidKey`]s, given in order of
/// first use; in memory only (the index is rebuilt at open).
#[derive(Default)]
struct Scopes(std::sync::Mutex<ScopeNumbers>);

/// Per source, per kind: the pair's number; and the next number to give.
#[derive(Default)]
struct ScopeNumbers {
    of: std::collections::HashMap<Box<str>, std::collections::HashMap<Box<str>, u32>>,
    next: u32,
}

impl Scopes {
    fn of(&self, source: &str, kind: &str) -> u32 {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let ScopeNumbers { of, next } = &mut *guard;
        let kinds = match of.get_mut(source) {
            Some(k) => k,
            None => of.entry(source.into()).or_default(),
        };
        match kinds.get(kind) {
            Some(&n) => n,
            None => {
                let n = *next;
                *next += 1;
                kinds.insert(kind.into(), n);
                n
            }
        }
    }

    fn key(&self, epoch: u32, source: &str, kind: &str, rid: &str) -> RidKey {
        RidKey { epoch, scope: self.of(source, kind), rid: rid16(rid) }
    }

    /// The index key of an `i` key ([`rid_key`]); `None` when it is not one.
    fn key_of_stored(&self, k: &[u8]) -> Option<RidKey> {
        let epoch = u32::from_be_bytes(k.get(1..5)?.try_into().ok()?);
        let mut parts = k.get(5..)?.splitn(3, |&b| b == 0);
        let source = std::str::from_utf8(parts.next()?).ok()?;
        let kind = std::str::from_utf8(parts.next()?).ok()?;
        let rid = odd_rid16(parts.next()?);
        Some(RidKey { epoch, scope: self.of(source, kind), rid })
    }
}

fn versions_key(source: &str, kind: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + source.len() + kind.len());
    k.push(P_VERSIONS);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(kind.as_bytes());
    k
}

/// What a record says, for telling a re-export from a correction: SHA-256
/// (first 16 bytes) of its tokens and fields (not its line or version),
/// written out with every string, map and list length-prefixed and every
/// value tagged by type, so two different contents never give the same
/// bytes, and hashed in one call. A token is written as its scheme's
/// [`scheme_id`], its epoch and its 16 bytes (a token text that is not
/// `<epoch>:<hex>`, which a checked record never has, as its text).
///
/// A hash is compared only with hashes made from records by the same
/// release: the index of held versions is rebuilt from the stored records
/// at open, and the hashes kept in `i` entries are never compared. So the
/// form may change between releases without a stored record seeming changed.
pub fn content_hash(r: &PseudoRecord, ids: &mut SchemeIds) -> [u8; 16] {
    let mut buf = Vec::with_capacity(512);
    put_len(&mut buf, r.tokens.len());
    for (scheme, token) in &r.tokens {
        buf.extend_from_slice(&ids.of(scheme));
        match crate::token::parse_token(token) {
            Some((epoch, t)) => put_token(&mut buf, epoch, &t),
            None => {
                buf.push(1);
                put_text(&mut buf, token);
            }
        }
    }
    put_len(&mut buf, r.fields.len());
    for (name, value) in &r.fields {
        put_text(&mut buf, name);
        put_json_value(&mut buf, value);
    }
    digest16(&buf)
}

/// The 8 bytes a scheme's name stands for in a [`content_hash`]: the first
/// 8 of its SHA-256 (a few dozen names: they do not collide).
pub fn scheme_id(name: &str) -> [u8; 8] {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&d.as_ref()[..8]);
    out
}

/// [`scheme_id`]s worked out once per name, for one batch or one pass over the store.
#[derive(Default)]
pub struct SchemeIds(std::collections::HashMap<String, [u8; 8]>);

impl SchemeIds {
    fn of(&mut self, name: &str) -> [u8; 8] {
        if let Some(id) = self.0.get(name) {
            return *id;
        }
        let id = scheme_id(name);
        self.0.insert(name.to_owned(), id);
        id
    }
}

fn put_token(buf: &mut Vec<u8>, epoch: u32, token: &crate::token::Token) {
    buf.push(0);
    buf.extend_from_slice(&epoch.to_le_bytes());
    buf.extend_from_slice(token);
}

/// [`content_hash`] of a record of a binary batch, read from the view: the
/// same bytes (a date as `YYYY-MM-DD`, an integer as JSON's), written into
/// `buf` (the caller's, reused from record to record); `ids` holds the
/// [`scheme_id`] of the batch's string table entries met so far (the
/// caller's, one per batch).
pub fn content_hash_view(
    view: &BatchView<'_>,
    r: &RecordView<'_>,
    buf: &mut Vec<u8>,
    ids: &mut Vec<Option<[u8; 8]>>,
) -> [u8; 16] {
    buf.clear();
    let tokens = view.tokens(r);
    put_len(buf, tokens.len());
    for t in tokens {
        if ids.len() <= t.scheme {
            ids.resize(t.scheme + 1, None);
        }
        let id = *ids[t.scheme].get_or_insert_with(|| scheme_id(view.scheme(t)));
        buf.extend_from_slice(&id);
        put_token(buf, r.epoch, &t.token);
    }
    let fields = view.fields(r);
    put_len(buf, fields.len());
    for (name, value) in fields {
        put_text(buf, name);
        match *value {
            FieldValue::Null => buf.push(0),
            FieldValue::Bool(b) => buf.extend_from_slice(&[1, u8::from(b)]),
            FieldValue::Int(i) => {
                buf.push(2);
                buf.extend_from_slice(&i.to_le_bytes());
            }
            FieldValue::Date(d) => {
                buf.push(5);
                put_text(buf, binary::date_text(d).as_str());
            }
            FieldValue::Str(s) => {
                buf.push(5);
                put_text(buf, s);
            }
        }
    }
    digest16(buf)
}

fn digest16(bytes: &[u8]) -> [u8; 16] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

fn put_len(buf: &mut Vec<u8>, n: usize) {
    buf.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_text(buf: &mut Vec<u8>, s: &str) {
    put_len(buf, s.len());
    buf.extend_from_slice(s.as_bytes());
}

fn put_json_value(buf: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => buf.push(0),
        Value::Bool(b) => buf.extend_from_slice(&[1, u8::from(*b)]),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                buf.push(2);
                buf.extend_from_slice(&i.to_le_bytes());
            } else if let Some(u) = n.as_u64() {
                buf.push(3);
                buf.extend_from_slice(&u.to_le_bytes());
            } else {
                buf.push(4);
                buf.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_bits().to_le_bytes());
            }
        }
        Value::String(s) => {
            buf.push(5);
            put_text(buf, s);
        }
        Value::Array(a) => {
            buf.push(6);
            put_len(buf, a.len());
            a.iter().for_each(|x| put_json_value(buf, x));
        }
        Value::Object(o) => {
            buf.push(7);
            put_len(buf, o.len());
            for (k, x) in o {
                put_text(buf, k);
                put_json_value(buf, x);
            }
        }
    }
}

/// Whether version `seq` is newer than `held`. Records of a source older
/// than versions carry 0: among those, the later arrival wins.
fn newer(seq: u64, held: u64) -> bool {
    seq > held || (seq == 0 && held == 0)
}

/// What [`Store::put_batch`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Put {
    pub outcome: PutOutcome,
    /// Per record of the batch: whether it goes to linkage (a new version,
    /// or a tombstone that removed a held record); false for a replay.
    pub link: Vec<bool>,
    /// Per kind.
    pub versions: BTreeMap<String, Versions>,
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
    /// The version held per `i` key, in memory: rebuilt at open from the
    /// stored batches (their records carry rid, version and content) and the
    /// `i` entries, which are written only for tombstones and for versions
    /// raised by an unchanged re-send — never one per new record, which
    /// would double the store's size and halve the exchange rate.
    /// Changed on the writer thread only, after the write it mirrors.
    index: Arc<std::sync::Mutex<std::collections::HashMap<RidKey, Held, Keyed>>>,
    /// The numbers of the (source, kind) pairs in `index`'s keys.
    scopes: Arc<Scopes>,
}

fn batch_key(prefix: u8, source: &str, batch_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + source.len() + batch_id.len() + 5);
    k.push(prefix);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(batch_id.as_bytes());
    k
}

/// A batch stored whose audit entries (the batch, and a deletion per kind
/// its tombstones removed records of) may not be in the audit log yet: the
/// store writes the mark with the batch, atomically, and removes it once the
/// entries are durable. A crash or a failed audit in between leaves it, and
/// the steward finishes the audit at the replay or at its next start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unaudited {
    pub source: String,
    pub batch_id: String,
    /// Record kind → records its tombstones removed (kinds with none left out).
    pub deletions: BTreeMap<String, u64>,
}

impl Unaudited {
    /// The deletions of a stored batch's version outcomes.
    pub fn of(source: &str, batch_id: &str, versions: &BTreeMap<String, Versions>) -> Unaudited {
        let deletions = versions.iter().filter(|(_, v)| v.deleted > 0).map(|(k, v)| (k.clone(), v.deleted)).collect();
        Unaudited { source: source.to_string(), batch_id: batch_id.to_string(), deletions }
    }

    /// Per kind: length (u16 LE), the name, the count (u64 LE).
    fn encode_deletions(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (kind, n) in &self.deletions {
            let name = &kind.as_bytes()[..kind.len().min(usize::from(u16::MAX))];
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(name);
            v.extend_from_slice(&n.to_le_bytes());
        }
        v
    }

    fn decode(key: &[u8], mut v: &[u8]) -> Result<Unaudited, StoreError> {
        let (source, batch_id) = split_batch_key(key)?;
        let bad = || StoreError::BadKey(format!("the unaudited mark of batch {batch_id} is damaged"));
        let mut deletions = BTreeMap::new();
        while !v.is_empty() {
            let len = usize::from(u16::from_le_bytes(v.get(..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?));
            let name = v.get(2..2 + len).ok_or_else(bad)?;
            let n = u64::from_le_bytes(v.get(2 + len..10 + len).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
            deletions.insert(String::from_utf8(name.to_vec()).map_err(|_| bad())?, n);
            v = &v[10 + len..];
        }
        Ok(Unaudited { source, batch_id, deletions })
    }
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

/// Insert `body` as the chunks under `prefix` (`..00`), removing chunks
/// `n..old_chunks` of an earlier, longer body. Returns the chunk count.
fn put_chunks(write: &mut WriteBatch, prefix: &[u8], body: &[u8], old_chunks: u32) -> u32 {
    let chunk_key = |i: u32| {
        let mut k = Vec::with_capacity(prefix.len() + 4);
        k.extend_from_slice(prefix);
        k.extend_from_slice(&i.to_be_bytes());
        k
    };
    let mut n = 0u32;
    for chunk in body.chunks(CHUNK_BYTES) {
        write.insert(chunk_key(n), chunk);
        n = n.saturating_add(1);
    }
    for i in n..old_chunks {
        write.remove(chunk_key(i));
    }
    n
}

/// The body a batch of `records` is stored as: its binary form, or JSON
/// when a record has none (see the module docs).
fn stored_body<'r>(
    source: &str,
    batch_id: &str,
    records: impl Iterator<Item = &'r PseudoRecord> + Clone,
) -> sled::Result<(Vec<u8>, BatchFormat)> {
    match binary::encode(source, batch_id, records.clone()) {
        Ok(body) => Ok((body, BatchFormat::Binary)),
        Err(_) => Ok((encode_json(source, batch_id, records)?, BatchFormat::Json)),
    }
}

/// A batch body of `records` in JSON, as a source would send it.
fn encode_json<'r>(
    source: &str,
    batch_id: &str,
    records: impl Iterator<Item = &'r PseudoRecord>,
) -> sled::Result<Vec<u8>> {
    let fail = |e: serde_json::Error| sled::Error::Unsupported(format!("encoding a batch: {:?}", e.classify()));
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"source\":");
    serde_json::to_writer(&mut body, source).map_err(fail)?;
    body.extend_from_slice(b",\"batch_id\":");
    serde_json::to_writer(&mut body, batch_id).map_err(fail)?;
    body.extend_from_slice(b",\"records\":[");
    for (i, r) in records.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, r).map_err(fail)?;
    }
    body.extend_from_slice(b"]}");
    Ok(body)
}

/// Cut the records `drop` names (position, record) out of held batch
/// `(source, batch_id)`: its body, chunks and header rewritten in `write`.
/// The header stays (with fewer records, maybe none), so a replay of the
/// batch is still recognized. Returns the batch's epoch and the records cut.
fn rewrite_batch(
    tree: &sled::Tree,
    write: &mut WriteBatch,
    source: &str,
    batch_id: &str,
    drop: impl Fn(usize, &PseudoRecord) -> bool,
) -> Result<(u32, u64), StoreError> {
    let hk = batch_key(P_HEADER, source, batch_id);
    let Some(hv) = tree.get(&hk)? else { return Ok((0, 0)) };
    let b = read_batch_from(tree, source.to_string(), batch_id.to_string(), &hv)?;
    let before = b.records.len();
    let kept: Vec<&PseudoRecord> = b.records.iter().enumerate().filter(|(i, r)| !drop(*i, r)).map(|(_, r)| r).collect();
    let removed = (before - kept.len()) as u64;
    if removed == 0 {
        return Ok((b.header.epoch, 0));
    }
    let (body, format) = stored_body(source, batch_id, kept.iter().copied())?;
    let mut prefix = batch_key(P_CHUNK, source, batch_id);
    prefix.push(0);
    let chunks = put_chunks(write, &prefix, &body, b.header.chunks);
    let header = BatchHeader { records: kept.len() as u64, chunks, bytes: body.len() as u64, format, ..b.header };
    write.insert(hk, header.encode());
    Ok((b.header.epoch, removed))
}

/// [`rewrite_batch`] cutting the versions whose index keys are in `gone`, for the writer thread.
fn cut_records(
    tree: &sled::Tree,
    write: &mut WriteBatch,
    (source, batch_id, epoch): (&str, &str, u32),
    scopes: &Scopes,
    gone: &std::collections::HashSet<RidKey>,
) -> sled::Result<u64> {
    rewrite_batch(tree, write, source, batch_id, |_, r| gone.contains(&scopes.key(epoch, source, &r.kind, &r.rid)))
        .map(|(_, n)| n)
        .map_err(|e| match e {
            StoreError::Sled(e) => e,
            other => sled::Error::Unsupported(other.to_string()),
        })
}

/// What the writer needs of one record of a batch being stored.
struct Entry {
    /// Position of the record's kind in the batch's kinds.
    kind: usize,
    seq: u64,
    deleted: bool,
    /// Its index key.
    key: RidKey,
    /// Its rid's text when that is not 32 hex digits (never admitted; its `i`
    /// key holds the text, see [`rid_key`]).
    odd_rid: Option<Box<str>>,
    /// Its [`content_hash`] (zero for a tombstone).
    hash: [u8; 16],
}

/// The records of a batch being stored, for storing only those that count.
enum Kept {
    /// Owned records (a JSON batch without a binary form, or a caller's).
    Owned(Vec<PseudoRecord>),
    /// A checked binary body.
    View(hyper::body::Bytes),
}

impl Kept {
    /// The body of the records `keep` names (by position), and its form.
    fn encode_kept(&self, source: &str, batch_id: &str, keep: &[bool]) -> sled::Result<(Vec<u8>, BatchFormat)> {
        match self {
            Kept::Owned(records) => {
                stored_body(source, batch_id, records.iter().zip(keep).filter(|(_, k)| **k).map(|(r, _)| r))
            }
            Kept::View(body) => {
                let view = binary::decode_view(body)
                    .map_err(|e| sled::Error::Unsupported(format!("re-reading a checked batch: {e}")))?;
                Ok((view.encode_kept(keep), BatchFormat::Binary))
            }
        }
    }
}

/// The position of `kind` in `kinds`, added if new (a batch has a kind or a few).
fn kind_position(kinds: &mut Vec<String>, kind: &str) -> usize {
    match kinds.iter().position(|k| k == kind) {
        Some(i) => i,
        None => {
            kinds.push(kind.to_string());
            kinds.len() - 1
        }
    }
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
        let store = Store { durable, db, tree, index: Arc::default(), scopes: Arc::default() };
        store.migrate_v1()?;
        store.build_rid_index()?;
        store.load_index()?;
        Ok(store)
    }

    /// Store a batch (already validated: `records` are its records, parsed
    /// from `body`, which is written as `format`; bodies are stored in the
    /// binary form where they have one, see the module docs) unless
    /// `(source, batch_id)` is already held, keeping one
    /// version per (source, kind, rid) under the epoch (see the module docs):
    /// records not newer than the version held are not stored, and held
    /// versions a record replaces or a tombstone deletes are cut out of their
    /// batches, all in one atomic write. Blocking: call it from
    /// `spawn_blocking`. Durable when it returns (a duplicate too: the first
    /// copy was made durable before, or in the same group). Gives `records` back.
    pub fn put_batch(
        &self,
        source: &str,
        batch_id: &str,
        epoch: u32,
        records: Vec<PseudoRecord>,
        body: &[u8],
        format: BatchFormat,
    ) -> Result<(Put, Vec<PseudoRecord>), StoreError> {
        let mut kinds = Vec::new();
        let mut ids = SchemeIds::default();
        let entries = records
            .iter()
            .map(|r| Entry {
                kind: kind_position(&mut kinds, &r.kind),
                seq: r.seq,
                deleted: r.deleted,
                key: self.scopes.key(epoch, source, &r.kind, &r.rid),
                odd_rid: crate::hex::decode_array::<16>(&r.rid).is_none().then(|| r.rid.as_str().into()),
                hash: if r.deleted { [0; 16] } else { content_hash(r, &mut ids) },
            })
            .collect();
        let (put, records) =
            self.put_entries(source, batch_id, epoch, kinds, entries, body, format, Kept::Owned(records))?;
        let records = match records {
            Kept::Owned(r) => r,
            Kept::View(_) => Vec::new(),
        };
        Ok((put, records))
    }

    /// [`Store::put_batch`] of a checked batch in the binary form, `body`,
    /// decoded as `view`: stored as it is (or, when some of its records do
    /// not count, re-encoded without them), no owned record made.
    pub fn put_view(
        &self,
        source: &str,
        batch_id: &str,
        epoch: u32,
        view: &BatchView<'_>,
        body: &hyper::body::Bytes,
    ) -> Result<Put, StoreError> {
        let mut kinds: Vec<String> = Vec::new();
        let mut scopes: Vec<u32> = Vec::new();
        let mut buf = Vec::with_capacity(512);
        let mut ids = Vec::new();
        let entries = view
            .records
            .iter()
            .map(|r| {
                let kind = kind_position(&mut kinds, r.kind);
                if scopes.len() < kinds.len() {
                    scopes.push(self.scopes.of(source, r.kind));
                }
                Entry {
                    kind,
                    seq: r.seq,
                    deleted: r.deleted,
                    key: RidKey { epoch, scope: scopes[kind], rid: r.rid },
                    odd_rid: None,
                    hash: if r.deleted { [0; 16] } else { content_hash_view(view, r, &mut buf, &mut ids) },
                }
            })
            .collect();
        let kept = Kept::View(body.clone());
        let (put, _) = self.put_entries(source, batch_id, epoch, kinds, entries, body, BatchFormat::Binary, kept)?;
        Ok(put)
    }

    /// The write of [`Store::put_batch`] and [`Store::put_view`], from what the
    /// writer needs of each record (`entries`, kinds by position in `kinds`).
    #[allow(clippy::too_many_arguments)]
    fn put_entries(
        &self,
        source: &str,
        batch_id: &str,
        epoch: u32,
        kinds: Vec<String>,
        entries: Vec<Entry>,
        body: &[u8],
        format: BatchFormat,
        records: Kept,
    ) -> Result<(Put, Kept), StoreError> {
        let header_key = batch_key(P_HEADER, source, batch_id);
        let mut chunk_prefix = batch_key(P_CHUNK, source, batch_id);
        chunk_prefix.push(0);

        // Build the write set before handing it to the writer: copying the body
        // and hashing the records are the costly parts.
        let mut write = WriteBatch::default();
        let n_chunks = put_chunks(&mut write, &chunk_prefix, body, 0);
        // Within the batch, the newest version of a rid (the later one on a tie).
        let mut winner: std::collections::HashMap<RidKey, usize, Keyed> =
            std::collections::HashMap::with_capacity_and_hasher(entries.len(), Keyed::default());
        for (i, e) in entries.iter().enumerate() {
            let w = winner.entry(e.key).or_insert(i);
            if e.seq >= entries[*w].seq {
                *w = i;
            }
        }
        let wins: Vec<bool> = entries.iter().enumerate().map(|(i, e)| winner.get(&e.key) == Some(&i)).collect();
        drop(winner);
        let tree = self.tree.clone();
        let index = self.index.clone();
        let scopes = self.scopes.clone();
        let ckey = count_key(source, epoch);
        let bytes = body.len() as u64;
        let (source, batch_id) = (source.to_string(), batch_id.to_string());
        // On the writer thread: the duplicate check, the versions held and the counts see every earlier write.
        let out = self.durable.write(move |db| {
            let mut write = write;
            let n = entries.len();
            if tree.contains_key(&header_key)? {
                let put = Put { outcome: PutOutcome::Duplicate, link: vec![false; n], versions: BTreeMap::new() };
                return Ok((put, records));
            }
            let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
            let this_batch: Arc<[u8]> = batch_id.as_bytes().into();
            let no_batch: Arc<[u8]> = Arc::from(&[][..]);
            // What the index becomes once the write is applied.
            let mut changes: Vec<(RidKey, Held)> = Vec::with_capacity(n);
            let mut keep = vec![false; n];
            let mut link = vec![false; n];
            let mut per_kind = vec![Versions::default(); kinds.len()];
            // Held batch id → index keys of the versions to cut out of it.
            let mut cut: BTreeMap<Vec<u8>, std::collections::HashSet<RidKey>> = BTreeMap::new();
            for (i, e) in entries.into_iter().enumerate() {
                let Some(v) = per_kind.get_mut(e.kind) else { continue };
                if !wins[i] {
                    v.stale += 1;
                    continue;
                }
                let key = e.key;
                let kind = kinds.get(e.kind).map_or("", String::as_str);
                let rid: &[u8] = e.odd_rid.as_deref().map_or(&e.key.rid[..], str::as_bytes);
                let me = Held {
                    seq: e.seq,
                    hash: e.hash,
                    live: !e.deleted,
                    batch_id: if e.deleted { no_batch.clone() } else { this_batch.clone() },
                };
                let held = index.get(&key).cloned();
                // `persist`: kept in an `i` entry too (tombstones, raised versions); else in memory only.
                let mut set = |key: RidKey, held: Held, persist: bool| {
                    if persist {
                        write.insert(rid_key_of(epoch, &source, kind, rid), held.encode());
                    }
                    changes.push((key, held));
                };
                match held {
                    None => {
                        if !e.deleted {
                            v.new += 1;
                            keep[i] = true;
                            link[i] = true;
                        }
                        set(key, me, e.deleted);
                    }
                    Some(h) if !newer(e.seq, h.seq) => {
                        if h.live && !e.deleted && h.hash == e.hash {
                            v.unchanged += 1;
                        } else {
                            v.stale += 1;
                        }
                    }
                    Some(h) => match (h.live, e.deleted) {
                        (true, false) if h.hash == e.hash => {
                            v.unchanged += 1;
                            set(key, Held { seq: e.seq, ..h }, true);
                        }
                        (true, _) => {
                            if e.deleted {
                                v.deleted += 1;
                            } else {
                                v.replaced += 1;
                                keep[i] = true;
                            }
                            link[i] = true;
                            cut.entry(h.batch_id.to_vec()).or_default().insert(key);
                            set(key, me, e.deleted);
                        }
                        (false, false) => {
                            v.new += 1;
                            keep[i] = true;
                            link[i] = true;
                            set(key, me, false);
                        }
                        (false, true) => set(key, Held { seq: e.seq, ..h }, true),
                    },
                }
            }
            // Per kind, as before: every kind of the batch, in name order.
            let versions: BTreeMap<String, Versions> = kinds.into_iter().zip(per_kind).collect();
            let mut counts = tree.get(&ckey)?.and_then(|v| SourceCounts::decode(&v)).unwrap_or_default();
            for (held_id, gone) in &cut {
                let held_id = String::from_utf8_lossy(held_id).into_owned();
                let removed = cut_records(&tree, &mut write, (&source, &held_id, epoch), &scopes, gone)?;
                counts.records = counts.records.saturating_sub(removed);
            }
            let kept = keep.iter().filter(|k| **k).count() as u64;
            let (chunks_n, bytes, format) = if kept == n as u64 {
                (n_chunks, bytes, format)
            } else {
                // Only the records that count are stored: the body as sent is replaced.
                let (body, format) = records.encode_kept(&source, &batch_id, &keep)?;
                (put_chunks(&mut write, &chunk_prefix, &body, n_chunks), body.len() as u64, format)
            };
            counts.records = counts.records.saturating_add(kept);
            counts.batches = counts.batches.saturating_add(1);
            let header = BatchHeader {
                records: kept,
                chunks: chunks_n,
                bytes,
                seq: db.generate_id()?,
                received_at: now_unix(),
                epoch,
                format,
            };
            write.insert(header_key, header.encode());
            write.insert(ckey, counts.encode());
            for (kind, v) in &versions {
                let vkey = versions_key(&source, kind);
                let mut total = tree.get(&vkey)?.and_then(|x| Versions::decode(&x)).unwrap_or_default();
                total.add(v);
                write.insert(vkey, total.encode());
            }
            let mark = Unaudited::of(&source, &batch_id, &versions);
            write.insert(batch_key(P_UNAUDITED, &source, &batch_id), mark.encode_deletions());
            tree.apply_batch(write.into_inner()?)?;
            index.extend(changes);
            Ok((Put { outcome: PutOutcome::Stored(kept), link, versions }, records))
        })?;
        Ok(out)
    }

    /// Build the in-memory index: every stored record's version, then the `i`
    /// entries (tombstones, raised versions) where newer.
    fn load_index(&self) -> Result<(), StoreError> {
        let mut index = std::collections::HashMap::with_hasher(Keyed::default());
        let mut ids = SchemeIds::default();
        for b in self.batches() {
            let b = b?;
            let id: Arc<[u8]> = b.batch_id.as_bytes().into();
            for r in &b.records {
                let key = self.scopes.key(b.header.epoch, &b.source, &r.kind, &r.rid);
                let held = Held { seq: r.seq, hash: content_hash(r, &mut ids), live: true, batch_id: id.clone() };
                index.insert(key, held);
            }
        }
        for kv in self.tree.scan_prefix([P_RID]) {
            let (k, v) = kv?;
            let Some(entry) = Held::decode(&v) else { continue };
            let Some(k) = self.scopes.key_of_stored(&k) else { continue };
            match index.get_mut(&k) {
                Some(h) if entry.seq > h.seq => {
                    if entry.live {
                        h.seq = entry.seq;
                    } else {
                        *h = entry;
                    }
                }
                Some(_) => {}
                None if !entry.live => {
                    index.insert(k, entry);
                }
                None => {}
            }
        }
        *self.index.lock().unwrap_or_else(|p| p.into_inner()) = index;
        Ok(())
    }

    /// Versions counted per source and kind, since the store began (every epoch).
    pub fn versions(&self) -> Result<BTreeMap<String, BTreeMap<String, Versions>>, StoreError> {
        let mut out: BTreeMap<String, BTreeMap<String, Versions>> = BTreeMap::new();
        for kv in self.tree.scan_prefix([P_VERSIONS]) {
            let (k, v) = kv?;
            let (source, kind) = split_batch_key(&k)?;
            let v = Versions::decode(&v).ok_or_else(|| StoreError::BadKey("version counts".into()))?;
            out.entry(source).or_default().insert(kind, v);
        }
        Ok(out)
    }

    /// A store written before the rid index (every record stored, re-sends
    /// too): index every record, the later arrival of a rid winning, cut the
    /// losers out of their batches and recount. One atomic write with the
    /// mark, so it runs once. Counted as `replaced` (an earlier version had
    /// other content) or `unchanged`.
    fn build_rid_index(&self) -> Result<(), StoreError> {
        if self.tree.contains_key(RID_INDEX_MARK)? {
            return Ok(());
        }
        let mut order: Vec<(u64, String, String)> = Vec::new();
        for kv in self.tree.scan_prefix([P_HEADER]) {
            let (k, v) = kv?;
            let (source, batch_id) = split_batch_key(&k)?;
            let h = BatchHeader::decode(&v).ok_or_else(|| StoreError::BadKey("a batch header".into()))?;
            order.push((h.seq, source, batch_id));
        }
        order.sort();
        type Place = (String, String, u32);
        let mut index: std::collections::HashMap<Vec<u8>, (Held, Place)> = std::collections::HashMap::new();
        let mut losers: BTreeMap<(String, String), std::collections::HashSet<u32>> = BTreeMap::new();
        let mut versions: BTreeMap<(String, String), Versions> = BTreeMap::new();
        let mut ids = SchemeIds::default();
        for (_, source, batch_id) in &order {
            let Some(hv) = self.tree.get(batch_key(P_HEADER, source, batch_id))? else { continue };
            let b = read_batch_from(&self.tree, source.clone(), batch_id.clone(), &hv)?;
            for (pos, r) in b.records.iter().enumerate() {
                let pos = pos as u32;
                let key = rid_key(b.header.epoch, source, &r.kind, &r.rid);
                let hash = content_hash(r, &mut ids);
                let me = Held { seq: r.seq, hash, live: true, batch_id: batch_id.as_bytes().into() };
                let v = versions.entry((source.clone(), r.kind.clone())).or_default();
                match index.get(&key) {
                    Some((h, _)) if !newer(r.seq, h.seq) => {
                        v.stale += 1;
                        losers.entry((source.clone(), batch_id.clone())).or_default().insert(pos);
                    }
                    Some((h, (s0, b0, p0))) => {
                        if h.hash == hash {
                            v.unchanged += 1;
                        } else {
                            v.replaced += 1;
                        }
                        losers.entry((s0.clone(), b0.clone())).or_default().insert(*p0);
                        index.insert(key, (me, (source.clone(), batch_id.clone(), pos)));
                    }
                    None => {
                        v.new += 1;
                        index.insert(key, (me, (source.clone(), batch_id.clone(), pos)));
                    }
                }
            }
        }
        let mut write = WriteBatch::default();
        let mut removed_per: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for ((source, batch_id), gone) in &losers {
            let (epoch, removed) =
                rewrite_batch(&self.tree, &mut write, source, batch_id, |pos, _| gone.contains(&(pos as u32)))?;
            *removed_per.entry((source.clone(), epoch)).or_default() += removed;
        }
        for ((source, epoch), removed) in &removed_per {
            let ckey = count_key(source, *epoch);
            let mut c = self.tree.get(&ckey)?.and_then(|v| SourceCounts::decode(&v)).unwrap_or_default();
            c.records = c.records.saturating_sub(*removed);
            write.insert(ckey, c.encode());
        }
        for (key, (held, _)) in &index {
            write.insert(key, held.encode());
        }
        for ((source, kind), v) in &versions {
            write.insert(versions_key(source, kind), v.encode());
        }
        write.insert(RID_INDEX_MARK, [1u8]);
        self.durable.apply(&self.tree, write)?;
        let dropped: u64 = removed_per.values().sum();
        if !order.is_empty() {
            tracing::info!(
                records = index.len(),
                superseded_removed = dropped,
                "steward store upgraded: one record per (source, kind, rid), earlier versions removed"
            );
        }
        Ok(())
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
                header[0] = HEADER_JSON;
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

    /// Every batch stored whose audit may be unfinished (see [`Unaudited`]).
    pub fn unaudited(&self) -> Result<Vec<Unaudited>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix([P_UNAUDITED]) {
            let (k, v) = kv?;
            out.push(Unaudited::decode(&k, &v)?);
        }
        Ok(out)
    }

    /// The mark of one batch, if its audit may be unfinished.
    pub fn unaudited_of(&self, source: &str, batch_id: &str) -> Result<Option<Unaudited>, StoreError> {
        let key = batch_key(P_UNAUDITED, source, batch_id);
        self.tree.get(&key)?.map(|v| Unaudited::decode(&key, &v)).transpose()
    }

    /// The batch's audit entries are durable: remove its mark (durably).
    pub async fn audited(&self, source: &str, batch_id: &str) -> Result<(), StoreError> {
        let mut write = WriteBatch::default();
        write.remove(batch_key(P_UNAUDITED, source, batch_id));
        self.durable.apply_async(&self.tree, write).await?;
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
        self.index.lock().unwrap_or_else(|p| p.into_inner()).retain(|k, _| k.epoch >= epoch);
        // The versions held under a retired epoch (its rids are keyed under its key), a few thousand per write.
        let mut old_rids = Vec::new();
        for k in self.tree.scan_prefix([P_RID]).keys() {
            let k = k?;
            let e = k.get(1..5).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes);
            if e.is_some_and(|e| e < epoch) {
                old_rids.push(k);
            }
        }
        for keys in old_rids.chunks(4096) {
            let mut batch = WriteBatch::default();
            keys.iter().for_each(|k| batch.remove(k));
            self.durable.apply(&self.tree, batch)?;
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
        read_batch_from(&self.tree, source, batch_id, header)
    }
}

/// Read back held batch `(source, batch_id)` whose header is `header`.
fn read_batch_from(
    tree: &sled::Tree,
    source: String,
    batch_id: String,
    header: &[u8],
) -> Result<StoredBatch, StoreError> {
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
    for (i, kv) in tree.scan_prefix(&prefix).take(header.chunks as usize).enumerate() {
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
    let batch: Batch = match header.format {
        BatchFormat::Json => {
            serde_json::from_slice(&body).map_err(|e| corrupt(&format!("not a batch ({:?})", e.classify())))?
        }
        BatchFormat::Binary => binary::decode(&body).map_err(|e| corrupt(&format!("not a batch ({e})")))?,
    };
    if batch.records.len() as u64 != header.records {
        return Err(corrupt("record count differs from the header"));
    }
    Ok(StoredBatch { source, batch_id, header, records: batch.records })
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

    /// Store a JSON body as `store_batch_body` does: parsed, re-encoded in the binary form, then put.
    fn put(store: &Store, source: &str, id: &str, epoch: u32, body: &[u8]) -> PutOutcome {
        let b: Batch = serde_json::from_slice(body).unwrap();
        let bin = binary::encode_batch(&b).unwrap();
        store.put_batch(source, id, epoch, b.records, &bin, BatchFormat::Binary).unwrap().0.outcome
    }

    /// Store a JSON body as the releases before the binary form did: as received (header version 2).
    fn put_json(store: &Store, source: &str, id: &str, epoch: u32, body: &[u8]) -> PutOutcome {
        let b: Batch = serde_json::from_slice(body).unwrap();
        store.put_batch(source, id, epoch, b.records, body, BatchFormat::Json).unwrap().0.outcome
    }

    fn body(source: &str, id: &str, n: usize) -> Vec<u8> {
        let records: Vec<PseudoRecord> = (0..n)
            .map(|i| PseudoRecord {
                source: source.into(),
                kind: "arrest".into(),
                line: i as u64 + 2,
                epoch: 1,
                // Distinct per batch id, as records of different exports.
                rid: format!(
                    "{:08x}{i:024x}",
                    id.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
                ),
                seq: 0,
                deleted: false,
                tokens: [("name_dob".to_string(), format!("1:{:032x}", i * 7))].into(),
                fields: [("age".to_string(), serde_json::json!(30))].into(),
            })
            .collect();
        serde_json::to_vec(&Batch { source: source.into(), batch_id: id.into(), records }).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn a_view_hashes_a_record_as_its_owned_form_does(
            epoch in proptest::prop_oneof![proptest::strategy::Just(0u32), proptest::strategy::Just(u32::MAX), proptest::arbitrary::any::<u32>()],
            tokens in proptest::collection::btree_map("[a-z_]{1,12}", proptest::arbitrary::any::<[u8; 16]>(), 0..5),
            ints in proptest::collection::btree_map("i[a-z]{0,8}", proptest::arbitrary::any::<i64>(), 0..3),
            days in proptest::collection::btree_map("d[a-z]{0,8}", -719_528i32..=2_932_896, 0..3),
            strs in proptest::collection::btree_map("s[a-z]{0,8}", ".{0,80}", 0..3),
            flags in proptest::collection::btree_map("b[a-z]{0,8}", proptest::option::of(proptest::arbitrary::any::<bool>()), 0..3),
        ) {
            use serde_json::Value;
            let mut fields: BTreeMap<String, Value> = BTreeMap::new();
            fields.extend(ints.into_iter().map(|(k, v)| (k, Value::from(v))));
            fields.extend(days.into_iter().map(|(k, d)| {
                let (y, m, day) = crate::days::civil_from_days(d);
                (k, Value::String(format!("{y:04}-{m:02}-{day:02}")))
            }));
            fields.extend(strs.into_iter().map(|(k, v)| (k, Value::String(v))));
            fields.extend(flags.into_iter().map(|(k, v)| (k, v.map_or(Value::Null, Value::Bool))));
            let r = PseudoRecord {
                source: "police".into(),
                kind: "arrest".into(),
                line: 2,
                epoch,
                rid: "ab".repeat(16),
                seq: 9,
                deleted: false,
                tokens: tokens.into_iter().map(|(k, t)| (k, crate::token::format_token(epoch, &t))).collect(),
                fields,
            };
            let bin = binary::encode("police", "b-1", [&r]).unwrap();
            let view = binary::decode_view(&bin).unwrap();
            proptest::prop_assert_eq!(content_hash_view(&view, &view.records[0], &mut Vec::new(), &mut Vec::new()),
                content_hash(&r, &mut SchemeIds::default())
            );
            proptest::prop_assert_eq!(
                rid_key_of(epoch, "police", "arrest", &view.records[0].rid),
                rid_key(epoch, "police", "arrest", &r.rid)
            );
        }
    }

    #[test]
    fn an_index_key_is_what_its_stored_key_says() {
        let scopes = Scopes::default();
        for (source, kind, rid) in [
            ("police", "arrest", "ab".repeat(16)),
            ("jail", "arrest", "0F".repeat(16)),
            ("police", "referral", "x-1".into()),
            // Never admitted, and as ambiguous as its `i` key: 16 bytes of text.
            ("police", "referral", "rid-000000000042".into()),
        ] {
            let key = scopes.key(7, source, kind, &rid);
            assert_eq!(scopes.key_of_stored(&rid_key(7, source, kind, &rid)), Some(key));
            assert_ne!(scopes.key(8, source, kind, &rid), key);
        }
        // One number per (source, kind) pair, whatever the order they come in.
        let police_arrest = scopes.of("police", "arrest");
        assert_eq!(scopes.of("police", "arrest"), police_arrest);
        let numbers: std::collections::HashSet<u32> =
            [("police", "arrest"), ("jail", "arrest"), ("police", "referral"), ("jail", "referral")]
                .into_iter()
                .map(|(s, k)| scopes.of(s, k))
                .collect();
        assert_eq!(numbers.len(), 4);
        assert_eq!(scopes.key_of_stored(b"i\0\0"), None);
    }

    #[test]
    fn content_hash_tells_contents_apart_and_ignores_line_and_version() {
        let b: Batch = serde_json::from_slice(&body("police", "b", 1)).unwrap();
        let r = b.records[0].clone();
        let h = content_hash(&r, &mut SchemeIds::default());
        // Pinned so that a change of form is made on purpose: it is harmless (hashes are
        // compared only with hashes this release made from records, see `content_hash`).
        assert_eq!(crate::hex::encode(&h), "02aade194bf1bada337c5b6f1f1430aa");
        let with = |f: &dyn Fn(&mut PseudoRecord)| {
            let mut x = r.clone();
            f(&mut x);
            content_hash(&x, &mut SchemeIds::default())
        };
        let (scheme, token) = r.tokens.iter().next().map(|(k, v)| (k.clone(), v.clone())).unwrap();
        let (epoch, bytes) = crate::token::parse_token(&token).unwrap();
        assert_eq!(with(&|x| (x.line, x.seq) = (99, 7)), h, "line and version are not content");
        let others = [
            with(&|x| _ = x.fields.insert("age".into(), serde_json::json!(31))),
            with(&|x| _ = x.fields.insert("age".into(), serde_json::json!("30"))),
            with(&|x| _ = x.fields.insert("age".into(), serde_json::Value::Null)),
            with(&|x| _ = x.fields.insert("felony".into(), serde_json::json!(false))),
            with(&|x| _ = x.tokens.insert("name_dob".into(), format!("1:{:032x}", 8))),
            // The same token bytes under another epoch, or another scheme; a token text out of form.
            with(&|x| _ = x.tokens.insert(scheme.clone(), crate::token::format_token(epoch + 1, &bytes))),
            with(&|x| {
                let t = x.tokens.remove(&scheme).unwrap();
                x.tokens.insert(format!("{scheme}x"), t);
            }),
            with(&|x| _ = x.tokens.insert(scheme.clone(), format!("{token} "))),
            // The same bytes split differently between name and value.
            with(&|x| {
                x.fields.clear();
                x.fields.insert("ab".into(), serde_json::json!("c"));
            }),
            with(&|x| {
                x.fields.clear();
                x.fields.insert("a".into(), serde_json::json!("bc"));
            }),
        ];
        let mut all: Vec<[u8; 16]> = others.to_vec();
        all.push(h);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), others.len() + 1, "two different contents hash alike");
    }

    #[tokio::test]
    async fn stores_once_counts_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let b = body("police", "p-1", 3000);
        assert!(b.len() > 10 * CHUNK_BYTES);
        assert_eq!(put(&store, "police", "p-1", 1, &b), PutOutcome::Stored(3000));
        assert_eq!(put(&store, "police", "p-1", 1, &b), PutOutcome::Duplicate);
        // A batch id that extends another must not be confused with it.
        let b2 = body("police", "p-10", 2);
        assert_eq!(put(&store, "police", "p-10", 1, &b2), PutOutcome::Stored(2));
        let b3 = body("jail", "p-1", 1);
        assert_eq!(put(&store, "jail", "p-1", 1, &b3), PutOutcome::Stored(1));
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
            put(&store, "police", "a", 1, &body("police", "a", 5));
            store.flush().await.unwrap();
        }
        let store = reopen(&path);
        assert_eq!(store.records().count(), 5);
        assert_eq!(put(&store, "police", "a", 1, &body("police", "a", 5)), PutOutcome::Duplicate);
    }

    #[test]
    fn header_round_trips() {
        for format in [BatchFormat::Json, BatchFormat::Binary] {
            let h = BatchHeader { records: 7, chunks: 2, bytes: 5000, seq: 9, received_at: -3, epoch: 4, format };
            assert_eq!(BatchHeader::decode(&h.encode()), Some(h));
        }
        assert_eq!(BatchHeader::decode(&[9; HEADER_LEN]), None);
    }

    #[tokio::test]
    async fn a_store_from_before_epochs_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            put_json(&store, "police", "a", 1, &body("police", "a", 5));
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
        put(&store, "police", "a", 1, &b);
        put(&store, "jail", "a", 1, &body("jail", "a", 3000));
        let mut b2: Batch = serde_json::from_slice(&body("police", "b", 4)).unwrap();
        for r in &mut b2.records {
            r.epoch = 2;
            r.tokens.values_mut().for_each(|t| *t = t.replacen("1:", "2:", 1));
        }
        put(&store, "police", "b", 2, &serde_json::to_vec(&b2).unwrap());
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

    fn rec(rid: u32, seq: u64, disposition: &str) -> PseudoRecord {
        PseudoRecord {
            source: "police".into(),
            kind: "arrest".into(),
            line: 2,
            epoch: 1,
            rid: format!("{rid:032x}"),
            seq,
            deleted: false,
            tokens: [("name_dob".to_string(), format!("1:{:032x}", rid * 7))].into(),
            fields: [("disposition".to_string(), serde_json::json!(disposition))].into(),
        }
    }

    fn tombstone(rid: u32, seq: u64) -> PseudoRecord {
        PseudoRecord { deleted: true, tokens: BTreeMap::new(), fields: BTreeMap::new(), ..rec(rid, seq, "") }
    }

    fn put_records(store: &Store, id: &str, records: Vec<PseudoRecord>) -> Put {
        let body =
            serde_json::to_vec(&Batch { source: "police".into(), batch_id: id.into(), records: records.clone() })
                .unwrap();
        let b: Batch = serde_json::from_slice(&body).unwrap();
        let bin = binary::encode_batch(&b).unwrap();
        store.put_batch("police", id, 1, records, &bin, BatchFormat::Binary).unwrap().0
    }

    #[tokio::test]
    async fn a_store_of_json_batches_opens_reads_and_takes_binary_batches_beside_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let (a, j) = (body("police", "a", 5), body("jail", "a", 3));
        let mut sent: Vec<PseudoRecord> = serde_json::from_slice::<Batch>(&j).unwrap().records;
        sent.extend(serde_json::from_slice::<Batch>(&a).unwrap().records);
        {
            // Written as the release before the binary form wrote batches.
            let store = Store::open(&path).unwrap();
            assert_eq!(put_json(&store, "police", "a", 1, &a), PutOutcome::Stored(5));
            assert_eq!(put_json(&store, "jail", "a", 1, &j), PutOutcome::Stored(3));
            store.flush().await.unwrap();
            let raw = store.tree.get(batch_key(P_HEADER, "police", "a")).unwrap().unwrap();
            assert_eq!(raw[0], HEADER_JSON);
        }
        let store = reopen(&path);
        let read: Vec<PseudoRecord> = store.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(read, sent);
        // A replay is still recognized, in either form.
        assert_eq!(put(&store, "police", "a", 1, &a), PutOutcome::Duplicate);
        // A correction of a record held in a JSON batch cuts it out; that batch is rewritten in the binary form.
        let mut fix = sent[3].clone();
        fix.seq = 5;
        fix.fields.insert("age".into(), serde_json::json!(31));
        let b =
            serde_json::to_vec(&Batch { source: "police".into(), batch_id: "b".into(), records: vec![fix.clone()] })
                .unwrap();
        assert_eq!(put(&store, "police", "b", 1, &b), PutOutcome::Stored(1));
        store.flush().await.unwrap();
        drop(store);
        let store = reopen(&path);
        let batches: Vec<StoredBatch> = store.batches().collect::<Result<_, _>>().unwrap();
        let forms: Vec<(&str, &str, BatchFormat, usize)> = batches
            .iter()
            .map(|b| (b.source.as_str(), b.batch_id.as_str(), b.header.format, b.records.len()))
            .collect();
        assert_eq!(
            forms,
            [
                ("jail", "a", BatchFormat::Json, 3),
                ("police", "a", BatchFormat::Binary, 4),
                ("police", "b", BatchFormat::Binary, 1)
            ]
        );
        let mut want = sent.clone();
        want.remove(3);
        want.push(fix);
        assert_eq!(store.records().collect::<Result<Vec<_>, _>>().unwrap(), want);
        assert_eq!(store.counts(None).unwrap()["police"], SourceCounts { records: 5, batches: 2 });
    }

    /// (rid, disposition) of every record held, sorted.
    fn held(store: &Store) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = store
            .records()
            .map(|r| {
                let r = r.unwrap();
                (r.rid.clone(), r.fields["disposition"].as_str().unwrap_or("").to_string())
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn one_version_per_rid_the_newest_wins_in_any_order() {
        // Versions of rids 1..4: rid 1 corrected (seq 10 → 20), rid 2 re-exported
        // unchanged, rid 3 deleted after, rid 4 deleted then an older version replayed.
        let batches = [
            ("a", vec![rec(1, 10, "open"), rec(2, 11, "open"), rec(3, 12, "open"), rec(4, 13, "open")]),
            ("b", vec![rec(1, 20, "dismissed"), rec(2, 21, "open")]),
            ("c", vec![tombstone(3, 30), tombstone(4, 31)]),
            ("d", vec![rec(4, 13, "open"), rec(1, 10, "open")]),
        ];
        let want = vec![(format!("{:032x}", 1), "dismissed".to_string()), (format!("{:032x}", 2), "open".to_string())];
        let mut finals = Vec::new();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("store")).unwrap();
            for &i in &order {
                let (id, records) = &batches[i];
                put_records(&store, id, records.clone());
                // A replay under the same batch id changes nothing.
                assert_eq!(put_records(&store, id, records.clone()).outcome, PutOutcome::Duplicate);
            }
            assert_eq!(held(&store), want, "order {order:?}");
            assert_eq!(store.counts(None).unwrap()["police"].records, 2, "order {order:?}");
            finals.push(store.versions().unwrap()["police"]["arrest"]);
        }
        // In arrival order: 4 new; 1 replaced, 1 unchanged; 2 deleted; 2 stale.
        assert_eq!(finals[0], Versions { new: 4, replaced: 1, unchanged: 1, stale: 2, deleted: 2 });
        // The same record twice in one batch: the later version is the one kept.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let put = put_records(&store, "x", vec![rec(7, 5, "open"), rec(7, 6, "closed"), rec(8, 1, "open")]);
        assert_eq!((put.outcome, put.link), (PutOutcome::Stored(2), vec![false, true, true]));
        assert_eq!(held(&store).iter().map(|h| h.1.as_str()).collect::<Vec<_>>(), ["closed", "open"]);
    }

    #[tokio::test]
    async fn a_correction_cuts_the_old_version_out_of_its_batch_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            put_records(&store, "a", (0..50).map(|i| rec(i, 1, "open")).collect());
            let put = put_records(&store, "b", vec![rec(3, 2, "closed"), rec(4, 2, "open"), tombstone(5, 3)]);
            assert_eq!(put.outcome, PutOutcome::Stored(1));
            assert_eq!(put.link, [true, false, true]);
            assert_eq!(put.versions["arrest"], Versions { new: 0, replaced: 1, unchanged: 1, stale: 0, deleted: 1 });
            store.flush().await.unwrap();
        }
        let store = reopen(&path);
        let all = held(&store);
        assert_eq!(all.len(), 49);
        assert_eq!(store.counts(None).unwrap()["police"], SourceCounts { records: 49, batches: 2 });
        assert!(!all.iter().any(|(rid, _)| rid == &format!("{:032x}", 5)));
        assert_eq!(all.iter().filter(|h| h.1 == "closed").count(), 1);
        // The deleted record stays deleted after the restart.
        assert_eq!(put_records(&store, "c", vec![rec(5, 1, "open")]).outcome, PutOutcome::Stored(0));
        let b: Vec<StoredBatch> = store.batches().collect::<Result<_, _>>().unwrap();
        assert_eq!(b.iter().map(|b| b.header.records).collect::<Vec<_>>(), [48, 1, 0]);
    }

    #[tokio::test]
    async fn a_store_of_the_version_before_rid_index_is_deduplicated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            put_records(&store, "a", (0..10).map(|i| rec(i, 0, "open")).collect());
            put_records(&store, "b", (5..12).map(|i| rec(i, 0, if i == 6 { "closed" } else { "open" })).collect());
            // Make it look as the previous version left it: every record stored, no index.
            let stored = |id: &str, records: Vec<PseudoRecord>| {
                let body =
                    serde_json::to_vec(&Batch { source: "police".into(), batch_id: id.into(), records }).unwrap();
                let hk = batch_key(P_HEADER, "police", id);
                let mut h = BatchHeader::decode(&store.tree.get(&hk).unwrap().unwrap()).unwrap();
                let mut prefix = batch_key(P_CHUNK, "police", id);
                prefix.push(0);
                let mut w = WriteBatch::default();
                h.chunks = put_chunks(&mut w, &prefix, &body, h.chunks);
                h.bytes = body.len() as u64;
                h.records = serde_json::from_slice::<Batch>(&body).unwrap().records.len() as u64;
                h.format = BatchFormat::Json;
                w.insert(hk, h.encode());
                store.durable.apply(&store.tree, w).unwrap();
            };
            stored("a", (0..10).map(|i| rec(i, 0, "open")).collect());
            stored("b", (5..12).map(|i| rec(i, 0, if i == 6 { "closed" } else { "open" })).collect());
            for k in store.tree.scan_prefix([P_RID]).keys() {
                store.tree.remove(k.unwrap()).unwrap();
            }
            for k in store.tree.scan_prefix([P_VERSIONS]).keys() {
                store.tree.remove(k.unwrap()).unwrap();
            }
            store.tree.remove(RID_INDEX_MARK).unwrap();
            store.tree.insert(count_key("police", 1), &SourceCounts { records: 17, batches: 2 }.encode()[..]).unwrap();
            assert_eq!(store.records().count(), 17);
            store.flush().await.unwrap();
        }
        let store = reopen(&path);
        let all = held(&store);
        assert_eq!(all.len(), 12);
        assert_eq!(store.counts(None).unwrap()["police"].records, 12);
        assert_eq!(all.iter().filter(|h| h.1 == "closed").count(), 1);
        assert_eq!(
            store.versions().unwrap()["police"]["arrest"],
            Versions { new: 12, replaced: 1, unchanged: 4, stale: 0, deleted: 0 }
        );
        // The index is in place: the same records again change nothing.
        assert_eq!(put_records(&store, "c", vec![rec(6, 0, "closed")]).versions["arrest"].unchanged, 1);
        assert_eq!(store.records().count(), 12);
    }

    #[tokio::test]
    async fn a_batch_stored_in_version_1_of_the_binary_form_is_read_and_deduplicated_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let v1 = crate::hex::decode(binary::V1_BATCH).unwrap();
        let sent = binary::decode(&v1).unwrap();
        assert_eq!(v1[binary::MAGIC.len()], binary::OLDEST_VERSION);
        {
            let store = Store::open(&path).unwrap();
            let (put, _) = store.put_batch("police", "b-1", 3, sent.records.clone(), &v1, BatchFormat::Binary).unwrap();
            assert_eq!(
                put.outcome,
                PutOutcome::Stored(1),
                "the record; the tombstone of an unseen rid is kept as an i entry"
            );
            store.flush().await.unwrap();
        }
        // As a store of the previous release holds it: its chunks in version 1.
        let store = reopen(&path);
        let held: Vec<PseudoRecord> = store.records().map(|r| r.unwrap()).collect();
        assert_eq!(held, vec![sent.records[0].clone()]);
        // The same records again, as this release sends them (version 2): nothing changes.
        let again = Batch { batch_id: "b-2".into(), ..sent.clone() };
        let v2 = binary::encode_batch(&again).unwrap();
        assert_eq!(v2[binary::MAGIC.len()], binary::VERSION);
        let (put, _) = store.put_batch("police", "b-2", 3, again.records.clone(), &v2, BatchFormat::Binary).unwrap();
        assert_eq!(put.outcome, PutOutcome::Stored(0));
        assert_eq!(put.versions["arrest"].unchanged, 1);
        assert_eq!(store.records().count(), 1);
    }

    /// The content hashes kept in `i` entries are never compared: a store
    /// whose entries hold hashes of another form (an earlier release's) still
    /// finds a re-send unchanged after reopening, because the held versions'
    /// hashes are made again from the stored records.
    #[tokio::test]
    async fn a_kept_hash_of_another_form_does_not_make_a_resend_look_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            put_records(&store, "a", vec![rec(1, 1, "open")]);
            assert_eq!(put_records(&store, "b", vec![rec(1, 3, "open")]).versions["arrest"].unchanged, 1);
            let (k, v) = store.tree.scan_prefix([P_RID]).next().unwrap().unwrap();
            let mut v = v.to_vec();
            assert!(Held::decode(&v).unwrap().live);
            v[8..24].copy_from_slice(&[0xA5; 16]);
            store.tree.insert(k, v).unwrap();
            store.flush().await.unwrap();
        }
        let store = reopen(&path);
        assert_eq!(put_records(&store, "c", vec![rec(1, 4, "open")]).versions["arrest"].unchanged, 1);
        assert_eq!(put_records(&store, "d", vec![rec(1, 5, "closed")]).versions["arrest"].replaced, 1);
    }

    #[tokio::test]
    async fn a_version_raised_by_an_unchanged_resend_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            put_records(&store, "a", vec![rec(1, 1, "open"), rec(2, 1, "open")]);
            assert_eq!(put_records(&store, "b", vec![rec(1, 3, "open")]).versions["arrest"].unchanged, 1);
            // Only the raised version has an `i` entry; new records are indexed in memory.
            assert_eq!(store.tree.scan_prefix([P_RID]).count(), 1);
            store.flush().await.unwrap();
        }
        let store = reopen(&path);
        // Version 2 is older than the 3 the re-send raised it to: dropped, also after the restart.
        assert_eq!(
            put_records(&store, "c", vec![rec(1, 2, "closed"), rec(2, 2, "closed")]).versions["arrest"].stale,
            1
        );
        assert_eq!(held(&store).iter().map(|h| h.1.as_str()).collect::<Vec<_>>(), ["open", "closed"]);
    }
}
