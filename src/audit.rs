//! The steward's append-only, hash-chained audit log: releases, refusals, budget grants, batch receipts, key and certificate changes — one JSON line each, fsynced before the caller acts on it.
//!
//! # What an entry may say
//!
//! **A detail never contains a row, a token, a person id or an exact count**
//! (of persons, records or anything a query computed). It names who, what
//! and how much budget: for a release, the evaluator, the query hash, the
//! epsilon spent and the budget left ([`ReleaseDetail`]). Callers are
//! responsible for what they pass; the typed details below are the natural
//! way to pass it.
//!
//! # Format
//!
//! One entry per line, fields in this order:
//!
//! ```text
//! {"seq":1,"time":"2025-01-02T03:04:05.123Z","kind":"release","actor":"eval-a","detail":{…},"prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! * `seq` counts from 1 with no gaps.
//! * `prev` is the SHA-256 of the previous entry's line (its bytes without
//!   the newline); the first entry's `prev` is 64 zeros.
//! * `hash` is the SHA-256 of the entry without `hash`: exactly the line's
//!   bytes up to `,"hash":` followed by `}`. Checking it needs no JSON
//!   re-serialization, so the check is byte-exact.
//!
//! A flipped byte anywhere breaks its entry's `hash` (or its JSON, or the
//! line structure); a deleted or reordered line breaks the next entry's
//! `prev` and `seq`. Deleting the *last* entries cannot be seen from the
//! file alone: keep the `last hash` printed by `divert audit verify`
//! somewhere else to anchor the chain.
//!
//! # Writing
//!
//! One writer thread per log. [`AuditLog::append`] (or
//! [`AuditLog::append_async`]) hands the entry to it and returns once the
//! entry is durable. The thread takes every entry queued, chains them in
//! order, writes them with one `write` and calls `File::sync_data` once for
//! the group (group commit), then answers each caller with its seq; callers
//! append before the answer leaves (see `dp::ledger` for the order of a
//! release). If the write or sync fails, the file is cut back to its length
//! before the group and every entry of the group fails.
//!
//! # A torn last line
//!
//! A crash in the middle of an append can leave an unterminated last line.
//! Such an entry was never acknowledged (append had not returned, so nothing
//! was answered on its strength). [`AuditLog::open`] cuts it off with a
//! logged warning and then appends a `recovery` entry recording how many
//! bytes were dropped and their SHA-256, so the truncation itself is in the
//! chain. [`verify`] reports an unterminated last line as a failure at that
//! line (it may also be an append in progress: run it again) — the chain as
//! it stands on disk is not whole until the steward has reopened the log.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The audit log's file name in the steward's data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// The `prev` of the first entry.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The longest line `open` will look back for (entries are a few hundred bytes).
const MAX_LINE_BYTES: u64 = 1024 * 1024;
/// `,"hash":"` + 64 hex + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A differentially private answer left the steward.
    Release,
    /// A request was refused (budget, role, validation).
    Refusal,
    /// An evaluator's budget was set.
    BudgetGrant,
    /// A batch of records was received from a source.
    Batch,
    /// Records of a source and kind were removed at the source's request
    /// (tombstones): how many, never which.
    Deletion,
    /// A linkage or data key changed.
    Key,
    /// A certificate or CRL was issued, revoked or reloaded.
    Cert,
    /// Ledger spent raised from the audit log at startup.
    Reconcile,
    /// The log itself was repaired on open (a torn last line cut off).
    Recovery,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Release => "release",
            Kind::Refusal => "refusal",
            Kind::BudgetGrant => "budget_grant",
            Kind::Batch => "batch",
            Kind::Deletion => "deletion",
            Kind::Key => "key",
            Kind::Cert => "cert",
            Kind::Reconcile => "reconcile",
            Kind::Recovery => "recovery",
        }
    }
}

/// The detail of a `release` entry: who, which query, how much budget. The
/// answer itself is not logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDetail {
    pub evaluator: String,
    /// Hex SHA-256 of the canonical query.
    pub query_hash: String,
    /// Epsilon spent by this release (0 for an answer served from the cache).
    pub epsilon_micro: u64,
    /// The evaluator's budget left after it.
    pub left_micro: u64,
}

/// The detail of a `refusal` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalDetail {
    /// Hex SHA-256 of the canonical query, if the request got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_hash: Option<String>,
    /// Epsilon asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_micro: Option<u64>,
    /// Why, in words that carry no data (e.g. "budget exhausted", "wrong role").
    pub reason: String,
    /// The budget left, for budget refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_micro: Option<u64>,
}

