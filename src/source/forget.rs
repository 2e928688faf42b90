//! Deleting records at a source (`divert forget`, the deletions inbox, whole-table exports): out of the raw store and the outbox, and a tombstone to the steward.
//!
//! A record is named by its kind and the agency's record id. Under the
//! ingest lock, in one durable write:
//!
//! - every raw row of that kind and id is cut out of its encrypted chunk
//!   (the chunk is decrypted, rebuilt without the row and sealed again), so
//!   a re-pseudonymization after a key rotation cannot send it again;
//! - every record with its rid (under any key epoch this source holds a
//!   key for) is cut out of the outbox batches not yet acknowledged;
//! - a tombstone per key epoch held (the rid under that epoch's key, no
//!   tokens, no fields) is queued in the outbox with a version newer than
//!   any record sent so far, so the steward removes the record whatever
//!   order batches arrive in, and an older version arriving later stays out.
//!
//! The tombstones then travel like records: durable in the outbox, pushed,
//! removed once the steward acknowledges them (durably). A crash before the
//! write leaves everything as it was (forget again); after it, the
//! tombstones are sent after the restart.
//!
//! The ids are identity values: they are never logged, put in an error or
//! shown by `Debug`; the answer is counts only.

use std::collections::{BTreeMap, HashSet};

use crate::ingest::{Outcome, RawRowParser, Row};
use crate::record::{record_seq, PseudoRecord};
use crate::schema::Kind;
use crate::storage::WriteBatch;
use crate::token::Tokenizer;
use crate::wire::binary;

use super::file::{Env, FileError, State};
use super::raw::{decode_header, for_each_row, ChunkBuilder};
use super::store::{self, OutboxRecords};

pub use crate::daemon::admin::RecordIds;

/// What a deletion did. Counts only.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Forgotten {
    /// Ids asked for (after dropping blanks and repeats).
    pub ids: u64,
    /// Raw rows removed from the encrypted raw store.
    pub raw_rows_removed: u64,
    /// Records removed from outbox batches not yet sent.
    pub outbox_records_removed: u64,
    /// Tombstones queued for the steward (one per id and key epoch held).
    pub tombstones: u64,
    /// The key epochs tombstones were made under.
    pub epochs: Vec<u32>,
}

fn failed<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> FileError + '_ {
    move |e| FileError::Failed(format!("deleting records: {what}: {e}"))
}

/// Count of records deleted per kind so far (u64 BE), for status.
pub fn forgotten_key(kind: &str) -> Vec<u8> {
    [b"m:forgotten:".as_slice(), kind.as_bytes()].concat()
}

