//! The steward's network service: HTTPS with mutual TLS, authorization from the peer certificate's SPIFFE ID, durable idempotent batches.
//!
//! # Connection lifecycle and its bounds
//!
//! 1. **Accept.** Every connection is accepted at once (`accept::serve`) and
//!    is *pending* until authenticated: admitted under caps of its own
//!    (`max_pending_handshakes` in all, `max_pending_per_address` per remote
//!    address), apart from the slots of authenticated peers. When a cap is
//!    reached the oldest pending connection that has not sent a byte yet is
//!    closed to make room (`evicted`), so idle sockets without a certificate
//!    cannot lock sources and evaluators out (see `accept`).
//! 2. **Handshake** with the server config current *at accept time*
//!    (`ctx.tls.borrow()`), so a SIGHUP reload (new certificate, new CRL)
//!    applies to every new handshake while older connections finish. From
//!    accept to a verified certificate takes at most `handshake_timeout`.
//!    rustls requires a client certificate of the program CA naming
//!    clientAuth, not revoked, checked against a CRL that is not past its
//!    next-update; any failure refuses the peer here. Refusals of peers
//!    without a verified certificate are logged at a bounded rate.
//! 3. **Identity.** The peer's SPIFFE ID is read from its certificate; a
//!    certificate without one, or of another program, is refused (closed)
//!    before HTTP starts. Nothing the client says about itself is used. The
//!    connection then leaves admission and waits for one of `max_connections`
//!    authenticated slots.
//! 4. **HTTP/1.1** (hyper). The TLS stream is wrapped in `timeout_io::TimeoutIo`:
//!    every read and every write must make progress within `io_timeout`
//!    (this also closes idle keep-alive connections and peers that stop
//!    reading). Headers must arrive within `io_timeout` (hyper's
//!    `header_read_timeout`), and a whole request body within `io_timeout`
//!    (a deadline around reading it), so a slow trickle cannot hold a
//!    connection for long either. Bodies are capped at `max_body_bytes`.
//! 5. **Routing** on path and certificate role, before any body is read
//!    (see `routes::ROUTES`).
//! 6. **Shutdown**: when `ctx.shutdown` is cancelled the accept loop stops,
//!    handshakes in progress are dropped, and established connections are
//!    shut down gracefully (the request in flight finishes and is answered).
//!    The daemon then calls [`Steward::close`] to flush the store.
//!
//! # Durability and idempotence
//!
//! A batch is acknowledged (200 with a [`BatchAck`](crate::wire::BatchAck))
//! only after it is written and the store flushed; a replay of a held
//! `(source, batch_id)` stores nothing and is acknowledged with
//! `duplicate: true` (after a flush too, since the first copy may still be on
//! its way to disk). The layout is in [`store`].
//!
//! # Benchmarks
//!
//! The pieces can be timed apart: [`check_batch`] (parse and validate a
//! body), [`Store::put_batch`] + [`Store::flush`] (the bare store),
//! [`ingest_body`] (both, as the endpoint runs them), and the whole service
//! with [`Steward::start`] on a hand-built [`Context`] listening on port 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::daemon::config::StewardConfig;
use crate::daemon::Context;
use crate::fsutil;
use crate::record::PseudoRecord;
use crate::spiffe::SpiffeId;
use crate::tls;

mod admin;
pub mod epochs;
mod http;
pub mod persons;
pub mod release;
mod routes;
pub mod store;
mod timeout_io;

pub use http::{check_batch, ingest_body, Accepted, IngestError, Rejection, MAX_BATCH_ID_BYTES};
pub use store::{Put, PutOutcome, SourceCounts, Store, StoreError, StoredBatch, Versions};

/// Where, under the data directory, the store lives.
pub const STORE_DIR: &str = "store";
/// The hash-chained audit log, in the data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// How long a connection made before a TLS reload may go on: then it is closed
/// gracefully and its peer handshakes again (a revoked peer is refused). With the
/// 15 s file watch, a revocation reaches open connections within 45 s.
pub const RELOAD_GRACE: Duration = Duration::from_secs(30);

/// Why the steward could not start.
#[derive(Debug, thiserror::Error)]
pub enum StewardError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    File(#[from] fsutil::SecretFileError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("opening the store: {0}")]
    Join(String),
    #[error("{0}")]
    Setup(String),
}