/// The detail of a `budget_grant` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetGrantDetail {
    pub evaluator: String,
    pub total_micro: u64,
    pub spent_micro: u64,
}

/// The detail of a `batch` entry: which batch from whom, not what is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchDetail {
    pub source: String,
    pub batch_id: String,
}

/// The detail of a `deletion` entry: a source's records of one kind removed
/// by the tombstones of one batch. Counts only: no rid, no record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionDetail {
    pub source: String,
    pub kind: String,
    pub records: u64,
    /// The batch whose tombstones removed them (entries of earlier releases have none).
    #[serde(default)]
    pub batch_id: String,
}

/// A `batch` or `deletion` entry found in the log: (source, batch id, the
/// deletion's record kind, or `None` for the batch entry).
pub type BatchEntry = (String, String, Option<String>);

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the last entry is damaged ({reason}); run `divert audit verify {path}`")]
    Damaged { path: PathBuf, reason: String },
    #[error("audit entry could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("audit clock: {0}")]
    Clock(#[from] time::error::Format),
    #[error("{path}: an earlier write failed and could not be undone; reopen the log")]
    Broken { path: PathBuf },
    #[error("audit log: its writer thread has stopped")]
    Stopped,
}

pub use crate::wire::Receipt;

/// Check that the log at `path` verifies and holds every receipt: the entry
/// at each receipt's seq exists and has its hash. `Err` names the first
/// receipt that does not hold (entries deleted, or the log rewritten).
pub fn verify_receipts(path: &Path, receipts: &[Receipt]) -> Result<VerifyReport, VerifyError> {
    let mut want: BTreeMap<u64, &str> = receipts.iter().map(|r| (r.seq, r.hash.as_str())).collect();
    let mut mismatch = None;
    let report = walk(path, false, |_, e| {
        if let Some(h) = want.remove(&e.seq) {
            if h != e.hash && mismatch.is_none() {
                mismatch = Some(e.seq);
            }
        }
    })?;
    let fail =
        |seq: u64, reason: String| VerifyError { line: seq, seq: Some(seq), good_entries: report.entries, reason };
    if let Some(seq) = mismatch {
        return Err(fail(seq, "the entry does not have the hash of the receipt: the log was rewritten".into()));
    }
    if let Some((&seq, _)) = want.iter().next() {
        return Err(fail(
            seq,
            format!("a receipt names entry {seq}, but the log ends at {}: entries were deleted", report.entries),
        ));
    }
    Ok(report)
}

/// A chain that checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: u64,
    /// The last entry's `hash` (`None` for an empty log).
    pub last_hash: Option<String>,
}

/// The first entry that does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {reason}", seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct VerifyError {
    /// 1-based line number of the bad entry (0 if the file could not be read at all).
    pub line: u64,
    /// The seq the entry claims, when it could be read.
    pub seq: Option<u64>,
    /// Entries before it that checked out.
    pub good_entries: u64,
    pub reason: String,
}

/// An entry as read back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    seq: u64,
    time: String,
    kind: String,
    actor: String,
    detail: serde_json::Value,
    prev: String,
    hash: String,
}

/// An entry as written, without its hash.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a str,
    kind: &'a str,
    actor: &'a str,
    detail: serde_json::Value,
    prev: &'a str,
}

struct Writer {
    path: PathBuf,
    file: File,
    len: u64,
    next_seq: u64,
    /// SHA-256 (hex) of the last line: the next entry's `prev`.
    prev: String,
    /// The last entry's seq and `hash`: the receipt [`AuditLog::head`] gives.
    head: Option<Receipt>,
    broken: bool,
}

