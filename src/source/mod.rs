//! The source daemon's service: the inbox watcher, handed-over files, the encrypted raw store, the durable outbox and the pusher to the steward.
//!
//! An export goes: inbox/ (or `divert ingest`) → [`file::take_export`] (schema
//! check, raw rows encrypted into the store, pseudonymized records into
//! outbox batches, bad rows to a quarantine CSV; all of it durable before an
//! inbox file is overwritten and deleted, its receipt left in done/) → [`push`] (the oldest batches to the steward over
//! mutual TLS; removed on acknowledgement only). The store layout is in
//! [`store`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::sync::Mutex as AsyncMutex;

use crate::config::SourceConfig;
use crate::daemon::Context;
use crate::fsutil;
use crate::ingest::Format;
use crate::keys;
use crate::schema::Schema;
use crate::token::Tokenizer;

mod admin;
pub mod crypt;
pub mod file;
pub mod forget;
pub mod inbox;
pub mod keyserver;
pub mod push;
pub mod raw;
pub mod rekey;
pub mod rotation;
pub mod store;

pub use admin::RequestError;
use crypt::DataKey;
use file::{Env, FileError, Job, State};
use inbox::Dirs;
use push::{Health, Outbox, Stats};
use store::Store;

/// The running source service.
pub struct Source {
    ctx: Arc<Context>,
    cfg: SourceConfig,
    /// Our source name (from our certificate's SPIFFE ID).
    name: String,
    schema: Schema,
    /// The epoch new records are pseudonymized under; replaced at a switch (under the ingest lock).
    keying: std::sync::RwLock<Arc<Keying>>,
    /// What `status` and `keys status` show of a rotation under way.
    rotation: Mutex<rotation::View>,
    /// Wakes the rotation task (e.g. when the steward refuses an epoch).
    wake: tokio::sync::Notify,
    data_key: DataKey,
    store: Store,
    store_id: String,
    dirs: Dirs,
    /// `inbox/deletions/`: files of agency record ids to delete (a court's list), one per line.
    deletions: Dirs,
    /// Ourselves, for the blocking tasks `ingest` starts.
    me: std::sync::Weak<Source>,
    /// Held while a file is ingested: files go one at a time.
    state: Arc<AsyncMutex<State>>,
    /// What status shows of `state`, readable while a file is being ingested.
    counts: Mutex<Counts>,
    outbox: Outbox,
    stats: Stats,
}

/// The linkage key in use: its tokenizer, epoch and fingerprint.
pub struct Keying {
    pub tokenizer: Arc<Tokenizer>,
    pub epoch: u32,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Default)]
struct Counts {
    files_done: u64,
    files_rejected: u64,
    held: std::collections::BTreeMap<String, u64>,
}

fn load_schema(path: Option<&Path>) -> anyhow::Result<Schema> {
    match path {
        Some(p) => crate::config::load_schema(Some(p)),
        None => Schema::default_schema()
            .map_err(|p| anyhow::anyhow!("the built-in schema is broken: {} problem(s)", p.len())),
    }
}

impl Source {
    /// Open the store, load the schema, linkage key and data key (made 0600
    /// if missing), create the inbox directories, roll back any file left
    /// half-written, and start the inbox watcher and the pushers on the tracker.
    pub async fn start(ctx: Arc<Context>, cfg: SourceConfig) -> anyhow::Result<Arc<Source>> {
        let data_dir = ctx.config.data_dir.clone();
        fsutil::create_private_dir(&data_dir)?;
        let schema = load_schema(cfg.schema.as_deref())?;
        let key_path = cfg.data_key.clone();
        let (data_key, created) = tokio::task::spawn_blocking(move || DataKey::load_or_create(&key_path))
            .await
            .context("loading the data key")?
            .with_context(|| format!("the data key that encrypts raw records ({})", cfg.data_key.display()))?;
        if created {
            tracing::info!(path = %cfg.data_key.display(), "made a new data key for the raw store (0600); back it up with the store");
        }
        let dirs = Dirs::new(&cfg.inbox);
        dirs.create().with_context(|| format!("creating the inbox {}", cfg.inbox.display()))?;
        let deletions = Dirs::new(&cfg.inbox.join(DELETIONS_DIR));
        deletions.create().with_context(|| format!("creating {}", deletions.inbox.display()))?;
        let d2 = dirs.clone();
        let d3 = deletions.clone();
        let shredded = tokio::task::spawn_blocking(move || {
            Ok::<_, std::io::Error>(d2.finish_shredding()? + d3.finish_shredding()?)
        })
        .await
        .context("deleting ingested files")?
        .with_context(|| {
            format!("deleting ingested files from {} (they must not stay in clear)", dirs.done.display())
        })?;
        if shredded > 0 {
            tracing::info!(files = shredded, done = %dirs.done.display(), "ingested export files deleted from done/ (receipts stay)");
        }
        match dirs.rejected_waiting() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                files = n,
                rejected = %dirs.rejected.display(),
                "refused export files wait in rejected/ in clear: fix and drop them in the inbox again, or delete them"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot read rejected/"),
        }