/// Why a peer or a request was refused; each has its own counter in `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The TLS handshake failed: no client certificate, unknown CA, expired,
    /// not yet valid, revoked, CRL past next-update, or not TLS at all.
    Handshake,
    /// No complete handshake within `handshake_timeout`.
    HandshakeTimeout,
    /// A verified certificate without a SPIFFE ID of our program.
    Identity,
    /// The certificate's role or name does not allow the request (403).
    Forbidden,
    /// The body is larger than `max_body_bytes` (413).
    TooLarge,
    /// The body is not a valid batch (400).
    BadRequest,
    /// The body did not arrive within `io_timeout` (408).
    BodyTimeout,
    /// No such path (404) or method (405).
    NotFound,
    /// A batch under a key epoch the steward does not link (409).
    Epoch,
    /// A batch with a record that does not fit the program's schema (400):
    /// an identity field, an undeclared field or kind, a value of the wrong type.
    Schema,
    /// An unauthenticated connection closed to make room (too many from its
    /// address, or in all, still before their handshake).
    Evicted,
}

impl Refusal {
    const ALL: [Refusal; 11] = [
        Refusal::Handshake,
        Refusal::HandshakeTimeout,
        Refusal::Identity,
        Refusal::Forbidden,
        Refusal::TooLarge,
        Refusal::BadRequest,
        Refusal::BodyTimeout,
        Refusal::NotFound,
        Refusal::Epoch,
        Refusal::Schema,
        Refusal::Evicted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Handshake => "handshake",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::Identity => "identity",
            Refusal::Forbidden => "forbidden",
            Refusal::TooLarge => "too_large",
            Refusal::BadRequest => "bad_request",
            Refusal::BodyTimeout => "body_timeout",
            Refusal::NotFound => "not_found",
            Refusal::Epoch => "epoch",
            Refusal::Schema => "schema",
            Refusal::Evicted => "evicted",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The running steward service.
pub struct Steward {
    pub(crate) store: Arc<Store>,
    pub(crate) cfg: StewardConfig,
    pub(crate) schema: Arc<crate::schema::Schema>,
    /// The linkage that answers queries (the active key epoch's).
    persons: std::sync::RwLock<Arc<persons::Persons>>,
    /// During a rotation: the pending epoch's linkage, built beside it.
    next_persons: std::sync::Mutex<Option<(u32, Arc<persons::Persons>)>>,
    pub(crate) epochs: Arc<epochs::Epochs>,
    /// Batches hold it shared from admission to linkage; the epoch switch holds it alone.
    pub(crate) epoch_gate: tokio::sync::RwLock<()>,
    pub(crate) ledger: crate::dp::ledger::Ledger,
    pub(crate) audit: crate::audit::AuditLog,
    releases: sled::Tree,
    program: String,
    local_addr: SocketAddr,
    data_dir: PathBuf,
    /// Connections not yet authenticated (see `accept`).
    admission: Arc<crate::accept::Admission>,
    /// Authenticated connections served at once.
    connections: Arc<Semaphore>,
    open: AtomicUsize,
    /// Authenticated connections waiting for one of the `max_connections` slots.
    waiting: AtomicUsize,
    /// Refusals of unauthenticated peers are logged at this rate at most.
    unauthenticated_log: crate::accept::LogLimiter,
    refusals: [AtomicU64; Refusal::ALL.len()],
    pub(crate) batches_stored: AtomicU64,
    pub(crate) batches_duplicate: AtomicU64,
}

/// Decrements a connection gauge (open, waiting) when the connection leaves that state, however it does.
struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Steward {
    /// Open the store at `<data_dir>/store`, bind `cfg.listen`, write the
    /// bound address to `<data_dir>/listen.addr`, spawn the accept loop on
    /// `ctx.tracker`, and return once listening.
    pub async fn start(ctx: Arc<Context>, cfg: StewardConfig) -> anyhow::Result<Arc<Steward>> {
        Ok(Steward::start_inner(ctx, cfg).await?)
    }

    async fn start_inner(ctx: Arc<Context>, cfg: StewardConfig) -> Result<Arc<Steward>, StewardError> {
        let data_dir = ctx.config.data_dir.clone();
        fsutil::create_private_dir(&data_dir)?;
        let store_path = data_dir.join(STORE_DIR);
        let store = tokio::task::spawn_blocking(move || Store::open(&store_path))
            .await
            .map_err(|e| StewardError::Join(e.to_string()))??;
        let schema = Arc::new(
            crate::daemon::config::load_schema(cfg.schema.as_deref())
                .map_err(|e| StewardError::Setup(format!("{e:#}")))?,
        );
        let mut ledger = crate::dp::ledger::Ledger::open(store.durable(), cfg.program_epsilon_cap_micro)
            .map_err(|e| StewardError::Setup(format!("opening the budget ledger: {e}")))?;
        let audit_path = data_dir.join(AUDIT_FILE);
        // Reconcile before serving: the audit log is the record of what left.
        if audit_path.exists() {
            let spent = crate::audit::AuditLog::spent_by_evaluator(&audit_path).map_err(|e| {
                StewardError::Setup(format!("{}: {e}; run `divert audit verify`", audit_path.display()))
            })?;
            let (adjustments, back) = tokio::task::spawn_blocking(move || (ledger.reconcile(&spent), ledger))
                .await
                .map_err(|e| StewardError::Join(e.to_string()))?;
            ledger = back;
            let adjustments = adjustments.map_err(|e| StewardError::Setup(format!("reconciling budgets: {e}")))?;
            for a in &adjustments {
                warn!(adjustment = ?a, "budget ledger raised to match the audit log");
            }
        }
        let opened = {
            let p = audit_path.clone();
            tokio::task::spawn_blocking(move || crate::audit::AuditLog::open(&p))
                .await
                .map_err(|e| StewardError::Join(e.to_string()))?
        };
        let audit = opened.map_err(|e| StewardError::Setup(format!("{}: {e}", audit_path.display())))?;
        let releases = store
            .db()
            .open_tree("steward_releases")
            .map_err(|e| StewardError::Setup(format!("opening releases: {e}")))?;
        let epochs = epochs::Epochs::open(store.durable())
            .map_err(|e| StewardError::Setup(format!("reading the key epochs: {e}")))?;
        let store = Arc::new(store);
        if let Some(active) = epochs.active() {
            // A switch interrupted before the old epoch was deleted: finish it.
            let s2 = store.clone();
            let removed = tokio::task::spawn_blocking(move || s2.remove_epochs_below(active))
                .await
                .map_err(|e| StewardError::Join(e.to_string()))??;
            if removed > 0 {
                info!(batches = removed, active_epoch = active, "removed the batches of a retired key epoch");
            }
        }
        let persons = persons::Persons::new(schema.clone());
        let next = epochs.pending().map(|p| (p, persons::Persons::new(schema.clone())));
        let (mut held, mut held_next, mut stray) = (Vec::new(), Vec::new(), 0u64);
        for b in store.batches() {
            let b = b.map_err(|e| StewardError::Setup(format!("reading held records: {e}")))?;
            if Some(b.header.epoch) == epochs.active() {
                held.extend(b.records);
            } else if Some(b.header.epoch) == epochs.pending() {
                held_next.extend(b.records);
            } else {
                stray += b.header.records;
            }
        }
        if stray > 0 {
            warn!(records = stray, "records under a key epoch neither active nor pending are kept out of linkage");
        }
        let (n_held, n_next) = (held.len(), held_next.len());
        persons.add(held);
        if let Some((_, p)) = &next {
            p.add(held_next);
        }
        info!(
            records = n_held,
            active_epoch = epochs.active(),
            pending_epoch = epochs.pending(),
            pending_records = n_next,
            "held records linked"
        );
        let listener =
            TcpListener::bind(cfg.listen).await.map_err(|source| StewardError::Bind { addr: cfg.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| StewardError::Bind { addr: cfg.listen, source })?;
        let addr_file = data_dir.join(crate::daemon::config::LISTEN_ADDR_FILE);
        tokio::task::spawn_blocking(move || fsutil::write_public(&addr_file, format!("{local_addr}\n").as_bytes()))
            .await
            .map_err(|e| StewardError::Join(e.to_string()))??;

        let max = usize::try_from(cfg.max_connections).unwrap_or(usize::MAX).clamp(1, Semaphore::MAX_PERMITS);
        let steward = Arc::new(Steward {
            store,
            schema,
            persons: std::sync::RwLock::new(Arc::new(persons)),
            next_persons: std::sync::Mutex::new(next.map(|(e, p)| (e, Arc::new(p)))),
            epochs: Arc::new(epochs),
            epoch_gate: tokio::sync::RwLock::new(()),
            ledger,
            audit,
            releases,
            program: ctx.config.identity.program.clone(),
            local_addr,
            data_dir,
            admission: crate::accept::Admission::new(cfg.pending),
            connections: Arc::new(Semaphore::new(max)),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            unauthenticated_log: crate::accept::LogLimiter::new(10, Duration::from_secs(10)),
            refusals: Default::default(),
            batches_stored: AtomicU64::new(0),
            batches_duplicate: AtomicU64::new(0),
            cfg,
        });
        info!(
            listen = %local_addr,
            max_connections = max,
            max_pending_handshakes = steward.cfg.pending.pending,
            max_pending_per_address = steward.cfg.pending.per_address,
            max_body_bytes = steward.cfg.max_body_bytes,
            handshake_timeout_secs = steward.cfg.handshake_timeout.as_secs_f64(),
            io_timeout_secs = steward.cfg.io_timeout.as_secs_f64(),
            "steward listening"
        );
        ctx.tracker.spawn(accept_loop(ctx.clone(), steward.clone(), listener));
        // Every source may have reported complete before a crash: switch now if so.
        steward.maybe_switch().await;
        Ok(steward)
    }

    /// The address the steward listens on (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store, for reading what is held (linkage, tests, benchmarks).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The linkage that answers queries now.
    pub(crate) fn persons(&self) -> Arc<persons::Persons> {
        self.persons.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Link records admitted to `slot` (the caller holds `epoch_gate` shared).
    pub(crate) fn link(&self, slot: epochs::Slot, records: Vec<PseudoRecord>) {
        match slot {
            epochs::Slot::Active => self.persons().add(records),
            epochs::Slot::Pending(epoch) => {
                let target = {
                    let mut next = self.next_persons.lock().unwrap_or_else(|p| p.into_inner());
                    match &*next {
                        Some((e, p)) if *e == epoch => p.clone(),
                        _ => {
                            let p = Arc::new(persons::Persons::new(self.schema.clone()));
                            *next = Some((epoch, p.clone()));
                            p
                        }
                    }
                };
                target.add(records);
            }
        }
    }

    /// The key epochs as `GET /v1/epochs` and `divert keys status` show them.
    pub fn epoch_status(&self) -> Result<crate::wire::EpochStatus, StoreError> {
        Ok(self.epochs.status(&self.store.counts_by_epoch()?))
    }

    /// An admin's decision (`divert keys excuse`): the switch stops waiting for
    /// `source`, a source that is gone for good. Its records under the active
    /// epoch leave the linkage at the switch (they cannot be linked under the
    /// new key). Audited; may switch at once. Returns (pending epoch, records dropped).
    pub async fn excuse(&self, source: &str) -> Result<(u32, u64), String> {
        let counts = self.store.counts_by_epoch().map_err(|e| e.to_string())?;
        let waiting = self.epochs.waiting_for(&counts).ok_or("no key rotation is under way")?;
        if !waiting.contains(source) {
            let list: Vec<&str> = waiting.iter().map(String::as_str).collect();
            return Err(format!(
                "the switch does not wait for `{source}`; it waits for: {}",
                if list.is_empty() { "nobody".to_string() } else { list.join(", ") }
            ));
        }
        let active = self.epochs.active().unwrap_or(0);
        let dropped = counts.get(source).and_then(|per| per.get(&active)).map_or(0, |c| c.records);
        let (epochs, name) = (self.epochs.clone(), source.to_string());
        let pending = tokio::task::spawn_blocking(move || epochs.excuse(&name))
            .await
            .map_err(|e| format!("the excuse task failed: {e}"))??;
        let detail = serde_json::json!({
            "event": "source_excused", "source": source, "epoch": pending, "records_left_out": dropped,
        });
        self.audit.append_async(crate::audit::Kind::Key, "admin", &detail).await.map_err(|e| e.to_string())?;
        warn!(
            source,
            epoch = pending,
            records_left_out = dropped,
            "the key rotation no longer waits for this source: its records under the old epoch leave the linkage at the switch"
        );
        self.maybe_switch().await;
        Ok((pending, dropped))
    }

    /// Switch to the pending epoch if every source holding records has
    /// reported it complete: durably, then the new linkage answers queries,
    /// then the old epoch's batches are deleted. Audited.
    pub(crate) async fn maybe_switch(&self) {
        let gate = self.epoch_gate.write().await;
        let counts = match self.store.counts_by_epoch() {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "reading counts for the key epoch switch failed");
                return;
            }
        };
        match self.epochs.waiting_for(&counts) {
            Some(w) if w.is_empty() => {}
            _ => return,
        }
        let epochs = self.epochs.clone();
        let switched = match tokio::task::spawn_blocking(move || epochs.switch()).await {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                error!(error = %e, "recording the key epoch switch failed");
                return;
            }
            Err(e) => {
                error!(error = %e, "the task recording the key epoch switch failed");
                return;
            }
        };
        let (old, new) = switched;
        let next = self.next_persons.lock().unwrap_or_else(|p| p.into_inner()).take();
        let next = match next {
            Some((e, p)) if e == new => p,
            _ => Arc::new(persons::Persons::new(self.schema.clone())),
        };
        let records = next.records();
        *self.persons.write().unwrap_or_else(|p| p.into_inner()) = next;
        let sources: Vec<String> = counts.keys().cloned().collect();
        let detail = serde_json::json!({ "event": "epoch_switched", "from": old, "to": new, "sources": sources });
        if let Err(e) = self.audit.append_async(crate::audit::Kind::Key, "steward", &detail).await {
            error!(error = %e, "auditing the key epoch switch failed");
        }
        info!(
            from = old,
            to = new,
            records,
            "key epoch switched: the new linkage answers queries; deleting the old epoch's batches"
        );
        drop(gate);
        // In the background: on a large store this outlasts the report that triggered the switch.
        // A stop part-way leaves whole batches of the old epoch, removed at the next start.
        let store = self.store.clone();
        tokio::spawn(async move {
            let store2 = store.clone();
            let removed = tokio::task::spawn_blocking(move || store2.remove_epochs_below(new)).await;
            match removed {
                Ok(Ok(n)) => info!(batches = n, epoch = old, "old key epoch's batches deleted"),
                Ok(Err(e)) => error!(error = %e, "deleting the old epoch's batches failed; the next start retries"),
                Err(e) => {
                    error!(error = %e, "the task deleting the old epoch's batches failed; the next start retries")
                }
            }
        });
    }

    /// Every record held, batch by batch.
    pub fn records(&self) -> impl Iterator<Item = Result<PseudoRecord, StoreError>> + '_ {
        self.store.records()
    }

