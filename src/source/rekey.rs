//! Re-pseudonymization after a key rotation: the raw rows a source keeps
//! (encrypted, see [`super::raw`]) are read back, validated as at ingest,
//! tokenized under the new epoch and queued in the outbox as new batches.
//!
//! Progress is kept per file (`e ‖ file id` → next raw chunk, rows done) in
//! the same atomic sled batch as the outbox batches it produced, so a crash
//! resumes after the last durable chunk and never sends a row twice. The
//! caller holds the ingest lock for each file, and for the final pass and
//! [`switch`], so no file is half-ingested under the old epoch at the switch.

use crate::ingest::{Outcome, RawRowParser, Row};
use crate::pseudonymize::Pseudonymizer;
use crate::storage::WriteBatch;

use super::file::{Env, FileError, State};
use super::raw::{decode_header, for_each_row};
use super::store::{self, FileId, FileRecord};

fn failed<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> FileError + '_ {
    move |e| FileError::Failed(format!("re-pseudonymizing: {what}: {e}"))
}

/// What one file's pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FilePass {
    /// Rows written under the new epoch by this pass.
    pub rows: u64,
    /// Rows that no longer pass the schema (a schema changed since ingest); not sent again.
    pub dropped: u64,
    /// Outbox batches written.
    pub batches: u64,
}

/// Rows (total, done) of a re-pseudonymization: accepted rows held, and
/// rows already written under the target epoch.
pub fn progress(st: &store::Store) -> Result<(u64, u64), FileError> {
    let files = store::files(st.tree()).map_err(failed("reading the store"))?;
    let mut total = 0;
    let mut done = 0;
    for (id, rec) in &files {
        total += rec.committed_rows;
        done += store::rekey_progress(st.tree(), id).map_err(failed("reading the store"))?.1;
    }
    Ok((total, done.min(total)))
}

/// Re-pseudonymize what is left of one file under `env.tokenizer`'s epoch.
/// Commits (outbox batches + progress, flushed) every time a batch fills, at
/// the end of a raw chunk, and at the end of the file.
pub fn file(env: &Env<'_>, state: &mut State, id: &FileId, rec: &FileRecord) -> Result<FilePass, FileError> {
    let tree = env.store.tree();
    let (mut next_chunk, mut rows_done) = store::rekey_progress(tree, id).map_err(failed("reading the store"))?;
    let mut out = FilePass::default();
    if next_chunk >= rec.next_chunk {
        return Ok(out);
    }
    let open = |chunk: u32| -> Result<zeroize::Zeroizing<Vec<u8>>, FileError> {
        let key = store::raw_key(id, chunk);
        let sealed = tree
            .get(key)
            .map_err(failed("reading the store"))?
            .ok_or_else(|| FileError::Failed(format!("re-pseudonymizing: raw chunk {chunk} of a file is missing")))?;
        env.data_key.open(&key, &sealed).map_err(failed("decrypting a raw chunk"))
    };
    let header = decode_header(&open(0)?).map_err(failed("reading a raw header"))?;
    let kind = env.schema.kind(&header.kind).ok_or_else(|| {
        FileError::Failed(format!("re-pseudonymizing: kind `{}` is no longer in the schema", header.kind))
    })?;
    let mut parser =
        RawRowParser::new(env.schema, kind, header.format, &header.columns).map_err(failed("mapping columns"))?;
    let mut p = Pseudonymizer::new(env.schema, kind, env.source, env.tokenizer);
    // The versions ingest gave the rows: a re-sent record is no newer than it was.
    p.set_seq_base(rec.seqs.first().map_or(0, |r| r.0));
    let mut row = Row::new(env.schema, kind);
    let mut issues = Vec::new();
    let mut batch = WriteBatch::default();
    let mut pending: Vec<(u64, u32)> = Vec::new();

    // The records pseudonymized since the last batch become the next outbox batch.
    let finish =
        |p: &mut Pseudonymizer<'_>, batch: &mut WriteBatch, pending: &mut Vec<(u64, u32)>, state: &mut State| {
            let n = p.pending();
            if n == 0 {
                return;
            }
            store::insert_outbox(batch, state.next_seq, n, &p.take_batch());
            pending.push((state.next_seq, n));
            state.next_seq += 1;
        };

    while next_chunk < rec.next_chunk {
        let plain = open(next_chunk)?;
        let walked = for_each_row(&plain, |line, fields| {
            issues.clear();
            match parser.parse(line, fields, &mut row, &mut issues) {
                Outcome::Accepted => {
                    p.append(&row);
                    out.rows += 1;
                    if p.pending() >= env.batch_records {
                        finish(&mut p, &mut batch, &mut pending, state);
                    }
                }
                Outcome::Quarantined => out.dropped += 1,
            }
            rows_done += 1;
        });
        if let Err(e) = walked {
            return Err(failed("reading a raw chunk")(e));
        }
        drop(plain);
        next_chunk += 1;
        let last = next_chunk >= rec.next_chunk;
        if last || !pending.is_empty() {
            finish(&mut p, &mut batch, &mut pending, state);
            let mut b = std::mem::take(&mut batch);
            b.insert(&store::rekey_key(id)[..], &store::rekey_value(next_chunk, rows_done)[..]);
            b.insert(store::META_OUTBOX_NEXT, state.next_seq.to_be_bytes());
            env.store.apply(b).map_err(failed("writing the store"))?;
            out.batches += pending.len() as u64;
            (env.on_durable)(&pending);
            pending.clear();
        }
        if env.cancel.is_cancelled() && !last {
            return Err(FileError::Stopped);
        }
    }
    if out.dropped > 0 {
        tracing::warn!(
            rows = out.dropped,
            kind = %kind.name,
            "rows kept from an earlier ingest no longer pass the schema; they are not sent under the new epoch"
        );
    }
    Ok(out)
}

