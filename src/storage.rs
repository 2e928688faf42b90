//! The sled adapter: opens every sled database of the project and writes each through one thread of its own, which makes every write durable (sled's flush, then `fdatasync` of its data file) before it answers — group commit.
//!
//! # Why a writer thread, and why `fdatasync`
//!
//! sled 0.34's `flush` ends in `sync_file_range` (`pagecache/iobuf.rs`),
//! which flushes neither the file's metadata nor the disk's write cache: a
//! write acknowledged after it alone can be lost when the power goes. So a
//! write here is acknowledged only after `fdatasync` of the database's data
//! file `<dir>/db` (fsync semantics are per file, whatever descriptor wrote).
//!
//! Every write goes to the database's writer thread as a closure. The
//! thread takes whatever is queued (up to [`MAX_GROUP`] writes), applies each
//! in order, flushes once, `fdatasync`s once, and only then answers every
//! waiter: many sources' batches, budget reservations and releases share one
//! sync. Nothing else writes, sled's own background flusher is off
//! (`flush_every_ms(None)`), and so no process-wide lock around sled is
//! needed: writes of one database are serial on its thread, readers read
//! directly.
//!
//! # No blobs
//!
//! sled writes a log message bigger than `segment_size / 4` to a separate
//! blob file that nothing fsyncs. A message is at most a whole page, and a
//! leaf page splits once it holds more than 16 entries: with
//! [`SEGMENT_SIZE`] = 8 MiB (threshold about 2 MiB) and every value at most
//! [`MAX_VALUE_BYTES`] = 64 KiB (checked by [`WriteBatch`] and
//! [`check_value`]), no page reaches it. [`Durable::blobs`] counts blob files
//! for `status`; it must stay 0.
//!
//! # Upgrade
//!
//! A store made with sled's default 512 KiB segments (divert before this
//! module) cannot be opened with 8 MiB ones: [`Durable::open`] exports it,
//! imports it into a new database beside it, syncs that, and swaps the
//! directories (the old one kept as `<dir>.pre-upgrade` until the new one
//! is in place, then removed; an interrupted swap is finished at the next open).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// sled segment size: big enough that no page of ours becomes a blob.
pub const SEGMENT_SIZE: usize = 8 << 20;
/// The largest value any divert store writes (see the module docs).
pub const MAX_VALUE_BYTES: usize = 64 << 10;
/// At most this many writes share one sync.
pub const MAX_GROUP: usize = 1024;
/// The segment size of stores written before this module (sled's default).
const LEGACY_SEGMENT_SIZE: usize = 512 * 1024;

/// A write job: runs on the writer thread and returns what to do once the group is synced.
type Job = Box<dyn FnOnce(&sled::Db) -> Completion + Send>;
/// Called after the group's flush and `fdatasync`, with their error if they failed.
type Completion = Box<dyn FnOnce(Option<&sled::Error>) + Send>;

/// A sled database and its writer thread.
pub struct Durable {
    db: sled::Db,
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<Stats>,
}

/// Counters of the writer, for status and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub writes: std::sync::atomic::AtomicU64,
    pub syncs: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn config(dir: &Path, cache_bytes: u64, segment_size: usize) -> sled::Config {
    sled::Config::new().path(dir).cache_capacity(cache_bytes).segment_size(segment_size).flush_every_ms(None)
}