/// Delete the records of `kind` with the agency record ids `ids` (see the
/// module docs). `tokenizers`: one per key epoch this source holds a key
/// for. Call it under the ingest lock, on a blocking thread. Durable when it
/// returns; the tombstone batches are handed to `env.on_durable`.
pub fn forget(
    env: &Env<'_>,
    state: &mut State,
    kind: &Kind,
    ids: &RecordIds,
    tokenizers: &[&Tokenizer],
) -> Result<Forgotten, FileError> {
    let wanted: HashSet<&str> = ids.0.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    let mut out = Forgotten { ids: wanted.len() as u64, ..Forgotten::default() };
    if wanted.is_empty() {
        return Ok(out);
    }
    // The rids, per epoch, as the pseudonymizer writes them.
    let mut rids_by_epoch: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut all_rids: HashSet<String> = HashSet::new();
    let mut all_rid_bytes: HashSet<[u8; 16]> = HashSet::new();
    for t in tokenizers {
        for id in &wanted {
            let rid = t.record_id(env.source, &kind.name, id);
            all_rid_bytes.insert(rid);
            let hex = crate::hex::encode(&rid);
            all_rids.insert(hex.clone());
            rids_by_epoch.entry(t.epoch()).or_default().push(hex);
        }
    }
    let tree = env.store.tree();
    let mut write = WriteBatch::default();

    // 1. The raw store: every file of the kind, chunk by chunk.
    out.raw_rows_removed = walk_raw(env, kind, |_| true, |_, _, id| wanted.contains(id), Some(&mut write))?;

    // 2. The outbox: batches not yet acknowledged, rewritten without the records.
    // (outbox sequence, what it becomes: records and body, or nothing)
    type Rewrite = (u64, Option<(u32, Vec<u8>)>);
    let mut rewrites: Vec<Rewrite> = Vec::new();
    let seqs = env.store.outbox_index().map_err(failed("reading the outbox"))?.into_keys();
    for seq in seqs {
        let Some(value) = store::read_outbox(tree, seq).map_err(failed("reading the outbox"))? else { continue };
        let Some((_, records)) = store::split_outbox_value(&value) else { continue };
        let unreadable =
            |what: String| FileError::Failed(format!("deleting records: outbox batch {seq} is unreadable ({what})"));
        let (removed, rewritten) = match records {
            OutboxRecords::Binary(section) => {
                let view = binary::decode_section(section).map_err(|e| unreadable(e.to_string()))?;
                let keep: Vec<bool> = view
                    .records
                    .iter()
                    .map(|r| !(r.kind == kind.name && !r.deleted && all_rid_bytes.contains(&r.rid)))
                    .collect();
                let kept = keep.iter().filter(|k| **k).count();
                let rewritten = (kept > 0).then(|| (kept as u32, view.encode_kept_section(&keep)));
                (view.records.len() - kept, rewritten)
            }
            OutboxRecords::Json(inner) => {
                // Written by a release before the binary outbox: rewritten as JSON.
                let text = [b"[".as_slice(), inner, b"]"].concat();
                let records: Vec<PseudoRecord> =
                    serde_json::from_slice(&text).map_err(|e| unreadable(format!("{:?}", e.classify())))?;
                let keep: Vec<&PseudoRecord> = records
                    .iter()
                    .filter(|r| !(r.kind == kind.name && !r.deleted && all_rids.contains(&r.rid)))
                    .collect();
                let mut body = Vec::new();
                for (i, r) in keep.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    serde_json::to_writer(&mut body, r).map_err(failed("encoding"))?;
                }
                (records.len() - keep.len(), (!keep.is_empty()).then_some((keep.len() as u32, body)))
            }
        };
        if removed == 0 {
            continue;
        }
        out.outbox_records_removed += removed as u64;
        rewrites.push((seq, rewritten));
    }

    // 3. Tombstones, newer than every version sent so far.
    let version = record_seq(state.next_seq, 0);
    let mut next_seq = state.next_seq;
    let mut queued: Vec<(u64, u32)> = Vec::new();
    for (epoch, rids) in &rids_by_epoch {
        for part in rids.chunks(env.batch_records.max(1) as usize) {
            let tombstones: Vec<PseudoRecord> = part
                .iter()
                .map(|rid| PseudoRecord {
                    source: env.source.to_string(),
                    kind: kind.name.clone(),
                    line: 0,
                    epoch: *epoch,
                    rid: rid.clone(),
                    seq: version,
                    deleted: true,
                    tokens: BTreeMap::new(),
                    fields: BTreeMap::new(),
                })
                .collect();
            let body = binary::encode_section(&tombstones).map_err(failed("encoding"))?;
            store::insert_outbox(&mut write, next_seq, part.len() as u32, &body);
            queued.push((next_seq, part.len() as u32));
            next_seq += 1;
            out.tombstones += part.len() as u64;
        }
        out.epochs.push(*epoch);
    }
    write.insert(store::META_OUTBOX_NEXT, next_seq.to_be_bytes());
    let held = state.held.get(&kind.name).copied().unwrap_or(0).saturating_sub(out.raw_rows_removed);
    write.insert(store::held_key(&kind.name), held.to_be_bytes());
    let fkey = forgotten_key(&kind.name);
    let forgotten = env.store.get_u64(&fkey).map_err(failed("reading the store"))? + out.raw_rows_removed;
    write.insert(&fkey, forgotten.to_be_bytes());

    // One write: an outbox batch acknowledged meanwhile (removed by a pusher) stays removed.
    let t2 = tree.clone();
    env.store
        .durable()
        .write(move |_| {
            let mut write = write;
            for (seq, new) in rewrites {
                let pieces: Vec<sled::IVec> =
                    t2.scan_prefix(store::outbox_key(seq)).keys().collect::<Result<_, _>>()?;
                if pieces.is_empty() {
                    continue;
                }
                pieces.into_iter().for_each(|k| write.remove(k));
                if let Some((n, body)) = new {
                    store::insert_outbox(&mut write, seq, n, &body);
                }
            }
            t2.apply_batch(write.into_inner()?)
        })
        .map_err(failed("writing the store"))?;
    state.next_seq = next_seq;
    state.held.insert(kind.name.clone(), held);
    (env.on_durable)(&queued);
    Ok(out)
}