/// The open audit log: hands entries to the one writer thread of its file.
pub struct AuditLog {
    path: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Pending>>>,
    head: Arc<Mutex<Option<Receipt>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// An entry on its way to the writer thread.
struct Pending {
    /// Written together: in one group, one write, one sync.
    entries: Vec<Item>,
    reply: Box<dyn FnOnce(Result<Vec<u64>, AuditError>) + Send>,
}

/// One entry to append.
struct Item {
    kind: &'static str,
    actor: String,
    detail: serde_json::Value,
}

fn item<D: Serialize + ?Sized>(kind: Kind, actor: &str, detail: &D) -> Result<Item, AuditError> {
    Ok(Item { kind: kind.as_str(), actor: actor.to_string(), detail: serde_json::to_value(detail)? })
}

/// The one seq of a one-entry append.
fn first(seqs: Vec<u64>) -> Result<u64, AuditError> {
    seqs.first().copied().ok_or(AuditError::Stopped)
}

/// Most entries one group (one write, one sync) takes (a unit of several is never split).
const MAX_GROUP: usize = 1024;

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).finish_non_exhaustive()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: take what is queued, chain it, write it once, sync once, answer.
fn write_loop(mut w: Writer, rx: mpsc::Receiver<Pending>, head: Arc<Mutex<Option<Receipt>>>) {
    while let Ok(first) = rx.recv() {
        let mut entries = first.entries.len();
        let mut group = vec![first];
        while entries < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => {
                    entries += p.entries.len();
                    group.push(p);
                }
                Err(_) => break,
            }
        }
        let items: Vec<&Item> = group.iter().flat_map(|p| &p.entries).collect();
        let outcome = w.append_group(&items);
        if let Ok(seqs) = &outcome {
            if let Some(h) = &w.head {
                *head.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.clone());
            }
            debug_assert_eq!(seqs.len(), items.len());
        }
        let mut at = 0;
        for p in group {
            let n = p.entries.len();
            let r = match &outcome {
                Ok(seqs) => Ok(seqs[at..at + n].to_vec()),
                Err(e) => Err(e.again()),
            };
            at += n;
            (p.reply)(r);
        }
    }
}

impl AuditError {
    /// The same error for another waiter of a failed group.
    fn again(&self) -> AuditError {
        match self {
            AuditError::Io { path, source } => {
                AuditError::Io { path: path.clone(), source: io::Error::new(source.kind(), source.to_string()) }
            }
            AuditError::Broken { path } => AuditError::Broken { path: path.clone() },
            AuditError::Damaged { path, reason } => AuditError::Damaged { path: path.clone(), reason: reason.clone() },
            other => AuditError::Io { path: PathBuf::new(), source: io::Error::other(other.to_string()) },
        }
    }
}

