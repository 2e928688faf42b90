//! Ingesting one export into the store (blocking; run on a blocking thread): raw rows encrypted in chunks, pseudonymized records in outbox batches, quarantined rows to a CSV beside — all of a file committed atomically and flushed before its outcome counts.
//!
//! Large files are written in segments (atomic sled batches) marked "in
//! progress" with their outbox range; the pusher sees none of a file's
//! batches until the whole file is durable, and a file that stops half way
//! (a refusal late in the file, a stop, a crash) is rolled back, so a file
//! is either wholly in the outbox or not at all.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use ring::digest;
use tokio_util::sync::CancellationToken;

use crate::fsutil;
use crate::ingest::{Action, Format, Issue, Outcome, Reader, Row};
use crate::pseudonymize::{Pseudonymizer, Summary};
use crate::schema::{Kind, Schema};
use crate::token::Tokenizer;

use super::crypt::DataKey;
use super::raw::{encode_header, ChunkBuilder, RawReader, RAW_CHUNK_ROWS};
use super::store::{self, FileId, FileRecord, FileState, Store};

/// Accepted rows written per segment (one atomic sled batch) of a large file.
pub const SEGMENT_ROWS: u64 = 50_000;

/// What every file's ingest needs.
pub struct Env<'a> {
    pub schema: &'a Schema,
    pub tokenizer: &'a Tokenizer,
    pub source: &'a str,
    pub data_key: &'a DataKey,
    pub store: &'a Store,
    pub batch_records: u32,
    pub cancel: &'a CancellationToken,
}

/// Ingest state kept between files (under the ingest lock).
#[derive(Debug, Default)]
pub struct State {
    pub next_seq: u64,
    pub files_done: u64,
    pub files_rejected: u64,
    pub held: std::collections::BTreeMap<String, u64>,
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
    /// Outbox batches written (sequence, records).
    pub batches: Vec<(u64, u32)>,
    /// For an inbox file: its name in done/ (as first decided, when `already`).
    pub dest: Option<String>,
}

/// Why a file was not ingested.
#[derive(Debug)]
pub enum FileError {
    /// The file itself is unusable (an `IngestError`): it goes to rejected/. Names a line or column, never a value.
    Refused(String),
    /// Something on our side failed (disk, store): the file stays and is tried again.
    Failed(String),
    /// The daemon is stopping.
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

fn failed(what: &str) -> impl Fn(&dyn std::fmt::Display) -> FileError + '_ {
    move |e| FileError::Failed(format!("{what}: {e}"))
}

/// SHA-256 over the kind and the file's bytes: the file's id in the store.
pub fn file_id(path: &Path, kind: &str) -> io::Result<FileId> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"divert/source-file/v1\0");
    ctx.update(kind.as_bytes());
    ctx.update(b"\0");
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(ctx.finish().as_ref());
    Ok(id)
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
    crate::pki::format_time(time::OffsetDateTime::now_utc())
}

