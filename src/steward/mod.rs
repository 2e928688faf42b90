//! The steward service: HTTPS with mutual TLS, authorization from the peer certificate's SPIFFE ID, durable idempotent batches, linkage, releases. This file: the service's state, its start (store, ledger, audit log, linkage rebuilt from the store, listener) and which linkage a batch goes to.
//!
//! The rest, one job per file: `connection` (accept to close, and its
//! bounds), `routes` (the authorization table), `http` (the batch and epoch
//! endpoints), [`release`] (the evaluator API and the release store),
//! `switch` (the key epoch switch), `status` (counts for `divert status`),
//! `admin` (the admin socket's requests: budgets, keys), [`store`],
//! [`persons`], [`epochs`].
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
//! The pieces can be timed apart: [`Store::put_batch`] + [`Store::flush`] (the bare store),
//! [`store_batch_body`] (both, as the endpoint runs them), and the whole service
//! with [`Steward::start`] on a hand-built [`Context`] listening on port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use crate::config::StewardConfig;
use crate::daemon::Context;
use crate::fsutil;
use crate::record::PseudoRecord;
use crate::spiffe::SpiffeId;

mod admin;
mod connection;
pub mod epochs;
mod http;
pub mod persons;
mod receipts;
pub mod release;
mod routes;
mod status;
pub mod store;
mod switch;
mod timeout_io;

pub use http::{store_batch_body, Accepted, BatchError, Rejection, MAX_BATCH_ID_BYTES};
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
    #[error("{0:#}")]
    Schema(anyhow::Error),
    #[error("opening the budget ledger: {0}")]
    Ledger(#[source] crate::dp::ledger::LedgerError),
    #[error("{path}: {source}; run `divert audit verify`")]
    AuditUnreadable { path: PathBuf, source: crate::audit::VerifyError },
    #[error("reconciling budgets with the audit log: {0}")]
    Reconcile(#[source] crate::dp::ledger::LedgerError),
    #[error("{path}: {source}")]
    Audit { path: PathBuf, source: crate::audit::AuditError },
    #[error("opening the release store: {0}")]
    Releases(#[source] sled::Error),
    #[error("reading the key epochs: {0}")]
    Epochs(#[source] sled::Error),
    #[error("reading held records: {0}")]
    Records(#[source] StoreError),
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
    /// Batches whose audit entries a task is appending (see `receipts`).
    auditing: receipts::Auditing,
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
        let schema = Arc::new(crate::config::load_schema(cfg.schema.as_deref()).map_err(StewardError::Schema)?);
        let mut ledger = crate::dp::ledger::Ledger::open(store.durable(), cfg.program_epsilon_cap_micro)
            .map_err(StewardError::Ledger)?;
        let audit_path = data_dir.join(AUDIT_FILE);
        // Reconcile before serving: the audit log is the record of what left.
        if audit_path.exists() {
            let spent = crate::audit::AuditLog::spent_by_evaluator(&audit_path)
                .map_err(|source| StewardError::AuditUnreadable { path: audit_path.clone(), source })?;
            let (adjustments, back) = tokio::task::spawn_blocking(move || (ledger.reconcile(&spent), ledger))
                .await
                .map_err(|e| StewardError::Join(e.to_string()))?;
            ledger = back;
            let adjustments = adjustments.map_err(StewardError::Reconcile)?;
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
        let audit = opened.map_err(|source| StewardError::Audit { path: audit_path.clone(), source })?;
        let releases = store.db().open_tree("steward_releases").map_err(StewardError::Releases)?;
        let epochs = epochs::Epochs::open(store.durable()).map_err(StewardError::Epochs)?;
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
            let b = b.map_err(StewardError::Records)?;
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
        let addr_file = data_dir.join(crate::config::LISTEN_ADDR_FILE);
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
            program: ctx.config.spiffe_id.program.clone(),
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
            auditing: Default::default(),
            cfg,
        });
        // Before the first request: batches stored but not audited when the last run stopped.
        steward.finish_audits().await?;
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
        ctx.tracker.spawn(connection::accept_loop(ctx.clone(), steward.clone(), listener));
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
    pub(crate) fn link(&self, slot: epochs::Slot, records: persons::Linkable) {
        match slot {
            epochs::Slot::Active => self.persons().add_linkable(records),
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
                target.add_linkable(records);
            }
        }
    }

    /// Every record held, batch by batch.
    pub fn records(&self) -> impl Iterator<Item = Result<PseudoRecord, StoreError>> + '_ {
        self.store.records()
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