impl Writer {
    /// Chain, write and sync a group of entries; their seqs in order.
    fn append_group(&mut self, group: &[&Item]) -> Result<Vec<u64>, AuditError> {
        if self.broken {
            return Err(AuditError::Broken { path: self.path.clone() });
        }
        let time = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?;
        let (mut seq, mut prev, mut head) = (self.next_seq, self.prev.clone(), self.head.clone());
        let mut bytes = Vec::new();
        let mut seqs = Vec::with_capacity(group.len());
        for p in group {
            let body = serde_json::to_vec(&Body {
                seq,
                time: &time,
                kind: p.kind,
                actor: &p.actor,
                detail: p.detail.clone(),
                prev: &prev,
            })?;
            let hash = sha256_hex(&body);
            let mut line = body;
            line.pop(); // the closing brace
            line.extend_from_slice(br#","hash":""#);
            line.extend_from_slice(hash.as_bytes());
            line.extend_from_slice(br#""}"#);
            prev = sha256_hex(&line);
            line.push(b'\n');
            bytes.extend_from_slice(&line);
            seqs.push(seq);
            head = Some(Receipt { seq, hash });
            seq += 1;
        }
        let start = self.len;
        let written = (|| {
            self.file.seek(SeekFrom::Start(start))?;
            self.file.write_all(&bytes)?;
            self.file.sync_data()
        })();
        if let Err(source) = written {
            // Undo the partial lines so the chain stays whole; if that fails
            // too, refuse further appends until the log is reopened (which
            // cuts a torn line off).
            let undone = self.file.set_len(start).and_then(|()| self.file.sync_data());
            if undone.is_err() {
                self.broken = true;
            }
            return Err(AuditError::Io { path: self.path.clone(), source });
        }
        self.len = start + bytes.len() as u64;
        self.next_seq = seq;
        self.prev = prev;
        self.head = head;
        Ok(seqs)
    }
}

/// Split a line into (the entry without `hash`, as hashed; the claimed hash).
fn split_hash(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    if line.len() < HASH_SUFFIX_LEN + 2 {
        return None;
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    let suffix = &line[cut..];
    if !suffix.starts_with(br#","hash":""#) || !suffix.ends_with(br#""}"#) {
        return None;
    }
    let hash = std::str::from_utf8(&suffix[9..73]).ok()?;
    if !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut body = line[..cut].to_vec();
    body.push(b'}');
    Some((body, hash))
}

/// Check one line on its own: structure, JSON and its own hash.
fn check_line(line: &[u8]) -> Result<Entry, (Option<u64>, String)> {
    let entry: Entry = serde_json::from_slice(line).map_err(|e| (None, format!("not an audit entry: {e}")))?;
    let seq = Some(entry.seq);
    let Some((body, claimed)) = split_hash(line) else {
        return Err((seq, "the line does not end with its hash".into()));
    };
    if claimed != entry.hash {
        return Err((seq, "the hash field is not where it belongs".into()));
    }
    if sha256_hex(&body) != entry.hash {
        return Err((seq, "the entry does not match its hash (it was changed)".into()));
    }
    Ok(entry)
}

impl AuditLog {
    /// Open (or create, 0600) the log at `path` and continue its chain from
    /// the last entry. A torn (unterminated) last line is cut off with a
    /// warning and a `recovery` entry; a damaged last complete entry is an
    /// error (run `divert audit verify`).
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let io_err = |source| AuditError::Io { path: path.to_path_buf(), source };
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        if !existed {
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                crate::fsutil::sync_dir(dir).map_err(io_err)?;
            }
        }
        let mut len = file.metadata().map_err(io_err)?.len();
        let (complete_len, tail) = find_tail(&mut file, len).map_err(io_err)?;
        let mut torn = None;
        if complete_len < len {
            let tail_bytes = tail.unwrap_or_default();
            tracing::warn!(
                path = %path.display(),
                bytes = len - complete_len,
                "audit log: cutting off a torn last line left by a crash mid-append (it was never acknowledged)"
            );
            torn = Some((len - complete_len, sha256_hex(&tail_bytes)));
            file.set_len(complete_len).map_err(io_err)?;
            file.sync_data().map_err(io_err)?;
            len = complete_len;
        }
        let (next_seq, prev, head) = match last_line(&mut file, len).map_err(io_err)? {
            None => (1, GENESIS_PREV.to_string(), None),
            Some(line) => {
                let entry = check_line(&line)
                    .map_err(|(_, reason)| AuditError::Damaged { path: path.to_path_buf(), reason })?;
                (entry.seq + 1, sha256_hex(&line), Some(Receipt { seq: entry.seq, hash: entry.hash }))
            }
        };
        let shared_head = Arc::new(Mutex::new(head.clone()));
        let writer = Writer { file, len, next_seq, prev, head, broken: false, path: path.to_path_buf() };
        let (tx, rx) = mpsc::channel::<Pending>();
        let thread_head = shared_head.clone();
        let thread = std::thread::Builder::new()
            .name("divert-audit".into())
            .spawn(move || write_loop(writer, rx, thread_head))
            .map_err(io_err)?;
        let log = AuditLog {
            path: path.to_path_buf(),
            tx: Mutex::new(Some(tx)),
            head: shared_head,
            thread: Mutex::new(Some(thread)),
        };
        if let Some((bytes, sha256)) = torn {
            log.append(
                Kind::Recovery,
                "system",
                &serde_json::json!({ "dropped_torn_line_bytes": bytes, "dropped_sha256": sha256 }),
            )?;
        }
        Ok(log)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one entry, durably (fsynced, with whatever else was queued);
    /// returns its seq. `actor` is a certificate name or `admin`; `detail`
    /// must carry no row, token, person id or exact count (see the module
    /// docs). Blocking: from async code use [`AuditLog::append_async`].
    pub fn append<D: Serialize + ?Sized>(&self, kind: Kind, actor: &str, detail: &D) -> Result<u64, AuditError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(
            vec![item(kind, actor, detail)?],
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        )?;
        first(answer.recv().map_err(|_| AuditError::Stopped)??)
    }

    /// [`AuditLog::append`] for async code: the task waits, no thread blocks.
    pub async fn append_async<D: Serialize + ?Sized>(
        &self,
        kind: Kind,
        actor: &str,
        detail: &D,
    ) -> Result<u64, AuditError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(
            vec![item(kind, actor, detail)?],
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        )?;
        first(answer.await.map_err(|_| AuditError::Stopped)??)
    }

