//! Ingesting one export into the store (blocking; run on a blocking thread): raw rows encrypted in chunks, pseudonymized records in outbox batches, quarantined rows to a CSV beside — the file's outcome durable before it counts.
//!
//! A file is written in segments of about [`SEGMENT_ROWS`] accepted rows,
//! each one atomic sled batch (raw chunks, outbox batches, the file's record
//! saying how many accepted rows are in), made durable, then handed to the
//! pusher: pushing overlaps ingesting. One segment's write is in flight
//! while the next is read and pseudonymized (its batches go to the pusher
//! only once it is durable, and a segment is written only after the one
//! before it is). A file that stops part-way (a stop, a crash,
//! a disk error) resumes when ingested again: its rows are read again and
//! the first `committed_rows` accepted ones are skipped, so no record is
//! made twice. A file refused as a whole (an `IngestError`) must leave
//! nothing: a pre-scan (while hashing) looks for what can refuse a file
//! after its header (an unbalanced quote, an overlong JSON line) and such a
//! file is written in one piece at the end, so its refusal leaves nothing.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use ring::digest;
use tokio_util::sync::CancellationToken;

use crate::fsutil;
use crate::ingest::{Action, Format, IngestError, Issue, LineEnds, Outcome, Reader, Row, MAX_LINE_BYTES};
use crate::pseudonymize::{Pseudonymizer, Summary};
use crate::schema::{Kind, Schema};
use crate::storage::WriteBatch;
use crate::token::Tokenizer;

use super::crypt::DataKey;
use super::raw::{encode_header, ChunkBuilder, RawReader, RAW_CHUNK_MAX_BYTES, RAW_CHUNK_ROWS};
use super::store::{self, FileId, FileRecord, FileState, Store};

/// Accepted rows per segment: written atomically, flushed, then pushable.
pub const SEGMENT_ROWS: u64 = 10_000;

/// Told of outbox batches (sequence, records) once they are durable.
pub type OnDurable<'a> = dyn Fn(&[(u64, u32)]) + Sync + 'a;

/// What every file's ingest needs.
pub struct Env<'a> {
    pub schema: &'a Schema,
    pub tokenizer: &'a Tokenizer,
    pub source: &'a str,
    pub data_key: &'a DataKey,
    pub store: &'a Store,
    pub batch_records: u32,
    /// Accepted rows per segment ([`SEGMENT_ROWS`] in the daemon).
    pub segment_rows: u64,
    pub cancel: &'a CancellationToken,
    /// Called with outbox batches (sequence, records) once they are durable.
    pub on_durable: &'a OnDurable<'a>,
}

#[cfg(test)]
impl<'a> Env<'a> {
    /// The environment the unit tests ingest in: source `police`, batches of 7
    /// records, segments of 500 rows (change a field with `..Env::for_tests(..)`).
    pub(crate) fn for_tests(
        schema: &'a Schema,
        tokenizer: &'a Tokenizer,
        data_key: &'a DataKey,
        store: &'a Store,
        cancel: &'a CancellationToken,
        on_durable: &'a OnDurable<'a>,
    ) -> Env<'a> {
        Env {
            schema,
            tokenizer,
            source: "police",
            data_key,
            store,
            batch_records: 7,
            segment_rows: 500,
            cancel,
            on_durable,
        }
    }
}

/// Ingest state kept between files (under the ingest lock).
#[derive(Debug, Default)]
pub struct State {
    pub next_seq: u64,
    pub files_done: u64,
    pub files_rejected: u64,
    pub held: std::collections::BTreeMap<String, u64>,
}

impl State {
    /// The state as the store records it.
    pub fn load(store: &Store) -> sled::Result<State> {
        Ok(State {
            next_seq: store.outbox_next()?,
            files_done: store.get_u64(store::META_FILES_DONE)?,
            files_rejected: store.get_u64(store::META_FILES_REJECTED)?,
            held: store.held()?,
        })
    }