    /// Set an evaluator's budget (admin socket), audited.
    pub fn grant(&self, evaluator: &str, epsilon_micro: u64) -> Result<crate::dp::ledger::EvaluatorBudget, String> {
        let budget = self.ledger.grant(evaluator, epsilon_micro).map_err(|e| e.to_string())?;
        let detail = crate::audit::BudgetGrantDetail {
            evaluator: evaluator.to_string(),
            total_micro: budget.total_micro,
            spent_micro: budget.spent_micro,
        };
        self.audit.append(crate::audit::Kind::BudgetGrant, "admin", &detail).map_err(|e| e.to_string())?;
        info!(evaluator, total = %crate::dp::ledger::format_epsilon(budget.total_micro), "budget granted");
        Ok(crate::dp::ledger::EvaluatorBudget { evaluator: evaluator.to_string(), budget })
    }

    /// Every evaluator's budget (admin socket).
    pub fn budgets(&self) -> Result<crate::dp::ledger::BudgetsView, String> {
        self.ledger.view().map_err(|e| e.to_string())
    }

    /// Remember a release for `GET /v1/releases`, durably (blocking).
    pub(crate) fn record_release(
        &self,
        evaluator: &str,
        record: &crate::wire::ReleaseRecord,
    ) -> Result<(), StoreError> {
        let mut key = evaluator.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&self.store.db().generate_id()?.to_be_bytes());
        let value = serde_json::to_vec(record)
            .map_err(|e| StoreError::Sled(sled::Error::Unsupported(format!("encoding a release record: {e}"))))?;
        crate::storage::check_value(&value)?;
        let releases = self.releases.clone();
        self.store.durable().write(move |_| releases.insert(key, value).map(|_| ()))?;
        Ok(())
    }

    /// An evaluator's own past releases, oldest first.
    pub(crate) fn releases_of(&self, evaluator: &str) -> Result<Vec<crate::wire::ReleaseRecord>, StoreError> {
        let mut prefix = evaluator.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.releases.scan_prefix(prefix) {
            let (_, v) = kv?;
            if let Ok(r) = serde_json::from_slice(&v) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// How many refusals of one kind so far (this run).
    pub fn refusals(&self, kind: Refusal) -> u64 {
        self.refusals[kind.index()].load(Ordering::Relaxed)
    }

    /// All refusals so far (this run).
    pub fn refusals_total(&self) -> u64 {
        self.refusals.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// For `divert status`: counts only, never a record, token or id.
    pub fn status(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "listen": self.local_addr.to_string(),
            "data_dir": self.data_dir.display().to_string(),
            "connections_open": self.open.load(Ordering::Relaxed),
            "max_connections": self.cfg.max_connections,
            "connections_waiting": self.waiting.load(Ordering::Relaxed),
            "handshakes_pending": self.admission.pending(),
            "max_pending_handshakes": self.cfg.pending.pending,
            "max_pending_per_address": self.cfg.pending.per_address,
            "batches_stored_this_run": self.batches_stored.load(Ordering::Relaxed),
            "duplicates_this_run": self.batches_duplicate.load(Ordering::Relaxed),
        });
        let mut refusals: serde_json::Map<String, serde_json::Value> =
            Refusal::ALL.iter().map(|r| (r.as_str().to_string(), self.refusals(*r).into())).collect();
        refusals.insert("total".into(), self.refusals_total().into());
        status["refusals"] = refusals.into();
        status["key_epochs"] = serde_json::json!({ "active": self.epochs.active(), "pending": self.epochs.pending() });
        status["linkage"] = self.persons().quality_status();
        match self.store.counts(self.epochs.active()) {
            Ok(counts) => {
                let per = |f: fn(&SourceCounts) -> u64| -> BTreeMap<&str, u64> {
                    counts.iter().map(|(k, c)| (k.as_str(), f(c))).collect()
                };
                status["records_per_source"] = serde_json::json!(per(|c| c.records));
                status["batches_per_source"] = serde_json::json!(per(|c| c.batches));
                status["records"] = counts.values().map(|c| c.records).sum::<u64>().into();
                status["batches"] = counts.values().map(|c| c.batches).sum::<u64>().into();
            }
            Err(e) => status["store_error"] = e.to_string().into(),
        }
        // Per source and kind: what re-sends did (counts only; the evaluator sees none of it).
        match self.store.versions() {
            Ok(v) => status["record_versions"] = serde_json::json!(v),
            Err(e) => status["store_error"] = e.to_string().into(),
        }
        let writer = self.store.durable().stats();
        status["store_writes"] = serde_json::json!({
            "writes": writer.writes.load(Ordering::Relaxed),
            "syncs": writer.syncs.load(Ordering::Relaxed),
            "blob_files": self.store.durable().blobs(),
        });
        match self.store.size_on_disk() {
            Ok(n) => status["store_bytes"] = n.into(),
            Err(e) => status["store_error"] = e.to_string().into(),
        }
        status
    }

    /// Called after shutdown is cancelled and in-flight connections drained: flush the store.
    pub async fn close(&self) {
        match self.store.flush().await {
            Ok(()) => info!("steward store flushed"),
            Err(e) => error!(error = %e, "flushing the steward store failed"),
        }
    }

    /// Count a refusal and log it at warn with the peer and the reason.
    /// Peers without a verified certificate are logged a few lines per ten
    /// seconds at most (with a count of the lines held back): a flood of
    /// connections must not become a flood of log lines. The counters count all.
    pub(crate) fn refuse(&self, kind: Refusal, peer: SocketAddr, id: Option<&SpiffeId>, reason: &str) {
        self.refusals[kind.index()].fetch_add(1, Ordering::Relaxed);
        match id {
            Some(id) => warn!(peer = %peer, identity = %id, refusal = kind.as_str(), reason, "refused"),
            None => {
                if let Some(suppressed) = self.unauthenticated_log.allow() {
                    warn!(peer = %peer, refusal = kind.as_str(), reason, suppressed, "refused");
                }
            }
        }
    }
}