/// Ingest one file. On success the file's outcome is durable (flushed).
pub fn ingest(env: &Env<'_>, state: &mut State, job: &Job<'_>) -> Result<Done, FileError> {
    let kind = job.kind;
    let id = file_id(job.path, &kind.name).map_err(|e| failed("reading the file")(&e))?;
    let name = job.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match env.store.file(&id).map_err(|e| failed("reading the store")(&e))? {
        Some(rec) if rec.state == FileState::Done => {
            return Ok(Done {
                summary: Summary {
                    rows_read: rec.rows_read,
                    accepted: rec.accepted,
                    quarantined: rec.quarantined,
                    values_dropped: rec.values_dropped,
                },
                quarantine: rec.quarantine.map(PathBuf::from),
                already: true,
                batches: Vec::new(),
                dest: rec.dest,
            });
        }
        Some(rec) => {
            env.store.rollback(&id, &rec, state.next_seq).map_err(|e| failed("rolling back")(&e))?;
            state.next_seq = state.next_seq.max(rec.end_seq);
        }
        None => {}
    }

    let open = |p: &Path| File::open(p).map(|f| BufReader::with_capacity(1 << 20, f));
    let input = open(job.path).map_err(|e| failed("opening the file")(&e))?;
    let mut reader =
        Reader::new(env.schema, kind, job.format, input).map_err(|e| FileError::Refused(e.to_string()))?;
    let raw_input = open(job.path).map_err(|e| failed("opening the file")(&e))?;
    let mut raw = RawReader::new(job.format, raw_input).map_err(|e| failed("reading the file")(&e))?;
    let columns = raw.keep_mapped(reader.ignored_columns());

    let mut w = Writer {
        env,
        id,
        start_seq: state.next_seq,
        seq: state.next_seq,
        batch: sled::Batch::default(),
        committed: false,
        chunk: ChunkBuilder::new(),
        chunk_no: 1,
        records: Vec::with_capacity(1 << 20),
        in_batch: 0,
        batches: Vec::new(),
        since_commit: 0,
    };
    let result = w.run(state, job, &mut reader, &mut raw, &columns, &name);
    if result.is_err() {
        // Sequences handed out are never reused, even when the file is rolled back.
        state.next_seq = w.seq;
        if w.committed {
            let rec = w.record(FileState::InProgress, &kind.name, &name, None, &Summary::default(), None);
            if let Err(e) = env.store.rollback(&id, &rec, w.seq) {
                tracing::error!(file = %name, error = %e, "rolling back a partly written file failed; it is rolled back at the next start");
            }
        }
    }
    result
}

struct Writer<'e, 'a> {
    env: &'e Env<'a>,
    id: FileId,
    start_seq: u64,
    seq: u64,
    batch: sled::Batch,
    /// Some segment of this file was applied to the store.
    committed: bool,
    chunk: ChunkBuilder,
    chunk_no: u32,
    /// The current outbox batch: records separated by commas.
    records: Vec<u8>,
    in_batch: u32,
    batches: Vec<(u64, u32)>,
    since_commit: u64,
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

    fn finish_outbox_batch(&mut self) {
        if self.in_batch == 0 {
            return;
        }
        self.batch.insert(&store::outbox_key(self.seq)[..], store::outbox_value(self.in_batch, &self.records));
        self.batches.push((self.seq, self.in_batch));
        self.seq += 1;
        self.records.clear();
        self.in_batch = 0;
    }

    fn record(
        &self,
        state: FileState,
        kind: &str,
        name: &str,
        dest: Option<String>,
        s: &Summary,
        quarantine: Option<&Path>,
    ) -> FileRecord {
        FileRecord {
            state,
            kind: kind.to_string(),
            name: name.to_string(),
            dest,
            start_seq: self.start_seq,
            end_seq: self.seq,
            rows_read: s.rows_read,
            accepted: s.accepted,
            quarantined: s.quarantined,
            values_dropped: s.values_dropped,
            quarantine: quarantine.map(|p| p.display().to_string()),
            at: now_rfc3339(),
        }
    }

    /// Apply the segment so far, marked in progress (not yet pushable).
    fn commit_segment(&mut self, kind: &str, name: &str) -> Result<(), FileError> {
        self.seal_chunk()?;
        let rec = self.record(FileState::InProgress, kind, name, None, &Summary::default(), None);
        let rec = serde_json::to_vec(&rec).map_err(|e| failed("encoding")(&e))?;
        let mut batch = std::mem::take(&mut self.batch);
        batch.insert(&store::file_key(&self.id)[..], rec);
        batch.insert(store::META_OUTBOX_NEXT, &self.seq.to_be_bytes());
        // Marked before applying: a failed apply may still have written part of it.
        self.committed = true;
        self.env.store.apply(batch).map_err(|e| failed("writing the store")(&e))?;
        self.since_commit = 0;
        Ok(())
    }