    /// Run `job` with the state. If it panics (a bug), the state is read
    /// again from the store before the panic goes on (and the lock holding
    /// the state is let go): the job may have written past what the state
    /// in memory says — outbox sequences, files done, rows held — and the
    /// next job must not hand out a sequence again (that would overwrite a
    /// batch not yet sent, or give a deletion's tombstone an older version
    /// than the record it deletes).
    ///
    /// `after_panic` runs then too (the daemon hands the pusher the batches
    /// the job made durable but did not hand over).
    pub fn guarded<T>(&mut self, store: &Store, after_panic: impl FnOnce(), job: impl FnOnce(&mut State) -> T) -> T {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(self))) {
            Ok(t) => t,
            Err(panic) => {
                match State::load(store) {
                    Ok(fresh) => *self = fresh,
                    // A store that cannot be read fails the next job too, before it writes.
                    Err(e) => {
                        tracing::error!(error = %e, "reading the source's state again after a job panicked failed")
                    }
                }
                after_panic();
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// One file to ingest.
pub struct Job<'a> {
    pub path: &'a Path,
    pub kind: &'a Kind,
    pub format: Format,
    /// Where the quarantine CSV goes when rows are set aside.
    pub quarantine: PathBuf,
    /// For an inbox file: its name in done/.
    pub dest: Option<String>,
}

/// What came of a file.
#[derive(Debug, Clone)]
pub struct Done {
    pub summary: Summary,
    pub quarantine: Option<PathBuf>,
    /// The file was ingested before (same kind, same bytes): nothing new was written.
    pub already: bool,
    /// Outbox batches written by this run (already handed to `on_durable`).
    pub batches: usize,
    /// Accepted rows an earlier, interrupted run had written (skipped now).
    pub resumed_after: u64,
    /// For an inbox file: its name in done/ (as first decided, when `already`).
    pub dest: Option<String>,
    /// The file's id in the raw store.
    pub file: FileId,
}

/// Why a file was not ingested.
#[derive(Debug)]
pub enum FileError {
    /// The file itself is unusable (an `IngestError`): it goes to rejected/. Names a line or column, never a value.
    Refused(String),
    /// Something on our side failed (disk, store): the file stays and is tried again (resuming).
    Failed(String),
    /// The daemon is stopping; the file resumes at the next start.
    Stopped,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Refused(m) => write!(f, "refused: {m}"),
            FileError::Failed(m) => write!(f, "failed: {m}"),
            FileError::Stopped => f.write_str("stopped: the daemon is shutting down"),
        }
    }
}

impl std::error::Error for FileError {}

fn failed(what: &str) -> impl Fn(&dyn std::fmt::Display) -> FileError + '_ {
    move |e| FileError::Failed(format!("{what}: {e}"))
}

fn ingest_error(e: IngestError) -> FileError {
    match e {
        IngestError::Io(e) => FileError::Failed(format!("reading the file: {e}")),
        other => FileError::Refused(other.to_string()),
    }
}

/// Hashes everything read through it.
struct Hashing<R> {
    inner: R,
    ctx: digest::Context,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

/// One pass over the file: its id (SHA-256 of the kind and the bytes) and
/// whether it may be refused after its header (`suspect`): a CSV record with
/// a line break and the wrong number of fields (an unbalanced quote), or a
/// JSON line longer than ingest accepts. Conservative: suspect files are
/// only written in one piece.
pub fn scan(path: &Path, kind: &str, format: Format) -> io::Result<(FileId, bool)> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"divert/source-file/v1\0");
    ctx.update(kind.as_bytes());
    ctx.update(b"\0");
    let mut input = Hashing { inner: BufReader::with_capacity(1 << 20, File::open(path)?), ctx };
    let mut suspect = false;
    match format {
        Format::Csv => {
            let mut reader =
                csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(LineEnds::new(&mut input));
            let mut record = csv::ByteRecord::new();
            let mut width = None;
            loop {
                match reader.read_byte_record(&mut record) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => return Err(io::Error::other(e.to_string())),
                    Err(_) => {
                        suspect = true;
                        break;
                    }
                }
                let blank = record.len() == 1 && record.get(0).is_some_and(|f| f.iter().all(u8::is_ascii_whitespace));
                match width {
                    None => width = Some(record.len()),
                    Some(_) if blank => {}
                    Some(w) => {
                        if record.len() != w && record.as_slice().contains(&b'\n') {
                            suspect = true;
                            break;
                        }
                    }
                }
            }
        }
        Format::JsonLines => {
            // Bytes this buffer holds were hashed when read into it.
            let mut lines = BufReader::with_capacity(1 << 16, &mut input);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = (&mut lines).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                if line.len() > MAX_LINE_BYTES {
                    suspect = true;
                    break;
                }
            }
        }
    }
    // Hash whatever the parser did not read.
    io::copy(&mut input, &mut io::sink())?;
    let mut id = [0u8; 32];
    id.copy_from_slice(input.ctx.finish().as_ref());
    Ok((id, suspect))
}