async fn accept_loop(ctx: Arc<Context>, st: Arc<Steward>, listener: TcpListener) {
    let (ctx2, st2) = (ctx.clone(), st.clone());
    crate::accept::serve(listener, ctx.shutdown.clone(), "steward", move |tcp, peer| {
        let (pending, evicted) = st2.admission.admit(peer);
        for _ in 0..evicted {
            st2.refuse(Refusal::Evicted, peer, None, "an unauthenticated connection was closed to make room");
        }
        // The config current now: a reload applies to this and later handshakes only.
        let tls = ctx2.tls.borrow().server.clone();
        ctx2.tracker.spawn(connection(ctx2.clone(), st2.clone(), tcp, peer, tls, pending));
    })
    .await;
    info!(listen = %st.local_addr, "steward stopped accepting connections");
}

async fn connection(
    ctx: Arc<Context>,
    st: Arc<Steward>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    pending: crate::accept::Pending,
) {
    let made_under = tls.clone();
    let handshake_timeout = st.cfg.handshake_timeout;
    // Phase 1, unauthenticated: admitted under the pending caps, evictable,
    // bounded by the handshake timeout from accept to identity.
    let stream = match tls::accept_pending(&pending, tcp, tls, handshake_timeout, &ctx.shutdown).await {
        Ok(s) => s,
        Err(tls::HandshakeEnd::Dropped | tls::HandshakeEnd::Closed) => return,
        Err(tls::HandshakeEnd::Failed(e)) => {
            st.refuse(Refusal::Handshake, peer, None, &format!("TLS handshake failed: {e}"));
            return;
        }
        Err(tls::HandshakeEnd::TimedOut) => {
            let secs = handshake_timeout.as_secs_f64();
            st.refuse(Refusal::HandshakeTimeout, peer, None, &format!("no TLS handshake within {secs} s"));
            return;
        }
    };
    let id = match tls::peer_identity(stream.get_ref().1) {
        Some(id) => id,
        None => {
            st.refuse(Refusal::Identity, peer, None, "the client certificate has no usable spiffe:// identity");
            return;
        }
    };
    if id.program != st.program {
        let reason = format!("the certificate is for program `{}`, not `{}`", id.program, st.program);
        st.refuse(Refusal::Identity, peer, Some(&id), &reason);
        return;
    }
    debug!(peer = %peer, identity = %id, "connection authenticated");
    drop(pending);
    // Phase 2, authenticated: one of `max_connections` slots; when all are
    // taken the peer waits here (its request is read once a slot frees).
    st.waiting.fetch_add(1, Ordering::Relaxed);
    let waiting = OpenGuard(&st.waiting);
    let _permit = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        p = st.connections.clone().acquire_owned() => match p {
            Ok(p) => p,
            Err(_) => return,
        },
    };
    drop(waiting);
    st.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&st.open);

    let io_timeout = st.cfg.io_timeout;
    let io = TokioIo::new(timeout_io::TimeoutIo::new(stream, io_timeout));
    let peer_info = Arc::new(http::Peer { addr: peer, id });
    let svc_state = st.clone();
    let svc = service_fn(move |req| routes::route(svc_state.clone(), peer_info.clone(), req));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(io_timeout).keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    // A reload (new certificate, new CRL) applies to open connections too: after
    // RELOAD_GRACE they are closed gracefully (the request in flight is answered), so
    // the peer handshakes again under the new material — a revoked peer is then refused.
    let mut tls_rx = ctx.tls.clone();
    let reloaded = async move {
        // Compared with the config this connection's handshake used, not with "changed
        // since the receiver was cloned": a reload before this point counts, an old one does not.
        loop {
            if !Arc::ptr_eq(&tls_rx.borrow_and_update().server, &made_under) {
                tokio::time::sleep(RELOAD_GRACE).await;
                return;
            }
            if tls_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::pin!(reloaded);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = ctx.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        _ = &mut reloaded => {
            debug!(peer = %peer, "TLS material reloaded: closing a connection made under the previous one");
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and peers going away: worth a line, not a warning.
        debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}