        let store_dir = data_dir.join("store");
        let opened = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            fsutil::create_private_dir(&store_dir)?;
            let store = Store::open(&store_dir).with_context(|| {
                format!("opening the store {} (is another divert running on it?)", store_dir.display())
            })?;
            let unfinished = store.unfinished()?;
            let store_id = store.store_id()?;
            let state = State::load(&store)?;
            let outbox = store.outbox_index()?;
            let stats = Stats::new(
                store.get_u64(store::META_PUSHED_BATCHES)?,
                store.get_u64(store::META_PUSHED_RECORDS)?,
                store.tree().get(store::META_LAST_PUSH)?.map(|v| String::from_utf8_lossy(&v).into_owned()),
            );
            Ok((store, unfinished, store_id, state, outbox, stats))
        })
        .await
        .context("opening the store")??;
        let (store, unfinished, store_id, state, pending, stats) = opened;
        let (store2, keys_dir) = (store.clone(), cfg.keys.clone());
        let key_epoch = tokio::task::spawn_blocking(move || rotation::active_epoch(&store2, &keys_dir))
            .await
            .context("reading the active key epoch")??;
        let key = keys::load(&cfg.keys, key_epoch).with_context(|| {
            format!("the store pseudonymizes under key epoch {key_epoch}, whose key must be in {}", cfg.keys.display())
        })?;
        let tokenizer = Arc::new(Tokenizer::new(&schema, &key)?);
        let keying = Keying { tokenizer, epoch: key_epoch, fingerprint: key.fingerprint() };
        drop(key);
        for f in &unfinished {
            tracing::warn!(
                file = %f.name,
                kind = %f.kind,
                rows_written = f.committed_rows,
                "a file was left part-way by an earlier stop; it resumes when ingested again (inbox files: now; handed-over files: hand it over again)"
            );
        }
        let counts =
            Counts { files_done: state.files_done, files_rejected: state.files_rejected, held: state.held.clone() };
        let outbox = Outbox::default();
        outbox.add(pending);
        let src = Arc::new_cyclic(|me| Source {
            me: me.clone(),
            name: ctx.config.spiffe_id.name.clone(),
            ctx: ctx.clone(),
            cfg,
            schema,
            keying: std::sync::RwLock::new(Arc::new(keying)),
            rotation: Mutex::new(rotation::View::default()),
            wake: tokio::sync::Notify::new(),
            data_key,
            store,
            store_id,
            dirs,
            deletions,
            state: Arc::new(AsyncMutex::new(state)),
            counts: Mutex::new(counts),
            outbox,
            stats,
        });
        let (batches, records) = src.outbox.depth();
        tracing::info!(
            inbox = %src.cfg.inbox.display(),
            steward = %src.cfg.steward_addr,
            key_epoch = src.keying().epoch,
            key_fingerprint = %src.keying().fingerprint,
            outbox_batches = batches,
            outbox_records = records,
            "source started"
        );
        ctx.tracker.spawn(watch_inbox(src.clone()));
        for _ in 0..push::PUSH_CONNECTIONS {
            ctx.tracker.spawn(push::worker(src.clone()));
        }
        if let crate::config::Custody::Custodian { listen } = &src.cfg.custody {
            let server = keyserver::bind(*listen).await?;
            // The bound address (with port 0, the one the system chose), for whoever started us.
            let bound = server.local_addr().context("the key server's address")?;
            let addr_file = src.ctx.config.data_dir.join(crate::config::KEY_LISTEN_ADDR_FILE);
            tokio::task::spawn_blocking(move || fsutil::write_public(&addr_file, format!("{bound}\n").as_bytes()))
                .await
                .context("writing the key server's address")??;
            ctx.tracker.spawn(keyserver::serve(src.clone(), server));
        }
        ctx.tracker.spawn(rotation::task(src.clone()));
        Ok(src)
    }

    /// The linkage key in use now.
    pub fn keying(&self) -> Arc<Keying> {
        self.keying.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn env<'a>(&'a self, tokenizer: &'a Tokenizer, on_durable: &'a file::OnDurable<'a>) -> Env<'a> {
        Env {
            schema: &self.schema,
            tokenizer,
            source: &self.name,
            data_key: &self.data_key,
            store: &self.store,
            batch_records: self.cfg.batch_records,
            segment_rows: file::SEGMENT_ROWS,
            cancel: &self.ctx.shutdown,
            on_durable,
        }
    }

    /// Run a job that holds the state as every such job runs: under
    /// [`State::guarded`], and after a panic the pusher is handed every
    /// batch of the store's outbox it does not hold.
    fn guarded<T>(&self, state: &mut State, job: impl FnOnce(&mut State) -> T) -> T {
        state.guarded(&self.store, || self.resync_outbox(), job)
    }

    /// Hand the pusher every batch in the store's outbox it does not hold
    /// (after a job panicked: see `State::guarded`).
    fn resync_outbox(&self) {
        match self.store.outbox_index() {
            Ok(stored) => self.outbox.resync(stored),
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox after a job panicked failed; its batches go after a restart")
            }
        }
    }

    fn set_counts(&self, state: &State) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *c = Counts { files_done: state.files_done, files_rejected: state.files_rejected, held: state.held.clone() };
    }

    fn known_kind(&self, kind: &str) -> Result<(), RequestError> {
        match self.schema.kind(kind) {
            Some(_) => Ok(()),
            None => {
                Err(RequestError::UnknownKind { kind: kind.to_string(), kinds: self.schema.kind_names().join(", ") })
            }
        }
    }

    /// A file handed over by `divert ingest --kind KIND PATH`: ingested like an
    /// inbox file but left where it is; bad rows go to `PATH.quarantine.csv`.
    /// The error names a line or a column, never a value.
    pub async fn ingest(
        &self,
        kind: &str,
        path: &Path,
        force_snapshot: bool,
    ) -> Result<serde_json::Value, RequestError> {
        self.known_kind(kind)?;
        let shown = path.display().to_string();
        let format = Format::from_path(path).ok_or_else(|| RequestError::Format { path: shown.clone() })?;
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(RequestError::NotAFile { path: shown }),
            Err(e) => return Err(RequestError::Unreadable { path: shown, error: e }),
        }
        let job_path = path.to_path_buf();
        let result = self
            .locked_job(kind, "ingest", move |src, state, k| {
                let quarantine = crate::ingest::quarantine_path(&job_path);
                let job = Job { path: &job_path, kind: k, format, quarantine, dest: None };
                let add = |b: &[(u64, u32)]| src.outbox.add(b.iter().copied());
                let keying = src.keying();
                let env = src.env(&keying.tokenizer, &add);
                src.snapshot_step(&env, state, k, &job_path, format, force_snapshot)
                    .and_then(|()| file::take_export(&env, state, &job))
                    .and_then(|done| src.supersede_step(&env, state, k, done))
            })
            .await?;
        match result {
            Ok(done) => {
                log_file(&shown, kind, &done);
                Ok(summary_json(&shown, kind, &done))
            }
            Err(e) => {
                tracing::warn!(file = %shown, kind = %kind, error = %e, "handed-over file not ingested");
                Err(RequestError::File { path: shown, error: e })
            }
        }
    }

    /// `divert forget`: delete the records of `kind` with these agency record
    /// ids here and, by tombstones, at the steward ([`forget`]). Counts only
    /// in the answer, the log and any error: the ids are never shown.
    pub async fn forget(&self, kind: &str, ids: forget::RecordIds) -> Result<serde_json::Value, RequestError> {
        self.known_kind(kind)?;
        let result = self
            .locked_job(kind, "deletion", move |src, state, k| {
                let tokenizers = src.held_tokenizers()?;
                let refs: Vec<&Tokenizer> = tokenizers.iter().collect();
                let add = |b: &[(u64, u32)]| src.outbox.add(b.iter().copied());
                let keying = src.keying();
                forget::forget(&src.env(&keying.tokenizer, &add), state, k, &ids, &refs)
            })
            .await?;
        match result {
            Ok(f) => {
                tracing::info!(
                    kind = %kind,
                    ids = f.ids,
                    raw_rows_removed = f.raw_rows_removed,
                    outbox_records_removed = f.outbox_records_removed,
                    tombstones = f.tombstones,
                    "records deleted at this source; tombstones queued for the steward"
                );
                let mut v = serde_json::to_value(&f).unwrap_or_default();
                v["kind"] = kind.into();
                Ok(v)
            }
            Err(e) => {
                tracing::warn!(kind = %kind, error = %e, "deleting records failed; nothing was deleted");
                Err(RequestError::Forget(e))
            }
        }
    }

    /// Run `job` for the record kind `kind` on a blocking thread, holding the
    /// ingest lock, and publish the counts after it: what a handed-over file
    /// (`divert ingest`) and a deletion (`divert forget`) both do.
    async fn locked_job<T: Send + 'static>(
        &self,
        kind: &str,
        what: &'static str,
        job: impl FnOnce(&Source, &mut State, &crate::schema::Kind) -> Result<T, FileError> + Send + 'static,
    ) -> Result<Result<T, FileError>, RequestError> {
        let src = self.me.upgrade().ok_or(RequestError::Stopped)?;
        let kind = kind.to_string();
        let mut state = self.state.clone().lock_owned().await;
        self.ctx
            .tracker
            .spawn_blocking(move || {
                let Some(k) = src.schema.kind(&kind) else {
                    return Err(FileError::Failed("unknown kind".into()));
                };
                let r = src.guarded(&mut state, |state| job(&src, state, k));
                src.set_counts(&state);
                r
            })
            .await
            .map_err(|e| RequestError::Task { what, detail: e.to_string() })
    }

    /// A tokenizer per key epoch held: tombstones go under each, since the
    /// steward may hold a record under any of them during a rotation.
    fn held_tokenizers(&self) -> Result<Vec<Tokenizer>, FileError> {
        let mut out = Vec::new();
        let epochs = keys::list(&self.cfg.keys).map_err(|e| FileError::Failed(format!("reading the keys: {e}")))?;
        for e in epochs {
            let key =
                keys::load(&self.cfg.keys, e.epoch).map_err(|e| FileError::Failed(format!("reading a key: {e}")))?;
            out.push(Tokenizer::new(&self.schema, &key).map_err(|e| FileError::Failed(format!("a key: {e}")))?);
        }
        Ok(out)
    }

    /// Before ingesting a whole-table export (a `snapshot` kind): delete what
    /// it no longer holds, or refuse it (see [`forget::snapshot`]).
    fn snapshot_step(
        &self,
        env: &Env<'_>,
        state: &mut State,
        kind: &crate::schema::Kind,
        path: &Path,
        format: Format,
        force: bool,
    ) -> Result<(), FileError> {
        if !kind.snapshot {
            return Ok(());
        }
        let tokenizers = self.held_tokenizers()?;
        let refs: Vec<&Tokenizer> = tokenizers.iter().collect();
        let max = (!force).then_some(self.cfg.snapshot_max_delete_percent);
        if let Some(f) = forget::snapshot(env, state, kind, path, format, max, &refs)? {
            tracing::info!(
                kind = %kind.name,
                deleted = f.ids,
                raw_rows_removed = f.raw_rows_removed,
                tombstones = f.tombstones,
                forced = force,
                "whole-table export: records held but absent from it deleted"
            );
        }
        Ok(())
    }

    /// After an export is ingested: earlier raw rows of its record ids leave
    /// the raw store (one row per record, the newest; see [`forget::supersede`]).
    fn supersede_step(
        &self,
        env: &Env<'_>,
        state: &mut State,
        kind: &crate::schema::Kind,
        done: file::Done,
    ) -> Result<file::Done, FileError> {
        if !done.already {
            let removed = forget::supersede(env, state, kind, &done.file)?;
            if removed > 0 {
                tracing::info!(kind = %kind.name, raw_rows = removed, "earlier versions of re-exported records removed from the raw store");
            }
        }
        Ok(done)
    }

    /// Records deleted per kind (`divert forget`), from the store.
    fn forgotten(&self) -> std::collections::BTreeMap<String, u64> {
        self.schema
            .kind_names()
            .into_iter()
            .filter_map(|k| {
                let n = self.store.get_u64(&forget::forgotten_key(k)).ok()?;
                (n > 0).then(|| (k.to_string(), n))
            })
            .collect()
    }

    /// For `divert status`: counts only.
    pub fn status(&self) -> serde_json::Value {
        let (batches, records) = self.outbox.depth();
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let last_push = self.stats.last_push.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let steward = match self.stats.health_now() {
            Health::Unknown => serde_json::json!({ "addr": self.cfg.steward_addr, "state": "unknown" }),
            Health::Ok => serde_json::json!({ "addr": self.cfg.steward_addr, "state": "ok" }),
            Health::Failing { since, error, .. } => serde_json::json!({
                "addr": self.cfg.steward_addr, "state": "failing", "since": since, "error": error,
            }),
        };
        serde_json::json!({
            "source": self.name,
            "key": self.key_view(),
            "outbox": { "batches": batches, "records": records },
            "pushed": {
                "batches": self.stats.batches.load(std::sync::atomic::Ordering::Relaxed),
                "records": self.stats.records.load(std::sync::atomic::Ordering::Relaxed),
            },
            "last_push": last_push,
            "steward": steward,
            "held": c.held,
            "deleted": self.forgotten(),
            "files": {
                "done": c.files_done,
                "rejected": c.files_rejected,
                "rejected_waiting": self.dirs.rejected_waiting().ok(),
            },
        })
    }

    /// After shutdown is cancelled and the tasks drained: flush the store.
    pub async fn close(&self) {
        match self.store.flush_async().await {
            Ok(_) => tracing::info!("source store flushed"),
            Err(e) => tracing::error!(error = %e, "flushing the source store failed"),
        }
    }
}