/// The quarantine CSV, written to a hidden temporary first and renamed into place at the end.
struct Quarantine {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<csv::Writer<File>>,
}

impl Quarantine {
    fn new(path: PathBuf) -> Quarantine {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
        Quarantine { path, tmp, writer: None }
    }

    fn write(&mut self, i: &Issue) -> io::Result<()> {
        if self.writer.is_none() {
            let mut w = csv::Writer::from_writer(File::create(&self.tmp)?);
            w.write_record(["line", "field", "reason", "action"])?;
            self.writer = Some(w);
        }
        if let Some(w) = self.writer.as_mut() {
            w.write_record([i.line.to_string().as_str(), &i.field, &i.reason, i.action.as_str()])?;
        }
        Ok(())
    }

    /// Make the quarantine file durable in place; with no issues, remove a stale one.
    fn finish(&mut self) -> io::Result<Option<PathBuf>> {
        match self.writer.take() {
            Some(w) => {
                let f = w.into_inner().map_err(|e| io::Error::other(e.to_string()))?;
                f.sync_all()?;
                drop(f);
                fs::rename(&self.tmp, &self.path)?;
                if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fsutil::sync_dir(dir)?;
                }
                Ok(Some(self.path.clone()))
            }
            None => {
                if self.path.exists() {
                    fs::remove_file(&self.path)?;
                }
                Ok(None)
            }
        }
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn now_rfc3339() -> String {
    crate::days::now_text()
}

/// Ingest one file. On success the file's outcome is durable (flushed) and
/// every batch was handed to `env.on_durable`.
pub fn take_export(env: &Env<'_>, state: &mut State, job: &Job<'_>) -> Result<Done, FileError> {
    let kind = job.kind;
    let (id, suspect) = scan(job.path, &kind.name, job.format).map_err(|e| failed("reading the file")(&e))?;
    let name = job.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let earlier = env.store.file(&id).map_err(|e| failed("reading the store")(&e))?;
    if let Some(rec) = &earlier {
        if rec.state == FileState::Done {
            return Ok(Done {
                summary: Summary {
                    rows_read: rec.rows_read,
                    accepted: rec.accepted,
                    quarantined: rec.quarantined,
                    values_dropped: rec.values_dropped,
                },
                quarantine: rec.quarantine.clone().map(PathBuf::from),
                already: true,
                batches: 0,
                resumed_after: 0,
                dest: rec.dest.clone(),
                file: id,
            });
        }
    }

    // Never below what the store holds: a run that ended in a panic (a bug)
    // left `state` behind the sequences it wrote, and reusing one would
    // overwrite a batch not yet sent.
    let stored_next = env.store.outbox_next().map_err(|e| failed("reading the store")(&e))?;
    state.next_seq = state.next_seq.max(stored_next);

    let open = |p: &Path| File::open(p).map(|f| BufReader::with_capacity(1 << 20, f));
    let input = open(job.path).map_err(|e| failed("opening the file")(&e))?;
    let mut reader = Reader::new(env.schema, kind, job.format, input).map_err(ingest_error)?;
    let raw_input = open(job.path).map_err(|e| failed("opening the file")(&e))?;
    let mut raw = RawReader::new(job.format, raw_input).map_err(|e| failed("reading the file")(&e))?;
    let columns = raw.keep_mapped(reader.ignored_columns());

    let mut w = Writer {
        env,
        id,
        kind: &kind.name,
        name: &name,
        seqs: earlier.as_ref().map(|r| r.seqs.clone()).unwrap_or_default(),
        range_start: state.next_seq,
        seq: state.next_seq,
        skip: earlier.as_ref().map_or(0, |r| r.committed_rows),
        emitted: 0,
        segment_rows: if suspect { u64::MAX } else { env.segment_rows.max(1) },
        batch: WriteBatch::default(),
        chunk: ChunkBuilder::new(),
        chunk_no: earlier.as_ref().map_or(1, |r| r.next_chunk.max(1)),
        pending: Vec::new(),
        in_flight: None,
        batches: 0,
        since_commit: 0,
    };
    let result = w.run(state, job, &mut reader, &mut raw, &columns);
    // A run that stopped part-way may leave its last write in flight: once
    // it is durable its batches go to the pusher, as they would have — but
    // not a refused file's, whose unsent part is taken back below.
    let refused = matches!(result, Err(FileError::Refused(_)));
    let settled = w.settle_with(!refused);
    let result = match (result, settled) {
        (Ok(done), Ok(())) => Ok(done),
        (Ok(_), Err(e)) | (Err(FileError::Stopped), Err(e)) => Err(e),
        (Err(e), Err(also)) => {
            tracing::error!(file = %name, error = %also, "the last segment's write failed too; the file resumes from the one before");
            Err(e)
        }
        (Err(e), Ok(())) => Err(e),
    };
    // Sequences handed out are never used again, whatever happened.
    state.next_seq = state.next_seq.max(w.seq);
    if refused {
        // Only reachable when the pre-scan missed a refusal: take back what is not yet sent.
        if let Ok(Some(rec)) = env.store.file(&id) {
            tracing::error!(
                file = %name,
                rows_already_written = rec.committed_rows,
                "a file was refused after part of it was written; its unsent part is removed, records already sent stay at the steward"
            );
            if let Err(e) = env.store.rollback(&id, &rec) {
                tracing::error!(file = %name, error = %e, "removing the written part of a refused file failed");
            }
        }
    }
    result
}

struct Writer<'e, 'a> {
    env: &'e Env<'a>,
    id: FileId,
    kind: &'e str,
    name: &'e str,
    /// Sequence ranges of the file's batches already committed.
    seqs: Vec<(u64, u64)>,
    range_start: u64,
    seq: u64,
    /// Accepted rows an earlier run committed: read again but not written.
    skip: u64,
    /// Accepted rows seen so far this run (skipped or written).
    emitted: u64,
    segment_rows: u64,
    batch: WriteBatch,
    chunk: ChunkBuilder,
    chunk_no: u32,
    /// Batches in `batch`, not yet written.
    pending: Vec<(u64, u32)>,
    /// The write in flight and the batches it holds (see [`Writer::commit`]).
    in_flight: Option<(crate::storage::Pending, Vec<(u64, u32)>)>,
    batches: usize,
    since_commit: u64,
}

impl Drop for Writer<'_, '_> {
    /// A run that panicked (a bug) may leave a write in flight: wait for it,
    /// so whoever takes the state next sees the store as it wrote it. Its
    /// batches are not handed over here (the handing over may be what
    /// panicked): they are durable in the outbox, and the daemon hands the
    /// pusher what it lacks once the panic reaches `State::guarded`.
    fn drop(&mut self) {
        if let Some((write, _)) = self.in_flight.take() {
            if let Err(e) = write.wait() {
                tracing::error!(file = %self.name, error = %e, "a segment's write failed as the ingest stopped");
            }
        }
    }
}

impl Writer<'_, '_> {
    fn seal_chunk(&mut self) -> Result<(), FileError> {
        if self.chunk.rows() == 0 {
            return Ok(());
        }
        let key = store::raw_key(&self.id, self.chunk_no);
        let sealed = self.env.data_key.seal(&key, self.chunk.finish()).map_err(|e| failed("encrypting")(&e))?;
        self.chunk.reset();
        self.batch.insert(&key[..], sealed);
        self.chunk_no += 1;
        Ok(())
    }