    /// Append entries (kind, actor, detail) together, durably: one write and
    /// one sync, so a failure appends none of them (a crash can still leave a
    /// prefix of whole lines, never a torn one: see [`AuditLog::open`]);
    /// their seqs in order.
    pub async fn append_all_async(
        &self,
        entries: Vec<(Kind, String, serde_json::Value)>,
    ) -> Result<Vec<u64>, AuditError> {
        let entries =
            entries.into_iter().map(|(kind, actor, detail)| Item { kind: kind.as_str(), actor, detail }).collect();
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(
            entries,
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        )?;
        answer.await.map_err(|_| AuditError::Stopped)?
    }

    fn submit(
        &self,
        entries: Vec<Item>,
        reply: Box<dyn FnOnce(Result<Vec<u64>, AuditError>) + Send>,
    ) -> Result<(), AuditError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref().ok_or(AuditError::Stopped)?.send(Pending { entries, reply }).map_err(|_| AuditError::Stopped)
    }

    /// Stop the writer after the entries queued so far and wait for it.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// The newest entry's seq and hash: a receipt for everything up to it.
    /// Whoever keeps receipts (an evaluator gets one with every answer) can
    /// later show, with `divert audit verify --expect SEQ:HASH`, that the log
    /// was not cut short or rewritten since.
    pub fn head(&self) -> Option<Receipt> {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Append a `release` entry.
    pub fn release(&self, detail: &ReleaseDetail) -> Result<u64, AuditError> {
        self.append(Kind::Release, &detail.evaluator, detail)
    }

    /// Append a `release` entry (async).
    pub async fn release_async(&self, detail: &ReleaseDetail) -> Result<u64, AuditError> {
        self.append_async(Kind::Release, &detail.evaluator, detail).await
    }

    /// Sum the epsilon of every `release` entry per evaluator, checking the
    /// chain as it goes (a log that does not verify is not trusted for
    /// reconciliation). A torn last line is ignored: it was never
    /// acknowledged.
    pub fn spent_by_evaluator(path: &Path) -> Result<BTreeMap<String, u64>, VerifyError> {
        let mut spent: BTreeMap<String, u64> = BTreeMap::new();
        let mut bad_detail = None;
        walk(path, true, |line, entry| {
            if entry.kind != Kind::Release.as_str() || bad_detail.is_some() {
                return;
            }
            match serde_json::from_value::<ReleaseDetail>(entry.detail.clone()) {
                Ok(d) => {
                    let e = spent.entry(d.evaluator).or_default();
                    *e = e.saturating_add(d.epsilon_micro);
                }
                Err(e) => {
                    bad_detail = Some((line, entry.seq, format!("a release entry's detail is not understood: {e}")))
                }
            }
        })?;
        if let Some((line, seq, reason)) = bad_detail {
            return Err(VerifyError { line, seq: Some(seq), good_entries: line - 1, reason });
        }
        Ok(spent)
    }
}

/// Every `batch` and `deletion` entry of the log at `path`, checking the
/// chain as it goes; a torn last line is ignored. For finishing, at start,
/// the audit of batches stored just before a crash (without writing an
/// entry twice).
pub fn batch_entries(path: &Path) -> Result<std::collections::HashSet<BatchEntry>, VerifyError> {
    let mut out = std::collections::HashSet::new();
    walk(path, true, |_, entry| {
        if entry.kind == Kind::Batch.as_str() {
            if let Ok(d) = serde_json::from_value::<BatchDetail>(entry.detail.clone()) {
                out.insert((d.source, d.batch_id, None));
            }
        } else if entry.kind == Kind::Deletion.as_str() {
            if let Ok(d) = serde_json::from_value::<DeletionDetail>(entry.detail.clone()) {
                out.insert((d.source, d.batch_id, Some(d.kind)));
            }
        }
    })?;
    Ok(out)
}

/// Check every entry's hash, `prev` link and `seq` of the log at `path`;
/// name the first bad entry.
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    walk(path, false, |_, _| {})
}