    fn run<R: Read, Q: Read>(
        &mut self,
        state: &mut State,
        job: &Job<'_>,
        reader: &mut Reader<'_, R>,
        raw: &mut RawReader<Q>,
        columns: &[String],
        name: &str,
    ) -> Result<Done, FileError> {
        let env = self.env;
        let kind = job.kind;
        let header = encode_header(job.format, &kind.name, columns);
        let key = store::raw_key(&self.id, 0);
        self.batch.insert(&key[..], env.data_key.seal(&key, header.as_slice()).map_err(|e| failed("encrypting")(&e))?);
        drop(header);

        let mut quarantine = Quarantine::new(job.quarantine.clone());
        let mut p = Pseudonymizer::new(env.schema, kind, env.source, env.tokenizer);
        let mut row = Row::new(env.schema, kind);
        let mut issues = Vec::new();
        let mut s = Summary::default();
        loop {
            let outcome = match reader.next_row(&mut row, &mut issues) {
                Ok(Some(o)) => o,
                Ok(None) => break,
                Err(e) => return Err(FileError::Refused(e.to_string())),
            };
            s.rows_read += 1;
            for i in issues.drain(..) {
                if i.action == Action::ValueDropped {
                    s.values_dropped += 1;
                }
                quarantine.write(&i).map_err(|e| failed("writing the quarantine file")(&e))?;
            }
            let accepted = outcome == Outcome::Accepted;
            raw.next(row.line, if accepted { Some(&mut self.chunk) } else { None })
                .map_err(|e| failed("keeping the raw row")(&e))?;
            if accepted {
                s.accepted += 1;
                if self.in_batch > 0 {
                    self.records.push(b',');
                }
                p.write(&row, &mut self.records);
                self.in_batch += 1;
                self.since_commit += 1;
                if self.chunk.rows() >= RAW_CHUNK_ROWS {
                    self.seal_chunk()?;
                }
                if self.in_batch >= env.batch_records {
                    self.finish_outbox_batch();
                    if self.since_commit >= SEGMENT_ROWS {
                        self.commit_segment(&kind.name, name)?;
                    }
                }
            } else {
                s.quarantined += 1;
            }
            if s.rows_read % 1024 == 0 && env.cancel.is_cancelled() {
                return Err(FileError::Stopped);
            }
        }
        self.seal_chunk()?;
        self.finish_outbox_batch();
        // The quarantine file is in place before the outcome is recorded, so "done" implies it exists.
        let qpath = quarantine.finish().map_err(|e| failed("writing the quarantine file")(&e))?;

        let rec = self.record(FileState::Done, &kind.name, name, job.dest.clone(), &s, qpath.as_deref());
        let rec = serde_json::to_vec(&rec).map_err(|e| failed("encoding")(&e))?;
        let held = state.held.get(&kind.name).copied().unwrap_or(0) + s.accepted;
        let mut batch = std::mem::take(&mut self.batch);
        batch.insert(&store::file_key(&self.id)[..], rec);
        batch.insert(store::META_OUTBOX_NEXT, &self.seq.to_be_bytes());
        batch.insert(store::held_key(&kind.name), &held.to_be_bytes());
        batch.insert(store::META_FILES_DONE, &(state.files_done + 1).to_be_bytes());
        self.committed = true;
        env.store.apply(batch).map_err(|e| failed("writing the store")(&e))?;
        env.store.flush().map_err(|e| failed("flushing the store")(&e))?;
        state.next_seq = self.seq;
        state.files_done += 1;
        state.held.insert(kind.name.clone(), held);
        Ok(Done {
            summary: s,
            quarantine: qpath,
            already: false,
            batches: std::mem::take(&mut self.batches),
            dest: job.dest.clone(),
        })
    }
}

/// Write a small text file durably (temporary, fsync, rename, fsync the directory).
pub fn write_durable(path: &Path, text: &str) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fsutil::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