    /// The records `p` pseudonymized since the last batch become outbox batch `seq` (in `batch`, not yet durable).
    fn finish_outbox_batch(&mut self, p: &mut Pseudonymizer<'_>) {
        let n = p.pending();
        if n == 0 {
            return;
        }
        store::insert_outbox(&mut self.batch, self.seq, n, &p.take_batch());
        self.pending.push((self.seq, n));
        self.seq += 1;
    }

    fn record(&self, state: FileState, dest: Option<String>, s: &Summary, quarantine: Option<&Path>) -> FileRecord {
        let mut seqs = self.seqs.clone();
        if self.seq > self.range_start {
            // A range that continues the one before extends it: the record
            // stays small however many segments a file has.
            match seqs.last_mut() {
                Some(last) if last.1 == self.range_start => last.1 = self.seq,
                _ => seqs.push((self.range_start, self.seq)),
            }
        }
        FileRecord {
            state,
            kind: self.kind.to_string(),
            name: self.name.to_string(),
            dest,
            seqs,
            committed_rows: self.emitted,
            next_chunk: self.chunk_no,
            rows_read: s.rows_read,
            accepted: s.accepted,
            quarantined: s.quarantined,
            values_dropped: s.values_dropped,
            quarantine: quarantine.map(|p| p.display().to_string()),
            at: now_rfc3339(),
        }
    }