/// Walk the accepted raw rows of `kind` in the files `files` selects, calling
/// `drop(file, line, record id)` for each; with `write`, chunks holding rows
/// it returned true for are rebuilt without them (re-encrypted) into
/// `write`. Returns the rows dropped.
fn walk_raw(
    env: &Env<'_>,
    kind: &Kind,
    files: impl Fn(&store::FileId) -> bool,
    mut drop: impl FnMut(&store::FileId, u64, &str) -> bool,
    mut write: Option<&mut WriteBatch>,
) -> Result<u64, FileError> {
    let tree = env.store.tree();
    let mut row = Row::new(env.schema, kind);
    let mut issues = Vec::new();
    let mut dropped_all = 0u64;
    for (id, rec) in store::files(tree).map_err(failed("reading the store"))? {
        if rec.kind != kind.name || !files(&id) {
            continue;
        }
        let open = |chunk: u32| -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, FileError> {
            let key = store::raw_key(&id, chunk);
            match tree.get(key).map_err(failed("reading the store"))? {
                Some(sealed) => Ok(Some(env.data_key.open(&key, &sealed).map_err(failed("decrypting a raw chunk"))?)),
                None => Ok(None),
            }
        };
        let Some(head) = open(0)? else { continue };
        let header = decode_header(&head).map_err(failed("reading a raw header"))?;
        let mut parser =
            RawRowParser::new(env.schema, kind, header.format, &header.columns).map_err(failed("mapping columns"))?;
        let mut kept = ChunkBuilder::new();
        for chunk in 1..rec.next_chunk {
            let Some(plain) = open(chunk)? else { continue };
            let mut dropped = 0u64;
            for_each_row(&plain, |line, fields| {
                issues.clear();
                let outcome = parser.parse(line, fields, &mut row, &mut issues);
                if outcome == Outcome::Accepted && drop(&id, line, row.record_id.as_str()) {
                    dropped += 1;
                } else {
                    kept.push_row(line, fields);
                }
            })
            .map_err(failed("reading a raw chunk"))?;
            if let (true, Some(w)) = (dropped > 0, write.as_deref_mut()) {
                let key = store::raw_key(&id, chunk);
                let sealed = env.data_key.seal(&key, kept.finish()).map_err(failed("encrypting"))?;
                w.insert(&key[..], sealed);
            }
            dropped_all += dropped;
            kept.reset();
        }
    }
    Ok(dropped_all)
}

/// The agency record ids held for `kind` in the raw store.
fn held_ids(env: &Env<'_>, kind: &Kind) -> Result<HashSet<String>, FileError> {
    let mut out = HashSet::new();
    walk_raw(
        env,
        kind,
        |_| true,
        |_, _, id| {
            out.insert(id.to_string());
            false
        },
        None,
    )?;
    Ok(out)
}

/// After an export of `kind` (raw store file `file`) is ingested: one raw
/// row per record id, as at the steward — the rows of the same ids from
/// earlier exports, and an earlier line of the same id in this export (not in
/// the first export of a kind: no pass is made over it), are
/// cut out of the raw store (the version this export sent is the newest).
/// One durable write; a crash before it leaves old rows that re-sending
/// would only send as older versions. Returns the rows removed.
pub fn supersede(env: &Env<'_>, state: &mut State, kind: &Kind, file: &store::FileId) -> Result<u64, FileError> {
    // The first export of its kind: nothing earlier to cut, and no pass over it (a
    // record id twice in that one export keeps both rows; the steward keeps the later).
    let others = store::files(env.store.tree())
        .map_err(failed("reading the store"))?
        .iter()
        .any(|(id, rec)| rec.kind == kind.name && id != file);
    if !others {
        return Ok(0);
    }
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    walk_raw(
        env,
        kind,
        |id| id == file,
        |_, line, id| {
            last.insert(id.to_string(), line);
            false
        },
        None,
    )?;
    let mut write = WriteBatch::default();
    let removed = walk_raw(
        env,
        kind,
        |_| true,
        |f, line, id| last.get(id).is_some_and(|&keep| !(f == file && line == keep)),
        Some(&mut write),
    )?;
    for (mut k, _) in last.drain() {
        zeroize::Zeroize::zeroize(&mut k);
    }
    if removed == 0 {
        return Ok(0);
    }
    let held = state.held.get(&kind.name).copied().unwrap_or(0).saturating_sub(removed);
    write.insert(store::held_key(&kind.name), held.to_be_bytes());
    env.store.apply(write).map_err(failed("writing the store"))?;
    state.held.insert(kind.name.clone(), held);
    Ok(removed)
}