/// How long opening a store waits for sled's lock on its data file. A store
/// this process has just closed is unlocked only once sled's own threads let
/// go of it (sled 0.34's `config.rs` blocks on that lock in its own tests for
/// the same reason); a store another process holds still fails, after this.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Open `conf`'s database, waiting up to [`LOCK_WAIT`] while its lock is held.
fn open_db(conf: &sled::Config) -> sled::Result<sled::Db> {
    let start = std::time::Instant::now();
    loop {
        match conf.open() {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock") && start.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn io(e: std::io::Error) -> sled::Error {
    sled::Error::Io(e)
}

impl Durable {
    /// Open (or create) the database in `dir` with a cache of `cache_bytes`,
    /// upgrading a store of the earlier layout, and start its writer thread.
    /// sled locks the directory: a second process fails here.
    pub fn open(dir: &Path, cache_bytes: u64) -> sled::Result<Durable> {
        finish_interrupted_upgrade(dir).map_err(io)?;
        let db = match open_db(&config(dir, cache_bytes, SEGMENT_SIZE)) {
            Ok(db) => db,
            Err(sled::Error::Unsupported(msg)) if msg.contains("io buffer size") => {
                upgrade(dir, cache_bytes)?;
                open_db(&config(dir, cache_bytes, SEGMENT_SIZE))?
            }
            Err(e) => return Err(e),
        };
        let data = File::open(dir.join("db")).map_err(io)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = Arc::new(Stats::default());
        let (wdb, wstats) = (db.clone(), stats.clone());
        let name = format!("divert-writer-{}", dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let thread = std::thread::Builder::new().name(name).spawn(move || writer(wdb, data, rx, wstats)).map_err(io)?;
        Ok(Durable { db, dir: dir.to_path_buf(), tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), stats })
    }

    /// The database, for reading (and for opening trees). Never write through it.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn submit(&self, job: Job) -> sled::Result<()> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| gone()),
            None => Err(gone()),
        }
    }

    /// Run `f` on the writer thread and return once its writes are durable.
    /// Blocking: call it from a blocking thread, never from an async worker
    /// (use [`Durable::write_async`] there).
    pub fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&sled::Db) -> sled::Result<R> + Send + 'static,
    ) -> sled::Result<R> {
        self.write_later(f)?.wait()
    }

    /// Start [`Durable::write`] and return at once: its writes are durable
    /// when [`Pending::wait`] returns `Ok`. Writes of one database are
    /// applied in the order they were submitted.
    pub fn write_later<R: Send + 'static>(
        &self,
        f: impl FnOnce(&sled::Db) -> sled::Result<R> + Send + 'static,
    ) -> sled::Result<Pending<R>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(job(f, move |r| {
            let _ = reply.send(r);
        }))?;
        Ok(Pending(answer))
    }

    /// [`Durable::write`] for async code: the caller's task waits, no thread blocks.
    pub async fn write_async<R: Send + 'static>(
        &self,
        f: impl FnOnce(&sled::Db) -> sled::Result<R> + Send + 'static,
    ) -> sled::Result<R> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(job(f, move |r| {
            let _ = reply.send(r);
        }))?;
        answer.await.map_err(|_| gone())?
    }

    /// Apply `batch` to `tree`, durably (blocking; see [`Durable::write`]).
    pub fn apply(&self, tree: &sled::Tree, batch: WriteBatch) -> sled::Result<()> {
        self.apply_later(tree, batch)?.wait()
    }

    /// Start [`Durable::apply`] and return at once (see [`Durable::write_later`]).
    pub fn apply_later(&self, tree: &sled::Tree, batch: WriteBatch) -> sled::Result<Pending> {
        let tree = tree.clone();
        self.write_later(move |_| tree.apply_batch(batch.into_inner()?))
    }

    /// [`Durable::apply`] for async code.
    pub async fn apply_async(&self, tree: &sled::Tree, batch: WriteBatch) -> sled::Result<()> {
        let tree = tree.clone();
        self.write_async(move |_| tree.apply_batch(batch.into_inner()?)).await
    }

    /// Wait until everything written so far is durable (it already is when
    /// each write returned; this is the last write of a stopping daemon).
    pub async fn sync_async(&self) -> sled::Result<()> {
        self.write_async(|_| Ok(())).await
    }

    /// Blob files sled wrote (must be 0: see the module docs).
    pub fn blobs(&self) -> usize {
        std::fs::read_dir(self.dir.join("blobs")).map(|d| d.count()).unwrap_or(0)
    }

    /// Stop the writer after the writes queued so far (they complete) and wait for it.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        self.close();
    }
}

/// A write started by [`Durable::write_later`], not yet known durable.
#[must_use = "a write is durable only once `wait` says so"]
pub struct Pending<R = ()>(mpsc::Receiver<sled::Result<R>>);

impl<R> Pending<R> {
    /// Block until the write is durable (or failed). Blocking: never on an async worker.
    pub fn wait(self) -> sled::Result<R> {
        self.0.recv().map_err(|_| gone())?
    }
}

fn gone() -> sled::Error {
    sled::Error::ReportableBug("the store's writer thread has stopped".into())
}