    /// Write what is in `batch` with the file's record. The write before it
    /// is waited for first (and its batches handed to the pusher), so one
    /// write is in flight while the next segment is read and pseudonymized;
    /// with `last`, this one is waited for too.
    fn commit(&mut self, rec: FileRecord, extra: &[(&[u8], Vec<u8>)], last: bool) -> Result<(), FileError> {
        let rec_bytes = serde_json::to_vec(&rec).map_err(|e| failed("encoding")(&e))?;
        let mut batch = std::mem::take(&mut self.batch);
        batch.insert(&store::file_key(&self.id)[..], rec_bytes);
        batch.insert(store::META_OUTBOX_NEXT, self.seq.to_be_bytes());
        for (k, v) in extra {
            batch.insert(k, v);
        }
        self.settle()?;
        let write = self.env.store.apply_later(batch).map_err(|e| failed("writing the store")(&e))?;
        self.seqs = rec.seqs;
        self.range_start = self.seq;
        self.since_commit = 0;
        self.batches += self.pending.len();
        self.in_flight = Some((write, std::mem::take(&mut self.pending)));
        if last {
            self.settle()?;
        }
        Ok(())
    }

    /// Wait for the write in flight, if any, and hand its batches to the
    /// pusher once it is durable.
    fn settle(&mut self) -> Result<(), FileError> {
        self.settle_with(true)
    }

    /// [`Writer::settle`]; with `push` false the batches are not handed over
    /// (a refused file's unsent part is taken back).
    fn settle_with(&mut self, push: bool) -> Result<(), FileError> {
        if let Some((write, batches)) = self.in_flight.take() {
            write.wait().map_err(|e| failed("writing the store")(&e))?;
            if push {
                (self.env.on_durable)(&batches);
            }
        }
        Ok(())
    }