/// Make `epoch` the active one: new records are pseudonymized under it, and
/// it is complete once every outbox batch below the current sequence is
/// acknowledged. Clears the progress keys. One atomic batch, durable when it returns.
pub fn switch(st: &store::Store, state: &State, epoch: u32) -> Result<(), FileError> {
    let mut b = WriteBatch::default();
    for k in store::rekey_keys(st.tree()).map_err(failed("reading the store"))? {
        b.remove(k);
    }
    b.remove(store::META_REKEY_TARGET);
    b.insert(store::META_ACTIVE_EPOCH, epoch.to_be_bytes());
    b.insert(store::META_SWITCH_SEQ, state.next_seq.to_be_bytes());
    st.apply(b).map_err(failed("writing the store"))?;
    Ok(())
}

/// Start (or continue) a re-pseudonymization toward `target`. A different
/// target than the one recorded (a second rotation before the first
/// finished) starts over: rows already done under the other epoch are sent again.
pub fn begin(st: &store::Store, target: u32) -> Result<(), FileError> {
    let tree = st.tree();
    let current = tree
        .get(store::META_REKEY_TARGET)
        .map_err(failed("reading the store"))?
        .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
        .map(u32::from_be_bytes);
    if current == Some(target) {
        return Ok(());
    }
    let mut b = WriteBatch::default();
    for k in store::rekey_keys(tree).map_err(failed("reading the store"))? {
        b.remove(k);
    }
    b.insert(store::META_REKEY_TARGET, target.to_be_bytes());
    st.apply(b).map_err(failed("writing the store"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::ingest::Format;
    use crate::keys::EpochKey;
    use crate::record::PseudoRecord;
    use crate::schema::Schema;
    use crate::source::crypt::DataKey;
    use crate::source::file::{take_export, Job};
    use crate::token::Tokenizer;

    fn records(st: &store::Store, seqs: &[(u64, u32)]) -> Vec<PseudoRecord> {
        let mut out = Vec::new();
        for &(seq, _) in seqs {
            let v = store::read_outbox(st.tree(), seq).unwrap().unwrap();
            out.extend(store::outbox_value_records(&v));
        }
        out
    }

    /// What ingest sent, and what re-pseudonymizing the kept raw rows sends, under `key`.
    fn ingest_then_rekey(path: &Path, format: Format, key: u8) -> (Vec<PseudoRecord>, Vec<PseudoRecord>, FilePass) {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::default_schema().unwrap();
        let t1 = Tokenizer::new(&schema, &EpochKey::from_bytes(1, &[9u8; 32]).unwrap()).unwrap();
        let t2 =
            Tokenizer::new(&schema, &EpochKey::from_bytes(if key == 9 { 1 } else { 2 }, &[key; 32]).unwrap()).unwrap();
        let st = store::Store::open(&dir.path().join("store")).unwrap();
        let data_key = DataKey::from_bytes(&[1u8; 32]).unwrap();
        let cancel = CancellationToken::new();
        let seen = std::sync::Mutex::new(Vec::new());
        let on_durable = |b: &[(u64, u32)]| seen.lock().unwrap().extend_from_slice(b);
        let env = |tokenizer| Env::for_tests(&schema, tokenizer, &data_key, &st, &cancel, &on_durable);
        let mut state = State::default();
        let kind = schema.kind("arrest").unwrap();
        let job = Job { path, kind, format, quarantine: dir.path().join("q.csv"), dest: None };
        take_export(&env(&t1), &mut state, &job).unwrap();
        let first = records(&st, &std::mem::take(&mut *seen.lock().unwrap()));
        let (id, rec) = store::files(st.tree()).unwrap().pop().unwrap();
        let pass = file(&env(&t2), &mut state, &id, &rec).unwrap();
        // A second pass finds nothing left to do.
        assert_eq!(file(&env(&t2), &mut state, &id, &rec).unwrap(), FilePass::default());
        let again = records(&st, &seen.lock().unwrap());
        (first, again, pass)
    }

    #[test]
    fn kept_rows_give_the_records_ingest_gave_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("arrest.csv");
        let mut text =
            String::from("arrest_id,arrest_date,family_name,given_name,dob,sex,warrant,violent,felony,notes\n");
        for i in 0..2500 {
            text.push_str(&format!(
                "A{i},2019-03-04,Lee{},\"Bo, Jr\",1980-01-{:02},M,y,n,n,free text\n",
                i % 13,
                1 + i % 28
            ));
        }
        text.push_str("B1,not a date,Kim,Al,1981-02-03,F,n,n,n,x\n"); // quarantined at ingest: not kept
        std::fs::write(&csv, text).unwrap();
        let jsonl = dir.path().join("arrest.jsonl");
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!(
                "{{\"arrest_id\":\"J{i}\",\"arrest_date\":\"2020-05-06\",\"family_name\":\"O'Neil\",\"given_name\":\"Ann\",\"dob\":\"1990-07-{:02}\",\"sex\":\"F\",\"warrant\":\"n\",\"violent\":\"n\",\"felony\":\"y\"}}\r\n\n",
                1 + i % 28
            ));
        }
        std::fs::write(&jsonl, text).unwrap();
        // A birth date split over three columns: the raw store keeps all three.
        let split = dir.path().join("split.csv");
        let mut text = String::from("arrest_id,arrest_date,family_name,given_name,by,bm,bd,warrant,violent,felony\n");
        for i in 0..300 {
            text.push_str(&format!("S{i},2019-03-04,Lee{},Bo,1980,{},{},y,n,n\n", i % 7, 1 + i % 12, 1 + i % 28));
        }
        std::fs::write(&split, text).unwrap();
        for (path, format, n) in
            [(&csv, Format::Csv, 2500), (&jsonl, Format::JsonLines, 40), (&split, Format::Csv, 300)]
        {
            // Under the same key, the records are the very same.
            let (first, again, pass) = ingest_then_rekey(path, format, 9);
            assert_eq!(first.len(), n);
            assert!(first.iter().all(|r| r.tokens.contains_key("names_dob")), "{format:?}: the birth date is read");
            assert_eq!((pass.rows, pass.dropped), (n as u64, 0));
            assert_eq!(again, first, "{format:?}");
            // Under a new key: the same rows, fields and lines; tokens under the new epoch.
            let (first, again, _) = ingest_then_rekey(path, format, 5);
            assert_eq!(again.len(), first.len());
            for (a, b) in first.iter().zip(&again) {
                assert_eq!((&a.kind, a.line, &a.fields), (&b.kind, b.line, &b.fields));
                assert_eq!((a.epoch, b.epoch), (1, 2));
                assert_eq!(a.tokens.keys().collect::<Vec<_>>(), b.tokens.keys().collect::<Vec<_>>());
                assert!(b.tokens.values().all(|t| t.starts_with("2:")));
                assert_ne!(a.rid, b.rid);
            }
        }
    }
}
