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
    let mut row = Row::new(env.schema, kind);
    let mut issues = Vec::new();
    let mut records: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut in_batch = 0u32;
    let mut batch = sled::Batch::default();
    let mut pending: Vec<(u64, u32)> = Vec::new();

    let finish = |records: &mut Vec<u8>,
                  in_batch: &mut u32,
                  batch: &mut sled::Batch,
                  pending: &mut Vec<(u64, u32)>,
                  state: &mut State| {
        if *in_batch == 0 {
            return;
        }
        store::insert_outbox(batch, state.next_seq, *in_batch, records);
        pending.push((state.next_seq, *in_batch));
        state.next_seq += 1;
        records.clear();
        *in_batch = 0;
    };

    while next_chunk < rec.next_chunk {
        let plain = open(next_chunk)?;
        let walked = for_each_row(&plain, |line, fields| {
            issues.clear();
            match parser.parse(line, fields, &mut row, &mut issues) {
                Outcome::Accepted => {
                    if in_batch > 0 {
                        records.push(b',');
                    }
                    p.write(&row, &mut records);
                    in_batch += 1;
                    out.rows += 1;
                    if in_batch >= env.batch_records {
                        finish(&mut records, &mut in_batch, &mut batch, &mut pending, state);
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
            finish(&mut records, &mut in_batch, &mut batch, &mut pending, state);
            let mut b = std::mem::take(&mut batch);
            b.insert(&store::rekey_key(id)[..], &store::rekey_value(next_chunk, rows_done)[..]);
            b.insert(store::META_OUTBOX_NEXT, &state.next_seq.to_be_bytes());
            env.store.apply(b).map_err(failed("writing the store"))?;
            env.store.flush().map_err(failed("flushing the store"))?;
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
/// acknowledged. Clears the progress keys. One atomic batch, flushed.
pub fn switch(st: &store::Store, state: &State, epoch: u32) -> Result<(), FileError> {
    let mut b = sled::Batch::default();
    for k in store::rekey_keys(st.tree()).map_err(failed("reading the store"))? {
        b.remove(k);
    }
    b.remove(store::META_REKEY_TARGET);
    b.insert(store::META_ACTIVE_EPOCH, &epoch.to_be_bytes());
    b.insert(store::META_SWITCH_SEQ, &state.next_seq.to_be_bytes());
    st.apply(b).map_err(failed("writing the store"))?;
    st.flush().map_err(failed("flushing the store"))?;
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
    let mut b = sled::Batch::default();
    for k in store::rekey_keys(tree).map_err(failed("reading the store"))? {
        b.remove(k);
    }
    b.insert(store::META_REKEY_TARGET, &target.to_be_bytes());
    st.apply(b).map_err(failed("writing the store"))?;
    st.flush().map_err(failed("flushing the store"))?;
    Ok(())
}