    fn run<R: Read, Q: Read>(
        &mut self,
        state: &mut State,
        job: &Job<'_>,
        reader: &mut Reader<'_, R>,
        raw: &mut RawReader<Q>,
        columns: &[String],
    ) -> Result<Done, FileError> {
        let env = self.env;
        let kind = job.kind;
        if self.skip == 0 {
            let header = encode_header(job.format, &kind.name, columns);
            let key = store::raw_key(&self.id, 0);
            let sealed = env.data_key.seal(&key, header.as_slice()).map_err(|e| failed("encrypting")(&e))?;
            self.batch.insert(&key[..], sealed);
        }

        let mut quarantine = Quarantine::new(job.quarantine.clone());
        let mut p = Pseudonymizer::new(env.schema, kind, env.source, env.tokenizer);
        // The export's first outbox sequence orders its records after every earlier export's
        // (the same base on a resume, and in `rekey`, which reads it from the file's record).
        p.set_seq_base(self.seqs.first().map_or(self.range_start, |r| r.0));
        let mut row = Row::new(env.schema, kind);
        let mut issues = Vec::new();
        let mut s = Summary::default();
        loop {
            let outcome = match reader.next_row(&mut row, &mut issues) {
                Ok(Some(o)) => o,
                Ok(None) => break,
                Err(e) => return Err(ingest_error(e)),
            };
            s.rows_read += 1;
            for i in issues.drain(..) {
                if i.action == Action::ValueDropped {
                    s.values_dropped += 1;
                }
                quarantine.write(&i).map_err(|e| failed("writing the quarantine file")(&e))?;
            }
            let accepted = outcome == Outcome::Accepted;
            let write = accepted && self.emitted >= self.skip;
            raw.next(row.line, if write { Some(&mut self.chunk) } else { None })
                .map_err(|e| failed("keeping the raw row")(&e))?;
            if accepted {
                s.accepted += 1;
                self.emitted += 1;
            } else {
                s.quarantined += 1;
            }
            if write {
                p.append(&row);
                self.since_commit += 1;
                // Sealed by rows or by size: a raw chunk must stay far below the
                // ~128 KiB past which sled's flush does not make a value durable.
                if self.chunk.rows() >= RAW_CHUNK_ROWS || self.chunk.bytes() >= RAW_CHUNK_MAX_BYTES {
                    self.seal_chunk()?;
                }
                if p.pending() >= env.batch_records {
                    self.finish_outbox_batch(&mut p);
                    if self.since_commit >= self.segment_rows {
                        self.seal_chunk()?;
                        let rec = self.record(FileState::InProgress, None, &Summary::default(), None);
                        self.commit(rec, &[], false)?;
                    }
                }
            }
            if s.rows_read % 1024 == 0 && env.cancel.is_cancelled() {
                return Err(FileError::Stopped);
            }
        }
        self.seal_chunk()?;
        self.finish_outbox_batch(&mut p);
        // The quarantine file is in place before the outcome is recorded, so "done" implies it exists.
        let qpath = quarantine.finish().map_err(|e| failed("writing the quarantine file")(&e))?;

        let held = state.held.get(&kind.name).copied().unwrap_or(0) + s.accepted;
        let rec = self.record(FileState::Done, job.dest.clone(), &s, qpath.as_deref());
        let held_key = store::held_key(&kind.name);
        let files_done = state.files_done + 1;
        self.commit(
            rec,
            &[(&held_key, held.to_be_bytes().to_vec()), (store::META_FILES_DONE, files_done.to_be_bytes().to_vec())],
            true,
        )?;
        state.files_done = files_done;
        state.held.insert(kind.name.clone(), held);
        Ok(Done {
            summary: s,
            quarantine: qpath,
            already: false,
            batches: self.batches,
            resumed_after: self.skip,
            dest: job.dest.clone(),
            file: self.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::EpochKey;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    const HEADER: &str = "arrest_id,arrest_date,family_name,given_name,dob,sex,warrant,violent,felony\n";

    fn export(rows: usize) -> String {
        let mut s = String::from(HEADER);
        for i in 0..rows {
            s.push_str(&format!("A{i},2019-03-04,Lee,Bo,1980-01-{:02},M,y,n,n\n", 1 + i % 28));
        }
        s
    }

    struct Fixture {
        dir: tempfile::TempDir,
        schema: Schema,
        tokenizer: Tokenizer,
        key: DataKey,
        store: Store,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let schema = Schema::default_schema().unwrap();
        let tokenizer = Tokenizer::new(&schema, &EpochKey::from_bytes(1, &[9u8; 32]).unwrap()).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        Fixture { key: DataKey::from_bytes(&[1u8; 32]).unwrap(), dir, schema, tokenizer, store }
    }

    /// Run one ingest; `stop_after` cancels once that many segments are durable.
    fn run(
        f: &Fixture,
        state: &mut State,
        path: &Path,
        stop_after: Option<usize>,
    ) -> (Result<Done, FileError>, Vec<(u64, u32)>) {
        let cancel = CancellationToken::new();
        let seen = Mutex::new(Vec::new());
        let segments = Mutex::new(0usize);
        let on_durable = |b: &[(u64, u32)]| {
            // Handed to the pusher only once written: every batch is in the store already.
            for &(seq, n) in b {
                let v = store::read_outbox(f.store.tree(), seq)
                    .unwrap()
                    .expect("a batch handed over before it was written");
                assert_eq!(store::split_outbox_value(&v).unwrap().0, n);
            }
            seen.lock().unwrap().extend_from_slice(b);
            let mut n = segments.lock().unwrap();
            *n += 1;
            if stop_after.is_some_and(|s| *n >= s) {
                cancel.cancel();
            }
        };
        let env = Env {
            batch_records: 100,
            ..Env::for_tests(&f.schema, &f.tokenizer, &f.key, &f.store, &cancel, &on_durable)
        };
        let kind = f.schema.kind("arrest").unwrap();
        let job = Job { path, kind, format: Format::Csv, quarantine: f.dir.path().join("q.csv"), dest: None };
        let r = take_export(&env, state, &job);
        let seen = seen.into_inner().unwrap();
        (r, seen)
    }

    fn outbox_lines(store: &Store) -> Vec<u64> {
        let mut lines = Vec::new();
        for seq in store.outbox_index().unwrap().into_keys() {
            let v = store::read_outbox(store.tree(), seq).unwrap().unwrap();
            let n = store::split_outbox_value(&v).unwrap().0;
            let recs = store::outbox_value_records(&v);
            assert_eq!(recs.len() as u32, n);
            lines.extend(recs.iter().map(|r| r.line));
        }
        lines
    }

    #[test]
    fn an_interrupted_file_resumes_without_making_a_record_twice() {
        let f = fixture();
        let path = f.dir.path().join("arrest.csv");
        std::fs::write(&path, export(3000)).unwrap();
        let mut state = State::default();
        let (r, first) = run(&f, &mut state, &path, Some(1));
        assert!(matches!(r, Err(FileError::Stopped)), "{r:?}");
        // Segments of 500 rows were durable before the stop was seen (every 1024 rows).
        let written: u32 = first.iter().map(|b| b.1).sum();
        assert_eq!(written, 1000);
        let rec = f.store.file(&scan(&path, "arrest", Format::Csv).unwrap().0).unwrap().unwrap();
        assert_eq!((rec.state, rec.committed_rows), (FileState::InProgress, 1000));

        let (r, second) = run(&f, &mut state, &path, None);
        let done = r.unwrap();
        assert_eq!((done.summary.accepted, done.resumed_after), (3000, 1000));
        let again: u32 = second.iter().map(|b| b.1).sum();
        assert_eq!(again, 2000);
        let firsts: BTreeSet<u64> = first.iter().map(|b| b.0).collect();
        assert!(second.iter().all(|b| !firsts.contains(&b.0)), "sequences are not reused");
        let mut lines = outbox_lines(&f.store);
        lines.sort_unstable();
        assert_eq!(lines, (2..3002).collect::<Vec<u64>>(), "every row once");
        // Raw chunks: header + 3000 rows, each row once.
        let mut raw_rows = BTreeSet::new();
        for kv in f.store.tree().scan_prefix(b"r") {
            let (k, v) = kv.unwrap();
            let plain = f.key.open(&k, &v).unwrap();
            if k.ends_with(&0u32.to_be_bytes()) {
                continue;
            }
            super::super::raw::for_each_row(&plain, |line, _| assert!(raw_rows.insert(line), "raw line {line} twice"))
                .unwrap();
        }
        assert_eq!(raw_rows.len(), 3000);
        assert_eq!(state.held["arrest"], 3000);

        // Six segments over two runs, every sequence in one range: the record does not grow per segment.
        let rec = f.store.file(&scan(&path, "arrest", Format::Csv).unwrap().0).unwrap().unwrap();
        let (lo, hi) = (first.iter().map(|b| b.0).min().unwrap(), second.iter().map(|b| b.0).max().unwrap());
        assert_eq!(rec.seqs, vec![(lo, hi + 1)]);

        // Once done, the same bytes are recognised.
        let (r, third) = run(&f, &mut state, &path, None);
        assert!(r.unwrap().already && third.is_empty());
    }

    #[test]
    fn a_panic_mid_file_leaves_the_batches_it_wrote_alone() {
        for guarded in [false, true] {
            let f = fixture();
            let first = f.dir.path().join("first.csv");
            std::fs::write(&first, export(3000)).unwrap();
            let mut state = State::default();
            // The pusher's hand-over panics at the second durable segment:
            // the first segment's batches were handed over, the second's are
            // durable and were not, and `state` still says sequence 0.
            let calls = Mutex::new(0);
            let on_durable = |_: &[(u64, u32)]| {
                let mut n = calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                *n += 1;
                assert!(*n < 2, "a bug in the hand-over");
            };
            let cancel = CancellationToken::new();
            let env = Env {
                batch_records: 100,
                ..Env::for_tests(&f.schema, &f.tokenizer, &f.key, &f.store, &cancel, &on_durable)
            };
            let kind = f.schema.kind("arrest").unwrap();
            let q = f.dir.path().join("q1.csv");
            let job = Job { path: &first, kind, format: Format::Csv, quarantine: q, dest: None };
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if guarded {
                    // As the daemon runs every job that holds the state.
                    state.guarded(&f.store, || {}, |state| take_export(&env, state, &job))
                } else {
                    take_export(&env, &mut state, &job)
                }
            }));
            assert!(panicked.is_err());
            let rec = f.store.file(&scan(&first, "arrest", Format::Csv).unwrap().0).unwrap().unwrap();
            assert!(rec.committed_rows >= 1000, "two segments written: {}", rec.committed_rows);
            let written = outbox_lines(&f.store).len() as u64;
            assert_eq!(written, rec.committed_rows);
            if guarded {
                // Read again from the store: any job may take it now (a deletion's tombstones too).
                assert_eq!(state.next_seq, f.store.outbox_next().unwrap());
                assert_eq!(state.held, f.store.held().unwrap());
            } else {
                assert_eq!(state.next_seq, 0, "a job that panics leaves the state behind the store");
            }

            // The next file, with the same state: its batches take new sequences.
            let second = f.dir.path().join("second.csv");
            std::fs::write(&second, export(700).replace("Lee,Bo", "Kim,Al")).unwrap();
            let (r, _) = run(&f, &mut state, &second, None);
            assert_eq!(r.unwrap().summary.accepted, 700);
            assert_eq!(outbox_lines(&f.store).len() as u64, written + 700, "no batch of the first file overwritten");
        }
    }