fn log_file(file: &str, kind: &str, d: &file::Done) {
    let s = &d.summary;
    if d.already {
        tracing::info!(
            file,
            kind,
            rows = s.rows_read,
            accepted = s.accepted,
            "file already ingested (same kind and bytes); nothing sent again"
        );
    } else {
        tracing::info!(
            file,
            kind,
            rows = s.rows_read,
            accepted = s.accepted,
            quarantined = s.quarantined,
            values_dropped = s.values_dropped,
            batches = d.batches,
            resumed_after = d.resumed_after,
            "file ingested"
        );
    }
}

fn summary_json(file: &str, kind: &str, d: &file::Done) -> serde_json::Value {
    serde_json::json!({
        "file": file,
        "kind": kind,
        "rows_read": d.summary.rows_read,
        "accepted": d.summary.accepted,
        "quarantined": d.summary.quarantined,
        "values_dropped": d.summary.values_dropped,
        "quarantine": d.quarantine.as_ref().map(|p| p.display().to_string()),
        "batches": d.batches,
        "already_ingested": d.already,
    })
}

/// An inbox file that failed on our side: when to try it again.
struct Retry {
    error: String,
    attempts: u32,
    next: tokio::time::Instant,
}

/// Inbox files (exports and deletion lists) that failed on our side, by inbox path.
#[derive(Default)]
struct Failing(std::collections::HashMap<String, Retry>);