fn job<R: Send + 'static>(
    f: impl FnOnce(&sled::Db) -> sled::Result<R> + Send + 'static,
    reply: impl FnOnce(sled::Result<R>) + Send + 'static,
) -> Job {
    Box::new(move |db: &sled::Db| -> Completion {
        let result = f(db);
        Box::new(move |sync_error: Option<&sled::Error>| {
            reply(match (result, sync_error) {
                (Ok(v), None) => Ok(v),
                (Ok(_), Some(e)) => Err(e.clone()),
                (Err(e), _) => Err(e),
            })
        })
    })
}

/// The writer thread: group, apply, flush, `fdatasync`, answer.
fn writer(db: sled::Db, data: File, rx: mpsc::Receiver<Job>, stats: Arc<Stats>) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Ok(first) = rx.recv() {
        let mut done = vec![first(&db)];
        while done.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => done.push(j(&db)),
                Err(_) => break,
            }
        }
        let synced = db.flush().and_then(|_| data.sync_data().map_err(io));
        stats.writes.fetch_add(done.len() as u64, Relaxed);
        stats.syncs.fetch_add(1, Relaxed);
        let err = synced.err();
        if let Some(e) = &err {
            tracing::error!(error = %e, "making a store's writes durable failed; every write of the group fails");
        }
        for c in done {
            c(err.as_ref());
        }
    }
}

/// A set of writes to one tree, checked against [`MAX_VALUE_BYTES`].
#[derive(Default)]
pub struct WriteBatch {
    batch: sled::Batch,
    too_large: Option<usize>,
}

impl WriteBatch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let v = value.as_ref();
        if v.len() > MAX_VALUE_BYTES {
            self.too_large = Some(self.too_large.unwrap_or(0).max(v.len()));
        }
        self.batch.insert(key.as_ref(), v);
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.batch.remove(key.as_ref());
    }

    /// The sled batch, or the error for a value over the cap (nothing is written).
    pub fn into_inner(self) -> sled::Result<sled::Batch> {
        match self.too_large {
            None => Ok(self.batch),
            Some(n) => Err(too_large(n)),
        }
    }
}

fn too_large(n: usize) -> sled::Error {
    sled::Error::Unsupported(format!(
        "a value of {n} bytes is over the store's cap of {MAX_VALUE_BYTES} bytes (sled would put it in an unsynced blob)"
    ))
}

/// Refuse a value over [`MAX_VALUE_BYTES`] (for writes that do not go through a [`WriteBatch`]).
pub fn check_value(v: &[u8]) -> sled::Result<()> {
    if v.len() > MAX_VALUE_BYTES {
        return Err(too_large(v.len()));
    }
    Ok(())
}

fn pre_upgrade(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".pre-upgrade");
    PathBuf::from(s)
}

fn upgrading(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".upgrading");
    PathBuf::from(s)
}

/// An upgrade interrupted after the old store was moved aside: the new one
/// is complete only if it was renamed into place; otherwise put the old back.
fn finish_interrupted_upgrade(dir: &Path) -> std::io::Result<()> {
    let old = pre_upgrade(dir);
    if old.exists() {
        if dir.exists() {
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&old, dir)?;
        }
    }
    let half = upgrading(dir);
    if half.exists() {
        std::fs::remove_dir_all(&half)?;
    }
    Ok(())
}