    #[test]
    fn a_file_refused_late_leaves_nothing() {
        let f = fixture();
        let path = f.dir.path().join("arrest.csv");
        let mut text = export(3000);
        text.push_str("B1,2019-03-04,\"Lee,Bo,1980-01-01,M,y,n,n\nB2,2019-03-04,Lee,Bo,1980-01-01,M,y,n,n\n");
        std::fs::write(&path, &text).unwrap();
        assert!(scan(&path, "arrest", Format::Csv).unwrap().1, "the pre-scan flags the unbalanced quote");
        let mut state = State::default();
        let (r, seen) = run(&f, &mut state, &path, None);
        assert!(matches!(&r, Err(FileError::Refused(m)) if m.contains("line 3002")), "{r:?}");
        assert!(seen.is_empty());
        assert_eq!(f.store.tree().len(), 0, "nothing of the file is in the store");
    }

    #[test]
    fn file_ids_depend_on_kind_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.csv");
        std::fs::write(&a, export(3)).unwrap();
        let (id, suspect) = scan(&a, "arrest", Format::Csv).unwrap();
        assert!(!suspect);
        assert_ne!(id, scan(&a, "booking", Format::Csv).unwrap().0);
        std::fs::write(&a, export(4)).unwrap();
        assert_ne!(id, scan(&a, "arrest", Format::Csv).unwrap().0);
        let j = dir.path().join("a.jsonl");
        std::fs::write(&j, format!("{{}}\n{}\n", "x".repeat(MAX_LINE_BYTES + 5))).unwrap();
        assert!(scan(&j, "arrest", Format::JsonLines).unwrap().1);
        std::fs::write(&j, "{}\n{}\n").unwrap();
        assert!(!scan(&j, "arrest", Format::JsonLines).unwrap().1);
    }
}