/// Walk the chain, calling `visit(line number, entry)` for each good entry.
fn walk(path: &Path, allow_torn: bool, mut visit: impl FnMut(u64, &Entry)) -> Result<VerifyReport, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError {
        line: 0,
        seq: None,
        good_entries: 0,
        reason: format!("{}: {e}", path.display()),
    })?;
    let mut reader = BufReader::new(file);
    let mut prev = GENESIS_PREV.to_string();
    let mut last_hash = None;
    let mut entries = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let line_no = entries + 1;
        let fail = |seq: Option<u64>, reason: String| VerifyError { line: line_no, seq, good_entries: entries, reason };
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| fail(None, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            if allow_torn {
                break;
            }
            return Err(fail(
                None,
                "the last line is unterminated: an append in progress, or a crash mid-write \
                 (never acknowledged; the steward cuts it off when it next opens the log)"
                    .into(),
            ));
        }
        buf.pop();
        let entry = check_line(&buf).map_err(|(seq, reason)| fail(seq, reason))?;
        if entry.seq != line_no {
            return Err(fail(
                Some(entry.seq),
                format!("seq {} where {line_no} was expected (a line is missing or moved)", entry.seq),
            ));
        }
        if entry.prev != prev {
            return Err(fail(
                Some(entry.seq),
                "prev does not match the entry before it (a line is missing, moved or changed)".into(),
            ));
        }
        if time::OffsetDateTime::parse(&entry.time, &time::format_description::well_known::Rfc3339).is_err() {
            return Err(fail(Some(entry.seq), "time is not RFC 3339".into()));
        }
        if entry.actor.is_empty() {
            return Err(fail(Some(entry.seq), "actor is empty".into()));
        }
        visit(line_no, &entry);
        prev = sha256_hex(&buf);
        last_hash = Some(entry.hash);
        entries += 1;
    }
    Ok(VerifyReport { entries, last_hash })
}

/// Where the complete lines of the file end, and the bytes after (a torn
/// line), if any.
fn find_tail(file: &mut File, len: u64) -> io::Result<(u64, Option<Vec<u8>>)> {
    if len == 0 {
        return Ok((0, None));
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok((len, None));
    }
    // Look back for the last newline; the torn part is after it.
    let start = match rfind_newline(file, len - 1)? {
        Some(pos) => pos + 1,
        None => 0,
    };
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(start))?;
    file.take(len - start).read_to_end(&mut tail)?;
    Ok((start, Some(tail)))
}

/// The last complete line (without its newline) of a file whose length is
/// `len` and whose last byte is a newline.
fn last_line(file: &mut File, len: u64) -> io::Result<Option<Vec<u8>>> {
    if len == 0 {
        return Ok(None);
    }
    let start = match rfind_newline(file, len - 1)? {
        Some(pos) => pos + 1,
        None => 0,
    };
    if len - 1 - start > MAX_LINE_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the last audit entry is implausibly long"));
    }
    let mut line = Vec::new();
    file.seek(SeekFrom::Start(start))?;
    file.take(len - 1 - start).read_to_end(&mut line)?;
    Ok(Some(line))
}

/// The position of the last newline before `end`, reading backwards in blocks.
fn rfind_newline(file: &mut File, end: u64) -> io::Result<Option<u64>> {
    const BLOCK: u64 = 8192;
    let mut hi = end;
    let mut buf = vec![0u8; BLOCK as usize];
    while hi > 0 {
        let lo = hi.saturating_sub(BLOCK);
        let n = (hi - lo) as usize;
        file.seek(SeekFrom::Start(lo))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        if end - lo > MAX_LINE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no line break in the last megabyte of the audit log",
            ));
        }
        hi = lo;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        let log = AuditLog::open(&path).unwrap();
        let d =
            ReleaseDetail { evaluator: "eval".into(), query_hash: "ab".repeat(32), epsilon_micro: 10, left_micro: 90 };
        assert_eq!(log.release(&d).unwrap(), 1);
        assert_eq!(log.append(Kind::BudgetGrant, "admin", &serde_json::json!({"evaluator": "eval"})).unwrap(), 2);
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.release(&d).unwrap(), 3);
        let report = verify(&path).unwrap();
        assert_eq!(report.entries, 3);
        let spent = AuditLog::spent_by_evaluator(&path).unwrap();
        assert_eq!(spent.get("eval"), Some(&20));
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        assert!(first.starts_with(r#"{"seq":1,"time":""#), "{first}");
        assert!(first.contains(&format!(r#""prev":"{GENESIS_PREV}","hash":""#)), "{first}");
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(report.last_hash.as_deref(), last["hash"].as_str());
    }

    #[test]
    fn audit_split_hash_rejects_odd_suffixes() {
        assert!(split_hash(b"{}").is_none());
        let fake = format!(r#"{{"seq":1,"hash":"{}"}}"#, "G".repeat(64));
        assert!(split_hash(fake.as_bytes()).is_none());
    }
}