impl Failing {
    /// Whether `key` may be tried now (never failed, or its backoff is over).
    fn due(&self, key: &str) -> bool {
        self.0.get(key).map_or(true, |r| tokio::time::Instant::now() >= r.next)
    }

    /// The outcome of a try: success forgets `key`; a failure is logged when
    /// its error changes (`what` says what did not happen) and backs off.
    fn record(&mut self, src: &Source, key: &str, outcome: Result<(), InboxError>, what: &str) {
        let error = match outcome {
            Ok(()) => {
                self.0.remove(key);
                return;
            }
            Err(e) => e.to_string(),
        };
        let r = self.0.entry(key.to_string()).or_insert(Retry {
            error: String::new(),
            attempts: 0,
            next: tokio::time::Instant::now(),
        });
        if r.error != error {
            tracing::warn!(file = %key, error = %error, "{what}; it stays and is tried again");
            r.error = error;
        }
        let mut rng = rand::thread_rng();
        let delay = push::backoff(r.attempts, src.cfg.max_backoff, &mut rng).max(src.cfg.poll_interval);
        r.attempts = r.attempts.saturating_add(1);
        r.next = tokio::time::Instant::now() + delay;
    }
}

/// Why an inbox file (an export or a deletion list) was not handled this
/// time: a failure on our side, so it stays and is tried again. Names the
/// file's fate, never a value of it.
#[derive(Debug, thiserror::Error)]
enum InboxError {
    #[error("moving to rejected/: {0}")]
    Reject(#[source] std::io::Error),
    #[error("reading it: {0}")]
    Read(#[source] std::io::Error),
    #[error("the task {what} failed: {detail}")]
    Task { what: &'static str, detail: String },
    #[error("{done}, but deleting it from the inbox failed: {error}")]
    Retire { done: &'static str, error: std::io::Error },
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("{0}")]
    File(FileError),
}

/// Poll the inbox until shutdown, one file at a time. A file that fails on
/// our side (disk, store) is tried again with backoff, its error logged when it changes.
async fn watch_inbox(src: Arc<Source>) {
    let shutdown = src.ctx.shutdown.clone();
    let mut failing = Failing::default();
    let mut dir_error: Option<String> = None;
    loop {
        let names = match src.dirs.ready() {
            Ok(n) => {
                dir_error = None;
                n
            }
            Err(e) => {
                let msg = e.to_string();
                if dir_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(inbox = %src.dirs.inbox.display(), error = %msg, "cannot read the inbox");
                    dir_error = Some(msg);
                }
                Vec::new()
            }
        };
        // Deletion lists first: a record sealed must not wait behind a large export.
        for name in src.deletions.ready().unwrap_or_default() {
            if shutdown.is_cancelled() {
                return;
            }
            let key = format!("{DELETIONS_DIR}/{name}");
            if failing.due(&key) {
                let outcome = deletion_file(&src, &name).await;
                failing.record(&src, &key, outcome, "deletion list not applied");
            }
        }
        failing.0.retain(|name, _| names.contains(name) || name.starts_with(DELETIONS_DIR));
        for name in names {
            if shutdown.is_cancelled() {
                return;
            }
            if failing.due(&name) {
                let outcome = inbox_file(&src, &name).await;
                failing.record(&src, &name, outcome, "inbox file not ingested");
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(src.cfg.poll_interval) => {}
        }
    }
}

/// Where, under the inbox, files of record ids to delete are dropped.
pub const DELETIONS_DIR: &str = "deletions";

/// Apply one deletion list from `inbox/deletions/` (its kind from its name,
/// `arrest-sealed-2024-05.txt`; one agency record id per line), then
/// overwrite and delete it (it holds ids in clear), leaving a receipt of
/// counts in `deletions/done/`. `Err` for a failure on our side (the file stays).
async fn deletion_file(src: &Arc<Source>, name: &str) -> Result<(), InboxError> {
    let dirs = &src.deletions;
    let path = dirs.inbox.join(name);
    let kind = match inbox::tell_kind(&src.schema, &dirs.inbox, name) {
        Ok(k) => k,
        Err(reason) => {
            let dest = dirs.unique_dest(name);
            let reason = reason.to_string();
            dirs.move_rejected(name, &dest, &reason).map_err(InboxError::Reject)?;
            tracing::warn!(file = name, reason = %reason, "deletion list rejected");
            return Ok(());
        }
    };
    let text = match std::fs::read(&path) {
        Ok(b) => zeroize::Zeroizing::new(b),
        Err(e) => return Err(InboxError::Read(e)),
    };
    let ids = forget::RecordIds(
        String::from_utf8_lossy(&text).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect(),
    );
    drop(text);
    let result = src.forget(&kind, ids).await?;
    let dest = dirs.unique_dest(name);
    let mut receipt = result;
    receipt["file"] = name.into();
    receipt["retired"] = crate::days::now_text().into();
    let text = serde_json::to_string_pretty(&receipt).unwrap_or_else(|_| "{}".into()) + "\n";
    let d = dirs.clone();
    let n = name.to_string();
    tokio::task::spawn_blocking(move || d.retire_ingested(&n, &dest, &text))
        .await
        .map_err(|e| InboxError::Task { what: "deleting the list", detail: e.to_string() })?
        .map_err(|e| InboxError::Retire { done: "applied", error: e })?;
    Ok(())
}

/// Ingest one inbox file and move it. `Err` for a failure on our side (the file stays).
async fn inbox_file(src: &Arc<Source>, name: &str) -> Result<(), InboxError> {
    let state = src.state.clone().lock_owned().await;
    let job_src = src.clone();
    let name = name.to_string();
    let outcome = src
        .ctx
        .tracker
        .spawn_blocking(move || {
            let mut state = state;
            let r = job_src.guarded(&mut state, |state| inbox_file_blocking(&job_src, state, &name));
            job_src.set_counts(&state);
            r
        })
        .await
        .map_err(|e| InboxError::Task { what: "ingest", detail: e.to_string() })?;
    outcome
}

fn inbox_file_blocking(src: &Source, state: &mut State, name: &str) -> Result<(), InboxError> {
    let dirs = &src.dirs;
    let path = dirs.inbox.join(name);
    if !path.is_file() {
        return Ok(()); // taken away meanwhile
    }
    let reject = |state: &mut State, reason: &str| -> Result<(), InboxError> {
        let dest = dirs.unique_dest(name);
        dirs.move_rejected(name, &dest, reason).map_err(InboxError::Reject)?;
        state.files_rejected += 1;
        let _ = src.store.put_u64(store::META_FILES_REJECTED, state.files_rejected);
        tracing::warn!(file = name, moved_to = %dirs.rejected.join(&dest).display(), reason, "inbox file rejected");
        Ok(())
    };
    let kind_name = match inbox::tell_kind(&src.schema, &dirs.inbox, name) {
        Ok(k) => k,
        Err(reason) => return reject(state, &reason.to_string()),
    };
    let Some(kind) = src.schema.kind(&kind_name) else {
        return reject(state, &format!("`{kind_name}` is not a record kind of the schema"));
    };
    let Some(format) = Format::from_path(&path) else {
        return reject(
            state,
            "cannot tell the format from the extension: name the file .csv, .txt (CSV) or .jsonl, .ndjson (JSON lines)",
        );
    };
    let dest = dirs.unique_dest(name);
    let quarantine = dirs.rejected.join(format!("{dest}.quarantine.csv"));
    let job = Job { path: &path, kind, format, quarantine, dest: Some(dest.clone()) };
    let add = |b: &[(u64, u32)]| src.outbox.add(b.iter().copied());
    let keying = src.keying();
    let env = src.env(&keying.tokenizer, &add);
    let ingested = src
        .snapshot_step(&env, state, kind, &path, format, false)
        .and_then(|()| file::take_export(&env, state, &job))
        .and_then(|done| src.supersede_step(&env, state, kind, done));
    match ingested {
        Ok(done) => {
            // The outcome is durable: status shows it before the (slower) deletion.
            src.set_counts(state);
            // The rows are durable in the encrypted raw store: the export itself goes.
            let mut receipt = summary_json(name, &kind_name, &done);
            receipt["retired"] = crate::days::now_text().into();
            receipt["export"] = "overwritten and deleted; its rows are held encrypted in the raw store".into();
            let text = serde_json::to_string_pretty(&receipt).unwrap_or_else(|_| "{}".into()) + "\n";
            let how = dirs
                .retire_ingested(name, &dest, &text)
                .map_err(|e| InboxError::Retire { done: "ingested", error: e })?;
            if how == inbox::Shredded::UnlinkedOnly {
                tracing::warn!(
                    file = name,
                    "the ingested file had another hard link: it was deleted from the inbox but not overwritten, \
                     and the other link still holds it in clear"
                );
            }
            log_file(name, &kind_name, &done);
            Ok(())
        }
        Err(FileError::Refused(m)) => reject(state, &format!("refused ({kind_name}): {m}")),
        Err(FileError::Stopped) => Ok(()),
        Err(e @ FileError::Failed(_)) => Err(InboxError::File(e)),
    }
}