/// Copy a store of the legacy layout into a new one, durably, and swap them.
fn upgrade(dir: &Path, cache_bytes: u64) -> sled::Result<()> {
    let new_dir = upgrading(dir);
    {
        let old = open_db(&config(dir, cache_bytes, LEGACY_SEGMENT_SIZE))?;
        let new = open_db(&config(&new_dir, cache_bytes, SEGMENT_SIZE))?;
        new.import(old.export());
        new.flush()?;
        File::open(new_dir.join("db")).and_then(|f| f.sync_all()).map_err(io)?;
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::rename(dir, pre_upgrade(dir)).map_err(io)?;
    std::fs::rename(&new_dir, dir).map_err(io)?;
    crate::fsutil::sync_dir(parent).map_err(io)?;
    std::fs::remove_dir_all(pre_upgrade(dir)).map_err(io)?;
    tracing::info!(store = %dir.display(), "store upgraded to the durable layout (8 MiB segments, no blobs)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn writes_are_applied_in_order_and_grouped() {
        let dir = tempfile::tempdir().unwrap();
        let d = Arc::new(Durable::open(&dir.path().join("s"), 1 << 20).unwrap());
        let tree = d.db().open_tree("t").unwrap();
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let (d, tree) = (d.clone(), tree.clone());
                std::thread::spawn(move || {
                    for i in 0..50u32 {
                        let mut b = WriteBatch::default();
                        b.insert([t.to_be_bytes(), i.to_be_bytes()].concat(), i.to_be_bytes());
                        d.apply(&tree, b).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(tree.len(), 400);
        let (writes, syncs) = (d.stats().writes.load(Ordering::Relaxed), d.stats().syncs.load(Ordering::Relaxed));
        assert!(writes >= 400 && syncs <= writes, "{writes} writes, {syncs} syncs");
        assert_eq!(d.blobs(), 0);
    }

    /// Writes started with `apply_later` are applied in the order they were
    /// started, each durable (synced) by the time its `wait` returns, and a
    /// refused one says so at its `wait` without stopping the next.
    #[test]
    fn writes_started_later_are_applied_in_order_and_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let d = Durable::open(&dir.path().join("s"), 1 << 20).unwrap();
        let tree = d.db().open_tree("t").unwrap();
        let batch = |v: u8| {
            let mut b = WriteBatch::default();
            b.insert(b"k", [v]);
            b
        };
        let first = d.apply_later(&tree, batch(1)).unwrap();
        let mut refused = WriteBatch::default();
        refused.insert(b"k", vec![0u8; MAX_VALUE_BYTES + 1]);
        let refused = d.apply_later(&tree, refused).unwrap();
        let second = d.apply_later(&tree, batch(2)).unwrap();
        second.wait().unwrap();
        assert!(d.stats().syncs.load(Ordering::Relaxed) >= 1, "durable: synced before the answer");
        assert!(matches!(refused.wait(), Err(sled::Error::Unsupported(_))));
        first.wait().unwrap();
        assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&[2u8][..]), "the later write last");
    }

    #[test]
    fn values_over_the_cap_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let d = Durable::open(&dir.path().join("s"), 1 << 20).unwrap();
        let tree = d.db().open_tree("t").unwrap();
        let mut b = WriteBatch::default();
        b.insert(b"small", b"x");
        b.insert(b"big", vec![0u8; MAX_VALUE_BYTES + 1]);
        assert!(matches!(d.apply(&tree, b), Err(sled::Error::Unsupported(_))));
        assert!(tree.is_empty(), "nothing of a refused batch is written");
        assert!(check_value(&vec![0u8; MAX_VALUE_BYTES]).is_ok());
    }

    #[test]
    fn opening_waits_for_a_store_this_process_is_closing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let conf = config(&path, 1 << 20, SEGMENT_SIZE);
        let held = open_db(&conf).unwrap();
        held.insert(b"k", b"v").unwrap();
        held.flush().unwrap();
        // Locked now: sled alone refuses at once.
        let refused = conf.open().map(|_| ()).unwrap_err().to_string();
        assert!(refused.contains("could not acquire lock"), "{refused}");
        // Opened while it is being closed: the open waits for the lock, then reads the store.
        let opener =
            std::thread::spawn(move || Durable::open(&path, 1 << 20).map(|d| d.db().get(b"k").map(|v| v.is_some())));
        drop(held);
        assert!(opener.join().unwrap().unwrap().unwrap());
    }

    #[test]
    fn a_store_of_the_earlier_layout_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let old = config(&path, 1 << 20, LEGACY_SEGMENT_SIZE).open().unwrap();
            let t = old.open_tree("source").unwrap();
            for i in 0..1000u32 {
                t.insert(i.to_be_bytes(), vec![7u8; 100]).unwrap();
            }
            old.insert(b"meta", b"v").unwrap();
            old.flush().unwrap();
        }
        let d = Durable::open(&path, 1 << 20).unwrap();
        let t = d.db().open_tree("source").unwrap();
        assert_eq!(t.len(), 1000);
        assert_eq!(d.db().get(b"meta").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(!pre_upgrade(&path).exists() && !upgrading(&path).exists());
        let conf = String::from_utf8_lossy(&std::fs::read(path.join("conf")).unwrap()).into_owned();
        assert!(conf.contains(&format!("segment_size: {SEGMENT_SIZE}")), "{conf}");
        drop(t);
        drop(d);
        // Opened again: no second upgrade, the data still there.
        let d = Durable::open(&path, 1 << 20).unwrap();
        assert_eq!(d.db().open_tree("source").unwrap().len(), 1000);
    }
}