/// The agency record ids of the rows of an export that ingest would accept.
fn export_ids(
    env: &Env<'_>,
    kind: &Kind,
    path: &std::path::Path,
    format: crate::ingest::Format,
) -> Result<HashSet<String>, FileError> {
    let input = std::fs::File::open(path).map_err(failed("opening the export"))?;
    let mut reader =
        crate::ingest::Reader::new(env.schema, kind, format, std::io::BufReader::with_capacity(1 << 20, input))
            .map_err(|e| FileError::Refused(e.to_string()))?;
    let mut row = Row::new(env.schema, kind);
    let mut issues = Vec::new();
    let mut out = HashSet::new();
    while let Some(outcome) = reader.next_row(&mut row, &mut issues).map_err(|e| FileError::Refused(e.to_string()))? {
        issues.clear();
        if outcome == Outcome::Accepted {
            out.insert(row.record_id.clone());
        }
    }
    Ok(out)
}

fn wipe(set: HashSet<String>) {
    for mut s in set {
        zeroize::Zeroize::zeroize(&mut s);
    }
}

/// A whole-table export of a `snapshot` kind, before it is ingested: delete
/// (as [`forget`]) the records held for the kind whose ids the export lacks.
/// Refused (nothing deleted) when that would be more than `max_percent` of
/// the ids held (`None`: forced, no limit). Deleting first and ingesting after means a
/// crash in between leaves the export in the inbox, and its second try finds
/// nothing more to delete. Returns `None` when the export was ingested before.
pub fn snapshot(
    env: &Env<'_>,
    state: &mut State,
    kind: &Kind,
    path: &std::path::Path,
    format: crate::ingest::Format,
    max_percent: Option<u32>,
    tokenizers: &[&Tokenizer],
) -> Result<Option<Forgotten>, FileError> {
    let (file_id, _) = super::file::scan(path, &kind.name, format).map_err(failed("reading the export"))?;
    if env.store.file(&file_id).map_err(failed("reading the store"))?.is_some_and(|r| r.state == store::FileState::Done)
    {
        return Ok(None);
    }
    let held = held_ids(env, kind)?;
    let now = export_ids(env, kind, path, format)?;
    let absent: Vec<String> = held.iter().filter(|id| !now.contains(id.as_str())).cloned().collect();
    let (n_held, n_absent) = (held.len() as u64, absent.len() as u64);
    wipe(held);
    wipe(now);
    let absent = RecordIds(absent);
    if let Some(max_percent) = max_percent.filter(|&m| n_absent * 100 > u64::from(m) * n_held) {
        return Err(FileError::Refused(format!(
            "a whole-table export of `{}` that would delete {n_absent} of the {n_held} records held ({:.1}%, more than \
             snapshot_max_delete_percent = {max_percent}); if the agency really removed them, hand it over with \
             `divert ingest --kind {} --force-snapshot FILE`",
            kind.name,
            n_absent as f64 * 100.0 / n_held.max(1) as f64,
            kind.name
        )));
    }
    forget(env, state, kind, &absent, tokenizers).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Format;
    use crate::keys::EpochKey;
    use crate::schema::Schema;
    use crate::source::crypt::DataKey;
    use crate::source::file::{take_export, Job};
    use crate::source::store::Store;
    use tokio_util::sync::CancellationToken;

    const HEADER: &str = "arrest_id,arrest_date,family_name,given_name,dob,sex,warrant,violent,felony\n";

    fn outbox(st: &Store) -> Vec<PseudoRecord> {
        let mut out = Vec::new();
        for seq in st.outbox_index().unwrap().into_keys() {
            let v = store::read_outbox(st.tree(), seq).unwrap().unwrap();
            let n = store::split_outbox_value(&v).unwrap().0;
            let recs = store::outbox_value_records(&v);
            assert_eq!(recs.len() as u32, n, "outbox batch {seq} says how many it holds");
            out.extend(recs);
        }
        out
    }

    /// Ingest two exports (the second re-exports part of the first), forget two
    /// ids under two key epochs: gone from raw store and outbox, tombstones
    /// under both epochs newer than every record, and a re-pseudonymization
    /// of the raw store does not bring them back.
    #[test]
    fn a_forgotten_record_leaves_raw_store_and_outbox_and_rekey_cannot_bring_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::default_schema().unwrap();
        let t1 = Tokenizer::new(&schema, &EpochKey::from_bytes(1, &[9u8; 32]).unwrap()).unwrap();
        let t2 = Tokenizer::new(&schema, &EpochKey::from_bytes(2, &[5u8; 32]).unwrap()).unwrap();
        let st = Store::open(&dir.path().join("store")).unwrap();
        let data_key = DataKey::from_bytes(&[1u8; 32]).unwrap();
        let cancel = CancellationToken::new();
        let seen = std::sync::Mutex::new(Vec::new());
        let on_durable = |b: &[(u64, u32)]| seen.lock().unwrap().extend_from_slice(b);
        let env = |tokenizer| Env::for_tests(&schema, tokenizer, &data_key, &st, &cancel, &on_durable);
        let mut state = State::default();
        let kind = schema.kind("arrest").unwrap();
        let row = |i: usize| format!("A{i},2019-03-04,Lee,Bo,1980-01-{:02},M,y,n,n\n", 1 + i % 28);
        let first: String = HEADER.to_string() + &(0..30).map(row).collect::<String>();
        let second: String = HEADER.to_string() + &(20..40).map(row).collect::<String>();
        for (name, text) in [("a.csv", &first), ("b.csv", &second)] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let job = Job { path: &path, kind, format: Format::Csv, quarantine: dir.path().join("q.csv"), dest: None };
            take_export(&env(&t1), &mut state, &job).unwrap();
        }
        // Every other batch as a release before the binary outbox wrote it: JSON records.
        for seq in st.outbox_index().unwrap().into_keys().filter(|s| s % 2 == 1) {
            let records = store::outbox_value_records(&store::read_outbox(st.tree(), seq).unwrap().unwrap());
            let text: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
            let mut write =
                st.tree().scan_prefix(store::outbox_key(seq)).keys().fold(WriteBatch::default(), |mut w, k| {
                    w.remove(k.unwrap());
                    w
                });
            store::insert_outbox(&mut write, seq, records.len() as u32, text.join(",").as_bytes());
            st.apply(write).unwrap();
        }
        let form =
            |seq| match store::split_outbox_value(&store::read_outbox(st.tree(), seq).unwrap().unwrap()).unwrap().1 {
                OutboxRecords::Binary(_) => "binary",
                OutboxRecords::Json(_) => "json",
            };
        // A5 is in batch 0 (binary); A25 in batches 3 and 5 (JSON).
        assert_eq!([form(0), form(3), form(5)], ["binary", "json", "json"]);
        let before = outbox(&st);
        assert_eq!(before.len(), 50);
        let newest = before.iter().map(|r| r.seq).max().unwrap();
        let rid = |t: &Tokenizer, id: &str| {
            let mut h = Vec::new();
            crate::hex::encode_into(&t.record_id("police", "arrest", id), &mut h);
            String::from_utf8(h).unwrap()
        };

        let ids = RecordIds(vec!["A5".into(), " A25 ".into(), "".into(), "A5".into(), "A-not-held".into()]);
        let f = forget(&env(&t1), &mut state, kind, &ids, &[&t1, &t2]).unwrap();
        assert_eq!(f.ids, 3);
        assert_eq!(f.raw_rows_removed, 3, "A5 once, A25 in both exports");
        assert_eq!(f.outbox_records_removed, 3);
        assert_eq!(f.tombstones, 6);
        assert_eq!(f.epochs, [1, 2]);
        assert_eq!(state.held["arrest"], 47);
        assert_eq!(st.get_u64(&forgotten_key("arrest")).unwrap(), 3);
        let after = outbox(&st);
        assert_eq!([form(0), form(3), form(5)], ["binary", "json", "json"], "each batch rewritten in its own form");
        let gone = [rid(&t1, "A5"), rid(&t1, "A25")];
        assert!(!after.iter().any(|r| !r.deleted && gone.contains(&r.rid)));
        let tombs: Vec<&PseudoRecord> = after.iter().filter(|r| r.deleted).collect();
        assert_eq!(tombs.len(), 6);
        assert!(tombs.iter().all(|t| t.seq > newest && t.tokens.is_empty() && t.fields.is_empty()));
        for (t, e) in [(&t1, 1), (&t2, 2)] {
            for id in ["A5", "A25", "A-not-held"] {
                assert!(tombs.iter().any(|x| x.epoch == e && x.rid == rid(t, id)), "tombstone of {id} under {e}");
            }
        }
        // Nothing of the ids in the answer.
        let shown = serde_json::to_string(&f).unwrap() + &format!("{ids:?}");
        assert!(!shown.contains("A5") && !shown.contains("A25"), "{shown}");

        // Re-pseudonymizing under the next key sends the 47 rows left, none forgotten.
        seen.lock().unwrap().clear();
        let mut sent = Vec::new();
        for (id, rec) in store::files(st.tree()).unwrap() {
            crate::source::rekey::file(&env(&t2), &mut state, &id, &rec).unwrap();
        }
        for &(seq, _) in seen.lock().unwrap().iter() {
            let v = store::read_outbox(st.tree(), seq).unwrap().unwrap();
            sent.extend(store::outbox_value_records(&v));
        }
        assert_eq!(sent.len(), 47);
        let gone2 = [rid(&t2, "A5"), rid(&t2, "A25")];
        assert!(!sent.iter().any(|r| gone2.contains(&r.rid)));
        // A re-sent record keeps its version: no newer than the tombstone.
        assert!(sent.iter().all(|r| r.seq < tombs[0].seq));
    }

    #[test]
    fn a_whole_table_export_deletes_what_it_lacks_and_a_truncated_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = crate::schema::DEFAULT_SCHEMA
            .replace("[kinds.arrest]\nagency = \"police\"", "[kinds.arrest]\nagency = \"police\"\nsnapshot = true");
        let schema = Schema::from_toml(&text).unwrap();
        let kind = schema.kind("arrest").unwrap();
        assert!(kind.snapshot && !schema.kind("referral").unwrap().snapshot);
        let t1 = Tokenizer::new(&schema, &EpochKey::from_bytes(1, &[9u8; 32]).unwrap()).unwrap();
        let st = Store::open(&dir.path().join("store")).unwrap();
        let data_key = DataKey::from_bytes(&[1u8; 32]).unwrap();
        let cancel = CancellationToken::new();
        let on_durable = |_: &[(u64, u32)]| {};
        let env = Env::for_tests(&schema, &t1, &data_key, &st, &cancel, &on_durable);
        let mut state = State::default();
        let row = |i: usize| format!("A{i},2019-03-04,Lee,Bo,1980-01-{:02},M,y,n,n\n", 1 + i % 28);
        let write = |name: &str, rows: std::ops::Range<usize>| {
            let path = dir.path().join(name);
            std::fs::write(&path, HEADER.to_string() + &rows.map(row).collect::<String>()).unwrap();
            path
        };
        let ingest_file = |state: &mut State, path: &std::path::Path| {
            let job = Job { path, kind, format: Format::Csv, quarantine: dir.path().join("q.csv"), dest: None };
            take_export(&env, state, &job).unwrap();
        };
        let first = write("t1.csv", 0..30);
        // The first export of the kind deletes nothing.
        assert_eq!(snapshot(&env, &mut state, kind, &first, Format::Csv, Some(20), &[&t1]).unwrap().unwrap().ids, 0);
        ingest_file(&mut state, &first);
        // Already ingested: nothing to do.
        assert_eq!(snapshot(&env, &mut state, kind, &first, Format::Csv, Some(20), &[&t1]).unwrap(), None);
        // The next table lacks two (6.7%): they go.
        let second = write("t2.csv", 2..32);
        let f = snapshot(&env, &mut state, kind, &second, Format::Csv, Some(20), &[&t1]).unwrap().unwrap();
        assert_eq!((f.ids, f.raw_rows_removed, f.tombstones), (2, 2, 2));
        ingest_file(&mut state, &second);
        assert_eq!(held_ids(&env, kind).unwrap().len(), 30);
        // A truncated table (10 of 30 left) is refused, and nothing is deleted.
        let truncated = write("t3.csv", 2..12);
        match snapshot(&env, &mut state, kind, &truncated, Format::Csv, Some(20), &[&t1]) {
            Err(FileError::Refused(m)) => {
                assert!(m.contains("20 of the 30") && m.contains("--force-snapshot"), "{m}");
                assert!(!m.contains("A1"), "{m}");
            }
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!(held_ids(&env, kind).unwrap().len(), 30);
        // Forced, it goes through.
        let f = snapshot(&env, &mut state, kind, &truncated, Format::Csv, None, &[&t1]).unwrap().unwrap();
        assert_eq!(f.ids, 20);
        assert_eq!(held_ids(&env, kind).unwrap().len(), 10);
    }
}
